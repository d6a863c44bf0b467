/*
 * The content-addressed blob store (CAS) of one machine.
 *
 * Layout under its directory:
 *   blobs/sha256/<64 hex>   one file per blob, never modified once named
 *   tmp/                    writes in progress (removed on open)
 *
 * Invariant: a file under blobs/ always holds exactly the bytes its name
 * says. Every write goes temp file -> hash verified -> fsync (when durable)
 * -> rename -> directory fsync, so a crash or kill -9 never leaves a blob
 * whose content disagrees with its name. Tree nodes (tree.h) are blobs too.
 *
 * Thread-safe: any number of threads may use one store.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "cas/digest.h"

struct kiln_store;

struct kiln_store_options {
	bool durable; /* fsync blobs and their directory (default true) */
};

int kiln_store_open(const char *dir, const struct kiln_store_options *opts,
		    struct kiln_store **out, struct kiln_error **err);
void kiln_store_free(struct kiln_store *s);

const char *kiln_store_dir(const struct kiln_store *s);

bool kiln_store_has(struct kiln_store *s, const struct kiln_digest *d);
/* Size of a present blob; -ENOENT when absent. */
int kiln_store_size(struct kiln_store *s, const struct kiln_digest *d,
		    uint64_t *size);
/* Absolute path of the blob's file (it may not exist). Caller frees. */
char *kiln_store_blob_path(const struct kiln_store *s,
			   const struct kiln_digest *d);
/* Open a blob read-only: fd or -ENOENT/-errno. */
int kiln_store_open_blob(struct kiln_store *s, const struct kiln_digest *d);

/* Store a buffer; *out gets its digest. */
int kiln_store_put_buf(struct kiln_store *s, const void *data, size_t len,
		       struct kiln_digest *out, struct kiln_error **err);

/*
 * Copy fd (from its offset to EOF) into the store. When expected is
 * non-NULL and the content hashes to something else, nothing is stored and
 * the error names both digests (-EBADMSG).
 */
int kiln_store_put_fd(struct kiln_store *s, int fd,
		      const struct kiln_digest *expected,
		      struct kiln_digest *out, uint64_t *size,
		      struct kiln_error **err);

/*
 * Inode metadata for a new blob file: a layer can then hardlink the blob
 * for a tree entry with the same metadata instead of copying it. An
 * existing blob is never changed.
 */
struct kiln_blob_meta {
	uint32_t mode, uid, gid;
	int64_t mtime_sec;
	uint32_t mtime_nsec;
};

/* kiln_store_put_fd, giving a newly stored blob file meta (may be NULL). */
int kiln_store_put_fd_meta(struct kiln_store *s, int fd,
			   const struct kiln_blob_meta *meta,
			   struct kiln_digest *out, uint64_t *size,
			   struct kiln_error **err);

/*
 * Make every blob name linked so far durable (one fsync of the blobs
 * directory). Adopted blobs are linked without it, for speed; tree
 * builders call this once before they return a root.
 */
int kiln_store_sync(struct kiln_store *s, struct kiln_error **err);

/*
 * Hash dirfd/name in place and hardlink it into the store as the blob (no
 * content copy). The caller guarantees the file is never modified again
 * (it belongs to an immutable layer directory). If the blob is already
 * present nothing is linked. Falls back to a copy when a link is impossible
 * (EXDEV, EMLINK).
 */
int kiln_store_adopt(struct kiln_store *s, int dirfd, const char *name,
		     struct kiln_digest *out, uint64_t *size,
		     struct kiln_error **err);

/* Streaming writer, for data that arrives in pieces (network, tar). */
struct kiln_store_writer;
int kiln_store_writer_begin(struct kiln_store *s, struct kiln_store_writer **out,
			    struct kiln_error **err);
int kiln_store_writer_write(struct kiln_store_writer *w, const void *data,
			    size_t len);
/*
 * Verify against expected (if non-NULL), make durable, name it. The writer
 * is freed whatever the outcome.
 */
/*
 * Name this blob without fsyncing the blobs directory: the caller calls
 * kiln_store_sync() once for many (a pull, per batch) before it relies on
 * the names surviving a crash. The blob's content is still fsynced before
 * it gets its name, so a name that survives always has the right bytes.
 */
void kiln_store_writer_defer_sync(struct kiln_store_writer *w);
/*
 * Hash this blob on a thread of its own while the caller writes (a large
 * download: receive and write overlap the hash). Call before any write.
 */
void kiln_store_writer_pipeline(struct kiln_store_writer *w);
int kiln_store_writer_commit(struct kiln_store_writer *w,
			     const struct kiln_digest *expected,
			     struct kiln_digest *out, struct kiln_error **err);
void kiln_store_writer_abort(struct kiln_store_writer *w);

/*
 * Group commit, for many small blobs (a batch pull). A writer committed into
 * a group is verified at once (-EBADMSG, nothing kept, on a mismatch) but
 * stays unnamed, absent from the store; kiln_store_group_commit() makes
 * every member's content durable with one file-system sync (syncfs) where
 * each blob would otherwise take an fsync, then names them all. Content is
 * durable before any name, so the store's invariant holds; a crash before
 * the commit leaves only temp files, which the next open removes. The blobs
 * directory is not synced: the caller's kiln_store_sync() does that. A group
 * is used by one thread; the writer is freed whatever the outcome.
 */
struct kiln_store_group;
/*
 * The group gets a descriptor of its own, so the sync reports every write
 * error since the group began (syncfs does since Linux 5.8; before, it
 * reported none).
 */
int kiln_store_group_new(struct kiln_store *s, struct kiln_store_group **out,
			 struct kiln_error **err);
int kiln_store_writer_commit_group(struct kiln_store_writer *w,
				   struct kiln_store_group *g,
				   const struct kiln_digest *expected,
				   struct kiln_error **err);
int kiln_store_group_commit(struct kiln_store_group *g,
			    struct kiln_error **err);
/* Drops (unlinks) members not yet named, then frees the group. */
void kiln_store_group_free(struct kiln_store_group *g);

/*
 * Read a whole blob of at most limit bytes and verify it against its
 * digest (-EBADMSG naming the digest on mismatch, -EFBIG over limit).
 */
int kiln_store_read(struct kiln_store *s, const struct kiln_digest *d,
		    size_t limit, char **data, size_t *len,
		    struct kiln_error **err);

/* Rehash a blob: 0 when it matches, -EBADMSG (error names it) when not. */
int kiln_store_verify(struct kiln_store *s, const struct kiln_digest *d,
		      struct kiln_error **err);

int kiln_store_remove(struct kiln_store *s, const struct kiln_digest *d);

/* Call fn for every blob; stops and returns fn's value when non-zero. */
typedef int (*kiln_store_iter_fn)(const struct kiln_digest *d, uint64_t size,
				  void *userdata);
int kiln_store_foreach(struct kiln_store *s, kiln_store_iter_fn fn,
		       void *userdata);
