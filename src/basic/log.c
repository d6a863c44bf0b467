#include "basic/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

static enum kiln_log_level max_level = KILN_LOG_WARN;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void kiln_log_set_level(enum kiln_log_level level)
{
	max_level = level;
}

enum kiln_log_level kiln_log_get_level(void)
{
	return max_level;
}

void kiln_log(enum kiln_log_level level, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warning", "info", "debug" };
	va_list ap;

	if (level > max_level)
		return;
	pthread_mutex_lock(&log_lock);
	fprintf(stderr, "kiln: %s: ", names[level]);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	pthread_mutex_unlock(&log_lock);
}
