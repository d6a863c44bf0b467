#include "kilnd/relay.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "basic/alloc.h"

/*
 * One relayed request: a thread makes the call to a holder and writes the
 * answer's body into pair[1]; the server's stream reads pair[0].
 *   WAITING (neither started nor done) -> STARTED (body bytes flow) -> DONE
 *   WAITING -> DONE (an answer without body bytes, or a failure)
 * The response's free sets closing (a call still waiting for the holder
 * gives up within a second), closes pair[0] (a writer still sending then
 * fails with EPIPE) and joins the thread.
 */
struct relay {
	struct kiln_http_client *http;
	char *url;
	const char *token;
	const char *method; /* a static string */
	char *body;
	size_t body_len;
	int pair[2];
	pthread_t thread;
	bool joined;
	atomic_bool closing; /* the response is being freed: stop the call */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool started, done;
	int r;
	struct kiln_http_result res;
	struct kiln_error *err;
};

/* Called once the thread runs: joined only once done (started and done are never unset). */
static void assert_relay_state(const struct relay *rl)
{
	assert(!rl->joined || rl->done);
	(void)rl;
}

static bool relay_closing(void *ud)
{
	struct relay *rl = ud;

	return atomic_load(&rl->closing);
}

static int relay_sink(void *ud, const void *data, size_t len)
{
	struct relay *rl = ud;
	const char *p = data;

	pthread_mutex_lock(&rl->lock);
	if (!rl->started) {
		rl->started = true;
		pthread_cond_broadcast(&rl->cond);
	}
	pthread_mutex_unlock(&rl->lock);
	while (len > 0) {
		ssize_t w = send(rl->pair[1], p, len, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -EPIPE; /* the client went away */
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

static void *relay_main(void *ud)
{
	struct relay *rl = ud;
	struct kiln_http_call call = {
		.method = rl->method,
		.url = rl->url,
		.token = rl->token,
		.body = rl->body,
		.body_len = rl->body_len,
		.content_type = rl->body ? "application/json" : NULL,
		.sink = relay_sink,
		.sink_ud = rl,
		.abandon = relay_closing,
		.abandon_ud = rl,
	};
	int r;

	pthread_setname_np(pthread_self(), "kiln-relay"); /* for ps and the tests */
	r = kiln_http_client_do(rl->http, &call, &rl->res, &rl->err);
	close(rl->pair[1]);
	rl->pair[1] = -1;
	pthread_mutex_lock(&rl->lock);
	rl->r = r;
	rl->done = true;
	pthread_cond_broadcast(&rl->cond);
	pthread_mutex_unlock(&rl->lock);
	return NULL;
}

static void relay_free(void *ud)
{
	struct relay *rl = ud;

	if (!rl)
		return;
	atomic_store(&rl->closing, true);
	if (rl->pair[0] >= 0)
		close(rl->pair[0]);
	if (!rl->joined)
		pthread_join(rl->thread, NULL);
	kiln_http_result_release(&rl->res);
	kiln_error_free(rl->err);
	pthread_cond_destroy(&rl->cond);
	pthread_mutex_destroy(&rl->lock);
	free(rl->url);
	free(rl->body);
	free(rl);
}

static ssize_t relay_read(void *ud, uint64_t pos, char *buf, size_t max)
{
	struct relay *rl = ud;
	ssize_t n;
	bool failed;

	(void)pos;
	do
		n = recv(rl->pair[0], buf, max, 0);
	while (n < 0 && errno == EINTR);
	if (n != 0)
		return n < 0 ? -errno : n;
	/* The end: a call that broke off must not look like a whole body. */
	pthread_mutex_lock(&rl->lock);
	while (!rl->done)
		pthread_cond_wait(&rl->cond, &rl->lock);
	failed = rl->r < 0;
	pthread_mutex_unlock(&rl->lock);
	return failed ? -EIO : 0;
}

/* Start the call to url; NULL when no thread or socket pair could be had. */
static struct relay *relay_start(struct kiln_http_client *http, const char *url,
				 const char *token, const struct kiln_relay_request *req)
{
	struct relay *rl = xcalloc(1, sizeof(*rl));

	rl->http = http;
	rl->url = xasprintf("%s%s", url, req->path);
	rl->token = token;
	rl->method = !strcmp(req->method, "POST") ? "POST" : "GET";
	if (req->body) {
		rl->body = xmalloc(req->body_len + 1);
		memcpy(rl->body, req->body, req->body_len);
		rl->body_len = req->body_len;
	}
	rl->joined = true;
	atomic_init(&rl->closing, false);
	pthread_mutex_init(&rl->lock, NULL);
	pthread_cond_init(&rl->cond, NULL);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, rl->pair) < 0) {
		rl->pair[0] = -1;
		relay_free(rl);
		return NULL;
	}
	if (pthread_create(&rl->thread, NULL, relay_main, rl) != 0) {
		close(rl->pair[1]);
		relay_free(rl);
		return NULL;
	}
	rl->joined = false;
	return rl;
}

void kiln_relay(struct kiln_http_client *http, const char *url, const char *token,
		const struct kiln_relay_request *req, struct kiln_http_server_resp *resp)
{
	struct relay *rl = relay_start(http, url, token, req);
	bool started;

	if (!rl) {
		kiln_http_resp_error(resp, 503, "kilnd: cannot start a relay");
		return;
	}
	pthread_mutex_lock(&rl->lock);
	while (!rl->started && !rl->done)
		pthread_cond_wait(&rl->cond, &rl->lock);
	started = rl->started;
	assert_relay_state(rl);
	pthread_mutex_unlock(&rl->lock);
	if (started) {
		kiln_http_resp_stream(resp, 200, "application/octet-stream", UINT64_MAX, relay_read,
				      rl, relay_free);
		return;
	}
	/* Done without body bytes: an empty 2xx, the holder's error, or none. */
	pthread_join(rl->thread, NULL);
	rl->joined = true;
	assert_relay_state(rl);
	if (rl->r < 0)
		kiln_http_resp_error(resp, 502, "kilnd: the holder %s: %s", url,
				     kiln_error_msg(rl->err));
	else if (rl->res.status >= 200 && rl->res.status < 300)
		kiln_http_resp_bytes(resp, (unsigned)rl->res.status, "application/octet-stream",
				     xstrdup(""), 0);
	else if (rl->res.status < 400 || rl->res.status > 599)
		kiln_http_resp_error(resp, 502, "kilnd: the holder %s answered HTTP %ld", url,
				     rl->res.status);
	else {
		size_t len = rl->res.body ? rl->res.body_len : 0;
		char *body = rl->res.body ? TAKE_PTR(rl->res.body) : xstrdup("");

		kiln_http_resp_bytes(resp, (unsigned)rl->res.status,
				     rl->res.content_type && !strncmp(rl->res.content_type, "application/json", 16)
					     ? "application/json" : "text/plain", body, len);
	}
	relay_free(rl);
}
