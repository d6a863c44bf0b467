/* Unit tests for cas/store: a real store in a temporary directory. */
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cas/store.h"

struct fixture {
	char dir[64];
	char *storedir;
	struct kiln_store *s;
};

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	struct kiln_store_options o = { .durable = true };

	snprintf(f->dir, sizeof(f->dir), "/tmp/kiln-store-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	f->storedir = kiln_path_join(f->dir, "store");
	if (kiln_store_open(f->storedir, &o, &f->s, NULL) < 0)
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	kiln_store_free(f->s);
	kiln_rm_rf(f->dir);
	free(f->storedir);
	free(f);
	return 0;
}

static char *write_file(const char *dir, const char *name, const char *data)
{
	char *path = kiln_path_join(dir, name);

	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, path, data,
						   strlen(data), 0644, false), 0);
	return path;
}

static int count_entries(const char *dir, const char *sub)
{
	_cleanup_free_ char *path = kiln_path_join(dir, sub);
	DIR *d = opendir(path);
	struct dirent *de;
	int n = 0;

	assert_non_null(d);
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static void test_put_read(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *data = NULL, *path = NULL;
	struct kiln_digest d, e;
	uint64_t size = 0;
	size_t len = 0;

	kiln_digest_buf("hello", 5, &e);
	assert_false(kiln_store_has(f->s, &e));
	assert_int_equal(kiln_store_put_buf(f->s, "hello", 5, &d, NULL), 0);
	assert_true(kiln_digest_eq(&d, &e));
	assert_true(kiln_store_has(f->s, &d));
	assert_int_equal(kiln_store_size(f->s, &d, &size), 0);
	assert_int_equal(size, 5);
	assert_int_equal(kiln_store_read(f->s, &d, 100, &data, &len, NULL), 0);
	assert_int_equal(len, 5);
	assert_memory_equal(data, "hello", 5);
	assert_int_equal(kiln_store_verify(f->s, &d, NULL), 0);
	/* Over the limit. */
	free(TAKE_PTR(data));
	assert_int_equal(kiln_store_read(f->s, &d, 4, &data, &len, NULL), -EFBIG);
	/* Stored where the layout says. */
	path = kiln_store_blob_path(f->s, &d);
	assert_non_null(strstr(path, "/blobs/sha256/"));
	assert_int_equal(access(path, R_OK), 0);
	/* Idempotent. */
	assert_int_equal(kiln_store_put_buf(f->s, "hello", 5, &d, NULL), 0);
	assert_int_equal(kiln_store_remove(f->s, &d), 0);
	assert_false(kiln_store_has(f->s, &d));
	assert_int_equal(kiln_store_size(f->s, &d, &size), -ENOENT);
	assert_int_equal(kiln_store_open_blob(f->s, &d), -ENOENT);
}

static void test_put_fd_expected(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *path = write_file(f->dir, "in", "some content");
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_digest wrong, right, got;
	char wrongs[KILN_DIGEST_STRLEN], rights[KILN_DIGEST_STRLEN];
	uint64_t size = 0;
	int fd;

	kiln_digest_buf("other", 5, &wrong);
	kiln_digest_buf("some content", 12, &right);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(kiln_store_put_fd(f->s, fd, &wrong, &got, &size, &err),
			 -EBADMSG);
	assert_non_null(err);
	assert_non_null(strstr(err->msg, kiln_digest_fmt(&wrong, wrongs)));
	assert_non_null(strstr(err->msg, kiln_digest_fmt(&right, rights)));
	assert_false(kiln_store_has(f->s, &wrong));
	assert_false(kiln_store_has(f->s, &right));
	/* Nothing left behind in tmp/ or blobs/ either. */
	assert_int_equal(count_entries(f->storedir, "tmp"), 0);
	assert_int_equal(count_entries(f->storedir, "blobs/sha256"), 0);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	assert_int_equal(kiln_store_put_fd(f->s, fd, &right, &got, &size, NULL), 0);
	assert_true(kiln_digest_eq(&got, &right));
	assert_int_equal(size, 12);
	close(fd);
}

static void test_adopt(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *p1 = write_file(f->dir, "a1", "adopt me");
	_cleanup_free_ char *p2 = write_file(f->dir, "a2", "adopt me");
	_cleanup_free_ char *blob = NULL;
	struct stat st1, st2, sb;
	struct kiln_digest d, d2;
	uint64_t size = 0;
	int dfd = open(f->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	assert_true(dfd >= 0);
	assert_int_equal(kiln_store_adopt(f->s, dfd, "a1", &d, &size, NULL), 0);
	assert_int_equal(size, 8);
	blob = kiln_store_blob_path(f->s, &d);
	assert_int_equal(stat(p1, &st1), 0);
	assert_int_equal(stat(blob, &sb), 0);
	assert_int_equal(st1.st_ino, sb.st_ino); /* linked, not copied */
	assert_int_equal(st1.st_nlink, 2);
	/* Identical content elsewhere: nothing linked. */
	assert_int_equal(kiln_store_adopt(f->s, dfd, "a2", &d2, NULL, NULL), 0);
	assert_true(kiln_digest_eq(&d, &d2));
	assert_int_equal(stat(p2, &st2), 0);
	assert_int_equal(st2.st_nlink, 1);
	assert_int_equal(stat(blob, &sb), 0);
	assert_int_equal(sb.st_ino, st1.st_ino);
	/* Adopting again is a no-op too. */
	assert_int_equal(kiln_store_adopt(f->s, dfd, "a1", &d2, NULL, NULL), 0);
	assert_int_equal(stat(p1, &st1), 0);
	assert_int_equal(st1.st_nlink, 2);
	/* Not a regular file. */
	assert_int_equal(mkdirat(dfd, "sub", 0755), 0);
	assert_int_equal(kiln_store_adopt(f->s, dfd, "sub", &d2, NULL, NULL), -EINVAL);
	assert_true(kiln_store_adopt(f->s, dfd, "missing", &d2, NULL, NULL) == -ENOENT);
	close(dfd);
}

static void test_corrupt(void **state)
{
	struct fixture *f = *state;
	_cleanup_error_ struct kiln_error *err = NULL, *err2 = NULL;
	_cleanup_free_ char *blob = NULL, *data = NULL;
	char ds[KILN_DIGEST_STRLEN];
	struct kiln_digest d;
	size_t len;
	int fd;

	assert_int_equal(kiln_store_put_buf(f->s, "precious", 8, &d, NULL), 0);
	blob = kiln_store_blob_path(f->s, &d);
	fd = open(blob, O_WRONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, "X", 1, 3), 1);
	close(fd);
	assert_int_equal(kiln_store_verify(f->s, &d, &err), -EBADMSG);
	assert_non_null(strstr(err->msg, kiln_digest_fmt(&d, ds)));
	assert_int_equal(kiln_store_read(f->s, &d, 100, &data, &len, &err2), -EBADMSG);
	assert_non_null(strstr(err2->msg, ds));
}

static void test_stale_tmp(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *tmp = kiln_path_join(f->storedir, "tmp");
	_cleanup_free_ char *stale = NULL, *stale_dir = NULL;
	struct kiln_store *s2 = NULL;

	stale = write_file(tmp, "stale-write", "half a blob");
	stale_dir = kiln_path_join(tmp, "stale-dir");
	assert_int_equal(kiln_mkdir_p(stale_dir, 0755), 0);
	/* Another user holds the store: tmp/ is left alone. */
	assert_int_equal(kiln_store_open(f->storedir, NULL, &s2, NULL), 0);
	assert_int_equal(access(stale, F_OK), 0);
	kiln_store_free(s2);
	/* The only user cleans up. */
	kiln_store_free(f->s);
	f->s = NULL;
	assert_int_equal(kiln_store_open(f->storedir, NULL, &f->s, NULL), 0);
	assert_int_equal(access(stale, F_OK), -1);
	assert_int_equal(access(stale_dir, F_OK), -1);
	assert_int_equal(access(tmp, F_OK), 0);
}

static void test_writer(void **state)
{
	struct fixture *f = *state;
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_store_writer *w = NULL;
	struct kiln_digest d, e, wrong;

	kiln_digest_buf("streamed data", 13, &e);
	assert_int_equal(kiln_store_writer_begin(f->s, &w, NULL), 0);
	assert_int_equal(kiln_store_writer_write(w, "streamed ", 9), 0);
	assert_int_equal(kiln_store_writer_write(w, "data", 4), 0);
	assert_int_equal(kiln_store_writer_commit(w, &e, &d, NULL), 0);
	assert_true(kiln_digest_eq(&d, &e));
	assert_true(kiln_store_has(f->s, &e));

	kiln_digest_buf("nope", 4, &wrong);
	assert_int_equal(kiln_store_writer_begin(f->s, &w, NULL), 0);
	assert_int_equal(kiln_store_writer_write(w, "xyz", 3), 0);
	assert_int_equal(kiln_store_writer_commit(w, &wrong, &d, &err), -EBADMSG);
	assert_false(kiln_store_has(f->s, &wrong));

	assert_int_equal(kiln_store_writer_begin(f->s, &w, NULL), 0);
	assert_int_equal(kiln_store_writer_write(w, "abandoned", 9), 0);
	kiln_store_writer_abort(w);
	kiln_digest_buf("abandoned", 9, &d);
	assert_false(kiln_store_has(f->s, &d));
}

/* Entries in the store's tmp/ directory. */
static int count_tmp(const struct fixture *f)
{
	_cleanup_free_ char *tmp = kiln_path_join(f->storedir, "tmp");
	DIR *d = opendir(tmp);
	struct dirent *de;
	int n = 0;

	assert_non_null(d);
	while ((de = readdir(d)))
		n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
	closedir(d);
	return n;
}

/* Write data into a new writer and commit it into g. */
static int group_put(struct fixture *f, struct kiln_store_group *g,
		     const char *data, const struct kiln_digest *expected,
		     struct kiln_error **err)
{
	struct kiln_store_writer *w = NULL;

	assert_int_equal(kiln_store_writer_begin(f->s, &w, NULL), 0);
	assert_int_equal(kiln_store_writer_write(w, data, strlen(data)), 0);
	return kiln_store_writer_commit_group(w, g, expected, err);
}

static void test_group(void **state)
{
	struct fixture *f = *state;
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_store_group *g = NULL;
	struct kiln_digest a, b, c, wrong;
	_cleanup_free_ char *data = NULL;
	size_t len;

	assert_int_equal(kiln_store_group_new(f->s, &g, NULL), 0);
	kiln_digest_buf("alpha", 5, &a);
	kiln_digest_buf("beta", 4, &b);
	kiln_digest_buf("gamma", 5, &c);
	kiln_digest_buf("other", 5, &wrong);
	/* c is stored meanwhile by someone else: the group's copy is dropped. */
	assert_int_equal(group_put(f, g, "alpha", &a, NULL), 0);
	assert_int_equal(group_put(f, g, "beta", &b, NULL), 0);
	assert_int_equal(group_put(f, g, "gamma", &c, NULL), 0);
	assert_int_equal(kiln_store_put_buf(f->s, "gamma", 5, &c, NULL), 0);
	/* A mismatch is refused at once and leaves no temp file. */
	assert_int_equal(group_put(f, g, "corrupt", &wrong, &err), -EBADMSG);
	assert_non_null(strstr(kiln_error_msg(err), KILN_DIGEST_STR(&wrong)));
	assert_int_equal(count_tmp(f), 3);
	/* Verified, but unnamed until the commit. */
	assert_false(kiln_store_has(f->s, &a));
	assert_false(kiln_store_has(f->s, &b));

	assert_int_equal(kiln_store_group_commit(g, NULL), 0);
	assert_int_equal(count_tmp(f), 0);
	assert_int_equal(kiln_store_read(f->s, &a, 100, &data, &len, NULL), 0);
	assert_int_equal(len, 5);
	assert_memory_equal(data, "alpha", 5);
	assert_int_equal(kiln_store_verify(f->s, &b, NULL), 0);
	assert_int_equal(kiln_store_verify(f->s, &c, NULL), 0);
	assert_false(kiln_store_has(f->s, &wrong));

	/* Freed uncommitted: nothing is named and no temp file stays. */
	kiln_digest_buf("delta", 5, &a);
	assert_int_equal(group_put(f, g, "delta", &a, NULL), 0);
	assert_int_equal(count_tmp(f), 1);
	kiln_store_group_free(g);
	assert_false(kiln_store_has(f->s, &a));
	assert_int_equal(count_tmp(f), 0);
}

struct seen {
	struct kiln_digest want[3];
	int found[3];
	int total;
};

static int count_blob(const struct kiln_digest *d, uint64_t size, void *ud)
{
	struct seen *s = ud;
	int i;

	s->total++;
	for (i = 0; i < 3; i++)
		if (kiln_digest_eq(d, &s->want[i])) {
			s->found[i]++;
			assert_int_equal(size, 3);
		}
	return 0;
}

static int stop_at_first(const struct kiln_digest *d, uint64_t size, void *ud)
{
	(*(int *)ud)++;
	return 42;
}

static void test_foreach(void **state)
{
	struct fixture *f = *state;
	struct seen s = { 0 };
	const char *data[] = { "one", "two", "six" };
	int i, calls = 0;
	_cleanup_free_ char *junk = NULL;
	_cleanup_free_ char *blobs = kiln_path_join(f->storedir, "blobs/sha256");

	for (i = 0; i < 3; i++)
		assert_int_equal(kiln_store_put_buf(f->s, data[i], 3, &s.want[i], NULL), 0);
	junk = write_file(blobs, "not-a-digest", "junk");
	assert_int_equal(kiln_store_foreach(f->s, count_blob, &s), 0);
	assert_int_equal(s.total, 3);
	for (i = 0; i < 3; i++)
		assert_int_equal(s.found[i], 1);
	assert_int_equal(kiln_store_foreach(f->s, stop_at_first, &calls), 42);
	assert_int_equal(calls, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_put_read, setup, teardown),
		cmocka_unit_test_setup_teardown(test_put_fd_expected, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stale_tmp, setup, teardown),
		cmocka_unit_test_setup_teardown(test_writer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_group, setup, teardown),
		cmocka_unit_test_setup_teardown(test_foreach, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
