expect_content tmp/uid 1000
expect_content tmp/gid 1000
expect_config .config.User '"1000:1000"'
