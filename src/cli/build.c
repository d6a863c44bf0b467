/* kiln build: flags and dispatch to the graph or the Dockerfile build. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include <sys/stat.h>

#include "basic/alloc.h"
#include "basic/args.h"
#include "basic/parse-util.h"
#include "cli/build.h"
#include "cli/common.h"
#include "frontend/dockerfile/lower.h"

static void build_usage(FILE *f)
{
	fprintf(f,
		"Usage: kiln build [OPTIONS] [CONTEXT]      build a Dockerfile (default CONTEXT/Dockerfile)\n"
		"       kiln build --def GRAPH.json [OPTIONS] build an op graph\n\n"
		"Options:\n"
		"  -f, --file FILE          the Dockerfile (default CONTEXT/Dockerfile)\n"
		"  --def FILE               the op graph to build (docs/definition.md)\n"
		"  --platform LIST          target platforms, e.g. linux/amd64,linux/arm64 (default: native;\n"
		"                           with --def: the platform of ops that name none)\n"
		"  --target STAGE           build this stage of the Dockerfile (default: the last)\n"
		"  --build-arg K=V          set a build argument; repeatable\n"
		"  -t, --tag REF            name the image (with --push: push it there); repeatable\n"
		"  --push                   push the image to every -t REF (type=image,push=true)\n"
		"  -o, --output SPEC        type=local,dest=DIR | type=tar,dest=FILE | type=oci,dest=FILE\n"
		"                           | type=image,name=REF[,push=true] (compression=gzip|zstd|\n"
		"                           uncompressed, compression-level=N, force-compression=true);\n"
		"                           a bare DIR means type=local,dest=DIR; repeatable\n"
		"  --build-context NAME=VALUE\n"
		"                           a named context for FROM NAME, COPY --from=NAME and\n"
		"                           RUN --mount=from=NAME: a DIR, docker-image://REF or\n"
		"                           oci-layout://PATH[:TAG]; repeatable\n"
		"  --secret id=ID,src=PATH  a secret for RUN --mount=type=secret (or id=ID,env=VAR)\n"
		"  --ssh ID[=SOCKET|KEY[,KEY...]]\n"
		"                           an ssh agent for RUN --mount=type=ssh,id=ID: a socket\n"
		"                           (default $SSH_AUTH_SOCK) or key files; repeatable\n"
		"  --cache-from SPEC        look results up in a remote cache: type=local,src=DIR or\n"
		"                           type=s3,bucket=B[,prefix=P,region=R,endpoint_url=URL,\n"
		"                           use_path_style=true,credentials=FILE]\n"
		"  --cache-to SPEC          export this build's cache: type=local,dest=DIR or type=s3,...\n"
		"                           [,mode=min|max] (min: the outputs' records, the default;\n"
		"                           max: every step's)\n"
		"  --insecure-registry HOST allow plain http to HOST (loopback is always allowed)\n"
		"  --registry-endpoint R=H  send requests for registry R to HOST[:PORT] (a mirror, or the\n"
		"                           API host of a registry whose name differs, e.g. docker.io)\n"
		"  --addr URL               build on kilnd at URL (default $KILN_ADDR; unset: in this\n"
		"                           process, the embedded engine)\n"
		"  --token-file FILE        kilnd's client token (default $KILN_TOKEN)\n"
		"  --tls-ca FILE            CAs that verify an https:// kilnd (default $KILN_TLS_CA, else\n"
		"                           the system's)\n"
		"  --tls-cert FILE, --tls-key FILE\n"
		"                           client certificate for a kilnd that requires one (default\n"
		"                           $KILN_TLS_CERT, $KILN_TLS_KEY)\n"
		"  --progress MODE          auto|plain|tty|json|quiet (default auto, on stderr)\n"
		"  --no-cache               do not use cached results (new ones are still recorded)\n"
		"  --runtime R              OCI runtime: runc, crun or a path (default: first that works)\n"
		"  --slots N                steps to run at once (default: number of CPUs)\n"
		"  --metadata-file FILE     write result digests and step counts as JSON\n");
}

static int add_list(const char **list, size_t *n, const char *v, const char *flag)
{
	if (*n == MAX_LIST) {
		return kiln_args_error("kiln build", "at most %d %s", MAX_LIST, flag);
	}
	list[(*n)++] = v;
	return 0;
}

/*
 * --build-context NAME=VALUE, as buildx's parseContextNames takes it (the
 * name a reference, compared in its familiar form) with the values kiln
 * supports: docker-image://REF, oci-layout://PATH[:TAG] or a directory.
 */
static int check_context(const struct build_args *a, const char *v)
{
	const char *eq = strchr(v, '=');
	_cleanup_free_ char *raw = eq ? xstrndup(v, (size_t)(eq - v)) : NULL;
	_cleanup_free_ char *name = raw ? kiln_df_context_name(raw) : NULL;
	const char *val = eq ? eq + 1 : NULL;
	struct stat st;
	size_t i;

	if (!eq || eq == v)
		return kiln_args_error("kiln build", "--build-context: '%s' is not NAME=VALUE", v);
	if (!name)
		return kiln_args_error("kiln build", "--build-context: '%s' is not a valid context name (lower case letters, digits and . _ - / : @)",
				       raw);
	for (i = 0; i < a->n_contexts; i++) {
		const char *o = a->contexts[i];
		_cleanup_free_ char *oraw = xstrndup(o, (size_t)(strchr(o, '=') - o));
		_cleanup_free_ char *oname = kiln_df_context_name(oraw);

		if (!strcmp(oname, name))
			return kiln_args_error("kiln build", "--build-context: '%s' is given twice", name);
	}
	if (!strncmp(val, "docker-image://", 15) || !strncmp(val, "oci-layout://", 13)) {
		const char *rest = strstr(val, "://") + 3;

		if (!*rest)
			return kiln_args_error("kiln build", "--build-context: %s: empty reference in '%s'",
					       name, val);
		if (!strncmp(val, "oci-layout://", 13) && strchr(rest, '@'))
			return kiln_args_error("kiln build", "--build-context: %s: oci-layout://PATH@DIGEST is not supported; name the image by tag (oci-layout://PATH:TAG)",
					       name);
		return 0;
	}
	if (strstr(val, "://"))
		return kiln_args_error("kiln build", "--build-context: %s: '%s' is not a directory, docker-image://REF or oci-layout://PATH (URLs are not supported)",
				       name, val);
	if (!*val || stat(val, &st) < 0 || !S_ISDIR(st.st_mode))
		return kiln_args_error("kiln build", "--build-context: %s: '%s' is not a directory, docker-image://REF or oci-layout://PATH",
				       name, val);
	return 0;
}

/* --cache-from/--cache-to: checked now, opened when the build starts. */
static int check_cache_spec(struct build_args *a, bool to, const char *v)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_cli_cache_spec spec = { 0 };
	const char **slot = to ? &a->cache_to : &a->cache_from;

	if (*slot)
		return kiln_args_error("kiln build", "%s is given twice (one remote cache each way for now)",
				       to ? "--cache-to" : "--cache-from");
	if (kiln_cli_cache_spec_parse(v, to, &spec, &err) < 0)
		return kiln_args_error("kiln build", "%s", kiln_error_msg(err));
	kiln_cli_cache_spec_release(&spec);
	*slot = v;
	return 0;
}

static int parse_args(int argc, char **argv, struct build_args *a)
{
	static const struct option opts[] = {
		{ "def", required_argument, NULL, 'd' },
		{ "output", required_argument, NULL, 'o' },
		{ "progress", required_argument, NULL, 'p' },
		{ "no-cache", no_argument, NULL, 'n' },
		{ "platform", required_argument, NULL, 'P' },
		{ "runtime", required_argument, NULL, 'r' },
		{ "slots", required_argument, NULL, 's' },
		{ "metadata-file", required_argument, NULL, 'm' },
		{ "file", required_argument, NULL, 'f' },
		{ "target", required_argument, NULL, 'T' },
		{ "build-arg", required_argument, NULL, 'b' },
		{ "tag", required_argument, NULL, 't' },
		{ "push", no_argument, NULL, 'u' },
		{ "secret", required_argument, NULL, 'S' },
		{ "ssh", required_argument, NULL, 'H' },
		{ "insecure-registry", required_argument, NULL, 'I' },
		{ "addr", required_argument, NULL, 'A' },
		{ "token-file", required_argument, NULL, 'K' },
		{ "registry-endpoint", required_argument, NULL, 'E' },
		{ "build-context", required_argument, NULL, 'C' },
		{ "cache-from", required_argument, NULL, 'F' },
		{ "cache-to", required_argument, NULL, 'O' },
		{ "help", no_argument, NULL, 'h' },
		KILN_TLS_CLIENT_OPTIONS,
		{ 0 },
	};
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "o:f:t:h", opts, NULL)) != -1) {
		int q = 0;

		if (kiln_tls_arg(&a->tls, c, optarg))
			continue;
		switch (c) {
		case 'f':
			a->file = optarg;
			break;
		case 'T':
			a->target = optarg;
			break;
		case 'b':
			q = add_list(a->build_args, &a->n_build_args, optarg, "--build-arg");
			break;
		case 't':
			q = add_list(a->tags, &a->n_tags, optarg, "-t");
			break;
		case 'u':
			a->push = true;
			break;
		case 'S':
			q = add_list(a->secrets, &a->n_secrets, optarg, "--secret");
			break;
		case 'H':
			q = add_list(a->ssh, &a->n_ssh, optarg, "--ssh");
			break;
		case 'I':
			q = add_list(a->insecure, &a->n_insecure, optarg, "--insecure-registry");
			break;
		case 'E':
			if (!strchr(optarg, '=') || optarg[0] == '=' || !strchr(optarg, '=')[1]) {
				return kiln_args_error("kiln build", "--registry-endpoint: '%s' is not REGISTRY=HOST[:PORT]",
						       optarg);
			}
			q = add_list(a->endpoints, &a->n_endpoints, optarg, "--registry-endpoint");
			break;
		case 'C':
			q = check_context(a, optarg);
			if (q == 0)
				q = add_list(a->contexts, &a->n_contexts, optarg, "--build-context");
			break;
		case 'F':
		case 'O':
			q = check_cache_spec(a, c == 'O', optarg);
			break;
		case 'd':
			a->def = optarg;
			break;
		case 'A':
			a->addr = optarg;
			break;
		case 'K':
			a->token_file = optarg;
			break;
		case 'o':
			if (a->n_outputs == MAX_OUTPUTS) {
				return kiln_args_error("kiln build", "at most %d outputs", MAX_OUTPUTS);
			}
			a->outputs[a->n_outputs++] = optarg;
			break;
		case 'p':
			if (kiln_progress_mode_parse(optarg, &a->progress) < 0) {
				return kiln_args_error("kiln build", "--progress: '%s' is not auto, plain, tty, json or quiet",
						       optarg);
			}
			break;
		case 'n':
			a->no_cache = true;
			break;
		case 'P':
			a->platform = optarg;
			break;
		case 'r':
			a->runtime = optarg;
			break;
		case 's':
			if (kiln_parse_u32(optarg, &a->slots) < 0 || a->slots == 0 || a->slots > 256) {
				return kiln_args_error("kiln build", "--slots: '%s' is not a number from 1 to 256",
						       optarg);
			}
			break;
		case 'm':
			a->metadata_file = optarg;
			break;
		case 'h':
			build_usage(stdout);
			return KILN_ARGS_HELP;
		default:
			build_usage(stderr);
			return KILN_ARGS_USAGE;
		}
		if (q)
			return q;
	}
	if (optind < argc)
		a->context = argv[optind++];
	if (kiln_args_no_operands("kiln build", argc, argv))
		return KILN_ARGS_USAGE;
	if (a->def && (a->context || a->file || a->target || a->n_build_args || a->n_tags ||
		       a->push || a->n_contexts)) {
		return kiln_args_error("kiln build", "--def builds a graph: CONTEXT, -f, --target, --build-arg, --build-context, -t and --push are for Dockerfiles");
	}
	if (!a->def && !a->context && !a->file) {
		kiln_args_error("kiln build", "give a build CONTEXT (e.g. '.') or --def GRAPH.json");
		build_usage(stderr);
		return KILN_ARGS_USAGE;
	}
	if (!a->context)
		a->context = ".";
	return 0;
}

int kiln_cmd_build(int argc, char **argv)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct build_args a = { .progress = KILN_PROGRESS_AUTO };
	int r = parse_args(argc, argv, &a);

	if (r)
		return kiln_args_exit(r);
	if ((a.def ? kiln_build_graph(&a, &err) : kiln_build_dockerfile(&a, &err)) < 0)
		return kiln_cli_fail(err);
	return 0;
}
