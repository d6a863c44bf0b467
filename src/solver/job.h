/*
 * Running one op on one worker: the code the embedded engine and
 * kiln-worker both run (docs/internals/solver.md "Jobs").
 *
 * A job names its op by index in a parsed definition and carries what the
 * solver resolved for it: the result tree of each input, the source pin,
 * and the trees the rootfs's layer chain stacks on. Everything it reads
 * must already be in the worker's store (kiln-worker pulls inputs before
 * it calls kiln_job_run); everything it writes goes to that store.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "cas/digest.h"
#include "solver/definition.h"
#include "worker/ssh-agent.h"
#include "worker/worker.h"

struct kiln_registry;

/*
 * The longest line of a job's streamed answer (docs/api.md, POST
 * /v1/jobs) that its reader, kilnd, must take: the answer line with an
 * image's meta; output lines are at most ~1.5 MiB. Here, below both
 * kiln-worker (agent/jobs.c) and kilnd (kilnd/scheduler.c), which share it.
 */
#define KILN_JOBS_LINE_MAX (8u << 20)

/* A secret the client supplies for RUN --mount=type=secret. */
struct kiln_secret {
	const char *id;
	const void *data;
	size_t len;
};

/*
 * The ssh agents the client declared (kiln build --ssh ID...): their ids
 * and where a step's agent requests for them go (worker/ssh-agent.h).
 * Never a socket path: that stays with the client.
 */
struct kiln_ssh_agents {
	const char *const *ids;
	size_t n_ids;
	kiln_ssh_relay_fn relay;
	void *ud;
};

/* The index of id in a->ids, or -ENOENT (a may be NULL). */
int kiln_ssh_agents_find(const struct kiln_ssh_agents *a, const char *id);
bool kiln_ssh_agents_has(const struct kiln_ssh_agents *a, const char *id);

typedef void (*kiln_job_output_fn)(void *ud, int stream, const char *data, size_t len);

struct kiln_job {
	const struct kiln_definition *def;
	size_t op;                        /* index into def->ops */
	const struct kiln_digest *inputs; /* result tree of each op input */
	const struct kiln_digest *pin;    /* the source's pin, or NULL */
	/*
	 * Trees the exec rootfs is an edit of, base first (each one's result
	 * is a small change of the one before): materialized in order so the
	 * rootfs becomes a stack of small layers. Missing ones are skipped.
	 */
	const struct kiln_digest *chain;
	size_t n_chain;
	/* What source.image pulls registry images through (NULL: refused). */
	struct kiln_registry *registry;
	/*
	 * oci-layout:// images come from the store (a worker: the client
	 * uploaded them and the job's puller fetched them), never a directory.
	 */
	bool layouts_in_store;
	const struct kiln_secret *secrets;
	size_t n_secrets;
	const struct kiln_ssh_agents *ssh; /* NULL: the client declared none */
	kiln_job_output_fn output; /* the step's stdout/stderr, or NULL */
	void *output_ud;
	/* May be NULL; true stops a running exec (kiln_exec_request). */
	bool (*cancelled)(void *ud);
	void *cancelled_ud;
};

struct kiln_job_result {
	struct kiln_digest tree;
	char *meta;    /* record meta (JSON) or NULL */
	uint64_t size; /* bytes of the result's files */
};

void kiln_job_result_release(struct kiln_job_result *r);

/*
 * Run job on w. A step that ran and failed (a command's non-zero exit, a
 * COPY source that does not exist) is -KILN_ESTEPFAILED (the exit) or the
 * op's own error, and err names the step; it must not be retried
 * elsewhere.
 */
int kiln_job_run(struct kiln_worker *w, const struct kiln_job *job,
		 struct kiln_job_result *out, struct kiln_error **err);

/*
 * How errors name an op: where it came from first when known
 * ("Dockerfile:4: "), then the step as progress shows it when the op has
 * a name (every Dockerfile op does), else its id in the graph.
 */
char *kiln_op_who(const struct kiln_op *op);
