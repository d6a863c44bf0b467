expect_content dest hello
expect_stat dest %F "regular file"
expect_content abs.txt nested
expect_stat abs.txt %F "regular file"
expect_stat d/inner %F "symbolic link"
assert_eq "$(readlink "$ROOTFS/d/inner")" "../target.txt" "target of d/inner"
expect_content d/plain.txt x
expect_absent target.txt
expect_absent link
