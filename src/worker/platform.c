/* Which platforms this worker runs: natively, or emulated through binfmt_misc. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "basic/platform.h"
#include "worker/worker-internal.h"

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

/* Variant number of "v7" (7), 0 when there is none. */
static int variant_of(const struct kiln_platform *p)
{
	const char *v = p->variant;

	return v[0] == 'v' && v[1] >= '0' && v[1] <= '9' ? v[1] - '0' : 0;
}

/*
 * Same os and arch run natively; amd64 micro-architecture levels are not
 * checked, and an arm CPU runs older arm variants.
 */
static bool native_can_run(const struct kiln_platform *native,
			   const struct kiln_platform *p)
{
	if (strcmp(p->os, native->os) || strcmp(p->arch, native->arch))
		return false;
	if (!strcmp(p->variant, native->variant) || strcmp(p->arch, "arm"))
		return true;
	return variant_of(p) <= variant_of(native);
}

/* Normalized platform into p, or -EINVAL naming it. */
static int parse_normalized(const char *s, struct kiln_platform *p,
			    struct kiln_error **err)
{
	_cleanup_free_ char *norm = kiln_platform_normalize(s);

	if (!norm) {
		memset(p, 0, sizeof(*p));
		return kiln_platform_invalid(err, s);
	}
	return kiln_platform_parse(norm, p, err);
}

static int cannot_run(struct kiln_worker *w, const char *norm,
		      const char *handler, struct kiln_error **err)
{
	if (!handler)
		return kiln_error_set(err, -ENOTSUP,
				      "platform %s cannot run on this %s worker; add a native %s worker",
				      norm, w->native, norm);
	return kiln_error_set(err, -ENOTSUP,
			      "platform %s cannot run on this %s worker: no enabled binfmt_misc handler %s; "
			      "enable emulation (mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; "
			      "apt-get install qemu-user-static binfmt-support; update-binfmts --enable %s) "
			      "or add a native %s worker",
			      norm, w->native, handler, handler, norm);
}

int kiln_worker_check_platform(struct kiln_worker *w, const char *platform,
			       bool *emulated, struct kiln_error **err)
{
	_cleanup_(kiln_platform_release) struct kiln_platform want = { 0 }, native = { 0 };
	_cleanup_free_ char *norm = NULL;
	const char *handler = NULL;
	int r;

	*emulated = false;
	r = parse_normalized(platform, &want, err);
	if (r < 0)
		return r;
	norm = kiln_platform_format(&want);
	if (parse_normalized(w->native, &native, NULL) == 0 &&
	    native_can_run(&native, &want))
		return 0;
	if (!strcmp(want.os, "linux"))
		handler = handler_for(want.arch);
	if (handler && handler_enabled(handler)) {
		log_debug("platform %s: emulated through %s", norm, handler);
		*emulated = true;
		return 0;
	}
	return cannot_run(w, norm, handler, err);
}
