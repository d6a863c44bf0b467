/* src/basic: path cleaning, parsing, bounded buffers, confined fs helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/error.h"
#include "basic/fs-util.h"
#include "basic/parse-util.h"
#include "basic/proc.h"
#include "basic/strbuf.h"
#include "basic/strv.h"
#include "basic/utf8.h"

static void test_path_clean(void **state)
{
	static const char *const cases[][2] = {
		{ "", "" },         { "/", "" },          { "a/b", "a/b" },
		{ "/a/./b/", "a/b" }, { "a//b", "a/b" },   { "../x", "x" },
		{ "/a/../../b", "b" }, { "a/b/..", "a" },  { "./.", "" },
		{ "/..", "" },       { "a/../b/../c", "c" },
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *c = kiln_path_clean(cases[i][0]);
		if (strcmp(c, cases[i][1]))
			fail_msg("clean(%s) = %s, want %s", cases[i][0], c, cases[i][1]);
		free(c);
	}
	assert_true(kiln_path_has_dotdot("a/../b"));
	assert_true(kiln_path_has_dotdot(".."));
	assert_false(kiln_path_has_dotdot("a/..b/c.."));
}

static void test_parse(void **state)
{
	uint64_t v;
	uint32_t u;
	int i;

	assert_int_equal(kiln_parse_size("10GB", &v), 0);
	assert_int_equal(v, 10000000000ull);
	assert_int_equal(kiln_parse_size("512MiB", &v), 0);
	assert_int_equal(v, 512ull << 20);
	assert_int_equal(kiln_parse_size("2g", &v), 0);
	assert_int_equal(v, 2ull << 30);
	assert_int_equal(kiln_parse_size("0", &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(kiln_parse_size("12 parsecs", &v), -EINVAL);
	assert_int_equal(kiln_parse_size("-1", &v), -EINVAL);
	assert_int_equal(kiln_parse_u32("4294967296", &u), -ERANGE);
	assert_int_equal(kiln_parse_u32("12x", &u), -EINVAL);
	assert_int_equal(kiln_parse_int("-42", &i), 0);
	assert_int_equal(i, -42);
	assert_int_equal(kiln_parse_u64("", &v), -EINVAL);
	{
		int64_t d;

		assert_int_equal(kiln_parse_duration("90", &d), 0);
		assert_int_equal(d, 90);
		assert_int_equal(kiln_parse_duration("90s", &d), 0);
		assert_int_equal(d, 90);
		assert_int_equal(kiln_parse_duration("30m", &d), 0);
		assert_int_equal(d, 1800);
		assert_int_equal(kiln_parse_duration("24h", &d), 0);
		assert_int_equal(d, 86400);
		assert_int_equal(kiln_parse_duration("7d", &d), 0);
		assert_int_equal(d, 7 * 86400);
		assert_int_equal(kiln_parse_duration("0", &d), 0);
		assert_int_equal(d, 0);
		assert_int_equal(kiln_parse_duration("", &d), -EINVAL);
		assert_int_equal(kiln_parse_duration("d", &d), -EINVAL);
		assert_int_equal(kiln_parse_duration("7w", &d), -EINVAL);
		assert_int_equal(kiln_parse_duration("-5m", &d), -EINVAL);
		assert_int_equal(kiln_parse_duration("99999999999d", &d), -ERANGE);
	}
}

static void test_strbuf_limit(void **state)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(8);

	assert_int_equal(kiln_strbuf_adds(&sb, "12345"), 0);
	assert_int_equal(kiln_strbuf_adds(&sb, "6789"), -E2BIG);
	assert_string_equal(kiln_strbuf_str(&sb), "12345"); /* unchanged */
	assert_int_equal(kiln_strbuf_addf(&sb, "%d", 678), 0);
	assert_int_equal(sb.len, 8);
	assert_int_equal(kiln_strbuf_addch(&sb, 'x'), -E2BIG);
	kiln_strbuf_release(&sb);
}

static void test_error_prefix(void **state)
{
	struct kiln_error *err = NULL;

	assert_int_equal(kiln_error_set(&err, -ENOENT, "file %s", "a.txt"), -ENOENT);
	/* The first error wins. */
	kiln_error_set(&err, -EIO, "second");
	kiln_error_prefix(&err, "op '%s'", "x");
	assert_string_equal(err->msg, "op 'x': file a.txt");
	assert_int_equal(err->code, -ENOENT);
	kiln_error_free(err);
	err = NULL;
	kiln_error_seterrno(&err, -ENOENT, "open %s", "b");
	assert_non_null(strstr(err->msg, "No such file"));
	kiln_error_free(err);
}

/* A wrapper that puts its context before the caller's message. */
_printf_(3, 4) static int at_line(struct kiln_error **err, unsigned line,
				  const char *fmt, ...)
{
	_cleanup_free_ char *where = xasprintf("Dockerfile:%u", line);
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = kiln_error_setv(err, -EINVAL, line ? where : NULL, fmt, ap);
	va_end(ap);
	return r;
}

static void test_error_setv(void **state)
{
	struct kiln_error *err = NULL;

	assert_int_equal(at_line(&err, 3, "unknown flag --%s", "frob"), -EINVAL);
	assert_string_equal(err->msg, "Dockerfile:3: unknown flag --frob");
	/* Set once: a second error leaves the first. */
	assert_int_equal(at_line(&err, 4, "other"), -EINVAL);
	assert_string_equal(err->msg, "Dockerfile:3: unknown flag --frob");
	kiln_error_free(err);
	err = NULL;
	at_line(&err, 0, "no %s", "context");
	assert_string_equal(err->msg, "no context");
	kiln_error_free(err);
	assert_int_equal(at_line(NULL, 1, "nobody reads this"), -EINVAL);
}

static void test_strv(void **state)
{
	char **v = xcalloc(4, sizeof(*v));

	v[0] = xstrdup("a");
	v[1] = xstrdup("b");
	assert_int_equal(kiln_strv_len(v), 2);
	assert_int_equal(kiln_strv_len(NULL), 0);
	/* Counted: every string freed (LeakSanitizer checks), NULL entries too. */
	v[2] = NULL;
	v[3] = xstrdup("d");
	kiln_strv_free(v, 4);
	kiln_strv_free(NULL, 3);
	/* NULL-terminated: counted with kiln_strv_len. */
	v = xcalloc(3, sizeof(*v));
	v[0] = xstrdup("x");
	v[1] = xstrdup("y");
	kiln_strv_free(v, kiln_strv_len(v));
}

static void test_mkdirat_beneath_refuses_escapes(void **state)
{
	char tmpl[] = "/tmp/kiln-basic.XXXXXX", *root = mkdtemp(tmpl);
	char outside[] = "/tmp/kiln-basic-out.XXXXXX", *out = mkdtemp(outside);
	_cleanup_free_ char *link = kiln_path_join(root, "link");
	_cleanup_free_ char *victim = kiln_path_join(out, "made");
	int rfd, fd;
	struct stat st;

	assert_non_null(root);
	assert_non_null(out);
	assert_int_equal(symlink(out, link), 0);
	rfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(rfd >= 0);
	fd = kiln_mkdirat_p_beneath(rfd, "a/b/c", 0755);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(kiln_mkdirat_p_beneath(rfd, "link/made", 0755) < 0, 1);
	assert_int_equal(kiln_mkdirat_p_beneath(rfd, "a/../../escape", 0755), -EXDEV);
	assert_int_equal(stat(victim, &st), -1); /* nothing outside */
	close(rfd);
	assert_int_equal(kiln_rm_rf(root), 0);
	assert_int_equal(kiln_rm_rf(out), 0);
}

static void test_rm_rf_stops_at_mounts(void **state)
{
	char tmpl[] = "/tmp/kiln-basic-rm.XXXXXX", *root = mkdtemp(tmpl);
	_cleanup_free_ char *mnt = kiln_path_join(root, "mnt");
	_cleanup_free_ char *keep = kiln_path_join(root, "mnt/keep");
	struct stat st;
	int fd;

	assert_non_null(root);
	assert_int_equal(mkdir(mnt, 0755), 0);
	if (mount("tmpfs", mnt, "tmpfs", 0, NULL) < 0)
		fail_msg("tmpfs mount failed (tests need root): %m");
	fd = open(keep, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(kiln_rm_rf(root), -EBUSY);
	assert_int_equal(stat(keep, &st), 0); /* the mount's content survived */
	assert_int_equal(umount(mnt), 0);
	assert_int_equal(kiln_rm_rf(root), 0);
	assert_int_equal(stat(root, &st), -1);
}

/* A bind mount of the same file system (same st_dev) is not descended. */
static void test_rm_rf_stops_at_bind_mounts(void **state)
{
	char tmpl[] = "/var/tmp/kiln-basic-bind.XXXXXX", *root = mkdtemp(tmpl);
	char vtmpl[] = "/var/tmp/kiln-basic-victim.XXXXXX", *victim = mkdtemp(vtmpl);
	_cleanup_free_ char *mnt = kiln_path_join(root, "bind");
	_cleanup_free_ char *keep = kiln_path_join(victim, "precious");
	struct stat st;
	int fd;

	assert_non_null(root);
	assert_non_null(victim);
	fd = open(keep, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(mkdir(mnt, 0755), 0);
	if (mount(victim, mnt, NULL, MS_BIND, NULL) < 0)
		fail_msg("bind mount failed (tests need root): %m");
	assert_int_equal(kiln_rm_rf(root), -EBUSY);
	assert_int_equal(stat(keep, &st), 0); /* the bind source survived */
	assert_int_equal(umount(mnt), 0);
	assert_int_equal(kiln_rm_rf(root), 0);
	assert_int_equal(kiln_rm_rf(victim), 0);
}

/* The lowest free fd: what leaked fds would push up. */
static int next_fd(void)
{
	int fd = dup(0);

	close(fd);
	return fd;
}

static void test_opendir_at(void **state)
{
	char tmpl[] = "/tmp/kiln-basic-d.XXXXXX", *root = mkdtemp(tmpl);
	_cleanup_close_ int rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	struct dirent *de;
	int fd0 = next_fd(), names = 0;
	DIR *d;

	assert_int_equal(mkdirat(rootfd, "sub", 0700), 0);
	assert_int_equal(symlinkat("sub", rootfd, "link"), 0);
	close(openat(rootfd, "sub/f", O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
	assert_int_equal(kiln_opendir_at(rootfd, "sub", 0, &d), 0);
	assert_true(fcntl(dirfd(d), F_GETFD) & FD_CLOEXEC);
	while ((de = readdir(d)))
		names += !strcmp(de->d_name, "f");
	assert_int_equal(names, 1);
	closedir(d);
	/* A symlink is followed unless asked not to. */
	assert_int_equal(kiln_opendir_at(rootfd, "link", 0, &d), 0);
	closedir(d);
	assert_int_equal(kiln_opendir_at(rootfd, "link", O_NOFOLLOW, &d), -ENOTDIR);
	assert_null(d);
	assert_int_equal(kiln_opendir_at(rootfd, "sub/f", 0, &d), -ENOTDIR);
	assert_int_equal(kiln_opendir_at(rootfd, "missing", 0, &d), -ENOENT);
	assert_null(d);
	/* Failures leave nothing open. */
	assert_int_equal(next_fd(), fd0);
	assert_int_equal(kiln_rm_rf(root), 0);
}

static void test_atomic_write(void **state)
{
	char tmpl[] = "/tmp/kiln-basic-w.XXXXXX", *root = mkdtemp(tmpl);
	_cleanup_free_ char *p = kiln_path_join(root, "f"), *data = NULL;
	size_t len;

	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, p, "abc", 3, 0600, true), 0);
	assert_int_equal(kiln_read_file_at(AT_FDCWD, p, 16, &data, &len), 0);
	assert_int_equal(len, 3);
	assert_string_equal(data, "abc");
	free(data);
	data = NULL;
	assert_int_equal(kiln_read_file_at(AT_FDCWD, p, 2, &data, &len), -EFBIG);
	assert_int_equal(kiln_rm_rf(root), 0);
}

struct lines {
	char got[8][16];
	int n, stop_at;
};

static int collect_line(void *ud, char *line, size_t len)
{
	struct lines *l = ud;

	if (l->n == l->stop_at)
		return -ECANCELED;
	assert_true(len < sizeof(l->got[0]) && l->n < 8);
	memcpy(l->got[l->n], line, len);
	l->got[l->n++][len] = '\0';
	return 0;
}

/* Lines across pieces: whole ones to fn, the unfinished one kept. */
static void test_feed_lines(void **state)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(8);
	struct lines l = { .stop_at = -1 };

	assert_int_equal(kiln_strbuf_feed_lines(&sb, "ab", 2, collect_line, &l), 0);
	assert_int_equal(l.n, 0);
	assert_int_equal(kiln_strbuf_feed_lines(&sb, "c\n\nde\nf", 7, collect_line, &l), 0);
	assert_int_equal(l.n, 3);
	assert_string_equal(l.got[0], "abc");
	assert_string_equal(l.got[1], ""); /* an empty line is a line */
	assert_string_equal(l.got[2], "de");
	assert_int_equal(sb.len, 1);
	/* fn's error stops the feed; a line over the limit is -E2BIG. */
	l.stop_at = 3;
	assert_int_equal(kiln_strbuf_feed_lines(&sb, "g\nh\n", 4, collect_line, &l), -ECANCELED);
	assert_int_equal(l.n, 3);
	kiln_strbuf_reset(&sb);
	assert_int_equal(kiln_strbuf_feed_lines(&sb, "123456789\n", 10, collect_line, &l),
			 -E2BIG);
	kiln_strbuf_release(&sb);
}

static void test_utf8(void **state)
{
	static const struct {
		const char *s;
		size_t len, n;
		uint32_t cp;
	} cases[] = {
		{ "A", 1, 1, 'A' },
		{ "", 1, 1, 0 },                       /* NUL is valid */
		{ "\xc3\xa9", 2, 2, 0xe9 },             /* é */
		{ "\xe2\x80\x98", 3, 3, 0x2018 },        /* ‘ */
		{ "\xf0\x9f\x94\xa5", 4, 4, 0x1f525 },   /* 🔥 */
		{ "\xc0\xaf", 2, 0, 0xfffd },            /* overlong */
		{ "\xe0\x80\xaf", 3, 0, 0xfffd },        /* overlong */
		{ "\xed\xa0\x80", 3, 0, 0xfffd },        /* a surrogate */
		{ "\xf4\x90\x80\x80", 4, 0, 0xfffd },    /* past U+10FFFF */
		{ "\xe2\x80", 2, 0, 0xfffd },            /* cut short */
		{ "\x80", 1, 0, 0xfffd },                /* a lone continuation */
		{ "\xc3" "A", 2, 0, 0xfffd },           /* continuation missing */
	};
	static const char mixed[] = "ok \xc3\xa9\xff\0x\xe2\x80";
	static const char want[] = "ok \xc3\xa9\xef\xbf\xbd\xef\xbf\xbd" "x\xef\xbf\xbd\xef\xbf\xbd";
	_cleanup_free_ char *clean = NULL;
	uint32_t cp;
	size_t i, n;

	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		n = kiln_utf8_decode(cases[i].s, cases[i].len, &cp);
		if (n != cases[i].n || cp != cases[i].cp)
			fail_msg("case %zu: %zu bytes, U+%04X", i, n, (unsigned)cp);
	}
	/* A sequence the end cuts short is kept for the next piece. */
	assert_int_equal(kiln_utf8_cut_tail("ab", 2), 0);
	assert_int_equal(kiln_utf8_cut_tail("a\xc3", 2), 1);
	assert_int_equal(kiln_utf8_cut_tail("a\xe2\x80", 3), 2);
	assert_int_equal(kiln_utf8_cut_tail("a\xf0\x9f\x94", 4), 3);
	assert_int_equal(kiln_utf8_cut_tail("a\xf0\x9f\x94\xa5", 5), 0); /* whole */
	assert_int_equal(kiln_utf8_cut_tail("a\xc3\xa9", 3), 0);
	assert_int_equal(kiln_utf8_cut_tail("\x80\x80\x80", 3), 0); /* no lead */
	assert_int_equal(kiln_utf8_cut_tail("", 0), 0);
	/* Valid text as it is; each bad byte, each NUL, a cut end: one U+FFFD each. */
	clean = kiln_utf8_clean(mixed, sizeof(mixed) - 1, &n);
	assert_int_equal(n, strlen(want));
	assert_string_equal(clean, want);
}

/* kiln_child_exec_guarded: `sleep 30` behind a guard, forked by this thread. */
static pid_t guarded_sleep(void)
{
	_cleanup_free_ char *sleep = kiln_find_program("sleep");
	char *argv[] = { "sleep", "30", NULL };
	char *env[] = { NULL };
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	struct kiln_child c = { .parent = getpid(), .deathsig = SIGTERM, .in = null, .out = null,
				.err = null, .max_fd = kiln_child_max_fd() };
	pid_t pid;

	assert_non_null(sleep);
	pid = fork();
	if (pid == 0)
		kiln_child_exec_guarded(&c, sleep, argv, env);
	close(null);
	return pid;
}

static void *fork_and_end(void *ud)
{
	*(pid_t *)ud = guarded_sleep();
	/*
	 * Ending before the guard's prctl would go unnoticed (the getppid()
	 * check sees the process, not the thread): kiln's main thread lives on.
	 */
	usleep(300000);
	return NULL; /* this thread ends: the guard gets its death signal */
}

/* The exit status of pid, waiting 5 s at most (-1: still running). */
static int wait_5s(pid_t pid)
{
	int i, st;

	for (i = 0; i < 500; i++) {
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

static void test_child_guarded(void **state)
{
	pthread_t t;
	pid_t pid;

	(void)state;
	/* SIGTERM to the guard reaches the program; the guard exits with it */
	pid = guarded_sleep();
	assert_true(pid > 0);
	usleep(100000);
	kill(pid, SIGTERM);
	assert_int_equal(wait_5s(pid), 128 + SIGTERM);
	/* the thread that forked it ends: so does the program */
	assert_int_equal(pthread_create(&t, NULL, fork_and_end, &pid), 0);
	pthread_join(t, NULL);
	assert_true(pid > 0);
	assert_int_equal(wait_5s(pid), 128 + SIGTERM);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_path_clean),
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_strbuf_limit),
		cmocka_unit_test(test_error_prefix),
		cmocka_unit_test(test_error_setv),
		cmocka_unit_test(test_strv),
		cmocka_unit_test(test_mkdirat_beneath_refuses_escapes),
		cmocka_unit_test(test_rm_rf_stops_at_mounts),
		cmocka_unit_test(test_rm_rf_stops_at_bind_mounts),
		cmocka_unit_test(test_opendir_at),
		cmocka_unit_test(test_atomic_write),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_feed_lines),
		cmocka_unit_test(test_child_guarded),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
