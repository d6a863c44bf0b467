/*
 * kilnd's relay of ssh agent requests for RUN --mount=type=ssh in a
 * cluster (docs/api.md "SSH agent relay"). The agent protocol is strictly
 * request/response, so each message a step sends travels as one HTTP
 * exchange each way:
 *
 *   worker  POST /v1/ssh                {"session", "id", "data"} → waits for {"data"}
 *   client  POST /v1/builds/<id>/ssh    {"token", "answers"} → {"requests"}
 *
 * A session is opened for one job attempt of a build whose client
 * declared ssh ids (kiln build --ssh), with the ids that op mounts; it
 * travels to the worker inside the job (never in a URL), and is closed
 * when the attempt ends: a worker can only ask for a build it is running
 * a job of, and only for the ids of that job's op. The client answers
 * with the token kilnd gave it at submit: only the submitting client
 * answers for its build. Everything is bounded: message sizes
 * (KILN_SSH_AGENT_MSG_MAX), requests pending per build and in all (a
 * quarter of the HTTP server's connections at most), client exchanges
 * (one per build, a few in all, each waiting 1 s at most), and time (a
 * request unanswered for 30 s fails, and the step reads
 * SSH_AGENT_FAILURE). Only allowed requests and answers pass
 * (worker/ssh-agent.h), so neither side can widen what the other does.
 */
#pragma once

#include <stddef.h>

#include "basic/error.h"
#include "proto/http-server.h"

struct kiln_ssh_relay;

struct kiln_ssh_relay *kiln_ssh_relay_new(void);
/*
 * Fail every waiting request and exchange and refuse new ones: before
 * the HTTP server stops, so its connections are not held to the end.
 */
void kiln_ssh_relay_shutdown(struct kiln_ssh_relay *r);
/* After the HTTP server stopped. Accepts NULL. */
void kiln_ssh_relay_free(struct kiln_ssh_relay *r);

/*
 * Build id's client declared ids: the token its client answers with (32
 * hex, the caller frees it), or NULL when the table is full.
 */
char *kiln_ssh_relay_add_build(struct kiln_ssh_relay *r, const char *build,
			       const char *const *ids, size_t n_ids);
/* The build's steps are over: its requests fail, its sessions close. */
void kiln_ssh_relay_end_build(struct kiln_ssh_relay *r, const char *build);

/*
 * A session for one job of build, for the given ids (those the build's
 * client did not declare are left out): *session (32 hex, the caller
 * frees it). -EBUSY when the relay holds its most sessions, -ENOENT when
 * the build is not (any more) relayed; err says which.
 */
int kiln_ssh_relay_open(struct kiln_ssh_relay *r, const char *build, const char *const *ids,
			size_t n_ids, char **session, struct kiln_error **err);
void kiln_ssh_relay_close(struct kiln_ssh_relay *r, const char *session);

/* The two routes: the workers' (worker token) and the clients' (client token). */
int kiln_ssh_relay_routes(struct kiln_ssh_relay *r, struct kiln_http_server *http,
			  const char *worker_token, const char *client_token);
