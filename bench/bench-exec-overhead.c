/*
 * bench-exec-overhead: what kiln adds around one trivial exec step.
 *
 * The busybox fixture (an OCI layout) is imported into a durable worker
 * (not timed). Then, interleaved, N times each:
 *   kiln  kiln_worker_exec(argv ["/bin/true"]) on the imported rootfs —
 *         layer lookup, overlay with a fresh upper, mount points, bundle,
 *         `runc run`, snapshot of the upper, unmount and cleanup;
 *   runc  `runc run` of a bundle made with `runc spec` (root.path: a copy
 *         of the same rootfs with /proc, /dev, /sys added, read-only;
 *         args ["/bin/true"]; terminal false; same namespaces).
 * Reported: medians and kiln - runc in ms (target <= +20 ms).
 * For information, the whole CLI, `kiln build --no-cache --progress quiet`
 * of a one-exec graph (KILN_ROOT in a temp dir, warmed once), against
 * `runc run` again, interleaved.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "bench-util.h"
#include "source/image.h"
#include "worker/layers.h"
#include "worker/worker.h"

#define MAX_RUNS 200

struct ctx {
	char *tmp;
	char *fixture; /* OCI layout directory */
	char *bundle, *state;
	struct kiln_worker *w;
	struct kiln_digest rootfs;
	unsigned runc_seq;
};

static const char *fixture_dir(void)
{
	const char *d = getenv("KILN_FIXTURE_DIR");

	return d && *d ? d : "/var/tmp/kiln-fixtures";
}

static void import_busybox(struct ctx *c)
{
	_cleanup_free_ char *ref_s = xasprintf("oci-layout://%s:latest", c->fixture);
	const struct kiln_image_source src = { .store = kiln_worker_store(c->w) };
	struct kiln_image_ref ref = { 0 };
	struct kiln_image img = { 0 };
	struct kiln_digest manifest;
	struct kiln_error *err = NULL;

	bench_check(kiln_image_ref_parse(ref_s, NULL, &ref, &err), err, ref_s);
	bench_check(kiln_image_resolve(&src, &ref, kiln_worker_native_platform(c->w),
				       &manifest, &err),
		    err, "kiln_image_resolve");
	bench_check(kiln_image_import(&src, kiln_worker_layers(c->w), &ref, &manifest,
				      &img, &err),
		    err, "kiln_image_import");
	c->rootfs = img.rootfs;
	kiln_image_release(&img);
	kiln_image_ref_release(&ref);
}

/* A plain copy of the materialized rootfs, plus the runtime's mount points. */
static char *copy_rootfs(struct ctx *c)
{
	_cleanup_free_ char *ro = xasprintf("%s/ro", c->tmp);
	_cleanup_free_ char *ro_dot = xasprintf("%s/.", ro);
	char *dst = xasprintf("%s/rootfs", c->bundle);
	struct kiln_chain chain = { 0 };
	struct kiln_error *err = NULL;
	const char *cp[] = { "cp", "-a", ro_dot, dst, NULL };
	static const char *const points[] = { "proc", "dev", "sys" };
	size_t i;

	if (mkdir(ro, 0755) < 0 || mkdir(dst, 0755) < 0)
		bench_die("mkdir under %s: %s", c->tmp, strerror(errno));
	bench_check(kiln_layers_materialize(kiln_worker_layers(c->w), &c->rootfs,
					    NULL, &chain, &err),
		    err, "kiln_layers_materialize");
	bench_check(kiln_layers_mount(&chain, ro, NULL, NULL, &err), err,
		    "kiln_layers_mount");
	bench_cleanup_mount(ro);
	kiln_chain_release(&chain);
	bench_run(cp);
	bench_check(kiln_layers_umount(ro), NULL, "kiln_layers_umount");
	for (i = 0; i < ARRAY_SIZE(points); i++) {
		_cleanup_free_ char *p = xasprintf("%s/%s", dst, points[i]);

		if (mkdir(p, 0755) < 0 && errno != EEXIST)
			bench_die("mkdir %s: %s", p, strerror(errno));
	}
	return dst;
}

static void set_or_die(json_t *obj, const char *key, json_t *v)
{
	if (!obj || json_object_set_new(obj, key, v) < 0)
		bench_die("editing config.json: cannot set %s", key);
}

/* `runc spec`, then root.path, read-only root, args, no terminal. */
static void make_bundle(struct ctx *c)
{
	_cleanup_free_ char *rootfs = NULL, *cfg = NULL;
	const char *spec[] = { "runc", "spec", "--bundle", NULL, NULL };
	json_error_t jerr;
	json_t *j, *proc;

	c->bundle = xasprintf("%s/bundle", c->tmp);
	c->state = xasprintf("%s/runc-state", c->tmp);
	if (mkdir(c->bundle, 0700) < 0 || mkdir(c->state, 0700) < 0)
		bench_die("mkdir under %s: %s", c->tmp, strerror(errno));
	spec[3] = c->bundle;
	bench_run(spec);
	rootfs = copy_rootfs(c);
	cfg = xasprintf("%s/config.json", c->bundle);
	j = json_load_file(cfg, 0, &jerr);
	if (!j)
		bench_die("%s: %s", cfg, jerr.text);
	proc = json_object_get(j, "process");
	set_or_die(json_object_get(j, "root"), "path", json_string(rootfs));
	set_or_die(json_object_get(j, "root"), "readonly", json_true());
	set_or_die(proc, "terminal", json_false());
	set_or_die(proc, "args", json_pack("[s]", "/bin/true"));
	if (json_dump_file(j, cfg, JSON_INDENT(2)) < 0)
		bench_die("writing %s", cfg);
	json_decref(j);
}

static double runc_once(struct ctx *c)
{
	_cleanup_free_ char *id = xasprintf("bench-runc-%u", c->runc_seq++);
	const char *argv[] = { "runc", "--root", c->state, "run", "--bundle",
			       c->bundle, id, NULL };

	return bench_run(argv);
}

static double kiln_once(struct ctx *c, unsigned seq, double *snap)
{
	_cleanup_free_ char *id = xasprintf("bench-%u", seq);
	static const char *const argv[] = { "/bin/true", NULL };
	static const char *const env[] = { "PATH=/bin", NULL };
	struct kiln_exec_request req = {
		.id = id, .rootfs = c->rootfs, .argv = argv, .env = env,
	};
	struct kiln_exec_result res;
	struct kiln_error *err = NULL;
	double t0 = bench_now(), t;
	int r;

	r = kiln_worker_exec(c->w, &req, &res, &err);
	t = bench_now() - t0;
	bench_check(r, err, "kiln_worker_exec");
	if (res.exit_code != 0)
		bench_die("/bin/true exited %d in kiln: %s", res.exit_code,
			  res.tail ? res.tail : "");
	*snap = (double)res.snapshot_ns / 1e9;
	kiln_exec_result_release(&res);
	return t;
}

static const char *kiln_exe(void)
{
	const char *e = getenv("KILN");

	if (e && *e)
		return e;
	if (!*BENCH_KILN_EXE)
		bench_die("set KILN to the kiln binary");
	return BENCH_KILN_EXE;
}

static char *write_graph(struct ctx *c)
{
	char *path = xasprintf("%s/graph.json", c->tmp);
	_cleanup_free_ char *ref = xasprintf("oci-layout://%s:latest", c->fixture);
	json_t *g = json_pack(
		"{s:i, s:[{s:s, s:s, s:s}, {s:s, s:s, s:s, s:[s]}], s:s}",
		"version", 1, "ops", "id", "base", "op", "source.image", "ref",
		ref, "id", "t", "op", "exec", "input", "base", "args",
		"/bin/true", "output", "t");

	if (!g || json_dump_file(g, path, JSON_INDENT(2)) < 0)
		bench_die("writing %s", path);
	json_decref(g);
	return path;
}

static void cli_compare(struct ctx *c, unsigned n)
{
	_cleanup_free_ char *graph = write_graph(c);
	_cleanup_free_ char *root = xasprintf("%s/cli-root", c->tmp);
	const char *argv[] = { kiln_exe(), "build", "--no-cache", "--progress",
			       "quiet", "--def", graph, NULL };
	double tk[MAX_RUNS], tr[MAX_RUNS], mk, mr;
	unsigned i;

	setenv("KILN_ROOT", root, 1);
	(void)bench_run(argv); /* imports the image, probes the runtime */
	for (i = 0; i < n; i++) {
		tk[i] = bench_run(argv);
		tr[i] = runc_once(c);
	}
	mk = bench_median(tk, n);
	mr = bench_median(tr, n);
	printf("RESULT exec-overhead (info) CLI `kiln build --no-cache` one exec: "
	       "%.1f ms | runc run %.1f ms | difference %+.1f ms [medians of %u]\n",
	       mk * 1e3, mr * 1e3, (mk - mr) * 1e3, n);
}

int main(void)
{
	unsigned n = bench_env_uint("BENCH_EXEC_RUNS", 30);
	unsigned n_cli = bench_env_uint("BENCH_CLI_RUNS", 10), i;
	struct kiln_worker_options wo = { .durable = true };
	double tk[MAX_RUNS], tr[MAX_RUNS], ts[MAX_RUNS], snap, mk, mr;
	struct kiln_error *err = NULL;
	struct ctx c = { 0 };
	_cleanup_free_ char *wroot = NULL;

	bench_name = "bench-exec-overhead";
	setvbuf(stdout, NULL, _IOLBF, 0);
	bench_require_root();
	if (n > MAX_RUNS || n_cli > MAX_RUNS)
		bench_die("at most %d runs", MAX_RUNS);
	c.fixture = xasprintf("%s/busybox", fixture_dir());
	{
		_cleanup_free_ char *idx = xasprintf("%s/index.json", c.fixture);

		if (access(idx, F_OK) < 0)
			bench_die("no busybox fixture at %s (make it with "
				  "scripts/make-busybox-layout.sh %s)",
				  c.fixture, c.fixture);
	}
	c.tmp = bench_mkdtemp("exec");
	wroot = xasprintf("%s/worker", c.tmp);
	wo.root = wroot;
	bench_check(kiln_worker_open(&wo, &c.w, &err), err, "kiln_worker_open");
	import_busybox(&c);
	make_bundle(&c);
	printf("%s: runtime %s, %u runs each, interleaved\n", bench_name,
	       kiln_worker_runtime(c.w), n);
	(void)kiln_once(&c, 1000000, &snap); /* warm-up */
	(void)runc_once(&c);
	for (i = 0; i < n; i++) {
		tk[i] = kiln_once(&c, i, &ts[i]);
		tr[i] = runc_once(&c);
	}
	mk = bench_median(tk, n);
	mr = bench_median(tr, n);
	printf("RESULT exec-overhead kiln_worker_exec /bin/true %.1f ms | runc run "
	       "%.1f ms | difference %+.1f ms (target <= +20 ms) [medians of %u; "
	       "kiln snapshot %.2f ms]\n",
	       mk * 1e3, mr * 1e3, (mk - mr) * 1e3, n,
	       bench_median(ts, n) * 1e3);
	cli_compare(&c, n_cli);
	kiln_worker_free(c.w);
	free(c.bundle);
	free(c.state);
	free(c.fixture);
	free(c.tmp);
	return 0;
}
