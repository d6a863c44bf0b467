#!/bin/bash
# exec semantics on the real runtime: whiteouts across layers, cache mounts,
# failing steps (clear error, nothing cached).
. "$(dirname "$0")/lib.sh"

graph() { # graph FILE OUTPUT OPS...
	local f=$1 out=$2
	shift 2
	local IFS=,
	printf '{"version":1,"ops":[{"id":"base","op":"source.image","ref":"oci-layout://%s:latest"},%s],"output":"%s"}\n' \
		"$LAYOUT" "$*" "$out" >"$f"
}

# A file removed by a later step stays removed, also two layers up.
graph "$T/wh.json" s3 \
	'{"id":"s1","op":"exec","input":"base","args":["sh","-c","echo a > /keep; echo b > /gone; mkdir -p /d/e; echo c > /d/e/f"]}' \
	'{"id":"s2","op":"exec","input":"s1","args":["sh","-c","rm /gone; rm -r /d; rm /bin/ls"]}' \
	'{"id":"s3","op":"exec","input":"s2","args":["sh","-c","test ! -e /gone && test ! -e /d && test ! -e /bin/ls && echo seen: $(cat /keep)"]}'
kbuild --def "$T/wh.json" -o "$T/wh" || fail "whiteout build: $(tail -3 "$T/progress.json")"
jq -r 'select(.log != null) | .log' < <(events) | grep -q '^seen: a$' || fail "s3 did not see /keep"
[ -e "$T/wh/keep" ] || fail "/keep missing from the result"
for gone in gone d bin/ls; do
	[ -e "$T/wh/$gone" ] && fail "/$gone came back in the exported result"
done
[ -e "$T/wh/bin/cat" ] || fail "/bin/cat should remain"

# Cache mounts persist across builds (the step itself is not cached here).
graph "$T/cm.json" c \
	'{"id":"c","op":"exec","input":"base","args":["sh","-c","echo x >> /cache/count; wc -l < /cache/count > /n"],"mounts":[{"target":"/cache","type":"cache","id":"counter"}]}'
kbuild --def "$T/cm.json" -o "$T/cm1" || fail "cache mount build 1"
kbuild --def "$T/cm.json" --no-cache -o "$T/cm2" || fail "cache mount build 2"
assert_eq "$(tr -d ' ' <"$T/cm1/n")" "1" "first cache-mount count"
assert_eq "$(tr -d ' ' <"$T/cm2/n")" "2" "second cache-mount count"
[ -e "$T/cm2/cache/count" ] && fail "cache mount contents leaked into the result"

# A failing step: exit code and output tail in the error; nothing cached.
graph "$T/bad.json" boom \
	'{"id":"ok","op":"exec","input":"base","args":["sh","-c","echo fine > /fine"]}' \
	'{"id":"boom","op":"exec","input":"ok","args":["sh","-c","echo about to fail; echo on stderr >&2; exit 3"]}'
kbuild_fails --def "$T/bad.json"
err=$(error_text)
assert_contains "$err" "op 'boom'" "error"
assert_contains "$err" "exit code 3" "error"
assert_contains "$err" "about to fail" "error"
assert_contains "$err" "on stderr" "error"
kbuild_fails --def "$T/bad.json"
has_event '.name != null and (.name | startswith("[boom]")) and .status == "running"' ||
	fail "the failed step must run again (it was cached?)"
has_event '.name != null and (.name | startswith("[ok]")) and .status == "cached"' ||
	fail "the step before the failure should be cached"

# Network none: only loopback inside.
graph "$T/net.json" n \
	'{"id":"n","op":"exec","input":"base","args":["sh","-c","tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d \" \" > /ifaces"]}'
kbuild --def "$T/net.json" -o "$T/net" || fail "network build"
assert_eq "$(cat "$T/net/ifaces")" "lo" "interfaces with network none"

# Identical ops are one vertex: it runs once and both uses see one result.
graph "$T/dedup.json" f \
	'{"id":"a","op":"exec","input":"base","args":["sh","-c","cat /proc/sys/kernel/random/uuid > /x"]}' \
	'{"id":"b","op":"exec","input":"base","args":["sh","-c","cat /proc/sys/kernel/random/uuid > /x"]}' \
	'{"id":"f","op":"file","actions":[{"action":"copy","from":"a","src":"/x","dest":"/xa"},{"action":"copy","from":"b","src":"/x","dest":"/xb"}]}'
kbuild --def "$T/dedup.json" -o "$T/dedup" || fail "dedup build"
cmp -s "$T/dedup/xa" "$T/dedup/xb" || fail "identical ops gave different results"
assert_eq "$(events | jq -r 'select(.status == "done" and (.name | startswith("[a]") or startswith("[b]"))) | .vertex' | wc -l)" "1" "runs of the shared exec"

# A new empty directory on a base tree exports (its node is implied).
mkdir -p "$T/ctx-e" && echo hi >"$T/ctx-e/f"
printf '{"version":1,"ops":[{"id":"c","op":"source.local","path":"%s"},{"id":"m","op":"file","input":"c","actions":[{"action":"mkdir","path":"/newdir"}]}],"output":"m"}' \
	"$T/ctx-e" >"$T/empty.json"
kbuild --def "$T/empty.json" -o "$T/empty" || fail "mkdir build: $(tail -2 "$T/progress.json")"
[ -d "$T/empty/newdir" ] || fail "empty dir missing from the export"
kbuild --def "$T/empty.json" -o "type=tar,dest=$T/empty.tar" || fail "cached mkdir export"
tar -tf "$T/empty.tar" | grep -q '^newdir/$' || fail "empty dir missing from the tar"

# Early cut-off and aliases: the same chain on the same content under a new
# definition (an equivalent include pattern) is resolved by content keys,
# nothing runs; the output is then known under its new definition key, so
# the next build is one lookup.
chain() { # INCLUDE
	printf '{"version":1,"ops":[{"id":"c","op":"source.local","path":"%s","include":["%s"]},' "$T/ctx-e" "$1"
	printf '{"id":"m1","op":"file","input":"c","actions":[{"action":"mkfile","path":"/1","data":"1"}]},'
	printf '{"id":"m2","op":"file","input":"m1","actions":[{"action":"mkfile","path":"/2","data":"2"}]},'
	printf '{"id":"m3","op":"file","input":"m2","actions":[{"action":"mkfile","path":"/3","data":"3"}]}],"output":"m3"}'
}
chain f >"$T/chain-a.json"
chain ./f >"$T/chain-b.json"
kbuild --def "$T/chain-a.json" || fail "chain a"
kbuild --def "$T/chain-b.json" || fail "chain b"
assert_eq "$(events | jq -r 'select(.status == "done") | .name' | grep -c '^\[m' || true)" 0 "steps run for chain b (content keys hit)"
assert_eq "$(events | jq -r 'select(.status == "cached") | .name' | grep -c '^\[m')" 3 "content-key hits for chain b"
kbuild --def "$T/chain-b.json" || fail "chain b again"
assert_eq "$(events | jq -s '[.[] | select(.status == "cached")] | length')" 1 "lookups resolving chain b again (its output's alias)"
assert_eq "$(events | jq -s '[.[] | select(.status == "done")] | length')" 0 "steps run for chain b again"

# A step's UTF-8 output shows as it is, in plain and json progress; bytes
# that are not UTF-8 become U+FFFD, control characters '?'.
graph "$T/utf8.json" u \
	'{"id":"u","op":"exec","input":"base","args":["sh","-c","printf \"caf\\303\\251 \\342\\200\\230ok\\342\\200\\231 bad:\\377 bell:\\007 csi:\\302\\233 del:\\177 end\\n\""]}'
"$KILN" build --def "$T/utf8.json" --progress plain 2>"$T/utf8.plain" || fail "utf8 build: $(tail -3 "$T/utf8.plain")"
grep -q "café ‘ok’ bad:� bell:? csi:?? del:? end" "$T/utf8.plain" || fail "UTF-8 output in plain progress: $(grep -a 'bad:' "$T/utf8.plain")"
kbuild --def "$T/utf8.json" --no-cache || fail "utf8 build (json)"
jq -r 'select(.log != null) | .log' < <(events) | grep -q "café ‘ok’ bad:� bell:? csi:?? del:? end" ||
	fail "UTF-8 output in json progress: $(jq -r 'select(.log != null) | .log' < <(events))"

assert_no_mounts
assert_fsck_clean
echo "ok: whiteouts, cache mounts, failures, network, dedup, empty dirs, content-key cut-off, UTF-8 output"
