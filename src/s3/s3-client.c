/*
 * The S3 client: one request path (s3_do) on proto's HTTP client, signed
 * by libcurl's SigV4, and the single-request calls on it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cas/digest.h"
#include "s3/s3-internal-client.h"

#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

int64_t s3_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void s3_sha256_hex(const void *buf, size_t len, char *hex)
{
	struct kiln_digest d;

	kiln_digest_buf(buf, len, &d);
	kiln_digest_hex(&d, hex);
}

int kiln_s3_status_code(long status)
{
	if (status >= 200 && status < 300)
		return 0;
	switch (status) {
	case 400:
		return -EINVAL;
	case 401:
	case 403:
		return -EACCES;
	case 404:
		return -ENOENT;
	case 416:
		return -ERANGE;
	default:
		return -EIO;
	}
}

/* ---- the client ---- */

static bool is_ip_literal(const char *host)
{
	size_t n = strcspn(host, ":");

	return host[0] == '[' || strspn(host, "0123456789.") == n;
}

static int client_urls(struct kiln_s3_client *c, const struct kiln_s3_config *cfg,
		       const char *region, struct kiln_error **err)
{
	_cleanup_free_ char *norm = NULL, *host = NULL, *aws = NULL;
	const char *ep = cfg->endpoint;
	size_t scheme_len;

	if (!ep)
		ep = aws = xasprintf("https://s3.%s.amazonaws.com", region);
	if (kiln_s3_endpoint_parse(ep, &norm, &host, err) < 0)
		return -EINVAL;
	if (kiln_s3_bucket_check(cfg->bucket, cfg->path_style, err) < 0)
		return -EINVAL;
	if (!cfg->path_style && is_ip_literal(host))
		return kiln_error_set(err, -EINVAL,
				      "S3 endpoint %s is an IP address: virtual-hosted addressing needs a name; set path style",
				      norm);
	scheme_len = (size_t)(strstr(norm, "://") - norm);
	if (cfg->path_style)
		c->base = xasprintf("%s/%s", norm, cfg->bucket);
	else
		c->base = xasprintf("%.*s://%s.%s", (int)scheme_len, norm,
				    cfg->bucket, host);
	c->name = xasprintf("s3://%s%s%s at %s", cfg->bucket,
			    cfg->prefix && *cfg->prefix ? "/" : "",
			    cfg->prefix ? cfg->prefix : "", norm);
	return 0;
}

static void client_options(struct kiln_s3_client *c,
			   const struct kiln_s3_options *o)
{
	c->limits.connect_timeout_ms = o && o->limits.connect_timeout_ms > 0
					       ? o->limits.connect_timeout_ms
					       : KILN_S3_CONNECT_TIMEOUT_MS;
	c->limits.timeout_ms = o && o->limits.timeout_ms > 0
				       ? o->limits.timeout_ms : KILN_S3_TIMEOUT_MS;
	c->part_size = o && o->part_size ? o->part_size : KILN_S3_PART_SIZE;
	if (c->part_size < KILN_S3_MIN_PART_SIZE)
		c->part_size = KILN_S3_MIN_PART_SIZE;
	c->parallel = o && o->parallel_parts ? o->parallel_parts
					     : KILN_S3_PARALLEL_PARTS;
	c->threshold = o && o->multipart_threshold ? o->multipart_threshold
						   : KILN_S3_MULTIPART_THRESHOLD;
}

static void copy_credentials(struct kiln_s3_credentials *dst,
			     const struct kiln_s3_credentials *src)
{
	dst->access_key = xstrdup(src->access_key);
	dst->secret_key = xstrdup(src->secret_key);
	dst->session_token = src->session_token ? xstrdup(src->session_token) : NULL;
}

int kiln_s3_client_new(const struct kiln_s3_config *cfg,
		       const struct kiln_s3_options *opts,
		       struct kiln_s3_client **out, struct kiln_error **err)
{
	struct kiln_s3_client *c = xcalloc(1, sizeof(*c));
	const char *region = cfg->region ? cfg->region : "us-east-1";
	int r;

	*out = NULL;
	r = client_urls(c, cfg, region, err);
	if (r == 0 && opts && opts->credentials &&
	    (!opts->credentials->access_key || !opts->credentials->secret_key))
		r = kiln_error_set(err, -EINVAL, "S3 credentials without a key");
	if (r == 0 && opts && opts->credentials)
		copy_credentials(&c->cred, opts->credentials);
	else if (r == 0)
		r = kiln_s3_credentials_load(&c->cred, cfg->credentials_file,
					     cfg->profile, err);
	if (r < 0) {
		kiln_s3_client_free(c);
		return r;
	}
	c->path_style = cfg->path_style;
	c->bucket = xstrdup(cfg->bucket);
	c->sigv4 = xasprintf("aws:amz:%s:s3", region);
	c->ca_file = cfg->ca_file ? xstrdup(cfg->ca_file) : NULL;
	if (c->cred.session_token)
		c->token_header = xasprintf("x-amz-security-token: %s",
					    c->cred.session_token);
	client_options(c, opts);
	c->http = kiln_http_client_new(&(struct kiln_http_client_options){
		.connect_timeout_ms = c->limits.connect_timeout_ms });
	*out = c;
	return 0;
}

void kiln_s3_client_free(struct kiln_s3_client *c)
{
	if (!c)
		return;
	kiln_http_client_free(c->http);
	free(c->base);
	free(c->name);
	free(c->bucket);
	free(c->sigv4);
	free(c->ca_file);
	kiln_s3_credentials_release(&c->cred);
	if (c->token_header) {
		explicit_bzero(c->token_header, strlen(c->token_header));
		free(c->token_header);
	}
	free(c);
}

const char *kiln_s3_client_name(const struct kiln_s3_client *c)
{
	return c->name;
}

void s3_call_limits(const struct kiln_s3_client *c,
		    const struct kiln_s3_limits *lim, int64_t *deadline,
		    long *connect_ms)
{
	long t = lim && lim->timeout_ms > 0 ? lim->timeout_ms : c->limits.timeout_ms;

	*connect_ms = lim && lim->connect_timeout_ms > 0 ? lim->connect_timeout_ms
						       : c->limits.connect_timeout_ms;
	*deadline = s3_now_ms() + t;
}

/* ---- one request ---- */

static char *request_url(const struct kiln_s3_client *c, const struct s3_req *q)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(SIZE_MAX / 2);

	(void)kiln_strbuf_adds(&sb, c->base);
	if (q->key) {
		(void)kiln_strbuf_addch(&sb, '/');
		(void)kiln_s3_uri_encode(&sb, q->key, true);
	} else if (!c->path_style) {
		(void)kiln_strbuf_addch(&sb, '/');
	}
	if (q->query && *q->query)
		(void)kiln_strbuf_addf(&sb, "?%s", q->query);
	return kiln_strbuf_detach(&sb, NULL);
}

static char *range_header(const struct kiln_s3_range *r)
{
	if (r->end == UINT64_MAX)
		return xasprintf("Range: bytes=%llu-", (unsigned long long)r->start);
	return xasprintf("Range: bytes=%llu-%llu", (unsigned long long)r->start,
			 (unsigned long long)r->end);
}

/* What the sink of a ranged GET sees first: a 2xx must be a 206. */
struct range_sink {
	const struct s3_req *q;
	const struct kiln_http_result *res;
};

static int checked_sink(void *ud, const void *data, size_t len)
{
	struct range_sink *s = ud;

	/* Headers come before the body: no Content-Range, no partial answer. */
	if (!s->res->content_range)
		return -EBADMSG;
	return s->q->sink(s->q->sink_ud, data, len);
}

static int status_error(const struct kiln_s3_client *c, const struct s3_req *q,
			const char *url, const struct kiln_http_result *res,
			struct kiln_error **err)
{
	_cleanup_free_ char *text = kiln_s3_error_text(res->body, res->body_len);
	int code = kiln_s3_status_code(res->status);
	size_t n = strlen(c->cred.access_key);

	/*
	 * Which keys were refused, by the access key id's last 4 characters
	 * (as AWS's console shows them): the message may reach a cluster's
	 * clients, who have no business with the whole id.
	 */
	return kiln_error_set(err, code, "S3: %s %s: HTTP %ld%s%s%s%s%s", q->method,
			      url, res->status, text ? ": " : "", text ? text : "",
			      code == -EACCES ? " (access key ..." : "",
			      code == -EACCES ? c->cred.access_key + (n > 4 ? n - 4 : n) : "",
			      code == -EACCES ? ")" : "");
}

static void fill_call(struct kiln_s3_client *c, const struct s3_req *q,
		      struct kiln_http_call *call, long timeout)
{
	call->method = q->method;
	call->content_type = q->content_type;
	call->timeout_ms = timeout;
	call->connect_timeout_ms = q->connect_timeout_ms < timeout
					   ? q->connect_timeout_ms : timeout;
	call->user = c->cred.access_key;
	call->password = c->cred.secret_key;
	call->aws_sigv4 = c->sigv4;
	call->ca_file = c->ca_file;
	call->limit = q->limit;
	call->abandon = q->abandon;
	call->abandon_ud = q->abandon_ud;
	call->body = q->body;
	call->body_len = q->body_len;
	call->upload = !strcmp(q->method, "PUT");
	call->body_from_fd = q->body_from_fd;
	call->body_fd = q->fd;
	call->body_fd_size = q->fd_size;
}

static int transport_error(const struct s3_req *q, int r, struct kiln_error **err)
{
	if (r == -E2BIG && !q->sink)
		return r; /* the message names the limit */
	kiln_error_prefix(err, "S3");
	return r;
}

int s3_do(struct kiln_s3_client *c, const struct s3_req *q,
	  struct kiln_http_result *res, struct kiln_error **err)
{
	_cleanup_free_ char *url = request_url(c, q), *sha = NULL, *range = NULL;
	struct range_sink rs = { .q = q, .res = res };
	struct kiln_http_call call = { 0 };
	const char *headers[7];
	size_t nh = 0, i;
	long timeout = (long)(q->deadline - s3_now_ms());
	int r;

	memset(res, 0, sizeof(*res));
	if (timeout <= 0)
		return kiln_error_set(err, -ETIMEDOUT, "S3: %s %s: deadline passed",
				      q->method, url);
	sha = xasprintf("x-amz-content-sha256: %s",
			q->payload_sha256 ? q->payload_sha256 : EMPTY_SHA256);
	headers[nh++] = sha;
	if (c->token_header)
		headers[nh++] = c->token_header;
	if (q->range)
		headers[nh++] = range = range_header(q->range);
	for (i = 0; i < 3 && q->extra[i]; i++)
		headers[nh++] = q->extra[i];
	headers[nh] = NULL;
	call.url = url;
	call.headers = headers;
	fill_call(c, q, &call, timeout);
	if (q->sink) {
		call.sink = q->range ? checked_sink : q->sink;
		call.sink_ud = q->range ? (void *)&rs : q->sink_ud;
	}
	r = kiln_http_client_do(c->http, &call, res, err);
	if (r == -EBADMSG && q->range)
		return kiln_error_set(err, r, "S3: %s %s: the server ignored the Range",
				      q->method, url);
	if (r < 0)
		return transport_error(q, r, err);
	if (res->status < 200 || res->status >= 300) {
		r = status_error(c, q, url, res, err);
		kiln_http_result_release(res);
		return r;
	}
	if (q->range && !res->content_range) {
		kiln_http_result_release(res);
		return kiln_error_set(err, -EBADMSG, "S3: %s %s: the server ignored the Range",
				      q->method, url);
	}
	return 0;
}

/* ---- calls ---- */

static int key_ok(const char *key, struct kiln_error **err)
{
	return kiln_s3_key_check(key, err) < 0 ? -EINVAL : 0;
}

static const struct kiln_s3_range *real_range(const struct kiln_s3_range *r)
{
	return r && (r->start > 0 || r->end != UINT64_MAX) ? r : NULL;
}

static int range_ok(const struct kiln_s3_range *r, struct kiln_error **err)
{
	if (r && r->end < r->start)
		return kiln_error_set(err, -EINVAL, "S3 range %llu-%llu is empty",
				      (unsigned long long)r->start,
				      (unsigned long long)r->end);
	return 0;
}

int kiln_s3_get(struct kiln_s3_client *c, const char *key,
		const struct kiln_s3_range *range, size_t limit, char **out,
		size_t *len, const struct kiln_s3_limits *lim,
		struct kiln_error **err)
{
	struct s3_req q = { .method = "GET", .key = key, .range = real_range(range),
			    .limit = limit ? limit : 1 };
	struct kiln_http_result res;
	int r;

	*out = NULL;
	*len = 0;
	if (key_ok(key, err) < 0 || range_ok(range, err) < 0)
		return -EINVAL;
	s3_call_limits(c, lim, &q.deadline, &q.connect_timeout_ms);
	r = s3_do(c, &q, &res, err);
	if (r < 0)
		return r;
	*out = res.body ? TAKE_PTR(res.body) : xstrdup("");
	*len = res.body_len;
	kiln_http_result_release(&res);
	return 0;
}

int kiln_s3_get_to(struct kiln_s3_client *c, const char *key,
		   const struct kiln_s3_range *range, kiln_s3_sink_fn sink,
		   void *ud, const struct kiln_s3_limits *lim,
		   struct kiln_error **err)
{
	struct s3_req q = { .method = "GET", .key = key, .range = real_range(range),
			    .sink = sink, .sink_ud = ud };
	struct kiln_http_result res;
	int r;

	if (key_ok(key, err) < 0 || range_ok(range, err) < 0)
		return -EINVAL;
	s3_call_limits(c, lim, &q.deadline, &q.connect_timeout_ms);
	r = s3_do(c, &q, &res, err);
	if (r == 0)
		kiln_http_result_release(&res);
	return r;
}

struct fd_sink {
	int fd;
	uint64_t written;
};

static int fd_sink(void *ud, const void *data, size_t len)
{
	struct fd_sink *s = ud;
	int r = kiln_write_full(s->fd, data, len);

	if (r == 0)
		s->written += len;
	return r;
}

int kiln_s3_get_fd(struct kiln_s3_client *c, const char *key,
		   const struct kiln_s3_range *range, int fd, uint64_t *written,
		   const struct kiln_s3_limits *lim, struct kiln_error **err)
{
	struct fd_sink s = { .fd = fd };
	int r = kiln_s3_get_to(c, key, range, fd_sink, &s, lim, err);

	if (written)
		*written = s.written;
	if (r < 0 && r != -ENOENT && err && !*err)
		return kiln_error_seterrno(err, r, "S3 GET %s: writing", key);
	return r;
}

int kiln_s3_head(struct kiln_s3_client *c, const char *key,
		 struct kiln_s3_object *out, const struct kiln_s3_limits *lim,
		 struct kiln_error **err)
{
	struct s3_req q = { .method = "HEAD", .key = key };
	struct kiln_http_result res;
	int r;

	memset(out, 0, sizeof(*out));
	if (key_ok(key, err) < 0)
		return -EINVAL;
	s3_call_limits(c, lim, &q.deadline, &q.connect_timeout_ms);
	r = s3_do(c, &q, &res, err);
	if (r < 0)
		return r;
	if (res.content_length < 0)
		r = kiln_error_set(err, -EBADMSG, "S3 HEAD %s: no Content-Length", key);
	else
		out->size = (uint64_t)res.content_length;
	if (r == 0 && res.etag)
		out->etag = kiln_s3_unquote(res.etag, strlen(res.etag));
	kiln_http_result_release(&res);
	return r;
}

int kiln_s3_put(struct kiln_s3_client *c, const char *key, const void *buf,
		size_t len, const struct kiln_s3_limits *lim,
		struct kiln_error **err)
{
	char hex[KILN_DIGEST_HEXLEN];
	struct s3_req q = { .method = "PUT", .key = key, .body = len ? buf : "",
			    .body_len = len, .payload_sha256 = hex };
	struct kiln_http_result res;
	int r;

	if (key_ok(key, err) < 0)
		return -EINVAL;
	s3_call_limits(c, lim, &q.deadline, &q.connect_timeout_ms);
	s3_sha256_hex(buf, len, hex);
	r = s3_do(c, &q, &res, err);
	if (r == 0)
		kiln_http_result_release(&res);
	return r;
}

/* SHA-256 of the first size bytes of fd, read with pread. */
static int hash_fd(int fd, uint64_t size, char *hex)
{
	struct kiln_hasher *h = kiln_hasher_new(KILN_DIGEST_SHA256);
	_cleanup_free_ char *buf = xmalloc(1u << 20);
	struct kiln_digest d;
	uint64_t off = 0;
	ssize_t k;
	int r = 0;

	while (off < size) {
		k = pread(fd, buf, size - off < (1u << 20) ? size - off : (1u << 20),
			  (off_t)off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			r = k < 0 ? -errno : -EIO;
			break;
		}
		kiln_hasher_update(h, buf, (size_t)k);
		off += (uint64_t)k;
	}
	kiln_hasher_final(h, &d);
	kiln_hasher_free(h);
	kiln_digest_hex(&d, hex);
	return r;
}

static int put_fd_single(struct kiln_s3_client *c, const char *key, int fd,
			 uint64_t size, const struct kiln_s3_limits *lim,
			 struct kiln_error **err)
{
	char hex[KILN_DIGEST_HEXLEN];
	struct s3_req q = { .method = "PUT", .key = key, .body_from_fd = true,
			    .fd = fd, .fd_size = size, .payload_sha256 = hex };
	struct kiln_http_result res;
	int r;

	s3_call_limits(c, lim, &q.deadline, &q.connect_timeout_ms);
	r = hash_fd(fd, size, hex);
	if (r < 0)
		return kiln_error_seterrno(err, r, "S3 PUT %s: reading the file", key);
	r = s3_do(c, &q, &res, err);
	if (r == 0)
		kiln_http_result_release(&res);
	return r;
}

int kiln_s3_put_fd(struct kiln_s3_client *c, const char *key, int fd,
		   const struct kiln_s3_limits *lim, struct kiln_error **err)
{
	struct stat st;

	if (key_ok(key, err) < 0)
		return -EINVAL;
	if (fstat(fd, &st) < 0)
		return kiln_error_seterrno(err, -errno, "S3 PUT %s: fstat", key);
	if ((uint64_t)st.st_size >= c->threshold)
		return kiln_s3_put_fd_multipart(c, key, fd, lim, err);
	return put_fd_single(c, key, fd, (uint64_t)st.st_size, lim, err);
}

int kiln_s3_touch(struct kiln_s3_client *c, const char *key,
		  const struct kiln_s3_limits *lim, struct kiln_error **err)
{
	struct kiln_strbuf src = KILN_STRBUF_INIT(SIZE_MAX / 2);
	_cleanup_free_ char *source = NULL;
	struct s3_req q = { .method = "PUT", .key = key, .body = "", .limit = 65536 };
	struct kiln_http_result res;
	int r;

	if (key_ok(key, err) < 0)
		return -EINVAL;
	(void)kiln_strbuf_addf(&src, "x-amz-copy-source: /%s/", c->bucket);
	(void)kiln_s3_uri_encode(&src, key, true);
	source = kiln_strbuf_detach(&src, NULL);
	q.extra[0] = source;
	q.extra[1] = "x-amz-metadata-directive: REPLACE";
	s3_call_limits(c, lim, &q.deadline, &q.connect_timeout_ms);
	r = s3_do(c, &q, &res, err);
	if (r < 0)
		return r;
	/* S3 may answer 200 and tell of a failure in the body. */
	if (!res.body || !memmem(res.body, res.body_len, "<CopyObjectResult", 17))
		r = kiln_error_set(err, -EIO, "S3 copy of %s onto itself: no CopyObjectResult%s%.200s",
				   key, res.body ? ": " : "", res.body ? res.body : "");
	kiln_http_result_release(&res);
	return r;
}

int kiln_s3_delete(struct kiln_s3_client *c, const char *key,
		   const struct kiln_s3_limits *lim, struct kiln_error **err)
{
	struct s3_req q = { .method = "DELETE", .key = key };
	struct kiln_http_result res;
	int r;

	if (key_ok(key, err) < 0)
		return -EINVAL;
	s3_call_limits(c, lim, &q.deadline, &q.connect_timeout_ms);
	r = s3_do(c, &q, &res, err);
	if (r == 0)
		kiln_http_result_release(&res);
	return r;
}

/* ---- listings ---- */

typedef int (*listing_parser)(const char *doc, size_t len,
			      struct kiln_s3_list *out, const char **why);

static int get_listing(struct kiln_s3_client *c, const char *query,
		       listing_parser parse, struct kiln_s3_list *out,
		       const struct kiln_s3_limits *lim, struct kiln_error **err)
{
	struct s3_req q = { .method = "GET", .query = query, .limit = KILN_S3_XML_LIMIT };
	struct kiln_http_result res;
	const char *why = NULL;
	int r;

	kiln_s3_list_init(out);
	s3_call_limits(c, lim, &q.deadline, &q.connect_timeout_ms);
	r = s3_do(c, &q, &res, err);
	if (r == -E2BIG)
		return kiln_error_set(err, -EBADMSG, "S3 listing of %s: larger than %u bytes",
				      c->name, KILN_S3_XML_LIMIT);
	if (r < 0)
		return r;
	r = parse(res.body ? res.body : "", res.body_len, out, &why);
	kiln_http_result_release(&res);
	if (r < 0) {
		kiln_s3_list_release(out);
		return kiln_error_set(err, -EBADMSG, "S3 listing of %s: bad answer: %s",
				      c->name, why);
	}
	return 0;
}

int kiln_s3_list(struct kiln_s3_client *c, const char *prefix,
		 const char *token, unsigned max_keys, struct kiln_s3_list *out,
		 const struct kiln_s3_limits *lim, struct kiln_error **err)
{
	char max[16];
	const char *pairs[8];
	size_t n = 0;
	_cleanup_free_ char *query = NULL;

	pairs[n++] = "list-type", pairs[n++] = "2";
	if (prefix && *prefix)
		pairs[n++] = "prefix", pairs[n++] = prefix;
	if (token && *token)
		pairs[n++] = "continuation-token", pairs[n++] = token;
	if (max_keys) {
		snprintf(max, sizeof(max), "%u", max_keys);
		pairs[n++] = "max-keys", pairs[n++] = max;
	}
	query = kiln_s3_query(pairs, n / 2);
	return get_listing(c, query, kiln_s3_parse_list, out, lim, err);
}

int kiln_s3_list_uploads(struct kiln_s3_client *c, const char *prefix,
			 struct kiln_s3_list *out,
			 const struct kiln_s3_limits *lim, struct kiln_error **err)
{
	const char *pairs[] = { "uploads", "", "prefix", prefix ? prefix : "" };
	_cleanup_free_ char *query = kiln_s3_query(pairs, prefix && *prefix ? 2 : 1);

	return get_listing(c, query, kiln_s3_parse_uploads, out, lim, err);
}
