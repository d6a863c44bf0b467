/*
 * s3-tool: drives src/s3 for tests/integration/test-s3-client.sh.
 *
 *   s3-tool put KEY FILE            kiln_s3_put_fd (multipart from 64 MiB)
 *   s3-tool put-mp KEY FILE         kiln_s3_put_fd_multipart
 *   s3-tool put-str KEY TEXT        kiln_s3_put
 *   s3-tool get KEY FILE [START END]  kiln_s3_get_fd (END "-": to the end)
 *   s3-tool cat KEY                 kiln_s3_get, to stdout (limit 1 MiB)
 *   s3-tool head KEY                prints "SIZE ETAG"
 *   s3-tool delete KEY
 *   s3-tool touch KEY               kiln_s3_touch (CopyObject onto itself)
 *   s3-tool list PREFIX MAX_KEYS    every page; prints keys, then "pages N"
 *   s3-tool uploads PREFIX          prints "KEY UPLOADID" per upload
 *   s3-tool abort-all PREFIX        aborts them
 *
 * The bucket comes from S3_ENDPOINT, S3_BUCKET, S3_REGION (path style);
 * the keys from the environment (AWS_ACCESS_KEY_ID, ...) or
 * S3_TOOL_CREDENTIALS (a credentials file), as kiln reads them. S3_TIMEOUT_MS
 * and S3_CONNECT_TIMEOUT_MS set the limits of each call. A failure prints
 * "s3-tool: error: MESSAGE" and exits with the errno of the code (ENOENT
 * 2, EACCES 13, ETIMEDOUT 110, ...).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/parse-util.h"
#include "s3/s3.h"

static struct kiln_s3_limits limits;

static long env_ms(const char *name)
{
	const char *v = getenv(name);
	uint64_t u = 0;

	if (v && kiln_parse_u64(v, &u) < 0)
		u = 0;
	return (long)u;
}

static int open_client(struct kiln_s3_client **c, struct kiln_error **err)
{
	struct kiln_s3_config cfg;
	const char *v;
	int r = 0;

	kiln_s3_config_init(&cfg);
	cfg.path_style = true;
	if ((v = getenv("S3_BUCKET")))
		r = kiln_s3_config_set(&cfg, "bucket", v, err);
	if (r == 0 && (v = getenv("S3_ENDPOINT")))
		r = kiln_s3_config_set(&cfg, "endpoint_url", v, err);
	if (r == 0 && (v = getenv("S3_REGION")))
		r = kiln_s3_config_set(&cfg, "region", v, err);
	if (r == 0 && (v = getenv("S3_TOOL_CREDENTIALS")))
		r = kiln_s3_config_set(&cfg, "credentials", v, err);
	limits.timeout_ms = env_ms("S3_TIMEOUT_MS");
	limits.connect_timeout_ms = env_ms("S3_CONNECT_TIMEOUT_MS");
	if (r == 0)
		r = kiln_s3_client_new(&cfg, &(struct kiln_s3_options){ .limits = limits }, c, err);
	kiln_s3_config_release(&cfg);
	return r;
}

static int cmd_put(struct kiln_s3_client *c, char **a, bool multipart,
		   struct kiln_error **err)
{
	int fd = open(a[1], O_RDONLY | O_CLOEXEC), r;

	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "%s", a[1]);
	r = multipart ? kiln_s3_put_fd_multipart(c, a[0], fd, NULL, err)
		      : kiln_s3_put_fd(c, a[0], fd, NULL, err);
	close(fd);
	return r;
}

static int cmd_get(struct kiln_s3_client *c, char **a, int n,
		   struct kiln_error **err)
{
	struct kiln_s3_range range = { 0, UINT64_MAX };
	int fd, r;

	if (n == 4 && (kiln_parse_u64(a[2], &range.start) < 0 ||
		       (strcmp(a[3], "-") && kiln_parse_u64(a[3], &range.end) < 0)))
		return kiln_error_set(err, -EINVAL, "bad range");
	fd = open(a[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "%s", a[1]);
	r = kiln_s3_get_fd(c, a[0], n == 4 ? &range : NULL, fd, NULL, NULL, err);
	close(fd);
	return r;
}

static int cmd_cat(struct kiln_s3_client *c, char **a, struct kiln_error **err)
{
	char *body;
	size_t len;
	int r = kiln_s3_get(c, a[0], NULL, 1u << 20, &body, &len, NULL, err);

	if (r == 0) {
		fwrite(body, 1, len, stdout);
		free(body);
	}
	return r;
}

static int cmd_head(struct kiln_s3_client *c, char **a, struct kiln_error **err)
{
	struct kiln_s3_object o;
	int r = kiln_s3_head(c, a[0], &o, NULL, err);

	if (r == 0)
		printf("%llu %s\n", (unsigned long long)o.size, o.etag ? o.etag : "-");
	kiln_s3_object_release(&o);
	return r;
}

static int cmd_list(struct kiln_s3_client *c, char **a, struct kiln_error **err)
{
	struct kiln_s3_list l;
	char *token = NULL;
	uint32_t max = 0;
	unsigned pages = 0;
	size_t i;
	int r;

	if (kiln_parse_u32(a[1], &max) < 0)
		return kiln_error_set(err, -EINVAL, "bad MAX_KEYS");
	do {
		r = kiln_s3_list(c, a[0], token, max, &l, NULL, err);
		free(token);
		token = NULL;
		if (r < 0)
			return r;
		pages++;
		for (i = 0; i < l.n; i++)
			printf("%s %llu\n", l.objects[i].key,
			       (unsigned long long)l.objects[i].size);
		if (l.truncated)
			token = xstrdup(l.next_token);
		kiln_s3_list_release(&l);
	} while (token);
	printf("pages %u\n", pages);
	return 0;
}

static int cmd_uploads(struct kiln_s3_client *c, char **a, bool abort_them,
		       struct kiln_error **err)
{
	struct kiln_s3_list l;
	size_t i;
	int r = kiln_s3_list_uploads(c, a[0], &l, NULL, err);

	for (i = 0; r == 0 && i < l.n; i++) {
		printf("%s %s\n", l.objects[i].key, l.objects[i].etag ? l.objects[i].etag : "-");
		if (abort_them)
			r = kiln_s3_abort_upload(c, l.objects[i].key, l.objects[i].etag,
						 NULL, err);
	}
	kiln_s3_list_release(&l);
	return r;
}

static int run(struct kiln_s3_client *c, const char *cmd, char **a, int n,
	       struct kiln_error **err)
{
	if (!strcmp(cmd, "put") && n == 2)
		return cmd_put(c, a, false, err);
	if (!strcmp(cmd, "put-mp") && n == 2)
		return cmd_put(c, a, true, err);
	if (!strcmp(cmd, "put-str") && n == 2)
		return kiln_s3_put(c, a[0], a[1], strlen(a[1]), NULL, err);
	if (!strcmp(cmd, "get") && (n == 2 || n == 4))
		return cmd_get(c, a, n, err);
	if (!strcmp(cmd, "cat") && n == 1)
		return cmd_cat(c, a, err);
	if (!strcmp(cmd, "head") && n == 1)
		return cmd_head(c, a, err);
	if (!strcmp(cmd, "delete") && n == 1)
		return kiln_s3_delete(c, a[0], NULL, err);
	if (!strcmp(cmd, "touch") && n == 1)
		return kiln_s3_touch(c, a[0], NULL, err);
	if (!strcmp(cmd, "list") && n == 2)
		return cmd_list(c, a, err);
	if ((!strcmp(cmd, "uploads") || !strcmp(cmd, "abort-all")) && n == 1)
		return cmd_uploads(c, a, !strcmp(cmd, "abort-all"), err);
	return kiln_error_set(err, -EINVAL, "usage: see tests/integration/s3-tool.c");
}

int main(int argc, char **argv)
{
	struct kiln_s3_client *c = NULL;
	struct kiln_error *err = NULL;
	int r;

	if (argc < 2) {
		fprintf(stderr, "usage: s3-tool COMMAND ARGS... (see s3-tool.c)\n");
		return 2;
	}
	r = open_client(&c, &err);
	if (r == 0)
		r = run(c, argv[1], argv + 2, argc - 2, &err);
	kiln_s3_client_free(c);
	if (r < 0) {
		fprintf(stderr, "s3-tool: error: %s\n", kiln_error_msg(err));
		kiln_error_free(err);
		return -r & 0xff;
	}
	return 0;
}
