# Multi-host helpers for kiln's integration tests: network namespaces on a
# private bridge, the real registry on the bridge, kilnd and kiln-worker each
# in its own namespace. Source it after lib.sh (and it sources
# registry-lib.sh for the registry helpers).
#
#   netns_setup
#       Create this run's bridge (kbr<ID>, ID = the test's PID) with a /24
#       no route of the host uses yet; the root namespace gets .1
#       ($NETNS_HOST_IP). Registers the cleanup hook. Call once, first.
#       It also removes what runs killed before their cleanup left behind
#       (namespaces kiln<PID>-*, veths kv<PID>h*, bridge kbr<PID> whose
#       PID is gone).
#   netns_add NAME N
#       Create namespace kiln<ID>-NAME with its own veth on the bridge,
#       address $NETNS_PREFIX.N (also in NETNS_IP[NAME]), loopback up,
#       default route via .1; waits until the root namespace can reach it.
#   netns_exec NAME CMD...
#       Run CMD in namespace NAME in the foreground (network namespace
#       only: mounts and the filesystem are the root namespace's).
#   netns_bg NAME LOG CMD...
#       Run CMD in namespace NAME in the background, stdout+stderr appended
#       to LOG. Sets NETNS_BG_PID and remembers it for the cleanup hook.
#       Call it directly, never inside $(...) (the PID must be our child).
#   netns_kill PID [SIGNAL]
#       Send SIGNAL (default KILL) to a process started by netns_bg and
#       reap it. With TERM, waits up to 10 s and returns its exit status.
#   netns_require_binfmt_arm64
#       Make sure arm64 binaries run through binfmt_misc + qemu-user
#       (mounts binfmt_misc, enables qemu-aarch64 with update-binfmts);
#       fails the test, naming what is missing, when it cannot.
#   netns_registry_start
#       Start docker-registry in the root namespace on $NETNS_HOST_IP:PORT
#       (reachable from every namespace); sets NETNS_REG (HOST:PORT) and
#       NETNS_REG_PID.
#   netns_registry_push_busybox
#       Push the two-platform busybox fixture ($LAYOUT, from lib.sh) to
#       $NETNS_REG/busybox:latest with skopeo (both platforms).
#   netns_kilnd_start NAME ROOT [ARGS...]
#       Start kilnd in namespace NAME, state in ROOT, listening on
#       NETNS_IP[NAME]:7070; waits for /v1/health. Sets KILND_URL,
#       KILND_ROOT, KILND_NS, KILND_PID (extra ARGS go to kilnd; the
#       heartbeat interval is $NETNS_HEARTBEAT_MS, default 200; with the
#       registry started, --insecure-registry $NETNS_REG).
#   netns_kilnd_stop
#       SIGTERM kilnd and require a clean exit.
#   netns_worker_start NAME ROOT PLATFORM [ARGS...]
#       Start kiln-worker --name NAME in namespace NAME (netns_add it
#       first), state in ROOT, blob server on NETNS_IP[NAME]:7071, joined
#       to $KILND_URL with KILND_ROOT/worker.token, --platform PLATFORM.
#       With the registry started, --insecure-registry $NETNS_REG.
#       Sets NETNS_WPID[NAME]; waits until `kiln workers` shows it ready
#       (under a new id, when it replaces an earlier run of that name).
#   netns_worker_stop NAME
#       SIGTERM that worker and require a clean exit.
#   netns_workers_json
#       `kiln workers --json` against $KILND_URL with the client token.
#   netns_wait_workers JQ-CONDITION WHAT
#       Poll netns_workers_json until the condition holds (20 s deadline);
#       fails with WHAT and the last answer.
#   netns_teardown
#       Kill everything started here (by PID, plus any process still in one
#       of this run's namespaces), delete the veths, namespaces and bridge,
#       then check that nothing of this run is left (fails the test if so).
#       Call it at the end of a passing test; the cleanup hook runs the
#       same removal when a test dies midway (and makes the exit status 1
#       if something could not be removed). The first SIGTERM/SIGINT/SIGHUP
#       exits into that cleanup; later ones are ignored so they cannot cut
#       it short. (SIGKILL can: the next run's netns_setup sweeps up.)
#   netns_assert_clean
#       Fail if a namespace, veth or the bridge of this run still exists,
#       or if /dev/null is no longer a character device.
#
# Needs: ip (iproute2), nsenter (util-linux), curl, python3, and for the
# registry: docker-registry, skopeo. Safe under `set -euo pipefail`.

: "${T:?source lib.sh before netns-lib.sh}"
. "$(dirname "${BASH_SOURCE[0]}")/registry-lib.sh"

for _netns_tool in ip nsenter curl python3; do
	command -v "$_netns_tool" >/dev/null || fail "$_netns_tool is not installed (scripts/install-deps.sh)"
done
unset _netns_tool

NETNS_ID=$$

# The first SIGTERM/SIGINT/SIGHUP exits (so lib.sh's EXIT trap cleans up);
# further ones are ignored so they cannot cut the cleanup short (timeout(1)
# signals the child and then its whole process group: two SIGTERMs).
trap 'trap "" TERM INT HUP; exit 143' TERM
trap 'trap "" TERM INT HUP; exit 130' INT
trap 'trap "" TERM INT HUP; exit 129' HUP
NETNS_BR="kbr$NETNS_ID"
NETNS_NS_PREFIX="kiln$NETNS_ID-"
NETNS_HEARTBEAT_MS=${NETNS_HEARTBEAT_MS:-200}
NETNS_PREFIX=
NETNS_HOST_IP=
NETNS_NAMES=()
NETNS_PIDS=()
NETNS_REG=
NETNS_REG_PID=
declare -A NETNS_IP=()
declare -A NETNS_WPID=()
_NETNS_HOOKED=

# Poll: _netns_until SECONDS CMD... — 0 as soon as CMD succeeds, 1 at the
# deadline. Short sleeps, never a long fixed one.
_netns_until() {
	local deadline=$((SECONDS + $1))
	shift
	while :; do
		"$@" && return 0
		[ "$SECONDS" -lt "$deadline" ] || return 1
		sleep 0.05
	done
}

# A /24 in 10.200.0.0–10.249.255.0 that no address or route of the host
# covers (ip route get answers through a gateway, or not at all), derived
# from our PID so concurrent runs start at different candidates.
_netns_pick_prefix() {
	local i n p out addrs routes
	addrs=$(ip -4 -o addr show)
	routes=$(ip -4 route show)
	for i in $(seq 0 199); do
		n=$((NETNS_ID + i * 7919))
		p="10.$((200 + n % 50)).$(((n / 50) % 256))"
		grep -qF " $p." <<<"$addrs" && continue
		grep -q "^$p\." <<<"$routes" && continue
		out=$(ip -4 route get "$p.1" 2>/dev/null || true)
		if [ -n "$out" ] && ! grep -q ' via ' <<<"$out"; then
			continue # directly connected somewhere already (or local)
		fi
		echo "$p"
		return 0
	done
	return 1
}

netns_setup() {
	[ -z "$NETNS_PREFIX" ] || fail "netns_setup called twice"
	# Names carry our PID: anything already named so was left by a dead
	# run that had the same PID (killed with SIGKILL), so it can go; so
	# can the leftovers of any other dead run.
	if [ -n "$(_netns_leftovers)" ]; then
		echo "netns: removing leftovers of an earlier run with PID $NETNS_ID: $(_netns_leftovers | tr '\n' ' ')" >&2
		_netns_remove_id "$NETNS_ID"
	fi
	_netns_sweep_dead_runs
	NETNS_PREFIX=$(_netns_pick_prefix) || fail "no free 10.x.y.0/24 for the test bridge"
	NETNS_HOST_IP="$NETNS_PREFIX.1"
	if [ -z "$_NETNS_HOOKED" ]; then
		CLEANUP_HOOKS+=("_netns_remove_all warn")
		_NETNS_HOOKED=1
	fi
	# A fixed (locally administered) MAC: otherwise the bridge takes the
	# lowest MAC of its ports and changes it as veths join, and a
	# namespace that resolved .1 before keeps sending to the stale one.
	ip link add "$NETNS_BR" address "$(printf '02:6b:%02x:%02x:%02x:01' \
		$(((NETNS_ID >> 16) & 255)) $(((NETNS_ID >> 8) & 255)) $((NETNS_ID & 255)))" type bridge ||
		fail "cannot create bridge $NETNS_BR"
	# Bridged traffic between namespaces must not meet the host's
	# iptables FORWARD policy (br_netfilter); best effort on old kernels.
	ip link set "$NETNS_BR" type bridge nf_call_iptables 0 2>/dev/null || true
	ip addr add "$NETNS_HOST_IP/24" dev "$NETNS_BR" || fail "cannot address $NETNS_BR"
	ip link set "$NETNS_BR" up || fail "cannot bring $NETNS_BR up"
	echo "netns: bridge $NETNS_BR $NETNS_PREFIX.0/24" >&2
}

_netns_ns() { echo "$NETNS_NS_PREFIX$1"; }
_netns_veth() { echo "kv${NETNS_ID}h$1"; } # host side; the peer is eth0 inside

netns_add() { # NAME N
	local name=$1 n=$2 ns veth ip
	[ -n "$NETNS_PREFIX" ] || fail "netns_add before netns_setup"
	[ -z "${NETNS_IP[$name]:-}" ] || fail "namespace $name exists already"
	ns=$(_netns_ns "$name")
	veth=$(_netns_veth "$n")
	ip="$NETNS_PREFIX.$n"
	[ "${#veth}" -le 15 ] || fail "interface name $veth is too long"
	ip netns add "$ns" || fail "cannot create namespace $ns"
	NETNS_NAMES+=("$name")
	NETNS_IP[$name]=$ip
	ip link add "$veth" type veth peer name eth0 netns "$ns" || fail "cannot create veth $veth"
	ip link set "$veth" master "$NETNS_BR" up || fail "cannot attach $veth to $NETNS_BR"
	ip -n "$ns" link set lo up || fail "loopback up in $ns"
	ip -n "$ns" addr add "$ip/24" dev eth0 || fail "cannot address eth0 in $ns"
	ip -n "$ns" link set eth0 up || fail "eth0 up in $ns"
	ip -n "$ns" route add default via "$NETNS_HOST_IP" || fail "default route in $ns"
	_netns_until 10 _netns_reachable "$ip" ||
		fail "namespace $name ($ip) is not reachable from the root namespace"
}

# True if a TCP connection to ip:9 is answered (accepted or refused): the
# address is up and routed (no ping on minimal hosts).
_netns_reachable() { # IP
	python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket()
s.settimeout(1)
try:
    s.connect((sys.argv[1], 9))
except ConnectionRefusedError:
    pass
except OSError:
    sys.exit(1)
PY
}

netns_exec() { # NAME CMD...
	local name=$1
	shift
	[ -n "${NETNS_IP[$name]:-}" ] || fail "no namespace $name"
	nsenter --net="/run/netns/$(_netns_ns "$name")" -- "$@"
}

netns_bg() { # NAME LOG CMD...
	local name=$1 log=$2
	shift 2
	[ -n "${NETNS_IP[$name]:-}" ] || fail "no namespace $name"
	# nsenter execs CMD after setns (no fork for a network namespace), so
	# $! is CMD's own PID.
	nsenter --net="/run/netns/$(_netns_ns "$name")" -- "$@" </dev/null >>"$log" 2>&1 &
	NETNS_BG_PID=$!
	NETNS_PIDS+=("$NETNS_BG_PID")
}

netns_kill() { # PID [SIGNAL]
	local pid=$1 sig=${2:-KILL} rc=0
	kill -"$sig" "$pid" 2>/dev/null || true
	if [ "$sig" != KILL ] && ! _netns_until 10 _netns_gone "$pid"; then
		echo "netns: pid $pid ignored SIG$sig for 10 s, killing it" >&2
		kill -9 "$pid" 2>/dev/null || true
		rc=124
	fi
	if [ "$rc" = 0 ]; then
		wait "$pid" 2>/dev/null || rc=$?
		[ "$sig" != KILL ] || rc=0
	else
		wait "$pid" 2>/dev/null || true
	fi
	_netns_forget "$pid"
	return $rc
}

# Drop a reaped PID from the list the cleanup hook kills: the number may
# belong to someone else's process by then.
_netns_forget() { # PID
	local p keep=()
	for p in "${NETNS_PIDS[@]}"; do
		[ "$p" = "$1" ] || keep+=("$p")
	done
	NETNS_PIDS=("${keep[@]}")
}

# True once pid has exited (a zombie counts: it only waits to be reaped).
_netns_gone() {
	local st
	[ -r "/proc/$1/stat" ] || return 0
	st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 0
	[ "$st" = Z ] || [ -z "$st" ]
}

netns_require_binfmt_arm64() {
	local d=/proc/sys/fs/binfmt_misc entry interp
	if [ ! -e "$d/register" ]; then
		mount -t binfmt_misc binfmt_misc "$d" ||
			fail "binfmt_misc is not mounted at $d and cannot be mounted (arm64 emulation needs it)"
	fi
	entry="$d/qemu-aarch64"
	if [ ! -e "$entry" ] || ! grep -qx enabled "$entry"; then
		command -v update-binfmts >/dev/null ||
			fail "no enabled binfmt_misc handler qemu-aarch64 and no update-binfmts (install qemu-user-static binfmt-support)"
		update-binfmts --enable qemu-aarch64 ||
			fail "update-binfmts --enable qemu-aarch64 failed (install qemu-user-static binfmt-support)"
	fi
	[ -e "$entry" ] || fail "binfmt_misc has no qemu-aarch64 handler after update-binfmts (install qemu-user-static)"
	grep -qx enabled "$entry" || fail "binfmt_misc handler qemu-aarch64 is disabled: $(cat "$entry")"
	interp=$(sed -n 's/^interpreter //p' "$entry")
	# With flag F the interpreter is opened at registration; otherwise it
	# must exist now.
	if ! grep -q '^flags:.*F' "$entry" && [ ! -x "$interp" ]; then
		fail "binfmt_misc qemu-aarch64 interpreter $interp is missing (install qemu-user-static)"
	fi
}

netns_registry_start() {
	local dir="$T/netns-registry" port try
	[ -n "$NETNS_HOST_IP" ] || fail "netns_registry_start before netns_setup"
	command -v docker-registry >/dev/null || fail "docker-registry is not installed (scripts/install-deps.sh)"
	mkdir -p "$dir/data"
	for try in 1 2 3 4 5; do
		port=$(python3 -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$NETNS_HOST_IP")
		printf 'version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n' >"$dir/config.yml"
		printf 'storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\n' "$dir/data" >>"$dir/config.yml"
		printf 'http:\n  addr: %s:%s\n' "$NETNS_HOST_IP" "$port" >>"$dir/config.yml"
		docker-registry serve "$dir/config.yml" </dev/null >>"$dir/registry.log" 2>&1 &
		NETNS_REG_PID=$!
		NETNS_PIDS+=("$NETNS_REG_PID")
		if _registry_wait "$NETNS_REG_PID" "http://$NETNS_HOST_IP:$port/v2/"; then
			NETNS_REG="$NETNS_HOST_IP:$port"
			return 0
		fi
		netns_kill "$NETNS_REG_PID"
	done
	fail "docker-registry did not start on $NETNS_HOST_IP: $(tail -5 "$dir/registry.log")"
}

netns_registry_push_busybox() {
	command -v skopeo >/dev/null || fail "skopeo is not installed (scripts/install-deps.sh)"
	[ -n "$NETNS_REG" ] || fail "netns_registry_push_busybox before netns_registry_start"
	skopeo copy -q --all --dest-tls-verify=false "oci:$LAYOUT:latest" \
		"docker://$NETNS_REG/busybox:latest" >"$T/netns-push.log" 2>&1 ||
		fail "skopeo cannot push busybox to $NETNS_REG: $(cat "$T/netns-push.log")"
	local plats
	plats=$(skopeo inspect --raw --tls-verify=false "docker://$NETNS_REG/busybox:latest" |
		jq -r '[.manifests[].platform | .os + "/" + .architecture] | sort | join(",")')
	assert_eq "$plats" "linux/amd64,linux/arm64" "platforms of $NETNS_REG/busybox:latest"
}

# --insecure-registry for the test registry (plain http on the bridge),
# once it runs: kilnd resolves images, workers pull them.
_netns_insecure() {
	[ -z "$NETNS_REG" ] || echo "--insecure-registry $NETNS_REG"
}

netns_kilnd_start() { # NAME ROOT [ARGS...]
	local name=$1 root=$2
	shift 2
	KILND_NS=$name
	KILND_ROOT=$root
	KILND_URL="http://${NETNS_IP[$name]:?no namespace $name}:7070"
	netns_bg "$name" "$T/kilnd.log" "$KILND" --root "$root" --listen "${NETNS_IP[$name]}:7070" \
		--heartbeat-interval-ms "$NETNS_HEARTBEAT_MS" $(_netns_insecure) "$@"
	KILND_PID=$NETNS_BG_PID
	_netns_until 20 _netns_health "$KILND_PID" ||
		fail "kilnd in $name did not answer $KILND_URL/v1/health: $(tail -5 "$T/kilnd.log")"
}

_netns_health() { # PID
	kill -0 "$1" 2>/dev/null || fail "kilnd exited: $(tail -5 "$T/kilnd.log")"
	curl -sf -m 2 "$KILND_URL/v1/health" >/dev/null
}

netns_kilnd_stop() {
	local rc=0
	netns_kill "$KILND_PID" TERM || rc=$?
	assert_eq "$rc" 0 "kilnd exit status after SIGTERM"
}

netns_workers_json() {
	"$KILN" workers --addr "$KILND_URL" --token-file "$KILND_ROOT/client.token" --json
}

_netns_workers_hold() { # JQ-CONDITION
	netns_workers_json 2>/dev/null | jq -e "$1" >/dev/null 2>&1
}

netns_wait_workers() { # JQ-CONDITION WHAT
	_netns_until 20 _netns_workers_hold "$1" || fail "$2: $(netns_workers_json 2>&1)"
}

netns_worker_start() { # NAME ROOT PLATFORM [ARGS...]
	local name=$1 root=$2 plat=$3 ip
	shift 3
	ip=${NETNS_IP[$name]:?no namespace $name}
	# A restart with the same name replaces the old entry: wait for a new id.
	_NETNS_OLD_ID=$(netns_workers_json 2>/dev/null |
		jq -r --arg n "$name" '.workers[] | select(.name == $n) | .id' 2>/dev/null || true)
	netns_bg "$name" "$T/worker-$name.log" "$KILN_WORKER" --join "$KILND_URL" \
		--token-file "$KILND_ROOT/worker.token" --root "$root" --name "$name" \
		--listen "$ip:7071" --advertise "http://$ip:7071" --platform "$plat" $(_netns_insecure) "$@"
	NETNS_WPID[$name]=$NETNS_BG_PID
	_netns_until 20 _netns_worker_ready "$name" ||
		fail "worker $name not ready: $(netns_workers_json 2>&1); log: $(tail -5 "$T/worker-$name.log")"
}

_netns_worker_ready() { # NAME
	kill -0 "${NETNS_WPID[$1]}" 2>/dev/null ||
		fail "kiln-worker $1 exited: $(tail -5 "$T/worker-$1.log")"
	_netns_workers_hold "any(.workers[]; .name == \"$1\" and .state == \"ready\" and .id != \"$_NETNS_OLD_ID\")"
}

netns_worker_stop() { # NAME
	local rc=0
	netns_kill "${NETNS_WPID[$1]}" TERM || rc=$?
	assert_eq "$rc" 0 "kiln-worker $1 exit status after SIGTERM"
}

# Namespaces and root-namespace links (veths, then the bridge) of the run
# with ID $1 (default: this run).
_netns_run_namespaces() { # [ID]
	ip netns list 2>/dev/null | awk '{print $1}' | grep "^kiln${1:-$NETNS_ID}-" || true
}
_netns_run_links() { # [ID]
	local id=${1:-$NETNS_ID} links
	links=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//')
	grep -E "^kv${id}h[0-9]+\$" <<<"$links" || true
	grep -x "kbr$id" <<<"$links" || true
}

# Everything of run ID $1 (default: this one) that still exists, one per
# line (empty: clean).
_netns_leftovers() { # [ID]
	_netns_run_namespaces "${1:-}" | sed 's/^/namespace /'
	_netns_run_links "${1:-}" | sed 's/^/link /'
}

# Delete the namespaces, veths and bridge of run ID, killing (by PID) any
# process still inside one of its namespaces first (e.g. a container a
# killed worker left behind: it would keep the namespace alive).
_netns_remove_id() { # ID
	local pid ns link
	for ns in $(_netns_run_namespaces "$1"); do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -9 "$pid" 2>/dev/null || true
		done
	done
	for link in $(_netns_run_links "$1"); do
		ip link del "$link" 2>/dev/null || true
	done
	for ns in $(_netns_run_namespaces "$1"); do
		ip netns del "$ns" 2>/dev/null || true
	done
}

# Runs of this harness that were killed before their cleanup (SIGKILL,
# e.g. meson's timeout kills the process group 0.5 s after SIGTERM) leave
# kiln<PID>-* namespaces, kv<PID>h* veths and kbr<PID>. Remove those whose
# PID no longer exists; a live PID is left alone (its names cannot collide
# with ours, and its subnet has a route we avoid).
_netns_sweep_dead_runs() {
	local id ids
	ids=$({
		ip netns list 2>/dev/null | awk '{print $1}' | sed -n 's/^kiln\([0-9][0-9]*\)-.*/\1/p'
		ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' |
			sed -n 's/^kbr\([0-9][0-9]*\)$/\1/p; s/^kv\([0-9][0-9]*\)h[0-9][0-9]*$/\1/p'
	} | sort -u)
	for id in $ids; do
		[ "$id" != "$NETNS_ID" ] || continue
		[ ! -e "/proc/$id" ] || continue
		echo "netns: removing leftovers of dead run $id: $(_netns_leftovers "$id" | tr '\n' ' ')" >&2
		_netns_remove_id "$id"
	done
}

# Remove all of this run's processes, veths, namespaces and the bridge.
# With "warn" (the cleanup hook), report leftovers on stderr and set
# cleanup()'s exit status to 1; otherwise fail.
_netns_remove_all() {
	local mode=${1:-} pid left
	for pid in "${NETNS_PIDS[@]}"; do
		kill -9 "$pid" 2>/dev/null || true
	done
	for pid in "${NETNS_PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	NETNS_PIDS=()
	# Sweep by this run's names (not only the ones recorded), so a
	# namespace or veth made just before a failure goes too.
	_netns_remove_id "$NETNS_ID"
	NETNS_NAMES=()
	NETNS_IP=()
	NETNS_WPID=()
	NETNS_PREFIX=
	left=$(_netns_leftovers)
	if [ -n "$left" ]; then
		if [ "$mode" = warn ]; then
			echo "FAIL: left behind by $(basename "$0"): $left" >&2
			# Run as a CLEANUP_HOOK, inside lib.sh's cleanup(): its
			# local rc is the exit status (bash's dynamic scoping).
			rc=1
		else
			fail "left behind: $left"
		fi
	fi
	return 0
}

netns_teardown() {
	_netns_remove_all
	netns_assert_clean
}

netns_assert_clean() {
	local left
	left=$(_netns_leftovers)
	[ -z "$left" ] || fail "left behind: $left"
	[ -c /dev/null ] || fail "/dev/null is no longer a character device"
}
