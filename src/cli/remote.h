/*
 * kiln build --addr (docs/cluster.md): the client side of a cluster
 * build. Local contexts are snapshotted here and only the blobs kilnd
 * lacks are uploaded; the graph is submitted, kilnd's progress is drawn
 * as it arrives, and the outputs are pulled into the local store, where
 * the exports read them exactly as after an embedded solve.
 */
#pragma once

#include <stdbool.h>

#include "basic/error.h"
#include "cache/index.h"
#include "cas/store.h"
#include "proto/tls.h"
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
};

/* Solve b on kilnd; *out as kiln_solve() fills it, its trees local. */
int kiln_remote_solve(struct kiln_remote *rm, const struct kiln_remote_build *b,
		      struct kiln_solve_result *out, struct kiln_error **err);
