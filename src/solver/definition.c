/*
 * Op graph parsing and validation. The JSON format is documented in
 * docs/definition.md; every error names the op and the field at fault.
 */
#include "solver/definition.h"

#include <ctype.h>
#include <limits.h>
#include <stdio.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/parse-util.h"
#include "basic/platform.h"
#include "basic/strbuf.h"
#include "basic/strv.h"
#include "registry/registry.h"
#include "source/local.h"

/* Parsing context for error messages. */
struct pctx {
	const char *file;
	struct kiln_definition *def;
	json_t *ids; /* id -> index */
	struct kiln_op *op;
	const char *base_dir;
	struct kiln_error **err;
};

static int op_err(struct pctx *p, const char *field, const char *fmt, ...)
	_printf_(3, 4);

static int op_err(struct pctx *p, const char *field, const char *fmt, ...)
{
	const char *id = p->op->id ? p->op->id : "?";
	_cleanup_free_ char *where = field ? xasprintf("%s: op '%s' (ops[%zu]): field '%s'",
						       p->file, id, p->op->index, field)
					   : xasprintf("%s: op '%s' (ops[%zu])", p->file, id,
						       p->op->index);
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = kiln_error_setv(p->err, -EINVAL, where, fmt, ap);
	va_end(ap);
	return r;
}

const char *kiln_op_type_name(enum kiln_op_type t)
{
	switch (t) {
	case KILN_OP_SOURCE_IMAGE:
		return "source.image";
	case KILN_OP_SOURCE_LOCAL:
		return "source.local";
	case KILN_OP_SOURCE_HTTP:
		return "source.http";
	case KILN_OP_SOURCE_GIT:
		return "source.git";
	case KILN_OP_EXEC:
		return "exec";
	case KILN_OP_FILE:
		return "file";
	case KILN_OP_MERGE:
		return "merge";
	}
	return "?";
}

static int check_fields(struct pctx *p, json_t *obj, const char *const *allowed,
			const char *where)
{
	const char *key;
	json_t *v;

	json_object_foreach(obj, key, v) {
		const char *const *a;
		bool ok = false;

		for (a = allowed; *a; a++)
			if (!strcmp(*a, key))
				ok = true;
		if (!where && !strcmp(key, "source")) /* any op: where it came from */
			ok = true;
		if (!ok)
			return op_err(p, key, "unknown field%s%s", where ? " in " : "",
				      where ? where : "");
	}
	return 0;
}

static int get_str(struct pctx *p, json_t *obj, const char *field, bool required,
		   char **out)
{
	json_t *v = json_object_get(obj, field);

	*out = NULL;
	if (!v) {
		if (required)
			return op_err(p, field, "missing (required)");
		return 0;
	}
	if (!json_is_string(v))
		return op_err(p, field, "expected a string");
	if (strlen(json_string_value(v)) != json_string_length(v))
		return op_err(p, field, "contains a NUL byte");
	*out = xstrdup(json_string_value(v));
	return 0;
}

static int get_bool(struct pctx *p, json_t *obj, const char *field, bool def,
		    bool *out)
{
	json_t *v = json_object_get(obj, field);

	*out = def;
	if (!v)
		return 0;
	if (!json_is_boolean(v))
		return op_err(p, field, "expected true or false");
	*out = json_is_true(v);
	return 0;
}

static int get_str_array(struct pctx *p, json_t *obj, const char *field,
			 char ***out, size_t *n)
{
	json_t *v = json_object_get(obj, field), *e;
	size_t i;

	*out = NULL;
	*n = 0;
	if (!v)
		return 0;
	if (!json_is_array(v))
		return op_err(p, field, "expected an array of strings");
	*out = xcalloc(json_array_size(v) + 1, sizeof(char *));
	json_array_foreach(v, i, e) {
		if (!json_is_string(e) ||
		    strlen(json_string_value(e)) != json_string_length(e))
			return op_err(p, field, "element %zu: expected a string", i);
		(*out)[(*n)++] = xstrdup(json_string_value(e));
	}
	return 0;
}

/* Octal mode as a string ("0755") or an integer. */
static int get_mode(struct pctx *p, json_t *obj, const char *field, int64_t *out)
{
	json_t *v = json_object_get(obj, field);
	char *end;
	long m;

	*out = -1;
	if (!v)
		return 0;
	if (json_is_integer(v)) {
		m = (long)json_integer_value(v);
	} else if (json_is_string(v)) {
		const char *s = json_string_value(v);
		m = strtol(s, &end, 8);
		if (!*s || *end)
			return op_err(p, field, "'%s' is not an octal mode", s);
	} else {
		return op_err(p, field, "expected an octal string like \"0755\"");
	}
	if (m < 0 || m > 07777)
		return op_err(p, field, "mode %lo out of range (0-07777)", m);
	*out = m;
	return 0;
}

static bool is_number(const char *s)
{
	uint32_t v;

	return kiln_parse_u32(s, &v) == 0;
}

/*
 * "uid[:gid]" or an integer uid; with names allowed (user/group non-NULL),
 * non-numeric parts are kept as names to resolve later.
 */
static int get_owner(struct pctx *p, json_t *obj, const char *field, int64_t *uid,
		     int64_t *gid, char **user, char **group)
{
	json_t *v = json_object_get(obj, field);
	_cleanup_free_ char *s = NULL;
	char *colon;
	uint32_t u = 0, g = 0;

	*uid = *gid = -1;
	if (!v)
		return 0;
	if (json_is_integer(v) && json_integer_value(v) >= 0 &&
	    json_integer_value(v) <= UINT32_MAX) {
		*uid = *gid = json_integer_value(v);
		return 0;
	}
	if (!json_is_string(v) || !*json_string_value(v))
		return op_err(p, field, "expected \"uid[:gid]\"%s", user ? " or \"user[:group]\"" : "");
	s = xstrdup(json_string_value(v));
	colon = strchr(s, ':');
	if (colon)
		*colon++ = '\0';
	if ((!is_number(s) || (colon && !is_number(colon))) && !user)
		return op_err(p, field, "'%s' is not numeric \"uid[:gid]\"", json_string_value(v));
	if (!*s || (colon && !*colon))
		return op_err(p, field, "'%s': empty user or group", json_string_value(v));
	if (kiln_parse_u32(s, &u) == 0)
		*uid = u;
	else
		*user = xstrdup(s);
	if (colon && kiln_parse_u32(colon, &g) == 0)
		*gid = g;
	else if (colon)
		*group = xstrdup(colon);
	else if (*uid >= 0)
		*gid = *uid; /* "1000" means 1000:1000 */
	return 0;
}

/* Resolve "id" or "id:N" to an edge appended to op->inputs; returns index. */
static int get_edge(struct pctx *p, json_t *obj, const char *field, bool required,
		    int *out)
{
	json_t *v = json_object_get(obj, field), *idx;
	_cleanup_free_ char *s = NULL;
	char *colon;
	uint32_t output = 0;
	size_t alloc;

	*out = -1;
	if (!v) {
		if (required)
			return op_err(p, field, "missing (required)");
		return 0;
	}
	if (!json_is_string(v))
		return op_err(p, field, "expected an op id string");
	s = xstrdup(json_string_value(v));
	colon = strrchr(s, ':');
	if (colon) {
		*colon = '\0';
		if (kiln_parse_u32(colon + 1, &output) < 0)
			return op_err(p, field, "'%s': bad output index",
				      json_string_value(v));
	}
	idx = json_object_get(p->ids, s);
	if (!idx)
		return op_err(p, field, "input '%s' does not name an op", s);
	if (output != 0)
		return op_err(p, field, "input '%s' has no output %u (ops have one output)",
			      s, output);
	alloc = p->op->n_inputs;
	p->op->inputs = xrealloc(p->op->inputs, (alloc + 1) * sizeof(struct kiln_edge));
	p->op->inputs[alloc].op = (size_t)json_integer_value(idx);
	p->op->inputs[alloc].output = output;
	p->op->n_inputs++;
	*out = (int)alloc;
	return 0;
}

/* An absolute path inside a tree, cleaned: "/a/b". */
static int get_abs_path(struct pctx *p, json_t *obj, const char *field,
			bool required, char **out)
{
	_cleanup_free_ char *raw = NULL;
	int r = get_str(p, obj, field, required, &raw);

	*out = NULL;
	if (r < 0 || !raw)
		return r;
	if (raw[0] != '/')
		return op_err(p, field, "'%s' must be an absolute path", raw);
	*out = kiln_path_clean_abs(raw);
	return 0;
}

static int parse_image(struct pctx *p, json_t *o)
{
	static const char *const allowed[] = { "id", "op", "name", "platform", "ref", NULL };
	int r = check_fields(p, o, allowed, NULL);

	if (r < 0)
		return r;
	r = get_str(p, o, "ref", true, &p->op->ref);
	if (r < 0)
		return r;
	if (strncmp(p->op->ref, "oci-layout://", 13) != 0) {
		/* A registry reference, normalized as Docker does. */
		struct kiln_registry_ref rr = { 0 };
		struct kiln_error *e = NULL;

		if (kiln_registry_ref_parse(p->op->ref, &rr, &e) < 0) {
			r = op_err(p, "ref", "%s", kiln_error_msg(e));
			kiln_error_free(e);
			return r;
		}
		free(p->op->ref);
		p->op->ref = kiln_registry_ref_format(&rr);
		kiln_registry_ref_release(&rr);
		return 0;
	}
	{
		/* Absolute and clean, so the op means one thing however it is spelt. */
		const char *path = p->op->ref + 13;
		_cleanup_free_ char *joined = path[0] == '/' ? xstrdup(path)
					      : kiln_path_join(p->base_dir, path);
		_cleanup_free_ char *clean = kiln_path_clean(joined);

		free(p->op->ref);
		p->op->ref = xasprintf("oci-layout:///%s", clean);
	}
	return 0;
}

static int parse_local(struct pctx *p, json_t *o)
{
	static const char *const allowed[] = { "id", "op", "name", "platform", "path",
					       "include", "exclude", NULL };
	_cleanup_free_ char *path = NULL;
	int r = check_fields(p, o, allowed, NULL);

	if (r < 0)
		return r;
	r = get_str(p, o, "path", true, &path);
	if (r < 0)
		return r;
	{
		_cleanup_free_ char *joined = path[0] == '/' ? xstrdup(path)
					      : kiln_path_join(p->base_dir, path);
		p->op->local_path = kiln_path_clean_abs(joined);
	}
	r = get_str_array(p, o, "include", &p->op->include, &p->op->n_include);
	if (r < 0)
		return r;
	return get_str_array(p, o, "exclude", &p->op->exclude, &p->op->n_exclude);
}

static int get_sharing(struct pctx *p, json_t *m, enum kiln_cache_sharing *out)
{
	_cleanup_free_ char *v = NULL;
	int r = get_str(p, m, "sharing", false, &v);

	*out = KILN_SHARING_SHARED;
	if (r < 0 || !v || !strcmp(v, "shared"))
		return r;
	if (!strcmp(v, "private"))
		*out = KILN_SHARING_PRIVATE;
	else if (!strcmp(v, "locked"))
		*out = KILN_SHARING_LOCKED;
	else
		return op_err(p, "sharing", "'%s': expected shared, private or locked", v);
	return 0;
}

static int get_mount_owner(struct pctx *p, json_t *m, struct kiln_def_mount *mt,
			   int64_t def_mode)
{
	json_t *u = json_object_get(m, "uid"), *g = json_object_get(m, "gid");
	int r = get_mode(p, m, "mode", &mt->mode);

	if (r < 0)
		return r;
	if (mt->mode < 0)
		mt->mode = def_mode;
	if ((u && (!json_is_integer(u) || json_integer_value(u) < 0)) ||
	    (g && (!json_is_integer(g) || json_integer_value(g) < 0)))
		return op_err(p, u ? "uid" : "gid", "expected a number");
	mt->uid = u ? json_integer_value(u) : 0;
	mt->gid = g ? json_integer_value(g) : 0;
	return 0;
}

static int parse_http(struct pctx *p, json_t *o)
{
	static const char *const allowed[] = { "id", "op", "name", "platform", "url",
					       "checksum", "filename", "mode", "chown", NULL };
	_cleanup_free_ char *sum = NULL;
	const char *slash;
	int r = check_fields(p, o, allowed, NULL);

	if (r == 0)
		r = get_str(p, o, "url", true, &p->op->url);
	if (r == 0)
		r = get_str(p, o, "checksum", false, &sum);
	if (r == 0)
		r = get_str(p, o, "filename", false, &p->op->filename);
	if (r == 0)
		r = get_mode(p, o, "mode", &p->op->http_mode);
	if (r < 0)
		return r;
	if (strncmp(p->op->url, "http://", 7) && strncmp(p->op->url, "https://", 8))
		return op_err(p, "url", "'%s': only http:// and https:// URLs", p->op->url);
	if (sum && kiln_digest_parse(sum, &p->op->checksum) < 0)
		return op_err(p, "checksum", "'%s' is not sha256:<64 hex>", sum);
	if (p->op->http_mode < 0)
		p->op->http_mode = 0600;
	if (!p->op->filename) {
		const char *path = strchr(p->op->url + 8, '/');
		slash = path ? strrchr(path, '/') : NULL;
		p->op->filename = xstrdup(slash && slash[1] && !strpbrk(slash + 1, "?#")
						  ? slash + 1 : "index.html");
	}
	if (!*p->op->filename || strchr(p->op->filename, '/') ||
	    !strcmp(p->op->filename, ".") || !strcmp(p->op->filename, ".."))
		return op_err(p, "filename", "'%s' is not a file name", p->op->filename);
	return 0;
}

/*
 * source.git: a remote repository (BuildKit's llb.Git). Only transports
 * that reach another host: https, http, git, ssh and scp-like
 * "user@host:path"; never a path or file:// on the worker.
 */
static bool git_url_ok(const char *u)
{
	static const char *const schemes[] = { "https://", "http://", "git://", "ssh://", NULL };
	const char *colon, *at;
	size_t i;

	if (strpbrk(u, " \t\n\r") || *u == '-')
		return false;
	for (i = 0; schemes[i]; i++)
		if (!strncmp(u, schemes[i], strlen(schemes[i])))
			return u[strlen(schemes[i])] != '\0';
	/* scp-like: user@host:path, no "://", host not empty */
	colon = strchr(u, ':');
	at = strchr(u, '@');
	return colon && at && at < colon && at > u && colon > at + 1 && !strstr(u, "://");
}

static int parse_git(struct pctx *p, json_t *o)
{
	static const char *const allowed[] = { "id", "op", "name", "platform", "url", "ref",
					       "subdir", "keep_git_dir", NULL };
	int r = check_fields(p, o, allowed, NULL);

	if (r == 0)
		r = get_str(p, o, "url", true, &p->op->url);
	if (r == 0)
		r = get_str(p, o, "ref", false, &p->op->git_ref);
	if (r == 0)
		r = get_str(p, o, "subdir", false, &p->op->git_subdir);
	if (r == 0)
		r = get_bool(p, o, "keep_git_dir", false, &p->op->keep_git_dir);
	if (r < 0)
		return r;
	if (!git_url_ok(p->op->url)) {
		_cleanup_free_ char *safe = kiln_url_strip_userinfo(p->op->url);
		return op_err(p, "url", "'%s': expected an https://, http://, git://, ssh:// or "
			      "user@host:path repository", safe);
	}
	if (p->op->git_ref && (*p->op->git_ref == '-' || strpbrk(p->op->git_ref, " \t\n:")))
		return op_err(p, "ref", "'%s' is not a ref", p->op->git_ref);
	if (p->op->git_ref && !*p->op->git_ref)
		free(TAKE_PTR(p->op->git_ref));
	if (p->op->git_subdir) {
		char *clean = kiln_path_clean(p->op->git_subdir);

		free(p->op->git_subdir);
		p->op->git_subdir = clean;
		if (!*clean)
			free(TAKE_PTR(p->op->git_subdir));
	}
	return 0;
}

/* A name a secret may be given as: non-empty, no '=' and no NUL. */
static bool valid_env_name(const char *s)
{
	return *s && !strchr(s, '=') && strlen(s) <= 1024;
}

static int parse_mount(struct pctx *p, json_t *m, size_t i)
{
	static const char *const allowed[] = { "target", "type", "input", "source",
					       "readonly", "id", "size", "sharing", "mode",
					       "uid", "gid", "required", "env", NULL };
	struct kiln_def_mount *mt = &p->op->mounts[i];
	_cleanup_free_ char *type = NULL, *src = NULL;
	int r;

	if (!json_is_object(m))
		return op_err(p, "mounts", "element %zu: expected an object", i);
	r = check_fields(p, m, allowed, "a mount");
	if (r == 0)
		r = get_str(p, m, "type", false, &type);
	if (r < 0)
		return r;
	if (type && !strcmp(type, "secret") && !json_object_get(m, "target")) {
		json_t *id = json_object_get(m, "id");
		if (!json_is_string(id))
			return op_err(p, "id", "a secret mount needs an id");
		/* Given as an environment variable only: no file. */
		if (!json_object_get(m, "env"))
			mt->target = xasprintf("/run/secrets/%s", json_string_value(id));
	} else {
		r = get_abs_path(p, m, "target", true, &mt->target);
		if (r < 0)
			return r;
	}
	if (mt->target && !strcmp(mt->target, "/"))
		return op_err(p, "mounts", "element %zu: cannot mount over /", i);
	mt->input = -1;
	if (!type || !strcmp(type, "bind")) {
		mt->kind = KILN_DEF_MOUNT_BIND;
		r = get_edge(p, m, "input", true, &mt->input);
		if (r < 0)
			return r;
		r = get_str(p, m, "source", false, &src);
		if (r < 0)
			return r;
		mt->source = kiln_path_clean(src ? src : "");
		return get_bool(p, m, "readonly", true, &mt->readonly);
	}
	if (!strcmp(type, "cache")) {
		mt->kind = KILN_DEF_MOUNT_CACHE;
		r = get_str(p, m, "id", false, &mt->cache_id);
		if (r == 0)
			r = get_sharing(p, m, &mt->sharing);
		if (r == 0)
			r = get_mount_owner(p, m, mt, 0755);
		/* input (and source in it): the seed of a new cache */
		if (r == 0)
			r = get_edge(p, m, "input", false, &mt->input);
		if (r == 0)
			r = get_str(p, m, "source", false, &src);
		if (r < 0)
			return r;
		if (src && mt->input < 0)
			return op_err(p, "source", "a cache mount's source needs an input");
		if (mt->input >= 0)
			mt->source = kiln_path_clean(src ? src : "");
		if (!mt->cache_id)
			mt->cache_id = xstrdup(mt->target);
		return 0;
	}
	if (!strcmp(type, "secret")) {
		mt->kind = KILN_DEF_MOUNT_SECRET;
		r = get_str(p, m, "id", true, &mt->cache_id);
		if (r == 0)
			r = get_bool(p, m, "required", false, &mt->required);
		if (r == 0)
			r = get_mount_owner(p, m, mt, 0400);
		if (r == 0)
			r = get_str(p, m, "env", false, &mt->env);
		if (r == 0 && mt->env && !valid_env_name(mt->env))
			r = op_err(p, "env", "'%s' is not an environment variable name", mt->env);
		return r;
	}
	if (!strcmp(type, "ssh")) {
		/* Only the id is in the op; the socket is the client's, never here. */
		mt->kind = KILN_DEF_MOUNT_SSH;
		r = get_str(p, m, "id", false, &mt->cache_id);
		if (r == 0)
			r = get_bool(p, m, "required", false, &mt->required);
		if (r == 0)
			r = get_mount_owner(p, m, mt, 0600);
		if (r == 0 && !mt->cache_id)
			mt->cache_id = xstrdup("default");
		if (r == 0 && !*mt->cache_id)
			r = op_err(p, "id", "an ssh mount's id is empty");
		return r;
	}
	if (!strcmp(type, "tmpfs")) {
		json_t *sz = json_object_get(m, "size");
		mt->kind = KILN_DEF_MOUNT_TMPFS;
		if (sz && (!json_is_integer(sz) || json_integer_value(sz) < 0))
			return op_err(p, "size", "expected a byte count");
		mt->size = sz ? (uint64_t)json_integer_value(sz) : 0;
		return 0;
	}
	return op_err(p, "mounts", "element %zu: unknown type '%s' (bind, cache, tmpfs, secret, ssh)",
		      i, type);
}

static int parse_exec(struct pctx *p, json_t *o)
{
	static const char *const allowed[] = { "id", "op", "name", "platform", "input",
					       "args", "env", "cwd", "user", "network",
					       "mounts", NULL };
	_cleanup_free_ char *net = NULL;
	json_t *mounts, *m;
	size_t i, n_ssh = 0;
	int r = check_fields(p, o, allowed, NULL);

	if (r < 0)
		return r;
	r = get_edge(p, o, "input", true, &p->op->rootfs);
	if (r < 0)
		return r;
	r = get_str_array(p, o, "args", &p->op->args, &p->op->n_args);
	if (r < 0)
		return r;
	if (p->op->n_args == 0)
		return op_err(p, "args", "missing or empty (the command to run)");
	r = get_str_array(p, o, "env", &p->op->env, &p->op->n_env);
	if (r < 0)
		return r;
	for (i = 0; i < p->op->n_env; i++)
		if (!strchr(p->op->env[i], '=') || p->op->env[i][0] == '=')
			return op_err(p, "env", "'%s' is not KEY=VALUE", p->op->env[i]);
	r = get_abs_path(p, o, "cwd", false, &p->op->cwd);
	if (r < 0)
		return r;
	if (!p->op->cwd)
		p->op->cwd = xstrdup("/");
	r = get_str(p, o, "user", false, &p->op->user);
	if (r < 0)
		return r;
	if (!p->op->user)
		p->op->user = xstrdup("0:0");
	r = get_str(p, o, "network", false, &net);
	if (r < 0)
		return r;
	if (net && strcmp(net, "none") && strcmp(net, "host"))
		return op_err(p, "network", "'%s': expected \"none\" or \"host\"", net);
	p->op->network_host = net && !strcmp(net, "host");
	mounts = json_object_get(o, "mounts");
	if (!mounts)
		return 0;
	if (!json_is_array(mounts))
		return op_err(p, "mounts", "expected an array");
	p->op->mounts = xcalloc(json_array_size(mounts) + 1, sizeof(*p->op->mounts));
	json_array_foreach(mounts, i, m) {
		p->op->n_mounts = i + 1;
		r = parse_mount(p, m, i);
		if (r < 0)
			return r;
		if (p->op->mounts[i].kind == KILN_DEF_MOUNT_SSH && ++n_ssh > KILN_DEF_MAX_SSH_MOUNTS)
			return op_err(p, "mounts", "element %zu: more than %u ssh mounts", i,
				      KILN_DEF_MAX_SSH_MOUNTS);
	}
	return 0;
}

/*
 * A copy's "exclude" or "include": .dockerignore patterns, checked now so
 * that a bad one names the op before anything runs.
 */
static int get_patterns(struct pctx *p, json_t *a, const char *field, char ***out, size_t *n)
{
	struct kiln_patterns *pt = NULL;
	struct kiln_error *perr = NULL;
	int r = get_str_array(p, a, field, out, n);

	if (r < 0 || *n == 0)
		return r;
	r = kiln_patterns_new((const char *const *)*out, *n, &pt, &perr);
	kiln_patterns_free(pt);
	if (r < 0) {
		r = op_err(p, field, "%s", perr ? kiln_error_msg(perr) : "bad pattern");
		kiln_error_free(perr);
	}
	return r;
}

static int parse_action(struct pctx *p, json_t *a, size_t i)
{
	static const char *const allowed[] = { "action", "from", "src", "dest", "path",
					       "target", "data", "mode", "chown",
					       "parents", "allow_not_found",
					       "follow_symlinks", "allow_wildcard",
					       "mtime", "extract", "exclude", "include", NULL };
	struct kiln_file_action *fa = &p->op->actions[i];
	_cleanup_free_ char *kind = NULL;
	json_t *mt;
	int r;

	if (!json_is_object(a))
		return op_err(p, "actions", "element %zu: expected an object", i);
	r = check_fields(p, a, allowed, "a file action");
	if (r < 0)
		return r;
	r = get_str(p, a, "action", true, &kind);
	if (r < 0)
		return r;
	fa->from = -1;
	r = get_mode(p, a, "mode", &fa->mode);
	if (r == 0)
		r = get_owner(p, a, "chown", &fa->uid, &fa->gid, &fa->user, &fa->group);
	if (r == 0)
		r = get_bool(p, a, "allow_not_found", false, &fa->allow_not_found);
	if (r < 0)
		return r;
	mt = json_object_get(a, "mtime");
	if (mt && !json_is_integer(mt))
		return op_err(p, "mtime", "expected unix seconds");
	fa->mtime = mt ? json_integer_value(mt) : -1;

	if (!strcmp(kind, "copy")) {
		_cleanup_free_ char *src = NULL;
		size_t l;

		fa->type = KILN_FA_COPY;
		r = get_edge(p, a, "from", true, &fa->from);
		if (r == 0)
			r = get_str(p, a, "src", true, &src);
		if (r == 0)
			r = get_abs_path(p, a, "dest", true, &fa->path);
		if (r == 0)
			r = get_bool(p, a, "parents", true, &fa->parents);
		if (r == 0)
			r = get_bool(p, a, "follow_symlinks", true, &fa->follow_symlinks);
		if (r == 0)
			r = get_bool(p, a, "allow_wildcard", true, &fa->allow_wildcard);
		if (r == 0)
			r = get_bool(p, a, "extract", false, &fa->extract);
		if (r == 0)
			r = get_patterns(p, a, "exclude", &fa->exclude, &fa->n_exclude);
		if (r == 0)
			r = get_patterns(p, a, "include", &fa->include, &fa->n_include);
		if (r < 0)
			return r;
		l = strlen(src);
		fa->contents_only = (l >= 2 && !strcmp(src + l - 2, "/.")) ||
				    !strcmp(src, ".") || (l > 0 && src[l - 1] == '/');
		fa->src = kiln_path_clean(src);
		/* "dest/" means "into the directory dest" (kept as a flag). */
		{
			json_t *d = json_object_get(a, "dest");
			const char *ds = json_string_value(d);
			if (ds[strlen(ds) - 1] == '/' && strcmp(fa->path, "/")) {
				char *x = xasprintf("%s/", fa->path);
				free(fa->path);
				fa->path = x;
			}
		}
		return 0;
	}
	if (!strcmp(kind, "mkdir")) {
		fa->type = KILN_FA_MKDIR;
		r = get_abs_path(p, a, "path", true, &fa->path);
		if (r == 0)
			r = get_bool(p, a, "parents", false, &fa->parents);
		return r;
	}
	if (!strcmp(kind, "mkfile")) {
		json_t *d;

		fa->type = KILN_FA_MKFILE;
		r = get_abs_path(p, a, "path", true, &fa->path);
		if (r < 0)
			return r;
		d = json_object_get(a, "data");
		if (!d || !json_is_string(d))
			return op_err(p, "data", "missing or not a string");
		fa->data_len = json_string_length(d);
		fa->data = xmalloc(fa->data_len + 1);
		memcpy(fa->data, json_string_value(d), fa->data_len + 1);
		return 0;
	}
	if (!strcmp(kind, "rm")) {
		fa->type = KILN_FA_RM;
		return get_abs_path(p, a, "path", true, &fa->path);
	}
	if (!strcmp(kind, "symlink")) {
		fa->type = KILN_FA_SYMLINK;
		r = get_abs_path(p, a, "path", true, &fa->path);
		if (r == 0)
			r = get_str(p, a, "target", true, &fa->target);
		if (r == 0 && (!*fa->target || strlen(fa->target) > 4095))
			return op_err(p, "target", "must be 1-4095 bytes");
		return r;
	}
	return op_err(p, "action", "unknown action '%s' (copy, mkdir, mkfile, rm, symlink)",
		      kind);
}

static int parse_file(struct pctx *p, json_t *o)
{
	static const char *const allowed[] = { "id", "op", "name", "platform", "input",
					       "actions", NULL };
	json_t *acts, *a;
	size_t i;
	int r = check_fields(p, o, allowed, NULL);

	if (r < 0)
		return r;
	r = get_edge(p, o, "input", false, &p->op->rootfs);
	if (r < 0)
		return r;
	acts = json_object_get(o, "actions");
	if (!acts || !json_is_array(acts) || json_array_size(acts) == 0)
		return op_err(p, "actions", "expected a non-empty array of actions");
	p->op->actions = xcalloc(json_array_size(acts), sizeof(*p->op->actions));
	json_array_foreach(acts, i, a) {
		p->op->n_actions = i + 1;
		r = parse_action(p, a, i);
		if (r < 0)
			return r;
	}
	return 0;
}

static int parse_merge(struct pctx *p, json_t *o)
{
	static const char *const allowed[] = { "id", "op", "name", "platform", "inputs",
					       NULL };
	json_t *ins = json_object_get(o, "inputs"), *e;
	size_t i;
	int r = check_fields(p, o, allowed, NULL), idx;

	if (r < 0)
		return r;
	if (!ins || !json_is_array(ins) || json_array_size(ins) < 2)
		return op_err(p, "inputs", "expected an array of at least two op ids");
	json_array_foreach(ins, i, e) {
		json_t *wrap = json_pack("{sO}", "inputs", e);
		r = get_edge(p, wrap, "inputs", true, &idx);
		json_decref(wrap);
		if (r < 0)
			return r;
	}
	return 0;
}

static bool valid_id(const char *s)
{
	if (!*s || strlen(s) > 128)
		return false;
	for (; *s; s++)
		if (!(isalnum((unsigned char)*s) || strchr("_.-", *s)))
			return false;
	return true;
}

/* Longest "source" file name an op may carry. */
#define SOURCE_FILE_MAX 4096u

static int get_line(struct pctx *p, json_t *src, const char *field, unsigned *out)
{
	json_t *v = json_object_get(src, field);

	if (!v)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 1 ||
	    json_integer_value(v) > UINT32_MAX)
		return op_err(p, "source", "'%s' is not a line number", field);
	*out = (unsigned)json_integer_value(v);
	return 0;
}

/* "source": {"file": "Dockerfile", "line": 4, "end_line": 5}, optional. */
static int parse_source(struct pctx *p, json_t *o)
{
	static const char *const allowed[] = { "file", "line", "end_line", NULL };
	json_t *src = json_object_get(o, "source");
	int r;

	if (!src)
		return 0;
	if (!json_is_object(src))
		return op_err(p, "source", "expected an object");
	r = check_fields(p, src, allowed, "\"source\"");
	if (r == 0)
		r = get_str(p, src, "file", true, &p->op->src_file);
	if (r == 0 && strlen(p->op->src_file) > SOURCE_FILE_MAX)
		r = op_err(p, "source", "file name over %u bytes", SOURCE_FILE_MAX);
	if (r == 0)
		r = get_line(p, src, "line", &p->op->src_line);
	if (r == 0)
		r = get_line(p, src, "end_line", &p->op->src_end_line);
	if (r == 0 && p->op->src_end_line && p->op->src_end_line < p->op->src_line)
		r = op_err(p, "source", "end_line before line");
	return r;
}

static int parse_op(struct pctx *p, json_t *o)
{
	static const struct {
		const char *name;
		enum kiln_op_type type;
		int (*parse)(struct pctx *, json_t *);
	} types[] = {
		{ "source.image", KILN_OP_SOURCE_IMAGE, parse_image },
		{ "source.local", KILN_OP_SOURCE_LOCAL, parse_local },
		{ "source.http", KILN_OP_SOURCE_HTTP, parse_http },
		{ "source.git", KILN_OP_SOURCE_GIT, parse_git },
		{ "exec", KILN_OP_EXEC, parse_exec },
		{ "file", KILN_OP_FILE, parse_file },
		{ "merge", KILN_OP_MERGE, parse_merge },
	};
	_cleanup_free_ char *type = NULL, *plat = NULL;
	size_t i;
	int r;

	p->op->rootfs = -1;
	r = get_str(p, o, "op", true, &type);
	if (r == 0)
		r = get_str(p, o, "name", false, &p->op->name);
	if (r == 0)
		r = parse_source(p, o);
	if (r == 0)
		r = get_str(p, o, "platform", false, &plat);
	if (r < 0)
		return r;
	p->op->platform = kiln_platform_normalize(plat ? plat : p->def->default_platform);
	if (!p->op->platform) {
		_cleanup_error_ struct kiln_error *e = NULL;

		kiln_platform_invalid(&e, plat ? plat : p->def->default_platform);
		return op_err(p, "platform", "%s", kiln_error_msg(e));
	}
	for (i = 0; i < ARRAY_SIZE(types); i++) {
		if (strcmp(types[i].name, type))
			continue;
		p->op->type = types[i].type;
		return types[i].parse(p, o);
	}
	return op_err(p, "op", "unknown op type '%s' (source.image, source.local, source.http, source.git, exec, file, merge)",
		      type);
}

static int collect_ids(struct pctx *p, json_t *ops)
{
	json_t *o;
	size_t i;

	json_array_foreach(ops, i, o) {
		json_t *id;

		p->op = &p->def->ops[i];
		p->op->index = i;
		p->op->def = p->def;
		if (!json_is_object(o))
			return kiln_error_set(p->err, -EINVAL, "%s: ops[%zu]: expected an object",
					      p->file, i);
		id = json_object_get(o, "id");
		if (!id || !json_is_string(id) || !valid_id(json_string_value(id)))
			return kiln_error_set(p->err, -EINVAL,
					      "%s: ops[%zu]: field 'id': missing or not [A-Za-z0-9_.-]{1,128}",
					      p->file, i);
		p->op->id = xstrdup(json_string_value(id));
		if (json_object_get(p->ids, p->op->id))
			return kiln_error_set(p->err, -EINVAL,
					      "%s: ops[%zu]: duplicate op id '%s'", p->file, i,
					      p->op->id);
		json_object_set_new(p->ids, p->op->id, json_integer((json_int_t)i));
	}
	return 0;
}

/*
 * Iterative depth-first search (graphs can be deep); a grey vertex met
 * again closes a cycle, which is reported with its ops in order.
 */
static int check_acyclic(struct pctx *p)
{
	const struct kiln_definition *d = p->def;
	_cleanup_free_ uint8_t *color = xcalloc(d->n_ops, 1);
	_cleanup_free_ size_t *stack = xcalloc(d->n_ops + 1, sizeof(size_t));
	_cleanup_free_ size_t *next = xcalloc(d->n_ops + 1, sizeof(size_t));
	size_t root, sp;

	for (root = 0; root < d->n_ops; root++) {
		if (color[root])
			continue;
		sp = 0;
		stack[sp] = root;
		next[sp++] = 0;
		color[root] = 1;
		while (sp > 0) {
			size_t v = stack[sp - 1], u;

			if (next[sp - 1] >= d->ops[v].n_inputs) {
				color[v] = 2;
				sp--;
				continue;
			}
			u = d->ops[v].inputs[next[sp - 1]++].op;
			if (color[u] == 0) {
				color[u] = 1;
				stack[sp] = u;
				next[sp++] = 0;
			} else if (color[u] == 1) {
				_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(1 << 20);
				size_t k = sp - 1;

				while (stack[k] != u)
					k--;
				for (; k < sp; k++)
					kiln_strbuf_addf(&sb, "'%s' -> ", d->ops[stack[k]].id);
				kiln_strbuf_addf(&sb, "'%s'", d->ops[u].id);
				return kiln_error_set(p->err, -ELOOP,
						      "%s: the graph has a cycle: %s (an op's input is one of its own outputs)",
						      p->file, kiln_strbuf_str(&sb));
			}
		}
	}
	return 0;
}

/* Post-order DFS from start over unvisited ops: inputs come first. */
static void topo_visit(const struct kiln_definition *d, size_t start, uint8_t *state,
		       size_t *stack, size_t *next, size_t *out, size_t *k)
{
	size_t sp = 0;

	if (state[start])
		return;
	stack[sp] = start;
	next[sp++] = 0;
	state[start] = 1;
	while (sp > 0) {
		size_t v = stack[sp - 1];
		const struct kiln_op *op = &d->ops[v];

		if (next[sp - 1] < op->n_inputs) {
			size_t u = op->inputs[next[sp - 1]++].op;
			if (!state[u]) {
				state[u] = 1;
				stack[sp] = u;
				next[sp++] = 0;
			}
			continue;
		}
		out[(*k)++] = v;
		sp--;
	}
}

static void topo_from(const struct kiln_definition *d, bool all, size_t **order,
		      size_t *n)
{
	_cleanup_free_ uint8_t *state = xcalloc(d->n_ops, 1);
	_cleanup_free_ size_t *stack = xcalloc(d->n_ops + 1, sizeof(size_t));
	_cleanup_free_ size_t *next = xcalloc(d->n_ops + 1, sizeof(size_t));
	size_t *out = xcalloc(d->n_ops + 1, sizeof(size_t)), k = 0, v;

	if (all) {
		for (v = 0; v < d->n_ops; v++)
			topo_visit(d, v, state, stack, next, out, &k);
	} else {
		for (v = 0; v < d->n_outputs; v++)
			topo_visit(d, d->outputs[v].op, state, stack, next, out, &k);
		topo_visit(d, d->output.op, state, stack, next, out, &k);
	}
	*order = out;
	*n = k;
}

int kiln_definition_topo(const struct kiln_definition *d, size_t **order, size_t *n)
{
	topo_from(d, false, order, n);
	return 0;
}

static json_t *edge_ref(int input)
{
	char buf[32];

	if (input < 0)
		return json_null();
	snprintf(buf, sizeof(buf), "$%d", input);
	return json_string(buf);
}

static json_t *str_array(char **v, size_t n)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; i < n; i++)
		json_array_append_new(a, json_string(v[i]));
	return a;
}

static json_t *form_mount(const struct kiln_def_mount *m)
{
	switch (m->kind) {
	case KILN_DEF_MOUNT_BIND:
		return json_pack("{sssssoss sb}", "type", "bind", "target", m->target,
				 "input", edge_ref(m->input), "source", m->source,
				 "readonly", m->readonly);
	case KILN_DEF_MOUNT_CACHE:
	{
		json_t *o = json_pack("{sssssssisIsIsI}", "type", "cache", "target", m->target,
				      "id", m->cache_id, "sharing", (int)m->sharing, "mode",
				      (json_int_t)m->mode, "uid", (json_int_t)m->uid, "gid",
				      (json_int_t)m->gid);

		/* Only when seeded: unseeded caches keep their digests. */
		if (m->input >= 0) {
			json_object_set_new(o, "input", edge_ref(m->input));
			json_object_set_new(o, "source", json_string(m->source));
		}
		return o;
	}
	case KILN_DEF_MOUNT_SECRET:
	{
		/* The secret's content is never part of a key; its use is. */
		json_t *o = json_pack("{sssssbsIsIsI}", "type", "secret", "id", m->cache_id,
				      "required", m->required, "mode", (json_int_t)m->mode,
				      "uid", (json_int_t)m->uid, "gid", (json_int_t)m->gid);

		if (m->target)
			json_object_set_new(o, "target", json_string(m->target));
		if (m->env)
			json_object_set_new(o, "env", json_string(m->env));
		return o;
	}
	case KILN_DEF_MOUNT_SSH:
		/* Which agent and where; never the client's socket. */
		return json_pack("{sssssssbsIsIsI}", "type", "ssh", "target", m->target, "id",
				 m->cache_id, "required", m->required, "mode", (json_int_t)m->mode,
				 "uid", (json_int_t)m->uid, "gid", (json_int_t)m->gid);
	case KILN_DEF_MOUNT_TMPFS:
		return json_pack("{sssssI}", "type", "tmpfs", "target", m->target, "size",
				 (json_int_t)m->size);
	}
	return json_null();
}

static json_t *form_action(const struct kiln_file_action *a)
{
	static const char *const names[] = { "copy", "mkdir", "mkfile", "rm", "symlink" };
	json_t *o = json_pack("{sssssIsIsIsI}", "action", names[a->type], "path", a->path,
			      "mode", (json_int_t)a->mode, "uid", (json_int_t)a->uid,
			      "gid", (json_int_t)a->gid, "mtime", (json_int_t)a->mtime);

	if (a->user)
		json_object_set_new(o, "user", json_string(a->user));
	if (a->group)
		json_object_set_new(o, "group", json_string(a->group));

	switch (a->type) {
	case KILN_FA_COPY:
		json_object_set_new(o, "from", edge_ref(a->from));
		json_object_set_new(o, "extract", json_boolean(a->extract));
		json_object_set_new(o, "src", json_string(a->src));
		json_object_set_new(o, "parents", json_boolean(a->parents));
		json_object_set_new(o, "follow_symlinks", json_boolean(a->follow_symlinks));
		json_object_set_new(o, "contents_only", json_boolean(a->contents_only));
		json_object_set_new(o, "allow_wildcard", json_boolean(a->allow_wildcard));
		json_object_set_new(o, "allow_not_found", json_boolean(a->allow_not_found));
		/* Only when set: graphs without excludes keep their digests. */
		if (a->n_exclude)
			json_object_set_new(o, "exclude", str_array(a->exclude, a->n_exclude));
		if (a->n_include)
			json_object_set_new(o, "include", str_array(a->include, a->n_include));
		break;
	case KILN_FA_MKDIR:
		json_object_set_new(o, "parents", json_boolean(a->parents));
		break;
	case KILN_FA_MKFILE:
		json_object_set_new(o, "data", json_stringn(a->data, a->data_len));
		break;
	case KILN_FA_RM:
		json_object_set_new(o, "allow_not_found", json_boolean(a->allow_not_found));
		break;
	case KILN_FA_SYMLINK:
		json_object_set_new(o, "target", json_string(a->target));
		break;
	}
	return o;
}

/*
 * The canonical form holds what changes the result and nothing else:
 * names and placement stay out; platform is in only for the ops whose
 * result depends on it (exec, source.image).
 */
static json_t *op_form(const struct kiln_op *op)
{
	json_t *o = json_pack("{ss}", "op", kiln_op_type_name(op->type)), *arr;
	size_t i;

	switch (op->type) {
	case KILN_OP_SOURCE_IMAGE:
		json_object_set_new(o, "ref", json_string(op->ref));
		json_object_set_new(o, "platform", json_string(op->platform));
		break;
	case KILN_OP_SOURCE_HTTP:
		json_object_set_new(o, "url", json_string(op->url));
		json_object_set_new(o, "filename", json_string(op->filename));
		json_object_set_new(o, "mode", json_integer(op->http_mode));
		if (kiln_digest_is_set(&op->checksum))
			json_object_set_new(o, "checksum", json_string(KILN_DIGEST_STR(&op->checksum)));
		break;
	case KILN_OP_SOURCE_GIT: {
		/* Credentials in the URL never reach a key. */
		char *safe = kiln_url_strip_userinfo(op->url);

		json_object_set_new(o, "url", json_string(safe));
		free(safe);
		if (op->git_ref)
			json_object_set_new(o, "ref", json_string(op->git_ref));
		if (op->git_subdir)
			json_object_set_new(o, "subdir", json_string(op->git_subdir));
		json_object_set_new(o, "keep_git_dir", json_boolean(op->keep_git_dir));
		break;
	}
	case KILN_OP_SOURCE_LOCAL:
		json_object_set_new(o, "path", json_string(op->local_path));
		json_object_set_new(o, "include", str_array(op->include, op->n_include));
		json_object_set_new(o, "exclude", str_array(op->exclude, op->n_exclude));
		break;
	case KILN_OP_EXEC:
		json_object_set_new(o, "platform", json_string(op->platform));
		json_object_set_new(o, "input", edge_ref(op->rootfs));
		json_object_set_new(o, "args", str_array(op->args, op->n_args));
		json_object_set_new(o, "env", str_array(op->env, op->n_env));
		json_object_set_new(o, "cwd", json_string(op->cwd));
		json_object_set_new(o, "user", json_string(op->user));
		json_object_set_new(o, "network",
				    json_string(op->network_host ? "host" : "none"));
		arr = json_array();
		for (i = 0; i < op->n_mounts; i++)
			json_array_append_new(arr, form_mount(&op->mounts[i]));
		json_object_set_new(o, "mounts", arr);
		break;
	case KILN_OP_FILE:
		json_object_set_new(o, "input", edge_ref(op->rootfs));
		arr = json_array();
		for (i = 0; i < op->n_actions; i++)
			json_array_append_new(arr, form_action(&op->actions[i]));
		json_object_set_new(o, "actions", arr);
		break;
	case KILN_OP_MERGE:
		arr = json_array();
		for (i = 0; i < op->n_inputs; i++)
			json_array_append_new(arr, edge_ref((int)i));
		json_object_set_new(o, "inputs", arr);
		break;
	}
	return o;
}

/* Digest of the form and of the input ops' digests, in input order. */
static void op_digest(struct kiln_definition *d, struct kiln_op *op)
{
	struct kiln_hasher *h = kiln_hasher_new(KILN_DIGEST_SHA256);
	json_t *form = op_form(op);
	size_t i;

	op->form = json_dumps(form, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENSURE_ASCII);
	json_decref(form);
	if (!op->form)
		abort(); /* jansson fails only on allocation */
	kiln_hasher_update(h, "kiln-op-v1\n", 11);
	kiln_hasher_update(h, op->form, strlen(op->form));
	for (i = 0; i < op->n_inputs; i++) {
		const struct kiln_op *in = &d->ops[op->inputs[i].op];
		char line[KILN_DIGEST_STRLEN + 16];
		int n = snprintf(line, sizeof(line), "\n%s:%u", KILN_DIGEST_STR(&in->digest),
				 op->inputs[i].output);
		kiln_hasher_update(h, line, (size_t)n);
	}
	kiln_hasher_final(h, &op->digest);
	kiln_hasher_free(h);
}

static int parse_outputs(struct pctx *p, json_t *outs)
{
	json_t *e, *v;
	size_t i;

	if (!outs)
		return 0;
	if (!json_is_array(outs))
		return kiln_error_set(p->err, -EINVAL, "%s: field 'outputs': expected an array of op ids",
				      p->file);
	p->def->outputs = xcalloc(json_array_size(outs) + 1, sizeof(struct kiln_edge));
	json_array_foreach(outs, i, e) {
		v = json_is_string(e) ? json_object_get(p->ids, json_string_value(e)) : NULL;
		if (!v)
			return kiln_error_set(p->err, -EINVAL,
					      "%s: field 'outputs': element %zu does not name an op",
					      p->file, i);
		p->def->outputs[p->def->n_outputs++].op = (size_t)json_integer_value(v);
	}
	return 0;
}

static int parse_root(struct pctx *p, json_t *root)
{
	static const char *const allowed[] = { "version", "ops", "output", "outputs", "platform",
					       NULL };
	json_t *ops, *o, *out, *v;
	const char *key;
	size_t i, n, *order;
	int r;

	if (!json_is_object(root))
		return kiln_error_set(p->err, -EINVAL, "%s: expected a JSON object", p->file);
	json_object_foreach(root, key, v) {
		const char *const *a;
		bool ok = false;
		for (a = allowed; *a; a++)
			ok = ok || !strcmp(*a, key);
		if (!ok)
			return kiln_error_set(p->err, -EINVAL, "%s: unknown top-level field '%s'",
					      p->file, key);
	}
	v = json_object_get(root, "version");
	if (!v || !json_is_integer(v) || json_integer_value(v) != 1)
		return kiln_error_set(p->err, -EINVAL,
				      "%s: field 'version': must be 1 (the only version)", p->file);
	v = json_object_get(root, "platform");
	if (v && !json_is_string(v))
		return kiln_error_set(p->err, -EINVAL, "%s: field 'platform': expected a string",
				      p->file);
	if (v) {
		free(p->def->default_platform);
		p->def->default_platform = xstrdup(json_string_value(v));
	}
	ops = json_object_get(root, "ops");
	if (!ops || !json_is_array(ops) || json_array_size(ops) == 0)
		return kiln_error_set(p->err, -EINVAL, "%s: field 'ops': expected a non-empty array",
				      p->file);
	n = json_array_size(ops);
	if (n > KILN_DEF_MAX_OPS)
		return kiln_error_set(p->err, -E2BIG, "%s: %zu ops (limit %u)", p->file, n,
				      KILN_DEF_MAX_OPS);
	p->def->ops = xcalloc(n, sizeof(struct kiln_op));
	p->def->n_ops = n;
	r = collect_ids(p, ops);
	if (r < 0)
		return r;
	json_array_foreach(ops, i, o) {
		p->op = &p->def->ops[i];
		r = parse_op(p, o);
		if (r < 0)
			return r;
	}
	out = json_object_get(root, "output");
	if (!out || !json_is_string(out))
		return kiln_error_set(p->err, -EINVAL,
				      "%s: field 'output': expected the id of the op to build", p->file);
	v = json_object_get(p->ids, json_string_value(out));
	if (!v)
		return kiln_error_set(p->err, -EINVAL, "%s: field 'output': '%s' does not name an op",
				      p->file, json_string_value(out));
	p->def->output.op = (size_t)json_integer_value(v);
	r = parse_outputs(p, json_object_get(root, "outputs"));
	if (r < 0)
		return r;
	r = check_acyclic(p);
	if (r < 0)
		return r;
	/* Digests in dependency order over the whole graph. */
	topo_from(p->def, true, &order, &n);
	for (i = 0; i < n; i++)
		op_digest(p->def, &p->def->ops[order[i]]);
	free(order);
	return 0;
}

int kiln_definition_parse(const char *text, size_t len, const char *filename,
			  const char *base_dir, const char *default_platform,
			  struct kiln_definition **out, struct kiln_error **err)
{
	struct kiln_definition *d;
	struct pctx p = { .file = filename, .base_dir = base_dir, .err = err };
	json_error_t jerr;
	json_t *root;
	int r;

	if (len > KILN_DEF_MAX_BYTES)
		return kiln_error_set(err, -E2BIG, "%s: %zu bytes is over the %u byte limit",
				      filename, len, KILN_DEF_MAX_BYTES);
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return kiln_error_set(err, -EINVAL, "%s:%d:%d: malformed JSON: %s", filename,
				      jerr.line, jerr.column, jerr.text);
	d = xcalloc(1, sizeof(*d));
	d->source = xstrdup(filename);
	d->default_platform = xstrdup(default_platform ? default_platform : "linux/amd64");
	d->text = xstrndup(text, len);
	d->base_dir = xstrdup(base_dir ? base_dir : "/");
	p.def = d;
	p.ids = json_object();
	r = parse_root(&p, root);
	json_decref(p.ids);
	json_decref(root);
	if (r < 0) {
		kiln_definition_free(d);
		return r;
	}
	*out = d;
	return 0;
}

int kiln_definition_load(const char *path, const char *default_platform,
			 struct kiln_definition **out, struct kiln_error **err)
{
	_cleanup_free_ char *text = NULL, *abs = NULL, *dir = NULL;
	size_t len;
	char *slash;
	int r;

	r = kiln_read_file_at(AT_FDCWD, path, KILN_DEF_MAX_BYTES, &text, &len);
	if (r == -EFBIG)
		return kiln_error_set(err, r, "%s: larger than the %u byte limit", path,
				      KILN_DEF_MAX_BYTES);
	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot read graph %s", path);
	abs = realpath(path, NULL);
	if (!abs)
		return kiln_error_seterrno(err, -errno, "cannot resolve %s", path);
	dir = xstrdup(abs);
	slash = strrchr(dir, '/');
	if (slash)
		*(slash == dir ? slash + 1 : slash) = '\0';
	return kiln_definition_parse(text, len, path, dir, default_platform, out, err);
}

static void op_release(struct kiln_op *op)
{
	size_t i;

	free(op->id);
	free(op->name);
	free(op->src_file);
	free(op->platform);
	free(op->inputs);
	free(op->ref);
	free(op->url);
	free(op->filename);
	free(op->git_ref);
	free(op->git_subdir);
	free(op->local_path);
	kiln_strv_free(op->include, op->n_include);
	kiln_strv_free(op->exclude, op->n_exclude);
	kiln_strv_free(op->args, op->n_args);
	kiln_strv_free(op->env, op->n_env);
	free(op->cwd);
	free(op->user);
	for (i = 0; i < op->n_mounts; i++) {
		free(op->mounts[i].target);
		free(op->mounts[i].env);
		free(op->mounts[i].source);
		free(op->mounts[i].cache_id);
	}
	free(op->mounts);
	for (i = 0; i < op->n_actions; i++) {
		free(op->actions[i].src);
		kiln_strv_free(op->actions[i].exclude, op->actions[i].n_exclude);
		kiln_strv_free(op->actions[i].include, op->actions[i].n_include);
		free(op->actions[i].path);
		free(op->actions[i].target);
		free(op->actions[i].data);
		free(op->actions[i].user);
		free(op->actions[i].group);
	}
	free(op->actions);
	free(op->form);
}

void kiln_definition_free(struct kiln_definition *d)
{
	size_t i;

	if (!d)
		return;
	for (i = 0; i < d->n_ops; i++)
		op_release(&d->ops[i]);
	free(d->ops);
	free(d->outputs);
	free(d->default_platform);
	free(d->source);
	free(d->text);
	free(d->base_dir);
	free(d);
}
