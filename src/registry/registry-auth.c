/*
 * Registry authentication: credentials from a docker config file (or set
 * by the caller), WWW-Authenticate challenges, and bearer tokens cached per
 * (registry, scope).
 *
 * Per registry host the state is
 *   UNKNOWN --401 Basic--> BASIC   (credentials sent with every request)
 *   UNKNOWN --401 Bearer-> BEARER  (realm/service kept; a token per scope)
 * and a later challenge of the other kind moves it there. Tokens expire
 * after expires_in (default 60 s) less a margin, or on a 401.
 */
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "basic/alloc.h"
#include "basic/base64.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/strbuf.h"
#include "registry/registry.h"

#define CONFIG_LIMIT (4u << 20)
#define TOKEN_TIMEOUT_MS 60000L
#define TOKEN_DEFAULT_TTL_S 60
#define TOKEN_MARGIN_S 10
#define MAX_TOKENS 256

enum host_mode { MODE_UNKNOWN, MODE_BASIC, MODE_BEARER };

struct cred {
	char *registry, *user, *password;
};

struct host {
	char *registry;
	enum host_mode mode;
	char *realm, *service;
};

struct token {
	char *registry, *scope, *token;
	uint64_t expires_ns; /* monotonic */
};

struct kiln_registry_auth {
	pthread_mutex_t lock;
	struct cred *creds;
	size_t n_creds, a_creds;
	struct host *hosts;
	size_t n_hosts, a_hosts;
	struct token *tokens;
	size_t n_tokens, a_tokens;
	uint64_t token_fetches;
};

/* ---- credentials ---- */

static struct cred *find_cred(struct kiln_registry_auth *a, const char *reg)
{
	size_t i;

	for (i = 0; i < a->n_creds; i++)
		if (!strcmp(a->creds[i].registry, reg))
			return &a->creds[i];
	return NULL;
}

static void cred_set(struct kiln_registry_auth *a, const char *reg,
		     const char *user, const char *password)
{
	struct cred *c = find_cred(a, reg);

	if (!c) {
		a->creds = xgrow(a->creds, &a->a_creds, a->n_creds + 1,
				 sizeof(*a->creds));
		c = &a->creds[a->n_creds++];
		c->registry = xstrdup(reg);
	} else {
		free(c->user);
		free(c->password);
	}
	c->user = xstrdup(user);
	c->password = xstrdup(password ? password : "");
}

void kiln_registry_auth_set_credentials(struct kiln_registry_auth *a,
					const char *registry, const char *user,
					const char *password)
{
	pthread_mutex_lock(&a->lock);
	cred_set(a, registry, user, password);
	pthread_mutex_unlock(&a->lock);
}

int kiln_registry_auth_credentials(struct kiln_registry_auth *a,
				   const char *registry, char **user,
				   char **password)
{
	struct cred *c;
	int r = -ENOENT;

	pthread_mutex_lock(&a->lock);
	c = find_cred(a, registry);
	if (c) {
		*user = xstrdup(c->user);
		*password = xstrdup(c->password);
		r = 0;
	}
	pthread_mutex_unlock(&a->lock);
	return r;
}

/*
 * A config key is a host, or a URL ("https://HOST/v1/"). Hosts under
 * docker.io (the legacy index URL) count as docker.io.
 */
static char *config_key_host(const char *key)
{
	const char *p = strstr(key, "://");
	const char *host = p ? p + 3 : key;
	size_t n = strcspn(host, "/");
	const char *dflt = KILN_REGISTRY_DEFAULT_HOST;
	size_t dn = strlen(dflt);

	if (n > dn && host[n - dn - 1] == '.' &&
	    !strncmp(host + n - dn, dflt, dn))
		return xstrdup(dflt);
	return xstrndup(host, n);
}

static int entry_userpass(const char *path, const char *key, json_t *e,
			  char **user, char **pass, struct kiln_error **err)
{
	const char *auth = json_string_value(json_object_get(e, "auth"));
	_cleanup_free_ char *dec = NULL;
	char *colon;
	size_t len;

	if (auth && *auth) {
		dec = kiln_base64_decode(auth, &len);
		colon = dec ? memchr(dec, ':', len) : NULL;
		if (!colon || strlen(dec) != len)
			return kiln_error_set(err, -EINVAL, "docker config %s: "
					      "auths.\"%s\".auth is not base64 of "
					      "USER:PASSWORD", path, key);
		*colon = '\0';
		*user = xstrdup(dec);
		*pass = xstrdup(colon + 1);
		return 0;
	}
	auth = json_string_value(json_object_get(e, "username"));
	if (!auth)
		return -ENOENT;
	*user = xstrdup(auth);
	auth = json_string_value(json_object_get(e, "password"));
	*pass = xstrdup(auth ? auth : "");
	return 0;
}

static int load_auths(struct kiln_registry_auth *a, const char *path,
		      json_t *auths, struct kiln_error **err)
{
	const char *key;
	json_t *e;

	json_object_foreach(auths, key, e) {
		_cleanup_free_ char *host = NULL, *user = NULL, *pass = NULL;
		int r;

		if (!json_is_object(e))
			continue;
		r = entry_userpass(path, key, e, &user, &pass, err);
		if (r == -ENOENT) {
			log_debug("docker config %s: no usable credentials for %s "
				  "(identity tokens are not supported)", path, key);
			continue;
		}
		if (r < 0)
			return r;
		host = config_key_host(key);
		cred_set(a, host, user, pass);
	}
	return 0;
}

static char *default_config_path(void)
{
	const char *dir = getenv("DOCKER_CONFIG");
	const char *home = getenv("HOME");

	if (dir && *dir)
		return xasprintf("%s/config.json", dir);
	if (home && *home)
		return xasprintf("%s/.docker/config.json", home);
	return NULL;
}

static int load_config(struct kiln_registry_auth *a, const char *path,
		       struct kiln_error **err)
{
	_cleanup_free_ char *data = NULL;
	json_error_t jerr;
	json_t *j, *auths;
	size_t len;
	int r;

	r = kiln_read_file_at(AT_FDCWD, path, CONFIG_LIMIT, &data, &len);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return kiln_error_seterrno(err, r, "docker config %s", path);
	j = json_loadb(data, len, 0, &jerr);
	if (!json_is_object(j)) {
		json_decref(j);
		return kiln_error_set(err, -EINVAL, "docker config %s: invalid "
				      "JSON (line %d: %s)", path, jerr.line,
				      j ? "not an object" : jerr.text);
	}
	if (json_object_get(j, "credsStore") || json_object_get(j, "credHelpers"))
		log_debug("docker config %s: credential helpers are ignored", path);
	auths = json_object_get(j, "auths");
	r = json_is_object(auths) ? load_auths(a, path, auths, err) : 0;
	json_decref(j);
	return r;
}

int kiln_registry_auth_new(const char *docker_config,
			   struct kiln_registry_auth **out,
			   struct kiln_error **err)
{
	struct kiln_registry_auth *a = xcalloc(1, sizeof(*a));
	_cleanup_free_ char *dflt = NULL;
	int r = 0;

	pthread_mutex_init(&a->lock, NULL);
	if (!docker_config)
		docker_config = dflt = default_config_path();
	if (docker_config && *docker_config)
		r = load_config(a, docker_config, err);
	if (r < 0) {
		kiln_registry_auth_free(a);
		return r;
	}
	*out = a;
	return 0;
}

static void token_release(struct token *t)
{
	free(t->registry);
	free(t->scope);
	free(t->token);
}

void kiln_registry_auth_free(struct kiln_registry_auth *a)
{
	size_t i;

	if (!a)
		return;
	for (i = 0; i < a->n_creds; i++) {
		free(a->creds[i].registry);
		free(a->creds[i].user);
		free(a->creds[i].password);
	}
	for (i = 0; i < a->n_hosts; i++) {
		free(a->hosts[i].registry);
		free(a->hosts[i].realm);
		free(a->hosts[i].service);
	}
	for (i = 0; i < a->n_tokens; i++)
		token_release(&a->tokens[i]);
	free(a->creds);
	free(a->hosts);
	free(a->tokens);
	pthread_mutex_destroy(&a->lock);
	free(a);
}

void kiln_registry_authz_release(struct kiln_registry_authz *z)
{
	free(z->user);
	free(z->password);
	free(z->bearer);
	memset(z, 0, sizeof(*z));
}

uint64_t kiln_registry_auth_token_fetches(struct kiln_registry_auth *a)
{
	uint64_t n;

	pthread_mutex_lock(&a->lock);
	n = a->token_fetches;
	pthread_mutex_unlock(&a->lock);
	return n;
}

/* ---- hosts and tokens (called with the lock held) ---- */

static struct host *find_host(struct kiln_registry_auth *a, const char *reg,
			      bool create)
{
	struct host *h;
	size_t i;

	for (i = 0; i < a->n_hosts; i++)
		if (!strcmp(a->hosts[i].registry, reg))
			return &a->hosts[i];
	if (!create)
		return NULL;
	a->hosts = xgrow(a->hosts, &a->a_hosts, a->n_hosts + 1, sizeof(*a->hosts));
	h = &a->hosts[a->n_hosts++];
	memset(h, 0, sizeof(*h));
	h->registry = xstrdup(reg);
	return h;
}

static struct token *find_token(struct kiln_registry_auth *a, const char *reg,
				const char *scope)
{
	size_t i;

	for (i = 0; i < a->n_tokens; i++)
		if (!strcmp(a->tokens[i].registry, reg) &&
		    !strcmp(a->tokens[i].scope, scope))
			return &a->tokens[i];
	return NULL;
}

static void drop_token(struct kiln_registry_auth *a, struct token *t)
{
	token_release(t);
	*t = a->tokens[--a->n_tokens];
}

static void store_token(struct kiln_registry_auth *a, const char *reg,
			const char *scope, const char *tok, uint64_t ttl_s)
{
	struct token *t = find_token(a, reg, scope);

	if (t)
		drop_token(a, t);
	if (a->n_tokens >= MAX_TOKENS)
		drop_token(a, &a->tokens[0]);
	a->tokens = xgrow(a->tokens, &a->a_tokens, a->n_tokens + 1,
			  sizeof(*a->tokens));
	t = &a->tokens[a->n_tokens++];
	t->registry = xstrdup(reg);
	t->scope = xstrdup(scope);
	t->token = xstrdup(tok);
	ttl_s = ttl_s > TOKEN_MARGIN_S ? ttl_s - TOKEN_MARGIN_S : 0;
	t->expires_ns = kiln_now_mono_ns() + ttl_s * 1000000000ull;
}

/* A valid cached token, copied. */
static char *cached_token(struct kiln_registry_auth *a, const char *reg,
			  const char *scope)
{
	struct token *t = find_token(a, reg, scope);

	if (!t)
		return NULL;
	if (t->expires_ns <= kiln_now_mono_ns()) {
		drop_token(a, t);
		return NULL;
	}
	return xstrdup(t->token);
}

/* ---- challenges ---- */

/* Parse one auth-param value (quoted-string or token) at *p. */
static char *param_value(const char **p)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(8192);
	const char *s = *p;

	if (*s != '"') {
		size_t n = strcspn(s, ", \t");

		*p = s + n;
		return xstrndup(s, n);
	}
	for (s++; *s && *s != '"'; s++) {
		if (*s == '\\' && s[1])
			s++;
		if (kiln_strbuf_addch(&sb, *s) < 0) {
			*p = s + strlen(s); /* give up on the rest */
			return NULL;
		}
	}
	*p = *s ? s + 1 : s;
	return kiln_strbuf_detach(&sb, NULL);
}

/* Find a parameter in "Scheme k=v, k2="v2"" (case-insensitive key). */
static char *challenge_param(const char *hdr, const char *key)
{
	const char *p = hdr + strcspn(hdr, " \t");
	size_t kn = strlen(key);

	while (*p) {
		char *v;
		bool match;

		p += strspn(p, " \t,");
		match = !strncasecmp(p, key, kn) && p[kn] == '=';
		p += strcspn(p, "=, \t");
		if (*p != '=')
			continue;
		p++;
		v = param_value(&p);
		if (match)
			return v;
		free(v);
	}
	return NULL;
}

static bool scheme_is(const char *hdr, const char *scheme)
{
	size_t n = strlen(scheme);

	hdr += strspn(hdr, " \t");
	return !strncasecmp(hdr, scheme, n) && (hdr[n] == ' ' || !hdr[n]);
}

static int learn_bearer(struct kiln_registry_auth *a, const char *reg,
			const char *scope, const char *hdr,
			struct kiln_error **err)
{
	_cleanup_free_ char *realm = challenge_param(hdr, "realm");
	_cleanup_free_ char *service = challenge_param(hdr, "service");
	struct host *h;
	struct token *t;

	if (!realm || (strncmp(realm, "https://", 8) && strncmp(realm, "http://", 7)))
		return kiln_error_set(err, -EACCES, "registry %s: bearer challenge "
				      "without an http(s) realm", reg);
	pthread_mutex_lock(&a->lock);
	h = find_host(a, reg, true);
	h->mode = MODE_BEARER;
	free(h->realm);
	free(h->service);
	h->realm = TAKE_PTR(realm);
	h->service = TAKE_PTR(service);
	t = find_token(a, reg, scope);
	if (t)
		drop_token(a, t);
	pthread_mutex_unlock(&a->lock);
	return 0;
}

static int learn_basic(struct kiln_registry_auth *a, const char *reg,
		       struct kiln_error **err)
{
	struct host *h;
	bool has, was_basic;

	pthread_mutex_lock(&a->lock);
	has = find_cred(a, reg) != NULL;
	h = find_host(a, reg, true);
	was_basic = h->mode == MODE_BASIC;
	h->mode = MODE_BASIC;
	pthread_mutex_unlock(&a->lock);
	if (!has)
		return kiln_error_set(err, -EACCES, "registry %s: authentication "
				      "required and no credentials for it (docker "
				      "config \"auths\")", reg);
	if (was_basic)
		return kiln_error_set(err, -EACCES, "registry %s: credentials "
				      "rejected", reg);
	return 0;
}

int kiln_registry_auth_challenge(struct kiln_registry_auth *a,
				 const char *registry, const char *scope,
				 const char *www_authenticate,
				 struct kiln_error **err)
{
	const char *hdr = www_authenticate;

	if (!hdr || !*hdr)
		return kiln_error_set(err, -EACCES, "registry %s: 401 without a "
				      "WWW-Authenticate challenge", registry);
	if (scheme_is(hdr, "Bearer"))
		return learn_bearer(a, registry, scope, hdr, err);
	if (scheme_is(hdr, "Basic"))
		return learn_basic(a, registry, err);
	return kiln_error_set(err, -EACCES, "registry %s: unsupported "
			      "authentication scheme in \"%.64s\"", registry, hdr);
}

/* ---- tokens ---- */

static void url_escape(struct kiln_strbuf *sb, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || strchr("-._~", c))
			(void)kiln_strbuf_addch(sb, (char)c);
		else
			(void)kiln_strbuf_addf(sb, "%%%c%c", hex[c >> 4], hex[c & 15]);
	}
}

static char *token_url(const char *realm, const char *service,
		       const char *scope)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(64 << 10);
	const char *sep = strchr(realm, '?') ? "&" : "?";
	const char *s = scope;
	size_t n;

	(void)kiln_strbuf_adds(&sb, realm);
	if (service && *service) {
		(void)kiln_strbuf_addf(&sb, "%sservice=", sep);
		url_escape(&sb, service);
		sep = "&";
	}
	for (; *s; s += n) {
		_cleanup_free_ char *one = NULL;

		s += strspn(s, " ");
		n = strcspn(s, " ");
		if (!n)
			break;
		one = xstrndup(s, n);
		(void)kiln_strbuf_addf(&sb, "%sscope=", sep);
		url_escape(&sb, one);
		sep = "&";
	}
	return kiln_strbuf_detach(&sb, NULL);
}

static int parse_token(const char *realm, const struct kiln_http_result *resp,
		       char **tok, uint64_t *ttl, struct kiln_error **err)
{
	json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
	const char *t = json_string_value(json_object_get(j, "token"));
	json_t *exp = json_object_get(j, "expires_in");
	int r = 0;

	if (!t || !*t)
		t = json_string_value(json_object_get(j, "access_token"));
	if (!t || !*t || strpbrk(t, "\r\n"))
		r = kiln_error_set(err, -EBADMSG, "token server %s: response "
				   "without a usable token", realm);
	else
		*tok = xstrdup(t);
	*ttl = json_is_integer(exp) && json_integer_value(exp) > 0
		       ? (uint64_t)json_integer_value(exp)
		       : TOKEN_DEFAULT_TTL_S;
	json_decref(j);
	return r;
}

/* Is url's host[:port] exactly host? */
static bool url_host_is(const char *url, const char *host)
{
	const char *rest = strstr(url, "://");
	size_t n = strlen(host);

	if (!rest)
		return false;
	rest += 3;
	return !strncmp(rest, host, n) && (rest[n] == '/' || rest[n] == '?' || rest[n] == '\0');
}

static int fetch_token(struct kiln_registry_auth *a,
		       const struct kiln_registry_auth_transport *t,
		       const char *reg, const char *realm, const char *service,
		       const char *scope, char **tok, struct kiln_error **err)
{
	_cleanup_free_ char *url = token_url(realm, service, scope);
	_cleanup_free_ char *user = NULL, *pass = NULL;
	struct kiln_http_result resp;
	struct kiln_http_call req = {
		.method = "GET", .url = url, .follow = true,
		/* --insecure-registry relaxes TLS for that registry only, not
		 * for a token server elsewhere that gets the credentials. */
		.tls_noverify = t->tls_noverify && url_host_is(realm, reg),
		.ca_file = t->ca_file,
		.timeout_ms = TOKEN_TIMEOUT_MS,
		.low_speed_time_s = t->low_speed_time_s,
		.limit = KILN_REGISTRY_TOKEN_LIMIT,
		.upload = true, /* as every registry request (no body here) */
	};
	uint64_t ttl = 0;
	int r;

	if (kiln_registry_auth_credentials(a, reg, &user, &pass) == 0) {
		req.user = user;
		req.password = pass;
	}
	_cleanup_free_ char *what = xasprintf("token server %s", realm);

	r = kiln_http_client_do(t->http, &req, &resp, err);
	if (r < 0) {
		kiln_error_prefix(err, "registry %s: token server", reg);
		return r;
	}
	if (resp.status != 200)
		r = kiln_registry_status_error(err, -EACCES, reg, what, &resp);
	else
		r = parse_token(realm, &resp, tok, &ttl, err);
	kiln_http_result_release(&resp);
	if (r < 0)
		return r;
	pthread_mutex_lock(&a->lock);
	store_token(a, reg, scope, *tok, ttl);
	a->token_fetches++;
	pthread_mutex_unlock(&a->lock);
	return 0;
}

/* Under the lock: copy what a request needs. */
static enum host_mode snapshot(struct kiln_registry_auth *a, const char *reg,
			       const char *scope, struct kiln_registry_authz *z,
			       char **realm, char **service)
{
	struct host *h = find_host(a, reg, false);
	struct cred *c = find_cred(a, reg);
	enum host_mode m = h ? h->mode : MODE_UNKNOWN;

	if (m == MODE_BASIC && c) {
		z->user = xstrdup(c->user);
		z->password = xstrdup(c->password);
	} else if (m == MODE_BEARER) {
		z->bearer = cached_token(a, reg, scope);
		if (!z->bearer) {
			*realm = xstrdup(h->realm);
			*service = h->service ? xstrdup(h->service) : NULL;
		}
	}
	return m;
}

int kiln_registry_auth_prepare(struct kiln_registry_auth *a,
			       const struct kiln_registry_auth_transport *t,
			       const char *registry, const char *scope,
			       struct kiln_registry_authz *z,
			       struct kiln_error **err)
{
	_cleanup_free_ char *realm = NULL, *service = NULL;

	memset(z, 0, sizeof(*z));
	pthread_mutex_lock(&a->lock);
	snapshot(a, registry, scope, z, &realm, &service);
	pthread_mutex_unlock(&a->lock);
	if (!realm)
		return 0;
	return fetch_token(a, t, registry, realm, service, scope, &z->bearer, err);
}
