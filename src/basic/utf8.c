#include "basic/utf8.h"

#include <string.h>

#include "basic/alloc.h"

#define REPLACEMENT "\xef\xbf\xbd" /* U+FFFD */

size_t kiln_utf8_decode(const char *s, size_t len, uint32_t *cp)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t n, i;
	uint32_t c;

	*cp = 0xfffd;
	if (u[0] < 0x80) {
		*cp = u[0];
		return 1;
	}
	if (u[0] < 0xc2 || u[0] > 0xf4)
		return 0; /* a continuation byte, an overlong lead, or past U+10FFFF */
	n = u[0] <= 0xdf ? 2 : u[0] <= 0xef ? 3 : 4;
	if (n > len)
		return 0;
	c = u[0] & (0x7fu >> n);
	for (i = 1; i < n; i++) {
		if ((u[i] & 0xc0) != 0x80)
			return 0;
		c = c << 6 | (u[i] & 0x3fu);
	}
	if ((n == 3 && c < 0x800) || (n == 4 && (c < 0x10000 || c > 0x10ffff)) ||
	    (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return n;
}

size_t kiln_utf8_cut_tail(const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t back, need;

	for (back = 1; back <= 3 && back <= n; back++) {
		unsigned char c = u[n - back];

		if ((c & 0xc0) == 0x80)
			continue; /* a continuation byte: look further back */
		if (c < 0xc2 || c > 0xf4)
			return 0; /* ASCII or no lead byte: nothing is cut */
		need = c <= 0xdf ? 2 : c <= 0xef ? 3 : 4;
		return back < need ? back : 0;
	}
	return 0;
}

char *kiln_utf8_clean(const char *s, size_t n, size_t *out_len)
{
	char *out = xmalloc(n * 3 + 1);
	size_t i = 0, o = 0, k;
	uint32_t c;

	while (i < n) {
		k = kiln_utf8_decode(s + i, n - i, &c);
		if (k && c != 0) {
			memcpy(out + o, s + i, k);
			o += k;
			i += k;
		} else {
			memcpy(out + o, REPLACEMENT, 3);
			o += 3;
			i++;
		}
	}
	out[o] = '\0';
	if (out_len)
		*out_len = o;
	return out;
}
