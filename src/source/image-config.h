/*
 * Resolving an image's config without importing it: what the Dockerfile
 * frontend needs to lower FROM (the base's Env, WorkingDir, User, Cmd,
 * Entrypoint, OnBuild...).
 */
#pragma once

#include "basic/error.h"
#include "cas/digest.h"
#include "source/image.h"

/*
 * Resolve ref ("oci-layout://PATH[:TAG]" or a registry reference) for
 * platform through src (kiln_image_resolve), then read its config
 * (kiln_image_read_config): *config_json gets the image config JSON text
 * and *manifest the platform manifest's digest. Every document read is
 * bounded and verified against its digest and size; registry documents
 * come from src->store when they are there and are kept there when
 * fetched. base_dir resolves relative layout paths.
 */
int kiln_image_config(const struct kiln_image_source *src, const char *ref,
		      const char *base_dir, const char *platform,
		      struct kiln_digest *manifest, char **config_json,
		      struct kiln_error **err);
