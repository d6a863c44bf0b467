# The cluster mode of the conformance suite (sourced by run.sh after
# lib.sh): kilnd, a linux/amd64 kiln-worker and a linux/arm64 kiln-worker
# (emulated through binfmt_misc + QEMU on an x86_64 host), all on
# 127.0.0.1, on free ports, state under DIR.
#
#   cluster_start DIR
#       Start the three daemons and wait until both workers are ready with
#       the expected platforms (with CLUSTER_REGISTRY_ENDPOINT set, each
#       daemon gets --registry-endpoint with it; CLUSTER_KILND_ARGS, an
#       array, adds kilnd flags; CLUSTER_WORKER_ARGS the workers'; their state is under
#       CLUSTER_WORKERS_DIR when set, else DIR). Sets KILND_URL and KILND_ROOT. Whatever is
#       still running at exit is killed by PID (a cleanup hook).
#       CLUSTER_CLIENT_ARGS then holds the `kiln build` flags for the
#       cluster (--addr, --token-file); the client's own state should be
#       DIR/client (KILN_ROOT).
#   cluster_note_steps PROGRESS
#       Record which worker ran each step of a build (JSON progress).
#   cluster_check_steps [all]
#       Fail if a step ran on the worker of another platform; with `all`
#       (the whole suite ran), also unless both workers ran steps.
#   cluster_logs
#       The tail of each daemon's log (for a failure message).
#   cluster_stop
#       SIGTERM the workers, then kilnd; each must exit 0 (so a leak that
#       ASan reports at exit fails the test).
#
# Two clusters at once: give each its own CLUSTER_PREFIX (a word) while
# starting and stopping it; CLUSTER_DIR and CLUSTER_CLIENT_ARGS are the
# last started one's (save them).

: "${KILND:?KILND must name the kilnd binary (meson test sets it)}"
: "${KILN_WORKER:?KILN_WORKER must name the kiln-worker binary (meson test sets it)}"

CLUSTER_DIR=
CLUSTER_PREFIX=${CLUSTER_PREFIX:-}
CLUSTER_CLIENT_ARGS=()
CLUSTER_KILND_ARGS=()
CLUSTER_WORKER_ARGS=()
declare -A CLUSTER_PID=() # kilnd, amd64, arm64
CLEANUP_HOOKS+=("_cluster_kill_all")

# The arm64 worker needs arm64 binaries to run: natively, or through an
# enabled binfmt_misc handler (qemu-user-static).
cluster_require_arm64() {
	local e=/proc/sys/fs/binfmt_misc/qemu-aarch64
	[ "$(uname -m)" != aarch64 ] || return 0
	[ -e "$e" ] || fail "no binfmt_misc handler qemu-aarch64 for the emulated arm64 worker ($e is missing: install qemu-user-static and binfmt-support, see scripts/install-deps.sh)"
	grep -qx enabled "$e" || fail "binfmt_misc handler qemu-aarch64 is disabled (update-binfmts --enable qemu-aarch64)"
}

_cluster_free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Start daemon NAME in the background, logging to DIR/NAME.log.
_cluster_bg() { # NAME CMD...
	local name=$1
	shift
	"$@" </dev/null >>"$CLUSTER_DIR/$name.log" 2>&1 &
	CLUSTER_PID[$CLUSTER_PREFIX$name]=$!
}

# SIGTERM (or $2) a daemon and reap it (SIGKILL after 10 s); its exit status.
_cluster_end() { # NAME [SIGNAL]
	local pid=${CLUSTER_PID[$1]:-} i rc=0
	[ -n "$pid" ] || return 0
	kill -"${2:-TERM}" "$pid" 2>/dev/null || true
	for i in $(seq 100); do
		[ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" = Z ] && break
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" || rc=$?
	unset "CLUSTER_PID[$1]"
	return $rc
}

_cluster_kill_all() {
	local n
	for n in "${!CLUSTER_PID[@]}"; do _cluster_end "$n" KILL || true; done
}

cluster_logs() {
	local f
	for f in "$CLUSTER_DIR"/*.log; do
		[ -f "$f" ] && printf -- '--- tail of %s\n%s\n' "$f" "$(tail -5 "$f")"
	done
}

_cluster_workers_json() {
	"$KILN" workers --addr "$KILND_URL" --token-file "$KILND_ROOT/client.token" --json
}

cluster_start() { # DIR
	local i p want
	CLUSTER_DIR=$1
	KILND_ROOT="$CLUSTER_DIR/kilnd"
	mkdir -p "$CLUSTER_DIR"
	: >"$CLUSTER_DIR/steps"
	cluster_require_arm64
	# The port may be taken between the probe and kilnd's bind: retry.
	for _ in 1 2 3 4 5; do
		KILND_URL="http://127.0.0.1:$(_cluster_free_port)"
		_cluster_bg kilnd "$KILND" --root "$KILND_ROOT" --listen "${KILND_URL#http://}" \
			${CLUSTER_REGISTRY_ENDPOINT:+--registry-endpoint "$CLUSTER_REGISTRY_ENDPOINT"} \
			"${CLUSTER_KILND_ARGS[@]}"
		for i in $(seq 100); do
			kill -0 "${CLUSTER_PID[${CLUSTER_PREFIX}kilnd]}" 2>/dev/null || break
			curl -sf -m 2 "$KILND_URL/v1/health" >/dev/null && break 2
			sleep 0.1
		done
		_cluster_end "${CLUSTER_PREFIX}kilnd" KILL || true
	done
	[ -n "${CLUSTER_PID[${CLUSTER_PREFIX}kilnd]:-}" ] || fail "kilnd did not start: $(tail -5 "$CLUSTER_DIR/kilnd.log")"
	for p in amd64 arm64; do
		# --listen 127.0.0.1:0: the kernel picks the blob server's port.
		_cluster_bg "$p" "$KILN_WORKER" --join "$KILND_URL" \
			--token-file "$KILND_ROOT/worker.token" --root "${CLUSTER_WORKERS_DIR:-$CLUSTER_DIR}/worker-$p" \
			--name "conformance-$p" --platform "linux/$p" --listen 127.0.0.1:0 \
			${CLUSTER_REGISTRY_ENDPOINT:+--registry-endpoint "$CLUSTER_REGISTRY_ENDPOINT"} \
			"${CLUSTER_WORKER_ARGS[@]}"
	done
	# Both ready, each with its one platform; arm64 emulated on x86_64.
	want='[{"platform":"linux/amd64","emulated":false}]'
	if [ "$(uname -m)" = x86_64 ]; then
		want="$want"' [{"platform":"linux/arm64","emulated":true}]'
	else
		want="$want"' [{"platform":"linux/arm64","emulated":false}]'
	fi
	for _ in $(seq 200); do
		for p in amd64 arm64; do
			kill -0 "${CLUSTER_PID[$CLUSTER_PREFIX$p]}" 2>/dev/null ||
				fail "kiln-worker $p exited: $(tail -5 "$CLUSTER_DIR/$p.log")"
		done
		if [ "$(_cluster_workers_json 2>/dev/null | jq -r '[.workers[] | select(.state == "ready")] |
			sort_by(.name) | map(.platforms | tojson) | join(" ")' 2>/dev/null)" = "$want" ]; then
			CLUSTER_CLIENT_ARGS=(--addr "$KILND_URL" --token-file "$KILND_ROOT/client.token")
			return 0
		fi
		sleep 0.1
	done
	fail "the workers are not ready (want $want): $(_cluster_workers_json 2>&1)"
}

cluster_note_steps() { # PROGRESS
	jq -R -r 'fromjson? // empty | select(.status == "done" and .cached == false) |
		"\(.platform) \(.worker)"' <"$1" >>"$CLUSTER_DIR/steps"
}

cluster_check_steps() { # [all]
	local p bad
	# kilnd loads the build contexts (the client uploaded them).
	bad=$(grep -v -x -e 'linux/amd64 conformance-amd64' -e 'linux/arm64 conformance-arm64' \
		-e '.* kilnd' "$CLUSTER_DIR/steps" | sort | uniq -c || true)
	[ -z "$bad" ] || fail "steps ran on a worker of another platform: $bad"
	[ "${1:-}" = all ] || return 0
	for p in amd64 arm64; do
		grep -qx "linux/$p conformance-$p" "$CLUSTER_DIR/steps" ||
			fail "no step ran on the linux/$p worker: $(sort "$CLUSTER_DIR/steps" | uniq -c)"
	done
}

cluster_stop() {
	local n rc
	for n in amd64 arm64 kilnd; do
		rc=0
		_cluster_end "$CLUSTER_PREFIX$n" || rc=$?
		assert_eq "$rc" 0 "exit status of $n after SIGTERM ($CLUSTER_DIR/$n.log: $(tail -5 "$CLUSTER_DIR/$n.log"))"
	done
}
