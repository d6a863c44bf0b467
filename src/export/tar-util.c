/*
 * What the tar writers share: tree entries as libarchive headers, file
 * data streamed from the CAS and checked against the entry, and writing a
 * stream to stdout or atomically to a file.
 */
#include "export/export-internal.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"

unsigned int kiln_tar_filetype(uint8_t type)
{
	switch (type) {
	case KILN_ENTRY_FILE: return AE_IFREG;
	case KILN_ENTRY_DIR: return AE_IFDIR;
	case KILN_ENTRY_SYMLINK: return AE_IFLNK;
	case KILN_ENTRY_CHAR: return AE_IFCHR;
	case KILN_ENTRY_BLOCK: return AE_IFBLK;
	case KILN_ENTRY_FIFO: return AE_IFIFO;
	default: return 0;
	}
}

struct archive_entry *kiln_tar_header(const char *path,
				      const struct kiln_tree_entry *e,
				      int64_t mtime_sec, uint32_t mtime_nsec)
{
	struct archive_entry *ae = archive_entry_new();
	size_t i;

	archive_entry_set_pathname(ae, path);
	archive_entry_set_filetype(ae, kiln_tar_filetype(e->type));
	archive_entry_set_perm(ae, e->mode & 07777);
	archive_entry_set_uid(ae, e->uid);
	archive_entry_set_gid(ae, e->gid);
	archive_entry_set_mtime(ae, mtime_sec, mtime_nsec);
	archive_entry_set_size(ae, e->type == KILN_ENTRY_FILE && !e->link ? e->size : 0);
	/* A hardlink of a file written earlier in this archive (typeflag 1). */
	if (e->type == KILN_ENTRY_FILE && e->link)
		archive_entry_set_hardlink(ae, e->link);
	if (e->type == KILN_ENTRY_SYMLINK)
		archive_entry_set_symlink(ae, e->target);
	if (e->type == KILN_ENTRY_CHAR || e->type == KILN_ENTRY_BLOCK) {
		archive_entry_set_rdevmajor(ae, e->rdev_major);
		archive_entry_set_rdevminor(ae, e->rdev_minor);
	}
	for (i = 0; i < e->n_xattrs; i++)
		archive_entry_xattr_add_entry(ae, e->xattrs[i].name,
					      e->xattrs[i].value,
					      e->xattrs[i].len);
	return ae;
}

int kiln_tar_fail(struct kiln_tar *t, const char *path)
{
	int code = t->sink_error ? t->sink_error :
		   archive_errno(t->a) > 0 ? -archive_errno(t->a) : -EIO;

	return kiln_error_set(t->err, code, "%s: %s: %s", t->what, path,
			      archive_error_string(t->a) ?: "write failed");
}

/* Copy fd into the archive, hashing it, up to e->size bytes. */
static int copy_data(struct kiln_tar *t, const char *path,
		     const struct kiln_tree_entry *e, int fd,
		     struct kiln_hasher *h, uint64_t *total)
{
	char buf[65536];

	for (;;) {
		ssize_t k = read(fd, buf, sizeof(buf));

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return kiln_error_seterrno(t->err, -errno,
						   "%s: %s: blob %s", t->what,
						   path,
						   KILN_DIGEST_STR(&e->digest));
		if (k == 0 || *total + (uint64_t)k > e->size)
			return 0;
		kiln_hasher_update(h, buf, (size_t)k);
		if (archive_write_data(t->a, buf, (size_t)k) != k)
			return kiln_tar_fail(t, path);
		*total += (uint64_t)k;
	}
}

int kiln_tar_write_blob(struct kiln_tar *t, const char *path,
			const struct kiln_tree_entry *e)
{
	_cleanup_close_ int fd = -1;
	struct kiln_hasher *h;
	struct kiln_digest got;
	uint64_t total = 0;
	int r;

	fd = kiln_store_open_blob(t->store, &e->digest);
	if (fd < 0)
		return kiln_error_seterrno(t->err, fd, "%s: %s: blob %s",
					   t->what, path,
					   KILN_DIGEST_STR(&e->digest));
	h = kiln_hasher_new(e->digest.algo);
	r = copy_data(t, path, e, fd, h, &total);
	kiln_hasher_final(h, &got);
	kiln_hasher_free(h);
	if (r < 0)
		return r;
	if (total != e->size || !kiln_digest_eq(&got, &e->digest))
		return kiln_error_set(t->err, -EBADMSG,
				      "%s: %s: blob %s is corrupt", t->what,
				      path, KILN_DIGEST_STR(&e->digest));
	return 0;
}

int kiln_tar_write_entry(struct kiln_tar *t, const char *path,
			 const struct kiln_tree_entry *e, int64_t mtime_sec,
			 uint32_t mtime_nsec)
{
	struct archive_entry *ae;
	int r;

	if (!kiln_tar_filetype(e->type))
		return kiln_error_set(t->err, -EINVAL,
				      "%s: %s: unknown entry type %u", t->what,
				      path, e->type);
	ae = kiln_tar_header(path, e, mtime_sec, mtime_nsec);
	r = archive_write_header(t->a, ae);
	archive_entry_free(ae);
	if (r < ARCHIVE_WARN)
		return kiln_tar_fail(t, path);
	if (e->type == KILN_ENTRY_FILE && !e->link)
		return kiln_tar_write_blob(t, path, e);
	return 0;
}

struct archive *kiln_tar_open_fd(int fd)
{
	struct archive *a = archive_write_new();

	if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
	    archive_write_add_filter_none(a) != ARCHIVE_OK ||
	    archive_write_set_bytes_in_last_block(a, 1) != ARCHIVE_OK ||
	    archive_write_open_fd(a, fd) != ARCHIVE_OK) {
		archive_write_free(a);
		return NULL;
	}
	return a;
}

int kiln_tar_close(struct kiln_tar *t, int r)
{
	if (archive_write_close(t->a) != ARCHIVE_OK && r == 0)
		r = kiln_tar_fail(t, "end of archive");
	archive_write_free(t->a);
	t->a = NULL;
	return r;
}

static int write_to_file(const char *dest, const char *tmp,
			 int (*write_fd)(int fd, void *ud,
					 struct kiln_error **err),
			 void *ud, struct kiln_error **err)
{
	_cleanup_close_ int fd = -1;
	int r;

	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0644);
	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "cannot create %s", tmp);
	r = write_fd(fd, ud, err);
	if (r < 0)
		return r;
	if (fsync(fd) < 0)
		return kiln_error_seterrno(err, -errno, "cannot write %s", tmp);
	if (rename(tmp, dest) < 0)
		return kiln_error_seterrno(err, -errno, "cannot write %s", dest);
	return 0;
}

/* Create the destination's missing parent directories, like type=local. */
static int make_parent(const char *dest, struct kiln_error **err)
{
	_cleanup_free_ char *dir = xstrdup(dest);
	char *slash = strrchr(dir, '/');
	int r;

	if (!slash || slash == dir)
		return 0;
	*slash = '\0';
	r = kiln_mkdir_p(dir, 0755);
	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot create directory %s", dir);
	return 0;
}

int kiln_write_to_dest(const char *dest,
		       int (*write_fd)(int fd, void *ud,
				       struct kiln_error **err),
		       void *ud, struct kiln_error **err)
{
	_cleanup_free_ char *hex = NULL, *tmp = NULL;
	int r;

	if (!strcmp(dest, "-")) {
		r = write_fd(STDOUT_FILENO, ud, err);
		if (r >= 0 && fflush(stdout) != 0)
			r = kiln_error_seterrno(err, -errno, "cannot write stdout");
		return r;
	}
	r = make_parent(dest, err);
	if (r < 0)
		return r;
	hex = kiln_random_hex(4);
	tmp = xasprintf("%s.tmp-%s", dest, hex);
	r = write_to_file(dest, tmp, write_fd, ud, err);
	if (r < 0)
		unlink(tmp);
	return r;
}
