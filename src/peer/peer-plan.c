/*
 * The FILES-phase plan of a peer pull (peer-internal.h): which blobs go
 * by one GET each and which are packed into batch requests.
 */
#include <string.h>

#include "basic/alloc.h"
#include "peer/peer-internal.h"

static void item_add(struct kiln_peer_item *it, const struct kiln_digest *d,
		     uint64_t size)
{
	it->b = xgrow(it->b, &it->alloc, it->n + 1, sizeof(*it->b));
	it->b[it->n++] = (struct kiln_peer_blob){ *d, size, KILN_PEER_PENDING };
}

/* Index of a new empty item. Items move when the array grows: callers
 * keep indices, never pointers, across a call. */
static size_t new_item(struct kiln_peer_plan *plan, bool batch)
{
	plan->items = xgrow(plan->items, &plan->alloc, plan->n + 1,
			    sizeof(*plan->items));
	memset(&plan->items[plan->n], 0, sizeof(*plan->items));
	plan->items[plan->n].batch = batch;
	return plan->n++;
}

void kiln_peer_plan_files(const struct kiln_digest_set *files,
			  uint64_t small_max, uint64_t batch_bytes,
			  struct kiln_peer_plan *plan)
{
	size_t i, k, batch = SIZE_MAX;
	uint64_t bytes = 0;

	for (i = 0; i < files->cap; i++) {
		const struct kiln_digest *d = &files->slots[i];
		uint64_t size = files->vals[i];

		if (!kiln_digest_is_set(d))
			continue;
		if (size > small_max) {
			k = new_item(plan, false);
			item_add(&plan->items[k], d, size);
			continue;
		}
		if (batch == SIZE_MAX ||
		    plan->items[batch].n == KILN_PEER_BATCH_DIGESTS ||
		    bytes + size > batch_bytes) {
			batch = new_item(plan, true);
			bytes = 0;
		}
		item_add(&plan->items[batch], d, size);
		bytes += size;
	}
}

void kiln_peer_plan_release(struct kiln_peer_plan *plan)
{
	size_t i;

	for (i = 0; i < plan->n; i++)
		free(plan->items[i].b);
	free(plan->items);
	memset(plan, 0, sizeof(*plan));
}
