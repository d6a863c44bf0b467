#!/bin/bash
# Hardlinks in a Debian-like image (issue 11): a package tarball whose
# files are linked under several names (as dpkg leaves perl, git or gcc)
# and a RUN that links a file. The layers must carry each linked file's
# content once (their size is what the distinct files imply, not what the
# names imply), and the links must survive a registry round trip:
# pushed by kiln, copied by skopeo, unpacked by umoci.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/registry-lib.sh"
command -v skopeo >/dev/null || fail "skopeo is not installed (scripts/install-deps.sh)"
command -v umoci >/dev/null || fail "umoci is not installed (scripts/install-deps.sh)"
CLEANUP_HOOKS+=("registry_stop")

CTX="$T/ctx"
PKG="$T/pkg"
mkdir -p "$CTX" "$PKG/usr/bin" "$PKG/usr/lib/tool" "$PKG/usr/share/tool" "$PKG/usr/libexec"
# Six distinct files of 512 KiB of random bytes (gzip cannot shrink them),
# each with three names in different directories.
NFILES=6
FILE_KIB=512
for i in $(seq 1 $NFILES); do
	head -c $((FILE_KIB * 1024)) /dev/urandom >"$PKG/usr/lib/tool/f$i"
	ln "$PKG/usr/lib/tool/f$i" "$PKG/usr/bin/f$i"
	ln "$PKG/usr/lib/tool/f$i" "$PKG/usr/share/tool/f$i"
done
printf 'small\n' >"$PKG/usr/libexec/small"
tar -C "$PKG" --owner=0 --group=0 -cf "$CTX/pkg.tar" usr
[ "$(tar -tvf "$CTX/pkg.tar" | grep -c ' link to ')" = $((2 * NFILES)) ] ||
	fail "the test tarball lacks its hardlink entries"
cat >"$CTX/Dockerfile" <<'DF'
ARG BASE
FROM ${BASE}
ADD pkg.tar /
RUN dd if=/dev/urandom of=/usr/lib/big bs=1024 count=1024 2>/dev/null && \
    ln /usr/lib/big /usr/bin/big && ln /usr/lib/big /usr/libexec/big
DF

registry_start "$T/reg" || fail "registry did not start"
repo="$REGISTRY/kiln/links"
kbuild --platform linux/amd64,linux/arm64 --build-arg "BASE=oci-layout://$LAYOUT:latest" \
	-t "$repo:1" --push "$CTX" || fail "build and push: $(tail -3 "$T/progress.json")"

base_layers=$(skopeo inspect --override-arch amd64 "oci:$LAYOUT:latest" | jq '.Layers | length')
distinct=$((NFILES * FILE_KIB * 1024))
skopeo inspect --raw --tls-verify=false "docker://$repo:1" >"$T/index.json" || fail "skopeo cannot read the index"
for arch in amd64 arm64; do
	man=$(jq -r --arg a "$arch" '.manifests[] | select(.platform.architecture == $a) | .digest' "$T/index.json")
	skopeo inspect --raw --tls-verify=false "docker://$repo@$man" >"$T/manifest-$arch.json" ||
		fail "skopeo cannot read the $arch manifest $man"
	# The ADD layer (the first after the base's) and the RUN layer.
	add_size=$(jq ".layers[$base_layers].size" "$T/manifest-$arch.json")
	run_size=$(jq ".layers[$((base_layers + 1))].size" "$T/manifest-$arch.json")
	echo "$arch: ADD layer $add_size bytes for $distinct distinct bytes under $((3 * distinct)) bytes of names;" \
		"RUN layer $run_size bytes for 1048576 distinct bytes"
	[ "$add_size" -ge "$distinct" ] || fail "$arch: the ADD layer ($add_size) is smaller than its content ($distinct)"
	[ "$add_size" -le $((distinct + distinct / 20 + 65536)) ] ||
		fail "$arch: the ADD layer ($add_size bytes) holds linked content more than once ($distinct distinct bytes)"
	[ "$run_size" -le $((1048576 + 1048576 / 20 + 65536)) ] ||
		fail "$arch: the RUN layer ($run_size bytes) holds linked content more than once"

	# Out through skopeo and umoci: the links are still links.
	d="$T/out-$arch"
	mkdir -p "$d"
	skopeo copy --quiet --src-tls-verify=false --override-arch "$arch" "docker://$repo:1" "oci:$d/layout:img" ||
		fail "skopeo copy $arch"
	umoci unpack --image "$d/layout:img" "$d/bundle" >/dev/null || fail "umoci unpack $arch"
	R="$d/bundle/rootfs"
	for i in $(seq 1 $NFILES); do
		assert_eq "$(stat -c '%i %h' "$R/usr/bin/f$i")" "$(stat -c '%i %h' "$R/usr/lib/tool/f$i")" "$arch usr/bin/f$i"
		assert_eq "$(stat -c '%i %h' "$R/usr/share/tool/f$i")" "$(stat -c '%i %h' "$R/usr/lib/tool/f$i")" "$arch usr/share/tool/f$i"
		assert_eq "$(stat -c %h "$R/usr/lib/tool/f$i")" 3 "$arch links of f$i"
		cmp -s "$R/usr/lib/tool/f$i" "$PKG/usr/lib/tool/f$i" || fail "$arch: content of f$i"
	done
	assert_eq "$(stat -c '%i %h' "$R/usr/bin/big")" "$(stat -c '%i %h' "$R/usr/lib/big")" "$arch usr/bin/big"
	assert_eq "$(stat -c '%i %h' "$R/usr/libexec/big")" "$(stat -c '%i %h' "$R/usr/lib/big")" "$arch usr/libexec/big"
	assert_eq "$(stat -c %h "$R/usr/libexec/small")" 1 "$arch usr/libexec/small is not linked"
done
echo "ok: hardlinks"
