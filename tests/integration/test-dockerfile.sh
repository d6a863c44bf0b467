#!/bin/bash
# Two-platform Dockerfile builds on one machine: a $BUILDPLATFORM stage runs
# once, natively; the final stages run per platform (arm64 through binfmt,
# marked emulated); the exported images run under runc; a fully cached
# rebuild runs nothing; an edit reruns only what depends on it.
. "$(dirname "$0")/lib.sh"
command -v umoci >/dev/null || fail "umoci is not installed (scripts/install-deps.sh)"
command -v skopeo >/dev/null || fail "skopeo is not installed (scripts/install-deps.sh)"

CTX="$T/ctx"
mkdir -p "$CTX/src"
echo "message one" >"$CTX/src/message.txt"
echo "untouched" >"$CTX/other.txt"
cat >"$CTX/Dockerfile" <<'DF'
ARG BASE
FROM --platform=$BUILDPLATFORM ${BASE} AS build
ARG BUILDPLATFORM
COPY src/ /src/
RUN mkdir -p /out && echo "built on $BUILDPLATFORM ($(uname -m))" > /out/built.txt && tr a-z A-Z < /src/message.txt > /out/MESSAGE

FROM ${BASE} AS final
ARG TARGETARCH
COPY other.txt /other.txt
COPY --from=build /out/ /app/
RUN echo "$TARGETARCH $(uname -m)" > /app/arch.txt
CMD ["cat", "/app/arch.txt", "/app/built.txt", "/app/MESSAGE"]
DF
ARGS=(--platform linux/amd64,linux/arm64 --build-arg "BASE=oci-layout://$LAYOUT:latest")

kbuild "${ARGS[@]}" -o "type=oci,dest=$T/new/dir/img.tar,name=app:1" -o "$T/out" "$CTX" ||
	fail "two-platform build: $(tail -3 "$T/progress.json")"
mv "$T/new/dir/img.tar" "$T/img.tar" # (missing parent directories are created)

# The build stage ran once, on the native platform, not emulated.
build_runs=$(events | jq -r 'select(.status == "done" and ((.name // "") | test(" build [0-9]"))) | .name' | sort)
assert_eq "$(wc -l <<<"$build_runs")" "2" "build-stage steps run (COPY + RUN, once each)"
has_event '((.name // "") | test(" build [0-9]")) and .status == "running" and .platform == "linux/amd64" and .emulated == false' ||
	fail "build stage not native linux/amd64"
has_event '((.name // "") | test(" build [0-9]")) and .status == "running" and .platform == "linux/arm64"' &&
	fail "build stage ran for arm64 too"
# Final-stage RUN: once per platform, arm64 emulated.
has_event '((.name // "") | test("linux/arm64.*RUN")) and .status == "running" and .emulated == true and .platform == "linux/arm64"' ||
	fail "arm64 RUN not marked emulated"
has_event '((.name // "") | test("linux/amd64.*RUN")) and .status == "running" and .emulated == false' ||
	fail "amd64 RUN should be native"

# type=local with several platforms: one directory each.
assert_eq "$(cat "$T/out/linux_amd64/app/arch.txt")" "amd64 x86_64" "amd64 result"
assert_eq "$(cat "$T/out/linux_arm64/app/arch.txt")" "arm64 aarch64" "arm64 result"
assert_eq "$(cat "$T/out/linux_arm64/app/built.txt")" "built on linux/amd64 (x86_64)" "arm64 image holds the native build output"

# The OCI archive: one index, a manifest per platform with the right config.
skopeo inspect --raw "oci-archive:$T/img.tar:app:1" >"$T/index.json" || fail "skopeo cannot read the archive"
assert_eq "$(jq -r '[.manifests[].platform | .os + "/" + .architecture] | sort | join(",")' "$T/index.json")" \
	"linux/amd64,linux/arm64" "index platforms"
for arch in amd64 arm64; do
	skopeo inspect --config --override-arch "$arch" "oci-archive:$T/img.tar:app:1" >"$T/config-$arch.json" ||
		fail "no $arch config"
	assert_eq "$(jq -r .architecture "$T/config-$arch.json")" "$arch" "$arch config architecture"
done

# The images run under the OCI runtime: unpack each with umoci, run with runc.
run_image() { # ARCH
	local arch=$1 dir="$T/run-$1"
	mkdir -p "$dir"
	skopeo copy -q --override-arch "$arch" "oci-archive:$T/img.tar:app:1" "oci:$dir/layout:img" ||
		fail "skopeo copy $arch"
	umoci unpack --image "$dir/layout:img" "$dir/bundle" >/dev/null || fail "umoci unpack $arch"
	jq '.process.terminal = false' "$dir/bundle/config.json" >"$dir/config.json" &&
		mv "$dir/config.json" "$dir/bundle/config.json"
	(cd "$dir/bundle" && runc run "kiln-it-$arch-$$") >"$dir/stdout" 2>"$dir/stderr" ||
		fail "runc run $arch: $(cat "$dir/stderr")"
	cat "$dir/stdout"
}
amd64_out=$(run_image amd64)
assert_contains "$amd64_out" "amd64 x86_64" "amd64 image output"
assert_contains "$amd64_out" "MESSAGE ONE" "amd64 image output"
arm64_out=$(run_image arm64)
assert_contains "$arm64_out" "arm64 aarch64" "arm64 image output (through binfmt)"

# Fully cached rebuild: no step runs; the image digest is the same.
skopeo inspect --raw "oci-archive:$T/img.tar:app:1" | sha256sum >"$T/digest1"
kbuild "${ARGS[@]}" -o "type=oci,dest=$T/img2.tar,name=app:1" "$CTX" || fail "cached rebuild"
assert_eq "$(vertices_run)" "" "steps run in a cached rebuild"
skopeo inspect --raw "oci-archive:$T/img2.tar:app:1" | sha256sum >"$T/digest2"
cmp -s "$T/digest1" "$T/digest2" || fail "cached rebuild gave another index"

# Edit the file only the build stage COPYs: the build stage reruns (once),
# then only the final stages' steps after COPY --from; COPY other.txt stays.
echo "message two" >"$CTX/src/message.txt"
kbuild "${ARGS[@]}" -o "$T/out3" "$CTX" || fail "rebuild after edit"
ran=$(vertices_run | sed -n 's/^\[linux\/[a-z0-9]* \([a-z]*\) [0-9/]*\] \([A-Z]*\) \([^ ]*\).*/\1 \2 \3/p' | sort | uniq -c | awk '{print $1" "$2" "$3" "$4}' | tr '\n' ',')
assert_eq "$ran" "1 build COPY src/,1 build RUN mkdir,2 final COPY --from=build,2 final RUN echo," "steps rerun after an edit"
has_event '((.name // "") | test("COPY other.txt")) and .status == "cached"' || fail "COPY other.txt should stay cached"
assert_eq "$(cat "$T/out3/linux_arm64/app/MESSAGE")" "MESSAGE TWO" "edited content reached arm64"

# Reproducible: with SOURCE_DATE_EPOCH, two cold builds in separate state
# roots (every step really runs twice) give the same image digests.
for n in 1 2; do
	SOURCE_DATE_EPOCH=1700000000 KILN_ROOT="$T/root-repro-$n" \
		kbuild "${ARGS[@]}" -o "type=oci,dest=$T/repro-$n.tar,name=app:1" "$CTX" ||
		fail "reproducible build $n: $(tail -3 "$T/progress.json")"
	[ -n "$(vertices_run)" ] || fail "reproducible build $n ran nothing (not cold)"
	skopeo inspect --raw "oci-archive:$T/repro-$n.tar:app:1" | sha256sum >"$T/repro-$n.digest"
done
cmp -s "$T/repro-1.digest" "$T/repro-2.digest" || fail "SOURCE_DATE_EPOCH builds differ"
skopeo inspect --config --override-arch arm64 "oci-archive:$T/repro-1.tar:app:1" >"$T/repro-config.json"
assert_eq "$(jq -r .created "$T/repro-config.json")" "2023-11-14T22:13:20Z" "created from SOURCE_DATE_EPOCH"

assert_no_mounts
assert_fsck_clean
echo "ok: two-platform Dockerfile builds"
