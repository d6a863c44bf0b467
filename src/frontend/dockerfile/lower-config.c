/*
 * The instructions that only change the image config (ENV, ARG, LABEL,
 * USER, EXPOSE, VOLUME, CMD, ENTRYPOINT, SHELL, STOPSIGNAL, HEALTHCHECK,
 * ONBUILD, MAINTAINER), the history entries BuildKit records for them,
 * and the final OCI image config of each platform.
 */
#include "frontend/dockerfile/lower-internal.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "basic/alloc.h"
#include "basic/parse-util.h"
#include "basic/strbuf.h"
#include "basic/strv.h"

#define HIST_LIMIT (KILN_DF_MAX_BYTES * 2)

json_t *image_config(json_t *image)
{
	json_t *cfg = json_object_get(image, "config");

	if (!json_is_object(cfg)) {
		cfg = json_object();
		json_object_set_new(image, "config", cfg);
	}
	return cfg;
}

static json_t *config_obj(struct ictx *c, const char *key)
{
	json_t *cfg = image_config(c->s->image), *o = json_object_get(cfg, key);

	if (!json_is_object(o)) {
		o = json_object();
		json_object_set_new(cfg, key, o);
	}
	return o;
}

static char *rfc3339(int64_t t)
{
	time_t tt = (time_t)t;
	struct tm tm;
	char buf[64];

	if (!gmtime_r(&tt, &tm) || !strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm))
		return xstrdup("1970-01-01T00:00:00Z");
	return xstrdup(buf);
}

void commit(struct ictx *c, const char *created_by, const char *layer_op)
{
	struct stage_state *s = c->s;
	json_t *h = json_object_get(s->image, "history");
	json_t *e = json_pack("{s:s, s:s}", "created_by", created_by, "comment",
			      KILN_DF_HISTORY_COMMENT);

	if (!json_is_array(h)) {
		h = json_array();
		json_object_set_new(s->image, "history", h);
	}
	if (c->L->o->source_date_epoch >= 0) {
		_cleanup_free_ char *t = rfc3339(c->L->o->source_date_epoch);
		json_object_set_new(e, "created", json_string(t));
	}
	if (!layer_op) {
		json_object_set_new(e, "empty_layer", json_true());
	} else {
		s->layer_ops = xrealloc(s->layer_ops, (s->n_layer_ops + 1) * sizeof(char *));
		s->layer_ops[s->n_layer_ops++] = xstrdup(layer_op);
	}
	json_array_append_new(h, e);
}

/* ---- Go-style formatting BuildKit's history uses ---- */

static void go_quote(struct kiln_strbuf *sb, const char *s)
{
	kiln_strbuf_addch(sb, '"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			kiln_strbuf_addf(sb, "\\%c", ch);
		else if (ch == '\n')
			kiln_strbuf_adds(sb, "\\n");
		else if (ch == '\t')
			kiln_strbuf_adds(sb, "\\t");
		else if (ch == '\r')
			kiln_strbuf_adds(sb, "\\r");
		else if (ch < 0x20 || ch == 0x7f)
			kiln_strbuf_addf(sb, "\\x%02x", ch);
		else
			kiln_strbuf_addch(sb, (char)ch);
	}
	kiln_strbuf_addch(sb, '"');
}

/* Go's %q of a []string: ["a" "b"]. */
char *go_quote_list(const json_t *arr)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(HIST_LIMIT);
	json_t *v;
	size_t i;

	kiln_strbuf_addch(&sb, '[');
	json_array_foreach(arr, i, v) {
		if (i)
			kiln_strbuf_addch(&sb, ' ');
		go_quote(&sb, json_string_value(v) ? json_string_value(v) : "");
	}
	kiln_strbuf_addch(&sb, ']');
	return kiln_strbuf_detach(&sb, NULL);
}

/* Go's %v of a []string: [a b]. */
char *go_plain_list(char *const *v, size_t n)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(HIST_LIMIT);
	size_t i;

	kiln_strbuf_addch(&sb, '[');
	for (i = 0; i < n; i++)
		kiln_strbuf_addf(&sb, "%s%s", i ? " " : "", v[i]);
	kiln_strbuf_addch(&sb, ']');
	return kiln_strbuf_detach(&sb, NULL);
}

static char *json_plain_list(const json_t *arr)
{
	size_t i, n = json_array_size(arr);
	_cleanup_free_ char **v = xcalloc(n + 1, sizeof(char *));

	for (i = 0; i < n; i++)
		v[i] = (char *)json_string_value(json_array_get(arr, i));
	return go_plain_list(v, n);
}

/* Go's time.Duration String(): "1m30s", "500ms", "0s". */
static void go_duration(struct kiln_strbuf *sb, int64_t ns)
{
	int64_t s = ns / 1000000000, frac = ns % 1000000000;
	char f[16] = "";
	int k;

	if (ns == 0) {
		kiln_strbuf_adds(sb, "0s");
		return;
	}
	if (ns < 1000000000) {
		if (ns % 1000000 == 0)
			kiln_strbuf_addf(sb, "%" PRId64 "ms", ns / 1000000);
		else if (ns % 1000 == 0)
			kiln_strbuf_addf(sb, "%" PRId64 "\xc2\xb5s", ns / 1000);
		else
			kiln_strbuf_addf(sb, "%" PRId64 "ns", ns);
		return;
	}
	if (frac) {
		snprintf(f, sizeof(f), ".%09" PRId64, frac);
		for (k = (int)strlen(f) - 1; f[k] == '0'; k--)
			f[k] = '\0';
	}
	if (s >= 3600)
		kiln_strbuf_addf(sb, "%" PRId64 "h", s / 3600);
	if (s >= 60)
		kiln_strbuf_addf(sb, "%" PRId64 "m", (s % 3600) / 60);
	kiln_strbuf_addf(sb, "%" PRId64 "%ss", s % 60, f);
}

/* Go's time.ParseDuration for non-negative values: "30s", "1m30s", "1.5h". */
int parse_go_duration(const char *s, int64_t *ns)
{
	static const struct {
		const char *unit;
		double mul;
	} units[] = { { "ns", 1 },	  { "us", 1e3 },  { "\xc2\xb5s", 1e3 }, { "ms", 1e6 },
		      { "s", 1e9 },	  { "m", 60e9 },  { "h", 3600e9 } };
	double total = 0;

	if (!strcmp(s, "0")) {
		*ns = 0;
		return 0;
	}
	if (!*s)
		return -EINVAL;
	while (*s) {
		char *end;
		double v;
		size_t i, best = SIZE_MAX, blen = 0;

		if (!isdigit((unsigned char)*s) && *s != '.')
			return -EINVAL;
		v = strtod(s, &end);
		if (end == s)
			return -EINVAL;
		for (i = 0; i < ARRAY_SIZE(units); i++) {
			size_t l = strlen(units[i].unit);
			if (!strncmp(end, units[i].unit, l) && l > blen) {
				best = i;
				blen = l;
			}
		}
		if (best == SIZE_MAX)
			return -EINVAL;
		total += v * units[best].mul;
		s = end + blen;
	}
	if (total > 9.2e18)
		return -ERANGE;
	*ns = (int64_t)(total + 0.5);
	return 0;
}

/* ---- ENV, LABEL ---- */

struct pairs {
	char **k, **v;
	size_t n;
};

static void pairs_release(struct pairs *p)
{
	kiln_strv_free(p->k, p->n);
	kiln_strv_free(p->v, p->n);
}

/* Expand every key and value first: "ENV A=1 B=$A" sees the old A. */
static int expand_pairs(struct ictx *c, struct pairs *p)
{
	size_t i, n = c->ins->n_args / 2;
	int r = 0;

	if (c->ins->n_args == 0 || c->ins->n_args % 2)
		return lerr(c, -EINVAL, "expected KEY=VALUE pairs");
	p->k = xcalloc(n, sizeof(char *));
	p->v = xcalloc(n, sizeof(char *));
	for (i = 0; r == 0 && i < n; i++, p->n++) {
		r = expand(c, c->ins->args[2 * i], &p->k[i]);
		if (r == 0)
			r = expand(c, c->ins->args[2 * i + 1], &p->v[i]);
		if (r == 0 && !*p->k[i])
			r = lerr(c, -EINVAL, "empty key");
	}
	return r;
}

static void config_env_set(json_t *cfg, const char *k, const char *v)
{
	json_t *env = json_object_get(cfg, "Env"), *e;
	size_t i, kl = strlen(k);

	if (!json_is_array(env)) {
		env = json_array();
		json_object_set_new(cfg, "Env", env);
	}
	json_array_foreach(env, i, e) {
		const char *s = json_string_value(e);
		if (s && !strncmp(s, k, kl) && (s[kl] == '=' || !s[kl])) {
			json_array_set_new(env, i, json_sprintf("%s=%s", k, v));
			return;
		}
	}
	json_array_append_new(env, json_sprintf("%s=%s", k, v));
}

static int lower_env_label(struct ictx *c)
{
	bool env = c->ins->cmd == KILN_DF_ENV;
	struct kiln_strbuf hist = KILN_STRBUF_INIT(HIST_LIMIT);
	struct pairs p = { 0 };
	size_t i;
	int r = check_flags(c, NULL);

	if (r == 0)
		r = expand_pairs(c, &p);
	kiln_strbuf_adds(&hist, env ? "ENV" : "LABEL");
	for (i = 0; r == 0 && i < p.n; i++) {
		kiln_strbuf_addf(&hist, " %s=%s", p.k[i], p.v[i]);
		if (env) {
			config_env_set(image_config(c->s->image), p.k[i], p.v[i]);
			kvlist_set(&c->s->env, p.k[i], p.v[i]);
		} else {
			json_object_set_new(config_obj(c, "Labels"), p.k[i], json_string(p.v[i]));
		}
	}
	if (r == 0)
		commit(c, kiln_strbuf_str(&hist), NULL);
	kiln_strbuf_release(&hist);
	pairs_release(&p);
	return r;
}

/* ---- ARG inside a stage ---- */

static int arg_value(struct ictx *c, const char *key, const char *def, char **val)
{
	const char *given = kvlist_get(&c->L->build_args, key);
	const char *global = kvlist_get(&c->L->globals[c->pidx], key);

	*val = NULL;
	if (given)
		*val = xstrdup(given);
	else if (def)
		return expand(c, def, val);
	else if (global)
		*val = xstrdup(global);
	return 0;
}

int lower_arg(struct ictx *c)
{
	struct kiln_strbuf hist = KILN_STRBUF_INIT(HIST_LIMIT);
	size_t i;
	int r = check_flags(c, NULL);

	if (r == 0 && c->ins->n_args == 0)
		r = lerr(c, -EINVAL, "requires at least one argument");
	kiln_strbuf_adds(&hist, "ARG");
	for (i = 0; r == 0 && i < c->ins->n_args; i++) {
		const char *w = c->ins->args[i], *eq = strchr(w, '=');
		_cleanup_free_ char *key = eq ? xstrndup(w, (size_t)(eq - w)) : xstrdup(w);
		_cleanup_free_ char *val = NULL;

		if (!*key) {
			r = lerr(c, -EINVAL, "'%s': missing name", w);
			break;
		}
		kvlist_set(&c->L->declared, key, NULL);
		r = arg_value(c, key, eq ? eq + 1 : NULL, &val);
		if (r < 0)
			break;
		if (val)
			kvlist_set(&c->s->env, key, val);
		kvlist_set(&c->s->args, key, val);
		kiln_strbuf_addf(&hist, " %s%s%s", key, val ? "=" : "", val ? val : "");
	}
	if (r == 0)
		commit(c, kiln_strbuf_str(&hist), NULL);
	kiln_strbuf_release(&hist);
	return r;
}

/* ---- USER, STOPSIGNAL, MAINTAINER ---- */

static int one_word(struct ictx *c, bool expand_it, char **out)
{
	int r = check_flags(c, NULL);

	if (r == 0 && (c->ins->n_args != 1 || !*c->ins->args[0]))
		r = lerr(c, -EINVAL, "requires exactly one argument");
	if (r < 0)
		return r;
	if (!expand_it) {
		*out = xstrdup(c->ins->args[0]);
		return 0;
	}
	r = expand(c, c->ins->args[0], out);
	if (r == 0 && !**out) {
		free(*out);
		*out = NULL;
		r = lerr(c, -EINVAL, "'%s' expands to an empty value", c->ins->args[0]);
	}
	return r;
}

static bool valid_signal(const char *s)
{
	static const char *const names[] = {
		"ABRT", "ALRM", "BUS", "CHLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO",
		"IOT", "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT",
		"STOP", "SYS", "TERM", "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1",
		"USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN", "RTMAX",
	};
	uint32_t n;
	size_t i;

	if (kiln_parse_u32(s, &n) == 0)
		return n >= 1 && n <= 64;
	if (!strncasecmp(s, "SIG", 3))
		s += 3;
	for (i = 0; i < ARRAY_SIZE(names); i++) {
		size_t l = strlen(names[i]);
		if (strncasecmp(s, names[i], l))
			continue;
		if (!s[l])
			return true;
		if (!strncmp(names[i], "RT", 2) && (s[l] == '+' || s[l] == '-') &&
		    kiln_parse_u32(s + l + 1, &n) == 0 && n <= 30)
			return true;
	}
	return false;
}

static int lower_simple(struct ictx *c)
{
	_cleanup_free_ char *v = NULL, *hist = NULL;
	const char *kw = kiln_df_cmd_name(c->ins->cmd);
	int r = one_word(c, c->ins->cmd != KILN_DF_MAINTAINER, &v);

	if (r < 0)
		return r;
	if (c->ins->cmd == KILN_DF_USER) {
		json_object_set_new(image_config(c->s->image), "User", json_string(v));
	} else if (c->ins->cmd == KILN_DF_STOPSIGNAL) {
		if (!valid_signal(v))
			return lerr(c, -EINVAL, "'%s' is not a signal name or number", v);
		json_object_set_new(image_config(c->s->image), "StopSignal", json_string(v));
	} else {
		json_object_set_new(c->s->image, "author", json_string(v));
	}
	hist = xasprintf("%s %s", kw, v);
	commit(c, hist, NULL);
	return 0;
}

/* ---- EXPOSE ---- */

static int port_range(const char *s, uint32_t *lo, uint32_t *hi)
{
	_cleanup_free_ char *a = xstrdup(s);
	char *dash = strchr(a, '-');

	if (dash)
		*dash++ = '\0';
	if (kiln_parse_u32(a, lo) < 0 || *lo > 65535)
		return -EINVAL;
	*hi = *lo;
	if (dash && (kiln_parse_u32(dash, hi) < 0 || *hi > 65535 || *hi < *lo))
		return -EINVAL;
	return 0;
}

/* "[ip:][hostport:]port[-end][/proto]" -> "port/proto" entries. */
static int expose_one(struct ictx *c, const char *spec, json_t *ports, json_t *list)
{
	_cleanup_free_ char *s = xstrdup(spec);
	char *colon = strrchr(s, ':'), *port = colon ? colon + 1 : s;
	char *slash = strchr(port, '/');
	const char *proto = "tcp";
	uint32_t lo, hi, p;
	char *q;

	if (slash) {
		*slash++ = '\0';
		for (q = slash; *q; q++)
			*q = (char)tolower((unsigned char)*q);
		proto = *slash ? slash : "tcp";
	}
	if (strcmp(proto, "tcp") && strcmp(proto, "udp") && strcmp(proto, "sctp"))
		return lerr(c, -EINVAL, "'%s': invalid protocol '%s' (tcp, udp, sctp)", spec, proto);
	if (port_range(port, &lo, &hi) < 0)
		return lerr(c, -EINVAL, "'%s' is not a port or port range", spec);
	for (p = lo; p <= hi; p++) {
		_cleanup_free_ char *k = xasprintf("%u/%s", p, proto);
		json_object_set_new(ports, k, json_object());
		json_array_append_new(list, json_string(k));
	}
	return 0;
}

static int lower_expose(struct ictx *c)
{
	json_t *list = json_array(), *ports;
	_cleanup_free_ char *plain = NULL, *hist = NULL;
	size_t i, j;
	int r = check_flags(c, NULL);

	if (r == 0 && c->ins->n_args == 0)
		r = lerr(c, -EINVAL, "requires at least one port");
	ports = config_obj(c, "ExposedPorts");
	for (i = 0; r == 0 && i < c->ins->n_args; i++) {
		char **w = NULL;
		size_t n = 0;

		r = kiln_df_expand_words(c->ins->args[i], c->L->df->escape ? c->L->df->escape : '\\',
					 kvlist_lookup, &c->s->env, &w, &n, c->L->err);
		if (r < 0)
			r = lerr_wrap(c, r);
		for (j = 0; r == 0 && j < n; j++)
			r = expose_one(c, w[j], ports, list);
		kiln_strv_free(w, n);
	}
	if (r == 0) {
		plain = json_plain_list(list);
		hist = xasprintf("EXPOSE %s", plain);
		commit(c, hist, NULL);
	}
	json_decref(list);
	return r;
}

/* ---- VOLUME ---- */

static int volume_words(struct ictx *c, const char *arg, json_t *out)
{
	char **w = NULL;
	size_t n = 0, j;
	int r;

	if (c->ins->json_form) {
		char *v = NULL;
		r = expand(c, arg, &v);
		if (r == 0)
			json_array_append_new(out, json_string(v));
		free(v);
		return r;
	}
	r = kiln_df_expand_words(arg, c->L->df->escape ? c->L->df->escape : '\\', kvlist_lookup,
				 &c->s->env, &w, &n, c->L->err);
	if (r < 0)
		return lerr_wrap(c, r);
	for (j = 0; j < n; j++)
		json_array_append_new(out, json_string(w[j]));
	kiln_strv_free(w, n);
	return 0;
}

static int lower_volume(struct ictx *c)
{
	json_t *list = json_array(), *v;
	_cleanup_free_ char *plain = NULL, *hist = NULL;
	size_t i;
	int r = check_flags(c, NULL);

	for (i = 0; r == 0 && i < c->ins->n_args; i++)
		r = volume_words(c, c->ins->args[i], list);
	if (r == 0 && json_array_size(list) == 0)
		r = lerr(c, -EINVAL, "requires at least one path");
	json_array_foreach(list, i, v)
		if (r == 0 && !*json_string_value(v))
			r = lerr(c, -EINVAL, "a volume path cannot be empty");
	json_array_foreach(list, i, v)
		if (r == 0)
			json_object_set_new(config_obj(c, "Volumes"), json_string_value(v),
					    json_object());
	if (r == 0) {
		plain = json_plain_list(list);
		hist = xasprintf("VOLUME %s", plain);
		commit(c, hist, NULL);
	}
	json_decref(list);
	return r;
}

/* ---- CMD, ENTRYPOINT, SHELL ---- */

static json_t *command_args(struct ictx *c, size_t first)
{
	const struct kiln_df_instruction *ins = c->ins;
	json_t *a;
	size_t i;

	if (!ins->json_form)
		return shell_args(c->s->image, ins->n_args > first ? ins->args[first] : "");
	a = json_array();
	for (i = first; i < ins->n_args; i++)
		json_array_append_new(a, json_string(ins->args[i]));
	return a;
}

static void config_set_list(json_t *cfg, const char *key, json_t *list)
{
	if (json_array_size(list))
		json_object_set(cfg, key, list);
	else
		json_object_del(cfg, key);
}

static int lower_cmd_entry(struct ictx *c)
{
	bool is_cmd = c->ins->cmd == KILN_DF_CMD;
	json_t *cfg = image_config(c->s->image), *args;
	_cleanup_free_ char *q = NULL, *hist = NULL;
	int r = check_flags(c, NULL);

	if (r < 0)
		return r;
	args = command_args(c, 0);
	config_set_list(cfg, is_cmd ? "Cmd" : "Entrypoint", args);
	if (is_cmd)
		c->s->cmd_set = true;
	else if (!c->s->cmd_set)
		json_object_del(cfg, "Cmd");
	q = go_quote_list(args);
	hist = xasprintf("%s %s", is_cmd ? "CMD" : "ENTRYPOINT", q);
	commit(c, hist, NULL);
	json_decref(args);
	return 0;
}

static int lower_shell(struct ictx *c)
{
	_cleanup_free_ char *plain = NULL, *hist = NULL;
	json_t *args;
	int r = check_flags(c, NULL);

	if (r == 0 && !c->ins->json_form)
		r = lerr(c, -EINVAL, "requires the JSON form: SHELL [\"executable\", \"parameters\"]");
	if (r == 0 && c->ins->n_args == 0)
		r = lerr(c, -EINVAL, "requires at least one argument");
	if (r < 0)
		return r;
	args = command_args(c, 0);
	json_object_set_new(image_config(c->s->image), "Shell", args);
	plain = go_plain_list(c->ins->args, c->ins->n_args);
	hist = xasprintf("SHELL %s", plain);
	commit(c, hist, NULL);
	return 0;
}

/* ---- HEALTHCHECK ---- */

static const char *const hc_flags[] = { "interval", "timeout", "start-period",
					"start-interval", "retries", NULL };
static const char *const hc_keys[] = { "Interval", "Timeout", "StartPeriod",
				       "StartInterval" };

static int hc_durations(struct ictx *c, json_t *hc, int64_t *d)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(hc_keys); i++) {
		const char *v = flag_value(c->ins, hc_flags[i]);

		d[i] = 0;
		if (!v)
			continue;
		if (parse_go_duration(v, &d[i]) < 0)
			return lerr(c, -EINVAL, "--%s=%s: not a duration (like 30s or 1m30s)",
				    hc_flags[i], v);
		if (d[i] != 0 && d[i] < 1000000)
			return lerr(c, -EINVAL, "--%s=%s: cannot be less than 1ms", hc_flags[i], v);
		if (d[i])
			json_object_set_new(hc, hc_keys[i], json_integer(d[i]));
	}
	return 0;
}

static int hc_retries(struct ictx *c, json_t *hc, uint32_t *n)
{
	const char *v = flag_value(c->ins, "retries");

	*n = 0;
	if (!v)
		return 0;
	if (kiln_parse_u32(v, n) < 0 || *n > INT32_MAX)
		return lerr(c, -EINVAL, "--retries=%s: not a non-negative number", v);
	if (*n)
		json_object_set_new(hc, "Retries", json_integer(*n));
	return 0;
}

static char *hc_history(json_t *test, const int64_t *d, uint32_t retries)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(HIST_LIMIT);
	_cleanup_free_ char *t = json_plain_list(test);
	size_t i;

	kiln_strbuf_addf(&sb, "HEALTHCHECK {Test:%s", t);
	for (i = 0; i < ARRAY_SIZE(hc_keys); i++) {
		kiln_strbuf_addf(&sb, " %s:", hc_keys[i]);
		go_duration(&sb, d[i]);
	}
	kiln_strbuf_addf(&sb, " Retries:%u}", retries);
	return kiln_strbuf_detach(&sb, NULL);
}

static int lower_healthcheck(struct ictx *c)
{
	const struct kiln_df_instruction *ins = c->ins;
	int64_t d[ARRAY_SIZE(hc_keys)] = { 0 };
	_cleanup_free_ char *hist = NULL;
	json_t *hc = json_object(), *test;
	uint32_t retries = 0;
	bool none = ins->n_args >= 1 && !strcasecmp(ins->args[0], "NONE");
	int r = check_flags(c, none ? NULL : hc_flags);

	if (r == 0 && (ins->n_args == 0 || (!none && strcasecmp(ins->args[0], "CMD"))))
		r = lerr(c, -EINVAL, "expected HEALTHCHECK NONE or HEALTHCHECK [OPTIONS] CMD command");
	if (r == 0 && none && ins->n_args != 1)
		r = lerr(c, -EINVAL, "HEALTHCHECK NONE takes no other arguments");
	if (r == 0 && !none && ins->n_args < 2)
		r = lerr(c, -EINVAL, "HEALTHCHECK CMD needs a command");
	if (r == 0 && !none)
		r = hc_durations(c, hc, d);
	if (r == 0 && !none)
		r = hc_retries(c, hc, &retries);
	if (r < 0) {
		json_decref(hc);
		return r;
	}
	if (none) {
		test = json_pack("[s]", "NONE");
	} else if (ins->json_form) {
		test = command_args(c, 1);
		json_array_insert_new(test, 0, json_string("CMD"));
	} else {
		test = json_pack("[s, s]", "CMD-SHELL", ins->args[1]);
	}
	json_object_set(hc, "Test", test);
	json_object_set_new(image_config(c->s->image), "Healthcheck", hc);
	hist = hc_history(test, d, retries);
	json_decref(test);
	commit(c, hist, NULL);
	return 0;
}

/* ---- ONBUILD ---- */

static char *onbuild_text(const struct kiln_df_instruction *ins)
{
	const char *o = ins->original ? ins->original : "";

	if (ins->onbuild && ins->onbuild->original)
		return xstrdup(ins->onbuild->original);
	while (isspace((unsigned char)*o))
		o++;
	if (!strncasecmp(o, "ONBUILD", 7))
		o += 7;
	while (isspace((unsigned char)*o))
		o++;
	return xstrdup(o);
}

static int lower_onbuild(struct ictx *c)
{
	const struct kiln_df_instruction *t = c->ins->onbuild;
	_cleanup_free_ char *text = onbuild_text(c->ins);
	json_t *cfg = image_config(c->s->image), *ob;
	int r = check_flags(c, NULL);

	if (r < 0)
		return r;
	if (t && (t->cmd == KILN_DF_ONBUILD || t->cmd == KILN_DF_FROM ||
		  t->cmd == KILN_DF_MAINTAINER))
		return lerr(c, -EINVAL, "%s is not allowed as an ONBUILD trigger",
			    kiln_df_cmd_name(t->cmd));
	if (!*text)
		return lerr(c, -EINVAL, "requires an instruction");
	ob = json_object_get(cfg, "OnBuild");
	if (!json_is_array(ob)) {
		ob = json_array();
		json_object_set_new(cfg, "OnBuild", ob);
	}
	json_array_append_new(ob, json_string(text));
	return 0;
}

int lower_config_ins(struct ictx *c)
{
	switch (c->ins->cmd) {
	case KILN_DF_ENV:
	case KILN_DF_LABEL:
		return lower_env_label(c);
	case KILN_DF_USER:
	case KILN_DF_STOPSIGNAL:
	case KILN_DF_MAINTAINER:
		return lower_simple(c);
	case KILN_DF_EXPOSE:
		return lower_expose(c);
	case KILN_DF_VOLUME:
		return lower_volume(c);
	case KILN_DF_CMD:
	case KILN_DF_ENTRYPOINT:
		return lower_cmd_entry(c);
	case KILN_DF_SHELL:
		return lower_shell(c);
	case KILN_DF_HEALTHCHECK:
		return lower_healthcheck(c);
	case KILN_DF_ONBUILD:
		return lower_onbuild(c);
	default:
		return lerr(c, -EINVAL, "unsupported instruction");
	}
}

/* ---- the image config ---- */

json_t *final_image(struct lower *L, size_t pidx, const struct stage_state *s)
{
	_cleanup_(kiln_platform_release) struct kiln_platform p = { 0 };
	json_t *img = json_object(), *author = json_object_get(s->image, "author");

	platform_split(L->o->platforms[pidx], &p);
	json_object_set_new(img, "architecture", json_string(p.arch));
	json_object_set_new(img, "os", json_string(p.os));
	if (*p.variant)
		json_object_set_new(img, "variant", json_string(p.variant));
	if (json_is_string(author))
		json_object_set(img, "author", author);
	if (L->o->source_date_epoch >= 0) {
		_cleanup_free_ char *t = rfc3339(L->o->source_date_epoch);
		json_object_set_new(img, "created", json_string(t));
	}
	json_object_set_new(img, "config", json_deep_copy(image_config(s->image)));
	json_object_set_new(img, "rootfs", json_pack("{s:s, s:[]}", "type", "layers", "diff_ids"));
	json_object_set_new(img, "history", json_deep_copy(json_object_get(s->image, "history")));
	return img;
}
