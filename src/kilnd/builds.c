/*
 * Build sessions (builds.h). Threads: HTTP handler threads create builds
 * and read their progress; each build's solve runs on a thread of its own
 * and appends progress through a stdio cookie into the build's buffer.
 * Everything a build shares is under its lock; the table under b->lock.
 */
#include "kilnd/builds.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "basic/alloc.h"
#include "basic/base64.h"
#include "basic/log.h"
#include "rcache/rcache.h"
#include "basic/fs-util.h"
#include "basic/parse-util.h"
#include "basic/strbuf.h"
#include "basic/strv.h"
#include "cas/tree.h"
#include "kilnd/images.h"
#include "kilnd/relay.h"
#include "kilnd/ssh-relay.h"
#include "peer/peer.h"
#include "registry/registry.h"
#include "solver/progress.h"
#include "solver/solve.h"

#define SUBMIT_BODY_LIMIT (64u << 20)
#define MAX_BUILDS 256u
/* How long a reader waits for new progress before answering empty. */
#define EVENTS_WAIT_MS 1000u
#define EVENTS_CHUNK (1u << 20)
/* Progress kept per build (past it, later lines are dropped). */
#define EVENTS_MAX (256u << 20)
/* Ended builds are kept this long for their client to read. */
#define KEEP_NS (600ull * 1000000000ull)
/* Jobs in flight per build (each worker's slots bound the real work). */
#define BUILD_SLOTS 256u
/* kiln build --ssh: ids per build, bytes per id. */
#define MAX_SSH_IDS 64u
#define SSH_ID_MAX 256u

struct build {
	char id[17];
	struct kiln_builds *owner;
	/* What was submitted. */
	char *graph;
	struct kiln_definition *def;
	char *platform;
	struct kiln_solve_pin *pins;
	size_t n_pins;
	struct kiln_secret *secrets;
	size_t n_secrets;
	char **ssh_ids; /* the ssh agents its client declared (names only) */
	size_t n_ssh_ids;
	struct kiln_ssh_agents ssh;
	bool no_cache;
	/* The image to make and push on the cluster (kilnd/images.h), or NULL. */
	json_t *image;
	/*
	 * The client's registry credentials, for the registries the build
	 * names (FROM, pushes) only; dropped once its pushes are over.
	 */
	json_t *credentials;
	struct kiln_sched_build sb;
	pthread_t thread;
	/* Shared under lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct kiln_strbuf events;
	bool solved; /* the steps are over: outputs are being gathered */
	bool done;
	bool finished; /* build_main returned (or is about to): joinable at once */
	json_t *state; /* once done: {"ok", "error", "result"} */
	/* Once done: where its outputs are (workers, then kilnd), for the relay. */
	char **holders;
	size_t n_holders;
	uint64_t ended_ns;
	unsigned readers; /* handlers using it (under the table's lock) */
};

struct kiln_builds {
	struct kiln_sched *sched;
	struct kiln_store *store;
	struct kiln_cache *cache;
	struct kiln_registry *registry;
	struct kiln_ssh_relay *relay;
	const struct kiln_s3_config *s3; /* the remote cache, or NULL */
	const struct kiln_registry_options *ro; /* for the cluster's pushes */
	pthread_mutex_t lock;
	struct build *builds[MAX_BUILDS];
	size_t n;
};

struct kiln_builds *kiln_builds_new(struct kiln_sched *sched, struct kiln_store *store,
				    struct kiln_cache *cache, struct kiln_registry *registry)
{
	struct kiln_builds *b = xcalloc(1, sizeof(*b));

	b->sched = sched;
	b->store = store;
	b->cache = cache;
	b->registry = registry;
	b->relay = kiln_ssh_relay_new();
	pthread_mutex_init(&b->lock, NULL);
	return b;
}

void kiln_builds_set_remote_cache(struct kiln_builds *b, const struct kiln_s3_config *cfg)
{
	b->s3 = cfg;
}

void kiln_builds_set_registry_options(struct kiln_builds *b, const struct kiln_registry_options *ro)
{
	b->ro = ro;
}

/* The build's secrets, wiped once its steps are over (and at its end). */
static void drop_secrets(struct build *bd)
{
	size_t i;

	for (i = 0; i < bd->n_secrets; i++) {
		explicit_bzero((void *)bd->secrets[i].data, bd->secrets[i].len);
		free((char *)bd->secrets[i].id);
		free((void *)bd->secrets[i].data);
	}
	free(bd->secrets);
	bd->secrets = NULL;
	bd->n_secrets = 0;
}

/* The client's registry credentials go as soon as the pushes are over. */
static void drop_credentials(struct build *bd)
{
	kiln_registry_credentials_zero(bd->credentials);
	json_decref(bd->credentials);
	bd->credentials = NULL;
	bd->sb.credentials = NULL;
}

/* The credentials of creds for the registries that are keys of hosts (a new object). */
static json_t *credentials_for(const json_t *creds, const json_t *hosts)
{
	json_t *out = json_object(), *v;
	const char *host;

	json_object_foreach((json_t *)creds, host, v)
		if (json_object_get(hosts, host))
			json_object_set(out, host, v);
	return out;
}

/*
 * A registry client for the build's own lookups on kilnd, with its
 * client's credentials; NULL when it sent none (kilnd's shared one then).
 */
static struct kiln_registry *build_registry(struct kiln_builds *b, const struct build *bd)
{
	_cleanup_error_ struct kiln_error *e = NULL;
	struct kiln_registry *reg = NULL;

	if (!json_object_size(bd->credentials) || !b->ro)
		return NULL;
	if (kiln_registry_new_with(b->ro, bd->credentials, NULL, 0, &reg, &e) < 0) {
		log_warn("build %s: %s; resolving with kilnd's own credentials", bd->id,
			 kiln_error_msg(e));
		return NULL;
	}
	return reg;
}

static void build_free(struct build *bd)
{
	if (!bd)
		return;
	free(bd->graph);
	kiln_definition_free(bd->def);
	free(bd->platform);
	free(bd->pins);
	drop_secrets(bd);
	kiln_strv_free(bd->ssh_ids, bd->n_ssh_ids);
	drop_credentials(bd);
	json_decref(bd->image);
	kiln_strv_free(bd->holders, bd->n_holders);
	kiln_strbuf_release(&bd->events);
	json_decref(bd->state);
	pthread_cond_destroy(&bd->cond);
	pthread_mutex_destroy(&bd->lock);
	free(bd);
}

void kiln_builds_shutdown(struct kiln_builds *b)
{
	if (b)
		kiln_ssh_relay_shutdown(b->relay);
}

void kiln_builds_free(struct kiln_builds *b)
{
	size_t i;

	if (!b)
		return;
	for (i = 0; i < b->n; i++) {
		pthread_join(b->builds[i]->thread, NULL);
		build_free(b->builds[i]);
	}
	kiln_ssh_relay_free(b->relay);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

void kiln_builds_sweep(struct kiln_builds *b)
{
	uint64_t now = kiln_now_mono_ns();
	size_t i = 0;

	pthread_mutex_lock(&b->lock);
	while (i < b->n) {
		struct build *bd = b->builds[i];
		bool old;

		pthread_mutex_lock(&bd->lock);
		old = bd->done && bd->finished && now - bd->ended_ns > KEEP_NS && bd->readers == 0;
		pthread_mutex_unlock(&bd->lock);
		if (!old) {
			i++;
			continue;
		}
		pthread_join(bd->thread, NULL);
		build_free(bd);
		b->builds[i] = b->builds[--b->n];
	}
	pthread_mutex_unlock(&b->lock);
}

/* ---- progress into the build's buffer ---- */

static ssize_t events_write(void *cookie, const char *buf, size_t size)
{
	struct build *bd = cookie;

	pthread_mutex_lock(&bd->lock);
	kiln_strbuf_add(&bd->events, buf, size);
	pthread_cond_broadcast(&bd->cond);
	pthread_mutex_unlock(&bd->lock);
	return (ssize_t)size;
}

/* ---- the build thread ---- */

static json_t *output_json(size_t op, const struct kiln_digest *tree, const char *meta)
{
	return json_pack("{sIssso}", "op", (json_int_t)op, "tree", KILN_DIGEST_STR(tree),
			 "meta", meta ? json_string(meta) : json_null());
}

static bool build_cancelled(void *ud)
{
	struct build *bd = ud;

	return atomic_load(&bd->sb.cancelled);
}

/*
 * --transfer auto left remote cache hits in the bucket: the outputs the
 * client is handed that no worker holds come into kilnd's store from
 * there (trees and meta blobs, verified), then gather finds them here.
 */
static int bring_from_bucket(struct kiln_builds *b, struct kiln_rcache *rc,
			     const struct kiln_solve_result *res, struct kiln_error **err)
{
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && rc && i < res->n_records; i++) {
		const struct kiln_solve_record *sr = &res->records[i];
		struct kiln_cache_record rec = { 0 };

		if (kiln_store_has(b->store, &sr->rec.outputs[0]) ||
		    !kiln_sched_in_bucket(b->sched, &sr->rec.outputs[0]))
			continue;
		r = kiln_rcache_get(rc, sr->defkey, &rec, err);
		if (r == 0 && (rec.n_outputs != 1 ||
			       !kiln_digest_eq(&rec.outputs[0], &sr->rec.outputs[0])))
			r = kiln_error_set(err, -EBADMSG, "the remote cache's record %s changed",
					   sr->defkey);
		if (r == 0)
			r = kiln_rcache_fetch(rc, &rec, b->store, NULL, err);
		kiln_cache_record_release(&rec);
	}
	return r;
}

static void *build_main(void *ud)
{
	struct build *bd = ud;
	struct kiln_builds *b = bd->owner;
	_cleanup_error_ struct kiln_error *err = NULL;
	cookie_io_functions_t io = { .write = events_write };
	FILE *f = fopencookie(bd, "w", io);
	struct kiln_progress *pg = kiln_progress_new(KILN_PROGRESS_JSON, f);
	struct kiln_solve_result res = { 0 };
	struct kiln_rcache *rc = NULL;
	struct kiln_registry *reg = build_registry(b, bd);
	struct kiln_executor ex;
	struct kiln_solve_options so = {
		.worker_name = "kilnd",
		.executor = &ex,
		.store = b->store,
		.registry = reg ? reg : b->registry,
		.pins = bd->pins,
		.n_pins = bd->n_pins,
		.cache = b->cache,
		.progress = pg,
		.slots = BUILD_SLOTS,
		.no_cache = bd->no_cache,
		.secrets = bd->secrets,
		.n_secrets = bd->n_secrets,
		.ssh = bd->n_ssh_ids ? &bd->ssh : NULL,
		.cancelled = build_cancelled,
		.cancelled_ud = bd,
	};
	json_t *state, *outs = json_array(), *image = NULL, *push_creds = NULL;
	char **holders = NULL;
	size_t n_holders = 0;
	size_t i;
	int r;

	kiln_sched_executor(&bd->sb, &ex);
	/*
	 * A remote cache object per build: its warning state is the build's,
	 * while the endpoint's circuit breaker is shared by all of them.
	 */
	if (b->s3) {
		_cleanup_error_ struct kiln_error *e = NULL;

		if (kiln_rcache_open_s3(b->s3, &rc, &e) < 0) {
			_cleanup_free_ char *msg = xasprintf("remote cache unavailable: %s; building without it",
							     kiln_error_msg(e));

			kiln_progress_warning(pg, msg);
		}
		so.cache_from = rc;
	}
	r = kiln_solve(bd->def, &so, &res, &err);
	drop_secrets(bd); /* the steps are over: no job needs them any more */
	kiln_ssh_relay_end_build(b->relay, bd->id);
	pthread_mutex_lock(&bd->lock);
	bd->solved = true;
	pthread_mutex_unlock(&bd->lock);
	if (r == 0)
		r = bring_from_bucket(b, rc, &res, &err);
	/*
	 * The outputs stay where they are: the client pulls what it needs
	 * through the relay. Only for the remote cache's export (below) does
	 * kilnd gather them into its store.
	 */
	if (r == 0 && rc)
		r = kiln_sched_gather(b->sched, &res.tree, res.meta, &err);
	if (r == 0)
		kiln_sched_holder_urls(b->sched, &res.tree, &holders, &n_holders);
	for (i = 0; r == 0 && i < res.n_outputs; i++) {
		if (rc)
			r = kiln_sched_gather(b->sched, &res.outputs[i].tree, res.outputs[i].meta,
					      &err);
		kiln_sched_holder_urls(b->sched, &res.outputs[i].tree, &holders, &n_holders);
		json_array_append_new(outs, output_json(res.outputs[i].op, &res.outputs[i].tree,
							res.outputs[i].meta));
	}
	if (r == 0 && bd->image) {
		json_t *hosts = json_object();

		kiln_cluster_image_hosts(bd->image, hosts);
		push_creds = credentials_for(bd->credentials, hosts);
		json_decref(hosts);
		r = kiln_cluster_image(&bd->sb, b->store, b->ro, bd->def, bd->image, push_creds,
				       &res, &image, &holders, &n_holders, &err);
		kiln_registry_credentials_zero(push_creds);
		json_decref(push_creds);
	}
	kiln_registry_free(reg);
	drop_credentials(bd);
	/* Last: what kilnd holds itself (contexts, results from the bucket). */
	kiln_strv_add(&holders, &n_holders, kiln_sched_self_url(b->sched));
	if (r == 0) {
		state = json_pack("{sbs{sssososIsIsI}}", "ok", 1, "result", "tree",
				  KILN_DIGEST_STR(&res.tree), "meta",
				  res.meta ? json_string(res.meta) : json_null(), "outputs", outs,
				  "run", (json_int_t)res.run, "cached", (json_int_t)res.cached,
				  "bytes_moved", (json_int_t)res.bytes_moved);
		if (image)
			json_object_set_new(json_object_get(state, "result"), "image", image);
		json_object_set_new(json_object_get(state, "result"), "holders",
				    json_integer((json_int_t)n_holders));
		log_info("build %s: done, %u run, %u cached", bd->id, res.run, res.cached);
	} else {
		json_decref(outs);
		state = json_pack("{sbss}", "ok", 0, "error",
				  err ? kiln_error_msg(err) : "build failed");
		log_info("build %s: failed: %s", bd->id, err ? kiln_error_msg(err) : "");
	}
	kiln_progress_free(pg);
	if (f)
		fclose(f);
	pthread_mutex_lock(&bd->lock);
	bd->state = state;
	bd->holders = holders;
	bd->n_holders = n_holders;
	bd->done = true;
	bd->ended_ns = kiln_now_mono_ns();
	pthread_cond_broadcast(&bd->cond);
	pthread_mutex_unlock(&bd->lock);
	/*
	 * The client has its result; the outputs are in kilnd's store: their
	 * records to the bucket now, off the client's way (a failure is
	 * logged; the workers copy every step they run anyway).
	 */
	if (r == 0 && rc) {
		_cleanup_error_ struct kiln_error *e = NULL;
		uint64_t bytes = 0;

		if (kiln_solve_export(rc, b->store, res.records, res.n_records, &bytes, &e) < 0)
			log_warn("build %s: the cache was not exported: %s", bd->id, kiln_error_msg(e));
		else if (bytes)
			log_info("build %s: %llu bytes to the remote cache %s", bd->id,
				 (unsigned long long)bytes, kiln_rcache_name(rc));
	}
	kiln_rcache_free(rc);
	kiln_solve_result_release(&res);
	pthread_mutex_lock(&bd->lock);
	bd->finished = true; /* kiln_builds_sweep may join and free it now */
	pthread_mutex_unlock(&bd->lock);
	return NULL;
}

/* ---- POST /v1/builds ---- */

static int parse_pins(struct build *bd, json_t *a, struct kiln_error **err)
{
	json_t *p;
	size_t i;

	if (!a)
		return 0;
	if (!json_is_array(a))
		return kiln_error_set(err, -EINVAL, "\"pins\": expected an array");
	bd->pins = xcalloc(json_array_size(a) + 1, sizeof(*bd->pins));
	json_array_foreach(a, i, p) {
		const char *op = json_string_value(json_object_get(p, "op"));
		const char *tree = json_string_value(json_object_get(p, "tree"));

		if (!op || !tree || kiln_digest_parse(op, &bd->pins[i].op) < 0 ||
		    kiln_digest_parse(tree, &bd->pins[i].tree) < 0)
			return kiln_error_set(err, -EINVAL,
					      "\"pins\"[%zu]: expected {\"op\": digest, \"tree\": digest}",
					      i);
		bd->n_pins++;
	}
	return 0;
}

static int parse_secrets(struct build *bd, json_t *o, struct kiln_error **err)
{
	const char *k;
	json_t *v;

	if (!o)
		return 0;
	if (!json_is_object(o))
		return kiln_error_set(err, -EINVAL, "\"secrets\": expected an object");
	bd->secrets = xcalloc(json_object_size(o) + 1, sizeof(*bd->secrets));
	json_object_foreach(o, k, v) {
		size_t len;
		char *data = json_is_string(v) ? kiln_base64_decode(json_string_value(v), &len)
					       : NULL;

		if (!data)
			return kiln_error_set(err, -EINVAL, "\"secrets\".\"%s\": not base64", k);
		bd->secrets[bd->n_secrets++] = (struct kiln_secret){
			.id = xstrdup(k), .data = data, .len = len
		};
	}
	return 0;
}

/* "ssh": the ids of the client's --ssh flags; never a socket or a key. */
static int parse_ssh(struct build *bd, json_t *a, struct kiln_error **err)
{
	json_t *v;
	size_t i;

	if (!a)
		return 0;
	if (!json_is_array(a) || json_array_size(a) > MAX_SSH_IDS)
		return kiln_error_set(err, -EINVAL, "\"ssh\": expected an array of at most %u ids",
				      MAX_SSH_IDS);
	bd->ssh_ids = xcalloc(json_array_size(a) + 1, sizeof(char *));
	json_array_foreach(a, i, v) {
		const char *id = json_string_value(v);

		if (!id || !*id || strlen(id) > SSH_ID_MAX)
			return kiln_error_set(err, -EINVAL, "\"ssh\"[%zu]: expected an id of 1-%u bytes",
					      i, SSH_ID_MAX);
		bd->ssh_ids[bd->n_ssh_ids++] = xstrdup(id);
	}
	bd->ssh = (struct kiln_ssh_agents){ .ids = (const char *const *)bd->ssh_ids,
					    .n_ids = bd->n_ssh_ids };
	return 0;
}

/*
 * "credentials": the client's, kept only for the registries the build
 * names: its source.image references and its pushes.
 */
static int parse_credentials(struct build *bd, const json_t *creds, struct kiln_error **err)
{
	json_t *hosts = json_object();
	size_t i;
	int r = kiln_registry_credentials_check(creds, err);

	if (r < 0 || !creds) {
		json_decref(hosts);
		return r;
	}
	for (i = 0; i < bd->def->n_ops; i++) {
		_cleanup_free_ char *host = bd->def->ops[i].type == KILN_OP_SOURCE_IMAGE
						    ? kiln_registry_ref_host(bd->def->ops[i].ref)
						    : NULL;

		if (host)
			json_object_set_new(hosts, host, json_true());
	}
	if (bd->image)
		kiln_cluster_image_hosts(bd->image, hosts);
	bd->credentials = credentials_for(creds, hosts);
	json_decref(hosts);
	bd->sb.credentials = bd->credentials;
	return 0;
}

static int parse_submit(struct kiln_builds *b, struct build *bd, json_t *body,
			struct kiln_error **err)
{
	const char *graph = json_string_value(json_object_get(body, "graph"));
	const char *platform = json_string_value(json_object_get(body, "platform"));
	const char *base_dir = json_string_value(json_object_get(body, "base_dir"));
	json_t *nc = json_object_get(body, "no_cache");
	int r;

	if (!graph)
		return kiln_error_set(err, -EINVAL, "\"graph\": expected the graph's JSON text");
	if (!platform)
		return kiln_error_set(err, -EINVAL, "\"platform\": expected os/arch");
	if (nc && !json_is_boolean(nc))
		return kiln_error_set(err, -EINVAL, "\"no_cache\": expected a boolean");
	bd->no_cache = json_is_true(nc);
	bd->graph = xstrdup(graph);
	bd->platform = xstrdup(platform);
	/* The client's base directory: relative paths become what it hashed. */
	if (base_dir && base_dir[0] != '/')
		return kiln_error_set(err, -EINVAL, "\"base_dir\": expected an absolute path");
	r = kiln_definition_parse(bd->graph, strlen(bd->graph), "graph", base_dir ? base_dir : "/",
				  bd->platform, &bd->def, err);
	if (r < 0)
		return r;
	/* oci-layout sources: the client pins them (solve.c, given_image_pin). */
	r = parse_pins(bd, json_object_get(body, "pins"), err);
	if (r == 0)
		r = parse_secrets(bd, json_object_get(body, "secrets"), err);
	if (r == 0)
		r = parse_ssh(bd, json_object_get(body, "ssh"), err);
	if (r == 0 && json_object_get(body, "image"))
		r = kiln_cluster_image_check(json_object_get(body, "image"), bd->def, &bd->image, err);
	if (r == 0)
		r = parse_credentials(bd, json_object_get(body, "credentials"), err);
	if (r == 0)
		/* Workers fetch the graph from kilnd, like any blob. */
		r = kiln_store_put_buf(b->store, bd->graph, strlen(bd->graph), &bd->sb.graph,
				       err);
	return r;
}

/*
 * Every pin names an op of the graph, and a context's is a tree here (its
 * root node loads, verified, and decodes; its other nodes are checked as
 * the workers pull them): a bad pin fails the submission naming the
 * context, not the build later with a misleading error (issue 14).
 */
static int check_pins(struct kiln_builds *b, const struct build *bd, struct kiln_error **err)
{
	size_t i, k;

	for (i = 0; i < bd->n_pins; i++) {
		const struct kiln_op *op = NULL;
		struct kiln_tree t = KILN_TREE_INIT;
		int r;

		for (k = 0; k < bd->def->n_ops && !op; k++)
			if (kiln_digest_eq(&bd->def->ops[k].digest, &bd->pins[i].op))
				op = &bd->def->ops[k];
		if (!op)
			return kiln_error_set(err, -EINVAL, "\"pins\"[%zu]: op %s is not in the graph",
					      i, KILN_DIGEST_STR(&bd->pins[i].op));
		if (op->type != KILN_OP_SOURCE_LOCAL)
			continue;
		r = kiln_tree_get(b->store, &bd->pins[i].tree, &t, err);
		kiln_tree_release(&t);
		if (r < 0) {
			kiln_error_prefix(err, "\"pins\"[%zu]: context %s (op %s): tree %s", i,
					  op->local_path, op->id, KILN_DIGEST_STR(&bd->pins[i].tree));
			return r;
		}
	}
	return 0;
}

static int handle_submit(const struct kiln_http_server_req *req,
			 struct kiln_http_server_resp *resp, void *ud)
{
	struct kiln_builds *b = ud;
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *id = kiln_random_hex(8), *ssh_token = NULL;
	struct build *bd = xcalloc(1, sizeof(*bd));
	json_t *o;

	snprintf(bd->id, sizeof(bd->id), "%s", id);
	bd->owner = b;
	pthread_mutex_init(&bd->lock, NULL);
	pthread_cond_init(&bd->cond, NULL);
	kiln_strbuf_init(&bd->events, EVENTS_MAX);
	if (parse_submit(b, bd, req->json, &err) < 0) {
		kiln_http_resp_error(resp, 400, "%s", kiln_error_msg(err));
		build_free(bd);
		return 0;
	}
	if (check_pins(b, bd, &err) < 0) {
		kiln_http_resp_error(resp, 422, "%s", kiln_error_msg(err));
		build_free(bd);
		return 0;
	}
	bd->sb.sched = b->sched;
	bd->sb.platform = bd->platform;
	bd->sb.id = bd->id;
	bd->sb.relay = b->relay;
	if (bd->n_ssh_ids &&
	    !(ssh_token = kiln_ssh_relay_add_build(b->relay, bd->id,
						   (const char *const *)bd->ssh_ids, bd->n_ssh_ids))) {
		build_free(bd);
		kiln_http_resp_error(resp, 503, "too many builds with ssh agents");
		return 0;
	}
	kiln_builds_sweep(b);
	pthread_mutex_lock(&b->lock);
	if (b->n == MAX_BUILDS) {
		pthread_mutex_unlock(&b->lock);
		kiln_ssh_relay_end_build(b->relay, bd->id);
		build_free(bd);
		kiln_http_resp_error(resp, 503, "too many builds (%u kept)", MAX_BUILDS);
		return 0;
	}
	if (pthread_create(&bd->thread, NULL, build_main, bd) != 0) {
		/* A task limit (issue 14): the client hears it, kilnd goes on. */
		pthread_mutex_unlock(&b->lock);
		kiln_ssh_relay_end_build(b->relay, bd->id);
		build_free(bd);
		kiln_http_resp_error(resp, 503, "kilnd cannot start a thread for the build; try again later");
		return 0;
	}
	b->builds[b->n++] = bd;
	pthread_mutex_unlock(&b->lock);
	log_info("build %s: %zu ops submitted", bd->id, bd->def->n_ops);
	o = json_pack("{ss}", "id", bd->id);
	if (ssh_token) /* only its client can answer for the build's agents */
		json_object_set_new(o, "ssh_token", json_string(ssh_token));
	kiln_http_resp_json(resp, 201, o);
	return 0;
}

/* ---- reading a build ---- */

/* The build, kept from the sweep until unref(). */
static struct build *find(struct kiln_builds *b, const char *id, size_t idlen)
{
	struct build *bd = NULL;
	size_t i;

	pthread_mutex_lock(&b->lock);
	for (i = 0; i < b->n; i++)
		if (strlen(b->builds[i]->id) == idlen && !memcmp(b->builds[i]->id, id, idlen))
			bd = b->builds[i];
	if (bd) {
		pthread_mutex_lock(&bd->lock);
		bd->readers++;
		pthread_mutex_unlock(&bd->lock);
	}
	pthread_mutex_unlock(&b->lock);
	return bd;
}

static void unref(struct build *bd)
{
	pthread_mutex_lock(&bd->lock);
	bd->readers--;
	pthread_mutex_unlock(&bd->lock);
}

static void respond_events(struct build *bd, const char *from_s,
			   struct kiln_http_server_resp *resp)
{
	uint64_t from = 0;
	struct timespec ts = kiln_deadline_ms(CLOCK_REALTIME, EVENTS_WAIT_MS);
	size_t n = 0;
	char *data;

	if (from_s && kiln_parse_u64(from_s, &from) < 0) {
		kiln_http_resp_error(resp, 400, "?from=%s: not an offset", from_s);
		return;
	}
	pthread_mutex_lock(&bd->lock);
	while (!bd->done && bd->events.len <= from &&
	       pthread_cond_timedwait(&bd->cond, &bd->lock, &ts) == 0)
		;
	if (from > bd->events.len) {
		pthread_mutex_unlock(&bd->lock);
		kiln_http_resp_error(resp, 416, "?from=%llu is past the end",
				     (unsigned long long)from);
		return;
	}
	n = bd->events.len - from;
	if (n > EVENTS_CHUNK)
		n = EVENTS_CHUNK;
	data = xmalloc(n + 1);
	memcpy(data, bd->events.buf + from, n);
	pthread_mutex_unlock(&bd->lock);
	kiln_http_resp_bytes(resp, 200, "application/x-ndjson", data, n);
}

static int handle_get(const struct kiln_http_server_req *req,
		      struct kiln_http_server_resp *resp, void *ud)
{
	struct kiln_builds *b = ud;
	const char *slash = strchr(req->rest, '/');
	size_t idlen = slash ? (size_t)(slash - req->rest) : strlen(req->rest);
	struct build *bd = find(b, req->rest, idlen);
	json_t *o;

	if (!bd) {
		kiln_http_resp_error(resp, 404, "no build %.*s", (int)idlen, req->rest);
		return 0;
	}
	if (slash && !strcmp(slash, "/events")) {
		respond_events(bd, kiln_http_server_req_query(req, "from"), resp);
		unref(bd);
		return 0;
	}
	if (slash) {
		kiln_http_resp_error(resp, 404, "no such resource %s", req->path);
		unref(bd);
		return 0;
	}
	/* ?wait=1: a client waiting for the end asks without spinning. */
	pthread_mutex_lock(&bd->lock);
	if (kiln_http_server_req_query(req, "wait")) {
		struct timespec ts = kiln_deadline_ms(CLOCK_REALTIME, EVENTS_WAIT_MS);

		while (!bd->done && pthread_cond_timedwait(&bd->cond, &bd->lock, &ts) == 0)
			;
	}
	o = bd->done ? json_deep_copy(bd->state) : json_object();
	json_object_set_new(o, "id", json_string(bd->id));
	json_object_set_new(o, "state", json_string(bd->done ? "done" : "running"));
	bd->readers--;
	pthread_mutex_unlock(&bd->lock);
	kiln_http_resp_json(resp, 200, o);
	return 0;
}

/*
 * GET /v1/relay/<id>/<k>/v1/blobs/<digest>, GET .../v1/trees/<digest>,
 * POST .../v1/blobs/batch: a done build's outputs, as holder k of its
 * result's "holders" (a worker, or kilnd last) serves them, relayed
 * (kilnd/relay.h). The client pulls with every holder as a source, in
 * that order, like from peers.
 */
static int handle_relay(const struct kiln_http_server_req *req,
			struct kiln_http_server_resp *resp, void *ud)
{
	struct kiln_builds *b = ud;
	const char *slash = strchr(req->rest, '/'), *path = slash ? strchr(slash + 1, '/') : NULL;
	size_t idlen = slash ? (size_t)(slash - req->rest) : strlen(req->rest);
	struct kiln_relay_request rq = { .method = req->method, .path = path };
	_cleanup_free_ char *ks = path ? xstrndup(slash + 1, (size_t)(path - slash - 1)) : NULL;
	struct kiln_digest d;
	struct build *bd;
	uint64_t k = 0;
	bool ok;

	if (!path || kiln_parse_u64(ks, &k) < 0 ||
	    !(!strcmp(req->method, "POST") ? !strcmp(path, "/v1/blobs/batch")
					   : ((!strncmp(path, "/v1/blobs/", 10) &&
					       kiln_digest_parse(path + 10, &d) == 0) ||
					      (!strncmp(path, "/v1/trees/", 10) &&
					       kiln_digest_parse(path + 10, &d) == 0)))) {
		kiln_http_resp_error(resp, 404, "no such resource %s", req->path);
		return 0;
	}
	bd = find(b, req->rest, idlen);
	if (!bd) {
		kiln_http_resp_error(resp, 404, "no build %.*s", (int)idlen, req->rest);
		return 0;
	}
	pthread_mutex_lock(&bd->lock);
	ok = bd->done && json_is_true(json_object_get(bd->state, "ok"));
	pthread_mutex_unlock(&bd->lock);
	if (!ok) {
		kiln_http_resp_error(resp, 409, "build %s has no outputs (yet)", bd->id);
	} else if (k >= bd->n_holders) {
		kiln_http_resp_error(resp, 404, "build %s has %zu holders", bd->id, bd->n_holders);
	} else {
		/* holders is set once, before done, and kept while we read it. */
		if (req->body_len) {
			rq.body = req->body;
			rq.body_len = req->body_len;
		}
		kiln_sched_relay(b->sched, bd->holders[k], &rq, resp);
	}
	unref(bd);
	return 0;
}

/* DELETE /v1/builds/<id>: cancel a build that is still running. */
static int handle_cancel(const struct kiln_http_server_req *req,
			 struct kiln_http_server_resp *resp, void *ud)
{
	struct kiln_builds *b = ud;
	struct build *bd = strchr(req->rest, '/') ? NULL
						   : find(b, req->rest, strlen(req->rest));
	bool done;

	if (!bd) {
		kiln_http_resp_error(resp, 404, "no build %s", req->rest);
		return 0;
	}
	pthread_mutex_lock(&bd->lock);
	done = bd->solved; /* past the solve there is nothing left to cancel */
	pthread_mutex_unlock(&bd->lock);
	/*
	 * Not under bd->lock: the scheduler's lock is taken before it (a
	 * progress event from a wait). A build ending meanwhile ignores it.
	 */
	if (!done && kiln_sched_cancel(&bd->sb))
		log_info("kilnd: build %s: cancelled by its client", bd->id);
	unref(bd);
	if (done)
		kiln_http_resp_error(resp, 409, "build %s has already ended its steps",
				     req->rest);
	else
		kiln_http_resp_json(resp, 202, json_pack("{s:s, s:s}", "id", req->rest,
							 "state", "cancelling"));
	return 0;
}

int kiln_builds_routes(struct kiln_builds *b, struct kiln_http_server *http,
		       const char *token, const char *worker_token)
{
	const struct kiln_http_route routes[] = {
		{ "POST", "/v1/builds", handle_submit, b, SUBMIT_BODY_LIMIT, true, false, token,
		  NULL, NULL, NULL },
		{ "GET", "/v1/builds/*", handle_get, b, 0, false, false, token, NULL, NULL, NULL },
		{ "DELETE", "/v1/builds/*", handle_cancel, b, 0, false, false, token, NULL, NULL, NULL },
		{ "GET", "/v1/relay/*", handle_relay, b, 0, false, false, token, NULL, NULL, NULL },
		{ "POST", "/v1/relay/*", handle_relay, b, KILN_PEER_REQUEST_LIMIT, false, false, token,
		  NULL, NULL, NULL },
	};
	size_t i;
	int r;

	for (i = 0; i < ARRAY_SIZE(routes); i++) {
		r = kiln_http_server_route(http, &routes[i]);
		if (r < 0)
			return r;
	}
	return kiln_ssh_relay_routes(b->relay, http, worker_token, token);
}
