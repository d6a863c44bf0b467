/*
 * Platforms ("linux/amd64", "linux/arm/v7"): parsing, normalization,
 * matching and formatting, the one place every layer asks. Normalization
 * follows containerd's platforms package (what BuildKit uses): os, arch and
 * variant are lowercased, arch aliases map to Go's names (x86_64 is amd64,
 * aarch64 is arm64, armhf is arm/v7, ...), arm gets its default variant v7
 * and arm64's default variant v8 is dropped.
 */
#pragma once

#include <stdbool.h>

#include "basic/error.h"
#include "basic/strbuf.h"

struct kiln_platform {
	char *os;
	char *arch;
	char *variant; /* "" when there is none, never NULL once set */
};

/* Free the contents of p (NULL members are fine); p can be reused. */
void kiln_platform_release(struct kiln_platform *p);

/*
 * Set *err to the one error for a string that is not a platform (it names
 * s) and return -EINVAL.
 */
int kiln_platform_invalid(struct kiln_error **err, const char *s);

/*
 * Split "os/arch[/variant]" into p as written (not normalized). Each part
 * must be non-empty and of [A-Za-z0-9_.-] ('.' not in os), as containerd
 * requires; otherwise -EINVAL with kiln_platform_invalid's error and p
 * zeroed.
 */
int kiln_platform_parse(const char *s, struct kiln_platform *p,
			struct kiln_error **err);

/* Normalize p in place (see the top of this file). */
void kiln_platform_normalize_parts(struct kiln_platform *p);

/* "os/arch" or "os/arch/variant". Caller frees. */
char *kiln_platform_format(const struct kiln_platform *p);

/*
 * The normalized form of a platform string, or NULL when s is not one
 * (kiln_platform_invalid says so). A lone architecture ("aarch64") is
 * linux's, as containerd reads a lone known architecture; a lone OS is not
 * a platform. Caller frees.
 */
char *kiln_platform_normalize(const char *s);

/*
 * Does have (normalized) satisfy want (normalized)? os and arch must be
 * equal; a want without variant takes any variant.
 */
bool kiln_platform_match(const struct kiln_platform *want,
			 const struct kiln_platform *have);

/* The machine's platform from uname(2), normalized. Caller frees. */
char *kiln_platform_native(void);

/*
 * Append one platform to a list in sb, the one spelling of platform lists
 * (logs, `kiln workers`, errors): "linux/amd64,linux/arm64(emulated)".
 * first: this is the list's first item (no comma before it). Returns 0 or
 * -E2BIG when sb's limit is reached (sb unchanged).
 */
int kiln_platform_list_add(struct kiln_strbuf *sb, bool first,
			   const char *platform, bool emulated);
