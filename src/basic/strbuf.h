/*
 * Growable byte buffer with a hard size limit set at creation (curl's
 * dynbuf). Anything fed by a user or the network goes through one of these,
 * so an oversized input is an error instead of unbounded memory.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "basic/macro.h"

struct kiln_strbuf {
	char *buf;    /* always NUL-terminated when non-NULL */
	size_t len;
	size_t alloc;
	size_t limit; /* maximum len; appends past it fail with -E2BIG */
};

#define KILN_STRBUF_INIT(lim) { NULL, 0, 0, (lim) }

void kiln_strbuf_init(struct kiln_strbuf *sb, size_t limit);
/* Free the contents; the struct can be reused after init. */
void kiln_strbuf_release(struct kiln_strbuf *sb);
/* Return the buffer (caller frees) and reset sb; never NULL. */
char *kiln_strbuf_detach(struct kiln_strbuf *sb, size_t *len);
void kiln_strbuf_reset(struct kiln_strbuf *sb);

/* Each returns 0 or -E2BIG when the limit would be exceeded (sb unchanged). */
int kiln_strbuf_add(struct kiln_strbuf *sb, const void *data, size_t n);
int kiln_strbuf_adds(struct kiln_strbuf *sb, const char *s);
int kiln_strbuf_addch(struct kiln_strbuf *sb, char c);
int kiln_strbuf_addf(struct kiln_strbuf *sb, const char *fmt, ...) _printf_(2, 3);

/*
 * Text that arrives in pieces, read by lines: fn gets each complete line
 * (without its '\n'; it may modify it); an unfinished one waits in sb for
 * the next piece. A negative return of fn stops and is returned; a line
 * longer than sb's limit is -E2BIG.
 */
typedef int (*kiln_line_fn)(void *ud, char *line, size_t len);
int kiln_strbuf_feed_lines(struct kiln_strbuf *sb, const char *data, size_t len,
			   kiln_line_fn fn, void *ud);

static inline const char *kiln_strbuf_str(const struct kiln_strbuf *sb)
{
	return sb->buf ? sb->buf : "";
}

static inline void kiln_strbuf_releasep(struct kiln_strbuf *sb)
{
	kiln_strbuf_release(sb);
}
#define _cleanup_strbuf_ _cleanup_(kiln_strbuf_releasep)
