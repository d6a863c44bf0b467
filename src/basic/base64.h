/* Standard base64 (RFC 4648 §4), as JSON bodies and docker configs carry bytes. */
#pragma once

#include <stddef.h>

/* Encode len bytes; NUL-terminated, padded. Never fails (OOM aborts). */
char *kiln_base64_encode(const void *data, size_t len);
/*
 * Decode s (padding optional); *len gets the byte count. The result is
 * NUL-terminated too. NULL on a character outside the alphabet.
 */
char *kiln_base64_decode(const char *s, size_t *len);
