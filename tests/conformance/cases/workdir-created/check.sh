expect_stat made/here %F directory
