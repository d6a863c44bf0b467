/*
 * Lowering internals shared by lower.c (driver, stages, op emission),
 * lower-stage.c (FROM, RUN, COPY/ADD, WORKDIR) and lower-config.c (the
 * instructions that only change the image config, and the config itself).
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "basic/error.h"
#include "basic/platform.h"
#include "frontend/dockerfile/dockerfile.h"
#include "frontend/dockerfile/lower.h"

#define KILN_DF_DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#define KILN_DF_HISTORY_COMMENT "buildkit.dockerfile.v0"
/*
 * ssh mounts in one RUN: KILN_DEF_MAX_SSH_MOUNTS (solver/definition.h),
 * which this room cannot include; test-lower checks they agree.
 */
#define KILN_DF_MAX_SSH_MOUNTS 16u

/* An ordered KEY=VALUE list with unique keys (env, args). */
struct kv {
	char *key;
	char *value; /* NULL: declared without a value (stage ARGs only) */
};

struct kvlist {
	struct kv *v;
	size_t n, alloc;
};

void kvlist_set(struct kvlist *l, const char *key, const char *value);
const struct kv *kvlist_find(const struct kvlist *l, const char *key);
const char *kvlist_get(const struct kvlist *l, const char *key);
void kvlist_copy(struct kvlist *dst, const struct kvlist *src);
void kvlist_release(struct kvlist *l);
/* kiln_df_lookup_fn over a struct kvlist (only entries with a value). */
const char *kvlist_lookup(void *ud, const char *name);

/* One FROM ... up to the next FROM. */
struct stage_def {
	const struct kiln_df_instruction *from;
	size_t first, end;    /* instruction indexes: [first] is FROM, body up to end */
	char *name;           /* lowercased AS name, or NULL */
	char *label;          /* progress label: name, "stage-N", or "" (single stage) */
	const char *base_raw; /* the FROM word as written */
	const char *platform_raw; /* --platform value as written, or NULL */
};

/* A stage lowered for one target platform. */
struct stage_state {
	bool done, busy;
	bool replaced;    /* a named context stands for the stage */
	char *platform;   /* the stage's platform */
	char *op;         /* current root file system op; NULL = scratch (empty) */
	char *base_op;    /* source.image op at the root of the FROM chain, or NULL */
	struct kvlist env;  /* ENV plus ARG values: expansion and RUN env */
	struct kvlist args; /* ARGs declared in the stage chain, in order */
	json_t *image;      /* {"author"?, "config": {...}, "history": [...]} */
	char **layer_ops;
	size_t n_layer_ops;
	bool cmd_set;       /* CMD given in this stage (ENTRYPOINT keeps it) */
	size_t cmd_index, cmd_total; /* progress numbering "[2/5]" */
	size_t n_onbuild;   /* ONBUILD triggers run so far (op ids) */
};

struct lower {
	const struct kiln_dockerfile *df;
	const struct kiln_df_build_opts *o;
	const char *file;           /* for errors */
	struct stage_def *stages;
	size_t n_stages;
	size_t first_from;          /* index of the first FROM */
	struct kvlist build_args;   /* --build-arg values */
	struct kvlist declared;     /* names an ARG declared (global or in a lowered stage) */
	struct kvlist *globals;     /* per platform: platform ARGs + global ARGs */
	struct stage_state *st;     /* [platform * n_stages + stage] */
	json_t *ops;                /* emitted ops, in order */
	json_t *dedup;              /* op content (no id/name) -> id */
	json_t *resolved;           /* "platform ref" -> [pinned, config] */
	char *context_op;           /* the whole-context source.local op id, once used */
	unsigned n_contexts;        /* narrowed context ops emitted (ids) */
	char *empty_op;             /* an empty tree, once needed */
	/* The instruction being lowered: every op emitted gets its line. */
	const struct kiln_df_instruction *cur;
	struct kiln_error **err;
};

/* What an instruction is being lowered in. */
struct ictx {
	struct lower *L;
	size_t pidx, sidx;
	struct stage_state *s;
	const struct kiln_df_instruction *ins;
	const struct kiln_df_instruction *at; /* position for errors */
	char *idbase;   /* "p0-s1-i3" */
	char *name;     /* progress name, computed on first use */
	char *text;     /* the text shown instead of the instruction, or NULL */
	bool onbuild;
};

/* ---- lower.c ---- */
int lerr(const struct ictx *c, int code, const char *fmt, ...) _printf_(3, 4);
/* Prefix an error set by a helper with the instruction's location. */
int lerr_wrap(const struct ictx *c, int r);
/* Add op (consumed; "id" set here) and return its id (borrowed from L). */
const char *emit_op(struct lower *L, json_t *op, const char *id);
const char *context_op_for(struct lower *L, const char *path);
const char *context_op(struct lower *L);
const char *empty_op(struct lower *L);
/* The op holding a stage's tree (an empty tree for scratch). */
const char *tree_op(struct lower *L, const struct stage_state *s);
/* Resolve once per (ref, platform); pinned and config are borrowed. */
int resolve_image(struct ictx *c, const char *ref, const char *platform,
		  const char **pinned, json_t **config);
/* Lower stage sidx for platform pidx (dependencies first). */
int lower_stage(struct lower *L, size_t pidx, size_t sidx);
int dispatch_ins(struct ictx *c);
/* The named context for a FROM or --from name, or NULL. */
const struct kiln_df_named_context *named_context(struct lower *L, const char *name);
/*
 * The op holding a named context's tree (source.local or source.image) and,
 * for an image, its config (borrowed; NULL for a directory). id names a
 * new image op.
 */
int named_context_tree(struct ictx *c, const struct kiln_df_named_context *nc,
		       const char *platform, const char *id, const char **op,
		       json_t **config);
/* Find a stage by --from value; -1 and an error when it is a later stage. */
int find_stage(struct lower *L, const char *name, ssize_t *out);
char *stage_names(const struct lower *L);
/* Split a platform check_opts let through (kiln_platform_parse). */
void platform_split(const char *p, struct kiln_platform *out);
const char *cmd_upper(enum kiln_df_cmd c);
/* Expand one word with the stage env. */
int expand(struct ictx *c, const char *word, char **out);
const char *flag_value(const struct kiln_df_instruction *ins, const char *name);
bool flag_present(const struct kiln_df_instruction *ins, const char *name);
const char *flag_name(const struct kiln_df_flag *f);
int check_flags(struct ictx *c, const char *const *allowed);
const char *ins_name(struct ictx *c);
char *op_id(struct ictx *c, const char *suffix);
void stage_set_op(struct stage_state *s, const char *op);

/* ---- lower-stage.c ---- */
int stage_init(struct ictx *c);
int lower_run(struct ictx *c);
int lower_copy(struct ictx *c);
int lower_workdir(struct ictx *c);

/* ---- lower-config.c ---- */
int lower_config_ins(struct ictx *c);
int lower_arg(struct ictx *c);
/* One history entry; layer_op (the op after the instruction) or NULL. */
void commit(struct ictx *c, const char *created_by, const char *layer_op);
json_t *image_config(json_t *image);
char *go_quote_list(const json_t *arr);
char *go_plain_list(char *const *v, size_t n);
int parse_go_duration(const char *s, int64_t *ns);
json_t *final_image(struct lower *L, size_t pidx, const struct stage_state *s);
json_t *shell_args(json_t *image, const char *cmd);
