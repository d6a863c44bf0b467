/*
 * kiln-worker: one worker machine in a cluster (docs/cluster.md). It opens
 * the worker state under --root, serves its CAS to peers (the blob
 * endpoints of docs/api.md), runs the jobs kilnd sends (POST /v1/jobs,
 * agent/jobs.h), registers with kilnd, announcing its inventory, and
 * heartbeats.
 *
 * Threads: the main thread waits for SIGTERM/SIGINT; the agent thread
 * registers (retrying with backoff while kilnd is unreachable),
 * heartbeats every interval and registers again when kilnd no longer
 * knows its id (kilnd restarted); the HTTP server's threads serve blobs
 * and run jobs. Agent state below the mutex is shared between the first
 * two only.
 *
 * The agent thread's states (kilnd's side: src/kilnd/worker-table.c):
 *
 *   start ----------------------------------------------> REGISTERING
 *   REGISTERING --register answered 200-----------------> HEARTBEATING
 *   REGISTERING --any other failure (transport, 5xx, 503,
 *                 a bad answer): wait 200 ms, doubling
 *                 up to 5 s, and register again---------> REGISTERING
 *   REGISTERING --401/403, 400 or 422, 404, 413
 *                 (is_fatal())--------------------------> GAVE_UP
 *   HEARTBEATING --every interval_ms: a heartbeat, answered
 *                  or failed any other way--------------> HEARTBEATING
 *   HEARTBEATING --heartbeat answered 404 or 401/403
 *                  (-ENOENT, -EACCES): kilnd no longer
 *                  knows the id (it restarted, or the
 *                  name registered again)---------------> REGISTERING
 *   GAVE_UP: logged, fatal set, SIGTERM to itself; kiln-worker exits 1.
 *
 * A stop (SIGTERM/SIGINT) ends the thread in either of the first two. A
 * change between working and failing calls is logged once (note()), not
 * every attempt.
 */
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "proto/daemon.h"
#include "agent/jobs.h"
#include "rcache/rcache.h"
#include "s3/s3.h"
#include "basic/alloc.h"
#include "basic/args.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/parse-util.h"
#include "basic/platform.h"
#include "basic/strv.h"
#include "proto/tokens.h"
#include "proto/http-client.h"
#include "proto/http-server.h"
#include "peer/peer.h"
#include "agent/images.h"
#include "registry/registry.h"
#include "worker/worker.h"

#define NAME_MAX_LEN 63u
#define CALL_TIMEOUT_MS 5000L
#define BACKOFF_MIN_MS 200u
#define BACKOFF_MAX_MS 5000u
/* Heartbeat intervals taken from kilnd's answer. */
#define INTERVAL_MIN_MS 10
#define INTERVAL_MAX_MS 3600000
/* bytes_held walks the CAS: refresh it at most this often. */
#define HELD_REFRESH_NS (10ull * 1000000000ull)
/*
 * kilnd takes at most 100,000 inventory trees in a registration of at most
 * 9 MiB (docs/api.md; a digest costs 74 bytes of it, records up to 1 MiB
 * more): send at most the newest this many.
 */
#define INVENTORY_SEND_MAX 100000u
/* Records a registration announces (newest first); kilnd takes as many. */
#define RECORDS_SEND_MAX 2000u
/* --insecure-registry and --registry-endpoint, each. */
#define MAX_REGISTRY_FLAGS 64u

struct agent_opts {
	const char *join, *token_file, *root, *listen, *advertise, *runtime;
	const char *docker_config; /* --docker-config, or NULL: the default */
	struct kiln_tls tls;
	char *name;
	char **platforms; /* as given, comma lists split */
	size_t n_platforms;
	uint32_t slots;
	json_t *labels;
	/* NULL-terminated, as kiln_registry_options takes them. */
	const char *insecure[MAX_REGISTRY_FLAGS + 1];
	const char *endpoints[MAX_REGISTRY_FLAGS + 1];
	size_t n_insecure, n_endpoints;
	struct kiln_s3_flags s3; /* --cache s3://… and --s3-*: uploads */
};

struct agent {
	struct agent_opts o;
	char *token, *base, *addr;
	json_t *platforms; /* [{platform, emulated}] as announced */
	struct kiln_worker *worker;
	struct kiln_http_server *http;
	struct kiln_peer_server *peer;
	struct kiln_jobs *jobs;
	struct kiln_images *images;
	struct kiln_cache *layers; /* ROOT/layers.db: layers made before */
	struct kiln_registry_options ro; /* the registry flags, for each client */
	struct kiln_cache *records; /* ROOT/records.db: the record book */
	struct kiln_rcache *upload; /* --cache: where results are copied */
	struct kiln_registry *registry;
	struct kiln_http_client *client;
	pthread_t thread;
	bool thread_started;
	/* Agent thread only. */
	enum { AGENT_REGISTERING, AGENT_HEARTBEATING, AGENT_GAVE_UP } state;
	char *id;
	uint64_t interval_ms, held, held_at_ns;
	bool failing;
	/* Shared with main, under lock. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop, fatal;
};

static void usage(FILE *f)
{
	fputs("Usage: kiln-worker --join URL --token-file FILE --root DIR [OPTIONS]\n"
	      "\n"
	      "A kiln worker: registers with the kilnd at URL, runs the jobs it sends\n"
	      "and serves its blobs to other workers.\n"
	      "\n"
	      "  --join URL          kilnd's address (http://HOST:PORT)\n"
	      "  --token-file FILE   the worker token (kilnd's ROOT/worker.token)\n"
	      "  --root DIR          worker state (CAS, layers, cache mounts)\n"
	      "  --name ID           worker name (default: from the host name)\n"
	      "  --listen ADDR:PORT  job and blob server (default 127.0.0.1:0: a free port)\n"
	      "  --advertise URL     address kilnd and other workers reach it at\n"
	      "                      (default: the listen address)\n"
	      "  --platform P,...    announce only these platforms (default: native);\n"
	      "                      foreign ones must be runnable through binfmt_misc\n"
	      "  --slots N           jobs run at once (default: online CPUs)\n"
	      "  --label K=V         a label (repeatable)\n"
	      "  --runtime R         runc, crun or a path (default: probe)\n"
	      "  --insecure-registry HOST\n"
	      "                      allow plain http to HOST for image pulls (loopback\n"
	      "                      is always allowed; repeatable)\n"
	      "  --registry-endpoint R=H\n"
	      "                      send requests for registry R to HOST[:PORT]\n"
	      "                      (repeatable)\n"
	      "  --docker-config FILE\n"
	      "                      this worker's registry credentials (default:\n"
	      "                      $DOCKER_CONFIG/config.json or ~/.docker/config.json);\n"
	      "                      a build's own, sent by its client, win for its pushes\n"
	      KILN_S3_OPTIONS_USAGE
	      "                      (each result the worker makes is copied there)\n"
	      "  --debug             debug logging\n"
	      "  -h, --help          show this help\n"
	      KILN_DAEMON_TLS_USAGE,
	      f);
}

/* ---- options ---- */

/* The host name, lowercased, with anything else than [a-z0-9.-] as '-'. */
static char *default_name(void)
{
	char host[256] = "";
	size_t i;

	if (gethostname(host, sizeof(host) - 1) < 0 || !host[0])
		snprintf(host, sizeof(host), "worker");
	host[NAME_MAX_LEN] = '\0';
	for (i = 0; host[i]; i++) {
		char c = host[i];

		if (c >= 'A' && c <= 'Z')
			host[i] = (char)(c - 'A' + 'a');
		else if (!(c >= 'a' && c <= 'z') && !(c >= '0' && c <= '9') &&
			 c != '.' && c != '-')
			host[i] = '-';
	}
	if (host[0] == '-' || host[0] == '.')
		host[0] = 'w';
	return xstrdup(host);
}

static bool name_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > NAME_MAX_LEN || s[0] == '.' || s[0] == '-')
		return false;
	return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
			 "0123456789._-") == n;
}

static int add_platforms(struct agent_opts *o, const char *list)
{
	_cleanup_free_ char *copy = xstrdup(list);
	char *p = copy, *comma;

	do {
		comma = strchr(p, ',');
		if (comma)
			*comma = '\0';
		if (!*p)
			return kiln_args_error("kiln-worker", "--platform '%s': empty platform",
					       list);
		o->platforms = xrealloc(o->platforms, (o->n_platforms + 1) *
							  sizeof(char *));
		o->platforms[o->n_platforms++] = xstrdup(p);
		p = comma + 1;
	} while (comma);
	return 0;
}

static int add_label(struct agent_opts *o, const char *kv)
{
	const char *eq = strchr(kv, '=');
	_cleanup_free_ char *k = NULL;

	if (!eq || eq == kv)
		return kiln_args_error("kiln-worker", "--label '%s': expected KEY=VALUE", kv);
	k = xstrndup(kv, (size_t)(eq - kv));
	json_object_set_new(o->labels, k, json_string(eq + 1));
	return 0;
}

static int add_registry_flag(const char **list, size_t *n, const char *flag,
			     const char *arg)
{
	if (!strcmp(flag, "--registry-endpoint")) {
		const char *eq = strchr(arg, '=');

		if (!eq || eq == arg || !eq[1])
			return kiln_args_error("kiln-worker", "--registry-endpoint: '%s' is not REGISTRY=HOST[:PORT]",
					       arg);
	}
	if (*n == MAX_REGISTRY_FLAGS)
		return kiln_args_error("kiln-worker", "%s: at most %u", flag,
				       MAX_REGISTRY_FLAGS);
	list[(*n)++] = arg;
	return 0;
}

static int parse_slots(struct agent_opts *o, const char *s)
{
	if (kiln_parse_u32(s, &o->slots) < 0 || o->slots < 1 ||
	    o->slots > 4096)
		return kiln_args_error("kiln-worker", "--slots: '%s' is not 1..4096", s);
	return 0;
}

enum { OPT_JOIN = 256, OPT_TOKEN, OPT_ROOT, OPT_NAME, OPT_LISTEN,
       OPT_ADVERTISE, OPT_PLATFORM, OPT_SLOTS, OPT_LABEL, OPT_RUNTIME,
       OPT_INSECURE, OPT_ENDPOINT, OPT_DOCKER_CONFIG, OPT_DEBUG };

static int parse_opt(struct agent_opts *o, int c, const char *arg)
{
	if (kiln_tls_arg(&o->tls, c, arg) || kiln_s3_flags_arg(&o->s3, c, arg))
		return 0;
	switch (c) {
	case OPT_JOIN: o->join = arg; return 0;
	case OPT_TOKEN: o->token_file = arg; return 0;
	case OPT_ROOT: o->root = arg; return 0;
	case OPT_NAME: free(o->name); o->name = xstrdup(arg); return 0;
	case OPT_LISTEN: o->listen = arg; return 0;
	case OPT_ADVERTISE: o->advertise = arg; return 0;
	case OPT_PLATFORM: return add_platforms(o, arg);
	case OPT_SLOTS: return parse_slots(o, arg);
	case OPT_LABEL: return add_label(o, arg);
	case OPT_RUNTIME: o->runtime = arg; return 0;
	case OPT_INSECURE:
		return add_registry_flag(o->insecure, &o->n_insecure,
					 "--insecure-registry", arg);
	case OPT_ENDPOINT:
		return add_registry_flag(o->endpoints, &o->n_endpoints,
					 "--registry-endpoint", arg);
	case OPT_DOCKER_CONFIG: o->docker_config = arg; return 0;
	case OPT_DEBUG: kiln_log_set_level(KILN_LOG_DEBUG); return 0;
	case 'h': usage(stdout); return KILN_ARGS_HELP;
	default: usage(stderr); return KILN_ARGS_USAGE;
	}
}

static int check_opts(struct agent_opts *o)
{
	const char *missing = !o->join ? "--join URL" :
			      !o->token_file ? "--token-file FILE" :
			      !o->root ? "--root DIR" : NULL;
	_cleanup_error_ struct kiln_error *err = NULL;

	if (missing)
		return kiln_args_error("kiln-worker", "%s is required", missing);
	if (!o->name)
		o->name = default_name();
	if (!name_valid(o->name))
		return kiln_args_error("kiln-worker", "--name '%s': 1-%u of A-Z a-z 0-9 . _ -, starting with a letter or digit",
				       o->name, NAME_MAX_LEN);
	if (strncmp(o->join, "http://", 7) && strncmp(o->join, "https://", 8))
		return kiln_args_error("kiln-worker", "--join '%s': not an http:// URL",
				       o->join);
	if (kiln_tls_check(&o->tls, &err) < 0)
		return kiln_args_error("kiln-worker", "%s", kiln_error_msg(err));
	if (o->s3.cache && strncmp(o->s3.cache, "s3://", 5))
		return kiln_args_error("kiln-worker", "--cache: '%s' is not s3://BUCKET/PREFIX",
				       o->s3.cache);
	{
		struct kiln_s3_config cfg;
		int r = kiln_s3_flags_config(&o->s3, &cfg, &err);

		if (r == 0)
			kiln_s3_config_release(&cfg);
		else if (r != -ENOENT)
			return kiln_args_error("kiln-worker", "%s", kiln_error_msg(err));
	}
	return 0;
}

static int parse_args(int argc, char **argv, struct agent_opts *o)
{
	static const struct option opts[] = {
		{ "join", required_argument, NULL, OPT_JOIN },
		{ "token-file", required_argument, NULL, OPT_TOKEN },
		{ "root", required_argument, NULL, OPT_ROOT },
		{ "name", required_argument, NULL, OPT_NAME },
		{ "listen", required_argument, NULL, OPT_LISTEN },
		{ "advertise", required_argument, NULL, OPT_ADVERTISE },
		{ "platform", required_argument, NULL, OPT_PLATFORM },
		{ "slots", required_argument, NULL, OPT_SLOTS },
		{ "label", required_argument, NULL, OPT_LABEL },
		{ "runtime", required_argument, NULL, OPT_RUNTIME },
		{ "insecure-registry", required_argument, NULL, OPT_INSECURE },
		{ "registry-endpoint", required_argument, NULL, OPT_ENDPOINT },
		{ "docker-config", required_argument, NULL, OPT_DOCKER_CONFIG },
		KILN_S3_OPTIONS,
		{ "debug", no_argument, NULL, OPT_DEBUG },
		{ "help", no_argument, NULL, 'h' },
		KILN_TLS_SERVER_OPTIONS,
		{ 0 },
	};
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int c;

	o->listen = "127.0.0.1:0";
	o->slots = cpus > 0 && cpus <= 4096 ? (uint32_t)cpus : 1;
	o->labels = json_object();
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		int r = parse_opt(o, c, optarg);

		if (r)
			return r;
	}
	if (kiln_args_no_operands("kiln-worker", argc, argv))
		return KILN_ARGS_USAGE;
	return check_opts(o);
}

static void opts_release(struct agent_opts *o)
{
	kiln_strv_free(o->platforms, o->n_platforms);
	free(o->name);
	json_decref(o->labels);
}

/* ---- setup ---- */

static void announce(struct agent *a, const char *platform, bool emulated)
{
	size_t i;

	for (i = 0; i < json_array_size(a->platforms); i++)
		if (!strcmp(json_string_value(json_object_get(
				    json_array_get(a->platforms, i), "platform")),
			    platform))
			return;
	json_array_append_new(a->platforms,
			      json_pack("{s:s, s:b}", "platform", platform,
					"emulated", emulated));
}

/* Native only by default; with --platform, exactly those (checked). */
static int resolve_platforms(struct agent *a, struct kiln_error **err)
{
	size_t i;

	a->platforms = json_array();
	if (!a->o.n_platforms) {
		announce(a, kiln_worker_native_platform(a->worker), false);
		return 0;
	}
	for (i = 0; i < a->o.n_platforms; i++) {
		_cleanup_free_ char *p = kiln_platform_normalize(a->o.platforms[i]);
		bool emulated;
		int r = kiln_worker_check_platform(a->worker, a->o.platforms[i],
						   &emulated, err);

		if (r < 0) {
			kiln_error_prefix(err, "--platform %s",
					  a->o.platforms[i]);
			return r;
		}
		announce(a, p, emulated);
	}
	return 0;
}

/* Jobs hold their connection while they run: room for slots of them. */
static int serve(struct agent *a, struct kiln_error **err)
{
	struct kiln_http_server_options ho = {
		.listen = a->o.listen, .token = a->token, .tls = &a->o.tls,
		.max_connections = a->o.slots + KILN_HTTP_SERVER_MAX_CONNECTIONS,
	};
	_cleanup_free_ char *inventory = kiln_path_join(
		kiln_worker_root(a->worker), "inventory");
	_cleanup_free_ char *records = kiln_path_join(kiln_worker_root(a->worker), "records.db");
	_cleanup_free_ char *layers = kiln_path_join(kiln_worker_root(a->worker), "layers.db");
	struct kiln_jobs_options jo = { .worker = a->worker, .token = a->token,
					.inventory_path = inventory, .tls = &a->o.tls,
					.registry = a->registry, .registry_options = &a->ro,
					.controller = a->base };
	int r;

	/* Without the remote cache a worker still works: only slower elsewhere. */
	{
		_cleanup_error_ struct kiln_error *e = NULL;
		struct kiln_s3_config cfg;

		if (kiln_s3_flags_config(&a->o.s3, &cfg, &e) == 0) {
			if (kiln_rcache_open_s3(&cfg, &a->upload, &e) < 0)
				log_warn("kiln-worker %s: remote cache %s unavailable: %s; not uploading",
					 a->o.name, a->o.s3.cache, kiln_error_msg(e));
			kiln_s3_config_release(&cfg);
		}
		jo.upload = a->upload;
	}
	/* Without its record book a worker still works: it only forgets more. */
	{
		_cleanup_error_ struct kiln_error *e = NULL;

		if (kiln_cache_open(records, &a->records, &e) < 0)
			log_warn("kiln-worker %s: no record book: %s", a->o.name, kiln_error_msg(e));
		jo.records = a->records;
		if (kiln_cache_open(layers, &a->layers, &e) < 0)
			log_warn("kiln-worker %s: no layer cache: %s", a->o.name, kiln_error_msg(e));
	}
	r = kiln_http_server_new(&ho, &a->http, err);
	jo.http = a->http;
	if (r == 0)
		r = kiln_peer_server_new(a->http, kiln_worker_store(a->worker),
					 NULL, &a->peer, err);
	if (r == 0)
		r = kiln_jobs_new(&jo, &a->jobs, err);
	if (r == 0)
		r = kiln_images_new(&(struct kiln_images_options){
					    .http = a->http, .worker = a->worker,
					    .token = a->token, .tls = &a->o.tls,
					    .registry = &a->ro, .layers = a->layers },
				    &a->images, err);
	if (r == 0)
		r = kiln_http_server_start(a->http, err);
	if (r < 0) {
		kiln_error_prefix(err, "--listen %s", a->o.listen);
		return r;
	}
	a->addr = xstrdup(a->o.advertise ? a->o.advertise :
					   kiln_http_server_url(a->http));
	if (!a->o.advertise && (!strncmp(a->o.listen, "0.0.0.0:", 8) ||
				!strncmp(a->o.listen, "[::]:", 5)))
		log_warn("kiln-worker %s: listening on all addresses but announcing %s: pass --advertise URL for other machines",
			 a->o.name, a->addr);
	log_info("kiln-worker %s: serving jobs and blobs on %s (announced as %s), %zu trees in the inventory",
		 a->o.name, kiln_http_server_url(a->http), a->addr,
		 kiln_inventory_size(kiln_jobs_inventory(a->jobs)));
	return 0;
}

/* source.image jobs pull through this client (kiln build's flags). */
static int open_registry(struct agent *a, struct kiln_error **err)
{
	a->ro = (struct kiln_registry_options){ .insecure = a->o.insecure,
						.endpoints = a->o.endpoints,
						.docker_config = a->o.docker_config };
	return kiln_registry_new(&a->ro, &a->registry, err);
}

static int agent_open(struct agent *a, struct kiln_error **err)
{
	struct kiln_worker_options wo = { .root = a->o.root,
					  .runtime = a->o.runtime,
					  .durable = true };
	size_t n = strlen(a->o.join);
	int r;

	while (n > 0 && a->o.join[n - 1] == '/')
		n--;
	a->base = xstrndup(a->o.join, n);
	r = kiln_token_read(a->o.token_file, &a->token, err);
	if (r < 0)
		return r;
	r = open_registry(a, err);
	if (r < 0)
		return r;
	r = kiln_worker_open(&wo, &a->worker, err);
	if (r < 0) {
		kiln_error_prefix(err, "--root %s", a->o.root);
		return r;
	}
	r = resolve_platforms(a, err);
	if (r == 0)
		r = serve(a, err);
	a->client = kiln_http_client_new(&(struct kiln_http_client_options){
		.tls = &a->o.tls });
	return r;
}

/* ---- the agent thread ---- */

/* HEARTBEATING needs what a registration gave: an id and a sane interval. */
static void assert_agent_state(const struct agent *a)
{
	if (a->state == AGENT_HEARTBEATING)
		assert(a->id && a->interval_ms >= INTERVAL_MIN_MS &&
		       a->interval_ms <= INTERVAL_MAX_MS);
}

static int add_size(const struct kiln_digest *d, uint64_t size, void *ud)
{
	*(uint64_t *)ud += size;
	return 0;
}

static uint64_t bytes_held(struct agent *a)
{
	uint64_t now = kiln_now_mono_ns(), sum = 0;

	if (a->held_at_ns && now - a->held_at_ns < HELD_REFRESH_NS)
		return a->held;
	if (kiln_store_foreach(kiln_worker_store(a->worker), add_size, &sum) == 0)
		a->held = sum;
	a->held_at_ns = now;
	return a->held;
}

/*
 * The inventory, newest trees first when it does not all fit, and the
 * newest records of the record book: a kilnd that never saw this worker
 * (a fresh root, another cluster) gets its results as cache hits.
 */
static json_t *registration(struct agent *a)
{
	/* "cache": the bucket it fetches from and uploads to (kilnd's
	 * --transfer s3 wants its own), only when it opened. */
	return json_pack("{s:s, s:s, s:O, s:i, s:O, s:o, s:o, s:s?}", "name", a->o.name,
			 "addr", a->addr, "platforms", a->platforms, "slots",
			 (int)a->o.slots, "labels", a->o.labels, "inventory",
			 kiln_inventory_json(kiln_jobs_inventory(a->jobs),
					     INVENTORY_SEND_MAX),
			 "records", kiln_jobs_records_json(a->jobs, RECORDS_SEND_MAX),
			 "cache", a->upload ? a->o.s3.cache : NULL);
}

static int agent_register(struct agent *a, struct kiln_error **err)
{
	_cleanup_free_ char *url = xasprintf("%s/v1/workers/register", a->base);
	json_t *body = registration(a), *reply = NULL, *id, *iv;
	struct kiln_http_call call = { .method = "POST", .url = url,
				       .token = a->token, .json = body,
				       .timeout_ms = CALL_TIMEOUT_MS };
	int r = kiln_http_client_json(a->client, &call, &reply, NULL, err);

	json_decref(body);
	if (r < 0)
		return r;
	id = json_object_get(reply, "id");
	iv = json_object_get(reply, "heartbeat_interval_ms");
	if (!json_is_string(id) || !json_is_integer(iv) ||
	    json_integer_value(iv) < INTERVAL_MIN_MS || json_integer_value(iv) > INTERVAL_MAX_MS) {
		json_decref(reply);
		return kiln_error_set(err, -EIO,
				      "POST %s: answer lacks id or heartbeat_interval_ms",
				      url);
	}
	free(a->id);
	a->id = xstrdup(json_string_value(id));
	a->interval_ms = (uint64_t)json_integer_value(iv);
	json_decref(reply);
	log_info("kiln-worker %s: registered with %s as %s (heartbeat every %llu ms)",
		 a->o.name, a->base, a->id, (unsigned long long)a->interval_ms);
	return 0;
}

static int agent_heartbeat(struct agent *a, struct kiln_error **err)
{
	_cleanup_free_ char *url = xasprintf("%s/v1/workers/%s/heartbeat",
					     a->base, a->id);
	json_t *body = json_pack("{s:I, s:I}", "running",
				 (json_int_t)kiln_jobs_running(a->jobs),
				 "bytes_held", (json_int_t)bytes_held(a));
	struct kiln_http_call call = { .method = "POST", .url = url,
				       .token = a->token, .json = body,
				       .timeout_ms = CALL_TIMEOUT_MS };
	int r = kiln_http_client_json(a->client, &call, NULL, NULL, err);

	json_decref(body);
	return r;
}

/* Sleep ms unless asked to stop: true when stopping. */
static bool agent_wait(struct agent *a, uint64_t ms)
{
	struct timespec ts = kiln_deadline_ms(CLOCK_MONOTONIC, ms);
	bool stop;

	pthread_mutex_lock(&a->lock);
	while (!a->stop &&
	       pthread_cond_timedwait(&a->cond, &a->lock, &ts) != ETIMEDOUT)
		;
	stop = a->stop;
	pthread_mutex_unlock(&a->lock);
	return stop;
}

/* Errors that retrying will not fix: the token, the request, the URL. */
static bool is_fatal(int r)
{
	return r == -EACCES || r == -EINVAL || r == -E2BIG || r == -ENOENT;
}

static void give_up(struct agent *a, const struct kiln_error *err)
{
	log_error("kiln-worker %s: cannot register: %s", a->o.name,
		  kiln_error_msg(err));
	pthread_mutex_lock(&a->lock);
	a->fatal = true;
	pthread_mutex_unlock(&a->lock);
	kill(getpid(), SIGTERM);
}

/* Log a change between working and failing once, not every attempt. */
static void note(struct agent *a, int r, const struct kiln_error *err)
{
	if (r < 0 && !a->failing)
		log_warn("kiln-worker %s: %s (retrying)", a->o.name,
			 kiln_error_msg(err));
	else if (r == 0 && a->failing)
		log_info("kiln-worker %s: kilnd %s answers again", a->o.name,
			 a->base);
	a->failing = r < 0;
}

/* Register until it works (backoff), or stop, or a fatal answer. */
static bool register_loop(struct agent *a)
{
	uint64_t backoff = BACKOFF_MIN_MS;

	a->state = AGENT_REGISTERING;
	for (;;) {
		_cleanup_error_ struct kiln_error *err = NULL;
		int r = agent_register(a, &err);

		note(a, r, err);
		if (r == 0) {
			a->state = AGENT_HEARTBEATING;
			assert_agent_state(a);
			return true;
		}
		if (is_fatal(r)) {
			a->state = AGENT_GAVE_UP;
			give_up(a, err);
			return false;
		}
		if (agent_wait(a, backoff))
			return false;
		backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS :
							 backoff * 2;
	}
}

static void *agent_main(void *ud)
{
	struct agent *a = ud;

	if (!register_loop(a))
		return NULL;
	while (!agent_wait(a, a->interval_ms)) {
		_cleanup_error_ struct kiln_error *err = NULL;
		int r;

		assert(a->state == AGENT_HEARTBEATING);
		assert_agent_state(a);
		r = agent_heartbeat(a, &err);

		if (r == -ENOENT || r == -EACCES) {
			log_info("kiln-worker %s: kilnd no longer knows %s: registering again",
				 a->o.name, a->id);
			if (!register_loop(a))
				return NULL;
			continue;
		}
		note(a, r, err);
	}
	return NULL;
}

/* ---- main ---- */

static void agent_stop(struct agent *a)
{
	pthread_mutex_lock(&a->lock);
	a->stop = true;
	pthread_cond_signal(&a->cond);
	pthread_mutex_unlock(&a->lock);
	if (a->thread_started)
		pthread_join(a->thread, NULL);
	kiln_http_server_stop(a->http);
}

static void agent_release(struct agent *a)
{
	kiln_http_server_free(a->http);
	kiln_peer_server_free(a->peer);
	kiln_rcache_stop(a->upload); /* an upload in progress ends at its next blob */
	kiln_jobs_free(a->jobs);
	kiln_images_free(a->images);
	kiln_cache_free(a->layers);
	kiln_rcache_free(a->upload);
	kiln_cache_free(a->records);
	kiln_http_client_free(a->client);
	kiln_worker_free(a->worker);
	kiln_registry_free(a->registry);
	json_decref(a->platforms);
	free(a->token);
	free(a->base);
	free(a->addr);
	free(a->id);
	opts_release(&a->o);
	pthread_cond_destroy(&a->cond);
	pthread_mutex_destroy(&a->lock);
}

static void agent_init(struct agent *a)
{
	memset(a, 0, sizeof(*a));
	pthread_mutex_init(&a->lock, NULL);
	kiln_cond_init_monotonic(&a->cond);
}

static int agent_run(struct agent *a, const sigset_t *sigs)
{
	int sig = 0, r;

	r = pthread_create(&a->thread, NULL, agent_main, a);
	if (r != 0) {
		log_error("kiln-worker: cannot start a thread: %s", strerror(r));
		return 1;
	}
	a->thread_started = true;
	sigwait(sigs, &sig);
	agent_stop(a);
	/* The agent thread is joined: fatal is ours to read. */
	if (!a->fatal)
		log_info("kiln-worker %s: %s, stopped", a->o.name,
			 strsignal(sig));
	return a->fatal ? 1 : 0;
}

int main(int argc, char **argv)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct agent a;
	sigset_t sigs;
	int rc;

	agent_init(&a);
	kiln_log_set_level(KILN_LOG_INFO);
	rc = parse_args(argc, argv, &a.o);
	if (rc) {
		agent_release(&a);
		return kiln_args_exit(rc);
	}
	kiln_daemon_block_signals(&sigs);
	if (agent_open(&a, &err) < 0) {
		fprintf(stderr, "kiln-worker: error: %s\n", kiln_error_msg(err));
		rc = 1;
	} else {
		rc = agent_run(&a, &sigs);
	}
	agent_release(&a);
	return rc;
}
