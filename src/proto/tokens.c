/* Token files: generate once, read many times (tokens.h). */
#include "proto/tokens.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "basic/log.h"
#include "proto/http-server.h"

/* Drop surrounding white space in place; return the start. */
static char *trim(char *s)
{
	char *end;

	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t' ||
			   end[-1] == '\n' || end[-1] == '\r'))
		*--end = '\0';
	return s;
}

static bool token_valid(const char *t)
{
	size_t n = strlen(t), i;

	if (n == 0 || n > KILN_HTTP_TOKEN_MAX)
		return false;
	for (i = 0; i < n; i++)
		if (t[i] <= ' ' || t[i] > '~')
			return false;
	return true;
}

int kiln_token_read(const char *path, char **out, struct kiln_error **err)
{
	_cleanup_free_ char *buf = NULL;
	struct stat st;
	char *t;
	int r;

	r = kiln_read_file_at(AT_FDCWD, path, KILN_HTTP_TOKEN_MAX + 64, &buf,
			      NULL);
	if (r == -EFBIG)
		return kiln_error_set(err, -EINVAL,
				      "token file %s: longer than %u bytes",
				      path, KILN_HTTP_TOKEN_MAX);
	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot read token file %s",
					   path);
	t = trim(buf);
	if (!token_valid(t))
		return kiln_error_set(err, -EINVAL,
				      "token file %s: empty or not a token (printable ASCII, no spaces)",
				      path);
	if (stat(path, &st) == 0 && (st.st_mode & 077))
		log_warn("token file %s is readable by other users (chmod 600 it)",
			 path);
	*out = xstrdup(t);
	return 0;
}

static int token_create(const char *path, char **out, struct kiln_error **err)
{
	_cleanup_free_ char *tok = kiln_random_hex(KILN_TOKEN_BYTES);
	_cleanup_free_ char *line = xasprintf("%s\n", tok);
	int r;

	r = kiln_write_file_atomic_at(AT_FDCWD, path, line, strlen(line), 0600,
				      true);
	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot write token file %s",
					   path);
	log_info("created token %s", path);
	*out = TAKE_PTR(tok);
	return 0;
}

int kiln_token_ensure(const char *root, const char *name, char **out,
		      struct kiln_error **err)
{
	_cleanup_free_ char *path = kiln_path_join(root, name);

	if (access(path, F_OK) < 0 && errno == ENOENT)
		return token_create(path, out, err);
	return kiln_token_read(path, out, err);
}
