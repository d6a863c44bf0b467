/*
 * An S3 prefix as a remote cache: the layout of rcache.h under the
 * config's prefix, through the S3 client (src/s3). Every call is bounded:
 * a connect timeout, and a total deadline, short for records and
 * existence checks, longer for blobs (docs/cache.md states the bound).
 */
#include "rcache/rcache.h"

#include <errno.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/macro.h"
#include "s3/s3.h"

struct s3_backend {
	struct kiln_s3_client *c;
	char *prefix;  /* "" or "p/" */
	char *name;    /* s3://bucket/prefix at endpoint, for messages */
	char *breaker; /* the endpoint: one breaker for all its buckets */
};

static const struct kiln_s3_limits small_lim = {
	.connect_timeout_ms = KILN_RCACHE_S3_CONNECT_MS,
	.timeout_ms = KILN_RCACHE_S3_SMALL_MS,
};
static const struct kiln_s3_limits blob_lim = {
	.connect_timeout_ms = KILN_RCACHE_S3_CONNECT_MS,
	.timeout_ms = KILN_RCACHE_S3_BLOB_MS,
};

static const struct kiln_s3_limits *lim_of(const char *name)
{
	return strncmp(name, "cas/", 4) ? &small_lim : &blob_lim;
}

static char *key_of(const struct s3_backend *s, const char *name)
{
	return xasprintf("%s%s", s->prefix, name);
}

struct limited {
	int (*sink)(void *ud, const void *data, size_t n);
	void *ud;
	uint64_t limit, n;
};

static int limited_sink(void *ud, const void *data, size_t len)
{
	struct limited *l = ud;

	if (l->n + len > l->limit)
		return -EFBIG;
	l->n += len;
	return l->sink(l->ud, data, len);
}

static int s3_get(void *b, const char *name, uint64_t limit,
		  int (*sink)(void *ud, const void *data, size_t n), void *ud,
		  struct kiln_error **err)
{
	struct s3_backend *s = b;
	_cleanup_free_ char *key = key_of(s, name);
	_cleanup_error_ struct kiln_error *e = NULL;
	struct limited l = { sink, ud, limit, 0 };
	int r = kiln_s3_get_to(s->c, key, NULL, limited_sink, &l, lim_of(name), &e);

	/* A miss and the sink's own verdicts are not the remote's failures. */
	if (r == -ENOENT || r == -EFBIG || r == -ECANCELED)
		return r;
	if (r < 0 && err && !*err)
		*err = TAKE_PTR(e);
	return r;
}

static int s3_has(void *b, const char *name, struct kiln_error **err)
{
	struct s3_backend *s = b;
	_cleanup_free_ char *key = key_of(s, name);
	_cleanup_error_ struct kiln_error *e = NULL;
	struct kiln_s3_object o = { 0 };
	int r = kiln_s3_head(s->c, key, &o, &small_lim, &e);

	kiln_s3_object_release(&o);
	if (r == -ENOENT)
		return 0;
	if (r < 0) {
		if (err && !*err)
			*err = TAKE_PTR(e);
		return r;
	}
	return 1;
}

static int s3_touch(void *b, const char *name, struct kiln_error **err)
{
	struct s3_backend *s = b;
	_cleanup_free_ char *key = key_of(s, name);
	_cleanup_error_ struct kiln_error *e = NULL;
	int r = kiln_s3_touch(s->c, key, &small_lim, &e);

	if (r == -ENOENT)
		return 0;
	if (r < 0) {
		if (err && !*err)
			*err = TAKE_PTR(e);
		return r;
	}
	return 1;
}

static int s3_put(void *b, const char *name, int fd, const void *data,
		  uint64_t size, struct kiln_error **err)
{
	struct s3_backend *s = b;
	_cleanup_free_ char *key = key_of(s, name);

	if (fd >= 0)
		return kiln_s3_put_fd(s->c, key, fd, lim_of(name), err);
	return kiln_s3_put(s->c, key, data, (size_t)size, lim_of(name), err);
}

static int s3_list(void *b, const char *prefix,
		   int (*fn)(void *ud, const char *name, uint64_t size, int64_t mtime),
		   void *ud, struct kiln_error **err)
{
	static const struct kiln_s3_limits page_lim = {
		.connect_timeout_ms = KILN_RCACHE_S3_CONNECT_MS,
		.timeout_ms = 30000,
	};
	struct s3_backend *s = b;
	_cleanup_free_ char *full = key_of(s, prefix);
	_cleanup_free_ char *token = NULL;
	size_t plen = strlen(s->prefix), i;
	int r = 0;

	do {
		struct kiln_s3_list page;

		r = kiln_s3_list(s->c, full, token, 1000, &page, &page_lim, err);
		if (r < 0)
			return r;
		for (i = 0; r == 0 && i < page.n; i++) {
			const struct kiln_s3_object *o = &page.objects[i];

			if (o->key && !strncmp(o->key, s->prefix, plen))
				r = fn(ud, o->key + plen, o->size, o->mtime);
		}
		free(token);
		token = page.truncated && page.next_token ? xstrdup(page.next_token) : NULL;
		kiln_s3_list_release(&page);
	} while (r == 0 && token);
	return r;
}

static int s3_del(void *b, const char *name, struct kiln_error **err)
{
	struct s3_backend *s = b;
	_cleanup_free_ char *key = key_of(s, name);

	return kiln_s3_delete(s->c, key, &small_lim, err);
}

static void s3_free(void *b)
{
	struct s3_backend *s = b;

	kiln_s3_client_free(s->c);
	free(s->prefix);
	free(s->name);
	free(s->breaker);
	free(s);
}

int kiln_rcache_open_s3(const struct kiln_s3_config *cfg, struct kiln_rcache **out,
			struct kiln_error **err)
{
	struct kiln_rcache_backend be = { 0 };
	struct kiln_s3_client *c = NULL;
	struct s3_backend *s;
	int r = kiln_s3_client_new(cfg, NULL, &c, err);

	if (r < 0)
		return r;
	s = xcalloc(1, sizeof(*s));
	s->c = c;
	s->prefix = cfg->prefix && *cfg->prefix ? xasprintf("%s/", cfg->prefix) : xstrdup("");
	s->name = xstrdup(kiln_s3_client_name(c));
	s->breaker = cfg->endpoint ? xasprintf("s3 %s", cfg->endpoint)
				   : xasprintf("s3 aws %s", cfg->region ? cfg->region : "us-east-1");
	be.name = s->name;
	be.breaker = s->breaker;
	be.get = s3_get;
	be.has = s3_has;
	be.touch = s3_touch;
	be.put = s3_put;
	be.list = s3_list;
	be.del = s3_del;
	be.free = s3_free;
	be.b = s;
	*out = kiln_rcache_new(&be);
	return 0;
}
