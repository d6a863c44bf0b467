/*
 * A build's image made on the cluster (docs/cluster.md "Pushes from the
 * cluster"): each platform's layers are diffed, compressed and, for a
 * push, sent to the registry by a worker that runs that platform natively
 * and holds (or pulls from its peers) the result trees; kilnd then puts
 * the manifests it received (a few KiB) and the index in its store and
 * pushes them with the tags. No layer passes through kilnd or the client.
 *
 * The submission's "image" member (docs/api.md):
 *   {"platforms": [{"platform": P, "base_op": N|null, "layer_ops": [N...],
 *                   "config": {...}|null}, ...],
 *    "options": {"compression": ..., "compression-level": ...,
 *                "force-compression": ..., "epoch": ...},
 *    "push": [{"ref": "REGISTRY/REPO:TAG", "mount_from": REPO|null}, ...]}
 * The client's credentials come beside it, in the submission's
 * "credentials" (kilnd/builds.c keeps those of the registries the build
 * names).
 */
#pragma once

#include <jansson.h>

#include "basic/error.h"
#include "cas/store.h"
#include "kilnd/scheduler.h"
#include "registry/registry.h"
#include "solver/definition.h"
#include "solver/solve.h"

/* Most platforms and pushes one image may have. */
#define KILN_CLUSTER_IMAGE_MAX_PLATFORMS 32u
#define KILN_CLUSTER_IMAGE_MAX_PUSH 16u

/*
 * Check a submission's "image" against its graph (op numbers, references,
 * options). -EINVAL naming the member at fault. *out is the request to
 * keep (a copy).
 */
int kiln_cluster_image_check(const json_t *image, const struct kiln_definition *def,
			     json_t **out, struct kiln_error **err);
/* The registries a checked image pushes to, as keys set in hosts. */
void kiln_cluster_image_hosts(const json_t *image, json_t *hosts);

/*
 * Make and push the image of a solved build. *state gets the client's
 * "image" ({"digest", "pushed": [...]}); the URLs of the workers that hold
 * its blobs are appended to *urls (*n of them). ro: kilnd's registry
 * settings, whose credentials creds (the client's for the push
 * registries, checked; may be NULL) beat.
 */
int kiln_cluster_image(struct kiln_sched_build *sb, struct kiln_store *store,
		       const struct kiln_registry_options *ro, const struct kiln_definition *def,
		       const json_t *image, const json_t *creds, const struct kiln_solve_result *res,
		       json_t **state, char ***urls, size_t *n, struct kiln_error **err);
