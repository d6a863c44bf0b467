#include "source/image-config.h"

#include <fcntl.h>
#include <jansson.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "source/image.h"
#include "registry/registry.h"

#define META_MAX (4u << 20)

/* Read blobs/<algo>/<hex> of a layout, verified against its digest. */
static int layout_blob(const char *layout, const struct kiln_digest *d, char **out,
		       struct kiln_error **err)
{
	char hex[KILN_DIGEST_HEXLEN];
	_cleanup_free_ char *path = NULL;
	struct kiln_digest got;
	size_t len;
	int r;

	path = xasprintf("%s/blobs/sha256/%s", layout, kiln_digest_hex(d, hex));
	r = kiln_read_file_at(AT_FDCWD, path, META_MAX, out, &len);
	if (r < 0)
		return kiln_error_seterrno(err, r, "%s: blob %s", layout, KILN_DIGEST_STR(d));
	kiln_digest_buf(*out, len, &got);
	if (!kiln_digest_eq(&got, d)) {
		free(*out);
		*out = NULL;
		return kiln_error_set(err, -EBADMSG, "%s: blob %s does not match its digest (got %s)",
				      layout, KILN_DIGEST_STR(d), KILN_DIGEST_STR(&got));
	}
	return 0;
}

/* The config digest named by a manifest's JSON text. */
static int manifest_config(const char *text, const char *what, struct kiln_digest *out,
			   struct kiln_error **err)
{
	json_t *m = json_loads(text, 0, NULL);
	const char *cd = json_string_value(json_object_get(json_object_get(m, "config"), "digest"));
	int r = 0;

	if (!cd || kiln_digest_parse(cd, out) < 0)
		r = kiln_error_set(err, -EINVAL, "%s: manifest has no valid config digest", what);
	json_decref(m);
	return r;
}

/* The platform manifest, then its config, from the registry (verified). */
static int registry_config(struct kiln_registry *reg, const struct kiln_image_ref *ir,
			   const char *ref, const struct kiln_digest *manifest,
			   char **config_json, struct kiln_error **err)
{
	struct kiln_registry_manifest m = { 0 };
	struct kiln_digest cfg;
	size_t len;
	int r;

	r = kiln_registry_get_manifest(reg, ir->registry, manifest, &m, err);
	if (r == 0)
		r = manifest_config(m.data, ref, &cfg, err);
	if (r == 0)
		r = kiln_registry_get_blob_buf(reg, ir->registry, &cfg, META_MAX, config_json,
					       &len, err);
	kiln_registry_manifest_release(&m);
	return r;
}

int kiln_image_config(const struct kiln_image_source *src, const char *ref,
		      const char *base_dir, const char *platform,
		      struct kiln_digest *manifest, char **config_json,
		      struct kiln_error **err)
{
	struct kiln_image_ref ir = { 0 };
	_cleanup_free_ char *man = NULL;
	struct kiln_digest cfg;
	int r;

	*config_json = NULL;
	r = kiln_image_ref_parse(ref, base_dir, &ir, err);
	if (r == 0)
		r = kiln_image_resolve(src, &ir, platform, manifest, err);
	if (r == 0 && ir.registry)
		r = registry_config(src->registry, &ir, ref, manifest, config_json, err);
	else if (r == 0) {
		r = layout_blob(ir.layout, manifest, &man, err);
		if (r == 0)
			r = manifest_config(man, ref, &cfg, err);
		if (r == 0)
			r = layout_blob(ir.layout, &cfg, config_json, err);
	}
	kiln_image_ref_release(&ir);
	return r;
}
