/*
 * TLS for kiln's own API: kilnd, kiln-worker and the kiln client
 * (docs/cluster.md, "TLS"). Server side: libmicrohttpd with GnuTLS; client
 * side: libcurl.
 *
 * One set of files per process, used both ways: a node serves cert/key on
 * its listener and presents them as its client certificate when it calls
 * another node (kilnd -> worker, worker -> kilnd, worker -> worker).
 */
#pragma once

#include <getopt.h>
#include <stdbool.h>

#include "basic/error.h"

/* Paths of PEM files; NULL when unset. Borrowed, not copied. */
struct kiln_tls {
	const char *cert;      /* this node's certificate (chain) */
	const char *key;       /* its private key */
	const char *ca;        /* CAs trusted for the nodes it calls; NULL: the system's */
	const char *client_ca; /* listener: clients must present a certificate signed by one of these */
};

/* Largest PEM file read (a certificate chain or a CA bundle). */
#define KILN_TLS_FILE_MAX (1u << 20)

static inline bool kiln_tls_serving(const struct kiln_tls *t)
{
	return t && t->cert;
}

/*
 * Check that the flags go together (--tls-cert and --tls-key both or
 * neither, --tls-client-ca only with a certificate to serve) and that each
 * file named can be opened. The error names the flag. What is in the files
 * is judged later, by the server at start and by the client's first call.
 */
int kiln_tls_check(const struct kiln_tls *t, struct kiln_error **err);

/*
 * The flags, for getopt_long: --tls-cert, --tls-key and --tls-ca for every
 * command that calls a node (kiln build, kiln workers, the daemons), and
 * --tls-client-ca for the daemons' listeners.
 */
enum {
	KILN_TLS_OPT_CERT = 0x1000,
	KILN_TLS_OPT_KEY,
	KILN_TLS_OPT_CA,
	KILN_TLS_OPT_CLIENT_CA,
};

#define KILN_TLS_CLIENT_OPTIONS                                         \
	{ "tls-cert", required_argument, NULL, KILN_TLS_OPT_CERT },     \
	{ "tls-key", required_argument, NULL, KILN_TLS_OPT_KEY },       \
	{ "tls-ca", required_argument, NULL, KILN_TLS_OPT_CA }
#define KILN_TLS_SERVER_OPTIONS                                         \
	KILN_TLS_CLIENT_OPTIONS,                                        \
	{ "tls-client-ca", required_argument, NULL, KILN_TLS_OPT_CLIENT_CA }

/* Store a --tls-* flag's value; false when opt is not one of them. */
static inline bool kiln_tls_arg(struct kiln_tls *t, int opt, const char *arg)
{
	switch (opt) {
	case KILN_TLS_OPT_CERT: t->cert = arg; return true;
	case KILN_TLS_OPT_KEY: t->key = arg; return true;
	case KILN_TLS_OPT_CA: t->ca = arg; return true;
	case KILN_TLS_OPT_CLIENT_CA: t->client_ca = arg; return true;
	default: return false;
	}
}
