/*
 * libFuzzer target for the canonical tree decoder: any bytes are rejected
 * with an error or decode to a node that re-encodes to exactly the input
 * (the encoding is canonical).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cas/tree.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kiln_tree t = KILN_TREE_INIT;
	struct kiln_error *err = NULL;

	if (kiln_tree_decode(data, size, &t, &err) == 0) {
		struct kiln_strbuf sb = KILN_STRBUF_INIT(KILN_TREE_MAX_NODE_BYTES + 1024);

		if (kiln_tree_encode(&t, &sb) < 0 || sb.len != size ||
		    memcmp(sb.buf, data, size) != 0)
			__builtin_trap(); /* decoded but not canonical */
		kiln_strbuf_release(&sb);
	} else if (!err) {
		__builtin_trap();
	}
	kiln_error_free(err);
	kiln_tree_release(&t);
	return 0;
}
