/*
 * SSH agent forwarding: the message filter and framing, a call to a
 * local agent, and the forwarder a step's RUN --mount=type=ssh talks to.
 */
#include <assert.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/macro.h"
#include "worker/ssh-agent.h"

#define MAX_CONNS KILN_SSH_FORWARDER_CONNS
/* A step that does not read its answer for this long loses the connection. */
#define SEND_TIMEOUT_S 10

#define MIN(a, b) ((a) < (b) ? (a) : (b))

bool kiln_ssh_agent_request_allowed(const uint8_t *msg, size_t len)
{
	return len >= 1 && len <= KILN_SSH_AGENT_MSG_MAX &&
	       (msg[0] == KILN_SSH_AGENTC_REQUEST_IDENTITIES ||
		msg[0] == KILN_SSH_AGENTC_SIGN_REQUEST);
}

bool kiln_ssh_agent_answer_allowed(const uint8_t *msg, size_t len)
{
	return len >= 1 && len <= KILN_SSH_AGENT_MSG_MAX &&
	       (msg[0] == KILN_SSH_AGENT_FAILURE || msg[0] == KILN_SSH_AGENT_IDENTITIES_ANSWER ||
		msg[0] == KILN_SSH_AGENT_SIGN_RESPONSE);
}

/* ---- framing ---- */

static void assert_framer_state(const struct kiln_ssh_framer *f)
{
#ifndef NDEBUG
	switch (f->state) {
	case KILN_SSH_FRAME_HEADER:
		assert(f->have < 4 && !f->body);
		break;
	case KILN_SSH_FRAME_BODY:
		assert(f->body && f->len >= 1 && f->len <= KILN_SSH_AGENT_MSG_MAX && f->have < f->len);
		break;
	case KILN_SSH_FRAME_DONE:
		assert(f->body && f->have == f->len);
		break;
	case KILN_SSH_FRAME_BAD:
		assert(!f->body);
		break;
	}
#else
	(void)f;
#endif
}

void kiln_ssh_framer_init(struct kiln_ssh_framer *f)
{
	*f = (struct kiln_ssh_framer){ .state = KILN_SSH_FRAME_HEADER };
}

void kiln_ssh_framer_reset(struct kiln_ssh_framer *f)
{
	free(f->body);
	kiln_ssh_framer_init(f);
}

size_t kiln_ssh_framer_want(const struct kiln_ssh_framer *f)
{
	assert_framer_state(f);
	switch (f->state) {
	case KILN_SSH_FRAME_HEADER:
		return 4 - f->have;
	case KILN_SSH_FRAME_BODY:
		return f->len - f->have;
	default:
		return 0;
	}
}

void kiln_ssh_framer_feed(struct kiln_ssh_framer *f, const uint8_t *p, size_t n)
{
	assert(n <= kiln_ssh_framer_want(f));
	if (f->state == KILN_SSH_FRAME_HEADER) {
		memcpy(f->hdr + f->have, p, n);
		f->have += (uint32_t)n;
		if (f->have < 4)
			return;
		f->len = (uint32_t)f->hdr[0] << 24 | (uint32_t)f->hdr[1] << 16 |
			 (uint32_t)f->hdr[2] << 8 | f->hdr[3];
		f->have = 0;
		if (f->len == 0 || f->len > KILN_SSH_AGENT_MSG_MAX) {
			f->state = KILN_SSH_FRAME_BAD;
			return;
		}
		f->body = xmalloc(f->len);
		f->state = KILN_SSH_FRAME_BODY;
	} else if (f->state == KILN_SSH_FRAME_BODY) {
		memcpy(f->body + f->have, p, n);
		f->have += (uint32_t)n;
		if (f->have == f->len)
			f->state = KILN_SSH_FRAME_DONE;
	}
	assert_framer_state(f);
}

/*
 * Wait until fd is ready for events or the deadline (CLOCK_MONOTONIC ns)
 * passes: 0 or -ETIMEDOUT.
 */
static int wait_fd(int fd, short events, uint64_t deadline_ns)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		uint64_t now = kiln_now_mono_ns();
		int k;

		if (now >= deadline_ns)
			return -ETIMEDOUT;
		k = poll(&p, 1, (int)((deadline_ns - now + 999999) / 1000000));
		if (k < 0 && errno != EINTR)
			return -errno;
		if (k > 0)
			return 0;
	}
}

/* Send all of buf by the deadline: a peer that hung up is -EPIPE, no SIGPIPE. */
static int send_full(int fd, const uint8_t *buf, size_t n, uint64_t deadline_ns)
{
	while (n > 0) {
		ssize_t k = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		int r;

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno == EAGAIN) {
			r = wait_fd(fd, POLLOUT, deadline_ns);
			if (r < 0)
				return r;
			continue;
		}
		if (k < 0)
			return -errno;
		buf += k;
		n -= (size_t)k;
	}
	return 0;
}

/* Write one framed message by the deadline. */
static int send_msg(int fd, const uint8_t *msg, size_t len, uint64_t deadline_ns)
{
	uint8_t hdr[4] = { (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
			   (uint8_t)len };
	int r = send_full(fd, hdr, 4, deadline_ns);

	return r < 0 ? r : send_full(fd, msg, len, deadline_ns);
}

static int sun_of(const char *path, struct sockaddr_un *sa)
{
	*sa = (struct sockaddr_un){ .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;
	memcpy(sa->sun_path, path, strlen(path) + 1);
	return 0;
}

int kiln_ssh_agent_call(const char *sock, const uint8_t *req, size_t len, int timeout_ms,
			uint8_t **resp, size_t *resp_len)
{
	uint64_t deadline = kiln_now_mono_ns() + (uint64_t)timeout_ms * 1000000u;
	struct kiln_ssh_framer f;
	struct sockaddr_un sa;
	_cleanup_close_ int fd = -1;
	int r;

	if (!kiln_ssh_agent_request_allowed(req, len))
		return -EPERM;
	r = sun_of(sock, &sa);
	if (r < 0)
		return r;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* A unix connect does not wait on a listener: no deadline needed. */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -errno;
	r = send_msg(fd, req, len, deadline);
	if (r < 0)
		return r;
	kiln_ssh_framer_init(&f);
	while (r == 0 && kiln_ssh_framer_want(&f) > 0) {
		uint8_t buf[16384];
		size_t want = MIN(kiln_ssh_framer_want(&f), sizeof(buf));
		ssize_t k;

		r = wait_fd(fd, POLLIN, deadline);
		if (r < 0)
			break;
		k = recv(fd, buf, want, MSG_DONTWAIT);
		if (k < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (k < 0)
			r = -errno;
		else if (k == 0)
			r = -EPROTO;
		else
			kiln_ssh_framer_feed(&f, buf, (size_t)k);
	}
	if (r == 0 && (f.state != KILN_SSH_FRAME_DONE ||
		       !kiln_ssh_agent_answer_allowed(f.body, f.len)))
		r = -EPROTO;
	if (r == 0) {
		*resp = TAKE_PTR(f.body);
		*resp_len = f.len;
	}
	kiln_ssh_framer_reset(&f);
	return r;
}

/* ---- the forwarder ---- */

struct conn {
	int fd;
	struct kiln_ssh_framer f;
};

struct kiln_ssh_forwarder {
	char *name, *id;
	int dirfd, lfd;
	int wake[2]; /* written once to stop the thread */
	atomic_bool stop; /* set before wake: the relay gives up */
	kiln_ssh_relay_fn relay;
	void *ud;
	pthread_t thread;
	struct conn conns[MAX_CONNS];
	size_t n_conns;
};

static void conn_close(struct kiln_ssh_forwarder *fw, size_t i)
{
	close(fw->conns[i].fd);
	kiln_ssh_framer_reset(&fw->conns[i].f);
	fw->conns[i] = fw->conns[--fw->n_conns];
}

/* Answer one complete request; false when the connection must go. */
static bool serve(struct kiln_ssh_forwarder *fw, struct conn *c)
{
	static const uint8_t failure[1] = { KILN_SSH_AGENT_FAILURE };
	uint8_t *resp = NULL;
	size_t rlen = 0;
	bool ok;

	if (!kiln_ssh_agent_request_allowed(c->f.body, c->f.len) ||
	    fw->relay(fw->ud, fw->id, c->f.body, c->f.len, &fw->stop, &resp, &rlen) < 0 ||
	    !kiln_ssh_agent_answer_allowed(resp, rlen)) {
		free(resp);
		resp = NULL;
	}
	/* The step may have hung up meanwhile: -EPIPE, this connection only. */
	ok = send_msg(c->fd, resp ? resp : failure, resp ? rlen : sizeof(failure),
		      kiln_now_mono_ns() + SEND_TIMEOUT_S * 1000000000ull) == 0;
	free(resp);
	kiln_ssh_framer_reset(&c->f);
	return ok;
}

/* Read what the framer wants; false when the connection must go. */
static bool conn_read(struct kiln_ssh_forwarder *fw, struct conn *c)
{
	uint8_t buf[16384];
	size_t want = MIN(kiln_ssh_framer_want(&c->f), sizeof(buf));
	ssize_t k = read(c->fd, buf, want);

	if (k < 0 && (errno == EINTR || errno == EAGAIN))
		return true;
	if (k <= 0)
		return false;
	kiln_ssh_framer_feed(&c->f, buf, (size_t)k);
	if (c->f.state == KILN_SSH_FRAME_BAD)
		return false; /* a bad length: this connection only */
	return c->f.state != KILN_SSH_FRAME_DONE || serve(fw, c);
}

static void accept_conn(struct kiln_ssh_forwarder *fw)
{
	int fd = accept4(fw->lfd, NULL, NULL, SOCK_CLOEXEC);

	if (fd < 0)
		return;
	if (fw->n_conns == MAX_CONNS) {
		close(fd);
		return;
	}
	fw->conns[fw->n_conns].fd = fd;
	kiln_ssh_framer_init(&fw->conns[fw->n_conns].f);
	fw->n_conns++;
}

static void *forwarder_main(void *arg)
{
	struct kiln_ssh_forwarder *fw = arg;

	for (;;) {
		struct pollfd p[MAX_CONNS + 2];
		size_t i, n = fw->n_conns;

		p[0] = (struct pollfd){ .fd = fw->wake[0], .events = POLLIN };
		p[1] = (struct pollfd){ .fd = fw->lfd, .events = POLLIN };
		for (i = 0; i < n; i++)
			p[i + 2] = (struct pollfd){ .fd = fw->conns[i].fd, .events = POLLIN };
		if (poll(p, n + 2, -1) < 0 && errno != EINTR)
			break;
		if (p[0].revents)
			break;
		/* From the last, so closing (which moves the last into i) is safe. */
		for (i = n; i-- > 0;)
			if (p[i + 2].revents && !conn_read(fw, &fw->conns[i]))
				conn_close(fw, i);
		if (p[1].revents & POLLIN)
			accept_conn(fw);
	}
	return NULL;
}

/*
 * A new listening socket name in dirfd: bound through /proc/self/fd so a
 * deep worker root does not run into sun_path's 108 bytes.
 */
static int listen_at(int dirfd, const char *name, uid_t uid, gid_t gid, mode_t mode, int *out)
{
	struct sockaddr_un sa;
	_cleanup_free_ char *path = xasprintf("/proc/self/fd/%d/%s", dirfd, name);
	_cleanup_close_ int fd = -1;
	int r = sun_of(path, &sa);

	if (r < 0)
		return r;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -errno;
	if (fchownat(dirfd, name, uid, gid, AT_SYMLINK_NOFOLLOW) < 0 ||
	    fchmodat(dirfd, name, mode, 0) < 0 || listen(fd, 16) < 0) {
		r = -errno;
		unlinkat(dirfd, name, 0);
		return r;
	}
	*out = TAKE_FD(fd);
	return 0;
}

int kiln_ssh_forwarder_start(int dirfd, const char *name, uid_t uid, gid_t gid, mode_t mode,
			     const char *id, kiln_ssh_relay_fn relay, void *ud,
			     struct kiln_ssh_forwarder **out, struct kiln_error **err)
{
	struct kiln_ssh_forwarder *fw = xcalloc(1, sizeof(*fw));
	int r;

	fw->lfd = fw->wake[0] = fw->wake[1] = -1;
	atomic_init(&fw->stop, false);
	fw->dirfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 3);
	r = fw->dirfd < 0 ? -errno : listen_at(fw->dirfd, name, uid, gid, mode, &fw->lfd);
	if (r < 0) {
		if (fw->dirfd >= 0)
			close(fw->dirfd);
		free(fw);
		return kiln_error_seterrno(err, r, "ssh agent socket %s", name);
	}
	fw->name = xstrdup(name);
	fw->id = xstrdup(id);
	fw->relay = relay;
	fw->ud = ud;
	if (pipe2(fw->wake, O_CLOEXEC) < 0) {
		r = kiln_error_seterrno(err, -errno, "ssh agent forwarder");
		goto fail;
	}
	r = -pthread_create(&fw->thread, NULL, forwarder_main, fw);
	if (r < 0) {
		kiln_error_seterrno(err, r, "ssh agent forwarder thread");
		goto fail;
	}
	*out = fw;
	return 0;
fail:
	close(fw->wake[0]);
	close(fw->wake[1]);
	fw->wake[0] = fw->wake[1] = -1;
	fw->thread = 0;
	kiln_ssh_forwarder_free(fw);
	return r;
}

void kiln_ssh_forwarder_free(struct kiln_ssh_forwarder *f)
{
	if (!f)
		return;
	atomic_store(&f->stop, true);
	if (f->wake[1] >= 0) {
		(void)!write(f->wake[1], "x", 1);
		pthread_join(f->thread, NULL);
	}
	while (f->n_conns > 0)
		conn_close(f, f->n_conns - 1);
	if (f->lfd >= 0)
		close(f->lfd);
	if (f->wake[0] >= 0)
		close(f->wake[0]);
	if (f->wake[1] >= 0)
		close(f->wake[1]);
	unlinkat(f->dirfd, f->name, 0);
	close(f->dirfd);
	free(f->name);
	free(f->id);
	free(f);
}
