/*
 * kiln-worker's job service (jobs.h; the wire format is docs/api.md
 * "Jobs (kilnd → worker)").
 *
 * One job, on its HTTP connection thread:
 *
 *   PARSE  --malformed--> 400
 *     | valid
 *   GRAPH  (cache, else pull the blob and parse) --no source--> 502
 *     |                                          --bad graph--> 400
 *   CHECK  (op in range, inputs match the op)    --mismatch---> 400
 *     |
 *   PULL   (each input tree, then a local pin)   --held nowhere--> 409
 *     |
 *   RUN    (kiln_job_run)                        --step failed--> 422
 *     |
 *   200 {result, meta, size, log, pulled}
 *
 * With "stream": true the job runs on a thread of its own from GRAPH on,
 * and the connection's thread answers 200 at once with JSON lines: the
 * step's output as it comes, then the answer above as the last line, with
 * its status in it (struct live).
 *
 * The running count covers GRAPH to the answer. Trees that become complete
 * here (pulled inputs, results) are added to the inventory.
 */
#include "agent/jobs.h"

#include "agent/agent-internal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/base64.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "basic/utf8.h"
#include "cas/digest-set.h"
#include "cas/tree.h"
#include "proto/http-client.h"
#include "proto/http-server.h"
#include "solver/definition.h"
#include "solver/job.h"
#include "source/image.h"
#include "peer/peer.h"
#include "registry/registry.h"
#include "worker/worker.h"

#define URL_MAX 256u
#define PLATFORM_MAX 64u
#define SECRET_ID_MAX 256u
/* A line of the inventory file: a digest and '\n'. */
#define INVENTORY_LINE_MAX 128u

/* ---- text for JSON: valid UTF-8, no NUL ---- */

/* A JSON string of n bytes of s, made valid UTF-8 (kiln_utf8_clean). */
static json_t *text_json(const char *s, size_t n)
{
	size_t len;
	_cleanup_free_ char *clean = kiln_utf8_clean(s, n, &len);

	return json_stringn(clean, len);
}

static json_t *msg_json(const char *s)
{
	return text_json(s, strlen(s));
}

/* ---- the inventory ---- */

struct kiln_inventory {
	pthread_mutex_t lock;
	struct kiln_store *store;
	struct kiln_digest *trees; /* oldest first */
	size_t n, alloc;
	struct kiln_digest_set set;
	char *path;
	int fd; /* O_APPEND */
};

static bool root_present(struct kiln_store *s, const struct kiln_digest *d)
{
	return kiln_tree_is_empty_digest(d) || kiln_store_has(s, d);
}

static void inv_push(struct kiln_inventory *inv, const struct kiln_digest *d)
{
	inv->trees = xgrow(inv->trees, &inv->alloc, inv->n + 1, sizeof(*inv->trees));
	inv->trees[inv->n++] = *d;
	kiln_digest_set_add(&inv->set, d);
}

/* Read path; true when the file should be rewritten (something dropped). */
static int inv_load(struct kiln_inventory *inv, bool *dirty, struct kiln_error **err)
{
	FILE *f = fopen(inv->path, "re");
	char line[INVENTORY_LINE_MAX];
	struct kiln_digest d;

	*dirty = false;
	if (!f && errno == ENOENT)
		return 0;
	if (!f)
		return kiln_error_seterrno(err, -errno, "inventory %s", inv->path);
	while (fgets(line, sizeof(line), f)) {
		size_t n = strlen(line);

		if (n && line[n - 1] == '\n')
			line[--n] = '\0';
		else if (!feof(f)) { /* over-long: skip the rest of it */
			int c;

			while ((c = fgetc(f)) != EOF && c != '\n')
				;
			*dirty = true;
			continue;
		} else {
			*dirty = true; /* a torn last line */
		}
		if (kiln_digest_parse(line, &d) < 0 || kiln_digest_set_has(&inv->set, &d) ||
		    !root_present(inv->store, &d)) {
			*dirty = true;
			continue;
		}
		inv_push(inv, &d);
	}
	fclose(f);
	return 0;
}

static int inv_rewrite(struct kiln_inventory *inv, struct kiln_error **err)
{
	_cleanup_free_ char *buf = xmalloc(inv->n * KILN_DIGEST_STRLEN + 1);
	size_t i, o = 0;
	int r;

	for (i = 0; i < inv->n; i++) {
		kiln_digest_fmt(&inv->trees[i], buf + o);
		o += strlen(buf + o);
		buf[o++] = '\n';
	}
	r = kiln_write_file_atomic_at(AT_FDCWD, inv->path, buf, o, 0644, true);
	if (r < 0)
		return kiln_error_seterrno(err, r, "rewriting inventory %s", inv->path);
	return 0;
}

int kiln_inventory_open(const char *path, struct kiln_store *store,
			struct kiln_inventory **out, struct kiln_error **err)
{
	struct kiln_inventory *inv = xcalloc(1, sizeof(*inv));
	bool dirty = false;
	int r;

	pthread_mutex_init(&inv->lock, NULL);
	inv->store = store;
	inv->path = xstrdup(path);
	inv->fd = -1;
	r = inv_load(inv, &dirty, err);
	if (r == 0 && dirty)
		r = inv_rewrite(inv, err);
	if (r == 0) {
		inv->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
		if (inv->fd < 0)
			r = kiln_error_seterrno(err, -errno, "inventory %s", path);
	}
	if (r < 0) {
		kiln_inventory_free(inv);
		return r;
	}
	*out = inv;
	return 0;
}

void kiln_inventory_free(struct kiln_inventory *inv)
{
	if (!inv)
		return;
	if (inv->fd >= 0)
		close(inv->fd);
	kiln_digest_set_release(&inv->set);
	free(inv->trees);
	free(inv->path);
	pthread_mutex_destroy(&inv->lock);
	free(inv);
}

int kiln_inventory_add(struct kiln_inventory *inv, const struct kiln_digest *tree)
{
	char line[KILN_DIGEST_STRLEN + 1];
	size_t n;
	int r = 0;

	pthread_mutex_lock(&inv->lock);
	if (!kiln_digest_set_has(&inv->set, tree)) {
		/* Held whether or not the line makes it to disk. */
		inv_push(inv, tree);
		kiln_digest_fmt(tree, line);
		n = strlen(line);
		line[n++] = '\n';
		r = kiln_write_full(inv->fd, line, n);
	}
	pthread_mutex_unlock(&inv->lock);
	return r;
}

bool kiln_inventory_has(struct kiln_inventory *inv, const struct kiln_digest *tree)
{
	bool has;

	pthread_mutex_lock(&inv->lock);
	has = kiln_digest_set_has(&inv->set, tree);
	pthread_mutex_unlock(&inv->lock);
	return has;
}

size_t kiln_inventory_size(struct kiln_inventory *inv)
{
	size_t n;

	pthread_mutex_lock(&inv->lock);
	n = inv->n;
	pthread_mutex_unlock(&inv->lock);
	return n;
}

json_t *kiln_inventory_json(struct kiln_inventory *inv, size_t max)
{
	json_t *a = json_array();
	size_t i;

	pthread_mutex_lock(&inv->lock);
	for (i = max && inv->n > max ? inv->n - max : 0; i < inv->n; i++)
		json_array_append_new(a, json_string(KILN_DIGEST_STR(&inv->trees[i])));
	pthread_mutex_unlock(&inv->lock);
	return a;
}

/* ---- the service ---- */

/* A parsed definition; freed when neither the cache nor a job holds it. */
struct def_entry {
	struct kiln_digest digest;
	char *platform;
	struct kiln_definition *def;
	unsigned refs;
	uint64_t used; /* tick of the last lookup (LRU) */
};

struct kiln_jobs {
	struct kiln_worker *w;
	struct kiln_store *store;
	const char *token;
	struct kiln_inventory *inv;
	struct kiln_http_client *client;
	struct kiln_registry *registry;
	const struct kiln_registry_options *ro; /* for a job with credentials */
	const char *controller;
	struct kiln_cache *records; /* the record book, or NULL */
	struct upload_queue *uq;    /* to the remote cache, or NULL */
	struct kiln_rcache *remote; /* inputs no source serves come from it */
	pthread_mutex_t lock; /* defs, tick, running */
	pthread_cond_t idle;  /* running dropped to 0 */
	struct def_entry *defs[KILN_JOBS_DEF_CACHE];
	uint64_t tick;
	unsigned running;
};

/* A job request, parsed; pointers into the request's JSON are borrowed. */
struct job_req {
	struct kiln_digest graph;
	const char *platform;
	size_t op;
	struct kiln_digest *inputs;
	size_t n_inputs;
	struct kiln_digest pin;
	bool has_pin;
	struct kiln_digest *chain;
	size_t n_chain;
	struct kiln_peer_source *sources;
	size_t n_sources;
	struct kiln_secret *secrets;
	size_t n_secrets;
	const char *ssh_session; /* "ssh": the session at kilnd, or NULL */
	/* "credentials": the client's for a source.image job's registry, or NULL */
	const json_t *credentials;
	const char **ssh_ids;
	size_t n_ssh_ids;
	uint64_t *pulled; /* verified bytes per source, this job */
	const char *defkey, *contentkey; /* "keys": the op's cache keys, or NULL */
	bool stream;      /* answer with JSON lines (struct live) */
	/*
	 * "upload": true (kilnd's --transfer s3): the result goes to the
	 * remote cache before the answer, for workers that cannot reach this
	 * one. uploaded: it is there (record included).
	 */
	bool upload, uploaded;
	char *upload_error; /* why not (owned) */
	uint64_t from_cache, to_cache; /* remote cache bytes, this job */
};

/* How a job ended when it did not succeed: status and JSON extras. */
struct job_fail {
	unsigned status;
	struct kiln_digest missing; /* 409 */
};

static void def_unref(struct def_entry *e)
{
	kiln_definition_free(e->def);
	free(e->platform);
	free(e);
}

/* Drop a reference under j->lock; the entry is freed by the caller. */
static struct def_entry *def_drop_locked(struct def_entry *e)
{
	return --e->refs == 0 ? e : NULL;
}

static void def_release(struct kiln_jobs *j, struct def_entry *e)
{
	struct def_entry *dead;

	pthread_mutex_lock(&j->lock);
	dead = def_drop_locked(e);
	pthread_mutex_unlock(&j->lock);
	if (dead)
		def_unref(dead);
}

static struct def_entry *def_find_locked(struct kiln_jobs *j, const struct kiln_digest *d,
					 const char *platform)
{
	size_t i;

	for (i = 0; i < KILN_JOBS_DEF_CACHE; i++) {
		struct def_entry *e = j->defs[i];

		if (e && kiln_digest_eq(&e->digest, d) && !strcmp(e->platform, platform)) {
			e->refs++;
			e->used = ++j->tick;
			return e;
		}
	}
	return NULL;
}

/* Cache e (holding the job's reference) unless a racing job did; returns the one to use. */
static struct def_entry *def_insert(struct kiln_jobs *j, struct def_entry *e)
{
	struct def_entry *have, *dead = NULL;
	size_t i, lru = 0;

	pthread_mutex_lock(&j->lock);
	have = def_find_locked(j, &e->digest, e->platform);
	if (!have) {
		for (i = 0; i < KILN_JOBS_DEF_CACHE; i++) {
			if (!j->defs[i]) {
				lru = i;
				break;
			}
			if (j->defs[i]->used < j->defs[lru]->used)
				lru = i;
		}
		if (j->defs[lru])
			dead = def_drop_locked(j->defs[lru]);
		e->refs = 2; /* the cache's and the job's */
		e->used = ++j->tick;
		j->defs[lru] = e;
	}
	pthread_mutex_unlock(&j->lock);
	if (dead)
		def_unref(dead);
	if (have)
		def_unref(e); /* never shared */
	return have ? have : e;
}

static void add_pulled(struct job_req *q, const struct kiln_peer_source_stats *per)
{
	size_t i;

	for (i = 0; i < q->n_sources; i++)
		q->pulled[i] += per[i].bytes;
}

/* The definition of q->graph: cached, else pulled and parsed. */
static int def_get(struct kiln_jobs *j, struct job_req *q, struct def_entry **out,
		   struct job_fail *f, struct kiln_error **err)
{
	struct kiln_peer_source_stats per[KILN_JOBS_MAX_SOURCES + 1];
	struct kiln_peer_stats st = { .sources = per };
	struct kiln_peer_pull_options po = { .http = j->client };
	_cleanup_free_ char *text = NULL;
	struct kiln_definition *def = NULL;
	struct def_entry *e;
	size_t len = 0;
	int r;

	pthread_mutex_lock(&j->lock);
	*out = def_find_locked(j, &q->graph, q->platform);
	pthread_mutex_unlock(&j->lock);
	if (*out)
		return 0;
	f->status = 502;
	r = kiln_peer_pull_blob(j->store, &q->graph, UINT64_MAX, q->sources, q->n_sources,
				&po, &st, err);
	add_pulled(q, per);
	if (r < 0) {
		kiln_error_prefix(err, "graph %s", KILN_DIGEST_STR(&q->graph));
		return r;
	}
	f->status = 400;
	r = kiln_store_read(j->store, &q->graph, KILN_DEF_MAX_BYTES, &text, &len, err);
	if (r == 0)
		r = kiln_definition_parse(text, len, "graph", "/", q->platform, &def, err);
	if (r < 0) {
		kiln_error_prefix(err, "graph %s", KILN_DIGEST_STR(&q->graph));
		return r;
	}
	e = xcalloc(1, sizeof(*e));
	e->digest = q->graph;
	e->platform = xstrdup(q->platform);
	e->def = def;
	*out = def_insert(j, e);
	return 0;
}

/* ---- parsing the request ---- */

static void req_release(struct job_req *q)
{
	size_t i;

	free(q->inputs);
	free(q->chain);
	free(q->sources);
	for (i = 0; i < q->n_secrets; i++) {
		explicit_bzero((void *)q->secrets[i].data, q->secrets[i].len);
		free((void *)q->secrets[i].data);
	}
	free(q->secrets);
	free(q->ssh_ids);
	free(q->pulled);
}

int kiln_jobs_parse_digest(const json_t *v, const char *key, struct kiln_digest *d,
			   struct kiln_error **err)
{
	if (!json_is_string(v) || kiln_digest_parse(json_string_value(v), d) < 0)
		return kiln_error_set(err, -EINVAL, "\"%s\": not a digest (sha256:<64 hex>)", key);
	return 0;
}

int kiln_jobs_parse_digests(const json_t *j, const char *key, size_t max,
			    struct kiln_digest **out, size_t *n, struct kiln_error **err)
{
	json_t *a, *v;
	size_t i;
	int r = kiln_json_member(j, key, JSON_ARRAY, true, &a, err);

	if (r < 0)
		return r;
	if (json_array_size(a) > max)
		return kiln_error_set(err, -EINVAL, "\"%s\": more than %zu digests", key, max);
	*out = xcalloc(json_array_size(a) + 1, sizeof(**out));
	json_array_foreach(a, i, v) {
		if (!json_is_string(v) || kiln_digest_parse(json_string_value(v), &(*out)[i]) < 0)
			return kiln_error_set(err, -EINVAL, "\"%s\"[%zu]: not a digest (sha256:<64 hex>)",
					      key, i);
		(*n)++;
	}
	return 0;
}

bool kiln_jobs_printable(const char *s, size_t max)
{
	size_t n = 0;

	for (; *s; s++, n++)
		if (*s <= ' ' || *s > '~' || n >= max)
			return false;
	return true;
}

int kiln_jobs_parse_sources(const json_t *j, const char *token, struct kiln_peer_source **out,
			    size_t *n, struct kiln_error **err)
{
	json_t *a, *v;
	size_t i;
	int r = kiln_json_member(j, "sources", JSON_ARRAY, true, &a, err);

	if (r < 0)
		return r;
	if (json_array_size(a) > KILN_JOBS_MAX_SOURCES)
		return kiln_error_set(err, -EINVAL, "\"sources\": more than %u", KILN_JOBS_MAX_SOURCES);
	*out = xcalloc(json_array_size(a) + 1, sizeof(**out));
	json_array_foreach(a, i, v) {
		const char *s = json_string_value(json_object_get(v, "url"));

		if (!s || !*s || !kiln_jobs_printable(s, URL_MAX) ||
		    (strncmp(s, "http://", 7) && strncmp(s, "https://", 8)))
			return kiln_error_set(err, -EINVAL,
					      "\"sources\"[%zu].url: not an http:// or https:// URL of at most %u bytes",
					      i, URL_MAX);
		(*out)[i] = (struct kiln_peer_source){ .url = s, .token = token };
		(*n)++;
	}
	return 0;
}

static int parse_secrets(const json_t *j, struct job_req *q, struct kiln_error **err)
{
	json_t *o, *v;
	const char *k;
	int r = kiln_json_member(j, "secrets", JSON_OBJECT, false, &o, err);

	if (r < 0 || !o)
		return r;
	if (json_object_size(o) > KILN_JOBS_MAX_SECRETS)
		return kiln_error_set(err, -EINVAL, "\"secrets\": more than %u", KILN_JOBS_MAX_SECRETS);
	q->secrets = xcalloc(json_object_size(o) + 1, sizeof(*q->secrets));
	json_object_foreach(o, k, v) {
		struct kiln_secret *s = &q->secrets[q->n_secrets];
		char *data = NULL;

		if (!*k || strlen(k) > SECRET_ID_MAX)
			return kiln_error_set(err, -EINVAL, "\"secrets\": an id is empty or longer than %u bytes",
					      SECRET_ID_MAX);
		if (json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v))
			data = kiln_base64_decode(json_string_value(v), &s->len);
		if (!data)
			return kiln_error_set(err, -EINVAL, "\"secrets\".%s: not base64", k);
		s->id = k;
		s->data = data;
		q->n_secrets++;
	}
	return 0;
}

static int parse_head(const json_t *j, struct job_req *q, struct kiln_error **err)
{
	json_t *v;
	int r = kiln_json_member(j, "graph", JSON_STRING, true, &v, err);

	if (r == 0)
		r = kiln_jobs_parse_digest(v, "graph", &q->graph, err);
	if (r == 0)
		r = kiln_json_member(j, "platform", JSON_STRING, true, &v, err);
	if (r < 0)
		return r;
	q->platform = json_string_value(v);
	if (!*q->platform || !kiln_jobs_printable(q->platform, PLATFORM_MAX))
		return kiln_error_set(err, -EINVAL, "\"platform\": not os/arch[/variant]");
	r = kiln_json_member(j, "op", JSON_INTEGER, true, &v, err);
	if (r < 0)
		return r;
	if (json_integer_value(v) < 0 || json_integer_value(v) >= KILN_DEF_MAX_OPS)
		return kiln_error_set(err, -EINVAL, "\"op\": %" JSON_INTEGER_FORMAT " is out of range",
				      json_integer_value(v));
	q->op = (size_t)json_integer_value(v);
	v = json_object_get(j, "pin");
	if (v && !json_is_null(v)) {
		q->has_pin = true;
		r = kiln_jobs_parse_digest(v, "pin", &q->pin, err);
	}
	if (r == 0)
		r = kiln_json_member(j, "stream", JSON_TRUE, false, &v, err);
	q->stream = v && json_is_true(v);
	if (r == 0)
		r = kiln_json_member(j, "upload", JSON_TRUE, false, &v, err);
	q->upload = v && json_is_true(v);
	v = json_object_get(j, "keys");
	if (r == 0 && v) {
		struct kiln_digest d;
		json_t *a = json_array_get(v, 0), *b = json_array_get(v, 1);

		if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_string(a) ||
		    !json_is_string(b) || kiln_digest_parse(json_string_value(a), &d) < 0 ||
		    kiln_digest_parse(json_string_value(b), &d) < 0)
			return kiln_error_set(err, -EINVAL, "\"keys\": not [definition key, content key]");
		q->defkey = json_string_value(a);
		q->contentkey = json_string_value(b);
	}
	return r;
}

/*
 * "ssh": {"session": S, "ids": [...]}: the agents the build's client
 * declared that this op mounts, reached through kilnd with S.
 */
static int parse_ssh(const json_t *j, struct job_req *q, struct kiln_error **err)
{
	json_t *o = json_object_get(j, "ssh"), *ids, *v;
	size_t i;

	if (!o)
		return 0;
	q->ssh_session = json_string_value(json_object_get(o, "session"));
	ids = json_object_get(o, "ids");
	if (!json_is_object(o) || !q->ssh_session || strspn(q->ssh_session, "0123456789abcdef") != 32 ||
	    q->ssh_session[32] || !json_is_array(ids) || json_array_size(ids) > KILN_JOBS_MAX_SECRETS)
		return kiln_error_set(err, -EINVAL,
				      "\"ssh\": expected {\"session\": 32 hex, \"ids\": [at most %u ids]}",
				      KILN_JOBS_MAX_SECRETS);
	q->ssh_ids = xcalloc(json_array_size(ids) + 1, sizeof(*q->ssh_ids));
	json_array_foreach(ids, i, v) {
		if (!json_is_string(v) || !*json_string_value(v) ||
		    strlen(json_string_value(v)) > SECRET_ID_MAX)
			return kiln_error_set(err, -EINVAL, "\"ssh\".ids[%zu]: not an id", i);
		q->ssh_ids[q->n_ssh_ids++] = json_string_value(v);
	}
	return 0;
}

int kiln_jobs_parse_credentials(const json_t *j, const json_t **out, struct kiln_error **err)
{
	json_t *o;
	int r = kiln_json_member(j, "credentials", JSON_OBJECT, false, &o, err);

	if (r == 0)
		r = kiln_registry_credentials_check(o, err);
	if (r == 0)
		*out = o;
	return r;
}

static int parse_req(const json_t *j, const char *token, struct job_req *q,
		     struct kiln_error **err)
{
	int r;

	if (!json_is_object(j))
		return kiln_error_set(err, -EINVAL, "job: not a JSON object");
	r = parse_head(j, q, err);
	if (r == 0)
		r = kiln_jobs_parse_digests(j, "inputs", KILN_DEF_MAX_OPS, &q->inputs, &q->n_inputs,
					    err);
	if (r == 0 && json_object_get(j, "chain"))
		r = kiln_jobs_parse_digests(j, "chain", KILN_JOBS_MAX_CHAIN, &q->chain, &q->n_chain,
					    err);
	if (r == 0)
		r = kiln_jobs_parse_sources(j, token, &q->sources, &q->n_sources, err);
	if (r == 0)
		q->pulled = xcalloc(q->n_sources + 1, sizeof(*q->pulled));
	if (r == 0)
		r = parse_secrets(j, q, err);
	if (r == 0)
		r = parse_ssh(j, q, err);
	if (r == 0)
		r = kiln_jobs_parse_credentials(j, &q->credentials, err);
	return r;
}

/* The op against the request: index, inputs, a local source's pin. */
static int check_op(const struct kiln_definition *def, const struct job_req *q,
		    struct kiln_error **err)
{
	const struct kiln_op *op;

	if (q->op >= def->n_ops)
		return kiln_error_set(err, -EINVAL, "\"op\": %zu is out of range: graph %s has %zu ops",
				      q->op, KILN_DIGEST_STR(&q->graph), def->n_ops);
	op = &def->ops[q->op];
	if (q->n_inputs != op->n_inputs)
		return kiln_error_set(err, -EINVAL, "\"inputs\": %zu given, op '%s' has %zu",
				      q->n_inputs, op->id, op->n_inputs);
	if (op->type == KILN_OP_SOURCE_LOCAL && !q->has_pin)
		return kiln_error_set(err, -EINVAL, "\"pin\": required for op '%s' (source.local)",
				      op->id);
	return 0;
}

/* ---- running ---- */

/* The end of the step's output: at most KILN_JOBS_LOG_MAX bytes. */
struct tail {
	pthread_mutex_t lock;
	char *buf; /* 2 * KILN_JOBS_LOG_MAX, on first output */
	size_t len;
};

static void tail_output(void *ud, int stream, const char *data, size_t n)
{
	struct tail *t = ud;
	size_t keep;

	(void)stream;
	pthread_mutex_lock(&t->lock);
	if (!t->buf)
		t->buf = xmalloc(2 * KILN_JOBS_LOG_MAX);
	if (n >= KILN_JOBS_LOG_MAX) {
		data += n - KILN_JOBS_LOG_MAX;
		n = KILN_JOBS_LOG_MAX;
		t->len = 0;
	} else if (t->len + n > 2 * KILN_JOBS_LOG_MAX) {
		keep = t->len < KILN_JOBS_LOG_MAX ? t->len : KILN_JOBS_LOG_MAX;
		memmove(t->buf, t->buf + t->len - keep, keep);
		t->len = keep;
	}
	memcpy(t->buf + t->len, data, n);
	t->len += n;
	pthread_mutex_unlock(&t->lock);
}

/* The log as JSON; a cut start skips to the next character. */
static json_t *tail_json(struct tail *t)
{
	size_t off = t->len > KILN_JOBS_LOG_MAX ? t->len - KILN_JOBS_LOG_MAX : 0, i;

	if (off)
		for (i = 0; i < 3 && off < t->len && ((unsigned char)t->buf[off] & 0xc0) == 0x80; i++)
			off++;
	return text_json(t->buf ? t->buf + off : "", t->len - off);
}

/* Make tree complete here; -ENOENT / -EPROTO: held by no source. */
/* Most bytes one input may take from the remote cache. */
#define INPUT_BUDGET (64ull << 30)

static int pull_tree(struct kiln_jobs *j, struct job_req *q, const struct kiln_digest *t,
		     struct kiln_error **err)
{
	struct kiln_peer_source_stats per[KILN_JOBS_MAX_SOURCES + 1];
	struct kiln_peer_stats st = { .sources = per };
	struct kiln_peer_pull_options po = { .http = j->client };
	int r;

	r = kiln_peer_pull_tree(j->store, t, q->sources, q->n_sources, &po, &st, err);
	add_pulled(q, per);
	/* No source could serve it: the remote cache may (kilnd left it there). */
	if (r < 0 && j->remote) {
		_cleanup_error_ struct kiln_error *e = NULL;
		uint64_t bytes = 0;

		if (kiln_rcache_fetch_tree(j->remote, t, j->store, INPUT_BUDGET, &bytes, &e) == 0) {
			q->from_cache += bytes;
			log_info("kiln-worker: input %s from the remote cache %s (%llu bytes)",
				 KILN_DIGEST_STR(t), kiln_rcache_name(j->remote),
				 (unsigned long long)bytes);
			kiln_error_free(*err);
			*err = NULL;
			r = 0;
		} else {
			log_debug("kiln-worker: input %s not in the remote cache either: %s",
				  KILN_DIGEST_STR(t), kiln_error_msg(e));
		}
	}
	if (r == 0 && kiln_inventory_add(j->inv, t) < 0)
		log_warn("kiln-worker: cannot append %s to the inventory", KILN_DIGEST_STR(t));
	return r;
}

/* Where a job's output goes, and whether its caller has gone. */
struct job_sink {
	kiln_job_output_fn output;
	bool (*cancelled)(void *ud);
	void *ud;
};

/* The caller of a streamed job went away: the job is not worth going on with. */
static int gone(const struct job_sink *to, struct job_fail *f, struct kiln_error **err)
{
	if (!to || !to->cancelled(to->ud))
		return 0;
	f->status = 422;
	return kiln_error_set(err, -ECANCELED, "not run: its caller went away");
}

/*
 * An image from an OCI layout on the client's disk: its blobs (the pinned
 * manifest, its config and layers) come from the sources, where the
 * client uploaded them; the job then imports it from the store.
 */
static int pull_layout_blobs(struct kiln_jobs *j, struct job_req *q, struct job_fail *f,
			     struct kiln_error **err)
{
	struct kiln_peer_source_stats per[KILN_JOBS_MAX_SOURCES + 1];
	struct kiln_peer_stats st = { .sources = per };
	struct kiln_peer_pull_options po = { .http = j->client };
	_cleanup_free_ struct kiln_digest *blobs = NULL;
	const struct kiln_digest *at = &q->pin; /* the blob being pulled */
	size_t n = 0, i;
	int r;

	r = kiln_peer_pull_blob(j->store, &q->pin, UINT64_MAX, q->sources, q->n_sources, &po,
				&st, err);
	add_pulled(q, per);
	if (r == 0)
		r = kiln_image_manifest_blobs(j->store, &q->pin, &blobs, &n, err);
	for (i = 0; r == 0 && i < n; i++) {
		at = &blobs[i];
		r = kiln_peer_pull_blob(j->store, at, UINT64_MAX, q->sources, q->n_sources, &po,
					&st, err);
		add_pulled(q, per);
	}
	if (r < 0) {
		f->status = r == -ENOENT || r == -EPROTO ? 409 : 500;
		f->missing = *at;
		kiln_error_prefix(err, "image of the client's layout");
	}
	return r;
}

static int pull_inputs(struct kiln_jobs *j, struct job_req *q, const struct kiln_op *op,
		       const struct job_sink *to, struct job_fail *f, struct kiln_error **err)
{
	/* Other ops' pins name what they fetch themselves (image, URL). */
	size_t n = q->n_inputs + (op->type == KILN_OP_SOURCE_LOCAL ? 1 : 0), i;
	int r = 0;

	if (op->type == KILN_OP_SOURCE_IMAGE && q->has_pin && !strncmp(op->ref, "oci-layout://", 13))
		return pull_layout_blobs(j, q, f, err);
	for (i = 0; r == 0 && i < n; i++) {
		const struct kiln_digest *t = i < q->n_inputs ? &q->inputs[i] : &q->pin;

		r = gone(to, f, err);
		if (r < 0)
			break;
		r = pull_tree(j, q, t, err);
		if (r < 0) {
			f->status = r == -ENOENT || r == -EPROTO ? 409 : 500;
			f->missing = *t;
		}
	}
	return r;
}

/* Where a job's ssh agent requests go: kilnd, for the client to answer. */
struct ssh_via_kilnd {
	struct kiln_jobs *j;
	const char *session;
};

/* The forwarder is being freed (the exec ended or was cancelled). */
static bool ssh_relay_stopped(void *ud)
{
	return atomic_load((const atomic_bool *)ud);
}

static int ssh_relay(void *ud, const char *id, const uint8_t *msg, size_t len,
		     const atomic_bool *stop, uint8_t **resp, size_t *resp_len)
{
	const struct ssh_via_kilnd *v = ud;
	_cleanup_free_ char *url = xasprintf("%s/v1/ssh", v->j->controller);
	_cleanup_free_ char *enc = kiln_base64_encode(msg, len);
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_http_call call = {
		/* the session in the body: never in a URL an error or a log shows */
		.method = "POST", .url = url, .token = v->j->token,
		.json = json_pack("{ssssss}", "session", v->session, "id", id, "data", enc),
		/* kilnd answers within its 30 s; a little more for the way */
		.timeout_ms = KILN_SSH_AGENT_TIMEOUT_MS + 5000,
		.limit = KILN_SSH_AGENT_MSG_MAX * 2,
		.abandon = ssh_relay_stopped,
		.abandon_ud = (void *)stop,
	};
	const char *data;
	json_t *o = NULL;
	int r = kiln_http_client_json(v->j->client, &call, &o, NULL, &err);

	json_decref(call.json);
	if (r < 0) {
		log_debug("kiln-worker: ssh agent request for '%s': %s", id, kiln_error_msg(err));
		return r;
	}
	data = json_string_value(json_object_get(o, "data"));
	*resp = data ? (uint8_t *)kiln_base64_decode(data, resp_len) : NULL;
	json_decref(o);
	return *resp ? 0 : -EPROTO;
}

/* ---- uploads to the remote cache: a bounded queue and one thread ---- */

#define UPLOAD_QUEUE_MAX 64
/* Records a worker's record book keeps (oldest dropped at registration). */
#define RECORD_BOOK_MAX 20000u

struct upload_item {
	char *keys[2];
	struct kiln_cache_record rec; /* owned */
};

struct upload_queue {
	struct kiln_rcache *rc;
	struct kiln_store *store;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct upload_item items[UPLOAD_QUEUE_MAX];
	size_t head, n;
	bool stop, failing;
	uint64_t done, skipped, bytes;
};

static void upload_item_release(struct upload_item *it)
{
	free(it->keys[0]);
	free(it->keys[1]);
	kiln_cache_record_release(&it->rec);
	memset(it, 0, sizeof(*it));
}

static void *upload_main(void *ud)
{
	struct upload_queue *q = ud;

	pthread_mutex_lock(&q->lock);
	for (;;) {
		struct upload_item it;
		_cleanup_error_ struct kiln_error *err = NULL;
		uint64_t bytes = 0;
		int r;

		while (!q->stop && q->n == 0)
			pthread_cond_wait(&q->cond, &q->lock);
		if (q->stop)
			break;
		it = q->items[q->head];
		memset(&q->items[q->head], 0, sizeof(it));
		q->head = (q->head + 1) % UPLOAD_QUEUE_MAX;
		q->n--;
		pthread_mutex_unlock(&q->lock);
		r = kiln_rcache_put(q->rc, q->store, (const char *const *)it.keys, 2, &it.rec,
				    &bytes, &err);
		pthread_mutex_lock(&q->lock);
		/* A change between working and failing is logged once; a stop is neither. */
		if (r == -ECANCELED) {
			upload_item_release(&it);
			continue;
		}
		if (r < 0 && !q->failing)
			log_warn("kiln-worker: uploads to the remote cache fail: %s",
				 kiln_error_msg(err));
		else if (r == 0 && q->failing)
			log_info("kiln-worker: uploads to the remote cache %s work again",
				 kiln_rcache_name(q->rc));
		q->failing = r < 0;
		q->done += r == 0;
		q->bytes += bytes;
		pthread_mutex_unlock(&q->lock);
		if (r == 0 && bytes)
			log_debug("kiln-worker: %llu bytes to the remote cache for %s",
				  (unsigned long long)bytes, it.keys[0]);
		upload_item_release(&it);
		pthread_mutex_lock(&q->lock);
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

static struct upload_queue *upload_queue_new(struct kiln_rcache *rc, struct kiln_store *store)
{
	struct upload_queue *q = xcalloc(1, sizeof(*q));

	q->rc = rc;
	q->store = store;
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->cond, NULL);
	if (pthread_create(&q->thread, NULL, upload_main, q) != 0) {
		log_warn("kiln-worker: no thread for remote cache uploads: they are off");
		pthread_mutex_destroy(&q->lock);
		pthread_cond_destroy(&q->cond);
		free(q);
		return NULL;
	}
	return q;
}

/* Stop the thread; what is still queued is dropped (only a later miss). */
static void upload_queue_free(struct upload_queue *q)
{
	size_t i;

	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stop = true;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
	pthread_join(q->thread, NULL);
	if (q->n)
		log_info("kiln-worker: %zu uploads to the remote cache dropped at exit", q->n);
	for (i = 0; i < UPLOAD_QUEUE_MAX; i++)
		upload_item_release(&q->items[i]);
	pthread_mutex_destroy(&q->lock);
	pthread_cond_destroy(&q->cond);
	free(q);
}

/* Queue a copy of rec under keys; a full queue skips it (a later miss). */
static void upload_enqueue(struct upload_queue *q, const char *const *keys,
			   const struct kiln_cache_record *rec)
{
	struct upload_item *it;

	pthread_mutex_lock(&q->lock);
	if (q->n == UPLOAD_QUEUE_MAX) {
		if (q->skipped++ % 64 == 0)
			log_warn("kiln-worker: the remote cache upload queue is full (%u): skipping",
				 UPLOAD_QUEUE_MAX);
		pthread_mutex_unlock(&q->lock);
		return;
	}
	it = &q->items[(q->head + q->n) % UPLOAD_QUEUE_MAX];
	it->keys[0] = xstrdup(keys[0]);
	it->keys[1] = xstrdup(keys[1]);
	it->rec = *rec;
	it->rec.key = NULL;
	it->rec.op = rec->op ? xstrdup(rec->op) : NULL;
	it->rec.outputs = xmalloc(sizeof(*it->rec.outputs));
	it->rec.outputs[0] = rec->outputs[0];
	it->rec.meta = rec->meta ? xstrdup(rec->meta) : NULL;
	it->rec.platform = rec->platform ? xstrdup(rec->platform) : NULL;
	it->rec.worker = rec->worker ? xstrdup(rec->worker) : NULL;
	q->n++;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
}

/*
 * The worker's own record of a job it ran, under the keys kilnd gave:
 * announced when it registers, so its results stay cache hits wherever it
 * goes. Losing one costs only a rebuild. To the remote cache: now when the
 * job asks (--transfer s3: another worker fetches it from there next),
 * else through the upload queue, off the job's way.
 */
static void keep_record(struct kiln_jobs *j, struct job_req *q, const struct kiln_op *op,
			const struct kiln_job_result *res, uint64_t ns)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	const char *keys[2] = { q->defkey, q->contentkey };
	struct kiln_cache_record rec = { 0 };
	struct kiln_digest tree = res->tree;
	size_t n_keys = q->defkey ? 2 : 0; /* without keys: the blobs alone */

	if (!q->defkey && !q->upload)
		return;
	rec.op = (char *)KILN_DIGEST_STR(&op->digest);
	rec.outputs = &tree;
	rec.n_outputs = 1;
	rec.meta = res->meta;
	rec.created = (int64_t)(kiln_now_real_ns() / 1000000000u);
	rec.duration_ms = ns / 1000000u;
	/* the op's own platform is what ran (a $BUILDPLATFORM stage's is not the build's) */
	rec.platform = op->platform ? op->platform : (char *)q->platform;
	rec.size = res->size;
	if (kiln_worker_check_platform(j->w, rec.platform, &rec.emulated, NULL) < 0)
		rec.emulated = false;
	if (n_keys && j->records && kiln_cache_put(j->records, keys, n_keys, &rec, &err) < 0) {
		log_warn("kiln-worker: cannot keep the record of op %zu: %s", q->op,
			 kiln_error_msg(err));
		kiln_error_free(TAKE_PTR(err));
	}
	if (q->upload && j->remote) {
		if (kiln_rcache_put(j->remote, j->store, keys, n_keys, &rec, &q->to_cache, &err) == 0) {
			q->uploaded = true;
		} else {
			q->upload_error = xstrdup(kiln_error_msg(err));
			log_warn("kiln-worker: op %zu: its result %s is not in the remote cache %s: %s",
				 q->op, KILN_DIGEST_STR(&tree), kiln_rcache_name(j->remote),
				 kiln_error_msg(err));
		}
	} else if (j->uq && n_keys) {
		upload_enqueue(j->uq, keys, &rec);
	}
}

struct records_json {
	json_t *all;
};

static int add_record_json(const struct kiln_cache_record *r, void *ud)
{
	struct records_json *rj = ud;
	json_t *meta = r->meta && strlen(r->meta) <= 16384 ? json_loads(r->meta, 0, NULL) : NULL;

	if (r->n_outputs != 1 || (r->meta && !meta))
		return 0;
	json_array_append_new(rj->all, json_pack("{s:s, s:s, s:s?, s:o, s:s?, s:I, s:b}",
						"key", r->key, "tree", KILN_DIGEST_STR(&r->outputs[0]),
						"op", r->op, "meta", meta ? meta : json_null(),
						"platform", r->platform,
						"duration_ms", (json_int_t)r->duration_ms,
						"emulated", r->emulated));
	return 0;
}

json_t *kiln_jobs_records_json(struct kiln_jobs *j, size_t max)
{
	struct records_json rj = { json_array() };
	json_t *out = json_array();
	size_t n, i, bytes;

	if (j->records)
		(void)kiln_cache_foreach(j->records, add_record_json, &rj, NULL);
	/* The book keeps its newest RECORD_BOOK_MAX: the rest goes now. */
	n = json_array_size(rj.all);
	for (i = 0; j->records && n > RECORD_BOOK_MAX && i < n - RECORD_BOOK_MAX; i++)
		(void)kiln_cache_delete(j->records,
					json_string_value(json_object_get(json_array_get(rj.all, i), "key")),
					NULL);
	/* Oldest first from the index: the newest max of them, newest first,
	 * in at most KILN_JOBS_RECORDS_BYTES of JSON. */
	n = json_array_size(rj.all);
	for (i = 0, bytes = 0; i < n && i < max; i++) {
		json_t *r = json_array_get(rj.all, n - 1 - i);
		char *text = json_dumps(r, JSON_COMPACT);

		bytes += text ? strlen(text) + 1 : 0;
		free(text);
		if (bytes > KILN_JOBS_RECORDS_BYTES)
			break;
		json_array_append(out, r);
	}
	json_decref(rj.all);
	return out;
}

static int run(struct kiln_jobs *j, struct job_req *q, const struct kiln_definition *def,
	       const struct job_sink *to, struct kiln_job_result *res, struct kiln_error **err)
{
	struct ssh_via_kilnd via = { .j = j, .session = q->ssh_session };
	struct kiln_ssh_agents ssh = { .ids = q->ssh_ids, .n_ids = q->n_ssh_ids,
				       .relay = ssh_relay, .ud = &via };
	struct kiln_job job = {
		.def = def, .op = q->op, .inputs = q->inputs,
		.pin = q->has_pin ? &q->pin : NULL, .chain = q->chain,
		.n_chain = q->n_chain, .registry = j->registry,
		.secrets = q->secrets, .n_secrets = q->n_secrets,
		.ssh = q->ssh_session ? &ssh : NULL,
		.layouts_in_store = true, /* a client's path names nothing here */
		.output = to->output, .output_ud = to->ud,
		.cancelled = to->cancelled, .cancelled_ud = to->ud,
	};
	const struct kiln_op *op = &def->ops[q->op];
	_cleanup_free_ char *host = q->credentials && j->ro && op->type == KILN_OP_SOURCE_IMAGE
					    ? kiln_registry_ref_host(op->ref)
					    : NULL;
	struct kiln_registry *reg = NULL;
	uint64_t t0 = kiln_now_mono_ns();
	int r = 0;

	/*
	 * The client's credentials for this image's registry: a registry
	 * client of this job's own, freed with it (docs/cluster.md).
	 */
	if (host) {
		r = kiln_registry_new_with(j->ro, q->credentials, (const char *const *)&host, 1,
					   &reg, err);
		job.registry = reg;
	}
	if (r == 0)
		r = kiln_job_run(j->w, &job, res, err);
	kiln_registry_free(reg);

	if (r == 0 && kiln_inventory_add(j->inv, &res->tree) < 0)
		log_warn("kiln-worker: cannot append %s to the inventory",
			 KILN_DIGEST_STR(&res->tree));
	if (r == 0)
		keep_record(j, q, &def->ops[q->op], res, kiln_now_mono_ns() - t0);
	return r;
}

static json_t *pulled_json(const struct job_req *q)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; i < q->n_sources; i++)
		json_array_append_new(a, json_pack("{s:s, s:I}", "url", q->sources[i].url,
						   "bytes", (json_int_t)q->pulled[i]));
	return a;
}

static void answer_ok(struct kiln_http_server_resp *resp, const struct job_req *q,
		      const struct kiln_job_result *res, struct tail *log)
{
	json_t *o = json_object();

	json_object_set_new(o, "result", json_string(KILN_DIGEST_STR(&res->tree)));
	json_object_set_new(o, "meta", res->meta ? msg_json(res->meta) : json_null());
	json_object_set_new(o, "size", json_integer((json_int_t)res->size));
	json_object_set_new(o, "log", tail_json(log));
	json_object_set_new(o, "pulled", pulled_json(q));
	json_object_set_new(o, "from_cache", json_integer((json_int_t)q->from_cache));
	json_object_set_new(o, "to_cache", json_integer((json_int_t)q->to_cache));
	json_object_set_new(o, "uploaded", json_boolean(q->uploaded));
	kiln_http_resp_json(resp, 200, o);
}

static void answer_fail(struct kiln_http_server_resp *resp, const struct job_fail *f,
			const struct kiln_error *err, struct tail *log)
{
	json_t *o = json_object();

	json_object_set_new(o, "error", msg_json(kiln_error_msg(err)));
	if (f->status == 409)
		json_object_set_new(o, "missing", json_string(KILN_DIGEST_STR(&f->missing)));
	if (f->status == 422)
		json_object_set_new(o, "log", tail_json(log));
	kiln_http_resp_json(resp, f->status, o);
}

/*
 * GRAPH, CHECK, PULL, RUN of the state comment; the answer goes to resp.
 * The step's output goes to `to` when given (a stream), else to the
 * answer's "log".
 */
static void job_do(struct kiln_jobs *j, struct job_req *q, const struct job_sink *to,
		   struct kiln_http_server_resp *resp)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct tail log = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct kiln_job_result res = { 0 };
	struct job_fail f = { .status = 500 };
	struct def_entry *e = NULL;
	int r = def_get(j, q, &e, &f, &err);

	if (r == 0) {
		f.status = 400;
		r = check_op(e->def, q, &err);
	}
	if (r == 0 && q->ssh_session && !j->controller) /* never run without the agent */
		r = kiln_error_set(&err, -EINVAL,
				   "job: \"ssh\": this worker knows no kilnd to relay ssh agent requests through");
	if (r == 0)
		r = pull_inputs(j, q, &e->def->ops[q->op], to, &f, &err);
	if (r == 0)
		r = gone(to, &f, &err); /* while the last one was pulled */
	if (r == 0) {
		f.status = 422;
		r = run(j, q, e->def, to ? to : &(struct job_sink){ tail_output, NULL, &log },
			&res, &err);
	}
	/*
	 * --transfer s3: a result that is not in the bucket reaches no other
	 * worker. A 5xx: kilnd places the step on another worker (whose
	 * bucket may work) and says why.
	 */
	if (r == 0 && q->upload && !q->uploaded) {
		f.status = 502;
		r = kiln_error_set(&err, -EIO,
				   "the result is not in the remote cache, the only way results move (--transfer s3): %s",
				   q->upload_error ? q->upload_error : "this worker has no --cache");
	}
	free(TAKE_PTR(q->upload_error));
	if (r == 0)
		answer_ok(resp, q, &res, &log);
	else
		answer_fail(resp, &f, err, &log);
	log_debug("kiln-worker: job op %zu of %s: %u%s%s", q->op, KILN_DIGEST_STR(&q->graph),
		  r == 0 ? 200 : f.status, r == 0 ? "" : ": ", r == 0 ? "" : kiln_error_msg(err));
	kiln_job_result_release(&res);
	if (e)
		def_release(j, e);
	free(log.buf);
	pthread_mutex_destroy(&log.lock);
}

static void job_begin(struct kiln_jobs *j)
{
	pthread_mutex_lock(&j->lock);
	j->running++;
	pthread_mutex_unlock(&j->lock);
}

static void job_end(struct kiln_jobs *j)
{
	pthread_mutex_lock(&j->lock);
	if (--j->running == 0)
		pthread_cond_broadcast(&j->idle);
	pthread_mutex_unlock(&j->lock);
}

/* ---- streamed answers ("stream": true) ---- */

/* Output not yet sent past this (per stream) is dropped: kilnd lags. */
#define LIVE_PENDING_MAX (4u << 20)
/* Output bytes per JSON line (escaped: at most 6 times as many). */
#define LIVE_LINE_BYTES (256u << 10)
/* A line without its newline yet is sent after this long. */
#define LIVE_FLUSH_MS 200u
/* After this long with nothing to send, an empty line (kilnd skips it). */
#define LIVE_KEEPALIVE_MS 1000u

/*
 * A streamed job, shared by its job thread (output, then the answer) and
 * the connection's thread (live_read), under lock; freed by whichever
 * lets go last. States:
 *   RUNNING  output piles up in raw; live_read encodes it into enc
 *     | the job thread sets answer   (done)
 *   DONE     live_read encodes what is left, then the answer line
 *     |                              (eof)
 *   EOF      live_read sends what enc holds, then returns 0
 */
struct live {
	struct kiln_jobs *j;
	json_t *body; /* the request: q borrows from it */
	struct job_req q;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct kiln_strbuf raw[2]; /* stdout, stderr: bytes not yet encoded */
	uint64_t dropped[2];
	struct kiln_strbuf enc; /* encoded lines, sent from enc_off */
	size_t enc_off;
	uint64_t last_sent_ns;
	json_t *answer; /* the last line, once the job ended */
	bool done, eof;
	bool hung_up; /* the caller went away first: stop the step */
	unsigned refs;
};

static void live_unref(void *ud)
{
	struct live *l = ud;
	bool last;

	pthread_mutex_lock(&l->lock);
	last = --l->refs == 0;
	pthread_mutex_unlock(&l->lock);
	if (!last)
		return;
	req_release(&l->q);
	json_decref(l->body);
	json_decref(l->answer);
	kiln_strbuf_release(&l->raw[0]);
	kiln_strbuf_release(&l->raw[1]);
	kiln_strbuf_release(&l->enc);
	pthread_cond_destroy(&l->cond);
	pthread_mutex_destroy(&l->lock);
	free(l);
}

/*
 * The response is done with (MHD's free callback): before the answer line
 * went out means the caller hung up (kilnd gave up on the job, or its
 * build was cancelled): the step is stopped.
 */
static void live_response_done(void *ud)
{
	struct live *l = ud;

	pthread_mutex_lock(&l->lock);
	l->hung_up = !l->eof;
	pthread_mutex_unlock(&l->lock);
	live_unref(l);
}

static bool live_hung_up(void *ud)
{
	struct live *l = ud;
	bool h;

	pthread_mutex_lock(&l->lock);
	h = l->hung_up;
	pthread_mutex_unlock(&l->lock);
	return h;
}

static void live_output(void *ud, int stream, const char *data, size_t n)
{
	struct live *l = ud;
	size_t i = stream == 2;

	pthread_mutex_lock(&l->lock);
	if (kiln_strbuf_add(&l->raw[i], data, n) < 0)
		l->dropped[i] += n;
	else if (memchr(data, '\n', n))
		pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
}

/* Append one JSON value and a newline to enc. */
static void live_emit(struct live *l, json_t *v)
{
	char *text = json_dumps(v, JSON_COMPACT);

	/* enc is unbounded: what it holds came through raw's limits. */
	if (text)
		(void)kiln_strbuf_adds(&l->enc, text);
	(void)kiln_strbuf_addch(&l->enc, '\n');
	free(text);
	json_decref(v);
}

/*
 * The next line's bytes of the avail at s: at most LIVE_LINE_BYTES, and a
 * cut there backs off to the start of a UTF-8 sequence.
 */
static size_t line_bytes(const char *s, size_t avail)
{
	if (avail <= LIVE_LINE_BYTES)
		return avail;
	return LIVE_LINE_BYTES - kiln_utf8_cut_tail(s, LIVE_LINE_BYTES);
}

/*
 * Encode raw output into enc: complete lines, or everything when all, in
 * JSON lines of at most LIVE_LINE_BYTES of output each (kilnd's line limit
 * holds even for output that escapes to six times its size).
 */
static void live_encode(struct live *l, bool all)
{
	size_t i, avail, off, k;
	const char *nl;

	for (i = 0; i < 2; i++) {
		struct kiln_strbuf *r = &l->raw[i];

		nl = r->len ? memrchr(r->buf, '\n', r->len) : NULL;
		avail = all ? r->len : nl ? (size_t)(nl - r->buf) + 1 : 0;
		if (all && !l->done) /* a character cut by the flush waits for its end */
			avail -= kiln_utf8_cut_tail(r->buf, avail);
		for (off = 0; off < avail; off += k) {
			k = line_bytes(r->buf + off, avail - off);
			live_emit(l, json_pack("{s:o, s:i}", "log", text_json(r->buf + off, k),
					       "stream", (int)i + 1));
		}
		if (avail) {
			memmove(r->buf, r->buf + avail, r->len - avail);
			r->len -= avail;
			r->buf[r->len] = '\0';
		}
		if (l->dropped[i] && (all || r->len == 0)) {
			char note[128];

			snprintf(note, sizeof(note), "[kiln-worker: %llu bytes of output "
				 "dropped: they came faster than kilnd read them]\n",
				 (unsigned long long)l->dropped[i]);
			live_emit(l, json_pack("{s:s, s:i}", "log", note, "stream", (int)i + 1));
			l->dropped[i] = 0;
		}
	}
}

static void assert_live_state(const struct live *l)
{
	assert(!l->eof || l->done);          /* the answer line comes last */
	assert(!l->done || l->answer);
	assert(l->enc_off <= l->enc.len);
}

/* The stream's body (kiln_http_stream_fn), on the connection's thread. */
static ssize_t live_read(void *ud, uint64_t pos, char *buf, size_t max)
{
	struct live *l = ud;
	struct timespec until;
	size_t k;
	int w = 0;

	(void)pos;
	pthread_mutex_lock(&l->lock);
	assert_live_state(l);
	if (l->enc_off == l->enc.len) {
		kiln_strbuf_reset(&l->enc);
		l->enc_off = 0;
	}
	while (l->enc.len == 0 && !l->eof) {
		live_encode(l, l->done || w == ETIMEDOUT);
		if (l->enc.len)
			break;
		if (l->done) {
			live_emit(l, json_incref(l->answer));
			l->eof = true;
			break;
		}
		if (kiln_now_mono_ns() - l->last_sent_ns >= LIVE_KEEPALIVE_MS * 1000000ull) {
			(void)kiln_strbuf_addch(&l->enc, '\n');
			break;
		}
		until = kiln_deadline_ms(CLOCK_MONOTONIC, LIVE_FLUSH_MS);
		w = pthread_cond_timedwait(&l->cond, &l->lock, &until);
	}
	k = l->enc.len - l->enc_off < max ? l->enc.len - l->enc_off : max;
	memcpy(buf, l->enc.buf + l->enc_off, k);
	l->enc_off += k;
	if (k)
		l->last_sent_ns = kiln_now_mono_ns();
	pthread_mutex_unlock(&l->lock);
	return (ssize_t)k; /* 0 only after the answer line: the end */
}

static void *live_job(void *ud)
{
	struct live *l = ud;
	struct kiln_http_server_resp resp = { .fd = -1 };
	json_t *a;

	job_do(l->j, &l->q, &(struct job_sink){ live_output, live_hung_up, l }, &resp);
	a = resp.json ? json_incref(resp.json) : json_object();
	json_object_del(a, "log"); /* it went out as it came */
	json_object_set_new(a, "status", json_integer(resp.status));
	kiln_http_server_resp_release(&resp);
	pthread_mutex_lock(&l->lock);
	l->answer = a;
	l->done = true;
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
	job_end(l->j);
	live_unref(l);
	return NULL;
}

/* Run q on a thread of its own and answer with its stream (takes q). */
static int live_start(struct kiln_jobs *j, json_t *body, struct job_req *q,
		      struct kiln_http_server_resp *resp)
{
	struct live *l = xcalloc(1, sizeof(*l));
	pthread_attr_t attr;
	pthread_t t;
	int r;

	l->j = j;
	l->body = json_incref(body);
	l->q = *q;
	l->refs = 2; /* the job thread and the response */
	pthread_mutex_init(&l->lock, NULL);
	kiln_cond_init_monotonic(&l->cond);
	kiln_strbuf_init(&l->raw[0], LIVE_PENDING_MAX);
	kiln_strbuf_init(&l->raw[1], LIVE_PENDING_MAX);
	kiln_strbuf_init(&l->enc, SIZE_MAX);
	l->last_sent_ns = kiln_now_mono_ns();
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	r = pthread_create(&t, &attr, live_job, l);
	pthread_attr_destroy(&attr);
	if (r != 0) {
		l->refs = 1;
		live_unref(l);
		job_end(j);
		kiln_http_resp_error(resp, 503, "cannot start a job thread: %s", strerror(r));
		return 0;
	}
	kiln_http_resp_stream(resp, 200, "application/x-ndjson", UINT64_MAX, live_read, l,
			      live_response_done);
	return 0;
}

static int handle_job(const struct kiln_http_server_req *req, struct kiln_http_server_resp *resp,
		      void *ud)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_jobs *j = ud;
	struct job_req q = { 0 };

	if (parse_req(req->json, j->token, &q, &err) < 0) {
		kiln_http_resp_json(resp, 400, json_pack("{s:o}", "error",
							 msg_json(kiln_error_msg(err))));
		req_release(&q);
		return 0;
	}
	job_begin(j);
	if (q.stream)
		return live_start(j, req->json, &q, resp);
	job_do(j, &q, NULL, resp);
	job_end(j);
	req_release(&q);
	return 0;
}

int kiln_jobs_new(const struct kiln_jobs_options *opts, struct kiln_jobs **out,
		  struct kiln_error **err)
{
	struct kiln_jobs *j = xcalloc(1, sizeof(*j));
	struct kiln_http_route route = {
		.method = "POST", .path = "/v1/jobs", .fn = handle_job, .ud = j,
		.body_limit = KILN_JOBS_BODY_LIMIT, .json = true, .token = opts->token,
	};
	int r;

	pthread_mutex_init(&j->lock, NULL);
	pthread_cond_init(&j->idle, NULL);
	j->w = opts->worker;
	j->store = kiln_worker_store(opts->worker);
	j->token = opts->token;
	j->registry = opts->registry;
	j->ro = opts->registry_options;
	j->controller = opts->controller;
	j->records = opts->records;
	j->remote = opts->upload;
	if (opts->upload)
		j->uq = upload_queue_new(opts->upload, j->store);
	j->client = kiln_http_client_new(&(struct kiln_http_client_options){
		.tls = opts->tls });
	r = kiln_inventory_open(opts->inventory_path, j->store, &j->inv, err);
	if (r == 0) {
		r = kiln_http_server_route(opts->http, &route);
		if (r < 0)
			kiln_error_set(err, r, "cannot add the route POST /v1/jobs");
	}
	if (r < 0) {
		kiln_jobs_free(j);
		return r;
	}
	*out = j;
	return 0;
}

void kiln_jobs_free(struct kiln_jobs *j)
{
	size_t i;

	if (!j)
		return;
	/* Streamed jobs run on threads of their own: let them finish. */
	pthread_mutex_lock(&j->lock);
	while (j->running > 0)
		pthread_cond_wait(&j->idle, &j->lock);
	pthread_mutex_unlock(&j->lock);
	upload_queue_free(j->uq);
	for (i = 0; i < KILN_JOBS_DEF_CACHE; i++)
		if (j->defs[i])
			def_unref(j->defs[i]);
	kiln_inventory_free(j->inv);
	kiln_http_client_free(j->client);
	pthread_cond_destroy(&j->idle);
	pthread_mutex_destroy(&j->lock);
	free(j);
}

unsigned kiln_jobs_running(struct kiln_jobs *j)
{
	unsigned n;

	pthread_mutex_lock(&j->lock);
	n = j->running;
	pthread_mutex_unlock(&j->lock);
	return n;
}

struct kiln_inventory *kiln_jobs_inventory(struct kiln_jobs *j)
{
	return j->inv;
}
