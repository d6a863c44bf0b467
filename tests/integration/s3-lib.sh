# A real S3 server for tests: Ceph's radosgw from Debian (one ceph-mon, one
# ceph-osd on an in-memory store, one radosgw with the beast frontend), all
# state under one directory. Source it after lib.sh. See
# docs/internals/testing-s3.md for the set-up and what radosgw accepts.
#
#   s3_start DIR [NETNS]
#       Start a private cluster under DIR (own fsid, keyrings, ceph.conf,
#       logs; nothing under /etc/ceph or /var/lib/ceph is read or written),
#       create an S3 user and the bucket $S3_BUCKET, and export:
#         S3_ENDPOINT     http://IP:PORT (path-style addressing)
#         S3_HOST S3_PORT the IP and port of that endpoint
#         S3_REGION       region for SigV4 ("us-east-1"; radosgw accepts any)
#         S3_ACCESS_KEY S3_SECRET_KEY   the user's keys (random per start)
#         S3_BUCKET       the bucket made at start ("kiln-test")
#         S3_CREDENTIALS  an AWS credentials file (profile "default") with
#                         those keys, mode 0600
#         S3_CURL_CONFIG  a curl -K file (user + aws-sigv4), mode 0600
#         S3_RGW_PID S3_MON_PID S3_OSD_PID   the daemons (our children)
#         S3_DIR          DIR
#         S3_NETNS        the namespace the cluster runs in ("" for none)
#         S3_START_SECONDS  how long the start took
#       With NETNS (a name given to netns_add of netns-lib.sh, or any name
#       in `ip netns list`), every daemon runs in that network namespace:
#       ceph-mon and ceph-osd on its 127.0.0.1, radosgw on its first
#       global IPv4 address (so a rule on eth0 blackholes the S3 endpoint
#       without cutting the cluster's own traffic). Without NETNS, all on
#       the host's 127.0.0.1. Fails the test (fail, from lib.sh) with the
#       daemon's log tail when a binary is missing or a daemon does not
#       come up within $S3_START_TIMEOUT seconds (default 120). Registers
#       `s3_stop DIR` in CLEANUP_HOOKS. Several instances may run at once
#       (other DIRs, other tests); the S3_* variables name the last one.
#   s3_stop [DIR]
#       Stop the daemons of the instance under DIR (default $S3_DIR) by
#       PID: SIGCONT (a test may have SIGSTOPped radosgw), SIGKILL (the
#       data is disposable and an orderly memstore shutdown would write it
#       all to disk), then wait until each is gone. Removes DIR's run
#       state (pids, sockets, the in-memory store's files); keeps DIR/log.
#       Idempotent.
#   s3_make_bucket NAME
#       Create bucket NAME with a signed PUT; fails the test unless 200.
#   s3_curl ARGS...
#       curl with SigV4 ("aws:amz:$S3_REGION:s3") and the user's keys, read
#       from $S3_CURL_CONFIG (curl -K) so the secret is on no command line.
#       Adds "x-amz-content-sha256: UNSIGNED-PAYLOAD" unless ARGS set that
#       header (radosgw requires it on every SigV4 request). Give it full
#       URLs: "$S3_ENDPOINT/$S3_BUCKET/KEY".
#
# Tunables (environment): S3_MEMSTORE_BYTES (the OSD's in-memory store size,
# default 2 GiB; the OSD's RSS is about 2x the bytes stored plus 50 MB; at
# 95% full Ceph pauses writes: PUTs hang until the client's deadline, they
# do not fail), S3_START_TIMEOUT (seconds, default 120), S3_REGION.
#
# Needs: ceph-mon ceph-osd radosgw (Debian), ceph-common (ceph,
# ceph-authtool, monmaptool, radosgw-admin), curl, python3, and for NETNS:
# ip, nsenter. Safe under `set -euo pipefail`.

: "${T:?source lib.sh before s3-lib.sh}"

S3_REGION=${S3_REGION:-us-east-1}
S3_MEMSTORE_BYTES=${S3_MEMSTORE_BYTES:-2147483648}
S3_START_TIMEOUT=${S3_START_TIMEOUT:-120}
S3_DIR=
S3_NETNS=
_S3_NSNAME= # the full `ip netns` name, "" for the host's namespace

_s3_need() {
	local b
	for b in "$@"; do
		command -v "$b" >/dev/null ||
			fail "s3-lib: $b is not installed (scripts/install-deps.sh: radosgw ceph-mon ceph-osd ceph-common)"
	done
}

# Run a command in the cluster's network namespace (nsenter execs it: the
# PID of a background run is the command's own).
_s3_in() {
	if [ -n "$_S3_NSNAME" ]; then
		nsenter --net="/run/netns/$_S3_NSNAME" -- "$@"
	else
		"$@"
	fi
}

_s3_free_port() { # IP
	_s3_in python3 -c 'import socket, sys; s = socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])' "$1"
}

_s3_random() { # BYTES: lowercase hex
	od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

_s3_log_tail() { # FILE [LINES]
	if [ -s "$1" ]; then
		echo "--- tail of $1:"
		tail -n "${2:-15}" "$1"
	else
		echo "($1 is empty or missing)"
	fi
}

# True once pid has exited (a zombie counts).
_s3_gone() {
	local st
	[ -r "/proc/$1/stat" ] || return 0
	st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 0
	[ "$st" = Z ] || [ -z "$st" ]
}

_s3_secs() { # MILLISECONDS
	awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'
}

_s3_now() { # milliseconds
	local t=${EPOCHREALTIME/./}
	echo $((t / 1000))
}

# Start one daemon in the background (stdout/stderr to DIR/log/NAME.out),
# record its PID in DIR/pids. Sets _S3_BG_PID. Never call it inside $(...).
_s3_bg() { # NAME CMD...
	local name=$1
	shift
	# A simple command, not a function: bash forks and execs it (and
	# nsenter execs after setns), so $! is the daemon's own PID.
	if [ -n "$_S3_NSNAME" ]; then
		nsenter --net="/run/netns/$_S3_NSNAME" -- "$@" </dev/null >>"$S3_DIR/log/$name.out" 2>&1 &
	else
		"$@" </dev/null >>"$S3_DIR/log/$name.out" 2>&1 &
	fi
	_S3_BG_PID=$!
	echo "$_S3_BG_PID $name" >>"$S3_DIR/pids"
}

# Fail with the logs of the daemons that matter for WHAT.
_s3_fail() { # WHAT LOGS...
	local what=$1 f msg
	shift
	msg="s3-lib: $what"
	for f in "$@"; do msg+=$'\n'"$(_s3_log_tail "$f")"; done
	fail "$msg"
}

# Exit status 0 as soon as the daemon $1 is alive and CMD succeeds; 1 at
# the deadline ($_S3_DEADLINE in seconds since the epoch); 2 when the
# daemon died.
_s3_until() { # PID CMD...
	local pid=$1
	shift
	while :; do
		_s3_gone "$pid" && return 2
		"$@" >/dev/null 2>&1 && return 0
		[ "$(date +%s)" -lt "$_S3_DEADLINE" ] || return 1
		sleep 0.2
	done
}

_s3_ceph() {
	_s3_in ceph -c "$S3_DIR/ceph.conf" --connect-timeout 10 "$@"
}

_s3_osd_up() {
	[ "$(_s3_ceph osd stat -f json 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["num_up_osds"])')" = 1 ]
}

_s3_http_up() {
	local code
	code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$S3_ENDPOINT/") || return 1
	[ "$code" != 000 ]
}

_s3_conf() { # DIR MONIP MONPORT RGWIP RGWPORT FSID
	local d=$1
	# $name and $pid are Ceph's metavariables, expanded per daemon.
	cat >"$d/ceph.conf" <<EOF
[global]
fsid = $6
mon host = [v2:$2:$3]
public addr = $2
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $d/admin.keyring
run dir = $d/run
admin socket = $d/run/\$name.\$pid.asok
pid file = $d/run/\$name.pid
crash dir = $d/crash
log file = $d/log/\$name.log
log to stderr = false
err to stderr = true
log to syslog = false
mon cluster log file = $d/log/cluster.log
mon cluster log to syslog = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false

[mon]
mon data = $d/mon
# One monitor, no quorum to wait for: propose map changes at once (the
# default batches them for 1 s, and radosgw creates its pools one by one).
paxos propose interval = 0.01
paxos min wait = 0.001

[osd]
osd data = $d/osd
keyring = $d/osd/keyring
osd objectstore = memstore
memstore device bytes = $S3_MEMSTORE_BYTES

[client.rgw.a]
keyring = $d/rgw.keyring
rgw data = $d/rgw
rgw frontends = beast endpoint=$4:$5
rgw dns name = localhost
rgw thread pool size = 64
rgw init timeout = $S3_START_TIMEOUT
rgw enable usage log = false
rgw enable ops log = false
rgw run sync thread = false
rgw enable lc threads = false
rgw gc obj min wait = 10
rgw gc processor period = 10
rgw gc processor max time = 10
debug rgw = 1
EOF
}

s3_start() { # DIR [NETNS]
	local dir=$1 ns=${2:-} monip rgwip monport rgwport fsid osduuid t0 t_mon t_osd t_rgw t_end rc
	_s3_need ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool curl python3
	[ -n "$dir" ] || fail "s3_start: no DIR"
	if [ -n "${S3_DIR:-}" ] && [ -s "$S3_DIR/pids" ] && [ "$S3_DIR" = "$dir" ]; then
		fail "s3_start: an instance already runs under $dir (s3_stop first)"
	fi
	t0=$(_s3_now)
	S3_NETNS=$ns
	_S3_NSNAME=
	monip=127.0.0.1
	rgwip=127.0.0.1
	if [ -n "$ns" ]; then
		_s3_need ip nsenter
		if declare -F _netns_ns >/dev/null && [ -n "${NETNS_IP[$ns]:-}" ]; then
			_S3_NSNAME=$(_netns_ns "$ns")
			rgwip=${NETNS_IP[$ns]}
		else
			_S3_NSNAME=$ns
			rgwip=$(ip -n "$ns" -4 -o addr show scope global 2>/dev/null | awk '{ sub(/\/.*/, "", $4); print $4; exit }')
		fi
		[ -e "/run/netns/$_S3_NSNAME" ] || fail "s3_start: no network namespace $_S3_NSNAME"
		[ -n "$rgwip" ] || fail "s3_start: namespace $_S3_NSNAME has no global IPv4 address"
		_s3_in ip link set lo up || fail "s3_start: cannot bring up lo in $_S3_NSNAME"
	fi
	mkdir -p "$dir" || fail "s3_start: cannot create $dir"
	S3_DIR=$(cd "$dir" && pwd)
	rm -rf "$S3_DIR/mon" "$S3_DIR/osd" "$S3_DIR/rgw" "$S3_DIR/run" "$S3_DIR/crash" "$S3_DIR/pids"
	mkdir -p "$S3_DIR/mon" "$S3_DIR/osd" "$S3_DIR/rgw" "$S3_DIR/run" "$S3_DIR/crash" "$S3_DIR/log"
	: >"$S3_DIR/pids"
	CLEANUP_HOOKS+=("s3_stop '$S3_DIR'")

	fsid=$(cat /proc/sys/kernel/random/uuid)
	osduuid=$(cat /proc/sys/kernel/random/uuid)
	monport=$(_s3_free_port "$monip") || fail "s3_start: no free port on $monip"
	rgwport=$(_s3_free_port "$rgwip") || fail "s3_start: no free port on $rgwip"
	_s3_conf "$S3_DIR" "$monip" "$monport" "$rgwip" "$rgwport" "$fsid"
	S3_HOST=$rgwip
	S3_PORT=$rgwport
	S3_ENDPOINT="http://$rgwip:$rgwport"
	S3_BUCKET=${S3_BUCKET_NAME:-kiln-test}
	S3_ACCESS_KEY="KILN$(_s3_random 8 | tr a-f A-F)"
	S3_SECRET_KEY=$(_s3_random 20)

	# Keys for every entity, all seeded into the monitor at mkfs: no
	# `ceph auth` round trips later.
	{
		local c="$S3_DIR/ceph.conf"
		ceph-authtool -c "$c" --create-keyring "$S3_DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' &&
			ceph-authtool -c "$c" --create-keyring "$S3_DIR/admin.keyring" --gen-key -n client.admin \
				--cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' &&
			ceph-authtool -c "$c" --create-keyring "$S3_DIR/osd/keyring" --gen-key -n osd.0 \
				--cap mon 'allow profile osd' --cap osd 'allow *' --cap mgr 'allow profile osd' &&
			ceph-authtool -c "$c" --create-keyring "$S3_DIR/rgw.keyring" --gen-key -n client.rgw.a \
				--cap mon 'allow rw' --cap osd 'allow rwx' &&
			ceph-authtool -c "$c" "$S3_DIR/mon.keyring" --import-keyring "$S3_DIR/admin.keyring" &&
			ceph-authtool -c "$c" "$S3_DIR/mon.keyring" --import-keyring "$S3_DIR/osd/keyring" &&
			ceph-authtool -c "$c" "$S3_DIR/mon.keyring" --import-keyring "$S3_DIR/rgw.keyring" &&
			monmaptool -c "$c" --create --fsid "$fsid" --addv a "[v2:$monip:$monport]" "$S3_DIR/monmap" &&
			ceph-mon -c "$c" --mkfs -i a --monmap "$S3_DIR/monmap" --keyring "$S3_DIR/mon.keyring"
	} >>"$S3_DIR/log/setup.log" 2>&1 ||
		_s3_fail "cannot create the monitor's keys and store" "$S3_DIR/log/setup.log" "$S3_DIR/log/mon.a.log"
	chmod 600 "$S3_DIR"/*.keyring "$S3_DIR/osd/keyring"

	_s3_bg mon ceph-mon -c "$S3_DIR/ceph.conf" -f -i a
	S3_MON_PID=$_S3_BG_PID
	# The OSD's store is made while the monitor starts.
	_s3_in ceph-osd -c "$S3_DIR/ceph.conf" -i 0 --mkfs --osd-uuid "$osduuid" --no-mon-config \
		>>"$S3_DIR/log/setup.log" 2>&1 ||
		_s3_fail "ceph-osd --mkfs failed" "$S3_DIR/log/setup.log" "$S3_DIR/log/osd.0.log"

	_S3_DEADLINE=$(($(date +%s) + S3_START_TIMEOUT))
	rc=0
	_s3_until "$S3_MON_PID" _s3_ceph osd new "$osduuid" 0 || rc=$?
	[ "$rc" = 0 ] || _s3_fail "ceph-mon did not come up on $monip:$monport ($([ $rc = 2 ] && echo exited || echo "no answer in ${S3_START_TIMEOUT}s"))" \
		"$S3_DIR/log/mon.out" "$S3_DIR/log/mon.a.log"

	t_mon=$(_s3_now)
	_s3_bg osd ceph-osd -c "$S3_DIR/ceph.conf" -f -i 0
	S3_OSD_PID=$_S3_BG_PID
	_s3_until "$S3_OSD_PID" _s3_osd_up || rc=$?
	[ "$rc" = 0 ] || _s3_fail "ceph-osd did not come up ($([ $rc = 2 ] && echo exited || echo "not up in ${S3_START_TIMEOUT}s"))" \
		"$S3_DIR/log/osd.out" "$S3_DIR/log/osd.0.log"
	# Only now: pools radosgw creates before the OSD is up sometimes
	# stall its start by 5 s.
	_s3_bg rgw radosgw -c "$S3_DIR/ceph.conf" -f -n client.rgw.a
	S3_RGW_PID=$_S3_BG_PID
	t_osd=$(_s3_now)
	_s3_until "$S3_RGW_PID" _s3_http_up || rc=$?
	[ "$rc" = 0 ] || _s3_fail "radosgw did not answer on $S3_ENDPOINT ($([ $rc = 2 ] && echo exited || echo "no answer in ${S3_START_TIMEOUT}s"))" \
		"$S3_DIR/log/rgw.out" "$S3_DIR/log/client.rgw.a.log"

	t_rgw=$(_s3_now)
	_s3_in timeout 60 radosgw-admin -c "$S3_DIR/ceph.conf" user create --uid kiln --display-name kiln \
		--access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" >"$S3_DIR/log/user.json" 2>>"$S3_DIR/log/setup.log" ||
		_s3_fail "radosgw-admin user create failed" "$S3_DIR/log/setup.log" "$S3_DIR/log/client.admin.log"

	S3_CURL_CONFIG="$S3_DIR/curl.cfg"
	S3_CREDENTIALS="$S3_DIR/credentials"
	(
		umask 077
		printf 'user = "%s:%s"\naws-sigv4 = "aws:amz:%s:s3"\n' \
			"$S3_ACCESS_KEY" "$S3_SECRET_KEY" "$S3_REGION" >"$S3_CURL_CONFIG"
		printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
			"$S3_ACCESS_KEY" "$S3_SECRET_KEY" >"$S3_CREDENTIALS"
	)
	export S3_ENDPOINT S3_HOST S3_PORT S3_REGION S3_ACCESS_KEY S3_SECRET_KEY S3_BUCKET \
		S3_CREDENTIALS S3_CURL_CONFIG S3_RGW_PID S3_MON_PID S3_OSD_PID S3_DIR S3_NETNS

	s3_make_bucket "$S3_BUCKET"
	t_end=$(_s3_now)
	S3_START_SECONDS=$(_s3_secs $((t_end - t0)))
	export S3_START_SECONDS
	echo "s3-lib: radosgw up at $S3_ENDPOINT${S3_NETNS:+ (netns $S3_NETNS)} in ${S3_START_SECONDS}s" \
		"(mon $(_s3_secs $((t_mon - t0))), osd +$(_s3_secs $((t_osd - t_mon))), rgw +$(_s3_secs $((t_rgw - t_osd)))," \
		"user and bucket +$(_s3_secs $((t_end - t_rgw))); pids mon $S3_MON_PID osd $S3_OSD_PID rgw $S3_RGW_PID;" \
		"memstore $S3_MEMSTORE_BYTES bytes)" >&2
}

s3_stop() { # [DIR]
	local dir=${1:-${S3_DIR:-}} pid name deadline left=
	[ -n "$dir" ] && [ -f "$dir/pids" ] || return 0
	deadline=$(($(date +%s) + 10))
	# stderr off: bash reports "Killed" for each reaped background job.
	{
		while read -r pid name; do
			kill -CONT "$pid" || true
			kill -KILL "$pid" || true
		done <"$dir/pids"
		while read -r pid name; do
			# Our children are reaped by wait; others are polled.
			wait "$pid" || true
			while ! _s3_gone "$pid"; do
				if [ "$(date +%s)" -ge "$deadline" ]; then
					left+=" $name:$pid"
					break
				fi
				sleep 0.05
			done
		done <"$dir/pids"
	} 2>/dev/null
	[ -z "$left" ] || echo "s3-lib: survived SIGKILL for 10 s:$left" >&2
	rm -rf "$dir/pids" "$dir/run" "$dir/mon" "$dir/osd" "$dir/rgw" "$dir/crash" \
		"$dir/monmap" "$dir"/*.keyring "$dir/curl.cfg" "$dir/credentials"
	if [ "$dir" = "${S3_DIR:-}" ]; then
		S3_RGW_PID=
		S3_MON_PID=
		S3_OSD_PID=
	fi
	return 0
}

# radosgw killed (-9, as a crash) and started again with its own command
# line (same config, same store, same address); waits until it answers.
# Sets S3_RGW_PID. Existing objects survive (the OSD keeps them).
s3_restart_rgw() {
	local cmd=() a
	[ -n "${S3_RGW_PID:-}" ] || fail "s3_restart_rgw: no running instance"
	while IFS= read -r -d '' a; do cmd+=("$a"); done <"/proc/$S3_RGW_PID/cmdline"
	[ ${#cmd[@]} -gt 0 ] || fail "s3_restart_rgw: cannot read radosgw's command line"
	kill -KILL "$S3_RGW_PID" 2>/dev/null || true
	wait "$S3_RGW_PID" 2>/dev/null || true
	for _ in $(seq 1 100); do _s3_gone "$S3_RGW_PID" && break; sleep 0.05; done
	_s3_bg rgw "${cmd[@]}"
	S3_RGW_PID=$_S3_BG_PID
	for _ in $(seq 1 300); do
		_s3_http_up && return 0
		sleep 0.1
	done
	_s3_fail "radosgw did not come back" rgw
}

s3_curl() {
	local a sha=1
	[ -n "${S3_CURL_CONFIG:-}" ] && [ -f "$S3_CURL_CONFIG" ] || fail "s3_curl: no running instance (s3_start first)"
	for a in "$@"; do
		case "${a,,}" in x-amz-content-sha256:*) sha= ;; esac
	done
	curl -K "$S3_CURL_CONFIG" ${sha:+-H "x-amz-content-sha256: UNSIGNED-PAYLOAD"} "$@"
}

s3_make_bucket() { # NAME
	local code
	code=$(s3_curl -sS -m 30 -o "$S3_DIR/log/make-bucket.out" -w '%{http_code}' -X PUT "$S3_ENDPOINT/$1") ||
		fail "s3_make_bucket $1: curl failed"
	[ "$code" = 200 ] || fail "s3_make_bucket $1: HTTP $code: $(cat "$S3_DIR/log/make-bucket.out")"
}
