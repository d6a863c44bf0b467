#!/bin/bash
# kilnd --transfer s3 (issue 12 item 3): results move only through the
# bucket, for workers that cannot reach each other. A multi-host cluster in
# network namespaces: kilnd, an amd64 worker, an arm64 worker (emulated on
# an x86 host) and radosgw, each in its own; iptables in the two worker
# namespaces drops all traffic between the workers. A two-platform build
# whose arm64 stage copies from a $BUILDPLATFORM (amd64) stage must pass
# that stage's result through the bucket: it succeeds, moves no byte
# between workers, the summary counts the bucket's bytes both ways, and the
# arm64 worker's log says it fetched its input from there. A worker without
# --cache, or with another bucket, is refused at registration with an
# error naming the bucket it needs.
. "$(dirname "$0")/lib.sh"
: "${KILND:?KILND must name the kilnd binary (meson test sets it)}"
: "${KILN_WORKER:?KILN_WORKER must name the kiln-worker binary (meson test sets it)}"
. "$(dirname "$0")/netns-lib.sh"
. "$(dirname "$0")/s3-lib.sh"
command -v iptables >/dev/null || fail "iptables is not installed (scripts/install-deps.sh)"

netns_require_binfmt_arm64
netns_setup
netns_add s3 2
netns_add ctl 3
netns_add amd 4
netns_add arm 5
netns_add stray 6
s3_start "$T/s3" s3
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
unset AWS_SESSION_TOKEN AWS_PROFILE
netns_registry_start
netns_registry_push_busybox

S3=(--cache "s3://$S3_BUCKET/xfer" --s3-endpoint "$S3_ENDPOINT" --s3-region "$S3_REGION" --s3-path-style)
objects() { # PREFIX under the cache's prefix (SigV4 wants the query %-encoded)
	local p
	p=$(printf 'xfer/%s' "$1" | sed 's|/|%2F|g')
	s3_curl -sS -m 30 "$S3_ENDPOINT/$S3_BUCKET?list-type=2&max-keys=1000&prefix=$p" >"$T/list.xml" ||
		fail "listing the bucket: $(cat "$T/list.xml")"
	grep -q '<ListBucketResult' "$T/list.xml" || fail "listing the bucket: $(head -c 300 "$T/list.xml")"
	grep -o '<Key>[^<]*</Key>' "$T/list.xml" | sed 's/<Key>\(.*\)<\/Key>/\1/' || true
}

echo "== kilnd --transfer s3 refuses a worker without the bucket"
"$KILND" --root "$T/bad" --transfer s3 >"$T/bad.out" 2>&1 && fail "kilnd --transfer s3 without --cache started"
assert_contains "$(cat "$T/bad.out")" "--transfer needs --cache" "kilnd --transfer without a bucket"
"$KILND" --root "$T/bad" "${S3[@]}" --transfer ftp >"$T/bad.out" 2>&1 && fail "kilnd --transfer ftp started"
assert_contains "$(cat "$T/bad.out")" "'ftp' is not auto, peer or s3" "kilnd --transfer ftp"
netns_kilnd_start ctl "$T/kilnd" "${S3[@]}" --transfer s3
# netns_worker_start waits for a ready worker: these must exit instead.
refused() { # NAME WHAT ARGS...
	local name=$1 what=$2 pid rc=0
	shift 2
	netns_bg "$name" "$T/worker-$name.log" "$KILN_WORKER" --join "$KILND_URL" \
		--token-file "$KILND_ROOT/worker.token" --root "$T/w-$name" --name "$name" \
		--listen "${NETNS_IP[$name]}:7071" --platform linux/amd64 "$@"
	pid=$NETNS_BG_PID
	_netns_until 20 _netns_gone "$pid" || fail "worker $what was not refused: $(tail -3 "$T/worker-$name.log")"
	wait "$pid" || rc=$?
	_netns_forget "$pid"
	[ "$rc" != 0 ] || fail "worker $what exited 0"
	assert_contains "$(cat "$T/worker-$name.log")" "--transfer s3" "why worker $what was refused"
}
refused stray "without --cache"
assert_contains "$(cat "$T/worker-stray.log")" "needs --cache s3://$S3_BUCKET/xfer" "the bucket it needs"
refused stray "on another bucket" --cache "s3://$S3_BUCKET/other" --s3-endpoint "$S3_ENDPOINT" \
	--s3-region "$S3_REGION" --s3-path-style
assert_contains "$(cat "$T/worker-stray.log")" "uses --cache s3://$S3_BUCKET/other, not s3://$S3_BUCKET/xfer" \
	"the bucket it has and the one it needs"
assert_eq "$(netns_workers_json | jq '.workers | length')" 0 "workers registered after the refusals"

echo "== two workers that cannot reach each other"
netns_worker_start amd "$T/w-amd" linux/amd64 "${S3[@]}"
netns_worker_start arm "$T/w-arm" linux/arm64 "${S3[@]}"
for pair in "amd arm" "arm amd"; do
	set -- $pair
	netns_exec "$1" iptables -I INPUT -s "${NETNS_IP[$2]}" -j DROP
	netns_exec "$1" iptables -I OUTPUT -d "${NETNS_IP[$2]}" -j DROP
done
code=$(netns_exec arm curl -s -o /dev/null -m 2 -w '%{http_code}' "http://${NETNS_IP[amd]}:7071/v1/health" || true)
assert_eq "$code" 000 "the amd64 worker as seen from the arm64 worker"
code=$(netns_exec arm curl -s -o /dev/null -m 5 -w '%{http_code}' "$S3_ENDPOINT/" || true)
[ "$code" != 000 ] || fail "the arm64 worker cannot reach radosgw"

echo "== a two-platform build whose arm64 stage needs the amd64 stage's result"
CTX="$T/ctx"
mkdir -p "$CTX"
cat >"$CTX/Dockerfile" <<'EOF'
ARG BASE
FROM --platform=$BUILDPLATFORM ${BASE} AS build
RUN head -c 3000000 /dev/urandom > /blob && seq 1 50000 > /numbers
FROM ${BASE}
COPY --from=build /blob /numbers /out/
RUN wc -l < /out/numbers > /count && uname -m > /arch
EOF
timeout -k 5 600 "$KILN" build --addr "$KILND_URL" --token-file "$KILND_ROOT/client.token" \
	--progress json --insecure-registry "$NETNS_REG" --platform linux/amd64,linux/arm64 \
	--build-arg "BASE=$NETNS_REG/busybox:latest" -o "type=local,dest=$T/out" "$CTX" 2>"$T/progress.json" ||
	fail "build: $(tail -3 "$T/progress.json"); kilnd: $(tail -5 "$T/kilnd.log"); amd: $(tail -5 "$T/worker-amd.log"); arm: $(tail -5 "$T/worker-arm.log")"
S=$(jq -c -R 'fromjson? // empty | select(.summary) | .summary' <"$T/progress.json")
[ -n "$S" ] || fail "no summary: $(tail -3 "$T/progress.json")"
echo "summary: $S"
assert_eq "$(jq '.bytes_moved' <<<"$S")" 0 "bytes moved between workers"
[ "$(jq '.bytes_from_cache' <<<"$S")" -ge 3000000 ] || fail "bytes from the bucket: $S"
[ "$(jq '.bytes_to_cache' <<<"$S")" -ge 3000000 ] || fail "bytes to the bucket: $S"
assert_eq "$(jq '.workers.amd.run > 0 and .workers.arm.run > 0' <<<"$S")" true "both workers ran steps ($S)"
grep -q "from the remote cache" "$T/worker-arm.log" ||
	fail "the arm64 worker fetched no input from the bucket: $(tail -5 "$T/worker-arm.log")"
assert_eq "$(cat "$T/out/linux_arm64/arch")" aarch64 "the arm64 stage's machine"
assert_eq "$(cat "$T/out/linux_arm64/count")" 50000 "the arm64 stage's count"
assert_eq "$(cat "$T/out/linux_amd64/count")" 50000 "the amd64 stage's count"
cmp -s "$T/out/linux_amd64/out/blob" "$T/out/linux_arm64/out/blob" ||
	fail "the two platforms copied different build stage results"
[ "$(objects ac/ | wc -l)" -ge 2 ] || fail "records in the bucket: $(objects ac/ | wc -l)"
[ "$(objects cas/ | wc -l)" -ge 2 ] || fail "blobs in the bucket: $(objects cas/ | wc -l)"
# Each record says whether its result was made under emulation: on an
# x86 host, exactly the arm64 steps were (the $BUILDPLATFORM stage's
# records say linux/amd64, native).
if [ "$(uname -m)" = x86_64 ]; then
	n=0
	for k in $(objects ac/); do
		s3_curl -sS -m 30 "$S3_ENDPOINT/$S3_BUCKET/$k" >"$T/rec.json" || fail "reading $k"
		jq -e '(.platform == "linux/arm64") == .emulated' "$T/rec.json" >/dev/null ||
			fail "record $k: platform and emulated disagree: $(jq -c '{platform, emulated, worker}' "$T/rec.json")"
		n=$((n + 1))
	done
	[ "$(for k in $(objects ac/); do s3_curl -sS -m 30 "$S3_ENDPOINT/$S3_BUCKET/$k" | jq -r .emulated; done |
		sort -u | tr '\n' ' ')" = "false true " ] || fail "records made natively and emulated: want both"
	echo "records checked for emulated: $n"
fi
! grep -qF "$S3_SECRET_KEY" "$T/kilnd.log" "$T"/worker-*.log "$T/progress.json" || fail "the secret is in a log"

echo "== the same build again: every step a hit, nothing moved between workers"
timeout -k 5 600 "$KILN" build --addr "$KILND_URL" --token-file "$KILND_ROOT/client.token" \
	--progress json --insecure-registry "$NETNS_REG" --platform linux/amd64,linux/arm64 \
	--build-arg "BASE=$NETNS_REG/busybox:latest" -o "type=local,dest=$T/out2" "$CTX" 2>"$T/progress2.json" ||
	fail "second build: $(tail -3 "$T/progress2.json")"
S=$(jq -c -R 'fromjson? // empty | select(.summary) | .summary' <"$T/progress2.json")
ran=$(jq -r -R 'fromjson? // empty | select(.status == "done") | .name' <"$T/progress2.json" |
	grep -v 'load build context' || true)
assert_eq "$ran" "" "steps run again"
assert_eq "$(jq '.bytes_moved' <<<"$S")" 0 "bytes moved between workers, second build"
diff -r "$T/out" "$T/out2" >/dev/null || fail "the second build's output differs"

echo "== the bucket refuses connections: a result that cannot reach it fails the step, saying why"
# Nothing else could carry it to the arm64 worker: the worker answers 502,
# kilnd finds no other amd64 worker, and the build's error names the cause.
sed 's/seq 1 50000/seq 1 50001/' "$CTX/Dockerfile" >"$CTX/Dockerfile.refused"
netns_exec s3 iptables -I INPUT -p tcp --dport "$S3_PORT" -j REJECT --reject-with tcp-reset
rc=0
timeout -k 5 600 "$KILN" build --addr "$KILND_URL" --token-file "$KILND_ROOT/client.token" \
	--progress json --insecure-registry "$NETNS_REG" --platform linux/amd64,linux/arm64 \
	--build-arg "BASE=$NETNS_REG/busybox:latest" -f "$CTX/Dockerfile.refused" "$CTX" \
	2>"$T/progress3.json" || rc=$?
netns_exec s3 iptables -D INPUT -p tcp --dport "$S3_PORT" -j REJECT --reject-with tcp-reset
[ "$rc" != 0 ] || fail "a build whose result could not reach the bucket succeeded"
assert_contains "$(cat "$T/progress3.json")" "not in the remote cache" "the build's error"
assert_contains "$(cat "$T/progress3.json")" "no other worker runs linux/amd64" "the build's error"

netns_worker_stop amd
netns_worker_stop arm
netns_kilnd_stop
netns_teardown
echo "PASS"
