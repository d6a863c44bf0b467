/*
 * The batch framing parser (docs/api.md; states in peer-internal.h):
 * records of "<digest> <size>\n" and that many bytes, "<digest> -\n" for
 * a blob the source lacks, and "end\n". Every blob is written to a store
 * writer and verified against its digest before it is named.
 */
#include <assert.h>
#include <string.h>

#include "basic/parse-util.h"
#include "cas/tree.h"
#include "peer/peer-internal.h"

static void framer_init(struct kiln_peer_framer *f, struct kiln_store *store,
			const char *method, const char *url)
{
	memset(f, 0, sizeof(*f));
	f->store = store;
	f->method = method;
	f->url = url;
}

void kiln_peer_framer_init_tree(struct kiln_peer_framer *f,
				struct kiln_store *store, const char *method,
				const char *url, const struct kiln_digest *root)
{
	framer_init(f, store, method, url);
	f->tree = true;
	kiln_digest_set_put(&f->want, root, 0);
}

/*
 * A trees response names only nodes of the subtree asked for: the root,
 * then (breadth-first, parents first) the directories of nodes already
 * received. A node's children become wanted once it is here.
 */
static int want_children(struct kiln_peer_framer *f)
{
	struct kiln_tree t = KILN_TREE_INIT;
	struct kiln_error *e = NULL;
	size_t i;
	int r = kiln_tree_get(f->store, &f->cur, &t, &e);

	if (r < 0) {
		kiln_error_set(&f->err, -EPROTO, "%s %s: node %s is not a tree: %s", f->method,
			       f->url, KILN_DIGEST_STR(&f->cur), kiln_error_msg(e));
		kiln_error_free(e);
		return -EPROTO;
	}
	for (i = 0; i < t.n; i++)
		if (t.entries[i].type == KILN_ENTRY_DIR)
			kiln_digest_set_put(&f->want, &t.entries[i].digest, 0);
	kiln_tree_release(&t);
	return 0;
}

void kiln_peer_framer_init_batch(struct kiln_peer_framer *f,
				 struct kiln_store *store,
				 struct kiln_peer_item *item,
				 struct kiln_store_group *group,
				 const char *method, const char *url)
{
	size_t k;

	framer_init(f, store, method, url);
	f->item = item;
	f->group = group;
	for (k = 0; k < item->n; k++)
		if (item->b[k].state == KILN_PEER_PENDING)
			kiln_digest_set_put(&f->want, &item->b[k].d, k);
}

static int frame_error(struct kiln_peer_framer *f, const char *what,
		       const char *arg)
{
	return kiln_error_set(&f->err, -EPROTO,
			      "%s %s: bad batch framing: %s '%.80s'", f->method,
			      f->url, what, arg);
}

static int frame_commit(struct kiln_peer_framer *f)
{
	struct kiln_error *e = NULL;
	int r;

	if (!f->w) /* present already: bytes were only consumed */
		goto done;
	r = f->group ? kiln_store_writer_commit_group(TAKE_PTR(f->w), f->group,
						      &f->cur, &e)
		     : kiln_store_writer_commit(TAKE_PTR(f->w), &f->cur, NULL, &e);
	if (r == -EBADMSG) {
		kiln_error_set(&f->err, r, "%s %s: corrupt data: %s",
			       f->method, f->url, kiln_error_msg(e));
		kiln_error_free(e);
		return r;
	}
	kiln_error_free(e);
	if (r < 0)
		return f->local = r;
	f->blobs++;
	f->bytes += f->size;
done:
	if (f->tree) {
		r = want_children(f);
		if (r < 0)
			return r;
	}
	f->stored++;
	if (f->item)
		f->item->b[*kiln_digest_set_value(&f->want, &f->cur)].state =
			KILN_PEER_STORED;
	f->state = KILN_PEER_F_HEADER;
	return 0;
}

/* Check a record's digest and size against what was asked. */
static int frame_expect(struct kiln_peer_framer *f, const char *sz,
			bool absent)
{
	uint64_t *idx = NULL;

	if (f->tree && !kiln_digest_set_value(&f->want, &f->cur))
		return frame_error(f, "a node outside the tree asked for", f->line);
	if (!f->tree) {
		idx = kiln_digest_set_value(&f->want, &f->cur);
		if (!idx)
			return frame_error(f, "a blob nobody asked for", f->line);
		/* Asked once, answered once: a second answer could undo the
		 * first (absent after stored). */
		if (f->item->b[*idx].state != KILN_PEER_PENDING)
			return frame_error(f, "a blob answered twice", f->line);
		if (absent) {
			f->item->b[*idx].state = KILN_PEER_ABSENT;
			return 1;
		}
	}
	if (absent)
		return 1;
	if (kiln_parse_u64(sz, &f->size) < 0)
		return frame_error(f, "bad size", sz);
	if (f->tree && f->size > KILN_TREE_MAX_NODE_BYTES)
		return frame_error(f, "tree node too large", f->line);
	if (!f->tree && f->size != f->item->b[*idx].size)
		return frame_error(f, "size differs from the tree's", f->line);
	return 0;
}

static int frame_header(struct kiln_peer_framer *f)
{
	char *sp;
	int r;

	if (!strcmp(f->line, "end")) {
		f->state = KILN_PEER_F_END;
		return 0;
	}
	sp = strchr(f->line, ' ');
	if (!sp)
		return frame_error(f, "bad record header", f->line);
	*sp = '\0';
	if (kiln_digest_parse(f->line, &f->cur) < 0)
		return frame_error(f, "bad digest", f->line);
	r = frame_expect(f, sp + 1, !strcmp(sp + 1, "-"));
	if (r != 0)
		return r < 0 ? r : 0;
	f->left = f->size;
	f->state = KILN_PEER_F_BODY;
	if (!kiln_store_has(f->store, &f->cur)) {
		r = kiln_store_writer_begin(f->store, &f->w, NULL);
		if (r == 0) /* one directory sync when the pull ends */
			kiln_store_writer_defer_sync(f->w);
		if (r < 0)
			return f->local = r;
	}
	return f->left == 0 ? frame_commit(f) : 0;
}

static int frame_line(struct kiln_peer_framer *f, const char *data,
		      size_t len, size_t *used)
{
	const char *nl = memchr(data, '\n', len);
	size_t k = nl ? (size_t)(nl - data) : len;

	*used = nl ? k + 1 : k;
	if (f->llen + k >= sizeof(f->line))
		return frame_error(f, "header line too long", "");
	memcpy(f->line + f->llen, data, k);
	f->llen += k;
	if (!nl)
		return 0;
	f->line[f->llen] = '\0';
	f->llen = 0;
	return frame_header(f);
}

static int frame_body(struct kiln_peer_framer *f, const char *data,
		      size_t len, size_t *used)
{
	size_t k = f->left < len ? (size_t)f->left : len;
	int r;

	*used = k;
	if (f->w) {
		r = kiln_store_writer_write(f->w, data, k);
		if (r < 0)
			return f->local = r;
	}
	f->left -= k;
	return f->left == 0 ? frame_commit(f) : 0;
}

static void assert_frame_state(const struct kiln_peer_framer *f)
{
	/* A writer is open only inside a record body, never empty. */
	assert(f->state == KILN_PEER_F_BODY || !f->w);
	assert(f->state != KILN_PEER_F_BODY || f->left > 0);
	assert(f->state == KILN_PEER_F_HEADER || f->llen == 0);
	assert(f->llen < sizeof(f->line));
}

int kiln_peer_framer_feed(void *ud, const void *data, size_t len)
{
	struct kiln_peer_framer *f = ud;
	const char *s = data;
	size_t used;
	int r;

	while (len > 0) {
		assert_frame_state(f);
		if (f->state == KILN_PEER_F_END)
			return frame_error(f, "bytes after the end line", "");
		r = f->state == KILN_PEER_F_HEADER ? frame_line(f, s, len, &used)
						   : frame_body(f, s, len, &used);
		if (r < 0)
			return r;
		s += used;
		len -= used;
	}
	return 0;
}

void kiln_peer_framer_release(struct kiln_peer_framer *f)
{
	if (f->w)
		kiln_store_writer_abort(f->w);
	kiln_store_group_free(f->group);
	kiln_digest_set_release(&f->want);
	kiln_error_free(f->err);
	f->w = NULL;
	f->group = NULL;
	f->err = NULL;
}
