/*
 * Starting a helper program that must not outlive us: the part between
 * fork() and execve() every spawn shares (the runtime, git, the client's
 * ssh-agent).
 */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#include "basic/macro.h"

struct kiln_child {
	pid_t parent;   /* getpid() before the fork */
	int deathsig;   /* sent to the child when the parent's thread dies */
	int in, out, err; /* become fds 0, 1, 2 */
	int max_fd;     /* close() bound where close_range() fails (kiln_child_max_fd()) */
	bool new_session; /* setsid(): no controlling terminal to prompt on */
};

/*
 * name's absolute path on $PATH (absolute entries only; "/usr/bin:/bin"
 * when unset), malloc'd, or NULL: looked up before the fork.
 */
char *kiln_find_program(const char *name);

/* The bound for kiln_child.max_fd, read before the fork. */
int kiln_child_max_fd(void);

/*
 * In the child between fork and exec (async-signal-safe calls only):
 * PR_SET_PDEATHSIG c->deathsig (sent when the thread that forked ends,
 * whichever way: fork from a thread that lives as long as the child
 * should), then exit 127 if the parent is already gone (it died before
 * the prctl); setsid() with new_session; every signal unblocked and SIGPIPE back
 * to its default (a parent that ignores it must not hand that on); fds 0-2
 * from c; every other fd closed (a library's socket opened without
 * CLOEXEC must not stay open in the child); then execve(path, argv, env),
 * or exit 127.
 */
_noreturn_ void kiln_child_exec(const struct kiln_child *c, const char *path,
				char *const *argv, char *const *env);

/*
 * kiln_child_exec for a program whose exec clears the parent-death signal
 * (a set-user-ID or set-group-ID one, like Debian's ssh-agent, setgid
 * _ssh): the child stays as a guard with PR_SET_PDEATHSIG c->deathsig,
 * runs the program in a child of its own, passes c->deathsig (or a
 * SIGTERM it is sent) on to it, and exits with its status once it ended.
 * The guard's pid stands for the program: signal it, wait for it.
 */
_noreturn_ void kiln_child_exec_guarded(const struct kiln_child *c, const char *path,
					char *const *argv, char *const *env);
