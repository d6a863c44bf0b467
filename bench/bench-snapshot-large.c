/*
 * bench-snapshot-large: the exec snapshot path on large files.
 *
 * Measured: kiln_tree_apply_layer(fresh durable store, NULL base, dir,
 * adopt) — hash every file, hardlink it into the CAS, fsync, write the
 * tree nodes. Baseline: one thread of raw OpenSSL EVP SHA-256 over the same
 * files with 1 MiB reads. Both read from the page cache (the files were
 * just written and fsynced, so neither pays for disk reads or writeback;
 * no warm-up pass is needed). kiln hashes up to 4 files at once on
 * separate threads, so with several files it can beat the baseline.
 * ratio = baseline seconds / kiln seconds (>= 0.8 is the target).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "bench-util.h"
#include "cas/store.h"
#include "cas/tree.h"

#define READ_BUF (1u << 20)
#define MAX_FILES 8
#define MIB (1024ull * 1024)

struct dataset {
	const char *label;
	size_t n_files;
	uint64_t file_size;
	char *dir;
	struct kiln_digest digests[MAX_FILES]; /* from the baseline */
};

static void file_name(size_t i, char buf[32])
{
	snprintf(buf, 32, "f%zu.bin", i);
}

static void make_dataset(const char *tmp, struct dataset *ds)
{
	char name[32];
	int dfd;
	size_t i;

	ds->dir = xasprintf("%s/%s", tmp, ds->label);
	if (mkdir(ds->dir, 0755) < 0)
		bench_die("mkdir %s: %s", ds->dir, strerror(errno));
	dfd = open(ds->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		bench_die("open %s: %s", ds->dir, strerror(errno));
	for (i = 0; i < ds->n_files; i++) {
		file_name(i, name);
		bench_write_file(dfd, name, ds->file_size, 1000 + i, true);
	}
	if (fsync(dfd) < 0)
		bench_die("fsync %s: %s", ds->dir, strerror(errno));
	close(dfd);
}

/* One thread, 1 MiB reads, EVP SHA-256: the speed kiln should approach. */
static double baseline(struct dataset *ds)
{
	static uint8_t *buf;
	double t0 = bench_now();
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	char name[32];
	size_t i;

	if (!buf)
		buf = xmalloc(READ_BUF);
	for (i = 0; i < ds->n_files; i++) {
		_cleanup_free_ char *p = NULL;
		unsigned int len = 0;
		ssize_t k;
		int fd;

		file_name(i, name);
		p = xasprintf("%s/%s", ds->dir, name);
		fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			bench_die("open %s: %s", p, strerror(errno));
		EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
		while ((k = read(fd, buf, READ_BUF)) > 0)
			EVP_DigestUpdate(ctx, buf, (size_t)k);
		if (k < 0)
			bench_die("read %s: %s", p, strerror(errno));
		EVP_DigestFinal_ex(ctx, ds->digests[i].bytes, &len);
		ds->digests[i].algo = KILN_DIGEST_SHA256;
		close(fd);
	}
	EVP_MD_CTX_free(ctx);
	return bench_now() - t0;
}

/* Every file's blob digest matches the baseline and is a hardlink. */
static void verify(struct kiln_store *s, const struct kiln_digest *root,
		   struct dataset *ds)
{
	struct kiln_error *err = NULL;
	char name[32];
	size_t i;

	for (i = 0; i < ds->n_files; i++) {
		_cleanup_free_ char *p = NULL;
		struct kiln_tree_entry e;
		struct stat st;

		file_name(i, name);
		bench_check(kiln_tree_lookup(s, root, name, &e, &err), err, name);
		if (!kiln_digest_eq(&e.digest, &ds->digests[i]))
			bench_die("%s/%s: kiln digest %s, OpenSSL %s", ds->label,
				  name, KILN_DIGEST_STR(&e.digest),
				  KILN_DIGEST_STR(&ds->digests[i]));
		kiln_tree_entry_release(&e);
		p = xasprintf("%s/%s", ds->dir, name);
		if (stat(p, &st) < 0 || st.st_nlink != 2)
			bench_die("%s was not adopted by a hardlink (nlink %lu)", p,
				  (unsigned long)st.st_nlink);
	}
}

static double kiln_once(const char *tmp, struct dataset *ds, unsigned rep)
{
	_cleanup_free_ char *sdir = xasprintf("%s/store-%u", tmp, rep);
	struct kiln_store_options so = { .durable = true };
	struct kiln_tree_build_opts bo = { .adopt = true };
	struct kiln_error *err = NULL;
	struct kiln_store *s = NULL;
	struct kiln_digest root;
	double t0, t;
	int dfd, r;

	bench_check(kiln_store_open(sdir, &so, &s, &err), err, "opening store");
	dfd = open(ds->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		bench_die("open %s: %s", ds->dir, strerror(errno));
	t0 = bench_now();
	r = kiln_tree_apply_layer(s, NULL, dfd, &bo, &root, &err);
	t = bench_now() - t0;
	bench_check(r, err, "kiln_tree_apply_layer");
	close(dfd);
	verify(s, &root, ds);
	kiln_store_free(s);
	r = kiln_rm_rf(sdir); /* drops the hardlinks again */
	bench_check(r, NULL, "removing the store");
	return t;
}

static void run_dataset(const char *tmp, struct dataset *ds, unsigned reps)
{
	double tb[16], tk[16], bytes = (double)ds->n_files * (double)ds->file_size;
	double mb, mk;
	unsigned i;

	for (i = 0; i < reps; i++) {
		tb[i] = baseline(ds);
		tk[i] = kiln_once(tmp, ds, i);
		printf("  %s rep %u: baseline %.3f s, kiln %.3f s\n", ds->label,
		       i + 1, tb[i], tk[i]);
	}
	mb = bench_median(tb, reps);
	mk = bench_median(tk, reps);
	printf("RESULT snapshot-large %s: baseline sha256 %.3f s (%.2f GB/s) | "
	       "kiln apply_layer(adopt, durable) %.3f s (%.2f GB/s) | ratio %.2f "
	       "(target >= 0.8) [median of %u; %zu/%zu files hardlinked, digests match]\n",
	       ds->label, mb, bytes / mb / 1e9, mk, bytes / mk / 1e9, mb / mk,
	       reps, ds->n_files, ds->n_files);
}

int main(void)
{
	struct dataset sets[] = {
		{ .label = "4x256MiB", .n_files = 4, .file_size = 256 * MIB },
		{ .label = "1x1GiB", .n_files = 1, .file_size = 1024 * MIB },
	};
	unsigned reps = bench_env_uint("BENCH_REPS", 3);
	_cleanup_free_ char *tmp = NULL;
	size_t i;

	bench_name = "bench-snapshot-large";
	setvbuf(stdout, NULL, _IOLBF, 0);
	bench_require_root();
	if (reps > 16)
		bench_die("BENCH_REPS is at most 16");
	tmp = bench_mkdtemp("large");
	printf("%s: writing 2 GiB of test data under %s (fsynced)\n", bench_name,
	       tmp);
	for (i = 0; i < ARRAY_SIZE(sets); i++)
		make_dataset(tmp, &sets[i]);
	bench_syncfs(tmp);
	for (i = 0; i < ARRAY_SIZE(sets); i++) {
		run_dataset(tmp, &sets[i], reps);
		free(sets[i].dir);
	}
	return 0;
}
