/*
 * Vertex states (one thread, the solver loop, owns them all):
 *
 *   UNNEEDED --needed--> WAITING --inputs done--> READY --start--> RUNNING
 *                          |                        |                 |
 *                          +--def key hit-----------+--content hit--> DONE
 *                                                   RUNNING --ok----> DONE
 *                                                   RUNNING --fail--> FAILED
 *
 * Lost inputs (unresolve()): the executor's run returned -ENOLINK, an
 * input's result is held nowhere any more. At most MAX_LOST times per
 * vertex; the next one is a failure like any other.
 *
 *   RUNNING --lost an input--> WAITING  its inputs counted again
 *   DONE    --held nowhere---> WAITING  an input of a vertex being
 *                                       unresolved whose result no worker
 *                                       holds (have() false); recursively,
 *                                       down to inputs still held
 *   READY   --input lost-----> WAITING  a dependent of such an input
 *   UNNEEDED --needed now----> WAITING  an input of an unresolved
 *                              or DONE  definition-key hit (need()): it
 *                                       was never needed; a hit itself,
 *                                       or it waits, its own never-needed
 *                                       inputs needed in turn
 *   WAITING --inputs done----> READY    at once, when none is missing
 *
 * Each WAITING or READY dependent of an unresolved input counts it again;
 * RUNNING and DONE dependents keep what they have. An unresolved vertex
 * loses its cached mark and runs (or hits the content key) again.
 *
 * Job threads touch only their own vertex's job fields and then post the
 * vertex on the completion queue under the lock; the loop does the rest.
 */
#include "solver/solve.h"

#include <assert.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/parse-util.h"
#include "basic/pool.h"
#include "basic/strbuf.h"
#include "cas/tree.h"
#include "source/git.h"
#include "source/http.h"
#include "source/image.h"
#include "source/local.h"

enum vstate { VS_UNNEEDED, VS_WAITING, VS_READY, VS_RUNNING, VS_DONE, VS_FAILED };

struct vertex {
	const struct kiln_op *op;
	enum vstate state;
	char digest[KILN_DIGEST_STRLEN];
	char *name;
	struct kiln_digest pin;
	char defkey[KILN_DIGEST_STRLEN];
	char contentkey[KILN_DIGEST_STRLEN];
	struct kiln_digest result;
	char *meta;
	uint64_t size; /* bytes of the result's files, counted on the job thread */
	int hint; /* vertex whose result tree this one is closest to, or -1 */
	size_t n_waiting;
	size_t *dependents;
	size_t n_dependents, alloc_dependents;
	bool cached, emulated;
	bool shared;     /* run by another build (in-flight dedup) */
	unsigned lost;   /* times its inputs were lost under it */
	uint64_t moved;  /* bytes its worker pulled from other workers */
	uint64_t cache_in, cache_out; /* its worker's remote cache bytes */
	bool made_emulated; /* its result was made under emulation (here, or as its record says) */
	bool try_remote;    /* its job thread asks the remote cache (content key) first */
	bool remote_hit;    /* ...and it had the result */
	bool threaded;   /* a job thread runs it (join in finish) */
	struct kiln_placement where;
	uint64_t started, completed;
	uint64_t est_ms, priority;
	/* job */
	pthread_t thread;
	int job_r;
	struct kiln_error *job_err;
};

struct solver {
	const struct kiln_definition *def;
	size_t *canon; /* op index -> the op standing for its digest */
	size_t out;    /* the output's vertex */
	const struct kiln_solve_options *o;
	struct vertex *v;
	size_t *order, n_order;
	pthread_t loop; /* the thread of the solver loop */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	size_t *done_q;
	size_t n_done_q;
	unsigned running, slots, n_run, n_cached;
	/*
	 * A job's thread could not be created (a task limit): no new job
	 * starts until one ends; with none running, the loop waits a little
	 * and tries again, STARVED_WAITS times, then fails the build.
	 */
	bool starved;
	unsigned starved_waits;
	/* Ready vertices, a max-heap by priority; entries whose vertex left
	 * READY since are skipped when they surface. */
	size_t *ready;
	size_t n_ready, alloc_ready;
	/* Content-key hits, to record under their definition keys at the end
	 * (flush_aliases: the frontier only, in one transaction). */
	size_t *alias_v;
	size_t n_alias, alloc_alias;
	uint64_t moved;
	uint64_t cache_in, cache_out; /* remote cache bytes */
	bool warned_remote;           /* "remote cache ... unavailable" said */
	unsigned corrupt_warned;      /* corrupt remote objects reported */
	bool in_bracket;              /* the loop thread holds a cache read bracket
				       * (mark_needed, loop's starts): remote
				       * lookups let it go while they wait */
	struct kiln_progress_tally *tally;
	size_t n_tally;
	struct kiln_executor local; /* the embedded executor */
	struct kiln_error *failure;
};

static const struct kiln_executor *executor(struct solver *s)
{
	return s->o->executor ? s->o->executor : &s->local;
}

static void *executor_ud(struct solver *s)
{
	return s->o->executor ? s->o->executor->ud : s;
}

/* The vertex of input i of v (identical ops share one vertex). */
static inline size_t in_of(const struct solver *s, const struct vertex *v, size_t i)
{
	return s->canon[v->op->inputs[i].op];
}

/* Input edges of v whose vertex is not DONE (an input used twice counts twice). */
static size_t inputs_not_done(const struct solver *s, const struct vertex *v)
{
	size_t i, n = 0;

	for (i = 0; i < v->op->n_inputs; i++)
		if (s->v[in_of(s, v, i)].state != VS_DONE)
			n++;
	return n;
}

#ifndef NDEBUG

/*
 * Once planned: a WAITING vertex waits for exactly its inputs that are not
 * DONE (UNNEEDED ones included), a READY one for none.
 */
static void assert_vertex_state(const struct solver *s, size_t i)
{
	const struct vertex *v = &s->v[i];

	switch (v->state) {
	case VS_UNNEEDED:
		assert(v->n_waiting == 0);
		break;
	case VS_WAITING:
		assert(v->n_waiting > 0 && v->n_waiting == inputs_not_done(s, v));
		break;
	case VS_READY:
		assert(v->n_waiting == 0 && inputs_not_done(s, v) == 0);
		break;
	case VS_DONE:
		assert(kiln_digest_is_set(&v->result));
		break;
	case VS_RUNNING:
	case VS_FAILED:
		break;
	}
}
#else
static inline void assert_vertex_state(const struct solver *s, size_t i) {}
#endif

static void prefix_who(struct kiln_error **err, const struct kiln_op *op)
{
	_cleanup_free_ char *w = kiln_op_who(op);

	kiln_error_prefix(err, "%s", w);
}

static const char *worker_name(const struct solver *s)
{
	return s->o->worker_name ? s->o->worker_name : "local";
}

/*
 * Only the solver loop counts (CACHED and DONE are emitted there; job
 * threads emit RUNNING): s->tally grows without a lock.
 */
static void tally(struct solver *s, const char *worker, bool cached)
{
	size_t i;

	assert(pthread_equal(pthread_self(), s->loop));
	for (i = 0; i < s->n_tally; i++)
		if (!strcmp(s->tally[i].worker, worker))
			break;
	if (i == s->n_tally) {
		s->tally = xrealloc(s->tally, (s->n_tally + 1) * sizeof(*s->tally));
		s->tally[i] = (struct kiln_progress_tally){ .worker = xstrdup(worker) };
		s->n_tally++;
	}
	if (cached)
		s->tally[i].cached++;
	else
		s->tally[i].run++;
}

static void emit(struct solver *s, struct vertex *v, enum kiln_vertex_status st,
		 const char *error)
{
	struct kiln_vertex_event ev = {
		.vertex = v->digest,
		.name = v->name,
		.status = st,
		.cached = v->cached,
		.platform = v->op->platform,
		.worker = v->where.worker[0] ? v->where.worker : worker_name(s),
		.emulated = v->emulated,
		.started = v->started,
		.completed = v->completed,
		.error = error,
	};

	if (st == KILN_VERTEX_CACHED || st == KILN_VERTEX_DONE)
		tally(s, ev.worker, st == KILN_VERTEX_CACHED);
	if (s->o->progress)
		kiln_progress_vertex(s->o->progress, &ev);
}

/* A readable default name, like BuildKit's vertex names. */
static char *default_name(const struct kiln_op *op)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(200);
	size_t i;

	if (op->name)
		return xstrdup(op->name);
	switch (op->type) {
	case KILN_OP_SOURCE_IMAGE:
		return xasprintf("[%s] load image %s", op->id, op->ref);
	case KILN_OP_SOURCE_LOCAL:
		return xasprintf("[%s] load context %s", op->id, op->local_path);
	case KILN_OP_SOURCE_HTTP:
		return xasprintf("[%s] download %s", op->id, op->url);
	case KILN_OP_SOURCE_GIT: {
		_cleanup_free_ char *safe = kiln_url_strip_userinfo(op->url);

		return xasprintf("[%s] git %s#%s", op->id, safe, op->git_ref ? op->git_ref : "HEAD");
	}
	case KILN_OP_EXEC:
		kiln_strbuf_addf(&sb, "[%s] exec", op->id);
		for (i = 0; i < op->n_args; i++)
			if (kiln_strbuf_addf(&sb, " %s", op->args[i]) < 0)
				break;
		return kiln_strbuf_detach(&sb, NULL);
	case KILN_OP_FILE:
		kiln_strbuf_addf(&sb, "[%s] file", op->id);
		for (i = 0; i < op->n_actions; i++) {
			static const char *const n[] = { "copy", "mkdir", "mkfile", "rm",
							 "symlink" };
			if (kiln_strbuf_addf(&sb, " %s %s", n[op->actions[i].type],
					     op->actions[i].path) < 0)
				break;
		}
		return kiln_strbuf_detach(&sb, NULL);
	case KILN_OP_MERGE:
		return xasprintf("[%s] merge %zu inputs", op->id, op->n_inputs);
	}
	return xstrdup(op->id);
}

/*
 * key = H(tag, form, pin, one line per input). Definition keys use the
 * inputs' definition keys; content keys use the inputs' result digests.
 */
static void compute_key(struct solver *s, struct vertex *v, bool content, char *out)
{
	struct kiln_hasher *h = kiln_hasher_new(KILN_DIGEST_SHA256);
	const char *tag = content ? "kiln-content-key-v1\n" : "kiln-def-key-v1\n";
	struct kiln_digest d;
	size_t i;

	kiln_hasher_update(h, tag, strlen(tag));
	kiln_hasher_update(h, v->op->form, strlen(v->op->form));
	if (kiln_digest_is_set(&v->pin)) {
		kiln_hasher_update(h, "\npin ", 5);
		kiln_hasher_update(h, KILN_DIGEST_STR(&v->pin), strlen(KILN_DIGEST_STR(&v->pin)));
	}
	for (i = 0; i < v->op->n_inputs; i++) {
		const struct vertex *in = &s->v[in_of(s, v, i)];
		const char *k = content ? KILN_DIGEST_STR(&in->result) : in->defkey;

		kiln_hasher_update(h, "\nin ", 4);
		kiln_hasher_update(h, k, strlen(k));
	}
	kiln_hasher_final(h, &d);
	kiln_hasher_free(h);
	kiln_digest_fmt(&d, out);
}

/* Corrupt remote objects a build reports before it stops saying so. */
#define MAX_CORRUPT_WARNINGS 3

/* Where results from the remote cache go: the store jobs read. */
static struct kiln_store *result_store(struct solver *s)
{
	return s->o->store ? s->o->store : kiln_worker_store(s->o->worker);
}

/*
 * A remote cache failure: a warning; one per build for an unavailable
 * remote (however many caches or calls found it so), saying what the
 * build does without it.
 */
static void remote_warn(struct solver *s, struct kiln_rcache *rc, int r,
			struct kiln_error *err, const char *without)
{
	_cleanup_free_ char *msg = NULL;
	unsigned n;
	bool said;

	if (r == -ENOENT)
		return;
	/* Lookups run on several threads; never called with s->lock held. */
	pthread_mutex_lock(&s->lock);
	n = r == -EBADMSG ? ++s->corrupt_warned : 0;
	said = r != -EBADMSG && s->warned_remote;
	if (r != -EBADMSG)
		s->warned_remote = true;
	pthread_mutex_unlock(&s->lock);
	if (r == -EBADMSG) {
		/* A few, then quiet: a remote answering junk for every key. */
		if (n > MAX_CORRUPT_WARNINGS)
			return;
		msg = xasprintf("%s; not used%s", kiln_error_msg(err),
				n == MAX_CORRUPT_WARNINGS
					? " (further corrupt objects of this build are not reported)" : "");
	} else {
		if (said)
			return;
		msg = xasprintf("remote cache %s unavailable: %s; %s", kiln_rcache_name(rc),
				kiln_rcache_unavailable(rc) ?: kiln_error_msg(err), without);
	}
	log_warn("%s", msg);
	kiln_progress_warning(s->o->progress, msg);
}

/* Is v's result worth asking the remote cache for? (Local sources are the
 * client's files: hashed here, never fetched.) */
static bool remote_wanted(struct solver *s, const struct vertex *v)
{
	return s->o->cache_from && !s->o->no_cache && result_store(s) &&
	       v->op->type != KILN_OP_SOURCE_LOCAL;
}

/*
 * A key the local cache lacks, from the remote: the record, then its trees
 * copied into the store, then a local record so the next build hits here.
 * Called on any thread, never with s->lock or a cache read bracket held
 * (the remote may take seconds); v belongs to the caller meanwhile.
 * *bytes gets what was copied.
 */
static bool remote_lookup(struct solver *s, struct vertex *v, const char *key, uint64_t *bytes)
{
	struct kiln_rcache *rc = s->o->cache_from;
	struct kiln_cache_record rec = { 0 };
	_cleanup_error_ struct kiln_error *err = NULL;
	const char *keys[1] = { key };
	int r;

	*bytes = 0;
	if (!remote_wanted(s, v))
		return false;
	r = kiln_rcache_get(rc, key, &rec, &err);
	if (r == 0 && rec.n_outputs != 1)
		r = kiln_error_set(&err, -EBADMSG, "remote cache %s: record %s has %zu outputs",
				   kiln_rcache_name(rc), key, rec.n_outputs);
	/* The workers fetch it from the bucket themselves, or we copy it here. */
	if (r == 0 && !(executor(s)->remote_hit && executor(s)->remote_hit(executor_ud(s), &rec)))
		r = kiln_rcache_fetch(rc, &rec, result_store(s), bytes, &err);
	if (r < 0) {
		remote_warn(s, rc, r, err, "building without it");
		kiln_cache_record_release(&rec);
		return false;
	}
	free(rec.worker);
	rec.worker = xasprintf("cache:%s", kiln_rcache_name(rc));
	if (!rec.op)
		rec.op = xstrdup(v->digest); /* optional in a record, needed locally */
	if (kiln_cache_put(s->o->cache, keys, 1, &rec, NULL) < 0)
		log_debug("cannot record the remote cache's %s locally", key);
	v->result = rec.outputs[0];
	free(v->meta);
	v->meta = rec.meta ? xstrdup(rec.meta) : NULL;
	v->size = rec.size;
	v->made_emulated = rec.emulated;
	kiln_cache_record_release(&rec);
	return true;
}

/*
 * remote_lookup on the loop thread: the cache read bracket is let go
 * meanwhile, so job threads never wait on the index for the remote.
 */
static bool remote_lookup_here(struct solver *s, struct vertex *v, const char *key)
{
	uint64_t bytes = 0;
	bool hit;

	if (!remote_wanted(s, v))
		return false;
	if (s->in_bracket)
		kiln_cache_read_end(s->o->cache);
	hit = remote_lookup(s, v, key, &bytes);
	if (s->in_bracket)
		kiln_cache_read_begin(s->o->cache);
	s->cache_in += bytes;
	return hit;
}

/*
 * A cache hit counts only when its result tree is still in the store.
 * remote: a local miss may be looked up in the remote cache too (on the
 * loop thread: mark_needed and start ask it elsewhere).
 */
static bool lookup(struct solver *s, struct vertex *v, const char *key, bool remote)
{
	struct kiln_cache_record rec = { 0 };
	bool hit = false;

	if (s->o->no_cache)
		return false;
	if (kiln_cache_get(s->o->cache, key, &rec, NULL) < 0)
		return remote && remote_lookup_here(s, v, key);
	if (rec.n_outputs == 1 &&
	    (kiln_tree_is_empty_digest(&rec.outputs[0]) ||
	     executor(s)->have(executor_ud(s), &rec.outputs[0]))) {
		v->result = rec.outputs[0];
		free(v->meta);
		v->meta = rec.meta ? xstrdup(rec.meta) : NULL;
		v->size = rec.size;
		v->made_emulated = rec.emulated;
		hit = true;
	}
	kiln_cache_record_release(&rec);
	return hit || (remote && remote_lookup_here(s, v, key));
}

/* A content-key hit is known under its definition key from now on too. */
static void alias_defkey(struct solver *s, size_t vi)
{
	s->alias_v = xgrow(s->alias_v, &s->alloc_alias, s->n_alias + 1, sizeof(size_t));
	s->alias_v[s->n_alias++] = vi;
}

static bool is_output(const struct solver *s, size_t vi)
{
	size_t k;

	if (vi == s->out)
		return true;
	for (k = 0; k < s->def->n_outputs; k++)
		if (s->canon[s->def->outputs[k].op] == vi)
			return true;
	return false;
}

/*
 * A content-key hit is worth a definition-key alias where the next build's
 * top-down definition lookups will stop: at an output, or under a step
 * that ran (or failed) this time. A hit whose dependents were all hits
 * too is found again through them; aliasing every vertex of a large cached
 * graph cost more than walking it.
 */
static bool on_frontier(const struct solver *s, size_t vi)
{
	const struct vertex *v = &s->v[vi];
	size_t i;

	if (is_output(s, vi))
		return true;
	for (i = 0; i < v->n_dependents; i++) {
		const struct vertex *d = &s->v[v->dependents[i]];

		if (d->state == VS_FAILED || d->state == VS_RUNNING ||
		    (d->state == VS_DONE && !d->cached))
			return true;
	}
	return false;
}

/* The frontier's aliases, in one transaction. */
static void flush_aliases(struct solver *s)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ const char **keys = xcalloc(s->n_alias + 1, sizeof(char *));
	_cleanup_free_ const char **defs = xcalloc(s->n_alias + 1, sizeof(char *));
	size_t k, n = 0;

	for (k = 0; k < s->n_alias; k++) {
		const struct vertex *v = &s->v[s->alias_v[k]];

		if (!on_frontier(s, s->alias_v[k]))
			continue;
		keys[n] = v->contentkey;
		defs[n++] = v->defkey;
	}
	if (n && kiln_cache_alias_many(s->o->cache, keys, defs, n, NULL, &err) < 0)
		log_warn("cannot record %zu cache entries: %s", n, kiln_error_msg(err));
	s->n_alias = 0;
}

static void record(struct solver *s, struct vertex *v, uint64_t duration_ns)
{
	struct kiln_cache_record rec = { 0 };
	_cleanup_error_ struct kiln_error *err = NULL;
	const char *keys[2] = { v->defkey, v->contentkey };

	rec.op = v->digest;
	rec.outputs = &v->result;
	rec.n_outputs = 1;
	rec.meta = v->meta;
	rec.created = (int64_t)(kiln_now_real_ns() / 1000000000u);
	rec.duration_ms = duration_ns / 1000000u;
	rec.worker = (char *)(v->where.worker[0] ? v->where.worker : worker_name(s));
	rec.platform = v->op->platform;
	rec.size = v->size;
	rec.emulated = v->made_emulated;
	/* Losing a record only costs a rebuild: warn, do not fail. */
	if (kiln_cache_put(s->o->cache, keys, 2, &rec, &err) < 0)
		log_warn("cannot record cache entry for %s: %s", v->name, kiln_error_msg(err));
}

/* ---- the embedded executor: every job on opts->worker ---- */

static int local_check_platform(void *ud, const char *platform, bool *emulated,
				struct kiln_error **err)
{
	struct solver *s = ud;

	return kiln_worker_check_platform(s->o->worker, platform, emulated, err);
}

static bool local_have(void *ud, const struct kiln_digest *tree)
{
	struct solver *s = ud;

	return kiln_store_has(kiln_worker_store(s->o->worker), tree);
}

static int local_run(void *ud, const struct kiln_task *ej, struct kiln_task_result *out,
		     struct kiln_error **err)
{
	struct solver *s = ud;
	const struct kiln_op *op = &ej->job.def->ops[ej->job.op];

	snprintf(out->where.worker, sizeof(out->where.worker), "%s", worker_name(s));
	out->where.emulated = false;
	if (op->type == KILN_OP_EXEC &&
	    kiln_worker_check_platform(s->o->worker, op->platform, &out->where.emulated,
				       NULL) < 0)
		out->where.emulated = false;
	if (ej->placed)
		ej->placed(ej->placed_ud, &out->where);
	return kiln_job_run(s->o->worker, &ej->job, &out->res, err);
}

/* ---- jobs ---- */

static void on_output(void *ud, int stream, const char *data, size_t len)
{
	void **pair = ud;
	struct solver *s = pair[0];
	struct vertex *v = pair[1];

	if (s->o->progress)
		kiln_progress_log(s->o->progress, v->digest, stream, data, len);
}

static void on_placed(void *ud, const struct kiln_placement *where)
{
	void **pair = ud;
	struct solver *s = pair[0];
	struct vertex *v = pair[1];

	v->where = *where;
	v->emulated = where->emulated;
	emit(s, v, KILN_VERTEX_RUNNING, NULL);
}

/*
 * The trees an exec's rootfs is an edit of, base first: its input's hint
 * chain (file ops on file ops), so the worker stacks small layers.
 */
static size_t rootfs_chain(struct solver *s, const struct vertex *v, struct kiln_digest **out)
{
	size_t n = 0, k;
	int h;

	*out = NULL;
	if (v->op->type != KILN_OP_EXEC)
		return 0;
	for (h = s->v[in_of(s, v, (size_t)v->op->rootfs)].hint; h >= 0 && n < 64;
	     h = s->v[h].hint)
		n++;
	*out = xcalloc(n + 1, sizeof(**out));
	k = n;
	for (h = s->v[in_of(s, v, (size_t)v->op->rootfs)].hint; h >= 0 && k > 0;
	     h = s->v[h].hint)
		(*out)[--k] = s->v[h].result;
	return n;
}

static void *job_main(void *arg)
{
	void **pair = arg;
	struct solver *s = pair[0];
	size_t i = (size_t)pair[1];
	struct vertex *v = &s->v[i];
	const struct kiln_executor *ex = executor(s);
	_cleanup_free_ struct kiln_digest *ins = xcalloc(v->op->n_inputs + 1, sizeof(*ins));
	_cleanup_free_ struct kiln_digest *chain = NULL;
	struct kiln_task ej = { 0 };
	struct kiln_task_result res = { 0 };
	void *cb[2] = { s, v }; /* what the output and placement callbacks see */
	size_t k;
	int r = 0;

	/* Early cut-off from the remote cache, off the loop thread. */
	if (v->try_remote && remote_lookup(s, v, v->contentkey, &v->cache_in)) {
		v->remote_hit = true;
		v->shared = false;
		v->moved = v->cache_out = 0;
		goto done;
	}
	for (k = 0; k < v->op->n_inputs; k++)
		ins[k] = s->v[in_of(s, v, k)].result;
	ej.job.def = s->def;
	ej.job.op = i;
	ej.job.inputs = ins;
	ej.job.pin = kiln_digest_is_set(&v->pin) ? &v->pin : NULL;
	ej.job.n_chain = rootfs_chain(s, v, &chain);
	ej.job.chain = chain;
	ej.job.registry = s->o->registry;
	ej.job.secrets = s->o->secrets;
	ej.job.n_secrets = s->o->n_secrets;
	ej.job.ssh = s->o->ssh;
	ej.job.output = on_output;
	ej.job.output_ud = cb;
	ej.key = v->contentkey;
	ej.defkey = v->defkey;
	ej.name = v->name;
	ej.est_ms = v->est_ms;
	ej.placed = on_placed;
	ej.placed_ud = cb;
	r = ex->run(executor_ud(s), &ej, &res, &v->job_err);
	if (r == 0) {
		v->result = res.res.tree;
		free(v->meta);
		v->meta = res.res.meta;
		res.res.meta = NULL;
		v->size = res.res.size;
		v->shared = res.shared;
		v->moved = res.moved;
		v->cache_in = res.cache_in;
		v->made_emulated = res.where.emulated;
		v->cache_out = res.cache_out;
		v->where = res.where;
	}
	kiln_job_result_release(&res.res);
done:
	free(arg);
	pthread_mutex_lock(&s->lock);
	v->job_r = r;
	s->done_q[s->n_done_q++] = i;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static void add_dependent(struct vertex *in, size_t dep)
{
	in->dependents = xgrow(in->dependents, &in->alloc_dependents, in->n_dependents + 1,
			       sizeof(size_t));
	in->dependents[in->n_dependents++] = dep;
}

/*
 * One vertex per distinct op digest (DESIGN invariant 1): the first op of
 * each digest in dependency order stands for all of them, which keeps the
 * order valid once the others are dropped.
 */
static void dedup(struct solver *s)
{
	json_t *seen = json_object();
	size_t k, n = 0;

	s->canon = xcalloc(s->def->n_ops, sizeof(size_t));
	for (k = 0; k < s->n_order; k++) {
		size_t vi = s->order[k];
		const char *d = KILN_DIGEST_STR(&s->def->ops[vi].digest);
		json_t *first = json_object_get(seen, d);

		if (first) {
			s->canon[vi] = (size_t)json_integer_value(first);
			continue;
		}
		json_object_set_new(seen, d, json_integer((json_int_t)vi));
		s->canon[vi] = vi;
		s->order[n++] = vi;
	}
	s->n_order = n;
	s->out = s->canon[s->def->output.op];
	json_decref(seen);
}

static void setup(struct solver *s)
{
	size_t k, i;

	kiln_definition_topo(s->def, &s->order, &s->n_order);
	s->v = xcalloc(s->def->n_ops, sizeof(struct vertex));
	s->done_q = xcalloc(s->def->n_ops + 1, sizeof(size_t));
	dedup(s);
	for (k = 0; k < s->n_order; k++) {
		size_t vi = s->order[k];
		struct vertex *v = &s->v[vi];

		v->op = &s->def->ops[vi];
		v->name = default_name(v->op);
		v->hint = -1;
		kiln_digest_fmt(&v->op->digest, v->digest);
		if (v->op->type == KILN_OP_FILE && v->op->rootfs >= 0)
			v->hint = (int)in_of(s, v, (size_t)v->op->rootfs);
		if (v->op->type == KILN_OP_MERGE)
			v->hint = (int)in_of(s, v, 0);
		for (i = 0; i < v->op->n_inputs; i++)
			add_dependent(&s->v[in_of(s, v, i)], vi);
	}
}

/* Every exec must be runnable here, checked before anything runs. */
static int check_platforms(struct solver *s, struct kiln_error **err)
{
	size_t k;
	int r;

	for (k = 0; k < s->n_order; k++) {
		struct vertex *v = &s->v[s->order[k]];

		if (v->op->type != KILN_OP_EXEC)
			continue;
		r = executor(s)->check_platform(executor_ud(s), v->op->platform, &v->emulated,
						err);
		if (r < 0) {
			prefix_who(err, v->op);
			return r;
		}
	}
	return 0;
}

static struct kiln_store *store(struct solver *s)
{
	return s->o->store ? s->o->store : kiln_worker_store(s->o->worker);
}

/* A context the client snapshotted and uploaded. */
static int given_pin(struct solver *s, struct vertex *v, struct kiln_error **err)
{
	size_t i;

	for (i = 0; i < s->o->n_pins; i++) {
		if (!kiln_digest_eq(&s->o->pins[i].op, &v->op->digest))
			continue;
		if (!kiln_tree_is_empty_digest(&s->o->pins[i].tree) &&
		    !kiln_store_has(store(s), &s->o->pins[i].tree))
			return kiln_error_set(err, -ENOENT, "context %s (tree %s) was not uploaded",
					      v->op->local_path,
					      KILN_DIGEST_STR(&s->o->pins[i].tree));
		v->pin = s->o->pins[i].tree;
		return 0;
	}
	return kiln_error_set(err, -ENOENT, "context %s was not pinned by the client",
			      v->op->local_path);
}

/*
 * An OCI layout on the client's disk: the client resolved it, uploaded
 * its blobs and pinned the op to the manifest (cluster builds).
 */
static int given_image_pin(struct solver *s, struct vertex *v, struct kiln_error **err)
{
	size_t i;

	for (i = 0; i < s->o->n_pins; i++) {
		if (!kiln_digest_eq(&s->o->pins[i].op, &v->op->digest))
			continue;
		if (!kiln_store_has(store(s), &s->o->pins[i].tree))
			return kiln_error_set(err, -ENOENT, "%s (manifest %s) was not uploaded",
					      v->op->ref, KILN_DIGEST_STR(&s->o->pins[i].tree));
		v->pin = s->o->pins[i].tree;
		return 0;
	}
	return kiln_error_set(err, -ENOENT,
			      "%s: an OCI layout is read from the client's disk, and the client did not pin it",
			      v->op->ref);
}

/* Pin one vertex if it is a source (0 for any other). */
static int pin_source(struct solver *s, struct vertex *v,
		      const struct kiln_image_source *images, struct kiln_error **err)
{
	struct kiln_image_ref ref = { 0 };
	int r = 0;

	if (v->op->type == KILN_OP_SOURCE_LOCAL && (s->o->executor || s->o->n_pins)) {
		r = given_pin(s, v, err);
	} else if (v->op->type == KILN_OP_SOURCE_LOCAL) {
		r = kiln_local_snapshot(store(s), s->o->cache, v->op->local_path,
					(const char *const *)v->op->include, v->op->n_include,
					(const char *const *)v->op->exclude, v->op->n_exclude,
					&v->pin, NULL, err);
	} else if (v->op->type == KILN_OP_SOURCE_HTTP) {
		/* A checksum pins the op; without one the content does. */
		if (kiln_digest_is_set(&v->op->checksum))
			v->pin = v->op->checksum;
		else
			r = kiln_http_fetch(store(s), v->op->url, NULL, &v->pin, NULL, err);
	} else if (v->op->type == KILN_OP_SOURCE_GIT) {
		/* The commit is the pin: the key follows it, not the ref. */
		char commit[KILN_GIT_COMMIT_HEXLEN + 1];

		r = kiln_git_resolve(v->op->url, v->op->git_ref, commit, err);
		if (r == 0)
			kiln_git_commit_to_pin(commit, &v->pin);
	} else if (v->op->type == KILN_OP_SOURCE_IMAGE && (s->o->executor || s->o->n_pins) &&
		   !strncmp(v->op->ref, "oci-layout://", 13)) {
		r = given_image_pin(s, v, err);
	} else if (v->op->type == KILN_OP_SOURCE_IMAGE) {
		r = kiln_image_ref_parse(v->op->ref, "/", &ref, err);
		if (r == 0)
			r = kiln_image_resolve(images, &ref, v->op->platform, &v->pin, err);
		kiln_image_ref_release(&ref);
	}
	return r;
}

/*
 * Sources are pinned to content before keys are computed. An image tag is
 * looked up once per solve, and its documents are kept in the store.
 */
static int pin_sources(struct solver *s, struct kiln_error **err)
{
	struct kiln_image_tags *tags = kiln_image_tags_new();
	/* A cluster's kilnd never opens a directory a client names. */
	const struct kiln_image_source images = { .registry = s->o->registry,
						  .store = store(s), .tags = tags,
						  .layouts_in_store = s->o->executor != NULL };
	size_t k;
	int r = 0;

	for (k = 0; r == 0 && k < s->n_order; k++) {
		struct vertex *v = &s->v[s->order[k]];

		r = pin_source(s, v, &images, err);
		if (r < 0)
			prefix_who(err, v->op);
	}
	kiln_image_tags_free(tags);
	return r;
}

/* Remote lookups of one wave of mark_needed, on up to this many threads. */
#define REMOTE_LOOKUP_THREADS 8u

struct remote_wave {
	struct solver *s;
	const size_t *vi; /* the vertices to ask for, by definition key */
	bool *hit;
	uint64_t *bytes;
	size_t n;
};

static int remote_wave_one(void *ud, size_t i, unsigned slot, struct kiln_error **err)
{
	struct remote_wave *w = ud;
	struct vertex *v = &w->s->v[w->vi[i]];

	(void)slot, (void)err;
	w->hit[i] = remote_lookup(w->s, v, v->defkey, &w->bytes[i]);
	return 0; /* a failure is a miss (and a warning) */
}

/* Ask the remote cache for every vertex of w at once (the bracket let go). */
static void remote_wave(struct solver *s, struct remote_wave *w)
{
	size_t i;

	if (s->in_bracket)
		kiln_cache_read_end(s->o->cache);
	(void)kiln_pool_run(w->n, REMOTE_LOOKUP_THREADS, remote_wave_one, w, NULL);
	if (s->in_bracket)
		kiln_cache_read_begin(s->o->cache);
	for (i = 0; i < w->n; i++)
		s->cache_in += w->bytes[i];
}

/* A definition-key hit: done, and nothing upstream of it is needed for it. */
static void hit_defkey(struct solver *s, struct vertex *v)
{
	v->state = VS_DONE;
	v->cached = true;
	s->n_cached++;
	emit(s, v, KILN_VERTEX_CACHED, NULL);
}

static void miss_defkey(struct solver *s, struct vertex *v)
{
	size_t i;

	for (i = 0; i < v->op->n_inputs; i++)
		s->v[in_of(s, v, i)].state = VS_WAITING;
}

/*
 * From the output down: a definition-key hit resolves a vertex and spares
 * everything upstream of it. In waves: a vertex is decided once every
 * vertex that uses it is, so the vertices of one wave are looked up
 * together, and the remote cache is asked for a wave's local misses at
 * once (the same questions as one at a time, in the graph's depth of
 * round trips rather than its size).
 */
static void mark_needed(struct solver *s)
{
	bool *decided = xcalloc(s->def->n_ops, sizeof(bool));
	size_t *wave = xcalloc(s->n_order + 1, sizeof(size_t));
	size_t *ask = xcalloc(s->n_order + 1, sizeof(size_t));
	bool *hit = xcalloc(s->n_order + 1, sizeof(bool));
	uint64_t *bytes = xcalloc(s->n_order + 1, sizeof(uint64_t));
	size_t k, i, n_decided = 0;

	for (k = 0; k < s->n_order; k++)
		compute_key(s, &s->v[s->order[k]], false, s->v[s->order[k]].defkey);
	s->v[s->out].state = VS_WAITING;
	for (k = 0; k < s->def->n_outputs; k++)
		s->v[s->canon[s->def->outputs[k].op]].state = VS_WAITING;
	while (n_decided < s->n_order) {
		struct remote_wave w = { .s = s, .vi = ask, .hit = hit, .bytes = bytes };
		size_t n_wave = 0;

		for (k = s->n_order; k-- > 0;) {
			size_t vi = s->order[k];
			bool ready = !decided[vi];

			for (i = 0; ready && i < s->v[vi].n_dependents; i++)
				ready = decided[s->v[vi].dependents[i]];
			if (ready)
				wave[n_wave++] = vi;
		}
		assert(n_wave > 0); /* the order is topological */
		for (k = 0; k < n_wave; k++) {
			struct vertex *v = &s->v[wave[k]];

			if (v->state != VS_WAITING)
				continue; /* not needed: nothing that uses it missed */
			if (lookup(s, v, v->defkey, false))
				hit_defkey(s, v);
			else if (remote_wanted(s, v))
				ask[w.n++] = wave[k];
			else
				miss_defkey(s, v);
		}
		if (w.n > 0)
			remote_wave(s, &w);
		for (k = 0; k < w.n; k++) {
			if (hit[k])
				hit_defkey(s, &s->v[ask[k]]);
			else
				miss_defkey(s, &s->v[ask[k]]);
		}
		for (k = 0; k < n_wave; k++)
			decided[wave[k]] = true;
		n_decided += n_wave;
	}
	free(bytes);
	free(hit);
	free(ask);
	free(wave);
	free(decided);
}

/* ---- the ready heap ---- */

static bool before(const struct solver *s, size_t a, size_t b)
{
	return s->v[a].priority > s->v[b].priority ||
	       (s->v[a].priority == s->v[b].priority && a < b);
}

static void heap_swap(struct solver *s, size_t i, size_t k)
{
	size_t t = s->ready[i];

	s->ready[i] = s->ready[k];
	s->ready[k] = t;
}

static void make_ready(struct solver *s, size_t vi)
{
	size_t i;

	s->v[vi].state = VS_READY;
	assert_vertex_state(s, vi);
	s->ready = xgrow(s->ready, &s->alloc_ready, s->n_ready + 1, sizeof(size_t));
	i = s->n_ready++;
	s->ready[i] = vi;
	while (i > 0 && before(s, s->ready[i], s->ready[(i - 1) / 2])) {
		heap_swap(s, i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
}

static void heap_pop(struct solver *s)
{
	size_t i = 0;

	s->ready[0] = s->ready[--s->n_ready];
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;

		if (l < s->n_ready && before(s, s->ready[l], s->ready[m]))
			m = l;
		if (r < s->n_ready && before(s, s->ready[r], s->ready[m]))
			m = r;
		if (m == i)
			break;
		heap_swap(s, i, m);
		i = m;
	}
}

static uint64_t default_estimate(const struct kiln_op *op)
{
	switch (op->type) {
	case KILN_OP_EXEC:
		return 1000;
	case KILN_OP_SOURCE_IMAGE:
		return 500;
	default:
		return 10;
	}
}

/*
 * Critical path: a waiting vertex's priority is its estimate plus its
 * heaviest waiting dependent's (so dependents are estimated first).
 */
static void estimate(struct solver *s, struct vertex *v)
{
	uint64_t best = 0;
	size_t i;

	/*
	 * Provenance for the steps whose durations vary and dominate
	 * (execs, image pulls); file ops and other sources are short
	 * in-process edits, where a lookup each would cost more than the
	 * estimate is worth.
	 */
	if ((v->op->type != KILN_OP_EXEC && v->op->type != KILN_OP_SOURCE_IMAGE) ||
	    kiln_cache_estimate(s->o->cache, v->digest, &v->est_ms) < 0)
		v->est_ms = default_estimate(v->op);
	for (i = 0; i < v->n_dependents; i++) {
		struct vertex *d = &s->v[v->dependents[i]];
		if (d->state == VS_WAITING && d->priority > best)
			best = d->priority;
	}
	v->priority = v->est_ms + best;
}

static void plan(struct solver *s)
{
	size_t k;

	for (k = s->n_order; k-- > 0;) {
		struct vertex *v = &s->v[s->order[k]];

		if (v->state != VS_WAITING)
			continue;
		estimate(s, v);
		v->n_waiting = inputs_not_done(s, v);
		emit(s, v, KILN_VERTEX_QUEUED, NULL);
	}
	for (k = 0; k < s->n_order; k++) {
		struct vertex *v = &s->v[s->order[k]];
		if (v->state == VS_WAITING && v->n_waiting == 0)
			make_ready(s, s->order[k]);
	}
	for (k = 0; k < s->n_order; k++)
		assert_vertex_state(s, s->order[k]);
}

/* After a change of vi's state: its dependents' counts agree. */
static void assert_dependents_state(const struct solver *s, size_t vi)
{
	size_t i;

	for (i = 0; i < s->v[vi].n_dependents; i++)
		assert_vertex_state(s, s->v[vi].dependents[i]);
}

static void resolve(struct solver *s, size_t vi)
{
	struct vertex *v = &s->v[vi];
	size_t i;

	v->state = VS_DONE;
	assert_vertex_state(s, vi);
	for (i = 0; i < v->n_dependents; i++) {
		struct vertex *d = &s->v[v->dependents[i]];

		if (d->state != VS_WAITING)
			continue;
		if (--d->n_waiting == 0)
			make_ready(s, v->dependents[i]);
	}
	assert_dependents_state(s, vi);
}

/* The ready vertex with the longest critical path, or -1; pop takes it. */
static ssize_t peek_ready(struct solver *s)
{
	while (s->n_ready > 0 && s->v[s->ready[0]].state != VS_READY)
		heap_pop(s);
	return s->n_ready > 0 ? (ssize_t)s->ready[0] : -1;
}

static void start(struct solver *s, size_t vi)
{
	struct vertex *v = &s->v[vi];
	void **arg;

	compute_key(s, v, true, v->contentkey);
	/*
	 * Early cut-off: the same op on the same inputs' results ran before.
	 * Here, or in the remote cache, which the job's thread asks first.
	 */
	v->remote_hit = false;
	v->try_remote = false;
	if (lookup(s, v, v->contentkey, false)) {
		v->cached = true;
		s->n_cached++;
		emit(s, v, KILN_VERTEX_CACHED, NULL);
		/* Known under its definition key from now on too. */
		alias_defkey(s, vi);
		resolve(s, vi);
		return;
	}
	v->try_remote = remote_wanted(s, v);
	v->state = VS_RUNNING;
	v->started = kiln_now_real_ns();
	s->running++;
	if (v->op->type == KILN_OP_SOURCE_LOCAL) {
		/* Hashed while pinning: nothing to run. */
		v->result = v->pin;
		emit(s, v, KILN_VERTEX_RUNNING, NULL);
		pthread_mutex_lock(&s->lock);
		v->job_r = 0;
		s->done_q[s->n_done_q++] = vi;
		pthread_mutex_unlock(&s->lock);
		return;
	}
	arg = xcalloc(2, sizeof(void *));
	arg[0] = s;
	arg[1] = (void *)vi;
	v->threaded = true;
	if (pthread_create(&v->thread, NULL, job_main, arg) != 0) {
		/* Back to ready: it starts when a thread can be had. */
		free(arg);
		v->threaded = false;
		v->started = 0;
		s->running--;
		make_ready(s, vi);
		s->starved = true;
	}
}

/*
 * vi's result is held nowhere any more (its only holder was lost), or its
 * job lost an input (was_done false): it goes back to waiting on its
 * inputs, recursively for inputs that are lost too, and its waiting and
 * ready dependents wait for it again (the lost-input edges of the state
 * comment at the top).
 */
/*
 * vi was never needed (a dependent of it was a definition-key hit) and now
 * is: that dependent's result was lost. It is a definition-key hit itself
 * (DONE) or waits, its never-needed inputs needed in turn.
 */
static void need(struct solver *s, size_t vi)
{
	struct vertex *v = &s->v[vi];
	size_t i;

	if (lookup(s, v, v->defkey, v->op->type != KILN_OP_SOURCE_LOCAL)) {
		v->state = VS_DONE;
		v->cached = true;
		s->n_cached++;
		emit(s, v, KILN_VERTEX_CACHED, NULL);
		return;
	}
	v->state = VS_WAITING;
	estimate(s, v);
	for (i = 0; i < v->op->n_inputs; i++)
		if (s->v[in_of(s, v, i)].state == VS_UNNEEDED)
			need(s, in_of(s, v, i));
	v->n_waiting = inputs_not_done(s, v);
	emit(s, v, KILN_VERTEX_QUEUED, NULL);
	if (v->n_waiting == 0)
		make_ready(s, vi);
	assert_vertex_state(s, vi);
}

static void unresolve(struct solver *s, size_t vi, bool was_done)
{
	struct vertex *v = &s->v[vi];
	size_t i;

	v->state = VS_WAITING;
	v->cached = false;
	v->n_waiting = 0;
	memset(&v->where, 0, sizeof(v->where));
	for (i = 0; was_done && i < v->n_dependents; i++) {
		struct vertex *d = &s->v[v->dependents[i]];

		if (d->state == VS_WAITING || d->state == VS_READY) {
			d->n_waiting++;
			d->state = VS_WAITING;
		}
	}
	if (was_done)
		assert_dependents_state(s, vi);
	for (i = 0; i < v->op->n_inputs; i++)
		if (s->v[in_of(s, v, i)].state == VS_UNNEEDED)
			need(s, in_of(s, v, i));
	v->n_waiting = inputs_not_done(s, v);
	for (i = 0; i < v->op->n_inputs; i++) {
		size_t in = in_of(s, v, i);

		if (s->v[in].state == VS_DONE &&
		    !kiln_tree_is_empty_digest(&s->v[in].result) &&
		    !executor(s)->have(executor_ud(s), &s->v[in].result))
			unresolve(s, in, true);
	}
	if (v->n_waiting == 0)
		make_ready(s, vi);
	assert_vertex_state(s, vi);
}

/* How often a vertex's inputs may vanish under it before the build gives up. */
#define MAX_LOST 5u
/* A build with no job running that cannot start one waits this long, this often. */
#define STARVED_WAIT_US 100000u
#define STARVED_WAITS 50u

static void finish(struct solver *s, size_t vi)
{
	struct vertex *v = &s->v[vi];

	if (v->threaded)
		pthread_join(v->thread, NULL);
	v->threaded = false;
	s->running--;
	v->completed = kiln_now_real_ns();
	if (v->job_r == -ENOLINK && ++v->lost <= MAX_LOST) {
		log_info("%s: %s; recomputing what was lost", v->name, kiln_error_msg(v->job_err));
		kiln_error_free(v->job_err);
		v->job_err = NULL;
		unresolve(s, vi, false);
		return;
	}
	if (v->job_r < 0) {
		v->state = VS_FAILED;
		emit(s, v, KILN_VERTEX_ERROR, kiln_error_msg(v->job_err));
		if (!s->failure) {
			s->failure = v->job_err;
			v->job_err = NULL;
		}
		return;
	}
	s->moved += v->moved;
	s->cache_in += v->cache_in;
	s->cache_out += v->cache_out;
	if (v->remote_hit) {
		/* The remote cache had it under the content key. */
		v->cached = true;
		s->n_cached++;
		emit(s, v, KILN_VERTEX_CACHED, NULL);
		alias_defkey(s, vi);
	} else if (v->shared) {
		/* Another build ran it while this one waited: a cache hit here. */
		v->cached = true;
		s->n_cached++;
		emit(s, v, KILN_VERTEX_CACHED, NULL);
	} else {
		s->n_run++;
		record(s, v, v->completed - v->started);
		emit(s, v, KILN_VERTEX_DONE, NULL);
	}
	resolve(s, vi);
}

static bool all_outputs_done(const struct solver *s)
{
	size_t k;

	if (s->v[s->out].state != VS_DONE)
		return false;
	for (k = 0; k < s->def->n_outputs; k++)
		if (s->v[s->canon[s->def->outputs[k].op]].state != VS_DONE)
			return false;
	return true;
}

/* Cancelled: nothing new starts, and the build fails once jobs return. */
static bool cancelled(struct solver *s)
{
	if (!s->o->cancelled || !s->o->cancelled(s->o->cancelled_ud))
		return false;
	if (!s->failure)
		kiln_error_set(&s->failure, -ECANCELED, "build cancelled");
	return true;
}

static void loop(struct solver *s)
{
	pthread_mutex_lock(&s->lock);
	for (;;) {
		ssize_t vi;

		/*
		 * Lookups of everything ready now share one cache transaction.
		 * Lock order: the cache's before s->lock, never the reverse.
		 */
		pthread_mutex_unlock(&s->lock);
		kiln_cache_read_begin(s->o->cache);
		s->in_bracket = true;
		pthread_mutex_lock(&s->lock);
		while (!cancelled(s) && !s->failure && !s->starved && s->running < s->slots &&
		       (vi = peek_ready(s)) >= 0) {
			heap_pop(s);
			pthread_mutex_unlock(&s->lock);
			start(s, (size_t)vi);
			pthread_mutex_lock(&s->lock);
		}
		pthread_mutex_unlock(&s->lock);
		s->in_bracket = false;
		kiln_cache_read_end(s->o->cache);
		pthread_mutex_lock(&s->lock);
		if (s->running == 0 && s->starved && !s->failure && !cancelled(s)) {
			if (++s->starved_waits > STARVED_WAITS) {
				kiln_error_set(&s->failure, -EAGAIN,
					       "no thread could be started for the build's next step (a task limit?)");
				break;
			}
			pthread_mutex_unlock(&s->lock);
			usleep(STARVED_WAIT_US);
			pthread_mutex_lock(&s->lock);
			s->starved = false;
			continue;
		}
		if (s->running == 0 && (s->failure || all_outputs_done(s) ||
					peek_ready(s) < 0))
			break;
		while (s->n_done_q == 0)
			pthread_cond_wait(&s->cond, &s->lock);
		s->starved = false; /* a job ended: its thread is free */
		s->starved_waits = 0;
		while (s->n_done_q > 0) {
			size_t done = s->done_q[--s->n_done_q];
			pthread_mutex_unlock(&s->lock);
			finish(s, done);
			pthread_mutex_lock(&s->lock);
		}
	}
	pthread_mutex_unlock(&s->lock);
}

static void solver_release(struct solver *s)
{
	size_t i;

	for (i = 0; s->v && i < s->def->n_ops; i++) {
		free(s->v[i].name);
		free(s->v[i].meta);
		free(s->v[i].dependents);
		kiln_error_free(s->v[i].job_err);
	}
	free(s->v);
	free(s->order);
	free(s->canon);
	free(s->done_q);
	free(s->ready);
	free(s->alias_v);
	for (i = 0; i < s->n_tally; i++)
		free((char *)s->tally[i].worker);
	free(s->tally);
	kiln_error_free(s->failure);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
}

void kiln_solve_result_release(struct kiln_solve_result *r)
{
	size_t i;

	for (i = 0; i < r->n_outputs; i++)
		free(r->outputs[i].meta);
	free(r->outputs);
	for (i = 0; i < r->n_records; i++)
		kiln_cache_record_release(&r->records[i].rec);
	free(r->records);
	r->records = NULL;
	r->n_records = 0;
	free(r->meta);
	r->outputs = NULL;
	r->n_outputs = 0;
	r->meta = NULL;
}

static void collect_outputs(struct solver *s, struct kiln_solve_result *out)
{
	const struct vertex *ov = &s->v[s->out];
	size_t k;

	out->tree = ov->result;
	out->meta = ov->meta ? xstrdup(ov->meta) : NULL;
	out->outputs = xcalloc(s->def->n_outputs + 1, sizeof(*out->outputs));
	for (k = 0; k < s->def->n_outputs; k++) {
		const struct vertex *v = &s->v[s->canon[s->def->outputs[k].op]];

		out->outputs[k].op = s->def->outputs[k].op;
		out->outputs[k].tree = v->result;
		out->outputs[k].meta = v->meta ? xstrdup(v->meta) : NULL;
	}
	out->n_outputs = s->def->n_outputs;
}

/*
 * --cache-to: the records of the outputs (mode=min) or of every step that
 * has a result (mode=max), blobs first, each under its definition key and,
 * when known, its content key. Local contexts are left out (they are the
 * client's files, not results). The first failure ends the export with one
 * warning; the build has succeeded whatever happens here.
 */
/* What a vertex's record holds (pointers into v and s: not owned). */
static void vertex_record(struct solver *s, struct vertex *v, struct kiln_cache_record *rec)
{
	memset(rec, 0, sizeof(*rec));
	rec->op = v->digest;
	rec->outputs = &v->result;
	rec->n_outputs = 1;
	rec->meta = v->meta;
	rec->created = (int64_t)(kiln_now_real_ns() / 1000000000u);
	rec->platform = (char *)v->op->platform;
	rec->worker = (char *)(v->where.worker[0] ? v->where.worker : worker_name(s));
	rec->size = v->size;
	rec->emulated = v->made_emulated;
}

static bool exportable(const struct vertex *v)
{
	return v->state == VS_DONE && kiln_digest_is_set(&v->result) &&
	       v->op->type != KILN_OP_SOURCE_LOCAL;
}

static int export_one(struct kiln_rcache *rc, struct kiln_store *store, const char *defkey,
		      const char *contentkey, const struct kiln_cache_record *rec,
		      uint64_t *bytes, struct kiln_error **err)
{
	const char *keys[2] = { defkey, contentkey };
	uint64_t n = 0;
	int r = kiln_rcache_put(rc, store, keys, contentkey && contentkey[0] ? 2 : 1, rec, &n, err);

	*bytes += n;
	return r;
}

int kiln_solve_export(struct kiln_rcache *rc, struct kiln_store *store,
		      const struct kiln_solve_record *recs, size_t n, uint64_t *bytes,
		      struct kiln_error **err)
{
	uint64_t total = 0;
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < n; i++)
		r = export_one(rc, store, recs[i].defkey, recs[i].contentkey, &recs[i].rec, &total, err);
	if (bytes)
		*bytes = total;
	return r;
}

/*
 * --cache-to: the records of the outputs (mode=min) or of every step that
 * has a result (mode=max), blobs first, each under its definition key and,
 * when known, its content key. Local contexts are left out (they are the
 * client's files, not results). The first failure ends the export with one
 * warning; the build has succeeded whatever happens here.
 */
static void export_records(struct solver *s)
{
	struct kiln_rcache *rc = s->o->cache_to;
	struct kiln_store *store = result_store(s);
	size_t k;

	if (!rc || !store)
		return;
	for (k = 0; k < s->n_order; k++) {
		size_t vi = s->order[k];
		struct vertex *v = &s->v[vi];
		struct kiln_cache_record rec;
		_cleanup_error_ struct kiln_error *err = NULL;

		if (!exportable(v) || (!s->o->cache_to_all && !is_output(s, vi)))
			continue;
		vertex_record(s, v, &rec);
		if (export_one(rc, store, v->defkey, v->contentkey, &rec, &s->cache_out, &err) < 0) {
			remote_warn(s, rc, -EIO, err, "the cache was not exported");
			return;
		}
	}
}

/* The outputs' records in the result, each vertex once. */
static void collect_records(struct solver *s, struct kiln_solve_result *out)
{
	size_t k, j;

	out->records = xcalloc(s->def->n_outputs + 1, sizeof(*out->records));
	for (k = 0; k <= s->def->n_outputs; k++) {
		size_t vi = k == s->def->n_outputs ? s->out : s->canon[s->def->outputs[k].op];
		struct vertex *v = &s->v[vi];
		struct kiln_solve_record *sr;
		struct kiln_cache_record rec;
		bool dup = false;

		for (j = 0; j < out->n_records; j++)
			dup |= !strcmp(out->records[j].defkey, v->defkey);
		if (dup || !exportable(v))
			continue;
		sr = &out->records[out->n_records++];
		vertex_record(s, v, &rec);
		memcpy(sr->defkey, v->defkey, sizeof(sr->defkey));
		memcpy(sr->contentkey, v->contentkey, sizeof(sr->contentkey));
		sr->rec = rec;
		sr->rec.op = xstrdup(v->digest);
		sr->rec.outputs = xmalloc(sizeof(*sr->rec.outputs));
		sr->rec.outputs[0] = v->result;
		sr->rec.meta = v->meta ? xstrdup(v->meta) : NULL;
		sr->rec.platform = v->op->platform ? xstrdup(v->op->platform) : NULL;
		sr->rec.worker = xstrdup(rec.worker);
	}
}

int kiln_solve(const struct kiln_definition *def, const struct kiln_solve_options *opts,
	       struct kiln_solve_result *out, struct kiln_error **err)
{
	struct solver s = { .def = def, .o = opts };
	uint64_t t0 = kiln_now_mono_ns();
	struct vertex *ov;
	int r;

	memset(out, 0, sizeof(*out));
	s.loop = pthread_self();
	pthread_mutex_init(&s.lock, NULL);
	pthread_cond_init(&s.cond, NULL);
	s.local = (struct kiln_executor){ .ud = &s,
					  .check_platform = local_check_platform,
					  .have = local_have,
					  .run = local_run };
	s.slots = opts->slots ? opts->slots : (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
	if (s.slots == 0)
		s.slots = 1;
	setup(&s);
	r = check_platforms(&s, err);
	if (r == 0)
		r = pin_sources(&s, err);
	if (r == 0) {
		kiln_cache_read_begin(opts->cache);
		s.in_bracket = true;
		mark_needed(&s);
		plan(&s);
		s.in_bracket = false;
		kiln_cache_read_end(opts->cache);
		loop(&s);
		flush_aliases(&s);
		kiln_cache_flush(opts->cache);
		ov = &s.v[s.out];
		if (s.failure) {
			r = s.failure->code < 0 ? s.failure->code : -EIO;
			if (err && !*err) {
				*err = s.failure;
				s.failure = NULL;
			}
		} else if (!all_outputs_done(&s)) {
			r = kiln_error_set(err, -EIO, "internal: output '%s' unresolved", ov->op->id);
		} else {
			collect_outputs(&s, out);
			collect_records(&s, out);
			export_records(&s);
		}
	}
	out->run = s.n_run;
	out->cached = s.n_cached;
	out->bytes_moved = s.moved;
	out->cache_in = s.cache_in;
	out->cache_out = s.cache_out;
	if (opts->progress) {
		struct kiln_progress_bytes b = { s.moved, s.cache_in, s.cache_out };

		kiln_progress_summary(opts->progress, s.tally, s.n_tally, &b,
				      kiln_now_mono_ns() - t0, r == 0);
	}
	solver_release(&s);
	return r;
}
