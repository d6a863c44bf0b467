/*
 * Docker's shell-word expansion (BuildKit's frontend/dockerfile/shell lexer):
 * $VAR and ${VAR} with the -, +, ?, #, %, / modifiers, quote removal,
 * escapes with the Dockerfile's escape character, and word splitting on
 * unquoted whitespace. See docs/internals/dockerfile-parser.md.
 */
#include "frontend/dockerfile/dockerfile.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/strbuf.h"
#include "basic/strv.h"

/* One expanded word may not grow past this, nor nest ${ deeper. */
#define EXPAND_MAX_BYTES (16u << 20)
#define EXPAND_MAX_DEPTH 64

/* Words collected for kiln_df_expand_words (ProcessWords). */
struct words {
	struct kiln_strbuf cur;
	char **v;
	size_t n, alloc;
};

struct lexer {
	const char *s;
	size_t pos, len;
	char esc;
	kiln_df_lookup_fn lookup;
	void *ud;
	unsigned depth;
	char *msg; /* why lexing failed */
};

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static bool at_end(const struct lexer *lx)
{
	return lx->pos >= lx->len;
}

static char peek(const struct lexer *lx)
{
	return at_end(lx) ? '\0' : lx->s[lx->pos];
}

_printf_(2, 3) static int lex_fail(struct lexer *lx, const char *fmt, ...)
{
	va_list ap;

	free(lx->msg);
	va_start(ap, fmt);
	lx->msg = xvasprintf(fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static int too_long(struct lexer *lx)
{
	lex_fail(lx, "expansion longer than %u bytes", EXPAND_MAX_BYTES);
	return -E2BIG;
}

static int out_add(struct lexer *lx, struct kiln_strbuf *out, const char *s, size_t n)
{
	return kiln_strbuf_add(out, s, n) < 0 ? too_long(lx) : 0;
}

static int out_addch(struct lexer *lx, struct kiln_strbuf *out, char c)
{
	return out_add(lx, out, &c, 1);
}

/* ---- word splitting ---- */

static void words_flush(struct words *w)
{
	if (!w || !w->cur.len)
		return;
	w->v = xgrow(w->v, &w->alloc, w->n + 2, sizeof(*w->v));
	w->v[w->n++] = kiln_strbuf_detach(&w->cur, NULL);
	w->v[w->n] = NULL;
}

/* Unquoted text: whitespace separates words. */
static int words_add_split(struct lexer *lx, struct words *w, const char *s, size_t n)
{
	size_t i;

	for (i = 0; w && i < n; i++) {
		if (is_space(s[i]))
			words_flush(w);
		else if (kiln_strbuf_addch(&w->cur, s[i]) < 0)
			return too_long(lx);
	}
	return 0;
}

/* Quoted or escaped text: part of the current word whatever it holds. */
static int words_add_raw(struct lexer *lx, struct words *w, const char *s, size_t n)
{
	if (w && kiln_strbuf_add(&w->cur, s, n) < 0)
		return too_long(lx);
	return 0;
}

static void words_release(struct words *w)
{
	kiln_strv_free(w->v, w->n);
	kiln_strbuf_release(&w->cur);
}

/* ---- shell patterns for ${VAR#p} ${VAR%p} ${VAR/p/r} ---- */

enum { PAT_ANY = -1, PAT_STAR = -2 };

struct pattern {
	int *tok; /* byte value, PAT_ANY or PAT_STAR */
	size_t n;
};

static int pattern_compile(struct lexer *lx, const char *p, size_t len, struct pattern *pat)
{
	size_t i;

	pat->tok = xmalloc((len + 1) * sizeof(*pat->tok));
	pat->n = 0;
	for (i = 0; i < len; i++) {
		char c = p[i];

		if (c == '*' || c == '?') {
			pat->tok[pat->n++] = c == '*' ? PAT_STAR : PAT_ANY;
			continue;
		}
		if (c == '\\') {
			/* \} and \/ only protect the ${} syntax: drop the backslash */
			if (i + 1 < len && (p[i + 1] == '}' || p[i + 1] == '/'))
				continue;
			if (i + 1 >= len || !strchr("*?\\", p[i + 1])) {
				free(pat->tok);
				return lex_fail(lx, "invalid pattern (%.*s) in substitution", (int)len, p);
			}
			c = p[++i];
		}
		pat->tok[pat->n++] = (unsigned char)c;
	}
	return 0;
}

/* Length of the UTF-8 character at s (1 for a stray byte). */
static size_t rune_len(const char *s, size_t n)
{
	size_t i = 1;

	while (i < n && ((unsigned char)s[i] & 0xc0) == 0x80 && i < 4)
		i++;
	return (unsigned char)s[0] >= 0xc0 ? i : 1;
}

/* Does the whole of s[0..n) match? Iterative, with star backtracking. */
static bool pattern_match(const struct pattern *pat, const char *s, size_t n)
{
	size_t t = 0, i = 0, star_t = SIZE_MAX, star_i = 0;

	while (i < n) {
		if (t < pat->n && pat->tok[t] == PAT_STAR) {
			star_t = t++;
			star_i = i;
		} else if (t < pat->n && pat->tok[t] == PAT_ANY) {
			t++;
			i += rune_len(s + i, n - i);
		} else if (t < pat->n && pat->tok[t] == (unsigned char)s[i]) {
			t++;
			i++;
		} else if (star_t != SIZE_MAX) {
			t = star_t + 1;
			i = ++star_i;
		} else {
			return false;
		}
	}
	while (t < pat->n && pat->tok[t] == PAT_STAR)
		t++;
	return t == pat->n;
}

/* ${VAR#p} ${VAR##p}: cut the shortest (greedy: longest) matching prefix. */
static size_t cut_prefix(const struct pattern *pat, const char *v, size_t n, bool greedy)
{
	size_t k;

	for (k = 0; k <= n; k++) {
		size_t len = greedy ? n - k : k;

		if (pattern_match(pat, v, len))
			return len;
	}
	return 0;
}

/* ${VAR%p} ${VAR%%p}: length left after cutting the matching suffix. */
static size_t cut_suffix(const struct pattern *pat, const char *v, size_t n, bool greedy)
{
	size_t k;

	for (k = 0; k <= n; k++) {
		size_t start = greedy ? k : n - k;

		if (pattern_match(pat, v + start, n - start))
			return start;
	}
	return n;
}

/* Longest match starting at s, as an end offset; SIZE_MAX if none. */
static size_t match_at(const struct pattern *pat, const char *v, size_t n, size_t s)
{
	size_t e;

	for (e = n + 1; e-- > s;)
		if (pattern_match(pat, v + s, e - s))
			return e;
	return SIZE_MAX;
}

/* ${VAR/p/r} and ${VAR//p/r}, like Go's regexp replacement with greedy stars. */
static int replace(struct lexer *lx, const struct pattern *pat, const char *v, const char *repl,
		   bool all, struct kiln_strbuf *out)
{
	size_t n = strlen(v), pos = 0, last_end = SIZE_MAX, e;
	bool done = false;
	int r;

	while (pos <= n) {
		e = done ? SIZE_MAX : match_at(pat, v, n, pos);
		if (e != SIZE_MAX && !(e == pos && pos == last_end)) {
			if ((r = out_add(lx, out, repl, strlen(repl))) < 0)
				return r;
			last_end = e;
			done = !all;
			if (e > pos) {
				pos = e;
				continue;
			}
		}
		if (pos < n) {
			size_t k = rune_len(v + pos, n - pos);

			if ((r = out_add(lx, out, v + pos, k)) < 0)
				return r;
			pos += k;
		} else {
			pos++;
		}
	}
	return 0;
}

/* ---- the lexer ---- */

static int lex_until(struct lexer *lx, char stop, bool raw_esc, struct kiln_strbuf *out,
		     struct words *w);

static const char *get_var(struct lexer *lx, const char *name)
{
	return lx->lookup ? lx->lookup(lx->ud, name) : NULL;
}

static bool is_special_param(char c)
{
	return c && strchr("@*#?-$!0", c);
}

static bool is_name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '_';
}

/* A name: digits ($1), one special parameter ($$, $?...), or [A-Za-z0-9_]*. */
static char *lex_name(struct lexer *lx)
{
	size_t start = lx->pos;

	if (peek(lx) >= '0' && peek(lx) <= '9') {
		while (peek(lx) >= '0' && peek(lx) <= '9')
			lx->pos++;
	} else if (is_special_param(peek(lx))) {
		lx->pos++;
	} else {
		while (!at_end(lx) && is_name_char(peek(lx)))
			lx->pos++;
	}
	return xstrndup(lx->s + start, lx->pos - start);
}

static int lex_single(struct lexer *lx, struct kiln_strbuf *out)
{
	const char *end;
	size_t start = ++lx->pos;

	end = memchr(lx->s + start, '\'', lx->len - start);
	if (!end) {
		lx->pos = lx->len;
		return lex_fail(lx, "unexpected end of statement while looking for matching single-quote");
	}
	lx->pos = (size_t)(end - lx->s) + 1;
	return out_add(lx, out, lx->s + start, (size_t)(end - lx->s) - start);
}

static int lex_dollar(struct lexer *lx, struct kiln_strbuf *out);

/* Inside "...": $ expands; the escape character escapes " $ and itself. */
static int lex_double(struct lexer *lx, bool raw_esc, struct kiln_strbuf *out)
{
	int r;

	lx->pos++;
	for (;;) {
		char c = peek(lx);

		if (at_end(lx))
			return lex_fail(lx, "unexpected end of statement while looking for matching double-quote");
		if (c == '"') {
			lx->pos++;
			return 0;
		}
		if (c == '$') {
			if ((r = lex_dollar(lx, out)) < 0)
				return r;
			continue;
		}
		lx->pos++;
		if (c == lx->esc) {
			if (raw_esc && (r = out_addch(lx, out, c)) < 0)
				return r;
			if (at_end(lx))
				continue;
			if (peek(lx) == '"' || peek(lx) == '$' || peek(lx) == lx->esc)
				c = lx->s[lx->pos++];
		}
		if ((r = out_addch(lx, out, c)) < 0)
			return r;
	}
}

/* The word after a ${VAR<op> up to the closing brace, expanded. */
static int lex_modifier_word(struct lexer *lx, char stop, bool raw, struct kiln_strbuf *word)
{
	int r;

	if (++lx->depth > EXPAND_MAX_DEPTH)
		return lex_fail(lx, "substitutions nested deeper than %d", EXPAND_MAX_DEPTH);
	r = lex_until(lx, stop, raw, word, NULL);
	lx->depth--;
	if (r == -EINVAL && at_end(lx)) {
		if (stop == '/')
			return lex_fail(lx, "syntax error: missing '/' in ${}");
		return lex_fail(lx, "syntax error: missing '}'");
	}
	return r;
}

static int apply_pattern(struct lexer *lx, char op, const char *value, const char *word,
			 struct kiln_strbuf *out)
{
	struct pattern pat;
	bool greedy = word[0] == op;
	size_t n = strlen(value), keep_from = 0, keep_len = n;
	int r;

	if (greedy)
		word++;
	if ((r = pattern_compile(lx, word, strlen(word), &pat)) < 0)
		return r;
	if (op == '#')
		keep_from = cut_prefix(&pat, value, n, greedy);
	else
		keep_len = cut_suffix(&pat, value, n, greedy);
	free(pat.tok);
	return out_add(lx, out, value + keep_from, keep_len - keep_from);
}

static int apply_required(struct lexer *lx, const char *name, const char *value, bool colon,
			  const char *word, struct kiln_strbuf *out)
{
	if (!value)
		return lex_fail(lx, "%s: %s", name, *word ? word : "is not allowed to be unset");
	if (colon && !*value)
		return lex_fail(lx, "%s: %s", name, *word ? word : "is not allowed to be empty");
	return out_add(lx, out, value, strlen(value));
}

/* ${NAME<op>word} for op in - + ? # % (after an optional ':'). */
static int lex_modifier(struct lexer *lx, const char *name, struct kiln_strbuf *out)
{
	_cleanup_strbuf_ struct kiln_strbuf word = KILN_STRBUF_INIT(EXPAND_MAX_BYTES);
	bool colon = false, unset;
	const char *value;
	char op = lx->s[lx->pos++];
	int r;

	if (op == ':') {
		if (at_end(lx))
			return lex_fail(lx, "syntax error: missing '}'");
		colon = true;
		op = lx->s[lx->pos++];
	}
	if ((r = lex_modifier_word(lx, '}', op == '#' || op == '%', &word)) < 0)
		return r;
	value = get_var(lx, name);
	unset = !value || (colon && !*value);
	switch (op) {
	case '-':
		value = unset ? kiln_strbuf_str(&word) : value;
		return out_add(lx, out, value, strlen(value));
	case '+':
		value = unset ? "" : kiln_strbuf_str(&word);
		return out_add(lx, out, value, strlen(value));
	case '?':
		return apply_required(lx, name, value, colon, kiln_strbuf_str(&word), out);
	case '#':
	case '%':
		return apply_pattern(lx, op, value ? value : "", kiln_strbuf_str(&word), out);
	default:
		return lex_fail(lx, "unsupported modifier (%s%c) in substitution", colon ? ":" : "",
				op);
	}
}

/* ${NAME/pattern/replacement} and ${NAME//pattern/replacement}. */
static int lex_replace(struct lexer *lx, const char *name, struct kiln_strbuf *out)
{
	_cleanup_strbuf_ struct kiln_strbuf pat_s = KILN_STRBUF_INIT(EXPAND_MAX_BYTES);
	_cleanup_strbuf_ struct kiln_strbuf repl = KILN_STRBUF_INIT(EXPAND_MAX_BYTES);
	struct pattern pat;
	const char *value;
	bool all;
	int r;

	lx->pos++;
	all = peek(lx) == '/';
	if (all)
		lx->pos++;
	if ((r = lex_modifier_word(lx, '/', true, &pat_s)) < 0)
		return r;
	if ((r = lex_modifier_word(lx, '}', true, &repl)) < 0)
		return r;
	value = get_var(lx, name);
	if ((r = pattern_compile(lx, pat_s.buf ? pat_s.buf : "", pat_s.len, &pat)) < 0)
		return r;
	r = replace(lx, &pat, value ? value : "", kiln_strbuf_str(&repl), all, out);
	free(pat.tok);
	return r;
}

static int lex_braced(struct lexer *lx, struct kiln_strbuf *out)
{
	_cleanup_free_ char *name = NULL;
	const char *value;

	lx->pos++; /* '{' */
	if (at_end(lx))
		return lex_fail(lx, "syntax error: missing '}'");
	if (strchr("{}:", peek(lx)))
		return lex_fail(lx, "syntax error: bad substitution");
	name = lex_name(lx);
	if (at_end(lx))
		return lex_fail(lx, "syntax error: missing '}'");
	switch (peek(lx)) {
	case '}':
		lx->pos++;
		value = get_var(lx, name);
		return value ? out_add(lx, out, value, strlen(value)) : 0;
	case ':':
	case '+':
	case '-':
	case '?':
	case '#':
	case '%':
		return lex_modifier(lx, name, out);
	case '/':
		return lex_replace(lx, name, out);
	default:
		return lex_fail(lx, "unsupported modifier (%c) in substitution", peek(lx));
	}
}

static int lex_dollar(struct lexer *lx, struct kiln_strbuf *out)
{
	_cleanup_free_ char *name = NULL;
	const char *value;

	lx->pos++; /* '$' */
	if (peek(lx) == '{')
		return lex_braced(lx, out);
	name = lex_name(lx);
	if (!*name)
		return out_addch(lx, out, '$');
	value = get_var(lx, name);
	return value ? out_add(lx, out, value, strlen(value)) : 0;
}

/* $, ' or " at the current position. */
static int lex_special(struct lexer *lx, bool raw_esc, struct kiln_strbuf *out, struct words *w)
{
	_cleanup_strbuf_ struct kiln_strbuf tmp = KILN_STRBUF_INIT(EXPAND_MAX_BYTES);
	char c = peek(lx);
	int r;

	if (c == '$')
		r = lex_dollar(lx, &tmp);
	else if (c == '\'')
		r = lex_single(lx, &tmp);
	else
		r = lex_double(lx, raw_esc, &tmp);
	if (r < 0)
		return r;
	if ((r = out_add(lx, out, kiln_strbuf_str(&tmp), tmp.len)) < 0)
		return r;
	if (c == '$')
		return words_add_split(lx, w, kiln_strbuf_str(&tmp), tmp.len);
	return words_add_raw(lx, w, kiln_strbuf_str(&tmp), tmp.len);
}

/* A plain character, or the escape character and the one it escapes. */
static int lex_plain(struct lexer *lx, bool raw_esc, struct kiln_strbuf *out, struct words *w)
{
	char c = lx->s[lx->pos++];
	int r;

	if (c != lx->esc) {
		if ((r = out_addch(lx, out, c)) < 0)
			return r;
		return words_add_split(lx, w, &c, 1);
	}
	if (raw_esc) {
		if ((r = out_addch(lx, out, c)) < 0 || (r = words_add_raw(lx, w, &c, 1)) < 0)
			return r;
	}
	if (at_end(lx))
		return 0; /* a trailing escape character is dropped */
	c = lx->s[lx->pos++];
	if ((r = out_addch(lx, out, c)) < 0)
		return r;
	return words_add_raw(lx, w, &c, 1);
}

/* Process up to stop (consumed) or, when stop is '\0', the end. */
static int lex_until(struct lexer *lx, char stop, bool raw_esc, struct kiln_strbuf *out,
		     struct words *w)
{
	int r;

	while (!at_end(lx)) {
		char c = peek(lx);

		if (stop && c == stop) {
			lx->pos++;
			return 0;
		}
		if (c == '$' || c == '\'' || c == '"')
			r = lex_special(lx, raw_esc, out, w);
		else
			r = lex_plain(lx, raw_esc, out, w);
		if (r < 0)
			return r;
	}
	if (stop)
		return lex_fail(lx, "unexpected end of statement while looking for matching %c",
				stop);
	return 0;
}

static int expand(const char *text, char escape, kiln_df_lookup_fn lookup, void *ud,
		  struct kiln_strbuf *out, struct words *w, struct kiln_error **err)
{
	struct lexer lx = {
		.s = text ? text : "",
		.len = text ? strlen(text) : 0,
		.esc = escape,
		.lookup = lookup,
		.ud = ud,
	};
	int r = lex_until(&lx, '\0', false, out, w);

	if (r < 0) {
		kiln_error_set(err, r, "failed to process \"%.200s%s\": %s", lx.s,
			       lx.len > 200 ? "..." : "", lx.msg ? lx.msg : "error");
		free(lx.msg);
		return r;
	}
	words_flush(w);
	return 0;
}

int kiln_df_expand_word(const char *word, char escape, kiln_df_lookup_fn lookup, void *ud,
			char **out, struct kiln_error **err)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(EXPAND_MAX_BYTES);
	int r;

	*out = NULL;
	if ((r = expand(word, escape, lookup, ud, &sb, NULL, err)) < 0)
		return r;
	*out = kiln_strbuf_detach(&sb, NULL);
	return 0;
}

int kiln_df_expand_words(const char *text, char escape, kiln_df_lookup_fn lookup, void *ud,
			 char ***out, size_t *n, struct kiln_error **err)
{
	_cleanup_strbuf_ struct kiln_strbuf sb = KILN_STRBUF_INIT(EXPAND_MAX_BYTES);
	struct words w = { .cur = KILN_STRBUF_INIT(EXPAND_MAX_BYTES) };
	int r;

	*out = NULL;
	*n = 0;
	r = expand(text, escape, lookup, ud, &sb, &w, err);
	if (r < 0) {
		words_release(&w);
		return r;
	}
	kiln_strbuf_release(&w.cur);
	if (!w.v)
		w.v = xcalloc(1, sizeof(*w.v));
	*out = w.v;
	*n = w.n;
	return 0;
}
