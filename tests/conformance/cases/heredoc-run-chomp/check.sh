expect_content out tabbed
