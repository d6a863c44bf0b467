/*
 * The remote cache: records and blobs over a backend (rcache.h,
 * docs/internals/remote-cache.md).
 */
#include "rcache/rcache.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "cas/digest-set.h"
#include "cas/tree.h"
#include "rcache/rcache-internal.h"

#define MAX_OUTPUTS 16
/* A fetch may copy twice its record's size plus this (nodes, layers). */
#define FETCH_SLACK (4ull << 30)
#define MAX_TEXT 4096 /* worker, platform */

struct kiln_rcache {
	struct kiln_rcache_backend be;
	struct breaker *br;
	pthread_mutex_t lock;
	char *down; /* why this cache stopped calling, for the warning */
	atomic_bool stopped; /* kiln_rcache_stop(): calls fail at once */
};

/*
 * Circuit breakers, one per endpoint (the backend's breaker key), shared by
 * every cache object of the process: after a failure that is not a miss
 * the endpoint is not called for KILN_RCACHE_COOLDOWN_S; then one call
 * probes it (the others still fail fast) and its outcome closes or reopens
 * the breaker. Breakers live as long as the process (few endpoints).
 */
struct breaker {
	struct breaker *next;
	char *key;
	bool open, probing;
	uint64_t until_ns; /* monotonic */
	char *why;         /* the failure that opened it, for every cache's warning */
};

static pthread_mutex_t breakers_lock = PTHREAD_MUTEX_INITIALIZER;
static struct breaker *breakers;

static struct breaker *breaker_for(const char *key)
{
	struct breaker *b;

	pthread_mutex_lock(&breakers_lock);
	for (b = breakers; b && strcmp(b->key, key); b = b->next)
		;
	if (!b) {
		b = xcalloc(1, sizeof(*b));
		b->key = xstrdup(key);
		b->next = breakers;
		breakers = b;
	}
	pthread_mutex_unlock(&breakers_lock);
	return b;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct kiln_rcache *kiln_rcache_new(const struct kiln_rcache_backend *backend)
{
	struct kiln_rcache *rc = xcalloc(1, sizeof(*rc));

	rc->be = *backend;
	rc->br = breaker_for(backend->breaker ? backend->breaker : backend->name);
	pthread_mutex_init(&rc->lock, NULL);
	return rc;
}

void kiln_rcache_free(struct kiln_rcache *rc)
{
	if (!rc)
		return;
	if (rc->be.free)
		rc->be.free(rc->be.b);
	pthread_mutex_destroy(&rc->lock);
	free(rc->down);
	free(rc);
}

void kiln_rcache_stop(struct kiln_rcache *rc)
{
	if (rc)
		atomic_store(&rc->stopped, true);
}

const char *kiln_rcache_name(const struct kiln_rcache *rc)
{
	return rc->be.name;
}

const char *kiln_rcache_unavailable(struct kiln_rcache *rc)
{
	const char *d;

	pthread_mutex_lock(&rc->lock);
	d = rc->down;
	pthread_mutex_unlock(&rc->lock);
	return d;
}

static void set_down(struct kiln_rcache *rc, const char *why)
{
	pthread_mutex_lock(&rc->lock);
	if (!rc->down)
		rc->down = xstrdup(why);
	pthread_mutex_unlock(&rc->lock);
}

/* ---- calls: a failure that is not a miss opens the endpoint's breaker ---- */

/* 0: call (*probe: as the breaker's probe); -EHOSTDOWN: it is open. */
static int check_up(struct kiln_rcache *rc, bool *probe, struct kiln_error **err)
{
	struct breaker *b = rc->br;
	bool open;

	*probe = false;
	pthread_mutex_lock(&breakers_lock);
	open = b->open;
	if (open && !b->probing && mono_ns() >= b->until_ns) {
		b->probing = true;
		*probe = true;
		open = false;
	}
	if (open) {
		_cleanup_free_ char *why = xasprintf("%s (not called again for %u s)",
						     b->why ? b->why : "it failed",
						     KILN_RCACHE_COOLDOWN_S);

		pthread_mutex_unlock(&breakers_lock);
		set_down(rc, why);
		return kiln_error_set(err, -EHOSTDOWN, "remote cache %s unavailable: %s",
				      rc->be.name, kiln_rcache_unavailable(rc));
	}
	pthread_mutex_unlock(&breakers_lock);
	if (atomic_load(&rc->stopped))
		return kiln_error_set(err, -ECANCELED, "remote cache %s: stopping", rc->be.name);
	return 0;
}

/*
 * r from the backend, e its error: a miss (-ENOENT), a corrupt or oversized
 * object (our verdict) leave the endpoint up; anything else opens its
 * breaker, with e's message as this cache's reason. e goes to err (first
 * cause wins).
 */
static int note(struct kiln_rcache *rc, int r, bool probe, struct kiln_error *e,
		struct kiln_error **err)
{
	bool failed = r < 0 && r != -ENOENT && r != -EBADMSG && r != -EFBIG && r != -ECANCELED;
	struct breaker *b = rc->br;

	pthread_mutex_lock(&breakers_lock);
	if (failed) {
		b->open = true;
		b->until_ns = mono_ns() + KILN_RCACHE_COOLDOWN_S * 1000000000ull;
		free(b->why);
		b->why = xstrdup(e ? kiln_error_msg(e) : strerror(-r));
	} else if (probe || !b->open) {
		b->open = false;
	}
	if (probe)
		b->probing = false;
	pthread_mutex_unlock(&breakers_lock);
	if (failed)
		set_down(rc, e ? kiln_error_msg(e) : strerror(-r));
	if (e && err && !*err)
		*err = e;
	else
		kiln_error_free(e);
	return r;
}

static int be_get(struct kiln_rcache *rc, const char *name, uint64_t limit,
		  int (*sink)(void *ud, const void *data, size_t n), void *ud,
		  struct kiln_error **err)
{
	struct kiln_error *e = NULL;
	bool probe;
	int r = check_up(rc, &probe, err);

	if (r)
		return r;
	r = rc->be.get(rc->be.b, name, limit, sink, ud, &e);
	return note(rc, r, probe, e, err);
}

static int be_has(struct kiln_rcache *rc, const char *name, struct kiln_error **err)
{
	struct kiln_error *e = NULL;
	bool probe;
	int r = check_up(rc, &probe, err);

	if (r)
		return r;
	r = rc->be.has(rc->be.b, name, &e);
	return note(rc, r, probe, e, err);
}

/* has(), touching what is there when the backend can. */
static int be_touch(struct kiln_rcache *rc, const char *name, struct kiln_error **err)
{
	struct kiln_error *e = NULL;
	bool probe;
	int r;

	if (!rc->be.touch)
		return be_has(rc, name, err);
	r = check_up(rc, &probe, err);
	if (r)
		return r;
	r = rc->be.touch(rc->be.b, name, &e);
	return note(rc, r, probe, e, err);
}

static int be_put(struct kiln_rcache *rc, const char *name, int fd, const void *data,
		  uint64_t size, struct kiln_error **err)
{
	struct kiln_error *e = NULL;
	bool probe;
	int r = check_up(rc, &probe, err);

	if (r)
		return r;
	r = rc->be.put(rc->be.b, name, fd, data, size, &e);
	return note(rc, r, probe, e, err);
}

int rcache_get_raw(struct kiln_rcache *rc, const char *name, uint64_t limit,
		   int (*sink)(void *ud, const void *data, size_t n), void *ud,
		   struct kiln_error **err)
{
	return be_get(rc, name, limit, sink, ud, err);
}

int rcache_list(struct kiln_rcache *rc, const char *prefix,
		int (*fn)(void *ud, const char *name, uint64_t size, int64_t mtime),
		void *ud, struct kiln_error **err)
{
	struct kiln_error *e = NULL;
	bool probe;
	int r;

	if (!rc->be.list)
		return kiln_error_set(err, -ENOTSUP, "%s cannot be listed", rc->be.name);
	r = check_up(rc, &probe, err);
	if (r)
		return r;
	r = rc->be.list(rc->be.b, prefix, fn, ud, &e);
	return note(rc, r, probe, e, err);
}

int rcache_del(struct kiln_rcache *rc, const char *name, struct kiln_error **err)
{
	struct kiln_error *e = NULL;
	bool probe;
	int r;

	if (!rc->be.del)
		return kiln_error_set(err, -ENOTSUP, "%s cannot delete", rc->be.name);
	r = check_up(rc, &probe, err);
	if (r)
		return r;
	r = rc->be.del(rc->be.b, name, &e);
	return note(rc, r, probe, e, err);
}

/* ---- names ---- */

static char *blob_name(const struct kiln_digest *d)
{
	char hex[KILN_DIGEST_HEXLEN];

	return xasprintf("cas/sha256/%s", kiln_digest_hex(d, hex));
}

/* "sha256:<hex>" -> "ac/sha256/<hex>"; NULL for anything else. */
static char *record_name(const char *key)
{
	struct kiln_digest d;
	char hex[KILN_DIGEST_HEXLEN];

	if (!key || kiln_digest_parse(key, &d) < 0)
		return NULL;
	return xasprintf("ac/sha256/%s", kiln_digest_hex(&d, hex));
}

/* ---- records ---- */

char *kiln_rcache_record_encode(const char *key, const struct kiln_cache_record *rec)
{
	json_t *outs = json_array(), *meta = NULL, *o;
	char *s;
	size_t i;

	for (i = 0; i < rec->n_outputs; i++)
		json_array_append_new(outs, json_string(KILN_DIGEST_STR(&rec->outputs[i])));
	if (rec->meta)
		meta = json_loads(rec->meta, 0, NULL);
	o = json_pack("{s:i, s:s, s:s*, s:o, s:o*, s:I, s:I, s:s*, s:s*, s:I, s:s, s:b}",
		      "kiln_cache_record", KILN_RCACHE_RECORD_VERSION, "key", key,
		      "op", rec->op, "outputs", outs, "meta", meta,
		      "created", (json_int_t)rec->created,
		      "duration_ms", (json_int_t)rec->duration_ms,
		      "platform", rec->platform, "worker", rec->worker,
		      "size", (json_int_t)rec->size, "producer", "kiln",
		      "emulated", rec->emulated);
	if (!o)
		return NULL;
	s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(o);
	return s;
}

static int bad_record(const char *key, struct kiln_error **err, const char *what)
{
	return kiln_error_set(err, -EBADMSG, "cache record %s: %s", key, what);
}

static bool digest_str_ok(const json_t *v)
{
	struct kiln_digest d;

	return json_is_string(v) && kiln_digest_parse(json_string_value(v), &d) == 0;
}

static bool text_ok(const json_t *v)
{
	return !v || json_is_null(v) || (json_is_string(v) && json_string_length(v) <= MAX_TEXT &&
		      !memchr(json_string_value(v), '\0', json_string_length(v)));
}

static bool count_ok(const json_t *v)
{
	return json_is_integer(v) && json_integer_value(v) >= 0;
}

static int check_record(const char *key, json_t *o, struct kiln_error **err)
{
	json_t *outs = json_object_get(o, "outputs"), *v, *meta = json_object_get(o, "meta");
	size_t i;

	if (!json_is_object(o))
		return bad_record(key, err, "not a JSON object");
	v = json_object_get(o, "kiln_cache_record");
	if (!json_is_integer(v) || json_integer_value(v) != KILN_RCACHE_RECORD_VERSION)
		return bad_record(key, err, "unknown record version");
	v = json_object_get(o, "key");
	if (!json_is_string(v) || strcmp(json_string_value(v), key))
		return bad_record(key, err, "stored under another key");
	v = json_object_get(o, "op");
	if (v && !json_is_null(v) && !digest_str_ok(v))
		return bad_record(key, err, "bad op digest");
	if (!json_is_array(outs) || json_array_size(outs) == 0 ||
	    json_array_size(outs) > MAX_OUTPUTS)
		return bad_record(key, err, "bad outputs");
	json_array_foreach(outs, i, v)
		if (!digest_str_ok(v))
			return bad_record(key, err, "bad output digest");
	if (meta && !json_is_null(meta) && !json_is_object(meta))
		return bad_record(key, err, "meta is not an object");
	if (!count_ok(json_object_get(o, "created")) ||
	    !count_ok(json_object_get(o, "duration_ms")) ||
	    !count_ok(json_object_get(o, "size")))
		return bad_record(key, err, "bad created, duration_ms or size");
	if (!text_ok(json_object_get(o, "platform")) || !text_ok(json_object_get(o, "worker")))
		return bad_record(key, err, "bad platform or worker");
	v = json_object_get(o, "emulated"); /* optional: records before it say nothing */
	if (v && !json_is_boolean(v))
		return bad_record(key, err, "emulated is not a boolean");
	return 0;
}

static char *opt_dup(json_t *o, const char *name)
{
	json_t *v = json_object_get(o, name);

	return json_is_string(v) ? xstrdup(json_string_value(v)) : NULL;
}

int kiln_rcache_record_decode(const char *key, const void *data, size_t len,
			      struct kiln_cache_record *out, struct kiln_error **err)
{
	json_error_t jerr;
	json_t *o = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr), *v;
	size_t i;
	int r;

	memset(out, 0, sizeof(*out));
	if (!o)
		return kiln_error_set(err, -EBADMSG, "cache record %s: bad JSON: %s",
				      key, jerr.text);
	r = check_record(key, o, err);
	if (r < 0) {
		json_decref(o);
		return r;
	}
	out->key = xstrdup(key);
	out->op = opt_dup(o, "op");
	out->n_outputs = json_array_size(json_object_get(o, "outputs"));
	out->outputs = xcalloc(out->n_outputs, sizeof(*out->outputs));
	json_array_foreach(json_object_get(o, "outputs"), i, v)
		kiln_digest_parse(json_string_value(v), &out->outputs[i]);
	if ((v = json_object_get(o, "meta")) && json_is_object(v))
		out->meta = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
	out->created = json_integer_value(json_object_get(o, "created"));
	out->duration_ms = (uint64_t)json_integer_value(json_object_get(o, "duration_ms"));
	out->size = (uint64_t)json_integer_value(json_object_get(o, "size"));
	out->platform = opt_dup(o, "platform");
	out->worker = opt_dup(o, "worker");
	out->emulated = json_is_true(json_object_get(o, "emulated"));
	json_decref(o);
	return 0;
}

struct buf_sink {
	char *p;
	size_t len, alloc;
};

static int to_buf(void *ud, const void *data, size_t n)
{
	struct buf_sink *b = ud;

	b->p = xgrow(b->p, &b->alloc, b->len + n + 1, 1);
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

int kiln_rcache_get(struct kiln_rcache *rc, const char *key,
		    struct kiln_cache_record *out, struct kiln_error **err)
{
	_cleanup_free_ char *name = record_name(key);
	struct buf_sink b = { 0 };
	int r;

	memset(out, 0, sizeof(*out));
	if (!name)
		return kiln_error_set(err, -EINVAL, "remote cache: bad key '%s'", key ? key : "");
	r = be_get(rc, name, KILN_RCACHE_MAX_RECORD, to_buf, &b, err);
	if (r == 0)
		r = kiln_rcache_record_decode(key, b.p ? b.p : "", b.len, out, err);
	else if (r == -EFBIG)
		r = kiln_error_set(err, -EBADMSG, "cache record %s: larger than %u bytes",
				   key, KILN_RCACHE_MAX_RECORD);
	if (r < 0 && r != -ENOENT)
		kiln_error_prefix(err, "remote cache %s", rc->be.name);
	free(b.p);
	return r;
}

int rcache_read_node(struct kiln_rcache *rc, const struct kiln_digest *d,
		     struct kiln_tree *out, struct kiln_error **err)
{
	_cleanup_free_ char *name = blob_name(d);
	struct buf_sink b = { 0 };
	struct kiln_digest got;
	int r;

	kiln_tree_init(out);
	r = be_get(rc, name, KILN_TREE_MAX_NODE_BYTES, to_buf, &b, err);
	if (r == -ENOENT || r == -EFBIG)
		r = kiln_error_set(err, -EBADMSG, "tree node %s is %s", KILN_DIGEST_STR(d),
				   r == -ENOENT ? "missing" : "too large");
	if (r == 0) {
		kiln_digest_buf(b.p ? b.p : "", b.len, &got);
		if (!kiln_digest_eq(&got, d))
			r = kiln_error_set(err, -EBADMSG, "tree node %s holds other bytes (%s)",
					   KILN_DIGEST_STR(d), KILN_DIGEST_STR(&got));
	}
	if (r == 0) {
		r = kiln_tree_decode(b.p ? b.p : "", b.len, out, err);
		if (r < 0) {
			kiln_error_prefix(err, "tree node %s", KILN_DIGEST_STR(d));
			r = -EBADMSG;
		}
	}
	free(b.p);
	return r;
}

/* ---- fetching: remote -> store, every blob verified before it is named ---- */

struct fetch {
	struct kiln_rcache *rc;
	struct kiln_store *store;
	struct kiln_digest_set seen; /* nodes done */
	uint64_t bytes;
	uint64_t budget; /* bytes this fetch may copy at most */
	uint64_t size;   /* what the record says its trees hold */
	bool bad;        /* a blob was missing or held other bytes */
	struct kiln_error **err;
};

/*
 * A blob that holds other bytes than its name says is removed, best
 * effort: a put skips what is there, so otherwise no writer would ever
 * mend it. Readers verify, so nothing used it meanwhile.
 */
static void drop_remote(struct kiln_rcache *rc, const char *name, const char *why)
{
	_cleanup_error_ struct kiln_error *e = NULL;

	/*
	 * Past the breaker: a cache read with credentials that may not
	 * delete (a CI runner's --cache-from) must not lose the cache for it.
	 */
	if (!rc->be.del)
		return;
	if (rc->be.del(rc->be.b, name, &e) == 0)
		log_info("remote cache %s: removed %s (%s)", rc->be.name, name, why);
	else
		log_debug("remote cache %s: cannot remove corrupt %s: %s", rc->be.name, name,
			  kiln_error_msg(e));
}

struct to_writer {
	struct kiln_store_writer *w;
	uint64_t n;
	int local; /* the store's own failure (disk full...), or 0 */
};

/*
 * A failure of the local store is not the remote's: it stops the transfer
 * as -ECANCELED (which leaves the endpoint's breaker alone) and is
 * reported as what it is.
 */
static int to_writer(void *ud, const void *data, size_t n)
{
	struct to_writer *t = ud;
	int r = kiln_store_writer_write(t->w, data, n);

	t->n += n;
	if (r < 0) {
		t->local = r;
		return -ECANCELED;
	}
	return 0;
}

static int fetch_blob(struct fetch *f, const struct kiln_digest *d, uint64_t limit)
{
	_cleanup_free_ char *name = NULL;
	struct to_writer t = { 0 };
	int r;

	if (kiln_store_has(f->store, d))
		return 0;
	name = blob_name(d);
	r = kiln_store_writer_begin(f->store, &t.w, f->err);
	if (r < 0)
		return r;
	kiln_store_writer_defer_sync(t.w); /* kiln_rcache_fetch syncs once */
	if (limit > f->budget - f->bytes)
		limit = f->budget - f->bytes;
	r = be_get(f->rc, name, limit, to_writer, &t, f->err);
	if (r == -EFBIG && f->bytes + limit >= f->budget) {
		kiln_store_writer_abort(t.w);
		return kiln_error_set(f->err, -EBADMSG,
				      "more than %llu bytes for one record (its size says %llu)",
				      (unsigned long long)f->budget, (unsigned long long)f->size);
	}
	if (r < 0 && t.local) {
		kiln_store_writer_abort(t.w);
		return kiln_error_seterrno(f->err, t.local, "storing blob %s locally",
					   KILN_DIGEST_STR(d));
	}
	if (r < 0) {
		kiln_store_writer_abort(t.w);
		f->bad = r == -ENOENT;
		if (r == -ENOENT)
			return kiln_error_set(f->err, -EBADMSG,
					      "blob %s is missing (a record or node names it)",
					      KILN_DIGEST_STR(d));
		if (r == -EFBIG)
			return kiln_error_set(f->err, -EBADMSG, "blob %s is larger than %llu bytes",
					      KILN_DIGEST_STR(d), (unsigned long long)limit);
		return r;
	}
	r = kiln_store_writer_commit(t.w, d, NULL, f->err);
	if (r == 0)
		f->bytes += t.n;
	if (r == -EBADMSG) { /* other bytes under this name */
		f->bad = true;
		drop_remote(f->rc, name, "it held other bytes");
	}
	return r;
}

static int fetch_tree(struct fetch *f, const struct kiln_digest *d, unsigned depth)
{
	struct kiln_tree t = KILN_TREE_INIT;
	bool node_ok;
	size_t i;
	int r;

	if (kiln_tree_is_empty_digest(d) || kiln_digest_set_has(&f->seen, d))
		return 0;
	if (depth > KILN_TREE_MAX_DEPTH)
		return kiln_error_set(f->err, -EBADMSG, "tree deeper than %u levels",
				      KILN_TREE_MAX_DEPTH);
	r = fetch_blob(f, d, KILN_TREE_MAX_NODE_BYTES);
	node_ok = r == 0;
	r = r ? r : kiln_tree_get(f->store, d, &t, f->err);
	for (i = 0; r == 0 && i < t.n; i++) {
		const struct kiln_tree_entry *e = &t.entries[i];

		if (e->type == KILN_ENTRY_DIR)
			r = fetch_tree(f, &e->digest, depth + 1);
		else if (e->type == KILN_ENTRY_FILE)
			r = fetch_blob(f, &e->digest, e->size);
	}
	kiln_tree_release(&t);
	if (r == 0)
		kiln_digest_set_add(&f->seen, d);
	/*
	 * A node in the remote promises its whole subtree (a put skips below
	 * one that is there): with a blob under it gone, it goes too, on the
	 * way up, so the next put writes the path again.
	 */
	if (r < 0 && f->bad && node_ok) {
		_cleanup_free_ char *name = blob_name(d);

		drop_remote(f->rc, name, "a blob under it is missing or corrupt");
	}
	return r;
}

struct meta_walk {
	struct fetch *f;
	int r;
};

static void fetch_meta_blob(void *ud, size_t i, const struct kiln_digest *d)
{
	struct meta_walk *m = ud;

	(void)i;
	if (m->r == 0 && d)
		m->r = fetch_blob(m->f, d, UINT64_MAX);
}

int kiln_rcache_fetch_tree(struct kiln_rcache *rc, const struct kiln_digest *tree,
			   struct kiln_store *store, uint64_t budget, uint64_t *bytes,
			   struct kiln_error **err)
{
	struct fetch f = { .rc = rc, .store = store, .err = err, .size = budget,
			   .budget = budget };
	int r = fetch_tree(&f, tree, 1);

	if (r == 0)
		r = kiln_store_sync(store, err);
	kiln_digest_set_release(&f.seen);
	if (bytes)
		*bytes = f.bytes;
	if (r < 0)
		kiln_error_prefix(err, "remote cache %s: tree %s", rc->be.name, KILN_DIGEST_STR(tree));
	return r;
}

int kiln_rcache_fetch(struct kiln_rcache *rc, const struct kiln_cache_record *rec,
		      struct kiln_store *store, uint64_t *bytes,
		      struct kiln_error **err)
{
	/*
	 * The record's own size (its trees' files) plus room for nodes and
	 * meta blobs (image layers): a forged record cannot make a fetch fill
	 * the disk much past what it claims.
	 */
	struct fetch f = { .rc = rc, .store = store, .err = err, .size = rec->size,
			   .budget = rec->size > UINT64_MAX / 2 - FETCH_SLACK
					     ? UINT64_MAX / 2 : 2 * rec->size + FETCH_SLACK };
	struct meta_walk m = { &f, 0 };
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < rec->n_outputs; i++)
		r = fetch_tree(&f, &rec->outputs[i], 1);
	if (r == 0) {
		kiln_cache_meta_blobs(rec->meta, fetch_meta_blob, &m);
		r = m.r;
	}
	if (r == 0)
		r = kiln_store_sync(store, err);
	kiln_digest_set_release(&f.seen);
	if (bytes)
		*bytes = f.bytes;
	/* A record whose data is gone or corrupt goes too: an export of the
	 * same result writes both again. */
	if (f.bad && rec->key) {
		_cleanup_free_ char *name = record_name(rec->key);

		if (name)
			drop_remote(rc, name, "a blob it names is missing or corrupt");
	}
	if (r < 0)
		kiln_error_prefix(err, "remote cache %s: record %s", rc->be.name,
				  rec->key ? rec->key : "");
	return r;
}

/* ---- putting: store -> remote; files, then nodes bottom-up, then records ---- */

struct upload {
	struct kiln_rcache *rc;
	struct kiln_store *store;
	struct kiln_digest_set seen;
	uint64_t bytes;
	struct kiln_error **err;
};

/* Copy blob d unless the remote has it (force: do not ask, a node's files). */
static int put_blob(struct upload *u, const struct kiln_digest *d)
{
	_cleanup_free_ char *name = blob_name(d);
	_cleanup_close_ int fd = -1;
	uint64_t size = 0;
	/* There: touched, so a gc running now keeps it for this record. */
	int r = be_touch(u->rc, name, u->err);

	if (r != 0)
		return r < 0 ? r : 0;
	r = kiln_store_size(u->store, d, &size);
	if (r < 0)
		return kiln_error_seterrno(u->err, r, "blob %s is not in the local store",
					   KILN_DIGEST_STR(d));
	fd = kiln_store_open_blob(u->store, d);
	if (fd < 0)
		return kiln_error_seterrno(u->err, fd, "opening blob %s", KILN_DIGEST_STR(d));
	r = be_put(u->rc, name, fd, NULL, size, u->err);
	if (r == 0)
		u->bytes += size;
	return r;
}

/*
 * A node that is there stands for everything below it; otherwise its
 * files and subtrees go first and the node last.
 */
static int put_tree(struct upload *u, const struct kiln_digest *d, unsigned depth)
{
	_cleanup_free_ char *name = NULL;
	struct kiln_tree t = KILN_TREE_INIT;
	size_t i;
	int r;

	if (kiln_tree_is_empty_digest(d) || kiln_digest_set_has(&u->seen, d))
		return 0;
	if (depth > KILN_TREE_MAX_DEPTH)
		return kiln_error_set(u->err, -ELOOP, "tree deeper than %u levels",
				      KILN_TREE_MAX_DEPTH);
	name = blob_name(d);
	/*
	 * There, with all below it, and touched: a young node keeps its
	 * subtree from a gc running now (rcache-gc.c); a node a gc just
	 * deleted is not touched back to life, it is written anew below.
	 */
	r = be_touch(u->rc, name, u->err);
	if (r < 0)
		return r;
	if (r > 0) {
		kiln_digest_set_add(&u->seen, d);
		return 0;
	}
	r = kiln_tree_get(u->store, d, &t, u->err);
	for (i = 0; r == 0 && i < t.n; i++) {
		const struct kiln_tree_entry *e = &t.entries[i];

		if (e->type == KILN_ENTRY_DIR)
			r = put_tree(u, &e->digest, depth + 1);
		else if (e->type == KILN_ENTRY_FILE)
			r = put_blob(u, &e->digest);
	}
	kiln_tree_release(&t);
	r = r ? r : put_blob(u, d);
	if (r == 0)
		kiln_digest_set_add(&u->seen, d);
	return r;
}

struct meta_put {
	struct upload *u;
	int r;
};

static void put_meta_blob(void *ud, size_t i, const struct kiln_digest *d)
{
	struct meta_put *m = ud;

	(void)i;
	if (m->r == 0 && d)
		m->r = put_blob(m->u, d);
}

int kiln_rcache_put(struct kiln_rcache *rc, struct kiln_store *store,
		    const char *const *keys, size_t n_keys,
		    const struct kiln_cache_record *rec, uint64_t *bytes,
		    struct kiln_error **err)
{
	struct upload u = { .rc = rc, .store = store, .err = err };
	struct meta_put m = { &u, 0 };
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < rec->n_outputs; i++)
		r = put_tree(&u, &rec->outputs[i], 1);
	if (r == 0) {
		kiln_cache_meta_blobs(rec->meta, put_meta_blob, &m);
		r = m.r;
	}
	/* Only now that everything it names is there: the record. */
	for (i = 0; r == 0 && i < n_keys; i++) {
		_cleanup_free_ char *name = record_name(keys[i]);
		_cleanup_free_ char *json = NULL;

		if (!name) {
			r = kiln_error_set(err, -EINVAL, "bad cache key '%s'", keys[i]);
			break;
		}
		json = kiln_rcache_record_encode(keys[i], rec);
		if (!json) {
			r = kiln_error_set(err, -EINVAL, "cannot encode the record of %s", keys[i]);
			break;
		}
		r = be_put(rc, name, -1, json, strlen(json), err);
	}
	kiln_digest_set_release(&u.seen);
	if (bytes)
		*bytes = u.bytes;
	if (r < 0)
		kiln_error_prefix(err, "remote cache %s", rc->be.name);
	return r;
}
