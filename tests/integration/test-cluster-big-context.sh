#!/bin/bash
# A context file over 1 GiB with --addr (issue 13 item 4): the client's
# upload streams into kilnd's store as it arrives, so it works and kilnd
# never holds the file in memory (its peak RSS stays far below the file's
# size); a worker pulls it and a step reads all of it.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/registry-lib.sh"
. "$KILN_SOURCE_ROOT/tests/conformance/cluster.sh"
cluster_require_arm64
registry_with_busybox "$T/registry"

CTX="$T/ctx"
mkdir -p "$CTX"
# 1.1 GiB: zeros but for a tail, so a lost or reordered part shows.
truncate -s $((1100 << 20)) "$CTX/big"
printf 'tail of the big file\n' >>"$CTX/big"
want=$(sha256sum "$CTX/big" | cut -d' ' -f1)
printf 'ARG BASE\nFROM ${BASE} AS build\nCOPY big /big\nRUN sha256sum /big | cut -d" " -f1 > /sum\nFROM scratch\nCOPY --from=build /sum /sum\n' \
	>"$CTX/Dockerfile"

cluster_start "$T/c"
KILN_ROOT="$T/c/client" kbuild "${CLUSTER_CLIENT_ARGS[@]}" --platform linux/amd64 \
	--build-arg "BASE=$BUSYBOX_REF" -o "type=local,dest=$T/out" "$CTX" ||
	fail "build with a 1.1 GiB context file: $(tail -3 "$T/progress.json"; cluster_logs)"
assert_eq "$(cat "$T/out/sum")" "$want" "the file as the step read it"
hwm_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/${CLUSTER_PID[kilnd]}/status")
echo "kilnd's peak RSS: $((hwm_kib / 1024)) MiB for a $((1100)) MiB file"
[ "$hwm_kib" -lt $((400 << 10)) ] || fail "kilnd's peak RSS is ${hwm_kib} KiB: the upload was held in memory"
cluster_stop
