expect_content out yes
expect_content p p
