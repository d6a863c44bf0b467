/*
 * Peer-to-peer blob transfer between machines (DESIGN "Transfer";
 * docs/api.md has the wire format, docs/internals/transfer.md the pull).
 *
 * A worker serves its kiln_store on its HTTP server:
 *   GET  /v1/blobs/<digest>   one blob, sendfile, single Range
 *   POST /v1/blobs/missing    which of these digests are absent here
 *   POST /v1/blobs/batch      many small blobs in one framed response
 *   GET  /v1/trees/<digest>   every directory node under a root, framed
 * and pulls from other workers: the tree structure in one request, then
 * the file blobs it lacks, several requests in parallel, every blob
 * verified against its digest before it gets its name in the store.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "cas/digest-set.h"
#include "cas/digest.h"
#include "cas/store.h"

struct kiln_http_server;
struct kiln_http_client;

/* Most digests one missing/batch request may list. */
#define KILN_PEER_MAX_DIGESTS 10000u
/* Largest JSON body of a missing/batch request. */
#define KILN_PEER_REQUEST_LIMIT (1u << 20)
/* Default cap on the blob bytes of one batch or trees response. */
#define KILN_PEER_BATCH_BYTES (64u << 20)
/* Longest record header line of the batch framing, '\n' included. */
#define KILN_PEER_FRAME_LINE_MAX 96u

/* ---- serving (peer-server.c) ---- */

struct kiln_peer_server;

struct kiln_peer_server_options {
	/*
	 * Stop adding blobs to a batch or trees response past this many
	 * bytes (0: KILN_PEER_BATCH_BYTES); the client asks again for the
	 * rest. A single blob larger than the cap is still sent when it is
	 * the first record.
	 */
	uint64_t batch_bytes;
	/*
	 * The routes' tokens (borrowed), for a server with several roles;
	 * NULL: the server's token.
	 */
	const char *token, *alt_token;
	/*
	 * Also accept uploads, PUT /v1/blobs/<digest> (the body is the blob,
	 * streamed into the store as it arrives and verified before it is
	 * named), with this token (borrowed), at most upload_limit bytes
	 * each. NULL: no uploads.
	 */
	const char *upload_token;
	size_t upload_limit;
};

/*
 * Register the peer routes on http (before it starts) to serve store.
 * The store must outlive the server; free the peer server only after the
 * HTTP server stopped.
 */
int kiln_peer_server_new(struct kiln_http_server *http,
			 struct kiln_store *store,
			 const struct kiln_peer_server_options *opts,
			 struct kiln_peer_server **out, struct kiln_error **err);
void kiln_peer_server_free(struct kiln_peer_server *p);

/* ---- pulling (peer-client.c) ---- */

/* A machine that may hold the blobs. */
struct kiln_peer_source {
	const char *url;   /* base URL: "http://10.0.0.2:7070" */
	const char *token; /* bearer token, or NULL */
};

struct kiln_peer_source_stats {
	uint64_t bytes;    /* verified blob bytes stored from this source */
	uint64_t blobs;
	uint64_t requests;
	unsigned failures; /* failed or corrupt answers (source then skipped) */
};

struct kiln_peer_stats {
	uint64_t bytes; /* verified blob bytes stored (tree nodes included) */
	uint64_t blobs;
	uint64_t requests;
	/* NULL, or an array of n that the pull fills, one per source. */
	struct kiln_peer_source_stats *sources;
};

struct kiln_peer_pull_options {
	unsigned parallel;    /* requests in flight (0: 4) */
	uint64_t small_max;   /* blobs up to this size go by batch (0: 256 KiB) */
	uint64_t batch_bytes; /* blob bytes asked per batch (0: 4 MiB) */
	/* Client to use (shared connections), or NULL for one per pull. */
	struct kiln_http_client *http;
};

/*
 * Make root and everything under it present in store, pulling what is
 * missing from sources (tried in order; a source that fails, answers
 * wrongly or serves data that does not match its digest is skipped for
 * the rest of the pull, one that lacks a blob only for that blob). Nothing
 * unverified is ever stored. Fails only when some node or blob could be
 * had from no source (-ENOENT; -EPROTO when the tree is still incomplete
 * after its rounds): the error names it and what each source answered.
 * kiln-worker answers a job 409 on these two (docs/internals/errors.md).
 * stats (may be NULL) is zeroed, then filled.
 */
int kiln_peer_pull_tree(struct kiln_store *store,
			const struct kiln_digest *root,
			const struct kiln_peer_source *sources, size_t n,
			const struct kiln_peer_pull_options *opts,
			struct kiln_peer_stats *stats, struct kiln_error **err);

/*
 * Pull one blob (streamed to the store, verified). size is its expected
 * size, or UINT64_MAX when unknown. Present already: 0, nothing sent.
 */
int kiln_peer_pull_blob(struct kiln_store *store, const struct kiln_digest *d,
			uint64_t size, const struct kiln_peer_source *sources,
			size_t n, const struct kiln_peer_pull_options *opts,
			struct kiln_peer_stats *stats, struct kiln_error **err);

/*
 * A build result: its tree (kiln_peer_pull_tree) and every blob its record
 * meta names (an image's manifest, config and layers; kiln_cache_meta_blobs),
 * from the same sources. meta may be NULL.
 */
int kiln_peer_pull_result(struct kiln_store *store, const struct kiln_digest *tree,
			  const char *meta, const struct kiln_peer_source *sources,
			  size_t n, const struct kiln_peer_pull_options *opts,
			  struct kiln_error **err);

/*
 * Ask src which of digests[0..n) it lacks: missing[i] is set true for
 * those. n is at most KILN_PEER_MAX_DIGESTS.
 */
int kiln_peer_find_missing(struct kiln_http_client *http,
			   const struct kiln_peer_source *src,
			   const struct kiln_digest *digests, size_t n,
			   bool *missing, struct kiln_error **err);


