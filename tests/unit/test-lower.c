/*
 * Dockerfile lowering: Dockerfile text -> op graph and image configs.
 * Every emitted graph is parsed back with kiln_definition_parse to prove
 * it is valid, and ops are checked by their content and digests.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/macro.h"
#include "basic/strbuf.h"
#include "frontend/dockerfile/dockerfile.h"
#include "frontend/dockerfile/lower-internal.h"
#include "frontend/dockerfile/lower.h"
#include "solver/definition.h"

/* ---- fake image resolver ---- */

struct call {
	char ref[128], platform[64];
};

static struct call calls[64];
static size_t n_calls;

static uint64_t fnv(const char *a, const char *b)
{
	uint64_t h = 1469598103934665603ull;

	for (; *a; a++)
		h = (h ^ (unsigned char)*a) * 1099511628211ull;
	for (; *b; b++)
		h = (h ^ (unsigned char)*b) * 1099511628211ull;
	return h;
}

static int fake_resolve(void *ud, const char *ref, const char *platform, char **pinned,
			char **config, struct kiln_error **err)
{
	uint64_t h = fnv(ref, platform);
	const char *onbuild = strcmp(ref, "obbase") ? ""
						    : ",\"OnBuild\":[\"RUN echo triggered\"]";
	char clean[128];
	size_t i;

	if (!strcmp(ref, "missing") || !strcmp(ref, "bild"))
		return kiln_error_set(err, -ENOENT, "%s: not found in registry", ref);
	if (n_calls < 64) {
		snprintf(calls[n_calls].ref, sizeof(calls[0].ref), "%s", ref);
		snprintf(calls[n_calls].platform, sizeof(calls[0].platform), "%s", platform);
		n_calls++;
	}
	snprintf(clean, sizeof(clean), "%s", ref);
	for (i = 0; clean[i]; i++)
		if (clean[i] == ':' || clean[i] == '@')
			clean[i] = '_';
	*pinned = xasprintf("oci-layout:///fake/%s:tag@sha256:%016llx%016llx%016llx%016llx", clean,
			    (unsigned long long)h, (unsigned long long)h, (unsigned long long)h,
			    (unsigned long long)h);
	*config = xasprintf("{\"architecture\":\"x\",\"os\":\"linux\",\"config\":{"
			    "\"Env\":[\"PATH=/usr/bin:/bin\",\"BASE=1\"],\"Cmd\":[\"/bin/sh\"]%s}}",
			    onbuild);
	return 0;
}

static size_t resolve_count(const char *ref, const char *platform)
{
	size_t i, n = 0;

	for (i = 0; i < n_calls; i++)
		if (!strcmp(calls[i].ref, ref) && (!platform || !strcmp(calls[i].platform, platform)))
			n++;
	return n;
}

/* ---- lowering helpers ---- */

/* Lowering's warnings, in order (reset by every lower_opts). */
static char *warnings[4];
static size_t n_warnings;

static void collect_warn(void *ud, const char *msg)
{
	(void)ud;
	if (n_warnings < ARRAY_SIZE(warnings))
		warnings[n_warnings++] = xstrdup(msg);
}

static void warnings_reset(void)
{
	while (n_warnings)
		free(warnings[--n_warnings]);
}

struct res {
	int r;
	char *def;
	json_t *j;
	struct kiln_df_image *imgs;
	size_t n;
	struct kiln_error *err;
	struct kiln_definition *d;
};

struct topts {
	const char *platforms[4];
	const char *build_platform;
	const char *target;
	const char *build_args[4];
	const char *excludes[2];
	int64_t epoch;
	const struct kiln_df_named_context *named; /* --build-context */
	size_t n_named;
};

/* The emitted graph must pass the solver's own validation. */
static void validate(struct res *res)
{
	struct kiln_error *err = NULL;
	int r = kiln_definition_parse(res->def, strlen(res->def), "lowered.json", "/",
				      "linux/amd64", &res->d, &err);

	if (r < 0)
		fail_msg("emitted graph does not parse: %s\n%s", kiln_error_msg(err), res->def);
}

static struct res *lower_opts(const char *text, const struct topts *t)
{
	struct res *res = xcalloc(1, sizeof(*res));
	struct kiln_dockerfile *df = NULL;
	struct kiln_error *err = NULL;
	struct kiln_df_build_opts o = { 0 };
	size_t np = 0, nb = 0, ne = 0;
	int r;

	while (np < 4 && t->platforms[np])
		np++;
	while (nb < 4 && t->build_args[nb])
		nb++;
	while (ne < 2 && t->excludes[ne])
		ne++;
	r = kiln_dockerfile_parse(text, strlen(text), "Dockerfile", &df, &err);
	if (r < 0)
		fail_msg("parse: %s", kiln_error_msg(err));
	o.context_dir = "/ctx";
	o.dockerfile = "/ctx/Dockerfile";
	o.platforms = t->platforms;
	o.n_platforms = np ? np : 1;
	o.build_platform = t->build_platform ? t->build_platform : "linux/amd64";
	o.target = t->target;
	o.build_args = t->build_args;
	o.n_build_args = nb;
	o.excludes = t->excludes;
	o.n_excludes = ne;
	o.source_date_epoch = t->epoch ? t->epoch : -1;
	o.named_contexts = t->named;
	o.n_named_contexts = t->n_named;
	o.resolve = fake_resolve;
	o.warn = collect_warn;
	warnings_reset();
	n_calls = 0;
	res->r = kiln_dockerfile_lower(df, &o, &res->def, &res->imgs, &res->n, &res->err);
	kiln_dockerfile_free(df);
	if (res->r == 0) {
		res->j = json_loads(res->def, 0, NULL);
		assert_non_null(res->j);
	}
	return res;
}

static struct res *lower_ok(const char *text, const struct topts *t)
{
	struct topts def = { .platforms = { "linux/amd64" } };
	struct res *res = lower_opts(text, t ? t : &def);

	if (res->r < 0)
		fail_msg("lower: %s", kiln_error_msg(res->err));
	validate(res);
	return res;
}

/* Lowering must fail with a message containing frag. */
static void lower_fails(const char *text, const char *frag)
{
	struct topts def = { .platforms = { "linux/amd64" } };
	struct res *res = lower_opts(text, &def);

	if (res->r == 0)
		fail_msg("lowering succeeded, expected '%s'\n%s", frag, res->def);
	assert_non_null(res->err);
	if (!strstr(res->err->msg, frag))
		fail_msg("error '%s' lacks '%s'", res->err->msg, frag);
	kiln_error_free(res->err);
	free(res);
}

static void res_free(struct res *res)
{
	size_t i;

	for (i = 0; i < res->n; i++)
		kiln_df_image_release(&res->imgs[i]);
	free(res->imgs);
	free(res->def);
	json_decref(res->j);
	kiln_definition_free(res->d);
	kiln_error_free(res->err);
	free(res);
}

static json_t *op(struct res *res, const char *id)
{
	json_t *ops = json_object_get(res->j, "ops"), *o;
	size_t i;

	json_array_foreach(ops, i, o)
		if (!strcmp(json_string_value(json_object_get(o, "id")), id))
			return o;
	fail_msg("no op '%s' in %s", id, res->def);
	return NULL;
}

/* The n-th op whose name contains frag. */
static json_t *op_named(struct res *res, const char *frag, size_t nth)
{
	json_t *ops = json_object_get(res->j, "ops"), *o;
	size_t i;

	json_array_foreach(ops, i, o) {
		const char *n = json_string_value(json_object_get(o, "name"));
		if (n && strstr(n, frag) && nth-- == 0)
			return o;
	}
	fail_msg("no op named '*%s*' in %s", frag, res->def);
	return NULL;
}

static const char *sget(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	if (!json_is_string(v))
		fail_msg("field '%s' is not a string", key);
	return json_string_value(v);
}

static const struct kiln_op *dop(struct res *res, const char *id)
{
	size_t i;

	assert_non_null(res->d);
	for (i = 0; i < res->d->n_ops; i++)
		if (!strcmp(res->d->ops[i].id, id))
			return &res->d->ops[i];
	fail_msg("no parsed op '%s'", id);
	return NULL;
}

static size_t count_ops(struct res *res, const char *type)
{
	json_t *ops = json_object_get(res->j, "ops"), *o;
	size_t i, n = 0;

	json_array_foreach(ops, i, o)
		n += !strcmp(json_string_value(json_object_get(o, "op")), type);
	return n;
}

static bool has_str(json_t *arr, const char *s)
{
	json_t *v;
	size_t i;

	json_array_foreach(arr, i, v)
		if (json_is_string(v) && !strcmp(json_string_value(v), s))
			return true;
	return false;
}

static bool env_has_key(json_t *env, const char *key)
{
	size_t l = strlen(key), i;
	json_t *v;

	json_array_foreach(env, i, v)
		if (!strncmp(json_string_value(v), key, l) && json_string_value(v)[l] == '=')
			return true;
	return false;
}

static json_t *cfg(struct res *res, size_t i)
{
	return json_object_get(res->imgs[i].config, "config");
}

static json_t *history(struct res *res, size_t i)
{
	return json_object_get(res->imgs[i].config, "history");
}

static const char *hist_at(struct res *res, size_t img, size_t i)
{
	return sget(json_array_get(history(res, img), i), "created_by");
}

/* Non-empty history entries == layer ops, for every image. */
static void assert_layers_align(struct res *res)
{
	size_t i, k, n;
	json_t *h;

	for (i = 0; i < res->n; i++) {
		n = 0;
		json_array_foreach(history(res, i), k, h)
			if (!json_is_true(json_object_get(h, "empty_layer")))
				n++;
		assert_int_equal(n, res->imgs[i].n_layer_ops);
	}
}

/* ---- tests ---- */

static void test_single_stage_run(void **state)
{
	struct res *res = lower_ok("FROM busybox\nRUN echo hi\n", NULL);
	const char *out = res->imgs[0].output;
	json_t *run = op(res, out), *img;

	assert_string_equal(sget(run, "op"), "exec");
	assert_string_equal(sget(run, "name"), "[2/2] RUN echo hi");
	assert_true(has_str(json_object_get(run, "args"), "echo hi"));
	assert_string_equal(json_string_value(json_array_get(json_object_get(run, "args"), 0)),
			    "/bin/sh");
	assert_true(has_str(json_object_get(run, "env"), "PATH=/usr/bin:/bin"));
	assert_true(has_str(json_object_get(run, "env"), "BASE=1"));
	assert_string_equal(sget(run, "cwd"), "/");
	assert_string_equal(sget(run, "network"), "host");
	assert_null(json_object_get(run, "user"));
	img = op(res, sget(run, "input"));
	assert_string_equal(sget(img, "op"), "source.image");
	assert_non_null(strstr(sget(img, "ref"), "oci-layout:///fake/busybox:tag@sha256:"));
	assert_string_equal(sget(img, "platform"), "linux/amd64");
	assert_string_equal(res->imgs[0].base_op, sget(img, "id"));
	assert_string_equal(sget(res->j, "output"), out);
	assert_true(dop(res, out)->network_host);
	assert_int_equal(res->imgs[0].n_layer_ops, 1);
	assert_string_equal(hist_at(res, 0, 0), "RUN /bin/sh -c echo hi # buildkit");
	assert_layers_align(res);
	res_free(res);
}

#define XPLAT_DF                                                                       \
	"FROM --platform=$BUILDPLATFORM golang AS build\n"                             \
	"WORKDIR /src\n"                                                               \
	"COPY . .\n"                                                                   \
	"RUN go build -o /out/app\n"                                                   \
	"FROM alpine\n"                                                                \
	"COPY --from=build /out/app /usr/bin/app\n"                                    \
	"RUN app --version\n"

static void test_buildplatform_stage_shared(void **state)
{
	struct topts t = { .platforms = { "linux/amd64", "linux/arm64" },
			   .build_platform = "linux/amd64" };
	struct res *res = lower_ok(XPLAT_DF, &t);
	const struct kiln_op *cp0, *cp1, *b0, *b1, *run0, *run1;

	assert_int_equal(res->n, 2);
	/* final stage: COPY then RUN, per platform */
	assert_int_equal(res->imgs[0].n_layer_ops, 2);
	assert_int_equal(res->imgs[1].n_layer_ops, 2);
	cp0 = dop(res, res->imgs[0].layer_ops[0]);
	cp1 = dop(res, res->imgs[1].layer_ops[0]);
	/* input 1 of each COPY is the build stage's RUN: one vertex for both */
	b0 = &res->d->ops[cp0->inputs[cp0->actions[0].from].op];
	b1 = &res->d->ops[cp1->inputs[cp1->actions[0].from].op];
	assert_int_equal(b0->type, KILN_OP_EXEC);
	assert_memory_equal(&b0->digest, &b1->digest, sizeof(b0->digest));
	assert_string_equal(b0->platform, "linux/amd64");
	run0 = dop(res, res->imgs[0].output);
	run1 = dop(res, res->imgs[1].output);
	assert_memory_not_equal(&run0->digest, &run1->digest, sizeof(run0->digest));
	assert_string_equal(run0->platform, "linux/amd64");
	assert_string_equal(run1->platform, "linux/arm64");
	/* golang resolved once, for the build platform; alpine once per target */
	assert_int_equal(resolve_count("golang", NULL), 1);
	assert_int_equal(resolve_count("golang", "linux/amd64"), 1);
	assert_int_equal(resolve_count("alpine", "linux/arm64"), 1);
	assert_non_null(strstr(json_string_value(json_object_get(op_named(res, "RUN go build", 0), "name")),
			       "[linux/amd64 build 4/4] RUN go build"));
	assert_string_equal(json_string_value(json_object_get(res->imgs[1].config, "architecture")),
			    "arm64");
	assert_layers_align(res);
	res_free(res);
}

static void test_buildplatform_stage_with_target_arg(void **state)
{
	struct topts t = { .platforms = { "linux/amd64", "linux/arm64" } };
	struct res *res = lower_ok("FROM --platform=$BUILDPLATFORM golang AS build\n"
				   "ARG TARGETARCH\n"
				   "RUN GOARCH=$TARGETARCH go build\n"
				   "FROM scratch\n"
				   "COPY --from=build /app /app\n",
				   &t);
	json_t *r0 = op_named(res, "go build", 0), *r1 = op_named(res, "go build", 1);

	assert_true(has_str(json_object_get(r0, "env"), "TARGETARCH=amd64"));
	assert_true(has_str(json_object_get(r1, "env"), "TARGETARCH=arm64"));
	assert_string_equal(sget(r0, "platform"), "linux/amd64");
	assert_string_equal(sget(r1, "platform"), "linux/amd64");
	assert_null(res->imgs[0].base_op);
	res_free(res);
}

static void test_buildplatform_env_has_no_target(void **state)
{
	struct topts t = { .platforms = { "linux/amd64", "linux/arm64" } };
	struct res *res = lower_ok(XPLAT_DF, &t);
	json_t *run = op_named(res, "RUN go build", 0);

	assert_false(env_has_key(json_object_get(run, "env"), "TARGETPLATFORM"));
	assert_false(env_has_key(json_object_get(run, "env"), "TARGETARCH"));
	/* identical content means one op, not one per platform */
	assert_null(strstr(res->def, "p1-s0-"));
	res_free(res);
}

static void test_global_arg_in_from(void **state)
{
	struct topts t = { .platforms = { "linux/amd64" }, .build_args = { "BASE=debian" } };
	struct res *res = lower_ok("ARG BASE=alpine\nFROM $BASE\nRUN true\n", NULL);

	assert_int_equal(resolve_count("alpine", "linux/amd64"), 1);
	res_free(res);
	res = lower_ok("ARG BASE=alpine\nFROM $BASE\nRUN true\n", &t);
	assert_int_equal(resolve_count("debian", "linux/amd64"), 1);
	assert_int_equal(resolve_count("alpine", NULL), 0);
	res_free(res);
}

/*
 * A --build-arg no ARG declares is one warning, in the classic builder's
 * words (names sorted, once each); declared ones (global, in a used stage,
 * or predefined: proxies, platform args) are not. An ARG in a stage the
 * build does not use does not count.
 */
static void test_unused_build_arg(void **state)
{
	struct topts t = { .platforms = { "linux/amd64" },
			   .build_args = { "ZED=1", "V=2", "HTTP_PROXY=http://p:3128", "AB" } };
	struct topts used = { .platforms = { "linux/amd64" },
			      .build_args = { "G=1", "V=2", "TARGETARCH=x", "https_proxy=y" } };
	struct topts other = { .platforms = { "linux/amd64" }, .target = "b",
			       .build_args = { "ONLY_A=1", "ZED=1", "ZED=2" } };
	struct res *res;

	res = lower_ok("ARG G\nFROM alpine\nARG V\nRUN echo $V\n", &t);
	assert_int_equal(n_warnings, 1);
	assert_string_equal(warnings[0], "One or more build-args [AB ZED] were not consumed");
	res_free(res);
	res = lower_ok("ARG G\nFROM alpine\nARG V\nRUN echo $V\n", &used);
	assert_int_equal(n_warnings, 0);
	res_free(res);
	res = lower_ok("FROM alpine AS a\nARG ONLY_A\nFROM alpine AS b\nRUN true\n", &other);
	assert_int_equal(n_warnings, 1);
	assert_string_equal(warnings[0], "One or more build-args [ONLY_A ZED] were not consumed");
	res_free(res);
	/* no --build-arg, no warning */
	res = lower_ok("FROM alpine\nRUN true\n", NULL);
	assert_int_equal(n_warnings, 0);
	res_free(res);
	warnings_reset();
}

/*
 * # syntax= naming the standard frontend (BuildKit would run that image;
 * kiln is that frontend) lowers; another image is an error naming it, the
 * file and the line.
 */
static void test_syntax_directive(void **state)
{
	static const char *const ok[] = {
		"docker/dockerfile:1",
		"docker/dockerfile:1.7",
		"docker/dockerfile:1.7.1",
		"docker/dockerfile:1.4-labs",
		"docker/dockerfile:1.0-experimental",
		"docker/dockerfile",
		"docker/dockerfile:latest",
		"docker.io/docker/dockerfile:1",
		"index.docker.io/docker/dockerfile:1.6",
		"docker/dockerfile:1@sha256:"
		"ac85f380a63b13dfcefa89046420e1781752bab202122f8f50032edf31be0021",
		"docker.io/docker/dockerfile@sha256:"
		"ac85f380a63b13dfcefa89046420e1781752bab202122f8f50032edf31be0021",
		"docker/dockerfile:1 --some-opt",
	};
	static const char *const bad[] = {
		"example/frontend",
		"docker/dockerfile:2",
		"docker/dockerfile:10",
		"docker/dockerfile:1.x",
		"docker/dockerfile:1.2.3.4",
		"docker/dockerfile-upstream:master",
		"docker/dockerfile:1@sha256:abc",
		"ghcr.io/docker/dockerfile:1",
		"tonistiigi/dockerfile:runmount",
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(ok); i++) {
		_cleanup_free_ char *df = xasprintf("# syntax=%s\nFROM alpine\nRUN true\n", ok[i]);

		res_free(lower_ok(df, NULL));
	}
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		_cleanup_free_ char *df = xasprintf("# escape=\\\n# syntax=%s\nFROM alpine\n", bad[i]);
		_cleanup_free_ char *msg = xasprintf(
			"kiln runs only the standard Dockerfile frontend; `# syntax=%s` (Dockerfile:2) asks for another",
			bad[i]);

		lower_fails(df, msg);
	}
}

static void test_arg_scoping(void **state)
{
	struct topts t = { .platforms = { "linux/amd64" }, .build_args = { "W=3" } };
	const char *df = "ARG V=1\nFROM alpine\nRUN echo one\nARG V\nARG W=2 X\nRUN echo two\n";
	struct res *res = lower_ok(df, NULL);
	json_t *one = op_named(res, "echo one", 0), *two = op_named(res, "echo two", 0);

	assert_false(env_has_key(json_object_get(one, "env"), "V"));
	assert_true(has_str(json_object_get(two, "env"), "V=1"));
	assert_true(has_str(json_object_get(two, "env"), "W=2"));
	assert_false(env_has_key(json_object_get(two, "env"), "X"));
	/* ARGs are not part of the image config */
	assert_false(env_has_key(json_object_get(cfg(res, 0), "Env"), "V"));
	assert_string_equal(hist_at(res, 0, 3), "RUN |3 V=1 W=2 X= /bin/sh -c echo two # buildkit");
	assert_string_equal(hist_at(res, 0, 2), "ARG W=2 X");
	res_free(res);
	res = lower_ok(df, &t);
	assert_true(has_str(json_object_get(op_named(res, "echo two", 0), "env"), "W=3"));
	res_free(res);
}

static void test_platform_args_declared(void **state)
{
	struct topts t = { .platforms = { "linux/arm64" }, .build_platform = "linux/amd64" };
	struct res *res = lower_ok("FROM alpine\nARG TARGETPLATFORM BUILDARCH\nRUN echo\n", &t);
	json_t *env = json_object_get(op_named(res, "RUN echo", 0), "env");

	assert_true(has_str(env, "TARGETPLATFORM=linux/arm64"));
	assert_true(has_str(env, "BUILDARCH=amd64"));
	res_free(res);
}

static void test_env_expansion(void **state)
{
	struct res *res = lower_ok("FROM alpine\nENV A=1\nENV B=$A C=\"x y\"\n"
				   "ENV A=2 D=$A\nWORKDIR /w/$B\nRUN echo\n",
				   NULL);
	json_t *env = json_object_get(cfg(res, 0), "Env");

	assert_true(has_str(env, "A=2"));
	assert_true(has_str(env, "B=1"));
	assert_true(has_str(env, "C=x y"));
	assert_true(has_str(env, "D=1"));
	assert_true(has_str(env, "PATH=/usr/bin:/bin"));
	assert_string_equal(json_string_value(json_object_get(cfg(res, 0), "WorkingDir")), "/w/1");
	assert_string_equal(hist_at(res, 0, 1), "ENV B=1 C=x y");
	assert_true(json_is_true(json_object_get(json_array_get(history(res, 0), 1), "empty_layer")));
	res_free(res);
}

static void test_target(void **state)
{
	struct topts t = { .platforms = { "linux/amd64" }, .target = "Build" };
	const char *df = "FROM golang AS build\nRUN make\nFROM debian AS unused\nRUN x\n"
			 "FROM alpine\nCOPY --from=build /a /a\n";
	struct res *res = lower_ok(df, &t);

	assert_string_equal(sget(op(res, res->imgs[0].output), "op"), "exec");
	assert_int_equal(resolve_count("alpine", NULL), 0);
	assert_int_equal(resolve_count("debian", NULL), 0);
	res_free(res);
	/* default target: the last stage, which never needs 'unused' */
	res = lower_ok(df, NULL);
	assert_int_equal(resolve_count("debian", NULL), 0);
	assert_int_equal(resolve_count("golang", NULL), 1);
	res_free(res);
	t.target = "nope";
	res = lower_opts(df, &t);
	assert_true(res->r < 0);
	assert_string_equal(res->err->msg,
			    "Dockerfile: target stage 'nope' not found (stages: build, unused)");
	res_free(res);
}

static void test_copy_from_name_and_index(void **state)
{
	struct res *res = lower_ok("FROM alpine AS a\nRUN touch /x\nFROM busybox\nRUN touch /y\n"
				   "FROM scratch\nCOPY --from=a /x /x\nCOPY --from=1 /y /y\n",
				   NULL);
	json_t *c1 = op(res, res->imgs[0].layer_ops[0]), *c2 = op(res, res->imgs[0].layer_ops[1]);
	json_t *a1 = json_array_get(json_object_get(c1, "actions"), 0);
	json_t *a2 = json_array_get(json_object_get(c2, "actions"), 0);

	assert_string_equal(sget(op(res, sget(a1, "from")), "name"), "[a 2/2] RUN touch /x");
	assert_string_equal(sget(op(res, sget(a2, "from")), "name"), "[stage-1 2/2] RUN touch /y");
	assert_string_equal(sget(a1, "src"), "/x/.");
	assert_string_equal(sget(a1, "dest"), "/x");
	assert_null(json_object_get(c1, "input"));
	assert_string_equal(sget(c2, "input"), sget(c1, "id"));
	assert_string_equal(hist_at(res, 0, 0), "COPY /x /x # buildkit");
	res_free(res);
}

static void test_copy_from_image(void **state)
{
	struct topts t = { .platforms = { "linux/arm64" } };
	struct res *res = lower_ok("FROM alpine\nCOPY --from=nginx:1 /etc/nginx /etc/nginx\n", &t);
	json_t *a = json_array_get(json_object_get(op(res, res->imgs[0].output), "actions"), 0);
	json_t *img = op(res, sget(a, "from"));

	assert_string_equal(sget(img, "op"), "source.image");
	assert_string_equal(sget(img, "platform"), "linux/arm64");
	assert_non_null(strstr(sget(img, "ref"), "/fake/nginx_1:tag@sha256:"));
	res_free(res);
}

static void test_copy_from_errors(void **state)
{
	lower_fails("FROM alpine\nFROM busybox\nCOPY --from=5 /a /b\n",
		    "Dockerfile:3:1: COPY: --from=5: no stage with index 5");
	lower_fails("FROM alpine AS a\nCOPY --from=b /a /b\nFROM busybox AS b\nFROM a\n",
		    "Dockerfile:2:1: COPY: --from=b: stage 'b' must be defined before the current stage");
	lower_fails("FROM alpine AS build\nFROM alpine AS final\nCOPY --from=bild /a /b\n",
		    "Dockerfile:3:1: COPY: stage 'bild' not found (stages: build, final)");
	lower_fails("FROM alpine\nCOPY --from=$X /a /b\n", "variables are not expanded in --from");
	lower_fails("FROM missing\n", "Dockerfile:1:1: FROM: missing: not found in registry");
}

/* ---- named contexts (--build-context) ---- */

static const char *const src_excludes[] = { "*.log" };

static const struct kiln_df_named_context named[] = {
	{ .name = "src", .dir = "/other", .excludes = src_excludes, .n_excludes = 1 },
	{ .name = "base", .image = "registry.example/base:1" },
	{ .name = "busybox", .image = "registry.example/bb:2" },
};

static void test_named_context_from_and_copy(void **state)
{
	struct topts t = { .platforms = { "linux/amd64" }, .named = named, .n_named = 3 };
	struct res *res = lower_ok("FROM base\nCOPY --from=src /a /a\n"
				   "RUN --mount=from=src,target=/m true\n"
				   "COPY --from=docker.io/library/busybox:latest /bin/sh /sh\n",
				   &t);
	json_t *c1 = op(res, res->imgs[0].layer_ops[0]);
	json_t *a1 = json_array_get(json_object_get(c1, "actions"), 0);
	json_t *c3 = op(res, res->imgs[0].layer_ops[2]);
	json_t *a3 = json_array_get(json_object_get(c3, "actions"), 0);
	json_t *local = op(res, sget(a1, "from")), *base = op(res, res->imgs[0].base_op);
	char *cfg = json_dumps(res->imgs[0].config, 0);

	(void)state;
	/* FROM base: the image context, never an image called "base". */
	assert_string_equal(sget(base, "op"), "source.image");
	assert_non_null(strstr(sget(base, "ref"), "/fake/registry.example/base_1:tag@"));
	assert_int_equal(resolve_count("registry.example/base:1", NULL), 1);
	assert_int_equal(resolve_count("base", NULL), 0);
	/* The image context's config is the stage's, as FROM an image. */
	assert_non_null(strstr(cfg, "BASE=1"));
	free(cfg);
	/* COPY --from=src: the directory as a second source.local op. */
	assert_string_equal(sget(local, "op"), "source.local");
	assert_string_equal(sget(local, "path"), "/other");
	assert_string_equal(sget(local, "name"), "[context src] load from client");
	/* Its own .dockerignore, not the main context's. */
	assert_int_equal(json_array_size(json_object_get(local, "exclude")), 1);
	assert_string_equal(json_string_value(json_array_get(json_object_get(local, "exclude"), 0)),
			    "*.log");
	assert_int_equal(dop(res, sget(local, "id"))->type, KILN_OP_SOURCE_LOCAL);
	/* RUN --mount=from=src mounts the same op. */
	assert_non_null(strstr(res->def, sget(local, "id")));
	/* Names compare in the familiar form: docker.io/library/busybox:latest is busybox. */
	assert_non_null(strstr(sget(op(res, sget(a3, "from")), "ref"), "/fake/registry.example/bb_2:"));
	assert_int_equal(resolve_count("docker.io/library/busybox:latest", NULL), 0);
	res_free(res);
}

static void test_named_context_precedence(void **state)
{
	struct topts t = { .platforms = { "linux/amd64" }, .named = named, .n_named = 3 };
	/* A stage called like a context is replaced by it: its RUN is not lowered. */
	struct res *res = lower_ok("FROM alpine AS src\nRUN touch /never\n"
				   "FROM alpine AS mid\nCOPY --from=src /a /a\n"
				   "FROM src\nRUN true\n",
				   &t);
	json_t *ops = json_object_get(res->j, "ops"), *o, *c;
	size_t i;

	(void)state;
	json_array_foreach(ops, i, o)
		assert_null(strstr(sget(o, "name"), "touch /never"));
	/* FROM src (the replaced stage): the directory is the first layer, no base image. */
	assert_null(res->imgs[0].base_op);
	assert_int_equal(res->imgs[0].n_layer_ops, 2);
	c = op(res, res->imgs[0].layer_ops[0]);
	assert_string_equal(sget(c, "op"), "source.local");
	assert_string_equal(sget(c, "path"), "/other");
	assert_string_equal(hist_at(res, 0, 0), "FROM src");
	res_free(res);

	/* A stage replaced by an image context: FROM it is that image. */
	res = lower_ok("FROM alpine AS base\nRUN touch /x\nFROM base\n", &t);
	assert_int_equal(resolve_count("registry.example/base:1", NULL), 1);
	assert_non_null(strstr(sget(op(res, res->imgs[0].base_op), "ref"), "/fake/registry.example/base_1:tag@"));
	res_free(res);

	/*
	 * A stage replaced by an image with ONBUILD triggers keeps them (BuildKit
	 * noinit): they run in a stage FROM it, not in the replaced one.
	 */
	{
		static const struct kiln_df_named_context ob[] = { { .name = "p", .image = "obbase" } };
		struct topts t2 = { .platforms = { "linux/amd64" }, .named = ob, .n_named = 1 };

		res = lower_ok("FROM alpine AS p\nFROM p\nRUN x\n", &t2);
		assert_int_equal(res->imgs[0].n_layer_ops, 2);
		assert_true(has_str(json_object_get(op(res, res->imgs[0].layer_ops[0]), "args"),
				    "echo triggered"));
		assert_null(json_object_get(cfg(res, 0), "OnBuild"));
		res_free(res);
		res = lower_ok("FROM alpine AS p\n", &t2);
		assert_non_null(json_object_get(cfg(res, 0), "OnBuild"));
		assert_int_equal(res->imgs[0].n_layer_ops, 0);
		res_free(res);
	}

	/* Without contexts the same names are images again. */
	res = lower_ok("FROM base\n", NULL);
	assert_int_equal(resolve_count("base", NULL), 1);
	res_free(res);
}

static void test_context_name(void **state)
{
	static const char *const cases[][2] = {
		{ "alpine", "alpine" },
		{ "docker.io/library/alpine:latest", "alpine" },
		{ "docker.io/me/app", "me/app" },
		{ "alpine:3.19", "alpine:3.19" },
		{ "localhost:5000/app:latest", "localhost:5000/app" },
		{ "Alpine", NULL },
		{ "", NULL },
		{ "-x", NULL },
		{ "a b", NULL },
	};
	size_t i;

	(void)state;
	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		char *n = kiln_df_context_name(cases[i][0]);

		if (cases[i][1])
			assert_string_equal(n, cases[i][1]);
		else
			assert_null(n);
		free(n);
	}
}

static void test_chown_chmod(void **state)
{
	struct res *res = lower_ok("FROM alpine\nARG U=app\nCOPY --chown=$U:grp --chmod=755 a /b\n"
				   "COPY --chown=1000 c /d\n",
				   NULL);
	json_t *a1 = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[0]), "actions"), 0);
	json_t *a2 = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[1]), "actions"), 0);

	assert_string_equal(sget(a1, "chown"), "app:grp");
	assert_string_equal(sget(a1, "mode"), "0755");
	assert_string_equal(sget(a2, "chown"), "1000");
	assert_null(json_object_get(a2, "mode"));
	assert_string_equal(hist_at(res, 0, 1), "COPY --chown=app:grp --chmod=755 a /b # buildkit");
	res_free(res);
	lower_fails("FROM alpine\nCOPY --chmod=999 a /b\n",
		    "Dockerfile:2:1: COPY: --chmod: '999' is not an octal mode");
	lower_fails("FROM alpine\nCOPY --chmod=u+x a /b\n", "is not an octal mode");
}

static void test_link(void **state)
{
	struct res *res = lower_ok("FROM alpine\nRUN true\nCOPY --link --chown=1:2 a /b/\n", NULL);
	json_t *merge = op(res, res->imgs[0].output), *inputs = json_object_get(merge, "inputs");
	json_t *copy = op(res, json_string_value(json_array_get(inputs, 1)));
	const struct kiln_op *m = dop(res, res->imgs[0].output);

	assert_string_equal(sget(merge, "op"), "merge");
	assert_string_equal(json_string_value(json_array_get(inputs, 0)), res->imgs[0].layer_ops[0]);
	assert_string_equal(sget(copy, "op"), "file");
	assert_null(json_object_get(copy, "input"));
	assert_string_equal(res->imgs[0].layer_ops[1], sget(merge, "id"));
	assert_int_equal(m->type, KILN_OP_MERGE);
	assert_int_equal(m->n_inputs, 2);
	assert_layers_align(res);
	res_free(res);
	lower_fails("FROM alpine\nCOPY --link --chown=app a /b\n", "use numeric uid:gid");
}

static void test_copy_dest_semantics(void **state)
{
	struct res *res = lower_ok("FROM alpine\nWORKDIR /app\nCOPY a.txt .\nCOPY dir sub\n"
				   "COPY x y ../z/\nCOPY *.c src/\n",
				   NULL);
	json_t *c1 = json_object_get(op(res, res->imgs[0].layer_ops[1]), "actions");
	json_t *c2 = json_object_get(op(res, res->imgs[0].layer_ops[2]), "actions");
	json_t *c3 = json_object_get(op(res, res->imgs[0].layer_ops[3]), "actions");
	json_t *c4 = json_object_get(op(res, res->imgs[0].layer_ops[4]), "actions");

	assert_string_equal(sget(json_array_get(c1, 0), "dest"), "/app/");
	assert_string_equal(sget(json_array_get(c2, 0), "dest"), "/app/sub");
	assert_string_equal(sget(json_array_get(c2, 0), "src"), "/dir/.");
	assert_int_equal(json_array_size(c3), 2);
	assert_string_equal(sget(json_array_get(c3, 1), "dest"), "/z/");
	/* Each source reads the context narrowed to itself (include). */
	{
		const char *from = sget(json_array_get(c3, 1), "from");
		json_t *ctx = op(res, from);
		assert_string_equal(sget(ctx, "op"), "source.local");
		assert_string_equal(json_string_value(json_array_get(json_object_get(ctx, "include"), 0)), "y");
		assert_string_not_equal(from, sget(json_array_get(c3, 0), "from"));
	}
	assert_true(json_is_true(json_object_get(json_array_get(c4, 0), "allow_not_found")));
	/* the parsed form: a directory's contents, into /app */
	assert_true(dop(res, res->imgs[0].layer_ops[2])->actions[0].contents_only);
	res_free(res);
	lower_fails("FROM alpine\nCOPY a b c\n",
		    "Dockerfile:2:1: COPY: with more than one source the destination must be a directory ending in '/'");
}

static void test_copy_exclude(void **state)
{
	struct res *res = lower_ok("FROM alpine\nARG X=log\nCOPY --exclude=*.$X --exclude=tmp/ dir /d/\n"
				   "ADD --exclude=a.tar src/ /s/\nCOPY a /b\n",
				   NULL);
	json_t *c1 = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[0]), "actions"), 0);
	json_t *c2 = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[1]), "actions"), 0);
	json_t *c3 = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[2]), "actions"), 0);
	json_t *ex = json_object_get(c1, "exclude");

	assert_int_equal(json_array_size(ex), 2);
	assert_string_equal(json_string_value(json_array_get(ex, 0)), "*.log");
	assert_string_equal(json_string_value(json_array_get(ex, 1)), "tmp/");
	assert_string_equal(json_string_value(json_array_get(json_object_get(c2, "exclude"), 0)), "a.tar");
	assert_null(json_object_get(c3, "exclude"));
	/* the parsed form carries them (and so the op's digest) */
	assert_int_equal(dop(res, res->imgs[0].layer_ops[0])->actions[0].n_exclude, 2);
	assert_string_equal(hist_at(res, 0, 1), "COPY dir /d/ # buildkit");
	res_free(res);
	lower_fails("FROM alpine\nCOPY --exclude= a /b\n", "--exclude needs a pattern");
}

static void test_workdir_relative(void **state)
{
	struct res *res = lower_ok("FROM alpine\nWORKDIR /a\nWORKDIR b\nWORKDIR ../c\nUSER 1000\n"
				   "WORKDIR d\nRUN pwd\n",
				   NULL);
	json_t *run = op(res, res->imgs[0].output);
	json_t *mk = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[2]), "actions"), 0);
	json_t *mk4 = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[3]), "actions"), 0);

	assert_string_equal(sget(run, "cwd"), "/a/c/d");
	assert_string_equal(sget(run, "user"), "1000");
	assert_string_equal(sget(mk, "action"), "mkdir");
	assert_string_equal(sget(mk, "path"), "/a/c");
	assert_true(json_is_true(json_object_get(mk, "parents")));
	assert_string_equal(sget(mk4, "chown"), "1000");
	assert_string_equal(hist_at(res, 0, 1), "WORKDIR /a/b");
	assert_null(json_object_get(json_array_get(history(res, 0), 1), "empty_layer"));
	assert_string_equal(json_string_value(json_object_get(cfg(res, 0), "WorkingDir")), "/a/c/d");
	assert_int_equal(res->imgs[0].n_layer_ops, 5);
	assert_layers_align(res);
	res_free(res);
}

static void test_cmd_entrypoint(void **state)
{
	struct res *res = lower_ok("FROM alpine\nENTRYPOINT [\"/app\"]\n", NULL);

	assert_true(has_str(json_object_get(cfg(res, 0), "Entrypoint"), "/app"));
	assert_null(json_object_get(cfg(res, 0), "Cmd")); /* base Cmd reset */
	assert_string_equal(hist_at(res, 0, 0), "ENTRYPOINT [\"/app\"]");
	res_free(res);

	res = lower_ok("FROM alpine\nCMD [\"--help\"]\nENTRYPOINT /app -v\n", NULL);
	assert_true(has_str(json_object_get(cfg(res, 0), "Cmd"), "--help"));
	assert_int_equal(json_array_size(json_object_get(cfg(res, 0), "Entrypoint")), 3);
	assert_true(has_str(json_object_get(cfg(res, 0), "Entrypoint"), "/app -v"));
	res_free(res);

	res = lower_ok("FROM alpine\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo \"$HOME\"\nRUN x\n", NULL);
	assert_string_equal(json_string_value(json_array_get(json_object_get(cfg(res, 0), "Cmd"), 0)),
			    "/bin/bash");
	assert_string_equal(hist_at(res, 0, 1), "CMD [\"/bin/bash\" \"-c\" \"echo \\\"$HOME\\\"\"]");
	assert_string_equal(hist_at(res, 0, 0), "SHELL [/bin/bash -c]");
	assert_string_equal(json_string_value(json_array_get(json_object_get(op(res, res->imgs[0].output), "args"), 0)),
			    "/bin/bash");
	res_free(res);
}

static void test_history_and_layer_chain(void **state)
{
	struct topts t = { .platforms = { "linux/amd64" }, .epoch = 1700000000 };
	struct res *res = lower_ok("FROM alpine AS base\nENV A=b\nRUN make all\nCOPY foo /bar\n"
				   "FROM base\nLABEL x=y\nRUN more\n",
				   &t);
	json_t *h = history(res, 0);

	assert_int_equal(json_array_size(h), 5);
	assert_string_equal(hist_at(res, 0, 0), "ENV A=b");
	assert_string_equal(hist_at(res, 0, 1), "RUN /bin/sh -c make all # buildkit");
	assert_string_equal(hist_at(res, 0, 2), "COPY foo /bar # buildkit");
	assert_string_equal(hist_at(res, 0, 3), "LABEL x=y");
	assert_int_equal(res->imgs[0].n_layer_ops, 3);
	assert_string_equal(res->imgs[0].layer_ops[2], res->imgs[0].output);
	assert_string_equal(sget(op(res, res->imgs[0].base_op), "op"), "source.image");
	assert_string_equal(sget(json_array_get(h, 0), "created"), "2023-11-14T22:13:20Z");
	assert_string_equal(sget(json_array_get(h, 0), "comment"), "buildkit.dockerfile.v0");
	assert_string_equal(sget(res->imgs[0].config, "created"), "2023-11-14T22:13:20Z");
	assert_int_equal(json_integer_value(json_object_get(
				 json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[1]), "actions"), 0),
				 "mtime")),
			 1700000000);
	assert_true(json_is_array(json_object_get(json_object_get(res->imgs[0].config, "rootfs"),
						  "diff_ids")));
	assert_layers_align(res);
	/* "outputs" lists the output and every layer op */
	assert_true(has_str(json_object_get(res->j, "outputs"), res->imgs[0].layer_ops[0]));
	assert_true(has_str(json_object_get(res->j, "outputs"), res->imgs[0].output));
	res_free(res);
}

static void test_copy_parents(void **state)
{
	struct res *res = lower_ok("FROM alpine\nCOPY --parents a/b/c.txt x/./y/*.go /d/\n"
				   "COPY --parents=false a/b /e/\n",
				   NULL);
	json_t *acts = json_object_get(op(res, res->imgs[0].layer_ops[0]), "actions");
	json_t *c1 = json_array_get(acts, 0), *c2 = json_array_get(acts, 1);
	json_t *c3 = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[1]), "actions"), 0);

	/* no pivot: the context's root, keeping the whole path */
	assert_string_equal(sget(c1, "src"), "/.");
	assert_string_equal(json_string_value(json_array_get(json_object_get(c1, "include"), 0)), "a/b/c.txt");
	assert_null(json_object_get(c1, "allow_not_found"));
	assert_string_equal(json_string_value(json_array_get(json_object_get(op(res, sget(c1, "from")), "include"), 0)),
			    "a/b/c.txt");
	/* pivot: the part after "/./" is kept under the destination */
	assert_string_equal(sget(c2, "src"), "/x/.");
	assert_string_equal(json_string_value(json_array_get(json_object_get(c2, "include"), 0)), "y/*.go");
	assert_true(json_is_true(json_object_get(c2, "allow_not_found")));
	assert_string_equal(sget(c2, "dest"), "/d/");
	assert_null(json_object_get(c3, "include"));
	assert_string_equal(hist_at(res, 0, 0), "COPY --parents a/b/c.txt x/./y/*.go /d/ # buildkit");
	assert_string_equal(dop(res, res->imgs[0].layer_ops[0])->actions[1].include[0], "y/*.go");
	res_free(res);
	lower_fails("FROM alpine\nADD --parents a /b/\n", "unknown flag: --parents");
	lower_fails("FROM alpine\nCOPY --parents a/./ /b/\n", "nothing after the pivot");
}

/* BuildKit convert_ssh.go / llb exec.go: defaults, SSH_AUTH_SOCK, only ids. */
static void test_run_ssh(void **state)
{
	struct res *res = lower_ok("FROM alpine\n"
				   "RUN --mount=type=ssh --mount=type=ssh,id=gh,required=true,mode=0640,uid=1 a\n"
				   "ENV SSH_AUTH_SOCK=/mine\n"
				   "RUN --mount=type=ssh,target=/s b\n",
				   NULL);
	json_t *o1 = op(res, res->imgs[0].layer_ops[0]), *o2 = op(res, res->imgs[0].layer_ops[1]);
	json_t *m0 = json_array_get(json_object_get(o1, "mounts"), 0);
	json_t *m1 = json_array_get(json_object_get(o1, "mounts"), 1);
	const struct kiln_def_mount *d1 = &dop(res, res->imgs[0].layer_ops[0])->mounts[1];
	json_t *e;
	size_t i;
	int found = 0;

	(void)state;
	assert_string_equal(sget(m0, "id"), "default");
	assert_string_equal(sget(m0, "target"), "/run/buildkit/ssh_agent.0");
	assert_null(json_object_get(m0, "required"));
	assert_string_equal(sget(m1, "id"), "gh");
	assert_string_equal(sget(m1, "target"), "/run/buildkit/ssh_agent.1");
	assert_true(d1->required);
	assert_int_equal(d1->mode, 0640);
	assert_int_equal(d1->uid, 1);
	assert_int_equal(dop(res, res->imgs[0].layer_ops[0])->mounts[0].mode, 0600);
	json_array_foreach(json_object_get(o1, "env"), i, e)
		found += !strcmp(json_string_value(e), "SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0");
	assert_int_equal(found, 1);
	/* a stage's own SSH_AUTH_SOCK stays */
	found = 0;
	json_array_foreach(json_object_get(o2, "env"), i, e)
		found += !strncmp(json_string_value(e), "SSH_AUTH_SOCK=", 14);
	assert_int_equal(found, 1);
	res_free(res);
	lower_fails("FROM alpine\nRUN --mount=type=ssh,source=/x a\n",
		    "option 'source' does not apply to type=ssh");
	lower_fails("FROM alpine\nRUN --mount=type=ssh,id= a\n", "id= is empty");
}

/* Each ssh mount costs the worker a thread and fds: 16 per RUN at most. */
static void test_run_ssh_cap(void **state)
{
	_cleanup_strbuf_ struct kiln_strbuf df = KILN_STRBUF_INIT(4096);
	struct res *res;
	size_t i;

	(void)state;
	assert_int_equal(KILN_DF_MAX_SSH_MOUNTS, KILN_DEF_MAX_SSH_MOUNTS);
	kiln_strbuf_adds(&df, "FROM alpine\nRUN");
	for (i = 0; i < KILN_DF_MAX_SSH_MOUNTS; i++)
		kiln_strbuf_addf(&df, " --mount=type=ssh,id=k%zu", i);
	kiln_strbuf_adds(&df, " a\n");
	res = lower_ok(kiln_strbuf_str(&df), NULL);
	assert_int_equal(dop(res, res->imgs[0].layer_ops[0])->n_mounts, KILN_DF_MAX_SSH_MOUNTS);
	res_free(res);
	kiln_strbuf_reset(&df);
	kiln_strbuf_adds(&df, "FROM alpine\nRUN");
	for (i = 0; i <= KILN_DF_MAX_SSH_MOUNTS; i++)
		kiln_strbuf_addf(&df, " --mount=type=ssh,id=k%zu", i);
	kiln_strbuf_adds(&df, " a\n");
	lower_fails(kiln_strbuf_str(&df), "more than 16 ssh mounts in one RUN");
	lower_fails(kiln_strbuf_str(&df), ":2");
}

static void test_run_secret_env(void **state)
{
	struct res *res = lower_ok("FROM alpine\n"
				   "RUN --mount=type=secret,id=tok,env=TOKEN a\n"
				   "RUN --mount=type=secret,id=tok,env=TOKEN,target=/etc/t b\n",
				   NULL);
	json_t *m1 = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[0]), "mounts"), 0);
	json_t *m2 = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[1]), "mounts"), 0);

	/* env only: no file (BuildKit: no default target when env= is set) */
	assert_string_equal(sget(m1, "env"), "TOKEN");
	assert_string_equal(sget(m1, "id"), "tok");
	assert_null(json_object_get(m1, "target"));
	assert_null(dop(res, res->imgs[0].layer_ops[0])->mounts[0].target);
	/* both */
	assert_string_equal(sget(m2, "env"), "TOKEN");
	assert_string_equal(sget(m2, "target"), "/etc/t");
	/* the step's own environment does not name it */
	{
		json_t *env = json_object_get(op(res, res->imgs[0].layer_ops[0]), "env"), *e;
		size_t i;

		json_array_foreach(env, i, e)
			assert_null(strstr(json_string_value(e), "TOKEN"));
	}
	res_free(res);
	lower_fails("FROM alpine\nRUN --mount=type=secret,id=t,env= a\n", "env= needs a variable name");
	lower_fails("FROM alpine\nRUN --mount=type=cache,target=/c,env=X a\n",
		    "option 'env' does not apply to type=cache");
}

static void test_run_mounts(void **state)
{
	struct topts t = { .platforms = { "linux/amd64" } };
	struct res *res = lower_opts(
		"FROM alpine AS deps\nRUN fetch\nFROM alpine\nWORKDIR /src\n"
		"RUN --mount=type=cache,target=/root/.cache,id=go,sharing=locked,mode=0700,uid=1 "
		"--mount=type=bind,from=deps,source=/out,target=deps,rw "
		"--mount=type=tmpfs,target=/tmp,size=64m "
		"--mount=type=secret,id=tok,required "
		"--mount=target=/ctx make\n",
		&t);
	json_t *run, *m;

	assert_int_equal(res->r, 0);
	validate(res);
	run = op(res, res->imgs[0].output);
	m = json_object_get(run, "mounts");
	assert_int_equal(json_array_size(m), 5);
	assert_string_equal(sget(json_array_get(m, 0), "type"), "cache");
	assert_string_equal(sget(json_array_get(m, 0), "id"), "go");
	assert_string_equal(sget(json_array_get(m, 0), "sharing"), "locked");
	assert_string_equal(sget(json_array_get(m, 0), "mode"), "0700");
	assert_int_equal(json_integer_value(json_object_get(json_array_get(m, 0), "uid")), 1);
	assert_string_equal(sget(json_array_get(m, 1), "target"), "/src/deps");
	assert_string_equal(sget(json_array_get(m, 1), "source"), "/out");
	assert_true(json_is_false(json_object_get(json_array_get(m, 1), "readonly")));
	assert_string_equal(sget(op(res, sget(json_array_get(m, 1), "input")), "name"),
			    "[deps 2/2] RUN fetch");
	assert_int_equal(json_integer_value(json_object_get(json_array_get(m, 2), "size")), 64 << 20);
	assert_string_equal(sget(json_array_get(m, 3), "target"), "/run/secrets/tok");
	assert_true(json_is_true(json_object_get(json_array_get(m, 3), "required")));
	assert_string_equal(sget(json_array_get(m, 4), "input"), "context");
	/* as the solver reads it */
	{
		const struct kiln_op *d = dop(res, res->imgs[0].output);
		assert_int_equal(d->n_mounts, 5);
		assert_int_equal(d->mounts[0].kind, KILN_DEF_MOUNT_CACHE);
		assert_int_equal(d->mounts[0].mode, 0700);
		assert_int_equal(d->mounts[1].kind, KILN_DEF_MOUNT_BIND);
		assert_false(d->mounts[1].readonly);
		assert_int_equal(d->mounts[3].kind, KILN_DEF_MOUNT_SECRET);
		assert_true(d->mounts[3].required);
		assert_string_equal(d->mounts[3].cache_id, "tok");
		assert_true(d->mounts[4].readonly);
	}
	res_free(res);
}

/* A cache seeded from a stage: the stage is an input edge of the exec. */
static void test_run_mount_cache_from(void **state)
{
	struct topts t = { .platforms = { "linux/amd64" } };
	struct res *res = lower_opts(
		"FROM alpine AS seed\nRUN make-seed\nFROM alpine\nWORKDIR /w\n"
		"RUN --mount=type=cache,target=c,id=s,from=seed,source=/out/./ "
		"--mount=type=cache,target=/whole,from=seed "
		"--mount=type=cache,target=/plain use\n",
		&t);
	json_t *run, *m;

	assert_int_equal(res->r, 0);
	validate(res);
	run = op(res, res->imgs[0].output);
	m = json_object_get(run, "mounts");
	assert_int_equal(json_array_size(m), 3);
	assert_string_equal(sget(json_array_get(m, 0), "type"), "cache");
	assert_string_equal(sget(json_array_get(m, 0), "target"), "/w/c");
	assert_string_equal(sget(json_array_get(m, 0), "id"), "s");
	assert_string_equal(sget(json_array_get(m, 0), "source"), "/out");
	assert_string_equal(sget(op(res, sget(json_array_get(m, 0), "input")), "name"),
			    "[seed 2/2] RUN make-seed");
	assert_null(json_object_get(json_array_get(m, 1), "source"));
	assert_string_equal(sget(json_array_get(m, 1), "input"),
			    sget(json_array_get(m, 0), "input"));
	assert_null(json_object_get(json_array_get(m, 2), "input"));
	/* as the solver reads it: the seed is one of the exec's inputs (so in its key) */
	{
		const struct kiln_op *d = dop(res, res->imgs[0].output);
		assert_int_equal(d->n_mounts, 3);
		assert_int_equal(d->mounts[0].kind, KILN_DEF_MOUNT_CACHE);
		assert_true(d->mounts[0].input >= 0 && (size_t)d->mounts[0].input < d->n_inputs);
		assert_int_not_equal(d->mounts[0].input, d->rootfs);
		assert_string_equal(res->d->ops[d->inputs[d->mounts[0].input].op].name,
				    "[seed 2/2] RUN make-seed");
		assert_string_equal(d->mounts[0].source, "out");
		assert_int_equal(d->inputs[d->mounts[1].input].op, d->inputs[d->mounts[0].input].op);
		assert_string_equal(d->mounts[1].source, "");
		assert_int_equal(d->mounts[2].input, -1);
		assert_null(d->mounts[2].source);
	}
	res_free(res);
}

static void test_bad_mounts(void **state)
{
	lower_fails("FROM alpine\nRUN --mount=type=cache,target=/x,source=/s make\n",
		    "Dockerfile:2:1: RUN: --mount=type=cache,target=/x,source=/s: type=cache with source= needs from=");
	lower_fails("FROM alpine\nRUN --mount=type=cache,target=/x,from=7 make\n",
		    "no stage with index 7");
	lower_fails("FROM alpine\nRUN --mount=type=nfs,target=/x make\n", "unknown type 'nfs'");
	lower_fails("FROM alpine\nRUN --mount=type=cache make\n", "target= is required");
	lower_fails("FROM alpine\nRUN --mount=type=bind,target=/x,colour=red make\n",
		    "unknown option 'colour'");
	lower_fails("FROM alpine\nRUN --mount=type=tmpfs,target=/x,size=lots make\n",
		    "size 'lots' is not a size");
	lower_fails("FROM alpine\nRUN --mount=type=cache,target=/x,sharing=maybe make\n",
		    "sharing=maybe");
	lower_fails("FROM alpine\nRUN --mount=type=bind,target=/x,from=7 make\n",
		    "no stage with index 7");
}

static void test_network_and_flags(void **state)
{
	struct res *res = lower_ok("FROM alpine\nRUN --network=none a\nRUN --network=default b\n", NULL);

	assert_string_equal(sget(op(res, res->imgs[0].layer_ops[0]), "network"), "none");
	assert_string_equal(sget(op(res, res->imgs[0].layer_ops[1]), "network"), "host");
	assert_false(dop(res, res->imgs[0].layer_ops[0])->network_host);
	res_free(res);
	lower_fails("FROM alpine\nRUN --network=bridge a\n", "--network=bridge: expected default, none or host");
	lower_fails("FROM alpine\nRUN --foo a\n", "Dockerfile:2:1: RUN: unknown flag: --foo");
}

static void test_add_url_archive_git(void **state)
{
	struct topts t = { .platforms = { "linux/amd64" } };
	struct res *res = lower_opts(
		"FROM alpine\n"
		"ADD --checksum=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef "
		"https://example.com/dl/y.tar.gz?x=1 /tmp/\n"
		"ADD local.tar.gz notes.txt /x/\n",
		&t);
	json_t *a1, *a2, *http;

	assert_int_equal(res->r, 0);
	validate(res);
	a1 = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[0]), "actions"), 0);
	http = op(res, sget(a1, "from"));
	assert_string_equal(sget(http, "op"), "source.http");
	assert_string_equal(sget(http, "url"), "https://example.com/dl/y.tar.gz?x=1");
	assert_string_equal(sget(http, "filename"), "y.tar.gz");
	assert_non_null(strstr(sget(http, "checksum"), "sha256:0123"));
	assert_string_equal(sget(a1, "src"), "/y.tar.gz");
	assert_null(json_object_get(a1, "extract"));
	a2 = json_object_get(op(res, res->imgs[0].layer_ops[1]), "actions");
	/* Every local ADD source may be unpacked: the file op decides by content. */
	assert_true(json_is_true(json_object_get(json_array_get(a2, 0), "extract")));
	assert_true(json_is_true(json_object_get(json_array_get(a2, 1), "extract")));
	assert_true(dop(res, res->imgs[0].layer_ops[1])->actions[0].extract);
	assert_true(dop(res, res->imgs[0].layer_ops[1])->actions[1].extract);
	assert_int_equal(dop(res, sget(http, "id"))->type, KILN_OP_SOURCE_HTTP);
	res_free(res);
	lower_fails("FROM alpine\nCOPY https://example.com/x /x\n", "COPY cannot fetch URLs");
	lower_fails("FROM alpine\nADD --checksum=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef "
		    "https://h/r.git /x\n", "--checksum needs an http(s) source");
	lower_fails("FROM alpine\nCOPY https://example.com/x /x\n", "COPY cannot fetch URLs");
	lower_fails("FROM alpine\nADD --checksum=sha256:12 https://e.com/x /x\n",
		    "expected sha256:<64 hex digits>");
}

/*
 * ADD of a git repository (BuildKit dispatchCopy: ParseGitRef, llb.Git,
 * KeepGitDir, a copy of "/" into the destination).
 */
static void test_add_git(void **state)
{
	struct topts t = { .platforms = { "linux/amd64" } };
	struct res *res = lower_opts(
		"FROM alpine\n"
		"ADD https://u:tok@example.com/a/b.git#v1.2:sub/dir /src\n"
		"ADD --keep-git-dir git@example.com:a/b.git /k/\n"
		"ADD git://example.com/c.git#main /c\n",
		&t);
	json_t *a1, *g1, *g2, *g3;

	(void)state;
	assert_int_equal(res->r, 0);
	validate(res);
	a1 = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[0]), "actions"), 0);
	g1 = op(res, sget(a1, "from"));
	assert_string_equal(sget(g1, "op"), "source.git");
	assert_string_equal(sget(g1, "url"), "https://u:tok@example.com/a/b.git");
	assert_string_equal(sget(g1, "ref"), "v1.2");
	assert_string_equal(sget(g1, "subdir"), "sub/dir");
	assert_null(json_object_get(g1, "keep_git_dir"));
	/* the progress name has no credentials */
	assert_null(strstr(sget(g1, "name"), "tok"));
	assert_string_equal(sget(a1, "src"), "/.");
	assert_string_equal(sget(a1, "dest"), "/src");
	assert_null(json_object_get(a1, "extract"));
	g2 = op(res, sget(json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[1]),
							 "actions"), 0), "from"));
	assert_string_equal(sget(g2, "url"), "git@example.com:a/b.git");
	assert_null(json_object_get(g2, "ref"));
	assert_true(json_is_true(json_object_get(g2, "keep_git_dir")));
	g3 = op(res, sget(json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[2]),
							 "actions"), 0), "from"));
	assert_string_equal(sget(g3, "ref"), "main");
	assert_int_equal(dop(res, sget(g1, "id"))->type, KILN_OP_SOURCE_GIT);
	assert_null(strstr(dop(res, sget(g1, "id"))->form, "tok"));
	res_free(res);
	lower_fails("FROM alpine\nCOPY https://h/r.git /x\n", "COPY cannot fetch URLs");
}

static void test_heredocs(void **state)
{
	struct topts t = { .platforms = { "linux/amd64" } };
	struct res *res = lower_opts("FROM alpine\nRUN <<EOF\necho a\necho b\nEOF\n"
				     "RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n"
				     "ARG V=7\nCOPY <<CONF /etc/app.conf\nkey=1 \"$V\" ${V:+set} \\$V\nCONF\n"
				     "COPY <<'RAW' /raw\n$V\nRAW\n",
				     &t);
	json_t *r1, *r2, *m, *mk, *cp;

	assert_int_equal(res->r, 0);
	validate(res);
	r1 = op(res, res->imgs[0].layer_ops[0]);
	assert_true(has_str(json_object_get(r1, "args"), "echo a\necho b\n"));
	assert_string_equal(sget(r1, "name"), "[2/5] RUN <<EOF (echo a...)");
	r2 = op(res, res->imgs[0].layer_ops[1]);
	assert_string_equal(json_string_value(json_array_get(json_object_get(r2, "args"), 0)),
			    "/dev/pipes/EOF");
	m = json_array_get(json_object_get(r2, "mounts"), 0);
	assert_string_equal(sget(m, "target"), "/dev/pipes");
	mk = json_array_get(json_object_get(op(res, sget(m, "input")), "actions"), 0);
	assert_string_equal(sget(mk, "action"), "mkfile");
	assert_string_equal(sget(mk, "mode"), "0755");
	assert_string_equal(sget(mk, "data"), "#!/usr/bin/env python3\nprint(1)\n");
	cp = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[2]), "actions"), 0);
	assert_string_equal(sget(cp, "dest"), "/etc/app.conf");
	mk = json_array_get(json_object_get(op(res, sget(cp, "from")), "actions"), 0);
	/* unquoted delimiter: variables expand, quotes stay (BuildKit) */
	assert_string_equal(sget(mk, "data"), "key=1 \"7\" set $V\n");
	assert_string_equal(hist_at(res, 0, 3), "COPY <<CONF /etc/app.conf # buildkit");
	cp = json_array_get(json_object_get(op(res, res->imgs[0].layer_ops[3]), "actions"), 0);
	mk = json_array_get(json_object_get(op(res, sget(cp, "from")), "actions"), 0);
	assert_string_equal(sget(mk, "data"), "$V\n");
	res_free(res);
}

static void test_config_instructions(void **state)
{
	struct res *res = lower_ok(
		"FROM alpine\nEXPOSE 80 53/udp 8000-8001\nVOLUME /data [\"/x\"]\nLABEL a=b \"c d\"=e\n"
		"STOPSIGNAL SIGTERM\nUSER app:grp\n"
		"HEALTHCHECK --interval=1m30s --timeout=5s --retries=3 CMD curl -f http://x/\n"
		"MAINTAINER Jane <j@x>\nONBUILD RUN echo later\nRUN id\n",
		NULL);
	json_t *c = cfg(res, 0), *hc = json_object_get(c, "Healthcheck");

	assert_non_null(json_object_get(json_object_get(c, "ExposedPorts"), "80/tcp"));
	assert_non_null(json_object_get(json_object_get(c, "ExposedPorts"), "53/udp"));
	assert_non_null(json_object_get(json_object_get(c, "ExposedPorts"), "8001/tcp"));
	assert_string_equal(hist_at(res, 0, 0), "EXPOSE [80/tcp 53/udp 8000/tcp 8001/tcp]");
	assert_non_null(json_object_get(json_object_get(c, "Volumes"), "/data"));
	assert_string_equal(json_string_value(json_object_get(json_object_get(c, "Labels"), "c d")), "e");
	assert_string_equal(sget(c, "StopSignal"), "SIGTERM");
	assert_string_equal(sget(c, "User"), "app:grp");
	assert_string_equal(sget(op(res, res->imgs[0].output), "user"), "app:grp");
	assert_int_equal(json_integer_value(json_object_get(hc, "Interval")), 90000000000LL);
	assert_int_equal(json_integer_value(json_object_get(hc, "Timeout")), 5000000000LL);
	assert_int_equal(json_integer_value(json_object_get(hc, "Retries")), 3);
	assert_string_equal(json_string_value(json_array_get(json_object_get(hc, "Test"), 0)), "CMD-SHELL");
	assert_string_equal(hist_at(res, 0, 5),
			    "HEALTHCHECK {Test:[CMD-SHELL curl -f http://x/] Interval:1m30s Timeout:5s StartPeriod:0s StartInterval:0s Retries:3}");
	assert_string_equal(sget(res->imgs[0].config, "author"), "Jane <j@x>");
	assert_true(has_str(json_object_get(c, "OnBuild"), "RUN echo later"));
	assert_layers_align(res);
	res_free(res);
	lower_fails("FROM alpine\nSTOPSIGNAL SIGNOPE\n", "'SIGNOPE' is not a signal");
	lower_fails("FROM alpine\nEXPOSE 80/xyz\n", "invalid protocol 'xyz'");
	lower_fails("FROM alpine\nHEALTHCHECK --interval=soon CMD true\n", "--interval=soon: not a duration");
}

static void test_onbuild_triggers(void **state)
{
	struct res *res = lower_ok("FROM obbase\nRUN after\n", NULL);
	json_t *trig = op(res, res->imgs[0].layer_ops[0]);

	assert_true(has_str(json_object_get(trig, "args"), "echo triggered"));
	assert_string_equal(sget(trig, "name"), "[2/3] ONBUILD RUN echo triggered");
	assert_null(json_object_get(cfg(res, 0), "OnBuild"));
	assert_int_equal(res->imgs[0].n_layer_ops, 2);
	res_free(res);

	res = lower_ok("FROM alpine AS p\nONBUILD RUN echo from-parent\nFROM p\nRUN x\n", NULL);
	assert_true(has_str(json_object_get(op(res, res->imgs[0].layer_ops[0]), "args"),
			    "echo from-parent"));
	assert_null(json_object_get(cfg(res, 0), "OnBuild"));
	res_free(res);
}

static void test_stage_inherits_state(void **state)
{
	struct res *res = lower_ok("FROM alpine AS base\nENV A=1\nARG B=2\nWORKDIR /w\nUSER u\n"
				   "FROM base\nRUN x\n",
				   NULL);
	json_t *run = op(res, res->imgs[0].output);

	assert_true(has_str(json_object_get(run, "env"), "A=1"));
	assert_true(has_str(json_object_get(run, "env"), "B=2"));
	assert_string_equal(sget(run, "cwd"), "/w");
	assert_string_equal(sget(run, "user"), "u");
	assert_string_equal(sget(run, "name"), "[stage-1 1/1] RUN x");
	assert_int_equal(res->imgs[0].n_layer_ops, 2);
	assert_layers_align(res);
	res_free(res);
}

static void test_scratch(void **state)
{
	struct res *res = lower_ok("FROM scratch\nLABEL only=labels\n", NULL);
	json_t *empty = op(res, res->imgs[0].output);

	assert_string_equal(sget(empty, "op"), "file");
	assert_null(res->imgs[0].base_op);
	assert_int_equal(res->imgs[0].n_layer_ops, 0);
	res_free(res);
	res = lower_ok("FROM scratch\nCOPY app /app\n", NULL);
	assert_null(json_object_get(op(res, res->imgs[0].output), "input"));
	assert_string_equal(sget(op(res, res->imgs[0].output), "name"), "[1/1] COPY app /app");
	assert_string_equal(hist_at(res, 0, 0), "COPY app /app # buildkit");
	res_free(res);
}

static void test_errors_name_location(void **state)
{
	lower_fails("RUN echo\nFROM alpine\n", "Dockerfile:1:1: RUN: no FROM before this instruction");
	lower_fails("FROM alpine AS a\nFROM busybox AS A\n", "Dockerfile:2:1: FROM: duplicate stage name 'a'");
	lower_fails("FROM alpine AS 1x\n", "invalid stage name '1x'");
	lower_fails("FROM alpine\nWORKDIR $NOPE\n", "Dockerfile:2:1: WORKDIR: '$NOPE' expands to an empty path");
	lower_fails("ARG IMG\nFROM $IMG\n", "Dockerfile:2:1: FROM: base name ($IMG) should not be blank");
	lower_fails("FROM --platform=windows alpine\n", "is not os/arch");
	lower_fails("FROM alpine AS a\nFROM a AS b\nCOPY --from=b /x /y\n", "must be defined before");
}

static void test_resolve_once(void **state)
{
	struct res *res = lower_ok("FROM alpine AS a\nRUN a\nFROM alpine AS b\nCOPY --from=a /x /x\n"
				   "COPY --from=alpine /etc/os-release /o\n",
				   NULL);

	assert_int_equal(resolve_count("alpine", "linux/amd64"), 1);
	res_free(res);
}

static void test_progress_names(void **state)
{
	struct res *res = lower_ok("FROM alpine AS build\nRUN 1\nRUN 2\nRUN 3\nRUN 4\nRUN 5\n"
				   "RUN 6\nRUN 7\nRUN 8\nRUN 9\nRUN 10\nENV X=1\n",
				   NULL);

	/* a single stage shows no stage name (BuildKit); the index is padded */
	assert_non_null(strstr(sget(op_named(res, "FROM", 0), "name"),
			       "[ 1/11] FROM oci-layout:///fake/alpine"));
	assert_string_equal(sget(op_named(res, "RUN 10", 0), "name"), "[11/11] RUN 10");
	res_free(res);
	res = lower_ok("FROM alpine AS build\nRUN 1\nFROM build\nRUN 2\n", NULL);
	assert_string_equal(sget(op_named(res, "RUN 1", 0), "name"), "[build 2/2] RUN 1");
	assert_string_equal(sget(op_named(res, "RUN 2", 0), "name"), "[stage-1 1/1] RUN 2");
	res_free(res);
}

static void test_fixed_platform_stage(void **state)
{
	struct topts t = { .platforms = { "linux/amd64", "linux/arm/v7" } };
	struct res *res = lower_ok("FROM --platform=linux/aarch64 alpine AS tools\nRUN make\n"
				   "FROM alpine\nCOPY --from=tools /t /t\n",
				   &t);

	assert_string_equal(sget(op_named(res, "RUN make", 0), "platform"), "linux/arm64");
	assert_string_equal(sget(res->imgs[1].config, "variant"), "v7");
	assert_int_equal(resolve_count("alpine", "linux/arm64"), 1);
	assert_int_equal(resolve_count("alpine", "linux/arm/v7"), 1);
	res_free(res);
}

static void test_exec_form_and_context(void **state)
{
	struct topts t = { .platforms = { "linux/amd64", "linux/arm64" },
			   .excludes = { "*.tmp", "!keep.tmp" } };
	struct res *res = lower_ok("FROM alpine\nRUN [\"echo\", \"$HOME\"]\nCOPY . /src\n", &t);
	json_t *run = op(res, res->imgs[0].layer_ops[0]), *ctx = op(res, "context");
	json_t *args = json_object_get(run, "args");

	assert_int_equal(json_array_size(args), 2);
	assert_string_equal(json_string_value(json_array_get(args, 1)), "$HOME");
	assert_string_equal(sget(ctx, "path"), "/ctx");
	assert_true(has_str(json_object_get(ctx, "exclude"), "!keep.tmp"));
	/* one context op serves both platforms */
	assert_int_equal(count_ops(res, "source.local"), 1);
	assert_int_equal(dop(res, "context")->n_exclude, 2);
	assert_string_equal(sget(json_array_get(json_object_get(op(res, res->imgs[1].layer_ops[1]), "actions"), 0), "src"),
			    "/.");
	assert_string_equal(sget(op_named(res, "RUN [", 1), "name"),
			    "[linux/arm64 2/3] RUN [\"echo\", \"$HOME\"]");
	res_free(res);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_single_stage_run),
		cmocka_unit_test(test_buildplatform_stage_shared),
		cmocka_unit_test(test_buildplatform_stage_with_target_arg),
		cmocka_unit_test(test_buildplatform_env_has_no_target),
		cmocka_unit_test(test_global_arg_in_from),
		cmocka_unit_test(test_arg_scoping),
		cmocka_unit_test(test_platform_args_declared),
		cmocka_unit_test(test_env_expansion),
		cmocka_unit_test(test_target),
		cmocka_unit_test(test_copy_from_name_and_index),
		cmocka_unit_test(test_copy_from_image),
		cmocka_unit_test(test_copy_from_errors),
		cmocka_unit_test(test_chown_chmod),
		cmocka_unit_test(test_link),
		cmocka_unit_test(test_copy_dest_semantics),
		cmocka_unit_test(test_workdir_relative),
		cmocka_unit_test(test_cmd_entrypoint),
		cmocka_unit_test(test_history_and_layer_chain),
		cmocka_unit_test(test_run_mounts),
		cmocka_unit_test(test_run_mount_cache_from),
		cmocka_unit_test(test_bad_mounts),
		cmocka_unit_test(test_network_and_flags),
		cmocka_unit_test(test_add_url_archive_git),
		cmocka_unit_test(test_add_git),
		cmocka_unit_test(test_heredocs),
		cmocka_unit_test(test_config_instructions),
		cmocka_unit_test(test_onbuild_triggers),
		cmocka_unit_test(test_stage_inherits_state),
		cmocka_unit_test(test_scratch),
		cmocka_unit_test(test_errors_name_location),
		cmocka_unit_test(test_resolve_once),
		cmocka_unit_test(test_progress_names),
		cmocka_unit_test(test_fixed_platform_stage),
		cmocka_unit_test(test_exec_form_and_context),
		cmocka_unit_test(test_unused_build_arg),
		cmocka_unit_test(test_syntax_directive),
		cmocka_unit_test(test_named_context_from_and_copy),
		cmocka_unit_test(test_named_context_precedence),
		cmocka_unit_test(test_context_name),
		cmocka_unit_test(test_copy_exclude),
		cmocka_unit_test(test_run_secret_env),
		cmocka_unit_test(test_run_ssh),
		cmocka_unit_test(test_run_ssh_cap),
		cmocka_unit_test(test_copy_parents),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
