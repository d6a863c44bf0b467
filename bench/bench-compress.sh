#!/bin/bash
# Layer compression (issue 13 item 5): kiln's gzip and zstd layer export vs
# `pigz -p NPROC` and `zstd -TNPROC` at the same levels on the same bytes,
# in one run (bench-compress.c says what is timed), on
#   1. real files: /usr/lib/x86_64-linux-gnu (about 1 GiB of libraries;
#      BENCH_COMPRESS_DIR picks another), and
#   2. 256 MiB of random bytes (BENCH_COMPRESS_RANDOM_MIB).
#
#   bench/bench-compress.sh BUILD_DIR      (a release build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:?usage: bench-compress.sh BUILD_DIR}" && pwd)
ninja -C "$build" bench/bench-compress >/dev/null ||
	{ echo "bench-compress: cannot build bench/bench-compress in $build" >&2; exit 1; }
for t in pigz zstd; do
	command -v "$t" >/dev/null || { echo "bench-compress: $t is not installed (scripts/install-deps.sh)" >&2; exit 1; }
done
real=${BENCH_COMPRESS_DIR:-/usr/lib/x86_64-linux-gnu}
[ -d "$real" ] || { echo "bench-compress: no $real (set BENCH_COMPRESS_DIR)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/kiln-bench-compress.XXXXXX)
trap 'rm -rf "$work"' EXIT

echo "== layer compression: kiln vs pigz and zstd, $(nproc) cores, SHA-NI $(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no)"
mkdir -p "$work/real" "$work/random/data"
"$build/bench/bench-compress" "$real" "$work/real"
rm -rf "$work/real"
head -c $((${BENCH_COMPRESS_RANDOM_MIB:-256} << 20)) /dev/urandom >"$work/random/data/random.bin"
"$build/bench/bench-compress" "$work/random/data" "$work/random"
