/*
 * What the worker's two kilnd-facing services (jobs.c, images.c) share:
 * checking the members of kilnd's requests, which a worker takes as
 * hostile as any input. Each error names the member at fault.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "basic/error.h"
#include "cas/digest.h"
#include "peer/peer.h"

/* s is printable ASCII without spaces, at most max bytes. */
bool kiln_jobs_printable(const char *s, size_t max);

/* v is a digest string, into *d; -EINVAL naming "key" otherwise. */
int kiln_jobs_parse_digest(const json_t *v, const char *key, struct kiln_digest *d,
			   struct kiln_error **err);

/* j's required array "key" of at most max digests, into *out (n of them; free()). */
int kiln_jobs_parse_digests(const json_t *j, const char *key, size_t max,
			    struct kiln_digest **out, size_t *n, struct kiln_error **err);

/*
 * j's required "sources": at most KILN_JOBS_MAX_SOURCES {"url"} of http(s)
 * URLs, into *out (n of them, each with token; free()), the strings
 * borrowed from j.
 */
int kiln_jobs_parse_sources(const json_t *j, const char *token, struct kiln_peer_source **out,
			    size_t *n, struct kiln_error **err);

/* j's optional "credentials" (kiln_registry_credentials_check), borrowed into *out. */
int kiln_jobs_parse_credentials(const json_t *j, const json_t **out, struct kiln_error **err);
