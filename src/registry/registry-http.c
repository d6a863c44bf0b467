/*
 * The registry's HTTP requests, on the one libcurl core in
 * proto/http-client.c: registry requests stream bodies as uploads and wait
 * longer for a connection than kiln's own API calls.
 */
#include <string.h>

#include "basic/alloc.h"
#include "basic/macro.h"
#include "proto/http-client.h"
#include "registry/registry.h"

#define CONNECT_TIMEOUT_MS 10000L

struct kiln_http {
	struct kiln_http_client *client;
};

struct kiln_http *kiln_http_new(void)
{
	const struct kiln_http_client_options opts = {
		.connect_timeout_ms = CONNECT_TIMEOUT_MS,
	};
	struct kiln_http *h = xcalloc(1, sizeof(*h));

	h->client = kiln_http_client_new(&opts);
	return h;
}

void kiln_http_free(struct kiln_http *h)
{
	if (!h)
		return;
	kiln_http_client_free(h->client);
	free(h);
}

void kiln_http_resp_release(struct kiln_http_resp *r)
{
	if (!r)
		return;
	free(r->body);
	free(r->content_type);
	free(r->location);
	free(r->www_authenticate);
	free(r->docker_digest);
	memset(r, 0, sizeof(*r));
}

static void take_result(struct kiln_http_resp *resp,
			struct kiln_http_result *res)
{
	resp->status = res->status;
	resp->body = TAKE_PTR(res->body);
	resp->body_len = res->body_len;
	resp->content_type = TAKE_PTR(res->content_type);
	resp->location = TAKE_PTR(res->location);
	resp->www_authenticate = TAKE_PTR(res->www_authenticate);
	resp->docker_digest = TAKE_PTR(res->docker_digest);
	resp->content_length = res->content_length;
	kiln_http_result_release(res);
}

int kiln_http_do(struct kiln_http *h, const struct kiln_http_req *req,
		 struct kiln_http_resp *resp, struct kiln_error **err)
{
	const struct kiln_http_call call = {
		.method = req->method,
		.url = req->url,
		.token = req->bearer,
		.headers = req->headers,
		.body = req->body,
		.body_len = req->body_len,
		.timeout_ms = req->timeout_ms,
		.low_speed_time_s = req->low_speed_time_s,
		.user = req->user,
		.password = req->password,
		.follow = req->follow,
		.tls_noverify = req->tls_noverify,
		.ca_file = req->ca_file,
		.upload = true,
		.body_from_fd = req->body_from_fd,
		.body_fd = req->body_fd,
		.body_fd_size = req->body_fd_size,
		.sink = req->sink,
		.sink_ud = req->sink_ud,
		.limit = req->limit,
	};
	struct kiln_http_result res;
	int r;

	memset(resp, 0, sizeof(*resp));
	r = kiln_http_client_do(h->client, &call, &res, err);
	if (r < 0)
		return r;
	take_result(resp, &res);
	return 0;
}
