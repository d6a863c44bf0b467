/*
 * kilnd's scheduler: the solver's executor in a cluster
 * (docs/internals/cluster.md). Each job is placed on a worker through the
 * registry (platform, native first, least estimated finish), sent to it
 * as POST /v1/jobs with the holders of its inputs as sources, and its
 * result entered in the location index. A worker that fails at transport
 * level is marked lost and the job placed again elsewhere; a step that
 * failed is not retried. Jobs of concurrent builds with the same content
 * key run once (in-flight dedup).
 */
#pragma once

#include <stdatomic.h>
#include <stdint.h>

#include <jansson.h>

#include "basic/error.h"
#include "cas/store.h"
#include "kilnd/worker-table.h"
#include "proto/tls.h"
#include "solver/solve.h"

struct kiln_sched;
struct kiln_ssh_relay;

/*
 * worker_token: the token jobs and pulls carry; tls (may be NULL): the CA
 * that verifies workers and kilnd's client certificate (copied).
 */
struct kiln_sched *kiln_sched_new(struct kiln_worker_table *reg, struct kiln_store *store,
				  const char *worker_token, const struct kiln_tls *tls);
/*
 * How workers reach kilnd's own blobs (uploaded contexts, the graphs);
 * set once, when the listener is up, before builds are accepted.
 */
void kiln_sched_set_url(struct kiln_sched *s, const char *self_url);
/*
 * How results move between workers once kilnd has a remote cache
 * (docs/cache.md):
 *   PEER  workers pull from each other; kilnd copies remote cache hits
 *         into its store (the only mode without --cache);
 *   AUTO  peers first, then the bucket: remote cache hits stay there and
 *         the workers fetch them as inputs (kiln-worker --cache), kilnd
 *         only what it must hand the client;
 *   S3    only through the bucket, for workers that cannot reach each
 *         other: a job's sources are kilnd alone, and every worker puts
 *         its result in the bucket before it answers.
 */
enum kiln_transfer { KILN_TRANSFER_PEER, KILN_TRANSFER_AUTO, KILN_TRANSFER_S3 };
void kiln_sched_set_transfer(struct kiln_sched *s, enum kiln_transfer t);
/* A remote cache hit this kilnd left in the bucket, or a result a worker put there. */
bool kiln_sched_in_bucket(struct kiln_sched *s, const struct kiln_digest *tree);
void kiln_sched_free(struct kiln_sched *s);

/* One build's view: its graph blob and the platform the graph was parsed with. */
struct kiln_sched_build {
	struct kiln_sched *sched;
	struct kiln_digest graph;
	const char *platform;
	/* Its ssh agent requests go through relay (NULL: none), by build id. */
	const char *id;
	struct kiln_ssh_relay *relay;
	/*
	 * The client's registry credentials (kilnd/builds.c; NULL: none): a
	 * source.image job gets those of its reference's registry only.
	 */
	const json_t *credentials;
	/*
	 * Set by whoever cancels the build: jobs in flight are given up (their
	 * workers are not blamed) and no new one is placed.
	 */
	atomic_bool cancelled;
};

/*
 * Cancel b's build: nothing new is placed, jobs in flight are given up
 * (their workers stop them), and a wait for a slot or for another build's
 * run of the same step ends. False when it was cancelled already.
 */
bool kiln_sched_cancel(struct kiln_sched_build *b);

/* An executor running b's jobs (b must outlive it). */
void kiln_sched_executor(struct kiln_sched_build *b, struct kiln_executor *out);

/*
 * Make a result present in kilnd's store: tree (and all under it) and the
 * blobs its record meta names (an image's layers), pulled from the tree's
 * holders. -ENOLINK when no ready worker holds it.
 */
int kiln_sched_gather(struct kiln_sched *s, const struct kiln_digest *tree, const char *meta,
		      struct kiln_error **err);

/*
 * Make one platform's image on a worker (POST /v1/images, docs/api.md):
 * placed like a job that reads trees (natively for platform when a worker
 * can, on the one that lacks the fewest bytes), with the holders of those
 * trees and kilnd as its "sources" (set in body). *answer is the worker's
 * answer, *where the worker: the image's blobs stay there. A worker that
 * does not answer is marked lost, and the image is placed again, as after
 * a 409 (a tree its sources lost); any other failure is the error.
 */
struct kiln_worker_ref;
int kiln_sched_image(struct kiln_sched_build *b, const char *platform,
		     const struct kiln_digest *trees, size_t n_trees, json_t *body,
		     json_t **answer, struct kiln_worker_ref *where, struct kiln_error **err);

/*
 * The URLs of the ready workers holding tree, appended to *urls (n of
 * them, NULL-terminated, each once; free with kiln_strv_free).
 */
void kiln_sched_holder_urls(struct kiln_sched *s, const struct kiln_digest *tree,
			    char ***urls, size_t *n);
/* kilnd's own URL, as workers reach it. */
const char *kiln_sched_self_url(struct kiln_sched *s);
/* Relay a client's peer request to url (kilnd/relay.h), with the worker token. */
struct kiln_relay_request;
struct kiln_http_server_resp;
void kiln_sched_relay(struct kiln_sched *s, const char *url, const struct kiln_relay_request *req,
		      struct kiln_http_server_resp *resp);
