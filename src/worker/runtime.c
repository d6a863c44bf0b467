/*
 * The OCI runtime: spawning it, choosing it (with a cached start-up probe)
 * and deleting leftover containers.
 */
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/proc.h"
#include "worker/worker-internal.h"

#define PROBE_FILE "runtime-probe.json"
#define PROBE_FILE_MAX (1u << 20)

extern char **environ;

void kiln_tail_add(struct kiln_tail *t, const char *data, size_t len)
{
	if (len >= KILN_TAIL_MAX) {
		memcpy(t->buf, data + len - KILN_TAIL_MAX, KILN_TAIL_MAX);
		t->len = KILN_TAIL_MAX;
		return;
	}
	if (t->len + len > KILN_TAIL_MAX) {
		size_t drop = t->len + len - KILN_TAIL_MAX;

		memmove(t->buf, t->buf + drop, t->len - drop);
		t->len -= drop;
	}
	memcpy(t->buf + t->len, data, len);
	t->len += len;
}

/* How often a watch is asked whether to stop the process. */
#define WATCH_MS 500

static void pump(int fds[2], kiln_proc_output_fn fn, void *ud,
		 const struct kiln_proc_watch *watch)
{
	char buf[16384];
	int open_fds = 2;
	uint64_t next_ns = 0;
	bool stopped = false;

	while (open_fds > 0) {
		struct pollfd p[2] = { { fds[0], POLLIN, 0 },
				       { fds[1], POLLIN, 0 } };
		int i;

		/*
		 * Every WATCH_MS until stop() says it is done: the first may come
		 * before there is a process to stop.
		 */
		if (watch && !stopped && kiln_now_mono_ns() >= next_ns) {
			next_ns = kiln_now_mono_ns() + WATCH_MS * 1000000ull;
			if (watch->cancelled(watch->ud))
				stopped = watch->stop(watch->ud);
		}
		if (poll(p, 2, watch && !stopped ? WATCH_MS : -1) < 0) {
			if (errno == EINTR)
				continue;
			return;
		}
		for (i = 0; i < 2; i++) {
			ssize_t k;

			if (fds[i] < 0 || !p[i].revents)
				continue;
			k = read(fds[i], buf, sizeof(buf));
			if (k < 0 && errno == EINTR)
				continue;
			if (k <= 0) {
				close(fds[i]);
				fds[i] = -1;
				open_fds--;
				continue;
			}
			if (fn)
				fn(ud, i + 1, buf, (size_t)k);
		}
	}
}

int kiln_proc_run(const char *const *argv, kiln_proc_output_fn fn, void *ud,
		  const struct kiln_proc_watch *watch, int *status)
{
	int out[2] = { -1, -1 }, errp[2] = { -1, -1 }, rd[2], ws, r = 0;
	_cleanup_close_ int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	struct kiln_child c = { .parent = getpid(), .deathsig = SIGKILL, .max_fd = kiln_child_max_fd() };
	pid_t pid;

	if (null < 0)
		return -errno;
	if (pipe2(out, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(errp, O_CLOEXEC) < 0) {
		r = -errno;
		close(out[0]);
		close(out[1]);
		return r;
	}
	c.in = null;
	c.out = out[1];
	c.err = errp[1];
	pid = fork();
	if (pid == 0)
		kiln_child_exec(&c, argv[0], (char *const *)argv, environ);
	if (pid < 0)
		r = -errno;
	close(out[1]);
	close(errp[1]);
	rd[0] = out[0];
	rd[1] = errp[0];
	if (r < 0) {
		close(rd[0]);
		close(rd[1]);
		return r;
	}
	pump(rd, fn, ud, watch);
	while (waitpid(pid, &ws, 0) < 0)
		if (errno != EINTR)
			return -errno;
	*status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
	return 0;
}

/* `runtime --root state_root VERB A B`, output discarded: 0 or -ESRCH. */
static int runtime_do(const char *runtime, const char *state_root, const char *verb,
		      const char *a, const char *b)
{
	const char *argv[] = { runtime, "--root", state_root, verb, a, b, NULL };
	int status, r;

	r = kiln_proc_run(argv, NULL, NULL, NULL, &status);
	if (r < 0)
		return r;
	return status == 0 ? 0 : -ESRCH;
}

int kiln_runtime_delete(const char *runtime, const char *state_root,
			const char *id)
{
	return runtime_do(runtime, state_root, "delete", "--force", id);
}

int kiln_runtime_kill(const char *runtime, const char *state_root, const char *id)
{
	return runtime_do(runtime, state_root, "kill", id, "KILL");
}

static char *find_in_path(const char *name)
{
	static const char *const dirs[] = { "/usr/local/sbin", "/usr/local/bin",
					     "/usr/sbin", "/usr/bin", "/sbin",
					     "/bin" };
	size_t i;

	if (strchr(name, '/'))
		return access(name, X_OK) == 0 ? realpath(name, NULL) : NULL;
	for (i = 0; i < ARRAY_SIZE(dirs); i++) {
		_cleanup_free_ char *p = xasprintf("%s/%s", dirs[i], name);

		if (access(p, X_OK) == 0)
			return realpath(p, NULL);
	}
	return NULL;
}

static void collect_cb(void *ud, int stream, const char *data, size_t len)
{
	kiln_tail_add(ud, data, len);
}

/* "runc version 1.1.5+ds1" -> "runc 1.1.5". */
static char *runtime_name(const char *path)
{
	const char *argv[] = { path, "--version", NULL };
	const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	struct kiln_tail t = { .len = 0 };
	char *v, *end;
	int status;

	if (kiln_proc_run(argv, collect_cb, &t, NULL, &status) < 0 || status != 0)
		return xstrdup(base);
	t.buf[t.len < KILN_TAIL_MAX ? t.len : KILN_TAIL_MAX - 1] = '\0';
	v = strstr(t.buf, "version ");
	if (!v)
		return xstrdup(base);
	v += 8;
	end = v + strcspn(v, "+~- \n");
	return xasprintf("%s %.*s", base, (int)(end - v), v);
}

/* Write a minimal bundle for the probe: host /bin, /lib... read-only. */
static int probe_bundle(const char *dir, struct kiln_error **err)
{
	static const char *const host[] = { "/bin", "/lib", "/lib64", "/usr" };
	struct kiln_bundle_mount m[ARRAY_SIZE(host)];
	const char *argv[] = { "/bin/true", NULL };
	_cleanup_free_ char *rootfs = xasprintf("%s/rootfs", dir);
	struct kiln_user user = { 0 };
	struct kiln_bundle b = { .rootfs = rootfs, .argv = argv,
				 .user = &user, .mounts = m };
	size_t i;
	int r;

	r = kiln_mkdir_p(rootfs, 0755);
	if (r < 0)
		return kiln_error_seterrno(err, r, "creating %s", rootfs);
	for (i = 0; i < ARRAY_SIZE(host); i++) {
		_cleanup_free_ char *mp = kiln_path_join(rootfs, host[i]);
		struct stat st;

		if (stat(host[i], &st) < 0)
			continue;
		if (mkdir(mp, 0755) < 0 && errno != EEXIST)
			return kiln_error_seterrno(err, -errno, "creating %s", mp);
		m[b.n_mounts++] = (struct kiln_bundle_mount){
			host[i], "bind", host[i], "rbind,ro,nosuid,nodev"
		};
	}
	return kiln_bundle_write(dir, &b, err);
}

static int probe(const char *root, const char *path, struct kiln_error **err)
{
	_cleanup_free_ char *rnd = kiln_random_hex(6);
	_cleanup_free_ char *id = xasprintf("kiln-probe-%s", rnd);
	_cleanup_free_ char *dir = xasprintf("%s/run/%s", root, id);
	_cleanup_free_ char *state = xasprintf("%s/runc", root);
	struct kiln_tail t = { .len = 0 };
	const char *argv[] = { path, "--root", state, "run", "--bundle", dir,
			       id, NULL };
	int status = -1, r;

	r = probe_bundle(dir, err);
	if (r == 0)
		r = kiln_proc_run(argv, collect_cb, &t, NULL, &status);
	if (r == 0 && status != 0)
		r = kiln_error_set(err, -ENOEXEC,
				   "runtime %s failed its start-up probe (exit %d): %.*s",
				   path, status, (int)t.len, t.buf);
	else if (r < 0)
		kiln_error_seterrno(err, r, "probing runtime %s", path);
	if (status != 0)
		kiln_runtime_delete(path, state, id);
	kiln_rm_rf(dir);
	return r;
}

static json_t *load_cache(const char *root)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", root, PROBE_FILE);
	_cleanup_free_ char *data = NULL;
	json_t *j = NULL;
	size_t len;

	if (kiln_read_file_at(AT_FDCWD, p, PROBE_FILE_MAX, &data, &len) == 0)
		j = json_loadb(data, len, 0, NULL);
	if (!json_is_object(j)) {
		json_decref(j);
		j = json_object();
	}
	return j;
}

static int save_cache(const char *root, json_t *cache)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", root, PROBE_FILE);
	_cleanup_free_ char *s = json_dumps(cache, JSON_SORT_KEYS | JSON_INDENT(2));

	if (!s)
		return -ENOMEM;
	return kiln_write_file_atomic_at(AT_FDCWD, p, s, strlen(s), 0644, false);
}

/* Probe path (or reuse the verdict cached for its mtime). */
static int check_runtime(const char *root, const char *path, char **name,
			 struct kiln_error **err)
{
	json_t *cache = load_cache(root), *e;
	struct stat st;
	json_int_t stamp;
	int r;

	if (stat(path, &st) < 0) {
		json_decref(cache);
		return kiln_error_seterrno(err, -errno, "runtime %s", path);
	}
	stamp = (json_int_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	e = json_object_get(cache, path);
	if (json_is_object(e) &&
	    json_integer_value(json_object_get(e, "mtime")) == stamp &&
	    json_is_true(json_object_get(e, "ok"))) {
		*name = xstrdup(json_string_value(json_object_get(e, "name"))
					? json_string_value(json_object_get(e, "name"))
					: path);
		json_decref(cache);
		return 0;
	}
	r = probe(root, path, err);
	*name = r == 0 ? runtime_name(path) : NULL;
	json_object_set_new(cache, path,
			    json_pack("{s:I, s:b, s:s?}", "mtime", stamp, "ok",
				      r == 0, "name", *name));
	save_cache(root, cache);
	json_decref(cache);
	return r;
}

int kiln_runtime_pick(const char *root, const char *want, char **path,
		      char **name, struct kiln_error **err)
{
	static const char *const defaults[] = { "runc", "crun" };
	_cleanup_error_ struct kiln_error *last = NULL;
	size_t i;
	int r = -ENOENT;

	if (want && *want) {
		_cleanup_free_ char *p = find_in_path(want);

		if (!p)
			return kiln_error_set(err, -ENOENT,
					      "OCI runtime %s not found", want);
		r = check_runtime(root, p, name, err);
		if (r == 0)
			*path = TAKE_PTR(p);
		return r;
	}
	for (i = 0; i < ARRAY_SIZE(defaults); i++) {
		_cleanup_free_ char *p = find_in_path(defaults[i]);

		if (!p)
			continue;
		kiln_error_free(last);
		last = NULL;
		r = check_runtime(root, p, name, &last);
		if (r == 0) {
			*path = TAKE_PTR(p);
			return 0;
		}
		log_debug("runtime %s rejected: %s", p, kiln_error_msg(last));
	}
	if (last)
		return kiln_error_set(err, r, "no usable OCI runtime: %s",
				      kiln_error_msg(last));
	return kiln_error_set(err, -ENOENT,
			      "no OCI runtime found (install runc or crun)");
}
