/*
 * What only src/s3 and its tests see: SigV4 encoding, the bounded XML
 * reader, the credentials file parser, status mapping.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/strbuf.h"
#include "s3/s3.h"

/* Deepest XML element nesting read, longest element name. */
#define KILN_S3_XML_DEPTH 8u
#define KILN_S3_XML_NAME_MAX 64u
/* Most text of one element (a key is at most 1024 bytes, escaped 6×). */
#define KILN_S3_XML_TEXT_MAX 8192u
/* Most objects of one listing page (S3 sends at most 1000). */
#define KILN_S3_LIST_MAX 10000u
/* Largest credentials file read. */
#define KILN_S3_CREDENTIALS_LIMIT (256u << 10)

/*
 * Append s %-encoded as SigV4 wants: unreserved characters (A-Z a-z 0-9
 * - . _ ~) as they are, '/' too when keep_slash, every other byte %XX
 * (upper-case hex). -E2BIG when sb is full.
 */
int kiln_s3_uri_encode(struct kiln_strbuf *sb, const char *s, bool keep_slash);

/*
 * A canonical query string from n name/value pairs (value NULL or "":
 * "name="): each part encoded, sorted by name then value, joined by '&'.
 */
char *kiln_s3_query(const char *const *pairs, size_t n);

/* 0 when key is a key kiln sends, else -EINVAL with a message. */
int kiln_s3_key_check(const char *key, struct kiln_error **err);

/* "s3://bucket/key"-style checks of configuration values. */
int kiln_s3_bucket_check(const char *bucket, bool path_style,
			 struct kiln_error **err);
/*
 * Normalize endpoint into "scheme://host[:port]" (https:// when no scheme
 * is given); *host_out (may be NULL) gets host[:port]. -EINVAL otherwise.
 */
int kiln_s3_endpoint_parse(const char *endpoint, char **norm, char **host_out,
			   struct kiln_error **err);

/*
 * The XML reader: fn is called at each element's start (text NULL) and
 * end (text: the decoded character data directly inside it, NUL-ended)
 * with path, the names from the root joined by '/'. Comments, processing
 * instructions and attributes are skipped; a DOCTYPE, CDATA, unknown
 * entities, a NUL, mismatched tags, a depth over KILN_S3_XML_DEPTH, text
 * over KILN_S3_XML_TEXT_MAX or a truncated document are -EBADMSG. A
 * negative return of fn stops and is returned.
 */
typedef int (*kiln_s3_xml_fn)(void *ud, const char *path, const char *text,
			      size_t len);
int kiln_s3_xml_parse(const char *doc, size_t len, kiln_s3_xml_fn fn, void *ud);

/* A ListBucketResult into out (appended). -EBADMSG with a reason in *why. */
int kiln_s3_parse_list(const char *doc, size_t len, struct kiln_s3_list *out,
		       const char **why);
/* A ListMultipartUploadsResult (key and upload id as etag) into out. */
int kiln_s3_parse_uploads(const char *doc, size_t len, struct kiln_s3_list *out,
			  const char **why);
/*
 * The text of the element at path in doc (the first one) into *out; the
 * root must be root. -ENOENT when absent, -EBADMSG for another root or a
 * bad document.
 */
int kiln_s3_xml_find(const char *doc, size_t len, const char *root,
		     const char *path, char **out);
/* A copy of len bytes of s without surrounding double quotes (ETags). */
char *kiln_s3_unquote(const char *s, size_t len);
/* "Code: Message" of an S3 <Error> body, sanitized, or NULL. */
char *kiln_s3_error_text(const char *doc, size_t len);

/* "2009-10-12T17:50:30.000Z" into seconds since the epoch. */
int kiln_s3_parse_time(const char *s, int64_t *out);

/*
 * The profile's keys of an AWS credentials file's text (name for
 * messages). -ENOENT when the profile or its keys are absent, -EINVAL
 * naming name and line for a malformed line.
 */
int kiln_s3_credentials_parse(const char *text, size_t len, const char *name,
			      const char *profile,
			      struct kiln_s3_credentials *out,
			      struct kiln_error **err);

/* errno-style code of an HTTP status (0 for 2xx). */
int kiln_s3_status_code(long status);
