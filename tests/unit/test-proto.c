/*
 * Unit tests for proto: a real libmicrohttpd server on 127.0.0.1 (port 0)
 * and the libcurl client, no mocks.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/strbuf.h"
#include "proto/http-client.h"
#include "proto/http-server.h"

#define TOKEN "s3cret-token"
#define SMALL_LIMIT 1024u

struct fixture {
	struct kiln_http_server *srv;
	struct kiln_http_client *cli;
	atomic_uint calls;
	atomic_uint sink_freed; /* streamed states freed */
	char tmpfile[64];
	int file_fd;
	char url[128];
};

/* ---- handlers ---- */

static int h_echo(const struct kiln_http_server_req *req,
		  struct kiln_http_server_resp *resp, void *ud)
{
	struct fixture *f = ud;
	const char *q = kiln_http_server_req_query(req, "x");
	const char *h = kiln_http_server_req_header(req, "X-Test");

	atomic_fetch_add(&f->calls, 1);
	kiln_http_resp_json(resp, 200,
			    json_pack("{s:O?, s:s?, s:s?, s:s}", "got", req->json,
				      "q", q, "h", h, "method", req->method));
	return 0;
}

static int h_item(const struct kiln_http_server_req *req,
		  struct kiln_http_server_resp *resp, void *ud)
{
	struct fixture *f = ud;

	atomic_fetch_add(&f->calls, 1);
	kiln_http_resp_json(resp, 200, json_pack("{s:s}", "rest", req->rest));
	return 0;
}

static int h_fail(const struct kiln_http_server_req *req,
		  struct kiln_http_server_resp *resp, void *ud)
{
	return -EIO;
}

static int h_file(const struct kiln_http_server_req *req,
		  struct kiln_http_server_resp *resp, void *ud)
{
	struct fixture *f = ud;
	int fd = open(f->tmpfile, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	/* Bytes 10..19 of the file, through sendfile. */
	kiln_http_resp_fd(resp, 206, "application/octet-stream", fd, 10, 10);
	kiln_http_resp_header(resp, "Content-Range", "bytes 10-19/100");
	return 0;
}

/* A stream of 5 lines "line N\n", chunked. */
struct lines {
	int next;
	char pending[32];
	size_t plen, poff;
};

static ssize_t lines_read(void *ud, uint64_t pos, char *buf, size_t max)
{
	struct lines *l = ud;
	size_t n;

	if (l->poff == l->plen) {
		if (l->next == 5)
			return 0;
		l->plen = (size_t)snprintf(l->pending, sizeof(l->pending),
					   "line %d\n", l->next++);
		l->poff = 0;
	}
	n = l->plen - l->poff < max ? l->plen - l->poff : max;
	memcpy(buf, l->pending + l->poff, n);
	l->poff += n;
	return (ssize_t)n;
}

static int h_stream(const struct kiln_http_server_req *req,
		    struct kiln_http_server_resp *resp, void *ud)
{
	kiln_http_resp_stream(resp, 200, "text/plain", UINT64_MAX, lines_read,
			      xcalloc(1, sizeof(struct lines)), free);
	return 0;
}

static int h_slow(const struct kiln_http_server_req *req,
		  struct kiln_http_server_resp *resp, void *ud)
{
	struct timespec ts = { 0, 300 * 1000000 };

	nanosleep(&ts, NULL);
	return h_item(req, resp, ud);
}

static int h_health(const struct kiln_http_server_req *req,
		    struct kiln_http_server_resp *resp, void *ud)
{
	kiln_http_resp_bytes(resp, 200, "text/plain", xstrdup("ok"), 2);
	return 0;
}

/* A streamed body: counted as it comes; "FAIL" in a chunk is a full disk. */
struct counted {
	uint64_t n;
};

static int count_sink(void *ud, const char *rest, void **state, const void *data, size_t n)
{
	struct counted *c = *state;

	if (!c)
		c = *state = xcalloc(1, sizeof(*c));
	if (memmem(data, n, "FAIL", 4))
		return -ENOSPC;
	c->n += n;
	return 0;
}

static void count_free(void *ud, void *state)
{
	struct fixture *f = ud;

	atomic_fetch_add(&f->sink_freed, 1);
	free(state);
}

static int h_counted(const struct kiln_http_server_req *req,
		     struct kiln_http_server_resp *resp, void *ud)
{
	struct counted *c = *req->stream;

	assert_null(req->json);
	assert_int_equal(req->body_len, 0); /* nothing kept in memory */
	kiln_http_resp_json(resp, 200, json_pack("{s:I}", "bytes", (json_int_t)(c ? c->n : 0)));
	return 0;
}

/* ---- fixture ---- */

static void add_routes(struct fixture *f)
{
	const struct kiln_http_route routes[] = {
		{ "POST", "/v1/echo", h_echo, f, SMALL_LIMIT, true, false, NULL, NULL, NULL, NULL },
		{ "GET", "/v1/items/*", h_item, f, 0, false, false, NULL, NULL, NULL, NULL },
		{ "GET", "/v1/items/special", h_echo, f, 0, false, false, NULL, NULL, NULL, NULL },
		{ "GET", "/v1/fail", h_fail, f, 0, false, false, NULL, NULL, NULL, NULL },
		{ "GET", "/v1/file", h_file, f, 0, false, false, NULL, NULL, NULL, NULL },
		{ "GET", "/v1/stream", h_stream, f, 0, false, false, NULL, NULL, NULL, NULL },
		{ "GET", "/healthz", h_health, f, 0, false, true, NULL, NULL, NULL, NULL },
		{ "GET", "/v1/slow/*", h_slow, f, 0, false, false, NULL, NULL, NULL, NULL },
		{ "PUT", "/v1/counted", h_counted, f, SMALL_LIMIT, false, false, NULL, NULL,
		  count_sink, count_free },
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(routes); i++)
		assert_int_equal(kiln_http_server_route(f->srv, &routes[i]), 0);
}

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	struct kiln_http_server_options o = {
		.listen = "127.0.0.1:0", .token = TOKEN, .stop_grace_ms = 300,
	};
	char data[100];
	int i;

	snprintf(f->tmpfile, sizeof(f->tmpfile), "/tmp/kiln-proto-XXXXXX");
	f->file_fd = mkstemp(f->tmpfile);
	if (f->file_fd < 0)
		return -1;
	for (i = 0; i < 100; i++)
		data[i] = (char)('0' + i % 10);
	if (write(f->file_fd, data, sizeof(data)) != sizeof(data))
		return -1;
	if (kiln_http_server_new(&o, &f->srv, NULL) < 0)
		return -1;
	add_routes(f);
	if (kiln_http_server_start(f->srv, NULL) < 0)
		return -1;
	snprintf(f->url, sizeof(f->url), "%s", kiln_http_server_url(f->srv));
	f->cli = kiln_http_client_new(NULL);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	kiln_http_server_free(f->srv);
	kiln_http_client_free(f->cli);
	close(f->file_fd);
	unlink(f->tmpfile);
	free(f);
	return 0;
}

static char *url(struct fixture *f, const char *path)
{
	return xasprintf("%s%s", f->url, path);
}

/* A JSON POST to /v1/echo; returns the status (0 on transport failure). */
static long echo(struct fixture *f, const char *token, json_t *body,
		 json_t **out, struct kiln_error **err)
{
	_cleanup_free_ char *u = url(f, "/v1/echo?x=qv");
	const char *hdrs[] = { "X-Test: hv", NULL };
	struct kiln_http_call c = {
		.method = "POST", .url = u, .token = token, .json = body,
		.headers = hdrs,
	};
	long status = 0;

	kiln_http_client_json(f->cli, &c, out, &status, err);
	return status;
}

/* Raw request: status of the answer, to check the server still serves. */
static long raw(struct fixture *f, const char *method, const char *path,
		const char *token, const char *ctype, const void *body,
		size_t len)
{
	_cleanup_free_ char *u = url(f, path);
	struct kiln_http_call c = {
		.method = method, .url = u, .token = token, .body = body,
		.body_len = len, .content_type = ctype, .limit = 1 << 20,
		.timeout_ms = 10000,
	};
	struct kiln_http_result res;
	long status;

	if (kiln_http_client_do(f->cli, &c, &res, NULL) < 0)
		return 0;
	status = res.status;
	kiln_http_result_release(&res);
	return status;
}

static void assert_serves(struct fixture *f)
{
	json_t *in = json_pack("{s:i}", "n", 1), *out = NULL;

	assert_int_equal(echo(f, TOKEN, in, &out, NULL), 200);
	assert_non_null(out);
	json_decref(in);
	json_decref(out);
}

/* ---- tests ---- */

static void test_json_round_trip(void **state)
{
	struct fixture *f = *state;
	json_t *in = json_pack("{s:s, s:[i,i]}", "a", "b", "l", 1, 2);
	json_t *out = NULL;

	assert_int_equal(echo(f, TOKEN, in, &out, NULL), 200);
	assert_true(json_equal(json_object_get(out, "got"), in));
	assert_string_equal(json_string_value(json_object_get(out, "q")), "qv");
	assert_string_equal(json_string_value(json_object_get(out, "h")), "hv");
	assert_int_equal(atomic_load(&f->calls), 1);
	json_decref(in);
	json_decref(out);
}

static void test_prefix_and_exact(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *u1 = url(f, "/v1/items/abc/def");
	_cleanup_free_ char *u2 = url(f, "/v1/items/special");
	struct kiln_http_call c = { .method = "GET", .url = u1, .token = TOKEN };
	json_t *out = NULL;

	assert_int_equal(kiln_http_client_json(f->cli, &c, &out, NULL, NULL), 0);
	assert_string_equal(json_string_value(json_object_get(out, "rest")),
			    "abc/def");
	json_decref(out);
	/* The exact route wins over the prefix. */
	c.url = u2;
	assert_int_equal(kiln_http_client_json(f->cli, &c, &out, NULL, NULL), 0);
	assert_string_equal(json_string_value(json_object_get(out, "method")),
			    "GET");
	json_decref(out);
	/* A prefix route needs something after the prefix. */
	assert_int_equal(raw(f, "GET", "/v1/items/", TOKEN, NULL, NULL, 0), 404);
	assert_int_equal(raw(f, "HEAD", "/v1/items/x", TOKEN, NULL, NULL, 0), 200);
}

static void test_unauthorized(void **state)
{
	struct fixture *f = *state;
	json_t *in = json_pack("{}");
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_error_ struct kiln_error *err2 = NULL;

	assert_int_equal(echo(f, NULL, in, NULL, &err), 401);
	assert_non_null(err);
	assert_int_equal(err->code, -EACCES);
	assert_non_null(strstr(err->msg, "HTTP 401"));
	assert_non_null(strstr(err->msg, "bearer token"));
	assert_non_null(strstr(err->msg, f->url));
	assert_int_equal(echo(f, "wrong", in, NULL, &err2), 401);
	assert_int_equal(echo(f, TOKEN "x", in, NULL, NULL), 401);
	assert_int_equal(echo(f, "s3cret-toke", in, NULL, NULL), 401);
	assert_int_equal(raw(f, "GET", "/v1/items/a", NULL, NULL, NULL, 0), 401);
	/* The handler never ran. */
	assert_int_equal(atomic_load(&f->calls), 0);
	/* Public routes need no token. */
	assert_int_equal(raw(f, "GET", "/healthz", NULL, NULL, NULL, 0), 200);
	assert_serves(f);
	json_decref(in);
}

static void test_too_large(void **state)
{
	struct fixture *f = *state;
	size_t n = 64 << 10;
	_cleanup_free_ char *big = xmalloc(n);
	const char *chunked[] = { "Transfer-Encoding: chunked", NULL };
	_cleanup_free_ char *u = url(f, "/v1/echo");
	struct kiln_http_call c = {
		.method = "POST", .url = u, .token = TOKEN, .body = big,
		.body_len = n, .content_type = "application/json",
		.headers = chunked, .timeout_ms = 10000,
	};
	struct kiln_http_result res;

	memset(big, ' ', n);
	assert_int_equal(raw(f, "POST", "/v1/echo", TOKEN, "application/json",
			     big, n), 413);
	assert_serves(f);
	/* Just over the limit, small enough to be sent without Expect. */
	assert_int_equal(raw(f, "POST", "/v1/echo", TOKEN, "application/json",
			     big, SMALL_LIMIT + 1), 413);
	assert_serves(f);
	/* A route without a body refuses one. */
	assert_int_equal(raw(f, "GET", "/v1/fail", TOKEN, NULL, "x", 1), 413);
	/* Chunked: no Content-Length, the limit trips while reading. */
	assert_int_equal(kiln_http_client_do(f->cli, &c, &res, NULL), 0);
	assert_int_equal(res.status, 413);
	kiln_http_result_release(&res);
	assert_serves(f);
	assert_int_equal(atomic_load(&f->calls), 3);
}

static void test_bad_json_and_routes(void **state)
{
	struct fixture *f = *state;
	const char *bad = "{\"a\": ";

	assert_int_equal(raw(f, "POST", "/v1/echo", TOKEN, "application/json",
			     bad, strlen(bad)), 400);
	assert_serves(f);
	assert_int_equal(raw(f, "POST", "/v1/echo", TOKEN, "application/json",
			     "", 0), 400);
	assert_int_equal(raw(f, "POST", "/v1/echo", TOKEN, "application/json",
			     "{\"a\":1,\"a\":2}", 13), 400);
	assert_serves(f);
	assert_int_equal(raw(f, "GET", "/nope", TOKEN, NULL, NULL, 0), 404);
	assert_serves(f);
	assert_int_equal(raw(f, "DELETE", "/v1/echo", TOKEN, NULL, NULL, 0), 405);
	assert_int_equal(raw(f, "GET", "/v1/fail", TOKEN, NULL, NULL, 0), 500);
	assert_serves(f);
	assert_int_equal(atomic_load(&f->calls), 4);
}

static int sink_buf(void *ud, const void *data, size_t len)
{
	return kiln_strbuf_add(ud, data, len);
}

static void test_fd_and_stream(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *u1 = url(f, "/v1/file");
	_cleanup_free_ char *u2 = url(f, "/v1/stream");
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(1 << 20);
	struct kiln_http_call c = {
		.method = "GET", .url = u1, .token = TOKEN, .sink = sink_buf,
		.sink_ud = &sb,
	};
	struct kiln_http_result res;

	assert_int_equal(kiln_http_client_do(f->cli, &c, &res, NULL), 0);
	assert_int_equal(res.status, 206);
	assert_string_equal(kiln_strbuf_str(&sb), "0123456789");
	assert_string_equal(res.content_range, "bytes 10-19/100");
	kiln_http_result_release(&res);
	kiln_strbuf_reset(&sb);
	c.url = u2;
	assert_int_equal(kiln_http_client_do(f->cli, &c, &res, NULL), 0);
	assert_int_equal(res.status, 200);
	assert_string_equal(kiln_strbuf_str(&sb),
			    "line 0\nline 1\nline 2\nline 3\nline 4\n");
	kiln_http_result_release(&res);
}

static void test_response_limit(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *u = url(f, "/v1/stream");
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_http_call c = {
		.method = "GET", .url = u, .token = TOKEN, .limit = 10,
	};
	struct kiln_http_result res;

	assert_int_equal(kiln_http_client_do(f->cli, &c, &res, &err), -E2BIG);
	assert_non_null(strstr(err->msg, "larger than 10 bytes"));
	assert_serves(f);
}

static void *hammer(void *ud)
{
	struct fixture *f = ud;
	int i, ok = 0;

	for (i = 0; i < 50; i++) {
		json_t *in = json_pack("{s:i}", "i", i), *out = NULL;

		if (echo(f, TOKEN, in, &out, NULL) == 200 &&
		    json_integer_value(json_object_get(
			    json_object_get(out, "got"), "i")) == i)
			ok++;
		json_decref(in);
		json_decref(out);
	}
	return (void *)(intptr_t)ok;
}

static void test_concurrent(void **state)
{
	struct fixture *f = *state;
	pthread_t t[8];
	void *ret;
	int i, ok = 0;

	for (i = 0; i < 8; i++)
		assert_int_equal(pthread_create(&t[i], NULL, hammer, f), 0);
	for (i = 0; i < 8; i++) {
		pthread_join(t[i], &ret);
		ok += (int)(intptr_t)ret;
	}
	assert_int_equal(ok, 400);
	assert_int_equal(atomic_load(&f->calls), 400);
}

static void test_garbage_request(void **state)
{
	struct fixture *f = *state;
	struct sockaddr_in a = { .sin_family = AF_INET };
	const char *junk = "NOT HTTP AT ALL\r\n\r\n";
	char buf[256] = "";
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	ssize_t n;

	a.sin_port = htons(kiln_http_server_port(f->srv));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(write(fd, junk, strlen(junk)), (ssize_t)strlen(junk));
	n = read(fd, buf, sizeof(buf) - 1);
	assert_true(n > 0);
	assert_non_null(strstr(buf, " 400 ")); /* MHD's own answer */
	close(fd);
	assert_serves(f);
}

static int open_conn(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	a.sin_port = htons(port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	return fd;
}

static void test_stop_idle(void **state)
{
	struct fixture *f = *state;
	_cleanup_error_ struct kiln_error *err = NULL;
	uint64_t t0 = kiln_now_mono_ns();

	assert_serves(f);
	kiln_http_server_stop(f->srv);
	assert_true(kiln_now_mono_ns() - t0 < 2000000000ull);
	assert_true(kiln_http_server_stopping(f->srv));
	/* Nothing listens any more: the client fails fast. */
	assert_int_equal(echo(f, TOKEN, NULL, NULL, &err), 0);
	assert_int_equal(err->code, -ECONNREFUSED);
	kiln_http_server_stop(f->srv); /* idempotent */
}

static void test_stop_open_connection(void **state)
{
	struct fixture *f = *state;
	const char *partial = "POST /v1/echo HTTP/1.1\r\nHost: x\r\n";
	int idle = open_conn(kiln_http_server_port(f->srv));
	int half = open_conn(kiln_http_server_port(f->srv));
	uint64_t t0;
	char c;

	/* One idle keep-alive-like connection, one half-sent request. */
	assert_int_equal(write(half, partial, strlen(partial)),
			 (ssize_t)strlen(partial));
	assert_serves(f);
	t0 = kiln_now_mono_ns();
	kiln_http_server_stop(f->srv);
	assert_true(kiln_now_mono_ns() - t0 < 3000000000ull);
	/* Both were closed by the server. */
	assert_true(read(idle, &c, 1) <= 0);
	assert_true(read(half, &c, 1) <= 0);
	close(idle);
	close(half);
}

static void *slow_request(void *ud)
{
	struct fixture *f = ud;

	return (void *)(intptr_t)raw(f, "GET", "/v1/slow/x", TOKEN, NULL, NULL, 0);
}

static void test_stop_graceful(void **state)
{
	struct fixture *f = *state;
	struct timespec ts = { 0, 100 * 1000000 };
	pthread_t t;
	void *status;

	/* A request in progress when stop begins still gets its answer. */
	assert_int_equal(pthread_create(&t, NULL, slow_request, f), 0);
	nanosleep(&ts, NULL);
	kiln_http_server_stop(f->srv);
	pthread_join(t, &status);
	assert_int_equal((long)(intptr_t)status, 200);
	assert_int_equal(atomic_load(&f->calls), 1);
}

static void test_listen_errors(void **state)
{
	struct fixture *f = *state;
	_cleanup_error_ struct kiln_error *err = NULL, *err2 = NULL;
	struct kiln_http_server *s = NULL;
	_cleanup_free_ char *taken = xasprintf("127.0.0.1:%u",
					       kiln_http_server_port(f->srv));
	struct kiln_http_server_options o = { .listen = "nohost:80" };

	assert_int_equal(kiln_http_server_new(&o, &s, NULL), 0);
	assert_int_equal(kiln_http_server_start(s, &err), -EINVAL);
	assert_non_null(strstr(err->msg, "nohost:80"));
	kiln_http_server_free(s);
	o.listen = taken;
	assert_int_equal(kiln_http_server_new(&o, &s, NULL), 0);
	assert_int_equal(kiln_http_server_start(s, &err2), -EADDRNOTAVAIL);
	assert_non_null(strstr(err2->msg, taken));
	kiln_http_server_free(s);
	/* Routes are fixed once started. */
	assert_int_equal(kiln_http_server_route(f->srv, &(struct kiln_http_route){
		"GET", "/x", h_fail, NULL, 0, false, false, NULL, NULL, NULL, NULL }), -EBUSY);
}

static void test_ipv6(void **state)
{
	struct kiln_http_server_options o = { .listen = "[::1]:0" };
	struct kiln_http_server *s = NULL;
	struct kiln_http_client *c = kiln_http_client_new(NULL);
	struct kiln_http_route r = { "GET", "/healthz", h_health, NULL, 0,
				     false, false, NULL, NULL, NULL, NULL };
	_cleanup_free_ char *u = NULL;
	struct kiln_http_call call = { .method = "GET", .limit = 16 };
	struct kiln_http_result res;

	assert_int_equal(kiln_http_server_new(&o, &s, NULL), 0);
	assert_int_equal(kiln_http_server_route(s, &r), 0);
	if (kiln_http_server_start(s, NULL) < 0) {
		kiln_http_server_free(s);
		kiln_http_client_free(c);
		skip(); /* no IPv6 loopback here */
	}
	assert_true(kiln_http_server_port(s) > 0);
	u = xasprintf("%s/healthz", kiln_http_server_url(s));
	assert_non_null(strstr(u, "http://[::1]:"));
	call.url = u;
	assert_int_equal(kiln_http_client_do(c, &call, &res, NULL), 0);
	assert_int_equal(res.status, 200);
	assert_memory_equal(res.body, "ok", 2);
	kiln_http_result_release(&res);
	kiln_http_server_free(s);
	kiln_http_client_free(c);
}

static void test_token_eq(void **state)
{
	assert_true(kiln_http_token_eq("abc", "abc"));
	assert_false(kiln_http_token_eq("abd", "abc"));
	assert_false(kiln_http_token_eq("ab", "abc"));
	assert_false(kiln_http_token_eq("abcd", "abc"));
	assert_false(kiln_http_token_eq("", "abc"));
	assert_true(kiln_http_token_eq("", ""));
}

/* curl's status for a PUT of a file of n bytes of c to /v1/counted, maybe chunked. */
static long put_counted(struct fixture *f, size_t n, char c, bool chunked, char *body,
			size_t body_len)
{
	char path[64] = "/tmp/kiln-proto-body-XXXXXX";
	int fd = mkstemp(path);
	_cleanup_free_ char *buf = xmalloc(n + 1), *cmd = NULL;
	FILE *p;
	long status = 0;

	assert_true(fd >= 0);
	memset(buf, c, n);
	if (n >= 4 && c == 'F')
		memcpy(buf + n / 2, "FAIL", 4);
	assert_int_equal(kiln_write_full(fd, buf, n), 0);
	close(fd);
	cmd = xasprintf("curl -s -X PUT -H 'Authorization: Bearer %s' %s --data-binary @%s "
			"-w '\\n%%{http_code}' %s/v1/counted",
			TOKEN, chunked ? "-H 'Transfer-Encoding: chunked'" : "", path, f->url);
	p = popen(cmd, "r");
	assert_non_null(p);
	body[0] = '\0';
	if (!fgets(body, (int)body_len, p))
		body[0] = '\0';
	assert_int_equal(fscanf(p, "%ld", &status), 1);
	pclose(p);
	unlink(path);
	return status;
}

/*
 * A streamed route: the handler gets what the sink made and no body; a
 * chunked body over the limit is 413; a sink's -ENOSPC is 507 and the
 * handler never runs; the sink's state is freed every time.
 */
static void test_streamed_body(void **state)
{
	struct fixture *f = *state;
	char body[256];

	assert_int_equal(put_counted(f, 1000, 'a', true, body, sizeof(body)), 200);
	assert_non_null(strstr(body, "\"bytes\":1000"));
	assert_int_equal(put_counted(f, 1000, 'a', false, body, sizeof(body)), 200);
	assert_non_null(strstr(body, "\"bytes\":1000"));
	assert_int_equal(put_counted(f, 0, 'a', false, body, sizeof(body)), 200);
	assert_non_null(strstr(body, "\"bytes\":0"));
	assert_int_equal(put_counted(f, 3 * SMALL_LIMIT, 'a', true, body, sizeof(body)), 413);
	assert_int_equal(put_counted(f, 3 * SMALL_LIMIT, 'a', false, body, sizeof(body)), 413);
	assert_int_equal(put_counted(f, 100, 'F', true, body, sizeof(body)), 507);
	assert_non_null(strstr(body, "cannot take the body"));
	/*
	 * Every state the sink made is freed (1000 chunked, 1000, FAIL; the
	 * bodies over the limit never reached it), once each request is
	 * done, which may be just after its answer went out.
	 */
	for (int i = 0; i < 200 && atomic_load(&f->sink_freed) < 3; i++)
		usleep(10000);
	usleep(50000);
	assert_int_equal(atomic_load(&f->sink_freed), 3);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_json_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_prefix_and_exact, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unauthorized, setup, teardown),
		cmocka_unit_test_setup_teardown(test_too_large, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_json_and_routes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fd_and_stream, setup, teardown),
		cmocka_unit_test_setup_teardown(test_response_limit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_garbage_request, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_idle, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_open_connection, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_graceful, setup, teardown),
		cmocka_unit_test_setup_teardown(test_listen_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_streamed_body, setup, teardown),
		cmocka_unit_test(test_ipv6),
		cmocka_unit_test(test_token_eq),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
