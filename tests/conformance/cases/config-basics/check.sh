expect_config .architecture '"amd64"'
expect_config .os '"linux"'
assert_eq "$(config '.rootfs.diff_ids | length')" "$(config '[.history[] | select(.empty_layer != true)] | length')" "diff_ids vs history"
