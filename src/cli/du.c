/* kiln du: what the embedded engine's state uses. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "basic/alloc.h"
#include "basic/args.h"
#include "basic/parse-util.h"
#include "cli/common.h"

static void du_usage(FILE *f)
{
	fputs("Usage: kiln du [--verbose]\n"
	      "\n"
	      "Show disk usage of the local state: cache records, CAS blobs and\n"
	      "materialized layers.\n"
	      "\n"
	      "  -v, --verbose   list every cache record\n"
	      "  -h, --help      show this help\n",
	      f);
}

struct du_totals {
	uint64_t records;
	uint64_t record_bytes;
	uint64_t blobs;
	uint64_t blob_bytes;
	bool verbose;
};

/* "sha256:0123456789abcdef..." -> "0123456789ab" (buf holds 13). */
static const char *short_digest(const char *s, char *buf)
{
	const char *colon = s ? strchr(s, ':') : NULL;

	snprintf(buf, 13, "%s", colon ? colon + 1 : s ? s : "-");
	return buf;
}

static void print_record(const struct kiln_cache_record *r)
{
	char size[32], used[32], key[13], op[13];
	struct tm tm;
	time_t t = (time_t)r->last_used;

	if (!localtime_r(&t, &tm) ||
	    !strftime(used, sizeof(used), "%Y-%m-%d %H:%M:%S", &tm))
		snprintf(used, sizeof(used), "-");
	printf("%-12s  %-12s  %-16s  %10s  %s\n", short_digest(r->key, key),
	       short_digest(r->op, op),
	       r->platform && *r->platform ? r->platform : "-",
	       kiln_format_size(r->size, size, sizeof(size)), used);
}

static int du_record(const struct kiln_cache_record *r, void *ud)
{
	struct du_totals *t = ud;

	t->records++;
	t->record_bytes += r->size;
	if (t->verbose)
		print_record(r);
	return 0;
}

static int du_blob(const struct kiln_digest *d, uint64_t size, void *ud)
{
	struct du_totals *t = ud;

	t->blobs++;
	t->blob_bytes += size;
	return 0;
}

static int du_report(struct kiln_engine *e, bool verbose)
{
	struct du_totals t = { .verbose = verbose };
	_cleanup_error_ struct kiln_error *err = NULL;
	char a[32], b[32];
	uint64_t layer_bytes = 0;
	size_t layers = 0;
	int r;

	if (verbose)
		printf("%-12s  %-12s  %-16s  %10s  %s\n", "KEY", "OP",
		       "PLATFORM", "SIZE", "LAST USED");
	r = kiln_cache_foreach(e->cache, du_record, &t, &err);
	if (r < 0)
		return kiln_cli_fail(err);
	r = kiln_store_foreach(kiln_worker_store(e->worker), du_blob, &t);
	if (r < 0) {
		kiln_error_seterrno(&err, r, "cannot list the CAS");
		return kiln_cli_fail(err);
	}
	r = kiln_layers_usage(kiln_worker_layers(e->worker), &layer_bytes,
			      &layers);
	if (r < 0) {
		kiln_error_seterrno(&err, r, "cannot measure the layer store");
		return kiln_cli_fail(err);
	}
	if (verbose)
		putchar('\n');
	printf("records:    %llu (%s of results)\n",
	       (unsigned long long)t.records,
	       kiln_format_size(t.record_bytes, a, sizeof(a)));
	printf("cas blobs:  %llu (%s)\n", (unsigned long long)t.blobs,
	       kiln_format_size(t.blob_bytes, a, sizeof(a)));
	printf("layers:     %zu (%s)\n", layers,
	       kiln_format_size(layer_bytes, b, sizeof(b)));
	return 0;
}

static int parse_args(int argc, char **argv, bool *verbose)
{
	static const struct option opts[] = {
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	optind = 0;
	while ((c = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
		switch (c) {
		case 'v': *verbose = true; break;
		case 'h': du_usage(stdout); return KILN_ARGS_HELP;
		default: du_usage(stderr); return KILN_ARGS_USAGE;
		}
	}
	return kiln_args_no_operands("kiln du", argc, argv);
}

int kiln_cmd_du(int argc, char **argv)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *root = NULL;
	struct kiln_engine e;
	bool verbose = false;
	int r;

	r = parse_args(argc, argv, &verbose);
	if (r)
		return kiln_args_exit(r);
	root = kiln_cli_default_root();
	if (kiln_engine_open(root, NULL, &e, &err) < 0)
		return kiln_cli_fail(err);
	r = du_report(&e, verbose);
	kiln_engine_close(&e);
	return r;
}
