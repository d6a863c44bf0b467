expect_content dl/file.txt "downloaded content"
expect_stat dl/file.txt %a 600
