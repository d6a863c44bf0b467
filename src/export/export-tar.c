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

#include "export/export-internal.h"

static int tar_visit(const char *path, const struct kiln_tree_entry *e,
		     void *ud)
{
	return kiln_tar_write_entry(ud, path, e, e->mtime_sec, e->mtime_nsec);
}

int kiln_export_tar_fd(struct kiln_store *s, const struct kiln_digest *tree,
		       int fd, struct kiln_error **err)
{
	struct kiln_tar t = { .store = s, .what = "tar", .err = err };
	int r;

	t.a = kiln_tar_open_fd(fd);
	if (!t.a)
		return kiln_error_set(err, -EIO, "tar: cannot start archive");
	r = kiln_tree_walk(s, tree, tar_visit, &t, err);
	if (r > 0)
		r = -EIO;
	return kiln_tar_close(&t, r);
}

struct tar_dest {
	struct kiln_store *store;
	const struct kiln_digest *tree;
};

static int tar_write_fd(int fd, void *ud, struct kiln_error **err)
{
	struct tar_dest *d = ud;

	return kiln_export_tar_fd(d->store, d->tree, fd, err);
}

int kiln_export_tar(struct kiln_store *s, const struct kiln_digest *tree,
		    const char *dest, struct kiln_error **err)
{
	struct tar_dest d = { .store = s, .tree = tree };

	return kiln_write_to_dest(dest, tar_write_fd, &d, err);
}
