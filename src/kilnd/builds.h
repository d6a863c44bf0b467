/*
 * kilnd's build sessions (docs/api.md "Builds"): a client submits a graph
 * with its pinned contexts and secrets; kilnd solves it on a thread of its
 * own through the scheduler, streams progress as JSON lines the client
 * reads by offset, makes and pushes the image on the workers when asked
 * (kilnd/images.h), and relays the outputs the client pulls from the
 * workers that hold them (kilnd/relay.h), without storing them.
 *
 *   POST /v1/builds                 submit: {"id": ...}
 *   GET  /v1/builds/<id>/events     progress bytes from ?from=OFFSET
 *   GET  /v1/builds/<id>            state and, once done, the result
 *   GET  /v1/relay/<id>/v1/...      its outputs, as a peer serves them
 *   POST /v1/builds/<id>/ssh        the client answers ssh agent requests
 *   POST /v1/ssh                    a worker asks them (kilnd/ssh-relay.h)
 */
#pragma once

#include "basic/error.h"
#include "cache/index.h"
#include "cas/store.h"
#include "kilnd/scheduler.h"
#include "proto/http-server.h"

struct kiln_builds;

struct kiln_registry;

/*
 * Builds solve on sched with kilnd's store and cache; their source.image
 * references are resolved through registry (borrowed, must outlive b).
 */
struct kiln_builds *kiln_builds_new(struct kiln_sched *sched, struct kiln_store *store,
				    struct kiln_cache *cache, struct kiln_registry *registry);
/*
 * Share results through an S3 remote cache (cfg is not copied: it outlives
 * b): each build looks definition keys up there after a local miss
 * (results it finds come into kilnd's store, where workers pull them
 * from) and exports its outputs' records once they are gathered.
 */
struct kiln_s3_config;
void kiln_builds_set_remote_cache(struct kiln_builds *b, const struct kiln_s3_config *cfg);
/*
 * How the cluster's pushes reach registries (kilnd's --insecure-registry,
 * --registry-endpoint, --docker-config; borrowed, outlives b).
 */
struct kiln_registry_options;
void kiln_builds_set_registry_options(struct kiln_builds *b,
				      const struct kiln_registry_options *ro);
/*
 * kilnd is stopping: release the HTTP connections the ssh relay holds
 * (waiting requests fail). Before the HTTP server stops.
 */
void kiln_builds_shutdown(struct kiln_builds *b);
/* Waits for running builds to end. */
void kiln_builds_free(struct kiln_builds *b);
/*
 * Add the routes to http before it starts: the clients' with token, the
 * ssh relay's workers' side with worker_token.
 */
int kiln_builds_routes(struct kiln_builds *b, struct kiln_http_server *http,
		       const char *token, const char *worker_token);
/* Forget builds that ended long ago (called periodically). */
void kiln_builds_sweep(struct kiln_builds *b);
