/*
 * Garbage collection of a remote cache (kiln prune --cache): which records
 * go, then mark and sweep of the blobs (rcache.h, docs/internals/
 * remote-cache.md).
 *
 * Roots of the mark: the kept records (their trees and meta blobs) and
 * every tree node younger than the grace period. The second kind protects
 * writers at work: a writer uploads blobs bottom-up before its record and,
 * when it reuses a subtree that is already there, writes that subtree's
 * node again, so everything a record in progress will need is below a
 * young node or young itself, and neither is swept.
 */
#include "rcache/rcache.h"

#include <errno.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/macro.h"
#include "cas/digest-set.h"
#include "cas/tree.h"
#include "rcache/rcache-internal.h"

struct obj {
	char *name;
	uint64_t size;
	int64_t mtime;
	struct kiln_digest d; /* blobs; records: the key's digest */
	bool is_node;         /* blobs: a tree node (checked when unsure) */
	bool broken;          /* blobs: a young node whose subtree is not whole */
	bool keep;            /* records */
};

struct objs {
	struct obj *v;
	size_t n, alloc;
};

struct gc {
	struct kiln_rcache *rc;
	const struct kiln_rcache_gc_opts *o;
	struct kiln_rcache_gc_stats *st;
	struct objs recs, blobs;
	struct kiln_digest_set index;  /* blob digest -> index in blobs */
	struct kiln_digest_set marked;
	uint64_t marked_bytes; /* the sizes of the blobs in marked */
	struct kiln_error **err;
};

static void objs_release(struct objs *l)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		free(l->v[i].name);
	free(l->v);
}

struct lister {
	struct objs *l;
	const char *prefix;
};

static int add_obj(void *ud, const char *name, uint64_t size, int64_t mtime)
{
	struct lister *ls = ud;
	_cleanup_free_ char *ds = NULL;
	struct obj *ob;
	struct kiln_digest d;

	/* Anything else under the prefix is not ours to judge (a hostile
	 * listing may name anything: check before reading past the prefix). */
	if (strncmp(name, ls->prefix, strlen(ls->prefix)))
		return 0;
	ds = xasprintf("sha256:%s", name + strlen(ls->prefix));
	if (kiln_digest_parse(ds, &d) < 0)
		return 0;
	ls->l->v = xgrow(ls->l->v, &ls->l->alloc, ls->l->n + 1, sizeof(*ls->l->v));
	ob = &ls->l->v[ls->l->n++];
	memset(ob, 0, sizeof(*ob));
	ob->name = xstrdup(name);
	ob->size = size;
	ob->mtime = mtime;
	ob->d = d;
	return 0;
}

static int list_all(struct gc *g, const char *prefix, struct objs *l)
{
	struct lister ls = { l, prefix };

	return rcache_list(g->rc, prefix, add_obj, &ls, g->err);
}

/* ---- mark ---- */

/* Why a record cannot be kept; set by mark_tree. */
struct mark_fail {
	int code;
	struct kiln_error *err;
};

static struct obj *blob_of(struct gc *g, const struct kiln_digest *d)
{
	uint64_t *i = kiln_digest_set_value(&g->index, d);

	return i ? &g->blobs.v[*i] : NULL;
}

/* d is needed (kept); its size counts once. */
static void set_mark(struct gc *g, const struct kiln_digest *d)
{
	struct obj *ob;

	if (kiln_digest_set_has(&g->marked, d))
		return;
	kiln_digest_set_add(&g->marked, d);
	ob = blob_of(g, d);
	if (ob)
		g->marked_bytes += ob->size;
}

static int mark_tree(struct gc *g, const struct kiln_digest *d, unsigned depth,
		     struct kiln_error **why)
{
	struct kiln_tree t = KILN_TREE_INIT;
	struct obj *ob;
	size_t i;
	int r;

	if (kiln_tree_is_empty_digest(d) || kiln_digest_set_has(&g->marked, d))
		return 0;
	if (depth > KILN_TREE_MAX_DEPTH)
		return kiln_error_set(why, -EBADMSG, "tree deeper than %u levels",
				      KILN_TREE_MAX_DEPTH);
	ob = blob_of(g, d);
	if (!ob)
		return kiln_error_set(why, -EBADMSG, "tree node %s is missing", KILN_DIGEST_STR(d));
	r = rcache_read_node(g->rc, d, &t, why);
	if (r < 0)
		return r;
	ob->is_node = true;
	for (i = 0; r == 0 && i < t.n; i++) {
		const struct kiln_tree_entry *e = &t.entries[i];

		if (e->type == KILN_ENTRY_DIR) {
			r = mark_tree(g, &e->digest, depth + 1, why);
		} else if (e->type == KILN_ENTRY_FILE) {
			if (!blob_of(g, &e->digest))
				r = kiln_error_set(why, -EBADMSG, "blob %s is missing",
						   KILN_DIGEST_STR(&e->digest));
			else
				set_mark(g, &e->digest);
		}
	}
	kiln_tree_release(&t);
	/* Marked only once all below it is there: an incomplete node is not. */
	if (r == 0)
		set_mark(g, d);
	return r;
}

struct meta_mark {
	struct gc *g;
	struct kiln_error **why;
	int r;
};

static void mark_meta_blob(void *ud, size_t i, const struct kiln_digest *d)
{
	struct meta_mark *m = ud;

	(void)i;
	if (m->r || !d)
		return;
	if (!blob_of(m->g, d))
		m->r = kiln_error_set(m->why, -EBADMSG, "blob %s is missing", KILN_DIGEST_STR(d));
	else
		set_mark(m->g, d);
}

/* Mark what record i needs; a record that is corrupt or incomplete is dropped. */
static int mark_record(struct gc *g, size_t i)
{
	struct obj *rec = &g->recs.v[i];
	_cleanup_error_ struct kiln_error *why = NULL;
	struct kiln_cache_record cr = { 0 };
	struct meta_mark m = { g, &why, 0 };
	size_t k;
	int r;

	r = kiln_rcache_get(g->rc, KILN_DIGEST_STR(&rec->d), &cr, &why);
	for (k = 0; r == 0 && k < cr.n_outputs; k++)
		r = mark_tree(g, &cr.outputs[k], 1, &why);
	if (r == 0) {
		kiln_cache_meta_blobs(cr.meta, mark_meta_blob, &m);
		r = m.r;
	}
	kiln_cache_record_release(&cr);
	if (r == -EBADMSG || r == -ENOENT) {
		/* Useless: it goes, and what only it needed is swept. */
		rec->keep = false;
		g->st->records_bad++;
		return 0;
	}
	if (r < 0 && why) {
		if (g->err && !*g->err)
			*g->err = TAKE_PTR(why);
	}
	return r;
}

/* Is an unmarked blob a tree node? Its first bytes say ("kilntree"). */
struct magic {
	char buf[9];
	size_t n;
};

static int take_magic(void *ud, const void *data, size_t n)
{
	struct magic *m = ud;
	size_t k = n < sizeof(m->buf) - m->n ? n : sizeof(m->buf) - m->n;

	memcpy(m->buf + m->n, data, k);
	m->n += k;
	return m->n == sizeof(m->buf) ? -ECANCELED : 0;
}

static int check_node(struct gc *g, struct obj *ob)
{
	struct magic m = { { 0 }, 0 };
	int r = rcache_get_raw(g->rc, ob->name, KILN_TREE_MAX_NODE_BYTES, take_magic, &m, NULL);

	/* Larger than a node can be, or shorter than its header: a file. */
	if (r == -EFBIG || (r == 0 && m.n < sizeof(m.buf)))
		return 0;
	if (r < 0 && r != -ECANCELED)
		return r == -ENOENT ? 0 : kiln_error_set(g->err, r, "reading %s", ob->name);
	ob->is_node = !memcmp(m.buf, "kilntree", 8);
	return 0;
}

/*
 * Mark what is kept: young nodes (what a writer at work relies on), then
 * the kept records. With --keep-storage, records are taken newest first
 * while what they reach fits; the first that does not, and every older
 * one, goes. What that record had marked is undone by marking again from
 * scratch, once: each record's trees are read at most twice, not once per
 * record dropped.
 */
static int mark(struct gc *g)
{
	bool full = false;
	size_t i;
	int r = 0;

	kiln_digest_set_release(&g->marked);
	g->marked_bytes = 0;
	for (i = 0; r == 0 && i < g->blobs.n; i++) {
		struct obj *ob = &g->blobs.v[i];
		_cleanup_error_ struct kiln_error *why = NULL;

		if (ob->mtime < g->o->now - g->o->grace)
			continue;
		r = check_node(g, ob);
		if (r == 0 && ob->is_node) {
			/*
			 * A writer goes bottom-up, so a young node whose subtree
			 * is not whole is no writer at work: it is broken (a
			 * node written again as a gc deleted below it) and goes
			 * whatever its age, so no writer trusts it again.
			 */
			r = mark_tree(g, &ob->d, 1, &why);
			if (r == -EBADMSG) {
				ob->broken = true;
				r = 0;
				continue;
			}
			if (r < 0 && g->err && !*g->err)
				*g->err = TAKE_PTR(why);
		}
		set_mark(g, &ob->d);
	}
	for (i = g->recs.n; r == 0 && i-- > 0;) {
		if (!g->recs.v[i].keep)
			continue;
		if (full) {
			g->recs.v[i].keep = false;
			continue;
		}
		r = mark_record(g, i);
		if (r == 0 && g->o->has_keep && g->marked_bytes > g->o->keep_bytes) {
			full = true;
			g->recs.v[i].keep = false;
		}
	}
	return r == 0 && full ? mark(g) : r;
}

static int obj_age_cmp(const void *pa, const void *pb)
{
	const struct obj *a = pa, *b = pb;

	if (a->mtime != b->mtime)
		return a->mtime < b->mtime ? -1 : 1;
	return strcmp(a->name, b->name);
}

/* ---- sweep ---- */

static int delete_obj(struct gc *g, struct obj *ob)
{
	if (g->o->dry_run)
		return 0;
	return rcache_del(g->rc, ob->name, g->err);
}

/* An unmarked blob older than the grace period, or a broken node. */
static bool goes(struct gc *g, const struct obj *ob)
{
	return !kiln_digest_set_has(&g->marked, &ob->d) &&
	       (ob->mtime < g->o->now - g->o->grace || ob->broken);
}

/*
 * The nodes that go, parents before children: each is read for its
 * subdirectories, and a node is deleted once no node that goes names it
 * (Kahn's order on the Merkle DAG, which has no cycles).
 */
static int sweep_nodes(struct gc *g)
{
	_cleanup_free_ size_t *cand = NULL, *parents = NULL, *queue = NULL;
	_cleanup_free_ struct kiln_digest **kids = NULL;
	_cleanup_free_ size_t *n_kids = NULL;
	struct kiln_digest_set pos = { 0 }; /* digest -> index in cand */
	size_t n = 0, i, k, head = 0, tail = 0;
	int r = 0;

	cand = xcalloc(g->blobs.n + 1, sizeof(*cand));
	for (i = 0; i < g->blobs.n; i++)
		if (goes(g, &g->blobs.v[i]) && g->blobs.v[i].is_node) {
			kiln_digest_set_put(&pos, &g->blobs.v[i].d, n);
			cand[n++] = i;
		}
	parents = xcalloc(n + 1, sizeof(*parents));
	kids = xcalloc(n + 1, sizeof(*kids));
	n_kids = xcalloc(n + 1, sizeof(*n_kids));
	queue = xcalloc(n + 1, sizeof(*queue));
	for (i = 0; i < n; i++) {
		struct kiln_tree t = KILN_TREE_INIT;

		/* Unreadable (corrupt): it names nothing we know of. */
		if (rcache_read_node(g->rc, &g->blobs.v[cand[i]].d, &t, NULL) == 0) {
			kids[i] = xcalloc(t.n + 1, sizeof(**kids));
			for (k = 0; k < t.n; k++) {
				uint64_t *c;

				if (t.entries[k].type != KILN_ENTRY_DIR ||
				    !(c = kiln_digest_set_value(&pos, &t.entries[k].digest)))
					continue;
				kids[i][n_kids[i]++] = t.entries[k].digest;
				parents[*c]++;
			}
		}
		kiln_tree_release(&t);
	}
	for (i = 0; i < n; i++)
		if (parents[i] == 0)
			queue[tail++] = i;
	while (r == 0 && head < tail) {
		size_t c = queue[head++];
		struct obj *ob = &g->blobs.v[cand[c]];

		r = delete_obj(g, ob);
		if (r < 0)
			break;
		g->st->blobs_deleted++;
		g->st->bytes_deleted += ob->size;
		for (k = 0; k < n_kids[c]; k++) {
			uint64_t *j = kiln_digest_set_value(&pos, &kids[c][k]);

			if (j && --parents[*j] == 0)
				queue[tail++] = (size_t)*j;
		}
	}
	for (i = 0; i < n; i++)
		free(kids[i]);
	kiln_digest_set_release(&pos);
	return r;
}

static int sweep(struct gc *g)
{
	size_t i;
	int r = 0;

	/* Records first: none may point at a blob that is gone. */
	for (i = 0; r == 0 && i < g->recs.n; i++) {
		if (g->recs.v[i].keep)
			continue;
		r = delete_obj(g, &g->recs.v[i]);
		g->st->records_deleted += r == 0;
	}
	/* Unmarked old blobs: is each a node? Nodes go before files. */
	for (i = 0; r == 0 && i < g->blobs.n; i++) {
		struct obj *ob = &g->blobs.v[i];

		if (!kiln_digest_set_has(&g->marked, &ob->d) &&
		    ob->mtime < g->o->now - g->o->grace && !ob->is_node)
			r = check_node(g, ob);
	}
	/* Nodes parents first, so a node left by an interrupted gc is whole. */
	r = r ? r : sweep_nodes(g);
	for (i = 0; r == 0 && i < g->blobs.n; i++) {
		struct obj *ob = &g->blobs.v[i];

		if (!goes(g, ob) || ob->is_node)
			continue;
		r = delete_obj(g, ob);
		if (r == 0) {
			g->st->blobs_deleted++;
			g->st->bytes_deleted += ob->size;
		}
	}
	return r;
}

/*
 * The blobs' mtimes again, just before the sweep: one a writer touched
 * while the gc marked (it relies on it for a record in progress) is young
 * now and stays. Narrows the writer's window to the sweep itself.
 */
static int fresh_mtime(void *ud, const char *name, uint64_t size, int64_t mtime)
{
	struct gc *g = ud;
	const char *prefix = "cas/sha256/";
	_cleanup_free_ char *ds = NULL;
	struct kiln_digest d;
	struct obj *ob;

	(void)size;
	if (strncmp(name, prefix, strlen(prefix)))
		return 0;
	ds = xasprintf("sha256:%s", name + strlen(prefix));
	if (kiln_digest_parse(ds, &d) == 0 && (ob = blob_of(g, &d)) && mtime > ob->mtime)
		ob->mtime = mtime;
	return 0;
}

static int relist(struct gc *g)
{
	return g->o->dry_run ? 0 : rcache_list(g->rc, "cas/sha256/", fresh_mtime, g, g->err);
}

int kiln_rcache_gc(struct kiln_rcache *rc, const struct kiln_rcache_gc_opts *o,
		   struct kiln_rcache_gc_stats *st, struct kiln_error **err)
{
	struct gc g = { .rc = rc, .o = o, .st = st, .err = err };
	size_t i;
	int r;

	memset(st, 0, sizeof(*st));
	r = list_all(&g, "ac/sha256/", &g.recs);
	r = r ? r : list_all(&g, "cas/sha256/", &g.blobs);
	if (r < 0)
		goto out;
	for (i = 0; i < g.blobs.n; i++) {
		kiln_digest_set_put(&g.index, &g.blobs.v[i].d, i);
		st->bytes += g.blobs.v[i].size;
	}
	st->records = g.recs.n;
	st->blobs = g.blobs.n;
	qsort(g.recs.v, g.recs.n, sizeof(*g.recs.v), obj_age_cmp);
	for (i = 0; i < g.recs.n; i++)
		g.recs.v[i].keep = o->older_than < 0 || g.recs.v[i].mtime > o->now - o->older_than;
	/* Oldest kept records go until what the rest reach fits. */
	r = mark(&g);
	r = r ? r : relist(&g);
	r = r ? r : sweep(&g);
out:
	if (r < 0)
		kiln_error_prefix(err, "remote cache %s: gc", kiln_rcache_name(rc));
	objs_release(&g.recs);
	objs_release(&g.blobs);
	kiln_digest_set_release(&g.index);
	kiln_digest_set_release(&g.marked);
	return r;
}
