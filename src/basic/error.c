#include "basic/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"

__attribute__((format(printf, 4, 0))) static int
error_vset(struct kiln_error **err, int code, const char *suffix, const char *fmt,
	   va_list ap)
{
	struct kiln_error *e;
	char *m = NULL;

	if (code >= 0)
		code = -EINVAL;
	if (!err || *err)
		return code;
	if (vasprintf(&m, fmt, ap) < 0)
		m = NULL;
	e = xcalloc(1, sizeof(*e));
	e->code = code;
	if (suffix) {
		e->msg = xasprintf("%s: %s", m ? m : "", suffix);
		free(m);
	} else {
		e->msg = m ? m : xstrdup("error");
	}
	*err = e;
	return code;
}

int kiln_error_set(struct kiln_error **err, int code, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = error_vset(err, code, NULL, fmt, ap);
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
	r = error_vset(err, code, strerror(-code), fmt, ap);
	va_end(ap);
	return r;
}

void kiln_error_prefix(struct kiln_error **err, const char *fmt, ...)
{
	va_list ap;
	char *p = NULL, *m;

	if (!err || !*err)
		return;
	va_start(ap, fmt);
	if (vasprintf(&p, fmt, ap) < 0)
		p = NULL;
	va_end(ap);
	if (!p)
		return;
	m = xasprintf("%s: %s", p, (*err)->msg);
	free(p);
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
