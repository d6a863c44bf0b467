/*
 * SigV4's spelling of paths and queries. libcurl 7.88 signs the path and
 * the query exactly as they are in the URL, so both are written here
 * already encoded and the query already sorted (docs/internals/s3.md).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/utf8.h"
#include "s3/s3-internal.h"

static bool unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
	       c == '~';
}

int kiln_s3_uri_encode(struct kiln_strbuf *sb, const char *s, bool keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *p;
	int r = 0;

	for (p = (const unsigned char *)s; *p && r == 0; p++) {
		if (unreserved(*p) || (keep_slash && *p == '/'))
			r = kiln_strbuf_addch(sb, (char)*p);
		else
			r = kiln_strbuf_addf(sb, "%%%c%c", hex[*p >> 4],
					     hex[*p & 15]);
	}
	return r;
}

struct qpart {
	char *name, *value;
};

static int qpart_cmp(const void *a, const void *b)
{
	const struct qpart *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	return c ? c : strcmp(x->value, y->value);
}

static char *encoded(const char *s)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(SIZE_MAX / 2);

	if (s)
		(void)kiln_s3_uri_encode(&sb, s, false);
	return kiln_strbuf_detach(&sb, NULL);
}

char *kiln_s3_query(const char *const *pairs, size_t n)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(SIZE_MAX / 2);
	struct qpart *q = xcalloc(n ? n : 1, sizeof(*q));
	size_t i;

	for (i = 0; i < n; i++) {
		q[i].name = encoded(pairs[2 * i]);
		q[i].value = encoded(pairs[2 * i + 1]);
	}
	qsort(q, n, sizeof(*q), qpart_cmp);
	for (i = 0; i < n; i++) {
		(void)kiln_strbuf_addf(&sb, "%s%s=%s", i ? "&" : "", q[i].name,
				       q[i].value);
		free(q[i].name);
		free(q[i].value);
	}
	free(q);
	return kiln_strbuf_detach(&sb, NULL);
}

/* A "." or ".." segment, which curl would resolve away from the path. */
static bool has_dot_segment(const char *key)
{
	const char *seg = key, *slash;
	size_t n;

	for (;;) {
		slash = strchr(seg, '/');
		n = slash ? (size_t)(slash - seg) : strlen(seg);
		if ((n == 1 && seg[0] == '.') ||
		    (n == 2 && seg[0] == '.' && seg[1] == '.'))
			return true;
		if (!slash)
			return false;
		seg = slash + 1;
	}
}

int kiln_s3_key_check(const char *key, struct kiln_error **err)
{
	size_t len = key ? strlen(key) : 0, i, k;
	uint32_t cp;

	if (len == 0)
		return kiln_error_set(err, -EINVAL, "empty S3 key");
	if (len > KILN_S3_KEY_MAX)
		return kiln_error_set(err, -EINVAL, "S3 key longer than %u bytes",
				      KILN_S3_KEY_MAX);
	if (key[0] == '/' || has_dot_segment(key))
		return kiln_error_set(err, -EINVAL,
				      "S3 key '%s' starts with '/' or has a '.' or '..' segment",
				      key);
	for (i = 0; i < len; i += k) {
		k = kiln_utf8_decode(key + i, len - i, &cp);
		if (k == 0 || cp < 0x20 || cp == 0x7f)
			return kiln_error_set(err, -EINVAL,
					      "S3 key has a control character or is not UTF-8");
	}
	return 0;
}
