/*
 * Content digests in OCI spelling ("sha256:<64 hex>"). The code is
 * hash-agile through the algo field; SHA-256 is computed with OpenSSL EVP
 * (SHA-NI where the CPU has it).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum kiln_digest_algo {
	KILN_DIGEST_NONE = 0,
	KILN_DIGEST_SHA256 = 1,
};

#define KILN_DIGEST_MAX_BYTES 32
/* "sha256:" + 64 hex + NUL */
#define KILN_DIGEST_STRLEN 72
#define KILN_DIGEST_HEXLEN 65

struct kiln_digest {
	uint8_t algo; /* enum kiln_digest_algo; NONE means "no digest" */
	uint8_t bytes[KILN_DIGEST_MAX_BYTES];
};

/* Parse "sha256:<64 lowercase hex>". -EINVAL on anything else. */
int kiln_digest_parse(const char *s, struct kiln_digest *out);

/* Format into buf (KILN_DIGEST_STRLEN bytes) and return buf. */
const char *kiln_digest_fmt(const struct kiln_digest *d, char *buf);
/* Only the hex part (KILN_DIGEST_HEXLEN bytes). */
const char *kiln_digest_hex(const struct kiln_digest *d, char *buf);

/* For printf arguments: a temporary formatted digest. */
#define KILN_DIGEST_STR(d) kiln_digest_fmt((d), (char[KILN_DIGEST_STRLEN]){ 0 })

bool kiln_digest_eq(const struct kiln_digest *a, const struct kiln_digest *b);
static inline bool kiln_digest_is_set(const struct kiln_digest *d)
{
	return d->algo != KILN_DIGEST_NONE;
}

/* Incremental hashing. */
struct kiln_hasher;
struct kiln_hasher *kiln_hasher_new(enum kiln_digest_algo algo);
/*
 * A hasher that hashes on a thread of its own: update() copies the data
 * (1 MiB chunks, 8 in flight) and returns, so a caller that receives and
 * writes a large stream overlaps that with the hash. For streams of
 * megabytes and more; same results as kiln_hasher_new().
 */
struct kiln_hasher *kiln_hasher_new_threaded(enum kiln_digest_algo algo);
void kiln_hasher_update(struct kiln_hasher *h, const void *data, size_t len);
/* Finish into out; the hasher is reset and can be reused. */
void kiln_hasher_final(struct kiln_hasher *h, struct kiln_digest *out);
void kiln_hasher_free(struct kiln_hasher *h);

void kiln_digest_buf(const void *data, size_t len, struct kiln_digest *out);
/*
 * Hash fd from its current offset to EOF; *size gets the byte count (may be
 * NULL). 0 or -errno.
 */
int kiln_digest_fd(int fd, struct kiln_digest *out, uint64_t *size);
