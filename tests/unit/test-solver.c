/* file/merge ops on trees, and the solver's cache behaviour. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cache/index.h"
#include "cas/tree.h"
#include "solver/definition.h"
#include "solver/fileop.h"
#include "solver/solve.h"
#include "rcache/rcache.h"

struct fx {
	char *dir;   /* temp root */
	char *src;   /* source directory */
	struct kiln_store *store;
	struct kiln_digest src_tree;
};

static void write_file(const char *dir, const char *rel, const char *data)
{
	_cleanup_free_ char *p = kiln_path_join(dir, rel);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(kiln_write_full(fd, data, strlen(data)), 0);
	close(fd);
}

static int setup(void **state)
{
	struct fx *f = xcalloc(1, sizeof(*f));
	char tmpl[] = "/tmp/kiln-solver.XXXXXX";
	struct kiln_store_options so = { .durable = false };
	_cleanup_free_ char *cas = NULL, *sub = NULL;
	int fd;

	f->dir = xstrdup(mkdtemp(tmpl));
	f->src = kiln_path_join(f->dir, "src");
	cas = kiln_path_join(f->dir, "cas");
	sub = kiln_path_join(f->src, "dir/sub");
	assert_int_equal(kiln_mkdir_p(sub, 0755), 0);
	write_file(f->src, "a.txt", "A");
	write_file(f->src, "b.txt", "B");
	write_file(f->src, "dir/x", "X");
	write_file(f->src, "dir/sub/y", "Y");
	{
		_cleanup_free_ char *etc = kiln_path_join(f->src, "etc");
		_cleanup_free_ char *cmd = NULL;
		assert_int_equal(mkdir(etc, 0755), 0);
		write_file(f->src, "etc/passwd", "root:x:0:0::/root:/bin/sh\nbuilder:x:1000:1001::/home/b:/bin/sh\n");
		write_file(f->src, "etc/group", "root:x:0:\nstaff:x:50:\n");
		/* An archive for ADD-style extraction: arc/{in.txt,deep/z}. */
		cmd = xasprintf("set -e; cd %s && mkdir -p t/deep && echo IN > t/in.txt && echo Z > t/deep/z && "
				"tar -C t -czf a.tar.gz . && echo kept > t/.wh.note && tar -C t -cjf b.tar.bz2 . && "
				"tar -C t -czf data.bin . && echo 'not a tar' > fake.tar.gz && "
				"echo 'just text' | gzip -n > note.txt.gz && tar -C t -cJf x.tar.xz.bin . && "
				"(cd t && tar -P -cf ../evil.bin ../a.txt) && "
				"rm -r t && echo plain > notar.gz.txt", f->src);
		assert_int_equal(system(cmd), 0);
	}
	{
		_cleanup_free_ char *l = kiln_path_join(f->src, "link");
		assert_int_equal(symlink("dir", l), 0);
	}
	assert_int_equal(kiln_store_open(cas, &so, &f->store, NULL), 0);
	fd = open(f->src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_int_equal(kiln_tree_from_dir(f->store, fd, NULL, &f->src_tree, NULL), 0);
	close(fd);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	kiln_store_free(f->store);
	kiln_rm_rf(f->dir);
	free(f->src);
	free(f->dir);
	free(f);
	return 0;
}

/*
 * Run one file op given as JSON actions, with input 0 = the source tree
 * ("src") and the base = the source tree too when with_base.
 */
static int run_actions(struct fx *f, const char *actions, bool with_base,
		       struct kiln_digest *out, struct kiln_error **err)
{
	_cleanup_free_ char *json = xasprintf(
		"{\"version\":1,\"ops\":[{\"id\":\"src\",\"op\":\"source.local\",\"path\":\"/x\"},"
		"{\"id\":\"f\",\"op\":\"file\",%s\"actions\":%s}],\"output\":\"f\"}",
		with_base ? "\"input\":\"src\"," : "", actions);
	struct kiln_definition *d = NULL;
	struct kiln_digest ins[4];
	size_t i;
	int r;

	r = kiln_definition_parse(json, strlen(json), "t.json", "/", "linux/amd64", &d, NULL);
	assert_int_equal(r, 0);
	for (i = 0; i < d->ops[1].n_inputs; i++)
		ins[i] = f->src_tree;
	r = kiln_fileop_run(f->store, &d->ops[1], with_base ? &ins[0] : NULL, ins, out, err);
	kiln_definition_free(d);
	return r;
}

/* Type of path in tree (0 = missing) and, for files, content. */
static int kind(struct fx *f, const struct kiln_digest *t, const char *path, char **content)
{
	struct kiln_tree_entry e = { 0 };
	int type;

	if (kiln_tree_lookup(f->store, t, path, &e, NULL) < 0)
		return 0;
	type = e.type;
	if (content && e.type == KILN_ENTRY_FILE) {
		size_t len;
		assert_int_equal(kiln_store_read(f->store, &e.digest, 1 << 20, content, &len, NULL), 0);
	}
	kiln_tree_entry_release(&e);
	return type;
}

static void expect_file(struct fx *f, const struct kiln_digest *t, const char *path,
			const char *want)
{
	char *c = NULL;

	if (kind(f, t, path, &c) != KILN_ENTRY_FILE)
		fail_msg("%s is not a file", path);
	assert_string_equal(c, want);
	free(c);
}

static void test_copy_rules(void **state)
{
	struct fx *f = *state;
	struct kiln_digest t;

	/* A file to a new path; into a dir with a trailing slash. */
	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/a.txt\",\"dest\":\"/new\"},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/a.txt\",\"dest\":\"/d/e/\"}]",
				     false, &t, NULL), 0);
	expect_file(f, &t, "new", "A");
	expect_file(f, &t, "d/e/a.txt", "A");
	/* A directory is copied as dest; "dir/." copies its contents. */
	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/dir\",\"dest\":\"/out\"},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/dir/.\",\"dest\":\"/flat/\"}]",
				     false, &t, NULL), 0);
	expect_file(f, &t, "out/x", "X");
	expect_file(f, &t, "out/sub/y", "Y");
	expect_file(f, &t, "flat/x", "X");
	assert_int_equal(kind(f, &t, "flat/dir", NULL), 0);
	/* Wildcards; a symlink in the source path resolves inside the tree. */
	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/*.txt\",\"dest\":\"/w/\"},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/link/sub/y\",\"dest\":\"/via\"}]",
				     false, &t, NULL), 0);
	expect_file(f, &t, "w/a.txt", "A");
	expect_file(f, &t, "w/b.txt", "B");
	expect_file(f, &t, "via", "Y");
}

static void test_copy_exclude(void **state)
{
	struct fx *f = *state;
	struct kiln_digest t;

	/* Patterns are relative to the copied directory; "!" brings back. */
	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/dir/.\",\"dest\":\"/o/\","
				       "\"exclude\":[\"x\"]},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/.\",\"dest\":\"/r/\","
				       "\"exclude\":[\"*.txt\",\"!b.txt\",\"dir\",\"etc/group\",\"*.gz\",\"*.bin\",\"*.bz2\"]},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/dir\",\"dest\":\"/e\","
				       "\"exclude\":[\"**\",\"!sub/y\"]}]",
				     false, &t, NULL), 0);
	assert_int_equal(kind(f, &t, "o/x", NULL), 0);
	expect_file(f, &t, "o/sub/y", "Y");
	assert_int_equal(kind(f, &t, "r/a.txt", NULL), 0);
	expect_file(f, &t, "r/b.txt", "B");
	assert_int_equal(kind(f, &t, "r/dir", NULL), 0);
	assert_int_equal(kind(f, &t, "r/etc/group", NULL), 0);
	assert_int_equal(kind(f, &t, "r/etc", NULL), KILN_ENTRY_DIR);
	assert_int_equal(kind(f, &t, "r/link", NULL), KILN_ENTRY_SYMLINK);
	/* an excluded directory is walked for an exception, kept for it */
	assert_int_equal(kind(f, &t, "e/x", NULL), 0);
	expect_file(f, &t, "e/sub/y", "Y");
	/* The copied source itself is never excluded; wildcard matches are. */
	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/a.txt\",\"dest\":\"/f\","
				       "\"exclude\":[\"a.txt\",\"*\"]},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/*.txt\",\"dest\":\"/w/\","
				       "\"exclude\":[\"a*\"]}]",
				     false, &t, NULL), 0);
	expect_file(f, &t, "f", "A");
	assert_int_equal(kind(f, &t, "w/a.txt", NULL), 0);
	expect_file(f, &t, "w/b.txt", "B");
}

static void test_copy_include(void **state)
{
	struct fx *f = *state;
	struct kiln_tree_entry e = { 0 };
	struct kiln_digest t;
	struct kiln_error *err = NULL;

	/* Only the included paths, with the directories leading there. */
	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/.\",\"dest\":\"/p/\","
				       "\"include\":[\"dir/sub/y\"]},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/dir/.\",\"dest\":\"/q/\","
				       "\"include\":[\"sub\"]},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/.\",\"dest\":\"/w/\","
				       "\"include\":[\"*.txt\"],\"exclude\":[\"a*\"],\"allow_not_found\":true},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/.\",\"dest\":\"/n/\","
				       "\"include\":[\"*.none\"],\"allow_not_found\":true}]",
				     false, &t, NULL), 0);
	expect_file(f, &t, "p/dir/sub/y", "Y");
	assert_int_equal(kind(f, &t, "p/dir/x", NULL), 0);
	assert_int_equal(kind(f, &t, "p/a.txt", NULL), 0);
	assert_int_equal(kind(f, &t, "p/etc", NULL), 0);
	/* a directory leading there keeps its own metadata */
	assert_int_equal(kiln_tree_lookup(f->store, &t, "p/dir", &e, NULL), 0);
	assert_int_equal(e.mode, 0755);
	kiln_tree_entry_release(&e);
	expect_file(f, &t, "q/sub/y", "Y");
	assert_int_equal(kind(f, &t, "q/x", NULL), 0);
	expect_file(f, &t, "w/b.txt", "B");
	assert_int_equal(kind(f, &t, "w/a.txt", NULL), 0);
	assert_int_equal(kind(f, &t, "n", NULL), KILN_ENTRY_DIR);
	/* A path that is not there fails unless allowed. */
	assert_true(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/.\",\"dest\":\"/p/\","
				  "\"include\":[\"dir/nope\"]}]",
				false, &t, &err) < 0);
	assert_non_null(strstr(kiln_error_msg(err), "no source matches 'dir/nope'"));
	kiln_error_free(err);
}

static void test_copy_replaces_file_in_base(void **state)
{
	struct fx *f = *state;
	struct kiln_digest t;

	/* Base = src: a copy replaces one file; everything else stays. */
	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/a.txt\",\"dest\":\"/dir/sub/y\"}]",
				     true, &t, NULL), 0);
	expect_file(f, &t, "dir/sub/y", "A");
	expect_file(f, &t, "dir/x", "X");
	expect_file(f, &t, "b.txt", "B");
}

static void test_chown_chmod_apply_below(void **state)
{
	struct fx *f = *state;
	struct kiln_tree_entry e = { 0 };
	struct kiln_digest t;

	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/dir\",\"dest\":\"/o\","
				       "\"chown\":\"7:8\",\"mode\":\"0600\"}]",
				     false, &t, NULL), 0);
	assert_int_equal(kiln_tree_lookup(f->store, &t, "o/sub/y", &e, NULL), 0);
	assert_int_equal(e.uid, 7);
	assert_int_equal(e.gid, 8);
	assert_int_equal(e.mode, 0600);
	kiln_tree_entry_release(&e);
	assert_int_equal(kiln_tree_lookup(f->store, &t, "o/sub", &e, NULL), 0);
	assert_int_equal(e.uid, 7);
	kiln_tree_entry_release(&e);
}

static void test_action_errors(void **state)
{
	struct fx *f = *state;
	struct kiln_error *err = NULL;
	struct kiln_digest t;

	assert_true(run_actions(f, "[{\"action\":\"rm\",\"path\":\"/nope\"}]", true, &t, &err) < 0);
	assert_non_null(strstr(err->msg, "rm /nope"));
	assert_non_null(strstr(err->msg, "op 'f': actions[0]"));
	kiln_error_free(err);
	err = NULL;
	assert_true(run_actions(f, "[{\"action\":\"mkfile\",\"path\":\"/no/such/dir/f\",\"data\":\"x\"}]",
				true, &t, &err) < 0);
	assert_non_null(strstr(err->msg, "/no/such/dir"));
	kiln_error_free(err);
	err = NULL;
	assert_true(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/*.none\",\"dest\":\"/w/\"}]",
				false, &t, &err) < 0);
	assert_non_null(strstr(err->msg, "no source matches"));
	kiln_error_free(err);
	err = NULL;
	/* rm with allow_not_found and symlink + mkdir -p succeed. */
	assert_int_equal(run_actions(f, "[{\"action\":\"rm\",\"path\":\"/nope\",\"allow_not_found\":true},"
				       "{\"action\":\"mkdir\",\"path\":\"/m/n\",\"parents\":true},"
				       "{\"action\":\"symlink\",\"path\":\"/m/l\",\"target\":\"../a.txt\"},"
				       "{\"action\":\"rm\",\"path\":\"/dir\"}]",
				     true, &t, NULL), 0);
	assert_int_equal(kind(f, &t, "m/n", NULL), KILN_ENTRY_DIR);
	assert_int_equal(kind(f, &t, "m/l", NULL), KILN_ENTRY_SYMLINK);
	assert_int_equal(kind(f, &t, "dir", NULL), 0);
}

static void test_dest_symlink_stays_inside(void **state)
{
	struct fx *f = *state;
	struct kiln_digest t;

	/* /esc -> ../../../tmp: writes through it land inside the tree. */
	assert_int_equal(run_actions(f, "[{\"action\":\"symlink\",\"path\":\"/esc\",\"target\":\"../../../tmp\"},"
				       "{\"action\":\"mkdir\",\"path\":\"/tmp\"},"
				       "{\"action\":\"mkfile\",\"path\":\"/esc/pwned\",\"data\":\"p\"}]",
				     false, &t, NULL), 0);
	expect_file(f, &t, "tmp/pwned", "p");
}

/* A new empty directory is readable though its node was never stored. */
static void test_new_empty_dir_is_readable(void **state)
{
	struct fx *f = *state;
	struct kiln_tree_entry e = { 0 };
	struct kiln_tree t = KILN_TREE_INIT;
	struct kiln_digest out;
	uint64_t bytes, entries;

	assert_int_equal(run_actions(f, "[{\"action\":\"mkdir\",\"path\":\"/newdir\"}]", true,
				     &out, NULL), 0);
	assert_int_equal(kiln_tree_lookup(f->store, &out, "newdir", &e, NULL), 0);
	assert_true(kiln_tree_is_empty_digest(&e.digest));
	assert_int_equal(kiln_tree_get(f->store, &e.digest, &t, NULL), 0);
	assert_int_equal(t.n, 0);
	assert_int_equal(kiln_tree_usage(f->store, &out, &bytes, &entries, NULL), 0);
	kiln_tree_entry_release(&e);
}

static void test_chown_by_name(void **state)
{
	struct fx *f = *state;
	struct kiln_tree_entry e = { 0 };
	struct kiln_error *err = NULL;
	struct kiln_digest t;

	/* Names resolve against the destination (here the base = src). */
	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/a.txt\",\"dest\":\"/o1\",\"chown\":\"builder\"},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/a.txt\",\"dest\":\"/o2\",\"chown\":\"builder:staff\"},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/a.txt\",\"dest\":\"/o3\",\"chown\":\"7:staff\"}]",
				     true, &t, NULL), 0);
	assert_int_equal(kiln_tree_lookup(f->store, &t, "o1", &e, NULL), 0);
	assert_int_equal(e.uid, 1000);
	assert_int_equal(e.gid, 1000); /* no group: the uid's number, as Docker */
	kiln_tree_entry_release(&e);
	assert_int_equal(kiln_tree_lookup(f->store, &t, "o2", &e, NULL), 0);
	assert_int_equal(e.uid, 1000);
	assert_int_equal(e.gid, 50);
	kiln_tree_entry_release(&e);
	assert_int_equal(kiln_tree_lookup(f->store, &t, "o3", &e, NULL), 0);
	assert_int_equal(e.uid, 7);
	assert_int_equal(e.gid, 50);
	kiln_tree_entry_release(&e);
	/* mkdir and mkfile resolve names too (WORKDIR after USER name). */
	assert_int_equal(run_actions(f, "[{\"action\":\"mkdir\",\"path\":\"/w\",\"parents\":true,\"chown\":\"builder\"},"
				       "{\"action\":\"mkfile\",\"path\":\"/w/f\",\"data\":\"x\",\"chown\":\"builder:staff\"}]",
				     true, &t, NULL), 0);
	assert_int_equal(kiln_tree_lookup(f->store, &t, "w", &e, NULL), 0);
	assert_int_equal(e.uid, 1000);
	kiln_tree_entry_release(&e);
	assert_int_equal(kiln_tree_lookup(f->store, &t, "w/f", &e, NULL), 0);
	assert_int_equal(e.gid, 50);
	kiln_tree_entry_release(&e);
	assert_true(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/a.txt\",\"dest\":\"/x\",\"chown\":\"nobody-here\"}]",
				true, &t, &err) < 0);
	assert_non_null(strstr(err->msg, "user 'nobody-here' not found"));
	kiln_error_free(err);
}

static void test_extract_archives(void **state)
{
	struct fx *f = *state;
	struct kiln_digest t;

	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/a.tar.gz\",\"dest\":\"/unpacked/\",\"extract\":true},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/notar.gz.txt\",\"dest\":\"/plain/\",\"extract\":true},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/a.tar.gz\",\"dest\":\"/kept/\"}]",
				     false, &t, NULL), 0);
	expect_file(f, &t, "unpacked/in.txt", "IN\n");
	expect_file(f, &t, "unpacked/deep/z", "Z\n");
	expect_file(f, &t, "plain/notar.gz.txt", "plain\n"); /* not an archive: copied */
	assert_int_equal(kind(f, &t, "kept/a.tar.gz", NULL), KILN_ENTRY_FILE); /* no extract */
	/* bzip2, and ".wh." is an ordinary name in an ADD archive (not a layer). */
	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/b.tar.bz2\",\"dest\":\"/bz/\",\"extract\":true}]",
				     false, &t, NULL), 0);
	expect_file(f, &t, "bz/.wh.note", "kept\n");
	expect_file(f, &t, "bz/deep/z", "Z\n");
}

/*
 * ADD decides by content, as BuildKit's isArchivePath does (decompress,
 * then one tar header): a tarball named data.bin is unpacked, a text file
 * named fake.tar.gz and a gzip'd text file are copied as they are, and an
 * archive entry climbing out with ".." is refused, nothing written.
 */
static void test_extract_by_content(void **state)
{
	struct fx *f = *state;
	_cleanup_free_ char *escaped = xasprintf("%s/cas/a.txt", f->dir);
	_cleanup_free_ char *escaped_tmp = xasprintf("%s/cas/tmp/a.txt", f->dir);
	struct kiln_error *err = NULL;
	struct kiln_digest t;
	char *data = NULL;

	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/data.bin\",\"dest\":\"/u/\",\"extract\":true},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/x.tar.xz.bin\",\"dest\":\"/xz\",\"extract\":true},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/fake.tar.gz\",\"dest\":\"/f/\",\"extract\":true},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/note.txt.gz\",\"dest\":\"/n/\",\"extract\":true}]",
				     false, &t, NULL), 0);
	expect_file(f, &t, "u/in.txt", "IN\n");
	expect_file(f, &t, "u/deep/z", "Z\n");
	assert_int_equal(kind(f, &t, "u/data.bin", NULL), 0);
	expect_file(f, &t, "xz/deep/z", "Z\n");
	expect_file(f, &t, "f/fake.tar.gz", "not a tar\n");
	assert_int_equal(kind(f, &t, "n/note.txt.gz", &data), KILN_ENTRY_FILE);
	assert_int_equal((unsigned char)data[0], 0x1f); /* still gzip'd */
	free(data);

	assert_true(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/evil.bin\",\"dest\":\"/e/\",\"extract\":true}]",
				false, &t, &err) < 0);
	assert_non_null(strstr(err->msg, ".."));
	kiln_error_free(err);
	assert_int_equal(access(escaped, F_OK), -1);
	assert_int_equal(access(escaped_tmp, F_OK), -1);
}

/* Owner/mode of path in tree t. */
static void expect_meta(struct fx *f, const struct kiln_digest *t, const char *path,
			uint32_t uid, uint32_t gid, uint32_t mode)
{
	struct kiln_tree_entry e = { 0 };

	if (kiln_tree_lookup(f->store, t, path, &e, NULL) < 0)
		fail_msg("%s missing", path);
	if (e.uid != uid || e.gid != gid || e.mode != mode)
		fail_msg("%s: %u:%u %o, want %u:%u %o", path, e.uid, e.gid, e.mode, uid, gid,
			 mode);
	kiln_tree_entry_release(&e);
}

/*
 * Every directory a copy creates gets the --chown owner and the --chmod
 * mode (0755 without one), as fsutil's MkdirAll(dst, mode, chown, utime)
 * since its commit 183e7fb; directories that were there keep their own
 * metadata.
 */
static void test_copy_creates_parents_with_owner(void **state)
{
	struct fx *f = *state;
	struct kiln_tree_entry before = { 0 };
	struct kiln_digest t;

	assert_int_equal(kiln_tree_lookup(f->store, &f->src_tree, "dir", &before, NULL), 0);
	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/a.txt\",\"dest\":\"/p/q/r/\","
				       "\"chown\":\"7:8\",\"mode\":\"0600\"},"
				       "{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/dir/.\",\"dest\":\"/dir/n1/n2/\","
				       "\"chown\":\"9:10\"}]",
				     true, &t, NULL), 0);
	expect_meta(f, &t, "p", 7, 8, 0600);
	expect_meta(f, &t, "p/q", 7, 8, 0600);
	expect_meta(f, &t, "p/q/r", 7, 8, 0600);
	expect_meta(f, &t, "p/q/r/a.txt", 7, 8, 0600);
	expect_meta(f, &t, "dir", before.uid, before.gid, before.mode); /* was there */
	expect_meta(f, &t, "dir/n1", 9, 10, 0755);
	expect_meta(f, &t, "dir/n1/n2/sub/y", 9, 10, 0644);
	kiln_tree_entry_release(&before);
}

/*
 * ADD --chown of an archive: the entries are there and owned by the
 * --chown owner (buildkit's mapArchiveHeaderOwner); their modes are the
 * archive's; the destination directories are created like a copy's.
 */
static void test_extract_with_chown(void **state)
{
	struct fx *f = *state;
	struct kiln_digest t;

	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/a.tar.gz\",\"dest\":\"/u/v/\","
				       "\"extract\":true,\"chown\":\"7:8\",\"mode\":\"0600\"}]",
				     false, &t, NULL), 0);
	expect_file(f, &t, "u/v/in.txt", "IN\n");
	expect_file(f, &t, "u/v/deep/z", "Z\n");
	expect_meta(f, &t, "u", 7, 8, 0755);
	expect_meta(f, &t, "u/v", 7, 8, 0755);
	expect_meta(f, &t, "u/v/in.txt", 7, 8, 0644);
	expect_meta(f, &t, "u/v/deep", 7, 8, 0755);
	expect_meta(f, &t, "u/v/deep/z", 7, 8, 0644);
}

/*
 * Directories an archive only implies (it holds "top/mid/f" and no
 * "top/") are made by root, 0755, even with --chown (buildkit
 * unpack_root.go: Lchown(cur, impliedUID, impliedGID)).
 */
static void test_extract_implied_dirs(void **state)
{
	struct fx *f = *state;
	_cleanup_free_ char *cmd = xasprintf("set -e; cd %s && mkdir -p t/top/mid && echo F > t/top/mid/f && "
					     "tar -C t -cf imp.tar top/mid/f && rm -r t", f->src);
	struct kiln_digest t;
	int fd;

	assert_int_equal(system(cmd), 0);
	fd = open(f->src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_int_equal(kiln_tree_from_dir(f->store, fd, NULL, &f->src_tree, NULL), 0);
	close(fd);
	assert_int_equal(run_actions(f, "[{\"action\":\"copy\",\"from\":\"src\",\"src\":\"/imp.tar\",\"dest\":\"/i/\","
				       "\"extract\":true,\"chown\":\"7:8\"}]",
				     false, &t, NULL), 0);
	expect_file(f, &t, "i/top/mid/f", "F\n");
	expect_meta(f, &t, "i", 7, 8, 0755);
	expect_meta(f, &t, "i/top", 0, 0, 0755);
	expect_meta(f, &t, "i/top/mid", 0, 0, 0755);
	expect_meta(f, &t, "i/top/mid/f", 7, 8, 0644);
}

static void test_merge(void **state)
{
	struct fx *f = *state;
	struct kiln_digest a, b, m, trees[2];

	assert_int_equal(run_actions(f, "[{\"action\":\"mkfile\",\"path\":\"/a.txt\",\"data\":\"new\"},"
				       "{\"action\":\"mkdir\",\"path\":\"/dir/z\",\"parents\":true}]",
				     false, &a, NULL), 0);
	b = f->src_tree;
	trees[0] = b;
	trees[1] = a;
	assert_int_equal(kiln_merge_trees(f->store, trees, 2, &m, NULL), 0);
	expect_file(f, &m, "a.txt", "new"); /* later wins */
	expect_file(f, &m, "dir/x", "X");  /* directories merge */
	assert_int_equal(kind(f, &m, "dir/z", NULL), KILN_ENTRY_DIR);
	expect_file(f, &m, "b.txt", "B");
}

/* ---- lost results, with an executor that only pretends ---- */

/*
 * An executor whose jobs make a result from their op's id. It holds every
 * tree but, once b's result is lost, that one. With lose_in_c, c's job
 * loses b's result and answers -ENOLINK (an input is held nowhere).
 */
struct fake {
	bool c_fails, lose_in_c, lose, c_lost;
	unsigned runs_b, runs_c;
	struct kiln_digest b_result;
};

static int fake_platform(void *ud, const char *platform, bool *emulated,
			 struct kiln_error **err)
{
	*emulated = false;
	return 0;
}

static bool fake_have(void *ud, const struct kiln_digest *tree)
{
	struct fake *fk = ud;

	return !fk->lose || !kiln_digest_eq(tree, &fk->b_result);
}

static int fake_run(void *ud, const struct kiln_task *t,
		    struct kiln_task_result *out, struct kiln_error **err)
{
	struct fake *fk = ud;
	const char *id = t->job.def->ops[t->job.op].id;

	kiln_digest_buf(id, strlen(id), &out->res.tree);
	if (!strcmp(id, "b")) {
		fk->runs_b++;
		fk->b_result = out->res.tree;
		fk->lose = false; /* made again: held */
	}
	if (strcmp(id, "c"))
		return 0;
	fk->runs_c++;
	if (fk->c_fails)
		return kiln_error_set(err, -KILN_ESTEPFAILED, "c failed");
	if (fk->lose_in_c && !fk->c_lost) {
		fk->c_lost = fk->lose = true;
		return kiln_error_set(err, -ENOLINK, "input b is held nowhere");
	}
	return 0;
}

/*
 * A definition-key hit whose result is lost while its dependent runs: its
 * inputs were never needed, and are needed now. Build 1 records a and b
 * (c fails). In build 2, b is a definition-key hit and a is never needed;
 * then b's result is lost and c's job says so: b runs again on a, itself
 * a definition-key hit, and c runs again. Before, b waited for an a that
 * nothing would ever resolve: "internal: output unresolved".
 */
static void test_lost_definition_key_hit(void **state)
{
	struct fx *f = *state;
	const char *g = "{\"version\":1,\"ops\":["
		"{\"id\":\"a\",\"op\":\"file\",\"actions\":[{\"action\":\"mkfile\",\"path\":\"/a\",\"data\":\"a\"}]},"
		"{\"id\":\"b\",\"op\":\"file\",\"input\":\"a\",\"actions\":[{\"action\":\"mkfile\",\"path\":\"/b\",\"data\":\"b\"}]},"
		"{\"id\":\"c\",\"op\":\"file\",\"input\":\"b\",\"actions\":[{\"action\":\"mkfile\",\"path\":\"/c\",\"data\":\"c\"}]}"
		"],\"output\":\"c\"}";
	_cleanup_free_ char *db = kiln_path_join(f->dir, "lost.db");
	struct fake fk = { .c_fails = true };
	struct kiln_executor ex = { .ud = &fk, .check_platform = fake_platform, .have = fake_have,
				    .run = fake_run };
	struct kiln_solve_options so = { .executor = &ex, .store = f->store, .slots = 1 };
	struct kiln_definition *def = NULL;
	struct kiln_solve_result res;
	struct kiln_cache *cache = NULL;
	struct kiln_digest want;
	struct kiln_error *err = NULL;

	assert_int_equal(kiln_definition_parse(g, strlen(g), "g", "/", "linux/amd64",
					       &def, NULL), 0);
	assert_int_equal(kiln_cache_open(db, &cache, NULL), 0);
	so.cache = cache;
	assert_int_equal(kiln_solve(def, &so, &res, &err), -KILN_ESTEPFAILED);
	kiln_error_free(TAKE_PTR(err));
	kiln_solve_result_release(&res);
	assert_int_equal(fk.runs_b, 1);

	fk.c_fails = false;
	fk.lose_in_c = true; /* b's result is gone as soon as c runs on it */
	assert_int_equal(kiln_solve(def, &so, &res, &err), 0);
	assert_null(err);
	kiln_digest_buf("c", 1, &want);
	assert_true(kiln_digest_eq(&res.tree, &want));
	assert_true(fk.c_lost);
	assert_int_equal(fk.runs_b, 2); /* made again */
	assert_int_equal(fk.runs_c, 3); /* failed, lost its input, ran */
	kiln_solve_result_release(&res);
	kiln_cache_free(cache);
	kiln_definition_free(def);
}

/* ---- remote lookups: a wave at once ---- */

/*
 * A remote cache that has nothing. It holds lookups 2 to 5 (the wave
 * below) until 4 are in flight, or for 5 s: it sees how many the solver
 * asks at once.
 */
struct slow_remote {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned inflight, max_inflight, gets;
	bool go; /* 4 were in flight at once */
};

static int slow_get(void *b, const char *name, uint64_t limit,
		    int (*sink)(void *ud, const void *data, size_t n), void *ud,
		    struct kiln_error **err)
{
	struct slow_remote *sr = b;
	struct timespec until;
	unsigned n;

	(void)limit, (void)sink, (void)ud, (void)err;
	if (strncmp(name, "ac/", 3))
		return -ENOENT;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 5;
	pthread_mutex_lock(&sr->lock);
	n = ++sr->gets;
	if (++sr->inflight > sr->max_inflight)
		sr->max_inflight = sr->inflight;
	if (sr->inflight == 4)
		sr->go = true; /* once: a waiter that wakes late must not wait again */
	pthread_cond_broadcast(&sr->cond);
	while (n >= 2 && n <= 5 && !sr->go &&
	       pthread_cond_timedwait(&sr->cond, &sr->lock, &until) == 0)
		;
	pthread_mutex_unlock(&sr->lock);
	/* Leave only after the others arrived (or the deadline passed). */
	pthread_mutex_lock(&sr->lock);
	sr->inflight--;
	pthread_mutex_unlock(&sr->lock);
	return -ENOENT;
}

/*
 * Four independent steps under a merge: the merge's definition key misses
 * everywhere, then the four are one wave, asked of the remote cache at
 * once (they were asked one after another: a cold bucket cost a round
 * trip per step). With one slot, the content-key lookups (on the jobs'
 * threads) come one at a time, so 4 in flight can only be the wave.
 */
static void test_remote_lookups_in_waves(void **state)
{
	struct fx *f = *state;
	const char *g = "{\"version\":1,\"ops\":["
		"{\"id\":\"a\",\"op\":\"file\",\"actions\":[{\"action\":\"mkfile\",\"path\":\"/a\",\"data\":\"a\"}]},"
		"{\"id\":\"b\",\"op\":\"file\",\"actions\":[{\"action\":\"mkfile\",\"path\":\"/b\",\"data\":\"b\"}]},"
		"{\"id\":\"c\",\"op\":\"file\",\"actions\":[{\"action\":\"mkfile\",\"path\":\"/c\",\"data\":\"c\"}]},"
		"{\"id\":\"d\",\"op\":\"file\",\"actions\":[{\"action\":\"mkfile\",\"path\":\"/d\",\"data\":\"d\"}]},"
		"{\"id\":\"m\",\"op\":\"merge\",\"inputs\":[\"a\",\"b\",\"c\",\"d\"]}"
		"],\"output\":\"m\"}";
	_cleanup_free_ char *db = kiln_path_join(f->dir, "waves.db");
	struct slow_remote sr = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, false };
	struct kiln_rcache_backend be = { .name = "test://slow", .get = slow_get, .b = &sr };
	struct kiln_rcache *rc = kiln_rcache_new(&be);
	struct fake fk = { 0 };
	struct kiln_executor ex = { .ud = &fk, .check_platform = fake_platform, .have = fake_have,
				    .run = fake_run };
	struct kiln_solve_options so = { .executor = &ex, .store = f->store, .slots = 1,
					 .cache_from = rc };
	struct kiln_definition *def = NULL;
	struct kiln_solve_result res;
	struct kiln_cache *cache = NULL;
	struct kiln_error *err = NULL;

	assert_int_equal(kiln_definition_parse(g, strlen(g), "g", "/", "linux/amd64",
					       &def, NULL), 0);
	assert_int_equal(kiln_cache_open(db, &cache, NULL), 0);
	so.cache = cache;
	assert_int_equal(kiln_solve(def, &so, &res, &err), 0);
	assert_null(err);
	assert_int_equal(res.run, 5);
	assert_int_equal(sr.max_inflight, 4);
	/* m's and the four's definition keys, then five content keys. */
	assert_int_equal(sr.gets, 10);
	assert_null(kiln_rcache_unavailable(rc));
	kiln_solve_result_release(&res);
	kiln_cache_free(cache);
	kiln_definition_free(def);
	kiln_rcache_free(rc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_copy_rules, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_replaces_file_in_base, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_exclude, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_include, setup, teardown),
		cmocka_unit_test_setup_teardown(test_chown_chmod_apply_below, setup, teardown),
		cmocka_unit_test_setup_teardown(test_action_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dest_symlink_stays_inside, setup, teardown),
		cmocka_unit_test_setup_teardown(test_new_empty_dir_is_readable, setup, teardown),
		cmocka_unit_test_setup_teardown(test_chown_by_name, setup, teardown),
		cmocka_unit_test_setup_teardown(test_extract_archives, setup, teardown),
		cmocka_unit_test_setup_teardown(test_extract_by_content, setup, teardown),
		cmocka_unit_test_setup_teardown(test_copy_creates_parents_with_owner, setup, teardown),
		cmocka_unit_test_setup_teardown(test_extract_with_chown, setup, teardown),
		cmocka_unit_test_setup_teardown(test_extract_implied_dirs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_merge, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lost_definition_key_hit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_remote_lookups_in_waves, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
