/*
 * Vertex states (one thread, the solver loop, owns them all):
 *
 *   UNNEEDED --needed--> WAITING --inputs done--> READY --start--> RUNNING
 *                          |                        |                 |
 *                          +--def key hit-----------+--content hit--> DONE
 *                                                   RUNNING --ok----> DONE
 *                                                   RUNNING --fail--> FAILED
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
#include "basic/strbuf.h"
#include "cas/tree.h"
#include "solver/fileop.h"
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
	pthread_mutex_t lock;
	pthread_cond_t cond;
	size_t *done_q;
	size_t n_done_q;
	unsigned running, slots, n_run, n_cached;
	struct kiln_error *failure;
};

/* The vertex of input i of v (identical ops share one vertex). */
static inline size_t in_of(const struct solver *s, const struct vertex *v, size_t i)
{
	return s->canon[v->op->inputs[i].op];
}

#ifndef NDEBUG
static void assert_vertex_state(const struct solver *s, size_t i)
{
	const struct vertex *v = &s->v[i];

	if (v->state == VS_READY)
		assert(v->n_waiting == 0);
	if (v->state == VS_DONE)
		assert(kiln_digest_is_set(&v->result));
}
#else
static inline void assert_vertex_state(const struct solver *s, size_t i) {}
#endif

/*
 * How errors name an op: the step as progress shows it when the op has a
 * name (every Dockerfile op does), else its id in the graph.
 */
static char *who(const struct kiln_op *op)
{
	return op->name ? xasprintf("step %s", op->name) : xasprintf("op '%s'", op->id);
}

static void prefix_who(struct kiln_error **err, const struct kiln_op *op)
{
	_cleanup_free_ char *w = who(op);

	kiln_error_prefix(err, "%s", w);
}

static const char *worker_name(const struct solver *s)
{
	return s->o->worker_name ? s->o->worker_name : "local";
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
		.worker = worker_name(s),
		.emulated = v->emulated,
		.started = v->started,
		.completed = v->completed,
		.error = error,
	};

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

/* A cache hit counts only when its result tree is still in the store. */
static bool lookup(struct solver *s, struct vertex *v, const char *key)
{
	struct kiln_cache_record rec = { 0 };
	bool hit = false;

	if (s->o->no_cache || kiln_cache_get(s->o->cache, key, &rec, NULL) < 0)
		return false;
	if (rec.n_outputs == 1 &&
	    (kiln_tree_is_empty_digest(&rec.outputs[0]) ||
	     kiln_store_has(kiln_worker_store(s->o->worker), &rec.outputs[0]))) {
		v->result = rec.outputs[0];
		free(v->meta);
		v->meta = rec.meta ? xstrdup(rec.meta) : NULL;
		hit = true;
	}
	kiln_cache_record_release(&rec);
	return hit;
}

/* A content-key hit is known under its definition key from now on too. */
static void alias_defkey(struct solver *s, struct vertex *v)
{
	_cleanup_error_ struct kiln_error *err = NULL;

	if (kiln_cache_alias(s->o->cache, v->contentkey, v->defkey, &err) < 0)
		log_warn("cannot record cache entry for %s: %s", v->name, kiln_error_msg(err));
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
	rec.worker = (char *)worker_name(s);
	rec.platform = v->op->platform;
	rec.size = v->size;
	/* Losing a record only costs a rebuild: warn, do not fail. */
	if (kiln_cache_put(s->o->cache, keys, 2, &rec, &err) < 0)
		log_warn("cannot record cache entry for %s: %s", v->name, kiln_error_msg(err));
}

static const struct kiln_digest *input_tree(struct solver *s, const struct vertex *v,
					    int i)
{
	return &s->v[in_of(s, v, (size_t)i)].result;
}

static void on_output(void *ud, int stream, const char *data, size_t len)
{
	void **pair = ud;
	struct solver *s = pair[0];
	struct vertex *v = pair[1];

	if (s->o->progress)
		kiln_progress_log(s->o->progress, v->digest, stream, data, len);
}

/* Give the worker a layer chain for tree built close to the hint's. */
static void prepare_layers(struct solver *s, int vi)
{
	struct kiln_layers *l = kiln_worker_layers(s->o->worker);
	struct vertex *v = &s->v[vi];
	struct kiln_chain chain = { 0 };

	if (kiln_layers_has(l, &v->result))
		return;
	if (v->hint >= 0)
		prepare_layers(s, v->hint);
	if (kiln_layers_materialize(l, &v->result, v->hint >= 0 ? &s->v[v->hint].result : NULL,
				    &chain, NULL) == 0)
		kiln_chain_release(&chain);
}

static char *command_line(const struct kiln_op *op)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(1024);
	size_t i;

	for (i = 0; i < op->n_args; i++)
		if (kiln_strbuf_addf(&sb, "%s%s", i ? " " : "", op->args[i]) < 0)
			break;
	return kiln_strbuf_detach(&sb, NULL);
}

static const struct kiln_secret *find_secret(struct solver *s, const char *id)
{
	size_t i;

	for (i = 0; i < s->o->n_secrets; i++)
		if (!strcmp(s->o->secrets[i].id, id))
			return &s->o->secrets[i];
	return NULL;
}

/* A missing optional secret leaves nothing mounted (an empty tmpfs). */
static int secret_mount(struct solver *s, const struct kiln_op *op,
			const struct kiln_def_mount *m, struct kiln_exec_mount *em,
			struct kiln_error **err)
{
	const struct kiln_secret *sec = find_secret(s, m->cache_id);
	_cleanup_free_ char *w = who(op);

	if (!sec && m->required)
		return kiln_error_set(err, -ENOENT,
				      "%s: secret '%s' is required but was not given (kiln build --secret id=%s,src=FILE)",
				      w, m->cache_id, m->cache_id);
	if (!sec) {
		em->type = KILN_MOUNT_TMPFS;
		em->tmpfs_size = 4096;
		return 0;
	}
	em->type = KILN_MOUNT_SECRET;
	em->secret = sec->data;
	em->secret_len = sec->len;
	em->mode = (uint32_t)m->mode;
	em->uid = (uint32_t)m->uid;
	em->gid = (uint32_t)m->gid;
	return 0;
}

static int job_exec(struct solver *s, struct vertex *v, struct kiln_error **err)
{
	const struct kiln_op *op = v->op;
	struct kiln_exec_mount *mounts = xcalloc(op->n_mounts + 1, sizeof(*mounts));
	struct kiln_exec_request req = { 0 };
	struct kiln_exec_result res = { 0 };
	_cleanup_free_ char *id = kiln_random_hex(8), *cmd = NULL, *w = who(op);
	void *pair[2] = { s, v };
	size_t i;
	int r = 0;

	prepare_layers(s, (int)in_of(s, v, (size_t)op->rootfs));
	for (i = 0; r == 0 && i < op->n_mounts; i++) {
		const struct kiln_def_mount *m = &op->mounts[i];
		struct kiln_exec_mount *em = &mounts[i];

		em->target = m->target;
		switch (m->kind) {
		case KILN_DEF_MOUNT_BIND: {
			struct kiln_tree_entry e = { 0 };

			em->type = KILN_MOUNT_TREE;
			em->readonly = m->readonly;
			r = kiln_tree_lookup(kiln_worker_store(s->o->worker),
					     input_tree(s, v, m->input), m->source, &e, err);
			if (r == 0 && e.type != KILN_ENTRY_DIR)
				r = kiln_error_set(err, -ENOTDIR,
						   "%s: mount %s: source /%s is not a directory",
						   w, m->target, m->source);
			em->tree = e.digest;
			kiln_tree_entry_release(&e);
			break;
		}
		case KILN_DEF_MOUNT_CACHE:
			em->type = KILN_MOUNT_CACHE;
			em->cache_id = m->cache_id;
			em->sharing = m->sharing == KILN_SHARING_LOCKED ? KILN_MOUNT_LOCKED
				      : m->sharing == KILN_SHARING_PRIVATE ? KILN_MOUNT_PRIVATE
									   : KILN_MOUNT_SHARED;
			em->mode = (uint32_t)m->mode;
			em->uid = (uint32_t)m->uid;
			em->gid = (uint32_t)m->gid;
			break;
		case KILN_DEF_MOUNT_SECRET:
			r = secret_mount(s, op, m, em, err);
			break;
		case KILN_DEF_MOUNT_TMPFS:
			em->type = KILN_MOUNT_TMPFS;
			em->tmpfs_size = m->size;
			break;
		}
	}
	if (r < 0)
		goto out;
	req.id = id;
	req.rootfs = *input_tree(s, v, op->rootfs);
	req.argv = (const char *const *)op->args;
	req.env = (const char *const *)op->env;
	req.cwd = op->cwd;
	req.user = op->user;
	req.network_host = op->network_host;
	req.mounts = mounts;
	req.n_mounts = op->n_mounts;
	req.platform = op->platform;
	req.output = on_output;
	req.output_ud = pair;
	r = kiln_worker_exec(s->o->worker, &req, &res, err);
	if (r < 0) {
		kiln_error_prefix(err, "%s", w);
		goto out;
	}
	if (res.exit_code != 0) {
		cmd = command_line(op);
		r = kiln_error_set(err, -ECANCELED,
				   "%s: process \"%s\" did not complete successfully: exit code %d%s%s",
				   w, cmd, res.exit_code,
				   res.tail && *res.tail ? "\n--- last output ---\n" : "",
				   res.tail ? res.tail : "");
		goto out;
	}
	v->result = res.rootfs;
out:
	kiln_exec_result_release(&res);
	free(mounts);
	return r;
}

static int job_image(struct solver *s, struct vertex *v, struct kiln_error **err)
{
	struct kiln_image_ref ref = { 0 };
	struct kiln_image img = { 0 };
	json_t *meta, *blobs;
	size_t i;
	int r;

	r = kiln_image_ref_parse(v->op->ref, "/", &ref, err);
	if (r == 0)
		r = kiln_image_import(kiln_worker_store(s->o->worker),
				      kiln_worker_layers(s->o->worker), &ref, &v->pin, &img, err);
	if (r == 0) {
		v->result = img.rootfs;
		blobs = json_pack("[ss]", KILN_DIGEST_STR(&img.manifest),
				  KILN_DIGEST_STR(&img.config));
		for (i = 0; i < img.n_layers; i++)
			json_array_append_new(blobs, json_string(KILN_DIGEST_STR(&img.layers[i])));
		meta = json_pack("{ssssso}", "manifest", KILN_DIGEST_STR(&img.manifest),
				 "config", KILN_DIGEST_STR(&img.config), "blobs", blobs);
		v->meta = json_dumps(meta, JSON_COMPACT | JSON_SORT_KEYS);
		json_decref(meta);
	}
	kiln_image_release(&img);
	kiln_image_ref_release(&ref);
	return r;
}

static int job_file(struct solver *s, struct vertex *v, struct kiln_error **err)
{
	const struct kiln_op *op = v->op;
	_cleanup_free_ struct kiln_digest *ins = xcalloc(op->n_inputs + 1, sizeof(*ins));
	size_t i;

	for (i = 0; i < op->n_inputs; i++)
		ins[i] = *input_tree(s, v, (int)i);
	if (op->type == KILN_OP_MERGE)
		return kiln_merge_trees(kiln_worker_store(s->o->worker), ins, op->n_inputs,
					&v->result, err);
	return kiln_fileop_run(kiln_worker_store(s->o->worker), op,
			       op->rootfs >= 0 ? &ins[op->rootfs] : NULL, ins, &v->result, err);
}

/* The result of source.http: a tree holding the one downloaded file. */
static int job_http(struct solver *s, struct vertex *v, struct kiln_error **err)
{
	struct kiln_store *st = kiln_worker_store(s->o->worker);
	struct kiln_tree t = KILN_TREE_INIT;
	struct kiln_tree_entry e = { 0 };
	uint64_t size = 0;
	int r = 0;

	if (!kiln_store_has(st, &v->pin))
		r = kiln_http_fetch(st, v->op->url, &v->pin, &v->pin, &size, err);
	if (r == 0)
		r = kiln_store_size(st, &v->pin, &size);
	if (r < 0) {
		prefix_who(err, v->op);
		return r;
	}
	e.name = xstrdup(v->op->filename);
	e.type = KILN_ENTRY_FILE;
	e.mode = (uint32_t)v->op->http_mode;
	e.size = size;
	e.digest = v->pin;
	kiln_tree_set(&t, &e);
	r = kiln_tree_put(st, &t, &v->result, err);
	kiln_tree_release(&t);
	return r;
}

static void *job_main(void *arg)
{
	void **pair = arg;
	struct solver *s = pair[0];
	size_t i = (size_t)pair[1];
	struct vertex *v = &s->v[i];
	int r = 0;

	free(arg);
	switch (v->op->type) {
	case KILN_OP_SOURCE_LOCAL:
		v->result = v->pin; /* hashed while pinning */
		break;
	case KILN_OP_SOURCE_IMAGE:
		r = job_image(s, v, &v->job_err);
		break;
	case KILN_OP_SOURCE_HTTP:
		r = job_http(s, v, &v->job_err);
		break;
	case KILN_OP_EXEC:
		r = job_exec(s, v, &v->job_err);
		break;
	case KILN_OP_FILE:
	case KILN_OP_MERGE:
		r = job_file(s, v, &v->job_err);
		break;
	}
	/* The record's size: counted here, off the solver loop's thread. */
	if (r == 0) {
		uint64_t entries;

		kiln_tree_usage(kiln_worker_store(s->o->worker), &v->result, &v->size, &entries,
				NULL);
	}
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
		r = kiln_worker_check_platform(s->o->worker, v->op->platform, &v->emulated, err);
		if (r < 0) {
			prefix_who(err, v->op);
			return r;
		}
	}
	return 0;
}

/* Sources are pinned to content before keys are computed. */
static int pin_sources(struct solver *s, struct kiln_error **err)
{
	size_t k;
	int r;

	for (k = 0; k < s->n_order; k++) {
		struct vertex *v = &s->v[s->order[k]];
		struct kiln_image_ref ref = { 0 };

		if (v->op->type == KILN_OP_SOURCE_LOCAL) {
			r = kiln_local_snapshot(kiln_worker_store(s->o->worker), s->o->cache,
						v->op->local_path,
						(const char *const *)v->op->include,
						v->op->n_include,
						(const char *const *)v->op->exclude,
						v->op->n_exclude, &v->pin, NULL, err);
		} else if (v->op->type == KILN_OP_SOURCE_HTTP) {
			/* A checksum pins the op; without one the content does. */
			if (kiln_digest_is_set(&v->op->checksum))
				v->pin = v->op->checksum;
			else
				r = kiln_http_fetch(kiln_worker_store(s->o->worker), v->op->url,
						    NULL, &v->pin, NULL, err);
		} else if (v->op->type == KILN_OP_SOURCE_IMAGE) {
			r = kiln_image_ref_parse(v->op->ref, "/", &ref, err);
			if (r == 0)
				r = kiln_image_resolve(&ref, v->op->platform, &v->pin, err);
			kiln_image_ref_release(&ref);
		} else {
			continue;
		}
		if (r < 0) {
			prefix_who(err, v->op);
			return r;
		}
	}
	return 0;
}

/*
 * From the output down: a definition-key hit resolves a vertex and spares
 * everything upstream of it.
 */
static void mark_needed(struct solver *s)
{
	size_t k, i;

	for (k = 0; k < s->n_order; k++)
		compute_key(s, &s->v[s->order[k]], false, s->v[s->order[k]].defkey);
	s->v[s->out].state = VS_WAITING;
	for (k = 0; k < s->def->n_outputs; k++)
		s->v[s->canon[s->def->outputs[k].op]].state = VS_WAITING;
	for (k = s->n_order; k-- > 0;) {
		struct vertex *v = &s->v[s->order[k]];

		if (v->state != VS_WAITING)
			continue;
		if (lookup(s, v, v->defkey)) {
			v->state = VS_DONE;
			v->cached = true;
			s->n_cached++;
			emit(s, v, KILN_VERTEX_CACHED, NULL);
			continue;
		}
		for (i = 0; i < v->op->n_inputs; i++)
			s->v[in_of(s, v, i)].state = VS_WAITING;
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

/* Critical path: a vertex's priority is its estimate plus its heaviest dependent's. */
static void plan(struct solver *s)
{
	size_t k, i;

	for (k = s->n_order; k-- > 0;) {
		size_t vi = s->order[k];
		struct vertex *v = &s->v[vi];
		uint64_t best = 0;

		if (v->state != VS_WAITING)
			continue;
		if (kiln_cache_estimate(s->o->cache, v->digest, &v->est_ms) < 0)
			v->est_ms = default_estimate(v->op);
		for (i = 0; i < v->n_dependents; i++) {
			struct vertex *d = &s->v[v->dependents[i]];
			if (d->state == VS_WAITING && d->priority > best)
				best = d->priority;
		}
		v->priority = v->est_ms + best;
		for (i = 0; i < v->op->n_inputs; i++)
			if (s->v[in_of(s, v, i)].state != VS_DONE)
				v->n_waiting++;
		emit(s, v, KILN_VERTEX_QUEUED, NULL);
	}
	for (k = 0; k < s->n_order; k++) {
		struct vertex *v = &s->v[s->order[k]];
		if (v->state == VS_WAITING && v->n_waiting == 0)
			v->state = VS_READY;
	}
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
			d->state = VS_READY;
	}
}

/* The ready vertex with the longest critical path, or -1. */
static ssize_t pick_ready(struct solver *s)
{
	ssize_t best = -1;
	size_t k;

	for (k = 0; k < s->n_order; k++) {
		size_t vi = s->order[k];
		if (s->v[vi].state == VS_READY &&
		    (best < 0 || s->v[vi].priority > s->v[best].priority))
			best = (ssize_t)vi;
	}
	return best;
}

static void start(struct solver *s, size_t vi)
{
	struct vertex *v = &s->v[vi];
	void **arg = xcalloc(2, sizeof(void *));

	compute_key(s, v, true, v->contentkey);
	if (lookup(s, v, v->contentkey)) {
		v->cached = true;
		s->n_cached++;
		emit(s, v, KILN_VERTEX_CACHED, NULL);
		free(arg);
		/* Known under its definition key from now on too. */
		alias_defkey(s, v);
		resolve(s, vi);
		return;
	}
	v->state = VS_RUNNING;
	v->started = kiln_now_real_ns();
	emit(s, v, KILN_VERTEX_RUNNING, NULL);
	arg[0] = s;
	arg[1] = (void *)vi;
	s->running++;
	if (pthread_create(&v->thread, NULL, job_main, arg) != 0)
		abort(); /* thread creation fails only without memory */
}

static void finish(struct solver *s, size_t vi)
{
	struct vertex *v = &s->v[vi];

	pthread_join(v->thread, NULL);
	s->running--;
	v->completed = kiln_now_real_ns();
	if (v->job_r < 0) {
		v->state = VS_FAILED;
		emit(s, v, KILN_VERTEX_ERROR, kiln_error_msg(v->job_err));
		if (!s->failure) {
			s->failure = v->job_err;
			v->job_err = NULL;
		}
		return;
	}
	s->n_run++;
	record(s, v, v->completed - v->started);
	emit(s, v, KILN_VERTEX_DONE, NULL);
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

static void loop(struct solver *s)
{
	pthread_mutex_lock(&s->lock);
	for (;;) {
		ssize_t vi;

		while (!s->failure && s->running < s->slots && (vi = pick_ready(s)) >= 0) {
			pthread_mutex_unlock(&s->lock);
			start(s, (size_t)vi);
			pthread_mutex_lock(&s->lock);
		}
		if (s->running == 0 && (s->failure || all_outputs_done(s) ||
					pick_ready(s) < 0))
			break;
		while (s->n_done_q == 0)
			pthread_cond_wait(&s->cond, &s->lock);
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

int kiln_solve(const struct kiln_definition *def, const struct kiln_solve_options *opts,
	       struct kiln_solve_result *out, struct kiln_error **err)
{
	struct solver s = { .def = def, .o = opts };
	uint64_t t0 = kiln_now_mono_ns();
	struct vertex *ov;
	int r;

	memset(out, 0, sizeof(*out));
	pthread_mutex_init(&s.lock, NULL);
	pthread_cond_init(&s.cond, NULL);
	s.slots = opts->slots ? opts->slots : (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
	if (s.slots == 0)
		s.slots = 1;
	setup(&s);
	r = check_platforms(&s, err);
	if (r == 0)
		r = pin_sources(&s, err);
	if (r == 0) {
		mark_needed(&s);
		plan(&s);
		loop(&s);
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
		}
	}
	out->run = s.n_run;
	out->cached = s.n_cached;
	if (opts->progress)
		kiln_progress_summary(opts->progress, worker_name(&s), s.n_run, s.n_cached,
				      kiln_now_mono_ns() - t0, r == 0);
	solver_release(&s);
	return r;
}
