/*
 * Helpers shared by the benchmarks: timing, medians, scratch directories
 * that are cleaned up on every exit path, data generation and spawning
 * baseline commands. Benchmarks are run by hand (bench/README.md); timing
 * is printed, never asserted.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "basic/macro.h"

/* Seconds on the monotonic clock. */
double bench_now(void);

/* Median of v (sorted in place); 0 when n is 0. */
double bench_median(double *v, size_t n);

/* Print "NAME: error: ..." and exit 1 (cleanup handlers run). */
_noreturn_ void bench_die(const char *fmt, ...) _printf_(1, 2);

/* Exit through bench_die when r < 0, with err's message when set. */
void bench_check(int r, struct kiln_error *err, const char *what);

/* Name printed in messages; set once by each benchmark's main(). */
extern const char *bench_name;

/* Exit with a clear message unless running as root. */
void bench_require_root(void);

/*
 * A new directory /var/tmp/kiln-bench-<name>.XXXXXX (same file system as
 * the rest of /var/tmp, so hardlinks work), removed at exit together with
 * anything mounted below it. Caller frees the path.
 */
char *bench_mkdtemp(const char *name);

/* Remember a mount point to unmount at exit (before directories go). */
void bench_cleanup_mount(const char *path);

/* Fill buf with pseudo-random bytes (xorshift64*), advancing *state. */
void bench_fill(uint64_t *state, void *buf, size_t n);

/*
 * Write dirfd/name with size pseudo-random bytes derived from seed, mode
 * 0644, and fsync it when sync is set.
 */
void bench_write_file(int dirfd, const char *name, uint64_t size,
		      uint64_t seed, bool sync);

/*
 * Make the benchmarks' standard small-file tree under dir: 25 top
 * directories x 10 subdirectories x files_per_dir files of file_size bytes,
 * each with distinct content. Returns the number of files written. Calls
 * syncfs() at the end so later measurements do not pay for writeback.
 */
size_t bench_make_small_tree(const char *dir, size_t files_per_dir,
			     size_t file_size);

/* syncfs() of the file system holding path. */
void bench_syncfs(const char *path);

/*
 * Run argv (argv[0] looked up in PATH) with stdin and stdout from/to
 * /dev/null and stderr kept, wait for it and return the elapsed seconds.
 * Dies when it cannot be started or exits non-zero.
 */
double bench_run(const char *const *argv);

/* Value of environment variable name as a positive integer, or def. */
unsigned bench_env_uint(const char *name, unsigned def);
