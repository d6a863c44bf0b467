#!/bin/bash
# A realistic tree moved between the workers of two platforms (issue 9: a
# worker crashed pulling a tree that mixes many small and large files from
# another worker). kilnd, an amd64 worker and an arm64 worker (--platform
# linux/arm64, emulated through binfmt + QEMU on an x86 host), each in its
# own network namespace, the registry with the two-platform busybox and the
# client in the root namespace, as in it-cluster-build.
#
# The tree is generated here, deterministically (seeded), into the build
# context and shaped like a Debian root file system: ~24,600 files, most of
# them 0-16 KiB, a tail of larger ones up to a few MiB, two of 50 MiB and
# more, empty files, identical files, hardlinked files (git's helpers and
# perl under several names, across directories, as dpkg leaves them),
# directories up to 13 levels deep, symlinks (relative, absolute, to
# directories, dangling), setuid/setgid files, sticky and private
# directories; ~380 MB in all.
#
# The Dockerfile's build stage (FROM --platform=$BUILDPLATFORM, on the amd64
# worker) copies the tree in and writes the sha256 manifest of its files;
# the final stage, built for linux/arm64, copies the tree and the manifest
# from it, so the arm64 worker pulls the whole tree from the amd64 worker,
# and checks every file against the manifest under emulation. Asserted:
# placement, the bytes moved between the workers and the blobs in the
# arm64 worker's store, the exported tree equal to the generated one (path,
# type, mode, owner, size, content, symlink target, hardlink group), the
# check's output,
# both workers alive and ready under their first ids, a full cache hit on
# a second build, clean exits (no sanitizer report) and fsck-clean roots.
. "$(dirname "$0")/lib.sh"
: "${KILND:?KILND must name the kilnd binary (meson test sets it)}"
: "${KILN_WORKER:?KILN_WORKER must name the kiln-worker binary (meson test sets it)}"
# The workers hash and copy hundreds of MB under ASan on few cores: a
# heartbeat every second (lost after 3 s), not it-cluster-build's 200 ms.
NETNS_HEARTBEAT_MS=${NETNS_HEARTBEAT_MS:-1000}
. "$(dirname "$0")/netns-lib.sh"
command -v docker-registry >/dev/null || fail "docker-registry is not installed (scripts/install-deps.sh)"
command -v skopeo >/dev/null || fail "skopeo is not installed (scripts/install-deps.sh)"
netns_require_binfmt_arm64
# The build stage runs on $BUILDPLATFORM, the client's: the amd64 worker
# only on an amd64 host (the arm64 one emulated).
[ "$(uname -m)" = x86_64 ] || fail "it-cluster-bigtree needs an x86_64 host (this is $(uname -m))"

SEED=${KILN_BIGTREE_SEED:-9}
AMD=amd
ARM=arm
KILN_RBUILD_TIMEOUT=${KILN_RBUILD_TIMEOUT:-600}
T0=$SECONDS

# On failure, the end of every daemon log and any sanitizer report reach
# the test's output before $T goes; with KILN_BIGTREE_KEEP=DIR the logs and
# progress files are copied there too.
bigtree_logs() {
	local f
	[ "$rc" != 0 ] || return 0
	if [ -n "${KILN_BIGTREE_KEEP:-}" ]; then
		mkdir -p "$KILN_BIGTREE_KEEP" &&
			cp "$T"/*.log "$T"/progress-*.json "$KILN_BIGTREE_KEEP/" 2>/dev/null || true
	fi
	for f in "$T/kilnd.log" "$T"/worker-*.log; do
		[ -f "$f" ] || continue
		echo "--- $(basename "$f") (sanitizer reports, then the last 30 lines)" >&2
		grep -E -A30 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$f" | head -80 >&2 || true
		tail -30 "$f" >&2
	done
}
CLEANUP_HOOKS=(bigtree_logs "${CLEANUP_HOOKS[@]}")

# No sanitizer report, no crash in a daemon's log.
assert_no_reports() { # LOG...
	local f
	for f in "$@"; do
		if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:|AddressSanitizer:DEADLYSIGNAL|double free|corrupted' "$f"; then
			fail "a sanitizer report or crash in $(basename "$f"): $(grep -E -A20 'Sanitizer|runtime error:|double free|corrupted' "$f" | head -40)"
		fi
	done
}

# kiln debug fsck on a (stopped) kiln-worker root.
worker_fsck() { # NAME ROOT
	"$KILN" debug fsck --worker-root "$2" >"$T/fsck-$1.out" 2>&1 ||
		fail "fsck of worker $1 ($2) not clean: $(cat "$T/fsck-$1.out")"
	grep -q ": ok$" "$T/fsck-$1.out" || fail "fsck of worker $1: $(cat "$T/fsck-$1.out")"
}

echo "== the tree (seed $SEED)"
CTX="$T/ctx"
mkdir -p "$CTX"
cat >"$T/gen-tree.py" <<'PY'
# gen-tree.py DIR SEED: a tree shaped like a Debian root file system.
# Structure from one seeded RNG; each file's bytes from an RNG seeded with
# (SEED, path), or the path it duplicates. Prints a summary line.
import math, os, random, sys

root, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
KiB, MiB = 1 << 10, 1 << 20
entries = []  # ("f", path, size, mode, dup-of) ("l", path, target) ("d", path, mode)
hardlinks = []  # (path, existing path): made after every file
seen = set()
pools = {}


def logu(lo, hi):
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def small():
    # Most files of a system: 0-16 KiB (a median of 1-2 KiB), a few empty.
    return 0 if rng.random() < 0.04 else logu(32, 16 * KiB)


def f(path, size, mode=0o644, dup=None):
    assert path not in seen, path
    seen.add(path)
    entries.append(("f", path, size, mode, dup))


def l(path, target):
    seen.add(path)
    entries.append(("l", path, target, None, None))


def d(path, mode):
    entries.append(("d", path, mode, None, None))


def h(path, existing):
    assert path not in seen, path
    seen.add(path)
    hardlinks.append((path, existing))


def word(n=None):
    n = n or rng.randint(3, 10)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))


def nested(base, n, depth):
    # A directory under base: one of n made as a random tree up to depth
    # levels below it, so directories hold several files each.
    if base not in pools:
        pool = [(base, 0)]
        while len(pool) < n:
            parent, k = rng.choice(pool)
            if k < depth:
                pool.append((f"{parent}/{word(rng.randint(2, 8))}", k + 1))
        pools[base] = [p for p, _ in pool]
    return rng.choice(pools[base])


pkgs = sorted({word() for _ in range(1400)})
# etc: small configuration files, a few private ones
for i in range(700):
    sub = rng.choice(pkgs[:90])
    path = f"etc/{sub}/{word()}{i}.conf" if i % 5 else f"etc/{sub}/conf.d/{i:03d}-{word()}"
    f(path, small(), rng.choice([0o644] * 12 + [0o600, 0o640, 0o755]))
f("etc/shadow", 1400, 0o640)
f("etc/ssl/private/ssl-cert-snakeoil.key", 1704, 0o600)
d("etc/ssl/private", 0o710)
# usr/bin, usr/sbin: executables, mostly under 256 KiB, a tail to a few MiB
for dr, n in (("usr/bin", 900), ("usr/sbin", 220)):
    for i in range(n):
        size = logu(4 * KiB, 160 * KiB) if rng.random() < 0.97 else logu(256 * KiB, 3 * MiB)
        f(f"{dr}/{word()}-{i}", size, 0o755)
for name, mode in (("passwd", 0o4755), ("su", 0o4755), ("mount", 0o4755),
                   ("chage", 0o2755), ("wall", 0o2755)):
    f(f"usr/bin/{name}", logu(30 * KiB, 90 * KiB), mode)
# hardlinks: git's helpers are links of git, perl has two names
f("usr/bin/git", 3 * MiB + 777, 0o755)
for name in ("add", "commit", "log", "status", "diff", "fetch", "push", "pull",
             "merge", "rebase", "checkout", "branch", "tag", "show", "grep"):
    h(f"usr/lib/git-core/git-{name}", "usr/bin/git")
f("usr/bin/perl", 3 * MiB + 123, 0o755)
h("usr/bin/perl5.36.0", "usr/bin/perl")
f("usr/share/zoneinfo/Europe/Paris", 2962)
h("usr/share/zoneinfo/Europe/Monaco", "usr/share/zoneinfo/Europe/Paris")
# identical files: a tool installed under two names
f("usr/bin/gcc-12", 1234567, 0o755)
f("usr/bin/x86_64-linux-gnu-gcc-12", 1234567, 0o755, dup="usr/bin/gcc-12")
# shared libraries, some with their soname symlinks
for i in range(650):
    name = f"lib{word()}{i}.so"
    ver = f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}"
    size = logu(16 * KiB, 160 * KiB) if rng.random() < 0.92 else logu(256 * KiB, 3 * MiB)
    f(f"usr/lib/x86_64-linux-gnu/{name}.{ver}", size)
    if i % 5 == 0:
        l(f"usr/lib/x86_64-linux-gnu/{name}.{ver.split('.')[0]}", f"{name}.{ver}")
for i in range(260):
    f(f"usr/lib/x86_64-linux-gnu/gconv/{word().upper()}{i}.so", logu(8 * KiB, 64 * KiB))
# the compiler: two files of 50 MiB and more, headers nested deep
f("usr/lib/gcc/x86_64-linux-gnu/12/cc1", 50 * MiB + 12345, 0o755)
f("usr/lib/gcc/x86_64-linux-gnu/12/lto1", 53 * MiB + 777, 0o755)
f("usr/lib/gcc/x86_64-linux-gnu/12/collect2", logu(300 * KiB, 900 * KiB), 0o755)
for i in range(1600):
    f(f"{nested('usr/lib/gcc/x86_64-linux-gnu/12/plugin/include', 160, 6)}/{word()}{i}.h",
      small())
# python modules: nested packages, an empty __init__.py in each directory
for i in range(6200):
    dr = nested(f"usr/lib/python3/dist-packages/{rng.choice(pkgs[:160])}", 6, 4)
    if f"{dr}/__init__.py" not in seen:
        f(f"{dr}/__init__.py", 0)
    f(f"{dr}/{word()}{i}.py", small())
# headers
for i in range(2400):
    f(f"{nested('usr/include', 250, 5)}/{word()}{i}.h", small())
# docs: copyright files, mostly one of a few licences (identical content)
licences = {}
for i, pkg in enumerate(pkgs):
    path = f"usr/share/doc/{pkg}/copyright"
    if i < 8:
        licences[path] = logu(1 * KiB, 30 * KiB)
        f(path, licences[path])
    elif rng.random() < 0.7:
        lic = rng.choice(sorted(licences))
        f(path, licences[lic], 0o644, dup=lic)
    else:
        f(path, small())
    f(f"usr/share/doc/{pkg}/changelog.Debian.gz", logu(200, 16 * KiB))
    if i % 7 == 0:
        f(f"usr/share/doc/{pkg}/README.Debian", small())
for i in range(40):
    l(f"usr/share/doc/{pkgs[i]}-dev", pkgs[i])  # a directory symlink, as Debian has
# locales, man pages, zoneinfo (which repeats content under other names)
for lang in sorted({word(2) for _ in range(60)}):
    for dom in pkgs[:22]:
        f(f"usr/share/locale/{lang}/LC_MESSAGES/{dom}.mo", logu(500, 60 * KiB))
for i in range(2600):
    sect = rng.choice("1113578")
    f(f"usr/share/man/man{sect}/{word()}{i}.{sect}.gz", logu(300, 16 * KiB))
zones = []
for i in range(600):
    path = f"{nested('usr/share/zoneinfo', 40, 2)}/{word().capitalize()}{i}"
    if zones and rng.random() < 0.3:
        src, size = rng.choice(zones)
        f(path, size, 0o644, dup=src)
    else:
        size = logu(100, 4 * KiB)
        f(path, size)
        zones.append((path, size))
f("usr/share/zoneinfo/Etc/UTC", 114)
# dpkg's database: many small lists, empty conffiles, one larger status file
for i, pkg in enumerate(pkgs):
    f(f"var/lib/dpkg/info/{pkg}.list", logu(50, 16 * KiB))
    f(f"var/lib/dpkg/info/{pkg}.md5sums", logu(50, 8 * KiB))
    if i % 3 == 0:
        f(f"var/lib/dpkg/info/{pkg}.conffiles", 0)
f("var/lib/dpkg/status", 2 * MiB + 4321)
f("var/cache/apt/pkgcache.bin", 6 * MiB + 99)
f("var/cache/apt/srcpkgcache.bin", 6 * MiB + 99, 0o644, dup="var/cache/apt/pkgcache.bin")
# directories with modes of their own, some empty; symlinks
for path, mode in (("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700), ("home", 0o755),
                   ("srv", 0o755), ("mnt", 0o755), ("var/log/apt", 0o750)):
    d(path, mode)
for path, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                     ("lib64", "usr/lib64"),  # dangling
                     ("etc/localtime", "/usr/share/zoneinfo/Etc/UTC"),
                     ("etc/mtab", "../proc/self/mounts"),
                     ("usr/bin/cc", "/etc/alternatives/cc"),
                     ("etc/alternatives/cc", "/usr/bin/gcc-12"),
                     ("usr/bin/x86_64-linux-gnu-gcc", "gcc-12")):
    l(path, target)

os.makedirs(root)
os.umask(0o022)
sizes, uniq = [], {}
for kind, path, a, b, dup in entries:
    p = os.path.join(root, path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    if kind == "f":
        with open(p, "wb") as fh:
            fh.write(random.Random(f"{seed}:{dup or path}").randbytes(a))
        os.chmod(p, b)
        sizes.append(a)
        uniq[dup or path] = a
    elif kind == "l":
        os.symlink(a, p)
for path, existing in hardlinks:
    p = os.path.join(root, path)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    os.link(os.path.join(root, existing), p)
for kind, path, a, b, dup in entries:
    if kind == "d":
        os.makedirs(os.path.join(root, path), exist_ok=True)
        os.chmod(os.path.join(root, path), a)
sizes.sort()
print(f"files={len(sizes) + len(hardlinks)} empty={sizes.count(0)} "
      f"le16k={sum(1 for v in sizes if v <= 16 * KiB)} "
      f"gt256k={sum(1 for v in sizes if v > 256 * KiB)} "
      f"ge50m={sum(1 for v in sizes if v >= 50 * MiB)} max={sizes[-1]} "
      f"symlinks={sum(1 for e in entries if e[0] == 'l')} hardlinks={len(hardlinks)} "
      f"bytes={sum(sizes)} unique_bytes={sum(uniq.values())}")
PY
cat >"$T/list-tree.py" <<'PY'
# list-tree.py DIR: one line per entry below DIR, sorted by path:
# path, type, mode (07777), uid:gid, size, sha256 or symlink target, and
# for a file with other names in the tree the first of them ("-" else).
import hashlib, os, stat, sys

root = sys.argv[1]
out = []
first = {}  # (dev, ino) -> the smallest path of a linked file
for dirpath, dirs, files in os.walk(root):
    for name in files:
        p = os.path.join(dirpath, name)
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            rel = os.path.relpath(p, root).encode()
            key = (st.st_dev, st.st_ino)
            first[key] = min(first.get(key, rel), rel)
for dirpath, dirs, files in os.walk(root):
    for name in dirs + files:
        p = os.path.join(dirpath, name)
        st = os.lstat(p)
        rel = os.path.relpath(p, root)
        common = f"{stat.S_IMODE(st.st_mode):04o}\t{st.st_uid}:{st.st_gid}"
        if stat.S_ISLNK(st.st_mode):
            out.append(f"{rel}\tl\t{common}\t-\t{os.readlink(p)}")
        elif stat.S_ISDIR(st.st_mode):
            out.append(f"{rel}\td\t{common}\t-\t-")
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            group = first.get((st.st_dev, st.st_ino), b"-").decode()
            out.append(f"{rel}\tf\t{common}\t{st.st_size}\t{h.hexdigest()}\t{group}")
        else:
            out.append(f"{rel}\t?\t{common}\t-\t-")
out.sort(key=lambda s: s.split("\t", 1)[0].encode())
sys.stdout.write("".join(line + "\n" for line in out))
PY
GEN=$(python3 "$T/gen-tree.py" "$CTX/tree" "$SEED") || fail "generating the tree"
echo "tree: $GEN"
python3 "$T/list-tree.py" "$CTX/tree" >"$T/expected.list" || fail "listing the generated tree"
gen() { sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$GEN"; }
N_FILES=$(awk -F'\t' '$2 == "f"' "$T/expected.list" | wc -l)
N_EMPTY=$(awk -F'\t' '$2 == "f" && $5 == 0' "$T/expected.list" | wc -l)
N_LINKS=$(awk -F'\t' '$2 == "l"' "$T/expected.list" | wc -l)
N_DIRS=$(awk -F'\t' '$2 == "d"' "$T/expected.list" | wc -l)
UNIQUE_BYTES=$(gen unique_bytes)
assert_eq "$N_FILES" "$(gen files)" "files listed vs generated"
# The shape the test promises (and that issue 9 needs): many small files,
# a tail above the pull's small-blob limit (256 KiB), two of 50 MiB or more.
[ "$N_FILES" -ge 20000 ] || fail "only $N_FILES files"
[ "$(gen le16k)" -ge $((N_FILES * 3 / 4)) ] || fail "too few small files: $GEN"
[ "$(gen gt256k)" -ge 50 ] || fail "too few files over 256 KiB: $GEN"
[ "$(gen ge50m)" -ge 2 ] || fail "fewer than two files of 50 MiB: $GEN"
[ "$N_EMPTY" -ge 100 ] && [ "$N_LINKS" -ge 10 ] || fail "too few empty files or symlinks: $GEN"
[ "$(awk -F'\t' '$2 == "f" && $7 != "-"' "$T/expected.list" | wc -l)" = 20 ] ||
	fail "the generated tree should have 20 hardlinked names: $GEN"
[ "$(awk -F'\t' '$2 == "f" { print $6 }' "$T/expected.list" | sort | uniq -d | wc -l)" -ge 10 ] ||
	fail "too few identical files"

# xargs reads the names from a pipe: busybox runs sha256sum as an applet in
# a fork that shares a file's offset with xargs and moves it on exit, so
# `xargs < FILE` reads some names twice and others cut (not kiln's doing:
# it happens in a plain chroot too).
cat >"$CTX/Dockerfile" <<'DF'
ARG BASE
FROM --platform=$BUILDPLATFORM $BASE AS build
COPY tree /tree
RUN cd /tree && find . -type f | sort | xargs -r sha256sum > /manifest.sha256 \
 && echo "manifest-of-tree: $(wc -l < /manifest.sha256) files hashed on $(uname -m)"

FROM $BASE
COPY --from=build /tree /tree
COPY --from=build /manifest.sha256 /manifest.sha256
RUN cd /tree; sha256sum -c /manifest.sha256 > /verify.log 2>&1; st=$?; \
 ok=$(grep -c ': OK$' /verify.log); bad=$(grep -vc ': OK$' /verify.log); \
 files=$(find . -type f | wc -l); empty=$(find . -type f -size 0 | wc -l); \
 links=$(find . -type l | wc -l); dirs=$(find . -mindepth 1 -type d | wc -l); \
 echo "verify-tree: arch=$(uname -m) files=$files empty=$empty symlinks=$links dirs=$dirs ok=$ok failed=$bad status=$st" | tee /result.txt; \
 [ "$st" = 0 ] && [ "$bad" = 0 ] && [ "$ok" = "$files" ] && [ "$ok" = "$(wc -l < /manifest.sha256)" ] \
 && echo "verify-tree: all $ok files matched on $(uname -m)"
DF
echo "tree generated and listed in $((SECONDS - T0))s"

echo "== namespaces, registry, kilnd, an amd64 and an arm64 worker"
netns_setup
netns_add ctl 2
netns_add "$AMD" 3
netns_add "$ARM" 4
netns_registry_start
netns_registry_push_busybox
REG=$NETNS_REG
netns_kilnd_start ctl "$T/kilnd"
netns_worker_start "$AMD" "$T/w-$AMD" linux/amd64
netns_worker_start "$ARM" "$T/w-$ARM" linux/arm64
J=$(netns_workers_json)
assert_eq "$(jq -c --arg n "$ARM" '.workers[] | select(.name == $n) | .platforms' <<<"$J")" \
	'[{"platform":"linux/arm64","emulated":true}]' "arm64 worker's platforms"
IDS=$(jq -c '[.workers[] | {(.name): .id}] | add' <<<"$J")

# Client side of a remote build: progress (json lines) to $1, the rest are
# build arguments; killed after $KILN_RBUILD_TIMEOUT seconds (status 124).
rbuild() { # PROGRESS-FILE ARGS...
	local prog=$1 rc=0
	shift
	timeout -k 5 "$KILN_RBUILD_TIMEOUT" "$KILN" build --addr "$KILND_URL" \
		--token-file "$KILND_ROOT/client.token" --progress json \
		--insecure-registry "$REG" "$@" 2>"$prog" || rc=$?
	[ "$rc" != 124 ] || echo "rbuild: no result after ${KILN_RBUILD_TIMEOUT}s, killed" >>"$prog"
	return $rc
}
pev() { jq -c -R 'fromjson? // empty' <"$1"; }
passert() { # PROGRESS-FILE JQ-CONDITION WHAT
	pev "$1" | jq -s -e "$2" >/dev/null || fail "$3: $(pev "$1" | grep -v '"log"' | tail -20)"
}
# The vertex events of the last status of each vertex whose name matches.
vdone() { # PATTERN
	echo "[.[] | select(.vertex != null and .status == \"done\" and (.name | test(\"$1\")))]"
}

# Both workers still run and are ready under the ids they registered with
# (a worker that crashed and came back would have a new one).
assert_workers_alive() { # WHEN
	local w
	for w in "$AMD" "$ARM"; do
		kill -0 "${NETNS_WPID[$w]}" 2>/dev/null || fail "worker $w died $1: $(tail -20 "$T/worker-$w.log")"
	done
	kill -0 "$KILND_PID" 2>/dev/null || fail "kilnd died $1: $(tail -20 "$T/kilnd.log")"
	J=$(netns_workers_json) || fail "kiln workers $1"
	for w in "$AMD" "$ARM"; do
		assert_eq "$(jq -r --arg n "$w" '.workers[] | select(.name == $n) | .state' <<<"$J")" ready \
			"$w's state $1"
		assert_eq "$(jq -r --arg n "$w" '.workers[] | select(.name == $n) | .id' <<<"$J")" \
			"$(jq -r --arg n "$w" '.[$n]' <<<"$IDS")" "$w's id $1 (registered again: it restarted)"
	done
}

echo "== build: the tree through the amd64 build stage to the arm64 stage"
P1="$T/progress-1.json"
t=$SECONDS
rbuild "$P1" --platform linux/arm64 --build-arg "BASE=$REG/busybox:latest" \
	-o "type=local,dest=$T/out" "$CTX" ||
	fail "the build failed: $(grep -v '"log"' "$P1" | tail -30)"
echo "build: $((SECONDS - t))s"
# Where each step ran and how long it took (whole seconds).
pev "$P1" | jq -r 'select(.vertex != null and .status == "done") |
	"  \(.worker)\t\((.completed | sub("\\.[0-9]*Z$"; "Z") | fromdate) -
		(.started | sub("\\.[0-9]*Z$"; "Z") | fromdate))s\t\(.name[0:60])"' || true

# Placement: the build stage's steps on the amd64 worker, natively; the
# final stage's (the COPY --from that pulls the tree, the check) on arm64.
# (kilnd itself loads the build context: "[internal] load build context".)
steps() { # PLATFORM
	echo "[.[] | select(.vertex != null and .platform == \"$1\" and .status == \"done\" and
		(.name | startswith(\"[internal]\") | not))]"
}
passert "$P1" "$(steps linux/amd64) | length >= 3 and all(.[]; .worker == \"$AMD\" and .emulated == false)" \
	"every linux/amd64 step on $AMD, native"
passert "$P1" "$(steps linux/arm64) | length >= 4 and all(.[]; .worker == \"$ARM\")" \
	"every linux/arm64 step on $ARM"
passert "$P1" "$(vdone 'RUN cd /tree && find') | length == 1 and .[0].worker == \"$AMD\" and
	.[0].platform == \"linux/amd64\" and .[0].emulated == false" "the manifest step ran once, on $AMD"
passert "$P1" "$(vdone 'COPY --from=build /tree /tree') | length == 1 and .[0].worker == \"$ARM\" and
	.[0].platform == \"linux/arm64\"" "the COPY --from of the tree ran on $ARM"
passert "$P1" "$(vdone 'RUN cd /tree; sha256sum -c') | length == 1 and .[0].worker == \"$ARM\" and
	.[0].platform == \"linux/arm64\" and .[0].emulated == true" "the check ran on $ARM, emulated"
# The arm64 worker pulled the tree from the amd64 worker: the only bytes
# that can move between workers here go that way, and they cover every
# distinct file of the tree.
passert "$P1" "[.[] | select(.summary != null)] | length == 1 and (.[0].summary | .ok == true and
	.bytes_moved >= $UNIQUE_BYTES and .workers[\"$AMD\"].run > 0 and .workers[\"$ARM\"].run > 0)" \
	"summary: ok, at least the tree's $UNIQUE_BYTES distinct bytes moved between the workers"
MOVED=$(pev "$P1" | jq -s '[.[] | select(.summary != null)][0].summary.bytes_moved')
echo "bytes moved between the workers: $MOVED (tree: $UNIQUE_BYTES distinct bytes)"
# ... and holds each of them in its store, with the build stage's result
# in its inventory (a tree the amd64 worker made, which only a pull puts there).
awk -F'\t' '$2 == "f" { print $6 }' "$T/expected.list" | sort -u >"$T/blobs.want"
python3 - "$T/w-$ARM/cas/blobs/sha256" "$T/blobs.want" <<'PY' || fail "blobs of the tree missing on $ARM"
import os, sys
missing = [h for h in open(sys.argv[2]).read().split() if not os.path.exists(os.path.join(sys.argv[1], h))]
if missing:
    sys.exit(f"{len(missing)} blobs of the tree are not in {sys.argv[1]}, e.g. {missing[:3]}")
PY
[ -n "$(comm -12 <(sort -u "$T/w-$AMD/inventory") <(sort -u "$T/w-$ARM/inventory"))" ] ||
	fail "no tree in both workers' inventories: $ARM pulled nothing from $AMD"

# The check on the arm64 side: its output and its result file.
WANT="files=$N_FILES empty=$N_EMPTY symlinks=$N_LINKS dirs=$N_DIRS ok=$N_FILES failed=0 status=0"
passert "$P1" "any(.[]; (.log? // \"\") | contains(\"verify-tree: all $N_FILES files matched on aarch64\"))" \
	"the check's output: all $N_FILES files matched"
assert_eq "$(cat "$T/out/result.txt")" "verify-tree: arch=aarch64 $WANT" "the check's result file"
passert "$P1" "any(.[]; (.log? // \"\") | contains(\"manifest-of-tree: $N_FILES files hashed on x86_64\"))" \
	"the manifest step's output"

# The exported tree is the generated one: every path, type, mode, owner,
# size, content and symlink target.
t=$SECONDS
python3 "$T/list-tree.py" "$T/out/tree" >"$T/out.list" || fail "listing the exported tree"
if ! cmp -s "$T/expected.list" "$T/out.list"; then
	fail "the exported tree differs from the generated one ($(diff "$T/expected.list" "$T/out.list" | grep -c '^[<>]') lines): $(diff "$T/expected.list" "$T/out.list" | head -20)"
fi
echo "exported tree compared in $((SECONDS - t))s: $N_FILES files, $N_EMPTY empty, $N_LINKS symlinks, $N_DIRS directories"

assert_workers_alive "after the build"
assert_no_reports "$T/kilnd.log" "$T/worker-$AMD.log" "$T/worker-$ARM.log"

echo "== the same build again: a full cache hit"
P2="$T/progress-2.json"
t=$SECONDS
rbuild "$P2" --platform linux/arm64 --build-arg "BASE=$REG/busybox:latest" \
	-o "type=local,dest=$T/out2" "$CTX" ||
	fail "the second build failed: $(grep -v '"log"' "$P2" | tail -30)"
echo "second build: $((SECONDS - t))s"
passert "$P2" '[.[] | select(.vertex != null and .status != null)] | length > 0 and
	all(.[]; .status != "running" and .status != "error" and (.status != "done" or .cached == true))' \
	"every vertex of the second build cached, none running"
passert "$P2" '[.[] | select(.summary != null)][0].summary | .ok == true and
	([.workers[].run] | add // 0) == 0 and .bytes_moved == 0' "summary: nothing run or moved the second time"
assert_eq "$(cat "$T/out2/result.txt")" "verify-tree: arch=aarch64 $WANT" "the cached result file"
python3 "$T/list-tree.py" "$T/out2/tree" >"$T/out2.list" || fail "listing the second export"
cmp -s "$T/expected.list" "$T/out2.list" || fail "the second export differs: $(diff "$T/expected.list" "$T/out2.list" | head -5)"
assert_workers_alive "after the second build"

echo "== clean exits (ASan reports leaks and errors at exit), fsck-clean roots"
netns_worker_stop "$AMD"
netns_worker_stop "$ARM"
netns_kilnd_stop
assert_no_reports "$T/kilnd.log" "$T/worker-$AMD.log" "$T/worker-$ARM.log"
worker_fsck "$AMD" "$T/w-$AMD"
worker_fsck "$ARM" "$T/w-$ARM"
netns_teardown
echo "PASS in $((SECONDS - T0))s"
