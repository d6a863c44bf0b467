/*
 * The layer store: trees materialized as chains of overlayfs layer dirs.
 * See layers.h and docs/internals/worker.md.
 */
#include "worker/layers.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/strbuf.h"
#include "basic/strv.h"
#include "cas/tree.h"

#define LAYER_ID_LEN 16
#define MAX_CHAIN 4096
/* One page of mount options; keep room for upperdir, workdir and flags. */
#define MOUNT_DATA_MAX 4096
#define OPAQUE_XATTR "trusted.overlay.opaque"

struct kiln_layers {
	char *dir;
	int dirfd;
	struct kiln_store *store;
};

void kiln_chain_release(struct kiln_chain *c)
{
	if (!c)
		return;
	kiln_strv_free(c->dirs, c->n);
	c->dirs = NULL;
	c->n = 0;
}

static void layer_id(const struct kiln_digest *d, char id[LAYER_ID_LEN + 1])
{
	char hex[KILN_DIGEST_HEXLEN];

	kiln_digest_hex(d, hex);
	memcpy(id, hex, LAYER_ID_LEN);
	id[LAYER_ID_LEN] = '\0';
}

/* No tree (unset) or the empty tree: both materialize to nothing. */
static bool is_empty_tree(const struct kiln_digest *d)
{
	return !d || !kiln_digest_is_set(d) || kiln_tree_is_empty_digest(d);
}

int kiln_layers_open(const char *dir, struct kiln_store *store,
		     struct kiln_layers **out, struct kiln_error **err)
{
	struct kiln_layers *l;
	int r;

	r = kiln_mkdir_p(dir, 0700);
	if (r < 0)
		return kiln_error_seterrno(err, r, "creating layer store %s", dir);
	l = xcalloc(1, sizeof(*l));
	l->dir = xstrdup(dir);
	l->store = store;
	l->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (l->dirfd < 0) {
		r = -errno;
		kiln_layers_free(l);
		return kiln_error_seterrno(err, r, "opening layer store %s", dir);
	}
	/* A crash leaves only tmp/ junk: layers are renamed into place. */
	r = kiln_rm_rf_at(l->dirfd, "tmp");
	if (r == 0 && mkdirat(l->dirfd, "tmp", 0700) < 0)
		r = -errno;
	if (r < 0) {
		kiln_layers_free(l);
		return kiln_error_seterrno(err, r, "cleaning %s/tmp", dir);
	}
	*out = l;
	return 0;
}

void kiln_layers_free(struct kiln_layers *l)
{
	if (!l)
		return;
	if (l->dirfd >= 0)
		close(l->dirfd);
	free(l->dir);
	free(l);
}

/* Read a digest from <id>/<name>; *set false when the file is empty. */
static int read_digest_file(struct kiln_layers *l, const char *id,
			    const char *name, struct kiln_digest *d, bool *set)
{
	_cleanup_free_ char *path = xasprintf("%s/%s", id, name), *s = NULL;
	size_t len;
	int r;

	r = kiln_read_file_at(l->dirfd, path, 128, &s, &len);
	if (r < 0)
		return r;
	while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == ' '))
		s[--len] = '\0';
	*set = len > 0;
	if (!*set)
		return 0;
	return kiln_digest_parse(s, d);
}

bool kiln_layers_has(struct kiln_layers *l, const struct kiln_digest *root)
{
	char id[LAYER_ID_LEN + 1];
	struct kiln_digest d;
	bool set;

	if (is_empty_tree(root))
		return true;
	layer_id(root, id);
	if (read_digest_file(l, id, "tree", &d, &set) < 0 || !set)
		return false;
	return kiln_digest_eq(&d, root);
}

static int chain_build(struct kiln_layers *l, const struct kiln_digest *root,
		       struct kiln_chain *out, struct kiln_error **err)
{
	struct kiln_digest cur = *root, parent;
	size_t alloc = 0;
	bool set = true;

	out->dirs = NULL;
	out->n = 0;
	while (set && !is_empty_tree(&cur)) {
		char id[LAYER_ID_LEN + 1];

		if (out->n >= MAX_CHAIN || !kiln_layers_has(l, &cur)) {
			kiln_chain_release(out);
			return kiln_error_set(err, -ENOENT,
					      "layer chain of %s is broken at %s",
					      KILN_DIGEST_STR(root),
					      KILN_DIGEST_STR(&cur));
		}
		layer_id(&cur, id);
		out->dirs = xgrow(out->dirs, &alloc, out->n + 1,
				  sizeof(*out->dirs));
		out->dirs[out->n++] = xasprintf("%s/%s/fs", l->dir, id);
		if (read_digest_file(l, id, "parent", &parent, &set) < 0)
			set = false;
		cur = parent;
	}
	return 0;
}

/* Would chain (plus extra more layers) fit in one overlay mount? */
static bool chain_fits(const struct kiln_layers *l, const struct kiln_chain *c,
		       size_t extra)
{
	/* "<dir>/<16 hex>/fs" per layer plus a separator. */
	size_t per = strlen(l->dir) + LAYER_ID_LEN + 5;
	size_t reserve = 2 * (strlen(l->dir) + 32) + 128;
	size_t total = 0, i;

	for (i = 0; i < c->n; i++)
		total += strlen(c->dirs[i]) + 1;
	total += extra * per;
	return total + reserve < MOUNT_DATA_MAX;
}

/* ---- writing a layer directory ---- */

struct dirfix {
	char *path;
	struct kiln_tree_entry e;
};

struct layer_writer {
	struct kiln_layers *l;
	int fsfd;
	const struct kiln_digest *root; /* tree being materialized */
	struct dirfix *dirs;
	size_t n_dirs, alloc_dirs;
	char *pdir; /* cached parent */
	int pfd;
	bool copy; /* never hardlink blobs: the files may be changed */
	struct kiln_error **err;
};

static void writer_release(struct layer_writer *w)
{
	size_t i;

	for (i = 0; i < w->n_dirs; i++) {
		free(w->dirs[i].path);
		kiln_tree_entry_release(&w->dirs[i].e);
	}
	free(w->dirs);
	free(w->pdir);
	if (w->pfd >= 0)
		close(w->pfd);
	if (w->fsfd >= 0)
		close(w->fsfd);
}

static void split_path(const char *path, char **parent, const char **name)
{
	const char *slash = strrchr(path, '/');

	*parent = slash ? xstrndup(path, (size_t)(slash - path)) : xstrdup("");
	*name = slash ? slash + 1 : path;
}

static int set_xattrs_fd(int fd, const struct kiln_tree_entry *e)
{
	size_t i;

	for (i = 0; i < e->n_xattrs; i++)
		if (fsetxattr(fd, e->xattrs[i].name, e->xattrs[i].value,
			      e->xattrs[i].len, 0) < 0)
			return -errno;
	return 0;
}

static int set_xattrs_at(int dirfd, const char *name,
			 const struct kiln_tree_entry *e)
{
	char path[64 + KILN_TREE_MAX_NAME];
	size_t i;

	if (e->n_xattrs == 0)
		return 0;
	snprintf(path, sizeof(path), "/proc/self/fd/%d/%s", dirfd, name);
	for (i = 0; i < e->n_xattrs; i++)
		if (lsetxattr(path, e->xattrs[i].name, e->xattrs[i].value,
			      e->xattrs[i].len, 0) < 0)
			return -errno;
	return 0;
}

static void entry_times(const struct kiln_tree_entry *e, struct timespec ts[2])
{
	ts[0].tv_sec = ts[1].tv_sec = e->mtime_sec;
	ts[0].tv_nsec = ts[1].tv_nsec = e->mtime_nsec;
}

/* Owner, mode, xattrs, times of a just-created non-directory. */
static int set_meta_at(int dirfd, const char *name,
		       const struct kiln_tree_entry *e)
{
	struct timespec ts[2];
	int r;

	if (fchownat(dirfd, name, e->uid, e->gid, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (e->type != KILN_ENTRY_SYMLINK &&
	    fchmodat(dirfd, name, e->mode & 07777, 0) < 0)
		return -errno;
	r = set_xattrs_at(dirfd, name, e);
	if (r < 0)
		return r;
	entry_times(e, ts);
	if (utimensat(dirfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return 0;
}

static bool blob_meta_matches(const struct stat *st,
			      const struct kiln_tree_entry *e)
{
	return S_ISREG(st->st_mode) && (st->st_mode & 07777) == e->mode &&
	       st->st_uid == e->uid && st->st_gid == e->gid &&
	       st->st_mtim.tv_sec == e->mtime_sec &&
	       st->st_mtim.tv_nsec == (long)e->mtime_nsec && e->n_xattrs == 0;
}

static int copy_blob(struct layer_writer *w, int pfd, const char *name,
		     const struct kiln_tree_entry *e)
{
	_cleanup_close_ int in = -1, out = -1;
	struct timespec ts[2];
	int r;

	in = kiln_store_open_blob(w->l->store, &e->digest);
	if (in < 0)
		return in;
	out = openat(pfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (out < 0)
		return -errno;
	r = kiln_copy_fd(in, out);
	if (r < 0)
		return r;
	if (fchown(out, e->uid, e->gid) < 0 || fchmod(out, e->mode & 07777) < 0)
		return -errno;
	r = set_xattrs_fd(out, e);
	if (r < 0)
		return r;
	entry_times(e, ts);
	return futimens(out, ts) < 0 ? -errno : 0;
}

/* Hardlink the blob when its inode already has the entry's metadata. */
static int put_file(struct layer_writer *w, int pfd, const char *name,
		    const struct kiln_tree_entry *e)
{
	_cleanup_free_ char *blob = kiln_store_blob_path(w->l->store,
							  &e->digest);
	struct stat st;

	if (w->copy)
		return copy_blob(w, pfd, name, e);
	if (stat(blob, &st) < 0)
		return -errno;
	if (blob_meta_matches(&st, e)) {
		if (linkat(AT_FDCWD, blob, pfd, name, 0) == 0)
			return 0;
		if (errno != EMLINK && errno != EXDEV)
			return -errno;
	}
	return copy_blob(w, pfd, name, e);
}

static int add_dirfix(struct layer_writer *w, const char *path,
		      const struct kiln_tree_entry *e)
{
	struct dirfix *f;

	w->dirs = xgrow(w->dirs, &w->alloc_dirs, w->n_dirs + 1,
			sizeof(*w->dirs));
	f = &w->dirs[w->n_dirs++];
	f->path = xstrdup(path);
	kiln_tree_entry_copy(&f->e, e);
	return 0;
}

static int put_special(int pfd, const char *name,
		       const struct kiln_tree_entry *e)
{
	dev_t dev = makedev(e->rdev_major, e->rdev_minor);

	switch (e->type) {
	case KILN_ENTRY_SYMLINK:
		return symlinkat(e->target ? e->target : "", pfd, name) < 0
			       ? -errno : 0;
	case KILN_ENTRY_CHAR:
		return mknodat(pfd, name, S_IFCHR | 0600, dev) < 0 ? -errno : 0;
	case KILN_ENTRY_BLOCK:
		return mknodat(pfd, name, S_IFBLK | 0600, dev) < 0 ? -errno : 0;
	case KILN_ENTRY_FIFO:
		return mkfifoat(pfd, name, 0600) < 0 ? -errno : 0;
	default:
		return -EINVAL;
	}
}

/* Create e as pfd/name; directories get their metadata at the end. */
static int put_entry(struct layer_writer *w, int pfd, const char *path,
		     const char *name, const struct kiln_tree_entry *e,
		     bool opaque)
{
	int r;

	if (e->type == KILN_ENTRY_DIR) {
		if (mkdirat(pfd, name, 0700) < 0)
			return -errno;
		if (opaque) {
			_cleanup_close_ int fd = openat(
				pfd, name,
				O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (fd < 0 || fsetxattr(fd, OPAQUE_XATTR, "y", 1, 0) < 0)
				return -errno;
		}
		return add_dirfix(w, path, e);
	}
	/* A hardlink of a file this layer already holds. */
	if (e->type == KILN_ENTRY_FILE && e->link)
		return kiln_link_beneath(w->fsfd, e->link, pfd, name);
	r = e->type == KILN_ENTRY_FILE ? put_file(w, pfd, name, e)
				       : put_special(pfd, name, e);
	if (r < 0)
		return r;
	/* A hardlinked blob already carries the right metadata. */
	if (e->type == KILN_ENTRY_FILE)
		return 0;
	return set_meta_at(pfd, name, e);
}

static int open_beneath(int fd, const char *path)
{
	return kiln_openat2(fd, path, O_PATH | O_DIRECTORY, 0,
			    KILN_RESOLVE_BENEATH | KILN_RESOLVE_NO_SYMLINKS |
				    KILN_RESOLVE_NO_XDEV);
}

/*
 * Make sure dir exists in the layer. Missing parents (only in diff layers)
 * are created with the new tree's metadata, because in a merged overlay
 * directory the top layer's attributes win.
 */
static int ensure_dir(struct layer_writer *w, const char *dir)
{
	_cleanup_free_ char *parent = NULL;
	struct kiln_tree_entry e;
	const char *name;
	int fd, r;

	fd = open_beneath(w->fsfd, dir);
	if (fd >= 0 || fd != -ENOENT)
		return fd;
	split_path(dir, &parent, &name);
	r = ensure_dir(w, parent);
	if (r < 0)
		return r;
	fd = r;
	r = kiln_tree_lookup(w->l->store, w->root, dir, &e, w->err);
	if (r == 0) {
		r = put_entry(w, fd, dir, name, &e, false);
		kiln_tree_entry_release(&e);
	}
	close(fd);
	if (r < 0)
		return r;
	return open_beneath(w->fsfd, dir);
}

static int parent_fd(struct layer_writer *w, const char *path,
		     const char **name)
{
	_cleanup_free_ char *parent = NULL;
	int fd;

	split_path(path, &parent, name);
	if (w->pdir && !strcmp(w->pdir, parent))
		return w->pfd;
	fd = ensure_dir(w, parent);
	if (fd < 0)
		return fd;
	if (w->pfd >= 0)
		close(w->pfd);
	free(w->pdir);
	w->pdir = TAKE_PTR(parent);
	w->pfd = fd;
	return fd;
}

static int walk_cb(const char *path, const struct kiln_tree_entry *e,
		   void *ud)
{
	struct layer_writer *w = ud;
	const char *name;
	int pfd, r;

	pfd = parent_fd(w, path, &name);
	if (pfd < 0)
		return kiln_error_seterrno(w->err, pfd, "materializing %s", path);
	r = put_entry(w, pfd, path, name, e, false);
	if (r < 0)
		return kiln_error_seterrno(w->err, r, "materializing %s", path);
	return 0;
}

/* Remove a whiteout this layer holds at pfd/name; true if there was one. */
static bool drop_whiteout(int pfd, const char *name)
{
	struct stat st;

	if (fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return false;
	return unlinkat(pfd, name, 0) == 0;
}

static int diff_cb(enum kiln_diff_kind kind, const char *path,
		   const struct kiln_tree_entry *old_e,
		   const struct kiln_tree_entry *new_e, void *ud)
{
	struct layer_writer *w = ud;
	const char *name;
	bool replaced;
	int pfd, r;

	pfd = parent_fd(w, path, &name);
	if (pfd < 0)
		return kiln_error_seterrno(w->err, pfd, "writing layer: %s",
					   path);
	if (kind == KILN_DIFF_DELETE) {
		r = mknodat(pfd, name, S_IFCHR | 0000, makedev(0, 0)) < 0
			    ? -errno : 0;
	} else {
		/* DELETE then ADD of one path: the whiteout is replaced. */
		replaced = drop_whiteout(pfd, name);
		r = put_entry(w, pfd, path, name, new_e, replaced);
	}
	if (r < 0)
		return kiln_error_seterrno(w->err, r, "writing layer: %s", path);
	return 0;
}

static int apply_dirfixes(struct layer_writer *w)
{
	size_t i = w->n_dirs;

	while (i-- > 0) {
		struct dirfix *f = &w->dirs[i];
		_cleanup_close_ int fd = -1;
		struct timespec ts[2];
		int r;

		fd = kiln_openat2(w->fsfd, f->path, O_RDONLY | O_DIRECTORY, 0,
				  KILN_RESOLVE_BENEATH |
					  KILN_RESOLVE_NO_SYMLINKS);
		if (fd < 0)
			return fd;
		if (fchown(fd, f->e.uid, f->e.gid) < 0 ||
		    fchmod(fd, f->e.mode & 07777) < 0)
			return -errno;
		r = set_xattrs_fd(fd, &f->e);
		if (r < 0)
			return r;
		entry_times(&f->e, ts);
		if (futimens(fd, ts) < 0)
			return -errno;
	}
	return 0;
}

static int write_meta(int fd, const char *name, const struct kiln_digest *d)
{
	char buf[KILN_DIGEST_STRLEN + 1] = "";

	if (d && !is_empty_tree(d))
		snprintf(buf, sizeof(buf), "%s\n", KILN_DIGEST_STR(d));
	return kiln_write_file_atomic_at(fd, name, buf, strlen(buf), 0644,
					 false);
}

/* Move tmp/<tmpname> into place as the layer of root. */
static int publish(struct kiln_layers *l, const char *tmpname,
		   const struct kiln_digest *root, bool replace)
{
	_cleanup_free_ char *src = xasprintf("tmp/%s", tmpname);
	char id[LAYER_ID_LEN + 1];

	layer_id(root, id);
	if (replace &&
	    renameat2(l->dirfd, src, l->dirfd, id, RENAME_EXCHANGE) == 0)
		return kiln_rm_rf_at(l->dirfd, src); /* the old one */
	if (renameat(l->dirfd, src, l->dirfd, id) == 0)
		return 0;
	if (errno != EEXIST && errno != ENOTEMPTY)
		return -errno;
	/* Another thread won the race; its layer is as good as ours. */
	kiln_rm_rf_at(l->dirfd, src);
	return 0;
}

/*
 * Write root's layer: a diff from parent (when set) or a full layer, then
 * rename it into place. replace swaps out an existing layer (squash).
 */
static int write_layer(struct kiln_layers *l, const struct kiln_digest *root,
		       const struct kiln_digest *parent, bool replace,
		       struct kiln_error **err)
{
	_cleanup_free_ char *tmpname = kiln_random_hex(8);
	_cleanup_free_ char *fs = xasprintf("tmp/%s/fs", tmpname);
	_cleanup_close_ int tfd = -1;
	struct layer_writer w = { .l = l, .root = root, .pfd = -1,
				  .fsfd = -1, .err = err };
	int r;

	r = kiln_mkdirat_p_beneath(l->dirfd, fs, 0755);
	if (r < 0) {
		kiln_error_seterrno(err, r, "creating %s/%s", l->dir, fs);
		goto out;
	}
	w.fsfd = r;
	if (fchown(w.fsfd, 0, 0) < 0 || fchmod(w.fsfd, 0755) < 0) {
		r = kiln_error_seterrno(err, -errno, "chown %s/%s", l->dir, fs);
		goto out;
	}
	if (parent)
		r = kiln_tree_diff(l->store, parent, root, diff_cb, &w, err);
	else
		r = kiln_tree_walk(l->store, root, walk_cb, &w, err);
	if (r == 0 && (r = apply_dirfixes(&w)) < 0)
		kiln_error_seterrno(err, r, "setting directory metadata in %s",
				    l->dir);
	if (r < 0)
		goto out;
	{
		_cleanup_free_ char *top = xasprintf("tmp/%s", tmpname);

		tfd = openat(l->dirfd, top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	}
	r = tfd < 0 ? -errno : write_meta(tfd, "tree", root);
	if (r == 0)
		r = write_meta(tfd, "parent", parent);
	if (r == 0)
		r = publish(l, tmpname, root, replace);
	if (r < 0)
		kiln_error_seterrno(err, r, "publishing layer of %s in %s",
				    KILN_DIGEST_STR(root), l->dir);
out:
	writer_release(&w);
	if (r < 0) {
		_cleanup_free_ char *junk = xasprintf("tmp/%s", tmpname);
		kiln_rm_rf_at(l->dirfd, junk);
	}
	return r;
}

static int materialize_new(struct kiln_layers *l,
			   const struct kiln_digest *root,
			   const struct kiln_digest *hint,
			   struct kiln_error **err)
{
	struct kiln_chain hc = { 0 };
	bool diff = false;
	int r;

	if (hint && !is_empty_tree(hint) && kiln_layers_has(l, hint) &&
	    chain_build(l, hint, &hc, NULL) == 0) {
		diff = chain_fits(l, &hc, 1);
		kiln_chain_release(&hc);
	}
	log_debug("layers: writing %s layer of %s", diff ? "diff" : "full",
		  KILN_DIGEST_STR(root));
	r = write_layer(l, root, diff ? hint : NULL, false, err);
	return r;
}

int kiln_layers_materialize(struct kiln_layers *l,
			    const struct kiln_digest *root,
			    const struct kiln_digest *hint,
			    struct kiln_chain *out, struct kiln_error **err)
{
	int r;

	out->dirs = NULL;
	out->n = 0;
	if (is_empty_tree(root))
		return 0;
	if (!kiln_layers_has(l, root)) {
		r = materialize_new(l, root, hint, err);
		if (r < 0)
			return r;
	}
	r = chain_build(l, root, out, err);
	if (r < 0 || chain_fits(l, out, 0))
		return r;
	/* Too deep for one mount: squash into a full layer. */
	kiln_chain_release(out);
	log_debug("layers: squashing %s", KILN_DIGEST_STR(root));
	r = write_layer(l, root, NULL, true, err);
	if (r < 0)
		return r;
	return chain_build(l, root, out, err);
}

int kiln_layers_checkout(struct kiln_layers *l, const struct kiln_digest *root,
			 int dirfd, struct kiln_error **err)
{
	struct layer_writer w = { .l = l, .root = root, .pfd = -1, .fsfd = -1,
				  .copy = true, .err = err };
	int r;

	if (is_empty_tree(root))
		return 0;
	w.fsfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
	if (w.fsfd < 0)
		return kiln_error_seterrno(err, -errno, "checking out %s",
					   KILN_DIGEST_STR(root));
	r = kiln_tree_walk(l->store, root, walk_cb, &w, err);
	if (r == 0 && (r = apply_dirfixes(&w)) < 0)
		kiln_error_seterrno(err, r, "setting directory metadata of %s",
				    KILN_DIGEST_STR(root));
	writer_release(&w);
	return r;
}

int kiln_layers_mkscratch(struct kiln_layers *l, char **path,
			  struct kiln_error **err)
{
	_cleanup_free_ char *name = kiln_random_hex(8);
	_cleanup_free_ char *rel = xasprintf("tmp/%s", name);

	if (mkdirat(l->dirfd, rel, 0755) < 0)
		return kiln_error_seterrno(err, -errno, "creating %s/%s",
					   l->dir, rel);
	*path = xasprintf("%s/%s", l->dir, rel);
	return 0;
}

int kiln_layers_adopt(struct kiln_layers *l, const struct kiln_digest *root,
		      const struct kiln_digest *parent, const char *dir,
		      struct kiln_error **err)
{
	_cleanup_free_ char *tmpname = kiln_random_hex(8);
	_cleanup_free_ char *fs = xasprintf("tmp/%s/fs", tmpname);
	_cleanup_free_ char *top = xasprintf("tmp/%s", tmpname);
	_cleanup_close_ int dfd = -1;
	int r;

	if (is_empty_tree(root) || kiln_layers_has(l, root))
		return kiln_rm_rf(dir);
	if (parent && !kiln_layers_has(l, parent))
		return kiln_error_set(err, -ENOENT,
				      "cannot adopt a layer of %s: parent %s has no layer",
				      KILN_DIGEST_STR(root),
				      KILN_DIGEST_STR(parent));
	if (mkdirat(l->dirfd, top, 0755) < 0)
		return kiln_error_seterrno(err, -errno, "creating %s/%s",
					   l->dir, top);
	dfd = openat(l->dirfd, top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	r = dfd < 0 ? -errno : 0;
	if (r == 0 && renameat(AT_FDCWD, dir, l->dirfd, fs) < 0)
		r = -errno;
	if (r == 0)
		r = write_meta(dfd, "tree", root);
	if (r == 0)
		r = write_meta(dfd, "parent", parent);
	if (r == 0)
		r = publish(l, tmpname, root, false);
	if (r < 0) {
		kiln_rm_rf_at(l->dirfd, top);
		return kiln_error_seterrno(err, r, "adopting %s as layer of %s",
					   dir, KILN_DIGEST_STR(root));
	}
	return 0;
}

int kiln_layers_memo_get(struct kiln_layers *l, const struct kiln_digest *key,
			 struct kiln_digest *tree)
{
	char hex[KILN_DIGEST_HEXLEN];
	_cleanup_free_ char *path = NULL, *text = NULL;
	size_t len;
	int r;

	path = xasprintf("memo/%s", kiln_digest_hex(key, hex));
	r = kiln_read_file_at(l->dirfd, path, 128, &text, &len);
	if (r < 0)
		return r;
	if (kiln_digest_parse(text, tree) < 0)
		return -EINVAL;
	return kiln_layers_has(l, tree) ? 0 : -ENOENT;
}

int kiln_layers_memo_put(struct kiln_layers *l, const struct kiln_digest *key,
			 const struct kiln_digest *tree)
{
	char hex[KILN_DIGEST_HEXLEN], text[KILN_DIGEST_STRLEN];
	_cleanup_free_ char *path = NULL;

	if (mkdirat(l->dirfd, "memo", 0700) < 0 && errno != EEXIST)
		return -errno;
	path = xasprintf("memo/%s", kiln_digest_hex(key, hex));
	kiln_digest_fmt(tree, text);
	/* A lost memo costs one extraction: no fsync needed. */
	return kiln_write_file_atomic_at(l->dirfd, path, text, strlen(text), 0600, false);
}

static bool is_layer_name(const char *name)
{
	size_t i;

	for (i = 0; name[i]; i++)
		if (!strchr("0123456789abcdef", name[i]))
			return false;
	return i == LAYER_ID_LEN;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sum of st_blocks below dirfd/name; files shared with the CAS are skipped. */
static uint64_t du_at(int at, const char *name)
{
	struct dirent *de;
	struct stat st;
	uint64_t sum;
	DIR *d;

	if (fstatat(at, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return 0;
	if (!S_ISDIR(st.st_mode))
		return st.st_nlink > 1 ? 0 : (uint64_t)st.st_blocks * 512;
	sum = (uint64_t)st.st_blocks * 512;
	if (kiln_opendir_at(at, name, O_NOFOLLOW, &d) < 0)
		return sum;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			sum += du_at(dirfd(d), de->d_name);
	closedir(d);
	return sum;
}

/* Sorted ids of every layer in the chains of keep. */
static int needed_ids(struct kiln_layers *l, const struct kiln_digest *keep,
		      size_t n_keep, char ***ids, size_t *n,
		      struct kiln_error **err)
{
	size_t alloc = 0, i, j;

	*ids = NULL;
	*n = 0;
	for (i = 0; i < n_keep; i++) {
		struct kiln_chain c;

		if (!kiln_layers_has(l, &keep[i]) ||
		    chain_build(l, &keep[i], &c, NULL) < 0)
			continue;
		for (j = 0; j < c.n; j++) {
			/* ".../<id>/fs" */
			size_t len = strlen(c.dirs[j]);

			*ids = xgrow(*ids, &alloc, *n + 1, sizeof(**ids));
			(*ids)[(*n)++] = xstrndup(c.dirs[j] + len - 3 -
							  LAYER_ID_LEN,
						  LAYER_ID_LEN);
		}
		kiln_chain_release(&c);
	}
	if (*n > 1)
		qsort(*ids, *n, sizeof(**ids), cmp_str);
	(void)err;
	return 0;
}

/* Move a layer out of the way first so a crash never leaves half of one. */
static int remove_layer(struct kiln_layers *l, const char *id, uint64_t *freed)
{
	_cleanup_free_ char *rnd = kiln_random_hex(8);
	_cleanup_free_ char *junk = xasprintf("tmp/%s", rnd);

	if (freed)
		*freed += du_at(l->dirfd, id);
	if (renameat(l->dirfd, id, l->dirfd, junk) < 0)
		return -errno;
	return kiln_rm_rf_at(l->dirfd, junk);
}

/* Drop memo entries whose tree lost its layer (they could only miss). */
static void prune_memo(struct kiln_layers *l)
{
	struct dirent *de;
	DIR *d;

	if (kiln_opendir_at(l->dirfd, "memo", O_NOFOLLOW, &d) < 0)
		return;
	while ((de = readdir(d))) {
		struct kiln_digest key, tree;
		_cleanup_free_ char *name = xasprintf("sha256:%s", de->d_name);

		if (de->d_name[0] == '.' || kiln_digest_parse(name, &key) < 0)
			continue;
		if (kiln_layers_memo_get(l, &key, &tree) < 0)
			(void)unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
}

int kiln_layers_prune(struct kiln_layers *l, const struct kiln_digest *keep,
		      size_t n_keep, uint64_t *freed, struct kiln_error **err)
{
	char **ids = NULL;
	struct dirent *de;
	size_t n = 0;
	DIR *d;
	int r = 0;

	if (freed)
		*freed = 0;
	needed_ids(l, keep, n_keep, &ids, &n, err);
	r = kiln_opendir_at(l->dirfd, ".", 0, &d);
	if (r < 0) {
		r = kiln_error_seterrno(err, r, "reading %s", l->dir);
		goto out;
	}
	while ((de = readdir(d))) {
		const char *name = de->d_name;
		int q;

		if (!is_layer_name(name) ||
		    (n && bsearch(&name, ids, n, sizeof(*ids), cmp_str)))
			continue;
		q = remove_layer(l, name, freed);
		if (q < 0 && r == 0)
			r = kiln_error_seterrno(err, q, "removing layer %s/%s",
						l->dir, name);
	}
	closedir(d);
	prune_memo(l);
out:
	kiln_strv_free(ids, n);
	return r;
}

int kiln_layers_usage(struct kiln_layers *l, uint64_t *bytes, size_t *count)
{
	struct dirent *de;
	DIR *d;
	int r;

	*bytes = 0;
	*count = 0;
	r = kiln_opendir_at(l->dirfd, ".", 0, &d);
	if (r < 0)
		return r;
	while ((de = readdir(d))) {
		if (!is_layer_name(de->d_name))
			continue;
		*bytes += du_at(l->dirfd, de->d_name);
		(*count)++;
	}
	closedir(d);
	return 0;
}
