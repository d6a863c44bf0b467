expect_content from-build built
