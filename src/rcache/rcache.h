/*
 * A remote cache: cache records and the blobs they reference, kept where
 * many machines can reach them (a directory a CI system saves, or an S3
 * prefix), in one layout (docs/internals/remote-cache.md):
 *
 *   cas/sha256/<hex>   a blob: a file's content or a tree node
 *   ac/sha256/<hex>    a record, named by its cache key
 *
 * A record is written only after every blob it references is there, and a
 * tree node only after everything below it, so a record never points at
 * missing data and a node that is there stands for its whole subtree.
 * Everything read back is verified (digests, the record's schema) before it
 * is used.
 *
 * A remote cache is a speed-up, never a dependency: every failure is
 * reported to the caller as an error it may treat as a miss. After a
 * failure that is not a miss (unreachable, refused, a deadline, 403, 5xx),
 * the endpoint's circuit breaker opens: no cache object of the process
 * calls it for KILN_RCACHE_COOLDOWN_S, then one call probes it. While
 * calls fail fast, kiln_rcache_unavailable() says why, for the warning.
 *
 * Thread-safe: calls may come from several threads.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "cache/index.h"
#include "cas/store.h"

struct kiln_rcache;

/* Record format version ("kiln_cache_record" in the JSON). */
#define KILN_RCACHE_RECORD_VERSION 1
/* Bounds on what is read back: a record, a tree node. */
#define KILN_RCACHE_MAX_RECORD (4u << 20)

/* After a failure, an endpoint is not called for this long, then probed. */
#define KILN_RCACHE_COOLDOWN_S 30
/* Bounds of an S3 remote cache's calls (rcache-s3.c, docs/cache.md). */
#define KILN_RCACHE_S3_CONNECT_MS 2000L
#define KILN_RCACHE_S3_SMALL_MS 5000L   /* records, existence checks */
#define KILN_RCACHE_S3_BLOB_MS 300000L  /* one blob, up to its size */

/* The objects of a remote cache, whatever keeps them. */
struct kiln_rcache_backend {
	/* For messages: "s3://bucket/prefix", "/var/cache/kiln". */
	const char *name;
	/* Caches with the same key share a circuit breaker (NULL: name). */
	const char *breaker;
	/*
	 * Stream object name (at most limit bytes) into sink: 0, -ENOENT when
	 * absent, -EFBIG past limit, another code (err set) when the remote
	 * failed. sink's failure is returned as is.
	 */
	int (*get)(void *b, const char *name, uint64_t limit,
		   int (*sink)(void *ud, const void *data, size_t n), void *ud,
		   struct kiln_error **err);
	/* 1 present, 0 absent, < 0 (err set) failed. */
	int (*has)(void *b, const char *name, struct kiln_error **err);
	/*
	 * Make a present object's modification time now (its bytes kept):
	 * 1 done, 0 absent, < 0 failed. A writer touches what it relies on,
	 * so a gc running meanwhile sees it young (rcache-gc.c).
	 */
	int (*touch)(void *b, const char *name, struct kiln_error **err);
	/*
	 * Store an object from fd (size bytes from offset 0) or, fd < 0, from
	 * data: all or nothing (a reader never sees part of it).
	 */
	int (*put)(void *b, const char *name, int fd, const void *data,
		   uint64_t size, struct kiln_error **err);
	/*
	 * Every object whose name starts with prefix, in any order, with its
	 * size and its modification time (unix seconds); fn's non-zero
	 * return stops the listing and is returned. May be NULL (no GC).
	 */
	int (*list)(void *b, const char *prefix,
		    int (*fn)(void *ud, const char *name, uint64_t size,
			      int64_t mtime),
		    void *ud, struct kiln_error **err);
	/* Delete an object; an absent one is not an error. May be NULL. */
	int (*del)(void *b, const char *name, struct kiln_error **err);
	void (*free)(void *b);
	void *b;
};

/* Take over backend (its free is called by kiln_rcache_free). */
struct kiln_rcache *kiln_rcache_new(const struct kiln_rcache_backend *backend);
void kiln_rcache_free(struct kiln_rcache *rc);
const char *kiln_rcache_name(const struct kiln_rcache *rc);
/*
 * From now on every call fails at once with -ECANCELED (not the remote's
 * failure): a shutdown that must not wait for a long transfer. Calls in
 * flight end at their next blob.
 */
void kiln_rcache_stop(struct kiln_rcache *rc);

/* A directory as a remote cache (created when create and missing). */
int kiln_rcache_open_dir(const char *dir, bool create, struct kiln_rcache **out,
			 struct kiln_error **err);

/* An S3 prefix (the S3 client's config) as a remote cache. */
struct kiln_s3_config;
int kiln_rcache_open_s3(const struct kiln_s3_config *cfg, struct kiln_rcache **out,
			struct kiln_error **err);

/*
 * Why this cache stopped calling its remote (the first failure that was
 * not a miss, or the endpoint's open breaker), or NULL while it is fine.
 * The text never holds a credential.
 */
const char *kiln_rcache_unavailable(struct kiln_rcache *rc);

/*
 * The record under key ("sha256:<hex>"): 0 and *out filled, verified
 * (schema, digests); -ENOENT when there is none; -EBADMSG (err says what)
 * for a corrupt record; another code when the remote failed.
 */
int kiln_rcache_get(struct kiln_rcache *rc, const char *key,
		    struct kiln_cache_record *out, struct kiln_error **err);

/*
 * Copy what store lacks of rec's result trees (nodes and files) and of the
 * blobs its meta names into store, verifying every blob against its digest
 * before it is named. *bytes (may be NULL) gets the bytes copied.
 */
int kiln_rcache_fetch(struct kiln_rcache *rc,
		      const struct kiln_cache_record *rec,
		      struct kiln_store *store, uint64_t *bytes,
		      struct kiln_error **err);

/*
 * Copy what store lacks of one tree (a job's input), at most budget bytes,
 * every blob verified.
 */
int kiln_rcache_fetch_tree(struct kiln_rcache *rc, const struct kiln_digest *tree,
			   struct kiln_store *store, uint64_t budget, uint64_t *bytes,
			   struct kiln_error **err);

/*
 * Copy what the remote lacks of rec's trees and meta blobs from store
 * (files, then nodes bottom-up), then write rec under every key.
 * *bytes (may be NULL) gets the bytes copied.
 */
int kiln_rcache_put(struct kiln_rcache *rc, struct kiln_store *store,
		    const char *const *keys, size_t n_keys,
		    const struct kiln_cache_record *rec, uint64_t *bytes,
		    struct kiln_error **err);

/* The record's JSON (the remote form) and its strict reading. */
char *kiln_rcache_record_encode(const char *key,
				const struct kiln_cache_record *rec);
int kiln_rcache_record_decode(const char *key, const void *data, size_t len,
			      struct kiln_cache_record *out,
			      struct kiln_error **err);

/* Garbage collection of a remote cache (kiln prune --cache). */
struct kiln_rcache_gc_opts {
	int64_t now;         /* unix seconds */
	int64_t older_than;  /* >= 0: records written before now - older_than go */
	bool has_keep;       /* keep_bytes set: oldest records go until it fits */
	uint64_t keep_bytes;
	int64_t grace;       /* blobs younger than this are never deleted */
	bool dry_run;
};

struct kiln_rcache_gc_stats {
	size_t records, records_deleted, records_bad;
	size_t blobs, blobs_deleted;
	uint64_t bytes, bytes_deleted; /* of blobs */
};

/*
 * Records by age (older_than), then oldest first while the blobs the kept
 * ones reach exceed keep_bytes; then every blob no kept record reaches and
 * no young tree node (written within grace: a writer at work) reaches,
 * older than grace, tree nodes before files. A record that cannot be read
 * or points at missing data is deleted too (records_bad).
 */
int kiln_rcache_gc(struct kiln_rcache *rc, const struct kiln_rcache_gc_opts *o,
		   struct kiln_rcache_gc_stats *st, struct kiln_error **err);
