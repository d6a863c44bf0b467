/*
 * kiln build --ssh ID[=SOCKET|KEY[,KEY...]]: the ssh agents a build's
 * RUN --mount=type=ssh steps may use (docs/cli.md). An agent socket is
 * used as it is; key files are loaded into an ssh-agent of the build's
 * own, listening in a private 0700 directory: started once the build is
 * ready to solve, killed right after it (and, should kiln die first, by
 * its parent-death signal; the keys' lifetime is the last backstop).
 * Requests reach them only through kiln_ssh_agent_call, which lets
 * listing and signing through and nothing else (worker/ssh-agent.h).
 * Neither a socket path nor a key ever leaves this process: the engine,
 * kilnd and the graph see the ids alone.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/proc.h"
#include "basic/strv.h"
#include "cli/build.h"

extern char **environ;

/* How long a new ssh-agent may take to listen. */
#define AGENT_START_MS 5000
/*
 * ssh-add -t: the keys' lifetime in an agent of ours, should it outlive
 * kiln after all (the parent-death signal is the first guard). A build
 * running longer loses its keys.
 */
#define KEY_LIFETIME_S 86400

/* A local agent answers at once: stop need not cut its call short. */
static int relay_local(void *ud, const char *id, const uint8_t *req, size_t len,
		       const atomic_bool *stop, uint8_t **resp, size_t *resp_len)
{
	const struct kiln_cli_ssh *s = ud;
	int i = kiln_ssh_agents_find(&s->agents, id);

	if (i < 0 || !s->socks[i])
		return -ENOENT;
	return kiln_ssh_agent_call(s->socks[i], req, len, KILN_SSH_AGENT_TIMEOUT_MS, resp,
				   resp_len);
}

/* The environment of ssh-agent and ssh-add: no askpass, never a prompt. */
static char **child_env(const char *sock)
{
	size_t i, n = 0;
	char **env;

	for (i = 0; environ[i]; i++)
		n++;
	env = xcalloc(n + 3, sizeof(char *));
	n = 0;
	for (i = 0; environ[i]; i++)
		if (strncmp(environ[i], "SSH_AUTH_SOCK=", 14) && strncmp(environ[i], "DISPLAY=", 8) &&
		    strncmp(environ[i], "SSH_ASKPASS", 11))
			env[n++] = xstrdup(environ[i]);
	env[n++] = xasprintf("SSH_AUTH_SOCK=%s", sock);
	env[n++] = xstrdup("SSH_ASKPASS_REQUIRE=never");
	return env;
}

/*
 * Run argv (argv[0] on $PATH) quiet, in a session of its own (no terminal
 * to prompt on), sent SIGTERM should this thread end before it. guarded:
 * through kiln_child_exec_guarded, for ssh-agent, which may be setgid
 * (Debian's is), and the exec of a setgid binary clears the parent-death
 * signal.
 */
static int spawn_quiet(char *const *argv, const char *sock, bool guarded, pid_t *pid)
{
	_cleanup_free_ char *path = kiln_find_program(argv[0]);
	_cleanup_close_ int null = open("/dev/null", O_RDWR | O_CLOEXEC);
	struct kiln_child c = { .parent = getpid(), .deathsig = SIGTERM,
				.max_fd = kiln_child_max_fd(), .new_session = true };
	char **env;
	int r = 0;

	if (!path)
		return -ENOENT;
	if (null < 0)
		return -errno;
	c.in = c.out = c.err = null;
	env = child_env(sock);
	*pid = fork();
	if (*pid == 0 && guarded)
		kiln_child_exec_guarded(&c, path, argv, env);
	if (*pid == 0)
		kiln_child_exec(&c, path, argv, env);
	if (*pid < 0)
		r = -errno;
	kiln_strv_free(env, kiln_strv_len(env));
	return r;
}

static int wait_exit(pid_t pid)
{
	int st;

	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Start ssh-agent listening at sock; wait until it does. */
static int start_agent(struct kiln_cli_ssh *s, const char *spec, const char *sock,
		       struct kiln_error **err)
{
	char *argv[] = { "ssh-agent", "-D", "-a", (char *)sock, NULL };
	pid_t pid;
	int i, r;

	if (strlen(sock) >= sizeof(((struct sockaddr_un *)NULL)->sun_path))
		return kiln_error_set(err, -ENAMETOOLONG,
				      "--ssh %s: the agent socket %s is longer than a unix socket path may be (%zu bytes): set TMPDIR to a shorter directory",
				      spec, sock, sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1);
	r = spawn_quiet(argv, sock, true, &pid);
	if (r < 0)
		return kiln_error_seterrno(err, r, "--ssh %s: cannot run ssh-agent (install openssh-client)",
					   spec);
	s->pids[s->n_pids++] = pid;
	for (i = 0; i < AGENT_START_MS / 10; i++) {
		struct stat st;

		if (stat(sock, &st) == 0 && S_ISSOCK(st.st_mode))
			return 0;
		if (waitpid(pid, NULL, WNOHANG) == pid) {
			s->n_pids--;
			return kiln_error_set(err, -EIO, "--ssh %s: ssh-agent exited at start", spec);
		}
		usleep(10000);
	}
	return kiln_error_set(err, -ETIMEDOUT, "--ssh %s: ssh-agent did not start listening", spec);
}

static int add_key(const char *spec, const char *sock, const char *key, struct kiln_error **err)
{
	/* "--": a key named "-x" is a file, not an option */
	_cleanup_free_ char *life = xasprintf("%u", KEY_LIFETIME_S);
	char *argv[] = { "ssh-add", "-q", "-t", life, "--", (char *)key, NULL };
	pid_t pid;
	int r = spawn_quiet(argv, sock, false, &pid);

	if (r < 0)
		return kiln_error_seterrno(err, r, "--ssh %s: cannot run ssh-add (install openssh-client)",
					   spec);
	r = wait_exit(pid);
	if (r != 0)
		return kiln_error_set(err, -EINVAL,
				      "--ssh %s: cannot load the key %s (not a private key, or protected by a passphrase: kiln does not ask for one; add it to your agent with ssh-add and use --ssh ID=$SSH_AUTH_SOCK)",
				      spec, key);
	return 0;
}

/* "a,b,c" → its non-empty parts. */
static char **split_paths(const char *paths, size_t *n)
{
	char **v = xcalloc(strlen(paths) / 2 + 2, sizeof(char *));

	*n = 0;
	while (*paths) {
		size_t l = strcspn(paths, ",");

		if (l > 0)
			v[(*n)++] = xstrndup(paths, l);
		paths += l + (paths[l] == ',');
	}
	return v;
}

/* Key files of id i: a new agent of this build's own, holding them. */
static int load_keys(struct kiln_cli_ssh *s, size_t i, struct kiln_error **err)
{
	size_t k, n;
	char **keys = split_paths(s->keys[i], &n), *sock;
	int r;

	if (!s->dir) {
		const char *tmp = getenv("TMPDIR");
		char *d = xasprintf("%s/kiln-ssh-XXXXXX", tmp && *tmp ? tmp : "/tmp");

		if (!mkdtemp(d)) {
			r = -errno;
			kiln_strv_free(keys, n);
			kiln_error_seterrno(err, r, "--ssh %s: a private directory %s", s->specs[i], d);
			free(d);
			return r;
		}
		s->dir = d;
	}
	sock = xasprintf("%s/agent.%zu", s->dir, i);
	s->socks[i] = sock;
	r = start_agent(s, s->specs[i], sock, err);
	for (k = 0; r == 0 && k < n; k++)
		r = add_key(s->specs[i], sock, keys[k], err);
	kiln_strv_free(keys, n);
	return r;
}

/* Key files must exist and be readable; a socket must be one. */
static int check_paths(const char *spec, const char *paths, bool *is_sock, struct kiln_error **err)
{
	size_t i, n;
	char **v = split_paths(paths, &n);
	int r = 0;

	*is_sock = false;
	for (i = 0; r == 0 && i < n; i++) {
		struct stat st;

		if (stat(v[i], &st) < 0)
			r = kiln_error_seterrno(err, -errno, "--ssh %s: %s", spec, v[i]);
		else if (S_ISSOCK(st.st_mode))
			*is_sock = true;
		else if (!S_ISREG(st.st_mode) || access(v[i], R_OK) < 0)
			r = kiln_error_set(err, -EINVAL,
					   "--ssh %s: %s is neither an agent socket nor a readable key file",
					   spec, v[i]);
	}
	kiln_strv_free(v, n);
	if (r < 0)
		return r;
	if (n == 0)
		return kiln_error_set(err, -EINVAL, "--ssh %s: no socket or key file", spec);
	if (*is_sock && n > 1)
		return kiln_error_set(err, -EINVAL, "--ssh %s: an agent socket must be given alone",
				      spec);
	return 0;
}

/* One --ssh ID[=SOCKET|KEY[,KEY...]]; no paths: $SSH_AUTH_SOCK (as buildx). */
static int add_one(struct kiln_cli_ssh *s, const char *spec, struct kiln_error **err)
{
	const char *eq = strchr(spec, '=');
	_cleanup_free_ char *id = eq ? xstrndup(spec, (size_t)(eq - spec)) : xstrdup(spec);
	const char *paths = eq ? eq + 1 : "";
	bool is_sock;
	size_t i;
	int r;

	if (!*id || strlen(id) > 256 || strpbrk(id, ", \t\n"))
		return kiln_error_set(err, -EINVAL, "--ssh %s: expected ID[=SOCKET|KEY[,KEY...]]", spec);
	for (i = 0; i < s->n; i++)
		if (!strcmp(s->ids[i], id))
			return kiln_error_set(err, -EINVAL, "--ssh %s: id '%s' given twice", spec, id);
	if (!*paths) {
		paths = getenv("SSH_AUTH_SOCK");
		if (!paths || !*paths)
			return kiln_error_set(err, -ENOENT,
					      "--ssh %s: $SSH_AUTH_SOCK is not set (start an ssh-agent, or give --ssh %s=SOCKET|KEY)",
					      spec, id);
	}
	r = check_paths(spec, paths, &is_sock, err);
	if (r < 0)
		return r;
	if (is_sock)
		s->socks[s->n] = xstrdup(paths);
	else
		s->keys[s->n] = xstrdup(paths);
	s->specs[s->n] = spec;
	s->ids[s->n++] = TAKE_PTR(id);
	return 0;
}

int kiln_cli_ssh_open(const struct build_args *a, struct kiln_cli_ssh *s, struct kiln_error **err)
{
	size_t i;
	int r = 0;

	memset(s, 0, sizeof(*s));
	for (i = 0; r == 0 && i < a->n_ssh; i++)
		r = add_one(s, a->ssh[i], err);
	s->agents = (struct kiln_ssh_agents){ .ids = (const char *const *)s->ids, .n_ids = s->n,
					      .relay = relay_local, .ud = s };
	return r;
}

int kiln_cli_ssh_start(struct kiln_cli_ssh *s, struct kiln_error **err)
{
	size_t i;
	int r = 0;

	for (i = 0; r == 0 && i < s->n; i++)
		if (s->keys[i] && !s->socks[i])
			r = load_keys(s, i, err);
	return r;
}

void kiln_cli_ssh_release(struct kiln_cli_ssh *s)
{
	size_t i;

	for (i = 0; i < s->n_pids; i++) {
		kill(s->pids[i], SIGTERM);
		(void)wait_exit(s->pids[i]);
	}
	for (i = 0; i < MAX_LIST; i++) {
		if (s->keys[i] && s->socks[i])
			unlink(s->socks[i]); /* an agent of ours, if it left it (never the user's) */
		free(s->ids[i]);
		free(s->keys[i]);
		free(s->socks[i]);
	}
	if (s->dir)
		rmdir(s->dir);
	free(s->dir);
	memset(s, 0, sizeof(*s));
}
