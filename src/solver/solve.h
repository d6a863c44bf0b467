/*
 * The solver and the embedded scheduler.
 *
 * Given a validated definition, resolve its output: pin sources, compute
 * definition keys, look them up from the output down (a hit means nothing
 * upstream is needed), then run the remaining vertices as their inputs
 * resolve, looking up content keys first (early cut-off), ordered by
 * critical path and bounded by the worker's slots. See
 * docs/internals/solver.md for the vertex state machine.
 */
#pragma once

#include <stdbool.h>

#include "basic/error.h"
#include "cache/index.h"
#include "solver/definition.h"
#include "solver/progress.h"
#include "worker/worker.h"

/* A secret the client supplies for RUN --mount=type=secret. */
struct kiln_secret {
	const char *id;
	const void *data;
	size_t len;
};

struct kiln_solve_options {
	struct kiln_worker *worker;
	const char *worker_name; /* shown in progress, "local" by default */
	struct kiln_cache *cache;
	struct kiln_progress *progress;
	unsigned slots;  /* jobs at once; 0 = number of CPUs */
	bool no_cache;   /* do not look up (results are still recorded) */
	const struct kiln_secret *secrets;
	size_t n_secrets;
};

/* The result of one requested op ("output" and each of "outputs"). */
struct kiln_solve_output {
	size_t op;               /* index into def->ops */
	struct kiln_digest tree;
	char *meta;              /* record meta (JSON) or NULL */
};

struct kiln_solve_result {
	struct kiln_digest tree; /* the output's result tree */
	char *meta;              /* the output's record meta (JSON) or NULL */
	struct kiln_solve_output *outputs; /* one per def->outputs entry */
	size_t n_outputs;
	unsigned run, cached;    /* vertices run / resolved from the cache */
};

void kiln_solve_result_release(struct kiln_solve_result *r);

int kiln_solve(const struct kiln_definition *def,
	       const struct kiln_solve_options *opts,
	       struct kiln_solve_result *out, struct kiln_error **err);
