/* Helpers shared by the unit tests (static inline: unused ones cost nothing). */
#pragma once

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "basic/macro.h"

/* system() with a printf-style command line; returns system()'s status. */
static inline int test_run(const char *fmt, ...) _printf_(1, 2);
static inline int test_run(const char *fmt, ...)
{
	va_list ap;
	char *cmd = NULL;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&cmd, fmt, ap);
	va_end(ap);
	if (r < 0)
		abort();
	r = system(cmd);
	free(cmd);
	return r;
}
