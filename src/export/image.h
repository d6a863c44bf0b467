/*
 * OCI images out of result trees (docs/internals/image-export.md).
 *
 * A layer is the tree diff between two result trees written as a tar
 * stream (pax, numeric owners, OCI whiteouts) and compressed (gzip, zstd or
 * none) straight into the CAS. An image is a base image's layers passed
 * through by digest plus one new layer per tree, a merged config and an OCI
 * manifest, all stored as CAS blobs. An image index lists one manifest per
 * platform. The OCI layout exporters write everything an index reaches as
 * an OCI image layout, either a tar file or a directory.
 *
 * Everything is deterministic: the same trees, config and options give
 * byte-identical blobs, so the same manifest and index digests on any
 * machine.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "cache/index.h"
#include "cas/digest.h"
#include "cas/store.h"

#define KILN_MT_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define KILN_MT_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define KILN_MT_OCI_CONFIG "application/vnd.oci.image.config.v1+json"
#define KILN_MT_OCI_LAYER "application/vnd.oci.image.layer.v1.tar"
#define KILN_MT_OCI_LAYER_GZIP "application/vnd.oci.image.layer.v1.tar+gzip"
#define KILN_MT_OCI_LAYER_ZSTD "application/vnd.oci.image.layer.v1.tar+zstd"
#define KILN_MT_DOCKER_MANIFEST                                                \
	"application/vnd.docker.distribution.manifest.v2+json"
#define KILN_MT_DOCKER_LIST                                                    \
	"application/vnd.docker.distribution.manifest.list.v2+json"

/* Largest JSON document (manifest, index, config) read back from the CAS. */
#define KILN_IMAGE_JSON_MAX (4u << 20)

enum kiln_compression {
	KILN_COMPRESS_GZIP = 0, /* the default */
	KILN_COMPRESS_ZSTD = 1,
	KILN_COMPRESS_NONE = 2,
};

/*
 * Layer and image options; all-zero means gzip at level 6 and no
 * SOURCE_DATE_EPOCH.
 *
 * level: 0 is the default (gzip 6, zstd 3); gzip takes 1..9, zstd 1..19.
 * epoch: when has_epoch, every mtime in new layers is clamped to
 * min(mtime, epoch), whiteouts get epoch, and the config's "created" and
 * the new history entries' "created" are set to epoch.
 */
struct kiln_image_opts {
	enum kiln_compression compression;
	int level;
	/* force-compression=true: base layers of another compression are
	 * converted to this one (ones already in it are kept as they are) */
	bool force;
	bool has_epoch;
	int64_t epoch;
};

/*
 * Set one option from an -o field: "compression" (gzip, zstd,
 * uncompressed) or "compression-level" (an integer in the range above).
 * -ENOENT when key is not an image option (the caller may know it);
 * -EINVAL naming the key and value when the value is bad.
 */
int kiln_image_opts_set(struct kiln_image_opts *o, const char *key,
			const char *value, struct kiln_error **err);

/*
 * Parse a SOURCE_DATE_EPOCH value (decimal seconds, >= 0) into o. NULL or
 * "" leaves o without an epoch. -EINVAL naming the value otherwise.
 */
int kiln_image_opts_epoch(struct kiln_image_opts *o, const char *value,
			  struct kiln_error **err);

/* The layer media type for a compression. */
const char *kiln_image_layer_media_type(enum kiln_compression c);

struct kiln_image_layer_info {
	struct kiln_digest digest;  /* compressed blob, stored in the CAS */
	struct kiln_digest diff_id; /* digest of the uncompressed tar */
	uint64_t size;              /* compressed bytes */
	const char *media_type;     /* static string */
	bool cached;                /* true when found in the cache index */
};

/*
 * Write the layer that turns parent (NULL = the empty tree) into child:
 * kiln_tree_diff(parent, child) as a tar stream, compressed into the CAS.
 *
 * Added and modified entries carry their full metadata (mode, numeric
 * uid/gid, mtime, xattrs, symlink target, device numbers); every directory
 * above a change is written too, with the child tree's metadata, parents
 * before children. A deleted path is an OCI whiteout ".wh.NAME"; a path
 * whose type changed between directory and non-directory is a whiteout
 * followed by the new entry. Opaque whiteouts are never written.
 *
 * With cache non-NULL, the result is looked up first (key: sha256 of
 * "kiln-layer-v1", parent, child, compression, level, epoch) and reused
 * when its blob is still in the store; a new layer is recorded there (a
 * failure to record is ignored: the cache is only a speed-up).
 */
int kiln_image_layer(struct kiln_store *s, struct kiln_cache *cache,
		     const struct kiln_digest *parent,
		     const struct kiln_digest *child,
		     const struct kiln_image_opts *opts,
		     struct kiln_image_layer_info *out,
		     struct kiln_error **err);

/* The compression of a layer media type; false for foreign, nondistributable or unknown ones. */
bool kiln_image_media_compression(const char *media_type, enum kiln_compression *c);

/*
 * The layer blob (media_type, in s) recompressed as o says: decompressed,
 * checked against diff_id (the config's), compressed into the CAS. With a
 * cache index, a conversion done before is looked up first.
 */
int kiln_image_layer_convert(struct kiln_store *s, struct kiln_cache *cache,
			     const struct kiln_digest *blob, const char *media_type,
			     const struct kiln_digest *diff_id,
			     const struct kiln_image_opts *o,
			     struct kiln_image_layer_info *out, struct kiln_error **err);

/*
 * What an image is built from.
 *
 * platform: "os/arch[/variant]"; written into the config.
 * base_meta: the source.image cache record's meta JSON text
 *   ({"manifest": D, "config": D, "blobs": [...]}, blobs in the CAS), or
 *   NULL for an image FROM scratch. base_rootfs is that image's rootfs
 *   tree; both or neither are given.
 * trees: the result tree after each new layer, in order; layer i is the
 *   diff from trees[i-1] (or base_rootfs, or the empty tree) to trees[i].
 * config: the frontend's OCI image config (borrowed; may be NULL): its
 *   "config", "created", "author" and other fields are copied as given,
 *   "history" lists the entries for the new instructions only, with
 *   "empty_layer": true on those that made no layer. The number of
 *   non-empty new entries must equal n_trees (when "history" is absent,
 *   one entry per layer is made up).
 */
struct kiln_image_spec {
	const char *platform;
	const char *base_meta;
	const struct kiln_digest *base_rootfs;
	const struct kiln_digest *trees;
	size_t n_trees;
	const json_t *config;
};

/*
 * Build the image: new layers (kiln_image_layer, cached through cache when
 * non-NULL), the merged config (base rootfs.diff_ids + new, base history +
 * new) and an OCI manifest listing the base layers by their original
 * digests then the new ones. Config and manifest are stored in the CAS;
 * *manifest gets the manifest's digest. Every tree gets a layer, even one
 * identical to the tree below (an empty tar), so layers and history always
 * agree.
 */
int kiln_image_assemble(struct kiln_store *s, struct kiln_cache *cache,
			const struct kiln_image_spec *spec,
			const struct kiln_image_opts *opts,
			struct kiln_digest *manifest, struct kiln_error **err);

/*
 * Store an OCI image index listing manifests[i] (stored in the CAS) for
 * platforms[i] ("os/arch[/variant]"), in the order given. annotations (a
 * JSON object of strings, borrowed) may be NULL.
 */
int kiln_image_index(struct kiln_store *s, const struct kiln_digest *manifests,
		     const char *const *platforms, size_t n,
		     const json_t *annotations, struct kiln_digest *index,
		     struct kiln_error **err);

/*
 * Read a JSON blob (at most KILN_IMAGE_JSON_MAX bytes, verified, duplicate
 * keys rejected) from the store. The error names the digest.
 */
int kiln_image_read_json(struct kiln_store *s, const struct kiln_digest *d,
			 json_t **out, struct kiln_error **err);

/*
 * type=oci: write an OCI image layout holding top (an image index or a
 * manifest, stored in the CAS) and every blob it reaches, as a tar file
 * (dest "-" is stdout). index.json has one entry for top, annotated with
 * org.opencontainers.image.ref.name = ref_name when ref_name is non-NULL.
 * Entries are sorted with mtime 0 and owner 0:0: the same top gives the
 * same bytes. A file is written as DEST.tmp-XXXXXXXX and renamed. Every
 * blob is checked against its digest on the way; a missing or corrupt one
 * fails the export naming it.
 */
int kiln_export_oci_tar(struct kiln_store *s, const struct kiln_digest *top,
			const char *dest, const char *ref_name,
			struct kiln_error **err);

/*
 * The same layout as a directory (created if missing). Blobs already there
 * with the right size are kept; index.json keeps the entries of other ref
 * names and replaces the one of ref_name, so one directory can collect
 * several images for oci-layout:// references.
 */
int kiln_export_oci_dir(struct kiln_store *s, const struct kiln_digest *top,
			const char *dest, const char *ref_name,
			struct kiln_error **err);
