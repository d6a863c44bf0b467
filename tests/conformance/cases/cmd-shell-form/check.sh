expect_config .config.Cmd '["/bin/sh","-c","echo hi"]'
