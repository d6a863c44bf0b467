/*
 * source.image: references, platform resolution, import of the busybox
 * fixture (scripts/make-busybox-layout.sh), and hostile layer tars built
 * here with libarchive's writer.
 */
/* Entry tables below leave trailing fields zero on purpose. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "test-util.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cas/tree.h"
#include "source/image.h"
#include "registry/registry.h"

#define MT_MANIFEST "application/vnd.oci.image.manifest.v1+json"

/* Layouts are read from their directory: no registry, no store. */
static const struct kiln_image_source layout_source;

static char *base_dir;    /* per-binary temp dir */
static char *layout_dir;  /* the busybox fixture */

/* Per-test state. */
struct ctx {
	char *dir;
	struct kiln_store *store;
	struct kiln_layers *layers;
};

/* ---- helpers ---- */

static void assert_msg_has(const struct kiln_error *e, const char *needle)
{
	assert_non_null(e);
	if (!strstr(e->msg, needle))
		fail_msg("error \"%s\" does not mention \"%s\"", e->msg, needle);
}

static bool dir_is_empty(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	bool empty = true;

	assert_non_null(d);
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			empty = false;
	closedir(d);
	return empty;
}

static bool exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

static int open_state(struct ctx *c, const char *name)
{
	_cleanup_free_ char *cas = NULL, *lay = NULL;
	struct kiln_error *err = NULL;

	c->dir = xasprintf("%s/%s", base_dir, name);
	assert_int_equal(kiln_mkdir_p(c->dir, 0755), 0);
	cas = xasprintf("%s/cas", c->dir);
	lay = xasprintf("%s/layers", c->dir);
	if (kiln_store_open(cas, NULL, &c->store, &err) < 0 ||
	    kiln_layers_open(lay, c->store, &c->layers, &err) < 0)
		fail_msg("opening state: %s", kiln_error_msg(err));
	return 0;
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

static void close_state(struct ctx *c)
{
	kiln_layers_free(c->layers);
	kiln_store_free(c->store);
	c->layers = NULL;
	c->store = NULL;
}

static int teardown(void **state)
{
	struct ctx *c = *state;

	close_state(c);
	kiln_rm_rf(c->dir);
	free(c->dir);
	free(c);
	return 0;
}

static int group_setup(void **state)
{
	const char *src = getenv("KILN_SOURCE_ROOT");
	const char *tmp = getenv("TMPDIR");

	base_dir = xasprintf("%s/kiln-test-image.XXXXXX", tmp ? tmp : "/var/tmp");
	if (!mkdtemp(base_dir))
		return -1;
	layout_dir = xasprintf("%s/busybox", base_dir);
	if (!src)
		src = ".";
	if (test_run("%s/scripts/make-busybox-layout.sh %s", src, layout_dir) != 0) {
		fprintf(stderr, "test-image: scripts/make-busybox-layout.sh %s "
			"failed; the fixture needs apt-get (network) on first "
			"run or a filled $KILN_FIXTURE_CACHE\n", layout_dir);
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

static void ref_for(struct kiln_image_ref *ref, const char *layout,
		    const char *tag)
{
	_cleanup_free_ char *s = xasprintf("oci-layout://%s:%s", layout, tag);
	struct kiln_error *err = NULL;

	if (kiln_image_ref_parse(s, NULL, ref, &err) < 0)
		fail_msg("%s", kiln_error_msg(err));
}

static void resolve_ok(const struct kiln_image_ref *ref, const char *platform,
		       struct kiln_digest *d)
{
	struct kiln_error *err = NULL;

	if (kiln_image_resolve(&layout_source, ref, platform, d, &err) < 0)
		fail_msg("resolve %s: %s", platform, kiln_error_msg(err));
}

static void import_ok(struct ctx *c, const struct kiln_image_ref *ref,
		      const char *platform, struct kiln_image *img)
{
	struct kiln_error *err = NULL;
	struct kiln_digest m;

	resolve_ok(ref, platform, &m);
	if (kiln_image_import(&(struct kiln_image_source){ .store = c->store },
				      c->layers, ref, &m, img, &err) < 0)
		fail_msg("import %s: %s", platform, kiln_error_msg(err));
	assert_true(kiln_digest_eq(&img->manifest, &m));
}

static void lookup(struct ctx *c, const struct kiln_digest *root,
		   const char *path, struct kiln_tree_entry *e)
{
	struct kiln_error *err = NULL;

	memset(e, 0, sizeof(*e));
	if (kiln_tree_lookup(c->store, root, path, e, &err) < 0)
		fail_msg("lookup %s: %s", path, kiln_error_msg(err));
}

/* ---- building tars ---- */

struct tent {
	const char *path;
	char type; /* f file, d dir, l symlink, h hardlink, p fifo */
	const char *data; /* file content, link target */
	unsigned mode;
	unsigned uid, gid;
	long mtime;
	const char *xattr; /* "name=value" */
};

static void add_entry(struct archive *a, const struct tent *t)
{
	struct archive_entry *e = archive_entry_new();
	size_t len = t->type == 'f' && t->data ? strlen(t->data) : 0;
	static const unsigned types[] = {
		['f'] = AE_IFREG, ['d'] = AE_IFDIR, ['l'] = AE_IFLNK,
		['h'] = AE_IFREG, ['p'] = AE_IFIFO,
	};

	archive_entry_set_pathname(e, t->path);
	archive_entry_set_filetype(e, types[(unsigned char)t->type]);
	archive_entry_set_perm(e, t->mode ? t->mode : 0644);
	archive_entry_set_uid(e, t->uid);
	archive_entry_set_gid(e, t->gid);
	archive_entry_set_mtime(e, t->mtime, 0);
	archive_entry_set_size(e, (la_int64_t)len);
	if (t->type == 'l')
		archive_entry_set_symlink(e, t->data);
	if (t->type == 'h')
		archive_entry_set_hardlink(e, t->data);
	if (t->xattr) {
		const char *eq = strchr(t->xattr, '=');
		_cleanup_free_ char *n = xstrndup(t->xattr, (size_t)(eq - t->xattr));

		archive_entry_xattr_add_entry(e, n, eq + 1, strlen(eq + 1));
	}
	assert_int_equal(archive_write_header(a, e), ARCHIVE_OK);
	if (len)
		assert_int_equal(archive_write_data(a, t->data, len), (ssize_t)len);
	archive_entry_free(e);
}

/* A tar of ents in memory; filter 'g' gzip, 'z' zstd, 0 none. */
static char *make_tar(const struct tent *ents, size_t n, char filter,
		      size_t *len)
{
	size_t cap = 1 << 20;
	char *buf = xmalloc(cap);
	struct archive *a = archive_write_new();
	size_t i;

	archive_write_set_format_pax_restricted(a);
	if (filter == 'g')
		archive_write_add_filter_gzip(a);
	else if (filter == 'z')
		archive_write_add_filter_zstd(a);
	assert_int_equal(archive_write_open_memory(a, buf, cap, len), ARCHIVE_OK);
	for (i = 0; i < n; i++)
		add_entry(a, &ents[i]);
	assert_int_equal(archive_write_close(a), ARCHIVE_OK);
	archive_write_free(a);
	return buf;
}

static int tar_fd(const struct tent *ents, size_t n, char filter)
{
	size_t len;
	_cleanup_free_ char *buf = make_tar(ents, n, filter, &len);
	int fd = memfd_create("layer", MFD_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(kiln_write_full(fd, buf, len), 0);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	return fd;
}

/* Extract ents into c->dir/a/b/x; returns the result, *err set on failure. */
static int extract(struct ctx *c, const struct tent *ents, size_t n,
		   char filter, struct kiln_error **err)
{
	_cleanup_free_ char *x = xasprintf("%s/a/b/x", c->dir);
	_cleanup_close_ int fd = tar_fd(ents, n, filter);
	_cleanup_close_ int dfd = -1;

	assert_int_equal(kiln_mkdir_p(x, 0755), 0);
	dfd = open(x, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(dfd >= 0);
	return kiln_layer_extract(fd, dfd, err);
}

static char *xpath(struct ctx *c, const char *rel)
{
	return xasprintf("%s/a/b/x/%s", c->dir, rel);
}

/* ---- references and resolution ---- */

static void test_ref_parse(void **state)
{
	struct kiln_image_ref r = { 0 };
	struct kiln_error *err = NULL;

	assert_int_equal(kiln_image_ref_parse("oci-layout:///srv/img", "/x", &r, &err), 0);
	assert_string_equal(r.layout, "/srv/img");
	assert_string_equal(r.tag, "latest");
	kiln_image_ref_release(&r);

	assert_int_equal(kiln_image_ref_parse("oci-layout://img:v1.2", "/base", &r, &err), 0);
	assert_string_equal(r.layout, "/base/img");
	assert_string_equal(r.tag, "v1.2");
	kiln_image_ref_release(&r);

	/* A ':' followed by a '/' belongs to the path. */
	assert_int_equal(kiln_image_ref_parse("oci-layout://a:b/c", "/base", &r, &err), 0);
	assert_string_equal(r.layout, "/base/a:b/c");
	assert_string_equal(r.tag, "latest");
	kiln_image_ref_release(&r);

	/* A reference without the scheme is a registry image (Docker's rules). */
	assert_int_equal(kiln_image_ref_parse("busybox", "/", &r, &err), 0);
	assert_null(r.layout);
	assert_non_null(r.registry);
	assert_string_equal(r.registry->registry, "docker.io");
	assert_string_equal(r.registry->repository, "library/busybox");
	assert_string_equal(r.registry->tag, "latest");
	kiln_image_ref_release(&r);
	assert_true(kiln_image_ref_parse("Bad//Ref", "/", &r, &err) < 0);
	assert_msg_has(err, "Bad//Ref");
	kiln_error_free(err);
	err = NULL;
	assert_true(kiln_image_ref_parse("oci-layout://img:", "/", &r, &err) < 0);
	kiln_error_free(err);
}

static void test_resolve_platforms(void **state)
{
	struct kiln_image_ref ref;
	struct kiln_digest amd, arm, d;

	ref_for(&ref, layout_dir, "latest");
	resolve_ok(&ref, "linux/amd64", &amd);
	resolve_ok(&ref, "linux/arm64", &arm);
	assert_false(kiln_digest_eq(&amd, &arm));
	/* Spellings normalize. */
	resolve_ok(&ref, "linux/x86_64", &d);
	assert_true(kiln_digest_eq(&d, &amd));
	resolve_ok(&ref, "linux/aarch64", &d);
	assert_true(kiln_digest_eq(&d, &arm));
	resolve_ok(&ref, "linux/arm64/v8", &d);
	assert_true(kiln_digest_eq(&d, &arm));
	kiln_image_ref_release(&ref);
}

static void test_resolve_unknown(void **state)
{
	struct kiln_image_ref ref;
	struct kiln_error *err = NULL;
	struct kiln_digest d;

	ref_for(&ref, layout_dir, "latest");
	assert_true(kiln_image_resolve(&layout_source, &ref, "linux/s390x", &d, &err) < 0);
	assert_msg_has(err, "linux/s390x");
	assert_msg_has(err, "linux/amd64");
	assert_msg_has(err, "linux/arm64");
	kiln_error_free(err);
	err = NULL;
	kiln_image_ref_release(&ref);

	ref_for(&ref, layout_dir, "nosuchtag");
	assert_true(kiln_image_resolve(&layout_source, &ref, "linux/amd64", &d, &err) < 0);
	assert_msg_has(err, "nosuchtag");
	kiln_error_free(err);
	kiln_image_ref_release(&ref);
}

/* ---- import ---- */

static void test_import_busybox(void **state)
{
	struct ctx *c = *state;
	struct kiln_image_ref ref;
	struct kiln_image img, img2;
	struct kiln_tree_entry e;

	ref_for(&ref, layout_dir, "latest");
	import_ok(c, &ref, "linux/amd64", &img);
	assert_int_equal(img.n_layers, 1);
	assert_true(kiln_store_has(c->store, &img.manifest));
	assert_true(kiln_store_has(c->store, &img.config));
	assert_true(kiln_store_has(c->store, &img.layers[0]));
	assert_true(kiln_layers_has(c->layers, &img.rootfs));

	lookup(c, &img.rootfs, "bin/busybox", &e);
	assert_int_equal(e.type, KILN_ENTRY_FILE);
	assert_int_equal(e.mode, 0755);
	assert_true(e.size > 100000);
	kiln_tree_entry_release(&e);
	lookup(c, &img.rootfs, "bin/sh", &e);
	assert_int_equal(e.type, KILN_ENTRY_SYMLINK);
	assert_string_equal(e.target, "busybox");
	kiln_tree_entry_release(&e);
	lookup(c, &img.rootfs, "etc/passwd", &e);
	assert_int_equal(e.type, KILN_ENTRY_FILE);
	kiln_tree_entry_release(&e);
	lookup(c, &img.rootfs, "tmp", &e);
	assert_int_equal(e.type, KILN_ENTRY_DIR);
	assert_int_equal(e.mode, 01777);
	kiln_tree_entry_release(&e);

	/* Again, same store: same tree. */
	import_ok(c, &ref, "linux/amd64", &img2);
	assert_true(kiln_digest_eq(&img.rootfs, &img2.rootfs));
	kiln_image_release(&img2);

	/* Again, fresh store: still the same tree. */
	close_state(c);
	kiln_rm_rf(c->dir);
	free(c->dir);
	open_state(c, "import-fresh");
	import_ok(c, &ref, "linux/amd64", &img2);
	assert_true(kiln_digest_eq(&img.rootfs, &img2.rootfs));
	kiln_image_release(&img2);

	/* arm64 gives another tree. */
	import_ok(c, &ref, "linux/arm64", &img2);
	assert_false(kiln_digest_eq(&img.rootfs, &img2.rootfs));
	kiln_image_release(&img2);
	kiln_image_release(&img);
	kiln_image_ref_release(&ref);
}

/*
 * Reimports reuse the memo of (parent, diff_id) -> tree; a memo entry that
 * names a tree without a layer (stale, pruned, forged) is never trusted.
 */
static void test_import_layer_memo(void **state)
{
	struct ctx *c = *state;
	struct kiln_image_ref ref;
	struct kiln_image img, img2;
	_cleanup_free_ char *memo = xasprintf("%s/layers/memo", c->dir);
	_cleanup_free_ char *cmd = NULL;

	ref_for(&ref, layout_dir, "latest");
	import_ok(c, &ref, "linux/amd64", &img);
	cmd = xasprintf("test $(ls %s | wc -l) -eq 1", memo);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	/* Forge every memo entry to name a tree that has no layer. */
	cmd = xasprintf("for f in %s/*; do printf sha256:%%064d 0 > \"$f\"; done", memo);
	assert_int_equal(system(cmd), 0);
	import_ok(c, &ref, "linux/amd64", &img2);
	assert_true(kiln_digest_eq(&img.rootfs, &img2.rootfs));
	assert_true(kiln_layers_has(c->layers, &img2.rootfs));
	kiln_image_release(&img2);
	/* The import repaired the memo: a third import hits it, same tree. */
	import_ok(c, &ref, "linux/amd64", &img2);
	assert_true(kiln_digest_eq(&img.rootfs, &img2.rootfs));
	kiln_image_release(&img2);
	kiln_image_release(&img);
	kiln_image_ref_release(&ref);
}

/* Digest of layer 0 of the manifest for platform. */
static void first_layer(const struct kiln_image_ref *ref, const char *platform,
			struct kiln_digest *layer)
{
	struct kiln_digest m;
	char hex[KILN_DIGEST_HEXLEN];
	_cleanup_free_ char *path = NULL;
	json_t *j;

	resolve_ok(ref, platform, &m);
	path = xasprintf("%s/blobs/sha256/%s", ref->layout, kiln_digest_hex(&m, hex));
	j = json_load_file(path, 0, NULL);
	assert_non_null(j);
	assert_int_equal(kiln_digest_parse(json_string_value(json_object_get(
				json_array_get(json_object_get(j, "layers"), 0),
				"digest")), layer), 0);
	json_decref(j);
}

static void flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	unsigned char b;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, off), 1);
	b ^= 0xff;
	assert_int_equal(pwrite(fd, &b, 1, off), 1);
	close(fd);
}

static void test_import_corrupt_blob(void **state)
{
	struct ctx *c = *state;
	_cleanup_free_ char *copy = xasprintf("%s/corrupt", c->dir);
	_cleanup_free_ char *blob = NULL, *tmp = NULL;
	struct kiln_image_ref ref;
	struct kiln_digest m, layer;
	struct kiln_error *err = NULL;
	struct kiln_image img;
	char hex[KILN_DIGEST_HEXLEN];

	assert_int_equal(test_run("cp -a %s %s", layout_dir, copy), 0);
	ref_for(&ref, copy, "latest");
	first_layer(&ref, "linux/amd64", &layer);
	blob = xasprintf("%s/blobs/sha256/%s", copy, kiln_digest_hex(&layer, hex));
	flip_byte(blob, 5000);

	resolve_ok(&ref, "linux/amd64", &m);
	assert_true(kiln_image_import(&(struct kiln_image_source){ .store = c->store },
				      c->layers, &ref, &m, &img, &err) < 0);
	assert_msg_has(err, KILN_DIGEST_STR(&layer));
	assert_msg_has(err, copy);
	assert_false(kiln_store_has(c->store, &layer));
	tmp = xasprintf("%s/cas/tmp", c->dir);
	assert_true(dir_is_empty(tmp));
	kiln_error_free(err);
	kiln_image_ref_release(&ref);
}

static void test_resolve_corrupt_manifest(void **state)
{
	struct ctx *c = *state;
	_cleanup_free_ char *copy = xasprintf("%s/corrupt-m", c->dir);
	_cleanup_free_ char *blob = NULL;
	struct kiln_image_ref ref;
	struct kiln_digest m;
	struct kiln_error *err = NULL;
	char hex[KILN_DIGEST_HEXLEN];

	assert_int_equal(test_run("cp -a %s %s", layout_dir, copy), 0);
	ref_for(&ref, copy, "latest");
	resolve_ok(&ref, "linux/arm64", &m);
	blob = xasprintf("%s/blobs/sha256/%s", copy, kiln_digest_hex(&m, hex));
	flip_byte(blob, 10);
	assert_true(kiln_image_resolve(&layout_source, &ref, "linux/arm64", &m, &err) < 0);
	assert_msg_has(err, hex);
	assert_msg_has(err, copy);
	kiln_error_free(err);
	kiln_image_ref_release(&ref);
}

/* ---- hostile tars ---- */

struct hostile {
	const char *bad_entry; /* named in the error */
	struct tent ents[4];
	size_t n;
};

static void check_hostile(struct ctx *c, const struct hostile *h, char filter)
{
	_cleanup_free_ char *outside = xasprintf("%s/outside", c->dir);
	_cleanup_free_ char *secret_dir = xasprintf("%s/secret", c->dir);
	_cleanup_free_ char *secret = xasprintf("%s/secret/file", c->dir);
	const char *escapes[] = { "evil", "a/evil", "a/b/evil" };
	struct kiln_error *err = NULL;
	struct stat st;
	size_t i;

	assert_int_equal(kiln_mkdir_p(outside, 0755), 0);
	assert_int_equal(kiln_mkdir_p(secret_dir, 0755), 0);
	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, secret, "s", 1, 0644,
						   false), 0);
	assert_true(extract(c, h->ents, h->n, filter, &err) < 0);
	assert_msg_has(err, h->bad_entry);
	kiln_error_free(err);
	assert_true(dir_is_empty(outside));
	for (i = 0; i < ARRAY_SIZE(escapes); i++) {
		_cleanup_free_ char *p = xasprintf("%s/%s", c->dir, escapes[i]);
		assert_false(exists(p));
	}
	assert_false(exists("/evil"));
	/* The file a hardlink tried to reach was never linked. */
	assert_int_equal(stat(secret, &st), 0);
	assert_int_equal(st.st_nlink, 1);
	assert_int_equal(stat("/etc/passwd", &st), 0);
	assert_int_equal(st.st_nlink, 1);
	for (i = 0; i < 3; i++) {
		const char *names[] = { "a", "outside", "secret" };
		_cleanup_free_ char *p = xasprintf("%s/%s", c->dir, names[i]);
		assert_int_equal(kiln_rm_rf(p), 0);
	}
}

static void test_extract_hostile(void **state)
{
	struct ctx *c = *state;
	_cleanup_free_ char *outside = xasprintf("%s/outside", c->dir);
	_cleanup_free_ char *secret_dir = xasprintf("%s/secret", c->dir);
	struct hostile cases[] = {
		{ "../evil", { { "../evil", 'f', "x" } }, 1 },
		{ "/abs/../../evil", { { "/abs/../../evil", 'f', "x" } }, 1 },
		{ "x/../../../evil", { { "ok", 'f', "x" }, { "x/../../../evil", 'd' } }, 2 },
		{ "link/pwned",
		  { { "link", 'l', outside }, { "link/pwned", 'f', "x" } }, 2 },
		{ "link/sub/pwned",
		  { { "link", 'l', outside }, { "link/sub/pwned", 'f', "x" } }, 2 },
		{ "../../etc/passwd", { { "hl", 'h', "../../etc/passwd" } }, 1 },
		{ "etc/passwd", { { "etc", 'l', "/etc" }, { "hl", 'h', "etc/passwd" } }, 2 },
		{ "s/file", { { "s", 'l', secret_dir }, { "hl", 'h', "s/file" } }, 2 },
		{ "missing", { { "hl", 'h', "missing" } }, 1 },
	};
	static const char filters[] = { 0, 'g', 'z' };
	size_t i;

	for (i = 0; i < ARRAY_SIZE(cases); i++)
		check_hostile(c, &cases[i], filters[i % 3]);
}

static void test_extract_whiteouts(void **state)
{
	struct ctx *c = *state;
	const struct tent ents[] = {
		{ "dir/", 'd', NULL, 0755 },
		{ "dir/.wh..wh..opq", 'f', "" },
		{ "dir/keep", 'f', "k" },
		{ ".wh.gone", 'f', "" },
		{ "sub/.wh.f", 'f', "" },
		{ "both", 'f', "real" },
		{ ".wh.both", 'f', "" },
	};
	_cleanup_free_ char *gone = xpath(c, "gone"), *f = xpath(c, "sub/f");
	_cleanup_free_ char *dir = xpath(c, "dir"), *keep = xpath(c, "dir/keep");
	_cleanup_free_ char *wh = xpath(c, ".wh.gone"), *opq = xpath(c, "dir/.wh..wh..opq");
	_cleanup_free_ char *both = xpath(c, "both");
	struct kiln_error *err = NULL;
	struct stat st;
	char v[8] = { 0 };

	if (extract(c, ents, ARRAY_SIZE(ents), 'g', &err) < 0)
		fail_msg("%s", kiln_error_msg(err));
	assert_int_equal(lstat(gone, &st), 0);
	assert_true(S_ISCHR(st.st_mode));
	assert_int_equal(st.st_rdev, makedev(0, 0));
	assert_int_equal(lstat(f, &st), 0);
	assert_true(S_ISCHR(st.st_mode));
	assert_int_equal(st.st_rdev, makedev(0, 0));
	assert_int_equal(getxattr(dir, "trusted.overlay.opaque", v, sizeof(v)), 1);
	assert_string_equal(v, "y");
	assert_int_equal(lstat(keep, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_false(exists(wh));
	assert_false(exists(opq));
	/* A whiteout never hides an entry of its own layer. */
	assert_int_equal(lstat(both, &st), 0);
	assert_true(S_ISREG(st.st_mode));
}

static void test_extract_metadata(void **state)
{
	struct ctx *c = *state;
	const struct tent ents[] = {
		{ "./d/", 'd', NULL, 0750, 1000, 1000, 1000 },
		{ "d/f", 'f', "data", 04755, 1000, 2000, 2000, "user.test=v" },
		{ "d/l", 'l', "/abs/target", 0777, 5, 6, 3000 },
		{ "d/h", 'h', "d/f" },
		{ "/d/p", 'p', NULL, 0640, 0, 0, 4000 },
		{ "imp/q/r", 'f', "r", 0600 },
		{ "d/f2", 'f', "one" },
		{ "d/f2", 'f', "second" },
	};
	_cleanup_free_ char *d = xpath(c, "d"), *f = xpath(c, "d/f");
	_cleanup_free_ char *l = xpath(c, "d/l"), *h = xpath(c, "d/h");
	_cleanup_free_ char *p = xpath(c, "d/p"), *imp = xpath(c, "imp");
	_cleanup_free_ char *f2 = xpath(c, "d/f2");
	struct kiln_error *err = NULL;
	struct stat st, st2;
	char buf[64] = { 0 };

	if (extract(c, ents, ARRAY_SIZE(ents), 'z', &err) < 0)
		fail_msg("%s", kiln_error_msg(err));
	assert_int_equal(lstat(d, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0750);
	assert_int_equal(st.st_uid, 1000);
	assert_int_equal(st.st_mtime, 1000); /* after its children */
	assert_int_equal(lstat(f, &st), 0);
	assert_int_equal(st.st_mode & 07777, 04755);
	assert_int_equal(st.st_gid, 2000);
	assert_int_equal(st.st_mtime, 2000);
	assert_int_equal(st.st_size, 4);
	assert_int_equal(st.st_nlink, 2);
	assert_int_equal(getxattr(f, "user.test", buf, sizeof(buf)), 1);
	assert_int_equal(lstat(h, &st2), 0);
	assert_int_equal(st.st_ino, st2.st_ino);
	assert_int_equal(lstat(l, &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	assert_int_equal(st.st_uid, 5);
	assert_int_equal(st.st_mtime, 3000);
	assert_int_equal(readlink(l, buf, sizeof(buf)), strlen("/abs/target"));
	assert_int_equal(lstat(p, &st), 0);
	assert_true(S_ISFIFO(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0640);
	assert_int_equal(lstat(imp, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0755);
	assert_int_equal(st.st_mtime, 0);
	assert_int_equal(lstat(f2, &st), 0);
	assert_int_equal(st.st_size, 6);
}

static void test_extract_garbage(void **state)
{
	struct ctx *c = *state;
	_cleanup_free_ char *x = xasprintf("%s/g", c->dir);
	_cleanup_close_ int fd = memfd_create("junk", MFD_CLOEXEC);
	_cleanup_close_ int dfd = -1;
	struct kiln_error *err = NULL;

	assert_int_equal(kiln_mkdir_p(x, 0755), 0);
	dfd = open(x, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_int_equal(kiln_write_full(fd, "this is not a tar file at all", 29), 0);
	lseek(fd, 0, SEEK_SET);
	assert_true(kiln_layer_extract(fd, dfd, &err) < 0);
	assert_non_null(err);
	kiln_error_free(err);
}

/* ---- a two-layer image built here ---- */

static void put_blob(const char *layout, const void *data, size_t len,
		     struct kiln_digest *d)
{
	char hex[KILN_DIGEST_HEXLEN];
	_cleanup_free_ char *p = NULL;

	kiln_digest_buf(data, len, d);
	p = xasprintf("%s/blobs/sha256/%s", layout, kiln_digest_hex(d, hex));
	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, p, data, len, 0644,
						   false), 0);
}

static json_t *desc_json(const char *mt, const struct kiln_digest *d,
			 size_t size)
{
	return json_pack("{s:s, s:s, s:I}", "mediaType", mt, "digest",
			 KILN_DIGEST_STR(d), "size", (json_int_t)size);
}

static void put_json_blob(const char *layout, json_t *j, struct kiln_digest *d,
			  size_t *len)
{
	_cleanup_free_ char *s = json_dumps(j, JSON_COMPACT);

	*len = strlen(s);
	put_blob(layout, s, *len, d);
	json_decref(j);
}

/*
 * Layout with one manifest (no index) of two layers: the second deletes
 * etc/a and adds tmp/x under the implied tmp. bad_diff spoils diff_ids[1].
 */
static char *make_two_layer_layout(struct ctx *c, bool bad_diff,
				   struct kiln_digest *layer2)
{
	const struct tent l1[] = {
		{ "etc/", 'd', NULL, 0755, 0, 0, 100 },
		{ "etc/a", 'f', "hello" },
		{ "etc/b", 'f', "bye" },
		{ "tmp/", 'd', NULL, 01777, 0, 0, 200 },
	};
	const struct tent l2[] = {
		{ "etc/.wh.a", 'f', "" },
		{ "tmp/x", 'f', "x" },
	};
	char *layout = xasprintf("%s/two%s", c->dir, bad_diff ? "-bad" : "");
	_cleanup_free_ char *blobs = xasprintf("%s/blobs/sha256", layout);
	_cleanup_free_ char *t1 = NULL, *t2 = NULL, *g1 = NULL, *g2 = NULL;
	size_t n1, n2, ng1, ng2, clen, mlen;
	struct kiln_digest d1, d2, gd1, gd2, cd, md;
	json_t *idx;
	_cleanup_free_ char *idxs = NULL;

	assert_int_equal(kiln_mkdir_p(blobs, 0755), 0);
	t1 = make_tar(l1, ARRAY_SIZE(l1), 0, &n1);
	t2 = make_tar(l2, ARRAY_SIZE(l2), 0, &n2);
	g1 = make_tar(l1, ARRAY_SIZE(l1), 'g', &ng1);
	g2 = make_tar(l2, ARRAY_SIZE(l2), 'z', &ng2);
	kiln_digest_buf(t1, n1, &d1);
	kiln_digest_buf(t2, n2, &d2);
	put_blob(layout, g1, ng1, &gd1);
	put_blob(layout, g2, ng2, &gd2);
	*layer2 = gd2;
	put_json_blob(layout, json_pack("{s:s, s:s, s:{s:s, s:[s, s]}}",
			"architecture", "amd64", "os", "linux", "rootfs",
			"type", "layers", "diff_ids", KILN_DIGEST_STR(&d1),
			KILN_DIGEST_STR(bad_diff ? &d1 : &d2)), &cd, &clen);
	put_json_blob(layout, json_pack("{s:i, s:s, s:o, s:[o, o]}",
			"schemaVersion", 2, "mediaType", MT_MANIFEST,
			"config", desc_json("application/vnd.oci.image.config.v1+json", &cd, clen),
			"layers",
			desc_json("application/vnd.oci.image.layer.v1.tar+gzip", &gd1, ng1),
			desc_json("application/vnd.oci.image.layer.v1.tar+zstd", &gd2, ng2)),
		      &md, &mlen);
	idx = json_pack("{s:i, s:[o]}", "schemaVersion", 2, "manifests",
			desc_json(MT_MANIFEST, &md, mlen));
	idxs = json_dumps(idx, JSON_COMPACT);
	json_decref(idx);
	assert_int_equal(test_run("printf '%%s' '{\"imageLayoutVersion\":\"1.0.0\"}' > %s/oci-layout && "
			     "printf '%%s' '%s' > %s/index.json", layout, idxs, layout), 0);
	return layout;
}

static void test_two_layers(void **state)
{
	struct ctx *c = *state;
	struct kiln_digest l2;
	_cleanup_free_ char *layout = make_two_layer_layout(c, false, &l2);
	struct kiln_image_ref ref;
	struct kiln_image img;
	struct kiln_tree_entry e;
	struct kiln_error *err = NULL;

	ref_for(&ref, layout, "latest");
	import_ok(c, &ref, "linux/amd64", &img);
	assert_int_equal(img.n_layers, 2);
	assert_int_equal(kiln_tree_lookup(c->store, &img.rootfs, "etc/a", &e, &err),
			 -ENOENT);
	kiln_error_free(err);
	lookup(c, &img.rootfs, "etc/b", &e);
	assert_int_equal(e.type, KILN_ENTRY_FILE);
	kiln_tree_entry_release(&e);
	lookup(c, &img.rootfs, "tmp/x", &e);
	kiln_tree_entry_release(&e);
	/* tmp is only implied by layer 2: it keeps layer 1's metadata. */
	lookup(c, &img.rootfs, "tmp", &e);
	assert_int_equal(e.mode, 01777);
	assert_int_equal(e.mtime_sec, 200);
	kiln_tree_entry_release(&e);
	/* A single-manifest layout is checked against its config. */
	err = NULL;
	assert_true(kiln_image_resolve(&layout_source, &ref, "linux/arm64", &l2, &err) < 0);
	assert_msg_has(err, "linux/amd64");
	kiln_error_free(err);
	kiln_image_release(&img);
	kiln_image_ref_release(&ref);
}

static void test_diff_id_mismatch(void **state)
{
	struct ctx *c = *state;
	struct kiln_digest l2, m;
	_cleanup_free_ char *layout = make_two_layer_layout(c, true, &l2);
	struct kiln_image_ref ref;
	struct kiln_image img;
	struct kiln_error *err = NULL;

	ref_for(&ref, layout, "latest");
	resolve_ok(&ref, "linux/amd64", &m);
	assert_true(kiln_image_import(&(struct kiln_image_source){ .store = c->store },
				      c->layers, &ref, &m, &img, &err) < 0);
	assert_msg_has(err, KILN_DIGEST_STR(&l2));
	assert_msg_has(err, "diff_id");
	kiln_error_free(err);
	kiln_image_ref_release(&ref);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ref_parse),
		cmocka_unit_test(test_resolve_platforms),
		cmocka_unit_test(test_resolve_unknown),
		cmocka_unit_test_setup_teardown(test_import_busybox, setup, teardown),
		cmocka_unit_test_setup_teardown(test_import_layer_memo, setup, teardown),
		cmocka_unit_test_setup_teardown(test_import_corrupt_blob, setup, teardown),
		cmocka_unit_test_setup_teardown(test_resolve_corrupt_manifest, setup, teardown),
		cmocka_unit_test_setup_teardown(test_extract_hostile, setup, teardown),
		cmocka_unit_test_setup_teardown(test_extract_whiteouts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_extract_metadata, setup, teardown),
		cmocka_unit_test_setup_teardown(test_extract_garbage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_two_layers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_diff_id_mismatch, setup, teardown),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
