/*
 * One op on one worker (job.h): exec, file and merge ops, image and HTTP
 * sources. Moved out of the solver so kiln-worker runs the very same code
 * as the embedded engine.
 */
#include "solver/job.h"

#include <fcntl.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/strbuf.h"
#include "cas/tree.h"
#include "solver/fileop.h"
#include "source/git.h"
#include "source/http.h"
#include "source/image.h"

char *kiln_op_who(const struct kiln_op *op)
{
	if (op->src_file && op->src_line)
		return op->name ? xasprintf("%s:%u: %s", op->src_file, op->src_line, op->name)
				: xasprintf("%s:%u: op '%s'", op->src_file, op->src_line, op->id);
	return op->name ? xasprintf("step %s", op->name) : xasprintf("op '%s'", op->id);
}

static void prefix_who(struct kiln_error **err, const struct kiln_op *op)
{
	_cleanup_free_ char *w = kiln_op_who(op);

	kiln_error_prefix(err, "%s", w);
}

void kiln_job_result_release(struct kiln_job_result *r)
{
	free(r->meta);
	r->meta = NULL;
}

/* Give the worker a layer chain ending in the rootfs, each step small. */
static void prepare_layers(struct kiln_worker *w, const struct kiln_job *job,
			   const struct kiln_digest *rootfs)
{
	struct kiln_layers *l = kiln_worker_layers(w);
	const struct kiln_digest *below = NULL;
	struct kiln_chain chain = { 0 };
	size_t i;

	if (kiln_layers_has(l, rootfs))
		return;
	for (i = 0; i < job->n_chain; i++) {
		const struct kiln_digest *t = &job->chain[i];

		if (!kiln_layers_has(l, t)) {
			if (!kiln_store_has(kiln_worker_store(w), t))
				continue;
			if (kiln_layers_materialize(l, t, below, &chain, NULL) < 0)
				continue;
			kiln_chain_release(&chain);
		}
		below = t;
	}
	if (kiln_layers_materialize(l, rootfs, below, &chain, NULL) == 0)
		kiln_chain_release(&chain);
}

static char *command_line(const struct kiln_op *op)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(1024);
	size_t i;

	for (i = 0; i < op->n_args; i++)
		if (kiln_strbuf_addf(&sb, "%s%s", i ? " " : "", op->args[i]) < 0)
			break;
	return kiln_strbuf_detach(&sb, NULL);
}

/* Is "K=V" a variable that a secret of op replaces? */
static bool secret_env_named(const struct kiln_op *op, const char *kv)
{
	size_t i, l = strcspn(kv, "=");

	for (i = 0; i < op->n_mounts; i++)
		if (op->mounts[i].env && strlen(op->mounts[i].env) == l &&
		    !strncmp(op->mounts[i].env, kv, l))
			return true;
	return false;
}

/* Wipe and free an environment that may hold secrets. */
static void secret_env_free(char **env)
{
	size_t i;

	for (i = 0; env && env[i]; i++) {
		explicit_bzero(env[i], strlen(env[i]));
		free(env[i]);
	}
	free(env);
}

static const struct kiln_secret *find_secret(const struct kiln_job *job, const char *id)
{
	size_t i;

	for (i = 0; i < job->n_secrets; i++)
		if (!strcmp(job->secrets[i].id, id))
			return &job->secrets[i];
	return NULL;
}

/* A missing optional secret leaves nothing mounted (an empty tmpfs). */
static int secret_mount(const struct kiln_job *job, const struct kiln_op *op,
			const struct kiln_def_mount *m, struct kiln_exec_mount *em,
			struct kiln_error **err)
{
	const struct kiln_secret *sec = find_secret(job, m->cache_id);
	_cleanup_free_ char *w = kiln_op_who(op);

	if (!sec && m->required)
		return kiln_error_set(err, -ENOENT,
				      "%s: secret '%s' is required but was not given (kiln build --secret id=%s,src=FILE)",
				      w, m->cache_id, m->cache_id);
	if (!sec) {
		em->type = KILN_MOUNT_TMPFS;
		em->tmpfs_size = 4096;
		return 0;
	}
	em->type = KILN_MOUNT_SECRET;
	em->secret = sec->data;
	em->secret_len = sec->len;
	em->mode = (uint32_t)m->mode;
	em->uid = (uint32_t)m->uid;
	em->gid = (uint32_t)m->gid;
	return 0;
}

/*
 * The environment with the secrets given as variables (RUN --mount=
 * type=secret,env=NAME) after the op's own, or NULL when there are none.
 * They replace the op's variables of the same names. The values
 * never leave this job: not in a key, a log or an error.
 */
static int secret_env(const struct kiln_job *job, const struct kiln_op *op, char ***out,
		      struct kiln_error **err)
{
	size_t i, n = 0, k = 0;
	char **env;

	*out = NULL;
	for (i = 0; i < op->n_mounts; i++)
		n += op->mounts[i].kind == KILN_DEF_MOUNT_SECRET && op->mounts[i].env;
	if (n == 0)
		return 0;
	for (i = 0; op->env && op->env[i]; i++)
		n++;
	env = xcalloc(n + 1, sizeof(char *));
	for (i = 0; op->env && op->env[i]; i++)
		if (!secret_env_named(op, op->env[i]))
			env[k++] = xstrdup(op->env[i]);
	for (i = 0; i < op->n_mounts; i++) {
		const struct kiln_def_mount *m = &op->mounts[i];
		const struct kiln_secret *sec;
		_cleanup_free_ char *w = NULL;
		size_t nl;

		if (m->kind != KILN_DEF_MOUNT_SECRET || !m->env)
			continue;
		sec = find_secret(job, m->cache_id);
		if (!sec && m->required) {
			w = kiln_op_who(op);
			secret_env_free(env);
			return kiln_error_set(err, -ENOENT,
					      "%s: secret '%s' is required but was not given (kiln build --secret id=%s,src=FILE)",
					      w, m->cache_id, m->cache_id);
		}
		if (!sec)
			continue; /* an optional secret that is missing: unset */
		if (memchr(sec->data, '\0', sec->len)) {
			w = kiln_op_who(op);
			secret_env_free(env);
			return kiln_error_set(err, -EINVAL,
					      "%s: secret '%s' holds a NUL byte and cannot be an environment variable",
					      w, m->cache_id);
		}
		nl = strlen(m->env);
		env[k] = xmalloc(nl + 1 + sec->len + 1);
		memcpy(env[k], m->env, nl);
		env[k][nl] = '=';
		memcpy(env[k] + nl + 1, sec->data, sec->len);
		env[k][nl + 1 + sec->len] = '\0';
		k++;
	}
	*out = env;
	return 0;
}

int kiln_ssh_agents_find(const struct kiln_ssh_agents *a, const char *id)
{
	size_t i;

	for (i = 0; a && id && i < a->n_ids; i++)
		if (!strcmp(a->ids[i], id))
			return (int)i;
	return -ENOENT;
}

bool kiln_ssh_agents_has(const struct kiln_ssh_agents *a, const char *id)
{
	return kiln_ssh_agents_find(a, id) >= 0;
}

/* The forwarders of one exec's ssh mounts, in a private dir of the worker's. */
struct ssh_mounts {
	char *dir;
	int dirfd;
	struct kiln_ssh_forwarder **fw;
	size_t n;
};

static void ssh_mounts_release(struct ssh_mounts *s)
{
	size_t i;

	for (i = 0; i < s->n; i++)
		kiln_ssh_forwarder_free(s->fw[i]);
	free(s->fw);
	if (s->dirfd >= 0)
		close(s->dirfd);
	if (s->dir)
		rmdir(s->dir);
	free(s->dir);
	*s = (struct ssh_mounts){ .dirfd = -1 };
}

/*
 * RUN --mount=type=ssh: a forwarder socket bind-mounted at the target,
 * living as long as the exec. An id the client did not declare fails a
 * required mount and leaves an optional one out (*skip), as BuildKit's
 * getSSHMountable (solver/llbsolver/mounts/mount.go) does.
 */
static int ssh_mount(struct kiln_worker *wk, const struct kiln_job *job, const char *who,
		     const struct kiln_def_mount *m, struct ssh_mounts *s,
		     struct kiln_exec_mount *em, bool *skip, struct kiln_error **err)
{
	_cleanup_free_ char *name = xasprintf("a%zu", s->n);
	int r;

	*skip = !kiln_ssh_agents_has(job->ssh, m->cache_id);
	if (*skip && m->required)
		return kiln_error_set(err, -ENOENT,
				      "%s: ssh agent '%s' is required but was not given (kiln build --ssh %s[=SOCKET|KEY])",
				      who, m->cache_id, m->cache_id);
	if (*skip)
		return 0;
	if (!job->ssh->relay) /* declared, yet nowhere to send its requests: never run without */
		return kiln_error_set(err, -EINVAL, "%s: ssh mount %s (id '%s'): no relay to the client's agent",
				      who, m->target, m->cache_id);
	if (!s->dir) {
		_cleanup_free_ char *rnd = kiln_random_hex(8);

		s->dir = xasprintf("%s/run/ssh-%s", kiln_worker_root(wk), rnd);
		if (mkdir(s->dir, 0700) < 0) {
			r = kiln_error_seterrno(err, -errno, "%s: ssh agent dir %s", who, s->dir);
			free(TAKE_PTR(s->dir));
			return r;
		}
		s->dirfd = open(s->dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
		if (s->dirfd < 0)
			return kiln_error_seterrno(err, -errno, "%s: ssh agent dir %s", who, s->dir);
	}
	s->fw = xrealloc(s->fw, (s->n + 1) * sizeof(*s->fw));
	r = kiln_ssh_forwarder_start(s->dirfd, name, (uid_t)m->uid, (gid_t)m->gid,
				     (mode_t)m->mode, m->cache_id, job->ssh->relay, job->ssh->ud,
				     &s->fw[s->n], err);
	if (r < 0) {
		kiln_error_prefix(err, "%s: ssh mount %s (id '%s')", who, m->target, m->cache_id);
		return r;
	}
	s->n++;
	em->type = KILN_MOUNT_SSH;
	em->socket = xasprintf("%s/%s", s->dir, name);
	return 0;
}

/*
 * A cache seeded from another op's result (RUN --mount=type=cache,from=):
 * the directory at source in that input is copied into the cache when
 * the worker creates it (BuildKit: the cache ref is made from the
 * input's ref); an existing cache is not touched.
 */
static int cache_seed(struct kiln_worker *wk, const struct kiln_job *job,
		      const struct kiln_def_mount *m, const char *who,
		      struct kiln_exec_mount *em, struct kiln_error **err)
{
	struct kiln_tree_entry e = { 0 };
	int r;

	r = kiln_tree_lookup(kiln_worker_store(wk), &job->inputs[m->input], m->source, &e, err);
	if (r == 0 && e.type != KILN_ENTRY_DIR)
		r = kiln_error_set(err, -ENOTDIR, "%s: cache mount %s: source /%s is not a directory",
				   who, m->target, m->source);
	em->tree = e.digest;
	em->seeded = true;
	kiln_tree_entry_release(&e);
	return r;
}

static int job_exec(struct kiln_worker *wk, const struct kiln_job *job,
		    struct kiln_job_result *out, struct kiln_error **err)
{
	const struct kiln_op *op = &job->def->ops[job->op];
	struct kiln_exec_mount *mounts = xcalloc(op->n_mounts + 1, sizeof(*mounts));
	struct kiln_exec_request req = { 0 };
	struct kiln_exec_result res = { 0 };
	_cleanup_free_ char *id = kiln_random_hex(8), *cmd = NULL, *w = kiln_op_who(op);
	struct ssh_mounts ssh = { .dirfd = -1 };
	char **env = NULL;
	size_t i, n = 0;
	bool skip = false;
	int r = 0;

	prepare_layers(wk, job, &job->inputs[op->rootfs]);
	r = secret_env(job, op, &env, err);
	for (i = 0; r == 0 && i < op->n_mounts; i++) {
		const struct kiln_def_mount *m = &op->mounts[i];
		struct kiln_exec_mount *em = &mounts[n];

		if (!m->target)
			continue; /* a secret given as an environment variable only */
		n++;
		em->target = m->target;
		switch (m->kind) {
		case KILN_DEF_MOUNT_BIND: {
			struct kiln_tree_entry e = { 0 };

			em->type = KILN_MOUNT_TREE;
			em->readonly = m->readonly;
			r = kiln_tree_lookup(kiln_worker_store(wk), &job->inputs[m->input],
					     m->source, &e, err);
			if (r == 0 && e.type != KILN_ENTRY_DIR)
				r = kiln_error_set(err, -ENOTDIR,
						   "%s: mount %s: source /%s is not a directory",
						   w, m->target, m->source);
			em->tree = e.digest;
			kiln_tree_entry_release(&e);
			break;
		}
		case KILN_DEF_MOUNT_CACHE:
			em->type = KILN_MOUNT_CACHE;
			em->cache_id = m->cache_id;
			em->sharing = m->sharing == KILN_SHARING_LOCKED ? KILN_MOUNT_LOCKED
				      : m->sharing == KILN_SHARING_PRIVATE ? KILN_MOUNT_PRIVATE
									   : KILN_MOUNT_SHARED;
			em->mode = (uint32_t)m->mode;
			em->uid = (uint32_t)m->uid;
			em->gid = (uint32_t)m->gid;
			if (m->input >= 0)
				r = cache_seed(wk, job, m, w, em, err);
			break;
		case KILN_DEF_MOUNT_SECRET:
			r = secret_mount(job, op, m, em, err);
			break;
		case KILN_DEF_MOUNT_TMPFS:
			em->type = KILN_MOUNT_TMPFS;
			em->tmpfs_size = m->size;
			break;
		case KILN_DEF_MOUNT_SSH:
			r = ssh_mount(wk, job, w, m, &ssh, em, &skip, err);
			if (skip)
				n--; /* an optional agent the client did not give */
			break;
		}
	}
	if (r < 0)
		goto out;
	req.id = id;
	req.rootfs = job->inputs[op->rootfs];
	req.argv = (const char *const *)op->args;
	req.env = env ? (const char *const *)env : (const char *const *)op->env;
	req.env_secret = env != NULL;
	req.cwd = op->cwd;
	req.user = op->user;
	req.network_host = op->network_host;
	req.mounts = mounts;
	req.n_mounts = n;
	req.platform = op->platform;
	req.output = job->output;
	req.output_ud = job->output_ud;
	req.cancelled = job->cancelled;
	req.cancelled_ud = job->cancelled_ud;
	r = kiln_worker_exec(wk, &req, &res, err);
	if (r < 0) {
		kiln_error_prefix(err, "%s", w);
		goto out;
	}
	if (res.exit_code != 0) {
		cmd = command_line(op);
		r = kiln_error_set(err, -KILN_ESTEPFAILED,
				   "%s: process \"%s\" did not complete successfully: exit code %d%s%s",
				   w, cmd, res.exit_code,
				   res.tail && *res.tail ? "\n--- last output ---\n" : "",
				   res.tail ? res.tail : "");
		goto out;
	}
	out->tree = res.rootfs;
out:
	kiln_exec_result_release(&res);
	for (i = 0; i < n; i++)
		if (mounts[i].type == KILN_MOUNT_SSH)
			free((char *)mounts[i].socket);
	ssh_mounts_release(&ssh);
	free(mounts);
	secret_env_free(env);
	return r;
}

static int job_image(struct kiln_worker *w, const struct kiln_job *job,
		     struct kiln_job_result *out, struct kiln_error **err)
{
	const struct kiln_op *op = &job->def->ops[job->op];
	const struct kiln_image_source src = { .registry = job->registry,
					       .store = kiln_worker_store(w),
					       .layouts_in_store = job->layouts_in_store };
	struct kiln_image_ref ref = { 0 };
	struct kiln_image img = { 0 };
	struct kiln_digest pin = { 0 };
	json_t *meta, *blobs;
	size_t i;
	int r;

	if (job->pin)
		pin = *job->pin;
	r = kiln_image_ref_parse(op->ref, "/", &ref, err);
	if (r == 0)
		r = kiln_image_import(&src, kiln_worker_layers(w), &ref, &pin, &img, err);
	if (r == 0) {
		out->tree = img.rootfs;
		blobs = json_pack("[ss]", KILN_DIGEST_STR(&img.manifest),
				  KILN_DIGEST_STR(&img.config));
		for (i = 0; i < img.n_layers; i++)
			json_array_append_new(blobs, json_string(KILN_DIGEST_STR(&img.layers[i])));
		meta = json_pack("{ssssso}", "manifest", KILN_DIGEST_STR(&img.manifest),
				 "config", KILN_DIGEST_STR(&img.config), "blobs", blobs);
		out->meta = json_dumps(meta, JSON_COMPACT | JSON_SORT_KEYS);
		json_decref(meta);
	}
	kiln_image_release(&img);
	kiln_image_ref_release(&ref);
	return r;
}

static int job_file(struct kiln_worker *w, const struct kiln_job *job,
		    struct kiln_job_result *out, struct kiln_error **err)
{
	const struct kiln_op *op = &job->def->ops[job->op];
	int r;

	if (op->type == KILN_OP_MERGE)
		r = kiln_merge_trees(kiln_worker_store(w), job->inputs, op->n_inputs,
				     &out->tree, err);
	else
		r = kiln_fileop_run(kiln_worker_store(w), op,
				    op->rootfs >= 0 ? &job->inputs[op->rootfs] : NULL,
				    job->inputs, &out->tree, err);
	if (r < 0) /* the step and its place first, as for execs */
		prefix_who(err, op);
	return r;
}

/* The result of source.http: a tree holding the one downloaded file. */
static int job_http(struct kiln_worker *w, const struct kiln_job *job,
		    struct kiln_job_result *out, struct kiln_error **err)
{
	const struct kiln_op *op = &job->def->ops[job->op];
	struct kiln_store *st = kiln_worker_store(w);
	struct kiln_tree t = KILN_TREE_INIT;
	struct kiln_tree_entry e = { 0 };
	struct kiln_digest pin = { 0 };
	uint64_t size = 0;
	int r = 0;

	if (job->pin)
		pin = *job->pin;
	if (!kiln_digest_is_set(&pin) || !kiln_store_has(st, &pin))
		r = kiln_http_fetch(st, op->url, kiln_digest_is_set(&pin) ? &pin : NULL, &pin,
				    &size, err);
	if (r == 0)
		r = kiln_store_size(st, &pin, &size);
	if (r < 0) {
		prefix_who(err, op);
		return r;
	}
	e.name = xstrdup(op->filename);
	e.type = KILN_ENTRY_FILE;
	e.mode = (uint32_t)op->http_mode;
	e.size = size;
	e.digest = pin;
	kiln_tree_set(&t, &e);
	r = kiln_tree_put(st, &t, &out->tree, err);
	kiln_tree_release(&t);
	return r;
}

/* The result of source.git: the pinned commit's tree, fetched here. */
static int job_git(struct kiln_worker *w, const struct kiln_job *job,
		   struct kiln_job_result *out, struct kiln_error **err)
{
	const struct kiln_op *op = &job->def->ops[job->op];
	char commit[KILN_GIT_COMMIT_HEXLEN + 1];
	_cleanup_free_ char *scratch = NULL;
	struct kiln_git_checkout c = { .url = op->url, .ref = op->git_ref,
				       .subdir = op->git_subdir,
				       .keep_git_dir = op->keep_git_dir };
	int r;

	if (!job->pin || kiln_git_pin_to_commit(job->pin, commit) < 0)
		return kiln_error_set(err, -EINVAL, "internal: git source without a commit pin");
	c.commit = commit;
	scratch = xasprintf("%s/run/git-XXXXXX", kiln_worker_root(w));
	if (!mkdtemp(scratch)) {
		r = kiln_error_seterrno(err, -errno, "%s", scratch);
	} else {
		c.scratch = scratch;
		r = kiln_git_checkout(kiln_worker_store(w), &c, &out->tree, err);
		kiln_rm_rf(scratch);
	}
	if (r < 0)
		prefix_who(err, op);
	return r;
}

int kiln_job_run(struct kiln_worker *w, const struct kiln_job *job,
		 struct kiln_job_result *out, struct kiln_error **err)
{
	const struct kiln_op *op = &job->def->ops[job->op];
	uint64_t entries;
	int r = 0;

	memset(out, 0, sizeof(*out));
	switch (op->type) {
	case KILN_OP_SOURCE_LOCAL:
		if (!job->pin)
			return kiln_error_set(err, -EINVAL, "internal: local source without a pin");
		out->tree = *job->pin; /* hashed while pinning */
		break;
	case KILN_OP_SOURCE_IMAGE:
		r = job_image(w, job, out, err);
		break;
	case KILN_OP_SOURCE_HTTP:
		r = job_http(w, job, out, err);
		break;
	case KILN_OP_SOURCE_GIT:
		r = job_git(w, job, out, err);
		break;
	case KILN_OP_EXEC:
		r = job_exec(w, job, out, err);
		break;
	case KILN_OP_FILE:
	case KILN_OP_MERGE:
		r = job_file(w, job, out, err);
		break;
	}
	if (r < 0) {
		kiln_job_result_release(out);
		return r;
	}
	/* The record's size, counted where the job ran. */
	kiln_tree_usage(kiln_worker_store(w), &out->tree, &out->size, &entries, NULL);
	return 0;
}
