expect_content out default
