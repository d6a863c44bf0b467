/*
 * libFuzzer target for the ssh-agent framer and message filter
 * (worker/ssh-agent.h): the input is a stream a step or an agent might
 * send. The first byte chooses how many bytes each read takes (1..16, or
 * all that want() allows), the rest is fed through a framer message after
 * message, as a forwarder's connection does. Every message is read whole
 * and never past its end, a bad length stops the stream, and the filter
 * judges every message without reading outside it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "worker/ssh-agent.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kiln_ssh_framer f;
	size_t step, off = 1, msgs = 0;

	if (size < 1)
		return 0;
	step = data[0] % 17; /* 0: as much as the framer wants */
	kiln_ssh_framer_init(&f);
	while (off < size) {
		size_t want = kiln_ssh_framer_want(&f), n;

		if (want == 0)
			__builtin_trap(); /* HEADER and BODY always want a byte */
		n = step && step < want ? step : want;
		if (n > size - off)
			n = size - off;
		kiln_ssh_framer_feed(&f, data + off, n);
		off += n;
		if (f.state == KILN_SSH_FRAME_BAD)
			break;
		if (f.state == KILN_SSH_FRAME_DONE) {
			bool req = kiln_ssh_agent_request_allowed(f.body, f.len);
			bool ans = kiln_ssh_agent_answer_allowed(f.body, f.len);

			if (f.len < 1 || f.len > KILN_SSH_AGENT_MSG_MAX || (req && ans) ||
			    kiln_ssh_framer_want(&f) != 0)
				__builtin_trap();
			msgs++;
			kiln_ssh_framer_reset(&f);
		}
	}
	kiln_ssh_framer_reset(&f);
	(void)msgs;
	return 0;
}
