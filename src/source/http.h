/*
 * source.http: download a URL into the CAS, verified against a checksum
 * when one is given. Deadlines: 30 s to connect, abort below 1 KiB/s for
 * 60 s; redirects followed (at most 10); size limit 16 GiB.
 */
#pragma once

#include <stdint.h>

#include "basic/error.h"
#include "cas/digest.h"
#include "cas/store.h"

/*
 * Fetch url into the store. When expected is set, content that hashes to
 * anything else is refused (-EBADMSG, naming the URL and both digests) and
 * nothing is stored. *out gets the content digest.
 */
int kiln_http_fetch(struct kiln_store *s, const char *url,
		    const struct kiln_digest *expected, struct kiln_digest *out,
		    uint64_t *size, struct kiln_error **err);
