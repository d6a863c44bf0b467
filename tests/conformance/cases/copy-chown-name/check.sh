expect_stat f "%u" 1000
