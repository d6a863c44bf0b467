expect_content out "fallback dash"
