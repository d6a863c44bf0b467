/*
 * Safe extraction of an OCI layer tar into an overlay-format directory.
 *
 * Two libarchive readers are chained: "raw" undoes the compression (gzip,
 * zstd or none) and its output is hashed (the diff_id) before it feeds
 * "tar", which parses entries. Every entry is written relative to a parent
 * fd obtained without following symlinks (kiln_mkdirat_p_beneath), and each
 * final component is created with O_EXCL/O_NOFOLLOW or *at() calls that do
 * not follow it, so nothing in the archive can make us write outside dirfd.
 */
#include "source/image.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <search.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"

#define MAX_PATH_BYTES 4096
#define MAX_ENTRIES 1000000
#define WHITEOUT_PREFIX ".wh."
#define WHITEOUT_META_PREFIX ".wh..wh."
#define WHITEOUT_OPAQUE ".wh..wh..opq"
#define OVERLAY_XATTR_PREFIX "trusted.overlay."
#define OPAQUE_XATTR "trusted.overlay.opaque"

/* A directory of the layer whose mtime is set once every entry is in. */
struct dir_rec {
	char *path;
	bool implied; /* only created as a parent; no entry of its own */
	struct timespec ts[2];
};

struct extract {
	int dirfd;
	struct archive *raw; /* decompression only */
	struct archive *tar; /* reads what raw produces */
	struct kiln_hasher *hasher;
	const struct kiln_layer_extract_opts *opts;
	struct dir_rec **dirs;
	size_t n_dirs, alloc_dirs;
	void *dir_index; /* tsearch root over dirs, by path */
	uint64_t n_entries;
	char buf[65536];
};

/* One tar entry being written. */
struct tar_entry {
	struct archive_entry *ae;
	const char *name;  /* as in the archive, for messages */
	const char *clean; /* relative, no "." / ".." / empty components */
	const char *base;  /* last component of clean */
	int pfd;           /* parent directory */
};

static la_ssize_t tar_read(struct archive *a, void *ud, const void **buf)
{
	struct extract *x = ud;
	la_ssize_t n = archive_read_data(x->raw, x->buf, sizeof(x->buf));

	if (n < 0) {
		archive_set_error(a, EIO, "decompressing: %s",
				  archive_error_string(x->raw));
		return -1;
	}
	if (n > 0 && x->hasher)
		kiln_hasher_update(x->hasher, x->buf, (size_t)n);
	*buf = x->buf;
	return n;
}

static int open_readers(struct extract *x, int fd, struct kiln_error **err)
{
	struct archive_entry *ae;

	x->raw = archive_read_new();
	x->tar = archive_read_new();
	archive_read_support_filter_gzip(x->raw);
	archive_read_support_filter_zstd(x->raw);
	if (x->opts && x->opts->archive) {
		/* ADD also unpacks bzip2 and xz archives (docs/definition.md). */
		archive_read_support_filter_bzip2(x->raw);
		archive_read_support_filter_xz(x->raw);
	}
	archive_read_support_filter_none(x->raw);
	archive_read_support_format_raw(x->raw);
	/* tar covers ustar, pax and GNU tar; nothing else is accepted. */
	archive_read_support_format_tar(x->tar);
	if (archive_read_open_fd(x->raw, fd, sizeof(x->buf)) != ARCHIVE_OK ||
	    archive_read_next_header(x->raw, &ae) != ARCHIVE_OK)
		return kiln_error_set(err, -EINVAL, "reading layer stream: %s",
				      archive_error_string(x->raw));
	if (archive_read_open(x->tar, x, NULL, tar_read, NULL) != ARCHIVE_OK)
		return kiln_error_set(err, -EINVAL, "reading layer tar: %s",
				      archive_error_string(x->tar));
	return 0;
}

/* Feed what follows the end-of-archive blocks to the hasher too. */
static int drain(struct extract *x, struct kiln_error **err)
{
	la_ssize_t n;

	while ((n = archive_read_data(x->raw, x->buf, sizeof(x->buf))) > 0) {
		if (x->hasher)
			kiln_hasher_update(x->hasher, x->buf, (size_t)n);
	}
	if (n < 0)
		return kiln_error_set(err, -EIO, "decompressing layer: %s",
				      archive_error_string(x->raw));
	return 0;
}

/* ---- directory records ---- */

static int dir_rec_cmp(const void *a, const void *b)
{
	return strcmp(((const struct dir_rec *)a)->path,
		      ((const struct dir_rec *)b)->path);
}

static struct dir_rec *dir_find(struct extract *x, const char *path)
{
	struct dir_rec key = { .path = (char *)path };
	void *n = tfind(&key, &x->dir_index, dir_rec_cmp);

	return n ? *(struct dir_rec **)n : NULL;
}

static struct dir_rec *dir_add(struct extract *x, const char *path, bool implied)
{
	struct dir_rec *d = xcalloc(1, sizeof(*d));

	d->path = xstrdup(path);
	d->implied = implied;
	x->dirs = xgrow(x->dirs, &x->alloc_dirs, x->n_dirs + 1, sizeof(*x->dirs));
	x->dirs[x->n_dirs++] = d;
	if (!tsearch(d, &x->dir_index, dir_rec_cmp))
		abort(); /* out of memory */
	return d;
}

/* Remember path and its ancestors as implied unless already known. */
static void note_parents(struct extract *x, const char *parent)
{
	_cleanup_free_ char *p = xstrdup(parent);
	char *slash;

	while (*p && !dir_find(x, p)) {
		dir_add(x, p, true);
		slash = strrchr(p, '/');
		if (!slash)
			break;
		*slash = '\0';
	}
}

static void note_dir(struct extract *x, const char *path,
		     const struct timespec ts[2])
{
	struct dir_rec *d = dir_find(x, path);

	if (!d)
		d = dir_add(x, path, false);
	d->implied = false;
	d->ts[0] = ts[0];
	d->ts[1] = ts[1];
}

static int finish_dir(struct extract *x, struct dir_rec *d,
		      struct kiln_error **err)
{
	_cleanup_close_ int fd = -1;

	fd = kiln_openat2(x->dirfd, d->path, O_RDONLY | O_DIRECTORY, 0,
			  KILN_RESOLVE_BENEATH | KILN_RESOLVE_NO_SYMLINKS);
	if (fd == -ENOENT || fd == -ENOTDIR)
		return 0; /* replaced by a later entry */
	if (fd < 0)
		return kiln_error_seterrno(err, fd, "layer directory '%s'",
					   d->path);
	if (futimens(fd, d->ts) < 0)
		return kiln_error_seterrno(err, -errno,
					   "layer directory '%s': setting mtime",
					   d->path);
	if (d->implied && x->opts && x->opts->implied_dir)
		return x->opts->implied_dir(x->opts->ud, d->path, fd, err);
	return 0;
}

static int finish_dirs(struct extract *x, struct kiln_error **err)
{
	size_t i;
	int r;

	for (i = 0; i < x->n_dirs; i++) {
		r = finish_dir(x, x->dirs[i], err);
		if (r < 0)
			return r;
	}
	return 0;
}

static void free_dir_rec(void *p)
{
	struct dir_rec *d = p;

	free(d->path);
	free(d);
}

static void extract_release(struct extract *x)
{
	if (x->raw)
		archive_read_free(x->raw);
	if (x->tar)
		archive_read_free(x->tar);
	kiln_hasher_free(x->hasher);
	/* tdestroy frees each record once; the array only borrows them. */
	tdestroy(x->dir_index, free_dir_rec);
	free(x->dirs);
}

/* ---- paths ---- */

/*
 * Strip leading "/" and "./", refuse "..", and clean the rest. *out is ""
 * for the root itself.
 */
static int clean_path(const char *entry, const char *name, char **out,
		      struct kiln_error **err)
{
	const char *what = entry == name ? "path" : "hardlink target";
	const char *p = name;

	if (strlen(name) > MAX_PATH_BYTES)
		return kiln_error_set(err, -ENAMETOOLONG,
				      "layer entry '%.64s...': %s longer than %d bytes",
				      entry, what, MAX_PATH_BYTES);
	for (;;) {
		while (*p == '/')
			p++;
		if (p[0] != '.' || (p[1] != '/' && p[1] != '\0'))
			break;
		p++;
	}
	if (kiln_path_has_dotdot(p))
		return kiln_error_set(err, -EXDEV,
				      "layer entry '%s': %s '%s' contains '..'",
				      entry, what, name);
	*out = kiln_path_clean(p);
	return 0;
}

/* Split clean into parent (new string, "" for top level) and base. */
static char *split_parent(const char *clean, const char **base)
{
	const char *slash = strrchr(clean, '/');

	*base = slash ? slash + 1 : clean;
	return slash ? xstrndup(clean, (size_t)(slash - clean)) : xstrdup("");
}

static int open_parent(struct extract *x, struct tar_entry *en, const char *parent,
		       struct kiln_error **err)
{
	int fd = kiln_mkdirat_p_beneath(x->dirfd, parent, 0755);

	if (fd == -ELOOP || fd == -EXDEV)
		return kiln_error_set(err, fd,
				      "layer entry '%s': parent directory '%s' "
				      "is or passes through a symlink",
				      en->name, parent);
	if (fd < 0)
		return kiln_error_seterrno(err, fd,
					   "layer entry '%s': creating parent '%s'",
					   en->name, parent);
	if (*parent)
		note_parents(x, parent);
	return fd;
}

/* ---- metadata ---- */

static int entry_owner(struct tar_entry *en, uid_t *uid, gid_t *gid,
		       struct kiln_error **err)
{
	la_int64_t u = archive_entry_uid(en->ae), g = archive_entry_gid(en->ae);

	if (u < 0 || u >= UINT32_MAX || g < 0 || g >= UINT32_MAX)
		return kiln_error_set(err, -ERANGE,
				      "layer entry '%s': uid/gid out of range",
				      en->name);
	*uid = (uid_t)u;
	*gid = (gid_t)g;
	return 0;
}

static void entry_times(struct tar_entry *en, struct timespec ts[2])
{
	struct archive_entry *ae = en->ae;

	ts[1].tv_sec = archive_entry_mtime_is_set(ae) ? archive_entry_mtime(ae) : 0;
	ts[1].tv_nsec = archive_entry_mtime_is_set(ae) ? archive_entry_mtime_nsec(ae) : 0;
	if (ts[1].tv_nsec < 0 || ts[1].tv_nsec >= 1000000000)
		ts[1].tv_nsec = 0;
	ts[0] = ts[1];
}

/*
 * Set the entry's xattrs on fd, or by path when fd < 0 (symlinks, devices:
 * lsetxattr through /proc/self/fd of the parent, never following base).
 */
static int apply_xattrs(struct tar_entry *en, int fd, struct kiln_error **err)
{
	const char *xname;
	const void *value;
	size_t size;
	_cleanup_free_ char *path = NULL;

	if (archive_entry_xattr_reset(en->ae) == 0)
		return 0;
	if (fd < 0)
		path = xasprintf("/proc/self/fd/%d/%s", en->pfd, en->base);
	while (archive_entry_xattr_next(en->ae, &xname, &value, &size) ==
	       ARCHIVE_OK) {
		int r;

		if (!xname ||
		    !strncmp(xname, OVERLAY_XATTR_PREFIX, strlen(OVERLAY_XATTR_PREFIX)))
			continue;
		r = fd >= 0 ? fsetxattr(fd, xname, value, size, 0)
			    : lsetxattr(path, xname, value, size, 0);
		if (r < 0)
			return kiln_error_seterrno(err, -errno,
						   "layer entry '%s': setting xattr %s",
						   en->name, xname);
	}
	return 0;
}

/* Owner, mode and xattrs of an opened file or directory. */
static int apply_meta_fd(struct tar_entry *en, int fd, struct kiln_error **err)
{
	uid_t uid = 0;
	gid_t gid = 0;
	int r = entry_owner(en, &uid, &gid, err);

	if (r < 0)
		return r;
	/* chown before chmod: chown clears setuid/setgid bits. */
	if (fchown(fd, uid, gid) < 0 ||
	    fchmod(fd, archive_entry_perm(en->ae) & 07777) < 0)
		return kiln_error_seterrno(err, -errno,
					   "layer entry '%s': setting owner/mode",
					   en->name);
	return apply_xattrs(en, fd, err);
}

/* Same for an entry we cannot open (symlink, device, fifo), plus mtime. */
static int apply_meta_at(struct tar_entry *en, bool is_symlink,
			 struct kiln_error **err)
{
	struct timespec ts[2];
	uid_t uid = 0;
	gid_t gid = 0;
	int r = entry_owner(en, &uid, &gid, err);

	if (r < 0)
		return r;
	if (fchownat(en->pfd, en->base, uid, gid, AT_SYMLINK_NOFOLLOW) < 0)
		return kiln_error_seterrno(err, -errno,
					   "layer entry '%s': setting owner",
					   en->name);
	/* base was just created by us as a non-symlink: chmod cannot follow. */
	if (!is_symlink &&
	    fchmodat(en->pfd, en->base, archive_entry_perm(en->ae) & 07777, 0) < 0)
		return kiln_error_seterrno(err, -errno,
					   "layer entry '%s': setting mode",
					   en->name);
	r = apply_xattrs(en, -1, err);
	if (r < 0)
		return r;
	entry_times(en, ts);
	if (utimensat(en->pfd, en->base, ts, AT_SYMLINK_NOFOLLOW) < 0)
		return kiln_error_seterrno(err, -errno,
					   "layer entry '%s': setting mtime",
					   en->name);
	return 0;
}

/* ---- entry kinds ---- */

static bool is_whiteout_dev(const struct stat *st)
{
	return S_ISCHR(st->st_mode) && st->st_rdev == makedev(0, 0);
}

/*
 * Make room for base: a later entry replaces an earlier one of this layer.
 * An existing directory is kept when keep_dir. *was_whiteout tells whether
 * a whiteout was replaced.
 */
static int clear_previous(struct tar_entry *en, bool keep_dir, bool *is_dir,
			  bool *was_whiteout, struct kiln_error **err)
{
	struct stat st;
	int r;

	*is_dir = *was_whiteout = false;
	if (fstatat(en->pfd, en->base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno == ENOENT)
			return 0;
		return kiln_error_seterrno(err, -errno, "layer entry '%s'",
					   en->name);
	}
	if (keep_dir && S_ISDIR(st.st_mode)) {
		*is_dir = true;
		return 0;
	}
	*was_whiteout = is_whiteout_dev(&st);
	r = kiln_rm_rf_at(en->pfd, en->base);
	if (r < 0)
		return kiln_error_seterrno(err, r,
					   "layer entry '%s': replacing earlier entry",
					   en->name);
	return 0;
}

static int copy_data(struct extract *x, struct tar_entry *en, int fd,
		     struct kiln_error **err)
{
	const void *buf;
	size_t size;
	la_int64_t off;
	int r;

	while ((r = archive_read_data_block(x->tar, &buf, &size, &off)) ==
	       ARCHIVE_OK) {
		if (off < 0)
			return kiln_error_set(err, -EINVAL,
					      "layer entry '%s': bad data offset",
					      en->name);
		if (size > 0 && pwrite(fd, buf, size, off) != (ssize_t)size)
			return kiln_error_seterrno(err, errno ? -errno : -EIO,
						   "layer entry '%s': writing",
						   en->name);
	}
	if (r != ARCHIVE_EOF)
		return kiln_error_set(err, -EIO, "layer entry '%s': reading: %s",
				      en->name, archive_error_string(x->tar));
	/* Sparse files may end in a hole. */
	if (archive_entry_size_is_set(en->ae) &&
	    ftruncate(fd, archive_entry_size(en->ae)) < 0)
		return kiln_error_seterrno(err, -errno, "layer entry '%s'",
					   en->name);
	return 0;
}

static int write_file(struct extract *x, struct tar_entry *en,
		      struct kiln_error **err)
{
	_cleanup_close_ int fd = -1;
	struct timespec ts[2];
	bool is_dir, was_wh;
	int r = clear_previous(en, false, &is_dir, &was_wh, err);

	if (r < 0)
		return r;
	fd = openat(en->pfd, en->base,
		    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "layer entry '%s': creating",
					   en->name);
	r = copy_data(x, en, fd, err);
	if (r < 0)
		return r;
	r = apply_meta_fd(en, fd, err);
	if (r < 0)
		return r;
	entry_times(en, ts);
	if (futimens(fd, ts) < 0)
		return kiln_error_seterrno(err, -errno,
					   "layer entry '%s': setting mtime",
					   en->name);
	return 0;
}

static int write_dir(struct extract *x, struct tar_entry *en,
		     struct kiln_error **err)
{
	_cleanup_close_ int fd = -1;
	struct timespec ts[2];
	bool exists, was_wh;
	int r = clear_previous(en, true, &exists, &was_wh, err);

	if (r < 0)
		return r;
	if (!exists && mkdirat(en->pfd, en->base, 0700) < 0)
		return kiln_error_seterrno(err, -errno, "layer entry '%s': mkdir",
					   en->name);
	fd = kiln_openat2(en->pfd, en->base, O_RDONLY | O_DIRECTORY, 0,
			  KILN_RESOLVE_BENEATH | KILN_RESOLVE_NO_SYMLINKS);
	if (fd < 0)
		return kiln_error_seterrno(err, fd, "layer entry '%s'", en->name);
	/*
	 * A directory that replaces a whiteout of the same layer hides the
	 * directory below it, as the whiteout said.
	 */
	if (was_wh && fsetxattr(fd, OPAQUE_XATTR, "y", 1, 0) < 0)
		return kiln_error_seterrno(err, -errno,
					   "layer entry '%s': marking opaque",
					   en->name);
	r = apply_meta_fd(en, fd, err);
	if (r < 0)
		return r;
	entry_times(en, ts);
	note_dir(x, en->clean, ts);
	return 0;
}

static int write_symlink(struct tar_entry *en, struct kiln_error **err)
{
	const char *target = archive_entry_symlink(en->ae);
	bool is_dir, was_wh;
	int r;

	if (!target)
		target = archive_entry_symlink_utf8(en->ae);
	if (!target || !*target || strlen(target) > 4095)
		return kiln_error_set(err, -EINVAL,
				      "layer entry '%s': bad symlink target",
				      en->name);
	r = clear_previous(en, false, &is_dir, &was_wh, err);
	if (r < 0)
		return r;
	/* Stored as is: a symlink is never followed while extracting. */
	if (symlinkat(target, en->pfd, en->base) < 0)
		return kiln_error_seterrno(err, -errno, "layer entry '%s': symlink",
					   en->name);
	return apply_meta_at(en, true, err);
}

static int write_node(struct tar_entry *en, mode_t type, struct kiln_error **err)
{
	dev_t dev = makedev(archive_entry_rdevmajor(en->ae),
			    archive_entry_rdevminor(en->ae));
	bool is_dir, was_wh;
	int r = clear_previous(en, false, &is_dir, &was_wh, err);

	if (r < 0)
		return r;
	if (type == S_IFIFO)
		dev = 0;
	if (mknodat(en->pfd, en->base, type | 0600, dev) < 0)
		return kiln_error_seterrno(err, -errno, "layer entry '%s': mknod",
					   en->name);
	return apply_meta_at(en, false, err);
}

static int open_link_target(struct extract *x, struct tar_entry *en,
			    const char *tclean, const char **tbase,
			    char **tparent, struct kiln_error **err)
{
	int fd;

	*tparent = split_parent(tclean, tbase);
	fd = kiln_openat2(x->dirfd, *tparent, O_RDONLY | O_DIRECTORY, 0,
			  KILN_RESOLVE_BENEATH | KILN_RESOLVE_NO_SYMLINKS);
	if (fd < 0)
		return kiln_error_set(err, fd,
				      "layer entry '%s': hardlink target '%s' is "
				      "not a file of this layer",
				      en->name, tclean);
	return fd;
}

static int write_hardlink(struct extract *x, struct tar_entry *en,
			  const char *target, struct kiln_error **err)
{
	_cleanup_free_ char *tclean = NULL, *tparent = NULL;
	_cleanup_close_ int tfd = -1;
	const char *tbase;
	struct stat st;
	bool is_dir, was_wh;
	int r = clean_path(en->name, target, &tclean, err);

	if (r < 0)
		return r;
	if (!*tclean || !strcmp(tclean, en->clean))
		return kiln_error_set(err, -EINVAL,
				      "layer entry '%s': bad hardlink target '%s'",
				      en->name, target);
	tfd = open_link_target(x, en, tclean, &tbase, &tparent, err);
	if (tfd < 0)
		return tfd;
	if (fstatat(tfd, tbase, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    S_ISDIR(st.st_mode))
		return kiln_error_set(err, -ENOENT,
				      "layer entry '%s': hardlink target '%s' is "
				      "not a file of this layer",
				      en->name, tclean);
	r = clear_previous(en, false, &is_dir, &was_wh, err);
	if (r < 0)
		return r;
	if (linkat(tfd, tbase, en->pfd, en->base, 0) < 0)
		return kiln_error_seterrno(err, -errno,
					   "layer entry '%s': linking to '%s'",
					   en->name, tclean);
	return 0;
}

/* ".wh.NAME" hides NAME of the layers below; ".wh..wh..opq" all of them. */
static int write_whiteout(struct tar_entry *en, struct kiln_error **err)
{
	const char *hidden = en->base + strlen(WHITEOUT_PREFIX);
	struct stat st;

	if (!strcmp(en->base, WHITEOUT_OPAQUE)) {
		if (fsetxattr(en->pfd, OPAQUE_XATTR, "y", 1, 0) < 0)
			return kiln_error_seterrno(err, -errno,
						   "layer entry '%s': marking opaque",
						   en->name);
		return 0;
	}
	if (!strncmp(en->base, WHITEOUT_META_PREFIX, strlen(WHITEOUT_META_PREFIX)))
		return 0; /* other aufs metadata (.wh..wh.plnk ...) */
	if (!*hidden || !strcmp(hidden, ".") || !strcmp(hidden, ".."))
		return kiln_error_set(err, -EINVAL,
				      "layer entry '%s': bad whiteout", en->name);
	/* A whiteout never hides an entry of its own layer. */
	if (fstatat(en->pfd, hidden, &st, AT_SYMLINK_NOFOLLOW) == 0)
		return 0;
	if (mknodat(en->pfd, hidden, S_IFCHR | 0000, makedev(0, 0)) < 0)
		return kiln_error_seterrno(err, -errno,
					   "layer entry '%s': creating whiteout",
					   en->name);
	return 0;
}

static int write_entry(struct extract *x, struct tar_entry *en,
		       struct kiln_error **err)
{
	const char *hl = archive_entry_hardlink(en->ae);

	/* Whiteouts mean something in image layers only. */
	if ((!x->opts || !x->opts->archive) &&
	    !strncmp(en->base, WHITEOUT_PREFIX, strlen(WHITEOUT_PREFIX)))
		return write_whiteout(en, err);
	if (hl)
		return write_hardlink(x, en, hl, err);
	switch (archive_entry_filetype(en->ae)) {
	case AE_IFREG:
		return write_file(x, en, err);
	case AE_IFDIR:
		return write_dir(x, en, err);
	case AE_IFLNK:
		return write_symlink(en, err);
	case AE_IFCHR:
		return write_node(en, S_IFCHR, err);
	case AE_IFBLK:
		return write_node(en, S_IFBLK, err);
	case AE_IFIFO:
		return write_node(en, S_IFIFO, err);
	default:
		return 0; /* sockets and unknown types are skipped */
	}
}

static const char *entry_name(struct archive_entry *ae)
{
	const char *name = archive_entry_pathname(ae);

	return name ? name : archive_entry_pathname_utf8(ae);
}

static int extract_one(struct extract *x, struct archive_entry *ae,
		       struct kiln_error **err)
{
	_cleanup_free_ char *clean = NULL, *parent = NULL;
	_cleanup_close_ int pfd = -1;
	struct tar_entry en = { .ae = ae, .name = entry_name(ae) };
	int r;

	if (!en.name)
		return kiln_error_set(err, -EINVAL,
				      "layer entry #%llu has no usable path",
				      (unsigned long long)x->n_entries);
	r = clean_path(en.name, en.name, &clean, err);
	if (r < 0)
		return r;
	if (!*clean && !archive_entry_hardlink(ae))
		return 0; /* the root: its metadata is fixed (tree.h) */
	if (!*clean)
		return kiln_error_set(err, -EINVAL, "layer entry '%s': bad path",
				      en.name);
	en.clean = clean;
	parent = split_parent(clean, &en.base);
	pfd = open_parent(x, &en, parent, err);
	if (pfd < 0)
		return pfd;
	en.pfd = pfd;
	return write_entry(x, &en, err);
}

static int extract_all(struct extract *x, struct kiln_error **err)
{
	struct archive_entry *ae;
	int r;

	for (;;) {
		r = archive_read_next_header(x->tar, &ae);
		if (r == ARCHIVE_EOF)
			return 0;
		if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
			return kiln_error_set(err, -EINVAL,
					      "layer tar, after %llu entries: %s",
					      (unsigned long long)x->n_entries,
					      archive_error_string(x->tar));
		if (++x->n_entries > MAX_ENTRIES)
			return kiln_error_set(err, -E2BIG,
					      "layer tar: more than %d entries",
					      MAX_ENTRIES);
		r = extract_one(x, ae, err);
		if (r < 0)
			return r;
	}
}

int kiln_layer_extract_with(int fd, int dirfd,
			    const struct kiln_layer_extract_opts *opts,
			    struct kiln_error **err)
{
	struct extract *x = xcalloc(1, sizeof(*x));
	int r;

	x->dirfd = dirfd;
	x->opts = opts;
	if (opts && opts->diff_id)
		x->hasher = kiln_hasher_new(KILN_DIGEST_SHA256);
	r = open_readers(x, fd, err);
	if (r == 0)
		r = extract_all(x, err);
	if (r == 0)
		r = drain(x, err);
	if (r == 0)
		r = finish_dirs(x, err);
	if (r == 0 && x->hasher)
		kiln_hasher_final(x->hasher, opts->diff_id);
	extract_release(x);
	free(x);
	return r;
}

/*
 * BuildKit's isArchivePath (solver/llbsolver/file/unpack.go): decompress
 * what the first bytes announce (gzip, bzip2, xz, zstd, or nothing) and
 * read one tar header. Only the readers ADD extracts with are used, so
 * what is detected here is what kiln_layer_extract_with() can unpack.
 */
bool kiln_archive_detect(int fd)
{
	const struct kiln_layer_extract_opts opts = { .archive = true };
	struct extract *x = xcalloc(1, sizeof(*x));
	struct archive_entry *ae;
	bool ok;

	x->dirfd = -1;
	x->opts = &opts;
	ok = open_readers(x, fd, NULL) == 0 &&
	     archive_read_next_header(x->tar, &ae) == ARCHIVE_OK;
	extract_release(x);
	free(x);
	return ok;
}

int kiln_layer_extract(int fd, int dirfd, struct kiln_error **err)
{
	return kiln_layer_extract_with(fd, dirfd, NULL, err);
}
