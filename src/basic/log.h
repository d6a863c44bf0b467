/*
 * Logging. Library code logs at debug level only, so what a user reads is
 * decided once, by the program; the CLI and the daemons log above that.
 * Output goes to stderr, one line per call.
 */
#pragma once

#include "basic/macro.h"

enum kiln_log_level {
	KILN_LOG_ERROR = 0,
	KILN_LOG_WARN,
	KILN_LOG_INFO,
	KILN_LOG_DEBUG,
};

void kiln_log_set_level(enum kiln_log_level level);
enum kiln_log_level kiln_log_get_level(void);
void kiln_log(enum kiln_log_level level, const char *fmt, ...) _printf_(2, 3);

#define log_error(...) kiln_log(KILN_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) kiln_log(KILN_LOG_WARN, __VA_ARGS__)
#define log_info(...) kiln_log(KILN_LOG_INFO, __VA_ARGS__)
#define log_debug(...) kiln_log(KILN_LOG_DEBUG, __VA_ARGS__)
