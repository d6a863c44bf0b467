expect_content before "[]"
expect_content after "[global]"
