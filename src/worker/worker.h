/*
 * A worker: runs ops on this machine. It owns the machine's CAS, the layer
 * store, the per-worker cache mounts and the OCI runtime.
 *
 * State under its root directory:
 *   cas/          blob store (cas/store.h)
 *   layers/       materialized trees (worker/layers.h)
 *   cachemounts/  RUN --mount=type=cache directories, persisted per worker
 *   run/<id>/     one exec in progress: bundle, rootfs mount, upper
 *   runc/         the runtime's state root
 *   lock          flock held while the worker is open
 *
 * Opening a worker takes the lock (waiting while another process holds it)
 * and cleans what a killed process left behind: containers are deleted,
 * mounts under run/ unmounted, scratch dirs removed.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "basic/error.h"
#include "cas/digest.h"
#include "cas/store.h"
#include "worker/layers.h"

struct kiln_worker;

struct kiln_worker_options {
	const char *root;
	/* "runc", "crun", a path, or NULL: the first that passes a probe. */
	const char *runtime;
	bool durable; /* fsync blobs; kiln sets it (crash safety), tests may not */
};

int kiln_worker_open(const struct kiln_worker_options *opts,
		     struct kiln_worker **out, struct kiln_error **err);
void kiln_worker_free(struct kiln_worker *w);

struct kiln_store *kiln_worker_store(struct kiln_worker *w);
struct kiln_layers *kiln_worker_layers(struct kiln_worker *w);
const char *kiln_worker_root(struct kiln_worker *w);
/* e.g. "runc 1.1.5" */
const char *kiln_worker_runtime(struct kiln_worker *w);
/* Normalized native platform of this machine, e.g. "linux/amd64". */
const char *kiln_worker_native_platform(struct kiln_worker *w);

/*
 * Can this worker run platform (normalized "os/arch[/variant]")? Native
 * platforms run directly; others through binfmt_misc + qemu-user when a
 * handler is registered and enabled (*emulated set true). -ENOTSUP with an
 * error naming the platform and how to enable emulation otherwise.
 */
int kiln_worker_check_platform(struct kiln_worker *w, const char *platform,
			       bool *emulated, struct kiln_error **err);

enum kiln_mount_type {
	KILN_MOUNT_TREE,  /* a result tree, read-only or writable-discarded */
	KILN_MOUNT_CACHE, /* persistent per-worker directory keyed by id */
	KILN_MOUNT_TMPFS,
	KILN_MOUNT_SECRET, /* a read-only file with client-supplied content */
	KILN_MOUNT_SSH,    /* a unix socket of this host (an ssh agent forwarder) */
};

enum kiln_mount_sharing {
	KILN_MOUNT_SHARED,  /* concurrent execs use the cache dir together */
	KILN_MOUNT_PRIVATE, /* a busy cache dir gives way to a fresh one */
	KILN_MOUNT_LOCKED,  /* concurrent execs wait for the cache dir */
};

struct kiln_exec_mount {
	enum kiln_mount_type type;
	const char *target;      /* absolute path in the container */
	struct kiln_digest tree; /* TREE; CACHE with seeded: its first content */
	bool readonly;           /* TREE: else writes go to a discarded upper */
	bool seeded;             /* CACHE: a new cache dir starts as a copy of tree */
	const char *cache_id;    /* CACHE */
	enum kiln_mount_sharing sharing; /* CACHE */
	uint32_t mode, uid, gid; /* CACHE (on creation; mode 0 = 0755), SECRET */
	uint64_t tmpfs_size;     /* TMPFS: bytes, 0 = default */
	const void *secret;      /* SECRET: content (kept in a tmpfs only) */
	size_t secret_len;
	const char *socket;      /* SSH: the socket's path on this host */
};

/* Called from the exec thread with output as it arrives (stream 1 or 2). */
typedef void (*kiln_exec_output_fn)(void *ud, int stream, const char *data,
				    size_t len);

struct kiln_exec_request {
	const char *id; /* unique among concurrent execs, [a-z0-9-] */
	struct kiln_digest rootfs; /* input tree */
	const char *const *argv;   /* NULL-terminated, argv[0] non-NULL */
	const char *const *env;    /* NULL-terminated "K=V" */
	/*
	 * env holds a secret: the bundle's config.json is written to a
	 * private tmpfs, never to disk.
	 */
	bool env_secret;
	const char *cwd;           /* absolute; created if missing */
	const char *user;          /* "uid[:gid]" or names from /etc/passwd */
	bool network_host;         /* else a private network namespace */
	const struct kiln_exec_mount *mounts;
	size_t n_mounts;
	const char *platform; /* for the error when it cannot run */
	kiln_exec_output_fn output;
	void *output_ud;
	/*
	 * May be NULL. Asked twice a second while the process runs: true
	 * kills the container, and the exec fails with -ECANCELED.
	 */
	bool (*cancelled)(void *ud);
	void *cancelled_ud;
};

struct kiln_exec_result {
	int exit_code;            /* 128+N when killed by signal N */
	struct kiln_digest rootfs; /* output tree, set when exit_code == 0 */
	char *tail;               /* last 4 KiB of combined output */
	uint64_t snapshot_ns;     /* time spent snapshotting the upper dir */
};

void kiln_exec_result_release(struct kiln_exec_result *r);

/*
 * Run one exec: materialize rootfs and mounts, overlay a fresh upper, run
 * the container through the OCI runtime, then snapshot only the upper dir
 * into a new tree (kiln_tree_apply_layer) and keep the upper as that tree's
 * layer. Mount points that the runtime had to create are removed from the
 * result. Returns 0 when the container ran (whatever its exit code) and a
 * negative code when it could not be run.
 */
int kiln_worker_exec(struct kiln_worker *w, const struct kiln_exec_request *req,
		     struct kiln_exec_result *res, struct kiln_error **err);
