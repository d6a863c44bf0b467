/*
 * bench-snapshot-small: the exec snapshot path on many small files.
 *
 * 50,000 files of 4 KiB in 250 directories (25 x 10 x 200), written and
 * synced first. Measured: kiln_tree_apply_layer(fresh durable store, NULL
 * base, dir, adopt) as an exec's snapshot does it. Baseline: one thread
 * walking the same tree with readdir and hashing every file
 * (open/read/EVP SHA-256/close). Both read from the page cache.
 * ratio = kiln files/s / baseline files/s. For information, the same kiln
 * call on a non-durable store shows what the fsyncs cost.
 */
#include <dirent.h>
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

#define FILES_PER_DIR 200
#define FILE_SIZE 4096
#define MAX_REPS 16

struct hash_walk {
	EVP_MD_CTX *ctx;
	uint8_t buf[65536];
	size_t files;
};

static void hash_file(struct hash_walk *h, int dirfd, const char *name)
{
	uint8_t md[EVP_MAX_MD_SIZE];
	unsigned int len;
	ssize_t k;
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		bench_die("open %s: %s", name, strerror(errno));
	EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL);
	while ((k = read(fd, h->buf, sizeof(h->buf))) > 0)
		EVP_DigestUpdate(h->ctx, h->buf, (size_t)k);
	if (k < 0)
		bench_die("read %s: %s", name, strerror(errno));
	EVP_DigestFinal_ex(h->ctx, md, &len);
	close(fd);
	h->files++;
}

static void hash_dir(struct hash_walk *h, int dirfd)
{
	DIR *d = fdopendir(dirfd);
	struct dirent *de;

	if (!d)
		bench_die("fdopendir: %s", strerror(errno));
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (de->d_type == DT_DIR) {
			int fd = openat(dirfd, de->d_name,
					O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (fd < 0)
				bench_die("open %s: %s", de->d_name, strerror(errno));
			hash_dir(h, fd);
		} else if (de->d_type == DT_REG) {
			hash_file(h, dirfd, de->d_name);
		}
	}
	closedir(d);
}

static double baseline(const char *dir, size_t expect)
{
	static struct hash_walk h;
	double t0 = bench_now();
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		bench_die("open %s: %s", dir, strerror(errno));
	h.ctx = EVP_MD_CTX_new();
	h.files = 0;
	hash_dir(&h, fd);
	EVP_MD_CTX_free(h.ctx);
	if (h.files != expect)
		bench_die("baseline hashed %zu files, expected %zu", h.files, expect);
	return bench_now() - t0;
}

static double kiln_once(const char *tmp, const char *data, bool durable,
			unsigned rep, size_t expect)
{
	_cleanup_free_ char *sdir = xasprintf("%s/store-%u", tmp, rep);
	struct kiln_store_options so = { .durable = durable };
	struct kiln_tree_build_opts bo = { .adopt = true };
	struct kiln_error *err = NULL;
	struct kiln_store *s = NULL;
	struct kiln_digest root;
	uint64_t bytes = 0, entries = 0;
	double t0, t;
	int dfd, r;

	bench_check(kiln_store_open(sdir, &so, &s, &err), err, "opening store");
	dfd = open(data, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		bench_die("open %s: %s", data, strerror(errno));
	t0 = bench_now();
	r = kiln_tree_apply_layer(s, NULL, dfd, &bo, &root, &err);
	t = bench_now() - t0;
	bench_check(r, err, "kiln_tree_apply_layer");
	close(dfd);
	bench_check(kiln_tree_usage(s, &root, &bytes, &entries, &err), err,
		    "kiln_tree_usage");
	if (bytes != (uint64_t)expect * FILE_SIZE)
		bench_die("tree holds %llu bytes, expected %llu",
			  (unsigned long long)bytes,
			  (unsigned long long)expect * FILE_SIZE);
	kiln_store_free(s);
	bench_check(kiln_rm_rf(sdir), NULL, "removing the store");
	/* Writeback of the removal must not land in the next measurement. */
	bench_syncfs(tmp);
	return t;
}

int main(void)
{
	unsigned reps = bench_env_uint("BENCH_REPS", 3), i;
	double tb[MAX_REPS], tk[MAX_REPS], tn[MAX_REPS], mb, mk, mn, t0;
	_cleanup_free_ char *tmp = NULL, *data = NULL;
	size_t n;

	bench_name = "bench-snapshot-small";
	setvbuf(stdout, NULL, _IOLBF, 0);
	bench_require_root();
	if (reps > MAX_REPS)
		bench_die("BENCH_REPS is at most %d", MAX_REPS);
	tmp = bench_mkdtemp("small");
	data = xasprintf("%s/data", tmp);
	if (mkdir(data, 0755) < 0)
		bench_die("mkdir %s: %s", data, strerror(errno));
	printf("%s: writing 250 dirs x %d files of %d bytes under %s\n",
	       bench_name, FILES_PER_DIR, FILE_SIZE, data);
	t0 = bench_now();
	n = bench_make_small_tree(data, FILES_PER_DIR, FILE_SIZE);
	printf("  setup: %zu files written in %.1f s\n", n, bench_now() - t0);
	(void)baseline(data, n); /* warm-up: dentries and pages cached */
	for (i = 0; i < reps; i++) {
		tb[i] = baseline(data, n);
		tk[i] = kiln_once(tmp, data, true, 2 * i, n);
		tn[i] = kiln_once(tmp, data, false, 2 * i + 1, n);
		printf("  rep %u: baseline %.3f s, kiln durable %.3f s, kiln non-durable %.3f s\n",
		       i + 1, tb[i], tk[i], tn[i]);
	}
	mb = bench_median(tb, reps);
	mk = bench_median(tk, reps);
	mn = bench_median(tn, reps);
	printf("RESULT snapshot-small %zu x 4KiB: baseline hash %.0f files/s (%.3f s) | "
	       "kiln apply_layer(adopt, durable) %.0f files/s (%.3f s) | ratio %.2f "
	       "[median of %u]\n",
	       n, (double)n / mb, mb, (double)n / mk, mk, mb / mk, reps);
	printf("RESULT snapshot-small (info) kiln apply_layer(adopt, non-durable) "
	       "%.0f files/s (%.3f s) | ratio %.2f\n",
	       (double)n / mn, mn, mb / mn);
	return 0;
}
