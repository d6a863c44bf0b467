#!/bin/bash
# RUN --mount=type=ssh with kiln build --ssh, on the embedded engine and
# on a loopback cluster (kilnd, an amd64 and an emulated arm64 worker),
# for linux/amd64 and linux/arm64. The step runs ssh-agent-probe (a tiny
# static agent client: busybox has no ssh tools), which must list the
# test key, get a signature, and be refused ADD_IDENTITY. The agent's
# socket and the key's path must be nowhere: not in the image, the op
# graph, the cache or the logs; a second build through another socket
# to the same key is a cache hit. The ssh-agents kiln starts for key
# files end with the build, also when it fails or is killed with -9:
# they are found by their socket directory, under this test's TMPDIR.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/registry-lib.sh"
. "$KILN_SOURCE_ROOT/tests/conformance/cluster.sh"

for tool in ssh-agent ssh-add ssh-keygen gcc aarch64-linux-gnu-gcc skopeo; do
	command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/install-deps.sh)"
done
cluster_require_arm64

export SOURCE_DATE_EPOCH=1700000000
# kiln's own agents listen in $TMPDIR/kiln-ssh-*: this test's alone.
export TMPDIR="$T/tmp"
mkdir -p "$TMPDIR"
CTX="$T/ctx"
mkdir -p "$CTX"
gcc -static -O2 -o "$CTX/probe-amd64" "$KILN_SOURCE_ROOT/tests/integration/ssh-agent-probe.c" ||
	fail "cannot build the amd64 probe"
aarch64-linux-gnu-gcc -static -O2 -o "$CTX/probe-arm64" \
	"$KILN_SOURCE_ROOT/tests/integration/ssh-agent-probe.c" || fail "cannot build the arm64 probe"
cat >"$CTX/Dockerfile" <<'DF'
ARG BASE
FROM $BASE
ARG TARGETARCH
COPY probe-$TARGETARCH /probe
RUN --mount=type=ssh /probe list >/listed && /probe sign >/signed && /probe add >/added && \
    echo "$SSH_AUTH_SOCK" >/sock
DF
ssh-keygen -q -t ed25519 -N '' -C kiln-test -f "$T/id_test"
WANT=$(ssh-keygen -y -f "$T/id_test" | cut -d' ' -f2)

# A second agent of the test's own, holding the same key, for the cache check.
AGENT_SOCK="$T/agent2.sock"
ssh-agent -D -a "$AGENT_SOCK" >/dev/null 2>&1 &
AGENT_PID=$!
CLEANUP_HOOKS+=('kill "$AGENT_PID" 2>/dev/null')
for _ in $(seq 50); do [ -S "$AGENT_SOCK" ] && break; sleep 0.1; done
SSH_AUTH_SOCK="$AGENT_SOCK" ssh-add -q "$T/id_test" </dev/null || fail "ssh-add into the test agent"

registry_with_busybox "$T/registry"
BASE=$BUSYBOX_REF
cluster_start "$T/cluster"

mbuild() { # MODE ARGS...
	local mode=$1
	shift
	case "$mode" in
	embedded) KILN_ROOT="$T/embedded" kbuild "$@" ;;
	cluster) KILN_ROOT="$T/cluster/client" kbuild "${CLUSTER_CLIENT_ARGS[@]}" "$@" ;;
	esac
}

check_out() { # MODE DIR
	local p
	for p in linux_amd64 linux_arm64; do
		assert_eq "$(cat "$2/$p/listed")" "$WANT" "$1 $p: the key the step listed"
		assert_eq "$(cat "$2/$p/signed")" 14 "$1 $p: answer to a sign request"
		assert_eq "$(cat "$2/$p/added")" 5 "$1 $p: answer to ADD_IDENTITY (SSH_AGENT_FAILURE)"
		assert_eq "$(cat "$2/$p/sock")" /run/buildkit/ssh_agent.0 "$1 $p: SSH_AUTH_SOCK"
		[ ! -e "$2/$p/run/buildkit" ] || fail "$1 $p: the socket's mount point is in the image"
	done
}

# Nothing under the given dirs or files names the socket or the key's path.
assert_nowhere() { # WHAT PATH...
	local what=$1 hits
	shift
	hits=$(grep -rlaF -e "$AGENT_SOCK" -e "$T/id_test" "$@" 2>/dev/null || true)
	[ -z "$hits" ] || fail "$what: the socket or key path leaked into: $hits"
}

for mode in embedded cluster; do
	echo "== $mode: key file"
	mbuild "$mode" --build-arg "BASE=$BASE" --platform linux/amd64,linux/arm64 \
		--ssh "default=$T/id_test" -o "type=local,dest=$T/out-$mode" \
		-o "type=oci,dest=$T/$mode.tar" "$CTX" ||
		fail "$mode build: $(tail -3 "$T/progress.json"; [ "$mode" = embedded ] || grep -A25 -e "ERROR: Addr" -e "runtime error" "$T/cluster/kilnd.log")"
	check_out "$mode" "$T/out-$mode"
	cp "$T/progress.json" "$T/progress-$mode-1.json"

	echo "== $mode: another socket to the same key is a cache hit"
	mbuild "$mode" --build-arg "BASE=$BASE" --platform linux/amd64,linux/arm64 \
		--ssh "default=$AGENT_SOCK" -o "type=oci,dest=$T/$mode-2.tar" "$CTX" ||
		fail "$mode build 2: $(tail -20 "$T/progress.json")"
	assert_eq "$(vertices_run)" "" "$mode: steps run with another socket"
	assert_contains "$(vertices_cached)" "RUN --mount=type=ssh" "$mode: the ssh step cached"
	cmp -s "$T/$mode.tar" "$T/$mode-2.tar" || fail "$mode: the image changed with the socket"
	cp "$T/progress.json" "$T/progress-$mode-2.json"
done
cmp -s "$T/embedded.tar" "$T/cluster.tar" || fail "embedded and cluster images differ"
assert_nowhere "images, progress" "$T"/*.tar "$T"/progress-*.json
assert_nowhere "engine state, graphs, caches, logs" "$T/embedded" "$T/cluster"
# A session names what a worker may ask for: never in a URL or a log line.
hits=$(grep -rlaE "/v1/ssh/[0-9a-f]{32}" "$T/cluster" "$T"/progress-*.json 2>/dev/null || true)
[ -z "$hits" ] || fail "an ssh session token in: $hits"

echo "== errors"
cat >"$T/ctx/Dockerfile.req" <<'DF'
ARG BASE
FROM $BASE
RUN --mount=type=ssh,id=deploy,required=true true
DF
for mode in embedded cluster; do
	if mbuild "$mode" --build-arg "BASE=$BASE" --platform linux/amd64 -f "$CTX/Dockerfile.req" "$CTX"; then
		fail "$mode: a required ssh id that was not given built"
	fi
	assert_contains "$(cat "$T/progress.json")" "Dockerfile.req:3" "$mode: the line"
	assert_contains "$(cat "$T/progress.json")" "ssh agent 'deploy' is required" "$mode: the id"
done
kbuild_fails --ssh "default=$T/missing.sock" "$CTX"
assert_contains "$(cat "$T/progress.json")" "--ssh default=$T/missing.sock" "missing socket: the flag"
ssh-keygen -q -t ed25519 -N 'secret pass' -f "$T/id_pass"
# Keys are loaded once the Dockerfile is lowered: it must lower.
kbuild_fails --build-arg "BASE=$BASE" --ssh "default=$T/id_pass" "$CTX"
assert_contains "$(cat "$T/progress.json")" "cannot load the key $T/id_pass" "passphrase key: the file"
SSH_AUTH_SOCK= kbuild_fails --ssh default "$CTX"
assert_contains "$(cat "$T/progress.json")" "SSH_AUTH_SOCK is not set" "--ssh default without an agent"
pgrep -f "$TMPDIR/kiln-ssh-" >/dev/null &&
	fail "an ssh-agent kiln started is still running: $(pgrep -af "$TMPDIR/kiln-ssh-")"

echo "== kill -9 mid-build leaves no ssh-agent"
MARK="kiln-ssh-kill-$$"
cat >"$T/kill.json" <<JSON
{"version":1,"ops":[
 {"id":"base","op":"source.image","ref":"oci-layout://$LAYOUT:latest"},
 {"id":"slow","op":"exec","input":"base","args":["sh","-c","exec sh -c \\"sleep 300; true\\" $MARK"],
  "mounts":[{"type":"ssh","id":"default","target":"/run/ssh"}]}
],"output":"slow"}
JSON
cat >"$T/after.json" <<JSON
{"version":1,"ops":[
 {"id":"base","op":"source.image","ref":"oci-layout://$LAYOUT:latest"},
 {"id":"ok","op":"exec","input":"base","args":["true"]}
],"output":"ok"}
JSON
KILN_ROOT="$T/embedded" "$KILN" build --progress json --def "$T/kill.json" \
	--ssh "default=$T/id_test" 2>"$T/kill.json.log" &
BG_PID=$!
for _ in $(seq 300); do
	pgrep -f "$MARK" >/dev/null && break
	sleep 0.1
done
pgrep -f "$MARK" >/dev/null || fail "kill: the step never started: $(tail -3 "$T/kill.json.log")"
pgrep -f "$TMPDIR/kiln-ssh-" >/dev/null || fail "kill: no ssh-agent of the build's under $TMPDIR"
kill -9 "$BG_PID"
wait "$BG_PID" 2>/dev/null || true
BG_PID=
for _ in $(seq 50); do
	pgrep -f "$TMPDIR/kiln-ssh-" >/dev/null || break
	sleep 0.1
done
pgrep -f "$TMPDIR/kiln-ssh-" >/dev/null &&
	fail "kill -9: the build's ssh-agent outlived kiln: $(pgrep -af "$TMPDIR/kiln-ssh-")"
# The next build clears the killed one's container.
KILN_ROOT="$T/embedded" kbuild --def "$T/after.json" || fail "the build after kill -9 failed"
pgrep -f "$MARK" >/dev/null && fail "kill: the step's process survived"

cluster_stop
echo "ok"
