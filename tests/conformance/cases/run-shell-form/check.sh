expect_content out hello
