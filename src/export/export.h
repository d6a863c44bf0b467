/*
 * Exporters: write a result tree out of the CAS.
 *
 * Every exporter reads file contents from the CAS blobs and never follows
 * a symlink at the destination: a tree cannot write outside dest.
 */
#pragma once

#include <stdint.h>

#include "basic/error.h"
#include "cas/digest.h"
#include "cas/store.h"

/*
 * type=local: write tree into directory dest (created if missing; existing
 * files are replaced). Owners are applied when running as root. Mtimes are
 * the tree's, so two exports of one tree are identical.
 */
int kiln_export_local(struct kiln_store *s, const struct kiln_digest *tree,
		      const char *dest, struct kiln_error **err);

/*
 * type=tar: write tree as a POSIX (pax) tar stream to fd, entries in path
 * order, deterministic for a given tree.
 */
int kiln_export_tar_fd(struct kiln_store *s, const struct kiln_digest *tree,
		       int fd, struct kiln_error **err);

/* type=tar to a path ("-" = stdout), written atomically for files. */
int kiln_export_tar(struct kiln_store *s, const struct kiln_digest *tree,
		    const char *dest, struct kiln_error **err);

/*
 * Parse an -o/--output spec ("type=local,dest=DIR", "type=tar,dest=F.tar",
 * "type=oci,dest=F.tar[,name=REF]", "type=image,name=REF[,push=true]",
 * with compression=gzip|zstd and compression-level=N for oci and image).
 * Unknown types or keys, and keys a type does not take, are errors
 * naming them.
 */
struct kiln_export_spec {
	char *type;        /* local, tar, oci, image */
	char *dest;        /* local, tar, oci */
	char *name;        /* oci, image: image name(s), comma-free */
	char *push;        /* image: "true"/"false" */
	char *compression; /* oci, image: gzip (default) or zstd */
	char *compression_level;
	char *force_compression; /* "true" or "false" */
};
int kiln_export_spec_parse(const char *spec, struct kiln_export_spec *out,
			   struct kiln_error **err);
void kiln_export_spec_release(struct kiln_export_spec *s);

/* Run one export spec for tree. */
int kiln_export_run(struct kiln_store *s, const struct kiln_digest *tree,
		    const struct kiln_export_spec *spec,
		    struct kiln_error **err);
