/* The flag parsers' shared convention (args.h). */
#include "basic/args.h"

#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>

int kiln_args_error(const char *prog, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return KILN_ARGS_USAGE;
}

int kiln_args_no_operands(const char *prog, int argc, char **argv)
{
	if (optind >= argc)
		return KILN_ARGS_OK;
	return kiln_args_error(prog, "unexpected argument '%s'", argv[optind]);
}
