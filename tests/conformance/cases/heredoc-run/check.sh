expect_content h1 one
expect_content h2 two
