/*
 * Replays inputs through a libFuzzer target without libFuzzer: every file
 * named, and every file in every directory named (in name order), goes
 * once through LLVMFuzzerTestOneInput. meson test runs each target over
 * its corpus in the sanitizer build, so a regression in a parser fails
 * the test suite, not only a fuzzing session.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"

#define INPUT_MAX (64u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path)
{
	char *data = NULL;
	size_t len = 0;
	int r;

	r = kiln_read_file_at(AT_FDCWD, path, INPUT_MAX, &data, &len);
	if (r < 0) {
		fprintf(stderr, "replay: %s: %s\n", path, strerror(-r));
		return r;
	}
	LLVMFuzzerTestOneInput((const uint8_t *)data, len);
	free(data);
	return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static int replay_dir(const char *dir, unsigned *count)
{
	struct dirent **names;
	int n, i, r = 0;

	n = scandir(dir, &names, NULL, by_name);
	if (n < 0) {
		fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
		return -errno;
	}
	for (i = 0; i < n; i++) {
		char *path = kiln_path_join(dir, names[i]->d_name);
		struct stat st;

		if (r == 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
			r = replay_file(path);
			(*count)++;
		}
		free(path);
		free(names[i]);
	}
	free(names);
	return r;
}

int main(int argc, char **argv)
{
	unsigned count = 0;
	struct stat st;
	int i;

	for (i = 1; i < argc; i++) {
		if (stat(argv[i], &st) < 0) {
			fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
			return 1;
		}
		if (S_ISDIR(st.st_mode) ? replay_dir(argv[i], &count) < 0
					: (count++, replay_file(argv[i]) < 0))
			return 1;
	}
	if (count == 0) {
		fprintf(stderr, "replay: no input replayed\n");
		return 1;
	}
	printf("replayed %u inputs\n", count);
	return 0;
}
