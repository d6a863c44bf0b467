/* What kilnd and kiln-worker share. */
#pragma once

#include <pthread.h>
#include <signal.h>

#include "proto/tls.h"

/*
 * Block SIGTERM and SIGINT before any thread starts, so every thread
 * inherits the mask and only the main thread takes them (sigwait or
 * sigtimedwait on *sigs); ignore SIGPIPE (a peer that hangs up must not
 * kill the daemon).
 */
static inline void kiln_daemon_block_signals(sigset_t *sigs)
{
	sigemptyset(sigs);
	sigaddset(sigs, SIGTERM);
	sigaddset(sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
}

/* The flags' help, the last lines of both daemons' usage. */
#define KILN_DAEMON_TLS_USAGE                                                       \
	"\n"                                                                         \
	"TLS (docs/cluster.md):\n"                                                   \
	"  --tls-cert FILE --tls-key FILE\n"                                         \
	"        serve HTTPS with this certificate and key (PEM); they are also\n"   \
	"        this node's client certificate when it calls another node\n"       \
	"  --tls-ca FILE\n"                                                          \
	"        CAs that verify the nodes this one calls (default: the system's)\n" \
	"  --tls-client-ca FILE\n"                                                   \
	"        require a client certificate signed by one of these CAs\n"
