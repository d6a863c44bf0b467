/*
 * Runs in a build step (test-sandbox.sh): tries what a step's sandbox must
 * refuse and prints one line per try, "NAME ERRNO-NAME" ("ok" when the
 * call succeeded), plus the no_new_privs bit. Static, for amd64 and arm64.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *name(long r)
{
	if (r >= 0)
		return "ok";
	switch (errno) {
	case EPERM: return "EPERM";
	case ENOSYS: return "ENOSYS";
	case EINVAL: return "EINVAL";
	case EACCES: return "EACCES";
	default: return strerror(errno);
	}
}

static void report(const char *what, long r)
{
	printf("%s %s\n", what, name(r));
}

int main(void)
{
	long r;

	printf("no_new_privs %d\n", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
	report("unshare-user", unshare(CLONE_NEWUSER));
	report("unshare-mount", unshare(CLONE_NEWNS));
	/* clone with a namespace flag, through the raw syscall (flags are arg 0). */
	r = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
	if (r == 0)
		_exit(0);
	if (r > 0)
		waitpid((pid_t)r, NULL, 0);
	report("clone-newuser", r);
#ifdef SYS_clone3
	report("clone3", syscall(SYS_clone3, NULL, 0));
#endif
	report("keyctl", syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, "kiln"));
	report("mount-tmpfs", mount("none", "/mnt", "tmpfs", 0, NULL));
	report("bpf", syscall(SYS_bpf, 0, NULL, 0));
	/* What must keep working: a plain fork. */
	r = fork();
	if (r == 0)
		_exit(0);
	if (r > 0)
		waitpid((pid_t)r, NULL, 0);
	report("fork", r);
	return 0;
}
