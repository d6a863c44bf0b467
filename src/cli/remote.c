#include "cli/remote.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/base64.h"
#include "basic/strbuf.h"
#include "cas/digest-set.h"
#include "cas/gc.h"
#include "cli/common.h"
#include "proto/http-client.h"
#include "export/image.h"
#include "source/image.h"
#include "source/local.h"
#include "peer/peer.h"

#define STATE_TIMEOUT_MS 30000L
#define EVENTS_TIMEOUT_MS 30000L
#define EVENTS_LIMIT (8u << 20)

struct kiln_remote {
	char *addr, *token;
	struct kiln_http_client *http;
};

int kiln_remote_open(const char *addr, const char *token_file,
		     const struct kiln_tls *flags, struct kiln_remote **out,
		     struct kiln_error **err)
{
	struct kiln_tls tls = flags ? *flags : (struct kiln_tls){ 0 };
	struct kiln_remote *rm;
	char *token = NULL;
	size_t n;
	int r;

	*out = NULL;
	if (!addr)
		addr = getenv("KILN_ADDR");
	if (!addr || !*addr)
		return 0;
	if (strncmp(addr, "http://", 7) && strncmp(addr, "https://", 8))
		return kiln_error_set(err, -EINVAL, "--addr %s: expected http://HOST:PORT", addr);
	r = kiln_cli_tls(&tls, err);
	if (r == 0)
		r = kiln_cli_token(token_file, &token, err);
	if (r < 0)
		return r;
	if (!token)
		return kiln_error_set(err, -EINVAL,
				      "--addr %s: no client token (--token-file F or KILN_TOKEN)",
				      addr);
	rm = xcalloc(1, sizeof(*rm));
	rm->addr = xstrdup(addr);
	n = strlen(rm->addr);
	while (n > 0 && rm->addr[n - 1] == '/')
		rm->addr[--n] = '\0';
	rm->token = token;
	rm->http = kiln_http_client_new(&(struct kiln_http_client_options){ .tls = &tls });
	*out = rm;
	return 0;
}

void kiln_remote_free(struct kiln_remote *rm)
{
	if (!rm)
		return;
	kiln_http_client_free(rm->http);
	free(rm->addr);
	free(rm->token);
	free(rm);
}

static struct kiln_peer_source source(const struct kiln_remote *rm)
{
	return (struct kiln_peer_source){ .url = rm->addr, .token = rm->token };
}

/* ---- context upload: only what kilnd lacks, the root node last ---- */

static int put_blob(struct kiln_remote *rm, struct kiln_store *st, const struct kiln_digest *d,
		    struct kiln_error **err)
{
	_cleanup_free_ char *url = xasprintf("%s/v1/blobs/%s", rm->addr, KILN_DIGEST_STR(d));
	struct kiln_http_call call = {
		.method = "PUT",
		.url = url,
		.token = rm->token,
		.content_type = "application/octet-stream",
		.upload = true,
		.body_from_fd = true,
	};
	uint64_t size = 0;
	int fd = kiln_store_open_blob(st, d), r;

	if (fd < 0)
		return kiln_error_seterrno(err, fd, "blob %s", KILN_DIGEST_STR(d));
	r = kiln_store_size(st, d, &size);
	call.body_fd = fd;
	call.body_fd_size = size;
	if (r == 0)
		r = kiln_http_client_json(rm->http, &call, NULL, NULL, err);
	close(fd);
	return r;
}

/* Upload the blobs of ds (n, in order) that kilnd lacks. */
static int upload_blobs(struct kiln_remote *rm, struct kiln_store *st, const struct kiln_digest *ds,
			size_t n, struct kiln_error **err)
{
	struct kiln_peer_source src = source(rm);
	_cleanup_free_ bool *missing = xcalloc(n + 1, sizeof(*missing));
	size_t i, k, batch;
	int r = 0;

	for (i = 0; r == 0 && i < n; i += batch) {
		batch = n - i < KILN_PEER_MAX_DIGESTS ? n - i : KILN_PEER_MAX_DIGESTS;
		r = kiln_peer_find_missing(rm->http, &src, &ds[i], batch, &missing[i], err);
	}
	for (k = 0; r == 0 && k < n; k++)
		if (missing[k])
			r = put_blob(rm, st, &ds[k], err);
	return r;
}

static int upload_tree(struct kiln_remote *rm, struct kiln_store *st,
		       const struct kiln_digest *root, struct kiln_error **err)
{
	struct kiln_digest_set all = { 0 };
	struct kiln_digest *ds = NULL;
	size_t n = 0, i;
	int r;

	r = kiln_gc_mark_tree(st, root, &all, err);
	if (r < 0)
		goto out;
	ds = xcalloc(all.n + 1, sizeof(*ds));
	for (i = 0; i < all.cap; i++)
		if (all.slots[i].algo != KILN_DIGEST_NONE && !kiln_digest_eq(&all.slots[i], root))
			ds[n++] = all.slots[i];
	ds[n++] = *root; /* the root last: a tree kilnd has is whole */
	r = upload_blobs(rm, st, ds, n, err);
out:
	kiln_digest_set_release(&all);
	free(ds);
	if (r < 0)
		kiln_error_prefix(err, "uploading context %s", KILN_DIGEST_STR(root));
	return r;
}

/*
 * An image from an OCI layout on this machine: kilnd and the workers
 * cannot read it, so it is resolved here for the op's platform, its blobs
 * (the manifest last) go up as a context's do, and the op is pinned to
 * the manifest.
 */
static int pin_layout(struct kiln_remote *rm, const struct kiln_remote_build *b,
		      const struct kiln_op *op, struct kiln_digest *manifest,
		      struct kiln_error **err)
{
	const struct kiln_image_source src = { .store = b->store };
	struct kiln_image_ref ref = { 0 };
	_cleanup_free_ struct kiln_digest *blobs = NULL;
	size_t n = 0;
	int r;

	r = kiln_image_ref_parse(op->ref, "/", &ref, err);
	if (r == 0)
		r = kiln_image_resolve(&src, &ref, op->platform, manifest, err);
	if (r == 0)
		r = kiln_image_store_blobs(&src, &ref, manifest, &blobs, &n, err);
	if (r == 0 && n > 1) { /* the manifest (first) last */
		struct kiln_digest m = blobs[0];

		memmove(&blobs[0], &blobs[1], (n - 1) * sizeof(*blobs));
		blobs[n - 1] = m;
	}
	if (r == 0)
		r = upload_blobs(rm, b->store, blobs, n, err);
	kiln_image_ref_release(&ref);
	if (r < 0)
		kiln_error_prefix(err, "%s", op->ref);
	return r;
}

/* Snapshot every local context and upload it: the pins kilnd solves with. */
static json_t *pin_contexts(struct kiln_remote *rm, const struct kiln_remote_build *b,
			    struct kiln_error **err)
{
	json_t *pins = json_array();
	size_t i;

	for (i = 0; i < b->def->n_ops; i++) {
		const struct kiln_op *op = &b->def->ops[i];
		struct kiln_digest tree;

		if (op->type == KILN_OP_SOURCE_IMAGE && !strncmp(op->ref, "oci-layout://", 13)) {
			if (pin_layout(rm, b, op, &tree, err) < 0) {
				json_decref(pins);
				return NULL;
			}
			json_array_append_new(pins, json_pack("{ssss}", "op",
							      KILN_DIGEST_STR(&op->digest), "tree",
							      KILN_DIGEST_STR(&tree)));
			continue;
		}
		if (op->type != KILN_OP_SOURCE_LOCAL)
			continue;
		if (kiln_local_snapshot(b->store, b->cache, op->local_path,
					(const char *const *)op->include, op->n_include,
					(const char *const *)op->exclude, op->n_exclude, &tree, NULL,
					err) < 0 ||
		    upload_tree(rm, b->store, &tree, err) < 0) {
			json_decref(pins);
			return NULL;
		}
		json_array_append_new(pins, json_pack("{ssss}", "op", KILN_DIGEST_STR(&op->digest),
						      "tree", KILN_DIGEST_STR(&tree)));
	}
	return pins;
}

/* ---- submit, follow, fetch ---- */

/* The client's credentials for the registry of reference ref, in creds, if it has any. */
static void add_credentials(struct kiln_registry *reg, const char *ref, json_t *creds)
{
	_cleanup_free_ char *host = kiln_registry_ref_host(ref), *user = NULL, *pass = NULL;

	if (!host || json_object_get(creds, host) || json_object_size(creds) >= KILN_REGISTRY_MAX_CREDENTIALS ||
	    kiln_registry_credentials(reg, host, &user, &pass) < 0)
		return;
	json_object_set_new(creds, host, json_pack("{s:s, s:s}", "username", user, "password", pass));
	explicit_bzero(pass, strlen(pass));
}

/* The client's credentials for the registries the build names, and no other. */
static json_t *build_credentials(const struct kiln_remote_build *b)
{
	json_t *creds = json_object(), *p;
	size_t i;

	for (i = 0; b->registry && i < b->def->n_ops; i++)
		if (b->def->ops[i].type == KILN_OP_SOURCE_IMAGE)
			add_credentials(b->registry, b->def->ops[i].ref, creds);
	json_array_foreach(b->registry ? json_object_get(b->image, "push") : NULL, i, p)
		add_credentials(b->registry, json_string_value(json_object_get(p, "ref")), creds);
	return creds;
}

static int submit(struct kiln_remote *rm, const struct kiln_remote_build *b, json_t *pins,
		  char **id, char **ssh_token, struct kiln_error **err)
{
	_cleanup_free_ char *url = xasprintf("%s/v1/builds", rm->addr);
	json_t *secrets = json_object(), *resp = NULL, *creds;
	struct kiln_http_call call = { .method = "POST", .url = url, .token = rm->token };
	size_t i;
	int r;

	for (i = 0; i < b->n_secrets; i++) {
		char *enc = kiln_base64_encode(b->secrets[i].data, b->secrets[i].len);

		json_object_set_new(secrets, b->secrets[i].id, json_string(enc));
		free(enc);
	}
	call.json = json_pack("{sssssssbsoso}", "graph", b->graph, "base_dir", b->base_dir,
			      "platform", b->platform, "no_cache", b->no_cache, "pins",
			      json_incref(pins), "secrets", secrets);
	if (b->image)
		json_object_set(call.json, "image", b->image);
	if (b->ssh) { /* the ids only: sockets and keys stay here */
		json_t *ids = json_array();

		for (i = 0; i < b->ssh->n_ids; i++)
			json_array_append_new(ids, json_string(b->ssh->ids[i]));
		json_object_set_new(call.json, "ssh", ids);
	}
	creds = build_credentials(b);
	if (json_object_size(creds))
		json_object_set(call.json, "credentials", creds);
	r = kiln_http_client_json(rm->http, &call, &resp, NULL, err);
	json_decref(call.json);
	kiln_registry_credentials_zero(creds);
	json_decref(creds);
	if (r == 0 && !json_string_value(json_object_get(resp, "id")))
		r = kiln_error_set(err, -EPROTO, "POST %s: no build id in the answer", url);
	if (r == 0)
		*id = xstrdup(json_string_value(json_object_get(resp, "id")));
	if (r == 0 && b->ssh && !json_string_value(json_object_get(resp, "ssh_token")))
		r = kiln_error_set(err, -EPROTO, "POST %s: kilnd took no --ssh agents", url);
	if (r == 0 && b->ssh)
		*ssh_token = xstrdup(json_string_value(json_object_get(resp, "ssh_token")));
	json_decref(resp);
	return r;
}

/*
 * Answering the build's ssh agent requests (docs/api.md "SSH agent
 * relay") while it runs: a thread long-polls kilnd with the answers to
 * the last requests and gets the next ones.
 */
struct ssh_answerer {
	struct kiln_remote *rm;
	const char *id, *token;
	const struct kiln_ssh_agents *ssh;
	atomic_bool stop;
	pthread_t thread;
};

static bool answerer_stopped(void *ud)
{
	struct ssh_answerer *sa = ud;

	return atomic_load(&sa->stop);
}

/* The answer to one request: the agent's, or SSH_AGENT_FAILURE. */
static json_t *answer_one(struct ssh_answerer *sa, json_t *q)
{
	const char *id = json_string_value(json_object_get(q, "id"));
	const char *data = json_string_value(json_object_get(q, "data"));
	static const uint8_t failure[1] = { KILN_SSH_AGENT_FAILURE };
	_cleanup_free_ uint8_t *msg = NULL, *resp = NULL;
	_cleanup_free_ char *enc = NULL;
	size_t len = 0, rlen = 0;

	if (id && data)
		msg = (uint8_t *)kiln_base64_decode(data, &len);
	if (!msg || !kiln_ssh_agents_has(sa->ssh, id) ||
	    sa->ssh->relay(sa->ssh->ud, id, msg, len, &sa->stop, &resp, &rlen) < 0)
		enc = kiln_base64_encode(failure, sizeof(failure));
	else
		enc = kiln_base64_encode(resp, rlen);
	return json_pack("{sOss}", "n", json_object_get(q, "n"), "data", enc);
}

static void *answerer_main(void *ud)
{
	struct ssh_answerer *sa = ud;
	_cleanup_free_ char *url = xasprintf("%s/v1/builds/%s/ssh", sa->rm->addr, sa->id);
	json_t *answers = json_array();

	while (!atomic_load(&sa->stop)) {
		_cleanup_error_ struct kiln_error *err = NULL;
		struct kiln_http_call call = {
			.method = "POST", .url = url, .token = sa->rm->token,
			.json = json_pack("{ssso}", "token", sa->token, "answers", answers),
			.timeout_ms = EVENTS_TIMEOUT_MS, .abandon = answerer_stopped,
			.abandon_ud = sa,
		};
		json_t *resp = NULL, *q;
		size_t i;
		int r = kiln_http_client_json(sa->rm->http, &call, &resp, NULL, &err);

		json_decref(call.json);
		answers = json_array();
		if (r < 0) {
			/* Those asking time out; the build goes on. */
			if (!atomic_load(&sa->stop))
				sleep(1);
			continue;
		}
		/* Each may take the agent a while: a stop is not kept waiting. */
		json_array_foreach(json_object_get(resp, "requests"), i, q) {
			if (atomic_load(&sa->stop))
				break;
			json_array_append_new(answers, answer_one(sa, q));
		}
		if (json_is_true(json_object_get(resp, "ended")))
			atomic_store(&sa->stop, true);
		json_decref(resp);
	}
	json_decref(answers);
	return NULL;
}

/*
 * The thread blocks SIGINT and SIGTERM: they are the main thread's, which
 * cancels the build on the first one (catch_interrupts).
 */
static void answerer_start(struct ssh_answerer *sa)
{
	sigset_t block, old;

	atomic_init(&sa->stop, false);
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	if (pthread_create(&sa->thread, NULL, answerer_main, sa) != 0)
		abort(); /* only without memory */
	pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void answerer_stop(struct ssh_answerer *sa)
{
	atomic_store(&sa->stop, true);
	pthread_join(sa->thread, NULL);
}

/* The first SIGINT or SIGTERM while a build runs on kilnd (0: none). */
static volatile sig_atomic_t interrupted;

static void on_interrupt(int sig)
{
	interrupted = sig; /* SA_RESETHAND: a second one ends the client */
}

/*
 * Catch the first SIGINT/SIGTERM (old: the dispositions to restore); one
 * that is ignored (a script's `kiln build &`) stays ignored.
 */
static void catch_interrupts(struct sigaction old[2])
{
	static const int sigs[2] = { SIGINT, SIGTERM };
	struct sigaction sa = { .sa_handler = on_interrupt,
				.sa_flags = SA_RESETHAND | SA_RESTART };
	size_t i;

	interrupted = 0;
	sigemptyset(&sa.sa_mask);
	for (i = 0; i < 2; i++) {
		sigaction(sigs[i], NULL, &old[i]);
		if (old[i].sa_handler != SIG_IGN)
			sigaction(sigs[i], &sa, NULL);
	}
}

static void restore_interrupts(const struct sigaction old[2])
{
	sigaction(SIGINT, &old[0], NULL);
	sigaction(SIGTERM, &old[1], NULL);
}

/* Ask kilnd to cancel the build (DELETE); it then ends, failed. */
static void cancel(struct kiln_remote *rm, const char *id)
{
	_cleanup_free_ char *url = xasprintf("%s/v1/builds/%s", rm->addr, id);
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_http_call call = { .method = "DELETE", .url = url, .token = rm->token,
				       .timeout_ms = EVENTS_TIMEOUT_MS };

	fprintf(stderr, "kiln: cancelling build %s on %s (interrupt again to stop waiting)\n",
		id, rm->addr);
	if (kiln_http_client_json(rm->http, &call, NULL, NULL, &err) < 0)
		fprintf(stderr, "kiln: cancelling: %s\n", kiln_error_msg(err));
}

/* Drawing kilnd's progress. */
struct replay {
	struct kiln_progress *pg; /* may be NULL */
	bool ended;               /* its summary line came */
};

static int replay_line(void *ud, char *line, size_t len)
{
	struct replay *rp = ud;

	if (rp->pg)
		kiln_progress_replay(rp->pg, line, len);
	if (!strncmp(line, "{\"summary\"", 10))
		rp->ended = true;
	return 0;
}

/*
 * Draw kilnd's progress until its summary line (the solve ended). A first
 * interrupt cancels the build; its end is still drawn.
 */
static int follow(struct kiln_remote *rm, const char *id, struct kiln_progress *pg,
		  struct kiln_error **err)
{
	_cleanup_strbuf_ struct kiln_strbuf pending = KILN_STRBUF_INIT(EVENTS_LIMIT * 2);
	struct replay rp = { .pg = pg };
	uint64_t from = 0;
	bool cancelling = false;

	while (!rp.ended) {
		if (interrupted && !cancelling) {
			cancel(rm, id);
			cancelling = true;
		}
		_cleanup_free_ char *url = xasprintf("%s/v1/builds/%s/events?from=%llu", rm->addr,
						     id, (unsigned long long)from);
		struct kiln_http_call call = { .method = "GET", .url = url, .token = rm->token,
					       .timeout_ms = EVENTS_TIMEOUT_MS,
					       .limit = EVENTS_LIMIT };
		struct kiln_http_result res = { 0 };
		int r = kiln_http_client_do(rm->http, &call, &res, err);

		if (r == 0 && res.status != 200)
			r = kiln_http_status_error(err, &call, &res);
		if (r < 0) {
			kiln_http_result_release(&res);
			return r;
		}
		from += res.body_len;
		r = kiln_strbuf_feed_lines(&pending, res.body ? res.body : "", res.body_len,
					   replay_line, &rp);
		kiln_http_result_release(&res);
		if (r < 0)
			return kiln_error_set(err, r, "build %s: a progress line over %u bytes",
					      id, EVENTS_LIMIT * 2);
	}
	return 0;
}

/* The build's final state, once kilnd has gathered its outputs. */
static int final_state(struct kiln_remote *rm, const char *id, json_t **out,
		       struct kiln_error **err)
{
	_cleanup_free_ char *url = xasprintf("%s/v1/builds/%s?wait=1", rm->addr, id);
	struct kiln_http_call call = { .method = "GET", .url = url, .token = rm->token,
				       .timeout_ms = STATE_TIMEOUT_MS };
	int r;

	for (;;) {
		json_t *o = NULL;

		r = kiln_http_client_json(rm->http, &call, &o, NULL, err);
		if (r < 0)
			return r;
		if (!strcmp(json_string_value(json_object_get(o, "state")) ?: "", "done")) {
			*out = o;
			return 0;
		}
		json_decref(o);
	}
}

/* Most holders of a build's outputs the client pulls from. */
#define MAX_HOLDERS 64u

/* A build's outputs, as kilnd relays them from each holder in turn. */
struct holders {
	struct kiln_peer_source src[MAX_HOLDERS];
	char *urls[MAX_HOLDERS];
	size_t n;
};

static void holders_release(struct holders *h)
{
	size_t i;

	for (i = 0; i < h->n; i++)
		free(h->urls[i]);
}

/* One output: its tree and the blobs its meta names, into the local store. */
static int fetch(struct kiln_remote *rm, struct kiln_store *st, const struct holders *h,
		 bool pull, json_t *o, struct kiln_digest *tree, char **meta, struct kiln_error **err)
{
	struct kiln_peer_pull_options po = { .http = rm->http };
	const char *m = json_string_value(json_object_get(o, "meta"));
	int r = 0;

	if (kiln_digest_parse(json_string_value(json_object_get(o, "tree")) ?: "", tree) < 0)
		return kiln_error_set(err, -EPROTO, "kilnd: a result without a tree");
	if (pull)
		r = kiln_peer_pull_result(st, tree, m, h->src, h->n, &po, err);
	*meta = r == 0 && m ? xstrdup(m) : NULL;
	return r;
}

/* The image kilnd made (an index or a manifest): every blob it reaches. */
static int fetch_image(struct kiln_remote *rm, struct kiln_store *st, const struct holders *h,
		       const struct kiln_digest *top, struct kiln_error **err)
{
	const struct kiln_peer_source *src = h->src;
	size_t ns = h->n;
	struct kiln_peer_pull_options po = { .http = rm->http };
	struct kiln_digest *ms = NULL;
	json_t *doc = NULL, *e;
	size_t n = 0, i, k;
	int r;

	r = kiln_peer_pull_blob(st, top, UINT64_MAX, src, ns, &po, NULL, err);
	if (r == 0)
		r = kiln_image_read_json(st, top, &doc, err);
	if (r == 0 && json_is_array(json_object_get(doc, "manifests"))) {
		ms = xcalloc(json_array_size(json_object_get(doc, "manifests")) + 1, sizeof(*ms));
		json_array_foreach(json_object_get(doc, "manifests"), i, e) {
			if (kiln_digest_parse(json_string_value(json_object_get(e, "digest")) ?: "",
					      &ms[n]) < 0) {
				r = kiln_error_set(err, -EPROTO, "image index %s: a malformed entry",
						   KILN_DIGEST_STR(top));
				break;
			}
			n++;
		}
	} else if (r == 0) {
		ms = xcalloc(1, sizeof(*ms));
		ms[n++] = *top;
	}
	for (i = 0; r == 0 && i < n; i++) {
		_cleanup_free_ struct kiln_digest *blobs = NULL;
		size_t nb = 0;

		r = kiln_peer_pull_blob(st, &ms[i], UINT64_MAX, src, ns, &po, NULL, err);
		if (r == 0)
			r = kiln_image_manifest_blobs(st, &ms[i], &blobs, &nb, err);
		for (k = 0; r == 0 && k < nb; k++)
			r = kiln_peer_pull_blob(st, &blobs[k], UINT64_MAX, src, ns, &po, NULL, err);
	}
	json_decref(doc);
	free(ms);
	if (r < 0)
		kiln_error_prefix(err, "the image %s", KILN_DIGEST_STR(top));
	return r;
}

static int take_result(struct kiln_remote *rm, const struct kiln_remote_build *b, const char *id,
		       json_t *state, struct kiln_solve_result *out, struct kiln_error **err)
{
	json_t *res = json_object_get(state, "result"), *outs, *o, *image;
	json_int_t n = json_integer_value(json_object_get(res, "holders"));
	struct kiln_store *st = b->store;
	struct holders h = { 0 };
	struct kiln_digest top;
	size_t i;
	int r;

	/* Past MAX_HOLDERS, the first ones and kilnd (the last: the manifests). */
	for (i = 0; i < MAX_HOLDERS && (json_int_t)i < n; i++, h.n++) {
		json_int_t k = i == MAX_HOLDERS - 1 ? n - 1 : (json_int_t)i;

		h.urls[i] = xasprintf("%s/v1/relay/%s/%lld", rm->addr, id, (long long)k);
		h.src[i] = (struct kiln_peer_source){ .url = h.urls[i], .token = rm->token };
	}
	r = fetch(rm, st, &h, b->fetch_trees, res, &out->tree, &out->meta, err);
	outs = json_object_get(res, "outputs");
	out->outputs = xcalloc(json_array_size(outs) + 1, sizeof(*out->outputs));
	json_array_foreach(outs, i, o) {
		if (r < 0)
			break;
		out->outputs[i].op = (size_t)json_integer_value(json_object_get(o, "op"));
		r = fetch(rm, st, &h, b->fetch_trees, o, &out->outputs[i].tree,
			  &out->outputs[i].meta, err);
		out->n_outputs++;
	}
	out->run = (unsigned)json_integer_value(json_object_get(res, "run"));
	out->cached = (unsigned)json_integer_value(json_object_get(res, "cached"));
	out->bytes_moved = (uint64_t)json_integer_value(json_object_get(res, "bytes_moved"));
	image = json_object_get(res, "image");
	if (r == 0 && b->image &&
	    kiln_digest_parse(json_string_value(json_object_get(image, "digest")) ?: "", &top) < 0)
		r = kiln_error_set(err, -EPROTO, "kilnd: a result without its image");
	if (r == 0 && b->image && b->fetch_image)
		r = fetch_image(rm, st, &h, &top, err);
	if (r == 0 && b->image && b->image_result)
		*b->image_result = json_incref(image);
	holders_release(&h);
	return r;
}

int kiln_remote_solve(struct kiln_remote *rm, const struct kiln_remote_build *b,
		      struct kiln_solve_result *out, struct kiln_error **err)
{
	_cleanup_free_ char *id = NULL, *ssh_token = NULL;
	struct ssh_answerer sa = { .rm = rm, .ssh = b->ssh };
	json_t *pins, *state = NULL;
	int r;

	memset(out, 0, sizeof(*out));
	pins = pin_contexts(rm, b, err);
	if (!pins)
		return (*err)->code;
	r = submit(rm, b, pins, &id, &ssh_token, err);
	json_decref(pins);
	if (r == 0) {
		struct sigaction old[2];

		sa.id = id;
		sa.token = ssh_token;
		if (ssh_token)
			answerer_start(&sa);
		catch_interrupts(old);
		r = follow(rm, id, b->progress, err);
		restore_interrupts(old);
		if (ssh_token)
			answerer_stop(&sa);
		/* One that came after the last look: the build ended, but stop. */
		if (r == 0 && interrupted)
			r = kiln_error_set(err, -EINTR, "interrupted");
	}
	if (r == 0)
		r = final_state(rm, id, &state, err);
	if (r == 0 && !json_is_true(json_object_get(state, "ok"))) {
		/* The build's own error leads (a step, a Dockerfile line). */
		r = kiln_error_set(err, -EIO, "%s (build %s on %s)",
				   json_string_value(json_object_get(state, "error")) ?:
					   "the build failed on kilnd", id, rm->addr);
		json_decref(state);
		return r;
	}
	if (r == 0)
		r = take_result(rm, b, id, state, out, err);
	json_decref(state);
	if (r < 0 && id)
		kiln_error_prefix(err, "build %s on %s", id, rm->addr);
	return r;
}
