/*
 * kiln build: the flags (build.c), the two builds (build-graph.c,
 * build-dockerfile.c) and what they share (build-common.c). The builds
 * call build-common.c, never each other or build.c.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>

#include "basic/error.h"
#include "proto/tls.h"
#include "s3/s3.h"
#include "solver/job.h"
#include "solver/progress.h"

#define MAX_OUTPUTS 16
#define MAX_LIST 64

struct build_args {
	const char *def;          /* --def: build an op graph */
	const char *context;      /* positional: Dockerfile build context */
	const char *file;         /* -f */
	const char *outputs[MAX_OUTPUTS];
	size_t n_outputs;
	enum kiln_progress_mode progress;
	bool no_cache;
	const char *platform;     /* --platform (a comma-separated list) */
	const char *runtime;
	const char *metadata_file;
	unsigned slots;
	const char *target;
	const char *build_args[MAX_LIST];
	size_t n_build_args;
	const char *tags[MAX_LIST];
	size_t n_tags;
	bool push;
	const char *secrets[MAX_LIST];
	size_t n_secrets;
	const char *ssh[MAX_LIST];       /* --ssh ID[=SOCKET|KEY[,KEY...]] */
	size_t n_ssh;
	const char *insecure[MAX_LIST];
	size_t n_insecure;
	const char *contexts[MAX_LIST];  /* --build-context NAME=VALUE, checked */
	size_t n_contexts;
	const char *endpoints[MAX_LIST]; /* REGISTRY=HOST[:PORT] */
	size_t n_endpoints;
	const char *cache_from; /* --cache-from SPEC, checked */
	const char *cache_to;   /* --cache-to SPEC, checked */
	const char *addr;       /* --addr: kilnd (else $KILN_ADDR, else embedded) */
	const char *token_file; /* --token-file (else $KILN_TOKEN) */
	struct kiln_tls tls;    /* --tls-ca/--tls-cert/--tls-key (else $KILN_TLS_*) */
};

/* The build's ssh agents (build-ssh.c): what --ssh names, by id. */
struct kiln_cli_ssh {
	char *ids[MAX_LIST];
	const char *specs[MAX_LIST]; /* the --ssh flag of each id */
	char *keys[MAX_LIST];  /* the key files of an id ("A,B"), or NULL: a socket */
	char *socks[MAX_LIST]; /* the agent socket of each id (key files: once started) */
	size_t n;
	pid_t pids[MAX_LIST];  /* ssh-agents started for key files */
	size_t n_pids;
	char *dir;             /* their private directory, or NULL */
	struct kiln_ssh_agents agents; /* for the solve options */
};

/* Check every --ssh (flags first: a typo must not cost a build). */
int kiln_cli_ssh_open(const struct build_args *a, struct kiln_cli_ssh *s,
		      struct kiln_error **err);
/*
 * Start an ssh-agent holding the keys of each id given key files: right
 * before the solve, from the main thread (the agents get SIGTERM when it
 * ends: kiln_child_exec).
 */
int kiln_cli_ssh_start(struct kiln_cli_ssh *s, struct kiln_error **err);
/* Kill the agents started, remove their directory: right after the solve. */
void kiln_cli_ssh_release(struct kiln_cli_ssh *s);

struct kiln_registry;

/*
 * The registry client for this build (--insecure-registry,
 * --registry-endpoint): what the frontend resolves images through and the
 * solve options carry to pins and pulls. The caller frees it.
 */
int kiln_cli_registry(const struct build_args *a, struct kiln_registry **out,
		      struct kiln_error **err);

/* A --cache-from/--cache-to SPEC (buildx's spelling), parsed. */
struct kiln_cli_cache_spec {
	char *dir;     /* type=local: src= (from) or dest= (to) */
	bool s3;       /* type=s3: s3cfg */
	struct kiln_s3_config s3cfg;
	bool all;      /* mode=max: every step's records (to) */
};

/* Parse SPEC of --cache-from (to false) or --cache-to (to true). */
int kiln_cli_cache_spec_parse(const char *spec, bool to,
			      struct kiln_cli_cache_spec *out,
			      struct kiln_error **err);
void kiln_cli_cache_spec_release(struct kiln_cli_cache_spec *s);

struct kiln_engine;
struct kiln_definition;
struct kiln_solve_options;
struct kiln_solve_result;

/*
 * Solve def: on kilnd when --addr or $KILN_ADDR names one (its outputs
 * then fetched into eng's store), else in this process with so.
 */
struct kiln_cli_cluster;
int kiln_cli_solve(const struct build_args *a, struct kiln_engine *eng,
		   const struct kiln_definition *def, const struct kiln_solve_options *so,
		   struct kiln_cli_cluster *cl, struct kiln_solve_result *res,
		   struct kiln_error **err);

/*
 * What a build asks of the cluster beside the solve (docs/cluster.md);
 * kiln_cli_solve's cl NULL means: fetch the result trees, no image.
 */
struct kiln_cli_cluster {
	json_t *image;        /* the image to make and push there, or NULL */
	bool fetch_trees;     /* type=local/tar: the trees come here */
	bool fetch_image;     /* type=oci: the image's blobs come here */
	json_t *image_result; /* out: {"digest", "pushed"} (a reference) */
};

/* Is this build going to kilnd (--addr or $KILN_ADDR)? */
bool kiln_cli_remote(const struct build_args *a);

/* The op-graph build, --def (build-graph.c). */
int kiln_build_graph(const struct build_args *a, struct kiln_error **err);

/* The Dockerfile build (build-dockerfile.c). */
int kiln_build_dockerfile(const struct build_args *a, struct kiln_error **err);

/* Write --metadata-file: result digests and step counts. */
int kiln_build_write_metadata(const char *path, const char *tree, unsigned run,
			      unsigned cached, const char *image_digest,
			      struct kiln_error **err);
