/*
 * Dockerfile parser: lines -> instructions, following BuildKit's
 * frontend/dockerfile/parser rules (directives, comments, continuations,
 * flags, per-instruction argument shapes, heredocs). See
 * docs/internals/dockerfile-parser.md.
 */
#include "frontend/dockerfile/dockerfile.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "basic/alloc.h"
#include "basic/strbuf.h"
#include "basic/strv.h"

#define DF_MAX_LINE (1u << 20)

enum { DIR_ESCAPE = 1, DIR_SYNTAX = 2, DIR_CHECK = 4 };

static const char *const cmd_names[] = {
	[KILN_DF_FROM] = "FROM",	   [KILN_DF_RUN] = "RUN",
	[KILN_DF_CMD] = "CMD",		   [KILN_DF_ENTRYPOINT] = "ENTRYPOINT",
	[KILN_DF_SHELL] = "SHELL",	   [KILN_DF_COPY] = "COPY",
	[KILN_DF_ADD] = "ADD",		   [KILN_DF_ENV] = "ENV",
	[KILN_DF_ARG] = "ARG",		   [KILN_DF_LABEL] = "LABEL",
	[KILN_DF_WORKDIR] = "WORKDIR",	   [KILN_DF_USER] = "USER",
	[KILN_DF_EXPOSE] = "EXPOSE",	   [KILN_DF_VOLUME] = "VOLUME",
	[KILN_DF_STOPSIGNAL] = "STOPSIGNAL", [KILN_DF_HEALTHCHECK] = "HEALTHCHECK",
	[KILN_DF_ONBUILD] = "ONBUILD",	   [KILN_DF_MAINTAINER] = "MAINTAINER",
};

const char *kiln_df_cmd_name(enum kiln_df_cmd c)
{
	if ((size_t)c >= ARRAY_SIZE(cmd_names) || !cmd_names[c])
		return "UNKNOWN";
	return cmd_names[c];
}

/* One physical line. */
struct rline {
	const char *s;
	size_t len;     /* without the trailing \r and \n */
	size_t raw_len; /* with them */
	unsigned no;
};

/* Where a piece of a joined (continued) line came from. */
struct seg {
	size_t off;
	unsigned line, col;
};

/* An instruction's text with continuations joined, as Docker joins it. */
struct joined {
	struct kiln_strbuf sb;
	struct seg *segs;
	size_t n_segs, alloc;
};

struct parser {
	const char *file;
	const char *p, *end;
	unsigned line; /* of the last line read */
	char esc;
	bool directives_done;
	unsigned seen;
	struct kiln_dockerfile *df;
	size_t alloc;
	struct kiln_error **err;
};

/* ---- small helpers ---- */

static bool is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static bool is_re_space(char c) /* Go regexp \s */
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\f' || c == '\r';
}

static void push_arg(struct kiln_df_instruction *ins, size_t *alloc, char *a)
{
	ins->args = xgrow(ins->args, alloc, ins->n_args + 2, sizeof(*ins->args));
	ins->args[ins->n_args++] = a;
	ins->args[ins->n_args] = NULL;
}

_printf_(5, 6) static int perr(struct parser *p, int code, struct kiln_df_pos pos,
			       const char *what, const char *fmt, ...)
{
	_cleanup_free_ char *where = xasprintf("%s:%u:%u%s%s", p->file, pos.line, pos.col,
					       what ? ": " : "", what ? what : "");
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = kiln_error_setv(p->err, code, where, fmt, ap);
	va_end(ap);
	return r;
}

static struct kiln_df_pos line_pos(unsigned line, unsigned col)
{
	return (struct kiln_df_pos){ .line = line, .col = col };
}

/* ---- lines ---- */

/* 1 and the next line, 0 at the end, or an error for an overlong line. */
static int next_line(struct parser *p, struct rline *l)
{
	const char *nl;

	if (p->p >= p->end)
		return 0;
	nl = memchr(p->p, '\n', (size_t)(p->end - p->p));
	l->s = p->p;
	l->raw_len = nl ? (size_t)(nl - p->p) + 1 : (size_t)(p->end - p->p);
	l->len = l->raw_len;
	while (l->len && (l->s[l->len - 1] == '\n' || l->s[l->len - 1] == '\r'))
		l->len--;
	p->p += l->raw_len;
	l->no = ++p->line;
	if (l->len > DF_MAX_LINE)
		return perr(p, -E2BIG, line_pos(l->no, 1), NULL, "line longer than %u bytes",
			    DF_MAX_LINE);
	return 1;
}

/*
 * Is the escape character the last non-blank character (and not itself
 * escaped)? Then cut it and what follows it.
 */
static bool trim_continuation(char esc, const char *s, size_t *n)
{
	size_t i = *n;

	while (i && (s[i - 1] == ' ' || s[i - 1] == '\t'))
		i--;
	if (!i || s[i - 1] != esc || (i >= 2 && s[i - 2] == esc))
		return false;
	*n = i - 1;
	return true;
}

static const char *skip_ws(const char *s, size_t *n)
{
	while (*n && is_ws(*s)) {
		s++;
		(*n)--;
	}
	return s;
}

static int joined_add(struct parser *p, struct joined *j, const char *s, size_t n,
		      unsigned line, unsigned col)
{
	j->segs = xgrow(j->segs, &j->alloc, j->n_segs + 1, sizeof(*j->segs));
	j->segs[j->n_segs++] = (struct seg){ .off = j->sb.len, .line = line, .col = col };
	if (kiln_strbuf_add(&j->sb, s, n) < 0)
		return perr(p, -E2BIG, line_pos(line, col), NULL, "instruction longer than %u bytes",
			    KILN_DF_MAX_BYTES);
	return 0;
}

static void joined_release(struct joined *j)
{
	kiln_strbuf_release(&j->sb);
	free(j->segs);
}

static struct kiln_df_pos pos_at(const struct joined *j, size_t off)
{
	size_t lo = 0, hi = j->n_segs;

	if (!j->n_segs)
		return line_pos(0, 0);
	while (hi - lo > 1) { /* last segment starting at or before off */
		size_t mid = lo + (hi - lo) / 2;

		if (j->segs[mid].off <= off)
			lo = mid;
		else
			hi = mid;
	}
	return line_pos(j->segs[lo].line, j->segs[lo].col + (unsigned)(off - j->segs[lo].off));
}

/*
 * Join continuation lines: comment lines and blank lines inside a
 * continuation are skipped; continuation lines keep their leading blanks.
 */
static int join_lines(struct parser *p, const struct rline *first, const char *t, size_t n,
		      struct joined *j)
{
	bool more = trim_continuation(p->esc, t, &n);
	struct rline l;
	int r;

	r = joined_add(p, j, t, n, first->no, (unsigned)(t - first->s) + 1);
	while (r >= 0 && more && (r = next_line(p, &l)) > 0) {
		size_t rest = l.len;
		const char *q = skip_ws(l.s, &rest);

		if (!rest || *q == '#')
			continue;
		n = l.len;
		more = trim_continuation(p->esc, l.s, &n);
		r = joined_add(p, j, l.s, n, l.no, 1);
	}
	return r < 0 ? r : 0;
}

/* ---- parser directives ---- */

static int set_directive(struct parser *p, unsigned no, const char *key, size_t klen,
			 const char *val, size_t vlen)
{
	static const char *const keys[] = { "escape", "syntax", "check" };
	unsigned i;

	for (i = 0; i < ARRAY_SIZE(keys); i++)
		if (strlen(keys[i]) == klen && !strncasecmp(keys[i], key, klen))
			break;
	if (i == ARRAY_SIZE(keys)) {
		p->directives_done = true; /* an ordinary comment */
		return 0;
	}
	if (p->seen & (1u << i))
		return perr(p, -EINVAL, line_pos(no, 1), NULL,
			    "only one %s parser directive can be used", keys[i]);
	p->seen |= 1u << i;
	if (1u << i == DIR_ESCAPE) {
		if (vlen != 1 || (val[0] != '\\' && val[0] != '`'))
			return perr(p, -EINVAL, line_pos(no, 1), NULL,
				    "invalid escape token '%.*s' does not match ` or \\",
				    (int)(vlen > 64 ? 64 : vlen), val);
		p->esc = val[0];
		p->df->escape = val[0];
	} else if (1u << i == DIR_SYNTAX) {
		p->df->syntax = xstrndup(val, vlen);
		p->df->syntax_line = no;
	}
	return 0;
}

/* ^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$ on a line without leading blanks. */
static int directive(struct parser *p, unsigned no, const char *s, size_t n)
{
	size_t i = 1, k, klen;

	if (!n || s[0] != '#')
		goto done;
	while (i < n && is_re_space(s[i]))
		i++;
	k = i;
	if (i >= n || !((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z'))
		goto done;
	while (i < n && (((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'z') ||
			 (s[i] >= '0' && s[i] <= '9')))
		i++;
	klen = i - k;
	while (i < n && is_re_space(s[i]))
		i++;
	if (i >= n || s[i++] != '=')
		goto done;
	while (i < n && is_re_space(s[i]))
		i++;
	while (n > i && is_re_space(s[n - 1]))
		n--;
	if (i >= n)
		goto done;
	return set_directive(p, no, s + k, klen, s + i, n - i);
done:
	p->directives_done = true;
	return 0;
}

/* ---- argument shapes ---- */

static void split_ws(const char *s, size_t n, struct kiln_df_instruction *ins, size_t *alloc)
{
	size_t i = 0;

	while (i < n) {
		size_t start;

		while (i < n && is_ws(s[i]))
			i++;
		start = i;
		while (i < n && !is_ws(s[i]))
			i++;
		if (i > start)
			push_arg(ins, alloc, xstrndup(s + start, i - start));
	}
}

struct wordsplit {
	struct kiln_strbuf w;
	bool blank_ok;
};

static void ws_flush(struct wordsplit *ws, struct kiln_df_instruction *ins, size_t *alloc)
{
	if (ws->blank_ok || ws->w.len)
		push_arg(ins, alloc, kiln_strbuf_detach(&ws->w, NULL));
	kiln_strbuf_reset(&ws->w);
	ws->blank_ok = false;
}

/*
 * Docker's parseWords: split on blanks outside quotes, keeping quotes and
 * escape characters for expansion to process later.
 */
static void parse_words(const char *s, size_t n, char esc, struct kiln_df_instruction *ins,
			size_t *alloc)
{
	struct wordsplit ws = { .w = KILN_STRBUF_INIT(KILN_DF_MAX_BYTES) };
	bool in_word = false;
	char quote = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		char c = s[i];

		if (!in_word && !quote && is_ws(c))
			continue;
		if (quote) {
			if (c == quote)
				quote = 0;
			else if (c == esc && quote != '\'' && i + 1 < n)
				kiln_strbuf_addch(&ws.w, s[i++]);
			else if (c == esc && quote != '\'')
				continue; /* trailing escape: dropped */
			kiln_strbuf_addch(&ws.w, s[i]);
			continue;
		}
		in_word = true;
		if (is_ws(c)) {
			ws_flush(&ws, ins, alloc);
			in_word = false;
			continue;
		}
		if (c == '\'' || c == '"') {
			quote = c;
			ws.blank_ok = true;
		} else if (c == esc) {
			if (i + 1 == n)
				continue;
			kiln_strbuf_addch(&ws.w, s[i++]);
		}
		kiln_strbuf_addch(&ws.w, s[i]);
	}
	if (in_word || quote)
		ws_flush(&ws, ins, alloc);
	kiln_strbuf_release(&ws.w);
}

/* 1: a JSON array of strings (args set); 0: not JSON; <0: array of non-strings. */
static int parse_json(const char *s, size_t n, struct kiln_df_instruction *ins, size_t *alloc)
{
	json_error_t je;
	json_t *a, *v;
	size_t i;

	s = skip_ws(s, &n);
	if (!n || *s != '[')
		return 0;
	a = json_loadb(s, n, 0, &je);
	if (!a)
		return 0;
	if (!json_is_array(a)) {
		json_decref(a);
		return 0;
	}
	json_array_foreach(a, i, v) {
		if (!json_is_string(v)) {
			json_decref(a);
			return -EINVAL;
		}
	}
	json_array_foreach(a, i, v)
		push_arg(ins, alloc, xstrndup(json_string_value(v), json_string_length(v)));
	json_decref(a);
	ins->json_form = true;
	return 1;
}

static int maybe_json(struct parser *p, struct kiln_df_instruction *ins, const char *s, size_t n,
		      bool to_list, size_t *alloc)
{
	int r = parse_json(s, n, ins, alloc);

	if (r < 0)
		return perr(p, r, ins->pos, kiln_df_cmd_name(ins->cmd),
			    "when using JSON array syntax, arrays must be comprised of strings only");
	if (r > 0)
		return 0;
	if (to_list)
		split_ws(s, n, ins, alloc);
	else if (n)
		push_arg(ins, alloc, xstrndup(s, n));
	return 0;
}

/* ENV/LABEL "k=v k2=v2" or the legacy "k v...". */
static int name_val(struct parser *p, struct kiln_df_instruction *ins, const char *s, size_t n)
{
	struct kiln_df_instruction w = { 0 };
	const char *what = kiln_df_cmd_name(ins->cmd);
	size_t walloc = 0, alloc = 0, i, k;
	bool legacy;
	int r = 0;

	parse_words(s, n, p->esc, &w, &walloc);
	legacy = w.n_args && !strchr(w.args[0], '=');
	if (legacy) {
		/* legacy "ENV key value...": the value is the rest of the line */
		for (k = 0; k < n && !is_ws(s[k]); k++)
			;
		for (i = k; i < n && is_ws(s[i]); i++)
			;
		if (k == n) {
			r = perr(p, -EINVAL, ins->pos, what, "%s must have two arguments", what);
		} else {
			push_arg(ins, &alloc, xstrndup(s, k));
			push_arg(ins, &alloc, xstrndup(s + i, n - i));
		}
	}
	for (i = 0; r == 0 && !legacy && i < w.n_args; i++) {
		char *eq = strchr(w.args[i], '=');

		if (!eq) {
			r = perr(p, -EINVAL, ins->pos, what,
				 "Syntax error - can't find = in \"%.200s\". Must be of the form: name=value",
				 w.args[i]);
			break;
		}
		push_arg(ins, &alloc, xstrndup(w.args[i], (size_t)(eq - w.args[i])));
		push_arg(ins, &alloc, xstrdup(eq + 1));
	}
	for (i = 0; r == 0 && i < ins->n_args; i += 2)
		if (!ins->args[i][0])
			r = perr(p, -EINVAL, ins->pos, what, "%s names can not be blank", what);
	kiln_strv_free(w.args, w.n_args);
	return r;
}

static int healthcheck(struct parser *p, struct kiln_df_instruction *ins, const char *s,
		       size_t n, size_t *alloc)
{
	size_t k = 0, i;
	char *typ;

	if (!n)
		return 0;
	while (k < n && !is_ws(s[k]))
		k++;
	typ = xstrndup(s, k);
	for (i = 0; typ[i]; i++)
		typ[i] = (char)((typ[i] >= 'a' && typ[i] <= 'z') ? typ[i] - 32 : typ[i]);
	push_arg(ins, alloc, typ);
	s += k;
	n -= k;
	s = skip_ws(s, &n);
	if (!strcmp(typ, "NONE")) {
		if (n)
			return perr(p, -EINVAL, ins->pos, "HEALTHCHECK",
				    "HEALTHCHECK NONE takes no arguments");
		return 0;
	}
	if (strcmp(typ, "CMD"))
		return perr(p, -EINVAL, ins->pos, "HEALTHCHECK",
			    "unknown type \"%.64s\" in HEALTHCHECK (try CMD)", typ);
	if (maybe_json(p, ins, s, n, false, alloc) < 0)
		return -EINVAL;
	if (ins->n_args < 2)
		return perr(p, -EINVAL, ins->pos, "HEALTHCHECK", "missing command after HEALTHCHECK CMD");
	return 0;
}

/* ---- flags ---- */

static void add_flag(struct kiln_df_instruction *ins, size_t *alloc, char *word,
		     struct kiln_df_pos pos)
{
	char *eq = strchr(word + 2, '=');
	struct kiln_df_flag *f;

	ins->flags = xgrow(ins->flags, alloc, ins->n_flags + 1, sizeof(*ins->flags));
	f = &ins->flags[ins->n_flags++];
	f->pos = pos;
	f->value = eq ? xstrdup(eq + 1) : NULL;
	f->name = xstrndup(word + 2, eq ? (size_t)(eq - word - 2) : strlen(word + 2));
}

/*
 * One flag word starting at *i: quotes removed, backslash escapes the next
 * character (Docker's extractBuilderFlags).
 */
static void flag_word(const char *s, size_t end, size_t *i, struct kiln_strbuf *w)
{
	char quote = 0;

	for (; *i < end && (quote || !is_ws(s[*i])); (*i)++) {
		char c = s[*i];

		if (quote && c == quote) {
			quote = 0;
			continue;
		}
		if (!quote && (c == '\'' || c == '"')) {
			quote = c;
			continue;
		}
		if (c == '\\') {
			if (*i + 1 == end)
				continue;
			c = s[++(*i)];
		}
		kiln_strbuf_addch(w, c);
	}
}

/* Flags (--name[=value]) at the start of s[*i..end); leaves *i at the arguments. */
static void extract_flags(const struct joined *j, size_t *i, size_t end,
			  struct kiln_df_instruction *ins)
{
	_cleanup_strbuf_ struct kiln_strbuf w = KILN_STRBUF_INIT(KILN_DF_MAX_BYTES);
	const char *s = j->sb.buf;
	size_t alloc = 0;

	for (;;) {
		size_t start;

		while (*i < end && is_ws(s[*i]))
			(*i)++;
		if (*i + 1 >= end || s[*i] != '-' || s[*i + 1] != '-')
			return;
		start = *i;
		kiln_strbuf_reset(&w);
		flag_word(s, end, i, &w);
		if (!strcmp(kiln_strbuf_str(&w), "--"))
			return;
		add_flag(ins, &alloc, w.buf, pos_at(j, start));
	}
}

/* ---- instructions ---- */

static void ins_release(struct kiln_df_instruction *ins)
{
	size_t i;

	if (!ins)
		return;
	free(ins->original);
	for (i = 0; i < ins->n_flags; i++) {
		free(ins->flags[i].name);
		free(ins->flags[i].value);
	}
	free(ins->flags);
	kiln_strv_free(ins->args, ins->n_args);
	for (i = 0; i < ins->n_heredocs; i++) {
		free(ins->heredocs[i].name);
		free(ins->heredocs[i].content);
	}
	free(ins->heredocs);
	ins_release(ins->onbuild);
	free(ins->onbuild);
	memset(ins, 0, sizeof(*ins));
}

static int lookup_cmd(const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(cmd_names); i++)
		if (strlen(cmd_names[i]) == n && !strncasecmp(cmd_names[i], s, n))
			return (int)i;
	return -1;
}

static int check_args(struct parser *p, const struct kiln_df_instruction *ins)
{
	const char *what = kiln_df_cmd_name(ins->cmd);
	size_t n = ins->n_args;

	switch (ins->cmd) {
	case KILN_DF_CMD:
	case KILN_DF_ENTRYPOINT:
		return 0;
	case KILN_DF_FROM:
		if (n == 1 || (n == 3 && !strcasecmp(ins->args[1], "AS")))
			return 0;
		return perr(p, -EINVAL, ins->pos, what, "FROM requires either one or three arguments");
	case KILN_DF_COPY:
	case KILN_DF_ADD:
		if (n >= 2)
			return 0;
		return perr(p, -EINVAL, ins->pos, what,
			    "%s requires at least two arguments, but only %zu provided", what, n);
	case KILN_DF_WORKDIR:
	case KILN_DF_USER:
	case KILN_DF_STOPSIGNAL:
	case KILN_DF_MAINTAINER:
		if (n == 1)
			return 0;
		return perr(p, -EINVAL, ins->pos, what, "%s requires exactly one argument", what);
	case KILN_DF_SHELL:
		if (!ins->json_form && n)
			return perr(p, -EINVAL, ins->pos, what,
				    "SHELL requires the arguments to be in JSON form");
		/* fallthrough */
	default:
		if (n >= 1)
			return 0;
		return perr(p, -EINVAL, ins->pos, what, "%s requires at least one argument", what);
	}
}

static int parse_ins(struct parser *p, const struct joined *j, size_t off,
		     struct kiln_df_instruction *ins, bool nested);

static int onbuild(struct parser *p, const struct joined *j, size_t off, size_t n,
		   struct kiln_df_instruction *ins, size_t *alloc)
{
	struct kiln_df_instruction *sub;

	if (!n)
		return 0;
	push_arg(ins, alloc, xstrndup(j->sb.buf + off, n));
	sub = ins->onbuild = xcalloc(1, sizeof(*sub));
	return parse_ins(p, j, off, sub, true);
}

/* Checked before the trigger's arguments are parsed: no recursion. */
static int check_trigger(struct parser *p, const struct kiln_df_instruction *sub)
{
	if (sub->cmd == KILN_DF_ONBUILD)
		return perr(p, -EINVAL, sub->pos, "ONBUILD",
			    "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed");
	if (sub->cmd == KILN_DF_FROM || sub->cmd == KILN_DF_MAINTAINER)
		return perr(p, -EINVAL, sub->pos, "ONBUILD", "%s isn't allowed as an ONBUILD trigger",
			    kiln_df_cmd_name(sub->cmd));
	return 0;
}

/* The arguments s[off..off+n) per the instruction's shape (dockerfile.h). */
static int parse_args(struct parser *p, const struct joined *j, size_t off, size_t n,
		      struct kiln_df_instruction *ins)
{
	const char *s = j->sb.buf + off;
	size_t alloc = 0;

	switch (ins->cmd) {
	case KILN_DF_RUN:
	case KILN_DF_CMD:
	case KILN_DF_ENTRYPOINT:
	case KILN_DF_SHELL:
		return maybe_json(p, ins, s, n, false, &alloc);
	case KILN_DF_COPY:
	case KILN_DF_ADD:
	case KILN_DF_VOLUME:
		return maybe_json(p, ins, s, n, true, &alloc);
	case KILN_DF_FROM:
	case KILN_DF_EXPOSE:
		split_ws(s, n, ins, &alloc);
		return 0;
	case KILN_DF_ARG:
		parse_words(s, n, p->esc, ins, &alloc);
		return 0;
	case KILN_DF_ENV:
	case KILN_DF_LABEL:
		return name_val(p, ins, s, n);
	case KILN_DF_HEALTHCHECK:
		return healthcheck(p, ins, s, n, &alloc);
	case KILN_DF_ONBUILD:
		return onbuild(p, j, off, n, ins, &alloc);
	default: /* WORKDIR USER STOPSIGNAL MAINTAINER: the rest of the line */
		if (n)
			push_arg(ins, &alloc, xstrndup(s, n));
		return 0;
	}
}

/* Parse the instruction starting at j[off..]: keyword, flags, arguments. */
static int parse_ins(struct parser *p, const struct joined *j, size_t off,
		     struct kiln_df_instruction *ins, bool nested)
{
	const char *s = j->sb.buf;
	size_t end = j->sb.len, k, i;
	int c, r;

	while (end > off && is_ws(s[end - 1]))
		end--;
	while (off < end && is_ws(s[off]))
		off++;
	for (k = off; k < end && !is_ws(s[k]); k++)
		;
	ins->pos = pos_at(j, off);
	c = lookup_cmd(s + off, k - off);
	if (c < 0)
		return perr(p, -EINVAL, ins->pos, NULL, "unknown instruction: %.*s",
			    (int)(k - off > 64 ? 64 : k - off), s + off);
	ins->cmd = (enum kiln_df_cmd)c;
	if (nested && (r = check_trigger(p, ins)) < 0)
		return r;
	ins->original = xstrndup(s + off, end - off);
	i = k;
	extract_flags(j, &i, end, ins);
	while (i < end && is_ws(s[i]))
		i++;
	if ((r = parse_args(p, j, i, end - i, ins)) < 0)
		return r;
	return check_args(p, ins);
}

/* ---- heredocs ---- */

/* Quote removal for a heredoc delimiter (escape is always '\'). */
static char *unquote_delim(const char *s, size_t n, bool *quoted)
{
	struct kiln_strbuf b = KILN_STRBUF_INIT(KILN_DF_MAX_BYTES);
	char quote = 0;
	size_t i;

	*quoted = false;
	for (i = 0; i < n; i++) {
		char c = s[i];

		if (quote == '\'' && c != '\'') {
			kiln_strbuf_addch(&b, c);
		} else if (c == quote) {
			quote = 0;
		} else if (!quote && (c == '\'' || c == '"')) {
			quote = c;
			*quoted = true;
		} else if (c == '\\' && i + 1 < n && (!quote || strchr("\"$\\", s[i + 1]))) {
			kiln_strbuf_addch(&b, s[++i]);
		} else if (c != '\\' || i + 1 < n || quote) {
			kiln_strbuf_addch(&b, c);
		}
	}
	return kiln_strbuf_detach(&b, NULL);
}

/* A word "[n]<<[-]DELIM": add the heredoc it opens. */
static void heredoc_word(const char *w, size_t n, struct kiln_df_instruction *t, size_t *alloc)
{
	struct kiln_df_heredoc h = { 0 };
	size_t k = 0;
	bool quoted;

	while (k < n && w[k] >= '0' && w[k] <= '9')
		k++;
	if (n - k < 2 || w[k] != '<' || w[k + 1] != '<')
		return;
	k += 2;
	h.chomp = k < n && w[k] == '-';
	k += h.chomp;
	if (k == n || memchr(w + k, '<', n - k))
		return;
	h.name = unquote_delim(w + k, n - k, &quoted);
	if (!*h.name) {
		free(h.name);
		return;
	}
	h.expand = !quoted;
	t->heredocs = xgrow(t->heredocs, alloc, t->n_heredocs + 1, sizeof(*t->heredocs));
	t->heredocs[t->n_heredocs++] = h;
}

/* End of the shell word at i (quotes kept); SIZE_MAX on an unterminated quote. */
static size_t shell_word_end(const char *s, size_t n, size_t i)
{
	while (i < n && !is_ws(s[i])) {
		char c = s[i];

		if (c == '\\') {
			i += 2;
		} else if (c == '\'') {
			const char *q = memchr(s + i + 1, '\'', n - i - 1);

			if (!q)
				return SIZE_MAX;
			i = (size_t)(q - s) + 1;
		} else if (c == '"') {
			for (i++; i < n && s[i] != '"'; i++)
				i += s[i] == '\\';
			if (i >= n)
				return SIZE_MAX;
			i++;
		} else {
			i++;
		}
	}
	return i < n ? i : n;
}

/* Heredoc openers on the line, in order (none if its quotes do not balance). */
static void find_heredocs(const char *s, size_t n, struct kiln_df_instruction *t)
{
	size_t i = 0, e = 0, alloc = 0, nh;

	while (i < n) {
		while (i < n && is_ws(s[i]))
			i++;
		if (i >= n)
			break;
		e = shell_word_end(s, n, i);
		if (e == SIZE_MAX)
			break;
		heredoc_word(s + i, e - i, t, &alloc);
		i = e;
	}
	if (e != SIZE_MAX)
		return;
	for (nh = 0; nh < t->n_heredocs; nh++) {
		free(t->heredocs[nh].name);
		free(t->heredocs[nh].content);
	}
	free(t->heredocs);
	t->heredocs = NULL;
	t->n_heredocs = 0;
}

static int read_heredoc(struct parser *p, const struct kiln_df_instruction *t,
			struct kiln_df_heredoc *h)
{
	_cleanup_strbuf_ struct kiln_strbuf b = KILN_STRBUF_INIT(KILN_DF_MAX_BYTES);
	size_t dlen = strlen(h->name);
	struct rline l;
	int r;

	while ((r = next_line(p, &l)) > 0) {
		size_t tabs = 0;

		while (h->chomp && tabs < l.len && l.s[tabs] == '\t')
			tabs++;
		if (l.len - tabs == dlen && !memcmp(l.s + tabs, h->name, dlen)) {
			h->content = kiln_strbuf_detach(&b, NULL);
			return 0;
		}
		if (kiln_strbuf_add(&b, l.s + tabs, l.raw_len - tabs) < 0)
			return perr(p, -E2BIG, t->pos, kiln_df_cmd_name(t->cmd),
				    "heredoc <<%.64s longer than %u bytes", h->name, KILN_DF_MAX_BYTES);
	}
	if (r < 0)
		return r;
	return perr(p, -EINVAL, t->pos, kiln_df_cmd_name(t->cmd), "unterminated heredoc <<%s%.64s",
		    h->chomp ? "-" : "", h->name);
}

static int heredocs(struct parser *p, const struct joined *j, struct kiln_df_instruction *ins)
{
	struct kiln_df_instruction *t = ins->onbuild ? ins->onbuild : ins;
	size_t i;
	int r;

	if ((t->cmd != KILN_DF_RUN && t->cmd != KILN_DF_COPY && t->cmd != KILN_DF_ADD) ||
	    t->json_form)
		return 0;
	find_heredocs(j->sb.buf, j->sb.len, t);
	for (i = 0; i < t->n_heredocs; i++)
		if ((r = read_heredoc(p, t, &t->heredocs[i])) < 0)
			return r;
	return 0;
}

/* ---- the file ---- */

static void df_append(struct parser *p, struct kiln_df_instruction *ins)
{
	struct kiln_dockerfile *df = p->df;

	df->ins = xgrow(df->ins, &p->alloc, df->n + 1, sizeof(*df->ins));
	df->ins[df->n++] = *ins;
	memset(ins, 0, sizeof(*ins));
}

static int instruction(struct parser *p, const struct rline *first, const char *t, size_t n)
{
	struct joined j = { .sb = KILN_STRBUF_INIT(KILN_DF_MAX_BYTES) };
	struct kiln_df_instruction ins = { 0 };
	size_t rest;
	int r;

	r = join_lines(p, first, t, n, &j);
	rest = j.sb.len;
	if (r < 0 || !*skip_ws(kiln_strbuf_str(&j.sb), &rest))
		goto out;
	r = parse_ins(p, &j, 0, &ins, false);
	if (r >= 0)
		r = heredocs(p, &j, &ins);
	ins.end_line = p->line;
	if (ins.onbuild)
		ins.onbuild->end_line = p->line;
	if (r >= 0)
		df_append(p, &ins);
out:
	ins_release(&ins);
	joined_release(&j);
	return r;
}

static int parse_lines(struct parser *p)
{
	struct rline l;
	int r;

	while ((r = next_line(p, &l)) > 0) {
		size_t n = l.len;
		const char *t;

		if (l.no == 1 && n >= 3 && !memcmp(l.s, "\xef\xbb\xbf", 3)) {
			l.s += 3;
			l.len -= 3;
			n -= 3;
		}
		t = skip_ws(l.s, &n);
		if (!p->directives_done && (r = directive(p, l.no, t, n)) < 0)
			return r;
		if (!n || *t == '#')
			continue;
		if ((r = instruction(p, &l, t, n)) < 0)
			return r;
	}
	return r;
}

static int check_input(struct parser *p, const char *text, size_t len)
{
	const char *nul, *q;
	unsigned line = 1;

	if (len > KILN_DF_MAX_BYTES)
		return kiln_error_set(p->err, -E2BIG, "%s: larger than %u bytes", p->file,
				      KILN_DF_MAX_BYTES);
	nul = len ? memchr(text, '\0', len) : NULL;
	if (!nul)
		return 0;
	for (q = text; (q = memchr(q, '\n', (size_t)(nul - q))); q++)
		line++;
	return kiln_error_set(p->err, -EINVAL, "%s:%u: NUL byte in Dockerfile", p->file, line);
}

int kiln_dockerfile_parse(const char *text, size_t len, const char *filename,
			  struct kiln_dockerfile **out, struct kiln_error **err)
{
	struct parser p = {
		.file = filename ? filename : "Dockerfile",
		.p = text,
		.end = text + len,
		.esc = '\\',
		.err = err,
	};
	int r;

	*out = NULL;
	if (!text && len)
		return kiln_error_set(err, -EINVAL, "%s: no text", p.file);
	if ((r = check_input(&p, text, len)) < 0)
		return r;
	p.df = xcalloc(1, sizeof(*p.df));
	p.df->filename = xstrdup(p.file);
	p.df->escape = '\\';
	r = parse_lines(&p);
	if (r >= 0 && !p.df->n)
		r = kiln_error_set(err, -EINVAL, "%s: file with no instructions", p.file);
	if (r < 0) {
		kiln_dockerfile_free(p.df);
		return r;
	}
	*out = p.df;
	return 0;
}

void kiln_dockerfile_free(struct kiln_dockerfile *df)
{
	size_t i;

	if (!df)
		return;
	for (i = 0; i < df->n; i++)
		ins_release(&df->ins[i]);
	free(df->ins);
	free(df->filename);
	free(df->syntax);
	free(df);
}
