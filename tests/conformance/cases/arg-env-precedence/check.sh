expect_content out env
