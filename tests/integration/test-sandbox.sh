#!/bin/bash
# Issue 14 item 2 (part): a step's sandbox. A static probe
# (sandbox-probe.c), built here for amd64 and arm64, runs as a RUN step of
# a two-platform build and tries what the sandbox must refuse: making a
# user or mount namespace (unshare, and clone with CLONE_NEWUSER),
# clone3 (ENOSYS, so libc falls back to clone), keyrings, mounting, bpf;
# and reads no_new_privs. A fork must still work. Natively (amd64) each
# refusal is the seccomp filter's EPERM; under qemu (arm64 on an x86
# host) qemu answers some calls itself, so there only "refused" is
# required. A cache mount asked for mode 06777 gets 0777: no setuid,
# setgid or sticky directory on the host.
. "$(dirname "$0")/lib.sh"
command -v gcc >/dev/null || fail "gcc is not installed"
command -v aarch64-linux-gnu-gcc >/dev/null || fail "aarch64-linux-gnu-gcc is not installed (scripts/install-deps.sh)"

CTX="$T/ctx"
mkdir -p "$CTX"
gcc -static -O2 -o "$CTX/probe-amd64" "$KILN_SOURCE_ROOT/tests/integration/sandbox-probe.c" ||
	fail "cannot build the amd64 probe"
aarch64-linux-gnu-gcc -static -O2 -o "$CTX/probe-arm64" "$KILN_SOURCE_ROOT/tests/integration/sandbox-probe.c" ||
	fail "cannot build the arm64 probe"
cat >"$CTX/Dockerfile" <<'DF'
FROM busybox
ARG TARGETARCH
COPY probe-${TARGETARCH} /probe
RUN /probe > /probe.out
RUN --mount=type=cache,target=/c,mode=06777 stat -c %a /c > /cache-mode
DF
kbuild --platform linux/amd64,linux/arm64 \
	--build-context "busybox=oci-layout://$LAYOUT:latest" -o "$T/out" "$CTX" ||
	fail "the probe build: $(tail -5 "$T/progress.json")"

NATIVE=linux_amd64
EMULATED=linux_arm64
if [ "$(uname -m)" = aarch64 ]; then NATIVE=linux_arm64; EMULATED=linux_amd64; fi
assert_eq "$(cat "$T/out/$NATIVE/probe.out")" "no_new_privs 1
unshare-user EPERM
unshare-mount EPERM
clone-newuser EPERM
clone3 ENOSYS
keyctl EPERM
mount-tmpfs EPERM
bpf EPERM
fork ok" "what the native step may do"
E="$T/out/$EMULATED/probe.out"
assert_eq "$(grep -c . "$E")" 9 "lines of the emulated probe: $(cat "$E")"
assert_eq "$(grep '^no_new_privs' "$E")" "no_new_privs 1" "no_new_privs under emulation"
assert_eq "$(grep '^fork' "$E")" "fork ok" "fork under emulation"
! grep -v '^fork\|^no_new_privs' "$E" | grep -q ' ok$' ||
	fail "an emulated step did what the sandbox must refuse: $(cat "$E")"

for p in linux_amd64 linux_arm64; do
	assert_eq "$(cat "$T/out/$p/cache-mode")" 777 "a cache mount asked for mode 06777 ($p): no setuid, setgid or sticky bit on the host"
done

assert_no_mounts
echo "ok: steps run with no_new_privs and a seccomp filter, natively and emulated"
