/* What the remote cache's sources share; not a public contract. */
#pragma once

#include "cas/tree.h"
#include "rcache/rcache.h"

/* The backend calls, with the unavailable state kept (rcache.c). */
int rcache_get_raw(struct kiln_rcache *rc, const char *name, uint64_t limit,
		   int (*sink)(void *ud, const void *data, size_t n), void *ud,
		   struct kiln_error **err);
int rcache_list(struct kiln_rcache *rc, const char *prefix,
		int (*fn)(void *ud, const char *name, uint64_t size, int64_t mtime),
		void *ud, struct kiln_error **err);
int rcache_del(struct kiln_rcache *rc, const char *name, struct kiln_error **err);
/*
 * The tree node d from the remote, verified against its digest and decoded
 * (-EBADMSG, err naming it, when it is missing, corrupt or not a node).
 */
int rcache_read_node(struct kiln_rcache *rc, const struct kiln_digest *d,
		     struct kiln_tree *out, struct kiln_error **err);
