/*
 * File-system helpers. Paths that come from outside (archives, contexts,
 * Dockerfiles, graphs) are resolved relative to a root fd with openat2's
 * RESOLVE_* flags, never by string concatenation. Every fd is O_CLOEXEC.
 */
#pragma once

#include <dirent.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "basic/macro.h"

/* openat2 resolve flags (linux/openat2.h), re-exported for callers. */
#define KILN_RESOLVE_NO_XDEV 0x01
#define KILN_RESOLVE_NO_MAGICLINKS 0x02
#define KILN_RESOLVE_NO_SYMLINKS 0x04
#define KILN_RESOLVE_BENEATH 0x08
#define KILN_RESOLVE_IN_ROOT 0x10

/*
 * openat2(dirfd, path, flags | O_CLOEXEC, mode, resolve). Returns fd or
 * -errno. path must be relative ("" or "." means dirfd itself).
 */
int kiln_openat2(int dirfd, const char *path, int flags, mode_t mode,
		 uint64_t resolve);

/*
 * Open dirfd/name as a directory stream: openat with O_RDONLY |
 * O_DIRECTORY | O_CLOEXEC | flags (O_NOFOLLOW, say), then fdopendir.
 * 0 or -errno; on failure nothing stays open. name "." reads dirfd
 * itself through a fresh fd, leaving dirfd's offset alone.
 */
int kiln_opendir_at(int dirfd, const char *name, int flags, DIR **out);

/* mkdir -p for an absolute or cwd-relative path. 0 or -errno. */
int kiln_mkdir_p(const char *path, mode_t mode);

/*
 * Create every missing directory of rel beneath dirfd (no symlink is
 * followed, no component may escape) and return an O_DIRECTORY fd for the
 * last one, or -errno (-ELOOP/-EXDEV for symlink or escape attempts,
 * -ENOTDIR when a component is not a directory).
 */
int kiln_mkdirat_p_beneath(int dirfd, const char *rel, mode_t mode);

/*
 * Hardlink the file at path (relative to rootfd, resolved beneath it
 * without following any symlink) as dirfd/name. 0 or -errno.
 */
int kiln_link_beneath(int rootfd, const char *path, int dirfd,
		      const char *name);

/*
 * Which mount a path is on: the statx mount id, which tells even a bind
 * mount of the same file system apart, and st_dev where the kernel has no
 * mount id. name "" means dirfd itself.
 */
struct kiln_mount_id {
	dev_t dev;
	uint64_t mnt; /* 0 when unknown */
};

int kiln_mount_id_at(int dirfd, const char *name, struct kiln_mount_id *out);
/* Are a and b on the same mount? */
bool kiln_mount_id_same(const struct kiln_mount_id *a, const struct kiln_mount_id *b);

/*
 * Remove dirfd/name recursively. Never follows symlinks and never crosses
 * into another mount. Missing is not an error. 0 or -errno.
 */
int kiln_rm_rf_at(int dirfd, const char *name);
int kiln_rm_rf(const char *path);

/* Loop over short reads/writes; -errno on failure, -EIO on early EOF. */
int kiln_read_full(int fd, void *buf, size_t n);
int kiln_write_full(int fd, const void *buf, size_t n);

/* Copy all of in (from its current offset) to out. 0 or -errno. */
int kiln_copy_fd(int in, int out);

/*
 * Read a whole file of at most limit bytes into a NUL-terminated buffer.
 * -EFBIG if larger. dirfd may be AT_FDCWD.
 */
int kiln_read_file_at(int dirfd, const char *path, size_t limit, char **out,
		      size_t *len);

/*
 * Write data to dirfd/path atomically: temp file in the same directory,
 * optional fsync, rename, optional directory fsync. 0 or -errno.
 */
int kiln_write_file_atomic_at(int dirfd, const char *path, const void *data,
			      size_t len, mode_t mode, bool durable);

int kiln_fsync_path(const char *path);

/*
 * Lexically clean a slash-separated path the way Go's path.Clean does for
 * a path inside a root: "." and empty components vanish, ".." pops one
 * component and never rises above the root. The result has no leading or
 * trailing slash; the root itself is "". Caller frees.
 */
char *kiln_path_clean(const char *path);

/* kiln_path_clean as an absolute path: "/a/b", the root "/". */
char *kiln_path_clean_abs(const char *path);

/* Does s hold a glob character ('*', '?' or '[')? */
bool kiln_path_has_glob(const char *s);

/* True if any component of path is exactly "..". */
bool kiln_path_has_dotdot(const char *path);

/* Join two path pieces with one slash. Caller frees. */
char *kiln_path_join(const char *a, const char *b);

/* Random lowercase hex string of 2*nbytes chars into a new string. */
char *kiln_random_hex(size_t nbytes);
