#!/bin/bash
# Bad input: each a clear error (or a safely confined result), nothing
# written outside kiln's own directories, nothing corrupt left behind.
. "$(dirname "$0")/lib.sh"

OUTSIDE="$T/outside"
mkdir -p "$OUTSIDE"
img() { printf '{"id":"base","op":"source.image","ref":"oci-layout://%s:latest"}' "$1"; }

# Malformed graph JSON: names the file, line and column.
printf '{"version": 1,\n "ops": [ {"id": "a",, } ]}\n' >"$T/malformed.json"
kbuild_fails --def "$T/malformed.json"
assert_contains "$(error_text)" "malformed.json:2:" "malformed JSON error"

# A cycle is named, op by op, before anything runs.
cat >"$T/cycle.json" <<JSON
{"version":1,"ops":[$(img "$LAYOUT"),
 {"id":"a","op":"exec","input":"b","args":["true"]},
 {"id":"b","op":"exec","input":"a","args":["true"]}],"output":"a"}
JSON
kbuild_fails --def "$T/cycle.json"
assert_contains "$(error_text)" "cycle" "cycle error"
assert_contains "$(error_text)" "'a' -> 'b' -> 'a'" "cycle error"

# A missing image layout names the path.
printf '{"version":1,"ops":[%s],"output":"base"}' "$(img "$T/no-such-layout")" >"$T/missing.json"
kbuild_fails --def "$T/missing.json"
assert_contains "$(error_text)" "$T/no-such-layout" "missing image error"

# A platform the layout lacks lists the ones it has.
printf '{"version":1,"ops":[%s],"output":"base","platform":"linux/s390x"}' "$(img "$LAYOUT")" >"$T/plat.json"
kbuild_fails --def "$T/plat.json"
assert_contains "$(error_text)" "linux/arm64" "platform error"

# A context symlink pointing outside: recorded as a link, never followed.
echo "host secret $$" >"$OUTSIDE/secret.txt"
mkdir -p "$T/ctx"
ln -s "$OUTSIDE/secret.txt" "$T/ctx/link"
ln -s ../outside "$T/ctx/dirlink"
echo inside >"$T/ctx/inside.txt"
cat >"$T/ctx.json" <<JSON
{"version":1,"ops":[$(img "$LAYOUT"),
 {"id":"ctx","op":"source.local","path":"$T/ctx"},
 {"id":"r","op":"exec","input":"base","args":["sh","-c","(cat /src/link || echo unreadable) > /result; (cat /src/dirlink/secret.txt || echo unreadable) >> /result"],
  "mounts":[{"target":"/src","input":"ctx"}]},
 {"id":"f","op":"file","input":"r","actions":[{"action":"copy","from":"ctx","src":"/","dest":"/copied/"}]}
],"output":"f"}
JSON
kbuild --def "$T/ctx.json" -o "$T/ctx-out" || fail "context symlink build: $(tail -3 "$T/progress.json")"
assert_eq "$(cat "$T/ctx-out/result")" "$(printf 'unreadable\nunreadable')" "reading through the links"
assert_eq "$(readlink "$T/ctx-out/copied/link")" "$OUTSIDE/secret.txt" "link kept as a link"
grep -rqs "host secret $$" "$KILN_ROOT" && fail "the outside file's content reached kiln's store"
grep -rqs "host secret $$" "$T/ctx-out" && fail "the outside file's content reached the output"

# Hostile tar layers: refused, naming the entry; nothing lands outside.
for kind in dotdot abs-symlink hardlink; do
	rm -rf --one-file-system "$T/evil-$kind"
	python3 "$(dirname "$0")/make-evil-layout.py" "$T/evil-$kind" "$kind" "$OUTSIDE"
	printf '{"version":1,"ops":[%s],"output":"base","platform":"linux/amd64"}' \
		"$(img "$T/evil-$kind")" >"$T/evil.json"
	kbuild_fails --def "$T/evil.json"
	case $kind in
	dotdot) assert_contains "$(error_text)" "evil" "$kind error" ;;
	abs-symlink) assert_contains "$(error_text)" "link/evil" "$kind error" ;;
	hardlink) assert_contains "$(error_text)" "hl" "$kind error" ;;
	esac
	[ -e "$OUTSIDE/evil" ] && fail "$kind: a layer wrote outside"
	find /tmp /var/tmp /etc /root -xdev -name evil -newer "$T/evil.json" -not -path "$T/evil-*" 2>/dev/null | grep -q . &&
		fail "$kind: an 'evil' file appeared on the host"
done
assert_eq "$(ls "$OUTSIDE")" "secret.txt" "outside dir content"

# An OCI layout whose blob does not match its digest: named, nothing stored.
cp -r "$LAYOUT" "$T/corrupt"
layer=$(jq -r '.manifests[0].digest' "$T/corrupt/index.json")
idx=$(sed 's/sha256://' <<<"$layer")
# Corrupt the amd64 manifest's first layer.
man=$(jq -r '.manifests[] | select(.platform.architecture == "amd64") | .digest' \
	"$T/corrupt/blobs/sha256/$idx" | sed 's/sha256://')
lay=$(jq -r '.layers[0].digest' "$T/corrupt/blobs/sha256/$man" | sed 's/sha256://')
chmod u+w "$T/corrupt/blobs/sha256/$lay"
printf 'X' | dd of="$T/corrupt/blobs/sha256/$lay" bs=1 seek=100 conv=notrunc 2>/dev/null
printf '{"version":1,"ops":[%s],"output":"base","platform":"linux/amd64"}' "$(img "$T/corrupt")" >"$T/corrupt.json"
# A fresh root: with the good blob already stored under that digest, kiln
# would rightly never read the corrupt copy.
KILN_ROOT="$T/root-corrupt" kbuild_fails --def "$T/corrupt.json"
assert_contains "$(error_text)" "sha256:$lay" "corrupt blob error"
[ -e "$T/root-corrupt/worker/cas/blobs/sha256/$lay" ] && fail "the corrupt blob was stored under its name"
KILN_ROOT="$T/root-corrupt" "$KILN" debug fsck >/dev/null || fail "fsck after the corrupt import"

# Every program and verb parses flags one way (basic/args.h): --help is
# the usage on stdout and exit 0; an unknown flag or a stray operand is an
# error on stderr naming it, and exit 2.
check_flags() { # NAME COMMAND...
	local name=$1 rc
	shift
	rc=0; "$@" --help >"$T/flags.out" 2>"$T/flags.err" || rc=$?
	assert_eq "$rc" 0 "$name --help exit status"
	grep -q "Usage" "$T/flags.out" || fail "$name --help printed no usage on stdout: $(cat "$T/flags.out")"
	rc=0; "$@" --no-such-flag >"$T/flags.out" 2>"$T/flags.err" || rc=$?
	assert_eq "$rc" 2 "$name --no-such-flag exit status"
	assert_contains "$(cat "$T/flags.err")" "no-such-flag" "$name's error for an unknown flag"
	[ ! -s "$T/flags.out" ] || fail "$name wrote to stdout on bad usage: $(cat "$T/flags.out")"
	rc=0; "$@" stray-a stray-b >"$T/flags.out" 2>"$T/flags.err" || rc=$?
	assert_eq "$rc" 2 "$name with stray operands: exit status"
	assert_contains "$(cat "$T/flags.err")" "stray-" "$name's error for a stray operand"
}
check_flags "kiln build" "$KILN" build

# --build-context NAME=VALUE: a bad value is a usage error naming the flag.
mkdir -p "$T/bc-ctx/dir"
printf 'FROM scratch\n' >"$T/bc-ctx/Dockerfile"
bad_context() { # WHAT FRAGMENT ARGS...
	local what=$1 frag=$2 rc=0
	shift 2
	"$KILN" build "$@" "$T/bc-ctx" >"$T/bc.out" 2>"$T/bc.err" || rc=$?
	assert_eq "$rc" 2 "--build-context $what: exit status"
	assert_contains "$(cat "$T/bc.err")" "--build-context" "--build-context $what: error names the flag"
	assert_contains "$(cat "$T/bc.err")" "$frag" "--build-context $what: error"
}
bad_context "without =" "is not NAME=VALUE" --build-context foo
bad_context "empty name" "is not NAME=VALUE" --build-context "=$T/bc-ctx/dir"
bad_context "upper-case name" "not a valid context name" --build-context "Foo=$T/bc-ctx/dir"
bad_context "twice" "'foo' is given twice" --build-context "foo=$T/bc-ctx/dir" \
	--build-context "docker.io/library/foo:latest=docker-image://busybox"
bad_context "missing dir" "is not a directory, docker-image://REF or oci-layout://PATH" \
	--build-context "foo=$T/bc-ctx/nope"
bad_context "url" "URLs are not supported" --build-context "foo=https://example.com/x.git"
bad_context "empty image" "empty reference" --build-context "foo=docker-image://"
bad_context "layout digest" "@DIGEST is not supported" \
	--build-context "foo=oci-layout://$T/bc-ctx@sha256:0000"
check_flags "kiln du" "$KILN" du
check_flags "kiln prune" "$KILN" prune
check_flags "kiln workers" "$KILN" workers
check_flags "kiln debug fsck" "$KILN" debug fsck
check_flags kilnd "${KILND:?KILND must name the kilnd binary (meson test sets it)}" --root "$T/flags-kilnd"
check_flags kiln-worker "${KILN_WORKER:?KILN_WORKER must name the kiln-worker binary (meson test sets it)}"

assert_no_mounts
assert_fsck_clean
echo "ok: bad input is refused clearly and confined"
