#include "basic/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"

void kiln_strbuf_init(struct kiln_strbuf *sb, size_t limit)
{
	sb->buf = NULL;
	sb->len = 0;
	sb->alloc = 0;
	sb->limit = limit;
}

void kiln_strbuf_release(struct kiln_strbuf *sb)
{
	free(sb->buf);
	sb->buf = NULL;
	sb->len = sb->alloc = 0;
}

void kiln_strbuf_reset(struct kiln_strbuf *sb)
{
	sb->len = 0;
	if (sb->buf)
		sb->buf[0] = '\0';
}

char *kiln_strbuf_detach(struct kiln_strbuf *sb, size_t *len)
{
	char *p = sb->buf ? sb->buf : xstrdup("");

	if (len)
		*len = sb->len;
	sb->buf = NULL;
	sb->len = sb->alloc = 0;
	return p;
}

int kiln_strbuf_add(struct kiln_strbuf *sb, const void *data, size_t n)
{
	if (n > sb->limit || sb->len > sb->limit - n)
		return -E2BIG;
	sb->buf = xgrow(sb->buf, &sb->alloc, sb->len + n + 1, 1);
	if (n)
		memcpy(sb->buf + sb->len, data, n);
	sb->len += n;
	sb->buf[sb->len] = '\0';
	return 0;
}

int kiln_strbuf_feed_lines(struct kiln_strbuf *sb, const char *data, size_t len,
			   kiln_line_fn fn, void *ud)
{
	const char *nl;
	size_t k;
	int r;

	while ((nl = memchr(data, '\n', len))) {
		k = (size_t)(nl - data);
		r = kiln_strbuf_add(sb, data, k);
		if (r == 0)
			r = fn(ud, sb->buf, sb->len);
		kiln_strbuf_reset(sb);
		if (r < 0)
			return r;
		data += k + 1;
		len -= k + 1;
	}
	return kiln_strbuf_add(sb, data, len);
}

int kiln_strbuf_adds(struct kiln_strbuf *sb, const char *s)
{
	return kiln_strbuf_add(sb, s, strlen(s));
}

int kiln_strbuf_addch(struct kiln_strbuf *sb, char c)
{
	return kiln_strbuf_add(sb, &c, 1);
}

int kiln_strbuf_addf(struct kiln_strbuf *sb, const char *fmt, ...)
{
	_cleanup_free_ char *p = NULL;
	va_list ap;

	va_start(ap, fmt);
	p = xvasprintf(fmt, ap);
	va_end(ap);
	return kiln_strbuf_add(sb, p, strlen(p));
}
