expect_config .config.Healthcheck.Test '["CMD","true"]'
expect_config .config.Healthcheck.Interval 30000000000
expect_config .config.Healthcheck.Retries 3
