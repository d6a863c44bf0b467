/*
 * The instructions that produce ops: FROM (stage start, ONBUILD triggers),
 * RUN (exec with mounts and heredocs), COPY/ADD (file copy actions, --link
 * merges, URLs, archives) and WORKDIR (mkdir).
 */
#include "frontend/dockerfile/lower-internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/parse-util.h"
#include "basic/strbuf.h"

static char esc_of(const struct lower *L)
{
	return L->df->escape ? L->df->escape : '\\';
}

/* "/" + cleaned p. */
static const char *workdir_of(const struct stage_state *s)
{
	json_t *wd = json_object_get(image_config(s->image), "WorkingDir");
	const char *v = json_string_value(wd);

	return v && *v ? v : "/";
}

/* A path relative to WORKDIR, absolute and clean, keeping a trailing '/'. */
static char *resolve_path(const struct stage_state *s, const char *p)
{
	size_t l = strlen(p);
	bool dir = l == 0 || p[l - 1] == '/' || !strcmp(p, ".") ||
		   (l >= 2 && !strcmp(p + l - 2, "/."));
	_cleanup_free_ char *joined = p[0] == '/' ? xstrdup(p)
				      : kiln_path_join(workdir_of(s), p);
	_cleanup_free_ char *abs = kiln_path_clean_abs(joined);

	if (dir && strcmp(abs, "/"))
		return xasprintf("%s/", abs);
	return TAKE_PTR(abs);
}

static void add_mtime(struct lower *L, json_t *action)
{
	if (L->o->source_date_epoch >= 0)
		json_object_set_new(action, "mtime", json_integer(L->o->source_date_epoch));
}

/* ---- FROM ---- */

static int expand_global(struct ictx *c, const char *word, char **out)
{
	int r = kiln_df_expand_word(word, esc_of(c->L), kvlist_lookup,
				    &c->L->globals[c->pidx], out, c->L->err);

	return r < 0 ? lerr_wrap(c, r) : 0;
}

static int stage_platform(struct ictx *c, const struct stage_def *sd, char **out)
{
	_cleanup_free_ char *v = NULL;
	int r;

	if (!sd->platform_raw) {
		*out = xstrdup(c->L->o->platforms[c->pidx]);
		return 0;
	}
	r = expand_global(c, sd->platform_raw, &v);
	if (r < 0)
		return r;
	if (!*v)
		return lerr(c, -EINVAL, "empty platform value from expression '%s'",
			    sd->platform_raw);
	*out = kiln_platform_normalize(v);
	if (!*out) {
		r = kiln_platform_invalid(c->L->err, v);
		kiln_error_prefix(c->L->err, "--platform=%s", sd->platform_raw);
		return lerr_wrap(c, r);
	}
	return 0;
}

static ssize_t parent_stage(const struct lower *L, size_t sidx, const char *base)
{
	size_t i;

	for (i = 0; i < sidx; i++)
		if (L->stages[i].name && !strcasecmp(L->stages[i].name, base))
			return (ssize_t)i;
	return -1;
}

static void inherit(struct stage_state *s, const struct stage_state *p)
{
	size_t i;

	s->platform = xstrdup(p->platform);
	s->op = p->op ? xstrdup(p->op) : NULL;
	s->base_op = p->base_op ? xstrdup(p->base_op) : NULL;
	kvlist_copy(&s->env, &p->env);
	kvlist_copy(&s->args, &p->args);
	s->image = json_deep_copy(p->image);
	s->layer_ops = xcalloc(p->n_layer_ops + 1, sizeof(char *));
	for (i = 0; i < p->n_layer_ops; i++)
		s->layer_ops[i] = xstrdup(p->layer_ops[i]);
	s->n_layer_ops = p->n_layer_ops;
}

static json_t *new_image(json_t *base)
{
	json_t *cfg = json_object_get(base, "config");
	json_t *img = json_pack("{s:o, s:[]}", "config",
				json_is_object(cfg) ? json_deep_copy(cfg) : json_object(),
				"history");

	if (json_is_string(json_object_get(base, "author")))
		json_object_set(img, "author", json_object_get(base, "author"));
	return img;
}

static void ensure_path(json_t *config)
{
	json_t *env = json_object_get(config, "Env"), *e;
	size_t i;

	if (!json_is_array(env)) {
		env = json_array();
		json_object_set_new(config, "Env", env);
	}
	json_array_foreach(env, i, e)
		if (json_is_string(e) && !strncmp(json_string_value(e), "PATH=", 5))
			return;
	json_array_append_new(env, json_string("PATH=" KILN_DF_DEFAULT_PATH));
}

static void env_from_config(struct stage_state *s)
{
	json_t *env = json_object_get(image_config(s->image), "Env"), *e;
	size_t i;

	json_array_foreach(env, i, e) {
		const char *kv = json_string_value(e), *eq = kv ? strchr(kv, '=') : NULL;
		_cleanup_free_ char *k = NULL;

		if (!eq)
			continue;
		k = xstrndup(kv, (size_t)(eq - kv));
		kvlist_set(&s->env, k, eq + 1);
	}
}

/* ONBUILD triggers to run at FROM: parsed from the base config or the parent's. */
struct triggers {
	const struct kiln_df_instruction **ins;
	size_t n;
	struct kiln_dockerfile **parsed;
	size_t n_parsed;
};

static void triggers_add(struct triggers *t, const struct kiln_df_instruction *ins)
{
	t->ins = xrealloc(t->ins, (t->n + 1) * sizeof(*t->ins));
	t->ins[t->n++] = ins;
}

static void triggers_release(struct triggers *t)
{
	size_t i;

	for (i = 0; i < t->n_parsed; i++)
		kiln_dockerfile_free(t->parsed[i]);
	free(t->parsed);
	free(t->ins);
}

static void parent_triggers(struct lower *L, size_t parent, struct triggers *t)
{
	const struct stage_def *sd = &L->stages[parent];
	size_t i;

	for (i = sd->first + 1; i < sd->end; i++)
		if (L->df->ins[i].cmd == KILN_DF_ONBUILD && L->df->ins[i].onbuild)
			triggers_add(t, L->df->ins[i].onbuild);
}

static int image_triggers(struct ictx *c, json_t *config, struct triggers *t)
{
	json_t *ob = json_object_get(config, "OnBuild"), *e;
	struct kiln_dockerfile *df;
	size_t i, j;
	int r;

	json_array_foreach(ob, i, e) {
		const char *text = json_string_value(e);

		if (!text)
			continue;
		r = kiln_dockerfile_parse(text, strlen(text), "ONBUILD", &df, c->L->err);
		if (r < 0)
			return lerr_wrap(c, r);
		t->parsed = xrealloc(t->parsed, (t->n_parsed + 1) * sizeof(*t->parsed));
		t->parsed[t->n_parsed++] = df;
		for (j = 0; j < df->n; j++)
			triggers_add(t, &df->ins[j]);
	}
	return 0;
}

static int run_triggers(struct ictx *c, const struct triggers *t)
{
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < t->n; i++) {
		struct ictx tc = { .L = c->L, .pidx = c->pidx, .sidx = c->sidx, .s = c->s,
				   .ins = t->ins[i], .at = c->ins, .onbuild = true };

		if (tc.ins->cmd == KILN_DF_FROM || tc.ins->cmd == KILN_DF_ONBUILD ||
		    tc.ins->cmd == KILN_DF_MAINTAINER)
			r = lerr(&tc, -EINVAL, "not allowed as an ONBUILD trigger");
		if (r < 0)
			break;
		tc.idbase = xasprintf("p%zu-s%zu-ob%zu", c->pidx, c->sidx, c->s->n_onbuild++);
		r = dispatch_ins(&tc);
		free(tc.idbase);
		free(tc.name);
	}
	return r;
}

static size_t count_steps(const struct lower *L, const struct stage_def *sd)
{
	size_t i, n = 0;

	for (i = sd->first + 1; i < sd->end; i++) {
		enum kiln_df_cmd cmd = L->df->ins[i].cmd;
		if (cmd == KILN_DF_RUN || cmd == KILN_DF_COPY || cmd == KILN_DF_ADD ||
		    cmd == KILN_DF_WORKDIR)
			n++;
	}
	return n;
}

/*
 * The config of a base that is no image (scratch, a directory context):
 * BuildKit's emptyImage (dockerfile2llb/image.go) sets WorkingDir "/";
 * PATH is added with every stage's default environment.
 */
static json_t *empty_image(void)
{
	return json_pack("{s:{s:s}, s:[]}", "config", "WorkingDir", "/", "history");
}

static int image_base(struct ictx *c, const char *base, struct triggers *t,
		      const char **pinned)
{
	struct stage_state *s = c->s;
	json_t *cfg;
	int r;

	if (!strcasecmp(base, "scratch")) {
		s->image = empty_image();
		*pinned = NULL;
		return 0;
	}
	r = resolve_image(c, base, s->platform, pinned, &cfg);
	if (r < 0)
		return r;
	s->image = new_image(cfg);
	return image_triggers(c, json_object_get(cfg, "config"), t);
}

static void emit_base(struct ictx *c, const char *pinned)
{
	struct stage_state *s = c->s;
	_cleanup_free_ char *id = op_id(c, NULL);
	const char *name;

	c->text = xasprintf("FROM %s", pinned);
	name = ins_name(c);
	stage_set_op(s, emit_op(c->L, json_pack("{s:s, s:s, s:s, s:s}", "op", "source.image",
						"name", name, "ref", pinned, "platform",
						s->platform),
				 id));
	s->base_op = xstrdup(s->op);
}

/*
 * A stage whose base (or, replaced, the whole stage) is a named context.
 * An image context behaves as FROM that image (ONBUILD triggers run unless
 * the stage is replaced, as BuildKit marks those noinit); a directory is a
 * base with an empty config whose tree is the first layer.
 */
static int context_base(struct ictx *c, const struct stage_def *sd,
			const struct kiln_df_named_context *nc, bool replace)
{
	struct stage_state *s = c->s;
	_cleanup_free_ char *id = op_id(c, NULL);
	struct triggers t = { 0 };
	const char *op;
	json_t *cfg;
	int r = stage_platform(c, sd, &s->platform);

	if (r == 0)
		r = named_context_tree(c, nc, s->platform, id, &op, &cfg);
	if (r < 0)
		return r;
	s->replaced = replace;
	s->image = cfg ? new_image(cfg) : empty_image();
	if (cfg && !replace)
		r = image_triggers(c, json_object_get(cfg, "config"), &t);
	if (r == 0) {
		/*
		 * A replaced stage keeps the image's OnBuild, as BuildKit's noinit
		 * stages do: it is the image's if the stage is the target, and a
		 * FROM of the stage runs the triggers.
		 */
		if (!replace)
			json_object_del(image_config(s->image), "OnBuild");
		ensure_path(image_config(s->image));
		env_from_config(s);
		s->cmd_total = replace ? 0 : count_steps(c->L, sd) + t.n;
		stage_set_op(s, op);
		if (cfg) {
			s->base_op = xstrdup(op);
		} else {
			_cleanup_free_ char *by = xasprintf("FROM %s", nc->name);
			commit(c, by, op);
		}
		r = run_triggers(c, &t);
	}
	triggers_release(&t);
	return r;
}

int stage_init(struct ictx *c)
{
	struct lower *L = c->L;
	struct stage_state *s = c->s;
	const struct stage_def *sd = &L->stages[c->sidx];
	_cleanup_free_ char *base = NULL;
	struct triggers t = { 0 };
	const struct kiln_df_named_context *nc;
	const struct stage_state *ps;
	const char *pinned = NULL;
	ssize_t parent;
	int r = expand_global(c, sd->base_raw, &base);

	if (r < 0)
		return r;
	if (!*base)
		return lerr(c, -EINVAL, "base name (%s) should not be blank", sd->base_raw);
	/*
	 * BuildKit's order (dockerfile2llb/convert.go, toDispatchState): a
	 * named context called like the stage replaces it; FROM an earlier
	 * stage; a named context called like the base; an image.
	 */
	if (sd->name && (nc = named_context(L, sd->name)) != NULL)
		return context_base(c, sd, nc, true);
	parent = parent_stage(L, c->sidx, base);
	if (parent < 0 && (nc = named_context(L, base)) != NULL)
		return context_base(c, sd, nc, false);
	if (parent >= 0) {
		r = lower_stage(L, c->pidx, (size_t)parent);
		if (r < 0)
			return r;
		ps = &L->st[c->pidx * L->n_stages + (size_t)parent];
		inherit(s, ps);
		/* A replaced parent's triggers are its image's (its body never ran). */
		if (ps->replaced)
			r = image_triggers(c, image_config(ps->image), &t);
		else
			parent_triggers(L, (size_t)parent, &t);
	} else {
		r = stage_platform(c, sd, &s->platform);
		if (r == 0)
			r = image_base(c, base, &t, &pinned);
	}
	if (r == 0) {
		json_object_del(image_config(s->image), "OnBuild");
		ensure_path(image_config(s->image));
		env_from_config(s);
		s->cmd_total = (pinned ? 1 : 0) + count_steps(L, sd) + t.n;
		if (pinned)
			emit_base(c, pinned);
		r = run_triggers(c, &t);
	}
	triggers_release(&t);
	return r;
}

/* ---- stage references (COPY --from, RUN --mount from=) ---- */

/*
 * The op holding the tree named by a --from value: an earlier stage (by
 * name or index) or an image. suffix names an image op.
 */
static int from_tree(struct ictx *c, const char *from, const char *suffix, const char **out)
{
	struct lower *L = c->L;
	_cleanup_free_ char *id = NULL;
	const char *pinned;
	json_t *cfg;
	ssize_t idx;
	int r = find_stage(L, from, &idx);

	if (r < 0)
		return lerr(c, -ENOENT, "--from=%s: no stage with index %s (the Dockerfile has %zu stages, counted from 0)",
			    from, from, L->n_stages);
	if (strchr(from, '$'))
		return lerr(c, -EINVAL, "--from=%s: variables are not expanded in --from (use a stage: FROM $IMAGE AS name)",
			    from);
	if (idx >= 0) {
		if ((size_t)idx >= c->sidx)
			return lerr(c, -EINVAL, "--from=%s: stage '%s' must be defined before the current stage",
				    from, L->stages[idx].label[0] ? L->stages[idx].label : from);
		r = lower_stage(L, c->pidx, (size_t)idx);
		if (r < 0)
			return r;
		*out = tree_op(L, &L->st[c->pidx * L->n_stages + (size_t)idx]);
		return 0;
	}
	{
		/* BuildKit: a --from that names no stage is a named context first. */
		const struct kiln_df_named_context *nc = named_context(L, from);

		if (nc) {
			id = op_id(c, suffix);
			return named_context_tree(c, nc, c->s->platform, id, out, &cfg);
		}
	}
	if (!strpbrk(from, "/:.@")) {
		/* A bare word is far more likely a mistyped stage than an image. */
		struct kiln_error *rerr = NULL;
		struct kiln_error **saved = L->err;

		L->err = &rerr;
		r = resolve_image(c, from, c->s->platform, &pinned, &cfg);
		L->err = saved;
		if (r < 0) {
			_cleanup_free_ char *names = stage_names(L);
			r = lerr(c, -ENOENT, "stage '%s' not found (stages: %s), and no image '%s': %s",
				 from, names, from, kiln_error_msg(rerr));
			kiln_error_free(rerr);
			return r;
		}
	}
	r = resolve_image(c, from, c->s->platform, &pinned, &cfg);
	if (r < 0)
		return r;
	id = op_id(c, suffix);
	*out = emit_op(L, json_pack("{s:s, s:s, s:s, s:s}", "op", "source.image", "name", pinned,
				    "ref", pinned, "platform", c->s->platform),
		       id);
	return 0;
}

/* ---- RUN ---- */

enum {
	MK_TYPE, MK_TARGET, MK_SOURCE, MK_FROM, MK_ID, MK_SHARING, MK_MODE,
	MK_UID, MK_GID, MK_SIZE, MK_RW, MK_RO, MK_REQUIRED, MK_ENV, MK__MAX
};

static const struct {
	const char *name;
	int key;
} mount_keys[] = {
	{ "type", MK_TYPE },	   { "target", MK_TARGET },   { "dst", MK_TARGET },
	{ "destination", MK_TARGET }, { "source", MK_SOURCE }, { "src", MK_SOURCE },
	{ "from", MK_FROM },	   { "id", MK_ID },	      { "sharing", MK_SHARING },
	{ "mode", MK_MODE },	   { "uid", MK_UID },	      { "gid", MK_GID },
	{ "size", MK_SIZE },	   { "rw", MK_RW },	      { "readwrite", MK_RW },
	{ "ro", MK_RO },	   { "readonly", MK_RO },     { "required", MK_REQUIRED },
	{ "env", MK_ENV },
};

#define M(k) (1u << (k))

static const struct {
	const char *type;
	unsigned allowed;
} mount_types[] = {
	{ "bind", M(MK_TYPE) | M(MK_TARGET) | M(MK_SOURCE) | M(MK_FROM) | M(MK_RW) | M(MK_RO) },
	{ "cache", M(MK_TYPE) | M(MK_TARGET) | M(MK_ID) | M(MK_SHARING) | M(MK_MODE) |
			   M(MK_UID) | M(MK_GID) | M(MK_FROM) | M(MK_SOURCE) },
	{ "tmpfs", M(MK_TYPE) | M(MK_TARGET) | M(MK_SIZE) },
	{ "secret", M(MK_TYPE) | M(MK_TARGET) | M(MK_ID) | M(MK_REQUIRED) | M(MK_MODE) |
			    M(MK_UID) | M(MK_GID) | M(MK_ENV) },
	{ "ssh", M(MK_TYPE) | M(MK_TARGET) | M(MK_ID) | M(MK_REQUIRED) | M(MK_MODE) | M(MK_UID) |
			 M(MK_GID) },
};

struct mount_spec {
	char *v[MK__MAX];
	unsigned has;
	const char *type;
	const char *raw;
	size_t ssh_index; /* type=ssh: how many ssh mounts come before it */
};

static void mount_spec_release(struct mount_spec *m)
{
	size_t i;

	for (i = 0; i < MK__MAX; i++)
		free(m->v[i]);
}

static int mount_key(const char *name)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(mount_keys); i++)
		if (!strcasecmp(mount_keys[i].name, name))
			return mount_keys[i].key;
	return -1;
}

/* One "key[=value]" field of --mount; the value is expanded. */
static int mount_field(struct ictx *c, struct mount_spec *m, const char *f, size_t len)
{
	_cleanup_free_ char *field = xstrndup(f, len);
	char *eq = strchr(field, '=');
	int key;

	if (eq)
		*eq++ = '\0';
	key = mount_key(field);
	if (key < 0)
		return lerr(c, -EINVAL, "--mount=%s: unknown option '%s'", m->raw, field);
	if (m->has & M(key))
		return lerr(c, -EINVAL, "--mount=%s: option '%s' given twice", m->raw, field);
	m->has |= M(key);
	if (!eq)
		m->v[key] = xstrdup("true");
	else if (key == MK_TYPE)
		m->v[key] = xstrdup(eq);
	else
		return expand(c, eq, &m->v[key]);
	return 0;
}

static int mount_split(struct ictx *c, struct mount_spec *m)
{
	const char *p = m->raw;
	int r = 0;

	while (r == 0 && *p) {
		size_t n = 0;
		bool q = false;

		while (p[n] && (q || p[n] != ',')) {
			if (p[n] == '"')
				q = !q;
			n++;
		}
		if (n > 0)
			r = mount_field(c, m, p, n);
		p += n;
		if (*p == ',')
			p++;
	}
	return r;
}

static int mount_bool(struct ictx *c, const struct mount_spec *m, int key, bool *out)
{
	const char *v = m->v[key];

	if (!strcasecmp(v, "true") || !strcmp(v, "1"))
		*out = true;
	else if (!strcasecmp(v, "false") || !strcmp(v, "0"))
		*out = false;
	else
		return lerr(c, -EINVAL, "--mount=%s: '%s' is not true or false", m->raw, v);
	return 0;
}

static int mount_check(struct ictx *c, struct mount_spec *m)
{
	size_t i, k;

	m->type = m->v[MK_TYPE] ? m->v[MK_TYPE] : "bind";
	for (i = 0; i < ARRAY_SIZE(mount_types); i++) {
		if (strcmp(mount_types[i].type, m->type))
			continue;
		for (k = 0; k < ARRAY_SIZE(mount_keys); k++)
			if ((m->has & M(mount_keys[k].key)) && !(mount_types[i].allowed & M(mount_keys[k].key)))
				return lerr(c, -EINVAL, "--mount=%s: option '%s' does not apply to type=%s",
					    m->raw, mount_keys[k].name, m->type);
		if (!m->v[MK_TARGET] && strcmp(m->type, "secret") && strcmp(m->type, "ssh"))
			return lerr(c, -EINVAL, "--mount=%s: target= is required", m->raw);
		return 0;
	}
	return lerr(c, -EINVAL, "--mount=%s: unknown type '%s' (bind, cache, tmpfs, secret, ssh)",
		    m->raw, m->type);
}

static int set_mode(struct ictx *c, const char *what, const char *v, json_t *o)
{
	char *end;
	unsigned long m = strtoul(v, &end, 8);

	if (!*v || *end || m > 07777)
		return lerr(c, -EINVAL, "%s: '%s' is not an octal mode (0-07777)", what, v);
	json_object_set_new(o, "mode", json_sprintf("%04lo", m));
	return 0;
}

static int set_id(struct ictx *c, const struct mount_spec *m, int key, const char *name,
		  json_t *o)
{
	uint32_t v;

	if (!m->v[key])
		return 0;
	if (kiln_parse_u32(m->v[key], &v) < 0)
		return lerr(c, -EINVAL, "--mount=%s: %s '%s' is not a number", m->raw, name,
			    m->v[key]);
	json_object_set_new(o, name, json_integer(v));
	return 0;
}

static int mount_perms(struct ictx *c, const struct mount_spec *m, json_t *o)
{
	int r = 0;

	if (m->v[MK_MODE])
		r = set_mode(c, "--mount mode", m->v[MK_MODE], o);
	if (r == 0)
		r = set_id(c, m, MK_UID, "uid", o);
	if (r == 0)
		r = set_id(c, m, MK_GID, "gid", o);
	return r;
}

static int mount_bind(struct ictx *c, const struct mount_spec *m, size_t idx, json_t *o)
{
	const char *input;
	bool b = false;
	int r = 0;

	if (m->v[MK_FROM]) {
		_cleanup_free_ char *sfx = xasprintf("mnt%zu", idx);
		r = from_tree(c, m->v[MK_FROM], sfx, &input);
	} else {
		input = context_op(c->L);
	}
	if (r < 0)
		return r;
	json_object_set_new(o, "input", json_string(input));
	if (m->v[MK_SOURCE]) {
		_cleanup_free_ char *src = kiln_path_clean_abs(m->v[MK_SOURCE]);
		json_object_set_new(o, "source", json_string(src));
	}
	if (m->v[MK_RW]) {
		r = mount_bool(c, m, MK_RW, &b);
		if (r == 0 && b)
			json_object_set_new(o, "readonly", json_false());
	} else if (m->v[MK_RO]) {
		r = mount_bool(c, m, MK_RO, &b);
		if (r == 0 && !b)
			json_object_set_new(o, "readonly", json_false());
	}
	return r;
}

/*
 * from= seeds a new cache with the directory source= (default /) of a
 * stage, image or named context: the tree is an input of the exec, so
 * its digest is in the step's key (BuildKit dispatchRunMounts: the
 * cache mount's state is sources[i].state with llb.SourcePath(source)).
 */
static int mount_cache_seed(struct ictx *c, const struct mount_spec *m, size_t idx, json_t *o)
{
	_cleanup_free_ char *sfx = xasprintf("mnt%zu", idx);
	const char *input;
	int r;

	if (!m->v[MK_FROM])
		return lerr(c, -EINVAL, "--mount=%s: type=cache with source= needs from= (the stage or image to seed the cache from)",
			    m->raw);
	r = from_tree(c, m->v[MK_FROM], sfx, &input);
	if (r < 0)
		return r;
	json_object_set_new(o, "input", json_string(input));
	if (m->v[MK_SOURCE]) {
		_cleanup_free_ char *src = kiln_path_clean_abs(m->v[MK_SOURCE]);
		json_object_set_new(o, "source", json_string(src));
	}
	return 0;
}

static int mount_cache(struct ictx *c, const struct mount_spec *m, size_t idx, json_t *o)
{
	const char *sh = m->v[MK_SHARING];

	if (m->has & (M(MK_FROM) | M(MK_SOURCE))) {
		int r = mount_cache_seed(c, m, idx, o);
		if (r < 0)
			return r;
	}
	if (m->v[MK_ID])
		json_object_set_new(o, "id", json_string(m->v[MK_ID]));
	if (sh && strcmp(sh, "shared") && strcmp(sh, "private") && strcmp(sh, "locked"))
		return lerr(c, -EINVAL, "--mount=%s: sharing=%s (shared, private or locked)",
			    m->raw, sh);
	if (sh && strcmp(sh, "shared"))
		json_object_set_new(o, "sharing", json_string(sh));
	return mount_perms(c, m, o);
}

static int mount_tmpfs(struct ictx *c, const struct mount_spec *m, json_t *o)
{
	uint64_t size;

	if (!m->v[MK_SIZE])
		return 0;
	if (kiln_parse_size(m->v[MK_SIZE], &size) < 0 || size > INT64_MAX)
		return lerr(c, -EINVAL, "--mount=%s: size '%s' is not a size", m->raw,
			    m->v[MK_SIZE]);
	json_object_set_new(o, "size", json_integer((json_int_t)size));
	return 0;
}

static int mount_secret(struct ictx *c, const struct mount_spec *m, json_t *o)
{
	_cleanup_free_ char *id = NULL;
	bool req = false;
	int r = 0;

	if (m->v[MK_ID]) {
		id = xstrdup(m->v[MK_ID]);
	} else if (m->v[MK_TARGET]) {
		const char *sl = strrchr(m->v[MK_TARGET], '/');
		id = xstrdup(sl ? sl + 1 : m->v[MK_TARGET]);
	}
	if (!id || !*id)
		return lerr(c, -EINVAL, "--mount=%s: type=secret needs id= or target=", m->raw);
	json_object_set_new(o, "id", json_string(id));
	/*
	 * env=NAME gives the secret as an environment variable; then there
	 * is a file only when target= is given too (BuildKit
	 * convert_secrets.go: no default destination when m.Env is set).
	 */
	if (m->v[MK_ENV]) {
		if (!*m->v[MK_ENV] || strchr(m->v[MK_ENV], '='))
			return lerr(c, -EINVAL, "--mount=%s: env= needs a variable name", m->raw);
		json_object_set_new(o, "env", json_string(m->v[MK_ENV]));
	} else if (!m->v[MK_TARGET]) {
		json_object_set_new(o, "target", json_sprintf("/run/secrets/%s", id));
	}
	if (m->v[MK_REQUIRED])
		r = mount_bool(c, m, MK_REQUIRED, &req);
	if (r == 0 && req)
		json_object_set_new(o, "required", json_true());
	return r < 0 ? r : mount_perms(c, m, o);
}

/*
 * The client's agent: only its id goes into the op. BuildKit
 * (dockerfile2llb/convert_ssh.go, client/llb/exec.go): id "default",
 * target /run/buildkit/ssh_agent.N for the N-th ssh mount of the RUN,
 * optional unless required=true, mode 0600, uid and gid 0.
 */
static int mount_ssh(struct ictx *c, const struct mount_spec *m, json_t *o)
{
	bool req = false;
	int r = 0;

	if (m->v[MK_ID] && !*m->v[MK_ID])
		return lerr(c, -EINVAL, "--mount=%s: id= is empty", m->raw);
	json_object_set_new(o, "id", json_string(m->v[MK_ID] ? m->v[MK_ID] : "default"));
	if (!m->v[MK_TARGET])
		json_object_set_new(o, "target",
				    json_sprintf("/run/buildkit/ssh_agent.%zu", m->ssh_index));
	if (m->v[MK_REQUIRED])
		r = mount_bool(c, m, MK_REQUIRED, &req);
	if (r == 0 && req)
		json_object_set_new(o, "required", json_true());
	return r < 0 ? r : mount_perms(c, m, o);
}

static int mount_json(struct ictx *c, struct mount_spec *m, size_t idx, json_t **out)
{
	json_t *o = json_pack("{s:s}", "type", m->type);
	int r;

	if (m->v[MK_TARGET]) {
		_cleanup_free_ char *t = resolve_path(c->s, m->v[MK_TARGET]);
		size_t l = strlen(t);
		if (l > 1 && t[l - 1] == '/')
			t[l - 1] = '\0';
		if (!strcmp(t, "/")) {
			json_decref(o);
			return lerr(c, -EINVAL, "--mount=%s: cannot mount over /", m->raw);
		}
		json_object_set_new(o, "target", json_string(t));
	}
	if (!strcmp(m->type, "bind"))
		r = mount_bind(c, m, idx, o);
	else if (!strcmp(m->type, "cache"))
		r = mount_cache(c, m, idx, o);
	else if (!strcmp(m->type, "tmpfs"))
		r = mount_tmpfs(c, m, o);
	else if (!strcmp(m->type, "ssh"))
		r = mount_ssh(c, m, o);
	else
		r = mount_secret(c, m, o);
	if (r < 0) {
		json_decref(o);
		return r;
	}
	*out = o;
	return 0;
}

static int run_mounts(struct ictx *c, json_t *mounts)
{
	size_t i, n_ssh = 0;
	int r = 0;

	for (i = 0; r == 0 && i < c->ins->n_flags; i++) {
		struct mount_spec m = { .raw = c->ins->flags[i].value ? c->ins->flags[i].value : "",
					.ssh_index = n_ssh };
		json_t *o = NULL;

		if (strcmp(flag_name(&c->ins->flags[i]), "mount"))
			continue;
		r = mount_split(c, &m);
		if (r == 0)
			r = mount_check(c, &m);
		if (r == 0 && !strcmp(m.type, "ssh") && n_ssh == KILN_DF_MAX_SSH_MOUNTS)
			r = lerr(c, -E2BIG, "--mount=type=ssh: more than %u ssh mounts in one RUN",
				 KILN_DF_MAX_SSH_MOUNTS);
		if (r == 0)
			r = mount_json(c, &m, i, &o);
		if (r == 0)
			json_array_append_new(mounts, o);
		if (r == 0 && !strcmp(m.type, "ssh"))
			n_ssh++;
		mount_spec_release(&m);
	}
	return r;
}

static int run_network(struct ictx *c, const char **out)
{
	const char *n = flag_value(c->ins, "network");
	const char *sec = flag_value(c->ins, "security");

	if (sec && strcmp(sec, "sandbox"))
		return lerr(c, -ENOTSUP, "--security=%s is not supported (only sandbox)", sec);
	*out = "host";
	if (!n || !strcmp(n, "default") || !strcmp(n, "host"))
		return 0;
	if (!strcmp(n, "none")) {
		*out = "none";
		return 0;
	}
	return lerr(c, -EINVAL, "--network=%s: expected default, none or host", n);
}

/* "<<EOF", "<<-EOF", "<<'EOF'", "<<\"EOF\"" -> the heredoc named so, or NULL. */
static const struct kiln_df_heredoc *heredoc_marker(const struct kiln_df_instruction *ins,
						    const char *word)
{
	_cleanup_free_ char *name = NULL;
	size_t i, l;

	if (strncmp(word, "<<", 2))
		return NULL;
	word += 2;
	if (*word == '-')
		word++;
	name = xstrdup(word);
	l = strlen(name);
	if (l >= 2 && (name[0] == '"' || name[0] == '\'') && name[l - 1] == name[0]) {
		memmove(name, name + 1, l - 2);
		name[l - 2] = '\0';
	}
	for (i = 0; i < ins->n_heredocs; i++)
		if (ins->heredocs[i].name && !strcmp(ins->heredocs[i].name, name))
			return &ins->heredocs[i];
	return NULL;
}

static bool heredoc_only(const struct kiln_df_instruction *ins)
{
	_cleanup_free_ char *w = NULL;
	const char *s = ins->args[0], *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		e--;
	w = xstrndup(s, (size_t)(e - s));
	return ins->n_heredocs == 1 && !strpbrk(w, " \t\n") && heredoc_marker(ins, w);
}

json_t *shell_args(json_t *image, const char *cmd)
{
	json_t *sh = json_object_get(image_config(image), "Shell");
	json_t *a = json_is_array(sh) && json_array_size(sh) > 0
			    ? json_deep_copy(sh)
			    : json_pack("[s, s]", "/bin/sh", "-c");

	json_array_append_new(a, json_string(cmd));
	return a;
}

/* A heredoc script starting with #!: a file op mounted at /dev/pipes. */
static json_t *heredoc_script(struct ictx *c, const struct kiln_df_heredoc *h, json_t *mounts)
{
	_cleanup_free_ char *id = op_id(c, "heredoc"), *path = NULL;
	const char *op;

	if (strchr(h->name, '/'))
		return NULL;
	path = xasprintf("/%s", h->name);
	op = emit_op(c->L,
		     json_pack("{s:s, s:s, s:s, s:[{s:s, s:s, s:s, s:s}]}", "op", "file", "name",
			       "[internal] preparing inline document", "platform",
			       c->s->platform, "actions", "action", "mkfile", "path", path,
			       "data", h->content ? h->content : "", "mode", "0755"),
		     id);
	json_array_append_new(mounts, json_pack("{s:s, s:s}", "target", "/dev/pipes", "input", op));
	return json_pack("[o]", json_sprintf("/dev/pipes%s", path));
}

static json_t *run_argv(struct ictx *c, json_t *mounts)
{
	const struct kiln_df_instruction *ins = c->ins;
	struct kiln_strbuf sb = KILN_STRBUF_INIT(KILN_DF_MAX_BYTES * 2);
	json_t *a;
	size_t i;

	if (ins->json_form) {
		a = json_array();
		for (i = 0; i < ins->n_args; i++)
			json_array_append_new(a, json_string(ins->args[i]));
		return a;
	}
	if (ins->n_heredocs == 0)
		return shell_args(c->s->image, ins->args[0]);
	if (heredoc_only(ins)) {
		const struct kiln_df_heredoc *h = &ins->heredocs[0];
		const char *body = h->content ? h->content : "";
		if (!strncmp(body, "#!", 2))
			return heredoc_script(c, h, mounts);
		return shell_args(c->s->image, body);
	}
	kiln_strbuf_adds(&sb, ins->args[0]);
	for (i = 0; i < ins->n_heredocs; i++)
		kiln_strbuf_addf(&sb, "\n%s%s", ins->heredocs[i].content ? ins->heredocs[i].content : "",
				 ins->heredocs[i].name);
	a = shell_args(c->s->image, kiln_strbuf_str(&sb));
	kiln_strbuf_release(&sb);
	return a;
}

static json_t *env_array(const struct stage_state *s)
{
	json_t *a = json_array();
	size_t i;

	for (i = 0; i < s->env.n; i++)
		if (s->env.v[i].value)
			json_array_append_new(a, json_sprintf("%s=%s", s->env.v[i].key,
							      s->env.v[i].value));
	return a;
}

/*
 * With an ssh mount, SSH_AUTH_SOCK names the first one's socket unless
 * the stage sets it (BuildKit client/llb/exec.go: AddOrReplace only when
 * env.Get("SSH_AUTH_SOCK") finds nothing).
 */
static void ssh_env(json_t *env, const json_t *mounts)
{
	json_t *v;
	size_t i;

	json_array_foreach(env, i, v)
		if (!strncmp(json_string_value(v), "SSH_AUTH_SOCK=", 14))
			return;
	json_array_foreach(mounts, i, v)
		if (!strcmp(json_string_value(json_object_get(v, "type")) ?: "", "ssh")) {
			json_array_append_new(env, json_sprintf("SSH_AUTH_SOCK=%s",
								json_string_value(json_object_get(v, "target"))));
			return;
		}
}

/* BuildKit's history text: "|N K=v ... argv..." when the stage has ARGs. */
static char *run_history(const struct stage_state *s, const json_t *argv)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(KILN_DF_MAX_BYTES * 2);
	json_t *v;
	size_t i;

	kiln_strbuf_adds(&sb, "RUN");
	if (s->args.n)
		kiln_strbuf_addf(&sb, " |%zu", s->args.n);
	for (i = 0; i < s->args.n; i++) {
		const char *val = kvlist_get(&s->env, s->args.v[i].key);
		if (!val)
			val = s->args.v[i].value ? s->args.v[i].value : "";
		kiln_strbuf_addf(&sb, " %s=%s", s->args.v[i].key, val);
	}
	json_array_foreach(argv, i, v)
		kiln_strbuf_addf(&sb, " %s", json_string_value(v));
	kiln_strbuf_adds(&sb, " # buildkit");
	return kiln_strbuf_detach(&sb, NULL);
}

int lower_run(struct ictx *c)
{
	static const char *const allowed[] = { "mount", "network", "security", NULL };
	struct stage_state *s = c->s;
	json_t *mounts = json_array(), *argv = NULL, *op, *user;
	_cleanup_free_ char *id = op_id(c, NULL), *hist = NULL;
	const char *net = NULL, *name;
	json_t *env;
	int r = check_flags(c, allowed);

	if (r == 0 && c->ins->n_args == 0)
		r = lerr(c, -EINVAL, "requires a command");
	if (r == 0)
		r = run_network(c, &net);
	if (r == 0)
		r = run_mounts(c, mounts);
	if (r == 0 && !(argv = run_argv(c, mounts)))
		r = lerr(c, -EINVAL, "heredoc name '%s' cannot hold '/'", c->ins->heredocs[0].name);
	if (r < 0) {
		json_decref(mounts);
		return r;
	}
	name = ins_name(c);
	env = env_array(s);
	ssh_env(env, mounts);
	op = json_pack("{s:s, s:s, s:s, s:s, s:O, s:o, s:s, s:s}", "op", "exec", "name", name,
		       "platform", s->platform, "input", tree_op(c->L, s), "args", argv,
		       "env", env, "cwd", workdir_of(s), "network", net);
	user = json_object_get(image_config(s->image), "User");
	if (json_is_string(user) && *json_string_value(user))
		json_object_set(op, "user", user);
	if (json_array_size(mounts))
		json_object_set(op, "mounts", mounts);
	json_decref(mounts);
	hist = run_history(s, argv);
	json_decref(argv);
	stage_set_op(s, emit_op(c->L, op, id));
	commit(c, hist, s->op);
	return 0;
}

/* ---- WORKDIR ---- */

int lower_workdir(struct ictx *c)
{
	struct stage_state *s = c->s;
	_cleanup_free_ char *raw = NULL, *wd = NULL, *id = op_id(c, NULL), *hist = NULL;
	json_t *action, *op, *user;
	int r = check_flags(c, NULL);

	if (r == 0 && (c->ins->n_args != 1 || !*c->ins->args[0]))
		r = lerr(c, -EINVAL, "requires exactly one argument");
	if (r == 0)
		r = expand(c, c->ins->args[0], &raw);
	if (r < 0)
		return r;
	if (!*raw)
		return lerr(c, -EINVAL, "'%s' expands to an empty path", c->ins->args[0]);
	{
		_cleanup_free_ char *j = raw[0] == '/' ? xstrdup(raw)
				       : kiln_path_join(workdir_of(s), raw);
		wd = kiln_path_clean_abs(j);
	}
	json_object_set_new(image_config(s->image), "WorkingDir", json_string(wd));
	hist = xasprintf("WORKDIR %s", wd);
	if (!strcmp(wd, "/")) {
		commit(c, hist, NULL);
		return 0;
	}
	action = json_pack("{s:s, s:s, s:b, s:s}", "action", "mkdir", "path", wd, "parents", 1,
			   "mode", "0755");
	user = json_object_get(image_config(s->image), "User");
	if (json_is_string(user) && *json_string_value(user))
		json_object_set(action, "chown", user);
	add_mtime(c->L, action);
	op = json_pack("{s:s, s:s, s:s, s:[o]}", "op", "file", "name", ins_name(c), "platform",
		       s->platform, "actions", action);
	if (s->op)
		json_object_set_new(op, "input", json_string(s->op));
	stage_set_op(s, emit_op(c->L, op, id));
	commit(c, hist, s->op);
	return 0;
}

/* ---- COPY / ADD ---- */

struct copy {
	bool add, link, parents, keep_git_dir;
	char *chown, *chmod, *checksum, *dest_raw, *dest;
	const char *from_op;      /* --from tree, or NULL = context */
	json_t *actions;
	json_t *exclude;          /* --exclude patterns, expanded, or NULL */
	struct kiln_strbuf hist;
	size_t n_src;
};

static void copy_release(struct copy *cp)
{
	free(cp->chown);
	free(cp->chmod);
	free(cp->checksum);
	free(cp->dest_raw);
	free(cp->dest);
	json_decref(cp->actions);
	json_decref(cp->exclude);
	kiln_strbuf_release(&cp->hist);
}

static bool is_url(const char *s)
{
	return !strncmp(s, "http://", 7) || !strncmp(s, "https://", 8);
}

static bool is_git(const char *s)
{
	const char *hash = strchr(s, '#');
	size_t l = hash ? (size_t)(hash - s) : strlen(s);

	return !strncmp(s, "git@", 4) || !strncmp(s, "git://", 6) ||
	       (l >= 4 && !strncmp(s + l - 4, ".git", 4) && (is_url(s) || !strncmp(s, "ssh://", 6)));
}

static json_t *copy_action(struct ictx *c, struct copy *cp, const char *from, const char *src)
{
	json_t *a = json_pack("{s:s, s:s, s:s, s:s}", "action", "copy", "from", from, "src", src,
			      "dest", cp->dest);

	if (cp->chown)
		json_object_set_new(a, "chown", json_string(cp->chown));
	if (cp->chmod)
		json_object_set_new(a, "mode", json_string(cp->chmod));
	add_mtime(c->L, a);
	return a;
}

/* The end of the variable reference at s ("$NAME" or "${...}"), or s. */
static const char *var_end(const char *s)
{
	int depth = 0;

	if (s[1] == '{') {
		for (s += 1; *s; s++) {
			if (*s == '{')
				depth++;
			else if (*s == '}' && --depth == 0)
				return s + 1;
		}
		return NULL;
	}
	for (s++; isalnum((unsigned char)*s) || *s == '_'; s++)
		;
	return s;
}

/*
 * A heredoc body as BuildKit expands it for COPY: variables only, quotes
 * and other text kept; "\$" is a literal '$'.
 */
static int expand_raw(struct ictx *c, const char *body, char **out)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(KILN_DF_MAX_BYTES * 2);
	const char *p = body, *e;
	int r = 0;

	while (r == 0 && *p) {
		if (p[0] == '\\' && p[1] == '$') {
			r = kiln_strbuf_addch(&sb, '$');
			p += 2;
		} else if (*p != '$' || !(e = var_end(p)) || e == p + 1) {
			r = kiln_strbuf_addch(&sb, *p++);
		} else {
			_cleanup_free_ char *ref = xstrndup(p, (size_t)(e - p)), *v = NULL;
			r = expand(c, ref, &v);
			if (r == 0 && kiln_strbuf_adds(&sb, v) < 0)
				r = lerr(c, -E2BIG, "heredoc too large after expansion");
			p = e;
		}
	}
	if (r == -E2BIG && !*c->L->err)
		r = lerr(c, r, "heredoc too large after expansion");
	*out = r == 0 ? kiln_strbuf_detach(&sb, NULL) : NULL;
	kiln_strbuf_release(&sb);
	return r;
}

static int copy_heredoc(struct ictx *c, struct copy *cp, const struct kiln_df_heredoc *h)
{
	_cleanup_free_ char *sfx = xasprintf("doc%zu", json_array_size(cp->actions));
	_cleanup_free_ char *id = op_id(c, sfx), *path = NULL, *data = NULL;
	json_t *mk;
	const char *op;
	int r;

	if (strchr(h->name, '/'))
		return lerr(c, -EINVAL, "heredoc name '%s' cannot hold '/'", h->name);
	if (h->expand) {
		r = expand_raw(c, h->content ? h->content : "", &data);
		if (r < 0)
			return r;
	}
	path = xasprintf("/%s", h->name);
	mk = json_pack("{s:s, s:s, s:s, s:s}", "action", "mkfile", "path", path, "data",
		       data ? data : h->content ? h->content : "", "mode", "0644");
	add_mtime(c->L, mk);
	op = emit_op(c->L, json_pack("{s:s, s:s, s:s, s:[o]}", "op", "file", "name",
				     "[internal] preparing inline document", "platform",
				     c->s->platform, "actions", mk),
		     id);
	json_array_append_new(cp->actions, copy_action(c, cp, op, path));
	kiln_strbuf_addf(&cp->hist, " <<%s", h->name);
	return 0;
}

/* The file name a URL lands as (BuildKit: the last path element). */
static char *url_filename(const char *url)
{
	const char *p = strstr(url, "://"), *end, *slash;

	p = p ? p + 3 : url;
	p = strchr(p, '/');
	if (!p)
		return xstrdup("__unnamed__");
	end = p + strcspn(p, "?#");
	while (end > p && end[-1] == '/')
		end--;
	slash = end;
	while (slash > p && slash[-1] != '/')
		slash--;
	if (slash == end || (end - slash == 1 && *slash == '.'))
		return xstrdup("__unnamed__");
	return xstrndup(slash, (size_t)(end - slash));
}

static int copy_url(struct ictx *c, struct copy *cp, const char *url)
{
	_cleanup_free_ char *sfx = xasprintf("url%zu", json_array_size(cp->actions));
	_cleanup_free_ char *id = op_id(c, sfx), *file = url_filename(url), *src = NULL;
	json_t *op;

	if (!cp->add)
		return lerr(c, -EINVAL, "'%s': COPY cannot fetch URLs (use ADD)", url);
	if (strchr(file, '/'))
		return lerr(c, -EINVAL, "'%s': bad file name", url);
	op = json_pack("{s:s, s:s, s:s, s:s}", "op", "source.http", "name", ins_name(c), "url",
		       url, "filename", file);
	if (cp->checksum)
		json_object_set_new(op, "checksum", json_string(cp->checksum));
	src = xasprintf("/%s", file);
	json_array_append_new(cp->actions, copy_action(c, cp, emit_op(c->L, op, id), src));
	return 0;
}

/*
 * ADD of a git repository (BuildKit dockerfile2llb dispatchCopy:
 * gitutil.ParseGitRef, llb.Git(remote, ref[:subdir]) with KeepGitDir, then
 * a copy of its "/" into the destination): "URL#ref:subdir" becomes a
 * source.git op whose tree is copied into place. Its name carries the URL
 * without credentials.
 */
static int copy_git(struct ictx *c, struct copy *cp, const char *src)
{
	_cleanup_free_ char *sfx = xasprintf("git%zu", json_array_size(cp->actions));
	_cleanup_free_ char *id = op_id(c, sfx), *remote = NULL, *ref = NULL, *safe = NULL;
	_cleanup_free_ char *name = NULL;
	const char *hash = strchr(src, '#'), *colon;
	json_t *op;

	remote = hash ? xstrndup(src, (size_t)(hash - src)) : xstrdup(src);
	if (hash && hash[1]) {
		colon = strchr(hash + 1, ':');
		ref = colon ? xstrndup(hash + 1, (size_t)(colon - hash - 1)) : xstrdup(hash + 1);
	}
	safe = kiln_url_strip_userinfo(remote);
	name = xstrdup(ins_name(c));
	if (strlen(safe) < strlen(remote)) {
		/* the userinfo as written ("user:secret@"), out of the name */
		size_t k = strlen(remote) - strlen(safe);
		_cleanup_free_ char *info = xstrndup(strstr(remote, "://") + 3, k);
		char *hit;

		while ((hit = strstr(name, info)))
			memmove(hit, hit + k, strlen(hit + k) + 1);
	}
	op = json_pack("{s:s, s:s, s:s}", "op", "source.git", "name", name, "url", remote);
	if (ref && *ref)
		json_object_set_new(op, "ref", json_string(ref));
	if (hash && (colon = strchr(hash + 1, ':')) && colon[1])
		json_object_set_new(op, "subdir", json_string(colon + 1));
	if (cp->keep_git_dir)
		json_object_set_new(op, "keep_git_dir", json_true());
	json_array_append_new(cp->actions, copy_action(c, cp, emit_op(c->L, op, id), "/."));
	return 0;
}

/*
 * COPY --parents (BuildKit convert_copy.go, dispatchCopy): "a/./b/c"
 * copies the contents of a keeping only the path b/c (an include
 * pattern), so b/c lands under the destination with its parent
 * directories; without the "/./" pivot the whole path is kept under the
 * destination. The path must exist unless it holds a wildcard.
 */
static int copy_parents(struct ictx *c, struct copy *cp, const char *src)
{
	const char *pivot = strstr(src, "/./");
	_cleanup_free_ char *parent = pivot ? xstrndup(src, (size_t)(pivot - src)) : xstrdup("");
	_cleanup_free_ char *pattern = kiln_path_clean(pivot ? pivot + 3 : src);
	_cleanup_free_ char *pclean = kiln_path_clean(parent), *full = NULL, *path = NULL;
	const char *from;
	json_t *a;

	if (!*pattern)
		return lerr(c, -EINVAL, "COPY --parents '%s': nothing after the pivot", src);
	full = *pclean ? kiln_path_join(pclean, pattern) : xstrdup(pattern);
	from = cp->from_op ? cp->from_op : context_op_for(c->L, full);
	path = *pclean ? xasprintf("/%s/.", pclean) : xstrdup("/.");
	a = copy_action(c, cp, from, path);
	json_object_set_new(a, "include", json_pack("[s]", pattern));
	if (kiln_path_has_glob(src))
		json_object_set_new(a, "allow_not_found", json_true());
	json_array_append_new(cp->actions, a);
	return 0;
}

static int copy_local(struct ictx *c, struct copy *cp, const char *src)
{
	_cleanup_free_ char *clean = NULL, *path = NULL;
	const char *from;
	json_t *a;

	if (cp->parents)
		return copy_parents(c, cp, src);
	clean = kiln_path_clean(src);
	from = cp->from_op ? cp->from_op : context_op_for(c->L, clean);

	/* Docker copies a directory's contents: "/dir/." (a file stays a file). */
	path = *clean ? xasprintf("/%s/.", clean) : xstrdup("/.");
	a = copy_action(c, cp, from, path);
	if (kiln_path_has_glob(src))
		json_object_set_new(a, "allow_not_found", json_true());
	/*
	 * ADD unpacks a local tar archive, detected by content when the step
	 * runs (BuildKit: AttemptUnpackDockerCompatibility on every local
	 * source, isArchivePath in solver/llbsolver/file/unpack.go).
	 */
	if (cp->add && !cp->from_op)
		json_object_set_new(a, "extract", json_true());
	if (cp->exclude)
		json_object_set(a, "exclude", cp->exclude);
	json_array_append_new(cp->actions, a);
	return 0;
}

static int copy_source(struct ictx *c, struct copy *cp, const char *word)
{
	const struct kiln_df_heredoc *h = c->ins->json_form ? NULL : heredoc_marker(c->ins, word);
	_cleanup_free_ char *src = NULL;
	int r;

	if (h)
		return copy_heredoc(c, cp, h);
	r = expand(c, word, &src);
	if (r < 0)
		return r;
	kiln_strbuf_addf(&cp->hist, " %s", src);
	if (!*src)
		return lerr(c, -EINVAL, "'%s' expands to an empty source", word);
	if (cp->add && is_git(src)) {
		if (cp->checksum)
			return lerr(c, -EINVAL, "--checksum needs an http(s) source, not '%s'", src);
		return copy_git(c, cp, src);
	}
	if (is_url(src))
		return copy_url(c, cp, src);
	if (cp->checksum)
		return lerr(c, -EINVAL, "--checksum needs an http(s) source, not '%s'", src);
	return copy_local(c, cp, src);
}

static int copy_chmod(struct ictx *c, struct copy *cp, const char *v)
{
	_cleanup_free_ char *m = NULL;
	json_t *tmp = json_object();
	int r = expand(c, v, &m);

	if (r == 0)
		r = set_mode(c, "--chmod", m, tmp);
	if (r == 0) {
		cp->chmod = xstrdup(json_string_value(json_object_get(tmp, "mode")));
		kiln_strbuf_addf(&cp->hist, " --chmod=%s", m);
	}
	json_decref(tmp);
	return r;
}

/*
 * --exclude=PATTERN, repeatable (BuildKit parse.go: AddStrings("exclude")
 * for COPY and ADD; convert_copy.go's dispatchCopy adds them with
 * llb.WithExcludePatterns to every copy of the instruction, which fsutil
 * applies to paths relative to each copied source).
 */
static int copy_excludes(struct ictx *c, struct copy *cp)
{
	size_t i;
	int r;

	for (i = 0; i < c->ins->n_flags; i++) {
		const struct kiln_df_flag *f = &c->ins->flags[i];
		_cleanup_free_ char *v = NULL;

		if (strcmp(flag_name(f), "exclude"))
			continue;
		r = expand(c, f->value ? f->value : "", &v);
		if (r < 0)
			return r;
		if (!*v)
			return lerr(c, -EINVAL, "--exclude needs a pattern");
		if (!cp->exclude)
			cp->exclude = json_array();
		/* Not in the history: BuildKit's commit message leaves it out. */
		json_array_append_new(cp->exclude, json_string(v));
	}
	return 0;
}

static int copy_flags(struct ictx *c, struct copy *cp)
{
	static const char *const copy_allowed[] = { "from", "chown", "chmod", "link",
						    "exclude", "parents", NULL };
	static const char *const add_allowed[] = { "chown", "chmod", "link", "checksum",
						   "keep-git-dir", "exclude", NULL };
	const char *v;
	int r;

	if (cp->add && flag_present(c->ins, "from"))
		return lerr(c, -EINVAL, "--from is not supported by ADD (use COPY --from)");
	r = check_flags(c, cp->add ? add_allowed : copy_allowed);
	v = flag_value(c->ins, "parents");
	cp->parents = v && strcmp(v, "false");
	/* BuildKit's history: "COPY --parents --chown=… --chmod=… src dest". */
	if (cp->parents)
		kiln_strbuf_adds(&cp->hist, " --parents");
	if (r == 0 && (v = flag_value(c->ins, "chown")) && *v)
		r = expand(c, v, &cp->chown);
	if (r == 0 && cp->chown)
		kiln_strbuf_addf(&cp->hist, " --chown=%s", cp->chown);
	if (r == 0 && (v = flag_value(c->ins, "chmod")) && *v)
		r = copy_chmod(c, cp, v);
	v = flag_value(c->ins, "link");
	cp->link = v && strcmp(v, "false");
	/* BuildKit: a bool flag, used by git sources only. */
	v = flag_value(c->ins, "keep-git-dir");
	cp->keep_git_dir = cp->add && v && strcmp(v, "false");
	if (r == 0 && (v = flag_value(c->ins, "checksum")))
		r = expand(c, v, &cp->checksum);
	if (r == 0)
		r = copy_excludes(c, cp);
	return r;
}

static int check_checksum(struct ictx *c, const struct copy *cp)
{
	const char *h;
	size_t i;

	if (!cp->checksum)
		return 0;
	if (cp->n_src != 1)
		return lerr(c, -EINVAL, "--checksum needs exactly one source");
	if (strncmp(cp->checksum, "sha256:", 7) || strlen(cp->checksum) != 7 + 64)
		return lerr(c, -EINVAL, "--checksum=%s: expected sha256:<64 hex digits>",
			    cp->checksum);
	for (h = cp->checksum + 7, i = 0; i < 64; i++)
		if (!isxdigit((unsigned char)h[i]))
			return lerr(c, -EINVAL, "--checksum=%s: expected sha256:<64 hex digits>",
				    cp->checksum);
	return 0;
}

static int copy_prepare(struct ictx *c, struct copy *cp)
{
	const struct kiln_df_instruction *ins = c->ins;
	const char *from;
	size_t l;
	int r;

	kiln_strbuf_init(&cp->hist, KILN_DF_MAX_BYTES * 2);
	kiln_strbuf_adds(&cp->hist, cp->add ? "ADD" : "COPY");
	cp->actions = json_array();
	if (ins->n_args < 2)
		return lerr(c, -EINVAL, "requires at least one source and a destination");
	cp->n_src = ins->n_args - 1;
	r = copy_flags(c, cp);
	if (r == 0)
		r = check_checksum(c, cp);
	if (r == 0)
		r = expand(c, ins->args[ins->n_args - 1], &cp->dest_raw);
	if (r < 0)
		return r;
	l = strlen(cp->dest_raw);
	if (cp->n_src > 1 && (l == 0 || cp->dest_raw[l - 1] != '/'))
		return lerr(c, -EINVAL, "with more than one source the destination must be a directory ending in '/' (got '%s')",
			    cp->dest_raw);
	cp->dest = resolve_path(c->s, cp->dest_raw);
	from = flag_value(ins, "from");
	if (from && !*from)
		return lerr(c, -EINVAL, "--from needs a stage name, index or image");
	return from ? from_tree(c, from, "from", &cp->from_op) : 0;
}

/* The file op with the copy actions, and for --link the merge after it. */
static const char *copy_emit(struct ictx *c, struct copy *cp)
{
	struct stage_state *s = c->s;
	_cleanup_free_ char *id = op_id(c, NULL), *cid = op_id(c, "copy");
	json_t *op = json_pack("{s:s, s:s, s:s, s:O}", "op", "file", "name", ins_name(c),
			       "platform", s->platform, "actions", cp->actions);
	const char *fop;

	if (!cp->link) {
		if (s->op)
			json_object_set_new(op, "input", json_string(s->op));
		return emit_op(c->L, op, id);
	}
	if (!s->op)
		return emit_op(c->L, op, id);
	fop = emit_op(c->L, op, cid);
	return emit_op(c->L, json_pack("{s:s, s:s, s:s, s:[s, s]}", "op", "merge", "name",
				       c->name, "platform", s->platform, "inputs", s->op, fop),
		       id);
}

int lower_copy(struct ictx *c)
{
	struct copy cp = { .add = c->ins->cmd == KILN_DF_ADD };
	size_t i;
	int r = copy_prepare(c, &cp);

	if (r == 0 && cp.link && cp.chown && !isdigit((unsigned char)cp.chown[0]))
		r = lerr(c, -ENOTSUP, "--link with --chown=%s: a linked copy has no /etc/passwd to resolve names in; use numeric uid:gid",
			 cp.chown);
	for (i = 0; r == 0 && i < cp.n_src; i++)
		r = copy_source(c, &cp, c->ins->args[i]);
	if (r == 0) {
		stage_set_op(c->s, copy_emit(c, &cp));
		kiln_strbuf_addf(&cp.hist, " %s # buildkit", cp.dest_raw);
		commit(c, kiln_strbuf_str(&cp.hist), c->s->op);
	}
	copy_release(&cp);
	return r;
}
