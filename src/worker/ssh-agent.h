/*
 * SSH agent forwarding for RUN --mount=type=ssh (docs/dockerfile.md,
 * docs/internals/worker.md "SSH agent forwarding").
 *
 * A step is untrusted code: it gets a socket that speaks the ssh-agent
 * protocol (draft-miller-ssh-agent: uint32 length, then the message, its
 * first byte the type), but only the two requests a client needs to
 * authenticate pass through, listing identities and signing; everything
 * else (adding or removing keys, locking, extensions) is answered
 * SSH_AGENT_FAILURE without reaching the client's agent. BuildKit does
 * the same with a read-only agent (session/sshforward/sshprovider/
 * agentprovider.go, readOnlyAgent).
 *
 * The forwarder listens on a unix socket that the exec bind-mounts into
 * the step, and hands each allowed request to a relay: the client's agent
 * on this machine (embedded builds), or kilnd and through it the client
 * (a cluster's worker, agent/jobs.c).
 */
#pragma once

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "basic/error.h"

/* The largest message either way (the length word excluded). */
#define KILN_SSH_AGENT_MSG_MAX (256u << 10)
/* How long one request may wait for the client's agent. */
#define KILN_SSH_AGENT_TIMEOUT_MS 30000

enum {
	KILN_SSH_AGENT_FAILURE = 5,
	KILN_SSH_AGENTC_REQUEST_IDENTITIES = 11,
	KILN_SSH_AGENT_IDENTITIES_ANSWER = 12,
	KILN_SSH_AGENTC_SIGN_REQUEST = 13,
	KILN_SSH_AGENT_SIGN_RESPONSE = 14,
	KILN_SSH_AGENTC_ADD_IDENTITY = 17,
};

/* Does the forwarder pass this request (the message, type byte first) on? */
bool kiln_ssh_agent_request_allowed(const uint8_t *msg, size_t len);
/* Is this an answer to an allowed request (identities, signature, failure)? */
bool kiln_ssh_agent_answer_allowed(const uint8_t *msg, size_t len);

/*
 * Incremental reader of one framed message. States:
 *   HEADER --4 bytes, 1..MAX--> BODY --len bytes--> DONE
 *   HEADER --length 0 or > MAX--> BAD
 * DONE and BAD are final until kiln_ssh_framer_reset (DONE keeps the
 * message in body/len; reset frees it). want() says how many bytes the
 * next read may take, so a connection never reads past one message.
 */
enum kiln_ssh_framer_state {
	KILN_SSH_FRAME_HEADER,
	KILN_SSH_FRAME_BODY,
	KILN_SSH_FRAME_DONE,
	KILN_SSH_FRAME_BAD,
};

struct kiln_ssh_framer {
	enum kiln_ssh_framer_state state;
	uint8_t hdr[4];
	uint8_t *body;
	uint32_t len;  /* BODY, DONE: the message's length */
	uint32_t have; /* bytes of the header or body received */
};

void kiln_ssh_framer_init(struct kiln_ssh_framer *f);
void kiln_ssh_framer_reset(struct kiln_ssh_framer *f);
size_t kiln_ssh_framer_want(const struct kiln_ssh_framer *f);
/* Take n ≤ want() bytes. */
void kiln_ssh_framer_feed(struct kiln_ssh_framer *f, const uint8_t *p, size_t n);

/*
 * One request to the agent listening at sock, one answer (malloc'd):
 * connect, send, receive, all within timeout_ms (one deadline, however
 * slowly the agent answers). The request must be allowed and the answer
 * is checked: -EPERM for a request that is not, -EPROTO for a bad
 * answer, -ETIMEDOUT, or the socket's errno (-EPIPE for an agent that
 * hung up: never a SIGPIPE).
 */
int kiln_ssh_agent_call(const char *sock, const uint8_t *req, size_t len, int timeout_ms,
			uint8_t **resp, size_t *resp_len);

/*
 * Where an allowed request for agent id goes; fills *resp (malloc'd,
 * 1..MAX bytes) or fails, and the step then reads SSH_AGENT_FAILURE.
 * Called on the forwarder's thread, one request at a time. *stop turns
 * true when the forwarder is being freed: a relay that waits long (an
 * HTTP call) gives up then, so the exec's end does not wait on it.
 */
typedef int (*kiln_ssh_relay_fn)(void *ud, const char *id, const uint8_t *req, size_t len,
				 const atomic_bool *stop, uint8_t **resp, size_t *resp_len);

struct kiln_ssh_forwarder;

/*
 * Listen at name in dirfd (a new unix socket, owned by uid:gid with
 * mode) for the step's connections to agent id (at most
 * KILN_SSH_FORWARDER_CONNS at once; more wait in the backlog), relayed
 * through relay(ud) on a thread of the forwarder's own until
 * kiln_ssh_forwarder_free. A step that hangs up before its answer costs
 * its connection only.
 */
#define KILN_SSH_FORWARDER_CONNS 16
int kiln_ssh_forwarder_start(int dirfd, const char *name, uid_t uid, gid_t gid, mode_t mode,
			     const char *id, kiln_ssh_relay_fn relay, void *ud,
			     struct kiln_ssh_forwarder **out, struct kiln_error **err);
/*
 * Stop: set the relay's stop flag, end the thread, close every
 * connection, remove the socket. Accepts NULL.
 */
void kiln_ssh_forwarder_free(struct kiln_ssh_forwarder *f);
