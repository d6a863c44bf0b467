/*
 * kilnd: the controller (docs/cluster.md): the worker registry and
 * location index, the cache index, the solver and scheduler of every
 * build submitted to it, and a CAS of its own for what clients upload
 * (contexts, graphs) and the outputs they fetch.
 *
 * Threads: the HTTP server's connection threads run the handlers (they
 * touch the registry and the build table, which lock); each build solves
 * on a thread of its own (builds.c); the main thread waits for
 * SIGTERM/SIGINT and sweeps lost workers once per heartbeat interval.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <time.h>

#include "proto/daemon.h"
#include "basic/alloc.h"
#include "basic/args.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/parse-util.h"
#include "basic/platform.h"
#include "cache/index.h"
#include "kilnd/builds.h"
#include "kilnd/scheduler.h"
#include "kilnd/worker-table.h"
#include "proto/tokens.h"
#include "proto/http-server.h"
#include "peer/peer.h"
#include "registry/registry.h"
#include "s3/s3.h"

/* 100,000 inventory digests (~7.4 MB) and 1 MiB of records. */
#define REGISTER_BODY_LIMIT (9u << 20)
/* Records of one registration that join the cache. */
#define ADOPT_RECORDS_MAX 2000u
#define HEARTBEAT_BODY_LIMIT (64u << 10)
#define DEFAULT_LISTEN "127.0.0.1:7070"
#define DEFAULT_INTERVAL_MS 2000u
/*
 * Largest blob a client may upload in one request (a context file). The
 * body streams to disk as it comes, so this bounds disk, not memory.
 */
#define UPLOAD_LIMIT (64ull << 30)
#define MAX_LIST 32

struct kilnd {
	char *root;
	const char *listen, *advertise;
	struct kiln_tls tls;
	const char *insecure[MAX_LIST + 1], *endpoints[MAX_LIST + 1];
	size_t n_insecure, n_endpoints;
	struct kiln_registry *registry;
	struct kiln_registry_options ro;
	const char *docker_config; /* --docker-config, or NULL: the default */
	struct kiln_store *store;
	struct kiln_cache *cache;
	struct kiln_sched *sched;
	struct kiln_builds *builds;
	struct kiln_peer_server *peer;
	uint64_t interval_ms;
	int lock_fd;
	char *worker_token, *client_token;
	struct kiln_worker_table *reg;
	struct kiln_http_server *http;
	/* --cache s3://BUCKET/PREFIX and --s3-*: the shared cache. */
	struct kiln_s3_flags s3flags;
	struct kiln_s3_config s3cfg;
	bool has_s3;
	const char *transfer_arg; /* --transfer as given */
	enum kiln_transfer transfer;
};

static void usage(FILE *f)
{
	fputs("Usage: kilnd --root DIR [--listen ADDR:PORT] [--advertise URL] [--heartbeat-interval-ms N]\n"
	      "             [--insecure-registry HOST]... [--registry-endpoint NAME=HOST]...\n"
	      "             [--docker-config FILE]\n"
	      "             [--cache s3://BUCKET/PREFIX [--s3-endpoint URL] [--s3-region R]\n"
	      "              [--s3-path-style] [--s3-credentials FILE]]\n"
	      "             [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]] [--tls-ca FILE] [--debug]\n"
	      "\n"
	      "The kiln controller: workers register with it, clients talk to it.\n"
	      "Tokens: DIR/worker.token (for kiln-worker --token-file) and\n"
	      "DIR/client.token (for kiln --token-file), created when missing.\n"
	      "\n"
	      "  --root DIR                 state directory (created, mode 0700)\n"
	      "  --listen ADDR:PORT         listen address (default " DEFAULT_LISTEN ")\n"
	      "  --advertise URL            how workers reach this kilnd (default: the\n"
	      "                             listen address)\n"
	      "  --insecure-registry HOST   allow plain http to HOST when resolving images\n"
	      "  --registry-endpoint NAME=HOST  serve registry NAME from HOST\n"
	      "  --docker-config FILE       kilnd's registry credentials (default:\n"
	      "                             $DOCKER_CONFIG/config.json or ~/.docker/config.json);\n"
	      "                             a build's own, sent by its client, win for its pushes\n"
	      KILN_S3_OPTIONS_USAGE
	      "  --transfer auto|peer|s3    with --cache: auto (default), workers pull from\n"
	      "                             each other and fetch hits from the bucket\n"
	      "                             themselves (give them --cache too); peer, kilnd\n"
	      "                             copies hits and workers pull from it and from\n"
	      "                             each other; s3, workers never pull from each\n"
	      "                             other: each puts its results in the bucket\n"
	      "                             (workers must have the same --cache)\n"
	      "  --heartbeat-interval-ms N  interval workers heartbeat at (default 2000);\n"
	      "                             a worker silent for 3 intervals is lost\n"
	      "  --debug                    debug logging\n"
	      "  -h, --help                 show this help\n"
	      KILN_DAEMON_TLS_USAGE,
	      f);
}

/* ---- handlers ---- */

/*
 * The records a worker announces (its record book: steps it ran, maybe
 * under another kilnd) join the cache index where it has no record under
 * that key, so the worker's results are hits here too. The worker token is
 * trusted for this as for the results it returns (docs/internals/
 * cluster.md); each record is checked and one that is not well formed is
 * skipped, as are records beyond the bound.
 */
static bool platform_ok(const char *s)
{
	struct kiln_platform p;
	bool ok = strlen(s) <= 64 && kiln_platform_parse(s, &p, NULL) == 0;

	if (ok)
		kiln_platform_release(&p);
	return ok;
}

static void adopt_records(struct kilnd *d, const json_t *body, const char *worker)
{
	json_t *a = json_object_get(body, "records"), *v;
	size_t i, adopted = 0;

	json_array_foreach(a, i, v) {
		struct kiln_cache_record rec = { 0 }, old = { 0 };
		json_t *meta = json_object_get(v, "meta");
		const char *key = json_string_value(json_object_get(v, "key"));
		const char *tree = json_string_value(json_object_get(v, "tree"));
		const char *op = json_string_value(json_object_get(v, "op"));
		const char *platform = json_string_value(json_object_get(v, "platform"));
		json_t *dur = json_object_get(v, "duration_ms");
		json_t *emu = json_object_get(v, "emulated");
		struct kiln_digest k, t, o;
		_cleanup_free_ char *metatext = NULL;

		if (i >= ADOPT_RECORDS_MAX)
			break;
		if (!key || kiln_digest_parse(key, &k) < 0 || !tree || kiln_digest_parse(tree, &t) < 0 ||
		    (op && kiln_digest_parse(op, &o) < 0) || (meta && !json_is_null(meta) && !json_is_object(meta)) ||
		    (platform && !platform_ok(platform)) ||
		    (dur && (!json_is_integer(dur) || json_integer_value(dur) < 0)) ||
		    (emu && !json_is_boolean(emu)))
			continue;
		if (kiln_cache_get(d->cache, key, &old, NULL) == 0) {
			kiln_cache_record_release(&old);
			continue;
		}
		if (json_is_object(meta))
			metatext = json_dumps(meta, JSON_COMPACT | JSON_SORT_KEYS);
		rec.op = (char *)op;
		rec.outputs = &t;
		rec.n_outputs = 1;
		rec.meta = metatext;
		rec.created = (int64_t)time(NULL);
		rec.duration_ms = dur ? (uint64_t)json_integer_value(dur) : 0;
		rec.worker = (char *)worker;
		rec.platform = (char *)platform;
		rec.emulated = json_is_true(emu);
		if (kiln_cache_put(d->cache, &key, 1, &rec, NULL) == 0)
			adopted++;
	}
	if (adopted)
		log_info("worker %s: %zu of its records joined the cache", worker, adopted);
}

/*
 * --transfer s3: results move only through kilnd's bucket, so a worker
 * must use the same one ("cache": its --cache). 0, or -EINVAL with why.
 */
static int check_transfer(const struct kilnd *d, const json_t *body, struct kiln_error **err)
{
	const char *name = json_string_value(json_object_get(body, "name"));
	const char *cache = json_string_value(json_object_get(body, "cache"));
	struct kiln_s3_config w;
	int r;

	if (d->transfer != KILN_TRANSFER_S3)
		return 0;
	if (!cache)
		return kiln_error_set(err, -EINVAL,
				      "kilnd moves results only through the bucket (--transfer s3): "
				      "worker %s needs --cache %s", name ? name : "?", d->s3flags.cache);
	kiln_s3_config_init(&w);
	r = kiln_s3_config_parse_url(&w, cache, err);
	if (r == 0 && (strcmp(w.bucket, d->s3cfg.bucket) ||
		       strcmp(w.prefix ? w.prefix : "", d->s3cfg.prefix ? d->s3cfg.prefix : "")))
		r = kiln_error_set(err, -EINVAL,
				   "kilnd moves results only through the bucket (--transfer s3): "
				   "worker %s uses --cache s3://%s/%s, not %s", name ? name : "?",
				   w.bucket, w.prefix ? w.prefix : "", d->s3flags.cache);
	kiln_s3_config_release(&w);
	return r;
}

static int do_register(struct kilnd *d, json_t *body,
		       struct kiln_http_server_resp *resp)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *id = NULL;
	struct kiln_registration r;

	if (kiln_registration_parse(body, &r, &err) < 0) {
		kiln_http_resp_error(resp, 400, "%s", kiln_error_msg(err));
		return 0;
	}
	if (check_transfer(d, body, &err) < 0) {
		kiln_registration_release(&r);
		log_warn("%s", kiln_error_msg(err));
		kiln_http_resp_error(resp, 400, "%s", kiln_error_msg(err));
		return 0;
	}
	if (kiln_worker_table_register(d->reg, &r, &id) < 0) {
		kiln_registration_release(&r);
		kiln_http_resp_error(resp, 503,
				     "the registry is full (%u ready workers)",
				     KILN_WORKER_TABLE_MAX_WORKERS);
		return 0;
	}
	adopt_records(d, body, json_string_value(json_object_get(body, "name")));
	kiln_http_resp_json(resp, 200,
			    json_pack("{s:s, s:I}", "id", id,
				      "heartbeat_interval_ms",
				      (json_int_t)d->interval_ms));
	return 0;
}

static int handle_register(const struct kiln_http_server_req *req,
			   struct kiln_http_server_resp *resp, void *ud)
{
	return do_register(ud, req->json, resp);
}

/* A non-negative integer member, 0 when absent; -EINVAL otherwise. */
static int get_count(const json_t *j, const char *key, uint64_t *out)
{
	json_t *v = json_object_get(j, key);

	*out = 0;
	if (!v)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return -EINVAL;
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

static int do_heartbeat(struct kilnd *d, const char *id, json_t *body,
			struct kiln_http_server_resp *resp)
{
	uint64_t running, held;

	if (!json_is_object(body) || get_count(body, "running", &running) < 0 ||
	    get_count(body, "bytes_held", &held) < 0) {
		kiln_http_resp_error(resp, 400,
				     "heartbeat: expected {\"running\": N, \"bytes_held\": N} with N >= 0");
		return 0;
	}
	if (kiln_worker_table_heartbeat(d->reg, id, running, held) < 0) {
		kiln_http_resp_error(resp, 404,
				     "no worker %s here: register again", id);
		return 0;
	}
	kiln_http_resp_json(resp, 200, json_object());
	return 0;
}

/* rest is "<id>/heartbeat"; id is 1-64 of [0-9a-f]. */
static bool heartbeat_id(const char *rest, char id[65])
{
	size_t n = strspn(rest, "0123456789abcdef");

	if (n == 0 || n > 64 || strcmp(rest + n, "/heartbeat"))
		return false;
	memcpy(id, rest, n);
	id[n] = '\0';
	return true;
}

static int handle_heartbeat(const struct kiln_http_server_req *req,
			    struct kiln_http_server_resp *resp, void *ud)
{
	struct kilnd *d = ud;
	char id[65];

	if (!heartbeat_id(req->rest, id)) {
		kiln_http_resp_error(resp, 404, "no such endpoint");
		return 0;
	}
	return do_heartbeat(d, id, req->json, resp);
}

static int handle_list(const struct kiln_http_server_req *req,
		       struct kiln_http_server_resp *resp, void *ud)
{
	struct kilnd *d = ud;

	kiln_http_resp_json(resp, 200, kiln_worker_table_list_json(d->reg));
	return 0;
}

static int handle_health(const struct kiln_http_server_req *req,
			 struct kiln_http_server_resp *resp, void *ud)
{
	kiln_http_resp_json(resp, 200, json_pack("{s:b}", "ok", 1));
	return 0;
}

/* ---- setup ---- */

static int add_routes(struct kilnd *d)
{
	const struct kiln_http_route routes[] = {
		/* Two roles: each route checks its own token (the server's is unset). */
		{ "POST", "/v1/workers/register", handle_register, d,
		  REGISTER_BODY_LIMIT, true, false, d->worker_token, NULL, NULL, NULL },
		{ "POST", "/v1/workers/*", handle_heartbeat, d,
		  HEARTBEAT_BODY_LIMIT, true, false, d->worker_token, NULL, NULL, NULL },
		{ "GET", "/v1/workers", handle_list, d, 0, false, false, d->client_token, NULL, NULL, NULL },
		{ "GET", "/v1/health", handle_health, d, 0, false, true, NULL, NULL, NULL, NULL },
	};
	/* kilnd's CAS: workers and clients read it, clients upload to it. */
	const struct kiln_peer_server_options po = {
		.token = d->worker_token,
		.alt_token = d->client_token,
		.upload_token = d->client_token,
		.upload_limit = UPLOAD_LIMIT,
	};
	_cleanup_error_ struct kiln_error *err = NULL;
	size_t i;
	int r;

	for (i = 0; i < ARRAY_SIZE(routes); i++) {
		r = kiln_http_server_route(d->http, &routes[i]);
		if (r < 0)
			return r;
	}
	r = kiln_builds_routes(d->builds, d->http, d->client_token, d->worker_token);
	if (r == 0)
		r = kiln_peer_server_new(d->http, d->store, &po, &d->peer, &err);
	return r;
}

/* kilnd's own CAS and cache index under --root, and the registry client. */
static int open_state(struct kilnd *d, struct kiln_error **err)
{
	_cleanup_free_ char *cas = kiln_path_join(d->root, "cas");
	_cleanup_free_ char *db = kiln_path_join(d->root, "cache.db");
	struct kiln_store_options so = { .durable = true };
	int r;

	d->ro = (struct kiln_registry_options){ .insecure = d->insecure,
						.endpoints = d->endpoints,
						.docker_config = d->docker_config };

	r = kiln_store_open(cas, &so, &d->store, err);
	if (r == 0)
		r = kiln_cache_open(db, &d->cache, err);
	if (r == 0)
		r = kiln_registry_new(&d->ro, &d->registry, err);
	return r;
}

static int lock_root(struct kilnd *d, struct kiln_error **err)
{
	_cleanup_free_ char *path = kiln_path_join(d->root, "kilnd.lock");
	int r = kiln_mkdir_p(d->root, 0700);

	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot create --root %s",
					   d->root);
	d->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (d->lock_fd < 0)
		return kiln_error_seterrno(err, -errno, "cannot open %s", path);
	if (flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0)
		return kiln_error_seterrno(err, -errno,
					   "--root %s: another kilnd uses it",
					   d->root);
	return 0;
}

static int kilnd_start(struct kilnd *d, struct kiln_error **err)
{
	struct kiln_http_server_options o = { .listen = d->listen, .tls = &d->tls };
	int r;

	r = lock_root(d, err);
	if (r == 0)
		r = kiln_token_ensure(d->root, "worker.token", &d->worker_token,
				      err);
	if (r == 0)
		r = kiln_token_ensure(d->root, "client.token", &d->client_token,
				      err);
	if (r < 0)
		return r;
	r = open_state(d, err);
	if (r < 0)
		return r;
	d->reg = kiln_worker_table_new(d->interval_ms);
	d->sched = kiln_sched_new(d->reg, d->store, d->worker_token, &d->tls);
	d->builds = kiln_builds_new(d->sched, d->store, d->cache, d->registry);
	kiln_builds_set_registry_options(d->builds, &d->ro);
	if (d->has_s3) {
		kiln_builds_set_remote_cache(d->builds, &d->s3cfg);
		kiln_sched_set_transfer(d->sched, d->transfer);
	}
	r = kiln_http_server_new(&o, &d->http, err);
	if (r == 0)
		r = add_routes(d);
	if (r == 0)
		r = kiln_http_server_start(d->http, err);
	if (r < 0)
		return kiln_error_set(err, r, "cannot serve on %s", d->listen);
	/* Routes are fixed once the server starts: the scheduler's URL is known now. */
	kiln_sched_set_url(d->sched, d->advertise ? d->advertise : kiln_http_server_url(d->http));
	log_info("kilnd: listening on %s (root %s, heartbeat every %llu ms%s%s%s)",
		 kiln_http_server_url(d->http), d->root,
		 (unsigned long long)d->interval_ms, d->has_s3 ? ", remote cache " : "",
		 d->has_s3 ? d->s3flags.cache : "",
		 !d->has_s3 ? "" : d->transfer == KILN_TRANSFER_S3 ? ", transfer s3"
				 : d->transfer == KILN_TRANSFER_PEER ? ", transfer peer" : ", transfer auto");
	return 0;
}

static void kilnd_release(struct kilnd *d)
{
	kiln_builds_shutdown(d->builds); /* its long waits end before the server's grace */
	kiln_http_server_free(d->http);
	kiln_peer_server_free(d->peer);
	kiln_builds_free(d->builds);
	kiln_sched_free(d->sched);
	kiln_worker_table_free(d->reg);
	kiln_cache_free(d->cache);
	kiln_store_free(d->store);
	kiln_registry_free(d->registry);
	if (d->has_s3)
		kiln_s3_config_release(&d->s3cfg);
	free(d->worker_token);
	free(d->client_token);
	free(d->root);
	if (d->lock_fd >= 0)
		close(d->lock_fd);
}

/* Wait for SIGTERM/SIGINT (blocked in every thread), sweeping meanwhile. */
static void kilnd_run(struct kilnd *d, const sigset_t *sigs)
{
	struct timespec ts = {
		.tv_sec = (time_t)(d->interval_ms / 1000u),
		.tv_nsec = (long)(d->interval_ms % 1000u) * 1000000L,
	};
	int sig;

	for (;;) {
		sig = sigtimedwait(sigs, NULL, &ts);
		if (sig == SIGTERM || sig == SIGINT)
			break;
		kiln_worker_table_sweep(d->reg);
		kiln_builds_sweep(d->builds);
	}
	log_info("kilnd: %s, stopping", strsignal(sig));
}

static int parse_args(int argc, char **argv, struct kilnd *d)
{
	static const struct option opts[] = {
		{ "root", required_argument, NULL, 'r' },
		{ "listen", required_argument, NULL, 'l' },
		{ "advertise", required_argument, NULL, 'a' },
		{ "insecure-registry", required_argument, NULL, 'I' },
		{ "registry-endpoint", required_argument, NULL, 'E' },
		{ "docker-config", required_argument, NULL, 'D' },
		{ "heartbeat-interval-ms", required_argument, NULL, 'i' },
		KILN_S3_OPTIONS,
		{ "transfer", required_argument, NULL, 'T' },
		{ "debug", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		KILN_TLS_SERVER_OPTIONS,
		{ 0 },
	};
	_cleanup_error_ struct kiln_error *err = NULL;
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (kiln_tls_arg(&d->tls, c, optarg) || kiln_s3_flags_arg(&d->s3flags, c, optarg))
			continue;
		switch (c) {
		case 'r': free(d->root); d->root = xstrdup(optarg); break;
		case 'l': d->listen = optarg; break;
		case 'a': d->advertise = optarg; break;
		case 'I':
		case 'E':
			if ((c == 'I' ? d->n_insecure : d->n_endpoints) == MAX_LIST)
				return kiln_args_error("kilnd", "more than %d --%s", MAX_LIST,
						       c == 'I' ? "insecure-registry"
								: "registry-endpoint");
			if (c == 'I')
				d->insecure[d->n_insecure++] = optarg;
			else
				d->endpoints[d->n_endpoints++] = optarg;
			break;
		case 'd': kiln_log_set_level(KILN_LOG_DEBUG); break;
		case 'D': d->docker_config = optarg; break;
		case 'T': d->transfer_arg = optarg; break;
		case 'h': usage(stdout); return KILN_ARGS_HELP;
		case 'i':
			if (kiln_parse_u64(optarg, &d->interval_ms) < 0 ||
			    d->interval_ms < 50 || d->interval_ms > 600000)
				return kiln_args_error("kilnd", "--heartbeat-interval-ms: '%s' is not 50..600000",
						       optarg);
			break;
		default: usage(stderr); return KILN_ARGS_USAGE;
		}
	}
	if (kiln_args_no_operands("kilnd", argc, argv))
		return KILN_ARGS_USAGE;
	if (!d->root)
		return kiln_args_error("kilnd", "--root DIR is required");
	if (kiln_tls_check(&d->tls, &err) < 0)
		return kiln_args_error("kilnd", "%s", kiln_error_msg(err));
	if (d->s3flags.cache && strncmp(d->s3flags.cache, "s3://", 5))
		return kiln_args_error("kilnd", "--cache: '%s' is not s3://BUCKET/PREFIX", d->s3flags.cache);
	switch (kiln_s3_flags_config(&d->s3flags, &d->s3cfg, &err)) {
	case 0: d->has_s3 = true; break;
	case -ENOENT: break;
	default: return kiln_args_error("kilnd", "%s", kiln_error_msg(err));
	}
	if (d->transfer_arg && !strcmp(d->transfer_arg, "auto"))
		d->transfer = KILN_TRANSFER_AUTO;
	else if (d->transfer_arg && !strcmp(d->transfer_arg, "peer"))
		d->transfer = KILN_TRANSFER_PEER;
	else if (d->transfer_arg && !strcmp(d->transfer_arg, "s3"))
		d->transfer = KILN_TRANSFER_S3;
	else if (d->transfer_arg)
		return kiln_args_error("kilnd", "--transfer: '%s' is not auto, peer or s3", d->transfer_arg);
	else /* the default: auto with a bucket, peer without */
		d->transfer = d->has_s3 ? KILN_TRANSFER_AUTO : KILN_TRANSFER_PEER;
	if (d->transfer_arg && !d->has_s3)
		return kiln_args_error("kilnd", "--transfer needs --cache s3://BUCKET/PREFIX");
	return KILN_ARGS_OK;
}

int main(int argc, char **argv)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kilnd d = { .listen = DEFAULT_LISTEN,
			   .interval_ms = DEFAULT_INTERVAL_MS, .lock_fd = -1 };
	sigset_t sigs;
	int rc = 0;

	kiln_log_set_level(KILN_LOG_INFO);
	rc = parse_args(argc, argv, &d);
	if (rc) {
		free(d.root);
		return kiln_args_exit(rc);
	}
	kiln_daemon_block_signals(&sigs);
	if (kilnd_start(&d, &err) < 0) {
		fprintf(stderr, "kilnd: error: %s\n", kiln_error_msg(err));
		rc = 1;
	} else {
		kilnd_run(&d, &sigs);
	}
	kilnd_release(&d);
	return rc;
}
