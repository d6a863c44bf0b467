/*
 * libmicrohttpd glue: one thread per connection, routes matched on the
 * first call of the access handler, where authentication and the
 * Content-Length limit are decided before any body byte is read.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/parse-util.h"
#include "basic/strbuf.h"
#include "proto/http-server.h"

#define STREAM_BLOCK (64u << 10)
/* Bytes of an oversized chunked body read and dropped before hanging up. */
#define DISCARD_MAX (1u << 20)
#define JSON_TYPE "application/json"

struct route_entry {
	struct kiln_http_route r;
	char *method, *path;
	size_t plen;  /* prefix routes: length of the prefix incl. '/' */
	bool prefix;
};

struct kiln_http_server {
	char *listen, *token;
	/* TLS: file paths, then their contents from start (MHD borrows them). */
	char *tls_cert, *tls_key, *tls_client_ca;
	char *pem_cert, *pem_key, *pem_client_ca;
	size_t pem_key_len;
	unsigned max_conns, idle_timeout_s, grace_ms;
	struct route_entry *routes;
	size_t n_routes, alloc_routes;
	struct MHD_Daemon *mhd;
	struct sockaddr_storage addr;
	uint16_t port;
	char url[80];
	atomic_bool stopping;
	atomic_uint active;
	atomic_uint_fast64_t requests;
	pthread_mutex_t stop_lock;
};

/* Per-request state between the access handler's calls. */
struct conn_req {
	const struct route_entry *route;
	struct kiln_strbuf body;
	uint64_t discarded;
	bool too_big;
	const char *rest; /* streamed routes: what the sink is told */
	void *stream;     /* streamed routes: the sink's state */
	uint64_t streamed;
	int sink_r;       /* the sink's failure */
};

struct stream_ctx {
	kiln_http_stream_fn fn;
	void *ud;
	void (*free_fn)(void *ud);
};

int kiln_json_member(const json_t *obj, const char *key, json_type type, bool required,
		     json_t **out, struct kiln_error **err)
{
	json_t *v = json_object_get(obj, key);

	*out = NULL;
	if (!v && !required)
		return 0;
	if (!v)
		return kiln_error_set(err, -EINVAL, "missing \"%s\"", key);
	if (json_typeof(v) != type && !(type == JSON_TRUE && json_is_boolean(v)))
		return kiln_error_set(err, -EINVAL, "\"%s\" has the wrong type", key);
	*out = v;
	return 0;
}

bool kiln_http_token_eq(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), i;
	unsigned char diff = la != lb;

	/* Always walk the expected token's length: timing leaks nothing. */
	for (i = 0; i < lb; i++)
		diff |= (unsigned char)b[i] ^ (unsigned char)(i < la ? a[i] : 0);
	return diff == 0;
}

/* ---- responses ---- */

void kiln_http_server_resp_release(struct kiln_http_server_resp *r)
{
	size_t i;

	json_decref(r->json);
	free(r->data);
	if (r->kind == KILN_HTTP_BODY_FD && r->fd >= 0)
		close(r->fd);
	if (r->stream_free)
		r->stream_free(r->stream_ud);
	for (i = 0; i < r->n_headers; i++) {
		free(r->headers[i][0]);
		free(r->headers[i][1]);
	}
	memset(r, 0, sizeof(*r));
	r->fd = -1;
}

void kiln_http_resp_json(struct kiln_http_server_resp *r, unsigned status,
			 json_t *json)
{
	kiln_http_server_resp_release(r);
	r->status = status;
	r->kind = KILN_HTTP_BODY_JSON;
	r->json = json;
}

void kiln_http_resp_error(struct kiln_http_server_resp *r, unsigned status,
			  const char *fmt, ...)
{
	_cleanup_free_ char *msg = NULL;
	va_list ap;

	va_start(ap, fmt);
	msg = xvasprintf(fmt, ap);
	va_end(ap);
	kiln_http_resp_json(r, status, json_pack("{s:s}", "error", msg));
}

void kiln_http_resp_bytes(struct kiln_http_server_resp *r, unsigned status,
			  const char *content_type, char *data, size_t len)
{
	kiln_http_server_resp_release(r);
	r->status = status;
	r->kind = KILN_HTTP_BODY_BYTES;
	r->content_type = content_type;
	r->data = data;
	r->len = len;
}

void kiln_http_resp_fd(struct kiln_http_server_resp *r, unsigned status,
		       const char *content_type, int fd, uint64_t offset,
		       uint64_t length)
{
	kiln_http_server_resp_release(r);
	r->status = status;
	r->kind = KILN_HTTP_BODY_FD;
	r->content_type = content_type;
	r->fd = fd;
	r->offset = offset;
	r->length = length;
}

void kiln_http_resp_stream(struct kiln_http_server_resp *r, unsigned status,
			   const char *content_type, uint64_t size,
			   kiln_http_stream_fn fn, void *ud,
			   void (*free_fn)(void *ud))
{
	kiln_http_server_resp_release(r);
	r->status = status;
	r->kind = KILN_HTTP_BODY_STREAM;
	r->content_type = content_type;
	r->stream_size = size;
	r->stream = fn;
	r->stream_ud = ud;
	r->stream_free = free_fn;
}

int kiln_http_resp_header(struct kiln_http_server_resp *r, const char *name,
			  const char *value)
{
	if (r->n_headers >= KILN_HTTP_MAX_RESP_HEADERS)
		return -E2BIG;
	r->headers[r->n_headers][0] = xstrdup(name);
	r->headers[r->n_headers][1] = xstrdup(value);
	r->n_headers++;
	return 0;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct stream_ctx *c = cls;
	ssize_t n = c->fn(c->ud, pos, buf, max);

	if (n == 0)
		return MHD_CONTENT_READER_END_OF_STREAM;
	if (n < 0)
		return MHD_CONTENT_READER_END_WITH_ERROR;
	return n;
}

static void stream_free(void *cls)
{
	struct stream_ctx *c = cls;

	if (c->free_fn)
		c->free_fn(c->ud);
	free(c);
}

static struct MHD_Response *make_stream(struct kiln_http_server_resp *r)
{
	struct stream_ctx *c = xcalloc(1, sizeof(*c));
	uint64_t size = r->stream_size == UINT64_MAX ? MHD_SIZE_UNKNOWN
						     : r->stream_size;

	struct MHD_Response *m;

	c->fn = r->stream;
	c->ud = TAKE_PTR(r->stream_ud);
	c->free_fn = r->stream_free;
	r->stream_free = NULL; /* owned by the MHD response now */
	m = MHD_create_response_from_callback(size, STREAM_BLOCK, stream_reader,
					      c, stream_free);
	if (!m)
		stream_free(c);
	return m;
}

static struct MHD_Response *make_fd(struct kiln_http_server_resp *r)
{
	struct MHD_Response *m = MHD_create_response_from_fd_at_offset64(
		r->length, r->fd, r->offset);

	if (m)
		r->fd = -1; /* closed by MHD when the response is done */
	return m;
}

static struct MHD_Response *make_json(struct kiln_http_server_resp *r)
{
	char *text;

	/* A failed json_pack() in a handler: a 500, not a crash. */
	if (!r->json) {
		r->status = MHD_HTTP_INTERNAL_SERVER_ERROR;
		r->json = json_pack("{s:s}", "error", "internal error");
	}
	text = json_dumps(r->json, JSON_COMPACT);
	if (!text)
		abort();
	if (!r->content_type)
		r->content_type = JSON_TYPE;
	return MHD_create_response_from_buffer(strlen(text), text,
					       MHD_RESPMEM_MUST_FREE);
}

/* Turn resp into an MHD response; ownership of its body moves there. */
static struct MHD_Response *make_mhd(struct kiln_http_server_resp *r)
{
	switch (r->kind) {
	case KILN_HTTP_BODY_JSON:
		return make_json(r);
	case KILN_HTTP_BODY_BYTES:
		return MHD_create_response_from_buffer(
			r->len, TAKE_PTR(r->data), MHD_RESPMEM_MUST_FREE);
	case KILN_HTTP_BODY_FD:
		return make_fd(r);
	case KILN_HTTP_BODY_STREAM:
		return make_stream(r);
	default:
		return MHD_create_response_from_buffer(0, (void *)"",
						       MHD_RESPMEM_PERSISTENT);
	}
}

static enum MHD_Result send_resp(struct MHD_Connection *conn,
				 struct kiln_http_server_resp *r)
{
	struct MHD_Response *m = make_mhd(r);
	enum MHD_Result ret;
	size_t i;

	if (!m) {
		kiln_http_server_resp_release(r);
		return MHD_NO;
	}
	if (r->content_type)
		MHD_add_response_header(m, MHD_HTTP_HEADER_CONTENT_TYPE,
					r->content_type);
	for (i = 0; i < r->n_headers; i++)
		MHD_add_response_header(m, r->headers[i][0], r->headers[i][1]);
	ret = MHD_queue_response(conn, r->status, m);
	MHD_destroy_response(m);
	kiln_http_server_resp_release(r);
	return ret;
}

static enum MHD_Result send_error(struct MHD_Connection *conn,
				  unsigned status, const char *msg)
{
	struct kiln_http_server_resp r = { .fd = -1 };

	kiln_http_resp_error(&r, status, "%s", msg);
	if (status == MHD_HTTP_UNAUTHORIZED)
		kiln_http_resp_header(&r, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
				      "Bearer");
	return send_resp(conn, &r);
}

/* ---- requests ---- */

const char *kiln_http_server_req_header(const struct kiln_http_server_req *r,
					const char *name)
{
	return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *kiln_http_server_req_query(const struct kiln_http_server_req *r,
				       const char *key)
{
	const char *v = NULL;

	if (MHD_lookup_connection_value_n(r->conn, MHD_GET_ARGUMENT_KIND, key,
					  strlen(key), &v, NULL) != MHD_YES)
		return NULL;
	return v ? v : "";
}

static bool route_matches(const struct route_entry *e, const char *url)
{
	if (!e->prefix)
		return !strcmp(e->path, url);
	return !strncmp(e->path, url, e->plen) && url[e->plen];
}

static bool method_matches(const struct route_entry *e, const char *method)
{
	return !strcmp(e->method, method) ||
	       (!strcmp(method, "HEAD") && !strcmp(e->method, "GET"));
}

/*
 * Best route for method + url: exact before prefix, longer prefix first.
 * *path_known tells whether some route had the path (405 vs 404).
 */
static const struct route_entry *match(const struct kiln_http_server *s,
				       const char *method, const char *url,
				       bool *path_known)
{
	const struct route_entry *best = NULL;
	size_t i;

	*path_known = false;
	for (i = 0; i < s->n_routes; i++) {
		const struct route_entry *e = &s->routes[i];

		if (!route_matches(e, url))
			continue;
		*path_known = true;
		if (!method_matches(e, method))
			continue;
		if (!best || (best->prefix &&
			      (!e->prefix || e->plen > best->plen)))
			best = e;
	}
	return best;
}

static bool authorized(const struct kiln_http_server *s, const struct kiln_http_route *r,
		       struct MHD_Connection *conn)
{
	const char *token = r->token ? r->token : s->token;
	const char *h;

	if (!token)
		return true;
	h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					MHD_HTTP_HEADER_AUTHORIZATION);
	if (!h || strncasecmp(h, "Bearer ", 7) || strlen(h) > KILN_HTTP_TOKEN_MAX)
		return false;
	h += 7;
	while (*h == ' ')
		h++;
	/* Both compared, always: which one matched leaks no timing. */
	return kiln_http_token_eq(h, token) |
	       (r->alt_token ? kiln_http_token_eq(h, r->alt_token) : false);
}

/*
 * With a client CA: the connection's client certificate was sent and
 * verifies against it (GnuTLS checks chain, validity and signature; MHD
 * only asks for the certificate). false with the reason in why.
 */
static bool client_cert_ok(struct MHD_Connection *conn, char *why, size_t n)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
	gnutls_session_t tls = ci ? (gnutls_session_t)ci->tls_session : NULL;
	unsigned int status = 0, k = 0;
	int r;

	if (!tls || !gnutls_certificate_get_peers(tls, &k) || k == 0) {
		snprintf(why, n, "a client certificate is required");
		return false;
	}
	r = gnutls_certificate_verify_peers2(tls, &status);
	if (r < 0) {
		snprintf(why, n, "client certificate not accepted: %s", gnutls_strerror(r));
		return false;
	}
	if (status != 0) {
		gnutls_datum_t out = { 0 };

		if (gnutls_certificate_verification_status_print(
			    status, GNUTLS_CRT_X509, &out, 0) == 0) {
			snprintf(why, n, "client certificate not accepted: %s",
				 (const char *)out.data);
			gnutls_free(out.data);
		} else
			snprintf(why, n, "client certificate not accepted");
		return false;
	}
	return true;
}

/* True when the declared Content-Length is over limit. */
static bool declared_too_big(struct MHD_Connection *conn, size_t limit)
{
	const char *h = MHD_lookup_connection_value(
		conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
	uint64_t n;

	if (!h || kiln_parse_u64(h, &n) < 0)
		return false; /* MHD rejects a malformed length itself */
	return n > limit;
}

/* First call for a request: route, auth, declared size. */
static enum MHD_Result begin(struct kiln_http_server *s,
			     struct MHD_Connection *conn, const char *url,
			     const char *method, void **con_cls)
{
	const struct route_entry *e;
	struct conn_req *cr;
	char why[160];
	bool known;

	atomic_fetch_add(&s->requests, 1);
	if (atomic_load(&s->stopping))
		return send_error(conn, MHD_HTTP_SERVICE_UNAVAILABLE,
				  "server is stopping");
	e = match(s, method, url, &known);
	if (!e && known)
		return send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
				  "method not allowed");
	if (!e)
		return send_error(conn, MHD_HTTP_NOT_FOUND, "no such endpoint");
	if (s->pem_client_ca && !client_cert_ok(conn, why, sizeof(why)))
		return send_error(conn, MHD_HTTP_UNAUTHORIZED, why);
	if (!e->r.public && !authorized(s, &e->r, conn))
		return send_error(conn, MHD_HTTP_UNAUTHORIZED,
				  "missing or invalid bearer token");
	if (declared_too_big(conn, e->r.body_limit))
		return send_error(conn, MHD_HTTP_CONTENT_TOO_LARGE,
				  "request body too large");
	cr = xcalloc(1, sizeof(*cr));
	cr->route = e;
	cr->rest = e->prefix ? url + e->plen : "";
	kiln_strbuf_init(&cr->body, e->r.sink ? 0 : e->r.body_limit);
	atomic_fetch_add(&s->active, 1);
	*con_cls = cr;
	return MHD_YES;
}

/* A body chunk: keep it under the limit, or drop it and remember. */
static enum MHD_Result absorb(struct conn_req *cr, const char *data,
			      size_t len)
{
	const struct route_entry *e = cr->route;

	if (e->r.sink && !cr->too_big && cr->sink_r == 0 &&
	    cr->streamed + len <= e->r.body_limit) {
		cr->streamed += len;
		cr->sink_r = e->r.sink(e->r.ud, cr->rest, &cr->stream, data, len);
		return MHD_YES; /* after a failure the rest is read and dropped */
	}
	if (e->r.sink && cr->sink_r == 0 && !cr->too_big)
		cr->too_big = true;
	if (e->r.sink) {
		cr->discarded += len;
		return cr->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
	}
	if (!cr->too_big && kiln_strbuf_add(&cr->body, data, len) == 0)
		return MHD_YES;
	if (!cr->too_big) {
		cr->too_big = true;
		kiln_strbuf_release(&cr->body);
	}
	cr->discarded += len;
	/* A chunked body that never ends: hang up instead of reading it. */
	return cr->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
}

static int parse_json(struct conn_req *cr, json_t **out, char *why,
		      size_t whylen)
{
	json_error_t jerr;

	*out = json_loadb(kiln_strbuf_str(&cr->body), cr->body.len,
			  JSON_REJECT_DUPLICATES, &jerr);
	if (*out)
		return 0;
	snprintf(why, whylen, "malformed JSON body: %s (line %d, column %d)",
		 jerr.text, jerr.line, jerr.column);
	return -EINVAL;
}

static enum MHD_Result run_handler(struct MHD_Connection *conn,
				   struct conn_req *cr, const char *url,
				   const char *method)
{
	const struct route_entry *e = cr->route;
	struct kiln_http_server_resp resp = { .fd = -1 };
	struct kiln_http_server_req req = {
		.method = method, .path = url, .conn = conn,
		.rest = e->prefix ? url + e->plen : "",
		.body = kiln_strbuf_str(&cr->body), .body_len = cr->body.len,
		.stream = &cr->stream,
	};
	char why[256];
	int r;

	if (cr->sink_r < 0) {
		snprintf(why, sizeof(why), "cannot take the body: %s", strerror(-cr->sink_r));
		return send_error(conn, cr->sink_r == -ENOSPC ? 507 : MHD_HTTP_INTERNAL_SERVER_ERROR,
				  why);
	}
	if (e->r.json && parse_json(cr, &req.json, why, sizeof(why)) < 0)
		return send_error(conn, MHD_HTTP_BAD_REQUEST, why);
	r = e->r.fn(&req, &resp, e->r.ud);
	json_decref(req.json);
	if (resp.status == 0) {
		kiln_http_server_resp_release(&resp);
		log_debug("http: %s %s: handler failed (%d)", method, url, r);
		return send_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
				  "internal error");
	}
	return send_resp(conn, &resp);
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *conn,
				 const char *url, const char *method,
				 const char *version, const char *upload_data,
				 size_t *upload_data_size, void **con_cls)
{
	struct kiln_http_server *s = cls;
	struct conn_req *cr = *con_cls;
	size_t n;

	if (!cr)
		return begin(s, conn, url, method, con_cls);
	if (*upload_data_size) {
		n = *upload_data_size;
		*upload_data_size = 0;
		return absorb(cr, upload_data, n);
	}
	if (cr->too_big)
		return send_error(conn, MHD_HTTP_CONTENT_TOO_LARGE,
				  "request body too large");
	return run_handler(conn, cr, url, method);
}

static void completed_cb(void *cls, struct MHD_Connection *conn,
			 void **con_cls, enum MHD_RequestTerminationCode toe)
{
	struct kiln_http_server *s = cls;
	struct conn_req *cr = *con_cls;

	if (!cr)
		return;
	if (cr->stream && cr->route->r.sink_free)
		cr->route->r.sink_free(cr->route->r.ud, cr->stream);
	kiln_strbuf_release(&cr->body);
	free(cr);
	*con_cls = NULL;
	atomic_fetch_sub(&s->active, 1);
}

/* libmicrohttpd's messages: its format strings are its own. */
__attribute__((format(printf, 2, 0))) static void mhd_log(void *cls, const char *fmt,
							   va_list ap)
{
	char buf[512];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	buf[strcspn(buf, "\n")] = '\0';
	log_debug("http: %s", buf);
}

/* ---- lifecycle ---- */

int kiln_http_server_new(const struct kiln_http_server_options *opts,
			 struct kiln_http_server **out,
			 struct kiln_error **err)
{
	struct kiln_http_server *s;

	if (!opts->listen || !*opts->listen)
		return kiln_error_set(err, -EINVAL, "no listen address given");
	if (opts->token && strlen(opts->token) > KILN_HTTP_TOKEN_MAX)
		return kiln_error_set(err, -EINVAL, "token longer than %u bytes",
				      KILN_HTTP_TOKEN_MAX);
	if (kiln_tls_check(opts->tls, err) < 0)
		return -EINVAL; /* never plain HTTP where TLS was asked for */
	s = xcalloc(1, sizeof(*s));
	s->listen = xstrdup(opts->listen);
	s->token = opts->token && *opts->token ? xstrdup(opts->token) : NULL;
	s->max_conns = opts->max_connections ? opts->max_connections
					     : KILN_HTTP_SERVER_MAX_CONNECTIONS;
	s->idle_timeout_s = opts->idle_timeout_s
				    ? opts->idle_timeout_s
				    : KILN_HTTP_SERVER_IDLE_TIMEOUT_S;
	s->grace_ms = opts->stop_grace_ms ? opts->stop_grace_ms
					  : KILN_HTTP_SERVER_STOP_GRACE_MS;
	if (kiln_tls_serving(opts->tls)) {
		s->tls_cert = xstrdup(opts->tls->cert);
		s->tls_key = xstrdup(opts->tls->key);
		s->tls_client_ca = opts->tls->client_ca ? xstrdup(opts->tls->client_ca) : NULL;
	}
	pthread_mutex_init(&s->stop_lock, NULL);
	*out = s;
	return 0;
}

static bool valid_route_path(const char *p)
{
	size_t n = strlen(p);

	if (n == 0 || p[0] != '/')
		return false;
	/* A '*' is only allowed as the last character, after a '/'. */
	return !strchr(p, '*') ||
	       (strchr(p, '*') == p + n - 1 && n >= 2 && p[n - 2] == '/');
}

int kiln_http_server_route(struct kiln_http_server *s,
			   const struct kiln_http_route *route)
{
	struct route_entry *e;

	if (s->mhd || atomic_load(&s->stopping))
		return -EBUSY;
	if (!route->method || !route->path || !route->fn ||
	    !valid_route_path(route->path))
		return -EINVAL;
	s->routes = xgrow(s->routes, &s->alloc_routes, s->n_routes + 1,
			  sizeof(*s->routes));
	e = &s->routes[s->n_routes++];
	memset(e, 0, sizeof(*e));
	e->r = *route;
	e->method = xstrdup(route->method);
	e->path = xstrdup(route->path);
	e->prefix = route->path[strlen(route->path) - 1] == '*';
	if (e->prefix) {
		e->plen = strlen(route->path) - 1;
		e->path[e->plen] = '\0';
	}
	e->r.method = e->method;
	e->r.path = e->path;
	return 0;
}

/* Split "ADDR:PORT" / "[V6]:PORT" into s->addr. */
static int parse_listen(struct kiln_http_server *s, struct kiln_error **err)
{
	_cleanup_free_ char *host = NULL;
	const char *colon = strrchr(s->listen, ':');
	struct sockaddr_in *v4 = (struct sockaddr_in *)&s->addr;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&s->addr;
	uint32_t port;

	if (!colon || kiln_parse_u32(colon + 1, &port) < 0 || port > 65535)
		return kiln_error_set(err, -EINVAL,
				      "listen address '%s': expected ADDR:PORT",
				      s->listen);
	host = xstrndup(s->listen, (size_t)(colon - s->listen));
	memset(&s->addr, 0, sizeof(s->addr));
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		host[strlen(host) - 1] = '\0';
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host + 1, &v6->sin6_addr) == 1)
			return 0;
	} else {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)port);
		if (!strcmp(host, "localhost")) {
			v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
			return 0;
		}
		if (inet_pton(AF_INET, host, &v4->sin_addr) == 1)
			return 0;
	}
	return kiln_error_set(err, -EINVAL,
			      "listen address '%s': '%s' is not a numeric address",
			      s->listen, host);
}

static void make_url(struct kiln_http_server *s)
{
	char buf[INET6_ADDRSTRLEN] = "";
	struct sockaddr_in *v4 = (struct sockaddr_in *)&s->addr;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&s->addr;

	if (s->addr.ss_family == AF_INET6) {
		if (IN6_IS_ADDR_UNSPECIFIED(&v6->sin6_addr))
			snprintf(buf, sizeof(buf), "::1");
		else
			inet_ntop(AF_INET6, &v6->sin6_addr, buf, sizeof(buf));
		snprintf(s->url, sizeof(s->url), "%s://[%s]:%u",
			 s->pem_cert ? "https" : "http", buf, s->port);
		return;
	}
	if (v4->sin_addr.s_addr == htonl(INADDR_ANY))
		snprintf(buf, sizeof(buf), "127.0.0.1");
	else
		inet_ntop(AF_INET, &v4->sin_addr, buf, sizeof(buf));
	snprintf(s->url, sizeof(s->url), "%s://%s:%u",
		 s->pem_cert ? "https" : "http", buf, s->port);
}

/* The private key's copy: wiped, then freed (MHD loaded it at start). */
static void free_key(struct kiln_http_server *s)
{
	if (s->pem_key)
		explicit_bzero(s->pem_key, s->pem_key_len);
	free(TAKE_PTR(s->pem_key));
	s->pem_key_len = 0;
}

static void free_pems(struct kiln_http_server *s)
{
	free_key(s);
	free(TAKE_PTR(s->pem_cert));
	free(TAKE_PTR(s->pem_client_ca));
}

/*
 * Read one PEM file of the TLS flags straight into one buffer (no copy of
 * a key is left in freed memory); the error names flag and file.
 */
static int read_pem(const char *flag, const char *path, char **out, size_t *len,
		    struct kiln_error **err)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	size_t n;
	char *buf;
	int r;

	if (fd < 0 || fstat(fd, &st) < 0)
		return kiln_error_seterrno(err, -errno, "%s %s", flag, path);
	if (!S_ISREG(st.st_mode) || st.st_size > (off_t)KILN_TLS_FILE_MAX)
		return kiln_error_set(err, -EFBIG, "%s %s: not a file of at most %u bytes",
				      flag, path, KILN_TLS_FILE_MAX);
	n = (size_t)st.st_size;
	buf = xmalloc(n + 1);
	r = kiln_read_full(fd, buf, n);
	if (r < 0) {
		explicit_bzero(buf, n);
		free(buf);
		return kiln_error_seterrno(err, r, "%s %s: reading", flag, path);
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
	return 0;
}

static int read_pems(struct kiln_http_server *s, struct kiln_error **err)
{
	size_t len;
	int r;

	r = read_pem("--tls-cert", s->tls_cert, &s->pem_cert, &len, err);
	if (r == 0)
		r = read_pem("--tls-key", s->tls_key, &s->pem_key, &s->pem_key_len, err);
	if (r == 0 && s->tls_client_ca)
		r = read_pem("--tls-client-ca", s->tls_client_ca, &s->pem_client_ca,
			     &len, err);
	return r;
}

static gnutls_datum_t datum(char *pem)
{
	return (gnutls_datum_t){ .data = (unsigned char *)pem,
				 .size = (unsigned int)strlen(pem) };
}

/* GnuTLS's verdict on the files, naming them (MHD would only log it). */
static int check_pems(struct kiln_http_server *s, gnutls_certificate_credentials_t cred,
		      struct kiln_error **err)
{
	gnutls_datum_t cert = datum(s->pem_cert), key = datum(s->pem_key), ca;
	int r = gnutls_certificate_set_x509_key_mem(cred, &cert, &key, GNUTLS_X509_FMT_PEM);

	if (r < 0)
		return kiln_error_set(err, -EINVAL, "--tls-cert %s with --tls-key %s: %s",
				      s->tls_cert, s->tls_key, gnutls_strerror(r));
	if (!s->pem_client_ca)
		return 0;
	ca = datum(s->pem_client_ca);
	r = gnutls_certificate_set_x509_trust_mem(cred, &ca, GNUTLS_X509_FMT_PEM);
	if (r <= 0)
		return kiln_error_set(err, -EINVAL, "--tls-client-ca %s: %s", s->tls_client_ca,
				      r == 0 ? "no certificate in it" : gnutls_strerror(r));
	return 0;
}

/* Read and check the certificate, key and client CA (when serving TLS). */
static int load_tls(struct kiln_http_server *s, struct kiln_error **err)
{
	gnutls_certificate_credentials_t cred;
	int r;

	if (!s->tls_cert || s->pem_cert)
		return 0;
	if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
		return kiln_error_set(err, -ENOTSUP, "--tls-cert %s: this "
				      "libmicrohttpd was built without TLS",
				      s->tls_cert);
	r = read_pems(s, err);
	if (r == 0) {
		if (gnutls_certificate_allocate_credentials(&cred) < 0)
			abort(); /* out of memory */
		r = check_pems(s, cred, err);
		gnutls_certificate_free_credentials(cred);
	}
	if (r < 0)
		free_pems(s);
	return r;
}

int kiln_http_server_start(struct kiln_http_server *s, struct kiln_error **err)
{
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD |
			 MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC |
			 MHD_USE_ERROR_LOG;
	struct MHD_OptionItem tls[4] = { { MHD_OPTION_END, 0, NULL } };
	const union MHD_DaemonInfo *info;
	int r;

	if (s->mhd)
		return -EBUSY;
	r = parse_listen(s, err);
	if (r < 0)
		return r;
	r = load_tls(s, err);
	if (r < 0)
		return r;
	if (s->addr.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	if (s->pem_cert) {
		flags |= MHD_USE_TLS;
		tls[0] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_CERT, 0, s->pem_cert };
		tls[1] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_KEY, 0, s->pem_key };
		tls[2] = (struct MHD_OptionItem){ MHD_OPTION_END, 0, NULL };
		/* MHD asks clients for a certificate; client_cert_ok checks it. */
		if (s->pem_client_ca)
			tls[2] = (struct MHD_OptionItem){ MHD_OPTION_HTTPS_MEM_TRUST, 0,
							  s->pem_client_ca };
	}
	s->mhd = MHD_start_daemon(
		flags, 0, NULL, NULL, access_cb, s,
		MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&s->addr,
		MHD_OPTION_CONNECTION_LIMIT, s->max_conns,
		MHD_OPTION_CONNECTION_TIMEOUT, s->idle_timeout_s,
		MHD_OPTION_NOTIFY_COMPLETED, completed_cb, s,
		MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
		MHD_OPTION_ARRAY, tls,
		MHD_OPTION_END);
	if (!s->mhd)
		return kiln_error_set(err, -EADDRNOTAVAIL,
				      "cannot listen on %s (address in use or "
				      "not local?)", s->listen);
	/* MHD loaded the key into GnuTLS at start: no other copy stays. */
	free_key(s);
	info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
	s->port = info ? info->port : 0;
	make_url(s);
	return 0;
}

uint16_t kiln_http_server_port(const struct kiln_http_server *s)
{
	return s->port;
}

const char *kiln_http_server_url(const struct kiln_http_server *s)
{
	return s->url;
}

bool kiln_http_server_stopping(const struct kiln_http_server *s)
{
	return atomic_load(&s->stopping);
}

uint64_t kiln_http_server_requests(const struct kiln_http_server *s)
{
	return atomic_load(&s->requests);
}

/* Wait for handlers and streams in progress, up to the grace period. */
static void drain(struct kiln_http_server *s)
{
	uint64_t deadline = kiln_now_mono_ns() + (uint64_t)s->grace_ms * 1000000u;
	struct timespec ts = { 0, 5 * 1000000 };

	while (atomic_load(&s->active) > 0 && kiln_now_mono_ns() < deadline)
		nanosleep(&ts, NULL);
}

void kiln_http_server_stop(struct kiln_http_server *s)
{
	MHD_socket fd;

	pthread_mutex_lock(&s->stop_lock);
	atomic_store(&s->stopping, true);
	if (s->mhd) {
		fd = MHD_quiesce_daemon(s->mhd);
		if (fd != MHD_INVALID_SOCKET)
			close(fd);
		drain(s);
		MHD_stop_daemon(s->mhd);
		s->mhd = NULL;
	}
	pthread_mutex_unlock(&s->stop_lock);
}

void kiln_http_server_free(struct kiln_http_server *s)
{
	size_t i;

	if (!s)
		return;
	kiln_http_server_stop(s);
	for (i = 0; i < s->n_routes; i++) {
		free(s->routes[i].method);
		free(s->routes[i].path);
	}
	free(s->routes);
	free(s->listen);
	free(s->token);
	free_pems(s);
	free(s->tls_cert);
	free(s->tls_key);
	free(s->tls_client_ca);
	pthread_mutex_destroy(&s->stop_lock);
	free(s);
}
