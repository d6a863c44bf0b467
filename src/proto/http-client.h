/*
 * The HTTP/JSON client side of kiln's API (docs/api.md), on libcurl.
 *
 * Every request has a connect timeout, a low-speed abort (a peer that
 * stalls is dropped) and, when the caller sets one, a total deadline;
 * every body kept in memory has a limit. Connections, DNS answers and TLS
 * sessions are shared by all threads using one client.
 *
 * Errors name the method and URL (so the host), the HTTP status and the
 * server's own message (the "error" member of a JSON error body).
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "proto/tls.h"

#define KILN_HTTP_CLIENT_CONNECT_TIMEOUT_MS 5000L
#define KILN_HTTP_CLIENT_LOW_SPEED_TIME_S 30u
/* Abort when slower than this many bytes/s for the low-speed time. */
#define KILN_HTTP_CLIENT_LOW_SPEED_BYTES 1024L
/* Most of an error body kept (the rest is dropped, not an error). */
#define KILN_HTTP_CLIENT_ERROR_LIMIT (64u << 10)
/* Default response limit and deadline of kiln_http_client_json(). */
#define KILN_HTTP_CLIENT_JSON_LIMIT (16u << 20)
#define KILN_HTTP_CLIENT_JSON_TIMEOUT_MS 60000L

struct kiln_http_client;

struct kiln_http_client_options {
	long connect_timeout_ms;   /* 0: KILN_HTTP_CLIENT_CONNECT_TIMEOUT_MS */
	unsigned low_speed_time_s; /* 0: KILN_HTTP_CLIENT_LOW_SPEED_TIME_S */
	/*
	 * For every https call (copied): tls->ca verifies servers unless the
	 * call names its own ca_file; tls->cert/key are presented as the
	 * client certificate. client_ca is not used here. NULL: neither.
	 */
	const struct kiln_tls *tls;
};

/* opts may be NULL. Never fails (out of memory aborts). */
struct kiln_http_client *
kiln_http_client_new(const struct kiln_http_client_options *opts);
void kiln_http_client_free(struct kiln_http_client *c);

/* One request. Everything is borrowed for the duration of the call. */
struct kiln_http_call {
	const char *method;         /* "GET", "POST", "HEAD", ... */
	const char *url;
	const char *token;          /* "Authorization: Bearer", or NULL */
	const char *const *headers; /* "Name: value", NULL-terminated, or NULL */
	json_t *json;               /* JSON request body, or ... */
	const void *body;           /* ... raw bytes (body_len of them) */
	size_t body_len;
	const char *content_type;   /* for body (json implies JSON) */
	long timeout_ms;            /* whole request; 0: none */
	unsigned low_speed_time_s;  /* 0: the client's */
	const char *user, *password; /* basic auth, or NULL */
	/*
	 * Sign with AWS SigV4 instead (CURLOPT_AWS_SIGV4, e.g.
	 * "aws:amz:REGION:s3"): user and password are the access key id and
	 * the secret. The caller sends x-amz-content-sha256 in headers, and
	 * an upload keeps curl's own Expect header (a blanked one would be
	 * signed but not sent).
	 */
	const char *aws_sigv4;
	long connect_timeout_ms;    /* 0: the client's */
	/*
	 * Follow redirects (http/https only, at most 5). Credentials never
	 * follow to another host (CURLOPT_UNRESTRICTED_AUTH stays off).
	 */
	bool follow;
	unsigned max_redirects;     /* with follow: 0 means 5 */
	bool tls_noverify;
	const char *ca_file;        /* CA bundle, or NULL for the default */
	/*
	 * Send a PUT/POST/PATCH body as a rewindable upload (no default
	 * Content-Type, no "Expect: 100-continue"), from body or, when
	 * body_from_fd, body_fd_size bytes of body_fd from offset 0.
	 */
	bool upload;
	bool body_from_fd;
	int body_fd;
	uint64_t body_fd_size;
	/*
	 * Where a 2xx body goes: sink when set (a negative return aborts
	 * the transfer with that code), else memory, at most limit bytes
	 * (-E2BIG over it; limit 0 drops the body).
	 */
	int (*sink)(void *ud, const void *data, size_t len);
	void *sink_ud;
	size_t limit;
	/*
	 * Asked about once a second while the request is in flight (also
	 * while it waits for an answer): true aborts it with -ECANCELED.
	 * NULL: never.
	 */
	bool (*abandon)(void *ud);
	void *abandon_ud;
};

struct kiln_http_result {
	long status;
	char *body;       /* 2xx without sink; else the error body (cut) */
	size_t body_len;
	/* Headers of the final response (after redirects), or NULL. */
	char *content_type;
	char *content_range;
	char *location;
	char *www_authenticate;
	char *docker_digest;    /* Docker-Content-Digest */
	char *etag;             /* ETag, as sent (quotes kept) */
	int64_t content_length; /* -1 when not sent */
};
void kiln_http_result_release(struct kiln_http_result *r);

/*
 * Perform call. Only transport failures are errors here, naming the URL:
 * -ECONNREFUSED, -ETIMEDOUT (connect, deadline or low-speed abort),
 * -EHOSTUNREACH (name not resolved, host or network unreachable), -EPROTO (TLS), -ELOOP (too many redirects), -E2BIG (body
 * over limit), a sink's code (no message), -EIO otherwise. Any HTTP status
 * is returned in res; the caller judges it (kiln_http_status_error()).
 */
int kiln_http_client_do(struct kiln_http_client *c,
			const struct kiln_http_call *call,
			struct kiln_http_result *res, struct kiln_error **err);

/*
 * A JSON exchange: send call (call->json as the body when set), require a
 * 2xx and a JSON response (when out is non-NULL), and return it in *out.
 * call->limit 0 means KILN_HTTP_CLIENT_JSON_LIMIT and call->timeout_ms 0
 * means KILN_HTTP_CLIENT_JSON_TIMEOUT_MS. A non-2xx status is an error
 * (code from kiln_http_status_code()) naming method, URL, status and the
 * server's message; *status (may be NULL) gets the status either way.
 */
int kiln_http_client_json(struct kiln_http_client *c,
			  const struct kiln_http_call *call, json_t **out,
			  long *status, struct kiln_error **err);

/* errno-style code for a non-2xx status: 400 -EINVAL, 401/403 -EACCES,
 * 404 -ENOENT, 409 -EEXIST, 413 -E2BIG, 416 -ERANGE, 503 -EAGAIN, 5xx -EIO. */
int kiln_http_status_code(long status);

/*
 * Set *err to "METHOD URL: HTTP STATUS: message" (the server's JSON
 * "error", else its text, cut and sanitized) and return the status code.
 */
int kiln_http_status_error(struct kiln_error **err,
			   const struct kiln_http_call *call,
			   const struct kiln_http_result *res);
