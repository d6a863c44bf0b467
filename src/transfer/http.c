/*
 * libcurl helpers: one request per call on a fresh easy handle, sharing
 * connections, DNS and TLS sessions through a CURLSH. Every request has a
 * connect timeout and a low-speed abort, every in-memory body a limit.
 */
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/parse-util.h"
#include "basic/strbuf.h"
#include "transfer/registry.h"

#define CONNECT_TIMEOUT_MS 10000L
#define LOW_SPEED_BYTES 1024L
#define LOW_SPEED_TIME_S 30L
#define MAX_REDIRS 5L
#define MAX_SZ(a, b) ((a) > (b) ? (a) : (b))

struct kiln_http {
	CURLSH *share;
	pthread_mutex_t locks[CURL_LOCK_DATA_LAST];
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void share_lock(CURL *c, curl_lock_data data, curl_lock_access a,
		       void *ud)
{
	struct kiln_http *h = ud;

	pthread_mutex_lock(&h->locks[data]);
}

static void share_unlock(CURL *c, curl_lock_data data, void *ud)
{
	struct kiln_http *h = ud;

	pthread_mutex_unlock(&h->locks[data]);
}

struct kiln_http *kiln_http_new(void)
{
	struct kiln_http *h = xcalloc(1, sizeof(*h));
	size_t i;

	pthread_once(&global_once, global_init);
	for (i = 0; i < ARRAY_SIZE(h->locks); i++)
		pthread_mutex_init(&h->locks[i], NULL);
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

void kiln_http_free(struct kiln_http *h)
{
	size_t i;

	if (!h)
		return;
	curl_share_cleanup(h->share);
	for (i = 0; i < ARRAY_SIZE(h->locks); i++)
		pthread_mutex_destroy(&h->locks[i]);
	free(h);
}

void kiln_http_resp_release(struct kiln_http_resp *r)
{
	if (!r)
		return;
	free(r->body);
	free(r->content_type);
	free(r->location);
	free(r->www_authenticate);
	free(r->docker_digest);
	memset(r, 0, sizeof(*r));
}

/* State of one transfer. */
struct xfer {
	CURL *curl;
	const struct kiln_http_req *req;
	struct kiln_http_resp *resp;
	struct kiln_strbuf body;
	int sink_error;  /* sink's code, or -E2BIG over the limit */
	bool error_body; /* collecting a non-2xx body */
	uint64_t upload_off;
};

static bool is_2xx(long status)
{
	return status >= 200 && status < 300;
}

static size_t write_cb(char *data, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	size_t len = size * n;
	long status = 0;
	int r;

	curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &status);
	if (!is_2xx(status)) {
		x->error_body = true;
		/* An error body past its limit is cut, not an error. */
		(void)kiln_strbuf_add(&x->body, data, len);
		return len;
	}
	if (x->req->sink) {
		r = x->req->sink(x->req->sink_ud, data, len);
		if (r < 0) {
			x->sink_error = r;
			return 0;
		}
		return len;
	}
	if (x->req->limit == 0)
		return len; /* a body nobody asked for is dropped */
	if (len > x->req->limit - x->body.len ||
	    kiln_strbuf_add(&x->body, data, len) < 0) {
		x->sink_error = -E2BIG;
		return 0;
	}
	return len;
}

static void set_header(char **dst, const char *v, size_t n)
{
	free(*dst);
	*dst = xstrndup(v, n);
}

static bool header_is(const char *line, size_t len, const char *name)
{
	size_t n = strlen(name);

	return len > n && line[n] == ':' && !strncasecmp(line, name, n);
}

static void reset_headers(struct kiln_http_resp *r)
{
	free(r->content_type);
	free(r->location);
	free(r->www_authenticate);
	free(r->docker_digest);
	r->content_type = r->location = r->www_authenticate = NULL;
	r->docker_digest = NULL;
	r->content_length = -1;
}

static void capture_header(struct kiln_http_resp *r, const char *line,
			   size_t len)
{
	static const char *const names[] = {
		"Content-Type", "Location", "WWW-Authenticate",
		"Docker-Content-Digest", "Content-Length",
	};
	char **dsts[] = { &r->content_type, &r->location, &r->www_authenticate,
			  &r->docker_digest, NULL };
	_cleanup_free_ char *cl = NULL;
	size_t i, k;
	const char *v;

	for (i = 0; i < ARRAY_SIZE(names); i++) {
		if (!header_is(line, len, names[i]))
			continue;
		k = strlen(names[i]) + 1;
		v = line + k;
		len -= k;
		while (len && (*v == ' ' || *v == '\t'))
			v++, len--;
		while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' ||
			       v[len - 1] == ' '))
			len--;
		if (dsts[i]) {
			set_header(dsts[i], v, len);
		} else {
			uint64_t u;

			cl = xstrndup(v, len);
			if (kiln_parse_u64(cl, &u) == 0 && u <= INT64_MAX)
				r->content_length = (int64_t)u;
		}
		return;
	}
}

static size_t header_cb(char *data, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	size_t len = size * n;

	/* A new status line: the headers of a redirect or 100 are dropped. */
	if (len >= 5 && !strncmp(data, "HTTP/", 5))
		reset_headers(x->resp);
	else
		capture_header(x->resp, data, len);
	return len;
}

static size_t read_cb(char *buf, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	const struct kiln_http_req *req = x->req;
	size_t want = size * n;
	ssize_t k;

	if (!req->body_from_fd) {
		uint64_t left = req->body_len - x->upload_off;

		if (want > left)
			want = (size_t)left;
		memcpy(buf, (const char *)req->body + x->upload_off, want);
		x->upload_off += want;
		return want;
	}
	do {
		k = pread(req->body_fd, buf, want, (off_t)x->upload_off);
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

static struct curl_slist *build_headers(const struct kiln_http_req *req)
{
	struct curl_slist *l = NULL;
	_cleanup_free_ char *auth = NULL;
	size_t i;

	for (i = 0; req->headers && req->headers[i]; i++)
		l = curl_slist_append(l, req->headers[i]);
	if (req->bearer) {
		auth = xasprintf("Authorization: Bearer %s", req->bearer);
		l = curl_slist_append(l, auth);
	}
	/* The registry answers 201/202 at once; no "100-continue" wait. */
	l = curl_slist_append(l, "Expect:");
	return l;
}

static void set_body(struct xfer *x, CURL *c)
{
	const struct kiln_http_req *req = x->req;
	uint64_t size = req->body_from_fd ? req->body_fd_size : req->body_len;

	if (!req->body_from_fd && !req->body)
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
	const char *m = x->req->method;

	if (!strcmp(m, "HEAD")) {
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	} else if (!strcmp(m, "PUT") || !strcmp(m, "POST") ||
		   !strcmp(m, "PATCH")) {
		set_body(x, c);
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, m);
	} else if (strcmp(m, "GET") != 0) {
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, m);
	}
}

static void set_auth(const struct kiln_http_req *req, CURL *c)
{
	if (!req->user)
		return;
	curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
	curl_easy_setopt(c, CURLOPT_USERNAME, req->user);
	curl_easy_setopt(c, CURLOPT_PASSWORD, req->password ? req->password : "");
}

static void set_options(struct kiln_http *h, struct xfer *x, CURL *c,
			struct curl_slist *hdrs)
{
	const struct kiln_http_req *req = x->req;
	long low = req->low_speed_time_s ? (long)req->low_speed_time_s
					 : LOW_SPEED_TIME_S;

	curl_easy_setopt(c, CURLOPT_SHARE, h->share);
	curl_easy_setopt(c, CURLOPT_URL, req->url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, CONNECT_TIMEOUT_MS);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, LOW_SPEED_BYTES);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, low);
	if (req->timeout_ms > 0)
		curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, req->timeout_ms);
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, req->follow ? 1L : 0L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, MAX_REDIRS);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "kiln/0.1");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
	if (req->tls_noverify) {
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	if (req->ca_file)
		curl_easy_setopt(c, CURLOPT_CAINFO, req->ca_file);
	set_auth(req, c);
	set_method(x, c);
}

static int curl_errno(CURLcode rc)
{
	switch (rc) {
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_COULDNT_CONNECT:
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
	const struct kiln_http_req *req = x->req;

	if (x->sink_error == -E2BIG)
		return kiln_error_set(err, -E2BIG, "%s %s: response body larger "
				      "than %zu bytes", req->method, req->url,
				      req->limit);
	if (x->sink_error < 0)
		return x->sink_error;
	if (rc != CURLE_OK)
		return kiln_error_set(err, curl_errno(rc), "%s %s: %s", req->method,
				      req->url, *errbuf ? errbuf : curl_easy_strerror(rc));
	curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &x->resp->status);
	x->resp->body = kiln_strbuf_detach(&x->body, &x->resp->body_len);
	return 0;
}

int kiln_http_do(struct kiln_http *h, const struct kiln_http_req *req,
		 struct kiln_http_resp *resp, struct kiln_error **err)
{
	struct xfer x = { .req = req, .resp = resp };
	char errbuf[CURL_ERROR_SIZE] = "";
	struct curl_slist *hdrs;
	CURLcode rc;
	int r;

	memset(resp, 0, sizeof(*resp));
	resp->content_length = -1;
	/* Error bodies and in-memory 2xx bodies share one bounded buffer. */
	kiln_strbuf_init(&x.body, req->sink ? KILN_REGISTRY_ERROR_LIMIT
				    : MAX_SZ(req->limit, KILN_REGISTRY_ERROR_LIMIT));
	x.curl = curl_easy_init();
	if (!x.curl)
		abort();
	hdrs = build_headers(req);
	set_options(h, &x, x.curl, hdrs);
	curl_easy_setopt(x.curl, CURLOPT_ERRORBUFFER, errbuf);
	rc = curl_easy_perform(x.curl);
	r = finish(&x, rc, errbuf, err);
	curl_easy_cleanup(x.curl);
	curl_slist_free_all(hdrs);
	kiln_strbuf_release(&x.body);
	if (r < 0)
		kiln_http_resp_release(resp);
	return r;
}
