/* Dockerfile parsing (dockerfile.c) and word expansion (expand.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "basic/alloc.h"
#include "frontend/dockerfile/dockerfile.h"

static struct kiln_dockerfile *parse_ok(const char *text)
{
	struct kiln_dockerfile *df = NULL;
	struct kiln_error *err = NULL;

	if (kiln_dockerfile_parse(text, strlen(text), "Dockerfile", &df, &err) < 0)
		fail_msg("unexpected error: %s", kiln_error_msg(err));
	assert_non_null(df);
	assert_null(err);
	return df;
}

/* Parsing must fail; the message must contain every fragment given. */
static void parse_fails(const char *text, ...)
{
	struct kiln_dockerfile *df = NULL;
	struct kiln_error *err = NULL;
	const char *frag;
	va_list ap;
	int r = kiln_dockerfile_parse(text, strlen(text), "Dockerfile", &df, &err);

	if (r >= 0)
		fail_msg("parse of '%s' succeeded", text);
	assert_null(df);
	assert_non_null(err);
	va_start(ap, text);
	while ((frag = va_arg(ap, const char *)))
		if (!strstr(err->msg, frag))
			fail_msg("error '%s' lacks '%s'", err->msg, frag);
	va_end(ap);
	kiln_error_free(err);
}

/* The instruction's args must equal the given strings (NULL-terminated). */
static void assert_args(const struct kiln_df_instruction *ins, ...)
{
	const char *want;
	size_t i = 0;
	va_list ap;

	va_start(ap, ins);
	while ((want = va_arg(ap, const char *))) {
		if (i >= ins->n_args)
			fail_msg("%s: only %zu args, want '%s'", ins->original, ins->n_args, want);
		if (strcmp(ins->args[i], want))
			fail_msg("%s: arg %zu is '%s', want '%s'", ins->original, i, ins->args[i],
				 want);
		i++;
	}
	va_end(ap);
	if (i != ins->n_args)
		fail_msg("%s: %zu args, want %zu", ins->original, ins->n_args, i);
}

static const struct kiln_df_flag *flag(const struct kiln_df_instruction *ins, const char *name)
{
	size_t i;

	for (i = 0; i < ins->n_flags; i++)
		if (!strcmp(ins->flags[i].name, name))
			return &ins->flags[i];
	fail_msg("%s: no flag --%s", ins->original, name);
	return NULL;
}

/* ---- parser ---- */

static void test_shapes(void **state)
{
	struct kiln_dockerfile *df = parse_ok(
		"FROM --platform=$BUILDPLATFORM golang:1.22 AS build\n"
		"RUN go build -o /out ./...\n"
		"CMD [\"/app\", \"--serve\"]\n"
		"ENTRYPOINT exec /app\n"
		"SHELL [\"/bin/bash\", \"-c\"]\n"
		"COPY --from=build /out /app\n"
		"ADD \"a b\" c /d/\n"
		"ENV A=1 B=\"two words\" C='x y'\n"
		"ARG V=1 W \"Q=a b\"\n"
		"LABEL org.title=\"kiln\" k=v\n"
		"WORKDIR  /src dir \n"
		"USER app:app\n"
		"EXPOSE 80/tcp 443\n"
		"VOLUME /data /cache\n"
		"VOLUME [\"/v\"]\n"
		"STOPSIGNAL SIGTERM\n"
		"MAINTAINER Someone <a@b.c>\n");
	const struct kiln_df_instruction *in = df->ins;

	assert_int_equal(df->n, 17);
	assert_int_equal(df->escape, '\\');
	assert_null(df->syntax);
	assert_int_equal(in[0].cmd, KILN_DF_FROM);
	assert_args(&in[0], "golang:1.22", "AS", "build", NULL);
	assert_string_equal(flag(&in[0], "platform")->value, "$BUILDPLATFORM");
	assert_false(in[1].json_form);
	assert_args(&in[1], "go build -o /out ./...", NULL);
	assert_true(in[2].json_form);
	assert_args(&in[2], "/app", "--serve", NULL);
	assert_false(in[3].json_form);
	assert_args(&in[3], "exec /app", NULL);
	assert_true(in[4].json_form);
	assert_args(&in[4], "/bin/bash", "-c", NULL);
	assert_args(&in[5], "/out", "/app", NULL);
	assert_string_equal(flag(&in[5], "from")->value, "build");
	/* like Docker: shell-form COPY/ADD split on blanks even inside quotes */
	assert_args(&in[6], "\"a", "b\"", "c", "/d/", NULL);
	assert_args(&in[7], "A", "1", "B", "\"two words\"", "C", "'x y'", NULL);
	assert_args(&in[8], "V=1", "W", "\"Q=a b\"", NULL);
	assert_args(&in[9], "org.title", "\"kiln\"", "k", "v", NULL);
	assert_args(&in[10], "/src dir", NULL);
	assert_args(&in[11], "app:app", NULL);
	assert_args(&in[12], "80/tcp", "443", NULL);
	assert_args(&in[13], "/data", "/cache", NULL);
	assert_false(in[13].json_form);
	assert_true(in[14].json_form);
	assert_args(&in[14], "/v", NULL);
	assert_args(&in[15], "SIGTERM", NULL);
	assert_int_equal(in[16].cmd, KILN_DF_MAINTAINER);
	assert_args(&in[16], "Someone <a@b.c>", NULL);
	kiln_dockerfile_free(df);
}

static void test_positions_and_original(void **state)
{
	struct kiln_dockerfile *df = parse_ok("\n"
					      "  from alpine\n"
					      "\n"
					      "   Run echo a \\\n"
					      "     --x=1 b\n"
					      "copy \\\n"
					      "  --chown=1:2 a b\n");
	const struct kiln_df_instruction *in = df->ins;

	assert_int_equal(df->n, 3);
	assert_int_equal(in[0].cmd, KILN_DF_FROM);
	assert_int_equal(in[0].pos.line, 2);
	assert_int_equal(in[0].pos.col, 3);
	assert_int_equal(in[0].end_line, 2);
	assert_string_equal(in[0].original, "from alpine");
	assert_int_equal(in[1].cmd, KILN_DF_RUN);
	assert_int_equal(in[1].pos.line, 4);
	assert_int_equal(in[1].pos.col, 4);
	assert_int_equal(in[1].end_line, 5);
	/* joined as Docker joins: no separator, continuation blanks kept */
	assert_string_equal(in[1].original, "Run echo a      --x=1 b");
	assert_int_equal(in[1].n_flags, 0);
	assert_int_equal(in[2].n_flags, 1);
	assert_string_equal(in[2].flags[0].name, "chown");
	assert_string_equal(in[2].flags[0].value, "1:2");
	assert_int_equal(in[2].flags[0].pos.line, 7);
	assert_int_equal(in[2].flags[0].pos.col, 3);
	assert_args(&in[2], "a", "b", NULL);
	kiln_dockerfile_free(df);
}

static void test_continuation_comments_blank(void **state)
{
	struct kiln_dockerfile *df = parse_ok("FROM busybox\n"
					      "RUN echo one \\\n"
					      "# a comment inside\n"
					      "    # an indented comment\n"
					      "\n"
					      "   \t\n"
					      "  two \\  \t\n"
					      "three\n"
					      "# trailing comment\n"
					      "RUN echo \\\\\n"
					      "CMD x\n");
	const struct kiln_df_instruction *in = df->ins;

	assert_int_equal(df->n, 4);
	assert_args(&in[1], "echo one   two three", NULL);
	assert_int_equal(in[1].end_line, 8);
	/* an escaped escape character at the end is no continuation */
	assert_args(&in[2], "echo \\\\", NULL);
	assert_int_equal(in[3].cmd, KILN_DF_CMD);
	kiln_dockerfile_free(df);
}

static void test_crlf_and_bom(void **state)
{
	struct kiln_dockerfile *df = parse_ok("\xef\xbb\xbf# syntax=docker/dockerfile:1\r\n"
					      "FROM a\r\n"
					      "RUN x \\\r\n"
					      "  y\r\n");

	assert_string_equal(df->syntax, "docker/dockerfile:1");
	assert_int_equal(df->n, 2);
	assert_args(&df->ins[1], "x   y", NULL);
	kiln_dockerfile_free(df);
}

static void test_directives(void **state)
{
	struct kiln_dockerfile *df = parse_ok("#  SYNTAX = example/front:1  \n"
					      "# Check=skip=all\n"
					      "#escape=`\n"
					      "FROM a\n");

	assert_string_equal(df->syntax, "example/front:1");
	assert_int_equal(df->syntax_line, 1);
	assert_int_equal(df->escape, '`');
	kiln_dockerfile_free(df);
	df = parse_ok("# escape=`\n# syntax=docker/dockerfile:1 --opt\nFROM a\n");
	assert_string_equal(df->syntax, "docker/dockerfile:1 --opt");
	assert_int_equal(df->syntax_line, 2);
	kiln_dockerfile_free(df);

	/* after a comment, an empty line or an instruction: plain comments */
	df = parse_ok("# hello\n# escape=`\nFROM a\n");
	assert_int_equal(df->escape, '\\');
	kiln_dockerfile_free(df);
	df = parse_ok("\n# escape=`\nFROM a\n");
	assert_int_equal(df->escape, '\\');
	kiln_dockerfile_free(df);
	df = parse_ok("FROM a\n# syntax=x\n");
	assert_null(df->syntax);
	assert_int_equal(df->syntax_line, 0);
	kiln_dockerfile_free(df);

	parse_fails("# escape=x\nFROM a\n", "Dockerfile:1:1:", "invalid escape token 'x'", NULL);
	parse_fails("# escape=\\\\\nFROM a\n", "Dockerfile:1:1:", "invalid escape token", NULL);
	parse_fails("# escape=`\n# escape=\\\nFROM a\n", "Dockerfile:2:1:",
		    "only one escape parser directive", NULL);
}

static void test_escape_backtick_windows(void **state)
{
	struct kiln_dockerfile *df = parse_ok("# escape=`\n"
					      "FROM mcr.microsoft.com/windows/servercore\n"
					      "COPY testfile.txt c:\\\n"
					      "RUN dir c:\\ `\n"
					      "    /s\n"
					      "WORKDIR C:\\Users\\app\n"
					      "ENV P=C:\\tools`\\bin\n");
	const struct kiln_df_instruction *in = df->ins;

	assert_int_equal(df->escape, '`');
	assert_int_equal(df->n, 5);
	/* a trailing backslash is just a path character here */
	assert_args(&in[1], "testfile.txt", "c:\\", NULL);
	assert_args(&in[2], "dir c:\\     /s", NULL);
	assert_int_equal(in[2].end_line, 5);
	assert_args(&in[3], "C:\\Users\\app", NULL);
	assert_args(&in[4], "P", "C:\\tools`\\bin", NULL);
	kiln_dockerfile_free(df);
}

static void test_json_forms(void **state)
{
	struct kiln_dockerfile *df = parse_ok("FROM a\n"
					      "CMD [\"a\", 'b']\n"
					      "CMD   [ \"sh\" ,\"-c\", \"echo \\\"hi\\\" \\u00e9\" ]  \n"
					      "ENTRYPOINT []\n"
					      "RUN [\"a\" \"b\"]\n"
					      "COPY [\"a b\", \"/c d/\"]\n"
					      "RUN [\"x\"] trailing\n"
					      "ADD [\"unterminated\" /x\n");
	const struct kiln_df_instruction *in = df->ins;

	assert_false(in[1].json_form);
	assert_args(&in[1], "[\"a\", 'b']", NULL);
	assert_true(in[2].json_form);
	assert_args(&in[2], "sh", "-c", "echo \"hi\" \xc3\xa9", NULL);
	assert_true(in[3].json_form);
	assert_int_equal(in[3].n_args, 0);
	assert_false(in[4].json_form);
	assert_args(&in[4], "[\"a\" \"b\"]", NULL);
	assert_true(in[5].json_form);
	assert_args(&in[5], "a b", "/c d/", NULL);
	assert_false(in[6].json_form);
	assert_false(in[7].json_form);
	assert_args(&in[7], "[\"unterminated\"", "/x", NULL);
	kiln_dockerfile_free(df);

	/* a real JSON array of non-strings is an error, as in Docker */
	parse_fails("FROM a\nCMD [\"a\", 1]\n", "Dockerfile:2:1: CMD:", "strings only", NULL);
	parse_fails("FROM a\nSHELL /bin/sh -c\n", "Dockerfile:2:1: SHELL:", "JSON form", NULL);
}

static void test_flags(void **state)
{
	struct kiln_dockerfile *df = parse_ok(
		"FROM --platform=linux/arm64 a\n"
		"RUN --mount=type=cache,target=/root/.cache --network=none --security=insecure "
		"--mount=type=secret,id=\"a b\" make\n"
		"COPY --link --chmod=0644 --from=x src dst\n"
		"RUN -- --not-a-flag\n"
		"RUN echo --not-a-flag\n"
		"ADD --unknown-one=1 http://x/y /z\n");
	const struct kiln_df_instruction *in = df->ins;

	assert_int_equal(in[1].n_flags, 4);
	assert_string_equal(in[1].flags[0].name, "mount");
	assert_string_equal(in[1].flags[0].value, "type=cache,target=/root/.cache");
	assert_string_equal(in[1].flags[1].value, "none");
	assert_string_equal(in[1].flags[3].value, "type=secret,id=a b");
	assert_args(&in[1], "make", NULL);
	assert_int_equal(in[1].flags[1].pos.col, 44);
	assert_int_equal(in[2].n_flags, 3);
	assert_null(flag(&in[2], "link")->value);
	assert_string_equal(flag(&in[2], "chmod")->value, "0644");
	assert_args(&in[2], "src", "dst", NULL);
	assert_int_equal(in[3].n_flags, 0);
	assert_args(&in[3], "--not-a-flag", NULL);
	assert_int_equal(in[4].n_flags, 0);
	assert_args(&in[4], "echo --not-a-flag", NULL);
	assert_string_equal(flag(&in[5], "unknown-one")->value, "1");
	kiln_dockerfile_free(df);
}

static void test_heredocs(void **state)
{
	struct kiln_dockerfile *df = parse_ok("FROM a\n"
					      "RUN <<EOF\n"
					      "echo $HOME\n"
					      "  indented\n"
					      "EOF\n"
					      "COPY <<A <<\"B\" /dest/\n"
					      "a1\n"
					      "A\n"
					      "b $X\n"
					      "B\n"
					      "RUN <<-'END' bash\n"
					      "\t\tline one\n"
					      "\tline two\n"
					      "\tEND\n"
					      "RUN 3<<X cat /dev/fd/3\n"
					      "X\n"
					      "RUN [\"<<EOF\"]\n"
					      "CMD <<EOF\n");
	const struct kiln_df_instruction *in = df->ins;

	assert_int_equal(df->n, 7);
	assert_int_equal(in[1].n_heredocs, 1);
	assert_string_equal(in[1].heredocs[0].name, "EOF");
	assert_string_equal(in[1].heredocs[0].content, "echo $HOME\n  indented\n");
	assert_true(in[1].heredocs[0].expand);
	assert_false(in[1].heredocs[0].chomp);
	assert_args(&in[1], "<<EOF", NULL);
	assert_int_equal(in[1].end_line, 5);

	assert_int_equal(in[2].n_heredocs, 2);
	assert_string_equal(in[2].heredocs[0].name, "A");
	assert_string_equal(in[2].heredocs[0].content, "a1\n");
	assert_true(in[2].heredocs[0].expand);
	assert_string_equal(in[2].heredocs[1].name, "B");
	assert_string_equal(in[2].heredocs[1].content, "b $X\n");
	assert_false(in[2].heredocs[1].expand);
	assert_args(&in[2], "<<A", "<<\"B\"", "/dest/", NULL);
	assert_int_equal(in[2].end_line, 10);

	assert_int_equal(in[3].n_heredocs, 1);
	assert_string_equal(in[3].heredocs[0].name, "END");
	assert_true(in[3].heredocs[0].chomp);
	assert_false(in[3].heredocs[0].expand);
	assert_string_equal(in[3].heredocs[0].content, "line one\nline two\n");

	assert_string_equal(in[4].heredocs[0].name, "X");
	assert_string_equal(in[4].heredocs[0].content, "");
	/* JSON form and other instructions have no heredocs */
	assert_int_equal(in[5].n_heredocs, 0);
	assert_int_equal(in[6].n_heredocs, 0);
	kiln_dockerfile_free(df);

	parse_fails("FROM a\n\nRUN true\n  COPY <<EOF /x\nno end\n", "Dockerfile:4:3: COPY:",
		    "unterminated heredoc <<EOF", NULL);
	parse_fails("FROM a\nRUN <<A <<B\nA\nbody\n", "Dockerfile:2:1: RUN:",
		    "unterminated heredoc <<B", NULL);
}

static void test_env_label_arg(void **state)
{
	struct kiln_dockerfile *df = parse_ok("FROM a\n"
					      "ENV PATH /usr/bin:$PATH  and more\n"
					      "ENV A=\"x \\\" y\" B=a\\ b C=\n"
					      "LABEL \"quoted key\"=v\n"
					      "ARG A\n"
					      "ARG B=\"1 2\" C=\n");
	const struct kiln_df_instruction *in = df->ins;

	assert_args(&in[1], "PATH", "/usr/bin:$PATH  and more", NULL);
	assert_args(&in[2], "A", "\"x \\\" y\"", "B", "a\\ b", "C", "", NULL);
	assert_args(&in[3], "\"quoted key\"", "v", NULL);
	assert_args(&in[4], "A", NULL);
	assert_args(&in[5], "B=\"1 2\"", "C=", NULL);
	kiln_dockerfile_free(df);

	parse_fails("FROM a\nENV ONLYKEY\n", "Dockerfile:2:1: ENV:", "must have two arguments", NULL);
	parse_fails("FROM a\nLABEL a=b c\n", "Dockerfile:2:1: LABEL:", "can't find =", NULL);
	parse_fails("FROM a\nENV =x\n", "ENV:", "can not be blank", NULL);
	parse_fails("FROM a\nARG\n", "Dockerfile:2:1: ARG:", "at least one argument", NULL);
}

static void test_onbuild(void **state)
{
	struct kiln_dockerfile *df = parse_ok("FROM a\n"
					      "ONBUILD RUN --mount=type=cache,target=/c make\n"
					      "onbuild copy <<EOF /x\n"
					      "hi\n"
					      "EOF\n");
	const struct kiln_df_instruction *in = df->ins;

	assert_int_equal(in[1].cmd, KILN_DF_ONBUILD);
	assert_args(&in[1], "RUN --mount=type=cache,target=/c make", NULL);
	assert_non_null(in[1].onbuild);
	assert_int_equal(in[1].onbuild->cmd, KILN_DF_RUN);
	assert_int_equal(in[1].onbuild->pos.col, 9);
	assert_string_equal(flag(in[1].onbuild, "mount")->value, "type=cache,target=/c");
	assert_args(in[1].onbuild, "make", NULL);
	assert_int_equal(in[2].onbuild->cmd, KILN_DF_COPY);
	assert_int_equal(in[2].onbuild->n_heredocs, 1);
	assert_string_equal(in[2].onbuild->heredocs[0].content, "hi\n");
	assert_int_equal(in[2].end_line, 5);
	kiln_dockerfile_free(df);

	parse_fails("FROM a\nONBUILD FROM b\n", "Dockerfile:2:9: ONBUILD:",
		    "FROM isn't allowed as an ONBUILD trigger", NULL);
	parse_fails("FROM a\nONBUILD ONBUILD RUN x\n", "Dockerfile:2:9: ONBUILD:", "chaining", NULL);
	parse_fails("FROM a\nONBUILD MAINTAINER me\n", "MAINTAINER isn't allowed", NULL);
	parse_fails("FROM a\nONBUILD\n", "Dockerfile:2:1: ONBUILD:", "at least one", NULL);
	parse_fails("FROM a\nONBUILD BOGUS x\n", "Dockerfile:2:9:", "unknown instruction: BOGUS",
		    NULL);
}

static void test_healthcheck(void **state)
{
	struct kiln_dockerfile *df = parse_ok("FROM a\n"
					      "HEALTHCHECK NONE\n"
					      "HEALTHCHECK --interval=5s --timeout=3s --start-period=1m "
					      "--start-interval=2s --retries=3 CMD curl -f http://x/\n"
					      "healthcheck cmd [\"/bin/check\", \"-q\"]\n");
	const struct kiln_df_instruction *in = df->ins;

	assert_args(&in[1], "NONE", NULL);
	assert_int_equal(in[2].n_flags, 5);
	assert_string_equal(flag(&in[2], "interval")->value, "5s");
	assert_string_equal(flag(&in[2], "start-interval")->value, "2s");
	assert_string_equal(flag(&in[2], "retries")->value, "3");
	assert_false(in[2].json_form);
	assert_args(&in[2], "CMD", "curl -f http://x/", NULL);
	assert_true(in[3].json_form);
	assert_args(&in[3], "CMD", "/bin/check", "-q", NULL);
	kiln_dockerfile_free(df);

	parse_fails("FROM a\nHEALTHCHECK NONE x\n", "HEALTHCHECK:", "takes no arguments", NULL);
	parse_fails("FROM a\nHEALTHCHECK CMD\n", "HEALTHCHECK:", "missing command", NULL);
	parse_fails("FROM a\nHEALTHCHECK PING x\n", "HEALTHCHECK:", "unknown type", NULL);
	parse_fails("FROM a\nHEALTHCHECK\n", "Dockerfile:2:1: HEALTHCHECK:", NULL);
}

static void test_errors(void **state)
{
	parse_fails("FROM a\n\n   FOOBAR x\n", "Dockerfile:3:4: unknown instruction: FOOBAR", NULL);
	parse_fails("FROM\n", "Dockerfile:1:1: FROM: FROM requires either one or three arguments",
		    NULL);
	parse_fails("FROM a b\n", "FROM requires either one or three", NULL);
	parse_fails("FROM a NOTAS b\n", "FROM requires either one or three", NULL);
	parse_fails("FROM a\nCOPY onlyone\n", "Dockerfile:2:1: COPY:", "at least two arguments",
		    NULL);
	parse_fails("FROM a\nADD\n", "Dockerfile:2:1: ADD:", NULL);
	parse_fails("FROM a\nRUN\n", "Dockerfile:2:1: RUN: RUN requires at least one argument", NULL);
	parse_fails("FROM a\nWORKDIR\n", "WORKDIR requires exactly one argument", NULL);
	parse_fails("FROM a\nEXPOSE\n", "EXPOSE requires at least one argument", NULL);
	parse_fails("", "file with no instructions", NULL);
	parse_fails("# just a comment\n\n", "file with no instructions", NULL);
}

static void test_limits(void **state)
{
	struct kiln_dockerfile *df = NULL;
	struct kiln_error *err = NULL;
	size_t big = (1u << 20) + 16;
	char *text = xmalloc(KILN_DF_MAX_BYTES + 2);

	memcpy(text, "FROM a\nRUN ", 11);
	memset(text + 11, 'x', big);
	text[11 + big] = '\n';
	assert_int_equal(kiln_dockerfile_parse(text, 12 + big, "Dockerfile", &df, &err), -E2BIG);
	assert_non_null(strstr(err->msg, "Dockerfile:2:1: line longer than"));
	kiln_error_free(err);
	err = NULL;

	memset(text, '\n', KILN_DF_MAX_BYTES + 1);
	assert_int_equal(kiln_dockerfile_parse(text, KILN_DF_MAX_BYTES + 1, "Dockerfile", &df, &err),
			 -E2BIG);
	assert_null(df);
	kiln_error_free(err);
	err = NULL;

	memcpy(text, "FROM a\nRUN a\0b\n", 15);
	assert_true(kiln_dockerfile_parse(text, 15, "Dockerfile", &df, &err) < 0);
	assert_non_null(strstr(err->msg, "Dockerfile:2: NUL byte"));
	kiln_error_free(err);
	free(text);
}

static void test_cmd_names(void **state)
{
	assert_string_equal(kiln_df_cmd_name(KILN_DF_FROM), "FROM");
	assert_string_equal(kiln_df_cmd_name(KILN_DF_HEALTHCHECK), "HEALTHCHECK");
	assert_string_equal(kiln_df_cmd_name(KILN_DF_MAINTAINER), "MAINTAINER");
	assert_string_equal(kiln_df_cmd_name((enum kiln_df_cmd)99), "UNKNOWN");
}

/* ---- expansion ---- */

static const char *const env[][2] = {
	{ "PWD", "/home" }, { "SHELL", "bash" }, { "NULL", "" }, { "FOO", "x  y" },
	{ "SL", "a/b/c.tar.gz" },
};

static const char *lookup(void *ud, const char *name)
{
	size_t i;

	(void)ud;
	for (i = 0; i < ARRAY_SIZE(env); i++)
		if (!strcmp(env[i][0], name))
			return env[i][1];
	return NULL;
}

#define ERR "\x01" /* expected: an error */

static void test_expand_table(void **state)
{
	static const char *const cases[][2] = {
		{ "hello", "hello" },
		{ "he'll'o", "hello" },
		{ "he'llo", ERR },
		{ "he\\'llo", "he'llo" },
		{ "abc\\tdef", "abctdef" },
		{ "\"abc\\tdef\"", "abc\\tdef" },
		{ "'abc\\tdef'", "abc\\tdef" },
		{ "hello\\", "hello" },
		{ "hello\\\\", "hello\\" },
		{ "\"hello", ERR },
		{ "\"a\\\"b\"", "a\"b" },
		{ "\"a\\\\b\"", "a\\b" },
		{ "$PWD", "/home" },
		{ "${PWD}", "/home" },
		{ "${PWD}x/$SHELL", "/homex/bash" },
		{ "$PWDx", "" },
		{ "'$PWD'", "$PWD" },
		{ "\"$PWD\"", "/home" },
		{ "\\$PWD", "$PWD" },
		{ "\"\\$PWD\"", "$PWD" },
		{ "${UNSET}", "" },
		{ "${UNSET:-def}", "def" },
		{ "${NULL:-def}", "def" },
		{ "${NULL-def}", "" },
		{ "${UNSET-def}", "def" },
		{ "${PWD:-def}", "/home" },
		{ "${PWD:+alt}", "alt" },
		{ "${NULL:+alt}", "" },
		{ "${NULL+alt}", "alt" },
		{ "${UNSET+alt}", "" },
		{ "${UNSET:-${SHELL}}", "bash" },
		{ "${UNSET:-${NOPE:-${SHELL}x}}", "bashx" },
		{ "${UNSET:-\"a  b\"}", "a  b" },
		{ "${UNSET:-a\\}b}", "a}b" },
		{ "$", "$" },
		{ "a$ b", "a$ b" },
		{ "$$", "" },  /* $$ is the special parameter "$", normally unset */
		{ "$1x", "x" }, /* positional parameter "1" */
		{ "${}", ERR },
		{ "${:-x}", ERR },
		{ "${PWD", ERR },
		{ "${PWD:-x", ERR },
		{ "${UNSET:?need it}", ERR },
		{ "${NULL?x}", "" },
		{ "${NULL:?}", ERR },
		{ "${PWD?x}", "/home" },
		{ "${PWD:=x}", ERR },
		{ "${SL#*/}", "b/c.tar.gz" },
		{ "${SL##*/}", "c.tar.gz" },
		{ "${SL%.*}", "a/b/c.tar" },
		{ "${SL%%.*}", "a/b/c" },
		{ "${SL/\\//-}", "a-b/c.tar.gz" },
		{ "${SL//\\//-}", "a-b-c.tar.gz" },
		{ "${SL//?/}", "" },
		{ "${SL#\\x}", ERR },
		{ "\"$FOO\"", "x  y" },
		{ "a\\ b", "a b" },
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		struct kiln_error *err = NULL;
		char *out = NULL;
		int r = kiln_df_expand_word(cases[i][0], '\\', lookup, NULL, &out, &err);

		if (!strcmp(cases[i][1], ERR)) {
			if (r >= 0)
				fail_msg("'%s' expanded to '%s', want an error", cases[i][0], out);
			assert_null(out);
			if (!strstr(kiln_error_msg(err), cases[i][0]))
				fail_msg("error '%s' does not name '%s'", kiln_error_msg(err),
					 cases[i][0]);
			kiln_error_free(err);
			continue;
		}
		if (r < 0)
			fail_msg("'%s': %s", cases[i][0], kiln_error_msg(err));
		if (strcmp(out, cases[i][1]))
			fail_msg("'%s' expanded to '%s', want '%s'", cases[i][0], out, cases[i][1]);
		free(out);
	}
}

static void test_expand_errors_text(void **state)
{
	struct kiln_error *err = NULL;
	char *out = NULL;

	assert_int_equal(kiln_df_expand_word("${UNSET:?need it}", '\\', lookup, NULL, &out, &err),
			 -EINVAL);
	assert_non_null(strstr(err->msg, "UNSET: need it"));
	kiln_error_free(err);
	err = NULL;
	assert_true(kiln_df_expand_word("${NULL:?}", '\\', lookup, NULL, &out, &err) < 0);
	assert_non_null(strstr(err->msg, "NULL: is not allowed to be empty"));
	kiln_error_free(err);
	err = NULL;
	assert_true(kiln_df_expand_word("${}", '\\', NULL, NULL, &out, &err) < 0);
	assert_non_null(strstr(err->msg, "bad substitution"));
	kiln_error_free(err);
}

static void test_expand_backtick(void **state)
{
	static const char *const cases[][2] = {
		{ "C:\\path\\$SHELL", "C:\\path\\bash" },
		{ "`$PWD", "$PWD" },
		{ "\"a`\"b\"", "a\"b" },
		{ "\"c:\\\"", "c:\\" },
		{ "x``y", "x`y" },
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(cases); i++) {
		char *out = NULL;

		assert_int_equal(kiln_df_expand_word(cases[i][0], '`', lookup, NULL, &out, NULL), 0);
		if (strcmp(out, cases[i][1]))
			fail_msg("'%s' expanded to '%s', want '%s'", cases[i][0], out, cases[i][1]);
		free(out);
	}
}

/* Expand words; want is a '|'-separated list ("" for none). */
static void check_words(const char *text, const char *want)
{
	char **w = NULL, buf[256] = "";
	size_t n = 0, i, len = 0;

	if (kiln_df_expand_words(text, '\\', lookup, NULL, &w, &n, NULL) < 0)
		fail_msg("'%s' failed", text);
	assert_null(w[n]);
	for (i = 0; i < n; i++) {
		len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%s%s", i ? "|" : "", w[i]);
		free(w[i]);
	}
	free(w);
	if (strcmp(buf, want))
		fail_msg("words of '%s' are '%s', want '%s'", text, buf, want);
}

static void test_expand_words(void **state)
{
	char **w = NULL;
	size_t n = 7;

	check_words("a b  c", "a|b|c");
	check_words("  80/tcp\t443  ", "80/tcp|443");
	check_words("\"a b\" c", "a b|c");
	check_words("$FOO", "x|y");
	check_words("\"$FOO\"", "x  y");
	check_words("pre$FOO", "prex|y");
	check_words("a\\ b", "a b");
	check_words("'' \"\" x", "x");
	check_words("${UNSET:-p q}", "p|q");
	check_words("", "");
	assert_true(kiln_df_expand_words("\"open", '\\', lookup, NULL, &w, &n, NULL) < 0);
	assert_null(w);
	assert_int_equal(n, 0);
}

static void test_expand_limits(void **state)
{
	struct kiln_error *err = NULL;
	char *deep = xmalloc(6 * 200 + 16), *out = NULL;
	size_t i, len = 0;

	for (i = 0; i < 200; i++) {
		memcpy(deep + len, "${A:-", 5);
		len += 5;
	}
	for (i = 0; i < 200; i++)
		deep[len++] = '}';
	deep[len] = '\0';
	assert_true(kiln_df_expand_word(deep, '\\', lookup, NULL, &out, &err) < 0);
	assert_non_null(strstr(err->msg, "nested deeper"));
	kiln_error_free(err);
	free(deep);
}

static void test_keywords_case_insensitive(void **state)
{
	struct kiln_dockerfile *df = parse_ok("fRoM a\nrun x\nCmD y\nExPoSe 1\nworkDir /w\n");

	assert_int_equal(df->n, 5);
	assert_int_equal(df->ins[0].cmd, KILN_DF_FROM);
	assert_int_equal(df->ins[1].cmd, KILN_DF_RUN);
	assert_int_equal(df->ins[2].cmd, KILN_DF_CMD);
	assert_int_equal(df->ins[3].cmd, KILN_DF_EXPOSE);
	assert_int_equal(df->ins[4].cmd, KILN_DF_WORKDIR);
	assert_string_equal(df->ins[4].original, "workDir /w");
	kiln_dockerfile_free(df);
}

static void test_continuation_at_eof(void **state)
{
	struct kiln_dockerfile *df = parse_ok("FROM a\nRUN a \\\n  b \\\n");

	assert_int_equal(df->n, 2);
	assert_args(&df->ins[1], "a   b", NULL);
	assert_int_equal(df->ins[1].end_line, 3);
	kiln_dockerfile_free(df);

	/* a lone escape line opens a continuation that carries the instruction */
	df = parse_ok("\\\nFROM a\n");
	assert_int_equal(df->n, 1);
	assert_int_equal(df->ins[0].pos.line, 2);
	assert_args(&df->ins[0], "a", NULL);
	kiln_dockerfile_free(df);
}

static void test_cmd_entrypoint_may_be_empty(void **state)
{
	struct kiln_dockerfile *df = parse_ok("FROM a\nCMD\nENTRYPOINT\nCMD []\n");

	assert_int_equal(df->n, 4);
	assert_int_equal(df->ins[1].n_args, 0);
	assert_false(df->ins[1].json_form);
	assert_int_equal(df->ins[2].n_args, 0);
	assert_true(df->ins[3].json_form);
	assert_int_equal(df->ins[3].n_args, 0);
	kiln_dockerfile_free(df);
}

static void test_unknown_directive_ends_directives(void **state)
{
	struct kiln_dockerfile *df = parse_ok("# foo=bar\n# escape=`\nFROM a\n");

	assert_int_equal(df->escape, '\\');
	kiln_dockerfile_free(df);
	/* an empty value is no directive either */
	df = parse_ok("# escape=\n# syntax=x\nFROM a\n");
	assert_int_equal(df->escape, '\\');
	assert_null(df->syntax);
	kiln_dockerfile_free(df);
	parse_fails("# syntax=a\n# syntax=b\nFROM a\n", "Dockerfile:2:1:",
		    "only one syntax parser directive", NULL);
}

static void test_heredoc_crlf_and_escaped_delim(void **state)
{
	struct kiln_dockerfile *df = parse_ok("FROM a\r\n"
					      "RUN <<E\\OF cat\r\n"
					      "body\r\n"
					      "EOF\r\n"
					      "RUN <<\"\" echo\n");

	assert_int_equal(df->ins[1].n_heredocs, 1);
	assert_string_equal(df->ins[1].heredocs[0].name, "EOF");
	assert_true(df->ins[1].heredocs[0].expand);
	assert_string_equal(df->ins[1].heredocs[0].content, "body\r\n");
	/* an empty delimiter opens nothing */
	assert_int_equal(df->ins[2].n_heredocs, 0);
	kiln_dockerfile_free(df);
}

static void test_json_nested_array_is_error(void **state)
{
	parse_fails("FROM a\nRUN [[\"a\"]]\n", "Dockerfile:2:1: RUN:", "strings only", NULL);
	parse_fails("FROM a\nCOPY [\"a\", null]\n", "COPY:", "strings only", NULL);
}

static void test_flag_quotes_and_bare(void **state)
{
	struct kiln_dockerfile *df = parse_ok("FROM a\n"
					      "COPY --exclude='*.tmp' --parents \"--chmod=7\\\"55\" a b\n"
					      "RUN --network=host -- --x\n");

	assert_int_equal(df->ins[1].n_flags, 2);
	assert_string_equal(df->ins[1].flags[0].value, "*.tmp");
	assert_null(df->ins[1].flags[1].value);
	/* a word starting with a quote is an argument, not a flag */
	assert_args(&df->ins[1], "\"--chmod=7\\\"55\"", "a", "b", NULL);
	assert_int_equal(df->ins[2].n_flags, 1);
	assert_args(&df->ins[2], "--x", NULL);
	kiln_dockerfile_free(df);
	parse_fails("FROM a\nRUN --network=host --\n", "RUN requires at least one argument", NULL);
}

static void test_expand_null_lookup(void **state)
{
	char *out = NULL;

	assert_int_equal(kiln_df_expand_word("a${X:-b}$Y'c'", '\\', NULL, NULL, &out, NULL), 0);
	assert_string_equal(out, "abc");
	free(out);
	assert_int_equal(kiln_df_expand_word("", '\\', NULL, NULL, &out, NULL), 0);
	assert_string_equal(out, "");
	free(out);
}

static const char *special_lookup(void *ud, const char *name)
{
	(*(int *)ud)++;
	return !strcmp(name, "$") ? "pid" : NULL;
}

static void test_expand_special_params(void **state)
{
	int calls = 0;
	char *out = NULL;

	assert_int_equal(kiln_df_expand_word("$$-${$}-$@", '\\', special_lookup, &calls, &out,
					     NULL),
			 0);
	assert_string_equal(out, "pid-pid-");
	assert_int_equal(calls, 3);
	free(out);
}

static void test_onbuild_chain_is_flat(void **state)
{
	size_t reps = 100000, len = 7 + reps * 8 + 6, i;
	char *text = xmalloc(len + 1);
	struct kiln_dockerfile *df = NULL;
	struct kiln_error *err = NULL;

	memcpy(text, "FROM a\n", 7);
	for (i = 0; i < reps; i++)
		memcpy(text + 7 + i * 8, "ONBUILD ", 8);
	memcpy(text + 7 + reps * 8, "RUN x\n", 7);
	/* rejected at the second keyword, not after recursing through all */
	assert_true(kiln_dockerfile_parse(text, len, "Dockerfile", &df, &err) < 0);
	assert_non_null(strstr(err->msg, "Dockerfile:2:9: ONBUILD: chaining"));
	kiln_error_free(err);
	free(text);
}

static void test_many_continued_flags(void **state)
{
	size_t reps = 100000, len = 11 + reps * 8 + 2, i;
	char *text = xmalloc(len + 1);
	struct kiln_dockerfile *df;

	memcpy(text, "FROM a\nRUN ", 11);
	for (i = 0; i < reps; i++)
		memcpy(text + 11 + i * 8, "--f=1 \\\n", 8);
	memcpy(text + 11 + reps * 8, "x\n", 3);
	df = parse_ok(text);
	assert_int_equal(df->ins[1].n_flags, reps);
	assert_int_equal(df->ins[1].flags[reps - 1].pos.line, reps + 1);
	assert_int_equal(df->ins[1].flags[reps - 1].pos.col, 1);
	assert_int_equal(df->ins[1].flags[0].pos.col, 5);
	assert_args(&df->ins[1], "x", NULL);
	kiln_dockerfile_free(df);
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_shapes),
		cmocka_unit_test(test_positions_and_original),
		cmocka_unit_test(test_continuation_comments_blank),
		cmocka_unit_test(test_crlf_and_bom),
		cmocka_unit_test(test_directives),
		cmocka_unit_test(test_escape_backtick_windows),
		cmocka_unit_test(test_json_forms),
		cmocka_unit_test(test_flags),
		cmocka_unit_test(test_heredocs),
		cmocka_unit_test(test_env_label_arg),
		cmocka_unit_test(test_onbuild),
		cmocka_unit_test(test_healthcheck),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_cmd_names),
		cmocka_unit_test(test_expand_table),
		cmocka_unit_test(test_expand_errors_text),
		cmocka_unit_test(test_expand_backtick),
		cmocka_unit_test(test_expand_words),
		cmocka_unit_test(test_expand_limits),
		cmocka_unit_test(test_keywords_case_insensitive),
		cmocka_unit_test(test_continuation_at_eof),
		cmocka_unit_test(test_cmd_entrypoint_may_be_empty),
		cmocka_unit_test(test_unknown_directive_ends_directives),
		cmocka_unit_test(test_heredoc_crlf_and_escaped_delim),
		cmocka_unit_test(test_json_nested_array_is_error),
		cmocka_unit_test(test_flag_quotes_and_bare),
		cmocka_unit_test(test_expand_null_lookup),
		cmocka_unit_test(test_expand_special_params),
		cmocka_unit_test(test_onbuild_chain_is_flat),
		cmocka_unit_test(test_many_continued_flags),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
