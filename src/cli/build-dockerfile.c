/*
 * kiln build CONTEXT: parse the Dockerfile, lower it for every target
 * platform into one graph, solve it once, export per platform.
 */
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cas/tree.h"
#include "cli/build.h"
#include "cli/common.h"
#include "export/export.h"
#include "frontend/dockerfile/dockerfile.h"
#include "frontend/dockerfile/lower.h"
#include "solver/definition.h"
#include "solver/solve.h"
#include "source/image-config.h"
#include "source/local.h"

struct dfbuild {
	const struct build_args *a;
	struct kiln_engine eng;
	char *context, *dockerfile;
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
	struct kiln_export_spec specs[MAX_OUTPUTS];
	struct kiln_solve_result res;
	struct kiln_progress *progress;
};

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

		if (!n)
			return kiln_error_set(err, -EINVAL, "--platform: '%s' is not os/arch[/variant]", p);
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

/* .dockerignore of the context, if any. */
static int load_ignore(struct dfbuild *b, struct kiln_error **err)
{
	_cleanup_free_ char *path = kiln_path_join(b->context, ".dockerignore");
	_cleanup_free_ char *text = NULL;
	size_t len;
	int r = kiln_read_file_at(AT_FDCWD, path, 1u << 20, &text, &len);

	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot read %s", path);
	r = kiln_dockerignore_parse(text, len, &b->excludes, &b->n_excludes, err);
	if (r < 0)
		kiln_error_prefix(err, "%s", path);
	return r;
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
	r = load_ignore(b, err);
	if (r == 0)
		r = kiln_dockerfile_parse(text, len, b->dockerfile, &b->df, err);
	return r;
}

/* Lowering's view of images: the pinned ref and the config. */
static int resolve_image(void *ud, const char *ref, const char *platform, char **pinned,
			 char **config_json, struct kiln_error **err)
{
	struct dfbuild *b = ud;
	struct kiln_digest manifest;
	int r;

	r = kiln_image_config(ref, b->context, platform, &manifest, config_json, err);
	if (r < 0)
		return r;
	*pinned = xstrdup(ref);
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
		.resolve = resolve_image,
		.resolve_ud = b,
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

static int run_exports(struct dfbuild *b, struct kiln_error **err)
{
	struct kiln_store *s = kiln_worker_store(b->eng.worker);
	struct kiln_digest tree;
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < b->a->n_outputs; i++) {
		if (strcmp(b->specs[i].type, "local") && strcmp(b->specs[i].type, "tar"))
			return kiln_error_set(err, -ENOTSUP, "-o type=%s: not available yet",
					      b->specs[i].type);
		r = export_tree(b, &tree, err);
		if (r == 0)
			r = kiln_export_run(s, &tree, &b->specs[i], err);
	}
	if (r == 0 && b->a->metadata_file) {
		r = export_tree(b, &tree, err);
		if (r == 0)
			r = kiln_build_write_metadata(b->a->metadata_file, KILN_DIGEST_STR(&tree),
						      b->res.run, b->res.cached, NULL, err);
	}
	return r;
}

static int solve(struct dfbuild *b, struct kiln_error **err)
{
	struct kiln_solve_options so = {
		.worker = b->eng.worker,
		.cache = b->eng.cache,
		.progress = b->progress,
		.slots = b->a->slots,
		.no_cache = b->a->no_cache,
		.secrets = b->secrets,
		.n_secrets = b->n_secrets,
	};

	return kiln_solve(b->def, &so, &b->res, err);
}

static void dfbuild_release(struct dfbuild *b)
{
	size_t i;

	for (i = 0; i < b->a->n_outputs; i++)
		kiln_export_spec_release(&b->specs[i]);
	for (i = 0; i < b->n_secrets; i++) {
		free((char *)b->secrets[i].id);
		free((void *)b->secrets[i].data);
	}
	for (i = 0; i < b->n_images; i++)
		kiln_df_image_release(&b->images[i]);
	free(b->images);
	for (i = 0; i < b->n_platforms; i++)
		free(b->platforms[i]);
	free(b->platforms);
	kiln_dockerignore_free(b->excludes, b->n_excludes);
	kiln_solve_result_release(&b->res);
	kiln_definition_free(b->def);
	free(b->graph);
	kiln_dockerfile_free(b->df);
	free(b->context);
	free(b->dockerfile);
	kiln_progress_free(b->progress);
	kiln_engine_close(&b->eng);
}

int kiln_build_dockerfile(const struct build_args *a, struct kiln_error **err)
{
	_cleanup_free_ char *root = kiln_cli_default_root();
	struct dfbuild b = { .a = a };
	size_t i;
	int r = 0;

	/* Flags first: a typo must not cost a build. */
	for (i = 0; r == 0 && i < a->n_outputs; i++)
		r = kiln_export_spec_parse(a->outputs[i], &b.specs[i], err);
	for (i = 0; r == 0 && i < a->n_secrets; i++)
		r = load_secret(&b, a->secrets[i], err);
	if (r == 0)
		r = kiln_engine_open(root, a->runtime, &b.eng, err);
	if (r == 0)
		r = split_platforms(&b, err);
	if (r == 0)
		r = load_dockerfile(&b, err);
	if (r == 0)
		r = lower(&b, err);
	if (r == 0) {
		b.progress = kiln_progress_new(a->progress, stderr);
		r = solve(&b, err);
	}
	if (r == 0)
		r = run_exports(&b, err);
	dfbuild_release(&b);
	return r;
}
