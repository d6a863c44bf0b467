# Shared helpers for kiln's integration tests. Source it first thing.
# Tests run the real kiln binary, the real OCI runtime and real overlayfs.
set -euo pipefail

: "${KILN:?KILN must name the kiln binary (meson test sets it)}"
: "${KILN_SOURCE_ROOT:?KILN_SOURCE_ROOT must name the source tree}"

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# Requirements fail loudly: a test that cannot run is a failed test.
[ "$(id -u)" = 0 ] || fail "integration tests need root (mounts, runc)"
command -v runc >/dev/null || fail "runc is not installed (scripts/install-deps.sh)"
command -v jq >/dev/null || fail "jq is not installed (scripts/install-deps.sh)"

T=$(mktemp -d /var/tmp/kiln-it.XXXXXX)
export KILN_ROOT="$T/root"

umount_below() {
	# Deepest first, so nested mounts come off before their parents.
	awk -v p="$1" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo |
		sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# Tests add commands to run at exit (e.g. stopping a registry by PID).
CLEANUP_HOOKS=()

cleanup() {
	local rc=$? h
	for h in "${CLEANUP_HOOKS[@]}"; do eval "$h" || true; done
	if [ -n "${BG_PID:-}" ]; then kill -9 "$BG_PID" 2>/dev/null || true; fi
	umount_below "$T"
	rm -rf --one-file-system "$T"
	# Nothing a test does may touch the host's devices; catch it here.
	if [ ! -c /dev/null ]; then
		rm -f /dev/null && mknod -m 666 /dev/null c 1 3
		echo "FAIL: /dev/null was replaced during $(basename "$0") (restored)" >&2
		rc=1
	fi
	exit $rc
}
trap cleanup EXIT

# The multi-arch busybox OCI layout (built once per machine, then reused).
fixture_layout() {
	local dir="${KILN_FIXTURE_DIR:-/var/tmp/kiln-fixtures}/busybox"
	if [ ! -e "$dir/index.json" ]; then
		"$KILN_SOURCE_ROOT/scripts/make-busybox-layout.sh" "$dir" >&2 ||
			fail "cannot build the busybox fixture layout"
	fi
	echo "$dir"
}

LAYOUT=$(fixture_layout)

# kiln build with JSON progress in $T/progress.json; extra args pass through.
kbuild() {
	"$KILN" build --progress json "$@" 2>"$T/progress.json"
}

# Like kbuild but the build must fail; its stderr is left in $T/progress.json.
kbuild_fails() {
	if "$KILN" build --progress json "$@" 2>"$T/progress.json"; then
		fail "build unexpectedly succeeded: $*"
	fi
}

# The JSON lines of the last build's progress (the CLI's closing
# "kiln: error: ..." line is plain text).
events() {
	grep '^{' "$T/progress.json" || true
}

# True if some event satisfies the jq condition $1 (jq 1.6's -e judges only
# the last input, so slurp instead).
has_event() {
	events | jq -s -e "any(.[]; $1)" >/dev/null
}

# True if every vertex event satisfies the jq condition $1.
all_vertex_events() {
	events | jq -s -e "[.[] | select(.vertex != null and .status != null)] | length > 0 and all(.[]; $1)" >/dev/null
}

# Final status of every vertex by name: "name<TAB>status<TAB>cached".
vertex_statuses() {
	jq -r 'select(.vertex != null and .status != null) | [.name, .status, .cached] | @tsv' \
		< <(events) | awk -F'\t' '{ last[$1] = $0 } END { for (k in last) print last[k] }' | sort
}

# Names of vertices that ran (status done) in the last build.
vertices_run() {
	events | jq -r 'select(.status == "done") | .name' | sort
}

vertices_cached() {
	events | jq -r 'select(.status == "cached") | .name' | sort
}

error_text() {
	cat "$T/progress.json"
}

assert_eq() {
	[ "$1" = "$2" ] || fail "${3:-values differ}: expected '$2', got '$1'"
}

assert_contains() {
	grep -qF -- "$2" <<<"$1" || fail "${3:-text} lacks '$2': $1"
}

# No mount of ours may outlive a build.
assert_no_mounts() {
	if awk -v p="$KILN_ROOT" 'index($5, p) == 1' /proc/self/mountinfo | grep -q .; then
		fail "mounts left under $KILN_ROOT: $(awk -v p="$KILN_ROOT" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo)"
	fi
}

assert_fsck_clean() {
	"$KILN" debug fsck >"$T/fsck.out" 2>&1 || fail "fsck not clean: $(cat "$T/fsck.out")"
}
