/*
 * kiln prune: delete cache records, then every blob and layer that no kept
 * record needs.
 *
 * Roots of the mark are the kept records' output trees and the digests in
 * their meta JSON "blobs" array (image manifests, configs and layers). A
 * blob reachable from a kept record is never swept: a kept record whose
 * tree turns out to be incomplete is dropped (deleted) before the sweep
 * instead, and any other failure while marking stops before anything is
 * swept.
 */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "basic/alloc.h"
#include "basic/args.h"
#include "basic/parse-util.h"
#include "cas/gc.h"
#include "cli/common.h"
#include "rcache/rcache.h"
#include "s3/s3.h"

struct prune_rec {
	char *key;
	struct kiln_digest *outputs;
	size_t n_outputs;
	struct kiln_digest *blobs; /* from meta "blobs" */
	size_t n_blobs;
	uint64_t size;
	bool keep;
};

struct prune {
	struct kiln_engine e;
	bool all, dry_run, has_limit;
	uint64_t limit;
	struct kiln_s3_flags s3; /* --cache DIR|s3://…, --s3-*: a remote cache instead */
	int64_t older_than;  /* --older-than (remote cache) */
	int64_t grace;       /* --grace (remote cache) */
	bool grace_set;
	struct prune_rec *recs; /* oldest last_used first */
	size_t n, alloc;
	uint64_t deleted;
	struct kiln_digest_set *marked;
};

static void prune_usage(FILE *f)
{
	fputs("Usage: kiln prune [--keep-storage SIZE] [--all] [--dry-run]\n"
	      "       kiln prune --cache DIR|s3://BUCKET/PREFIX [--keep-storage SIZE]\n"
	      "                  [--older-than DURATION] [--grace DURATION] [--dry-run]\n"
	      "                  [--s3-endpoint URL] [--s3-region R] [--s3-path-style]\n"
	      "                  [--s3-credentials FILE]\n"
	      "\n"
	      "Delete cache records and the data only they used. With neither\n"
	      "--all nor --keep-storage, records are kept and only unreferenced\n"
	      "data goes. With --cache, the remote cache at DIR (--cache-to's\n"
	      "directory) is pruned instead of this machine's.\n"
	      "\n"
	      "      --keep-storage SIZE  keep the most recently used records\n"
	      "                           while their total size fits in SIZE\n"
	      "                           (e.g. 10GB, 512MiB)\n"
	      "  -a, --all                delete every record\n"
	      "      --cache DIR|s3://B/P prune the remote cache in DIR or bucket B, prefix P\n"
	      "      --older-than D       (--cache) delete records written more than D ago\n"
	      "                           (e.g. 7d, 24h, 90m)\n"
	      "      --grace D            (--cache) never delete a blob younger than D\n"
	      "                           (default 1h: a writer at work)\n"
	      "  -n, --dry-run            show what would be freed, change nothing\n"
	      "  -h, --help               show this help\n",
	      f);
}

/* The digests a record's meta names; entries that are not one are skipped. */
struct blob_list {
	struct kiln_digest *d;
	size_t n, alloc;
};

static void collect_blob(void *ud, size_t i, const struct kiln_digest *d)
{
	struct blob_list *l = ud;

	if (!d)
		return;
	l->d = xgrow(l->d, &l->alloc, l->n + 1, sizeof(*l->d));
	l->d[l->n++] = *d;
}

static void meta_blobs(const char *meta, struct kiln_digest **out, size_t *n)
{
	struct blob_list l = { 0 };

	kiln_cache_meta_blobs(meta, collect_blob, &l);
	*out = l.d;
	*n = l.n;
}

static int collect_rec(const struct kiln_cache_record *r, void *ud)
{
	struct prune *p = ud;
	struct prune_rec *pr;

	p->recs = xgrow(p->recs, &p->alloc, p->n + 1, sizeof(*p->recs));
	pr = &p->recs[p->n++];
	memset(pr, 0, sizeof(*pr));
	pr->key = xstrdup(r->key);
	pr->n_outputs = r->n_outputs;
	pr->outputs = xcalloc(r->n_outputs ? r->n_outputs : 1,
			      sizeof(*pr->outputs));
	memcpy(pr->outputs, r->outputs, r->n_outputs * sizeof(*pr->outputs));
	meta_blobs(r->meta, &pr->blobs, &pr->n_blobs);
	pr->size = r->size;
	pr->keep = true;
	return 0;
}

static void prune_release(struct prune *p)
{
	size_t i;

	for (i = 0; i < p->n; i++) {
		free(p->recs[i].key);
		free(p->recs[i].outputs);
		free(p->recs[i].blobs);
	}
	free(p->recs);
	kiln_digest_set_free(p->marked);
}

/* Bytes a record adds to what is kept: 0 when its trees are kept already. */
static uint64_t rec_cost(const struct prune_rec *r,
			 const struct kiln_digest_set *counted)
{
	size_t i;

	for (i = 0; i < r->n_outputs; i++)
		if (!kiln_digest_set_has(counted, &r->outputs[i]))
			return r->size;
	return 0;
}

/*
 * Most recently used first, keep while the running total fits. Only a
 * kept record's trees count as kept: a deleted record's trees must not
 * make a later record with the same trees free.
 */
static void choose_keep_storage(struct prune *p)
{
	struct kiln_digest_set *counted = kiln_digest_set_new();
	uint64_t used = 0;
	bool full = false;
	size_t i, k;

	for (i = p->n; i-- > 0;) {
		struct prune_rec *r = &p->recs[i];
		uint64_t cost = rec_cost(r, counted);

		if (cost && (full || used + cost > p->limit)) {
			full = true;
			r->keep = false;
			continue;
		}
		used += cost;
		for (k = 0; k < r->n_outputs; k++)
			kiln_digest_set_add(counted, &r->outputs[k]);
	}
	kiln_digest_set_free(counted);
}

static int delete_rec(struct prune *p, struct prune_rec *r)
{
	_cleanup_error_ struct kiln_error *err = NULL;

	r->keep = false;
	p->deleted++;
	if (p->dry_run)
		return 0;
	if (kiln_cache_delete(p->e.cache, r->key, &err) < 0) {
		kiln_error_prefix(&err, "cannot delete record %s", r->key);
		return kiln_cli_fail(err);
	}
	return 0;
}

static int delete_records(struct prune *p)
{
	size_t i;

	if (p->all)
		for (i = 0; i < p->n; i++)
			p->recs[i].keep = false;
	else if (p->has_limit)
		choose_keep_storage(p);
	for (i = 0; i < p->n; i++)
		if (!p->recs[i].keep && delete_rec(p, &p->recs[i]))
			return 1;
	return 0;
}

/*
 * Mark one kept record; an incomplete one is dropped, not trusted (*dropped
 * set), and what it marked so far must be unmarked by the caller.
 */
static int mark_rec(struct prune *p, struct prune_rec *r, bool *dropped)
{
	struct kiln_store *s = kiln_worker_store(p->e.worker);
	_cleanup_error_ struct kiln_error *err = NULL;
	size_t i;
	int q;

	for (i = 0; i < r->n_outputs; i++) {
		q = kiln_gc_mark_tree(s, &r->outputs[i], p->marked, &err);
		if (q == -ENOENT || q == -EBADMSG || q == -EINVAL) {
			fprintf(stderr, "kiln prune: %s incomplete record %s: %s\n",
				p->dry_run ? "would drop" : "dropping", r->key,
				kiln_error_msg(err));
			*dropped = true;
			return delete_rec(p, r);
		}
		if (q < 0) {
			kiln_error_prefix(&err, "record %s", r->key);
			return kiln_cli_fail(err);
		}
	}
	for (i = 0; i < r->n_blobs; i++)
		kiln_digest_set_add(p->marked, &r->blobs[i]);
	return 0;
}

/* After a record is dropped, start over so only kept records count. */
static int mark_kept(struct prune *p)
{
	bool dropped;
	size_t i;

	do {
		dropped = false;
		kiln_digest_set_free(p->marked);
		p->marked = kiln_digest_set_new();
		for (i = 0; i < p->n && !dropped; i++)
			if (p->recs[i].keep &&
			    mark_rec(p, &p->recs[i], &dropped))
				return 1;
	} while (dropped);
	return 0;
}

struct preview {
	const struct kiln_digest_set *marked;
	uint64_t n, bytes;
};

static int preview_blob(const struct kiln_digest *d, uint64_t size, void *ud)
{
	struct preview *pv = ud;

	if (!kiln_digest_set_has(pv->marked, d)) {
		pv->n++;
		pv->bytes += size;
	}
	return 0;
}

static int sweep_blobs(struct prune *p, uint64_t *n, uint64_t *bytes)
{
	struct kiln_store *s = kiln_worker_store(p->e.worker);
	_cleanup_error_ struct kiln_error *err = NULL;
	struct preview pv = { .marked = p->marked };
	int r;

	r = kiln_store_foreach(s, preview_blob, &pv);
	if (r < 0) {
		kiln_error_seterrno(&err, r, "cannot list the CAS");
		return kiln_cli_fail(err);
	}
	*n = pv.n;
	*bytes = pv.bytes;
	if (p->dry_run)
		return 0;
	/*
	 * A context walk trusts the stat cache to name blobs the store has:
	 * before any goes, it is forgotten (a sweep cut short, or a prune
	 * killed midway, never leaves a row naming a blob that went). The
	 * next build of a context hashes its files again.
	 */
	if (pv.n > 0 && kiln_cache_stat_clear(p->e.cache, &err) < 0)
		return kiln_cli_fail(err);
	r = kiln_gc_sweep(s, p->marked, n, bytes, &err);
	return r < 0 ? kiln_cli_fail(err) : 0;
}

static int prune_layers(struct prune *p, uint64_t *freed)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ struct kiln_digest *keep = NULL;
	size_t i, j, n = 0, alloc = 0;

	*freed = 0;
	if (p->dry_run)
		return 0;
	for (i = 0; i < p->n; i++) {
		for (j = 0; p->recs[i].keep && j < p->recs[i].n_outputs; j++) {
			keep = xgrow(keep, &alloc, n + 1, sizeof(*keep));
			keep[n++] = p->recs[i].outputs[j];
		}
	}
	if (kiln_layers_prune(kiln_worker_layers(p->e.worker), keep, n, freed,
			      &err) < 0)
		return kiln_cli_fail(err);
	return 0;
}

static int prune_run(struct prune *p)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	uint64_t blobs = 0, blob_bytes = 0, layer_bytes = 0;
	const char *verb = p->dry_run ? "would free" : "freed";
	char a[32], b[32], c[32];

	if (kiln_cache_foreach(p->e.cache, collect_rec, p, &err) < 0)
		return kiln_cli_fail(err);
	if (delete_records(p))
		return 1;
	/*
	 * Deletions must be durable before blobs go: a power loss must not
	 * bring back a record whose blobs were swept.
	 */
	if (!p->dry_run && kiln_cache_sync(p->e.cache, &err) < 0)
		return kiln_cli_fail(err);
	if (mark_kept(p) ||
	    sweep_blobs(p, &blobs, &blob_bytes) ||
	    prune_layers(p, &layer_bytes))
		return 1;
	printf("records:  %s %llu, kept %llu\n",
	       p->dry_run ? "would delete" : "deleted",
	       (unsigned long long)p->deleted,
	       (unsigned long long)(p->n - p->deleted));
	printf("cas:      %s %llu blobs (%s)\n", verb,
	       (unsigned long long)blobs, kiln_format_size(blob_bytes, a, 32));
	if (p->dry_run)
		printf("layers:   not measured in a dry run\n");
	else
		printf("layers:   %s %s\n", verb,
		       kiln_format_size(layer_bytes, b, 32));
	printf("total:    %s %s\n", verb,
	       kiln_format_size(blob_bytes + layer_bytes, c, 32));
	return 0;
}

/* kiln prune --cache: the remote cache's own gc (rcache-gc.c). */
static int prune_remote(struct prune *p)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	struct kiln_rcache_gc_opts o = {
		.now = (int64_t)time(NULL), .older_than = p->older_than,
		.has_keep = p->has_limit, .keep_bytes = p->limit, .grace = p->grace,
		.dry_run = p->dry_run,
	};
	struct kiln_rcache_gc_stats st;
	struct kiln_rcache *rc = NULL;
	const char *verb = p->dry_run ? "would delete" : "deleted";
	char a[32], b[32];
	int r;

	{
		struct kiln_s3_config cfg;

		r = kiln_s3_flags_config(&p->s3, &cfg, &err);
		if (r == 0) {
			r = kiln_rcache_open_s3(&cfg, &rc, &err);
			kiln_s3_config_release(&cfg);
		} else if (r == -ENOENT) {
			r = kiln_rcache_open_dir(p->s3.cache, false, &rc, &err);
		}
		if (r < 0)
			return kiln_cli_fail(err);
	}
	r = kiln_rcache_gc(rc, &o, &st, &err);
	kiln_rcache_free(rc);
	if (r < 0)
		return kiln_cli_fail(err);
	printf("records:  %s %zu of %zu (%zu unusable)\n", verb, st.records_deleted,
	       st.records, st.records_bad);
	printf("blobs:    %s %zu of %zu (%s of %s)\n", verb, st.blobs_deleted, st.blobs,
	       kiln_format_size(st.bytes_deleted, a, 32), kiln_format_size(st.bytes, b, 32));
	return 0;
}

static int parse_args(int argc, char **argv, struct prune *p)
{
	static const struct option opts[] = {
		{ "keep-storage", required_argument, NULL, 'k' },
		{ "all", no_argument, NULL, 'a' },
		{ "dry-run", no_argument, NULL, 'n' },
		{ "older-than", required_argument, NULL, 'o' },
		{ "grace", required_argument, NULL, 'g' },
		KILN_S3_OPTIONS,
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int c;

	optind = 0;
	while ((c = getopt_long(argc, argv, "anh", opts, NULL)) != -1) {
		if (kiln_s3_flags_arg(&p->s3, c, optarg))
			continue;
		switch (c) {
		case 'k':
			if (kiln_parse_size(optarg, &p->limit) < 0)
				return kiln_args_error("kiln prune", "invalid --keep-storage '%s'",
						       optarg);
			p->has_limit = true;
			break;
		case 'a': p->all = true; break;
		case 'n': p->dry_run = true; break;
		case 'o':
		case 'g':
			if (kiln_parse_duration(optarg, c == 'o' ? &p->older_than : &p->grace) < 0)
				return kiln_args_error("kiln prune", "invalid %s '%s' (e.g. 7d, 24h, 90m, 3600)",
						       c == 'o' ? "--older-than" : "--grace", optarg);
			p->grace_set |= c == 'g';
			break;
		case 'h': prune_usage(stdout); return KILN_ARGS_HELP;
		default: prune_usage(stderr); return KILN_ARGS_USAGE;
		}
	}
	if (kiln_args_no_operands("kiln prune", argc, argv))
		return KILN_ARGS_USAGE;
	if (p->all && p->has_limit)
		return kiln_args_error("kiln prune", "--all and --keep-storage exclude each other");
	if (!p->s3.cache && (p->older_than >= 0 || p->grace_set || p->s3.endpoint || p->s3.region ||
			     p->s3.path_style || p->s3.credentials))
		return kiln_args_error("kiln prune", "--older-than, --grace and --s3-* are for --cache");
	if (p->s3.cache && p->all)
		return kiln_args_error("kiln prune", "--all is for this machine's cache; with --cache, --older-than 0 deletes every record");
	return KILN_ARGS_OK;
}

int kiln_cmd_prune(int argc, char **argv)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *root = NULL;
	struct prune p = { 0 };
	int r;

	p.grace = 3600;
	p.older_than = -1;
	r = parse_args(argc, argv, &p);
	if (r)
		return kiln_args_exit(r);
	if (p.s3.cache)
		return prune_remote(&p);
	root = kiln_cli_default_root();
	if (kiln_engine_open(root, NULL, &p.e, &err) < 0)
		return kiln_cli_fail(err);
	r = prune_run(&p);
	kiln_engine_close(&p.e);
	prune_release(&p);
	return r;
}
