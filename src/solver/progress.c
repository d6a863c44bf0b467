#include "solver/progress.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "basic/alloc.h"

struct kiln_progress {
	enum kiln_progress_mode mode;
	FILE *out;
	pthread_mutex_t lock;
	json_t *ids;   /* vertex -> step number (plain) */
	unsigned next_id;
	uint64_t start;
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
	p->start = kiln_now_mono_ns();
	return p;
}

void kiln_progress_free(struct kiln_progress *p)
{
	if (!p)
		return;
	json_decref(p->ids);
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

void kiln_progress_vertex(struct kiln_progress *p, const struct kiln_vertex_event *ev)
{
	unsigned id;

	if (p->mode == KILN_PROGRESS_QUIET)
		return;
	pthread_mutex_lock(&p->lock);
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
	case KILN_VERTEX_RUNNING:
		fprintf(p->out, "%s#%u %s%s%s%s\n", color(p, BOLD), id, ev->name, color(p, RESET),
			ev->emulated ? color(p, MAGENTA) : "", ev->emulated ? " (emulated)" : "");
		break;
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

/* JSON strings must be UTF-8: replace anything else with '?'. */
static char *sanitize(const char *data, size_t len)
{
	char *s = xmalloc(len + 1);

	memcpy(s, data, len);
	s[len] = '\0';
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if ((c < 0x20 && c != '\n' && c != '\t') || c >= 0x80)
			s[i] = '?';
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

void kiln_progress_summary(struct kiln_progress *p, const char *worker, unsigned run,
			   unsigned cached, uint64_t wall_ns, bool ok)
{
	if (p->mode == KILN_PROGRESS_QUIET)
		return;
	pthread_mutex_lock(&p->lock);
	if (p->mode == KILN_PROGRESS_JSON) {
		json_t *w = json_pack("{s{sisi}}", worker, "run", run, "cached", cached);
		emit_json(p, json_pack("{s{sbsosf}}", "summary", "ok", ok, "workers", w,
				       "seconds", (double)wall_ns / 1e9));
	} else {
		fprintf(p->out, "%s: %u steps run, %u cached on worker %s in %.2fs\n",
			ok ? "done" : "failed", run, cached, worker, (double)wall_ns / 1e9);
		fflush(p->out);
	}
	pthread_mutex_unlock(&p->lock);
}
