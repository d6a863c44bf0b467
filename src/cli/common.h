/*
 * What every kiln verb shares: where state lives and how the embedded
 * engine (controller pieces + one local worker) is opened.
 *
 * Embedded state under $KILN_ROOT (default ~/.local/share/kiln):
 *   cache.db   the cache index (cache/index.h)
 *   worker/    the embedded worker's root (worker/worker.h)
 */
#pragma once

#include <stdbool.h>

#include "basic/error.h"
#include "cache/index.h"
#include "proto/tls.h"
#include "worker/worker.h"

struct kiln_engine {
	char *root;
	struct kiln_worker *worker;
	struct kiln_cache *cache;
};

/* $KILN_ROOT, else $HOME/.local/share/kiln. Caller frees. */
char *kiln_cli_default_root(void);

/*
 * Open (creating) the embedded engine at root. runtime may be NULL (probe).
 */
int kiln_engine_open(const char *root, const char *runtime,
		     struct kiln_engine *out, struct kiln_error **err);
void kiln_engine_close(struct kiln_engine *e);

/*
 * The client token for kilnd: the first word of token_file when given,
 * else $KILN_TOKEN, else *out = NULL.
 */
int kiln_cli_token(const char *token_file, char **out, struct kiln_error **err);

/*
 * The TLS files for calling kilnd (--tls-ca, --tls-cert, --tls-key): what
 * the flags left unset comes from $KILN_TLS_CA, $KILN_TLS_CERT and
 * $KILN_TLS_KEY; cert and key must come together (the error names them).
 */
int kiln_cli_tls(struct kiln_tls *t, struct kiln_error **err);

/* Print "kiln: error: <msg>" to stderr; returns 1 (a process exit code). */
int kiln_cli_fail(const struct kiln_error *err);

/* Verbs: argc/argv start at the verb itself (argv[0] = "build"). */
int kiln_cmd_build(int argc, char **argv);
int kiln_cmd_du(int argc, char **argv);
int kiln_cmd_prune(int argc, char **argv);
int kiln_cmd_debug(int argc, char **argv);
/* kiln debug ops (debug-ops.c). */
int kiln_cmd_debug_ops(int argc, char **argv);
int kiln_cmd_workers(int argc, char **argv);
