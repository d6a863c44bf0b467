/*
 * Unit tests for rcache: the record's strict reading, the directory
 * backend, fetching (every blob verified; a corrupt or missing one is
 * reported and nothing of it kept), the order of writes (blobs, then
 * nodes bottom-up, then the record) and the unavailable state.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cas/tree.h"
#include "rcache/rcache.h"

#define KEY "sha256:1111111111111111111111111111111111111111111111111111111111111111"

struct fx {
	char dir[64];
	struct kiln_store *a, *b; /* the producer's and the consumer's */
	struct kiln_digest tree;  /* a/ with files, a subdirectory, a link */
};

static void write_file(const char *dir, const char *rel, const char *data)
{
	_cleanup_free_ char *p = kiln_path_join(dir, rel);
	_cleanup_free_ char *parent = xstrdup(p);

	*strrchr(parent, '/') = '\0';
	assert_int_equal(kiln_mkdir_p(parent, 0755), 0);
	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, p, data, strlen(data), 0644, false), 0);
}

static int setup(void **state)
{
	struct fx *f = xcalloc(1, sizeof(*f));
	struct kiln_store_options o = { .durable = false };
	_cleanup_free_ char *sa = NULL, *sb = NULL, *src = NULL, *lnk = NULL;
	int fd;

	snprintf(f->dir, sizeof(f->dir), "/tmp/kiln-rcache-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	sa = kiln_path_join(f->dir, "a");
	sb = kiln_path_join(f->dir, "b");
	src = kiln_path_join(f->dir, "src");
	assert_int_equal(kiln_store_open(sa, &o, &f->a, NULL), 0);
	assert_int_equal(kiln_store_open(sb, &o, &f->b, NULL), 0);
	write_file(src, "x.txt", "one\n");
	write_file(src, "sub/y.txt", "two\n");
	write_file(src, "sub/deep/z.txt", "three\n");
	lnk = kiln_path_join(src, "sub/w.txt");
	{
		_cleanup_free_ char *y = kiln_path_join(src, "sub/y.txt");

		assert_int_equal(link(y, lnk), 0); /* a hardlink group travels too */
	}
	fd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_int_equal(kiln_tree_from_dir(f->a, fd, NULL, &f->tree, NULL), 0);
	close(fd);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	kiln_store_free(f->a);
	kiln_store_free(f->b);
	kiln_rm_rf(f->dir);
	free(f);
	return 0;
}

static void sample_record(struct kiln_cache_record *r, struct kiln_digest *tree)
{
	memset(r, 0, sizeof(*r));
	r->op = (char *)"sha256:2222222222222222222222222222222222222222222222222222222222222222";
	r->outputs = tree;
	r->n_outputs = 1;
	r->meta = (char *)"{\"config\":{\"Env\":[\"A=b\"]}}";
	r->created = 1700000000;
	r->duration_ms = 42;
	r->platform = (char *)"linux/arm64";
	r->worker = (char *)"w1";
	r->size = 13;
}

static void test_record_codec(void **state)
{
	struct kiln_cache_record r, back;
	struct kiln_digest t;
	_cleanup_free_ char *json = NULL;
	static const char *const bad[] = {
		"not json",
		"[]",
		"{\"kiln_cache_record\":2,\"key\":\"" KEY "\",\"outputs\":[\"sha256:2222222222222222222222222222222222222222222222222222222222222222\"],\"created\":0,\"duration_ms\":0,\"size\":0}",
		"{\"kiln_cache_record\":1,\"key\":\"sha256:3333333333333333333333333333333333333333333333333333333333333333\",\"outputs\":[\"sha256:2222222222222222222222222222222222222222222222222222222222222222\"],\"created\":0,\"duration_ms\":0,\"size\":0}",
		"{\"kiln_cache_record\":1,\"key\":\"" KEY "\",\"outputs\":[],\"created\":0,\"duration_ms\":0,\"size\":0}",
		"{\"kiln_cache_record\":1,\"key\":\"" KEY "\",\"outputs\":[\"sha256:zz\"],\"created\":0,\"duration_ms\":0,\"size\":0}",
		"{\"kiln_cache_record\":1,\"key\":\"" KEY "\",\"outputs\":[\"sha256:2222222222222222222222222222222222222222222222222222222222222222\"],\"created\":-1,\"duration_ms\":0,\"size\":0}",
		"{\"kiln_cache_record\":1,\"key\":\"" KEY "\",\"outputs\":[\"sha256:2222222222222222222222222222222222222222222222222222222222222222\"],\"meta\":[1],\"created\":0,\"duration_ms\":0,\"size\":0}",
		"{\"kiln_cache_record\":1,\"kiln_cache_record\":1}",
		"{\"kiln_cache_record\":1,\"key\":\"" KEY "\",\"outputs\":[\"sha256:2222222222222222222222222222222222222222222222222222222222222222\"],\"created\":0,\"duration_ms\":0,\"size\":0,\"emulated\":1}",
	};
	/* Without "emulated" (records before it): made natively, as far as anyone knows. */
	static const char older[] =
		"{\"kiln_cache_record\":1,\"key\":\"" KEY "\",\"outputs\":[\"sha256:2222222222222222222222222222222222222222222222222222222222222222\"],\"created\":0,\"duration_ms\":0,\"size\":0}";
	size_t i;

	(void)state;
	kiln_digest_parse("sha256:4444444444444444444444444444444444444444444444444444444444444444", &t);
	sample_record(&r, &t);
	r.emulated = true;
	json = kiln_rcache_record_encode(KEY, &r);
	assert_non_null(json);
	assert_int_equal(kiln_rcache_record_decode(KEY, json, strlen(json), &back, NULL), 0);
	assert_string_equal(back.op, r.op);
	assert_int_equal(back.n_outputs, 1);
	assert_true(kiln_digest_eq(&back.outputs[0], &t));
	assert_string_equal(back.meta, r.meta);
	assert_int_equal(back.created, 1700000000);
	assert_int_equal(back.duration_ms, 42);
	assert_string_equal(back.platform, "linux/arm64");
	assert_string_equal(back.worker, "w1");
	assert_int_equal(back.size, 13);
	assert_true(back.emulated);
	kiln_cache_record_release(&back);
	assert_int_equal(kiln_rcache_record_decode(KEY, older, strlen(older), &back, NULL), 0);
	assert_false(back.emulated);
	kiln_cache_record_release(&back);
	/* The same bytes under another key are not this key's record. */
	assert_int_equal(kiln_rcache_record_decode("sha256:5555555555555555555555555555555555555555555555555555555555555555",
						   json, strlen(json), &back, NULL), -EBADMSG);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		_cleanup_error_ struct kiln_error *err = NULL;

		assert_int_equal(kiln_rcache_record_decode(KEY, bad[i], strlen(bad[i]), &back, &err),
				 -EBADMSG);
		assert_non_null(strstr(kiln_error_msg(err), KEY));
		assert_null(back.outputs);
	}
}

/* Put from store a, fetch into store b: the same tree, every blob there. */
static void test_dir_roundtrip(void **state)
{
	struct fx *f = *state;
	_cleanup_free_ char *cdir = kiln_path_join(f->dir, "cache");
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_rcache *rc = NULL;
	struct kiln_cache_record r, got;
	const char *keys[2] = { KEY, "sha256:6666666666666666666666666666666666666666666666666666666666666666" };
	uint64_t up = 0, down = 0, again = 1;
	struct kiln_tree_entry e;

	assert_int_equal(kiln_rcache_open_dir(cdir, true, &rc, &err), 0);
	sample_record(&r, &f->tree);
	assert_int_equal(kiln_rcache_get(rc, KEY, &got, NULL), -ENOENT);
	assert_int_equal(kiln_rcache_put(rc, f->a, keys, 2, &r, &up, &err), 0);
	assert_true(up >= strlen("one\ntwo\nthree\n"));
	/* Everything is there: a second put copies nothing. */
	assert_int_equal(kiln_rcache_put(rc, f->a, keys, 2, &r, &again, &err), 0);
	assert_int_equal(again, 0);
	assert_int_equal(kiln_rcache_get(rc, keys[1], &got, &err), 0);
	assert_int_equal(kiln_rcache_fetch(rc, &got, f->b, &down, &err), 0);
	assert_int_equal(down, up);
	assert_int_equal(kiln_tree_lookup(f->b, &f->tree, "sub/deep/z.txt", &e, &err), 0);
	assert_true(kiln_store_has(f->b, &e.digest));
	kiln_tree_entry_release(&e);
	kiln_cache_record_release(&got);
	assert_null(kiln_rcache_unavailable(rc));
	kiln_rcache_free(rc);
}

/* Overwrite the cache's copy of the blob of path with other bytes. */
static void spoil_blob(struct fx *f, const char *cdir, const char *path, const char *bytes)
{
	struct kiln_tree_entry e;
	char hex[KILN_DIGEST_HEXLEN];
	_cleanup_free_ char *p = NULL;

	assert_int_equal(kiln_tree_lookup(f->a, &f->tree, path, &e, NULL), 0);
	p = xasprintf("%s/cas/sha256/%s", cdir, kiln_digest_hex(&e.digest, hex));
	if (bytes)
		assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, p, bytes, strlen(bytes), 0644, false), 0);
	else
		assert_int_equal(unlink(p), 0);
	kiln_tree_entry_release(&e);
}

static void test_fetch_verifies(void **state)
{
	struct fx *f = *state;
	_cleanup_free_ char *cdir = kiln_path_join(f->dir, "cache2");
	struct kiln_rcache *rc = NULL;
	struct kiln_cache_record r, got;
	const char *keys[1] = { KEY };
	struct kiln_tree_entry e;
	uint64_t first = 0;

	assert_int_equal(kiln_rcache_open_dir(cdir, true, &rc, NULL), 0);
	sample_record(&r, &f->tree);
	assert_int_equal(kiln_rcache_put(rc, f->a, keys, 1, &r, &first, NULL), 0);
	assert_int_equal(kiln_rcache_get(rc, KEY, &got, NULL), 0);

	/* Other bytes under a blob's name: reported, never stored. */
	spoil_blob(f, cdir, "sub/deep/z.txt", "THREE\n");
	{
		_cleanup_error_ struct kiln_error *err = NULL;

		assert_int_equal(kiln_rcache_fetch(rc, &got, f->b, NULL, &err), -EBADMSG);
		assert_non_null(strstr(kiln_error_msg(err), cdir));
		assert_int_equal(kiln_tree_lookup(f->a, &f->tree, "sub/deep/z.txt", &e, NULL), 0);
		assert_false(kiln_store_has(f->b, &e.digest));
		kiln_tree_entry_release(&e);
	}
	/*
	 * The corrupt blob went from the remote, and the record that named
	 * it: a put skips what is there, so nothing else would mend them.
	 * The next put writes both again and the fetch works.
	 */
	{
		_cleanup_error_ struct kiln_error *err = NULL;
		struct kiln_cache_record again;
		uint64_t up = 0;

		assert_int_equal(kiln_rcache_get(rc, KEY, &again, NULL), -ENOENT);
		assert_int_equal(kiln_rcache_put(rc, f->a, keys, 1, &r, &up, &err), 0);
		/* the blob and the nodes above it, not the rest */
		assert_true(up > strlen("three\n") && up < first);
		assert_int_equal(kiln_rcache_get(rc, KEY, &again, &err), 0);
		assert_int_equal(kiln_rcache_fetch(rc, &again, f->b, NULL, &err), 0);
		kiln_cache_record_release(&again);
	}
	/* A missing blob: the same, and its record goes too. The remote stays
	 * usable: not its fault. */
	spoil_blob(f, cdir, "sub/deep/z.txt", NULL);
	{
		_cleanup_error_ struct kiln_error *err = NULL;
		struct kiln_cache_record again;
		struct kiln_store *c = NULL;
		_cleanup_free_ char *cpath = kiln_path_join(f->dir, "store-c");

		struct kiln_store_options o = { .durable = false };

		assert_int_equal(kiln_store_open(cpath, &o, &c, NULL), 0);
		assert_int_equal(kiln_rcache_fetch(rc, &got, c, NULL, &err), -EBADMSG);
		assert_non_null(strstr(kiln_error_msg(err), "missing"));
		assert_int_equal(kiln_rcache_get(rc, KEY, &again, NULL), -ENOENT);
		kiln_store_free(c);
	}
	assert_null(kiln_rcache_unavailable(rc));
	/* A record with bad JSON is corrupt, not absent. */
	{
		_cleanup_free_ char *p = xasprintf("%s/ac/sha256/%s", cdir, KEY + 7);
		_cleanup_error_ struct kiln_error *err = NULL;
		struct kiln_cache_record bad;

		assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, p, "{oops", 5, 0644, false), 0);
		assert_int_equal(kiln_rcache_get(rc, KEY, &bad, &err), -EBADMSG);
		assert_non_null(strstr(kiln_error_msg(err), "bad JSON"));
	}
	kiln_cache_record_release(&got);
	kiln_rcache_free(rc);
}

/* A backend that logs the order of writes, and can break. */
struct logged {
	char names[64][96];
	int n;
	int fail; /* a code every call returns, 0 = work */
	int calls;
};

static int log_get(void *b, const char *name, uint64_t limit,
		   int (*sink)(void *ud, const void *data, size_t n), void *ud,
		   struct kiln_error **err)
{
	struct logged *l = b;

	l->calls++;
	if (l->fail)
		return kiln_error_set(err, l->fail, "connection refused by test");
	return -ENOENT;
}

static int log_has(void *b, const char *name, struct kiln_error **err)
{
	struct logged *l = b;
	int i;

	l->calls++;
	if (l->fail)
		return kiln_error_set(err, l->fail, "connection refused by test");
	for (i = 0; i < l->n; i++)
		if (!strcmp(l->names[i], name))
			return 1;
	return 0;
}

static int log_put(void *b, const char *name, int fd, const void *data, uint64_t size,
		   struct kiln_error **err)
{
	struct logged *l = b;

	l->calls++;
	if (l->fail)
		return kiln_error_set(err, l->fail, "connection refused by test");
	assert_true(l->n < 64);
	snprintf(l->names[l->n++], 96, "%s", name);
	return 0;
}

static void test_write_order_and_down(void **state)
{
	struct fx *f = *state;
	struct logged l = { 0 };
	struct kiln_rcache_backend be = { .name = "test://", .get = log_get, .has = log_has,
					  .put = log_put, .b = &l };
	struct kiln_rcache *rc = kiln_rcache_new(&be);
	struct kiln_cache_record r, got;
	const char *keys[1] = { KEY };
	struct kiln_tree_entry sub, deep, z;
	char hex[KILN_DIGEST_HEXLEN];
	int i, at_sub = -1, at_deep = -1, at_z = -1, at_root = -1;
	_cleanup_free_ char *nsub = NULL, *ndeep = NULL, *nz = NULL, *nroot = NULL;

	sample_record(&r, &f->tree);
	assert_int_equal(kiln_rcache_put(rc, f->a, keys, 1, &r, NULL, NULL), 0);
	assert_int_equal(kiln_tree_lookup(f->a, &f->tree, "sub", &sub, NULL), 0);
	assert_int_equal(kiln_tree_lookup(f->a, &f->tree, "sub/deep", &deep, NULL), 0);
	assert_int_equal(kiln_tree_lookup(f->a, &f->tree, "sub/deep/z.txt", &z, NULL), 0);
	nsub = xasprintf("cas/sha256/%s", kiln_digest_hex(&sub.digest, hex));
	ndeep = xasprintf("cas/sha256/%s", kiln_digest_hex(&deep.digest, hex));
	nz = xasprintf("cas/sha256/%s", kiln_digest_hex(&z.digest, hex));
	nroot = xasprintf("cas/sha256/%s", kiln_digest_hex(&f->tree, hex));
	for (i = 0; i < l.n; i++) {
		at_sub = strcmp(l.names[i], nsub) ? at_sub : i;
		at_deep = strcmp(l.names[i], ndeep) ? at_deep : i;
		at_z = strcmp(l.names[i], nz) ? at_z : i;
		at_root = strcmp(l.names[i], nroot) ? at_root : i;
	}
	assert_true(at_z >= 0 && at_z < at_deep && at_deep < at_sub && at_sub < at_root);
	assert_string_equal(l.names[l.n - 1], "ac/sha256/1111111111111111111111111111111111111111111111111111111111111111");
	kiln_tree_entry_release(&sub);
	kiln_tree_entry_release(&deep);
	kiln_tree_entry_release(&z);

	/* Refused: unavailable from then on, and not called again. */
	l.fail = -ECONNREFUSED;
	assert_int_equal(kiln_rcache_get(rc, KEY, &got, NULL), -ECONNREFUSED);
	assert_non_null(kiln_rcache_unavailable(rc));
	if (!strstr(kiln_rcache_unavailable(rc), "connection refused by test"))
		fail_msg("unavailable: %s", kiln_rcache_unavailable(rc));
	l.calls = 0;
	{
		_cleanup_error_ struct kiln_error *err = NULL;

		assert_int_equal(kiln_rcache_get(rc, KEY, &got, &err), -EHOSTDOWN);
		assert_non_null(strstr(kiln_error_msg(err), "test://"));
		assert_int_equal(kiln_rcache_put(rc, f->a, keys, 1, &r, NULL, NULL), -EHOSTDOWN);
	}
	assert_int_equal(l.calls, 0);
	kiln_rcache_free(rc);
}

/* Set every object under cdir/sub to mtime now - age. */
static void age_objects(const char *cdir, const char *sub, int64_t age)
{
	_cleanup_free_ char *cmd = xasprintf("find %s/%s -type f -exec touch -d @%lld {} +",
					      cdir, sub, (long long)(time(NULL) - age));

	assert_int_equal(system(cmd), 0);
}

static size_t count_files(const char *dir)
{
	_cleanup_free_ char *cmd = xasprintf("find %s -type f | wc -l", dir);
	FILE *p = popen(cmd, "r");
	unsigned long n = 0;

	assert_non_null(p);
	assert_int_equal(fscanf(p, "%lu", &n), 1);
	pclose(p);
	return n;
}

static void test_gc(void **state)
{
	struct fx *f = *state;
	_cleanup_free_ char *cdir = kiln_path_join(f->dir, "gc");
	_cleanup_free_ char *src2 = kiln_path_join(f->dir, "src2");
	_cleanup_free_ char *recs = NULL, *blobs = NULL;
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_rcache *rc = NULL;
	struct kiln_cache_record ra, rb, got;
	struct kiln_digest t2, orphan;
	const char *ka[1] = { KEY };
	const char *kb[1] = { "sha256:7777777777777777777777777777777777777777777777777777777777777777" };
	struct kiln_rcache_gc_opts o = { .now = time(NULL), .older_than = 86400, .grace = 3600 };
	struct kiln_rcache_gc_stats st;
	size_t before;
	int fd;

	/* A: the fixture tree; B: one file shared with A ("two") and one of its own. */
	write_file(src2, "y.txt", "two\n");
	write_file(src2, "own.txt", "only in b\n");
	fd = open(src2, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_int_equal(kiln_tree_from_dir(f->a, fd, NULL, &t2, NULL), 0);
	close(fd);
	assert_int_equal(kiln_rcache_open_dir(cdir, true, &rc, NULL), 0);
	sample_record(&ra, &f->tree);
	sample_record(&rb, &t2);
	assert_int_equal(kiln_rcache_put(rc, f->a, ka, 1, &ra, NULL, &err), 0);
	/* A is two days old, its blobs too; then B and an old orphan blob. */
	age_objects(cdir, "", 2 * 86400);
	assert_int_equal(kiln_rcache_put(rc, f->a, kb, 1, &rb, NULL, &err), 0);
	{
		char hex[KILN_DIGEST_HEXLEN];
		_cleanup_free_ char *p = NULL;

		kiln_digest_buf("orphan", 6, &orphan);
		p = xasprintf("%s/cas/sha256/%s", cdir, kiln_digest_hex(&orphan, hex));
		assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, p, "orphan", 6, 0644, false), 0);
		age_objects(cdir, "cas/sha256", 2 * 86400); /* B's blobs old too: kept as B's */
	}
	blobs = kiln_path_join(cdir, "cas");
	recs = kiln_path_join(cdir, "ac");
	before = count_files(blobs);

	o.dry_run = true;
	assert_int_equal(kiln_rcache_gc(rc, &o, &st, &err), 0);
	assert_int_equal(st.records, 2);
	assert_int_equal(st.records_deleted, 1);
	assert_true(st.blobs_deleted >= 4); /* A's root, sub, deep, x, z, the orphan */
	assert_int_equal(count_files(blobs), before); /* a dry run */
	assert_int_equal(count_files(recs), 2);

	o.dry_run = false;
	assert_int_equal(kiln_rcache_gc(rc, &o, &st, &err), 0);
	assert_int_equal(st.records_deleted, 1);
	assert_int_equal(count_files(recs), 1);
	assert_int_equal(count_files(blobs), before - st.blobs_deleted);
	assert_int_equal(kiln_rcache_get(rc, KEY, &got, NULL), -ENOENT);
	/* B is whole: it fetches into a fresh store. */
	assert_int_equal(kiln_rcache_get(rc, kb[0], &got, &err), 0);
	assert_int_equal(kiln_rcache_fetch(rc, &got, f->b, NULL, &err), 0);
	kiln_cache_record_release(&got);
	{
		char hex[KILN_DIGEST_HEXLEN];
		_cleanup_free_ char *p = xasprintf("%s/cas/sha256/%s", cdir, kiln_digest_hex(&orphan, hex));

		assert_int_equal(access(p, F_OK), -1);
	}
	/* A young blob (a writer at work) is never swept. */
	write_file(cdir, "cas/sha256/8888888888888888888888888888888888888888888888888888888888888888", "young");
	assert_int_equal(kiln_rcache_gc(rc, &o, &st, &err), 0);
	assert_int_equal(st.blobs_deleted, 0);
	/* keep_bytes: nothing fits, the oldest (only) record goes. */
	o.older_than = -1;
	o.has_keep = true;
	o.keep_bytes = 1;
	assert_int_equal(kiln_rcache_gc(rc, &o, &st, &err), 0);
	assert_int_equal(st.records_deleted, 1);
	assert_int_equal(count_files(recs), 0);
	assert_null(kiln_rcache_unavailable(rc));
	kiln_rcache_free(rc);
}

/*
 * --keep-storage: records go oldest first until what the rest reach fits.
 * Four records of 4 KiB each (one file of its own, one node), a day apart:
 * with room for two and a half, the two newest stay, and what the others
 * alone needed is swept.
 */
static void test_gc_keep_storage(void **state)
{
	struct fx *f = *state;
	_cleanup_free_ char *cdir = kiln_path_join(f->dir, "gc-keep");
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_rcache_gc_opts o = { .now = time(NULL) + 60, .older_than = -1, .grace = 0 };
	struct kiln_rcache_gc_stats st;
	struct kiln_rcache *rc = NULL;
	struct kiln_cache_record rec, got;
	char keys[4][72];
	struct kiln_digest t[4];
	int i;

	assert_int_equal(kiln_rcache_open_dir(cdir, true, &rc, NULL), 0);
	for (i = 0; i < 4; i++) {
		_cleanup_free_ char *src = xasprintf("%s/keep%d", f->dir, i);
		char data[4097];
		const char *k[1] = { keys[i] };
		int fd;

		memset(data, 'a' + i, 4096);
		data[4096] = '\0';
		write_file(src, "f", data);
		fd = open(src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		assert_int_equal(kiln_tree_from_dir(f->a, fd, NULL, &t[i], NULL), 0);
		close(fd);
		/* names in the opposite order of age: only the age may decide */
		snprintf(keys[i], sizeof(keys[i]), "sha256:%064d", 13 - i);
		sample_record(&rec, &t[i]);
		assert_int_equal(kiln_rcache_put(rc, f->a, k, 1, &rec, NULL, &err), 0);
	}
	for (i = 0; i < 4; i++) { /* record i is 4 - i days old */
		_cleanup_free_ char *sub = xasprintf("ac/sha256/%s", keys[i] + 7);

		age_objects(cdir, sub, (4 - i) * 86400);
	}
	o.has_keep = true;
	o.keep_bytes = 4096 * 2 + 2048;
	assert_int_equal(kiln_rcache_gc(rc, &o, &st, &err), 0);
	assert_int_equal(st.records, 4);
	assert_int_equal(st.records_deleted, 2);
	assert_int_equal(st.blobs_deleted, 4); /* the two oldest files and roots */
	for (i = 0; i < 4; i++) {
		int r = kiln_rcache_get(rc, keys[i], &got, NULL);

		assert_int_equal(r, i < 2 ? -ENOENT : 0);
		if (r == 0) {
			assert_int_equal(kiln_rcache_fetch(rc, &got, f->b, NULL, &err), 0);
			kiln_cache_record_release(&got);
		}
	}
	/* Room for all: nothing more goes. */
	o.keep_bytes = 1u << 30;
	assert_int_equal(kiln_rcache_gc(rc, &o, &st, &err), 0);
	assert_int_equal(st.records_deleted, 0);
	assert_int_equal(st.blobs_deleted, 0);
	kiln_rcache_free(rc);
}

/* A FIFO planted in a cache directory is no record, and never a hang. */
static void test_dir_fifo(void **state)
{
	struct fx *f = *state;
	_cleanup_free_ char *cdir = kiln_path_join(f->dir, "fifo");
	_cleanup_free_ char *p = NULL;
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_rcache *rc = NULL;
	struct kiln_cache_record got;

	assert_int_equal(kiln_rcache_open_dir(cdir, true, &rc, NULL), 0);
	write_file(cdir, "ac/sha256/placeholder", "");
	p = xasprintf("%s/ac/sha256/%s", cdir, KEY + 7);
	assert_int_equal(mkfifo(p, 0644), 0);
	assert_int_equal(kiln_rcache_get(rc, KEY, &got, &err), -EBADMSG);
	assert_non_null(strstr(kiln_error_msg(err), "not a file"));
	kiln_rcache_free(rc);
}

/*
 * A young node whose subtree is not whole (a gc deleted below a node a
 * writer wrote again) is deleted by the next gc, whatever its age, with
 * the records that name it.
 */
static void test_gc_broken_young_node(void **state)
{
	struct fx *f = *state;
	_cleanup_free_ char *cdir = kiln_path_join(f->dir, "gc2");
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_rcache *rc = NULL;
	struct kiln_cache_record r, got;
	const char *keys[1] = { KEY };
	struct kiln_rcache_gc_opts o = { .now = time(NULL), .older_than = -1, .grace = 3600 };
	struct kiln_rcache_gc_stats st;
	struct kiln_tree_entry deep, z;
	char hex[KILN_DIGEST_HEXLEN];
	_cleanup_free_ char *zp = NULL, *deepp = NULL;

	assert_int_equal(kiln_rcache_open_dir(cdir, true, &rc, NULL), 0);
	sample_record(&r, &f->tree);
	assert_int_equal(kiln_rcache_put(rc, f->a, keys, 1, &r, NULL, &err), 0);
	assert_int_equal(kiln_tree_lookup(f->a, &f->tree, "sub/deep", &deep, NULL), 0);
	assert_int_equal(kiln_tree_lookup(f->a, &f->tree, "sub/deep/z.txt", &z, NULL), 0);
	zp = xasprintf("%s/cas/sha256/%s", cdir, kiln_digest_hex(&z.digest, hex));
	deepp = xasprintf("%s/cas/sha256/%s", cdir, kiln_digest_hex(&deep.digest, hex));
	assert_int_equal(unlink(zp), 0); /* the file below sub/deep is gone */
	assert_int_equal(kiln_rcache_gc(rc, &o, &st, &err), 0);
	assert_int_equal(st.records_bad, 1);
	assert_int_equal(access(deepp, F_OK), -1); /* broken, young, deleted */
	assert_int_equal(kiln_rcache_get(rc, KEY, &got, NULL), -ENOENT);
	kiln_tree_entry_release(&deep);
	kiln_tree_entry_release(&z);
	kiln_rcache_free(rc);
}

/*
 * A writer touches what it relies on: the second put of a tree already
 * there makes its root node young again (a gc running meanwhile keeps its
 * subtree), moving no bytes.
 */
static void test_put_touches(void **state)
{
	struct fx *f = *state;
	_cleanup_free_ char *cdir = kiln_path_join(f->dir, "touch");
	_cleanup_free_ char *root = NULL;
	struct kiln_rcache *rc = NULL;
	struct kiln_cache_record r;
	const char *keys[1] = { KEY };
	char hex[KILN_DIGEST_HEXLEN];
	uint64_t bytes = 1;
	struct stat st;

	assert_int_equal(kiln_rcache_open_dir(cdir, true, &rc, NULL), 0);
	sample_record(&r, &f->tree);
	assert_int_equal(kiln_rcache_put(rc, f->a, keys, 1, &r, NULL, NULL), 0);
	age_objects(cdir, "", 2 * 86400);
	root = xasprintf("%s/cas/sha256/%s", cdir, kiln_digest_hex(&f->tree, hex));
	assert_int_equal(stat(root, &st), 0);
	assert_true(st.st_mtime < time(NULL) - 86400);
	assert_int_equal(kiln_rcache_put(rc, f->a, keys, 1, &r, &bytes, NULL), 0);
	assert_int_equal(bytes, 0);
	assert_int_equal(stat(root, &st), 0);
	assert_true(st.st_mtime >= time(NULL) - 60);
	kiln_rcache_free(rc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_record_codec),
		cmocka_unit_test_setup_teardown(test_dir_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fetch_verifies, setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_order_and_down, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gc, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gc_keep_storage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dir_fifo, setup, teardown),
		cmocka_unit_test_setup_teardown(test_put_touches, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gc_broken_young_node, setup, teardown),
	};

	umask(022);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
