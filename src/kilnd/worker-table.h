/*
 * kilnd's worker registry (docs/cluster.md, docs/api.md "Workers"): the
 * workers that registered, what they announced, and whether they are
 * alive. One table behind one mutex: HTTP handler threads register and
 * heartbeat, `GET /v1/workers` lists, the main thread sweeps.
 *
 * The registry lives in memory only: after kilnd restarts, heartbeats of
 * the old ids are answered "unknown" and the workers register again.
 */
#pragma once

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "cas/digest.h"

/* Limits on what one worker may announce (hostile input). */
#define KILN_WORKER_TABLE_MAX_WORKERS 1024u
#define KILN_WORKER_TABLE_NAME_MAX 63u
#define KILN_WORKER_TABLE_ADDR_MAX 256u
#define KILN_WORKER_TABLE_MAX_PLATFORMS 16u
#define KILN_WORKER_TABLE_PLATFORM_MAX 64u
#define KILN_WORKER_TABLE_MAX_LABELS 64u
#define KILN_WORKER_TABLE_LABEL_MAX 256u
#define KILN_WORKER_TABLE_MAX_SLOTS 4096u
/* Missed heartbeat intervals after which a worker is lost. */
#define KILN_WORKER_TABLE_LOST_INTERVALS 3u

struct kiln_worker_table;

struct kiln_worker_table_platform {
	char *platform; /* "os/arch[/variant]", as the worker normalized it */
	bool emulated;
};

struct kiln_worker_table_label {
	char *key, *value;
};

/* What a worker announces when it registers. */
struct kiln_registration {
	char *name;
	char *addr; /* base URL of its peer blob server */
	struct kiln_worker_table_platform *platforms;
	size_t n_platforms;
	uint32_t slots;
	struct kiln_worker_table_label *labels;
	size_t n_labels;
	struct kiln_digest *inventory; /* result trees it holds */
	size_t n_inventory;
};

void kiln_registration_release(struct kiln_registration *r);

/*
 * Parse a registration body (docs/api.md). Unknown members are ignored;
 * a missing or malformed known member is -EINVAL naming it.
 */
int kiln_registration_parse(const json_t *j, struct kiln_registration *out,
			    struct kiln_error **err);

/* A registry whose workers heartbeat every interval_ms. */
struct kiln_worker_table *kiln_worker_table_new(uint64_t interval_ms);
void kiln_worker_table_free(struct kiln_worker_table *reg);

uint64_t kiln_worker_table_interval_ms(const struct kiln_worker_table *reg);

/*
 * Add a worker (taking reg's contents; *reg is zeroed). A worker of the
 * same name is replaced (a restarted worker). *id gets the new entry's id
 * (caller frees). -ENOSPC when the table is full of ready workers.
 */
int kiln_worker_table_register(struct kiln_worker_table *reg,
			   struct kiln_registration *r, char **id);

/* Record a heartbeat of worker id: 0, or -ENOENT for an unknown id. */
int kiln_worker_table_heartbeat(struct kiln_worker_table *reg, const char *id,
			    uint64_t running, uint64_t bytes_held);

/* Mark workers that missed their heartbeats lost (logged). */
void kiln_worker_table_sweep(struct kiln_worker_table *reg);

/* {"workers": [...]} as documented in docs/api.md, after a sweep. */
json_t *kiln_worker_table_list_json(struct kiln_worker_table *reg);

/* ---- the location index (docs/internals/cluster.md) ---- */

/* A worker as placement and pulls need it. */
struct kiln_worker_ref {
	char name[KILN_WORKER_TABLE_NAME_MAX + 1];
	char addr[KILN_WORKER_TABLE_ADDR_MAX + 1];
	bool emulated; /* placement: it runs the platform emulated */
};

/* Worker name now holds tree whole (size bytes, 0 = unknown). */
void kiln_worker_table_hold(struct kiln_worker_table *reg, const char *name,
		       const struct kiln_digest *tree, uint64_t size);
/* No worker holds tree any more (a pull of it found it nowhere). */
void kiln_worker_table_forget(struct kiln_worker_table *reg, const struct kiln_digest *tree);
/* Does some ready worker hold tree? */
bool kiln_worker_table_held(struct kiln_worker_table *reg, const struct kiln_digest *tree);
/* Up to max ready holders of tree other than except (may be NULL). */
size_t kiln_worker_table_holders(struct kiln_worker_table *reg, const struct kiln_digest *tree,
			    const char *except, struct kiln_worker_ref *out, size_t max);
/* Is worker name registered and ready (not lost)? */
bool kiln_worker_table_ready(struct kiln_worker_table *reg, const char *name);
/* A call to the worker failed at transport level: lost now, not after heartbeats. */
void kiln_worker_table_mark_lost(struct kiln_worker_table *reg, const char *name, const char *why);

/* ---- placement ---- */

/*
 * Can a ready worker run platform? *emulated: only emulated ones can.
 * -ENODEV naming the platform and listing the registered ones.
 */
int kiln_worker_table_check_platform(struct kiln_worker_table *reg, const char *platform,
				bool *emulated, struct kiln_error **err);

struct kiln_place_request {
	const char *platform;
	const struct kiln_digest *inputs; /* trees the job reads */
	size_t n_inputs;
	uint64_t est_ms;    /* the job's estimated duration */
	const char *except; /* a worker not to use (it just failed), or NULL */
	const atomic_bool *cancelled; /* set: stop waiting (-ECANCELED); or NULL */
};

/*
 * Reserve a slot for a job on the worker the placement policy chooses
 * (placement.h): among ready workers that run its platform, natively if
 * any can, the one with the least estimated finish time (its queued work,
 * the bytes of inputs it lacks at the sizes the location index records,
 * the job). Waits while that worker is full, unless *rq->cancelled
 * becomes true (-ECANCELED, no slot taken). -ENODEV when none runs the
 * platform.
 */
int kiln_worker_table_place(struct kiln_worker_table *reg, const struct kiln_place_request *rq,
		       struct kiln_worker_ref *out, struct kiln_error **err);
/* The job placed on name ended. */
void kiln_worker_table_unplace(struct kiln_worker_table *reg, const char *name, uint64_t est_ms);
