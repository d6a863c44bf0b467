/*
 * Tree nodes: entry operations, the canonical encoding (docs/internals/
 * tree.md), storing and loading nodes, and the in-memory node tree used by
 * builders and the editor.
 */
#include "cas/tree.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/macro.h"
#include "basic/strv.h"
#include "cas/cas-internal.h"

/* ---- entries ---- */

void kiln_tree_init(struct kiln_tree *t)
{
	t->entries = NULL;
	t->n = t->alloc = 0;
	t->links = NULL;
	t->n_links = 0;
}

void kiln_tree_entry_release(struct kiln_tree_entry *e)
{
	size_t i;

	if (!e)
		return;
	for (i = 0; i < e->n_xattrs; i++) {
		free(e->xattrs[i].name);
		free(e->xattrs[i].value);
	}
	free(e->xattrs);
	free(e->name);
	free(e->target);
	free(e->link);
	memset(e, 0, sizeof(*e));
}

static void link_release(struct kiln_tree_link *l)
{
	kiln_strv_free(l->paths, l->n);
	l->paths = NULL;
	l->n = 0;
}

void kiln_tree_release(struct kiln_tree *t)
{
	size_t i;

	if (!t)
		return;
	for (i = 0; i < t->n; i++)
		kiln_tree_entry_release(&t->entries[i]);
	free(t->entries);
	for (i = 0; i < t->n_links; i++)
		link_release(&t->links[i]);
	free(t->links);
	kiln_tree_init(t);
}

static uint8_t *memdup_or_null(const void *p, size_t n)
{
	uint8_t *q = xmalloc(n ? n : 1);

	if (n)
		memcpy(q, p, n);
	return q;
}

void kiln_tree_entry_copy(struct kiln_tree_entry *dst,
			  const struct kiln_tree_entry *src)
{
	size_t i;

	*dst = *src;
	dst->name = src->name ? xstrdup(src->name) : NULL;
	dst->target = src->target ? xstrdup(src->target) : NULL;
	dst->link = src->link ? xstrdup(src->link) : NULL;
	dst->xattrs = NULL;
	if (!src->n_xattrs)
		return;
	dst->xattrs = xcalloc(src->n_xattrs, sizeof(*dst->xattrs));
	for (i = 0; i < src->n_xattrs; i++) {
		dst->xattrs[i].name = xstrdup(src->xattrs[i].name);
		dst->xattrs[i].value = memdup_or_null(src->xattrs[i].value,
						      src->xattrs[i].len);
		dst->xattrs[i].len = src->xattrs[i].len;
	}
}

static bool streq_null(const char *a, const char *b)
{
	if (!a || !b)
		return a == b;
	return strcmp(a, b) == 0;
}

static bool xattrs_eq(const struct kiln_tree_entry *a,
		      const struct kiln_tree_entry *b)
{
	size_t i;

	if (a->n_xattrs != b->n_xattrs)
		return false;
	for (i = 0; i < a->n_xattrs; i++) {
		const struct kiln_xattr *x = &a->xattrs[i], *y = &b->xattrs[i];

		if (strcmp(x->name, y->name) || x->len != y->len ||
		    (x->len && memcmp(x->value, y->value, x->len)))
			return false;
	}
	return true;
}

static bool payload_eq(const struct kiln_tree_entry *a,
		       const struct kiln_tree_entry *b)
{
	switch (a->type) {
	case KILN_ENTRY_FILE:
	case KILN_ENTRY_DIR:
		return kiln_digest_eq(&a->digest, &b->digest);
	case KILN_ENTRY_SYMLINK:
		return streq_null(a->target, b->target);
	case KILN_ENTRY_CHAR:
	case KILN_ENTRY_BLOCK:
		return a->rdev_major == b->rdev_major &&
		       a->rdev_minor == b->rdev_minor;
	default:
		return true;
	}
}

bool kiln_tree_entry_same_file(const struct kiln_tree_entry *a,
			       const struct kiln_tree_entry *b)
{
	return a->type == b->type && a->mode == b->mode && a->uid == b->uid &&
	       a->gid == b->gid && a->mtime_sec == b->mtime_sec &&
	       a->mtime_nsec == b->mtime_nsec && a->size == b->size &&
	       payload_eq(a, b) && xattrs_eq(a, b);
}

bool kiln_tree_entry_eq(const struct kiln_tree_entry *a,
			const struct kiln_tree_entry *b)
{
	return streq_null(a->name, b->name) && kiln_tree_entry_same_file(a, b);
}

/* Index of name, or -(insertion point) - 1. */
static ssize_t tree_search(const struct kiln_tree *t, const char *name)
{
	size_t lo = 0, hi = t->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(t->entries[mid].name, name);

		if (c == 0)
			return (ssize_t)mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -(ssize_t)lo - 1;
}

void cas_tree_append(struct kiln_tree *t, struct kiln_tree_entry *e)
{
	t->entries = xgrow(t->entries, &t->alloc, t->n + 1, sizeof(*t->entries));
	t->entries[t->n++] = *e;
	memset(e, 0, sizeof(*e));
}

void kiln_tree_set(struct kiln_tree *t, struct kiln_tree_entry *e)
{
	ssize_t i = tree_search(t, e->name);
	size_t at;

	if (i >= 0) {
		kiln_tree_entry_release(&t->entries[i]);
		t->entries[i] = *e;
		memset(e, 0, sizeof(*e));
		return;
	}
	at = (size_t)(-i - 1);
	t->entries = xgrow(t->entries, &t->alloc, t->n + 1, sizeof(*t->entries));
	memmove(&t->entries[at + 1], &t->entries[at],
		(t->n - at) * sizeof(*t->entries));
	t->entries[at] = *e;
	t->n++;
	memset(e, 0, sizeof(*e));
}

int kiln_tree_remove(struct kiln_tree *t, const char *name)
{
	ssize_t i = tree_search(t, name);

	if (i < 0)
		return -ENOENT;
	kiln_tree_entry_release(&t->entries[i]);
	memmove(&t->entries[i], &t->entries[i + 1],
		(t->n - (size_t)i - 1) * sizeof(*t->entries));
	t->n--;
	return 0;
}

struct kiln_tree_entry *kiln_tree_find(const struct kiln_tree *t,
				       const char *name)
{
	ssize_t i = tree_search(t, name);

	return i >= 0 ? &t->entries[i] : NULL;
}

/* ---- hardlink groups ---- */

int kiln_path_walk_cmp(const char *a, const char *b)
{
	for (;;) {
		size_t na = strcspn(a, "/"), nb = strcspn(b, "/");
		int c = memcmp(a, b, na < nb ? na : nb);

		if (c == 0 && na != nb)
			c = na < nb ? -1 : 1;
		if (c)
			return c;
		a += na;
		b += nb;
		if (!*a || !*b)
			return *a ? 1 : *b ? -1 : 0;
		a++;
		b++;
	}
}

static int path_cmpp(const void *a, const void *b)
{
	return kiln_path_walk_cmp(*(char *const *)a, *(char *const *)b);
}

static int link_cmp(const void *a, const void *b)
{
	return kiln_path_walk_cmp(((const struct kiln_tree_link *)a)->paths[0],
				  ((const struct kiln_tree_link *)b)->paths[0]);
}

void kiln_tree_add_link(struct kiln_tree *t, char **paths, size_t n)
{
	struct kiln_tree_link *l;

	qsort(paths, n, sizeof(*paths), path_cmpp);
	t->links = xrealloc(t->links, (t->n_links + 1) * sizeof(*t->links));
	l = &t->links[t->n_links++];
	l->paths = paths;
	l->n = n;
	qsort(t->links, t->n_links, sizeof(*t->links), link_cmp);
}

/* path is p, or below p. */
static bool path_within(const char *path, const char *p)
{
	size_t n = strlen(p);

	return !strncmp(path, p, n) && (path[n] == '\0' || path[n] == '/');
}

bool kiln_tree_forget_link(struct kiln_tree *t, const char *path)
{
	bool changed = false;
	size_t i = 0, j, k;

	while (i < t->n_links) {
		struct kiln_tree_link *l = &t->links[i];

		for (j = k = 0; j < l->n; j++) {
			if (path_within(l->paths[j], path)) {
				free(l->paths[j]);
				changed = true;
			} else {
				l->paths[k++] = l->paths[j];
			}
		}
		l->n = k;
		if (l->n >= 2) {
			i++;
			continue;
		}
		link_release(l);
		memmove(l, l + 1, (t->n_links - i - 1) * sizeof(*l));
		t->n_links--;
	}
	if (t->n_links == 0) {
		free(t->links);
		t->links = NULL;
	}
	/* The first member may have gone: groups re-sort by their new first. */
	if (changed && t->n_links > 1)
		qsort(t->links, t->n_links, sizeof(*t->links), link_cmp);
	return changed;
}

/* ---- canonical form ---- */

static bool name_ok(const char *name, size_t len)
{
	if (len == 0 || len > KILN_TREE_MAX_NAME)
		return false;
	if (memchr(name, '/', len) || memchr(name, '\0', len))
		return false;
	return !(len == 1 && name[0] == '.') &&
	       !(len == 2 && name[0] == '.' && name[1] == '.');
}

static int check_xattrs(const struct kiln_tree_entry *e, struct kiln_error **err)
{
	size_t i;

	if (e->n_xattrs > KILN_TREE_MAX_XATTRS)
		return kiln_error_set(err, -EINVAL, "entry \"%s\": %zu xattrs, limit %u",
				      e->name, e->n_xattrs, KILN_TREE_MAX_XATTRS);
	for (i = 0; i < e->n_xattrs; i++) {
		const struct kiln_xattr *x = &e->xattrs[i];
		size_t n = x->name ? strlen(x->name) : 0;

		if (n == 0 || n > KILN_TREE_MAX_XATTR_NAME)
			return kiln_error_set(err, -EINVAL,
					      "entry \"%s\": bad xattr name", e->name);
		if (x->len > KILN_TREE_MAX_XATTR_VALUE)
			return kiln_error_set(err, -EINVAL,
					      "entry \"%s\": xattr %s value too large",
					      e->name, x->name);
		if (i > 0 && strcmp(e->xattrs[i - 1].name, x->name) >= 0)
			return kiln_error_set(err, -EINVAL,
					      "entry \"%s\": xattrs not sorted or duplicate at %s",
					      e->name, x->name);
	}
	return 0;
}

static int check_payload(const struct kiln_tree_entry *e, struct kiln_error **err)
{
	size_t n;

	switch (e->type) {
	case KILN_ENTRY_FILE:
	case KILN_ENTRY_DIR:
		if (e->digest.algo != KILN_DIGEST_SHA256)
			return kiln_error_set(err, -EINVAL, "entry \"%s\": no digest",
					      e->name);
		return 0;
	case KILN_ENTRY_SYMLINK:
		n = e->target ? strlen(e->target) : 0;
		if (n == 0 || n > KILN_TREE_MAX_TARGET)
			return kiln_error_set(err, -EINVAL,
					      "entry \"%s\": symlink target length %zu",
					      e->name, n);
		return 0;
	case KILN_ENTRY_CHAR:
	case KILN_ENTRY_BLOCK:
	case KILN_ENTRY_FIFO:
		return 0;
	default:
		return kiln_error_set(err, -EINVAL, "entry \"%s\": unknown type %u",
				      e->name, e->type);
	}
}

int cas_entry_check(const struct kiln_tree_entry *e, struct kiln_error **err)
{
	int r;

	if (!e->name || !name_ok(e->name, strlen(e->name)))
		return kiln_error_set(err, -EINVAL, "bad entry name \"%s\"",
				      e->name ? e->name : "");
	r = check_payload(e, err);
	if (r < 0)
		return r;
	if (e->mode & ~07777u)
		return kiln_error_set(err, -EINVAL, "entry \"%s\": mode %o beyond 07777",
				      e->name, e->mode);
	if (e->size && e->type != KILN_ENTRY_FILE)
		return kiln_error_set(err, -EINVAL, "entry \"%s\": size on a non-file",
				      e->name);
	if (e->mtime_nsec >= 1000000000u)
		return kiln_error_set(err, -EINVAL, "entry \"%s\": mtime nsec %u",
				      e->name, e->mtime_nsec);
	return check_xattrs(e, err);
}

/* A member path: 1..KILN_TREE_MAX_LINK_PATH bytes of valid names. */
static bool link_path_ok(const char *p)
{
	size_t len = strlen(p);

	if (len == 0 || len > KILN_TREE_MAX_LINK_PATH)
		return false;
	for (;;) {
		size_t n = strcspn(p, "/");

		if (!name_ok(p, n))
			return false;
		if (!p[n])
			return true;
		p += n + 1;
	}
}

/* The entry a member's first component names, and what it must be. */
static bool link_root_ok(const struct kiln_tree *t, const char *p)
{
	size_t n = strcspn(p, "/");
	_cleanup_free_ char *name = xstrndup(p, n);
	const struct kiln_tree_entry *e = kiln_tree_find(t, name);

	return e && e->type == (p[n] ? KILN_ENTRY_DIR : KILN_ENTRY_FILE);
}

static bool same_first(const char *a, const char *b)
{
	size_t n = strcspn(a, "/");

	return n == strcspn(b, "/") && !memcmp(a, b, n);
}

static int check_group(const struct kiln_tree *t, size_t g,
		       struct kiln_error **err)
{
	const struct kiln_tree_link *l = &t->links[g];
	bool spread = false;
	size_t i;

	if (l->n < 2)
		return kiln_error_set(err, -EINVAL, "hardlink group %zu has %zu member",
				      g, l->n);
	for (i = 0; i < l->n; i++) {
		const char *p = l->paths[i];

		if (!p || !link_path_ok(p))
			return kiln_error_set(err, -EINVAL,
					      "hardlink group %zu: bad path \"%s\"", g,
					      p ? p : "");
		if (!link_root_ok(t, p))
			return kiln_error_set(err, -EINVAL,
					      "hardlink group %zu: \"%s\" is not a file "
					      "below this directory", g, p);
		if (i > 0 && kiln_path_walk_cmp(l->paths[i - 1], p) >= 0)
			return kiln_error_set(err, -EINVAL,
					      "hardlink group %zu: members not in walk "
					      "order at \"%s\"", g, p);
		spread |= !same_first(l->paths[0], p);
	}
	/* Held by the deepest directory holding all the members. */
	if (!spread)
		return kiln_error_set(err, -EINVAL,
				      "hardlink group %zu lies inside \"%s\": held "
				      "by the wrong directory", g, l->paths[0]);
	return 0;
}

/*
 * Groups are canonical: each valid, in order of their first members, and
 * no path in two groups or inside another member.
 */
static int check_links(const struct kiln_tree *t, struct kiln_error **err)
{
	_cleanup_free_ char **all = NULL;
	size_t n = 0, g, i;
	int r = 0;

	for (g = 0; g < t->n_links; g++) {
		r = check_group(t, g, err);
		if (r < 0)
			return r;
		if (g > 0 && kiln_path_walk_cmp(t->links[g - 1].paths[0],
						t->links[g].paths[0]) >= 0)
			return kiln_error_set(err, -EINVAL,
					      "hardlink groups not sorted at \"%s\"",
					      t->links[g].paths[0]);
		n += t->links[g].n;
	}
	if (t->n_links == 0)
		return 0;
	all = xcalloc(n, sizeof(*all));
	for (g = 0, n = 0; g < t->n_links; g++)
		for (i = 0; i < t->links[g].n; i++)
			all[n++] = t->links[g].paths[i];
	qsort(all, n, sizeof(*all), path_cmpp);
	for (i = 1; i < n; i++)
		if (path_within(all[i], all[i - 1]))
			return kiln_error_set(err, -EINVAL,
					      "hardlink groups: \"%s\" is in two groups "
					      "or inside another member", all[i]);
	return 0;
}

static int xattr_cmp(const void *a, const void *b)
{
	return strcmp(((const struct kiln_xattr *)a)->name,
		      ((const struct kiln_xattr *)b)->name);
}

int cas_entry_sort_xattrs(struct kiln_tree_entry *e, struct kiln_error **err)
{
	size_t i;

	if (e->n_xattrs < 2)
		return 0;
	qsort(e->xattrs, e->n_xattrs, sizeof(*e->xattrs), xattr_cmp);
	for (i = 1; i < e->n_xattrs; i++)
		if (!strcmp(e->xattrs[i - 1].name, e->xattrs[i].name))
			return kiln_error_set(err, -EINVAL, "entry \"%s\": duplicate xattr %s",
					      e->name, e->xattrs[i].name);
	return 0;
}

/* ---- encoding ---- */

static int put_be(struct kiln_strbuf *out, uint64_t v, unsigned bytes)
{
	uint8_t b[8];
	unsigned i;

	for (i = 0; i < bytes; i++)
		b[i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
	return kiln_strbuf_add(out, b, bytes);
}

static int put_payload(struct kiln_strbuf *out, const struct kiln_tree_entry *e)
{
	size_t n;
	int r;

	switch (e->type) {
	case KILN_ENTRY_FILE:
	case KILN_ENTRY_DIR:
		r = put_be(out, e->digest.algo, 1);
		return r ? r : kiln_strbuf_add(out, e->digest.bytes, 32);
	case KILN_ENTRY_SYMLINK:
		n = strlen(e->target);
		r = put_be(out, n, 2);
		return r ? r : kiln_strbuf_add(out, e->target, n);
	case KILN_ENTRY_CHAR:
	case KILN_ENTRY_BLOCK:
		r = put_be(out, e->rdev_major, 4);
		return r ? r : put_be(out, e->rdev_minor, 4);
	default:
		return 0;
	}
}

static int put_xattrs(struct kiln_strbuf *out, const struct kiln_tree_entry *e)
{
	int r = put_be(out, e->n_xattrs, 2);
	size_t i;

	for (i = 0; r == 0 && i < e->n_xattrs; i++) {
		const struct kiln_xattr *x = &e->xattrs[i];
		size_t n = strlen(x->name);

		r = put_be(out, n, 2);
		r = r ? r : kiln_strbuf_add(out, x->name, n);
		r = r ? r : put_be(out, x->len, 4);
		r = r ? r : kiln_strbuf_add(out, x->value, x->len);
	}
	return r;
}

static int put_entry(struct kiln_strbuf *out, const struct kiln_tree_entry *e)
{
	size_t n = strlen(e->name);
	int r;

	r = put_be(out, n, 2);
	r = r ? r : kiln_strbuf_add(out, e->name, n);
	r = r ? r : put_be(out, e->type, 1);
	r = r ? r : put_be(out, e->mode, 4);
	r = r ? r : put_be(out, e->uid, 4);
	r = r ? r : put_be(out, e->gid, 4);
	r = r ? r : put_be(out, (uint64_t)e->mtime_sec, 8);
	r = r ? r : put_be(out, e->mtime_nsec, 4);
	r = r ? r : put_be(out, e->size, 8);
	r = r ? r : put_payload(out, e);
	return r ? r : put_xattrs(out, e);
}

static int put_links(struct kiln_strbuf *out, const struct kiln_tree *t)
{
	int r = put_be(out, t->n_links, 4);
	size_t g, i;

	for (g = 0; r == 0 && g < t->n_links; g++) {
		r = put_be(out, t->links[g].n, 4);
		for (i = 0; r == 0 && i < t->links[g].n; i++) {
			size_t n = strlen(t->links[g].paths[i]);

			r = put_be(out, n, 2);
			r = r ? r : kiln_strbuf_add(out, t->links[g].paths[i], n);
		}
	}
	return r;
}

static int tree_encode(const struct kiln_tree *t, struct kiln_strbuf *out,
		       struct kiln_error **err)
{
	size_t i;
	int r;

	if (t->n > UINT32_MAX || t->n_links > UINT32_MAX)
		return kiln_error_set(err, -E2BIG, "directory has too many entries");
	r = kiln_strbuf_add(out, KILN_TREE_MAGIC, KILN_TREE_MAGIC_LEN);
	r = r ? r : put_be(out, t->n_links ? KILN_TREE_VERSION_LINKS : KILN_TREE_VERSION, 1);
	r = r ? r : put_be(out, t->n, 4);
	for (i = 0; r == 0 && i < t->n; i++) {
		r = cas_entry_check(&t->entries[i], err);
		if (r == 0 && i > 0 &&
		    strcmp(t->entries[i - 1].name, t->entries[i].name) >= 0)
			r = kiln_error_set(err, -EINVAL, "entries not sorted at \"%s\"",
					   t->entries[i].name);
		r = r ? r : put_entry(out, &t->entries[i]);
	}
	if (r == 0 && t->n_links) {
		r = check_links(t, err);
		r = r ? r : put_links(out, t);
	}
	if (r == -E2BIG)
		kiln_error_set(err, r, "directory node larger than %u bytes",
			       KILN_TREE_MAX_NODE_BYTES);
	return r;
}

int kiln_tree_encode(const struct kiln_tree *t, struct kiln_strbuf *out)
{
	return tree_encode(t, out, NULL);
}

/* ---- decoding: every read is bounds-checked against the input ---- */

struct reader {
	const uint8_t *p;
	size_t len, off;
	size_t entry; /* index, for messages */
};

static bool get_be(struct reader *rd, unsigned bytes, uint64_t *v)
{
	unsigned i;

	if (rd->len - rd->off < bytes)
		return false;
	*v = 0;
	for (i = 0; i < bytes; i++)
		*v = (*v << 8) | rd->p[rd->off + i];
	rd->off += bytes;
	return true;
}

static const uint8_t *get_bytes(struct reader *rd, size_t n)
{
	const uint8_t *p;

	if (rd->len - rd->off < n)
		return NULL;
	p = rd->p + rd->off;
	rd->off += n;
	return p;
}

static int truncated(struct reader *rd, struct kiln_error **err)
{
	return kiln_error_set(err, -EBADMSG, "tree node truncated in entry %zu",
			      rd->entry);
}

static int bad(struct reader *rd, struct kiln_error **err, const char *what)
{
	return kiln_error_set(err, -EBADMSG, "tree node entry %zu: %s", rd->entry,
			      what);
}

/* A length-prefixed string without NUL bytes. */
static int get_str(struct reader *rd, unsigned lenbytes, size_t max,
		   char **out, struct kiln_error **err)
{
	const uint8_t *p;
	uint64_t n;

	if (!get_be(rd, lenbytes, &n))
		return truncated(rd, err);
	if (n == 0 || n > max)
		return bad(rd, err, "string length out of range");
	p = get_bytes(rd, (size_t)n);
	if (!p)
		return truncated(rd, err);
	if (memchr(p, '\0', (size_t)n))
		return bad(rd, err, "NUL byte in a string");
	*out = xstrndup((const char *)p, (size_t)n);
	return 0;
}

static int get_payload(struct reader *rd, struct kiln_tree_entry *e,
		       struct kiln_error **err)
{
	const uint8_t *p;
	uint64_t a, b;

	switch (e->type) {
	case KILN_ENTRY_FILE:
	case KILN_ENTRY_DIR:
		if (!get_be(rd, 1, &a))
			return truncated(rd, err);
		if (a != KILN_DIGEST_SHA256)
			return bad(rd, err, "unknown digest algorithm");
		p = get_bytes(rd, 32);
		if (!p)
			return truncated(rd, err);
		e->digest.algo = (uint8_t)a;
		memcpy(e->digest.bytes, p, 32);
		return 0;
	case KILN_ENTRY_SYMLINK:
		return get_str(rd, 2, KILN_TREE_MAX_TARGET, &e->target, err);
	case KILN_ENTRY_CHAR:
	case KILN_ENTRY_BLOCK:
		if (!get_be(rd, 4, &a) || !get_be(rd, 4, &b))
			return truncated(rd, err);
		e->rdev_major = (uint32_t)a;
		e->rdev_minor = (uint32_t)b;
		return 0;
	case KILN_ENTRY_FIFO:
		return 0;
	default:
		return bad(rd, err, "unknown entry type");
	}
}

static int get_xattrs(struct reader *rd, struct kiln_tree_entry *e,
		      struct kiln_error **err)
{
	uint64_t n, vlen;
	const uint8_t *v;
	size_t i;
	int r;

	if (!get_be(rd, 2, &n))
		return truncated(rd, err);
	if (n > KILN_TREE_MAX_XATTRS)
		return bad(rd, err, "too many xattrs");
	if (n)
		e->xattrs = xcalloc((size_t)n, sizeof(*e->xattrs));
	for (i = 0; i < n; i++) {
		struct kiln_xattr *x = &e->xattrs[i];

		r = get_str(rd, 2, KILN_TREE_MAX_XATTR_NAME, &x->name, err);
		e->n_xattrs = i + (r == 0);
		if (r < 0)
			return r;
		if (!get_be(rd, 4, &vlen))
			return truncated(rd, err);
		if (vlen > KILN_TREE_MAX_XATTR_VALUE)
			return bad(rd, err, "xattr value too large");
		v = get_bytes(rd, (size_t)vlen);
		if (!v)
			return truncated(rd, err);
		x->value = memdup_or_null(v, (size_t)vlen);
		x->len = (uint32_t)vlen;
		if (i > 0 && strcmp(e->xattrs[i - 1].name, x->name) >= 0)
			return bad(rd, err, "xattrs not sorted or duplicate");
	}
	return 0;
}

static int get_fixed(struct reader *rd, struct kiln_tree_entry *e,
		     struct kiln_error **err)
{
	uint64_t type, mode, uid, gid, sec, nsec, size;

	if (!get_be(rd, 1, &type) || !get_be(rd, 4, &mode) ||
	    !get_be(rd, 4, &uid) || !get_be(rd, 4, &gid) ||
	    !get_be(rd, 8, &sec) || !get_be(rd, 4, &nsec) ||
	    !get_be(rd, 8, &size))
		return truncated(rd, err);
	if (type < KILN_ENTRY_FILE || type > KILN_ENTRY_FIFO)
		return bad(rd, err, "unknown entry type");
	if (mode & ~(uint64_t)07777)
		return bad(rd, err, "mode has bits beyond 07777");
	if (nsec >= 1000000000u)
		return bad(rd, err, "mtime nanoseconds out of range");
	if (size && type != KILN_ENTRY_FILE)
		return bad(rd, err, "non-zero size on a non-file");
	e->type = (uint8_t)type;
	e->mode = (uint32_t)mode;
	e->uid = (uint32_t)uid;
	e->gid = (uint32_t)gid;
	e->mtime_sec = (int64_t)sec;
	e->mtime_nsec = (uint32_t)nsec;
	e->size = size;
	return 0;
}

static int get_entry(struct reader *rd, struct kiln_tree_entry *e,
		     struct kiln_error **err)
{
	int r = get_str(rd, 2, KILN_TREE_MAX_NAME, &e->name, err);

	if (r < 0)
		return r;
	if (!name_ok(e->name, strlen(e->name)))
		return bad(rd, err, "invalid name");
	r = get_fixed(rd, e, err);
	r = r ? r : get_payload(rd, e, err);
	return r ? r : get_xattrs(rd, e, err);
}

static int get_header(struct reader *rd, uint64_t *version, uint64_t *count,
		      struct kiln_error **err)
{
	const uint8_t *magic = get_bytes(rd, KILN_TREE_MAGIC_LEN);

	if (rd->len > KILN_TREE_MAX_NODE_BYTES)
		return kiln_error_set(err, -EBADMSG, "tree node larger than %u bytes",
				      KILN_TREE_MAX_NODE_BYTES);
	if (!magic || memcmp(magic, KILN_TREE_MAGIC, KILN_TREE_MAGIC_LEN))
		return kiln_error_set(err, -EBADMSG, "not a tree node (bad magic)");
	if (!get_be(rd, 1, version) || !get_be(rd, 4, count))
		return kiln_error_set(err, -EBADMSG, "tree node header truncated");
	if (*version != KILN_TREE_VERSION && *version != KILN_TREE_VERSION_LINKS)
		return kiln_error_set(err, -EBADMSG, "unsupported tree node version %u",
				      (unsigned)*version);
	return 0;
}

/* Smallest possible entry: 1-byte name, FIFO, no xattrs. */
#define MIN_ENTRY_BYTES (2 + 1 + 1 + 4 + 4 + 4 + 8 + 4 + 8 + 2)

/* Smallest group: two one-byte paths. */
#define MIN_LINK_BYTES (4 + 2 * (2 + 1))

static int get_links(struct reader *rd, struct kiln_tree *out,
		     struct kiln_error **err)
{
	uint64_t n, m;
	size_t g, i;
	int r;

	if (!get_be(rd, 4, &n))
		return kiln_error_set(err, -EBADMSG, "tree node truncated in its hardlink groups");
	if (n == 0 || n > (rd->len - rd->off) / MIN_LINK_BYTES)
		return kiln_error_set(err, -EBADMSG,
				      "tree node claims %llu hardlink groups",
				      (unsigned long long)n);
	out->links = xcalloc((size_t)n, sizeof(*out->links));
	for (g = 0; g < n; g++) {
		struct kiln_tree_link *l = &out->links[g];

		out->n_links = g + 1; /* so a failure releases it */
		if (!get_be(rd, 4, &m))
			return kiln_error_set(err, -EBADMSG,
					      "tree node truncated in hardlink group %zu", g);
		if (m < 2 || m > (rd->len - rd->off) / 3)
			return kiln_error_set(err, -EBADMSG,
					      "tree node hardlink group %zu claims %llu members",
					      g, (unsigned long long)m);
		l->paths = xcalloc((size_t)m, sizeof(*l->paths));
		for (i = 0; i < m; i++) {
			l->n = i;
			r = get_str(rd, 2, KILN_TREE_MAX_LINK_PATH, &l->paths[i], err);
			if (r < 0) {
				kiln_error_prefix(err, "hardlink group %zu", g);
				return r;
			}
		}
		l->n = (size_t)m;
	}
	r = check_links(out, err);
	return r < 0 ? -EBADMSG : 0;
}

static int decode(struct reader *rd, struct kiln_tree *out,
		  struct kiln_error **err)
{
	uint64_t count = 0, version = 0;
	int r = get_header(rd, &version, &count, err);

	if (r < 0)
		return r;
	if (count > (rd->len - rd->off) / MIN_ENTRY_BYTES)
		return kiln_error_set(err, -EBADMSG,
				      "tree node claims %llu entries, too many for its size",
				      (unsigned long long)count);
	out->entries = count ? xcalloc((size_t)count, sizeof(*out->entries)) : NULL;
	out->alloc = (size_t)count;
	for (rd->entry = 0; rd->entry < count; rd->entry++) {
		struct kiln_tree_entry *e = &out->entries[rd->entry];

		out->n = rd->entry + 1; /* so a failure releases it */
		r = get_entry(rd, e, err);
		if (r < 0)
			return r;
		if (rd->entry > 0 && strcmp(e[-1].name, e->name) >= 0)
			return bad(rd, err, "names not sorted or duplicate");
	}
	if (version == KILN_TREE_VERSION_LINKS) {
		r = get_links(rd, out, err);
		if (r < 0)
			return r;
	}
	if (rd->off != rd->len)
		return kiln_error_set(err, -EBADMSG, "%zu trailing bytes after tree node",
				      rd->len - rd->off);
	return 0;
}

int kiln_tree_decode(const void *data, size_t len, struct kiln_tree *out,
		     struct kiln_error **err)
{
	struct reader rd = { data, len, 0, 0 };
	int r;

	kiln_tree_init(out);
	r = decode(&rd, out, err);
	if (r < 0)
		kiln_tree_release(out);
	return r;
}

/* ---- storing ---- */

static struct kiln_digest empty_digest;

static void init_empty(void)
{
	struct kiln_tree t = KILN_TREE_INIT;
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(64);

	if (kiln_tree_encode(&t, &sb) < 0)
		abort();
	kiln_digest_buf(sb.buf, sb.len, &empty_digest);
}

static pthread_once_t empty_once = PTHREAD_ONCE_INIT;

void kiln_tree_empty_digest(struct kiln_digest *out)
{
	pthread_once(&empty_once, init_empty);
	*out = empty_digest;
}

bool kiln_tree_is_empty_digest(const struct kiln_digest *d)
{
	pthread_once(&empty_once, init_empty);
	return kiln_digest_eq(d, &empty_digest);
}

int kiln_tree_put(struct kiln_store *s, const struct kiln_tree *t,
		  struct kiln_digest *out, struct kiln_error **err)
{
	_cleanup_strbuf_ struct kiln_strbuf sb =
		KILN_STRBUF_INIT(KILN_TREE_MAX_NODE_BYTES);
	int r = tree_encode(t, &sb, err);

	if (r < 0)
		return r;
	return kiln_store_put_buf(s, sb.buf, sb.len, out, err);
}

int kiln_tree_get(struct kiln_store *s, const struct kiln_digest *d,
		  struct kiln_tree *out, struct kiln_error **err)
{
	_cleanup_free_ char *data = NULL;
	size_t len = 0;
	int r;

	kiln_tree_init(out);
	/*
	 * The empty directory is known without the store: editors and file ops
	 * point new directories at it without writing it (gc agrees).
	 */
	if (kiln_tree_is_empty_digest(d))
		return 0;
	r = kiln_store_read(s, d, KILN_TREE_MAX_NODE_BYTES, &data, &len, err);
	if (r < 0)
		return r;
	r = kiln_tree_decode(data, len, out, err);
	if (r < 0)
		kiln_error_prefix(err, "tree %s", KILN_DIGEST_STR(d));
	return r;
}

/* ---- in-memory nodes ---- */

struct cas_node *cas_node_new(struct cas_node *parent, const char *name)
{
	struct cas_node *n = xcalloc(1, sizeof(*n));

	n->parent = parent;
	n->name = name ? xstrdup(name) : NULL;
	n->dirty = true;
	return n;
}

void cas_node_free(struct cas_node *n)
{
	size_t i;

	if (!n)
		return;
	for (i = 0; i < n->n_kids; i++)
		cas_node_free(n->kids[i]);
	free(n->kids);
	kiln_tree_release(&n->t);
	kiln_strv_free(n->layer_names, n->n_layer_names);
	free(n->name);
	free(n);
}

int cas_node_load(struct kiln_store *s, const struct kiln_digest *d,
		  struct cas_node *parent, const char *name,
		  struct cas_node **out, struct kiln_error **err)
{
	struct cas_node *n = cas_node_new(parent, name);
	int r = 0;

	if (d && kiln_digest_is_set(d)) {
		r = kiln_tree_get(s, d, &n->t, err);
		n->digest = *d;
		n->dirty = false;
	}
	if (r < 0) {
		cas_node_free(n);
		return r;
	}
	*out = n;
	return 0;
}

static ssize_t kid_search(const struct cas_node *n, const char *name)
{
	size_t lo = 0, hi = n->n_kids;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(n->kids[mid]->name, name);

		if (c == 0)
			return (ssize_t)mid;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -(ssize_t)lo - 1;
}

struct cas_node *cas_node_kid(const struct cas_node *n, const char *name)
{
	ssize_t i = kid_search(n, name);

	return i >= 0 ? n->kids[i] : NULL;
}

void cas_node_add_kid(struct cas_node *n, struct cas_node *kid)
{
	ssize_t i = kid_search(n, kid->name);
	size_t at;

	kid->parent = n;
	if (kid->dirty)
		cas_node_mark_dirty(n);
	if (i >= 0) {
		cas_node_free(n->kids[i]);
		n->kids[i] = kid;
		return;
	}
	at = (size_t)(-i - 1);
	n->kids = xgrow(n->kids, &n->alloc_kids, n->n_kids + 1, sizeof(*n->kids));
	memmove(&n->kids[at + 1], &n->kids[at], (n->n_kids - at) * sizeof(*n->kids));
	n->kids[at] = kid;
	n->n_kids++;
}

void cas_node_drop_kid(struct cas_node *n, const char *name)
{
	ssize_t i = kid_search(n, name);

	if (i < 0)
		return;
	cas_node_free(n->kids[i]);
	memmove(&n->kids[i], &n->kids[i + 1],
		(n->n_kids - (size_t)i - 1) * sizeof(*n->kids));
	n->n_kids--;
}

void cas_node_mark_dirty(struct cas_node *n)
{
	for (; n; n = n->parent)
		n->dirty = true;
}

int cas_node_kid_load(struct kiln_store *s, struct cas_node *n,
		      const char *name, struct cas_node **out,
		      struct kiln_error **err)
{
	const struct kiln_tree_entry *e;
	int r;

	*out = cas_node_kid(n, name);
	if (*out)
		return 0;
	e = kiln_tree_find(&n->t, name);
	if (!e || e->type != KILN_ENTRY_DIR)
		return 0;
	r = cas_node_load(s, &e->digest, n, name, out, err);
	if (r == 0)
		cas_node_add_kid(n, *out);
	return r;
}

int cas_node_settle_links(struct kiln_store *s, struct cas_node *n,
			  struct kiln_error **err)
{
	size_t g = 0, i;
	int r;

	while (g < n->t.n_links) {
		struct kiln_tree_link l = n->t.links[g];
		size_t k = strcspn(l.paths[0], "/");
		_cleanup_free_ char *first = xstrndup(l.paths[0], k);
		struct cas_node *kid = NULL;
		bool spread = false;

		for (i = 1; i < l.n; i++)
			spread |= !same_first(l.paths[0], l.paths[i]);
		if (spread) {
			g++;
			continue;
		}
		/* All inside first/: the group belongs to that directory. */
		memmove(&n->t.links[g], &n->t.links[g + 1],
			(n->t.n_links - g - 1) * sizeof(l));
		n->t.n_links--;
		cas_node_mark_dirty(n);
		r = l.paths[0][k] ? cas_node_kid_load(s, n, first, &kid, err) : 0;
		if (r < 0 || !kid) {
			link_release(&l);
			if (r < 0)
				return r;
			continue;
		}
		for (i = 0; i < l.n; i++) {
			char *rest = xstrdup(l.paths[i] + k + 1);

			free(l.paths[i]);
			l.paths[i] = rest;
		}
		kiln_tree_add_link(&kid->t, l.paths, l.n);
		cas_node_mark_dirty(kid);
		r = cas_node_settle_links(s, kid, err);
		if (r < 0)
			return r;
	}
	return 0;
}

int cas_node_flush(struct kiln_store *s, struct cas_node *n,
		   struct kiln_error **err)
{
	size_t i;
	int r;

	if (!n->dirty)
		return 0;
	for (i = 0; i < n->n_kids; i++) {
		struct cas_node *kid = n->kids[i];
		struct kiln_tree_entry *e;

		r = cas_node_flush(s, kid, err);
		if (r < 0)
			return r;
		e = kiln_tree_find(&n->t, kid->name);
		if (e && e->type == KILN_ENTRY_DIR)
			e->digest = kid->digest;
	}
	r = kiln_tree_put(s, &n->t, &n->digest, err);
	if (r < 0)
		return r;
	n->dirty = false;
	return 0;
}
