#!/bin/bash
# du / prune / fsck: prune never deletes what a kept record needs, removes
# what nothing needs, prints exactly what it removed, changes nothing in a
# dry run, and --all empties the cache without corrupting the store.
. "$(dirname "$0")/lib.sh"

BLOBS="$KILN_ROOT/worker/cas/blobs"
blob_count() { find "$BLOBS" -type f | wc -l; }
records() { "$KILN" du | awk '$1 == "records:" { print $2 }'; }
# The line of prune's output $1 that starts with $2 ("records:", "cas:"...).
line() { grep "^$2" "$1" | tr -s ' ' || fail "prune printed no '$2' line: $(cat "$1")"; }

cat >"$T/g.json" <<JSON
{"version":1,"ops":[
 {"id":"base","op":"source.image","ref":"oci-layout://$LAYOUT:latest"},
 {"id":"a","op":"exec","input":"base","args":["sh","-c","dd if=/dev/urandom of=/big bs=1M count=4 2>/dev/null"]},
 {"id":"b","op":"file","input":"a","actions":[{"action":"mkfile","path":"/note","data":"kept\n"}]}
],"output":"b"}
JSON
kbuild --def "$T/g.json" -o "$T/out1" || fail "build"
"$KILN" du >"$T/du1" || fail "du"
nrec=$(records)
[ "$nrec" -gt 0 ] || fail "du counts no records after a build: $(cat "$T/du1")"
nblobs=$(blob_count)
grep -q "^cas blobs: *$nblobs " "$T/du1" || fail "du's blob count is not the store's $nblobs: $(cat "$T/du1")"

# A blob no record references: 4 KiB under its own digest.
head -c 4096 /dev/urandom >"$T/orphan"
orphan="$BLOBS/sha256/$(sha256sum "$T/orphan" | cut -d' ' -f1)"
install -m 0444 "$T/orphan" "$orphan"
assert_fsck_clean

# A dry run says what would go and changes nothing.
"$KILN" prune --dry-run >"$T/dry1" || fail "prune --dry-run"
assert_eq "$(line "$T/dry1" records:)" "records: would delete 0, kept $nrec" "dry run records"
assert_eq "$(line "$T/dry1" cas:)" "cas: would free 1 blobs (4.0 KiB)" "dry run cas"
[ -e "$orphan" ] || fail "prune --dry-run deleted a blob"
assert_eq "$(blob_count)" "$((nblobs + 1))" "blobs after a dry run"
assert_eq "$(records)" "$nrec" "records after a dry run"

# Plain prune keeps every record and what it references; the orphan goes.
"$KILN" prune >"$T/prune1" || fail "prune"
assert_eq "$(line "$T/prune1" records:)" "records: deleted 0, kept $nrec" "prune records"
assert_eq "$(line "$T/prune1" cas:)" "cas: freed 1 blobs (4.0 KiB)" "prune cas"
[ ! -e "$orphan" ] || fail "plain prune kept a blob nothing references"
assert_eq "$(blob_count)" "$nblobs" "blobs after a plain prune"
assert_fsck_clean
[ -n "$(ls "$KILN_ROOT/worker/layers/memo" 2>/dev/null)" ] || fail "plain prune dropped a layer memo still in use"
kbuild --def "$T/g.json" -o "$T/out2" || fail "build after prune"
assert_eq "$(vertices_run)" "" "vertices run after a plain prune"
cmp -s "$T/out1/big" "$T/out2/big" || fail "result changed after prune"
# Nothing left to free: a second prune frees nothing.
"$KILN" prune >"$T/prune1b" || fail "prune again"
assert_eq "$(line "$T/prune1b" cas:)" "cas: freed 0 blobs (0 B)" "second prune"

# --keep-storage 0 drops every record; what it says it freed is what went.
"$KILN" prune --keep-storage 0 --dry-run >"$T/dry2" || fail "prune --keep-storage --dry-run"
assert_eq "$(line "$T/dry2" records:)" "records: would delete $nrec, kept 0" "dry run --keep-storage 0"
assert_eq "$(blob_count)" "$nblobs" "blobs after a dry run of --keep-storage 0"
"$KILN" prune --keep-storage 0 >"$T/prune2" || fail "prune --keep-storage"
assert_eq "$(line "$T/prune2" records:)" "records: deleted $nrec, kept 0" "prune --keep-storage 0 records"
freed=$(line "$T/prune2" cas: | awk '{ print $3 }')
assert_eq "$(line "$T/dry2" cas: | awk '{ print $4 }')" "$freed" "blobs the dry run said would go"
assert_eq "$(blob_count)" "$((nblobs - freed))" "blobs left after prune --keep-storage 0 (it said it freed $freed)"
[ "$freed" -gt 0 ] || fail "prune --keep-storage 0 freed no blob"
assert_eq "$(records)" 0 "records after --keep-storage 0"
assert_fsck_clean

# --all: nothing cached any more, everything runs again and still works.
kbuild --def "$T/g.json" -o "$T/out3" || fail "build after prune --keep-storage 0"
[ -n "$(vertices_run)" ] || fail "nothing ran after every record was dropped"
nrec=$(records)
nblobs=$(blob_count)
"$KILN" prune --all >"$T/prune3" || fail "prune --all"
assert_eq "$(line "$T/prune3" records:)" "records: deleted $nrec, kept 0" "prune --all records"
freed=$(line "$T/prune3" cas: | awk '{ print $3 }')
assert_eq "$(blob_count)" "$((nblobs - freed))" "blobs left after prune --all (it said it freed $freed)"
assert_fsck_clean
[ -z "$(ls "$KILN_ROOT/worker/layers/memo" 2>/dev/null)" ] || fail "prune --all left layer memos behind"
[ "$(blob_count)" -le 2 ] || fail "prune --all left $(blob_count) blobs"
kbuild --def "$T/g.json" -o "$T/out4" || fail "build after prune --all"
[ -n "$(vertices_run)" ] || fail "nothing ran after prune --all"
assert_eq "$(cat "$T/out4/note")" "kept" "rebuilt result"

# A build context after prune --all: its files' blobs went, and the stat
# cache that would name them is forgotten, so they are read again (a walk
# trusts the stat cache without asking the store per file).
CTX="$T/ctx"
mkdir -p "$CTX"
printf 'one\n' >"$CTX/a"
printf 'FROM scratch\nCOPY a /a\n' >"$CTX/Dockerfile"
kbuild -o "$T/ctx1" "$CTX" || fail "context build"
"$KILN" prune --all >"$T/prune4" || fail "prune --all after the context build"
kbuild -o "$T/ctx2" "$CTX" || fail "context build after prune --all: $(tail -3 "$T/progress.json")"
assert_eq "$(cat "$T/ctx2/a")" "one" "the context file after prune --all"
assert_fsck_clean
assert_no_mounts
echo "ok: du, prune and fsck"
