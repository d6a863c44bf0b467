expect_content out yes
