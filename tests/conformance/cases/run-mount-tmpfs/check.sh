expect_content out t
expect_absent scratch/t
