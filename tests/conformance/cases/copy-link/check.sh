expect_content linked x
expect_content base base
