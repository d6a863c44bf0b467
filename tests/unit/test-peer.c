/*
 * Unit tests for peer transfer: real stores, real HTTP servers on
 * 127.0.0.1 (port 0), a real client. Store A serves, B pulls, C holds the
 * same content as A (the second source).
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/strbuf.h"
#include "cas/tree.h"
#include "proto/http-client.h"
#include "proto/http-server.h"
#include "peer/peer.h"
#include "peer/peer-internal.h"

#define BIG_SIZE (8u << 20)
#define N_SMALL 300

struct node {
	struct kiln_store *store;
	struct kiln_http_server *http;
	struct kiln_peer_server *peer;
	char token[32];
};

struct fixture {
	char dir[64];
	char *src;
	struct node a, c;
	struct kiln_store *b;
	struct kiln_digest root, big, small;
	struct kiln_http_client *cli;
	struct kiln_peer_source sources[2];
	struct kiln_peer_source_stats per[2];
};

static uint64_t rng_state;

static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void write_random(const char *dir, const char *name, size_t size)
{
	_cleanup_free_ char *path = kiln_path_join(dir, name);
	_cleanup_free_ char *buf = xmalloc(size ? size : 1);
	size_t i;

	for (i = 0; i < size; i++)
		buf[i] = (char)(rnd() & 0xff);
	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, path, buf, size,
						   0644, false), 0);
}

/* Nested dirs, one big file, many small ones (some identical), extras. */
static void make_source(const char *src)
{
	char name[64];
	int i;

	for (i = 0; i < 10; i++) {
		snprintf(name, sizeof(name), "%s/d%d/sub/deeper", src, i);
		assert_int_equal(kiln_mkdir_p(name, 0755), 0);
	}
	write_random(src, "big.bin", BIG_SIZE);
	for (i = 0; i < N_SMALL; i++) {
		rng_state = 1000 + (uint64_t)(i % 250); /* 50 duplicates */
		snprintf(name, sizeof(name), "d%d/%s/f%03d", i % 10,
			 i % 3 == 0 ? "sub" : i % 3 == 1 ? "sub/deeper" : ".",
			 i);
		write_random(src, name, (size_t)(rnd() % (20u << 10)));
	}
	write_random(src, "d0/empty", 0);
	snprintf(name, sizeof(name), "%s/emptydir", src);
	assert_int_equal(kiln_mkdir_p(name, 0755), 0);
	snprintf(name, sizeof(name), "%s/link", src);
	assert_int_equal(symlink("big.bin", name), 0);
}

static void store_open(struct fixture *f, const char *name,
		       struct kiln_store **s)
{
	_cleanup_free_ char *p = kiln_path_join(f->dir, name);
	struct kiln_store_options o = { .durable = false };

	assert_int_equal(kiln_store_open(p, &o, s, NULL), 0);
}

static void import(struct fixture *f, struct kiln_store *s,
		   struct kiln_digest *root)
{
	struct kiln_tree_build_opts bo = { 0 };
	int fd = open(f->src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(kiln_tree_from_dir(s, fd, &bo, root, NULL), 0);
	close(fd);
}

static void serve(struct node *n, const char *token, uint64_t batch_bytes)
{
	struct kiln_http_server_options o = {
		.listen = "127.0.0.1:0", .token = token, .stop_grace_ms = 500,
	};
	struct kiln_peer_server_options po = { .batch_bytes = batch_bytes };

	snprintf(n->token, sizeof(n->token), "%s", token);
	assert_int_equal(kiln_http_server_new(&o, &n->http, NULL), 0);
	assert_int_equal(kiln_peer_server_new(n->http, n->store, &po, &n->peer,
					      NULL), 0);
	assert_int_equal(kiln_http_server_start(n->http, NULL), 0);
}

static void unserve(struct node *n)
{
	kiln_http_server_free(TAKE_PTR(n->http));
	kiln_peer_server_free(TAKE_PTR(n->peer));
}

static void find_digests(struct fixture *f)
{
	struct kiln_tree_entry e;

	assert_int_equal(kiln_tree_lookup(f->a.store, &f->root, "big.bin", &e,
					  NULL), 0);
	f->big = e.digest;
	kiln_tree_entry_release(&e);
	assert_int_equal(kiln_tree_lookup(f->a.store, &f->root, "d3/sub/f003",
					  &e, NULL), 0);
	f->small = e.digest;
	assert_true(e.size > 0);
	kiln_tree_entry_release(&e);
}

static int setup(void **state)
{
	struct fixture *f = xcalloc(1, sizeof(*f));
	struct kiln_digest croot;

	snprintf(f->dir, sizeof(f->dir), "/tmp/kiln-peer-XXXXXX");
	if (!mkdtemp(f->dir))
		return -1;
	f->src = kiln_path_join(f->dir, "src");
	rng_state = 42;
	make_source(f->src);
	store_open(f, "a", &f->a.store);
	store_open(f, "b", &f->b);
	store_open(f, "c", &f->c.store);
	import(f, f->a.store, &f->root);
	import(f, f->c.store, &croot);
	assert_true(kiln_digest_eq(&f->root, &croot));
	find_digests(f);
	serve(&f->a, "token-a", 0);
	serve(&f->c, "token-c", 0);
	f->cli = kiln_http_client_new(NULL);
	f->sources[0] = (struct kiln_peer_source){
		kiln_http_server_url(f->a.http), "token-a" };
	f->sources[1] = (struct kiln_peer_source){
		kiln_http_server_url(f->c.http), "token-c" };
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	unserve(&f->a);
	unserve(&f->c);
	kiln_http_client_free(f->cli);
	kiln_store_free(f->a.store);
	kiln_store_free(f->b);
	kiln_store_free(f->c.store);
	kiln_rm_rf(f->dir);
	free(f->src);
	free(f);
	return 0;
}

/* ---- helpers ---- */

static int walk_line(const char *path, const struct kiln_tree_entry *e,
		     void *ud)
{
	return kiln_strbuf_addf(ud, "%s %u %o %llu %s %s\n", path, e->type,
				e->mode, (unsigned long long)e->size,
				kiln_digest_is_set(&e->digest)
					? KILN_DIGEST_STR(&e->digest) : "-",
				e->target ? e->target : "");
}

static int verify_one(const struct kiln_digest *d, uint64_t size, void *ud)
{
	return kiln_store_verify(ud, d, NULL);
}

/* B holds the same tree as A and C, and every blob in B verifies. */
static void assert_same_tree(struct fixture *f)
{
	_cleanup_strbuf_ struct kiln_strbuf wa = KILN_STRBUF_INIT(64 << 20);
	_cleanup_strbuf_ struct kiln_strbuf wb = KILN_STRBUF_INIT(64 << 20);

	/* C is never damaged by a test: the reference. */
	assert_int_equal(kiln_tree_walk(f->c.store, &f->root, walk_line, &wa,
					NULL), 0);
	assert_int_equal(kiln_tree_walk(f->b, &f->root, walk_line, &wb, NULL), 0);
	assert_true(wa.len > 0);
	assert_string_equal(kiln_strbuf_str(&wa), kiln_strbuf_str(&wb));
	assert_int_equal(kiln_store_foreach(f->b, verify_one, f->b), 0);
	assert_true(kiln_store_has(f->b, &f->big));
}

static struct kiln_peer_pull_options pull_opts(struct fixture *f)
{
	return (struct kiln_peer_pull_options){
		.parallel = 4, .small_max = 64 << 10, .batch_bytes = 256 << 10,
		.http = f->cli,
	};
}

static int pull(struct fixture *f, size_t n, struct kiln_peer_stats *st,
		struct kiln_error **err)
{
	struct kiln_peer_pull_options o = pull_opts(f);

	int r;

	memset(st, 0, sizeof(*st));
	st->sources = f->per;
	r = kiln_peer_pull_tree(f->b, &f->root, f->sources, n, &o, st, err);
	if (r < 0 && getenv("KILN_TEST_VERBOSE"))
		fprintf(stderr, "pull: %s\n", kiln_error_msg(err ? *err : NULL));
	return r;
}

/* Replace a blob file in a store with other bytes of the same length. */
static void corrupt(struct kiln_store *s, const struct kiln_digest *d)
{
	_cleanup_free_ char *path = kiln_store_blob_path(s, d);
	_cleanup_free_ char *data = NULL;
	size_t len;

	assert_int_equal(kiln_read_file_at(AT_FDCWD, path, 64 << 20, &data,
					   &len), 0);
	assert_true(len > 0);
	data[len / 2] ^= 0x5a;
	assert_int_equal(unlink(path), 0);
	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, path, data, len,
						   0444, false), 0);
	assert_int_equal(kiln_store_verify(s, d, NULL), -EBADMSG);
}

/* ---- tests ---- */

static void test_pull_tree(void **state)
{
	struct fixture *f = *state;
	struct kiln_peer_stats st;
	_cleanup_error_ struct kiln_error *err = NULL;

	assert_int_equal(pull(f, 1, &st, &err), 0);
	assert_same_tree(f);
	assert_true(st.bytes > BIG_SIZE);
	assert_true(st.blobs > 250);
	assert_int_equal(f->per[0].bytes, st.bytes);
	assert_int_equal(f->per[0].failures, 0);
	/* Far fewer requests than blobs: trees and batches. */
	assert_true(st.requests < st.blobs / 5);
	/* Again: nothing to transfer, not even a request. */
	assert_int_equal(pull(f, 1, &st, &err), 0);
	assert_int_equal(st.bytes, 0);
	assert_int_equal(st.blobs, 0);
	assert_int_equal(st.requests, 0);
}

static void test_pull_capped(void **state)
{
	struct fixture *f = *state;
	struct node d = { .store = f->a.store };
	struct kiln_peer_stats st;
	_cleanup_error_ struct kiln_error *err = NULL;

	/* A source whose responses stop after 4 KiB: many rounds. */
	serve(&d, "token-d", 4096);
	f->sources[0].url = kiln_http_server_url(d.http);
	f->sources[0].token = "token-d";
	assert_int_equal(pull(f, 1, &st, &err), 0);
	assert_same_tree(f);
	assert_true(st.requests > 20);
	unserve(&d);
}

static void test_pull_blob(void **state)
{
	struct fixture *f = *state;
	struct kiln_peer_pull_options o = pull_opts(f);
	struct kiln_peer_stats st = { 0 };
	_cleanup_error_ struct kiln_error *err = NULL;

	assert_int_equal(kiln_peer_pull_blob(f->b, &f->big, UINT64_MAX,
					     f->sources, 2, &o, &st, &err), 0);
	assert_int_equal(st.bytes, BIG_SIZE);
	assert_int_equal(kiln_store_verify(f->b, &f->big, NULL), 0);
	/* A wrong expected size is the source's fault: then no source. */
	assert_int_equal(kiln_peer_pull_blob(f->b, &f->small, 7, f->sources, 2,
					     &o, &st, &err), -ENOENT);
	assert_non_null(strstr(err->msg, "the tree says 7"));
	assert_false(kiln_store_has(f->b, &f->small));
	/* The client hangs up in the middle of a sendfile: servers survive. */
	kiln_store_remove(f->b, &f->big);
	assert_int_equal(kiln_peer_pull_blob(f->b, &f->big, 1000, f->sources,
					     2, &o, &st, NULL), -ENOENT);
	assert_false(kiln_store_has(f->b, &f->big));
	assert_int_equal(kiln_peer_pull_blob(f->b, &f->big, BIG_SIZE,
					     f->sources, 2, &o, &st, NULL), 0);
}

static long get(struct fixture *f, const char *path, const char *range,
		const char *token, struct kiln_http_result *res)
{
	_cleanup_free_ char *url = xasprintf("%s%s",
					     kiln_http_server_url(f->a.http),
					     path);
	_cleanup_free_ char *hdr = range ? xasprintf("Range: %s", range) : NULL;
	const char *hdrs[] = { hdr, NULL };
	struct kiln_http_call c = {
		.method = "GET", .url = url, .token = token, .headers = hdrs,
		.limit = 16 << 20,
	};

	assert_int_equal(kiln_http_client_do(f->cli, &c, res, NULL), 0);
	return res->status;
}

static void test_range(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *path = xasprintf("/v1/blobs/%s",
					      KILN_DIGEST_STR(&f->big));
	_cleanup_free_ char *data = NULL;
	struct kiln_http_result res;
	size_t len;

	assert_int_equal(kiln_store_read(f->a.store, &f->big, BIG_SIZE, &data,
					 &len, NULL), 0);
	assert_int_equal(get(f, path, "bytes=1000-1999", "token-a", &res), 206);
	assert_int_equal(res.body_len, 1000);
	assert_memory_equal(res.body, data + 1000, 1000);
	assert_string_equal(res.content_range, "bytes 1000-1999/8388608");
	kiln_http_result_release(&res);
	assert_int_equal(get(f, path, "bytes=-10", "token-a", &res), 206);
	assert_memory_equal(res.body, data + BIG_SIZE - 10, 10);
	kiln_http_result_release(&res);
	assert_int_equal(get(f, path, "bytes=8388600-", "token-a", &res), 206);
	assert_int_equal(res.body_len, 8);
	kiln_http_result_release(&res);
	assert_int_equal(get(f, path, "bytes=9000000-", "token-a", &res), 416);
	assert_string_equal(res.content_range, "bytes */8388608");
	kiln_http_result_release(&res);
	assert_int_equal(get(f, path, NULL, "token-a", &res), 200);
	assert_int_equal(res.body_len, BIG_SIZE);
	assert_memory_equal(res.body, data, BIG_SIZE);
	kiln_http_result_release(&res);
	assert_int_equal(get(f, "/v1/blobs/sha256:abc", NULL, "token-a", &res),
			 400);
	kiln_http_result_release(&res);
	assert_int_equal(get(f, "/v1/blobs/sha256:0000000000000000000000000000"
			     "000000000000000000000000000000000000", NULL,
			     "token-a", &res), 404);
	kiln_http_result_release(&res);
	assert_int_equal(get(f, path, NULL, "wrong", &res), 401);
	kiln_http_result_release(&res);
}

static void test_missing_and_batch(void **state)
{
	struct fixture *f = *state;
	struct kiln_digest ds[3] = { f->big, f->root, f->small };
	bool missing[3];
	_cleanup_free_ char *url = xasprintf("%s/v1/blobs/batch",
					     kiln_http_server_url(f->a.http));
	_cleanup_free_ char *want = NULL;
	const char *body = NULL;
	struct kiln_http_call c = {
		.method = "POST", .url = url, .token = "token-a",
		.content_type = "application/json", .limit = 1 << 20,
	};
	struct kiln_http_result res;
	uint64_t size;

	memset(&ds[1].bytes, 0x11, sizeof(ds[1].bytes));
	assert_int_equal(kiln_peer_find_missing(f->cli, &f->sources[0], ds, 3,
						missing, NULL), 0);
	assert_false(missing[0]);
	assert_true(missing[1]);
	assert_false(missing[2]);
	/* The framing, byte for byte: a record, an absent one, the end. */
	kiln_store_size(f->a.store, &f->small, &size);
	body = want = xasprintf("{\"digests\":[\"%s\",\"%s\"]}",
				KILN_DIGEST_STR(&f->small),
				KILN_DIGEST_STR(&ds[1]));
	c.body = body;
	c.body_len = strlen(body);
	assert_int_equal(kiln_http_client_do(f->cli, &c, &res, NULL), 0);
	assert_int_equal(res.status, 200);
	free(want);
	want = xasprintf("%s %llu\n", KILN_DIGEST_STR(&f->small),
			 (unsigned long long)size);
	assert_memory_equal(res.body, want, strlen(want));
	free(want);
	want = xasprintf("%s -\nend\n", KILN_DIGEST_STR(&ds[1]));
	assert_int_equal(res.body_len, strlen(want) + size +
					       strlen(KILN_DIGEST_STR(&f->small)) +
					       1 + (size_t)snprintf(NULL, 0, "%llu\n",
							   (unsigned long long)size));
	assert_memory_equal(res.body + res.body_len - strlen(want), want,
			    strlen(want));
	kiln_http_result_release(&res);
	/* A malformed digest in the list: 400, and the server goes on. */
	c.body = "{\"digests\":[\"sha256:xyz\"]}";
	c.body_len = strlen(c.body);
	assert_int_equal(kiln_http_client_do(f->cli, &c, &res, NULL), 0);
	assert_int_equal(res.status, 400);
	kiln_http_result_release(&res);
	assert_int_equal(kiln_peer_find_missing(f->cli, &f->sources[0], ds, 1,
						missing, NULL), 0);
}

static void test_corrupt_small(void **state)
{
	struct fixture *f = *state;
	struct kiln_peer_stats st;
	_cleanup_error_ struct kiln_error *err = NULL;

	corrupt(f->a.store, &f->small);
	assert_int_equal(pull(f, 2, &st, &err), 0);
	assert_same_tree(f);
	assert_int_equal(kiln_store_verify(f->b, &f->small, NULL), 0);
	assert_int_equal(f->per[0].failures, 1);
	assert_true(f->per[1].blobs > 0);
}

static void test_corrupt_big(void **state)
{
	struct fixture *f = *state;
	struct kiln_peer_stats st;
	_cleanup_error_ struct kiln_error *err = NULL;

	corrupt(f->a.store, &f->big);
	assert_int_equal(pull(f, 2, &st, &err), 0);
	assert_same_tree(f);
	assert_int_equal(f->per[0].failures, 1);
	assert_true(f->per[1].bytes >= BIG_SIZE);
}

static void test_corrupt_node(void **state)
{
	struct fixture *f = *state;
	struct kiln_peer_stats st;
	struct kiln_tree_entry e;
	_cleanup_error_ struct kiln_error *err = NULL;

	/* A damaged directory node on A is not served; C's copy is. */
	assert_int_equal(kiln_tree_lookup(f->a.store, &f->root, "d5/sub", &e,
					  NULL), 0);
	corrupt(f->a.store, &e.digest);
	kiln_tree_entry_release(&e);
	assert_int_equal(pull(f, 2, &st, &err), 0);
	assert_same_tree(f);
}

/* "<digest> <size>\n<bytes>" for node d of store s, appended to sb. */
static void add_record(struct kiln_strbuf *sb, struct kiln_store *s, const struct kiln_digest *d)
{
	_cleanup_free_ char *data = NULL, *head = NULL;
	size_t len = 0;

	assert_int_equal(kiln_store_read(s, d, 1u << 20, &data, &len, NULL), 0);
	head = xasprintf("%s %zu\n", KILN_DIGEST_STR(d), len);
	kiln_strbuf_add(sb, head, strlen(head));
	kiln_strbuf_add(sb, data, len);
}

/*
 * A trees answer names only nodes of the subtree asked for (issue 14): a
 * valid node from elsewhere is refused, and nothing of it is stored.
 */
static void test_tree_unrequested_node(void **state)
{
	struct fixture *f = *state;
	struct kiln_strbuf sb = KILN_STRBUF_INIT(4u << 20);
	struct kiln_tree other = KILN_TREE_INIT;
	struct kiln_tree_entry e = { .name = xstrdup("x"), .type = KILN_ENTRY_FILE, .mode = 0644,
				     .digest = f->small, .size = 1 };
	struct kiln_peer_framer fr;
	struct kiln_tree_entry sub;
	struct kiln_digest od;

	/* A node the tree asked for does not hold. */
	kiln_tree_set(&other, &e);
	assert_int_equal(kiln_tree_put(f->a.store, &other, &od, NULL), 0);
	kiln_tree_release(&other);

	kiln_peer_framer_init_tree(&fr, f->b, "GET", "test", &f->root);
	add_record(&sb, f->a.store, &od);
	assert_true(kiln_peer_framer_feed(&fr, sb.buf, sb.len) < 0);
	assert_non_null(fr.err);
	assert_non_null(strstr(kiln_error_msg(fr.err), "outside the tree"));
	kiln_peer_framer_release(&fr);
	assert_false(kiln_store_has(f->b, &od));

	/* The root, then one of its directories: accepted; a sibling tree's node after them is not. */
	assert_int_equal(kiln_tree_lookup(f->a.store, &f->root, "d5", &sub, NULL), 0);
	kiln_strbuf_reset(&sb);
	add_record(&sb, f->a.store, &f->root);
	add_record(&sb, f->a.store, &sub.digest);
	kiln_peer_framer_init_tree(&fr, f->b, "GET", "test", &f->root);
	assert_int_equal(kiln_peer_framer_feed(&fr, sb.buf, sb.len), 0);
	assert_int_equal(fr.stored, 2);
	kiln_strbuf_reset(&sb);
	add_record(&sb, f->a.store, &od);
	assert_true(kiln_peer_framer_feed(&fr, sb.buf, sb.len) < 0);
	kiln_peer_framer_release(&fr);
	assert_true(kiln_store_has(f->b, &f->root));
	assert_true(kiln_store_has(f->b, &sub.digest));
	assert_false(kiln_store_has(f->b, &od));
	kiln_tree_entry_release(&sub);
	kiln_strbuf_release(&sb);
}

static void test_corrupt_only_source(void **state)
{
	struct fixture *f = *state;
	struct kiln_peer_stats st;
	_cleanup_error_ struct kiln_error *err = NULL;

	corrupt(f->a.store, &f->small);
	assert_int_equal(pull(f, 1, &st, &err), -ENOENT);
	assert_non_null(strstr(err->msg, KILN_DIGEST_STR(&f->small)));
	assert_non_null(strstr(err->msg, "corrupt"));
	/* Never stored under its name. */
	assert_false(kiln_store_has(f->b, &f->small));
}

static uint16_t dead_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	close(fd);
	return ntohs(a.sin_port);
}

static void test_all_down(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *u1 = xasprintf("http://127.0.0.1:%u", dead_port());
	_cleanup_free_ char *u2 = xasprintf("http://127.0.0.1:%u", dead_port());
	struct kiln_peer_stats st;
	_cleanup_error_ struct kiln_error *err = NULL;

	f->sources[0].url = u1;
	f->sources[1].url = u2;
	assert_int_equal(pull(f, 2, &st, &err), -ENOENT);
	assert_non_null(strstr(err->msg, KILN_DIGEST_STR(&f->root)));
	assert_non_null(strstr(err->msg, "no source"));
	assert_non_null(strstr(err->msg, u1));
	assert_non_null(strstr(err->msg, u2));
	assert_int_equal(f->per[0].failures, 1);
	assert_int_equal(f->per[1].failures, 1);
	assert_false(kiln_store_has(f->b, &f->root));
}

/* Every file of root in the store, its content verified. */
static int present_one(const char *path, const struct kiln_tree_entry *e,
		       void *ud)
{
	if (e->type != KILN_ENTRY_FILE)
		return 0;
	return kiln_store_verify(ud, &e->digest, NULL) == 0 ? 0 : -ENOENT;
}

/*
 * Files alternate above and below small_max, many of each, so the plan's
 * item array grows (one large blob per item) while its one batch of small
 * blobs is still being filled. The planner once kept a pointer to that
 * batch across the growth: a use after free (a double free without ASan).
 */
static void test_pull_mixed_sizes(void **state)
{
	struct fixture *f = *state;
	_cleanup_free_ char *mixed = kiln_path_join(f->dir, "mixed");
	struct kiln_peer_pull_options o = pull_opts(f);
	struct kiln_peer_stats st = { 0 };
	struct kiln_digest root;
	_cleanup_error_ struct kiln_error *err = NULL;
	char name[32];
	int i;

	assert_int_equal(kiln_mkdir_p(mixed, 0755), 0);
	rng_state = 7;
	for (i = 0; i < 128; i++) {
		snprintf(name, sizeof(name), "f%03d", i);
		write_random(mixed, name, i % 2 ? (size_t)(i * 7)
						: 4096 + 1 + (size_t)i * 37);
	}
	free(f->src);
	f->src = TAKE_PTR(mixed);
	import(f, f->a.store, &root);
	o.small_max = 4096;
	o.batch_bytes = 1 << 20; /* one batch holds every small blob */
	assert_int_equal(kiln_peer_pull_tree(f->b, &root, f->sources, 1, &o,
					     &st, &err), 0);
	assert_int_equal(st.blobs, 128 + 1);
	/* 64 large GETs, one batch, one tree request. */
	assert_int_equal(st.requests, 64 + 1 + 1);
	assert_int_equal(kiln_tree_walk(f->b, &root, present_one, f->b, NULL), 0);
}

static void test_wrong_token(void **state)
{
	struct fixture *f = *state;
	struct kiln_peer_stats st;
	_cleanup_error_ struct kiln_error *err = NULL;

	f->sources[0].token = "nope";
	assert_int_equal(pull(f, 1, &st, &err), -ENOENT);
	assert_non_null(strstr(err->msg, "HTTP 401"));
	assert_non_null(strstr(err->msg, f->sources[0].url));
	/* The second source still serves when the first refuses. */
	assert_int_equal(pull(f, 2, &st, &err), 0);
	assert_same_tree(f);
	assert_int_equal(f->per[0].failures, 1);
}

/* ---- PUT /v1/blobs: streamed into the store ---- */

static long put(struct fixture *f, const char *url, const struct kiln_digest *d, const void *data,
		size_t n)
{
	_cleanup_free_ char *u = xasprintf("%s/v1/blobs/%s", url, KILN_DIGEST_STR(d));
	struct kiln_http_call call = { .method = "PUT", .url = u, .token = "up",
				       .content_type = "application/octet-stream",
				       .body = data, .body_len = n, .upload = true,
				       .limit = 4096 };
	struct kiln_http_result res = { 0 };
	long status;

	assert_int_equal(kiln_http_client_do(f->cli, &call, &res, NULL), 0);
	status = res.status;
	kiln_http_result_release(&res);
	return status;
}

static size_t tmp_files(const char *store_dir)
{
	_cleanup_free_ char *cmd = xasprintf("find %s/tmp -type f 2>/dev/null | wc -l", store_dir);
	FILE *p = popen(cmd, "r");
	unsigned long n = 99;

	assert_non_null(p);
	assert_int_equal(fscanf(p, "%lu", &n), 1);
	pclose(p);
	return n;
}

/*
 * An upload streams into a store writer (the route keeps nothing of the
 * body in memory): a 5 MiB blob arrives whole; a body that is not its
 * name, or over the limit, leaves nothing behind; an empty body is the
 * empty blob; one the store has is 200.
 */
static void test_upload_streamed(void **state)
{
	struct fixture *f = *state;
	struct node up = { 0 };
	struct kiln_http_server_options o = { .listen = "127.0.0.1:0", .token = "tok",
					       .stop_grace_ms = 500 };
	struct kiln_peer_server_options po = { .upload_limit = 8u << 20, .upload_token = "up" };
	_cleanup_free_ char *sdir = kiln_path_join(f->dir, "up");
	size_t n = 5u << 20, i;
	unsigned char *big = xmalloc(n + (4u << 20));
	struct kiln_digest d, empty, over;
	const char *url;

	for (i = 0; i < n + (4u << 20); i++)
		big[i] = (unsigned char)(i * 2654435761u >> 13);
	store_open(f, "up", &up.store);
	assert_int_equal(kiln_http_server_new(&o, &up.http, NULL), 0);
	assert_int_equal(kiln_peer_server_new(up.http, up.store, &po, &up.peer, NULL), 0);
	assert_int_equal(kiln_http_server_start(up.http, NULL), 0);
	url = kiln_http_server_url(up.http);

	kiln_digest_buf(big, n, &d);
	assert_int_equal(put(f, url, &d, big + 1, n), 400); /* other bytes */
	assert_false(kiln_store_has(up.store, &d));
	assert_int_equal(put(f, url, &d, big, n), 201);
	assert_true(kiln_store_has(up.store, &d));
	assert_int_equal(put(f, url, &d, big, n), 200);
	kiln_digest_buf(big, n + (4u << 20), &over);
	assert_int_equal(put(f, url, &over, big, n + (4u << 20)), 413);
	assert_false(kiln_store_has(up.store, &over));
	kiln_digest_buf("", 0, &empty);
	assert_int_equal(put(f, url, &empty, "", 0), 201);
	assert_true(kiln_store_has(up.store, &empty));
	assert_int_equal(tmp_files(sdir), 0); /* no partial blob left */
	unserve(&up);
	kiln_store_free(up.store);
	free(big);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_pull_tree, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pull_capped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pull_blob, setup, teardown),
		cmocka_unit_test_setup_teardown(test_range, setup, teardown),
		cmocka_unit_test_setup_teardown(test_missing_and_batch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_small, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_big, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_node, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tree_unrequested_node, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_only_source, setup, teardown),
		cmocka_unit_test_setup_teardown(test_all_down, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_token, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pull_mixed_sizes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upload_streamed, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
