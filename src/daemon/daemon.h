/* What kilnd and kiln-worker share. */
#pragma once

#include <pthread.h>
#include <signal.h>

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
