/*
 * The OCI distribution client: references, the client object (endpoints,
 * schemes, authenticated requests), and pulling manifests and blobs.
 * Authentication state lives in registry-auth.c, pushing in
 * registry-push.c; requests go through proto's HTTP client.
 */
#include <ctype.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/log.h"
#include "basic/pool.h"
#include "basic/strbuf.h"
#include "basic/strv.h"
#include "registry/registry.h"

#define NAME_MAX_LEN 255
#define TAG_MAX_LEN 128
#define REF_MAX_LEN 4096
#define MANIFEST_TIMEOUT_MS 120000L
/* Registries may be far away: wait longer for a connection than kiln's API. */
#define CONNECT_TIMEOUT_MS 10000L
#define ERROR_MSG_MAX 300
#define DEFAULT_PARALLEL 4
#define MAX_PARALLEL 16u
#define MIN_SZ(a, b) ((a) < (b) ? (a) : (b))

static const char manifest_accept[] =
	"Accept: " KILN_MT_OCI_INDEX ", " KILN_MT_OCI_MANIFEST ", "
	KILN_MT_DOCKER_LIST ", " KILN_MT_DOCKER_MANIFEST;

/* ---- references ---- */

void kiln_registry_ref_release(struct kiln_registry_ref *r)
{
	if (!r)
		return;
	free(r->registry);
	free(r->repository);
	free(r->tag);
	memset(r, 0, sizeof(*r));
}

char *kiln_registry_ref_host(const char *ref)
{
	struct kiln_registry_ref r = { 0 };
	char *host = NULL;

	if (ref && strncmp(ref, "oci-layout://", 13) && kiln_registry_ref_parse(ref, &r, NULL) == 0)
		host = TAKE_PTR(r.registry);
	kiln_registry_ref_release(&r);
	return host;
}

void kiln_registry_ref_copy(struct kiln_registry_ref *dst,
			    const struct kiln_registry_ref *src)
{
	dst->registry = xstrdup(src->registry);
	dst->repository = xstrdup(src->repository);
	dst->tag = src->tag ? xstrdup(src->tag) : NULL;
	dst->digest = src->digest;
}

char *kiln_registry_ref_format(const struct kiln_registry_ref *r)
{
	char d[KILN_DIGEST_STRLEN] = "";

	if (kiln_digest_is_set(&r->digest))
		kiln_digest_fmt(&r->digest, d);
	return xasprintf("%s/%s%s%s%s%s", r->registry, r->repository,
			 r->tag ? ":" : "", r->tag ? r->tag : "", *d ? "@" : "", d);
}

static bool is_lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* [a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)* over s[0..n). */
static bool valid_path_component(const char *s, size_t n)
{
	size_t i = 0, sep;

	while (i < n) {
		if (!is_lower_alnum(s[i]))
			return false;
		while (i < n && is_lower_alnum(s[i]))
			i++;
		if (i == n)
			return true;
		sep = i;
		if (s[i] == '-') {
			while (i < n && s[i] == '-')
				i++;
		} else if (s[i] == '_') {
			i += (i + 1 < n && s[i + 1] == '_') ? 2 : 1;
		} else if (s[i] == '.') {
			i++;
		} else {
			return false;
		}
		if (i == n || i == sep)
			return false;
	}
	return n > 0;
}

static bool valid_path(const char *path)
{
	const char *p = path;
	size_t n;

	do {
		n = strcspn(p, "/");
		if (!valid_path_component(p, n))
			return false;
		p += n;
	} while (*p++ == '/');
	return true;
}

static bool valid_port(const char *s)
{
	size_t n = strspn(s, "0123456789");

	return n > 0 && n <= 5 && !s[n];
}

/* host[:port], host being dot-separated [A-Za-z0-9-] labels or [IPv6]. */
static bool valid_domain(const char *d)
{
	const char *p = d, *end;
	size_t n;

	if (*p == '[') {
		end = strchr(p, ']');
		if (!end || end == p + 1 ||
		    strspn(p + 1, "0123456789abcdefABCDEF:.") != (size_t)(end - p - 1))
			return false;
		p = end + 1;
		return !*p || (*p == ':' && valid_port(p + 1));
	}
	for (;;) {
		n = strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
			   "0123456789-");
		if (!n || p[0] == '-' || p[n - 1] == '-')
			return false;
		p += n;
		if (*p != '.')
			break;
		p++;
	}
	return !*p || (*p == ':' && valid_port(p + 1));
}

static bool valid_tag(const char *t)
{
	size_t n = strlen(t), i;

	if (!n || n > TAG_MAX_LEN || !(isalnum((unsigned char)t[0]) || t[0] == '_'))
		return false;
	for (i = 1; i < n; i++)
		if (!isalnum((unsigned char)t[i]) && !strchr("_.-", t[i]))
			return false;
	return true;
}

/* Docker: a first component with '.' or ':', or "localhost", is a host. */
static bool looks_like_host(const char *s, size_t n)
{
	return memchr(s, '.', n) || memchr(s, ':', n) ||
	       (n == 9 && !strncmp(s, "localhost", 9));
}

static void split_name(const char *name, char **domain, char **path)
{
	size_t n = strcspn(name, "/");

	if (name[n] == '/' && looks_like_host(name, n)) {
		*domain = xstrndup(name, n);
		*path = xstrdup(name + n + 1);
	} else if (!name[n]) {
		*domain = xstrdup(KILN_REGISTRY_DEFAULT_HOST);
		*path = xasprintf("library/%s", name);
	} else {
		*domain = xstrdup(KILN_REGISTRY_DEFAULT_HOST);
		*path = xstrdup(name);
	}
}

/* Cut "@digest" and ":tag" off copy (in place). */
static int split_suffixes(const char *s, char *copy, struct kiln_registry_ref *out,
			  struct kiln_error **err)
{
	char *at = strchr(copy, '@'), *colon, *slash;

	if (at) {
		*at++ = '\0';
		if (kiln_digest_parse(at, &out->digest) < 0)
			return kiln_error_set(err, -EINVAL, "image reference '%s': "
					      "invalid digest '%s' (expected "
					      "sha256:<64 lowercase hex>)", s, at);
	}
	colon = strrchr(copy, ':');
	slash = strrchr(copy, '/');
	if (colon && (!slash || colon > slash)) {
		*colon++ = '\0';
		if (!valid_tag(colon))
			return kiln_error_set(err, -EINVAL, "image reference '%s': "
					      "invalid tag '%s'", s, colon);
		out->tag = xstrdup(colon);
	}
	return 0;
}

static int check_name(const char *s, const struct kiln_registry_ref *out,
		      struct kiln_error **err)
{
	bool upper = false;
	const char *p;

	if (!valid_domain(out->registry))
		return kiln_error_set(err, -EINVAL, "image reference '%s': invalid "
				      "registry host '%s'", s, out->registry);
	for (p = out->repository; *p; p++)
		upper |= isupper((unsigned char)*p) != 0;
	if (upper || !valid_path(out->repository))
		return kiln_error_set(err, -EINVAL, "image reference '%s': invalid "
				      "repository name '%s'%s", s, out->repository,
				      upper ? " (must be lowercase)" : "");
	if (strlen(out->registry) + 1 + strlen(out->repository) > NAME_MAX_LEN)
		return kiln_error_set(err, -EINVAL, "image reference '%s': name "
				      "longer than %d characters", s, NAME_MAX_LEN);
	return 0;
}

int kiln_registry_ref_parse(const char *s, struct kiln_registry_ref *out,
			    struct kiln_error **err)
{
	_cleanup_free_ char *copy = NULL;
	int r;

	memset(out, 0, sizeof(*out));
	if (!*s || strlen(s) > REF_MAX_LEN || strstr(s, "://"))
		return kiln_error_set(err, -EINVAL, "image reference '%.200s': %s", s,
				      *s ? "not NAME[:TAG][@DIGEST]" : "empty");
	copy = xstrdup(s);
	r = split_suffixes(s, copy, out, err);
	if (r == 0 && !*copy)
		r = kiln_error_set(err, -EINVAL, "image reference '%s': empty "
				   "name", s);
	if (r == 0) {
		split_name(copy, &out->registry, &out->repository);
		r = check_name(s, out, err);
	}
	if (r < 0) {
		kiln_registry_ref_release(out);
		return r;
	}
	if (!out->tag && !kiln_digest_is_set(&out->digest))
		out->tag = xstrdup("latest");
	return 0;
}

/* ---- the client ---- */

enum scheme { SCHEME_UNDECIDED, SCHEME_HTTPS, SCHEME_HTTP };

struct host_scheme {
	char *registry;
	enum scheme scheme;
};

struct kiln_registry {
	struct kiln_http_client *http;
	struct kiln_registry_auth *auth;
	char **insecure, **secure, **endpoints;
	char *ca_file;
	unsigned low_speed_time_s;
	pthread_mutex_t lock; /* schemes */
	struct host_scheme *schemes;
	size_t n_schemes, a_schemes;
	uint64_t requests; /* atomic */
};

static char **strv_dup(const char *const *v)
{
	size_t n = 0, i;
	char **out;

	while (v && v[n])
		n++;
	out = xcalloc(n + 1, sizeof(*out));
	for (i = 0; i < n; i++)
		out[i] = xstrdup(v[i]);
	return out;
}


static bool strv_has(char **v, const char *s)
{
	size_t i;

	for (i = 0; v && v[i]; i++)
		if (!strcmp(v[i], s))
			return true;
	return false;
}

static int check_endpoints(const char *const *v, struct kiln_error **err)
{
	size_t i;

	for (i = 0; v && v[i]; i++) {
		const char *eq = strchr(v[i], '=');

		if (!eq || eq == v[i] || !valid_domain(eq + 1))
			return kiln_error_set(err, -EINVAL, "registry endpoint '%s': "
					      "expected REGISTRY=HOST[:PORT]", v[i]);
	}
	return 0;
}

int kiln_registry_new(const struct kiln_registry_options *opts,
		      struct kiln_registry **out, struct kiln_error **err)
{
	const struct kiln_registry_options none = { 0 };
	struct kiln_registry *r;
	int rc;

	if (!opts)
		opts = &none;
	rc = check_endpoints(opts->endpoints, err);
	if (rc < 0)
		return rc;
	r = xcalloc(1, sizeof(*r));
	rc = kiln_registry_auth_new(opts->docker_config, &r->auth, err);
	if (rc < 0) {
		free(r);
		return rc;
	}
	pthread_mutex_init(&r->lock, NULL);
	r->http = kiln_http_client_new(&(struct kiln_http_client_options){
		.connect_timeout_ms = CONNECT_TIMEOUT_MS,
	});
	r->insecure = strv_dup(opts->insecure);
	r->secure = strv_dup(opts->secure);
	r->endpoints = strv_dup(opts->endpoints);
	r->ca_file = opts->ca_file ? xstrdup(opts->ca_file) : NULL;
	r->low_speed_time_s = opts->low_speed_time_s;
	*out = r;
	return 0;
}

void kiln_registry_free(struct kiln_registry *r)
{
	size_t i;

	if (!r)
		return;
	kiln_registry_auth_free(r->auth);
	kiln_http_client_free(r->http);
	kiln_strv_free(r->insecure, kiln_strv_len(r->insecure));
	kiln_strv_free(r->secure, kiln_strv_len(r->secure));
	kiln_strv_free(r->endpoints, kiln_strv_len(r->endpoints));
	free(r->ca_file);
	for (i = 0; i < r->n_schemes; i++)
		free(r->schemes[i].registry);
	free(r->schemes);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

void kiln_registry_set_credentials(struct kiln_registry *r,
				   const char *registry, const char *user,
				   const char *password)
{
	kiln_registry_auth_set_credentials(r->auth, registry, user, password);
}

int kiln_registry_credentials(struct kiln_registry *r, const char *registry, char **user,
			      char **password)
{
	return kiln_registry_auth_credentials(r->auth, registry, user, password);
}

/* ---- a cluster build's client's credentials ---- */

static bool host_ok(const char *h)
{
	size_t n = 0;

	for (; *h; h++, n++)
		if (*h <= ' ' || *h > '~' || n >= 255)
			return false;
	return n > 0;
}

int kiln_registry_credentials_check(const json_t *creds, struct kiln_error **err)
{
	const char *host;
	json_t *v;

	if (!creds)
		return 0;
	if (!json_is_object(creds) || json_object_size(creds) > KILN_REGISTRY_MAX_CREDENTIALS)
		return kiln_error_set(err, -EINVAL, "\"credentials\": expected an object of at most %u registries",
				      KILN_REGISTRY_MAX_CREDENTIALS);
	json_object_foreach((json_t *)creds, host, v) {
		const char *u = json_string_value(json_object_get(v, "username"));
		const char *p = json_string_value(json_object_get(v, "password"));

		/* A value is never echoed: it is a secret. */
		if (!host_ok(host) || !u || !p || strlen(u) > KILN_REGISTRY_CREDENTIAL_MAX ||
		    strlen(p) > KILN_REGISTRY_CREDENTIAL_MAX)
			return kiln_error_set(err, -EINVAL,
					      "\"credentials\": a registry without a username and password of at most %u bytes",
					      KILN_REGISTRY_CREDENTIAL_MAX);
	}
	return 0;
}

int kiln_registry_new_with(const struct kiln_registry_options *opts, const json_t *creds,
			   const char *const *hosts, size_t n, struct kiln_registry **out,
			   struct kiln_error **err)
{
	const char *host;
	json_t *v;
	size_t i;
	int r = kiln_registry_new(opts, out, err);

	json_object_foreach(r == 0 ? (json_t *)creds : NULL, host, v) {
		for (i = 0; hosts && i < n && strcmp(hosts[i], host); i++)
			;
		if (!hosts || i < n)
			kiln_registry_set_credentials(*out, host,
						      json_string_value(json_object_get(v, "username")),
						      json_string_value(json_object_get(v, "password")));
	}
	return r;
}

void kiln_registry_credentials_zero(json_t *creds)
{
	const char *host;
	json_t *v;

	json_object_foreach(creds, host, v) {
		json_t *p = json_object_get(v, "password");

		if (json_is_string(p))
			explicit_bzero((char *)json_string_value(p), json_string_length(p));
	}
}

void kiln_registry_get_stats(struct kiln_registry *r,
			     struct kiln_registry_stats *out)
{
	out->requests = __atomic_load_n(&r->requests, __ATOMIC_RELAXED);
	out->token_fetches = kiln_registry_auth_token_fetches(r->auth);
}

/* ---- endpoints and schemes ---- */

const char *kiln_registry_endpoint(const struct kiln_registry *r,
				   const char *registry)
{
	size_t n = strlen(registry), i;

	for (i = 0; r->endpoints[i]; i++)
		if (!strncmp(r->endpoints[i], registry, n) &&
		    r->endpoints[i][n] == '=')
			return r->endpoints[i] + n + 1;
	if (!strcmp(registry, KILN_REGISTRY_DEFAULT_HOST))
		return KILN_REGISTRY_DOCKER_HUB_API;
	return registry;
}


static bool is_loopback(const char *host)
{
	size_t n;

	if (!strncmp(host, "[::1]", 5))
		return !host[5] || host[5] == ':';
	n = strcspn(host, ":");
	if (n == 9 && !strncmp(host, "localhost", 9))
		return true;
	return n > 4 && !strncmp(host, "127.", 4) &&
	       strspn(host, "0123456789.") == n;
}

static enum scheme *scheme_slot(struct kiln_registry *r, const char *registry)
{
	struct host_scheme *h;
	size_t i;

	for (i = 0; i < r->n_schemes; i++)
		if (!strcmp(r->schemes[i].registry, registry))
			return &r->schemes[i].scheme;
	r->schemes = xgrow(r->schemes, &r->a_schemes, r->n_schemes + 1,
			   sizeof(*r->schemes));
	h = &r->schemes[r->n_schemes++];
	h->registry = xstrdup(registry);
	h->scheme = SCHEME_UNDECIDED;
	return &h->scheme;
}

/*
 * Secure-listed: https. Loopback: http. Insecure-listed: https without
 * verification, falling back to http once (remembered). Else https.
 */
static enum scheme scheme_of(struct kiln_registry *r, const char *registry)
{
	enum scheme s;

	if (strv_has(r->secure, registry))
		return SCHEME_HTTPS;
	if (is_loopback(kiln_registry_endpoint(r, registry)))
		return SCHEME_HTTP;
	if (!strv_has(r->insecure, registry))
		return SCHEME_HTTPS;
	pthread_mutex_lock(&r->lock);
	s = *scheme_slot(r, registry);
	pthread_mutex_unlock(&r->lock);
	return s;
}

static void scheme_decide(struct kiln_registry *r, const char *registry,
			  enum scheme s)
{
	pthread_mutex_lock(&r->lock);
	*scheme_slot(r, registry) = s;
	pthread_mutex_unlock(&r->lock);
}

/* ---- status errors ---- */

static const char *reason(long status)
{
	switch (status) {
	case 400: return " Bad Request";
	case 401: return " Unauthorized";
	case 403: return " Forbidden";
	case 404: return " Not Found";
	case 405: return " Method Not Allowed";
	case 413: return " Payload Too Large";
	case 416: return " Range Not Satisfiable";
	case 429: return " Too Many Requests";
	case 500: return " Internal Server Error";
	case 502: return " Bad Gateway";
	case 503: return " Service Unavailable";
	default: return "";
	}
}

int kiln_registry_status_code(long status)
{
	switch (status) {
	case 400: return -EINVAL;
	case 401: case 403: return -EACCES;
	case 404: return -ENOENT;
	case 405: return -EOPNOTSUPP;
	case 413: return -EFBIG;
	case 429: return -EBUSY;
	default: return status >= 500 ? -EIO : -EPROTO;
	}
}

/* Printable ASCII of text, at most ERROR_MSG_MAX bytes, one line. */
static void add_sanitized(struct kiln_strbuf *sb, const char *text, size_t len)
{
	size_t i;

	for (i = 0; i < len && i < ERROR_MSG_MAX; i++) {
		char c = text[i];

		if (c == '\n' || c == '\r' || c == '\t')
			c = ' ';
		if (c >= 0x20 && c < 0x7f)
			(void)kiln_strbuf_addch(sb, c);
	}
}

static void add_json_errors(struct kiln_strbuf *sb, json_t *errors)
{
	json_t *e;
	size_t i;

	json_array_foreach(errors, i, e) {
		const char *code = json_string_value(json_object_get(e, "code"));
		const char *msg = json_string_value(json_object_get(e, "message"));
		_cleanup_free_ char *one = xasprintf("%s%s%s", code ? code : "",
						     code && msg ? ": " : "",
						     msg ? msg : "");

		(void)kiln_strbuf_adds(sb, i ? "; " : "");
		add_sanitized(sb, one, strlen(one));
		if (i == 3)
			break;
	}
}

/*
 * What an error answer says: only the distribution spec's "errors" (code
 * and message, sanitized, the first four), and a token server's
 * "details". Any other body is not shown, only its size: a registry
 * address a client chose may be a service that is not a registry, and its
 * answers must not come back to the client through an error (issue 14).
 */
static void add_body_message(struct kiln_strbuf *sb,
			     const struct kiln_http_result *resp)
{
	json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
	json_t *errors = json_object_get(j, "errors");
	const char *s = json_string_value(json_object_get(j, "details"));

	if (json_is_array(errors) && json_array_size(errors)) {
		(void)kiln_strbuf_adds(sb, ": ");
		add_json_errors(sb, errors);
	} else if (s) {
		(void)kiln_strbuf_adds(sb, ": ");
		add_sanitized(sb, s, strlen(s));
	} else if (resp->body_len) {
		char size[96];

		snprintf(size, sizeof(size), " (a body of %zu bytes that is not a registry error, not shown)",
			 resp->body_len);
		(void)kiln_strbuf_adds(sb, size);
	}
	json_decref(j);
}

int kiln_registry_status_error(struct kiln_error **err, int code,
			       const char *registry, const char *what,
			       const struct kiln_http_result *resp)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(4096);

	add_body_message(&sb, resp);
	return kiln_error_set(err, code, "registry %s: %s: HTTP %ld%s%s",
			      registry, what, resp->status, reason(resp->status),
			      kiln_strbuf_str(&sb));
}

/* ---- authenticated requests ---- */

/*
 * Every request to a registry, counted. Bodies go as uploads: streamed,
 * rewindable for an auth retry or a redirect, no default Content-Type and
 * no "Expect: 100-continue" (registries answer POST and PUT at once).
 */
static int http_send(struct kiln_registry *r, struct kiln_http_call *req,
		     struct kiln_http_result *resp, struct kiln_error **err)
{
	req->upload = true;
	__atomic_fetch_add(&r->requests, 1, __ATOMIC_RELAXED);
	return kiln_http_client_do(r->http, req, resp, err);
}

static char *full_url(struct kiln_registry *r, const char *registry,
		      const char *url, enum scheme s)
{
	if (url[0] != '/')
		return xstrdup(url);
	return xasprintf("%s://%s%s", s == SCHEME_HTTP ? "http" : "https",
			 kiln_registry_endpoint(r, registry), url);
}

/* Undecided insecure host: https was tried (rc); maybe http, then decide. */
static int fall_back(struct kiln_registry *r, const char *registry,
		     struct kiln_http_call *req, struct kiln_http_result *resp,
		     int rc, struct kiln_error **err)
{
	_cleanup_free_ char *url = NULL;
	const char *https_url = req->url;

	if (rc == 0) {
		scheme_decide(r, registry, SCHEME_HTTPS);
		return 0;
	}
	log_debug("registry %s: https failed, trying http", registry);
	url = xasprintf("http://%s", https_url + strlen("https://"));
	req->url = url;
	rc = http_send(r, req, resp, err);
	req->url = https_url;
	if (rc == 0)
		scheme_decide(r, registry, SCHEME_HTTP);
	return rc;
}

/*
 * Is an absolute URL (an upload Location, say) the registry's own endpoint,
 * same scheme and host:port? Only then do credentials go with it, as in
 * Docker and containerd: a registry must not be able to send them, or the
 * data, to another host.
 */
static bool same_origin(struct kiln_registry *r, const char *registry, const char *url,
			enum scheme s)
{
	const char *ep = kiln_registry_endpoint(r, registry), *rest;
	size_t n = strlen(ep);

	if (!strncmp(url, "https://", 8) && s != SCHEME_HTTP)
		rest = url + 8;
	else if (!strncmp(url, "http://", 7) && s == SCHEME_HTTP)
		rest = url + 7;
	else
		return false;
	return !strncmp(rest, ep, n) && (rest[n] == '/' || rest[n] == '?' || rest[n] == '\0');
}

/* A request to a foreign absolute URL: no credentials, normal TLS checks. */
static int send_foreign(struct kiln_registry *r, struct kiln_http_call *req,
			struct kiln_http_result *resp, struct kiln_error **err)
{
	req->tls_noverify = false;
	req->ca_file = r->ca_file;
	req->low_speed_time_s = r->low_speed_time_s;
	return http_send(r, req, resp, err);
}

/* One request with the current authorization, scheme fallback included. */
static int send_once(struct kiln_registry *r, const char *registry,
		     const char *scope, struct kiln_http_call *req,
		     struct kiln_http_result *resp, struct kiln_error **err)
{
	struct kiln_registry_auth_transport t = {
		.http = r->http, .ca_file = r->ca_file,
		.low_speed_time_s = r->low_speed_time_s,
		.tls_noverify = strv_has(r->insecure, registry),
	};
	struct kiln_registry_authz z;
	const char *path = req->url;
	enum scheme s = scheme_of(r, registry);
	_cleanup_free_ char *url = full_url(r, registry, path, s);
	int rc;

	if (path[0] != '/' && !same_origin(r, registry, path, s))
		return send_foreign(r, req, resp, err);
	rc = kiln_registry_auth_prepare(r->auth, &t, registry, scope, &z, err);
	if (rc < 0)
		return rc;
	req->user = z.user;
	req->password = z.password;
	req->token = z.bearer;
	req->url = url;
	req->tls_noverify = t.tls_noverify;
	req->ca_file = r->ca_file;
	req->low_speed_time_s = r->low_speed_time_s;
	rc = http_send(r, req, resp, s == SCHEME_UNDECIDED && path[0] == '/' ? NULL : err);
	if (s == SCHEME_UNDECIDED && path[0] == '/')
		rc = fall_back(r, registry, req, resp, rc, err);
	req->url = path;
	req->user = req->password = req->token = NULL;
	kiln_registry_authz_release(&z);
	return rc;
}

static int unauthorized(const struct kiln_registry_ref *ref,
			struct kiln_http_result *resp, const struct kiln_error *why,
			struct kiln_error **err)
{
	_cleanup_error_ struct kiln_error *e = NULL;
	_cleanup_free_ char *what = xasprintf("repository %s", ref->repository);

	kiln_registry_status_error(&e, -EACCES, ref->registry, what, resp);
	kiln_http_result_release(resp);
	return kiln_error_set(err, -EACCES, "%s%s%s%s", e->msg, why ? " (" : "",
			      why ? why->msg : "", why ? ")" : "");
}

int kiln_registry_request(struct kiln_registry *r,
			  const struct kiln_registry_ref *ref, const char *scope,
			  struct kiln_http_call *req, struct kiln_http_result *resp,
			  struct kiln_error **err)
{
	_cleanup_error_ struct kiln_error *why = NULL;
	int attempt, rc;

	for (attempt = 0;; attempt++) {
		rc = send_once(r, ref->registry, scope, req, resp, err);
		if (rc < 0 || resp->status != 401)
			return rc;
		if (attempt == 1)
			break;
		rc = kiln_registry_auth_challenge(r->auth, ref->registry, scope,
						  resp->www_authenticate, &why);
		if (rc < 0)
			break;
		kiln_http_result_release(resp);
	}
	return unauthorized(ref, resp, why, err);
}

/* ---- pulling ---- */

static char *pull_scope(const struct kiln_registry_ref *ref)
{
	return xasprintf("repository:%s:pull", ref->repository);
}

void kiln_registry_manifest_release(struct kiln_registry_manifest *m)
{
	if (!m)
		return;
	free(m->data);
	free(m->media_type);
	memset(m, 0, sizeof(*m));
}

/* "REPO:TAG" or "REPO@DIGEST", for messages. */
static char *manifest_what(const struct kiln_registry_ref *ref,
			   const char *reference)
{
	return xasprintf("manifest %s%s%s", ref->repository,
			 strncmp(reference, "sha256:", 7) ? ":" : "@", reference);
}

static char *media_type_of(const struct kiln_http_result *resp, const char *data,
			   size_t len)
{
	const char *ct = resp->content_type;
	json_t *j;
	char *mt = NULL;

	if (ct && strncmp(ct, "application/json", 16) &&
	    strncmp(ct, "text/plain", 10))
		return xstrndup(ct, strcspn(ct, "; "));
	j = json_loadb(data, len, 0, NULL);
	if (json_string_value(json_object_get(j, "mediaType")))
		mt = xstrdup(json_string_value(json_object_get(j, "mediaType")));
	else if (json_is_array(json_object_get(j, "manifests")))
		mt = xstrdup(KILN_MT_OCI_INDEX);
	else
		mt = xstrdup(KILN_MT_OCI_MANIFEST);
	json_decref(j);
	return mt;
}

static int verify_manifest(const struct kiln_registry_ref *ref,
			   const char *what, const struct kiln_digest *want,
			   const struct kiln_http_result *resp,
			   const struct kiln_digest *got, struct kiln_error **err)
{
	struct kiln_digest hdr;

	if (want && !kiln_digest_eq(want, got))
		return kiln_error_set(err, -EBADMSG, "registry %s: %s: content is "
				      "%s", ref->registry, what,
				      KILN_DIGEST_STR(got));
	if (resp->docker_digest && kiln_digest_parse(resp->docker_digest, &hdr) == 0 &&
	    !kiln_digest_eq(&hdr, got))
		return kiln_error_set(err, -EBADMSG, "registry %s: %s: "
				      "Docker-Content-Digest says %s but the content "
				      "is %s", ref->registry, what,
				      resp->docker_digest, KILN_DIGEST_STR(got));
	return 0;
}

static int manifest_response(const struct kiln_registry_ref *ref,
			     const char *what, const struct kiln_digest *want,
			     struct kiln_http_result *resp,
			     struct kiln_registry_manifest *out,
			     struct kiln_error **err)
{
	int rc;

	if (resp->status != 200)
		return kiln_registry_status_error(err,
						  kiln_registry_status_code(resp->status),
						  ref->registry, what, resp);
	kiln_digest_buf(resp->body, resp->body_len, &out->digest);
	rc = verify_manifest(ref, what, want, resp, &out->digest, err);
	if (rc < 0)
		return rc;
	out->media_type = media_type_of(resp, resp->body, resp->body_len);
	out->len = resp->body_len;
	out->data = TAKE_PTR(resp->body);
	return 0;
}

int kiln_registry_get_manifest(struct kiln_registry *r,
			       const struct kiln_registry_ref *ref,
			       const struct kiln_digest *digest,
			       struct kiln_registry_manifest *out,
			       struct kiln_error **err)
{
	const char *hdrs[] = { manifest_accept, NULL };
	char dbuf[KILN_DIGEST_STRLEN];
	const char *reference = ref->tag;
	_cleanup_free_ char *scope = pull_scope(ref), *path = NULL, *what = NULL;
	struct kiln_http_result resp;
	struct kiln_http_call req = {
		.method = "GET", .headers = hdrs, .follow = true,
		.timeout_ms = MANIFEST_TIMEOUT_MS,
		.limit = KILN_REGISTRY_MANIFEST_LIMIT,
	};
	int rc;

	memset(out, 0, sizeof(*out));
	if (!digest && kiln_digest_is_set(&ref->digest))
		digest = &ref->digest;
	if (digest)
		reference = kiln_digest_fmt(digest, dbuf);
	path = xasprintf("/v2/%s/manifests/%s", ref->repository, reference);
	what = manifest_what(ref, reference);
	req.url = path;
	rc = kiln_registry_request(r, ref, scope, &req, &resp, err);
	if (rc < 0) {
		kiln_error_prefix(err, "%s", what);
		return rc;
	}
	rc = manifest_response(ref, what, digest, &resp, out, err);
	kiln_http_result_release(&resp);
	if (rc < 0)
		kiln_registry_manifest_release(out);
	return rc;
}

/* Streaming a blob into a store writer. */
struct blob_sink {
	struct kiln_store_writer *w;
	uint64_t got;
	int64_t size;
};

static int blob_sink(void *ud, const void *data, size_t len)
{
	struct blob_sink *b = ud;

	b->got += len;
	if (b->size >= 0 && b->got > (uint64_t)b->size)
		return -EFBIG;
	return kiln_store_writer_write(b->w, data, len);
}

static char *blob_what(const struct kiln_registry_ref *ref,
		       const struct kiln_digest *d)
{
	return xasprintf("blob %s@%s", ref->repository, KILN_DIGEST_STR(d));
}

static int blob_result(const struct kiln_registry_ref *ref, const char *what,
		       const struct kiln_http_result *resp, struct blob_sink *b,
		       int rc, struct kiln_error **err)
{
	if (rc == -EFBIG)
		return kiln_error_set(err, rc, "registry %s: %s: more than the "
				      "%lld bytes its descriptor says",
				      ref->registry, what, (long long)b->size);
	if (rc < 0 && err && !*err) /* the sink failed: the store said why */
		return kiln_error_seterrno(err, rc, "registry %s: %s: storing",
					   ref->registry, what);
	if (rc < 0) {
		kiln_error_prefix(err, "%s", what);
		return rc;
	}
	if (resp->status != 200)
		return kiln_registry_status_error(err,
						  kiln_registry_status_code(resp->status),
						  ref->registry, what, resp);
	if (b->size >= 0 && b->got != (uint64_t)b->size)
		return kiln_error_set(err, -EBADMSG, "registry %s: %s: %llu bytes, "
				      "its descriptor says %lld", ref->registry,
				      what, (unsigned long long)b->got,
				      (long long)b->size);
	return 0;
}

static int fetch_into(struct kiln_registry *r,
		      const struct kiln_registry_ref *ref,
		      const struct kiln_digest *digest, struct blob_sink *b,
		      struct kiln_error **err)
{
	_cleanup_free_ char *scope = pull_scope(ref), *what = blob_what(ref, digest);
	_cleanup_free_ char *path = xasprintf("/v2/%s/blobs/%s", ref->repository,
					      KILN_DIGEST_STR(digest));
	struct kiln_http_result resp;
	struct kiln_http_call req = {
		.method = "GET", .url = path, .follow = true,
		.sink = blob_sink, .sink_ud = b,
	};
	int rc;

	rc = kiln_registry_request(r, ref, scope, &req, &resp, err);
	rc = blob_result(ref, what, &resp, b, rc, err);
	kiln_http_result_release(&resp);
	return rc;
}

int kiln_registry_fetch_blob(struct kiln_registry *r,
			     const struct kiln_registry_ref *ref,
			     const struct kiln_digest *digest, int64_t size,
			     struct kiln_store *s, uint64_t *fetched,
			     struct kiln_error **err)
{
	struct blob_sink b = { .size = size };
	int rc;

	if (fetched)
		*fetched = 0;
	if (kiln_store_has(s, digest))
		return 0;
	rc = kiln_store_writer_begin(s, &b.w, err);
	if (rc < 0)
		return rc;
	rc = fetch_into(r, ref, digest, &b, err);
	if (rc < 0) {
		kiln_store_writer_abort(b.w);
		return rc;
	}
	rc = kiln_store_writer_commit(b.w, digest, NULL, err);
	if (rc < 0)
		kiln_error_prefix(err, "registry %s: blob %s", ref->registry,
				  ref->repository);
	else if (fetched)
		*fetched = b.got;
	return rc;
}

/* Parallel fetches: one pool item per blob. */
struct fetch_pool {
	struct kiln_registry *r;
	const struct kiln_registry_ref *ref;
	const struct kiln_registry_blob *blobs;
	struct kiln_store *s;
	uint64_t fetched; /* atomic: bytes, summed over the threads */
};

static int fetch_one(void *ud, size_t i, unsigned slot, struct kiln_error **err)
{
	struct fetch_pool *p = ud;
	uint64_t got = 0;
	int rc = kiln_registry_fetch_blob(p->r, p->ref, &p->blobs[i].digest,
					  p->blobs[i].size, p->s, &got, err);

	__atomic_fetch_add(&p->fetched, got, __ATOMIC_RELAXED);
	return rc;
}

int kiln_registry_fetch_blobs(struct kiln_registry *r,
			      const struct kiln_registry_ref *ref,
			      const struct kiln_registry_blob *blobs, size_t n,
			      unsigned parallel, struct kiln_store *s,
			      uint64_t *fetched, struct kiln_error **err)
{
	struct fetch_pool p = { .r = r, .ref = ref, .blobs = blobs, .s = s };
	int rc;

	if (!parallel)
		parallel = DEFAULT_PARALLEL;
	rc = kiln_pool_run(n, MIN_SZ(parallel, MAX_PARALLEL), fetch_one, &p, err);
	if (fetched)
		*fetched = p.fetched;
	return rc;
}

int kiln_registry_get_blob_buf(struct kiln_registry *r,
			       const struct kiln_registry_ref *ref,
			       const struct kiln_digest *digest, size_t limit,
			       char **data, size_t *len,
			       struct kiln_error **err)
{
	_cleanup_free_ char *scope = pull_scope(ref), *what = blob_what(ref, digest);
	_cleanup_free_ char *path = xasprintf("/v2/%s/blobs/%s", ref->repository,
					      KILN_DIGEST_STR(digest));
	struct kiln_http_result resp;
	struct kiln_http_call req = {
		.method = "GET", .url = path, .follow = true, .limit = limit,
		.timeout_ms = MANIFEST_TIMEOUT_MS,
	};
	struct kiln_digest got;
	int rc;

	rc = kiln_registry_request(r, ref, scope, &req, &resp, err);
	if (rc < 0) {
		kiln_error_prefix(err, "%s", what);
		return rc;
	}
	if (resp.status != 200) {
		rc = kiln_registry_status_error(err,
						kiln_registry_status_code(resp.status),
						ref->registry, what, &resp);
	} else {
		kiln_digest_buf(resp.body, resp.body_len, &got);
		if (!kiln_digest_eq(&got, digest))
			rc = kiln_error_set(err, -EBADMSG, "registry %s: %s: content "
					    "is %s", ref->registry, what,
					    KILN_DIGEST_STR(&got));
	}
	if (rc == 0) {
		*len = resp.body_len;
		*data = TAKE_PTR(resp.body);
	}
	kiln_http_result_release(&resp);
	return rc;
}

int kiln_registry_blob_exists(struct kiln_registry *r,
			      const struct kiln_registry_ref *ref,
			      const struct kiln_digest *digest, uint64_t *size,
			      struct kiln_error **err)
{
	_cleanup_free_ char *scope = pull_scope(ref);

	return kiln_registry_head_blob(r, ref, scope, digest, size, err);
}

int kiln_registry_head_blob(struct kiln_registry *r,
			    const struct kiln_registry_ref *ref,
			    const char *scope, const struct kiln_digest *digest,
			    uint64_t *size, struct kiln_error **err)
{
	_cleanup_free_ char *what = blob_what(ref, digest);
	_cleanup_free_ char *path = xasprintf("/v2/%s/blobs/%s", ref->repository,
					      KILN_DIGEST_STR(digest));
	struct kiln_http_result resp;
	struct kiln_http_call req = {
		.method = "HEAD", .url = path, .timeout_ms = MANIFEST_TIMEOUT_MS,
	};
	int rc;

	rc = kiln_registry_request(r, ref, scope, &req, &resp, err);
	if (rc < 0) {
		kiln_error_prefix(err, "%s", what);
		return rc;
	}
	if (resp.status == 200) {
		rc = 1;
		if (size)
			*size = resp.content_length >= 0 ? (uint64_t)resp.content_length : 0;
	} else if (resp.status != 404) {
		rc = kiln_registry_status_error(err,
						kiln_registry_status_code(resp.status),
						ref->registry, what, &resp);
	}
	kiln_http_result_release(&resp);
	return rc;
}
