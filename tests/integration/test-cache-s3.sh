#!/bin/bash
# The remote cache in a real S3 (Ceph's radosgw, in a network namespace of
# its own) with buildx's --cache-to/--cache-from type=s3 (issue 12): a
# two-platform build exported from one empty KILN_ROOT is a full cache hit
# in another, byte for byte; a wrong secret, a stopped radosgw and a
# blackholed one (iptables DROP in its namespace) cost a bounded time and
# one warning each, and the builds succeed; a corrupt record and a corrupt
# blob are reported and not used, the blob is removed and an export puts
# it back; after all that, no record in the bucket points at a missing
# blob, and gc empties it.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cache-lib.sh"
. "$(dirname "$0")/netns-lib.sh"
. "$(dirname "$0")/s3-lib.sh"
export SOURCE_DATE_EPOCH=1700000000

netns_setup
netns_add s3 2
s3_start "$T/s3" s3
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
unset AWS_SESSION_TOKEN AWS_PROFILE
S3SPEC="type=s3,bucket=$S3_BUCKET,prefix=ci/kiln,region=$S3_REGION,endpoint_url=$S3_ENDPOINT,use_path_style=true"

CTX="$T/ctx"
cache_test_ctx "$CTX"
B=(--platform linux/amd64,linux/arm64 --build-arg "BASE=oci-layout://$LAYOUT:latest")
summary() { events | jq -r "select(.summary) | .summary.$1"; }
warnings() { events | jq -r 'select(.warning) | .warning'; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# A file system's listing without times: what a rebuilt step may change.
fs_list() { # DIR
	(cd "$1" && find . -printf '%p %y %m %U:%G %s %l %n\n' | sort &&
		find . -type f -print0 | sort -z | xargs -0 sha256sum)
}
objects() { # PREFIX: keys under the cache's prefix (SigV4 wants the query %-encoded)
	local p
	p=$(printf 'ci/kiln/%s' "$1" | sed 's|/|%2F|g')
	s3_curl -sS -m 30 "$S3_ENDPOINT/$S3_BUCKET?list-type=2&max-keys=1000&prefix=$p" >"$T/list.xml" ||
		fail "listing the bucket: $(cat "$T/list.xml")"
	grep -q '<ListBucketResult' "$T/list.xml" || fail "listing the bucket: $(head -c 300 "$T/list.xml")"
	grep -o '<Key>[^<]*</Key>' "$T/list.xml" | sed 's/<Key>\(.*\)<\/Key>/\1/' || true
}

echo "== export to the bucket (mode=max) from an empty root"
KILN_ROOT="$T/r1" kbuild "${B[@]}" --cache-to "$S3SPEC,mode=max" -o "type=oci,dest=$T/a.tar" \
	-o "type=local,dest=$T/a.fs" "$CTX" ||
	fail "export: $(tail -3 "$T/progress.json")"
[ "$(summary bytes_to_cache)" -gt 1500000 ] || fail "too little exported: $(summary bytes_to_cache)"
[ "$(objects ac/ | wc -l)" -ge 6 ] || fail "records in the bucket: $(objects ac/ | wc -l)"
[ -z "$(warnings)" ] || fail "warnings on export: $(warnings)"

echo "== import into another empty root: nothing runs, the same image"
KILN_ROOT="$T/r2" kbuild "${B[@]}" --cache-from "$S3SPEC" -o "type=oci,dest=$T/b.tar" "$CTX" ||
	fail "import: $(tail -3 "$T/progress.json")"
assert_eq "$(vertices_run | grep -v 'load build context' || true)" "" "steps run with everything in the bucket"
cmp -s "$T/a.tar" "$T/b.tar" || fail "the image from the bucket differs"
[ -z "$(warnings)" ] || fail "warnings on import: $(warnings)"
! grep -qF "$S3_SECRET_KEY" "$T/progress.json" || fail "the secret is in the progress output"

# The same build without any cache, for the bounds below.
t0=$(now_ms)
KILN_ROOT="$T/base" kbuild "${B[@]}" "$CTX" || fail "baseline build: $(tail -3 "$T/progress.json")"
base_ms=$(($(now_ms) - t0))
echo "a cold build without a remote cache: ${base_ms} ms"

echo "== a wrong secret: one warning, the build succeeds"
t0=$(now_ms)
AWS_SECRET_ACCESS_KEY=wrong-secret KILN_ROOT="$T/r3" kbuild "${B[@]}" --cache-from "$S3SPEC" \
	--cache-to "$S3SPEC" -o "type=oci,dest=$T/c.tar" "$CTX" || fail "wrong secret failed the build"
echo "with a wrong secret: $(($(now_ms) - t0)) ms"
[ "$(warnings | grep -c 'unavailable')" = 1 ] || fail "want one unavailable warning: $(warnings)"
assert_contains "$(warnings)" "$S3_ENDPOINT" "the warning names the endpoint"
assert_contains "$(warnings)" "403" "the warning says why"
! grep -qF "wrong-secret" "$T/progress.json" || fail "the secret is in the progress output"
# The refused keys are named by the id's last 4 characters, never the whole id.
assert_contains "$(warnings)" "access key ...${S3_ACCESS_KEY: -4}" "the warning names the keys"
! grep -qF "$S3_ACCESS_KEY" "$T/progress.json" || fail "the whole access key id is in the progress output"
cmp -s "$T/a.tar" "$T/c.tar" || fail "the image differs with a wrong secret"

# Each sick-bucket build may take the deadline of its first call (5 s) and
# the cooldown keeps every later call from waiting: docs/cache.md.
BOUND_MS=$((base_ms + 12000))

echo "== radosgw stopped (connections hang): bounded, one warning"
kill -STOP "$S3_RGW_PID"
t0=$(now_ms)
KILN_ROOT="$T/r4" kbuild "${B[@]}" --cache-from "$S3SPEC" --cache-to "$S3SPEC" \
	-o "type=oci,dest=$T/d.tar" "$CTX" || { kill -CONT "$S3_RGW_PID"; fail "stopped radosgw failed the build"; }
took=$(($(now_ms) - t0))
kill -CONT "$S3_RGW_PID"
echo "radosgw stopped: ${took} ms (bound ${BOUND_MS} ms)"
[ "$took" -le "$BOUND_MS" ] || fail "a stopped bucket cost ${took} ms, more than ${BOUND_MS} ms"
[ "$(warnings | grep -c 'unavailable')" = 1 ] || fail "want one unavailable warning: $(warnings)"
cmp -s "$T/a.tar" "$T/d.tar" || fail "the image differs with radosgw stopped"

echo "== radosgw blackholed (packets dropped): bounded, one warning"
netns_exec s3 iptables -I INPUT -p tcp --dport "$S3_PORT" -j DROP
t0=$(now_ms)
KILN_ROOT="$T/r5" kbuild "${B[@]}" --cache-from "$S3SPEC" --cache-to "$S3SPEC" \
	-o "type=oci,dest=$T/e.tar" "$CTX" || {
	netns_exec s3 iptables -D INPUT -p tcp --dport "$S3_PORT" -j DROP
	fail "blackholed bucket failed the build"
}
took=$(($(now_ms) - t0))
netns_exec s3 iptables -D INPUT -p tcp --dport "$S3_PORT" -j DROP
echo "radosgw blackholed: ${took} ms (bound ${BOUND_MS} ms)"
[ "$took" -le "$BOUND_MS" ] || fail "a blackholed bucket cost ${took} ms, more than ${BOUND_MS} ms"
[ "$(warnings | grep -c 'unavailable')" = 1 ] || fail "want one unavailable warning: $(warnings)"
cmp -s "$T/a.tar" "$T/e.tar" || fail "the image differs with the bucket blackholed"

echo "== radosgw killed in the middle of an export's multipart upload"
# A 150 MiB file goes up in parts; radosgw dies (and comes back) while they
# do. The build succeeds; the record, written last, is not there, and no
# record in the whole bucket names a missing blob.
head -c $((150 << 20)) /dev/urandom >"$CTX/huge"
printf 'ARG BASE\nFROM ${BASE}\nCOPY huge /huge\n' >"$CTX/Dockerfile.huge"
KILN_ROOT="$T/r7" kbuild "${B[@]}" -f "$CTX/Dockerfile.huge" --cache-to "$S3SPEC,mode=max" "$CTX" &
build_pid=$!
seen=no
for _ in $(seq 1 600); do
	if s3_curl -sS -m 5 "$S3_ENDPOINT/$S3_BUCKET?uploads=" 2>/dev/null | grep -q '<UploadId>'; then
		seen=yes
		break
	fi
	sleep 0.01
done
[ "$seen" = yes ] || { wait "$build_pid" || true; fail "the export's multipart upload never showed"; }
s3_restart_rgw
wait "$build_pid" || fail "the build failed when radosgw died during its export: $(tail -3 "$T/progress.json")"
assert_contains "$(warnings)" "not exported" "the export's warning"
rm -f "$CTX/huge"
"$KILN" prune --cache "s3://$S3_BUCKET/ci/kiln" --s3-endpoint "$S3_ENDPOINT" --s3-region "$S3_REGION" \
	--s3-path-style --dry-run >"$T/prune.out" || fail "prune --dry-run: $(cat "$T/prune.out")"
grep -q "(0 unusable)" "$T/prune.out" || fail "a record names a missing blob: $(cat "$T/prune.out")"

echo "== a record with bad JSON and a blob with other bytes: reported, not used"
rec=$(objects ac/ | head -1)
printf '{"kiln_cache_record": 1, oops' >"$T/bad.json"
s3_curl -sS -m 30 -X PUT --data-binary @"$T/bad.json" "$S3_ENDPOINT/$S3_BUCKET/$rec" >/dev/null ||
	fail "cannot plant the bad record"
big=""
for k in $(objects cas/); do
	size=$(s3_curl -sS -m 30 -I "$S3_ENDPOINT/$S3_BUCKET/$k" | tr -d '\r' | awk 'tolower($1) == "content-length:" {print $2}')
	if [ "${size:-0}" -gt 700000 ]; then big=$k; break; fi
done
[ -n "$big" ] || fail "no large blob in the bucket"
head -c 700001 /dev/zero >"$T/zeros"
s3_curl -sS -m 30 -X PUT --data-binary @"$T/zeros" "$S3_ENDPOINT/$S3_BUCKET/$big" >/dev/null ||
	fail "cannot plant the bad blob"
KILN_ROOT="$T/r6" kbuild "${B[@]}" --cache-from "$S3SPEC" -o "type=local,dest=$T/f.fs" "$CTX" ||
	fail "corrupt objects failed the build: $(tail -3 "$T/progress.json")"
assert_contains "$(warnings)" "sha256:${big##*/}" "a warning names the corrupt blob"
[ -n "$(vertices_run)" ] || fail "nothing ran, yet a blob was corrupt"
# Steps that ran again have new times (a layer may then hold more), but
# the file systems are the same.
diff <(fs_list "$T/a.fs") <(fs_list "$T/f.fs") >"$T/fs.diff" ||
	fail "the file systems differ with corrupt objects: $(head -20 "$T/fs.diff")"
# The corrupt blob left the bucket (a put skips what is there, so nothing
# else would mend it), and an export from a root that has it puts its
# right bytes back.
code=$(s3_curl -s -o /dev/null -m 30 -w '%{http_code}' -I "$S3_ENDPOINT/$S3_BUCKET/$big" || true)
assert_eq "$code" 404 "the corrupt blob after the build that found it"
KILN_ROOT="$T/r6" kbuild "${B[@]}" --cache-to "$S3SPEC,mode=max" "$CTX" ||
	fail "the mending export: $(tail -3 "$T/progress.json")"
assert_eq "$(s3_curl -sS -m 30 "$S3_ENDPOINT/$S3_BUCKET/$big" | sha256sum | cut -d' ' -f1)" "${big##*/}" \
	"the blob's bytes after the mending export"

echo "== the bucket: no record points at a missing blob; gc empties it"
"$KILN" prune --cache "s3://$S3_BUCKET/ci/kiln" --s3-endpoint "$S3_ENDPOINT" --s3-region "$S3_REGION" \
	--s3-path-style --dry-run >"$T/prune.out" || fail "prune --dry-run: $(cat "$T/prune.out")"
cat "$T/prune.out"
# At most the record planted with bad JSON is unusable (the mending export
# rewrote it if it was one of this build's): none names a missing blob.
grep -Eq "^records:  would delete [01] of [1-9][0-9]* \([01] unusable\)" "$T/prune.out" ||
	fail "records unusable besides the planted one: $(cat "$T/prune.out")"
"$KILN" prune --cache "s3://$S3_BUCKET/ci/kiln" --s3-endpoint "$S3_ENDPOINT" --s3-region "$S3_REGION" \
	--s3-path-style --older-than 0 --grace 0 >"$T/prune.out" || fail "prune: $(cat "$T/prune.out")"
assert_eq "$(objects '' | wc -l)" 0 "objects left after gc of everything"
echo "ok: cache-s3"
