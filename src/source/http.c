#include "source/http.h"

#include <pthread.h>
#include <string.h>

#include "basic/alloc.h"
#include "proto/http-client.h"

#define HTTP_MAX_BYTES (16ull << 30)
#define HTTP_CONNECT_TIMEOUT_MS 30000L
#define HTTP_LOW_SPEED_TIME_S 60u
#define HTTP_MAX_REDIRECTS 10u

struct fetch {
	struct kiln_store_writer *w;
	uint64_t size;
};

/* The download streams into the store writer, within the size limit. */
static int on_data(void *ud, const void *data, size_t len)
{
	struct fetch *f = ud;

	if (f->size + len > HTTP_MAX_BYTES)
		return -E2BIG;
	f->size += len;
	return kiln_store_writer_write(f->w, data, len);
}

static struct kiln_http_client *client;

static void client_init(void)
{
	const struct kiln_http_client_options o = {
		.connect_timeout_ms = HTTP_CONNECT_TIMEOUT_MS,
	};

	client = kiln_http_client_new(&o);
}

int kiln_http_fetch(struct kiln_store *s, const char *url,
		    const struct kiln_digest *expected, struct kiln_digest *out,
		    uint64_t *size, struct kiln_error **err)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	struct kiln_http_result res;
	struct fetch f = { 0 };
	const struct kiln_http_call call = {
		.method = "GET",
		.url = url,
		.follow = true,
		.max_redirects = HTTP_MAX_REDIRECTS,
		.low_speed_time_s = HTTP_LOW_SPEED_TIME_S,
		.sink = on_data,
		.sink_ud = &f,
	};
	int r;

	pthread_once(&once, client_init);
	r = kiln_store_writer_begin(s, &f.w, err);
	if (r < 0)
		return r;
	r = kiln_http_client_do(client, &call, &res, err);
	if (r == -E2BIG)
		r = kiln_error_set(err, r, "%s: larger than %llu bytes", url,
				   (unsigned long long)HTTP_MAX_BYTES);
	else if (r == 0 && (res.status < 200 || res.status > 299))
		r = kiln_http_status_error(err, &call, &res);
	else if (r < 0) /* the sink's store error carries no message yet */
		kiln_error_seterrno(err, r, "%s: storing the download", url);
	kiln_http_result_release(&res);
	if (r < 0) {
		kiln_store_writer_abort(f.w);
		return r;
	}
	r = kiln_store_writer_commit(f.w, expected, out, err);
	if (r < 0) {
		kiln_error_prefix(err, "%s", url);
		return r;
	}
	if (size)
		*size = f.size;
	return 0;
}
