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

#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <time.h>

#include "basic/alloc.h"
#include "basic/log.h"
#include "cas/tree.h"

struct snapshot {
	struct kiln_store *store;
	struct kiln_cache *cache;
	struct kiln_patterns *includes; /* NULL: everything */
	struct kiln_patterns *excludes; /* NULL: nothing */
	char *scope;                    /* realpath of the context */
	int64_t start_ns;               /* coarse clock when the walk began */
	struct kiln_local_stats stats;
};

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

static bool stat_lookup(void *ud, const char *relpath, const struct stat *st,
			struct kiln_digest *digest)
{
	struct snapshot *sn = ud;

	sn->stats.files++;
	if (sn->cache &&
	    kiln_cache_stat_get(sn->cache, sn->scope, relpath, st, digest) == 0 &&
	    kiln_store_has(sn->store, digest))
		return true;
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
		       const struct kiln_digest *digest)
{
	struct snapshot *sn = ud;
	int64_t ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 +
			   st->st_ctim.tv_nsec;

	if (!sn->cache || ctime_ns >= sn->start_ns)
		return;
	if (kiln_cache_stat_put(sn->cache, sn->scope, relpath, st, digest) < 0)
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

static void snapshot_release(struct snapshot *sn)
{
	kiln_patterns_free(sn->includes);
	kiln_patterns_free(sn->excludes);
	free(sn->scope);
}

static int snapshot_init(struct snapshot *sn, const char *dir,
			 const char *const *includes, size_t n_includes,
			 const char *const *excludes, size_t n_excludes,
			 struct kiln_error **err)
{
	char buf[PATH_MAX];
	int r = 0;

	if (!realpath(dir, buf))
		return kiln_error_seterrno(err, -errno, "build context %s", dir);
	sn->scope = xstrdup(buf);
	if (includes)
		r = compile(includes, n_includes, "build context include patterns",
			    &sn->includes, err);
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

	if (sn->cache)
		kiln_cache_begin(sn->cache);
	r = kiln_tree_from_dir(sn->store, fd, &o, out, err);
	if (sn->cache)
		rc = kiln_cache_commit(sn->cache);
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
	r = snapshot_init(&sn, dir, includes, n_includes, excludes, n_excludes,
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
