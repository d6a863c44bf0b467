expect_exists ctx/keep.txt
expect_absent ctx/drop.log
expect_exists ctx/important.log
expect_absent ctx/tmp
