/*
 * source.git: a commit of a remote git repository, checked out with the
 * `git` binary (BuildKit source/git/source.go does the same).
 *
 * A ref is resolved to a commit with `git ls-remote` where the op is pinned
 * (the client or the controller); the commit is the pin, so a key follows
 * the commit, never the moving ref. The worker fetches exactly that commit
 * (`git fetch --depth 1`) into a scratch repository and checks it out.
 *
 * What a remote can make kiln do is bounded: git runs without a terminal
 * prompt, credential helper, system or global config, hooks or submodules;
 * only the https, http, git and ssh transports are allowed (no file://, no
 * ext::); each command has a deadline (ls-remote 2 min, fetch 30 min) and a
 * transfer below 1 KiB/s for 60 s is aborted. The checkout's size is bounded
 * by the worker's disk, as for other sources.
 *
 * The result is deterministic: mtimes 0, owners 0:0, modes as git writes
 * them under umask 022. With keep_git_dir the .git directory is kept with
 * objects loose, an index without stat data, no reflog and no FETCH_HEAD,
 * and the remote URL without its userinfo.
 */
#pragma once

#include <stdbool.h>

#include "basic/error.h"
#include "cas/digest.h"
#include "cas/store.h"

#define KILN_GIT_COMMIT_HEXLEN 40

/* Does s hold a full SHA-1 commit id (40 lowercase hex)? */
bool kiln_git_is_commit(const char *s);

/*
 * Resolve ref at url (NULL or "" = the remote's HEAD; a 40-hex commit is
 * taken as is without asking the remote) to a commit id (41 bytes with the
 * NUL). A branch wins over a tag of the same name; an annotated tag is
 * peeled to its commit.
 */
int kiln_git_resolve(const char *url, const char *ref,
		     char commit[KILN_GIT_COMMIT_HEXLEN + 1], struct kiln_error **err);

/*
 * The pin of a source.git op is its commit, carried in a digest so it
 * travels where other pins do (the controller's job request): the 20 bytes
 * of the commit id followed by 12 zero bytes. It is never a blob's digest.
 */
void kiln_git_commit_to_pin(const char *commit, struct kiln_digest *pin);
int kiln_git_pin_to_commit(const struct kiln_digest *pin,
			   char commit[KILN_GIT_COMMIT_HEXLEN + 1]);

struct kiln_git_checkout {
	const char *url;
	const char *ref;    /* as written; fetched when the commit cannot be */
	const char *commit; /* 40 hex */
	const char *subdir; /* NULL or "" = the whole tree */
	bool keep_git_dir;  /* only without subdir, as BuildKit */
	const char *scratch; /* an existing directory to work in (removed after) */
};

/* Fetch and check out the commit; *tree gets the stored result. */
int kiln_git_checkout(struct kiln_store *s, const struct kiln_git_checkout *c,
		      struct kiln_digest *tree, struct kiln_error **err);
