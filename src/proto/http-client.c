/*
 * libcurl helpers: a fresh easy handle per request, connections, DNS and
 * TLS sessions shared through one CURLSH guarded by per-kind mutexes.
 */
#include <ctype.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/parse-util.h"
#include "basic/strbuf.h"
#include "proto/http-client.h"

#define MAX_REDIRS 5L
#define MAX_SZ(a, b) ((a) > (b) ? (a) : (b))

struct kiln_http_client {
	CURLSH *share;
	pthread_mutex_t locks[CURL_LOCK_DATA_LAST];
	long connect_timeout_ms;
	long low_speed_time_s;
	char *tls_ca, *tls_cert, *tls_key; /* from the options' tls */
};

/* State of one transfer. */
struct xfer {
	CURL *curl;
	const struct kiln_http_call *call;
	struct kiln_http_result *res;
	struct kiln_strbuf body;
	int sink_error; /* a sink's code, or -E2BIG over the limit */
	bool abandoned; /* call->abandon said so */
	const void *upload;   /* the request body from memory */
	size_t upload_len;
	uint64_t upload_off;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void share_lock(CURL *c, curl_lock_data data, curl_lock_access a,
		       void *ud)
{
	struct kiln_http_client *h = ud;

	pthread_mutex_lock(&h->locks[data]);
}

static void share_unlock(CURL *c, curl_lock_data data, void *ud)
{
	struct kiln_http_client *h = ud;

	pthread_mutex_unlock(&h->locks[data]);
}

struct kiln_http_client *
kiln_http_client_new(const struct kiln_http_client_options *opts)
{
	struct kiln_http_client *h = xcalloc(1, sizeof(*h));
	size_t i;

	pthread_once(&global_once, global_init);
	for (i = 0; i < ARRAY_SIZE(h->locks); i++)
		pthread_mutex_init(&h->locks[i], NULL);
	h->connect_timeout_ms = opts && opts->connect_timeout_ms
					? opts->connect_timeout_ms
					: KILN_HTTP_CLIENT_CONNECT_TIMEOUT_MS;
	h->low_speed_time_s = opts && opts->low_speed_time_s
				      ? (long)opts->low_speed_time_s
				      : (long)KILN_HTTP_CLIENT_LOW_SPEED_TIME_S;
	if (opts && opts->tls) {
		h->tls_ca = opts->tls->ca ? xstrdup(opts->tls->ca) : NULL;
		h->tls_cert = opts->tls->cert ? xstrdup(opts->tls->cert) : NULL;
		h->tls_key = opts->tls->key ? xstrdup(opts->tls->key) : NULL;
	}
	h->share = curl_share_init();
	if (!h->share)
		abort();
	curl_share_setopt(h->share, CURLSHOPT_LOCKFUNC, share_lock);
	curl_share_setopt(h->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
	curl_share_setopt(h->share, CURLSHOPT_USERDATA, h);
	curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
	curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
	curl_share_setopt(h->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
	return h;
}

void kiln_http_client_free(struct kiln_http_client *h)
{
	size_t i;

	if (!h)
		return;
	curl_share_cleanup(h->share);
	for (i = 0; i < ARRAY_SIZE(h->locks); i++)
		pthread_mutex_destroy(&h->locks[i]);
	free(h->tls_ca);
	free(h->tls_cert);
	free(h->tls_key);
	free(h);
}

void kiln_http_result_release(struct kiln_http_result *r)
{
	if (!r)
		return;
	free(r->body);
	free(r->content_type);
	free(r->content_range);
	free(r->location);
	free(r->www_authenticate);
	free(r->docker_digest);
	free(r->etag);
	memset(r, 0, sizeof(*r));
	r->content_length = -1;
}

static bool is_2xx(long status)
{
	return status >= 200 && status < 300;
}

static size_t write_cb(char *data, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	const struct kiln_http_call *call = x->call;
	size_t len = size * n;
	long status = 0;
	int r;

	curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &status);
	if (!is_2xx(status)) {
		/* An error body past its limit is cut, not an error. */
		(void)kiln_strbuf_add(&x->body, data, len);
		return len;
	}
	if (call->sink) {
		r = call->sink(call->sink_ud, data, len);
		if (r < 0) {
			x->sink_error = r;
			return 0;
		}
		return len;
	}
	if (call->limit == 0)
		return len;
	if (len > call->limit - x->body.len ||
	    kiln_strbuf_add(&x->body, data, len) < 0) {
		x->sink_error = -E2BIG;
		return 0;
	}
	return len;
}

static bool header_is(const char *line, size_t len, const char *name)
{
	size_t n = strlen(name);

	return len > n && line[n] == ':' && !strncasecmp(line, name, n);
}

/* The trimmed value of "Name: value\r\n". */
static char *header_value(const char *line, size_t len, const char *name)
{
	size_t k = strlen(name) + 1;
	const char *v = line + k;

	len -= k;
	while (len && (*v == ' ' || *v == '\t'))
		v++, len--;
	while (len && isspace((unsigned char)v[len - 1]))
		len--;
	return xstrndup(v, len);
}

static void reset_headers(struct kiln_http_result *r)
{
	free(r->content_type);
	free(r->content_range);
	free(r->location);
	free(r->www_authenticate);
	free(r->docker_digest);
	free(r->etag);
	r->content_type = r->content_range = r->location = NULL;
	r->www_authenticate = r->docker_digest = r->etag = NULL;
	r->content_length = -1;
}

static void capture_header(struct kiln_http_result *r, const char *line,
			   size_t len)
{
	static const char *const names[] = {
		"Content-Type", "Content-Range", "Location",
		"WWW-Authenticate", "Docker-Content-Digest", "ETag",
	};
	char **dsts[] = { &r->content_type, &r->content_range, &r->location,
			  &r->www_authenticate, &r->docker_digest, &r->etag };
	_cleanup_free_ char *cl = NULL;
	size_t i;
	uint64_t u;

	for (i = 0; i < ARRAY_SIZE(names); i++) {
		if (header_is(line, len, names[i])) {
			free(*dsts[i]);
			*dsts[i] = header_value(line, len, names[i]);
			return;
		}
	}
	if (header_is(line, len, "Content-Length")) {
		cl = header_value(line, len, "Content-Length");
		if (kiln_parse_u64(cl, &u) == 0 && u <= INT64_MAX)
			r->content_length = (int64_t)u;
	}
}

static size_t header_cb(char *data, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	size_t len = size * n;

	/* A new status line: the headers of a redirect or 1xx are dropped. */
	if (len >= 5 && !strncmp(data, "HTTP/", 5))
		reset_headers(x->res);
	else
		capture_header(x->res, data, len);
	return len;
}

static size_t read_cb(char *buf, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	const struct kiln_http_call *call = x->call;
	size_t want = size * n;
	ssize_t k;

	if (!call->body_from_fd) {
		uint64_t left = x->upload_len - x->upload_off;

		if (want > left)
			want = (size_t)left;
		memcpy(buf, (const char *)x->upload + x->upload_off, want);
		x->upload_off += want;
		return want;
	}
	do {
		k = pread(call->body_fd, buf, want, (off_t)x->upload_off);
	} while (k < 0 && errno == EINTR);
	if (k < 0)
		return CURL_READFUNC_ABORT;
	x->upload_off += (uint64_t)k;
	return (size_t)k;
}

static int seek_cb(void *ud, curl_off_t off, int origin)
{
	struct xfer *x = ud;

	if (origin != SEEK_SET || off < 0)
		return CURL_SEEKFUNC_CANTSEEK;
	x->upload_off = (uint64_t)off;
	return CURL_SEEKFUNC_OK;
}

static struct curl_slist *build_headers(const struct kiln_http_call *call,
					const char *content_type)
{
	struct curl_slist *l = NULL;
	_cleanup_free_ char *auth = NULL, *ct = NULL;
	size_t i;

	for (i = 0; call->headers && call->headers[i]; i++)
		l = curl_slist_append(l, call->headers[i]);
	if (call->token) {
		auth = xasprintf("Authorization: Bearer %s", call->token);
		l = curl_slist_append(l, auth);
	}
	if (content_type) {
		ct = xasprintf("Content-Type: %s", content_type);
		l = curl_slist_append(l, ct);
	}
	/* Registries answer 201/202 at once; no "100-continue" wait. */
	if (call->upload && !call->aws_sigv4)
		l = curl_slist_append(l, "Expect:");
	return l;
}

static void set_upload(struct xfer *x, CURL *c)
{
	const struct kiln_http_call *call = x->call;
	uint64_t size = call->body_from_fd ? call->body_fd_size : x->upload_len;

	if (!call->body_from_fd && !x->upload)
		size = 0;
	curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
	curl_easy_setopt(c, CURLOPT_READFUNCTION, read_cb);
	curl_easy_setopt(c, CURLOPT_READDATA, x);
	curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, seek_cb);
	curl_easy_setopt(c, CURLOPT_SEEKDATA, x);
	curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
}

static void set_method(struct xfer *x, CURL *c)
{
	const char *m = x->call->method;

	if (!strcmp(m, "HEAD")) {
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
		return;
	}
	if (x->call->upload) {
		if (!strcmp(m, "PUT") || !strcmp(m, "POST") ||
		    !strcmp(m, "PATCH"))
			set_upload(x, c);
		else if (!strcmp(m, "GET"))
			return;
	} else if (x->upload || !strcmp(m, "POST") || !strcmp(m, "PUT")) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE,
				 (curl_off_t)x->upload_len);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS,
				 x->upload ? x->upload : "");
	}
	/* The method as asked, even a GET with a body. */
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, m);
}

static void set_tls_auth(const struct kiln_http_client *h,
			 const struct kiln_http_call *call, CURL *c)
{
	const char *ca = call->ca_file ? call->ca_file : h->tls_ca;

	if (call->tls_noverify) {
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	if (ca)
		curl_easy_setopt(c, CURLOPT_CAINFO, ca);
	if (h->tls_cert) {
		curl_easy_setopt(c, CURLOPT_SSLCERT, h->tls_cert);
		curl_easy_setopt(c, CURLOPT_SSLKEY, h->tls_key);
	}
	if (!call->user)
		return;
	if (call->aws_sigv4)
		curl_easy_setopt(c, CURLOPT_AWS_SIGV4, call->aws_sigv4);
	else
		curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
	curl_easy_setopt(c, CURLOPT_USERNAME, call->user);
	curl_easy_setopt(c, CURLOPT_PASSWORD,
			 call->password ? call->password : "");
}

static int xferinfo_cb(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		       curl_off_t ulnow)
{
	struct xfer *x = ud;

	if (x->call->abandon(x->call->abandon_ud)) {
		x->abandoned = true;
		return 1; /* CURLE_ABORTED_BY_CALLBACK */
	}
	return 0;
}

static void set_options(struct kiln_http_client *h, struct xfer *x, CURL *c,
			struct curl_slist *hdrs)
{
	const struct kiln_http_call *call = x->call;

	curl_easy_setopt(c, CURLOPT_SHARE, h->share);
	curl_easy_setopt(c, CURLOPT_URL, call->url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, call->follow ? 1L : 0L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS,
			 call->max_redirects ? (long)call->max_redirects : MAX_REDIRS);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
			 call->connect_timeout_ms > 0 ? call->connect_timeout_ms
						      : h->connect_timeout_ms);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT,
			 KILN_HTTP_CLIENT_LOW_SPEED_BYTES);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME,
			 call->low_speed_time_s ? (long)call->low_speed_time_s
						: h->low_speed_time_s);
	if (call->timeout_ms > 0)
		curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, call->timeout_ms);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "kiln/0.1");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
	if (call->abandon) {
		curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, xferinfo_cb);
		curl_easy_setopt(c, CURLOPT_XFERINFODATA, x);
		curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	}
	set_tls_auth(h, call, c);
	set_method(x, c);
}

static int curl_errno(CURL *c, CURLcode rc)
{
	long os_errno = 0;

	switch (rc) {
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_COULDNT_CONNECT:
		curl_easy_getinfo(c, CURLINFO_OS_ERRNO, &os_errno);
		if (os_errno == EHOSTUNREACH || os_errno == ENETUNREACH)
			return -EHOSTUNREACH;
		return -ECONNREFUSED;
	case CURLE_COULDNT_RESOLVE_HOST:
		return -EHOSTUNREACH;
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_PEER_FAILED_VERIFICATION:
		return -EPROTO;
	case CURLE_TOO_MANY_REDIRECTS:
		return -ELOOP;
	default:
		return -EIO;
	}
}

static int finish(struct xfer *x, CURLcode rc, const char *errbuf,
		  struct kiln_error **err)
{
	const struct kiln_http_call *call = x->call;

	if (x->sink_error == -E2BIG)
		return kiln_error_set(err, -E2BIG,
				      "%s %s: response body larger than %zu bytes",
				      call->method, call->url, call->limit);
	if (x->sink_error < 0)
		return x->sink_error;
	if (x->abandoned)
		return kiln_error_set(err, -ECANCELED, "%s %s: abandoned", call->method,
				      call->url);
	if (rc != CURLE_OK)
		return kiln_error_set(err, curl_errno(x->curl, rc), "%s %s: %s",
				      call->method, call->url,
				      *errbuf ? errbuf : curl_easy_strerror(rc));
	curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &x->res->status);
	x->res->body = kiln_strbuf_detach(&x->body, &x->res->body_len);
	return 0;
}

static int perform(struct kiln_http_client *h, struct xfer *x,
		   const char *ctype, struct kiln_error **err)
{
	char errbuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *hdrs = build_headers(x->call, ctype);
	CURLcode rc;
	int r;

	x->curl = curl_easy_init();
	if (!x->curl)
		abort();
	set_options(h, x, x->curl, hdrs);
	curl_easy_setopt(x->curl, CURLOPT_ERRORBUFFER, errbuf);
	rc = curl_easy_perform(x->curl);
	r = finish(x, rc, errbuf, err);
	curl_easy_cleanup(x->curl);
	curl_slist_free_all(hdrs);
	return r;
}

int kiln_http_client_do(struct kiln_http_client *h,
			const struct kiln_http_call *call,
			struct kiln_http_result *res, struct kiln_error **err)
{
	struct xfer x = { .call = call, .res = res, .upload = call->body,
			  .upload_len = call->body_len };
	_cleanup_free_ char *json = NULL;
	const char *ctype = call->content_type;
	int r;

	memset(res, 0, sizeof(*res));
	res->content_length = -1;
	if (call->json) {
		json = json_dumps(call->json, JSON_COMPACT);
		if (!json)
			abort();
		x.upload = json;
		x.upload_len = strlen(json);
		ctype = "application/json";
	}
	/* Error bodies and in-memory 2xx bodies share one bounded buffer. */
	kiln_strbuf_init(&x.body, call->sink ? KILN_HTTP_CLIENT_ERROR_LIMIT
				  : MAX_SZ(call->limit, KILN_HTTP_CLIENT_ERROR_LIMIT));
	r = perform(h, &x, ctype, err);
	kiln_strbuf_release(&x.body);
	if (r < 0)
		kiln_http_result_release(res);
	return r;
}

int kiln_http_status_code(long status)
{
	switch (status) {
	case 400:
	case 422:
		return -EINVAL;
	case 401:
	case 403:
		return -EACCES;
	case 404:
		return -ENOENT;
	case 409:
		return -EEXIST;
	case 413:
		return -E2BIG;
	case 416:
		return -ERANGE;
	case 503:
		return -EAGAIN;
	default:
		return status >= 200 && status < 300 ? 0 : -EIO;
	}
}

/* Printable, one-line copy of at most 200 bytes of text. */
static char *sanitize(const char *s, size_t len)
{
	size_t i, n = len > 200 ? 200 : len;
	char *out = xstrndup(s, n);

	for (i = 0; i < n; i++)
		if (!isprint((unsigned char)out[i]))
			out[i] = ' ';
	return out;
}

/* The message of {"error": "..."}, else the sanitized text. */
static char *error_message(const struct kiln_http_result *res)
{
	json_t *j, *e;
	char *msg = NULL;

	if (!res->body || !res->body_len)
		return xstrdup("(no message)");
	j = json_loadb(res->body, res->body_len, 0, NULL);
	e = json_is_object(j) ? json_object_get(j, "error") : NULL;
	if (json_is_string(e))
		msg = sanitize(json_string_value(e), json_string_length(e));
	json_decref(j);
	return msg ? msg : sanitize(res->body, res->body_len);
}

int kiln_http_status_error(struct kiln_error **err,
			   const struct kiln_http_call *call,
			   const struct kiln_http_result *res)
{
	_cleanup_free_ char *msg = error_message(res);
	int code = kiln_http_status_code(res->status);

	return kiln_error_set(err, code ? code : -EIO, "%s %s: HTTP %ld: %s",
			      call->method, call->url, res->status, msg);
}

static int parse_json_body(const struct kiln_http_call *call,
			   const struct kiln_http_result *res, json_t **out,
			   struct kiln_error **err)
{
	json_error_t jerr;

	*out = json_loadb(res->body ? res->body : "", res->body_len, 0, &jerr);
	if (!*out)
		return kiln_error_set(err, -EBADMSG,
				      "%s %s: malformed JSON response: %s",
				      call->method, call->url, jerr.text);
	return 0;
}

int kiln_http_client_json(struct kiln_http_client *h,
			  const struct kiln_http_call *call, json_t **out,
			  long *status, struct kiln_error **err)
{
	struct kiln_http_call c = *call;
	struct kiln_http_result res;
	int r;

	if (out)
		*out = NULL;
	if (!c.limit)
		c.limit = KILN_HTTP_CLIENT_JSON_LIMIT;
	if (!c.timeout_ms)
		c.timeout_ms = KILN_HTTP_CLIENT_JSON_TIMEOUT_MS;
	c.sink = NULL;
	r = kiln_http_client_do(h, &c, &res, err);
	if (r < 0)
		return r;
	if (status)
		*status = res.status;
	if (!is_2xx(res.status))
		r = kiln_http_status_error(err, &c, &res);
	else if (out)
		r = parse_json_body(&c, &res, out, err);
	kiln_http_result_release(&res);
	return r;
}
