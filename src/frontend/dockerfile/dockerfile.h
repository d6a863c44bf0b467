/*
 * Dockerfile parsing: text -> instructions (the AST), plus Docker's word
 * expansion rules. Lowering to the op graph is in lower.h.
 *
 * The parser handles parser directives (# syntax=, # escape=, # check=),
 * comments, line continuations (with the escape character), empty
 * continuation lines, heredocs (<<EOF, <<-EOF, <<"EOF" quoted = no
 * expansion), JSON (exec) forms and the per-instruction argument shapes.
 * It does not expand variables: that needs the build's ARG/ENV state.
 * Errors name file:line:column and the instruction.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"

#define KILN_DF_MAX_BYTES (8u << 20)

enum kiln_df_cmd {
	KILN_DF_FROM,
	KILN_DF_RUN,
	KILN_DF_CMD,
	KILN_DF_ENTRYPOINT,
	KILN_DF_SHELL,
	KILN_DF_COPY,
	KILN_DF_ADD,
	KILN_DF_ENV,
	KILN_DF_ARG,
	KILN_DF_LABEL,
	KILN_DF_WORKDIR,
	KILN_DF_USER,
	KILN_DF_EXPOSE,
	KILN_DF_VOLUME,
	KILN_DF_STOPSIGNAL,
	KILN_DF_HEALTHCHECK,
	KILN_DF_ONBUILD,
	KILN_DF_MAINTAINER,
};

struct kiln_df_pos {
	unsigned line; /* 1-based */
	unsigned col;  /* 1-based */
};

/* --name=value (value NULL for a bare --name). */
struct kiln_df_flag {
	char *name;
	char *value;
	struct kiln_df_pos pos;
};

struct kiln_df_heredoc {
	char *name;     /* the delimiter word */
	char *content;  /* body, lines joined with '\n', final newline kept */
	bool expand;    /* false when the delimiter was quoted */
	bool chomp;     /* <<- : leading tabs were stripped */
};

struct kiln_df_instruction {
	enum kiln_df_cmd cmd;
	struct kiln_df_pos pos; /* of the keyword */
	unsigned end_line;
	char *original;         /* the instruction as written, continuations joined */
	struct kiln_df_flag *flags;
	size_t n_flags;
	/*
	 * Arguments, unexpanded:
	 *   json_form: the JSON array's strings (RUN/CMD/ENTRYPOINT/SHELL/
	 *     COPY/ADD/VOLUME);
	 *   RUN/CMD/ENTRYPOINT shell form: one string, the rest of the line
	 *     (continuations joined as Docker does);
	 *   FROM/COPY/ADD/EXPOSE/VOLUME/ARG/ONBUILD-less others: words split on
	 *     whitespace (quotes kept, for expansion to process);
	 *   ENV/LABEL: pairs [key, value, key, value, ...] from "k=v k2=v2" or
	 *     the legacy "ENV k v" form (quotes kept in values);
	 *   WORKDIR/USER/STOPSIGNAL/MAINTAINER: one string, the rest of the line;
	 *   HEALTHCHECK: args[0] = "NONE" or "CMD", then as CMD (json_form
	 *     applies to the CMD part).
	 */
	bool json_form;
	char **args;
	size_t n_args;
	struct kiln_df_heredoc *heredocs;
	size_t n_heredocs;
	struct kiln_df_instruction *onbuild; /* ONBUILD's instruction */
};

struct kiln_dockerfile {
	char *filename;
	char escape; /* '\\' or '`' */
	char *syntax; /* # syntax= value, or NULL */
	unsigned syntax_line; /* its line (1-based), 0 without one */
	struct kiln_df_instruction *ins;
	size_t n;
};

int kiln_dockerfile_parse(const char *text, size_t len, const char *filename,
			  struct kiln_dockerfile **out, struct kiln_error **err);
void kiln_dockerfile_free(struct kiln_dockerfile *df);

/* "RUN" for KILN_DF_RUN etc. */
const char *kiln_df_cmd_name(enum kiln_df_cmd c);

/* ---- expansion (expand.c): Docker's shell-word rules ---- */

/*
 * Look up a variable; return its value (borrowed) or NULL when unset.
 */
typedef const char *(*kiln_df_lookup_fn)(void *ud, const char *name);

/*
 * Expand one word as Docker does for instruction arguments: $VAR, ${VAR},
 * ${VAR:-word}, ${VAR-word}, ${VAR:+word}, ${VAR+word}, ${VAR:?msg},
 * ${VAR?msg}, escapes with the escape character, single quotes (no
 * expansion), double quotes (expansion); quotes are removed. An unset
 * variable expands to "". Errors (bad substitution, ${VAR:?msg}) name the
 * word.
 */
int kiln_df_expand_word(const char *word, char escape, kiln_df_lookup_fn lookup,
			void *ud, char **out, struct kiln_error **err);

/*
 * Expand and split into words on unquoted whitespace (ProcessWords),
 * e.g. for EXPOSE, VOLUME and ARG lists. *out is NULL-terminated.
 */
int kiln_df_expand_words(const char *text, char escape, kiln_df_lookup_fn lookup,
			 void *ud, char ***out, size_t *n, struct kiln_error **err);
