/*
 * The registry client against real registries: Debian's docker-registry
 * started here (tests/integration/registry-lib.sh) anonymous, with htpasswd
 * basic auth, and with bearer tokens from registry-token-server.py; skopeo
 * as an independent reader. The image is the two-platform busybox fixture
 * (scripts/make-busybox-layout.sh).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "test-util.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "source/image.h"
#include "registry/registry.h"

#define REPO "kiln/busybox"

struct reg {
	const char *mode;
	pid_t pid, token_pid;
	char addr[64]; /* 127.0.0.1:PORT */
	char *dir;
};

static char *base_dir, *layout_dir, *src_root;
static struct reg regs[3] = { { .mode = "none" }, { .mode = "htpasswd" },
			      { .mode = "token" } };
static struct kiln_store *src_store; /* every blob of the fixture */
static struct kiln_digest index_digest, amd64_manifest, arm64_manifest;
static unsigned n_blobs; /* configs + layers of the index */

#define ANON (&regs[0])
#define BASIC (&regs[1])
#define TOKEN (&regs[2])
#define USER "kiln"
#define PASS "kiln-secret"

/* ---- helpers ---- */

static void assert_msg_has(const struct kiln_error *e, const char *needle)
{
	assert_non_null(e);
	if (!strstr(e->msg, needle))
		fail_msg("error \"%s\" does not mention \"%s\"", e->msg, needle);
}

/* Run a shell command and return its stdout (at most 1 MiB). */
static char *capture(const char *fmt, ...) _printf_(1, 2);
static char *capture(const char *fmt, ...)
{
	_cleanup_free_ char *cmd = NULL;
	char *out = xcalloc(1, 1 << 20);
	size_t len = 0, k;
	va_list ap;
	FILE *f;

	va_start(ap, fmt);
	if (vasprintf(&cmd, fmt, ap) < 0)
		abort();
	va_end(ap);
	f = popen(cmd, "r");
	assert_non_null(f);
	while ((k = fread(out + len, 1, (1 << 20) - 1 - len, f)) > 0)
		len += k;
	if (pclose(f) != 0)
		fail_msg("command failed: %s", cmd);
	return out;
}

static bool pid_alive(pid_t pid)
{
	return pid > 0 && kill(pid, 0) == 0;
}

static void stop_pid(pid_t pid)
{
	int i;

	if (pid <= 0 || kill(pid, SIGTERM) < 0)
		return;
	for (i = 0; i < 50 && pid_alive(pid); i++)
		usleep(100000);
	if (pid_alive(pid))
		kill(pid, SIGKILL);
}

static int start_registry(struct reg *g)
{
	_cleanup_free_ char *out = NULL;
	long pid, tpid, port;

	g->dir = xasprintf("%s/registry-%s", base_dir, g->mode);
	/* The watcher stops the registry should this test die. */
	out = capture("REGISTRY_PARENT_PID=%ld bash -c 'set -euo pipefail; . "
		      "%s/tests/integration/registry-lib.sh; registry_start %s %s; "
		      "echo \"$REGISTRY_PID $REGISTRY_PORT ${TOKEN_PID:-0}\"'",
		      (long)getpid(), src_root, g->dir, g->mode);
	if (sscanf(out, "%ld %ld %ld", &pid, &port, &tpid) != 3)
		return -1;
	g->pid = (pid_t)pid;
	g->token_pid = (pid_t)tpid;
	snprintf(g->addr, sizeof(g->addr), "127.0.0.1:%ld", port);
	return 0;
}

static struct kiln_registry *client(const char *user, const char *pass,
				    const char *host)
{
	struct kiln_registry_options o = { .docker_config = "" };
	struct kiln_registry *r = NULL;
	struct kiln_error *err = NULL;

	if (kiln_registry_new(&o, &r, &err) < 0)
		fail_msg("%s", kiln_error_msg(err));
	if (user)
		kiln_registry_set_credentials(r, host, user, pass);
	return r;
}

static void parse_ref(struct kiln_registry_ref *ref, const char *fmt, ...)
	_printf_(2, 3);
static void parse_ref(struct kiln_registry_ref *ref, const char *fmt, ...)
{
	_cleanup_free_ char *s = NULL;
	struct kiln_error *err = NULL;
	va_list ap;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		abort();
	va_end(ap);
	if (kiln_registry_ref_parse(s, ref, &err) < 0)
		fail_msg("%s", kiln_error_msg(err));
}

static struct kiln_store *new_store(const char *name)
{
	_cleanup_free_ char *dir = xasprintf("%s/%s", base_dir, name);
	struct kiln_store *s = NULL;
	struct kiln_error *err = NULL;

	(void)kiln_rm_rf(dir);
	if (kiln_store_open(dir, NULL, &s, &err) < 0)
		fail_msg("%s", kiln_error_msg(err));
	return s;
}

static int push(struct kiln_registry *r, const char *ref_fmt_host,
		const char *repo, const char *tag, const char *from,
		struct kiln_registry_push_stats *st, struct kiln_error **err)
{
	struct kiln_registry_push_opts o = { .mount_from = from };
	struct kiln_registry_ref ref;
	int rc;

	parse_ref(&ref, "%s/%s:%s", ref_fmt_host, repo, tag);
	rc = kiln_registry_push(r, src_store, &ref, &index_digest, &o, st, err);
	kiln_registry_ref_release(&ref);
	return rc;
}

static void push_ok(struct kiln_registry *r, struct reg *g, const char *repo,
		    const char *tag, const char *from,
		    struct kiln_registry_push_stats *st)
{
	struct kiln_error *err = NULL;

	if (push(r, g->addr, repo, tag, from, st, &err) < 0)
		fail_msg("push to %s/%s: %s", g->addr, repo, kiln_error_msg(err));
}

/* ---- fixture ---- */

static int load_fixture_blobs(void)
{
	_cleanup_free_ char *dir = xasprintf("%s/blobs/sha256", layout_dir);
	struct kiln_error *err = NULL;
	struct dirent *de;
	DIR *d = opendir(dir);
	int rc = 0;

	if (!d)
		return -1;
	src_store = new_store("src-cas");
	while (rc == 0 && (de = readdir(d))) {
		_cleanup_close_ int fd = -1;
		struct kiln_digest got;
		uint64_t size;

		if (de->d_name[0] == '.')
			continue;
		fd = openat(dirfd(d), de->d_name, O_RDONLY | O_CLOEXEC);
		rc = fd < 0 ? -1 : kiln_store_put_fd(src_store, fd, NULL, &got, &size, &err);
	}
	closedir(d);
	return rc;
}

static int resolve_layout(const char *platform, struct kiln_digest *out)
{
	_cleanup_free_ char *s = xasprintf("oci-layout://%s", layout_dir);
	struct kiln_image_ref ref = { 0 };
	int rc = kiln_image_ref_parse(s, NULL, &ref, NULL);

	if (rc == 0)
		rc = kiln_image_resolve(&(struct kiln_image_source){ 0 }, &ref, platform, out,
					NULL);
	kiln_image_ref_release(&ref);
	return rc;
}

static int load_index(void)
{
	_cleanup_free_ char *path = xasprintf("%s/index.json", layout_dir);
	json_t *j = json_load_file(path, 0, NULL);
	const char *d = json_string_value(json_object_get(
		json_array_get(json_object_get(j, "manifests"), 0), "digest"));
	int rc = d ? kiln_digest_parse(d, &index_digest) : -1;

	json_decref(j);
	if (rc == 0)
		rc = resolve_layout("linux/amd64", &amd64_manifest);
	if (rc == 0)
		rc = resolve_layout("linux/arm64", &arm64_manifest);
	n_blobs = 4; /* two configs, two layers: one gzip layer per platform */
	return rc;
}

static int group_setup(void **state)
{
	const char *tmp = getenv("TMPDIR");
	size_t i;

	src_root = xstrdup(getenv("KILN_SOURCE_ROOT") ? getenv("KILN_SOURCE_ROOT") : ".");
	base_dir = xasprintf("%s/kiln-test-registry.XXXXXX", tmp ? tmp : "/var/tmp");
	if (!mkdtemp(base_dir))
		return -1;
	layout_dir = xstrdup("/var/tmp/kiln-fixtures/busybox");
	if (test_run("%s/scripts/make-busybox-layout.sh %s", src_root, layout_dir) != 0)
		return -1;
	if (load_fixture_blobs() < 0 || load_index() < 0)
		return -1;
	for (i = 0; i < ARRAY_SIZE(regs); i++)
		if (start_registry(&regs[i]) < 0) {
			fprintf(stderr, "test-registry: cannot start the %s registry\n",
				regs[i].mode);
			return -1;
		}
	return 0;
}

static int group_teardown(void **state)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(regs); i++) {
		stop_pid(regs[i].pid);
		stop_pid(regs[i].token_pid);
		free(regs[i].dir);
	}
	kiln_store_free(src_store);
	kiln_rm_rf(base_dir);
	free(base_dir);
	free(layout_dir);
	free(src_root);
	return 0;
}

/* ---- references ---- */

static void ref_ok(const char *s, const char *reg, const char *repo,
		   const char *tag, bool digest, const char *formatted)
{
	struct kiln_registry_ref r;
	struct kiln_error *err = NULL;
	_cleanup_free_ char *f = NULL;

	if (kiln_registry_ref_parse(s, &r, &err) < 0)
		fail_msg("'%s': %s", s, kiln_error_msg(err));
	assert_string_equal(r.registry, reg);
	assert_string_equal(r.repository, repo);
	if (tag)
		assert_string_equal(r.tag, tag);
	else
		assert_null(r.tag);
	assert_int_equal(kiln_digest_is_set(&r.digest), digest);
	f = kiln_registry_ref_format(&r);
	assert_string_equal(f, formatted);
	kiln_registry_ref_release(&r);
}

static void ref_bad(const char *s, const char *needle)
{
	struct kiln_registry_ref r;
	struct kiln_error *err = NULL;

	if (kiln_registry_ref_parse(s, &r, &err) == 0)
		fail_msg("'%s' parsed", s);
	assert_msg_has(err, s);
	if (needle)
		assert_msg_has(err, needle);
	kiln_error_free(err);
}

static void test_ref_parse(void **state)
{
	const char *d = "sha256:37fbfda62b86976eaf3af069c43bf7972dcb85c743f7ee62b40f1b392e041e6f";
	_cleanup_free_ char *pinned = xasprintf("host.example/a@%s", d);
	_cleanup_free_ char *both = xasprintf("a:tag@%s", d);
	_cleanup_free_ char *pinned_f = xasprintf("host.example/a@%s", d);
	_cleanup_free_ char *both_f = xasprintf("docker.io/library/a:tag@%s", d);

	ref_ok("busybox", "docker.io", "library/busybox", "latest", false,
	       "docker.io/library/busybox:latest");
	ref_ok("user/app:1.0", "docker.io", "user/app", "1.0", false,
	       "docker.io/user/app:1.0");
	ref_ok("localhost:5000/a/b:1", "localhost:5000", "a/b", "1", false,
	       "localhost:5000/a/b:1");
	ref_ok("localhost/a", "localhost", "a", "latest", false,
	       "localhost/a:latest");
	ref_ok("127.0.0.1:5000/x_y.z/w__v-u---t", "127.0.0.1:5000",
	       "x_y.z/w__v-u---t", "latest", false,
	       "127.0.0.1:5000/x_y.z/w__v-u---t:latest");
	ref_ok("[::1]:5000/a:B_1.x-y", "[::1]:5000", "a", "B_1.x-y", false,
	       "[::1]:5000/a:B_1.x-y");
	ref_ok(pinned, "host.example", "a", NULL, true, pinned_f);
	ref_ok(both, "docker.io", "library/a", "tag", true, both_f);

	ref_bad("", "empty");
	ref_bad("Busybox", "lowercase");
	ref_bad("a/B", "lowercase");
	ref_bad("a:", "tag");
	ref_bad("a:-x", "tag");
	ref_bad("a@sha256:abc", "digest");
	ref_bad("a@md5:0123", "digest");
	ref_bad("a//b", "repository");
	ref_bad("a/b_", "repository");
	ref_bad("a/.b", "repository");
	ref_bad("-host.x/a", "registry host");
	ref_bad("host.x:99a/a", "registry host");
	ref_bad("https://host/a", NULL);
	ref_bad("a b", NULL);
}

/* ---- pushing and pulling, anonymous ---- */

static bool index_has_platform(json_t *idx, const char *arch)
{
	json_t *m;
	size_t i;

	json_array_foreach(json_object_get(idx, "manifests"), i, m) {
		json_t *p = json_object_get(m, "platform");

		if (!strcmp(json_string_value(json_object_get(p, "architecture")) ?: "", arch) &&
		    !strcmp(json_string_value(json_object_get(p, "os")) ?: "", "linux"))
			return true;
	}
	return false;
}

static void check_with_skopeo(struct reg *g, const char *repo, const char *tag)
{
	_cleanup_free_ char *out = capture("skopeo inspect --raw --tls-verify=false "
					   "docker://%s/%s:%s", g->addr, repo, tag);
	struct kiln_digest got;
	json_t *j = json_loads(out, 0, NULL);

	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, "mediaType")),
			    KILN_MT_OCI_INDEX);
	assert_true(index_has_platform(j, "amd64"));
	assert_true(index_has_platform(j, "arm64"));
	json_decref(j);
	/* The bytes are the stored index, unchanged. */
	kiln_digest_buf(out, strlen(out), &got);
	assert_true(kiln_digest_eq(&got, &index_digest));
}

static void test_push_anonymous(void **state)
{
	struct kiln_registry *r = client(NULL, NULL, NULL);
	struct kiln_registry_push_stats st;

	push_ok(r, ANON, REPO, "v1", NULL, &st);
	assert_int_equal(st.blobs_uploaded, n_blobs);
	assert_int_equal(st.blobs_skipped, 0);
	assert_int_equal(st.blobs_mounted, 0);
	assert_int_equal(st.manifests, 3); /* two manifests and the index */
	assert_true(st.bytes_uploaded > 0);
	check_with_skopeo(ANON, REPO, "v1");

	/* Again: every blob is already there. */
	push_ok(r, ANON, REPO, "v2", NULL, &st);
	assert_int_equal(st.blobs_uploaded, 0);
	assert_int_equal(st.blobs_skipped, n_blobs);
	assert_int_equal(st.bytes_uploaded, 0);
	check_with_skopeo(ANON, REPO, "v2");
	kiln_registry_free(r);
}

static void test_push_mount(void **state)
{
	struct kiln_registry *r = client(NULL, NULL, NULL);
	struct kiln_registry_push_stats st;

	push_ok(r, ANON, REPO, "v1", NULL, &st);
	push_ok(r, ANON, "kiln/copy", "v1", REPO, &st);
	assert_int_equal(st.blobs_mounted, n_blobs);
	assert_int_equal(st.blobs_uploaded, 0);
	assert_int_equal(st.blobs_skipped, 0);
	check_with_skopeo(ANON, "kiln/copy", "v1");
	kiln_registry_free(r);
}

struct pulled {
	struct kiln_digest amd64, arm64, rootfs;
};

/* Resolve both platforms of ref and import amd64 into a fresh store. */
static void pull(struct kiln_registry *r, const char *ref_str, const char *name,
		 struct pulled *out)
{
	_cleanup_free_ char *dir = xasprintf("%s/%s", base_dir, name);
	_cleanup_free_ char *cas = xasprintf("%s/cas", dir);
	_cleanup_free_ char *lay = xasprintf("%s/layers", dir);
	struct kiln_image_ref ref = { 0 };
	struct kiln_image img = { 0 };
	struct kiln_image_source src = { .registry = r };
	struct kiln_store *s = NULL;
	struct kiln_layers *layers = NULL;
	struct kiln_error *err = NULL;

	(void)kiln_rm_rf(dir);
	if (kiln_image_ref_parse(ref_str, NULL, &ref, &err) < 0 ||
	    kiln_image_resolve(&src, &ref, "linux/amd64", &out->amd64, &err) < 0 ||
	    kiln_image_resolve(&src, &ref, "linux/arm64", &out->arm64, &err) < 0 ||
	    kiln_store_open(cas, NULL, &s, &err) < 0 ||
	    kiln_layers_open(lay, s, &layers, &err) < 0 ||
	    kiln_image_import(&(struct kiln_image_source){ .registry = r, .store = s },
			      layers, &ref, &out->amd64, &img, &err) < 0)
		fail_msg("pulling %s: %s", ref_str, kiln_error_msg(err));
	assert_true(kiln_store_has(s, &img.config));
	assert_true(kiln_store_has(s, &img.manifest));
	assert_int_equal(img.n_layers, 1);
	assert_true(kiln_store_has(s, &img.layers[0]));
	out->rootfs = img.rootfs;
	kiln_image_release(&img);
	kiln_image_ref_release(&ref);
	kiln_layers_free(layers);
	kiln_store_free(s);
}

static void test_pull(void **state)
{
	struct kiln_registry *r = client(NULL, NULL, NULL);
	struct kiln_registry_push_stats st;
	struct pulled by_tag, by_digest, pinned_over_tag;
	_cleanup_free_ char *tag_ref = xasprintf("%s/%s:v1", ANON->addr, REPO);
	_cleanup_free_ char *dig_ref = xasprintf("%s/%s@%s", ANON->addr, REPO,
						 KILN_DIGEST_STR(&index_digest));
	_cleanup_free_ char *pin_ref = xasprintf("%s/%s:nosuchtag@%s", ANON->addr,
						 REPO, KILN_DIGEST_STR(&index_digest));

	push_ok(r, ANON, REPO, "v1", NULL, &st);
	pull(r, tag_ref, "pull-tag", &by_tag);
	assert_true(kiln_digest_eq(&by_tag.amd64, &amd64_manifest));
	assert_true(kiln_digest_eq(&by_tag.arm64, &arm64_manifest));
	pull(r, dig_ref, "pull-digest", &by_digest);
	assert_true(kiln_digest_eq(&by_digest.amd64, &amd64_manifest));
	assert_true(kiln_digest_eq(&by_digest.arm64, &arm64_manifest));
	assert_true(kiln_digest_eq(&by_digest.rootfs, &by_tag.rootfs));
	/* A digest wins over the tag: the tag is never looked up. */
	pull(r, pin_ref, "pull-pinned", &pinned_over_tag);
	assert_true(kiln_digest_eq(&pinned_over_tag.rootfs, &by_tag.rootfs));
	kiln_registry_free(r);
}

static uint64_t requests(struct kiln_registry *r)
{
	struct kiln_registry_stats st;

	kiln_registry_get_stats(r, &st);
	return st.requests;
}

/* Resolve ref for platform; the registry requests that took. */
static uint64_t resolve_counted(struct kiln_registry *r, const struct kiln_image_source *src,
				const struct kiln_image_ref *ref, const char *platform,
				int want, struct kiln_digest *out)
{
	uint64_t n = requests(r);
	struct kiln_error *err = NULL;
	int rc = kiln_image_resolve(src, ref, platform, out, &err);

	if (rc != want)
		fail_msg("resolve %s: %d, not %d: %s", platform, rc, want,
			 err ? kiln_error_msg(err) : "no error");
	kiln_error_free(err);
	return requests(r) - n;
}

/*
 * A build asks about a tag once and reads every document by digest,
 * from the store once it has been fetched; the next build asks about the
 * tag again (one request) and sees where it points now.
 */
static void test_resolve_once(void **state)
{
	struct kiln_registry *r = client(NULL, NULL, NULL);
	struct kiln_store *s = new_store("once-cas");
	_cleanup_free_ char *tag = xasprintf("%s/%s:moving", ANON->addr, REPO);
	_cleanup_free_ char *pinned = xasprintf("%s/%s@%s", ANON->addr, REPO,
						KILN_DIGEST_STR(&arm64_manifest));
	_cleanup_free_ char *lay = xasprintf("%s/once-layers", base_dir);
	struct kiln_image_source src = { .registry = r, .store = s };
	struct kiln_image_ref ref = { 0 }, pin = { 0 };
	struct kiln_registry_push_stats st;
	struct kiln_registry_ref dest;
	struct kiln_layers *layers = NULL;
	struct kiln_image img = { 0 };
	struct kiln_digest d;
	uint64_t n;

	/* The tag names the amd64 manifest alone at first. */
	parse_ref(&dest, "%s", tag);
	assert_int_equal(kiln_registry_push(r, src_store, &dest, &amd64_manifest, NULL, &st, NULL), 0);
	assert_int_equal(kiln_image_ref_parse(tag, NULL, &ref, NULL), 0);
	src.tags = kiln_image_tags_new();
	assert_int_equal(resolve_counted(r, &src, &ref, "linux/amd64", 0, &d), 2); /* tag, config */
	assert_true(kiln_digest_eq(&d, &amd64_manifest));

	/* The tag moves to the index; this build still sees what it saw. */
	assert_int_equal(kiln_registry_push(r, src_store, &dest, &index_digest, NULL, &st, NULL), 0);
	assert_int_equal(resolve_counted(r, &src, &ref, "linux/arm64", -ENOENT, &d), 0);
	kiln_image_tags_free(src.tags);

	/* The next build: the tag (now the index), the arm64 manifest and config. */
	src.tags = kiln_image_tags_new();
	assert_int_equal(resolve_counted(r, &src, &ref, "linux/amd64", 0, &d), 1);
	assert_true(kiln_digest_eq(&d, &amd64_manifest));
	assert_int_equal(resolve_counted(r, &src, &ref, "linux/arm64", 0, &d), 2);
	assert_true(kiln_digest_eq(&d, &arm64_manifest));
	kiln_image_tags_free(src.tags);

	/* Fully cached: one request per build, for the tag. */
	src.tags = kiln_image_tags_new();
	assert_int_equal(resolve_counted(r, &src, &ref, "linux/amd64", 0, &d), 1);
	assert_int_equal(resolve_counted(r, &src, &ref, "linux/arm64", 0, &d), 0);
	assert_true(kiln_digest_eq(&d, &arm64_manifest));
	kiln_image_tags_free(src.tags);
	src.tags = NULL;

	/* Pinned by digest: nothing at all. */
	assert_int_equal(kiln_image_ref_parse(pinned, NULL, &pin, NULL), 0);
	assert_int_equal(resolve_counted(r, &src, &pin, "linux/arm64", 0, &d), 0);

	/* Import reads manifest and config from the store: only the layer is fetched. */
	assert_int_equal(kiln_layers_open(lay, s, &layers, NULL), 0);
	n = requests(r);
	assert_int_equal(kiln_image_import(&src, layers, &pin, &arm64_manifest, &img, NULL), 0);
	assert_int_equal(requests(r) - n, 1);
	assert_int_equal(img.n_layers, 1);
	assert_true(kiln_store_has(s, &img.layers[0]));

	kiln_image_release(&img);
	kiln_layers_free(layers);
	kiln_image_ref_release(&pin);
	kiln_image_ref_release(&ref);
	kiln_registry_ref_release(&dest);
	kiln_store_free(s);
	kiln_registry_free(r);
}

static void test_missing_tag(void **state)
{
	struct kiln_registry *r = client(NULL, NULL, NULL);
	struct kiln_registry_manifest m;
	struct kiln_registry_ref ref;
	struct kiln_error *err = NULL;

	parse_ref(&ref, "%s/%s:nosuchtag", ANON->addr, REPO);
	assert_int_equal(kiln_registry_get_manifest(r, &ref, NULL, &m, &err), -ENOENT);
	assert_msg_has(err, ANON->addr);
	assert_msg_has(err, REPO ":nosuchtag");
	assert_msg_has(err, "404");
	assert_msg_has(err, "MANIFEST_UNKNOWN");
	kiln_error_free(err);
	kiln_registry_ref_release(&ref);
	kiln_registry_free(r);
}

static bool dir_empty(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *de;
	bool empty = true;

	if (!d)
		return true;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			empty = false;
	closedir(d);
	return empty;
}

/* Overwrite a blob in the registry's storage with same-size garbage. */
static char *corrupt_blob(struct reg *g, const struct kiln_digest *d)
{
	char hex[KILN_DIGEST_HEXLEN];
	char *path;

	kiln_digest_hex(d, hex);
	path = xasprintf("%s/data/docker/registry/v2/blobs/sha256/%.2s/%s/data",
			 g->dir, hex, hex);
	assert_int_equal(test_run("cp %s %s.orig && tr '\\000-\\377' '\\001-\\377\\000' "
			     "< %s.orig > %s", path, path, path, path), 0);
	return path;
}

static void test_blob_verified(void **state)
{
	struct kiln_registry *r = client(NULL, NULL, NULL);
	struct kiln_store *s = new_store("verify-cas");
	_cleanup_free_ char *path = NULL, *tmp = NULL;
	struct kiln_registry_push_stats st;
	struct kiln_registry_ref ref;
	struct kiln_error *err = NULL;
	struct kiln_image_ref iref = { 0 };
	struct kiln_image img;
	struct kiln_layers *layers = NULL;
	struct kiln_digest layer;
	uint64_t size, got;

	push_ok(r, ANON, REPO, "v1", NULL, &st);
	parse_ref(&ref, "%s/%s:v1", ANON->addr, REPO);
	/* The amd64 layer: from the source store's manifest. */
	{
		char *data;
		size_t len;
		json_t *j;

		assert_int_equal(kiln_store_read(src_store, &amd64_manifest, 1 << 20,
						 &data, &len, NULL), 0);
		j = json_loadb(data, len, 0, NULL);
		assert_int_equal(kiln_digest_parse(json_string_value(json_object_get(
			json_array_get(json_object_get(j, "layers"), 0), "digest")),
			&layer), 0);
		json_decref(j);
		free(data);
	}
	assert_int_equal(kiln_store_size(src_store, &layer, &size), 0);

	/* A size smaller than what the registry sends aborts the transfer. */
	assert_int_equal(kiln_registry_fetch_blob(r, &ref, &layer, (int64_t)size - 1,
						  s, &got, &err), -EFBIG);
	assert_msg_has(err, KILN_DIGEST_STR(&layer));
	kiln_error_free(err);
	err = NULL;
	assert_false(kiln_store_has(s, &layer));

	/* The registry serves other bytes than the digest names. */
	path = corrupt_blob(ANON, &layer);
	assert_int_equal(kiln_registry_fetch_blob(r, &ref, &layer, (int64_t)size,
						  s, &got, &err), -EBADMSG);
	assert_msg_has(err, ANON->addr);
	assert_msg_has(err, KILN_DIGEST_STR(&layer));
	kiln_error_free(err);
	err = NULL;
	assert_false(kiln_store_has(s, &layer));
	tmp = xasprintf("%s/verify-cas/tmp", base_dir);
	assert_true(dir_empty(tmp));

	/* The import fails the same way and leaves the layer out too. */
	{
		_cleanup_free_ char *lay = xasprintf("%s/verify-layers", base_dir);
		_cleanup_free_ char *rs = kiln_registry_ref_format(&ref);

		assert_int_equal(kiln_layers_open(lay, s, &layers, NULL), 0);
		assert_int_equal(kiln_image_ref_parse(rs, NULL, &iref, NULL), 0);
		assert_int_equal(kiln_image_import(&(struct kiln_image_source){
							   .registry = r, .store = s },
						   layers, &iref, &amd64_manifest,
						   &img, &err), -EBADMSG);
		assert_msg_has(err, KILN_DIGEST_STR(&layer));
		kiln_error_free(err);
		err = NULL;
		assert_false(kiln_store_has(s, &layer));
		kiln_image_ref_release(&iref);
		kiln_layers_free(layers);
	}

	/* Restored, it is fetched and named. */
	assert_int_equal(test_run("mv %s.orig %s", path, path), 0);
	assert_int_equal(kiln_registry_fetch_blob(r, &ref, &layer, (int64_t)size,
						  s, &got, &err), 0);
	assert_int_equal(got, size);
	assert_true(kiln_store_has(s, &layer));
	assert_int_equal(kiln_store_verify(s, &layer, NULL), 0);

	kiln_registry_ref_release(&ref);
	kiln_store_free(s);
	kiln_registry_free(r);
}

/* A server that accepts connections and never answers. */
static void test_low_speed_timeout(void **state)
{
	struct kiln_registry_options o = { .docker_config = "", .low_speed_time_s = 1 };
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t alen = sizeof(a);
	struct kiln_registry *r = NULL;
	struct kiln_registry_manifest m;
	struct kiln_registry_ref ref;
	struct kiln_error *err = NULL;
	uint64_t t0;
	int fd;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 8), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
	assert_int_equal(kiln_registry_new(&o, &r, NULL), 0);
	parse_ref(&ref, "127.0.0.1:%u/a:b", ntohs(a.sin_port));
	t0 = kiln_now_mono_ns();
	assert_int_equal(kiln_registry_get_manifest(r, &ref, NULL, &m, &err),
			 -ETIMEDOUT);
	assert_true(kiln_now_mono_ns() - t0 < 20ull * 1000000000);
	assert_msg_has(err, "127.0.0.1");
	kiln_error_free(err);
	kiln_registry_ref_release(&ref);
	kiln_registry_free(r);
	close(fd);
}

/* ---- basic auth ---- */

static void test_basic_auth(void **state)
{
	struct kiln_registry *anon = client(NULL, NULL, NULL);
	struct kiln_registry *bad = client(USER, "wrong", BASIC->addr);
	struct kiln_registry *good = client(USER, PASS, BASIC->addr);
	struct kiln_registry_push_stats st;
	struct kiln_error *err = NULL;
	struct pulled p;
	_cleanup_free_ char *ref = xasprintf("%s/%s:v1", BASIC->addr, REPO);

	assert_int_equal(push(anon, BASIC->addr, REPO, "v1", NULL, &st, &err), -EACCES);
	assert_msg_has(err, BASIC->addr);
	assert_msg_has(err, "401");
	assert_msg_has(err, "no credentials");
	kiln_error_free(err);
	err = NULL;

	assert_int_equal(push(bad, BASIC->addr, REPO, "v1", NULL, &st, &err), -EACCES);
	assert_msg_has(err, BASIC->addr);
	assert_msg_has(err, "401");
	assert_msg_has(err, REPO);
	kiln_error_free(err);
	err = NULL;

	push_ok(good, BASIC, REPO, "v1", NULL, &st);
	assert_int_equal(st.blobs_uploaded + st.blobs_skipped, n_blobs);
	pull(good, ref, "pull-basic", &p);
	assert_true(kiln_digest_eq(&p.amd64, &amd64_manifest));
	kiln_registry_free(anon);
	kiln_registry_free(bad);
	kiln_registry_free(good);
}

static void write_docker_config(const char *dir, const char *json)
{
	_cleanup_free_ char *path = xasprintf("%s/config.json", dir);

	assert_int_equal(kiln_mkdir_p(dir, 0700), 0);
	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, path, json,
						   strlen(json), 0600, false), 0);
}

static void test_docker_config(void **state)
{
	_cleanup_free_ char *dir = xasprintf("%s/docker-config", base_dir);
	_cleanup_free_ char *b64 = capture("printf %%s '%s:%s' | base64 -w0", USER, PASS);
	_cleanup_free_ char *cfg = xasprintf(
		"{\"auths\":{\"http://%s/v1/\":{\"auth\":\"%s\"},"
		"\"other.example\":{\"username\":\"u\",\"password\":\"p\"}},"
		"\"credHelpers\":{\"x.example\":\"none\"}}", BASIC->addr, b64);
	_cleanup_free_ char *cfg2 = xasprintf(
		"{\"auths\":{\"%s\":{\"username\":\"%s\",\"password\":\"%s\"}}}",
		BASIC->addr, USER, PASS);
	_cleanup_free_ char *ref = xasprintf("%s/%s:v1", BASIC->addr, REPO);
	struct kiln_registry *r = NULL;
	struct kiln_registry_push_stats st;
	struct kiln_error *err = NULL;
	struct pulled p;

	write_docker_config(dir, cfg);
	setenv("DOCKER_CONFIG", dir, 1);
	if (kiln_registry_new(NULL, &r, &err) < 0)
		fail_msg("%s", kiln_error_msg(err));
	push_ok(r, BASIC, REPO, "cfg", NULL, &st);
	pull(r, ref, "pull-config", &p);
	assert_true(kiln_digest_eq(&p.arm64, &arm64_manifest));
	kiln_registry_free(r);

	write_docker_config(dir, cfg2);
	assert_int_equal(kiln_registry_new(NULL, &r, NULL), 0);
	push_ok(r, BASIC, REPO, "cfg2", NULL, &st);
	kiln_registry_free(r);

	/* A malformed config is an error naming the file. */
	write_docker_config(dir, "{\"auths\":{\"h\":{\"auth\":\"!!\"}}}");
	assert_true(kiln_registry_new(NULL, &r, &err) < 0);
	assert_msg_has(err, dir);
	kiln_error_free(err);
	unsetenv("DOCKER_CONFIG");
}

/* ---- bearer tokens ---- */

static void test_token_auth(void **state)
{
	struct kiln_registry *good = client(USER, PASS, TOKEN->addr);
	struct kiln_registry *bad = client(USER, "wrong", TOKEN->addr);
	struct kiln_registry *anon = client(NULL, NULL, NULL);
	struct kiln_registry_push_stats st;
	struct kiln_registry_stats s1, s2;
	struct kiln_error *err = NULL;
	struct pulled p;
	_cleanup_free_ char *priv = xasprintf("%s/%s:v1", TOKEN->addr, REPO);
	_cleanup_free_ char *pub = xasprintf("%s/public/busybox:v1", TOKEN->addr);
	struct kiln_registry_manifest m;
	struct kiln_registry_ref ref;

	push_ok(good, TOKEN, REPO, "v1", NULL, &st);
	assert_int_equal(st.blobs_uploaded, n_blobs);
	kiln_registry_get_stats(good, &s1);
	assert_true(s1.token_fetches >= 1);
	/* Cached: a second push of the same scope fetches no new token. */
	push_ok(good, TOKEN, REPO, "v1", NULL, &st);
	assert_int_equal(st.blobs_skipped, n_blobs);
	kiln_registry_get_stats(good, &s2);
	assert_int_equal(s2.token_fetches, s1.token_fetches);

	/* Mount with a token that holds the source's pull scope too. */
	push_ok(good, TOKEN, "public/busybox", "v1", REPO, &st);
	assert_int_equal(st.blobs_mounted, n_blobs);
	pull(good, priv, "pull-token", &p);
	assert_true(kiln_digest_eq(&p.amd64, &amd64_manifest));

	/* Anonymous: public/ is readable, the rest is not. */
	pull(anon, pub, "pull-token-anon", &p);
	assert_true(kiln_digest_eq(&p.arm64, &arm64_manifest));
	parse_ref(&ref, "%s", priv);
	assert_int_equal(kiln_registry_get_manifest(anon, &ref, NULL, &m, &err), -EACCES);
	assert_msg_has(err, TOKEN->addr);
	assert_msg_has(err, "401");
	kiln_error_free(err);
	err = NULL;

	/* Wrong password: the token server refuses, and the error says so. */
	assert_int_equal(kiln_registry_get_manifest(bad, &ref, NULL, &m, &err), -EACCES);
	assert_msg_has(err, TOKEN->addr);
	assert_msg_has(err, "token server");
	assert_msg_has(err, "401");
	assert_msg_has(err, "invalid username or password");
	kiln_error_free(err);
	kiln_registry_ref_release(&ref);
	kiln_registry_free(good);
	kiln_registry_free(bad);
	kiln_registry_free(anon);
}

/* ---- endpoints ---- */

static void test_endpoint_mapping(void **state)
{
	_cleanup_free_ char *ep = xasprintf("kiln-mirror.test=%s", ANON->addr);
	const char *eps[] = { ep, NULL };
	const char *secure[] = { "kiln-mirror.test", NULL };
	struct kiln_registry_options o = { .docker_config = "", .endpoints = eps };
	struct kiln_registry *r = NULL;
	struct kiln_registry_push_stats st;
	struct kiln_error *err = NULL;
	struct kiln_registry_manifest m;
	struct kiln_registry_ref ref;
	struct pulled p;

	assert_int_equal(kiln_registry_new(&o, &r, NULL), 0);
	push_ok(r, ANON, REPO, "v1", NULL, &st);
	pull(r, "kiln-mirror.test/" REPO ":v1", "pull-mirror", &p);
	assert_true(kiln_digest_eq(&p.amd64, &amd64_manifest));
	kiln_registry_free(r);

	/* Configured secure, a loopback endpoint is spoken to over TLS. */
	o.secure = secure;
	assert_int_equal(kiln_registry_new(&o, &r, NULL), 0);
	parse_ref(&ref, "kiln-mirror.test/%s:v1", REPO);
	assert_true(kiln_registry_get_manifest(r, &ref, NULL, &m, &err) < 0);
	assert_msg_has(err, "https://");
	kiln_error_free(err);
	err = NULL;
	kiln_registry_ref_release(&ref);
	kiln_registry_free(r);

	o.endpoints = (const char *[]){ "no-equals-sign", NULL };
	assert_true(kiln_registry_new(&o, &r, &err) < 0);
	assert_msg_has(err, "no-equals-sign");
	kiln_error_free(err);
}

/*
 * docker.io goes to Docker Hub's API host with no flag, as in Docker; an
 * endpoint still maps it elsewhere: here a local registry stands in for
 * Docker Hub, and a short name ("kiln-hub:v1" = docker.io/library/...)
 * is pulled through it.
 */
static void test_docker_hub_default(void **state)
{
	_cleanup_free_ char *ep = xasprintf("docker.io=%s", ANON->addr);
	const char *eps[] = { ep, NULL };
	struct kiln_registry_options o = { .docker_config = "" };
	struct kiln_registry *r = NULL;
	struct kiln_registry_push_stats st;
	struct pulled p;

	assert_int_equal(kiln_registry_new(&o, &r, NULL), 0);
	assert_string_equal(kiln_registry_endpoint(r, "docker.io"), "registry-1.docker.io");
	assert_string_equal(kiln_registry_endpoint(r, "ghcr.io"), "ghcr.io");
	assert_string_equal(kiln_registry_endpoint(r, "localhost:5000"), "localhost:5000");
	kiln_registry_free(r);

	o.endpoints = eps;
	assert_int_equal(kiln_registry_new(&o, &r, NULL), 0);
	assert_string_equal(kiln_registry_endpoint(r, "docker.io"), ANON->addr);
	push_ok(r, ANON, "library/kiln-hub", "v1", NULL, &st);
	pull(r, "kiln-hub:v1", "pull-hub", &p);
	assert_true(kiln_digest_eq(&p.amd64, &amd64_manifest));
	kiln_registry_free(r);
}

/*
 * An insecure host is tried over https (it fails: the registry speaks
 * plain http), then over http, which is remembered. The endpoint spells
 * 127.0.0.1 as one decimal number so that it does not look like loopback
 * (loopback endpoints get http directly).
 */
static void test_insecure_fallback(void **state)
{
	const char *port = strchr(ANON->addr, ':') + 1;
	_cleanup_free_ char *ep = xasprintf("kiln-insecure.test=2130706433:%s", port);
	const char *eps[] = { ep, NULL }, *insecure[] = { "kiln-insecure.test", NULL };
	struct kiln_registry_options o = { .docker_config = "", .endpoints = eps };
	struct kiln_registry *r = NULL;
	struct kiln_registry_manifest m;
	struct kiln_registry_ref ref;
	struct kiln_registry_push_stats st;
	struct kiln_registry_stats s1, s2;
	struct kiln_error *err = NULL;

	parse_ref(&ref, "kiln-insecure.test/%s:v1", REPO);
	assert_int_equal(kiln_registry_new(&o, &r, NULL), 0);
	push_ok(r, ANON, REPO, "v1", NULL, &st);
	/* Not listed as insecure: https only, and it fails. */
	assert_true(kiln_registry_get_manifest(r, &ref, NULL, &m, &err) < 0);
	assert_msg_has(err, "https://2130706433");
	kiln_error_free(err);
	err = NULL;
	kiln_registry_free(r);

	o.insecure = insecure;
	assert_int_equal(kiln_registry_new(&o, &r, NULL), 0);
	if (kiln_registry_get_manifest(r, &ref, NULL, &m, &err) < 0)
		fail_msg("%s", kiln_error_msg(err));
	assert_true(kiln_digest_eq(&m.digest, &index_digest));
	kiln_registry_manifest_release(&m);
	kiln_registry_get_stats(r, &s1);
	assert_int_equal(s1.requests, 2); /* https, then http */
	assert_int_equal(kiln_registry_get_manifest(r, &ref, NULL, &m, &err), 0);
	kiln_registry_manifest_release(&m);
	kiln_registry_get_stats(r, &s2);
	assert_int_equal(s2.requests, 3); /* http straight away */
	kiln_registry_ref_release(&ref);
	kiln_registry_free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ref_parse),
		cmocka_unit_test(test_push_anonymous),
		cmocka_unit_test(test_push_mount),
		cmocka_unit_test(test_pull),
		cmocka_unit_test(test_resolve_once),
		cmocka_unit_test(test_missing_tag),
		cmocka_unit_test(test_blob_verified),
		cmocka_unit_test(test_low_speed_timeout),
		cmocka_unit_test(test_basic_auth),
		cmocka_unit_test(test_docker_config),
		cmocka_unit_test(test_token_auth),
		cmocka_unit_test(test_endpoint_mapping),
		cmocka_unit_test(test_docker_hub_default),
		cmocka_unit_test(test_insecure_fallback),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
