#include "cas/gc.h"

#include <string.h>

#include "basic/alloc.h"
#include "basic/log.h"
#include "cas/tree.h"

/* ---- mark ---- */

struct mark_ctx {
	struct kiln_store *store;
	struct kiln_digest_set *marked;
	const struct kiln_gc_mark_opts *opts;
	struct kiln_error **err;
	int first; /* first problem's code, 0 when none yet */
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
	if (kiln_tree_is_empty_digest(d)) {
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
