/*
 * kiln build CONTEXT: parse the Dockerfile, lower it for every target
 * platform into one graph, solve it once, export per platform.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/parse-util.h"
#include "basic/platform.h"
#include "basic/strv.h"
#include "cas/tree.h"
#include "cli/build.h"
#include "cli/common.h"
#include "export/export.h"
#include "export/image.h"
#include "frontend/dockerfile/dockerfile.h"
#include "frontend/dockerfile/lower.h"
#include "solver/definition.h"
#include "solver/solve.h"
#include "source/image-config.h"
#include "source/image.h"
#include "source/local.h"
#include "registry/registry.h"

struct dfbuild {
	const struct build_args *a;
	struct kiln_engine eng;
	char *context, *dockerfile;
	char *df_text;          /* the Dockerfile as read, for error snippets */
	const char *df_name;    /* as errors name it: -f's value, or "Dockerfile" */
	char **platforms;
	size_t n_platforms;
	char **excludes;
	size_t n_excludes;
	struct kiln_dockerfile *df;
	char *graph;
	struct kiln_definition *def;
	struct kiln_df_image *images;
	size_t n_images;
	struct kiln_secret secrets[MAX_LIST];
	size_t n_secrets;
	struct kiln_cli_ssh ssh;
	struct kiln_export_spec specs[MAX_OUTPUTS + MAX_LIST];
	size_t n_specs;
	struct kiln_solve_result res;
	struct kiln_progress *progress;
	struct kiln_digest image;  /* the built image: index or manifest */
	bool have_image;
	struct kiln_image_opts image_opts; /* compression of that image */
	struct kiln_cli_cluster cluster;   /* with --addr: what kilnd makes, what comes here */
	struct kiln_registry *registry;
	struct kiln_image_tags *tags; /* each FROM tag looked up once */
	struct kiln_df_named_context named[MAX_LIST]; /* --build-context, owned strings */
	char **named_excludes[MAX_LIST]; /* a directory context's .dockerignore */
	size_t n_named;
};

/* DIR/.dockerignore, if any. */
static int load_ignore(const char *dir, char ***excludes, size_t *n_excludes,
		       struct kiln_error **err)
{
	_cleanup_free_ char *path = kiln_path_join(dir, ".dockerignore");
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = kiln_read_file_at(AT_FDCWD, path, 1u << 20, &text, &len);

	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot read %s", path);
	r = kiln_dockerignore_parse(text, len, excludes, n_excludes, err);
	if (r < 0)
		kiln_error_prefix(err, "%s", path);
	return r;
}

/*
 * --build-context values (build.c checked their form): a directory or an
 * oci-layout path is made absolute from the current directory, as buildx
 * does, so the graph names the same tree wherever it is solved.
 */
static int load_named_contexts(struct dfbuild *b, struct kiln_error **err)
{
	size_t i;

	for (i = 0; i < b->a->n_contexts; i++) {
		const char *v = b->a->contexts[i], *eq = strchr(v, '=');
		_cleanup_free_ char *raw = xstrndup(v, (size_t)(eq - v));
		struct kiln_df_named_context *nc = &b->named[b->n_named];
		const char *val = eq + 1;

		if (!strncmp(val, "docker-image://", 15)) {
			nc->image = xstrdup(val + 15);
		} else if (!strncmp(val, "oci-layout://", 13)) {
			const char *rest = val + 13, *colon = strrchr(rest, ':');
			_cleanup_free_ char *path = NULL, *abs = NULL;

			if (colon && strchr(colon, '/'))
				colon = NULL;
			path = colon ? xstrndup(rest, (size_t)(colon - rest)) : xstrdup(rest);
			abs = realpath(path, NULL);
			if (!abs)
				return kiln_error_seterrno(err, -errno, "--build-context %s: layout %s",
							   raw, path);
			nc->image = xasprintf("oci-layout://%s%s", abs, colon ? colon : "");
		} else {
			char *abs = realpath(val, NULL);
			int r;

			if (!abs)
				return kiln_error_seterrno(err, -errno, "--build-context %s: %s", raw, val);
			nc->dir = abs;
			/* dockerui reads a local named context's own .dockerignore. */
			r = load_ignore(abs, &b->named_excludes[b->n_named], &nc->n_excludes, err);
			if (r < 0) {
				free(abs);
				nc->dir = NULL;
				return r;
			}
			nc->excludes = (const char *const *)b->named_excludes[b->n_named];
		}
		nc->name = kiln_df_context_name(raw);
		b->n_named++;
	}
	return 0;
}

/* "linux/amd64,linux/arm64" -> normalized, deduplicated list. */
static int split_platforms(struct dfbuild *b, struct kiln_error **err)
{
	const char *list = b->a->platform ? b->a->platform
					  : kiln_worker_native_platform(b->eng.worker);
	_cleanup_free_ char *copy = xstrdup(list);
	char *save = NULL, *p;
	size_t i;

	for (p = strtok_r(copy, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
		char *n = kiln_platform_normalize(p);
		bool dup = false;

		if (!n) {
			kiln_platform_invalid(err, p);
			kiln_error_prefix(err, "--platform");
			return -EINVAL;
		}
		for (i = 0; i < b->n_platforms; i++)
			dup = dup || !strcmp(b->platforms[i], n);
		if (dup) {
			free(n);
			continue;
		}
		b->platforms = xrealloc(b->platforms, (b->n_platforms + 1) * sizeof(char *));
		b->platforms[b->n_platforms++] = n;
	}
	if (!b->n_platforms)
		return kiln_error_set(err, -EINVAL, "--platform: empty list");
	return 0;
}

/* --secret id=ID,src=PATH | id=ID,env=VAR (the file is read now). */
static int load_secret(struct dfbuild *b, const char *spec, struct kiln_error **err)
{
	_cleanup_free_ char *copy = xstrdup(spec);
	char *save = NULL, *kv, *id = NULL, *src = NULL, *env = NULL, *data = NULL;
	size_t len = 0;
	int r;

	for (kv = strtok_r(copy, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
		if (!strncmp(kv, "id=", 3))
			id = kv + 3;
		else if (!strncmp(kv, "src=", 4) || !strncmp(kv, "source=", 7))
			src = strchr(kv, '=') + 1;
		else if (!strncmp(kv, "env=", 4))
			env = kv + 4;
		else
			return kiln_error_set(err, -EINVAL, "--secret %s: unknown key in '%s' (id, src, env)",
					      spec, kv);
	}
	if (!id || !*id || (!src && !env))
		return kiln_error_set(err, -EINVAL, "--secret %s: needs id=ID and src=PATH or env=VAR", spec);
	if (src) {
		r = kiln_read_file_at(AT_FDCWD, src, 1u << 20, &data, &len);
		if (r < 0)
			return kiln_error_seterrno(err, r, "--secret %s: cannot read %s", spec, src);
	} else {
		const char *v = getenv(env);
		if (!v)
			return kiln_error_set(err, -ENOENT, "--secret %s: $%s is not set", spec, env);
		data = xstrdup(v);
		len = strlen(v);
	}
	b->secrets[b->n_secrets].id = xstrdup(id);
	b->secrets[b->n_secrets].data = data;
	b->secrets[b->n_secrets++].len = len;
	return 0;
}

static int load_dockerfile(struct dfbuild *b, struct kiln_error **err)
{
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r;

	b->context = realpath(b->a->context, NULL);
	if (!b->context)
		return kiln_error_seterrno(err, -errno, "build context %s", b->a->context);
	b->dockerfile = b->a->file ? xstrdup(b->a->file) : kiln_path_join(b->context, "Dockerfile");
	r = kiln_read_file_at(AT_FDCWD, b->dockerfile, KILN_DF_MAX_BYTES, &text, &len);
	if (r == -EFBIG)
		return kiln_error_set(err, r, "%s: larger than %u bytes", b->dockerfile,
				      KILN_DF_MAX_BYTES);
	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot read Dockerfile %s", b->dockerfile);
	r = load_ignore(b->context, &b->excludes, &b->n_excludes, err);
	if (r == 0)
		r = load_named_contexts(b, err);
	b->df_name = b->a->file ? b->a->file : "Dockerfile";
	if (r == 0)
		r = kiln_dockerfile_parse(text, len, b->df_name, &b->df, err);
	b->df_text = TAKE_PTR(text);
	return r;
}

/* Lowering's view of images: the pinned ref and the config. */
static int resolve_image(void *ud, const char *ref, const char *platform, char **pinned,
			 char **config_json, struct kiln_error **err)
{
	struct dfbuild *b = ud;
	const struct kiln_image_source src = { .registry = b->registry,
					       .store = kiln_worker_store(b->eng.worker),
					       .tags = b->tags };
	struct kiln_registry_ref rr = { 0 };
	struct kiln_digest manifest;
	int r;

	r = kiln_image_config(&src, ref, b->context, platform, &manifest, config_json, err);
	if (r < 0)
		return r;
	/* A registry image is pinned to the platform manifest it resolved to. */
	if (strncmp(ref, "oci-layout://", 13) == 0 || kiln_registry_ref_parse(ref, &rr, NULL) < 0) {
		*pinned = xstrdup(ref);
		return 0;
	}
	rr.digest = manifest;
	*pinned = kiln_registry_ref_format(&rr);
	kiln_registry_ref_release(&rr);
	return 0;
}

static int64_t source_date_epoch(void)
{
	const char *s = getenv("SOURCE_DATE_EPOCH");
	char *end;
	long long v;

	if (!s || !*s)
		return -1;
	v = strtoll(s, &end, 10);
	return *end || v < 0 ? -1 : v;
}

/* Lowering's warnings (an unused --build-arg) go to the progress output. */
static void lower_warn(void *ud, const char *msg)
{
	struct dfbuild *b = ud;

	kiln_progress_warning(b->progress, msg);
}

static int lower(struct dfbuild *b, struct kiln_error **err)
{
	struct kiln_df_build_opts o = {
		.context_dir = b->context,
		.dockerfile = b->dockerfile,
		.platforms = (const char *const *)b->platforms,
		.n_platforms = b->n_platforms,
		.build_platform = kiln_worker_native_platform(b->eng.worker),
		.target = b->a->target,
		.build_args = b->a->build_args,
		.n_build_args = b->a->n_build_args,
		.excludes = (const char *const *)b->excludes,
		.n_excludes = b->n_excludes,
		.source_date_epoch = source_date_epoch(),
		.named_contexts = b->named,
		.n_named_contexts = b->n_named,
		.resolve = resolve_image,
		.resolve_ud = b,
		.warn = lower_warn,
		.warn_ud = b,
	};
	_cleanup_free_ char *name = xasprintf("%s (lowered)", b->dockerfile);
	int r;

	r = kiln_dockerfile_lower(b->df, &o, &b->graph, &b->images, &b->n_images, err);
	if (r == 0)
		r = kiln_definition_parse(b->graph, strlen(b->graph), name, b->context,
					  b->platforms[0], &b->def, err);
	return r;
}

static ssize_t op_index(const struct kiln_definition *d, const char *id)
{
	size_t i;

	for (i = 0; i < d->n_ops; i++)
		if (!strcmp(d->ops[i].id, id))
			return (ssize_t)i;
	return -1;
}

/* The result tree of the op named id. */
static const struct kiln_digest *result_of(struct dfbuild *b, const char *id)
{
	ssize_t op = op_index(b->def, id);
	size_t k;

	if (op >= 0 && (size_t)op == b->def->output.op)
		return &b->res.tree;
	for (k = 0; k < b->res.n_outputs; k++)
		if (op >= 0 && b->res.outputs[k].op == (size_t)op)
			return &b->res.outputs[k].tree;
	return NULL;
}

/*
 * The tree to export with type=local/tar: the platform's root file
 * system, or with several platforms one directory per platform
 * ("linux_amd64"), as buildx does.
 */
static int export_tree(struct dfbuild *b, struct kiln_digest *out, struct kiln_error **err)
{
	struct kiln_store *s = kiln_worker_store(b->eng.worker);
	struct kiln_tree t = KILN_TREE_INIT;
	size_t i;
	int r;

	if (b->n_images == 1) {
		*out = *result_of(b, b->images[0].output);
		return 0;
	}
	for (i = 0; i < b->n_images; i++) {
		struct kiln_tree_entry e = { 0 };
		char *p;

		e.name = xstrdup(b->images[i].platform);
		for (p = e.name; *p; p++)
			if (*p == '/')
				*p = '_';
		e.type = KILN_ENTRY_DIR;
		e.mode = 0755;
		e.digest = *result_of(b, b->images[i].output);
		kiln_tree_set(&t, &e);
	}
	r = kiln_tree_put(s, &t, out, err);
	kiln_tree_release(&t);
	return r;
}

/* The record meta of the op named id (source.image: manifest, config). */
static const char *meta_of(struct dfbuild *b, const char *id)
{
	ssize_t op = op_index(b->def, id);
	size_t k;

	for (k = 0; k < b->res.n_outputs; k++)
		if (op >= 0 && b->res.outputs[k].op == (size_t)op)
			return b->res.outputs[k].meta;
	return NULL;
}

static int image_opts(struct dfbuild *b, const struct kiln_export_spec *spec,
		      struct kiln_image_opts *o, struct kiln_error **err)
{
	const char *epoch = getenv("SOURCE_DATE_EPOCH");
	int r = 0;

	memset(o, 0, sizeof(*o));
	if (spec && spec->compression)
		r = kiln_image_opts_set(o, "compression", spec->compression, err);
	if (r == 0 && spec && spec->compression_level)
		r = kiln_image_opts_set(o, "compression-level", spec->compression_level, err);
	if (r == 0 && spec && spec->force_compression)
		r = kiln_image_opts_set(o, "force-compression", spec->force_compression, err);
	if (r == 0 && epoch && *epoch)
		r = kiln_image_opts_epoch(o, epoch, err);
	return r;
}

/*
 * The repository of the final stage's base image when it lives on the
 * same registry as dest: blobs can be mounted from it instead of uploaded.
 */
static char *mount_source(struct dfbuild *b, const struct kiln_registry_ref *dest)
{
	ssize_t op = b->images[0].base_op ? op_index(b->def, b->images[0].base_op) : -1;
	struct kiln_registry_ref base = { 0 };
	char *repo = NULL;

	if (op < 0 || !b->def->ops[op].ref || kiln_registry_ref_parse(b->def->ops[op].ref, &base, NULL) < 0)
		return NULL;
	if (!strcmp(base.registry, dest->registry) && strcmp(base.repository, dest->repository))
		repo = xstrdup(base.repository);
	kiln_registry_ref_release(&base);
	return repo;
}

/* What the cluster's push to where did, from kilnd's result. */
static int cluster_pushed(struct dfbuild *b, const char *where,
			  struct kiln_registry_push_stats *st, struct kiln_error **err)
{
	json_t *p;
	size_t i;

	json_array_foreach(json_object_get(b->cluster.image_result, "pushed"), i, p) {
		if (strcmp(json_string_value(json_object_get(p, "ref")) ?: "", where))
			continue;
		st->blobs_uploaded = (unsigned)json_integer_value(json_object_get(p, "blobs_uploaded"));
		st->blobs_mounted = (unsigned)json_integer_value(json_object_get(p, "blobs_mounted"));
		st->blobs_skipped = (unsigned)json_integer_value(json_object_get(p, "blobs_skipped"));
		st->manifests = (unsigned)json_integer_value(json_object_get(p, "manifests"));
		st->bytes_uploaded = (uint64_t)json_integer_value(json_object_get(p, "bytes_uploaded"));
		st->bytes_mounted = (uint64_t)json_integer_value(json_object_get(p, "bytes_mounted"));
		return 0;
	}
	return kiln_error_set(err, -EPROTO, "kilnd did not push %s", where);
}

/* type=image: push=true sends it to the registry named by name=. */
static int push_image(struct dfbuild *b, const struct kiln_export_spec *spec,
		      struct kiln_error **err)
{
	struct kiln_registry_push_stats st = { 0 };
	struct kiln_registry_push_opts po = { 0 };
	struct kiln_registry_ref dest = { 0 };
	_cleanup_free_ char *from = NULL, *where = NULL;
	char up[32], mounted[32];
	int r;

	if (!spec->push || strcmp(spec->push, "true"))
		return kiln_error_set(err, -ENOTSUP,
				      "-o type=image,name=%s: without push=true there is no image store to keep it in (use type=oci or push=true)",
				      spec->name);
	r = kiln_registry_ref_parse(spec->name, &dest, err);
	if (r < 0)
		return r;
	where = kiln_registry_ref_format(&dest);
	if (b->cluster.image_result) {
		/* The cluster pushed it: its workers the layers, kilnd the rest. */
		r = cluster_pushed(b, where, &st, err);
	} else {
		from = mount_source(b, &dest);
		po.mount_from = from;
		r = kiln_registry_push(b->registry, kiln_worker_store(b->eng.worker), &dest,
				       &b->image, &po, &st, err);
	}
	if (r == 0 && b->a->progress != KILN_PROGRESS_QUIET && b->a->progress != KILN_PROGRESS_JSON)
		fprintf(stderr, "pushed %s@%s: %u blobs uploaded (%s), %u mounted (%s), %u already there, %u manifests\n",
			where, KILN_DIGEST_STR(&b->image), st.blobs_uploaded,
			kiln_format_size(st.bytes_uploaded, up, sizeof(up)), st.blobs_mounted,
			kiln_format_size(st.bytes_mounted, mounted, sizeof(mounted)), st.blobs_skipped,
			st.manifests);
	else if (r == 0 && b->a->progress == KILN_PROGRESS_JSON)
		fprintf(stderr, "{\"push\":{\"ref\":\"%s\",\"digest\":\"%s\",\"blobs_uploaded\":%u,\"blobs_mounted\":%u,\"blobs_skipped\":%u,\"bytes_uploaded\":%llu}}\n",
			where, KILN_DIGEST_STR(&b->image), st.blobs_uploaded, st.blobs_mounted,
			st.blobs_skipped, (unsigned long long)st.bytes_uploaded);
	kiln_registry_ref_release(&dest);
	return r;
}

/* Assemble one image per platform; several make an index. */
static int build_image(struct dfbuild *b, const struct kiln_image_opts *o,
		       struct kiln_digest *top, struct kiln_error **err)
{
	struct kiln_store *s = kiln_worker_store(b->eng.worker);
	struct kiln_digest *manifests = xcalloc(b->n_images, sizeof(*manifests));
	const char **plats = xcalloc(b->n_images, sizeof(*plats));
	size_t i, k;
	int r = 0;

	for (i = 0; r == 0 && i < b->n_images; i++) {
		const struct kiln_df_image *img = &b->images[i];
		struct kiln_digest *trees = xcalloc(img->n_layer_ops + 1, sizeof(*trees));
		struct kiln_image_spec spec = {
			.platform = img->platform,
			.base_meta = img->base_op ? meta_of(b, img->base_op) : NULL,
			.base_rootfs = img->base_op ? result_of(b, img->base_op) : NULL,
			.trees = trees,
			.n_trees = img->n_layer_ops,
			.config = img->config,
		};

		for (k = 0; k < img->n_layer_ops; k++)
			trees[k] = *result_of(b, img->layer_ops[k]);
		plats[i] = img->platform;
		r = kiln_image_assemble(s, b->eng.cache, &spec, o, &manifests[i], err);
		free(trees);
	}
	if (r == 0 && b->n_images == 1)
		*top = manifests[0];
	else if (r == 0)
		r = kiln_image_index(s, manifests, plats, b->n_images, NULL, top, err);
	free(manifests);
	free(plats);
	return r;
}

/* The image for spec, built once per compression setting. */
static int image_for(struct dfbuild *b, const struct kiln_export_spec *spec,
		     struct kiln_error **err)
{
	struct kiln_image_opts o;
	int r = image_opts(b, spec, &o, err);

	if (r < 0)
		return r;
	if (b->have_image && !memcmp(&o, &b->image_opts, sizeof(o)))
		return 0;
	r = build_image(b, &o, &b->image, err);
	if (r == 0) {
		b->have_image = true;
		b->image_opts = o;
	}
	return r;
}

static int export_one(struct dfbuild *b, const struct kiln_export_spec *spec,
		      struct kiln_error **err)
{
	struct kiln_store *s = kiln_worker_store(b->eng.worker);
	struct kiln_digest tree;
	int r;

	if (!strcmp(spec->type, "local") || !strcmp(spec->type, "tar")) {
		r = export_tree(b, &tree, err);
		return r < 0 ? r : kiln_export_run(s, &tree, spec, err);
	}
	r = image_for(b, spec, err);
	if (r < 0)
		return r;
	if (!strcmp(spec->type, "oci"))
		return kiln_export_oci_tar(s, &b->image, spec->dest,
					   spec->name ? spec->name : "latest", err);
	return push_image(b, spec, err);
}

static int run_exports(struct dfbuild *b, struct kiln_error **err)
{
	struct kiln_digest tree;
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < b->n_specs; i++)
		r = export_one(b, &b->specs[i], err);
	if (r == 0 && b->a->metadata_file) {
		r = export_tree(b, &tree, err);
		if (r == 0)
			r = kiln_build_write_metadata(b->a->metadata_file, KILN_DIGEST_STR(&tree),
						      b->res.run, b->res.cached,
						      b->have_image ? KILN_DIGEST_STR(&b->image) : NULL,
						      err);
	}
	return r;
}

/* -o specs, plus -t REF --push as type=image,name=REF,push=true. */
static int parse_specs(struct dfbuild *b, struct kiln_error **err)
{
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < b->a->n_outputs; i++)
		r = kiln_export_spec_parse(b->a->outputs[i], &b->specs[b->n_specs++], err);
	for (i = 0; r == 0 && b->a->push && i < b->a->n_tags; i++) {
		_cleanup_free_ char *spec = xasprintf("type=image,name=%s,push=true", b->a->tags[i]);
		r = kiln_export_spec_parse(spec, &b->specs[b->n_specs++], err);
	}
	if (r == 0 && b->a->push && !b->a->n_tags)
		r = kiln_error_set(err, -EINVAL, "--push needs at least one -t REF");
	return r;
}

/* Lines of the snippet around a failed instruction (BuildKit shows as many). */
#define SNIPPET_CONTEXT 2u

/* The line of the Dockerfile an error names ("NAME:LINE: ..."), or 0. */
static unsigned error_line(const struct dfbuild *b, const char *msg)
{
	size_t n = strlen(b->df_name);
	const char *at = msg;
	uint32_t line;
	char *end;

	while ((at = strstr(at, b->df_name))) {
		at += n;
		if (*at != ':' || !isdigit((unsigned char)at[1]))
			continue;
		errno = 0;
		line = (uint32_t)strtoul(at + 1, &end, 10);
		if (errno == 0 && *end == ':' && line > 0)
			return line;
	}
	return 0;
}

/* Print line k (1-based) of the Dockerfile, marked or not. */
static void show_line(const struct dfbuild *b, unsigned k, bool mark)
{
	const char *s = b->df_text;
	unsigned i;

	for (i = 1; s && i < k; i++) {
		s = strchr(s, '\n');
		s = s ? s + 1 : NULL;
	}
	if (!s || !*s)
		return;
	fprintf(stderr, " %4u | %s %.*s\n", k, mark ? ">>>" : "   ",
		(int)strcspn(s, "\r\n"), s);
}

/*
 * A step failed: show where, as BuildKit does: the file and line, then
 * the instruction's lines marked among the lines around them.
 */
static void show_source(const struct dfbuild *b, const struct kiln_error *err)
{
	unsigned line = err && b->df_text ? error_line(b, kiln_error_msg(err)) : 0;
	_cleanup_free_ char *failed = kiln_progress_failed_platforms(b->progress);
	unsigned end = line, first, k;
	size_t i;

	if (!line)
		return;
	for (i = 0; i < b->df->n; i++)
		if (b->df->ins[i].pos.line == line && b->df->ins[i].end_line > line)
			end = b->df->ins[i].end_line;
	first = line > SNIPPET_CONTEXT ? line - SNIPPET_CONTEXT : 1;
	if (end > line)
		fprintf(stderr, "%s:%u-%u\n", b->df_name, line, end);
	else
		fprintf(stderr, "%s:%u\n", b->df_name, line);
	fputs("--------------------\n", stderr);
	for (k = first; k <= end + SNIPPET_CONTEXT; k++)
		show_line(b, k, k >= line && k <= end);
	fputs("--------------------\n", stderr);
	if (b->n_platforms > 1 && failed)
		fprintf(stderr, "failed on %s\n", failed);
}

/* The image's platforms for kilnd: op numbers of the graph it solves. */
static json_t *cluster_platforms(struct dfbuild *b)
{
	json_t *a = json_array();
	size_t i, k;

	for (i = 0; i < b->n_images; i++) {
		const struct kiln_df_image *img = &b->images[i];
		json_t *layers = json_array();

		for (k = 0; k < img->n_layer_ops; k++)
			json_array_append_new(layers, json_integer(op_index(b->def, img->layer_ops[k])));
		json_array_append_new(a, json_pack("{s:s, s:o, s:o, s:O?}", "platform", img->platform,
						   "base_op", img->base_op ?
						   json_integer(op_index(b->def, img->base_op)) : json_null(),
						   "layer_ops", layers, "config", img->config));
	}
	return a;
}

/* One push for kilnd. */
static int cluster_push(struct dfbuild *b, const struct kiln_export_spec *spec, json_t *push,
			struct kiln_error **err)
{
	struct kiln_registry_ref dest = { 0 };
	_cleanup_free_ char *from = NULL;
	int r = kiln_registry_ref_parse(spec->name, &dest, err);

	if (r < 0)
		return r;
	from = mount_source(b, &dest);
	json_array_append_new(push, json_pack("{s:s, s:s?}", "ref", spec->name, "mount_from", from));
	kiln_registry_ref_release(&dest);
	return 0;
}

/*
 * With --addr: the image is made (and pushed) on the cluster, once, with
 * the settings every image output shares; the trees come here only for
 * type=local/tar, the image's blobs only for type=oci.
 */
static int cluster_request(struct dfbuild *b, struct kiln_error **err)
{
	const struct kiln_export_spec *first = NULL;
	struct kiln_image_opts o;
	json_t *push = json_array(), *opts = json_object();
	const char *epoch = getenv("SOURCE_DATE_EPOCH");
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < b->n_specs; i++) {
		const struct kiln_export_spec *sp = &b->specs[i];

		if (!strcmp(sp->type, "local") || !strcmp(sp->type, "tar")) {
			b->cluster.fetch_trees = true;
			continue;
		}
		r = image_opts(b, sp, &o, err);
		if (r == 0 && first && memcmp(&o, &b->image_opts, sizeof(o)))
			r = kiln_error_set(err, -ENOTSUP,
					   "with --addr, the image outputs must share their compression settings (-o %s, -o %s)",
					   first->type, sp->type);
		if (r < 0)
			break;
		if (!first) {
			/* The image's settings, for image_for() once kilnd made it. */
			first = sp;
			memcpy(&b->image_opts, &o, sizeof(o)); /* padding too: compared with memcmp */
		}
		if (!strcmp(sp->type, "oci"))
			b->cluster.fetch_image = true;
		else if (sp->push && !strcmp(sp->push, "true"))
			r = cluster_push(b, sp, push, err);
	}
	if (r < 0 || !first) {
		json_decref(push);
		json_decref(opts);
		return r;
	}
	if (first->compression)
		json_object_set_new(opts, "compression", json_string(first->compression));
	if (first->compression_level)
		json_object_set_new(opts, "compression-level", json_string(first->compression_level));
	if (first->force_compression)
		json_object_set_new(opts, "force-compression", json_string(first->force_compression));
	if (epoch && *epoch)
		json_object_set_new(opts, "epoch", json_string(epoch));
	b->cluster.image = json_pack("{s:o, s:o, s:o}", "platforms", cluster_platforms(b),
				     "options", opts, "push", push);
	return 0;
}

static int solve(struct dfbuild *b, struct kiln_error **err)
{
	struct kiln_solve_options so = {
		.worker = b->eng.worker,
		.cache = b->eng.cache,
		.registry = b->registry,
		.progress = b->progress,
		.slots = b->a->slots,
		.no_cache = b->a->no_cache,
		.secrets = b->secrets,
		.n_secrets = b->n_secrets,
		.ssh = b->ssh.n ? &b->ssh.agents : NULL,
	};

	int r = kiln_cli_remote(b->a) ? cluster_request(b, err) : 0;
	struct kiln_digest top;

	/* The agents live for the solve only: not through exports and pushes. */
	if (r == 0)
		r = kiln_cli_ssh_start(&b->ssh, err);
	if (r == 0)
		r = kiln_cli_solve(b->a, &b->eng, b->def, &so, kiln_cli_remote(b->a) ? &b->cluster : NULL,
				   &b->res, err);
	/* The image the cluster made (with b->image_opts): the exports use it as if built here. */
	if (r == 0 && b->cluster.image_result &&
	    kiln_digest_parse(json_string_value(json_object_get(b->cluster.image_result, "digest")) ?: "",
			      &top) == 0) {
		b->image = top;
		b->have_image = true;
	}
	kiln_cli_ssh_release(&b->ssh);
	if (r < 0)
		show_source(b, *err);
	return r;
}

static void dfbuild_release(struct dfbuild *b)
{
	size_t i;

	free(b->df_text);
	for (i = 0; i < b->n_specs; i++)
		kiln_export_spec_release(&b->specs[i]);
	for (i = 0; i < b->n_secrets; i++) {
		free((char *)b->secrets[i].id);
		explicit_bzero((void *)b->secrets[i].data, b->secrets[i].len);
		free((void *)b->secrets[i].data);
	}
	for (i = 0; i < b->n_images; i++)
		kiln_df_image_release(&b->images[i]);
	free(b->images);
	kiln_strv_free(b->platforms, b->n_platforms);
	kiln_strv_free(b->excludes, b->n_excludes);
	for (size_t k = 0; k < b->n_named; k++) {
		free((char *)b->named[k].name);
		free((char *)b->named[k].dir);
		free((char *)b->named[k].image);
		kiln_strv_free(b->named_excludes[k], b->named[k].n_excludes);
	}
	kiln_solve_result_release(&b->res);
	json_decref(b->cluster.image);
	json_decref(b->cluster.image_result);
	kiln_definition_free(b->def);
	free(b->graph);
	kiln_dockerfile_free(b->df);
	free(b->context);
	free(b->dockerfile);
	kiln_progress_free(b->progress);
	kiln_image_tags_free(b->tags);
	kiln_registry_free(b->registry);
	kiln_engine_close(&b->eng);
	kiln_cli_ssh_release(&b->ssh);
}

int kiln_build_dockerfile(const struct build_args *a, struct kiln_error **err)
{
	_cleanup_free_ char *root = kiln_cli_default_root();
	struct dfbuild b = { .a = a, .tags = kiln_image_tags_new() };
	size_t i;
	int r = 0;

	/* Flags first: a typo must not cost a build. */
	r = parse_specs(&b, err);
	for (i = 0; r == 0 && i < a->n_secrets; i++)
		r = load_secret(&b, a->secrets[i], err);
	if (r == 0)
		r = kiln_cli_ssh_open(a, &b.ssh, err);
	if (r == 0)
		r = kiln_cli_registry(a, &b.registry, err);
	if (r == 0)
		r = kiln_engine_open(root, a->runtime, &b.eng, err);
	if (r == 0)
		r = split_platforms(&b, err);
	if (r == 0)
		r = load_dockerfile(&b, err);
	if (r == 0) {
		b.progress = kiln_progress_new(a->progress, stderr);
		r = lower(&b, err);
	}
	if (r == 0)
		r = solve(&b, err);
	if (r == 0)
		r = run_exports(&b, err);
	dfbuild_release(&b);
	return r;
}
