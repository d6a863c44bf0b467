/*
 * Where a bucket is (s3:// URLs, options by name) and the keys to it
 * (environment, AWS credentials files). Secrets never reach a message.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/parse-util.h"
#include "s3/s3-internal.h"

void kiln_s3_config_init(struct kiln_s3_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
}

void kiln_s3_config_release(struct kiln_s3_config *cfg)
{
	if (!cfg)
		return;
	free(cfg->bucket);
	free(cfg->prefix);
	free(cfg->endpoint);
	free(cfg->region);
	free(cfg->credentials_file);
	free(cfg->profile);
	free(cfg->ca_file);
	kiln_s3_config_init(cfg);
}

static void replace(char **dst, char *value)
{
	free(*dst);
	*dst = value;
}

int kiln_s3_bucket_check(const char *b, bool path_style, struct kiln_error **err)
{
	size_t n = b ? strlen(b) : 0, i;
	bool ok = n >= 3 && n <= 63 && isalnum((unsigned char)b[0]) &&
		  isalnum((unsigned char)b[n - 1]);

	for (i = 0; ok && i < n; i++) {
		unsigned char c = (unsigned char)b[i];

		ok = islower(c) || isdigit(c) || c == '.' || c == '-' ||
		     (path_style && (isupper(c) || c == '_'));
	}
	if (!ok)
		return kiln_error_set(err, -EINVAL,
				      "bad S3 bucket name '%s': 3 to 63 lower-case letters, digits, '.' and '-'%s",
				      b ? b : "", path_style ? " (or '_', upper case)" : "");
	return 0;
}

static bool host_char(char c)
{
	return isalnum((unsigned char)c) || c == '.' || c == '-' || c == '_';
}

/* host, host:port, [v6], [v6]:port; *hostlen without the port. */
static bool host_port_ok(const char *s, size_t *hostlen)
{
	const char *p = s, *colon;
	uint32_t port;

	if (*p == '[') {
		p = strchr(s, ']');
		if (!p || p == s + 1 || strspn(s + 1, "0123456789abcdefABCDEF:.") !=
					       (size_t)(p - s - 1))
			return false;
		p++;
	} else {
		while (host_char(*p))
			p++;
		if (p == s)
			return false;
	}
	*hostlen = (size_t)(p - s);
	if (!*p)
		return true;
	colon = p;
	return *colon == ':' && kiln_parse_u32(colon + 1, &port) == 0 &&
	       port > 0 && port < 65536 && colon[1] != '+';
}

int kiln_s3_endpoint_parse(const char *endpoint, char **norm, char **host_out,
			   struct kiln_error **err)
{
	const char *scheme = "https", *rest = endpoint, *sep = strstr(endpoint, "://");
	_cleanup_free_ char *host = NULL;
	size_t n, hostlen;

	if (sep) {
		if ((size_t)(sep - endpoint) == 4 && !strncasecmp(endpoint, "http", 4))
			scheme = "http";
		else if ((size_t)(sep - endpoint) != 5 ||
			 strncasecmp(endpoint, "https", 5))
			return kiln_error_set(err, -EINVAL,
					      "S3 endpoint '%s': only http:// and https://",
					      endpoint);
		rest = sep + 3;
	}
	n = strlen(rest);
	if (n && rest[n - 1] == '/')
		n--;
	host = xstrndup(rest, n);
	if (!host_port_ok(host, &hostlen))
		return kiln_error_set(err, -EINVAL,
				      "S3 endpoint '%s': expected [http[s]://]HOST[:PORT], no path, user or query",
				      endpoint);
	*norm = xasprintf("%s://%s", scheme, host);
	if (host_out)
		*host_out = TAKE_PTR(host);
	return 0;
}

/* v without leading and trailing '/', checked as a key; NULL if bad. */
static char *clean_prefix(const char *v, struct kiln_error **err)
{
	_cleanup_free_ char *p = NULL;
	size_t n;

	while (*v == '/')
		v++;
	n = strlen(v);
	while (n && v[n - 1] == '/')
		n--;
	p = xstrndup(v, n);
	if (n && kiln_s3_key_check(p, err) < 0) {
		kiln_error_prefix(err, "S3 prefix");
		return NULL;
	}
	return TAKE_PTR(p);
}

static int set_prefix(struct kiln_s3_config *cfg, const char *v,
		      struct kiln_error **err)
{
	char *p = clean_prefix(v, err);

	if (!p)
		return -EINVAL;
	replace(&cfg->prefix, p);
	return 0;
}

int kiln_s3_config_parse_url(struct kiln_s3_config *cfg, const char *url,
			     struct kiln_error **err)
{
	const char *b, *slash;
	_cleanup_free_ char *bucket = NULL;
	char *prefix;

	if (strncasecmp(url, "s3://", 5))
		return kiln_error_set(err, -EINVAL,
				      "'%s' is not an s3://BUCKET[/PREFIX] URL", url);
	b = url + 5;
	slash = strchr(b, '/');
	bucket = slash ? xstrndup(b, (size_t)(slash - b)) : xstrdup(b);
	if (kiln_s3_bucket_check(bucket, true, err) < 0) {
		kiln_error_prefix(err, "%s", url);
		return -EINVAL;
	}
	prefix = clean_prefix(slash ? slash + 1 : "", err);
	if (!prefix) {
		kiln_error_prefix(err, "%s", url);
		return -EINVAL;
	}
	replace(&cfg->prefix, prefix);
	replace(&cfg->bucket, TAKE_PTR(bucket));
	return 0;
}

static int parse_bool(const char *v, bool *out)
{
	if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes"))
		*out = true;
	else if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "no"))
		*out = false;
	else
		return -EINVAL;
	return 0;
}

static bool region_ok(const char *v)
{
	size_t n = strlen(v);

	return n > 0 && n <= 64 &&
	       strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789-") == n;
}

/* Options whose value is a plain string: name, alias, field. */
static char **string_field(struct kiln_s3_config *cfg, const char *key)
{
	if (!strcmp(key, "credentials") || !strcmp(key, "credentials_file"))
		return &cfg->credentials_file;
	if (!strcmp(key, "profile"))
		return &cfg->profile;
	if (!strcmp(key, "ca_file"))
		return &cfg->ca_file;
	return NULL;
}

int kiln_s3_config_set(struct kiln_s3_config *cfg, const char *key,
		       const char *v, struct kiln_error **err)
{
	char **field = string_field(cfg, key);
	char *norm;

	if (field) {
		if (!*v || strchr(v, '\n'))
			return kiln_error_set(err, -EINVAL, "S3 option %s: bad value", key);
		replace(field, xstrdup(v));
		return 0;
	}
	if (!strcmp(key, "bucket")) {
		if (kiln_s3_bucket_check(v, true, err) < 0)
			return -EINVAL;
		replace(&cfg->bucket, xstrdup(v));
	} else if (!strcmp(key, "prefix")) {
		return set_prefix(cfg, v, err);
	} else if (!strcmp(key, "region")) {
		if (!region_ok(v))
			return kiln_error_set(err, -EINVAL, "S3 region '%s': bad name", v);
		replace(&cfg->region, xstrdup(v));
	} else if (!strcmp(key, "endpoint") || !strcmp(key, "endpoint_url")) {
		if (kiln_s3_endpoint_parse(v, &norm, NULL, err) < 0)
			return -EINVAL;
		replace(&cfg->endpoint, norm);
	} else if (!strcmp(key, "path_style") || !strcmp(key, "use_path_style")) {
		if (parse_bool(v, &cfg->path_style) < 0)
			return kiln_error_set(err, -EINVAL,
					      "S3 option %s: '%s' is not true or false", key, v);
	} else {
		return kiln_error_set(err, -EINVAL, "unknown S3 option '%s'", key);
	}
	return 0;
}

/* ---- credentials ---- */

static void wipe_free(char *s)
{
	if (!s)
		return;
	explicit_bzero(s, strlen(s));
	free(s);
}

void kiln_s3_credentials_release(struct kiln_s3_credentials *cr)
{
	if (!cr)
		return;
	wipe_free(cr->access_key);
	wipe_free(cr->secret_key);
	wipe_free(cr->session_token);
	memset(cr, 0, sizeof(*cr));
}

static char *trim(char *s)
{
	size_t n;

	while (*s == ' ' || *s == '\t')
		s++;
	n = strlen(s);
	while (n && isspace((unsigned char)s[n - 1]))
		s[--n] = '\0';
	return s;
}

static bool value_ok(const char *v)
{
	const unsigned char *p;

	for (p = (const unsigned char *)v; *p; p++)
		if (*p < 0x21 || *p == 0x7f)
			return false;
	return *v != '\0';
}

struct ini {
	const char *name, *profile;
	struct kiln_s3_credentials *out;
	bool in_profile, seen_profile;
	unsigned line;
};

static int ini_section(struct ini *s, char *l, struct kiln_error **err)
{
	char *end = strchr(l, ']');

	if (!end || end[1])
		return kiln_error_set(err, -EINVAL, "%s:%u: unterminated section",
				      s->name, s->line);
	*end = '\0';
	s->in_profile = !strcmp(trim(l + 1), s->profile);
	s->seen_profile |= s->in_profile;
	return 0;
}

static int ini_pair(struct ini *s, char *l, struct kiln_error **err)
{
	char *eq = strchr(l, '='), *k, *v, **dst = NULL;

	if (!eq)
		return kiln_error_set(err, -EINVAL, "%s:%u: expected 'name = value'",
				      s->name, s->line);
	*eq = '\0';
	k = trim(l);
	v = trim(eq + 1);
	if (!s->in_profile)
		return 0;
	if (!strcmp(k, "aws_access_key_id"))
		dst = &s->out->access_key;
	else if (!strcmp(k, "aws_secret_access_key"))
		dst = &s->out->secret_key;
	else if (!strcmp(k, "aws_session_token"))
		dst = &s->out->session_token;
	if (!dst)
		return 0;
	if (!value_ok(v))
		return kiln_error_set(err, -EINVAL, "%s:%u: bad value of %s",
				      s->name, s->line, k);
	wipe_free(*dst);
	*dst = xstrdup(v);
	return 0;
}

static int ini_line(struct ini *s, char *l, struct kiln_error **err)
{
	if (*l == ' ' || *l == '\t')
		return 0; /* a continuation (nested settings of a config file) */
	l = trim(l);
	if (!*l || *l == '#' || *l == ';')
		return 0;
	if (*l == '[')
		return ini_section(s, l, err);
	return ini_pair(s, l, err);
}

int kiln_s3_credentials_parse(const char *text, size_t len, const char *name,
			      const char *profile,
			      struct kiln_s3_credentials *out,
			      struct kiln_error **err)
{
	struct ini s = { .name = name, .profile = profile, .out = out };
	_cleanup_free_ char *copy = xstrndup(text, len);
	size_t copy_len = strlen(copy); /* xstrndup stops at a NUL */
	char *l = copy, *nl;
	int r = 0;

	memset(out, 0, sizeof(*out));
	if (copy_len != len)
		r = kiln_error_set(err, -EINVAL, "%s: NUL byte", name);
	for (; r == 0 && l; l = nl) {
		nl = strchr(l, '\n');
		if (nl)
			*nl++ = '\0';
		s.line++;
		r = ini_line(&s, l, err);
	}
	if (r == 0 && !s.seen_profile)
		r = kiln_error_set(err, -ENOENT, "%s: no profile '%s'", name, profile);
	else if (r == 0 && (!out->access_key || !out->secret_key))
		r = kiln_error_set(err, -EINVAL,
				   "%s: profile '%s' lacks aws_access_key_id or aws_secret_access_key",
				   name, profile);
	explicit_bzero(copy, copy_len);
	if (r < 0)
		kiln_s3_credentials_release(out);
	return r;
}

static int load_file(struct kiln_s3_credentials *cr, const char *file,
		     const char *profile, struct kiln_error **err)
{
	char *text = NULL;
	size_t len = 0;
	int r = kiln_read_file_at(AT_FDCWD, file, KILN_S3_CREDENTIALS_LIMIT, &text, &len);

	if (r == -EFBIG)
		return kiln_error_set(err, r, "credentials file %s: larger than %u bytes",
				      file, KILN_S3_CREDENTIALS_LIMIT);
	if (r < 0)
		return kiln_error_seterrno(err, r, "credentials file %s", file);
	r = kiln_s3_credentials_parse(text, len, file, profile, cr, err);
	explicit_bzero(text, len);
	free(text);
	return r;
}

static bool load_env(struct kiln_s3_credentials *cr)
{
	const char *id = getenv("AWS_ACCESS_KEY_ID");
	const char *secret = getenv("AWS_SECRET_ACCESS_KEY");
	const char *token = getenv("AWS_SESSION_TOKEN");

	if (!id || !*id || !secret || !*secret)
		return false;
	cr->access_key = xstrdup(id);
	cr->secret_key = xstrdup(secret);
	cr->session_token = token && *token ? xstrdup(token) : NULL;
	return true;
}

int kiln_s3_credentials_load(struct kiln_s3_credentials *cr, const char *file,
			     const char *profile, struct kiln_error **err)
{
	const char *home = getenv("HOME");
	_cleanup_free_ char *path = NULL;

	memset(cr, 0, sizeof(*cr));
	if (!profile || !*profile)
		profile = getenv("AWS_PROFILE");
	if (!profile || !*profile)
		profile = "default";
	if (file)
		return load_file(cr, file, profile, err);
	if (load_env(cr))
		return 0;
	if (!home || !*home)
		return kiln_error_set(err, -ENOENT,
				      "no S3 credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY unset and no HOME");
	path = xasprintf("%s/.aws/credentials", home);
	if (access(path, F_OK) < 0)
		return kiln_error_set(err, -ENOENT,
				      "no S3 credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY unset and no %s",
				      path);
	return load_file(cr, path, profile, err);
}

bool kiln_s3_flags_arg(struct kiln_s3_flags *f, int opt, const char *arg)
{
	switch (opt) {
	case KILN_S3_OPT_CACHE: f->cache = arg; return true;
	case KILN_S3_OPT_ENDPOINT: f->endpoint = arg; return true;
	case KILN_S3_OPT_REGION: f->region = arg; return true;
	case KILN_S3_OPT_PATH_STYLE: f->path_style = true; return true;
	case KILN_S3_OPT_CREDENTIALS: f->credentials = arg; return true;
	default: return false;
	}
}

int kiln_s3_flags_config(const struct kiln_s3_flags *f, struct kiln_s3_config *cfg,
			 struct kiln_error **err)
{
	static const char *const flags[] = { "--s3-endpoint", "--s3-region", "--s3-credentials" };
	static const char *const keys[] = { "endpoint", "region", "credentials" };
	const char *vals[] = { f->endpoint, f->region, f->credentials };
	size_t i;
	int r;

	kiln_s3_config_init(cfg);
	if (!f->cache || strncmp(f->cache, "s3://", 5)) {
		if (f->endpoint || f->region || f->credentials || f->path_style)
			return kiln_error_set(err, -EINVAL,
					      "--s3-* flags need --cache s3://BUCKET/PREFIX");
		return -ENOENT;
	}
	r = kiln_s3_config_parse_url(cfg, f->cache, err);
	for (i = 0; r == 0 && i < 3; i++)
		if (vals[i] && (r = kiln_s3_config_set(cfg, keys[i], vals[i], err)) < 0)
			kiln_error_prefix(err, "%s", flags[i]);
	if (r == 0 && f->path_style)
		r = kiln_s3_config_set(cfg, "path_style", "true", err);
	if (r < 0)
		kiln_s3_config_release(cfg);
	return r;
}
