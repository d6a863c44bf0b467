/*
 * libFuzzer target for kiln_layer_extract: arbitrary bytes go through a
 * memfd into a fresh directory under a private temp dir. Whatever the
 * input, extraction must not crash, leak or write outside that directory
 * (ASan/UBSan report the first two; the third is the unit tests' job).
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "source/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char root_path[] = "/tmp/kiln-fuzz-layer.XXXXXX";

static void remove_root(void)
{
	(void)kiln_rm_rf(root_path);
}

static int root_fd(void)
{
	static int fd = -1;

	if (fd >= 0)
		return fd;
	if (!mkdtemp(root_path))
		abort();
	atexit(remove_root);
	fd = open(root_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		abort();
	return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kiln_error *err = NULL;
	int root = root_fd();
	int in, dfd;

	in = memfd_create("layer", MFD_CLOEXEC);
	if (in < 0 || kiln_write_full(in, data, size) < 0 ||
	    lseek(in, 0, SEEK_SET) < 0)
		abort();
	(void)kiln_rm_rf_at(root, "x");
	if (mkdirat(root, "x", 0755) < 0)
		abort();
	dfd = openat(root, "x", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		abort();
	(void)kiln_layer_extract(in, dfd, &err);
	kiln_error_free(err);
	close(dfd);
	close(in);
	(void)kiln_rm_rf_at(root, "x");
	return 0;
}
