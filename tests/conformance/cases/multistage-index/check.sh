expect_content z zero
