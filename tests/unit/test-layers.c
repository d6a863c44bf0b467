/*
 * Layer store: full and diff layers, real overlay mounts, hardlinked blobs,
 * adopt, squash and prune. Needs root (mounts, chown, mknod).
 */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <cmocka.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cas/tree.h"
#include "worker/layers.h"

struct state {
	char *root, *src, *mnt;
	struct kiln_store *store;
	struct kiln_layers *layers;
	struct kiln_digest t1, t2;
	struct kiln_chain c1;
};

static struct state S;

static void write_file(const char *dir, const char *rel, const char *data,
		       mode_t mode, uid_t uid, gid_t gid, time_t mtime)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", dir, rel);
	struct timespec ts[2] = { { mtime, 123 }, { mtime, 456789 } };
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(kiln_write_full(fd, data, strlen(data)), 0);
	assert_int_equal(fchown(fd, uid, gid), 0);
	assert_int_equal(fchmod(fd, mode), 0);
	assert_int_equal(futimens(fd, ts), 0);
	close(fd);
}

static void make_dir(const char *dir, const char *rel, mode_t mode)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", dir, rel);

	assert_int_equal(mkdir(p, mode), 0);
	assert_int_equal(chmod(p, mode), 0);
}

static void set_dir_time(const char *dir, const char *rel, time_t t)
{
	struct timespec ts[2] = { { t, 0 }, { t, 0 } };
	_cleanup_free_ char *p = xasprintf("%s/%s", dir, rel);

	assert_int_equal(utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW), 0);
}

static void build_src(const char *d)
{
	_cleanup_free_ char *p = NULL;

	make_dir(d, "bin", 0755);
	write_file(d, "bin/hello", "hello\n", 04755, 1000, 1000, 1600000000);
	make_dir(d, "etc", 0750);
	write_file(d, "etc/conf", "a=1\n", 0640, 0, 42, 1500000000);
	p = xasprintf("%s/etc/link", d);
	assert_int_equal(symlink("../bin/hello", p), 0);
	assert_int_equal(lchown(p, 5, 6), 0);
	free(p);
	p = xasprintf("%s/pipe", d);
	assert_int_equal(mkfifo(p, 0620), 0);
	free(p);
	make_dir(d, "empty", 0700);
	write_file(d, "gone", "bye\n", 0644, 0, 0, 1400000000);
	make_dir(d, "dir2", 0755);
	write_file(d, "dir2/a", "in dir2\n", 0600, 7, 7, 1400000000);
	write_file(d, "x", "xattr\n", 0644, 0, 0, 1400000000);
	p = xasprintf("%s/x", d);
	assert_int_equal(setxattr(p, "trusted.kiln", "v1", 2, 0), 0);
	set_dir_time(d, "bin", 1300000000);
	set_dir_time(d, "etc", 1300000001);
	set_dir_time(d, "empty", 1300000002);
	set_dir_time(d, "dir2", 1300000003);
}

static int tree_of(const char *dir, bool adopt, struct kiln_digest *out)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_tree_build_opts o = { .adopt = adopt };
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r;

	assert_true(fd >= 0);
	r = kiln_tree_from_dir(S.store, fd, &o, out, &err);
	if (r < 0)
		fail_msg("from_dir %s: %s", dir, kiln_error_msg(err));
	close(fd);
	return r;
}

static int setup(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	char tmpl[] = "/var/tmp/kiln-layers-XXXXXX";
	_cleanup_free_ char *cas = NULL, *lay = NULL;

	if (geteuid() != 0)
		fail_msg("test-layers must run as root (overlay mounts)");
	assert_non_null(mkdtemp(tmpl));
	S.root = xstrdup(tmpl);
	S.src = xasprintf("%s/src", S.root);
	S.mnt = xasprintf("%s/mnt", S.root);
	cas = xasprintf("%s/cas", S.root);
	lay = xasprintf("%s/layers", S.root);
	assert_int_equal(mkdir(S.src, 0755), 0);
	assert_int_equal(mkdir(S.mnt, 0755), 0);
	assert_int_equal(kiln_store_open(cas, NULL, &S.store, &err), 0);
	assert_int_equal(kiln_layers_open(lay, S.store, &S.layers, &err), 0);
	build_src(S.src);
	return 0;
}

static int teardown(void **st)
{
	kiln_layers_umount(S.mnt);
	kiln_chain_release(&S.c1);
	kiln_layers_free(S.layers);
	kiln_store_free(S.store);
	assert_int_equal(kiln_rm_rf(S.root), 0);
	free(S.root);
	free(S.src);
	free(S.mnt);
	return 0;
}

/* ---- comparing a mounted tree with its source ---- */

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char **names_of(int fd, size_t *n)
{
	int dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	DIR *d = fdopendir(dup);
	struct dirent *de;
	char **v = NULL;
	size_t alloc = 0;

	assert_non_null(d);
	rewinddir(d);
	*n = 0;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		v = xgrow(v, &alloc, *n + 1, sizeof(*v));
		v[(*n)++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (*n > 1)
		qsort(v, *n, sizeof(*v), cmp_names);
	return v;
}

static void cmp_content(int a, int b, const char *name)
{
	_cleanup_free_ char *x = NULL, *y = NULL;
	size_t lx, ly;

	assert_int_equal(kiln_read_file_at(a, name, 1 << 20, &x, &lx), 0);
	assert_int_equal(kiln_read_file_at(b, name, 1 << 20, &y, &ly), 0);
	assert_int_equal(lx, ly);
	assert_memory_equal(x, y, lx);
}

static void cmp_xattr(int a, int b, const char *name)
{
	char pa[64], pb[64], va[64] = "", vb[64] = "";
	ssize_t la, lb;

	snprintf(pa, sizeof(pa), "/proc/self/fd/%d/%s", a, name);
	snprintf(pb, sizeof(pb), "/proc/self/fd/%d/%s", b, name);
	la = lgetxattr(pa, "trusted.kiln", va, sizeof(va));
	lb = lgetxattr(pb, "trusted.kiln", vb, sizeof(vb));
	assert_int_equal(la, lb);
	if (la > 0)
		assert_memory_equal(va, vb, (size_t)la);
}

static void cmp_dirs(int a, int b, const char *path);

static void cmp_entry(int a, int b, const char *name, const char *path)
{
	struct stat sa, sb;

	assert_int_equal(fstatat(a, name, &sa, AT_SYMLINK_NOFOLLOW), 0);
	assert_int_equal(fstatat(b, name, &sb, AT_SYMLINK_NOFOLLOW), 0);
	if (sa.st_mode != sb.st_mode || sa.st_uid != sb.st_uid ||
	    sa.st_gid != sb.st_gid)
		fail_msg("%s: mode/owner %o %u:%u vs %o %u:%u", path,
			 sa.st_mode, sa.st_uid, sa.st_gid, sb.st_mode,
			 sb.st_uid, sb.st_gid);
	if (sa.st_mtim.tv_sec != sb.st_mtim.tv_sec ||
	    sa.st_mtim.tv_nsec != sb.st_mtim.tv_nsec)
		fail_msg("%s: mtime differs", path);
	cmp_xattr(a, b, name);
	if (S_ISREG(sa.st_mode)) {
		cmp_content(a, b, name);
	} else if (S_ISLNK(sa.st_mode)) {
		char ta[256] = "", tb[256] = "";
		assert_true(readlinkat(a, name, ta, sizeof(ta)) > 0);
		assert_true(readlinkat(b, name, tb, sizeof(tb)) > 0);
		assert_string_equal(ta, tb);
	} else if (S_ISDIR(sa.st_mode)) {
		int da = openat(a, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		int db = openat(b, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

		cmp_dirs(da, db, path);
		close(da);
		close(db);
	}
}

static void cmp_dirs(int a, int b, const char *path)
{
	size_t na, nb, i;
	char **va = names_of(a, &na), **vb = names_of(b, &nb);

	if (na != nb)
		fail_msg("%s: %zu entries vs %zu", path, na, nb);
	for (i = 0; i < na; i++) {
		_cleanup_free_ char *p = xasprintf("%s/%s", path, va[i]);

		assert_string_equal(va[i], vb[i]);
		cmp_entry(a, b, va[i], p);
		free(va[i]);
		free(vb[i]);
	}
	free(va);
	free(vb);
}

static void cmp_mounted(const struct kiln_chain *c)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	int a, b;

	if (kiln_layers_mount(c, S.mnt, NULL, NULL, &err) < 0)
		fail_msg("mount: %s", kiln_error_msg(err));
	a = open(S.src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	b = open(S.mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cmp_dirs(a, b, "");
	/* Read-only: a write must fail. */
	assert_true(openat(b, "newfile", O_WRONLY | O_CREAT | O_CLOEXEC, 0644) < 0);
	close(a);
	close(b);
	assert_int_equal(kiln_layers_umount(S.mnt), 0);
}

/* ---- tests ---- */

static void test_full_layer(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;

	assert_int_equal(tree_of(S.src, false, &S.t1), 0);
	assert_false(kiln_layers_has(S.layers, &S.t1));
	if (kiln_layers_materialize(S.layers, &S.t1, NULL, &S.c1, &err) < 0)
		fail_msg("materialize: %s", kiln_error_msg(err));
	assert_int_equal(S.c1.n, 1);
	assert_true(kiln_layers_has(S.layers, &S.t1));
	cmp_mounted(&S.c1);
}

/* Paths below dir (relative), sorted. */
static void list_rec(int fd, const char *prefix, char ***v, size_t *n,
		     size_t *alloc)
{
	size_t k, i;
	char **names = names_of(fd, &k);

	for (i = 0; i < k; i++) {
		char *p = *prefix ? xasprintf("%s/%s", prefix, names[i])
				  : xstrdup(names[i]);
		struct stat s;

		assert_int_equal(fstatat(fd, names[i], &s, AT_SYMLINK_NOFOLLOW), 0);
		*v = xgrow(*v, alloc, *n + 1, sizeof(**v));
		(*v)[(*n)++] = p;
		if (S_ISDIR(s.st_mode)) {
			int sub = openat(fd, names[i], O_RDONLY | O_DIRECTORY |
							     O_CLOEXEC);
			list_rec(sub, p, v, n, alloc);
			close(sub);
		}
		free(names[i]);
	}
	free(names);
}

static void test_diff_layer(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *p = NULL;
	struct kiln_chain c2 = { 0 };
	char **v = NULL;
	size_t n = 0, alloc = 0, i;
	struct stat s;
	int fd;

	write_file(S.src, "bin/hello", "hello, again\n", 04755, 1000, 1000,
		   1600000000);
	set_dir_time(S.src, "bin", 1300000000);
	p = xasprintf("%s/gone", S.src);
	assert_int_equal(unlink(p), 0);
	free(p);
	p = xasprintf("%s/dir2", S.src);
	assert_int_equal(kiln_rm_rf(p), 0);
	write_file(S.src, "dir2", "now a file\n", 0644, 0, 0, 1400000000);
	free(p);
	p = xasprintf("%s/pipe", S.src);
	assert_int_equal(unlink(p), 0);
	make_dir(S.src, "pipe", 0711);
	write_file(S.src, "pipe/f", "under a new dir\n", 0644, 0, 0, 1400000000);
	set_dir_time(S.src, "pipe", 1300000009);
	free(p);
	p = NULL;
	assert_int_equal(tree_of(S.src, false, &S.t2), 0);

	if (kiln_layers_materialize(S.layers, &S.t2, &S.t1, &c2, &err) < 0)
		fail_msg("materialize: %s", kiln_error_msg(err));
	assert_int_equal(c2.n, 2);
	assert_string_equal(c2.dirs[1], S.c1.dirs[0]);

	/* The new layer holds only what changed. */
	fd = open(c2.dirs[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(fd >= 0);
	list_rec(fd, "", &v, &n, &alloc);
	assert_int_equal(n, 6);
	assert_string_equal(v[0], "bin");
	assert_string_equal(v[1], "bin/hello");
	assert_string_equal(v[2], "dir2");
	assert_string_equal(v[3], "gone");
	assert_string_equal(v[4], "pipe");
	assert_string_equal(v[5], "pipe/f");
	{
		/* A directory replacing a fifo is opaque. */
		char val[4] = "";
		_cleanup_free_ char *pp = xasprintf("%s/pipe", c2.dirs[0]);

		assert_int_equal(lgetxattr(pp, "trusted.overlay.opaque", val,
					   sizeof(val)), 1);
		assert_int_equal(val[0], 'y');
	}
	assert_int_equal(fstatat(fd, "gone", &s, AT_SYMLINK_NOFOLLOW), 0);
	assert_true(S_ISCHR(s.st_mode));
	assert_int_equal(s.st_rdev, makedev(0, 0));
	assert_int_equal(fstatat(fd, "dir2", &s, AT_SYMLINK_NOFOLLOW), 0);
	assert_true(S_ISREG(s.st_mode));
	close(fd);
	for (i = 0; i < n; i++)
		free(v[i]);
	free(v);

	cmp_mounted(&c2);
	kiln_chain_release(&c2);
}

static void test_rematerialize(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_chain a = { 0 }, b = { 0 };
	size_t i;

	assert_int_equal(kiln_layers_materialize(S.layers, &S.t2, NULL, &a, &err), 0);
	assert_int_equal(kiln_layers_materialize(S.layers, &S.t2, &S.t1, &b, &err), 0);
	assert_int_equal(a.n, 2);
	assert_int_equal(a.n, b.n);
	for (i = 0; i < a.n; i++)
		assert_string_equal(a.dirs[i], b.dirs[i]);
	kiln_chain_release(&a);
	kiln_chain_release(&b);
}

static void test_hardlinks(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *dir = xasprintf("%s/hl", S.root);
	_cleanup_free_ char *blob = NULL, *lf = NULL, *cf = NULL;
	struct kiln_digest t, fd_d;
	struct kiln_chain c = { 0 };
	struct stat sb, sl, sc;
	uint64_t size;
	int fd;

	assert_int_equal(mkdir(dir, 0755), 0);
	write_file(dir, "unique", "content only in this test\n", 0640, 3, 4,
		   1234567890);
	/* adopt: the blob is the source inode, with its metadata */
	assert_int_equal(tree_of(dir, true, &t), 0);
	assert_int_equal(kiln_layers_materialize(S.layers, &t, NULL, &c, &err), 0);
	assert_int_equal(c.n, 1);
	fd = open(dir, O_RDONLY | O_CLOEXEC | O_DIRECTORY);
	{
		int f = openat(fd, "unique", O_RDONLY | O_CLOEXEC);
		assert_int_equal(kiln_digest_fd(f, &fd_d, &size), 0);
		close(f);
	}
	close(fd);
	blob = kiln_store_blob_path(S.store, &fd_d);
	lf = xasprintf("%s/unique", c.dirs[0]);
	assert_int_equal(stat(blob, &sb), 0);
	assert_int_equal(stat(lf, &sl), 0);
	assert_int_equal(sb.st_ino, sl.st_ino);

	/*
	 * Copied in (not adopted): a new blob takes its first entry's
	 * metadata, so that entry is hardlinked; a second entry with the same
	 * bytes but another mode must be a copy with its own mode.
	 */
	kiln_chain_release(&c);
	free(blob);
	free(lf);
	{
		_cleanup_free_ char *d2 = xasprintf("%s-copy", dir);
		struct kiln_digest t2;
		struct stat s1, s2;
		_cleanup_free_ char *l1 = NULL, *l2 = NULL;

		assert_int_equal(mkdir(d2, 0755), 0);
		write_file(d2, "a", "same bytes, two modes\n", 0640, 0, 0, 1234567890);
		write_file(d2, "b", "same bytes, two modes\n", 0600, 0, 0, 1234567890);
		assert_int_equal(tree_of(d2, false, &t2), 0);
		assert_int_equal(kiln_layers_materialize(S.layers, &t2, NULL, &c, &err), 0);
		l1 = xasprintf("%s/a", c.dirs[0]);
		l2 = xasprintf("%s/b", c.dirs[0]);
		fd = open(l1, O_RDONLY | O_CLOEXEC);
		assert_int_equal(kiln_digest_fd(fd, &fd_d, &size), 0);
		close(fd);
		blob = kiln_store_blob_path(S.store, &fd_d);
		assert_int_equal(stat(blob, &sb), 0);
		assert_int_equal(stat(l1, &s1), 0);
		assert_int_equal(stat(l2, &s2), 0);
		/* Whichever entry stored the blob first shares its inode. */
		assert_true((sb.st_ino == s1.st_ino) != (sb.st_ino == s2.st_ino));
		assert_int_equal(sb.st_mode & 07777,
				 sb.st_ino == s1.st_ino ? 0640u : 0600u);
		assert_int_equal(s1.st_mode & 07777, 0640);
		assert_int_equal(s2.st_mode & 07777, 0600);
		kiln_rm_rf(d2);
	}
	lf = NULL;
	(void)sc;
	(void)cf;
	kiln_chain_release(&c);
}

/* Many adopted layers: materialize squashes what one mount cannot hold. */
static void test_adopt_and_squash(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_tree_build_opts o = { .adopt = true };
	struct kiln_digest prev = S.t2, next;
	struct kiln_chain c = { 0 };
	int i;

	for (i = 0; i < 100; i++) {
		_cleanup_free_ char *dir = NULL, *name = xasprintf("f%03d", i);
		char data[32];
		int fd;

		assert_int_equal(kiln_layers_mkscratch(S.layers, &dir, &err), 0);
		snprintf(data, sizeof(data), "step %d\n", i);
		write_file(dir, name, data, 0644, 0, 0, 1700000000);
		fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		assert_int_equal(kiln_tree_apply_layer(S.store, &prev, fd, &o,
						       &next, &err), 0);
		close(fd);
		if (kiln_layers_adopt(S.layers, &next, &prev, dir, &err) < 0)
			fail_msg("adopt: %s", kiln_error_msg(err));
		assert_true(kiln_layers_has(S.layers, &next));
		prev = next;
	}
	if (kiln_layers_materialize(S.layers, &prev, NULL, &c, &err) < 0)
		fail_msg("materialize: %s", kiln_error_msg(err));
	assert_true(c.n >= 1 && c.n < 100);
	assert_int_equal(kiln_layers_mount(&c, S.mnt, NULL, NULL, &err), 0);
	{
		_cleanup_free_ char *f0 = xasprintf("%s/f000", S.mnt);
		_cleanup_free_ char *f99 = xasprintf("%s/f099", S.mnt);
		_cleanup_free_ char *g = xasprintf("%s/gone", S.mnt);

		assert_int_equal(access(f0, R_OK), 0);
		assert_int_equal(access(f99, R_OK), 0);
		assert_int_not_equal(access(g, F_OK), 0);
	}
	assert_int_equal(kiln_layers_umount(S.mnt), 0);
	kiln_chain_release(&c);
}

static void test_prune(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	uint64_t freed = 0, bytes;
	size_t count;

	assert_int_equal(kiln_layers_prune(S.layers, &S.t2, 1, &freed, &err), 0);
	assert_true(kiln_layers_has(S.layers, &S.t2));
	assert_true(kiln_layers_has(S.layers, &S.t1));
	assert_int_equal(kiln_layers_usage(S.layers, &bytes, &count), 0);
	assert_int_equal(count, 2);
	assert_true(freed > 0);
}

static void test_empty_chain_mount(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_chain c = { 0 };
	struct kiln_digest empty;
	int fd;

	kiln_tree_empty_digest(&empty);
	assert_int_equal(kiln_layers_materialize(S.layers, &empty, NULL, &c, &err), 0);
	assert_int_equal(c.n, 0);
	assert_int_equal(kiln_layers_mount(&c, S.mnt, NULL, NULL, &err), 0);
	fd = open(S.mnt, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(openat(fd, "x", O_WRONLY | O_CREAT | O_CLOEXEC, 0644) < 0);
	close(fd);
	assert_int_equal(kiln_layers_umount(S.mnt), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_layer),
		cmocka_unit_test(test_diff_layer),
		cmocka_unit_test(test_rematerialize),
		cmocka_unit_test(test_hardlinks),
		cmocka_unit_test(test_adopt_and_squash),
		cmocka_unit_test(test_prune),
		cmocka_unit_test(test_empty_chain_mount),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
