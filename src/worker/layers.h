/*
 * Materialized trees: the worker's layer store.
 *
 * A tree is materialized as a chain of overlayfs layer directories (top
 * first); mounting the chain as lowerdirs shows the tree. A layer holds one
 * tree's difference from its parent's tree in overlay format (whiteouts are
 * 0/0 character devices, replaced directories carry
 * trusted.overlay.opaque=y). Files in layers are hardlinks of CAS blobs
 * whenever the blob's inode already has the entry's metadata, so
 * materializing never copies file contents that are already local in the
 * common case.
 *
 * Layout under its directory:
 *   <16 hex of tree digest>/fs        the layer's files
 *   <16 hex of tree digest>/tree      full tree digest (text)
 *   <16 hex of tree digest>/parent    parent tree digest, or empty
 *   tmp/                              scratch dirs (uppers, extraction)
 *
 * Layers are immutable once named. Thread-safe.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "basic/error.h"
#include "cas/digest.h"
#include "cas/store.h"

struct kiln_layers;

/* Layer directories, top (most recent) first. */
struct kiln_chain {
	char **dirs;
	size_t n;
};

void kiln_chain_release(struct kiln_chain *c);

int kiln_layers_open(const char *dir, struct kiln_store *store,
		     struct kiln_layers **out, struct kiln_error **err);
void kiln_layers_free(struct kiln_layers *l);

/* True if root already has a layer (its chain is known). */
bool kiln_layers_has(struct kiln_layers *l, const struct kiln_digest *root);

/*
 * Chain that materializes root. If root has no layer yet: when hint names a
 * tree that has one, write root's difference from hint as a new layer on
 * top of it; otherwise write a full layer from the CAS. The empty tree has
 * an empty chain.
 */
int kiln_layers_materialize(struct kiln_layers *l,
			    const struct kiln_digest *root,
			    const struct kiln_digest *hint,
			    struct kiln_chain *out, struct kiln_error **err);

/*
 * Write root's content into the empty directory dirfd as plain copies
 * (never hardlinks into the store, so they may be changed later): the
 * seed of a cache mount. dirfd's own metadata is left alone.
 */
int kiln_layers_checkout(struct kiln_layers *l, const struct kiln_digest *root,
			 int dirfd, struct kiln_error **err);

/* A fresh empty scratch directory under tmp/ (caller frees the path). */
int kiln_layers_mkscratch(struct kiln_layers *l, char **path,
			  struct kiln_error **err);

/*
 * Make dir (a scratch dir in overlay format, already applied to parent with
 * kiln_tree_apply_layer to give root) the layer of root on top of parent
 * (NULL = base). dir is moved into the store; if root already has a layer,
 * dir is deleted instead.
 */
int kiln_layers_adopt(struct kiln_layers *l, const struct kiln_digest *root,
		      const struct kiln_digest *parent, const char *dir,
		      struct kiln_error **err);

/*
 * A memo of derived trees: key (a digest the caller computes from what
 * determines the tree, e.g. parent tree + layer diff_id) -> tree. get()
 * answers only while that tree still has a layer, so a stale or pruned
 * entry is a miss. Stored as memo/<hex> files; prune ignores them.
 */
int kiln_layers_memo_get(struct kiln_layers *l, const struct kiln_digest *key,
			 struct kiln_digest *tree);
int kiln_layers_memo_put(struct kiln_layers *l, const struct kiln_digest *key,
			 const struct kiln_digest *tree);

/* Remove every layer not needed by any tree in keep (for prune). */
int kiln_layers_prune(struct kiln_layers *l, const struct kiln_digest *keep,
		      size_t n_keep, uint64_t *freed, struct kiln_error **err);

/* Bytes used by layers (du). */
int kiln_layers_usage(struct kiln_layers *l, uint64_t *bytes, size_t *count);

/*
 * Mount chain at target. With upper and work (scratch dirs), a writable
 * overlay; without, read-only (a one-layer chain is a read-only bind
 * mount; an empty chain with no upper is an empty read-only tmpfs).
 * Mount options: redirect_dir=off, metacopy=off, index=off so an upper
 * directory is always plain overlay format.
 */
int kiln_layers_mount(const struct kiln_chain *chain, const char *target,
		      const char *upper, const char *work,
		      struct kiln_error **err);
int kiln_layers_umount(const char *target);
