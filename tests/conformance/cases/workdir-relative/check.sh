expect_content out /a/b
expect_config .config.WorkingDir '"/a/b"'
