/*
 * bench-peer: the pieces of bench/bench-transfer.sh that need C, one
 * subcommand each (the script runs them in two network namespaces):
 *
 *   serve STOREDIR ADDR:PORT TOKEN      serve a store (kiln_peer_server)
 *                                       until SIGTERM/SIGINT
 *   sendfile-server ADDR:PORT FILE      the baseline: a minimal HTTP/1.1
 *                                       server answering GET with FILE via
 *                                       sendfile(2), until killed
 *   make-file PATH SIZE                 SIZE pseudo-random bytes, fsynced
 *   make-tree DIR                       50,000 files of 4 KiB (the shape of
 *                                       bench-snapshot-small), synced
 *   create-files DIR N                  the file system's floor for a
 *                                       one-file-per-blob store: N new
 *                                       4 KiB files in DIR (no hash, no
 *                                       network, no fsync but one syncfs
 *                                       at the end); prints "seconds=S
 *                                       files=N"
 *   put-file STOREDIR FILE              store a copy; prints "DIGEST SIZE"
 *   put-tree STOREDIR DIR               store (adopt); prints the root
 *   pull-blob STOREDIR URL TOKEN DIGEST SIZE
 *   pull-tree STOREDIR URL TOKEN DIGEST
 *                                       pull into a durable store (opened
 *                                       first, untimed) and print
 *                                       "seconds=S bytes=B blobs=N
 *                                       requests=R files=F"
 *
 * put-* use a non-durable store and syncfs() at the end: it is setup, and
 * nothing the pulls measure should wait for its writeback. Environment:
 * BENCH_PULL_PARALLEL sets the pull's requests in flight (default: the
 * library's); BENCH_PULL_NONDURABLE=1 pulls into a non-durable store (no
 * fsyncs), to see what durability costs.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/parse-util.h"
#include "bench-util.h"
#include "cas/store.h"
#include "cas/tree.h"
#include "proto/http-server.h"
#include "peer/peer.h"

#define REQUEST_MAX 8192u
#define SENDFILE_CHUNK (1u << 30)

static struct kiln_store *open_store(const char *dir, bool durable)
{
	const struct kiln_store_options o = { .durable = durable };
	struct kiln_error *err = NULL;
	struct kiln_store *s = NULL;

	bench_check(kiln_store_open(dir, &o, &s, &err), err, dir);
	return s;
}

static void parse_digest(const char *s, struct kiln_digest *d)
{
	if (kiln_digest_parse(s, d) < 0)
		bench_die("not a digest: %s", s);
}

static uint64_t parse_u64(const char *s, const char *what)
{
	uint64_t v;

	if (kiln_parse_u64(s, &v) < 0)
		bench_die("%s: not a number: %s", what, s);
	return v;
}

/* ---- serving ---- */

static sigset_t stop_signals(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	return set;
}

static int cmd_serve(char **argv)
{
	struct kiln_http_server_options ho = { .listen = argv[1], .token = argv[2] };
	struct kiln_store *store = open_store(argv[0], true);
	struct kiln_http_server *http = NULL;
	struct kiln_peer_server *peer = NULL;
	struct kiln_error *err = NULL;
	sigset_t set = stop_signals();
	int sig;

	/* Blocked before the server's threads exist, so they inherit it. */
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	bench_check(kiln_http_server_new(&ho, &http, &err), err, "http server");
	bench_check(kiln_peer_server_new(http, store, NULL, &peer, &err), err,
		    "peer server");
	bench_check(kiln_http_server_start(http, &err), err, argv[1]);
	printf("serving %s on %s\n", argv[0], kiln_http_server_url(http));
	fflush(stdout);
	sigwait(&set, &sig);
	kiln_http_server_free(http);
	kiln_peer_server_free(peer);
	kiln_store_free(store);
	return 0;
}

static int listen_on(const char *addr)
{
	_cleanup_free_ char *host = xstrdup(addr);
	struct sockaddr_in sa = { .sin_family = AF_INET };
	char *colon = strrchr(host, ':');
	uint64_t port;
	int fd, one = 1;

	if (!colon)
		bench_die("%s: want ADDR:PORT", addr);
	*colon = '\0';
	port = parse_u64(colon + 1, "port");
	if (port == 0 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1)
		bench_die("%s: want an IPv4 ADDR:PORT", addr);
	sa.sin_port = htons((uint16_t)port);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		bench_die("socket: %s", strerror(errno));
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0)
		bench_die("listening on %s: %s", addr, strerror(errno));
	return fd;
}

/* Read the request head (bounded); true for GET, false for HEAD. */
static int read_request(int c, bool *get)
{
	char buf[REQUEST_MAX + 1];
	size_t len = 0;
	ssize_t k;

	while (len < REQUEST_MAX) {
		k = read(c, buf + len, REQUEST_MAX - len);
		if (k <= 0)
			return -1;
		len += (size_t)k;
		buf[len] = '\0';
		if (strstr(buf, "\r\n\r\n"))
			break;
	}
	if (!strstr(buf, "\r\n\r\n"))
		return -1;
	*get = !strncmp(buf, "GET ", 4);
	return *get || !strncmp(buf, "HEAD ", 5) ? 0 : -1;
}

static void serve_one(int c, int filefd, uint64_t size)
{
	char head[256];
	off_t off = 0;
	bool get;
	int n;

	if (read_request(c, &get) < 0) {
		static const char bad[] = "HTTP/1.1 400 Bad Request\r\n"
			"Content-Length: 0\r\nConnection: close\r\n\r\n";
		(void)!write(c, bad, sizeof(bad) - 1);
		return;
	}
	n = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\nContent-Length: "
		     "%llu\r\nContent-Type: application/octet-stream\r\n"
		     "Connection: close\r\n\r\n", (unsigned long long)size);
	if (kiln_write_full(c, head, (size_t)n) < 0 || !get)
		return;
	while ((uint64_t)off < size) {
		uint64_t left = size - (uint64_t)off;
		ssize_t k = sendfile(c, filefd, &off,
				     left < SENDFILE_CHUNK ? left : SENDFILE_CHUNK);

		if (k <= 0 && !(k < 0 && errno == EINTR))
			return;
	}
}

/* One connection at a time: the baseline is a single transfer. */
static int cmd_sendfile_server(char **argv)
{
	int lfd = listen_on(argv[0]);
	int filefd = open(argv[1], O_RDONLY | O_CLOEXEC);
	struct stat st;

	if (filefd < 0 || fstat(filefd, &st) < 0)
		bench_die("%s: %s", argv[1], strerror(errno));
	signal(SIGPIPE, SIG_IGN);
	printf("sendfile-server: %s on %s\n", argv[1], argv[0]);
	fflush(stdout);
	for (;;) {
		int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			bench_die("accept: %s", strerror(errno));
		}
		serve_one(c, filefd, (uint64_t)st.st_size);
		close(c);
	}
}

/* ---- data and setup ---- */

static int cmd_make_file(char **argv)
{
	bench_write_file(AT_FDCWD, argv[0], parse_u64(argv[1], "size"), 1, true);
	return 0;
}

static int cmd_make_tree(char **argv)
{
	printf("%zu files\n", bench_make_small_tree(argv[0], 200, 4096));
	return 0;
}

static int cmd_create_files(char **argv)
{
	uint64_t i, n = parse_u64(argv[1], "count");
	char buf[4096], name[32];
	double t0;
	int dfd, r;

	if (mkdir(argv[0], 0755) < 0)
		bench_die("%s: %s", argv[0], strerror(errno));
	dfd = open(argv[0], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		bench_die("%s: %s", argv[0], strerror(errno));
	memset(buf, 'x', sizeof(buf));
	t0 = bench_now();
	for (i = 0; i < n; i++) {
		int fd;

		snprintf(name, sizeof(name), "%llu", (unsigned long long)i);
		memcpy(buf, name, strlen(name)); /* distinct contents */
		fd = openat(dfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
		r = fd < 0 ? -errno : kiln_write_full(fd, buf, sizeof(buf));
		if (r < 0)
			bench_die("%s/%s: %s", argv[0], name, strerror(-r));
		close(fd);
	}
	if (syncfs(dfd) < 0)
		bench_die("syncfs %s: %s", argv[0], strerror(errno));
	printf("seconds=%.3f files=%llu\n", bench_now() - t0, (unsigned long long)n);
	close(dfd);
	return 0;
}

static int cmd_put_file(char **argv)
{
	struct kiln_store *s = open_store(argv[0], false);
	struct kiln_error *err = NULL;
	struct kiln_digest d;
	uint64_t size = 0;
	int fd = open(argv[1], O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		bench_die("%s: %s", argv[1], strerror(errno));
	bench_check(kiln_store_put_fd(s, fd, NULL, &d, &size, &err), err, argv[1]);
	close(fd);
	bench_syncfs(argv[0]);
	printf("%s %llu\n", KILN_DIGEST_STR(&d), (unsigned long long)size);
	kiln_store_free(s);
	return 0;
}

static int cmd_put_tree(char **argv)
{
	const struct kiln_tree_build_opts o = { .adopt = true };
	struct kiln_store *s = open_store(argv[0], false);
	struct kiln_error *err = NULL;
	struct kiln_digest d;
	int dfd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (dfd < 0)
		bench_die("%s: %s", argv[1], strerror(errno));
	bench_check(kiln_tree_from_dir(s, dfd, &o, &d, &err), err, argv[1]);
	close(dfd);
	bench_syncfs(argv[0]);
	printf("%s\n", KILN_DIGEST_STR(&d));
	kiln_store_free(s);
	return 0;
}

/* ---- pulling ---- */

static int count_file(const char *path, const struct kiln_tree_entry *e,
		      void *ud)
{
	(void)path;
	if (e->type == KILN_ENTRY_FILE)
		(*(size_t *)ud)++;
	return 0;
}

static void print_pull(double s, const struct kiln_peer_stats *st, size_t files)
{
	printf("seconds=%.3f bytes=%llu blobs=%llu requests=%llu files=%zu\n", s,
	       (unsigned long long)st->bytes, (unsigned long long)st->blobs,
	       (unsigned long long)st->requests, files);
}

static int cmd_pull(char **argv, bool tree)
{
	const struct kiln_peer_source src = { .url = argv[1], .token = argv[2] };
	/* 0: the library's default. */
	const struct kiln_peer_pull_options o = {
		.parallel = getenv("BENCH_PULL_PARALLEL")
				    ? bench_env_uint("BENCH_PULL_PARALLEL", 1) : 0,
	};
	struct kiln_store *s = open_store(argv[0],
					  !getenv("BENCH_PULL_NONDURABLE"));
	struct kiln_peer_stats st = { 0 };
	struct kiln_error *err = NULL;
	struct kiln_digest d;
	size_t files = 1;
	double t0;
	int r;

	parse_digest(argv[3], &d);
	t0 = bench_now();
	if (tree)
		r = kiln_peer_pull_tree(s, &d, &src, 1, &o, &st, &err);
	else
		r = kiln_peer_pull_blob(s, &d, parse_u64(argv[4], "size"), &src,
					1, &o, &st, &err);
	t0 = bench_now() - t0;
	bench_check(r, err, tree ? "pull-tree" : "pull-blob");
	if (tree) {
		files = 0;
		bench_check(kiln_tree_walk(s, &d, count_file, &files, &err), err,
			    "walking the pulled tree");
	}
	print_pull(t0, &st, files);
	kiln_store_free(s);
	return 0;
}

static int cmd_pull_blob(char **argv) { return cmd_pull(argv, false); }
static int cmd_pull_tree(char **argv) { return cmd_pull(argv, true); }

static const struct {
	const char *name;
	int argc;
	int (*fn)(char **argv);
	const char *usage;
} cmds[] = {
	{ "serve", 3, cmd_serve, "STOREDIR ADDR:PORT TOKEN" },
	{ "sendfile-server", 2, cmd_sendfile_server, "ADDR:PORT FILE" },
	{ "make-file", 2, cmd_make_file, "PATH SIZE" },
	{ "make-tree", 1, cmd_make_tree, "DIR" },
	{ "create-files", 2, cmd_create_files, "DIR N" },
	{ "put-file", 2, cmd_put_file, "STOREDIR FILE" },
	{ "put-tree", 2, cmd_put_tree, "STOREDIR DIR" },
	{ "pull-blob", 5, cmd_pull_blob, "STOREDIR URL TOKEN DIGEST SIZE" },
	{ "pull-tree", 4, cmd_pull_tree, "STOREDIR URL TOKEN DIGEST" },
};

int main(int argc, char **argv)
{
	size_t i;

	bench_name = "bench-peer";
	for (i = 0; argc >= 2 && i < ARRAY_SIZE(cmds); i++)
		if (!strcmp(argv[1], cmds[i].name) && argc - 2 == cmds[i].argc)
			return cmds[i].fn(argv + 2);
	fprintf(stderr, "usage:\n");
	for (i = 0; i < ARRAY_SIZE(cmds); i++)
		fprintf(stderr, "  bench-peer %s %s\n", cmds[i].name, cmds[i].usage);
	return 2;
}
