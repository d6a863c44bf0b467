#!/bin/bash
# A fully cached two-platform rebuild of examples/multiarch, from a
# registry base and from an oci-layout:// base, timed with hyperfine
# beside `kiln --version` (the process start-up floor) in the same run.
# What it shows: the cost of resolving the base image and walking the
# cache when nothing needs building. The same rebuild on a loopback
# cluster (kilnd, an amd64 and an arm64 kiln-worker) gives the cluster's
# overhead (issue 13: within 2x or 50 ms of embedded, whichever is
# larger). Last, it counts the registry requests of one more cached
# rebuild (from the registry's log).
# Usage: bench/bench-rebuild.sh BUILD-DIR   (as root; needs hyperfine,
# docker-registry, skopeo: scripts/install-deps.sh)
set -euo pipefail
build=${1:?usage: bench-rebuild.sh BUILD-DIR}
src=$(cd "$(dirname "$0")/.." && pwd)
kiln=$(realpath "$build/src/cli/kiln")
runs=${BENCH_CLI_RUNS:-30}
fixture=${KILN_FIXTURE_DIR:-/var/tmp/kiln-fixtures}/busybox
[ -e "$fixture/index.json" ] || "$src/scripts/make-busybox-layout.sh" "$fixture" >&2
command -v hyperfine >/dev/null || { echo "bench-rebuild: hyperfine is not installed" >&2; exit 1; }

T=$(mktemp -d /var/tmp/kiln-bench-rebuild.XXXXXX)
reg_pid=
daemons=()
cleanup() {
	[ -z "$reg_pid" ] || kill "$reg_pid" 2>/dev/null || true
	for p in "${daemons[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${daemons[@]}"; do wait "$p" 2>/dev/null || true; done
	awk -v p="$T" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
		while read -r m; do umount -l "$m"; done
	rm -rf --one-file-system "$T"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
	"$T/registry" "$port" >"$T/registry.yml"
docker-registry serve "$T/registry.yml" >"$T/registry.log" 2>&1 &
reg_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy --quiet --all --dest-tls-verify=false "oci:$fixture:latest" \
	"docker://127.0.0.1:$port/busybox:latest"

echo "machine: $(nproc) cores, $(grep -q sha_ni /proc/cpuinfo && echo SHA-NI || echo 'no SHA-NI'), $(uname -r)"
export KILN_ROOT="$T/root"
build_cmd() { # BASE
	echo "$kiln build --progress quiet --platform linux/amd64,linux/arm64 --build-arg BASE=$1 $src/examples/multiarch"
}
# Warm the cache once per base; every timed run is then fully cached.
$(build_cmd "127.0.0.1:$port/busybox:latest") 2>/dev/null
$(build_cmd "oci-layout://$fixture:latest") 2>/dev/null
# A loopback cluster: kilnd and a worker per platform (arm64 emulated on x86).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kport=$(free_port)
"$build/src/kilnd/kilnd" --root "$T/kilnd" --listen "127.0.0.1:$kport" \
	--insecure-registry "127.0.0.1:$port" >"$T/kilnd.log" 2>&1 &
daemons+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$kport/v1/health" >/dev/null && break; sleep 0.1; done
for plat in amd64 arm64; do
	wport=$(free_port)
	"$build/src/agent/kiln-worker" --join "http://127.0.0.1:$kport" --token-file "$T/kilnd/worker.token" \
		--root "$T/w-$plat" --name "$plat" --listen "127.0.0.1:$wport" --platform "linux/$plat" \
		--insecure-registry "127.0.0.1:$port" >"$T/worker-$plat.log" 2>&1 &
	daemons+=($!)
done
for _ in $(seq 200); do
	[ "$("$kiln" workers --addr "http://127.0.0.1:$kport" --token-file "$T/kilnd/client.token" --json |
		jq '[.workers[] | select(.state == "ready")] | length')" = 2 ] && break
	sleep 0.1
done
cluster_cmd="$kiln build --progress quiet --addr http://127.0.0.1:$kport --token-file $T/kilnd/client.token --platform linux/amd64,linux/arm64 --build-arg BASE=127.0.0.1:$port/busybox:latest $src/examples/multiarch"
KILN_ROOT="$T/client" $cluster_cmd 2>/dev/null
hyperfine --warmup 3 --runs "$runs" --export-json "$T/h.json" -N \
	-n version "$kiln --version" \
	-n registry "$(build_cmd "127.0.0.1:$port/busybox:latest")" \
	-n layout "$(build_cmd "oci-layout://$fixture:latest")" \
	-n cluster "env KILN_ROOT=$T/client $cluster_cmd" >&2
jq -r '.results | (map(select(.command == "version"))[0].median) as $v |
	.[] | "RESULT rebuild \(.command) median \(.median * 1000 | . * 10 | round / 10) ms, \(.median / $v * 100 | round / 100)x kiln --version"' "$T/h.json"
jq -r '.results | (map(select(.command == "registry"))[0].median) as $e |
	(map(select(.command == "cluster"))[0].median) as $c |
	"RESULT rebuild cluster vs embedded \($c / $e * 100 | round / 100)x, +\(($c - $e) * 1000 | round) ms (within 2x or 50 ms wanted)"' "$T/h.json"
# The registry's log has a "response completed" line per request: count
# those of one more cached rebuild.
before=$(grep -c 'response completed' "$T/registry.log" || true)
$(build_cmd "127.0.0.1:$port/busybox:latest") 2>/dev/null
sleep 0.5 # the registry logs a request just after answering it
after=$(grep -c 'response completed' "$T/registry.log" || true)
echo "RESULT rebuild registry requests $((after - before)) per cached rebuild"
