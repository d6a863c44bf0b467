expect_config .config.Labels '{"a":"1","b c":"d e"}'
expect_config .config.ExposedPorts '{"53/udp":{},"80/tcp":{}}'
expect_config .config.Volumes '{"/data":{}}'
expect_config .config.StopSignal '"SIGTERM"'
