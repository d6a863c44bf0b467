#!/bin/bash
# Dockerfile conformance: every case in cases/NAME is a build context with a
# Dockerfile and either check.sh (assertions on the exported root file
# system $ROOTFS and the image config $CONFIG) or expect-error (one
# expected fragment of the error per line). An optional `args` file holds
# extra `kiln build` arguments (shell words; $CASE, $LAYOUT and $HTTP are
# expanded). Every case builds FROM ${BASE}, the busybox fixture.
# Usage: run.sh [CASE...]
. "$KILN_SOURCE_ROOT/tests/integration/lib.sh"

CASES="$KILN_SOURCE_ROOT/tests/conformance/cases"
BASE="oci-layout://$LAYOUT:latest"

# A plain HTTP server for ADD <url> cases, on a free loopback port.
HTTP_DIR="$T/http"
mkdir -p "$HTTP_DIR"
printf 'downloaded content\n' >"$HTTP_DIR/file.txt"
HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$HTTP_DIR" >/dev/null 2>&1 &
BG_PID=$!
HTTP="http://127.0.0.1:$HTTP_PORT"
for _ in $(seq 1 50); do curl -fs "$HTTP/file.txt" >/dev/null && break; sleep 0.1; done

# Image config of the (single-platform) OCI archive $1 into $2.
oci_config() {
	local dir="$T/oci.$$"
	rm -rf --one-file-system "$dir" && mkdir -p "$dir" && tar -xf "$1" -C "$dir"
	local idx man cfg
	idx=$(jq -r '.manifests[0].digest' "$dir/index.json" | sed 's/sha256://')
	man=$(jq -r 'if .manifests then .manifests[0].digest else empty end' "$dir/blobs/sha256/$idx" | sed 's/sha256://')
	[ -n "$man" ] || man=$idx
	cfg=$(jq -r '.config.digest' "$dir/blobs/sha256/$man" | sed 's/sha256://')
	cp "$dir/blobs/sha256/$cfg" "$2"
	rm -rf --one-file-system "$dir"
}

# Assertions for check.sh.
content() { cat "$ROOTFS/$1" 2>/dev/null || echo "<missing $1>"; }
expect_content() { assert_eq "$(content "$1")" "$2" "content of $1"; }
expect_exists() { [ -e "$ROOTFS/$1" ] || [ -L "$ROOTFS/$1" ] || fail "$1 missing"; }
expect_absent() { { [ -e "$ROOTFS/$1" ] || [ -L "$ROOTFS/$1" ]; } && fail "$1 should not exist"; true; }
expect_stat() { assert_eq "$(stat -c "$2" "$ROOTFS/$1")" "$3" "stat $2 of $1"; }
config() { jq -c "$1" "$CONFIG"; }
expect_config() { assert_eq "$(config "$1")" "$2" "config $1"; }

passed=0 failed=0 failures=""
run_case() {
	local dir=$1 name args=()
	name=$(basename "$dir")
	if [ -f "$dir/args" ]; then
		# shellcheck disable=SC2046
		eval "args=($(CASE="$dir" LAYOUT="$LAYOUT" HTTP="$HTTP" envsubst '$CASE $LAYOUT $HTTP' <"$dir/args"))"
	fi
	ROOTFS="$T/$name/rootfs"
	CONFIG="$T/$name/config.json"
	mkdir -p "$T/$name"
	if [ -f "$dir/expect-error" ]; then
		if "$KILN" build --progress json --build-arg "BASE=$BASE" "${args[@]}" "$dir" \
			2>"$T/progress.json"; then
			echo "case $name: build succeeded, expected an error" >&2
			return 1
		fi
		while IFS= read -r frag; do
			[ -z "$frag" ] && continue
			grep -qF -- "$frag" "$T/progress.json" || {
				echo "case $name: error lacks '$frag': $(tail -2 "$T/progress.json")" >&2
				return 1
			}
		done <"$dir/expect-error"
		return 0
	fi
	"$KILN" build --progress json --build-arg "BASE=$BASE" "${args[@]}" \
		-o "type=local,dest=$ROOTFS" -o "type=oci,dest=$T/$name/image.tar" "$dir" \
		2>"$T/progress.json" || {
		echo "case $name: build failed: $(tail -3 "$T/progress.json")" >&2
		return 1
	}
	oci_config "$T/$name/image.tar" "$CONFIG"
	(set -e; . "$dir/check.sh") || return 1
}

if [ $# -gt 0 ]; then
	list=("$@")
else
	list=("$CASES"/*/)
fi
for c in "${list[@]}"; do
	c=${c%/}
	[ -d "$c" ] || c="$CASES/$c"
	if run_case "$c"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		failures="$failures $(basename "$c")"
	fi
done
echo "conformance: $passed cases passed, $failed failed${failures:+ (failed:$failures)}"
[ "$failed" = 0 ]
