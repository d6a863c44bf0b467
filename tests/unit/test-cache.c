/* Unit tests for the cache index (src/cache/index.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cache/index.h"

struct fixture {
	char *dir;
	char *db;
};

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	char tmpl[] = "/tmp/kiln-test-cache-XXXXXX";

	assert_non_null(mkdtemp(tmpl));
	f->dir = xstrdup(tmpl);
	f->db = xasprintf("%s/index.db", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(kiln_rm_rf(f->dir), 0);
	free(f->dir);
	free(f->db);
	free(f);
	return 0;
}

static struct kiln_cache *open_ok(const char *path)
{
	struct kiln_cache *c = NULL;
	_cleanup_error_ struct kiln_error *err = NULL;
	int r = kiln_cache_open(path, &c, &err);

	if (r < 0)
		fail_msg("open %s: %s", path, kiln_error_msg(err));
	return c;
}

/* A deterministic record number i (outputs, meta, provenance all vary). */
static void make_record(struct kiln_cache_record *rec, unsigned i)
{
	size_t j;

	memset(rec, 0, sizeof(*rec));
	rec->op = xasprintf("sha256:op%u", i % 7);
	rec->n_outputs = i % 3 + 1;
	rec->outputs = xcalloc(rec->n_outputs, sizeof(*rec->outputs));
	for (j = 0; j < rec->n_outputs; j++) {
		char *s = xasprintf("out-%u-%zu", i, j);

		kiln_digest_buf(s, strlen(s), &rec->outputs[j]);
		free(s);
	}
	rec->meta = xasprintf("{\"i\":%u}", i);
	rec->created = 1000 + i;
	rec->duration_ms = i * 7u;
	rec->worker = xasprintf("worker-%u", i);
	rec->platform = xstrdup(i % 2 ? "linux/arm64" : "linux/amd64");
	rec->size = i * 100u;
	rec->emulated = i % 5 == 1;
}

static void assert_same_record(const struct kiln_cache_record *a,
			       const struct kiln_cache_record *b)
{
	size_t j;

	assert_string_equal(a->op, b->op);
	assert_int_equal(a->n_outputs, b->n_outputs);
	for (j = 0; j < a->n_outputs; j++)
		assert_true(kiln_digest_eq(&a->outputs[j], &b->outputs[j]));
	assert_string_equal(a->meta, b->meta);
	assert_int_equal(a->created, b->created);
	assert_int_equal(a->duration_ms, b->duration_ms);
	assert_string_equal(a->worker, b->worker);
	assert_string_equal(a->platform, b->platform);
	assert_int_equal(a->size, b->size);
	assert_int_equal(a->emulated, b->emulated);
}

static char *key_for(unsigned i, char which)
{
	return xasprintf("sha256:key-%u-%c", i, which);
}

static void put_ok(struct kiln_cache *c, unsigned i, const char *k1,
		   const char *k2)
{
	struct kiln_cache_record rec;
	const char *keys[] = { k1, k2 };
	_cleanup_error_ struct kiln_error *err = NULL;

	make_record(&rec, i);
	if (kiln_cache_put(c, keys, k2 ? 2 : 1, &rec, &err) < 0)
		fail_msg("put: %s", kiln_error_msg(err));
	kiln_cache_record_release(&rec);
}

static void get_expect(struct kiln_cache *c, const char *key, unsigned i)
{
	struct kiln_cache_record want, got;
	_cleanup_error_ struct kiln_error *err = NULL;

	make_record(&want, i);
	if (kiln_cache_get(c, key, &got, &err) < 0)
		fail_msg("get %s: %s", key, kiln_error_msg(err));
	assert_string_equal(got.key, key);
	assert_same_record(&want, &got);
	assert_true(got.last_used > 0);
	kiln_cache_record_release(&want);
	kiln_cache_record_release(&got);
}

static void get_absent(struct kiln_cache *c, const char *key)
{
	struct kiln_cache_record got;

	assert_int_equal(kiln_cache_get(c, key, &got, NULL), -ENOENT);
}

/* Query the database behind the index's back (a second connection). */
static int64_t sql_int(const char *db, const char *sql)
{
	sqlite3 *h = NULL;
	sqlite3_stmt *st = NULL;
	int64_t v = -1;

	assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL),
			 SQLITE_OK);
	sqlite3_busy_timeout(h, 10000);
	assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(h);
	return v;
}

static void sql_exec(const char *db, const char *sql)
{
	sqlite3 *h = NULL;

	assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL),
			 SQLITE_OK);
	sqlite3_busy_timeout(h, 10000);
	assert_int_equal(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(h);
}

static void test_roundtrip_two_keys(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = open_ok(f->db);

	put_ok(c, 4, "sha256:def", "sha256:content");
	get_expect(c, "sha256:def", 4);
	get_expect(c, "sha256:content", 4);
	get_absent(c, "sha256:other");
	/* Both keys name one results row. */
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM results"), 1);
	assert_int_equal(sql_int(f->db, "SELECT count(DISTINCT result_id) FROM keys"), 1);
	kiln_cache_free(c);
}

struct seen_blobs {
	unsigned digests, junk;
	size_t last;
};

static void count_blob(void *ud, size_t i, const struct kiln_digest *d)
{
	struct seen_blobs *s = ud;

	if (d)
		s->digests++;
	else
		s->junk++;
	s->last = i;
}

static void test_meta_blobs(void **state)
{
	struct seen_blobs s = { 0 };

	kiln_cache_meta_blobs("{\"blobs\":[\"sha256:" "0000000000000000000000000000000000000000000000000000000000000001\","
			      "17,\"sha256:0000000000000000000000000000000000000000000000000000000000000002\"]}",
			      count_blob, &s);
	assert_int_equal(s.digests, 2);
	assert_int_equal(s.junk, 1);
	assert_int_equal(s.last, 2);
	memset(&s, 0, sizeof(s));
	kiln_cache_meta_blobs(NULL, count_blob, &s);
	kiln_cache_meta_blobs("not json", count_blob, &s);
	kiln_cache_meta_blobs("{\"config\":1}", count_blob, &s);
	assert_int_equal(s.digests + s.junk, 0);
}

/* An alias names the same record: no second row, the estimate unmoved. */
static void test_alias(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = open_ok(f->db);
	struct kiln_error *err = NULL;
	uint64_t ms = 0;

	put_ok(c, 4, "sha256:content", NULL);
	assert_int_equal(kiln_cache_alias(c, "sha256:content", "sha256:def", &err), 0);
	get_expect(c, "sha256:def", 4);
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM results"), 1);
	assert_int_equal(kiln_cache_estimate(c, "sha256:op4", &ms), 0);
	assert_int_equal(ms, 28); /* record 4's own duration, counted once */
	/* Re-aliasing a key away from its only record drops that record. */
	put_ok(c, 5, "sha256:other", NULL);
	assert_int_equal(kiln_cache_alias(c, "sha256:content", "sha256:other", &err), 0);
	get_expect(c, "sha256:other", 4);
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM results"), 1);
	assert_int_equal(kiln_cache_alias(c, "sha256:nothing", "sha256:x", &err), -ENOENT);
	assert_non_null(strstr(err->msg, "sha256:nothing"));
	kiln_error_free(err);
	get_absent(c, "sha256:x");
	kiln_cache_free(c);
}

/* Many aliases in one call: new ones, a re-pointed one, a missing key. */
static void test_alias_many(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = open_ok(f->db);
	struct kiln_error *err = NULL;
	const char *keys[] = { "sha256:k1", "sha256:k2", "sha256:none", "sha256:k2" };
	const char *aliases[] = { "sha256:a1", "sha256:a2", "sha256:a3", "sha256:old" };
	size_t skipped = 99;

	put_ok(c, 1, "sha256:k1", NULL);
	put_ok(c, 2, "sha256:k2", NULL);
	put_ok(c, 3, "sha256:old", NULL);
	assert_int_equal(kiln_cache_alias_many(c, keys, aliases, 4, &skipped, &err), 0);
	assert_int_equal(skipped, 1);
	get_expect(c, "sha256:a1", 1);
	get_expect(c, "sha256:a2", 2);
	get_absent(c, "sha256:a3");
	/* Re-pointed away from its only key, record 3 is gone. */
	get_expect(c, "sha256:old", 2);
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM results"), 2);
	kiln_cache_free(c);
}

/* Hits touch last_used, written in a batch by flush (and by free). */
static void test_touch_flush(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = open_ok(f->db);
	struct kiln_cache_record rec = { 0 };

	put_ok(c, 1, "sha256:k1", NULL);
	sql_exec(f->db, "UPDATE results SET last_used = 5;");
	kiln_cache_read_begin(c);
	assert_int_equal(kiln_cache_get(c, "sha256:k1", &rec, NULL), 0);
	kiln_cache_read_end(c);
	assert_true(rec.last_used > 5);
	kiln_cache_record_release(&rec);
	kiln_cache_flush(c);
	assert_true(sql_int(f->db, "SELECT last_used FROM results") > 5);
	kiln_cache_free(c);
}

static void test_replace(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = open_ok(f->db);

	put_ok(c, 1, "sha256:a", "sha256:b");
	put_ok(c, 2, "sha256:a", NULL);
	get_expect(c, "sha256:a", 2);
	get_expect(c, "sha256:b", 1);
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM results"), 2);
	/* Repointing the last key of record 1 drops record 1. */
	put_ok(c, 3, "sha256:b", NULL);
	get_expect(c, "sha256:b", 3);
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM results"), 2);
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM results WHERE duration_ms = 7"), 0);
	kiln_cache_free(c);
}

static void test_delete(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = open_ok(f->db);
	_cleanup_error_ struct kiln_error *err = NULL;

	put_ok(c, 5, "sha256:x", "sha256:y");
	assert_int_equal(kiln_cache_delete(c, "sha256:x", NULL), 0);
	get_absent(c, "sha256:x");
	get_expect(c, "sha256:y", 5);
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM results"), 1);
	assert_int_equal(kiln_cache_delete(c, "sha256:y", NULL), 0);
	get_absent(c, "sha256:y");
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM results"), 0);
	assert_int_equal(kiln_cache_delete(c, "sha256:y", &err), -ENOENT);
	assert_non_null(strstr(kiln_error_msg(err), "sha256:y"));
	kiln_cache_free(c);
}

struct iter_state {
	struct kiln_cache *c;
	char keys[8][64];
	int64_t last_used[8];
	size_t n;
};

static int collect(const struct kiln_cache_record *r, void *ud)
{
	struct iter_state *s = ud;

	assert_true(s->n < 8);
	snprintf(s->keys[s->n], sizeof(s->keys[0]), "%s", r->key);
	s->last_used[s->n++] = r->last_used;
	return 0;
}

/* A prune pass: deleting from inside the callback must not deadlock. */
static int delete_all(const struct kiln_cache_record *r, void *ud)
{
	struct iter_state *s = ud;

	s->n++;
	return kiln_cache_delete(s->c, r->key, NULL);
}

static int stop_at_two(const struct kiln_cache_record *r, void *ud)
{
	struct iter_state *s = ud;

	return ++s->n == 2 ? 42 : 0;
}

static void test_foreach_order(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = open_ok(f->db);
	struct iter_state s = { .c = c };

	put_ok(c, 1, "sha256:k1", NULL);
	put_ok(c, 2, "sha256:k2", "sha256:k2b");
	put_ok(c, 3, "sha256:k3", NULL);
	sql_exec(f->db, "UPDATE results SET last_used = 300 WHERE duration_ms = 7;"
			"UPDATE results SET last_used = 100 WHERE duration_ms = 14;"
			"UPDATE results SET last_used = 200 WHERE duration_ms = 21;");
	assert_int_equal(kiln_cache_foreach(c, collect, &s, NULL), 0);
	assert_int_equal(s.n, 4);
	assert_string_equal(s.keys[0], "sha256:k2");
	assert_string_equal(s.keys[1], "sha256:k2b");
	assert_string_equal(s.keys[2], "sha256:k3");
	assert_string_equal(s.keys[3], "sha256:k1");
	assert_int_equal(s.last_used[0], 100);
	assert_int_equal(s.last_used[3], 300);

	s.n = 0;
	assert_int_equal(kiln_cache_foreach(c, stop_at_two, &s, NULL), 42);
	s.n = 0;
	assert_int_equal(kiln_cache_foreach(c, delete_all, &s, NULL), 0);
	assert_int_equal(s.n, 4);
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM results"), 0);
	kiln_cache_free(c);
}

static void put_duration(struct kiln_cache *c, const char *op,
			 const char *key, uint64_t ms)
{
	struct kiln_cache_record rec = { .op = (char *)op, .duration_ms = ms };
	const char *keys[] = { key };

	assert_int_equal(kiln_cache_put(c, keys, 1, &rec, NULL), 0);
}

static void test_estimate_median(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = open_ok(f->db);
	uint64_t ms = 0;

	assert_int_equal(kiln_cache_estimate(c, "sha256:op", &ms), -ENOENT);
	put_duration(c, "sha256:op", "sha256:1", 10);
	put_duration(c, "sha256:op", "sha256:2", 1000);
	put_duration(c, "sha256:op", "sha256:3", 20);
	put_duration(c, "sha256:other", "sha256:4", 5);
	assert_int_equal(kiln_cache_estimate(c, "sha256:op", &ms), 0);
	assert_int_equal(ms, 20);
	put_duration(c, "sha256:op", "sha256:5", 40);
	assert_int_equal(kiln_cache_estimate(c, "sha256:op", &ms), 0);
	assert_int_equal(ms, 30); /* (20 + 40) / 2 */
	assert_int_equal(kiln_cache_estimate(c, "sha256:other", &ms), 0);
	assert_int_equal(ms, 5);
	kiln_cache_free(c);
}

static void test_reopen_keeps_data(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = open_ok(f->db);

	put_ok(c, 9, "sha256:p", "sha256:q");
	kiln_cache_free(c);
	c = open_ok(f->db);
	get_expect(c, "sha256:p", 9);
	get_expect(c, "sha256:q", 9);
	assert_int_equal(sql_int(f->db, "PRAGMA user_version"), 3);
	assert_int_equal(kiln_cache_sync(c, NULL), 0);
	kiln_cache_free(c);
}

/*
 * An index of schema 1 (before results.emulated and statcache.xattrs) is
 * migrated on open: its records read back as made natively, new ones keep
 * the flag.
 */
static void test_migrate_v1(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = open_ok(f->db);
	struct kiln_cache_record got;

	put_ok(c, 1, "sha256:old", NULL); /* 1 % 5 == 1: emulated */
	kiln_cache_free(c);
	/* What schema 1 was: no results.emulated, no statcache.xattrs. */
	sql_exec(f->db, "ALTER TABLE results DROP COLUMN emulated");
	sql_exec(f->db, "ALTER TABLE statcache DROP COLUMN xattrs");
	sql_exec(f->db, "PRAGMA user_version = 1");
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM pragma_table_info('results')"
				  " WHERE name = 'emulated'"), 0);
	c = open_ok(f->db);
	assert_int_equal(sql_int(f->db, "PRAGMA user_version"), 3);
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM pragma_table_info('statcache')"
				  " WHERE name = 'xattrs'"), 1);
	assert_int_equal(kiln_cache_get(c, "sha256:old", &got, NULL), 0);
	assert_false(got.emulated); /* schema 1 did not know */
	assert_int_equal(got.size, 100);
	kiln_cache_record_release(&got);
	put_ok(c, 6, "sha256:new", NULL); /* 6 % 5 == 1: emulated */
	get_expect(c, "sha256:new", 6);
	kiln_cache_free(c);
}

static void fill_stat(struct stat *st, int64_t mtime)
{
	memset(st, 0, sizeof(*st));
	st->st_dev = 7;
	st->st_ino = 1234;
	st->st_size = 99;
	st->st_mtim.tv_sec = mtime;
	st->st_ctim.tv_sec = mtime;
	st->st_ctim.tv_nsec = 5;
}

static void test_stat_cache(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = open_ok(f->db);
	struct kiln_stat_snapshot *snap = NULL;
	struct kiln_digest d, got;
	struct stat st;
	int xattrs = 9;

	kiln_digest_buf("x", 1, &d);
	fill_stat(&st, 1000);
	assert_int_equal(kiln_cache_stat_get(c, "/ctx", "a/b", &st, &got, NULL), -ENOENT);
	assert_int_equal(kiln_cache_begin(c), 0);
	assert_int_equal(kiln_cache_stat_put(c, "/ctx", "a/b", &st, &d, 0), 0);
	assert_int_equal(kiln_cache_stat_put(c, "/ctx", "a/c", &st, &d, 1), 0);
	/* Buffered until commit. */
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM statcache"), 0);
	assert_int_equal(kiln_cache_commit(c), 0);
	assert_int_equal(kiln_cache_stat_get(c, "/ctx", "a/b", &st, &got, &xattrs), 0);
	assert_true(kiln_digest_eq(&d, &got));
	assert_int_equal(xattrs, 0);
	assert_int_equal(kiln_cache_stat_get(c, "/ctx", "a/c", &st, &got, &xattrs), 0);
	assert_int_equal(xattrs, 1);
	assert_int_equal(kiln_cache_stat_get(c, "/other", "a/b", &st, &got, NULL), -ENOENT);
	/* The scope at once: the same answers from memory. */
	assert_int_equal(kiln_cache_stat_snapshot(c, "/ctx", 10, &snap, NULL), 0);
	assert_int_equal(kiln_stat_snapshot_get(snap, "a/c", &st, &got, &xattrs), 0);
	assert_int_equal(xattrs, 1);
	assert_int_equal(kiln_stat_snapshot_get(snap, "a/b", &st, &got, &xattrs), 0);
	assert_int_equal(xattrs, 0);
	assert_int_equal(kiln_stat_snapshot_get(snap, "a/d", &st, &got, NULL), -ENOENT);
	st.st_ctim.tv_nsec = 6;
	assert_int_equal(kiln_stat_snapshot_get(snap, "a/b", &st, &got, NULL), -ENOENT);
	kiln_stat_snapshot_free(snap);
	assert_int_equal(kiln_cache_stat_snapshot(c, "/ctx", 1, &snap, NULL), -E2BIG);
	assert_int_equal(kiln_cache_stat_get(c, "/ctx", "a/b", &st, &got, NULL), -ENOENT);
	fill_stat(&st, 1000);
	st.st_size = 100;
	assert_int_equal(kiln_cache_stat_get(c, "/ctx", "a/b", &st, &got, NULL), -ENOENT);
	assert_int_equal(kiln_cache_commit(c), -EINVAL); /* unbalanced */
	/* Forgotten at once (kiln prune removed blobs). */
	fill_stat(&st, 1000);
	assert_int_equal(kiln_cache_stat_clear(c, NULL), 0);
	assert_int_equal(kiln_cache_stat_get(c, "/ctx", "a/b", &st, &got, NULL), -ENOENT);
	kiln_cache_free(c);
}

/* Every fd the index holds on its files is close-on-exec. */
static void test_fds_cloexec(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = open_ok(f->db);
	int fd, seen = 0;

	put_ok(c, 1, "sha256:fd", NULL);
	for (fd = 0; fd < 1024; fd++) {
		char link[64], target[4096];
		ssize_t n;
		int flags;

		snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
		n = readlink(link, target, sizeof(target) - 1);
		if (n < 0)
			continue;
		target[n] = '\0';
		if (strncmp(target, f->dir, strlen(f->dir)))
			continue;
		flags = fcntl(fd, F_GETFD);
		assert_true(flags & FD_CLOEXEC);
		seen++;
	}
	assert_true(seen >= 2); /* the database and its WAL */
	kiln_cache_free(c);
}

static void test_corrupt_db(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = NULL;
	_cleanup_error_ struct kiln_error *err = NULL;
	char garbage[8192];

	memset(garbage, 'x', sizeof(garbage));
	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, f->db, garbage,
						   sizeof(garbage), 0644, false),
			 0);
	assert_true(kiln_cache_open(f->db, &c, &err) < 0);
	assert_null(c);
	assert_non_null(err);
	assert_non_null(strstr(kiln_error_msg(err), f->db));
	print_message("corrupt index: %s\n", kiln_error_msg(err));
}

static void test_unopenable_path(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c = NULL;
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *path = xasprintf("%s/missing/dir/index.db", f->dir);

	assert_true(kiln_cache_open(path, &c, &err) < 0);
	assert_non_null(strstr(kiln_error_msg(err), path));
}

/* The child: put record after record, reporting each committed one. */
_noreturn_ static void writer_child(const char *db, int wfd)
{
	struct kiln_cache *c = NULL;
	unsigned i;

	if (kiln_cache_open(db, &c, NULL) < 0)
		_exit(2);
	for (i = 0; i < 1000000; i++) {
		char *a = key_for(i, 'a'), *b = key_for(i, 'b');

		put_ok(c, i, a, b);
		free(a);
		free(b);
		if (write(wfd, &i, sizeof(i)) != sizeof(i))
			_exit(3);
	}
	_exit(0);
}

static void check_after_kill(struct kiln_cache *c, unsigned committed,
			     unsigned *found)
{
	unsigned i;

	*found = 0;
	for (i = 0; i < committed + 200; i++) {
		_cleanup_free_ char *a = key_for(i, 'a'), *b = key_for(i, 'b');
		struct kiln_cache_record r;
		int ra = kiln_cache_get(c, a, &r, NULL);

		if (ra == 0) {
			kiln_cache_record_release(&r);
			get_expect(c, a, i);
			get_expect(c, b, i); /* both keys or neither */
			(*found)++;
		} else {
			assert_int_equal(ra, -ENOENT);
			assert_true(i > committed);
			get_absent(c, b);
		}
	}
}

static void test_kill9_mid_write(void **state)
{
	struct fixture *f = *state;
	struct kiln_cache *c;
	unsigned last = 0, found;
	int pfd[2], status;
	pid_t pid;

	assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(pfd[0]);
		writer_child(f->db, pfd[1]);
	}
	close(pfd[1]);
	while (last < 300)
		assert_int_equal(read(pfd[0], &last, sizeof(last)), sizeof(last));
	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	while (read(pfd[0], &last, sizeof(last)) == sizeof(last))
		;
	close(pfd[0]);

	c = open_ok(f->db);
	check_after_kill(c, last, &found);
	assert_true(found >= last + 1);
	print_message("killed after %u commits; %u records found\n", last + 1,
		      found);
	kiln_cache_free(c);
	/* Checked after the index reopened (and recovered) the WAL. */
	{
		sqlite3 *h = NULL;
		sqlite3_stmt *st = NULL;

		assert_int_equal(sqlite3_open_v2(f->db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
		assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
		assert_int_equal(sqlite3_step(st), SQLITE_ROW);
		assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
		sqlite3_finalize(st);
		sqlite3_close(h);
	}
	assert_int_equal(sql_int(f->db, "SELECT count(*) FROM results r WHERE NOT EXISTS (SELECT 1 FROM keys k WHERE k.result_id = r.id)"), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_roundtrip_two_keys, setup, teardown),
		cmocka_unit_test_setup_teardown(test_migrate_v1, setup, teardown),
		cmocka_unit_test_setup_teardown(test_alias, setup, teardown),
		cmocka_unit_test_setup_teardown(test_alias_many, setup, teardown),
		cmocka_unit_test_setup_teardown(test_touch_flush, setup, teardown),
		cmocka_unit_test(test_meta_blobs),
		cmocka_unit_test_setup_teardown(test_replace, setup, teardown),
		cmocka_unit_test_setup_teardown(test_delete, setup, teardown),
		cmocka_unit_test_setup_teardown(test_foreach_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_estimate_median, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_keeps_data, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stat_cache, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fds_cloexec, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_db, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unopenable_path, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kill9_mid_write, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
