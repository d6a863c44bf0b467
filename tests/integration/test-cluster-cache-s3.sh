#!/bin/bash
# One logical cache for several controllers (issue 12 items 3 and 6):
# kilnd A with its own workers builds a two-platform image with --cache
# s3://… on a real S3 (radosgw), the workers copying every step's result
# there; kilnd B — a fresh root, fresh workers, the same bucket — then
# builds the same image running nothing, and the OCI archive is byte for
# byte the same; a changed last step runs alone (the steps before it are
# hits from the workers' uploads). A wrong secret on C is one warning and
# a full build.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cache-lib.sh"
. "$(dirname "$0")/registry-lib.sh"
. "$(dirname "$0")/s3-lib.sh"
. "$KILN_SOURCE_ROOT/tests/conformance/cluster.sh"
export SOURCE_DATE_EPOCH=1700000000
cluster_require_arm64

s3_start "$T/s3"
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
unset AWS_SESSION_TOKEN AWS_PROFILE
registry_with_busybox "$T/registry"

CTX="$T/ctx"
cache_test_ctx "$CTX"
B=(--platform linux/amd64,linux/arm64 --build-arg "BASE=$BUSYBOX_REF")
CLUSTER_KILND_ARGS=(--cache "s3://$S3_BUCKET/cluster" --s3-endpoint "$S3_ENDPOINT"
	--s3-region "$S3_REGION" --s3-path-style)
CLUSTER_WORKER_ARGS=("${CLUSTER_KILND_ARGS[@]}")
objects() { # PREFIX under the cache's prefix (SigV4 wants the query %-encoded)
	local p
	p=$(printf 'cluster/%s' "$1" | sed 's|/|%2F|g')
	s3_curl -sS -m 30 "$S3_ENDPOINT/$S3_BUCKET?list-type=2&max-keys=1000&prefix=$p" >"$T/list.xml" ||
		fail "listing the bucket: $(cat "$T/list.xml")"
	grep -o '<Key>[^<]*</Key>' "$T/list.xml" | sed 's/<Key>\(.*\)<\/Key>/\1/' || true
}
warnings() { events | jq -r 'select(.warning) | .warning'; }

echo "== kilnd A builds and fills the bucket"
cluster_start "$T/a"
KILN_ROOT="$T/a/client" kbuild "${CLUSTER_CLIENT_ARGS[@]}" "${B[@]}" -o "type=oci,dest=$T/a.tar" "$CTX" ||
	fail "build on A: $(tail -3 "$T/progress.json"; cluster_logs)"
[ -n "$(vertices_run)" ] || fail "A ran nothing"
[ -z "$(warnings)" ] || fail "warnings on A: $(warnings)"
# A multi-stage build too: its build stage is no part of the image.
printf 'ARG BASE\nFROM ${BASE} AS build\nRUN seq 1 100000 > /numbers\nFROM ${BASE}\nCOPY --from=build /numbers /numbers\n' \
	>"$CTX/Dockerfile.ms"
KILN_ROOT="$T/a/client" kbuild "${CLUSTER_CLIENT_ARGS[@]}" "${B[@]}" -f "$CTX/Dockerfile.ms" "$CTX" ||
	fail "multi-stage build on A: $(tail -3 "$T/progress.json"; cluster_logs)"
# The workers copy every step they ran (kilnd only the outputs), off the
# builds' way: a record under each of the definition and content keys of
# 4 steps, then 2 more of the multi-stage build, on 2 platforms.
for _ in $(seq 1 600); do
	[ "$(objects ac/ | wc -l)" -ge 24 ] && break
	sleep 0.1
done
[ "$(objects ac/ | wc -l)" -ge 24 ] || fail "records in the bucket: $(objects ac/ | wc -l)"
cluster_stop
! grep -q "uploads to the remote cache fail" "$T/a/amd64.log" "$T/a/arm64.log" ||
	fail "a worker's uploads failed: $(cluster_logs)"

echo "== kilnd B (fresh root, fresh workers, the same bucket) runs nothing"
cluster_start "$T/b"
KILN_ROOT="$T/b/client" kbuild "${CLUSTER_CLIENT_ARGS[@]}" "${B[@]}" -o "type=oci,dest=$T/b.tar" "$CTX" ||
	fail "build on B: $(tail -3 "$T/progress.json"; cluster_logs)"
assert_eq "$(vertices_run | grep -v 'load build context' || true)" "" "steps B ran"
[ -z "$(warnings)" ] || fail "warnings on B: $(warnings)"
cmp -s "$T/a.tar" "$T/b.tar" || fail "B's image differs from A's"
# A changed last step: only it runs, on each platform.
sed 's|cat /f /small > /both|cat /small /f > /both|' "$CTX/Dockerfile" >"$CTX/Dockerfile.2"
KILN_ROOT="$T/b/client" kbuild "${CLUSTER_CLIENT_ARGS[@]}" "${B[@]}" -f "$CTX/Dockerfile.2" "$CTX" ||
	fail "changed build on B: $(tail -3 "$T/progress.json"; cluster_logs)"
assert_eq "$(vertices_run | grep -vc 'load build context')" 2 \
	"steps B ran for the changed build ($(vertices_run))"
assert_contains "$(vertices_run)" "cat /small /f" "the changed step"
# --transfer auto (the default): kilnd leaves hits in the bucket. A final
# stage that changed needs the build stage's result, which no worker of B
# holds and which is no output kilnd gathers: a worker fetches it from the
# bucket itself.
sed 's|COPY --from=build /numbers /numbers|COPY --from=build /numbers /n2|' "$CTX/Dockerfile.ms" >"$CTX/Dockerfile.ms2"
KILN_ROOT="$T/b/client" kbuild "${CLUSTER_CLIENT_ARGS[@]}" "${B[@]}" -f "$CTX/Dockerfile.ms2" \
	-o "type=local,dest=$T/ms2" "$CTX" || fail "multi-stage build on B: $(tail -3 "$T/progress.json"; cluster_logs)"
assert_eq "$(vertices_run | grep -c 'seq 1 100000' || true)" 0 "build stages B ran"
assert_eq "$(wc -l <"$T/ms2/linux_arm64/n2")" 100000 "the build stage's result on arm64"
grep -q "from the remote cache" "$T/b/amd64.log" "$T/b/arm64.log" ||
	fail "no worker fetched an input from the bucket: $(cluster_logs)"
# The summary counts what the workers fetched from the bucket.
[ "$(events | jq -r 'select(.summary) | .summary.bytes_from_cache')" -ge 100000 ] ||
	fail "bytes from the bucket in the summary: $(events | jq -c 'select(.summary)')"
cluster_stop

echo "== kilnd C with a wrong secret: one warning, a full build, the same image"
AWS_SECRET_ACCESS_KEY=wrong-secret cluster_start "$T/c"
KILN_ROOT="$T/c/client" kbuild "${CLUSTER_CLIENT_ARGS[@]}" "${B[@]}" -o "type=oci,dest=$T/c.tar" "$CTX" ||
	fail "build on C: $(tail -3 "$T/progress.json"; cluster_logs)"
[ "$(warnings | grep -c unavailable)" = 1 ] || fail "want one unavailable warning on C: $(warnings)"
assert_contains "$(warnings)" "403" "the warning says why"
[ -n "$(vertices_run)" ] || fail "C ran nothing, with a wrong secret"
cmp -s "$T/a.tar" "$T/c.tar" || fail "C's image differs from A's"
! grep -rqF "wrong-secret" "$T/c" "$T/progress.json" || fail "the secret is in C's logs or progress"
! grep -rqF "$S3_SECRET_KEY" "$T/a" "$T/b" || fail "the secret is in a log"
cluster_stop
echo "== kilnd D and E (fresh roots, fresh workers) build a new image at once on the bucket"
sed 's|cat /f /small > /both|cat /f /f /small > /both|' "$CTX/Dockerfile" >"$CTX/Dockerfile.3"
CLUSTER_PREFIX=d cluster_start "$T/d"
D_ARGS=("${CLUSTER_CLIENT_ARGS[@]}")
# E copies hits into its own store (--transfer peer), D leaves them in the bucket.
CLUSTER_KILND_ARGS+=(--transfer peer)
CLUSTER_PREFIX=e cluster_start "$T/e"
unset 'CLUSTER_KILND_ARGS[-1]' 'CLUSTER_KILND_ARGS[-2]'
E_ARGS=("${CLUSTER_CLIENT_ARGS[@]}")
KILN_ROOT="$T/d/client" "$KILN" build --progress json "${D_ARGS[@]}" "${B[@]}" -f "$CTX/Dockerfile.3" \
	-o "type=oci,dest=$T/d.tar" "$CTX" 2>"$T/d.json" &
d_pid=$!
KILN_ROOT="$T/e/client" "$KILN" build --progress json "${E_ARGS[@]}" "${B[@]}" -f "$CTX/Dockerfile.3" \
	-o "type=oci,dest=$T/e.tar" "$CTX" 2>"$T/e.json" &
e_pid=$!
wait "$d_pid" || fail "build on D: $(tail -3 "$T/d.json")"
wait "$e_pid" || fail "build on E: $(tail -3 "$T/e.json")"
cmp -s "$T/d.tar" "$T/e.tar" || fail "D and E, building at once, disagree"
! grep -h '"warning"' "$T/d.json" "$T/e.json" || fail "warnings building at once"
CLUSTER_DIR="$T/d" CLUSTER_PREFIX=d cluster_stop
CLUSTER_DIR="$T/e" CLUSTER_PREFIX=e cluster_stop
# Every record either wrote names blobs that are all there.
"$KILN" prune --cache "s3://$S3_BUCKET/cluster" --s3-endpoint "$S3_ENDPOINT" --s3-region "$S3_REGION" \
	--s3-path-style --dry-run >"$T/prune.out" || fail "prune --dry-run: $(cat "$T/prune.out")"
grep -q "(0 unusable)" "$T/prune.out" || fail "records name missing blobs: $(cat "$T/prune.out")"
echo "ok: cluster-cache-s3"
