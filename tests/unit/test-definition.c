/* Op graph parsing: validation errors name op and field; digests are canonical. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/parse-util.h"
#include "basic/strbuf.h"
#include "solver/definition.h"
#include "source/git.h"

static struct kiln_definition *parse_ok(const char *json)
{
	struct kiln_definition *d = NULL;
	struct kiln_error *err = NULL;
	int r = kiln_definition_parse(json, strlen(json), "g.json", "/base", "linux/amd64", &d,
				      &err);

	if (r < 0)
		fail_msg("unexpected error: %s", kiln_error_msg(err));
	assert_non_null(d);
	return d;
}

/* Parse must fail and the message must contain every given fragment. */
static void parse_fails(const char *json, ...)
{
	struct kiln_definition *d = NULL;
	struct kiln_error *err = NULL;
	const char *frag;
	va_list ap;
	int r = kiln_definition_parse(json, strlen(json), "g.json", "/base", "linux/amd64", &d,
				      &err);

	assert_true(r < 0);
	assert_null(d);
	assert_non_null(err);
	va_start(ap, json);
	while ((frag = va_arg(ap, const char *)))
		if (!strstr(err->msg, frag))
			fail_msg("error '%s' lacks '%s'", err->msg, frag);
	va_end(ap);
	kiln_error_free(err);
}

#define IMG "{\"id\":\"base\",\"op\":\"source.image\",\"ref\":\"oci-layout:///l:latest\"}"

static void test_valid_graph(void **state)
{
	struct kiln_definition *d = parse_ok(
		"{\"version\":1,\"ops\":[" IMG ","
		"{\"id\":\"ctx\",\"op\":\"source.local\",\"path\":\"ctx\",\"exclude\":[\"*.tmp\"]},"
		"{\"id\":\"run\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"sh\",\"-c\",\"true\"],"
		" \"mounts\":[{\"target\":\"/src\",\"input\":\"ctx\"},{\"target\":\"/c\",\"type\":\"cache\"},"
		"  {\"target\":\"/tmp\",\"type\":\"tmpfs\"}]},"
		"{\"id\":\"out\",\"op\":\"file\",\"input\":\"run\",\"actions\":["
		"  {\"action\":\"copy\",\"from\":\"ctx\",\"src\":\"/a\",\"dest\":\"/b/\",\"chown\":\"1:2\",\"mode\":\"0640\"},"
		"  {\"action\":\"mkfile\",\"path\":\"/v\",\"data\":\"x\"}]}"
		"],\"output\":\"out\"}");
	size_t *order, n;

	assert_int_equal(d->n_ops, 4);
	assert_string_equal(d->ops[1].local_path, "/base/ctx");
	assert_string_equal(d->ops[2].cwd, "/");
	assert_int_equal(d->ops[2].n_mounts, 3);
	assert_int_equal(d->ops[2].mounts[1].kind, KILN_DEF_MOUNT_CACHE);
	assert_string_equal(d->ops[2].mounts[1].cache_id, "/c");
	assert_int_equal(d->ops[3].actions[0].uid, 1);
	assert_int_equal(d->ops[3].actions[0].gid, 2);
	assert_int_equal(d->ops[3].actions[0].mode, 0640);
	assert_string_equal(d->ops[3].actions[0].path, "/b/");
	kiln_definition_topo(d, &order, &n);
	assert_int_equal(n, 4);
	assert_int_equal(order[n - 1], 3); /* output last */
	free(order);
	kiln_definition_free(d);
}

static void test_digest_ignores_ids_names_order(void **state)
{
	struct kiln_definition *a = parse_ok(
		"{\"version\":1,\"ops\":[" IMG ",{\"id\":\"r\",\"op\":\"exec\",\"input\":\"base\","
		"\"args\":[\"true\"],\"name\":\"first\"}],\"output\":\"r\"}");
	struct kiln_definition *b = parse_ok(
		"{\"output\":\"x\",\"ops\":[{\"args\":[\"true\"],\"op\":\"exec\",\"input\":\"img\",\"id\":\"x\","
		"\"name\":\"other\",\"cwd\":\"/./\"},"
		"{\"id\":\"img\",\"op\":\"source.image\",\"ref\":\"oci-layout:///l:latest\"}],\"version\":1}");
	struct kiln_definition *c = parse_ok(
		"{\"version\":1,\"ops\":[" IMG ",{\"id\":\"r\",\"op\":\"exec\",\"input\":\"base\","
		"\"args\":[\"false\"]}],\"output\":\"r\"}");

	assert_true(kiln_digest_eq(&a->ops[1].digest, &b->ops[0].digest));
	assert_false(kiln_digest_eq(&a->ops[1].digest, &c->ops[1].digest));
	/* The base op is shared, so its digest is too. */
	assert_true(kiln_digest_eq(&a->ops[0].digest, &c->ops[0].digest));
	kiln_definition_free(a);
	kiln_definition_free(b);
	kiln_definition_free(c);
}

static void test_platform_in_exec_not_in_file(void **state)
{
#define PLAT_GRAPH(p)                                                                  \
	"{\"version\":1,\"ops\":[" IMG ",{\"id\":\"r\",\"op\":\"exec\",\"input\":\"base\","      \
	"\"args\":[\"true\"],\"platform\":\"" p "\"},{\"id\":\"f\",\"op\":\"file\","               \
	"\"platform\":\"" p "\",\"actions\":[{\"action\":\"mkdir\",\"path\":\"/x\"}]}],\"output\":\"r\"}"
	const char *j1 = PLAT_GRAPH("linux/amd64"), *j2 = PLAT_GRAPH("linux/arm64");
	struct kiln_definition *a, *b;

	a = parse_ok(j1);
	b = parse_ok(j2);
	assert_false(kiln_digest_eq(&a->ops[1].digest, &b->ops[1].digest));
	assert_true(kiln_digest_eq(&a->ops[2].digest, &b->ops[2].digest));
	assert_string_equal(b->ops[1].platform, "linux/arm64");
	kiln_definition_free(a);
	kiln_definition_free(b);
}

static void test_copy_exclude_in_digest(void **state)
{
#define EXCL_GRAPH(x)                                                                  \
	"{\"version\":1,\"ops\":[" IMG ",{\"id\":\"f\",\"op\":\"file\",\"actions\":"        \
	"[{\"action\":\"copy\",\"from\":\"base\",\"src\":\"/d\",\"dest\":\"/o\"" x "}]}],"  \
	"\"output\":\"f\"}"
	struct kiln_definition *a = parse_ok(EXCL_GRAPH(""));
	struct kiln_definition *b = parse_ok(EXCL_GRAPH(",\"exclude\":[\"*.log\"]"));
	struct kiln_definition *c = parse_ok(EXCL_GRAPH(",\"exclude\":[\"*.tmp\"]"));
	struct kiln_definition *e = parse_ok(EXCL_GRAPH(",\"exclude\":[]"));

	assert_int_equal(b->ops[1].actions[0].n_exclude, 1);
	assert_string_equal(b->ops[1].actions[0].exclude[0], "*.log");
	assert_false(kiln_digest_eq(&a->ops[1].digest, &b->ops[1].digest));
	assert_false(kiln_digest_eq(&b->ops[1].digest, &c->ops[1].digest));
	/* no patterns: the digest of a graph written before the field */
	assert_true(kiln_digest_eq(&a->ops[1].digest, &e->ops[1].digest));
	assert_non_null(strstr(b->ops[1].form, "\"exclude\":[\"*.log\"]"));
	kiln_definition_free(b);
	kiln_definition_free(c);
	kiln_definition_free(e);
	parse_fails(EXCL_GRAPH(",\"exclude\":\"*.log\""), "op 'f'", "field 'exclude'", NULL);
	parse_fails(EXCL_GRAPH(",\"exclude\":[\"a[\"]"), "op 'f'", "field 'exclude'", NULL);
	{
		struct kiln_definition *i1 = parse_ok(EXCL_GRAPH(",\"include\":[\"*.log\"]"));

		/* include and exclude are distinct in the key */
		assert_string_equal(i1->ops[1].actions[0].include[0], "*.log");
		assert_false(kiln_digest_eq(&i1->ops[1].digest, &a->ops[1].digest));
		kiln_definition_free(i1);
	}
	parse_fails(EXCL_GRAPH(",\"include\":[\"a[\"]"), "op 'f'", "field 'include'", NULL);
	kiln_definition_free(a);
#undef EXCL_GRAPH
}

/* source.git: fields, the URL's credentials out of the form, the commit pin. */
static void test_git_source(void **state)
{
#define GIT_GRAPH(url, x)                                                              \
	"{\"version\":1,\"ops\":[{\"id\":\"g\",\"op\":\"source.git\",\"url\":\"" url "\"" x "}]," \
	"\"output\":\"g\"}"
	struct kiln_definition *a = parse_ok(GIT_GRAPH("https://h/r.git", ",\"ref\":\"v1\""));
	struct kiln_definition *b =
		parse_ok(GIT_GRAPH("https://user:s3cret@h/r.git", ",\"ref\":\"v1\""));
	struct kiln_definition *c = parse_ok(GIT_GRAPH("https://h/r.git", ",\"ref\":\"v2\""));
	struct kiln_definition *k = parse_ok(GIT_GRAPH(
		"git@h:r.git", ",\"ref\":\"main\",\"subdir\":\"/a/../b/\",\"keep_git_dir\":true"));
	struct kiln_digest pin;
	char commit[KILN_GIT_COMMIT_HEXLEN + 1];
	char *s;

	(void)state;
	assert_int_equal(a->ops[0].type, KILN_OP_SOURCE_GIT);
	assert_string_equal(a->ops[0].git_ref, "v1");
	/* the URL with credentials fetches with them; the key never sees them */
	assert_string_equal(b->ops[0].url, "https://user:s3cret@h/r.git");
	assert_null(strstr(b->ops[0].form, "s3cret"));
	assert_null(strstr(b->ops[0].form, "user"));
	assert_true(kiln_digest_eq(&a->ops[0].digest, &b->ops[0].digest));
	assert_false(kiln_digest_eq(&a->ops[0].digest, &c->ops[0].digest));
	assert_string_equal(k->ops[0].git_subdir, "b");
	assert_true(k->ops[0].keep_git_dir);
	assert_non_null(strstr(k->ops[0].form, "\"keep_git_dir\":true"));
	kiln_definition_free(a);
	kiln_definition_free(b);
	kiln_definition_free(c);
	kiln_definition_free(k);
	parse_fails(GIT_GRAPH("file:///srv/r.git", ""), "op 'g'", "field 'url'", NULL);
	parse_fails(GIT_GRAPH("/srv/r.git", ""), "field 'url'", NULL);
	parse_fails(GIT_GRAPH("ext::sh -c x", ""), "field 'url'", NULL);
	parse_fails(GIT_GRAPH("https://u:pw@h/r.git", ",\"ref\":\"--upload-pack=x\""),
		    "field 'ref'", NULL);
	parse_fails(GIT_GRAPH("https://h/r.git", ",\"checksum\":\"x\""), "checksum", NULL);
	/* the error names the URL without its password */
	{
		struct kiln_definition *d = NULL;
		struct kiln_error *err = NULL;
		const char *j = GIT_GRAPH("file://u:pw@h/r.git", "");

		assert_true(kiln_definition_parse(j, strlen(j), "g.json", "/base", "linux/amd64",
						  &d, &err) < 0);
		assert_null(strstr(err->msg, "pw"));
		kiln_error_free(err);
	}
	/* the commit travels as a pin and back */
	kiln_git_commit_to_pin("87325f6857ad445ee39f2835e3f542c57cdaf848", &pin);
	assert_int_equal(kiln_git_pin_to_commit(&pin, commit), 0);
	assert_string_equal(commit, "87325f6857ad445ee39f2835e3f542c57cdaf848");
	pin.bytes[31] = 1;
	assert_int_equal(kiln_git_pin_to_commit(&pin, commit), -EINVAL);
	assert_true(kiln_git_is_commit("87325f6857ad445ee39f2835e3f542c57cdaf848"));
	assert_false(kiln_git_is_commit("87325f6857ad445ee39f2835e3f542c57cdaf84"));
	assert_false(kiln_git_is_commit("87325F6857AD445EE39F2835E3F542C57CDAF848"));
	s = kiln_url_strip_userinfo("https://a:b@c@h:1/p@q?x=@y");
	assert_string_equal(s, "https://h:1/p@q?x=@y");
	free(s);
	s = kiln_url_strip_userinfo("git@h:r.git");
	assert_string_equal(s, "git@h:r.git");
	free(s);
#undef GIT_GRAPH
}

static void test_secret_env(void **state)
{
#define SEC_GRAPH(x)                                                                   \
	"{\"version\":1,\"ops\":[" IMG ",{\"id\":\"r\",\"op\":\"exec\",\"input\":\"base\","  \
	"\"args\":[\"true\"],\"mounts\":[{\"type\":\"secret\",\"id\":\"tok\"" x "}]}],"     \
	"\"output\":\"r\"}"
	struct kiln_definition *file = parse_ok(SEC_GRAPH(""));
	struct kiln_definition *env = parse_ok(SEC_GRAPH(",\"env\":\"TOKEN\""));
	struct kiln_definition *env2 = parse_ok(SEC_GRAPH(",\"env\":\"OTHER\""));
	struct kiln_definition *both = parse_ok(SEC_GRAPH(",\"env\":\"TOKEN\",\"target\":\"/t\""));

	assert_string_equal(file->ops[1].mounts[0].target, "/run/secrets/tok");
	assert_null(file->ops[1].mounts[0].env);
	assert_null(env->ops[1].mounts[0].target); /* no file */
	assert_string_equal(env->ops[1].mounts[0].env, "TOKEN");
	assert_string_equal(both->ops[1].mounts[0].target, "/t");
	assert_string_equal(both->ops[1].mounts[0].env, "TOKEN");
	/* how the secret is given is part of the key */
	assert_false(kiln_digest_eq(&file->ops[1].digest, &env->ops[1].digest));
	assert_false(kiln_digest_eq(&env->ops[1].digest, &env2->ops[1].digest));
	assert_false(kiln_digest_eq(&env->ops[1].digest, &both->ops[1].digest));
	kiln_definition_free(file);
	kiln_definition_free(env);
	kiln_definition_free(env2);
	kiln_definition_free(both);
	parse_fails(SEC_GRAPH(",\"env\":\"A=B\""), "op 'r'", "field 'env'", NULL);
	parse_fails(SEC_GRAPH(",\"env\":\"\""), "op 'r'", "field 'env'", NULL);
	parse_fails(SEC_GRAPH(",\"env\":3"), "op 'r'", "field 'env'", NULL);
#undef SEC_GRAPH
}

/* Each ssh mount costs the worker a thread and fds: 16 per exec at most. */
static void test_ssh_cap(void **state)
{
	_cleanup_strbuf_ struct kiln_strbuf g = KILN_STRBUF_INIT(1 << 16);
	struct kiln_definition *d;
	size_t i, k;

	(void)state;
	for (k = KILN_DEF_MAX_SSH_MOUNTS; k <= KILN_DEF_MAX_SSH_MOUNTS + 1; k++) {
		kiln_strbuf_reset(&g);
		kiln_strbuf_adds(&g, "{\"version\":1,\"ops\":[" IMG ",{\"id\":\"r\",\"op\":\"exec\","
				     "\"input\":\"base\",\"args\":[\"true\"],\"mounts\":[");
		for (i = 0; i < k; i++)
			kiln_strbuf_addf(&g, "%s{\"type\":\"ssh\",\"id\":\"k%zu\",\"target\":\"/s%zu\"}",
					 i ? "," : "", i, i);
		kiln_strbuf_adds(&g, "]}],\"output\":\"r\"}");
		if (k == KILN_DEF_MAX_SSH_MOUNTS) {
			d = parse_ok(kiln_strbuf_str(&g));
			assert_int_equal(d->ops[1].n_mounts, KILN_DEF_MAX_SSH_MOUNTS);
			kiln_definition_free(d);
		} else {
			parse_fails(kiln_strbuf_str(&g), "op 'r'", "field 'mounts'",
				    "more than 16 ssh mounts", NULL);
		}
	}
}

static void test_malformed_json(void **state)
{
	parse_fails("{\"version\":1,\"ops\":[", "g.json:", "malformed JSON", NULL);
	parse_fails("[]", "expected a JSON object", NULL);
	parse_fails("{\"version\":2,\"ops\":[" IMG "],\"output\":\"base\"}", "version", NULL);
	parse_fails("{\"version\":1,\"ops\":[" IMG "],\"output\":\"base\",\"extra\":1}",
		    "unknown top-level field 'extra'", NULL);
	parse_fails("{\"version\":1,\"version\":1}", "malformed JSON", NULL);
}

static void test_unknown_op_and_field(void **state)
{
	parse_fails("{\"version\":1,\"ops\":[{\"id\":\"a\",\"op\":\"teleport\"}],\"output\":\"a\"}",
		    "op 'a'", "ops[0]", "unknown op type 'teleport'", NULL);
	parse_fails("{\"version\":1,\"ops\":[{\"id\":\"a\",\"op\":\"source.image\",\"ref\":\"oci-layout:///x\","
		    "\"colour\":\"red\"}],\"output\":\"a\"}",
		    "op 'a'", "field 'colour'", "unknown field", NULL);
	parse_fails("{\"version\":1,\"ops\":[" IMG ",{\"id\":\"r\",\"op\":\"exec\",\"input\":\"base\","
		    "\"args\":[\"x\"],\"mounts\":[{\"target\":\"/m\",\"type\":\"cache\",\"bogus\":1}]}],"
		    "\"output\":\"r\"}",
		    "op 'r'", "field 'bogus'", "unknown field in a mount", NULL);
}

static void test_wrong_types(void **state)
{
	parse_fails("{\"version\":1,\"ops\":[" IMG ",{\"id\":\"r\",\"op\":\"exec\",\"input\":\"base\","
		    "\"args\":\"sh -c true\"}],\"output\":\"r\"}",
		    "op 'r'", "field 'args'", "array of strings", NULL);
	parse_fails("{\"version\":1,\"ops\":[" IMG ",{\"id\":\"r\",\"op\":\"exec\",\"input\":\"base\","
		    "\"args\":[\"x\"],\"env\":[\"NOEQUALS\"]}],\"output\":\"r\"}",
		    "field 'env'", "KEY=VALUE", NULL);
	parse_fails("{\"version\":1,\"ops\":[" IMG ",{\"id\":\"f\",\"op\":\"file\",\"input\":\"base\","
		    "\"actions\":[{\"action\":\"mkdir\",\"path\":\"relative\"}]}],\"output\":\"f\"}",
		    "op 'f'", "field 'path'", "absolute", NULL);
	parse_fails("{\"version\":1,\"ops\":[" IMG ",{\"id\":\"f\",\"op\":\"file\",\"input\":\"base\","
		    "\"actions\":[{\"action\":\"mkdir\",\"path\":\"/x\",\"mode\":\"9\"}]}],\"output\":\"f\"}",
		    "field 'mode'", "octal", NULL);
	parse_fails("{\"version\":1,\"ops\":[" IMG ",{\"id\":\"f\",\"op\":\"file\",\"input\":\"base\","
		    "\"actions\":[{\"action\":\"copy\",\"from\":\"base\",\"src\":\"/a\",\"dest\":\"/b\","
		    "\"chown\":\"1000:\"}]}],\"output\":\"f\"}",
		    "field 'chown'", "empty user or group", NULL);
	parse_fails("{\"version\":1,\"ops\":[{\"id\":\"bad id!\",\"op\":\"merge\"}],\"output\":\"x\"}",
		    "ops[0]", "field 'id'", NULL);
}

static void test_dangling_and_cycle(void **state)
{
	parse_fails("{\"version\":1,\"ops\":[{\"id\":\"r\",\"op\":\"exec\",\"input\":\"ghost\","
		    "\"args\":[\"x\"]}],\"output\":\"r\"}",
		    "op 'r'", "field 'input'", "'ghost' does not name an op", NULL);
	parse_fails("{\"version\":1,\"ops\":[" IMG "],\"output\":\"nothing\"}",
		    "field 'output'", "'nothing' does not name an op", NULL);
	parse_fails("{\"version\":1,\"ops\":[" IMG ",{\"id\":\"r\",\"op\":\"exec\",\"input\":\"base:3\","
		    "\"args\":[\"x\"]}],\"output\":\"r\"}",
		    "no output 3", NULL);
	parse_fails("{\"version\":1,\"ops\":["
		    "{\"id\":\"a\",\"op\":\"exec\",\"input\":\"b\",\"args\":[\"x\"]},"
		    "{\"id\":\"b\",\"op\":\"exec\",\"input\":\"c\",\"args\":[\"x\"]},"
		    "{\"id\":\"c\",\"op\":\"exec\",\"input\":\"a\",\"args\":[\"x\"]}],\"output\":\"a\"}",
		    "cycle", "'a' -> 'b' -> 'c' -> 'a'", NULL);
	parse_fails("{\"version\":1,\"ops\":[" IMG "," IMG "],\"output\":\"base\"}",
		    "duplicate op id 'base'", NULL);
}

static void test_issue3_fields(void **state)
{
	struct kiln_definition *d = parse_ok(
		"{\"version\":1,\"ops\":[" IMG ","
		"{\"id\":\"dl\",\"op\":\"source.http\",\"url\":\"http://127.0.0.1:9/x/tool.tgz?raw=1\"},"
		"{\"id\":\"dl2\",\"op\":\"source.http\",\"url\":\"https://h/f.bin\",\"checksum\":"
		"\"sha256:0000000000000000000000000000000000000000000000000000000000000000\"},"
		"{\"id\":\"r\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"x\"],\"mounts\":["
		"{\"type\":\"secret\",\"id\":\"tok\"},{\"type\":\"cache\",\"target\":\"/c\",\"sharing\":\"locked\",\"mode\":\"0700\",\"uid\":5}]},"
		"{\"id\":\"f\",\"op\":\"file\",\"input\":\"r\",\"actions\":[{\"action\":\"copy\",\"from\":\"dl\","
		"\"src\":\"/*\",\"dest\":\"/o/\",\"chown\":\"app:staff\",\"extract\":true}]}"
		"],\"output\":\"f\",\"outputs\":[\"r\",\"dl2\"]}");
	size_t *order, n;

	assert_string_equal(d->ops[1].filename, "index.html"); /* a query: no name */
	assert_int_equal(d->ops[1].http_mode, 0600);
	assert_string_equal(d->ops[2].filename, "f.bin");
	assert_true(kiln_digest_is_set(&d->ops[2].checksum));
	assert_string_equal(d->ops[3].mounts[0].target, "/run/secrets/tok");
	assert_int_equal(d->ops[3].mounts[0].kind, KILN_DEF_MOUNT_SECRET);
	assert_int_equal(d->ops[3].mounts[0].mode, 0400);
	assert_int_equal(d->ops[3].mounts[1].sharing, KILN_SHARING_LOCKED);
	assert_int_equal(d->ops[3].mounts[1].mode, 0700);
	assert_int_equal(d->ops[3].mounts[1].uid, 5);
	assert_string_equal(d->ops[4].actions[0].user, "app");
	assert_string_equal(d->ops[4].actions[0].group, "staff");
	assert_true(d->ops[4].actions[0].extract);
	assert_int_equal(d->n_outputs, 2);
	kiln_definition_topo(d, &order, &n);
	assert_int_equal(n, 5); /* dl2 is reached through "outputs" */
	free(order);
	kiln_definition_free(d);
	parse_fails("{\"version\":1,\"ops\":[{\"id\":\"h\",\"op\":\"source.http\",\"url\":\"ftp://x/y\"}],\"output\":\"h\"}",
		    "op 'h'", "field 'url'", "http", NULL);
	parse_fails("{\"version\":1,\"ops\":[{\"id\":\"h\",\"op\":\"source.http\",\"url\":\"http://x/y\",\"checksum\":\"md5:1\"}],\"output\":\"h\"}",
		    "field 'checksum'", NULL);
	parse_fails("{\"version\":1,\"ops\":[" IMG "],\"output\":\"base\",\"outputs\":[\"ghost\"]}",
		    "field 'outputs'", NULL);
}

/* A cache mount seeded from an input: an edge of the exec, in the form only then. */
static void test_cache_seed(void **state)
{
#define SEED_DEF(M)                                                                      \
	"{\"version\":1,\"ops\":[" IMG ","                                                 \
	"{\"id\":\"s\",\"op\":\"file\",\"actions\":[{\"action\":\"mkdir\",\"path\":\"/o\"}]}," \
	"{\"id\":\"r\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"x\"],\"mounts\":[" M "]}" \
	"],\"output\":\"r\"}"
	struct kiln_definition *a = parse_ok(SEED_DEF("{\"type\":\"cache\",\"target\":\"/c\"}"));
	struct kiln_definition *b = parse_ok(SEED_DEF(
		"{\"type\":\"cache\",\"target\":\"/c\",\"input\":\"s\",\"source\":\"/o/\"}"));
	struct kiln_definition *c = parse_ok(SEED_DEF(
		"{\"type\":\"cache\",\"target\":\"/c\",\"input\":\"s\"}"));
	const struct kiln_op *ra = &a->ops[2], *rb = &b->ops[2], *rc = &c->ops[2];

	assert_int_equal(ra->mounts[0].input, -1);
	assert_null(ra->mounts[0].source);
	assert_null(strstr(ra->form, "\"input\":\"$1\""));
	assert_int_equal(rb->n_inputs, 2);
	assert_int_equal(rb->mounts[0].input, 1);
	assert_int_equal(rb->inputs[1].op, 1);
	assert_string_equal(rb->mounts[0].source, "o");
	assert_string_equal(rc->mounts[0].source, "");
	/* seeding changes the op's identity; unseeded caches keep theirs */
	assert_false(kiln_digest_eq(&ra->digest, &rb->digest));
	assert_false(kiln_digest_eq(&rb->digest, &rc->digest));
	kiln_definition_free(a);
	kiln_definition_free(b);
	kiln_definition_free(c);
	parse_fails(SEED_DEF("{\"type\":\"cache\",\"target\":\"/c\",\"source\":\"/o\"}"),
		    "op 'r'", "field 'source'", "needs an input", NULL);
	parse_fails(SEED_DEF("{\"type\":\"cache\",\"target\":\"/c\",\"input\":\"nope\"}"),
		    "field 'input'", NULL);
#undef SEED_DEF
}

static void test_deep_graph(void **state)
{
	/* 20,000 chained file ops: no recursion limits in validation. */
	size_t n = 20000, i, cap = n * 128 + 256, len = 0;
	char *j = malloc(cap);
	struct kiln_definition *d;

	len += (size_t)snprintf(j + len, cap - len,
				"{\"version\":1,\"ops\":[{\"id\":\"o0\",\"op\":\"file\",\"actions\":"
				"[{\"action\":\"mkdir\",\"path\":\"/d\"}]}");
	for (i = 1; i < n; i++)
		len += (size_t)snprintf(j + len, cap - len,
					",{\"id\":\"o%zu\",\"op\":\"file\",\"input\":\"o%zu\",\"actions\":"
					"[{\"action\":\"mkfile\",\"path\":\"/d/f\",\"data\":\"%zu\"}]}",
					i, i - 1, i);
	snprintf(j + len, cap - len, "],\"output\":\"o%zu\"}", n - 1);
	d = parse_ok(j);
	assert_int_equal(d->n_ops, n);
	kiln_definition_free(d);
	free(j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_graph),
		cmocka_unit_test(test_digest_ignores_ids_names_order),
		cmocka_unit_test(test_platform_in_exec_not_in_file),
		cmocka_unit_test(test_copy_exclude_in_digest),
		cmocka_unit_test(test_git_source),
		cmocka_unit_test(test_secret_env),
		cmocka_unit_test(test_ssh_cap),
		cmocka_unit_test(test_malformed_json),
		cmocka_unit_test(test_unknown_op_and_field),
		cmocka_unit_test(test_wrong_types),
		cmocka_unit_test(test_dangling_and_cycle),
		cmocka_unit_test(test_issue3_fields),
		cmocka_unit_test(test_cache_seed),
		cmocka_unit_test(test_deep_graph),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
