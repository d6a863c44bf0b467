expect_config .config.Entrypoint '["/bin/echo"]'
expect_config .config.Cmd '["hi"]'
