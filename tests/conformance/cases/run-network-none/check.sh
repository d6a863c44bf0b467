expect_content out lo
