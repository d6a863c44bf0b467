/*
 * Bearer tokens of the cluster (docs/cluster.md): kilnd keeps a worker join
 * token and a client token in files under its root; workers and clients
 * read theirs from a file they are given.
 */
#pragma once

#include "basic/error.h"

/* Random bytes in a generated token (written as hex). */
#define KILN_TOKEN_BYTES 32u

/*
 * The token in root/name, created (KILN_TOKEN_BYTES random bytes as hex,
 * mode 0600, written atomically and durably) when the file is missing.
 * The caller must keep other processes from creating it at the same time
 * (kilnd holds its root's lock). *out is the token, caller frees.
 */
int kiln_token_ensure(const char *root, const char *name, char **out,
		      struct kiln_error **err);

/*
 * Read a token file: surrounding white space is dropped; the rest must be
 * 1..KILN_HTTP_TOKEN_MAX printable, non-space ASCII characters. The error
 * names the file.
 */
int kiln_token_read(const char *path, char **out, struct kiln_error **err);
