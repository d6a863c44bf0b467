/*
 * -o/--output specs and dispatch to the exporters.
 *
 * "type=local,dest=DIR", "type=tar,dest=FILE" (dest=- is stdout). As in
 * buildx, a spec without '=' is a shorthand: "DIR" means type=local and
 * "-" means type=tar to stdout. A spec without type= is type=local.
 */
#include "export/export.h"

#include <string.h>

#include "basic/alloc.h"

#define SPEC_MAX 4096

void kiln_export_spec_release(struct kiln_export_spec *s)
{
	if (!s)
		return;
	free(s->type);
	free(s->dest);
	free(s->name);
	free(s->push);
	free(s->compression);
	free(s->compression_level);
	free(s->force_compression);
	s->type = s->dest = s->name = s->push = NULL;
	s->compression = s->compression_level = s->force_compression = NULL;
}

static bool known_type(const char *type)
{
	return !strcmp(type, "local") || !strcmp(type, "tar") || !strcmp(type, "oci") ||
	       !strcmp(type, "image");
}

/* Take one "key=value" field (len bytes at f) into out. */
static int spec_field(const char *f, size_t len, struct kiln_export_spec *out,
		      struct kiln_error **err)
{
	const char *eq = memchr(f, '=', len);
	size_t klen = eq ? (size_t)(eq - f) : len;
	char **slot;

	if (!eq)
		return kiln_error_set(err, -EINVAL,
				      "output: field \"%.*s\" is not key=value",
				      (int)len, f);
	if (klen == 4 && !strncmp(f, "type", 4))
		slot = &out->type;
	else if (klen == 4 && !strncmp(f, "dest", 4))
		slot = &out->dest;
	else if (klen == 4 && !strncmp(f, "name", 4))
		slot = &out->name;
	else if (klen == 4 && !strncmp(f, "push", 4))
		slot = &out->push;
	else if (klen == 11 && !strncmp(f, "compression", 11))
		slot = &out->compression;
	else if (klen == 17 && !strncmp(f, "compression-level", 17))
		slot = &out->compression_level;
	else if (klen == 17 && !strncmp(f, "force-compression", 17))
		slot = &out->force_compression;
	else
		return kiln_error_set(err, -EINVAL, "output: unknown key \"%.*s\"",
				      (int)klen, f);
	if (*slot)
		return kiln_error_set(err, -EINVAL, "output: %.*s given twice",
				      (int)klen, f);
	*slot = xstrndup(eq + 1, len - klen - 1);
	return 0;
}

static int spec_fields(const char *spec, struct kiln_export_spec *out,
		       struct kiln_error **err)
{
	const char *p = spec;

	for (;;) {
		const char *comma = strchr(p, ',');
		size_t len = comma ? (size_t)(comma - p) : strlen(p);
		int r = spec_field(p, len, out, err);

		if (r < 0)
			return r;
		if (!comma)
			return 0;
		p = comma + 1;
	}
}

static int spec_check(struct kiln_export_spec *out, struct kiln_error **err)
{
	bool image, archive;

	if (!out->type)
		out->type = xstrdup("local");
	if (!known_type(out->type))
		return kiln_error_set(err, -EINVAL,
				      "output: unknown type \"%s\" (want local, tar, oci or image)",
				      out->type);
	image = !strcmp(out->type, "image");
	archive = image || !strcmp(out->type, "oci");
	if (!archive && (out->name || out->push || out->compression || out->compression_level ||
			 out->force_compression))
		return kiln_error_set(err, -EINVAL,
				      "output: type=%s takes only dest= (name, push and compression are for oci and image)",
				      out->type);
	if (out->compression && strcmp(out->compression, "gzip") && strcmp(out->compression, "zstd") &&
	    strcmp(out->compression, "uncompressed"))
		return kiln_error_set(err, -EINVAL,
				      "output: compression=%s: want gzip, zstd or uncompressed",
				      out->compression);
	if (out->force_compression && strcmp(out->force_compression, "true") &&
	    strcmp(out->force_compression, "false"))
		return kiln_error_set(err, -EINVAL, "output: force-compression=%s: want true or false",
				      out->force_compression);
	if (out->push && strcmp(out->push, "true") && strcmp(out->push, "false"))
		return kiln_error_set(err, -EINVAL, "output: push=%s: want true or false", out->push);
	if (image) {
		if (out->dest)
			return kiln_error_set(err, -EINVAL, "output: type=image takes name=, not dest=");
		if (!out->name || !*out->name)
			return kiln_error_set(err, -EINVAL, "output: type=image needs name=REF");
		return 0;
	}
	if (!out->dest || !*out->dest)
		return kiln_error_set(err, -EINVAL,
				      "output: type=%s needs dest=", out->type);
	if (!strcmp(out->type, "local") && !strcmp(out->dest, "-"))
		return kiln_error_set(err, -EINVAL,
				      "output: type=local cannot write to stdout (use type=tar,dest=-)");
	return 0;
}

int kiln_export_spec_parse(const char *spec, struct kiln_export_spec *out,
			   struct kiln_error **err)
{
	int r;

	memset(out, 0, sizeof(*out));
	if (!spec || !*spec)
		return kiln_error_set(err, -EINVAL, "output: empty spec");
	if (strlen(spec) > SPEC_MAX)
		return kiln_error_set(err, -E2BIG, "output: spec too long");
	if (!strchr(spec, '=')) {
		out->type = xstrdup(strcmp(spec, "-") ? "local" : "tar");
		out->dest = xstrdup(spec);
		return 0;
	}
	r = spec_fields(spec, out, err);
	if (r >= 0)
		r = spec_check(out, err);
	if (r < 0)
		kiln_export_spec_release(out);
	return r;
}

int kiln_export_run(struct kiln_store *s, const struct kiln_digest *tree,
		    const struct kiln_export_spec *spec,
		    struct kiln_error **err)
{
	if (!strcmp(spec->type, "local"))
		return kiln_export_local(s, tree, spec->dest, err);
	if (!strcmp(spec->type, "tar"))
		return kiln_export_tar(s, tree, spec->dest, err);
	return kiln_error_set(err, -EINVAL, "output: unknown type \"%s\"",
			      spec->type);
}
