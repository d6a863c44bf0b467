#!/bin/sh
# Build kiln and run its main jobs: the two-platform Dockerfile in
# examples/multiarch (linux/amd64 natively, linux/arm64 through binfmt +
# QEMU) on the embedded engine, exported as an OCI image archive and as
# files; the op-graph example; then the same Dockerfile on a small cluster
# on this machine (kilnd, an amd64 and an arm64 worker, a local registry),
# pushed as a two-platform image. Run scripts/install-deps.sh first (as root).
set -eu
cd "$(dirname "$0")/.."

if [ ! -f build/build.ninja ]; then
	meson setup build
fi
ninja -C build

# The base image: a two-platform busybox OCI layout made from Debian's
# busybox-static packages (examples/busybox).
./scripts/make-busybox-layout.sh examples/busybox

echo "== kiln build --platform linux/amd64,linux/arm64 examples/multiarch =="
./build/src/cli/kiln build --progress plain \
	--platform linux/amd64,linux/arm64 \
	-o type=oci,dest=out/multiarch.tar,name=kiln-example:latest \
	-o type=local,dest=out/multiarch \
	examples/multiarch

echo
echo "== the image index in out/multiarch.tar =="
tar -xOf out/multiarch.tar index.json | jq -c '.manifests[] | {digest, annotations}'
for p in linux_amd64 linux_arm64; do
	echo "-- $p:"
	cat "out/multiarch/$p/app/MESSAGE" "out/multiarch/$p/app/generated-on" \
		"out/multiarch/$p/app/runs-on"
done

echo
echo "== a remote cache: --cache-to a folder, then an empty KILN_ROOT builds from it =="
# As a CI job would: save the cache in a folder, restore it on a fresh runner.
rm -rf out/cache out/fresh-root
./build/src/cli/kiln build --progress plain --platform linux/amd64,linux/arm64 \
	--cache-to type=local,dest=out/cache,mode=max examples/multiarch 2>&1 | tail -1
KILN_ROOT="$PWD/out/fresh-root" ./build/src/cli/kiln build --progress plain \
	--platform linux/amd64,linux/arm64 --cache-from type=local,src=out/cache \
	examples/multiarch 2>&1 | tail -1

echo
echo "== kiln build --def examples/hello/graph.json (the op graph) =="
./build/src/cli/kiln build --progress plain --def examples/hello/graph.json \
	-o type=local,dest=out/hello
ls -lnR --time-style=+ out/hello

echo
echo "== the same Dockerfile on a cluster: kilnd, an amd64 worker, an arm64 worker =="
# Everything listens on 127.0.0.1, on free ports; state is in out/cluster
# (kept: run again and every step is a cache hit). Stopped on exit.
state=$(pwd)/out/cluster
mkdir -p "$state"
pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM
free_port() {
	python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_for() { # URL
	i=0
	until curl -fsS "$1" >/dev/null 2>&1; do
		i=$((i + 1))
		[ $i -lt 100 ] || { echo "example: $1 did not come up" >&2; exit 1; }
		sleep 0.1
	done
}
reg=127.0.0.1:$(free_port)
kilnd=http://127.0.0.1:$(free_port)
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' \
	"$state/registry" "$reg" >"$state/registry.yml"
docker-registry serve "$state/registry.yml" >"$state/registry.log" 2>&1 &
pids="$pids $!"
wait_for "http://$reg/v2/"
skopeo copy --quiet --all --dest-tls-verify=false oci:examples/busybox:latest \
	"docker://$reg/busybox:latest"
./build/src/kilnd/kilnd --root "$state/kilnd" --listen "${kilnd#http://}" \
	>"$state/kilnd.log" 2>&1 &
pids="$pids $!"
wait_for "$kilnd/v1/health"
for w in amd64 arm64; do
	./build/src/agent/kiln-worker --join "$kilnd" --token-file "$state/kilnd/worker.token" \
		--root "$state/worker-$w" --name "worker-$w" --platform "linux/$w" \
		--listen "127.0.0.1:$(free_port)" >"$state/worker-$w.log" 2>&1 &
	pids="$pids $!"
done
KILN_ADDR=$kilnd
KILN_TOKEN=$(cat "$state/kilnd/client.token")
export KILN_ADDR KILN_TOKEN
i=0
until [ "$(./build/src/cli/kiln workers --json | jq '[.workers[] | select(.state == "ready")] | length')" = 2 ]; do
	i=$((i + 1))
	[ $i -lt 100 ] || { echo "example: the workers did not register" >&2; exit 1; }
	sleep 0.1
done
./build/src/cli/kiln workers
echo
./build/src/cli/kiln build --progress plain \
	--platform linux/amd64,linux/arm64 \
	--build-arg "BASE=$reg/busybox:latest" \
	-t "$reg/kiln-example:latest" --push \
	examples/multiarch
echo
echo "== the image index pushed to $reg/kiln-example:latest =="
skopeo inspect --raw --tls-verify=false "docker://$reg/kiln-example:latest" |
	jq -c '.manifests[] | {platform: "\(.platform.os)/\(.platform.architecture)", digest}'
