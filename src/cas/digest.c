#include "cas/digest.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "basic/alloc.h"
#include "basic/macro.h"

/* Large reads keep per-syscall overhead well under the hashing cost. */
#define DIGEST_FD_BUF (1u << 20)

/*
 * A threaded hasher's pipe: the caller copies data into a ring of chunks
 * and goes on (receiving, writing); a thread of the hasher's own hashes
 * the chunks in order. filled and hashed count chunks; the caller fills
 * slot filled % PIPE_DEPTH, which is free while filled - hashed < depth.
 */
#define PIPE_CHUNK (1u << 20)
#define PIPE_DEPTH 8u

struct hash_pipe {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	char *buf[PIPE_DEPTH];
	size_t len[PIPE_DEPTH];
	uint64_t filled, hashed;
	size_t cur; /* bytes in the slot being filled (caller's thread only) */
	bool stop;
};

struct kiln_hasher {
	EVP_MD_CTX *ctx;
	enum kiln_digest_algo algo;
	struct hash_pipe *pipe; /* threaded hashers only */
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

/*
 * SHA-256 fetched from the provider once: sha256() looks it up on
 * every init, which costs more than hashing a cache key.
 */
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256_md;

static void sha256_fetch(void)
{
	sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (!sha256_md)
		abort();
}

static const EVP_MD *sha256(void)
{
	pthread_once(&sha256_once, sha256_fetch);
	return sha256_md;
}

struct kiln_hasher *kiln_hasher_new(enum kiln_digest_algo algo)
{
	struct kiln_hasher *h;

	if (algo != KILN_DIGEST_SHA256)
		return NULL;
	h = xcalloc(1, sizeof(*h));
	h->algo = algo;
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx || EVP_DigestInit_ex(h->ctx, sha256(), NULL) != 1)
		abort(); /* only fails on out of memory */
	return h;
}

static void *pipe_main(void *ud)
{
	struct kiln_hasher *h = ud;
	struct hash_pipe *p = h->pipe;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		size_t i;

		while (p->hashed == p->filled && !p->stop)
			pthread_cond_wait(&p->cond, &p->lock);
		if (p->hashed == p->filled)
			break; /* stopped, nothing left */
		i = p->hashed % PIPE_DEPTH;
		pthread_mutex_unlock(&p->lock);
		if (EVP_DigestUpdate(h->ctx, p->buf[i], p->len[i]) != 1)
			abort();
		pthread_mutex_lock(&p->lock);
		p->hashed++;
		pthread_cond_broadcast(&p->cond);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

struct kiln_hasher *kiln_hasher_new_threaded(enum kiln_digest_algo algo)
{
	struct kiln_hasher *h = kiln_hasher_new(algo);
	struct hash_pipe *p;
	size_t i;

	if (!h)
		return NULL;
	p = h->pipe = xcalloc(1, sizeof(*p));
	for (i = 0; i < PIPE_DEPTH; i++)
		p->buf[i] = xmalloc(PIPE_CHUNK);
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	if (pthread_create(&p->thread, NULL, pipe_main, h) != 0)
		abort(); /* only without memory */
	return h;
}

/* Hand the slot being filled to the hashing thread; wait for a free one. */
static void pipe_hand_over(struct hash_pipe *p)
{
	pthread_mutex_lock(&p->lock);
	p->len[p->filled % PIPE_DEPTH] = p->cur;
	p->filled++;
	p->cur = 0;
	pthread_cond_broadcast(&p->cond);
	while (p->filled - p->hashed >= PIPE_DEPTH)
		pthread_cond_wait(&p->cond, &p->lock);
	pthread_mutex_unlock(&p->lock);
}

void kiln_hasher_update(struct kiln_hasher *h, const void *data, size_t len)
{
	struct hash_pipe *p = h->pipe;
	const char *d = data;

	if (!p) {
		if (len && EVP_DigestUpdate(h->ctx, data, len) != 1)
			abort();
		return;
	}
	while (len > 0) {
		size_t n = len < PIPE_CHUNK - p->cur ? len : PIPE_CHUNK - p->cur;

		memcpy(p->buf[p->filled % PIPE_DEPTH] + p->cur, d, n);
		p->cur += n;
		d += n;
		len -= n;
		if (p->cur == PIPE_CHUNK)
			pipe_hand_over(p);
	}
}

/* Everything handed over is hashed (the context is the caller's again). */
static void pipe_drain(struct hash_pipe *p)
{
	if (p->cur > 0)
		pipe_hand_over(p);
	pthread_mutex_lock(&p->lock);
	while (p->hashed != p->filled)
		pthread_cond_wait(&p->cond, &p->lock);
	pthread_mutex_unlock(&p->lock);
}

void kiln_hasher_final(struct kiln_hasher *h, struct kiln_digest *out)
{
	unsigned int n = 0;

	if (h->pipe)
		pipe_drain(h->pipe);
	memset(out, 0, sizeof(*out));
	if (EVP_DigestFinal_ex(h->ctx, out->bytes, &n) != 1 || n != 32 ||
	    EVP_DigestInit_ex(h->ctx, sha256(), NULL) != 1)
		abort();
	out->algo = KILN_DIGEST_SHA256;
}

void kiln_hasher_free(struct kiln_hasher *h)
{
	if (!h)
		return;
	if (h->pipe) {
		struct hash_pipe *p = h->pipe;
		size_t i;

		pthread_mutex_lock(&p->lock);
		p->stop = true;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->lock);
		pthread_join(p->thread, NULL);
		for (i = 0; i < PIPE_DEPTH; i++)
			free(p->buf[i]);
		pthread_cond_destroy(&p->cond);
		pthread_mutex_destroy(&p->lock);
		free(p);
	}
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

void kiln_digest_buf(const void *data, size_t len, struct kiln_digest *out)
{
	unsigned int n = 0;

	memset(out, 0, sizeof(*out));
	if (EVP_Digest(data, len, out->bytes, &n, sha256(), NULL) != 1)
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
