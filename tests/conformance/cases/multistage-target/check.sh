expect_content b b
expect_absent f
