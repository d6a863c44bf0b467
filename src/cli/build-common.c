/*
 * What the graph and the Dockerfile builds share: the registry client,
 * solving on kilnd or in this process, --metadata-file.
 */
#include <fcntl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "rcache/rcache.h"
#include "cli/build.h"
#include "cli/common.h"
#include "cli/remote.h"
#include "registry/registry.h"
#include "solver/definition.h"
#include "solver/solve.h"

int kiln_cli_registry(const struct build_args *a, struct kiln_registry **out,
		      struct kiln_error **err)
{
	const char *insecure[MAX_LIST + 1] = { 0 }, *endpoints[MAX_LIST + 1] = { 0 };
	struct kiln_registry_options o = { .insecure = insecure, .endpoints = endpoints };
	size_t i;

	for (i = 0; i < a->n_insecure; i++)
		insecure[i] = a->insecure[i];
	for (i = 0; i < a->n_endpoints; i++)
		endpoints[i] = a->endpoints[i];
	return kiln_registry_new(&o, out, err);
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

void kiln_cli_cache_spec_release(struct kiln_cli_cache_spec *s)
{
	free(s->dir);
	s->dir = NULL;
	if (s->s3)
		kiln_s3_config_release(&s->s3cfg);
	s->s3 = false;
}

/* Keys of a type=s3 spec that would put a secret on a command line. */
static bool secret_key(const char *k)
{
	return strstr(k, "secret") || strstr(k, "access_key") || strstr(k, "session_token") ||
	       strstr(k, "password");
}

int kiln_cli_cache_spec_parse(const char *spec, bool to, struct kiln_cli_cache_spec *out,
			      struct kiln_error **err)
{
	const char *flag = to ? "--cache-to" : "--cache-from";
	const char *dirkey = to ? "dest" : "src";
	_cleanup_free_ char *copy = xstrdup(spec);
	char *save = NULL, *kv;
	bool local = false;
	int r = 0;

	memset(out, 0, sizeof(*out));
	/* The type first: it says which keys mean something. */
	if (strstr(spec, "type=s3") == spec || strstr(spec, ",type=s3")) {
		out->s3 = true;
		kiln_s3_config_init(&out->s3cfg);
	}
	for (kv = strtok_r(copy, ",", &save); r == 0 && kv; kv = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(kv, '=');
		const char *val = eq ? eq + 1 : "";
		_cleanup_error_ struct kiln_error *e = NULL;

		if (eq)
			*eq = '\0';
		if (!strcmp(kv, "type") && (!strcmp(val, "local") || !strcmp(val, "s3"))) {
			local = !strcmp(val, "local");
		} else if (!strcmp(kv, "type")) {
			r = kiln_error_set(err, -EINVAL, "%s %s: type '%s' is not supported (type=local or type=s3)",
					   flag, spec, val);
		} else if (to && !strcmp(kv, "mode") && (!strcmp(val, "min") || !strcmp(val, "max"))) {
			out->all = !strcmp(val, "max");
		} else if (!strcmp(kv, "ignore-error")) {
			/* Always so: a remote cache never fails a build. */
		} else if (!out->s3 && !strcmp(kv, dirkey) && *val) {
			free(out->dir);
			out->dir = xstrdup(val);
		} else if (out->s3 && secret_key(kv)) {
			r = kiln_error_set(err, -EINVAL, "%s: %s= would put a secret on the command line; "
					   "give the keys in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
					   "~/.aws/credentials or credentials=FILE", flag, kv);
		} else if (out->s3 && kiln_s3_config_set(&out->s3cfg, kv, val, &e) == 0) {
			/* bucket, region, endpoint_url, prefix, use_path_style, ... */
		} else if (out->s3) {
			/* A value is never echoed: it could be a secret misspelt. */
			r = kiln_error_set(err, -EINVAL, "%s: unknown or bad key '%s' in a type=s3 spec%s%s%s",
					   flag, kv, e ? " (" : "", e ? kiln_error_msg(e) : "", e ? ")" : "");
		} else {
			r = kiln_error_set(err, -EINVAL, "%s %s: unknown or bad '%s%s%s'%s%s%s", flag,
					   spec, kv, eq ? "=" : "", val, e ? " (" : "",
					   e ? kiln_error_msg(e) : "", e ? ")" : "");
		}
	}
	if (r == 0 && out->s3 && !out->s3cfg.bucket)
		r = kiln_error_set(err, -EINVAL, "%s %s: type=s3 needs bucket=NAME", flag, spec);
	if (r == 0 && !out->s3 && (!local || !out->dir))
		r = kiln_error_set(err, -EINVAL, "%s %s: want type=local,%s=DIR or type=s3,bucket=NAME,...",
				   flag, spec, dirkey);
	if (r < 0)
		kiln_cli_cache_spec_release(out);
	return r;
}

/* Open the cache a spec names (--cache-to creates a directory). */
static int open_spec(const struct kiln_cli_cache_spec *spec, bool to, struct kiln_rcache **out,
		     struct kiln_error **err)
{
	if (spec->s3)
		return kiln_rcache_open_s3(&spec->s3cfg, out, err);
	return kiln_rcache_open_dir(spec->dir, to, out, err);
}

/*
 * The remote caches of --cache-from/--cache-to, for the embedded engine.
 * A --cache-from directory that cannot be opened is a warning (a speed-up,
 * never a dependency); --cache-to creates its directory.
 */
static int open_rcaches(const struct build_args *a, struct kiln_solve_options *so,
			struct kiln_error **err)
{
	const char *specs[2] = { a->cache_from, a->cache_to };
	size_t i;

	for (i = 0; i < 2; i++) {
		struct kiln_cli_cache_spec spec = { 0 };
		_cleanup_error_ struct kiln_error *e2 = NULL;
		struct kiln_rcache **slot = i ? &so->cache_to : &so->cache_from;
		int r;

		if (!specs[i])
			continue;
		r = kiln_cli_cache_spec_parse(specs[i], i == 1, &spec, err);
		if (r < 0)
			return r;
		if (i == 1)
			so->cache_to_all = spec.all;
		if (open_spec(&spec, i == 1, slot, &e2) < 0) {
			_cleanup_free_ char *msg = xasprintf("%s %s: %s; building without it",
							     i ? "--cache-to" : "--cache-from",
							     specs[i], kiln_error_msg(e2));

			kiln_progress_warning(so->progress, msg);
		}
		kiln_cli_cache_spec_release(&spec);
	}
	return 0;
}

bool kiln_cli_remote(const struct build_args *a)
{
	const char *addr = a->addr ? a->addr : getenv("KILN_ADDR");

	return addr && *addr;
}

int kiln_cli_solve(const struct build_args *a, struct kiln_engine *eng,
		   const struct kiln_definition *def, const struct kiln_solve_options *so,
		   struct kiln_cli_cluster *cl, struct kiln_solve_result *res,
		   struct kiln_error **err)
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
		.ssh = so->ssh,
		.image = cl ? cl->image : NULL,
		.image_result = cl ? &cl->image_result : NULL,
		.fetch_trees = cl ? cl->fetch_trees : true,
		.fetch_image = cl && cl->fetch_image,
		.registry = so->registry,
	};
	int r = kiln_remote_open(a->addr, a->token_file, &a->tls, &rm, err);

	if (r < 0)
		return r;
	if (!rm) {
		struct kiln_solve_options o = *so;

		r = open_rcaches(a, &o, err);
		if (r == 0)
			r = kiln_solve(def, &o, res, err);
		kiln_rcache_free(o.cache_from);
		kiln_rcache_free(o.cache_to);
		return r;
	}
	if (a->cache_from || a->cache_to) {
		kiln_remote_free(rm);
		return kiln_error_set(err, -ENOTSUP,
				      "--cache-from/--cache-to work with the embedded engine; "
				      "with --addr, kilnd's own cache serves the cluster");
	}
	r = kiln_remote_solve(rm, &b, res, err);
	kiln_remote_free(rm);
	return r;
}
