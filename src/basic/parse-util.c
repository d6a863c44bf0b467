#include "basic/parse-util.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/macro.h"

int kiln_parse_u64(const char *s, uint64_t *out)
{
	unsigned long long v;
	char *end;

	if (!s || !*s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno == ERANGE)
		return -ERANGE;
	if (*end)
		return -EINVAL;
	*out = v;
	return 0;
}

int kiln_parse_u32(const char *s, uint32_t *out)
{
	uint64_t v;
	int r = kiln_parse_u64(s, &v);

	if (r < 0)
		return r;
	if (v > UINT32_MAX)
		return -ERANGE;
	*out = (uint32_t)v;
	return 0;
}

int kiln_parse_int(const char *s, int *out)
{
	long v;
	char *end;

	if (!s || !*s)
		return -EINVAL;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno == ERANGE || v < INT_MIN || v > INT_MAX)
		return -ERANGE;
	if (*end || end == s)
		return -EINVAL;
	*out = (int)v;
	return 0;
}

int kiln_parse_size(const char *s, uint64_t *out)
{
	static const struct {
		const char *suffix;
		uint64_t mult;
	} units[] = {
		{ "", 1 },
		{ "b", 1 },
		{ "k", 1024 },
		{ "kib", 1024 },
		{ "kb", 1000 },
		{ "m", 1024 * 1024 },
		{ "mib", 1024 * 1024 },
		{ "mb", 1000 * 1000 },
		{ "g", 1024ull * 1024 * 1024 },
		{ "gib", 1024ull * 1024 * 1024 },
		{ "gb", 1000ull * 1000 * 1000 },
		{ "t", 1024ull * 1024 * 1024 * 1024 },
		{ "tib", 1024ull * 1024 * 1024 * 1024 },
		{ "tb", 1000ull * 1000 * 1000 * 1000 },
	};
	char *end;
	double v;
	size_t i;

	if (!s || !*s || !(isdigit((unsigned char)*s) || *s == '.'))
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || v < 0)
		return -EINVAL;
	while (*end == ' ')
		end++;
	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcasecmp(end, units[i].suffix) == 0) {
			double r = v * (double)units[i].mult;
			if (r >= 18446744073709551615.0)
				return -ERANGE;
			*out = (uint64_t)r;
			return 0;
		}
	}
	return -EINVAL;
}

const char *kiln_format_size(uint64_t n, char *buf, unsigned size)
{
	static const char *const u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)n;
	unsigned i = 0;

	while (v >= 1024 && i < 4) {
		v /= 1024;
		i++;
	}
	if (i == 0)
		snprintf(buf, size, "%llu B", (unsigned long long)n);
	else
		snprintf(buf, size, "%.1f %s", v, u[i]);
	return buf;
}

char *kiln_url_strip_userinfo(const char *url)
{
	const char *auth = strstr(url, "://"), *end, *at;

	if (!auth)
		return xstrdup(url);
	auth += 3;
	end = auth + strcspn(auth, "/?#");
	at = memrchr(auth, '@', (size_t)(end - auth));
	if (!at)
		return xstrdup(url);
	return xasprintf("%.*s%s", (int)(auth - url), url, at + 1);
}

int kiln_parse_duration(const char *s, int64_t *out)
{
	static const struct {
		char unit;
		uint64_t mult;
	} units[] = { { 's', 1 }, { 'm', 60 }, { 'h', 3600 }, { 'd', 86400 } };
	_cleanup_free_ char *num = NULL;
	uint64_t n, mult = 1;
	size_t len, i;

	if (!s || !*s)
		return -EINVAL;
	len = strlen(s);
	if (!isdigit((unsigned char)s[len - 1])) {
		for (i = 0; i < sizeof(units) / sizeof(units[0]); i++)
			if (s[len - 1] == units[i].unit)
				mult = units[i].mult;
		if (mult == 1 && s[len - 1] != 's')
			return -EINVAL;
		len--;
	}
	num = xstrndup(s, len);
	if (kiln_parse_u64(num, &n) < 0)
		return -EINVAL;
	if (n > 100ull * 365 * 86400 / mult)
		return -ERANGE;
	*out = (int64_t)(n * mult);
	return 0;
}
