/*
 * The client's state and its one request path, shared by s3-client.c and
 * s3-multipart.c.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "proto/http-client.h"
#include "s3/s3-internal.h"

struct kiln_s3_client {
	struct kiln_http_client *http;
	char *base;     /* URL of the bucket: ENDPOINT/BUCKET or https://BUCKET.HOST */
	bool path_style;
	char *name;     /* "s3://BUCKET at ENDPOINT", for messages */
	char *bucket;
	char *sigv4;    /* "aws:amz:REGION:s3" */
	char *ca_file;
	struct kiln_s3_credentials cred;
	char *token_header; /* "x-amz-security-token: ...", or NULL */
	struct kiln_s3_limits limits;
	uint64_t part_size, threshold;
	unsigned parallel;
};

/* One request of a call. */
struct s3_req {
	const char *method;
	const char *key;     /* NULL: the bucket itself */
	const char *query;   /* canonical query (kiln_s3_query()), or NULL */
	const void *body;    /* in-memory body, or ... */
	size_t body_len;
	bool body_from_fd;   /* ... fd_size bytes of fd from offset 0 */
	int fd;
	uint64_t fd_size;
	const char *payload_sha256; /* hex; NULL: the empty body's */
	const char *content_type;
	const char *extra[3]; /* more header lines, NULL-ended */
	const struct kiln_s3_range *range;
	kiln_s3_sink_fn sink;
	void *sink_ud;
	size_t limit;        /* in-memory 2xx body limit without sink */
	int64_t deadline;    /* CLOCK_MONOTONIC ms */
	long connect_timeout_ms;
	bool (*abandon)(void *ud);
	void *abandon_ud;
};

int64_t s3_now_ms(void);
/* The deadline and connect timeout of a call from lim and the client's. */
void s3_call_limits(const struct kiln_s3_client *c,
		    const struct kiln_s3_limits *lim, int64_t *deadline,
		    long *connect_ms);
/*
 * Perform q. 0 with a 2xx in res (released by the caller); a transport
 * failure or any other status is an error naming method, URL and status.
 */
int s3_do(struct kiln_s3_client *c, const struct s3_req *q,
	  struct kiln_http_result *res, struct kiln_error **err);
/* The SHA-256 of len bytes of buf in hex (KILN_DIGEST_HEXLEN bytes). */
void s3_sha256_hex(const void *buf, size_t len, char *hex);
