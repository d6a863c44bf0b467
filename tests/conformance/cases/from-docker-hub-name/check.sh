expect_content hub "from docker.io/library/busybox on amd64"
expect_stat hub "%u:%g %a" "0:0 644"
# The base image's config (busybox's default command) is inherited.
expect_config '.config.Cmd' '["sh"]'
expect_config '.architecture' '"amd64"'
arm="$ROOTFS/../linux_arm64"
[ -d "$arm" ] || fail "no linux/arm64 image"
assert_eq "$(cat "$arm/hub")" "from docker.io/library/busybox on arm64" "linux/arm64's /hub"
