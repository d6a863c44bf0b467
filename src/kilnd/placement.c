/* kilnd's placement policy (placement.h). */
#include "kilnd/placement.h"

uint64_t kiln_place_finish_ms(const struct kiln_place_candidate *c,
			      uint64_t est_ms)
{
	uint64_t wait = c->busy >= c->slots ? c->queued_ms / c->slots : 0;

	return wait + c->lack_bytes / KILN_PLACE_BYTES_PER_MS + est_ms;
}

ssize_t kiln_place_choose(const struct kiln_place_candidate *c, size_t n,
			  uint64_t est_ms)
{
	ssize_t best = -1;
	uint64_t best_ms = 0, ms;
	int best_how = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		if (c[i].how > best_how) { /* native before emulated */
			best_how = c[i].how;
			best = -1;
		}
		if (c[i].how == 0 || c[i].how < best_how)
			continue;
		ms = kiln_place_finish_ms(&c[i], est_ms);
		if (best < 0 || ms < best_ms) {
			best = (ssize_t)i;
			best_ms = ms;
		}
	}
	return best;
}
