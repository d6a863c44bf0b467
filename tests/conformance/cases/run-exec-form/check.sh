expect_content out "exec form"
