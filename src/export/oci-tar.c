/*
 * type=oci: OCI image layouts, as a tar file or a directory.
 *
 * The blobs are everything the top blob (an index or a manifest) reaches:
 * nested indexes, manifests, configs and layers. The tar holds
 *   blobs/  blobs/sha256/  blobs/sha256/<hex>...  index.json  oci-layout
 * in that (byte-sorted) order, every entry 0:0 with mtime 0, so one top
 * digest always gives the same archive.
 */
#include "export/image.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cas/gc.h"
#include "export/export-internal.h"

#define OCI_LAYOUT_TEXT "{\"imageLayoutVersion\":\"1.0.0\"}"
#define REF_NAME_KEY "org.opencontainers.image.ref.name"
#define MAX_NESTING 8

/* ---- reachable blobs ---- */

struct reach {
	struct kiln_store *s;
	struct kiln_digest_set *seen;
	struct kiln_digest *list;
	size_t n, alloc;
	struct kiln_error **err;
};

static bool is_index_type(const char *mt)
{
	return mt && (!strcmp(mt, KILN_MT_OCI_INDEX) ||
		      !strcmp(mt, KILN_MT_DOCKER_LIST));
}

static bool is_manifest_type(const char *mt)
{
	return mt && (!strcmp(mt, KILN_MT_OCI_MANIFEST) ||
		      !strcmp(mt, KILN_MT_DOCKER_MANIFEST));
}

/* The media type a JSON blob declares, or what its shape says. */
static const char *doc_type(json_t *doc)
{
	const char *mt = json_string_value(json_object_get(doc, "mediaType"));

	if (mt)
		return mt;
	return json_object_get(doc, "manifests") ? KILN_MT_OCI_INDEX :
						    KILN_MT_OCI_MANIFEST;
}

static int reach_blob(struct reach *c, const struct kiln_digest *d,
		      const char *mt, unsigned depth);

static int reach_desc(struct reach *c, const struct kiln_digest *parent,
		      json_t *desc, unsigned depth)
{
	const char *ds = json_string_value(json_object_get(desc, "digest"));
	const char *mt = json_string_value(json_object_get(desc, "mediaType"));
	struct kiln_digest d;

	if (!ds || kiln_digest_parse(ds, &d) < 0)
		return kiln_error_set(c->err, -EBADMSG,
				      "blob %s: a descriptor has no valid sha256 digest",
				      KILN_DIGEST_STR(parent));
	return reach_blob(c, &d, mt, depth);
}

static int reach_doc(struct reach *c, const struct kiln_digest *d,
		     json_t *doc, unsigned depth)
{
	const char *mt = doc_type(doc);
	json_t *list, *e;
	size_t i;
	int r = 0;

	if (is_index_type(mt)) {
		list = json_object_get(doc, "manifests");
		json_array_foreach(list, i, e)
			if (r == 0)
				r = reach_desc(c, d, e, depth + 1);
		return r;
	}
	r = reach_desc(c, d, json_object_get(doc, "config"), depth + 1);
	list = json_object_get(doc, "layers");
	json_array_foreach(list, i, e)
		if (r == 0)
			r = reach_desc(c, d, e, depth + 1);
	return r;
}

static int reach_blob(struct reach *c, const struct kiln_digest *d,
		      const char *mt, unsigned depth)
{
	json_t *doc = NULL;
	int r;

	if (depth > MAX_NESTING)
		return kiln_error_set(c->err, -ELOOP,
				      "blob %s: indexes nested too deep",
				      KILN_DIGEST_STR(d));
	if (!kiln_digest_set_add(c->seen, d))
		return 0;
	if (!kiln_store_has(c->s, d))
		return kiln_error_set(c->err, -ENOENT, "blob %s is not in the store",
				      KILN_DIGEST_STR(d));
	c->list = xgrow(c->list, &c->alloc, c->n + 1, sizeof(*c->list));
	c->list[c->n++] = *d;
	if (!is_index_type(mt) && !is_manifest_type(mt))
		return 0;
	r = kiln_image_read_json(c->s, d, &doc, c->err);
	if (r == 0)
		r = reach_doc(c, d, doc, depth);
	json_decref(doc);
	return r;
}

static int digest_cmp(const void *a, const void *b)
{
	return memcmp(((const struct kiln_digest *)a)->bytes,
		      ((const struct kiln_digest *)b)->bytes, KILN_DIGEST_MAX_BYTES);
}

/* The layout's contents: sorted blobs and the index.json descriptor. */
struct layout {
	struct kiln_digest *blobs;
	size_t n;
	json_t *top; /* descriptor for index.json */
};

static void layout_release(struct layout *l)
{
	free(l->blobs);
	json_decref(l->top);
}

static int top_descriptor(struct kiln_store *s, const struct kiln_digest *top,
			  const char *ref_name, struct layout *l,
			  struct kiln_error **err)
{
	json_t *doc = NULL;
	const char *mt;
	uint64_t size;
	int r;

	r = kiln_image_read_json(s, top, &doc, err);
	if (r < 0)
		return r;
	mt = doc_type(doc);
	if (!is_index_type(mt) && !is_manifest_type(mt))
		r = kiln_error_set(err, -EINVAL,
				   "blob %s is neither an image index nor a manifest",
				   KILN_DIGEST_STR(top));
	if (r == 0)
		r = kiln_store_size(s, top, &size);
	if (r == 0) {
		l->top = json_pack("{s:s, s:s, s:I}", "mediaType", mt, "digest",
				   KILN_DIGEST_STR(top), "size", (json_int_t)size);
		if (ref_name)
			json_object_set_new(l->top, "annotations",
					    json_pack("{s:s}", REF_NAME_KEY,
						      ref_name));
	}
	json_decref(doc);
	return r;
}

static int layout_collect(struct kiln_store *s, const struct kiln_digest *top,
			  const char *ref_name, struct layout *l,
			  struct kiln_error **err)
{
	struct reach c = { .s = s, .err = err };
	const char *mt;
	int r;

	memset(l, 0, sizeof(*l));
	r = top_descriptor(s, top, ref_name, l, err);
	if (r < 0)
		return r;
	mt = json_string_value(json_object_get(l->top, "mediaType"));
	c.seen = kiln_digest_set_new();
	r = reach_blob(&c, top, mt, 0);
	kiln_digest_set_free(c.seen);
	qsort(c.list, c.n, sizeof(*c.list), digest_cmp);
	l->blobs = c.list;
	l->n = c.n;
	return r;
}

static char *index_json_text(json_t *manifests)
{
	json_t *idx = json_pack("{s:i, s:s, s:O}", "schemaVersion", 2,
				"mediaType", KILN_MT_OCI_INDEX, "manifests",
				manifests);
	char *text = json_dumps(idx, JSON_COMPACT | JSON_SORT_KEYS);

	json_decref(idx);
	return text;
}

/* ---- streaming a verified blob ---- */

typedef int (*blob_sink_fn)(void *ud, const void *buf, size_t n);

static int stream_blob(struct kiln_store *s, const struct kiln_digest *d,
		       blob_sink_fn fn, void *ud, struct kiln_error **err)
{
	struct kiln_hasher *h = kiln_hasher_new(d->algo);
	_cleanup_close_ int fd = kiln_store_open_blob(s, d);
	struct kiln_digest got;
	char buf[65536];
	int r = 0;

	if (fd < 0)
		r = kiln_error_seterrno(err, fd, "blob %s", KILN_DIGEST_STR(d));
	while (r == 0) {
		ssize_t k = read(fd, buf, sizeof(buf));

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			r = kiln_error_seterrno(err, -errno, "blob %s",
						KILN_DIGEST_STR(d));
		if (k <= 0)
			break;
		kiln_hasher_update(h, buf, (size_t)k);
		r = fn(ud, buf, (size_t)k);
	}
	kiln_hasher_final(h, &got);
	kiln_hasher_free(h);
	if (r == 0 && !kiln_digest_eq(&got, d))
		r = kiln_error_set(err, -EBADMSG, "blob %s is corrupt",
				   KILN_DIGEST_STR(d));
	return r;
}

/* ---- tar ---- */

static int otar_header(struct kiln_tar *t, const char *path, bool dir,
		       uint64_t size)
{
	struct archive_entry *ae = archive_entry_new();
	int r;

	archive_entry_set_pathname(ae, path);
	archive_entry_set_filetype(ae, dir ? AE_IFDIR : AE_IFREG);
	archive_entry_set_perm(ae, dir ? 0755 : 0644);
	archive_entry_set_size(ae, dir ? 0 : (la_int64_t)size);
	archive_entry_set_mtime(ae, 0, 0);
	r = archive_write_header(t->a, ae);
	archive_entry_free(ae);
	return r < ARCHIVE_WARN ? kiln_tar_fail(t, path) : 0;
}

static int otar_text(struct kiln_tar *t, const char *path, const char *text)
{
	size_t n = strlen(text);
	int r = otar_header(t, path, false, n);

	if (r == 0 && archive_write_data(t->a, text, n) != (la_ssize_t)n)
		r = kiln_tar_fail(t, path);
	return r;
}

static int otar_sink(void *ud, const void *buf, size_t n)
{
	struct kiln_tar *t = ud;

	if (archive_write_data(t->a, buf, n) != (la_ssize_t)n)
		return kiln_tar_fail(t, "blob data");
	return 0;
}

static int otar_blob(struct kiln_tar *t, const struct kiln_digest *d)
{
	char hex[KILN_DIGEST_HEXLEN], path[96];
	uint64_t size;
	int r;

	snprintf(path, sizeof(path), "blobs/sha256/%s", kiln_digest_hex(d, hex));
	r = kiln_store_size(t->store, d, &size);
	if (r < 0)
		return kiln_error_seterrno(t->err, r, "blob %s",
					   KILN_DIGEST_STR(d));
	r = otar_header(t, path, false, size);
	return r ? r : stream_blob(t->store, d, otar_sink, t, t->err);
}

static int otar_entries(struct kiln_tar *t, const struct layout *l)
{
	_cleanup_free_ char *index = NULL;
	json_t *list = json_pack("[O]", l->top);
	size_t i;
	int r;

	index = index_json_text(list);
	json_decref(list);
	r = otar_header(t, "blobs/", true, 0);
	r = r ? r : otar_header(t, "blobs/sha256/", true, 0);
	for (i = 0; r == 0 && i < l->n; i++)
		r = otar_blob(t, &l->blobs[i]);
	r = r ? r : otar_text(t, "index.json", index);
	return r ? r : otar_text(t, "oci-layout", OCI_LAYOUT_TEXT);
}

struct otar_dest {
	struct kiln_store *store;
	const struct layout *layout;
};

static int otar_write_fd(int fd, void *ud, struct kiln_error **err)
{
	struct otar_dest *d = ud;
	struct kiln_tar t = {
		.store = d->store, .what = "oci tar", .err = err,
	};

	t.a = kiln_tar_open_fd(fd);
	if (!t.a)
		return kiln_error_set(err, -EIO, "oci tar: cannot start archive");
	return kiln_tar_close(&t, otar_entries(&t, d->layout));
}

int kiln_export_oci_tar(struct kiln_store *s, const struct kiln_digest *top,
			const char *dest, const char *ref_name,
			struct kiln_error **err)
{
	struct layout l;
	struct otar_dest d = { .store = s, .layout = &l };
	int r;

	r = layout_collect(s, top, ref_name, &l, err);
	if (r == 0)
		r = kiln_write_to_dest(dest, otar_write_fd, &d, err);
	layout_release(&l);
	if (r < 0)
		kiln_error_prefix(err, "type=oci,dest=%s", dest);
	return r;
}

/* ---- directory ---- */

static int fd_sink(void *ud, const void *buf, size_t n)
{
	return kiln_write_full(*(int *)ud, buf, n);
}

static int copy_blob_at(struct kiln_store *s, const struct kiln_digest *d,
			int bfd, const char *name, struct kiln_error **err)
{
	_cleanup_free_ char *rnd = kiln_random_hex(4);
	_cleanup_free_ char *tmp = xasprintf("%s.tmp-%s", name, rnd);
	_cleanup_close_ int fd = -1;
	int r;

	fd = openat(bfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		    0644);
	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "cannot create blobs/sha256/%s",
					   tmp);
	r = stream_blob(s, d, fd_sink, &fd, err);
	if (r == 0 && fsync(fd) < 0)
		r = kiln_error_seterrno(err, -errno, "cannot write blobs/sha256/%s",
					tmp);
	if (r == 0 && renameat(bfd, tmp, bfd, name) < 0)
		r = kiln_error_seterrno(err, -errno, "cannot write blobs/sha256/%s",
					name);
	if (r < 0)
		unlinkat(bfd, tmp, 0);
	return r;
}

static int dir_blob(struct kiln_store *s, const struct kiln_digest *d, int bfd,
		    struct kiln_error **err)
{
	char hex[KILN_DIGEST_HEXLEN];
	struct stat st;
	uint64_t size;
	int r;

	kiln_digest_hex(d, hex);
	r = kiln_store_size(s, d, &size);
	if (r < 0)
		return kiln_error_seterrno(err, r, "blob %s", KILN_DIGEST_STR(d));
	if (fstatat(bfd, hex, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    S_ISREG(st.st_mode) && (uint64_t)st.st_size == size)
		return 0;
	return copy_blob_at(s, d, bfd, hex, err);
}

static bool same_ref(json_t *desc, const char *ref_name)
{
	const char *name = json_string_value(json_object_get(
		json_object_get(desc, "annotations"), REF_NAME_KEY));

	if (!ref_name || !name)
		return !ref_name && !name;
	return !strcmp(ref_name, name);
}

/* index.json's entries: the existing ones of other names, then top. */
static json_t *merged_manifests(int dfd, const struct layout *l,
				const char *ref_name)
{
	_cleanup_free_ char *old = NULL;
	json_t *doc = NULL, *list = json_array(), *e;
	size_t i, len;

	if (kiln_read_file_at(dfd, "index.json", KILN_IMAGE_JSON_MAX, &old,
			      &len) == 0)
		doc = json_loadb(old, len, JSON_REJECT_DUPLICATES, NULL);
	json_array_foreach(json_object_get(doc, "manifests"), i, e)
		if (json_is_object(e) && !same_ref(e, ref_name))
			json_array_append(list, e);
	json_decref(doc);
	json_array_append(list, l->top);
	return list;
}

static int dir_index(int dfd, const struct layout *l, const char *ref_name,
		     const char *dest, struct kiln_error **err)
{
	json_t *list = merged_manifests(dfd, l, ref_name);
	_cleanup_free_ char *text = index_json_text(list);
	int r;

	json_decref(list);
	r = kiln_write_file_atomic_at(dfd, "oci-layout", OCI_LAYOUT_TEXT,
				      strlen(OCI_LAYOUT_TEXT), 0644, true);
	if (r == 0)
		r = kiln_write_file_atomic_at(dfd, "index.json", text,
					      strlen(text), 0644, true);
	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot write %s/index.json",
					   dest);
	return 0;
}

static int dir_write(struct kiln_store *s, const struct layout *l,
		     const char *dest, const char *ref_name,
		     struct kiln_error **err)
{
	_cleanup_close_ int dfd = -1, bfd = -1;
	size_t i;
	int r;

	r = kiln_mkdir_p(dest, 0755);
	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot create %s", dest);
	dfd = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return kiln_error_seterrno(err, -errno, "cannot open %s", dest);
	bfd = kiln_mkdirat_p_beneath(dfd, "blobs/sha256", 0755);
	if (bfd < 0)
		return kiln_error_seterrno(err, bfd, "cannot create %s/blobs/sha256",
					   dest);
	for (i = 0; i < l->n; i++) {
		r = dir_blob(s, &l->blobs[i], bfd, err);
		if (r < 0)
			return r;
	}
	return dir_index(dfd, l, ref_name, dest, err);
}

int kiln_export_oci_dir(struct kiln_store *s, const struct kiln_digest *top,
			const char *dest, const char *ref_name,
			struct kiln_error **err)
{
	struct layout l;
	int r;

	r = layout_collect(s, top, ref_name, &l, err);
	if (r == 0)
		r = dir_write(s, &l, dest, ref_name, err);
	layout_release(&l);
	if (r < 0)
		kiln_error_prefix(err, "oci layout %s", dest);
	return r;
}
