/*
 * Pushing an image from the CAS: blobs first (HEAD, else cross-repository
 * mount, else POST + monolithic PUT), then child manifests by digest, then
 * the root index or manifest by tag. Every document is read back from the
 * store verified, so what is pushed is exactly what its digest names.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/strbuf.h"
#include "registry/registry.h"

#define MAX_DEPTH 4
#define PUT_TIMEOUT_MS 120000L

struct push {
	struct kiln_registry *r;
	struct kiln_store *s;
	const struct kiln_registry_ref *dest;
	const struct kiln_registry_push_opts *o;
	struct kiln_registry_push_stats *st;
	char *scope;
};

static const char *json_str(json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static void progress(struct push *p, const struct kiln_digest *d,
		     const char *what, uint64_t size)
{
	if (p->o->progress)
		p->o->progress(p->o->ud, d, what, size);
}

/* ---- documents from the store ---- */

struct doc {
	char *data;
	size_t len;
	json_t *json;
	const char *media_type; /* static or borrowed from json */
};

static void doc_release(struct doc *d)
{
	free(d->data);
	json_decref(d->json);
	memset(d, 0, sizeof(*d));
}

static const char *doc_type(json_t *j)
{
	const char *mt = json_str(j, "mediaType");

	if (mt)
		return mt;
	if (json_is_array(json_object_get(j, "manifests")))
		return KILN_MT_OCI_INDEX;
	return KILN_MT_OCI_MANIFEST;
}

static bool is_index(const char *mt)
{
	return !strcmp(mt, KILN_MT_OCI_INDEX) || !strcmp(mt, KILN_MT_DOCKER_LIST);
}

static int doc_load(struct push *p, const struct kiln_digest *d,
		    struct doc *out, struct kiln_error **err)
{
	int rc;

	memset(out, 0, sizeof(*out));
	rc = kiln_store_read(p->s, d, KILN_REGISTRY_MANIFEST_LIMIT, &out->data,
			     &out->len, err);
	if (rc < 0) {
		kiln_error_prefix(err, "pushing %s: manifest %s", p->dest->repository,
				  KILN_DIGEST_STR(d));
		return rc;
	}
	out->json = json_loadb(out->data, out->len, JSON_REJECT_DUPLICATES, NULL);
	if (!json_is_object(out->json)) {
		doc_release(out);
		return kiln_error_set(err, -EBADMSG, "pushing %s: manifest %s is not "
				      "a JSON object", p->dest->repository,
				      KILN_DIGEST_STR(d));
	}
	out->media_type = doc_type(out->json);
	return 0;
}

static int parse_desc(struct push *p, json_t *j, struct kiln_digest *d,
		      uint64_t *size, struct kiln_error **err)
{
	json_t *sz = json_object_get(j, "size");
	const char *ds = json_str(j, "digest");

	if (!ds || kiln_digest_parse(ds, d) < 0 || !json_is_integer(sz) ||
	    json_integer_value(sz) < 0)
		return kiln_error_set(err, -EBADMSG, "pushing %s: descriptor without "
				      "a sha256 digest and a size",
				      p->dest->repository);
	*size = (uint64_t)json_integer_value(sz);
	return 0;
}

/* ---- blobs ---- */

static void add_digest_param(struct kiln_strbuf *sb, const char *url,
			     const struct kiln_digest *d)
{
	char hex[KILN_DIGEST_HEXLEN];

	(void)kiln_strbuf_addf(sb, "%s%sdigest=sha256%%3A%s", url,
			       strchr(url, '?') ? "&" : "?", kiln_digest_hex(d, hex));
}

static int status_err(struct push *p, const char *what,
		      const struct kiln_http_result *resp, struct kiln_error **err)
{
	return kiln_registry_status_error(err,
					  kiln_registry_status_code(resp->status),
					  p->dest->registry, what, resp);
}

static char *blob_what(struct push *p, const char *verb,
		       const struct kiln_digest *d)
{
	return xasprintf("%s blob %s@%s", verb, p->dest->repository,
			 KILN_DIGEST_STR(d));
}

static int put_blob(struct push *p, const char *location,
		    const struct kiln_digest *d, uint64_t size,
		    struct kiln_error **err)
{
	_cleanup_strbuf_ struct kiln_strbuf url = KILN_STRBUF_INIT(16384);
	_cleanup_free_ char *what = blob_what(p, "uploading", d);
	const char *hdrs[] = { "Content-Type: application/octet-stream", NULL };
	_cleanup_close_ int fd = kiln_store_open_blob(p->s, d);
	struct kiln_http_result resp;
	struct kiln_http_call req = {
		.method = "PUT", .headers = hdrs, .body_from_fd = true,
		.body_fd = fd, .body_fd_size = size,
	};
	int rc;

	if (fd < 0)
		return kiln_error_seterrno(err, fd, "pushing %s: blob %s not in the "
					   "store", p->dest->repository,
					   KILN_DIGEST_STR(d));
	add_digest_param(&url, location, d);
	req.url = kiln_strbuf_str(&url);
	rc = kiln_registry_request(p->r, p->dest, p->scope, &req, &resp, err);
	if (rc == 0 && resp.status != 201)
		rc = status_err(p, what, &resp, err);
	else if (rc < 0)
		kiln_error_prefix(err, "%s", what);
	kiln_http_result_release(&resp);
	return rc;
}

/*
 * POST an upload (with a mount request when from is set). 201: mounted
 * (*location NULL). 202: upload at *location.
 */
static int start_upload(struct push *p, const struct kiln_digest *d,
			const char *from, char **location,
			struct kiln_error **err)
{
	_cleanup_free_ char *what = blob_what(p, "starting upload of", d);
	char hex[KILN_DIGEST_HEXLEN];
	_cleanup_free_ char *path = from
		? xasprintf("/v2/%s/blobs/uploads/?mount=sha256%%3A%s&from=%s",
			    p->dest->repository, kiln_digest_hex(d, hex), from)
		: xasprintf("/v2/%s/blobs/uploads/", p->dest->repository);
	struct kiln_http_result resp;
	struct kiln_http_call req = {
		.method = "POST", .url = path, .timeout_ms = PUT_TIMEOUT_MS,
	};
	int rc;

	*location = NULL;
	rc = kiln_registry_request(p->r, p->dest, p->scope, &req, &resp, err);
	if (rc < 0) {
		kiln_error_prefix(err, "%s", what);
		return rc;
	}
	if (resp.status == 202 && resp.location && *resp.location)
		*location = TAKE_PTR(resp.location);
	else if (!(from && resp.status == 201))
		rc = status_err(p, what, &resp, err);
	kiln_http_result_release(&resp);
	return rc;
}

static const char *mount_source(struct push *p)
{
	const char *from = p->o->mount_from;

	return from && *from && strcmp(from, p->dest->repository) ? from : NULL;
}

static int push_blob(struct push *p, const struct kiln_digest *d,
		     uint64_t size, struct kiln_error **err)
{
	_cleanup_free_ char *location = NULL;
	bool here = kiln_store_has(p->s, d);
	int rc;

	if (!here && !p->o->blobs_pushed)
		return kiln_error_set(err, -ENOENT, "pushing %s: blob %s is not in "
				      "the store", p->dest->repository,
				      KILN_DIGEST_STR(d));
	rc = kiln_registry_head_blob(p->r, p->dest, p->scope, d, NULL, err);
	if (rc < 0)
		return rc;
	if (rc == 0 && !here)
		return kiln_error_set(err, -ENOENT, "pushing %s: blob %s is not in "
				      "the registry, where it was pushed before",
				      p->dest->repository, KILN_DIGEST_STR(d));
	if (rc == 1) {
		p->st->blobs_skipped++;
		p->st->bytes_skipped += size;
		progress(p, d, "exists", size);
		return 0;
	}
	rc = start_upload(p, d, mount_source(p), &location, err);
	if (rc == 0 && !location) {
		p->st->blobs_mounted++;
		p->st->bytes_mounted += size;
		progress(p, d, "mounted", size);
		return 0;
	}
	if (rc == 0)
		rc = put_blob(p, location, d, size, err);
	if (rc == 0) {
		p->st->blobs_uploaded++;
		p->st->bytes_uploaded += size;
		progress(p, d, "uploaded", size);
	}
	return rc;
}

/* ---- manifests ---- */

int kiln_registry_put_manifest(struct kiln_registry *r,
			       const struct kiln_registry_ref *ref,
			       const char *reference, const char *media_type,
			       const void *data, size_t len,
			       struct kiln_error **err)
{
	_cleanup_free_ char *scope = xasprintf("repository:%s:pull,push",
					       ref->repository);
	_cleanup_free_ char *path = xasprintf("/v2/%s/manifests/%s",
					      ref->repository, reference);
	_cleanup_free_ char *ct = xasprintf("Content-Type: %s", media_type);
	_cleanup_free_ char *what = xasprintf("putting manifest %s%s%s",
					      ref->repository,
					      strncmp(reference, "sha256:", 7) ? ":" : "@",
					      reference);
	const char *hdrs[] = { ct, NULL };
	struct kiln_http_result resp;
	struct kiln_http_call req = {
		.method = "PUT", .url = path, .headers = hdrs, .body = data,
		.body_len = len, .timeout_ms = PUT_TIMEOUT_MS,
	};
	int rc;

	rc = kiln_registry_request(r, ref, scope, &req, &resp, err);
	if (rc < 0) {
		kiln_error_prefix(err, "%s", what);
		return rc;
	}
	if (resp.status != 201)
		rc = kiln_registry_status_error(err,
						kiln_registry_status_code(resp.status),
						ref->registry, what, &resp);
	kiln_http_result_release(&resp);
	return rc;
}

static int push_image_blobs(struct push *p, json_t *m, struct kiln_error **err)
{
	json_t *layers = json_object_get(m, "layers"), *l;
	struct kiln_digest d;
	uint64_t size;
	size_t i;
	int rc;

	rc = parse_desc(p, json_object_get(m, "config"), &d, &size, err);
	if (rc == 0)
		rc = push_blob(p, &d, size, err);
	if (rc < 0)
		return rc;
	if (!json_is_array(layers))
		return kiln_error_set(err, -EBADMSG, "pushing %s: manifest without "
				      "layers", p->dest->repository);
	json_array_foreach(layers, i, l) {
		rc = parse_desc(p, l, &d, &size, err);
		if (rc == 0)
			rc = push_blob(p, &d, size, err);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int put_doc(struct push *p, const struct doc *doc, const char *reference,
		   const struct kiln_digest *d, struct kiln_error **err)
{
	int rc = kiln_registry_put_manifest(p->r, p->dest, reference,
					    doc->media_type, doc->data, doc->len,
					    err);

	if (rc == 0) {
		p->st->manifests++;
		progress(p, d, "manifest", doc->len);
	}
	return rc;
}

static int push_doc(struct push *p, const struct kiln_digest *d,
		    const char *reference, int depth, struct kiln_error **err);

static int push_children(struct push *p, json_t *index, int depth,
			 struct kiln_error **err)
{
	json_t *manifests = json_object_get(index, "manifests"), *c;
	struct kiln_digest d;
	uint64_t size;
	size_t i;
	int rc;

	json_array_foreach(manifests, i, c) {
		rc = parse_desc(p, c, &d, &size, err);
		if (rc == 0)
			rc = push_doc(p, &d, NULL, depth + 1, err);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Push one manifest or index (and what it references) under reference. */
static int push_doc(struct push *p, const struct kiln_digest *d,
		    const char *reference, int depth, struct kiln_error **err)
{
	char dbuf[KILN_DIGEST_STRLEN];
	struct doc doc;
	int rc;

	if (depth > MAX_DEPTH)
		return kiln_error_set(err, -ELOOP, "pushing %s: indexes nested "
				      "deeper than %d", p->dest->repository,
				      MAX_DEPTH);
	rc = doc_load(p, d, &doc, err);
	if (rc < 0)
		return rc;
	if (is_index(doc.media_type))
		rc = push_children(p, doc.json, depth, err);
	else
		rc = push_image_blobs(p, doc.json, err);
	if (rc == 0)
		rc = put_doc(p, &doc, reference ? reference : kiln_digest_fmt(d, dbuf),
			     d, err);
	doc_release(&doc);
	return rc;
}

static char *push_scope(const struct kiln_registry_ref *dest, const char *from)
{
	if (from)
		return xasprintf("repository:%s:pull,push repository:%s:pull",
				 dest->repository, from);
	return xasprintf("repository:%s:pull,push", dest->repository);
}

int kiln_registry_push(struct kiln_registry *r, struct kiln_store *s,
		       const struct kiln_registry_ref *dest,
		       const struct kiln_digest *root,
		       const struct kiln_registry_push_opts *opts,
		       struct kiln_registry_push_stats *stats,
		       struct kiln_error **err)
{
	const struct kiln_registry_push_opts none = { 0 };
	struct kiln_registry_push_stats local = { 0 };
	struct push p = {
		.r = r, .s = s, .dest = dest, .o = opts ? opts : &none,
		.st = stats ? stats : &local,
	};
	int rc;

	memset(p.st, 0, sizeof(*p.st));
	if (kiln_digest_is_set(&dest->digest) && !kiln_digest_eq(&dest->digest, root))
		return kiln_error_set(err, -EINVAL, "pushing %s: the reference pins "
				      "%s but the image is %s", dest->repository,
				      KILN_DIGEST_STR(&dest->digest),
				      KILN_DIGEST_STR(root));
	p.scope = push_scope(dest, mount_source(&p));
	rc = push_doc(&p, root, dest->tag, 0, err);
	free(p.scope);
	return rc;
}
