#!/bin/bash
# Issue 13: the data plane stays on the cluster. Network namespaces: the
# client behind a link rate-limited to 10 mbit/s (tbf, both ways), kilnd,
# an amd64 and an arm64 worker, and the registry on unlimited links.
#
# 1. A two-platform build whose image has over 100 MiB of layers per
#    platform, pushed with -t --push: the workers diff, compress and push
#    the layers, kilnd the manifests, the index and the tag. The bytes that
#    crossed the client's link (its interface counters) are at most the
#    context plus 1 MiB; the pushed index pulls back with skopeo with the
#    right platforms and layers; kilnd's store did not grow by the image.
# 2. The same build with -o type=oci (the limit lifted: 230 MiB at 10 mbit/s
#    would take minutes): the archive, relayed from the workers through
#    kilnd, is byte-identical to the embedded engine's for the same inputs
#    and kilnd's store did not grow by its size; -o type=local comes the
#    same way.
. "$(dirname "$0")/lib.sh"
: "${KILND:?KILND must name the kilnd binary (meson test sets it)}"
: "${KILN_WORKER:?KILN_WORKER must name the kiln-worker binary (meson test sets it)}"
. "$(dirname "$0")/netns-lib.sh"
command -v skopeo >/dev/null || fail "skopeo is not installed (scripts/install-deps.sh)"
command -v tc >/dev/null || fail "tc is not installed (iproute2)"

AMD=amd
ARM=arm
CLI=client
RATE=10mbit
MIB=$((1 << 20))

netns_require_binfmt_arm64

echo "== namespaces, registry, kilnd, two workers"
netns_setup
netns_add ctl 2
netns_add "$AMD" 3
netns_add "$ARM" 4
netns_add "$CLI" 5
netns_registry_start
netns_registry_push_busybox
REG=$NETNS_REG
netns_kilnd_start ctl "$T/kilnd"
netns_worker_start "$AMD" "$T/w-$AMD" linux/amd64
netns_worker_start "$ARM" "$T/w-$ARM" linux/arm64

# The client's link: tbf both ways (the host side shapes what it receives).
limit_client() {
	tc qdisc replace dev "$(_netns_veth 5)" root tbf rate $RATE burst 32kbit latency 400ms ||
		fail "tc on the host side of the client's veth"
	netns_exec "$CLI" tc qdisc replace dev eth0 root tbf rate $RATE burst 32kbit latency 400ms ||
		fail "tc inside the client's namespace"
}
unlimit_client() {
	tc qdisc del dev "$(_netns_veth 5)" root 2>/dev/null || true
	netns_exec "$CLI" tc qdisc del dev eth0 root 2>/dev/null || true
}
limit_client
assert_contains "$(netns_exec "$CLI" tc qdisc show dev eth0)" "tbf" "the client's qdisc"

# rx + tx of the client's interface (netlink: /sys is the root namespace's).
link_bytes() {
	netns_exec "$CLI" ip -s -j link show dev eth0 | jq '.[0].stats64 | .rx.bytes + .tx.bytes'
}

# Each platform's last layer is over 100 MiB that gzip cannot shrink and
# that is the same on every run: 110 copies of the platform's busybox,
# gzipped (a copy is 1 MiB apart: out of deflate's 32 KiB window).
CTX="$T/ctx"
mkdir -p "$CTX"
cat >"$CTX/Dockerfile" <<DF
FROM $REG/busybox:latest
RUN gzip -c </bin/busybox >/b.gz && i=0 && while [ \$i -lt 110 ]; do cat /b.gz; i=\$((i + 1)); done >/big && rm /b.gz && uname -m >/arch
COPY Dockerfile /Dockerfile.used
DF
CTX_BYTES=$(du -sb "$CTX" | cut -f1)

rbuild() { # LOG ARGS...
	local log=$1
	shift
	netns_exec "$CLI" timeout -k 5 600 "$KILN" build --addr "$KILND_URL" \
		--token-file "$KILND_ROOT/client.token" --progress plain --insecure-registry "$REG" \
		--platform linux/amd64,linux/arm64 "$@" "$CTX" >"$log" 2>&1 ||
		fail "cluster build $*: $(tail -20 "$log"); kilnd: $(tail -5 "$T/kilnd.log")"
}

cas_bytes() { du -sb "$1/cas" | cut -f1; }

echo "== pushed from the cluster over unlimited links; the client's link carries the context"
export SOURCE_DATE_EPOCH=1700000000
K0=$(cas_bytes "$T/kilnd")
B0=$(link_bytes)
rbuild "$T/push.log" -t "$REG/big:1" --push
B1=$(link_bytes)
CROSSED=$((B1 - B0))
echo "the client's link carried $CROSSED bytes (context: $CTX_BYTES)"
[ "$CROSSED" -le $((CTX_BYTES + MIB)) ] ||
	fail "$CROSSED bytes crossed the client's link for a $CTX_BYTES-byte context: $(tail -5 "$T/push.log")"
assert_contains "$(cat "$T/push.log")" "pushed $REG/big:1@sha256:" "push summary"
grep -q "blobs uploaded (2[0-9][0-9]\.[0-9] MiB)" "$T/push.log" ||
	fail "the workers did not upload the two big layers: $(grep pushed "$T/push.log")"
grep -q "the image for linux/amd64 made on $AMD" "$T/kilnd.log" || fail "amd64 image not made on $AMD: $(tail "$T/kilnd.log")"
grep -q "the image for linux/arm64 made on $ARM" "$T/kilnd.log" || fail "arm64 image not made on $ARM: $(tail "$T/kilnd.log")"
K1=$(cas_bytes "$T/kilnd")
[ $((K1 - K0)) -lt $((4 * MIB)) ] || fail "kilnd's store grew by $((K1 - K0)) bytes for the push"

echo "== the pushed index pulls back with skopeo"
IDX=$(skopeo inspect --raw --tls-verify=false "docker://$REG/big:1")
assert_eq "$(jq -r '[.manifests[].platform | .os + "/" + .architecture] | join(",")' <<<"$IDX")" \
	"linux/amd64,linux/arm64" "pushed platforms"
skopeo copy -q --all --src-tls-verify=false "docker://$REG/big:1" "oci:$T/pulled:big" ||
	fail "skopeo cannot pull the pushed image back"
for arch in amd64 arm64; do
	M=$(jq -r --arg a "$arch" '.manifests[] | select(.platform.architecture == $a) | .digest' <<<"$IDX")
	MAN="$T/pulled/blobs/sha256/${M#sha256:}"
	[ -f "$MAN" ] || fail "$arch manifest $M not pulled"
	assert_eq "$(jq '.layers | length' "$MAN")" 3 "$arch layers (busybox, RUN, COPY)"
	BIG=$(jq '[.layers[].size] | max' "$MAN")
	[ "$BIG" -ge $((100 * MIB)) ] || fail "$arch's largest layer is only $BIG bytes"
	for d in $(jq -r '.layers[].digest' "$MAN"); do
		[ -f "$T/pulled/blobs/sha256/${d#sha256:}" ] || fail "$arch layer $d not pulled"
		assert_eq "sha256:$(sha256sum "$T/pulled/blobs/sha256/${d#sha256:}" | cut -d' ' -f1)" "$d" "$arch layer digest"
	done
	CFG=$(jq -r .config.digest "$MAN")
	assert_eq "$(jq -r .architecture "$T/pulled/blobs/sha256/${CFG#sha256:}")" "$arch" "$arch config"
done
# The layers came from the workers: the client never had them.
[ ! -d "$KILN_ROOT/cas" ] || [ "$(du -sb "$KILN_ROOT/cas" | cut -f1)" -lt $((4 * MIB)) ] ||
	fail "the client's store holds $(du -sb "$KILN_ROOT/cas" | cut -f1) bytes after a cluster push"

echo "== -o type=oci: relayed from the workers, byte-identical to the embedded engine's"
unlimit_client
K0=$(cas_bytes "$T/kilnd")
rbuild "$T/oci.log" -o "type=oci,dest=$T/cluster.tar" -o "type=local,dest=$T/cluster-local"
K1=$(cas_bytes "$T/kilnd")
SIZE=$(stat -c %s "$T/cluster.tar")
[ "$SIZE" -ge $((200 * MIB)) ] || fail "the archive is only $SIZE bytes"
[ $((K1 - K0)) -lt $((4 * MIB)) ] || fail "kilnd's store grew by $((K1 - K0)) bytes for a $SIZE-byte output"
"$KILN" build --progress plain --platform linux/amd64,linux/arm64 --insecure-registry "$REG" \
	-o "type=oci,dest=$T/embedded.tar" -o "type=local,dest=$T/embedded-local" "$CTX" >"$T/embedded.log" 2>&1 ||
	fail "embedded build: $(tail -20 "$T/embedded.log")"
assert_eq "$(sha256sum <"$T/cluster.tar")" "$(sha256sum <"$T/embedded.tar")" "cluster and embedded OCI archives"
diff -r "$T/cluster-local" "$T/embedded-local" >"$T/local.diff" ||
	fail "type=local differs: $(head "$T/local.diff")"
assert_eq "$(cat "$T/cluster-local/linux_arm64/arch")" aarch64 "arm64 tree made on arm64"

echo "== the relay: slow clients slow the worker's send, kilnd's memory does not grow; gone clients free it"
CTOK=$(cat "$KILND_ROOT/client.token")
ID=$(grep -o 'build [0-9a-f]*: done' "$T/kilnd.log" | tail -1 | cut -d' ' -f2 | tr -d :)
ST=$(curl -sf -H "Authorization: Bearer $CTOK" "$KILND_URL/v1/builds/$ID") || fail "the state of build $ID"
TOP=$(jq -r .result.image.digest <<<"$ST")
M=$(tar -xOf "$T/cluster.tar" "blobs/sha256/${TOP#sha256:}" | jq -r '.manifests[0].digest')
L=$(tar -xOf "$T/cluster.tar" "blobs/sha256/${M#sha256:}" | jq -r '.layers | max_by(.size) | .digest')
# kilnd's relay threads (named kiln-relay), one per request in flight.
threads() { cat /proc/"$KILND_PID"/task/*/comm 2>/dev/null | grep -c '^kiln-relay$' || true; }
rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$KILND_PID/status"; }
R0=$(rss_kib)
assert_eq "$(threads)" 0 "relay threads before any reader"
SLOW=()
# Two readers per holder: the one that has the layer streams it, at
# 1 MiB/s; the others answer 404 at once.
for k in $(seq 0 $(($(jq .result.holders <<<"$ST") - 1))); do
	for _ in 1 2; do
		curl -s --limit-rate 1M -o /dev/null -H "Authorization: Bearer $CTOK" \
			"$KILND_URL/v1/relay/$ID/$k/v1/blobs/$L" &
		SLOW+=($!)
	done
done
sleep 3
R1=$(rss_kib)
[ "$(threads)" -ge 1 ] || fail "no relay thread while clients read (test broken?)"
echo "kilnd RSS: ${R0} KiB before, ${R1} KiB with slow readers of the $L layer"
[ $((R1 - R0)) -lt $((32 * 1024)) ] || fail "kilnd's memory grew by $((R1 - R0)) KiB for slow readers"
kill -9 "${SLOW[@]}" 2>/dev/null || true
wait "${SLOW[@]}" 2>/dev/null || true
for _ in $(seq 50); do [ "$(threads)" = 0 ] && break; sleep 0.1; done
assert_eq "$(threads)" 0 "relay threads left after their readers went away"
curl -sf "$KILND_URL/v1/health" >/dev/null || fail "kilnd does not answer after the readers went away"

netns_kilnd_stop
netns_worker_stop "$AMD"
netns_worker_stop "$ARM"
netns_teardown
echo "ok: cluster push over a rate-limited client link, oci and local relayed byte-identical"
