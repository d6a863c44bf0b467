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
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "cas/digest.h"

/* Limits on what one worker may announce (hostile input). */
#define KILN_REGISTRY_MAX_WORKERS 1024u
#define KILN_REGISTRY_NAME_MAX 63u
#define KILN_REGISTRY_ADDR_MAX 256u
#define KILN_REGISTRY_MAX_PLATFORMS 16u
#define KILN_REGISTRY_PLATFORM_MAX 64u
#define KILN_REGISTRY_MAX_LABELS 64u
#define KILN_REGISTRY_LABEL_MAX 256u
#define KILN_REGISTRY_MAX_SLOTS 4096u
/* Missed heartbeat intervals after which a worker is lost. */
#define KILN_REGISTRY_LOST_INTERVALS 3u

struct kiln_workers;

struct kiln_workers_platform {
	char *platform; /* "os/arch[/variant]", as the worker normalized it */
	bool emulated;
};

struct kiln_workers_label {
	char *key, *value;
};

/* What a worker announces when it registers. */
struct kiln_registration {
	char *name;
	char *addr; /* base URL of its peer blob server */
	struct kiln_workers_platform *platforms;
	size_t n_platforms;
	uint32_t slots;
	struct kiln_workers_label *labels;
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
struct kiln_workers *kiln_workers_new(uint64_t interval_ms);
void kiln_workers_free(struct kiln_workers *reg);

uint64_t kiln_workers_interval_ms(const struct kiln_workers *reg);

/*
 * Add a worker (taking reg's contents; *reg is zeroed). A worker of the
 * same name is replaced (a restarted worker). *id gets the new entry's id
 * (caller frees). -ENOSPC when the table is full of ready workers.
 */
int kiln_workers_register(struct kiln_workers *reg,
			   struct kiln_registration *r, char **id);

/* Record a heartbeat of worker id: 0, or -ENOENT for an unknown id. */
int kiln_workers_heartbeat(struct kiln_workers *reg, const char *id,
			    uint64_t running, uint64_t bytes_held);

/* Mark workers that missed their heartbeats lost (logged). */
void kiln_workers_sweep(struct kiln_workers *reg);

/* {"workers": [...]} as documented in docs/api.md, after a sweep. */
json_t *kiln_workers_list_json(struct kiln_workers *reg);
