/*
 * Image layers from tree diffs.
 *
 * kiln_tree_diff(parent, child) drives a libarchive pax writer whose output
 * goes through our own write callback: the uncompressed bytes are hashed
 * (diff_id) and fed to zlib or libzstd, whose output streams into a CAS
 * writer. Nothing in the stream depends on the clock, the host or the
 * process (gzip header with no name and mtime 0, unpadded last tar
 * block), nor on the number of cores: gzip is compressed in fixed chunks
 * on all of them (pgzip.h), zstd with at least one worker thread, whose
 * output is the same for any number of workers. So the same trees and
 * options give the same blob everywhere.
 */
#include "export/image.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/strbuf.h"
#include "cas/tree.h"
#include "export/export-internal.h"
#include "export/pgzip.h"

#define GZIP_DEFAULT_LEVEL 6
#define ZSTD_DEFAULT_LEVEL 3
#define SINK_BUF (64u << 10)
#define LAYER_META_MAX 4096

/* ---- compressed sink into the CAS ---- */

struct sink {
	enum kiln_compression comp;
	struct kiln_pgzip *gz;
	ZSTD_CCtx *zc;
	struct kiln_store_writer *w;
	struct kiln_hasher *diff; /* uncompressed bytes */
	uint64_t csize;
	unsigned char *buf;
};

static int sink_emit(struct sink *k, const void *data, size_t n)
{
	int r;

	if (n == 0)
		return 0;
	r = kiln_store_writer_write(k->w, data, n);
	if (r < 0)
		return r;
	k->csize += n;
	return 0;
}

static int gzip_emit(void *ud, const void *data, size_t n)
{
	return sink_emit(ud, data, n);
}

static int sink_gzip(struct sink *k, const void *data, size_t n, bool end)
{
	return end ? kiln_pgzip_finish(k->gz) : kiln_pgzip_write(k->gz, data, n);
}

static int sink_zstd(struct sink *k, const void *data, size_t n, bool end)
{
	ZSTD_inBuffer in = { data, n, 0 };
	size_t left;

	do {
		ZSTD_outBuffer out = { k->buf, SINK_BUF, 0 };
		int r;

		left = ZSTD_compressStream2(k->zc, &out, &in,
					    end ? ZSTD_e_end : ZSTD_e_continue);
		if (ZSTD_isError(left))
			return -EIO;
		r = sink_emit(k, k->buf, out.pos);
		if (r < 0)
			return r;
	} while (in.pos < in.size || (end && left > 0));
	return 0;
}

static int sink_feed(struct sink *k, const void *data, size_t n, bool end)
{
	if (!end)
		kiln_hasher_update(k->diff, data, n);
	switch (k->comp) {
	case KILN_COMPRESS_GZIP:
		return sink_gzip(k, data, n, end);
	case KILN_COMPRESS_ZSTD:
		return sink_zstd(k, data, n, end);
	default:
		return sink_emit(k, data, n);
	}
}

static int effective_level(const struct kiln_image_opts *o)
{
	if (o->level)
		return o->level;
	return o->compression == KILN_COMPRESS_ZSTD ? ZSTD_DEFAULT_LEVEL :
	       o->compression == KILN_COMPRESS_GZIP ? GZIP_DEFAULT_LEVEL : 0;
}

/* Compressing threads: one per core (the caller helps as well). */
static unsigned compress_threads(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > 64 ? 64 : (unsigned)n;
}

static int sink_start_codec(struct sink *k, int level)
{
	if (k->comp == KILN_COMPRESS_GZIP) {
		k->gz = kiln_pgzip_new(level, compress_threads(), gzip_emit, k);
		if (!k->gz)
			return -ENOMEM;
	} else if (k->comp == KILN_COMPRESS_ZSTD) {
		/*
		 * At least one worker even on one core: zstd's output is the
		 * same for any number of workers, but not without any.
		 */
		k->zc = ZSTD_createCCtx();
		if (!k->zc ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(
			    k->zc, ZSTD_c_compressionLevel, level)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(
			    k->zc, ZSTD_c_checksumFlag, 1)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(
			    k->zc, ZSTD_c_nbWorkers, (int)compress_threads())))
			return -ENOMEM;
	}
	return 0;
}

static int sink_start(struct kiln_store *s, struct sink *k,
		      const struct kiln_image_opts *o, struct kiln_error **err)
{
	int r;

	memset(k, 0, sizeof(*k));
	k->comp = o->compression;
	k->buf = xmalloc(SINK_BUF);
	k->diff = kiln_hasher_new(KILN_DIGEST_SHA256);
	r = sink_start_codec(k, effective_level(o));
	if (r < 0)
		return kiln_error_set(err, r, "layer: cannot start %s compressor",
				      kiln_image_layer_media_type(k->comp));
	return kiln_store_writer_begin(s, &k->w, err);
}

static void sink_release(struct sink *k)
{
	kiln_pgzip_free(k->gz);
	ZSTD_freeCCtx(k->zc);
	if (k->w)
		kiln_store_writer_abort(k->w);
	kiln_hasher_free(k->diff);
	free(k->buf);
	memset(k, 0, sizeof(*k));
}

/* Flush the compressor and name the blob. */
static int sink_finish(struct sink *k, struct kiln_image_layer_info *out,
		       struct kiln_error **err)
{
	int r = sink_feed(k, NULL, 0, true);

	if (r < 0)
		return kiln_error_seterrno(err, r, "layer: cannot compress");
	kiln_hasher_final(k->diff, &out->diff_id);
	out->size = k->csize;
	return kiln_store_writer_commit(TAKE_PTR(k->w), NULL, &out->digest, err);
}

/* ---- the tar stream ---- */

struct layer {
	struct kiln_store *s;
	const struct kiln_digest *child;
	const struct kiln_image_opts *opts;
	struct kiln_tar tar; /* sink_error is set by tar_write_cb */
	struct sink sink;
	char **stack; /* directories written, by depth (1-based at [0]) */
	size_t depth, alloc;
	struct kiln_error **err;
};

static la_ssize_t tar_write_cb(struct archive *a, void *ud, const void *buf,
			       size_t n)
{
	struct layer *l = ud;
	int r = sink_feed(&l->sink, buf, n, false);

	if (r < 0) {
		l->tar.sink_error = r;
		archive_set_error(a, -r, "cannot write the layer blob");
		return -1;
	}
	return (la_ssize_t)n;
}

static void clamp_time(const struct kiln_image_opts *o, int64_t *sec,
		       uint32_t *nsec)
{
	if (!o->has_epoch)
		return;
	if (*sec > o->epoch || (*sec == o->epoch && *nsec > 0)) {
		*sec = o->epoch;
		*nsec = 0;
	}
}

static int write_entry(struct layer *l, const char *path,
		       const struct kiln_tree_entry *e)
{
	int64_t sec = e->mtime_sec;
	uint32_t nsec = e->mtime_nsec;

	clamp_time(l->opts, &sec, &nsec);
	return kiln_tar_write_entry(&l->tar, path, e, sec, nsec);
}

/* ".wh.NAME" next to path; owner 0:0, mtime epoch or 0. */
static int write_whiteout(struct layer *l, const char *path)
{
	const char *slash = strrchr(path, '/');
	_cleanup_free_ char *wh = NULL;
	struct archive_entry *ae;
	int r;

	wh = slash ? xasprintf("%.*s/.wh.%s", (int)(slash - path), path,
			       slash + 1) :
		     xasprintf(".wh.%s", path);
	ae = archive_entry_new();
	archive_entry_set_pathname(ae, wh);
	archive_entry_set_filetype(ae, AE_IFREG);
	archive_entry_set_perm(ae, 0644);
	archive_entry_set_size(ae, 0);
	archive_entry_set_mtime(ae, l->opts->has_epoch ? l->opts->epoch : 0, 0);
	r = archive_write_header(l->tar.a, ae);
	archive_entry_free(ae);
	return r < ARCHIVE_WARN ? kiln_tar_fail(&l->tar, wh) : 0;
}

/* Record dir (at depth, 1-based) as written; deeper records are stale. */
static void stack_set(struct layer *l, size_t depth, const char *dir)
{
	while (l->depth >= depth)
		free(l->stack[--l->depth]);
	l->stack = xgrow(l->stack, &l->alloc, depth, sizeof(*l->stack));
	l->stack[l->depth++] = xstrdup(dir);
}

static bool stack_has(const struct layer *l, size_t depth, const char *dir)
{
	return l->depth >= depth && !strcmp(l->stack[depth - 1], dir);
}

static int write_ancestor(struct layer *l, const char *dir, size_t depth)
{
	struct kiln_tree_entry e;
	int r;

	r = kiln_tree_lookup(l->s, l->child, dir, &e, l->err);
	if (r < 0)
		return r;
	if (e.type != KILN_ENTRY_DIR)
		r = kiln_error_set(l->err, -ENOTDIR,
				   "layer: %s: not a directory in tree %s", dir,
				   KILN_DIGEST_STR(l->child));
	else
		r = write_entry(l, dir, &e);
	kiln_tree_entry_release(&e);
	if (r == 0)
		stack_set(l, depth, dir);
	return r;
}

/*
 * Write every directory above path not written yet, with the child tree's
 * metadata: an extractor would otherwise create them with made-up metadata
 * that hides the real one below (overlay semantics). Returns path's depth.
 */
static int write_ancestors(struct layer *l, const char *path, size_t *depth)
{
	const char *p = path;
	size_t d = 1;

	for (; (p = strchr(p, '/')); p++, d++) {
		_cleanup_free_ char *dir = xstrndup(path, (size_t)(p - path));
		int r;

		if (stack_has(l, d, dir))
			continue;
		r = write_ancestor(l, dir, d);
		if (r < 0)
			return r;
	}
	*depth = d;
	return 0;
}

static int diff_visit(enum kiln_diff_kind kind, const char *path,
		      const struct kiln_tree_entry *old_e,
		      const struct kiln_tree_entry *new_e, void *ud)
{
	struct layer *l = ud;
	size_t depth;
	int r;

	r = write_ancestors(l, path, &depth);
	if (r < 0)
		return r;
	if (kind == KILN_DIFF_DELETE)
		return write_whiteout(l, path);
	r = write_entry(l, path, new_e);
	if (r == 0 && new_e->type == KILN_ENTRY_DIR)
		stack_set(l, depth, path);
	return r;
}

static struct archive *layer_writer_new(struct layer *l)
{
	struct archive *a = archive_write_new();

	if (archive_write_set_format_pax(a) != ARCHIVE_OK ||
	    archive_write_add_filter_none(a) != ARCHIVE_OK ||
	    archive_write_set_bytes_in_last_block(a, 1) != ARCHIVE_OK ||
	    archive_write_open(a, l, NULL, tar_write_cb, NULL) != ARCHIVE_OK) {
		archive_write_free(a);
		return NULL;
	}
	return a;
}

static void layer_release(struct layer *l)
{
	if (l->tar.a)
		archive_write_free(l->tar.a);
	while (l->depth)
		free(l->stack[--l->depth]);
	free(l->stack);
	sink_release(&l->sink);
}

static int layer_write(struct layer *l, const struct kiln_digest *parent,
		       struct kiln_image_layer_info *out)
{
	int r;

	l->tar.a = layer_writer_new(l);
	if (!l->tar.a)
		return kiln_error_set(l->err, -EIO, "layer: cannot start archive");
	r = kiln_tree_diff(l->s, parent, l->child, diff_visit, l, l->err);
	if (r > 0)
		r = -EIO;
	if (r == 0 && archive_write_close(l->tar.a) != ARCHIVE_OK)
		r = kiln_tar_fail(&l->tar, "end of archive");
	if (r == 0)
		r = sink_finish(&l->sink, out, l->err);
	return r;
}

static int layer_build(struct kiln_store *s, const struct kiln_digest *parent,
		       const struct kiln_digest *child,
		       const struct kiln_image_opts *opts,
		       struct kiln_image_layer_info *out,
		       struct kiln_error **err)
{
	struct layer l = {
		.s = s, .child = child, .opts = opts, .err = err,
		.tar = { .store = s, .what = "layer", .err = err },
	};
	int r;

	r = sink_start(s, &l.sink, opts, err);
	if (r == 0)
		r = layer_write(&l, parent, out);
	if (r < 0)
		kiln_error_prefix(err, "layer %s -> %s",
				  parent ? KILN_DIGEST_STR(parent) : "empty",
				  KILN_DIGEST_STR(child));
	layer_release(&l);
	out->media_type = kiln_image_layer_media_type(opts->compression);
	out->cached = false;
	return r;
}

/* ---- the layer cache ---- */

static const char *compression_name(enum kiln_compression c)
{
	return c == KILN_COMPRESS_ZSTD ? "zstd" :
	       c == KILN_COMPRESS_NONE ? "none" : "gzip";
}

static char *layer_key(const struct kiln_digest *parent,
		       const struct kiln_digest *child,
		       const struct kiln_image_opts *o)
{
	struct kiln_digest empty, key;
	_cleanup_free_ char *text = NULL;
	char epoch[32] = "none";

	kiln_tree_empty_digest(&empty);
	if (o->has_epoch)
		snprintf(epoch, sizeof(epoch), "%lld", (long long)o->epoch);
	/* v2: gzip in parallel chunks, zstd with workers (other bytes than v1). */
	text = xasprintf("kiln-layer-v2\n%s\n%s\n%s\n%d\n%s\n",
			 KILN_DIGEST_STR(parent ? parent : &empty),
			 KILN_DIGEST_STR(child),
			 compression_name(o->compression),
			 effective_level(o), epoch);
	kiln_digest_buf(text, strlen(text), &key);
	return xstrdup(KILN_DIGEST_STR(&key));
}

static int meta_digest(json_t *meta, const char *key, struct kiln_digest *d)
{
	const char *s = json_string_value(json_object_get(meta, key));

	return s ? kiln_digest_parse(s, d) : -EINVAL;
}

/* Fill out from a record's meta when its blob is still stored. */
static int layer_from_meta(struct kiln_store *s, const char *meta,
			   const struct kiln_image_opts *o,
			   struct kiln_image_layer_info *out)
{
	json_t *m = meta ? json_loads(meta, 0, NULL) : NULL;
	const char *mt = kiln_image_layer_media_type(o->compression);
	uint64_t have;
	int r = -EINVAL;

	if (!m)
		return -EINVAL;
	if (meta_digest(m, "digest", &out->digest) == 0 &&
	    meta_digest(m, "diff_id", &out->diff_id) == 0 &&
	    json_is_integer(json_object_get(m, "size")) &&
	    !strcmp(json_string_value(json_object_get(m, "media_type")) ?: "",
		    mt)) {
		out->size = (uint64_t)json_integer_value(json_object_get(m, "size"));
		r = kiln_store_size(s, &out->digest, &have) == 0 &&
			    have == out->size ? 0 : -ENOENT;
	}
	json_decref(m);
	out->media_type = mt;
	out->cached = r == 0;
	return r;
}

static int layer_lookup(struct kiln_store *s, struct kiln_cache *cache,
			const char *key, const struct kiln_image_opts *o,
			struct kiln_image_layer_info *out)
{
	struct kiln_cache_record rec = { 0 };
	struct kiln_error *e = NULL;
	int r;

	r = kiln_cache_get(cache, key, &rec, &e);
	kiln_error_free(e);
	if (r < 0)
		return r;
	r = layer_from_meta(s, rec.meta, o, out);
	kiln_cache_record_release(&rec);
	return r;
}

static char *layer_meta(const struct kiln_image_layer_info *info)
{
	json_t *m = json_pack("{s:s, s:s, s:I, s:s, s:[s]}",
			      "digest", KILN_DIGEST_STR(&info->digest),
			      "diff_id", KILN_DIGEST_STR(&info->diff_id),
			      "size", (json_int_t)info->size,
			      "media_type", info->media_type,
			      "blobs", KILN_DIGEST_STR(&info->digest));
	char *text = json_dumps(m, JSON_COMPACT | JSON_SORT_KEYS);

	json_decref(m);
	return text;
}

/*
 * Record a new layer. The cache is a speed-up: a failure here loses only
 * the next lookup, so it does not fail the layer.
 */
static void layer_record(struct kiln_cache *cache, const char *key,
			 const struct kiln_digest *child,
			 const struct kiln_image_layer_info *info,
			 uint64_t duration_ms)
{
	_cleanup_free_ char *meta = layer_meta(info);
	struct kiln_error *err = NULL;
	struct kiln_digest out = *child;
	struct kiln_cache_record rec = {
		.key = (char *)key,
		.op = (char *)key,
		.outputs = &out,
		.n_outputs = 1,
		.meta = meta,
		.created = (int64_t)(kiln_now_real_ns() / 1000000000u),
		.duration_ms = duration_ms,
		.size = info->size,
	};

	kiln_cache_put(cache, &key, 1, &rec, &err);
	kiln_error_free(err);
}

/* ---- another compression for a layer blob (force-compression) ---- */

bool kiln_image_media_compression(const char *mt, enum kiln_compression *c)
{
	if (!strcmp(mt, KILN_MT_OCI_LAYER_GZIP))
		*c = KILN_COMPRESS_GZIP;
	else if (!strcmp(mt, KILN_MT_OCI_LAYER_ZSTD))
		*c = KILN_COMPRESS_ZSTD;
	else if (!strcmp(mt, KILN_MT_OCI_LAYER))
		*c = KILN_COMPRESS_NONE;
	else
		return false; /* foreign, nondistributable, unknown: as they are */
	return true;
}

#define CONVERT_BUF (256u << 10)

/* gzip (several members allowed, as gzip itself does) into the sink. */
static int convert_gzip(int fd, struct sink *k)
{
	_cleanup_free_ unsigned char *in = xmalloc(CONVERT_BUF), *out = xmalloc(CONVERT_BUF);
	z_stream zs = { 0 };
	int r = 0, zr = Z_OK;

	if (inflateInit2(&zs, 15 + 16) != Z_OK)
		return -ENOMEM;
	while (r == 0) {
		ssize_t n = read(fd, in, CONVERT_BUF);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			/* The end of the blob must be the end of a member. */
			r = n < 0 ? -errno : zr == Z_STREAM_END ? 0 : -EBADMSG;
			break;
		}
		zs.next_in = in;
		zs.avail_in = (uInt)n;
		do {
			if (zr == Z_STREAM_END) {
				if (zs.avail_in == 0)
					break;
				if (inflateReset(&zs) != Z_OK) { /* the next member */
					r = -EIO;
					break;
				}
			}
			zs.next_out = out;
			zs.avail_out = CONVERT_BUF;
			zr = inflate(&zs, Z_NO_FLUSH);
			if (zr != Z_OK && zr != Z_STREAM_END && zr != Z_BUF_ERROR) {
				r = -EBADMSG;
				break;
			}
			r = sink_feed(k, out, CONVERT_BUF - zs.avail_out, false);
		} while (r == 0 && (zs.avail_in > 0 || zs.avail_out == 0));
	}
	inflateEnd(&zs);
	return r;
}

static int convert_zstd(int fd, struct sink *k)
{
	_cleanup_free_ unsigned char *in = xmalloc(CONVERT_BUF), *out = xmalloc(CONVERT_BUF);
	ZSTD_DCtx *d = ZSTD_createDCtx();
	size_t left = 1;
	int r = 0;

	if (!d)
		return -ENOMEM;
	for (;;) {
		ssize_t n = read(fd, in, CONVERT_BUF);
		ZSTD_inBuffer ib = { in, n > 0 ? (size_t)n : 0, 0 };

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			r = n < 0 ? -errno : left == 0 ? 0 : -EBADMSG;
			break;
		}
		while (r == 0 && ib.pos < ib.size) {
			ZSTD_outBuffer ob = { out, CONVERT_BUF, 0 };

			left = ZSTD_decompressStream(d, &ob, &ib);
			if (ZSTD_isError(left))
				r = -EBADMSG;
			else
				r = sink_feed(k, out, ob.pos, false);
		}
		if (r < 0)
			break;
	}
	ZSTD_freeDCtx(d);
	return r;
}

static int convert_plain(int fd, struct sink *k)
{
	_cleanup_free_ unsigned char *in = xmalloc(CONVERT_BUF);
	ssize_t n;
	int r = 0;

	while (r == 0 && (n = read(fd, in, CONVERT_BUF)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		r = n < 0 ? -errno : sink_feed(k, in, (size_t)n, false);
	}
	return r;
}

static int diff_id_mismatch(const struct kiln_digest *blob, const struct kiln_digest *got,
			    const struct kiln_digest *want, struct kiln_error **err)
{
	return kiln_error_set(err, -EBADMSG,
			      "layer %s: its uncompressed digest is %s, the image config says %s",
			      KILN_DIGEST_STR(blob), KILN_DIGEST_STR(got), KILN_DIGEST_STR(want));
}

static int convert_build(struct kiln_store *s, const struct kiln_digest *blob,
			 enum kiln_compression from, const struct kiln_digest *diff_id,
			 const struct kiln_image_opts *o, struct kiln_image_layer_info *out,
			 struct kiln_error **err)
{
	struct sink k;
	int fd = kiln_store_open_blob(s, blob), r;

	if (fd < 0)
		return kiln_error_seterrno(err, fd, "layer %s: not in the store",
					   KILN_DIGEST_STR(blob));
	r = sink_start(s, &k, o, err);
	if (r == 0) {
		r = from == KILN_COMPRESS_GZIP ? convert_gzip(fd, &k) :
		    from == KILN_COMPRESS_ZSTD ? convert_zstd(fd, &k) : convert_plain(fd, &k);
		if (r < 0)
			kiln_error_seterrno(err, r, "layer %s: cannot read it as %s",
					    KILN_DIGEST_STR(blob), kiln_image_layer_media_type(from));
	}
	if (r == 0 && sink_feed(&k, NULL, 0, true) < 0)
		r = kiln_error_set(err, -EIO, "layer %s: cannot compress", KILN_DIGEST_STR(blob));
	if (r == 0) {
		kiln_hasher_final(k.diff, &out->diff_id);
		out->size = k.csize;
		/* The uncompressed bytes must be the ones the config names:
		 * checked before the blob is named (sink_release drops it). */
		if (!kiln_digest_eq(&out->diff_id, diff_id))
			r = diff_id_mismatch(blob, &out->diff_id, diff_id, err);
		else
			r = kiln_store_writer_commit(TAKE_PTR(k.w), NULL, &out->digest, err);
	}
	close(fd);
	sink_release(&k);
	out->media_type = kiln_image_layer_media_type(o->compression);
	out->cached = false;
	return r;
}

int kiln_image_layer_convert(struct kiln_store *s, struct kiln_cache *cache,
			     const struct kiln_digest *blob, const char *media_type,
			     const struct kiln_digest *diff_id,
			     const struct kiln_image_opts *o,
			     struct kiln_image_layer_info *out, struct kiln_error **err)
{
	enum kiln_compression from;
	_cleanup_free_ char *key = NULL;
	uint64_t t0 = kiln_now_mono_ns();
	int r;

	memset(out, 0, sizeof(*out));
	if (!kiln_image_media_compression(media_type, &from))
		return kiln_error_set(err, -EINVAL, "layer %s: cannot convert a %s layer",
				      KILN_DIGEST_STR(blob), media_type);
	if (cache) {
		struct kiln_digest k;
		_cleanup_free_ char *text = xasprintf("kiln-layer-convert-v1\n%s\n%s\n%d\n",
						      KILN_DIGEST_STR(blob),
						      compression_name(o->compression),
						      effective_level(o));

		kiln_digest_buf(text, strlen(text), &k);
		key = xstrdup(KILN_DIGEST_STR(&k));
		if (layer_lookup(s, cache, key, o, out) == 0)
			return kiln_digest_eq(&out->diff_id, diff_id)
				       ? 0 : diff_id_mismatch(blob, &out->diff_id, diff_id, err);
	}
	r = convert_build(s, blob, from, diff_id, o, out, err);
	/* Its output is no tree: the empty one, which gc and fsck know; the
	 * converted blob lives through the meta's "blobs". */
	if (r == 0 && cache) {
		struct kiln_digest empty;

		kiln_tree_empty_digest(&empty);
		layer_record(cache, key, &empty, out, (kiln_now_mono_ns() - t0) / 1000000u);
	}
	return r;
}

int kiln_image_layer(struct kiln_store *s, struct kiln_cache *cache,
		     const struct kiln_digest *parent,
		     const struct kiln_digest *child,
		     const struct kiln_image_opts *opts,
		     struct kiln_image_layer_info *out,
		     struct kiln_error **err)
{
	static const struct kiln_image_opts defaults;
	_cleanup_free_ char *key = NULL;
	uint64_t t0 = kiln_now_mono_ns();
	int r;

	if (!opts)
		opts = &defaults;
	memset(out, 0, sizeof(*out));
	if (cache) {
		key = layer_key(parent, child, opts);
		if (layer_lookup(s, cache, key, opts, out) == 0)
			return 0;
	}
	r = layer_build(s, parent, child, opts, out, err);
	if (r == 0 && cache)
		layer_record(cache, key, child, out,
			     (kiln_now_mono_ns() - t0) / 1000000u);
	return r;
}
