/* The ssh-agent filter, framing and forwarder (worker/ssh-agent.h). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/macro.h"
#include "worker/ssh-agent.h"

static void test_filter(void **state)
{
	static const uint8_t list[] = { 11 }, sign[] = { 13, 0 }, add[] = { 17 }, lock[] = { 22 },
			     ext[] = { 27 }, remove_all[] = { 19 };

	(void)state;
	assert_true(kiln_ssh_agent_request_allowed(list, 1));
	assert_true(kiln_ssh_agent_request_allowed(sign, 2));
	assert_false(kiln_ssh_agent_request_allowed(add, 1));
	assert_false(kiln_ssh_agent_request_allowed(lock, 1));
	assert_false(kiln_ssh_agent_request_allowed(ext, 1));
	assert_false(kiln_ssh_agent_request_allowed(remove_all, 1));
	assert_false(kiln_ssh_agent_request_allowed(list, 0));
	assert_false(kiln_ssh_agent_request_allowed(list, KILN_SSH_AGENT_MSG_MAX + 1));
	assert_true(kiln_ssh_agent_answer_allowed((const uint8_t[]){ 5 }, 1));
	assert_true(kiln_ssh_agent_answer_allowed((const uint8_t[]){ 12 }, 1));
	assert_true(kiln_ssh_agent_answer_allowed((const uint8_t[]){ 14 }, 1));
	assert_false(kiln_ssh_agent_answer_allowed((const uint8_t[]){ 6 }, 1));
}

static void test_framer(void **state)
{
	static const uint8_t msg[] = { 0, 0, 0, 3, 13, 'a', 'b' };
	struct kiln_ssh_framer f;
	size_t i;

	(void)state;
	kiln_ssh_framer_init(&f);
	for (i = 0; i < sizeof(msg); i++) { /* a byte at a time */
		assert_true(kiln_ssh_framer_want(&f) > 0);
		kiln_ssh_framer_feed(&f, msg + i, 1);
	}
	assert_int_equal(f.state, KILN_SSH_FRAME_DONE);
	assert_int_equal(f.len, 3);
	assert_memory_equal(f.body, msg + 4, 3);
	assert_int_equal(kiln_ssh_framer_want(&f), 0);
	kiln_ssh_framer_reset(&f);
	/* a zero length and one over the bound are bad */
	kiln_ssh_framer_feed(&f, (const uint8_t[]){ 0, 0, 0, 0 }, 4);
	assert_int_equal(f.state, KILN_SSH_FRAME_BAD);
	kiln_ssh_framer_reset(&f);
	kiln_ssh_framer_feed(&f, (const uint8_t[]){ 0, 4, 0, 1 }, 4);
	assert_int_equal(f.state, KILN_SSH_FRAME_BAD);
	kiln_ssh_framer_reset(&f);
	kiln_ssh_framer_feed(&f, (const uint8_t[]){ 0, 4, 0, 0 }, 4); /* exactly 256 KiB */
	assert_int_equal(f.state, KILN_SSH_FRAME_BODY);
	kiln_ssh_framer_reset(&f);
}

/* The relay: counts calls, answers IDENTITIES_ANSWER with no keys. */
static int calls;
/* slow: each call takes 300 ms; until_stop: it waits for *stop (20 s at most). */
static bool slow, until_stop;

static int relay(void *ud, const char *id, const uint8_t *req, size_t len,
		 const atomic_bool *stop, uint8_t **resp, size_t *resp_len)
{
	int i;

	(void)ud;
	if (slow)
		usleep(300000);
	for (i = 0; until_stop && i < 2000 && !atomic_load(stop); i++)
		usleep(10000);
	if (until_stop)
		return -ECANCELED;
	assert_string_equal(id, "default");
	assert_true(kiln_ssh_agent_request_allowed(req, len));
	calls++;
	*resp = xmalloc(5);
	memcpy(*resp, (const uint8_t[]){ 12, 0, 0, 0, 0 }, 5);
	*resp_len = 5;
	return 0;
}

static void test_forwarder(void **state)
{
	char dir[] = "/tmp/kiln-test-ssh-XXXXXX";
	struct kiln_ssh_forwarder *fw = NULL;
	struct kiln_error *err = NULL;
	_cleanup_free_ char *sock = NULL;
	uint8_t *resp = NULL;
	size_t rlen = 0;
	struct stat st;
	int dfd;

	(void)state;
	assert_non_null(mkdtemp(dir));
	dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	assert_true(dfd >= 0);
	assert_int_equal(kiln_ssh_forwarder_start(dfd, "a0", getuid(), getgid(), 0600, "default",
						  relay, NULL, &fw, &err), 0);
	sock = xasprintf("%s/a0", dir);
	assert_int_equal(stat(sock, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);
	/* listing passes through */
	assert_int_equal(kiln_ssh_agent_call(sock, (const uint8_t[]){ 11 }, 1, 5000, &resp, &rlen), 0);
	assert_int_equal(rlen, 5);
	assert_int_equal(resp[0], 12);
	free(resp);
	assert_int_equal(calls, 1);
	/* ADD_IDENTITY is refused before it leaves: the call checks it too, so speak raw */
	{
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		uint8_t hdr[4], body[1];
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

		memcpy(sa.sun_path, sock, strlen(sock) + 1);
		assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
		assert_int_equal(kiln_write_full(fd, (const uint8_t[]){ 0, 0, 0, 2, 17, 0 }, 6), 0);
		assert_int_equal(kiln_read_full(fd, hdr, 4), 0);
		assert_memory_equal(hdr, ((const uint8_t[]){ 0, 0, 0, 1 }), 4);
		assert_int_equal(kiln_read_full(fd, body, 1), 0);
		assert_int_equal(body[0], KILN_SSH_AGENT_FAILURE);
		/* a bad length closes the connection */
		assert_int_equal(kiln_write_full(fd, (const uint8_t[]){ 0xff, 0, 0, 0 }, 4), 0);
		assert_int_equal(read(fd, body, 1), 0);
		close(fd);
	}
	assert_int_equal(calls, 1);
	/* the refusal happens in kiln_ssh_agent_call too */
	assert_int_equal(kiln_ssh_agent_call(sock, (const uint8_t[]){ 17 }, 1, 5000, &resp, &rlen),
			 -EPERM);
	kiln_ssh_forwarder_free(fw);
	assert_int_equal(stat(sock, &st), -1); /* removed */
	close(dfd);
	rmdir(dir);
}

/* A forwarder in a new temporary directory; *sock its socket. */
static struct kiln_ssh_forwarder *forwarder(char *dir, int *dfd, char **sock)
{
	struct kiln_ssh_forwarder *fw = NULL;
	struct kiln_error *err = NULL;

	assert_non_null(mkdtemp(dir));
	*dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	assert_true(*dfd >= 0);
	assert_int_equal(kiln_ssh_forwarder_start(*dfd, "a0", getuid(), getgid(), 0600, "default",
						  relay, NULL, &fw, &err), 0);
	*sock = xasprintf("%s/a0", dir);
	return fw;
}

static int connect_to(const char *sock)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	memcpy(sa.sun_path, sock, strlen(sock) + 1);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/*
 * B1: a step that sends a request and hangs up before the answer costs
 * its connection only: no SIGPIPE (this process would die of it), and
 * the forwarder goes on serving.
 */
static void test_hangup_before_answer(void **state)
{
	char dir[] = "/tmp/kiln-test-ssh-XXXXXX";
	_cleanup_free_ char *sock = NULL;
	struct kiln_ssh_forwarder *fw;
	uint8_t *resp = NULL;
	size_t rlen = 0;
	int dfd, fd, k;

	(void)state;
	fw = forwarder(dir, &dfd, &sock);
	slow = true;
	calls = 0;
	for (k = 0; k < 3; k++) {
		fd = connect_to(sock);
		/* a big SIGN_REQUEST too: the answer write must fail, not block */
		assert_int_equal(kiln_write_full(fd, (const uint8_t[]){ 0, 0, 0, 1, 11 }, 5), 0);
		close(fd);
	}
	usleep(1200000); /* the forwarder answered the three, into closed sockets */
	slow = false;
	assert_int_equal(calls, 3);
	assert_int_equal(kiln_ssh_agent_call(sock, (const uint8_t[]){ 11 }, 1, 5000, &resp, &rlen), 0);
	assert_int_equal(resp[0], 12);
	free(resp);
	kiln_ssh_forwarder_free(fw);
	close(dfd);
	rmdir(dir);
}

/* R3: freeing the forwarder stops a relay call in progress at once. */
static void test_free_stops_relay(void **state)
{
	char dir[] = "/tmp/kiln-test-ssh-XXXXXX";
	_cleanup_free_ char *sock = NULL;
	struct kiln_ssh_forwarder *fw;
	uint64_t t0;
	int dfd, fd;

	(void)state;
	fw = forwarder(dir, &dfd, &sock);
	until_stop = true;
	fd = connect_to(sock);
	assert_int_equal(kiln_write_full(fd, (const uint8_t[]){ 0, 0, 0, 1, 11 }, 5), 0);
	usleep(100000); /* the relay is waiting */
	t0 = kiln_now_mono_ns();
	kiln_ssh_forwarder_free(fw);
	assert_true(kiln_now_mono_ns() - t0 < 2000000000ull);
	until_stop = false;
	close(fd);
	close(dfd);
	rmdir(dir);
}

/* kiln_ssh_agent_call keeps its deadline with an agent that never answers. */
static void test_call_deadline(void **state)
{
	char dir[] = "/tmp/kiln-test-ssh-XXXXXX";
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	_cleanup_free_ char *sock = NULL;
	uint8_t *resp = NULL;
	size_t rlen = 0;
	uint64_t t0;
	int lfd;

	(void)state;
	assert_non_null(mkdtemp(dir));
	sock = xasprintf("%s/mute", dir);
	memcpy(sa.sun_path, sock, strlen(sock) + 1);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(lfd, 4), 0); /* never accepts, never answers */
	t0 = kiln_now_mono_ns();
	assert_int_equal(kiln_ssh_agent_call(sock, (const uint8_t[]){ 11 }, 1, 300, &resp, &rlen),
			 -ETIMEDOUT);
	assert_true(kiln_now_mono_ns() - t0 < 2000000000ull);
	close(lfd);
	unlink(sock);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_filter),
		cmocka_unit_test(test_framer),
		cmocka_unit_test(test_forwarder),
		cmocka_unit_test(test_hangup_before_answer),
		cmocka_unit_test(test_free_stops_relay),
		cmocka_unit_test(test_call_deadline),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
