#include "source/image-config.h"

#include "source/image.h"

int kiln_image_config(const struct kiln_image_source *src, const char *ref,
		      const char *base_dir, const char *platform,
		      struct kiln_digest *manifest, char **config_json,
		      struct kiln_error **err)
{
	struct kiln_image_ref ir = { 0 };
	size_t len;
	int r;

	*config_json = NULL;
	r = kiln_image_ref_parse(ref, base_dir, &ir, err);
	if (r == 0)
		r = kiln_image_resolve(src, &ir, platform, manifest, err);
	if (r == 0)
		r = kiln_image_read_config(src, &ir, manifest, config_json, &len, err);
	kiln_image_ref_release(&ir);
	return r;
}
