/* src/basic/platform: parsing, normalization, matching, formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/error.h"
#include "basic/platform.h"
#include "basic/strbuf.h"

static void test_normalize(void **state)
{
	static const char *const cases[][2] = {
		{ "linux/amd64", "linux/amd64" },
		{ "linux/x86_64", "linux/amd64" },
		{ "linux/x86-64", "linux/amd64" },
		{ "Linux/X86_64", "linux/amd64" },
		{ "linux/aarch64", "linux/arm64" },
		{ "linux/arm64/v8", "linux/arm64" },
		{ "linux/arm64/V8", "linux/arm64" },
		{ "linux/arm64/v9", "linux/arm64/v9" },
		{ "linux/arm", "linux/arm/v7" },
		{ "linux/arm/v6", "linux/arm/v6" },
		{ "linux/armhf", "linux/arm/v7" },
		{ "linux/armel", "linux/arm/v6" },
		{ "linux/armv7l", "linux/arm/v7" },
		{ "linux/i686", "linux/386" },
		{ "linux/mips64el", "linux/mips64le" },
		{ "linux/loongarch64", "linux/loong64" },
		{ "linux/s390x", "linux/s390x" },
		{ "windows/amd64", "windows/amd64" },
		{ "linux/foo", "linux/foo" },
		/* A lone architecture is linux's (containerd's Parse). */
		{ "aarch64", "linux/arm64" },
		{ "amd64", "linux/amd64" },
		{ "arm", "linux/arm/v7" },
		{ "riscv64", "linux/riscv64" },
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *n = kiln_platform_normalize(cases[i][0]);

		if (!n || strcmp(n, cases[i][1]))
			fail_msg("normalize(%s) = %s, want %s", cases[i][0],
				 n ? n : "NULL", cases[i][1]);
		free(n);
	}
}

static void test_normalize_rejects(void **state)
{
	static const char *const bad[] = {
		"", "windows", "linux", "foo", "/amd64", "linux/", "linux//v7",
		"linux/amd64/", "linux/amd64/v1/x", "li nux/amd64", "linux/am$d64",
		"lin.ux/amd64",
	};
	size_t i;

	assert_null(kiln_platform_normalize(NULL));
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *n = kiln_platform_normalize(bad[i]);

		if (n)
			fail_msg("normalize(%s) = %s, want NULL", bad[i], n);
	}
}

static void test_parse(void **state)
{
	struct kiln_platform p;
	struct kiln_error *err = NULL;

	/* Parsing splits as written: no aliases, no default variants. */
	assert_int_equal(kiln_platform_parse("linux/arm64/v8", &p, &err), 0);
	assert_string_equal(p.os, "linux");
	assert_string_equal(p.arch, "arm64");
	assert_string_equal(p.variant, "v8");
	kiln_platform_release(&p);
	assert_int_equal(kiln_platform_parse("linux/x86_64", &p, &err), 0);
	assert_string_equal(p.arch, "x86_64");
	assert_string_equal(p.variant, "");
	kiln_platform_normalize_parts(&p);
	assert_string_equal(p.arch, "amd64");
	kiln_platform_release(&p);
	/* A lone word is not "os/arch" here: the error names it. */
	assert_int_equal(kiln_platform_parse("aarch64", &p, &err), -EINVAL);
	assert_null(p.os);
	assert_non_null(err);
	assert_string_equal(kiln_error_msg(err),
			    "platform \"aarch64\" is not os/arch[/variant]");
	kiln_error_free(err);
	err = NULL;
	assert_int_equal(kiln_platform_parse(NULL, &p, &err), -EINVAL);
	assert_string_equal(kiln_error_msg(err), "platform \"\" is not os/arch[/variant]");
	kiln_error_free(err);
	assert_int_equal(kiln_platform_invalid(NULL, "x"), -EINVAL);
}

static void test_format_and_match(void **state)
{
	struct kiln_platform want, have;
	char *s;

	assert_int_equal(kiln_platform_parse("linux/arm64", &want, NULL), 0);
	assert_int_equal(kiln_platform_parse("linux/arm64/v9", &have, NULL), 0);
	/* A want without variant takes any; with one, only that one. */
	assert_true(kiln_platform_match(&want, &have));
	assert_false(kiln_platform_match(&have, &want));
	assert_true(kiln_platform_match(&have, &have));
	s = kiln_platform_format(&have);
	assert_string_equal(s, "linux/arm64/v9");
	free(s);
	s = kiln_platform_format(&want);
	assert_string_equal(s, "linux/arm64");
	free(s);
	kiln_platform_release(&have);
	assert_int_equal(kiln_platform_parse("linux/amd64", &have, NULL), 0);
	assert_false(kiln_platform_match(&want, &have));
	kiln_platform_release(&have);
	assert_int_equal(kiln_platform_parse("windows/arm64", &have, NULL), 0);
	assert_false(kiln_platform_match(&want, &have));
	kiln_platform_release(&have);
	kiln_platform_release(&want);
	kiln_platform_release(&want); /* released twice is fine */
}

static void test_native(void **state)
{
	char *n = kiln_platform_native();
	char *again = kiln_platform_normalize(n);

	assert_non_null(again);
	assert_string_equal(n, again);
	assert_int_equal(strncmp(n, "linux/", 6), 0);
	free(again);
	free(n);
}

static void test_list(void **state)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(40);

	assert_int_equal(kiln_platform_list_add(&sb, true, "linux/amd64", false), 0);
	assert_int_equal(kiln_platform_list_add(&sb, false, "linux/arm64", true), 0);
	assert_string_equal(kiln_strbuf_str(&sb), "linux/amd64,linux/arm64(emulated)");
	/* Past the buffer's limit: refused, the list as it was. */
	assert_int_equal(kiln_platform_list_add(&sb, false, "linux/riscv64", false), -E2BIG);
	assert_string_equal(kiln_strbuf_str(&sb), "linux/amd64,linux/arm64(emulated)");
	kiln_strbuf_release(&sb);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_normalize),
		cmocka_unit_test(test_normalize_rejects),
		cmocka_unit_test(test_parse),
		cmocka_unit_test(test_format_and_match),
		cmocka_unit_test(test_native),
		cmocka_unit_test(test_list),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
