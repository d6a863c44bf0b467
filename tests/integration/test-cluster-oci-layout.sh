#!/bin/bash
# FROM oci-layout:// and --build-context NAME=oci-layout:// with --addr
# (issue 13 item 4): the client resolves the layout, uploads its blobs like
# a context's and pins the step to the manifest; the workers import the
# image from what they fetch from kilnd. The layout lives only in the
# client's own mount namespace (a tmpfs no daemon can see), so a daemon
# that opened the path would fail. The two-platform image is byte for byte
# the one the embedded engine makes from the same layout.
. "$(dirname "$0")/lib.sh"
. "$KILN_SOURCE_ROOT/tests/conformance/cluster.sh"
export SOURCE_DATE_EPOCH=1700000000
cluster_require_arm64
command -v unshare >/dev/null || fail "unshare is not installed (util-linux)"

PRIV="$T/private" # a tmpfs in the client's mount namespace only
mkdir -p "$PRIV" "$T/ctx"
printf 'FROM oci-layout://%s/layout:latest\nRUN echo hi > /hi\n' "$PRIV" >"$T/ctx/Dockerfile"
printf 'FROM base\nRUN echo named > /named\n' >"$T/ctx/Dockerfile.named"
B=(--platform linux/amd64,linux/arm64)

# The client, in a mount namespace of its own with the layout on a tmpfs.
private_build() { # OUT DOCKERFILE [ARGS...]
	local out=$1 df=$2
	shift 2
	unshare -m --propagation private sh -ec '
		mount -t tmpfs kiln-test "$1"
		cp -a "$2" "$1/layout"
		shift 2
		exec "$@"' sh "$PRIV" "$LAYOUT" \
		env KILN_ROOT="$T/c/client" "$KILN" build --progress json "${CLUSTER_CLIENT_ARGS[@]}" \
		"${B[@]}" -f "$df" "$@" -o "type=oci,dest=$out" "$T/ctx" 2>"$T/progress.json"
}

cluster_start "$T/c"
[ -z "$(ls -A "$PRIV")" ] || fail "$PRIV is not empty outside the client's namespace"
private_build "$T/cluster.tar" "$T/ctx/Dockerfile" ||
	fail "FROM oci-layout with --addr: $(tail -3 "$T/progress.json"; cluster_logs)"
private_build "$T/cluster-named.tar" "$T/ctx/Dockerfile.named" \
	--build-context "base=oci-layout://$PRIV/layout:latest" ||
	fail "--build-context oci-layout with --addr: $(tail -3 "$T/progress.json"; cluster_logs)"
cluster_stop

# The embedded engine, from the same layout where everyone sees it.
sed "s|$PRIV/layout|$LAYOUT|" "$T/ctx/Dockerfile" >"$T/ctx/Dockerfile.embedded"
KILN_ROOT="$T/embedded" kbuild "${B[@]}" -f "$T/ctx/Dockerfile.embedded" \
	-o "type=oci,dest=$T/embedded.tar" "$T/ctx" || fail "embedded build: $(tail -3 "$T/progress.json")"
KILN_ROOT="$T/embedded" kbuild "${B[@]}" -f "$T/ctx/Dockerfile.named" \
	--build-context "base=oci-layout://$LAYOUT:latest" \
	-o "type=oci,dest=$T/embedded-named.tar" "$T/ctx" || fail "embedded named build"
cmp -s "$T/cluster.tar" "$T/embedded.tar" || fail "the cluster's image differs from the embedded engine's"
cmp -s "$T/cluster-named.tar" "$T/embedded-named.tar" ||
	fail "the cluster's image (named context) differs from the embedded engine's"
mkdir -p "$T/unpack"
tar -xf "$T/cluster.tar" -C "$T/unpack"
assert_eq "$(jq '.manifests | length' "$T/unpack/index.json")" 1 "index.json entries"
echo "ok: oci-layout with --addr"
