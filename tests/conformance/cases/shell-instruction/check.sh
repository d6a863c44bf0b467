expect_content out /bin/sh
expect_config .config.Shell '["/bin/sh","-ec"]'
