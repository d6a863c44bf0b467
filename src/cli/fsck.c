/*
 * kiln debug fsck: check the local state.
 *
 * Every blob in the CAS is rehashed; then every cache record's output
 * trees are walked (through the GC's mark, which shares complete subtrees
 * between records) and every blob its meta JSON lists is looked up. Each
 * missing or corrupt blob is printed with the record that needs it.
 * With --worker-root, a kiln-worker's state: its CAS, and every tree its
 * inventory announces (what kilnd will send other workers to fetch).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/args.h"
#include "basic/fs-util.h"
#include "cas/gc.h"
#include "cli/common.h"

struct fsck {
	struct kiln_engine e;
	struct kiln_store *store; /* the engine's, or --worker-root's */
	struct kiln_digest_set *corrupt;
	struct kiln_digest_set *marked;
	uint64_t blobs, records, problems;
	const char *key; /* record being checked */
};

static void debug_usage(FILE *f)
{
	fputs("Usage: kiln debug COMMAND\n"
	      "\n"
	      "Commands:\n"
	      "  fsck    verify every blob and every cache record's trees\n"
	      "  ops     each op of an op graph with its digest\n",
	      f);
}

static void fsck_usage(FILE *f)
{
	fputs("Usage: kiln debug fsck [--worker-root DIR]\n"
	      "\n"
	      "Rehash every blob in the CAS and check that every cache record's\n"
	      "result trees (and the blobs its metadata lists) are present and\n"
	      "intact. Exits 0 only when nothing is wrong.\n"
	      "\n"
	      "  --worker-root DIR  check a kiln-worker's --root instead (stopped):\n"
	      "                     its CAS and every tree its inventory lists\n",
	      f);
}

static int fsck_blob(const struct kiln_digest *d, uint64_t size, void *ud)
{
	struct fsck *f = ud;
	_cleanup_error_ struct kiln_error *err = NULL;
	int r;

	f->blobs++;
	r = kiln_store_verify(f->store, d, &err);
	if (r < 0) {
		printf("fsck: %s\n", kiln_error_msg(err));
		kiln_digest_set_add(f->corrupt, d);
		f->problems++;
	}
	return 0;
}

static void fsck_problem(const struct kiln_digest *d, int code, void *ud)
{
	struct fsck *f = ud;

	printf("fsck: record %s: %s blob %s\n", f->key,
	       code == -ENOENT ? "missing" : "corrupt", KILN_DIGEST_STR(d));
	f->problems++;
}

/* Each blob a record's meta names must be present and intact. */
static void fsck_meta_blob(void *ud, size_t i, const struct kiln_digest *d)
{
	struct fsck *f = ud;

	if (!d) {
		printf("fsck: record %s: meta blobs[%zu] is not a digest\n", f->key, i);
		f->problems++;
	} else if (kiln_digest_set_has(f->corrupt, d)) {
		fsck_problem(d, -EBADMSG, f);
	} else if (!kiln_store_has(f->store, d)) {
		fsck_problem(d, -ENOENT, f);
	}
}

static int fsck_record(const struct kiln_cache_record *r, void *ud)
{
	struct fsck *f = ud;
	const struct kiln_gc_mark_opts opts = {
		.corrupt = f->corrupt, .problem = fsck_problem, .ud = f,
	};
	size_t i;

	f->records++;
	f->key = r->key;
	for (i = 0; i < r->n_outputs; i++) {
		_cleanup_error_ struct kiln_error *err = NULL;
		int q = kiln_gc_mark_tree_opts(f->store,
					       &r->outputs[i], f->marked, &opts,
					       &err);

		/* Data problems were printed by fsck_problem already. */
		if (q < 0 && q != -ENOENT && q != -EBADMSG && q != -EINVAL) {
			printf("fsck: record %s: %s\n", r->key,
			       kiln_error_msg(err));
			f->problems++;
		}
	}
	kiln_cache_meta_blobs(r->meta, fsck_meta_blob, f);
	f->key = NULL;
	return 0;
}

/* A worker's inventory: each tree it lists is checked like a record's. */
static int fsck_inventory(struct fsck *f, const char *dir, struct kiln_error **err)
{
	_cleanup_free_ char *path = kiln_path_join(dir, "inventory"), *text = NULL;
	char *line, *save = NULL;
	int r = kiln_read_file_at(AT_FDCWD, path, 64u << 20, &text, NULL);

	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot read %s", path);
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		struct kiln_cache_record rec = { .key = line, .n_outputs = 1 };
		struct kiln_digest d;

		/* A torn last line (kill -9) is dropped by the worker too. */
		if (kiln_digest_parse(line, &d) < 0)
			continue;
		rec.outputs = &d;
		fsck_record(&rec, f);
	}
	return 0;
}

static int fsck_run(struct fsck *f, const char *worker_root)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	int r;

	r = kiln_store_foreach(f->store, fsck_blob, f);
	if (r < 0) {
		kiln_error_seterrno(&err, r, "cannot list the CAS");
		return kiln_cli_fail(err);
	}
	if (worker_root)
		r = fsck_inventory(f, worker_root, &err);
	else
		r = kiln_cache_foreach(f->e.cache, fsck_record, f, &err);
	if (r < 0)
		return kiln_cli_fail(err);
	if (f->problems) {
		printf("fsck: %llu blobs, %llu records: %llu problems\n",
		       (unsigned long long)f->blobs,
		       (unsigned long long)f->records,
		       (unsigned long long)f->problems);
		return 1;
	}
	printf("fsck: %llu blobs, %llu records: ok\n",
	       (unsigned long long)f->blobs, (unsigned long long)f->records);
	return 0;
}

static int parse_args(int argc, char **argv, const char **worker_root)
{
	static const struct option opts[] = {
		{ "worker-root", required_argument, NULL, 'w' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	optind = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'w': *worker_root = optarg; break;
		case 'h': fsck_usage(stdout); return KILN_ARGS_HELP;
		default: fsck_usage(stderr); return KILN_ARGS_USAGE;
		}
	}
	return kiln_args_no_operands("kiln debug fsck", argc, argv);
}

static int cmd_fsck(int argc, char **argv)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *root = NULL, *cas = NULL;
	const char *worker_root = NULL;
	struct fsck f = { 0 };
	int r;

	r = parse_args(argc, argv, &worker_root);
	if (r)
		return kiln_args_exit(r);
	if (worker_root) {
		struct kiln_store_options so = { 0 };

		cas = kiln_path_join(worker_root, "cas");
		if (access(cas, F_OK) < 0)
			kiln_error_seterrno(&err, -errno, "--worker-root %s: no CAS at %s",
					    worker_root, cas);
		else
			kiln_store_open(cas, &so, &f.store, &err);
		if (err)
			return kiln_cli_fail(err);
	} else {
		root = kiln_cli_default_root();
		if (kiln_engine_open(root, NULL, &f.e, &err) < 0)
			return kiln_cli_fail(err);
		f.store = kiln_worker_store(f.e.worker);
	}
	f.corrupt = kiln_digest_set_new();
	f.marked = kiln_digest_set_new();
	r = fsck_run(&f, worker_root);
	kiln_digest_set_free(f.corrupt);
	kiln_digest_set_free(f.marked);
	if (worker_root)
		kiln_store_free(f.store);
	else
		kiln_engine_close(&f.e);
	return r;
}

int kiln_cmd_debug(int argc, char **argv)
{
	if (argc < 2) {
		debug_usage(stderr);
		return kiln_args_exit(KILN_ARGS_USAGE);
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
	    !strcmp(argv[1], "help")) {
		debug_usage(stdout);
		return kiln_args_exit(KILN_ARGS_HELP);
	}
	if (!strcmp(argv[1], "fsck"))
		return cmd_fsck(argc - 1, argv + 1);
	if (!strcmp(argv[1], "ops"))
		return kiln_cmd_debug_ops(argc - 1, argv + 1);
	kiln_args_error("kiln debug", "unknown command '%s'", argv[1]);
	debug_usage(stderr);
	return kiln_args_exit(KILN_ARGS_USAGE);
}
