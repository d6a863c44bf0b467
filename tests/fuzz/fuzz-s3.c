/*
 * libFuzzer target for src/s3's parsers of outside input: S3's XML
 * answers (listings, uploads, single elements, errors), AWS credentials
 * files and s3:// URLs. Any bytes are refused or parsed; never a crash,
 * a leak or a read past the input.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "basic/alloc.h"
#include "s3/s3-internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *doc = (const char *)data, *why = NULL;
	struct kiln_s3_list l;
	struct kiln_s3_credentials cr;
	struct kiln_s3_config cfg;
	struct kiln_error *err = NULL;
	char *s = NULL, *url;

	kiln_s3_list_init(&l);
	if (kiln_s3_parse_list(doc, size, &l, &why) < 0 && !why)
		__builtin_trap();
	kiln_s3_list_release(&l);
	(void)kiln_s3_parse_uploads(doc, size, &l, &why);
	kiln_s3_list_release(&l);
	(void)kiln_s3_xml_find(doc, size, "InitiateMultipartUploadResult",
			       "InitiateMultipartUploadResult/UploadId", &s);
	free(s);
	free(kiln_s3_error_text(doc, size));
	if (kiln_s3_credentials_parse(doc, size, "f", "default", &cr, &err) == 0 &&
	    (!cr.access_key || !cr.secret_key))
		__builtin_trap();
	kiln_s3_credentials_release(&cr);
	kiln_error_free(err);
	err = NULL;
	url = xstrndup(doc, size);
	kiln_s3_config_init(&cfg);
	(void)kiln_s3_config_parse_url(&cfg, url, &err);
	kiln_error_free(err);
	kiln_s3_config_release(&cfg);
	free(url);
	return 0;
}
