/*
 * An S3 client on libcurl's SigV4 (docs/internals/s3.md): objects (GET
 * with Range, HEAD, PUT, DELETE), ListObjectsV2, multipart uploads;
 * path-style or virtual-hosted addressing on AWS or any S3-compatible
 * endpoint.
 *
 * Every call has a connect timeout and a total deadline and never blocks
 * past it (an aborted multipart upload excepted: see kiln_s3_put_fd()).
 * Errors name the method, the endpoint, the bucket and key and the HTTP
 * status or transport error; never the secret key or the session token.
 * One client may be used by several threads at once.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"

/* Defaults of struct kiln_s3_limits. */
#define KILN_S3_CONNECT_TIMEOUT_MS 5000L
#define KILN_S3_TIMEOUT_MS 300000L
/* Multipart: the smallest part kiln sends (but the last), the default. */
#define KILN_S3_MIN_PART_SIZE (8ull << 20)
#define KILN_S3_PART_SIZE (16ull << 20)
#define KILN_S3_MAX_PARTS 10000u
/* kiln_s3_put_fd() goes multipart from this size on. */
#define KILN_S3_MULTIPART_THRESHOLD (64ull << 20)
#define KILN_S3_PARALLEL_PARTS 4u
/* Time an abort after a failed multipart upload may take. */
#define KILN_S3_ABORT_TIMEOUT_MS 2000L
/* Most bytes of a listing or other XML answer read. */
#define KILN_S3_XML_LIMIT (8u << 20)
/* Longest key (bytes), as S3's. */
#define KILN_S3_KEY_MAX 1024u

/* Where a bucket is and how to reach it. Strings are owned (NULL: unset). */
struct kiln_s3_config {
	char *bucket;
	char *prefix;   /* key prefix for the caller's layout, no leading '/' */
	/*
	 * "https://host[:port]" or "http://host[:port]" (http only when
	 * spelled out); NULL: AWS, https://s3.REGION.amazonaws.com.
	 */
	char *endpoint;
	char *region;   /* NULL: "us-east-1" */
	bool path_style; /* ENDPOINT/BUCKET/KEY, else BUCKET.HOST/KEY */
	char *credentials_file; /* INI file as ~/.aws/credentials, or NULL */
	char *profile;  /* NULL: $AWS_PROFILE, else "default" */
	char *ca_file;  /* CA bundle for https, NULL: the system's */
};

void kiln_s3_config_init(struct kiln_s3_config *cfg);
void kiln_s3_config_release(struct kiln_s3_config *cfg);

/*
 * Set bucket and prefix from "s3://BUCKET[/PREFIX]" (prefix without
 * leading or trailing '/'). -EINVAL with a message naming url otherwise.
 */
int kiln_s3_config_parse_url(struct kiln_s3_config *cfg, const char *url,
			     struct kiln_error **err);

/*
 * Set one option by name, as the CLI's flags and buildx's type=s3 spec
 * spell them: bucket, prefix, region, endpoint (or endpoint_url),
 * path_style (or use_path_style: true/false/1/0), credentials (or
 * credentials_file), profile, ca_file. -EINVAL naming the key for an
 * unknown key or a bad value.
 */
int kiln_s3_config_set(struct kiln_s3_config *cfg, const char *key,
		       const char *value, struct kiln_error **err);

/* An access key; secrets are wiped when released. */
struct kiln_s3_credentials {
	char *access_key;
	char *secret_key;
	char *session_token; /* NULL when none */
};

void kiln_s3_credentials_release(struct kiln_s3_credentials *cr);

/*
 * Load credentials: from file (profile, else $AWS_PROFILE, else
 * "default") when file is set; else from AWS_ACCESS_KEY_ID,
 * AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN; else from
 * ~/.aws/credentials. -ENOENT when none is found, -EINVAL for a bad file
 * (the message names file and line, never a value).
 */
int kiln_s3_credentials_load(struct kiln_s3_credentials *cr, const char *file,
			     const char *profile, struct kiln_error **err);

/* Time bounds of one call; 0 fields take the client's (or the defaults). */
struct kiln_s3_limits {
	long connect_timeout_ms;
	long timeout_ms; /* the whole call, every request of it */
};

struct kiln_s3_options {
	struct kiln_s3_limits limits;
	uint64_t part_size;       /* 0: KILN_S3_PART_SIZE; >= MIN_PART_SIZE */
	unsigned parallel_parts;  /* 0: KILN_S3_PARALLEL_PARTS */
	uint64_t multipart_threshold; /* 0: KILN_S3_MULTIPART_THRESHOLD */
	/* Use these instead of kiln_s3_credentials_load() (copied). */
	const struct kiln_s3_credentials *credentials;
};

struct kiln_s3_client;

/*
 * A client for cfg's bucket (cfg is copied; opts may be NULL). Loads the
 * credentials unless opts gives them. -EINVAL for a bad configuration,
 * the credentials' codes.
 */
int kiln_s3_client_new(const struct kiln_s3_config *cfg,
		       const struct kiln_s3_options *opts,
		       struct kiln_s3_client **out, struct kiln_error **err);
void kiln_s3_client_free(struct kiln_s3_client *c);

/* "s3://BUCKET/PREFIX at ENDPOINT", for messages. */
const char *kiln_s3_client_name(const struct kiln_s3_client *c);

/*
 * Codes of every call: -ENOENT (404), -EACCES (401, 403), -ERANGE (416),
 * -EINVAL (400 or a bad key), -EIO (5xx and other statuses; the message
 * gives the status), -EBADMSG (an answer that does not parse or does not
 * fit), -ETIMEDOUT (connect timeout, deadline or stall), -ECONNREFUSED,
 * -EHOSTUNREACH, -EPROTO (TLS).
 */

/* Bytes [start, end] of an object; end UINT64_MAX: to its end. */
struct kiln_s3_range {
	uint64_t start, end;
};

/*
 * Read object key (range may be NULL: all of it) into *out (NUL-terminated,
 * *len bytes), at most limit bytes (> 0): -E2BIG over it.
 */
int kiln_s3_get(struct kiln_s3_client *c, const char *key,
		const struct kiln_s3_range *range, size_t limit, char **out,
		size_t *len, const struct kiln_s3_limits *lim,
		struct kiln_error **err);

/* Stream it to sink instead; a negative return of sink aborts with it. */
typedef int (*kiln_s3_sink_fn)(void *ud, const void *data, size_t len);
int kiln_s3_get_to(struct kiln_s3_client *c, const char *key,
		   const struct kiln_s3_range *range, kiln_s3_sink_fn sink,
		   void *ud, const struct kiln_s3_limits *lim,
		   struct kiln_error **err);
/* Stream it to fd at its offset; *written (may be NULL) gets the count. */
int kiln_s3_get_fd(struct kiln_s3_client *c, const char *key,
		   const struct kiln_s3_range *range, int fd, uint64_t *written,
		   const struct kiln_s3_limits *lim, struct kiln_error **err);

struct kiln_s3_object {
	char *key;      /* listings only */
	uint64_t size;
	char *etag;     /* quotes removed, or NULL */
	int64_t mtime;  /* seconds since the epoch, listings only (0 else) */
};
void kiln_s3_object_release(struct kiln_s3_object *o);

/* Size and ETag of key; -ENOENT when it does not exist. */
int kiln_s3_head(struct kiln_s3_client *c, const char *key,
		 struct kiln_s3_object *out, const struct kiln_s3_limits *lim,
		 struct kiln_error **err);

/* Write key from len bytes of buf (one request). */
int kiln_s3_put(struct kiln_s3_client *c, const char *key, const void *buf,
		size_t len, const struct kiln_s3_limits *lim,
		struct kiln_error **err);

/*
 * Write key from the whole file fd (from offset 0, whatever its position).
 * From the multipart threshold on, a multipart upload: parts of part_size
 * bytes, several in flight; on any failure the upload is aborted (the
 * abort may take KILN_S3_ABORT_TIMEOUT_MS past the deadline) and the key
 * is left as it was.
 */
int kiln_s3_put_fd(struct kiln_s3_client *c, const char *key, int fd,
		   const struct kiln_s3_limits *lim, struct kiln_error **err);
/* The same, always multipart. */
int kiln_s3_put_fd_multipart(struct kiln_s3_client *c, const char *key, int fd,
			     const struct kiln_s3_limits *lim,
			     struct kiln_error **err);

/*
 * Make key's LastModified now without moving its bytes (CopyObject onto
 * itself, metadata replaced): -ENOENT when it is gone. What a remote cache
 * writer relies on is so kept young for a gc running meanwhile.
 */
int kiln_s3_touch(struct kiln_s3_client *c, const char *key,
		  const struct kiln_s3_limits *lim, struct kiln_error **err);

/* Delete key; a key that does not exist is not an error (S3's 204). */
int kiln_s3_delete(struct kiln_s3_client *c, const char *key,
		   const struct kiln_s3_limits *lim, struct kiln_error **err);

/* One page of a listing. */
struct kiln_s3_list {
	struct kiln_s3_object *objects;
	size_t n, alloc;
	bool truncated;
	char *next_token; /* continuation token when truncated */
};
void kiln_s3_list_init(struct kiln_s3_list *l);
void kiln_s3_list_release(struct kiln_s3_list *l);

/*
 * ListObjectsV2: keys under prefix (NULL or "": all), from token (NULL:
 * the first page), at most max_keys (0: the server's 1000) into out
 * (initialized by the call, released by the caller).
 */
int kiln_s3_list(struct kiln_s3_client *c, const char *prefix,
		 const char *token, unsigned max_keys, struct kiln_s3_list *out,
		 const struct kiln_s3_limits *lim, struct kiln_error **err);

/*
 * ListMultipartUploads (first page) under prefix: the key and upload id
 * of each upload in progress, as objects with key set and etag holding
 * the upload id.
 */
int kiln_s3_list_uploads(struct kiln_s3_client *c, const char *prefix,
			 struct kiln_s3_list *out,
			 const struct kiln_s3_limits *lim,
			 struct kiln_error **err);
/* Abort upload_id of key. */
int kiln_s3_abort_upload(struct kiln_s3_client *c, const char *key,
			 const char *upload_id, const struct kiln_s3_limits *lim,
			 struct kiln_error **err);

/*
 * The flags of every program that takes a bucket, spelled the same way
 * (kilnd, kiln-worker, kiln prune): --cache s3://BUCKET/PREFIX and
 * --s3-endpoint URL, --s3-region R, --s3-path-style, --s3-credentials FILE.
 * For getopt_long, as the --tls-* flags are (proto/tls.h).
 */
enum {
	KILN_S3_OPT_CACHE = 0x1100,
	KILN_S3_OPT_ENDPOINT,
	KILN_S3_OPT_REGION,
	KILN_S3_OPT_PATH_STYLE,
	KILN_S3_OPT_CREDENTIALS,
};

#define KILN_S3_OPTIONS                                                       \
	{ "cache", required_argument, NULL, KILN_S3_OPT_CACHE },              \
	{ "s3-endpoint", required_argument, NULL, KILN_S3_OPT_ENDPOINT },     \
	{ "s3-region", required_argument, NULL, KILN_S3_OPT_REGION },         \
	{ "s3-path-style", no_argument, NULL, KILN_S3_OPT_PATH_STYLE },       \
	{ "s3-credentials", required_argument, NULL, KILN_S3_OPT_CREDENTIALS }

#define KILN_S3_OPTIONS_USAGE                                                  \
	"  --cache s3://BUCKET/PREFIX  the remote cache (docs/cache.md), with\n"   \
	"                             --s3-endpoint URL (default AWS), --s3-region R,\n" \
	"                             --s3-path-style, --s3-credentials FILE\n"

struct kiln_s3_flags {
	const char *cache; /* --cache as given (may be a directory for kiln prune) */
	const char *endpoint, *region, *credentials;
	bool path_style;
};

/* Store one of the flags' values; false when opt is not one of them. */
bool kiln_s3_flags_arg(struct kiln_s3_flags *f, int opt, const char *arg);

/*
 * The bucket the flags name into cfg (initialized here): 0, or -ENOENT
 * when no --cache s3://… was given (then no --s3-* may be: -EINVAL), or
 * -EINVAL naming the flag at fault.
 */
int kiln_s3_flags_config(const struct kiln_s3_flags *f, struct kiln_s3_config *cfg,
			 struct kiln_error **err);
