/* kiln workers: list the workers registered with a kilnd. */
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/args.h"
#include "basic/fs-util.h"
#include "basic/parse-util.h"
#include "basic/platform.h"
#include "basic/strbuf.h"
#include "cli/common.h"
#include "proto/http-client.h"

#define WORKERS_TIMEOUT_MS 10000L
#define N_COLS 9

static void workers_usage(FILE *f)
{
	fputs("Usage: kiln workers [--addr URL] [--token-file FILE] [--tls-ca FILE]\n"
	      "                    [--tls-cert FILE --tls-key FILE] [--json]\n"
	      "\n"
	      "List the workers registered with a kilnd.\n"
	      "\n"
	      "  --addr URL         kilnd's address (default: $KILN_ADDR)\n"
	      "  --token-file FILE  the client token, kilnd's ROOT/client.token\n"
	      "                     (default: the token in $KILN_TOKEN)\n"
	      "  --tls-ca FILE      CAs that verify an https:// kilnd (default:\n"
	      "                     $KILN_TLS_CA, else the system's)\n"
	      "  --tls-cert FILE, --tls-key FILE\n"
	      "                     client certificate, for a kilnd that requires one\n"
	      "                     (default: $KILN_TLS_CERT, $KILN_TLS_KEY)\n"
	      "  --json             print kilnd's answer as JSON\n"
	      "  -h, --help         show this help\n",
	      f);
}

/* "linux/amd64,linux/arm64(emulated)" */
static char *platforms_cell(const json_t *platforms)
{
	struct kiln_strbuf sb = KILN_STRBUF_INIT(64u << 10);
	json_t *p;
	size_t i;

	json_array_foreach(platforms, i, p)
		(void)kiln_platform_list_add(&sb, i == 0,
					     json_string_value(json_object_get(p, "platform")) ?: "?",
					     json_is_true(json_object_get(p, "emulated")));
	return kiln_strbuf_detach(&sb, NULL);
}

static char *int_cell(const json_t *o, const char *key)
{
	return xasprintf("%lld", (long long)json_integer_value(
					 json_object_get(o, key)));
}

static char *str_cell(const json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));

	return xstrdup(s && *s ? s : "-");
}

static char *held_cell(const json_t *o)
{
	char buf[32];
	json_int_t n = json_integer_value(json_object_get(o, "bytes_held"));

	return xstrdup(kiln_format_size(n > 0 ? (uint64_t)n : 0, buf,
					sizeof(buf)));
}

/* "1.2s ago", from kilnd's own clock (no skew with ours). */
static char *seen_cell(const json_t *o)
{
	json_int_t ms = json_integer_value(json_object_get(o, "last_seen_age_ms"));

	if (ms < 60000)
		return xasprintf("%lld.%llds ago", (long long)ms / 1000,
				 (long long)(ms % 1000) / 100);
	if (ms < 3600000)
		return xasprintf("%lldm ago", (long long)ms / 60000);
	return xasprintf("%lldh ago", (long long)ms / 3600000);
}

static void row_fill(const json_t *w, char *cells[N_COLS])
{
	cells[0] = str_cell(w, "id");
	cells[1] = str_cell(w, "name");
	cells[2] = str_cell(w, "address");
	cells[3] = platforms_cell(json_object_get(w, "platforms"));
	cells[4] = int_cell(w, "slots");
	cells[5] = int_cell(w, "running");
	cells[6] = held_cell(w);
	cells[7] = seen_cell(w);
	cells[8] = str_cell(w, "state");
}

static void row_print(char *const cells[N_COLS], const size_t width[N_COLS])
{
	size_t c;

	for (c = 0; c + 1 < N_COLS; c++)
		printf("%-*s  ", (int)width[c], cells[c]);
	printf("%s\n", cells[N_COLS - 1]);
}

static void print_table(const json_t *workers)
{
	static const char *head[N_COLS] = { "ID", "NAME", "ADDRESS",
		"PLATFORMS", "SLOTS", "RUNNING", "HELD", "LAST SEEN", "STATE" };
	size_t n = json_array_size(workers), i, c, width[N_COLS];
	char *(*rows)[N_COLS] = xcalloc(n + 1, sizeof(*rows));

	for (c = 0; c < N_COLS; c++)
		width[c] = strlen(head[c]);
	for (i = 0; i < n; i++) {
		row_fill(json_array_get(workers, i), rows[i]);
		for (c = 0; c < N_COLS; c++)
			if (strlen(rows[i][c]) > width[c])
				width[c] = strlen(rows[i][c]);
	}
	row_print((char *const *)head, width);
	for (i = 0; i < n; i++) {
		row_print(rows[i], width);
		for (c = 0; c < N_COLS; c++)
			free(rows[i][c]);
	}
	free(rows);
}

static int fetch_workers(const char *addr, const char *token,
			 const struct kiln_tls *tls, json_t **out,
			 struct kiln_error **err)
{
	size_t n = strlen(addr);
	_cleanup_free_ char *url = NULL;
	struct kiln_http_client *c = kiln_http_client_new(
		&(struct kiln_http_client_options){ .tls = tls });
	int r;

	while (n > 0 && addr[n - 1] == '/')
		n--;
	url = xasprintf("%.*s/v1/workers", (int)n, addr);
	r = kiln_http_client_json(c, &(struct kiln_http_call){
					     .method = "GET", .url = url,
					     .token = token,
					     .timeout_ms = WORKERS_TIMEOUT_MS },
				  out, NULL, err);
	kiln_http_client_free(c);
	if (r == 0 && !json_is_array(json_object_get(*out, "workers"))) {
		json_decref(*out);
		*out = NULL;
		return kiln_error_set(err, -EIO, "GET %s: no \"workers\" list",
				      url);
	}
	return r;
}

static int show_workers(const char *addr, const char *token,
			const struct kiln_tls *tls, bool as_json)
{
	_cleanup_error_ struct kiln_error *err = NULL;
	json_t *list = NULL;

	if (fetch_workers(addr, token, tls, &list, &err) < 0)
		return kiln_cli_fail(err);
	if (as_json) {
		json_dumpf(list, stdout, JSON_INDENT(2));
		putchar('\n');
	} else {
		print_table(json_object_get(list, "workers"));
	}
	json_decref(list);
	return 0;
}

struct workers_args {
	const char *addr, *token_file;
	bool as_json;
	struct kiln_tls tls;
};

static int parse_args(int argc, char **argv, struct workers_args *a)
{
	static const struct option opts[] = {
		{ "addr", required_argument, NULL, 'a' },
		{ "token-file", required_argument, NULL, 't' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		KILN_TLS_CLIENT_OPTIONS,
		{ 0 },
	};
	int c;

	a->addr = getenv("KILN_ADDR");
	optind = 0;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (kiln_tls_arg(&a->tls, c, optarg))
			continue;
		switch (c) {
		case 'a': a->addr = optarg; break;
		case 't': a->token_file = optarg; break;
		case 'j': a->as_json = true; break;
		case 'h': workers_usage(stdout); return KILN_ARGS_HELP;
		default: workers_usage(stderr); return KILN_ARGS_USAGE;
		}
	}
	return kiln_args_no_operands("kiln workers", argc, argv);
}

int kiln_cmd_workers(int argc, char **argv)
{
	struct workers_args a = { 0 };
	_cleanup_error_ struct kiln_error *err = NULL;
	_cleanup_free_ char *token = NULL;
	int r;

	r = parse_args(argc, argv, &a);
	if (r)
		return kiln_args_exit(r);
	if (!a.addr || !*a.addr) {
		kiln_error_set(&err, -EINVAL,
			       "no kilnd address: use --addr URL or set KILN_ADDR");
		return kiln_cli_fail(err);
	}
	if (kiln_cli_tls(&a.tls, &err) < 0 ||
	    kiln_cli_token(a.token_file, &token, &err) < 0)
		return kiln_cli_fail(err);
	return show_workers(a.addr, token, &a.tls, a.as_json);
}
