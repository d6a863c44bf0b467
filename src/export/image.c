/*
 * OCI image assembly: config, manifest and index blobs.
 *
 * Every JSON blob is written canonically (compact, keys sorted), so equal
 * inputs give equal digests. Base layers pass through by their descriptor
 * (Docker layer media types are renamed to their OCI twins: the bytes are
 * the same format), never recompressed.
 */
#include "export/image.h"

#include <string.h>
#include <time.h>

#include "basic/alloc.h"
#include "basic/platform.h"
#include "basic/parse-util.h"

#define JSON_OUT_FLAGS (JSON_COMPACT | JSON_SORT_KEYS)

/* ---- options ---- */

const char *kiln_image_layer_media_type(enum kiln_compression c)
{
	switch (c) {
	case KILN_COMPRESS_ZSTD: return KILN_MT_OCI_LAYER_ZSTD;
	case KILN_COMPRESS_NONE: return KILN_MT_OCI_LAYER;
	default: return KILN_MT_OCI_LAYER_GZIP;
	}
}

static int set_compression(struct kiln_image_opts *o, const char *value,
			   struct kiln_error **err)
{
	if (!strcmp(value, "gzip"))
		o->compression = KILN_COMPRESS_GZIP;
	else if (!strcmp(value, "zstd"))
		o->compression = KILN_COMPRESS_ZSTD;
	else if (!strcmp(value, "uncompressed"))
		o->compression = KILN_COMPRESS_NONE;
	else
		return kiln_error_set(err, -EINVAL,
				      "output: compression=%s (want gzip, zstd or uncompressed)",
				      value);
	return 0;
}

static int set_level(struct kiln_image_opts *o, const char *value,
		     struct kiln_error **err)
{
	int level;

	if (kiln_parse_int(value, &level) < 0 || level < 1 || level > 19)
		return kiln_error_set(err, -EINVAL,
				      "output: compression-level=%s (want 1-9 for gzip, 1-19 for zstd)",
				      value);
	o->level = level;
	return 0;
}

int kiln_image_opts_set(struct kiln_image_opts *o, const char *key,
			const char *value, struct kiln_error **err)
{
	int r;

	if (!strcmp(key, "compression"))
		r = set_compression(o, value, err);
	else if (!strcmp(key, "compression-level"))
		r = set_level(o, value, err);
	else if (!strcmp(key, "force-compression") && (!strcmp(value, "true") || !strcmp(value, "false")))
		o->force = !strcmp(value, "true"), r = 0;
	else if (!strcmp(key, "force-compression"))
		r = kiln_error_set(err, -EINVAL, "output: force-compression=%s (want true or false)",
				   value);
	else
		return -ENOENT;
	if (r == 0 && strcmp(key, "force-compression") && o->compression == KILN_COMPRESS_GZIP &&
	    o->level > 9)
		r = kiln_error_set(err, -EINVAL,
				   "output: compression-level=%d is over 9, gzip's maximum",
				   o->level);
	return r;
}

int kiln_image_opts_epoch(struct kiln_image_opts *o, const char *value,
			  struct kiln_error **err)
{
	uint64_t v;

	o->has_epoch = false;
	o->epoch = 0;
	if (!value || !*value)
		return 0;
	if (kiln_parse_u64(value, &v) < 0 || v > INT64_MAX / 2)
		return kiln_error_set(err, -EINVAL,
				      "SOURCE_DATE_EPOCH=%s is not a number of seconds",
				      value);
	o->has_epoch = true;
	o->epoch = (int64_t)v;
	return 0;
}

/* ---- JSON blobs ---- */

int kiln_image_read_json(struct kiln_store *s, const struct kiln_digest *d,
			 json_t **out, struct kiln_error **err)
{
	_cleanup_free_ char *data = NULL;
	json_error_t je;
	size_t len;
	int r;

	r = kiln_store_read(s, d, KILN_IMAGE_JSON_MAX, &data, &len, err);
	if (r < 0)
		return r;
	*out = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
	if (!*out || !json_is_object(*out)) {
		json_decref(*out);
		*out = NULL;
		return kiln_error_set(err, -EBADMSG, "blob %s: not a JSON object: %s",
				      KILN_DIGEST_STR(d), je.text);
	}
	return 0;
}

/* Store j canonically; size may be NULL. */
static int put_json(struct kiln_store *s, const json_t *j,
		    struct kiln_digest *d, uint64_t *size,
		    struct kiln_error **err)
{
	_cleanup_free_ char *text = json_dumps(j, JSON_OUT_FLAGS);

	if (!text)
		return kiln_error_set(err, -ENOMEM, "cannot encode JSON");
	if (size)
		*size = strlen(text);
	return kiln_store_put_buf(s, text, strlen(text), d, err);
}

static json_t *descriptor(const char *media_type, const struct kiln_digest *d,
			  uint64_t size)
{
	return json_pack("{s:s, s:s, s:I}", "mediaType", media_type, "digest",
			 KILN_DIGEST_STR(d), "size", (json_int_t)size);
}

/* ---- platforms ---- */

/* Set or remove os/architecture/variant keys of obj. */
static void platform_apply(const struct kiln_platform *p, json_t *obj)
{
	json_object_set_new(obj, "os", json_string(p->os));
	json_object_set_new(obj, "architecture", json_string(p->arch));
	if (*p->variant)
		json_object_set_new(obj, "variant", json_string(p->variant));
	else
		json_object_del(obj, "variant");
}

/* ---- the base image ---- */

struct base {
	json_t *layers;   /* manifest descriptors (converted) */
	json_t *diff_ids; /* config rootfs.diff_ids */
	json_t *history;  /* config history (made up when absent) */
};

static void base_release(struct base *b)
{
	json_decref(b->layers);
	json_decref(b->diff_ids);
	json_decref(b->history);
}

static const char *oci_layer_type(const char *mt)
{
	if (!strcmp(mt, "application/vnd.docker.image.rootfs.diff.tar.gzip"))
		return KILN_MT_OCI_LAYER_GZIP;
	if (!strcmp(mt, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"))
		return "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
	return mt;
}

static int base_layers(json_t *manifest, struct base *b, const char *what,
		       struct kiln_error **err)
{
	json_t *layers = json_object_get(manifest, "layers"), *l;
	size_t i;

	if (!json_is_array(layers))
		return kiln_error_set(err, -EBADMSG, "%s: no layers", what);
	b->layers = json_array();
	json_array_foreach(layers, i, l) {
		const char *mt = json_string_value(json_object_get(l, "mediaType"));
		json_t *copy;

		if (!mt || !json_is_string(json_object_get(l, "digest")) ||
		    !json_is_integer(json_object_get(l, "size")))
			return kiln_error_set(err, -EBADMSG,
					      "%s: layer %zu is not a descriptor",
					      what, i);
		copy = json_deep_copy(l);
		json_object_set_new(copy, "mediaType", json_string(oci_layer_type(mt)));
		json_array_append_new(b->layers, copy);
	}
	return 0;
}

/* One made-up history entry per base layer, for configs without history. */
static json_t *history_for(size_t n)
{
	json_t *h = json_array();
	size_t i;

	for (i = 0; i < n; i++)
		json_array_append_new(h, json_pack("{s:s}", "comment",
						   "base layer"));
	return h;
}

static int base_config(json_t *config, struct base *b, const char *what,
		       struct kiln_error **err)
{
	json_t *ids = json_object_get(json_object_get(config, "rootfs"),
				      "diff_ids");
	json_t *h = json_object_get(config, "history");

	if (!json_is_array(ids) || json_array_size(ids) != json_array_size(b->layers))
		return kiln_error_set(err, -EBADMSG,
				      "%s: config rootfs.diff_ids does not list one digest per layer",
				      what);
	b->diff_ids = json_deep_copy(ids);
	b->history = json_is_array(h) ? json_deep_copy(h) :
					history_for(json_array_size(ids));
	return 0;
}

static int meta_digest(json_t *meta, const char *key, struct kiln_digest *d,
		       struct kiln_error **err)
{
	const char *s = json_string_value(json_object_get(meta, key));

	if (!s || kiln_digest_parse(s, d) < 0)
		return kiln_error_set(err, -EINVAL,
				      "base image meta: \"%s\" is not a digest", key);
	return 0;
}

static int base_load_docs(struct kiln_store *s, json_t *meta, struct base *b,
			  struct kiln_error **err)
{
	struct kiln_digest md, cd;
	json_t *manifest = NULL, *config = NULL;
	char what[96];
	int r;

	r = meta_digest(meta, "manifest", &md, err);
	r = r ? r : meta_digest(meta, "config", &cd, err);
	r = r ? r : kiln_image_read_json(s, &md, &manifest, err);
	r = r ? r : kiln_image_read_json(s, &cd, &config, err);
	snprintf(what, sizeof(what), "base manifest %s", KILN_DIGEST_STR(&md));
	r = r ? r : base_layers(manifest, b, what, err);
	r = r ? r : base_config(config, b, what, err);
	json_decref(manifest);
	json_decref(config);
	return r;
}

static int base_load(struct kiln_store *s, const char *meta_text,
		     struct base *b, struct kiln_error **err)
{
	json_t *meta;
	int r;

	memset(b, 0, sizeof(*b));
	if (!meta_text) {
		b->layers = json_array();
		b->diff_ids = json_array();
		b->history = json_array();
		return 0;
	}
	meta = json_loads(meta_text, JSON_REJECT_DUPLICATES, NULL);
	if (!json_is_object(meta)) {
		json_decref(meta);
		return kiln_error_set(err, -EINVAL,
				      "base image meta is not a JSON object");
	}
	r = base_load_docs(s, meta, b, err);
	json_decref(meta);
	return r;
}

/* ---- config ---- */

static char *rfc3339(int64_t t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	char buf[64];

	if (!gmtime_r(&tt, &tm) ||
	    !strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm))
		return xstrdup("1970-01-01T00:00:00Z");
	return xstrdup(buf);
}

static size_t count_layers(const json_t *history)
{
	size_t i, n = 0;
	json_t *h;

	json_array_foreach(history, i, h)
		if (!json_is_true(json_object_get(h, "empty_layer")))
			n++;
	return n;
}

/* The new history entries, checked against n_trees. */
static int new_history(const json_t *config, size_t n_trees, json_t **out,
		       struct kiln_error **err)
{
	json_t *h = json_object_get(config, "history");
	size_t i;

	if (!h) {
		*out = json_array();
		for (i = 0; i < n_trees; i++)
			json_array_append_new(*out, json_pack("{s:s}", "created_by",
							      "kiln"));
		return 0;
	}
	if (!json_is_array(h) || count_layers(h) != n_trees)
		return kiln_error_set(err, -EINVAL,
				      "image config: history has %zu non-empty entries for %zu new layers",
				      json_is_array(h) ? count_layers(h) : 0,
				      n_trees);
	*out = json_deep_copy(h);
	return 0;
}

static void set_created(json_t *config, json_t *history,
			const struct kiln_image_opts *o)
{
	_cleanup_free_ char *ts = NULL;
	size_t i;
	json_t *h;

	if (!o->has_epoch)
		return;
	ts = rfc3339(o->epoch);
	json_object_set_new(config, "created", json_string(ts));
	json_array_foreach(history, i, h)
		if (json_is_object(h))
			json_object_set_new(h, "created", json_string(ts));
}

static int build_config(const struct kiln_image_spec *spec,
			const struct kiln_image_opts *o, struct base *b,
			const struct kiln_platform *p, json_t *new_diff_ids,
			json_t **out, struct kiln_error **err)
{
	json_t *config, *history = NULL;
	int r;

	if (spec->config && !json_is_object(spec->config))
		return kiln_error_set(err, -EINVAL, "image config is not an object");
	r = new_history(spec->config, spec->n_trees, &history, err);
	if (r < 0)
		return r;
	config = spec->config ? json_deep_copy(spec->config) : json_object();
	platform_apply(p, config);
	set_created(config, history, o);
	json_array_extend(b->history, history);
	json_decref(history);
	json_array_extend(b->diff_ids, new_diff_ids);
	json_object_set(config, "history", b->history);
	json_object_set_new(config, "rootfs",
			    json_pack("{s:s, s:O}", "type", "layers",
				      "diff_ids", b->diff_ids));
	*out = config;
	return 0;
}

/* ---- assembly ---- */

static int new_layers(struct kiln_store *s, struct kiln_cache *cache,
		      const struct kiln_image_spec *spec,
		      const struct kiln_image_opts *o, json_t *descs,
		      json_t *diff_ids, struct kiln_error **err)
{
	const struct kiln_digest *parent = spec->base_rootfs;
	size_t i;

	for (i = 0; i < spec->n_trees; i++) {
		struct kiln_image_layer_info info;
		int r;

		r = kiln_image_layer(s, cache, parent, &spec->trees[i], o, &info,
				     err);
		if (r < 0)
			return r;
		json_array_append_new(descs, descriptor(info.media_type,
							&info.digest, info.size));
		json_array_append_new(diff_ids,
				      json_string(KILN_DIGEST_STR(&info.diff_id)));
		parent = &spec->trees[i];
	}
	return 0;
}

static int put_manifest(struct kiln_store *s, json_t *config, json_t *layers,
			struct kiln_digest *out, struct kiln_error **err)
{
	struct kiln_digest cd;
	uint64_t csize = 0;
	json_t *m;
	int r;

	r = put_json(s, config, &cd, &csize, err);
	if (r < 0)
		return r;
	m = json_pack("{s:i, s:s, s:o, s:O}", "schemaVersion", 2, "mediaType",
		      KILN_MT_OCI_MANIFEST, "config",
		      descriptor(KILN_MT_OCI_CONFIG, &cd, csize), "layers",
		      layers);
	r = put_json(s, m, out, NULL, err);
	json_decref(m);
	return r;
}

/*
 * force-compression: each base layer of another compression is converted
 * (its diff_id checked); one already in the requested compression is kept
 * as it is, whatever level made it (as BuildKit does).
 */
static int force_base(struct kiln_store *s, struct kiln_cache *cache,
		      const struct kiln_image_opts *o, struct base *b,
		      struct kiln_error **err)
{
	json_t *l;
	size_t i;

	json_array_foreach(b->layers, i, l) {
		const char *mt = json_string_value(json_object_get(l, "mediaType"));
		const char *id = json_string_value(json_array_get(b->diff_ids, i));
		struct kiln_digest blob, diff_id;
		struct kiln_image_layer_info info;
		enum kiln_compression c;
		int r;

		if (!kiln_image_media_compression(mt, &c) || c == o->compression)
			continue;
		if (!id || kiln_digest_parse(id, &diff_id) < 0 ||
		    kiln_digest_parse(json_string_value(json_object_get(l, "digest")) ?: "",
				      &blob) < 0)
			return kiln_error_set(err, -EBADMSG,
					      "base layer %zu: no digest or diff_id to convert it by", i);
		r = kiln_image_layer_convert(s, cache, &blob, mt, &diff_id, o, &info, err);
		if (r < 0) {
			kiln_error_prefix(err, "force-compression of base layer %zu", i);
			return r;
		}
		json_array_set_new(b->layers, i, descriptor(info.media_type, &info.digest, info.size));
	}
	return 0;
}

static int check_spec(const struct kiln_image_spec *spec,
		      struct kiln_error **err)
{
	if (!spec->base_meta != !spec->base_rootfs)
		return kiln_error_set(err, -EINVAL,
				      "image: a base image needs both its meta and its rootfs tree");
	if (spec->n_trees && !spec->trees)
		return kiln_error_set(err, -EINVAL, "image: no trees");
	return 0;
}

static int assemble(struct kiln_store *s, struct kiln_cache *cache,
		    const struct kiln_image_spec *spec,
		    const struct kiln_image_opts *o, const struct kiln_platform *p,
		    struct kiln_digest *manifest, struct kiln_error **err)
{
	struct base b;
	json_t *diff_ids = json_array(), *config = NULL;
	int r;

	r = base_load(s, spec->base_meta, &b, err);
	if (r == 0 && o->force)
		r = force_base(s, cache, o, &b, err);
	if (r == 0)
		r = new_layers(s, cache, spec, o, b.layers, diff_ids, err);
	if (r == 0)
		r = build_config(spec, o, &b, p, diff_ids, &config, err);
	if (r == 0)
		r = put_manifest(s, config, b.layers, manifest, err);
	json_decref(config);
	json_decref(diff_ids);
	base_release(&b);
	return r;
}

int kiln_image_assemble(struct kiln_store *s, struct kiln_cache *cache,
			const struct kiln_image_spec *spec,
			const struct kiln_image_opts *opts,
			struct kiln_digest *manifest, struct kiln_error **err)
{
	static const struct kiln_image_opts defaults;
	struct kiln_platform p;
	int r;

	r = check_spec(spec, err);
	if (r == 0)
		r = kiln_platform_parse(spec->platform, &p, err);
	if (r < 0)
		return r;
	r = assemble(s, cache, spec, opts ? opts : &defaults, &p, manifest, err);
	kiln_platform_release(&p);
	if (r < 0)
		kiln_error_prefix(err, "image for %s", spec->platform);
	return r;
}

/* ---- index ---- */

static int index_entry(struct kiln_store *s, const struct kiln_digest *d,
		       const char *platform, json_t **out,
		       struct kiln_error **err)
{
	json_t *m = NULL, *plat;
	struct kiln_platform p;
	uint64_t size;
	const char *mt;
	int r;

	r = kiln_platform_parse(platform, &p, err);
	if (r < 0)
		return r;
	r = kiln_image_read_json(s, d, &m, err);
	if (r == 0)
		r = kiln_store_size(s, d, &size);
	if (r == 0) {
		mt = json_string_value(json_object_get(m, "mediaType"));
		*out = descriptor(mt ? mt : KILN_MT_OCI_MANIFEST, d, size);
		plat = json_object();
		platform_apply(&p, plat);
		json_object_set_new(*out, "platform", plat);
	}
	json_decref(m);
	kiln_platform_release(&p);
	return r;
}

int kiln_image_index(struct kiln_store *s, const struct kiln_digest *manifests,
		     const char *const *platforms, size_t n,
		     const json_t *annotations, struct kiln_digest *index,
		     struct kiln_error **err)
{
	json_t *list = json_array(), *idx;
	size_t i;
	int r = 0;

	if (annotations && !json_is_object(annotations))
		r = kiln_error_set(err, -EINVAL,
				   "image index: annotations are not an object");
	for (i = 0; r == 0 && i < n; i++) {
		json_t *e = NULL;

		r = index_entry(s, &manifests[i], platforms[i], &e, err);
		if (r == 0)
			json_array_append_new(list, e);
	}
	if (r < 0) {
		json_decref(list);
		return r;
	}
	idx = json_pack("{s:i, s:s, s:o}", "schemaVersion", 2, "mediaType",
			KILN_MT_OCI_INDEX, "manifests", list);
	if (annotations && json_object_size(annotations))
		json_object_set_new(idx, "annotations",
				    json_deep_copy(annotations));
	r = put_json(s, idx, index, NULL, err);
	json_decref(idx);
	return r;
}
