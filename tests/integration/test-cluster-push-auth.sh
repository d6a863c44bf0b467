#!/bin/bash
# Issue 13: registry credentials for a cluster push, on loopback: kilnd, one
# amd64 worker, registry A (htpasswd) to push to, registry B (anonymous,
# behind a recording proxy) for the base image. kilnd's API is reached
# through a recording proxy too, so the test sees what the client sends.
#
# - The client sends its credentials for the registries the build names (A,
#   which it pushes to; B, which a FROM names) and for no other host it has
#   credentials for; they win over the worker's own (--docker-config, wrong
#   for A here): the push succeeds, and a FROM on A (which wants
#   credentials for pulls too) is pulled by the worker with the client's.
# - B, anonymous, never sees an Authorization header (A's credentials go
#   nowhere else); no log or file of kilnd or the worker holds the
#   password afterwards.
# - Without the client's credentials the worker's own are used (wrong: a
#   401 naming A; right, after a restart with another --docker-config: the
#   push succeeds).
# - kilnd refuses a malformed image request with a 400 naming the member,
#   never echoing a credential.
. "$(dirname "$0")/lib.sh"
: "${KILND:?KILND must name the kilnd binary (meson test sets it)}"
: "${KILN_WORKER:?KILN_WORKER must name the kiln-worker binary (meson test sets it)}"
. "$(dirname "$0")/registry-lib.sh"
command -v skopeo >/dev/null || fail "skopeo is not installed (scripts/install-deps.sh)"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A recording proxy in front of UPSTREAM: sets PROXY (127.0.0.1:PORT).
start_proxy() { # NAME UPSTREAM
	local pid
	python3 "$(dirname "$0")/recording-proxy.py" "$T/$1.port" "$2" "$T/$1.log" 2>"$T/$1.err" &
	pid=$!
	CLEANUP_HOOKS+=("kill $pid 2>/dev/null; wait $pid 2>/dev/null")
	for _ in $(seq 100); do [ -s "$T/$1.port" ] && break; sleep 0.05; done
	[ -s "$T/$1.port" ] || fail "proxy $1 did not start: $(cat "$T/$1.err")"
	PROXY="127.0.0.1:$(cat "$T/$1.port")"
}

docker_config() { # FILE [HOST USER PASSWORD]...
	local f=$1 sep="" auths=""
	shift
	while [ $# -ge 3 ]; do
		auths+="$sep\"$1\":{\"auth\":\"$(printf '%s:%s' "$2" "$3" | base64 -w0)\"}"
		sep=,
		shift 3
	done
	mkdir -p "$(dirname "$f")"
	printf '{"auths":{%s}}\n' "$auths" >"$f"
}

echo "== registries: A (htpasswd) to push to, B (anonymous, recorded) to pull from"
registry_start "$T/reg-a" htpasswd || fail "registry A did not start"
REG_A=$REGISTRY
REG_A_PID=$REGISTRY_PID
CLEANUP_HOOKS+=("kill $REG_A_PID 2>/dev/null")
registry_start "$T/reg-b" none || fail "registry B did not start"
REG_B_PID=$REGISTRY_PID
CLEANUP_HOOKS+=("kill $REG_B_PID 2>/dev/null")
skopeo copy -q --all --dest-tls-verify=false "oci:$LAYOUT:latest" "docker://$REGISTRY/busybox:latest" ||
	fail "cannot put busybox in registry B"
start_proxy reg-b "http://$REGISTRY"
REG_B=$PROXY

echo "== kilnd (recorded; its own credentials for A are right) and a worker whose own are wrong"
docker_config "$T/worker-wrong/config.json" "$REG_A" "$REGISTRY_USER" not-the-password
docker_config "$T/worker-right/config.json" "$REG_A" "$REGISTRY_USER" "$REGISTRY_PASSWORD"
KPORT=$(free_port)
"$KILND" --root "$T/ctl" --listen "127.0.0.1:$KPORT" --heartbeat-interval-ms 200 \
	--docker-config "$T/worker-right/config.json" 2>"$T/kilnd.out" &
KILND_PID=$!
CLEANUP_HOOKS+=("kill -9 $KILND_PID 2>/dev/null; wait $KILND_PID 2>/dev/null")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$KPORT/v1/health" >/dev/null && break; sleep 0.1; done
start_proxy api "http://127.0.0.1:$KPORT"
ADDR="http://$PROXY"

start_worker() { # CONFIG
	"$KILN_WORKER" --join "http://127.0.0.1:$KPORT" --token-file "$T/ctl/worker.token" \
		--root "$T/w" --name amd --platform linux/amd64 --docker-config "$1" 2>>"$T/worker.log" &
	WORKER_PID=$!
	CLEANUP_HOOKS+=("kill -9 $WORKER_PID 2>/dev/null; wait $WORKER_PID 2>/dev/null")
	for _ in $(seq 100); do
		"$KILN" workers --addr "http://127.0.0.1:$KPORT" --token-file "$T/ctl/client.token" --json 2>/dev/null |
			jq -e '[.workers[] | select(.state == "ready")] | length == 1' >/dev/null && return 0
		sleep 0.1
	done
	fail "the worker did not register: $(tail -5 "$T/worker.log")"
}
stop_worker() {
	kill -TERM "$WORKER_PID"
	wait "$WORKER_PID" || fail "the worker did not stop cleanly"
	for _ in $(seq 100); do
		"$KILN" workers --addr "http://127.0.0.1:$KPORT" --token-file "$T/ctl/client.token" --json 2>/dev/null |
			jq -e '[.workers[] | select(.state == "ready")] | length == 0' >/dev/null && return 0
		sleep 0.1
	done
}
start_worker "$T/worker-wrong/config.json"

CTX="$T/ctx"
mkdir -p "$CTX"
printf 'FROM %s/busybox:latest\nRUN echo %s > /nonce\n' "$REG_B" "$$-$RANDOM" >"$CTX/Dockerfile"
cbuild() { # LOG ARGS...
	local log=$1
	shift
	"$KILN" build --addr "$ADDR" --token-file "$T/ctl/client.token" --progress plain "$@" "$CTX" >"$log" 2>&1
}

echo "== the client's credentials for the registries the build names, and only those; they win"
UNNAMED=unnamed.invalid:5000
export DOCKER_CONFIG="$T/client-docker"
docker_config "$DOCKER_CONFIG/config.json" "$REG_A" "$REGISTRY_USER" "$REGISTRY_PASSWORD" \
	"$UNNAMED" carol unnamed-secret-c "$REG_B" bob b-secret-b
cbuild "$T/push1.log" -t "$REG_A/app:1" --push || fail "push with the client's credentials: $(tail -5 "$T/push1.log")"
assert_contains "$(cat "$T/push1.log")" "pushed $REG_A/app:1@sha256:" "push summary"
skopeo inspect --raw --tls-verify=false --creds "$REGISTRY_USER:$REGISTRY_PASSWORD" "docker://$REG_A/app:1" |
	jq -e '.layers | length == 2' >/dev/null || fail "the pushed image is not in A"
SUBMIT=$(grep -A2 '^POST /v1/builds$' "$T/api.log" | tail -1)
assert_contains "$SUBMIT" "$REGISTRY_PASSWORD" "the submission carries A's password (a push names A)"
assert_contains "$SUBMIT" b-secret-b "the submission carries B's password (a FROM names B)"
! grep -q unnamed-secret-c "$T/api.log" || fail "credentials of a registry the build does not name were sent to kilnd"
grep -q '^GET /v2/busybox' "$T/reg-b.log" || fail "registry B was never asked (test broken?)"
grep '^authorization:' "$T/reg-b.log" | grep -qv 'authorization: none' &&
	fail "registry B saw an Authorization header: $(grep '^authorization:' "$T/reg-b.log" | sort -u)"
for f in "$T/kilnd.out" "$T/worker.log"; do
	! grep -q "$REGISTRY_PASSWORD" "$f" || fail "$(basename "$f") logs the password"
done
! grep -rqa "$REGISTRY_PASSWORD" "$T/ctl" "$T/w" || fail "the password is on kilnd's or the worker's disk"

echo "== FROM a registry that wants credentials: the worker pulls with the client's"
skopeo copy -q --all --dest-tls-verify=false --dest-creds "$REGISTRY_USER:$REGISTRY_PASSWORD" \
	"oci:$LAYOUT:latest" "docker://$REG_A/private/busybox:latest" || fail "cannot put busybox in A"
mkdir -p "$T/ctx-private"
printf 'FROM %s/private/busybox:latest\nRUN echo pulled-%s > /pulled\n' "$REG_A" "$$" >"$T/ctx-private/Dockerfile"
"$KILN" build --addr "$ADDR" --token-file "$T/ctl/client.token" --progress plain \
	-o "type=local,dest=$T/private-out" "$T/ctx-private" >"$T/private.log" 2>&1 ||
	fail "FROM on A with the client's credentials: $(tail -5 "$T/private.log")"
assert_eq "$(cat "$T/private-out/pulled")" "pulled-$$" "the private base's build output"
grep -q "amd" "$T/private.log" || fail "the steps did not run on the worker: $(cat "$T/private.log")"

echo "== without the client's credentials, the worker's own: wrong, then right"
docker_config "$DOCKER_CONFIG/config.json"
! cbuild "$T/push2.log" -t "$REG_A/app:2" --push || fail "a push with the worker's wrong credentials succeeded"
assert_contains "$(cat "$T/push2.log")" "401" "push with the worker's wrong credentials"
assert_contains "$(cat "$T/push2.log")" "$REG_A" "the error names the registry"
stop_worker
start_worker "$T/worker-right/config.json"
cbuild "$T/push3.log" -t "$REG_A/app:3" --push || fail "push with the worker's own credentials: $(tail -5 "$T/push3.log")"
skopeo inspect --raw --tls-verify=false --creds "$REGISTRY_USER:$REGISTRY_PASSWORD" "docker://$REG_A/app:3" >/dev/null ||
	fail "app:3 is not in A"

echo "== kilnd refuses a malformed image request, naming the member"
CTOK=$(cat "$T/ctl/client.token")
post() { curl -s -o "$T/body" -w '%{http_code}' -H "Authorization: Bearer $CTOK" \
	-H 'Content-Type: application/json' -d "$1" "http://127.0.0.1:$KPORT/v1/builds"; }
GRAPH='{"version":1,"ops":[{"id":"a","op":"source.image","ref":"busybox:latest@sha256:29c9d95d79044855743d747be944373f7852c50c00eb28cf57819c9a9bcaead1"}],"output":"a"}'
G=$(jq -Rs . <<<"$GRAPH")
assert_eq "$(post "{\"graph\":$G,\"platform\":\"linux/amd64\",\"image\":{\"platforms\":[{\"platform\":\"linux/amd64\",\"layer_ops\":[7]}]}}")" 400 "a layer op out of range"
assert_contains "$(cat "$T/body")" "layer_ops" "the error names layer_ops"
assert_eq "$(post "{\"graph\":$G,\"platform\":\"linux/amd64\",\"image\":{\"platforms\":[{\"platform\":\"linux/amd64\",\"layer_ops\":[0]}],\"push\":[{\"ref\":\"$REG_A/x:1\"}]},\"credentials\":{\"$REG_A\":{\"username\":\"u\"}}}")" 400 "a credential without a password"
assert_contains "$(cat "$T/body")" "credentials" "the error names credentials"
assert_eq "$(post "{\"graph\":$G,\"platform\":\"linux/amd64\",\"image\":{\"platforms\":[{\"platform\":\"linux/amd64\",\"layer_ops\":[0]}],\"push\":[{\"ref\":\"Not A Ref\"}]}}")" 400 "a bad push reference"
assert_contains "$(cat "$T/body")" "push[0]" "the error names the push"

echo "== a build's secret is wiped from kilnd's memory once its steps are over"
SECRET="kiln-secret-$$-$RANDOM-wipe-me"
printf '%s' "$SECRET" >"$T/secret.txt"
mkdir -p "$T/ctx-secret"
printf 'FROM %s/busybox:latest\nRUN --mount=type=secret,id=s wc -c < /run/secrets/s > /n && echo %s > /nonce\n' \
	"$REG_B" "$$-$RANDOM" >"$T/ctx-secret/Dockerfile"
"$KILN" build --addr "$ADDR" --token-file "$T/ctl/client.token" --progress plain \
	--secret "id=s,src=$T/secret.txt" -o "type=local,dest=$T/secret-out" "$T/ctx-secret" >"$T/secret.log" 2>&1 ||
	fail "a build with a secret: $(tail -5 "$T/secret.log")"
assert_eq "$(tr -d ' ' <"$T/secret-out/n")" "${#SECRET}" "the step read the secret"
# The scanner finds what kilnd does hold (its client token), so a miss means something.
python3 "$(dirname "$0")/mem-grep.py" "$KILND_PID" "$CTOK" || fail "mem-grep does not find kilnd's client token (test broken?)"
! python3 "$(dirname "$0")/mem-grep.py" "$KILND_PID" "$SECRET" ||
	fail "the secret is still in kilnd's memory after its build"

echo "== kilnd checks a context's pin at submission: a tree it holds, or 422 naming the context"
mkdir -p "$T/ctx-pin"
printf '{"version":1,"ops":[{"id":"ctx","op":"source.local","path":"%s"}],"output":"ctx"}' "$T/ctx-pin" >"$T/pin-graph.json"
OPD=$("$KILN" debug ops --base-dir / "$T/pin-graph.json" | awk '$2 == "ctx" { print $4 }')
[ -n "$OPD" ] || fail "kiln debug ops printed no digest for ctx"
printf 'these bytes are not a tree node' >"$T/bogus"
BOGUS=sha256:$(sha256sum "$T/bogus" | cut -d' ' -f1)
assert_eq "$(curl -s -o /dev/null -w '%{http_code}' -X PUT -H "Authorization: Bearer $CTOK" \
	--data-binary @"$T/bogus" "http://127.0.0.1:$KPORT/v1/blobs/$BOGUS")" 201 "uploading a blob that is not a tree"
PG=$(jq -Rs . <"$T/pin-graph.json")
pin_post() { post "{\"graph\":$PG,\"base_dir\":\"/\",\"platform\":\"linux/amd64\",\"pins\":[{\"op\":\"$1\",\"tree\":\"$2\"}]}"; }
assert_eq "$(pin_post "$OPD" "$BOGUS")" 422 "a context pinned to a blob that is not a tree"
assert_contains "$(cat "$T/body")" "context $T/ctx-pin" "the 422 names the context"
assert_contains "$(cat "$T/body")" "$BOGUS" "the 422 names the tree"
MISSING=sha256:$(printf 'never uploaded %s' "$$" | sha256sum | cut -d' ' -f1)
assert_eq "$(pin_post "$OPD" "$MISSING")" 422 "a context pinned to a tree kilnd does not have"
assert_contains "$(cat "$T/body")" "$MISSING" "the 422 names the missing tree"
assert_eq "$(pin_post "$BOGUS" "$BOGUS")" 422 "a pin for an op the graph does not have"
assert_contains "$(cat "$T/body")" "is not in the graph" "the 422 says the op is not in the graph"

echo "== the worker refuses a malformed image job, naming the member"
WTOK=$(cat "$T/ctl/worker.token")
WADDR=$("$KILN" workers --addr "http://127.0.0.1:$KPORT" --token-file "$T/ctl/client.token" --json |
	jq -r '.workers[0].address')
wpost() { curl -s -o "$T/body" -w '%{http_code}' -H "Authorization: Bearer $WTOK" \
	-H 'Content-Type: application/json' -d "$1" "$WADDR/v1/images"; }
assert_eq "$(wpost '{"sources":[],"platform":"linux/amd64","trees":["sha256:nothex"]}')" 400 "a tree that is not a digest"
assert_contains "$(cat "$T/body")" "trees" "the error names trees"
assert_eq "$(wpost '{"sources":[{"url":"file:///etc/passwd"}],"platform":"linux/amd64","trees":[]}')" 400 "a source that is not http"
assert_contains "$(cat "$T/body")" "sources" "the error names sources"
assert_eq "$(wpost "{\"sources\":[],\"platform\":\"linux/amd64\",\"trees\":[],\"push\":[{\"ref\":\"$REG_A/x:1\"}],\"credentials\":{\"$REG_A\":{\"username\":\"u\",\"password\":7}}}")" 400 "a credential that is not a string"
! grep -q '"password"' "$T/body" || fail "the worker echoed a credential: $(cat "$T/body")"
assert_eq "$(wpost '{"sources":[],"platform":"linux/amd64","trees":[],"compression":"lz4"}')" 400 "an unknown compression"
assert_eq "$(curl -s -o /dev/null -w '%{http_code}' -d '{}' "$WADDR/v1/images")" 401 "an image job without the worker token"

stop_worker
kill -TERM "$KILND_PID"
wait "$KILND_PID" || fail "kilnd did not stop cleanly"
echo "ok: cluster push credentials: sent only for the push registry, client's win, never leaked"
