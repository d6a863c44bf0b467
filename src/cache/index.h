/*
 * The cache index: cache keys -> result records, in SQLite (WAL mode).
 *
 * A record says which result trees an op produced and carries provenance
 * (duration, worker, platform, sizes, created) that the scheduler uses to
 * estimate durations. Keys are "sha256:<hex>" strings: definition keys and
 * content keys both point at records (docs/internals/cache.md).
 *
 * A record is written in one transaction and only after every blob it
 * references is durable in the CAS, so after a crash or kill -9 the index
 * never names a result that is not fully stored.
 *
 * Thread-safe: calls are serialized on one connection.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "basic/error.h"
#include "cas/digest.h"

struct kiln_cache;

struct kiln_cache_record {
	char *key;                  /* the key this record was found under */
	char *op;                   /* digest of the op's canonical form */
	struct kiln_digest *outputs; /* result root trees, one per output */
	size_t n_outputs;
	char *meta;      /* JSON object text (e.g. image config), or NULL */
	int64_t created; /* unix seconds */
	uint64_t duration_ms;
	char *worker;
	char *platform;
	uint64_t size; /* bytes of the result trees' files */
	int64_t last_used; /* unix seconds; updated on hits */
	bool emulated;   /* made by a worker that emulates platform */
};

void kiln_cache_record_release(struct kiln_cache_record *r);

/*
 * The blobs a record's meta names ({"blobs": [...]}: image manifests,
 * configs and layers, cached layer blobs) besides its trees: prune keeps
 * them, fsck checks them. fn gets each entry's index and its digest, or
 * NULL for an entry that is not one. Meta that is not such JSON names none.
 */
typedef void (*kiln_cache_blob_fn)(void *ud, size_t i, const struct kiln_digest *d);
void kiln_cache_meta_blobs(const char *meta, kiln_cache_blob_fn fn, void *ud);

/* Open or create the index at path (a file). */
int kiln_cache_open(const char *path, struct kiln_cache **out,
		    struct kiln_error **err);
/*
 * A read bracket: the calling thread's lookups between begin and end share
 * one SQLite transaction (one lock round-trip, not one per lookup); other
 * threads' calls wait until end. Nests. Keep it short and free of waits.
 */
void kiln_cache_read_begin(struct kiln_cache *c);
void kiln_cache_read_end(struct kiln_cache *c);

/* Write what is buffered (records' last use); also done by free. */
void kiln_cache_flush(struct kiln_cache *c);
void kiln_cache_free(struct kiln_cache *c);

/* Look up a key: 0 and *out filled, -ENOENT when absent. Marks it used. */
int kiln_cache_get(struct kiln_cache *c, const char *key,
		   struct kiln_cache_record *out, struct kiln_error **err);

/*
 * Store rec under every key in keys (n_keys >= 1) in one transaction,
 * replacing older records under those keys.
 */
int kiln_cache_put(struct kiln_cache *c, const char *const *keys,
		   size_t n_keys, const struct kiln_cache_record *rec,
		   struct kiln_error **err);

/*
 * Point alias at the record key names (one transaction): the same result,
 * found another way, without a second record (which would, say, count
 * twice in kiln_cache_estimate). -ENOENT when key names no record.
 */
int kiln_cache_alias(struct kiln_cache *c, const char *key, const char *alias,
		     struct kiln_error **err);
/*
 * kiln_cache_alias for n pairs in one transaction (a solve's content-key
 * hits). A key that names no record is skipped; *skipped (may be NULL)
 * counts them.
 */
int kiln_cache_alias_many(struct kiln_cache *c, const char *const *keys,
			  const char *const *aliases, size_t n, size_t *skipped,
			  struct kiln_error **err);

int kiln_cache_delete(struct kiln_cache *c, const char *key,
		      struct kiln_error **err);

/* Every record (one call per key), oldest last_used first. */
typedef int (*kiln_cache_iter_fn)(const struct kiln_cache_record *r,
				  void *ud);
int kiln_cache_foreach(struct kiln_cache *c, kiln_cache_iter_fn fn, void *ud,
		       struct kiln_error **err);

/* Median duration of past runs of op (provenance); -ENOENT if none. */
int kiln_cache_estimate(struct kiln_cache *c, const char *op,
			uint64_t *duration_ms);

/*
 * Stat cache for build contexts: a file whose (dev, ino, size, mtime,
 * ctime) are unchanged keeps its digest without being re-read, and its
 * xattrs (-1 unknown, 0 none, 1 some: an xattr change moves the ctime)
 * without being listed. scope names the context (its absolute path).
 * *xattrs may be NULL.
 */
int kiln_cache_stat_get(struct kiln_cache *c, const char *scope,
			const char *relpath, const struct stat *st,
			struct kiln_digest *out, int *xattrs);
int kiln_cache_stat_put(struct kiln_cache *c, const char *scope,
			const char *relpath, const struct stat *st,
			const struct kiln_digest *d, int xattrs);
/*
 * Forget every stat row: what removes blobs from the store calls it, so a
 * row never names a blob that is gone (a context walk trusts them).
 */
int kiln_cache_stat_clear(struct kiln_cache *c, struct kiln_error **err);

/*
 * Every stat row of one scope, read in one query: a walk of a context
 * then asks memory, not the database, once per file. The same answers
 * as kiln_cache_stat_get as of the read. -E2BIG over max rows (the caller
 * asks file by file then).
 */
struct kiln_stat_snapshot;
int kiln_cache_stat_snapshot(struct kiln_cache *c, const char *scope, size_t max,
			     struct kiln_stat_snapshot **out, struct kiln_error **err);
int kiln_stat_snapshot_get(const struct kiln_stat_snapshot *s, const char *relpath,
			   const struct stat *st, struct kiln_digest *out, int *xattrs);
void kiln_stat_snapshot_free(struct kiln_stat_snapshot *s);

/*
 * Batch many stat_put calls in one transaction (contexts with thousands of
 * files). begin/commit nest with nothing else on the connection.
 */
int kiln_cache_begin(struct kiln_cache *c);
int kiln_cache_commit(struct kiln_cache *c);

/*
 * Make every change committed so far durable (a full WAL checkpoint, with
 * fsync). Commits are not fsynced one by one (synchronous=NORMAL), so prune
 * calls this after deleting records and before sweeping their blobs: a
 * power loss must not bring back a record whose blobs are gone. -EBUSY
 * (error names the index) when another process's reader blocks it.
 */
int kiln_cache_sync(struct kiln_cache *c, struct kiln_error **err);
