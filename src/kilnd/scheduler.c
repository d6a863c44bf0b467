/*
 * kilnd's executor (scheduler.h). Threads: every call comes from a solver's
 * job thread; placement state lives in the registry (its lock), the
 * in-flight table under s->lock.
 */
#include "kilnd/scheduler.h"

#include <assert.h>

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/base64.h"
#include "basic/log.h"
#include "basic/strbuf.h"
#include "basic/strv.h"
#include "cas/tree.h"
#include "proto/http-client.h"
#include "kilnd/relay.h"
#include "kilnd/ssh-relay.h"
#include "peer/peer.h"
#include "registry/registry.h"

/* Most placements of one job (each failed one marks its worker lost). */
#define MAX_ATTEMPTS 4u
/* Most holders asked for one input. */
#define MAX_HOLDERS 8u
/*
 * A job's answer streams the step's output, then its result; a quiet step
 * sends only a keep-alive byte a second, so no low-speed abort meanwhile
 * (a hung worker is found by its heartbeats).
 */
#define JOB_QUIET_S (24u * 3600u)

/*
 * A job some build is running; other builds with the same key wait on it.
 * RUNNING (done false) -> DONE: r and res, or the error. r == -ECANCELED
 * only when the owner gave it up for its own build's cancel, which says
 * nothing of the step: a waiter whose build goes on runs the step itself.
 * A step that failed is -KILN_ESTEPFAILED, and its waiters fail with it.
 */
struct flight {
	struct flight *next;
	char key[KILN_DIGEST_STRLEN];
	unsigned refs;
	bool done;
	int r;
	char *error;
	struct kiln_job_result res;
	struct kiln_placement where;
};

struct kiln_sched {
	struct kiln_worker_table *reg;
	struct kiln_store *store;
	char *self_url, *token;
	struct kiln_http_client *http;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct flight *flights;
	/*
	 * --transfer auto and s3: results the remote cache holds, which
	 * workers fetch from there themselves (kilnd copies none into its
	 * store); under bucket_lock. Forgotten at restart (a lookup finds
	 * them again).
	 */
	enum kiln_transfer transfer;
	pthread_mutex_t bucket_lock;
	struct kiln_digest_set in_bucket;
};

struct kiln_sched *kiln_sched_new(struct kiln_worker_table *reg, struct kiln_store *store,
				  const char *worker_token, const struct kiln_tls *tls)
{
	const struct kiln_http_client_options ho = { .tls = tls };
	struct kiln_sched *s = xcalloc(1, sizeof(*s));

	s->reg = reg;
	s->store = store;
	pthread_mutex_init(&s->bucket_lock, NULL);
	s->self_url = xstrdup("");
	s->token = xstrdup(worker_token);
	s->http = kiln_http_client_new(&ho);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	return s;
}

void kiln_sched_set_transfer(struct kiln_sched *s, enum kiln_transfer t)
{
	s->transfer = t;
}

/* tree is in the remote cache (again, after a tombstone). */
static void mark_in_bucket(struct kiln_sched *s, const struct kiln_digest *tree)
{
	pthread_mutex_lock(&s->bucket_lock);
	kiln_digest_set_put(&s->in_bucket, tree, 1);
	*kiln_digest_set_value(&s->in_bucket, tree) = 1;
	pthread_mutex_unlock(&s->bucket_lock);
}

bool kiln_sched_in_bucket(struct kiln_sched *s, const struct kiln_digest *tree)
{
	uint64_t *v;
	bool r;

	pthread_mutex_lock(&s->bucket_lock);
	v = kiln_digest_set_value(&s->in_bucket, tree);
	r = v && *v == 1;
	pthread_mutex_unlock(&s->bucket_lock);
	return r;
}

void kiln_sched_set_url(struct kiln_sched *s, const char *self_url)
{
	free(s->self_url);
	s->self_url = xstrdup(self_url);
}

void kiln_sched_free(struct kiln_sched *s)
{
	if (!s)
		return;
	assert(!s->flights);
	kiln_http_client_free(s->http);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	pthread_mutex_destroy(&s->bucket_lock);
	kiln_digest_set_release(&s->in_bucket);
	free(s->self_url);
	free(s->token);
	free(s);
}

/* ---- sources: who holds a tree ---- */

struct sources {
	struct kiln_peer_source src[MAX_HOLDERS * 4 + 1];
	struct kiln_worker_ref refs[MAX_HOLDERS * 4];
	size_t n, n_refs;
};

static void add_source(struct sources *ss, const char *url, const char *token)
{
	size_t i;

	for (i = 0; i < ss->n; i++)
		if (!strcmp(ss->src[i].url, url))
			return;
	if (ss->n < ARRAY_SIZE(ss->src))
		ss->src[ss->n++] = (struct kiln_peer_source){ .url = url, .token = token };
}

/* Holders of tree (but except), then kilnd itself. */
static void add_holders(struct kiln_sched *s, struct sources *ss, const struct kiln_digest *tree,
			const char *except)
{
	size_t n, i;

	if (ss->n_refs + MAX_HOLDERS > ARRAY_SIZE(ss->refs))
		return;
	n = kiln_worker_table_holders(s->reg, tree, except, &ss->refs[ss->n_refs], MAX_HOLDERS);
	for (i = 0; i < n; i++)
		add_source(ss, ss->refs[ss->n_refs + i].addr, s->token);
	ss->n_refs += n;
}

/*
 * Holders of tree (but except), each worker once over all the calls: an
 * image job lists many trees, mostly on the same few workers.
 */
static void add_holders_once(struct kiln_sched *s, struct sources *ss,
			     const struct kiln_digest *tree, const char *except)
{
	struct kiln_worker_ref refs[MAX_HOLDERS];
	size_t n = kiln_worker_table_holders(s->reg, tree, except, refs, MAX_HOLDERS), i, k;

	for (i = 0; i < n && ss->n_refs < ARRAY_SIZE(ss->refs); i++) {
		for (k = 0; k < ss->n && strcmp(ss->src[k].url, refs[i].addr); k++)
			;
		if (k < ss->n)
			continue;
		ss->refs[ss->n_refs] = refs[i];
		add_source(ss, ss->refs[ss->n_refs++].addr, s->token);
	}
}

static bool is_worker_url(const struct kiln_sched *s, const char *url)
{
	return strcmp(url, s->self_url) != 0;
}

/* ---- one attempt on one worker ---- */

/*
 * The ids of the op's ssh mounts its build's client declared (borrowed
 * from the op, at most one per mount); 0 when there are none. Ids the
 * client did not declare are left out: the worker then skips an optional
 * mount and fails a required one.
 */
static size_t ssh_ids(const struct kiln_task *t, const char **ids)
{
	const struct kiln_op *op = &t->job.def->ops[t->job.op];
	size_t i, n = 0;

	for (i = 0; i < op->n_mounts; i++)
		if (op->mounts[i].kind == KILN_DEF_MOUNT_SSH &&
		    kiln_ssh_agents_has(t->job.ssh, op->mounts[i].cache_id))
			ids[n++] = op->mounts[i].cache_id;
	return n;
}

/* {"session", "ids"} (docs/api.md), or NULL without a session. */
static json_t *job_ssh(const char *session, const char *const *ids, size_t n_ids)
{
	json_t *a;
	size_t i;

	if (!session)
		return NULL;
	a = json_array();
	for (i = 0; i < n_ids; i++)
		json_array_append_new(a, json_string(ids[i]));
	return json_pack("{ssso}", "session", session, "ids", a);
}

/* A source.image job's credentials: the client's for its registry, or NULL. */
static json_t *job_credentials(const struct kiln_sched_build *b, const struct kiln_op *op)
{
	_cleanup_free_ char *host = b->credentials && op->type == KILN_OP_SOURCE_IMAGE
					    ? kiln_registry_ref_host(op->ref)
					    : NULL;
	json_t *v = host ? json_object_get(b->credentials, host) : NULL;

	return v ? json_pack("{s:O}", host, v) : NULL;
}

static json_t *job_body(struct kiln_sched_build *b, const struct kiln_task *t,
			const struct sources *ss, const char *ssh_session,
			const char *const *ssh_id, size_t n_ssh_ids)
{
	const struct kiln_op *op = &t->job.def->ops[t->job.op];
	json_t *o = json_object(), *a;
	size_t i;

	json_object_set_new(o, "graph", json_string(KILN_DIGEST_STR(&b->graph)));
	json_object_set_new(o, "stream", json_true());
	if (b->sched->transfer == KILN_TRANSFER_S3)
		json_object_set_new(o, "upload", json_true());
	json_object_set_new(o, "platform", json_string(b->platform));
	json_object_set_new(o, "op", json_integer((json_int_t)t->job.op));
	/* The worker keeps its own record of what it ran (docs/api.md). */
	if (t->defkey && t->key)
		json_object_set_new(o, "keys", json_pack("[ss]", t->defkey, t->key));
	a = json_array();
	for (i = 0; i < op->n_inputs; i++)
		json_array_append_new(a, json_string(KILN_DIGEST_STR(&t->job.inputs[i])));
	json_object_set_new(o, "inputs", a);
	json_object_set_new(o, "pin", t->job.pin ? json_string(KILN_DIGEST_STR(t->job.pin))
						 : json_null());
	a = json_array();
	for (i = 0; i < t->job.n_chain; i++)
		json_array_append_new(a, json_string(KILN_DIGEST_STR(&t->job.chain[i])));
	json_object_set_new(o, "chain", a);
	a = json_array();
	for (i = 0; i < ss->n; i++)
		json_array_append_new(a, json_pack("{ss}", "url", ss->src[i].url));
	json_object_set_new(o, "sources", a);
	a = json_object();
	for (i = 0; i < op->n_mounts; i++) {
		const struct kiln_def_mount *m = &op->mounts[i];
		size_t k;

		if (m->kind != KILN_DEF_MOUNT_SECRET)
			continue;
		for (k = 0; k < t->job.n_secrets; k++)
			if (!strcmp(t->job.secrets[k].id, m->cache_id)) {
				char *enc = kiln_base64_encode(t->job.secrets[k].data,
							       t->job.secrets[k].len);

				json_object_set_new(a, m->cache_id, json_string(enc));
				free(enc);
			}
	}
	json_object_set_new(o, "secrets", a);
	a = job_ssh(ssh_session, ssh_id, n_ssh_ids);
	if (a)
		json_object_set_new(o, "ssh", a);
	a = job_credentials(b, op);
	if (a)
		json_object_set_new(o, "credentials", a);
	return o;
}

/* A byte count of a worker's answer; 0 when absent or not one. */
static uint64_t json_count(const json_t *o, const char *key)
{
	json_int_t v = json_integer_value(json_object_get(o, key));

	return v > 0 ? (uint64_t)v : 0;
}

static int take_result(struct kiln_sched *s, const struct kiln_task *t,
		       const struct kiln_worker_ref *w, json_t *resp,
		       struct kiln_task_result *out, struct kiln_error **err)
{
	const struct kiln_op *op = &t->job.def->ops[t->job.op];
	json_t *meta = json_object_get(resp, "meta"), *pulled, *p;
	json_int_t size = json_integer_value(json_object_get(resp, "size"));
	size_t i;

	if (kiln_digest_parse(json_string_value(json_object_get(resp, "result")) ?: "",
			      &out->res.tree) < 0 ||
	    (meta && !json_is_null(meta) && !json_is_string(meta)))
		return kiln_error_set(err, -EPROTO, "worker %s (%s): malformed job response",
				      w->name, w->addr);
	out->res.meta = json_is_string(meta) ? xstrdup(json_string_value(meta)) : NULL;
	out->res.size = size > 0 ? (uint64_t)size : 0;
	pulled = json_object_get(resp, "pulled");
	json_array_foreach(pulled, i, p) {
		const char *url = json_string_value(json_object_get(p, "url"));
		json_int_t bytes = json_integer_value(json_object_get(p, "bytes"));

		if (url && bytes > 0 && is_worker_url(s, url))
			out->moved += (uint64_t)bytes;
	}
	out->cache_in = json_count(resp, "from_cache");
	out->cache_out = json_count(resp, "to_cache");
	/* --transfer s3: the next worker fetches it from the bucket. */
	if (json_is_true(json_object_get(resp, "uploaded")))
		mark_in_bucket(s, &out->res.tree);
	/* It holds the result now, and every input it pulled to run it. */
	kiln_worker_table_hold(s->reg, w->name, &out->res.tree, out->res.size);
	for (i = 0; i < op->n_inputs; i++)
		kiln_worker_table_hold(s->reg, w->name, &t->job.inputs[i], 0);
	return 0;
}

enum attempt { ATTEMPT_DONE, ATTEMPT_RETRY };

struct watch {
	struct kiln_worker_table *reg;
	const char *name;
	const struct kiln_sched_build *b;
};

/* A job's worker missed its heartbeats: give up on its answer. */
static bool worker_gone(void *ud)
{
	const struct watch *w = ud;

	return atomic_load(&w->b->cancelled) || !kiln_worker_table_ready(w->reg, w->name);
}

static int cancelled_error(struct kiln_error **err)
{
	return kiln_error_set(err, -ECANCELED, "build cancelled");
}

/* The streamed answer of a job, read as it comes (docs/api.md). */
struct job_stream {
	const struct kiln_task *t;
	struct kiln_strbuf line; /* the line being received */
	json_t *answer;          /* the last line: the job's answer */
	char why[96];            /* what was wrong with the stream */
};

/* One complete line: output goes to the step's progress now. */
static int job_line(void *ud, char *line, size_t len)
{
	struct job_stream *js = ud;
	const struct kiln_task *t = js->t;
	json_t *v, *log;

	if (len == 0)
		return 0; /* keep-alive */
	v = json_loadb(line, len, 0, NULL);
	if (!json_is_object(v) || js->answer) {
		json_decref(v);
		snprintf(js->why, sizeof(js->why), "%s",
			 js->answer ? "a line after the answer" : "a line that is not a JSON object");
		return -EPROTO;
	}
	log = json_object_get(v, "log");
	if (!json_is_string(log)) {
		if (!json_is_integer(json_object_get(v, "status"))) {
			json_decref(v);
			snprintf(js->why, sizeof(js->why), "an answer line without a status");
			return -EPROTO;
		}
		js->answer = v;
		return 0;
	}
	if (t->job.output)
		t->job.output(t->job.output_ud,
			      json_integer_value(json_object_get(v, "stream")) == 2 ? 2 : 1,
			      json_string_value(log), json_string_length(log));
	json_decref(v);
	return 0;
}

static int job_sink(void *ud, const void *data, size_t len)
{
	struct job_stream *js = ud;
	int r = kiln_strbuf_feed_lines(&js->line, data, len, job_line, js);

	if (r == -E2BIG)
		snprintf(js->why, sizeof(js->why), "a line over %u bytes", KILN_JOBS_LINE_MAX);
	return r;
}

/* why: a retried attempt's reason, for the error when every one failed. */
static enum attempt attempt(struct kiln_sched_build *b, const struct kiln_task *t,
			    const struct kiln_worker_ref *w, struct kiln_task_result *out,
			    int *r, char why[256], struct kiln_error **err)
{
	struct kiln_sched *s = b->sched;
	const struct kiln_op *op = &t->job.def->ops[t->job.op];
	_cleanup_free_ char *url = xasprintf("%s/v1/jobs", w->addr);
	_cleanup_error_ struct kiln_error *terr = NULL;
	struct kiln_http_result res = { 0 };
	struct watch watch = { .reg = s->reg, .name = w->name, .b = b };
	struct job_stream js = { .t = t, .line = KILN_STRBUF_INIT(KILN_JOBS_LINE_MAX) };
	struct kiln_http_call call = {
		.method = "POST",
		.url = url,
		.token = s->token,
		.low_speed_time_s = JOB_QUIET_S,
		.sink = job_sink,
		.sink_ud = &js,
		.abandon = worker_gone,
		.abandon_ud = &watch,
	};
	struct sources ss = { 0 };
	_cleanup_free_ const char **ids = xcalloc(op->n_mounts + 1, sizeof(*ids));
	size_t n_ids = ssh_ids(t, ids);
	_cleanup_free_ char *ssh = NULL;
	json_t *resp = NULL;
	const char *msg;
	long status;
	size_t i;
	int tr;

	/*
	 * The ssh agent session lives as long as this attempt. Without one
	 * the job is not sent: an optional mount would run without its agent
	 * (and be cached so), a required one fail as if never given.
	 */
	if (n_ids > 0 && atomic_load(&b->cancelled)) {
		*r = cancelled_error(err);
		return ATTEMPT_DONE;
	}
	if (n_ids > 0) {
		*r = b->relay ? kiln_ssh_relay_open(b->relay, b->id, ids, n_ids, &ssh, err)
			      : kiln_error_set(err, -ENOENT, "kilnd: no ssh agent relay");
		if (*r < 0) {
			kiln_error_prefix(err, "%s", t->name);
			return ATTEMPT_DONE;
		}
	}
	/* --transfer s3: kilnd's own blobs, then the worker's bucket. */
	for (i = 0; s->transfer != KILN_TRANSFER_S3 && i < op->n_inputs; i++)
		add_holders(s, &ss, &t->job.inputs[i], w->name);
	add_source(&ss, s->self_url, s->token);
	call.json = job_body(b, t, &ss, ssh, ids, n_ids);
	tr = kiln_http_client_do(s->http, &call, &res, &terr);
	json_decref(call.json);
	kiln_ssh_relay_close(b->relay, ssh);
	if (tr == 0 && res.status == 200 && (!js.answer || js.line.len))
		snprintf(js.why, sizeof(js.why), "%s", js.answer ? "bytes after the answer"
								 : "it ended before the answer");
	kiln_strbuf_release(&js.line);
	if (js.why[0]) {
		kiln_error_free(TAKE_PTR(terr));
		tr = kiln_error_set(&terr, -EPROTO, "POST %s: a broken job stream: %s", url,
				    js.why);
	}
	if (tr < 0 && atomic_load(&b->cancelled)) {
		/* Given up on for the cancel, not the worker's fault. */
		json_decref(js.answer);
		kiln_http_result_release(&res);
		*r = cancelled_error(err);
		return ATTEMPT_DONE;
	}
	if (tr < 0) {
		/*
		 * It did not answer, went silent, or broke the stream: lost;
		 * the job goes elsewhere.
		 */
		json_decref(js.answer);
		kiln_http_result_release(&res);
		kiln_worker_table_mark_lost(s->reg, w->name, kiln_error_msg(terr));
		return ATTEMPT_RETRY;
	}
	/* A streamed answer carries its status; an early refusal is plain. */
	if (res.status == 200) {
		resp = TAKE_PTR(js.answer);
		status = json_integer_value(json_object_get(resp, "status"));
	} else {
		resp = res.body ? json_loadb(res.body, res.body_len, 0, NULL) : NULL;
		status = res.status;
	}
	msg = json_string_value(json_object_get(resp, "error"));
	switch (status) {
	case 200:
		*r = take_result(s, t, w, resp, out, err);
		break;
	case 409: {
		/* An input was found nowhere: its holders lost it. */
		struct kiln_digest missing;

		if (kiln_digest_parse(json_string_value(json_object_get(resp, "missing")) ?: "",
				      &missing) == 0) {
			kiln_worker_table_forget(s->reg, &missing);
			/* Not from the bucket either (a worker without --cache, a
			 * blob gone): computed again rather than asked for again. */
			pthread_mutex_lock(&s->bucket_lock);
			{
				uint64_t *v = kiln_digest_set_value(&s->in_bucket, &missing);

				if (v)
					*v = 0; /* a tombstone */
			}
			pthread_mutex_unlock(&s->bucket_lock);
		}
		*r = kiln_error_set(err, -ENOLINK, "on worker %s: %s", w->name,
				    msg ? msg : "an input is missing");
		break;
	}
	case 422:
		/* The step ran and failed: its error, never retried. */
		*r = kiln_error_set(err, -KILN_ESTEPFAILED, "%s", msg ? msg : "the step failed");
		break;
	default:
		if (status >= 500) {
			log_warn("worker %s: POST /v1/jobs: HTTP %ld: %s; placing the job again",
				 w->name, status, msg ? msg : "");
			snprintf(why, 256, "worker %s: HTTP %ld: %s", w->name, status, msg ? msg : "");
			json_decref(resp);
			kiln_http_result_release(&res);
			return ATTEMPT_RETRY;
		}
		if (res.status == 200) /* the status came in the stream */
			*r = kiln_error_set(err, status >= 400 && status < 500 ? -EINVAL : -EIO,
					    "POST %s: HTTP %ld: %s", url, status,
					    msg ? msg : "no error message");
		else
			*r = kiln_http_status_error(err, &call, &res);
		kiln_error_prefix(err, "worker %s", w->name);
		break;
	}
	json_decref(resp);
	kiln_http_result_release(&res);
	return ATTEMPT_DONE;
}

static int dispatch(struct kiln_sched_build *b, const struct kiln_task *t,
		    struct kiln_task_result *out, struct kiln_error **err)
{
	struct kiln_sched *s = b->sched;
	const struct kiln_op *op = &t->job.def->ops[t->job.op];
	struct kiln_place_request rq = {
		.platform = op->platform,
		.inputs = t->job.inputs,
		.n_inputs = op->n_inputs,
		.est_ms = t->est_ms,
		.cancelled = &b->cancelled,
	};
	char failed[KILN_WORKER_TABLE_NAME_MAX + 1] = "", why[256] = "";
	unsigned n;
	int r = 0;

	for (n = 0; n < MAX_ATTEMPTS; n++) {
		struct kiln_worker_ref w;
		enum attempt a;

		rq.except = failed[0] ? failed : NULL;
		if (!why[0]) {
			r = kiln_worker_table_place(s->reg, &rq, &w, err);
			if (r < 0)
				return r;
		} else {
			/* After a worker's 5xx: its reason beats "no other worker". */
			_cleanup_error_ struct kiln_error *perr = NULL;

			r = kiln_worker_table_place(s->reg, &rq, &w, &perr);
			if (r == -ENODEV)
				return kiln_error_set(err, -EIO, "%s: %s; no other worker runs %s",
						      t->name, why, op->platform);
			if (r < 0) {
				if (err && !*err)
					*err = TAKE_PTR(perr);
				return r;
			}
		}
		if (atomic_load(&b->cancelled)) { /* while it waited for a slot */
			kiln_worker_table_unplace(s->reg, w.name, t->est_ms);
			return cancelled_error(err);
		}
		out->where = (struct kiln_placement){ .emulated = w.emulated };
		snprintf(out->where.worker, sizeof(out->where.worker), "%s", w.name);
		if (t->placed)
			t->placed(t->placed_ud, &out->where);
		a = attempt(b, t, &w, out, &r, why, err);
		kiln_worker_table_unplace(s->reg, w.name, t->est_ms);
		if (a == ATTEMPT_DONE)
			return r;
		log_warn("%s: worker %s failed; placing it again", t->name, w.name);
		snprintf(failed, sizeof(failed), "%s", w.name);
	}
	return kiln_error_set(err, -EIO, "%s: %u workers failed to run it%s%s", t->name, n,
			      why[0] ? "; the last: " : "", why);
}

/* ---- the executor ---- */

static struct flight *find_flight(struct kiln_sched *s, const char *key)
{
	struct flight *f;

	for (f = s->flights; f; f = f->next)
		if (!strcmp(f->key, key))
			return f;
	return NULL;
}

static void unref_flight(struct kiln_sched *s, struct flight *f)
{
	struct flight **pp;

	if (--f->refs > 0)
		return;
	for (pp = &s->flights; *pp; pp = &(*pp)->next)
		if (*pp == f) {
			*pp = f->next;
			break;
		}
	free(f->error);
	kiln_job_result_release(&f->res);
	free(f);
}

/*
 * Another build runs the same key: wait for it and share its result.
 * -EAGAIN: its owner gave it up (cancelled) while this build goes on.
 */
static int wait_flight(struct kiln_sched *s, struct kiln_sched_build *b, struct flight *f,
		       struct kiln_task_result *out, struct kiln_error **err)
{
	int r;

	f->refs++;
	while (!f->done && !atomic_load(&b->cancelled))
		pthread_cond_wait(&s->cond, &s->lock);
	if (!f->done || (f->r == -ECANCELED && !atomic_load(&b->cancelled))) {
		r = f->done ? -EAGAIN : cancelled_error(err);
		unref_flight(s, f);
		return r;
	}
	r = f->r;
	if (r == 0) {
		out->res.tree = f->res.tree;
		out->res.meta = f->res.meta ? xstrdup(f->res.meta) : NULL;
		out->res.size = f->res.size;
		out->where = f->where;
		out->shared = true;
	} else {
		kiln_error_set(err, r, "%s", f->error ? f->error : "failed in another build");
	}
	unref_flight(s, f);
	return r;
}

static int sched_run(void *ud, const struct kiln_task *t, struct kiln_task_result *out,
		     struct kiln_error **err)
{
	struct kiln_sched_build *b = ud;
	struct kiln_sched *s = b->sched;
	struct flight *f;
	int r;

	pthread_mutex_lock(&s->lock);
	while ((f = find_flight(s, t->key)) && !f->done) {
		if (t->placed)
			t->placed(t->placed_ud, &f->where);
		r = wait_flight(s, b, f, out, err);
		if (r != -EAGAIN) {
			pthread_mutex_unlock(&s->lock);
			return r;
		}
	}
	f = xcalloc(1, sizeof(*f));
	snprintf(f->key, sizeof(f->key), "%s", t->key);
	f->refs = 1;
	f->next = s->flights;
	s->flights = f;
	pthread_mutex_unlock(&s->lock);

	r = dispatch(b, t, out, err);

	pthread_mutex_lock(&s->lock);
	f->r = r;
	f->where = out->where;
	if (r == 0) {
		f->res.tree = out->res.tree;
		f->res.meta = out->res.meta ? xstrdup(out->res.meta) : NULL;
		f->res.size = out->res.size;
	} else {
		f->error = xstrdup(err && *err ? kiln_error_msg(*err) : "failed");
	}
	f->done = true;
	pthread_cond_broadcast(&s->cond);
	unref_flight(s, f);
	pthread_mutex_unlock(&s->lock);
	return r;
}

static int sched_check_platform(void *ud, const char *platform, bool *emulated,
				struct kiln_error **err)
{
	struct kiln_sched_build *b = ud;

	return kiln_worker_table_check_platform(b->sched->reg, platform, emulated, err);
}

static bool sched_have(void *ud, const struct kiln_digest *tree)
{
	struct kiln_sched_build *b = ud;

	return kiln_tree_is_empty_digest(tree) || kiln_store_has(b->sched->store, tree) ||
	       kiln_worker_table_held(b->sched->reg, tree) || kiln_sched_in_bucket(b->sched, tree);
}

/* A remote cache hit: with --transfer auto or s3 the workers fetch it themselves. */
static bool sched_remote_hit(void *ud, const struct kiln_cache_record *rec)
{
	struct kiln_sched *s = ((struct kiln_sched_build *)ud)->sched;

	if (s->transfer == KILN_TRANSFER_PEER || rec->n_outputs != 1)
		return false;
	mark_in_bucket(s, &rec->outputs[0]);
	return true;
}

bool kiln_sched_cancel(struct kiln_sched_build *b)
{
	struct kiln_sched *s = b->sched;
	bool was;

	/* Under the lock: a build waiting on another's job wakes to it. */
	pthread_mutex_lock(&s->lock);
	was = atomic_exchange(&b->cancelled, true);
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return !was;
}

void kiln_sched_executor(struct kiln_sched_build *b, struct kiln_executor *out)
{
	*out = (struct kiln_executor){
		.ud = b,
		.check_platform = sched_check_platform,
		.have = sched_have,
		.run = sched_run,
		.remote_hit = sched_remote_hit,
	};
}

/* ---- gathering results into kilnd's store (for the client to fetch) ---- */

int kiln_sched_gather(struct kiln_sched *s, const struct kiln_digest *tree, const char *meta,
		      struct kiln_error **err)
{
	struct kiln_peer_pull_options po = { .http = s->http };
	struct sources ss = { 0 };

	add_holders(s, &ss, tree, NULL);
	if (ss.n == 0 && !kiln_tree_is_empty_digest(tree) && !kiln_store_has(s->store, tree))
		return kiln_error_set(err, -ENOLINK, "result %s is held by no worker",
				      KILN_DIGEST_STR(tree));
	return kiln_peer_pull_result(s->store, tree, meta, ss.src, ss.n, &po, err);
}

/* ---- images made on the workers (docs/api.md "Images") ---- */

/* Pushing 100s of MiB answers only at the end: heartbeats watch the worker. */
#define IMAGE_QUIET_S (24u * 3600u)
#define IMAGE_ANSWER_LIMIT (8u << 20)

int kiln_sched_image(struct kiln_sched_build *b, const char *platform,
		     const struct kiln_digest *trees, size_t n_trees, json_t *body,
		     json_t **answer, struct kiln_worker_ref *where, struct kiln_error **err)
{
	struct kiln_sched *s = b->sched;
	struct kiln_place_request rq = {
		.platform = platform, .inputs = trees, .n_inputs = n_trees,
		.cancelled = &b->cancelled,
	};
	char failed[KILN_WORKER_TABLE_NAME_MAX + 1] = "";
	unsigned n;
	int r = 0;

	for (n = 0; n < MAX_ATTEMPTS; n++) {
		_cleanup_error_ struct kiln_error *terr = NULL;
		struct kiln_worker_ref w;
		struct sources ss = { 0 };
		struct watch watch = { .reg = s->reg, .name = w.name, .b = b };
		struct kiln_http_result res = { 0 };
		_cleanup_free_ char *url = NULL;
		json_t *a, *resp;
		size_t i;
		int tr;

		rq.except = failed[0] ? failed : NULL;
		r = kiln_worker_table_place(s->reg, &rq, &w, err);
		if (r < 0)
			return r;
		url = xasprintf("%s/v1/images", w.addr);
		for (i = 0; i < n_trees; i++)
			add_holders_once(s, &ss, &trees[i], w.name);
		add_source(&ss, s->self_url, s->token);
		a = json_array();
		for (i = 0; i < ss.n; i++)
			json_array_append_new(a, json_pack("{ss}", "url", ss.src[i].url));
		json_object_set_new(body, "sources", a);
		struct kiln_http_call call = {
			.method = "POST", .url = url, .token = s->token, .json = body,
			.low_speed_time_s = IMAGE_QUIET_S, .limit = IMAGE_ANSWER_LIMIT,
			.abandon = worker_gone, .abandon_ud = &watch,
		};
		tr = kiln_http_client_do(s->http, &call, &res, &terr);
		kiln_worker_table_unplace(s->reg, w.name, 0);
		if (tr < 0 && atomic_load(&b->cancelled)) {
			kiln_http_result_release(&res);
			return cancelled_error(err);
		}
		if (tr < 0) {
			kiln_worker_table_mark_lost(s->reg, w.name, kiln_error_msg(terr));
			kiln_http_result_release(&res);
			snprintf(failed, sizeof(failed), "%s", w.name);
			continue;
		}
		resp = res.body ? json_loadb(res.body, res.body_len, 0, NULL) : NULL;
		if (res.status == 200 && json_is_object(resp)) {
			kiln_http_result_release(&res);
			*answer = resp;
			*where = w;
			return 0;
		}
		json_decref(resp);
		if (res.status == 409) { /* a tree was held nowhere it was looked for */
			_cleanup_error_ struct kiln_error *e = NULL;

			kiln_http_status_error(&e, &call, &res);
			log_warn("worker %s: %s; placing it again", w.name, kiln_error_msg(e));
			kiln_http_result_release(&res);
			snprintf(failed, sizeof(failed), "%s", w.name);
			continue;
		}
		r = kiln_http_status_error(err, &call, &res);
		kiln_http_result_release(&res);
		kiln_error_prefix(err, "worker %s", w.name);
		return r;
	}
	return kiln_error_set(err, -EIO, "the image for %s: %u workers failed to make it",
			      platform, n);
}

/* ---- the client's view of a build's outputs: relayed from their holders ---- */

void kiln_sched_holder_urls(struct kiln_sched *s, const struct kiln_digest *tree,
			    char ***urls, size_t *n)
{
	struct kiln_worker_ref refs[MAX_HOLDERS];
	size_t k = kiln_worker_table_holders(s->reg, tree, NULL, refs, MAX_HOLDERS), i;

	for (i = 0; i < k; i++)
		kiln_strv_add_unique(urls, n, refs[i].addr);
}

const char *kiln_sched_self_url(struct kiln_sched *s)
{
	return s->self_url;
}

void kiln_sched_relay(struct kiln_sched *s, const char *url, const struct kiln_relay_request *req,
		      struct kiln_http_server_resp *resp)
{
	kiln_relay(s->http, url, s->token, req, resp);
}
