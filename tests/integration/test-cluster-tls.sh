#!/bin/bash
# kilnd and kiln-worker over TLS on loopback, with client certificates
# required everywhere (mutual TLS): registration, `kiln workers`, a build
# whose context, job, pulls and output all cross TLS; refused connections
# (no client certificate, one from another CA, plain http, an unknown
# server CA); bad --tls-* flags. The certificates are made here by openssl.
. "$(dirname "$0")/lib.sh"
: "${KILND:?KILND must name the kilnd binary (meson test sets it)}"
: "${KILN_WORKER:?KILN_WORKER must name the kiln-worker binary (meson test sets it)}"
command -v curl >/dev/null || fail "curl is not installed"
command -v openssl >/dev/null || fail "openssl is not installed"
command -v python3 >/dev/null || fail "python3 is not installed"

CTL="$T/ctl"
PKI="$T/pki"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="https://127.0.0.1:$PORT"

# ---- the PKI: a cluster CA, certificates for 127.0.0.1, a client, and a
# second CA whose client certificate must be refused ----
mkdir -p "$PKI"
ca() { # NAME
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$PKI/$1.key" -out "$PKI/$1.pem" -days 2 -subj "/CN=$1" \
		2>>"$T/openssl.log" || fail "openssl: $(tail -3 "$T/openssl.log")"
}
cert() { # NAME CA EXTENSIONS
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
		-keyout "$PKI/$1.key" -out "$PKI/$1.csr" -subj "/CN=$1" 2>>"$T/openssl.log" &&
		printf '%s\n' "$3" >"$PKI/$1.ext" &&
		openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/$2.pem" -CAkey "$PKI/$2.key" \
			-CAcreateserial -days 2 -extfile "$PKI/$1.ext" -out "$PKI/$1.pem" \
			2>>"$T/openssl.log" || fail "openssl: $(tail -3 "$T/openssl.log")"
}
NODE_EXT='subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth,clientAuth'
ca cluster-ca
ca rogue-ca
cert kilnd cluster-ca "$NODE_EXT"
cert worker cluster-ca "$NODE_EXT"
cert client cluster-ca 'extendedKeyUsage=clientAuth'
cert rogue cluster-ca 'subjectAltName=IP:127.0.0.1' # for the key mismatch
cert intruder rogue-ca 'extendedKeyUsage=clientAuth'
CA="$PKI/cluster-ca.pem"

start_kilnd() {
	"$KILND" --root "$CTL" --listen "127.0.0.1:$PORT" --heartbeat-interval-ms 200 \
		--tls-cert "$PKI/kilnd.pem" --tls-key "$PKI/kilnd.key" \
		--tls-client-ca "$CA" --tls-ca "$CA" 2>>"$T/kilnd.log" &
	KILND_PID=$!
	CLEANUP_HOOKS+=("kill -9 $KILND_PID 2>/dev/null; wait $KILND_PID 2>/dev/null")
	for _ in $(seq 100); do
		curl -sf --cacert "$CA" --cert "$PKI/client.pem" --key "$PKI/client.key" \
			"$URL/v1/health" >/dev/null && return 0
		kill -0 "$KILND_PID" 2>/dev/null || fail "kilnd exited: $(tail -5 "$T/kilnd.log")"
		sleep 0.1
	done
	fail "kilnd did not answer over TLS: $(tail -5 "$T/kilnd.log")"
}

# SIGTERM a daemon and require a clean exit (ASan reports leaks at exit).
stop_clean() { # PID WHAT
	local rc=0
	kill -TERM "$1"
	wait "$1" || rc=$?
	assert_eq "$rc" 0 "$2 exit status after SIGTERM"
}

# curl with the cluster CA: the status code (extra args pass through).
status() {
	curl -s --cacert "$CA" -o "$T/body" -w '%{http_code}' "$@"
}

CLIENT_TLS=(--tls-ca "$CA" --tls-cert "$PKI/client.pem" --tls-key "$PKI/client.key")
workers_json() {
	"$KILN" workers --addr "$URL" --token-file "$CTL/client.token" "${CLIENT_TLS[@]}" --json
}

echo "== bad --tls-* flags are refused, naming the flag or file"
expect_refused() { # WHAT NEEDLE COMMAND...
	local what=$1 needle=$2
	shift 2
	if "$@" >"$T/out" 2>&1; then fail "$what: accepted"; fi
	assert_contains "$(cat "$T/out")" "$needle" "$what"
}
expect_refused "kilnd --tls-cert without --tls-key" "needs --tls-key" \
	"$KILND" --root "$T/bad1" --listen 127.0.0.1:0 --tls-cert "$PKI/kilnd.pem"
expect_refused "kilnd --tls-client-ca without a certificate" "--tls-client-ca" \
	"$KILND" --root "$T/bad2" --listen 127.0.0.1:0 --tls-client-ca "$CA"
expect_refused "kilnd with a missing certificate file" "$T/nope.pem" \
	"$KILND" --root "$T/bad3" --listen 127.0.0.1:0 --tls-cert "$T/nope.pem" --tls-key "$PKI/kilnd.key"
expect_refused "kilnd with a key that is not the certificate's" "$PKI/rogue.key" \
	"$KILND" --root "$T/bad4" --listen 127.0.0.1:0 --tls-cert "$PKI/kilnd.pem" --tls-key "$PKI/rogue.key"
echo "not a certificate" >"$T/junk.pem"
expect_refused "kilnd with a client CA file holding no certificate" "$T/junk.pem" \
	"$KILND" --root "$T/bad5" --listen 127.0.0.1:0 --tls-cert "$PKI/kilnd.pem" \
	--tls-key "$PKI/kilnd.key" --tls-client-ca "$T/junk.pem"
expect_refused "kiln-worker --tls-key without --tls-cert" "needs --tls-cert" \
	"$KILN_WORKER" --join "$URL" --token-file /dev/null --root "$T/bad6" --tls-key "$PKI/worker.key"
expect_refused "kiln workers --tls-cert without --tls-key" "needs --tls-key" \
	"$KILN" workers --addr "$URL" --token-file /dev/null --tls-cert "$PKI/client.pem"
expect_refused "kiln workers with a --tls-ca that is not there" "--tls-ca $T/missing.pem" \
	"$KILN" workers --addr "$URL" --token-file /dev/null --tls-ca "$T/missing.pem"

start_kilnd
CTOK=$(cat "$CTL/client.token")
WTOK=$(cat "$CTL/worker.token")

echo "== kilnd refuses what is not mutual TLS, and keeps serving"
AUTH=(-H "Authorization: Bearer $CTOK")
assert_eq "$(status --cert "$PKI/client.pem" --key "$PKI/client.key" "${AUTH[@]}" "$URL/v1/workers")" 200 \
	"GET /v1/workers with a client certificate"
assert_eq "$(status "${AUTH[@]}" "$URL/v1/workers")" 401 "without a client certificate"
assert_contains "$(cat "$T/body")" "client certificate is required" "401 body without a certificate"
assert_eq "$(status --cert "$PKI/intruder.pem" --key "$PKI/intruder.key" "${AUTH[@]}" "$URL/v1/workers")" 401 \
	"a client certificate from another CA"
assert_contains "$(cat "$T/body")" "not accepted" "401 body for the other CA"
assert_eq "$(status --cert "$PKI/client.pem" --key "$PKI/client.key" "$URL/v1/workers")" 401 \
	"a client certificate but no token"
rc=0
curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$PORT/v1/health" || rc=$?
[ "$rc" != 0 ] || fail "plain http to the TLS port was answered"
rc=0
curl -s -o /dev/null --cert "$PKI/client.pem" --key "$PKI/client.key" "$URL/v1/health" || rc=$?
assert_eq "$rc" 60 "curl without the cluster CA (certificate not verified)"
assert_eq "$(status --cert "$PKI/client.pem" --key "$PKI/client.key" "$URL/v1/health")" 200 \
	"kilnd still serving"

echo "== a worker joins over TLS"
"$KILN_WORKER" --join "$URL" --token-file "$CTL/worker.token" --root "$T/w1" --name w1 \
	--platform "linux/$(uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')" \
	--tls-cert "$PKI/worker.pem" --tls-key "$PKI/worker.key" \
	--tls-ca "$CA" --tls-client-ca "$CA" 2>>"$T/worker.log" &
WPID=$!
CLEANUP_HOOKS+=("kill -9 $WPID 2>/dev/null; wait $WPID 2>/dev/null")
for _ in $(seq 100); do
	workers_json 2>/dev/null | jq -e '[.workers[] | select(.state == "ready")] | length == 1' >/dev/null && break
	kill -0 "$WPID" 2>/dev/null || fail "kiln-worker exited: $(tail -5 "$T/worker.log")"
	sleep 0.1
done
J=$(workers_json)
jq -e '.workers[0].address | test("^https://127\\.0\\.0\\.1:[0-9]+$")' <<<"$J" >/dev/null ||
	fail "the worker does not announce an https address: $J"
WADDR=$(jq -r '.workers[0].address' <<<"$J")
D=sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
assert_eq "$(status --cert "$PKI/kilnd.pem" --key "$PKI/kilnd.key" -H "Authorization: Bearer $WTOK" \
	"$WADDR/v1/blobs/$D")" 404 "the worker's blob server with a client certificate"
assert_eq "$(status -H "Authorization: Bearer $WTOK" "$WADDR/v1/blobs/$D")" 401 \
	"the worker's blob server without one"

echo "== kiln workers: flags, environment, and what goes wrong"
assert_eq "$(KILN_TLS_CA=$CA KILN_TLS_CERT=$PKI/client.pem KILN_TLS_KEY=$PKI/client.key \
	"$KILN" workers --addr "$URL" --token-file "$CTL/client.token" --json | jq '.workers | length')" 1 \
	"KILN_TLS_CA/CERT/KEY"
expect_refused "kiln workers without the cluster CA" "certificate" \
	"$KILN" workers --addr "$URL" --token-file "$CTL/client.token" \
	--tls-cert "$PKI/client.pem" --tls-key "$PKI/client.key"
expect_refused "kiln workers without a client certificate" "client certificate is required" \
	"$KILN" workers --addr "$URL" --token-file "$CTL/client.token" --tls-ca "$CA"

echo "== a build over TLS: context upload, job, pulls, output"
mkdir -p "$T/ctx"
head -c 300000 /dev/urandom >"$T/ctx/data.bin"
printf 'hello over tls\n' >"$T/ctx/hello.txt"
printf 'FROM scratch\nCOPY hello.txt data.bin /files/\n' >"$T/ctx/Dockerfile"
"$KILN" build --addr "$URL" --token-file "$CTL/client.token" "${CLIENT_TLS[@]}" \
	--progress json -o "type=local,dest=$T/result" "$T/ctx" 2>"$T/progress.json" ||
	fail "build over TLS: $(tail -5 "$T/progress.json")"
cmp "$T/ctx/data.bin" "$T/result/files/data.bin" || fail "data.bin differs after the TLS build"
assert_eq "$(cat "$T/result/files/hello.txt")" "hello over tls" "hello.txt after the TLS build"
has_event '.vertex != null and .status == "done" and .worker == "w1"' ||
	fail "no step ran on w1: $(cat "$T/progress.json")"

echo "== clean stop"
stop_clean "$WPID" kiln-worker
stop_clean "$KILND_PID" kilnd
echo "PASS"
