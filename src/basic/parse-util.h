/*
 * Checked number parsing. kiln does not use atoi, atol or an unchecked
 * strtol: they take overflow and trailing junk silently; these reject both.
 */
#pragma once

#include <stdint.h>

/* Parse a whole decimal string into *out; -EINVAL or -ERANGE on failure. */
int kiln_parse_u64(const char *s, uint64_t *out);
int kiln_parse_u32(const char *s, uint32_t *out);
int kiln_parse_int(const char *s, int *out);

/*
 * Parse a size such as "512", "10k", "1.5GB", "2GiB" (k/M/G/T, decimal with
 * B suffix, binary with iB or bare letter). -EINVAL on junk.
 */
int kiln_parse_size(const char *s, uint64_t *out);

/*
 * Parse a duration in seconds: a number with an optional unit, "90", "90s",
 * "30m", "24h", "7d" (as in Go, and "d" for days). -EINVAL on junk,
 * -ERANGE past a century.
 */
int kiln_parse_duration(const char *s, int64_t *out);

/* Format bytes as "12.3 MiB" into buf (size >= 32). */
const char *kiln_format_size(uint64_t n, char *buf, unsigned size);

/*
 * A copy of url without the userinfo of a "scheme://user:secret@host/…"
 * URL ("scheme://host/…"), for keys, names and messages. Anything else
 * (an scp-like "git@host:repo", no "@" before the path) is copied as is.
 */
char *kiln_url_strip_userinfo(const char *url);
