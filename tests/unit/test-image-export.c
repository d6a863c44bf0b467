/*
 * Image export: layers from tree diffs (entries, whiteouts, round trip
 * through kiln's own layer importer, gzip/zstd, determinism, epoch
 * clamping, the layer cache), image assembly on the busybox fixture,
 * indexes, and OCI layouts checked with skopeo, umoci and kiln's
 * oci-layout:// importer.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "test-util.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cache/index.h"
#include "cas/tree.h"
#include "export/export.h"
#include "export/image.h"
#include "source/image.h"

#define T_BASE 1600000000 /* mtime of every sample entry */

/* Layouts are read from their directory: no registry, no store. */
static const struct kiln_image_source layout_source;

static char *base_dir;   /* per-binary temp dir */
static char *layout_dir; /* the busybox fixture */
static struct kiln_digest sample_base, sample_child; /* in sample_store */

struct ctx {
	char *dir;
	struct kiln_store *store;
	struct kiln_layers *layers;
	struct kiln_cache *cache;
};

/* ---- helpers ---- */

static void need_tool(const char *tool)
{
	if (test_run("command -v %s >/dev/null 2>&1", tool) != 0)
		fail_msg("%s is not installed (apt-get install %s; "
			 "scripts/install-deps.sh should have it)", tool, tool);
}

static void assert_msg_has(const struct kiln_error *e, const char *needle)
{
	assert_non_null(e);
	if (!strstr(e->msg, needle))
		fail_msg("error \"%s\" does not mention \"%s\"", e->msg, needle);
}

static void write_file(const char *dir, const char *rel, const char *data,
		       mode_t mode)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", dir, rel);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(kiln_write_full(fd, data, strlen(data)), 0);
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
}

static void mkdir_in(const char *dir, const char *rel)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", dir, rel);

	assert_int_equal(mkdir(p, 0755), 0);
}

static void set_mtime(const char *dir, const char *rel, time_t sec, long nsec)
{
	_cleanup_free_ char *p = xasprintf("%s/%s", dir, rel);
	struct timespec ts[2] = { { sec, nsec }, { sec, nsec } };

	assert_int_equal(utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW), 0);
}

static void open_state(struct ctx *c, const char *name)
{
	_cleanup_free_ char *cas = NULL, *lay = NULL, *db = NULL;
	struct kiln_error *err = NULL;

	c->dir = xasprintf("%s/%s", base_dir, name);
	assert_int_equal(kiln_mkdir_p(c->dir, 0755), 0);
	cas = xasprintf("%s/cas", c->dir);
	lay = xasprintf("%s/layers", c->dir);
	db = xasprintf("%s/cache.db", c->dir);
	if (kiln_store_open(cas, NULL, &c->store, &err) < 0 ||
	    kiln_layers_open(lay, c->store, &c->layers, &err) < 0 ||
	    kiln_cache_open(db, &c->cache, &err) < 0)
		fail_msg("opening state: %s", kiln_error_msg(err));
}

static void close_state(struct ctx *c)
{
	kiln_cache_free(c->cache);
	kiln_layers_free(c->layers);
	kiln_store_free(c->store);
	kiln_rm_rf(c->dir);
	free(c->dir);
	memset(c, 0, sizeof(*c));
}

static int setup(void **state)
{
	static unsigned n;
	struct ctx *c = xcalloc(1, sizeof(*c));
	char name[32];

	snprintf(name, sizeof(name), "t%u", n++);
	open_state(c, name);
	*state = c;
	return 0;
}

static int teardown(void **state)
{
	struct ctx *c = *state;

	close_state(c);
	free(c);
	return 0;
}

/* ---- the sample trees ---- */

/*
 * base: del.txt deldir/{x} keep.txt mod.txt sub/{inner.txt} swap/{f}
 * child: add.txt emptydir/ keep.txt link->keep.txt mod.txt (changed)
 *        sub/inner.txt (changed; sub's own metadata unchanged) suid (4755)
 *        swap (now a file)
 */
static void make_base(const char *d)
{
	assert_int_equal(kiln_mkdir_p(d, 0755), 0);
	write_file(d, "del.txt", "gone\n", 0644);
	mkdir_in(d, "deldir");
	write_file(d, "deldir/x", "x\n", 0644);
	write_file(d, "keep.txt", "keep\n", 0644);
	write_file(d, "mod.txt", "old\n", 0644);
	mkdir_in(d, "sub");
	write_file(d, "sub/inner.txt", "inner v1\n", 0600);
	mkdir_in(d, "swap");
	write_file(d, "swap/f", "f\n", 0644);
	assert_int_equal(test_run("find %s -exec touch -h -d @%d {} +", d, T_BASE), 0);
}

static void make_child(const char *base, const char *d)
{
	_cleanup_free_ char *swap = xasprintf("%s/swap", d);
	_cleanup_free_ char *link = xasprintf("%s/link", d);

	assert_int_equal(test_run("cp -a %s %s", base, d), 0);
	assert_int_equal(test_run("rm -rf %s/del.txt %s/deldir %s", d, d, swap), 0);
	write_file(d, "add.txt", "added\n", 0644);
	mkdir_in(d, "emptydir");
	assert_int_equal(symlink("keep.txt", link), 0);
	write_file(d, "mod.txt", "new contents\n", 0644);
	write_file(d, "sub/inner.txt", "inner v2\n", 0600);
	write_file(d, "suid", "#!/bin/sh\n", 04755);
	write_file(d, "swap", "now a file\n", 0644);
	assert_int_equal(test_run("find %s -exec touch -h -d @%d {} +", d, T_BASE), 0);
	set_mtime(d, "add.txt", T_BASE + 5, 123456789);
}

static void tree_of(struct kiln_store *s, const char *dir,
		    struct kiln_digest *out)
{
	struct kiln_error *err = NULL;
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	assert_true(fd >= 0);
	if (kiln_tree_from_dir(s, fd, NULL, out, &err) < 0)
		fail_msg("tree of %s: %s", dir, kiln_error_msg(err));
	close(fd);
}

/* Sample trees into c's store (built once; the dirs are kept). */
static void sample_trees(struct ctx *c)
{
	_cleanup_free_ char *b = xasprintf("%s/sample-base", base_dir);
	_cleanup_free_ char *ch = xasprintf("%s/sample-child", base_dir);
	struct kiln_digest d;

	if (access(b, F_OK) != 0) {
		make_base(b);
		make_child(b, ch);
	}
	tree_of(c->store, b, &d);
	sample_base = d;
	tree_of(c->store, ch, &d);
	sample_child = d;
}

static void layer_ok(struct ctx *c, struct kiln_cache *cache,
		     const struct kiln_digest *parent,
		     const struct kiln_digest *child,
		     const struct kiln_image_opts *o,
		     struct kiln_image_layer_info *info)
{
	struct kiln_error *err = NULL;

	if (kiln_image_layer(c->store, cache, parent, child, o, info, &err) < 0)
		fail_msg("layer: %s", kiln_error_msg(err));
	assert_true(kiln_store_has(c->store, &info->digest));
}

/* ---- reading layers back ---- */

struct lent {
	char path[256];
	mode_t type;
	unsigned mode;
	int64_t mtime;
	long nsec;
	char target[64];
};

/* Every entry of a (compressed) layer blob, in order. */
static size_t list_layer(struct ctx *c, const struct kiln_digest *blob,
			 struct lent *out, size_t max)
{
	_cleanup_free_ char *p = kiln_store_blob_path(c->store, blob);
	struct archive *a = archive_read_new();
	struct archive_entry *ae;
	size_t n = 0;

	archive_read_support_filter_all(a);
	archive_read_support_format_tar(a);
	assert_int_equal(archive_read_open_filename(a, p, 65536), ARCHIVE_OK);
	while (archive_read_next_header(a, &ae) == ARCHIVE_OK) {
		struct lent *e = &out[n++];
		size_t len;

		assert_true(n <= max);
		snprintf(e->path, sizeof(e->path), "%s",
			 archive_entry_pathname(ae));
		len = strlen(e->path);
		if (len > 1 && e->path[len - 1] == '/')
			e->path[len - 1] = '\0';
		e->type = archive_entry_filetype(ae);
		e->mode = archive_entry_perm(ae);
		e->mtime = archive_entry_mtime(ae);
		e->nsec = archive_entry_mtime_nsec(ae);
		assert_string_equal(archive_entry_uname(ae) ?: "", "");
		assert_string_equal(archive_entry_gname(ae) ?: "", "");
		snprintf(e->target, sizeof(e->target), "%s",
			 archive_entry_symlink(ae) ?: "");
	}
	assert_int_equal(archive_read_free(a), ARCHIVE_OK);
	return n;
}

static int blob_fd(struct ctx *c, const struct kiln_digest *d)
{
	int fd = kiln_store_open_blob(c->store, d);

	assert_true(fd >= 0);
	return fd;
}

/* Extract the layer with kiln's importer and apply it onto base. */
static void reapply(struct ctx *c, const struct kiln_digest *base,
		    const struct kiln_image_layer_info *info,
		    struct kiln_digest *out)
{
	_cleanup_free_ char *dir = xasprintf("%s/apply.XXXXXX", c->dir);
	struct kiln_tree_build_opts bo = { 0 };
	struct kiln_layer_extract_opts eo = { 0 };
	struct kiln_error *err = NULL;
	struct kiln_digest diff_id;
	int fd, dfd;

	assert_non_null(mkdtemp(dir));
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	fd = blob_fd(c, &info->digest);
	eo.diff_id = &diff_id;
	if (kiln_layer_extract_with(fd, dfd, &eo, &err) < 0)
		fail_msg("extract: %s", kiln_error_msg(err));
	assert_true(kiln_digest_eq(&diff_id, &info->diff_id));
	if (kiln_tree_apply_layer(c->store, base, dfd, &bo, out, &err) < 0)
		fail_msg("apply: %s", kiln_error_msg(err));
	close(fd);
	close(dfd);
	kiln_rm_rf(dir);
}

/* ---- layers ---- */

static const struct {
	const char *path;
	mode_t type;
	unsigned mode;
} expected_entries[] = {
	{ "add.txt", AE_IFREG, 0644 },
	{ ".wh.del.txt", AE_IFREG, 0644 },
	{ ".wh.deldir", AE_IFREG, 0644 },
	{ "emptydir", AE_IFDIR, 0755 },
	{ "link", AE_IFLNK, 0777 },
	{ "mod.txt", AE_IFREG, 0644 },
	{ "sub", AE_IFDIR, 0755 },
	{ "sub/inner.txt", AE_IFREG, 0600 },
	{ "suid", AE_IFREG, 04755 },
	{ ".wh.swap", AE_IFREG, 0644 },
	{ "swap", AE_IFREG, 0644 },
};

static void check_entries(struct ctx *c, const struct kiln_digest *blob)
{
	struct lent got[64];
	size_t n = list_layer(c, blob, got, ARRAY_SIZE(got)), i;

	for (i = 0; i < n; i++)
		fprintf(stderr, "  layer entry %s\n", got[i].path);
	assert_int_equal(n, ARRAY_SIZE(expected_entries));
	for (i = 0; i < n; i++) {
		assert_string_equal(got[i].path, expected_entries[i].path);
		assert_int_equal(got[i].type, expected_entries[i].type);
		if (expected_entries[i].type != AE_IFLNK)
			assert_int_equal(got[i].mode, expected_entries[i].mode);
	}
	assert_string_equal(got[4].target, "keep.txt");
	assert_int_equal(got[0].mtime, T_BASE + 5);
	assert_int_equal(got[0].nsec, 123456789);
	assert_int_equal(got[1].mtime, 0); /* whiteouts: epoch or 0 */
}

static void test_layer_entries_and_roundtrip(void **state)
{
	static const enum kiln_compression comps[] = {
		KILN_COMPRESS_GZIP, KILN_COMPRESS_ZSTD, KILN_COMPRESS_NONE,
	};
	struct ctx *c = *state;
	struct kiln_image_layer_info info[3];
	size_t i;

	sample_trees(c);
	for (i = 0; i < ARRAY_SIZE(comps); i++) {
		struct kiln_image_opts o = { .compression = comps[i] };
		struct kiln_digest back;

		layer_ok(c, NULL, &sample_base, &sample_child, &o, &info[i]);
		assert_string_equal(info[i].media_type,
				    kiln_image_layer_media_type(comps[i]));
		check_entries(c, &info[i].digest);
		reapply(c, &sample_base, &info[i], &back);
		assert_true(kiln_digest_eq(&back, &sample_child));
	}
	assert_string_equal(info[0].media_type,
			    "application/vnd.oci.image.layer.v1.tar+gzip");
	assert_string_equal(info[1].media_type,
			    "application/vnd.oci.image.layer.v1.tar+zstd");
	/* One tar stream, three encodings. */
	assert_true(kiln_digest_eq(&info[0].diff_id, &info[1].diff_id));
	assert_true(kiln_digest_eq(&info[0].diff_id, &info[2].diff_id));
	assert_true(kiln_digest_eq(&info[2].diff_id, &info[2].digest));
	assert_false(kiln_digest_eq(&info[0].digest, &info[1].digest));
}

static void read_head(struct ctx *c, const struct kiln_digest *d,
		      unsigned char *buf, size_t n)
{
	int fd = blob_fd(c, d);

	assert_int_equal(kiln_read_full(fd, buf, n), 0);
	close(fd);
}

/* A layer from nothing holds the whole tree and reapplies onto nothing. */
static void test_layer_full_tree(void **state)
{
	struct ctx *c = *state;
	struct kiln_image_layer_info info;
	struct kiln_digest back, empty;
	unsigned char head[10];

	sample_trees(c);
	layer_ok(c, NULL, NULL, &sample_child, NULL, &info);
	reapply(c, NULL, &info, &back);
	assert_true(kiln_digest_eq(&back, &sample_child));
	/* gzip header: magic, deflate, no flags (no name), mtime 0. */
	read_head(c, &info.digest, head, sizeof(head));
	assert_int_equal(head[0], 0x1f);
	assert_int_equal(head[1], 0x8b);
	assert_int_equal(head[3], 0);
	assert_int_equal(head[4] | head[5] | head[6] | head[7], 0);

	/* An empty diff is a valid (empty) layer. */
	layer_ok(c, NULL, &sample_child, &sample_child, NULL, &info);
	reapply(c, &sample_child, &info, &back);
	assert_true(kiln_digest_eq(&back, &sample_child));
	kiln_tree_empty_digest(&empty);
	layer_ok(c, NULL, &empty, &empty, NULL, &info);
	assert_true(info.size > 0);
}

static void test_layer_deterministic(void **state)
{
	static const enum kiln_compression comps[] = {
		KILN_COMPRESS_GZIP, KILN_COMPRESS_ZSTD,
	};
	struct ctx *c = *state;
	struct ctx other = { 0 };
	size_t i;

	sample_trees(c);
	open_state(&other, "determinism");
	sample_trees(&other);
	for (i = 0; i < ARRAY_SIZE(comps); i++) {
		struct kiln_image_opts o = { .compression = comps[i], .level = 0 };
		struct kiln_image_layer_info a, b;
		unsigned char head[4];

		layer_ok(c, NULL, &sample_base, &sample_child, &o, &a);
		layer_ok(&other, NULL, &sample_base, &sample_child, &o, &b);
		assert_true(kiln_digest_eq(&a.digest, &b.digest));
		assert_true(kiln_digest_eq(&a.diff_id, &b.diff_id));
		assert_int_equal(a.size, b.size);
		read_head(c, &a.digest, head, sizeof(head));
		if (comps[i] == KILN_COMPRESS_ZSTD)
			assert_memory_equal(head, "\x28\xb5\x2f\xfd", 4);
		/* Another level: other bytes, same tar. */
		o.level = comps[i] == KILN_COMPRESS_ZSTD ? 19 : 1;
		layer_ok(c, NULL, &sample_base, &sample_child, &o, &b);
		assert_false(kiln_digest_eq(&a.digest, &b.digest));
		assert_true(kiln_digest_eq(&a.diff_id, &b.diff_id));
	}
	close_state(&other);
}

static void test_layer_epoch(void **state)
{
	struct ctx *c = *state;
	struct kiln_image_opts early = { .has_epoch = true, .epoch = 1500000000 };
	struct kiln_image_opts late = { .has_epoch = true, .epoch = 2000000000 };
	struct kiln_image_layer_info a, b, plain;
	struct lent got[64];
	size_t n, i;

	sample_trees(c);
	layer_ok(c, NULL, &sample_base, &sample_child, &early, &a);
	n = list_layer(c, &a.digest, got, ARRAY_SIZE(got));
	assert_int_equal(n, ARRAY_SIZE(expected_entries));
	for (i = 0; i < n; i++) {
		assert_int_equal(got[i].mtime, 1500000000);
		assert_int_equal(got[i].nsec, 0);
	}

	/* An epoch after every mtime changes only the whiteouts. */
	layer_ok(c, NULL, &sample_base, &sample_child, &late, &b);
	n = list_layer(c, &b.digest, got, ARRAY_SIZE(got));
	for (i = 0; i < n; i++) {
		bool wh = strstr(got[i].path, ".wh.") != NULL;

		assert_int_equal(got[i].mtime,
				 wh ? 2000000000 :
				 !strcmp(got[i].path, "add.txt") ? T_BASE + 5 :
				 T_BASE);
	}
	layer_ok(c, NULL, &sample_base, &sample_child, NULL, &plain);
	assert_false(kiln_digest_eq(&a.diff_id, &plain.diff_id));
	assert_false(kiln_digest_eq(&b.diff_id, &plain.diff_id));
}

/* 1 when a record's meta "blobs" lists the digest ud. */
static int find_blob(const struct kiln_cache_record *r, void *ud)
{
	_cleanup_free_ char *want = xstrdup(KILN_DIGEST_STR(ud));
	json_t *m = r->meta ? json_loads(r->meta, 0, NULL) : NULL;
	json_t *b = json_array_get(json_object_get(m, "blobs"), 0);
	int found = b && !strcmp(json_string_value(b) ?: "", want) &&
		    r->n_outputs == 1 && kiln_digest_eq(&r->outputs[0], &sample_child);

	json_decref(m);
	return found;
}

static void test_layer_cache(void **state)
{
	struct ctx *c = *state;
	struct kiln_image_opts zstd = { .compression = KILN_COMPRESS_ZSTD };
	struct kiln_image_layer_info a, b, z;
	struct kiln_error *err = NULL;

	sample_trees(c);
	layer_ok(c, c->cache, &sample_base, &sample_child, NULL, &a);
	assert_false(a.cached);
	layer_ok(c, c->cache, &sample_base, &sample_child, NULL, &b);
	assert_true(b.cached);
	assert_true(kiln_digest_eq(&a.digest, &b.digest));
	assert_true(kiln_digest_eq(&a.diff_id, &b.diff_id));
	assert_int_equal(a.size, b.size);
	assert_string_equal(a.media_type, b.media_type);

	/* Other options are another key. */
	layer_ok(c, c->cache, &sample_base, &sample_child, &zstd, &z);
	assert_false(z.cached);

	/* The record lists the blob for prune and fsck (meta "blobs"). */
	if (kiln_cache_foreach(c->cache, find_blob, &a.digest, &err) != 1)
		fail_msg("no record lists %s", KILN_DIGEST_STR(&a.digest));

	/* A record whose blob is gone is rebuilt, to the same digest. */
	assert_int_equal(kiln_store_remove(c->store, &a.digest), 0);
	layer_ok(c, c->cache, &sample_base, &sample_child, NULL, &b);
	assert_false(b.cached);
	assert_true(kiln_digest_eq(&a.digest, &b.digest));
	layer_ok(c, c->cache, &sample_base, &sample_child, NULL, &b);
	assert_true(b.cached);
}

/* ---- images on the busybox fixture ---- */

static void import_fixture(struct ctx *c, const char *platform,
			   struct kiln_image *img, char **meta)
{
	_cleanup_free_ char *s = xasprintf("oci-layout://%s:latest", layout_dir);
	struct kiln_error *err = NULL;
	struct kiln_image_ref ref;
	struct kiln_digest m;
	json_t *j, *blobs;
	size_t i;

	if (kiln_image_ref_parse(s, NULL, &ref, &err) < 0 ||
	    kiln_image_resolve(&layout_source, &ref, platform, &m, &err) < 0 ||
	    kiln_image_import(&(struct kiln_image_source){ .store = c->store },
				      c->layers, &ref, &m, img, &err) < 0)
		fail_msg("import %s: %s", platform, kiln_error_msg(err));
	kiln_image_ref_release(&ref);
	/* The solver's source.image record meta. */
	blobs = json_pack("[ss]", KILN_DIGEST_STR(&img->manifest),
			  KILN_DIGEST_STR(&img->config));
	for (i = 0; i < img->n_layers; i++)
		json_array_append_new(blobs, json_string(KILN_DIGEST_STR(&img->layers[i])));
	j = json_pack("{ssssso}", "manifest", KILN_DIGEST_STR(&img->manifest),
		      "config", KILN_DIGEST_STR(&img->config), "blobs", blobs);
	*meta = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(j);
}

/* rootfs + /etc/hello, without /bin/ls: what a RUN step might leave. */
static void edit_rootfs(struct ctx *c, const struct kiln_digest *rootfs,
			const char *hello, struct kiln_digest *out)
{
	struct kiln_tree_editor *ed = NULL;
	struct kiln_error *err = NULL;
	struct kiln_tree_entry e = { 0 };

	if (kiln_store_put_buf(c->store, hello, strlen(hello), &e.digest, &err) < 0 ||
	    kiln_tree_editor_new(c->store, rootfs, &ed, &err) < 0)
		fail_msg("%s", kiln_error_msg(err));
	e.name = xstrdup("hello");
	e.type = KILN_ENTRY_FILE;
	e.mode = 0644;
	e.size = strlen(hello);
	e.mtime_sec = 1000;
	if (kiln_tree_editor_put(ed, "etc/hello", &e, &err) < 0 ||
	    kiln_tree_editor_remove(ed, "bin/ls", &err) < 0 ||
	    kiln_tree_editor_commit(ed, out, &err) < 0)
		fail_msg("edit: %s", kiln_error_msg(err));
	kiln_tree_editor_free(ed);
}

static json_t *frontend_config(void)
{
	return json_pack("{s:{s:[s], s:[s], s:s}, s:[{s:s}, {s:s, s:b}]}",
			 "config", "Env", "PATH=/bin:/usr/bin", "Cmd", "sh",
			 "WorkingDir", "/", "history", "created_by",
			 "RUN echo hi > /etc/hello && rm /bin/ls", "created_by",
			 "ENV PATH=/bin:/usr/bin", "empty_layer", true);
}

static void assemble_ok(struct ctx *c, const char *platform,
			const char *base_meta, const struct kiln_digest *base,
			const struct kiln_digest *trees, size_t n,
			const json_t *config, const struct kiln_image_opts *o,
			struct kiln_digest *manifest)
{
	struct kiln_image_spec spec = {
		.platform = platform, .base_meta = base_meta,
		.base_rootfs = base, .trees = trees, .n_trees = n,
		.config = config,
	};
	struct kiln_error *err = NULL;

	if (kiln_image_assemble(c->store, c->cache, &spec, o, manifest, &err) < 0)
		fail_msg("assemble: %s", kiln_error_msg(err));
}

static json_t *read_json(struct ctx *c, const struct kiln_digest *d)
{
	struct kiln_error *err = NULL;
	json_t *j = NULL;

	if (kiln_image_read_json(c->store, d, &j, &err) < 0)
		fail_msg("%s", kiln_error_msg(err));
	return j;
}

static json_t *config_of(struct ctx *c, json_t *manifest)
{
	const char *s = json_string_value(json_object_get(
		json_object_get(manifest, "config"), "digest"));
	struct kiln_digest d;

	assert_non_null(s);
	assert_int_equal(kiln_digest_parse(s, &d), 0);
	return read_json(c, &d);
}

/* String at a path of object keys (NULL-terminated list). */
static const char *jstr_v(json_t *j, ...)
{
	const char *k;
	va_list ap;

	va_start(ap, j);
	while (j && (k = va_arg(ap, const char *)))
		j = json_object_get(j, k);
	va_end(ap);
	return json_string_value(j);
}
#define jstr(j, ...) jstr_v((j), __VA_ARGS__, (const char *)NULL)

/* Build busybox + one layer for platform; returns its manifest. */
static void busybox_image(struct ctx *c, const char *platform,
			  const struct kiln_image_opts *o,
			  struct kiln_image *img, struct kiln_digest *tree,
			  struct kiln_digest *manifest)
{
	_cleanup_free_ char *meta = NULL;
	json_t *config = frontend_config();

	import_fixture(c, platform, img, &meta);
	edit_rootfs(c, &img->rootfs, "hi\n", tree);
	assemble_ok(c, platform, meta, &img->rootfs, tree, 1, config, o,
		    manifest);
	json_decref(config);
}

static void test_assemble_busybox(void **state)
{
	struct ctx *c = *state;
	struct kiln_image img;
	struct kiln_digest tree, manifest;
	json_t *m, *cfg, *bm, *bcfg, *layers, *ids, *hist;
	char bhex[KILN_DIGEST_STRLEN];

	busybox_image(c, "linux/amd64", NULL, &img, &tree, &manifest);
	m = read_json(c, &manifest);
	bm = read_json(c, &img.manifest);
	cfg = config_of(c, m);
	bcfg = config_of(c, bm);
	assert_string_equal(jstr(m, "mediaType"), KILN_MT_OCI_MANIFEST);
	assert_string_equal(jstr(m, "config", "mediaType"), KILN_MT_OCI_CONFIG);
	layers = json_object_get(m, "layers");
	assert_int_equal(json_array_size(layers), img.n_layers + 1);
	/* Base layers pass through by digest. */
	assert_true(json_equal(json_array_get(layers, 0),
			       json_array_get(json_object_get(bm, "layers"), 0)));
	assert_string_equal(json_string_value(json_object_get(json_array_get(layers, 0), "digest")),
			    kiln_digest_fmt(&img.layers[0], bhex));
	assert_string_equal(jstr(json_array_get(layers, 1), "mediaType"),
			    KILN_MT_OCI_LAYER_GZIP);
	/* diff_ids: base + new; history: base + new, layers agree. */
	ids = json_object_get(json_object_get(cfg, "rootfs"), "diff_ids");
	assert_int_equal(json_array_size(ids), 2);
	assert_true(json_equal(json_array_get(ids, 0),
			       json_array_get(json_object_get(json_object_get(bcfg, "rootfs"), "diff_ids"), 0)));
	hist = json_object_get(cfg, "history");
	assert_int_equal(json_array_size(hist), 3);
	assert_true(json_equal(json_array_get(hist, 0),
			       json_array_get(json_object_get(bcfg, "history"), 0)));
	assert_true(json_is_true(json_object_get(json_array_get(hist, 2), "empty_layer")));
	assert_string_equal(jstr(cfg, "architecture"), "amd64");
	assert_string_equal(jstr(cfg, "os"), "linux");
	assert_string_equal(jstr(cfg, "rootfs", "type"), "layers");
	assert_string_equal(json_string_value(json_array_get(json_object_get(json_object_get(cfg, "config"), "Env"), 0)),
			    "PATH=/bin:/usr/bin");
	assert_null(json_object_get(cfg, "created")); /* no epoch, none given */
	json_decref(m);
	json_decref(bm);
	json_decref(cfg);
	json_decref(bcfg);
	kiln_image_release(&img);
}

/* The sha256 of the zstd blob d decompressed. */
static void zstd_blob_digest(struct ctx *c, const struct kiln_digest *d, struct kiln_digest *out)
{
	_cleanup_free_ char *path = kiln_store_blob_path(c->store, d);
	_cleanup_free_ char *cmd = xasprintf("zstd -q -d -c '%s' | sha256sum", path);
	FILE *p = popen(cmd, "r");
	char hex[65] = "";
	_cleanup_free_ char *ds = NULL;

	assert_non_null(p);
	assert_int_equal(fscanf(p, "%64s", hex), 1);
	assert_int_equal(pclose(p), 0);
	ds = xasprintf("sha256:%s", hex);
	assert_int_equal(kiln_digest_parse(ds, out), 0);
}

/*
 * force-compression=true: busybox's gzip base layer becomes zstd (the same
 * uncompressed bytes); without it, or when the base already has the
 * requested compression, the base layer passes through by digest.
 */
static void test_force_compression(void **state)
{
	struct ctx *c = *state;
	struct kiln_image_opts zf = { .compression = KILN_COMPRESS_ZSTD, .force = true };
	struct kiln_image_opts z = { .compression = KILN_COMPRESS_ZSTD };
	struct kiln_image_opts gf = { .compression = KILN_COMPRESS_GZIP, .force = true };
	struct kiln_image img;
	struct kiln_digest tree, m1, m2, m3, blob, diff_id, back, wrong;
	struct kiln_image_layer_info info;
	struct kiln_error *err = NULL;
	json_t *j1, *j2, *j3, *bm, *bcfg, *l0;
	const char *id0;

	busybox_image(c, "linux/amd64", &zf, &img, &tree, &m1);
	j1 = read_json(c, &m1);
	bm = read_json(c, &img.manifest);
	bcfg = config_of(c, bm);
	l0 = json_array_get(json_object_get(j1, "layers"), 0);
	assert_string_equal(jstr(l0, "mediaType"), KILN_MT_OCI_LAYER_ZSTD);
	assert_false(json_equal(l0, json_array_get(json_object_get(bm, "layers"), 0)));
	assert_int_equal(kiln_digest_parse(jstr(l0, "digest"), &blob), 0);
	id0 = json_string_value(json_array_get(json_object_get(json_object_get(bcfg, "rootfs"),
							    "diff_ids"), 0));
	assert_int_equal(kiln_digest_parse(id0, &diff_id), 0);
	zstd_blob_digest(c, &blob, &back);
	assert_true(kiln_digest_eq(&back, &diff_id));
	assert_string_equal(jstr(json_array_get(json_object_get(j1, "layers"), 1), "mediaType"),
			    KILN_MT_OCI_LAYER_ZSTD);
	kiln_image_release(&img);

	/* Without force, the gzip base passes through. */
	busybox_image(c, "linux/amd64", &z, &img, &tree, &m2);
	j2 = read_json(c, &m2);
	assert_true(json_equal(json_array_get(json_object_get(j2, "layers"), 0),
			       json_array_get(json_object_get(bm, "layers"), 0)));
	kiln_image_release(&img);
	/* With force but already gzip: kept, never redone. */
	busybox_image(c, "linux/amd64", &gf, &img, &tree, &m3);
	j3 = read_json(c, &m3);
	assert_true(json_equal(json_array_get(json_object_get(j3, "layers"), 0),
			       json_array_get(json_object_get(bm, "layers"), 0)));
	/* A blob whose bytes are not the config's diff_id is refused. */
	kiln_digest_buf("not this", 8, &wrong);
	assert_int_equal(kiln_image_layer_convert(c->store, NULL, &img.layers[0], KILN_MT_OCI_LAYER_GZIP,
						  &wrong, &z, &info, &err), -EBADMSG);
	assert_msg_has(err, "the image config says");
	kiln_error_free(err);
	err = NULL;
	/* A foreign layer is never converted. */
	assert_int_equal(kiln_image_layer_convert(c->store, NULL, &img.layers[0],
						  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
						  &diff_id, &z, &info, &err), -EINVAL);
	kiln_error_free(err);
	json_decref(j1);
	json_decref(j2);
	json_decref(j3);
	json_decref(bm);
	json_decref(bcfg);
	kiln_image_release(&img);
}

/* Same trees + config + epoch, fresh stores: same manifest and index. */
static void test_assemble_reproducible(void **state)
{
	struct ctx *c = *state;
	struct ctx other = { 0 };
	struct kiln_image_opts o = { .has_epoch = true, .epoch = 1700000000 };
	const char *plats[] = { "linux/amd64" };
	struct kiln_digest t1, t2, m1, m2, i1, i2;
	struct kiln_image img1, img2;
	struct kiln_error *err = NULL;
	json_t *m, *cfg;

	busybox_image(c, "linux/amd64", &o, &img1, &t1, &m1);
	open_state(&other, "repro");
	busybox_image(&other, "linux/amd64", &o, &img2, &t2, &m2);
	assert_true(kiln_digest_eq(&t1, &t2));
	assert_true(kiln_digest_eq(&m1, &m2));
	assert_int_equal(kiln_image_index(c->store, &m1, plats, 1, NULL, &i1, &err), 0);
	assert_int_equal(kiln_image_index(other.store, &m2, plats, 1, NULL, &i2, &err), 0);
	assert_true(kiln_digest_eq(&i1, &i2));

	m = read_json(c, &m1);
	cfg = config_of(c, m);
	assert_string_equal(jstr(cfg, "created"), "2023-11-14T22:13:20Z");
	assert_string_equal(jstr(json_array_get(json_object_get(cfg, "history"), 1), "created"),
			    "2023-11-14T22:13:20Z");
	json_decref(m);
	json_decref(cfg);
	kiln_image_release(&img1);
	kiln_image_release(&img2);
	close_state(&other);
}

static void test_assemble_errors(void **state)
{
	struct ctx *c = *state;
	struct kiln_image_spec spec = { .platform = "linux/amd64" };
	struct kiln_digest m;
	struct kiln_error *err = NULL;
	json_t *cfg = frontend_config();

	sample_trees(c);
	/* Two non-empty history entries for one layer. */
	json_object_del(json_array_get(json_object_get(cfg, "history"), 1),
			"empty_layer");
	spec.trees = &sample_child;
	spec.n_trees = 1;
	spec.config = cfg;
	assert_int_equal(kiln_image_assemble(c->store, NULL, &spec, NULL, &m, &err),
			 -EINVAL);
	assert_msg_has(err, "history has 2 non-empty entries for 1 new layers");
	kiln_error_free(err);
	err = NULL;
	spec.config = NULL;
	spec.platform = "linux";
	assert_int_equal(kiln_image_assemble(c->store, NULL, &spec, NULL, &m, &err),
			 -EINVAL);
	assert_msg_has(err, "\"linux\"");
	kiln_error_free(err);
	err = NULL;
	spec.platform = "linux/arm64";
	spec.base_meta = "{\"manifest\":\"sha256:00\"}";
	assert_true(kiln_image_assemble(c->store, NULL, &spec, NULL, &m, &err) < 0);
	assert_msg_has(err, "both");
	kiln_error_free(err);
	json_decref(cfg);
}

/* ---- index and layouts ---- */

struct two {
	struct kiln_image img[2];
	struct kiln_digest tree[2], manifest[2], index;
};

static const char *const two_plats[] = { "linux/amd64", "linux/arm64/v8" };

static void two_platforms(struct ctx *c, struct two *t)
{
	json_t *ann = json_pack("{s:s}", "org.opencontainers.image.title", "kiln");
	struct kiln_error *err = NULL;
	size_t i;

	for (i = 0; i < 2; i++)
		busybox_image(c, two_plats[i], NULL, &t->img[i], &t->tree[i],
			      &t->manifest[i]);
	if (kiln_image_index(c->store, t->manifest, two_plats, 2, ann, &t->index,
			     &err) < 0)
		fail_msg("index: %s", kiln_error_msg(err));
	json_decref(ann);
}

static void two_release(struct two *t)
{
	kiln_image_release(&t->img[0]);
	kiln_image_release(&t->img[1]);
}

static void test_index(void **state)
{
	struct ctx *c = *state;
	struct two t;
	json_t *idx, *list, *e;
	char buf[KILN_DIGEST_STRLEN];
	uint64_t size;

	two_platforms(c, &t);
	idx = read_json(c, &t.index);
	assert_string_equal(jstr(idx, "mediaType"), KILN_MT_OCI_INDEX);
	assert_int_equal(json_integer_value(json_object_get(idx, "schemaVersion")), 2);
	assert_string_equal(jstr(idx, "annotations", "org.opencontainers.image.title"), "kiln");
	list = json_object_get(idx, "manifests");
	assert_int_equal(json_array_size(list), 2);
	e = json_array_get(list, 0);
	assert_string_equal(jstr(e, "digest"), kiln_digest_fmt(&t.manifest[0], buf));
	assert_string_equal(jstr(e, "platform", "architecture"), "amd64");
	assert_null(json_object_get(json_object_get(e, "platform"), "variant"));
	assert_int_equal(kiln_store_size(c->store, &t.manifest[0], &size), 0);
	assert_int_equal(json_integer_value(json_object_get(e, "size")), size);
	e = json_array_get(list, 1);
	assert_string_equal(jstr(e, "platform", "os"), "linux");
	assert_string_equal(jstr(e, "platform", "architecture"), "arm64");
	assert_string_equal(jstr(e, "platform", "variant"), "v8");
	assert_false(kiln_digest_eq(&t.manifest[0], &t.manifest[1]));
	json_decref(idx);
	two_release(&t);
}

static void export_tar_ok(struct ctx *c, const struct kiln_digest *top,
			  const char *dest, const char *ref)
{
	struct kiln_error *err = NULL;

	if (kiln_export_oci_tar(c->store, top, dest, ref, &err) < 0)
		fail_msg("oci tar: %s", kiln_error_msg(err));
}

/* Untar, resolve with kiln for platform, import into a fresh store. */
static void kiln_reimport(const char *tar, const char *dir,
			  const char *platform,
			  const struct kiln_digest *want_manifest,
			  const struct kiln_digest *want_tree)
{
	_cleanup_free_ char *s = xasprintf("oci-layout://%s:v1", dir);
	struct ctx fresh = { 0 };
	struct kiln_error *err = NULL;
	struct kiln_image_ref ref;
	struct kiln_image img;
	struct kiln_digest m;

	assert_int_equal(test_run("mkdir -p %s && tar -xf %s -C %s", dir, tar, dir), 0);
	open_state(&fresh, "reimport");
	if (kiln_image_ref_parse(s, NULL, &ref, &err) < 0 ||
	    kiln_image_resolve(&layout_source, &ref, platform, &m, &err) < 0 ||
	    kiln_image_import(&(struct kiln_image_source){ .store = fresh.store },
				      fresh.layers, &ref, &m, &img, &err) < 0)
		fail_msg("re-import %s: %s", platform, kiln_error_msg(err));
	assert_true(kiln_digest_eq(&m, want_manifest));
	assert_true(kiln_digest_eq(&img.rootfs, want_tree));
	kiln_image_release(&img);
	kiln_image_ref_release(&ref);
	close_state(&fresh);
}

static void test_oci_tar(void **state)
{
	struct ctx *c = *state;
	_cleanup_free_ char *tar = xasprintf("%s/img.tar", c->dir);
	_cleanup_free_ char *tar2 = xasprintf("%s/img2.tar", c->dir);
	_cleanup_free_ char *raw = xasprintf("%s/raw.json", c->dir);
	_cleanup_free_ char *list = xasprintf("%s/list.txt", c->dir);
	_cleanup_free_ char *untar = xasprintf("%s/untar", c->dir);
	_cleanup_free_ char *idx_path = NULL, *text = NULL;
	struct two t;
	size_t len;

	need_tool("skopeo");
	two_platforms(c, &t);
	export_tar_ok(c, &t.index, tar, "v1");
	export_tar_ok(c, &t.index, tar2, "v1");
	assert_int_equal(test_run("cmp -s %s %s", tar, tar2), 0);

	/* Layout entries, sorted, owned by 0:0 with mtime 0. */
	assert_int_equal(test_run("tar --numeric-owner --utc -tvf %s > %s", tar, list), 0);
	assert_int_equal(test_run("head -3 %s | grep -q ' blobs/$'", list), 0);
	assert_int_equal(test_run("tail -2 %s | head -1 | grep -q ' index.json$'", list), 0);
	assert_int_equal(test_run("tail -1 %s | grep -q ' oci-layout$'", list), 0);
	assert_int_equal(test_run("grep -v ' 0/0 ' %s | grep -q .", list), 256);
	assert_int_equal(test_run("grep -v ' 1970-01-01 00:00 ' %s | grep -q .", list), 256);
	/*
	 * index + 2 manifests + 2 configs + 2 base layers + 1 new layer: both
	 * platforms made the same change (same entries, same metadata), so
	 * their new layers are one blob.
	 */
	assert_int_equal(test_run("test $(grep -c ' blobs/sha256/.' %s) -eq 8", list), 0);

	/* skopeo reads the index back byte for byte, and each platform. */
	assert_int_equal(test_run("skopeo inspect --raw oci-archive:%s:v1 > %s", tar, raw), 0);
	idx_path = kiln_store_blob_path(c->store, &t.index);
	assert_int_equal(test_run("cmp -s %s %s", raw, idx_path), 0);
	assert_int_equal(test_run("skopeo inspect --override-arch arm64 --override-variant v8 "
			     "oci-archive:%s:v1 | grep -q '\"Architecture\": \"arm64\"'",
			     tar), 0);
	assert_int_equal(test_run("skopeo inspect --override-arch amd64 oci-archive:%s:v1 "
			     "| grep -q '\"Layers\"'", tar), 0);
	assert_int_equal(kiln_read_file_at(AT_FDCWD, raw, 1 << 20, &text, &len), 0);

	/* kiln itself imports both platforms back to the same trees. */
	kiln_reimport(tar, untar, "linux/arm64", &t.manifest[1], &t.tree[1]);
	kiln_reimport(tar, untar, "linux/amd64", &t.manifest[0], &t.tree[0]);
	two_release(&t);
}

static void test_oci_tar_missing_blob(void **state)
{
	struct ctx *c = *state;
	_cleanup_free_ char *tar = xasprintf("%s/bad.tar", c->dir);
	struct kiln_error *err = NULL;
	struct kiln_image img;
	struct kiln_digest tree, m;

	busybox_image(c, "linux/amd64", NULL, &img, &tree, &m);
	assert_int_equal(kiln_store_remove(c->store, &img.layers[0]), 0);
	assert_int_equal(kiln_export_oci_tar(c->store, &m, tar, "x", &err), -ENOENT);
	assert_msg_has(err, KILN_DIGEST_STR(&img.layers[0]));
	assert_int_equal(access(tar, F_OK), -1);
	kiln_error_free(err);
	kiln_image_release(&img);
}

/* umoci unpacks the image; its rootfs is the tree kiln exported. */
static void umoci_check(struct ctx *c, const char *layout, const char *ref,
			const struct kiln_digest *want, const char *name)
{
	_cleanup_free_ char *bundle = xasprintf("%s/bundle-%s", c->dir, name);
	_cleanup_free_ char *rootfs = xasprintf("%s/rootfs", bundle);
	_cleanup_free_ char *local = xasprintf("%s/local-%s", c->dir, name);
	struct kiln_error *err = NULL;
	struct kiln_digest got;

	assert_int_equal(test_run("umoci unpack --image %s:%s %s >/dev/null",
			     layout, ref, bundle), 0);
	if (kiln_export_local(c->store, want, local, &err) < 0)
		fail_msg("local: %s", kiln_error_msg(err));
	assert_int_equal(test_run("diff -r --no-dereference %s %s", rootfs, local), 0);
	tree_of(c->store, rootfs, &got);
	assert_true(kiln_digest_eq(&got, want));
}

static void test_oci_dir_umoci(void **state)
{
	struct ctx *c = *state;
	_cleanup_free_ char *layout = xasprintf("%s/layout", c->dir);
	_cleanup_free_ char *index = xasprintf("%s/index.json", layout);
	struct kiln_digest trees[2], m, busy_m, busy_tree;
	struct kiln_image img;
	struct kiln_error *err = NULL;
	json_t *idx;

	need_tool("umoci");
	/* FROM scratch: the sample base, then the sample child. */
	sample_trees(c);
	trees[0] = sample_base;
	trees[1] = sample_child;
	assemble_ok(c, "linux/amd64", NULL, NULL, trees, 2, NULL, NULL, &m);
	if (kiln_export_oci_dir(c->store, &m, layout, "scratch", &err) < 0)
		fail_msg("oci dir: %s", kiln_error_msg(err));
	umoci_check(c, layout, "scratch", &sample_child, "scratch");

	/* A second image into the same directory keeps the first. */
	busybox_image(c, "linux/amd64", NULL, &img, &busy_tree, &busy_m);
	if (kiln_export_oci_dir(c->store, &busy_m, layout, "busybox", &err) < 0)
		fail_msg("oci dir: %s", kiln_error_msg(err));
	umoci_check(c, layout, "busybox", &busy_tree, "busybox");
	idx = json_load_file(index, 0, NULL);
	assert_int_equal(json_array_size(json_object_get(idx, "manifests")), 2);
	json_decref(idx);
	/* Again: same layout, entry replaced, not added. */
	if (kiln_export_oci_dir(c->store, &busy_m, layout, "busybox", &err) < 0)
		fail_msg("oci dir: %s", kiln_error_msg(err));
	idx = json_load_file(index, 0, NULL);
	assert_int_equal(json_array_size(json_object_get(idx, "manifests")), 2);
	json_decref(idx);
	kiln_image_release(&img);
}

static void test_opts(void **state)
{
	struct kiln_image_opts o = { 0 };
	struct kiln_error *err = NULL;

	(void)state;
	assert_int_equal(kiln_image_opts_set(&o, "compression", "zstd", &err), 0);
	assert_int_equal(o.compression, KILN_COMPRESS_ZSTD);
	assert_int_equal(kiln_image_opts_set(&o, "compression-level", "19", &err), 0);
	assert_int_equal(o.level, 19);
	assert_int_equal(kiln_image_opts_set(&o, "compression", "gzip", &err), -EINVAL);
	assert_msg_has(err, "over 9");
	kiln_error_free(err);
	err = NULL;
	assert_int_equal(kiln_image_opts_set(&o, "compression", "lz4", &err), -EINVAL);
	assert_msg_has(err, "lz4");
	kiln_error_free(err);
	err = NULL;
	assert_int_equal(kiln_image_opts_set(&o, "compression-level", "0", &err), -EINVAL);
	kiln_error_free(err);
	err = NULL;
	assert_int_equal(kiln_image_opts_set(&o, "force-compression", "true", &err), 0);
	assert_true(o.force);
	assert_int_equal(kiln_image_opts_set(&o, "force-compression", "yes", &err), -EINVAL);
	assert_msg_has(err, "force-compression=yes");
	kiln_error_free(err);
	err = NULL;
	assert_int_equal(kiln_image_opts_set(&o, "dest", "x", &err), -ENOENT);
	assert_null(err);
	assert_int_equal(kiln_image_opts_epoch(&o, "1700000000", &err), 0);
	assert_true(o.has_epoch);
	assert_int_equal(o.epoch, 1700000000);
	assert_int_equal(kiln_image_opts_epoch(&o, "-5", &err), -EINVAL);
	assert_msg_has(err, "SOURCE_DATE_EPOCH=-5");
	kiln_error_free(err);
	assert_int_equal(kiln_image_opts_epoch(&o, NULL, NULL), 0);
	assert_false(o.has_epoch);
}

static int group_setup(void **state)
{
	const char *src = getenv("KILN_SOURCE_ROOT");
	const char *tmp = getenv("TMPDIR");

	base_dir = xasprintf("%s/kiln-test-imgx.XXXXXX", tmp ? tmp : "/var/tmp");
	if (!mkdtemp(base_dir))
		return -1;
	if (access("/var/tmp/kiln-fixtures/busybox/index.json", F_OK) == 0) {
		layout_dir = xstrdup("/var/tmp/kiln-fixtures/busybox");
		return 0;
	}
	layout_dir = xasprintf("%s/busybox", base_dir);
	if (test_run("%s/scripts/make-busybox-layout.sh %s", src ? src : ".",
		layout_dir) != 0) {
		fprintf(stderr, "test-image-export: make-busybox-layout.sh failed\n");
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	kiln_rm_rf(base_dir);
	free(base_dir);
	free(layout_dir);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_opts),
		cmocka_unit_test_setup_teardown(test_layer_entries_and_roundtrip,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_layer_full_tree, setup, teardown),
		cmocka_unit_test_setup_teardown(test_layer_deterministic, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_layer_epoch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_layer_cache, setup, teardown),
		cmocka_unit_test_setup_teardown(test_assemble_busybox, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_force_compression, setup, teardown),
		cmocka_unit_test_setup_teardown(test_assemble_reproducible, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_assemble_errors, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_index, setup, teardown),
		cmocka_unit_test_setup_teardown(test_oci_tar, setup, teardown),
		cmocka_unit_test_setup_teardown(test_oci_tar_missing_blob, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_oci_dir_umoci, setup, teardown),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
