/*
 * A set of digests (open addressing), optionally with a 64-bit value per
 * digest. A zero-initialized struct is an empty set: embed it, or use
 * kiln_digest_set_new/free for one on the heap.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cas/digest.h"

struct kiln_digest_set {
	struct kiln_digest *slots; /* algo NONE = empty slot */
	uint64_t *vals;            /* allocated by the first put() */
	size_t cap;                /* power of two, or 0 */
	size_t n;
};

struct kiln_digest_set *kiln_digest_set_new(void);
void kiln_digest_set_free(struct kiln_digest_set *s);
/* Free the contents of an embedded set; it is empty again afterwards. */
void kiln_digest_set_release(struct kiln_digest_set *s);

/* Returns true if d was newly added (an unset digest is never added). */
bool kiln_digest_set_add(struct kiln_digest_set *s, const struct kiln_digest *d);
/* Like add, with value v for d when it is new. */
bool kiln_digest_set_put(struct kiln_digest_set *s, const struct kiln_digest *d,
			 uint64_t v);
bool kiln_digest_set_has(const struct kiln_digest_set *s,
			 const struct kiln_digest *d);
/*
 * Pointer to d's value, or NULL when d is absent (or nothing was put). It
 * stays valid until a digest is added: adding one may move every value.
 */
uint64_t *kiln_digest_set_value(const struct kiln_digest_set *s,
				const struct kiln_digest *d);
size_t kiln_digest_set_size(const struct kiln_digest_set *s);
