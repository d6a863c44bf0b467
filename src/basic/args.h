/*
 * The one convention of every program's and verb's flag parser
 * (HACKING.md, "Commands and --help"): a static parse_args() that returns
 * KILN_ARGS_OK to go on, KILN_ARGS_HELP after printing the usage to stdout
 * (-h, --help), or KILN_ARGS_USAGE after printing to stderr what was
 * wrong. The caller exits with kiln_args_exit() for the latter two.
 */
#pragma once

#include "basic/macro.h"

enum kiln_args_result {
	KILN_ARGS_OK = 0,
	KILN_ARGS_HELP = 1,
	KILN_ARGS_USAGE = 2,
};

/* The exit status for KILN_ARGS_HELP (0) or KILN_ARGS_USAGE (2). */
static inline int kiln_args_exit(int r)
{
	return r == KILN_ARGS_HELP ? 0 : 2;
}

/* Print "PROG: MESSAGE" and a newline on stderr; returns KILN_ARGS_USAGE. */
int kiln_args_error(const char *prog, const char *fmt, ...) _printf_(2, 3);

/*
 * After getopt: KILN_ARGS_USAGE naming the first operand left
 * (argv[optind]), or KILN_ARGS_OK when none is.
 */
int kiln_args_no_operands(const char *prog, int argc, char **argv);
