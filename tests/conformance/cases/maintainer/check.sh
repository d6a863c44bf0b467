expect_config .author '"someone"'
