/*
 * kilnd's ssh agent relay (kilnd/ssh-relay.h) over a real HTTP server on
 * 127.0.0.1: a request from a worker's session answered by the client,
 * and everything that must be refused.
 */
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "basic/alloc.h"
#include "basic/macro.h"
#include "kilnd/ssh-relay.h"
#include "proto/http-client.h"
#include "proto/http-server.h"

#define WTOK "worker-token"
#define CTOK "client-token"
#define LIST "Cw=="           /* SSH_AGENTC_REQUEST_IDENTITIES */
#define NO_KEYS "DAAAAAA="    /* SSH_AGENT_IDENTITIES_ANSWER, 0 keys */

static struct {
	struct kiln_ssh_relay *relay;
	struct kiln_http_server *http;
	struct kiln_http_client *cli;
	char *ask_url, *xchg_url;
} S;

static int setup(void **st)
{
	struct kiln_http_server_options o = { .listen = "127.0.0.1:0", .stop_grace_ms = 500 };

	(void)st;
	S.relay = kiln_ssh_relay_new();
	assert_int_equal(kiln_http_server_new(&o, &S.http, NULL), 0);
	assert_int_equal(kiln_ssh_relay_routes(S.relay, S.http, WTOK, CTOK), 0);
	assert_int_equal(kiln_http_server_start(S.http, NULL), 0);
	S.cli = kiln_http_client_new(NULL);
	S.ask_url = xasprintf("%s/v1/ssh", kiln_http_server_url(S.http));
	S.xchg_url = xasprintf("%s/v1/builds/b1/ssh", kiln_http_server_url(S.http));
	return 0;
}

static int teardown(void **st)
{
	(void)st;
	kiln_ssh_relay_shutdown(S.relay);
	kiln_http_server_free(S.http);
	kiln_ssh_relay_free(S.relay);
	kiln_http_client_free(S.cli);
	free(S.ask_url);
	free(S.xchg_url);
	return 0;
}

/* POST body to url with token: the status, *out the JSON answer (2xx). */
static long post(const char *url, const char *token, json_t *body, json_t **out)
{
	struct kiln_error *err = NULL;
	struct kiln_http_call call = { .method = "POST", .url = url, .token = token,
				       .json = body, .timeout_ms = 40000 };
	json_t *o = NULL;
	long status = 0;

	(void)kiln_http_client_json(S.cli, &call, &o, &status, &err);
	/* R6: an ask's error (its URL) shows no session */
	if (err && url == S.ask_url && strstr(kiln_error_msg(err), "/v1/ssh/"))
		fail_msg("a session in the URL: %s", kiln_error_msg(err));
	kiln_error_free(err);
	json_decref(body);
	if (out)
		*out = o;
	else
		json_decref(o);
	return status;
}

struct asker {
	const char *session, *id;
	pthread_t thread;
	long status;
	json_t *answer;
	uint64_t ns; /* how long it waited */
};

static void *ask_main(void *ud)
{
	struct asker *a = ud;
	uint64_t t0 = kiln_now_mono_ns();

	a->status = post(S.ask_url, WTOK,
			 json_pack("{ssssss}", "session", a->session, "id", a->id, "data", LIST),
			 &a->answer);
	a->ns = kiln_now_mono_ns() - t0;
	return NULL;
}

static void ask_start(struct asker *a)
{
	assert_int_equal(pthread_create(&a->thread, NULL, ask_main, a), 0);
}

static void ask_join(struct asker *a)
{
	pthread_join(a->thread, NULL);
}

/* Exchanges until one hands out a request: its "n" (the others are empty). */
static json_int_t take_request(const char *token)
{
	int i;

	for (i = 0; i < 20; i++) {
		json_t *o = NULL, *q;
		json_int_t n;

		assert_int_equal(post(S.xchg_url, CTOK,
				      json_pack("{sss[]}", "token", token, "answers"), &o),
				 200);
		q = json_array_get(json_object_get(o, "requests"), 0);
		if (q) {
			assert_string_equal(json_string_value(json_object_get(q, "data")), LIST);
			n = json_integer_value(json_object_get(q, "n"));
			json_decref(o);
			return n;
		}
		json_decref(o);
	}
	fail_msg("no request reached the client");
	return -1;
}

static void test_round_trip(void **st)
{
	const char *ids[] = { "default", "gh" }, *mounts[] = { "default", "undeclared" };
	_cleanup_free_ char *token = kiln_ssh_relay_add_build(S.relay, "b1", ids, 2);
	_cleanup_free_ char *session = NULL;
	struct asker a = { .id = "default" }, gh = { .id = "gh" }, und = { .id = "undeclared" };
	json_t *o = NULL;
	json_int_t n;

	(void)st;
	assert_non_null(token);
	/* the op mounts "default" and an id the client did not declare */
	assert_int_equal(kiln_ssh_relay_open(S.relay, "b1", mounts, 2, &session, NULL), 0);
	a.session = gh.session = und.session = session;
	ask_start(&a);
	n = take_request(token);
	assert_int_equal(post(S.xchg_url, CTOK,
			      json_pack("{sss[{sIss}]}", "token", token, "answers", "n", n, "data",
					NO_KEYS),
			      &o),
			 200);
	json_decref(o);
	ask_join(&a);
	assert_int_equal(a.status, 200);
	assert_string_equal(json_string_value(json_object_get(a.answer, "data")), NO_KEYS);
	json_decref(a.answer);

	/* R5: declared by the client but not mounted by this op: refused */
	ask_start(&gh);
	ask_join(&gh);
	assert_int_equal(gh.status, 404);
	/* never declared: refused */
	ask_start(&und);
	ask_join(&und);
	assert_int_equal(und.status, 404);

	/* the wrong ssh_token, the wrong bearer token: refused */
	assert_int_equal(post(S.xchg_url, CTOK,
			      json_pack("{sss[]}", "token", "0123456789abcdef0123456789abcdef",
					"answers"),
			      NULL),
			 404);
	assert_int_equal(post(S.xchg_url, WTOK, json_pack("{sss[]}", "token", token, "answers"),
			      NULL),
			 401);
	/* a worker's ask with the client's bearer token */
	assert_int_equal(post(S.ask_url, CTOK,
			      json_pack("{ssssss}", "session", session, "id", "default", "data", LIST),
			      NULL),
			 401);
	/* R6: no route with the session in the URL */
	{
		_cleanup_free_ char *old = xasprintf("%s/%s", S.ask_url, session);

		assert_int_equal(post(old, WTOK, json_pack("{ssss}", "id", "default", "data", LIST),
				      NULL),
				 404);
	}

	/* a closed session, an unknown one */
	kiln_ssh_relay_close(S.relay, session);
	a = (struct asker){ .session = session, .id = "default" };
	ask_start(&a);
	ask_join(&a);
	assert_int_equal(a.status, 404);
	a = (struct asker){ .session = "00000000000000000000000000000000", .id = "default" };
	ask_start(&a);
	ask_join(&a);
	assert_int_equal(a.status, 404);
	kiln_ssh_relay_end_build(S.relay, "b1");
}

/* R2: one client exchange per build at a time. */
static void *exchange_main(void *ud)
{
	const char *token = ud;

	assert_int_equal(post(S.xchg_url, CTOK, json_pack("{sss[]}", "token", token, "answers"),
			      NULL),
			 200);
	return NULL;
}

static void test_one_exchange(void **st)
{
	const char *ids[] = { "default" };
	_cleanup_free_ char *token = kiln_ssh_relay_add_build(S.relay, "b1", ids, 1);
	pthread_t t;
	uint64_t t0 = kiln_now_mono_ns();

	(void)st;
	assert_int_equal(pthread_create(&t, NULL, exchange_main, token), 0);
	usleep(300000); /* it waits (1 s) */
	assert_int_equal(post(S.xchg_url, CTOK, json_pack("{sss[]}", "token", token, "answers"),
			      NULL),
			 409);
	pthread_join(t, NULL);
	/* the wait is short: it holds one of kilnd's connections */
	assert_true(kiln_now_mono_ns() - t0 < 3000000000ull);
	kiln_ssh_relay_end_build(S.relay, "b1");
}

/* B3: no session for an ended build nor past the table's size; never silent. */
static void test_open_fails(void **st)
{
	const char *ids[] = { "default" };
	_cleanup_free_ char *token = kiln_ssh_relay_add_build(S.relay, "b2", ids, 1);
	char **sessions = xcalloc(1025, sizeof(char *));
	struct kiln_error *err = NULL;
	char *s = NULL;
	size_t i;

	(void)st;
	for (i = 0; i < 1024; i++)
		assert_int_equal(kiln_ssh_relay_open(S.relay, "b2", ids, 1, &sessions[i], NULL), 0);
	assert_int_equal(kiln_ssh_relay_open(S.relay, "b2", ids, 1, &s, &err), -EBUSY);
	assert_null(s);
	assert_string_equal(kiln_error_msg(err), "kilnd: ssh relay full (1024 sessions)");
	kiln_error_free(TAKE_PTR(err));
	for (i = 0; i < 1024; i++) {
		kiln_ssh_relay_close(S.relay, sessions[i]);
		free(sessions[i]);
	}
	free(sessions);
	kiln_ssh_relay_end_build(S.relay, "b2");
	assert_int_equal(kiln_ssh_relay_open(S.relay, "b2", ids, 1, &s, &err), -ENOENT);
	assert_non_null(strstr(kiln_error_msg(err), "build b2"));
	kiln_error_free(err);
}

/* R3 (kilnd): shutdown ends a waiting ask at once, before the server stops. */
static void test_shutdown_wakes(void **st)
{
	const char *ids[] = { "default" };
	_cleanup_free_ char *token = kiln_ssh_relay_add_build(S.relay, "b3", ids, 1);
	_cleanup_free_ char *session = NULL;
	struct asker a = { .id = "default" };

	(void)st;
	assert_int_equal(kiln_ssh_relay_open(S.relay, "b3", ids, 1, &session, NULL), 0);
	a.session = session;
	ask_start(&a);
	usleep(300000);
	kiln_ssh_relay_shutdown(S.relay);
	ask_join(&a);
	assert_int_equal(a.status, 504);
	assert_true(a.ns < 5000000000ull);
	a = (struct asker){ .session = session, .id = "default" };
	ask_start(&a);
	ask_join(&a);
	assert_int_equal(a.status, 503); /* stopping */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_one_exchange),
		cmocka_unit_test(test_open_fails),
		cmocka_unit_test(test_shutdown_wakes),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
