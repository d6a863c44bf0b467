#!/bin/bash
# A worker keeps its cache when it moves (issue 12 item 7): the workers
# that built a two-platform image under kilnd A join kilnd B — a fresh
# root, no bucket — with their own roots, and announce the records of the
# steps they ran; the same build on B then runs nothing and gives the same
# OCI archive. Workers with fresh roots on a fresh kilnd C run everything.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/registry-lib.sh"
. "$KILN_SOURCE_ROOT/tests/conformance/cluster.sh"
export SOURCE_DATE_EPOCH=1700000000
cluster_require_arm64
registry_with_busybox "$T/registry"

CTX="$T/ctx"
mkdir -p "$CTX"
cat >"$CTX/Dockerfile" <<'DF'
ARG BASE
FROM ${BASE}
RUN seq 1 50000 > /numbers
COPY f /f
RUN cat /f /numbers | wc -l > /count
DF
printf 'moved\n' >"$CTX/f"
B=(--platform linux/amd64,linux/arm64 --build-arg "BASE=$BUSYBOX_REF")

echo "== kilnd A: the workers build"
CLUSTER_WORKERS_DIR="$T/workers" cluster_start "$T/a"
KILN_ROOT="$T/a/client" kbuild "${CLUSTER_CLIENT_ARGS[@]}" "${B[@]}" -o "type=oci,dest=$T/a.tar" "$CTX" ||
	fail "build on A: $(tail -3 "$T/progress.json"; cluster_logs)"
[ -n "$(vertices_run)" ] || fail "A ran nothing"
cluster_stop

echo "== kilnd B (fresh root, no bucket), the same workers: nothing runs"
CLUSTER_WORKERS_DIR="$T/workers" cluster_start "$T/b"
grep -q "of its records joined the cache" "$T/b/kilnd.log" || fail "B adopted no record: $(cluster_logs)"
KILN_ROOT="$T/b/client" kbuild "${CLUSTER_CLIENT_ARGS[@]}" "${B[@]}" -o "type=oci,dest=$T/b.tar" "$CTX" ||
	fail "build on B: $(tail -3 "$T/progress.json"; cluster_logs)"
assert_eq "$(vertices_run | grep -v 'load build context' || true)" "" "steps B ran"
cmp -s "$T/a.tar" "$T/b.tar" || fail "B's image differs from A's"
cluster_stop

echo "== kilnd C with fresh workers: everything runs (the records were the workers')"
cluster_start "$T/c"
KILN_ROOT="$T/c/client" kbuild "${CLUSTER_CLIENT_ARGS[@]}" "${B[@]}" -o "type=oci,dest=$T/c.tar" "$CTX" ||
	fail "build on C: $(tail -3 "$T/progress.json"; cluster_logs)"
[ "$(vertices_run | grep -c 'RUN')" -ge 4 ] || fail "C did not run the steps: $(vertices_run)"
cmp -s "$T/a.tar" "$T/c.tar" || fail "C's image differs from A's"
cluster_stop
echo "ok: cluster-worker-moves"
