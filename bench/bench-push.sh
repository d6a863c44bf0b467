#!/bin/bash
# Issue 13: a cluster's push against the client doing it, over the same
# rate-limited client link, in one run. Network namespaces (the
# integration tests' netns-lib.sh): the client behind a tbf link of
# $BENCH_PUSH_RATE (default 10mbit, both ways), kilnd, an amd64 and an
# arm64 worker and the registry on unlimited links. A two-platform image
# whose new layer is $BENCH_PUSH_MIB MiB (default 16) per platform that
# gzip cannot shrink.
#
#   cluster: kiln build --addr … -t REG/a:N --push (the workers push)
#   client:  kiln build --addr … -o type=oci (the image comes to the
#            client) then skopeo copy --all of that archive to REG/b:N
#            from the client (what buildx does with a remote builder and
#            a local push)
# Each run builds the image anew (a new nonce in the Dockerfile), so every
# layer is new to the registry in both; the ratio is client / cluster.
#
#   bench/bench-push.sh BUILD_DIR      (as root; a release build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:?usage: bench-push.sh BUILD_DIR}" && pwd)
ninja -C "$build" src/cli/kiln src/kilnd/kilnd src/agent/kiln-worker >/dev/null ||
	{ echo "bench-push: cannot build kiln, kilnd, kiln-worker in $build" >&2; exit 1; }
export KILN="$build/src/cli/kiln" KILND="$build/src/kilnd/kilnd" \
	KILN_WORKER="$build/src/agent/kiln-worker" KILN_SOURCE_ROOT="$here/.."
. "$here/../tests/integration/lib.sh"
. "$here/../tests/integration/netns-lib.sh"
RATE=${BENCH_PUSH_RATE:-10mbit}
MIB=${BENCH_PUSH_MIB:-16}
REPS=${BENCH_REPS:-2}

ms() { echo $(($(date +%s%N) / 1000000)); }

netns_require_binfmt_arm64
netns_setup
netns_add ctl 2
netns_add amd 3
netns_add arm 4
netns_add client 5
netns_registry_start
netns_registry_push_busybox
REG=$NETNS_REG
netns_kilnd_start ctl "$T/kilnd"
netns_worker_start amd "$T/w-amd" linux/amd64
netns_worker_start arm "$T/w-arm" linux/arm64
tc qdisc replace dev "$(_netns_veth 5)" root tbf rate "$RATE" burst 32kbit latency 400ms
netns_exec client tc qdisc replace dev eth0 root tbf rate "$RATE" burst 32kbit latency 400ms

echo "machine: $(nproc) cores, $(grep -q sha_ni /proc/cpuinfo && echo SHA-NI || echo 'no SHA-NI'), $(uname -r)"
echo "client link: $RATE (tbf, both ways); new layer: $MIB MiB per platform, 2 platforms"
CTX="$T/ctx"
mkdir -p "$CTX"
# A MiB-sized gzip stream repeated: deflate's 32 KiB window cannot shrink it.
mkctx() { # NONCE
	cat >"$CTX/Dockerfile" <<DF
FROM $REG/busybox:latest
RUN echo $1 >/nonce && head -c 1048576 /dev/urandom >/r && i=0 && while [ \$i -lt $MIB ]; do cat /r; i=\$((i + 1)); done >/big && rm /r
DF
}
kb() { # ARGS...
	netns_exec client "$KILN" build --addr "$KILND_URL" --token-file "$KILND_ROOT/client.token" \
		--progress quiet --insecure-registry "$REG" --platform linux/amd64,linux/arm64 "$@" "$CTX"
}
link_bytes() {
	netns_exec client ip -s -j link show dev eth0 | jq '.[0].stats64 | .rx.bytes + .tx.bytes'
}

for rep in $(seq "$REPS"); do
	mkctx "cluster-$rep-$$-$RANDOM"
	b0=$(link_bytes); t0=$(ms)
	kb -t "$REG/a:$rep" --push
	cluster=$(($(ms) - t0)); cb=$(($(link_bytes) - b0))

	mkctx "client-$rep-$$-$RANDOM"
	rm -f "$T/img.tar"
	b0=$(link_bytes); t0=$(ms)
	kb -o "type=oci,dest=$T/img.tar"
	netns_exec client skopeo copy -q --all --dest-tls-verify=false "oci-archive:$T/img.tar:latest" "docker://$REG/b:$rep"
	client=$(($(ms) - t0)); clb=$(($(link_bytes) - b0))
	awk -v r="$rep" -v a="$cluster" -v ab="$cb" -v b="$client" -v bb="$clb" 'BEGIN {
		printf "run %s: cluster push %.2f s (%d bytes on the client link)   client oci + skopeo %.2f s (%d bytes)   ratio %.1f\n",
			r, a / 1000, ab, b / 1000, bb, b / a }'
done
netns_teardown
