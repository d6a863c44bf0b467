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
#include "rcache/rcache.h"
#include "solver/definition.h"
#include "solver/job.h"
#include "solver/progress.h"
#include "worker/worker.h"

/*
 * Where jobs run. Embedded (executor NULL): on opts->worker, in this
 * process. kilnd supplies its scheduler, which places each job on a
 * cluster worker.
 */
struct kiln_placement {
	char worker[64]; /* the worker's name, shown in progress */
	bool emulated;
};

struct kiln_task {
	struct kiln_job job;
	const char *key;  /* the content key (in-flight dedup across builds) */
	const char *defkey; /* the definition key (a worker's own record of it) */
	const char *name; /* progress name */
	uint64_t est_ms;  /* estimated duration (provenance or a default) */
	/* Call once the job is placed, before it runs (any thread). */
	void (*placed)(void *ud, const struct kiln_placement *where);
	void *placed_ud;
};

struct kiln_task_result {
	struct kiln_job_result res;
	struct kiln_placement where;
	bool shared;       /* another build ran it (in-flight dedup) */
	uint64_t moved;    /* bytes the worker pulled from other workers */
	uint64_t cache_in;  /* bytes the worker fetched from the remote cache */
	uint64_t cache_out; /* bytes the worker copied there before answering */
};

struct kiln_executor {
	void *ud;
	/* Can some worker run platform? *emulated: only emulated ones can. */
	int (*check_platform)(void *ud, const char *platform, bool *emulated,
			      struct kiln_error **err);
	/* Is tree (and all under it) held somewhere jobs can read it from? */
	bool (*have)(void *ud, const struct kiln_digest *tree);
	/*
	 * Run a job (called on a job thread). -ENOLINK: an input tree is held
	 * nowhere any more (its holder was lost); the solver recomputes it
	 * and runs the job again. Any other failure fails the build, among
	 * them -KILN_ESTEPFAILED (the step ran and failed) and -ECANCELED
	 * (given up because the build was cancelled). docs/internals/errors.md
	 */
	int (*run)(void *ud, const struct kiln_task *job,
		   struct kiln_task_result *out, struct kiln_error **err);
	/*
	 * May be NULL. The remote cache holds rec's result: true when the
	 * executor's jobs fetch it from there themselves (it then counts for
	 * have()), false when the solver must copy it into its store.
	 */
	bool (*remote_hit)(void *ud, const struct kiln_cache_record *rec);
};

/* A source pinned by the client (kiln build --addr uploads its contexts). */
struct kiln_solve_pin {
	struct kiln_digest op;   /* the source.local op's digest */
	struct kiln_digest tree; /* its snapshot, already in opts->store */
};

struct kiln_solve_options {
	struct kiln_worker *worker; /* embedded: runs every job */
	const char *worker_name; /* shown in progress, "local" by default */
	/* With an executor, jobs go there, not to worker. */
	const struct kiln_executor *executor;
	/* Where sources are pinned (snapshots, downloads); default: worker's. */
	struct kiln_store *store;
	/*
	 * The registry client source.image registry references are resolved
	 * through, and pulled through by embedded jobs (not owned). NULL:
	 * such references fail.
	 */
	struct kiln_registry *registry;
	const struct kiln_solve_pin *pins; /* source.local pins from the client */
	size_t n_pins;
	struct kiln_cache *cache;
	struct kiln_progress *progress;
	unsigned slots;  /* jobs at once; 0 = number of CPUs */
	bool no_cache;   /* do not look up (results are still recorded) */
	const struct kiln_secret *secrets;
	size_t n_secrets;
	const struct kiln_ssh_agents *ssh; /* kiln build --ssh, or NULL */
	/*
	 * Remote caches (kiln build --cache-from, --cache-to; not owned). A
	 * definition key that misses locally is looked up in cache_from and
	 * its result copied into the store (top-down: a hit spares everything
	 * upstream). Once the build succeeded, its records go to cache_to:
	 * every step's with cache_to_all (mode=max), else the outputs'. A
	 * remote failure is a miss and one warning, never a failed build.
	 */
	struct kiln_rcache *cache_from;
	struct kiln_rcache *cache_to;
	bool cache_to_all;
	/*
	 * May be NULL. Asked before each job starts, with the solver's lock
	 * held (it must not block or call into the solver): once true, nothing
	 * new starts, and the build fails with -ECANCELED ("build cancelled")
	 * when the jobs running return (an executor makes them return early).
	 */
	bool (*cancelled)(void *ud);
	void *cancelled_ud;
};

/* The result of one requested op ("output" and each of "outputs"). */
struct kiln_solve_output {
	size_t op;               /* index into def->ops */
	struct kiln_digest tree;
	char *meta;              /* record meta (JSON) or NULL */
};

/*
 * The cache record of a requested output, to export after the solve when
 * the caller first brings the outputs into its store (kilnd gathers them
 * from the workers): kiln_solve_export().
 */
struct kiln_solve_record {
	char defkey[KILN_DIGEST_STRLEN];
	char contentkey[KILN_DIGEST_STRLEN]; /* "" when the output was a definition-key hit */
	struct kiln_cache_record rec;       /* owned: one output; op, meta, platform, worker */
};

struct kiln_solve_result {
	struct kiln_digest tree; /* the output's result tree */
	char *meta;              /* the output's record meta (JSON) or NULL */
	struct kiln_solve_output *outputs; /* one per def->outputs entry */
	size_t n_outputs;
	unsigned run, cached;    /* vertices run / resolved from the cache */
	uint64_t bytes_moved;    /* bytes workers pulled from other workers */
	uint64_t cache_in, cache_out; /* bytes from cache_from, to cache_to */
	struct kiln_solve_record *records; /* the outputs' records (no local sources) */
	size_t n_records;
};

void kiln_solve_result_release(struct kiln_solve_result *r);

/*
 * Export records (a solve result's) to rc from store: blobs first, then
 * each record under its definition key and content key. *bytes (may be
 * NULL) gets the bytes copied. The first failure stops it.
 */
int kiln_solve_export(struct kiln_rcache *rc, struct kiln_store *store,
		      const struct kiln_solve_record *recs, size_t n, uint64_t *bytes,
		      struct kiln_error **err);

int kiln_solve(const struct kiln_definition *def,
	       const struct kiln_solve_options *opts,
	       struct kiln_solve_result *out, struct kiln_error **err);
