/*
 * What the graph and the Dockerfile builds share: the registry client,
 * solving on kilnd or in this process, --metadata-file.
 */
#include <fcntl.h>
#include <jansson.h>
#include <string.h>

#include "basic/fs-util.h"
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
		.ssh = so->ssh,
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
