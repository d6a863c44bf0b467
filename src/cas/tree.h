/*
 * Canonical Merkle trees of file systems (REAPI-style).
 *
 * A tree node is one directory: its entries sorted by name bytes, each with
 * type, mode, owner, mtime, size, content digest (file) or child tree digest
 * (dir), symlink target, device numbers and xattrs. A node's canonical,
 * versioned encoding (docs/internals/tree.md) is stored as a blob in the CAS
 * and its digest identifies the directory and everything below it. A build
 * result is a root tree digest; the root directory's own metadata is fixed
 * (0755, 0:0).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "basic/error.h"
#include "basic/strbuf.h"
#include "cas/digest.h"
#include "cas/store.h"

enum kiln_entry_type {
	KILN_ENTRY_FILE = 1,
	KILN_ENTRY_DIR = 2,
	KILN_ENTRY_SYMLINK = 3,
	KILN_ENTRY_CHAR = 4,
	KILN_ENTRY_BLOCK = 5,
	KILN_ENTRY_FIFO = 6,
};

/* Limits enforced by the decoder and by tree builders. */
#define KILN_TREE_MAX_NODE_BYTES (64u << 20)
#define KILN_TREE_MAX_NAME 255
#define KILN_TREE_MAX_TARGET 4095
#define KILN_TREE_MAX_XATTRS 64
#define KILN_TREE_MAX_XATTR_VALUE 65536
#define KILN_TREE_MAX_DEPTH 256
#define KILN_TREE_MAX_LINK_PATH 4096

struct kiln_xattr {
	char *name;
	uint8_t *value;
	uint32_t len;
};

struct kiln_tree_entry {
	char *name;   /* one path component: no '/', not "", ".", ".." */
	uint8_t type; /* enum kiln_entry_type */
	uint32_t mode;  /* permission bits incl. setuid/setgid/sticky (07777) */
	uint32_t uid, gid;
	int64_t mtime_sec;
	uint32_t mtime_nsec;
	uint64_t size;            /* file: content bytes; others 0 */
	struct kiln_digest digest; /* file: content; dir: child node */
	char *target;             /* symlink target, else NULL */
	uint32_t rdev_major, rdev_minor; /* char/block devices */
	struct kiln_xattr *xattrs; /* sorted by name */
	size_t n_xattrs;
	/*
	 * Set by kiln_tree_walk and kiln_tree_diff only, never encoded: this
	 * FILE is a hardlink of the one at this path (relative to the walk's
	 * root), which the same walk or diff reported earlier and which is an
	 * identical entry. NULL otherwise.
	 */
	char *link;
};

/*
 * A hardlink group (tree version 2): two or more FILE entries that are one
 * inode. The group is held by the deepest directory node that contains all
 * its members, as their paths relative to that node in walk order, so a
 * subtree carries exactly the groups that lie wholly inside it. Members
 * are identical entries (content, mode, owner, mtime, xattrs); the first
 * holds the content in a tar layer, the others are tar hardlinks to it.
 */
struct kiln_tree_link {
	char **paths; /* "a/b" form, walk order */
	size_t n;     /* >= 2 */
};

/* One directory node. */
struct kiln_tree {
	struct kiln_tree_entry *entries; /* sorted by name (strcmp) */
	size_t n, alloc;
	struct kiln_tree_link *links; /* sorted by first path, walk order */
	size_t n_links;
};

#define KILN_TREE_INIT { NULL, 0, 0, NULL, 0 }

void kiln_tree_init(struct kiln_tree *t);
void kiln_tree_release(struct kiln_tree *t);

void kiln_tree_entry_release(struct kiln_tree_entry *e);
/* Deep copy src into dst (dst uninitialized). */
void kiln_tree_entry_copy(struct kiln_tree_entry *dst,
			  const struct kiln_tree_entry *src);
/* True if two entries are identical in every encoded field. */
bool kiln_tree_entry_eq(const struct kiln_tree_entry *a,
			const struct kiln_tree_entry *b);
/* The same, names aside: what the members of a hardlink group share. */
bool kiln_tree_entry_same_file(const struct kiln_tree_entry *a,
			       const struct kiln_tree_entry *b);

/*
 * Walk order of two relative paths: component by component, a directory
 * before what it contains ("a" < "a/b" < "a.txt").
 */
int kiln_path_walk_cmp(const char *a, const char *b);

/*
 * Add a hardlink group of t: the paths (relative to t's directory, at
 * least two, taken over) are sorted into walk order and the group into
 * place. The caller knows the members are identical FILE entries below t
 * and that t is the deepest directory holding them all.
 */
void kiln_tree_add_link(struct kiln_tree *t, char **paths, size_t n);
/*
 * Forget path (relative to t's directory) and everything below it as a
 * member of t's groups: it no longer is the file it was. A group left with
 * one member goes. Returns true when a group changed.
 */
bool kiln_tree_forget_link(struct kiln_tree *t, const char *path);

/*
 * Insert or replace by name, taking ownership of e's contents (e is zeroed).
 * Keeps entries sorted.
 */
void kiln_tree_set(struct kiln_tree *t, struct kiln_tree_entry *e);
/* Remove by name; 0 or -ENOENT. */
int kiln_tree_remove(struct kiln_tree *t, const char *name);
/* Find by name (binary search) or NULL. */
struct kiln_tree_entry *kiln_tree_find(const struct kiln_tree *t,
				       const char *name);

/*
 * Canonical encoding; appends to out. A node with hardlink groups is
 * written as version 2, any other as version 1 (so trees without
 * hardlinks keep their digests).
 */
int kiln_tree_encode(const struct kiln_tree *t, struct kiln_strbuf *out);
/*
 * Strict decoding: rejects unknown versions, unsorted or duplicate names,
 * bad names, oversize fields, trailing bytes. Error names what is wrong.
 */
int kiln_tree_decode(const void *data, size_t len, struct kiln_tree *out,
		     struct kiln_error **err);

/* Digest of the empty directory node. */
void kiln_tree_empty_digest(struct kiln_digest *out);
/*
 * True for the empty directory's digest. That node is implied: it need not
 * be stored, and kiln_tree_get() returns it without reading the store.
 */
bool kiln_tree_is_empty_digest(const struct kiln_digest *d);

/* Encode, store and return the node's digest. */
int kiln_tree_put(struct kiln_store *s, const struct kiln_tree *t,
		  struct kiln_digest *out, struct kiln_error **err);
/* Load, verify and decode a node. */
int kiln_tree_get(struct kiln_store *s, const struct kiln_digest *d,
		  struct kiln_tree *out, struct kiln_error **err);

/* ---- building trees from directories (tree-build.c) ---- */

/*
 * Optional hooks for building a tree from a directory.
 *
 * filter: called with the path relative to the root ("a/b") and whether it
 * is a directory; return true to include it. A directory that is excluded
 * is still descended when filter_descend says so (for "!" exceptions).
 *
 * stat_lookup/stat_store: a stat cache so an unchanged file (same dev, ino,
 * size, mtime, ctime) is not re-read; stat_lookup returns true and fills the
 * digest when a cached digest is known (the caller answers for the blob
 * being in the store).
 */
struct kiln_tree_build_opts {
	bool adopt;       /* hardlink files into the CAS (source immutable) */
	bool zero_owner;  /* record uid/gid as 0 (build contexts) */
	bool zero_mtime;  /* record mtimes as 0 (git checkouts) */
	bool (*filter)(void *ud, const char *relpath, bool is_dir);
	bool (*filter_descend)(void *ud, const char *relpath);
	/*
	 * *no_xattrs: the cache knows the file had no xattrs when it was
	 * stored (an xattr change moves the ctime), so they are not listed.
	 * stat_store's xattrs: whether the file had any.
	 */
	bool (*stat_lookup)(void *ud, const char *relpath, const struct stat *st,
			    struct kiln_digest *digest, bool *no_xattrs);
	void (*stat_store)(void *ud, const char *relpath, const struct stat *st,
			   const struct kiln_digest *digest, bool xattrs);
	void *ud;
};

/*
 * Build the tree of the directory dirfd (never following symlinks, never
 * crossing mounts) and store its nodes and file blobs. Sockets are skipped.
 */
int kiln_tree_from_dir(struct kiln_store *s, int dirfd,
		       const struct kiln_tree_build_opts *opts,
		       struct kiln_digest *out, struct kiln_error **err);

/*
 * Apply an overlayfs-format layer directory on top of base (NULL = empty):
 * a character device 0/0 is a whiteout (the path is deleted); a directory
 * with xattr trusted.overlay.opaque="y" replaces the directory below it;
 * any other directory merges with the one below; everything else replaces.
 * Only what is in layerfd is read and hashed: cost is proportional to the
 * layer, not to base. Files are adopted (hardlinked) into the CAS when
 * opts->adopt. The overlay's own xattrs (trusted.overlay.*) are not
 * recorded.
 */
int kiln_tree_apply_layer(struct kiln_store *s, const struct kiln_digest *base,
			  int layerfd, const struct kiln_tree_build_opts *opts,
			  struct kiln_digest *out, struct kiln_error **err);

/* ---- reading trees (tree-walk.c) ---- */

/*
 * Visit every entry below root in pre-order, sorted by name; path is
 * relative ("a/b"). Return non-zero from fn to stop (returned as is).
 * e->link names an earlier reported hardlink of a FILE (see struct
 * kiln_tree_entry); a group whose members differ fails with -EBADMSG.
 */
typedef int (*kiln_tree_walk_fn)(const char *path,
				 const struct kiln_tree_entry *e, void *ud);
int kiln_tree_walk(struct kiln_store *s, const struct kiln_digest *root,
		   kiln_tree_walk_fn fn, void *ud, struct kiln_error **err);

/*
 * Look up a relative path (no symlinks followed). Fills out with a deep
 * copy. "" means the root (a synthetic dir entry). -ENOENT, -ENOTDIR.
 */
int kiln_tree_lookup(struct kiln_store *s, const struct kiln_digest *root,
		     const char *path, struct kiln_tree_entry *out,
		     struct kiln_error **err);

enum kiln_diff_kind {
	KILN_DIFF_ADD,
	KILN_DIFF_MODIFY, /* same name, different entry (incl. dir metadata) */
	KILN_DIFF_DELETE,
};

/*
 * Compare trees a (old) and b (new), skipping identical subtrees by digest.
 * new_e->link is set as in kiln_tree_walk when the group's first member
 * was itself reported (added or modified) earlier in this diff.
 * Calls fn in path order. For a directory added or deleted whole, one
 * ADD/DELETE for the directory then ADDs for everything below it (on ADD)
 * or nothing below it (on DELETE). A directory replaced by a non-directory
 * (or vice versa) is a DELETE then an ADD. A directory whose own metadata
 * changed is a MODIFY and its children are compared too.
 */
typedef int (*kiln_tree_diff_fn)(enum kiln_diff_kind kind, const char *path,
				 const struct kiln_tree_entry *old_e,
				 const struct kiln_tree_entry *new_e, void *ud);
int kiln_tree_diff(struct kiln_store *s, const struct kiln_digest *a,
		   const struct kiln_digest *b, kiln_tree_diff_fn fn, void *ud,
		   struct kiln_error **err);

/* Total file bytes and entry count below root (each node read once). */
int kiln_tree_usage(struct kiln_store *s, const struct kiln_digest *root,
		    uint64_t *bytes, uint64_t *entries, struct kiln_error **err);

/* ---- editing trees without touching a file system (tree-edit.c) ---- */

/*
 * An editor loads the nodes along the paths it touches, changes them in
 * memory and writes the changed nodes back on commit. Cost is proportional
 * to the depth and number of paths touched, not to the tree size.
 * Paths are relative to the root, already cleaned (kiln_path_clean).
 */
struct kiln_tree_editor;

int kiln_tree_editor_new(struct kiln_store *s, const struct kiln_digest *root,
			 struct kiln_tree_editor **out, struct kiln_error **err);
void kiln_tree_editor_free(struct kiln_tree_editor *ed);

/*
 * Resolve symlinks in path inside the tree, as a chroot would (absolute
 * targets are relative to the root, ".." never rises above it). When
 * follow_last is false the final component is not followed. Returns the
 * resolved, cleaned relative path (caller frees) via out. -ELOOP after 40
 * links. Missing components are fine: the rest is appended as is.
 */
int kiln_tree_editor_resolve(struct kiln_tree_editor *ed, const char *path,
			     bool follow_last, char **out,
			     struct kiln_error **err);

/* Copy of the entry at path ("" = root); -ENOENT / -ENOTDIR. */
int kiln_tree_editor_get(struct kiln_tree_editor *ed, const char *path,
			 struct kiln_tree_entry *out, struct kiln_error **err);

/*
 * Set the entry at path (e->name is replaced by the last component); the
 * parent must exist and be a directory. Takes ownership of e's contents.
 * Putting a DIR entry whose digest is a stored tree grafts that subtree.
 */
int kiln_tree_editor_put(struct kiln_tree_editor *ed, const char *path,
			 struct kiln_tree_entry *e, struct kiln_error **err);

/* Remove path (and everything below); -ENOENT when missing. */
int kiln_tree_editor_remove(struct kiln_tree_editor *ed, const char *path,
			    struct kiln_error **err);

/*
 * Give directory dir the hardlink groups of node from (a directory whose
 * entries were just put into dir one by one, as a merging copy does).
 */
int kiln_tree_editor_add_links(struct kiln_tree_editor *ed, const char *dir,
			       const struct kiln_tree *from,
			       struct kiln_error **err);

/*
 * Create missing directories along path with the given metadata (existing
 * ones are left alone; a non-directory in the way is -ENOTDIR).
 */
int kiln_tree_editor_mkdir_p(struct kiln_tree_editor *ed, const char *path,
			     uint32_t mode, uint32_t uid, uint32_t gid,
			     int64_t mtime_sec, struct kiln_error **err);

/* Write changed nodes and return the new root digest. */
int kiln_tree_editor_commit(struct kiln_tree_editor *ed,
			    struct kiln_digest *out, struct kiln_error **err);
