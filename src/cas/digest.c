#include "cas/digest.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "basic/alloc.h"
#include "basic/macro.h"

/* Large reads keep per-syscall overhead well under the hashing cost. */
#define DIGEST_FD_BUF (1u << 20)

struct kiln_hasher {
	EVP_MD_CTX *ctx;
	enum kiln_digest_algo algo;
};

static const char hexdigits[] = "0123456789abcdef";

static int unhex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int kiln_digest_parse(const char *s, struct kiln_digest *out)
{
	static const char prefix[] = "sha256:";
	size_t i;

	if (!s || strncmp(s, prefix, sizeof(prefix) - 1) != 0)
		return -EINVAL;
	s += sizeof(prefix) - 1;
	if (strlen(s) != 64)
		return -EINVAL;
	for (i = 0; i < 32; i++) {
		int hi = unhex(s[2 * i]), lo = unhex(s[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out->bytes[i] = (uint8_t)(hi << 4 | lo);
	}
	out->algo = KILN_DIGEST_SHA256;
	return 0;
}

const char *kiln_digest_hex(const struct kiln_digest *d, char *buf)
{
	size_t i;

	if (d->algo != KILN_DIGEST_SHA256) {
		buf[0] = '\0';
		return buf;
	}
	for (i = 0; i < 32; i++) {
		buf[2 * i] = hexdigits[d->bytes[i] >> 4];
		buf[2 * i + 1] = hexdigits[d->bytes[i] & 15];
	}
	buf[64] = '\0';
	return buf;
}

const char *kiln_digest_fmt(const struct kiln_digest *d, char *buf)
{
	if (d->algo != KILN_DIGEST_SHA256) {
		memcpy(buf, "none", 5);
		return buf;
	}
	memcpy(buf, "sha256:", 7);
	kiln_digest_hex(d, buf + 7);
	return buf;
}

bool kiln_digest_eq(const struct kiln_digest *a, const struct kiln_digest *b)
{
	if (a->algo != b->algo)
		return false;
	if (a->algo == KILN_DIGEST_NONE)
		return true;
	return memcmp(a->bytes, b->bytes, 32) == 0;
}

struct kiln_hasher *kiln_hasher_new(enum kiln_digest_algo algo)
{
	struct kiln_hasher *h;

	if (algo != KILN_DIGEST_SHA256)
		return NULL;
	h = xcalloc(1, sizeof(*h));
	h->algo = algo;
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)
		abort(); /* only fails on out of memory */
	return h;
}

void kiln_hasher_update(struct kiln_hasher *h, const void *data, size_t len)
{
	if (len && EVP_DigestUpdate(h->ctx, data, len) != 1)
		abort();
}

void kiln_hasher_final(struct kiln_hasher *h, struct kiln_digest *out)
{
	unsigned int n = 0;

	memset(out, 0, sizeof(*out));
	if (EVP_DigestFinal_ex(h->ctx, out->bytes, &n) != 1 || n != 32 ||
	    EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)
		abort();
	out->algo = KILN_DIGEST_SHA256;
}

void kiln_hasher_free(struct kiln_hasher *h)
{
	if (!h)
		return;
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

void kiln_digest_buf(const void *data, size_t len, struct kiln_digest *out)
{
	unsigned int n = 0;

	memset(out, 0, sizeof(*out));
	if (EVP_Digest(data, len, out->bytes, &n, EVP_sha256(), NULL) != 1)
		abort();
	out->algo = KILN_DIGEST_SHA256;
}

static ssize_t read_some(int fd, void *buf, size_t n)
{
	ssize_t k;

	do
		k = read(fd, buf, n);
	while (k < 0 && errno == EINTR);
	return k < 0 ? -errno : k;
}

int kiln_digest_fd(int fd, struct kiln_digest *out, uint64_t *size)
{
	_cleanup_free_ uint8_t *buf = xmalloc(DIGEST_FD_BUF);
	struct kiln_hasher *h = kiln_hasher_new(KILN_DIGEST_SHA256);
	uint64_t total = 0;
	ssize_t k;

	(void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	while ((k = read_some(fd, buf, DIGEST_FD_BUF)) > 0) {
		kiln_hasher_update(h, buf, (size_t)k);
		total += (uint64_t)k;
	}
	if (k == 0) {
		kiln_hasher_final(h, out);
		if (size)
			*size = total;
	}
	kiln_hasher_free(h);
	return k < 0 ? (int)k : 0;
}
