/* Internals shared by the tree sources (tree*.c); not a public contract. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "cas/tree.h"

#define KILN_TREE_VERSION 1
/* Version 2: version 1 followed by the node's hardlink groups. */
#define KILN_TREE_VERSION_LINKS 2
#define KILN_TREE_MAGIC "kilntree"
#define KILN_TREE_MAGIC_LEN 8
/* XATTR_NAME_MAX: xattr names are bounded like entry names. */
#define KILN_TREE_MAX_XATTR_NAME 255

/* Check one entry against the canonical form (name, type, mode, payload). */
int cas_entry_check(const struct kiln_tree_entry *e, struct kiln_error **err);

/* Sort e's xattrs by name; -EINVAL (error names it) on a duplicate. */
int cas_entry_sort_xattrs(struct kiln_tree_entry *e, struct kiln_error **err);

/* Append e (taking its contents) where the caller knows it sorts last. */
void cas_tree_append(struct kiln_tree *t, struct kiln_tree_entry *e);

/*
 * A directory node held in memory while a tree is built or edited. kids
 * holds the loaded subdirectory nodes (sorted by name); an entry of type
 * DIR without a loaded kid keeps its stored digest. A dirty node (or one
 * with dirty kids) is written by cas_node_flush.
 */
struct cas_node {
	char *name; /* entry name in parent; NULL for the root */
	struct cas_node *parent;
	struct kiln_tree t;
	struct cas_node **kids;
	size_t n_kids, alloc_kids;
	bool dirty;
	struct kiln_digest digest; /* valid while !dirty */
	/* kiln_tree_apply_layer: the names the layer has here (sorted) and
	 * whether the node merges the base directory below. */
	char **layer_names;
	size_t n_layer_names;
	bool merged;
};

struct cas_node *cas_node_new(struct cas_node *parent, const char *name);
void cas_node_free(struct cas_node *n);
/* Load a node from the store (empty when d is NULL or unset). */
int cas_node_load(struct kiln_store *s, const struct kiln_digest *d,
		  struct cas_node *parent, const char *name,
		  struct cas_node **out, struct kiln_error **err);
/* The loaded kid called name, or NULL. */
struct cas_node *cas_node_kid(const struct cas_node *n, const char *name);
/*
 * The kid called name of n, loaded from its DIR entry when it is not yet;
 * *out is NULL when n has no directory of that name.
 */
int cas_node_kid_load(struct kiln_store *s, struct cas_node *n,
		      const char *name, struct cas_node **out,
		      struct kiln_error **err);
/* Insert kid (its name and parent already set); replaces one of that name. */
void cas_node_add_kid(struct cas_node *n, struct cas_node *kid);
/* Forget (free) the loaded kid called name, if any. */
void cas_node_drop_kid(struct cas_node *n, const char *name);
/* Mark n and every ancestor dirty. */
void cas_node_mark_dirty(struct cas_node *n);
/*
 * Move each hardlink group of n that lies inside one subdirectory down to
 * it (loading that node), so every group is held by the deepest directory
 * holding all its members, as the canonical form requires. Call after
 * members were forgotten.
 */
int cas_node_settle_links(struct kiln_store *s, struct cas_node *n,
			  struct kiln_error **err);
/* Write n's dirty subtree bottom-up; n->digest is then its node digest. */
int cas_node_flush(struct kiln_store *s, struct cas_node *n,
		   struct kiln_error **err);
