#include "proto/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

/* A file the flag names must be there to read (else the first call fails). */
static int readable(const char *flag, const char *path, struct kiln_error **err)
{
	int fd;

	if (!path)
		return 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return kiln_error_seterrno(err, -errno, "%s %s", flag, path);
	close(fd);
	return 0;
}

int kiln_tls_check(const struct kiln_tls *t, struct kiln_error **err)
{
	int r;

	if (!t)
		return 0;
	if (t->cert && !t->key)
		return kiln_error_set(err, -EINVAL, "--tls-cert %s needs --tls-key",
				      t->cert);
	if (t->key && !t->cert)
		return kiln_error_set(err, -EINVAL, "--tls-key %s needs --tls-cert",
				      t->key);
	if (t->client_ca && !t->cert)
		return kiln_error_set(err, -EINVAL,
				      "--tls-client-ca %s needs --tls-cert and "
				      "--tls-key (client certificates are checked "
				      "only over TLS)", t->client_ca);
	r = readable("--tls-cert", t->cert, err);
	if (r == 0)
		r = readable("--tls-key", t->key, err);
	if (r == 0)
		r = readable("--tls-ca", t->ca, err);
	if (r == 0)
		r = readable("--tls-client-ca", t->client_ca, err);
	return r;
}
