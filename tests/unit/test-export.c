/* Exporters (local, tar), -o spec parsing and CAS garbage collection. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cas/gc.h"
#include "cas/tree.h"
#include "export/export.h"
#include "export/pgzip.h"
#include <zlib.h>
#include <zstd.h>

struct fixture {
	char *dir;   /* temp root of everything below */
	char *src;   /* the directory the tree is built from */
	struct kiln_store *store;
	struct kiln_digest tree;
};

/* Over ustar's 100 bytes: needs a pax extended header. */
#define LONG_NAME                                                              \
	"llllllllllllllllllllllllllllllllllllllllllllllllllllllllllllllll"      \
	"llllllllllllllllllllllllllllllllllllllllllllllllllllllll"

/* Paths of the sample tree, in walk order, for stat comparisons. */
static const char *const sample_paths[] = {
	"a.txt", "bin", "bin/run.sh", "empty", "link", "sub", "sub/deep",
	"sub/deep/" LONG_NAME, "sub/deep/x", "sub/y",
};

static void write_file(const char *dir, const char *rel, const char *data,
		       mode_t mode)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", dir, rel);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(kiln_write_full(fd, data, strlen(data)), 0);
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
}

static void set_mtime(const char *dir, const char *rel, time_t sec, long nsec)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", dir, rel);
	struct timespec ts[2] = { { sec, nsec }, { sec, nsec } };

	assert_int_equal(utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW), 0);
}

static void mkdir_in(const char *dir, const char *rel, mode_t mode)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", dir, rel);

	assert_int_equal(mkdir(p, mode), 0);
	assert_int_equal(chmod(p, mode), 0);
}

/* Files with modes, a symlink to /etc/passwd, nested and empty dirs. */
static void make_sample(const char *src)
{
	_cleanup_free_ char *link = xasprintf("%s/link", src);
	size_t i;

	write_file(src, "a.txt", "hello\n", 0644);
	mkdir_in(src, "bin", 0755);
	write_file(src, "bin/run.sh", "#!/bin/sh\necho hi\n", 0755);
	mkdir_in(src, "empty", 0700);
	assert_int_equal(symlink("/etc/passwd", link), 0);
	mkdir_in(src, "sub", 0750);
	mkdir_in(src, "sub/deep", 0755);
	write_file(src, "sub/deep/" LONG_NAME, "long", 0640);
	write_file(src, "sub/deep/x", "deep data", 0600);
	write_file(src, "sub/y", "", 0444);
	/* Deepest first so a child's mtime change does not move its parent. */
	for (i = ARRAY_SIZE(sample_paths); i-- > 0;)
		set_mtime(src, sample_paths[i], 1600000000 + (time_t)i,
			  (long)i * 1000);
}

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	struct kiln_store_options so = { .durable = false };
	struct kiln_tree_build_opts bo = { 0 };
	struct kiln_error *err = NULL;
	_cleanup_free_ char *cas = NULL;
	char tmpl[] = "/tmp/kiln-test-export-XXXXXX";
	int fd;

	assert_non_null(mkdtemp(tmpl));
	f->dir = xstrdup(tmpl);
	f->src = xasprintf("%s/src", f->dir);
	assert_int_equal(mkdir(f->src, 0755), 0);
	make_sample(f->src);
	cas = xasprintf("%s/cas", f->dir);
	assert_int_equal(kiln_store_open(cas, &so, &f->store, &err), 0);
	fd = open(f->src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(kiln_tree_from_dir(f->store, fd, &bo, &f->tree, &err), 0);
	close(fd);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	kiln_store_free(f->store);
	assert_int_equal(kiln_rm_rf(f->dir), 0);
	free(f->src);
	free(f->dir);
	free(f);
	return 0;
}

static int run(const char *cmd)
{
	int st = system(cmd);

	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void assert_same_stat(const char *a, const char *b, const char *rel)
{
	_cleanup_free_ char *pa = xasprintf("%s/%s", a, rel);
	_cleanup_free_ char *pb = xasprintf("%s/%s", b, rel);
	struct stat sa, sb;

	assert_int_equal(lstat(pa, &sa), 0);
	assert_int_equal(lstat(pb, &sb), 0);
	if ((sa.st_mode & S_IFMT) != (sb.st_mode & S_IFMT) ||
	    (!S_ISLNK(sa.st_mode) && sa.st_mode != sb.st_mode))
		fail_msg("%s: mode %o vs %o", rel, sa.st_mode, sb.st_mode);
	if (sa.st_mtim.tv_sec != sb.st_mtim.tv_sec ||
	    sa.st_mtim.tv_nsec != sb.st_mtim.tv_nsec)
		fail_msg("%s: mtime differs", rel);
	assert_int_equal(sa.st_uid, sb.st_uid);
	assert_int_equal(sa.st_size, sb.st_size);
}

static void assert_same_tree(const char *a, const char *b)
{
	_cleanup_free_ char *cmd = xasprintf("diff -r --no-dereference %s %s", a, b);
	size_t i;

	assert_int_equal(run(cmd), 0);
	for (i = 0; i < ARRAY_SIZE(sample_paths); i++)
		assert_same_stat(a, b, sample_paths[i]);
}

static void test_local_roundtrip(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *d1 = xasprintf("%s/out1/nested", f->dir);
	_cleanup_free_ char *d2 = xasprintf("%s/out2", f->dir);
	_cleanup_free_ char *link = xasprintf("%s/link", d1);
	struct kiln_error *err = NULL;
	char target[64] = { 0 };

	assert_int_equal(kiln_export_local(f->store, &f->tree, d1, &err), 0);
	assert_same_tree(f->src, d1);
	assert_true(readlink(link, target, sizeof(target) - 1) > 0);
	assert_string_equal(target, "/etc/passwd");
	/* Another export, and the same again over the first: identical. */
	assert_int_equal(kiln_export_local(f->store, &f->tree, d2, &err), 0);
	assert_int_equal(kiln_export_local(f->store, &f->tree, d1, &err), 0);
	assert_same_tree(d1, d2);
	assert_same_tree(f->src, d1);
	assert_null(err);
}

/* dest already has symlinks where the tree has a dir and a file. */
static void test_local_never_follows(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *dest = xasprintf("%s/out", f->dir);
	_cleanup_free_ char *victim = xasprintf("%s/victim", f->dir);
	_cleanup_free_ char *vfile = xasprintf("%s/victim-file", f->dir);
	_cleanup_free_ char *sub = xasprintf("%s/sub", dest);
	_cleanup_free_ char *a = xasprintf("%s/a.txt", dest);
	_cleanup_free_ char *cmd = xasprintf("test -z \"$(ls -A %s)\"", victim);
	struct kiln_error *err = NULL;
	struct stat st;

	assert_int_equal(mkdir(dest, 0755), 0);
	assert_int_equal(mkdir(victim, 0755), 0);
	write_file(f->dir, "victim-file", "keep me", 0644);
	assert_int_equal(symlink(victim, sub), 0);
	assert_int_equal(symlink(vfile, a), 0);

	assert_int_equal(kiln_export_local(f->store, &f->tree, dest, &err), 0);
	assert_int_equal(run(cmd), 0); /* nothing written through "sub" */
	assert_int_equal(lstat(sub, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(lstat(a, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(stat(vfile, &st), 0);
	assert_int_equal(st.st_size, 7);
	assert_same_tree(f->src, dest);
}

static void test_tar_deterministic(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *t1 = xasprintf("%s/one.tar", f->dir);
	_cleanup_free_ char *t2 = xasprintf("%s/two.tar", f->dir);
	_cleanup_free_ char *t3 = xasprintf("%s/fd.tar", f->dir);
	_cleanup_free_ char *cmp = xasprintf("cmp %s %s && cmp %s %s", t1, t2, t1, t3);
	struct kiln_error *err = NULL;
	int fd;

	assert_int_equal(kiln_export_tar(f->store, &f->tree, t1, &err), 0);
	assert_int_equal(kiln_export_tar(f->store, &f->tree, t2, &err), 0);
	fd = open(t3, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(kiln_export_tar_fd(f->store, &f->tree, fd, &err), 0);
	close(fd);
	assert_int_equal(run(cmp), 0);
	assert_null(err);
}

/* "-rwxr-xr-x 0/0 19 2020-09-13 12:26 bin/run.sh" -> mode, owner, name. */
static void parse_tv(char *line, char **mode, char **owner, char **name)
{
	char *save = NULL;
	size_t i;

	line[strcspn(line, "\n")] = '\0';
	*mode = strtok_r(line, " ", &save);
	*owner = strtok_r(NULL, " ", &save);
	for (i = 0; i < 3; i++) /* size, date, time */
		assert_non_null(strtok_r(NULL, " ", &save));
	*name = save;
}

static void test_tar_listing(void **state)
{
	static const char *const want[][3] = {
		{ "-rw-r--r--", "0/0", "a.txt" },
		{ "drwxr-xr-x", "0/0", "bin/" },
		{ "-rwxr-xr-x", "0/0", "bin/run.sh" },
		{ "drwx------", "0/0", "empty/" },
		{ "lrwxrwxrwx", "0/0", "link -> /etc/passwd" },
		{ "drwxr-x---", "0/0", "sub/" },
		{ "drwxr-xr-x", "0/0", "sub/deep/" },
		{ "-rw-r-----", "0/0", "sub/deep/" LONG_NAME },
		{ "-rw-------", "0/0", "sub/deep/x" },
		{ "-r--r--r--", "0/0", "sub/y" },
	};
	struct fixture *f = *state;
	_cleanup_free_ char *t = xasprintf("%s/list.tar", f->dir);
	_cleanup_free_ char *cmd = xasprintf("tar -tvf %s", t);
	struct kiln_error *err = NULL;
	char line[512];
	size_t n = 0;
	FILE *p;

	/* Owners are 0 only when the test created the files as root. */
	if (geteuid() != 0)
		skip();
	assert_int_equal(kiln_export_tar(f->store, &f->tree, t, &err), 0);
	p = popen(cmd, "re");
	assert_non_null(p);
	while (fgets(line, sizeof(line), p)) {
		char *mode, *owner, *name;

		assert_true(n < ARRAY_SIZE(want));
		parse_tv(line, &mode, &owner, &name);
		assert_string_equal(mode, want[n][0]);
		/* No uname/gname in the archive: tar shows numbers. */
		assert_string_equal(owner, want[n][1]);
		assert_string_equal(name, want[n][2]);
		n++;
	}
	assert_int_equal(pclose(p), 0);
	assert_int_equal(n, ARRAY_SIZE(want));
}

/* Hardlink groups: linked in type=local, tar hardlink entries in type=tar. */
static void test_hardlinks(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *src = xasprintf("%s/hl", f->dir);
	_cleanup_free_ char *out = xasprintf("%s/hl-out", f->dir);
	_cleanup_free_ char *t = xasprintf("%s/hl.tar", f->dir);
	_cleanup_free_ char *a = xasprintf("%s/a", src), *b = xasprintf("%s/sub/b", src);
	_cleanup_free_ char *cmd = xasprintf("tar -tvf %s", t);
	_cleanup_free_ char *oa = xasprintf("%s/a", out), *ob = xasprintf("%s/sub/b", out);
	_cleanup_free_ char *oc = xasprintf("%s/sub/c", out);
	struct kiln_tree_build_opts bo = { 0 };
	struct kiln_error *err = NULL;
	struct kiln_digest tree;
	struct stat sa, sb, sc;
	char line[512];
	int fd, links = 0, files = 0;
	FILE *p;

	assert_int_equal(mkdir(src, 0755), 0);
	write_file(src, "a", "linked data\n", 0640);
	mkdir_in(src, "sub", 0755);
	assert_int_equal(link(a, b), 0);
	write_file(src, "sub/c", "linked data\n", 0640); /* same bytes, own inode */
	fd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(kiln_tree_from_dir(f->store, fd, &bo, &tree, &err), 0);
	close(fd);

	assert_int_equal(kiln_export_local(f->store, &tree, out, &err), 0);
	assert_int_equal(stat(oa, &sa), 0);
	assert_int_equal(stat(ob, &sb), 0);
	assert_int_equal(stat(oc, &sc), 0);
	assert_true(sa.st_ino == sb.st_ino);
	assert_int_equal(sa.st_nlink, 2);
	assert_true(sc.st_ino != sa.st_ino);
	assert_int_equal(sc.st_nlink, 1);

	assert_int_equal(kiln_export_tar(f->store, &tree, t, &err), 0);
	p = popen(cmd, "re");
	assert_non_null(p);
	while (fgets(line, sizeof(line), p)) {
		links += strstr(line, "sub/b link to a") != NULL;
		files += line[0] == '-';
	}
	assert_int_equal(pclose(p), 0);
	assert_int_equal(links, 1);
	assert_int_equal(files, 2); /* a and sub/c carry data; sub/b does not */
	assert_null(err);
}

static void expect_spec(const char *spec, const char *type, const char *dest)
{
	struct kiln_export_spec s;
	struct kiln_error *err = NULL;

	assert_int_equal(kiln_export_spec_parse(spec, &s, &err), 0);
	assert_string_equal(s.type, type);
	assert_string_equal(s.dest, dest);
	kiln_export_spec_release(&s);
}

static void expect_spec_error(const char *spec, const char *needle)
{
	struct kiln_export_spec s;
	struct kiln_error *err = NULL;

	assert_true(kiln_export_spec_parse(spec, &s, &err) < 0);
	assert_non_null(err);
	if (!strstr(err->msg, needle))
		fail_msg("error for '%s' is '%s', want '%s'", spec, err->msg,
			 needle);
	kiln_error_free(err);
	assert_null(s.type);
	assert_null(s.dest);
}

static void test_spec_parse(void **state)
{
	expect_spec("type=local,dest=out", "local", "out");
	expect_spec("dest=/tmp/x,type=tar", "tar", "/tmp/x");
	expect_spec("type=tar,dest=-", "tar", "-");
	expect_spec("outdir", "local", "outdir");
	expect_spec("-", "tar", "-");
	expect_spec("dest=d", "local", "d");
	expect_spec("type=oci,dest=img.tar,name=app:1,compression=zstd", "oci", "img.tar");
	expect_spec_error("type=docker,dest=x", "\"docker\"");
	expect_spec_error("type=image,dest=x,name=r", "not dest=");
	expect_spec_error("type=image,push=true", "needs name=");
	expect_spec_error("type=image,name=r,push=maybe", "push=maybe");
	expect_spec("type=oci,dest=i.tar,compression=zstd,force-compression=true", "oci", "i.tar");
	expect_spec("type=oci,dest=i.tar,compression=uncompressed", "oci", "i.tar");
	expect_spec_error("type=oci,dest=x,compression=lz4", "compression=lz4");
	expect_spec_error("type=oci,dest=x,force-compression=1", "force-compression=1");
	expect_spec_error("type=local,dest=x,force-compression=true", "takes only dest=");
	expect_spec_error("type=local,dest=x,name=y", "takes only dest=");
	expect_spec_error("type=local,dst=x", "\"dst\"");
	expect_spec_error("type=tar", "needs dest");
	expect_spec_error("type=tar,dest=", "needs dest");
	expect_spec_error("type=local,dest=a,dest=b", "twice");
	expect_spec_error("type=local,dest=x,junk", "\"junk\"");
	expect_spec_error("type=local,dest=-", "stdout");
	expect_spec_error("", "empty");
}

static void test_export_run(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *spec = xasprintf("type=local,dest=%s/run", f->dir);
	_cleanup_free_ char *out = xasprintf("%s/run", f->dir);
	struct kiln_export_spec s;
	struct kiln_error *err = NULL;

	assert_int_equal(kiln_export_spec_parse(spec, &s, &err), 0);
	assert_int_equal(kiln_export_run(f->store, &f->tree, &s, &err), 0);
	kiln_export_spec_release(&s);
	assert_same_tree(f->src, out);
}

static void test_digest_set(void **state)
{
	struct kiln_digest_set *s = kiln_digest_set_new();
	struct kiln_digest d = { .algo = KILN_DIGEST_SHA256 };
	uint32_t i;

	for (i = 0; i < 5000; i++) {
		kiln_digest_buf(&i, sizeof(i), &d);
		assert_true(kiln_digest_set_add(s, &d));
		assert_false(kiln_digest_set_add(s, &d));
	}
	assert_int_equal(kiln_digest_set_size(s), 5000);
	for (i = 0; i < 10000; i++) {
		kiln_digest_buf(&i, sizeof(i), &d);
		assert_int_equal(kiln_digest_set_has(s, &d), i < 5000);
	}
	kiln_digest_set_free(s);
}

struct count { size_t n; };

static int count_blob(const struct kiln_digest *d, uint64_t size, void *ud)
{
	((struct count *)ud)->n++;
	return 0;
}

static size_t blob_count(struct kiln_store *s)
{
	struct count c = { 0 };

	assert_int_equal(kiln_store_foreach(s, count_blob, &c), 0);
	return c.n;
}

static void test_gc_sweep(void **state)
{
	struct fixture *f = *state;
	struct kiln_digest_set *marked = kiln_digest_set_new();
	struct kiln_digest junk;
	struct kiln_error *err = NULL;
	uint64_t removed = 0, freed = 0;
	size_t before;

	assert_int_equal(kiln_store_put_buf(f->store, "unrelated", 9, &junk,
					    &err), 0);
	before = blob_count(f->store);
	assert_int_equal(kiln_gc_mark_tree(f->store, &f->tree, marked, &err), 0);
	assert_false(kiln_digest_set_has(marked, &junk));
	assert_int_equal(kiln_digest_set_size(marked), before - 1);
	assert_int_equal(kiln_gc_sweep(f->store, marked, &removed, &freed, &err),
			 0);
	assert_int_equal(removed, 1);
	assert_int_equal(freed, 9);
	assert_false(kiln_store_has(f->store, &junk));
	assert_int_equal(blob_count(f->store), before - 1);
	/* Everything the tree needs survived: a second sweep is a no-op. */
	assert_int_equal(kiln_gc_sweep(f->store, marked, &removed, &freed, &err),
			 0);
	assert_int_equal(removed, 0);
	kiln_digest_set_free(marked);
	assert_null(err);
}

struct problems { size_t n; struct kiln_digest last; int code; };

static void on_problem(const struct kiln_digest *d, int code, void *ud)
{
	struct problems *p = ud;

	p->n++;
	p->last = *d;
	p->code = code;
}

/* A missing file blob is reported by digest; the rest is still marked. */
static void test_gc_mark_missing(void **state)
{
	struct fixture *f = *state;
	struct kiln_digest_set *marked = kiln_digest_set_new();
	struct kiln_tree_entry e;
	struct problems p = { 0 };
	const struct kiln_gc_mark_opts opts = { .problem = on_problem, .ud = &p };
	struct kiln_error *err = NULL;

	assert_int_equal(kiln_tree_lookup(f->store, &f->tree, "sub/deep/x", &e,
					  &err), 0);
	assert_int_equal(kiln_store_remove(f->store, &e.digest), 0);
	assert_int_equal(kiln_gc_mark_tree_opts(f->store, &f->tree, marked, &opts,
						&err), -ENOENT);
	assert_non_null(err);
	assert_non_null(strstr(err->msg, KILN_DIGEST_STR(&e.digest)));
	assert_int_equal(p.n, 1);
	assert_true(kiln_digest_eq(&p.last, &e.digest));
	/* The incomplete root is not marked; a sibling's blob is. */
	assert_false(kiln_digest_set_has(marked, &f->tree));
	kiln_tree_entry_release(&e);
	assert_int_equal(kiln_tree_lookup(f->store, &f->tree, "a.txt", &e, NULL),
			 0);
	assert_true(kiln_digest_set_has(marked, &e.digest));
	kiln_tree_entry_release(&e);
	/* Marking again reports it again. */
	assert_int_equal(kiln_gc_mark_tree_opts(f->store, &f->tree, marked, &opts,
						NULL), -ENOENT);
	assert_int_equal(p.n, 2);
	kiln_error_free(err);
	kiln_digest_set_free(marked);
}

/* ---- parallel gzip ---- */

struct gzbuf {
	unsigned char *p;
	size_t len, alloc;
	unsigned calls;
};

static int gz_collect(void *ud, const void *data, size_t n)
{
	struct gzbuf *b = ud;

	if (b->len + n > b->alloc) {
		b->alloc = (b->len + n) * 2;
		b->p = xrealloc(b->p, b->alloc);
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->calls++;
	return 0;
}

/* in through kiln_pgzip at level with threads, written in pieces of step. */
static void pgzip_run(const unsigned char *in, size_t n, int level, unsigned threads,
		      size_t step, struct gzbuf *out)
{
	struct kiln_pgzip *z = kiln_pgzip_new(level, threads, gz_collect, out);
	size_t off;

	assert_non_null(z);
	memset(out, 0, sizeof(*out));
	for (off = 0; off < n; off += step)
		assert_int_equal(kiln_pgzip_write(z, in + off, n - off < step ? n - off : step), 0);
	assert_int_equal(kiln_pgzip_finish(z), 0);
	assert_int_equal(kiln_pgzip_write(z, "x", 1), -EINVAL); /* nothing after finish */
	kiln_pgzip_free(z);
}

/* zlib's own reader (windowBits 31: gzip) checks the CRC and the length. */
static void gunzip_equals(const struct gzbuf *gz, const unsigned char *in, size_t n)
{
	z_stream zs = { 0 };
	unsigned char *back = xmalloc(n + 16);

	assert_int_equal(inflateInit2(&zs, 31), Z_OK);
	zs.next_in = gz->p;
	zs.avail_in = (uInt)gz->len;
	zs.next_out = back;
	zs.avail_out = (uInt)(n + 16);
	assert_int_equal(inflate(&zs, Z_FINISH), Z_STREAM_END);
	assert_int_equal(zs.total_out, n);
	assert_int_equal(zs.avail_in, 0); /* one stream, nothing after it */
	assert_memory_equal(back, in, n);
	inflateEnd(&zs);
	free(back);
}

/*
 * One valid gzip stream whatever the size (empty, under the 32 KiB
 * dictionary, at and around the 128 KiB chunk, many chunks), and the same
 * bytes for any number of threads and any way of cutting the writes: a
 * layer's digest may not depend on the machine.
 */
static void test_pgzip(void **state)
{
	static const size_t sizes[] = { 0, 1, 1000, 32768, 131071, 131072, 131073,
					 262144, 5u << 20 };
	size_t n_max = 5u << 20, i, k;
	unsigned char *in = xmalloc(n_max);
	unsigned seed = 12345;

	(void)state;
	/* Text-like and random stretches: back references across chunks. */
	for (i = 0; i < n_max; i++) {
		seed = seed * 1103515245u + 12345u;
		in[i] = (i / 40000) % 3 == 2 ? (unsigned char)(seed >> 16)
					     : (unsigned char)("the quick brown fox "[i % 20] + (i / 300000) % 3);
	}
	for (k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		struct gzbuf ref, other;
		static const unsigned threads[] = { 0, 1, 3, 8 };
		static const size_t steps[] = { 7, 65536, 1u << 30 };
		size_t t;

		pgzip_run(in, sizes[k], 6, 2, 100000, &ref);
		assert_true(ref.len >= 18);
		assert_int_equal(ref.p[0], 0x1f);
		assert_int_equal(ref.p[1], 0x8b);
		assert_int_equal(ref.p[4] | ref.p[5] | ref.p[6] | ref.p[7], 0); /* mtime 0 */
		gunzip_equals(&ref, in, sizes[k]);
		for (t = 0; t < 4; t++) {
			if (sizes[k] > 300000 && steps[t % 3] == 7)
				continue; /* 7-byte writes of 5 MiB: slow under ASan, nothing new */
			pgzip_run(in, sizes[k], 6, threads[t], steps[t % 3], &other);
			assert_int_equal(other.len, ref.len);
			assert_memory_equal(other.p, ref.p, ref.len);
			free(other.p);
		}
		free(ref.p);
	}
	/* The level matters, and a compressible input shrinks as with zlib. */
	{
		struct gzbuf l1, l9;
		uLongf zlen = compressBound(n_max);
		unsigned char *zb = xmalloc(zlen);

		pgzip_run(in, n_max, 1, 2, 1u << 20, &l1);
		pgzip_run(in, n_max, 9, 2, 1u << 20, &l9);
		assert_int_equal(l1.p[8], 4);
		assert_int_equal(l9.p[8], 2);
		assert_true(l9.len < l1.len);
		gunzip_equals(&l1, in, n_max);
		gunzip_equals(&l9, in, n_max);
		assert_int_equal(compress2(zb, &zlen, in, n_max, 9), Z_OK);
		assert_true(l9.len < zlen + zlen / 50 + 1024); /* within 2% of one stream */
		free(zb);
		free(l1.p);
		free(l9.p);
	}
	free(in);
}

/*
 * What layer-diff.c relies on for zstd: libzstd's output is the same for
 * any number of workers >= 1 (it is not for 0). A libzstd that broke
 * this would make layer digests depend on the machine's cores.
 */
static size_t zstd_mt(const void *in, size_t n, int workers, void *out, size_t cap)
{
	ZSTD_CCtx *c = ZSTD_createCCtx();
	size_t r;

	assert_non_null(c);
	assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, 3)));
	assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1)));
	assert_false(ZSTD_isError(ZSTD_CCtx_setParameter(c, ZSTD_c_nbWorkers, workers)));
	r = ZSTD_compress2(c, out, cap, in, n);
	assert_false(ZSTD_isError(r));
	ZSTD_freeCCtx(c);
	return r;
}

static void test_zstd_workers_deterministic(void **state)
{
	size_t n = 12u << 20, cap = ZSTD_compressBound(n), a, b, i;
	unsigned char *in = xmalloc(n), *oa = xmalloc(cap), *ob = xmalloc(cap);
	unsigned seed = 7;

	(void)state;
	for (i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		in[i] = (i / 50000) % 2 ? (unsigned char)(seed >> 16) : (unsigned char)("layer"[i % 5]);
	}
	a = zstd_mt(in, n, 1, oa, cap);
	b = zstd_mt(in, n, 4, ob, cap);
	assert_int_equal(a, b);
	assert_memory_equal(oa, ob, a);
	free(in);
	free(oa);
	free(ob);
}

/* An emit failure stops the stream and is returned from then on. */
static int gz_refuse(void *ud, const void *data, size_t n)
{
	(void)ud, (void)data, (void)n;
	return -ENOSPC;
}

static void test_pgzip_emit_fails(void **state)
{
	struct kiln_pgzip *z = kiln_pgzip_new(6, 2, gz_refuse, NULL);
	unsigned char *in = xcalloc(1, 4u << 20);
	int r;

	(void)state;
	r = kiln_pgzip_write(z, in, 4u << 20); /* the ring fills: chunks are emitted */
	assert_int_equal(r, -ENOSPC);
	assert_int_equal(kiln_pgzip_write(z, in, 10), -ENOSPC);
	assert_int_equal(kiln_pgzip_finish(z), -ENOSPC);
	kiln_pgzip_free(z);
	free(in);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pgzip),
		cmocka_unit_test(test_pgzip_emit_fails),
		cmocka_unit_test(test_zstd_workers_deterministic),
		cmocka_unit_test_setup_teardown(test_local_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_local_never_follows, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_tar_deterministic, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_tar_listing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hardlinks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_export_run, setup, teardown),
		cmocka_unit_test(test_spec_parse),
		cmocka_unit_test(test_digest_set),
		cmocka_unit_test_setup_teardown(test_gc_sweep, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gc_mark_missing, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
