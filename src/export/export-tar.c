/*
 * type=tar: a tree as a pax (restricted) tar stream.
 *
 * Entries come in walk order (pre-order, sorted by name) with the tree's
 * uid, gid, mode and mtime and no user or group names, and the last block
 * is never padded whatever fd is written to, so one tree always gives the
 * same bytes. File data is streamed from the CAS and checked against the
 * entry's size and digest on the way.
 */
#include "export/export.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "cas/tree.h"

struct tar_ctx {
	struct kiln_store *store;
	struct archive *a;
	struct kiln_hasher *hasher;
	struct kiln_error **err;
};

static int archive_fail(struct tar_ctx *c, const char *path)
{
	int code = archive_errno(c->a) > 0 ? -archive_errno(c->a) : -EIO;

	return kiln_error_set(c->err, code, "tar: %s: %s", path,
			      archive_error_string(c->a) ?: "write failed");
}

static mode_t entry_filetype(uint8_t type)
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

static struct archive_entry *make_header(const char *path,
					 const struct kiln_tree_entry *e)
{
	struct archive_entry *ae = archive_entry_new();
	size_t i;

	archive_entry_set_pathname(ae, path);
	archive_entry_set_filetype(ae, entry_filetype(e->type));
	archive_entry_set_perm(ae, e->mode & 07777);
	archive_entry_set_uid(ae, e->uid);
	archive_entry_set_gid(ae, e->gid);
	archive_entry_set_mtime(ae, e->mtime_sec, e->mtime_nsec);
	archive_entry_set_size(ae, e->type == KILN_ENTRY_FILE ? e->size : 0);
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

/* Copy a blob into the archive, verifying its size and digest. */
static int write_data(struct tar_ctx *c, const char *path,
		      const struct kiln_tree_entry *e)
{
	_cleanup_close_ int fd = -1;
	struct kiln_digest got;
	uint64_t total = 0;
	char buf[65536];

	fd = kiln_store_open_blob(c->store, &e->digest);
	if (fd < 0)
		return kiln_error_seterrno(c->err, fd, "tar: %s: blob %s", path,
					   KILN_DIGEST_STR(&e->digest));
	for (;;) {
		ssize_t k = read(fd, buf, sizeof(buf));

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return kiln_error_seterrno(c->err, -errno, "tar: %s: blob %s",
						   path, KILN_DIGEST_STR(&e->digest));
		if (k == 0)
			break;
		if (total + (uint64_t)k > e->size)
			break;
		kiln_hasher_update(c->hasher, buf, (size_t)k);
		if (archive_write_data(c->a, buf, (size_t)k) != k)
			return archive_fail(c, path);
		total += (uint64_t)k;
	}
	kiln_hasher_final(c->hasher, &got);
	if (total != e->size || !kiln_digest_eq(&got, &e->digest))
		return kiln_error_set(c->err, -EBADMSG,
				      "tar: %s: blob %s is corrupt", path,
				      KILN_DIGEST_STR(&e->digest));
	return 0;
}

static int tar_visit(const char *path, const struct kiln_tree_entry *e,
		     void *ud)
{
	struct tar_ctx *c = ud;
	struct archive_entry *ae;
	int r;

	if (!entry_filetype(e->type))
		return kiln_error_set(c->err, -EINVAL, "tar: %s: unknown type %u",
				      path, e->type);
	ae = make_header(path, e);
	r = archive_write_header(c->a, ae);
	archive_entry_free(ae);
	if (r < ARCHIVE_WARN)
		return archive_fail(c, path);
	if (e->type == KILN_ENTRY_FILE)
		return write_data(c, path, e);
	return 0;
}

static struct archive *tar_writer_new(int fd)
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

int kiln_export_tar_fd(struct kiln_store *s, const struct kiln_digest *tree,
		       int fd, struct kiln_error **err)
{
	struct tar_ctx c = { .store = s, .err = err };
	int r;

	c.a = tar_writer_new(fd);
	if (!c.a)
		return kiln_error_set(err, -EIO, "tar: cannot start archive");
	c.hasher = kiln_hasher_new(tree->algo);
	r = kiln_tree_walk(s, tree, tar_visit, &c, err);
	if (r > 0)
		r = -EIO;
	if (archive_write_close(c.a) != ARCHIVE_OK && r == 0)
		r = archive_fail(&c, "end of archive");
	archive_write_free(c.a);
	kiln_hasher_free(c.hasher);
	return r;
}

static int tar_to_file(struct kiln_store *s, const struct kiln_digest *tree,
		       const char *dest, const char *tmp,
		       struct kiln_error **err)
{
	_cleanup_close_ int fd = -1;
	int r;

	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0644);
	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "cannot create %s", tmp);
	r = kiln_export_tar_fd(s, tree, fd, err);
	if (r < 0)
		return r;
	if (fsync(fd) < 0)
		return kiln_error_seterrno(err, -errno, "cannot write %s", tmp);
	if (rename(tmp, dest) < 0)
		return kiln_error_seterrno(err, -errno, "cannot write %s", dest);
	return 0;
}

int kiln_export_tar(struct kiln_store *s, const struct kiln_digest *tree,
		    const char *dest, struct kiln_error **err)
{
	_cleanup_free_ char *hex = NULL, *tmp = NULL;
	int r;

	if (!strcmp(dest, "-")) {
		r = kiln_export_tar_fd(s, tree, STDOUT_FILENO, err);
		if (r >= 0 && fflush(stdout) != 0)
			r = kiln_error_seterrno(err, -errno, "cannot write stdout");
		return r;
	}
	hex = kiln_random_hex(4);
	tmp = xasprintf("%s.tmp-%s", dest, hex);
	r = tar_to_file(s, tree, dest, tmp, err);
	if (r < 0)
		unlink(tmp);
	return r;
}
