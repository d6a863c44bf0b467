expect_content target/f x
