# The secret in an environment variable (with and without a file).
expect_content env-only ok
expect_content both ok
expect_content optional unset
expect_absent etc/tok
# The stage's ENV comes back after the step.
expect_content after public
# Never in the image config, the layers, the files or the progress output.
! grep -q envs3cret "$CONFIG" || fail "secret in the image config"
! grep -rqa envs3cret "$ROOTFS" || fail "secret in the file system"
! grep -qa envs3cret "$T/progress.json" || fail "secret in the progress output"
layers="$T/secret-env-layers"
oci_unpack "$out/image.tar" "$layers"
for b in "$layers"/blobs/sha256/*; do
	! zcat -f "$b" | grep -qa envs3cret || fail "secret in blob $b"
done
rm -rf --one-file-system "$layers"
