#include "basic/fs-util.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <linux/openat2.h>

#include "basic/alloc.h"
#include "basic/strbuf.h"

int kiln_openat2(int dirfd, const char *path, int flags, mode_t mode,
		 uint64_t resolve)
{
	struct open_how how = {
		.flags = (uint64_t)(flags | O_CLOEXEC),
		.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
		.resolve = resolve,
	};
	long fd;

	if (!path || !*path)
		path = ".";
	fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
	if (fd < 0)
		return -errno;
	return (int)fd;
}

int kiln_opendir_at(int dirfd, const char *name, int flags, DIR **out)
{
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | flags);

	*out = NULL;
	if (fd < 0)
		return -errno;
	*out = fdopendir(fd);
	if (!*out) {
		int r = -errno;

		close(fd);
		return r;
	}
	return 0;
}

int kiln_mkdir_p(const char *path, mode_t mode)
{
	_cleanup_free_ char *p = xstrdup(path);
	char *s;

	for (s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, mode) < 0 && errno != EEXIST)
			return -errno;
		*s = '/';
	}
	if (mkdir(p, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int kiln_mkdirat_p_beneath(int dirfd, const char *rel, mode_t mode)
{
	_cleanup_free_ char *clean = NULL;
	_cleanup_close_ int cur = -1;
	char *save = NULL, *comp;

	if (kiln_path_has_dotdot(rel))
		return -EXDEV;
	clean = kiln_path_clean(rel);
	cur = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
	if (cur < 0)
		return -errno;
	for (comp = strtok_r(clean, "/", &save); comp;
	     comp = strtok_r(NULL, "/", &save)) {
		int next;

		if (mkdirat(cur, comp, mode) < 0 && errno != EEXIST)
			return -errno;
		next = kiln_openat2(cur, comp, O_RDONLY | O_DIRECTORY, 0,
				    KILN_RESOLVE_BENEATH |
					    KILN_RESOLVE_NO_SYMLINKS |
					    KILN_RESOLVE_NO_XDEV);
		if (next < 0)
			return next;
		close(cur);
		cur = next;
	}
	return TAKE_FD(cur);
}

int kiln_mount_id_at(int dirfd, const char *name, struct kiln_mount_id *out)
{
	struct statx stx;
	int flags = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | (*name ? 0 : AT_EMPTY_PATH);

	if (statx(dirfd, name, flags, STATX_MNT_ID, &stx) < 0)
		return -errno;
	out->dev = makedev(stx.stx_dev_major, stx.stx_dev_minor);
	out->mnt = (stx.stx_mask & STATX_MNT_ID) ? stx.stx_mnt_id : 0;
	return 0;
}

bool kiln_mount_id_same(const struct kiln_mount_id *a, const struct kiln_mount_id *b)
{
	if (a->dev != b->dev)
		return false;
	return !a->mnt || !b->mnt || a->mnt == b->mnt;
}

/* Empty the directory d (then closed), staying on mount. */
static int rm_rf_children(DIR *d, const struct kiln_mount_id *mount)
{
	struct dirent *de;
	int r = 0;

	while ((de = readdir(d))) {
		struct stat st;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno != ENOENT && !r)
				r = -errno;
			continue;
		}
		if (S_ISDIR(st.st_mode)) {
			struct kiln_mount_id here;
			DIR *sub;

			if (kiln_mount_id_at(dirfd(d), de->d_name, &here) < 0 ||
			    !kiln_mount_id_same(&here, mount)) {
				/* A mount point (bind mounts too): never descend. */
				if (!r)
					r = -EBUSY;
				continue;
			}
			if (kiln_opendir_at(dirfd(d), de->d_name, O_NOFOLLOW, &sub) == 0) {
				int q = rm_rf_children(sub, mount);
				if (q < 0 && !r)
					r = q;
			}
			if (unlinkat(dirfd(d), de->d_name, AT_REMOVEDIR) < 0 &&
			    errno != ENOENT && !r)
				r = -errno;
		} else if (unlinkat(dirfd(d), de->d_name, 0) < 0 &&
			   errno != ENOENT && !r) {
			r = -errno;
		}
	}
	closedir(d);
	return r;
}

int kiln_rm_rf_at(int at, const char *name)
{
	struct kiln_mount_id mount;
	struct stat st;
	DIR *d;
	int r;

	if (fstatat(at, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISDIR(st.st_mode))
		return unlinkat(at, name, 0) < 0 && errno != ENOENT ? -errno
								       : 0;
	r = kiln_opendir_at(at, name, O_NOFOLLOW, &d);
	if (r < 0)
		return r == -ENOENT ? 0 : r;
	r = kiln_mount_id_at(dirfd(d), "", &mount);
	if (r < 0) {
		closedir(d);
		return r;
	}
	r = rm_rf_children(d, &mount);
	if (unlinkat(at, name, AT_REMOVEDIR) < 0 && errno != ENOENT && !r)
		r = -errno;
	return r;
}

int kiln_rm_rf(const char *path)
{
	return kiln_rm_rf_at(AT_FDCWD, path);
}

int kiln_read_full(int fd, void *buf, size_t n)
{
	char *p = buf;

	while (n > 0) {
		ssize_t k = read(fd, p, n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (k == 0)
			return -EIO;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

int kiln_write_full(int fd, const void *buf, size_t n)
{
	const char *p = buf;

	while (n > 0) {
		ssize_t k = write(fd, p, n);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

int kiln_copy_fd(int in, int out)
{
	char buf[65536];

	/* copy_file_range first: in-kernel, no user-space bounce. */
	for (;;) {
		ssize_t k = copy_file_range(in, NULL, out, NULL, 1 << 30, 0);
		if (k == 0)
			return 0;
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EXDEV || errno == EINVAL ||
			    errno == EOPNOTSUPP || errno == ENOSYS)
				break;
			return -errno;
		}
	}
	for (;;) {
		ssize_t k = read(in, buf, sizeof(buf));
		int r;

		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (k == 0)
			return 0;
		r = kiln_write_full(out, buf, (size_t)k);
		if (r < 0)
			return r;
	}
}

int kiln_read_file_at(int dirfd, const char *path, size_t limit, char **out,
		      size_t *len)
{
	_cleanup_close_ int fd = -1;
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(limit);
	char buf[65536];

	fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (;;) {
		ssize_t k = read(fd, buf, sizeof(buf));
		if (k < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (k == 0)
			break;
		if (kiln_strbuf_add(&sb, buf, (size_t)k) < 0)
			return -EFBIG;
	}
	*out = kiln_strbuf_detach(&sb, len);
	return 0;
}

int kiln_write_file_atomic_at(int dirfd, const char *path, const void *data,
			      size_t len, mode_t mode, bool durable)
{
	_cleanup_free_ char *tmp = NULL, *rnd = kiln_random_hex(8);
	_cleanup_close_ int fd = -1;
	int r;

	tmp = xasprintf("%s.tmp-%s", path, rnd);
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	r = kiln_write_full(fd, data, len);
	if (r == 0 && fchmod(fd, mode) < 0)
		r = -errno;
	if (r == 0 && durable && fsync(fd) < 0)
		r = -errno;
	if (r == 0 && renameat(dirfd, tmp, dirfd, path) < 0)
		r = -errno;
	if (r < 0) {
		unlinkat(dirfd, tmp, 0);
		return r;
	}
	if (durable) {
		_cleanup_free_ char *dir = xstrdup(path);
		char *slash = strrchr(dir, '/');
		int dfd;

		if (slash)
			*slash = '\0';
		dfd = openat(dirfd, slash ? (*dir ? dir : "/") : ".",
			     O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0) {
			fsync(dfd);
			close(dfd);
		}
	}
	return 0;
}

int kiln_fsync_path(const char *path)
{
	_cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	return fsync(fd) < 0 ? -errno : 0;
}

char *kiln_path_clean(const char *path)
{
	_cleanup_free_ char *copy = xstrdup(path ? path : "");
	char **comps = NULL, *save = NULL, *c, *out;
	size_t n = 0, alloc = 0, i, total = 1;

	for (c = strtok_r(copy, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		if (!strcmp(c, "."))
			continue;
		if (!strcmp(c, "..")) {
			if (n > 0)
				n--;
			continue;
		}
		comps = xgrow(comps, &alloc, n + 1, sizeof(*comps));
		comps[n++] = c;
	}
	for (i = 0; i < n; i++)
		total += strlen(comps[i]) + 1;
	out = xmalloc(total);
	out[0] = '\0';
	for (i = 0; i < n; i++) {
		if (i)
			strcat(out, "/");
		strcat(out, comps[i]);
	}
	free(comps);
	return out;
}

char *kiln_path_clean_abs(const char *path)
{
	_cleanup_free_ char *clean = kiln_path_clean(path);

	return xasprintf("/%s", clean);
}

bool kiln_path_has_glob(const char *s)
{
	return strpbrk(s, "*?[") != NULL;
}

bool kiln_path_has_dotdot(const char *path)
{
	const char *p = path;

	while (p && *p) {
		const char *e = strchr(p, '/');
		size_t l = e ? (size_t)(e - p) : strlen(p);

		if (l == 2 && p[0] == '.' && p[1] == '.')
			return true;
		p = e ? e + 1 : NULL;
	}
	return false;
}

char *kiln_path_join(const char *a, const char *b)
{
	size_t la = strlen(a);

	while (*b == '/')
		b++;
	if (la == 0)
		return xstrdup(b);
	if (a[la - 1] == '/')
		return xasprintf("%s%s", a, b);
	return *b ? xasprintf("%s/%s", a, b) : xstrdup(a);
}

char *kiln_random_hex(size_t nbytes)
{
	unsigned char buf[64];
	char *out;
	size_t i;

	if (nbytes > sizeof(buf))
		nbytes = sizeof(buf);
	if (getrandom(buf, nbytes, 0) != (ssize_t)nbytes) {
		/* getrandom on Linux does not fail for <= 256 bytes. */
		abort();
	}
	out = xmalloc(nbytes * 2 + 1);
	for (i = 0; i < nbytes; i++)
		snprintf(out + 2 * i, 3, "%02x", buf[i]);
	return out;
}

int kiln_link_beneath(int rootfd, const char *path, int dirfd,
		      const char *name)
{
	const char *slash = strrchr(path, '/');
	_cleanup_close_ int pfd = -1;

	if (slash) {
		_cleanup_free_ char *dir = xstrndup(path, (size_t)(slash - path));

		pfd = kiln_openat2(rootfd, dir, O_PATH | O_DIRECTORY, 0,
				   KILN_RESOLVE_BENEATH | KILN_RESOLVE_NO_SYMLINKS);
		if (pfd < 0)
			return pfd;
	}
	if (linkat(slash ? pfd : rootfd, slash ? slash + 1 : path, dirfd, name, 0) < 0)
		return -errno;
	return 0;
}
