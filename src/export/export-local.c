/*
 * type=local: materialize a tree into a directory.
 *
 * Every entry is created relative to an fd of its parent directory, and
 * every directory fd is opened with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS,
 * so a symlink already at the destination is replaced, never followed.
 * Non-directories are created under a temporary name and renamed over the
 * old entry. Directories get their mode, owner and mtime after their
 * contents, so the mtimes stick.
 */
#include "export/export.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "cas/tree.h"

#define BENEATH (KILN_RESOLVE_BENEATH | KILN_RESOLVE_NO_SYMLINKS)

/* An open directory of the walk: the ancestors of the current entry. */
struct open_dir {
	char *path; /* relative to dest; "" for dest itself */
	int fd;
	struct kiln_tree_entry meta; /* to apply when the directory is done */
	bool has_meta;
};

struct local_ctx {
	struct kiln_store *store;
	const char *dest;
	bool root;
	struct open_dir *stack;
	size_t n, alloc;
	struct kiln_error **err;
};

static void apply_xattrs(int fd, const struct kiln_tree_entry *e)
{
	size_t i;

	/* Best effort: the destination file system may not support them. */
	for (i = 0; i < e->n_xattrs; i++)
		if (fsetxattr(fd, e->xattrs[i].name, e->xattrs[i].value,
			      e->xattrs[i].len, 0) < 0)
			log_debug("export: %s: xattr %s: %m", e->name,
				  e->xattrs[i].name);
}

static struct timespec entry_mtime(const struct kiln_tree_entry *e)
{
	return (struct timespec){ .tv_sec = e->mtime_sec,
				  .tv_nsec = e->mtime_nsec };
}

/* Owner, mode, xattrs, mtime of an open file or directory. */
static int apply_meta_fd(struct local_ctx *c, int fd,
			 const struct kiln_tree_entry *e)
{
	struct timespec ts[2];

	/* chown first: it clears setuid/setgid bits. */
	if (c->root && fchown(fd, e->uid, e->gid) < 0)
		return -errno;
	if (fchmod(fd, e->mode & 07777) < 0)
		return -errno;
	apply_xattrs(fd, e);
	ts[0] = ts[1] = entry_mtime(e);
	if (futimens(fd, ts) < 0)
		return -errno;
	return 0;
}

/* Same for a symlink, fifo or device, by name (never followed). */
static int apply_meta_at(struct local_ctx *c, int dirfd, const char *name,
			 const struct kiln_tree_entry *e)
{
	struct timespec ts[2];

	if (c->root &&
	    fchownat(dirfd, name, e->uid, e->gid, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (e->type != KILN_ENTRY_SYMLINK &&
	    fchmodat(dirfd, name, e->mode & 07777, 0) < 0)
		return -errno;
	ts[0] = ts[1] = entry_mtime(e);
	if (utimensat(dirfd, name, ts, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	return 0;
}

static char *tmp_name(void)
{
	_cleanup_free_ char *hex = kiln_random_hex(8);

	return xasprintf(".kiln-export-%s", hex);
}

/* Move tmp over name; a directory in the way is removed first. */
static int replace_entry(int dirfd, const char *tmp, const char *name)
{
	int r;

	if (renameat(dirfd, tmp, dirfd, name) == 0)
		return 0;
	if (errno != EISDIR && errno != ENOTEMPTY && errno != EEXIST)
		return -errno;
	r = kiln_rm_rf_at(dirfd, name);
	if (r < 0)
		return r;
	return renameat(dirfd, tmp, dirfd, name) < 0 ? -errno : 0;
}

static int write_file(struct local_ctx *c, int dirfd, const char *tmp,
		      const struct kiln_tree_entry *e)
{
	_cleanup_close_ int in = -1, out = -1;
	struct stat st;
	int r;

	in = kiln_store_open_blob(c->store, &e->digest);
	if (in < 0)
		return in;
	if (fstat(in, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_size != e->size)
		return -EBADMSG;
	out = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
				      O_CLOEXEC, 0600);
	if (out < 0)
		return -errno;
	r = kiln_copy_fd(in, out);
	if (r < 0)
		return r;
	return apply_meta_fd(c, out, e);
}

static int make_special(struct local_ctx *c, int dirfd, const char *tmp,
			const struct kiln_tree_entry *e)
{
	mode_t mode = e->mode & 07777;
	dev_t dev = makedev(e->rdev_major, e->rdev_minor);

	switch (e->type) {
	case KILN_ENTRY_SYMLINK:
		if (symlinkat(e->target, dirfd, tmp) < 0)
			return -errno;
		break;
	case KILN_ENTRY_FIFO:
		if (mknodat(dirfd, tmp, S_IFIFO | mode, 0) < 0)
			return -errno;
		break;
	case KILN_ENTRY_CHAR:
		if (mknodat(dirfd, tmp, S_IFCHR | mode, dev) < 0)
			return -errno;
		break;
	case KILN_ENTRY_BLOCK:
		if (mknodat(dirfd, tmp, S_IFBLK | mode, dev) < 0)
			return -errno;
		break;
	default:
		return -EINVAL;
	}
	return apply_meta_at(c, dirfd, tmp, e);
}

/* Any non-directory: build under a temp name, then rename into place. */
static int export_leaf(struct local_ctx *c, int dirfd,
		       const struct kiln_tree_entry *e)
{
	_cleanup_free_ char *tmp = tmp_name();
	int r;

	if (e->type == KILN_ENTRY_FILE && e->link)
		r = kiln_link_beneath(c->stack[0].fd, e->link, dirfd, tmp);
	else if (e->type == KILN_ENTRY_FILE)
		r = write_file(c, dirfd, tmp, e);
	else
		r = make_special(c, dirfd, tmp, e);
	if (r >= 0)
		r = replace_entry(dirfd, tmp, e->name);
	if (r < 0)
		unlinkat(dirfd, tmp, 0);
	return r;
}

/* Open (creating) the directory name in dirfd; anything else there goes. */
static int open_subdir(int dirfd, const char *name)
{
	struct stat st;
	int r;

	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	    !S_ISDIR(st.st_mode)) {
		/* A symlink (or file) in the way is replaced, never followed. */
		if (unlinkat(dirfd, name, 0) < 0)
			return -errno;
	}
	if (mkdirat(dirfd, name, 0700) < 0 && errno != EEXIST)
		return -errno;
	r = kiln_openat2(dirfd, name, O_RDONLY | O_DIRECTORY, 0, BENEATH);
	/* A read-only directory from an earlier export must take new entries. */
	if (r >= 0 && geteuid() != 0)
		(void)fchmod(r, 0700);
	return r;
}

static void push_dir(struct local_ctx *c, const char *path, int fd,
		     const struct kiln_tree_entry *e)
{
	struct open_dir *d;

	c->stack = xgrow(c->stack, &c->alloc, c->n + 1, sizeof(*c->stack));
	d = &c->stack[c->n++];
	memset(d, 0, sizeof(*d));
	d->path = xstrdup(path);
	d->fd = fd;
	if (e) {
		kiln_tree_entry_copy(&d->meta, e);
		d->has_meta = true;
	}
}

/* Close the top directory; apply its metadata when finish is set. */
static int pop_dir(struct local_ctx *c, bool finish)
{
	struct open_dir *d = &c->stack[--c->n];
	int r = 0;

	if (finish && d->has_meta) {
		r = apply_meta_fd(c, d->fd, &d->meta);
		if (r < 0)
			kiln_error_seterrno(c->err, r, "cannot set metadata of %s/%s",
					    c->dest, d->path);
	}
	if (d->has_meta)
		kiln_tree_entry_release(&d->meta);
	close(d->fd);
	free(d->path);
	return r;
}

static bool is_parent(const char *dir, const char *path)
{
	const char *slash = strrchr(path, '/');
	size_t len = slash ? (size_t)(slash - path) : 0;

	return strlen(dir) == len && !strncmp(dir, path, len);
}

static int local_visit(const char *path, const struct kiln_tree_entry *e,
		       void *ud)
{
	struct local_ctx *c = ud;
	int dirfd, r;

	/* Pre-order walk: directories no longer on the path are complete. */
	while (c->n > 1 && !is_parent(c->stack[c->n - 1].path, path)) {
		r = pop_dir(c, true);
		if (r < 0)
			return r;
	}
	if (!is_parent(c->stack[c->n - 1].path, path))
		return kiln_error_set(c->err, -EINVAL,
				      "tree walk out of order at %s", path);
	dirfd = c->stack[c->n - 1].fd;
	if (e->type == KILN_ENTRY_DIR) {
		r = open_subdir(dirfd, e->name);
		if (r < 0)
			return kiln_error_seterrno(c->err, r, "cannot create %s/%s",
						   c->dest, path);
		push_dir(c, path, r, e);
		return 0;
	}
	if ((e->type == KILN_ENTRY_CHAR || e->type == KILN_ENTRY_BLOCK) &&
	    !c->root) {
		log_debug("export: skipping device %s (not root)", path);
		return 0;
	}
	r = export_leaf(c, dirfd, e);
	if (r < 0 && e->type == KILN_ENTRY_FILE)
		return kiln_error_seterrno(c->err, r, "cannot write %s/%s (blob %s)",
					   c->dest, path, KILN_DIGEST_STR(&e->digest));
	if (r < 0)
		return kiln_error_seterrno(c->err, r, "cannot write %s/%s",
					   c->dest, path);
	return 0;
}

static int open_dest(const char *dest, struct kiln_error **err)
{
	int r, fd;

	r = kiln_mkdir_p(dest, 0755);
	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot create %s", dest);
	fd = open(dest, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "cannot open %s", dest);
	return fd;
}

int kiln_export_local(struct kiln_store *s, const struct kiln_digest *tree,
		      const char *dest, struct kiln_error **err)
{
	struct local_ctx c = {
		.store = s, .dest = dest, .root = geteuid() == 0, .err = err,
	};
	int fd, r;

	fd = open_dest(dest, err);
	if (fd < 0)
		return fd;
	push_dir(&c, "", fd, NULL);
	r = kiln_tree_walk(s, tree, local_visit, &c, err);
	if (r > 0)
		r = -EIO;
	while (c.n > 0) {
		int q = pop_dir(&c, r == 0);

		if (q < 0 && r == 0)
			r = q;
	}
	free(c.stack);
	return r;
}
