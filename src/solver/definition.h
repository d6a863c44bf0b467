/*
 * The op graph (docs/definition.md): JSON in, validated typed ops out.
 *
 * Validation happens before anything runs and every error names the op
 * (its id and index) and the field: unknown op types or fields, wrong
 * types, dangling or out-of-range inputs, cycles.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "cas/digest.h"

#define KILN_DEF_MAX_BYTES (64u << 20)
#define KILN_DEF_MAX_OPS 100000
/*
 * ssh mounts in one exec: each costs the worker a thread and a few fds
 * while it runs. The Dockerfile frontend has its own copy
 * (KILN_DF_MAX_SSH_MOUNTS, lower-internal.h; test-lower checks they agree).
 */
#define KILN_DEF_MAX_SSH_MOUNTS 16u

enum kiln_op_type {
	KILN_OP_SOURCE_IMAGE,
	KILN_OP_SOURCE_LOCAL,
	KILN_OP_SOURCE_HTTP,
	KILN_OP_SOURCE_GIT,
	KILN_OP_EXEC,
	KILN_OP_FILE,
	KILN_OP_MERGE,
};

/* An edge: output `output` of op number `op` (index into def->ops). */
struct kiln_edge {
	size_t op;
	unsigned output;
};

enum kiln_mount_kind {
	KILN_DEF_MOUNT_BIND,  /* a result tree (input) */
	KILN_DEF_MOUNT_CACHE,
	KILN_DEF_MOUNT_TMPFS,
	KILN_DEF_MOUNT_SECRET,
	KILN_DEF_MOUNT_SSH,   /* the client's ssh agent, forwarded (docs/definition.md) */
};

enum kiln_cache_sharing {
	KILN_SHARING_SHARED,
	KILN_SHARING_PRIVATE,
	KILN_SHARING_LOCKED,
};

struct kiln_def_mount {
	enum kiln_mount_kind kind;
	char *target;     /* absolute, cleaned; NULL for a SECRET given as env only */
	char *env;        /* SECRET: environment variable holding it, or NULL */
	int input;        /* BIND; CACHE: the seed: index into op->inputs, -1 = none */
	char *source;     /* BIND, seeded CACHE: subdirectory of the input ("" = root) */
	bool readonly;    /* BIND */
	char *cache_id;   /* CACHE: defaults to target; SECRET, SSH: the client's id */
	enum kiln_cache_sharing sharing; /* CACHE */
	int64_t mode;     /* CACHE (default 0755), SECRET (default 0400), SSH (0600) */
	int64_t uid, gid; /* CACHE, SECRET, SSH: -1 = 0 */
	bool required;    /* SECRET, SSH: fail when the client has no such id */
	uint64_t size;    /* TMPFS */
};

enum kiln_file_action_type {
	KILN_FA_COPY,
	KILN_FA_MKDIR,
	KILN_FA_MKFILE,
	KILN_FA_RM,
	KILN_FA_SYMLINK,
};

struct kiln_file_action {
	enum kiln_file_action_type type;
	int from;       /* COPY: index into op->inputs */
	char *src;      /* COPY: path in the from tree (may have wildcards) */
	char *path;     /* dest (COPY) / path (others); absolute, cleaned */
	char *target;   /* SYMLINK */
	char *data;     /* MKFILE */
	size_t data_len;
	int64_t mode;   /* -1 = default/keep */
	int64_t uid, gid; /* -1 = default/keep */
	char *user, *group; /* names to resolve in the destination (chown) */
	bool parents;   /* MKDIR: -p; COPY: create dest dirs (default true) */
	bool allow_not_found;   /* RM, COPY wildcards */
	bool follow_symlinks;   /* COPY: follow a symlink at src (default true) */
	bool contents_only;     /* COPY: copy a dir's contents (src ends "/.") */
	bool allow_wildcard;    /* COPY (default true) */
	bool extract;           /* COPY: unpack a tar archive source */
	char **exclude;         /* COPY: .dockerignore patterns not copied */
	size_t n_exclude;
	char **include;         /* COPY: only these (and what leads there) */
	size_t n_include;
	int64_t mtime;  /* -1 = keep (COPY) / now-less default 0 (MKDIR/MKFILE) */
};

struct kiln_op {
	char *id;   /* the id in the JSON */
	size_t index;
	const struct kiln_definition *def; /* the graph it is in (its inputs' ops) */
	enum kiln_op_type type;
	char *name; /* progress name; never part of a key */
	/*
	 * Where the op came from, for errors (a Dockerfile's path and the
	 * lines of its instruction; NULL and 0 when unknown); never part of
	 * a key.
	 */
	char *src_file;
	unsigned src_line, src_end_line;
	char *platform; /* normalized os/arch[/variant] */

	struct kiln_edge *inputs;
	size_t n_inputs;

	/* source.image */
	char *ref;
	/* source.http */
	char *url, *filename;
	struct kiln_digest checksum; /* unset when not given */
	int64_t http_mode;
	/* source.git (and url) */
	char *git_ref, *git_subdir; /* NULL when not given */
	bool keep_git_dir;
	/* source.local */
	char *local_path; /* absolute */
	char **include, **exclude;
	size_t n_include, n_exclude;
	/* exec */
	int rootfs; /* index into inputs */
	char **args, **env;
	size_t n_args, n_env;
	char *cwd, *user;
	bool network_host;
	struct kiln_def_mount *mounts;
	size_t n_mounts;
	/* file: rootfs (or -1 = scratch) and actions */
	struct kiln_file_action *actions;
	size_t n_actions;
	/* merge: inputs in order, later ones win */

	/* the op's canonical form (JSON, inputs as "$N") */
	char *form;
	/* digest of form + input op digests: the op's identity */
	struct kiln_digest digest;
};

struct kiln_definition {
	struct kiln_op *ops;
	size_t n_ops;
	struct kiln_edge output;
	struct kiln_edge *outputs; /* "outputs": more ops to resolve */
	size_t n_outputs;
	char *default_platform;
	char *source; /* file name for errors */
	/* What it was parsed from: kilnd parses the same text the same way. */
	char *text;
	char *base_dir;
};

/*
 * Parse and validate. filename is used in errors; base_dir resolves
 * relative paths (local contexts, oci-layout references).
 * default_platform is used for ops that do not name one.
 */
int kiln_definition_parse(const char *text, size_t len, const char *filename,
			  const char *base_dir, const char *default_platform,
			  struct kiln_definition **out, struct kiln_error **err);
int kiln_definition_load(const char *path, const char *default_platform,
			 struct kiln_definition **out, struct kiln_error **err);
void kiln_definition_free(struct kiln_definition *d);

/* The ops the outputs depend on, in dependency order (inputs first). */
int kiln_definition_topo(const struct kiln_definition *d, size_t **order,
			 size_t *n);

const char *kiln_op_type_name(enum kiln_op_type t);
