/* Allocation that never returns NULL: out of memory aborts through one path. */
#pragma once

#include <stdarg.h>
#include <stddef.h>

#include "basic/macro.h"

void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *p, size_t n);
/* Grow *p (holding *alloc elements of size elem) to hold at least need. */
void *xgrow(void *p, size_t *alloc, size_t need, size_t elem);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) _printf_(1, 2);
/* xasprintf taking a va_list, for functions that format for their callers. */
char *xvasprintf(const char *fmt, va_list ap) _printf_(1, 0);
