/* The child's side of a spawn (proc.h). */
#include "basic/proc.h"

#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "basic/alloc.h"

char *kiln_find_program(const char *name)
{
	const char *path = getenv("PATH"), *dir, *end;

	if (!path || !*path)
		path = "/usr/bin:/bin";
	for (dir = path; *dir; dir = *end ? end + 1 : end) {
		char *p;

		end = dir + strcspn(dir, ":");
		if (*dir != '/') /* only absolute entries */
			continue;
		p = xasprintf("%.*s/%s", (int)(end - dir), dir, name);
		if (access(p, X_OK) == 0)
			return p;
		free(p);
	}
	return NULL;
}

int kiln_child_max_fd(void)
{
	long open_max = sysconf(_SC_OPEN_MAX);

	return open_max > 0 && open_max < 65536 ? (int)open_max : 65536;
}

/* The parent-death signal and the rest every child gets; false: _exit. */
static bool child_setup(const struct kiln_child *c)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	int fd;

	prctl(PR_SET_PDEATHSIG, c->deathsig);
	if (getppid() != c->parent)
		return false;
	if (c->new_session && setsid() < 0)
		return false;
	sigemptyset(&dfl.sa_mask);
	sigaction(SIGPIPE, &dfl, NULL);
	if (dup2(c->in, 0) < 0 || dup2(c->out, 1) < 0 || dup2(c->err, 2) < 0)
		return false;
	if (close_range(3, ~0u, 0) < 0) /* before Linux 5.9, or filtered */
		for (fd = 3; fd < c->max_fd; fd++)
			close(fd);
	return true;
}

void kiln_child_exec(const struct kiln_child *c, const char *path, char *const *argv,
		     char *const *env)
{
	sigset_t none;

	if (!child_setup(c))
		_exit(127);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execve(path, argv, env);
	_exit(127);
}

/*
 * The guard: waits for its signals (the death signal, SIGTERM, SIGCHLD)
 * with them blocked, so none is lost between two waits. States: RUNNING
 * --death signal or SIGTERM--> RUNNING (passed on) --the program
 * ended--> exit with its status.
 */
void kiln_child_exec_guarded(const struct kiln_child *c, const char *path, char *const *argv,
			     char *const *env)
{
	sigset_t wait_for, none;
	pid_t pid;
	int st;

	sigemptyset(&wait_for);
	sigaddset(&wait_for, c->deathsig);
	sigaddset(&wait_for, SIGTERM);
	sigaddset(&wait_for, SIGCHLD);
	sigprocmask(SIG_SETMASK, &wait_for, NULL);
	if (!child_setup(c))
		_exit(127);
	pid = fork();
	if (pid == 0) {
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execve(path, argv, env);
		_exit(127);
	}
	if (pid < 0)
		_exit(127);
	for (;;) {
		int sig = sigwaitinfo(&wait_for, NULL);

		if (sig == c->deathsig || sig == SIGTERM)
			kill(pid, sig);
		if (waitpid(pid, &st, WNOHANG) == pid)
			_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
	}
}
