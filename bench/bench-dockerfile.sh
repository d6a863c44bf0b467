#!/bin/bash
# Two-platform multi-stage Dockerfile, kiln side by side with buildah on the
# same machine, the same Dockerfile and the same base image (pushed to a
# local docker-registry). Reports the cold build and the median of fully
# cached rebuilds for each, and buildah/kiln ratios (higher = kiln faster).
# Target (issue 3): kiln's fully cached rebuild <= 100 ms median.
# Run by hand as root: bench/bench-dockerfile.sh [BUILD_DIR] [RUNS]
set -euo pipefail
SRC=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-$SRC/build}
RUNS=${2:-10}
KILN="$BUILD/src/cli/kiln"
[ -x "$KILN" ] || { echo "build kiln first (meson setup build && ninja -C build)" >&2; exit 1; }
command -v buildah >/dev/null || apt-get install -y -qq buildah >/dev/null
command -v skopeo >/dev/null || { echo "skopeo missing (scripts/install-deps.sh)" >&2; exit 1; }

T=$(mktemp -d /var/tmp/kiln-bench-df.XXXXXX)
. "$SRC/tests/integration/registry-lib.sh"
BROOT="$T/buildah-root"
cleanup() {
	registry_stop || true
	buildah --root "$BROOT" --runroot "$T/buildah-run" rm -a >/dev/null 2>&1 || true
	buildah --root "$BROOT" --runroot "$T/buildah-run" rmi -a -f >/dev/null 2>&1 || true
	awk -v p="$T" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
		while read -r m; do umount -l "$m" 2>/dev/null || true; done
	rm -rf --one-file-system "$T"
	[ -c /dev/null ] || { echo "bench-dockerfile: /dev/null was replaced (restoring)" >&2; rm -f /dev/null; mknod -m 666 /dev/null c 1 3; }
}
trap cleanup EXIT

LAYOUT=${KILN_FIXTURE_DIR:-/var/tmp/kiln-fixtures}/busybox
[ -e "$LAYOUT/index.json" ] || "$SRC/scripts/make-busybox-layout.sh" "$LAYOUT" >&2
registry_start "$T/reg" none >/dev/null
skopeo copy -q --all --dest-tls-verify=false "oci:$LAYOUT:latest" "docker://$REGISTRY/bench/busybox:latest"

mkdir -p "$T/ctx/src"
for i in $(seq 1 20); do echo "source file $i" >"$T/ctx/src/f$i.txt"; done
cat >"$T/ctx/Dockerfile" <<DF
FROM --platform=\$BUILDPLATFORM $REGISTRY/bench/busybox:latest AS build
WORKDIR /src
COPY src/ ./
RUN cat *.txt | sort > /all.txt && wc -l /all.txt
FROM --platform=\$BUILDPLATFORM $REGISTRY/bench/busybox:latest AS tools
RUN echo tools > /tools.txt
FROM $REGISTRY/bench/busybox:latest
COPY --from=build /all.txt /app/all.txt
COPY --from=tools /tools.txt /app/tools.txt
RUN uname -m > /app/arch.txt
CMD ["cat", "/app/arch.txt"]
DF

ms() { echo $(( $(date +%s%N) / 1000000 )); }
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

export KILN_ROOT="$T/kiln-root"
kiln_build() { "$KILN" build --progress quiet --platform linux/amd64,linux/arm64 "$@" "$T/ctx"; }
buildah_build() {
	buildah --root "$BROOT" --runroot "$T/buildah-run" build -q --layers --tls-verify=false \
		--platform linux/amd64,linux/arm64 --manifest bench-list "$T/ctx" >/dev/null
}

t0=$(ms); kiln_build; kiln_cold=$(( $(ms) - t0 ))
for _ in $(seq "$RUNS"); do t0=$(ms); kiln_build; echo $(( $(ms) - t0 )); done >"$T/kiln.txt"
for _ in $(seq "$RUNS"); do t0=$(ms); kiln_build -o "type=oci,dest=$T/img.tar"; echo $(( $(ms) - t0 )); done >"$T/kiln-oci.txt"

t0=$(ms); buildah_build; buildah_cold=$(( $(ms) - t0 ))
for _ in $(seq "$RUNS"); do
	buildah --root "$BROOT" --runroot "$T/buildah-run" manifest rm bench-list >/dev/null 2>&1 || true
	t0=$(ms); buildah_build; echo $(( $(ms) - t0 ))
done >"$T/buildah.txt"

kiln_warm=$(median <"$T/kiln.txt")
kiln_oci=$(median <"$T/kiln-oci.txt")
buildah_warm=$(median <"$T/buildah.txt")
echo "bench-dockerfile: two platforms (linux/amd64 + linux/arm64 via QEMU), multi-stage, $RUNS runs"
printf '  cold build         kiln %6d ms   buildah %6d ms   buildah/kiln %.1fx\n' \
	"$kiln_cold" "$buildah_cold" "$(echo "$buildah_cold / $kiln_cold" | bc -l)"
printf '  cached rebuild     kiln %6s ms   buildah %6s ms   buildah/kiln %.1fx   (median; target kiln <= 100 ms)\n' \
	"$kiln_warm" "$buildah_warm" "$(echo "$buildah_warm / $kiln_warm" | bc -l)"
printf '  cached + OCI tar   kiln %6s ms   (median, with -o type=oci)\n' "$kiln_oci"
