# The build stage runs once, on the build platform (the client's: this
# machine's), and every target platform copies its result: on a cluster
# the arm64 worker pulls it from the amd64 worker.
native=$(uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')
expect_content built-on "linux/$native $(uname -m)"
expect_content runs-on "linux/amd64 x86_64"
# Built for both platforms: the arm64 image has the same /built-on.
arm="$ROOTFS/../linux_arm64"
if [ -d "$arm" ]; then
	assert_eq "$(cat "$arm/built-on")" "linux/$native $(uname -m)" "linux/arm64's /built-on"
	assert_eq "$(cat "$arm/runs-on")" "linux/arm64 aarch64" "linux/arm64's /runs-on"
fi
