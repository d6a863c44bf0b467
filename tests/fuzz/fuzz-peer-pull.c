/*
 * libFuzzer target for the peer pull's FILES plan and batch framing parser
 * (src/peer/peer-internal.h). The input drives three things:
 *   1. a random tree (file count, size spread) and random plan limits: the
 *      plan must put every file in exactly one item within the limits;
 *   2. a batch response built from records the input picks (a blob as
 *      asked, absent, the wrong size, corrupt, one nobody asked for, a
 *      junk line), with or without the end line, cut into random pieces:
 *      whatever arrives, a blob marked STORED is in the store and verifies,
 *      a blob never sent whole and right is never named, and a clean
 *      response leaves every blob sent right STORED;
 *   3. raw bytes to a batch or a trees framer: any input is taken or
 *      refused with an error, and nothing unverified is ever named.
 * ASan and UBSan report memory errors; __builtin_trap marks a broken rule.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/strbuf.h"
#include "cas/store.h"
#include "peer/peer-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_BLOBS 16u
#define MAX_BLOB_SIZE 600u
#define MAX_RECORDS 32u
#define MAX_FILES 4000u

#define check(c) do { if (!(c)) __builtin_trap(); } while (0)

/* The input as a stream of numbers; zeros once it runs out. */
struct input {
	const uint8_t *p;
	size_t left;
};

static uint64_t take(struct input *in, unsigned bytes)
{
	uint64_t v = 0;

	while (bytes--) {
		v = v << 8 | (in->left ? *in->p : 0);
		if (in->left) {
			in->p++;
			in->left--;
		}
	}
	return v;
}

static char root_path[] = "/tmp/kiln-fuzz-peer.XXXXXX";

static void remove_root(void)
{
	(void)kiln_rm_rf(root_path);
}

static struct kiln_store *store(void)
{
	static struct kiln_store *s;
	struct kiln_store_options o = { .durable = false };

	if (s)
		return s;
	if (!mkdtemp(root_path))
		abort();
	atexit(remove_root);
	if (kiln_store_open(root_path, &o, &s, NULL) < 0)
		abort();
	return s;
}

/* ---- 1. the plan ---- */

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void check_plan(const struct kiln_digest_set *files,
		       uint64_t small_max, uint64_t batch_bytes,
		       const struct kiln_peer_plan *plan)
{
	struct kiln_digest_set seen = { 0 };
	size_t i, k, total = 0;

	for (i = 0; i < plan->n; i++) {
		const struct kiln_peer_item *it = &plan->items[i];
		uint64_t bytes = 0;

		check(it->n > 0);
		check(it->batch || it->n == 1);
		check(it->n <= KILN_PEER_BATCH_DIGESTS);
		for (k = 0; k < it->n; k++) {
			const uint64_t *v = kiln_digest_set_value(files, &it->b[k].d);

			check(v && *v == it->b[k].size);
			check(it->b[k].state == KILN_PEER_PENDING);
			check(kiln_digest_set_add(&seen, &it->b[k].d));
			check(it->batch == (it->b[k].size <= small_max));
			bytes += it->b[k].size;
		}
		check(!it->batch || it->n == 1 || bytes <= batch_bytes);
		total += it->n;
	}
	check(total == kiln_digest_set_size(files));
	kiln_digest_set_release(&seen);
}

static void fuzz_plan(struct input *in)
{
	struct kiln_digest_set files = { 0 };
	struct kiln_peer_plan plan = { 0 };
	uint64_t small_max = take(in, 2) + 1, batch_bytes = take(in, 3) + 1;
	uint64_t seed = take(in, 4) | 1, span = 2 * small_max + 2;
	size_t n = (size_t)(take(in, 2) % MAX_FILES), i;
	struct kiln_digest d;

	for (i = 0; i < n; i++) {
		uint64_t key = i;

		kiln_digest_buf(&key, sizeof(key), &d);
		/* Mostly around small_max, now and then zero or far above. */
		kiln_digest_set_put(&files, &d, xorshift(&seed) % 16 == 0
						? xorshift(&seed) % (1u << 30)
						: xorshift(&seed) % span);
	}
	kiln_peer_plan_files(&files, small_max, batch_bytes, &plan);
	check_plan(&files, small_max, batch_bytes, &plan);
	kiln_peer_plan_release(&plan);
	kiln_digest_set_release(&files);
}

/* ---- 2. a batch response made of chosen records ---- */

struct blob {
	char data[MAX_BLOB_SIZE];
	size_t len;
	bool sent_right;
};

static void make_item(struct input *in, struct blob *blobs, size_t m,
		      struct kiln_peer_item *it)
{
	struct kiln_digest d;
	size_t j, k;

	memset(it, 0, sizeof(*it));
	it->batch = true;
	it->b = xcalloc(m, sizeof(*it->b));
	it->alloc = m;
	for (j = 0; j < m; j++) {
		/* Distinct contents: only blob 0 may be empty, the others
		 * start with their index. */
		blobs[j].len = (size_t)(take(in, 2) % MAX_BLOB_SIZE) + (j > 0);
		for (k = 0; k < blobs[j].len; k++)
			blobs[j].data[k] = (char)(k ? j * 31 + k * 7 + 1 : j);
		blobs[j].sent_right = false;
		kiln_digest_buf(blobs[j].data, blobs[j].len, &d);
		it->b[it->n++] = (struct kiln_peer_blob){ d, blobs[j].len,
							  KILN_PEER_PENDING };
	}
}

/* Append one record the input chooses to sb. */
static void add_record(struct input *in, struct blob *blobs, size_t m,
		       const struct kiln_peer_item *it, struct kiln_strbuf *sb)
{
	size_t j = (size_t)(take(in, 1) % m);
	struct blob *b = &blobs[j];
	const char *dg = KILN_DIGEST_STR(&it->b[j].d);
	struct kiln_digest other;
	uint64_t key;

	switch (take(in, 1) % 8) {
	case 0: case 1: case 2: /* as asked */
		kiln_strbuf_addf(sb, "%s %zu\n", dg, b->len);
		kiln_strbuf_add(sb, b->data, b->len);
		b->sent_right = true;
		break;
	case 3: /* absent there */
		kiln_strbuf_addf(sb, "%s -\n", dg);
		break;
	case 4: /* a size the tree does not give */
		kiln_strbuf_addf(sb, "%s %zu\n", dg, b->len + 1);
		kiln_strbuf_add(sb, b->data, b->len);
		kiln_strbuf_add(sb, "x", 1);
		break;
	case 5: /* corrupt: one byte flipped (an empty blob stays right) */
		kiln_strbuf_addf(sb, "%s %zu\n", dg, b->len);
		if (b->len)
			b->data[b->len / 2] ^= 0x20;
		kiln_strbuf_add(sb, b->data, b->len);
		if (b->len)
			b->data[b->len / 2] ^= 0x20;
		else
			b->sent_right = true;
		break;
	case 6: /* a blob nobody asked for */
		key = take(in, 4);
		kiln_digest_buf(&key, sizeof(key), &other);
		kiln_strbuf_addf(sb, "%s 1\nz", KILN_DIGEST_STR(&other));
		break;
	default: { /* a junk line from the input */
		char junk[8];
		size_t k;

		for (k = 0; k < sizeof(junk); k++)
			junk[k] = (char)take(in, 1);
		kiln_strbuf_add(sb, junk, sizeof(junk));
		kiln_strbuf_add(sb, "\n", 1);
	}
	}
}

/* Feed sb in pieces the input sizes; stop at the first refusal. */
static int feed(struct input *in, struct kiln_peer_framer *f,
		const struct kiln_strbuf *sb)
{
	size_t off = 0, n;
	int r;

	while (off < sb->len) {
		n = (size_t)(take(in, 1) % 97) + 1;
		if (n > sb->len - off)
			n = sb->len - off;
		r = kiln_peer_framer_feed(f, sb->buf + off, n);
		if (r < 0) {
			check(f->err || f->local < 0);
			return r;
		}
		off += n;
	}
	return 0;
}

static void check_batch(const struct blob *blobs, size_t m,
			const struct kiln_peer_item *it, bool clean)
{
	size_t j;

	for (j = 0; j < m; j++) {
		bool stored = it->b[j].state == KILN_PEER_STORED;

		check(!stored || blobs[j].sent_right);
		check(!stored || kiln_store_verify(store(), &it->b[j].d, NULL) == 0);
		check(stored || blobs[j].sent_right ||
		      !kiln_store_has(store(), &it->b[j].d));
		check(!clean || !blobs[j].sent_right || stored);
	}
}

static void fuzz_batch(struct input *in, bool raw)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(1 << 20);
	struct blob blobs[MAX_BLOBS];
	size_t m = (size_t)(take(in, 1) % MAX_BLOBS) + 1, i, nrec;
	struct kiln_store_group *group = NULL;
	struct kiln_peer_framer f;
	struct kiln_peer_item it;
	bool end, clean;
	int r;

	make_item(in, blobs, m, &it);
	if (take(in, 1) & 1 && kiln_store_group_new(store(), &group, NULL) < 0)
		abort();
	kiln_peer_framer_init_batch(&f, store(), &it, group, "POST", "fuzz");
	if (raw) {
		kiln_strbuf_add(&sb, in->p, in->left);
		in->left = 0;
		end = false;
	} else {
		nrec = (size_t)(take(in, 1) % MAX_RECORDS);
		for (i = 0; i < nrec; i++)
			add_record(in, blobs, m, &it, &sb);
		end = take(in, 1) % 4 != 0;
		if (end)
			kiln_strbuf_add(&sb, "end\n", 4);
		if (take(in, 1) % 8 == 0)
			kiln_strbuf_add(&sb, "more", 4);
	}
	r = feed(in, &f, &sb);
	if (f.group && kiln_store_group_commit(f.group, NULL) < 0)
		abort();
	clean = r == 0 && f.state == KILN_PEER_F_END;
	check(!clean || raw || end);
	check_batch(blobs, m, &it, clean && !raw);
	kiln_peer_framer_release(&f);
	free(it.b);
	kiln_strbuf_release(&sb);
}

/* ---- 3. raw bytes to a trees framer ---- */

static void fuzz_tree(struct input *in)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(1 << 20);
	struct kiln_peer_framer f;

	struct kiln_digest root = { 0 };
	char head[KILN_DIGEST_STRLEN + 1] = "";

	/* The root asked for: the first record's, when the input starts with one. */
	if (in->left >= KILN_DIGEST_STRLEN) {
		memcpy(head, in->p, KILN_DIGEST_STRLEN - 1);
		(void)kiln_digest_parse(head, &root);
	}
	kiln_peer_framer_init_tree(&f, store(), "GET", "fuzz", &root);
	kiln_strbuf_add(&sb, in->p, in->left);
	in->left = 0;
	(void)feed(in, &f, &sb);
	kiln_peer_framer_release(&f);
	kiln_strbuf_release(&sb);
}

/* Whatever was named verifies; then the store is emptied for the next run. */
static int verify_and_remove(const struct kiln_digest *d, uint64_t size,
			     void *ud)
{
	struct kiln_digest_set *all = ud;

	check(kiln_store_verify(store(), d, NULL) == 0);
	kiln_digest_set_add(all, d);
	return 0;
}

static void empty_store(void)
{
	struct kiln_digest_set all = { 0 };
	size_t i;

	check(kiln_store_foreach(store(), verify_and_remove, &all) == 0);
	for (i = 0; i < all.cap; i++)
		if (kiln_digest_is_set(&all.slots[i]))
			(void)kiln_store_remove(store(), &all.slots[i]);
	kiln_digest_set_release(&all);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct input in = { data, size };

	switch (take(&in, 1) % 4) {
	case 0:
		fuzz_plan(&in);
		break;
	case 1:
		fuzz_batch(&in, false);
		break;
	case 2:
		fuzz_batch(&in, true);
		break;
	default:
		fuzz_tree(&in);
	}
	empty_store();
	return 0;
}
