/* kiln build: solve a graph on the embedded engine and export the result. */
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/parse-util.h"
#include "cli/build.h"
#include "cli/common.h"
#include "cli/remote.h"
#include "export/export.h"
#include "solver/definition.h"
#include "solver/progress.h"
#include "solver/solve.h"
#include "source/image.h"
#include "transfer/registry.h"

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
		"                           | type=image,name=REF[,push=true] (compression=gzip|zstd);\n"
		"                           a bare DIR means type=local,dest=DIR; repeatable\n"
		"  --secret id=ID,src=PATH  a secret for RUN --mount=type=secret (or id=ID,env=VAR)\n"
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
		fprintf(stderr, "kiln build: at most %d %s\n", MAX_LIST, flag);
		return 2;
	}
	list[(*n)++] = v;
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
		{ "insecure-registry", required_argument, NULL, 'I' },
		{ "addr", required_argument, NULL, 'A' },
		{ "token-file", required_argument, NULL, 'K' },
		{ "registry-endpoint", required_argument, NULL, 'E' },
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
		case 'I':
			q = add_list(a->insecure, &a->n_insecure, optarg, "--insecure-registry");
			break;
		case 'E':
			if (!strchr(optarg, '=') || optarg[0] == '=' || !strchr(optarg, '=')[1]) {
				fprintf(stderr, "kiln build: --registry-endpoint: '%s' is not REGISTRY=HOST[:PORT]\n",
					optarg);
				return 2;
			}
			q = add_list(a->endpoints, &a->n_endpoints, optarg, "--registry-endpoint");
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
				fprintf(stderr, "kiln build: at most %d outputs\n", MAX_OUTPUTS);
				return 2;
			}
			a->outputs[a->n_outputs++] = optarg;
			break;
		case 'p':
			if (kiln_progress_mode_parse(optarg, &a->progress) < 0) {
				fprintf(stderr, "kiln build: --progress: '%s' is not auto, plain, tty, json or quiet\n",
					optarg);
				return 2;
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
				fprintf(stderr, "kiln build: --slots: '%s' is not a number from 1 to 256\n",
					optarg);
				return 2;
			}
			break;
		case 'm':
			a->metadata_file = optarg;
			break;
		case 'h':
			build_usage(stdout);
			return 1;
		default:
			build_usage(stderr);
			return 2;
		}
		if (q)
			return q;
	}
	if (optind < argc)
		a->context = argv[optind++];
	if (optind < argc) {
		fprintf(stderr, "kiln build: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	if (a->def && (a->context || a->file || a->target || a->n_build_args || a->n_tags ||
		       a->push)) {
		fprintf(stderr, "kiln build: --def builds a graph: CONTEXT, -f, --target, --build-arg, -t and --push are for Dockerfiles\n");
		return 2;
	}
	if (!a->def && !a->context && !a->file) {
		fprintf(stderr, "kiln build: give a build CONTEXT (e.g. '.') or --def GRAPH.json\n");
		build_usage(stderr);
		return 2;
	}
	if (!a->context)
		a->context = ".";
	return 0;
}

int kiln_cli_registry(const struct build_args *a, struct kiln_registry **out,
		      struct kiln_error **err)
{
	const char *insecure[MAX_LIST + 1] = { 0 }, *endpoints[MAX_LIST + 1] = { 0 };
	struct kiln_registry_options o = { .insecure = insecure, .endpoints = endpoints };
	size_t i;
	int r;

	for (i = 0; i < a->n_insecure; i++)
		insecure[i] = a->insecure[i];
	for (i = 0; i < a->n_endpoints; i++)
		endpoints[i] = a->endpoints[i];
	r = kiln_registry_new(&o, out, err);
	if (r == 0)
		kiln_image_set_registry(*out);
	return r;
}

int kiln_build_write_metadata(const char *path, const char *tree, unsigned run,
			      unsigned cached, const char *image_digest,
			      struct kiln_error **err)
{
	json_t *o = json_pack("{sssisi}", "kiln.result.tree", tree, "kiln.steps.run", run,
			      "kiln.steps.cached", cached);
	char *s;
	int r;

	if (image_digest)
		json_object_set_new(o, "containerimage.digest", json_string(image_digest));
	s = json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
	json_decref(o);
	r = kiln_write_file_atomic_at(AT_FDCWD, path, s, strlen(s), 0644, false);
	free(s);
	if (r < 0)
		return kiln_error_seterrno(err, r, "--metadata-file %s", path);
	return 0;
}

int kiln_cli_solve(const struct build_args *a, struct kiln_engine *eng,
		   const struct kiln_definition *def, const struct kiln_solve_options *so,
		   struct kiln_solve_result *res, struct kiln_error **err)
{
	struct kiln_remote *rm = NULL;
	struct kiln_remote_build b = {
		.graph = def->text,
		.base_dir = def->base_dir,
		.platform = def->default_platform,
		.def = def,
		.store = kiln_worker_store(eng->worker),
		.cache = eng->cache,
		.progress = so->progress,
		.no_cache = so->no_cache,
		.secrets = so->secrets,
		.n_secrets = so->n_secrets,
	};
	int r = kiln_remote_open(a->addr, a->token_file, &a->tls, &rm, err);

	if (r < 0)
		return r;
	if (!rm)
		return kiln_solve(def, so, res, err);
	r = kiln_remote_solve(rm, &b, res, err);
	kiln_remote_free(rm);
	return r;
}

static int run_build(const struct build_args *a, struct kiln_error **err)
{
	struct kiln_export_spec specs[MAX_OUTPUTS] = { 0 };
	struct kiln_definition *def = NULL;
	struct kiln_solve_result res = { 0 };
	struct kiln_engine eng = { 0 };
	struct kiln_progress *prog = NULL;
	_cleanup_free_ char *root = kiln_cli_default_root();
	struct kiln_solve_options so = { 0 };
	struct kiln_registry *reg = NULL;
	size_t i;
	int r = 0;

	/* Check every flag before doing any work. */
	for (i = 0; r == 0 && i < a->n_outputs; i++)
		r = kiln_export_spec_parse(a->outputs[i], &specs[i], err);
	if (r == 0)
		r = kiln_cli_registry(a, &reg, err);
	if (r == 0)
		r = kiln_engine_open(root, a->runtime, &eng, err);
	if (r == 0)
		r = kiln_definition_load(a->def,
					 a->platform ? a->platform
						     : kiln_worker_native_platform(eng.worker),
					 &def, err);
	if (r < 0)
		goto out;
	prog = kiln_progress_new(a->progress, stderr);
	so.worker = eng.worker;
	so.cache = eng.cache;
	so.progress = prog;
	so.slots = a->slots;
	so.no_cache = a->no_cache;
	r = kiln_cli_solve(a, &eng, def, &so, &res, err);
	for (i = 0; r == 0 && i < a->n_outputs; i++)
		r = kiln_export_run(kiln_worker_store(eng.worker), &res.tree, &specs[i], err);
	if (r == 0 && a->metadata_file)
		r = kiln_build_write_metadata(a->metadata_file, KILN_DIGEST_STR(&res.tree), res.run,
					      res.cached, NULL, err);
out:
	for (i = 0; i < a->n_outputs; i++)
		kiln_export_spec_release(&specs[i]);
	kiln_solve_result_release(&res);
	kiln_progress_free(prog);
	kiln_definition_free(def);
	kiln_engine_close(&eng);
	kiln_image_set_registry(NULL);
	kiln_registry_free(reg);
	return r;
}

int kiln_cmd_build(int argc, char **argv)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct build_args a = { .progress = KILN_PROGRESS_AUTO };
	int r = parse_args(argc, argv, &a);

	if (r)
		return r == 1 ? 0 : r;
	if ((a.def ? run_build(&a, &err) : kiln_build_dockerfile(&a, &err)) < 0)
		return kiln_cli_fail(err);
	return 0;
}
