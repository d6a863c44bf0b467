/*
 * Pulling trees and blobs from peers (docs/internals/transfer.md).
 *
 * A pull goes through two phases:
 *   NODES  scan the local copy of the tree from root; every directory node
 *          that is absent is asked for with GET /v1/trees/<node>, which
 *          brings the whole subtree's structure in one response; repeat
 *          until the scan finds no absent node (a capped response leaves a
 *          frontier for the next round).
 *   FILES  the scan's absent file blobs, large ones one GET each (streamed
 *          into a store writer), small ones grouped into batch requests;
 *          `parallel` threads take work items from one queue.
 * Every blob is verified against its expected digest before it is named,
 * so nothing unverified is ever named in the store. A batch response's
 * blobs are named together by one group commit (store.h): one file-system
 * sync per batch where an fsync per blob bound the rate at ~10,000 files/s.
 *
 * Per source: a transport failure, an unexpected status, a protocol
 * violation or corrupt data marks it bad (skipped for the rest of the
 * pull); a 404 or an absent record only moves that blob to the next one.
 */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/parse-util.h"
#include "basic/pool.h"
#include "basic/strbuf.h"
#include "basic/strv.h"
#include "cache/index.h"
#include "cas/tree.h"
#include "proto/http-client.h"
#include "peer/peer-internal.h"

#define DEFAULT_PARALLEL 4u
#define DEFAULT_SMALL_MAX (256u << 10)
#define DEFAULT_BATCH_BYTES (4u << 20)
#define MAX_PARALLEL 64u
/* Scan rounds before a tree that keeps coming back incomplete is an error. */
#define MAX_ROUNDS 64u

/* Outcome of one request to one source. */
enum attempt { SERVED = 0, NEXT_SOURCE = 1 };

struct pull {
	struct kiln_store *store;
	const struct kiln_peer_source *src;
	size_t n;
	struct kiln_http_client *http;
	unsigned parallel;
	uint64_t small_max, batch_bytes;
	pthread_mutex_t lock; /* guards everything below */
	bool *bad;
	char **why; /* per source: what it answered last when it could not serve */
	struct kiln_peer_stats *stats; /* the caller's, or own */
	struct kiln_peer_stats own;
	struct kiln_peer_source_stats *per;
};

/* ---- bookkeeping ---- */

static char *url_for(const struct kiln_peer_source *s, const char *path,
		     const struct kiln_digest *d)
{
	size_t len = strlen(s->url);

	while (len && s->url[len - 1] == '/')
		len--;
	if (!d)
		return xasprintf("%.*s%s", (int)len, s->url, path);
	return xasprintf("%.*s%s%s", (int)len, s->url, path,
			 KILN_DIGEST_STR(d));
}

static bool source_bad(struct pull *p, size_t i)
{
	bool b;

	pthread_mutex_lock(&p->lock);
	b = p->bad[i];
	pthread_mutex_unlock(&p->lock);
	return b;
}

/* Remember why source i could not serve; skip it from now on when bad. */
static void source_failed(struct pull *p, size_t i, bool bad,
			  struct kiln_error *e)
{
	pthread_mutex_lock(&p->lock);
	free(p->why[i]);
	p->why[i] = xstrdup(kiln_error_msg(e));
	if (bad) {
		p->bad[i] = true;
		p->per[i].failures++;
	}
	pthread_mutex_unlock(&p->lock);
	kiln_error_free(e);
}

static void count_request(struct pull *p, size_t i)
{
	pthread_mutex_lock(&p->lock);
	p->stats->requests++;
	p->per[i].requests++;
	pthread_mutex_unlock(&p->lock);
}

static void count_blobs(struct pull *p, size_t i, uint64_t blobs,
			uint64_t bytes)
{
	pthread_mutex_lock(&p->lock);
	p->stats->bytes += bytes;
	p->stats->blobs += blobs;
	p->per[i].bytes += bytes;
	p->per[i].blobs += blobs;
	pthread_mutex_unlock(&p->lock);
}

/* "WHAT is on no source: URL: why; URL: why" */
static int no_source(struct pull *p, struct kiln_error **err, const char *what)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(64 << 10);
	size_t i;

	pthread_mutex_lock(&p->lock);
	/* Each reason names its URL already. */
	for (i = 0; i < p->n; i++)
		(void)kiln_strbuf_addf(&sb, "%s%s%s", i ? "; " : "",
				       p->why[i] ? p->why[i] : p->src[i].url,
				       p->why[i] ? "" : ": not tried");
	pthread_mutex_unlock(&p->lock);
	return kiln_error_set(err, -ENOENT, "%s could be pulled from no source "
			      "(%zu tried): %s", what, p->n, kiln_strbuf_str(&sb));
}

/*
 * Judge a framed exchange with source i: SERVED, NEXT_SOURCE (source i
 * told why) or a local error. A 404 is only "not here"; everything else
 * wrong is bad.
 */
static int judge(struct pull *p, size_t i, struct kiln_peer_framer *f,
		 const struct kiln_http_call *c, struct kiln_http_result *res,
		 int r, struct kiln_error *e)
{
	if (f->local < 0) {
		kiln_error_free(e);
		return f->local;
	}
	if (f->err) {
		kiln_error_free(e);
		source_failed(p, i, true, TAKE_PTR(f->err));
		return NEXT_SOURCE;
	}
	if (r < 0) {
		source_failed(p, i, true, e);
		return NEXT_SOURCE;
	}
	if (res->status < 200 || res->status > 299) {
		kiln_http_status_error(&e, c, res);
		source_failed(p, i, res->status != 404, e);
		return NEXT_SOURCE;
	}
	if (f->state != KILN_PEER_F_END) {
		kiln_error_set(&e, -EPROTO, "%s %s: response ended early",
			       c->method, c->url);
		source_failed(p, i, true, e);
		return NEXT_SOURCE;
	}
	return SERVED;
}

/* One framed request (trees GET or batch POST) to source i. */
static int framed(struct pull *p, size_t i, struct kiln_peer_framer *f,
		  json_t *body)
{
	struct kiln_http_call c = {
		.method = f->method, .url = f->url, .token = p->src[i].token,
		.json = body, .sink = kiln_peer_framer_feed, .sink_ud = f,
	};
	struct kiln_http_result res;
	struct kiln_error *e = NULL;
	int r;

	count_request(p, i);
	r = kiln_http_client_do(p->http, &c, &res, &e);
	count_blobs(p, i, f->blobs, f->bytes);
	r = judge(p, i, f, &c, &res, r, e);
	kiln_http_result_release(&res);
	return r;
}

/* ---- phase NODES ---- */

/* What a scan found absent: directory nodes, and file blobs with sizes. */
struct scan {
	struct kiln_digest *nodes;
	size_t n_nodes, alloc_nodes;
	struct kiln_digest_set files;
};

static void scan_release(struct scan *sc)
{
	free(sc->nodes);
	kiln_digest_set_release(&sc->files);
	memset(sc, 0, sizeof(*sc));
}

static void scan_entries(struct pull *p, struct scan *sc,
			 const struct kiln_tree *t, struct kiln_digest_set *seen,
			 struct kiln_digest **queue, size_t *n, size_t *alloc)
{
	size_t i;

	for (i = 0; i < t->n; i++) {
		const struct kiln_tree_entry *e = &t->entries[i];

		if (e->type == KILN_ENTRY_FILE &&
		    !kiln_digest_set_value(&sc->files, &e->digest) &&
		    !kiln_store_has(p->store, &e->digest))
			kiln_digest_set_put(&sc->files, &e->digest, e->size);
		if (e->type != KILN_ENTRY_DIR ||
		    !kiln_digest_set_put(seen, &e->digest, 0))
			continue;
		*queue = xgrow(*queue, alloc, *n + 1, sizeof(**queue));
		(*queue)[(*n)++] = e->digest;
	}
}

/* Breadth-first over the local nodes, noting what is absent. */
static int scan(struct pull *p, const struct kiln_digest *root,
		struct scan *sc, struct kiln_error **err)
{
	struct kiln_digest_set seen = { 0 };
	struct kiln_digest *queue = NULL;
	size_t n = 0, alloc = 0, i;
	int r = 0;

	scan_release(sc);
	kiln_digest_set_put(&seen, root, 0);
	queue = xgrow(queue, &alloc, 1, sizeof(*queue));
	queue[n++] = *root;
	for (i = 0; i < n && r == 0; i++) {
		struct kiln_tree t = KILN_TREE_INIT;
		struct kiln_digest d = queue[i];

		if (!kiln_tree_is_empty_digest(&d) && !kiln_store_has(p->store, &d)) {
			sc->nodes = xgrow(sc->nodes, &sc->alloc_nodes,
					  sc->n_nodes + 1, sizeof(*sc->nodes));
			sc->nodes[sc->n_nodes++] = d;
			continue;
		}
		r = kiln_tree_get(p->store, &d, &t, err);
		if (r == 0)
			scan_entries(p, sc, &t, &seen, &queue, &n, &alloc);
		kiln_tree_release(&t);
	}
	free(queue);
	kiln_digest_set_release(&seen);
	return r;
}

/* Bring node d and (as much as the source sends of) its subtree. */
static int fetch_node(struct pull *p, const struct kiln_digest *d,
		      struct kiln_error **err)
{
	char what[128];
	size_t i;
	int r;

	if (kiln_store_has(p->store, d))
		return 0; /* came with an earlier node's subtree */
	for (i = 0; i < p->n; i++) {
		_cleanup_free_ char *url = NULL;
		struct kiln_peer_framer f;

		if (source_bad(p, i))
			continue;
		url = url_for(&p->src[i], "/v1/trees/", d);
		kiln_peer_framer_init_tree(&f, p->store, "GET", url, d);
		r = framed(p, i, &f, NULL);
		kiln_peer_framer_release(&f);
		if (r < 0)
			return kiln_error_seterrno(err, r, "storing tree nodes");
		if (r == SERVED && kiln_store_has(p->store, d))
			return 0;
	}
	snprintf(what, sizeof(what), "tree node %s", KILN_DIGEST_STR(d));
	return no_source(p, err, what);
}

/* Phase NODES; leaves the final scan (absent files) in sc. */
static int pull_nodes(struct pull *p, const struct kiln_digest *root,
		      struct scan *sc, struct kiln_error **err)
{
	unsigned round;
	size_t i;
	int r;

	for (round = 0;; round++) {
		r = scan(p, root, sc, err);
		if (r < 0 || sc->n_nodes == 0)
			return r;
		if (round == MAX_ROUNDS)
			return kiln_error_set(err, -EPROTO, "tree %s still "
					      "incomplete after %u rounds",
					      KILN_DIGEST_STR(root), round);
		for (i = 0; i < sc->n_nodes; i++) {
			r = fetch_node(p, &sc->nodes[i], err);
			if (r < 0)
				return r;
		}
	}
}

/* ---- phase FILES: one large blob ---- */

/* Blobs from this size on are hashed on a thread of their own. */
#define PIPELINE_MIN (8u << 20)

struct blob_sink {
	struct kiln_store_writer *w;
	uint64_t expect, got;
	int local;
};

static int blob_write(void *ud, const void *data, size_t len)
{
	struct blob_sink *b = ud;
	int r;

	if (b->expect != UINT64_MAX && len > b->expect - b->got)
		return -EFBIG;
	b->got += len;
	r = kiln_store_writer_write(b->w, data, len);
	return r < 0 ? (b->local = r) : 0;
}

/* Judge a finished GET and commit: SERVED / NEXT_SOURCE / local error. */
static int blob_finish(struct pull *p, size_t i, struct blob_sink *b,
		       const struct kiln_http_call *c,
		       struct kiln_http_result *res, int r, struct kiln_error *e,
		       const struct kiln_digest *d)
{
	if (b->local < 0) {
		kiln_error_free(e);
		return b->local;
	}
	if (r == -EFBIG || (r == 0 && res->status == 200 &&
			    b->expect != UINT64_MAX && b->got != b->expect))
		r = kiln_error_set(&e, -EPROTO, "%s %s: %llu bytes, the tree "
				   "says %llu", c->method, c->url,
				   (unsigned long long)b->got,
				   (unsigned long long)b->expect);
	else if (r == 0 && res->status != 200)
		r = kiln_http_status_error(&e, c, res);
	if (r < 0) {
		source_failed(p, i, res->status != 404, e);
		return NEXT_SOURCE;
	}
	r = kiln_store_writer_commit(TAKE_PTR(b->w), d, NULL, &e);
	if (r == -EBADMSG) {
		kiln_error_prefix(&e, "GET %s: corrupt data", c->url);
		source_failed(p, i, true, e);
		return NEXT_SOURCE;
	}
	kiln_error_free(e);
	if (r < 0)
		return r;
	count_blobs(p, i, 1, b->got);
	return SERVED;
}

static int get_blob(struct pull *p, size_t i, const struct kiln_digest *d,
		    uint64_t size)
{
	_cleanup_free_ char *url = url_for(&p->src[i], "/v1/blobs/", d);
	struct blob_sink b = { .expect = size };
	struct kiln_http_call c = {
		.method = "GET", .url = url, .token = p->src[i].token,
		.sink = blob_write, .sink_ud = &b,
	};
	struct kiln_http_result res = { 0 };
	struct kiln_error *e = NULL;
	int r;

	r = kiln_store_writer_begin(p->store, &b.w, NULL);
	if (r < 0)
		return r;
	kiln_store_writer_defer_sync(b.w); /* one directory sync when the pull ends */
	if (size == UINT64_MAX || size >= PIPELINE_MIN)
		kiln_store_writer_pipeline(b.w); /* hash while receiving */
	count_request(p, i);
	r = kiln_http_client_do(p->http, &c, &res, &e);
	r = blob_finish(p, i, &b, &c, &res, r, e, d);
	if (b.w)
		kiln_store_writer_abort(b.w);
	kiln_http_result_release(&res);
	return r;
}

static int pull_one(struct pull *p, const struct kiln_digest *d, uint64_t size,
		    struct kiln_error **err)
{
	char what[128];
	size_t i;
	int r;

	for (i = 0; i < p->n; i++) {
		if (kiln_store_has(p->store, d))
			return 0;
		if (source_bad(p, i))
			continue;
		r = get_blob(p, i, d, size);
		if (r < 0)
			return kiln_error_seterrno(err, r, "storing blob %s",
						   KILN_DIGEST_STR(d));
		if (r == SERVED)
			return 0;
	}
	snprintf(what, sizeof(what), "blob %s", KILN_DIGEST_STR(d));
	return no_source(p, err, what);
}

/* ---- phase FILES: batches of small blobs ---- */

static size_t count_state(const struct kiln_peer_item *it,
			  enum kiln_peer_blob_state s)
{
	size_t i, k = 0;

	for (i = 0; i < it->n; i++)
		k += it->b[i].state == s;
	return k;
}

/*
 * One batch request for the item's PENDING blobs to source i. A blob
 * counts as stored once verified: should naming them fail, the pull ends
 * (err says why), so nothing relies on an unnamed one.
 */
static int post_batch(struct pull *p, size_t i, struct kiln_peer_item *it,
		      size_t *stored, struct kiln_error **err)
{
	_cleanup_free_ char *url = url_for(&p->src[i], "/v1/blobs/batch", NULL);
	struct kiln_store_group *group;
	struct kiln_peer_framer f;
	json_t *arr, *body;
	size_t k;
	int r, q;

	r = kiln_store_group_new(p->store, &group, err);
	if (r < 0)
		return r;
	kiln_peer_framer_init_batch(&f, p->store, it, group, "POST", url);
	arr = json_array();
	for (k = 0; k < it->n; k++)
		if (it->b[k].state == KILN_PEER_PENDING)
			json_array_append_new(arr, json_string(KILN_DIGEST_STR(&it->b[k].d)));
	body = json_pack("{s:o}", "digests", arr);
	r = framed(p, i, &f, body);
	/*
	 * What was verified is named, whatever became of the request: one
	 * file-system sync for the batch, not an fsync per blob.
	 */
	q = kiln_store_group_commit(f.group, err);
	if (q < 0)
		r = q; /* our disk failed: the pull ends */
	*stored = f.stored;
	json_decref(body);
	kiln_peer_framer_release(&f);
	return r;
}

/* Ask source i until it has sent all it holds of the item. */
static int batch_from(struct pull *p, size_t i, struct kiln_peer_item *it,
		      struct kiln_error **err)
{
	size_t k, stored;
	int r;

	for (k = 0; k < it->n; k++)
		if (it->b[k].state == KILN_PEER_ABSENT)
			it->b[k].state = KILN_PEER_PENDING;
	do {
		r = post_batch(p, i, it, &stored, err);
		if (r != SERVED)
			return r;
	} while (stored > 0 && count_state(it, KILN_PEER_PENDING) > 0);
	return 0;
}

static int pull_batch(struct pull *p, struct kiln_peer_item *it,
		      struct kiln_error **err)
{
	char what[160];
	size_t i, k;
	int r;

	for (i = 0; i < p->n && count_state(it, KILN_PEER_STORED) < it->n; i++) {
		if (source_bad(p, i))
			continue;
		r = batch_from(p, i, it, err);
		if (r < 0)
			return kiln_error_seterrno(err, r, "storing blobs");
	}
	for (k = 0; k < it->n; k++) {
		if (it->b[k].state == KILN_PEER_STORED)
			continue;
		snprintf(what, sizeof(what), "blob %s (and %zu more)",
			 KILN_DIGEST_STR(&it->b[k].d),
			 it->n - count_state(it, KILN_PEER_STORED) - 1);
		return no_source(p, err, what);
	}
	return 0;
}

/* ---- phase FILES: the work queue (items of kiln_peer_plan_files) ---- */

/* The pool's work: one item of the plan each. */
struct queue {
	struct pull *p;
	struct kiln_peer_plan plan;
};

/*
 * The plan is complete before the threads start and never grows while
 * they run, so a thread may hold a pointer to its item.
 */
static int pull_item(void *ud, size_t i, unsigned slot, struct kiln_error **err)
{
	struct queue *q = ud;
	struct kiln_peer_item *it = &q->plan.items[i];

	return it->batch ? pull_batch(q->p, it, err)
			 : pull_one(q->p, &it->b[0].d, it->b[0].size, err);
}

static int pull_files(struct pull *p, const struct kiln_digest_set *files,
		      struct kiln_error **err)
{
	struct queue q = { .p = p };
	int r;

	kiln_peer_plan_files(files, p->small_max, p->batch_bytes, &q.plan);
	r = kiln_pool_run(q.plan.n, p->parallel, pull_item, &q, err);
	kiln_peer_plan_release(&q.plan);
	return r;
}

/* ---- entry points ---- */

static void pull_init(struct pull *p, struct kiln_store *store,
		      const struct kiln_peer_source *sources, size_t n,
		      const struct kiln_peer_pull_options *o,
		      struct kiln_peer_stats *stats)
{
	memset(p, 0, sizeof(*p));
	p->store = store;
	p->src = sources;
	p->n = n;
	p->http = o && o->http ? o->http : kiln_http_client_new(NULL);
	p->parallel = o && o->parallel ? o->parallel : DEFAULT_PARALLEL;
	if (p->parallel > MAX_PARALLEL)
		p->parallel = MAX_PARALLEL;
	p->small_max = o && o->small_max ? o->small_max : DEFAULT_SMALL_MAX;
	p->batch_bytes = o && o->batch_bytes ? o->batch_bytes
					     : DEFAULT_BATCH_BYTES;
	pthread_mutex_init(&p->lock, NULL);
	p->bad = xcalloc(n ? n : 1, sizeof(*p->bad));
	p->why = xcalloc(n ? n : 1, sizeof(*p->why));
	p->stats = stats ? stats : &p->own; /* own is zeroed */
	p->stats->bytes = p->stats->blobs = p->stats->requests = 0;
	p->per = p->stats->sources ? p->stats->sources
				   : xcalloc(n ? n : 1, sizeof(*p->per));
	memset(p->per, 0, (n ? n : 1) * sizeof(*p->per));
}

static void pull_release(struct pull *p, const struct kiln_peer_pull_options *o)
{
	if (!(o && o->http))
		kiln_http_client_free(p->http);
	kiln_strv_free(p->why, p->n);
	free(p->bad);
	if (p->per != p->stats->sources)
		free(p->per);
	pthread_mutex_destroy(&p->lock);
}

int kiln_peer_pull_tree(struct kiln_store *store,
			const struct kiln_digest *root,
			const struct kiln_peer_source *sources, size_t n,
			const struct kiln_peer_pull_options *opts,
			struct kiln_peer_stats *stats, struct kiln_error **err)
{
	struct scan sc = { 0 };
	struct pull p;
	int r;

	pull_init(&p, store, sources, n, opts, stats);
	r = pull_nodes(&p, root, &sc, err);
	if (r == 0)
		r = pull_files(&p, &sc.files, err);
	/* What was named is made durable before anyone relies on it. */
	if (r == 0)
		r = kiln_store_sync(store, err);
	if (r < 0)
		kiln_error_prefix(err, "pulling tree %s", KILN_DIGEST_STR(root));
	scan_release(&sc);
	pull_release(&p, opts);
	return r;
}

int kiln_peer_pull_blob(struct kiln_store *store, const struct kiln_digest *d,
			uint64_t size, const struct kiln_peer_source *sources,
			size_t n, const struct kiln_peer_pull_options *opts,
			struct kiln_peer_stats *stats, struct kiln_error **err)
{
	struct pull p;
	int r;

	pull_init(&p, store, sources, n, opts, stats);
	r = pull_one(&p, d, size, err);
	if (r == 0)
		r = kiln_store_sync(store, err);
	pull_release(&p, opts);
	return r;
}

struct meta_pull {
	struct kiln_store *store;
	const struct kiln_peer_source *sources;
	size_t n;
	const struct kiln_peer_pull_options *opts;
	struct kiln_error **err;
	int r;
};

static void pull_meta_blob(void *ud, size_t i, const struct kiln_digest *d)
{
	struct meta_pull *m = ud;

	/* Already here (kilnd's own, or fetched from a remote cache): nothing to pull. */
	if (d && m->r == 0 && !kiln_store_has(m->store, d))
		m->r = kiln_peer_pull_blob(m->store, d, UINT64_MAX, m->sources, m->n, m->opts,
					   NULL, m->err);
}

int kiln_peer_pull_result(struct kiln_store *store, const struct kiln_digest *tree,
			  const char *meta, const struct kiln_peer_source *sources,
			  size_t n, const struct kiln_peer_pull_options *opts,
			  struct kiln_error **err)
{
	struct meta_pull m = { store, sources, n, opts, err, 0 };

	m.r = kiln_peer_pull_tree(store, tree, sources, n, opts, NULL, err);
	if (m.r == 0 && meta)
		kiln_cache_meta_blobs(meta, pull_meta_blob, &m);
	return m.r;
}

static int parse_missing(json_t *resp, const struct kiln_digest *digests,
			 size_t n, bool *missing, const char *url,
			 struct kiln_error **err)
{
	json_t *arr = json_object_get(resp, "missing"), *v;
	struct kiln_digest_set idx = { 0 };
	struct kiln_digest d;
	uint64_t *k;
	size_t i;
	int r = 0;

	if (!json_is_array(arr))
		return kiln_error_set(err, -EPROTO, "POST %s: no \"missing\" array",
				      url);
	for (i = 0; i < n; i++) {
		kiln_digest_set_put(&idx, &digests[i], i);
		missing[i] = false;
	}
	json_array_foreach(arr, i, v) {
		if (!json_is_string(v) ||
		    kiln_digest_parse(json_string_value(v), &d) < 0 ||
		    !(k = kiln_digest_set_value(&idx, &d))) {
			r = kiln_error_set(err, -EPROTO, "POST %s: \"missing\" "
					   "lists something not asked for", url);
			break;
		}
		missing[*k] = true;
	}
	kiln_digest_set_release(&idx);
	return r;
}

int kiln_peer_find_missing(struct kiln_http_client *http,
			   const struct kiln_peer_source *src,
			   const struct kiln_digest *digests, size_t n,
			   bool *missing, struct kiln_error **err)
{
	_cleanup_free_ char *url = url_for(src, "/v1/blobs/missing", NULL);
	json_t *arr = json_array(), *body, *resp = NULL;
	struct kiln_http_call c = {
		.method = "POST", .url = url, .token = src->token,
	};
	size_t i;
	int r;

	if (n > KILN_PEER_MAX_DIGESTS)
		return kiln_error_set(err, -E2BIG, "find missing: %zu digests, "
				      "at most %u per request", n,
				      KILN_PEER_MAX_DIGESTS);
	for (i = 0; i < n; i++)
		json_array_append_new(arr, json_string(KILN_DIGEST_STR(&digests[i])));
	body = json_pack("{s:o}", "digests", arr);
	c.json = body;
	r = kiln_http_client_json(http, &c, &resp, NULL, err);
	if (r == 0)
		r = parse_missing(resp, digests, n, missing, url, err);
	json_decref(body);
	json_decref(resp);
	return r;
}
