#include "solver/fileop.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <sys/stat.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/strv.h"
#include "cas/tree.h"
#include "source/image.h"
#include "source/local.h"

struct fctx {
	struct kiln_store *s;
	const struct kiln_op *op;
	size_t action;
	struct kiln_tree_editor *ed; /* the destination */
	struct kiln_patterns *exclude; /* the copy action's, or NULL */
	struct kiln_patterns *include; /* the copy action's, or NULL */
	struct kiln_error **err;
};

/*
 * Which action failed, or NULL. An op from a Dockerfile is named by its
 * step and line (kiln_op_who, by the caller): only which of several
 * sources is added here; other ops by id and action index.
 */
static char *action_where(const struct fctx *c)
{
	if (!c->op->src_file)
		return xasprintf("op '%s': actions[%zu]", c->op->id, c->action);
	return c->op->n_actions > 1 ? xasprintf("source %zu", c->action + 1) : NULL;
}

static int act_err(struct fctx *c, int code, const char *fmt, ...) _printf_(3, 4);

static int act_err(struct fctx *c, int code, const char *fmt, ...)
{
	_cleanup_free_ char *where = action_where(c);
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = kiln_error_setv(c->err, code, where, fmt, ap);
	va_end(ap);
	return r;
}

/* Rewrite owner/mode below (and including) e when the action asks. */
static int apply_meta(struct fctx *c, struct kiln_tree_entry *e,
		      const struct kiln_file_action *a);

static int rewrite_dir(struct fctx *c, struct kiln_digest *d,
		       const struct kiln_file_action *a)
{
	struct kiln_tree t = KILN_TREE_INIT;
	size_t i;
	int r;

	r = kiln_tree_get(c->s, d, &t, c->err);
	for (i = 0; r == 0 && i < t.n; i++)
		r = apply_meta(c, &t.entries[i], a);
	if (r == 0)
		r = kiln_tree_put(c->s, &t, d, c->err);
	kiln_tree_release(&t);
	return r;
}

static int apply_meta(struct fctx *c, struct kiln_tree_entry *e,
		      const struct kiln_file_action *a)
{
	if (a->uid >= 0) {
		e->uid = (uint32_t)a->uid;
		e->gid = (uint32_t)a->gid;
	}
	if (a->mode >= 0 && e->type != KILN_ENTRY_SYMLINK)
		e->mode = (uint32_t)a->mode;
	if (e->type == KILN_ENTRY_DIR && (a->uid >= 0 || a->mode >= 0))
		return rewrite_dir(c, &e->digest, a);
	return 0;
}

/*
 * Put e at path, merging into an existing directory when both are
 * directories (the existing directory keeps its own metadata).
 */
static int graft(struct fctx *c, const char *path, struct kiln_tree_entry *e)
{
	struct kiln_tree_entry cur = { 0 };
	struct kiln_tree t = KILN_TREE_INIT;
	size_t i;
	int r;

	r = kiln_tree_editor_get(c->ed, path, &cur, NULL);
	if (r < 0 || cur.type != KILN_ENTRY_DIR || e->type != KILN_ENTRY_DIR) {
		kiln_tree_entry_release(&cur);
		if (r == 0 || r == -ENOENT)
			return kiln_tree_editor_put(c->ed, path, e, c->err);
		return act_err(c, r, "cannot write %s", path);
	}
	kiln_tree_entry_release(&cur);
	r = kiln_tree_get(c->s, &e->digest, &t, c->err);
	for (i = 0; r == 0 && i < t.n; i++) {
		_cleanup_free_ char *sub = kiln_path_join(path, t.entries[i].name);
		struct kiln_tree_entry child;

		kiln_tree_entry_copy(&child, &t.entries[i]);
		r = graft(c, sub, &child);
		kiln_tree_entry_release(&child);
	}
	/* The merged directory keeps the hardlinks among what it got. */
	if (r == 0)
		r = kiln_tree_editor_add_links(c->ed, path, &t, c->err);
	kiln_tree_release(&t);
	kiln_tree_entry_release(e);
	memset(e, 0, sizeof(*e));
	return r;
}

/* Expand src (cleaned, relative) in the source tree into matching paths. */
static int expand(struct fctx *c, struct kiln_tree_editor *src, const char *pattern,
		  char ***out, size_t *n)
{
	_cleanup_free_ char *copy = xstrdup(pattern);
	char **cur = xcalloc(1, sizeof(char *)), *save = NULL, *comp;
	size_t ncur = 1, alloc = 0, i, j;
	int r = 0;

	cur[0] = xstrdup("");
	for (comp = strtok_r(copy, "/", &save); comp; comp = strtok_r(NULL, "/", &save)) {
		char **next = NULL;
		size_t nnext = 0;

		alloc = 0;
		for (i = 0; i < ncur; i++) {
			struct kiln_tree_entry dir = { 0 };
			struct kiln_tree t = KILN_TREE_INIT;

			if (!kiln_path_has_glob(comp)) {
				next = xgrow(next, &alloc, nnext + 1, sizeof(char *));
				next[nnext++] = kiln_path_join(cur[i], comp);
				continue;
			}
			if (kiln_tree_editor_get(src, cur[i], &dir, NULL) < 0 ||
			    dir.type != KILN_ENTRY_DIR) {
				kiln_tree_entry_release(&dir);
				continue;
			}
			r = kiln_tree_get(c->s, &dir.digest, &t, c->err);
			kiln_tree_entry_release(&dir);
			for (j = 0; r == 0 && j < t.n; j++) {
				if (fnmatch(comp, t.entries[j].name, 0) != 0)
					continue;
				next = xgrow(next, &alloc, nnext + 1, sizeof(char *));
				next[nnext++] = kiln_path_join(cur[i], t.entries[j].name);
			}
			kiln_tree_release(&t);
		}
		kiln_strv_free(cur, ncur);
		cur = next;
		ncur = nnext;
		if (r < 0)
			break;
	}
	*out = cur;
	*n = ncur;
	return r;
}

/* ---- chown by name: /etc/passwd and /etc/group of the destination ---- */

/* Read a small file of the destination tree (following symlinks inside). */
static int read_dest_file(struct fctx *c, const char *path, char **out)
{
	_cleanup_free_ char *resolved = NULL;
	struct kiln_tree_entry e = { 0 };
	size_t len;
	int r;

	*out = NULL;
	r = kiln_tree_editor_resolve(c->ed, path, true, &resolved, NULL);
	if (r == 0)
		r = kiln_tree_editor_get(c->ed, resolved, &e, NULL);
	if (r == 0 && e.type != KILN_ENTRY_FILE)
		r = -ENOENT;
	if (r == 0)
		r = kiln_store_read(c->s, &e.digest, 4u << 20, out, &len, NULL);
	kiln_tree_entry_release(&e);
	return r;
}

/* Field 3 (id) of the line whose field 1 is name, in passwd/group text. */
static int lookup_id(const char *text, const char *name, uint32_t *id, uint32_t *gid)
{
	size_t nl = strlen(name);
	const char *line = text;

	while (line && *line) {
		const char *end = strchr(line, '\n');
		if (!strncmp(line, name, nl) && line[nl] == ':') {
			const char *f = strchr(line + nl + 1, ':');
			char *e;
			unsigned long v, g;

			if (!f)
				return -EINVAL;
			v = strtoul(f + 1, &e, 10);
			if (e == f + 1 || v > UINT32_MAX)
				return -EINVAL;
			*id = (uint32_t)v;
			if (gid && *e == ':') {
				g = strtoul(e + 1, &e, 10);
				*gid = (uint32_t)g;
			}
			return 0;
		}
		line = end ? end + 1 : NULL;
	}
	return -ENOENT;
}

/* Numeric owner of a copy action, resolving names in the destination. */
static int resolve_owner(struct fctx *c, const struct kiln_file_action *a, int64_t *uid,
			 int64_t *gid)
{
	_cleanup_free_ char *passwd = NULL, *group = NULL;
	uint32_t u, g, ug = 0;

	*uid = a->uid;
	*gid = a->gid;
	if (a->user) {
		if (read_dest_file(c, "etc/passwd", &passwd) < 0 ||
		    lookup_id(passwd, a->user, &u, &ug) < 0)
			return act_err(c, -ENOENT, "chown: user '%s' not found in /etc/passwd",
				       a->user);
		*uid = u;
		if (!a->group && a->gid < 0)
			*gid = u; /* Docker: no group means the uid's number */
	}
	if (a->group) {
		if (read_dest_file(c, "etc/group", &group) < 0 ||
		    lookup_id(group, a->group, &g, NULL) < 0)
			return act_err(c, -ENOENT, "chown: group '%s' not found in /etc/group",
				       a->group);
		*gid = g;
	}
	if (*uid >= 0 && *gid < 0)
		*gid = *uid;
	return 0;
}

static int check_parent(struct fctx *c, const char *path);

/* ---- ADD archives ---- */

/* Is the blob a tar archive, maybe compressed (by content, not name)? */
static bool looks_like_archive(struct kiln_store *s, const struct kiln_digest *d)
{
	_cleanup_close_ int fd = kiln_store_open_blob(s, d);

	return fd >= 0 && kiln_archive_detect(fd);
}

/* The directories an archive implies but does not hold ("a" of "a/f"). */
struct implied {
	char **paths;
	size_t n, alloc;
};

static int note_implied(void *ud, const char *path, int fd, struct kiln_error **err)
{
	struct implied *im = ud;

	(void)fd;
	(void)err;
	im->paths = xgrow(im->paths, &im->alloc, im->n + 1, sizeof(char *));
	im->paths[im->n++] = xstrdup(path);
	return 0;
}

/*
 * Unpack the archive blob (safely: kiln_layer_extract confines it) into a
 * scratch directory of the store and turn that into a tree; the implied
 * directories (created 0755, 0:0) are listed in im.
 */
static int unpack_archive(struct fctx *c, const struct kiln_digest *blob,
			  struct kiln_digest *tree, struct implied *im)
{
	_cleanup_free_ char *rnd = kiln_random_hex(8);
	_cleanup_free_ char *dir = xasprintf("%s/tmp/extract-%s", kiln_store_dir(c->s), rnd);
	struct kiln_tree_build_opts bo = { .adopt = true };
	const struct kiln_layer_extract_opts plain = { .archive = true,
						       .implied_dir = note_implied,
						       .ud = im };
	_cleanup_close_ int fd = -1, dfd = -1;
	int r;

	if (mkdir(dir, 0700) < 0)
		return act_err(c, -errno, "cannot create %s", dir);
	fd = kiln_store_open_blob(c->s, blob);
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	r = fd < 0 ? fd : dfd < 0 ? -errno : 0;
	if (r == 0)
		r = kiln_layer_extract_with(fd, dfd, &plain, c->err);
	if (r == 0)
		r = kiln_tree_from_dir(c->s, dfd, &bo, tree, c->err);
	kiln_rm_rf(dir);
	if (r < 0) {
		_cleanup_free_ char *where = action_where(c);

		kiln_error_prefix(c->err, "%s%sextracting %s", where ?: "", where ? ": " : "",
				  KILN_DIGEST_STR(blob));
	}
	return r;
}

/*
 * ADD --chown of an archive: every entry the archive holds gets the owner
 * (buildkit unpack_root.go: mapArchiveHeaderOwner replaces the header's
 * uid/gid), but a directory it only implies is created by root
 * (root.Lchown(cur, impliedUID, impliedGID), 0:0 without a user
 * namespace) and keeps 0:0. Modes stay the archive's.
 */
static int chown_unpacked(struct fctx *c, const struct kiln_file_action *a,
			  struct kiln_digest *tree, const struct implied *im)
{
	struct kiln_file_action owner = { .uid = a->uid, .gid = a->gid, .mode = -1 };
	struct kiln_tree_editor *ed = NULL;
	size_t i;
	int r;

	r = rewrite_dir(c, tree, &owner);
	if (r < 0 || im->n == 0)
		return r;
	r = kiln_tree_editor_new(c->s, tree, &ed, c->err);
	for (i = 0; r == 0 && i < im->n; i++) {
		struct kiln_tree_entry e = { 0 };

		if (kiln_tree_editor_get(ed, im->paths[i], &e, NULL) < 0 ||
		    e.type != KILN_ENTRY_DIR) {
			kiln_tree_entry_release(&e);
			continue; /* replaced by a later entry */
		}
		e.uid = 0;
		e.gid = 0;
		r = kiln_tree_editor_put(ed, im->paths[i], &e, c->err);
	}
	if (r == 0)
		r = kiln_tree_editor_commit(ed, tree, c->err);
	kiln_tree_editor_free(ed);
	return r;
}

/*
 * Create the missing directories along path as BuildKit's copy does
 * (fsutil copy.Copy and prepareTargetDir: MkdirAll(dir, mode, chown,
 * utime) with the --chmod mode when one is given, 0755 otherwise, since
 * fsutil 183e7fb "copy: fix custom chmod for parent directories"), the
 * --chown owner (root without one), the action's mtime. Directories that
 * exist keep their own metadata.
 */
static int mkdir_dest(struct fctx *c, const struct kiln_file_action *a, const char *path)
{
	return kiln_tree_editor_mkdir_p(c->ed, path, a->mode >= 0 ? (uint32_t)a->mode : 0755,
					a->uid >= 0 ? (uint32_t)a->uid : 0,
					a->gid >= 0 ? (uint32_t)a->gid : 0,
					a->mtime >= 0 ? a->mtime : 0, c->err);
}

/*
 * Put one source entry e at target (merging directories); releases e.
 * A directory whose contents go to target (contents_only, an unpacked
 * archive) does not bring its own metadata: target is created like a
 * parent (fsutil's prepareTargetDir: MkdirAll(destPath, ...) when
 * copyDirContents and the destination is missing), or merged into.
 */
static int copy_into(struct fctx *c, const struct kiln_file_action *a, const char *target,
		     struct kiln_tree_entry *e, bool meta)
{
	_cleanup_free_ char *parent = NULL;
	bool contents = e->type == KILN_ENTRY_DIR && a->contents_only && *target;
	char *slash;
	int r = 0;

	parent = xstrdup(target);
	slash = strrchr(parent, '/');
	if (slash)
		*slash = '\0';
	else
		parent[0] = '\0';
	if (a->parents && *parent)
		r = mkdir_dest(c, a, parent);
	if (r == 0 && contents) {
		struct kiln_tree_entry cur = { 0 };

		if (kiln_tree_editor_get(c->ed, target, &cur, NULL) == -ENOENT) {
			r = a->parents ? 0 : check_parent(c, target);
			if (r == 0)
				r = mkdir_dest(c, a, target);
		}
		kiln_tree_entry_release(&cur);
	}
	if (r == 0 && meta)
		r = apply_meta(c, e, a);
	if (r == 0 && a->mtime >= 0) {
		e->mtime_sec = a->mtime;
		e->mtime_nsec = 0;
	}
	if (r == 0 && !*target) {
		/* Copying into the root: merge children one by one. */
		struct kiln_tree t = KILN_TREE_INIT;
		size_t i;

		if (e->type != KILN_ENTRY_DIR)
			r = act_err(c, -EISDIR, "copy: cannot replace / with a file");
		else
			r = kiln_tree_get(c->s, &e->digest, &t, c->err);
		for (i = 0; r == 0 && i < t.n; i++) {
			struct kiln_tree_entry child;
			kiln_tree_entry_copy(&child, &t.entries[i]);
			r = graft(c, child.name, &child);
			kiln_tree_entry_release(&child);
		}
		kiln_tree_release(&t);
	} else if (r == 0) {
		r = graft(c, target, e);
	}
	kiln_tree_entry_release(e);
	return r;
}

/*
 * A copy's include and exclude patterns, on paths below a copied
 * directory, rel being dir's path below the copied source ("" for it).
 * As fsutil's copier (copy.go: c.include/c.exclude on srcComponents):
 * paths are relative to the source being copied, and the source itself is
 * never filtered. With include patterns only what matches is copied, with
 * the directories leading to it (which keep their metadata, and are kept
 * only if something below them is). An excluded directory is walked only
 * when a "!" exception may bring something below it back, and kept only
 * if something comes back.
 */
static int filter_dir(struct fctx *c, const char *rel, struct kiln_digest *d, bool *empty)
{
	struct kiln_tree t = KILN_TREE_INIT;
	bool changed = false;
	size_t i, k = 0;
	int r;

	r = kiln_tree_get(c->s, d, &t, c->err);
	for (i = 0; r == 0 && i < t.n; i++) {
		struct kiln_tree_entry *e = &t.entries[i];
		_cleanup_free_ char *p = kiln_path_join(rel, e->name);
		bool in = !c->include || kiln_patterns_match(c->include, p);
		bool ex = kiln_patterns_match(c->exclude, p), keep = in && !ex;

		if (e->type == KILN_ENTRY_DIR &&
		    (in || kiln_patterns_may_include_below(c->include, p)) &&
		    (!ex || kiln_patterns_may_match_below(c->exclude, p))) {
			struct kiln_digest old = e->digest;
			bool sub_empty = false;

			r = filter_dir(c, p, &e->digest, &sub_empty);
			changed |= memcmp(&old, &e->digest, sizeof(old)) != 0;
			keep = keep || !sub_empty;
		}
		if (!keep) {
			kiln_tree_entry_release(e);
			changed = true;
			continue;
		}
		if (k != i)
			t.entries[k] = *e;
		k++;
	}
	/* Entries from k on were moved down or released. */
	if (r == 0) {
		t.n = k;
		*empty = k == 0;
		if (changed)
			r = kiln_tree_put(c->s, &t, d, c->err);
	} else {
		for (; i < t.n; i++)
			t.entries[k++] = t.entries[i];
		t.n = k;
	}
	kiln_tree_release(&t);
	return r;
}

/* Where one matched source lands: dest itself or dest/<basename>. */
static char *copy_target(struct fctx *c, const struct kiln_file_action *a,
			 const char *dest, const char *srcpath, bool many,
			 const struct kiln_tree_entry *e)
{
	struct kiln_tree_entry cur = { 0 };
	const char *base = strrchr(srcpath, '/');
	bool into;

	base = base ? base + 1 : srcpath;
	if (e->type == KILN_ENTRY_DIR && a->contents_only)
		return xstrdup(dest);
	into = many || a->path[strlen(a->path) - 1] == '/';
	if (!into && kiln_tree_editor_get(c->ed, dest, &cur, NULL) == 0 &&
	    cur.type == KILN_ENTRY_DIR && e->type != KILN_ENTRY_DIR)
		into = true;
	kiln_tree_entry_release(&cur);
	if (!into || !*base)
		return xstrdup(dest);
	return kiln_path_join(dest, base);
}

/*
 * What a copy's source is, as a user calls it: the build context, an
 * image, or the step that made it (by its progress name).
 */
static char *source_what(const struct kiln_op *op, int from)
{
	const struct kiln_op *in;

	if (from < 0 || (size_t)from >= op->n_inputs || !op->def)
		return xstrdup("the source");
	in = &op->def->ops[op->inputs[from].op];
	if (in->type == KILN_OP_SOURCE_LOCAL)
		return xstrdup("the build context");
	if (in->type == KILN_OP_SOURCE_IMAGE)
		return xasprintf("image %s", in->ref);
	return in->name ? xasprintf("the result of %s", in->name) : xasprintf("op '%s'", in->id);
}

static int copy_one(struct fctx *c, const struct kiln_file_action *a,
		    struct kiln_tree_editor *src, const char *dest, const char *path,
		    bool many)
{
	_cleanup_free_ char *resolved = NULL, *target = NULL;
	struct kiln_tree_entry e = { 0 };
	int r;

	r = kiln_tree_editor_resolve(src, path, a->follow_symlinks, &resolved, c->err);
	if (r < 0)
		return r;
	r = kiln_tree_editor_get(src, resolved, &e, NULL);
	if (r < 0) {
		_cleanup_free_ char *in = source_what(c->op, a->from);

		return act_err(c, r, "\"%s\": not found in %s", path, in);
	}
	if (!*resolved) {
		/* The root of the source: it has no name, so copy contents. */
		e.type = KILN_ENTRY_DIR;
	}
	if (a->extract && e.type == KILN_ENTRY_FILE && looks_like_archive(c->s, &e.digest)) {
		struct kiln_file_action into = *a;
		struct implied im = { 0 };

		/* BuildKit's unpack: MkdirAll(dest, 0755, chown, utime), --chmod aside. */
		into.mode = -1;

		/* ADD: an archive's contents land inside dest. */
		r = unpack_archive(c, &e.digest, &e.digest, &im);
		if (r == 0 && a->uid >= 0)
			r = chown_unpacked(c, a, &e.digest, &im);
		kiln_strv_free(im.paths, im.n);
		if (r < 0) {
			kiln_tree_entry_release(&e);
			return r;
		}
		e.type = KILN_ENTRY_DIR;
		e.size = 0;
		e.mode = 0755;
		into.contents_only = true;
		target = copy_target(c, &into, dest, resolved, many, &e);
		return copy_into(c, &into, target, &e, false);
	}
	if ((c->exclude || c->include) && e.type == KILN_ENTRY_DIR) {
		bool empty = false;

		r = filter_dir(c, "", &e.digest, &empty);
		/* COPY --parents of a path that is not there (no wildcard). */
		if (r == 0 && empty && c->include && !a->allow_not_found)
			r = act_err(c, -ENOENT, "copy: no source matches '%s' in /%s",
				    a->include[0], resolved);
		if (r < 0) {
			kiln_tree_entry_release(&e);
			return r;
		}
	}
	target = copy_target(c, a, dest, resolved, many, &e);
	if (e.type == KILN_ENTRY_DIR && !strcmp(target, dest) && a->contents_only) {
		/* fall through: graft merges into dest */
	}
	return copy_into(c, a, target, &e, true);
}

static int do_copy(struct fctx *c, const struct kiln_file_action *orig,
		   const struct kiln_digest *from)
{
	struct kiln_file_action eff = *orig, *a = &eff;
	struct kiln_tree_editor *src = NULL;
	_cleanup_free_ char *dest = NULL;
	char **matches = NULL;
	size_t n = 0, i;
	bool glob = orig->allow_wildcard && kiln_path_has_glob(orig->src);
	int r;

	r = resolve_owner(c, orig, &eff.uid, &eff.gid);
	if (r == 0 && orig->n_exclude)
		r = kiln_patterns_new((const char *const *)orig->exclude, orig->n_exclude,
				      &c->exclude, c->err);
	if (r == 0 && orig->n_include)
		r = kiln_patterns_new((const char *const *)orig->include, orig->n_include,
				      &c->include, c->err);
	if (r == 0)
		r = kiln_tree_editor_new(c->s, from, &src, c->err);
	if (r < 0) {
		kiln_patterns_free(TAKE_PTR(c->exclude));
		kiln_patterns_free(TAKE_PTR(c->include));
		return r;
	}
	r = kiln_tree_editor_resolve(c->ed, a->path + 1, false, &dest, c->err);
	if (r == 0 && glob)
		r = expand(c, src, a->src, &matches, &n);
	else if (r == 0) {
		matches = xcalloc(1, sizeof(char *));
		matches[0] = xstrdup(a->src);
		n = 1;
	}
	if (r == 0 && n == 0 && !a->allow_not_found)
		r = act_err(c, -ENOENT, "copy: no source matches '%s'", a->src);
	for (i = 0; r == 0 && i < n; i++) {
		/*
		 * A wildcard match is excluded by its path in the source tree
		 * (COPY --exclude=*.txt hom* /mydir/ skips homework.txt), unless
		 * an exception may bring back something below it.
		 */
		if (glob && c->exclude && kiln_patterns_match(c->exclude, matches[i]) &&
		    !kiln_patterns_may_match_below(c->exclude, matches[i]))
			continue;
		r = copy_one(c, a, src, dest, matches[i], n > 1 || glob);
	}
	kiln_patterns_free(TAKE_PTR(c->exclude));
	kiln_patterns_free(TAKE_PTR(c->include));
	kiln_strv_free(matches, n);
	kiln_tree_editor_free(src);
	return r;
}

static void new_entry(struct kiln_tree_entry *e, uint8_t type, const struct kiln_file_action *a,
		      uint32_t def_mode)
{
	memset(e, 0, sizeof(*e));
	e->type = type;
	e->mode = a->mode >= 0 ? (uint32_t)a->mode : def_mode;
	e->uid = a->uid >= 0 ? (uint32_t)a->uid : 0;
	e->gid = a->gid >= 0 ? (uint32_t)a->gid : 0;
	e->mtime_sec = a->mtime >= 0 ? a->mtime : 0;
}

static int check_parent(struct fctx *c, const char *path)
{
	_cleanup_free_ char *parent = xstrdup(path);
	struct kiln_tree_entry e = { 0 };
	char *slash = strrchr(parent, '/');
	int r;

	if (!slash)
		return 0;
	*slash = '\0';
	r = kiln_tree_editor_get(c->ed, parent, &e, NULL);
	if (r == 0 && e.type != KILN_ENTRY_DIR)
		r = -ENOTDIR;
	kiln_tree_entry_release(&e);
	if (r < 0)
		return act_err(c, r, "parent directory /%s %s", parent,
			       r == -ENOTDIR ? "is not a directory" : "does not exist");
	return 0;
}

static int do_action(struct fctx *c, const struct kiln_file_action *orig,
		     const struct kiln_digest *inputs)
{
	struct kiln_file_action eff = *orig, *a = &eff;
	_cleanup_free_ char *path = NULL;
	struct kiln_tree_entry e, cur = { 0 };
	int r;

	if (orig->type == KILN_FA_COPY)
		return do_copy(c, orig, &inputs[orig->from]);
	/* Owners by name (WORKDIR after USER name) resolve like COPY --chown. */
	r = resolve_owner(c, orig, &eff.uid, &eff.gid);
	if (r < 0)
		return r;
	r = kiln_tree_editor_resolve(c->ed, a->path + 1, false, &path, c->err);
	if (r < 0)
		return r;
	if (!*path && a->type != KILN_FA_MKDIR)
		return act_err(c, -EINVAL, "%s: cannot operate on /", a->path);
	switch (a->type) {
	case KILN_FA_MKDIR:
		if (kiln_tree_editor_get(c->ed, path, &cur, NULL) == 0) {
			bool isdir = cur.type == KILN_ENTRY_DIR;
			kiln_tree_entry_release(&cur);
			if (isdir && a->parents)
				return 0;
			return act_err(c, -EEXIST, "mkdir %s: already exists", a->path);
		}
		if (a->parents)
			return kiln_tree_editor_mkdir_p(c->ed, path,
							a->mode >= 0 ? (uint32_t)a->mode : 0755,
							a->uid >= 0 ? (uint32_t)a->uid : 0,
							a->gid >= 0 ? (uint32_t)a->gid : 0,
							a->mtime >= 0 ? a->mtime : 0, c->err);
		r = check_parent(c, path);
		if (r < 0)
			return r;
		new_entry(&e, KILN_ENTRY_DIR, a, 0755);
		kiln_tree_empty_digest(&e.digest);
		return kiln_tree_editor_put(c->ed, path, &e, c->err);
	case KILN_FA_MKFILE:
		r = check_parent(c, path);
		if (r < 0)
			return r;
		new_entry(&e, KILN_ENTRY_FILE, a, 0644);
		e.size = a->data_len;
		r = kiln_store_put_buf(c->s, a->data, a->data_len, &e.digest, c->err);
		if (r < 0)
			return r;
		return kiln_tree_editor_put(c->ed, path, &e, c->err);
	case KILN_FA_RM:
		r = kiln_tree_editor_remove(c->ed, path, NULL);
		if (r == -ENOENT && a->allow_not_found)
			return 0;
		if (r < 0)
			return act_err(c, r, "rm %s: %s", a->path,
				       r == -ENOENT ? "no such file or directory" : "failed");
		return 0;
	case KILN_FA_SYMLINK:
		r = check_parent(c, path);
		if (r < 0)
			return r;
		new_entry(&e, KILN_ENTRY_SYMLINK, a, 0777);
		e.mode = 0777;
		e.target = xstrdup(a->target);
		return kiln_tree_editor_put(c->ed, path, &e, c->err);
	case KILN_FA_COPY:
		break;
	}
	return -EINVAL;
}

int kiln_fileop_run(struct kiln_store *s, const struct kiln_op *op,
		    const struct kiln_digest *base, const struct kiln_digest *inputs,
		    struct kiln_digest *out, struct kiln_error **err)
{
	struct fctx c = { .s = s, .op = op, .err = err };
	struct kiln_digest empty;
	int r;

	if (!base) {
		kiln_tree_empty_digest(&empty);
		if (!kiln_store_has(s, &empty)) {
			struct kiln_tree t = KILN_TREE_INIT;
			r = kiln_tree_put(s, &t, &empty, err);
			if (r < 0)
				return r;
		}
		base = &empty;
	}
	r = kiln_tree_editor_new(s, base, &c.ed, err);
	if (r < 0)
		return r;
	for (c.action = 0; r == 0 && c.action < op->n_actions; c.action++)
		r = do_action(&c, &op->actions[c.action], inputs);
	if (r == 0)
		r = kiln_tree_editor_commit(c.ed, out, err);
	kiln_tree_editor_free(c.ed);
	return r;
}

static int merge_two(struct kiln_store *s, const struct kiln_digest *a,
		     const struct kiln_digest *b, struct kiln_digest *out,
		     struct kiln_error **err)
{
	struct kiln_tree ta = KILN_TREE_INIT, tb = KILN_TREE_INIT;
	size_t i;
	int r;

	if (kiln_digest_eq(a, b)) {
		*out = *a;
		return 0;
	}
	r = kiln_tree_get(s, a, &ta, err);
	if (r == 0)
		r = kiln_tree_get(s, b, &tb, err);
	for (i = 0; r == 0 && i < tb.n; i++) {
		struct kiln_tree_entry *ae = kiln_tree_find(&ta, tb.entries[i].name);
		struct kiln_tree_entry e;

		kiln_tree_entry_copy(&e, &tb.entries[i]);
		if (ae && ae->type == KILN_ENTRY_DIR && e.type == KILN_ENTRY_DIR)
			r = merge_two(s, &ae->digest, &tb.entries[i].digest, &e.digest, err);
		kiln_tree_set(&ta, &e);
		kiln_tree_entry_release(&e);
	}
	if (r == 0)
		r = kiln_tree_put(s, &ta, out, err);
	kiln_tree_release(&ta);
	kiln_tree_release(&tb);
	return r;
}

int kiln_merge_trees(struct kiln_store *s, const struct kiln_digest *trees, size_t n,
		     struct kiln_digest *out, struct kiln_error **err)
{
	struct kiln_digest acc = trees[0];
	size_t i;
	int r;

	for (i = 1; i < n; i++) {
		r = merge_two(s, &acc, &trees[i], &acc, err);
		if (r < 0)
			return r;
	}
	*out = acc;
	return 0;
}
