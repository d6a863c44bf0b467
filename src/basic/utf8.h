/*
 * UTF-8: decoding one sequence, and making arbitrary bytes (a step's output,
 * a worker's message) safe to put in JSON or on a terminal.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/*
 * Decode the sequence at s (len > 0 bytes left): its length and *cp, or 0
 * with *cp = U+FFFD for a byte that starts no valid sequence (overlong,
 * surrogate, past U+10FFFF, or cut short by len). NUL is valid (1 byte).
 */
size_t kiln_utf8_decode(const char *s, size_t len, uint32_t *cp);

/*
 * Bytes at the end of s (n bytes) that begin a multi-byte sequence cut
 * short by the end: 0 to 3. Text that arrives in pieces keeps them for the
 * next piece instead of turning them into U+FFFD.
 */
size_t kiln_utf8_cut_tail(const char *s, size_t n);

/*
 * A NUL-terminated copy of n bytes of s that is valid UTF-8: every byte
 * that starts no valid sequence, and every NUL, becomes U+FFFD. *out_len
 * (may be NULL) gets its length. Never fails (out of memory aborts).
 */
char *kiln_utf8_clean(const char *s, size_t n, size_t *out_len);
