/*
 * Building trees from directories: kiln_tree_from_dir and
 * kiln_tree_apply_layer share one traversal. It runs in three phases:
 *   1. walk the directory (one thread), building nodes in memory and a list
 *      of files whose content must be hashed;
 *   2. hash those files on a few threads (large files first, so two big
 *      files proceed in parallel);
 *   3. write the nodes bottom-up.
 * The stat cache hooks run only on the caller's thread (phases 1 and 3).
 */
#include "cas/tree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/macro.h"
#include "basic/pool.h"
#include "basic/strv.h"
#include "cas/cas-internal.h"

#define OVERLAY_XATTR_PREFIX "trusted.overlay."
#define OVERLAY_OPAQUE "trusted.overlay.opaque"
#define MAX_HASH_THREADS 4
#define BIG_FILE (1u << 20)

struct fjob {
	struct cas_node *node; /* whose entry name gets the digest */
	char *name;
	const char *dir_rel;   /* owned by build.dirs */
	char *relpath;
	struct stat st;
	size_t seq;
	struct kiln_digest d;
	uint64_t size;
	int r;
	struct kiln_error *err;
};

/* A regular file with other links: a hardlink group when they are met. */
struct inode_rec {
	dev_t dev;
	ino_t ino;
	size_t seq; /* walk order */
	char *path;
};

struct build {
	struct kiln_store *s;
	const struct kiln_tree_build_opts *opts;
	bool layer; /* whiteouts and opaque dirs are overlay markup */
	int rootfd;
	struct kiln_mount_id mount; /* of the root: no other mount is entered */
	struct fjob *jobs;
	size_t n_jobs, alloc_jobs;
	char **dirs;
	size_t n_dirs, alloc_dirs;
	struct inode_rec *inodes;
	size_t n_inodes, alloc_inodes;
	struct kiln_error **err;
};

static const struct kiln_tree_build_opts no_opts;

static char *child_path(const char *dir, const char *name)
{
	return *dir ? xasprintf("%s/%s", dir, name) : xstrdup(name);
}

static void build_release(struct build *b)
{
	size_t i;

	for (i = 0; i < b->n_jobs; i++) {
		free(b->jobs[i].name);
		free(b->jobs[i].relpath);
		kiln_error_free(b->jobs[i].err);
	}
	free(b->jobs);
	kiln_strv_free(b->dirs, b->n_dirs);
	for (i = 0; i < b->n_inodes; i++)
		free(b->inodes[i].path);
	free(b->inodes);
}

static void note_inode(struct build *b, const char *relpath, const struct stat *st)
{
	struct inode_rec *in;

	b->inodes = xgrow(b->inodes, &b->alloc_inodes, b->n_inodes + 1,
			  sizeof(*b->inodes));
	in = &b->inodes[b->n_inodes];
	in->dev = st->st_dev;
	in->ino = st->st_ino;
	in->seq = b->n_inodes++;
	in->path = xstrdup(relpath);
}

static const char *build_keep_dir(struct build *b, const char *rel)
{
	b->dirs = xgrow(b->dirs, &b->alloc_dirs, b->n_dirs + 1, sizeof(*b->dirs));
	b->dirs[b->n_dirs] = xstrdup(rel);
	return b->dirs[b->n_dirs++];
}

/* ---- reading one directory ---- */

static int strp_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted names of dirfd, read before recursing so few fds stay open. */
static int read_names(int dirfd, char ***out, size_t *n_out)
{
	char **names = NULL;
	size_t n = 0, alloc = 0;
	struct dirent *de;
	DIR *d;
	int r = kiln_opendir_at(dirfd, ".", 0, &d);

	if (r < 0)
		return r;
	while ((errno = 0, de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		names = xgrow(names, &alloc, n + 1, sizeof(*names));
		names[n++] = xstrdup(de->d_name);
	}
	if (errno) {
		r = -errno;
		closedir(d);
		kiln_strv_free(names, n);
		return r;
	}
	closedir(d);
	if (n > 1)
		qsort(names, n, sizeof(*names), strp_cmp);
	*out = names;
	*n_out = n;
	return 0;
}

/* ---- xattrs ---- */

static ssize_t xlist(int fd, const char *path, char *buf, size_t n)
{
	ssize_t k = fd >= 0 ? flistxattr(fd, buf, n) : llistxattr(path, buf, n);

	return k < 0 ? -errno : k;
}

static ssize_t xget(int fd, const char *path, const char *name, void *buf,
		    size_t n)
{
	ssize_t k = fd >= 0 ? fgetxattr(fd, name, buf, n)
			    : lgetxattr(path, name, buf, n);

	return k < 0 ? -errno : k;
}

static bool xattr_unsupported(ssize_t r)
{
	return r == -ENOTSUP || r == -ENODATA;
}

/* The list of xattr names (NUL-separated) in *out; length or -errno. */
static ssize_t list_names(int fd, const char *path, char **out)
{
	int tries;

	for (tries = 0; tries < 8; tries++) {
		ssize_t n = xlist(fd, path, NULL, 0), k;

		if (n <= 0)
			return xattr_unsupported(n) ? 0 : n;
		*out = xmalloc((size_t)n);
		k = xlist(fd, path, *out, (size_t)n);
		if (k >= 0)
			return k;
		free(*out);
		*out = NULL;
		if (k != -ERANGE)
			return xattr_unsupported(k) ? 0 : k;
	}
	return -ERANGE;
}

static int add_xattr(struct build *b, int fd, const char *path,
		     const char *name, const char *relpath,
		     struct kiln_tree_entry *e, size_t *alloc)
{
	ssize_t n = xget(fd, path, name, NULL, 0);
	struct kiln_xattr *x;

	if (n == -ENODATA)
		return 0; /* removed meanwhile */
	if (n < 0)
		return kiln_error_seterrno(b->err, (int)n, "%s: reading xattr %s",
					   relpath, name);
	if (n > KILN_TREE_MAX_XATTR_VALUE || strlen(name) > KILN_TREE_MAX_XATTR_NAME)
		return kiln_error_set(b->err, -E2BIG, "%s: xattr %s is too large",
				      relpath, name);
	if (e->n_xattrs >= KILN_TREE_MAX_XATTRS)
		return kiln_error_set(b->err, -E2BIG, "%s: more than %u xattrs",
				      relpath, KILN_TREE_MAX_XATTRS);
	e->xattrs = xgrow(e->xattrs, alloc, e->n_xattrs + 1, sizeof(*e->xattrs));
	x = &e->xattrs[e->n_xattrs++];
	x->name = xstrdup(name);
	x->value = xmalloc((size_t)n + 1);
	x->len = 0;
	n = xget(fd, path, name, x->value, (size_t)n);
	if (n < 0)
		return kiln_error_seterrno(b->err, (int)n, "%s: reading xattr %s",
					   relpath, name);
	x->len = (uint32_t)n;
	return 0;
}

/* Record the xattrs of fd (or of path, not following it), sorted. */
static int read_xattrs(struct build *b, int fd, const char *path,
		       const char *relpath, struct kiln_tree_entry *e)
{
	_cleanup_free_ char *names = NULL;
	ssize_t n = list_names(fd, path, &names);
	size_t alloc = 0, off;
	int r = 0;

	if (n < 0)
		return kiln_error_seterrno(b->err, (int)n, "%s: listing xattrs",
					   relpath);
	for (off = 0; r == 0 && off < (size_t)n; off += strlen(names + off) + 1) {
		const char *name = names + off;

		if (!*name || !strncmp(name, OVERLAY_XATTR_PREFIX,
				       strlen(OVERLAY_XATTR_PREFIX)))
			continue;
		r = add_xattr(b, fd, path, name, relpath, e, &alloc);
	}
	return r ? r : cas_entry_sort_xattrs(e, b->err);
}

static bool is_opaque(int dirfd)
{
	char v[2];

	return xget(dirfd, NULL, OVERLAY_OPAQUE, v, sizeof(v)) == 1 && v[0] == 'y';
}

/* ---- entries ---- */

static void fill_meta(struct build *b, const struct stat *st, const char *name,
		      struct kiln_tree_entry *e)
{
	memset(e, 0, sizeof(*e));
	e->name = xstrdup(name);
	e->mode = st->st_mode & 07777;
	e->uid = b->opts->zero_owner ? 0 : st->st_uid;
	e->gid = b->opts->zero_owner ? 0 : st->st_gid;
	e->mtime_sec = b->opts->zero_mtime ? 0 : st->st_mtim.tv_sec;
	e->mtime_nsec = b->opts->zero_mtime ? 0 : (uint32_t)st->st_mtim.tv_nsec;
}

static int read_target(struct build *b, int dirfd, const char *name,
		       const char *relpath, struct kiln_tree_entry *e)
{
	char buf[KILN_TREE_MAX_TARGET + 1];
	ssize_t n = readlinkat(dirfd, name, buf, sizeof(buf));

	if (n < 0)
		return kiln_error_seterrno(b->err, -errno, "%s: readlink", relpath);
	if (n == 0 || (size_t)n > KILN_TREE_MAX_TARGET)
		return kiln_error_set(b->err, -ENAMETOOLONG,
				      "%s: symlink target longer than %u bytes",
				      relpath, KILN_TREE_MAX_TARGET);
	e->target = xstrndup(buf, (size_t)n);
	return 0;
}

static int leaf_payload(struct build *b, int dirfd, const char *name,
			const char *relpath, const struct stat *st,
			struct kiln_tree_entry *e)
{
	switch (st->st_mode & S_IFMT) {
	case S_IFREG:
		e->type = KILN_ENTRY_FILE;
		e->size = (uint64_t)st->st_size;
		return 0;
	case S_IFLNK:
		e->type = KILN_ENTRY_SYMLINK;
		return read_target(b, dirfd, name, relpath, e);
	case S_IFCHR:
	case S_IFBLK:
		e->type = S_ISCHR(st->st_mode) ? KILN_ENTRY_CHAR : KILN_ENTRY_BLOCK;
		e->rdev_major = major(st->st_rdev);
		e->rdev_minor = minor(st->st_rdev);
		return 0;
	case S_IFIFO:
		e->type = KILN_ENTRY_FIFO;
		return 0;
	default:
		return kiln_error_set(b->err, -EINVAL, "%s: unsupported file type",
				      relpath);
	}
}

/*
 * skip_xattrs: the stat cache knows this unchanged file had none (listing
 * them by path, through /proc/self/fd, is most of an unchanged file's cost).
 */
static int make_leaf(struct build *b, int dirfd, const char *name,
		     const char *relpath, const struct stat *st, bool skip_xattrs,
		     struct kiln_tree_entry *e)
{
	_cleanup_free_ char *proc = NULL;
	int r;

	fill_meta(b, st, name, e);
	r = leaf_payload(b, dirfd, name, relpath, st, e);
	if (r < 0 || skip_xattrs)
		return r;
	proc = xasprintf("/proc/self/fd/%d/%s", dirfd, name);
	return read_xattrs(b, -1, proc, relpath, e);
}

static void add_job(struct build *b, struct cas_node *node, const char *dir_rel,
		    const char *name, const char *relpath, const struct stat *st)
{
	struct fjob *j;

	b->jobs = xgrow(b->jobs, &b->alloc_jobs, b->n_jobs + 1, sizeof(*b->jobs));
	j = &b->jobs[b->n_jobs];
	memset(j, 0, sizeof(*j));
	j->node = node;
	j->name = xstrdup(name);
	j->dir_rel = dir_rel;
	j->relpath = xstrdup(relpath);
	j->st = *st;
	j->seq = b->n_jobs++;
}

/* A file the stat cache did not know: hashed later (phase 2). */
static int build_file(struct build *b, struct cas_node *node, const char *dir_rel,
		      const char *relpath, const struct stat *st,
		      struct kiln_tree_entry *e)
{
	memset(&e->digest, 0, sizeof(e->digest));
	add_job(b, node, dir_rel, e->name, relpath, st);
	return 0;
}

/* ---- the traversal ---- */

/* The base entries of a node being rebuilt, consumed in name order. */
struct merge {
	struct kiln_tree old;
	size_t i;
};

static struct kiln_tree_entry *merge_take(struct merge *m, struct kiln_tree *dst,
					  const char *name)
{
	while (m->i < m->old.n && strcmp(m->old.entries[m->i].name, name) < 0)
		cas_tree_append(dst, &m->old.entries[m->i++]);
	if (m->i < m->old.n && !strcmp(m->old.entries[m->i].name, name))
		return &m->old.entries[m->i++];
	return NULL;
}

static void merge_finish(struct merge *m, struct kiln_tree *dst)
{
	while (m->i < m->old.n)
		cas_tree_append(dst, &m->old.entries[m->i++]);
	kiln_tree_release(&m->old);
}

static int build_dir(struct build *b, struct cas_node *node, int dirfd,
		     const char *dir_rel, unsigned depth);

static int open_subdir(struct build *b, int dirfd, const char *name,
		       const char *relpath, struct stat *st)
{
	int fd = openat(dirfd, name,
			O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return kiln_error_seterrno(b->err, -errno, "%s: open", relpath);
	if (fstat(fd, st) < 0) {
		int r = -errno;
		close(fd);
		return kiln_error_seterrno(b->err, r, "%s: stat", relpath);
	}
	return fd;
}

/* The kid node a layer directory is applied to: the base dir, or empty. */
static int subdir_base(struct build *b, struct cas_node *node, int fd,
		       const char *name, const struct kiln_tree_entry *base,
		       struct cas_node **kid)
{
	bool merge = b->layer && base && base->type == KILN_ENTRY_DIR &&
		     !is_opaque(fd);

	int r;

	if (!merge) {
		*kid = cas_node_new(node, name);
		return 0;
	}
	r = cas_node_load(b->s, &base->digest, node, name, kid, b->err);
	if (r == 0)
		(*kid)->merged = true;
	return r;
}

/*
 * A directory: its entry (metadata from the directory itself) and its
 * node. Mount points are recorded as empty directories. *keep is false for
 * a directory the filter excluded and that ends up empty.
 */
/* A mount point inside the tree (bind mounts too) is kept as an empty dir. */
static bool same_mount(const struct build *b, int fd)
{
	struct kiln_mount_id m;

	return kiln_mount_id_at(fd, "", &m) == 0 && kiln_mount_id_same(&m, &b->mount);
}

static int build_subdir(struct build *b, struct cas_node *node, int dirfd,
			const char *name, const char *relpath, bool included,
			const struct kiln_tree_entry *base,
			struct kiln_tree_entry *e, unsigned depth)
{
	_cleanup_close_ int fd = -1;
	struct cas_node *kid = NULL;
	struct stat st;
	int r;

	fd = open_subdir(b, dirfd, name, relpath, &st);
	if (fd < 0)
		return fd;
	fill_meta(b, &st, name, e);
	e->type = KILN_ENTRY_DIR;
	r = read_xattrs(b, fd, NULL, relpath, e);
	r = r ? r : subdir_base(b, node, fd, name, base, &kid);
	if (r == 0 && same_mount(b, fd))
		r = build_dir(b, kid, fd, build_keep_dir(b, relpath), depth + 1);
	if (r == 0 && (included || kid->t.n > 0)) {
		cas_node_add_kid(node, kid);
		return 1;
	}
	cas_node_free(kid);
	return r;
}

static bool want(struct build *b, const char *relpath, bool is_dir,
		 bool *included)
{
	const struct kiln_tree_build_opts *o = b->opts;

	*included = !o->filter || o->filter(o->ud, relpath, is_dir);
	if (*included)
		return true;
	return is_dir && o->filter_descend && o->filter_descend(o->ud, relpath);
}

static bool is_whiteout(const struct stat *st)
{
	return S_ISCHR(st->st_mode) && st->st_rdev == makedev(0, 0);
}

/*
 * One name of a directory. base is the entry of that name below (layers)
 * or NULL. Appends the resulting entry, keeps base, or drops both.
 */
static int build_name(struct build *b, struct cas_node *node, int dirfd,
		      const char *dir_rel, const char *name,
		      struct kiln_tree_entry *base, unsigned depth)
{
	_cleanup_free_ char *relpath = child_path(dir_rel, name);
	struct kiln_tree_entry e = { 0 };
	struct stat st;
	bool included;
	int r;

	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno == ENOENT)
			goto keep_base; /* vanished while we walked */
		return kiln_error_seterrno(b->err, -errno, "%s: stat", relpath);
	}
	if (b->layer && is_whiteout(&st))
		goto drop;
	if (S_ISSOCK(st.st_mode) || !want(b, relpath, S_ISDIR(st.st_mode), &included))
		goto keep_base;
	cas_node_drop_kid(node, name);
	if (S_ISDIR(st.st_mode)) {
		r = build_subdir(b, node, dirfd, name, relpath, included, base, &e,
				 depth);
		if (r <= 0) {
			kiln_tree_entry_release(&e);
			return r ? r : 0;
		}
	} else {
		const struct kiln_tree_build_opts *o = b->opts;
		struct kiln_digest known;
		bool hit = false, no_xattrs = false;

		if (S_ISREG(st.st_mode) && o->stat_lookup)
			hit = o->stat_lookup(o->ud, relpath, &st, &known, &no_xattrs);
		r = make_leaf(b, dirfd, name, relpath, &st, hit && no_xattrs, &e);
		if (r == 0 && hit) {
			e.digest = known;
			/* A row that did not say (older ones): it says now. */
			if (!no_xattrs && e.n_xattrs == 0 && o->stat_store)
				o->stat_store(o->ud, relpath, &st, &known, false);
		} else if (r == 0 && e.type == KILN_ENTRY_FILE) {
			r = build_file(b, node, dir_rel, relpath, &st, &e);
		}
		if (r < 0) {
			kiln_tree_entry_release(&e);
			return r;
		}
		if (e.type == KILN_ENTRY_FILE && st.st_nlink > 1)
			note_inode(b, relpath, &st);
	}
	cas_tree_append(&node->t, &e);
	return 0;
keep_base:
	if (base)
		cas_tree_append(&node->t, base);
	return 0;
drop:
	cas_node_drop_kid(node, name);
	return 0;
}

/*
 * Whether the layer replaced or removed path (relative to node) or a
 * directory above it: it names it, and does not merge into it.
 */
static bool layer_touched(const struct cas_node *node, const char *path)
{
	size_t k = strcspn(path, "/");
	_cleanup_free_ char *first = xstrndup(path, k);
	const struct cas_node *kid;

	if (!bsearch(&first, node->layer_names, node->n_layer_names,
		     sizeof(char *), strp_cmp))
		return false;
	kid = cas_node_kid(node, first);
	if (!path[k] || !kid || !kid->merged)
		return true;
	return layer_touched(kid, path + k + 1);
}

/*
 * The base's hardlink groups of a merged node, minus the members the
 * layer replaced or removed (they are other files now).
 */
static int keep_base_links(struct build *b, struct cas_node *node,
			   struct kiln_tree *old)
{
	size_t g, i, k;

	for (g = 0; g < old->n_links; g++) {
		struct kiln_tree_link *l = &old->links[g];

		for (i = k = 0; i < l->n; i++) {
			if (layer_touched(node, l->paths[i]))
				free(l->paths[i]);
			else
				l->paths[k++] = l->paths[i];
		}
		l->n = k;
		if (k >= 2)
			kiln_tree_add_link(&node->t, l->paths, k);
		else
			kiln_strv_free(l->paths, k);
		l->paths = NULL;
		l->n = 0;
	}
	old->n_links = 0;
	return cas_node_settle_links(b->s, node, b->err);
}

static int build_dir(struct build *b, struct cas_node *node, int dirfd,
		     const char *dir_rel, unsigned depth)
{
	struct merge m = { node->t, 0 };
	struct kiln_tree base_links = KILN_TREE_INIT;
	char **names = NULL;
	size_t n = 0, i;
	int r;

	if (depth > KILN_TREE_MAX_DEPTH)
		return kiln_error_set(b->err, -ELOOP, "%s: deeper than %u levels",
				      dir_rel, KILN_TREE_MAX_DEPTH);
	r = read_names(dirfd, &names, &n);
	if (r < 0)
		return kiln_error_seterrno(b->err, r, "%s: reading directory",
					   *dir_rel ? dir_rel : ".");
	kiln_tree_init(&node->t);
	cas_node_mark_dirty(node);
	/* The base's groups, checked once the layer's names are known. */
	base_links.links = TAKE_PTR(m.old.links);
	base_links.n_links = m.old.n_links;
	m.old.n_links = 0;
	for (i = 0; r == 0 && i < n; i++) {
		struct kiln_tree_entry *base = merge_take(&m, &node->t, names[i]);

		r = build_name(b, node, dirfd, dir_rel, names[i], base, depth);
	}
	merge_finish(&m, &node->t);
	if (r == 0 && b->layer) {
		/* Kept for the ancestors' groups (layer_touched). */
		node->layer_names = TAKE_PTR(names);
		node->n_layer_names = n;
		r = keep_base_links(b, node, &base_links);
	}
	kiln_tree_release(&base_links);
	kiln_strv_free(names, n);
	return r;
}

/* ---- phase 2: hashing ---- */

/* Per thread slot: the directory of its last job, open. */
struct hash_pool {
	struct build *b;
	int dirfd[MAX_HASH_THREADS];
	const char *dir[MAX_HASH_THREADS];
};

static int open_job_dir(struct build *b, const char *dir_rel)
{
	return kiln_openat2(b->rootfd, *dir_rel ? dir_rel : ".",
			    O_RDONLY | O_DIRECTORY, 0,
			    KILN_RESOLVE_BENEATH | KILN_RESOLVE_NO_SYMLINKS |
				    KILN_RESOLVE_NO_XDEV);
}

static int copy_job(struct build *b, int pfd, struct fjob *j)
{
	_cleanup_close_ int fd = openat(pfd, j->name,
					O_RDONLY | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC);
	struct kiln_blob_meta meta;
	struct stat st;

	if (fd < 0)
		return kiln_error_seterrno(&j->err, -errno, "open");
	if (fstat(fd, &st) < 0)
		return kiln_error_seterrno(&j->err, -errno, "stat");
	if (!S_ISREG(st.st_mode))
		return kiln_error_set(&j->err, -EINVAL, "no longer a regular file");
	/* The new blob gets the entry's metadata, so layers hardlink it. */
	meta.mode = st.st_mode & 07777;
	meta.uid = b->opts->zero_owner ? 0 : st.st_uid;
	meta.gid = b->opts->zero_owner ? 0 : st.st_gid;
	meta.mtime_sec = b->opts->zero_mtime ? 0 : st.st_mtim.tv_sec;
	meta.mtime_nsec = b->opts->zero_mtime ? 0 : (uint32_t)st.st_mtim.tv_nsec;
	return kiln_store_put_fd_meta(b->s, fd, &meta, &j->d, &j->size, &j->err);
}

static void run_job(struct build *b, int pfd, struct fjob *j)
{
	if (pfd < 0)
		j->r = kiln_error_seterrno(&j->err, pfd, "opening its directory");
	else if (b->opts->adopt)
		j->r = kiln_store_adopt(b->s, pfd, j->name, &j->d, &j->size, &j->err);
	else
		j->r = copy_job(b, pfd, j);
	if (j->r < 0)
		kiln_error_prefix(&j->err, "%s", j->relpath);
}

/*
 * Hash job i. Each thread keeps the directory of its last job open (jobs
 * come mostly grouped by directory); the job keeps its own error, so the
 * first failure in walk order is reported (finish_jobs), not the first in
 * time.
 */
static int hash_one(void *ud, size_t i, unsigned slot, struct kiln_error **err)
{
	struct hash_pool *p = ud;
	struct fjob *j = &p->b->jobs[i];

	if (j->dir_rel != p->dir[slot]) {
		closep(&p->dirfd[slot]);
		p->dirfd[slot] = open_job_dir(p->b, j->dir_rel);
		p->dir[slot] = j->dir_rel;
	}
	run_job(p->b, p->dirfd[slot], j);
	return j->r;
}

static uint64_t job_key(const struct fjob *j)
{
	return j->st.st_size >= BIG_FILE ? (uint64_t)j->st.st_size : 0;
}

/* Big files first (largest first), then the rest in walk order. */
static int job_cmp(const void *pa, const void *pb)
{
	const struct fjob *a = pa, *b = pb;
	uint64_t ka = job_key(a), kb = job_key(b);

	if (ka != kb)
		return ka > kb ? -1 : 1;
	return a->seq < b->seq ? -1 : a->seq > b->seq;
}

static size_t hash_threads(size_t n_jobs)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	size_t n = cpus > 0 ? (size_t)cpus : 1;

	if (n > MAX_HASH_THREADS)
		n = MAX_HASH_THREADS;
	return n < n_jobs ? n : n_jobs;
}

static void hash_jobs(struct build *b)
{
	struct hash_pool p = { .b = b };
	size_t n = hash_threads(b->n_jobs), i;

	if (!b->n_jobs)
		return;
	qsort(b->jobs, b->n_jobs, sizeof(*b->jobs), job_cmp);
	for (i = 0; i < MAX_HASH_THREADS; i++)
		p.dirfd[i] = -1;
	(void)kiln_pool_run(b->n_jobs, (unsigned)n, hash_one, &p, NULL);
	for (i = 0; i < MAX_HASH_THREADS; i++)
		closep(&p.dirfd[i]);
}

/* The first failed job (in walk order) reports; others fill in digests. */
static int finish_jobs(struct build *b)
{
	const struct kiln_tree_build_opts *o = b->opts;
	struct fjob *first = NULL;
	size_t i;

	for (i = 0; i < b->n_jobs; i++) {
		struct fjob *j = &b->jobs[i];
		struct kiln_tree_entry *e;

		if (j->r < 0 && (!first || j->seq < first->seq))
			first = j;
		if (j->r < 0 || first || !kiln_digest_is_set(&j->d))
			continue;
		e = kiln_tree_find(&j->node->t, j->name);
		e->digest = j->d;
		e->size = j->size;
		if (o->stat_store && j->size == (uint64_t)j->st.st_size)
			o->stat_store(o->ud, j->relpath, &j->st, &j->d, e->n_xattrs > 0);
	}
	if (!first)
		return 0;
	if (b->err && !*b->err)
		*b->err = TAKE_PTR(first->err);
	return first->r;
}

/* ---- phase 3: hardlink groups ---- */

static int inode_cmp(const void *pa, const void *pb)
{
	const struct inode_rec *a = pa, *b = pb;

	if (a->dev != b->dev)
		return a->dev < b->dev ? -1 : 1;
	if (a->ino != b->ino)
		return a->ino < b->ino ? -1 : 1;
	return a->seq < b->seq ? -1 : a->seq > b->seq;
}

/* Length of the directory prefix ("a/b/") that all of paths share. */
static size_t common_dir(struct inode_rec *recs, size_t n)
{
	const char *p0 = recs[0].path;
	size_t len = 0, i, k;

	for (k = 0; p0[k]; k++) {
		if (p0[k] != '/')
			continue;
		for (i = 1; i < n; i++)
			if (strncmp(recs[i].path, p0, k + 1))
				return len;
		len = k + 1;
	}
	return len;
}

/* The built entry at path below node (only loaded nodes), or NULL. */
static const struct kiln_tree_entry *built_entry(struct cas_node *node,
						 const char *path)
{
	const char *slash;

	while ((slash = strchr(path, '/'))) {
		_cleanup_free_ char *name = xstrndup(path, (size_t)(slash - path));

		node = cas_node_kid(node, name);
		if (!node)
			return NULL;
		path = slash + 1;
	}
	return kiln_tree_find(&node->t, path);
}

/*
 * Files met more than once by inode become one group, held by the deepest
 * directory that holds them all. Members must have come out identical
 * (a file changed between two reads of its names is not linked).
 */
static void add_group(struct cas_node *root, struct inode_rec *recs, size_t n)
{
	size_t dlen = common_dir(recs, n), i;
	_cleanup_free_ char *dir = xstrndup(recs[0].path, dlen ? dlen - 1 : 0);
	const struct kiln_tree_entry *first = NULL;
	struct cas_node *node = root;
	char **paths;

	if (*dir) {
		const char *p = dir;

		while (node && *p) {
			size_t k = strcspn(p, "/");
			_cleanup_free_ char *name = xstrndup(p, k);

			node = cas_node_kid(node, name);
			p += k + (p[k] == '/');
		}
		if (!node)
			return;
	}
	for (i = 0; i < n; i++) {
		const struct kiln_tree_entry *e = built_entry(node, recs[i].path + dlen);

		if (!e || e->type != KILN_ENTRY_FILE)
			return;
		if (!first)
			first = e;
		else if (!kiln_tree_entry_same_file(first, e))
			return;
	}
	paths = xcalloc(n, sizeof(*paths));
	for (i = 0; i < n; i++)
		paths[i] = xstrdup(recs[i].path + dlen);
	kiln_tree_add_link(&node->t, paths, n);
	cas_node_mark_dirty(node);
}

static void add_inode_links(struct build *b, struct cas_node *root)
{
	size_t i = 0, j;

	if (b->n_inodes > 1)
		qsort(b->inodes, b->n_inodes, sizeof(*b->inodes), inode_cmp);
	while (i < b->n_inodes) {
		for (j = i + 1; j < b->n_inodes &&
				b->inodes[j].dev == b->inodes[i].dev &&
				b->inodes[j].ino == b->inodes[i].ino;
		     j++)
			;
		if (j - i >= 2)
			add_group(root, &b->inodes[i], j - i);
		i = j;
	}
}

/* ---- entry points ---- */

static int build_run(struct build *b, struct cas_node *root,
		     struct kiln_digest *out)
{
	struct stat st;
	int r;

	if (fstat(b->rootfd, &st) < 0)
		return kiln_error_seterrno(b->err, -errno, "stat of the root directory");
	if (!S_ISDIR(st.st_mode))
		return kiln_error_set(b->err, -ENOTDIR, "root is not a directory");
	r = kiln_mount_id_at(b->rootfd, "", &b->mount);
	if (r < 0)
		return kiln_error_seterrno(b->err, r, "statx of the root directory");
	r = build_dir(b, root, b->rootfd, build_keep_dir(b, ""), 1);
	if (r < 0)
		return r;
	hash_jobs(b);
	r = finish_jobs(b);
	if (r == 0)
		add_inode_links(b, root);
	r = r ? r : cas_node_flush(b->s, root, b->err);
	if (r == 0)
		*out = root->digest;
	return r;
}

int kiln_tree_from_dir(struct kiln_store *s, int dirfd,
		       const struct kiln_tree_build_opts *opts,
		       struct kiln_digest *out, struct kiln_error **err)
{
	struct build b = { .s = s, .opts = opts ? opts : &no_opts,
			   .rootfd = dirfd, .err = err };
	struct cas_node *root = cas_node_new(NULL, NULL);
	int r = build_run(&b, root, out);

	if (r == 0)
		r = kiln_store_sync(s, err); /* adopted names, before the root counts */
	cas_node_free(root);
	build_release(&b);
	return r;
}

int kiln_tree_apply_layer(struct kiln_store *s, const struct kiln_digest *base,
			  int layerfd, const struct kiln_tree_build_opts *opts,
			  struct kiln_digest *out, struct kiln_error **err)
{
	struct build b = { .s = s, .opts = opts ? opts : &no_opts, .layer = true,
			   .rootfd = layerfd, .err = err };
	struct cas_node *root = NULL;
	int r = cas_node_load(s, base, NULL, NULL, &root, err);

	if (r < 0)
		return r;
	r = build_run(&b, root, out);
	if (r == 0)
		r = kiln_store_sync(s, err); /* adopted names, before the root counts */
	cas_node_free(root);
	build_release(&b);
	return r;
}
