/*
 * Unit tests for cas/tree: the canonical codec, building trees from real
 * directories and overlay layers, walking, diffing and editing.
 */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cas/tree.h"

#define T0 1700000000

struct fixture {
	char dir[64];
	struct kiln_store *s;
};

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	struct kiln_store_options o = { .durable = false };
	_cleanup_free_ char *store = NULL;

	snprintf(f->dir, sizeof(f->dir), "/tmp/kiln-tree-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	store = kiln_path_join(f->dir, "store");
	if (kiln_store_open(store, &o, &f->s, NULL) < 0)
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	kiln_store_free(f->s);
	kiln_rm_rf(f->dir);
	free(f);
	return 0;
}

/* ---- building directories on disk ---- */

enum { F, D, L, P, W, O, C, H };

struct spec {
	int kind; /* F file, D dir, L symlink, P fifo, W whiteout, O opaque dir, C chardev, H hardlink */
	const char *path;
	const char *arg; /* file content, link target, or (H) the path to link */
	unsigned mode;   /* 0: 0644 files, 0755 dirs */
};

static void make_one(const char *root, const struct spec *sp)
{
	_cleanup_free_ char *p = kiln_path_join(root, sp->path);
	_cleanup_free_ char *parent = xstrdup(p);
	unsigned mode = sp->mode;

	*strrchr(parent, '/') = '\0';
	assert_int_equal(kiln_mkdir_p(parent, 0755), 0);
	switch (sp->kind) {
	case F:
		assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, p, sp->arg,
							   strlen(sp->arg),
							   mode ? mode : 0644, false), 0);
		break;
	case D:
	case O:
		assert_int_equal(kiln_mkdir_p(p, 0755), 0);
		assert_int_equal(chmod(p, mode ? mode : 0755), 0);
		if (sp->kind == O)
			assert_int_equal(setxattr(p, "trusted.overlay.opaque", "y", 1, 0), 0);
		break;
	case L:
		assert_int_equal(symlink(sp->arg, p), 0);
		break;
	case P:
		assert_int_equal(mkfifo(p, 0600), 0);
		break;
	case W:
		assert_int_equal(mknod(p, S_IFCHR | 0, makedev(0, 0)), 0);
		break;
	case C:
		assert_int_equal(mknod(p, S_IFCHR | 0666, makedev(1, 3)), 0);
		break;
	case H: {
		_cleanup_free_ char *old = kiln_path_join(root, sp->arg);

		assert_int_equal(link(old, p), 0);
		break;
	}
	}
}

static int set_time(const char *path, const struct stat *st, int flag,
		    struct FTW *ftw)
{
	struct timespec ts[2] = { { T0, 5 }, { T0, 5 } };

	return utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW);
}

/* Create root with the entries of spec, every mtime then fixed to T0. */
static char *make_dir(struct fixture *f, const char *name,
		      const struct spec *spec, size_t n)
{
	char *root = kiln_path_join(f->dir, name);
	size_t i;

	assert_int_equal(kiln_mkdir_p(root, 0755), 0);
	for (i = 0; i < n; i++)
		make_one(root, &spec[i]);
	assert_int_equal(nftw(root, set_time, 16, FTW_PHYS), 0);
	return root;
}

static void from_dir(struct fixture *f, const char *root,
		     const struct kiln_tree_build_opts *o, struct kiln_digest *out)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r;

	assert_true(fd >= 0);
	r = kiln_tree_from_dir(f->s, fd, o, out, &err);
	if (r < 0)
		fail_msg("from_dir %s: %s", root, kiln_error_msg(err));
	close(fd);
}

static void lookup(struct fixture *f, const struct kiln_digest *root,
		   const char *path, struct kiln_tree_entry *e)
{
	_cleanup_error_ struct kiln_error *err = NULL;

	if (kiln_tree_lookup(f->s, root, path, e, &err) < 0)
		fail_msg("lookup %s: %s", path, kiln_error_msg(err));
}

static void assert_same_digest(struct fixture *f, const struct kiln_digest *a,
			       const struct kiln_digest *b, const char *path,
			       bool same)
{
	struct kiln_tree_entry x, y;

	lookup(f, a, path, &x);
	lookup(f, b, path, &y);
	assert_int_equal(kiln_digest_eq(&x.digest, &y.digest), same);
	kiln_tree_entry_release(&x);
	kiln_tree_entry_release(&y);
}

/* ---- codec ---- */

static void xattr_add(struct kiln_tree_entry *e, const char *name,
		      const char *value)
{
	struct kiln_xattr *x;

	e->xattrs = xrealloc(e->xattrs, (e->n_xattrs + 1) * sizeof(*e->xattrs));
	x = &e->xattrs[e->n_xattrs++];
	x->name = xstrdup(name);
	x->len = (uint32_t)strlen(value);
	x->value = (uint8_t *)xstrdup(value);
}

static void add_entry(struct kiln_tree *t, const char *name, int type)
{
	struct kiln_tree_entry e = { 0 };

	e.name = xstrdup(name);
	e.type = (uint8_t)type;
	e.mode = type == KILN_ENTRY_DIR ? 0755 : 04711;
	e.uid = 1000;
	e.gid = 100;
	e.mtime_sec = -5; /* before the epoch: signed */
	e.mtime_nsec = 999999999;
	if (type == KILN_ENTRY_FILE) {
		e.size = 1ull << 40;
		kiln_digest_buf(name, strlen(name), &e.digest);
	} else if (type == KILN_ENTRY_DIR) {
		kiln_tree_empty_digest(&e.digest);
	} else if (type == KILN_ENTRY_SYMLINK) {
		e.target = xstrdup("../x/y");
	} else if (type == KILN_ENTRY_CHAR || type == KILN_ENTRY_BLOCK) {
		e.rdev_major = 259;
		e.rdev_minor = 1u << 20;
	}
	if (type == KILN_ENTRY_FILE) {
		xattr_add(&e, "security.capability", "\x01\x02");
		xattr_add(&e, "user.z", "");
	}
	kiln_tree_set(t, &e);
	assert_null(e.name); /* ownership taken */
}

/* A node with every entry type, in insertion order unlike name order. */
static void sample_tree(struct kiln_tree *t)
{
	kiln_tree_init(t);
	add_entry(t, "zfifo", KILN_ENTRY_FIFO);
	add_entry(t, "file", KILN_ENTRY_FILE);
	add_entry(t, "dir", KILN_ENTRY_DIR);
	add_entry(t, "link", KILN_ENTRY_SYMLINK);
	add_entry(t, "chr", KILN_ENTRY_CHAR);
	add_entry(t, "blk", KILN_ENTRY_BLOCK);
	add_entry(t, "file.txt", KILN_ENTRY_FILE); /* longer name after "file" */
	add_entry(t, "\xc3\xa9t\xc3\xa9", KILN_ENTRY_FILE); /* UTF-8, bytes > 0x7f */
}

static void test_codec_roundtrip(void **state)
{
	_cleanup_strbuf_ struct kiln_strbuf a = KILN_STRBUF_INIT(1 << 20);
	_cleanup_strbuf_ struct kiln_strbuf b = KILN_STRBUF_INIT(1 << 20);
	_cleanup_strbuf_ struct kiln_strbuf empty = KILN_STRBUF_INIT(64);
	struct kiln_tree t, u, none = KILN_TREE_INIT;
	struct kiln_digest d1, d2;
	size_t i;

	sample_tree(&t);
	assert_int_equal(t.n, 8);
	assert_string_equal(t.entries[0].name, "blk");
	assert_string_equal(t.entries[3].name, "file");
	assert_string_equal(t.entries[4].name, "file.txt");
	assert_string_equal(t.entries[7].name, "\xc3\xa9t\xc3\xa9");
	assert_int_equal(kiln_tree_encode(&t, &a), 0);
	assert_memory_equal(a.buf, "kilntree\x01\x00\x00\x00\x08", 13);
	assert_int_equal(kiln_tree_decode(a.buf, a.len, &u, NULL), 0);
	assert_int_equal(u.n, t.n);
	for (i = 0; i < t.n; i++)
		assert_true(kiln_tree_entry_eq(&t.entries[i], &u.entries[i]));
	assert_int_equal(kiln_tree_encode(&u, &b), 0);
	assert_int_equal(a.len, b.len);
	assert_memory_equal(a.buf, b.buf, a.len);

	/* Replace, remove, find. */
	assert_non_null(kiln_tree_find(&u, "link"));
	assert_int_equal(kiln_tree_remove(&u, "link"), 0);
	assert_null(kiln_tree_find(&u, "link"));
	assert_int_equal(kiln_tree_remove(&u, "link"), -ENOENT);
	add_entry(&u, "dir", KILN_ENTRY_FIFO);
	assert_int_equal(u.n, 7);
	assert_int_equal(kiln_tree_find(&u, "dir")->type, KILN_ENTRY_FIFO);

	/* Copy is deep and equal; a changed field is not equal. */
	{
		struct kiln_tree_entry c;

		kiln_tree_entry_copy(&c, &t.entries[3]);
		assert_true(kiln_tree_entry_eq(&c, &t.entries[3]));
		assert_ptr_not_equal(c.xattrs, t.entries[3].xattrs);
		c.xattrs[0].value[0] ^= 1;
		assert_false(kiln_tree_entry_eq(&c, &t.entries[3]));
		kiln_tree_entry_release(&c);
	}

	/* The empty node. */
	assert_int_equal(kiln_tree_encode(&none, &empty), 0);
	assert_int_equal(empty.len, 13);
	kiln_digest_buf(empty.buf, empty.len, &d1);
	kiln_tree_empty_digest(&d2);
	assert_true(kiln_digest_eq(&d1, &d2));
	kiln_tree_release(&t);
	kiln_tree_release(&u);
}

static void test_put_get(void **state)
{
	struct fixture *f = *state;
	_cleanup_strbuf_ struct kiln_strbuf a = KILN_STRBUF_INIT(1 << 20);
	struct kiln_tree t, u;
	struct kiln_digest d, e;

	sample_tree(&t);
	assert_int_equal(kiln_tree_put(f->s, &t, &d, NULL), 0);
	assert_int_equal(kiln_tree_encode(&t, &a), 0);
	kiln_digest_buf(a.buf, a.len, &e);
	assert_true(kiln_digest_eq(&d, &e));
	assert_true(kiln_store_has(f->s, &d));
	assert_int_equal(kiln_tree_get(f->s, &d, &u, NULL), 0);
	assert_int_equal(u.n, t.n);
	kiln_tree_release(&u);
	/* The encoder refuses what the decoder would reject. */
	free(t.entries[1].name);
	t.entries[1].name = xstrdup("a/b");
	assert_int_equal(kiln_tree_put(f->s, &t, &d, NULL), -EINVAL);
	kiln_tree_release(&t);
}

/* Raw entry bytes, so the decoder can be fed what the encoder refuses. */
static void be(struct kiln_strbuf *sb, uint64_t v, int n)
{
	while (n-- > 0)
		assert_int_equal(kiln_strbuf_addch(sb, (char)(v >> (8 * n))), 0);
}

struct raw {
	const char *name;
	size_t name_len;
	unsigned type, mode;
	uint64_t size;
	uint32_t nsec;
	unsigned algo;
	const char *xa, *xb; /* xattr names, in this order */
};

static void raw_entry(struct kiln_strbuf *sb, const struct raw *r)
{
	be(sb, r->name_len, 2);
	assert_int_equal(kiln_strbuf_add(sb, r->name, r->name_len), 0);
	be(sb, r->type, 1);
	be(sb, r->mode, 4);
	be(sb, 0, 4);
	be(sb, 0, 4);
	be(sb, T0, 8);
	be(sb, r->nsec, 4);
	be(sb, r->size, 8);
	if (r->type == KILN_ENTRY_FILE || r->type == KILN_ENTRY_DIR) {
		be(sb, r->algo ? r->algo : 1, 1);
		assert_int_equal(kiln_strbuf_add(sb, "0123456789abcdef0123456789abcdef", 32), 0);
	}
	be(sb, !!r->xa + !!r->xb, 2);
	if (r->xa) {
		be(sb, strlen(r->xa), 2);
		kiln_strbuf_adds(sb, r->xa);
		be(sb, 1, 4);
		kiln_strbuf_addch(sb, 'v');
	}
	if (r->xb) {
		be(sb, strlen(r->xb), 2);
		kiln_strbuf_adds(sb, r->xb);
		be(sb, 0, 4);
	}
}

#define FIFO(n) { n, sizeof(n) - 1, KILN_ENTRY_FIFO, 0644, 0, 0, 0, NULL, NULL }

static int decode_raw(const struct raw *entries, size_t n, uint32_t count,
		      bool trailing)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(1 << 20);
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_tree t;
	size_t i;
	int r;

	kiln_strbuf_add(&sb, "kilntree\x01", 9);
	be(&sb, count, 4);
	for (i = 0; i < n; i++)
		raw_entry(&sb, &entries[i]);
	if (trailing)
		kiln_strbuf_addch(&sb, 0);
	r = kiln_tree_decode(sb.buf, sb.len, &t, &err);
	if (r < 0) {
		assert_non_null(err);
		assert_int_equal(r, -EBADMSG);
	} else {
		kiln_tree_release(&t);
	}
	return r;
}

static void test_decode_rejects(void **state)
{
	const struct raw ok[] = { FIFO("a"), FIFO("ab"), FIFO("b") };
	const struct raw unsorted[] = { FIFO("b"), FIFO("a") };
	const struct raw prefix_last[] = { FIFO("ab"), FIFO("a") };
	const struct raw dupes[] = { FIFO("a"), FIFO("a") };
	const struct raw bad_names[] = { FIFO("."), FIFO(".."), FIFO("a/b"),
					 FIFO("a\0b"), FIFO("") };
	struct raw e = FIFO("x");
	char longname[300];
	size_t i;

	assert_int_equal(decode_raw(ok, 3, 3, false), 0);
	assert_int_equal(decode_raw(ok, 3, 3, true), -EBADMSG);  /* trailing */
	assert_int_equal(decode_raw(ok, 3, 2, false), -EBADMSG); /* count low */
	assert_int_equal(decode_raw(ok, 3, 4, false), -EBADMSG); /* count high */
	assert_int_equal(decode_raw(ok, 0, UINT32_MAX, false), -EBADMSG);
	assert_int_equal(decode_raw(unsorted, 2, 2, false), -EBADMSG);
	assert_int_equal(decode_raw(prefix_last, 2, 2, false), -EBADMSG);
	assert_int_equal(decode_raw(dupes, 2, 2, false), -EBADMSG);
	for (i = 0; i < ARRAY_SIZE(bad_names); i++)
		assert_int_equal(decode_raw(&bad_names[i], 1, 1, false), -EBADMSG);
	memset(longname, 'n', sizeof(longname));
	e.name = longname;
	e.name_len = 256;
	assert_int_equal(decode_raw(&e, 1, 1, false), -EBADMSG);
	e.name_len = 255;
	assert_int_equal(decode_raw(&e, 1, 1, false), 0);
	e = (struct raw)FIFO("x");
	e.type = 0;
	assert_int_equal(decode_raw(&e, 1, 1, false), -EBADMSG);
	e.type = 7;
	assert_int_equal(decode_raw(&e, 1, 1, false), -EBADMSG);
	e.type = KILN_ENTRY_FIFO;
	e.mode = 010644;
	assert_int_equal(decode_raw(&e, 1, 1, false), -EBADMSG);
	e.mode = 07777;
	assert_int_equal(decode_raw(&e, 1, 1, false), 0);
	e.size = 1;
	assert_int_equal(decode_raw(&e, 1, 1, false), -EBADMSG);
	e.type = KILN_ENTRY_FILE;
	assert_int_equal(decode_raw(&e, 1, 1, false), 0);
	e.algo = 2;
	assert_int_equal(decode_raw(&e, 1, 1, false), -EBADMSG);
	e.algo = 0;
	e.nsec = 1000000000;
	assert_int_equal(decode_raw(&e, 1, 1, false), -EBADMSG);
	e.nsec = 0;
	e.xa = "user.a";
	e.xb = "user.b";
	assert_int_equal(decode_raw(&e, 1, 1, false), 0);
	e.xa = "user.b";
	e.xb = "user.a";
	assert_int_equal(decode_raw(&e, 1, 1, false), -EBADMSG);
	e.xa = e.xb = "user.a";
	assert_int_equal(decode_raw(&e, 1, 1, false), -EBADMSG);
}

static void test_decode_header_and_truncation(void **state)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(1 << 20);
	struct kiln_tree t, u;
	size_t len;

	sample_tree(&t);
	assert_int_equal(kiln_tree_encode(&t, &sb), 0);
	kiln_tree_release(&t);
	/* Every proper prefix is rejected, with a message, and never read past. */
	for (len = 0; len < sb.len; len++) {
		_cleanup_error_ struct kiln_error *err = NULL;
		_cleanup_free_ char *copy = xmalloc(len ? len : 1);

		memcpy(copy, sb.buf, len);
		assert_int_equal(kiln_tree_decode(copy, len, &u, &err), -EBADMSG);
		assert_non_null(err);
		assert_null(u.entries);
	}
	sb.buf[8] = 2; /* version */
	assert_int_equal(kiln_tree_decode(sb.buf, sb.len, &u, NULL), -EBADMSG);
	sb.buf[8] = 1;
	sb.buf[0] = 'K'; /* magic */
	assert_int_equal(kiln_tree_decode(sb.buf, sb.len, &u, NULL), -EBADMSG);
	sb.buf[0] = 'k';
	assert_int_equal(kiln_tree_decode(sb.buf, sb.len, &u, NULL), 0);
	kiln_tree_release(&u);
}

/* ---- from_dir ---- */

static const struct spec sample_dir[] = {
	{ F, "file", "hello\n", 0 },
	{ F, "empty", "", 0 },
	{ F, "exec", "#!/bin/sh\n", 04755 },
	{ D, "sub", NULL, 0750 },
	{ F, "sub/inner", "inner", 0 },
	{ D, "sub/deeper/yet", NULL, 0 },
	{ F, "sub/deeper/yet/leaf", "leaf", 0 },
	{ L, "passwd-link", "/etc/passwd", 0 },
	{ L, "rel-link", "sub/inner", 0 },
	{ P, "fifo", NULL, 0 },
	{ C, "null", NULL, 0 },
};

struct walk_log {
	char paths[64][64];
	int n;
};

static int log_walk(const char *path, const struct kiln_tree_entry *e, void *ud)
{
	struct walk_log *w = ud;

	assert_true(w->n < 64);
	snprintf(w->paths[w->n++], 64, "%s", path);
	return 0;
}

static void make_socket(const char *dir, const char *name)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/%s", dir, name);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
}

static void test_from_dir(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *root = make_dir(f, "src", sample_dir,
					     ARRAY_SIZE(sample_dir));
	_cleanup_free_ char *file = kiln_path_join(root, "file");
	_cleanup_free_ char *sub = kiln_path_join(root, "sub");
	static const char *order[] = { "empty", "exec", "fifo", "file", "null",
				       "passwd-link", "rel-link", "sub",
				       "sub/deeper", "sub/deeper/yet",
				       "sub/deeper/yet/leaf", "sub/inner" };
	struct kiln_digest d1, d2, want;
	struct kiln_tree_entry e;
	struct walk_log w = { 0 };
	uint64_t bytes = 0, count = 0;
	size_t i;

	assert_int_equal(setxattr(file, "user.kiln", "v1", 2, 0), 0);
	assert_int_equal(setxattr(file, "trusted.overlay.origin", "x", 1, 0), 0);
	assert_int_equal(setxattr(sub, "user.dir", "d", 1, 0), 0);
	assert_int_equal(lchown(file, 1234, 5678), 0);
	make_socket(root, "sock");
	from_dir(f, root, NULL, &d1);
	from_dir(f, root, NULL, &d2);
	assert_true(kiln_digest_eq(&d1, &d2));

	lookup(f, &d1, "passwd-link", &e);
	assert_int_equal(e.type, KILN_ENTRY_SYMLINK);
	assert_string_equal(e.target, "/etc/passwd");
	assert_int_equal(e.size, 0);
	kiln_tree_entry_release(&e);

	lookup(f, &d1, "file", &e);
	assert_int_equal(e.type, KILN_ENTRY_FILE);
	assert_int_equal(e.size, 6);
	assert_int_equal(e.mode, 0644);
	assert_int_equal(e.uid, 1234);
	assert_int_equal(e.gid, 5678);
	assert_int_equal(e.mtime_sec, T0);
	assert_int_equal(e.mtime_nsec, 5);
	kiln_digest_buf("hello\n", 6, &want);
	assert_true(kiln_digest_eq(&e.digest, &want));
	assert_true(kiln_store_has(f->s, &want));
	assert_int_equal(e.n_xattrs, 1); /* trusted.overlay.* skipped */
	assert_string_equal(e.xattrs[0].name, "user.kiln");
	assert_memory_equal(e.xattrs[0].value, "v1", 2);
	kiln_tree_entry_release(&e);

	lookup(f, &d1, "exec", &e);
	assert_int_equal(e.mode, 04755);
	kiln_tree_entry_release(&e);
	lookup(f, &d1, "sub", &e);
	assert_int_equal(e.type, KILN_ENTRY_DIR);
	assert_int_equal(e.mode, 0750);
	assert_int_equal(e.n_xattrs, 1);
	kiln_tree_entry_release(&e);
	lookup(f, &d1, "fifo", &e);
	assert_int_equal(e.type, KILN_ENTRY_FIFO);
	kiln_tree_entry_release(&e);
	lookup(f, &d1, "null", &e);
	assert_int_equal(e.type, KILN_ENTRY_CHAR);
	assert_int_equal(e.rdev_major, 1);
	assert_int_equal(e.rdev_minor, 3);
	kiln_tree_entry_release(&e);
	assert_int_equal(kiln_tree_lookup(f->s, &d1, "sock", &e, NULL), -ENOENT);
	assert_int_equal(kiln_tree_lookup(f->s, &d1, "file/x", &e, NULL), -ENOTDIR);
	/* lookup never follows symlinks */
	assert_int_equal(kiln_tree_lookup(f->s, &d1, "rel-link/x", &e, NULL),
			 -ENOTDIR);
	lookup(f, &d1, "", &e);
	assert_int_equal(e.type, KILN_ENTRY_DIR);
	assert_true(kiln_digest_eq(&e.digest, &d1));
	kiln_tree_entry_release(&e);

	assert_int_equal(kiln_tree_walk(f->s, &d1, log_walk, &w, NULL), 0);
	assert_int_equal(w.n, ARRAY_SIZE(order));
	for (i = 0; i < ARRAY_SIZE(order); i++)
		assert_string_equal(w.paths[i], order[i]);

	assert_int_equal(kiln_tree_usage(f->s, &d1, &bytes, &count, NULL), 0);
	assert_int_equal(count, ARRAY_SIZE(order));
	assert_int_equal(bytes, 6 + 0 + 10 + 5 + 4);

	/* zero_owner */
	{
		struct kiln_tree_build_opts o = { .zero_owner = true };

		from_dir(f, root, &o, &d2);
		assert_false(kiln_digest_eq(&d1, &d2));
		lookup(f, &d2, "file", &e);
		assert_int_equal(e.uid, 0);
		assert_int_equal(e.gid, 0);
		kiln_tree_entry_release(&e);
	}
}

static void test_from_dir_adopt(void **state)
{
	struct fixture *f = *state;
	static const struct spec sp[] = {
		{ F, "a", "adopted content a", 0 },
		{ F, "b", "adopted content b", 0 },
		{ D, "d", NULL, 0 },
		{ F, "d/c", "adopted content c", 0 },
	};
	_cleanup_free_ char *root = make_dir(f, "adopt", sp, ARRAY_SIZE(sp));
	struct kiln_tree_build_opts o = { .adopt = true };
	struct kiln_digest d1, d2;
	struct kiln_tree_entry e;
	const char *names[] = { "a", "b", "d/c" };
	size_t i;

	from_dir(f, root, &o, &d1);
	for (i = 0; i < ARRAY_SIZE(names); i++) {
		_cleanup_free_ char *p = kiln_path_join(root, names[i]);
		_cleanup_free_ char *blob = NULL;
		struct stat a, b;

		lookup(f, &d1, names[i], &e);
		blob = kiln_store_blob_path(f->s, &e.digest);
		assert_int_equal(stat(p, &a), 0);
		assert_int_equal(stat(blob, &b), 0);
		assert_int_equal(a.st_ino, b.st_ino);
		kiln_tree_entry_release(&e);
	}
	/* Mode does not change the digest: adopt and copy agree. */
	from_dir(f, root, NULL, &d2);
	assert_true(kiln_digest_eq(&d1, &d2));
}

struct cache {
	int lookups, stores;
	struct kiln_digest known;
	bool claim_no_xattrs; /* what the cache says of a's xattrs */
	bool hit_b;           /* b is known too, its xattrs not said */
	int stored_xattrs[2]; /* what stat_store was told of a and b */
};

static bool cache_lookup(void *ud, const char *rel, const struct stat *st,
			 struct kiln_digest *d, bool *no_xattrs)
{
	struct cache *c = ud;

	c->lookups++;
	if (c->hit_b && !strcmp(rel, "b")) {
		*d = c->known;
		*no_xattrs = false;
		return true;
	}
	if (strcmp(rel, "a") || !kiln_digest_is_set(&c->known))
		return false;
	*d = c->known;
	*no_xattrs = c->claim_no_xattrs;
	return true;
}

static void cache_store(void *ud, const char *rel, const struct stat *st,
			const struct kiln_digest *d, bool xattrs)
{
	struct cache *c = ud;

	if (!strcmp(rel, "a") || !strcmp(rel, "b"))
		c->stored_xattrs[rel[0] - 'a'] = xattrs;

	c->stores++;
	if (!strcmp(rel, "a"))
		c->known = *d;
}

static bool skip_x(void *ud, const char *rel, bool is_dir)
{
	return strcmp(rel, "x") && strcmp(rel, "skipdir");
}

static bool descend_skipdir(void *ud, const char *rel)
{
	return !strcmp(rel, "skipdir");
}

static void test_from_dir_hooks(void **state)
{
	struct fixture *f = *state;
	static const struct spec sp[] = {
		{ F, "a", "aaa", 0 },
		{ F, "b", "bbb", 0 },
		{ F, "x", "excluded", 0 },
		{ D, "skipdir", NULL, 0 },
		{ F, "skipdir/keep", "kept", 0 },
	};
	_cleanup_free_ char *root = make_dir(f, "hooks", sp, ARRAY_SIZE(sp));
	_cleanup_free_ char *pa = kiln_path_join(root, "a");
	struct cache c = { .stored_xattrs = { -1, -1 } };
	struct kiln_tree_build_opts o = {
		.stat_lookup = cache_lookup, .stat_store = cache_store,
		.filter = skip_x, .filter_descend = descend_skipdir, .ud = &c,
	};
	struct kiln_digest d1, d2, fake;
	struct kiln_tree_entry e;

	assert_int_equal(setxattr(pa, "trusted.kiln-test", "1", 1, 0), 0);
	from_dir(f, root, &o, &d1);
	assert_int_equal(c.lookups, 3); /* a, b, skipdir/keep */
	assert_int_equal(c.stores, 3);
	assert_int_equal(c.stored_xattrs[0], 1); /* a has one */
	assert_int_equal(c.stored_xattrs[1], 0);
	assert_int_equal(kiln_tree_lookup(f->s, &d1, "x", &e, NULL), -ENOENT);
	lookup(f, &d1, "skipdir/keep", &e);
	kiln_tree_entry_release(&e);
	/* The cache is believed: a known digest is used without reading. */
	kiln_digest_buf("cached", 6, &fake);
	c.known = fake;
	from_dir(f, root, &o, &d2);
	assert_int_equal(c.stores, 5);
	lookup(f, &d2, "a", &e);
	assert_true(kiln_digest_eq(&e.digest, &fake));
	assert_int_equal(e.n_xattrs, 1); /* the cache did not say there were none */
	kiln_tree_entry_release(&e);
	/* A cache that says a had no xattrs is believed: they are not listed. */
	c.claim_no_xattrs = true;
	from_dir(f, root, &o, &d2);
	lookup(f, &d2, "a", &e);
	assert_int_equal(e.n_xattrs, 0);
	kiln_tree_entry_release(&e);
	/* A hit whose row did not say (an older one) is stored again, saying none. */
	c.hit_b = true;
	c.stored_xattrs[1] = -1;
	c.stores = 0;
	from_dir(f, root, &o, &d2);
	assert_int_equal(c.stores, 2); /* b saying none; skipdir/keep hashed */
	assert_int_equal(c.stored_xattrs[1], 0);
}

struct diff_log {
	char lines[64][80];
	int n;
};

static int log_diff(enum kiln_diff_kind kind, const char *path,
		    const struct kiln_tree_entry *o, const struct kiln_tree_entry *n,
		    void *ud)
{
	struct diff_log *l = ud;
	const char k[] = { 'A', 'M', 'D' };

	assert_true(l->n < 64);
	assert_true(kind == KILN_DIFF_ADD ? !o && n : kind == KILN_DIFF_DELETE ? o && !n : o && n);
	snprintf(l->lines[l->n++], 80, "%c %s", k[kind], path);
	return 0;
}

static void assert_diff(struct fixture *f, const struct kiln_digest *a,
			const struct kiln_digest *b, const char **want,
			size_t n)
{
	struct diff_log l = { 0 };
	size_t i;

	assert_int_equal(kiln_tree_diff(f->s, a, b, log_diff, &l, NULL), 0);
	for (i = 0; i < (size_t)l.n && i < n; i++)
		assert_string_equal(l.lines[i], want[i]);
	assert_int_equal(l.n, n);
}

static void test_change_one_file(void **state)
{
	struct fixture *f = *state;
	static const struct spec sp[] = {
		{ F, "a/b/f", "one", 0 },
		{ F, "a/c/g", "two", 0 },
		{ F, "d/h", "three", 0 },
	};
	static const char *want[] = { "M a/b/f" };
	struct kiln_digest d1, d2;
	_cleanup_free_ char *root = NULL, *p = NULL;
	struct spec dirs[] = { { D, "a/b", NULL, 0 }, { D, "a/c", NULL, 0 },
			       { D, "d", NULL, 0 } };
	struct timespec ts[2] = { { T0, 5 }, { T0, 5 } };

	root = make_dir(f, "one", dirs, ARRAY_SIZE(dirs));
	for (size_t i = 0; i < ARRAY_SIZE(sp); i++)
		make_one(root, &sp[i]);
	assert_int_equal(nftw(root, set_time, 16, FTW_PHYS), 0);
	from_dir(f, root, NULL, &d1);
	p = kiln_path_join(root, "a/b/f");
	{
		int fd = open(p, O_WRONLY | O_TRUNC | O_CLOEXEC);

		assert_true(fd >= 0);
		assert_int_equal(write(fd, "ONE", 3), 3);
		close(fd);
	}
	assert_int_equal(utimensat(AT_FDCWD, p, ts, 0), 0);
	from_dir(f, root, NULL, &d2);
	assert_false(kiln_digest_eq(&d1, &d2));
	assert_same_digest(f, &d1, &d2, "a", false);
	assert_same_digest(f, &d1, &d2, "a/b", false);
	assert_same_digest(f, &d1, &d2, "a/b/f", false);
	assert_same_digest(f, &d1, &d2, "a/c", true);
	assert_same_digest(f, &d1, &d2, "d", true);
	assert_diff(f, &d1, &d2, want, ARRAY_SIZE(want));
	assert_diff(f, &d1, &d1, NULL, 0);
}

static void test_diff(void **state)
{
	struct fixture *f = *state;
	static const struct spec a_spec[] = {
		{ F, "keep", "same", 0 },
		{ F, "mod", "old", 0 },
		{ F, "gone", "bye", 0 },
		{ D, "olddir/x", NULL, 0 },
		{ F, "olddir/x/y", "y", 0 },
		{ D, "d2f", NULL, 0 },
		{ F, "d2f/z", "z", 0 },
		{ F, "f2d", "file", 0 },
		{ D, "meta", NULL, 0755 },
		{ F, "meta/in", "in", 0 },
		{ D, "same", NULL, 0 },
		{ F, "same/s", "s", 0 },
	};
	static const struct spec b_spec[] = {
		{ F, "keep", "same", 0 },
		{ F, "mod", "new", 0 },
		{ F, "added", "hi", 0 },
		{ D, "newdir/sub", NULL, 0 },
		{ F, "newdir/sub/n", "n", 0 },
		{ F, "d2f", "now a file", 0 },
		{ D, "f2d", NULL, 0 },
		{ F, "f2d/inside", "i", 0 },
		{ D, "meta", NULL, 0700 },
		{ F, "meta/in", "changed", 0 },
		{ D, "same", NULL, 0 },
		{ F, "same/s", "s", 0 },
	};
	static const char *want[] = {
		"A added",   "D d2f",	"A d2f",	"D f2d",
		"A f2d",     "A f2d/inside", "D gone", "M meta",
		"M meta/in", "M mod",	"A newdir",	"A newdir/sub",
		"A newdir/sub/n", "D olddir",
	};
	static const char *back[] = { "D added", "D d2f", "A d2f", "A d2f/z",
				      "D f2d", "A f2d", "A gone", "M meta",
				      "M meta/in", "M mod", "D newdir",
				      "A olddir", "A olddir/x", "A olddir/x/y" };
	_cleanup_free_ char *ra = make_dir(f, "da", a_spec, ARRAY_SIZE(a_spec));
	_cleanup_free_ char *rb = make_dir(f, "db", b_spec, ARRAY_SIZE(b_spec));
	struct kiln_digest a, b;

	from_dir(f, ra, NULL, &a);
	from_dir(f, rb, NULL, &b);
	assert_diff(f, &a, &b, want, ARRAY_SIZE(want));
	assert_diff(f, &b, &a, back, ARRAY_SIZE(back));
}

/* ---- layers ---- */

static const struct spec base_spec[] = {
	{ F, "etc/passwd", "root:x:0:0", 0 },
	{ F, "etc/hosts", "127.0.0.1 localhost", 0 },
	{ F, "usr/bin/sh", "shell", 0755 },
	{ F, "usr/bin/ls", "ls", 0755 },
	{ F, "usr/lib/libc.so", "libc", 0 },
	{ F, "var/cache/old1", "o1", 0 },
	{ F, "var/cache/sub/old2", "o2", 0 },
	{ D, "var/log", NULL, 0 },
	{ F, "opt/app/data", "data", 0 },
	{ F, "keep/me", "untouched", 0 },
	{ L, "lnk", "etc", 0 },
};

static const struct spec layer_spec[] = {
	{ F, "etc/hosts", "10.0.0.1 other", 0 },
	{ F, "etc/new", "new", 0 },
	{ D, "usr/bin", NULL, 0700 },
	{ W, "usr/bin/ls", NULL, 0 },
	{ F, "usr/bin/vi", "vi", 0755 },
	{ W, "usr/lib", NULL, 0 },
	{ O, "var/cache", NULL, 0 },
	{ F, "var/cache/fresh", "fresh", 0 },
	{ F, "opt/app", "now a file", 0 },
	{ D, "newdir/sub", NULL, 0 },
	{ F, "newdir/sub/file", "nf", 0 },
	{ W, "ghost", NULL, 0 },
	{ D, "lnk", NULL, 0 },
	{ F, "lnk/x", "x", 0 },
};

static const struct spec final_spec[] = {
	{ F, "etc/passwd", "root:x:0:0", 0 },
	{ F, "etc/hosts", "10.0.0.1 other", 0 },
	{ F, "etc/new", "new", 0 },
	{ D, "usr/bin", NULL, 0700 },
	{ F, "usr/bin/sh", "shell", 0755 },
	{ F, "usr/bin/vi", "vi", 0755 },
	{ F, "var/cache/fresh", "fresh", 0 },
	{ D, "var/log", NULL, 0 },
	{ F, "opt/app", "now a file", 0 },
	{ F, "keep/me", "untouched", 0 },
	{ D, "newdir/sub", NULL, 0 },
	{ F, "newdir/sub/file", "nf", 0 },
	{ D, "lnk", NULL, 0 },
	{ F, "lnk/x", "x", 0 },
};

static void apply(struct fixture *f, const struct kiln_digest *base,
		  const char *layer, const struct kiln_tree_build_opts *o,
		  struct kiln_digest *out)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	int fd = open(layer, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	assert_true(fd >= 0);
	if (kiln_tree_apply_layer(f->s, base, fd, o, out, &err) < 0)
		fail_msg("apply_layer %s: %s", layer, kiln_error_msg(err));
	close(fd);
}

static void test_apply_layer(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *b = make_dir(f, "base", base_spec, ARRAY_SIZE(base_spec));
	_cleanup_free_ char *l = make_dir(f, "layer", layer_spec, ARRAY_SIZE(layer_spec));
	_cleanup_free_ char *fin = make_dir(f, "final", final_spec, ARRAY_SIZE(final_spec));
	struct kiln_tree_build_opts o = { .adopt = true };
	struct kiln_digest base, got, want, again;
	struct kiln_tree_entry e;

	from_dir(f, b, NULL, &base);
	apply(f, &base, l, &o, &got);
	from_dir(f, fin, NULL, &want); /* after: its blobs would stop adoption */
	assert_string_equal(KILN_DIGEST_STR(&got), KILN_DIGEST_STR(&want));
	/* Untouched subtrees keep their digests. */
	assert_same_digest(f, &base, &got, "keep", true);
	assert_same_digest(f, &base, &got, "etc/passwd", true);
	/* No overlay markup leaks into the tree. */
	lookup(f, &got, "var/cache", &e);
	assert_int_equal(e.n_xattrs, 0);
	kiln_tree_entry_release(&e);
	/* Layer files were adopted. */
	{
		_cleanup_free_ char *p = kiln_path_join(l, "etc/new");
		struct stat st;

		assert_int_equal(stat(p, &st), 0);
		assert_int_equal(st.st_nlink, 2);
	}
	/* Deterministic, and a layer on nothing is from_dir without markup. */
	apply(f, &base, l, NULL, &again);
	assert_true(kiln_digest_eq(&got, &again));
	apply(f, NULL, fin, NULL, &again);
	assert_true(kiln_digest_eq(&want, &again));
}

static void test_apply_empty_layer(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *b = make_dir(f, "base", base_spec, ARRAY_SIZE(base_spec));
	_cleanup_free_ char *l = make_dir(f, "empty-layer", NULL, 0);
	struct kiln_digest base, got;

	from_dir(f, b, NULL, &base);
	apply(f, &base, l, NULL, &got);
	assert_true(kiln_digest_eq(&base, &got));
}

/* ---- editor ---- */

static void test_editor(void **state)
{
	struct fixture *f = *state;
	static const struct spec extra[] = {
		{ F, "x/y/z/f", "edited in", 0600 },
	};
	static const struct spec edited[] = {
		{ F, "etc/passwd", "root:x:0:0", 0 },
		{ F, "usr/bin/sh", "shell", 0755 },
		{ F, "usr/bin/ls", "ls", 0755 },
		{ F, "usr/lib/libc.so", "libc", 0 },
		{ F, "var/cache/old1", "o1", 0 },
		{ F, "var/cache/sub/old2", "o2", 0 },
		{ D, "var/log", NULL, 0 },
		{ F, "keep/me", "untouched", 0 },
		{ L, "lnk", "etc", 0 },
		{ F, "x/y/z/f", "edited in", 0600 },
		{ L, "x/l", "../etc", 0 },
		{ F, "graft/bin/sh", "shell", 0755 },
		{ F, "graft/bin/ls", "ls", 0755 },
		{ F, "graft/lib/libc.so", "libc", 0 },
	};
	_cleanup_free_ char *b = make_dir(f, "ebase", base_spec, ARRAY_SIZE(base_spec));
	_cleanup_free_ char *x = make_dir(f, "extra", extra, ARRAY_SIZE(extra));
	_cleanup_free_ char *w = make_dir(f, "edited", edited, ARRAY_SIZE(edited));
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_tree_editor *ed = NULL;
	struct kiln_digest base, xd, want, got, again;
	struct kiln_tree_entry e;

	from_dir(f, b, NULL, &base);
	from_dir(f, x, NULL, &xd);
	from_dir(f, w, NULL, &want);
	assert_int_equal(kiln_tree_editor_new(f->s, &base, &ed, NULL), 0);

	assert_int_equal(kiln_tree_editor_mkdir_p(ed, "x/y/z", 0755, 0, 0, T0, NULL), 0);
	lookup(f, &xd, "x/y/z/f", &e);
	assert_int_equal(kiln_tree_editor_put(ed, "x/y/z/f", &e, NULL), 0);
	assert_int_equal(kiln_tree_editor_remove(ed, "etc/hosts", NULL), 0);
	assert_int_equal(kiln_tree_editor_remove(ed, "opt", NULL), 0);
	/* A graft: the usr entry under another name, no copy. */
	assert_int_equal(kiln_tree_editor_get(ed, "usr", &e, NULL), 0);
	assert_int_equal(kiln_tree_editor_put(ed, "graft", &e, NULL), 0);
	memset(&e, 0, sizeof(e));
	e.type = KILN_ENTRY_SYMLINK;
	e.mode = 0777;
	e.target = xstrdup("../etc");
	e.mtime_sec = T0;
	e.mtime_nsec = 5;
	assert_int_equal(kiln_tree_editor_put(ed, "x/l", &e, NULL), 0);
	/* The dirs mkdir_p made must match the disk's (T0.5 there). */
	{
		const char *dirs[] = { "x", "x/y", "x/y/z" };

		for (size_t i = 0; i < 3; i++) {
			assert_int_equal(kiln_tree_editor_get(ed, dirs[i], &e, NULL), 0);
			/* get of a changed dir gives a digest of a stored node */
			assert_true(kiln_store_has(f->s, &e.digest));
			e.mtime_nsec = 5;
			assert_int_equal(kiln_tree_editor_put(ed, dirs[i], &e, NULL), 0);
		}
	}
	assert_int_equal(kiln_tree_editor_commit(ed, &got, NULL), 0);
	assert_string_equal(KILN_DIGEST_STR(&got), KILN_DIGEST_STR(&want));
	assert_int_equal(kiln_tree_editor_commit(ed, &again, NULL), 0);
	assert_true(kiln_digest_eq(&got, &again));
	assert_int_equal(kiln_tree_editor_get(ed, "", &e, NULL), 0);
	assert_true(kiln_digest_eq(&e.digest, &got));
	assert_int_equal(e.mode, 0755);
	kiln_tree_entry_release(&e);

	/* Errors. */
	assert_int_equal(kiln_tree_editor_remove(ed, "nope", &err), -ENOENT);
	assert_non_null(strstr(err->msg, "nope"));
	assert_int_equal(kiln_tree_editor_get(ed, "keep/nope", &e, NULL), -ENOENT);
	assert_int_equal(kiln_tree_editor_get(ed, "keep/me/x", &e, NULL), -ENOTDIR);
	assert_int_equal(kiln_tree_editor_mkdir_p(ed, "keep/me/x", 0755, 0, 0, 0, NULL),
			 -ENOTDIR);
	assert_int_equal(kiln_tree_editor_mkdir_p(ed, "lnk/x", 0755, 0, 0, 0, NULL),
			 -ENOTDIR);
	memset(&e, 0, sizeof(e));
	e.type = KILN_ENTRY_FIFO;
	assert_int_equal(kiln_tree_editor_put(ed, "missing/f", &e, NULL), -ENOENT);
	e.type = KILN_ENTRY_FIFO;
	e.mode = 0100644;
	assert_int_equal(kiln_tree_editor_put(ed, "f", &e, NULL), -EINVAL);
	assert_int_equal(kiln_tree_editor_remove(ed, "", NULL), -EINVAL);
	/* Failed operations changed nothing. */
	assert_int_equal(kiln_tree_editor_commit(ed, &again, NULL), 0);
	assert_true(kiln_digest_eq(&got, &again));
	kiln_tree_editor_free(ed);

	/* Editing nothing gives the base back; an empty editor the empty tree. */
	assert_int_equal(kiln_tree_editor_new(f->s, &base, &ed, NULL), 0);
	assert_int_equal(kiln_tree_editor_commit(ed, &again, NULL), 0);
	assert_true(kiln_digest_eq(&base, &again));
	kiln_tree_editor_free(ed);
	assert_int_equal(kiln_tree_editor_new(f->s, NULL, &ed, NULL), 0);
	assert_int_equal(kiln_tree_editor_commit(ed, &again, NULL), 0);
	kiln_tree_empty_digest(&want);
	assert_true(kiln_digest_eq(&want, &again));
	assert_true(kiln_store_has(f->s, &again));
	kiln_tree_editor_free(ed);
}

static void assert_resolves(struct kiln_tree_editor *ed, const char *path,
			    bool follow_last, const char *want)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *got = NULL;

	if (kiln_tree_editor_resolve(ed, path, follow_last, &got, &err) < 0)
		fail_msg("resolve %s: %s", path, kiln_error_msg(err));
	assert_string_equal(got, want);
}

static void test_editor_resolve(void **state)
{
	struct fixture *f = *state;
	static const struct spec sp[] = {
		{ F, "etc/passwd", "root", 0 },
		{ D, "a/b", NULL, 0 },
		{ L, "a/b/up", "../../../../etc", 0 },
		{ L, "a/abs", "/etc/passwd", 0 },
		{ L, "a/rel", "b/up", 0 },
		{ L, "loop1", "loop2", 0 },
		{ L, "loop2", "loop1", 0 },
		{ L, "self", "self", 0 },
		{ L, "dotdot", "..", 0 },
	};
	_cleanup_free_ char *root = make_dir(f, "resolve", sp, ARRAY_SIZE(sp));
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_tree_editor *ed = NULL;
	struct kiln_digest d;
	char *out = NULL;

	from_dir(f, root, NULL, &d);
	assert_int_equal(kiln_tree_editor_new(f->s, &d, &ed, NULL), 0);
	assert_resolves(ed, "a/b/up/passwd", true, "etc/passwd");
	assert_resolves(ed, "a/b/up", true, "etc");
	assert_resolves(ed, "a/b/up", false, "a/b/up");
	assert_resolves(ed, "a/abs", true, "etc/passwd");
	assert_resolves(ed, "a/abs", false, "a/abs");
	assert_resolves(ed, "a/rel/passwd", true, "etc/passwd");
	assert_resolves(ed, "dotdot/dotdot/etc", true, "etc");
	assert_resolves(ed, "missing/../a/abs", true, "etc/passwd");
	assert_resolves(ed, "missing/more", true, "missing/more");
	assert_resolves(ed, "etc/passwd/x", true, "etc/passwd/x");
	assert_resolves(ed, "", true, "");
	assert_resolves(ed, "loop1", false, "loop1");
	assert_int_equal(kiln_tree_editor_resolve(ed, "loop1", true, &out, &err), -ELOOP);
	assert_non_null(err);
	assert_null(out);
	assert_int_equal(kiln_tree_editor_resolve(ed, "self/x", true, &out, NULL), -ELOOP);
	/* Paths created in the editor resolve too. */
	{
		struct kiln_tree_entry e = { 0 };

		e.type = KILN_ENTRY_SYMLINK;
		e.mode = 0777;
		e.target = xstrdup("/a/b");
		assert_int_equal(kiln_tree_editor_put(ed, "new", &e, NULL), 0);
		assert_resolves(ed, "new/up/passwd", true, "etc/passwd");
	}
	kiln_tree_editor_free(ed);
}

/* A bind mount of the same file system inside the dir is not entered. */
static void test_from_dir_skips_bind_mounts(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *src = kiln_path_join(f->dir, "src");
	_cleanup_free_ char *mnt = kiln_path_join(f->dir, "src/mnt");
	_cleanup_free_ char *other = kiln_path_join(f->dir, "other");
	_cleanup_free_ char *secret = kiln_path_join(f->dir, "other/secret");
	struct kiln_tree_entry e = { 0 };
	struct kiln_tree t = KILN_TREE_INIT;
	struct kiln_digest root;
	int fd, r;

	assert_int_equal(kiln_mkdir_p(mnt, 0755), 0);
	assert_int_equal(kiln_mkdir_p(other, 0755), 0);
	fd = open(secret, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	close(fd);
	if (mount(other, mnt, NULL, MS_BIND, NULL) < 0)
		fail_msg("bind mount failed (tests need root): %m");
	fd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	r = kiln_tree_from_dir(f->s, fd, NULL, &root, NULL);
	close(fd);
	assert_int_equal(umount(mnt), 0); /* before any assertion can fail */
	assert_int_equal(r, 0);
	assert_int_equal(kiln_tree_lookup(f->s, &root, "mnt", &e, NULL), 0);
	assert_int_equal(e.type, KILN_ENTRY_DIR);
	assert_int_equal(kiln_tree_get(f->s, &e.digest, &t, NULL), 0);
	assert_int_equal(t.n, 0); /* kept as an empty directory */
	kiln_tree_release(&t);
	kiln_tree_entry_release(&e);
}

/* ---- hardlink groups (tree version 2) ---- */

/* "path>link" for every FILE the walk or diff reports linked, "path" else. */
struct link_log {
	char lines[32][96];
	int n;
};

static int log_links(const char *path, const struct kiln_tree_entry *e, void *ud)
{
	struct link_log *l = ud;

	if (e->type != KILN_ENTRY_FILE)
		return 0;
	assert_true(l->n < 32);
	snprintf(l->lines[l->n++], 96, "%s%s%s", path, e->link ? ">" : "",
		 e->link ? e->link : "");
	return 0;
}

static int log_diff_links(enum kiln_diff_kind kind, const char *path,
			  const struct kiln_tree_entry *o,
			  const struct kiln_tree_entry *n, void *ud)
{
	return kind == KILN_DIFF_DELETE ? 0 : log_links(path, n, ud);
}

static void assert_links(struct fixture *f, const struct kiln_digest *root,
			 const char **want, size_t n)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct link_log l = { 0 };
	size_t i;

	if (kiln_tree_walk(f->s, root, log_links, &l, &err) < 0)
		fail_msg("walk: %s", kiln_error_msg(err));
	for (i = 0; i < (size_t)l.n && i < n; i++)
		assert_string_equal(l.lines[i], want[i]);
	assert_int_equal(l.n, n);
}

/* The groups of the node at path, as "p1 p2|q1 q2". */
static char *groups_at(struct fixture *f, const struct kiln_digest *root,
		       const char *path)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(4096);
	struct kiln_tree_entry e;
	struct kiln_tree t;
	size_t g, i;

	lookup(f, root, path, &e);
	assert_int_equal(e.type, KILN_ENTRY_DIR);
	assert_int_equal(kiln_tree_get(f->s, &e.digest, &t, NULL), 0);
	kiln_tree_entry_release(&e);
	for (g = 0; g < t.n_links; g++)
		for (i = 0; i < t.links[g].n; i++)
			kiln_strbuf_addf(&sb, "%s%s", i ? " " : g ? "|" : "",
					 t.links[g].paths[i]);
	kiln_tree_release(&t);
	return kiln_strbuf_detach(&sb, NULL);
}

static void assert_groups(struct fixture *f, const struct kiln_digest *root,
			  const char *path, const char *want)
{
	_cleanup_free_ char *got = groups_at(f, root, path);

	assert_string_equal(got, want);
}

static void test_links_codec(void **state)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(1 << 20);
	_cleanup_strbuf_ struct kiln_strbuf again = KILN_STRBUF_INIT(1 << 20);
	struct kiln_tree t, u;
	char **paths;
	size_t len, at;

	(void)state;
	assert_int_equal(kiln_path_walk_cmp("a", "a/b"), -1);
	assert_int_equal(kiln_path_walk_cmp("a/b", "a.txt"), -1); /* strcmp says 1 */
	assert_int_equal(kiln_path_walk_cmp("a/b", "a/b"), 0);
	assert_int_equal(kiln_path_walk_cmp("b", "a/z"), 1);

	sample_tree(&t);
	paths = xcalloc(2, sizeof(*paths));
	paths[0] = xstrdup("file.txt");
	paths[1] = xstrdup("file");
	kiln_tree_add_link(&t, paths, 2);
	assert_string_equal(t.links[0].paths[0], "file"); /* sorted */
	assert_int_equal(kiln_tree_encode(&t, &sb), 0);
	assert_int_equal((unsigned char)sb.buf[8], 2); /* version 2 */
	assert_int_equal(kiln_tree_decode(sb.buf, sb.len, &u, NULL), 0);
	assert_int_equal(u.n_links, 1);
	assert_int_equal(u.links[0].n, 2);
	assert_string_equal(u.links[0].paths[1], "file.txt");
	assert_int_equal(kiln_tree_encode(&u, &again), 0);
	assert_int_equal(again.len, sb.len);
	assert_memory_equal(again.buf, sb.buf, sb.len);
	kiln_tree_release(&u);

	/* Every proper prefix is rejected. */
	for (len = 0; len < sb.len; len++)
		assert_int_equal(kiln_tree_decode(sb.buf, len, &u, NULL), -EBADMSG);

	/* Forged groups: members swapped (unsorted), a member that names no
	 * file, a link section on a node that says version 1. */
	at = sb.len - strlen("file.txt") - 2 - strlen("file");
	assert_memory_equal(sb.buf + at, "file", 4);
	sb.buf[at] = 'g';
	assert_int_equal(kiln_tree_decode(sb.buf, sb.len, &u, NULL), -EBADMSG);
	sb.buf[at] = 'f';
	memcpy(sb.buf + at, "zfif", 4); /* "zfif" is no entry */
	assert_int_equal(kiln_tree_decode(sb.buf, sb.len, &u, NULL), -EBADMSG);
	memcpy(sb.buf + at, "file", 4);
	sb.buf[8] = 1;
	assert_int_equal(kiln_tree_decode(sb.buf, sb.len, &u, NULL), -EBADMSG);
	sb.buf[8] = 2;
	assert_int_equal(kiln_tree_decode(sb.buf, sb.len, &u, NULL), 0);
	kiln_tree_release(&u);

	/* The encoder refuses what the decoder would: a group inside one
	 * directory belongs to that directory; a member that is a directory. */
	paths = xcalloc(2, sizeof(*paths));
	paths[0] = xstrdup("dir/x");
	paths[1] = xstrdup("dir/y");
	kiln_tree_add_link(&t, paths, 2);
	{
		_cleanup_error_ struct kiln_error *err = NULL;
		struct kiln_digest d;

		/* The encoder checks before the store is touched. */
		assert_int_equal(kiln_tree_put(NULL, &t, &d, &err), -EINVAL);
		assert_non_null(strstr(kiln_error_msg(err), "wrong directory"));
	}
	assert_true(kiln_tree_forget_link(&t, "dir"));
	assert_int_equal(t.n_links, 1);
	paths = xcalloc(2, sizeof(*paths));
	paths[0] = xstrdup("dir");
	paths[1] = xstrdup("chr");
	kiln_tree_add_link(&t, paths, 2);
	{
		_cleanup_error_ struct kiln_error *err = NULL;
		struct kiln_digest d;

		assert_int_equal(kiln_tree_put(NULL, &t, &d, &err), -EINVAL);
		assert_non_null(strstr(kiln_error_msg(err), "not a file"));
	}
	/* Forgetting a member leaves a group of one, which goes. */
	assert_true(kiln_tree_forget_link(&t, "dir"));
	assert_true(kiln_tree_forget_link(&t, "file"));
	assert_int_equal(t.n_links, 0);
	assert_false(kiln_tree_forget_link(&t, "file"));
	kiln_strbuf_reset(&again);
	assert_int_equal(kiln_tree_encode(&t, &again), 0);
	assert_int_equal((unsigned char)again.buf[8], 1);
	kiln_tree_release(&t);
}

static const struct spec linked_spec[] = {
	{ F, "a", "same\n", 0 },
	{ F, "c", "same\n", 0 }, /* same content, its own inode */
	{ H, "sub/b", "a", 0 },
	{ F, "sub/deep/e", "deep\n", 0 },
	{ H, "sub/deep/f", "sub/deep/e", 0 },
	{ F, "sub/z", "z\n", 0 },
};

static void test_links_from_dir(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *d = make_dir(f, "linked", linked_spec, ARRAY_SIZE(linked_spec));
	const char *want[] = { "a", "c", "sub/b>a", "sub/deep/e",
			       "sub/deep/f>sub/deep/e", "sub/z" };
	struct kiln_digest root, again;

	from_dir(f, d, NULL, &root);
	assert_groups(f, &root, "", "a sub/b");
	assert_groups(f, &root, "sub", "");
	assert_groups(f, &root, "sub/deep", "e f");
	assert_links(f, &root, want, ARRAY_SIZE(want));
	from_dir(f, d, NULL, &again);
	assert_true(kiln_digest_eq(&root, &again));
}

/* Base: x/a, x/b, y/c one inode; layers replace and remove members. */
static const struct spec lbase_spec[] = {
	{ F, "x/a", "one\n", 0 },
	{ H, "x/b", "x/a", 0 },
	{ H, "y/c", "x/a", 0 },
	{ F, "p/q1", "q\n", 0 },
	{ H, "p/q2", "p/q1", 0 },
};
static const struct spec llayer_spec[] = {
	{ D, "y", NULL, 0 },
	{ F, "y/c", "other\n", 0 },
	{ F, "n1", "new\n", 0 },
	{ H, "n2", "n1", 0 },
};
static const struct spec lfinal_spec[] = {
	{ F, "x/a", "one\n", 0 },
	{ H, "x/b", "x/a", 0 },
	{ F, "y/c", "other\n", 0 },
	{ F, "p/q1", "q\n", 0 },
	{ H, "p/q2", "p/q1", 0 },
	{ F, "n1", "new\n", 0 },
	{ H, "n2", "n1", 0 },
};
static const struct spec lwhiteout_spec[] = {
	{ D, "x", NULL, 0 },
	{ W, "x/b", NULL, 0 },
};

static void test_links_apply_layer(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *b = make_dir(f, "lbase", lbase_spec, ARRAY_SIZE(lbase_spec));
	_cleanup_free_ char *l = make_dir(f, "llayer", llayer_spec, ARRAY_SIZE(llayer_spec));
	_cleanup_free_ char *fin = make_dir(f, "lfinal", lfinal_spec, ARRAY_SIZE(lfinal_spec));
	_cleanup_free_ char *wh = make_dir(f, "lwh", lwhiteout_spec, ARRAY_SIZE(lwhiteout_spec));
	const char *want[] = { "n1", "n2>n1", "p/q1", "p/q2>p/q1", "x/a", "x/b>x/a", "y/c" };
	const char *want_wh[] = { "n1", "n2>n1", "p/q1", "p/q2>p/q1", "x/a", "y/c" };
	struct kiln_digest base, got, want_d, after;

	from_dir(f, b, NULL, &base);
	assert_groups(f, &base, "", "x/a x/b y/c");
	assert_groups(f, &base, "p", "q1 q2");
	/* y/c is another file now: x/a and x/b stay one, held by x. */
	apply(f, &base, l, NULL, &got);
	assert_groups(f, &got, "", "n1 n2");
	assert_groups(f, &got, "x", "a b");
	assert_links(f, &got, want, ARRAY_SIZE(want));
	/* The canonical form: the same tree as the directory built whole. */
	from_dir(f, fin, NULL, &want_d);
	assert_string_equal(KILN_DIGEST_STR(&got), KILN_DIGEST_STR(&want_d));
	/* x/b removed: a group of one is no group. */
	apply(f, &got, wh, NULL, &after);
	assert_groups(f, &after, "x", "");
	assert_links(f, &after, want_wh, ARRAY_SIZE(want_wh));
}

static void test_links_edit_and_diff(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *b = make_dir(f, "lbase", lbase_spec, ARRAY_SIZE(lbase_spec));
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_tree_editor *ed = NULL;
	struct kiln_tree_entry e;
	struct kiln_digest base, got, only_a;
	struct link_log l = { 0 };

	from_dir(f, b, NULL, &base);
	/* Removing y/c moves the group of x/a and x/b down to x. */
	assert_int_equal(kiln_tree_editor_new(f->s, &base, &ed, NULL), 0);
	assert_int_equal(kiln_tree_editor_remove(ed, "y/c", &err), 0);
	assert_int_equal(kiln_tree_editor_commit(ed, &got, &err), 0);
	assert_groups(f, &got, "", "");
	assert_groups(f, &got, "x", "a b");
	/* Replacing x/b leaves no group at all. */
	lookup(f, &got, "x/a", &e);
	assert_int_equal(kiln_tree_editor_put(ed, "x/b", &e, &err), 0);
	assert_int_equal(kiln_tree_editor_commit(ed, &got, &err), 0);
	assert_groups(f, &got, "x", "");
	kiln_tree_editor_free(ed);

	/* A graft carries the groups inside it. */
	assert_int_equal(kiln_tree_editor_new(f->s, NULL, &ed, NULL), 0);
	lookup(f, &base, "p", &e);
	assert_int_equal(kiln_tree_editor_put(ed, "copy", &e, &err), 0);
	assert_int_equal(kiln_tree_editor_commit(ed, &got, &err), 0);
	assert_groups(f, &got, "copy", "q1 q2");
	kiln_tree_editor_free(ed);

	/* A diff links a member only to a first member it reported itself. */
	assert_int_equal(kiln_tree_diff(f->s, NULL, &base, log_diff_links, &l, &err), 0);
	assert_int_equal(l.n, 5);
	assert_string_equal(l.lines[1], "p/q2>p/q1");
	assert_string_equal(l.lines[3], "x/b>x/a");
	assert_string_equal(l.lines[4], "y/c>x/a");
	assert_int_equal(kiln_tree_editor_new(f->s, &base, &ed, NULL), 0);
	assert_int_equal(kiln_tree_editor_remove(ed, "x/b", &err), 0);
	assert_int_equal(kiln_tree_editor_remove(ed, "y/c", &err), 0);
	assert_int_equal(kiln_tree_editor_commit(ed, &only_a, &err), 0);
	kiln_tree_editor_free(ed);
	memset(&l, 0, sizeof(l));
	assert_int_equal(kiln_tree_diff(f->s, &only_a, &base, log_diff_links, &l, &err), 0);
	assert_int_equal(l.n, 2);
	assert_string_equal(l.lines[0], "x/b"); /* x/a is in the old tree */
	assert_string_equal(l.lines[1], "y/c");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_codec_roundtrip),
		cmocka_unit_test_setup_teardown(test_put_get, setup, teardown),
		cmocka_unit_test_setup_teardown(test_from_dir_skips_bind_mounts, setup, teardown),
		cmocka_unit_test(test_decode_rejects),
		cmocka_unit_test(test_decode_header_and_truncation),
		cmocka_unit_test_setup_teardown(test_from_dir, setup, teardown),
		cmocka_unit_test_setup_teardown(test_from_dir_adopt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_from_dir_hooks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_change_one_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_diff, setup, teardown),
		cmocka_unit_test_setup_teardown(test_apply_layer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_apply_empty_layer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_editor, setup, teardown),
		cmocka_unit_test_setup_teardown(test_editor_resolve, setup, teardown),
		cmocka_unit_test(test_links_codec),
		cmocka_unit_test_setup_teardown(test_links_from_dir, setup, teardown),
		cmocka_unit_test_setup_teardown(test_links_apply_layer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_links_edit_and_diff, setup, teardown),
	};

	umask(022);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
