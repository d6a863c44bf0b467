#include "agent/images.h"

#include "agent/agent-internal.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/log.h"
#include "export/image.h"
#include "peer/peer.h"
#include "proto/http-client.h"
#include "proto/http-server.h"
#include "worker/worker.h"


struct kiln_images {
	struct kiln_store *store;
	const char *token;
	const struct kiln_registry_options *ro;
	struct kiln_cache *layers;
	struct kiln_http_client *client;
};

/* One request, parsed; strings borrowed from its JSON. */
struct image_req {
	struct kiln_peer_source *sources;
	size_t n_sources;
	const char *platform;
	bool has_base;
	struct kiln_digest base_tree;
	const char *base_meta;
	struct kiln_digest *trees;
	size_t n_trees;
	const json_t *config;
	struct kiln_image_opts opts;
	struct kiln_registry_ref push[KILN_IMAGES_MAX_PUSH];
	const char *mount_from[KILN_IMAGES_MAX_PUSH];
	size_t n_push;
	const json_t *credentials;
};

static void req_release(struct image_req *q)
{
	size_t i;

	free(q->sources);
	free(q->trees);
	for (i = 0; i < q->n_push; i++)
		kiln_registry_ref_release(&q->push[i]);
}

/* "compression", "compression-level", "force-compression", "epoch": -o's words. */
static int parse_opts(const json_t *j, struct image_req *q, struct kiln_error **err)
{
	static const char *const keys[] = { "compression", "compression-level", "force-compression" };
	const char *epoch = json_string_value(json_object_get(j, "epoch"));
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < ARRAY_SIZE(keys); i++) {
		const char *v = json_string_value(json_object_get(j, keys[i]));

		if (v)
			r = kiln_image_opts_set(&q->opts, keys[i], v, err);
	}
	if (r == 0 && epoch)
		r = kiln_image_opts_epoch(&q->opts, epoch, err);
	return r;
}

static int parse_push(const json_t *j, struct image_req *q, struct kiln_error **err)
{
	json_t *a, *v;
	size_t i;
	int r = kiln_json_member(j, "push", JSON_ARRAY, false, &a, err);

	if (r < 0 || !a)
		return r;
	if (json_array_size(a) > KILN_IMAGES_MAX_PUSH)
		return kiln_error_set(err, -EINVAL, "\"push\": more than %u", KILN_IMAGES_MAX_PUSH);
	json_array_foreach(a, i, v) {
		const char *ref = json_string_value(json_object_get(v, "ref"));
		const char *from = json_string_value(json_object_get(v, "mount_from"));

		if (!ref || kiln_registry_ref_parse(ref, &q->push[i], err) < 0)
			return kiln_error_set(err, -EINVAL, "\"push\"[%zu].ref: not an image reference", i);
		q->n_push++;
		/* By digest: kilnd puts the tags once every platform is there. */
		free(q->push[i].tag);
		q->push[i].tag = NULL;
		q->push[i].digest.algo = KILN_DIGEST_NONE;
		if (from && (!*from || !kiln_jobs_printable(from, 255)))
			return kiln_error_set(err, -EINVAL, "\"push\"[%zu].mount_from: not a repository", i);
		q->mount_from[i] = from;
	}
	return 0;
}

static int parse_req(const json_t *j, struct kiln_images *im, struct image_req *q,
		     struct kiln_error **err)
{
	json_t *base, *v;
	int r;

	r = kiln_jobs_parse_sources(j, im->token, &q->sources, &q->n_sources, err);
	if (r == 0)
		r = kiln_json_member(j, "platform", JSON_STRING, true, &v, err);
	if (r == 0) {
		q->platform = json_string_value(v);
		if (!kiln_jobs_printable(q->platform, 64))
			r = kiln_error_set(err, -EINVAL, "\"platform\": not os/arch[/variant]");
	}
	if (r == 0)
		r = kiln_json_member(j, "base", JSON_OBJECT, false, &base, err);
	if (r == 0 && base) {
		q->has_base = true;
		q->base_meta = json_string_value(json_object_get(base, "meta"));
		r = kiln_jobs_parse_digest(json_object_get(base, "tree"), "base.tree", &q->base_tree,
					   err);
		if (r == 0 && !q->base_meta)
			r = kiln_error_set(err, -EINVAL, "\"base\".meta: not a string");
	}
	if (r == 0)
		r = kiln_jobs_parse_digests(j, "trees", KILN_IMAGES_MAX_TREES, &q->trees, &q->n_trees,
					    err);
	if (r == 0) {
		q->config = json_object_get(j, "config");
		if (q->config && !json_is_object(q->config) && !json_is_null(q->config))
			r = kiln_error_set(err, -EINVAL, "\"config\": not an object");
		if (json_is_null(q->config))
			q->config = NULL;
	}
	if (r == 0)
		r = parse_opts(j, q, err);
	if (r == 0)
		r = parse_push(j, q, err);
	if (r == 0)
		r = kiln_jobs_parse_credentials(j, &q->credentials, err);
	return r;
}

/* The trees and the base image's blobs, here: pulled from the sources. */
static int pull(struct kiln_images *im, struct image_req *q, uint64_t *pulled,
		struct kiln_error **err)
{
	struct kiln_peer_pull_options po = { .http = im->client };
	struct kiln_peer_stats st = { 0 };
	size_t i;
	int r = 0;

	if (q->has_base)
		r = kiln_peer_pull_result(im->store, &q->base_tree, q->base_meta, q->sources,
					  q->n_sources, &po, err);
	for (i = 0; r == 0 && i < q->n_trees; i++) {
		r = kiln_peer_pull_tree(im->store, &q->trees[i], q->sources, q->n_sources, &po, &st,
					err);
		*pulled += st.bytes;
	}
	return r;
}

/*
 * A registry client for this request: the worker's own settings and
 * credentials, then the client's for the registries it pushes to (they
 * win); credentials for any other host are not taken.
 */
static int request_registry(struct kiln_images *im, struct image_req *q,
			    struct kiln_registry **out, struct kiln_error **err)
{
	const char *hosts[KILN_IMAGES_MAX_PUSH];
	size_t i;

	for (i = 0; i < q->n_push; i++)
		hosts[i] = q->push[i].registry;
	return kiln_registry_new_with(im->ro, q->credentials, hosts, q->n_push, out, err);
}

static json_t *push_json(const struct kiln_registry_ref *dest,
			 const struct kiln_registry_push_stats *st)
{
	_cleanup_free_ char *where = kiln_registry_ref_format(dest);

	return json_pack("{s:s, s:i, s:i, s:i, s:I, s:I}", "ref", where, "blobs_uploaded",
			 (int)st->blobs_uploaded, "blobs_mounted", (int)st->blobs_mounted,
			 "blobs_skipped", (int)st->blobs_skipped, "bytes_uploaded",
			 (json_int_t)st->bytes_uploaded, "bytes_mounted",
			 (json_int_t)st->bytes_mounted);
}

/* *pulling: the failure was a tree or blob no source could give (409). */
static int make_image(struct kiln_images *im, struct image_req *q, json_t **answer,
		      bool *pulling, struct kiln_error **err)
{
	struct kiln_image_spec spec = {
		.platform = q->platform,
		.base_meta = q->has_base ? q->base_meta : NULL,
		.base_rootfs = q->has_base ? &q->base_tree : NULL,
		.trees = q->trees,
		.n_trees = q->n_trees,
		.config = q->config,
	};
	struct kiln_registry *reg = NULL;
	struct kiln_digest manifest;
	_cleanup_free_ char *data = NULL;
	json_t *pushed = json_array();
	uint64_t pulled = 0;
	size_t len = 0, i;
	int r;

	r = pull(im, q, &pulled, err);
	*pulling = r < 0;
	if (r < 0)
		kiln_error_prefix(err, "image for %s: the result trees", q->platform);
	if (r == 0)
		r = kiln_image_assemble(im->store, im->layers, &spec, &q->opts, &manifest, err);
	if (r == 0)
		r = kiln_store_read(im->store, &manifest, KILN_IMAGE_JSON_MAX, &data, &len, err);
	if (r == 0 && q->n_push)
		r = request_registry(im, q, &reg, err);
	for (i = 0; r == 0 && i < q->n_push; i++) {
		struct kiln_registry_push_stats st = { 0 };
		struct kiln_registry_push_opts po = { .mount_from = q->mount_from[i] };

		r = kiln_registry_push(reg, im->store, &q->push[i], &manifest, &po, &st, err);
		if (r == 0)
			json_array_append_new(pushed, push_json(&q->push[i], &st));
	}
	kiln_registry_free(reg);
	if (r < 0) {
		json_decref(pushed);
		return r;
	}
	*answer = json_pack("{s:s, s:s%, s:o, s:I}", "manifest", KILN_DIGEST_STR(&manifest), "data",
			    data, len, "pushed", pushed, "pulled", (json_int_t)pulled);
	return 0;
}

static int handle_image(const struct kiln_http_server_req *req, struct kiln_http_server_resp *resp,
			void *ud)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_images *im = ud;
	struct image_req q = { 0 };
	json_t *answer = NULL;
	bool pulling = false;
	int r;

	if (parse_req(req->json, im, &q, &err) < 0) {
		kiln_http_resp_error(resp, 400, "POST /v1/images: %s", kiln_error_msg(err));
		req_release(&q);
		return 0;
	}
	r = make_image(im, &q, &answer, &pulling, &err);
	if (r == 0) {
		kiln_http_resp_json(resp, 200, answer);
	} else {
		log_warn("kiln-worker: image for %s: %s", q.platform, kiln_error_msg(err));
		/* 409: a tree is held by no source (kilnd may place it again). */
		kiln_http_resp_error(resp, pulling && (r == -ENOENT || r == -EPROTO) ? 409 : 502,
				     "%s", kiln_error_msg(err));
	}
	req_release(&q);
	return 0;
}

int kiln_images_new(const struct kiln_images_options *opts, struct kiln_images **out,
		    struct kiln_error **err)
{
	struct kiln_images *im = xcalloc(1, sizeof(*im));
	struct kiln_http_route route = {
		.method = "POST", .path = "/v1/images", .fn = handle_image, .ud = im,
		.body_limit = KILN_IMAGES_BODY_LIMIT, .json = true, .token = opts->token,
	};
	int r;

	im->store = kiln_worker_store(opts->worker);
	im->token = opts->token;
	im->ro = opts->registry;
	im->layers = opts->layers;
	im->client = kiln_http_client_new(&(struct kiln_http_client_options){ .tls = opts->tls });
	r = kiln_http_server_route(opts->http, &route);
	if (r < 0) {
		kiln_images_free(im);
		return kiln_error_set(err, r, "cannot add the route POST /v1/images");
	}
	*out = im;
	return 0;
}

void kiln_images_free(struct kiln_images *im)
{
	if (!im)
		return;
	kiln_http_client_free(im->client);
	free(im);
}
