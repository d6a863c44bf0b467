# A fresh state root: the cache mount starts empty, so one line.
assert_eq "$(tr -d ' ' < "$ROOTFS/out")" "1" "lines in the cache mount"
expect_absent cache/n
