#!/bin/sh
# Build kiln and run its main job on the embedded engine: the two-platform
# Dockerfile in examples/multiarch (linux/amd64 natively, linux/arm64
# through binfmt + QEMU), exported as an OCI image archive and as files;
# then the op-graph example. Run scripts/install-deps.sh first (as root).
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
echo "== kiln build --def examples/hello/graph.json (the op graph) =="
./build/src/cli/kiln build --progress plain --def examples/hello/graph.json \
	-o type=local,dest=out/hello
ls -lnR --time-style=+ out/hello
