/*
 * file and merge ops, computed on Merkle trees in the CAS (tree editor):
 * no file system is touched, so a hostile path cannot reach the host, and
 * cost is proportional to what changes, not to the tree size.
 */
#pragma once

#include "basic/error.h"
#include "cas/digest.h"
#include "cas/store.h"
#include "solver/definition.h"

/*
 * Apply op's actions to base (NULL = empty tree). inputs[i] is the result
 * tree of op->inputs[i] (for COPY sources).
 */
int kiln_fileop_run(struct kiln_store *s, const struct kiln_op *op,
		    const struct kiln_digest *base,
		    const struct kiln_digest *inputs, struct kiln_digest *out,
		    struct kiln_error **err);

/* Stack trees like overlay layers: later trees win, directories merge. */
int kiln_merge_trees(struct kiln_store *s, const struct kiln_digest *trees,
		     size_t n, struct kiln_digest *out, struct kiln_error **err);
