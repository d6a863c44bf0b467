/*
 * source.local: hash a build context directory into the CAS.
 *
 * Selection follows BuildKit's fsutil walker: a path is kept when it or a
 * parent matches an include pattern (when there are any) and the exclude
 * patterns (.dockerignore) do not exclude it; a directory that is not kept
 * is still walked when an include or a "!" exception could select
 * something below it, and it then appears only if something in it was kept.
 */
#include "source/local.h"

#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/stat.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/strv.h"
#include "cas/tree.h"

struct snapshot {
	struct kiln_store *store;
	struct kiln_cache *cache;
	struct kiln_patterns *includes; /* NULL: everything */
	struct kiln_patterns *excludes; /* NULL: nothing */
	char *scope;                    /* realpath of the context */
	int64_t start_ns;               /* coarse clock when the walk began */
	/* The scope's stat rows, read at once (NULL: asked file by file). */
	struct kiln_stat_snapshot *rows;
	struct kiln_local_stats stats;
};

/* Most stat rows read into memory at once (about 100 bytes each). */
#define STAT_ROWS_MAX 2000000u

static bool selected(struct snapshot *sn, const char *relpath)
{
	if (sn->includes && !kiln_patterns_match(sn->includes, relpath))
		return false;
	return !kiln_patterns_match(sn->excludes, relpath);
}

static bool filter(void *ud, const char *relpath, bool is_dir)
{
	return selected(ud, relpath);
}

static bool filter_descend(void *ud, const char *relpath)
{
	struct snapshot *sn = ud;

	if (sn->includes && !kiln_patterns_match(sn->includes, relpath) &&
	    !kiln_patterns_may_include_below(sn->includes, relpath))
		return false;
	return !kiln_patterns_match(sn->excludes, relpath) ||
	       kiln_patterns_may_match_below(sn->excludes, relpath);
}

/*
 * The stat cache's rows are trusted to name blobs in the store: the one
 * thing that removes blobs from a client's store, `kiln prune`, forgets
 * them all (kiln_cache_stat_clear).
 */
static bool stat_lookup(void *ud, const char *relpath, const struct stat *st,
			struct kiln_digest *digest, bool *no_xattrs)
{
	struct snapshot *sn = ud;
	int xattrs = -1;

	sn->stats.files++;
	if (sn->cache &&
	    (sn->rows ? kiln_stat_snapshot_get(sn->rows, relpath, st, digest, &xattrs)
		      : kiln_cache_stat_get(sn->cache, sn->scope, relpath, st, digest, &xattrs)) == 0) {
		*no_xattrs = xattrs == 0;
		return true;
	}
	sn->stats.files_hashed++;
	sn->stats.bytes_hashed += (uint64_t)st->st_size;
	return false;
}

/*
 * A file whose ctime is not strictly before the walk began may be written
 * again within the same clock tick without any stat field changing (file
 * times come from the coarse clock), so its digest is not remembered: the
 * next snapshot hashes it again. ctime, unlike mtime, cannot be set back.
 */
static void stat_store(void *ud, const char *relpath, const struct stat *st,
		       const struct kiln_digest *digest, bool xattrs)
{
	struct snapshot *sn = ud;
	int64_t ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 +
			   st->st_ctim.tv_nsec;

	if (!sn->cache || ctime_ns >= sn->start_ns)
		return;
	if (kiln_cache_stat_put(sn->cache, sn->scope, relpath, st, digest, xattrs) < 0)
		log_debug("local: stat cache put of %s failed", relpath);
}

static int64_t coarse_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int compile(const char *const *pats, size_t n, const char *what,
		   struct kiln_patterns **out, struct kiln_error **err)
{
	int r = kiln_patterns_new(pats, n, out, err);

	if (r < 0)
		kiln_error_prefix(err, "%s", what);
	return r;
}

/*
 * ---- following symlinks named by the include paths ----
 *
 * BuildKit's Dockerfile frontend gives the context its COPY sources as
 * FollowPaths, and fsutil's walker adds FollowLinks(root, paths) to the
 * include patterns (tonistiigi/fsutil followlinks.go): every component of
 * a path that is a symlink is kept and its target followed, so that a
 * later copy that follows the link finds the target in the narrowed
 * context. Targets are context paths: an absolute link or one with ".."
 * is cleaned against the context's root and never leaves it, and the
 * walk only lstat()s and readlink()s paths whose leading components are
 * real directories (a symlink component is never traversed).
 */
#define FOLLOW_DEPTH_MAX 255

struct follow {
	int rootfd;
	char **v;
	size_t n, alloc;
	unsigned depth;
	struct kiln_error **err;
};

static bool follow_has(const struct follow *f, const char *p)
{
	size_t i;

	for (i = 0; i < f->n; i++)
		if (!strcmp(f->v[i], p))
			return true;
	return false;
}

static void follow_add(struct follow *f, const char *p)
{
	if (follow_has(f, p))
		return;
	f->v = xgrow(f->v, &f->alloc, f->n + 1, sizeof(*f->v));
	f->v[f->n++] = xstrdup(p);
}

static bool not_found(int e)
{
	return e == ENOENT || e == ENOTDIR;
}

/* The context path a link at p (relative, cleaned) points to. */
static char *link_target(const char *p, const char *link)
{
	_cleanup_free_ char *dir = xstrdup(p), *j = NULL;
	char *slash = strrchr(dir, '/');

	if (link[0] == '/')
		return kiln_path_clean(link);
	if (slash)
		*slash = '\0';
	else
		dir[0] = '\0';
	j = kiln_path_join(dir, link);
	return kiln_path_clean(j);
}

static int add_str(char ***v, size_t *n, size_t *alloc, char *s)
{
	*v = xgrow(*v, alloc, *n + 1, sizeof(**v));
	(*v)[(*n)++] = s;
	return 0;
}

/* fsutil's readSymlink: the targets of p (or of the names its wildcard
 * last component matches); none when nothing there is a symlink. */
static int read_links(struct follow *f, const char *p, bool wildcard, char ***out,
		      size_t *n, size_t *alloc)
{
	const char *base = strrchr(p, '/');
	char link[PATH_MAX];
	struct stat st;
	ssize_t len;

	base = base ? base + 1 : p;
	if (!*p)
		return 0; /* the root */
	if (wildcard && kiln_path_has_glob(base)) {
		_cleanup_free_ char *dir = xstrndup(p, (size_t)(base - p));
		struct dirent *de;
		DIR *d;
		int fd, r = 0;

		fd = openat(f->rootfd, *dir ? dir : ".",
			    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0)
			return not_found(errno) || errno == ELOOP ? 0
				: kiln_error_seterrno(f->err, -errno, "readdir %s", dir);
		d = fdopendir(fd);
		if (!d) {
			close(fd);
			return kiln_error_seterrno(f->err, -errno, "readdir %s", dir);
		}
		while (r == 0 && (de = readdir(d))) {
			_cleanup_free_ char *sub = NULL;

			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
			    fnmatch(base, de->d_name, 0) != 0)
				continue;
			sub = xasprintf("%s%s", dir, de->d_name);
			r = read_links(f, sub, false, out, n, alloc);
		}
		closedir(d);
		return r;
	}
	if (fstatat(f->rootfd, p, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return not_found(errno) ? 0 : kiln_error_seterrno(f->err, -errno, "lstat %s", p);
	if (!S_ISLNK(st.st_mode))
		return 0;
	len = readlinkat(f->rootfd, p, link, sizeof(link) - 1);
	if (len < 0)
		return kiln_error_seterrno(f->err, -errno, "readlink %s", p);
	link[len] = '\0';
	return add_str(out, n, alloc, link_target(p, link));
}

/* fsutil's symlinkResolver.append; "" is the context's root. */
static int follow_append(struct follow *f, const char *path)
{
	_cleanup_free_ char *current = xstrdup(""), *rest = xstrdup(path);
	int r = 0;

	if (++f->depth > FOLLOW_DEPTH_MAX) {
		f->depth--;
		return kiln_error_set(f->err, -ELOOP, "%s: too many levels of symbolic links",
				      path);
	}
	for (;;) {
		char *slash = strchr(rest, '/'), **targets = NULL, *next;
		size_t nt = 0, at = 0, i;
		_cleanup_free_ char *joined = NULL;

		if (slash)
			*slash = '\0';
		joined = kiln_path_join(current, rest);
		free(current);
		current = kiln_path_clean(joined);
		r = read_links(f, current, true, &targets, &nt, &at);
		next = xstrdup(slash ? slash + 1 : "");
		free(rest);
		rest = next;
		if (r == 0 && (!*rest || nt) && follow_has(f, current)) {
			kiln_strv_free(targets, nt);
			break;
		}
		if (r == 0 && nt) {
			follow_add(f, current);
			for (i = 0; r == 0 && i < nt; i++) {
				_cleanup_free_ char *t = kiln_path_join(targets[i], rest);
				_cleanup_free_ char *ct = kiln_path_clean(t);

				r = follow_append(f, ct);
			}
			kiln_strv_free(targets, nt);
			break;
		}
		kiln_strv_free(targets, nt);
		if (r < 0)
			break;
		if (!*rest) {
			follow_add(f, current);
			break;
		}
	}
	f->depth--;
	return r;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * FollowLinks: the include paths and the symlink targets they lead to,
 * sorted, with paths below another dropped. *all is set when one of them
 * is the root (no narrowing).
 */
static int follow_links(int rootfd, const char *const *paths, size_t n, char ***out,
			size_t *nout, bool *all, struct kiln_error **err)
{
	struct follow f = { .rootfd = rootfd, .err = err };
	char **v = NULL, *last = NULL;
	size_t i, nv = 0, av = 0;
	int r = 0;

	*all = false;
	for (i = 0; r == 0 && i < n; i++)
		r = follow_append(&f, paths[i]);
	if (r == 0 && f.n)
		qsort(f.v, f.n, sizeof(*f.v), cmp_str);
	for (i = 0; r == 0 && i < f.n; i++) {
		size_t l = last ? strlen(last) : 0;

		if (!*f.v[i]) {
			*all = true;
			break;
		}
		if (last && !strncmp(f.v[i], last, l) && f.v[i][l] == '/')
			continue;
		add_str(&v, &nv, &av, xstrdup(f.v[i]));
		last = f.v[i];
	}
	kiln_strv_free(f.v, f.n);
	if (r < 0 || *all) {
		kiln_strv_free(v, nv);
		v = NULL;
		nv = 0;
	}
	*out = v;
	*nout = nv;
	return r;
}

static void snapshot_release(struct snapshot *sn)
{
	kiln_patterns_free(sn->includes);
	kiln_patterns_free(sn->excludes);
	free(sn->scope);
}

static int snapshot_init(struct snapshot *sn, int fd, const char *dir,
			 const char *const *includes, size_t n_includes,
			 const char *const *excludes, size_t n_excludes,
			 struct kiln_error **err)
{
	char buf[PATH_MAX], **followed = NULL;
	size_t n_followed = 0;
	bool all = false;
	int r = 0;

	if (!realpath(dir, buf))
		return kiln_error_seterrno(err, -errno, "build context %s", dir);
	sn->scope = xstrdup(buf);
	if (includes) {
		r = follow_links(fd, includes, n_includes, &followed, &n_followed, &all, err);
		if (r < 0)
			kiln_error_prefix(err, "build context %s: following include paths", dir);
	}
	if (r == 0 && includes && !all)
		r = compile((const char *const *)followed, n_followed,
			    "build context include patterns", &sn->includes, err);
	kiln_strv_free(followed, n_followed);
	if (r == 0 && n_excludes)
		r = compile(excludes, n_excludes, "build context exclude patterns",
			    &sn->excludes, err);
	sn->start_ns = coarse_now_ns();
	return r;
}

static int walk(struct snapshot *sn, int fd, struct kiln_digest *out,
		struct kiln_error **err)
{
	struct kiln_tree_build_opts o = {
		.adopt = false, /* a context is the user's: never link it */
		.zero_owner = true,
		.filter = filter,
		.filter_descend = filter_descend,
		.stat_lookup = stat_lookup,
		.stat_store = stat_store,
		.ud = sn,
	};
	int r, rc = 0;

	/* One query for the scope, not one per file (too many rows: per file). */
	if (sn->cache && kiln_cache_stat_snapshot(sn->cache, sn->scope, STAT_ROWS_MAX, &sn->rows,
						  NULL) < 0)
		sn->rows = NULL;
	if (sn->cache)
		kiln_cache_begin(sn->cache);
	r = kiln_tree_from_dir(sn->store, fd, &o, out, err);
	if (sn->cache)
		rc = kiln_cache_commit(sn->cache);
	kiln_stat_snapshot_free(TAKE_PTR(sn->rows));
	if (rc < 0)
		log_debug("local: stat cache commit for %s failed: %d",
			  sn->scope, rc);
	return r;
}

int kiln_local_snapshot(struct kiln_store *s, struct kiln_cache *cache,
			const char *dir, const char *const *includes,
			size_t n_includes, const char *const *excludes,
			size_t n_excludes, struct kiln_digest *out,
			struct kiln_local_stats *stats,
			struct kiln_error **err)
{
	struct snapshot sn = { .store = s, .cache = cache };
	_cleanup_close_ int fd = -1;
	int r;

	if (stats)
		memset(stats, 0, sizeof(*stats));
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "build context %s", dir);
	r = snapshot_init(&sn, fd, dir, includes, n_includes, excludes, n_excludes,
			  err);
	if (r == 0) {
		r = walk(&sn, fd, out, err);
		if (r < 0)
			kiln_error_prefix(err, "build context %s", dir);
	}
	if (r == 0 && stats)
		*stats = sn.stats;
	snapshot_release(&sn);
	return r;
}
