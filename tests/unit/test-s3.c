/*
 * Unit tests for src/s3: SigV4 encoding, the XML reader on good and
 * hostile answers, credentials files, s3:// URLs and options, and the
 * client's error mapping against a real HTTP server on 127.0.0.1 (the
 * signature itself is checked by radosgw in tests/integration).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "proto/http-server.h"
#include "s3/s3-internal-client.h"
#include "s3/s3-internal.h"

#define SECRET "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define TOKEN "FwoGZXIvYXdzEXAMPLETOKEN"

/* ---- encoding ---- */

static char *enc(const char *s, bool keep_slash)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(4096);

	assert_int_equal(kiln_s3_uri_encode(&sb, s, keep_slash), 0);
	return kiln_strbuf_detach(&sb, NULL);
}

static void test_uri_encode(void **state)
{
	char *s;

	s = enc("cas/sha256/ab-c_d.e~f", true);
	assert_string_equal(s, "cas/sha256/ab-c_d.e~f");
	free(s);
	s = enc("a b/c+d*e=f&g%h", true);
	assert_string_equal(s, "a%20b/c%2Bd%2Ae%3Df%26g%25h");
	free(s);
	s = enc("a/b", false);
	assert_string_equal(s, "a%2Fb");
	free(s);
	s = enc("\xc3\xa9!", true);
	assert_string_equal(s, "%C3%A9%21");
	free(s);
}

static void test_query(void **state)
{
	const char *list[] = { "prefix", "p/q r", "list-type", "2",
			       "continuation-token", "1/x+y=", "max-keys", "10" };
	const char *up[] = { "uploads", "" };
	const char *part[] = { "uploadId", "2~a.b", "partNumber", "3" };
	char *q;

	q = kiln_s3_query(list, 4);
	assert_string_equal(q, "continuation-token=1%2Fx%2By%3D&list-type=2&max-keys=10&prefix=p%2Fq%20r");
	free(q);
	q = kiln_s3_query(up, 1);
	assert_string_equal(q, "uploads=");
	free(q);
	q = kiln_s3_query(part, 2);
	assert_string_equal(q, "partNumber=3&uploadId=2~a.b");
	free(q);
}

static void test_key_check(void **state)
{
	char big[KILN_S3_KEY_MAX + 2];
	struct kiln_error *err = NULL;

	assert_int_equal(kiln_s3_key_check("p/cas/sha256/00ff", NULL), 0);
	assert_int_equal(kiln_s3_key_check("a..b/.c/d.", NULL), 0);
	assert_int_equal(kiln_s3_key_check("caf\xc3\xa9 x", NULL), 0);
	assert_int_equal(kiln_s3_key_check("", NULL), -EINVAL);
	assert_int_equal(kiln_s3_key_check("/a", NULL), -EINVAL);
	assert_int_equal(kiln_s3_key_check("a/../b", NULL), -EINVAL);
	assert_int_equal(kiln_s3_key_check("a/./b", NULL), -EINVAL);
	assert_int_equal(kiln_s3_key_check("..", NULL), -EINVAL);
	assert_int_equal(kiln_s3_key_check("a/.", NULL), -EINVAL);
	assert_int_equal(kiln_s3_key_check("a\x01", NULL), -EINVAL);
	assert_int_equal(kiln_s3_key_check("a\xff", NULL), -EINVAL);
	memset(big, 'k', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(kiln_s3_key_check(big, &err), -EINVAL);
	assert_non_null(strstr(err->msg, "1024"));
	kiln_error_free(err);
	big[KILN_S3_KEY_MAX] = '\0';
	assert_int_equal(kiln_s3_key_check(big, NULL), 0);
}

/* ---- XML ---- */

#define LIST_HEAD "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" \
	"<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"

static const char good_list[] = LIST_HEAD
	"<Name>bkt</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount>"
	"<MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>"
	"<!-- a comment <Contents> -->"
	"<Contents><Key>p/a&amp;b&lt;&#233;&#x263A;</Key>"
	"<LastModified>2026-12-07T10:11:12.345Z</LastModified>"
	"<ETag>&quot;0123abcd&quot;</ETag><Size>42</Size>"
	"<Owner><ID>x</ID><DisplayName>y</DisplayName></Owner>"
	"<StorageClass>STANDARD</StorageClass></Contents>"
	"<Contents><Key>p/z</Key><Size>0</Size><Empty/></Contents>"
	"<CommonPrefixes><Prefix>p/d/</Prefix></CommonPrefixes>"
	"<NextContinuationToken>1/tok+en=</NextContinuationToken>"
	"</ListBucketResult>\n";

static void test_xml_list_good(void **state)
{
	struct kiln_s3_list l;
	const char *why = NULL;

	kiln_s3_list_init(&l);
	assert_int_equal(kiln_s3_parse_list(good_list, strlen(good_list), &l, &why), 0);
	assert_int_equal(l.n, 2);
	assert_string_equal(l.objects[0].key, "p/a&b<\xc3\xa9\xe2\x98\xba");
	assert_int_equal(l.objects[0].size, 42);
	assert_string_equal(l.objects[0].etag, "0123abcd");
	assert_int_equal(l.objects[0].mtime, 1796638272);
	assert_string_equal(l.objects[1].key, "p/z");
	assert_int_equal(l.objects[1].size, 0);
	assert_true(l.truncated);
	assert_string_equal(l.next_token, "1/tok+en=");
	kiln_s3_list_release(&l);

	static const char last[] = LIST_HEAD "<IsTruncated>false</IsTruncated></ListBucketResult>";
	kiln_s3_list_init(&l);
	assert_int_equal(kiln_s3_parse_list(last, strlen(last), &l, &why), 0);
	assert_int_equal(l.n, 0);
	assert_false(l.truncated);
	kiln_s3_list_release(&l);
}

static int bad_list(const char *doc, size_t len)
{
	struct kiln_s3_list l;
	const char *why = NULL;
	int r;

	kiln_s3_list_init(&l);
	r = kiln_s3_parse_list(doc, len, &l, &why);
	if (r < 0)
		assert_non_null(why);
	kiln_s3_list_release(&l);
	return r;
}

#define BAD(s) assert_int_equal(bad_list((s), sizeof(s) - 1), -EBADMSG)

static void test_xml_list_hostile(void **state)
{
	size_t i, n;
	char *doc;
	struct kiln_strbuf sb = KILN_STRBUF_INIT(SIZE_MAX / 2);

	BAD("");
	BAD("   ");
	BAD(LIST_HEAD);                                     /* truncated */
	BAD(LIST_HEAD "<Contents><Key>a</Key></Contents"); /* truncated tag */
	BAD(LIST_HEAD "<Contents><Key>a</Key></Content></ListBucketResult>");
	BAD(LIST_HEAD "</ListBucketResult></ListBucketResult>");
	BAD(LIST_HEAD "</ListBucketResult><ListBucketResult></ListBucketResult>");
	BAD(LIST_HEAD "</ListBucketResult>junk");
	BAD("<!DOCTYPE x [<!ENTITY e \"boom\">]>" "<ListBucketResult>&e;</ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Key><![CDATA[a]]></Key></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Key>a&bogus;</Key></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Key>a&#0;b</Key></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Key>a&#xD800;</Key></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Key>a&#99999999999;</Key></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Key>a&amp</Key></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Key>a\0b</Key></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Size>1</Size></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Key></Key></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Key>a</Key><Key>b</Key></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Key>a</Key><Size>-1</Size></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Key>a</Key><Size>99999999999999999999</Size></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<Contents><Key>a</Key><LastModified>yesterday</LastModified></Contents></ListBucketResult>");
	BAD(LIST_HEAD "<IsTruncated>maybe</IsTruncated></ListBucketResult>");
	BAD(LIST_HEAD "<IsTruncated>true</IsTruncated></ListBucketResult>");
	BAD(LIST_HEAD "<IsTruncated>true</IsTruncated><NextContinuationToken></NextContinuationToken></ListBucketResult>");
	BAD("<Error><Code>AccessDenied</Code></Error>");
	BAD("<ListBucketResult a=\"x></ListBucketResult>");
	BAD("<ListBucketResult <x>></ListBucketResult>");
	BAD("<ListBucketResult><a><b><c><d><e><f><g><h>x</h></g></f></e></d></c></b></a></ListBucketResult>");

	/* Text over the limit of one element. */
	(void)kiln_strbuf_adds(&sb, LIST_HEAD "<Contents><Key>");
	for (i = 0; i < KILN_S3_XML_TEXT_MAX + 1; i++)
		(void)kiln_strbuf_addch(&sb, 'k');
	(void)kiln_strbuf_adds(&sb, "</Key></Contents></ListBucketResult>");
	doc = kiln_strbuf_detach(&sb, &n);
	assert_int_equal(bad_list(doc, n), -EBADMSG);
	free(doc);
	/* A key over 1024 bytes. */
	(void)kiln_strbuf_adds(&sb, LIST_HEAD "<Contents><Key>");
	for (i = 0; i < KILN_S3_KEY_MAX + 1; i++)
		(void)kiln_strbuf_addch(&sb, 'k');
	(void)kiln_strbuf_adds(&sb, "</Key></Contents></ListBucketResult>");
	doc = kiln_strbuf_detach(&sb, &n);
	assert_int_equal(bad_list(doc, n), -EBADMSG);
	free(doc);
	/* Too many entries. */
	(void)kiln_strbuf_adds(&sb, LIST_HEAD);
	for (i = 0; i < KILN_S3_LIST_MAX + 1; i++)
		(void)kiln_strbuf_adds(&sb, "<Contents><Key>k</Key></Contents>");
	(void)kiln_strbuf_adds(&sb, "</ListBucketResult>");
	doc = kiln_strbuf_detach(&sb, &n);
	assert_int_equal(bad_list(doc, n), -EBADMSG);
	/* Every prefix of a good document is refused, never read past. */
	for (i = 0; i < sizeof(good_list) - 2; i++) {
		char *cut = xstrndup(good_list, i);

		assert_int_equal(bad_list(cut, i), -EBADMSG);
		free(cut);
	}
	free(doc);
}

static void test_xml_find_and_errors(void **state)
{
	static const char init[] = "<?xml version=\"1.0\"?><InitiateMultipartUploadResult xmlns=\"x\">"
		"<Bucket>b</Bucket><Key>k</Key><UploadId>2~abc</UploadId></InitiateMultipartUploadResult>";
	static const char err[] = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code>"
		"<Message>The request\nsignature we calculated does not match</Message>"
		"<StringToSign>AWS4-HMAC-SHA256</StringToSign></Error>";
	static const char uploads[] = "<ListMultipartUploadsResult><Bucket>b</Bucket>"
		"<IsTruncated>false</IsTruncated><Upload><Key>big</Key><UploadId>2~u</UploadId>"
		"<Initiated>2026-12-07T10:11:12.000Z</Initiated></Upload></ListMultipartUploadsResult>";
	struct kiln_s3_list l;
	const char *why;
	char *s;

	assert_int_equal(kiln_s3_xml_find(init, strlen(init), "InitiateMultipartUploadResult",
					  "InitiateMultipartUploadResult/UploadId", &s), 0);
	assert_string_equal(s, "2~abc");
	free(s);
	assert_int_equal(kiln_s3_xml_find(init, strlen(init), "InitiateMultipartUploadResult",
					  "InitiateMultipartUploadResult/Nope", &s), -ENOENT);
	assert_int_equal(kiln_s3_xml_find(err, strlen(err), "InitiateMultipartUploadResult",
					  "InitiateMultipartUploadResult/UploadId", &s), -EBADMSG);
	assert_null(s);
	s = kiln_s3_error_text(err, strlen(err));
	assert_string_equal(s, "SignatureDoesNotMatch: The request signature we calculated does not match");
	free(s);
	assert_null(kiln_s3_error_text("not xml", 7));
	assert_null(kiln_s3_error_text(NULL, 0));
	kiln_s3_list_init(&l);
	assert_int_equal(kiln_s3_parse_uploads(uploads, strlen(uploads), &l, &why), 0);
	assert_int_equal(l.n, 1);
	assert_string_equal(l.objects[0].key, "big");
	assert_string_equal(l.objects[0].etag, "2~u");
	kiln_s3_list_release(&l);
}

static void test_parse_time(void **state)
{
	int64_t t;

	assert_int_equal(kiln_s3_parse_time("1970-01-01T00:00:10Z", &t), 0);
	assert_int_equal(t, 10);
	assert_int_equal(kiln_s3_parse_time("2026-12-07T10:11:12.345Z", &t), 0);
	assert_int_equal(t, 1796638272);
	assert_int_equal(kiln_s3_parse_time("2026-12-07T10:11:12", &t), -EINVAL);
	assert_int_equal(kiln_s3_parse_time("2026-12-07T10:11:12Zx", &t), -EINVAL);
	assert_int_equal(kiln_s3_parse_time("", &t), -EINVAL);
}

/* ---- credentials ---- */

static const char creds[] =
	"# comment\r\n"
	"[default]\r\n"
	"aws_access_key_id = AKIDDEFAULT\r\n"
	"aws_secret_access_key=" SECRET "\r\n"
	"\n"
	"; other\n"
	"[ci]\n"
	"aws_access_key_id=AKIDCI\n"
	"aws_secret_access_key = ci-secret\n"
	"aws_session_token = " TOKEN "\n"
	"region = eu-west-1\n"
	"s3 =\n"
	"  max_concurrent_requests = 20\n"
	"[half]\n"
	"aws_access_key_id=AKIDHALF\n";

static void test_credentials_parse(void **state)
{
	struct kiln_s3_credentials c;
	struct kiln_error *err = NULL;
	static const char bad[] = "[default]\naws_access_key_id=A\naws_secret_access_key " SECRET "\n";
	static const char bad_value[] = "[default]\naws_access_key_id=A B\n";

	assert_int_equal(kiln_s3_credentials_parse(creds, strlen(creds), "f", "default", &c, NULL), 0);
	assert_string_equal(c.access_key, "AKIDDEFAULT");
	assert_string_equal(c.secret_key, SECRET);
	assert_null(c.session_token);
	kiln_s3_credentials_release(&c);
	assert_null(c.secret_key);
	assert_int_equal(kiln_s3_credentials_parse(creds, strlen(creds), "f", "ci", &c, NULL), 0);
	assert_string_equal(c.access_key, "AKIDCI");
	assert_string_equal(c.secret_key, "ci-secret");
	assert_string_equal(c.session_token, TOKEN);
	kiln_s3_credentials_release(&c);

	assert_int_equal(kiln_s3_credentials_parse(creds, strlen(creds), "f", "nope", &c, &err), -ENOENT);
	assert_non_null(strstr(err->msg, "nope"));
	kiln_error_free(err), err = NULL;
	assert_int_equal(kiln_s3_credentials_parse(creds, strlen(creds), "f", "half", &c, &err), -EINVAL);
	kiln_error_free(err), err = NULL;
	assert_int_equal(kiln_s3_credentials_parse(bad, strlen(bad), "/x/creds", "default", &c, &err), -EINVAL);
	assert_string_equal(err->msg, "/x/creds:3: expected 'name = value'");
	assert_null(strstr(err->msg, SECRET));
	kiln_error_free(err), err = NULL;
	assert_int_equal(kiln_s3_credentials_parse(bad_value, strlen(bad_value), "f", "default", &c, &err), -EINVAL);
	assert_null(strstr(err->msg, "A B"));
	kiln_error_free(err), err = NULL;
	assert_int_equal(kiln_s3_credentials_parse("[default\n", 9, "f", "default", &c, &err), -EINVAL);
	kiln_error_free(err), err = NULL;
	assert_int_equal(kiln_s3_credentials_parse("[default]\0x", 11, "f", "default", &c, &err), -EINVAL);
	kiln_error_free(err);
}

static void test_credentials_load(void **state)
{
	char dir[] = "/tmp/kiln-s3-XXXXXX";
	struct kiln_s3_credentials c;
	struct kiln_error *err = NULL;
	_cleanup_free_ char *awsdir = NULL, *home_creds = NULL, *other = NULL;
	char *old_home = getenv("HOME") ? xstrdup(getenv("HOME")) : NULL;

	assert_non_null(mkdtemp(dir));
	awsdir = xasprintf("%s/.aws", dir);
	home_creds = xasprintf("%s/.aws/credentials", dir);
	other = xasprintf("%s/other", dir);
	assert_int_equal(mkdir(awsdir, 0700), 0);
	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, home_creds, creds, strlen(creds), 0600, false), 0);
	assert_int_equal(kiln_write_file_atomic_at(AT_FDCWD, other, "[x]\naws_access_key_id=O\naws_secret_access_key=os\n", 49, 0600, false), 0);
	setenv("HOME", dir, 1);
	unsetenv("AWS_PROFILE");

	setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
	setenv("AWS_SESSION_TOKEN", "envtoken", 1);
	assert_int_equal(kiln_s3_credentials_load(&c, NULL, NULL, NULL), 0);
	assert_string_equal(c.access_key, "AKIDENV");
	assert_string_equal(c.session_token, "envtoken");
	kiln_s3_credentials_release(&c);
	/* A file named by the caller wins over the environment. */
	assert_int_equal(kiln_s3_credentials_load(&c, other, "x", NULL), 0);
	assert_string_equal(c.access_key, "O");
	kiln_s3_credentials_release(&c);

	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	unsetenv("AWS_SESSION_TOKEN");
	assert_int_equal(kiln_s3_credentials_load(&c, NULL, NULL, NULL), 0);
	assert_string_equal(c.access_key, "AKIDDEFAULT");
	kiln_s3_credentials_release(&c);
	setenv("AWS_PROFILE", "ci", 1);
	assert_int_equal(kiln_s3_credentials_load(&c, NULL, NULL, NULL), 0);
	assert_string_equal(c.access_key, "AKIDCI");
	kiln_s3_credentials_release(&c);
	unsetenv("AWS_PROFILE");

	assert_int_equal(kiln_s3_credentials_load(&c, "/nonexistent/creds", NULL, &err), -ENOENT);
	assert_non_null(strstr(err->msg, "/nonexistent/creds"));
	kiln_error_free(err), err = NULL;
	unlink(home_creds);
	assert_int_equal(kiln_s3_credentials_load(&c, NULL, NULL, &err), -ENOENT);
	kiln_error_free(err);

	assert_int_equal(kiln_rm_rf(dir), 0);
	if (old_home)
		setenv("HOME", old_home, 1);
	free(old_home);
}

/* ---- configuration ---- */

static void test_config_url(void **state)
{
	struct kiln_s3_config cfg;
	struct kiln_error *err = NULL;

	kiln_s3_config_init(&cfg);
	assert_int_equal(kiln_s3_config_parse_url(&cfg, "s3://my-bucket/ci/cache/", NULL), 0);
	assert_string_equal(cfg.bucket, "my-bucket");
	assert_string_equal(cfg.prefix, "ci/cache");
	assert_int_equal(kiln_s3_config_parse_url(&cfg, "s3://b.example", NULL), 0);
	assert_string_equal(cfg.bucket, "b.example");
	assert_string_equal(cfg.prefix, "");
	assert_int_equal(kiln_s3_config_parse_url(&cfg, "s3://bkt//p", NULL), 0);
	assert_string_equal(cfg.prefix, "p");
	assert_int_equal(kiln_s3_config_parse_url(&cfg, "https://bkt/p", &err), -EINVAL);
	assert_non_null(strstr(err->msg, "https://bkt/p"));
	kiln_error_free(err), err = NULL;
	assert_int_equal(kiln_s3_config_parse_url(&cfg, "s3://", NULL), -EINVAL);
	assert_int_equal(kiln_s3_config_parse_url(&cfg, "s3://ab", NULL), -EINVAL);
	assert_int_equal(kiln_s3_config_parse_url(&cfg, "s3://-bkt", NULL), -EINVAL);
	assert_int_equal(kiln_s3_config_parse_url(&cfg, "s3://u:p@bkt/x", NULL), -EINVAL);
	assert_int_equal(kiln_s3_config_parse_url(&cfg, "s3://bkt/a/../b", &err), -EINVAL);
	assert_non_null(strstr(err->msg, "s3://bkt/a/../b"));
	kiln_error_free(err);
	assert_string_equal(cfg.bucket, "bkt"); /* failures change nothing */
	assert_string_equal(cfg.prefix, "p");
	kiln_s3_config_release(&cfg);
}

static void test_config_set(void **state)
{
	struct kiln_s3_config cfg;
	struct kiln_error *err = NULL;

	kiln_s3_config_init(&cfg);
	/* buildx's type=s3 names */
	assert_int_equal(kiln_s3_config_set(&cfg, "bucket", "bkt", NULL), 0);
	assert_int_equal(kiln_s3_config_set(&cfg, "region", "eu-west-1", NULL), 0);
	assert_int_equal(kiln_s3_config_set(&cfg, "endpoint_url", "HTTP://127.0.0.1:7480/", NULL), 0);
	assert_string_equal(cfg.endpoint, "http://127.0.0.1:7480");
	assert_int_equal(kiln_s3_config_set(&cfg, "prefix", "/a/b/", NULL), 0);
	assert_string_equal(cfg.prefix, "a/b");
	assert_int_equal(kiln_s3_config_set(&cfg, "use_path_style", "true", NULL), 0);
	assert_true(cfg.path_style);
	assert_int_equal(kiln_s3_config_set(&cfg, "path_style", "0", NULL), 0);
	assert_false(cfg.path_style);
	/* kiln's own */
	assert_int_equal(kiln_s3_config_set(&cfg, "endpoint", "minio.local:9000", NULL), 0);
	assert_string_equal(cfg.endpoint, "https://minio.local:9000");
	assert_int_equal(kiln_s3_config_set(&cfg, "endpoint", "[::1]:9000", NULL), 0);
	assert_string_equal(cfg.endpoint, "https://[::1]:9000");
	assert_int_equal(kiln_s3_config_set(&cfg, "credentials", "/etc/kiln/s3", NULL), 0);
	assert_string_equal(cfg.credentials_file, "/etc/kiln/s3");
	assert_int_equal(kiln_s3_config_set(&cfg, "profile", "ci", NULL), 0);
	assert_int_equal(kiln_s3_config_set(&cfg, "ca_file", "/ca.pem", NULL), 0);

	assert_int_equal(kiln_s3_config_set(&cfg, "mode", "max", &err), -EINVAL);
	assert_string_equal(err->msg, "unknown S3 option 'mode'");
	kiln_error_free(err), err = NULL;
	assert_int_equal(kiln_s3_config_set(&cfg, "use_path_style", "sure", &err), -EINVAL);
	assert_non_null(strstr(err->msg, "use_path_style"));
	kiln_error_free(err), err = NULL;
	assert_int_equal(kiln_s3_config_set(&cfg, "region", "EU WEST", NULL), -EINVAL);
	assert_int_equal(kiln_s3_config_set(&cfg, "bucket", "x", NULL), -EINVAL);
	assert_int_equal(kiln_s3_config_set(&cfg, "endpoint", "ftp://h", NULL), -EINVAL);
	assert_int_equal(kiln_s3_config_set(&cfg, "endpoint", "https://u:p@h", NULL), -EINVAL);
	assert_int_equal(kiln_s3_config_set(&cfg, "endpoint", "https://h/path", NULL), -EINVAL);
	assert_int_equal(kiln_s3_config_set(&cfg, "endpoint", "https://h?x=1", NULL), -EINVAL);
	assert_int_equal(kiln_s3_config_set(&cfg, "endpoint", "h:99999", NULL), -EINVAL);
	assert_int_equal(kiln_s3_config_set(&cfg, "endpoint", "h:", NULL), -EINVAL);
	assert_int_equal(kiln_s3_config_set(&cfg, "endpoint", "", NULL), -EINVAL);
	assert_string_equal(cfg.endpoint, "https://[::1]:9000");
	kiln_s3_config_release(&cfg);
	kiln_s3_config_release(NULL);
}

static const struct kiln_s3_credentials test_creds = {
	.access_key = "AKIDTEST", .secret_key = SECRET, .session_token = TOKEN,
};

static struct kiln_s3_client *client_for(const char *endpoint, bool path_style,
					 const char *region, long timeout_ms)
{
	struct kiln_s3_config cfg;
	struct kiln_s3_options o = { .credentials = &test_creds,
				     .limits = { .timeout_ms = timeout_ms,
						 .connect_timeout_ms = 1000 } };
	struct kiln_s3_client *c = NULL;

	kiln_s3_config_init(&cfg);
	cfg.bucket = xstrdup("bkt");
	cfg.endpoint = endpoint ? xstrdup(endpoint) : NULL;
	cfg.region = region ? xstrdup(region) : NULL;
	cfg.path_style = path_style;
	assert_int_equal(kiln_s3_client_new(&cfg, &o, &c, NULL), 0);
	kiln_s3_config_release(&cfg);
	return c;
}

static void test_client_addressing(void **state)
{
	struct kiln_s3_config cfg;
	struct kiln_s3_client *c;
	struct kiln_error *err = NULL;

	c = client_for(NULL, false, "eu-west-1", 0);
	assert_string_equal(c->base, "https://bkt.s3.eu-west-1.amazonaws.com");
	assert_string_equal(c->sigv4, "aws:amz:eu-west-1:s3");
	kiln_s3_client_free(c);
	c = client_for("http://127.0.0.1:7480", true, NULL, 0);
	assert_string_equal(c->base, "http://127.0.0.1:7480/bkt");
	assert_string_equal(c->sigv4, "aws:amz:us-east-1:s3");
	assert_string_equal(kiln_s3_client_name(c), "s3://bkt at http://127.0.0.1:7480");
	kiln_s3_client_free(c);
	c = client_for("https://minio.example:9000", false, NULL, 0);
	assert_string_equal(c->base, "https://bkt.minio.example:9000");
	kiln_s3_client_free(c);

	kiln_s3_config_init(&cfg);
	cfg.bucket = xstrdup("bkt");
	cfg.endpoint = xstrdup("http://127.0.0.1:7480");
	assert_int_equal(kiln_s3_client_new(&cfg, &(struct kiln_s3_options){ .credentials = &test_creds },
					    &c, &err), -EINVAL);
	assert_null(c);
	assert_non_null(strstr(err->msg, "path style"));
	kiln_error_free(err);
	kiln_s3_config_release(&cfg);
}

static void test_status_code(void **state)
{
	assert_int_equal(kiln_s3_status_code(200), 0);
	assert_int_equal(kiln_s3_status_code(206), 0);
	assert_int_equal(kiln_s3_status_code(204), 0);
	assert_int_equal(kiln_s3_status_code(404), -ENOENT);
	assert_int_equal(kiln_s3_status_code(403), -EACCES);
	assert_int_equal(kiln_s3_status_code(401), -EACCES);
	assert_int_equal(kiln_s3_status_code(400), -EINVAL);
	assert_int_equal(kiln_s3_status_code(416), -ERANGE);
	assert_int_equal(kiln_s3_status_code(500), -EIO);
	assert_int_equal(kiln_s3_status_code(503), -EIO);
	assert_int_equal(kiln_s3_status_code(301), -EIO);
}

/* ---- against a real HTTP server ---- */

struct seen {
	char sha[80], token[80], auth[32], range[64], method[8], query[256];
};

static struct seen seen;

static void remember(const struct kiln_http_server_req *req)
{
	const char *v;

	memset(&seen, 0, sizeof(seen));
	snprintf(seen.method, sizeof(seen.method), "%s", req->method);
	v = kiln_http_server_req_header(req, "x-amz-content-sha256");
	snprintf(seen.sha, sizeof(seen.sha), "%s", v ? v : "");
	v = kiln_http_server_req_header(req, "x-amz-security-token");
	snprintf(seen.token, sizeof(seen.token), "%s", v ? v : "");
	v = kiln_http_server_req_header(req, "Authorization");
	snprintf(seen.auth, sizeof(seen.auth), "%s", v ? v : "");
	v = kiln_http_server_req_header(req, "Range");
	snprintf(seen.range, sizeof(seen.range), "%s", v ? v : "");
}

static void xml_error(struct kiln_http_server_resp *resp, unsigned status,
		      const char *code)
{
	char *body = xasprintf("<Error><Code>%s</Code><Message>%s says no</Message></Error>",
			       code, code);

	kiln_http_resp_bytes(resp, status, "application/xml", body, strlen(body));
}

static int h_object(const struct kiln_http_server_req *req,
		    struct kiln_http_server_resp *resp, void *ud)
{
	remember(req);
	if (!strcmp(req->rest, "missing"))
		xml_error(resp, 404, "NoSuchKey");
	else if (!strcmp(req->rest, "denied"))
		xml_error(resp, 403, "AccessDenied");
	else if (!strcmp(req->rest, "boom"))
		xml_error(resp, 500, "InternalError");
	else if (!strcmp(req->rest, "norange")) /* ignores Range */
		kiln_http_resp_bytes(resp, 200, NULL, xstrdup("0123456789"), 10);
	else if (*seen.range) {
		kiln_http_resp_bytes(resp, 206, NULL, xstrdup("234"), 3);
		kiln_http_resp_header(resp, "Content-Range", "bytes 2-4/10");
	} else {
		kiln_http_resp_bytes(resp, 200, NULL, xstrdup("0123456789"), 10);
		kiln_http_resp_header(resp, "ETag", "\"etag-1\"");
	}
	return 0;
}

static int h_bucket(const struct kiln_http_server_req *req,
		    struct kiln_http_server_resp *resp, void *ud)
{
	remember(req);
	kiln_http_resp_bytes(resp, 200, "application/xml", xstrdup(good_list),
			     strlen(good_list));
	return 0;
}

static int h_huge_list(const struct kiln_http_server_req *req,
		       struct kiln_http_server_resp *resp, void *ud)
{
	size_t n = KILN_S3_XML_LIMIT + 10;
	char *big = xmalloc(n);

	memset(big, ' ', n);
	kiln_http_resp_bytes(resp, 200, "application/xml", big, n);
	return 0;
}

struct srv {
	struct kiln_http_server *srv;
	char url[128];
};

static void srv_start(struct srv *s, kiln_http_handler_fn bucket)
{
	struct kiln_http_server_options o = { .listen = "127.0.0.1:0", .stop_grace_ms = 200 };
	const char *methods[] = { "GET", "PUT", "DELETE" };
	size_t i;

	assert_int_equal(kiln_http_server_new(&o, &s->srv, NULL), 0);
	for (i = 0; i < ARRAY_SIZE(methods); i++)
		assert_int_equal(kiln_http_server_route(s->srv, &(struct kiln_http_route){
			.method = methods[i], .path = "/bkt/*", .fn = h_object,
			.body_limit = 1 << 20 }), 0);
	assert_int_equal(kiln_http_server_route(s->srv, &(struct kiln_http_route){
		.method = "GET", .path = "/bkt", .fn = bucket }), 0);
	assert_int_equal(kiln_http_server_start(s->srv, NULL), 0);
	snprintf(s->url, sizeof(s->url), "%s", kiln_http_server_url(s->srv));
}

static void assert_no_secret(const struct kiln_error *err)
{
	assert_non_null(err);
	assert_null(strstr(err->msg, SECRET));
	assert_null(strstr(err->msg, TOKEN));
	assert_null(strstr(err->msg, "AWS4-HMAC"));
}

static void test_client_http(void **state)
{
	struct srv s;
	struct kiln_s3_client *c;
	struct kiln_error *err = NULL;
	struct kiln_s3_object o;
	struct kiln_s3_list l;
	char *body;
	size_t len;

	srv_start(&s, h_bucket);
	c = client_for(s.url, true, "r1", 5000);
	assert_int_equal(kiln_s3_get(c, "a/ok", NULL, 100, &body, &len, NULL, NULL), 0);
	assert_int_equal(len, 10);
	assert_string_equal(body, "0123456789");
	free(body);
	assert_string_equal(seen.sha, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	assert_string_equal(seen.token, TOKEN);
	assert_memory_equal(seen.auth, "AWS4-HMAC-SHA256", 16);
	assert_int_equal(kiln_s3_get(c, "a/ok", NULL, 5, &body, &len, NULL, &err), -E2BIG);
	kiln_error_free(err), err = NULL;

	assert_int_equal(kiln_s3_get(c, "a/ok", &(struct kiln_s3_range){ 2, 4 }, 100, &body, &len, NULL, NULL), 0);
	assert_string_equal(seen.range, "bytes=2-4");
	assert_string_equal(body, "234");
	free(body);
	assert_int_equal(kiln_s3_get(c, "norange", &(struct kiln_s3_range){ 2, UINT64_MAX }, 100,
				     &body, &len, NULL, &err), -EBADMSG);
	assert_string_equal(seen.range, "bytes=2-");
	kiln_error_free(err), err = NULL;

	assert_int_equal(kiln_s3_head(c, "a/ok", &o, NULL, NULL), 0);
	assert_string_equal(seen.method, "HEAD");
	assert_int_equal(o.size, 10);
	assert_string_equal(o.etag, "etag-1");
	kiln_s3_object_release(&o);

	assert_int_equal(kiln_s3_put(c, "a/ok", "abc", 3, NULL, NULL), 0);
	assert_string_equal(seen.sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

	assert_int_equal(kiln_s3_get(c, "missing", NULL, 100, &body, &len, NULL, &err), -ENOENT);
	assert_no_secret(err);
	assert_non_null(strstr(err->msg, "/bkt/missing"));
	assert_non_null(strstr(err->msg, "HTTP 404: NoSuchKey"));
	kiln_error_free(err), err = NULL;
	assert_int_equal(kiln_s3_head(c, "missing", &o, NULL, NULL), -ENOENT);
	assert_int_equal(kiln_s3_put(c, "denied", "x", 1, NULL, &err), -EACCES);
	assert_no_secret(err);
	assert_non_null(strstr(err->msg, "HTTP 403: AccessDenied: AccessDenied says no (access key ...TEST)"));
	kiln_error_free(err), err = NULL;
	assert_int_equal(kiln_s3_delete(c, "boom", NULL, &err), -EIO);
	assert_non_null(strstr(err->msg, "HTTP 500"));
	kiln_error_free(err), err = NULL;
	assert_int_equal(kiln_s3_get(c, "a/../x", NULL, 100, &body, &len, NULL, NULL), -EINVAL);

	assert_int_equal(kiln_s3_list(c, "p/", "1/tok+en=", 2, &l, NULL, NULL), 0);
	assert_int_equal(l.n, 2);
	assert_string_equal(l.next_token, "1/tok+en=");
	kiln_s3_list_release(&l);
	kiln_s3_client_free(c);
	kiln_http_server_free(s.srv);

	srv_start(&s, h_huge_list);
	c = client_for(s.url, true, NULL, 5000);
	assert_int_equal(kiln_s3_list(c, NULL, NULL, 0, &l, NULL, &err), -EBADMSG);
	assert_non_null(strstr(err->msg, "larger than"));
	kiln_error_free(err);
	kiln_s3_client_free(c);
	kiln_http_server_free(s.srv);
}

/* A listening socket that never accepts: requests hang like a stopped server. */
static int silent_listener(char *url, size_t n, bool listen_too)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	if (listen_too)
		assert_int_equal(listen(fd, 16), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
	snprintf(url, n, "http://127.0.0.1:%u", ntohs(a.sin_port));
	return fd;
}

static void test_client_transport(void **state)
{
	char url[64];
	int fd = silent_listener(url, sizeof(url), true);
	struct kiln_s3_client *c = client_for(url, true, NULL, 800);
	struct kiln_error *err = NULL;
	struct kiln_s3_object o;
	int64_t t0 = s3_now_ms(), dt;
	char *body;
	size_t len;

	assert_int_equal(kiln_s3_get(c, "k", NULL, 10, &body, &len, NULL, &err), -ETIMEDOUT);
	dt = s3_now_ms() - t0;
	assert_true(dt >= 700 && dt < 2000);
	assert_no_secret(err);
	assert_non_null(strstr(err->msg, url));
	kiln_error_free(err), err = NULL;
	/* A per-call deadline overrides the client's. */
	t0 = s3_now_ms();
	assert_int_equal(kiln_s3_head(c, "k", &o, &(struct kiln_s3_limits){ .timeout_ms = 300 }, NULL),
			 -ETIMEDOUT);
	dt = s3_now_ms() - t0;
	assert_true(dt >= 250 && dt < 1500);
	kiln_s3_client_free(c);
	close(fd);

	/* Bound, not listening: refused. */
	fd = silent_listener(url, sizeof(url), false);
	c = client_for(url, true, NULL, 5000);
	assert_int_equal(kiln_s3_delete(c, "k", NULL, &err), -ECONNREFUSED);
	assert_no_secret(err);
	kiln_error_free(err);
	kiln_s3_client_free(c);
	close(fd);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_uri_encode),
		cmocka_unit_test(test_query),
		cmocka_unit_test(test_key_check),
		cmocka_unit_test(test_xml_list_good),
		cmocka_unit_test(test_xml_list_hostile),
		cmocka_unit_test(test_xml_find_and_errors),
		cmocka_unit_test(test_parse_time),
		cmocka_unit_test(test_credentials_parse),
		cmocka_unit_test(test_credentials_load),
		cmocka_unit_test(test_config_url),
		cmocka_unit_test(test_config_set),
		cmocka_unit_test(test_client_addressing),
		cmocka_unit_test(test_status_code),
		cmocka_unit_test(test_client_http),
		cmocka_unit_test(test_client_transport),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
