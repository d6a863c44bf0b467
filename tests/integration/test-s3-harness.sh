#!/bin/bash
# The radosgw test harness (s3-lib.sh) itself: a real S3 server that checks
# SigV4, driven with curl --aws-sigv4. Object calls (PUT, GET, Range GET,
# HEAD, DELETE), ListObjectsV2 paging, a 3-part multipart upload, a wrong
# secret (403), SIGSTOP/SIGCONT, stop with nothing left, and a second start
# in the same directory, inside a network namespace, where a DROP rule on the
# namespace's eth0 blackholes the endpoint and removing it restores service.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/netns-lib.sh"
. "$(dirname "$0")/s3-lib.sh"
command -v iptables >/dev/null || fail "iptables is not installed (scripts/install-deps.sh)"

S3D="$T/s3"
touch "$T/marker"

# HTTP status of an s3_curl call; the body goes to $T/body, headers to $T/hdr.
code() {
	s3_curl -sS -o "$T/body" -D "$T/hdr" -w '%{http_code}' "$@" || true
}
expect() { # STATUS WHAT ARGS...
	local want=$1 what=$2 got
	shift 2
	got=$(code "$@")
	[ "$got" = "$want" ] || fail "$what: HTTP $got, expected $want: $(head -c 600 "$T/body" 2>/dev/null)"
}
header() { # NAME: from $T/hdr
	tr -d '\r' <"$T/hdr" | awk -v n="$(tr A-Z a-z <<<"$1")" -F': ' 'tolower($1) == n { print $2 }' | tail -1
}
xml_values() { # TAG: every <TAG>value</TAG> in $T/body
	grep -o "<$1>[^<]*</$1>" "$T/body" | sed "s|<$1>\(.*\)</$1>|\1|" || true
}
uri() { jq -rn --arg v "$1" '$v | @uri'; }

# Processes whose command line names this test's cluster directory.
cluster_processes() {
	local p
	for p in /proc/[0-9]*; do
		tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF "$S3D/ceph.conf" && echo "${p#/proc/}"
	done || true
}

check_stopped() { # PIDS...
	local p
	for p in "$@"; do
		_s3_gone "$p" || fail "pid $p still runs after s3_stop"
	done
	[ -z "$(cluster_processes)" ] || fail "processes of $S3D left: $(cluster_processes)"
	[ ! -e "$S3D/pids" ] && [ ! -e "$S3D/osd" ] && [ ! -e "$S3D/run" ] || fail "run state left in $S3D"
}

# ---- first start, on loopback ----
s3_start "$S3D"
START1=$S3_START_SECONDS
B="$S3_ENDPOINT/$S3_BUCKET"
ps -o rss= -p "$S3_MON_PID" >/dev/null || fail "ceph-mon pid $S3_MON_PID is not running"
assert_eq "$(stat -c %a "$S3_CURL_CONFIG")" 600 "mode of $S3_CURL_CONFIG"
assert_eq "$(stat -c %a "$S3_CREDENTIALS")" 600 "mode of $S3_CREDENTIALS"
for p in $S3_MON_PID $S3_OSD_PID $S3_RGW_PID; do
	if tr '\0' ' ' <"/proc/$p/cmdline" | grep -qF "$S3_SECRET_KEY"; then fail "the secret is on pid $p's command line"; fi
done

# PUT, GET, Range GET, HEAD
printf 'hello radosgw\n' >"$T/small"
expect 200 "PUT small" -T "$T/small" "$B/dir/small"
etag=$(header etag)
assert_eq "$etag" "\"$(md5sum <"$T/small" | cut -d' ' -f1)\"" "ETag of a simple PUT"
expect 200 "GET small" "$B/dir/small"
cmp -s "$T/body" "$T/small" || fail "GET returned other bytes: $(cat "$T/body")"
expect 206 "Range GET" -H 'Range: bytes=6-12' "$B/dir/small"
assert_eq "$(cat "$T/body")" "radosgw" "Range GET body"
assert_eq "$(header content-range)" "bytes 6-12/14" "Content-Range"
expect 200 "HEAD" -I "$B/dir/small"
assert_eq "$(header content-length)" 14 "HEAD Content-Length"
expect 404 "GET of a missing key" "$B/dir/none"
xml_values Code | grep -qx NoSuchKey || fail "missing key: no NoSuchKey: $(cat "$T/body")"

# A body whose SHA-256 is signed, and one whose signed SHA-256 is wrong.
expect 200 "PUT with a signed body hash" -H "x-amz-content-sha256: $(sha256sum <"$T/small" | cut -d' ' -f1)" \
	-T "$T/small" "$B/dir/signed"
expect 400 "PUT with a wrong body hash" -H "x-amz-content-sha256: $(printf x | sha256sum | cut -d' ' -f1)" \
	-T "$T/small" "$B/dir/badhash"

# Virtual-hosted addressing: rgw dns name = localhost, and curl resolves
# *.localhost to loopback itself.
expect 200 "virtual-hosted GET" "http://$S3_BUCKET.localhost:$S3_PORT/dir/small"
cmp -s "$T/body" "$T/small" || fail "virtual-hosted GET returned other bytes"

# ListObjectsV2 paging: 5 objects under list/, 2 a page.
for i in 1 2 3 4 5; do
	echo "object $i" >"$T/obj"
	expect 200 "PUT list/$i" -T "$T/obj" "$B/list/o$i"
done
keys=
token=
pages=0
while :; do
	q="list-type=2&max-keys=2&prefix=list%2F"
	[ -z "$token" ] || q="continuation-token=$(uri "$token")&$q"
	expect 200 "ListObjectsV2 page $((pages + 1))" "$B?$q"
	pages=$((pages + 1))
	keys+="$(xml_values Key | tr '\n' ' ')"
	[ "$(xml_values KeyCount)" -le 2 ] || fail "page $pages has more than max-keys: $(cat "$T/body")"
	if [ "$(xml_values IsTruncated)" != true ]; then break; fi
	token=$(xml_values NextContinuationToken)
	[ -n "$token" ] || fail "truncated page without NextContinuationToken: $(cat "$T/body")"
	[ "$pages" -lt 10 ] || fail "ListObjectsV2 does not end: $keys"
done
assert_eq "$keys" "list/o1 list/o2 list/o3 list/o4 list/o5 " "keys over all pages"
assert_eq "$pages" 3 "pages of 2 over 5 keys"

# DELETE
expect 204 "DELETE" -X DELETE "$B/list/o3"
expect 404 "GET after DELETE" "$B/list/o3"

# Multipart: ~20 MiB in 3 parts (8 + 8 + 4 MiB; radosgw's minimum part is 5 MiB).
head -c $((20 * 1024 * 1024 + 12345)) /dev/urandom >"$T/big"
split -b $((8 * 1024 * 1024)) -d -a 1 "$T/big" "$T/part."
expect 200 "initiate multipart" -X POST "$B/big?uploads="
upload=$(xml_values UploadId)
[ -n "$upload" ] || fail "no UploadId: $(cat "$T/body")"
complete="<CompleteMultipartUpload>"
for n in 1 2 3; do
	expect 200 "upload part $n" -T "$T/part.$((n - 1))" "$B/big?partNumber=$n&uploadId=$(uri "$upload")"
	complete+="<Part><PartNumber>$n</PartNumber><ETag>$(header etag)</ETag></Part>"
done
complete+="</CompleteMultipartUpload>"
printf '%s' "$complete" >"$T/complete.xml"
expect 200 "complete multipart" -X POST -H 'Content-Type: application/xml' --data-binary "@$T/complete.xml" \
	"$B/big?uploadId=$(uri "$upload")"
# radosgw 16.2 answers <ETag></ETag> here (Red Hat BZ 2266579); HEAD has it.
echo "s3: ETag in CompleteMultipartUploadResult: '$(xml_values ETag)'" >&2
expect 200 "HEAD multipart object" -I "$B/big"
case "$(header etag)" in *-3\") ;; *) fail "multipart ETag lacks -3: $(header etag)" ;; esac
assert_eq "$(header content-length)" "$(stat -c %s "$T/big")" "multipart object size"
expect 200 "GET multipart object" "$B/big"
cmp -s "$T/body" "$T/big" || fail "multipart object differs from what was uploaded"
expect 206 "Range GET across parts" -H "Range: bytes=$((8 * 1024 * 1024 - 3))-$((8 * 1024 * 1024 + 2))" "$B/big"
cmp -s "$T/body" <(tail -c +$((8 * 1024 * 1024 - 2)) "$T/big" | head -c 6) || fail "Range across parts differs"
rm -f "$T/body" "$T/part."*

# A wrong secret: SigV4 is checked.
(
	umask 077
	printf 'user = "%s:%s"\naws-sigv4 = "aws:amz:%s:s3"\n' "$S3_ACCESS_KEY" "wrong$S3_SECRET_KEY" "$S3_REGION" >"$T/bad.cfg"
)
got=$(curl -sS -K "$T/bad.cfg" -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -o "$T/body" -w '%{http_code}' "$B/dir/small")
assert_eq "$got" 403 "GET with a wrong secret"
xml_values Code | grep -qx SignatureDoesNotMatch || fail "wrong secret: $(cat "$T/body")"
got=$(curl -sS -o "$T/body" -w '%{http_code}' "$B/dir/small")
assert_eq "$got" 403 "unsigned GET"

# SIGSTOP: connections are accepted by the kernel but never answered.
kill -STOP "$S3_RGW_PID"
t0=$(_s3_now)
rc=0
s3_curl -sS -o /dev/null --max-time 2 "$B/dir/small" 2>/dev/null || rc=$?
dt=$(($(_s3_now) - t0))
assert_eq "$rc" 28 "curl exit status against a stopped radosgw (28: timed out)"
[ "$dt" -lt 4000 ] || fail "--max-time 2 took $dt ms"
kill -CONT "$S3_RGW_PID"
expect 200 "GET after SIGCONT" --max-time 10 "$B/dir/small"
echo "s3: SIGSTOP: request timed out after $dt ms; SIGCONT restored service" >&2

# Memory with ~20 MiB stored.
rss() { ps -o rss= -p "$1" | awk '{ printf "%d MB", $1 / 1024 }'; }
echo "s3: RSS mon $(rss "$S3_MON_PID"), osd $(rss "$S3_OSD_PID"), rgw $(rss "$S3_RGW_PID")" >&2

# Stop (twice: idempotent); nothing of it may remain.
PIDS1="$S3_MON_PID $S3_OSD_PID $S3_RGW_PID"
kill -STOP "$S3_RGW_PID" # s3_stop must also end a stopped radosgw
s3_stop
s3_stop
# shellcheck disable=SC2086
check_stopped $PIDS1

# ---- second start, same directory, inside a network namespace ----
netns_setup
netns_add s3 2
s3_start "$S3D" s3
START2=$S3_START_SECONDS
B="$S3_ENDPOINT/$S3_BUCKET"
assert_eq "$S3_HOST" "${NETNS_IP[s3]}" "endpoint address in the namespace"
expect 404 "GET from the first run in a fresh cluster" "$B/dir/small"
expect 200 "PUT (second start)" -T "$T/small" "$B/again"
expect 200 "GET (second start)" "$B/again"
cmp -s "$T/body" "$T/small" || fail "GET (second start) returned other bytes"
s3_make_bucket second
expect 200 "PUT into a second bucket" -T "$T/small" "$S3_ENDPOINT/second/x"

# A blackhole on the namespace's eth0: the endpoint hangs, the cluster's own
# traffic (on the namespace's loopback) goes on.
netns_exec s3 iptables -A INPUT -i eth0 -j DROP
rc=0
s3_curl -sS -o /dev/null --max-time 2 "$B/again" 2>/dev/null || rc=$?
assert_eq "$rc" 28 "curl exit status against a blackholed radosgw"
netns_exec s3 iptables -D INPUT -i eth0 -j DROP
expect 200 "GET after the blackhole" --max-time 10 "$B/again"

PIDS2="$S3_MON_PID $S3_OSD_PID $S3_RGW_PID"
s3_stop
# shellcheck disable=SC2086
check_stopped $PIDS2
netns_teardown

# Nothing outside $T: Ceph's default places are untouched.
new=$(find /etc/ceph /var/lib/ceph /var/log/ceph /run/ceph -newer "$T/marker" 2>/dev/null || true)
[ -z "$new" ] || fail "files changed outside $T: $new"

echo "s3: radosgw start: ${START1}s on loopback, ${START2}s in a namespace" >&2
echo "PASS: s3-harness"
