#!/bin/bash
# du / prune / fsck: prune never deletes what a kept record needs, and
# --all empties the cache without corrupting the store.
. "$(dirname "$0")/lib.sh"

cat >"$T/g.json" <<JSON
{"version":1,"ops":[
 {"id":"base","op":"source.image","ref":"oci-layout://$LAYOUT:latest"},
 {"id":"a","op":"exec","input":"base","args":["sh","-c","dd if=/dev/urandom of=/big bs=1M count=4 2>/dev/null"]},
 {"id":"b","op":"file","input":"a","actions":[{"action":"mkfile","path":"/note","data":"kept\n"}]}
],"output":"b"}
JSON
kbuild --def "$T/g.json" -o "$T/out1" || fail "build"
"$KILN" du >"$T/du1" || fail "du"
grep -qi 'records' "$T/du1" || fail "du prints no record count: $(cat "$T/du1")"

# Plain prune keeps every record and what it references.
"$KILN" prune >"$T/prune1" || fail "prune"
assert_fsck_clean
[ -n "$(ls "$KILN_ROOT/worker/layers/memo" 2>/dev/null)" ] || fail "plain prune dropped a layer memo still in use"
kbuild --def "$T/g.json" -o "$T/out2" || fail "build after prune"
assert_eq "$(vertices_run)" "" "vertices run after a plain prune"
cmp -s "$T/out1/big" "$T/out2/big" || fail "result changed after prune"

# --keep-storage 0 drops records but the store stays consistent.
"$KILN" prune --keep-storage 0 >"$T/prune2" || fail "prune --keep-storage"
assert_fsck_clean

# --all: nothing cached any more, everything runs again and still works.
"$KILN" prune --all >"$T/prune3" || fail "prune --all"
assert_fsck_clean
[ -z "$(ls "$KILN_ROOT/worker/layers/memo" 2>/dev/null)" ] || fail "prune --all left layer memos behind"
blobs=$(find "$KILN_ROOT/worker/cas/blobs" -type f | wc -l)
[ "$blobs" -le 2 ] || fail "prune --all left $blobs blobs"
kbuild --def "$T/g.json" -o "$T/out3" || fail "build after prune --all"
[ -n "$(vertices_run)" ] || fail "nothing ran after prune --all"
assert_eq "$(cat "$T/out3/note")" "kept" "rebuilt result"
assert_no_mounts
echo "ok: du, prune and fsck"
