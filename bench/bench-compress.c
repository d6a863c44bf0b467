/*
 * bench-compress: making an image layer, compressed, vs the fastest tools
 * on the same bytes (issue 13 item 5).
 *
 *   bench-compress DIR WORKDIR
 *
 * DIR becomes one tree in a fresh store under WORKDIR. Measured:
 * kiln_image_layer() of that tree with gzip (level 6) and zstd (level 3):
 * the tar stream written from the CAS, its diff_id hashed, compressed
 * (gzip in parallel chunks, zstd with its workers), and the blob stored
 * and hashed. Baselines, on the uncompressed layer (written to
 * WORKDIR/layer.tar, in the page cache): `pigz -6 -p NPROC` and
 * `zstd -3 -TNPROC`, each writing a file under WORKDIR. Runs alternate,
 * BENCH_REPS times (default 3); medians. ratio = baseline s / kiln s
 * (targets: gzip >= 1.0, zstd >= 0.9).
 *
 * The floor: a layer export must also compute two SHA-256 digests the
 * tools do not (the uncompressed diff_id and the blob's digest), on the
 * same cores. `openssl dgst -sha256` of the uncompressed and the
 * compressed file is timed too, and a second ratio puts that work, spread
 * over the cores, on the baseline's side: baseline + digests / NPROC.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "bench-util.h"
#include "cas/store.h"
#include "cas/tree.h"
#include "export/image.h"

#define MAX_REPS 16

static double kiln_layer(struct kiln_store *s, const struct kiln_digest *tree,
			 enum kiln_compression c, int level, struct kiln_image_layer_info *info)
{
	struct kiln_image_opts o = { .compression = c, .level = level };
	struct kiln_error *err = NULL;
	double t0 = bench_now();

	bench_check(kiln_image_layer(s, NULL, NULL, tree, &o, info, &err), err, "kiln_image_layer");
	return bench_now() - t0;
}

/* The uncompressed layer to path, for the baselines. */
static void write_blob(struct kiln_store *s, const struct kiln_digest *d, const char *path)
{
	int in = kiln_store_open_blob(s, d), out;
	static char buf[1 << 20];
	ssize_t n;

	if (in < 0)
		bench_die("opening the layer blob: %s", strerror(-in));
	out = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (out < 0)
		bench_die("creating %s: %s", path, strerror(errno));
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (kiln_write_full(out, buf, (size_t)n) < 0)
			bench_die("writing %s: %s", path, strerror(errno));
	if (n < 0)
		bench_die("reading the layer blob: %s", strerror(errno));
	close(in);
	close(out);
}

static double run_sh(const char *cmd)
{
	const char *argv[] = { "sh", "-c", cmd, NULL };

	return bench_run(argv);
}

int main(int argc, char **argv)
{
	struct kiln_store_options so = { .durable = false };
	struct kiln_error *err = NULL;
	struct kiln_store *s = NULL;
	struct kiln_digest tree;
	struct kiln_image_layer_info plain, gz, zs;
	double kg[MAX_REPS], pg[MAX_REPS], kz[MAX_REPS], pz[MAX_REPS], hg[MAX_REPS], hz[MAX_REPS];
	unsigned reps = bench_env_uint("BENCH_REPS", 3), i;
	long nproc = sysconf(_SC_NPROCESSORS_ONLN);
	_cleanup_free_ char *store = NULL, *tar = NULL, *pigz = NULL, *zstd = NULL;
	_cleanup_free_ char *hgz = NULL, *hzs = NULL;
	double mib, kgm, pgm, kzm, pzm, hgm, hzm, fg, fz;
	int dfd;

	bench_name = "bench-compress";
	if (argc != 3)
		bench_die("usage: bench-compress DIR WORKDIR");
	if (reps < 1 || reps > MAX_REPS)
		reps = 3;
	store = kiln_path_join(argv[2], "store");
	tar = kiln_path_join(argv[2], "layer.tar");
	bench_check(kiln_store_open(store, &so, &s, &err), err, "opening the store");
	dfd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		bench_die("opening %s: %s", argv[1], strerror(errno));
	bench_check(kiln_tree_from_dir(s, dfd, NULL, &tree, &err), err, "hashing the directory");
	close(dfd);
	(void)kiln_layer(s, &tree, KILN_COMPRESS_NONE, 0, &plain);
	write_blob(s, &plain.digest, tar);
	mib = (double)plain.size / (1024.0 * 1024.0);
	pigz = xasprintf("pigz -6 -p %ld -c '%s' > '%s/out.gz'", nproc, tar, argv[2]);
	zstd = xasprintf("zstd -q -3 -T%ld -c '%s' > '%s/out.zst'", nproc, tar, argv[2]);
	hgz = xasprintf("openssl dgst -sha256 '%s' '%s/out.gz' >/dev/null", tar, argv[2]);
	hzs = xasprintf("openssl dgst -sha256 '%s' '%s/out.zst' >/dev/null", tar, argv[2]);
	for (i = 0; i < reps; i++) {
		kg[i] = kiln_layer(s, &tree, KILN_COMPRESS_GZIP, 6, &gz);
		pg[i] = run_sh(pigz);
		hg[i] = run_sh(hgz);
		kz[i] = kiln_layer(s, &tree, KILN_COMPRESS_ZSTD, 3, &zs);
		pz[i] = run_sh(zstd);
		hz[i] = run_sh(hzs);
	}
	kgm = bench_median(kg, reps);
	pgm = bench_median(pg, reps);
	kzm = bench_median(kz, reps);
	pzm = bench_median(pz, reps);
	hgm = bench_median(hg, reps);
	hzm = bench_median(hz, reps);
	fg = pgm + hgm / (double)nproc;
	fz = pzm + hzm / (double)nproc;
	printf("   %s: %.0f MiB uncompressed, %ld cores, %u runs each (medians)\n", argv[1], mib,
	       nproc, reps);
	printf("   gzip -6: kiln %.2f s (%.0f MiB/s, %llu bytes), pigz -p%ld %.2f s (%.0f MiB/s); ratio %.2f\n",
	       kgm, mib / kgm, (unsigned long long)gz.size, nproc, pgm, mib / pgm, pgm / kgm);
	printf("   zstd -3: kiln %.2f s (%.0f MiB/s, %llu bytes), zstd -T%ld %.2f s (%.0f MiB/s); ratio %.2f\n",
	       kzm, mib / kzm, (unsigned long long)zs.size, nproc, pzm, mib / pzm, pzm / kzm);
	printf("   the digests a layer needs besides (openssl, one core): %.2f s gzip, %.2f s zstd;\n"
	       "   with them spread over %ld cores on the tools' side: gzip %.2f, zstd %.2f\n",
	       hgm, hzm, nproc, fg / kgm, fz / kzm);
	printf("RESULT bench-compress %s gzip kiln/pigz %.2f (%.2f with the digests) zstd kiln/zstd %.2f (%.2f) (>= 1.0, >= 0.9 wanted)\n",
	       argv[1], pgm / kgm, fg / kgm, pzm / kzm, fz / kzm);
	kiln_store_free(s);
	return 0;
}
