/*
 * source.image: OCI images from an OCI image layout directory
 * ("oci-layout://PATH[:TAG]" references) or from a registry (any other
 * reference, "NAME[:TAG][@DIGEST]" with Docker's normalization; see
 * registry/registry.h and docs/registry.md).
 *
 * Resolving pins a reference to a manifest digest for one platform (the
 * index or a nested index is searched by platform; a single-manifest layout
 * is accepted when its config's platform matches). Importing verifies every
 * blob it reads against its digest, extracts each layer safely into an
 * overlay-format layer directory (OCI whiteouts become overlay whiteouts;
 * entries with "..", paths through symlinks, and escaping hardlinks are
 * refused), applies it to the tree of the layers below, and keeps the layer
 * directory as that tree's materialization.
 */
#pragma once

#include "basic/error.h"
#include "cas/digest.h"
#include "cas/store.h"
#include "registry/registry.h"
#include "worker/layers.h"

/* A parsed image reference. */
struct kiln_image_ref {
	char *layout; /* absolute path of the OCI layout directory, or NULL */
	char *tag;    /* "latest" by default; NULL for a registry ref pinned
		       * only by digest */
	struct kiln_registry_ref *registry; /* a registry reference, or NULL */
};

/*
 * Parse "oci-layout://PATH[:TAG]" (a relative PATH is taken relative to
 * base_dir) or a registry reference (kiln_registry_ref_parse). Error names
 * the reference.
 */
int kiln_image_ref_parse(const char *ref, const char *base_dir,
			 struct kiln_image_ref *out, struct kiln_error **err);
void kiln_image_ref_release(struct kiln_image_ref *r);

/*
 * The tags one build has looked up and what each pointed to then: a build
 * asks the registry about a tag once, and all its platforms and stages see
 * the same image even if the tag moves meanwhile. Used by one thread at a
 * time (a build resolves its images in turn).
 */
struct kiln_image_tags;
struct kiln_image_tags *kiln_image_tags_new(void);
void kiln_image_tags_free(struct kiln_image_tags *t);

/*
 * Where resolving and importing read images from and write them to. The
 * pointers are borrowed; the struct owns nothing.
 */
struct kiln_image_source {
	/*
	 * The client registry references go through (NULL: they are
	 * refused). Its options (insecure hosts, endpoints, credentials) are
	 * the build's or the daemon's; there is no process-wide one.
	 */
	struct kiln_registry *registry;
	/*
	 * The CAS. Import stores images here. For registry references it is
	 * also where resolving and import look for indexes, manifests and
	 * configs by digest before asking the registry, and where those it
	 * fetches are kept once verified. NULL (resolving only): nothing is
	 * kept.
	 */
	struct kiln_store *store;
	/* This build's tag lookups (may be NULL: every resolve asks). */
	struct kiln_image_tags *tags;
	/*
	 * oci-layout:// references are read from store, never from a
	 * directory (kilnd and workers: the client uploaded the blobs of its
	 * layout; the path is the client's and names nothing here). Such a
	 * reference can only be imported by its pinned manifest, not resolved.
	 */
	bool layouts_in_store;
};

/*
 * Copy the blobs of ref's image pinned to manifest (the manifest, its
 * config, its layers) into src->store and list them in *out (n of them,
 * the manifest first; free()), without extracting anything: what a client
 * uploads for a layout the cluster cannot read.
 */
int kiln_image_store_blobs(const struct kiln_image_source *src, const struct kiln_image_ref *ref,
			   const struct kiln_digest *manifest, struct kiln_digest **out,
			   size_t *n, struct kiln_error **err);

/*
 * The blobs an image manifest in s names (its config, then its layers):
 * what a worker pulls before importing a layout the client uploaded.
 */
int kiln_image_manifest_blobs(struct kiln_store *s, const struct kiln_digest *manifest,
			      struct kiln_digest **out, size_t *n, struct kiln_error **err);

/*
 * Pin ref to the manifest digest for platform ("linux/arm64"). A registry
 * ref's tag is looked up with one GET (unless src->tags already has it; a
 * ref with a digest is never looked up by tag); every other document is
 * read by digest, from src->store when it is there. An index is searched by
 * platform exactly as in a layout.
 */
int kiln_image_resolve(const struct kiln_image_source *src,
		       const struct kiln_image_ref *ref, const char *platform,
		       struct kiln_digest *manifest, struct kiln_error **err);

/*
 * The image config of manifest (a platform manifest from
 * kiln_image_resolve) as JSON text in *config (*len bytes, NUL-terminated),
 * read as import reads it: the manifest, then the config its descriptor
 * names, each verified against its digest and size and at most 4 MiB, from
 * the layout, or from src->store or the registry (then kept in
 * src->store).
 */
int kiln_image_read_config(const struct kiln_image_source *src,
			   const struct kiln_image_ref *ref,
			   const struct kiln_digest *manifest, char **config,
			   size_t *len, struct kiln_error **err);

struct kiln_image {
	struct kiln_digest manifest;
	struct kiln_digest config; /* config blob, stored in the CAS */
	struct kiln_digest rootfs; /* tree of the applied layers */
	/* compressed layer blobs as in the manifest, stored in the CAS */
	struct kiln_digest *layers;
	size_t n_layers;
};

void kiln_image_release(struct kiln_image *img);

/*
 * Import the manifest (from kiln_image_resolve) into src->store and the
 * layer store: manifest, config and layer blobs are copied into the CAS
 * (verified); the rootfs tree is built and materialized. For a registry
 * ref, blobs already in the CAS are not fetched; missing layers are fetched
 * a few at a time.
 */
int kiln_image_import(const struct kiln_image_source *src, struct kiln_layers *layers,
		      const struct kiln_image_ref *ref,
		      const struct kiln_digest *manifest, struct kiln_image *out,
		      struct kiln_error **err);

/*
 * Extract one layer tar stream (gzip, zstd or plain: detected) from fd into
 * the empty directory dirfd in overlay format. Exposed for tests and fuzzing.
 * The error names the entry at fault.
 */
int kiln_layer_extract(int fd, int dirfd, struct kiln_error **err);

/* Options for kiln_layer_extract_with(); every field may be zero. */
struct kiln_layer_extract_opts {
	/* Out: digest of the uncompressed tar stream (the layer's diff_id). */
	struct kiln_digest *diff_id;
	/*
	 * Called once for each directory the archive implies (a parent of an
	 * entry) but does not contain, after all entries are written, with
	 * the directory's path relative to dirfd and an fd of it. Such a
	 * directory is created 0755, 0:0, mtime 0; in overlay format it would
	 * hide the metadata of the same directory in the layers below, so the
	 * hook may copy that metadata onto fd instead. 0 or negative errno.
	 */
	int (*implied_dir)(void *ud, const char *path, int fd,
			   struct kiln_error **err);
	void *ud;
	/*
	 * A plain archive (Dockerfile ADD), not an image layer: ".wh." entries
	 * are ordinary files, and bzip2 and xz are accepted besides gzip and
	 * zstd. Confinement is the same.
	 */
	bool archive;
};

/*
 * Is the file at fd (read from its current offset) a tar archive, plain
 * or compressed with gzip, bzip2, xz or zstd? Decided by content, as
 * BuildKit's ADD does: a compressed file that is not a tar is not one.
 */
bool kiln_archive_detect(int fd);

/* kiln_layer_extract() with options (opts may be NULL). */
int kiln_layer_extract_with(int fd, int dirfd,
			    const struct kiln_layer_extract_opts *opts,
			    struct kiln_error **err);
