/*
 * Multipart upload of a file: initiate, parts on a few threads
 * (basic/pool.h), complete; abort on any failure.
 *
 * States: INIT --initiate--> UPLOADING --all parts--> COMPLETING --200
 * with CompleteMultipartUploadResult--> DONE; a failure in UPLOADING or
 * COMPLETING goes to ABORTING (one DELETE ?uploadId, its own short
 * deadline) and then FAILED. The first part that fails stops the others
 * (their requests are abandoned), so the abort follows at once.
 */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/pool.h"
#include "cas/digest.h"
#include "s3/s3-internal-client.h"

enum mp_state { MP_INIT, MP_UPLOADING, MP_COMPLETING, MP_DONE, MP_ABORTING,
		MP_FAILED };

struct mp {
	struct kiln_s3_client *c;
	const char *key;
	int fd;
	uint64_t size, part_size;
	size_t nparts;
	char *upload_id;
	char **etags;     /* per part, as the server sent them */
	char **bufs;      /* per pool slot, part_size bytes */
	int64_t deadline;
	long connect_ms;
	atomic_bool failed;
	enum mp_state state;
};

static void assert_mp_state(const struct mp *m, enum mp_state want)
{
	assert(m->state == want);
	(void)m;
	(void)want;
}

static bool mp_abandon(void *ud)
{
	struct mp *m = ud;

	return atomic_load(&m->failed);
}

static char *mp_query(const char *upload_id, unsigned part)
{
	char num[16];
	const char *pairs[] = { "uploadId", upload_id, "partNumber", num };

	snprintf(num, sizeof(num), "%u", part);
	return kiln_s3_query(pairs, part ? 2 : 1);
}

static int initiate(struct mp *m, struct kiln_error **err)
{
	_cleanup_free_ char *query = kiln_s3_query((const char *[]){ "uploads", "" }, 1);
	struct s3_req q = { .method = "POST", .key = m->key, .query = query,
			    .body = "", .content_type = "application/octet-stream",
			    .limit = KILN_S3_XML_LIMIT, .deadline = m->deadline,
			    .connect_timeout_ms = m->connect_ms };
	struct kiln_http_result res;
	int r;

	assert_mp_state(m, MP_INIT);
	r = s3_do(m->c, &q, &res, err);
	if (r < 0)
		return r;
	r = kiln_s3_xml_find(res.body ? res.body : "", res.body_len,
			     "InitiateMultipartUploadResult",
			     "InitiateMultipartUploadResult/UploadId", &m->upload_id);
	kiln_http_result_release(&res);
	if (r < 0 || !*m->upload_id || strchr(m->upload_id, '\n'))
		return kiln_error_set(err, -EBADMSG,
				      "S3 multipart upload of %s: no UploadId in the answer",
				      m->key);
	m->state = MP_UPLOADING;
	return 0;
}

static int read_part(struct mp *m, size_t i, char *buf, size_t len)
{
	for (size_t off = 0; off < len;) {
		ssize_t k = pread(m->fd, buf + off, len - off,
				  (off_t)(i * m->part_size + off));

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		off += (size_t)k;
	}
	return 0;
}

static int upload_part(void *ud, size_t i, unsigned slot, struct kiln_error **err)
{
	struct mp *m = ud;
	uint64_t off = i * m->part_size;
	size_t len = (size_t)(m->size - off < m->part_size ? m->size - off : m->part_size);
	_cleanup_free_ char *query = mp_query(m->upload_id, (unsigned)i + 1);
	char hex[KILN_DIGEST_HEXLEN];
	struct s3_req q = { .method = "PUT", .key = m->key, .query = query,
			    .payload_sha256 = hex, .deadline = m->deadline,
			    .connect_timeout_ms = m->connect_ms,
			    .abandon = mp_abandon, .abandon_ud = m };
	struct kiln_http_result res;
	int r;

	if (!m->bufs[slot])
		m->bufs[slot] = xmalloc(m->part_size ? m->part_size : 1);
	r = read_part(m, i, m->bufs[slot], len);
	if (r < 0) {
		atomic_store(&m->failed, true);
		return kiln_error_seterrno(err, r, "S3 multipart upload of %s: reading part %zu",
					   m->key, i + 1);
	}
	s3_sha256_hex(m->bufs[slot], len, hex);
	q.body = m->bufs[slot];
	q.body_len = len;
	r = s3_do(m->c, &q, &res, err);
	if (r == 0 && !res.etag)
		r = kiln_error_set(err, -EBADMSG, "S3 multipart upload of %s: part %zu: no ETag",
				   m->key, i + 1);
	if (r == 0)
		m->etags[i] = xstrdup(res.etag);
	if (r == 0) {
		kiln_http_result_release(&res);
		return 0;
	}
	atomic_store(&m->failed, true);
	kiln_error_prefix(err, "S3 multipart upload of %s, part %zu of %zu",
			  m->key, i + 1, m->nparts);
	return r;
}

/* text with &, < and > escaped. */
static void add_escaped(struct kiln_strbuf *sb, const char *s)
{
	for (; *s; s++) {
		if (*s == '&')
			(void)kiln_strbuf_adds(sb, "&amp;");
		else if (*s == '<')
			(void)kiln_strbuf_adds(sb, "&lt;");
		else if (*s == '>')
			(void)kiln_strbuf_adds(sb, "&gt;");
		else
			(void)kiln_strbuf_addch(sb, *s);
	}
}

static char *complete_body(const struct mp *m, size_t *len)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(SIZE_MAX / 2);
	size_t i;

	(void)kiln_strbuf_adds(&sb, "<CompleteMultipartUpload>");
	for (i = 0; i < m->nparts; i++) {
		(void)kiln_strbuf_addf(&sb, "<Part><PartNumber>%zu</PartNumber><ETag>",
				       i + 1);
		add_escaped(&sb, m->etags[i]);
		(void)kiln_strbuf_adds(&sb, "</ETag></Part>");
	}
	(void)kiln_strbuf_adds(&sb, "</CompleteMultipartUpload>");
	return kiln_strbuf_detach(&sb, len);
}

/* S3 may answer 200 with an <Error>: only the result document is success. */
static int complete_answer(struct mp *m, const struct kiln_http_result *res,
			   struct kiln_error **err)
{
	_cleanup_free_ char *etag = NULL, *text = NULL;
	const char *doc = res->body ? res->body : "";

	if (kiln_s3_xml_find(doc, res->body_len, "CompleteMultipartUploadResult",
			     "CompleteMultipartUploadResult/ETag", &etag) == 0)
		return 0;
	text = kiln_s3_error_text(doc, res->body_len);
	if (text)
		return kiln_error_set(err, -EIO, "S3 multipart upload of %s: completion failed: %s",
				      m->key, text);
	return kiln_error_set(err, -EBADMSG,
			      "S3 multipart upload of %s: bad answer to the completion",
			      m->key);
}

static int complete(struct mp *m, struct kiln_error **err)
{
	_cleanup_free_ char *query = mp_query(m->upload_id, 0), *body = NULL;
	char hex[KILN_DIGEST_HEXLEN];
	struct s3_req q = { .method = "POST", .key = m->key, .query = query,
			    .content_type = "application/xml", .payload_sha256 = hex,
			    .limit = KILN_S3_XML_LIMIT, .deadline = m->deadline,
			    .connect_timeout_ms = m->connect_ms };
	struct kiln_http_result res;
	int r;

	assert_mp_state(m, MP_COMPLETING);
	body = complete_body(m, &q.body_len);
	q.body = body;
	s3_sha256_hex(body, q.body_len, hex);
	r = s3_do(m->c, &q, &res, err);
	if (r < 0)
		return r;
	r = complete_answer(m, &res, err);
	kiln_http_result_release(&res);
	if (r == 0)
		m->state = MP_DONE;
	return r;
}

int kiln_s3_abort_upload(struct kiln_s3_client *c, const char *key,
			 const char *upload_id, const struct kiln_s3_limits *lim,
			 struct kiln_error **err)
{
	_cleanup_free_ char *query = mp_query(upload_id, 0);
	struct s3_req q = { .method = "DELETE", .key = key, .query = query };
	struct kiln_http_result res;
	int r;

	if (kiln_s3_key_check(key, err) < 0)
		return -EINVAL;
	s3_call_limits(c, lim, &q.deadline, &q.connect_timeout_ms);
	r = s3_do(c, &q, &res, err);
	if (r == 0)
		kiln_http_result_release(&res);
	return r;
}

static void abort_upload(struct mp *m)
{
	struct kiln_s3_limits lim = { .connect_timeout_ms = m->connect_ms,
				      .timeout_ms = KILN_S3_ABORT_TIMEOUT_MS };

	m->state = MP_ABORTING;
	/* Best effort: a bucket lifecycle rule is the backstop. */
	(void)kiln_s3_abort_upload(m->c, m->key, m->upload_id, &lim, NULL);
	m->state = MP_FAILED;
}

static void plan_parts(struct mp *m)
{
	uint64_t min = (m->size + KILN_S3_MAX_PARTS - 1) / KILN_S3_MAX_PARTS;

	m->part_size = m->c->part_size;
	if (m->part_size < min)
		m->part_size = (min + (1u << 20) - 1) & ~(uint64_t)((1u << 20) - 1);
	m->nparts = m->size ? (size_t)((m->size + m->part_size - 1) / m->part_size) : 1;
}

static void mp_release(struct mp *m, unsigned threads)
{
	size_t i;

	for (i = 0; m->etags && i < m->nparts; i++)
		free(m->etags[i]);
	for (i = 0; m->bufs && i < threads; i++)
		free(m->bufs[i]);
	free(m->etags);
	free(m->bufs);
	free(m->upload_id);
}

int kiln_s3_put_fd_multipart(struct kiln_s3_client *c, const char *key, int fd,
			     const struct kiln_s3_limits *lim,
			     struct kiln_error **err)
{
	struct mp m = { .c = c, .key = key, .fd = fd, .state = MP_INIT };
	unsigned threads = c->parallel;
	struct stat st;
	int r;

	if (kiln_s3_key_check(key, err) < 0)
		return -EINVAL;
	if (fstat(fd, &st) < 0)
		return kiln_error_seterrno(err, -errno, "S3 PUT %s: fstat", key);
	m.size = (uint64_t)st.st_size;
	s3_call_limits(c, lim, &m.deadline, &m.connect_ms);
	plan_parts(&m);
	if (threads > m.nparts)
		threads = (unsigned)m.nparts;
	m.etags = xcalloc(m.nparts, sizeof(*m.etags));
	m.bufs = xcalloc(threads, sizeof(*m.bufs));
	r = initiate(&m, err);
	if (r == 0)
		r = kiln_pool_run(m.nparts, threads, upload_part, &m, err);
	if (r == 0) {
		m.state = MP_COMPLETING;
		r = complete(&m, err);
	}
	if (r < 0 && m.upload_id)
		abort_upload(&m);
	mp_release(&m, threads);
	return r;
}
