expect_stat f "%u:%g %a" "1000:1000 600"
