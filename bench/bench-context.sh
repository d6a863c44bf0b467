#!/bin/bash
# Re-checking an unchanged build context (issue 13 item 4): a warm,
# fully cached `kiln build` of a 20,000-file context (BENCH_CONTEXT_FILES)
# vs `find CONTEXT -printf '%s %T@\n'` on the same tree, the floor (one
# directory walk with a stat per file), in one run, with hyperfine
# (BENCH_CLI_RUNS runs, default 20, after 3 warm-ups). Target: kiln <= 2x.
#
#   bench/bench-context.sh BUILD_DIR      (a release build)
set -euo pipefail
build=$(cd "${1:?usage: bench-context.sh BUILD_DIR}" && pwd)
ninja -C "$build" src/cli/kiln >/dev/null || { echo "bench-context: cannot build kiln in $build" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "bench-context: hyperfine is not installed (scripts/install-deps.sh)" >&2; exit 1; }
KILN=$build/src/cli/kiln
n=${BENCH_CONTEXT_FILES:-20000}
runs=${BENCH_CLI_RUNS:-20}
work=$(mktemp -d /var/tmp/kiln-bench-context.XXXXXX)
trap 'rm -rf "$work"' EXIT

ctx=$work/ctx
mkdir -p "$ctx"
# 100 files a directory, sizes from 1 byte to 8 KiB.
i=0
while [ "$i" -lt "$n" ]; do
	d=$ctx/d$((i / 100))
	[ -d "$d" ] || mkdir "$d"
	head -c $((1 + (i * 7919) % 8192)) /dev/zero >"$d/f$i"
	i=$((i + 1))
done
printf 'FROM scratch\nCOPY . /ctx\n' >"$ctx/Dockerfile"
export KILN_ROOT=$work/root
"$KILN" build --progress quiet "$ctx" # cold: every file hashed
"$KILN" build --progress quiet "$ctx" # the stat cache is written
echo "== re-checking an unchanged $n-file context: $(nproc) cores"
hyperfine -N -w 3 -r "$runs" --export-json "$work/h.json" \
	"$KILN build --progress quiet $ctx" "find $ctx -printf '%s %T@\n'" >/dev/null
kiln_ms=$(jq '.results[0].median * 1000' "$work/h.json")
find_ms=$(jq '.results[1].median * 1000' "$work/h.json")
python3 - "$kiln_ms" "$find_ms" <<'PY'
import sys
k, f = float(sys.argv[1]), float(sys.argv[2])
print(f"   kiln build (cached) {k:.1f} ms, find {f:.1f} ms (medians); kiln/find {k / f:.2f}")
print(f"RESULT bench-context kiln/find {k / f:.2f} (<= 2.0 wanted)")
PY
