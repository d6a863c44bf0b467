/*
 * libFuzzer target for the op graph parser: any bytes must give either a
 * valid definition or an error, never a crash, leak or undefined behaviour.
 */
#include <stddef.h>
#include <stdint.h>

#include "solver/definition.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kiln_definition *d = NULL;
	struct kiln_error *err = NULL;
	size_t *order, n;

	if (kiln_definition_parse((const char *)data, size, "fuzz.json", "/ctx", "linux/amd64",
				  &d, &err) == 0) {
		/* A valid graph must order without trouble. */
		kiln_definition_topo(d, &order, &n);
		free(order);
		kiln_definition_free(d);
	} else if (!err) {
		__builtin_trap(); /* every failure must say why */
	}
	kiln_error_free(err);
	return 0;
}
