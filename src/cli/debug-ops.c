/*
 * kiln debug ops GRAPH: each op of an op graph with its digest, as kilnd
 * computes it for the same text, base directory and platform (the key
 * of a pin in POST /v1/builds, docs/api.md). For tests and for reading
 * a submission by hand.
 */
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "basic/args.h"
#include "basic/fs-util.h"
#include "cli/common.h"
#include "solver/definition.h"

#define GRAPH_MAX (64u << 20)

static void ops_usage(FILE *f)
{
	fputs("Usage: kiln debug ops [--base-dir DIR] [--platform P] GRAPH\n"
	      "\n"
	      "Print each op of the op graph file GRAPH as INDEX ID TYPE DIGEST.\n"
	      "\n"
	      "  --base-dir DIR  what relative paths are relative to (default: as\n"
	      "                  kiln build --def: GRAPH's directory)\n"
	      "  --platform P    the default platform (default linux/amd64)\n"
	      "  -h, --help      show this help\n",
	      f);
}

struct ops_args {
	const char *base_dir, *platform, *graph;
};

static int parse_args(int argc, char **argv, struct ops_args *a)
{
	static const struct option opts[] = {
		{ "base-dir", required_argument, NULL, 'b' },
		{ "platform", required_argument, NULL, 'p' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	a->platform = "linux/amd64";
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'b': a->base_dir = optarg; break;
		case 'p': a->platform = optarg; break;
		case 'h': ops_usage(stdout); return KILN_ARGS_HELP;
		default: ops_usage(stderr); return KILN_ARGS_USAGE;
		}
	}
	if (optind != argc - 1) {
		kiln_args_error("kiln debug ops", "expected one GRAPH");
		ops_usage(stderr);
		return KILN_ARGS_USAGE;
	}
	a->graph = argv[optind];
	return 0;
}

int kiln_cmd_debug_ops(int argc, char **argv)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *text = NULL;
	struct kiln_definition *def = NULL;
	struct ops_args a = { 0 };
	size_t len = 0, i;
	int r = parse_args(argc, argv, &a);

	if (r)
		return kiln_args_exit(r);
	if (a.base_dir) {
		r = kiln_read_file_at(AT_FDCWD, a.graph, GRAPH_MAX, &text, &len);
		if (r < 0)
			kiln_error_seterrno(&err, r, "cannot read %s", a.graph);
		else
			r = kiln_definition_parse(text, len, a.graph, a.base_dir, a.platform, &def,
						  &err);
	} else {
		r = kiln_definition_load(a.graph, a.platform, &def, &err);
	}
	if (r < 0)
		return kiln_cli_fail(err);
	for (i = 0; i < def->n_ops; i++)
		printf("%zu %s %s %s\n", i, def->ops[i].id, kiln_op_type_name(def->ops[i].type),
		       KILN_DIGEST_STR(&def->ops[i].digest));
	kiln_definition_free(def);
	return 0;
}
