/*
 * Worker exec through the real runc on a busybox rootfs: output capture,
 * snapshots across layers, exit codes, mounts, network, user, cwd,
 * concurrency and crash recovery. Needs root and runc; fails without them.
 */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <cmocka.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/platform.h"
#include "basic/strbuf.h"
#include "cas/tree.h"
#include "worker/worker.h"

#include "test-util.h"

static const char *const applets[] = {
	"sh", "echo", "cat", "ls", "rm", "mkdir", "touch", "id", "true",
	"false", "sleep", "test", "grep", "wc", "pwd", "head", "mount",
};

struct state {
	char *root, *wroot;
	struct kiln_worker *w;
	struct kiln_digest base;
	struct kiln_digest t1; /* base + /a - /bin/ls */
};

static struct state S;

struct out {
	struct kiln_strbuf so, se;
	pthread_mutex_t lock;
};

static void out_cb(void *ud, int stream, const char *data, size_t len)
{
	struct out *o = ud;

	kiln_strbuf_add(stream == 1 ? &o->so : &o->se, data, len);
}

static void write_text(const char *dir, const char *rel, const char *text)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", dir, rel);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(kiln_write_full(fd, text, strlen(text)), 0);
	close(fd);
}

static void build_rootfs(const char *d)
{
	_cleanup_free_ char *bin = xasprintf("%s/bin", d);
	_cleanup_free_ char *etc = xasprintf("%s/etc", d);
	_cleanup_free_ char *tmp = xasprintf("%s/tmp", d);
	int r;

	r = test_install_busybox(bin, applets, sizeof(applets) / sizeof(applets[0]));
	if (r == -ENOENT)
		fail_msg("/bin/busybox is missing (install busybox-static)");
	assert_int_equal(r, 0);
	assert_int_equal(mkdir(etc, 0755), 0);
	assert_int_equal(mkdir(tmp, 01777), 0);
	assert_int_equal(chmod(tmp, 01777), 0);
	write_text(d, "etc/passwd",
		   "root:x:0:0:root:/root:/bin/sh\n"
		   "builder:x:1000:1000:b:/home/builder:/bin/sh\n");
	write_text(d, "etc/group", "root:x:0:\nbuilder:x:1000:\nextra:x:2000:builder\n");
}

static int setup(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	char tmpl[] = "/var/tmp/kiln-exec-XXXXXX";
	_cleanup_free_ char *rootfs = NULL;
	struct kiln_worker_options o = { 0 };
	int fd;

	if (geteuid() != 0)
		fail_msg("test-exec must run as root (runc, overlay mounts)");
	if (access("/usr/sbin/runc", X_OK) != 0 && access("/usr/bin/runc", X_OK) != 0)
		fail_msg("runc is not installed");
	assert_non_null(mkdtemp(tmpl));
	S.root = xstrdup(tmpl);
	S.wroot = xasprintf("%s/worker", S.root);
	rootfs = xasprintf("%s/rootfs", S.root);
	assert_int_equal(mkdir(rootfs, 0755), 0);
	build_rootfs(rootfs);
	o.root = S.wroot;
	if (kiln_worker_open(&o, &S.w, &err) < 0)
		fail_msg("worker open: %s", kiln_error_msg(err));
	fd = open(rootfs, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_int_equal(kiln_tree_from_dir(kiln_worker_store(S.w), fd, NULL,
					    &S.base, &err), 0);
	close(fd);
	return 0;
}

static int teardown(void **st)
{
	kiln_worker_free(S.w);
	assert_int_equal(kiln_rm_rf(S.root), 0);
	free(S.root);
	free(S.wroot);
	return 0;
}

/* Run argv (NULL-terminated) on tree; returns kiln_worker_exec's value. */
static int run_on(const char *id, const struct kiln_digest *tree,
		  const char *const *argv, const struct kiln_exec_mount *m,
		  size_t nm, const char *user, const char *cwd,
		  struct kiln_exec_result *res, struct out *o)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_exec_request req = {
		.id = id, .rootfs = *tree, .argv = argv, .cwd = cwd,
		.user = user, .mounts = m, .n_mounts = nm,
		.output = out_cb, .output_ud = o,
	};
	int r;

	kiln_strbuf_init(&o->so, 1 << 20);
	kiln_strbuf_init(&o->se, 1 << 20);
	r = kiln_worker_exec(S.w, &req, res, &err);
	if (r < 0)
		print_error("exec %s: %s\n", id, kiln_error_msg(err));
	return r;
}

static void out_release(struct out *o)
{
	kiln_strbuf_release(&o->so);
	kiln_strbuf_release(&o->se);
}

static bool tree_has(const struct kiln_digest *t, const char *path)
{
	struct kiln_tree_entry e;
	int r = kiln_tree_lookup(kiln_worker_store(S.w), t, path, &e, NULL);

	if (r == 0)
		kiln_tree_entry_release(&e);
	return r == 0;
}

static int note_diff(enum kiln_diff_kind kind, const char *path,
		     const struct kiln_tree_entry *o, const struct kiln_tree_entry *n,
		     void *ud)
{
	struct kiln_strbuf *sb = ud;

	kiln_strbuf_addf(sb, "%c %s %o/%o %lld.%09u/%lld.%09u;", "AMD"[kind], path,
			 o ? o->mode : 0, n ? n->mode : 0,
			 o ? (long long)o->mtime_sec : 0, o ? o->mtime_nsec : 0,
			 n ? (long long)n->mtime_sec : 0, n ? n->mtime_nsec : 0);
	return 0;
}

/* What changed from a to b, one "K path" a change. */
static char *tree_changes(const struct kiln_digest *a, const struct kiln_digest *b)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(1 << 20);

	assert_int_equal(kiln_tree_diff(kiln_worker_store(S.w), a, b, note_diff, &sb, NULL), 0);
	return kiln_strbuf_detach(&sb, NULL);
}

/*
 * A step that wrote nothing: the mount points runc needed are not in the
 * result, and the one trace is /etc's mtime (its stubs for /etc/hosts and
 * /etc/resolv.conf came and went), as in BuildKit, whose stubs cleaner
 * keeps the parent's mtime from when the stubs were made.
 */
static void assert_untouched(const struct kiln_digest *base,
			     const struct kiln_digest *got)
{
	_cleanup_free_ char *ch = tree_changes(base, got);

	assert_true(!strncmp(ch, "M etc 755/755 ", 14));
	assert_int_equal(strchr(ch, ';') - ch + 1, (long)strlen(ch));
	assert_false(tree_has(got, "etc/hosts"));
	assert_false(tree_has(got, "etc/resolv.conf"));
}

#define SH(...) ((const char *const[]){ "/bin/sh", "-c", __VA_ARGS__, NULL })

static void test_runtime_name(void **st)
{
	assert_non_null(strstr(kiln_worker_runtime(S.w), "runc 1."));
	assert_string_equal(kiln_worker_native_platform(S.w), "linux/amd64");
}

static void test_platform(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *a = kiln_platform_normalize("linux/x86_64");
	_cleanup_free_ char *b = kiln_platform_normalize("aarch64");
	_cleanup_free_ char *c = kiln_platform_normalize("linux/armhf");
	_cleanup_free_ char *qemu = NULL;
	bool emulated = true, enabled;
	size_t len;
	int r;

	assert_string_equal(a, "linux/amd64");
	assert_string_equal(b, "linux/arm64");
	assert_string_equal(c, "linux/arm/v7");
	assert_int_equal(kiln_worker_check_platform(S.w, "linux/x86_64",
						    &emulated, &err), 0);
	assert_false(emulated);
	assert_int_equal(kiln_worker_check_platform(S.w, "windows/amd64",
						    &emulated, &err), -ENOTSUP);
	assert_non_null(strstr(kiln_error_msg(err), "windows/amd64"));
	kiln_error_free(err);
	err = NULL;
	/* arm64 runs exactly when the host has an enabled qemu handler. */
	enabled = kiln_read_file_at(AT_FDCWD,
				    "/proc/sys/fs/binfmt_misc/qemu-aarch64",
				    65536, &qemu, &len) == 0 &&
		  !strncmp(qemu, "enabled", 7);
	r = kiln_worker_check_platform(S.w, "linux/arm64", &emulated, &err);
	if (enabled) {
		assert_int_equal(r, 0);
		assert_true(emulated);
	} else {
		assert_int_equal(r, -ENOTSUP);
		assert_non_null(strstr(kiln_error_msg(err), "update-binfmts"));
	}
}

static void test_echo(void **st)
{
	struct kiln_exec_result res;
	struct out o;

	assert_int_equal(run_on("echo", &S.base, SH("echo hello; echo err >&2"),
				NULL, 0, NULL, NULL, &res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_string_equal(kiln_strbuf_str(&o.so), "hello\n");
	assert_string_equal(kiln_strbuf_str(&o.se), "err\n");
	assert_non_null(strstr(res.tail, "hello"));
	assert_untouched(&S.base, &res.rootfs);
	kiln_exec_result_release(&res);
	out_release(&o);
}

static void test_snapshot_across_layers(void **st)
{
	struct kiln_exec_result res, res2;
	struct out o;

	assert_int_equal(run_on("write", &S.base,
				SH("echo A > /a && rm /bin/ls && mkdir -p /d/e"),
				NULL, 0, NULL, NULL, &res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	S.t1 = res.rootfs;
	assert_false(kiln_digest_eq(&S.t1, &S.base));
	assert_true(tree_has(&S.t1, "a"));
	assert_true(tree_has(&S.t1, "d/e"));
	assert_false(tree_has(&S.t1, "bin/ls"));
	assert_true(tree_has(&S.t1, "bin/cat"));
	assert_false(tree_has(&S.t1, "proc"));
	assert_false(tree_has(&S.t1, "dev"));
	assert_false(tree_has(&S.t1, "sys"));
	assert_true(kiln_layers_has(kiln_worker_layers(S.w), &S.t1));
	kiln_exec_result_release(&res);
	out_release(&o);

	/* On top of the new layer the whiteout still hides /bin/ls. */
	assert_int_equal(run_on("check", &S.t1,
				SH("cat /a; test -e /bin/ls && echo HAVE || echo NOLS; "
				   "rm /a"),
				NULL, 0, NULL, NULL, &res2, &o), 0);
	assert_int_equal(res2.exit_code, 0);
	assert_string_equal(kiln_strbuf_str(&o.so), "A\nNOLS\n");
	assert_false(tree_has(&res2.rootfs, "a"));
	assert_false(tree_has(&res2.rootfs, "bin/ls"));
	kiln_exec_result_release(&res2);
	out_release(&o);
}

static void test_exit_code(void **st)
{
	struct kiln_exec_result res;
	struct out o;

	assert_int_equal(run_on("exit3", &S.base,
				SH("echo before-exit; touch /x; exit 3"), NULL,
				0, NULL, NULL, &res, &o), 0);
	assert_int_equal(res.exit_code, 3);
	assert_non_null(strstr(res.tail, "before-exit"));
	assert_false(kiln_digest_is_set(&res.rootfs));
	kiln_exec_result_release(&res);
	out_release(&o);
}

static void test_runtime_failure(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	const char *argv[] = { "/no/such/binary", NULL };
	struct kiln_exec_request req = { .id = "nosuch", .rootfs = S.base,
					 .argv = argv };
	struct kiln_exec_result res;

	assert_true(kiln_worker_exec(S.w, &req, &res, &err) < 0);
	assert_non_null(strstr(kiln_error_msg(err), "nosuch"));
	assert_non_null(strstr(kiln_error_msg(err), "/no/such/binary"));
}

static void test_cache_mount(void **st)
{
	struct kiln_exec_mount m = { .type = KILN_MOUNT_CACHE,
				     .target = "/cache", .cache_id = "c1" };
	struct kiln_exec_result res;
	struct out o;

	assert_int_equal(run_on("cache1", &S.base,
				SH("echo v1 >> /cache/x; cat /cache/x"), &m, 1,
				NULL, NULL, &res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_false(tree_has(&res.rootfs, "cache"));
	kiln_exec_result_release(&res);
	out_release(&o);
	assert_int_equal(run_on("cache2", &S.base, SH("cat /cache/x"), &m, 1,
				NULL, NULL, &res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_non_null(strstr(kiln_strbuf_str(&o.so), "v1"));
	kiln_exec_result_release(&res);
	out_release(&o);
}

/* A seeded cache starts as a copy of its tree; an existing one is kept; another seed is another cache. */
static void test_cache_mount_seeded(void **st)
{
	struct kiln_exec_mount m = { .type = KILN_MOUNT_CACHE, .target = "/seed",
				     .cache_id = "seeded", .seeded = true, .tree = S.t1,
				     .mode = 0750 };
	struct kiln_exec_mount ro = { .type = KILN_MOUNT_TREE, .target = "/ro",
				      .tree = S.t1, .readonly = true };
	struct kiln_exec_result res;
	struct out o;

	assert_int_equal(run_on("seed1", &S.base,
				SH("cat /seed/a; echo more >> /seed/a; ls -ld /seed | head -c 10"),
				&m, 1, NULL, NULL, &res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_string_equal(kiln_strbuf_str(&o.so), "A\ndrwxr-x---");
	assert_false(tree_has(&res.rootfs, "seed"));
	kiln_exec_result_release(&res);
	out_release(&o);
	/* the same id and seed: the cache exists, so it is not reset */
	assert_int_equal(run_on("seed2", &S.base, SH("cat /seed/a"), &m, 1, NULL, NULL,
				&res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_string_equal(kiln_strbuf_str(&o.so), "A\nmore\n");
	kiln_exec_result_release(&res);
	out_release(&o);
	/* another seed is another cache (BuildKit keys it id + seed): fresh */
	m.tree = S.base;
	assert_int_equal(run_on("seed2b", &S.base,
				SH("test -e /seed/a || echo fresh; test -e /seed/bin && echo seeded"),
				&m, 1, NULL, NULL, &res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_string_equal(kiln_strbuf_str(&o.so), "fresh\nseeded\n");
	kiln_exec_result_release(&res);
	out_release(&o);
	/* the seed's files were copies: the tree itself is unchanged */
	assert_int_equal(run_on("seed3", &S.base, SH("cat /ro/a"), &ro, 1, NULL, NULL,
				&res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_string_equal(kiln_strbuf_str(&o.so), "A\n");
	kiln_exec_result_release(&res);
	out_release(&o);
}

static void test_tmpfs_mount(void **st)
{
	struct kiln_exec_mount m = { .type = KILN_MOUNT_TMPFS,
				     .target = "/scratch/t",
				     .tmpfs_size = 1 << 20 };
	struct kiln_exec_result res;
	struct out o;

	assert_int_equal(run_on("tmpfs", &S.base,
				SH("echo x > /scratch/t/f && grep -q ' /scratch/t tmpfs' "
				   "/proc/mounts && echo ok"),
				&m, 1, NULL, NULL, &res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_string_equal(kiln_strbuf_str(&o.so), "ok\n");
	assert_false(tree_has(&res.rootfs, "scratch"));
	assert_untouched(&S.base, &res.rootfs);
	kiln_exec_result_release(&res);
	out_release(&o);
}

static void test_tree_mounts(void **st)
{
	struct kiln_exec_mount m[2] = {
		{ .type = KILN_MOUNT_TREE, .target = "/ro", .tree = S.t1,
		  .readonly = true },
		{ .type = KILN_MOUNT_TREE, .target = "/rw", .tree = S.t1 },
	};
	struct kiln_exec_result res;
	struct out o;

	assert_int_equal(run_on("treemnt", &S.base,
				SH("cat /ro/a; (echo y > /ro/new) 2>/dev/null && echo WROTE || echo ROFAIL; "
				   "echo z > /rw/new && cat /rw/new"),
				m, 2, NULL, NULL, &res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_string_equal(kiln_strbuf_str(&o.so), "A\nROFAIL\nz\n");
	assert_false(tree_has(&res.rootfs, "ro"));
	assert_false(tree_has(&res.rootfs, "rw"));
	/* The writable mount's changes were discarded. */
	assert_false(tree_has(&S.t1, "new"));
	kiln_exec_result_release(&res);
	out_release(&o);
}

static void test_network_none(void **st)
{
	struct kiln_exec_result res;
	struct out o;

	assert_int_equal(run_on("net", &S.base, SH("grep -c : /proc/net/dev; grep -o 'lo:' /proc/net/dev"),
				NULL, 0, NULL, NULL, &res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_string_equal(kiln_strbuf_str(&o.so), "1\nlo:\n");
	kiln_exec_result_release(&res);
	out_release(&o);
}

static void test_user(void **st)
{
	struct kiln_exec_result res;
	struct out o;

	assert_int_equal(run_on("user1", &S.base, SH("id -u; id -g"), NULL, 0,
				"1000:1000", NULL, &res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_string_equal(kiln_strbuf_str(&o.so), "1000\n1000\n");
	kiln_exec_result_release(&res);
	out_release(&o);
	assert_int_equal(run_on("user2", &S.base, SH("id -u; id -G; echo $HOME"),
				NULL, 0, "builder", NULL, &res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_string_equal(kiln_strbuf_str(&o.so),
			    "1000\n1000 2000\n/home/builder\n");
	kiln_exec_result_release(&res);
	out_release(&o);
	assert_int_equal(run_on("user3", &S.base, SH("true"), NULL, 0,
				"nobody-here", NULL, &res, &o), -ENOENT);
	out_release(&o);
}

static void test_cwd(void **st)
{
	struct kiln_exec_result res;
	struct out o;

	assert_int_equal(run_on("cwd", &S.base, SH("pwd; touch f"), NULL, 0,
				NULL, "/work/dir", &res, &o), 0);
	assert_int_equal(res.exit_code, 0);
	assert_string_equal(kiln_strbuf_str(&o.so), "/work/dir\n");
	assert_true(tree_has(&res.rootfs, "work/dir/f"));
	kiln_exec_result_release(&res);
	out_release(&o);
	/* A created WORKDIR stays even when empty (as Docker does). */
	assert_int_equal(run_on("cwd2", &S.base, SH("true"), NULL, 0, NULL,
				"/w2", &res, &o), 0);
	assert_true(tree_has(&res.rootfs, "w2"));
	kiln_exec_result_release(&res);
	out_release(&o);
}

struct job {
	char id[16];
	char cmd[64];
	struct kiln_exec_result res;
	struct out o;
	int r;
};

static void *job_main(void *p)
{
	struct job *j = p;

	j->r = run_on(j->id, &S.base, SH(j->cmd), NULL, 0, NULL, NULL,
		      &j->res, &j->o);
	return NULL;
}

static void test_concurrent(void **st)
{
	struct job jobs[3];
	pthread_t th[3];
	int i;

	for (i = 0; i < 3; i++) {
		snprintf(jobs[i].id, sizeof(jobs[i].id), "conc-%d", i);
		snprintf(jobs[i].cmd, sizeof(jobs[i].cmd),
			 "echo %d > /t%d; sleep 0.2; cat /t%d", i, i, i);
		assert_int_equal(pthread_create(&th[i], NULL, job_main, &jobs[i]), 0);
	}
	for (i = 0; i < 3; i++) {
		char want[8], path[8], other[8];

		pthread_join(th[i], NULL);
		assert_int_equal(jobs[i].r, 0);
		assert_int_equal(jobs[i].res.exit_code, 0);
		snprintf(want, sizeof(want), "%d\n", i);
		snprintf(path, sizeof(path), "t%d", i);
		snprintf(other, sizeof(other), "t%d", (i + 1) % 3);
		assert_string_equal(kiln_strbuf_str(&jobs[i].o.so), want);
		assert_true(tree_has(&jobs[i].res.rootfs, path));
		assert_false(tree_has(&jobs[i].res.rootfs, other));
		kiln_exec_result_release(&jobs[i].res);
		out_release(&jobs[i].o);
	}
}

static bool mounted_under(const char *prefix)
{
	_cleanup_free_ char *mi = NULL;
	size_t len;

	assert_int_equal(kiln_read_file_at(AT_FDCWD, "/proc/self/mountinfo",
					   1 << 24, &mi, &len), 0);
	return strstr(mi, prefix) != NULL;
}

/* A kiln killed mid-exec: reopening the worker cleans up after it. */
static void test_crash_recovery(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *run = xasprintf("%s/run/crashy", S.wroot);
	_cleanup_free_ char *state = xasprintf("%s/runc/crashy", S.wroot);
	_cleanup_free_ char *runroot = xasprintf("%s/run", S.wroot);
	struct kiln_worker_options o = { .root = S.wroot };
	pid_t pid;
	int i, ws;

	kiln_worker_free(S.w);
	S.w = NULL;
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct kiln_worker *w;
		struct kiln_exec_result res;
		const char *argv[] = { "/bin/sleep", "60", NULL };
		struct kiln_exec_request req = { .id = "crashy",
						 .argv = argv };

		if (kiln_worker_open(&o, &w, NULL) < 0)
			_exit(2);
		req.rootfs = S.base;
		kiln_worker_exec(w, &req, &res, NULL);
		_exit(3);
	}
	/* Wait until the container runs, then kill kiln -9. */
	for (i = 0; i < 200 && access(state, F_OK) != 0; i++)
		usleep(50000);
	assert_int_equal(access(state, F_OK), 0);
	usleep(200000);
	assert_true(mounted_under(run));
	kill(pid, SIGKILL);
	assert_int_equal(waitpid(pid, &ws, 0), pid);

	if (kiln_worker_open(&o, &S.w, &err) < 0)
		fail_msg("reopen: %s", kiln_error_msg(err));
	assert_int_not_equal(access(run, F_OK), 0);
	assert_int_not_equal(access(state, F_OK), 0);
	assert_false(mounted_under(runroot));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_runtime_name),
		cmocka_unit_test(test_platform),
		cmocka_unit_test(test_echo),
		cmocka_unit_test(test_snapshot_across_layers),
		cmocka_unit_test(test_exit_code),
		cmocka_unit_test(test_runtime_failure),
		cmocka_unit_test(test_cache_mount),
		cmocka_unit_test(test_cache_mount_seeded),
		cmocka_unit_test(test_tmpfs_mount),
		cmocka_unit_test(test_tree_mounts),
		cmocka_unit_test(test_network_none),
		cmocka_unit_test(test_user),
		cmocka_unit_test(test_cwd),
		cmocka_unit_test(test_concurrent),
		cmocka_unit_test(test_crash_recovery),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
