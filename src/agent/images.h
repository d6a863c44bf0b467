/*
 * The image service of kiln-worker (docs/api.md "Images (kilnd → worker)"):
 * POST /v1/images makes one platform's image out of result trees this
 * worker holds or pulls from the peers kilnd names (the layer diffs,
 * compressed on every core, the config and the manifest, all in the
 * worker's store) and, when asked, pushes its blobs and the manifest (by
 * digest) straight to the registry. kilnd then pushes the index and the
 * tags: no layer passes through kilnd or the client.
 *
 * Credentials: a request may carry the client's credentials for the
 * registries it pushes to. They live in a registry client made for that
 * request alone, beside the worker's own (--docker-config), and go with it
 * when the request ends: never logged, stored or sent to another host.
 * For a registry named in both, the client's win (docs/cluster.md).
 *
 * Threads: a request runs on the HTTP connection thread that received it.
 */
#pragma once

#include "basic/error.h"
#include "cache/index.h"
#include "registry/registry.h"

struct kiln_http_server;
struct kiln_tls;
struct kiln_worker;

/* Largest POST /v1/images body (the image config rides in it). */
#define KILN_IMAGES_BODY_LIMIT (8u << 20)
/* Most layer trees and push destinations one request may list. */
#define KILN_IMAGES_MAX_TREES 1024u
#define KILN_IMAGES_MAX_PUSH 16u

struct kiln_images;

struct kiln_images_options {
	struct kiln_http_server *http; /* the route goes here, before it starts */
	struct kiln_worker *worker;
	const char *token;              /* borrowed: the route's and the sources' */
	const struct kiln_tls *tls;     /* for pulls (copied; may be NULL) */
	/* How this worker reaches registries (borrowed, must outlive it). */
	const struct kiln_registry_options *registry;
	/* Layers made before (ROOT/layers.db; may be NULL: none kept). */
	struct kiln_cache *layers;
};

int kiln_images_new(const struct kiln_images_options *opts, struct kiln_images **out,
		    struct kiln_error **err);
/* Only after the HTTP server stopped. */
void kiln_images_free(struct kiln_images *im);
