expect_content w/one.txt 1
expect_content w/two.txt 2
expect_absent w/three.md
