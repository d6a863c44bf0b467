#include "cas/gc.h"

#include <string.h>

#include "basic/alloc.h"
#include "basic/log.h"
#include "cas/tree.h"

/*
 * Open addressing with linear probing. A slot whose algo is NONE is empty;
 * nothing is ever removed, so no tombstones. Digests are uniform already,
 * so their first bytes are the hash.
 */
struct kiln_digest_set {
	struct kiln_digest *slots;
	size_t cap; /* power of two */
	size_t n;
};

#define SET_MIN_CAP 64

struct kiln_digest_set *kiln_digest_set_new(void)
{
	struct kiln_digest_set *s = xcalloc(1, sizeof(*s));

	s->cap = SET_MIN_CAP;
	s->slots = xcalloc(s->cap, sizeof(*s->slots));
	return s;
}

void kiln_digest_set_free(struct kiln_digest_set *s)
{
	if (!s)
		return;
	free(s->slots);
	free(s);
}

static size_t digest_hash(const struct kiln_digest *d)
{
	uint64_t h;

	memcpy(&h, d->bytes, sizeof(h));
	return (size_t)(h ^ d->algo);
}

static bool digest_same(const struct kiln_digest *a,
			const struct kiln_digest *b)
{
	return a->algo == b->algo && !memcmp(a->bytes, b->bytes, sizeof(a->bytes));
}

/* The slot holding d, or the empty slot where it would go. */
static struct kiln_digest *set_slot(const struct kiln_digest_set *s,
				    const struct kiln_digest *d)
{
	size_t mask = s->cap - 1, i = digest_hash(d) & mask;

	while (s->slots[i].algo != KILN_DIGEST_NONE &&
	       !digest_same(&s->slots[i], d))
		i = (i + 1) & mask;
	return &s->slots[i];
}

static void set_grow(struct kiln_digest_set *s)
{
	struct kiln_digest *old = s->slots;
	size_t i, old_cap = s->cap;

	s->cap *= 2;
	s->slots = xcalloc(s->cap, sizeof(*s->slots));
	for (i = 0; i < old_cap; i++)
		if (old[i].algo != KILN_DIGEST_NONE)
			*set_slot(s, &old[i]) = old[i];
	free(old);
}

bool kiln_digest_set_add(struct kiln_digest_set *s, const struct kiln_digest *d)
{
	struct kiln_digest *slot;

	if (!kiln_digest_is_set(d))
		return false;
	/* Keep the load factor under 1/2 so probes stay short. */
	if ((s->n + 1) * 2 > s->cap)
		set_grow(s);
	slot = set_slot(s, d);
	if (slot->algo != KILN_DIGEST_NONE)
		return false;
	*slot = *d;
	s->n++;
	return true;
}

bool kiln_digest_set_has(const struct kiln_digest_set *s,
			 const struct kiln_digest *d)
{
	if (!kiln_digest_is_set(d))
		return false;
	return set_slot(s, d)->algo != KILN_DIGEST_NONE;
}

size_t kiln_digest_set_size(const struct kiln_digest_set *s)
{
	return s->n;
}

/* ---- mark ---- */

struct mark_ctx {
	struct kiln_store *store;
	struct kiln_digest_set *marked;
	const struct kiln_gc_mark_opts *opts;
	struct kiln_error **err;
	int first; /* first problem's code, 0 when none yet */
	struct kiln_digest empty;
};

static void mark_problem(struct mark_ctx *m, const struct kiln_digest *d,
			 int code, const char *what)
{
	if (code == -ENOENT)
		kiln_error_set(m->err, code, "missing %s %s", what,
			       KILN_DIGEST_STR(d));
	else
		kiln_error_seterrno(m->err, code, "bad %s %s", what,
				    KILN_DIGEST_STR(d));
	if (!m->first)
		m->first = code;
	if (m->opts && m->opts->problem)
		m->opts->problem(d, code, m->opts->ud);
}

static bool is_corrupt(const struct mark_ctx *m, const struct kiln_digest *d)
{
	return m->opts && m->opts->corrupt &&
	       kiln_digest_set_has(m->opts->corrupt, d);
}

/* Problems with data (reported, marking goes on) vs. failures (abort). */
static bool is_data_problem(int code)
{
	return code == -ENOENT || code == -EBADMSG || code == -EINVAL;
}

static int mark_file(struct mark_ctx *m, const struct kiln_digest *d)
{
	if (kiln_digest_set_has(m->marked, d))
		return 0;
	if (is_corrupt(m, d)) {
		mark_problem(m, d, -EBADMSG, "blob");
		return 1;
	}
	if (!kiln_store_has(m->store, d)) {
		mark_problem(m, d, -ENOENT, "blob");
		return 1;
	}
	kiln_digest_set_add(m->marked, d);
	return 0;
}

static int mark_node(struct mark_ctx *m, const struct kiln_digest *d,
		     unsigned depth);

/* Mark what one node lists. <0 failure, >0 something below is missing. */
static int mark_entries(struct mark_ctx *m, const struct kiln_tree *t,
			unsigned depth)
{
	int incomplete = 0;
	size_t i;

	for (i = 0; i < t->n; i++) {
		const struct kiln_tree_entry *e = &t->entries[i];
		int r = 0;

		if (e->type == KILN_ENTRY_FILE)
			r = mark_file(m, &e->digest);
		else if (e->type == KILN_ENTRY_DIR)
			r = mark_node(m, &e->digest, depth + 1);
		if (r < 0)
			return r;
		if (r > 0)
			incomplete = 1;
	}
	return incomplete;
}

/*
 * Post-order: a node joins the set only when everything below it is
 * present, so "marked" means "complete" and a marked subtree is skipped.
 */
static int mark_node(struct mark_ctx *m, const struct kiln_digest *d,
		     unsigned depth)
{
	struct kiln_tree t = KILN_TREE_INIT;
	struct kiln_error *e = NULL;
	int r;

	if (kiln_digest_set_has(m->marked, d))
		return 0;
	/* Nothing below the empty node; it need not even be stored. */
	if (digest_same(d, &m->empty)) {
		kiln_digest_set_add(m->marked, d);
		return 0;
	}
	if (depth > KILN_TREE_MAX_DEPTH)
		return kiln_error_set(m->err, -ELOOP, "tree %s nests too deep",
				      KILN_DIGEST_STR(d));
	if (is_corrupt(m, d)) {
		mark_problem(m, d, -EBADMSG, "tree node");
		return 1;
	}
	r = kiln_tree_get(m->store, d, &t, &e);
	if (r < 0 && !kiln_store_has(m->store, d))
		r = -ENOENT;
	if (r < 0) {
		if (!is_data_problem(r)) {
			kiln_error_set(m->err, r, "tree node %s: %s",
				       KILN_DIGEST_STR(d), kiln_error_msg(e));
			kiln_error_free(e);
			return r;
		}
		log_debug("gc: tree node %s: %s", KILN_DIGEST_STR(d),
			  kiln_error_msg(e));
		kiln_error_free(e);
		mark_problem(m, d, r, "tree node");
		return 1;
	}
	r = mark_entries(m, &t, depth);
	kiln_tree_release(&t);
	if (r == 0)
		kiln_digest_set_add(m->marked, d);
	return r;
}

int kiln_gc_mark_tree_opts(struct kiln_store *s, const struct kiln_digest *root,
			   struct kiln_digest_set *marked,
			   const struct kiln_gc_mark_opts *opts,
			   struct kiln_error **err)
{
	struct mark_ctx m = {
		.store = s, .marked = marked, .opts = opts, .err = err,
	};
	int r;

	kiln_tree_empty_digest(&m.empty);
	r = mark_node(&m, root, 0);
	if (r < 0)
		return r;
	return m.first;
}

int kiln_gc_mark_tree(struct kiln_store *s, const struct kiln_digest *root,
		      struct kiln_digest_set *marked, struct kiln_error **err)
{
	return kiln_gc_mark_tree_opts(s, root, marked, NULL, err);
}

/* ---- sweep ---- */

struct sweep_ctx {
	const struct kiln_digest_set *marked;
	struct kiln_digest *doomed;
	uint64_t *sizes;
	size_t n, alloc, alloc_sizes;
};

static int sweep_collect(const struct kiln_digest *d, uint64_t size, void *ud)
{
	struct sweep_ctx *c = ud;

	if (kiln_digest_set_has(c->marked, d))
		return 0;
	c->doomed = xgrow(c->doomed, &c->alloc, c->n + 1, sizeof(*c->doomed));
	c->sizes = xgrow(c->sizes, &c->alloc_sizes, c->n + 1, sizeof(*c->sizes));
	c->doomed[c->n] = *d;
	c->sizes[c->n] = size;
	c->n++;
	return 0;
}

int kiln_gc_sweep(struct kiln_store *s, const struct kiln_digest_set *marked,
		  uint64_t *removed, uint64_t *freed, struct kiln_error **err)
{
	struct sweep_ctx c = { .marked = marked };
	uint64_t n_removed = 0, n_freed = 0;
	size_t i;
	int r;

	/* Collect first: never unlink under a directory being read. */
	r = kiln_store_foreach(s, sweep_collect, &c);
	if (r < 0) {
		kiln_error_seterrno(err, r, "cannot list blobs in %s",
				    kiln_store_dir(s));
		goto out;
	}
	for (i = 0; i < c.n; i++) {
		int q = kiln_store_remove(s, &c.doomed[i]);

		if (q == -ENOENT)
			continue;
		if (q < 0) {
			r = kiln_error_seterrno(err, q, "cannot remove blob %s",
						KILN_DIGEST_STR(&c.doomed[i]));
			break;
		}
		n_removed++;
		n_freed += c.sizes[i];
	}
out:
	if (removed)
		*removed = n_removed;
	if (freed)
		*freed = n_freed;
	free(c.doomed);
	free(c.sizes);
	return r;
}
