/*
 * Garbage collection of the CAS: mark every blob reachable from a set of
 * root trees (tree nodes and file blobs), sweep the rest.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "cas/digest-set.h"
#include "cas/digest.h"
#include "cas/store.h"

/*
 * Add root and every node and file blob below it to marked (a subtree whose
 * node is already marked is not walked again). A missing blob is an error
 * naming it.
 */
int kiln_gc_mark_tree(struct kiln_store *s, const struct kiln_digest *root,
		      struct kiln_digest_set *marked, struct kiln_error **err);

/*
 * Options for kiln_gc_mark_tree_opts (all optional).
 *
 * corrupt: blobs already known to be corrupt (e.g. found by rehashing the
 * store); a reference to one is reported like a missing blob, with
 * -EBADMSG.
 * problem: called for every missing (-ENOENT) or corrupt (-EBADMSG) blob
 * below root, with the digest; marking then goes on with the rest.
 */
struct kiln_gc_mark_opts {
	const struct kiln_digest_set *corrupt;
	void (*problem)(const struct kiln_digest *d, int code, void *ud);
	void *ud;
};

/*
 * Like kiln_gc_mark_tree, but every present blob below root is marked even
 * when something else is missing. A tree node is marked only once its whole
 * subtree is present, so a later mark through an incomplete subtree reports
 * its problems again. Returns 0 when complete, else the first problem's
 * code (err names that digest).
 */
int kiln_gc_mark_tree_opts(struct kiln_store *s, const struct kiln_digest *root,
			   struct kiln_digest_set *marked,
			   const struct kiln_gc_mark_opts *opts,
			   struct kiln_error **err);

/* Remove every blob not in marked; report count and bytes freed. */
int kiln_gc_sweep(struct kiln_store *s, const struct kiln_digest_set *marked,
		  uint64_t *removed, uint64_t *freed, struct kiln_error **err);
