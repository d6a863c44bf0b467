#!/bin/bash
# A remote cache in a directory, with buildx's flags (issue 12 item 4):
# --cache-to type=local,dest=DIR from one empty KILN_ROOT, --cache-from
# type=local,src=DIR into another (as an ephemeral CI runner would), for a
# two-platform build: nothing runs the second time and the OCI export is
# byte-identical. mode=min exports fewer records than mode=max. A corrupt
# record, a corrupt blob and a missing directory are warnings, never used,
# and the build's output is still right; a bad spec fails before building.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cache-lib.sh"
export SOURCE_DATE_EPOCH=1700000000

CTX="$T/ctx"
cache_test_ctx "$CTX"
B=(--platform linux/amd64,linux/arm64 --build-arg "BASE=oci-layout://$LAYOUT:latest")
summary() { events | jq -r "select(.summary) | .summary.$1"; }
records() { find "$1/ac" -type f | wc -l; }

echo "== export (mode=max) from an empty root"
KILN_ROOT="$T/r1" kbuild "${B[@]}" --cache-to "type=local,dest=$T/cache,mode=max" \
	-o "type=oci,dest=$T/a.tar" "$CTX" || fail "first build: $(tail -3 "$T/progress.json")"
[ "$(summary bytes_to_cache)" -gt 1500000 ] || fail "too little exported: $(summary bytes_to_cache)"
[ "$(records "$T/cache")" -ge 6 ] || fail "mode=max wrote $(records "$T/cache") records"

echo "== import into another empty root: nothing runs, the same image"
KILN_ROOT="$T/r2" kbuild "${B[@]}" --cache-from "type=local,src=$T/cache" \
	-o "type=oci,dest=$T/b.tar" "$CTX" || fail "cached build: $(tail -3 "$T/progress.json")"
assert_eq "$(vertices_run | grep -v 'load build context' || true)" "" "steps run with everything in the cache"
[ "$(summary bytes_from_cache)" -gt 1500000 ] || fail "too little imported: $(summary bytes_from_cache)"
cmp -s "$T/a.tar" "$T/b.tar" || fail "the image from the cache differs"
has_event '.warning' && fail "unexpected warning: $(events | grep warning)"

echo "== mode=min exports the outputs' records only"
KILN_ROOT="$T/r1" kbuild "${B[@]}" --cache-to "type=local,dest=$T/cmin" "$CTX" ||
	fail "mode=min build: $(tail -3 "$T/progress.json")"
[ "$(records "$T/cmin")" -ge 1 ] && [ "$(records "$T/cmin")" -lt "$(records "$T/cache")" ] ||
	fail "mode=min wrote $(records "$T/cmin") records, mode=max $(records "$T/cache")"

echo "== a record with bad JSON: reported, not used"
cp -a "$T/cache" "$T/badrec"
for f in "$T/badrec"/ac/sha256/*; do printf '{"kiln_cache_record": 1, oops' >"$f"; done
KILN_ROOT="$T/r3" kbuild "${B[@]}" --cache-from "type=local,src=$T/badrec" \
	-o "type=oci,dest=$T/c.tar" "$CTX" || fail "build with corrupt records: $(tail -3 "$T/progress.json")"
assert_contains "$(events | jq -r 'select(.warning) | .warning')" "bad JSON" "warnings"
assert_contains "$(events | jq -r 'select(.warning) | .warning')" "not used" "warnings"
[ -n "$(vertices_run)" ] || fail "nothing ran, yet every record was corrupt"
cmp -s "$T/a.tar" "$T/c.tar" || fail "the image differs after corrupt records"

echo "== a blob with other bytes: reported, not used"
cp -a "$T/cache" "$T/badblob"
big=$(find "$T/badblob/cas" -type f -size +700k | head -1)
[ -n "$big" ] || fail "no large blob in the cache"
head -c "$(stat -c %s "$big")" /dev/zero >"$big"
KILN_ROOT="$T/r4" kbuild "${B[@]}" --cache-from "type=local,src=$T/badblob" \
	-o "type=oci,dest=$T/d.tar" "$CTX" || fail "build with a corrupt blob: $(tail -3 "$T/progress.json")"
assert_contains "$(events | jq -r 'select(.warning) | .warning')" "sha256:$(basename "$big")" "warning names the blob"
cmp -s "$T/a.tar" "$T/d.tar" || fail "the image differs after a corrupt blob"
[ -d "$T/r4/worker/cas/blobs/sha256" ] || fail "no store at $T/r4/worker/cas"
[ ! -e "$T/r4/worker/cas/blobs/sha256/$(head -c "$(stat -c %s "$big")" /dev/zero | sha256sum | cut -c1-64)" ] ||
	fail "the corrupt bytes were stored"
# ...and the corrupt blob left the cache (a put skips what is there).
[ ! -e "$big" ] || fail "the corrupt blob $big is still in the cache"

echo "== a missing directory: a warning, the build goes on"
KILN_ROOT="$T/r5" kbuild --build-arg "BASE=oci-layout://$LAYOUT:latest" \
	--cache-from "type=local,src=$T/nonexistent" "$CTX" || fail "missing cache dir failed the build"
assert_contains "$(events | jq -r 'select(.warning) | .warning')" "$T/nonexistent" "warning names the dir"

echo "== bad specs fail before anything runs"
kbuild_fails --cache-to "type=registry,ref=x" "$CTX"
assert_contains "$(error_text)" "--cache-to type=registry,ref=x: type 'registry' is not supported" "error"
kbuild_fails --cache-from "type=local,dest=$T/x" "$CTX"
assert_contains "$(error_text)" "--cache-from type=local,dest=$T/x" "error"
kbuild_fails --cache-to "type=local,dest=$T/x,mode=all" "$CTX"
assert_contains "$(error_text)" "mode=all" "error"
echo "== kiln prune --cache: old records go, and what a kept record needs stays"
# The cache of build 1 is two days old; build 2 changes its last step and
# writes to the same cache (its first steps' records are written again).
find "$T/cache" -type f -exec touch -d "@$(($(date +%s) - 172800))" {} +
sed 's|cat /f /small > /both|cat /small /f > /both|' "$CTX/Dockerfile" >"$CTX/Dockerfile.2"
KILN_ROOT="$T/r1" kbuild "${B[@]}" -f "$CTX/Dockerfile.2" --cache-to "type=local,dest=$T/cache,mode=max" \
	-o "type=oci,dest=$T/e.tar" "$CTX" || fail "second export: $(tail -3 "$T/progress.json")"
n_before=$(records "$T/cache")
"$KILN" prune --cache "$T/cache" --older-than 1d --grace 0s --dry-run >"$T/prune.out" ||
	fail "prune --dry-run: $(cat "$T/prune.out")"
assert_eq "$(records "$T/cache")" "$n_before" "records after a dry run"
"$KILN" prune --cache "$T/cache" --older-than 1d --grace 0s >"$T/prune.out" || fail "prune: $(cat "$T/prune.out")"
grep -q "^records:  deleted [1-9]" "$T/prune.out" || fail "prune deleted no record: $(cat "$T/prune.out")"
grep -q "^blobs:    deleted [1-9]" "$T/prune.out" || fail "prune deleted no blob: $(cat "$T/prune.out")"
[ "$(records "$T/cache")" -lt "$n_before" ] || fail "records left: $(records "$T/cache") of $n_before"
# Build 2 from the pruned cache: a full hit, the same image.
KILN_ROOT="$T/r6" kbuild "${B[@]}" -f "$CTX/Dockerfile.2" --cache-from "type=local,src=$T/cache" \
	-o "type=oci,dest=$T/f.tar" "$CTX" || fail "build 2 from the pruned cache: $(tail -3 "$T/progress.json")"
assert_eq "$(vertices_run | grep -v 'load build context' || true)" "" "steps run after prune"
cmp -s "$T/e.tar" "$T/f.tar" || fail "build 2's image differs after prune"
has_event '.warning' && fail "warning after prune: $(events | grep warning)"
# Build 1's last step was pruned: only it runs; the rest still hits.
KILN_ROOT="$T/r7" kbuild "${B[@]}" --cache-from "type=local,src=$T/cache" \
	-o "type=oci,dest=$T/g.tar" "$CTX" || fail "build 1 from the pruned cache: $(tail -3 "$T/progress.json")"
assert_eq "$(vertices_run | grep -c 'cat /f /small')" 2 "build 1's last step runs on both platforms"
cmp -s "$T/a.tar" "$T/g.tar" || fail "build 1's image differs after prune"
"$KILN" prune --cache "$T/nonexistent" >"$T/prune.out" 2>&1 && fail "prune of a missing cache succeeded"
assert_contains "$(cat "$T/prune.out")" "$T/nonexistent" "prune error"
echo "ok: cache-local"
