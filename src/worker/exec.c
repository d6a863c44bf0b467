/*
 * One exec: materialize, mount, run the OCI runtime, snapshot the upper.
 * The lifecycle is described in docs/internals/worker.md.
 */
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/strv.h"
#include "cas/tree.h"
#include "worker/worker-internal.h"

#define ID_MAX 64
#define RUNC_LOG_MAX (1u << 20)

/* A mount point this exec created in the rootfs (it was not in the input). */
struct created {
	char *rel; /* resolved path relative to the rootfs */
	bool keep; /* the cwd: Docker keeps a created WORKDIR */
};

/* A directory of the input whose mtime creating a mount point changed. */
struct ptime {
	char *rel;
	struct timespec before[2];
	struct timespec after;
};

struct exec_ctx {
	struct kiln_worker *w;
	const struct kiln_exec_request *req;
	bool killed; /* cancelled: the container was killed */
	char *run, *rootfs, *bundle;
	char *upper, *work;
	int rootfd;
	char **owned; /* strings and scratch dirs to free */
	size_t n_owned, alloc_owned;
	char **scratch; /* scratch dirs to remove */
	size_t n_scratch, alloc_scratch;
	struct created *created;
	size_t n_created, alloc_created;
	struct ptime *ptimes;
	size_t n_ptimes, alloc_ptimes;
	struct kiln_bundle_mount *mounts;
	size_t n_mounts;
	struct kiln_user user;
	struct kiln_tail tail;
	struct kiln_digest input; /* req->rootfs, or the empty tree */
	int *locks; /* flock()ed cache mount dirs, closed at the end */
	size_t n_locks;
	char *secrets; /* tmpfs holding secret files, or NULL */
};

void kiln_exec_result_release(struct kiln_exec_result *r)
{
	if (!r)
		return;
	free(r->tail);
	r->tail = NULL;
}

static const char *own(struct exec_ctx *c, char *s)
{
	c->owned = xgrow(c->owned, &c->alloc_owned, c->n_owned + 1,
			 sizeof(*c->owned));
	c->owned[c->n_owned++] = s;
	return s;
}

static void add_scratch(struct exec_ctx *c, const char *dir)
{
	c->scratch = xgrow(c->scratch, &c->alloc_scratch, c->n_scratch + 1,
			   sizeof(*c->scratch));
	c->scratch[c->n_scratch++] = xstrdup(dir);
}

static int validate(const struct kiln_exec_request *req,
		    struct kiln_error **err)
{
	size_t i, n = req->id ? strlen(req->id) : 0;

	if (n == 0 || n > ID_MAX || req->id[0] == '-')
		return kiln_error_set(err, -EINVAL, "bad exec id \"%s\"",
				      req->id ? req->id : "");
	for (i = 0; i < n; i++)
		if (!strchr("abcdefghijklmnopqrstuvwxyz0123456789-", req->id[i]))
			return kiln_error_set(err, -EINVAL, "bad exec id \"%s\"",
					      req->id);
	if (!req->argv || !req->argv[0])
		return kiln_error_set(err, -EINVAL, "exec %s: empty argv",
				      req->id);
	for (i = 0; i < req->n_mounts; i++) {
		const char *t = req->mounts[i].target;

		if (!t || t[0] != '/' || kiln_path_has_dotdot(t) || !t[1])
			return kiln_error_set(err, -EINVAL,
					      "exec %s: bad mount target \"%s\"",
					      req->id, t ? t : "");
	}
	if (req->cwd && req->cwd[0] != '/')
		return kiln_error_set(err, -EINVAL,
				      "exec %s: cwd \"%s\" is not absolute",
				      req->id, req->cwd);
	return 0;
}

/* ---- mount points ---- */

/* Path of fd relative to the rootfs mount ("" for the root). */
static char *rel_of_fd(struct exec_ctx *c, int fd)
{
	char proc[64], buf[4096];
	size_t n = strlen(c->rootfs);
	ssize_t k;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	k = readlink(proc, buf, sizeof(buf) - 1);
	if (k < 0)
		return NULL;
	buf[k] = '\0';
	if (strncmp(buf, c->rootfs, n) || (buf[n] && buf[n] != '/'))
		return NULL;
	return xstrdup(buf[n] ? buf + n + 1 : "");
}

static void note_parent(struct exec_ctx *c, const char *rel, int pfd)
{
	struct stat st;
	size_t i;

	if (!*rel)
		return; /* the root's metadata is fixed by the tree format */
	for (i = 0; i < c->n_ptimes; i++)
		if (!strcmp(c->ptimes[i].rel, rel))
			return;
	if (fstat(pfd, &st) < 0)
		return;
	c->ptimes = xgrow(c->ptimes, &c->alloc_ptimes, c->n_ptimes + 1,
			  sizeof(*c->ptimes));
	c->ptimes[c->n_ptimes++] = (struct ptime){
		.rel = xstrdup(rel), .before = { st.st_atim, st.st_mtim },
	};
}

static void note_created(struct exec_ctx *c, const char *prel,
			 const char *name, bool keep)
{
	c->created = xgrow(c->created, &c->alloc_created, c->n_created + 1,
			   sizeof(*c->created));
	c->created[c->n_created++] = (struct created){
		.rel = *prel ? xasprintf("%s/%s", prel, name) : xstrdup(name),
		.keep = keep,
	};
}

/* Create one missing component under pfd and remember it. */
static int create_component(struct exec_ctx *c, int pfd, const char *name,
			    bool file, bool keep)
{
	_cleanup_free_ char *prel = rel_of_fd(c, pfd);
	int fd;

	if (!prel)
		return -EXDEV;
	note_parent(c, prel, pfd);
	if (file) {
		fd = openat(pfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
			    0644);
		if (fd < 0)
			return -errno;
		close(fd);
	} else if (mkdirat(pfd, name, 0755) < 0) {
		return -errno;
	}
	note_created(c, prel, name, keep);
	return 0;
}

/*
 * Make target exist in the rootfs (symlinks resolved inside it, as the
 * runtime will), recording what had to be created.
 */
static int make_point(struct exec_ctx *c, const char *target, bool file,
		      bool keep)
{
	_cleanup_free_ char *clean = kiln_path_clean(target);
	size_t pos = 0, len = strlen(clean);

	while (pos < len) {
		size_t end = pos + strcspn(clean + pos, "/");
		_cleanup_free_ char *parent = xstrndup(clean, pos ? pos - 1 : 0);
		_cleanup_free_ char *name = xstrndup(clean + pos, end - pos);
		_cleanup_close_ int pfd = -1;
		struct stat st;
		int r;

		pfd = kiln_openat2(c->rootfd, parent, O_PATH | O_DIRECTORY, 0,
				   KILN_RESOLVE_IN_ROOT |
					   KILN_RESOLVE_NO_MAGICLINKS);
		if (pfd < 0)
			return pfd;
		if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno != ENOENT)
				return -errno;
			r = create_component(c, pfd, name, file && end == len,
					     keep);
			if (r < 0)
				return r;
		}
		pos = end + 1;
	}
	return 0;
}

/* Record the input directories' mtimes after all creations. */
static void note_after(struct exec_ctx *c)
{
	size_t i;

	for (i = 0; i < c->n_ptimes; i++) {
		struct stat st;

		if (fstatat(c->rootfd, c->ptimes[i].rel, &st,
			    AT_SYMLINK_NOFOLLOW) == 0)
			c->ptimes[i].after = st.st_mtim;
	}
}

static int make_points(struct exec_ctx *c, struct kiln_error **err)
{
	static const char *const dirs[] = { "/proc", "/dev", "/sys" };
	static const char *const files[] = { "/etc/resolv.conf", "/etc/hosts" };
	const struct kiln_exec_request *req = c->req;
	const char *what = NULL;
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < ARRAY_SIZE(dirs); i++)
		r = make_point(c, what = dirs[i], false, false);
	for (i = 0; r == 0 && i < ARRAY_SIZE(files); i++)
		r = make_point(c, what = files[i], true, false);
	for (i = 0; r == 0 && i < req->n_mounts; i++)
		r = make_point(c, what = req->mounts[i].target,
			       req->mounts[i].type == KILN_MOUNT_SECRET ||
				       req->mounts[i].type == KILN_MOUNT_SSH,
			       false);
	if (r == 0)
		r = make_point(c, what = req->cwd ? req->cwd : "/", false, true);
	if (r < 0)
		return kiln_error_seterrno(err, r,
					   "exec %s: creating %s in the rootfs",
					   req->id, what);
	note_after(c);
	return 0;
}

/* ---- request mounts ---- */

static int tree_mount(struct exec_ctx *c, size_t i,
		      const struct kiln_exec_mount *m, struct kiln_error **err)
{
	const char *dir = own(c, xasprintf("%s/m%zu", c->run, i));
	struct kiln_chain chain = { 0 };
	char *up = NULL, *wk = NULL;
	int r;

	if (mkdir(dir, 0755) < 0)
		return kiln_error_seterrno(err, -errno, "creating %s", dir);
	r = kiln_layers_materialize(c->w->layers, &m->tree, NULL, &chain, err);
	if (r == 0 && !m->readonly) {
		r = kiln_layers_mkscratch(c->w->layers, &up, err);
		if (r == 0)
			add_scratch(c, own(c, up));
		if (r == 0)
			r = kiln_layers_mkscratch(c->w->layers, &wk, err);
		if (r == 0)
			add_scratch(c, own(c, wk));
	}
	if (r == 0)
		r = kiln_layers_mount(&chain, dir, up, wk, err);
	kiln_chain_release(&chain);
	if (r < 0)
		return r;
	c->mounts[c->n_mounts++] = (struct kiln_bundle_mount){
		m->target, "bind", dir, m->readonly ? "rbind,ro" : "rbind"
	};
	return 0;
}

/*
 * A mount's mode as given to a file kiln makes on the host (a cache dir,
 * a secret file): the permission bits only, never setuid, setgid or
 * sticky (issue 14).
 */
static mode_t host_mode(uint32_t mode, mode_t dflt)
{
	return (mode_t)(mode ? mode : dflt) & 0777;
}

/*
 * A seeded cache dir is filled beside it and renamed into place, so a
 * concurrent exec never sees half of it; the first rename wins.
 */
static int cache_dir_seed(struct exec_ctx *c, const char *dir,
			  const struct kiln_exec_mount *m, struct kiln_error **err)
{
	_cleanup_free_ char *rnd = kiln_random_hex(8);
	_cleanup_free_ char *tmp = xasprintf("%s.seed-%s", dir, rnd);
	_cleanup_close_ int fd = -1;
	int r;

	if (mkdir(tmp, 0700) < 0)
		return kiln_error_seterrno(err, -errno, "creating %s", tmp);
	fd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		r = kiln_error_seterrno(err, -errno, "opening %s", tmp);
	else
		r = kiln_layers_checkout(c->w->layers, &m->tree, fd, err);
	if (r == 0 && (fchown(fd, m->uid, m->gid) < 0 ||
		       fchmod(fd, host_mode(m->mode, 0755)) < 0))
		r = kiln_error_seterrno(err, -errno, "chown %s", tmp);
	if (r == 0 && rename(tmp, dir) < 0 && errno != EEXIST && errno != ENOTEMPTY)
		r = kiln_error_seterrno(err, -errno, "renaming %s", tmp);
	kiln_rm_rf(tmp); /* left only when the rename failed */
	return r;
}

/*
 * Create a cache dir with the mount's mode and owner (and seed); existing
 * ones stay as they are.
 */
static int cache_dir_create(struct exec_ctx *c, const char *dir,
			    const struct kiln_exec_mount *m, struct kiln_error **err)
{
	struct stat st;

	if (m->seeded) {
		if (lstat(dir, &st) == 0)
			return 0;
		if (errno != ENOENT)
			return kiln_error_seterrno(err, -errno, "cache mount %s", dir);
		return cache_dir_seed(c, dir, m, err);
	}
	if (mkdir(dir, 0700) < 0)
		return errno == EEXIST ? 0 : kiln_error_seterrno(err, -errno, "cache mount %s", dir);
	if (chown(dir, m->uid, m->gid) < 0 || chmod(dir, host_mode(m->mode, 0755)) < 0)
		return kiln_error_seterrno(err, -errno, "cache mount %s", dir);
	return 0;
}

/*
 * Lock the cache dir per its sharing mode: locked waits for other execs,
 * private moves on to the next instance (id-1, id-2, ...) while busy.
 * Returns the directory to mount (owned by c).
 */
static int cache_claim(struct exec_ctx *c, const struct kiln_exec_mount *m,
		       const char *base, const char **dir, struct kiln_error **err)
{
	unsigned n;
	int fd, r;

	*dir = base;
	if (m->sharing == KILN_MOUNT_SHARED)
		return cache_dir_create(c, base, m, err);
	for (n = 0;; n++) {
		const char *d = n ? own(c, xasprintf("%s-%u", base, n)) : base;

		r = cache_dir_create(c, d, m, err);
		if (r < 0)
			return r;
		fd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			return kiln_error_seterrno(err, -errno, "cache mount %s", d);
		if (flock(fd, LOCK_EX | (m->sharing == KILN_MOUNT_PRIVATE ? LOCK_NB : 0)) == 0) {
			c->locks = xrealloc(c->locks, (c->n_locks + 1) * sizeof(int));
			c->locks[c->n_locks++] = fd;
			*dir = d;
			return 0;
		}
		r = -errno;
		close(fd);
		if (r != -EWOULDBLOCK || n >= 64)
			return kiln_error_seterrno(err, r, "locking cache mount %s", d);
	}
}

static int cache_mount(struct exec_ctx *c, const struct kiln_exec_mount *m,
		       struct kiln_error **err)
{
	char hex[KILN_DIGEST_HEXLEN];
	struct kiln_digest d;
	const char *id = m->cache_id ? m->cache_id : m->target;
	const char *base, *dir;
	int r;

	/*
	 * A seeded cache is keyed by its id and its seed, as BuildKit's
	 * mounts/mount.go keys it (id + ":" + the seed ref's id): another
	 * seed gets another cache, never the old contents.
	 */
	if (m->seeded) {
		_cleanup_free_ char *key = xasprintf("%s:%s", id, KILN_DIGEST_STR(&m->tree));

		kiln_digest_buf(key, strlen(key), &d);
	} else {
		kiln_digest_buf(id, strlen(id), &d);
	}
	kiln_digest_hex(&d, hex);
	base = own(c, xasprintf("%s/cachemounts/%.32s", c->w->root, hex));
	r = cache_claim(c, m, base, &dir, err);
	if (r < 0) {
		kiln_error_prefix(err, "cache id %s", id);
		return r;
	}
	c->mounts[c->n_mounts++] = (struct kiln_bundle_mount){
		m->target, "bind", dir, "rbind"
	};
	return 0;
}

/*
 * Secrets live in a private tmpfs under the run dir, never on disk, and
 * are bind-mounted read-only; the mount point is removed from the result.
 */
static int secret_mount(struct exec_ctx *c, size_t i, const struct kiln_exec_mount *m,
			struct kiln_error **err)
{
	_cleanup_close_ int fd = -1;
	const char *file;
	int r;

	if (!c->secrets) {
		c->secrets = xasprintf("%s/secrets", c->run);
		if (mkdir(c->secrets, 0700) < 0 ||
		    mount("tmpfs", c->secrets, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
			  "mode=0700,size=16m") < 0)
			return kiln_error_seterrno(err, -errno, "secrets tmpfs %s", c->secrets);
	}
	file = own(c, xasprintf("%s/s%zu", c->secrets, i));
	fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "secret file %s", file);
	r = kiln_write_full(fd, m->secret, m->secret_len);
	if (r == 0 && (fchown(fd, m->uid, m->gid) < 0 ||
		       fchmod(fd, host_mode(m->mode, 0400)) < 0))
		r = -errno;
	if (r < 0)
		return kiln_error_seterrno(err, r, "writing secret file %s", file);
	c->mounts[c->n_mounts++] = (struct kiln_bundle_mount){
		m->target, "bind", file, "rbind,ro"
	};
	return 0;
}

static void tmpfs_mount(struct exec_ctx *c, const struct kiln_exec_mount *m)
{
	const char *opts = "nosuid,nodev,mode=1777";

	if (m->tmpfs_size)
		opts = own(c, xasprintf("nosuid,nodev,mode=1777,size=%llu",
					(unsigned long long)m->tmpfs_size));
	c->mounts[c->n_mounts++] = (struct kiln_bundle_mount){
		m->target, "tmpfs", "tmpfs", opts
	};
}

static int request_mounts(struct exec_ctx *c, struct kiln_error **err)
{
	size_t i;
	int r = 0;

	c->mounts = xcalloc(c->req->n_mounts + 1, sizeof(*c->mounts));
	for (i = 0; r == 0 && i < c->req->n_mounts; i++) {
		const struct kiln_exec_mount *m = &c->req->mounts[i];

		switch (m->type) {
		case KILN_MOUNT_TREE:
			r = tree_mount(c, i, m, err);
			break;
		case KILN_MOUNT_CACHE:
			r = cache_mount(c, m, err);
			break;
		case KILN_MOUNT_TMPFS:
			tmpfs_mount(c, m);
			break;
		case KILN_MOUNT_SECRET:
			r = secret_mount(c, i, m, err);
			break;
		case KILN_MOUNT_SSH: /* the forwarder's socket; its point is removed after */
			c->mounts[c->n_mounts++] = (struct kiln_bundle_mount){
				m->target, "bind", m->socket, "rbind"
			};
			break;
		default:
			r = kiln_error_set(err, -EINVAL,
					   "exec %s: unknown mount type %d",
					   c->req->id, (int)m->type);
		}
	}
	if (r < 0)
		kiln_error_prefix(err, "exec %s: mount %s", c->req->id,
				  c->req->mounts[i - 1].target);
	return r;
}

/* ---- preparing and running ---- */

static int mount_rootfs(struct exec_ctx *c, struct kiln_error **err)
{
	struct kiln_chain chain = { 0 };
	int r;

	r = kiln_layers_materialize(c->w->layers, &c->input, NULL,
				    &chain, err);
	if (r == 0)
		r = kiln_layers_mkscratch(c->w->layers, &c->upper, err);
	if (r == 0)
		r = kiln_layers_mkscratch(c->w->layers, &c->work, err);
	if (r == 0)
		r = kiln_layers_mount(&chain, c->rootfs, c->upper, c->work, err);
	kiln_chain_release(&chain);
	if (r < 0)
		return r;
	c->rootfd = open(c->rootfs, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (c->rootfd < 0)
		return kiln_error_seterrno(err, -errno, "opening %s", c->rootfs);
	return 0;
}

static int prepare(struct exec_ctx *c, struct kiln_error **err)
{
	struct kiln_bundle b = { 0 };
	int r;

	if (mkdir(c->run, 0700) < 0)
		return kiln_error_seterrno(err, -errno,
					   errno == EEXIST
						   ? "exec id %s is already in use"
						   : "creating run dir for %s",
					   c->req->id);
	if (mkdir(c->rootfs, 0755) < 0 || mkdir(c->bundle, 0700) < 0)
		return kiln_error_seterrno(err, -errno, "creating %s", c->run);
	r = mount_rootfs(c, err);
	if (r == 0)
		r = make_points(c, err);
	if (r == 0 && (r = kiln_user_resolve(c->rootfd, c->req->user,
					     &c->user, err)) < 0)
		kiln_error_prefix(err, "exec %s", c->req->id);
	if (r == 0)
		r = request_mounts(c, err);
	if (r < 0)
		return r;
	/* An open fd would keep the rootfs mount busy at unmount. */
	close(TAKE_FD(c->rootfd));
	/* A secret in the environment stays off disk like a secret file. */
	if (c->req->env_secret &&
	    mount("tmpfs", c->bundle, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
		  "mode=0700,size=1m") < 0)
		return kiln_error_seterrno(err, -errno, "bundle tmpfs %s", c->bundle);
	b = (struct kiln_bundle){
		.rootfs = c->rootfs, .argv = c->req->argv, .env = c->req->env,
		.cwd = c->req->cwd, .user = &c->user,
		.network_host = c->req->network_host, .mounts = c->mounts,
		.n_mounts = c->n_mounts,
	};
	return kiln_bundle_write(c->bundle, &b, err);
}

static void output_cb(void *ud, int stream, const char *data, size_t len)
{
	struct exec_ctx *c = ud;

	kiln_tail_add(&c->tail, data, len);
	if (c->req->output)
		c->req->output(c->req->output_ud, stream, data, len);
}

/* The runtime's own failure (not the process's exit code), from its log. */
static char *runtime_error(struct exec_ctx *c)
{
	_cleanup_free_ char *path = xasprintf("%s/runc.log", c->run);
	_cleanup_free_ char *data = NULL;
	char *line, *next, *msg = NULL;
	size_t len;

	if (kiln_read_file_at(AT_FDCWD, path, RUNC_LOG_MAX, &data, &len) < 0)
		return NULL;
	for (line = data; line && *line; line = next) {
		json_t *j;

		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		j = json_loads(line, 0, NULL);
		if (json_is_string(json_object_get(j, "level")) &&
		    !strcmp(json_string_value(json_object_get(j, "level")),
			    "error") &&
		    json_string_value(json_object_get(j, "msg"))) {
			free(msg);
			msg = xstrdup(json_string_value(json_object_get(j, "msg")));
		}
		json_decref(j);
	}
	return msg;
}

static bool exec_cancelled(void *ud)
{
	struct exec_ctx *c = ud;

	return c->req->cancelled(c->req->cancelled_ud);
}

/* The exec was cancelled: kill the container (the runtime then returns). */
static bool exec_stop(void *ud)
{
	struct exec_ctx *c = ud;

	if (!c->killed)
		log_info("exec %s: cancelled, killing it", c->req->id);
	c->killed = true;
	/* Fails until the container exists: then asked again. */
	return kiln_runtime_kill(c->w->runtime, c->w->state_root, c->req->id) == 0;
}

static int run(struct exec_ctx *c, int *status, struct kiln_error **err)
{
	_cleanup_free_ char *log = xasprintf("%s/runc.log", c->run);
	_cleanup_free_ char *msg = NULL;
	const char *argv[] = { c->w->runtime, "--root", c->w->state_root,
			       "--log", log, "--log-format", "json", "run",
			       "--bundle", c->bundle, c->req->id, NULL };
	const struct kiln_proc_watch watch = { .cancelled = exec_cancelled,
					       .stop = exec_stop, .ud = c };
	int r;

	r = kiln_proc_run(argv, output_cb, c, c->req->cancelled ? &watch : NULL, status);
	if (r < 0)
		return kiln_error_seterrno(err, r, "exec %s: spawning %s",
					   c->req->id, c->w->runtime);
	if (c->killed) {
		kiln_runtime_delete(c->w->runtime, c->w->state_root, c->req->id);
		return kiln_error_set(err, -ECANCELED, "exec %s: cancelled", c->req->id);
	}
	if (*status == 0 || !(msg = runtime_error(c)))
		return 0;
	kiln_runtime_delete(c->w->runtime, c->w->state_root, c->req->id);
	return kiln_error_set(err, -EIO, "exec %s: %s: %s", c->req->id,
			      c->w->runtime_name, msg);
}

/* ---- after the run ---- */

static int open_parent_beneath(int fd, const char *rel, const char **name)
{
	const char *slash = strrchr(rel, '/');
	_cleanup_free_ char *parent =
		slash ? xstrndup(rel, (size_t)(slash - rel)) : xstrdup("");

	*name = slash ? slash + 1 : rel;
	return kiln_openat2(fd, parent, O_PATH | O_DIRECTORY, 0,
			    KILN_RESOLVE_BENEATH | KILN_RESOLVE_NO_SYMLINKS |
				    KILN_RESOLVE_NO_XDEV);
}

/* Drop an empty mount point from the upper; the process may have used it. */
static void remove_point(int upperfd, const char *rel)
{
	_cleanup_close_ int pfd = -1;
	const char *name;
	struct stat st;

	pfd = open_parent_beneath(upperfd, rel, &name);
	if (pfd < 0 || fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return;
	if (S_ISDIR(st.st_mode))
		unlinkat(pfd, name, AT_REMOVEDIR); /* ENOTEMPTY: keep */
	else if (S_ISREG(st.st_mode) && st.st_size == 0)
		unlinkat(pfd, name, 0);
}

static void restore_time(int upperfd, const struct ptime *p)
{
	_cleanup_close_ int fd = -1;
	struct stat st;

	fd = kiln_openat2(upperfd, p->rel, O_RDONLY | O_DIRECTORY, 0,
			  KILN_RESOLVE_BENEATH | KILN_RESOLVE_NO_SYMLINKS |
				  KILN_RESOLVE_NO_XDEV);
	if (fd < 0 || fstat(fd, &st) < 0)
		return;
	/* Only when nothing but our mount points touched the directory. */
	if (st.st_mtim.tv_sec == p->after.tv_sec &&
	    st.st_mtim.tv_nsec == p->after.tv_nsec)
		futimens(fd, p->before);
}

static void clean_upper(struct exec_ctx *c, int upperfd)
{
	size_t i = c->n_created;

	while (i-- > 0)
		if (!c->created[i].keep)
			remove_point(upperfd, c->created[i].rel);
	for (i = 0; i < c->n_ptimes; i++)
		restore_time(upperfd, &c->ptimes[i]);
}

static int snapshot(struct exec_ctx *c, struct kiln_exec_result *res,
		    struct kiln_error **err)
{
	struct kiln_tree_build_opts opts = { .adopt = true };
	_cleanup_close_ int upperfd = -1;
	uint64_t t0 = kiln_now_mono_ns();
	int r;

	upperfd = open(c->upper, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (upperfd < 0)
		return kiln_error_seterrno(err, -errno, "opening %s", c->upper);
	clean_upper(c, upperfd);
	r = kiln_tree_apply_layer(c->w->store, &c->input, upperfd, &opts,
				  &res->rootfs, err);
	res->snapshot_ns = kiln_now_mono_ns() - t0;
	if (r < 0 || kiln_digest_eq(&res->rootfs, &c->input))
		return r;
	r = kiln_layers_adopt(c->w->layers, &res->rootfs, &c->input,
			      c->upper, err);
	if (r == 0)
		free(TAKE_PTR(c->upper)); /* now a layer */
	return r;
}

static void ctx_release(struct exec_ctx *c)
{
	size_t i;

	kiln_umount_under(c->run);
	if (c->rootfd >= 0)
		close(c->rootfd);
	for (i = 0; i < c->n_locks; i++)
		close(c->locks[i]);
	free(c->locks);
	free(c->secrets);
	for (i = 0; i < c->n_scratch; i++)
		kiln_rm_rf(c->scratch[i]);
	kiln_strv_free(c->scratch, c->n_scratch);
	if (c->upper)
		kiln_rm_rf(c->upper);
	if (c->work)
		kiln_rm_rf(c->work);
	kiln_rm_rf(c->run);
	kiln_strv_free(c->owned, c->n_owned);
	for (i = 0; i < c->n_created; i++)
		free(c->created[i].rel);
	for (i = 0; i < c->n_ptimes; i++)
		free(c->ptimes[i].rel);
	free(c->created);
	free(c->ptimes);
	free(c->mounts);
	free(c->upper);
	free(c->work);
	free(c->run);
	free(c->rootfs);
	free(c->bundle);
	kiln_user_release(&c->user);
}

int kiln_worker_exec(struct kiln_worker *w, const struct kiln_exec_request *req,
		     struct kiln_exec_result *res, struct kiln_error **err)
{
	struct exec_ctx c = { .w = w, .req = req, .rootfd = -1 };
	int status = -1, r;
	bool emulated;

	memset(res, 0, sizeof(*res));
	r = validate(req, err);
	if (r == 0 && req->platform)
		r = kiln_worker_check_platform(w, req->platform, &emulated, err);
	if (r < 0)
		return r;
	c.input = req->rootfs;
	if (!kiln_digest_is_set(&c.input))
		kiln_tree_empty_digest(&c.input);
	c.run = xasprintf("%s/run/%s", w->root, req->id);
	c.rootfs = xasprintf("%s/rootfs", c.run);
	c.bundle = xasprintf("%s/bundle", c.run);
	r = prepare(&c, err);
	if (r == 0)
		r = run(&c, &status, err);
	/* Unmount before reading the upper: it must be quiescent. */
	if (kiln_umount_under(c.run) < 0 && r == 0)
		r = kiln_error_set(err, -EBUSY, "exec %s: cannot unmount %s",
				   req->id, c.run);
	if (r == 0) {
		res->exit_code = status;
		res->tail = xstrndup(c.tail.buf, c.tail.len);
		if (status == 0)
			r = snapshot(&c, res, err);
	}
	ctx_release(&c);
	if (r < 0)
		kiln_exec_result_release(res);
	return r;
}
