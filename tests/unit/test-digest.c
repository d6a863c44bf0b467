/* Unit tests for cas/digest: known vectors, parsing, fd hashing. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cas/digest-set.h"
#include "cas/digest.h"

#define EMPTY_SHA "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define ABC_SHA "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

static void test_vectors(void **state)
{
	char buf[KILN_DIGEST_STRLEN];
	struct kiln_digest d;

	kiln_digest_buf("", 0, &d);
	assert_string_equal(kiln_digest_fmt(&d, buf), EMPTY_SHA);
	kiln_digest_buf("abc", 3, &d);
	assert_string_equal(kiln_digest_fmt(&d, buf), ABC_SHA);
	assert_string_equal(kiln_digest_hex(&d, buf), &ABC_SHA[7]); /* without "sha256:" */
}

static void test_hasher_incremental(void **state)
{
	struct kiln_hasher *h = kiln_hasher_new(KILN_DIGEST_SHA256);
	struct kiln_digest a, b;

	assert_non_null(h);
	kiln_hasher_update(h, "a", 1);
	kiln_hasher_update(h, "bc", 2);
	kiln_hasher_final(h, &a);
	assert_string_equal(KILN_DIGEST_STR(&a), ABC_SHA);
	/* Reusable after final. */
	kiln_hasher_final(h, &b);
	assert_string_equal(KILN_DIGEST_STR(&b), EMPTY_SHA);
	kiln_hasher_free(h);
	assert_null(kiln_hasher_new(KILN_DIGEST_NONE));
}

/*
 * The threaded hasher gives the same digests as the plain one, whatever the
 * sizes and the way the data is cut, across chunk and ring boundaries, and
 * can be reused after final and freed mid-stream.
 */
static void test_hasher_threaded(void **state)
{
	static const size_t sizes[] = { 0, 1, (1u << 20) - 1, 1u << 20, (1u << 20) + 1,
					(9u << 20) + 7, 20u << 20 };
	size_t total = 20u << 20, i, k;
	unsigned char *data = malloc(total);
	struct kiln_hasher *h = kiln_hasher_new_threaded(KILN_DIGEST_SHA256);
	struct kiln_digest want, got;

	assert_non_null(data);
	for (i = 0; i < total; i++)
		data[i] = (unsigned char)(i * 2654435761u >> 13);
	for (k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		size_t off = 0, piece = 1;

		kiln_digest_buf(data, sizes[k], &want);
		while (off < sizes[k]) { /* pieces of growing, odd sizes */
			size_t n = piece < sizes[k] - off ? piece : sizes[k] - off;

			kiln_hasher_update(h, data + off, n);
			off += n;
			piece = piece * 3 + 17;
		}
		kiln_hasher_final(h, &got);
		assert_true(kiln_digest_eq(&want, &got));
	}
	/* Freed with data in flight: no leak, no hang. */
	kiln_hasher_update(h, data, 5u << 20);
	kiln_hasher_free(h);
	free(data);
}

static void test_parse_roundtrip(void **state)
{
	struct kiln_digest d, e;

	assert_int_equal(kiln_digest_parse(ABC_SHA, &d), 0);
	assert_int_equal(d.algo, KILN_DIGEST_SHA256);
	assert_string_equal(KILN_DIGEST_STR(&d), ABC_SHA);
	kiln_digest_buf("abc", 3, &e);
	assert_true(kiln_digest_eq(&d, &e));
	kiln_digest_buf("abd", 3, &e);
	assert_false(kiln_digest_eq(&d, &e));
}

static void test_parse_rejects(void **state)
{
	static const char *bad[] = {
		"",
		"sha256:",
		"sha256",
		"sha512:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
		"SHA256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
		"sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
		"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a",
		"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad0",
		"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ag",
		"sha256: a7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
		"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
	};
	struct kiln_digest d;
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(kiln_digest_parse(bad[i], &d), -EINVAL);
	assert_int_equal(kiln_digest_parse(NULL, &d), -EINVAL);
}

static void test_digest_fd(void **state)
{
	char tmpl[] = "/tmp/kiln-digest-XXXXXX";
	size_t n = (3u << 20) + 17, i; /* several buffers plus a tail */
	_cleanup_free_ char *data = xmalloc(n);
	_cleanup_free_ char *path = NULL;
	struct kiln_digest a, b;
	uint64_t size = 0;
	int fd;

	assert_non_null(mkdtemp(tmpl));
	path = kiln_path_join(tmpl, "f");
	for (i = 0; i < n; i++)
		data[i] = (char)(i * 31 + (i >> 9));
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(kiln_write_full(fd, data, n), 0);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	assert_int_equal(kiln_digest_fd(fd, &a, &size), 0);
	assert_int_equal(size, n);
	kiln_digest_buf(data, n, &b);
	assert_true(kiln_digest_eq(&a, &b));
	/* From the current offset. */
	assert_int_equal(lseek(fd, 1, SEEK_SET), 1);
	assert_int_equal(kiln_digest_fd(fd, &a, &size), 0);
	assert_int_equal(size, n - 1);
	kiln_digest_buf(data + 1, n - 1, &b);
	assert_true(kiln_digest_eq(&a, &b));
	close(fd);
	assert_int_equal(kiln_digest_fd(fd, &a, NULL), -EBADF);
	assert_int_equal(kiln_rm_rf(tmpl), 0);
}

/*
 * Putting a digest that is present already moves nothing, even when the
 * set is full enough that a new one would grow it: a value pointer taken
 * before stays valid.
 */
static void test_set_put_present(void **state)
{
	struct kiln_digest_set s = { 0 };
	struct kiln_digest d, first;
	uint64_t *v, i;

	(void)state;
	for (i = 0; i < 1000; i++) {
		kiln_digest_buf(&i, sizeof(i), &d);
		if (i == 0)
			first = d;
		assert_true(kiln_digest_set_put(&s, &d, i + 7));
		/* At the growth threshold: the next new digest would grow. */
		if ((s.n + 1) * 2 <= s.cap)
			continue;
		v = kiln_digest_set_value(&s, &first);
		assert_non_null(v);
		assert_false(kiln_digest_set_put(&s, &first, 99));
		assert_false(kiln_digest_set_add(&s, &d));
		assert_ptr_equal(kiln_digest_set_value(&s, &first), v);
		assert_int_equal(*v, 7);
	}
	assert_int_equal(kiln_digest_set_size(&s), 1000);
	for (i = 0; i < 1000; i++) {
		kiln_digest_buf(&i, sizeof(i), &d);
		assert_int_equal(*kiln_digest_set_value(&s, &d), i + 7);
	}
	kiln_digest_set_release(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vectors),
		cmocka_unit_test(test_hasher_incremental),
		cmocka_unit_test(test_hasher_threaded),
		cmocka_unit_test(test_parse_roundtrip),
		cmocka_unit_test(test_parse_rejects),
		cmocka_unit_test(test_digest_fd),
		cmocka_unit_test(test_set_put_present),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
