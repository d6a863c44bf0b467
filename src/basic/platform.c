#include "basic/platform.h"

#include <ctype.h>
#include <string.h>
#include <sys/utsname.h>

#include "basic/alloc.h"

struct arch_alias {
	const char *alias;   /* what a user or uname(2) may say */
	const char *arch;    /* OCI (Go) arch */
	const char *variant; /* default variant or NULL */
};

static const struct arch_alias arches[] = {
	{ "x86_64", "amd64", NULL },   { "x86-64", "amd64", NULL },
	{ "amd64", "amd64", NULL },    { "aarch64", "arm64", NULL },
	{ "arm64", "arm64", NULL },    { "armv8l", "arm", "v8" },
	{ "armv7l", "arm", "v7" },     { "armv7", "arm", "v7" },
	{ "armhf", "arm", "v7" },      { "armv6l", "arm", "v6" },
	{ "armel", "arm", "v6" },      { "arm", "arm", "v7" },
	{ "i386", "386", NULL },       { "i486", "386", NULL },
	{ "i586", "386", NULL },       { "i686", "386", NULL },
	{ "386", "386", NULL },        { "ppc64le", "ppc64le", NULL },
	{ "s390x", "s390x", NULL },    { "riscv64", "riscv64", NULL },
	{ "mips64", "mips64", NULL },  { "mips64el", "mips64le", NULL },
	{ "mips64le", "mips64le", NULL }, { "loongarch64", "loong64", NULL },
	{ "loong64", "loong64", NULL },
};

/* Go's architectures (containerd's isKnownArch): what a lone word may be. */
static const char *const known_arches[] = {
	"386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be",
	"ppc64", "ppc64le", "loong64", "mips", "mipsle", "mips64", "mips64le",
	"mips64p32", "mips64p32le", "ppc", "riscv", "riscv64", "s390", "s390x",
	"sparc", "sparc64", "wasm",
};

void kiln_platform_release(struct kiln_platform *p)
{
	free(p->os);
	free(p->arch);
	free(p->variant);
	p->os = p->arch = p->variant = NULL;
}

int kiln_platform_invalid(struct kiln_error **err, const char *s)
{
	return kiln_error_set(err, -EINVAL, "platform \"%s\" is not os/arch[/variant]",
			      s ? s : "");
}

/* A part of n bytes: non-empty, of [A-Za-z0-9_-] and '.' when dot. */
static bool part_ok(const char *s, size_t n, bool dot)
{
	size_t i;

	if (n == 0)
		return false;
	for (i = 0; i < n; i++)
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' &&
		    !(dot && s[i] == '.'))
			return false;
	return true;
}

int kiln_platform_parse(const char *s, struct kiln_platform *p,
			struct kiln_error **err)
{
	const char *a = s ? strchr(s, '/') : NULL;
	const char *v = a ? strchr(a + 1, '/') : NULL;
	size_t alen = a ? (v ? (size_t)(v - a - 1) : strlen(a + 1)) : 0;

	memset(p, 0, sizeof(*p));
	if (!a || !part_ok(s, (size_t)(a - s), false) || !part_ok(a + 1, alen, true) ||
	    (v && !part_ok(v + 1, strlen(v + 1), true)))
		return kiln_platform_invalid(err, s);
	p->os = xstrndup(s, (size_t)(a - s));
	p->arch = xstrndup(a + 1, alen);
	p->variant = xstrdup(v ? v + 1 : "");
	return 0;
}

static void lower(char *s)
{
	for (; *s; s++)
		*s = (char)tolower((unsigned char)*s);
}

static const struct arch_alias *find_arch(const char *arch)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(arches); i++)
		if (!strcmp(arches[i].alias, arch))
			return &arches[i];
	return NULL;
}

static void set_str(char **p, const char *s)
{
	free(*p);
	*p = xstrdup(s);
}

void kiln_platform_normalize_parts(struct kiln_platform *p)
{
	const struct arch_alias *a;

	lower(p->os);
	lower(p->arch);
	lower(p->variant);
	a = find_arch(p->arch);
	if (!a)
		return;
	set_str(&p->arch, a->arch);
	if (!*p->variant && a->variant)
		set_str(&p->variant, a->variant);
	/* arm64's only variant is v8, which is the default: drop it. */
	if (!strcmp(p->arch, "arm64") && !strcmp(p->variant, "v8"))
		p->variant[0] = '\0';
}

char *kiln_platform_format(const struct kiln_platform *p)
{
	if (p->variant && *p->variant)
		return xasprintf("%s/%s/%s", p->os, p->arch, p->variant);
	return xasprintf("%s/%s", p->os, p->arch);
}

static bool known_arch(const char *arch)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(known_arches); i++)
		if (!strcmp(known_arches[i], arch))
			return true;
	return false;
}

/* A lone word that names an architecture: linux's. */
static int parse_lone_arch(const char *s, struct kiln_platform *p)
{
	memset(p, 0, sizeof(*p));
	if (!part_ok(s, strlen(s), true))
		return -EINVAL;
	p->os = xstrdup("linux");
	p->arch = xstrdup(s);
	p->variant = xstrdup("");
	kiln_platform_normalize_parts(p);
	if (known_arch(p->arch))
		return 0;
	kiln_platform_release(p);
	return -EINVAL;
}

char *kiln_platform_normalize(const char *s)
{
	struct kiln_platform p;
	char *out;
	int r;

	if (s && !strchr(s, '/'))
		r = parse_lone_arch(s, &p);
	else
		r = kiln_platform_parse(s, &p, NULL);
	if (r < 0)
		return NULL;
	kiln_platform_normalize_parts(&p);
	out = kiln_platform_format(&p);
	kiln_platform_release(&p);
	return out;
}

bool kiln_platform_match(const struct kiln_platform *want,
			 const struct kiln_platform *have)
{
	return !strcmp(want->os, have->os) && !strcmp(want->arch, have->arch) &&
	       (!*want->variant || !strcmp(want->variant, have->variant));
}

char *kiln_platform_native(void)
{
	struct kiln_platform p;
	struct utsname u;
	char *out;

	if (uname(&u) < 0)
		return xstrdup("linux/unknown");
	p.os = xstrdup("linux");
	p.arch = xstrdup(u.machine);
	p.variant = xstrdup("");
	kiln_platform_normalize_parts(&p);
	out = kiln_platform_format(&p);
	kiln_platform_release(&p);
	return out;
}

int kiln_platform_list_add(struct kiln_strbuf *sb, bool first,
			   const char *platform, bool emulated)
{
	return kiln_strbuf_addf(sb, "%s%s%s", first ? "" : ",", platform,
				emulated ? "(emulated)" : "");
}
