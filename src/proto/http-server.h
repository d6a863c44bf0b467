/*
 * The HTTP/1.1 server of kilnd and kiln-worker (libmicrohttpd): a route
 * table, bearer-token authentication, request bodies accumulated under a
 * per-route limit, JSON errors, and responses from JSON, bytes, a file
 * range (sendfile) or a streaming callback (docs/api.md).
 *
 * Threads: one per connection (bounded by max_connections). Handlers run
 * on those threads, so they may block briefly, and they must be
 * thread-safe. Routes are added before kiln_http_server_start() and never
 * change afterwards, so matching takes no lock.
 *
 * What the server guarantees before a handler runs: the route matched, the
 * token (when the server has one) was presented and is right (else 401),
 * the body fits the route's limit (else 413, decided from Content-Length
 * before the body is read when the client sends one), and for JSON routes
 * the body parsed (else 400). A handler therefore never sees an
 * unauthenticated or oversized request.
 *
 * TLS is not implemented: the listener speaks plain HTTP. Deployments
 * across untrusted networks put it behind a TLS terminator until the
 * cert/key options land (libmicrohttpd's MHD_USE_TLS with
 * MHD_OPTION_HTTPS_MEM_KEY/CERT is the intended hook).
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "basic/error.h"
#include "basic/macro.h"
#include "proto/tls.h"

/* Default limits. */
#define KILN_HTTP_SERVER_MAX_CONNECTIONS 64u
#define KILN_HTTP_SERVER_IDLE_TIMEOUT_S 60u
#define KILN_HTTP_SERVER_STOP_GRACE_MS 5000u
/* Longest "Authorization" token accepted. */
#define KILN_HTTP_TOKEN_MAX 4096u
/* Most extra response headers one handler may set. */
#define KILN_HTTP_MAX_RESP_HEADERS 8u

struct kiln_http_server;

struct kiln_http_server_options {
	/*
	 * "ADDR:PORT" with a numeric IPv4 address, "[V6ADDR]:PORT", or
	 * "localhost:PORT". Port 0 picks a free port (kiln_http_server_port).
	 */
	const char *listen;
	/* Bearer token every request must carry; NULL or "" = no auth. */
	const char *token;
	unsigned max_connections; /* 0: KILN_HTTP_SERVER_MAX_CONNECTIONS */
	unsigned idle_timeout_s;  /* 0: KILN_HTTP_SERVER_IDLE_TIMEOUT_S */
	unsigned stop_grace_ms;   /* 0: KILN_HTTP_SERVER_STOP_GRACE_MS */
	/*
	 * Serve HTTPS when tls->cert is set (cert, key and client_ca are
	 * used; the files are read at start, and an error names the one at
	 * fault). With client_ca, every request must come with a client
	 * certificate signed by it, or gets 401. NULL: plain HTTP.
	 */
	const struct kiln_tls *tls;
};

/* What a handler sees of one request. Valid only during the call. */
struct kiln_http_server_req {
	const char *method; /* "GET", "POST", ... */
	const char *path;   /* decoded URL path, without the query */
	/* For a prefix route, the part of path after the prefix; else "". */
	const char *rest;
	const char *body;   /* NUL-terminated; "" when there was none */
	size_t body_len;
	json_t *json;       /* JSON routes: the parsed body (borrowed) */
	/*
	 * Streamed routes (route.sink): the state the sink made (NULL when
	 * the body was empty). A handler that takes it sets *stream to NULL;
	 * whatever is left goes to the route's sink_free.
	 */
	void **stream;
	void *conn;         /* private */
};

/* Value of a request header (case-insensitive name) or NULL. */
const char *kiln_http_server_req_header(const struct kiln_http_server_req *r,
					const char *name);
/* Value of a query argument ("?a=b") or NULL; "" for a bare "?a". */
const char *kiln_http_server_req_query(const struct kiln_http_server_req *r,
				       const char *key);

/*
 * A streaming body: fill buf (at most max bytes) with the bytes at pos and
 * return how many (> 0), 0 at the end, or a negative errno to abort the
 * connection. It may block, but briefly: a stopping server waits for it.
 */
typedef ssize_t (*kiln_http_stream_fn)(void *ud, uint64_t pos, char *buf,
				       size_t max);

enum kiln_http_body_kind {
	KILN_HTTP_BODY_NONE = 0,
	KILN_HTTP_BODY_JSON,
	KILN_HTTP_BODY_BYTES,
	KILN_HTTP_BODY_FD,
	KILN_HTTP_BODY_STREAM,
};

/*
 * The response a handler fills (through the setters below, which take
 * ownership of what they are given). Its zero value is "no response".
 */
struct kiln_http_server_resp {
	unsigned status;
	enum kiln_http_body_kind kind;
	json_t *json;
	char *data;
	size_t len;
	int fd;
	uint64_t offset, length;
	kiln_http_stream_fn stream;
	void *stream_ud;
	void (*stream_free)(void *ud);
	uint64_t stream_size; /* UINT64_MAX: unknown (chunked) */
	const char *content_type; /* static string or NULL */
	char *headers[KILN_HTTP_MAX_RESP_HEADERS][2];
	size_t n_headers;
};

/* Respond with JSON (takes the reference to json). */
void kiln_http_resp_json(struct kiln_http_server_resp *r, unsigned status,
			 json_t *json);
/* Respond with {"error": "<message>"}. */
void kiln_http_resp_error(struct kiln_http_server_resp *r, unsigned status,
			  const char *fmt, ...) _printf_(3, 4);
/* Respond with bytes (takes data, which must come from malloc). */
void kiln_http_resp_bytes(struct kiln_http_server_resp *r, unsigned status,
			  const char *content_type, char *data, size_t len);
/*
 * Respond with length bytes of fd from offset, sent with sendfile. Takes
 * fd (closed when the response is done).
 */
void kiln_http_resp_fd(struct kiln_http_server_resp *r, unsigned status,
		       const char *content_type, int fd, uint64_t offset,
		       uint64_t length);
/*
 * Respond with a stream of size bytes (UINT64_MAX: unknown, sent chunked).
 * free_fn (may be NULL) releases ud when the response is done, whether or
 * not it was sent.
 */
void kiln_http_resp_stream(struct kiln_http_server_resp *r, unsigned status,
			   const char *content_type, uint64_t size,
			   kiln_http_stream_fn fn, void *ud,
			   void (*free_fn)(void *ud));
/* Add a response header (copied). Past KILN_HTTP_MAX_RESP_HEADERS: -E2BIG. */
int kiln_http_resp_header(struct kiln_http_server_resp *r, const char *name,
			  const char *value);
/* Free what the response owns; it is zeroed (status 0) afterwards. */
void kiln_http_server_resp_release(struct kiln_http_server_resp *r);

/*
 * A handler fills resp and returns 0. A negative return without a response
 * becomes a 500 {"error": "internal error"}; with one, the response is
 * sent as set.
 */
typedef int (*kiln_http_handler_fn)(const struct kiln_http_server_req *req,
				    struct kiln_http_server_resp *resp,
				    void *ud);

struct kiln_http_route {
	const char *method; /* "GET", "POST", ...; a GET route answers HEAD */
	/*
	 * Exact path ("/v1/blobs/missing"), or a prefix: a path ending in
	 * '/' then '*' ("/v1/blobs/" "*": req->rest is what follows
	 * "/v1/blobs/", never empty). Exact routes win over prefix routes,
	 * longer prefixes over shorter ones.
	 */
	const char *path;
	kiln_http_handler_fn fn;
	void *ud;
	size_t body_limit; /* largest body accepted; 0 = no body (413) */
	bool json;         /* parse the body as JSON: malformed -> 400 */
	bool public;       /* no token required (health checks) */
	/*
	 * This route's bearer token (borrowed; must outlive the server), for
	 * servers with several roles; NULL: the server's token.
	 */
	const char *token;
	/* A second token the route also accepts (a shared route), or NULL. */
	const char *alt_token;
	/*
	 * Streamed body (NULL: kept in memory, req.body): each chunk goes to
	 * sink as it arrives, nothing is kept (body_limit still bounds the
	 * total). *state starts NULL and is the sink's; rest is req.rest. A
	 * negative return passes no more of the body to the sink and answers
	 * 500 (507 for -ENOSPC) without calling the handler, once the body
	 * has ended; when more than 1 MiB of it is still to come, the
	 * connection is closed instead (libmicrohttpd 0.9 cannot answer
	 * before a body has ended). sink_free(ud, state) runs when the
	 * request ends, handled or not, for a state still set.
	 */
	int (*sink)(void *ud, const char *rest, void **state, const void *data, size_t n);
	void (*sink_free)(void *ud, void *state);
};

/* Create a server; nothing listens until kiln_http_server_start(). */
int kiln_http_server_new(const struct kiln_http_server_options *opts,
			 struct kiln_http_server **out,
			 struct kiln_error **err);
/* Add a route (copied) before start: -EBUSY after, -EINVAL on a bad path. */
int kiln_http_server_route(struct kiln_http_server *s,
			   const struct kiln_http_route *route);
/* Bind and start serving. The error names the address. */
int kiln_http_server_start(struct kiln_http_server *s, struct kiln_error **err);
/* The port bound (the one picked for port 0); 0 before start. */
uint16_t kiln_http_server_port(const struct kiln_http_server *s);
/* "http[s]://HOST:PORT" of the listener (IPv6 in brackets). */
const char *kiln_http_server_url(const struct kiln_http_server *s);
/*
 * Stop accepting, let requests in progress finish for up to stop_grace_ms,
 * then close every connection and join the threads. Idempotent.
 */
void kiln_http_server_stop(struct kiln_http_server *s);
/* True once stop began (for long-running streams to end early). */
bool kiln_http_server_stopping(const struct kiln_http_server *s);
/* Stop (if needed) and free. Accepts NULL. */
void kiln_http_server_free(struct kiln_http_server *s);

/* Requests answered so far, including 4xx answers (for tests and stats). */
uint64_t kiln_http_server_requests(const struct kiln_http_server *s);

/*
 * A member of a JSON request body: absent and not required gives *out
 * NULL; absent and required, or of another type, is -EINVAL naming key
 * (JSON_TRUE stands for "a boolean").
 */
int kiln_json_member(const json_t *obj, const char *key, json_type type, bool required,
		     json_t **out, struct kiln_error **err);

/* Constant-time comparison of two NUL-terminated secrets. */
bool kiln_http_token_eq(const char *a, const char *b);
