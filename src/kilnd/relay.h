/*
 * kilnd relays a build's outputs from the workers that hold them to its
 * client (docs/cluster.md "Where each byte goes"): one peer request
 * (GET /v1/blobs/D, GET /v1/trees/D, POST /v1/blobs/batch) is sent to the
 * holder the client named and its answer is streamed back as it arrives, through a socket pair of a few hundred KiB: nothing is written
 * to kilnd's store, and a slow client slows the worker's send, never
 * grows kilnd's memory.
 */
#pragma once

#include <stddef.h>

#include "proto/http-client.h"
#include "proto/http-server.h"

struct kiln_relay_request {
	const char *method; /* GET or POST */
	const char *path;   /* "/v1/blobs/<digest>", ... (already checked) */
	const char *body;   /* POST's, or NULL */
	size_t body_len;
};

/*
 * Answer req as the peer server at url (asked with token) does: its
 * status and body, the body streamed. A holder that cannot be reached is
 * a 502 naming it. resp is set in every case.
 */
void kiln_relay(struct kiln_http_client *http, const char *url, const char *token,
		const struct kiln_relay_request *req, struct kiln_http_server_resp *resp);
