/*
 * A small XML reader for the few answers S3 sends (listings, multipart
 * results, errors): elements, text and the five entities, with limits on
 * depth, names and text; no DTD, no CDATA, no namespaces. Answers come
 * from the network and are hostile.
 */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "basic/alloc.h"
#include "basic/parse-util.h"
#include "s3/s3-internal.h"

#define PATH_MAX_LEN (KILN_S3_XML_DEPTH * (KILN_S3_XML_NAME_MAX + 1))

struct xml {
	const char *p, *end;
	char path[PATH_MAX_LEN + 1];
	size_t starts[KILN_S3_XML_DEPTH]; /* offset of each name in path */
	unsigned depth;
	bool root_seen;
	struct kiln_strbuf text;
	kiln_s3_xml_fn fn;
	void *ud;
};

static bool name_char(char c)
{
	return isalnum((unsigned char)c) || c == '_' || c == '-' || c == '.' ||
	       c == ':';
}

/* Skip past the first occurrence of s; -EBADMSG when there is none. */
static int skip_past(struct xml *x, const char *s)
{
	size_t n = strlen(s);
	const char *q = memmem(x->p, (size_t)(x->end - x->p), s, n);

	if (!q)
		return -EBADMSG;
	x->p = q + n;
	return 0;
}

static int read_name(struct xml *x, const char **name, size_t *len)
{
	const char *s = x->p;

	while (x->p < x->end && name_char(*x->p))
		x->p++;
	*name = s;
	*len = (size_t)(x->p - s);
	if (*len == 0 || *len > KILN_S3_XML_NAME_MAX)
		return -EBADMSG;
	return 0;
}

static void skip_space(struct xml *x)
{
	while (x->p < x->end && isspace((unsigned char)*x->p))
		x->p++;
}

/* Attributes up to '>' or "/>"; *empty for the latter. */
static int skip_attributes(struct xml *x, bool *empty)
{
	char q;

	while (x->p < x->end) {
		if (*x->p == '>') {
			x->p++;
			*empty = false;
			return 0;
		}
		if (*x->p == '/' && x->p + 1 < x->end && x->p[1] == '>') {
			x->p += 2;
			*empty = true;
			return 0;
		}
		if (*x->p == '"' || *x->p == '\'') {
			q = *x->p++;
			while (x->p < x->end && *x->p != q && *x->p != '<')
				x->p++;
			if (x->p >= x->end || *x->p != q)
				return -EBADMSG;
		} else if (*x->p == '<') {
			return -EBADMSG;
		}
		x->p++;
	}
	return -EBADMSG;
}

static int open_element(struct xml *x)
{
	const char *name;
	size_t len, off;
	bool empty;
	int r;

	if (x->depth == 0 && x->root_seen)
		return -EBADMSG; /* a second root */
	if (x->depth >= KILN_S3_XML_DEPTH || read_name(x, &name, &len) < 0)
		return -EBADMSG;
	r = skip_attributes(x, &empty);
	if (r < 0)
		return r;
	off = x->depth ? strlen(x->path) + 1 : 0;
	if (x->depth)
		x->path[off - 1] = '/';
	memcpy(x->path + off, name, len);
	x->path[off + len] = '\0';
	x->starts[x->depth++] = off;
	x->root_seen = true;
	kiln_strbuf_reset(&x->text);
	r = x->fn(x->ud, x->path, NULL, 0);
	if (r < 0 || !empty)
		return r;
	r = x->fn(x->ud, x->path, "", 0);
	x->depth--;
	x->path[x->depth ? x->starts[x->depth] - 1 : 0] = '\0';
	return r;
}

static int close_element(struct xml *x)
{
	const char *name;
	size_t len, off;
	int r;

	if (x->depth == 0 || read_name(x, &name, &len) < 0)
		return -EBADMSG;
	off = x->starts[x->depth - 1];
	if (strlen(x->path + off) != len || memcmp(x->path + off, name, len))
		return -EBADMSG;
	skip_space(x);
	if (x->p >= x->end || *x->p != '>')
		return -EBADMSG;
	x->p++;
	r = x->fn(x->ud, x->path, kiln_strbuf_str(&x->text), x->text.len);
	kiln_strbuf_reset(&x->text);
	x->depth--;
	x->path[x->depth ? off - 1 : 0] = '\0';
	return r;
}

static int add_codepoint(struct kiln_strbuf *sb, uint64_t cp)
{
	char b[4];
	size_t n;

	if (cp == 0 || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return -EBADMSG;
	if (cp < 0x80) {
		b[0] = (char)cp, n = 1;
	} else if (cp < 0x800) {
		b[0] = (char)(0xc0 | (cp >> 6)), n = 2;
	} else if (cp < 0x10000) {
		b[0] = (char)(0xe0 | (cp >> 12)), n = 3;
	} else {
		b[0] = (char)(0xf0 | (cp >> 18)), n = 4;
	}
	for (size_t i = 1; i < n; i++)
		b[i] = (char)(0x80 | ((cp >> (6 * (n - 1 - i))) & 0x3f));
	return kiln_strbuf_add(sb, b, n) < 0 ? -EBADMSG : 0;
}

static int char_ref(struct kiln_strbuf *sb, const char *s, size_t len)
{
	uint64_t cp = 0;
	size_t i = 1;
	unsigned base = 10, d;

	if (len > 1 && (s[1] == 'x' || s[1] == 'X'))
		base = 16, i = 2;
	if (i >= len || len > 10)
		return -EBADMSG;
	for (; i < len; i++) {
		if (isdigit((unsigned char)s[i]))
			d = (unsigned)(s[i] - '0');
		else if (base == 16 && isxdigit((unsigned char)s[i]))
			d = (unsigned)(tolower((unsigned char)s[i]) - 'a' + 10);
		else
			return -EBADMSG;
		cp = cp * base + d;
	}
	return add_codepoint(sb, cp);
}

/* The entity after '&' up to ';'. */
static int entity(struct xml *x)
{
	static const char *const names[] = { "amp", "lt", "gt", "quot", "apos" };
	static const char chars[] = "&<>\"'";
	const char *s = x->p, *semi;
	size_t len, i;

	semi = memchr(s, ';', (size_t)(x->end - s) < 12 ? (size_t)(x->end - s) : 12);
	if (!semi)
		return -EBADMSG;
	len = (size_t)(semi - s);
	x->p = semi + 1;
	if (len && s[0] == '#')
		return char_ref(&x->text, s, len);
	for (i = 0; i < ARRAY_SIZE(names); i++)
		if (strlen(names[i]) == len && !memcmp(names[i], s, len))
			return kiln_strbuf_addch(&x->text, chars[i]) < 0
				       ? -EBADMSG : 0;
	return -EBADMSG;
}

static int text(struct xml *x)
{
	char c = *x->p;

	if (c == '\0')
		return -EBADMSG;
	if (x->depth == 0) {
		/* Only blanks outside the root. */
		x->p++;
		return isspace((unsigned char)c) ? 0 : -EBADMSG;
	}
	x->p++;
	if (c == '&')
		return entity(x);
	return kiln_strbuf_addch(&x->text, c) < 0 ? -EBADMSG : 0;
}

static int markup(struct xml *x)
{
	x->p++; /* '<' */
	if (x->p >= x->end)
		return -EBADMSG;
	if (*x->p == '?')
		return skip_past(x, "?>");
	if (x->end - x->p >= 3 && !memcmp(x->p, "!--", 3))
		return skip_past(x, "-->");
	if (*x->p == '!')
		return -EBADMSG; /* DOCTYPE, CDATA: not in S3's answers */
	if (*x->p == '/') {
		x->p++;
		return close_element(x);
	}
	return open_element(x);
}

int kiln_s3_xml_parse(const char *doc, size_t len, kiln_s3_xml_fn fn, void *ud)
{
	struct xml x = { .p = doc, .end = doc + len, .fn = fn, .ud = ud };
	int r = 0;

	kiln_strbuf_init(&x.text, KILN_S3_XML_TEXT_MAX);
	while (r == 0 && x.p < x.end)
		r = *x.p == '<' ? markup(&x) : text(&x);
	if (r == 0 && (x.depth || !x.root_seen))
		r = -EBADMSG;
	kiln_strbuf_release(&x.text);
	return r;
}

/* ---- answers ---- */

int kiln_s3_parse_time(const char *s, int64_t *out)
{
	struct tm tm = { 0 };
	const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	time_t t;

	if (!end)
		return -EINVAL;
	if (*end == '.')
		for (end++; isdigit((unsigned char)*end); end++)
			;
	if (strcmp(end, "Z") != 0)
		return -EINVAL;
	t = timegm(&tm);
	if (t == (time_t)-1)
		return -EINVAL;
	*out = (int64_t)t;
	return 0;
}

char *kiln_s3_unquote(const char *s, size_t len)
{
	if (len >= 2 && s[0] == '"' && s[len - 1] == '"')
		return xstrndup(s + 1, len - 2);
	return xstrndup(s, len);
}

void kiln_s3_object_release(struct kiln_s3_object *o)
{
	if (!o)
		return;
	free(o->key);
	free(o->etag);
	memset(o, 0, sizeof(*o));
}

void kiln_s3_list_init(struct kiln_s3_list *l)
{
	memset(l, 0, sizeof(*l));
}

void kiln_s3_list_release(struct kiln_s3_list *l)
{
	size_t i;

	if (!l)
		return;
	for (i = 0; i < l->n; i++)
		kiln_s3_object_release(&l->objects[i]);
	free(l->objects);
	free(l->next_token);
	kiln_s3_list_init(l);
}

struct list_state {
	struct kiln_s3_list *out;
	const char *root;   /* "ListBucketResult" or "ListMultipartUploadsResult" */
	const char *entry;  /* "ListBucketResult/Contents", ... */
	bool in_entry, has_token;
	const char *why;
};

static int list_fail(struct list_state *s, const char *why)
{
	s->why = why;
	return -EBADMSG;
}

static int entry_field(struct list_state *s, const char *field,
		       const char *text, size_t len)
{
	struct kiln_s3_object *o = &s->out->objects[s->out->n - 1];
	uint64_t u;

	if (!strcmp(field, "Key") || !strcmp(field, "UploadId") ||
	    !strcmp(field, "ETag") || !strcmp(field, "LastModified") ||
	    !strcmp(field, "Size")) {
		if (memchr(text, '\0', len))
			return list_fail(s, "NUL in a field");
	}
	if (!strcmp(field, "Key")) {
		/* Keys other tools wrote may be keys kiln would not send. */
		if (o->key || len == 0 || len > KILN_S3_KEY_MAX)
			return list_fail(s, "a bad or second Key");
		o->key = xstrndup(text, len);
	} else if (!strcmp(field, "Size")) {
		if (kiln_parse_u64(text, &u) < 0)
			return list_fail(s, "a bad Size");
		o->size = u;
	} else if (!strcmp(field, "LastModified") || !strcmp(field, "Initiated")) {
		if (kiln_s3_parse_time(text, &o->mtime) < 0)
			return list_fail(s, "a bad LastModified");
	} else if (!strcmp(field, "ETag") || !strcmp(field, "UploadId")) {
		free(o->etag);
		o->etag = kiln_s3_unquote(text, len);
	}
	return 0;
}

static int top_field(struct list_state *s, const char *field, const char *text,
		     size_t len)
{
	if (!strcmp(field, "IsTruncated")) {
		if (strcmp(text, "true") && strcmp(text, "false"))
			return list_fail(s, "a bad IsTruncated");
		s->out->truncated = !strcmp(text, "true");
	} else if (!strcmp(field, "NextContinuationToken")) {
		if (memchr(text, '\0', len) || s->has_token)
			return list_fail(s, "a bad NextContinuationToken");
		free(s->out->next_token);
		s->out->next_token = xstrndup(text, len);
		s->has_token = len > 0;
	}
	return 0;
}

static int list_cb(void *ud, const char *path, const char *text, size_t len)
{
	struct list_state *s = ud;
	size_t rl = strlen(s->root), el = strlen(s->entry);

	if (strncmp(path, s->root, rl) || (path[rl] && path[rl] != '/'))
		return list_fail(s, "not the expected document");
	if (!strcmp(path, s->entry)) {
		if (text) {
			if (!s->out->objects[s->out->n - 1].key)
				return list_fail(s, "an entry without a Key");
			return 0;
		}
		if (s->out->n >= KILN_S3_LIST_MAX)
			return list_fail(s, "too many entries");
		s->out->objects = xgrow(s->out->objects, &s->out->alloc,
					s->out->n + 1, sizeof(*s->out->objects));
		memset(&s->out->objects[s->out->n++], 0, sizeof(*s->out->objects));
		return 0;
	}
	if (!text)
		return 0;
	if (!strncmp(path, s->entry, el) && path[el] == '/' &&
	    !strchr(path + el + 1, '/'))
		return entry_field(s, path + el + 1, text, len);
	if (path[rl] == '/' && !strchr(path + rl + 1, '/'))
		return top_field(s, path + rl + 1, text, len);
	return 0;
}

static int parse_listing(const char *doc, size_t len, struct kiln_s3_list *out,
			 const char *root, const char *entry, const char **why)
{
	struct list_state s = { .out = out, .root = root, .entry = entry };
	int r = kiln_s3_xml_parse(doc, len, list_cb, &s);

	if (r < 0) {
		*why = s.why ? s.why : "malformed XML";
		return -EBADMSG;
	}
	if (out->truncated && !s.has_token && !strcmp(root, "ListBucketResult")) {
		*why = "truncated without a NextContinuationToken";
		return -EBADMSG;
	}
	return 0;
}

int kiln_s3_parse_list(const char *doc, size_t len, struct kiln_s3_list *out,
		       const char **why)
{
	return parse_listing(doc, len, out, "ListBucketResult",
			     "ListBucketResult/Contents", why);
}

int kiln_s3_parse_uploads(const char *doc, size_t len, struct kiln_s3_list *out,
			  const char **why)
{
	return parse_listing(doc, len, out, "ListMultipartUploadsResult",
			     "ListMultipartUploadsResult/Upload", why);
}

struct find_state {
	const char *root, *path;
	char *found;
	bool bad_root;
};

static int find_cb(void *ud, const char *path, const char *text, size_t len)
{
	struct find_state *s = ud;
	size_t rl = strlen(s->root);

	if (strncmp(path, s->root, rl) || (path[rl] && path[rl] != '/')) {
		s->bad_root = true;
		return -EBADMSG;
	}
	if (text && !s->found && !strcmp(path, s->path)) {
		if (memchr(text, '\0', len))
			return -EBADMSG;
		s->found = xstrndup(text, len);
	}
	return 0;
}

int kiln_s3_xml_find(const char *doc, size_t len, const char *root,
		     const char *path, char **out)
{
	struct find_state s = { .root = root, .path = path };
	int r = kiln_s3_xml_parse(doc, len, find_cb, &s);

	*out = NULL;
	if (r < 0) {
		free(s.found);
		return r;
	}
	if (!s.found)
		return -ENOENT;
	*out = s.found;
	return 0;
}

/* Printable, one line, at most 200 bytes. */
static void sanitize(char *s)
{
	size_t i, n = strlen(s);

	if (n > 200)
		s[n = 200] = '\0';
	for (i = 0; i < n; i++)
		if (!isprint((unsigned char)s[i]))
			s[i] = ' ';
}

char *kiln_s3_error_text(const char *doc, size_t len)
{
	_cleanup_free_ char *code = NULL, *msg = NULL;
	char *t;

	if (!doc || !len || kiln_s3_xml_find(doc, len, "Error", "Error/Code", &code) < 0)
		return NULL;
	(void)kiln_s3_xml_find(doc, len, "Error", "Error/Message", &msg);
	t = msg && *msg ? xasprintf("%s: %s", code, msg) : xstrdup(code);
	sanitize(t);
	return t;
}
