/*
 * The OCI distribution client: image references, pulling manifests and
 * blobs into the CAS, and pushing images from the CAS, with anonymous,
 * basic and bearer-token authentication (docs/internals/registry.md).
 *
 * Everything a registry sends is hostile: manifests are at most 4 MiB,
 * tokens and error bodies at most 64 KiB, every blob and every manifest
 * fetched by digest is verified, and every request has a connect timeout
 * and a low-speed abort.
 *
 * Errors name the registry host, the repository, the tag or digest, the
 * HTTP status and the registry's own error message.
 */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "basic/error.h"
#include "cas/digest.h"
#include "cas/store.h"
#include "proto/http-client.h"

#define KILN_MT_OCI_INDEX "application/vnd.oci.image.index.v1+json"
#define KILN_MT_OCI_MANIFEST "application/vnd.oci.image.manifest.v1+json"
#define KILN_MT_DOCKER_LIST \
	"application/vnd.docker.distribution.manifest.list.v2+json"
#define KILN_MT_DOCKER_MANIFEST \
	"application/vnd.docker.distribution.manifest.v2+json"

/* Limits on what a registry may send. */
#define KILN_REGISTRY_MANIFEST_LIMIT (4u << 20)
#define KILN_REGISTRY_TOKEN_LIMIT (64u << 10)
#define KILN_REGISTRY_ERROR_LIMIT (64u << 10)

/* The default registry of Docker's reference normalization. */
#define KILN_REGISTRY_DEFAULT_HOST "docker.io"
/*
 * Where requests for docker.io go unless an endpoint maps it elsewhere:
 * Docker Hub's API host, as in Docker and containerd (its 401 names the
 * token service, auth.docker.io, which the bearer flow follows).
 */
#define KILN_REGISTRY_DOCKER_HUB_API "registry-1.docker.io"

/* ---- references ---- */

/*
 * A parsed, normalized image reference: REGISTRY/REPOSITORY[:TAG][@DIGEST].
 * At least one of tag and digest is set.
 */
struct kiln_registry_ref {
	char *registry;           /* "docker.io", "localhost:5000", "[::1]:5000" */
	char *repository;         /* "library/busybox" */
	char *tag;                /* NULL when only a digest was given */
	struct kiln_digest digest; /* algo NONE when not pinned */
};

/*
 * Parse a reference with Docker's normalization: "busybox" is
 * docker.io/library/busybox:latest; the first component is a registry host
 * when it contains '.' or ':' or is "localhost". Accepts "NAME:TAG",
 * "NAME@sha256:HEX" and "NAME:TAG@sha256:HEX". Repository components are
 * lowercase [a-z0-9] with separators '.', '_', '__' or dashes; a tag is
 * [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}; only sha256 digests. The error names
 * the reference and what is wrong with it (-EINVAL).
 */
int kiln_registry_ref_parse(const char *s, struct kiln_registry_ref *out,
			    struct kiln_error **err);
void kiln_registry_ref_release(struct kiln_registry_ref *r);
/*
 * The registry a reference names ("docker.io" for "busybox"), a copy to
 * free; NULL for NULL, an oci-layout:// reference or one that does not
 * parse.
 */
char *kiln_registry_ref_host(const char *ref);
/* Deep copy. */
void kiln_registry_ref_copy(struct kiln_registry_ref *dst,
			    const struct kiln_registry_ref *src);
/* "REGISTRY/REPOSITORY[:TAG][@DIGEST]", fully qualified. Caller frees. */
char *kiln_registry_ref_format(const struct kiln_registry_ref *r);

/* ---- the client ---- */

struct kiln_registry;

struct kiln_registry_options {
	/*
	 * Hosts ("host" or "host:port", as in references) that may be
	 * reached over plain HTTP: HTTPS without certificate verification
	 * is tried first, then HTTP (Docker's insecure-registries).
	 * NULL-terminated; may be NULL.
	 */
	const char *const *insecure;
	/*
	 * Loopback hosts (localhost, 127.0.0.0/8, [::1]) are spoken to over
	 * plain HTTP unless listed here. NULL-terminated; may be NULL.
	 */
	const char *const *secure;
	/*
	 * "REGISTRY=HOST[:PORT]" pairs: send a registry's requests to another
	 * endpoint (a mirror, or a registry whose API lives on another name).
	 * Credentials and token scopes stay keyed by REGISTRY.
	 */
	const char *const *endpoints;
	/*
	 * Docker config file with credentials ("auths"). NULL: the default,
	 * $DOCKER_CONFIG/config.json or ~/.docker/config.json (a missing file
	 * is fine); "": read none.
	 */
	const char *docker_config;
	/* CA bundle for HTTPS (NULL: the system's). */
	const char *ca_file;
	/* Abort a request slower than 1 KiB/s for this long (0: 30 s). */
	unsigned low_speed_time_s;
};

/*
 * Make a client. Credentials are read from the docker config now; a
 * malformed config file is an error naming it. opts may be NULL.
 * Thread-safe: one client may serve any number of threads.
 */
int kiln_registry_new(const struct kiln_registry_options *opts,
		      struct kiln_registry **out, struct kiln_error **err);
void kiln_registry_free(struct kiln_registry *r);

/*
 * The host[:port] requests for registry go to: the endpoint an option
 * maps it to, Docker Hub's API host for docker.io, else registry itself.
 */
const char *kiln_registry_endpoint(const struct kiln_registry *r,
				   const char *registry);

/* Set (or replace) the credentials used for a registry host. */
void kiln_registry_set_credentials(struct kiln_registry *r,
				   const char *registry, const char *user,
				   const char *password);

/*
 * Copies of the credentials the client has for a registry host (the docker
 * config's or those set): 0, or -ENOENT when none. For a cluster build's
 * client, which sends them for the registries the build names.
 */
int kiln_registry_credentials(struct kiln_registry *r, const char *registry, char **user,
			      char **password);

/*
 * A cluster build's client sends its credentials as
 * {"REGISTRY": {"username": U, "password": P}, ...} (docs/cluster.md).
 */
#define KILN_REGISTRY_MAX_CREDENTIALS 16u
#define KILN_REGISTRY_CREDENTIAL_MAX 4096u

/* Check their shape (NULL is fine): -EINVAL, never echoing a value. */
int kiln_registry_credentials_check(const json_t *creds, struct kiln_error **err);

/*
 * A registry client for one build or job: opts's settings and credentials
 * (the daemon's own), then those of creds (checked), which win: for the
 * registries hosts[0..n) only, or every one creds names when hosts is
 * NULL. creds may be NULL.
 */
int kiln_registry_new_with(const struct kiln_registry_options *opts, const json_t *creds,
			   const char *const *hosts, size_t n, struct kiln_registry **out,
			   struct kiln_error **err);

/* Zero the passwords of creds in place (before they are freed). */
void kiln_registry_credentials_zero(json_t *creds);

/* Request counters, for progress and tests. *//* Request counters, for progress and tests. */
struct kiln_registry_stats {
	uint64_t requests;     /* HTTP requests sent, token requests included */
	uint64_t token_fetches; /* bearer tokens obtained from a realm */
};
void kiln_registry_get_stats(struct kiln_registry *r,
			     struct kiln_registry_stats *out);

/* ---- pulling ---- */

struct kiln_registry_manifest {
	char *data;       /* the exact bytes (NUL-terminated for convenience) */
	size_t len;
	char *media_type; /* Content-Type, else the document's mediaType */
	struct kiln_digest digest; /* sha256 of data */
};
void kiln_registry_manifest_release(struct kiln_registry_manifest *m);

/*
 * GET a manifest or index: by digest when digest is non-NULL, else by the
 * ref's digest when set, else by its tag. Accepts OCI index/manifest and
 * Docker manifest list/v2 manifest. Fetched by digest, the body must hash
 * to it; a Docker-Content-Digest header must agree with the body. 404 gives
 * -ENOENT naming repository:tag (or @digest).
 */
int kiln_registry_get_manifest(struct kiln_registry *r,
			       const struct kiln_registry_ref *ref,
			       const struct kiln_digest *digest,
			       struct kiln_registry_manifest *out,
			       struct kiln_error **err);

/*
 * Fetch a blob of the ref's repository into the store, streaming, verified
 * against digest (redirects are followed). size is the descriptor's size
 * (-1 when unknown): more bytes than that abort the transfer. A blob already
 * in the store is not fetched. On any failure nothing is named in the CAS.
 * *fetched (may be NULL) gets the bytes transferred.
 */
int kiln_registry_fetch_blob(struct kiln_registry *r,
			     const struct kiln_registry_ref *ref,
			     const struct kiln_digest *digest, int64_t size,
			     struct kiln_store *s, uint64_t *fetched,
			     struct kiln_error **err);

/* A blob to fetch with kiln_registry_fetch_blobs(). */
struct kiln_registry_blob {
	struct kiln_digest digest;
	int64_t size; /* -1: unknown */
};

/*
 * Fetch several blobs, up to `parallel` at a time (0: 4; at most 16).
 * Stops starting new ones after the first failure, whose error is returned.
 */
int kiln_registry_fetch_blobs(struct kiln_registry *r,
			      const struct kiln_registry_ref *ref,
			      const struct kiln_registry_blob *blobs, size_t n,
			      unsigned parallel, struct kiln_store *s,
			      uint64_t *fetched, struct kiln_error **err);

/* Fetch a small blob (an image config) into memory, verified, <= limit. */
int kiln_registry_get_blob_buf(struct kiln_registry *r,
			       const struct kiln_registry_ref *ref,
			       const struct kiln_digest *digest, size_t limit,
			       char **data, size_t *len,
			       struct kiln_error **err);

/* HEAD a blob: 1 present (*size set if non-NULL), 0 absent, <0 error. */
int kiln_registry_blob_exists(struct kiln_registry *r,
			      const struct kiln_registry_ref *ref,
			      const struct kiln_digest *digest, uint64_t *size,
			      struct kiln_error **err);

/* HEAD a blob with authorization for scope (see kiln_registry_request). */
int kiln_registry_head_blob(struct kiln_registry *r,
			    const struct kiln_registry_ref *ref,
			    const char *scope, const struct kiln_digest *digest,
			    uint64_t *size, struct kiln_error **err);

/* ---- pushing (registry-push.c) ---- */

struct kiln_registry_push_opts {
	/*
	 * A repository of the same registry that probably holds the blobs
	 * (where the image was pulled from): missing blobs are mounted from
	 * it (POST ?mount=&from=) before being uploaded. May be NULL.
	 */
	const char *mount_from;
	/*
	 * The blobs were pushed already (by a cluster's workers) and need
	 * not be in the store: each is only checked with HEAD, and one the
	 * registry lacks is an error naming it.
	 */
	bool blobs_pushed;
	/* Called after each blob and manifest; may be NULL. */
	void (*progress)(void *ud, const struct kiln_digest *d,
			 const char *what, uint64_t size);
	void *ud;
};

struct kiln_registry_push_stats {
	unsigned blobs_uploaded, blobs_mounted, blobs_skipped; /* present */
	unsigned manifests;    /* manifests and indexes PUT */
	uint64_t bytes_uploaded, bytes_mounted, bytes_skipped;
};

/*
 * Push the image index or manifest `root` (in the store, with every
 * manifest, config and layer it references) to dest: for each manifest,
 * for each blob (config, layers): HEAD, skip when present; else mount from
 * opts->mount_from when set; else upload (POST, then one PUT with the
 * digest). Then PUT each child manifest by digest and root by dest's tag
 * (by its digest when dest has no tag; a dest digest must equal root).
 * stats (may be NULL) is filled even on failure.
 */
int kiln_registry_push(struct kiln_registry *r, struct kiln_store *s,
		       const struct kiln_registry_ref *dest,
		       const struct kiln_digest *root,
		       const struct kiln_registry_push_opts *opts,
		       struct kiln_registry_push_stats *stats,
		       struct kiln_error **err);

/* PUT a manifest under reference (a tag or "sha256:..."). */
int kiln_registry_put_manifest(struct kiln_registry *r,
			       const struct kiln_registry_ref *ref,
			       const char *reference, const char *media_type,
			       const void *data, size_t len,
			       struct kiln_error **err);

/* ---- low level: authenticated requests (for new endpoints) ---- */

/*
 * Send req to the ref's registry with authorization for scope (one or more
 * space-separated "repository:NAME:ACTIONS"). A req->url starting with '/'
 * is a path on the registry's endpoint (scheme chosen as documented for
 * kiln_registry_options); an absolute URL (an upload Location) is used as
 * is, with credentials only when it is the registry's own endpoint. The
 * client owns req's authorization (user, password, token), TLS fields
 * (tls_noverify, ca_file), low_speed_time_s and upload (a body is always
 * sent as an upload); the caller sets the rest. A 401 is
 * answered once: basic credentials or a bearer token, then the request is
 * sent again. Any final status is returned in resp (0); only transport
 * failures and authentication failures are errors.
 */
int kiln_registry_request(struct kiln_registry *r,
			  const struct kiln_registry_ref *ref, const char *scope,
			  struct kiln_http_call *req, struct kiln_http_result *resp,
			  struct kiln_error **err);

/*
 * Set *err to "registry HOST: WHAT: HTTP STATUS: CODE: message" from a
 * response (the registry's JSON "errors", or a token server's "details",
 * cut and sanitized; any other body only by its size, never shown)
 * and return code.
 */
int kiln_registry_status_error(struct kiln_error **err, int code,
			       const char *registry, const char *what,
			       const struct kiln_http_result *resp);

/* errno-style code for an HTTP status: 404 -ENOENT, 401/403 -EACCES, ... */
int kiln_registry_status_code(long status);

/* ---- authentication state (registry-auth.c) ---- */

/* Credentials and the per-host challenge and per-(host, scope) tokens. */
struct kiln_registry_auth;

/*
 * Load credentials from a docker config file (NULL: the default path,
 * "": none). A missing file is not an error; an unreadable or malformed
 * one is, naming the file.
 */
int kiln_registry_auth_new(const char *docker_config,
			   struct kiln_registry_auth **out,
			   struct kiln_error **err);
void kiln_registry_auth_free(struct kiln_registry_auth *a);
void kiln_registry_auth_set_credentials(struct kiln_registry_auth *a,
					const char *registry, const char *user,
					const char *password);
/* Copies of a registry's credentials: 0, or -ENOENT when none. */
int kiln_registry_auth_credentials(struct kiln_registry_auth *a,
				   const char *registry, char **user,
				   char **password);

/* How token requests reach the realm. */
struct kiln_registry_auth_transport {
	struct kiln_http_client *http;
	bool tls_noverify;
	const char *ca_file;
	unsigned low_speed_time_s;
};

/* What to send with one request; strings owned here. */
struct kiln_registry_authz {
	char *user, *password; /* basic */
	char *bearer;          /* token */
};
void kiln_registry_authz_release(struct kiln_registry_authz *z);

/*
 * Fill z for a request to registry with scope, from what the registry asked
 * for before: basic credentials, or a bearer token for scope (cached, else
 * fetched from the realm now, with basic credentials when there are any).
 * Token failures are errors naming the realm, the status and its message.
 */
int kiln_registry_auth_prepare(struct kiln_registry_auth *a,
			       const struct kiln_registry_auth_transport *t,
			       const char *registry, const char *scope,
			       struct kiln_registry_authz *z,
			       struct kiln_error **err);

/*
 * Learn from a 401's WWW-Authenticate header. 0 when sending the request
 * again after kiln_registry_auth_prepare() may succeed; -EACCES when it
 * cannot (no credentials for Basic, an unknown scheme), with *err naming
 * the registry.
 */
int kiln_registry_auth_challenge(struct kiln_registry_auth *a,
				 const char *registry, const char *scope,
				 const char *www_authenticate,
				 struct kiln_error **err);

/* Bearer tokens fetched so far. */
uint64_t kiln_registry_auth_token_fetches(struct kiln_registry_auth *a);
