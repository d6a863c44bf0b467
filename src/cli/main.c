/* kiln: the client. One file per verb (build.c, du.c, prune.c, fsck.c). */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "basic/args.h"
#include "basic/log.h"
#include "cli/common.h"

static const struct {
	const char *name;
	int (*run)(int argc, char **argv);
	const char *help;
} verbs[] = {
	{ "build", kiln_cmd_build, "Build an op graph (--def GRAPH.json)" },
	{ "du", kiln_cmd_du, "Show disk usage of the cache and store" },
	{ "prune", kiln_cmd_prune, "Remove cache records and unreferenced data" },
	{ "debug", kiln_cmd_debug, "Debugging tools (fsck, ops)" },
	{ "workers", kiln_cmd_workers, "List the workers of a kilnd" },
};

static void usage(FILE *f)
{
	size_t i;

	fprintf(f, "Usage: kiln [--debug] COMMAND [OPTIONS]\n\nCommands:\n");
	for (i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		fprintf(f, "  %-8s %s\n", verbs[i].name, verbs[i].help);
	fprintf(f, "\nState lives in $KILN_ROOT (default ~/.local/share/kiln).\n"
		   "Run 'kiln COMMAND --help' for a command's options.\n");
}

int main(int argc, char **argv)
{
	size_t i;

	/*
	 * A peer that hangs up (a step's agent client, kilnd, a closed pipe)
	 * is an EPIPE to handle, never a silent death. Every socket write of
	 * ours says MSG_NOSIGNAL; this is the backstop. Children get the
	 * default back (kiln_child_exec).
	 */
	signal(SIGPIPE, SIG_IGN);
	while (argc > 1 && !strcmp(argv[1], "--debug")) {
		kiln_log_set_level(KILN_LOG_DEBUG);
		argv++;
		argc--;
	}
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return kiln_args_exit(argc < 2 ? KILN_ARGS_USAGE : KILN_ARGS_HELP);
	}
	if (!strcmp(argv[1], "--version")) {
		printf("kiln 0.1.0\n");
		return 0;
	}
	for (i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (!strcmp(argv[1], verbs[i].name))
			return verbs[i].run(argc - 1, argv + 1);
	fprintf(stderr, "kiln: unknown command '%s'\n\n", argv[1]);
	usage(stderr);
	return kiln_args_exit(KILN_ARGS_USAGE);
}
