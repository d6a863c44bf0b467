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
#include "basic/strbuf.h"
#include "cache/index.h"
#include "cas/tree.h"
#include "proto/http-client.h"
#include "transfer/peer.h"

#define DEFAULT_PARALLEL 4u
#define DEFAULT_SMALL_MAX (256u << 10)
#define DEFAULT_BATCH_BYTES (4u << 20)
#define MAX_PARALLEL 64u
/* Digests per batch request (well under the server's limit). */
#define BATCH_DIGESTS 1000u
/* Scan rounds before a tree that keeps coming back incomplete is an error. */
#define MAX_ROUNDS 64u

enum blob_state { PENDING = 0, STORED, ABSENT };

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
	struct kiln_peer_stats *stats;
	struct kiln_peer_source_stats *per;
	bool failed;
	struct kiln_error *err;
};

/* A file-phase work item: one large blob or a batch of small ones. */
struct item {
	struct kiln_digest *d;
	uint64_t *size;
	uint8_t *state;
	size_t n;
	bool batch;
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

static void count_blob(struct pull *p, size_t i, uint64_t size)
{
	pthread_mutex_lock(&p->lock);
	p->stats->bytes += size;
	p->stats->blobs++;
	p->per[i].bytes += size;
	p->per[i].blobs++;
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

/* ---- the batch framing parser (docs/api.md) ---- */

/*
 * Framer states (one per framed response):
 *   HEADER --"<digest> <size>"--> BODY --size bytes, committed--> HEADER
 *   HEADER --"<digest> -"--> HEADER   (absent there)
 *   HEADER --"end"--> END             (final: any further byte is an error)
 * A zero-size record commits at once and stays in HEADER.
 */
enum frame_state { F_HEADER, F_BODY, F_END };

struct framer {
	struct pull *p;
	size_t src;
	const char *method, *url;
	bool tree;                  /* any node accepted, up to node size */
	struct kiln_digest_set want; /* batch: digest -> index into item */
	struct item *item;
	enum frame_state state;
	char line[KILN_PEER_FRAME_LINE_MAX];
	size_t llen;
	struct kiln_digest cur;
	uint64_t size, left;
	struct kiln_store_writer *w;
	struct kiln_store_group *group; /* batch: blobs named by one commit */
	size_t stored;
	struct kiln_error *err; /* the source's fault */
	int local;              /* our own failure (disk): ends the pull */
};

static int frame_error(struct framer *f, const char *what, const char *arg)
{
	return kiln_error_set(&f->err, -EPROTO,
			      "%s %s: bad batch framing: %s '%.80s'", f->method,
			      f->url, what, arg);
}

static int frame_commit(struct framer *f)
{
	struct kiln_error *e = NULL;
	int r;

	if (!f->w) /* present already: bytes were only consumed */
		goto done;
	r = f->group ? kiln_store_writer_commit_group(TAKE_PTR(f->w), f->group,
						      &f->cur, &e)
		     : kiln_store_writer_commit(TAKE_PTR(f->w), &f->cur, NULL, &e);
	if (r == -EBADMSG) {
		kiln_error_set(&f->err, r, "%s %s: corrupt data: %s",
			       f->method, f->url, kiln_error_msg(e));
		kiln_error_free(e);
		return r;
	}
	kiln_error_free(e);
	if (r < 0)
		return f->local = r;
	count_blob(f->p, f->src, f->size);
done:
	f->stored++;
	if (f->item)
		f->item->state[*kiln_digest_set_value(&f->want, &f->cur)] = STORED;
	f->state = F_HEADER;
	return 0;
}

/* Check a record's digest and size against what was asked. */
static int frame_expect(struct framer *f, const char *sz, bool absent)
{
	uint64_t *idx = NULL;

	if (!f->tree) {
		idx = kiln_digest_set_value(&f->want, &f->cur);
		if (!idx)
			return frame_error(f, "a blob nobody asked for", f->line);
		if (absent) {
			f->item->state[*idx] = ABSENT;
			return 1;
		}
	}
	if (absent)
		return 1;
	if (kiln_parse_u64(sz, &f->size) < 0)
		return frame_error(f, "bad size", sz);
	if (f->tree && f->size > KILN_TREE_MAX_NODE_BYTES)
		return frame_error(f, "tree node too large", f->line);
	if (!f->tree && f->size != f->item->size[*idx])
		return frame_error(f, "size differs from the tree's", f->line);
	return 0;
}

static int frame_header(struct framer *f)
{
	char *sp;
	int r;

	if (!strcmp(f->line, "end")) {
		f->state = F_END;
		return 0;
	}
	sp = strchr(f->line, ' ');
	if (!sp)
		return frame_error(f, "bad record header", f->line);
	*sp = '\0';
	if (kiln_digest_parse(f->line, &f->cur) < 0)
		return frame_error(f, "bad digest", f->line);
	r = frame_expect(f, sp + 1, !strcmp(sp + 1, "-"));
	if (r != 0)
		return r < 0 ? r : 0;
	f->left = f->size;
	f->state = F_BODY;
	if (!kiln_store_has(f->p->store, &f->cur)) {
		r = kiln_store_writer_begin(f->p->store, &f->w, NULL);
		if (r == 0) /* one directory sync when the pull ends */
			kiln_store_writer_defer_sync(f->w);
		if (r < 0)
			return f->local = r;
	}
	return f->left == 0 ? frame_commit(f) : 0;
}

static int frame_line(struct framer *f, const char *data, size_t len,
		      size_t *used)
{
	const char *nl = memchr(data, '\n', len);
	size_t k = nl ? (size_t)(nl - data) : len;

	*used = nl ? k + 1 : k;
	if (f->llen + k >= sizeof(f->line))
		return frame_error(f, "header line too long", "");
	memcpy(f->line + f->llen, data, k);
	f->llen += k;
	if (!nl)
		return 0;
	f->line[f->llen] = '\0';
	f->llen = 0;
	return frame_header(f);
}

static int frame_body(struct framer *f, const char *data, size_t len,
		      size_t *used)
{
	size_t k = f->left < len ? (size_t)f->left : len;
	int r;

	*used = k;
	if (f->w) {
		r = kiln_store_writer_write(f->w, data, k);
		if (r < 0)
			return f->local = r;
	}
	f->left -= k;
	return f->left == 0 ? frame_commit(f) : 0;
}

static void assert_frame_state(const struct framer *f)
{
	/* A writer is open only inside a record body, never empty. */
	assert(f->state == F_BODY || !f->w);
	assert(f->state != F_BODY || f->left > 0);
	assert(f->state == F_HEADER || f->llen == 0);
	assert(f->llen < sizeof(f->line));
}

static int frame_sink(void *ud, const void *data, size_t len)
{
	struct framer *f = ud;
	const char *s = data;
	size_t used;
	int r;

	while (len > 0) {
		assert_frame_state(f);
		if (f->state == F_END)
			return frame_error(f, "bytes after the end line", "");
		r = f->state == F_HEADER ? frame_line(f, s, len, &used)
					 : frame_body(f, s, len, &used);
		if (r < 0)
			return r;
		s += used;
		len -= used;
	}
	return 0;
}

static void framer_release(struct framer *f)
{
	if (f->w)
		kiln_store_writer_abort(f->w);
	kiln_store_group_free(f->group);
	kiln_digest_set_release(&f->want);
	kiln_error_free(f->err);
}

/*
 * Judge a framed exchange: SERVED, NEXT_SOURCE (source i told why) or a
 * local error. A 404 is only "not here"; everything else wrong is bad.
 */
static int judge(struct pull *p, struct framer *f, const struct kiln_http_call *c,
		 struct kiln_http_result *res, int r, struct kiln_error *e)
{
	if (f->local < 0) {
		kiln_error_free(e);
		return f->local;
	}
	if (f->err) {
		kiln_error_free(e);
		source_failed(p, f->src, true, TAKE_PTR(f->err));
		return NEXT_SOURCE;
	}
	if (r < 0) {
		source_failed(p, f->src, true, e);
		return NEXT_SOURCE;
	}
	if (res->status < 200 || res->status > 299) {
		kiln_http_status_error(&e, c, res);
		source_failed(p, f->src, res->status != 404, e);
		return NEXT_SOURCE;
	}
	if (f->state != F_END) {
		kiln_error_set(&e, -EPROTO, "%s %s: response ended early",
			       c->method, c->url);
		source_failed(p, f->src, true, e);
		return NEXT_SOURCE;
	}
	return SERVED;
}

/* One framed request (trees GET or batch POST) to source f->src. */
static int framed(struct pull *p, struct framer *f, const char *method,
		  const char *url, json_t *body)
{
	const struct kiln_peer_source *s = &p->src[f->src];
	struct kiln_http_call c = {
		.method = method, .url = url, .token = s->token, .json = body,
		.sink = frame_sink, .sink_ud = f,
	};
	struct kiln_http_result res;
	struct kiln_error *e = NULL;
	int r;

	f->p = p;
	f->method = method;
	f->url = url;
	count_request(p, f->src);
	r = kiln_http_client_do(p->http, &c, &res, &e);
	r = judge(p, f, &c, &res, r, e);
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
		struct framer f = { .src = i, .tree = true };

		if (source_bad(p, i))
			continue;
		url = url_for(&p->src[i], "/v1/trees/", d);
		r = framed(p, &f, "GET", url, NULL);
		framer_release(&f);
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
	count_blob(p, i, b->got);
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

static size_t count_state(const struct item *it, enum blob_state s)
{
	size_t i, k = 0;

	for (i = 0; i < it->n; i++)
		k += it->state[i] == s;
	return k;
}

/*
 * One batch request for the item's PENDING blobs to source i. A blob
 * counts as stored once verified: should naming them fail, the pull ends
 * (err says why), so nothing relies on an unnamed one.
 */
static int post_batch(struct pull *p, size_t i, struct item *it,
		      size_t *stored, struct kiln_error **err)
{
	_cleanup_free_ char *url = url_for(&p->src[i], "/v1/blobs/batch", NULL);
	struct framer f = { .src = i, .item = it };
	json_t *arr, *body;
	size_t k;
	int r, q;

	r = kiln_store_group_new(p->store, &f.group, err);
	if (r < 0)
		return r;
	arr = json_array();
	for (k = 0; k < it->n; k++) {
		if (it->state[k] != PENDING)
			continue;
		kiln_digest_set_put(&f.want, &it->d[k], k);
		json_array_append_new(arr, json_string(KILN_DIGEST_STR(&it->d[k])));
	}
	body = json_pack("{s:o}", "digests", arr);
	r = framed(p, &f, "POST", url, body);
	/*
	 * What was verified is named, whatever became of the request: one
	 * file-system sync for the batch, not an fsync per blob.
	 */
	q = kiln_store_group_commit(f.group, err);
	if (q < 0)
		r = q; /* our disk failed: the pull ends */
	*stored = f.stored;
	json_decref(body);
	framer_release(&f);
	return r;
}

/* Ask source i until it has sent all it holds of the item. */
static int batch_from(struct pull *p, size_t i, struct item *it,
		      struct kiln_error **err)
{
	size_t k, stored;
	int r;

	for (k = 0; k < it->n; k++)
		if (it->state[k] == ABSENT)
			it->state[k] = PENDING;
	do {
		r = post_batch(p, i, it, &stored, err);
		if (r != SERVED)
			return r;
	} while (stored > 0 && count_state(it, PENDING) > 0);
	return 0;
}

static int pull_batch(struct pull *p, struct item *it, struct kiln_error **err)
{
	char what[160];
	size_t i, k;
	int r;

	for (i = 0; i < p->n && count_state(it, STORED) < it->n; i++) {
		if (source_bad(p, i))
			continue;
		r = batch_from(p, i, it, err);
		if (r < 0)
			return kiln_error_seterrno(err, r, "storing blobs");
	}
	for (k = 0; k < it->n; k++) {
		if (it->state[k] == STORED)
			continue;
		snprintf(what, sizeof(what), "blob %s (and %zu more)",
			 KILN_DIGEST_STR(&it->d[k]),
			 it->n - count_state(it, STORED) - 1);
		return no_source(p, err, what);
	}
	return 0;
}

/* ---- phase FILES: the work queue ---- */

struct queue {
	struct pull *p;
	struct item *items;
	size_t n, next;
};

static void item_release(struct item *it)
{
	free(it->d);
	free(it->size);
	free(it->state);
}

static struct item *new_item(struct queue *q, size_t *alloc, bool batch)
{
	struct item *it;

	q->items = xgrow(q->items, alloc, q->n + 1, sizeof(*q->items));
	it = &q->items[q->n++];
	memset(it, 0, sizeof(*it));
	it->batch = batch;
	return it;
}

static void item_add(struct item *it, const struct kiln_digest *d,
		     uint64_t size)
{
	it->d = xrealloc(it->d, (it->n + 1) * sizeof(*it->d));
	it->size = xrealloc(it->size, (it->n + 1) * sizeof(*it->size));
	it->state = xrealloc(it->state, (it->n + 1) * sizeof(*it->state));
	it->d[it->n] = *d;
	it->size[it->n] = size;
	it->state[it->n] = PENDING;
	it->n++;
}

/* Large blobs one item each; small ones packed into batches. */
static void plan(struct pull *p, const struct kiln_digest_set *files,
		 struct queue *q)
{
	struct item *batch = NULL;
	uint64_t bytes = 0;
	size_t alloc = 0, i;

	for (i = 0; i < files->cap; i++) {
		const struct kiln_digest *d = &files->slots[i];
		uint64_t size = files->vals[i];

		if (!kiln_digest_is_set(d))
			continue;
		if (size > p->small_max) {
			item_add(new_item(q, &alloc, false), d, size);
			continue;
		}
		if (!batch || batch->n == BATCH_DIGESTS ||
		    bytes + size > p->batch_bytes) {
			batch = new_item(q, &alloc, true);
			bytes = 0;
		}
		item_add(batch, d, size);
		bytes += size;
	}
}

static void *worker(void *ud)
{
	struct queue *q = ud;
	struct pull *p = q->p;
	struct kiln_error *e = NULL;
	struct item *it;
	int r;

	for (;;) {
		pthread_mutex_lock(&p->lock);
		it = !p->failed && q->next < q->n ? &q->items[q->next++] : NULL;
		pthread_mutex_unlock(&p->lock);
		if (!it)
			return NULL;
		r = it->batch ? pull_batch(p, it, &e)
			      : pull_one(p, it->d, it->size[0], &e);
		if (r < 0) {
			pthread_mutex_lock(&p->lock);
			p->failed = true;
			if (!p->err)
				p->err = TAKE_PTR(e);
			pthread_mutex_unlock(&p->lock);
			kiln_error_free(TAKE_PTR(e));
		}
	}
}

static int run_queue(struct pull *p, struct queue *q, struct kiln_error **err)
{
	pthread_t t[MAX_PARALLEL];
	size_t k, nt = p->parallel < q->n ? p->parallel : q->n;
	int code;

	q->p = p;
	for (k = 0; k < nt; k++)
		if (pthread_create(&t[k], NULL, worker, q) != 0)
			break;
	if (k == 0)
		worker(q); /* no thread could start: do it here */
	nt = k;
	for (k = 0; k < nt; k++)
		pthread_join(t[k], NULL);
	if (!p->failed)
		return 0;
	code = p->err ? p->err->code : -EIO;
	if (err && !*err)
		*err = TAKE_PTR(p->err);
	return code;
}

static int pull_files(struct pull *p, const struct kiln_digest_set *files,
		      struct kiln_error **err)
{
	struct queue q = { 0 };
	size_t i;
	int r;

	plan(p, files, &q);
	r = q.n ? run_queue(p, &q, err) : 0;
	for (i = 0; i < q.n; i++)
		item_release(&q.items[i]);
	free(q.items);
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
	p->stats = stats;
	p->per = stats->sources ? stats->sources
				: xcalloc(n ? n : 1, sizeof(*p->per));
	memset(p->per, 0, (n ? n : 1) * sizeof(*p->per));
}

static void pull_release(struct pull *p, const struct kiln_peer_pull_options *o)
{
	size_t i;

	if (!(o && o->http))
		kiln_http_client_free(p->http);
	for (i = 0; i < p->n; i++)
		free(p->why[i]);
	free(p->why);
	free(p->bad);
	if (p->per != p->stats->sources)
		free(p->per);
	kiln_error_free(p->err);
	pthread_mutex_destroy(&p->lock);
}

int kiln_peer_pull_tree(struct kiln_store *store,
			const struct kiln_digest *root,
			const struct kiln_peer_source *sources, size_t n,
			const struct kiln_peer_pull_options *opts,
			struct kiln_peer_stats *stats, struct kiln_error **err)
{
	struct kiln_peer_stats local = { 0 };
	struct scan sc = { 0 };
	struct pull p;
	int r;

	if (!stats)
		stats = &local;
	stats->bytes = stats->blobs = stats->requests = 0;
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
	struct kiln_peer_stats local = { 0 };
	struct pull p;
	int r;

	if (!stats)
		stats = &local;
	stats->bytes = stats->blobs = stats->requests = 0;
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

	if (d && m->r == 0)
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
