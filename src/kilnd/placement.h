/*
 * kilnd's placement policy (DESIGN "Solving and scheduling"): which
 * worker a ready job goes to. A pure function of the candidates it is
 * given, so that tests (and a simulator) drive the same code as kilnd;
 * the worker table (worker-table.c) describes its workers as candidates.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Assumed bandwidth between workers for the inputs a worker lacks. */
#define KILN_PLACE_BYTES_PER_MS (100u * 1000u)
/* Assumed size of an input whose size the location index does not know. */
#define KILN_PLACE_UNKNOWN_BYTES (4u << 20)

/* A worker as the policy sees it. */
struct kiln_place_candidate {
	int how;             /* 0: cannot take the job, 1: emulated, 2: native */
	unsigned slots, busy;
	uint64_t queued_ms;  /* estimated durations of its placed, running jobs */
	uint64_t lack_bytes; /* input bytes it would have to fetch */
};

/*
 * Estimated finish of a job of est_ms on c: when a slot frees (its queued
 * work spread over its slots), plus fetching what it lacks, plus the job.
 */
uint64_t kiln_place_finish_ms(const struct kiln_place_candidate *c,
			      uint64_t est_ms);

/*
 * The candidate for a job of est_ms: native before emulated, then the
 * least estimated finish (the first of equals). -1 when none can take it.
 * The chosen one may be full: the caller then waits for a slot.
 */
ssize_t kiln_place_choose(const struct kiln_place_candidate *c, size_t n,
			  uint64_t est_ms);
