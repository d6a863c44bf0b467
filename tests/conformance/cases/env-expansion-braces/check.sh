expect_content out "preinpost in-dash"
