# Helpers to run Debian's docker-registry (distribution 2.8) on loopback for
# tests. Source this file, then:
#
#   registry_start DIR [none|htpasswd|token]
#       Start a registry storing under DIR/data on a free 127.0.0.1 port.
#       Sets REGISTRY_PID, REGISTRY_PORT, REGISTRY (127.0.0.1:PORT) and
#       REGISTRY_DIR. htpasswd: basic auth for REGISTRY_USER /
#       REGISTRY_PASSWORD. token: a bearer-token server
#       (registry-token-server.py, JWT signed with an RSA key made here by
#       openssl) that grants everything to the same user and anonymous pull
#       on repositories under public/; also sets TOKEN_PID and TOKEN_PORT.
#   registry_stop
#       Stop the processes started above, by PID, and wait for them.
#   registry_with_busybox DIR [REPO]
#       registry_start DIR (stopped by a cleanup hook) and push the
#       two-platform busybox fixture ($LAYOUT, from lib.sh) to
#       $REGISTRY/REPO:latest (REPO default busybox) with skopeo; fails the
#       test when either cannot be done. Sets BUSYBOX_REF.
#
# With REGISTRY_PARENT_PID set, a watcher stops the registry (and token
# server) once that process is gone, so a test that crashes or is killed
# leaves nothing running (for callers that start the registry from a
# short-lived shell, such as the C unit tests).
#
# Needs: docker-registry, curl, and for htpasswd/token: htpasswd
# (apache2-utils), openssl, python3. Fails (return 1) with a message on
# stderr when something is missing or the registry does not come up.
# Safe under `set -euo pipefail`.

REGISTRY_USER=${REGISTRY_USER:-kiln}
REGISTRY_PASSWORD=${REGISTRY_PASSWORD:-kiln-secret}
REGISTRY_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

_registry_die() {
	echo "registry-lib: $*" >&2
	return 1
}

_registry_free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait (10 s at most) for pid to answer HTTP at url; 0 when it does.
_registry_wait() {
	local pid=$1 url=$2 i code
	for i in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || return 1
		code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" || true)
		case "$code" in 200 | 401) return 0 ;; esac
		sleep 0.1
	done
	return 1
}

_registry_stop_pid() {
	local pid=$1 i
	[ -n "$pid" ] || return 0
	kill "$pid" 2>/dev/null || return 0
	for i in $(seq 50); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -9 "$pid" 2>/dev/null || true
}

_registry_start_token() {
	local dir=$1 i
	command -v openssl >/dev/null || _registry_die "openssl is not installed" || return 1
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=kiln-test-token \
		-keyout "$dir/token-key.pem" -out "$dir/token-cert.pem" 2>/dev/null ||
		_registry_die "openssl could not make the token key" || return 1
	rm -f "$dir/token-port"
	python3 "$REGISTRY_LIB_DIR/registry-token-server.py" \
		--key "$dir/token-key.pem" --cert "$dir/token-cert.pem" \
		--issuer kiln-test-issuer --service kiln-test-registry \
		--user "$REGISTRY_USER:$REGISTRY_PASSWORD" \
		--port-file "$dir/token-port" --log "$dir/token.log" \
		</dev/null >"$dir/token.out" 2>&1 &
	TOKEN_PID=$!
	for i in $(seq 100); do
		[ -s "$dir/token-port" ] && break
		kill -0 "$TOKEN_PID" 2>/dev/null || break
		sleep 0.1
	done
	[ -s "$dir/token-port" ] || _registry_die "token server did not start: $(cat "$dir/token.out")" || return 1
	TOKEN_PORT=$(cat "$dir/token-port")
}

_registry_auth_yaml() {
	local dir=$1 mode=$2
	case "$mode" in
	none) ;;
	htpasswd)
		printf 'auth:\n  htpasswd:\n    realm: kiln-test\n    path: %s\n' "$dir/htpasswd"
		;;
	token)
		printf 'auth:\n  token:\n    realm: http://127.0.0.1:%s/token\n' "$TOKEN_PORT"
		printf '    service: kiln-test-registry\n    issuer: kiln-test-issuer\n'
		printf '    rootcertbundle: %s\n' "$dir/token-cert.pem"
		;;
	esac
}

_registry_config() {
	local dir=$1 mode=$2 port=$3
	{
		printf 'version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n'
		printf 'storage:\n  filesystem:\n    rootdirectory: %s\n' "$dir/data"
		printf '  delete:\n    enabled: true\n'
		printf 'http:\n  addr: 127.0.0.1:%s\n' "$port"
		_registry_auth_yaml "$dir" "$mode"
	} >"$dir/config.yml"
}

# Kill pid if it is still the process whose command line mentions $2.
_registry_kill_if() {
	local pid=$1 mark=$2 cmd
	[ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 0
	cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
	case "$cmd" in *"$mark"*) kill "$pid" 2>/dev/null || true ;; esac
}

_registry_watch() {
	local parent=$1 dir=$2 rpid=$3 tpid=$4
	(
		trap "" HUP
		while kill -0 "$parent" 2>/dev/null; do sleep 1; done
		_registry_kill_if "$rpid" "$dir/config.yml"
		_registry_kill_if "$tpid" "$dir/token-port"
	) </dev/null >/dev/null 2>&1 &
}

registry_start() {
	local dir=$1 mode=${2:-none} try port
	command -v docker-registry >/dev/null ||
		_registry_die "docker-registry is not installed (scripts/install-deps.sh)" || return 1
	mkdir -p "$dir/data"
	REGISTRY_DIR=$dir
	TOKEN_PID=
	case "$mode" in
	none) ;;
	htpasswd)
		command -v htpasswd >/dev/null || _registry_die "htpasswd is not installed (apache2-utils)" || return 1
		htpasswd -Bbn "$REGISTRY_USER" "$REGISTRY_PASSWORD" >"$dir/htpasswd"
		;;
	token) _registry_start_token "$dir" || return 1 ;;
	*) _registry_die "unknown mode '$mode'" || return 1 ;;
	esac
	for try in 1 2 3 4 5; do
		port=$(_registry_free_port)
		_registry_config "$dir" "$mode" "$port"
		docker-registry serve "$dir/config.yml" </dev/null >>"$dir/registry.log" 2>&1 &
		REGISTRY_PID=$!
		if _registry_wait "$REGISTRY_PID" "http://127.0.0.1:$port/v2/"; then
			REGISTRY_PORT=$port
			REGISTRY=127.0.0.1:$port
			if [ -n "${REGISTRY_PARENT_PID:-}" ]; then
				_registry_watch "$REGISTRY_PARENT_PID" "$dir" \
					"$REGISTRY_PID" "${TOKEN_PID:-}"
			fi
			return 0
		fi
		_registry_stop_pid "$REGISTRY_PID"
	done
	REGISTRY_PID=
	_registry_stop_pid "$TOKEN_PID"
	_registry_die "docker-registry did not start: $(tail -5 "$dir/registry.log")"
}

registry_with_busybox() { # DIR [REPO]
	local repo=${2:-busybox}
	CLEANUP_HOOKS+=("registry_stop")
	registry_start "$1" || fail "cannot start docker-registry"
	registry_push_busybox "$repo"
}

# Push the fixture to $REGISTRY/REPO:latest (another name for it).
registry_push_busybox() { # REPO
	command -v skopeo >/dev/null || fail "skopeo is not installed (scripts/install-deps.sh)"
	skopeo copy --quiet --all --dest-tls-verify=false "oci:$LAYOUT:latest" \
		"docker://$REGISTRY/$1:latest" >"$REGISTRY_DIR/skopeo.log" 2>&1 ||
		fail "skopeo cannot push the fixture to $REGISTRY/$1: $(cat "$REGISTRY_DIR/skopeo.log")"
	BUSYBOX_REF="$REGISTRY/$1:latest"
}

registry_stop() {
	_registry_stop_pid "${REGISTRY_PID:-}"
	_registry_stop_pid "${TOKEN_PID:-}"
	REGISTRY_PID=
	TOKEN_PID=
}
