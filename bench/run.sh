#!/bin/bash
# Run every kiln benchmark and print a summary (see bench/README.md).
#
#   bench/run.sh [BUILD_DIR]        (as root; BUILD_DIR defaults to build-bench)
#
# BUILD_DIR should be a release build:
#   meson setup build-bench -Dbuildtype=release
# The benchmarks are built here (`meson compile -C BUILD_DIR bench`).
# Environment: BENCH_REPS (repetitions, default 3), BENCH_EXEC_RUNS (30),
# BENCH_CLI_RUNS (10), KILN_FIXTURE_DIR (default /var/tmp/kiln-fixtures),
# BENCH_TRANSFER_SETTLE_S (pause before bench-transfer, default 0).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build-bench}

[ "$(id -u)" = 0 ] || { echo "bench/run.sh: needs root (mounts, runc)" >&2; exit 1; }
[ -d "$build" ] || { echo "bench/run.sh: no build directory $build (meson setup $build -Dbuildtype=release)" >&2; exit 1; }
build=$(cd "$build" && pwd)

buildtype=$(meson introspect "$build" --buildoptions 2>/dev/null |
	python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == "buildtype"))' 2>/dev/null || echo unknown)
if [ "$buildtype" != release ]; then
	echo "bench/run.sh: warning: $build is a '$buildtype' build; figures are meant for -Dbuildtype=release" >&2
fi

meson compile -C "$build" bench >/dev/null

fixtures=${KILN_FIXTURE_DIR:-/var/tmp/kiln-fixtures}
if [ ! -e "$fixtures/busybox/index.json" ]; then
	"$here/../scripts/make-busybox-layout.sh" "$fixtures/busybox" >&2
fi

log=$(mktemp /tmp/kiln-bench-log.XXXXXX)
trap 'rm -f "$log"' EXIT

sha_ni=no
grep -qw sha_ni /proc/cpuinfo && sha_ni=yes
echo "== kiln benchmarks $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "   commit $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo '?'), build $build ($buildtype)"
echo "   $(nproc) CPUs: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), SHA-NI: $sha_ni"
echo "   kernel $(uname -r), /var/tmp on $(findmnt -n -o FSTYPE,OPTIONS --target /var/tmp | cut -c1-60)"
echo "   $(runc --version | head -1); load average $(cut -d' ' -f1-3 /proc/loadavg)"

start=$(date +%s)
# Order matters on ext4 without a journal: creating files within ~5 minutes
# of mass deletes is slow (ext4 recently_deleted()). bench-materialize
# creates files in its measurements, so it runs first; the others only
# create files in their (untimed) setup.
for b in bench-materialize bench-snapshot-small bench-snapshot-large bench-exec-overhead; do
	echo
	echo "== $b"
	t0=$(date +%s)
	"$build/bench/$b" | tee -a "$log"
	echo "   ($b took $(($(date +%s) - t0)) s)"
done

# Peer-to-peer transfer between two network namespaces (issue 4). It creates
# 150,000 files in its tree measurements, so it is penalised by the deletes
# the benchmarks above made at exit (ext4 recently_deleted(), see
# bench/README.md); BENCH_TRANSFER_SETTLE_S seconds of pause before it
# (default 0) avoid that.
echo
echo "== bench-transfer"
sleep "${BENCH_TRANSFER_SETTLE_S:-0}"
t0=$(date +%s)
"$here/bench-transfer.sh" "$build" | tee -a "$log"
echo "   (bench-transfer took $(($(date +%s) - t0)) s)"

# The solver and scheduler per vertex: a 10,002-vertex graph, every vertex a
# content-key hit (issue 4).
echo
echo "== bench-schedule"
"$here/bench-schedule.sh" "$build/src/cli/kiln" | tee -a "$log"
sed -n 's/^   scheduling overhead: \(.*\)$/RESULT bench-schedule \1/p' "$log" >>"$log.tmp" && cat "$log.tmp" >>"$log" && rm -f "$log.tmp"

# Whole builds, kiln and buildah side by side (needs buildah; installs it).
echo
echo "== bench-dockerfile"
"$here/bench-dockerfile.sh" "$build" 10 | tee -a "$log" | sed 's/^/   /'
sed -n 's/^  \(cached rebuild.*\)$/RESULT bench-dockerfile \1/p' "$log" >>"$log.tmp" && cat "$log.tmp" >>"$log" && rm -f "$log.tmp"

# A fully cached rebuild from a registry and from a layout (hyperfine).
echo
echo "== bench-rebuild"
"$here/bench-rebuild.sh" "$build" | tee -a "$log" | sed 's/^/   /'

# The S3 remote cache against radosgw (issue 12): client vs curl, and a
# build from the bucket vs cold.
echo
echo "== bench-s3"
"$here/bench-s3.sh" "$build" | tee -a "$log" | sed 's/^/   /'

# Re-checking an unchanged 20,000-file context vs find (issue 13).
echo
echo "== bench-context"
"$here/bench-context.sh" "$build" | tee -a "$log" | sed 's/^/   /'

# Layer compression (issue 13): gzip and zstd layers vs pigz and zstd.
echo
echo "== bench-compress"
"$here/bench-compress.sh" "$build" | tee -a "$log" | sed 's/^/   /'

# A cluster push vs the client receiving the image and pushing it, over a
# rate-limited client link (issue 13).
echo
echo "== bench-push"
"$here/bench-push.sh" "$build" | tee -a "$log" | sed 's/^/   /'

echo
echo "== summary ($(($(date +%s) - start)) s; load average now $(cut -d' ' -f1-3 /proc/loadavg))"
sed -n 's/^RESULT //p' "$log"
