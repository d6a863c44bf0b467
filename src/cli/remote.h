/*
 * kiln build --addr (docs/cluster.md): the client side of a cluster
 * build. Local contexts are snapshotted here and only the blobs kilnd
 * lacks are uploaded; the graph is submitted, kilnd's progress is drawn
 * as it arrives, and the outputs the exports need are pulled into the
 * local store through kilnd's relay, where the exports read them exactly
 * as after an embedded solve. An image is made and pushed on the cluster.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>

#include "basic/error.h"
#include "cache/index.h"
#include "cas/store.h"
#include "proto/tls.h"
#include "registry/registry.h"
#include "solver/solve.h"

struct kiln_remote;

/*
 * addr: --addr, else $KILN_ADDR; *out = NULL when neither is set (the
 * embedded engine builds). token_file: --token-file, else $KILN_TOKEN.
 * tls: the --tls-* flags (may be NULL), completed by kiln_cli_tls().
 */
int kiln_remote_open(const char *addr, const char *token_file,
		     const struct kiln_tls *tls, struct kiln_remote **out,
		     struct kiln_error **err);
void kiln_remote_free(struct kiln_remote *rm);

struct kiln_remote_build {
	const char *graph;    /* the definition's JSON text */
	const char *base_dir; /* what relative paths in it are relative to */
	const char *platform; /* the default platform it was parsed with */
	const struct kiln_definition *def; /* graph, parsed here */
	struct kiln_store *store;          /* local: snapshots, fetched outputs */
	struct kiln_cache *cache;          /* local: the snapshot stat cache */
	struct kiln_progress *progress;
	bool no_cache;
	const struct kiln_secret *secrets;
	size_t n_secrets;
	/* kiln build --ssh: the ids go to kilnd, requests come back (NULL: none) */
	const struct kiln_ssh_agents *ssh;
	/*
	 * The image the cluster makes and pushes (kilnd/images.h's request;
	 * NULL: none), and where the result's "image" goes (a new reference).
	 */
	json_t *image;
	json_t **image_result;
	/*
	 * What comes here, through kilnd's relay: the result trees (for
	 * type=local and type=tar), the image's blobs (for type=oci).
	 * Without either, only digests and the summary cross the link.
	 */
	bool fetch_trees, fetch_image;
	/*
	 * The client's registry client: its credentials for the registries
	 * the build names (source.image references, pushes), and only those,
	 * go with the build (docs/cluster.md). NULL: none are sent.
	 */
	struct kiln_registry *registry;
};

/* Solve b on kilnd; *out as kiln_solve() fills it, its trees local. */
int kiln_remote_solve(struct kiln_remote *rm, const struct kiln_remote_build *b,
		      struct kiln_solve_result *out, struct kiln_error **err);
