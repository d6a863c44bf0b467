#include "cli/common.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "basic/alloc.h"
#include "basic/fs-util.h"
#include "proto/tokens.h"

char *kiln_cli_default_root(void)
{
	const char *r = getenv("KILN_ROOT");
	const char *home = getenv("HOME");

	if (r && *r)
		return xstrdup(r);
	if (!home || !*home)
		home = "/root";
	return xasprintf("%s/.local/share/kiln", home);
}

int kiln_engine_open(const char *root, const char *runtime,
		     struct kiln_engine *out, struct kiln_error **err)
{
	_cleanup_free_ char *wroot = NULL, *db = NULL;
	struct kiln_worker_options wo = { 0 };
	int r;

	memset(out, 0, sizeof(*out));
	r = kiln_mkdir_p(root, 0700);
	if (r < 0)
		return kiln_error_seterrno(err, r, "cannot create state directory %s", root);
	out->root = xstrdup(root);
	wroot = kiln_path_join(root, "worker");
	wo.root = wroot;
	wo.runtime = runtime;
	wo.durable = true;
	r = kiln_worker_open(&wo, &out->worker, err);
	if (r < 0)
		goto fail;
	db = kiln_path_join(root, "cache.db");
	r = kiln_cache_open(db, &out->cache, err);
	if (r < 0)
		goto fail;
	return 0;
fail:
	kiln_engine_close(out);
	return r;
}

void kiln_engine_close(struct kiln_engine *e)
{
	kiln_cache_free(e->cache);
	kiln_worker_free(e->worker);
	free(e->root);
	memset(e, 0, sizeof(*e));
}

int kiln_cli_fail(const struct kiln_error *err)
{
	fprintf(stderr, "kiln: error: %s\n", kiln_error_msg(err));
	return 1;
}

static void from_env(const char **field, const char *var)
{
	const char *v = getenv(var);

	if (!*field && v && *v)
		*field = v;
}

int kiln_cli_tls(struct kiln_tls *t, struct kiln_error **err)
{
	from_env(&t->ca, "KILN_TLS_CA");
	from_env(&t->cert, "KILN_TLS_CERT");
	from_env(&t->key, "KILN_TLS_KEY");
	return kiln_tls_check(t, err);
}

int kiln_cli_token(const char *token_file, char **out, struct kiln_error **err)
{
	const char *env = getenv("KILN_TOKEN");
	int r;

	*out = NULL;
	if (!token_file) {
		if (env && *env)
			*out = xstrdup(env);
		return 0;
	}
	r = kiln_token_read(token_file, out, err);
	if (r < 0)
		kiln_error_prefix(err, "--token-file");
	return r;
}
