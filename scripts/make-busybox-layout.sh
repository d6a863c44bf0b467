#!/bin/sh
# Build a two-platform (linux/amd64, linux/arm64) busybox OCI image layout.
#
#   make-busybox-layout.sh [--force] DEST
#
# DEST/index.json holds one image index tagged "latest" (annotation
# org.opencontainers.image.ref.name) listing one manifest per platform; each
# image has one gzip layer built from Debian's busybox-static. The output is
# byte-for-byte deterministic for a given busybox-static version.
#
# The .deb files are cached in $KILN_FIXTURE_CACHE (default
# /var/cache/kiln-fixtures), so reruns need no network. An existing
# DEST/index.json means "already built" unless --force is given.
# Needs: apt-get (first run only), dpkg-deb, GNU tar, gzip, sha256sum, jq.
set -eu

prog=make-busybox-layout.sh
force=0
dest=

die() {
	echo "$prog: $*" >&2
	exit 1
}

for arg in "$@"; do
	case "$arg" in
	--force) force=1 ;;
	-h | --help)
		sed -n '2,13p' "$0"
		exit 0
		;;
	-*) die "unknown option $arg" ;;
	*)
		[ -z "$dest" ] || die "only one DEST may be given"
		dest=$arg
		;;
	esac
done
[ -n "$dest" ] || die "usage: $prog [--force] DEST"

if [ -e "$dest/index.json" ] && [ "$force" = 0 ]; then
	exit 0
fi

for tool in dpkg-deb tar gzip sha256sum jq; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

cache=${KILN_FIXTURE_CACHE:-/var/cache/kiln-fixtures}
arches="amd64 arm64"
umask 022
export LC_ALL=C

work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-busybox.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT INT TERM

# cached_deb ARCH: print the cached busybox-static .deb for ARCH, if any.
cached_deb() {
	for f in "$cache"/busybox-static_*_"$1".deb; do
		[ -f "$f" ] && echo "$f" && return 0
	done
	return 0
}

fetch_debs() {
	missing=
	for a in $arches; do
		[ -n "$(cached_deb "$a")" ] || missing="$missing busybox-static:$a"
	done
	[ -n "$missing" ] || return 0
	mkdir -p "$cache"
	# shellcheck disable=SC2086 # word splitting of the package list is wanted
	(cd "$cache" && apt-get download -q $missing) >&2 ||
		die "apt-get download$missing failed (arm64 needs" \
			"'dpkg --add-architecture arm64; apt-get update'," \
			"see scripts/install-deps.sh)"
}

check_versions() {
	v_amd=$(dpkg-deb -f "$(cached_deb amd64)" Version)
	v_arm=$(dpkg-deb -f "$(cached_deb arm64)" Version)
	[ "$v_amd" = "$v_arm" ] ||
		die "busybox-static versions differ in $cache:" \
			"amd64 $v_amd, arm64 $v_arm (remove the older .deb)"
}

# applet_list: applet names from whichever busybox runs here (amd64 first).
applet_list() {
	for a in amd64 arm64; do
		if "$work/deb-$a/bin/busybox" --list >"$work/applets" 2>/dev/null; then
			grep -vx busybox "$work/applets" | sort -u
			return 0
		fi
	done
	die "cannot run busybox --list (neither amd64 nor arm64 runs here)"
}

write_etc() {
	root=$1
	mkdir -p "$root/etc"
	cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
builder:x:1000:1000:builder:/home/builder:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
	cat >"$root/etc/group" <<'EOF'
root:x:0:
builder:x:1000:
nogroup:x:65534:
EOF
	chmod 0644 "$root/etc/passwd" "$root/etc/group"
}

make_rootfs() {
	a=$1
	root=$work/rootfs-$a
	mkdir -p "$root/bin" "$root/tmp" "$root/root" "$root/home/builder"
	install -m 0755 "$work/deb-$a/bin/busybox" "$root/bin/busybox"
	while read -r applet; do
		ln -s busybox "$root/bin/$applet"
	done <"$work/applet-names"
	write_etc "$root"
	chmod 1777 "$root/tmp"
	chmod 0700 "$root/root"
	chmod 0755 "$root/home" "$root/home/builder" "$root/bin"
}

make_layer() {
	root=$work/rootfs-$1
	# shellcheck disable=SC2046 # top-level names, no spaces
	tar -C "$root" --sort=name --mtime=@0 --owner=0 --group=0 \
		--numeric-owner --format=posix \
		--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
		-cf "$work/layer-$1.tar" $(ls -A "$root" | sort)
	gzip -n -9 <"$work/layer-$1.tar" >"$work/layer-$1.tar.gz"
}

sha() {
	sha256sum "$1" | cut -d' ' -f1
}

size() {
	stat -c %s "$1"
}

# put_blob FILE: copy FILE into the layout's blobs and print its digest hex.
put_blob() {
	h=$(sha "$1")
	cp "$1" "$out/blobs/sha256/$h"
	echo "$h"
}

variant_of() {
	[ "$1" = arm64 ] && echo v8 || echo ""
}

make_config() {
	a=$1
	jq -n -c --arg arch "$a" --arg variant "$(variant_of "$a")" \
		--arg diff "sha256:$(sha "$work/layer-$a.tar")" '{
		architecture: $arch, os: "linux"}
		+ (if $variant == "" then {} else {variant: $variant} end)
		+ {config: {Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
			    Cmd: ["sh"]},
		   rootfs: {type: "layers", diff_ids: [$diff]},
		   history: [{created_by: "scripts/make-busybox-layout.sh"}]}' \
		>"$work/config-$a.json"
}

make_manifest() {
	a=$1
	c=$(put_blob "$work/config-$a.json")
	l=$(put_blob "$work/layer-$a.tar.gz")
	jq -n -c --arg c "sha256:$c" --argjson cs "$(size "$work/config-$a.json")" \
		--arg l "sha256:$l" --argjson ls "$(size "$work/layer-$a.tar.gz")" '{
		schemaVersion: 2,
		mediaType: "application/vnd.oci.image.manifest.v1+json",
		config: {mediaType: "application/vnd.oci.image.config.v1+json",
			 digest: $c, size: $cs},
		layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
			  digest: $l, size: $ls}]}' >"$work/manifest-$a.json"
}

manifest_desc() {
	a=$1
	m=$(put_blob "$work/manifest-$a.json")
	jq -n -c --arg d "sha256:$m" --argjson s "$(size "$work/manifest-$a.json")" \
		--arg arch "$a" --arg variant "$(variant_of "$a")" '{
		mediaType: "application/vnd.oci.image.manifest.v1+json",
		digest: $d, size: $s,
		platform: ({architecture: $arch, os: "linux"}
			   + (if $variant == "" then {} else {variant: $variant} end))}'
}

make_index() {
	for a in $arches; do
		manifest_desc "$a"
	done | jq -s -c '{schemaVersion: 2,
		mediaType: "application/vnd.oci.image.index.v1+json",
		manifests: .}' >"$work/image-index.json"
	i=$(put_blob "$work/image-index.json")
	jq -n -c --arg d "sha256:$i" --argjson s "$(size "$work/image-index.json")" '{
		schemaVersion: 2,
		mediaType: "application/vnd.oci.image.index.v1+json",
		manifests: [{mediaType: "application/vnd.oci.image.index.v1+json",
			     digest: $d, size: $s,
			     annotations: {"org.opencontainers.image.ref.name": "latest"}}]}' \
		>"$out/index.json"
}

# validate DIR: every descriptor reachable from index.json names a blob of
# the right size and digest.
validate() {
	dir=$1
	jq -e '.schemaVersion == 2' "$dir/index.json" >/dev/null
	jq -e '.imageLayoutVersion == "1.0.0"' "$dir/oci-layout" >/dev/null
	for f in "$dir/index.json" "$dir"/blobs/sha256/*; do
		# Layers are not JSON: jq fails on them and they are skipped.
		jq -r '.. | objects | select(has("digest") and has("size"))
			| "\(.digest) \(.size)"' "$f" 2>/dev/null || true
	done | sort -u | while read -r d s; do
		f=$dir/blobs/sha256/${d#sha256:}
		[ -f "$f" ] || die "validate: missing blob $d"
		[ "$(size "$f")" = "$s" ] || die "validate: size of $d is not $s"
		[ "sha256:$(sha "$f")" = "$d" ] || die "validate: digest of $d"
	done
	if command -v skopeo >/dev/null 2>&1; then
		skopeo inspect --raw "oci:$dir:latest" >/dev/null ||
			die "validate: skopeo cannot read $dir"
	fi
}

fetch_debs
check_versions
for a in $arches; do
	dpkg-deb -x "$(cached_deb "$a")" "$work/deb-$a"
done
applet_list >"$work/applet-names"

out=$work/layout
mkdir -p "$out/blobs/sha256"
printf '{"imageLayoutVersion":"1.0.0"}\n' >"$out/oci-layout"
for a in $arches; do
	make_rootfs "$a"
	make_layer "$a"
	make_config "$a"
	make_manifest "$a"
done
make_index
validate "$out"

# Publish: index.json goes last, as it marks the layout complete.
mkdir -p "$dest/blobs/sha256"
rm -f "$dest/index.json"
cp "$out/oci-layout" "$dest/oci-layout"
cp "$out"/blobs/sha256/* "$dest/blobs/sha256/"
cp "$out/index.json" "$dest/index.json"
