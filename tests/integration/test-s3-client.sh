#!/bin/bash
# The S3 client (src/s3) against a real radosgw (s3-lib.sh), through
# tests/integration/s3-tool: small objects, Range reads, odd keys,
# ListObjectsV2 paging, a >= 100 MiB multipart upload read back and
# compared, a wrong secret (403, the secret in no message), a stopped
# radosgw (the deadline holds), a deadline and a kill in the middle of a
# multipart upload (the call fails; no object, no upload left behind).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/s3-lib.sh"

: "${S3_TOOL:?S3_TOOL must name tests/integration/s3-tool (meson test sets it)}"

s3_start "$T/s3"
# Keys reach the tool as kiln reads them: environment, never argv.
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
unset AWS_SESSION_TOKEN AWS_PROFILE
export S3_TIMEOUT_MS=60000 S3_CONNECT_TIMEOUT_MS=2000

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# tool EXPECTED_EXIT ARGS...: run s3-tool, stderr in $T/err, stdout in $T/out.
tool() {
	local want=$1 rc=0
	shift
	"$S3_TOOL" "$@" >"$T/out" 2>"$T/err" || rc=$?
	[ "$rc" = "$want" ] || fail "s3-tool $* exited $rc, not $want: $(cat "$T/err")"
	! grep -qF "$S3_SECRET_KEY" "$T/out" "$T/err" || fail "s3-tool $* printed the secret"
}

echo "== touch: LastModified now, bytes kept; a missing key is ENOENT"
tool 0 put-str touch/a "kept bytes"
lm() { s3_curl -sS -m 10 -I "$S3_ENDPOINT/$S3_BUCKET/touch/a" | tr -d '\r' | sed -n 's/^[Ll]ast-[Mm]odified: //p'; }
before=$(lm)
sleep 1.1
tool 0 touch touch/a
after=$(lm)
[ -n "$before" ] && [ "$before" != "$after" ] || fail "touch left Last-Modified at '$before' ('$after')"
tool 0 cat touch/a
[ "$(cat "$T/out")" = "kept bytes" ] || fail "touch changed the bytes: $(cat "$T/out")"
tool 2 touch touch/missing

echo "== small objects"
tool 0 put-str small/a "hello s3"
tool 0 cat small/a
[ "$(cat "$T/out")" = "hello s3" ] || fail "GET gave '$(cat "$T/out")'"
tool 0 head small/a
read -r size etag <"$T/out"
[ "$size" = 8 ] || fail "HEAD size $size"
[ "$etag" = "$(printf 'hello s3' | md5sum | cut -d' ' -f1)" ] || fail "HEAD etag $etag"
printf 'from a file' >"$T/f"
tool 0 put small/f "$T/f"
tool 0 get small/f "$T/f.back"
cmp "$T/f" "$T/f.back" || fail "file round trip differs"
: >"$T/empty"
tool 0 put small/empty "$T/empty"
tool 0 head small/empty
[ "$(cut -d' ' -f1 "$T/out")" = 0 ] || fail "empty object: $(cat "$T/out")"
# Keys SigV4 must encode: space, +, =, &, UTF-8, ~.
key='odd/a b+c=d&e~f/caf'$'\xc3\xa9''.txt'
tool 0 put-str "$key" odd
tool 0 cat "$key"
[ "$(cat "$T/out")" = odd ] || fail "odd key round trip"
tool 0 delete small/a
tool 2 head small/a
tool 2 cat small/a
grep -q "HTTP 404" "$T/err" || fail "404 message: $(cat "$T/err")"
grep -qF "$S3_ENDPOINT/$S3_BUCKET/small/a" "$T/err" || fail "404 message names no URL: $(cat "$T/err")"
tool 0 delete small/a # absent: not an error

echo "== Range"
tool 0 put-str range/k 0123456789
tool 0 get range/k "$T/r" 2 4
[ "$(cat "$T/r")" = 234 ] || fail "Range 2-4 gave '$(cat "$T/r")'"
tool 0 get range/k "$T/r" 7 -
[ "$(cat "$T/r")" = 789 ] || fail "Range 7- gave '$(cat "$T/r")'"
tool 34 get range/k "$T/r" 20 30 # 416: ERANGE

echo "== ListObjectsV2 paging"
for i in $(seq -w 1 25); do tool 0 put-str "list/k$i" "$i"; done
tool 0 put-str list-not/x x
tool 0 list list/ 10
[ "$(grep -c '^list/k' "$T/out")" = 25 ] || fail "listing: $(cat "$T/out")"
grep -qx "pages 3" "$T/out" || fail "expected 3 pages: $(tail -1 "$T/out")"
! grep -q list-not "$T/out" || fail "prefix not applied"
[ "$(grep '^list/k' "$T/out" | sort -u | wc -l)" = 25 ] || fail "duplicates across pages"
tool 0 list "" 1000
grep -qx "pages 1" "$T/out" || fail "one page expected"

echo "== multipart, 105 MiB"
head -c $((105 << 20)) /dev/urandom >"$T/big"
t0=$(now_ms)
tool 0 put big/one "$T/big"
echo "upload $(($(now_ms) - t0)) ms"
tool 0 head big/one
[ "$(cut -d' ' -f1 "$T/out")" = $((105 << 20)) ] || fail "big size: $(cat "$T/out")"
grep -q -- '-7$' "$T/out" || fail "not a 7-part multipart ETag: $(cat "$T/out")"
tool 0 get big/one "$T/big.back"
[ "$(sha256sum <"$T/big" | cut -d' ' -f1)" = "$(sha256sum <"$T/big.back" | cut -d' ' -f1)" ] ||
	fail "multipart round trip differs"
tool 0 get big/one "$T/big.part" $((50 << 20)) $(((50 << 20) + 999))
cmp "$T/big.part" <(tail -c +$(((50 << 20) + 1)) "$T/big" | head -c 1000) || fail "Range inside a part"
rm -f "$T/big.back" "$T/big.part"
# A file under one part, forced multipart.
tool 0 put-mp big/small "$T/f"
tool 0 cat big/small
[ "$(cat "$T/out")" = "from a file" ] || fail "one-part multipart"
tool 0 uploads big/
[ ! -s "$T/out" ] || fail "uploads left after success: $(cat "$T/out")"

echo "== credentials file, wrong secret"
AWS_ACCESS_KEY_ID= AWS_SECRET_ACCESS_KEY= S3_TOOL_CREDENTIALS=$S3_CREDENTIALS tool 0 cat range/k
bad="wrong-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
AWS_SECRET_ACCESS_KEY=$bad tool 13 cat range/k
grep -q "HTTP 403" "$T/err" || fail "403 message: $(cat "$T/err")"
grep -qF "$S3_ENDPOINT" "$T/err" || fail "403 message names no endpoint: $(cat "$T/err")"
! grep -qF "$bad" "$T/err" || fail "the wrong secret is in the message"
echo "  $(cat "$T/err")"

echo "== deadline in the middle of a multipart upload (radosgw alive)"
head -c $((300 << 20)) /dev/urandom >"$T/big"
t0=$(now_ms)
# A deadline far shorter than 300 MiB takes on loopback (~1 s): it ends the
# upload midway, whatever the machine.
S3_TIMEOUT_MS=100 tool 110 put big/late "$T/big"
dt=$(($(now_ms) - t0))
echo "  failed after $dt ms: $(cat "$T/err")"
# The deadline, plus the abort's own bound (KILN_S3_ABORT_TIMEOUT_MS).
[ "$dt" -lt $((100 + 2000 + 1000)) ] || fail "took $dt ms"
tool 2 head big/late
tool 0 uploads big/late
[ ! -s "$T/out" ] || fail "upload not aborted: $(cat "$T/out")"

echo "== radosgw stopped: the deadline holds"
kill -STOP "$S3_RGW_PID"
t0=$(now_ms)
S3_TIMEOUT_MS=2000 tool 110 head range/k
dt=$(($(now_ms) - t0))
echo "  HEAD failed after $dt ms: $(cat "$T/err")"
S3_TIMEOUT_MS=2000 tool 110 put-str stopped/x x
kill -CONT "$S3_RGW_PID"
[ "$dt" -ge 1900 ] && [ "$dt" -lt 3000 ] || fail "deadline 2000 ms, took $dt ms"
tool 0 cat range/k

echo "== radosgw killed in the middle of a multipart upload"
"$S3_TOOL" put big/killed "$T/big" >"$T/kout" 2>"$T/kerr" &
put_pid=$!
for _ in $(seq 1 400); do
	"$S3_TOOL" uploads big/killed >"$T/up" 2>/dev/null || true
	[ -s "$T/up" ] && break
	sleep 0.02
done
[ -s "$T/up" ] || fail "the multipart upload never showed"
sleep 0.3
# Killed (a crash) and started again: same config, same store.
s3_restart_rgw
rc=0
wait "$put_pid" || rc=$?
[ "$rc" != 0 ] || fail "the upload succeeded although radosgw was killed"
echo "  upload failed ($rc): $(cat "$T/kerr")"
! grep -qF "$S3_SECRET_KEY" "$T/kerr" || fail "secret in the message"
tool 0 cat range/k
tool 2 head big/killed
tool 0 uploads big/killed
if [ -s "$T/out" ]; then
	# radosgw died before the abort could reach it; nothing points at
	# the parts, and abort-all is what a bucket GC does.
	echo "  left by the dead server: $(cat "$T/out")"
	tool 0 abort-all big/killed
	tool 0 uploads big/killed
	[ ! -s "$T/out" ] || fail "abort-all left: $(cat "$T/out")"
fi
echo "PASS"
