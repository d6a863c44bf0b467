/*
 * Internals shared by the worker's sources (not part of the contract in
 * worker.h / layers.h).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "cas/store.h"
#include "worker/layers.h"
#include "worker/worker.h"

#define KILN_TAIL_MAX 4096

struct kiln_worker {
	char *root;          /* canonical absolute path */
	int lockfd;          /* flock(ROOT/lock) held while open */
	struct kiln_store *store;
	struct kiln_layers *layers;
	char *runtime;       /* absolute path of the OCI runtime binary */
	char *runtime_name;  /* "runc 1.1.5" */
	char *state_root;    /* ROOT/runc */
	char *native;        /* "linux/amd64" */
};

/* ---- mount.c ---- */

/* Bind src at dst (recursively), read-only when ro. 0 or -errno. */
int kiln_mount_bind(const char *src, const char *dst, bool ro);

/*
 * Unmount everything mounted at or below prefix (from
 * /proc/self/mountinfo, deepest first, MNT_DETACH when busy). 0 or -errno
 * of the first failure.
 */
int kiln_umount_under(const char *prefix);

/* ---- runtime.c ---- */

/* Last KILN_TAIL_MAX bytes of a stream. */
struct kiln_tail {
	char buf[KILN_TAIL_MAX];
	size_t len;
};

void kiln_tail_add(struct kiln_tail *t, const char *data, size_t len);

typedef void (*kiln_proc_output_fn)(void *ud, int stream, const char *data,
				    size_t len);

/*
 * Asked twice a second while a process runs: while cancelled() is true,
 * stop() is called, every half second until it returns true (the first
 * call may come before there is anything to stop); the output is still
 * read to the end.
 */
struct kiln_proc_watch {
	bool (*cancelled)(void *ud);
	bool (*stop)(void *ud);
	void *ud;
};

/*
 * Run argv[0] (an absolute path) with stdin /dev/null and stdout/stderr
 * read through pipes into fn (may be NULL). The child gets
 * PR_SET_PDEATHSIG SIGKILL. *status is the exit code, 128+N for signal N.
 * watch may be NULL.
 */
int kiln_proc_run(const char *const *argv, kiln_proc_output_fn fn, void *ud,
		  const struct kiln_proc_watch *watch, int *status);

/*
 * Choose the OCI runtime: want ("runc", "crun", a path) or the first of
 * runc, crun whose start-up probe passes. Probe verdicts are cached in
 * root/runtime-probe.json keyed by path and mtime.
 */
int kiln_runtime_pick(const char *root, const char *want, char **path,
		      char **name, struct kiln_error **err);

/* `runtime --root state_root delete --force id`, output discarded. */
int kiln_runtime_delete(const char *runtime, const char *state_root,
			const char *id);
/*
 * `runtime --root state_root kill id KILL`, output discarded; -ESRCH when
 * it failed (no such container yet, or no more).
 */
int kiln_runtime_kill(const char *runtime, const char *state_root, const char *id);

/* ---- bundle.c ---- */

struct kiln_user {
	uint32_t uid, gid;
	uint32_t *groups; /* supplementary groups */
	size_t n_groups;
	char *home;
};

void kiln_user_release(struct kiln_user *u);

/*
 * Resolve "uid[:gid]" or "name[:group]" (NULL/"" = root) against the
 * rootfs's /etc/passwd and /etc/group, read beneath rootfd.
 */
int kiln_user_resolve(int rootfd, const char *user, struct kiln_user *out,
		      struct kiln_error **err);

struct kiln_bundle_mount {
	const char *dest;
	const char *type;
	const char *source;
	const char *options; /* comma-separated */
};

struct kiln_bundle {
	const char *rootfs;
	const char *const *argv;
	const char *const *env; /* may be NULL */
	const char *cwd;        /* NULL = "/" */
	const struct kiln_user *user;
	bool network_host;
	const struct kiln_bundle_mount *mounts; /* after the defaults */
	size_t n_mounts;
};

/* Write bundle_dir/config.json (OCI runtime spec 1.0.2). */
int kiln_bundle_write(const char *bundle_dir, const struct kiln_bundle *b,
		      struct kiln_error **err);
