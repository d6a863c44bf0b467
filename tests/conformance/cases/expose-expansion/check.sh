expect_config .config.ExposedPorts '{"8080/tcp":{}}'
