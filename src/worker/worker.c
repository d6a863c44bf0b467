/* Opening a worker: lock, runtime choice, crash recovery, stores. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/platform.h"
#include "basic/strv.h"
#include "worker/worker-internal.h"

static const char *const subdirs[] = { "cas", "layers", "cachemounts", "run",
				       "runc" };

static int make_dirs(const char *root, struct kiln_error **err)
{
	size_t i;
	int r;

	r = kiln_mkdir_p(root, 0700);
	for (i = 0; r == 0 && i < ARRAY_SIZE(subdirs); i++) {
		_cleanup_free_ char *p = xasprintf("%s/%s", root, subdirs[i]);

		r = kiln_mkdir_p(p, 0700);
		if (r < 0)
			return kiln_error_seterrno(err, r, "creating %s", p);
	}
	if (r < 0)
		return kiln_error_seterrno(err, r, "creating %s", root);
	return 0;
}

static int take_lock(struct kiln_worker *w, struct kiln_error **err)
{
	_cleanup_free_ char *p = xasprintf("%s/lock", w->root);

	w->lockfd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (w->lockfd < 0)
		return kiln_error_seterrno(err, -errno, "opening %s", p);
	if (flock(w->lockfd, LOCK_EX | LOCK_NB) == 0)
		return 0;
	if (errno != EWOULDBLOCK)
		return kiln_error_seterrno(err, -errno, "locking %s", p);
	log_debug("worker %s is in use; waiting for its lock", w->root);
	while (flock(w->lockfd, LOCK_EX) < 0)
		if (errno != EINTR)
			return kiln_error_seterrno(err, -errno, "locking %s", p);
	return 0;
}

/* Names in ROOT/<sub> (containers in runc/, execs in run/). */
static char **list_dir(const char *root, const char *sub, size_t *n)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", root, sub);
	char **names = NULL;
	struct dirent *de;
	size_t alloc = 0;
	DIR *d = opendir(p);

	*n = 0;
	if (!d)
		return NULL;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		names = xgrow(names, &alloc, *n + 1, sizeof(*names));
		names[(*n)++] = xstrdup(de->d_name);
	}
	closedir(d);
	return names;
}

/* Undo what a killed process left: containers, mounts, run dirs. */
static int recover(struct kiln_worker *w, struct kiln_error **err)
{
	_cleanup_free_ char *run = xasprintf("%s/run", w->root);
	char **names;
	size_t n, i;
	int r;

	names = list_dir(w->root, "runc", &n);
	for (i = 0; i < n; i++) {
		log_debug("recovery: deleting container %s", names[i]);
		kiln_runtime_delete(w->runtime, w->state_root, names[i]);
	}
	kiln_strv_free(names, n);
	names = list_dir(w->root, "run", &n);
	for (i = 0; i < n; i++) {
		_cleanup_free_ char *dir = xasprintf("%s/%s", run, names[i]);

		log_debug("recovery: cleaning %s", dir);
		kiln_runtime_delete(w->runtime, w->state_root, names[i]);
		kiln_umount_under(dir);
		r = kiln_rm_rf(dir);
		if (r < 0) {
			kiln_strv_free(names, n);
			return kiln_error_seterrno(err, r,
						   "recovering: removing %s", dir);
		}
	}
	kiln_strv_free(names, n);
	return 0;
}

static int open_stores(struct kiln_worker *w, bool durable,
		       struct kiln_error **err)
{
	_cleanup_free_ char *cas = xasprintf("%s/cas", w->root);
	_cleanup_free_ char *layers = xasprintf("%s/layers", w->root);
	struct kiln_store_options so = { .durable = durable };
	int r;

	r = kiln_store_open(cas, &so, &w->store, err);
	if (r == 0)
		r = kiln_layers_open(layers, w->store, &w->layers, err);
	return r;
}

int kiln_worker_open(const struct kiln_worker_options *opts,
		     struct kiln_worker **out, struct kiln_error **err)
{
	struct kiln_worker *w;
	int r;

	if (!opts || !opts->root || !*opts->root)
		return kiln_error_set(err, -EINVAL, "worker root not set");
	r = make_dirs(opts->root, err);
	if (r < 0)
		return r;
	w = xcalloc(1, sizeof(*w));
	w->lockfd = -1;
	w->root = realpath(opts->root, NULL);
	if (!w->root) {
		r = kiln_error_seterrno(err, -errno, "resolving %s", opts->root);
		goto fail;
	}
	w->state_root = xasprintf("%s/runc", w->root);
	w->native = kiln_platform_native();
	r = take_lock(w, err);
	if (r == 0)
		r = kiln_runtime_pick(w->root, opts->runtime, &w->runtime,
				      &w->runtime_name, err);
	if (r == 0)
		r = recover(w, err);
	if (r == 0)
		r = open_stores(w, opts->durable, err);
	if (r < 0)
		goto fail;
	*out = w;
	return 0;
fail:
	kiln_error_prefix(err, "opening worker %s", opts->root);
	kiln_worker_free(w);
	return r;
}

void kiln_worker_free(struct kiln_worker *w)
{
	if (!w)
		return;
	kiln_layers_free(w->layers);
	kiln_store_free(w->store);
	if (w->lockfd >= 0)
		close(w->lockfd);
	free(w->root);
	free(w->runtime);
	free(w->runtime_name);
	free(w->state_root);
	free(w->native);
	free(w);
}

struct kiln_store *kiln_worker_store(struct kiln_worker *w)
{
	return w->store;
}

struct kiln_layers *kiln_worker_layers(struct kiln_worker *w)
{
	return w->layers;
}

const char *kiln_worker_root(struct kiln_worker *w)
{
	return w->root;
}

const char *kiln_worker_runtime(struct kiln_worker *w)
{
	return w->runtime_name;
}

const char *kiln_worker_native_platform(struct kiln_worker *w)
{
	return w->native;
}
