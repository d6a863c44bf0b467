expect_config .config.Cmd null
