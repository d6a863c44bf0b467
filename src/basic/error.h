/*
 * Errors a user must read.
 *
 * Contract (docs/internals/errors.md): functions return 0 on success and a
 * negative errno-style code on failure. Those that can fail in a way a user
 * must understand also take `struct kiln_error **err` and, only on failure,
 * set *err to a message that names the thing at fault (file, line, digest,
 * op, worker, flag). Callers add context with kiln_error_prefix().
 * err may be NULL when the caller does not want the message.
 */
#pragma once

#include <stdarg.h>

#include "basic/macro.h"

/*
 * kiln's own codes, above every errno value and returned negated like
 * them. strerror() does not know them: they are set with a message
 * (kiln_error_set, never kiln_error_seterrno). docs/internals/errors.md
 * lists each, with the errno codes that carry a meaning between modules.
 */
enum {
	/*
	 * A step ran and failed: its command exited non-zero, or its worker
	 * answered 422. Never retried elsewhere, and not a cancelled build
	 * (-ECANCELED).
	 */
	KILN_ESTEPFAILED = 4096,
};

struct kiln_error {
	int code;  /* negative errno-style code, or a negated KILN_E* */
	char *msg; /* full sentence fragment, no trailing newline */
};

/*
 * Set *err (if err and no error is set yet) to a new error with the
 * formatted message and return code (which must be negative). When code is
 * 0 it is taken as -EINVAL.
 */
int kiln_error_set(struct kiln_error **err, int code, const char *fmt, ...)
	_printf_(3, 4);

/*
 * kiln_error_set for wrappers that add their own context: the message is
 * "<prefix>: <formatted>" (just the formatted part when prefix is NULL).
 */
int kiln_error_setv(struct kiln_error **err, int code, const char *prefix,
		    const char *fmt, va_list ap) _printf_(4, 0);

/* Like kiln_error_set, appending ": strerror(-code)". */
int kiln_error_seterrno(struct kiln_error **err, int code, const char *fmt,
			...) _printf_(3, 4);

/* Prepend "<formatted>: " to an existing error's message. No-op if unset. */
void kiln_error_prefix(struct kiln_error **err, const char *fmt, ...)
	_printf_(2, 3);

void kiln_error_free(struct kiln_error *e);
DEFINE_TRIVIAL_CLEANUP_FUNC(struct kiln_error *, kiln_error_free)
#define _cleanup_error_ _cleanup_(kiln_error_freep)

/* Message of an error or "unknown error" for NULL. */
const char *kiln_error_msg(const struct kiln_error *e);
