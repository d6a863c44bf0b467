#include "kilnd/images.h"

#include <pthread.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/log.h"
#include "basic/strv.h"
#include "export/image.h"
#include "kilnd/worker-table.h"

/* ---- the request, checked at submission ---- */

static int check_op(const json_t *v, const struct kiln_definition *def, const char *what,
		    size_t i, struct kiln_error **err)
{
	json_int_t n = json_integer_value(v);

	if (!json_is_integer(v) || n < 0 || (size_t)n >= def->n_ops)
		return kiln_error_set(err, -EINVAL, "\"image\".platforms[%zu].%s: not an op of the graph",
				      i, what);
	return 0;
}

static int check_platforms(const json_t *a, const struct kiln_definition *def,
			   struct kiln_error **err)
{
	const json_t *p, *v;
	size_t i, k;
	int r = 0;

	if (!json_is_array(a) || !json_array_size(a) ||
	    json_array_size(a) > KILN_CLUSTER_IMAGE_MAX_PLATFORMS)
		return kiln_error_set(err, -EINVAL, "\"image\".platforms: expected 1 to %u platforms",
				      KILN_CLUSTER_IMAGE_MAX_PLATFORMS);
	json_array_foreach(a, i, p) {
		const json_t *base = json_object_get(p, "base_op"), *cfg = json_object_get(p, "config");
		const json_t *layers = json_object_get(p, "layer_ops");

		if (!json_is_string(json_object_get(p, "platform")))
			return kiln_error_set(err, -EINVAL, "\"image\".platforms[%zu].platform: not a string", i);
		if (base && !json_is_null(base))
			r = check_op(base, def, "base_op", i, err);
		if (r == 0 && cfg && !json_is_null(cfg) && !json_is_object(cfg))
			r = kiln_error_set(err, -EINVAL, "\"image\".platforms[%zu].config: not an object", i);
		if (r == 0 && (!json_is_array(layers) || json_array_size(layers) > def->n_ops))
			r = kiln_error_set(err, -EINVAL, "\"image\".platforms[%zu].layer_ops: not a list of ops", i);
		json_array_foreach(layers, k, v) {
			if (r == 0)
				r = check_op(v, def, "layer_ops[]", i, err);
		}
		if (r < 0)
			return r;
	}
	return 0;
}

static int check_options(const json_t *o, struct kiln_error **err)
{
	struct kiln_image_opts opts = { 0 };
	const char *k;
	json_t *v;
	int r = 0;

	if (o && !json_is_object(o))
		return kiln_error_set(err, -EINVAL, "\"image\".options: not an object");
	json_object_foreach((json_t *)o, k, v) {
		if (!json_is_string(v))
			r = kiln_error_set(err, -EINVAL, "\"image\".options.%s: not a string", k);
		else if (!strcmp(k, "epoch"))
			r = kiln_image_opts_epoch(&opts, json_string_value(v), err);
		else
			r = kiln_image_opts_set(&opts, k, json_string_value(v), err);
		if (r < 0)
			return r == -ENOENT ? kiln_error_set(err, -EINVAL, "\"image\".options.%s: unknown", k) : r;
	}
	return 0;
}

/* The pushes: references, and mount_from when given. */
static int check_push(const json_t *a, struct kiln_error **err)
{
	const json_t *p;
	size_t i;

	if (a && (!json_is_array(a) || json_array_size(a) > KILN_CLUSTER_IMAGE_MAX_PUSH))
		return kiln_error_set(err, -EINVAL, "\"image\".push: expected at most %u pushes",
				      KILN_CLUSTER_IMAGE_MAX_PUSH);
	json_array_foreach(a, i, p) {
		const char *ref = json_string_value(json_object_get(p, "ref"));
		const json_t *from = json_object_get(p, "mount_from");
		struct kiln_registry_ref dest = { 0 };
		int r = ref ? kiln_registry_ref_parse(ref, &dest, err)
			    : kiln_error_set(err, -EINVAL, "no \"ref\"");

		if (r == 0 && from && !json_is_null(from) && !json_is_string(from))
			r = kiln_error_set(err, -EINVAL, "\"mount_from\": not a string");
		kiln_registry_ref_release(&dest);
		if (r < 0) {
			kiln_error_prefix(err, "\"image\".push[%zu]", i);
			return r;
		}
	}
	return 0;
}

int kiln_cluster_image_check(const json_t *image, const struct kiln_definition *def,
			     json_t **out, struct kiln_error **err)
{
	int r = 0;

	*out = NULL;
	if (!json_is_object(image))
		r = kiln_error_set(err, -EINVAL, "\"image\": not an object");
	if (r == 0)
		r = check_platforms(json_object_get(image, "platforms"), def, err);
	if (r == 0)
		r = check_options(json_object_get(image, "options"), err);
	if (r == 0)
		r = check_push(json_object_get(image, "push"), err);
	if (r == 0) {
		*out = json_deep_copy(image);
		/* Credentials come beside "image", never in it: none kept here. */
		kiln_registry_credentials_zero(json_object_get(*out, "credentials"));
		json_object_del(*out, "credentials");
	}
	return r;
}

void kiln_cluster_image_hosts(const json_t *image, json_t *hosts)
{
	const json_t *p;
	size_t i;

	json_array_foreach(json_object_get(image, "push"), i, p) {
		_cleanup_free_ char *host = kiln_registry_ref_host(json_string_value(json_object_get(p, "ref")));

		if (host)
			json_object_set_new(hosts, host, json_true());
	}
}

/* ---- making it ---- */

/* The result of op n: the graph's output or one of its "outputs". */
static const struct kiln_solve_output *output_of(const struct kiln_definition *def,
						 const struct kiln_solve_result *res, size_t n,
						 struct kiln_solve_output *main)
{
	size_t k;

	if (n == def->output.op) {
		*main = (struct kiln_solve_output){ .op = n, .tree = res->tree, .meta = res->meta };
		return main;
	}
	for (k = 0; k < res->n_outputs; k++)
		if (res->outputs[k].op == n)
			return &res->outputs[k];
	return NULL;
}

struct platform_job {
	struct kiln_sched_build *sb;
	const char *platform;
	json_t *body;
	struct kiln_digest *trees;
	size_t n_trees;
	pthread_t thread;
	bool threaded; /* on a thread of its own (else it ran inline) */
	int r;
	json_t *answer;
	struct kiln_worker_ref where;
	struct kiln_error *err;
};

static void *platform_main(void *ud)
{
	struct platform_job *pj = ud;

	pj->r = kiln_sched_image(pj->sb, pj->platform, pj->trees, pj->n_trees, pj->body,
				 &pj->answer, &pj->where, &pj->err);
	if (pj->r < 0)
		kiln_error_prefix(&pj->err, "the image for %s", pj->platform);
	return NULL;
}

/* The worker's request for platform i (docs/api.md "Images"). */
static int platform_body(const struct kiln_definition *def, const json_t *image,
			 const json_t *creds, const struct kiln_solve_result *res, size_t i,
			 struct platform_job *pj, struct kiln_error **err)
{
	const json_t *p = json_array_get(json_object_get(image, "platforms"), i);
	const json_t *base = json_object_get(p, "base_op"), *layers = json_object_get(p, "layer_ops");
	const json_t *cfg = json_object_get(p, "config");
	json_t *v;
	const struct kiln_solve_output *o;
	struct kiln_solve_output main;
	json_t *trees = json_array(), *push = json_array(), *e;
	const char *k;
	size_t n;

	pj->platform = json_string_value(json_object_get(p, "platform"));
	pj->body = json_pack("{s:s, s:o}", "platform", pj->platform, "trees", trees);
	if (creds)
		json_object_set(pj->body, "credentials", (json_t *)creds);
	pj->trees = xcalloc(json_array_size(layers) + 2, sizeof(*pj->trees));
	if (base && !json_is_null(base)) {
		o = output_of(def, res, (size_t)json_integer_value(base), &main);
		if (!o)
			return kiln_error_set(err, -EINVAL, "the base of %s is not an output of the graph",
					      pj->platform);
		json_object_set_new(pj->body, "base", json_pack("{s:s, s:s?}", "tree",
								KILN_DIGEST_STR(&o->tree), "meta",
								o->meta));
		pj->trees[pj->n_trees++] = o->tree;
	}
	json_array_foreach(layers, n, v) {
		o = output_of(def, res, (size_t)json_integer_value(v), &main);
		if (!o)
			return kiln_error_set(err, -EINVAL, "layer %zu of %s is not an output of the graph",
					      n, pj->platform);
		json_array_append_new(trees, json_string(KILN_DIGEST_STR(&o->tree)));
		pj->trees[pj->n_trees++] = o->tree;
	}
	if (cfg && json_is_object(cfg))
		json_object_set(pj->body, "config", (json_t *)cfg);
	json_object_foreach(json_object_get(image, "options"), k, v)
		json_object_set(pj->body, k, v);
	json_array_foreach(json_object_get(image, "push"), n, e)
		json_array_append(push, e);
	json_object_set_new(pj->body, "push", push);
	return 0;
}

/* The manifest a worker made, into kilnd's store (it checks the digest). */
static int take_manifest(struct kiln_store *store, struct platform_job *pj, struct kiln_digest *m,
			 struct kiln_error **err)
{
	const char *data = json_string_value(json_object_get(pj->answer, "data"));
	struct kiln_digest claimed;
	int r;

	if (!data || kiln_digest_parse(json_string_value(json_object_get(pj->answer, "manifest")) ?: "",
					&claimed) < 0)
		return kiln_error_set(err, -EPROTO, "worker %s: the image for %s: a malformed answer",
				      pj->where.name, pj->platform);
	r = kiln_store_put_buf(store, data, json_string_length(json_object_get(pj->answer, "data")),
			       m, err);
	if (r == 0 && !kiln_digest_eq(m, &claimed))
		r = kiln_error_set(err, -EPROTO, "worker %s: the manifest for %s is not %s",
				   pj->where.name, pj->platform, KILN_DIGEST_STR(&claimed));
	return r;
}

/* What the workers pushed for push number which, summed over the platforms. */
static json_t *pushed_json(struct platform_job *pjs, size_t n, size_t which, const char *ref,
			   const struct kiln_digest *top)
{
	static const char *const keys[] = { "blobs_uploaded", "blobs_mounted", "blobs_skipped",
					    "bytes_uploaded", "bytes_mounted" };
	json_int_t sum[ARRAY_SIZE(keys)] = { 0 };
	size_t i, j;
	json_t *o;

	for (i = 0; i < n; i++) {
		const json_t *e = json_array_get(json_object_get(pjs[i].answer, "pushed"), which);

		for (j = 0; j < ARRAY_SIZE(keys); j++)
			sum[j] += json_integer_value(json_object_get(e, keys[j]));
	}
	/* One manifest per platform, and the index over several. */
	o = json_pack("{s:s, s:s, s:i}", "ref", ref, "digest", KILN_DIGEST_STR(top), "manifests",
		      (int)(n + (n > 1)));
	for (j = 0; j < ARRAY_SIZE(keys); j++)
		json_object_set_new(o, keys[j], json_integer(sum[j]));
	return o;
}

/* kilnd's part of the push: the manifests again (cheap) and the tag. */
static int push_top(const struct kiln_registry_options *ro, const json_t *image,
		    const json_t *creds, struct kiln_store *store, const struct kiln_digest *top,
		    struct platform_job *pjs, size_t n, json_t *pushed, struct kiln_error **err)
{
	struct kiln_registry *reg = NULL;
	const json_t *p;
	size_t i;
	/* creds are the push registries' already (kiln_cluster_image's caller). */
	int r = kiln_registry_new_with(ro, creds, NULL, 0, &reg, err);

	if (r < 0)
		return r;
	json_array_foreach(json_object_get(image, "push"), i, p) {
		struct kiln_registry_push_stats st = { 0 };
		struct kiln_registry_ref dest = { 0 };
		_cleanup_free_ char *where = NULL;

		if (r < 0)
			break;
		r = kiln_registry_ref_parse(json_string_value(json_object_get(p, "ref")), &dest, err);
		if (r == 0)
			r = kiln_registry_push(reg, store, &dest, top,
					       &(struct kiln_registry_push_opts){ .blobs_pushed = true },
					       &st, err);
		if (r == 0) {
			where = kiln_registry_ref_format(&dest);
			json_array_append_new(pushed, pushed_json(pjs, n, i, where, top));
		}
		kiln_registry_ref_release(&dest);
	}
	kiln_registry_free(reg);
	return r;
}

int kiln_cluster_image(struct kiln_sched_build *sb, struct kiln_store *store,
		       const struct kiln_registry_options *ro, const struct kiln_definition *def,
		       const json_t *image, const json_t *creds, const struct kiln_solve_result *res,
		       json_t **state, char ***urls, size_t *n_urls, struct kiln_error **err)
{
	const json_t *plats = json_object_get(image, "platforms");
	size_t n = json_array_size(plats), i, started = 0;
	struct platform_job *pjs = xcalloc(n + 1, sizeof(*pjs));
	struct kiln_digest *manifests = xcalloc(n + 1, sizeof(*manifests)), top;
	const char **names = xcalloc(n + 1, sizeof(*names));
	json_t *pushed = json_array();
	int r = 0;

	for (i = 0; r == 0 && i < n; i++) {
		pjs[i].sb = sb;
		r = platform_body(def, image, creds, res, i, &pjs[i], err);
	}
	/*
	 * Every platform at once: each on its own worker, natively. Without a
	 * thread to spare (a task limit), a platform runs on this one.
	 */
	for (i = 0; r == 0 && i < n; i++) {
		pjs[i].threaded = pthread_create(&pjs[i].thread, NULL, platform_main, &pjs[i]) == 0;
		if (!pjs[i].threaded)
			platform_main(&pjs[i]);
		started++;
	}
	for (i = 0; i < started; i++) {
		if (pjs[i].threaded)
			pthread_join(pjs[i].thread, NULL);
		if (r == 0 && pjs[i].r < 0) {
			r = pjs[i].r;
			*err = TAKE_PTR(pjs[i].err);
		}
	}
	for (i = 0; r == 0 && i < n; i++) {
		names[i] = pjs[i].platform;
		r = take_manifest(store, &pjs[i], &manifests[i], err);
		if (r == 0) {
			kiln_strv_add_unique(urls, n_urls, pjs[i].where.addr);
			log_info("kilnd: the image for %s made on %s (%s)", pjs[i].platform,
				 pjs[i].where.name, KILN_DIGEST_STR(&manifests[i]));
		}
	}
	if (r == 0 && n == 1)
		top = manifests[0];
	else if (r == 0)
		r = kiln_image_index(store, manifests, names, n, NULL, &top, err);
	if (r == 0)
		r = push_top(ro, image, creds, store, &top, pjs, n, pushed, err);
	if (r == 0)
		*state = json_pack("{s:s, s:O}", "digest", KILN_DIGEST_STR(&top), "pushed", pushed);
	json_decref(pushed);
	for (i = 0; i < n; i++) {
		json_decref(pjs[i].body);
		json_decref(pjs[i].answer);
		free(pjs[i].trees);
		kiln_error_free(pjs[i].err);
	}
	free(pjs);
	free(manifests);
	free(names);
	return r;
}
