#include "source/git.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/macro.h"
#include "basic/parse-util.h"
#include "basic/proc.h"
#include "basic/strbuf.h"
#include "cas/tree.h"

#define GIT_OUTPUT_MAX (1u << 20)
#define GIT_LS_REMOTE_TIMEOUT_S 120
#define GIT_FETCH_TIMEOUT_S 1800
#define GIT_LOCAL_TIMEOUT_S 600
#define GIT_MAX_ARGS 48

bool kiln_git_is_commit(const char *s)
{
	size_t i;

	for (i = 0; i < KILN_GIT_COMMIT_HEXLEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return s[i] == '\0';
}

void kiln_git_commit_to_pin(const char *commit, struct kiln_digest *pin)
{
	size_t i;

	memset(pin, 0, sizeof(*pin));
	pin->algo = KILN_DIGEST_SHA256;
	for (i = 0; i < KILN_GIT_COMMIT_HEXLEN / 2; i++) {
		unsigned v = 0;

		sscanf(commit + 2 * i, "%2x", &v);
		pin->bytes[i] = (uint8_t)v;
	}
}

int kiln_git_pin_to_commit(const struct kiln_digest *pin,
			   char commit[KILN_GIT_COMMIT_HEXLEN + 1])
{
	size_t i;

	if (pin->algo != KILN_DIGEST_SHA256)
		return -EINVAL;
	for (i = KILN_GIT_COMMIT_HEXLEN / 2; i < KILN_DIGEST_MAX_BYTES; i++)
		if (pin->bytes[i])
			return -EINVAL;
	for (i = 0; i < KILN_GIT_COMMIT_HEXLEN / 2; i++)
		snprintf(commit + 2 * i, 3, "%02x", pin->bytes[i]);
	return 0;
}

/* ---- running git ---- */

/*
 * A minimal environment: no config of the host's user or system, no
 * prompt. Credentials in the URL are the only ones: ssh reads no config,
 * offers no key and asks no agent of the worker (ssh finds ~/.ssh through
 * the password database, not $HOME), and trusts no known host, so an ssh
 * URL cannot use the worker's identity (until `--ssh` forwards the
 * client's agent, it cannot authenticate at all).
 */
static char **git_env(void)
{
	static const char *const fixed[] = {
		"GIT_TERMINAL_PROMPT=0", "GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null",
		"GIT_ASKPASS=/bin/false", "SSH_ASKPASS=/bin/false",
		"GIT_SSH_COMMAND=ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes"
		" -o IdentityFile=/dev/null -o IdentityAgent=none"
		" -o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null"
		" -o StrictHostKeyChecking=yes",
		"HOME=/nonexistent", "LC_ALL=C",
		"GIT_PROTOCOL_FROM_USER=0", NULL,
	};
	const char *path = getenv("PATH");
	size_t n = 0, i;
	char **env = xcalloc(16, sizeof(*env));

	env[n++] = xasprintf("PATH=%s", path ? path : "/usr/bin:/bin");
	for (i = 0; fixed[i]; i++)
		env[n++] = xstrdup(fixed[i]);
	return env;
}

static void env_free(char **env)
{
	size_t i;

	for (i = 0; env && env[i]; i++)
		free(env[i]);
	free(env);
}

/* Options every command gets: allowed transports, no helpers, stall limit. */
static const char *const git_opts[] = {
	"-c", "protocol.allow=never", "-c", "protocol.https.allow=always",
	"-c", "protocol.http.allow=always", "-c", "protocol.git.allow=always",
	"-c", "protocol.ssh.allow=always", "-c", "credential.helper=",
	"-c", "core.hooksPath=/dev/null", "-c", "http.lowSpeedLimit=1024",
	"-c", "http.lowSpeedTime=60", "-c", "core.askPass=/bin/false",
	"-c", "advice.detachedHead=false", NULL,
};

static _noreturn_ void child(const struct kiln_child *c, const char *git, char *const *argv,
			     char **env)
{
	umask(022); /* as BuildKit's runWithStandardUmask: modes do not follow ours */
	kiln_child_exec(c, git, argv, env);
}

/*
 * Run git with args (after the common options), stdout and stderr into
 * *out (at most GIT_OUTPUT_MAX bytes kept), killed after timeout_s.
 * 0 when it exited 0, else an error holding the tail of its output.
 */
/* Remove every copy of the URL's userinfo ("user:secret@") from git's words. */
static void redact(struct kiln_strbuf *out, const char *url)
{
	_cleanup_free_ char *safe = kiln_url_strip_userinfo(url);
	size_t ul = strlen(url), sl = strlen(safe), k, pos;
	char *hit;
	_cleanup_free_ char *info = NULL;

	if (ul == sl)
		return;
	/* safe is url with [pos, pos + k) removed, right after "://" */
	pos = (size_t)(strstr(url, "://") - url) + 3;
	k = ul - sl;
	info = xstrndup(url + pos, k);
	while ((hit = strstr(out->buf ? out->buf : "", info))) {
		memmove(hit, hit + k, out->len - (size_t)(hit - out->buf) - k + 1);
		out->len -= k;
	}
}

static int run_git(const char *const *args, const char *url, unsigned timeout_s,
		   struct kiln_strbuf *out, const char *what, struct kiln_error **err)
{
	_cleanup_free_ char *git = kiln_find_program("git");
	_cleanup_close_ int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	struct kiln_child c = { .parent = getpid(), .deathsig = SIGKILL,
				.max_fd = kiln_child_max_fd() };
	const char *argv[GIT_MAX_ARGS];
	char **env;
	int p[2], ws, r = 0;
	size_t n = 0, i;
	struct timespec t0, now;
	bool killed = false;
	pid_t pid;

	if (!git)
		return kiln_error_set(err, -ENOENT, "%s: no git binary on PATH", what);
	argv[n++] = "git";
	for (i = 0; git_opts[i]; i++)
		argv[n++] = git_opts[i];
	for (i = 0; args[i] && n + 1 < GIT_MAX_ARGS; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	if (null < 0)
		return kiln_error_seterrno(err, -errno, "%s: /dev/null", what);
	if (pipe2(p, O_CLOEXEC) < 0)
		return kiln_error_seterrno(err, -errno, "%s: pipe", what);
	env = git_env();
	c.in = null;
	c.out = c.err = p[1];
	pid = fork();
	if (pid == 0)
		child(&c, git, (char *const *)argv, env);
	r = pid < 0 ? -errno : 0;
	env_free(env);
	close(p[1]);
	if (r < 0) {
		close(p[0]);
		return kiln_error_seterrno(err, r, "%s: fork", what);
	}
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct pollfd pf = { p[0], POLLIN, 0 };
		char buf[8192];
		ssize_t k;

		clock_gettime(CLOCK_MONOTONIC, &now);
		if (!killed && now.tv_sec - t0.tv_sec >= (time_t)timeout_s) {
			kill(pid, SIGKILL);
			killed = true;
		}
		if (poll(&pf, 1, 1000) < 0 && errno != EINTR)
			break;
		if (!pf.revents)
			continue;
		k = read(p[0], buf, sizeof(buf));
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		if (out->len + (size_t)k <= GIT_OUTPUT_MAX)
			kiln_strbuf_add(out, buf, (size_t)k);
	}
	close(p[0]);
	while (waitpid(pid, &ws, 0) < 0)
		if (errno != EINTR)
			return kiln_error_seterrno(err, -errno, "%s: waitpid", what);
	if (killed)
		return kiln_error_set(err, -ETIMEDOUT, "%s: no answer within %u s", what, timeout_s);
	if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0) {
		const char *o;
		size_t l;

		redact(out, url);
		o = kiln_strbuf_str(out);
		l = strlen(o);

		while (l > 0 && (o[l - 1] == '\n' || o[l - 1] == ' '))
			l--;
		return kiln_error_set(err, -EIO, "%s: git failed (%s %d): %.*s", what,
				      WIFEXITED(ws) ? "exit" : "signal",
				      WIFEXITED(ws) ? WEXITSTATUS(ws) : WTERMSIG(ws),
				      (int)(l > 2000 ? 2000 : l), o + (l > 2000 ? l - 2000 : 0));
	}
	return 0;
}

/* ---- resolving ---- */

/* How well a ls-remote line's name matches ref: 0 none, higher better. */
static int match_rank(const char *name, size_t len, const char *ref)
{
	static const char *const pfx[] = { "refs/heads/", "refs/tags/" };
	bool peeled = len > 3 && !strncmp(name + len - 3, "^{}", 3);
	size_t l = peeled ? len - 3 : len, i;

	if (strlen(ref) == l && !strncmp(name, ref, l))
		return peeled ? 6 : 5;
	for (i = 0; i < 2; i++) {
		size_t pl = strlen(pfx[i]);

		if (l == pl + strlen(ref) && !strncmp(name, pfx[i], pl) &&
		    !strncmp(name + pl, ref, l - pl))
			return i == 0 ? 4 : peeled ? 3 : 2;
	}
	return 0;
}

int kiln_git_resolve(const char *url, const char *ref,
		     char commit[KILN_GIT_COMMIT_HEXLEN + 1], struct kiln_error **err)
{
	_cleanup_strbuf_ struct kiln_strbuf out = KILN_STRBUF_INIT(GIT_OUTPUT_MAX);
	_cleanup_free_ char *safe = kiln_url_strip_userinfo(url);
	_cleanup_free_ char *what = NULL;
	const char *want = ref && *ref ? ref : "HEAD", *line;
	const char *args[] = { "ls-remote", "--", url, want, NULL };
	int best = 0, r;

	if (ref && kiln_git_is_commit(ref)) {
		memcpy(commit, ref, KILN_GIT_COMMIT_HEXLEN + 1);
		return 0;
	}
	if (*want == '-')
		return kiln_error_set(err, -EINVAL, "%s: bad ref '%s'", safe, want);
	what = xasprintf("%s#%s", safe, want);
	r = run_git(args, url, GIT_LS_REMOTE_TIMEOUT_S, &out, what, err);
	if (r < 0)
		return r;
	for (line = kiln_strbuf_str(&out); *line;) {
		size_t len = strcspn(line, "\n"), nl;
		const char *tab = memchr(line, '\t', len);

		if (tab && tab - line == KILN_GIT_COMMIT_HEXLEN) {
			int rank = match_rank(tab + 1, len - (size_t)(tab + 1 - line), want);
			char id[KILN_GIT_COMMIT_HEXLEN + 1];

			memcpy(id, line, KILN_GIT_COMMIT_HEXLEN);
			id[KILN_GIT_COMMIT_HEXLEN] = '\0';
			if (rank > best && kiln_git_is_commit(id)) {
				best = rank;
				memcpy(commit, id, sizeof(id));
			}
		}
		nl = line[len] ? 1 : 0;
		line += len + nl;
	}
	if (!best)
		return kiln_error_set(err, -ENOENT, "%s: no such ref in the repository", what);
	return 0;
}

/* ---- checking out ---- */

static bool skip_git_dir(void *ud, const char *relpath, bool is_dir)
{
	(void)ud;
	(void)is_dir;
	return strcmp(relpath, ".git") != 0;
}

int kiln_git_checkout(struct kiln_store *s, const struct kiln_git_checkout *c,
		      struct kiln_digest *tree, struct kiln_error **err)
{
	_cleanup_strbuf_ struct kiln_strbuf out = KILN_STRBUF_INIT(GIT_OUTPUT_MAX);
	_cleanup_free_ char *safe = kiln_url_strip_userinfo(c->url);
	_cleanup_free_ char *repo = xasprintf("%s/repo", c->scratch);
	_cleanup_free_ char *what = xasprintf("%s#%s", safe, c->commit);
	_cleanup_close_ int rfd = -1, dfd = -1;
	struct kiln_tree_build_opts bo = { .zero_owner = true, .zero_mtime = true };
	bool keep = c->keep_git_dir && !(c->subdir && *c->subdir);
	int r;

	const char *init[] = { "init", "-q", "--template=", repo, NULL };
	const char *remote[] = { "-C", repo, "remote", "add", "origin", c->url, NULL };
	const char *fetch[] = { "-C", repo, "-c", "fetch.unpackLimit=2147483647",
				"-c", "transfer.unpackLimit=2147483647", "fetch", "-q",
				"--depth=1", "--no-tags", "--no-write-fetch-head", "origin",
				c->commit, NULL };
	const char *fetch_ref[] = { "-C", repo, "-c", "fetch.unpackLimit=2147483647",
				    "-c", "transfer.unpackLimit=2147483647", "fetch", "-q",
				    "--depth=1", "--no-tags", "--no-write-fetch-head", "origin",
				    c->ref ? c->ref : "HEAD",
				    NULL };
	const char *checkout[] = { "-C", repo, "checkout", "-q", "--detach", c->commit, NULL };
	const char *set_url[] = { "-C", repo, "remote", "set-url", "origin", safe, NULL };
	const char *read_tree[] = { "-C", repo, "read-tree", "HEAD", NULL };
	const char *expire[] = { "-C", repo, "reflog", "expire", "--all", "--expire=all", NULL };

	r = run_git(init, c->url, GIT_LOCAL_TIMEOUT_S, &out, what, err);
	kiln_strbuf_reset(&out);
	if (r == 0)
		r = run_git(remote, c->url, GIT_LOCAL_TIMEOUT_S, &out, what, err);
	kiln_strbuf_reset(&out);
	if (r == 0) {
		/*
		 * By commit first (most servers allow it); else by the ref,
		 * which must still name the pinned commit.
		 */
		_cleanup_error_ struct kiln_error *e1 = NULL, *e2 = NULL;

		r = run_git(fetch, c->url, GIT_FETCH_TIMEOUT_S, &out, what, &e1);
		kiln_strbuf_reset(&out);
		if (r < 0 && c->ref && *c->ref && *c->ref != '-')
			r = run_git(fetch_ref, c->url, GIT_FETCH_TIMEOUT_S, &out, what, &e2);
		kiln_strbuf_reset(&out);
		if (r < 0)
			r = kiln_error_set(err, e1->code, "%s", e1->msg);
	}
	if (r == 0)
		r = run_git(checkout, c->url, GIT_LOCAL_TIMEOUT_S, &out, what, err);
	kiln_strbuf_reset(&out);
	if (r == 0 && keep) {
		/* Deterministic .git: no stat data, no reflog, no credentials. */
		r = run_git(set_url, c->url, GIT_LOCAL_TIMEOUT_S, &out, what, err);
		kiln_strbuf_reset(&out);
		if (r == 0)
			r = run_git(read_tree, c->url, GIT_LOCAL_TIMEOUT_S, &out, what, err);
		kiln_strbuf_reset(&out);
		if (r == 0)
			r = run_git(expire, c->url, GIT_LOCAL_TIMEOUT_S, &out, what, err);
		if (r == 0) {
			_cleanup_free_ char *logs = xasprintf("%s/.git/logs", repo);
			_cleanup_free_ char *fh = xasprintf("%s/.git/FETCH_HEAD", repo);

			kiln_rm_rf(logs);
			unlink(fh);
		}
	}
	if (r < 0)
		goto out;
	rfd = open(repo, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (rfd < 0) {
		r = kiln_error_seterrno(err, -errno, "%s: open checkout", what);
		goto out;
	}
	if (c->subdir && *c->subdir) {
		const char *sub = c->subdir;

		while (*sub == '/')
			sub++;
		dfd = kiln_openat2(rfd, *sub ? sub : ".", O_RDONLY | O_DIRECTORY, 0,
				   KILN_RESOLVE_IN_ROOT | KILN_RESOLVE_NO_MAGICLINKS);
		if (dfd < 0) {
			r = kiln_error_seterrno(err, dfd, "%s: subdirectory '%s'", what, c->subdir);
			goto out;
		}
	} else {
		dfd = TAKE_FD(rfd);
		if (!keep)
			bo.filter = skip_git_dir;
	}
	r = kiln_tree_from_dir(s, dfd, &bo, tree, err);
	if (r < 0)
		kiln_error_prefix(err, "%s", what);
out:
	kiln_rm_rf(repo);
	return r;
}
