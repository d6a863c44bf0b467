expect_content out "a b c"
