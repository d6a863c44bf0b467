#!/bin/sh
# Installs everything kiln needs to build, test and run on Debian 12 (as root).
# Idempotent: safe to run again.
set -eu

if [ "$(id -u)" != 0 ]; then
	echo "install-deps.sh: must run as root (apt-get, mounts)" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# arm64 packages are needed for the multi-arch busybox fixture.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
	dpkg --add-architecture arm64
fi

apt-get update -qq
apt-get install -y -qq --no-install-recommends \
	build-essential meson ninja-build pkg-config clang \
	libssl-dev libcurl4-openssl-dev libjansson-dev libsqlite3-dev \
	libarchive-dev libzstd-dev zlib1g-dev libmicrohttpd-dev libgnutls28-dev libcmocka-dev \
	runc uidmap busybox-static \
	qemu-user-static binfmt-support \
	ca-certificates curl jq sqlite3 file python3 git openssh-client gcc-aarch64-linux-gnu \
	docker-registry skopeo umoci apache2-utils openssl gettext-base bzip2 hyperfine pigz zstd \
	radosgw ceph-mon ceph-osd ceph-common iptables \
	>/dev/null

# binfmt_misc lets arm64 binaries run through qemu-user (the embedded worker's
# emulated platform). A fresh machine has it unmounted.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
	mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
fi
update-binfmts --enable qemu-aarch64 2>/dev/null || true
