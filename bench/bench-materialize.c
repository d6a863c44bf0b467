/*
 * bench-materialize: making a 50,000-file tree from the CAS usable as an
 * exec's rootfs, against `cp -a` of the same directory.
 *
 * The tree (250 dirs x 200 files of 4 KiB) is stored twice with
 * kiln_tree_from_dir (setup, not timed, non-durable stores):
 *   context  adopt=false, zero_owner=true — what source.local does; the
 *            CAS holds its own copies of the files (mode 0444, new mtime);
 *   adopted  adopt=true — the CAS blobs are the files' own inodes, as for
 *            exec snapshots and image layers.
 * For each, (a) first: kiln_layers_materialize(root, NULL hint) into a
 * fresh layer store (a full layer from the CAS) + kiln_layers_mount
 * (read-only); then every file of the layer is checked against its blob's
 * inode: "linked" shares it, "copied" does not. (b) cached: materialize
 * again (the layer is known) + mount. Baseline: `cp -a` of the source
 * directory on the same file system. ratio = cp seconds / kiln seconds.
 *
 * Nothing is deleted until the end: on this machine's ext4 (no journal)
 * creating inodes right after mass deletes is several times slower
 * (ext4's recently_deleted() scan), which would skew whichever side ran
 * after a delete.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "bench-util.h"
#include "cas/store.h"
#include "cas/tree.h"
#include "worker/layers.h"

#define FILES_PER_DIR 200
#define FILE_SIZE 4096
#define MAX_REPS 16
#define CACHED_REPS 5

struct variant {
	const char *label;
	bool adopt;
	struct kiln_store *store;
	struct kiln_digest root;
	double first[MAX_REPS];
	double cached[MAX_REPS * CACHED_REPS];
	size_t linked, copied;
};

struct link_check {
	struct kiln_store *store;
	int layerfd;
	size_t linked, copied;
};

static int check_cb(const char *path, const struct kiln_tree_entry *e,
		    void *ud)
{
	struct link_check *c = ud;
	_cleanup_free_ char *blob = NULL;
	struct stat ls, bs;

	if (e->type != KILN_ENTRY_FILE)
		return 0;
	blob = kiln_store_blob_path(c->store, &e->digest);
	if (fstatat(c->layerfd, path, &ls, AT_SYMLINK_NOFOLLOW) < 0)
		bench_die("layer file %s: %s", path, strerror(errno));
	if (stat(blob, &bs) < 0)
		bench_die("blob of %s: %s", path, strerror(errno));
	if (ls.st_ino == bs.st_ino && ls.st_dev == bs.st_dev)
		c->linked++;
	else
		c->copied++;
	return 0;
}

/* Walk the whole layer: how many files are the CAS blob's own inode. */
static void check_links(struct variant *v, const struct kiln_chain *chain)
{
	struct link_check c = { .store = v->store };
	struct kiln_error *err = NULL;

	if (chain->n != 1)
		bench_die("expected a one-layer chain, got %zu layers", chain->n);
	c.layerfd = open(chain->dirs[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (c.layerfd < 0)
		bench_die("open %s: %s", chain->dirs[0], strerror(errno));
	bench_check(kiln_tree_walk(v->store, &v->root, check_cb, &c, &err), err,
		    "kiln_tree_walk");
	close(c.layerfd);
	v->linked = c.linked;
	v->copied = c.copied;
}

static void check_mounted(const char *mnt)
{
	_cleanup_free_ char *p = xasprintf("%s/d24/s9/f%04d.dat", mnt,
					   FILES_PER_DIR - 1);
	struct stat st;

	if (stat(p, &st) < 0 || st.st_size != FILE_SIZE)
		bench_die("%s is not visible through the mount", p);
}

static double materialize_mount(struct kiln_layers *l, struct variant *v,
				const char *mnt, struct kiln_chain *chain)
{
	struct kiln_error *err = NULL;
	double t0 = bench_now();

	bench_check(kiln_layers_materialize(l, &v->root, NULL, chain, &err), err,
		    "kiln_layers_materialize");
	bench_check(kiln_layers_mount(chain, mnt, NULL, NULL, &err), err,
		    "kiln_layers_mount");
	return bench_now() - t0;
}

static void unmount(const char *mnt)
{
	bench_check(kiln_layers_umount(mnt), NULL, "kiln_layers_umount");
}

static void kiln_rep(const char *tmp, struct variant *v, unsigned rep)
{
	_cleanup_free_ char *ldir = xasprintf("%s/layers-%s-%u", tmp, v->label, rep);
	_cleanup_free_ char *mnt = xasprintf("%s/mnt", tmp);
	struct kiln_chain chain = { 0 };
	struct kiln_error *err = NULL;
	struct kiln_layers *l = NULL;
	unsigned i;

	bench_check(kiln_layers_open(ldir, v->store, &l, &err), err,
		    "kiln_layers_open");
	v->first[rep] = materialize_mount(l, v, mnt, &chain);
	check_mounted(mnt);
	unmount(mnt);
	if (rep == 0)
		check_links(v, &chain);
	kiln_chain_release(&chain);
	for (i = 0; i < CACHED_REPS; i++) {
		v->cached[rep * CACHED_REPS + i] =
			materialize_mount(l, v, mnt, &chain);
		check_mounted(mnt);
		unmount(mnt);
		kiln_chain_release(&chain);
	}
	kiln_layers_free(l);
	bench_syncfs(tmp);
}

static double cp_rep(const char *tmp, const char *src, unsigned rep)
{
	_cleanup_free_ char *dst = xasprintf("%s/cp-%u", tmp, rep);
	const char *argv[] = { "cp", "-a", src, dst, NULL };
	double t = bench_run(argv);

	bench_syncfs(tmp);
	return t;
}

static void store_tree(const char *tmp, const char *src, struct variant *v)
{
	_cleanup_free_ char *sdir = xasprintf("%s/cas-%s", tmp, v->label);
	struct kiln_store_options so = { .durable = false };
	struct kiln_tree_build_opts bo = { .adopt = v->adopt,
					   .zero_owner = !v->adopt };
	struct kiln_error *err = NULL;
	int fd;

	bench_check(kiln_store_open(sdir, &so, &v->store, &err), err,
		    "opening store");
	fd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		bench_die("open %s: %s", src, strerror(errno));
	bench_check(kiln_tree_from_dir(v->store, fd, &bo, &v->root, &err), err,
		    "kiln_tree_from_dir");
	close(fd);
}

static void report(struct variant *v, double cp, unsigned reps)
{
	double first = bench_median(v->first, reps);
	double cached = bench_median(v->cached, reps * CACHED_REPS);

	printf("RESULT materialize %s tree (adopt=%s): first %.3f s, ratio %.2f "
	       "[%zu files hardlinked, %zu copied] | cached %.2f ms, ratio %.0f "
	       "| cp -a %.3f s [medians: first of %u, cached of %u]\n",
	       v->label, v->adopt ? "true" : "false", first, cp / first,
	       v->linked, v->copied, cached * 1e3, cp / cached, cp, reps,
	       reps * CACHED_REPS);
}

int main(void)
{
	unsigned reps = bench_env_uint("BENCH_REPS", 3), i, k;
	struct variant vs[] = {
		{ .label = "context", .adopt = false },
		{ .label = "adopted", .adopt = true },
	};
	_cleanup_free_ char *tmp = NULL, *src = NULL, *mnt = NULL;
	double tcp[MAX_REPS], cp, t0;
	size_t n;

	bench_name = "bench-materialize";
	setvbuf(stdout, NULL, _IOLBF, 0);
	bench_require_root();
	if (reps > MAX_REPS)
		bench_die("BENCH_REPS is at most %d", MAX_REPS);
	tmp = bench_mkdtemp("materialize");
	src = xasprintf("%s/src", tmp);
	mnt = xasprintf("%s/mnt", tmp);
	if (mkdir(src, 0755) < 0 || mkdir(mnt, 0755) < 0)
		bench_die("mkdir under %s: %s", tmp, strerror(errno));
	bench_cleanup_mount(mnt);
	printf("%s: writing 250 dirs x %d files of %d bytes under %s\n",
	       bench_name, FILES_PER_DIR, FILE_SIZE, src);
	t0 = bench_now();
	n = bench_make_small_tree(src, FILES_PER_DIR, FILE_SIZE);
	printf("  setup: %zu files written in %.1f s\n", n, bench_now() - t0);
	t0 = bench_now();
	for (k = 0; k < ARRAY_SIZE(vs); k++)
		store_tree(tmp, src, &vs[k]);
	bench_syncfs(tmp);
	printf("  setup: both trees stored in %.1f s\n", bench_now() - t0);
	for (i = 0; i < reps; i++) {
		tcp[i] = cp_rep(tmp, src, i);
		for (k = 0; k < ARRAY_SIZE(vs); k++)
			kiln_rep(tmp, &vs[k], i);
		printf("  rep %u: cp -a %.3f s, first: %s %.3f s, %s %.3f s\n",
		       i + 1, tcp[i], vs[0].label, vs[0].first[i], vs[1].label,
		       vs[1].first[i]);
	}
	cp = bench_median(tcp, reps);
	printf("%s: %zu files\n", bench_name, n);
	for (k = 0; k < ARRAY_SIZE(vs); k++) {
		report(&vs[k], cp, reps);
		kiln_store_free(vs[k].store);
	}
	return 0;
}
