/* Helpers shared by the unit tests (static inline: unused ones cost nothing). */
#pragma once

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/macro.h"

/* system() with a printf-style command line; returns system()'s status. */
static inline int test_run(const char *fmt, ...) _printf_(1, 2);
static inline int test_run(const char *fmt, ...)
{
	va_list ap;
	char *cmd = NULL;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&cmd, fmt, ap);
	va_end(ap);
	if (r < 0)
		abort();
	r = system(cmd);
	free(cmd);
	return r;
}

/*
 * A rootfs's bin/: bindir (created) gets a copy of the host's static
 * /bin/busybox and a symlink to it per applet. -ENOENT when the host has
 * no /bin/busybox (busybox-static), other negative errno on failure.
 */
static inline int test_install_busybox(const char *bindir, const char *const *applets,
				       size_t n)
{
	char *bb = kiln_path_join(bindir, "busybox");
	int in = -1, out = -1, r;
	size_t i;

	r = kiln_mkdir_p(bindir, 0755);
	if (r == 0 && (in = open("/bin/busybox", O_RDONLY | O_CLOEXEC)) < 0)
		r = -errno;
	if (r == 0 && (out = open(bb, O_WRONLY | O_CREAT | O_CLOEXEC, 0755)) < 0)
		r = -errno;
	if (r == 0)
		r = kiln_copy_fd(in, out);
	for (i = 0; r == 0 && i < n; i++) {
		char *l = kiln_path_join(bindir, applets[i]);

		if (symlink("busybox", l) < 0)
			r = -errno;
		free(l);
	}
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	free(bb);
	return r;
}
