expect_content out standard
