#include "source/http.h"

#include <curl/curl.h>
#include <pthread.h>
#include <string.h>

#include "basic/alloc.h"

#define HTTP_MAX_BYTES (16ull << 30)

struct fetch {
	struct kiln_store_writer *w;
	uint64_t size;
	int error; /* writer error, -E2BIG past the limit */
};

static size_t on_data(char *data, size_t sz, size_t n, void *ud)
{
	struct fetch *f = ud;
	size_t len = sz * n;

	if (f->size + len > HTTP_MAX_BYTES) {
		f->error = -E2BIG;
		return 0;
	}
	f->error = kiln_store_writer_write(f->w, data, len);
	if (f->error < 0)
		return 0;
	f->size += len;
	return len;
}

static void global_init(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

static CURL *new_handle(const char *url, struct fetch *f, char *errbuf)
{
	CURL *c = curl_easy_init();

	if (!c)
		return NULL;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
	curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "kiln/0.1");
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	return c;
}

int kiln_http_fetch(struct kiln_store *s, const char *url,
		    const struct kiln_digest *expected, struct kiln_digest *out,
		    uint64_t *size, struct kiln_error **err)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	char errbuf[CURL_ERROR_SIZE] = "";
	struct fetch f = { 0 };
	CURLcode rc;
	CURL *c;
	int r;

	pthread_once(&once, global_init);
	r = kiln_store_writer_begin(s, &f.w, err);
	if (r < 0)
		return r;
	c = new_handle(url, &f, errbuf);
	if (!c) {
		kiln_store_writer_abort(f.w);
		return kiln_error_set(err, -ENOMEM, "%s: cannot create an HTTP handle", url);
	}
	rc = curl_easy_perform(c);
	if (rc != CURLE_OK) {
		long status = 0;

		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
		curl_easy_cleanup(c);
		kiln_store_writer_abort(f.w);
		if (f.error == -E2BIG)
			return kiln_error_set(err, -E2BIG, "%s: larger than %llu bytes", url,
					      (unsigned long long)HTTP_MAX_BYTES);
		if (status >= 400)
			return kiln_error_set(err, -EIO, "%s: HTTP status %ld", url, status);
		return kiln_error_set(err, -EIO, "%s: %s", url,
				      *errbuf ? errbuf : curl_easy_strerror(rc));
	}
	curl_easy_cleanup(c);
	r = kiln_store_writer_commit(f.w, expected, out, err);
	if (r < 0) {
		kiln_error_prefix(err, "%s", url);
		return r;
	}
	if (size)
		*size = f.size;
	return 0;
}
