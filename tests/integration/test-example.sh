#!/bin/bash
# The README example: a two-platform graph (amd64 natively, arm64 through
# binfmt), a context with excludes, file ops; then cache behaviour.
. "$(dirname "$0")/lib.sh"

mkdir -p "$T/ex"
cp -r "$KILN_SOURCE_ROOT/examples/hello" "$T/ex/hello"
ln -s "$LAYOUT" "$T/ex/busybox"
G="$T/ex/hello/graph.json"

kbuild --def "$G" -o "type=local,dest=$T/out1" -o "type=tar,dest=$T/out1.tar" ||
	fail "first build failed: $(tail -5 "$T/progress.json")"

assert_eq "$(cat "$T/out1/app/MESSAGE.txt")" "KILN BUILDS TREES, NOT TARBALLS" "exec output"
assert_eq "$(cat "$T/out1/app/amd64.txt")" "built on x86_64" "amd64 step"
assert_eq "$(cat "$T/out1/app/arm64.txt")" "built on aarch64" "arm64 step (binfmt)"
assert_eq "$(cat "$T/out1/app/VERSION")" "1.0" "mkfile"
assert_eq "$(readlink "$T/out1/app/greeting")" "hello.txt" "symlink"
assert_eq "$(stat -c '%u:%g %a' "$T/out1/app/hello.txt")" "1000:1000 640" "copy chown/chmod"
grep -q notes.tmp "$T/out1/app/context-files.txt" && fail "excluded file reached the build"
grep -q hello.txt "$T/out1/app/context-files.txt" || fail "context file missing from the mount"

# Every vertex event carries the fields tools rely on.
all_vertex_events '(.vertex | startswith("sha256:")) and (.name | type == "string") and
	(.cached | type == "boolean") and (.platform | type == "string") and
	(.worker | type == "string") and (.emulated | type == "boolean") and has("started") and has("completed")' ||
	fail "malformed progress events"
has_event '.name == "[probe] uname on arm64" and .status == "running" and .emulated == true and .platform == "linux/arm64"' ||
	fail "arm64 step not marked emulated"
has_event '.name == "[build] shout the message" and .status == "running" and .emulated == false and .platform == "linux/amd64"' ||
	fail "amd64 step should run natively"
[ -z "$(vertices_cached)" ] || fail "cold build had cached vertices: $(vertices_cached)"

# Rebuild: nothing runs, every vertex is cached, the output is identical.
kbuild --def "$G" -o "type=local,dest=$T/out2" -o "type=tar,dest=$T/out2.tar" || fail "rebuild failed"
assert_eq "$(vertices_run)" "" "vertices run on a rebuild"
assert_eq "$(jq -r 'select(.status != null and .status != "queued") | .cached' < <(events) | sort -u)" "true" "rebuild cached flags"
diff -r "$T/out1" "$T/out2" >/dev/null || fail "rebuilt output differs"
cmp -s "$T/out1.tar" "$T/out2.tar" || fail "rebuilt tar differs"
assert_eq "$(cd "$T/out1" && find . -mindepth 1 -printf '%p %m %u %T@ %y\n' | sort | md5sum)" \
	"$(cd "$T/out2" && find . -mindepth 1 -printf '%p %m %u %T@ %y\n' | sort | md5sum)" "metadata of rebuilt output"

# An excluded file changes nothing.
echo "more scratch" >>"$T/ex/hello/context/notes.tmp"
kbuild --def "$G" || fail "build after excluded change failed"
assert_eq "$(vertices_run)" "" "vertices run after an excluded change"

# One context file changes: only what depends on it runs again.
echo "a new message" >"$T/ex/hello/context/src/message.txt"
kbuild --def "$G" -o "type=local,dest=$T/out3" || fail "build after change failed"
assert_eq "$(vertices_run | sed 's/\].*/]/' | tr '\n' ',')" "[app],[build],[ctx]," "vertices rerun"
assert_eq "$(cat "$T/out3/app/MESSAGE.txt")" "A NEW MESSAGE" "rebuilt exec output"
has_event '.name == "[probe] uname on arm64" and .status == "cached"' ||
	fail "the arm64 step should stay cached"

assert_no_mounts
assert_fsck_clean
echo "ok: example builds, caches and rebuilds only what changed"
