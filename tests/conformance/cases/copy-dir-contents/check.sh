expect_content dst/a a
expect_content dst/sub/b b
expect_absent dst/dir
