#!/bin/bash
# Dockerfile conformance: every case in cases/NAME is a build context with a
# Dockerfile and either check.sh (assertions on the exported root file
# system $ROOTFS and the image config $CONFIG) or expect-error (one
# expected fragment of the error per line). An optional `expect-output`
# lists fragments (one a line) the build's progress output (JSON lines,
# e.g. a {"warning": ...}) must contain. An optional `args` file holds
# extra `kiln build` arguments (shell words; $CASE, $LAYOUT, $HTTP, $GIT (a
# git:// daemon serving repo.git) and $REGISTRY are expanded). Every case
# builds FROM ${BASE}: the busybox fixture, pushed to a local
# docker-registry.
#
# Each case runs in every mode of $KILN_CONFORMANCE_MODES (default
# "embedded cluster"): `kiln build` on the embedded engine, and
# `kiln build --addr` on a cluster on loopback (kilnd, a linux/amd64 and an
# emulated linux/arm64 kiln-worker: cluster.sh). A case is built for
# linux/amd64 and linux/arm64 unless its args pass --platform; check.sh
# then sees the linux/amd64 image. With SOURCE_DATE_EPOCH fixed, the OCI
# archives of the modes must be byte-identical; where they are not, the
# difference is shown blob by blob.
#
# Goldens: every case that builds an image also holds, for each platform
# it builds, the file list of the layers the build added to its base
# (expect-files) and the image config (expect-config), which
# image-list.py computes from the OCI archive (its header has the
# format). One file serves every platform when they are the same;
# otherwise there is one per platform, suffixed with its name
# (expect-files.linux_amd64, expect-files.linux_arm64; the name the local
# exporter gives the platform's directory); $HTTP, $GIT, $REGISTRY,
# $CASE and $LAYOUT, which change from run to run, appear in them as
# ${HTTP}, .... Each mode's archive is listed and compared; a difference
# is shown as a unified diff (- golden, + actual) naming the case, mode
# and platform. With
# KILN_CONFORMANCE_UPDATE=1 the first mode writes the goldens of the
# cases run instead (the other modes then compare against them): review
# the diff before committing it (tests/conformance/README.md).
# Usage: [KILN_CONFORMANCE_MODES="embedded cluster"] [KILN_CONFORMANCE_UPDATE=1]
#        run.sh [CASE...]
set -euo pipefail
: "${KILN_SOURCE_ROOT:?KILN_SOURCE_ROOT must name the source tree (meson test sets it)}"
. "$KILN_SOURCE_ROOT/tests/integration/lib.sh"
. "$KILN_SOURCE_ROOT/tests/integration/registry-lib.sh"

CASES="$KILN_SOURCE_ROOT/tests/conformance/cases"
LISTER="$KILN_SOURCE_ROOT/tests/conformance/image-list.py"
# The interpreter itself, not a wrapper that finds it on every start
# (pyenv's shim costs more than the listing).
PYTHON=$(python3 -c 'import sys; print(sys.executable)')
UPDATE=${KILN_CONFORMANCE_UPDATE:-}
case "$UPDATE" in '' | 0) UPDATE= ;; 1) ;; *) fail "KILN_CONFORMANCE_UPDATE=$UPDATE: want 1 (write the goldens) or 0" ;; esac
PLATFORMS=linux/amd64,linux/arm64
BUILD_TIMEOUT=${KILN_CONFORMANCE_BUILD_TIMEOUT:-300}
read -ra MODES <<<"${KILN_CONFORMANCE_MODES:-embedded cluster}"
[ ${#MODES[@]} -gt 0 ] || fail "KILN_CONFORMANCE_MODES is empty"
for m in "${MODES[@]}"; do
	case "$m" in
	embedded | cluster) ;;
	*) fail "KILN_CONFORMANCE_MODES: unknown mode '$m' (embedded, cluster)" ;;
	esac
done
command -v skopeo >/dev/null || fail "skopeo is not installed (scripts/install-deps.sh)"

# Reproducible archives: new layers' mtimes clamped, `created` fixed.
export SOURCE_DATE_EPOCH=1700000000

# A plain HTTP server for ADD <url> cases, on a free loopback port.
HTTP_DIR="$T/http"
mkdir -p "$HTTP_DIR"
printf 'downloaded content\n' >"$HTTP_DIR/file.txt"
HTTP_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server "$HTTP_PORT" --bind 127.0.0.1 --directory "$HTTP_DIR" >/dev/null 2>&1 &
BG_PID=$!
HTTP="http://127.0.0.1:$HTTP_PORT"
for _ in $(seq 1 50); do curl -fs "$HTTP/file.txt" >/dev/null && break; sleep 0.1; done

# A git daemon for ADD <git URL> cases (git:// on loopback): repo.git has
# two commits on main, a branch `old` and an annotated tag v1 at the
# first, and a subdirectory sub/.
GIT_DIR_SRV="$T/git"
mkdir -p "$GIT_DIR_SRV/work"
(
	cd "$GIT_DIR_SRV/work"
	export GIT_AUTHOR_DATE=@1700000000 GIT_COMMITTER_DATE=@1700000000 \
		GIT_AUTHOR_NAME=kiln GIT_AUTHOR_EMAIL=kiln@example.com \
		GIT_COMMITTER_NAME=kiln GIT_COMMITTER_EMAIL=kiln@example.com \
		GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
	git init -q -b main .
	printf 'first\n' >a.txt
	mkdir sub
	printf 'inner\n' >sub/s.txt
	printf '#!/bin/sh\necho run\n' >run.sh
	chmod 755 run.sh
	git add . && git commit -qm one && git tag -a v1 -m v1 && git branch old
	printf 'second\n' >b.txt
	git add . && git commit -qm two
	git clone -q --bare . "$GIT_DIR_SRV/repo.git"
) >"$T/git-setup.log" 2>&1 || fail "cannot create the git repository: $(cat "$T/git-setup.log")"
GIT_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
git daemon --base-path="$GIT_DIR_SRV" --export-all --reuseaddr --listen=127.0.0.1 \
	--port="$GIT_PORT" --pid-file="$T/git-daemon.pid" >"$T/git-daemon.log" 2>&1 &
GIT_DAEMON_PID=$!
CLEANUP_HOOKS+=('kill "$GIT_DAEMON_PID" 2>/dev/null')
GIT="git://127.0.0.1:$GIT_PORT"
for _ in $(seq 1 50); do git ls-remote "$GIT/repo.git" >/dev/null 2>&1 && break; sleep 0.1; done
git ls-remote "$GIT/repo.git" >/dev/null 2>&1 || fail "git daemon did not start: $(cat "$T/git-daemon.log")"

# The base image in a registry both modes pull from (the cases are about
# pulls; it-cluster-oci-layout covers layouts), with the fixture's digests.
registry_with_busybox "$T/registry"
assert_eq "sha256:$(skopeo inspect --raw --tls-verify=false "docker://$REGISTRY/busybox:latest" | sha256sum | cut -d' ' -f1)" \
	"$(jq -r '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == "latest") | .digest' "$LAYOUT/index.json")" \
	"digest of the busybox index in $REGISTRY (skopeo must not rewrite it)"
BASE="$REGISTRY/busybox:latest"
# The same image where Docker Hub keeps a short name ("busybox" is
# docker.io/library/busybox): cases that name it so map docker.io here
# with --registry-endpoint, and so do the cluster's daemons.
registry_push_busybox library/busybox
CLUSTER_REGISTRY_ENDPOINT="docker.io=$REGISTRY"

case " ${MODES[*]} " in *" cluster "*)
	. "$KILN_SOURCE_ROOT/tests/conformance/cluster.sh"
	cluster_start "$T/cluster"
	;;
esac

# kiln build in MODE, progress (JSON lines) to $T/progress.json.
mode_build() { # MODE ARGS...
	local mode=$1 rc=0
	shift
	case "$mode" in
	embedded) KILN_ROOT="$T/embedded" timeout -k 5 "$BUILD_TIMEOUT" "$KILN" build --progress json "$@" ;;
	cluster) KILN_ROOT="$T/cluster/client" timeout -k 5 "$BUILD_TIMEOUT" \
		"$KILN" build "${CLUSTER_CLIENT_ARGS[@]}" --progress json "$@" ;;
	esac 2>"$T/progress.json" || rc=$?
	[ "$mode" != cluster ] || cluster_note_steps "$T/progress.json"
	[ "$rc" != 124 ] || echo "no result after ${BUILD_TIMEOUT}s: killed" >>"$T/progress.json"
	return $rc
}

# Unpack OCI archive $1 into directory $2.
oci_unpack() {
	rm -rf --one-file-system "$2" && mkdir -p "$2" && tar -xf "$1" -C "$2"
}

blob() { # LAYOUT-DIR DIGEST
	echo "$1/blobs/${2%%:*}/${2#*:}"
}

# The image config of OCI archive $1 into $2 (of its linux/amd64 image when
# it holds several); the number of platforms in OCI_PLATFORMS.
oci_config() {
	local dir="$T/oci.$$" top man cfg
	oci_unpack "$1" "$dir"
	top=$(jq -r '.manifests[0].digest' "$dir/index.json")
	OCI_PLATFORMS=$(jq -r 'if .manifests then .manifests | length else 1 end' "$(blob "$dir" "$top")")
	man=$(jq -r 'if .manifests then ((.manifests | map(select(.platform.os == "linux" and
		.platform.architecture == "amd64"))) + .manifests)[0].digest else empty end' "$(blob "$dir" "$top")")
	[ -n "$man" ] || man=$top
	cfg=$(jq -r '.config.digest' "$(blob "$dir" "$man")")
	cp "$(blob "$dir" "$cfg")" "$2" || return 1
	rm -rf --one-file-system "$dir"
}

# Where the OCI layouts A and B differ, from descriptor DA down (DB: its
# counterpart): JSON blobs as diffs of their pretty form, then their
# children (the manifests of an index; the config and layers of a
# manifest, in order); layers as diffs of their `tar -tv` listings, or
# when those are the same, of their files' contents.
oci_diff_blob() { # A B DA DB WHAT
	local a=$1 b=$2 da=$3 db=$4 what=$5 fa fb i n
	[ "$da" != "$db" ] || return 0
	fa=$(blob "$a" "$da")
	fb=$(blob "$b" "$db")
	echo "  $what: $da vs $db"
	if jq -e . "$fa" >/dev/null 2>&1 && jq -e . "$fb" >/dev/null 2>&1; then
		diff -u <(jq -S . "$fa") <(jq -S . "$fb") | tail -n +3 | sed 's/^/    /'
		if jq -e '.manifests' "$fa" >/dev/null; then
			n=$(jq '.manifests | length' "$fa")
			for ((i = 0; i < n; i++)); do
				oci_diff_blob "$a" "$b" "$(jq -r ".manifests[$i].digest" "$fa")" \
					"$(jq -r ".manifests[$i].digest // empty" "$fb")" \
					"manifest $(jq -r ".manifests[$i].platform | \"\(.os)/\(.architecture)\"" "$fa")"
			done
		elif jq -e '.layers' "$fa" >/dev/null; then
			oci_diff_blob "$a" "$b" "$(jq -r .config.digest "$fa")" "$(jq -r .config.digest "$fb")" "$what config"
			n=$(jq '.layers | length' "$fa")
			for ((i = 0; i < n; i++)); do
				oci_diff_blob "$a" "$b" "$(jq -r ".layers[$i].digest" "$fa")" \
					"$(jq -r ".layers[$i].digest // empty" "$fb")" "$what layer $i"
			done
		fi
	elif [ -f "$fa" ] && [ -f "$fb" ]; then
		if ! diff -q <(tar --full-time -tvf "$fa") <(tar --full-time -tvf "$fb") >/dev/null; then
			diff -u <(tar --full-time -tvf "$fa") <(tar --full-time -tvf "$fb") | tail -n +3 | sed 's/^/    /'
		else
			rm -rf "$a.x" "$b.x" && mkdir "$a.x" "$b.x"
			tar -xf "$fa" -C "$a.x" && tar -xf "$fb" -C "$b.x"
			diff -ru "$a.x" "$b.x" | sed 's/^/    /' | head -40
			diff -qr "$a.x" "$b.x" >/dev/null &&
				echo "    same entries and contents: the compressed bytes differ"
			rm -rf "$a.x" "$b.x"
		fi
	fi
}

oci_diff() { # ARCHIVE-A ARCHIVE-B NAME-A NAME-B
	local a="$T/diff/$3" b="$T/diff/$4"
	oci_unpack "$1" "$a" && oci_unpack "$2" "$b"
	diff -u <(tar --full-time -tvf "$1") <(tar --full-time -tvf "$2") | tail -n +3 | sed 's/^/    /'
	diff -u <(jq -S . "$a/index.json") <(jq -S . "$b/index.json") | tail -n +3 | sed 's/^/    /'
	oci_diff_blob "$a" "$b" "$(jq -r '.manifests[0].digest' "$a/index.json")" \
		"$(jq -r '.manifests[0].digest' "$b/index.json")" "top"
	rm -rf --one-file-system "$a" "$b"
}

# Assertions for check.sh.
content() { cat "$ROOTFS/$1" 2>/dev/null || echo "<missing $1>"; }
expect_content() { assert_eq "$(content "$1")" "$2" "content of $1"; }
expect_exists() { [ -e "$ROOTFS/$1" ] || [ -L "$ROOTFS/$1" ] || fail "$1 missing"; }
expect_absent() { { [ -e "$ROOTFS/$1" ] || [ -L "$ROOTFS/$1" ]; } && fail "$1 should not exist"; true; }
expect_stat() { assert_eq "$(stat -c "$2" "$ROOTFS/$1")" "$3" "stat $2 of $1"; }
config() { jq -c "$1" "$CONFIG"; }
expect_config() { assert_eq "$(config "$1")" "$2" "config $1"; }

# Every line of FILE must appear in the build's progress output.
expect_fragments() { # NAME MODE FILE WHAT
	local frag
	while IFS= read -r frag; do
		[ -z "$frag" ] && continue
		grep -qF -- "$frag" "$T/progress.json" || {
			echo "case $1 ($2): $4 lacks '$frag': $(tail -2 "$T/progress.json")" >&2
			return 1
		}
	done <"$3"
}

# Write the goldens of case DIR from the lists in LIST (image-list.py's
# output) for the platforms PLATS: one shared file per kind when every
# platform has the same, else one per platform.
goldens_write() { # DIR LIST PLATS...
	local dir=$1 list=$2 kind p first same
	shift 2
	for kind in files config; do
		rm -f "$dir/expect-$kind" "$dir/expect-$kind".*
		first=$1 same=1
		for p in "$@"; do
			cmp -s "$list/$kind.$first" "$list/$kind.$p" || same=
		done
		if [ -n "$same" ]; then
			cp "$list/$kind.$first" "$dir/expect-$kind"
		else
			for p in "$@"; do cp "$list/$kind.$p" "$dir/expect-$kind.$p"; done
		fi
	done
}

# The file list of the built layers and the config of each platform of
# OUT/image.tar against the goldens of case DIR (or, in update mode and
# the first mode, written to them).
goldens_check() { # NAME MODE DIR OUT
	local name=$1 mode=$2 dir=$3 out=$4 list=$4/list plats=() p kind g rc=0
	local first="$T/out/$name/${MODES[0]}"
	rm -rf "$list"
	if [ "$mode" != "${MODES[0]}" ] && [ -f "$first/platforms" ] &&
		cmp -s "$first/image.tar" "$out/image.tar"; then
		# The same archive as the first mode's: the same lists (jq -S
		# below leaves its pretty configs as they are).
		cp -r "$first/list" "$list" && cp "$first/platforms" "$out/platforms" || return 1
	else
		# What changes from run to run (ports, this checkout's path) is
		# written as ${NAME}.
		"$PYTHON" "$LISTER" "$out/image.tar" "$LAYOUT" "$list" "CASE=$dir" "LAYOUT=$LAYOUT" \
			"HTTP=$HTTP" "GIT=$GIT" "REGISTRY=$REGISTRY" >"$out/platforms" || {
			rm -f "$out/platforms"
			echo "case $name ($mode): cannot list the images of $out/image.tar" >&2
			return 1
		}
	fi
	mapfile -t plats <"$out/platforms"
	# The images are those of the platforms asked for, named as asked
	# (linux/arm64 is linux_arm64, with no variant, as in BuildKit).
	if [ "$(printf '%s\n' "${plats[@]}" | sort)" != "$(printf '%s\n' "${WANT_PLATFORMS[@]}" | sort)" ]; then
		echo "case $name ($mode): images for ${plats[*]}, not ${WANT_PLATFORMS[*]}" >&2
		return 1
	fi
	for p in "${plats[@]}"; do
		jq -S . "$list/config.$p" >"$list/config.$p.pretty" && mv "$list/config.$p.pretty" "$list/config.$p" || return 1
	done
	if [ -n "$UPDATE" ] && [ "$mode" = "${MODES[0]}" ]; then
		goldens_write "$dir" "$list" "${plats[@]}"
		return
	fi
	for p in "${plats[@]}"; do
		for kind in files config; do
			g="$dir/expect-$kind.$p"
			[ -f "$g" ] || g="$dir/expect-$kind"
			if [ ! -f "$g" ]; then
				echo "case $name ($mode, $p): no expect-$kind.$p or expect-$kind (KILN_CONFORMANCE_UPDATE=1 run.sh $name writes them)" >&2
				rc=1
				continue
			fi
			diff -u --label "$name/$(basename "$g")" --label "$name $mode $p" "$g" "$list/$kind.$p" >"$list/$kind.$p.diff" && continue
			echo "case $name ($mode, $p): the $kind of the image differ from $(basename "$g") (- golden, + actual):" >&2
			sed 's/^/    /' "$list/$kind.$p.diff" >&2
			rc=1
		done
	done
	# A golden for a platform the build did not produce is stale.
	for g in "$dir"/expect-files.* "$dir"/expect-config.*; do
		[ -f "$g" ] || continue
		case " ${plats[*]} " in *" ${g##*.} "*) continue ;; esac
		echo "case $name ($mode): $(basename "$g") names a platform the build did not produce (${plats[*]})" >&2
		rc=1
	done
	return $rc
}

# One case in one mode; its outputs in $T/out/NAME/MODE.
run_case_in() { # MODE DIR ARGS...
	local mode=$1 dir=$2 name out
	shift 2
	name=$(basename "$dir")
	out="$T/out/$name/$mode"
	mkdir -p "$out"
	if [ -f "$dir/expect-error" ]; then
		if mode_build "$mode" --build-arg "BASE=$BASE" "$@" "$dir"; then
			echo "case $name ($mode): build succeeded, expected an error" >&2
			return 1
		fi
		expect_fragments "$name" "$mode" "$dir/expect-error" error || return 1
		[ ! -f "$dir/expect-output" ] ||
			expect_fragments "$name" "$mode" "$dir/expect-output" "progress output"
		return
	fi
	mode_build "$mode" --build-arg "BASE=$BASE" "$@" \
		-o "type=local,dest=$out/rootfs" -o "type=oci,dest=$out/image.tar" "$dir" || {
		echo "case $name ($mode): build failed: $(tail -3 "$T/progress.json")" >&2
		[ "$mode" != cluster ] || cluster_logs >&2
		return 1
	}
	[ ! -f "$dir/expect-output" ] ||
		expect_fragments "$name" "$mode" "$dir/expect-output" "progress output" || return 1
	CONFIG="$out/config.json"
	oci_config "$out/image.tar" "$CONFIG" || {
		echo "case $name ($mode): no image config in $out/image.tar" >&2
		return 1
	}
	# Several platforms: one directory per platform (docs/outputs.md).
	ROOTFS="$out/rootfs"
	[ "$OCI_PLATFORMS" = 1 ] || ROOTFS="$out/rootfs/linux_amd64"
	(set -e; . "$dir/check.sh") || {
		echo "case $name ($mode): check.sh failed" >&2
		return 1
	}
	goldens_check "$name" "$mode" "$dir" "$out"
}

# The platforms of --platform in ARGS, as image-list.py names them.
want_platforms() { # ARGS...
	local a next=
	for a in "$@"; do
		if [ -n "$next" ]; then
			echo "$a"
			next=
			continue
		fi
		case "$a" in
		--platform) next=1 ;;
		--platform=*) echo "${a#--platform=}" ;;
		esac
	done | tr ',' '\n' | tr '/' '_'
}

passed=0 failed=0 failures=""
run_case() { # DIR
	local dir=$1 name args=() mode rc=0 first
	name=$(basename "$dir")
	[ -f "$dir/Dockerfile" ] || { echo "case $name: no such case ($dir)" >&2; return 1; }
	if [ -f "$dir/args" ]; then
		# shellcheck disable=SC2046
		eval "args=($(CASE="$dir" LAYOUT="$LAYOUT" HTTP="$HTTP" GIT="$GIT" REGISTRY="$REGISTRY" envsubst '$CASE $LAYOUT $HTTP $GIT $REGISTRY' <"$dir/args"))"
	fi
	# Both platforms (on a cluster: both workers), unless the case picks
	# its own.
	case " ${args[*]} " in
	*" --platform "* | *" --platform="*) ;;
	*) args+=(--platform "$PLATFORMS") ;;
	esac
	mapfile -t WANT_PLATFORMS < <(want_platforms "${args[@]}")
	for mode in "${MODES[@]}"; do
		run_case_in "$mode" "$dir" "${args[@]}" || rc=1
	done
	[ "$rc" = 0 ] && [ ! -f "$dir/expect-error" ] || return $rc
	first=${MODES[0]}
	for mode in "${MODES[@]:1}"; do
		cmp -s "$T/out/$name/$first/image.tar" "$T/out/$name/$mode/image.tar" && continue
		echo "case $name: the OCI archives of $first and $mode differ:" >&2
		oci_diff "$T/out/$name/$first/image.tar" "$T/out/$name/$mode/image.tar" "$first" "$mode" >&2
		rc=1
	done
	return $rc
}

if [ $# -gt 0 ]; then
	list=("$@")
else
	list=("$CASES"/*/)
	all=all
fi
for c in "${list[@]}"; do
	c=${c%/}
	[ -d "$c" ] || c="$CASES/$c"
	if run_case "$c"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		failures="$failures $(basename "$c")"
	fi
done
case " ${MODES[*]} " in *" cluster "*)
	cluster_check_steps "${all:-}"
	cluster_stop
	;;
esac
echo "conformance (${MODES[*]}): $passed cases passed, $failed failed${failures:+ (failed:$failures)}"
[ "$failed" = 0 ]
