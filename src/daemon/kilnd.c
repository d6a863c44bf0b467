/*
 * kilnd: the controller (docs/cluster.md). For now it holds the worker
 * registry and serves the worker and client endpoints of docs/api.md; the
 * solver still runs embedded in `kiln build`.
 *
 * Threads: the HTTP server's connection threads run the handlers (they
 * touch only the registry, which locks); the main thread waits for
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

#include "daemon/daemon.h"
#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/parse-util.h"
#include "daemon/workers.h"
#include "daemon/tokens.h"
#include "proto/http-server.h"

#define REGISTER_BODY_LIMIT (1u << 20)
#define HEARTBEAT_BODY_LIMIT (64u << 10)
#define DEFAULT_LISTEN "127.0.0.1:7070"
#define DEFAULT_INTERVAL_MS 2000u

struct kilnd {
	char *root;
	const char *listen;
	uint64_t interval_ms;
	int lock_fd;
	char *worker_token, *client_token;
	struct kiln_workers *reg;
	struct kiln_http_server *http;
};

static void usage(FILE *f)
{
	fputs("Usage: kilnd --root DIR [--listen ADDR:PORT] [--heartbeat-interval-ms N] [--debug]\n"
	      "\n"
	      "The kiln controller: workers register with it, clients talk to it.\n"
	      "Tokens: DIR/worker.token (for kiln-worker --token-file) and\n"
	      "DIR/client.token (for kiln --token-file), created when missing.\n"
	      "\n"
	      "  --root DIR                 state directory (created, mode 0700)\n"
	      "  --listen ADDR:PORT         listen address (default " DEFAULT_LISTEN ")\n"
	      "  --heartbeat-interval-ms N  interval workers heartbeat at (default 2000);\n"
	      "                             a worker silent for 3 intervals is lost\n"
	      "  --debug                    debug logging\n"
	      "  -h, --help                 show this help\n",
	      f);
}

/* ---- handlers ---- */

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
	if (kiln_workers_register(d->reg, &r, &id) < 0) {
		kiln_registration_release(&r);
		kiln_http_resp_error(resp, 503,
				     "the registry is full (%u ready workers)",
				     KILN_REGISTRY_MAX_WORKERS);
		return 0;
	}
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
	if (kiln_workers_heartbeat(d->reg, id, running, held) < 0) {
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

	kiln_http_resp_json(resp, 200, kiln_workers_list_json(d->reg));
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
		  REGISTER_BODY_LIMIT, true, false, d->worker_token },
		{ "POST", "/v1/workers/*", handle_heartbeat, d,
		  HEARTBEAT_BODY_LIMIT, true, false, d->worker_token },
		{ "GET", "/v1/workers", handle_list, d, 0, false, false, d->client_token },
		{ "GET", "/v1/health", handle_health, d, 0, false, true, NULL },
	};
	size_t i;
	int r;

	for (i = 0; i < ARRAY_SIZE(routes); i++) {
		r = kiln_http_server_route(d->http, &routes[i]);
		if (r < 0)
			return r;
	}
	return 0;
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
	struct kiln_http_server_options o = { .listen = d->listen };
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
	d->reg = kiln_workers_new(d->interval_ms);
	r = kiln_http_server_new(&o, &d->http, err);
	if (r == 0)
		r = add_routes(d);
	if (r == 0)
		r = kiln_http_server_start(d->http, err);
	if (r < 0)
		return kiln_error_set(err, r, "cannot serve on %s", d->listen);
	log_info("kilnd: listening on %s (root %s, heartbeat every %llu ms)",
		 kiln_http_server_url(d->http), d->root,
		 (unsigned long long)d->interval_ms);
	return 0;
}

static void kilnd_release(struct kilnd *d)
{
	kiln_http_server_free(d->http);
	kiln_workers_free(d->reg);
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
		kiln_workers_sweep(d->reg);
	}
	log_info("kilnd: %s, stopping", strsignal(sig));
}

static int parse_args(struct kilnd *d, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "root", required_argument, NULL, 'r' },
		{ "listen", required_argument, NULL, 'l' },
		{ "heartbeat-interval-ms", required_argument, NULL, 'i' },
		{ "debug", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'r': free(d->root); d->root = xstrdup(optarg); break;
		case 'l': d->listen = optarg; break;
		case 'd': kiln_log_set_level(KILN_LOG_DEBUG); break;
		case 'h': usage(stdout); exit(0);
		case 'i':
			if (kiln_parse_u64(optarg, &d->interval_ms) < 0 ||
			    d->interval_ms < 50 || d->interval_ms > 600000) {
				fprintf(stderr, "kilnd: --heartbeat-interval-ms: '%s' is not 50..600000\n",
					optarg);
				return -EINVAL;
			}
			break;
		default: usage(stderr); return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "kilnd: unexpected argument '%s'\n", argv[optind]);
		return -EINVAL;
	}
	if (!d->root) {
		fprintf(stderr, "kilnd: --root DIR is required\n");
		return -EINVAL;
	}
	return 0;
}

int main(int argc, char **argv)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kilnd d = { .listen = DEFAULT_LISTEN,
			   .interval_ms = DEFAULT_INTERVAL_MS, .lock_fd = -1 };
	sigset_t sigs;
	int rc = 0;

	kiln_log_set_level(KILN_LOG_INFO);
	if (parse_args(&d, argc, argv) < 0) {
		free(d.root);
		return 2;
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
