#include "solver/progress.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/platform.h"
#include "basic/strbuf.h"
#include "basic/macro.h"
#include "basic/utf8.h"

struct kiln_progress {
	enum kiln_progress_mode mode;
	FILE *out;
	pthread_mutex_t lock;
	json_t *ids;   /* vertex -> step number (plain) */
	unsigned next_id;
	uint64_t start;
	json_t *failed; /* platform -> true, for each step that failed */
};

static const char *const status_names[] = { "queued", "running", "cached", "done",
					     "error" };

int kiln_progress_mode_parse(const char *s, enum kiln_progress_mode *out)
{
	static const char *const names[] = { "auto", "plain", "tty", "json", "quiet" };
	size_t i;

	for (i = 0; i < ARRAY_SIZE(names); i++) {
		if (!strcmp(s, names[i])) {
			*out = (enum kiln_progress_mode)i;
			return 0;
		}
	}
	return -EINVAL;
}

struct kiln_progress *kiln_progress_new(enum kiln_progress_mode mode, FILE *out)
{
	struct kiln_progress *p = xcalloc(1, sizeof(*p));

	if (mode == KILN_PROGRESS_AUTO)
		mode = isatty(fileno(out)) ? KILN_PROGRESS_TTY : KILN_PROGRESS_PLAIN;
	p->mode = mode;
	p->out = out;
	pthread_mutex_init(&p->lock, NULL);
	p->ids = json_object();
	p->failed = json_object();
	p->start = kiln_now_mono_ns();
	return p;
}

void kiln_progress_free(struct kiln_progress *p)
{
	if (!p)
		return;
	json_decref(p->ids);
	json_decref(p->failed);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

/* tty mode colours the plain stream; plain stays free of escapes. */
enum { RESET, BOLD, DIM, RED, GREEN, CYAN, MAGENTA };

static const char *color(const struct kiln_progress *p, int c)
{
	static const char *const codes[] = { "\033[0m", "\033[1m", "\033[2m", "\033[31m",
					     "\033[32m", "\033[36m", "\033[35m" };

	return p->mode == KILN_PROGRESS_TTY ? codes[c] : "";
}

static json_t *rfc3339(uint64_t ns)
{
	char buf[64];
	struct tm tm;
	time_t t = (time_t)(ns / 1000000000u);

	if (!ns)
		return json_null();
	gmtime_r(&t, &tm);
	strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + strlen(buf), sizeof(buf) - strlen(buf), ".%09uZ",
		 (unsigned)(ns % 1000000000u));
	return json_string(buf);
}

static void emit_json(struct kiln_progress *p, json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);

	if (s) {
		fputs(s, p->out);
		fputc('\n', p->out);
		free(s);
	}
	json_decref(o);
	fflush(p->out);
}

/* Step number for plain output ("#3"), assigned on first sight. */
static unsigned step_id(struct kiln_progress *p, const char *vertex)
{
	json_t *v = json_object_get(p->ids, vertex);

	if (v)
		return (unsigned)json_integer_value(v);
	json_object_set_new(p->ids, vertex, json_integer(++p->next_id));
	return p->next_id;
}

/* A step of platform failed (the lock held). */
static void note_failed(struct kiln_progress *p, const char *platform)
{
	if (platform && *platform)
		json_object_set_new(p->failed, platform, json_true());
}

static int by_string(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

char *kiln_progress_failed_platforms(struct kiln_progress *p)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(64u << 10);
	const char **v;
	const char *k;
	json_t *x;
	size_t n = 0, i;

	if (!p)
		return NULL;
	pthread_mutex_lock(&p->lock);
	v = xcalloc(json_object_size(p->failed) + 1, sizeof(*v));
	json_object_foreach(p->failed, k, x)
		v[n++] = k;
	qsort(v, n, sizeof(*v), by_string);
	for (i = 0; i < n; i++)
		(void)kiln_platform_list_add(&sb, i == 0, v[i], false);
	free(v);
	pthread_mutex_unlock(&p->lock);
	if (n == 0) {
		kiln_strbuf_release(&sb);
		return NULL;
	}
	return kiln_strbuf_detach(&sb, NULL);
}

void kiln_progress_vertex(struct kiln_progress *p, const struct kiln_vertex_event *ev)
{
	unsigned id;

	pthread_mutex_lock(&p->lock);
	if (ev->status == KILN_VERTEX_ERROR)
		note_failed(p, ev->platform);
	if (p->mode == KILN_PROGRESS_QUIET) {
		pthread_mutex_unlock(&p->lock);
		return;
	}
	if (p->mode == KILN_PROGRESS_JSON) {
		json_t *o = json_pack("{sssssssbsssssb}", "vertex", ev->vertex, "name",
				      ev->name, "status", status_names[ev->status],
				      "cached", ev->cached, "platform",
				      ev->platform ? ev->platform : "", "worker",
				      ev->worker ? ev->worker : "", "emulated", ev->emulated);
		json_object_set_new(o, "started", rfc3339(ev->started));
		json_object_set_new(o, "completed", rfc3339(ev->completed));
		if (ev->error)
			json_object_set_new(o, "error", json_string(ev->error));
		emit_json(p, o);
		pthread_mutex_unlock(&p->lock);
		return;
	}
	id = step_id(p, ev->vertex);
	switch (ev->status) {
	case KILN_VERTEX_QUEUED:
		break;
	case KILN_VERTEX_RUNNING: {
		/* The embedded engine's one worker goes unnamed. */
		bool named = ev->worker && *ev->worker && strcmp(ev->worker, "local");

		fprintf(p->out, "%s#%u %s%s%s%s%s%s%s\n", color(p, BOLD), id, ev->name,
			color(p, RESET), named ? " on " : "", named ? ev->worker : "",
			ev->emulated ? color(p, MAGENTA) : "", ev->emulated ? " (emulated)" : "",
			ev->emulated ? color(p, RESET) : "");
		break;
	}
	case KILN_VERTEX_CACHED:
		fprintf(p->out, "%s#%u %s%s\n%s#%u CACHED%s\n", color(p, BOLD), id, ev->name,
			color(p, RESET), color(p, CYAN), id, color(p, RESET));
		break;
	case KILN_VERTEX_DONE:
		fprintf(p->out, "%s#%u DONE %.1fs%s\n", color(p, GREEN), id,
			ev->started && ev->completed
				? (double)(ev->completed - ev->started) / 1e9
				: 0.0,
			color(p, RESET));
		break;
	case KILN_VERTEX_ERROR:
		fprintf(p->out, "%s#%u ERROR: %s%s\n", color(p, RED), id,
			ev->error ? ev->error : "failed", color(p, RESET));
		break;
	}
	fflush(p->out);
	pthread_mutex_unlock(&p->lock);
}

/*
 * A step's output, safe for a terminal and for JSON: valid UTF-8 as it is,
 * other bytes U+FFFD (kiln_utf8_clean), control characters but newline
 * and tab '?' — C0, DEL and C1 (U+0080..U+009F, two bytes, become "??"):
 * no escape sequence of a step reaches the terminal.
 */
static char *sanitize(const char *data, size_t len)
{
	char *s = kiln_utf8_clean(data, len, NULL);
	unsigned char *c;

	for (c = (unsigned char *)s; *c; c++) {
		if ((*c < 0x20 && *c != '\n' && *c != '\t') || *c == 0x7f)
			*c = '?';
		else if (*c == 0xc2 && c[1] >= 0x80 && c[1] <= 0x9f)
			c[0] = c[1] = '?';
	}
	return s;
}

void kiln_progress_log(struct kiln_progress *p, const char *vertex, int stream,
		       const char *data, size_t len)
{
	_cleanup_free_ char *s = NULL;
	unsigned id;
	char *line, *save = NULL;

	if (p->mode == KILN_PROGRESS_QUIET || len == 0)
		return;
	s = sanitize(data, len);
	pthread_mutex_lock(&p->lock);
	if (p->mode == KILN_PROGRESS_JSON) {
		emit_json(p, json_pack("{sssiss}", "vertex", vertex, "stream", stream, "log", s));
		pthread_mutex_unlock(&p->lock);
		return;
	}
	id = step_id(p, vertex);
	for (line = strtok_r(s, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		fprintf(p->out, "%s#%u %.3f%s %s\n", color(p, DIM), id,
			(double)(kiln_now_mono_ns() - p->start) / 1e9, color(p, RESET), line);
	fflush(p->out);
	pthread_mutex_unlock(&p->lock);
}

void kiln_progress_warning(struct kiln_progress *p, const char *msg)
{
	_cleanup_free_ char *s = NULL;

	if (p->mode == KILN_PROGRESS_QUIET)
		return;
	s = sanitize(msg, strlen(msg));
	pthread_mutex_lock(&p->lock);
	if (p->mode == KILN_PROGRESS_JSON) {
		emit_json(p, json_pack("{ss}", "warning", s));
	} else {
		/* The classic builder's prefix (moby builder/dockerfile/buildargs.go). */
		fprintf(p->out, "%s[Warning]%s %s\n", color(p, MAGENTA), color(p, RESET), s);
		fflush(p->out);
	}
	pthread_mutex_unlock(&p->lock);
}

void kiln_progress_summary(struct kiln_progress *p,
			   const struct kiln_progress_tally *workers, size_t n,
			   const struct kiln_progress_bytes *bytes, uint64_t wall_ns,
			   bool ok)
{
	unsigned run = 0, cached = 0;
	size_t i;

	if (p->mode == KILN_PROGRESS_QUIET)
		return;
	pthread_mutex_lock(&p->lock);
	if (p->mode == KILN_PROGRESS_JSON) {
		json_t *w = json_object();

		for (i = 0; i < n; i++)
			json_object_set_new(w, workers[i].worker,
					    json_pack("{sisi}", "run", workers[i].run, "cached",
						      workers[i].cached));
		emit_json(p, json_pack("{s{sbsosIsIsIsf}}", "summary", "ok", ok, "workers", w,
				       "bytes_moved", (json_int_t)bytes->moved,
				       "bytes_from_cache", (json_int_t)bytes->cache_in,
				       "bytes_to_cache", (json_int_t)bytes->cache_out, "seconds",
				       (double)wall_ns / 1e9));
	} else {
		for (i = 0; i < n; i++) {
			run += workers[i].run;
			cached += workers[i].cached;
		}
		fprintf(p->out, "%s: %u steps run, %u cached in %.2fs", ok ? "done" : "failed",
			run, cached, (double)wall_ns / 1e9);
		if (n == 1)
			fprintf(p->out, " on worker %s", workers[0].worker);
		if (bytes->moved)
			fprintf(p->out, "; %.1f MiB moved between workers",
				(double)bytes->moved / (1024.0 * 1024.0));
		if (bytes->cache_in)
			fprintf(p->out, "; %.1f MiB from the remote cache",
				(double)bytes->cache_in / (1024.0 * 1024.0));
		if (bytes->cache_out)
			fprintf(p->out, "; %.1f MiB to the remote cache",
				(double)bytes->cache_out / (1024.0 * 1024.0));
		fputc('\n', p->out);
		for (i = 0; n > 1 && i < n; i++)
			fprintf(p->out, "  %s: %u run, %u cached\n", workers[i].worker,
				workers[i].run, workers[i].cached);
		fflush(p->out);
	}
	pthread_mutex_unlock(&p->lock);
}

/* "2025-01-02T03:04:05.678Z" (as rfc3339() writes it) to unix ns; 0 if not. */
static uint64_t parse_time(const json_t *v)
{
	const char *s = json_string_value(v), *rest;
	uint64_t frac = 0, scale = 1000000000u;
	struct tm tm = { 0 };
	time_t t;

	if (!s || !(rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)))
		return 0;
	t = timegm(&tm);
	if (*rest == '.')
		for (rest++; *rest >= '0' && *rest <= '9' && scale > 1; rest++) {
			scale /= 10;
			frac += (uint64_t)(*rest - '0') * scale;
		}
	return t < 0 ? 0 : (uint64_t)t * 1000000000u + frac;
}

static void replay_summary(struct kiln_progress *p, json_t *sum)
{
	json_t *workers = json_object_get(sum, "workers"), *w;
	struct kiln_progress_tally *t = xcalloc(json_object_size(workers) + 1, sizeof(*t));
	const char *name;
	size_t n = 0;

	json_object_foreach(workers, name, w) {
		t[n].worker = name;
		t[n].run = (unsigned)json_integer_value(json_object_get(w, "run"));
		t[n].cached = (unsigned)json_integer_value(json_object_get(w, "cached"));
		n++;
	}
	{
		struct kiln_progress_bytes b = {
			(uint64_t)json_integer_value(json_object_get(sum, "bytes_moved")),
			(uint64_t)json_integer_value(json_object_get(sum, "bytes_from_cache")),
			(uint64_t)json_integer_value(json_object_get(sum, "bytes_to_cache")),
		};

		kiln_progress_summary(p, t, n, &b,
				      (uint64_t)(json_number_value(json_object_get(sum, "seconds")) * 1e9),
				      json_is_true(json_object_get(sum, "ok")));
	}
	free(t);
}

void kiln_progress_replay(struct kiln_progress *p, const char *line, size_t len)
{
	json_t *o = json_loadb(line, len, 0, NULL), *v;
	const char *status;
	size_t i;

	if (!json_is_object(o))
		goto out;
	if (p->mode == KILN_PROGRESS_JSON || p->mode == KILN_PROGRESS_QUIET) {
		pthread_mutex_lock(&p->lock);
		if (!strcmp(json_string_value(json_object_get(o, "status")) ?: "", "error"))
			note_failed(p, json_string_value(json_object_get(o, "platform")));
		if (p->mode == KILN_PROGRESS_JSON)
			emit_json(p, o); /* takes o */
		else
			json_decref(o);
		pthread_mutex_unlock(&p->lock);
		return;
	}
	if ((v = json_object_get(o, "summary"))) {
		replay_summary(p, v);
	} else if ((v = json_object_get(o, "warning"))) {
		kiln_progress_warning(p, json_string_value(v) ?: "");
	} else if ((v = json_object_get(o, "log"))) {
		kiln_progress_log(p, json_string_value(json_object_get(o, "vertex")) ?: "",
				  (int)json_integer_value(json_object_get(o, "stream")),
				  json_string_value(v) ?: "", json_string_length(v));
	} else if ((status = json_string_value(json_object_get(o, "status")))) {
		struct kiln_vertex_event ev = {
			.vertex = json_string_value(json_object_get(o, "vertex")) ?: "",
			.name = json_string_value(json_object_get(o, "name")) ?: "",
			.cached = json_is_true(json_object_get(o, "cached")),
			.platform = json_string_value(json_object_get(o, "platform")),
			.worker = json_string_value(json_object_get(o, "worker")),
			.emulated = json_is_true(json_object_get(o, "emulated")),
			.started = parse_time(json_object_get(o, "started")),
			.completed = parse_time(json_object_get(o, "completed")),
			.error = json_string_value(json_object_get(o, "error")),
		};

		for (i = 0; i < ARRAY_SIZE(status_names); i++)
			if (!strcmp(status, status_names[i])) {
				ev.status = (enum kiln_vertex_status)i;
				kiln_progress_vertex(p, &ev);
				break;
			}
	}
out:
	json_decref(o);
}
