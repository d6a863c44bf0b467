/*
 * The job service of kiln-worker (docs/api.md "Jobs (kilnd → worker)"):
 * POST /v1/jobs runs one op of a build graph on this worker, after pulling
 * the graph and the input trees it lacks from the peers kilnd names; and
 * the inventory, the result trees this worker holds, which it announces
 * when it registers so that kilnd can rebuild its location index.
 *
 * Threads: a job runs on the HTTP connection thread that received it, so
 * several run at once (kilnd keeps them within the worker's slots). The
 * definition cache, the inventory and the running count are shared under
 * their own locks; the worker (kiln_worker) is safe for concurrent jobs.
 */
#pragma once

#include <jansson.h>

#include "cache/index.h"
#include "rcache/rcache.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "cas/digest.h"
#include "cas/store.h"

struct kiln_http_server;
struct kiln_tls;
struct kiln_worker;

/* Largest POST /v1/jobs body. */
#define KILN_JOBS_BODY_LIMIT (4u << 20)
/* Most of a step's output a job answer carries (the end of it). */
#define KILN_JOBS_LOG_MAX (1u << 20)
/* Parsed definitions kept (by digest and platform). */
#define KILN_JOBS_DEF_CACHE 4u
/* Most sources, secrets and chain trees one job may list. */
#define KILN_JOBS_MAX_SOURCES 64u
#define KILN_JOBS_MAX_SECRETS 256u
#define KILN_JOBS_MAX_CHAIN 1024u

/* ---- the inventory ---- */

/*
 * The result trees held, oldest first, mirrored in a file of one digest
 * per line. Only complete trees are added (a job's result, an input tree
 * after a pull), so a tree listed here is served whole by the peer routes
 * as long as nothing removed blobs from the store behind the worker's back.
 */
struct kiln_inventory;

/*
 * Load path (missing: empty), dropping malformed lines, duplicates and
 * trees whose root node is no longer in store, and rewrite it compacted.
 * The store must outlive the inventory.
 */
int kiln_inventory_open(const char *path, struct kiln_store *store,
			struct kiln_inventory **out, struct kiln_error **err);
void kiln_inventory_free(struct kiln_inventory *inv);

/* Add tree (appended to the file) unless listed. 0, or -errno of the write. */
int kiln_inventory_add(struct kiln_inventory *inv, const struct kiln_digest *tree);
bool kiln_inventory_has(struct kiln_inventory *inv, const struct kiln_digest *tree);
size_t kiln_inventory_size(struct kiln_inventory *inv);
/* The newest max trees (all when max is 0) as a JSON array, oldest first. */
json_t *kiln_inventory_json(struct kiln_inventory *inv, size_t max);

/* ---- the job route ---- */

struct kiln_jobs;

struct kiln_jobs_options {
	/* The server the route is added to (before it starts). */
	struct kiln_http_server *http;
	struct kiln_worker *worker;
	/*
	 * The worker token (borrowed, must outlive the server): the route's
	 * bearer token and the one presented to every source.
	 */
	const char *token;
	/* Where the inventory lives (ROOT/inventory). */
	const char *inventory_path;
	/* For pulls from kilnd and other workers (copied; may be NULL). */
	const struct kiln_tls *tls;
	/*
	 * What source.image jobs pull registry images through (borrowed,
	 * must outlive the service; NULL: such jobs fail).
	 */
	struct kiln_registry *registry;
	/*
	 * The settings that client was made with (borrowed, may be NULL): a
	 * job carrying its build's client's credentials for its image's
	 * registry pulls through a client of its own made from them, with
	 * those credentials winning (docs/cluster.md).
	 */
	const struct kiln_registry_options *registry_options;
	/*
	 * kilnd's base URL (borrowed): where a job's ssh agent requests go
	 * (POST /v1/ssh, docs/api.md). NULL: a job with "ssh" is refused
	 * (400), never run without its agents.
	 */
	const char *controller;
	/*
	 * The worker's own record book (borrowed, may be NULL): each job kilnd
	 * gave cache keys for is recorded here when it succeeds, so the worker
	 * can announce its results to whichever kilnd it joins next.
	 */
	struct kiln_cache *records;
	/*
	 * A remote cache the worker copies each recorded result to (borrowed,
	 * may be NULL: kiln-worker --cache s3://…): after the job answered,
	 * on a thread of its own, through a bounded queue (full: the upload
	 * is skipped, never the job delayed); blobs first, then the record.
	 */
	struct kiln_rcache *upload;
};

/*
 * Open the inventory and add POST /v1/jobs to opts->http. Free the
 * service only after the HTTP server stopped.
 */
int kiln_jobs_new(const struct kiln_jobs_options *opts, struct kiln_jobs **out,
		  struct kiln_error **err);
void kiln_jobs_free(struct kiln_jobs *j);

/* Jobs being handled now (pulling inputs or running). */
unsigned kiln_jobs_running(struct kiln_jobs *j);
/* Most bytes of records a registration carries (kilnd's body limit). */
#define KILN_JOBS_RECORDS_BYTES (1u << 20)
/*
 * The newest records of the record book (at most max, meta of at most 16
 * KiB, KILN_JOBS_RECORDS_BYTES in all), as the registration's "records"
 * (docs/api.md).
 */
json_t *kiln_jobs_records_json(struct kiln_jobs *j, size_t max);
/* The service's inventory (owned by it). */
struct kiln_inventory *kiln_jobs_inventory(struct kiln_jobs *j);
