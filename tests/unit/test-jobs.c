/*
 * kiln-worker's job service (src/agent/jobs.h), in-process: a source
 * store served by a peer server, a real worker with the job route on a
 * second server, jobs POSTed with the project's HTTP client. The exec
 * cases run busybox through the real runc: needs root and runc, and fails
 * without them (like test-exec).
 */
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/platform.h"
#include "cas/tree.h"
#include "agent/jobs.h"
#include "proto/http-client.h"
#include "proto/http-server.h"
#include "solver/definition.h"
#include "solver/job.h"
#include "peer/peer.h"
#include "worker/worker.h"

#include "test-util.h"

#define TOKEN "worker-token-for-tests"

static const char *const applets[] = { "sh", "echo", "cat", "yes", "head", "sleep", "printf", "tr" };

struct state {
	char *dir, *inventory;
	struct kiln_store *src;          /* the source machine's store */
	struct kiln_http_server *src_http;
	struct kiln_peer_server *src_peer;
	struct kiln_worker *w;           /* the worker under test */
	struct kiln_http_server *http;
	struct kiln_jobs *jobs;
	struct kiln_http_client *cli;
	char *jobs_url, *platform;
	struct kiln_definition *def;     /* the graph, parsed here for op indexes */
	struct kiln_digest graph, a, b, base;
};

static struct state S;

/* ---- fixture ---- */

static void write_text(const char *dir, const char *rel, const char *text)
{
	_cleanup_free_ char *p = kiln_path_join(dir, rel);

	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, p, text, strlen(text), 0644,
						   false), 0);
}

static void import(const char *dir, struct kiln_digest *out)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(kiln_tree_from_dir(S.src, fd, NULL, out, NULL), 0);
	close(fd);
}

/* Context a (a.txt, same.txt), b (b.txt, same.txt) and a busybox rootfs. */
static void make_trees(void)
{
	_cleanup_free_ char *a = kiln_path_join(S.dir, "a"), *b = kiln_path_join(S.dir, "b");
	_cleanup_free_ char *base = kiln_path_join(S.dir, "base");
	_cleanup_free_ char *bin = kiln_path_join(base, "bin");
	int r;

	assert_int_equal(kiln_mkdir_p(a, 0755), 0);
	assert_int_equal(kiln_mkdir_p(b, 0755), 0);
	write_text(a, "a.txt", "A");
	write_text(a, "same.txt", "from a");
	write_text(b, "b.txt", "B");
	write_text(b, "same.txt", "from b");
	import(a, &S.a);
	import(b, &S.b);
	r = test_install_busybox(bin, applets, sizeof(applets) / sizeof(applets[0]));
	if (r == -ENOENT)
		fail_msg("/bin/busybox is missing (install busybox-static)");
	assert_int_equal(r, 0);
	import(base, &S.base);
}

static const char graph_fmt[] =
	"{\"version\":1,\"platform\":\"%s\",\"ops\":["
	"{\"id\":\"a\",\"op\":\"source.local\",\"path\":\"/ctx/a\"},"
	"{\"id\":\"b\",\"op\":\"source.local\",\"path\":\"/ctx/b\"},"
	"{\"id\":\"base\",\"op\":\"source.local\",\"path\":\"/ctx/base\"},"
	"{\"id\":\"f\",\"op\":\"file\",\"actions\":["
	" {\"action\":\"mkdir\",\"path\":\"/d\"},"
	" {\"action\":\"mkfile\",\"path\":\"/d/new.txt\",\"data\":\"made\"},"
	" {\"action\":\"copy\",\"from\":\"a\",\"src\":\"/a.txt\",\"dest\":\"/d/a.txt\"}]},"
	"{\"id\":\"m\",\"op\":\"merge\",\"inputs\":[\"a\",\"b\"]},"
	"{\"id\":\"bad\",\"op\":\"file\",\"actions\":["
	" {\"action\":\"copy\",\"from\":\"a\",\"src\":\"/no-such-file\",\"dest\":\"/x\"}]},"
	"{\"id\":\"run\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"sh\",\"-c\","
	" \"echo hello-out; echo hello-err >&2; echo data > /made\"]},"
	"{\"id\":\"fail\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"sh\",\"-c\","
	" \"echo before-fail; exit 3\"]},"
	"{\"id\":\"loud\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"sh\",\"-c\","
	" \"yes 0123456789abcdef | head -c 3000000; echo; echo END-MARK\"]},"
	"{\"id\":\"secret\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"cat\",\"/run/secrets/s1\"],"
	" \"mounts\":[{\"type\":\"secret\",\"id\":\"s1\",\"required\":true}]},"
	"{\"id\":\"binary\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"printf\","
	" \"a\\\\377b\\\\000c\\\\342\\\\202\"]},"
	"{\"id\":\"slow\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"sleep\",\"1\"]},"
	"{\"id\":\"live\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"sh\",\"-c\","
	" \"echo first; sleep 1; echo second >&2; echo third\"]},"
	"{\"id\":\"ctl\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"sh\",\"-c\","
	" \"yes $(printf '\\\\001') | tr -d '\\\\n' | head -c 3000000; sleep 1\"]},"
	"{\"id\":\"long\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"sleep\",\"60\"]},"
	"{\"id\":\"split\",\"op\":\"exec\",\"input\":\"base\",\"args\":[\"sh\",\"-c\","
	" \"printf 'caf\\\\303'; sleep 1; printf '\\\\251\\\\n'\"]}"
	"],\"output\":\"m\",\"outputs\":[\"f\",\"bad\",\"run\",\"fail\",\"loud\",\"secret\",\"binary\",\"slow\",\"live\",\"ctl\",\"long\",\"split\"]}";

static void make_graph(void)
{
	_cleanup_free_ char *text = xasprintf(graph_fmt, S.platform);
	_cleanup_error_ struct kiln_error *err = NULL;

	if (kiln_definition_parse(text, strlen(text), "graph", "/", S.platform, &S.def, &err) < 0)
		fail_msg("graph: %s", kiln_error_msg(err));
	assert_int_equal(kiln_store_put_buf(S.src, text, strlen(text), &S.graph, NULL), 0);
}

static void serve_source(void)
{
	struct kiln_http_server_options o = { .listen = "127.0.0.1:0", .token = TOKEN,
					      .stop_grace_ms = 500 };
	struct kiln_store_options so = { .durable = false };
	_cleanup_free_ char *cas = kiln_path_join(S.dir, "src-cas");

	assert_int_equal(kiln_store_open(cas, &so, &S.src, NULL), 0);
	assert_int_equal(kiln_http_server_new(&o, &S.src_http, NULL), 0);
	assert_int_equal(kiln_peer_server_new(S.src_http, S.src, NULL, &S.src_peer, NULL), 0);
	assert_int_equal(kiln_http_server_start(S.src_http, NULL), 0);
}

static void serve_worker(void)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *wroot = kiln_path_join(S.dir, "worker");
	struct kiln_worker_options wo = { .root = wroot };
	struct kiln_http_server_options o = { .listen = "127.0.0.1:0", .token = TOKEN,
					      .stop_grace_ms = 500 };
	struct kiln_jobs_options jo = { .token = TOKEN };

	if (kiln_worker_open(&wo, &S.w, &err) < 0)
		fail_msg("worker open: %s", kiln_error_msg(err));
	S.inventory = kiln_path_join(kiln_worker_root(S.w), "inventory");
	assert_int_equal(kiln_http_server_new(&o, &S.http, NULL), 0);
	jo.http = S.http;
	jo.worker = S.w;
	jo.inventory_path = S.inventory;
	if (kiln_jobs_new(&jo, &S.jobs, &err) < 0)
		fail_msg("jobs: %s", kiln_error_msg(err));
	assert_int_equal(kiln_http_server_start(S.http, NULL), 0);
	S.jobs_url = xasprintf("%s/v1/jobs", kiln_http_server_url(S.http));
}

static int setup(void **st)
{
	char tmpl[] = "/var/tmp/kiln-jobs-XXXXXX";

	if (geteuid() != 0)
		fail_msg("test-jobs must run as root (a worker: runc, overlay mounts)");
	if (access("/usr/sbin/runc", X_OK) != 0 && access("/usr/bin/runc", X_OK) != 0)
		fail_msg("runc is not installed");
	assert_non_null(mkdtemp(tmpl));
	S.dir = xstrdup(tmpl);
	S.platform = kiln_platform_native();
	serve_source();
	make_trees();
	make_graph();
	serve_worker();
	S.cli = kiln_http_client_new(NULL);
	return 0;
}

static int teardown(void **st)
{
	kiln_http_server_free(S.http);
	kiln_jobs_free(S.jobs);
	kiln_worker_free(S.w);
	kiln_http_server_free(S.src_http);
	kiln_peer_server_free(S.src_peer);
	kiln_store_free(S.src);
	kiln_http_client_free(S.cli);
	kiln_definition_free(S.def);
	assert_int_equal(kiln_rm_rf(S.dir), 0);
	free(S.dir);
	free(S.inventory);
	free(S.jobs_url);
	free(S.platform);
	return 0;
}

/* ---- helpers ---- */

static size_t op_index(const char *id)
{
	size_t i;

	for (i = 0; i < S.def->n_ops; i++)
		if (!strcmp(S.def->ops[i].id, id))
			return i;
	fail_msg("no op %s", id);
	return 0;
}

static json_t *digests(const struct kiln_digest *d, size_t n)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; i < n; i++)
		json_array_append_new(a, json_string(KILN_DIGEST_STR(&d[i])));
	return a;
}

/* A job of op id on inputs, the source server as its one source. */
static json_t *job(const char *id, const struct kiln_digest *inputs, size_t n)
{
	return json_pack("{s:s, s:s, s:I, s:o, s:n, s:[], s:[{s:s}]}", "graph",
			 KILN_DIGEST_STR(&S.graph), "platform", S.platform, "op",
			 (json_int_t)op_index(id), "inputs", digests(inputs, n), "pin", "chain",
			 "sources", "url", kiln_http_server_url(S.src_http));
}

/* POST body (reference taken) with token; the status, *reply the JSON answer. */
static long post(json_t *body, const char *token, json_t **reply)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_http_call call = {
		.method = "POST", .url = S.jobs_url, .token = token, .json = body,
		.limit = 16u << 20, .timeout_ms = 120000, .low_speed_time_s = 600,
	};
	struct kiln_http_result res = { 0 };
	long status;

	if (kiln_http_client_do(S.cli, &call, &res, &err) < 0)
		fail_msg("POST %s: %s", S.jobs_url, kiln_error_msg(err));
	json_decref(body);
	*reply = json_loadb(res.body ? res.body : "", res.body_len, 0, NULL);
	if (!*reply)
		fail_msg("HTTP %ld: not JSON: %.*s", res.status, (int)res.body_len,
			 res.body ? res.body : "");
	status = res.status;
	kiln_http_result_release(&res);
	return status;
}

/* A string member of reply (fails when absent). */
static const char *str(json_t *reply, const char *key)
{
	const char *s = json_string_value(json_object_get(reply, key));

	if (!s)
		fail_msg("answer has no string \"%s\": %s", key,
			 json_dumps(reply, JSON_COMPACT));
	return s;
}

/* Expect status and, in "error", needle. */
static void expect_error(json_t *body, const char *token, long status, const char *needle)
{
	json_t *reply = NULL;
	long got = post(body, token, &reply);

	if (got != status || !strstr(str(reply, "error"), needle))
		fail_msg("expected %ld naming '%s', got %ld: %s", status, needle, got,
			 json_dumps(reply, JSON_COMPACT));
	json_decref(reply);
}

static uint64_t pulled_bytes(json_t *reply)
{
	json_t *a = json_object_get(reply, "pulled"), *v;
	uint64_t sum = 0;
	size_t i;

	assert_true(json_is_array(a));
	assert_int_equal(json_array_size(a), 1);
	json_array_foreach(a, i, v) {
		assert_string_equal(json_string_value(json_object_get(v, "url")),
				    kiln_http_server_url(S.src_http));
		assert_true(json_is_integer(json_object_get(v, "bytes")));
		sum += (uint64_t)json_integer_value(json_object_get(v, "bytes"));
	}
	return sum;
}

static void result_of(json_t *reply, struct kiln_digest *out)
{
	assert_int_equal(kiln_digest_parse(str(reply, "result"), out), 0);
}

/* The file at path in tree (worker's store) holds want (NULL: any). */
static void expect_file(const struct kiln_digest *tree, const char *path, const char *want)
{
	struct kiln_store *st = kiln_worker_store(S.w);
	struct kiln_tree_entry e = { 0 };
	_cleanup_free_ char *data = NULL;
	size_t len = 0;

	if (kiln_tree_lookup(st, tree, path, &e, NULL) < 0)
		fail_msg("%s: no %s", KILN_DIGEST_STR(tree), path);
	assert_int_equal(e.type, KILN_ENTRY_FILE);
	if (!want) {
		kiln_tree_entry_release(&e);
		return;
	}
	assert_int_equal(kiln_store_read(st, &e.digest, 1 << 20, &data, &len, NULL), 0);
	kiln_tree_entry_release(&e);
	assert_int_equal(len, strlen(want));
	assert_memory_equal(data, want, len);
}

static bool inventory_lists(const struct kiln_digest *d)
{
	_cleanup_free_ char *text = NULL;
	size_t len;

	assert_int_equal(kiln_read_file_at(AT_FDCWD, S.inventory, 64 << 20, &text, &len), 0);
	return strstr(text, KILN_DIGEST_STR(d)) != NULL;
}

/* ---- tests ---- */

/* A file op pulls its input, then a second one pulls nothing. */
static void test_file_op(void **st)
{
	struct kiln_digest r1, r2;
	json_t *reply = NULL;

	assert_false(kiln_store_has(kiln_worker_store(S.w), &S.a));
	assert_int_equal(post(job("f", &S.a, 1), TOKEN, &reply), 200);
	result_of(reply, &r1);
	assert_true(pulled_bytes(reply) > 0);
	assert_true(json_integer_value(json_object_get(reply, "size")) > 0);
	assert_string_equal(str(reply, "log"), "");
	assert_true(json_is_null(json_object_get(reply, "meta")));
	json_decref(reply);
	expect_file(&r1, "d/new.txt", "made");
	expect_file(&r1, "d/a.txt", "A");
	assert_true(kiln_store_has(kiln_worker_store(S.w), &S.a));
	assert_true(inventory_lists(&r1));
	assert_true(inventory_lists(&S.a));

	assert_int_equal(post(job("f", &S.a, 1), TOKEN, &reply), 200);
	result_of(reply, &r2);
	assert_int_equal(pulled_bytes(reply), 0);
	json_decref(reply);
	assert_true(kiln_digest_eq(&r1, &r2));
}

static void test_merge(void **st)
{
	struct kiln_digest in[2] = { S.a, S.b }, r;
	json_t *reply = NULL;

	assert_int_equal(post(job("m", in, 2), TOKEN, &reply), 200);
	result_of(reply, &r);
	json_decref(reply);
	expect_file(&r, "a.txt", "A");
	expect_file(&r, "b.txt", "B");
	expect_file(&r, "same.txt", "from b"); /* later inputs win */
	assert_true(inventory_lists(&r));
	assert_true(inventory_lists(&S.b));
}

/* An input held nowhere: 409 naming it and each source, "missing" = it. */
static void test_missing_input(void **st)
{
	struct kiln_digest gone;
	json_t *body, *reply = NULL;
	const char *msg;

	kiln_digest_buf("held by nobody", 14, &gone);
	body = job("f", &gone, 1);
	/* A dead source first: skipped, and named too. */
	json_array_insert_new(json_object_get(body, "sources"), 0,
			      json_pack("{s:s}", "url", "http://127.0.0.1:1"));
	assert_int_equal(post(body, TOKEN, &reply), 409);
	assert_string_equal(str(reply, "missing"), KILN_DIGEST_STR(&gone));
	msg = str(reply, "error");
	assert_non_null(strstr(msg, KILN_DIGEST_STR(&gone)));
	assert_non_null(strstr(msg, "http://127.0.0.1:1"));
	assert_non_null(strstr(msg, kiln_http_server_url(S.src_http)));
	json_decref(reply);
	assert_false(inventory_lists(&gone));
}

/* The step fails: 422 naming the path; never a 409. */
static void test_copy_missing(void **st)
{
	expect_error(job("bad", &S.a, 1), TOKEN, 422, "no-such-file");
}

static void test_bad_requests(void **st)
{
	struct kiln_digest two[2] = { S.a, S.b }, absent;
	json_t *body;

	body = job("f", &S.a, 1);
	json_object_set_new(body, "graph", json_string("sha256:1234"));
	expect_error(body, TOKEN, 400, "\"graph\"");
	expect_error(job("f", two, 2), TOKEN, 400, "\"inputs\"");
	expect_error(job("m", &S.a, 1), TOKEN, 400, "\"inputs\"");
	body = job("f", &S.a, 1);
	json_object_set_new(body, "op", json_integer(9999));
	expect_error(body, TOKEN, 400, "\"op\"");
	body = job("f", &S.a, 1);
	json_object_set_new(body, "op", json_integer(-1));
	expect_error(body, TOKEN, 400, "\"op\"");
	body = job("f", &S.a, 1);
	json_object_set_new(body, "op", json_string("f"));
	expect_error(body, TOKEN, 400, "\"op\"");
	body = job("f", &S.a, 1);
	json_array_set_new(json_object_get(body, "inputs"), 0, json_string("sha256:zz"));
	expect_error(body, TOKEN, 400, "\"inputs\"[0]");
	body = job("f", &S.a, 1);
	json_object_del(body, "platform");
	expect_error(body, TOKEN, 400, "\"platform\"");
	body = job("f", &S.a, 1);
	json_object_set_new(body, "pin", json_string("nope"));
	expect_error(body, TOKEN, 400, "\"pin\"");
	body = job("f", &S.a, 1);
	json_object_set_new(body, "sources", json_pack("[{s:s}]", "url", "ftp://x"));
	expect_error(body, TOKEN, 400, "\"sources\"[0]");
	body = job("f", &S.a, 1);
	json_object_set_new(body, "secrets", json_pack("{s:s}", "s1", "not base64!"));
	expect_error(body, TOKEN, 400, "\"secrets\"");
	/* A source.local job must carry its pin. */
	expect_error(job("a", NULL, 0), TOKEN, 400, "\"pin\"");
	/* A graph held by no source: 502 naming it. */
	kiln_digest_buf("no such graph", 13, &absent);
	body = job("f", &S.a, 1);
	json_object_set_new(body, "graph", json_string(KILN_DIGEST_STR(&absent)));
	expect_error(body, TOKEN, 502, KILN_DIGEST_STR(&absent));
	/* The running count came back to zero after all of these. */
	assert_int_equal(kiln_jobs_running(S.jobs), 0);
}

static void test_auth(void **st)
{
	struct kiln_digest gone;

	kiln_digest_buf("never pulled", 12, &gone);
	expect_error(job("f", &gone, 1), NULL, 401, "");
	expect_error(job("f", &gone, 1), "wrong-token", 401, "");
	assert_false(kiln_store_has(kiln_worker_store(S.w), &gone));
}

/* The file survives reopening; junk, duplicates and lost trees drop out. */
static void test_inventory_reopen(void **st)
{
	_cleanup_free_ char *copy = kiln_path_join(S.dir, "inventory-copy");
	_cleanup_free_ char *text = NULL, *junk = NULL, *after = NULL;
	struct kiln_inventory *inv = NULL;
	struct kiln_digest lost, r;
	json_t *reply = NULL, *newest;
	size_t len, n;

	assert_int_equal(post(job("f", &S.a, 1), TOKEN, &reply), 200);
	result_of(reply, &r);
	json_decref(reply);
	assert_int_equal(kiln_inventory_open(S.inventory, kiln_worker_store(S.w), &inv, NULL), 0);
	assert_true(kiln_inventory_has(inv, &r));
	assert_true(kiln_inventory_has(inv, &S.a));
	n = kiln_inventory_size(inv);
	assert_int_equal(n, kiln_inventory_size(kiln_jobs_inventory(S.jobs)));
	newest = kiln_inventory_json(inv, 1);
	assert_int_equal(json_array_size(newest), 1);
	json_decref(newest);
	kiln_inventory_free(inv);

	kiln_digest_buf("a tree this store never had", 27, &lost);
	assert_int_equal(kiln_read_file_at(AT_FDCWD, S.inventory, 1 << 20, &text, &len), 0);
	junk = xasprintf("%sgarbage\n%s\n%s\nsha256:0123", text, KILN_DIGEST_STR(&lost),
			 KILN_DIGEST_STR(&r));
	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, copy, junk, strlen(junk), 0644,
						   false), 0);
	assert_int_equal(kiln_inventory_open(copy, kiln_worker_store(S.w), &inv, NULL), 0);
	assert_int_equal(kiln_inventory_size(inv), n);
	assert_false(kiln_inventory_has(inv, &lost));
	assert_int_equal(kiln_inventory_add(inv, &lost), 0);
	assert_int_equal(kiln_inventory_add(inv, &lost), 0); /* listed once */
	assert_int_equal(kiln_inventory_size(inv), n + 1);
	newest = kiln_inventory_json(inv, 1);
	assert_string_equal(json_string_value(json_array_get(newest, 0)), KILN_DIGEST_STR(&lost));
	json_decref(newest);
	kiln_inventory_free(inv);
	/* Rewritten compacted, then appended to. */
	assert_int_equal(kiln_read_file_at(AT_FDCWD, copy, 1 << 20, &after, &len), 0);
	assert_int_equal(len, (n + 1) * (KILN_DIGEST_STRLEN));
	assert_null(strstr(after, "garbage"));
}

/* An exec: both streams in the log, the result holds what it wrote. */
static void test_exec(void **st)
{
	struct kiln_digest r;
	json_t *reply = NULL;
	const char *log;

	assert_int_equal(post(job("run", &S.base, 1), TOKEN, &reply), 200);
	log = str(reply, "log");
	assert_non_null(strstr(log, "hello-out"));
	assert_non_null(strstr(log, "hello-err"));
	result_of(reply, &r);
	assert_true(pulled_bytes(reply) > 1000000); /* busybox */
	json_decref(reply);
	expect_file(&r, "made", "data\n");
	expect_file(&r, "bin/busybox", NULL); /* the rootfs is under it */
}

static void test_exec_fails(void **st)
{
	struct kiln_job jb = { .def = S.def, .op = op_index("fail"), .inputs = &S.base };
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_job_result res = { 0 };
	json_t *reply = NULL;

	assert_int_equal(post(job("fail", &S.base, 1), TOKEN, &reply), 422);
	assert_non_null(strstr(str(reply, "error"), "exit code 3"));
	assert_non_null(strstr(str(reply, "log"), "before-fail"));
	json_decref(reply);
	/* Behind the 422: the code of a failed step, never a cancel's. */
	assert_int_equal(kiln_job_run(S.w, &jb, &res, &err), -KILN_ESTEPFAILED);
	assert_non_null(strstr(kiln_error_msg(err), "exit code 3"));
}

/* 3 MB of output: the log is its last MiB, ending with the marker. */
static void test_exec_log_tail(void **st)
{
	json_t *reply = NULL;
	const char *log;
	size_t n;

	assert_int_equal(post(job("loud", &S.base, 1), TOKEN, &reply), 200);
	log = str(reply, "log");
	n = json_string_length(json_object_get(reply, "log"));
	assert_true(n <= KILN_JOBS_LOG_MAX);
	assert_true(n > KILN_JOBS_LOG_MAX - 4096);
	assert_non_null(strstr(log + n - 16, "END-MARK"));
	json_decref(reply);
}

static void test_exec_secret(void **st)
{
	json_t *body = job("secret", &S.base, 1), *reply = NULL;

	expect_error(json_incref(body), TOKEN, 422, "secret 's1' is required");
	json_object_set_new(body, "secrets", json_pack("{s:s}", "s1", "c2Vrcml0LXZhbHVl"));
	assert_int_equal(post(body, TOKEN, &reply), 200);
	assert_string_equal(str(reply, "log"), "sekrit-value");
	json_decref(reply);
}

/* Output that is not UTF-8 still makes a JSON answer: U+FFFD for each bad byte. */
static void test_exec_binary_output(void **st)
{
	static const char want[] = "a\xef\xbf\xbd" "b\xef\xbf\xbd" "c\xef\xbf\xbd\xef\xbf\xbd";
	json_t *reply = NULL;

	assert_int_equal(post(job("binary", &S.base, 1), TOKEN, &reply), 200);
	assert_string_equal(str(reply, "log"), want);
	json_decref(reply);
}

static void *post_slow(void *ud)
{
	json_t *reply = NULL;

	*(long *)ud = post(job("slow", &S.base, 1), TOKEN, &reply);
	json_decref(reply);
	return NULL;
}

/* A job counts as running while it runs. */
static void test_running_count(void **st)
{
	pthread_t t;
	long status = 0;
	unsigned seen = 0;
	int i;

	assert_int_equal(kiln_jobs_running(S.jobs), 0);
	assert_int_equal(pthread_create(&t, NULL, post_slow, &status), 0);
	for (i = 0; i < 1000 && !seen; i++) {
		seen = kiln_jobs_running(S.jobs);
		usleep(5000);
	}
	pthread_join(t, NULL);
	assert_int_equal(seen, 1);
	assert_int_equal(status, 200);
	assert_int_equal(kiln_jobs_running(S.jobs), 0);
}

/* A streamed answer ("stream": true): its lines and when each arrived. */
struct streamed {
	struct kiln_strbuf line;
	json_t *lines;  /* every non-empty line, parsed */
	json_t *answer; /* the last one */
	double answer_at, first_log_at[3]; /* seconds since the POST, per stream */
	size_t log_bytes;
	double t0;
};

static double now_s(void)
{
	return (double)kiln_now_mono_ns() / 1e9;
}

static int stream_line(void *ud, char *line, size_t len)
{
	struct streamed *sd = ud;
	json_t *v, *log;
	int k;

	if (len == 0)
		return 0; /* keep-alive */
	v = json_loadb(line, len, 0, NULL);
	if (!v)
		fail_msg("not a JSON line: %.*s", (int)len, line);
	assert_null(sd->answer); /* nothing after the answer */
	log = json_object_get(v, "log");
	if (json_is_string(log)) {
		k = (int)json_integer_value(json_object_get(v, "stream"));
		assert_true(k == 1 || k == 2);
		if (sd->first_log_at[k] == 0)
			sd->first_log_at[k] = now_s() - sd->t0;
		sd->log_bytes += json_string_length(log);
	} else {
		sd->answer = json_incref(v);
		sd->answer_at = now_s() - sd->t0;
	}
	json_array_append_new(sd->lines, v);
	return 0;
}

static int stream_sink(void *ud, const void *data, size_t len)
{
	struct streamed *sd = ud;

	/* -E2BIG: a line over what kilnd takes. */
	assert_int_equal(kiln_strbuf_feed_lines(&sd->line, data, len, stream_line, sd), 0);
	return 0;
}

/* POST body with "stream": true; sd gets the lines; fails unless HTTP 200. */
static void post_stream(json_t *body, struct streamed *sd)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_http_call call = {
		.method = "POST", .url = S.jobs_url, .token = TOKEN, .json = body,
		.sink = stream_sink, .sink_ud = sd, .timeout_ms = 120000,
		.low_speed_time_s = 600,
	};
	struct kiln_http_result res = { 0 };

	memset(sd, 0, sizeof(*sd));
	kiln_strbuf_init(&sd->line, KILN_JOBS_LINE_MAX); /* what kilnd takes */
	sd->lines = json_array();
	sd->t0 = now_s();
	json_object_set_new(body, "stream", json_true());
	if (kiln_http_client_do(S.cli, &call, &res, &err) < 0)
		fail_msg("POST %s: %s", S.jobs_url, kiln_error_msg(err));
	json_decref(body);
	assert_int_equal(res.status, 200);
	assert_non_null(res.content_type);
	assert_string_equal(res.content_type, "application/x-ndjson");
	kiln_http_result_release(&res);
	assert_int_equal(sd->line.len, 0); /* the stream ends with a newline */
	if (!sd->answer)
		fail_msg("no answer line: %s", json_dumps(sd->lines, JSON_COMPACT));
	/* The output went out as it came: never again in the answer. */
	assert_null(json_object_get(sd->answer, "log"));
}

static void streamed_release(struct streamed *sd)
{
	kiln_strbuf_release(&sd->line);
	json_decref(sd->lines);
	json_decref(sd->answer);
}

/* The log text of stream k, in order. */
static char *stream_text(struct streamed *sd, int k)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(64u << 20);
	json_t *v;
	size_t i;

	json_array_foreach(sd->lines, i, v)
		if (json_integer_value(json_object_get(v, "stream")) == k)
			assert_int_equal(kiln_strbuf_adds(&sb, json_string_value(
						json_object_get(v, "log"))), 0);
	return kiln_strbuf_detach(&sb, NULL);
}

/* Output arrives while the step runs; the result is the last line. */
static void test_stream(void **st)
{
	_cleanup_free_ char *out = NULL, *err = NULL;
	struct streamed sd;
	struct kiln_digest r;

	post_stream(job("live", &S.base, 1), &sd);
	assert_int_equal(json_integer_value(json_object_get(sd.answer, "status")), 200);
	result_of(sd.answer, &r);
	out = stream_text(&sd, 1);
	err = stream_text(&sd, 2);
	assert_string_equal(out, "first\nthird\n");
	assert_string_equal(err, "second\n");
	/* "first" came before the step's `sleep 1` ended, not with the answer. */
	assert_true(sd.first_log_at[1] > 0);
	if (sd.answer_at - sd.first_log_at[1] < 0.7)
		fail_msg("first output at %.3f s, answer at %.3f s: not streamed",
			 sd.first_log_at[1], sd.answer_at);
	streamed_release(&sd);
}

/* A failed step, a missing input and 3 MB of output, streamed. */
static void test_stream_outcomes(void **st)
{
	struct kiln_digest absent;
	_cleanup_free_ char *out = NULL;
	struct streamed sd;

	post_stream(job("fail", &S.base, 1), &sd);
	assert_int_equal(json_integer_value(json_object_get(sd.answer, "status")), 422);
	assert_non_null(strstr(str(sd.answer, "error"), "exit code 3"));
	out = stream_text(&sd, 1);
	assert_string_equal(out, "before-fail\n");
	streamed_release(&sd);

	kiln_digest_buf("held by nobody", 14, &absent);
	post_stream(job("run", &absent, 1), &sd);
	assert_int_equal(json_integer_value(json_object_get(sd.answer, "status")), 409);
	assert_string_equal(str(sd.answer, "missing"), KILN_DIGEST_STR(&absent));
	streamed_release(&sd);

	/* Every byte of it, in order: nothing is dropped for a reader that keeps up. */
	free(TAKE_PTR(out));
	post_stream(job("loud", &S.base, 1), &sd);
	assert_int_equal(json_integer_value(json_object_get(sd.answer, "status")), 200);
	out = stream_text(&sd, 1);
	if (strlen(out) != 3000000 + strlen("\nEND-MARK\n"))
		fail_msg("%zu bytes of output, %zu lines: %s", strlen(out), json_array_size(sd.lines), out + strlen(out) - (strlen(out) > 300 ? 300 : strlen(out)));
	assert_string_equal(out + 3000000, "\nEND-MARK\n");
	assert_int_equal(strncmp(out, "0123456789abcdef\n0123", 21), 0);
	streamed_release(&sd);

	/*
	 * 3 MB of a control byte and no newline: sent together after 200 ms,
	 * and escaped to six times their size, still in lines kilnd takes.
	 */
	free(TAKE_PTR(out));
	post_stream(job("ctl", &S.base, 1), &sd);
	assert_int_equal(json_integer_value(json_object_get(sd.answer, "status")), 200);
	out = stream_text(&sd, 1);
	assert_int_equal(strlen(out), 3000000);
	assert_int_equal(strspn(out, "\001"), 3000000);
	streamed_release(&sd);

	/* "caf" and half an "é", flushed after 200 ms: the half waits for the rest. */
	free(TAKE_PTR(out));
	post_stream(job("split", &S.base, 1), &sd);
	assert_int_equal(json_integer_value(json_object_get(sd.answer, "status")), 200);
	out = stream_text(&sd, 1);
	assert_string_equal(out, "caf\xc3\xa9\n");
	streamed_release(&sd);
}

static bool give_up_after_2s(void *ud)
{
	return now_s() - *(double *)ud > 2.0;
}

/* A caller that hangs up stops the step: the container is killed. */
static void test_stream_hang_up(void **st)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_http_result res = { 0 };
	struct streamed sd = { .line = KILN_STRBUF_INIT(KILN_JOBS_LINE_MAX) };
	json_t *body = job("long", &S.base, 1);
	double t0 = now_s();
	struct kiln_http_call call = {
		.method = "POST", .url = S.jobs_url, .token = TOKEN, .json = body,
		.sink = stream_sink, .sink_ud = &sd, .timeout_ms = 120000,
		.low_speed_time_s = 600, .abandon = give_up_after_2s, .abandon_ud = &t0,
	};
	int i;

	sd.lines = json_array();
	sd.t0 = t0;
	json_object_set_new(body, "stream", json_true());
	assert_true(kiln_http_client_do(S.cli, &call, &res, &err) < 0); /* given up */
	json_decref(body);
	kiln_http_result_release(&res);
	assert_null(sd.answer);
	assert_int_equal(kiln_jobs_running(S.jobs), 1);
	/* `sleep 60` is killed within seconds, not a minute. */
	for (i = 0; i < 200 && kiln_jobs_running(S.jobs) > 0; i++)
		usleep(50000);
	if (kiln_jobs_running(S.jobs) != 0)
		fail_msg("the job still runs %.1f s after its caller hung up", now_s() - t0 - 2);
	streamed_release(&sd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_file_op),
		cmocka_unit_test(test_merge),
		cmocka_unit_test(test_missing_input),
		cmocka_unit_test(test_copy_missing),
		cmocka_unit_test(test_bad_requests),
		cmocka_unit_test(test_auth),
		cmocka_unit_test(test_inventory_reopen),
		cmocka_unit_test(test_exec),
		cmocka_unit_test(test_exec_fails),
		cmocka_unit_test(test_exec_log_tail),
		cmocka_unit_test(test_exec_secret),
		cmocka_unit_test(test_exec_binary_output),
		cmocka_unit_test(test_running_count),
		cmocka_unit_test(test_stream),
		cmocka_unit_test(test_stream_outcomes),
		cmocka_unit_test(test_stream_hang_up),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
