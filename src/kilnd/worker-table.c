/*
 * The worker registry (worker-table.h): one table behind one mutex.
 *
 * Entry states (one entry per worker name, with an id of its own):
 *
 *         register of a new name (in a full table, the lost entry seen
 *         longest ago is dropped first; none lost: -ENOSPC, kilnd answers 503)
 *             |
 *             v
 *   +----> READY --sweep: no heartbeat for LOST_INTERVALS intervals-->+
 *   |             --mark_lost: a call to it failed at transport level-->+
 *   |                                                                   v
 *   +--heartbeat of its id (logged "is back")------------------------ LOST
 *
 *   READY/LOST --register of the same name--> removed; a new entry (new
 *         id, location index from the announced inventory) takes over,
 *         so heartbeats of the old id get -ENOENT (404) and that process
 *         registers again
 *   LOST  --a new name registers into a full table--> removed
 *
 * The sweep runs on kilnd's main thread once per interval, and before
 * every listing, readiness check, platform check and placement. Only
 * READY entries are placed on, named as holders or count for a platform;
 * a LOST entry keeps its location index, so a worker that comes back is a
 * holder again at once. The worker's side of this is the loop in
 * src/agent/agent.c.
 *
 * Every path that changes an entry's state ends in assert_workers_state().
 */
#include "kilnd/worker-table.h"

#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/macro.h"
#include "basic/platform.h"
#include "basic/strbuf.h"
#include "cas/digest-set.h"
#include "kilnd/placement.h"
#include "proto/http-server.h"

#define INVENTORY_MAX 100000u
#define LABEL_KEY_MAX 128u

enum worker_state {
	WORKER_READY,
	WORKER_LOST,
};

struct entry {
	char *id;
	struct kiln_registration info;
	enum worker_state state;
	uint64_t running, bytes_held;
	/* The location index: trees it holds whole (value: size, 0 unknown). */
	struct kiln_digest_set *held;
	unsigned busy;      /* jobs kilnd placed here that still run */
	uint64_t queued_ms; /* their estimated durations */
	uint64_t seen_mono_ns, seen_real_ns, registered_real_ns;
};

struct kiln_worker_table {
	pthread_mutex_t lock;
	pthread_cond_t changed; /* a slot freed, a worker came or went */
	uint64_t interval_ms;
	struct entry **entries;
	size_t n, alloc;
};

/* ---- registrations ---- */

void kiln_registration_release(struct kiln_registration *r)
{
	size_t i;

	if (!r)
		return;
	free(r->name);
	free(r->addr);
	for (i = 0; i < r->n_platforms; i++)
		free(r->platforms[i].platform);
	free(r->platforms);
	for (i = 0; i < r->n_labels; i++) {
		free(r->labels[i].key);
		free(r->labels[i].value);
	}
	free(r->labels);
	free(r->inventory);
	memset(r, 0, sizeof(*r));
}

static bool all_chars(const char *s, const char *extra)
{
	for (; *s; s++)
		if (!(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z') &&
		    !(*s >= '0' && *s <= '9') && !strchr(extra, *s))
			return false;
	return true;
}

static bool printable(const char *s)
{
	for (; *s; s++)
		if (*s < ' ' || *s > '~')
			return false;
	return true;
}

static int parse_name(const json_t *j, struct kiln_registration *out,
		      struct kiln_error **err)
{
	json_t *v;
	const char *s;
	int r = kiln_json_member(j, "name", JSON_STRING, true, &v, err);

	if (r < 0)
		return r;
	s = json_string_value(v);
	if (!*s || strlen(s) > KILN_WORKER_TABLE_NAME_MAX || *s == '.' ||
	    *s == '-' || !all_chars(s, "._-"))
		return kiln_error_set(err, -EINVAL,
				      "\"name\": not a worker name (1-%u of A-Z a-z 0-9 . _ -, starting with a letter or digit)",
				      KILN_WORKER_TABLE_NAME_MAX);
	out->name = xstrdup(s);
	return 0;
}

static int parse_addr(const json_t *j, struct kiln_registration *out,
		      struct kiln_error **err)
{
	json_t *v;
	const char *s;
	int r = kiln_json_member(j, "addr", JSON_STRING, true, &v, err);

	if (r < 0)
		return r;
	s = json_string_value(v);
	if (strlen(s) > KILN_WORKER_TABLE_ADDR_MAX || strchr(s, ' ') ||
	    !printable(s) ||
	    (strncmp(s, "http://", 7) && strncmp(s, "https://", 8)))
		return kiln_error_set(err, -EINVAL,
				      "\"addr\": not an http:// or https:// URL of at most %u bytes",
				      KILN_WORKER_TABLE_ADDR_MAX);
	out->addr = xstrdup(s);
	return 0;
}

/* A worker announces platforms as it normalized them (docs/api.md). */
static int platform_check(const char *s, struct kiln_error **err)
{
	_cleanup_free_ char *n = NULL;

	if (strlen(s) > KILN_WORKER_TABLE_PLATFORM_MAX)
		return kiln_platform_invalid(err, s);
	n = kiln_platform_normalize(s);
	if (!n)
		return kiln_platform_invalid(err, s);
	if (strcmp(n, s))
		return kiln_error_set(err, -EINVAL, "platform \"%s\" is not normalized (%s)",
				      s, n);
	return 0;
}

static int parse_platform(const json_t *j, size_t i,
			  struct kiln_worker_table_platform *out,
			  struct kiln_error **err)
{
	json_t *p, *e;
	int r;

	if (!json_is_object(j))
		return kiln_error_set(err, -EINVAL,
				      "\"platforms\"[%zu]: not an object", i);
	r = kiln_json_member(j, "platform", JSON_STRING, true, &p, err);
	if (r == 0)
		r = kiln_json_member(j, "emulated", JSON_TRUE, false, &e, err);
	if (r < 0) {
		kiln_error_prefix(err, "\"platforms\"[%zu]", i);
		return r;
	}
	r = platform_check(json_string_value(p), err);
	if (r < 0) {
		kiln_error_prefix(err, "\"platforms\"[%zu]", i);
		return r;
	}
	out->platform = xstrdup(json_string_value(p));
	out->emulated = e && json_is_true(e);
	return 0;
}

static int parse_platforms(const json_t *j, struct kiln_registration *out,
			   struct kiln_error **err)
{
	json_t *a;
	size_t i, n;
	int r = kiln_json_member(j, "platforms", JSON_ARRAY, true, &a, err);

	if (r < 0)
		return r;
	n = json_array_size(a);
	if (n == 0 || n > KILN_WORKER_TABLE_MAX_PLATFORMS)
		return kiln_error_set(err, -EINVAL,
				      "\"platforms\": needs 1 to %u entries",
				      KILN_WORKER_TABLE_MAX_PLATFORMS);
	out->platforms = xcalloc(n, sizeof(*out->platforms));
	for (i = 0; i < n; i++) {
		r = parse_platform(json_array_get(a, i), i,
				   &out->platforms[i], err);
		if (r < 0)
			return r;
		out->n_platforms++;
	}
	return 0;
}

static int parse_slots(const json_t *j, struct kiln_registration *out,
		       struct kiln_error **err)
{
	json_t *v;
	json_int_t n;
	int r = kiln_json_member(j, "slots", JSON_INTEGER, true, &v, err);

	if (r < 0)
		return r;
	n = json_integer_value(v);
	if (n < 1 || n > KILN_WORKER_TABLE_MAX_SLOTS)
		return kiln_error_set(err, -EINVAL,
				      "\"slots\": must be 1 to %u",
				      KILN_WORKER_TABLE_MAX_SLOTS);
	out->slots = (uint32_t)n;
	return 0;
}

static int parse_label(const char *k, const json_t *v,
		       struct kiln_worker_table_label *out, struct kiln_error **err)
{
	if (!*k || strlen(k) > LABEL_KEY_MAX || !all_chars(k, "._/-"))
		return kiln_error_set(err, -EINVAL,
				      "\"labels\": bad key (1-%u of A-Z a-z 0-9 . _ / -)",
				      LABEL_KEY_MAX);
	if (!json_is_string(v) ||
	    strlen(json_string_value(v)) > KILN_WORKER_TABLE_LABEL_MAX ||
	    !printable(json_string_value(v)))
		return kiln_error_set(err, -EINVAL,
				      "\"labels\".%s: not a printable string of at most %u bytes",
				      k, KILN_WORKER_TABLE_LABEL_MAX);
	out->key = xstrdup(k);
	out->value = xstrdup(json_string_value(v));
	return 0;
}

static int parse_labels(const json_t *j, struct kiln_registration *out,
			struct kiln_error **err)
{
	json_t *o, *v;
	const char *k;
	int r = kiln_json_member(j, "labels", JSON_OBJECT, false, &o, err);

	if (r < 0 || !o)
		return r;
	if (json_object_size(o) > KILN_WORKER_TABLE_MAX_LABELS)
		return kiln_error_set(err, -EINVAL,
				      "\"labels\": more than %u labels",
				      KILN_WORKER_TABLE_MAX_LABELS);
	out->labels = xcalloc(json_object_size(o) + 1, sizeof(*out->labels));
	json_object_foreach(o, k, v) {
		r = parse_label(k, v, &out->labels[out->n_labels], err);
		if (r < 0)
			return r;
		out->n_labels++;
	}
	return 0;
}

static int parse_inventory(const json_t *j, struct kiln_registration *out,
			   struct kiln_error **err)
{
	json_t *a, *v;
	size_t i, n;
	int r = kiln_json_member(j, "inventory", JSON_ARRAY, false, &a, err);

	if (r < 0 || !a)
		return r;
	n = json_array_size(a);
	if (n > INVENTORY_MAX)
		return kiln_error_set(err, -EINVAL,
				      "\"inventory\": more than %u trees",
				      INVENTORY_MAX);
	out->inventory = xcalloc(n + 1, sizeof(*out->inventory));
	json_array_foreach(a, i, v) {
		if (!json_is_string(v) ||
		    kiln_digest_parse(json_string_value(v),
				      &out->inventory[i]) < 0)
			return kiln_error_set(err, -EINVAL,
					      "\"inventory\"[%zu]: not a digest",
					      i);
		out->n_inventory++;
	}
	return 0;
}

int kiln_registration_parse(const json_t *j, struct kiln_registration *out,
			    struct kiln_error **err)
{
	int r;

	memset(out, 0, sizeof(*out));
	if (!json_is_object(j))
		return kiln_error_set(err, -EINVAL,
				      "registration: not a JSON object");
	r = parse_name(j, out, err);
	if (r == 0)
		r = parse_addr(j, out, err);
	if (r == 0)
		r = parse_platforms(j, out, err);
	if (r == 0)
		r = parse_slots(j, out, err);
	if (r == 0)
		r = parse_labels(j, out, err);
	if (r == 0)
		r = parse_inventory(j, out, err);
	if (r < 0)
		kiln_registration_release(out);
	return r;
}

/* ---- the table ---- */

static void assert_workers_state(const struct kiln_worker_table *reg)
{
#ifndef NDEBUG
	size_t i, k;

	assert(reg->n <= reg->alloc || (reg->n == 0 && !reg->entries));
	assert(reg->n <= KILN_WORKER_TABLE_MAX_WORKERS);
	for (i = 0; i < reg->n; i++) {
		const struct entry *e = reg->entries[i];

		assert(e && e->id && e->info.name && e->info.addr);
		assert(e->state == WORKER_READY || e->state == WORKER_LOST);
		assert(e->info.n_platforms > 0);
		/* Names are unique (quadratic: only for small tables). */
		for (k = i + 1; reg->n <= 64 && k < reg->n; k++)
			assert(strcmp(e->info.name, reg->entries[k]->info.name));
	}
#else
	(void)reg;
#endif
}

struct kiln_worker_table *kiln_worker_table_new(uint64_t interval_ms)
{
	struct kiln_worker_table *reg = xcalloc(1, sizeof(*reg));

	pthread_mutex_init(&reg->lock, NULL);
	pthread_cond_init(&reg->changed, NULL);
	reg->interval_ms = interval_ms;
	return reg;
}

static void entry_free(struct entry *e)
{
	if (!e)
		return;
	free(e->id);
	kiln_registration_release(&e->info);
	kiln_digest_set_free(e->held);
	free(e);
}

void kiln_worker_table_free(struct kiln_worker_table *reg)
{
	size_t i;

	if (!reg)
		return;
	for (i = 0; i < reg->n; i++)
		entry_free(reg->entries[i]);
	free(reg->entries);
	pthread_cond_destroy(&reg->changed);
	pthread_mutex_destroy(&reg->lock);
	free(reg);
}

uint64_t kiln_worker_table_interval_ms(const struct kiln_worker_table *reg)
{
	return reg->interval_ms;
}

static ssize_t find_name(const struct kiln_worker_table *reg, const char *name)
{
	size_t i;

	for (i = 0; i < reg->n; i++)
		if (!strcmp(reg->entries[i]->info.name, name))
			return (ssize_t)i;
	return -1;
}

static ssize_t find_id(const struct kiln_worker_table *reg, const char *id)
{
	size_t i;

	for (i = 0; i < reg->n; i++)
		if (!strcmp(reg->entries[i]->id, id))
			return (ssize_t)i;
	return -1;
}

static void remove_at(struct kiln_worker_table *reg, size_t i)
{
	entry_free(reg->entries[i]);
	memmove(&reg->entries[i], &reg->entries[i + 1],
		(reg->n - i - 1) * sizeof(*reg->entries));
	reg->n--;
}

/* Make room for one more entry: drop the lost worker seen longest ago. */
static int make_room(struct kiln_worker_table *reg)
{
	ssize_t oldest = -1;
	size_t i;

	if (reg->n < KILN_WORKER_TABLE_MAX_WORKERS)
		return 0;
	for (i = 0; i < reg->n; i++)
		if (reg->entries[i]->state == WORKER_LOST &&
		    (oldest < 0 || reg->entries[i]->seen_mono_ns <
					   reg->entries[oldest]->seen_mono_ns))
			oldest = (ssize_t)i;
	if (oldest < 0)
		return -ENOSPC;
	log_info("worker %s (%s) forgotten: lost, and the registry is full",
		 reg->entries[oldest]->info.name, reg->entries[oldest]->id);
	remove_at(reg, (size_t)oldest);
	return 0;
}

static struct entry *entry_new(struct kiln_worker_table *reg,
			       struct kiln_registration *r)
{
	struct entry *e = xcalloc(1, sizeof(*e));

	do {
		free(e->id);
		e->id = kiln_random_hex(8);
	} while (find_id(reg, e->id) >= 0);
	e->info = *r;
	memset(r, 0, sizeof(*r));
	e->held = kiln_digest_set_new();
	for (size_t k = 0; k < e->info.n_inventory; k++)
		kiln_digest_set_add(e->held, &e->info.inventory[k]);
	e->state = WORKER_READY;
	e->seen_mono_ns = kiln_now_mono_ns();
	e->seen_real_ns = e->registered_real_ns = kiln_now_real_ns();
	return e;
}

/* What e announced: "linux/amd64,linux/arm64(emulated)". */
static int add_entry_platforms(struct kiln_strbuf *sb, const struct entry *e)
{
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < e->info.n_platforms; i++)
		r = kiln_platform_list_add(sb, i == 0, e->info.platforms[i].platform,
					   e->info.platforms[i].emulated);
	return r;
}

static void log_registered(const struct entry *e, const char *old_id)
{
	_cleanup_strbuf_ struct kiln_strbuf plats = KILN_STRBUF_INIT(4096);

	(void)add_entry_platforms(&plats, e);
	log_info("worker %s registered as %s%s%s: %s, %s, %u slots, %zu trees",
		 e->info.name, e->id, old_id ? ", replacing " : "",
		 old_id ? old_id : "", e->info.addr, kiln_strbuf_str(&plats),
		 e->info.slots, e->info.n_inventory);
}

int kiln_worker_table_register(struct kiln_worker_table *reg,
			   struct kiln_registration *r, char **id)
{
	_cleanup_free_ char *old_id = NULL;
	struct entry *e;
	ssize_t i;
	int ret = 0;

	pthread_mutex_lock(&reg->lock);
	i = find_name(reg, r->name);
	if (i >= 0) {
		old_id = xstrdup(reg->entries[i]->id);
		remove_at(reg, (size_t)i);
	} else {
		ret = make_room(reg);
	}
	if (ret == 0) {
		e = entry_new(reg, r);
		reg->entries = xgrow(reg->entries, &reg->alloc, reg->n + 1,
				     sizeof(*reg->entries));
		reg->entries[reg->n++] = e;
		*id = xstrdup(e->id);
		log_registered(e, old_id);
		pthread_cond_broadcast(&reg->changed);
	}
	assert_workers_state(reg);
	pthread_mutex_unlock(&reg->lock);
	return ret;
}

int kiln_worker_table_heartbeat(struct kiln_worker_table *reg, const char *id,
			    uint64_t running, uint64_t bytes_held)
{
	struct entry *e;
	ssize_t i;

	pthread_mutex_lock(&reg->lock);
	i = find_id(reg, id);
	if (i < 0) {
		pthread_mutex_unlock(&reg->lock);
		return -ENOENT;
	}
	e = reg->entries[i];
	if (e->state == WORKER_LOST)
		log_info("worker %s (%s) is back", e->info.name, e->id);
	e->state = WORKER_READY;
	e->running = running;
	e->bytes_held = bytes_held;
	e->seen_mono_ns = kiln_now_mono_ns();
	e->seen_real_ns = kiln_now_real_ns();
	assert_workers_state(reg);
	pthread_mutex_unlock(&reg->lock);
	return 0;
}

static void sweep_locked(struct kiln_worker_table *reg)
{
	uint64_t now = kiln_now_mono_ns();
	uint64_t limit = KILN_WORKER_TABLE_LOST_INTERVALS * reg->interval_ms *
			 1000000u;
	size_t i;

	for (i = 0; i < reg->n; i++) {
		struct entry *e = reg->entries[i];

		if (e->state != WORKER_READY || now - e->seen_mono_ns <= limit)
			continue;
		e->state = WORKER_LOST;
		log_info("worker %s (%s) lost: no heartbeat for %llu ms",
			 e->info.name, e->id,
			 (unsigned long long)((now - e->seen_mono_ns) /
					      1000000u));
		pthread_cond_broadcast(&reg->changed);
	}
	assert_workers_state(reg);
}

void kiln_worker_table_sweep(struct kiln_worker_table *reg)
{
	pthread_mutex_lock(&reg->lock);
	sweep_locked(reg);
	pthread_mutex_unlock(&reg->lock);
}

/* ---- listing ---- */

/* RFC 3339 in UTC with milliseconds: "2025-01-02T03:04:05.678Z". */
static json_t *rfc3339(uint64_t real_ns)
{
	time_t t = (time_t)(real_ns / 1000000000u);
	char buf[64], date[40];
	struct tm tm;

	if (!gmtime_r(&t, &tm) ||
	    !strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm))
		return json_null();
	snprintf(buf, sizeof(buf), "%s.%03uZ", date,
		 (unsigned)(real_ns / 1000000u % 1000u));
	return json_string(buf);
}

static json_t *platforms_json(const struct kiln_registration *r)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; i < r->n_platforms; i++)
		json_array_append_new(
			a, json_pack("{s:s, s:b}", "platform",
				     r->platforms[i].platform, "emulated",
				     r->platforms[i].emulated));
	return a;
}

static json_t *labels_json(const struct kiln_registration *r)
{
	json_t *o = json_object();
	size_t i;

	for (i = 0; i < r->n_labels; i++)
		json_object_set_new(o, r->labels[i].key,
				    json_string(r->labels[i].value));
	return o;
}

static json_t *entry_json(const struct entry *e, uint64_t now_mono)
{
	json_t *o = json_object();

	json_object_set_new(o, "id", json_string(e->id));
	json_object_set_new(o, "name", json_string(e->info.name));
	json_object_set_new(o, "address", json_string(e->info.addr));
	json_object_set_new(o, "platforms", platforms_json(&e->info));
	json_object_set_new(o, "slots", json_integer(e->info.slots));
	json_object_set_new(o, "labels", labels_json(&e->info));
	json_object_set_new(o, "running", json_integer((json_int_t)e->running));
	json_object_set_new(o, "bytes_held",
			    json_integer((json_int_t)e->bytes_held));
	json_object_set_new(o, "inventory_trees",
			    json_integer((json_int_t)e->info.n_inventory));
	json_object_set_new(o, "registered", rfc3339(e->registered_real_ns));
	json_object_set_new(o, "last_seen", rfc3339(e->seen_real_ns));
	json_object_set_new(o, "last_seen_age_ms",
			    json_integer((json_int_t)((now_mono - e->seen_mono_ns) /
						      1000000u)));
	json_object_set_new(o, "state", json_string(e->state == WORKER_READY ?
							    "ready" : "lost"));
	return o;
}

json_t *kiln_worker_table_list_json(struct kiln_worker_table *reg)
{
	json_t *a = json_array();
	uint64_t now;
	size_t i;

	pthread_mutex_lock(&reg->lock);
	sweep_locked(reg);
	now = kiln_now_mono_ns();
	for (i = 0; i < reg->n; i++)
		json_array_append_new(a, entry_json(reg->entries[i], now));
	pthread_mutex_unlock(&reg->lock);
	return json_pack("{s:o, s:I}", "workers", a, "heartbeat_interval_ms",
			 (json_int_t)reg->interval_ms);
}

/* ---- the location index ---- */

/* A held tree's value: its size, 0 when unknown, HELD_GONE once it was not found there. */
#define HELD_GONE UINT64_MAX

static bool holds(const struct entry *e, const struct kiln_digest *tree)
{
	const uint64_t *v = kiln_digest_set_value(e->held, tree);

	return v ? *v != HELD_GONE : kiln_digest_set_has(e->held, tree);
}

static struct entry *find_ready(struct kiln_worker_table *reg, const char *name)
{
	ssize_t i = find_name(reg, name);

	return i >= 0 && reg->entries[i]->state == WORKER_READY ? reg->entries[i] : NULL;
}

void kiln_worker_table_hold(struct kiln_worker_table *reg, const char *name,
		       const struct kiln_digest *tree, uint64_t size)
{
	uint64_t *v;
	ssize_t i;

	pthread_mutex_lock(&reg->lock);
	i = find_name(reg, name);
	/* Known again, or a size learnt; an unknown size keeps a known one. */
	if (i >= 0 && !kiln_digest_set_put(reg->entries[i]->held, tree, size)) {
		v = kiln_digest_set_value(reg->entries[i]->held, tree);
		if (size || *v == HELD_GONE)
			*v = size;
	}
	pthread_mutex_unlock(&reg->lock);
}

void kiln_worker_table_forget(struct kiln_worker_table *reg, const struct kiln_digest *tree)
{
	size_t i;

	pthread_mutex_lock(&reg->lock);
	for (i = 0; i < reg->n; i++)
		if (kiln_digest_set_has(reg->entries[i]->held, tree)) {
			kiln_digest_set_put(reg->entries[i]->held, tree, 0);
			*kiln_digest_set_value(reg->entries[i]->held, tree) = HELD_GONE;
		}
	pthread_mutex_unlock(&reg->lock);
}

bool kiln_worker_table_held(struct kiln_worker_table *reg, const struct kiln_digest *tree)
{
	bool found = false;
	size_t i;

	pthread_mutex_lock(&reg->lock);
	for (i = 0; !found && i < reg->n; i++)
		found = reg->entries[i]->state == WORKER_READY && holds(reg->entries[i], tree);
	pthread_mutex_unlock(&reg->lock);
	return found;
}

size_t kiln_worker_table_holders(struct kiln_worker_table *reg, const struct kiln_digest *tree,
			    const char *except, struct kiln_worker_ref *out, size_t max)
{
	size_t i, n = 0;

	pthread_mutex_lock(&reg->lock);
	for (i = 0; i < reg->n && n < max; i++) {
		const struct entry *e = reg->entries[i];

		if (e->state != WORKER_READY || !holds(e, tree) ||
		    (except && !strcmp(e->info.name, except)))
			continue;
		snprintf(out[n].name, sizeof(out[n].name), "%s", e->info.name);
		snprintf(out[n].addr, sizeof(out[n].addr), "%s", e->info.addr);
		out[n].emulated = false;
		n++;
	}
	pthread_mutex_unlock(&reg->lock);
	return n;
}

bool kiln_worker_table_ready(struct kiln_worker_table *reg, const char *name)
{
	bool ready;

	pthread_mutex_lock(&reg->lock);
	sweep_locked(reg);
	ready = find_ready(reg, name) != NULL;
	pthread_mutex_unlock(&reg->lock);
	return ready;
}

void kiln_worker_table_mark_lost(struct kiln_worker_table *reg, const char *name, const char *why)
{
	struct entry *e;

	pthread_mutex_lock(&reg->lock);
	e = find_ready(reg, name);
	if (e) {
		e->state = WORKER_LOST;
		log_info("worker %s (%s) lost: %s", e->info.name, e->id, why);
		pthread_cond_broadcast(&reg->changed);
	}
	assert_workers_state(reg);
	pthread_mutex_unlock(&reg->lock);
}

/* ---- placement ---- */

/* How an entry runs platform: 0 no, 1 emulated, 2 natively. */
static int runs(const struct entry *e, const char *platform)
{
	size_t i;

	for (i = 0; i < e->info.n_platforms; i++)
		if (!strcmp(e->info.platforms[i].platform, platform))
			return e->info.platforms[i].emulated ? 1 : 2;
	return 0;
}

/* "NAME PLATFORMS, ..." of the ready workers (as much as fits), or "none". */
static char *list_platforms(struct kiln_worker_table *reg)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(1024);
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < reg->n; i++) {
		const struct entry *e = reg->entries[i];

		if (e->state != WORKER_READY)
			continue;
		r = kiln_strbuf_addf(&sb, "%s%s ", sb.len ? ", " : "", e->info.name);
		if (r == 0)
			r = add_entry_platforms(&sb, e);
	}
	if (!sb.len)
		(void)kiln_strbuf_adds(&sb, "none");
	return kiln_strbuf_detach(&sb, NULL);
}

static int no_worker_locked(struct kiln_worker_table *reg, const char *platform,
			    struct kiln_error **err)
{
	_cleanup_free_ char *plats = list_platforms(reg);

	return kiln_error_set(err, -ENODEV, "no worker runs platform %s (registered: %s)",
			      platform, plats);
}

int kiln_worker_table_check_platform(struct kiln_worker_table *reg, const char *platform,
				bool *emulated, struct kiln_error **err)
{
	int best = 0, r = 0;
	size_t i;

	pthread_mutex_lock(&reg->lock);
	sweep_locked(reg);
	for (i = 0; i < reg->n; i++) {
		int how = reg->entries[i]->state == WORKER_READY ? runs(reg->entries[i], platform)
								 : 0;
		if (how > best)
			best = how;
	}
	if (best == 0)
		r = no_worker_locked(reg, platform, err);
	pthread_mutex_unlock(&reg->lock);
	if (r == 0)
		*emulated = best == 1;
	return r;
}

/*
 * The size of tree as the location index knows it: the largest any
 * worker recorded (a holder may have recorded 0, unknown).
 */
static uint64_t known_size(const struct kiln_worker_table *reg,
			   const struct kiln_digest *tree)
{
	uint64_t size = 0;
	const uint64_t *v;
	size_t i;

	for (i = 0; i < reg->n; i++) {
		v = kiln_digest_set_value(reg->entries[i]->held, tree);
		if (v && *v != HELD_GONE && *v > size)
			size = *v;
	}
	return size;
}

/* Entry e as the placement policy sees it, for request rq. */
static struct kiln_place_candidate candidate(const struct kiln_worker_table *reg,
					     const struct entry *e,
					     const struct kiln_place_request *rq)
{
	struct kiln_place_candidate c = {
		.how = e->state == WORKER_READY ? runs(e, rq->platform) : 0,
		.slots = e->info.slots, .busy = e->busy, .queued_ms = e->queued_ms,
	};
	uint64_t size;
	size_t i;

	if (rq->except && !strcmp(rq->except, e->info.name))
		c.how = 0;
	for (i = 0; c.how && i < rq->n_inputs; i++) {
		if (holds(e, &rq->inputs[i]))
			continue;
		size = known_size(reg, &rq->inputs[i]);
		c.lack_bytes += size ? size : KILN_PLACE_UNKNOWN_BYTES;
	}
	return c;
}

/* Reserve a slot on the policy's choice: 0, -EAGAIN (full) or -ENODEV. */
static int place_locked(struct kiln_worker_table *reg,
			const struct kiln_place_request *rq,
			struct kiln_worker_ref *out)
{
	struct kiln_place_candidate *c = xcalloc(reg->n ? reg->n : 1, sizeof(*c));
	struct entry *e;
	ssize_t best;
	size_t i;

	for (i = 0; i < reg->n; i++)
		c[i] = candidate(reg, reg->entries[i], rq);
	best = kiln_place_choose(c, reg->n, rq->est_ms);
	if (best < 0) {
		free(c);
		return -ENODEV;
	}
	e = reg->entries[best];
	if (e->busy >= e->info.slots) {
		free(c);
		return -EAGAIN;
	}
	e->busy++;
	e->queued_ms += rq->est_ms;
	snprintf(out->name, sizeof(out->name), "%s", e->info.name);
	snprintf(out->addr, sizeof(out->addr), "%s", e->info.addr);
	out->emulated = c[best].how == 1;
	free(c);
	return 0;
}

int kiln_worker_table_place(struct kiln_worker_table *reg, const struct kiln_place_request *rq,
		       struct kiln_worker_ref *out, struct kiln_error **err)
{
	int r;

	pthread_mutex_lock(&reg->lock);
	for (;;) {
		if (rq->cancelled && atomic_load(rq->cancelled)) {
			r = kiln_error_set(err, -ECANCELED, "build cancelled");
			break;
		}
		sweep_locked(reg);
		r = place_locked(reg, rq, out);
		if (r == -ENODEV)
			r = no_worker_locked(reg, rq->platform, err);
		if (r != -EAGAIN)
			break;
		/* Every fitting worker is full: wait for a slot (or a change). */
		{
			struct timespec ts = kiln_deadline_ms(CLOCK_REALTIME, 200);

			pthread_cond_timedwait(&reg->changed, &reg->lock, &ts);
		}
	}
	pthread_mutex_unlock(&reg->lock);
	return r;
}

void kiln_worker_table_unplace(struct kiln_worker_table *reg, const char *name, uint64_t est_ms)
{
	ssize_t i;

	pthread_mutex_lock(&reg->lock);
	i = find_name(reg, name);
	if (i >= 0) {
		struct entry *e = reg->entries[i];

		if (e->busy)
			e->busy--;
		e->queued_ms = e->queued_ms > est_ms ? e->queued_ms - est_ms : 0;
	}
	pthread_cond_broadcast(&reg->changed);
	pthread_mutex_unlock(&reg->lock);
}
