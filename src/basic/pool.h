/*
 * Parallel for: a fixed set of work items done by a few threads, the
 * calling thread among them. For fan-out inside one call (hashing a
 * tree's files, fetching an image's blobs, pulling a tree from peers), not
 * a long-lived pool.
 */
#pragma once

#include <stddef.h>

#include "basic/error.h"

/*
 * One work item: index i of the range, slot the thread doing it (0 is the
 * calling thread; slots are below the thread count, for state a caller
 * keeps per thread). Returns 0 or a negative code; err (fresh, NULL) may
 * get the failure's message.
 */
typedef int (*kiln_pool_fn)(void *ud, size_t i, unsigned slot,
			    struct kiln_error **err);

/*
 * Call fn for every i in [0, n) on up to threads threads (0 counts as 1;
 * never more than n). The calling thread is one of them and does all the
 * work when no other thread starts. Items are handed out in index order;
 * after the first failure no item is handed out, and items under way
 * finish. Returns 0, or the code of the first failure (first in time)
 * with its error moved to *err when *err is unset; other errors are
 * dropped.
 */
int kiln_pool_run(size_t n, unsigned threads, kiln_pool_fn fn, void *ud,
		  struct kiln_error **err);
