/*
 * A tiny static ssh-agent client for test-ssh.sh: the busybox image a
 * step runs in has no ssh tools. Built by the test for each platform
 * (gcc, aarch64-linux-gnu-gcc) and copied into the build context.
 *
 *   ssh-agent-probe list   the first identity's public key blob, base64
 *   ssh-agent-probe sign   the type of the answer to a sign request
 *   ssh-agent-probe add    the type of the answer to an ADD_IDENTITY
 *
 * The socket is $SSH_AUTH_SOCK. Exit 0 when the agent answered.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int xfer(int fd, void *buf, size_t n, int wr)
{
	char *p = buf;

	while (n > 0) {
		ssize_t k = wr ? write(fd, p, n) : read(fd, p, n);
		if (k <= 0)
			return -1;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = v >> 24, p[1] = v >> 16, p[2] = v >> 8, p[3] = v;
}

/* Send msg, read the answer into ans (static); its length or -1. */
static long call(const unsigned char *msg, uint32_t len, unsigned char **ans)
{
	static unsigned char buf[1 << 18];
	const char *path = getenv("SSH_AUTH_SOCK");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	unsigned char hdr[4];
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	uint32_t n;

	if (!path || strlen(path) >= sizeof(sa.sun_path) || fd < 0)
		return -1;
	strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -1;
	put32(hdr, len);
	if (xfer(fd, hdr, 4, 1) || xfer(fd, (void *)msg, len, 1) || xfer(fd, hdr, 4, 0))
		return -1;
	n = get32(hdr);
	if (n == 0 || n > sizeof(buf) || xfer(fd, buf, n, 0))
		return -1;
	close(fd);
	*ans = buf;
	return n;
}

static void b64(const unsigned char *p, size_t n)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i;

	for (i = 0; i + 2 < n; i += 3)
		printf("%c%c%c%c", a[p[i] >> 2], a[(p[i] & 3) << 4 | p[i + 1] >> 4],
		       a[(p[i + 1] & 15) << 2 | p[i + 2] >> 6], a[p[i + 2] & 63]);
	if (n - i == 1)
		printf("%c%c==", a[p[i] >> 2], a[(p[i] & 3) << 4]);
	else if (n - i == 2)
		printf("%c%c%c=", a[p[i] >> 2], a[(p[i] & 3) << 4 | p[i + 1] >> 4],
		       a[(p[i + 1] & 15) << 2]);
	printf("\n");
}

/* The first identity's key blob from an IDENTITIES_ANSWER (12), or NULL. */
static const unsigned char *first_key(uint32_t *klen)
{
	static const unsigned char req[1] = { 11 };
	unsigned char *ans;
	long n = call(req, 1, &ans);

	if (n < 9 || ans[0] != 12 || get32(ans + 1) == 0)
		return NULL;
	*klen = get32(ans + 5);
	if (*klen > (uint32_t)n - 9)
		return NULL;
	return ans + 9;
}

int main(int argc, char **argv)
{
	static unsigned char msg[4096];
	const unsigned char *key;
	unsigned char *ans;
	uint32_t klen, off = 0;
	long n;

	if (argc != 2)
		return 2;
	if (!strcmp(argv[1], "list")) {
		key = first_key(&klen);
		if (!key)
			return 1;
		b64(key, klen);
		return 0;
	}
	if (!strcmp(argv[1], "sign")) {
		key = first_key(&klen);
		if (!key || klen > 1024)
			return 1;
		memcpy(msg + 1024, key, klen); /* first_key's buffer is reused */
		msg[off++] = 13;
		put32(msg + off, klen), off += 4;
		memmove(msg + off, msg + 1024, klen), off += klen;
		put32(msg + off, 4), off += 4;
		memcpy(msg + off, "data", 4), off += 4;
		put32(msg + off, 0), off += 4;
	} else if (!strcmp(argv[1], "add")) {
		/* ADD_IDENTITY of an ed25519 key (contents do not matter). */
		static const char type[] = "ssh-ed25519";
		msg[off++] = 17;
		put32(msg + off, sizeof(type) - 1), off += 4;
		memcpy(msg + off, type, sizeof(type) - 1), off += sizeof(type) - 1;
		put32(msg + off, 32), off += 4 + 32;
		put32(msg + off, 64), off += 4 + 64;
		put32(msg + off, 4), off += 4;
		memcpy(msg + off, "evil", 4), off += 4;
	} else {
		return 2;
	}
	n = call(msg, off, &ans);
	if (n < 1)
		return 1;
	printf("%u\n", ans[0]);
	return 0;
}
