#include "cas/digest-set.h"

#include <string.h>

#include "basic/alloc.h"

/*
 * Linear probing; nothing is ever removed, so no tombstones. Digests are
 * uniform already, so their first bytes are the hash.
 */
#define SET_MIN_CAP 64

struct kiln_digest_set *kiln_digest_set_new(void)
{
	return xcalloc(1, sizeof(struct kiln_digest_set));
}

void kiln_digest_set_release(struct kiln_digest_set *s)
{
	free(s->slots);
	free(s->vals);
	memset(s, 0, sizeof(*s));
}

void kiln_digest_set_free(struct kiln_digest_set *s)
{
	if (!s)
		return;
	kiln_digest_set_release(s);
	free(s);
}

/* Index of the slot holding d, or of the empty slot where it would go. */
static size_t set_slot(const struct kiln_digest_set *s, const struct kiln_digest *d)
{
	size_t mask = s->cap - 1, i;
	uint64_t h;

	memcpy(&h, d->bytes, sizeof(h));
	for (i = (size_t)(h ^ d->algo) & mask;
	     s->slots[i].algo != KILN_DIGEST_NONE && !kiln_digest_eq(&s->slots[i], d);
	     i = (i + 1) & mask)
		;
	return i;
}

static void set_grow(struct kiln_digest_set *s)
{
	struct kiln_digest_set old = *s;
	size_t i, k;

	s->cap = old.cap ? old.cap * 2 : SET_MIN_CAP;
	s->slots = xcalloc(s->cap, sizeof(*s->slots));
	s->vals = old.vals ? xcalloc(s->cap, sizeof(*s->vals)) : NULL;
	for (i = 0; i < old.cap; i++) {
		if (old.slots[i].algo == KILN_DIGEST_NONE)
			continue;
		k = set_slot(s, &old.slots[i]);
		s->slots[k] = old.slots[i];
		if (old.vals)
			s->vals[k] = old.vals[i];
	}
	free(old.slots);
	free(old.vals);
}

/* Insert d if absent; the index of its slot via *slot. */
static bool set_insert(struct kiln_digest_set *s, const struct kiln_digest *d, size_t *slot)
{
	size_t i = 0;

	if (!kiln_digest_is_set(d))
		return false;
	/* A digest present already moves nothing: value pointers stay. */
	if (s->cap) {
		i = set_slot(s, d);
		*slot = i;
		if (s->slots[i].algo != KILN_DIGEST_NONE)
			return false;
	}
	/* Keep the load factor under 1/2 so probes stay short. */
	if ((s->n + 1) * 2 > s->cap) {
		set_grow(s);
		i = set_slot(s, d);
		*slot = i;
	}
	s->slots[i] = *d;
	if (s->vals)
		s->vals[i] = 0;
	s->n++;
	return true;
}

bool kiln_digest_set_add(struct kiln_digest_set *s, const struct kiln_digest *d)
{
	size_t i;

	return set_insert(s, d, &i);
}

bool kiln_digest_set_put(struct kiln_digest_set *s, const struct kiln_digest *d,
			 uint64_t v)
{
	size_t i;

	if (!s->vals && s->cap)
		s->vals = xcalloc(s->cap, sizeof(*s->vals));
	else if (!s->vals)
		s->vals = xcalloc(1, sizeof(*s->vals)); /* set_grow sizes it */
	if (!set_insert(s, d, &i))
		return false;
	s->vals[i] = v;
	return true;
}

bool kiln_digest_set_has(const struct kiln_digest_set *s, const struct kiln_digest *d)
{
	return s->cap && kiln_digest_is_set(d) &&
	       s->slots[set_slot(s, d)].algo != KILN_DIGEST_NONE;
}

uint64_t *kiln_digest_set_value(const struct kiln_digest_set *s,
				const struct kiln_digest *d)
{
	if (!s->vals || !kiln_digest_set_has(s, d))
		return NULL;
	return &s->vals[set_slot(s, d)];
}

size_t kiln_digest_set_size(const struct kiln_digest_set *s)
{
	return s->n;
}
