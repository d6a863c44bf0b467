/*
 * source.image for OCI image layouts and registries: reference parsing,
 * index and manifest parsing, platform matching, the image config, and
 * import into the CAS and layer store. A registry is read through the same
 * code as a layout, with documents read by digest from the store first and
 * kept there once fetched (docs/internals/image.md, Resolving).
 *
 * Everything read from a layout or a registry is treated as hostile: JSON
 * documents are bounded (IMAGE_JSON_LIMIT), every blob is verified against
 * its digest and its descriptor's size before it is used or stored, and
 * layers are extracted by layer-extract.c.
 */
#include "source/image.h"

#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/platform.h"
#include "basic/strbuf.h"
#include "cas/tree.h"
#include "worker/worker.h"

#define IMAGE_JSON_LIMIT (4u << 20)
#define MAX_INDEX_DEPTH 4
#define MAX_LAYERS 1024
#define REF_SCHEME "oci-layout://"
#define REF_NAME_ANNOTATION "org.opencontainers.image.ref.name"

#define MT_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define MT_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define MT_DOCKER_LIST "application/vnd.docker.distribution.manifest.list.v2+json"
#define MT_DOCKER_MANIFEST "application/vnd.docker.distribution.manifest.v2+json"

/*
 * Where documents and blobs come from: an opened layout (fd), or a registry
 * (reg) with the store consulted first. where is for messages ("layout
 * PATH", "image REF").
 */
struct layout {
	const char *path;
	int fd;
	char *where;
	struct kiln_registry *reg;
	const struct kiln_registry_ref *rref;
	struct kiln_store *store;          /* may be NULL */
	struct kiln_registry_manifest top; /* fetched by tag, reused */
};

enum doc_kind { DOC_MANIFEST, DOC_CONFIG };

struct descriptor {
	const char *media_type; /* borrowed from the JSON, may be NULL */
	struct kiln_digest digest;
	int64_t size; /* -1: unknown */
	json_t *platform; /* borrowed, may be NULL */
};

/* ---- references ---- */

void kiln_image_ref_release(struct kiln_image_ref *r)
{
	if (!r)
		return;
	free(r->layout);
	free(r->tag);
	r->layout = r->tag = NULL;
	kiln_registry_ref_release(r->registry);
	free(r->registry);
	r->registry = NULL;
}

static int registry_ref_parse(const char *s, struct kiln_image_ref *out,
			      struct kiln_error **err)
{
	struct kiln_registry_ref *rr = xcalloc(1, sizeof(*rr));
	int r = kiln_registry_ref_parse(s, rr, err);

	if (r < 0) {
		free(rr);
		return r;
	}
	out->registry = rr;
	out->tag = rr->tag ? xstrdup(rr->tag) : NULL;
	return 0;
}

static char *absolute_path(const char *path, const char *base_dir)
{
	_cleanup_free_ char *cwd = NULL;

	if (path[0] == '/')
		return xstrdup(path);
	if (!base_dir) {
		cwd = getcwd(NULL, 0);
		if (!cwd)
			return NULL;
		base_dir = cwd;
	}
	return kiln_path_join(base_dir, path);
}

int kiln_image_ref_parse(const char *ref, const char *base_dir,
			 struct kiln_image_ref *out, struct kiln_error **err)
{
	_cleanup_free_ char *path = NULL;
	const char *rest, *colon;
	const char *tag = "latest";

	memset(out, 0, sizeof(*out));
	if (strncmp(ref, REF_SCHEME, strlen(REF_SCHEME)) != 0)
		return registry_ref_parse(ref, out, err);
	rest = ref + strlen(REF_SCHEME);
	colon = strrchr(rest, ':');
	if (colon && !strchr(colon + 1, '/')) {
		tag = colon + 1;
		path = xstrndup(rest, (size_t)(colon - rest));
	} else {
		path = xstrdup(rest);
	}
	if (!*path || !*tag)
		return kiln_error_set(err, -EINVAL,
				      "image reference '%s': empty %s", ref,
				      *path ? "tag" : "layout path");
	out->layout = absolute_path(path, base_dir);
	if (!out->layout)
		return kiln_error_seterrno(err, -errno, "image reference '%s'", ref);
	out->tag = xstrdup(tag);
	return 0;
}

/* ---- platforms ---- */

/* The wanted platform, normalized; NULL or empty means the host's. */
static int want_platform(const char *s, struct kiln_platform *p,
			 struct kiln_error **err)
{
	_cleanup_free_ char *native = NULL;
	int r;

	if (!s || !*s)
		s = native = kiln_platform_native();
	r = kiln_platform_parse(s, p, err);
	if (r == 0)
		kiln_platform_normalize_parts(p);
	return r;
}

static const char *json_str(json_t *obj, const char *key)
{
	return json_string_value(json_object_get(obj, key));
}

/*
 * An index entry's or a config's platform, normalized as the wanted one is
 * (x86_64 is amd64, arm64/v8 is arm64, ...), so the two compare alike.
 */
static void platform_from_json(json_t *obj, struct kiln_platform *p)
{
	const char *os = json_str(obj, "os"), *arch = json_str(obj, "architecture");
	const char *variant = json_str(obj, "variant");

	p->os = xstrdup(os ? os : "");
	p->arch = xstrdup(arch ? arch : "");
	p->variant = xstrdup(variant ? variant : "");
	kiln_platform_normalize_parts(p);
}

/* ---- layouts and blobs ---- */

static const char *ref_str(const struct kiln_image_ref *ref, char *buf,
			   size_t size)
{
	_cleanup_free_ char *s = NULL;

	if (!ref->registry) {
		snprintf(buf, size, "%s%s:%s", REF_SCHEME, ref->layout, ref->tag);
		return buf;
	}
	s = kiln_registry_ref_format(ref->registry);
	snprintf(buf, size, "%s", s);
	return buf;
}

static json_t *parse_json(const char *data, size_t len, const char *what,
			  const char *layout, struct kiln_error **err)
{
	json_error_t jerr;
	json_t *j = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);

	if (!j)
		kiln_error_set(err, -EBADMSG, "%s in %s: invalid JSON: %s "
			       "(line %d)", what, layout, jerr.text, jerr.line);
	else if (!json_is_object(j)) {
		json_decref(j);
		j = NULL;
		kiln_error_set(err, -EBADMSG, "%s in %s: not a JSON object",
			       what, layout);
	}
	return j;
}

static int read_fd_limited(int fd, size_t limit, char **out, size_t *len)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(limit);
	char buf[65536];
	ssize_t k;

	while ((k = read(fd, buf, sizeof(buf))) != 0) {
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (kiln_strbuf_add(&sb, buf, (size_t)k) < 0)
			return -EFBIG;
	}
	*out = kiln_strbuf_detach(&sb, len);
	return 0;
}

/* Read a small file of the layout (oci-layout, index.json) as JSON. */
static json_t *read_layout_json(struct layout *l, const char *name,
				struct kiln_error **err)
{
	_cleanup_free_ char *data = NULL;
	_cleanup_close_ int fd = -1;
	size_t len;
	int r;

	fd = kiln_openat2(l->fd, name, O_RDONLY | O_NONBLOCK, 0,
			  KILN_RESOLVE_BENEATH);
	r = fd < 0 ? fd : read_fd_limited(fd, IMAGE_JSON_LIMIT, &data, &len);
	if (r < 0) {
		kiln_error_seterrno(err, r, "OCI %s: reading %s", l->where,
				    name);
		return NULL;
	}
	return parse_json(data, len, name, l->where, err);
}

static int layout_open(struct layout *l, const char *path,
		       struct kiln_error **err)
{
	json_t *j;
	const char *v;

	l->path = path;
	l->where = xasprintf("layout %s", path);
	l->fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (l->fd < 0)
		return kiln_error_seterrno(err, -errno, "OCI layout %s", path);
	j = read_layout_json(l, "oci-layout", err);
	if (!j)
		return -EINVAL;
	v = json_str(j, "imageLayoutVersion");
	if (!v || strcmp(v, "1.0.0") != 0) {
		kiln_error_set(err, -EPROTONOSUPPORT,
			       "OCI layout %s: imageLayoutVersion is %s, not 1.0.0",
			       path, v ? v : "missing");
		json_decref(j);
		return -EPROTONOSUPPORT;
	}
	json_decref(j);
	return 0;
}

static void layout_close(struct layout *l)
{
	if (l->fd >= 0)
		close(l->fd);
	l->fd = -1;
	free(l->where);
	l->where = NULL;
	kiln_registry_manifest_release(&l->top);
}

/* Open a blob of the layout; checks it is a regular file of size (>= 0). */
static int open_blob(struct layout *l, const struct kiln_digest *d,
		     int64_t size, uint64_t *st_size, struct kiln_error **err)
{
	char hex[KILN_DIGEST_HEXLEN], path[128];
	_cleanup_close_ int fd = -1;
	struct stat st;

	snprintf(path, sizeof(path), "blobs/sha256/%s", kiln_digest_hex(d, hex));
	/* A layout the client uploaded: its blobs are in the store. */
	fd = l->fd < 0 && l->store ? kiln_store_open_blob(l->store, d)
				   : kiln_openat2(l->fd, path, O_RDONLY | O_NONBLOCK, 0,
						  KILN_RESOLVE_BENEATH);
	if (fd < 0)
		return kiln_error_seterrno(err, fd, "blob %s in %s",
					   KILN_DIGEST_STR(d), l->where);
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
		return kiln_error_set(err, -EINVAL,
				      "blob %s in %s: not a regular file",
				      KILN_DIGEST_STR(d), l->where);
	if (size >= 0 && st.st_size != size)
		return kiln_error_set(err, -EBADMSG,
				      "blob %s in %s: size %lld, descriptor "
				      "says %lld",
				      KILN_DIGEST_STR(d), l->where,
				      (long long)st.st_size, (long long)size);
	*st_size = (uint64_t)st.st_size;
	return TAKE_FD(fd);
}

/* Read and verify a JSON blob of at most IMAGE_JSON_LIMIT bytes. */
static int read_blob(struct layout *l, const struct kiln_digest *d,
		     int64_t size, char **data, size_t *len,
		     struct kiln_error **err)
{
	_cleanup_free_ char *buf = NULL;
	_cleanup_close_ int fd = -1;
	struct kiln_digest got;
	uint64_t n;
	int r;

	fd = open_blob(l, d, size, &n, err);
	if (fd < 0)
		return fd;
	if (n > IMAGE_JSON_LIMIT)
		return kiln_error_set(err, -EFBIG,
				      "blob %s in %s: larger than %u bytes",
				      KILN_DIGEST_STR(d), l->where, IMAGE_JSON_LIMIT);
	buf = xmalloc(n + 1);
	r = kiln_read_full(fd, buf, n);
	if (r < 0)
		return kiln_error_seterrno(err, r, "blob %s in %s",
					   KILN_DIGEST_STR(d), l->where);
	buf[n] = '\0';
	kiln_digest_buf(buf, n, &got);
	if (!kiln_digest_eq(&got, d))
		return kiln_error_set(err, -EBADMSG,
				      "blob %s in %s does not match its "
				      "digest (content is %s)",
				      KILN_DIGEST_STR(d), l->where,
				      KILN_DIGEST_STR(&got));
	*data = TAKE_PTR(buf);
	*len = n;
	return 0;
}

static int put_json(struct kiln_store *s, const char *data, size_t len,
		    const struct kiln_digest *want, struct kiln_error **err)
{
	struct kiln_digest got;
	int r = kiln_store_put_buf(s, data, len, &got, err);

	if (r < 0)
		return r;
	if (!kiln_digest_eq(&got, want))
		return kiln_error_set(err, -EBADMSG, "stored %s as %s",
				      KILN_DIGEST_STR(want), KILN_DIGEST_STR(&got));
	return 0;
}

/*
 * A document from the registry: the one just fetched by tag, the store
 * (verified on read), or GET by digest (verified). *fetched: it came from
 * the registry.
 */
static int fetch_doc(struct layout *l, const struct kiln_digest *d,
		     enum doc_kind kind, char **data, size_t *len, bool *fetched,
		     struct kiln_error **err)
{
	struct kiln_registry_manifest m;
	int r;

	*fetched = false;
	if (l->store && kiln_store_has(l->store, d))
		return kiln_store_read(l->store, d, IMAGE_JSON_LIMIT, data, len, err);
	*fetched = true;
	if (l->top.data && kiln_digest_eq(&l->top.digest, d)) {
		*data = xstrndup(l->top.data, l->top.len);
		*len = l->top.len;
		return 0;
	}
	if (kind == DOC_CONFIG)
		return kiln_registry_get_blob_buf(l->reg, l->rref, d, IMAGE_JSON_LIMIT,
						  data, len, err);
	r = kiln_registry_get_manifest(l->reg, l->rref, d, &m, err);
	if (r < 0)
		return r;
	*data = TAKE_PTR(m.data);
	*len = m.len;
	kiln_registry_manifest_release(&m);
	return 0;
}

/*
 * A registry document, checked against its descriptor's size; one fetched
 * from the registry is kept in the store (when there is one) only then,
 * so later reads of the same digest, in this build or the next, need no
 * request.
 */
static int read_doc(struct layout *l, const struct kiln_digest *d, int64_t size,
		    enum doc_kind kind, char **data, size_t *len,
		    struct kiln_error **err)
{
	bool fetched;
	int r;

	*data = NULL;
	if (!l->reg)
		return read_blob(l, d, size, data, len, err);
	r = fetch_doc(l, d, kind, data, len, &fetched, err);
	if (r == 0 && size >= 0 && (uint64_t)size != *len)
		r = kiln_error_set(err, -EBADMSG, "blob %s in %s: size %zu, "
				   "descriptor says %lld", KILN_DIGEST_STR(d),
				   l->where, *len, (long long)size);
	if (r == 0 && fetched && l->store)
		r = put_json(l->store, *data, *len, d, err);
	if (r < 0 && *data) {
		free(*data);
		*data = NULL;
	}
	return r;
}

static json_t *read_json_blob(struct layout *l, const struct descriptor *desc,
			      const char *what, char **raw, size_t *raw_len,
			      struct kiln_error **err)
{
	_cleanup_free_ char *data = NULL;
	_cleanup_free_ char *label = NULL;
	enum doc_kind kind = strcmp(what, "image config") ? DOC_MANIFEST
							 : DOC_CONFIG;
	json_t *j;
	size_t len = 0;

	if (read_doc(l, &desc->digest, desc->size, kind, &data, &len, err) < 0)
		return NULL;
	label = xasprintf("%s %s", what, KILN_DIGEST_STR(&desc->digest));
	j = parse_json(data, len, label, l->where, err);
	if (j && raw) {
		*raw = TAKE_PTR(data);
		*raw_len = len;
	}
	return j;
}

static int parse_descriptor(json_t *obj, const char *what, const char *layout,
			    struct descriptor *out, struct kiln_error **err)
{
	const char *digest = json_str(obj, "digest");
	json_t *size = json_object_get(obj, "size");

	if (!json_is_object(obj) || !digest ||
	    kiln_digest_parse(digest, &out->digest) < 0)
		return kiln_error_set(err, -EBADMSG,
				      "%s in %s: descriptor without a valid "
				      "sha256 digest",
				      what, layout);
	if (!json_is_integer(size) || json_integer_value(size) < 0)
		return kiln_error_set(err, -EBADMSG,
				      "%s %s in %s: descriptor without a size",
				      what, digest, layout);
	out->size = json_integer_value(size);
	out->media_type = json_str(obj, "mediaType");
	out->platform = json_object_get(obj, "platform");
	if (!json_is_object(out->platform))
		out->platform = NULL;
	return 0;
}

/* ---- resolving ---- */

static bool is_index_type(const char *mt)
{
	return mt && (!strcmp(mt, MT_OCI_INDEX) || !strcmp(mt, MT_DOCKER_LIST));
}

static bool is_manifest_type(const char *mt)
{
	return mt && (!strcmp(mt, MT_OCI_MANIFEST) || !strcmp(mt, MT_DOCKER_MANIFEST));
}

/* Media type of a document: its descriptor's, its own, or its shape. */
static const char *doc_type(const struct descriptor *desc, json_t *doc)
{
	const char *mt = json_str(doc, "mediaType");

	if (is_index_type(desc->media_type) || is_manifest_type(desc->media_type))
		return desc->media_type;
	if (mt)
		return mt;
	if (json_is_array(json_object_get(doc, "manifests")))
		return MT_OCI_INDEX;
	if (json_is_object(json_object_get(doc, "config")))
		return MT_OCI_MANIFEST;
	return "unknown";
}

static bool has_tag(json_t *desc, const char *tag)
{
	const char *name =
		json_str(json_object_get(desc, "annotations"), REF_NAME_ANNOTATION);

	return name && !strcmp(name, tag);
}

static int find_tagged(json_t *index, const struct kiln_image_ref *ref,
		       struct layout *l, struct descriptor *out,
		       struct kiln_error **err)
{
	json_t *manifests = json_object_get(index, "manifests"), *d;
	size_t i;

	if (!json_is_array(manifests))
		return kiln_error_set(err, -EBADMSG,
				      "OCI %s: index.json has no manifests",
				      l->where);
	json_array_foreach(manifests, i, d) {
		if (has_tag(d, ref->tag))
			return parse_descriptor(d, "index.json", l->where, out, err);
	}
	/* A lone image without annotations answers to any tag. */
	d = json_array_get(manifests, 0);
	if (json_array_size(manifests) == 1 && !json_object_get(d, "annotations"))
		return parse_descriptor(d, "index.json", l->where, out, err);
	return kiln_error_set(err, -ENOENT, "OCI %s: no image tagged '%s'",
			      l->where, ref->tag);
}

struct resolve_ctx {
	struct layout *layout;
	const struct kiln_platform *want;
	const char *want_str;
	const char *ref;
};

static int resolve_desc(struct resolve_ctx *c, const struct descriptor *desc,
			int depth, struct kiln_digest *out,
			struct kiln_error **err);

static int no_platform_error(struct resolve_ctx *c, json_t *manifests,
			     struct kiln_error **err)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(4096);
	json_t *d;
	size_t i;

	json_array_foreach(manifests, i, d) {
		struct kiln_platform p;
		_cleanup_free_ char *s = NULL;

		if (!json_is_object(json_object_get(d, "platform")))
			continue;
		platform_from_json(json_object_get(d, "platform"), &p);
		s = kiln_platform_format(&p);
		kiln_platform_release(&p);
		(void)kiln_platform_list_add(&sb, !sb.len, s, false);
	}
	return kiln_error_set(err, -ENOENT,
			      "%s has no image for platform %s (available: %s)",
			      c->ref, c->want_str,
			      sb.len ? kiln_strbuf_str(&sb) : "none");
}

static int select_platform(struct resolve_ctx *c, json_t *index, int depth,
			   struct kiln_digest *out, struct kiln_error **err)
{
	json_t *manifests = json_object_get(index, "manifests"), *d;
	size_t i;

	if (!json_is_array(manifests))
		return kiln_error_set(err, -EBADMSG,
				      "%s: image index without manifests", c->ref);
	json_array_foreach(manifests, i, d) {
		struct descriptor child;
		struct kiln_platform p;
		bool match;
		int r;

		if (!json_is_object(json_object_get(d, "platform")))
			continue;
		platform_from_json(json_object_get(d, "platform"), &p);
		match = kiln_platform_match(c->want, &p);
		kiln_platform_release(&p);
		if (!match)
			continue;
		r = parse_descriptor(d, "image index", c->layout->where, &child, err);
		if (r < 0)
			return r;
		return resolve_desc(c, &child, depth + 1, out, err);
	}
	return no_platform_error(c, manifests, err);
}

/* A lone manifest must be for the wanted platform: its config says. */
static int check_manifest(struct resolve_ctx *c, json_t *manifest,
			  const struct descriptor *desc, struct kiln_error **err)
{
	struct descriptor cdesc;
	struct kiln_platform have;
	_cleanup_free_ char *have_str = NULL;
	json_t *config;
	bool match;
	int r;

	r = parse_descriptor(json_object_get(manifest, "config"), "manifest config",
			     c->layout->where, &cdesc, err);
	if (r < 0)
		return r;
	config = read_json_blob(c->layout, &cdesc, "image config", NULL, NULL, err);
	if (!config)
		return -EBADMSG;
	platform_from_json(config, &have);
	json_decref(config);
	match = kiln_platform_match(c->want, &have);
	have_str = kiln_platform_format(&have);
	kiln_platform_release(&have);
	if (!match)
		return kiln_error_set(err, -ENOENT,
				      "%s has no image for platform %s "
				      "(available: %s, manifest %s)",
				      c->ref, c->want_str, have_str,
				      KILN_DIGEST_STR(&desc->digest));
	return 0;
}

static int resolve_desc(struct resolve_ctx *c, const struct descriptor *desc,
			int depth, struct kiln_digest *out,
			struct kiln_error **err)
{
	json_t *doc;
	const char *mt;
	int r;

	if (depth > MAX_INDEX_DEPTH)
		return kiln_error_set(err, -ELOOP, "%s: image indexes nested deeper "
				      "than %d", c->ref, MAX_INDEX_DEPTH);
	doc = read_json_blob(c->layout, desc, "manifest", NULL, NULL, err);
	if (!doc)
		return -EBADMSG;
	mt = doc_type(desc, doc);
	if (is_index_type(mt)) {
		r = select_platform(c, doc, depth, out, err);
	} else if (is_manifest_type(mt)) {
		r = check_manifest(c, doc, desc, err);
		if (r == 0)
			*out = desc->digest;
	} else {
		r = kiln_error_set(err, -EPROTONOSUPPORT,
				   "%s: %s has unsupported media type %s", c->ref,
				   KILN_DIGEST_STR(&desc->digest), mt);
	}
	json_decref(doc);
	return r;
}

/* ---- tags looked up in one build ---- */

struct tag_seen {
	char *ref; /* kiln_registry_ref_format() of the tagged reference */
	struct kiln_digest digest;
};

struct kiln_image_tags {
	struct tag_seen *v;
	size_t n, alloc;
};

struct kiln_image_tags *kiln_image_tags_new(void)
{
	return xcalloc(1, sizeof(struct kiln_image_tags));
}

void kiln_image_tags_free(struct kiln_image_tags *t)
{
	size_t i;

	if (!t)
		return;
	for (i = 0; i < t->n; i++)
		free(t->v[i].ref);
	free(t->v);
	free(t);
}

static bool tags_get(struct kiln_image_tags *t, const struct kiln_registry_ref *ref,
		     struct kiln_digest *out)
{
	_cleanup_free_ char *key = NULL;
	size_t i;

	if (!t)
		return false;
	key = kiln_registry_ref_format(ref);
	for (i = 0; i < t->n; i++) {
		if (!strcmp(t->v[i].ref, key)) {
			*out = t->v[i].digest;
			return true;
		}
	}
	return false;
}

static void tags_put(struct kiln_image_tags *t, const struct kiln_registry_ref *ref,
		     const struct kiln_digest *d)
{
	if (!t)
		return;
	t->v = xgrow(t->v, &t->alloc, t->n + 1, sizeof(*t->v));
	t->v[t->n].ref = kiln_registry_ref_format(ref);
	t->v[t->n++].digest = *d;
}

static int registry_open(struct layout *l, const struct kiln_image_ref *ref,
			 const struct kiln_image_source *src, struct kiln_error **err)
{
	_cleanup_free_ char *name = kiln_registry_ref_format(ref->registry);

	l->where = xasprintf("image %s", name);
	l->rref = ref->registry;
	l->store = src->store;
	l->reg = src->registry;
	if (!l->reg)
		return kiln_error_set(err, -EINVAL, "%s: no registry client to pull it with",
				      l->where);
	return 0;
}

/* Read ref's documents from its layout, or from the registry through src. */
static int image_open(struct layout *l, const struct kiln_image_source *src,
		      const struct kiln_image_ref *ref, struct kiln_error **err)
{
	if (ref->registry)
		return registry_open(l, ref, src, err);
	if (src->layouts_in_store) {
		if (!src->store)
			return kiln_error_set(err, -EINVAL, "OCI layout %s: no store", ref->layout);
		l->path = ref->layout;
		l->where = xasprintf("layout %s (as the client uploaded it)", ref->layout);
		l->store = src->store;
		return 0;
	}
	return layout_open(l, ref->layout, err);
}

/*
 * The reference's manifest or index: its pinned digest, else what its tag
 * pointed to when this build first asked, else what it points to now (one
 * GET by tag, whose body is the document: read_doc keeps it).
 */
static int registry_top(struct layout *l, struct kiln_image_tags *tags,
			struct descriptor *top, struct kiln_error **err)
{
	int r;

	*top = (struct descriptor){ .digest = l->rref->digest, .size = -1 };
	if (kiln_digest_is_set(&top->digest) || tags_get(tags, l->rref, &top->digest))
		return 0;
	r = kiln_registry_get_manifest(l->reg, l->rref, NULL, &l->top, err);
	if (r < 0)
		return r;
	tags_put(tags, l->rref, &l->top.digest);
	top->digest = l->top.digest;
	top->size = (int64_t)l->top.len;
	top->media_type = l->top.media_type;
	return 0;
}

int kiln_image_resolve(const struct kiln_image_source *src,
		       const struct kiln_image_ref *ref, const char *platform,
		       struct kiln_digest *manifest, struct kiln_error **err)
{
	struct layout l = { .fd = -1 };
	struct kiln_platform want = { 0 };
	struct descriptor top;
	_cleanup_free_ char *want_str = NULL;
	char refbuf[4200];
	json_t *index = NULL;
	int r;

	r = want_platform(platform, &want, err);
	if (r < 0)
		return r;
	want_str = kiln_platform_format(&want);
	r = image_open(&l, src, ref, err);
	if (r == 0 && ref->registry) {
		r = registry_top(&l, src->tags, &top, err);
	} else if (r == 0) {
		index = read_layout_json(&l, "index.json", err);
		r = index ? find_tagged(index, ref, &l, &top, err) : -EBADMSG;
	}
	if (r == 0) {
		struct resolve_ctx c = {
			.layout = &l, .want = &want, .want_str = want_str,
			.ref = ref_str(ref, refbuf, sizeof(refbuf)),
		};
		r = resolve_desc(&c, &top, 0, manifest, err);
	}
	json_decref(index);
	layout_close(&l);
	kiln_platform_release(&want);
	return r;
}

int kiln_image_read_config(const struct kiln_image_source *src,
			   const struct kiln_image_ref *ref,
			   const struct kiln_digest *manifest, char **config,
			   size_t *len, struct kiln_error **err)
{
	struct descriptor mdesc = { .digest = *manifest, .size = -1 }, cdesc;
	struct layout l = { .fd = -1 };
	json_t *m = NULL, *c = NULL;
	int r;

	*config = NULL;
	r = image_open(&l, src, ref, err);
	if (r == 0) {
		m = read_json_blob(&l, &mdesc, "manifest", NULL, NULL, err);
		r = m ? parse_descriptor(json_object_get(m, "config"), "manifest config",
					 l.where, &cdesc, err)
		      : -EBADMSG;
	}
	if (r == 0) {
		c = read_json_blob(&l, &cdesc, "image config", config, len, err);
		r = c ? 0 : -EBADMSG;
	}
	json_decref(c);
	json_decref(m);
	layout_close(&l);
	return r;
}

/* ---- importing ---- */

void kiln_image_release(struct kiln_image *img)
{
	if (!img)
		return;
	free(img->layers);
	img->layers = NULL;
	img->n_layers = 0;
}

static bool is_layer_type(const char *mt)
{
	static const char *const prefixes[] = {
		"application/vnd.oci.image.layer.v1.tar",
		"application/vnd.oci.image.layer.nondistributable.v1.tar",
		"application/vnd.docker.image.rootfs.diff.tar",
		"application/vnd.docker.image.rootfs.foreign.diff.tar",
	};
	size_t i;

	if (!mt)
		return true; /* content is sniffed anyway */
	for (i = 0; i < ARRAY_SIZE(prefixes); i++) {
		size_t n = strlen(prefixes[i]);

		if (!strncmp(mt, prefixes[i], n) &&
		    (mt[n] == '\0' || !strcmp(mt + n, "+gzip") ||
		     !strcmp(mt + n, "+zstd") || !strcmp(mt + n, ".gzip")))
			return true;
	}
	return false;
}

/* What import needs from the manifest and config. */
struct image_doc {
	struct descriptor config;
	struct descriptor *layers;
	struct kiln_digest *diff_ids;
	size_t n_layers;
	char *manifest_raw, *config_raw;
	size_t manifest_len, config_len;
};

static void image_doc_release(struct image_doc *d)
{
	free(d->layers);
	free(d->diff_ids);
	free(d->manifest_raw);
	free(d->config_raw);
}

static int parse_layers(struct layout *l, json_t *manifest, struct image_doc *d,
			struct kiln_error **err)
{
	json_t *layers = json_object_get(manifest, "layers"), *j;
	size_t i;
	int r;

	if (!json_is_array(layers) || json_array_size(layers) > MAX_LAYERS)
		return kiln_error_set(err, -EBADMSG,
				      "manifest in %s: missing or too many layers",
				      l->where);
	d->n_layers = json_array_size(layers);
	d->layers = xcalloc(d->n_layers + 1, sizeof(*d->layers));
	json_array_foreach(layers, i, j) {
		r = parse_descriptor(j, "layer", l->where, &d->layers[i], err);
		if (r < 0)
			return r;
		if (!is_layer_type(d->layers[i].media_type))
			return kiln_error_set(err, -EPROTONOSUPPORT,
					      "layer %s in %s: unsupported "
					      "media type %s",
					      KILN_DIGEST_STR(&d->layers[i].digest),
					      l->where, d->layers[i].media_type);
	}
	return 0;
}

static int parse_diff_ids(struct layout *l, json_t *config, struct image_doc *d,
			  struct kiln_error **err)
{
	json_t *ids = json_object_get(json_object_get(config, "rootfs"), "diff_ids");
	json_t *j;
	size_t i;

	if (!json_is_array(ids) || json_array_size(ids) != d->n_layers)
		return kiln_error_set(err, -EBADMSG,
				      "image config %s in %s: rootfs.diff_ids "
				      "does not list one digest per layer (%zu)",
				      KILN_DIGEST_STR(&d->config.digest), l->where,
				      d->n_layers);
	d->diff_ids = xcalloc(d->n_layers + 1, sizeof(*d->diff_ids));
	json_array_foreach(ids, i, j) {
		if (!json_string_value(j) ||
		    kiln_digest_parse(json_string_value(j), &d->diff_ids[i]) < 0)
			return kiln_error_set(err, -EBADMSG,
					      "image config %s in %s: bad "
					      "diff_id #%zu",
					      KILN_DIGEST_STR(&d->config.digest),
					      l->where, i);
	}
	return 0;
}

static int load_image_doc(struct layout *l, const struct kiln_digest *manifest,
			  struct image_doc *d, struct kiln_error **err)
{
	struct descriptor mdesc = { .digest = *manifest, .size = -1 };
	json_t *m = NULL, *c = NULL;
	int r;

	m = read_json_blob(l, &mdesc, "manifest", &d->manifest_raw,
			   &d->manifest_len, err);
	if (!m)
		return -EBADMSG;
	r = parse_descriptor(json_object_get(m, "config"), "manifest config",
			     l->where, &d->config, err);
	if (r == 0)
		r = parse_layers(l, m, d, err);
	if (r == 0) {
		c = read_json_blob(l, &d->config, "image config", &d->config_raw,
				   &d->config_len, err);
		r = c ? parse_diff_ids(l, c, d, err) : -EBADMSG;
	}
	/* Descriptors borrow media types from m: forget them with it. */
	for (size_t i = 0; d->layers && i < d->n_layers; i++)
		d->layers[i].media_type = NULL;
	d->config.media_type = NULL;
	json_decref(c);
	json_decref(m);
	return r;
}

static int copy_layer_blob(struct kiln_store *s, struct layout *l,
			   const struct descriptor *desc, struct kiln_error **err)
{
	_cleanup_close_ int fd = -1;
	struct kiln_digest got;
	uint64_t size;
	int r;

	if (kiln_store_has(s, &desc->digest))
		return 0;
	fd = open_blob(l, &desc->digest, desc->size, &size, err);
	if (fd < 0)
		return fd;
	r = kiln_store_put_fd(s, fd, &desc->digest, &got, &size, err);
	if (r < 0)
		kiln_error_prefix(err, "layer %s in %s",
				  KILN_DIGEST_STR(&desc->digest), l->where);
	return r;
}

/* Copy an entry's metadata onto the implied directory fd. */
static int copy_dir_meta(int fd, const struct kiln_tree_entry *e)
{
	struct timespec ts[2] = {
		{ e->mtime_sec, e->mtime_nsec }, { e->mtime_sec, e->mtime_nsec },
	};
	size_t i;

	if (fchown(fd, e->uid, e->gid) < 0 || fchmod(fd, e->mode & 07777) < 0 ||
	    futimens(fd, ts) < 0)
		return -errno;
	for (i = 0; i < e->n_xattrs; i++) {
		if (fsetxattr(fd, e->xattrs[i].name, e->xattrs[i].value,
			      e->xattrs[i].len, 0) < 0)
			return -errno;
	}
	return 0;
}

struct apply_ctx {
	struct kiln_store *s;
	const struct kiln_digest *base; /* NULL for the first layer */
};

/*
 * A directory the layer only implies keeps the metadata it has in the
 * layers below; otherwise the layer would silently change it.
 */
static int implied_dir(void *ud, const char *path, int fd,
		       struct kiln_error **err)
{
	struct apply_ctx *c = ud;
	struct kiln_tree_entry e = { 0 };
	int r;

	if (!c->base)
		return 0;
	r = kiln_tree_lookup(c->s, c->base, path, &e, NULL);
	if (r < 0)
		return 0; /* not below either: keep the defaults */
	r = e.type == KILN_ENTRY_DIR ? copy_dir_meta(fd, &e) : 0;
	kiln_tree_entry_release(&e);
	if (r < 0)
		return kiln_error_seterrno(err, r, "layer directory '%s'", path);
	return 0;
}

static int extract_layer(struct kiln_store *s, struct apply_ctx *c,
			 const struct descriptor *desc,
			 const struct kiln_digest *diff_id, const char *dir,
			 struct kiln_error **err)
{
	_cleanup_close_ int blob = -1, dfd = -1;
	struct kiln_digest got;
	struct kiln_layer_extract_opts o = {
		.diff_id = &got, .implied_dir = implied_dir, .ud = c,
	};
	int r;

	blob = kiln_store_open_blob(s, &desc->digest);
	if (blob < 0)
		return kiln_error_seterrno(err, blob, "opening stored layer");
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return kiln_error_seterrno(err, -errno, "opening %s", dir);
	r = kiln_layer_extract_with(blob, dfd, &o, err);
	if (r < 0)
		return r;
	if (!kiln_digest_eq(&got, diff_id))
		return kiln_error_set(err, -EBADMSG,
				      "uncompressed content is %s but the config's "
				      "diff_id is %s",
				      KILN_DIGEST_STR(&got), KILN_DIGEST_STR(diff_id));
	return 0;
}

/* Extract, apply and keep one layer; *tree becomes the new top tree. */
/* What determines a layer's tree: the tree below it and its diff_id. */
static void memo_key(const struct kiln_digest *base, const struct kiln_digest *diff_id,
		     struct kiln_digest *out)
{
	struct kiln_hasher *h = kiln_hasher_new(KILN_DIGEST_SHA256);
	const char *b = base ? KILN_DIGEST_STR(base) : "none";
	const char *d = KILN_DIGEST_STR(diff_id);

	kiln_hasher_update(h, "kiln-layer-memo-v1\n", 19);
	kiln_hasher_update(h, b, strlen(b));
	kiln_hasher_update(h, "\n", 1);
	kiln_hasher_update(h, d, strlen(d));
	kiln_hasher_final(h, out);
	kiln_hasher_free(h);
}

static int apply_layer(struct kiln_store *s, struct kiln_layers *layers,
		       const struct descriptor *desc,
		       const struct kiln_digest *diff_id,
		       const struct kiln_digest *base, struct kiln_digest *tree,
		       struct kiln_error **err)
{
	struct kiln_tree_build_opts bo = { .adopt = true };
	struct apply_ctx c = { .s = s, .base = base };
	_cleanup_close_ int dfd = -1;
	_cleanup_free_ char *dir = NULL;
	struct kiln_digest memo;
	int r;

	/* This diff_id on this parent was applied before: reuse its tree. */
	memo_key(base, diff_id, &memo);
	if (kiln_layers_memo_get(layers, &memo, tree) == 0 && kiln_store_has(s, tree))
		return 0;
	r = kiln_layers_mkscratch(layers, &dir, err);
	if (r < 0)
		return r;
	r = extract_layer(s, &c, desc, diff_id, dir, err);
	if (r == 0) {
		dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0)
			r = kiln_error_seterrno(err, -errno, "opening %s", dir);
	}
	if (r == 0)
		r = kiln_tree_apply_layer(s, base, dfd, &bo, tree, err);
	if (r == 0)
		r = kiln_layers_adopt(layers, tree, base, dir, err);
	if (r < 0)
		(void)kiln_rm_rf(dir);
	else
		(void)kiln_layers_memo_put(layers, &memo, tree);
	return r;
}

static int build_rootfs(struct kiln_store *s, struct kiln_layers *layers,
			const struct image_doc *d, struct kiln_digest *rootfs,
			struct kiln_error **err)
{
	struct kiln_digest prev, tree;
	struct kiln_tree empty = KILN_TREE_INIT;
	size_t i;
	int r;

	if (d->n_layers == 0)
		return kiln_tree_put(s, &empty, rootfs, err);
	for (i = 0; i < d->n_layers; i++) {
		r = apply_layer(s, layers, &d->layers[i], &d->diff_ids[i],
				i ? &prev : NULL, &tree, err);
		if (r < 0) {
			kiln_error_prefix(err, "layer %s (%zu of %zu)",
					  KILN_DIGEST_STR(&d->layers[i].digest),
					  i + 1, d->n_layers);
			return r;
		}
		prev = tree;
	}
	*rootfs = prev;
	return 0;
}

/* Fetch the layers missing from the store, a few at a time. */
static int fetch_layers(struct kiln_store *s, struct layout *l,
			const struct image_doc *d, struct kiln_error **err)
{
	_cleanup_free_ struct kiln_registry_blob *blobs = NULL;
	size_t i, n = 0;
	int r;

	blobs = xcalloc(d->n_layers + 1, sizeof(*blobs));
	for (i = 0; i < d->n_layers; i++) {
		if (kiln_store_has(s, &d->layers[i].digest))
			continue;
		blobs[n].digest = d->layers[i].digest;
		blobs[n++].size = d->layers[i].size;
	}
	r = kiln_registry_fetch_blobs(l->reg, l->rref, blobs, n, 0, s, NULL, err);
	if (r < 0)
		kiln_error_prefix(err, "%s", l->where);
	return r;
}

static int store_blobs(struct kiln_store *s, struct layout *l,
		       const struct kiln_digest *manifest,
		       const struct image_doc *d, struct kiln_error **err)
{
	size_t i;
	int r;

	for (i = 0; !l->reg && i < d->n_layers; i++) {
		r = copy_layer_blob(s, l, &d->layers[i], err);
		if (r < 0)
			return r;
	}
	if (l->reg) {
		r = fetch_layers(s, l, d, err);
		if (r < 0)
			return r;
	}
	r = put_json(s, d->config_raw, d->config_len, &d->config.digest, err);
	if (r == 0)
		r = put_json(s, d->manifest_raw, d->manifest_len, manifest, err);
	return r;
}

int kiln_image_store_blobs(const struct kiln_image_source *src, const struct kiln_image_ref *ref,
			   const struct kiln_digest *manifest, struct kiln_digest **out,
			   size_t *n, struct kiln_error **err)
{
	struct layout l = { .fd = -1 };
	struct image_doc d = { 0 };
	size_t i;
	int r;

	*out = NULL;
	*n = 0;
	r = image_open(&l, src, ref, err);
	if (r == 0)
		r = load_image_doc(&l, manifest, &d, err);
	if (r == 0)
		r = store_blobs(src->store, &l, manifest, &d, err);
	if (r == 0) {
		*out = xcalloc(d.n_layers + 2, sizeof(**out));
		(*out)[(*n)++] = *manifest;
		(*out)[(*n)++] = d.config.digest;
		for (i = 0; i < d.n_layers; i++)
			(*out)[(*n)++] = d.layers[i].digest;
	}
	image_doc_release(&d);
	layout_close(&l);
	return r;
}

int kiln_image_manifest_blobs(struct kiln_store *s, const struct kiln_digest *manifest,
			      struct kiln_digest **out, size_t *n, struct kiln_error **err)
{
	_cleanup_free_ char *data = NULL;
	json_t *m, *layers, *l;
	size_t len = 0, i, count;
	int r;

	*out = NULL;
	*n = 0;
	r = kiln_store_read(s, manifest, IMAGE_JSON_LIMIT, &data, &len, err);
	if (r < 0)
		return r;
	m = json_loadb(data, len, 0, NULL);
	layers = json_object_get(m, "layers");
	if (!json_is_object(m) || !json_is_array(layers) || json_array_size(layers) > 4096) {
		json_decref(m);
		return kiln_error_set(err, -EBADMSG, "manifest %s: not an image manifest",
				      KILN_DIGEST_STR(manifest));
	}
	count = json_array_size(layers) + 1;
	*out = xcalloc(count, sizeof(**out));
	if (kiln_digest_parse(json_string_value(json_object_get(json_object_get(m, "config"),
								"digest")) ?: "", &(*out)[0]) < 0)
		r = -EBADMSG;
	json_array_foreach(layers, i, l)
		if (r == 0 && kiln_digest_parse(json_string_value(json_object_get(l, "digest")) ?: "",
						&(*out)[i + 1]) < 0)
			r = -EBADMSG;
	json_decref(m);
	if (r < 0) {
		free(TAKE_PTR(*out));
		return kiln_error_set(err, r, "manifest %s: a descriptor without a digest",
				      KILN_DIGEST_STR(manifest));
	}
	*n = count;
	return 0;
}

int kiln_image_import(const struct kiln_image_source *src, struct kiln_layers *layers,
		      const struct kiln_image_ref *ref,
		      const struct kiln_digest *manifest, struct kiln_image *out,
		      struct kiln_error **err)
{
	struct kiln_store *s = src->store;
	struct layout l = { .fd = -1 };
	struct image_doc d = { 0 };
	struct kiln_digest rootfs;
	size_t i;
	int r;

	r = image_open(&l, src, ref, err);
	if (r == 0)
		r = load_image_doc(&l, manifest, &d, err);
	if (r == 0)
		r = store_blobs(s, &l, manifest, &d, err);
	if (r == 0)
		r = build_rootfs(s, layers, &d, &rootfs, err);
	if (r == 0) {
		memset(out, 0, sizeof(*out));
		out->manifest = *manifest;
		out->config = d.config.digest;
		out->rootfs = rootfs;
		out->n_layers = d.n_layers;
		out->layers = xcalloc(d.n_layers + 1, sizeof(*out->layers));
		for (i = 0; i < d.n_layers; i++)
			out->layers[i] = d.layers[i].digest;
	}
	image_doc_release(&d);
	layout_close(&l);
	return r;
}
