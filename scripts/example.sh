#!/bin/sh
# Build kiln and run its main job on the embedded engine: the example graph
# in examples/hello (linux/amd64 natively, linux/arm64 through binfmt),
# exported to ./out. Run scripts/install-deps.sh first (as root).
set -eu
cd "$(dirname "$0")/.."

if [ ! -f build/build.ninja ]; then
	meson setup build
fi
ninja -C build

./scripts/make-busybox-layout.sh examples/busybox

./build/src/cli/kiln build --progress plain --def examples/hello/graph.json \
	-o type=local,dest=out

echo
echo "== result in ./out =="
ls -lnR --time-style=+ out
echo
for f in out/app/*.txt out/app/VERSION; do
	printf '%s: %s\n' "$f" "$(cat "$f")"
done
