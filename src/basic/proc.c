/* The child's side of a spawn (proc.h). */
#include "basic/proc.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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

void kiln_child_exec(const struct kiln_child *c, const char *path, char *const *argv,
		     char *const *env)
{
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	sigset_t all;
	int fd;

	prctl(PR_SET_PDEATHSIG, c->deathsig);
	if (getppid() != c->parent)
		_exit(127);
	if (c->new_session && setsid() < 0)
		_exit(127);
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	sigemptyset(&dfl.sa_mask);
	sigaction(SIGPIPE, &dfl, NULL);
	if (dup2(c->in, 0) < 0 || dup2(c->out, 1) < 0 || dup2(c->err, 2) < 0)
		_exit(127);
	if (close_range(3, ~0u, 0) < 0) /* before Linux 5.9, or filtered */
		for (fd = 3; fd < c->max_fd; fd++)
			close(fd);
	execve(path, argv, env);
	_exit(127);
}
