expect_content copied "hello from other-dir"
expect_content mounted "hello from other-dir"
expect_absent marker
expect_content from-img "from img on x86_64"
arm="$ROOTFS/../linux_arm64"
[ -d "$arm" ] || fail "no linux/arm64 image"
assert_eq "$(cat "$arm/from-img")" "from img on aarch64" "linux/arm64's /from-img"
expect_content other/hello.txt "hello from other-dir"
expect_absent other/secret.txt
