/*
 * The tree editor: an in-memory copy of the directory nodes it touched
 * (struct cas_node, loaded lazily along each path), changed in place and
 * written bottom-up on commit. Untouched subtrees stay as digests, so a
 * DIR entry put from elsewhere (a graft) costs nothing.
 */
#include "cas/tree.h"

#include <errno.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/macro.h"
#include "cas/cas-internal.h"

#define MAX_SYMLINK_HOPS 40

struct kiln_tree_editor {
	struct kiln_store *s;
	struct cas_node *root;
};

int kiln_tree_editor_new(struct kiln_store *s, const struct kiln_digest *root,
			 struct kiln_tree_editor **out, struct kiln_error **err)
{
	struct kiln_tree_editor *ed = xcalloc(1, sizeof(*ed));
	int r = cas_node_load(s, root, NULL, NULL, &ed->root, err);

	if (r < 0) {
		free(ed);
		return r;
	}
	ed->s = s;
	*out = ed;
	return 0;
}

void kiln_tree_editor_free(struct kiln_tree_editor *ed)
{
	if (!ed)
		return;
	cas_node_free(ed->root);
	free(ed);
}

/* Next component of *p (skipping empty ones and "."); false at the end. */
static bool next_comp(const char **p, char **comp)
{
	for (;;) {
		size_t n = strcspn(*p, "/");
		const char *c = *p;

		if (!*c)
			return false;
		*p += n + (c[n] == '/');
		if (n == 0 || (n == 1 && c[0] == '.'))
			continue;
		*comp = xstrndup(c, n);
		return true;
	}
}

/* The kid called name of n, loading it; *why says why there is none. */
static int step(struct kiln_tree_editor *ed, struct cas_node *n,
		const char *name, struct cas_node **out, int *why,
		struct kiln_error **err)
{
	int r = cas_node_kid_load(ed->s, n, name, out, err);

	if (r == 0 && !*out)
		*why = kiln_tree_find(&n->t, name) ? -ENOTDIR : -ENOENT;
	return r;
}

/*
 * The node of directory path. Store failures return < 0 (err set); a
 * missing or non-directory component gives *out = NULL and *why.
 */
static int find_dir(struct kiln_tree_editor *ed, const char *path,
		    struct cas_node **out, int *why, struct kiln_error **err)
{
	struct cas_node *n = ed->root;
	const char *p = path;
	char *comp;

	*why = 0;
	while (n && next_comp(&p, &comp)) {
		int r;

		if (!strcmp(comp, "..")) {
			free(comp);
			return kiln_error_set(err, -EINVAL, "%s: path is not clean", path);
		}
		r = step(ed, n, comp, &n, why, err);
		free(comp);
		if (r < 0)
			return r;
	}
	*out = n;
	return 0;
}

static int load_dir(struct kiln_tree_editor *ed, const char *path,
		    struct cas_node **out, struct kiln_error **err)
{
	int why, r = find_dir(ed, path, out, &why, err);

	if (r < 0)
		return r;
	if (*out)
		return 0;
	return kiln_error_set(err, why, "%s: %s", *path ? path : "/",
			      why == -ENOTDIR ? "not a directory"
					      : "no such directory");
}

/* Split "a/b/c" into "a/b" and "c" (both allocated). */
static void split_last(const char *path, char **dir, char **base)
{
	_cleanup_free_ char *copy = xstrdup(path);
	size_t n = strlen(copy);
	char *slash;

	while (n > 0 && copy[n - 1] == '/')
		copy[--n] = '\0';
	slash = strrchr(copy, '/');
	*dir = slash ? xstrndup(copy, (size_t)(slash - copy)) : xstrdup("");
	*base = xstrdup(slash ? slash + 1 : copy);
}

/* ---- resolve ---- */

struct resolve {
	struct kiln_tree_editor *ed;
	struct kiln_strbuf done; /* resolved so far, "a/b" */
	char *rest;              /* still to resolve */
	unsigned hops;
};

static void done_push(struct resolve *rs, const char *comp)
{
	if (rs->done.len)
		(void)kiln_strbuf_addch(&rs->done, '/');
	(void)kiln_strbuf_adds(&rs->done, comp);
}

static void done_pop(struct resolve *rs)
{
	char *slash = rs->done.buf ? strrchr(rs->done.buf, '/') : NULL;

	rs->done.len = slash ? (size_t)(slash - rs->done.buf) : 0;
	if (rs->done.buf)
		rs->done.buf[rs->done.len] = '\0';
}

/* The entry comp in the resolved directory, or NULL when there is none. */
static int lookup_comp(struct resolve *rs, const char *comp,
		       const struct kiln_tree_entry **out,
		       struct kiln_error **err)
{
	struct cas_node *dir;
	int why, r = find_dir(rs->ed, kiln_strbuf_str(&rs->done), &dir, &why, err);

	*out = r == 0 && dir ? kiln_tree_find(&dir->t, comp) : NULL;
	return r;
}

static int follow(struct resolve *rs, const char *target,
		  struct kiln_error **err)
{
	char *next;

	if (++rs->hops > MAX_SYMLINK_HOPS)
		return kiln_error_set(err, -ELOOP, "too many levels of symbolic links");
	if (target[0] == '/')
		kiln_strbuf_reset(&rs->done);
	next = xasprintf("%s/%s", target, rs->rest);
	free(rs->rest);
	rs->rest = next;
	return 0;
}

/* Take the first component off rs->rest. */
static bool pop_comp(struct resolve *rs, char **comp)
{
	const char *p = rs->rest;
	char *rest;

	if (!next_comp(&p, comp))
		return false;
	rest = xstrdup(p);
	free(rs->rest);
	rs->rest = rest;
	return true;
}

static int resolve_comp(struct resolve *rs, const char *comp, bool follow_last,
			struct kiln_error **err)
{
	const struct kiln_tree_entry *e = NULL;
	const char *p = rs->rest;
	_cleanup_free_ char *more = NULL;
	bool last = !next_comp(&p, &more);
	int r;

	if (!strcmp(comp, "..")) {
		done_pop(rs);
		return 0;
	}
	if (!last || follow_last) {
		r = lookup_comp(rs, comp, &e, err);
		if (r < 0)
			return r;
	}
	if (e && e->type == KILN_ENTRY_SYMLINK)
		return follow(rs, e->target, err);
	done_push(rs, comp);
	return 0;
}

int kiln_tree_editor_resolve(struct kiln_tree_editor *ed, const char *path,
			     bool follow_last, char **out,
			     struct kiln_error **err)
{
	struct resolve rs = { ed, KILN_STRBUF_INIT(1 << 20), xstrdup(path), 0 };
	char *comp;
	int r = 0;

	while (r == 0 && pop_comp(&rs, &comp)) {
		r = resolve_comp(&rs, comp, follow_last, err);
		free(comp);
	}
	free(rs.rest);
	if (r < 0) {
		kiln_error_prefix(err, "resolving %s", path);
		kiln_strbuf_release(&rs.done);
		return r;
	}
	*out = xstrdup(kiln_strbuf_str(&rs.done));
	kiln_strbuf_release(&rs.done);
	return 0;
}

/* ---- reading and changing entries ---- */

static void root_entry(const struct kiln_digest *d, struct kiln_tree_entry *out)
{
	memset(out, 0, sizeof(*out));
	out->name = xstrdup("");
	out->type = KILN_ENTRY_DIR;
	out->mode = 0755;
	out->digest = *d;
}

/* Write a dirty loaded subdirectory so its entry holds a real digest. */
static int settle_entry(struct kiln_tree_editor *ed, struct cas_node *dir,
			struct kiln_tree_entry *e, struct kiln_error **err)
{
	struct cas_node *kid = cas_node_kid(dir, e->name);
	int r;

	if (!kid || !kid->dirty)
		return 0;
	r = cas_node_flush(ed->s, kid, err);
	if (r == 0)
		e->digest = kid->digest;
	return r;
}

int kiln_tree_editor_get(struct kiln_tree_editor *ed, const char *path,
			 struct kiln_tree_entry *out, struct kiln_error **err)
{
	_cleanup_free_ char *dir = NULL, *base = NULL;
	struct kiln_tree_entry *e;
	struct cas_node *n;
	int r;

	split_last(path, &dir, &base);
	if (!*base) {
		r = cas_node_flush(ed->s, ed->root, err);
		if (r == 0)
			root_entry(&ed->root->digest, out);
		return r;
	}
	r = load_dir(ed, dir, &n, err);
	if (r < 0)
		return r;
	e = kiln_tree_find(&n->t, base);
	if (!e)
		return kiln_error_set(err, -ENOENT, "%s: no such entry", path);
	r = settle_entry(ed, n, e, err);
	if (r == 0)
		kiln_tree_entry_copy(out, e);
	return r;
}

static int replace_root(struct kiln_tree_editor *ed, struct kiln_tree_entry *e,
			struct kiln_error **err)
{
	struct cas_node *root;
	int r;

	if (e->type != KILN_ENTRY_DIR || !kiln_digest_is_set(&e->digest))
		return kiln_error_set(err, -EISDIR,
				      "the root can only be replaced by a directory");
	r = cas_node_load(ed->s, &e->digest, NULL, NULL, &root, err);
	if (r < 0)
		return r;
	cas_node_free(ed->root);
	ed->root = root;
	return 0;
}

/*
 * n/name is no longer the file it was (replaced or removed): it leaves the
 * hardlink groups of n and of every ancestor, all of them loaded; a group
 * left inside one subdirectory moves down to it.
 */
static int forget_links(struct kiln_tree_editor *ed, struct cas_node *n,
			const char *name, struct kiln_error **err)
{
	_cleanup_free_ char *rel = xstrdup(name);
	int r;

	for (; n; n = n->parent) {
		char *up;

		if (n->t.n_links && kiln_tree_forget_link(&n->t, rel)) {
			cas_node_mark_dirty(n);
			r = cas_node_settle_links(ed->s, n, err);
			if (r < 0)
				return r;
		}
		if (!n->parent)
			break;
		up = xasprintf("%s/%s", n->name, rel);
		free(rel);
		rel = up;
	}
	return 0;
}

static int put_entry(struct kiln_tree_editor *ed, const char *path,
		     struct kiln_tree_entry *e, struct kiln_error **err)
{
	_cleanup_free_ char *dir = NULL, *base = NULL;
	struct cas_node *n;
	int r;

	split_last(path, &dir, &base);
	if (!*base)
		return replace_root(ed, e, err);
	free(e->name);
	e->name = TAKE_PTR(base);
	r = cas_entry_sort_xattrs(e, err);
	r = r ? r : cas_entry_check(e, err);
	r = r ? r : load_dir(ed, dir, &n, err);
	if (r < 0)
		return r;
	cas_node_drop_kid(n, e->name);
	r = forget_links(ed, n, e->name, err);
	if (r < 0)
		return r;
	kiln_tree_set(&n->t, e);
	cas_node_mark_dirty(n);
	return 0;
}

int kiln_tree_editor_put(struct kiln_tree_editor *ed, const char *path,
			 struct kiln_tree_entry *e, struct kiln_error **err)
{
	int r = put_entry(ed, path, e, err);

	/* Ownership passes whatever the outcome. */
	kiln_tree_entry_release(e);
	if (r < 0)
		kiln_error_prefix(err, "putting %s", path);
	return r;
}

int kiln_tree_editor_remove(struct kiln_tree_editor *ed, const char *path,
			    struct kiln_error **err)
{
	_cleanup_free_ char *dir = NULL, *base = NULL;
	struct cas_node *n;
	int r;

	split_last(path, &dir, &base);
	if (!*base)
		return kiln_error_set(err, -EINVAL, "cannot remove the root");
	r = load_dir(ed, dir, &n, err);
	if (r < 0)
		return r;
	if (kiln_tree_remove(&n->t, base) < 0)
		return kiln_error_set(err, -ENOENT, "%s: no such entry", path);
	cas_node_drop_kid(n, base);
	cas_node_mark_dirty(n);
	return forget_links(ed, n, base, err);
}

int kiln_tree_editor_add_links(struct kiln_tree_editor *ed, const char *dir,
			       const struct kiln_tree *from,
			       struct kiln_error **err)
{
	struct cas_node *n;
	size_t g;
	int r;

	if (!from->n_links)
		return 0;
	r = load_dir(ed, dir, &n, err);
	if (r < 0)
		return r;
	for (g = 0; g < from->n_links; g++) {
		const struct kiln_tree_link *l = &from->links[g];
		char **paths = xcalloc(l->n, sizeof(*paths));
		size_t i;

		for (i = 0; i < l->n; i++)
			paths[i] = xstrdup(l->paths[i]);
		kiln_tree_add_link(&n->t, paths, l->n);
	}
	cas_node_mark_dirty(n);
	return 0;
}

struct dir_meta {
	uint32_t mode, uid, gid;
	int64_t mtime_sec;
};

static struct cas_node *make_dir(struct cas_node *n, const char *name,
				 const struct dir_meta *m)
{
	struct kiln_tree_entry e = { 0 };
	struct cas_node *kid = cas_node_new(n, name);

	e.name = xstrdup(name);
	e.type = KILN_ENTRY_DIR;
	e.mode = m->mode;
	e.uid = m->uid;
	e.gid = m->gid;
	e.mtime_sec = m->mtime_sec;
	kiln_tree_empty_digest(&e.digest);
	kiln_tree_set(&n->t, &e);
	cas_node_add_kid(n, kid); /* new, so dirty: marks n dirty */
	return kid;
}

static int mkdir_step(struct kiln_tree_editor *ed, struct cas_node **n,
		      const char *name, const struct dir_meta *m,
		      struct kiln_error **err)
{
	struct cas_node *next = NULL;
	int why = 0, r;

	if (!strcmp(name, ".."))
		return kiln_error_set(err, -EINVAL, "path is not clean");
	r = step(ed, *n, name, &next, &why, err);
	if (r < 0)
		return r;
	if (why == -ENOTDIR)
		return kiln_error_set(err, -ENOTDIR, "%s is not a directory", name);
	*n = next ? next : make_dir(*n, name, m);
	return 0;
}

int kiln_tree_editor_mkdir_p(struct kiln_tree_editor *ed, const char *path,
			     uint32_t mode, uint32_t uid, uint32_t gid,
			     int64_t mtime_sec, struct kiln_error **err)
{
	struct dir_meta m = { mode, uid, gid, mtime_sec };
	struct cas_node *n = ed->root;
	const char *p = path;
	char *comp;
	int r = 0;

	if (mode & ~07777u)
		return kiln_error_set(err, -EINVAL, "mkdir %s: mode %o beyond 07777",
				      path, mode);
	while (r == 0 && next_comp(&p, &comp)) {
		r = mkdir_step(ed, &n, comp, &m, err);
		free(comp);
	}
	if (r < 0)
		kiln_error_prefix(err, "mkdir %s", path);
	return r;
}

int kiln_tree_editor_commit(struct kiln_tree_editor *ed,
			    struct kiln_digest *out, struct kiln_error **err)
{
	int r = cas_node_flush(ed->s, ed->root, err);

	if (r == 0)
		*out = ed->root->digest;
	return r;
}
