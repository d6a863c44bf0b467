#!/bin/bash
# A multi-host cluster in network namespaces this test creates (issue 4):
# kilnd in one, an amd64 worker (--platform linux/amd64) in another, an
# arm64 worker (--platform linux/arm64: emulated through binfmt on an x86
# host) in a third, the registry (with the two-platform busybox) and the
# client in the root namespace, all on a private bridge.
#
# Part 1 (runs now): both workers registered with the right platforms and
# emulation flags, the registry and each other's blob servers reachable from
# inside the worker namespaces, kilnd restarted in its namespace keeps its
# tokens and the workers register again, worker roots fsck-clean.
#
# Part 2: a two-platform build pushed to the
# registry with placement, build-stage-once and bytes-moved checks on the
# json progress; a full cache hit after restarting kilnd and both workers;
# two concurrent builds sharing a step; and kill_loop: kill -9 of a worker
# mid-build while another of its platform is registered,
# $KILN_KILL_LOOP_N times (default 20), fsck clean afterwards. Each remote
# build is killed after $KILN_RBUILD_TIMEOUT seconds (default 300).
. "$(dirname "$0")/lib.sh"
: "${KILND:?KILND must name the kilnd binary (meson test sets it)}"
: "${KILN_WORKER:?KILN_WORKER must name the kiln-worker binary (meson test sets it)}"
. "$(dirname "$0")/netns-lib.sh"
command -v skopeo >/dev/null || fail "skopeo is not installed (scripts/install-deps.sh)"

KILN_KILL_LOOP_N=${KILN_KILL_LOOP_N:-20}
AMD=amd
ARM=arm
NONCE="$$-$RANDOM"

# kiln debug fsck on a (stopped) kiln-worker root: its CAS rehashed and
# every tree its inventory announces complete.
worker_fsck() { # NAME ROOT
	"$KILN" debug fsck --worker-root "$2" >"$T/fsck-$1.out" 2>&1 ||
		fail "fsck of worker $1 ($2) not clean: $(cat "$T/fsck-$1.out")"
	grep -q ": ok$" "$T/fsck-$1.out" || fail "fsck of worker $1: $(cat "$T/fsck-$1.out")"
}

netns_require_binfmt_arm64

echo "== namespaces, registry"
netns_setup
netns_add ctl 2
netns_add "$AMD" 3
netns_add "$ARM" 4
netns_registry_start
netns_registry_push_busybox
REG=$NETNS_REG

echo "== kilnd and two workers, each in its own namespace"
netns_kilnd_start ctl "$T/kilnd"
netns_worker_start "$AMD" "$T/w-$AMD" linux/amd64
netns_worker_start "$ARM" "$T/w-$ARM" linux/arm64

J=$(netns_workers_json)
assert_eq "$(jq '.workers | length' <<<"$J")" 2 "workers listed"
assert_eq "$(jq -c --arg n "$AMD" '.workers[] | select(.name == $n) | .platforms' <<<"$J")" \
	'[{"platform":"linux/amd64","emulated":false}]' "amd64 worker's platforms"
if [ "$(uname -m)" = x86_64 ]; then
	assert_eq "$(jq -c --arg n "$ARM" '.workers[] | select(.name == $n) | .platforms' <<<"$J")" \
		'[{"platform":"linux/arm64","emulated":true}]' "arm64 worker's platforms (emulated on x86_64)"
else
	assert_eq "$(jq -r --arg n "$ARM" '.workers[] | select(.name == $n) | .platforms[0].platform' <<<"$J")" \
		linux/arm64 "arm64 worker's platform"
fi
for w in "$AMD" "$ARM"; do
	assert_eq "$(jq -r --arg n "$w" '.workers[] | select(.name == $n) | .address' <<<"$J")" \
		"http://${NETNS_IP[$w]}:7071" "$w's advertised address"
	assert_eq "$(jq -r --arg n "$w" '.workers[] | select(.name == $n) | .state' <<<"$J")" ready "$w's state"
done
T_OUT=$("$KILN" workers --addr "$KILND_URL" --token-file "$KILND_ROOT/client.token")
assert_contains "$T_OUT" "linux/arm64(emulated)" "kiln workers table"

echo "== the registry and the other worker are reachable from inside each namespace"
WTOK=$(cat "$KILND_ROOT/worker.token")
CTOK=$(cat "$KILND_ROOT/client.token")
EMPTY=sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
for w in "$AMD" "$ARM"; do
	assert_eq "$(netns_exec "$w" curl -s -o /dev/null -m 5 -w '%{http_code}' "http://$REG/v2/")" 200 \
		"registry /v2/ from namespace $w"
	assert_eq "$(netns_exec "$w" curl -s -o /dev/null -m 5 -w '%{http_code}' \
		-H 'Accept: application/vnd.oci.image.index.v1+json' "http://$REG/v2/busybox/manifests/latest")" 200 \
		"busybox index from namespace $w"
done
# Peer blob servers across namespaces: an absent blob is 404 with the
# worker token (401 without), so the route and the server both work.
assert_eq "$(netns_exec "$ARM" curl -s -o /dev/null -m 5 -w '%{http_code}' \
	-H "Authorization: Bearer $WTOK" "http://${NETNS_IP[$AMD]}:7071/v1/blobs/$EMPTY")" 404 "amd64 blob server from arm namespace"
assert_eq "$(netns_exec "$AMD" curl -s -o /dev/null -m 5 -w '%{http_code}' \
	-H "Authorization: Bearer $WTOK" "http://${NETNS_IP[$ARM]}:7071/v1/blobs/$EMPTY")" 404 "arm64 blob server from amd namespace"
assert_eq "$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$KILND_URL/v1/workers")" 401 "kilnd without a token"

echo "== kilnd restarts in its namespace: same tokens, the workers register again"
OLD_IDS=$(netns_workers_json | jq -c '[.workers[] | {(.name): .id}] | add')
netns_kilnd_stop
netns_kilnd_start ctl "$T/kilnd"
assert_eq "$(cat "$KILND_ROOT/worker.token")" "$WTOK" "worker token after restart"
assert_eq "$(cat "$KILND_ROOT/client.token")" "$CTOK" "client token after restart"
netns_wait_workers "([.workers[] | select(.state == \"ready\")] | length == 2) and
	any(.workers[]; .name == \"$AMD\") and any(.workers[]; .name == \"$ARM\")" \
	"both workers registered again after kilnd restart"
J=$(netns_workers_json)
for w in "$AMD" "$ARM"; do
	[ "$(jq -r --arg n "$w" '.workers[] | select(.name == $n) | .id' <<<"$J")" != \
		"$(jq -r --arg n "$w" '.[$n]' <<<"$OLD_IDS")" ] || fail "$w kept its id across a kilnd restart: $J"
done
assert_eq "$(jq -r --arg n "$ARM" '.workers[] | select(.name == $n) | .platforms[0].emulated' <<<"$J")" \
	"$([ "$(uname -m)" = x86_64 ] && echo true || echo false)" "arm64 worker emulated after re-registration"

###########################################################################
# Part 2: builds on the cluster.
###########################################################################

# Client side of a remote build: progress (json lines) to $1, the rest
# are build arguments. A build that hangs is killed after
# $KILN_RBUILD_TIMEOUT seconds (default 300; exit status 124), and the
# daemons' logs are appended to the progress file for the failure message.
KILN_RBUILD_TIMEOUT=${KILN_RBUILD_TIMEOUT:-300}
rbuild() { # PROGRESS-FILE ARGS...
	local prog=$1 rc=0 f
	shift
	timeout -k 5 "$KILN_RBUILD_TIMEOUT" "$KILN" build --addr "$KILND_URL" \
		--token-file "$KILND_ROOT/client.token" --progress json \
		--insecure-registry "$REG" "$@" 2>"$prog" || rc=$?
	if [ "$rc" != 0 ]; then
		[ "$rc" != 124 ] || echo "rbuild: no result after ${KILN_RBUILD_TIMEOUT}s, killed" >>"$prog"
		for f in "$T/kilnd.log" "$T"/worker-*.log; do
			[ -f "$f" ] && { echo "--- tail of $(basename "$f")"; tail -5 "$f"; } >>"$prog"
		done
	fi
	return $rc
}

# The json lines of a progress file, partial lines skipped.
pev() { # PROGRESS-FILE
	jq -c -R 'fromjson? // empty' <"$1"
}

# True if the jq condition holds on the slurped events of a progress file.
pcheck() { # PROGRESS-FILE JQ-CONDITION
	pev "$1" | jq -s -e "$2" >/dev/null
}

passert() { # PROGRESS-FILE JQ-CONDITION WHAT
	pcheck "$1" "$2" || fail "$3: $(pev "$1" | tail -20)"
}

# Wait (up to 30 s) for the jq condition to hold on a progress file while
# the build in $BG_PID runs; fail naming WHAT if it never does.
pawait() { # PROGRESS-FILE JQ-CONDITION WHAT
	for _ in $(seq 600); do
		pcheck "$1" "$2" && return 0
		kill -0 "$BG_PID" 2>/dev/null || break
		sleep 0.05
	done
	passert "$1" "$2" "$3"
}

# Vertex events of a platform in state running or done (what a worker did).
placed() { # PLATFORM
	echo "[.[] | select(.vertex != null and .platform == \"$1\" and (.status == \"running\" or .status == \"done\"))]"
}

echo "== a two-platform build with a \$BUILDPLATFORM stage, pushed"
CTX="$T/ctx"
mkdir -p "$CTX"
cat >"$CTX/Dockerfile" <<DF
FROM --platform=\$BUILDPLATFORM $REG/busybox:latest AS build
RUN echo built-once > /artifact && uname -m > /build-arch
FROM $REG/busybox:latest
COPY --from=build /artifact /artifact
RUN uname -m > /arch && cat /artifact
DF
P1="$T/progress-1.json"
rbuild "$P1" --platform linux/amd64,linux/arm64 -t "$REG/out:1" --push "$CTX" ||
	fail "remote build: $(tail -30 "$P1")"
passert "$P1" "$(placed linux/amd64) | length > 0 and all(.[]; .worker == \"$AMD\" and .emulated == false)" \
	"every linux/amd64 step on $AMD, native"
passert "$P1" "$(placed linux/arm64) | length > 0 and all(.[]; .worker == \"$ARM\")" \
	"every linux/arm64 step on $ARM"
# Only execs run arm64 code; file ops (COPY) and image sources report
# emulated false even on the emulated worker (as the embedded engine does).
passert "$P1" "$(placed linux/arm64) | map(select(.name | test(\"\\\\] RUN \"))) |
	length > 0 and all(.[]; .emulated == true)" "every linux/arm64 RUN emulated"
passert "$P1" '[.[] | select(.vertex != null and .status == "done" and (.name | contains("echo built-once")))] | length == 1' \
	"the build stage's RUN done exactly once"
passert "$P1" '[.[] | select(.vertex != null and .status == "done" and (.name | contains("uname -m > /arch")))] | length == 2' \
	"the final stage's RUN done once per platform"
passert "$P1" "[.[] | select(.summary != null)] | length == 1 and (.[0].summary |
	.ok == true and .bytes_moved > 0 and .workers[\"$AMD\"].run > 0 and .workers[\"$ARM\"].run > 0)" \
	"summary: ok, bytes moved between the workers, steps run on both"

skopeo inspect --raw --tls-verify=false "docker://$REG/out:1" >"$T/out-index.json" ||
	fail "skopeo cannot read the pushed image"
assert_eq "$(jq -r '[.manifests[].platform | .os + "/" + .architecture] | sort | join(",")' "$T/out-index.json")" \
	"linux/amd64,linux/arm64" "pushed index platforms"
for arch in amd64 arm64; do
	d="$T/img-$arch"
	mkdir -p "$d"
	skopeo copy -q --src-tls-verify=false --override-arch "$arch" "docker://$REG/out:1" "oci:$d/layout:img" ||
		fail "skopeo copy $arch"
	umoci unpack --image "$d/layout:img" "$d/bundle" >/dev/null || fail "umoci unpack $arch"
	want=$([ "$arch" = amd64 ] && echo x86_64 || echo aarch64)
	assert_eq "$(cat "$d/bundle/rootfs/arch")" "$want" "$arch image /arch"
	assert_eq "$(cat "$d/bundle/rootfs/artifact")" built-once "$arch image /artifact"
done

echo "== kilnd and both workers restart (same roots): a full cache hit"
netns_worker_stop "$AMD"
netns_worker_stop "$ARM"
netns_kilnd_stop
netns_kilnd_start ctl "$T/kilnd"
netns_worker_start "$AMD" "$T/w-$AMD" linux/amd64
netns_worker_start "$ARM" "$T/w-$ARM" linux/arm64
P2="$T/progress-2.json"
rbuild "$P2" --platform linux/amd64,linux/arm64 -t "$REG/out:1" --push "$CTX" ||
	fail "rebuild after restarts: $(tail -5 "$P2")"
passert "$P2" '[.[] | select(.vertex != null and .status != null)] | length > 0 and
	all(.[]; .status != "running" and .status != "error" and (.status != "done" or .cached == true))' \
	"every vertex cached after restarts, none running"
passert "$P2" '[.[] | select(.summary != null)][0].summary | .ok == true and ([.workers[].run] | add // 0) == 0' \
	"summary: nothing run after restarts"

echo "== two concurrent builds sharing a step run it once"
for b in a b; do
	mkdir -p "$T/ctx-$b"
	cat >"$T/ctx-$b/Dockerfile" <<DF
FROM $REG/busybox:latest AS shared
RUN sleep 2 && head -c 16 /dev/urandom | od -An -tx1 > /rand && echo $NONCE > /nonce
FROM $REG/busybox:latest
COPY --from=shared /rand /rand
RUN echo $b > /which
DF
done
rbuild "$T/progress-a.json" --platform linux/amd64 --output "type=local,dest=$T/out-a" "$T/ctx-a" &
PA=$!
rbuild "$T/progress-b.json" --platform linux/amd64 --output "type=local,dest=$T/out-b" "$T/ctx-b" &
PB=$!
wait "$PA" || fail "concurrent build a: $(tail -5 "$T/progress-a.json")"
wait "$PB" || fail "concurrent build b: $(tail -5 "$T/progress-b.json")"
assert_eq "$(cat "$T/out-a/which")" a "build a's own step"
assert_eq "$(cat "$T/out-b/which")" b "build b's own step"
assert_eq "$(cat "$T/out-a/rand")" "$(cat "$T/out-b/rand")" "the shared step's output in both builds"
assert_eq "$(cat "$T/progress-a.json" "$T/progress-b.json" | jq -R 'fromjson? // empty' |
	jq -s '[.[] | select(.vertex != null and .status == "done" and .cached == false and
		(.name | contains("/dev/urandom")))] | length')" 1 "non-cached runs of the shared step across both builds"

echo "== a step's output reaches the client while the step runs"
LCTX="$T/ctx-live"
mkdir -p "$LCTX"
# A token of its own: the step is never a cache hit.
printf 'FROM %s/busybox:latest\nRUN echo live-first-%s && sleep 3 && echo live-second\n' \
	"$REG" "$RANDOM$RANDOM" >"$LCTX/Dockerfile"
rbuild "$T/progress-live.json" --platform linux/amd64 "$LCTX" &
BG_PID=$!
pawait "$T/progress-live.json" 'any(.[]; (.log? // "") | contains("live-first"))' \
	"the step's first line never reached the client"
# The step sleeps 3 s between its lines: the second, and its end, are still to come.
if pcheck "$T/progress-live.json" 'any(.[]; (.log? // "") | contains("live-second"))'; then
	fail "both lines arrived together: the output was not streamed"
fi
wait "$BG_PID" || fail "the live-output build failed: $(pev "$T/progress-live.json" | tail -20)"
BG_PID=
passert "$T/progress-live.json" 'any(.[]; (.log? // "") | contains("live-second"))' \
	"the step's second line"

echo "== an interrupted client cancels its build on kilnd"
CCTX="$T/ctx-cancel"
mkdir -p "$CCTX"
printf 'FROM %s/busybox:latest\nRUN echo cancel-me-%s && sleep 20\nRUN echo never-runs\n' \
	"$REG" "$RANDOM$RANDOM" >"$CCTX/Dockerfile"
# Not through rbuild: the signal must reach kiln itself. It is SIGINT, as
# from Ctrl-C; bash starts background commands of a script with SIGINT
# ignored (and kiln keeps an ignored signal ignored), so it is reset first.
python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])' \
	"$KILN" build --addr "$KILND_URL" --token-file "$KILND_ROOT/client.token" --progress json \
	--insecure-registry "$REG" --platform linux/amd64 "$CCTX" 2>"$T/progress-cancel.json" &
BG_PID=$!
pawait "$T/progress-cancel.json" 'any(.[]; .status == "running" and (.name | contains("sleep 20")))' \
	"the step to cancel never ran"
t0=$(date +%s)
kill -INT "$BG_PID"
rc=0
wait "$BG_PID" || rc=$?
BG_PID=
took=$(($(date +%s) - t0))
[ "$rc" != 0 ] || fail "the interrupted build succeeded"
# The step sleeps 20 s: the build must have ended long before it would.
[ "$took" -lt 15 ] || fail "the cancelled build took ${took}s to end"
grep -q "cancelling build" "$T/progress-cancel.json" || fail "no cancel notice: $(tail -5 "$T/progress-cancel.json")"
grep -q "build cancelled" "$T/progress-cancel.json" || fail "no 'build cancelled': $(tail -5 "$T/progress-cancel.json")"
if pcheck "$T/progress-cancel.json" 'any(.[]; (.name // "") | contains("never-runs") and .status == "running")'; then
	fail "a step after the cancel started"
fi
# The worker stopped the step when kilnd hung up: `sleep 20` is gone.
for _ in $(seq 100); do
	pgrep -f '^sleep 20$' >/dev/null || break
	sleep 0.1
done
if pgrep -f '^sleep 20$' >/dev/null; then
	fail "the cancelled step still runs on its worker: $(pgrep -af '^sleep 20$')"
fi
# The workers were not blamed for the jobs kilnd gave up on.
netns_wait_workers '[.workers[] | select(.state == "ready")] | length >= 2' "workers still ready after the cancel"
BID=$(sed -n 's/^kiln: cancelling build \([0-9a-f]*\) .*/\1/p' "$T/progress-cancel.json")
[ -n "$BID" ] || fail "no build id in the cancel notice"
CAUTH=(-H "Authorization: Bearer $(cat "$KILND_ROOT/client.token")")
assert_eq "$(curl -s -o /dev/null -m 5 -w '%{http_code}' -X DELETE "${CAUTH[@]}" "$KILND_URL/v1/builds/$BID")" \
	409 "cancelling a build that ended"
assert_eq "$(curl -s -o /dev/null -m 5 -w '%{http_code}' -X DELETE "${CAUTH[@]}" "$KILND_URL/v1/builds/0123456789abcdef")" \
	404 "cancelling a build that does not exist"
assert_eq "$(curl -s -o /dev/null -m 5 -w '%{http_code}' -X DELETE "$KILND_URL/v1/builds/$BID")" \
	401 "cancelling without the client token"

echo "== cancelling a build does not fail another that waits on the same step"
SCTX="$T/ctx-shared-cancel"
mkdir -p "$SCTX"
tok=$RANDOM$RANDOM
printf 'FROM %s/busybox:latest\nRUN echo shared-%s && sleep 4 && echo shared-%s > /shared\n' \
	"$REG" "$tok" "$tok" >"$SCTX/Dockerfile"
"$KILN" build --addr "$KILND_URL" --token-file "$KILND_ROOT/client.token" --progress json \
	--insecure-registry "$REG" --platform linux/amd64 "$SCTX" 2>"$T/progress-ca.json" &
BG_PID=$!
pawait "$T/progress-ca.json" 'any(.[]; .status == "running" and (.name | contains("sleep 4")))' \
	"the shared step never ran in the first build"
rbuild "$T/progress-cb.json" --platform linux/amd64 -o "type=local,dest=$T/out-cb" "$SCTX" &
BPID=$!
CLEANUP_HOOKS+=("kill -9 $BPID 2>/dev/null")
sleep 1 # the second build reaches the step and waits on the first's run
kill -TERM "$BG_PID" # SIGTERM cancels too (SIGINT is ignored in this background job)
rc=0
wait "$BG_PID" || rc=$?
BG_PID=
[ "$rc" != 0 ] || fail "the interrupted build succeeded"
wait "$BPID" || fail "the other build failed when the first was cancelled: $(pev "$T/progress-cb.json" | tail -20)"
assert_eq "$(cat "$T/out-cb/shared")" "shared-$tok" "the other build's result"

# kill -9 of a worker mid-build while another worker of its platform is
# registered, N times: an extra amd64 worker in a fourth namespace; each
# round builds a step that sleeps 2 s, kills -9 the worker the progress
# shows running it, requires the build to succeed (on the other worker),
# then restarts the killed one (same root) so both are there for the next
# round. Then one round freezes a worker instead (freeze_round). Finally
# every worker is stopped and its root must fsck clean.
# The worker the progress shows running the "sleep 2" step (waits for it
# while the build in $BG_PID runs; empty if it never does).
await_victim() { # PROGRESS-FILE
	local victim=
	for _ in $(seq 600); do
		victim=$(jq -r -R 'fromjson? // empty | select(.vertex != null and .status == "running"
			and (.name | contains("sleep 2"))) | .worker' <"$1" 2>/dev/null | head -1 || true)
		[ -n "$victim" ] && break
		kill -0 "$BG_PID" 2>/dev/null || break
		sleep 0.05
	done
	echo "$victim"
}

# A worker that hangs (SIGSTOP: its connections stay open, its heartbeats
# stop) is lost after 3 heartbeat intervals and its job placed elsewhere;
# once it wakes it is taken back.
freeze_round() {
	local ctx="$T/freeze-ctx" prog="$T/freeze-progress.json" out="$T/freeze-out" victim
	mkdir -p "$ctx"
	cat >"$ctx/Dockerfile" <<DF
FROM $REG/busybox:latest
RUN sleep 2 && echo frozen-$NONCE > /slow
DF
	: >"$prog"
	rbuild "$prog" --platform linux/amd64 --output "type=local,dest=$out" "$ctx" &
	BG_PID=$!
	victim=$(await_victim "$prog")
	[ -n "$victim" ] || fail "freeze round: the slow step never ran: $(tail -5 "$prog")"
	kill -STOP "${NETNS_WPID[$victim]}"
	wait "$BG_PID" || { kill -CONT "${NETNS_WPID[$victim]}"; fail "freeze round: build failed with $victim stopped: $(tail -5 "$prog")"; }
	BG_PID=
	kill -CONT "${NETNS_WPID[$victim]}"
	assert_eq "$(cat "$out/slow")" "frozen-$NONCE" "freeze round output"
	pcheck "$prog" "[.[] | select(.vertex != null and .status == \"done\" and (.name | contains(\"sleep 2\")))] |
		length == 1 and .[0].worker != \"$victim\"" ||
		fail "freeze round: the slow step did not finish on another worker than $victim: $(pev "$prog" | tail -5)"
	_NETNS_OLD_ID=
	_netns_until 20 _netns_worker_ready "$victim" || fail "freeze round: $victim not back after SIGCONT"
	echo "freeze round: stopped $victim, build ok, $victim back" >&2
}

kill_loop() { # N
	local n=$1 i victim prog out ctx
	[ -n "${NETNS_IP[amd2]:-}" ] || netns_add amd2 5
	[ -n "${NETNS_WPID[amd2]:-}" ] || netns_worker_start amd2 "$T/w-amd2" linux/amd64
	for i in $(seq "$n"); do
		ctx="$T/kill-ctx-$i"
		prog="$T/kill-progress-$i.json"
		out="$T/kill-out-$i"
		mkdir -p "$ctx"
		cat >"$ctx/Dockerfile" <<DF
FROM $REG/busybox:latest
RUN echo before-$NONCE-$i > /before
RUN sleep 2 && echo round-$NONCE-$i > /slow
DF
		: >"$prog"
		rbuild "$prog" --platform linux/amd64 --output "type=local,dest=$out" "$ctx" &
		BG_PID=$!
		victim=$(await_victim "$prog")
		[ -n "$victim" ] || fail "kill round $i: the slow step never ran: $(tail -5 "$prog")"
		[ -n "${NETNS_WPID[$victim]:-}" ] || fail "kill round $i: progress names unknown worker '$victim'"
		netns_kill "${NETNS_WPID[$victim]}" KILL
		wait "$BG_PID" || fail "kill round $i: build failed after kill -9 of $victim: $(tail -5 "$prog")"
		BG_PID=
		assert_eq "$(cat "$out/slow")" "round-$NONCE-$i" "kill round $i output"
		# The victim stayed dead until the build ended: the step finished elsewhere.
		pcheck "$prog" "[.[] | select(.vertex != null and .status == \"done\" and (.name | contains(\"sleep 2\")))] |
			length == 1 and .[0].worker != \"$victim\"" ||
			fail "kill round $i: the slow step did not finish once on another worker than $victim: $(pev "$prog" | tail -5)"
		netns_worker_start "$victim" "$T/w-$victim" linux/amd64
		echo "kill round $i/$n: killed $victim, build ok" >&2
	done
	freeze_round
	for w in "$AMD" amd2 "$ARM"; do
		netns_worker_stop "$w"
		worker_fsck "$w" "$T/w-$w"
	done
	# Restarted workers cleaned up after their killed jobs: no mount of
	# theirs outlives them.
	if awk -v p="$T/w-" 'index($5, p) == 1' /proc/self/mountinfo | grep -q .; then
		fail "mounts left under the worker roots: $(awk -v p="$T/w-" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo)"
	fi
}

echo "== kill -9 of a worker mid-build, $KILN_KILL_LOOP_N rounds"
kill_loop "$KILN_KILL_LOOP_N"

netns_kilnd_stop
netns_teardown
echo "PASS"
