/*
 * .dockerignore patterns, matching what Docker and BuildKit do
 * (moby/patternmatcher + ignorefile.ReadAll); docs/dockerignore.md is the
 * user's description.
 *
 * Each pattern is compiled the way patternmatcher compiles it: a literal
 * pattern is compared as a string (exact), "lit**" is a prefix test,
 * "**lit" a suffix test, anything else a small token program equivalent to
 * the regular expression patternmatcher builds: "*" is "[^/]*", "?" is
 * "[^/]", "**" is "any run ending in a slash, or nothing" (or "anything"
 * at the end), classes and literals. The quirks of those
 * three shortcuts are kept on purpose: the same .dockerignore must select
 * the same files in kiln as in docker build.
 */
#include "source/local.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/strbuf.h"
#include "basic/strv.h"
#include "basic/utf8.h"

#define PATTERN_MAX 4096
#define PATTERNS_MAX 100000

enum match_type { M_EXACT, M_PREFIX, M_SUFFIX, M_REGEXP };

enum tok_kind {
	T_LIT,         /* one byte */
	T_STAR,        /* [^/]* */
	T_QMARK,       /* [^/] (one character) */
	T_CLASS,       /* [...] (one character) */
	T_DSTAR_SLASH, /* any run ending in '/', or nothing */
	T_DSTAR_END,   /* .* at the end */
	T_ANCHOR,      /* an unescaped '^': start of text (a regexp quirk) */
};

struct range {
	uint32_t lo, hi;
};

struct tok {
	uint8_t kind;
	uint8_t ch;
	bool negated;
	struct range *ranges;
	size_t n_ranges;
};

struct pattern {
	char *text; /* cleaned, without the '!' */
	bool exclusion;
	enum match_type type;
	struct tok *toks;
	size_t n_toks, alloc_toks;
};

struct kiln_patterns {
	struct pattern *v;
	size_t n, alloc;
	bool exclusions;
};

/* ---- UTF-8, as Go's regexp sees it: an invalid byte is one U+FFFD ---- */

static size_t utf8_decode(const char *s, size_t len, uint32_t *out)
{
	size_t n = kiln_utf8_decode(s, len, out);

	return n ? n : 1;
}

/* False for a byte that does not start a valid UTF-8 sequence. */
static bool utf8_valid_at(const char *s, size_t len)
{
	uint32_t c;

	return kiln_utf8_decode(s, len, &c) != 0;
}

/* ---- Go's filepath.Clean ---- */

static char *go_clean(const char *path)
{
	size_t n = strlen(path), r = 0, w = 0, dotdot = 0;
	bool rooted = n > 0 && path[0] == '/';
	char *out;

	if (n == 0)
		return xstrdup(".");
	out = xmalloc(n + 2);
	if (rooted) {
		out[w++] = '/';
		r = dotdot = 1;
	}
	while (r < n) {
		if (path[r] == '/') {
			r++;
		} else if (path[r] == '.' && (r + 1 == n || path[r + 1] == '/')) {
			r++;
		} else if (path[r] == '.' && path[r + 1] == '.' &&
			   (r + 2 == n || path[r + 2] == '/')) {
			r += 2;
			if (w > dotdot) {
				w--;
				while (w > dotdot && out[w] != '/')
					w--;
			} else if (!rooted) {
				if (w > 0)
					out[w++] = '/';
				out[w++] = '.';
				out[w++] = '.';
				dotdot = w;
			}
		} else {
			if ((rooted && w != 1) || (!rooted && w != 0))
				out[w++] = '/';
			for (; r < n && path[r] != '/'; r++)
				out[w++] = path[r];
		}
	}
	if (w == 0)
		out[w++] = '.';
	out[w] = '\0';
	return out;
}

static const char *skip_space(const char *s)
{
	while (*s == ' ' || (*s >= '\t' && *s <= '\r'))
		s++;
	return s;
}

static char *trim_space(const char *s)
{
	size_t n;

	s = skip_space(s);
	n = strlen(s);
	while (n > 0 && (s[n - 1] == ' ' || (s[n - 1] >= '\t' && s[n - 1] <= '\r')))
		n--;
	return xstrndup(s, n);
}

/*
 * ignorefile.ReadAll's per-line normalization: "!" handled apart, the
 * rest cleaned, a leading "/" dropped. NULL for a blank line.
 */
static char *normalize_line(const char *line)
{
	_cleanup_free_ char *p = trim_space(line), *rest = NULL;
	_cleanup_free_ char *clean = NULL;
	bool invert;
	const char *body;

	if (!p[0])
		return NULL;
	invert = p[0] == '!';
	rest = invert ? trim_space(p + 1) : xstrdup(p);
	body = rest;
	if (rest[0]) {
		clean = go_clean(rest);
		body = clean;
		if (strlen(body) > 1 && body[0] == '/')
			body++;
	}
	return xasprintf("%s%s", invert ? "!" : "", body);
}

/* ---- syntax check (filepath.Match's errors) ---- */

/* One class member (getEsc); advances *i. */
static int class_char(const char *p, size_t len, size_t *i, uint32_t *out)
{
	size_t n;

	if (*i >= len || p[*i] == '-' || p[*i] == ']')
		return -EINVAL;
	if (p[*i] == '\\' && ++*i >= len)
		return -EINVAL;
	if (!utf8_valid_at(p + *i, len - *i))
		return -EINVAL;
	n = utf8_decode(p + *i, len - *i, out);
	*i += n;
	return *i < len ? 0 : -EINVAL;
}

/*
 * Parse a class starting after '['; on success *i is past ']' and, when t
 * is non-NULL, the ranges are stored in it.
 */
static int parse_class(const char *p, size_t len, size_t *i, struct tok *t)
{
	size_t nr = 0, alloc = 0;
	struct range *rs = NULL;
	bool neg = false;
	uint32_t lo, hi;

	if (*i < len && p[*i] == '^') {
		neg = true;
		++*i;
	}
	for (;;) {
		if (*i < len && p[*i] == ']' && nr > 0) {
			++*i;
			break;
		}
		if (class_char(p, len, i, &lo) < 0)
			goto bad;
		hi = lo;
		if (p[*i] == '-') {
			++*i;
			if (class_char(p, len, i, &hi) < 0)
				goto bad;
		}
		rs = xgrow(rs, &alloc, nr + 1, sizeof(*rs));
		rs[nr++] = (struct range){ lo, hi };
	}
	if (t) {
		t->negated = neg;
		t->ranges = rs;
		t->n_ranges = nr;
	} else {
		free(rs);
	}
	return 0;
bad:
	free(rs);
	return -EINVAL;
}

static int check_syntax(const char *p, const char **why)
{
	size_t len = strlen(p), i = 0;

	while (i < len) {
		if (p[i] == '\\') {
			if (i + 1 >= len) {
				*why = "trailing backslash";
				return -EINVAL;
			}
			i += 2;
		} else if (p[i] == '[') {
			i++;
			if (parse_class(p, len, &i, NULL) < 0) {
				*why = "bad or unterminated character class";
				return -EINVAL;
			}
		} else {
			i++;
		}
	}
	return 0;
}

/* ---- compiling (patternmatcher's Pattern.compile) ---- */

static struct tok *tok_add(struct pattern *pt, enum tok_kind kind)
{
	struct tok *t;

	pt->toks = xgrow(pt->toks, &pt->alloc_toks, pt->n_toks + 1,
			 sizeof(*pt->toks));
	t = &pt->toks[pt->n_toks++];
	memset(t, 0, sizeof(*t));
	t->kind = kind;
	return t;
}

static void lit_add(struct pattern *pt, const char *s, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		tok_add(pt, T_LIT)->ch = (uint8_t)s[i];
}

/* "**" at p[*i - 1]; returns the new match type. */
static enum match_type compile_dstar(struct pattern *pt, size_t *i, size_t len,
				     enum match_type type, bool first)
{
	const char *p = pt->text;

	++*i;
	if (*i < len && p[*i] == '/')
		++*i;
	if (*i >= len) {
		if (type == M_EXACT) {
			type = M_PREFIX;
		} else {
			tok_add(pt, T_DSTAR_END);
			type = M_REGEXP;
		}
	} else {
		tok_add(pt, T_DSTAR_SLASH);
		type = M_REGEXP;
	}
	return first ? M_SUFFIX : type;
}

static void compile(struct pattern *pt)
{
	const char *p = pt->text;
	size_t len = strlen(p), i = 0, n;
	enum match_type type = M_EXACT;
	uint32_t c;
	bool first = true;

	while (i < len) {
		char ch = p[i++];

		if (ch == '*' && i < len && p[i] == '*') {
			type = compile_dstar(pt, &i, len, type, first);
		} else if (ch == '*' || ch == '?') {
			tok_add(pt, ch == '*' ? T_STAR : T_QMARK);
			type = M_REGEXP;
		} else if (ch == '\\') {
			n = utf8_decode(p + i, len - i, &c);
			lit_add(pt, p + i, n);
			i += n;
			type = M_REGEXP;
		} else if (ch == '[') {
			parse_class(p, len, &i, tok_add(pt, T_CLASS));
			type = M_REGEXP;
		} else if (ch == ']') {
			lit_add(pt, "]", 1);
			type = M_REGEXP;
		} else if (ch == '^') {
			tok_add(pt, T_ANCHOR);
		} else {
			lit_add(pt, &ch, 1);
		}
		first = false;
	}
	pt->type = type;
}

/* ---- matching ---- */

struct matcher {
	const struct pattern *pt;
	const char *s;
	size_t len;
	bool partial;   /* running out of input mid-pattern counts as a match */
	uint8_t *memo;  /* (tok, pos) already known to fail */
};

static bool class_has(const struct tok *t, uint32_t c)
{
	size_t i;

	for (i = 0; i < t->n_ranges; i++)
		if (t->ranges[i].lo <= c && c <= t->ranges[i].hi)
			return !t->negated;
	return t->negated;
}

static bool run(struct matcher *m, size_t ti, size_t pos);

/* Try the rest of the program after a token that may consume a run. */
static bool run_star(struct matcher *m, size_t ti, size_t pos, bool any)
{
	uint32_t c;

	for (;;) {
		if (run(m, ti + 1, pos))
			return true;
		if (pos >= m->len || (!any && m->s[pos] == '/') ||
		    (any && m->s[pos] == '\n'))
			return false;
		pos += utf8_decode(m->s + pos, m->len - pos, &c);
	}
}

static bool run_dstar_slash(struct matcher *m, size_t ti, size_t pos)
{
	size_t k;

	if (run(m, ti + 1, pos))
		return true;
	for (k = pos; k < m->len && m->s[k] != '\n'; k++)
		if (m->s[k] == '/' && run(m, ti + 1, k + 1))
			return true;
	return false;
}

static bool run_tok(struct matcher *m, size_t ti, size_t pos)
{
	const struct tok *t = &m->pt->toks[ti];
	uint32_t c;
	size_t n;

	switch (t->kind) {
	case T_LIT:
		return pos < m->len && (uint8_t)m->s[pos] == t->ch &&
		       run(m, ti + 1, pos + 1);
	case T_ANCHOR:
		return pos == 0 && run(m, ti + 1, pos);
	case T_STAR:
		return run_star(m, ti, pos, false);
	case T_DSTAR_END:
		return run_star(m, ti, pos, true);
	case T_DSTAR_SLASH:
		return run_dstar_slash(m, ti, pos);
	default:
		break;
	}
	if (pos >= m->len)
		return false;
	n = utf8_decode(m->s + pos, m->len - pos, &c);
	if (t->kind == T_QMARK ? c == '/' : !class_has(t, c))
		return false;
	return run(m, ti + 1, pos + n);
}

static bool run(struct matcher *m, size_t ti, size_t pos)
{
	size_t slot;
	bool ok;

	if (m->partial && pos >= m->len)
		return true;
	if (ti == m->pt->n_toks)
		return pos == m->len;
	slot = ti * (m->len + 1) + pos;
	if (m->memo[slot])
		return false;
	ok = run_tok(m, ti, pos);
	if (!ok)
		m->memo[slot] = 1;
	return ok;
}

static bool run_program(const struct pattern *pt, const char *s, size_t len,
			bool partial)
{
	struct matcher m = { pt, s, len, partial, NULL };
	bool ok;

	m.memo = xcalloc((pt->n_toks + 1) * (len + 1), 1);
	ok = run(&m, 0, 0);
	free(m.memo);
	return ok;
}

static bool has_suffix(const char *s, size_t len, const char *suf)
{
	size_t n = strlen(suf);

	return n <= len && !memcmp(s + len - n, suf, n);
}

/* Pattern.match on the first len bytes of s. */
static bool pattern_match(const struct pattern *pt, const char *s, size_t len)
{
	const char *t = pt->text;
	size_t tl = strlen(t);

	switch (pt->type) {
	case M_EXACT:
		return len == tl && !memcmp(s, t, len);
	case M_PREFIX:
		return len >= tl - 2 && !memcmp(s, t, tl - 2);
	case M_SUFFIX:
		if (has_suffix(s, len, t + 2))
			return true;
		return t[2] == '/' && len == tl - 3 && !memcmp(s, t + 3, len);
	default:
		return run_program(pt, s, len, false);
	}
}

/* The pattern matches relpath or one of its parent directories. */
static bool pattern_match_or_parent(const struct pattern *pt,
				    const char *relpath)
{
	size_t len = strlen(relpath), i;

	if (pattern_match(pt, relpath, len))
		return true;
	for (i = 0; i < len; i++)
		if (relpath[i] == '/' && pattern_match(pt, relpath, i))
			return true;
	return false;
}

bool kiln_patterns_match(const struct kiln_patterns *p, const char *relpath)
{
	bool matched = false;
	size_t i;

	if (!p || !relpath || !relpath[0])
		return false;
	for (i = 0; i < p->n; i++) {
		const struct pattern *pt = &p->v[i];

		/* Only a pattern that would change the outcome is tried. */
		if (pt->exclusion != matched)
			continue;
		if (pattern_match_or_parent(pt, relpath))
			matched = !pt->exclusion;
	}
	return matched;
}

/* Could pt match dir, a parent of dir, or anything below dir? */
static bool pattern_may_match_below(const struct pattern *pt, const char *dir)
{
	_cleanup_free_ char *slashed = xasprintf("%s/", dir);
	size_t n = strlen(slashed), tl = strlen(pt->text);

	if (pattern_match_or_parent(pt, dir))
		return true;
	switch (pt->type) {
	case M_EXACT:
		return tl > n && !memcmp(pt->text, slashed, n);
	case M_PREFIX:
		return !memcmp(pt->text, slashed, n < tl - 2 ? n : tl - 2);
	case M_SUFFIX:
		return true; /* some dir/…<suffix> always exists */
	default:
		return run_program(pt, slashed, n, true);
	}
}

static bool may_match_below(const struct kiln_patterns *p, const char *relpath,
			    bool exclusion)
{
	size_t i;

	if (!p)
		return false;
	if (!relpath || !relpath[0])
		return true;
	for (i = 0; i < p->n; i++)
		if (p->v[i].exclusion == exclusion &&
		    pattern_may_match_below(&p->v[i], relpath))
			return true;
	return false;
}

bool kiln_patterns_may_match_below(const struct kiln_patterns *p,
				   const char *relpath)
{
	return p && p->exclusions && may_match_below(p, relpath, true);
}

bool kiln_patterns_may_include_below(const struct kiln_patterns *p,
				     const char *relpath)
{
	return may_match_below(p, relpath, false);
}

/* ---- construction ---- */

static void pattern_release(struct pattern *pt)
{
	size_t i;

	for (i = 0; i < pt->n_toks; i++)
		free(pt->toks[i].ranges);
	free(pt->toks);
	free(pt->text);
}

void kiln_patterns_free(struct kiln_patterns *p)
{
	size_t i;

	if (!p)
		return;
	for (i = 0; i < p->n; i++)
		pattern_release(&p->v[i]);
	free(p->v);
	free(p);
}

/* patternmatcher.New for one normalized line; 0, 1 (skipped) or error. */
static int pattern_add(struct kiln_patterns *p, const char *orig,
		       const char *line, struct kiln_error **err)
{
	_cleanup_free_ char *trimmed = trim_space(line), *clean = NULL;
	struct pattern *pt;
	const char *body, *why = NULL;

	if (!trimmed[0])
		return 1;
	clean = go_clean(trimmed);
	body = clean;
	if (body[0] == '!') {
		if (!body[1])
			return kiln_error_set(err, -EINVAL,
					      "pattern \"%s\": illegal exclusion pattern \"!\"",
					      orig);
		body++;
	}
	if (check_syntax(body, &why) < 0)
		return kiln_error_set(err, -EINVAL, "pattern \"%s\": %s", orig,
				      why);
	p->v = xgrow(p->v, &p->alloc, p->n + 1, sizeof(*p->v));
	pt = &p->v[p->n++];
	memset(pt, 0, sizeof(*pt));
	pt->exclusion = body != clean;
	pt->text = xstrdup(body);
	p->exclusions |= pt->exclusion;
	compile(pt);
	return 0;
}

int kiln_patterns_new(const char *const *patterns, size_t n,
		      struct kiln_patterns **out, struct kiln_error **err)
{
	struct kiln_patterns *p = xcalloc(1, sizeof(*p));
	size_t i;
	int r = 0;

	*out = NULL;
	if (n > PATTERNS_MAX)
		r = kiln_error_set(err, -E2BIG, "too many patterns (%zu > %d)",
				   n, PATTERNS_MAX);
	for (i = 0; r >= 0 && i < n; i++) {
		_cleanup_free_ char *line = NULL;

		if (strlen(patterns[i]) > PATTERN_MAX) {
			r = kiln_error_set(err, -E2BIG,
					   "pattern \"%.64s…\": longer than %d bytes",
					   patterns[i], PATTERN_MAX);
			break;
		}
		line = normalize_line(patterns[i]);
		if (line)
			r = pattern_add(p, patterns[i], line, err);
	}
	if (r < 0) {
		kiln_patterns_free(p);
		return r;
	}
	*out = p;
	return 0;
}

/* ---- .dockerignore files ---- */

static int parse_line(const char *line, char ***out, size_t *n, size_t *alloc)
{
	char *pat;

	if (line[0] == '#')
		return 0;
	pat = normalize_line(line);
	if (!pat)
		return 0;
	if (*n >= PATTERNS_MAX) {
		free(pat);
		return -E2BIG;
	}
	*out = xgrow(*out, alloc, *n + 2, sizeof(**out));
	(*out)[(*n)++] = pat;
	(*out)[*n] = NULL;
	return 0;
}

int kiln_dockerignore_parse(const char *text, size_t len, char ***out,
			    size_t *n, struct kiln_error **err)
{
	size_t alloc = 0, start = 0, end, lineno = 0;
	int r = 0;

	*out = NULL;
	*n = 0;
	if (len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3))
		start = 3;
	while (r == 0 && start < len) {
		_cleanup_free_ char *line = NULL;

		for (end = start; end < len && text[end] != '\n'; end++)
			;
		lineno++;
		if (end - start > PATTERN_MAX) {
			r = kiln_error_set(err, -E2BIG,
					   ".dockerignore line %zu: longer than %d bytes",
					   lineno, PATTERN_MAX);
			break;
		}
		line = xstrndup(text + start, end - start);
		r = parse_line(line, out, n, &alloc);
		if (r < 0)
			kiln_error_set(err, r, ".dockerignore line %zu: too many patterns",
				       lineno);
		start = end + 1;
	}
	if (r < 0) {
		kiln_strv_free(*out, *n);
		*out = NULL;
		*n = 0;
	}
	return r;
}
