expect_content greeting "hello world"
