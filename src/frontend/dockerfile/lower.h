/*
 * Lowering a parsed Dockerfile to kiln's op graph (docs/definition.md)
 * for one or more target platforms.
 *
 * Every stage is instantiated per target platform; a stage whose platform
 * and inputs are the same for every target (FROM --platform=$BUILDPLATFORM)
 * lowers to identical ops, which the solver runs once. Alongside the graph,
 * lowering returns one image description per target platform: the op that
 * holds the final root file system, the ops whose results are its new
 * layers (one per filesystem-changing instruction of the final stage, in
 * order) and the image config.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "frontend/dockerfile/dockerfile.h"

/*
 * Resolve an image reference (as written after expansion, e.g. "busybox",
 * "localhost:5000/app:1", "oci-layout:///path:tag") for a platform:
 * returns the reference to put in the graph (pinned, e.g. with @sha256:...)
 * and the image config JSON text (caller frees both). Error names the ref.
 */
typedef int (*kiln_df_resolve_fn)(void *ud, const char *ref, const char *platform,
				  char **pinned_ref, char **config_json,
				  struct kiln_error **err);

/*
 * A warning about the build that does not fail it (a --build-arg that no
 * ARG declares); msg is borrowed for the call.
 */
typedef void (*kiln_df_warn_fn)(void *ud, const char *msg);

/*
 * A named build context (--build-context NAME=VALUE, BuildKit's
 * "context:NAME"): exactly one of dir and image is set.
 */
struct kiln_df_named_context {
	const char *name;  /* normalized: kiln_df_context_name() */
	const char *dir;   /* absolute local directory: a source.local op */
	const char *const *excludes; /* dir's .dockerignore patterns (parsed) */
	size_t n_excludes;
	const char *image; /* image ref as resolve takes it (registry ref or oci-layout://ABS) */
};

/*
 * The normalized form of a context name, as BuildKit's dockerui compares
 * them: a Docker reference in its familiar form without ":latest"
 * ("docker.io/library/alpine:latest" -> "alpine"). NULL when name is not a
 * valid reference name (empty, upper case, other characters).
 */
char *kiln_df_context_name(const char *name);

struct kiln_df_build_opts {
	const char *context_dir;   /* absolute */
	const char *dockerfile;    /* path, for errors and the context op */
	const char *const *platforms; /* normalized targets; at least one */
	size_t n_platforms;
	const char *build_platform; /* normalized, the machine's */
	const char *target;        /* stage name, or NULL for the last stage */
	const char *const *build_args; /* "K=V" (or "K" = take from env) */
	size_t n_build_args;
	const char *const *excludes;   /* .dockerignore patterns (parsed) */
	size_t n_excludes;
	int64_t source_date_epoch; /* -1 when unset */
	/*
	 * Named contexts, names unique. A stage named NAME is replaced by the
	 * context (its instructions are not lowered); FROM NAME and --from=NAME
	 * that name no earlier stage take the context before any image.
	 */
	const struct kiln_df_named_context *named_contexts;
	size_t n_named_contexts;
	kiln_df_resolve_fn resolve;
	void *resolve_ud;
	kiln_df_warn_fn warn;      /* NULL: warnings are dropped */
	void *warn_ud;
};

struct kiln_df_image {
	char *platform;     /* normalized target platform */
	char *output;       /* op id of the final root file system */
	char *base_op;      /* op id of the final stage's source.image, or NULL (scratch) */
	char **layer_ops;   /* op ids of the new layers, in order */
	size_t n_layer_ops;
	/*
	 * OCI image config for the platform (architecture, os, variant, config:
	 * Env, Cmd, Entrypoint, WorkingDir, User, Labels, ExposedPorts,
	 * Volumes, StopSignal, Healthcheck, Shell, OnBuild; history entries for
	 * this Dockerfile's instructions, those without a layer marked
	 * empty_layer; "created"). rootfs.diff_ids and the base image's
	 * history are filled in by the exporter.
	 */
	json_t *config;
};

void kiln_df_image_release(struct kiln_df_image *img);

/*
 * Lower df. A `# syntax=` directive must name the standard Dockerfile
 * frontend (docker/dockerfile:1...), which lowering implements; another
 * frontend is an error. After a successful lowering, the --build-arg names
 * that no ARG of the used stages (nor a global ARG) declares, other than
 * the predefined proxy and platform args, are one warning:
 * "One or more build-args [A B] were not consumed".
 *
 * Lower df. *definition gets the op graph as JSON text (version 1, with an
 * "output" naming the first image's output op and "outputs" listing every
 * image's output, base image and layer ops). Errors name file:line:column and the
 * instruction.
 */
int kiln_dockerfile_lower(const struct kiln_dockerfile *df,
			  const struct kiln_df_build_opts *opts, char **definition,
			  struct kiln_df_image **images, size_t *n_images,
			  struct kiln_error **err);
