#include "cas/store.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/macro.h"

#define COPY_BUF (1u << 20)

/*
 * Only fds and immutable configuration live here, so any number of threads
 * can share one store without locking.
 */
struct kiln_store {
	char *dir;
	int blobsfd; /* blobs/sha256 */
	int tmpfd;   /* tmp */
	int lockfd;  /* shared flock held while open */
	bool durable;
};

struct kiln_store_writer {
	struct kiln_store *s;
	struct kiln_hasher *h;
	char *tmpname;
	int fd;
	int error; /* first write error, reported at commit */
	struct kiln_blob_meta meta; /* inode metadata for a new blob */
	bool has_meta;
	bool defer_dir_sync; /* the caller syncs the directory (kiln_store_sync) */
	bool renamed;        /* the temp file has its final name */
	bool pipelined;      /* a large stream: hashed on a thread, written back early */
	uint64_t written, flushed; /* bytes written; bytes whose writeback started */
};

static int open_dir_at(int dirfd, const char *name)
{
	int fd;

	if (mkdirat(dirfd, name, 0700) < 0 && errno != EEXIST)
		return -errno;
	fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

static int clean_tmp(int tmpfd)
{
	struct dirent *de;
	DIR *d;
	int r = kiln_opendir_at(tmpfd, ".", 0, &d);

	if (r < 0)
		return r;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		int q = kiln_rm_rf_at(dirfd(d), de->d_name);
		if (q < 0 && !r)
			r = q;
	}
	closedir(d);
	return r;
}

/*
 * A shared lock marks the store in use. Whoever gets it exclusively is the
 * only user and may empty tmp/ without breaking another writer.
 */
static int lock_and_clean(struct kiln_store *s, int rootfd)
{
	s->lockfd = openat(rootfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (s->lockfd < 0)
		return -errno;
	if (flock(s->lockfd, LOCK_EX | LOCK_NB) == 0) {
		int r = clean_tmp(s->tmpfd);
		if (r < 0)
			return r;
	}
	return flock(s->lockfd, LOCK_SH) < 0 ? -errno : 0;
}

static int store_setup(struct kiln_store *s)
{
	_cleanup_close_ int rootfd = -1, blobs = -1;
	int r;

	r = kiln_mkdir_p(s->dir, 0700);
	if (r < 0)
		return r;
	rootfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rootfd < 0)
		return -errno;
	blobs = open_dir_at(rootfd, "blobs");
	if (blobs < 0)
		return blobs;
	s->blobsfd = open_dir_at(blobs, "sha256");
	if (s->blobsfd < 0)
		return s->blobsfd;
	s->tmpfd = open_dir_at(rootfd, "tmp");
	if (s->tmpfd < 0)
		return s->tmpfd;
	return lock_and_clean(s, rootfd);
}

int kiln_store_open(const char *dir, const struct kiln_store_options *opts,
		    struct kiln_store **out, struct kiln_error **err)
{
	struct kiln_store *s = xcalloc(1, sizeof(*s));
	int r;

	s->dir = xstrdup(dir);
	s->blobsfd = s->tmpfd = s->lockfd = -1;
	s->durable = opts ? opts->durable : true;
	r = store_setup(s);
	if (r < 0) {
		kiln_error_seterrno(err, r, "opening store %s", dir);
		kiln_store_free(s);
		return r;
	}
	*out = s;
	return 0;
}

void kiln_store_free(struct kiln_store *s)
{
	if (!s)
		return;
	closep(&s->blobsfd);
	closep(&s->tmpfd);
	closep(&s->lockfd);
	free(s->dir);
	free(s);
}

const char *kiln_store_dir(const struct kiln_store *s)
{
	return s->dir;
}

static const char *blob_name(const struct kiln_digest *d, char *buf)
{
	return kiln_digest_hex(d, buf);
}
#define BLOB_NAME(d) blob_name((d), (char[KILN_DIGEST_HEXLEN]){ 0 })

static bool digest_ok(const struct kiln_digest *d)
{
	return d->algo == KILN_DIGEST_SHA256;
}

bool kiln_store_has(struct kiln_store *s, const struct kiln_digest *d)
{
	if (!digest_ok(d))
		return false;
	return faccessat(s->blobsfd, BLOB_NAME(d), F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

int kiln_store_size(struct kiln_store *s, const struct kiln_digest *d,
		    uint64_t *size)
{
	struct stat st;

	if (!digest_ok(d))
		return -EINVAL;
	if (fstatat(s->blobsfd, BLOB_NAME(d), &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	*size = (uint64_t)st.st_size;
	return 0;
}

char *kiln_store_blob_path(const struct kiln_store *s,
			   const struct kiln_digest *d)
{
	return xasprintf("%s/blobs/sha256/%s", s->dir, BLOB_NAME(d));
}

int kiln_store_open_blob(struct kiln_store *s, const struct kiln_digest *d)
{
	int fd;

	if (!digest_ok(d))
		return -EINVAL;
	fd = openat(s->blobsfd, BLOB_NAME(d), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* ---- writers ---- */

int kiln_store_writer_begin(struct kiln_store *s, struct kiln_store_writer **out,
			    struct kiln_error **err)
{
	struct kiln_store_writer *w = xcalloc(1, sizeof(*w));

	w->s = s;
	w->tmpname = kiln_random_hex(16);
	w->fd = openat(s->tmpfd, w->tmpname,
		       O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0444);
	if (w->fd < 0) {
		int r = -errno;
		free(w->tmpname);
		free(w);
		return kiln_error_seterrno(err, r, "creating temporary blob in %s/tmp",
					   s->dir);
	}
	w->h = kiln_hasher_new(KILN_DIGEST_SHA256);
	*out = w;
	return 0;
}

void kiln_store_writer_pipeline(struct kiln_store_writer *w)
{
	kiln_hasher_free(w->h);
	w->h = kiln_hasher_new_threaded(KILN_DIGEST_SHA256);
	w->pipelined = true;
}

/* Writeback started per this many bytes, so the final fsync has little left. */
#define WRITEBACK_STEP (8u << 20)

int kiln_store_writer_write(struct kiln_store_writer *w, const void *data,
			    size_t len)
{
	int r;

	if (w->error)
		return w->error;
	kiln_hasher_update(w->h, data, len);
	r = kiln_write_full(w->fd, data, len);
	if (r < 0) {
		w->error = r;
		return r;
	}
	w->written += len;
	if (w->pipelined && w->s->durable && w->written - w->flushed >= WRITEBACK_STEP) {
		(void)sync_file_range(w->fd, (off64_t)w->flushed, (off64_t)(w->written - w->flushed),
				      SYNC_FILE_RANGE_WRITE);
		w->flushed = w->written;
	}
	return 0;
}

static void writer_free(struct kiln_store_writer *w, bool unlink_tmp)
{
	if (unlink_tmp)
		(void)unlinkat(w->s->tmpfd, w->tmpname, 0);
	closep(&w->fd);
	kiln_hasher_free(w->h);
	free(w->tmpname);
	free(w);
}

void kiln_store_writer_abort(struct kiln_store_writer *w)
{
	if (w)
		writer_free(w, true);
}

static int mismatch(struct kiln_error **err, const struct kiln_digest *got,
		    const struct kiln_digest *expected)
{
	return kiln_error_set(err, -EBADMSG,
			      "content digest mismatch: got %s, expected %s",
			      KILN_DIGEST_STR(got), KILN_DIGEST_STR(expected));
}

static int set_meta(int fd, const struct kiln_blob_meta *m)
{
	const struct timespec ts[2] = {
		{ .tv_sec = m->mtime_sec, .tv_nsec = m->mtime_nsec },
		{ .tv_sec = m->mtime_sec, .tv_nsec = m->mtime_nsec },
	};

	if (fchown(fd, m->uid, m->gid) < 0 || fchmod(fd, m->mode & 07777) < 0)
		return -1;
	return futimens(fd, ts);
}

/* Give the verified temp file its final name. */
static int writer_publish(struct kiln_store_writer *w,
			  const struct kiln_digest *d, struct kiln_error **err)
{
	struct kiln_store *s = w->s;

	if (kiln_store_has(s, d))
		return 0; /* someone stored the same bytes; ours is dropped */
	if (w->has_meta && set_meta(w->fd, &w->meta) < 0)
		return kiln_error_seterrno(err, -errno, "setting metadata of blob %s",
					   KILN_DIGEST_STR(d));
	if (s->durable && fsync(w->fd) < 0)
		return kiln_error_seterrno(err, -errno, "fsync of blob %s",
					   KILN_DIGEST_STR(d));
	if (renameat(s->tmpfd, w->tmpname, s->blobsfd, BLOB_NAME(d)) < 0)
		return kiln_error_seterrno(err, -errno, "naming blob %s",
					   KILN_DIGEST_STR(d));
	w->renamed = true;
	if (s->durable && !w->defer_dir_sync && fsync(s->blobsfd) < 0)
		return kiln_error_seterrno(err, -errno, "fsync of %s/blobs/sha256",
					   s->dir);
	return 0;
}

void kiln_store_writer_defer_sync(struct kiln_store_writer *w)
{
	w->defer_dir_sync = true;
}

/* The written content's digest *d, checked against expected (may be NULL). */
static int writer_verify(struct kiln_store_writer *w, const struct kiln_digest *expected,
			 struct kiln_digest *d, struct kiln_error **err)
{
	if (w->error)
		return kiln_error_seterrno(err, w->error, "writing blob to %s/tmp",
					   w->s->dir);
	kiln_hasher_final(w->h, d);
	if (expected && !kiln_digest_eq(d, expected))
		return mismatch(err, d, expected);
	return 0;
}

int kiln_store_writer_commit(struct kiln_store_writer *w,
			     const struct kiln_digest *expected,
			     struct kiln_digest *out, struct kiln_error **err)
{
	struct kiln_digest d;
	int r = writer_verify(w, expected, &d, err);

	if (r == 0)
		r = writer_publish(w, &d, err);
	if (r == 0 && out)
		*out = d;
	writer_free(w, !w->renamed); /* a renamed temp name is gone */
	return r;
}

/* ---- group commit ---- */

struct group_member {
	char *tmpname;
	struct kiln_digest d;
};

struct kiln_store_group {
	struct kiln_store *s;
	/*
	 * The group's own descriptor for syncfs: a write error since it was
	 * opened is reported to it, whichever thread's syncfs saw it first.
	 */
	int syncfd;
	struct group_member *m;
	size_t n, alloc;
};

int kiln_store_group_new(struct kiln_store *s, struct kiln_store_group **out,
			 struct kiln_error **err)
{
	struct kiln_store_group *g;
	int fd = openat(s->tmpfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "opening %s/tmp", s->dir);
	g = xcalloc(1, sizeof(*g));
	g->s = s;
	g->syncfd = fd;
	*out = g;
	return 0;
}

int kiln_store_writer_commit_group(struct kiln_store_writer *w,
				   struct kiln_store_group *g,
				   const struct kiln_digest *expected,
				   struct kiln_error **err)
{
	struct kiln_digest d;
	int r;

	assert(w->s == g->s);
	r = writer_verify(w, expected, &d, err);
	if (r == 0 && w->has_meta && set_meta(w->fd, &w->meta) < 0)
		r = kiln_error_seterrno(err, -errno, "setting metadata of blob %s",
					KILN_DIGEST_STR(&d));
	if (r < 0) {
		writer_free(w, true);
		return r;
	}
	g->m = xgrow(g->m, &g->alloc, g->n + 1, sizeof(*g->m));
	g->m[g->n++] = (struct group_member){ .tmpname = TAKE_PTR(w->tmpname), .d = d };
	writer_free(w, false);
	return 0;
}

/* Forget every member; a temp file that was not renamed is unlinked. */
static void group_clear(struct kiln_store_group *g)
{
	size_t i;

	for (i = 0; i < g->n; i++) {
		if (g->m[i].tmpname)
			(void)unlinkat(g->s->tmpfd, g->m[i].tmpname, 0);
		free(g->m[i].tmpname);
	}
	g->n = 0;
}

void kiln_store_group_free(struct kiln_store_group *g)
{
	if (!g)
		return;
	group_clear(g);
	closep(&g->syncfd);
	free(g->m);
	free(g);
}

int kiln_store_group_commit(struct kiln_store_group *g, struct kiln_error **err)
{
	struct kiln_store *s = g->s;
	size_t i;

	if (g->n == 0)
		return 0;
	if (s->durable && syncfs(g->syncfd) < 0)
		return kiln_error_seterrno(err, -errno, "syncing the file system of %s",
					   s->dir);
	for (i = 0; i < g->n; i++) {
		struct group_member *m = &g->m[i];

		/* Present already (stored meanwhile): ours is dropped at free. */
		if (kiln_store_has(s, &m->d))
			continue;
		if (renameat(s->tmpfd, m->tmpname, s->blobsfd, BLOB_NAME(&m->d)) < 0)
			return kiln_error_seterrno(err, -errno, "naming blob %s",
						   KILN_DIGEST_STR(&m->d));
		free(TAKE_PTR(m->tmpname)); /* renamed: nothing to drop */
	}
	group_clear(g);
	return 0;
}

int kiln_store_put_buf(struct kiln_store *s, const void *data, size_t len,
		       struct kiln_digest *out, struct kiln_error **err)
{
	struct kiln_store_writer *w;
	struct kiln_digest d;
	int r;

	kiln_digest_buf(data, len, &d);
	if (kiln_store_has(s, &d)) {
		*out = d;
		return 0;
	}
	r = kiln_store_writer_begin(s, &w, err);
	if (r < 0)
		return r;
	r = kiln_store_writer_write(w, data, len);
	(void)r; /* reported by commit */
	return kiln_store_writer_commit(w, &d, out, err);
}

static ssize_t read_some(int fd, void *buf, size_t n)
{
	ssize_t k;

	do
		k = read(fd, buf, n);
	while (k < 0 && errno == EINTR);
	return k < 0 ? -errno : k;
}

static int put_fd(struct kiln_store *s, int fd, const struct kiln_digest *expected,
		  const struct kiln_blob_meta *meta, struct kiln_digest *out,
		  uint64_t *size, struct kiln_error **err);

int kiln_store_put_fd(struct kiln_store *s, int fd,
		      const struct kiln_digest *expected,
		      struct kiln_digest *out, uint64_t *size,
		      struct kiln_error **err)
{
	return put_fd(s, fd, expected, NULL, out, size, err);
}

int kiln_store_put_fd_meta(struct kiln_store *s, int fd,
			   const struct kiln_blob_meta *meta,
			   struct kiln_digest *out, uint64_t *size,
			   struct kiln_error **err)
{
	return put_fd(s, fd, NULL, meta, out, size, err);
}

static int put_fd(struct kiln_store *s, int fd, const struct kiln_digest *expected,
		  const struct kiln_blob_meta *meta, struct kiln_digest *out,
		  uint64_t *size, struct kiln_error **err)
{
	_cleanup_free_ uint8_t *buf = NULL;
	struct kiln_store_writer *w;
	uint64_t total = 0;
	ssize_t k;
	int r;

	r = kiln_store_writer_begin(s, &w, err);
	if (r < 0)
		return r;
	if (meta) {
		w->meta = *meta;
		w->has_meta = true;
	}
	buf = xmalloc(COPY_BUF);
	(void)posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	while ((k = read_some(fd, buf, COPY_BUF)) > 0) {
		if (kiln_store_writer_write(w, buf, (size_t)k) < 0)
			break;
		total += (uint64_t)k;
	}
	if (k < 0) {
		kiln_store_writer_abort(w);
		return kiln_error_seterrno(err, (int)k, "reading blob content");
	}
	r = kiln_store_writer_commit(w, expected, out, err);
	if (r == 0 && size)
		*size = total;
	return r;
}

/* ---- adopt ---- */

static int adopt_link(struct kiln_store *s, int fd, int dirfd, const char *name,
		      const struct kiln_digest *d, struct kiln_error **err)
{
	if (s->durable && fsync(fd) < 0)
		return kiln_error_seterrno(err, -errno, "fsync of %s", name);
	if (linkat(dirfd, name, s->blobsfd, BLOB_NAME(d), 0) < 0) {
		int r = -errno;

		if (r == -EEXIST)
			return 0;
		if (r != -EXDEV && r != -EMLINK && r != -EPERM)
			return kiln_error_seterrno(err, r, "linking %s into the store as %s",
						   name, KILN_DIGEST_STR(d));
		if (lseek(fd, 0, SEEK_SET) < 0)
			return kiln_error_seterrno(err, -errno, "rewinding %s", name);
		return kiln_store_put_fd(s, fd, d, NULL, NULL, err);
	}
	/* The name becomes durable with kiln_store_sync() (one per tree). */
	return 0;
}

int kiln_store_sync(struct kiln_store *s, struct kiln_error **err)
{
	if (s->durable && fsync(s->blobsfd) < 0)
		return kiln_error_seterrno(err, -errno, "fsync of %s/blobs/sha256", s->dir);
	return 0;
}

int kiln_store_adopt(struct kiln_store *s, int dirfd, const char *name,
		     struct kiln_digest *out, uint64_t *size,
		     struct kiln_error **err)
{
	_cleanup_close_ int fd = -1;
	struct kiln_digest d;
	struct stat st;
	uint64_t n;
	int r;

	fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "opening %s", name);
	if (fstat(fd, &st) < 0)
		return kiln_error_seterrno(err, -errno, "stat of %s", name);
	if (!S_ISREG(st.st_mode))
		return kiln_error_set(err, -EINVAL, "%s is not a regular file", name);
	/* Start writeback now so the fsync after hashing has less to wait for. */
	if (s->durable)
		(void)sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
	r = kiln_digest_fd(fd, &d, &n);
	if (r < 0)
		return kiln_error_seterrno(err, r, "reading %s", name);
	if (!kiln_store_has(s, &d)) {
		r = adopt_link(s, fd, dirfd, name, &d, err);
		if (r < 0)
			return r;
	}
	*out = d;
	if (size)
		*size = n;
	return 0;
}

/* ---- reading ---- */

int kiln_store_read(struct kiln_store *s, const struct kiln_digest *d,
		    size_t limit, char **data, size_t *len,
		    struct kiln_error **err)
{
	_cleanup_close_ int fd = kiln_store_open_blob(s, d);
	_cleanup_free_ char *buf = NULL;
	struct kiln_digest got;
	struct stat st;
	int r;

	if (fd < 0)
		return kiln_error_seterrno(err, fd, "opening blob %s", KILN_DIGEST_STR(d));
	if (fstat(fd, &st) < 0)
		return kiln_error_seterrno(err, -errno, "stat of blob %s",
					   KILN_DIGEST_STR(d));
	if ((uint64_t)st.st_size > limit)
		return kiln_error_set(err, -EFBIG, "blob %s is %llu bytes, limit %zu",
				      KILN_DIGEST_STR(d),
				      (unsigned long long)st.st_size, limit);
	buf = xmalloc((size_t)st.st_size + 1);
	r = kiln_read_full(fd, buf, (size_t)st.st_size);
	if (r < 0)
		return kiln_error_seterrno(err, r, "reading blob %s", KILN_DIGEST_STR(d));
	buf[st.st_size] = '\0';
	kiln_digest_buf(buf, (size_t)st.st_size, &got);
	if (!kiln_digest_eq(&got, d))
		return kiln_error_set(err, -EBADMSG, "blob %s is corrupt (content is %s)",
				      KILN_DIGEST_STR(d), KILN_DIGEST_STR(&got));
	*data = TAKE_PTR(buf);
	if (len)
		*len = (size_t)st.st_size;
	return 0;
}

int kiln_store_verify(struct kiln_store *s, const struct kiln_digest *d,
		      struct kiln_error **err)
{
	_cleanup_close_ int fd = kiln_store_open_blob(s, d);
	struct kiln_digest got;
	int r;

	if (fd < 0)
		return kiln_error_seterrno(err, fd, "opening blob %s", KILN_DIGEST_STR(d));
	r = kiln_digest_fd(fd, &got, NULL);
	if (r < 0)
		return kiln_error_seterrno(err, r, "reading blob %s", KILN_DIGEST_STR(d));
	if (!kiln_digest_eq(&got, d))
		return kiln_error_set(err, -EBADMSG, "blob %s is corrupt (content is %s)",
				      KILN_DIGEST_STR(d), KILN_DIGEST_STR(&got));
	return 0;
}

int kiln_store_remove(struct kiln_store *s, const struct kiln_digest *d)
{
	if (!digest_ok(d))
		return -EINVAL;
	return unlinkat(s->blobsfd, BLOB_NAME(d), 0) < 0 ? -errno : 0;
}

static int foreach_entry(DIR *dir, const char *name, kiln_store_iter_fn fn,
			 void *userdata)
{
	_cleanup_free_ char *full = xasprintf("sha256:%s", name);
	struct kiln_digest d;
	struct stat st;

	if (kiln_digest_parse(full, &d) < 0)
		return 0; /* not a blob name */
	if (fstatat(dirfd(dir), name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
	    !S_ISREG(st.st_mode))
		return 0; /* removed meanwhile, or junk */
	return fn(&d, (uint64_t)st.st_size, userdata);
}

int kiln_store_foreach(struct kiln_store *s, kiln_store_iter_fn fn,
		       void *userdata)
{
	struct dirent *de;
	DIR *d;
	int r = kiln_opendir_at(s->blobsfd, ".", 0, &d);

	if (r < 0)
		return r;
	while (r == 0 && (de = readdir(d)))
		r = foreach_entry(d, de->d_name, fn, userdata);
	closedir(d);
	return r;
}
