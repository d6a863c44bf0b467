/* kiln build --def: solve an op graph and export the result. */
#include <stdio.h>

#include "basic/alloc.h"
#include "cli/build.h"
#include "cli/common.h"
#include "export/export.h"
#include "registry/registry.h"
#include "solver/definition.h"
#include "solver/progress.h"
#include "solver/solve.h"

int kiln_build_graph(const struct build_args *a, struct kiln_error **err)
{
	struct kiln_export_spec specs[MAX_OUTPUTS] = { 0 };
	struct kiln_definition *def = NULL;
	struct kiln_solve_result res = { 0 };
	struct kiln_engine eng = { 0 };
	struct kiln_progress *prog = NULL;
	_cleanup_free_ char *root = kiln_cli_default_root();
	struct kiln_solve_options so = { 0 };
	struct kiln_registry *reg = NULL;
	struct kiln_cli_ssh ssh = { 0 };
	size_t i;
	int r = 0;

	/* Check every flag before doing any work. */
	for (i = 0; r == 0 && i < a->n_outputs; i++)
		r = kiln_export_spec_parse(a->outputs[i], &specs[i], err);
	if (r == 0)
		r = kiln_cli_ssh_open(a, &ssh, err);
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
	so.registry = reg;
	so.progress = prog;
	so.slots = a->slots;
	so.no_cache = a->no_cache;
	so.ssh = ssh.n ? &ssh.agents : NULL;
	/* The agents live for the solve only: not through the exports. */
	r = kiln_cli_ssh_start(&ssh, err);
	if (r == 0)
		r = kiln_cli_solve(a, &eng, def, &so, NULL, &res, err);
	kiln_cli_ssh_release(&ssh);
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
	kiln_registry_free(reg);
	kiln_cli_ssh_release(&ssh);
	return r;
}
