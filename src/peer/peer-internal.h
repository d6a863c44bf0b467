/*
 * Internals of the peer pull (peer-client.c) that have files of their own
 * so that the fuzz target (tests/fuzz/fuzz-peer-pull.c) can drive them:
 * the FILES-phase plan (peer-plan.c) and the batch framing parser
 * (peer-frame.c). docs/internals/transfer.md describes the pull.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "peer/peer.h"

/* Digests per batch request (well under the server's limit). */
#define KILN_PEER_BATCH_DIGESTS 1000u

enum kiln_peer_blob_state {
	KILN_PEER_PENDING = 0,
	KILN_PEER_STORED,
	KILN_PEER_ABSENT,
};

struct kiln_peer_blob {
	struct kiln_digest d;
	uint64_t size;
	enum kiln_peer_blob_state state;
};

/* A FILES-phase work item: one large blob, or a batch of small ones. */
struct kiln_peer_item {
	struct kiln_peer_blob *b;
	size_t n, alloc;
	bool batch;
};

struct kiln_peer_plan {
	struct kiln_peer_item *items;
	size_t n, alloc;
};

/*
 * Plan the pull of files (digest -> size): a blob larger than small_max
 * is an item of its own; the others are packed into batch items of at
 * most batch_bytes blob bytes and KILN_PEER_BATCH_DIGESTS digests (a batch
 * of one may be larger than batch_bytes). Every digest of files is in
 * exactly one item, PENDING. plan must be zeroed or released.
 */
void kiln_peer_plan_files(const struct kiln_digest_set *files,
			  uint64_t small_max, uint64_t batch_bytes,
			  struct kiln_peer_plan *plan);

/* Free the plan's items; it is empty again afterwards. */
void kiln_peer_plan_release(struct kiln_peer_plan *plan);

/*
 * The framing parser of one batch or trees response (docs/api.md).
 * States:
 *   HEADER --"<digest> <size>"--> BODY --size bytes, committed--> HEADER
 *   HEADER --"<digest> -"--> HEADER   (absent there)
 *   HEADER --"end"--> END             (final: any further byte is an error)
 * A zero-size record commits at once and stays in HEADER.
 */
enum kiln_peer_frame_state {
	KILN_PEER_F_HEADER,
	KILN_PEER_F_BODY,
	KILN_PEER_F_END,
};

struct kiln_peer_framer {
	struct kiln_store *store;
	const char *method, *url;  /* named in errors (borrowed) */
	bool tree;                 /* nodes of the subtree asked for, up to node size */
	struct kiln_peer_item *item; /* batch: the blobs asked for */
	struct kiln_digest_set want; /* batch: digest -> index into item;
				      * tree: the root and the children of nodes received */
	struct kiln_store_group *group; /* batch: blobs named by one commit */
	enum kiln_peer_frame_state state;
	char line[KILN_PEER_FRAME_LINE_MAX];
	size_t llen;
	struct kiln_digest cur;
	uint64_t size, left;
	struct kiln_store_writer *w;
	size_t stored;          /* records accepted (new or present already) */
	uint64_t blobs, bytes;  /* of those, newly written and verified */
	struct kiln_error *err; /* the source's fault */
	int local;              /* our own failure (disk): ends the pull */
};

/*
 * A framer for a trees response to GET /v1/trees/<root>: root, then only
 * directory nodes under the nodes received (the server sends them
 * breadth-first), each up to the node limit; any other record, or a node
 * that does not decode, is the source's fault (issue 14).
 */
void kiln_peer_framer_init_tree(struct kiln_peer_framer *f,
				struct kiln_store *store, const char *method,
				const char *url, const struct kiln_digest *root);

/*
 * A framer for a batch response asking for item's PENDING blobs: each
 * record must be one of them with the size the item gives; records move
 * blobs to STORED or ABSENT. group (taken; may be NULL) names the blobs
 * when the caller commits it, else each is named when verified.
 */
void kiln_peer_framer_init_batch(struct kiln_peer_framer *f,
				 struct kiln_store *store,
				 struct kiln_peer_item *item,
				 struct kiln_store_group *group,
				 const char *method, const char *url);

/*
 * Feed response bytes (a kiln_http_call sink). Negative on the first
 * fault: f->err (the source's) or f->local (ours) says which.
 */
int kiln_peer_framer_feed(void *ud, const void *data, size_t len);

/* Free what the framer holds; an unfinished blob is discarded. */
void kiln_peer_framer_release(struct kiln_peer_framer *f);
