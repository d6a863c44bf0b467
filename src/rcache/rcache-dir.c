/*
 * A directory as a remote cache (kiln build --cache-to type=local,dest=DIR):
 * the layout of rcache.h under DIR, for CI systems that save and restore a
 * folder. Objects are written to tmp/ and renamed into place, so a reader
 * never sees half an object; paths are opened beneath DIR without
 * following symlinks, so a planted link cannot redirect a read or write.
 */
#include "rcache/rcache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/macro.h"

#define BENEATH (KILN_RESOLVE_BENEATH | KILN_RESOLVE_NO_SYMLINKS)

struct dir_backend {
	char *dir;
	int fd;
};

static int dir_get(void *b, const char *name, uint64_t limit,
		   int (*sink)(void *ud, const void *data, size_t n), void *ud,
		   struct kiln_error **err)
{
	struct dir_backend *d = b;
	_cleanup_close_ int fd = -1;
	struct stat st;
	char buf[65536];
	int r;

	uint64_t total = 0;

	/* Non-blocking: a FIFO planted in a restored cache must not hang us. */
	fd = kiln_openat2(d->fd, name, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0, BENEATH);
	if (fd == -ENOENT)
		return -ENOENT;
	if (fd < 0)
		return kiln_error_seterrno(err, fd, "%s/%s", d->dir, name);
	if (fstat(fd, &st) < 0)
		return kiln_error_seterrno(err, -errno, "%s/%s", d->dir, name);
	if (!S_ISREG(st.st_mode))
		return kiln_error_set(err, -EBADMSG, "%s/%s is not a file", d->dir, name);
	if ((uint64_t)st.st_size > limit)
		return -EFBIG;
	for (;;) {
		ssize_t k = read(fd, buf, sizeof(buf));

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return kiln_error_seterrno(err, -errno, "reading %s/%s", d->dir, name);
		if (k == 0)
			return 0;
		/* It may have grown since fstat. */
		total += (uint64_t)k;
		if (total > limit)
			return -EFBIG;
		r = sink(ud, buf, (size_t)k);
		if (r < 0)
			return kiln_error_seterrno(err, r, "storing %s/%s", d->dir, name);
	}
}

static int dir_has(void *b, const char *name, struct kiln_error **err)
{
	struct dir_backend *d = b;
	_cleanup_close_ int fd = kiln_openat2(d->fd, name, O_PATH, 0, BENEATH);

	if (fd == -ENOENT)
		return 0;
	if (fd < 0)
		return kiln_error_seterrno(err, fd, "%s/%s", d->dir, name);
	return 1;
}

static int dir_touch(void *b, const char *name, struct kiln_error **err)
{
	struct dir_backend *d = b;
	_cleanup_close_ int fd = kiln_openat2(d->fd, name, O_RDONLY | O_NONBLOCK | O_NOCTTY, 0,
					      BENEATH);

	if (fd == -ENOENT)
		return 0;
	if (fd < 0)
		return kiln_error_seterrno(err, fd, "%s/%s", d->dir, name);
	if (futimens(fd, NULL) < 0)
		return kiln_error_seterrno(err, -errno, "touching %s/%s", d->dir, name);
	return 1;
}

static int dir_put(void *b, const char *name, int fd, const void *data,
		   uint64_t size, struct kiln_error **err)
{
	struct dir_backend *d = b;
	_cleanup_free_ char *tmp = NULL, *parent = xstrdup(name);
	_cleanup_free_ char *rnd = kiln_random_hex(8);
	_cleanup_close_ int out = -1, tfd = -1, pfd = -1;
	char *slash = strrchr(parent, '/');
	int r;

	tmp = xasprintf("tmp/%s", rnd);
	tfd = kiln_mkdirat_p_beneath(d->fd, "tmp", 0755);
	if (tfd < 0)
		return kiln_error_seterrno(err, tfd, "creating %s/tmp", d->dir);
	out = openat(tfd, rnd, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (out < 0)
		return kiln_error_seterrno(err, -errno, "creating %s/%s", d->dir, tmp);
	if (fd >= 0)
		r = lseek(fd, 0, SEEK_SET) < 0 ? -errno : kiln_copy_fd(fd, out);
	else
		r = kiln_write_full(out, data, (size_t)size);
	if (r == 0 && fsync(out) < 0)
		r = -errno;
	if (r == 0 && slash) {
		*slash = '\0';
		pfd = kiln_mkdirat_p_beneath(d->fd, parent, 0755);
		r = pfd < 0 ? pfd : 0;
	}
	if (r == 0 && renameat(tfd, rnd, slash ? pfd : d->fd, slash ? slash + 1 : name) < 0)
		r = -errno;
	if (r < 0) {
		unlinkat(tfd, rnd, 0);
		return kiln_error_seterrno(err, r, "writing %s/%s", d->dir, name);
	}
	return 0;
}

/* Walk dir/<path> recursively: objects are files, names relative to dir. */
static int walk_objects(struct dir_backend *d, int dfd, const char *rel,
			const char *prefix,
			int (*fn)(void *ud, const char *name, uint64_t size, int64_t mtime),
			void *ud, struct kiln_error **err)
{
	DIR *dir = NULL;
	struct dirent *de;
	int r = kiln_opendir_at(dfd, ".", 0, &dir);

	if (r < 0)
		return kiln_error_seterrno(err, r, "listing %s/%s", d->dir, rel);
	while (r == 0 && (errno = 0, de = readdir(dir))) {
		_cleanup_free_ char *name = NULL;
		struct stat st;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		name = *rel ? xasprintf("%s/%s", rel, de->d_name) : xstrdup(de->d_name);
		if (fstatat(dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* gone meanwhile */
		if (S_ISDIR(st.st_mode)) {
			/* Only directories on the way to (or under) the prefix. */
			size_t n = strlen(name);

			if (strncmp(name, prefix, n < strlen(prefix) ? n : strlen(prefix)))
				continue;
			_cleanup_close_ int sub = kiln_openat2(dirfd(dir), de->d_name,
							       O_RDONLY | O_DIRECTORY, 0, BENEATH);
			if (sub < 0)
				continue;
			r = walk_objects(d, sub, name, prefix, fn, ud, err);
		} else if (S_ISREG(st.st_mode) && !strncmp(name, prefix, strlen(prefix))) {
			r = fn(ud, name, (uint64_t)st.st_size, st.st_mtim.tv_sec);
		}
	}
	closedir(dir);
	return r;
}

static int dir_list(void *b, const char *prefix,
		    int (*fn)(void *ud, const char *name, uint64_t size, int64_t mtime),
		    void *ud, struct kiln_error **err)
{
	struct dir_backend *d = b;

	return walk_objects(d, d->fd, "", prefix, fn, ud, err);
}

static int dir_del(void *b, const char *name, struct kiln_error **err)
{
	struct dir_backend *d = b;
	_cleanup_free_ char *parent = xstrdup(name);
	char *slash = strrchr(parent, '/');
	_cleanup_close_ int pfd = -1;

	if (slash) {
		*slash = '\0';
		pfd = kiln_openat2(d->fd, parent, O_PATH | O_DIRECTORY, 0, BENEATH);
		if (pfd == -ENOENT)
			return 0;
		if (pfd < 0)
			return kiln_error_seterrno(err, pfd, "%s/%s", d->dir, parent);
	}
	if (unlinkat(slash ? pfd : d->fd, slash ? slash + 1 : name, 0) < 0 && errno != ENOENT)
		return kiln_error_seterrno(err, -errno, "deleting %s/%s", d->dir, name);
	return 0;
}

static void dir_free(void *b)
{
	struct dir_backend *d = b;

	close(d->fd);
	free(d->dir);
	free(d);
}

int kiln_rcache_open_dir(const char *dir, bool create, struct kiln_rcache **out,
			 struct kiln_error **err)
{
	struct dir_backend *d;
	struct kiln_rcache_backend be = { 0 };
	int fd, r;

	if (create) {
		r = kiln_mkdir_p(dir, 0755);
		if (r < 0)
			return kiln_error_seterrno(err, r, "cannot create %s", dir);
	}
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "cannot open cache directory %s", dir);
	d = xcalloc(1, sizeof(*d));
	d->dir = xstrdup(dir);
	d->fd = fd;
	be.name = d->dir;
	be.get = dir_get;
	be.has = dir_has;
	be.touch = dir_touch;
	be.put = dir_put;
	be.list = dir_list;
	be.del = dir_del;
	be.free = dir_free;
	be.b = d;
	*out = kiln_rcache_new(&be);
	return 0;
}
