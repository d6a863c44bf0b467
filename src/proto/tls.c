#include "proto/tls.h"

#include <errno.h>

int kiln_tls_check(const struct kiln_tls *t, struct kiln_error **err)
{
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
	return 0;
}
