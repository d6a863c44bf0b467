expect_content dst/hello.txt hi
expect_content renamed.txt hi
