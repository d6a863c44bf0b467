expect_content out mounted
expect_absent src/m
