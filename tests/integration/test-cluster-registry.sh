#!/bin/bash
# kilnd and kiln-worker on loopback: tokens, registration (native and
# emulated platforms), `kiln workers`, refused requests (401, 413, 400),
# a worker lost after kill -9 and back after a restart, and workers that
# register again by themselves after kilnd restarts.
. "$(dirname "$0")/lib.sh"
: "${KILND:?KILND must name the kilnd binary (meson test sets it)}"
: "${KILN_WORKER:?KILN_WORKER must name the kiln-worker binary (meson test sets it)}"
command -v curl >/dev/null || fail "curl is not installed"
command -v python3 >/dev/null || fail "python3 is not installed"

INTERVAL=200
CTL="$T/ctl"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
declare -A WPID

start_kilnd() {
	"$KILND" --root "$CTL" --listen "127.0.0.1:$PORT" \
		--heartbeat-interval-ms "$INTERVAL" 2>>"$T/kilnd.log" &
	KILND_PID=$!
	CLEANUP_HOOKS+=("kill -9 $KILND_PID 2>/dev/null; wait $KILND_PID 2>/dev/null")
	for _ in $(seq 100); do
		curl -sf "$URL/v1/health" >/dev/null && return 0
		sleep 0.1
	done
	fail "kilnd did not answer: $(tail -5 "$T/kilnd.log")"
}

start_worker() { # NAME [ARGS...]
	local name=$1
	shift
	"$KILN_WORKER" --join "$URL" --token-file "$CTL/worker.token" \
		--root "$T/w-$name" --name "$name" "$@" 2>>"$T/worker-$name.log" &
	WPID[$name]=$!
	CLEANUP_HOOKS+=("kill -9 ${WPID[$name]} 2>/dev/null; wait ${WPID[$name]} 2>/dev/null")
}

# SIGTERM a daemon and require a clean exit (ASan reports leaks at exit).
stop_clean() { # PID WHAT
	local rc=0
	kill -TERM "$1"
	wait "$1" || rc=$?
	assert_eq "$rc" 0 "$2 exit status after SIGTERM"
}

workers_json() {
	"$KILN" workers --addr "$URL" --token-file "$CTL/client.token" --json
}

# Wait until the jq condition holds for `kiln workers --json` (10 s).
wait_workers() { # JQ-CONDITION WHAT
	for _ in $(seq 100); do
		workers_json 2>/dev/null | jq -e "$1" >/dev/null && return 0
		sleep 0.1
	done
	fail "$2: $(workers_json 2>&1)"
}

state_of() { # NAME
	workers_json | jq -r --arg n "$1" '.workers[] | select(.name == $n) | .state'
}

# curl: the status code of a request (extra args pass through).
status() {
	curl -s -o "$T/body" -w '%{http_code}' "$@"
}

start_kilnd

echo "== tokens"
for f in worker.token client.token; do
	[ -f "$CTL/$f" ] || fail "kilnd did not create $f"
	assert_eq "$(stat -c %a "$CTL/$f")" 600 "$f mode"
	grep -qE '^[0-9a-f]{64}$' "$CTL/$f" || fail "$f is not 32 random bytes in hex: $(cat "$CTL/$f")"
done
WTOK=$(cat "$CTL/worker.token")
CTOK=$(cat "$CTL/client.token")
[ "$WTOK" != "$CTOK" ] || fail "worker and client tokens are the same"

echo "== registration"
start_worker native --label pool=default
start_worker arm --platform linux/arm64 --slots 3
wait_workers '[.workers[] | select(.state == "ready")] | length == 2' "two ready workers"
J=$(workers_json)
NATIVE=$(uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')
assert_eq "$(jq -c '.workers[] | select(.name == "native") | .platforms' <<<"$J")" \
	"[{\"platform\":\"linux/$NATIVE\",\"emulated\":false}]" "native worker's platforms"
if [ "$NATIVE" = amd64 ]; then
	assert_eq "$(jq -c '.workers[] | select(.name == "arm") | .platforms' <<<"$J")" \
		'[{"platform":"linux/arm64","emulated":true}]' "arm worker's platforms"
fi
assert_eq "$(jq -r '.workers[] | select(.name == "arm") | .slots' <<<"$J")" 3 "arm worker's slots"
assert_eq "$(jq -r '.workers[] | select(.name == "native") | .labels.pool' <<<"$J")" default "label"
jq -e '.workers[] | select(.name == "arm") | .address | test("^http://127\\.0\\.0\\.1:[0-9]+$")' <<<"$J" >/dev/null ||
	fail "arm worker's address: $J"
jq -e 'all(.workers[]; .last_seen | test("^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z$"))' <<<"$J" >/dev/null ||
	fail "last_seen is not RFC 3339: $J"

# The worker's peer server answers with the worker token, and only with it.
ADDR=$(jq -r '.workers[] | select(.name == "native") | .address' <<<"$J")
D=sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
assert_eq "$(status -H "Authorization: Bearer $WTOK" "$ADDR/v1/blobs/$D")" 404 "peer blob (absent)"
assert_eq "$(status "$ADDR/v1/blobs/$D")" 401 "peer blob without a token"

T_OUT=$("$KILN" workers --addr "$URL" --token-file "$CTL/client.token")
assert_contains "$T_OUT" "linux/arm64(emulated)" "kiln workers table"
head -1 <<<"$T_OUT" | grep -qE '^ID +NAME +ADDRESS +PLATFORMS +SLOTS +RUNNING +HELD +LAST SEEN +STATE$' ||
	fail "kiln workers header: $T_OUT"
assert_eq "$(KILN_ADDR=$URL KILN_TOKEN=$CTOK "$KILN" workers --json | jq '.workers | length')" 2 "KILN_ADDR/KILN_TOKEN"

echo "== a foreign platform that cannot run is refused"
if "$KILN_WORKER" --join "$URL" --token-file "$CTL/worker.token" --root "$T/w-bad" \
	--name bad --platform windows/amd64 2>"$T/bad.log"; then
	fail "kiln-worker accepted windows/amd64"
fi
assert_contains "$(cat "$T/bad.log")" "windows/amd64" "impossible platform error"

echo "== refused requests"
if "$KILN" workers --addr "$URL" >"$T/out" 2>&1; then fail "kiln workers without a token succeeded"; fi
assert_contains "$(cat "$T/out")" "401" "kiln workers without a token"
assert_eq "$(status "$URL/v1/workers")" 401 "list without a token"
assert_eq "$(status -H "Authorization: Bearer nope" "$URL/v1/workers")" 401 "list with a wrong token"
assert_eq "$(status -H "Authorization: Bearer $WTOK" "$URL/v1/workers")" 401 "list with the worker token"
REG='{"name":"intruder","addr":"http://127.0.0.1:1","platforms":[{"platform":"linux/amd64"}],"slots":1}'
assert_eq "$(status -X POST --data-binary "$REG" "$URL/v1/workers/register")" 401 "register without a token"
assert_eq "$(status -X POST -H "Authorization: Bearer $CTOK" --data-binary "$REG" "$URL/v1/workers/register")" \
	401 "register with the client token"
assert_eq "$(status -X POST --data-binary '{}' "$URL/v1/workers/0123/heartbeat")" 401 "heartbeat without a token"
head -c $((10 << 20)) /dev/zero | tr "\0" " " >"$T/big"
assert_eq "$(status -X POST -H "Authorization: Bearer $WTOK" --data-binary @"$T/big" "$URL/v1/workers/register")" \
	413 "10 MiB body (over the 9 MiB limit)"
# Without a token nothing of the body is read: 401 before the size matters.
assert_eq "$(status -X POST --data-binary @"$T/big" "$URL/v1/workers/register")" 401 "10 MiB body without a token"
assert_eq "$(status -X POST -H "Authorization: Bearer $WTOK" --data-binary '{"name": ' "$URL/v1/workers/register")" \
	400 "malformed JSON"
assert_eq "$(status -X POST -H "Authorization: Bearer $WTOK" --data-binary '{"addr":"http://x:1"}' "$URL/v1/workers/register")" \
	400 "registration without a name"
assert_contains "$(cat "$T/body")" 'name' "400 names the field"
assert_eq "$(status -X POST -H "Authorization: Bearer $WTOK" --data-binary '{"running":0}' "$URL/v1/workers/0123abcd/heartbeat")" \
	404 "heartbeat of an unknown id"
assert_eq "$(workers_json | jq '[.workers[] | select(.name == "intruder")] | length')" 0 "refused registrations changed nothing"
assert_eq "$(status -H "Authorization: Bearer $CTOK" "$URL/v1/workers")" 200 "kilnd still answers"

echo "== a killed worker is lost, and ready again after a restart"
kill -9 "${WPID[native]}"
wait "${WPID[native]}" 2>/dev/null || true
wait_workers '.workers[] | select(.name == "native") | .state == "lost"' "native worker lost after kill -9"
assert_eq "$(state_of arm)" ready "the other worker"
OLD_ID=$(workers_json | jq -r '.workers[] | select(.name == "native") | .id')
start_worker native
wait_workers '.workers[] | select(.name == "native") | .state == "ready"' "restarted worker ready"
assert_eq "$(workers_json | jq '[.workers[] | select(.name == "native")] | length')" 1 "one entry per name"
[ "$(workers_json | jq -r '.workers[] | select(.name == "native") | .id')" != "$OLD_ID" ] ||
	fail "a re-registered worker kept its old id"

echo "== kilnd restarts: same tokens, workers come back by themselves"
stop_clean "$KILND_PID" kilnd
start_kilnd
assert_eq "$(cat "$CTL/worker.token")" "$WTOK" "worker token after restart"
assert_eq "$(cat "$CTL/client.token")" "$CTOK" "client token after restart"
wait_workers '[.workers[] | select(.state == "ready")] | length == 2' "workers re-registered after kilnd restart"

echo "== clean shutdown"
stop_clean "${WPID[native]}" "kiln-worker native"
stop_clean "${WPID[arm]}" "kiln-worker arm"
stop_clean "$KILND_PID" kilnd
grep -q "registered" "$T/kilnd.log" || fail "kilnd logged no registration"
echo "PASS"
