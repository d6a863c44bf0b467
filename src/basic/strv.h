/* String vectors: arrays of allocated strings, counted or NULL-terminated. */
#pragma once

#include <stddef.h>

/* Free the first n strings of v, then v. v may be NULL, entries too. */
void kiln_strv_free(char **v, size_t n);

/* Strings before the NULL that ends v; 0 for a NULL v. */
size_t kiln_strv_len(char *const *v);

/* Append a copy of s to v (n strings), keeping it NULL-terminated. */
void kiln_strv_add(char ***v, size_t *n, const char *s);
/* The same, unless v holds s already. */
void kiln_strv_add_unique(char ***v, size_t *n, const char *s);
