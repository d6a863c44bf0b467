/* Reading trees: walk, lookup, diff and usage. */
#include "cas/tree.h"

#include <errno.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/macro.h"
#include "cas/cas-internal.h"

static void tree_releasep(struct kiln_tree *t)
{
	kiln_tree_release(t);
}
#define _cleanup_tree_ _cleanup_(tree_releasep)

static int depth_error(struct kiln_error **err, const char *path)
{
	return kiln_error_set(err, -ELOOP, "tree deeper than %u levels at %s",
			      KILN_TREE_MAX_DEPTH, path);
}

static char *child_path(const char *dir, const char *name)
{
	return *dir ? xasprintf("%s/%s", dir, name) : xstrdup(name);
}

/* ---- hardlink groups met by a walk or a diff ---- */

struct lgroup {
	char *first;              /* path of the first member */
	struct kiln_tree_entry e; /* the first member, once reported */
	bool seen;
};

struct lmember {
	char *path;
	size_t group;
};

struct linkmap {
	struct lgroup *g;
	size_t ng, galloc;
	struct lmember *m; /* sorted by path (strcmp) */
	size_t nm, malloc;
};

static void linkmap_release(struct linkmap *lm)
{
	size_t i;

	for (i = 0; i < lm->ng; i++) {
		free(lm->g[i].first);
		kiln_tree_entry_release(&lm->g[i].e);
	}
	for (i = 0; i < lm->nm; i++)
		free(lm->m[i].path);
	free(lm->g);
	free(lm->m);
}

static int member_cmp(const void *a, const void *b)
{
	return strcmp(((const struct lmember *)a)->path,
		      ((const struct lmember *)b)->path);
}

/* Remember the groups of node t, the directory at dir. */
static void linkmap_add(struct linkmap *lm, const struct kiln_tree *t,
			const char *dir)
{
	size_t g, i;

	for (g = 0; g < t->n_links; g++) {
		const struct kiln_tree_link *l = &t->links[g];
		struct lgroup *lg;

		lm->g = xgrow(lm->g, &lm->galloc, lm->ng + 1, sizeof(*lm->g));
		lg = &lm->g[lm->ng];
		memset(lg, 0, sizeof(*lg));
		lg->first = child_path(dir, l->paths[0]);
		for (i = 0; i < l->n; i++) {
			lm->m = xgrow(lm->m, &lm->malloc, lm->nm + 1, sizeof(*lm->m));
			lm->m[lm->nm].path = child_path(dir, l->paths[i]);
			lm->m[lm->nm++].group = lm->ng;
		}
		lm->ng++;
	}
	if (t->n_links)
		qsort(lm->m, lm->nm, sizeof(*lm->m), member_cmp);
}

/*
 * A FILE at path is being reported: the first member of its group is
 * remembered; a later one gets e->link when the first was reported and
 * is the same file. Members that differ mean a corrupt or forged tree.
 */
static int linkmap_note(struct linkmap *lm, const char *path,
			struct kiln_tree_entry *e, struct kiln_error **err)
{
	struct lmember key = { (char *)path, 0 }, *m;
	struct lgroup *g;

	if (!lm->nm || e->type != KILN_ENTRY_FILE)
		return 0;
	m = bsearch(&key, lm->m, lm->nm, sizeof(*lm->m), member_cmp);
	if (!m)
		return 0;
	g = &lm->g[m->group];
	if (!strcmp(g->first, path)) {
		if (!g->seen)
			kiln_tree_entry_copy(&g->e, e);
		g->seen = true;
		return 0;
	}
	if (!g->seen)
		return 0;
	if (!kiln_tree_entry_same_file(&g->e, e))
		return kiln_error_set(err, -EBADMSG,
				      "hardlink group of %s: %s is not the same file",
				      g->first, path);
	free(e->link);
	e->link = xstrdup(g->first);
	return 0;
}

/* ---- walk ---- */

struct walk {
	struct kiln_store *s;
	kiln_tree_walk_fn fn;
	void *ud;
	struct kiln_error **err;
	struct linkmap lm;
};

static int walk_node(struct walk *w, const struct kiln_digest *d,
		     const char *dir, unsigned depth)
{
	_cleanup_tree_ struct kiln_tree t = KILN_TREE_INIT;
	size_t i;
	int r;

	if (depth > KILN_TREE_MAX_DEPTH)
		return depth_error(w->err, dir);
	r = kiln_tree_get(w->s, d, &t, w->err);
	if (r == 0)
		linkmap_add(&w->lm, &t, dir);
	for (i = 0; r == 0 && i < t.n; i++) {
		struct kiln_tree_entry *e = &t.entries[i];
		_cleanup_free_ char *path = child_path(dir, e->name);

		r = linkmap_note(&w->lm, path, e, w->err);
		r = r ? r : w->fn(path, e, w->ud);
		if (r == 0 && e->type == KILN_ENTRY_DIR)
			r = walk_node(w, &e->digest, path, depth + 1);
	}
	return r;
}

int kiln_tree_walk(struct kiln_store *s, const struct kiln_digest *root,
		   kiln_tree_walk_fn fn, void *ud, struct kiln_error **err)
{
	struct walk w = { s, fn, ud, err, { 0 } };
	int r = walk_node(&w, root, "", 1);

	linkmap_release(&w.lm);
	return r;
}

/* ---- lookup ---- */

static void root_entry(const struct kiln_digest *root,
		       struct kiln_tree_entry *out)
{
	memset(out, 0, sizeof(*out));
	out->name = xstrdup("");
	out->type = KILN_ENTRY_DIR;
	out->mode = 0755;
	out->digest = *root;
}

int kiln_tree_lookup(struct kiln_store *s, const struct kiln_digest *root,
		     const char *path, struct kiln_tree_entry *out,
		     struct kiln_error **err)
{
	struct kiln_tree_entry cur;
	const char *p = path;

	root_entry(root, &cur);
	while (*p) {
		_cleanup_tree_ struct kiln_tree t = KILN_TREE_INIT;
		size_t n = strcspn(p, "/");
		_cleanup_free_ char *name = xstrndup(p, n);
		const struct kiln_tree_entry *e;
		int r;

		p += n + (p[n] == '/');
		if (n == 0 || !strcmp(name, "."))
			continue;
		if (cur.type != KILN_ENTRY_DIR) {
			kiln_tree_entry_release(&cur);
			return kiln_error_set(err, -ENOTDIR, "%s: not a directory", path);
		}
		r = kiln_tree_get(s, &cur.digest, &t, err);
		kiln_tree_entry_release(&cur);
		if (r < 0)
			return r;
		e = kiln_tree_find(&t, name);
		if (!e)
			return kiln_error_set(err, -ENOENT, "%s: no such entry", path);
		kiln_tree_entry_copy(&cur, e);
	}
	*out = cur;
	return 0;
}

/* ---- diff ---- */

struct diff {
	struct kiln_store *s;
	kiln_tree_diff_fn fn;
	void *ud;
	struct kiln_error **err;
	struct linkmap lm; /* of the new tree */
};

static int load_or_empty(struct kiln_store *s, const struct kiln_digest *d,
			 struct kiln_tree *t, struct kiln_error **err)
{
	if (!d || !kiln_digest_is_set(d)) {
		kiln_tree_init(t);
		return 0;
	}
	return kiln_tree_get(s, d, t, err);
}

static int add_all(struct diff *df, const struct kiln_digest *d,
		   const char *dir, unsigned depth);

static int emit_add(struct diff *df, struct kiln_tree_entry *e,
		    const char *path, unsigned depth)
{
	int r = linkmap_note(&df->lm, path, e, df->err);

	r = r ? r : df->fn(KILN_DIFF_ADD, path, NULL, e, df->ud);

	if (r == 0 && e->type == KILN_ENTRY_DIR)
		r = add_all(df, &e->digest, path, depth + 1);
	return r;
}

static int add_all(struct diff *df, const struct kiln_digest *d,
		   const char *dir, unsigned depth)
{
	_cleanup_tree_ struct kiln_tree t = KILN_TREE_INIT;
	size_t i;
	int r;

	if (depth > KILN_TREE_MAX_DEPTH)
		return depth_error(df->err, dir);
	r = kiln_tree_get(df->s, d, &t, df->err);
	if (r == 0)
		linkmap_add(&df->lm, &t, dir);
	for (i = 0; r == 0 && i < t.n; i++) {
		_cleanup_free_ char *path = child_path(dir, t.entries[i].name);

		r = emit_add(df, &t.entries[i], path, depth);
	}
	return r;
}

static bool dir_meta_eq(const struct kiln_tree_entry *a,
			const struct kiln_tree_entry *b)
{
	struct kiln_tree_entry x = *a;

	x.digest = b->digest;
	return kiln_tree_entry_eq(&x, b);
}

static int diff_nodes(struct diff *df, const struct kiln_digest *a,
		      const struct kiln_digest *b, const char *dir,
		      unsigned depth);

static int diff_same_name(struct diff *df, const struct kiln_tree_entry *o,
			  struct kiln_tree_entry *n, const char *path,
			  unsigned depth)
{
	bool odir = o->type == KILN_ENTRY_DIR, ndir = n->type == KILN_ENTRY_DIR;
	int r;

	if (kiln_tree_entry_eq(o, n))
		return 0;
	if (odir != ndir) {
		r = df->fn(KILN_DIFF_DELETE, path, o, NULL, df->ud);
		return r ? r : emit_add(df, n, path, depth);
	}
	if (!odir) {
		r = linkmap_note(&df->lm, path, n, df->err);
		return r ? r : df->fn(KILN_DIFF_MODIFY, path, o, n, df->ud);
	}
	if (!dir_meta_eq(o, n)) {
		r = df->fn(KILN_DIFF_MODIFY, path, o, n, df->ud);
		if (r)
			return r;
	}
	if (kiln_digest_eq(&o->digest, &n->digest))
		return 0;
	return diff_nodes(df, &o->digest, &n->digest, path, depth + 1);
}

static int diff_step(struct diff *df, const struct kiln_tree *ta, size_t *i,
		     struct kiln_tree *tb, size_t *j, const char *dir,
		     unsigned depth)
{
	const struct kiln_tree_entry *o = *i < ta->n ? &ta->entries[*i] : NULL;
	struct kiln_tree_entry *n = *j < tb->n ? &tb->entries[*j] : NULL;
	int c = !o ? 1 : !n ? -1 : strcmp(o->name, n->name);
	_cleanup_free_ char *path = child_path(dir, c <= 0 ? o->name : n->name);

	if (c < 0) {
		(*i)++;
		return df->fn(KILN_DIFF_DELETE, path, o, NULL, df->ud);
	}
	if (c > 0) {
		(*j)++;
		return emit_add(df, n, path, depth);
	}
	(*i)++;
	(*j)++;
	return diff_same_name(df, o, n, path, depth);
}

static int diff_nodes(struct diff *df, const struct kiln_digest *a,
		      const struct kiln_digest *b, const char *dir,
		      unsigned depth)
{
	_cleanup_tree_ struct kiln_tree ta = KILN_TREE_INIT;
	_cleanup_tree_ struct kiln_tree tb = KILN_TREE_INIT;
	size_t i = 0, j = 0;
	int r;

	if (depth > KILN_TREE_MAX_DEPTH)
		return depth_error(df->err, dir);
	r = load_or_empty(df->s, a, &ta, df->err);
	r = r ? r : load_or_empty(df->s, b, &tb, df->err);
	if (r == 0)
		linkmap_add(&df->lm, &tb, dir);
	while (r == 0 && (i < ta.n || j < tb.n))
		r = diff_step(df, &ta, &i, &tb, &j, dir, depth);
	return r;
}

int kiln_tree_diff(struct kiln_store *s, const struct kiln_digest *a,
		   const struct kiln_digest *b, kiln_tree_diff_fn fn, void *ud,
		   struct kiln_error **err)
{
	struct diff df = { s, fn, ud, err, { 0 } };
	int r;

	if (a && b && kiln_digest_eq(a, b))
		return 0;
	r = diff_nodes(&df, a, b, "", 1);
	linkmap_release(&df.lm);
	return r;
}

/* ---- usage: identical subtrees are read once (memoized by digest) ---- */

struct memo_slot {
	struct kiln_digest d;
	uint64_t bytes, entries;
	bool used;
};

struct usage {
	struct kiln_store *s;
	struct memo_slot *slots;
	size_t cap, n; /* cap is a power of two */
	struct kiln_error **err;
};

static size_t memo_hash(const struct kiln_digest *d, size_t cap)
{
	uint64_t h;

	memcpy(&h, d->bytes, sizeof(h));
	return (size_t)h & (cap - 1);
}

static struct memo_slot *memo_find(struct usage *u, const struct kiln_digest *d)
{
	size_t i = memo_hash(d, u->cap);

	while (u->slots[i].used && !kiln_digest_eq(&u->slots[i].d, d))
		i = (i + 1) & (u->cap - 1);
	return &u->slots[i];
}

static void memo_grow(struct usage *u)
{
	struct memo_slot *old = u->slots;
	size_t i, oldcap = u->cap;

	u->cap *= 2;
	u->slots = xcalloc(u->cap, sizeof(*u->slots));
	for (i = 0; i < oldcap; i++)
		if (old[i].used)
			*memo_find(u, &old[i].d) = old[i];
	free(old);
}

static void memo_put(struct usage *u, const struct kiln_digest *d,
		     uint64_t bytes, uint64_t entries)
{
	struct memo_slot *m;

	if ((u->n + 1) * 2 > u->cap)
		memo_grow(u);
	m = memo_find(u, d);
	m->d = *d;
	m->bytes = bytes;
	m->entries = entries;
	m->used = true;
	u->n++;
}

/*
 * The memo of d, copied out: no slot pointer may live across a recursion,
 * whose memo_put can move the slots.
 */
static bool memo_get(struct usage *u, const struct kiln_digest *d,
		     uint64_t *bytes, uint64_t *entries)
{
	const struct memo_slot *m = memo_find(u, d);

	if (!m->used)
		return false;
	*bytes = m->bytes;
	*entries = m->entries;
	return true;
}

static int usage_node(struct usage *u, const struct kiln_digest *d,
		      unsigned depth, uint64_t *bytes, uint64_t *entries)
{
	_cleanup_tree_ struct kiln_tree t = KILN_TREE_INIT;
	uint64_t b = 0, n = 0;
	size_t i;
	int r;

	if (memo_get(u, d, bytes, entries))
		return 0;
	if (depth > KILN_TREE_MAX_DEPTH)
		return depth_error(u->err, KILN_DIGEST_STR(d));
	r = kiln_tree_get(u->s, d, &t, u->err);
	for (i = 0; r == 0 && i < t.n; i++) {
		const struct kiln_tree_entry *e = &t.entries[i];
		uint64_t cb = 0, cn = 0;

		n++;
		b += e->size;
		if (e->type == KILN_ENTRY_DIR)
			r = usage_node(u, &e->digest, depth + 1, &cb, &cn);
		b += cb;
		n += cn;
	}
	if (r < 0)
		return r;
	memo_put(u, d, b, n);
	*bytes = b;
	*entries = n;
	return 0;
}

int kiln_tree_usage(struct kiln_store *s, const struct kiln_digest *root,
		    uint64_t *bytes, uint64_t *entries, struct kiln_error **err)
{
	struct usage u = { s, NULL, 64, 0, err };
	uint64_t b = 0, n = 0;
	int r;

	u.slots = xcalloc(u.cap, sizeof(*u.slots));
	r = usage_node(&u, root, 1, &b, &n);
	free(u.slots);
	if (r < 0)
		return r;
	if (bytes)
		*bytes = b;
	if (entries)
		*entries = n;
	return 0;
}
