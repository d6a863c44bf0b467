/* Unit tests for .dockerignore patterns and source.local snapshots. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/strv.h"
#include "cas/tree.h"
#include "source/local.h"

/* ---- patterns ---- */

struct match_case {
	const char *patterns[4]; /* NULL-terminated */
	const char *path;
	bool match;
};

/*
 * Expected results are Docker's (moby/patternmatcher MatchesOrParentMatches
 * after ignorefile.ReadAll normalization); most rows come from its tests.
 */
static const struct match_case match_cases[] = {
	/* "*" and "?" never cross a slash */
	{ { "*" }, "fileutils.go", true },
	{ { "*.go" }, "fileutils.go", true },
	{ { "*.go" }, "dir/fileutils.go", false },
	{ { "*c" }, "abc", true },
	{ { "a*" }, "ab/c", true }, /* parent "ab" matches */
	{ { "a*/b" }, "abc/b", true },
	{ { "a*/b" }, "a/c/b", false },
	{ { "a*b*c*d*e*/f" }, "axbxcxdxexxx/f", true },
	{ { "a*b*c*d*e*/f" }, "axbxcxdxe/xxx/f", false },
	{ { "a*b?c*x" }, "abxbbxdbxebxczzx", true },
	{ { "a*b?c*x" }, "abxbbxdbxebxczzy", false },
	{ { "abc?def" }, "abcZdef", true },
	{ { "abc?def" }, "abcdef", false },
	{ { "a?b" }, "a/b", false },
	{ { "a*b" }, "a/b", false },
	{ { "a?b" }, "a\xe2\x98\xba" "b", true },      /* one UTF-8 character */
	{ { "a???b" }, "a\xe2\x98\xba" "b", false },
	/* classes */
	{ { "a[b-d]e" }, "ace", true },
	{ { "a[b-d]e" }, "ae", false },
	{ { "a[b-d]e" }, "aae", false },
	{ { "a[^b-d]e" }, "aze", true },
	{ { "ab[^c]" }, "abc", false },
	{ { "ab[^e-g]" }, "abc", true },
	{ { "a[^a]b" }, "a\xe2\x98\xba" "b", true },
	{ { "[a-\xce\xb6]*" }, "\xce\xb1", true },      /* [a-ζ]* vs α */
	{ { "*[a-\xce\xb6]" }, "A", false },
	{ { "[\\]a]" }, "]", true },
	{ { "[\\-]" }, "-", true },
	{ { "[x\\-]" }, "-", true },
	{ { "[x\\-]" }, "z", false },
	/* escapes */
	{ { "a\\*b" }, "a*b", true },
	{ { "a\\*b" }, "ab", false },
	{ { "a\\*b" }, "axb", false },
	{ { "a\\\\" }, "a\\", true },
	/* regexp metacharacters are literal */
	{ { ".*" }, ".foo", true },
	{ { ".*" }, "foo", false },
	{ { "abc.def" }, "abcZdef", false },
	{ { "a(b)c/def" }, "a(b)c/def", true },
	{ { "a.|)$(}+{bc" }, "a.|)$(}+{bc", true },
	{ { "dist/*.whl" }, "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl", true },
	/* "**" */
	{ { "**" }, "file", true },
	{ { "**" }, "dir/file", true },
	{ { "**/" }, "dir/file", true },
	{ { "**/**" }, "dir/file", true },
	{ { "dir/**" }, "dir/dir2/file", true },
	{ { "abc/**" }, "abc", false },
	{ { "abc/**" }, "abc/def/ghi", true },
	{ { "**/dir" }, "dir", true },
	{ { "**/dir" }, "dir/file", true },
	{ { "**/dir2/*" }, "dir/dir2/file", true },
	{ { "**/dir2/**" }, "dir/dir2/dir3/file", true },
	{ { "**file" }, "dir/dir/file", true },
	{ { "**/file" }, "dir/file", true },
	{ { "**/file*.txt" }, "dir/dir/file.txt", true },
	{ { "**/**/*.txt2" }, "dir/dir/file.txt", false },
	{ { "**/*.txt" }, "file.txt", true },
	{ { "a**/*.txt" }, "a/dir/dir/file.txt", true },
	{ { "a/*.txt" }, "a/dir/file.txt", false },
	{ { "a/*.txt**" }, "a/file.txt", true },
	{ { "**/foo/bar" }, "dir/dir2/foo/bar", true },
	{ { "**/.foo" }, ".foo", true },
	{ { "**/.foo" }, "bar.foo", false },
	{ { "**/node_modules" }, "a/node_modules/x/y.js", true },
	{ { "a/**/b" }, "a/b", true },
	{ { "a/**/b" }, "a/x/y/b", true },
	{ { "**file" }, "dir/myfile", true }, /* suffix shortcut quirk */
	{ { "**/file" }, "dir/myfile", false },
	{ { "[!a]" }, "!", true }, /* not a negation in Docker */
	{ { "[!a]" }, "b", false },
	/* a directory pattern covers what is below it */
	{ { "docs" }, "docs/README.md", true },
	{ { "docs/" }, "docs/sub/README.md", true },
	{ { "docs" }, "docsx/README.md", false },
	{ { "docs/*" }, "docs", false },
	/* normalization: leading "/", "./", "..", whitespace */
	{ { "/docs" }, "docs/x", true },
	{ { "./docs" }, "docs/x", true },
	{ { "docs/../src" }, "src/a.c", true },
	{ { "  docs  " }, "docs", true },
	{ { "docs", "!/docs/keep" }, "docs/keep", false },
	{ { "docs", "! ./docs/keep" }, "docs/keep", false },
	/* exceptions: the last matching pattern decides */
	{ { "docs", "!docs/README.md" }, "docs/README.md", false },
	{ { "docs", "!docs/README.md" }, "docs/other.md", true },
	{ { "docs/", "!docs/README.md" }, "docs/README.md", false },
	{ { "docs/*", "!docs/README.md" }, "docs/README.md", false },
	{ { "*.go", "!fileutils.go" }, "fileutils.go", false },
	{ { "!fileutils.go", "*.go" }, "fileutils.go", true },
	{ { "*.md", "!README*.md", "README-secret.md" }, "README-secret.md", true },
	{ { "*.md", "!README*.md", "README-secret.md" }, "README.md", false },
	{ { "**", "!util/docker/web" }, "util/docker/web/foo", false },
	{ { "**", "!util/docker/web", "util/docker/web/foo" }, "util/docker/web/foo", true },
	{ { "**", "!dist/*.whl" }, "dist/proxy.py-2.4.0rc3-py3-none-any.whl", false },
	{ { "**", "!dist/*.whl" }, "dist/other.tar", true },
	/* "^" outside a class is a regexp anchor in Docker, not a literal */
	{ { "a^b*" }, "a^bc", false },
	{ { "a^b" }, "a^b", true },
};

static void test_pattern_table(void **state)
{
	size_t i, n;

	for (i = 0; i < ARRAY_SIZE(match_cases); i++) {
		const struct match_case *mc = &match_cases[i];
		struct kiln_patterns *p = NULL;
		_cleanup_error_ struct kiln_error *err = NULL;
		bool got;

		for (n = 0; n < 4 && mc->patterns[n]; n++)
			;
		if (kiln_patterns_new(mc->patterns, n, &p, &err) < 0)
			fail_msg("case %zu (%s): %s", i, mc->patterns[0],
				 kiln_error_msg(err));
		got = kiln_patterns_match(p, mc->path);
		if (got != mc->match)
			fail_msg("case %zu: patterns [%s%s%s] path \"%s\": got %d want %d",
				 i, mc->patterns[0], n > 1 ? ", " : "",
				 n > 1 ? mc->patterns[1] : "", mc->path, got,
				 mc->match);
		kiln_patterns_free(p);
	}
	assert_true(ARRAY_SIZE(match_cases) >= 30);
}

static void test_pattern_errors(void **state)
{
	static const char *const bad[] = {
		"[", "a[", "[^", "[^bc", "[]a]", "[-]", "[x-]", "[-x]",
		"[a-b-c]", "\\", "!", "ok/*", /* last one valid: checked below */
	};
	size_t i;

	for (i = 0; i + 1 < ARRAY_SIZE(bad); i++) {
		const char *pats[] = { "fine", bad[i] };
		struct kiln_patterns *p = NULL;
		_cleanup_error_ struct kiln_error *err = NULL;

		assert_int_equal(kiln_patterns_new(pats, 2, &p, &err), -EINVAL);
		assert_null(p);
		if (!strstr(kiln_error_msg(err), bad[i]))
			fail_msg("error for \"%s\" does not name it: %s", bad[i],
				 kiln_error_msg(err));
	}
	{
		struct kiln_patterns *p = NULL;

		assert_int_equal(kiln_patterns_new(&bad[i], 1, &p, NULL), 0);
		kiln_patterns_free(p);
	}
}

static bool below(const char *const *pats, size_t n, const char *dir)
{
	struct kiln_patterns *p = NULL;
	bool r;

	assert_int_equal(kiln_patterns_new(pats, n, &p, NULL), 0);
	r = kiln_patterns_may_match_below(p, dir);
	kiln_patterns_free(p);
	return r;
}

static void test_may_match_below(void **state)
{
	const char *const plain[] = { "build" };
	const char *const prefix[] = { "build", "!build/keep.txt" };
	const char *const wild[] = { "build", "!build/*/keep" };
	const char *const deep[] = { "build", "!**/keep" };
	const char *const other[] = { "build", "!src/keep" };

	assert_false(below(plain, 1, "build"));
	assert_true(below(prefix, 2, "build"));
	assert_false(below(prefix, 2, "src"));
	assert_true(below(wild, 2, "build"));
	assert_true(below(wild, 2, "build/x"));
	assert_false(below(wild, 2, "build/x/keep2"));
	assert_true(below(deep, 2, "any/where"));
	assert_false(below(other, 2, "build"));
}

static void test_may_include_below(void **state)
{
	const char *const inc[] = { "src/lib/*.c" };
	struct kiln_patterns *p = NULL;

	assert_int_equal(kiln_patterns_new(inc, 1, &p, NULL), 0);
	assert_true(kiln_patterns_may_include_below(p, "src"));
	assert_true(kiln_patterns_may_include_below(p, "src/lib"));
	assert_false(kiln_patterns_may_include_below(p, "docs"));
	assert_false(kiln_patterns_may_include_below(p, "src/other"));
	kiln_patterns_free(p);
}

static void test_dockerignore_parse(void **state)
{
	static const char text[] = "\xef\xbb\xbf# comment\n"
				   "\n"
				   "  /build/  \r\n"
				   " # not a comment\n"
				   "! ./docs/keep.md\n"
				   "*.tmp";
	char **pats = NULL;
	size_t n = 0;

	assert_int_equal(kiln_dockerignore_parse(text, sizeof(text) - 1, &pats,
						 &n, NULL),
			 0);
	assert_int_equal(n, 4);
	assert_string_equal(pats[0], "build");
	assert_string_equal(pats[1], "# not a comment");
	assert_string_equal(pats[2], "!docs/keep.md");
	assert_string_equal(pats[3], "*.tmp");
	assert_null(pats[4]);
	kiln_strv_free(pats, n);
}

/* ---- snapshots ---- */

struct fixture {
	char *dir;  /* temp root */
	char *ctx;  /* the build context */
	char *outside;
	struct kiln_store *store;
	struct kiln_cache *cache;
};

static void write_file(const char *dir, const char *rel, const char *data)
{
	_cleanup_free_ char *path = xasprintf("%s/%s", dir, rel);
	_cleanup_free_ char *parent = xstrdup(path);

	*strrchr(parent, '/') = '\0';
	assert_int_equal(kiln_mkdir_p(parent, 0755), 0);
	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, path, data,
						   strlen(data), 0644, false),
			 0);
}

static void rewrite_in_place(const char *dir, const char *rel, const char *data)
{
	_cleanup_free_ char *path = xasprintf("%s/%s", dir, rel);
	_cleanup_close_ int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(kiln_write_full(fd, data, strlen(data)), 0);
}

/*
 * File times come from the coarse clock; the stat cache only remembers
 * files changed before a snapshot's clock tick (see local.c), so wait one.
 */
static void wait_tick(void)
{
	struct timespec ts = { 0, 30 * 1000 * 1000 };

	nanosleep(&ts, NULL);
}

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	char tmpl[] = "/tmp/kiln-test-local-XXXXXX";
	struct kiln_store_options so = { .durable = false };
	_cleanup_free_ char *store = NULL, *db = NULL, *link = NULL;
	_cleanup_error_ struct kiln_error *err = NULL;

	assert_non_null(mkdtemp(tmpl));
	f->dir = xstrdup(tmpl);
	f->ctx = xasprintf("%s/ctx", f->dir);
	f->outside = xasprintf("%s/outside/secret", f->dir);
	store = xasprintf("%s/store", f->dir);
	db = xasprintf("%s/index.db", f->dir);
	write_file(f->dir, "outside/secret", "outside-secret-content-7f3a");
	write_file(f->ctx, "Dockerfile", "FROM scratch\n");
	write_file(f->ctx, "src/main.c", "int main(void) { return 0; }\n");
	write_file(f->ctx, "src/util.c", "int util;\n");
	write_file(f->ctx, "build/out.o", "object");
	write_file(f->ctx, "build/keep.txt", "keep me");
	write_file(f->ctx, "docs/readme.md", "# docs\n");
	link = xasprintf("%s/link", f->ctx);
	assert_int_equal(symlink(f->outside, link), 0);
	if (kiln_store_open(store, &so, &f->store, &err) < 0)
		fail_msg("store: %s", kiln_error_msg(err));
	if (kiln_cache_open(db, &f->cache, &err) < 0)
		fail_msg("cache: %s", kiln_error_msg(err));
	wait_tick();
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	kiln_cache_free(f->cache);
	kiln_store_free(f->store);
	assert_int_equal(kiln_rm_rf(f->dir), 0);
	free(f->dir);
	free(f->ctx);
	free(f->outside);
	free(f);
	return 0;
}

static void snap(struct fixture *f, const char *const *inc, size_t n_inc,
		 const char *const *exc, size_t n_exc, struct kiln_digest *out,
		 struct kiln_local_stats *stats)
{
	_cleanup_error_ struct kiln_error *err = NULL;

	if (kiln_local_snapshot(f->store, f->cache, f->ctx, inc, n_inc, exc,
				n_exc, out, stats, &err) < 0)
		fail_msg("snapshot: %s", kiln_error_msg(err));
}

static bool has(struct fixture *f, const struct kiln_digest *root,
		const char *path)
{
	struct kiln_tree_entry e = { 0 };
	int r = kiln_tree_lookup(f->store, root, path, &e, NULL);

	kiln_tree_entry_release(&e);
	if (r != 0 && r != -ENOENT)
		fail_msg("lookup %s: %d", path, r);
	return r == 0;
}

static void test_snapshot_excludes(void **state)
{
	struct fixture *f = *state;
	const char *const exc[] = { "build", "!build/keep.txt", "docs", "*.md" };
	struct kiln_digest d;

	snap(f, NULL, 0, exc, ARRAY_SIZE(exc), &d, NULL);
	assert_true(has(f, &d, "Dockerfile"));
	assert_true(has(f, &d, "src/main.c"));
	assert_true(has(f, &d, "build/keep.txt"));
	assert_false(has(f, &d, "build/out.o"));
	assert_false(has(f, &d, "docs/readme.md"));
	assert_false(has(f, &d, "docs"));
}

static void test_snapshot_includes(void **state)
{
	struct fixture *f = *state;
	const char *const inc[] = { "src" };
	const char *const inc_glob[] = { "src/*.c", "build/keep.txt" };
	const char *const exc[] = { "src/util.c" };
	struct kiln_digest d;

	snap(f, inc, 1, NULL, 0, &d, NULL);
	assert_true(has(f, &d, "src/main.c"));
	assert_true(has(f, &d, "src/util.c"));
	assert_false(has(f, &d, "Dockerfile"));
	assert_false(has(f, &d, "build"));

	snap(f, inc_glob, 2, exc, 1, &d, NULL);
	assert_true(has(f, &d, "src/main.c"));
	assert_false(has(f, &d, "src/util.c"));
	assert_true(has(f, &d, "build/keep.txt"));
	assert_false(has(f, &d, "build/out.o"));
	assert_false(has(f, &d, "docs"));
}

static void test_snapshot_stat_cache(void **state)
{
	struct fixture *f = *state;
	struct kiln_digest d1, d2, d3;
	struct kiln_local_stats st;

	snap(f, NULL, 0, NULL, 0, &d1, &st);
	assert_int_equal(st.files, 6);
	assert_int_equal(st.files_hashed, 6);
	assert_true(st.bytes_hashed > 0);

	snap(f, NULL, 0, NULL, 0, &d2, &st);
	assert_int_equal(st.files, 6);
	assert_int_equal(st.files_hashed, 0);
	assert_int_equal(st.bytes_hashed, 0);
	assert_true(kiln_digest_eq(&d1, &d2));

	/* Same inode, same size, new content: only the times can tell. */
	rewrite_in_place(f->ctx, "src/util.c", "int UTIL;\n");
	snap(f, NULL, 0, NULL, 0, &d3, &st);
	assert_int_equal(st.files_hashed, 1);
	assert_int_equal(st.bytes_hashed, strlen("int UTIL;\n"));
	assert_false(kiln_digest_eq(&d1, &d3));

	/* Without a cache every file is read. */
	{
		_cleanup_error_ struct kiln_error *err = NULL;

		assert_int_equal(kiln_local_snapshot(f->store, NULL, f->ctx, NULL, 0,
						     NULL, 0, &d2, &st, &err),
				 0);
		assert_int_equal(st.files_hashed, 6);
		assert_true(kiln_digest_eq(&d2, &d3));
	}
}

static void test_snapshot_touch(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *path = xasprintf("%s/Dockerfile", f->ctx);
	struct timespec times[2] = { { 1000000, 0 }, { 1000000, 0 } };
	struct kiln_digest d1, d2;
	struct kiln_local_stats st;

	snap(f, NULL, 0, NULL, 0, &d1, &st);
	assert_int_equal(utimensat(AT_FDCWD, path, times, 0), 0);
	snap(f, NULL, 0, NULL, 0, &d2, &st);
	assert_int_equal(st.files_hashed, 1);
	assert_false(kiln_digest_eq(&d1, &d2)); /* mtime is in the tree */
}

static void test_snapshot_symlink_outside(void **state)
{
	struct fixture *f = *state;
	struct kiln_tree_entry e = { 0 };
	struct kiln_digest d, secret;
	const char *content = "outside-secret-content-7f3a";

	snap(f, NULL, 0, NULL, 0, &d, NULL);
	assert_int_equal(kiln_tree_lookup(f->store, &d, "link", &e, NULL), 0);
	assert_int_equal(e.type, KILN_ENTRY_SYMLINK);
	assert_string_equal(e.target, f->outside);
	assert_int_equal(e.uid, 0);
	kiln_tree_entry_release(&e);
	kiln_digest_buf(content, strlen(content), &secret);
	assert_false(kiln_store_has(f->store, &secret));
}

/*
 * An include naming a symlink also brings the link's target (BuildKit's
 * FollowPaths, fsutil followlinks.go), resolved inside the context: a
 * link that climbs out with ".." or is absolute names a context path.
 */
static void test_snapshot_include_follows_links(void **state)
{
	struct fixture *f = *state;
	const char *const inc_rel[] = { "alias" };
	const char *const inc_abs[] = { "abs" };
	const char *const inc_chain[] = { "chain" };
	const char *const inc_dir[] = { "dirlink/main.c" };
	const char *const inc_esc[] = { "esc", "link" };
	const char *const inc_root[] = { "up" };
	const struct {
		const char *name, *target;
	} links[] = {
		{ "alias", "src/main.c" },     { "abs", "/docs/readme.md" },
		{ "chain", "alias" },          { "dirlink", "src" },
		{ "esc", "../../outside/secret" }, { "up", ".." },
	};
	const char *content = "outside-secret-content-7f3a";
	struct kiln_digest d, secret;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(links); i++) {
		_cleanup_free_ char *p = xasprintf("%s/%s", f->ctx, links[i].name);
		assert_int_equal(symlink(links[i].target, p), 0);
	}

	snap(f, inc_rel, 1, NULL, 0, &d, NULL);
	assert_true(has(f, &d, "alias"));
	assert_true(has(f, &d, "src/main.c"));
	assert_false(has(f, &d, "src/util.c"));
	assert_false(has(f, &d, "Dockerfile"));

	snap(f, inc_abs, 1, NULL, 0, &d, NULL);
	assert_true(has(f, &d, "abs"));
	assert_true(has(f, &d, "docs/readme.md"));
	assert_false(has(f, &d, "src"));

	snap(f, inc_chain, 1, NULL, 0, &d, NULL);
	assert_true(has(f, &d, "chain"));
	assert_true(has(f, &d, "alias"));
	assert_true(has(f, &d, "src/main.c"));
	assert_false(has(f, &d, "src/util.c"));

	snap(f, inc_dir, 1, NULL, 0, &d, NULL);
	assert_true(has(f, &d, "dirlink"));
	assert_true(has(f, &d, "src/main.c"));
	assert_false(has(f, &d, "src/util.c"));

	/* Out of the context: the links are kept, nothing outside is read. */
	snap(f, inc_esc, 2, NULL, 0, &d, NULL);
	assert_true(has(f, &d, "esc"));
	assert_true(has(f, &d, "link"));
	assert_false(has(f, &d, "outside"));
	assert_false(has(f, &d, "src"));
	kiln_digest_buf(content, strlen(content), &secret);
	assert_false(kiln_store_has(f->store, &secret));

	/* A link to the root (or above it) selects the whole context. */
	snap(f, inc_root, 1, NULL, 0, &d, NULL);
	assert_true(has(f, &d, "Dockerfile"));
	assert_true(has(f, &d, "src/util.c"));
	assert_false(kiln_store_has(f->store, &secret));
}

static void test_snapshot_errors(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *missing = xasprintf("%s/no-such-dir", f->dir);
	const char *const bad[] = { "src/[oops" };
	struct kiln_digest d;
	struct kiln_error *err = NULL;

	assert_int_equal(kiln_local_snapshot(f->store, f->cache, missing, NULL, 0,
					     NULL, 0, &d, NULL, &err),
			 -ENOENT);
	assert_non_null(strstr(kiln_error_msg(err), missing));
	kiln_error_free(err);
	err = NULL;
	assert_int_equal(kiln_local_snapshot(f->store, f->cache, f->ctx, NULL, 0,
					     bad, 1, &d, NULL, &err),
			 -EINVAL);
	assert_non_null(strstr(kiln_error_msg(err), "src/[oops"));
	kiln_error_free(err);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pattern_table),
		cmocka_unit_test(test_pattern_errors),
		cmocka_unit_test(test_may_match_below),
		cmocka_unit_test(test_may_include_below),
		cmocka_unit_test(test_dockerignore_parse),
		cmocka_unit_test_setup_teardown(test_snapshot_excludes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_snapshot_includes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_snapshot_stat_cache, setup, teardown),
		cmocka_unit_test_setup_teardown(test_snapshot_touch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_snapshot_symlink_outside, setup, teardown),
		cmocka_unit_test_setup_teardown(test_snapshot_include_follows_links, setup, teardown),
		cmocka_unit_test_setup_teardown(test_snapshot_errors, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
