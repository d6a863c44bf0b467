/* Platforms: the native one, normalization, and emulation through binfmt_misc. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "worker/worker-internal.h"

struct arch_alias {
	const char *alias;   /* what a user or uname may say */
	const char *arch;    /* OCI arch */
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

/* binfmt_misc handler names (qemu-user-static's) per OCI arch. */
static const struct {
	const char *arch, *handler;
} qemu_handlers[] = {
	{ "amd64", "qemu-x86_64" },   { "arm64", "qemu-aarch64" },
	{ "arm", "qemu-arm" },        { "386", "qemu-i386" },
	{ "ppc64le", "qemu-ppc64le" }, { "s390x", "qemu-s390x" },
	{ "riscv64", "qemu-riscv64" }, { "mips64", "qemu-mips64" },
	{ "mips64le", "qemu-mips64el" }, { "loong64", "qemu-loongarch64" },
};

static const struct arch_alias *find_arch(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(arches); i++)
		if (strlen(arches[i].alias) == len &&
		    !strncasecmp(arches[i].alias, s, len))
			return &arches[i];
	return NULL;
}

char *kiln_platform_normalize(const char *p)
{
	const char *os = "linux", *arch = p, *variant = NULL, *slash;
	const struct arch_alias *a;
	size_t os_len = 5, arch_len;

	if (!p || !*p)
		return NULL;
	slash = strchr(p, '/');
	if (slash) {
		os = p;
		os_len = (size_t)(slash - p);
		arch = slash + 1;
	}
	slash = strchr(arch, '/');
	arch_len = slash ? (size_t)(slash - arch) : strlen(arch);
	if (slash)
		variant = slash + 1;
	a = find_arch(arch, arch_len);
	if (!a)
		return xasprintf("%.*s/%.*s%s%s", (int)os_len, os,
				 (int)arch_len, arch, variant ? "/" : "",
				 variant ? variant : "");
	if (!variant || !*variant)
		variant = a->variant;
	/* arm64's only variant is v8, which is the default: drop it. */
	if (variant && !strcmp(a->arch, "arm64") && !strcmp(variant, "v8"))
		variant = NULL;
	return xasprintf("%.*s/%s%s%s", (int)os_len, os, a->arch,
			 variant ? "/" : "", variant ? variant : "");
}

char *kiln_platform_native(void)
{
	struct utsname u;

	if (uname(&u) < 0)
		return xstrdup("linux/unknown");
	return kiln_platform_normalize(u.machine);
}

/* "os/arch[/variant]" -> newly allocated arch. */
static char *platform_arch(const char *p)
{
	const char *a = strchr(p, '/'), *e;

	a = a ? a + 1 : p;
	e = strchr(a, '/');
	return e ? xstrndup(a, (size_t)(e - a)) : xstrdup(a);
}

static const char *handler_for(const char *arch)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(qemu_handlers); i++)
		if (!strcmp(qemu_handlers[i].arch, arch))
			return qemu_handlers[i].handler;
	return NULL;
}

static bool handler_enabled(const char *handler)
{
	_cleanup_free_ char *path = NULL, *data = NULL;
	size_t len;

	path = xasprintf("/proc/sys/fs/binfmt_misc/%s", handler);
	if (kiln_read_file_at(AT_FDCWD, path, 65536, &data, &len) < 0)
		return false;
	return !strncmp(data, "enabled\n", 8) || !strcmp(data, "enabled");
}

/* Variant number of "linux/arm/v7" (7), 0 when there is none. */
static int variant_of(const char *p)
{
	const char *v = strrchr(p, '/');

	if (!v || v == strchr(p, '/') || v[1] != 'v')
		return 0;
	return v[2] >= '0' && v[2] <= '9' ? v[2] - '0' : 0;
}

/*
 * Same os and arch run natively; amd64 micro-architecture levels are not
 * checked, and an arm CPU runs older arm variants.
 */
static bool native_can_run(const char *native, const char *p)
{
	_cleanup_free_ char *na = platform_arch(native), *pa = platform_arch(p);

	if (!strcmp(native, p))
		return true;
	if (strncmp(p, "linux/", 6) || strcmp(na, pa))
		return false;
	if (strcmp(na, "arm"))
		return true;
	return variant_of(p) <= variant_of(native);
}

int kiln_worker_check_platform(struct kiln_worker *w, const char *platform,
			       bool *emulated, struct kiln_error **err)
{
	_cleanup_free_ char *norm = kiln_platform_normalize(platform);
	_cleanup_free_ char *arch = NULL;
	const char *handler;

	*emulated = false;
	if (!norm)
		return kiln_error_set(err, -EINVAL, "empty platform");
	if (native_can_run(w->native, norm))
		return 0;
	arch = platform_arch(norm);
	handler = handler_for(arch);
	if (strncmp(norm, "linux/", 6) || !handler)
		return kiln_error_set(err, -ENOTSUP,
				      "platform %s cannot run on this %s worker; add a native %s worker",
				      norm, w->native, norm);
	if (handler_enabled(handler)) {
		log_debug("platform %s: emulated through %s", norm, handler);
		*emulated = true;
		return 0;
	}
	return kiln_error_set(err, -ENOTSUP,
			      "platform %s cannot run on this %s worker: no enabled binfmt_misc handler %s; "
			      "enable emulation (mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; "
			      "apt-get install qemu-user-static binfmt-support; update-binfmts --enable %s) "
			      "or add a native %s worker",
			      norm, w->native, handler, handler, norm);
}
