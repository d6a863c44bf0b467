/*
 * libFuzzer target for the Dockerfile parser and word expansion: any bytes
 * must give either instructions or an error, never a crash, leak or
 * undefined behaviour; every argument of a parsed file must expand (or fail
 * with a message).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "frontend/dockerfile/dockerfile.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *lookup(void *ud, const char *name)
{
	(void)ud;
	(void)name;
	return "x";
}

static void expand_one(const char *word, char escape)
{
	struct kiln_error *err = NULL;
	char *out = NULL, **words = NULL;
	size_t i, n = 0;

	if (kiln_df_expand_word(word, escape, lookup, NULL, &out, &err) < 0 && !err)
		__builtin_trap(); /* every failure must say why */
	free(out);
	kiln_error_free(err);
	err = NULL;
	if (kiln_df_expand_words(word, escape, lookup, NULL, &words, &n, &err) == 0) {
		for (i = 0; i < n; i++)
			free(words[i]);
		free(words);
	}
	kiln_error_free(err);
}

static void expand_ins(const struct kiln_df_instruction *ins, char escape)
{
	size_t i;

	for (i = 0; i < ins->n_args; i++)
		expand_one(ins->args[i], escape);
	for (i = 0; i < ins->n_flags; i++)
		if (ins->flags[i].value)
			expand_one(ins->flags[i].value, escape);
	for (i = 0; i < ins->n_heredocs; i++)
		if (ins->heredocs[i].expand)
			expand_one(ins->heredocs[i].content, escape);
	if (ins->onbuild)
		expand_ins(ins->onbuild, escape);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kiln_dockerfile *df = NULL;
	struct kiln_error *err = NULL;
	size_t i;

	if (kiln_dockerfile_parse((const char *)data, size, "Dockerfile", &df, &err) == 0) {
		for (i = 0; i < df->n; i++)
			expand_ins(&df->ins[i], df->escape);
		kiln_dockerfile_free(df);
	} else if (!err) {
		__builtin_trap();
	}
	kiln_error_free(err);
	return 0;
}
