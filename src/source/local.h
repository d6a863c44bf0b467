/*
 * source.local: a build context directory, hashed into the CAS.
 *
 * Include and exclude patterns use .dockerignore semantics (Go filepath
 * patterns plus "**", "!" exceptions, last match wins). Symlinks are kept
 * as symlinks and never followed, so a link pointing outside the context
 * brings nothing from outside. A stat cache in the cache index avoids
 * re-reading unchanged files on a rebuild.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "basic/error.h"
#include "cache/index.h"
#include "cas/digest.h"
#include "cas/store.h"

struct kiln_local_stats {
	uint64_t files;
	uint64_t files_hashed; /* files actually read (stat cache misses) */
	uint64_t bytes_hashed;
};

/*
 * Hash dir (an absolute path) into a tree, keeping only what the patterns
 * select. includes == NULL means everything. cache may be NULL (no stat
 * cache). Owners are recorded as 0:0.
 */
int kiln_local_snapshot(struct kiln_store *s, struct kiln_cache *cache,
			const char *dir, const char *const *includes,
			size_t n_includes, const char *const *excludes,
			size_t n_excludes, struct kiln_digest *out,
			struct kiln_local_stats *stats,
			struct kiln_error **err);

/* A compiled list of .dockerignore-style patterns. */
struct kiln_patterns;

int kiln_patterns_new(const char *const *patterns, size_t n,
		      struct kiln_patterns **out, struct kiln_error **err);
void kiln_patterns_free(struct kiln_patterns *p);
/* Does relpath ("a/b/c") match (last matching pattern wins, "!" negates)? */
bool kiln_patterns_match(const struct kiln_patterns *p, const char *relpath);
/* Could anything below dir relpath match a "!" exception? */
bool kiln_patterns_may_match_below(const struct kiln_patterns *p,
				   const char *relpath);
/*
 * Could anything below dir relpath match a pattern that is not a "!"
 * exception? Used for include lists: a directory on the way to an include
 * pattern is walked even though it is not selected itself.
 */
bool kiln_patterns_may_include_below(const struct kiln_patterns *p,
				     const char *relpath);

/*
 * Split the text of a .dockerignore file into patterns the way Docker's
 * ignorefile.ReadAll does: a UTF-8 BOM is dropped, lines starting with '#'
 * are comments, blank lines are skipped, each pattern is trimmed, cleaned
 * and loses a leading '/' ("!" kept). *out is NULL-terminated; free it
 * with kiln_strv_free(*out, *n). Pattern syntax is checked later, by
 * kiln_patterns_new.
 */
int kiln_dockerignore_parse(const char *text, size_t len, char ***out,
			    size_t *n, struct kiln_error **err);
