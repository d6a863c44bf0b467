#!/bin/bash
# The S3 remote cache on a real S3 (Ceph's radosgw on loopback, memstore),
# issue 12's figures, each against a baseline measured in the same run:
#
#   1. 1 GiB of random bytes up and down through kiln's S3 client
#      (tests/integration/s3-tool: kiln_s3_put_fd, multipart, 4 parts in
#      flight; kiln_s3_get_fd) vs curl --aws-sigv4 on the same radosgw
#      (one PUT, one GET). Ratio = curl's time / kiln's (target >= 0.8).
#   2. A two-platform build from an empty KILN_ROOT with everything in the
#      bucket (--cache-from type=s3) vs the same build cold. Ratio = cold
#      time / cached time.
#
#   bench/bench-s3.sh BUILD_DIR      (as root; a release build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=$(cd "${1:?usage: bench-s3.sh BUILD_DIR}" && pwd)
ninja -C "$build" src/cli/kiln tests/integration/s3-tool >/dev/null || { echo "bench-s3: cannot build kiln and s3-tool in $build" >&2; exit 1; }
export KILN="$build/src/cli/kiln" KILN_SOURCE_ROOT="$here/.."
export S3_MEMSTORE_BYTES=${S3_MEMSTORE_BYTES:-4294967296}
. "$here/../tests/integration/lib.sh"
. "$here/../tests/integration/s3-lib.sh"
TOOL="$build/tests/integration/s3-tool"

s3_start "$T/s3" >/dev/null
export AWS_ACCESS_KEY_ID=$S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET_KEY
export S3_TIMEOUT_MS=600000 S3_CONNECT_TIMEOUT_MS=2000
ms() { echo $(($(date +%s%N) / 1000000)); }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
mibps() { python3 -c "print(f'{1024 * 1000 / $1:.0f}')"; }

SIZE_MIB=${BENCH_S3_MIB:-1024}
head -c $((SIZE_MIB << 20)) /dev/urandom >"$T/blob"
sum=$(sha256sum "$T/blob" | cut -d' ' -f1)
echo "== S3 client vs curl --aws-sigv4, ${SIZE_MIB} MiB, radosgw at $S3_ENDPOINT"

t0=$(ms); "$TOOL" put bench/kiln "$T/blob" >/dev/null; up_kiln=$(($(ms) - t0))
t0=$(ms); s3_curl -sS -f -T "$T/blob" "$S3_ENDPOINT/$S3_BUCKET/bench/curl" >/dev/null; up_curl=$(($(ms) - t0))
t0=$(ms); "$TOOL" get bench/kiln "$T/back.kiln" >/dev/null; down_kiln=$(($(ms) - t0))
t0=$(ms); s3_curl -sS -f -o "$T/back.curl" "$S3_ENDPOINT/$S3_BUCKET/bench/curl"; down_curl=$(($(ms) - t0))
[ "$(sha256sum <"$T/back.kiln" | cut -d' ' -f1)" = "$sum" ] || fail "kiln read back other bytes"
[ "$(sha256sum <"$T/back.curl" | cut -d' ' -f1)" = "$sum" ] || fail "curl read back other bytes"
echo "   upload:   kiln ${up_kiln} ms ($(mibps $((up_kiln * 1024 / SIZE_MIB))) MiB/s), curl ${up_curl} ms; ratio $(ratio "$up_curl" "$up_kiln")"
echo "   download: kiln ${down_kiln} ms ($(mibps $((down_kiln * 1024 / SIZE_MIB))) MiB/s), curl ${down_curl} ms; ratio $(ratio "$down_curl" "$down_kiln")"
echo "RESULT bench-s3 upload kiln/curl $(ratio "$up_curl" "$up_kiln") download $(ratio "$down_curl" "$down_kiln") (>= 0.8 wanted)"
rm -f "$T/blob" "$T/back.kiln" "$T/back.curl"

echo "== a two-platform build: everything in the bucket vs cold"
CTX="$T/ctx"
mkdir -p "$CTX"
cat >"$CTX/Dockerfile" <<'DF'
ARG BASE
FROM ${BASE}
RUN i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; seq 1 200000 > /numbers
COPY f /f
RUN sort -r /numbers | head -5 > /top && cat /f >> /top
DF
printf 'bench\n' >"$CTX/f"
spec="type=s3,bucket=$S3_BUCKET,prefix=bench-build,region=$S3_REGION,endpoint_url=$S3_ENDPOINT,use_path_style=true"
B=(--progress quiet --platform linux/amd64,linux/arm64 --build-arg "BASE=oci-layout://$LAYOUT:latest")
t0=$(ms); KILN_ROOT="$T/cold" "$KILN" build "${B[@]}" --cache-to "$spec,mode=max" "$CTX"; cold=$(($(ms) - t0))
t0=$(ms); KILN_ROOT="$T/warm" "$KILN" build "${B[@]}" --cache-from "$spec" "$CTX"; warm=$(($(ms) - t0))
echo "   cold build (and export): ${cold} ms; from the bucket into an empty root: ${warm} ms"
echo "RESULT bench-s3 build cold/from-bucket $(ratio "$cold" "$warm")"
