expect_content out "linux/amd64 linux amd64 linux/amd64"
