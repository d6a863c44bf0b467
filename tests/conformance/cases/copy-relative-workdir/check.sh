expect_content app/f x
expect_content app/sub/f x
