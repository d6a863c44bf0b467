#include "bench-util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"

#define MAX_CLEANUP 16
#define WRITE_CHUNK (1u << 20)

extern char **environ;

const char *bench_name = "bench";

static char *cleanup_dirs[MAX_CLEANUP];
static size_t n_cleanup_dirs;
static char *cleanup_mounts[MAX_CLEANUP];
static size_t n_cleanup_mounts;

double bench_now(void)
{
	return (double)kiln_now_mono_ns() / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

double bench_median(double *v, size_t n)
{
	if (n == 0)
		return 0;
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void bench_die(const char *fmt, ...)
{
	va_list ap;

	fflush(stdout);
	fprintf(stderr, "%s: error: ", bench_name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

void bench_check(int r, struct kiln_error *err, const char *what)
{
	if (r >= 0)
		return;
	if (err)
		bench_die("%s: %s", what, kiln_error_msg(err));
	bench_die("%s: %s", what, strerror(-r));
}

void bench_require_root(void)
{
	if (geteuid() != 0)
		bench_die("needs root (mounts, hardlinks of root-owned files, runc)");
}

/* Mount points at or below prefix from mountinfo, unmounted deepest first. */
static void umount_below(const char *prefix)
{
	size_t n = strlen(prefix), cap = 0, cnt = 0, i, j;
	char **mps = NULL, line[8192];
	FILE *f = fopen("/proc/self/mountinfo", "re");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		char mp[4096];

		if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) != 1)
			continue;
		if (strncmp(mp, prefix, n) || (mp[n] && mp[n] != '/'))
			continue;
		mps = xgrow(mps, &cap, cnt + 1, sizeof(*mps));
		mps[cnt++] = xstrdup(mp);
	}
	fclose(f);
	/* Longest path first: children before their parents. */
	for (i = 0; i < cnt; i++)
		for (j = i + 1; j < cnt; j++)
			if (strlen(mps[j]) > strlen(mps[i])) {
				char *t = mps[i];
				mps[i] = mps[j];
				mps[j] = t;
			}
	for (i = 0; i < cnt; i++) {
		umount2(mps[i], MNT_DETACH);
		free(mps[i]);
	}
	free(mps);
}

static void cleanup_all(void)
{
	size_t i;

	for (i = n_cleanup_mounts; i-- > 0;) {
		umount2(cleanup_mounts[i], MNT_DETACH);
		free(cleanup_mounts[i]);
	}
	n_cleanup_mounts = 0;
	for (i = n_cleanup_dirs; i-- > 0;) {
		double t0 = bench_now();

		umount_below(cleanup_dirs[i]);
		kiln_rm_rf(cleanup_dirs[i]);
		printf("  cleanup: removed %s in %.1f s\n", cleanup_dirs[i],
		       bench_now() - t0);
		free(cleanup_dirs[i]);
	}
	n_cleanup_dirs = 0;
}

/* Ctrl-C in the middle of a run: exit() so the scratch dirs still go. */
static void on_signal(int sig)
{
	(void)sig;
	exit(130);
}

static void setup_cleanup(void)
{
	static bool done;

	if (done)
		return;
	done = true;
	atexit(cleanup_all);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
}

char *bench_mkdtemp(const char *name)
{
	char *p = xasprintf("/var/tmp/kiln-bench-%s.XXXXXX", name);

	setup_cleanup();
	if (!mkdtemp(p))
		bench_die("mkdtemp %s: %s", p, strerror(errno));
	if (n_cleanup_dirs == MAX_CLEANUP)
		bench_die("too many scratch directories");
	cleanup_dirs[n_cleanup_dirs++] = xstrdup(p);
	return p;
}

void bench_cleanup_mount(const char *path)
{
	setup_cleanup();
	if (n_cleanup_mounts == MAX_CLEANUP)
		bench_die("too many mount points to remember");
	cleanup_mounts[n_cleanup_mounts++] = xstrdup(path);
}

void bench_fill(uint64_t *state, void *buf, size_t n)
{
	uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ull;
	uint8_t *p = buf;
	size_t i;

	for (i = 0; i + 8 <= n; i += 8) {
		uint64_t v;

		x ^= x >> 12;
		x ^= x << 25;
		x ^= x >> 27;
		v = x * 0x2545f4914f6cdd1dull;
		memcpy(p + i, &v, 8);
	}
	for (; i < n; i++)
		p[i] = (uint8_t)(x >> (8 * (i % 8)));
	*state = x;
}

void bench_write_file(int dirfd, const char *name, uint64_t size,
		      uint64_t seed, bool sync)
{
	static uint8_t *buf;
	uint64_t state = seed * 0x9e3779b97f4a7c15ull + 1, left = size;
	int fd, r;

	if (!buf)
		buf = xmalloc(WRITE_CHUNK);
	fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		bench_die("creating %s: %s", name, strerror(errno));
	while (left > 0) {
		size_t k = left < WRITE_CHUNK ? (size_t)left : WRITE_CHUNK;

		bench_fill(&state, buf, k);
		r = kiln_write_full(fd, buf, k);
		if (r < 0)
			bench_die("writing %s: %s", name, strerror(-r));
		left -= k;
	}
	if (sync && fsync(fd) < 0)
		bench_die("fsync of %s: %s", name, strerror(errno));
	close(fd);
}

void bench_syncfs(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || syncfs(fd) < 0)
		bench_die("syncfs %s: %s", path, strerror(errno));
	close(fd);
}

static int mkdir_open(int at, const char *name)
{
	int fd;

	if (mkdirat(at, name, 0755) < 0)
		bench_die("mkdir %s: %s", name, strerror(errno));
	fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		bench_die("open %s: %s", name, strerror(errno));
	return fd;
}

size_t bench_make_small_tree(const char *dir, size_t files_per_dir,
			     size_t file_size)
{
	int rootfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	size_t top, sub, f, n = 0;
	char name[32];

	if (rootfd < 0)
		bench_die("open %s: %s", dir, strerror(errno));
	for (top = 0; top < 25; top++) {
		int tfd;

		snprintf(name, sizeof(name), "d%02zu", top);
		tfd = mkdir_open(rootfd, name);
		for (sub = 0; sub < 10; sub++) {
			int sfd;

			snprintf(name, sizeof(name), "s%zu", sub);
			sfd = mkdir_open(tfd, name);
			for (f = 0; f < files_per_dir; f++, n++) {
				snprintf(name, sizeof(name), "f%04zu.dat", f);
				bench_write_file(sfd, name, file_size, n + 1, false);
			}
			close(sfd);
		}
		close(tfd);
	}
	close(rootfd);
	bench_syncfs(dir);
	return n;
}

double bench_run(const char *const *argv)
{
	posix_spawn_file_actions_t fa;
	double t0 = bench_now();
	int status, r;
	pid_t pid;

	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	r = posix_spawnp(&pid, argv[0], &fa, NULL, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (r != 0)
		bench_die("starting %s: %s", argv[0], strerror(r));
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			bench_die("waiting for %s: %s", argv[0], strerror(errno));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		bench_die("%s failed (status 0x%x)", argv[0], status);
	return bench_now() - t0;
}

unsigned bench_env_uint(const char *name, unsigned def)
{
	const char *v = getenv(name);
	char *end;
	unsigned long n;

	if (!v || !*v)
		return def;
	errno = 0;
	n = strtoul(v, &end, 10);
	if (errno || *end || n == 0 || n > 1000000)
		bench_die("%s=%s is not a positive integer", name, v);
	return (unsigned)n;
}
