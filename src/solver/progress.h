/*
 * Build progress: vertex events and step output, rendered as plain text,
 * a tty view, or JSON lines (one object per line, for tools and tests).
 *
 * JSON vertex events carry: vertex (op digest), name, status
 * (queued|running|cached|done|error), cached, platform, worker, emulated,
 * started and completed (RFC 3339, or null), error (on status error).
 * Output lines: {"vertex": ..., "stream": 1|2, "log": "..."}.
 * Warnings about the build (not one step's): {"warning": "..."}.
 * The last line of a build is {"summary": {...}}.
 *
 * Thread-safe.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum kiln_progress_mode {
	KILN_PROGRESS_AUTO,
	KILN_PROGRESS_PLAIN,
	KILN_PROGRESS_TTY,
	KILN_PROGRESS_JSON,
	KILN_PROGRESS_QUIET,
};

enum kiln_vertex_status {
	KILN_VERTEX_QUEUED,
	KILN_VERTEX_RUNNING,
	KILN_VERTEX_CACHED,
	KILN_VERTEX_DONE,
	KILN_VERTEX_ERROR,
};

struct kiln_vertex_event {
	const char *vertex; /* "sha256:..." */
	const char *name;
	enum kiln_vertex_status status;
	bool cached;
	const char *platform;
	const char *worker;
	bool emulated;
	uint64_t started;   /* unix ns, 0 = not started */
	uint64_t completed; /* unix ns, 0 = not completed */
	const char *error;
};

struct kiln_progress;

/* Parse "auto|plain|tty|json|quiet"; -EINVAL otherwise. */
int kiln_progress_mode_parse(const char *s, enum kiln_progress_mode *out);

struct kiln_progress *kiln_progress_new(enum kiln_progress_mode mode, FILE *out);
void kiln_progress_free(struct kiln_progress *p);

void kiln_progress_vertex(struct kiln_progress *p, const struct kiln_vertex_event *ev);

/*
 * The platforms of the steps that failed so far, sorted, as
 * "linux/amd64,linux/arm64" (kiln_platform_list_add); NULL when none (or p is NULL). Caller frees.
 */
char *kiln_progress_failed_platforms(struct kiln_progress *p);
void kiln_progress_log(struct kiln_progress *p, const char *vertex, int stream,
		       const char *data, size_t len);
/*
 * A warning about the build as a whole (e.g. a --build-arg no ARG
 * declares): "[Warning] msg" in plain and tty mode, {"warning": msg} in
 * JSON mode. It does not change the build's outcome.
 */
void kiln_progress_warning(struct kiln_progress *p, const char *msg);
/*
 * Render one JSON line as another process's progress wrote it (kilnd's,
 * for `kiln build --addr`): JSON mode passes it through, the others draw
 * it as if the event happened here. Lines that are not progress are
 * ignored.
 */
void kiln_progress_replay(struct kiln_progress *p, const char *line, size_t len);

/* Steps one worker ran or served from the cache in one build. */
struct kiln_progress_tally {
	const char *worker;
	unsigned run, cached;
};

/* Bytes a build moved, for its summary. */
struct kiln_progress_bytes {
	uint64_t moved;     /* workers pulled from each other */
	uint64_t cache_in;  /* copied from the remote cache */
	uint64_t cache_out; /* copied to the remote cache */
};

/*
 * Final line: steps run/cached per worker, the bytes moved, wall time.
 */
void kiln_progress_summary(struct kiln_progress *p,
			   const struct kiln_progress_tally *workers, size_t n,
			   const struct kiln_progress_bytes *bytes, uint64_t wall_ns,
			   bool ok);
