#include "basic/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"

/* "<prefix>: <formatted>: <suffix>", the parts that are not NULL. */
__attribute__((format(printf, 5, 0))) static int
error_vset(struct kiln_error **err, int code, const char *prefix, const char *suffix,
	   const char *fmt, va_list ap)
{
	_cleanup_free_ char *m = NULL;
	struct kiln_error *e;

	if (code >= 0)
		code = -EINVAL;
	if (!err || *err)
		return code;
	m = xvasprintf(fmt, ap);
	e = xcalloc(1, sizeof(*e));
	e->code = code;
	e->msg = xasprintf("%s%s%s%s%s", prefix ? prefix : "", prefix ? ": " : "", m,
			   suffix ? ": " : "", suffix ? suffix : "");
	*err = e;
	return code;
}

int kiln_error_setv(struct kiln_error **err, int code, const char *prefix,
		    const char *fmt, va_list ap)
{
	return error_vset(err, code, prefix, NULL, fmt, ap);
}

int kiln_error_set(struct kiln_error **err, int code, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = error_vset(err, code, NULL, NULL, fmt, ap);
	va_end(ap);
	return r;
}

int kiln_error_seterrno(struct kiln_error **err, int code, const char *fmt, ...)
{
	va_list ap;
	int r;

	if (code >= 0)
		code = -EINVAL;
	va_start(ap, fmt);
	r = error_vset(err, code, NULL, strerror(-code), fmt, ap);
	va_end(ap);
	return r;
}

void kiln_error_prefix(struct kiln_error **err, const char *fmt, ...)
{
	_cleanup_free_ char *p = NULL;
	va_list ap;
	char *m;

	if (!err || !*err)
		return;
	va_start(ap, fmt);
	p = xvasprintf(fmt, ap);
	va_end(ap);
	m = xasprintf("%s: %s", p, (*err)->msg);
	free((*err)->msg);
	(*err)->msg = m;
}

void kiln_error_free(struct kiln_error *e)
{
	if (!e)
		return;
	free(e->msg);
	free(e);
}

const char *kiln_error_msg(const struct kiln_error *e)
{
	return e && e->msg ? e->msg : "unknown error";
}
