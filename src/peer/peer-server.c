/*
 * Serving a store to peers. Single blobs go out with sendfile; batch and
 * tree responses are streamed record by record (docs/api.md, "Batch
 * framing"), opening one blob at a time, so memory stays bounded whatever
 * the request asks for.
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/alloc.h"
#include "basic/parse-util.h"
#include "cas/tree.h"
#include "proto/http-server.h"
#include "peer/peer.h"

#define OCTETS "application/octet-stream"
#define FRAMES "application/vnd.kiln.blobs.v1"

struct kiln_peer_server {
	struct kiln_store *store;
	uint64_t batch_bytes;
};

/* ---- digest set ---- */

/* ---- GET /v1/blobs/<digest> ---- */

/*
 * A single "bytes=a-b", "bytes=a-" or "bytes=-n": 1 with the slice, 0 to
 * serve everything (no header, or one we do not handle: several ranges,
 * bad syntax — RFC 9110 lets a server ignore those), -ERANGE when
 * unsatisfiable.
 */
static int parse_range(const char *h, uint64_t size, uint64_t *off,
		       uint64_t *len)
{
	_cleanup_free_ char *first = NULL;
	const char *dash;
	uint64_t a, b;

	if (!h || strncmp(h, "bytes=", 6) || strchr(h, ','))
		return 0;
	h += 6;
	dash = strchr(h, '-');
	if (!dash)
		return 0;
	first = xstrndup(h, (size_t)(dash - h));
	if (!*first) { /* suffix: the last n bytes */
		if (kiln_parse_u64(dash + 1, &b) < 0)
			return 0;
		if (b == 0 || size == 0)
			return -ERANGE;
		*len = b < size ? b : size;
		*off = size - *len;
		return 1;
	}
	if (kiln_parse_u64(first, &a) < 0)
		return 0;
	if (!dash[1])
		b = UINT64_MAX;
	else if (kiln_parse_u64(dash + 1, &b) < 0 || b < a)
		return 0;
	if (a >= size)
		return -ERANGE;
	if (b >= size)
		b = size - 1;
	*off = a;
	*len = b - a + 1;
	return 1;
}

static void respond_range(struct kiln_http_server_resp *resp, int fd,
			  uint64_t size, const char *range)
{
	char cr[96];
	uint64_t off = 0, len = size;
	int r = parse_range(range, size, &off, &len);

	if (r < 0) {
		close(fd);
		kiln_http_resp_error(resp, 416, "range '%s' not satisfiable "
				     "(blob has %llu bytes)", range,
				     (unsigned long long)size);
		snprintf(cr, sizeof(cr), "bytes */%llu", (unsigned long long)size);
		kiln_http_resp_header(resp, "Content-Range", cr);
		return;
	}
	kiln_http_resp_fd(resp, r ? 206 : 200, OCTETS, fd, off, len);
	kiln_http_resp_header(resp, "Accept-Ranges", "bytes");
	if (r) {
		snprintf(cr, sizeof(cr), "bytes %llu-%llu/%llu",
			 (unsigned long long)off,
			 (unsigned long long)(off + len - 1),
			 (unsigned long long)size);
		kiln_http_resp_header(resp, "Content-Range", cr);
	}
}

static int parse_digest_arg(const char *s, struct kiln_digest *d,
			    struct kiln_http_server_resp *resp)
{
	if (kiln_digest_parse(s, d) == 0)
		return 0;
	kiln_http_resp_error(resp, 400, "malformed digest '%.80s' (expected "
			     "sha256:<64 lowercase hex>)", s);
	return -EINVAL;
}

static int h_blob(const struct kiln_http_server_req *req,
		  struct kiln_http_server_resp *resp, void *ud)
{
	struct kiln_peer_server *p = ud;
	struct kiln_digest d;
	struct stat st;
	int fd;

	if (parse_digest_arg(req->rest, &d, resp) < 0)
		return 0;
	fd = kiln_store_open_blob(p->store, &d);
	if (fd == -ENOENT) {
		kiln_http_resp_error(resp, 404, "blob %s not found", req->rest);
		return 0;
	}
	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0) {
		close(fd);
		return -errno;
	}
	respond_range(resp, fd, (uint64_t)st.st_size,
		      kiln_http_server_req_header(req, "Range"));
	return 0;
}

/*
 * PUT /v1/blobs/<digest>: the body streams into a store writer as it
 * arrives (nothing of it is kept in memory), and the blob is stored only
 * when it hashes to its name.
 */
struct upload {
	struct kiln_store_writer *w; /* NULL: the store has the blob, the body is dropped */
	bool begun;
	int r;
};

static int upload_sink(void *ud, const char *rest, void **state, const void *data, size_t n)
{
	struct kiln_peer_server *p = ud;
	struct upload *u = *state;
	struct kiln_digest d;

	if (!u) {
		u = *state = xcalloc(1, sizeof(*u));
		/* A bad name is answered by the handler; one we have is not written. */
		if (kiln_digest_parse(rest, &d) < 0 || kiln_store_has(p->store, &d))
			return 0;
		u->r = kiln_store_writer_begin(p->store, &u->w, NULL);
		u->begun = true;
		if (u->r < 0)
			return u->r;
	}
	return u->w ? kiln_store_writer_write(u->w, data, n) : 0;
}

static void upload_free(void *ud, void *state)
{
	struct upload *u = state;

	if (u->w)
		kiln_store_writer_abort(u->w);
	free(u);
}

/* Name what w holds d, or say why not. */
static int commit_upload(struct kiln_store_writer *w, const struct kiln_http_server_req *req,
			 const struct kiln_digest *d, struct kiln_http_server_resp *resp)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_digest got;
	int r = kiln_store_writer_commit(w, d, &got, &err);

	if (r == -EBADMSG) {
		kiln_http_resp_error(resp, 400, "body does not match %s: %s", req->rest,
				     kiln_error_msg(err));
		return 0;
	}
	if (r < 0)
		return r;
	kiln_http_resp_json(resp, 201, json_pack("{ss}", "digest", req->rest));
	return 0;
}

static int h_upload(const struct kiln_http_server_req *req,
		    struct kiln_http_server_resp *resp, void *ud)
{
	struct kiln_peer_server *p = ud;
	struct upload *u = *req->stream;
	struct kiln_store_writer *w = NULL;
	struct kiln_digest d;
	int r;

	if (parse_digest_arg(req->rest, &d, resp) < 0)
		return 0;
	if (kiln_store_has(p->store, &d)) {
		kiln_http_resp_json(resp, 200, json_pack("{ss}", "digest", req->rest));
		return 0;
	}
	if (u && !u->w) {
		/* The store had it when the body began and has not now (a gc). */
		kiln_http_resp_error(resp, 503, "blob %s went while it was uploaded: upload it again",
				     req->rest);
		return 0;
	}
	if (u) {
		w = TAKE_PTR(u->w);
	} else { /* an empty body: the sink never ran */
		r = kiln_store_writer_begin(p->store, &w, NULL);
		if (r < 0)
			return r;
	}
	return commit_upload(w, req, &d, resp);
}

/* ---- request bodies: {"digests": [...]} ---- */

static int parse_digests(const struct kiln_http_server_req *req,
			 struct kiln_http_server_resp *resp,
			 struct kiln_digest **out, size_t *n)
{
	json_t *arr = json_object_get(req->json, "digests"), *v;
	size_t i;

	if (!json_is_array(arr)) {
		kiln_http_resp_error(resp, 400, "body: expected {\"digests\": [...]}");
		return -EINVAL;
	}
	if (json_array_size(arr) > KILN_PEER_MAX_DIGESTS) {
		kiln_http_resp_error(resp, 400, "body: more than %u digests",
				     KILN_PEER_MAX_DIGESTS);
		return -E2BIG;
	}
	*n = json_array_size(arr);
	*out = xcalloc(*n ? *n : 1, sizeof(**out));
	json_array_foreach(arr, i, v) {
		if (!json_is_string(v) ||
		    parse_digest_arg(json_string_value(v), &(*out)[i], resp) < 0) {
			if (!json_is_string(v))
				kiln_http_resp_error(resp, 400, "body: digests[%zu] "
						     "is not a string", i);
			free(TAKE_PTR(*out));
			return -EINVAL;
		}
	}
	return 0;
}

static int h_missing(const struct kiln_http_server_req *req,
		     struct kiln_http_server_resp *resp, void *ud)
{
	struct kiln_peer_server *p = ud;
	_cleanup_free_ struct kiln_digest *ds = NULL;
	json_t *missing;
	size_t i, n;

	if (parse_digests(req, resp, &ds, &n) < 0)
		return 0;
	missing = json_array();
	for (i = 0; i < n; i++)
		if (!kiln_store_has(p->store, &ds[i]))
			json_array_append_new(missing,
				json_string(KILN_DIGEST_STR(&ds[i])));
	kiln_http_resp_json(resp, 200, json_pack("{s:o}", "missing", missing));
	return 0;
}

/* ---- framed responses (batch and trees) ---- */

/*
 * State of one framed response. Records are produced lazily: the header
 * of the next one is made when the previous body has been sent.
 */
struct frames {
	struct kiln_store *store;
	bool tree;                 /* queue grows with child directories */
	struct kiln_digest *queue; /* batch: as asked; tree: BFS order */
	size_t n, alloc, next;
	struct kiln_digest_set seen; /* tree: nodes queued already */
	uint64_t cap, payload;
	size_t records;
	char hdr[KILN_PEER_FRAME_LINE_MAX];
	size_t hlen, hoff;
	int fd;           /* batch: body from this blob ... */
	char *mem;        /* tree: ... or from this node */
	uint64_t left, pos;
	bool done;        /* "end" line queued */
	int error;
};

static void frames_free(void *ud)
{
	struct frames *f = ud;

	if (f->fd >= 0)
		close(f->fd);
	free(f->mem);
	free(f->queue);
	kiln_digest_set_release(&f->seen);
	free(f);
}

static void set_header(struct frames *f, const struct kiln_digest *d,
		       const uint64_t *size)
{
	if (!d)
		f->hlen = (size_t)snprintf(f->hdr, sizeof(f->hdr), "end\n");
	else if (!size)
		f->hlen = (size_t)snprintf(f->hdr, sizeof(f->hdr), "%s -\n",
					   KILN_DIGEST_STR(d));
	else
		f->hlen = (size_t)snprintf(f->hdr, sizeof(f->hdr), "%s %llu\n",
					   KILN_DIGEST_STR(d),
					   (unsigned long long)*size);
	f->hoff = 0;
}

/* True when a record of size bytes would go past the cap. */
static bool over_cap(const struct frames *f, uint64_t size)
{
	return f->records > 0 && f->payload + size > f->cap;
}

static void push(struct frames *f, const struct kiln_digest *d)
{
	f->queue = xgrow(f->queue, &f->alloc, f->n + 1, sizeof(*f->queue));
	f->queue[f->n++] = *d;
}

/* 1: record set up; 0: stop here (cap); -errno. */
static int open_blob(struct frames *f, const struct kiln_digest *d)
{
	struct stat st;
	int fd = kiln_store_open_blob(f->store, d);

	if (fd == -ENOENT) {
		set_header(f, d, NULL);
		return 1;
	}
	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0 || over_cap(f, (uint64_t)st.st_size)) {
		close(fd);
		return 0;
	}
	f->fd = fd;
	f->left = (uint64_t)st.st_size;
	f->pos = 0;
	set_header(f, d, &f->left);
	return 1;
}

static void queue_children(struct frames *f, const char *data, size_t len)
{
	struct kiln_tree t = KILN_TREE_INIT;
	size_t i;

	if (kiln_tree_decode(data, len, &t, NULL) < 0)
		return; /* verified bytes that do not decode: sent as they are */
	for (i = 0; i < t.n; i++) {
		const struct kiln_digest *c = &t.entries[i].digest;

		if (t.entries[i].type == KILN_ENTRY_DIR &&
		    !kiln_tree_is_empty_digest(c) &&
		    kiln_digest_set_put(&f->seen, c, 0))
			push(f, c);
	}
	kiln_tree_release(&t);
}

static int open_node(struct frames *f, const struct kiln_digest *d)
{
	char *data = NULL;
	size_t len = 0;
	int r;

	/* Verified read: a node damaged on disk is reported absent. */
	r = kiln_store_read(f->store, d, KILN_TREE_MAX_NODE_BYTES, &data, &len,
			    NULL);
	if (r == -ENOENT || r == -EBADMSG || r == -EFBIG) {
		set_header(f, d, NULL);
		return 1;
	}
	if (r < 0)
		return r;
	if (over_cap(f, len)) {
		free(data);
		return 0;
	}
	queue_children(f, data, len);
	f->mem = data;
	f->left = len;
	f->pos = 0;
	set_header(f, d, &f->left);
	return 1;
}

static int next_record(struct frames *f)
{
	struct kiln_digest d;
	int r = 0;

	if (f->next < f->n) {
		d = f->queue[f->next++]; /* a copy: open_node() grows queue */
		r = f->tree ? open_node(f, &d) : open_blob(f, &d);
		if (r < 0)
			return r;
	}
	if (r == 0) {
		set_header(f, NULL, NULL);
		f->done = true;
		return 0;
	}
	f->records++;
	f->payload += f->left;
	return 0;
}

static ssize_t body_read(struct frames *f, char *buf, size_t max)
{
	size_t want = f->left < max ? (size_t)f->left : max;
	ssize_t n;

	if (f->mem) {
		memcpy(buf, f->mem + f->pos, want);
		n = (ssize_t)want;
	} else {
		do {
			n = pread(f->fd, buf, want, (off_t)f->pos);
		} while (n < 0 && errno == EINTR);
		if (n <= 0)
			return n < 0 ? -errno : -EIO; /* blob shrank */
	}
	f->pos += (uint64_t)n;
	f->left -= (uint64_t)n;
	if (f->left == 0) {
		free(TAKE_PTR(f->mem));
		if (f->fd >= 0)
			close(TAKE_FD(f->fd));
	}
	return n;
}

static ssize_t frames_read(void *ud, uint64_t pos, char *buf, size_t max)
{
	struct frames *f = ud;
	size_t filled = 0, k;
	ssize_t n;

	while (filled < max && !f->error) {
		if (f->hoff < f->hlen) {
			k = f->hlen - f->hoff < max - filled ? f->hlen - f->hoff
							     : max - filled;
			memcpy(buf + filled, f->hdr + f->hoff, k);
			f->hoff += k;
			filled += k;
		} else if (f->left > 0) {
			n = body_read(f, buf + filled, max - filled);
			if (n < 0)
				f->error = (int)n;
			else
				filled += (size_t)n;
		} else if (f->done) {
			break;
		} else {
			f->error = next_record(f);
		}
	}
	/* Bytes already in buf go out; the error ends the stream next call. */
	if (filled == 0 && f->error)
		return f->error;
	return (ssize_t)filled;
}

static struct frames *frames_new(struct kiln_peer_server *p, bool tree)
{
	struct frames *f = xcalloc(1, sizeof(*f));

	f->store = p->store;
	f->tree = tree;
	f->cap = p->batch_bytes;
	f->fd = -1;
	return f;
}

static int h_batch(const struct kiln_http_server_req *req,
		   struct kiln_http_server_resp *resp, void *ud)
{
	struct kiln_peer_server *p = ud;
	struct frames *f = frames_new(p, false);

	if (parse_digests(req, resp, &f->queue, &f->n) < 0) {
		frames_free(f);
		return 0;
	}
	f->alloc = f->n;
	kiln_http_resp_stream(resp, 200, FRAMES, UINT64_MAX, frames_read, f,
			      frames_free);
	return 0;
}

static int h_tree(const struct kiln_http_server_req *req,
		  struct kiln_http_server_resp *resp, void *ud)
{
	struct kiln_peer_server *p = ud;
	struct kiln_digest d;
	struct frames *f;

	if (parse_digest_arg(req->rest, &d, resp) < 0)
		return 0;
	if (!kiln_tree_is_empty_digest(&d) && !kiln_store_has(p->store, &d)) {
		kiln_http_resp_error(resp, 404, "tree %s not found", req->rest);
		return 0;
	}
	f = frames_new(p, true);
	/* The empty node is implied: nothing to send for it. */
	if (!kiln_tree_is_empty_digest(&d)) {
		kiln_digest_set_put(&f->seen, &d, 0);
		push(f, &d);
	}
	kiln_http_resp_stream(resp, 200, FRAMES, UINT64_MAX, frames_read, f,
			      frames_free);
	return 0;
}

/* ---- registration ---- */

int kiln_peer_server_new(struct kiln_http_server *http,
			 struct kiln_store *store,
			 const struct kiln_peer_server_options *opts,
			 struct kiln_peer_server **out, struct kiln_error **err)
{
	struct kiln_peer_server *p = xcalloc(1, sizeof(*p));
	const char *tok = opts ? opts->token : NULL, *alt = opts ? opts->alt_token : NULL;
	const struct kiln_http_route routes[] = {
		{ "GET", "/v1/blobs/*", h_blob, p, 0, false, false, tok, alt, NULL, NULL },
		{ "POST", "/v1/blobs/missing", h_missing, p,
		  KILN_PEER_REQUEST_LIMIT, true, false, tok, alt, NULL, NULL },
		{ "POST", "/v1/blobs/batch", h_batch, p,
		  KILN_PEER_REQUEST_LIMIT, true, false, tok, alt, NULL, NULL },
		{ "GET", "/v1/trees/*", h_tree, p, 0, false, false, tok, alt, NULL, NULL },
		{ "PUT", "/v1/blobs/*", h_upload, p, opts ? opts->upload_limit : 0, false,
		  false, opts ? opts->upload_token : NULL, NULL, upload_sink, upload_free },
	};
	size_t i, n = ARRAY_SIZE(routes);
	int r;

	p->store = store;
	p->batch_bytes = opts && opts->batch_bytes ? opts->batch_bytes
						   : KILN_PEER_BATCH_BYTES;
	if (!opts || !opts->upload_token)
		n--; /* no uploads */
	for (i = 0; i < n; i++) {
		r = kiln_http_server_route(http, &routes[i]);
		if (r < 0) {
			free(p);
			return kiln_error_seterrno(err, r, "registering %s %s",
						   routes[i].method,
						   routes[i].path);
		}
	}
	*out = p;
	return 0;
}

void kiln_peer_server_free(struct kiln_peer_server *p)
{
	free(p);
}
