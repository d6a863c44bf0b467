/*
 * Dockerfile -> op graph: the driver. Splits the file into stages, computes
 * the global ARGs per target platform, lowers the target stage (and, on
 * demand, the stages it depends on) once per platform, and assembles the
 * definition and the images.
 *
 * Ops are deduplicated by content (everything but id and name): a stage
 * whose inputs do not depend on the target platform (FROM
 * --platform=$BUILDPLATFORM) yields the same ops for every target, so they
 * appear once in the graph and every platform's image shares them.
 */
#include "frontend/dockerfile/lower-internal.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "basic/alloc.h"
#include "basic/platform.h"
#include "basic/strbuf.h"
#include "basic/strv.h"

/* ---- ordered key/value lists ---- */

const struct kv *kvlist_find(const struct kvlist *l, const char *key)
{
	size_t i;

	for (i = 0; i < l->n; i++)
		if (!strcmp(l->v[i].key, key))
			return &l->v[i];
	return NULL;
}

const char *kvlist_get(const struct kvlist *l, const char *key)
{
	const struct kv *e = kvlist_find(l, key);

	return e ? e->value : NULL;
}

void kvlist_set(struct kvlist *l, const char *key, const char *value)
{
	struct kv *e = (struct kv *)kvlist_find(l, key);

	if (e) {
		/* Copied first: value may be this entry's own (kvlist_get). */
		char *v = value ? xstrdup(value) : NULL;

		free(e->value);
		e->value = v;
		return;
	}
	l->v = xgrow(l->v, &l->alloc, l->n + 1, sizeof(*l->v));
	l->v[l->n].key = xstrdup(key);
	l->v[l->n].value = value ? xstrdup(value) : NULL;
	l->n++;
}

void kvlist_copy(struct kvlist *dst, const struct kvlist *src)
{
	size_t i;

	for (i = 0; i < src->n; i++)
		kvlist_set(dst, src->v[i].key, src->v[i].value);
}

void kvlist_release(struct kvlist *l)
{
	size_t i;

	for (i = 0; i < l->n; i++) {
		free(l->v[i].key);
		free(l->v[i].value);
	}
	free(l->v);
	memset(l, 0, sizeof(*l));
}

const char *kvlist_lookup(void *ud, const char *name)
{
	return kvlist_get(ud, name);
}

/* ---- platforms ---- */

void platform_split(const char *p, struct kiln_platform *out)
{
	if (kiln_platform_parse(p, out, NULL) == 0)
		return;
	/* check_opts let only platforms through: keep going, empty. */
	out->os = xstrdup("");
	out->arch = xstrdup("");
	out->variant = xstrdup("");
}

/* ---- errors ---- */

int lerr(const struct ictx *c, int code, const char *fmt, ...)
{
	const struct kiln_df_instruction *at = c->at ? c->at : c->ins;
	_cleanup_free_ char *where = xasprintf("%s:%u:%u: %s%s", c->L->file, at->pos.line,
					       at->pos.col, c->onbuild ? "ONBUILD " : "",
					       kiln_df_cmd_name(c->ins->cmd));
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = kiln_error_setv(c->L->err, code, where, fmt, ap);
	va_end(ap);
	return r;
}

int lerr_wrap(const struct ictx *c, int r)
{
	const struct kiln_df_instruction *at = c->at ? c->at : c->ins;

	kiln_error_prefix(c->L->err, "%s:%u:%u: %s%s", c->L->file, at->pos.line,
			  at->pos.col, c->onbuild ? "ONBUILD " : "",
			  kiln_df_cmd_name(c->ins->cmd));
	return r;
}

/* ---- flags ---- */

const char *flag_name(const struct kiln_df_flag *f)
{
	const char *n = f->name;

	while (*n == '-')
		n++;
	return n;
}

const char *flag_value(const struct kiln_df_instruction *ins, const char *name)
{
	const char *v = NULL;
	size_t i;

	for (i = 0; i < ins->n_flags; i++)
		if (!strcmp(flag_name(&ins->flags[i]), name))
			v = ins->flags[i].value ? ins->flags[i].value : "";
	return v;
}

bool flag_present(const struct kiln_df_instruction *ins, const char *name)
{
	return flag_value(ins, name) != NULL;
}

int check_flags(struct ictx *c, const char *const *allowed)
{
	size_t i;

	for (i = 0; i < c->ins->n_flags; i++) {
		const char *n = flag_name(&c->ins->flags[i]);
		const char *const *a;
		bool ok = false;

		for (a = allowed; a && *a; a++)
			if (!strcmp(*a, n))
				ok = true;
		if (!ok)
			return lerr(c, -EINVAL, "unknown flag: --%s", n);
	}
	return 0;
}

/* ---- expansion ---- */

int expand(struct ictx *c, const char *word, char **out)
{
	int r = kiln_df_expand_word(word, c->L->df->escape ? c->L->df->escape : '\\',
				    kvlist_lookup, &c->s->env, out, c->L->err);

	return r < 0 ? lerr_wrap(c, r) : 0;
}

/* ---- ops ---- */

const char *emit_op(struct lower *L, json_t *op, const char *id)
{
	json_t *key_obj = json_copy(op), *have;
	char *key;

	json_object_del(key_obj, "name");
	if (L->cur) /* where it came from, for errors: the first place */
		json_object_set_new(op, "source", json_pack("{s:s, s:i, s:i}", "file", L->file,
							    "line", (json_int_t)L->cur->pos.line,
							    "end_line", (json_int_t)L->cur->end_line));
	key = json_dumps(key_obj, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(key_obj);
	if (!key)
		abort(); /* jansson fails only on allocation */
	have = json_object_get(L->dedup, key);
	if (have) {
		free(key);
		json_decref(op);
		return json_string_value(have);
	}
	json_object_set_new(op, "id", json_string(id));
	json_array_append_new(L->ops, op);
	json_object_set_new(L->dedup, key, json_string(id));
	have = json_object_get(L->dedup, key);
	free(key);
	return json_string_value(have);
}

static json_t *context_json(struct lower *L)
{
	json_t *ex = json_array();
	size_t i;

	for (i = 0; i < L->o->n_excludes; i++)
		json_array_append_new(ex, json_string(L->o->excludes[i]));
	return json_pack("{s:s, s:s, s:s, s:o}", "op", "source.local", "name",
			 "[internal] load build context", "path",
			 L->o->context_dir ? L->o->context_dir : ".", "exclude", ex);
}

const char *context_op(struct lower *L)
{
	if (!L->context_op)
		L->context_op = xstrdup(emit_op(L, context_json(L), "context"));
	return L->context_op;
}

/*
 * The context narrowed to one COPY source (BuildKit's include patterns):
 * a step is then keyed by the files it copies, so editing another file of
 * the context leaves it cached. "" (the whole context) is context_op().
 */
const char *context_op_for(struct lower *L, const char *path)
{
	_cleanup_free_ char *id = NULL;
	json_t *op;

	if (!path || !*path)
		return context_op(L);
	op = context_json(L);
	json_object_set_new(op, "include", json_pack("[s]", path));
	id = xasprintf("context-%u", ++L->n_contexts);
	return emit_op(L, op, id);
}

const char *empty_op(struct lower *L)
{
	if (L->empty_op)
		return L->empty_op;
	L->empty_op = xstrdup(emit_op(L,
		json_pack("{s:s, s:s, s:[{s:s, s:s, s:b}]}", "op", "file", "name",
			  "[internal] empty tree", "actions", "action", "mkdir", "path",
			  "/", "parents", 1),
		"empty"));
	return L->empty_op;
}

const char *tree_op(struct lower *L, const struct stage_state *s)
{
	return s->op ? s->op : empty_op(L);
}

int resolve_image(struct ictx *c, const char *ref, const char *platform,
		  const char **pinned, json_t **config)
{
	struct lower *L = c->L;
	_cleanup_free_ char *key = xasprintf("%s %s", platform, ref);
	_cleanup_free_ char *pin = NULL, *text = NULL;
	json_t *have = json_object_get(L->resolved, key), *cfg;
	json_error_t jerr;
	int r;

	if (!have) {
		if (!L->o->resolve)
			return lerr(c, -EINVAL, "%s: no image resolver configured", ref);
		r = L->o->resolve(L->o->resolve_ud, ref, platform, &pin, &text, L->err);
		if (r < 0)
			return lerr_wrap(c, r);
		cfg = json_loads(text ? text : "{}", 0, &jerr);
		if (!cfg || !json_is_object(cfg)) {
			json_decref(cfg);
			return lerr(c, -EINVAL, "%s: image config is not a JSON object", ref);
		}
		have = json_pack("[s, o]", pin ? pin : ref, cfg);
		json_object_set_new(L->resolved, key, have);
	}
	*pinned = json_string_value(json_array_get(have, 0));
	*config = json_array_get(have, 1);
	return 0;
}

/* ---- named contexts (--build-context) ---- */

/*
 * BuildKit's dockerui NamedContext: reference.ParseNormalizedNamed, then
 * FamiliarString without ":latest". Only the reference grammar's
 * characters are accepted; the rest of the grammar is the registry's.
 */
char *kiln_df_context_name(const char *name)
{
	static const char *const prefixes[] = { "docker.io/library/", "index.docker.io/library/",
						"docker.io/", "index.docker.io/" };
	const char *p = name;
	size_t i, l;

	if (!name || !*name || strlen(name) > 255)
		return NULL;
	for (; *p; p++)
		if (!islower((unsigned char)*p) && !isdigit((unsigned char)*p) &&
		    !strchr("._-/:@+", *p))
			return NULL;
	if (!isalnum((unsigned char)name[0]))
		return NULL;
	for (i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
		l = strlen(prefixes[i]);
		if (!strncmp(name, prefixes[i], l) && name[l]) {
			name += l;
			break;
		}
	}
	l = strlen(name);
	if (l > 7 && !strcmp(name + l - 7, ":latest") && !strchr(name, '@'))
		l -= 7;
	return xstrndup(name, l);
}

const struct kiln_df_named_context *named_context(struct lower *L, const char *name)
{
	_cleanup_free_ char *n = NULL;
	size_t i;

	if (!L->o->n_named_contexts)
		return NULL;
	n = kiln_df_context_name(name);
	if (!n)
		return NULL;
	for (i = 0; i < L->o->n_named_contexts; i++)
		if (!strcmp(L->o->named_contexts[i].name, n))
			return &L->o->named_contexts[i];
	return NULL;
}

int named_context_tree(struct ictx *c, const struct kiln_df_named_context *nc,
		       const char *platform, const char *id, const char **op,
		       json_t **config)
{
	struct lower *L = c->L;
	_cleanup_free_ char *name = NULL, *cid = NULL;
	const char *pinned;
	int r;

	if (nc->dir) {
		json_t *ex = json_array();
		size_t i;

		for (i = 0; i < nc->n_excludes; i++)
			json_array_append_new(ex, json_string(nc->excludes[i]));
		/* BuildKit names it "[context NAME] load from client". */
		name = xasprintf("[context %s] load from client", nc->name);
		cid = xasprintf("context-%u", ++L->n_contexts);
		*op = emit_op(L, json_pack("{s:s, s:s, s:s, s:o}", "op", "source.local", "name",
					   name, "path", nc->dir, "exclude", ex),
			      cid);
		*config = NULL;
		return 0;
	}
	r = resolve_image(c, nc->image, platform, &pinned, config);
	if (r < 0)
		return r;
	name = xasprintf("[context %s] %s", nc->name, pinned);
	*op = emit_op(L, json_pack("{s:s, s:s, s:s, s:s}", "op", "source.image", "name", name,
				   "ref", pinned, "platform", platform),
		      id);
	return 0;
}

/* ---- stages ---- */

int find_stage(struct lower *L, const char *name, ssize_t *out)
{
	const char *p;
	size_t i;

	*out = -1;
	for (p = name; *p && isdigit((unsigned char)*p); p++)
		;
	if (*name && !*p && strlen(name) < 10) {
		uint64_t idx = strtoull(name, NULL, 10);
		if (idx >= L->n_stages)
			return -ENOENT;
		*out = (ssize_t)idx;
		return 0;
	}
	for (i = 0; i < L->n_stages; i++)
		if (L->stages[i].name && !strcasecmp(L->stages[i].name, name))
			*out = (ssize_t)i;
	return 0;
}

char *stage_names(const struct lower *L)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(1 << 20);
	size_t i;

	for (i = 0; i < L->n_stages; i++)
		if (L->stages[i].name)
			kiln_strbuf_addf(&sb, "%s%s", sb.len ? ", " : "", L->stages[i].name);
	if (!sb.len)
		kiln_strbuf_adds(&sb, "none named");
	return kiln_strbuf_detach(&sb, NULL);
}

static bool valid_stage_name(const char *s)
{
	if (!islower((unsigned char)*s))
		return false;
	for (; *s; s++)
		if (!islower((unsigned char)*s) && !isdigit((unsigned char)*s) &&
		    !strchr("-_.", *s))
			return false;
	return true;
}

static int parse_from(struct lower *L, const struct kiln_df_instruction *ins,
		      struct stage_def *sd)
{
	static const char *const allowed[] = { "platform", NULL };
	struct ictx c = { .L = L, .ins = ins };
	char *p;
	int r = check_flags(&c, allowed);

	if (r < 0)
		return r;
	if (ins->n_args != 1 && !(ins->n_args == 3 && !strcasecmp(ins->args[1], "as")))
		return lerr(&c, -EINVAL, "expected 'FROM [--platform=P] IMAGE [AS NAME]'");
	sd->from = ins;
	sd->base_raw = ins->args[0];
	sd->platform_raw = flag_value(ins, "platform");
	if (ins->n_args == 3) {
		sd->name = xstrdup(ins->args[2]);
		for (p = sd->name; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		if (!valid_stage_name(sd->name))
			return lerr(&c, -EINVAL, "invalid stage name '%s' (letters, digits, '-', '_', '.'; starting with a letter)",
				    ins->args[2]);
	}
	return 0;
}

static int check_stage_names(struct lower *L)
{
	size_t i, j;

	for (i = 0; i < L->n_stages; i++)
		for (j = 0; j < i && L->stages[i].name; j++)
			if (L->stages[j].name && !strcmp(L->stages[i].name, L->stages[j].name)) {
				struct ictx c = { .L = L, .ins = L->stages[i].from };
				return lerr(&c, -EINVAL, "duplicate stage name '%s' (first at line %u)",
					    L->stages[i].name, L->stages[j].from->pos.line);
			}
	return 0;
}

static int split_stages(struct lower *L)
{
	const struct kiln_dockerfile *df = L->df;
	size_t i;
	int r;

	L->stages = xcalloc(df->n + 1, sizeof(*L->stages));
	for (i = 0; i < df->n; i++) {
		const struct kiln_df_instruction *ins = &df->ins[i];
		struct ictx c = { .L = L, .ins = ins };

		if (ins->cmd != KILN_DF_FROM) {
			if (L->n_stages == 0 && ins->cmd != KILN_DF_ARG)
				return lerr(&c, -EINVAL, "no FROM before this instruction (only ARG may come before the first FROM)");
			if (L->n_stages)
				L->stages[L->n_stages - 1].end = i + 1;
			continue;
		}
		if (L->n_stages == 0)
			L->first_from = i;
		L->stages[L->n_stages].first = i;
		L->stages[L->n_stages].end = i + 1;
		r = parse_from(L, ins, &L->stages[L->n_stages++]);
		if (r < 0)
			return r;
	}
	if (L->n_stages == 0)
		return kiln_error_set(L->err, -EINVAL, "%s: no FROM instruction: nothing to build",
				      L->file);
	for (i = 0; i < L->n_stages; i++)
		L->stages[i].label = L->n_stages == 1 ? xstrdup("")
				     : L->stages[i].name ? xstrdup(L->stages[i].name)
							 : xasprintf("stage-%zu", i);
	return check_stage_names(L);
}

/* ---- ARGs before the first FROM ---- */

static void platform_args(struct kvlist *g, const char *prefix, const char *platform)
{
	_cleanup_(kiln_platform_release) struct kiln_platform p = { 0 };
	char key[32];

	platform_split(platform, &p);
	snprintf(key, sizeof(key), "%sPLATFORM", prefix);
	kvlist_set(g, key, platform);
	snprintf(key, sizeof(key), "%sOS", prefix);
	kvlist_set(g, key, p.os);
	snprintf(key, sizeof(key), "%sARCH", prefix);
	kvlist_set(g, key, p.arch);
	snprintf(key, sizeof(key), "%sVARIANT", prefix);
	kvlist_set(g, key, p.variant);
}

/* Split "K=default" (default NULL when there is no '='). */
static void split_arg(const char *word, char **key, const char **def)
{
	const char *eq = strchr(word, '=');

	*key = eq ? xstrndup(word, (size_t)(eq - word)) : xstrdup(word);
	*def = eq ? eq + 1 : NULL;
}

static int meta_arg(struct lower *L, struct kvlist *g, const struct kiln_df_instruction *ins)
{
	struct ictx c = { .L = L, .ins = ins };
	size_t i;

	if (ins->n_args == 0)
		return lerr(&c, -EINVAL, "requires at least one argument");
	for (i = 0; i < ins->n_args; i++) {
		_cleanup_free_ char *key = NULL, *val = NULL;
		const char *def, *given;

		split_arg(ins->args[i], &key, &def);
		if (!*key)
			return lerr(&c, -EINVAL, "'%s': missing name", ins->args[i]);
		kvlist_set(&L->declared, key, NULL);
		given = kvlist_get(&L->build_args, key);
		if (given) {
			val = xstrdup(given);
		} else if (def) {
			int r = kiln_df_expand_word(def, L->df->escape ? L->df->escape : '\\',
						    kvlist_lookup, g, &val, L->err);
			if (r < 0)
				return lerr_wrap(&c, r);
		}
		if (val)
			kvlist_set(g, key, val);
	}
	return 0;
}

static int compute_globals(struct lower *L, size_t pidx)
{
	struct kvlist *g = &L->globals[pidx];
	size_t i;
	int r;

	platform_args(g, "TARGET", L->o->platforms[pidx]);
	platform_args(g, "BUILD", L->o->build_platform ? L->o->build_platform
						      : L->o->platforms[0]);
	for (i = 0; i < L->first_from; i++) {
		r = meta_arg(L, g, &L->df->ins[i]);
		if (r < 0)
			return r;
	}
	return 0;
}

static void parse_build_args(struct lower *L)
{
	size_t i;

	for (i = 0; i < L->o->n_build_args; i++) {
		const char *a = L->o->build_args[i], *eq = strchr(a, '=');
		_cleanup_free_ char *k = eq ? xstrndup(a, (size_t)(eq - a)) : xstrdup(a);
		const char *v = eq ? eq + 1 : getenv(k);

		if (*k && v)
			kvlist_set(&L->build_args, k, v);
	}
}

/*
 * Declared without an ARG: the proxy args (the classic builder's
 * builtinAllowedBuildArgs, BuildKit's proxyEnvFromBuildArgs; docs
 * "Predefined ARGs") and the automatic platform args.
 */
static bool predefined_arg(const char *name)
{
	static const char *const names[] = {
		"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY",
		"ftp_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy",
		"TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT",
		"BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT",
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(names); i++)
		if (!strcmp(name, names[i]))
			return true;
	return false;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * --build-arg names no ARG declared, sorted, each once, in the classic
 * builder's words (moby builder/dockerfile/buildargs.go,
 * WarnOnUnusedBuildArgs): "One or more build-args [A B] were not consumed".
 */
static void warn_unused_args(struct lower *L)
{
	struct kiln_strbuf msg = KILN_STRBUF_INIT(64u << 10);
	char **names = xcalloc(L->o->n_build_args + 1, sizeof(*names));
	size_t i, n = 0;

	for (i = 0; i < L->o->n_build_args; i++) {
		const char *a = L->o->build_args[i];
		char *k = xstrndup(a, strcspn(a, "="));

		if (!*k || predefined_arg(k) || kvlist_find(&L->declared, k))
			free(k);
		else
			names[n++] = k;
	}
	qsort(names, n, sizeof(*names), cmp_str);
	kiln_strbuf_adds(&msg, "One or more build-args [");
	for (i = 0; i < n; i++)
		if (i == 0 || strcmp(names[i], names[i - 1]))
			kiln_strbuf_addf(&msg, "%s%s", i ? " " : "", names[i]);
	kiln_strbuf_adds(&msg, "] were not consumed");
	if (n && L->o->warn)
		L->o->warn(L->o->warn_ud, kiln_strbuf_str(&msg));
	kiln_strv_free(names, n);
	kiln_strbuf_release(&msg);
}

/* ---- per-instruction helpers ---- */

char *op_id(struct ictx *c, const char *suffix)
{
	return suffix ? xasprintf("%s-%s", c->idbase, suffix) : xstrdup(c->idbase);
}

void stage_set_op(struct stage_state *s, const char *op)
{
	free(s->op);
	s->op = op ? xstrdup(op) : NULL;
}

/* "RUN make" with the keyword upper-cased, as BuildKit prints it. */
static char *display_text(const struct kiln_df_instruction *ins)
{
	const char *o = ins->original ? ins->original : kiln_df_cmd_name(ins->cmd);
	const char *sp;
	char *t;

	while (isspace((unsigned char)*o))
		o++;
	sp = o + strcspn(o, " \t\n");
	t = xasprintf("%s%s", kiln_df_cmd_name(ins->cmd), sp);
	if (ins->cmd == KILN_DF_RUN && ins->n_heredocs > 0 && ins->heredocs[0].content) {
		const char *body = ins->heredocs[0].content, *nl;
		char *u;

		while (isspace((unsigned char)*body))
			body++;
		nl = strchr(body, '\n');
		u = xasprintf("%s (%.*s%s)", t, nl ? (int)(nl - body) : (int)strlen(body), body,
			      nl && nl[1] ? "..." : "");
		free(t);
		t = u;
	}
	return t;
}

const char *ins_name(struct ictx *c)
{
	struct stage_state *s = c->s;
	_cleanup_free_ char *text = NULL;
	int width = 1;
	size_t t;

	if (c->name)
		return c->name;
	text = c->text ? xstrdup(c->text) : display_text(c->ins);
	if (s->cmd_total == 0) {
		c->name = TAKE_PTR(text);
		return c->name;
	}
	for (t = s->cmd_total; t >= 10; t /= 10)
		width++;
	s->cmd_index++;
	c->name = xasprintf("[%s%s%s%s%*zu/%zu] %s%s",
			    c->L->o->n_platforms > 1 ? s->platform : "",
			    c->L->o->n_platforms > 1 ? " " : "",
			    c->L->stages[c->sidx].label,
			    *c->L->stages[c->sidx].label ? " " : "", width, s->cmd_index,
			    s->cmd_total, c->onbuild ? "ONBUILD " : "", text);
	return c->name;
}

int dispatch_ins(struct ictx *c)
{
	switch (c->ins->cmd) {
	case KILN_DF_RUN:
		return lower_run(c);
	case KILN_DF_COPY:
	case KILN_DF_ADD:
		return lower_copy(c);
	case KILN_DF_WORKDIR:
		return lower_workdir(c);
	case KILN_DF_ARG:
		return lower_arg(c);
	case KILN_DF_FROM:
		return lerr(c, -EINVAL, "FROM cannot be used here");
	default:
		return lower_config_ins(c);
	}
}

static int lower_body(struct lower *L, struct ictx *c, const struct stage_def *sd)
{
	size_t i;
	int r = 0;

	for (i = sd->first + 1; r == 0 && i < sd->end; i++) {
		c->ins = L->cur = &L->df->ins[i];
		c->at = NULL;
		c->onbuild = false;
		c->idbase = xasprintf("p%zu-s%zu-i%zu", c->pidx, c->sidx, i - sd->first);
		r = dispatch_ins(c);
		free(c->idbase);
		free(c->name);
		c->idbase = c->name = NULL;
	}
	return r;
}

int lower_stage(struct lower *L, size_t pidx, size_t sidx)
{
	struct stage_state *s = &L->st[pidx * L->n_stages + sidx];
	const struct stage_def *sd = &L->stages[sidx];
	struct ictx c = { .L = L, .pidx = pidx, .sidx = sidx, .s = s, .ins = sd->from };
	const struct kiln_df_instruction *outer = L->cur; /* COPY --from lowers a stage */
	int r;

	if (s->done)
		return 0;
	if (s->busy)
		return lerr(&c, -ELOOP, "stage '%s' depends on itself",
			    sd->name ? sd->name : sd->label);
	s->busy = true;
	L->cur = sd->from;
	c.idbase = xasprintf("p%zu-s%zu-i0", pidx, sidx);
	r = stage_init(&c);
	free(c.idbase);
	free(c.name);
	free(c.text);
	c.idbase = c.name = c.text = NULL;
	if (r == 0 && !s->replaced)
		r = lower_body(L, &c, sd);
	s->busy = false;
	s->done = r == 0;
	L->cur = outer;
	return r;
}

/* ---- the entry point ---- */

static void stage_state_release(struct stage_state *s)
{
	free(s->platform);
	free(s->op);
	free(s->base_op);
	kvlist_release(&s->env);
	kvlist_release(&s->args);
	json_decref(s->image);
	kiln_strv_free(s->layer_ops, s->n_layer_ops);
}

static void lower_release(struct lower *L)
{
	size_t i, np = L->o->n_platforms;

	for (i = 0; L->st && i < np * L->n_stages; i++)
		stage_state_release(&L->st[i]);
	free(L->st);
	for (i = 0; L->globals && i < np; i++)
		kvlist_release(&L->globals[i]);
	free(L->globals);
	for (i = 0; L->stages && i < L->n_stages; i++) {
		free(L->stages[i].name);
		free(L->stages[i].label);
	}
	free(L->stages);
	kvlist_release(&L->build_args);
	kvlist_release(&L->declared);
	json_decref(L->ops);
	json_decref(L->dedup);
	json_decref(L->resolved);
	free(L->context_op);
	free(L->empty_op);
}

void kiln_df_image_release(struct kiln_df_image *img)
{
	if (!img)
		return;
	free(img->platform);
	free(img->output);
	free(img->base_op);
	kiln_strv_free(img->layer_ops, img->n_layer_ops);
	json_decref(img->config);
	memset(img, 0, sizeof(*img));
}

static int find_target(struct lower *L, size_t *out)
{
	_cleanup_free_ char *names = NULL;
	size_t i;

	*out = L->n_stages - 1;
	if (!L->o->target || !*L->o->target)
		return 0;
	for (i = 0; i < L->n_stages; i++)
		if (L->stages[i].name && !strcasecmp(L->stages[i].name, L->o->target)) {
			*out = i;
			return 0;
		}
	names = stage_names(L);
	return kiln_error_set(L->err, -ENOENT, "%s: target stage '%s' not found (stages: %s)",
			      L->file, L->o->target, names);
}

static void make_image(struct lower *L, size_t pidx, size_t target,
		       struct kiln_df_image *img)
{
	const struct stage_state *s = &L->st[pidx * L->n_stages + target];
	size_t i;

	img->platform = xstrdup(L->o->platforms[pidx]);
	img->output = xstrdup(tree_op(L, s));
	img->base_op = s->base_op ? xstrdup(s->base_op) : NULL;
	img->layer_ops = xcalloc(s->n_layer_ops + 1, sizeof(char *));
	for (i = 0; i < s->n_layer_ops; i++)
		img->layer_ops[i] = xstrdup(s->layer_ops[i]);
	img->n_layer_ops = s->n_layer_ops;
	img->config = final_image(L, pidx, s);
}

static void add_output(json_t *outs, const char *id)
{
	size_t i;
	json_t *v;

	json_array_foreach(outs, i, v)
		if (!strcmp(json_string_value(v), id))
			return;
	json_array_append_new(outs, json_string(id));
}

static char *definition_text(struct lower *L, struct kiln_df_image *imgs, size_t n)
{
	json_t *outs = json_array(), *def;
	size_t i, j;
	char *text;

	for (i = 0; i < n; i++) {
		add_output(outs, imgs[i].output);
		/* The base image's record meta names the layers the image reuses. */
		if (imgs[i].base_op)
			add_output(outs, imgs[i].base_op);
		for (j = 0; j < imgs[i].n_layer_ops; j++)
			add_output(outs, imgs[i].layer_ops[j]);
	}
	def = json_pack("{s:i, s:s, s:O, s:s, s:o}", "version", 1, "platform",
			L->o->platforms[0], "ops", L->ops, "output", imgs[0].output,
			"outputs", outs);
	text = json_dumps(def, JSON_COMPACT);
	json_decref(def);
	if (!text)
		abort();
	return text;
}

static int check_platform(const char *p, struct kiln_error **err)
{
	_cleanup_(kiln_platform_release) struct kiln_platform split = { 0 };

	return kiln_platform_parse(p, &split, err);
}

static int check_opts(const struct kiln_df_build_opts *o, struct kiln_error **err)
{
	size_t i;

	if (o->n_platforms == 0)
		return kiln_error_set(err, -EINVAL, "no target platform given");
	for (i = 0; i < o->n_platforms; i++)
		if (check_platform(o->platforms[i], err) < 0)
			return -EINVAL;
	if (o->build_platform && check_platform(o->build_platform, err) < 0)
		return -EINVAL;
	return 0;
}

/* "1", "1.7", "1.7.1", each optionally "-labs" or "-experimental"; "latest". */
static bool standard_tag(const char *t)
{
	unsigned parts = 0;

	if (!strcmp(t, "latest"))
		return true;
	if (*t != '1' || (t[1] && t[1] != '.' && t[1] != '-'))
		return false;
	t++;
	while (*t == '.' && parts < 2) {
		size_t n = strspn(t + 1, "0123456789");

		if (!n)
			return false;
		t += 1 + n;
		parts++;
	}
	return !*t || !strcmp(t, "-labs") || !strcmp(t, "-experimental");
}

/*
 * Is the # syntax= image the standard Dockerfile frontend, which lowering
 * implements? BuildKit forwards every syntax to that image (frontend/
 * dockerfile/builder/build.go, forwardGateway; the ref is the value's
 * first word, parser/directives.go DetectSyntax); kiln has no gateway and
 * accepts only docker/dockerfile (docker.io/ or index.docker.io/ before it,
 * a tag as standard_tag, a sha256 digest after it).
 */
static bool standard_frontend(const char *syntax)
{
	_cleanup_free_ char *ref = xstrndup(syntax, strcspn(syntax, " \t"));
	static const char *const prefixes[] = { "docker.io/", "index.docker.io/" };
	const char *name = ref;
	char *at = strchr(ref, '@');
	size_t i;

	if (at) {
		if (strncmp(at, "@sha256:", 8) || strlen(at + 8) != 64 ||
		    strspn(at + 8, "0123456789abcdef") != 64)
			return false;
		*at = '\0';
	}
	for (i = 0; i < ARRAY_SIZE(prefixes); i++)
		if (!strncmp(name, prefixes[i], strlen(prefixes[i])))
			name += strlen(prefixes[i]);
	if (strncmp(name, "docker/dockerfile", 17))
		return false;
	name += 17;
	if (!*name)
		return true;
	return *name == ':' && standard_tag(name + 1);
}

static int check_syntax(struct lower *L)
{
	if (!L->df->syntax || standard_frontend(L->df->syntax))
		return 0;
	return kiln_error_set(L->err, -ENOTSUP,
			      "kiln runs only the standard Dockerfile frontend; `# syntax=%.200s` (%s:%u) asks for another",
			      L->df->syntax, L->file, L->df->syntax_line);
}

static int lower_all(struct lower *L, struct kiln_df_image *imgs)
{
	size_t p, target;
	int r = check_syntax(L);

	if (r == 0)
		r = split_stages(L);
	if (r < 0)
		return r;
	parse_build_args(L);
	L->globals = xcalloc(L->o->n_platforms, sizeof(*L->globals));
	L->st = xcalloc(L->o->n_platforms * L->n_stages, sizeof(*L->st));
	r = find_target(L, &target);
	for (p = 0; r == 0 && p < L->o->n_platforms; p++) {
		r = compute_globals(L, p);
		if (r == 0)
			r = lower_stage(L, p, target);
		if (r == 0)
			make_image(L, p, target, &imgs[p]);
	}
	if (r == 0)
		warn_unused_args(L);
	return r;
}

int kiln_dockerfile_lower(const struct kiln_dockerfile *df,
			  const struct kiln_df_build_opts *opts, char **definition,
			  struct kiln_df_image **images, size_t *n_images,
			  struct kiln_error **err)
{
	struct lower L = { .df = df, .o = opts, .err = err };
	struct kiln_df_image *imgs;
	size_t i;
	int r;

	*definition = NULL;
	*images = NULL;
	*n_images = 0;
	r = check_opts(opts, err);
	if (r < 0)
		return r;
	L.file = df->filename ? df->filename : opts->dockerfile ? opts->dockerfile : "Dockerfile";
	L.ops = json_array();
	L.dedup = json_object();
	L.resolved = json_object();
	imgs = xcalloc(opts->n_platforms, sizeof(*imgs));
	r = lower_all(&L, imgs);
	if (r == 0) {
		*definition = definition_text(&L, imgs, opts->n_platforms);
		*images = imgs;
		*n_images = opts->n_platforms;
	} else {
		for (i = 0; i < opts->n_platforms; i++)
			kiln_df_image_release(&imgs[i]);
		free(imgs);
	}
	lower_release(&L);
	return r;
}
