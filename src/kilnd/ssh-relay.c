/*
 * The ssh agent relay (ssh-relay.h). One lock and one condition guard
 * everything: the builds, their pending requests, the sessions. A
 * request lives on its asker's stack; whoever takes it out of the pending
 * list (an answer, the build's end, the asker's deadline) does so under
 * the lock, so nothing points at it once the asker returns.
 *
 * A request's states: PENDING (in its build's list, not yet sent) →
 * SENT (handed to the client) → DONE (answered or failed). The asker
 * removes a request that is not DONE at its deadline.
 */
#include "kilnd/ssh-relay.h"

#include <assert.h>
#include <jansson.h>
#include <pthread.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/base64.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/strv.h"
#include "solver/job.h"
#include "worker/ssh-agent.h"

#define MAX_BUILDS 256u
#define MAX_SESSIONS 1024u
#define ID_MAX 256u
/*
 * Requests waiting for a client, per build and in all. Each holds one of
 * the HTTP server's connections for up to 30 s: in all, a quarter of
 * them at most, so builds, events and workers always get through.
 */
#define MAX_PENDING_BUILD 8u
#define MAX_PENDING (KILN_HTTP_SERVER_MAX_CONNECTIONS / 4)
/* Client exchanges waiting: one per build at a time, this many in all. */
#define MAX_WAITERS 8u
/* How long a client's exchange waits for a request before answering empty. */
#define EXCHANGE_WAIT_MS 1000u
/* Bodies: one message base64'd and a little JSON; a client's answers. */
#define ASK_BODY_LIMIT (KILN_SSH_AGENT_MSG_MAX / 3 * 4 + 4096)
#define EXCHANGE_BODY_LIMIT (MAX_PENDING_BUILD * ASK_BODY_LIMIT)

_Static_assert(MAX_PENDING_BUILD <= MAX_PENDING, "a build's requests fit in all");
_Static_assert(MAX_PENDING + MAX_WAITERS <= KILN_HTTP_SERVER_MAX_CONNECTIONS / 2,
	       "the relay holds at most half of the server's connections");

enum req_state { REQ_PENDING, REQ_SENT, REQ_DONE };

struct request {
	enum req_state state;
	uint64_t n;
	const char *id;
	const uint8_t *data;
	size_t len;
	uint8_t *answer; /* DONE: the answer, or NULL when it failed */
	size_t answer_len;
};

/* Owned ids and the view kiln_ssh_agents_find() reads. */
struct idset {
	char **v;
	struct kiln_ssh_agents a;
};

struct rbuild {
	char build[17];
	char token[33];
	struct idset ids; /* what its client declared */
	struct request *pending[MAX_PENDING_BUILD];
	size_t n_pending;
	uint64_t next_n;
	bool exchanging; /* a client exchange waits on it */
	bool ended;
};

struct session {
	char token[33];
	struct rbuild *b;
	struct idset ids; /* what the job's op mounts, of those declared */
};

struct kiln_ssh_relay {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct rbuild *builds[MAX_BUILDS];
	size_t n_builds;
	struct session sessions[MAX_SESSIONS];
	size_t n_sessions;
	size_t n_pending; /* in all builds */
	unsigned n_waiters; /* client exchanges waiting */
	bool stopping;
};

static void assert_request_state(const struct request *q)
{
	assert(q->state == REQ_DONE || !q->answer);
	assert(q->state != REQ_DONE || !q->answer || q->answer_len > 0);
	(void)q;
}

static void idset_init(struct idset *s, const char *const *ids, size_t n)
{
	size_t i;

	s->v = xcalloc(n + 1, sizeof(*s->v));
	for (i = 0; i < n; i++)
		s->v[i] = xstrdup(ids[i]);
	s->a = (struct kiln_ssh_agents){ .ids = (const char *const *)s->v, .n_ids = n };
}

static void idset_release(struct idset *s)
{
	kiln_strv_free(s->v, s->a.n_ids);
	*s = (struct idset){ 0 };
}

struct kiln_ssh_relay *kiln_ssh_relay_new(void)
{
	struct kiln_ssh_relay *r = xcalloc(1, sizeof(*r));

	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
	return r;
}

static void rbuild_free(struct rbuild *b)
{
	idset_release(&b->ids);
	free(b);
}

void kiln_ssh_relay_free(struct kiln_ssh_relay *r)
{
	size_t i;

	if (!r)
		return;
	for (i = 0; i < r->n_sessions; i++)
		idset_release(&r->sessions[i].ids);
	for (i = 0; i < r->n_builds; i++)
		rbuild_free(r->builds[i]);
	pthread_cond_destroy(&r->cond);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

static struct rbuild *find_build(struct kiln_ssh_relay *r, const char *build, size_t len)
{
	size_t i;

	for (i = 0; i < r->n_builds; i++)
		if (strlen(r->builds[i]->build) == len && !memcmp(r->builds[i]->build, build, len))
			return r->builds[i];
	return NULL;
}

/* Take q out of its build's list (under the lock). */
static void unlist(struct kiln_ssh_relay *r, struct rbuild *b, struct request *q)
{
	size_t i;

	for (i = 0; i < b->n_pending; i++)
		if (b->pending[i] == q) {
			b->pending[i] = b->pending[--b->n_pending];
			r->n_pending--;
			return;
		}
}

/* Fail every request of b still waiting (under the lock). */
static void fail_pending(struct kiln_ssh_relay *r, struct rbuild *b)
{
	while (b->n_pending > 0) {
		b->pending[0]->state = REQ_DONE;
		unlist(r, b, b->pending[0]);
	}
}

static void drop_session(struct kiln_ssh_relay *r, size_t i)
{
	idset_release(&r->sessions[i].ids);
	r->sessions[i] = r->sessions[--r->n_sessions];
}

/* Forget ended builds none of whose requests or sessions is left. */
static void sweep(struct kiln_ssh_relay *r)
{
	size_t i = 0, k;

	while (i < r->n_builds) {
		struct rbuild *b = r->builds[i];
		bool used = b->n_pending > 0 || b->exchanging;

		for (k = 0; !used && k < r->n_sessions; k++)
			used = r->sessions[k].b == b;
		if (b->ended && !used) {
			rbuild_free(b);
			r->builds[i] = r->builds[--r->n_builds];
		} else {
			i++;
		}
	}
}

void kiln_ssh_relay_shutdown(struct kiln_ssh_relay *r)
{
	size_t i;

	pthread_mutex_lock(&r->lock);
	r->stopping = true;
	for (i = 0; i < r->n_builds; i++)
		fail_pending(r, r->builds[i]);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

char *kiln_ssh_relay_add_build(struct kiln_ssh_relay *r, const char *build,
			       const char *const *ids, size_t n_ids)
{
	struct rbuild *b;
	char *token = NULL;

	pthread_mutex_lock(&r->lock);
	sweep(r);
	if (!r->stopping && r->n_builds < MAX_BUILDS && strlen(build) < sizeof(b->build)) {
		b = xcalloc(1, sizeof(*b));
		snprintf(b->build, sizeof(b->build), "%s", build);
		token = kiln_random_hex(16);
		snprintf(b->token, sizeof(b->token), "%s", token);
		idset_init(&b->ids, ids, n_ids);
		r->builds[r->n_builds++] = b;
	}
	pthread_mutex_unlock(&r->lock);
	return token;
}

void kiln_ssh_relay_end_build(struct kiln_ssh_relay *r, const char *build)
{
	struct rbuild *b;
	size_t i = 0;

	pthread_mutex_lock(&r->lock);
	b = find_build(r, build, strlen(build));
	if (b) {
		b->ended = true;
		fail_pending(r, b);
		while (i < r->n_sessions)
			if (r->sessions[i].b == b)
				drop_session(r, i);
			else
				i++;
		sweep(r);
	}
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

int kiln_ssh_relay_open(struct kiln_ssh_relay *r, const char *build, const char *const *ids,
			size_t n_ids, char **session, struct kiln_error **err)
{
	struct session *s;
	struct rbuild *b;
	const char **keep;
	size_t i, n = 0;

	pthread_mutex_lock(&r->lock);
	b = find_build(r, build, strlen(build));
	if (!b || b->ended || r->stopping) {
		pthread_mutex_unlock(&r->lock);
		return kiln_error_set(err, -ENOENT, "kilnd: build %s: %s", build,
				      r->stopping ? "kilnd is stopping" : "its ssh agent relay has ended");
	}
	if (r->n_sessions == MAX_SESSIONS) {
		pthread_mutex_unlock(&r->lock);
		return kiln_error_set(err, -EBUSY, "kilnd: ssh relay full (%u sessions)", MAX_SESSIONS);
	}
	keep = xcalloc(n_ids + 1, sizeof(*keep));
	for (i = 0; i < n_ids; i++)
		if (kiln_ssh_agents_has(&b->ids.a, ids[i]))
			keep[n++] = ids[i];
	s = &r->sessions[r->n_sessions++];
	*session = kiln_random_hex(16);
	snprintf(s->token, sizeof(s->token), "%s", *session);
	s->b = b;
	idset_init(&s->ids, keep, n);
	free(keep);
	pthread_mutex_unlock(&r->lock);
	return 0;
}

void kiln_ssh_relay_close(struct kiln_ssh_relay *r, const char *session)
{
	size_t i;

	if (!session)
		return;
	pthread_mutex_lock(&r->lock);
	for (i = 0; i < r->n_sessions; i++)
		if (kiln_http_token_eq(session, r->sessions[i].token)) {
			drop_session(r, i);
			break;
		}
	sweep(r);
	pthread_mutex_unlock(&r->lock);
}

/* ---- the worker's side ---- */

/*
 * Post q to session's build and wait for its answer: 0 (q->answer set),
 * or the HTTP status to fail with.
 */
static int ask(struct kiln_ssh_relay *r, const char *session, struct request *q, const char **why)
{
	struct timespec ts = kiln_deadline_ms(CLOCK_REALTIME, KILN_SSH_AGENT_TIMEOUT_MS);
	struct session *s = NULL;
	struct rbuild *b;
	size_t i;

	pthread_mutex_lock(&r->lock);
	/* Every session compared: which one matched leaks no timing. */
	for (i = 0; i < r->n_sessions; i++)
		if (kiln_http_token_eq(session, r->sessions[i].token))
			s = &r->sessions[i];
	b = s ? s->b : NULL;
	*why = r->stopping ? "kilnd is stopping"
	       : !s ? "no such ssh session (the job is over)"
	       : !kiln_ssh_agents_has(&s->ids.a, q->id) ? "the job's op mounts no such ssh id"
	       : b->n_pending == MAX_PENDING_BUILD || r->n_pending == MAX_PENDING
		       ? "too many ssh agent requests waiting"
		       : NULL;
	if (*why) {
		pthread_mutex_unlock(&r->lock);
		return r->stopping || (s && kiln_ssh_agents_has(&s->ids.a, q->id)) ? 503 : 404;
	}
	q->n = b->next_n++;
	b->pending[b->n_pending++] = q;
	r->n_pending++;
	pthread_cond_broadcast(&r->cond);
	while (q->state != REQ_DONE && pthread_cond_timedwait(&r->cond, &r->lock, &ts) == 0)
		;
	if (q->state != REQ_DONE) {
		unlist(r, b, q);
		q->state = REQ_DONE;
		*why = "the client did not answer in time";
	} else if (!q->answer) {
		*why = "no answer from the client's agent";
	}
	assert_request_state(q);
	pthread_mutex_unlock(&r->lock);
	return *why ? 504 : 0;
}

static int handle_ask(const struct kiln_http_server_req *req, struct kiln_http_server_resp *resp,
		      void *ud)
{
	struct kiln_ssh_relay *r = ud;
	const char *session = json_string_value(json_object_get(req->json, "session"));
	const char *id = json_string_value(json_object_get(req->json, "id"));
	const char *data = json_string_value(json_object_get(req->json, "data"));
	_cleanup_free_ uint8_t *msg = NULL;
	struct request q = { .state = REQ_PENDING, .id = id };
	const char *why = NULL;
	size_t len = 0;
	int status;
	char *enc;

	if (data)
		msg = (uint8_t *)kiln_base64_decode(data, &len);
	if (!session || !id || strlen(id) > ID_MAX || !msg ||
	    !kiln_ssh_agent_request_allowed(msg, len)) {
		kiln_http_resp_error(resp, 400,
				     "expected {\"session\", \"id\": ssh id, \"data\": base64 of an allowed agent request}");
		return 0;
	}
	q.data = msg;
	q.len = len;
	status = ask(r, session, &q, &why);
	if (status) {
		kiln_http_resp_error(resp, status, "ssh agent request: %s", why);
		return 0;
	}
	enc = kiln_base64_encode(q.answer, q.answer_len);
	free(q.answer);
	kiln_http_resp_json(resp, 200, json_pack("{ss}", "data", enc));
	free(enc);
	return 0;
}

/* ---- the client's side ---- */

/* One answer {"n", "data"} to a request SENT to the client. */
static void take_answer(struct kiln_ssh_relay *r, struct rbuild *b, json_t *a)
{
	json_t *n = json_object_get(a, "n");
	const char *data = json_string_value(json_object_get(a, "data"));
	size_t i, len = 0;
	uint8_t *msg;

	if (!json_is_integer(n) || !data)
		return;
	for (i = 0; i < b->n_pending; i++) {
		struct request *q = b->pending[i];

		if (q->state != REQ_SENT || q->n != (uint64_t)json_integer_value(n))
			continue;
		msg = (uint8_t *)kiln_base64_decode(data, &len);
		if (msg && !kiln_ssh_agent_answer_allowed(msg, len)) {
			free(msg);
			msg = NULL;
		}
		q->answer = msg;
		q->answer_len = msg ? len : 0;
		q->state = REQ_DONE;
		unlist(r, b, q);
		return;
	}
}

/* The requests not yet sent, now SENT; waits a while for one. */
static json_t *take_requests(struct kiln_ssh_relay *r, struct rbuild *b)
{
	struct timespec ts = kiln_deadline_ms(CLOCK_REALTIME, EXCHANGE_WAIT_MS);
	json_t *a = json_array();

	for (;;) {
		size_t i;

		for (i = 0; i < b->n_pending; i++) {
			struct request *q = b->pending[i];
			char *enc;

			if (q->state != REQ_PENDING)
				continue;
			enc = kiln_base64_encode(q->data, q->len);
			json_array_append_new(a, json_pack("{sIssss}", "n", (json_int_t)q->n, "id",
							   q->id, "data", enc));
			free(enc);
			q->state = REQ_SENT;
		}
		if (json_array_size(a) || b->ended || r->stopping ||
		    pthread_cond_timedwait(&r->cond, &r->lock, &ts) != 0)
			return a;
	}
}

static int handle_exchange(const struct kiln_http_server_req *req,
			   struct kiln_http_server_resp *resp, void *ud)
{
	struct kiln_ssh_relay *r = ud;
	const char *slash = strchr(req->rest, '/');
	const char *token = json_string_value(json_object_get(req->json, "token"));
	json_t *answers = json_object_get(req->json, "answers"), *a, *reqs;
	struct rbuild *b;
	bool ended;
	size_t i;

	if (!slash || strcmp(slash, "/ssh")) {
		kiln_http_resp_error(resp, 404, "no such resource %s", req->path);
		return 0;
	}
	pthread_mutex_lock(&r->lock);
	b = find_build(r, req->rest, (size_t)(slash - req->rest));
	if (!b || !token || !kiln_http_token_eq(token, b->token)) {
		pthread_mutex_unlock(&r->lock);
		kiln_http_resp_error(resp, 404, "no build %.*s with ssh agents for this token",
				     (int)(slash - req->rest), req->rest);
		return 0;
	}
	/* Answers are taken whatever comes next: they are the client's word. */
	json_array_foreach(answers, i, a)
		take_answer(r, b, a);
	pthread_cond_broadcast(&r->cond);
	if (b->exchanging || r->n_waiters == MAX_WAITERS || r->stopping) {
		bool busy = b->exchanging;

		pthread_mutex_unlock(&r->lock);
		if (busy)
			kiln_http_resp_error(resp, 409,
					     "build %.*s: another ssh exchange is waiting (one at a time)",
					     (int)(slash - req->rest), req->rest);
		else
			kiln_http_resp_error(resp, 503, "%s",
					     r->stopping ? "kilnd is stopping"
							 : "too many ssh exchanges waiting");
		return 0;
	}
	b->exchanging = true;
	r->n_waiters++;
	reqs = take_requests(r, b);
	r->n_waiters--;
	b->exchanging = false;
	ended = b->ended;
	if (ended)
		sweep(r);
	pthread_mutex_unlock(&r->lock);
	kiln_http_resp_json(resp, 200, json_pack("{sosb}", "requests", reqs, "ended", ended));
	return 0;
}

int kiln_ssh_relay_routes(struct kiln_ssh_relay *r, struct kiln_http_server *http,
			  const char *worker_token, const char *client_token)
{
	const struct kiln_http_route routes[] = {
		{ "POST", "/v1/ssh", handle_ask, r, ASK_BODY_LIMIT, true, false, worker_token,
		  NULL, NULL, NULL },
		{ "POST", "/v1/builds/*", handle_exchange, r, EXCHANGE_BODY_LIMIT, true, false,
		  client_token, NULL, NULL, NULL },
	};
	size_t i;
	int rc;

	for (i = 0; i < ARRAY_SIZE(routes); i++) {
		rc = kiln_http_server_route(http, &routes[i]);
		if (rc < 0)
			return rc;
	}
	return 0;
}
