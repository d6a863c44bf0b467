/*
 * Internals shared by the tar writers (export-tar.c, layer-diff.c,
 * oci-tar.c); not part of the contract in export.h / image.h.
 */
#pragma once

#include <stdint.h>

#include "basic/error.h"
#include "cas/store.h"
#include "cas/tree.h"

struct archive;
struct archive_entry;

/*
 * One libarchive writer and how its failures are named: messages read
 * "WHAT: PATH: ...". sink_error is set by a caller's write callback when
 * the bytes could not be stored; it wins over libarchive's errno.
 */
struct kiln_tar {
	struct archive *a;
	struct kiln_store *store;
	const char *what; /* "tar", "layer", "oci tar" */
	int sink_error;
	struct kiln_error **err;
};

/* The AE_IF* file type for an entry type, 0 for an unknown one. */
unsigned int kiln_tar_filetype(uint8_t type);

/*
 * A header for e at path, with e's metadata but the given mtime (a layer
 * clamps it to the epoch). The caller frees it with archive_entry_free().
 */
struct archive_entry *kiln_tar_header(const char *path,
				      const struct kiln_tree_entry *e,
				      int64_t mtime_sec, uint32_t mtime_nsec);

/* Set *t->err from the archive's error, naming path; returns the code. */
int kiln_tar_fail(struct kiln_tar *t, const char *path);

/*
 * Copy file e's blob from t->store into the archive, checking its size and
 * digest; a missing or corrupt blob fails naming path and the digest.
 */
int kiln_tar_write_blob(struct kiln_tar *t, const char *path,
			const struct kiln_tree_entry *e);

/* Write e's header (mtime as given) and, for a file, its data. */
int kiln_tar_write_entry(struct kiln_tar *t, const char *path,
			 const struct kiln_tree_entry *e, int64_t mtime_sec,
			 uint32_t mtime_nsec);

/*
 * A pax (restricted) writer on fd that never pads the last block, or NULL.
 */
struct archive *kiln_tar_open_fd(int fd);

/*
 * Close and free t->a (writing the end of the archive); r is the result so
 * far, returned unless it was 0 and the close failed.
 */
int kiln_tar_close(struct kiln_tar *t, int r);

/*
 * Run write_fd on stdout for dest "-" (then flush it), else on
 * DEST.tmp-XXXXXXXX, which is synced and renamed to dest (and removed on
 * failure). The errors name the file.
 */
int kiln_write_to_dest(const char *dest,
		       int (*write_fd)(int fd, void *ud,
				       struct kiln_error **err),
		       void *ud, struct kiln_error **err);
