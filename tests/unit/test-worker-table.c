/*
 * kilnd's worker registry as the scheduler uses it: platform checks,
 * placement (native first, least estimated finish, slots, exclusions)
 * and the location index (holders, forgetting, lost workers).
 */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "kilnd/worker-table.h"

/* Register a worker from its JSON registration; returns its id. */
static char *reg_worker(struct kiln_worker_table *reg, const char *json_text)
{
	struct kiln_registration r;
	struct kiln_error *err = NULL;
	json_t *j = json_loads(json_text, 0, NULL);
	char *id = NULL;

	assert_non_null(j);
	assert_int_equal(kiln_registration_parse(j, &r, &err), 0);
	assert_int_equal(kiln_worker_table_register(reg, &r, &id), 0);
	kiln_registration_release(&r);
	json_decref(j);
	return id;
}

static void digest_of(char c, struct kiln_digest *d)
{
	char s[80];

	snprintf(s, sizeof(s), "sha256:%064d", 0);
	memset(s + 7, c, 64);
	assert_int_equal(kiln_digest_parse(s, d), 0);
}

static struct kiln_worker_table *three_workers(void)
{
	struct kiln_worker_table *reg = kiln_worker_table_new(60000);

	free(reg_worker(reg, "{\"name\": \"amd\", \"addr\": \"http://10.0.0.1:1\", \"slots\": 2,"
			     " \"platforms\": [{\"platform\": \"linux/amd64\"}]}"));
	free(reg_worker(reg, "{\"name\": \"amd2\", \"addr\": \"http://10.0.0.2:1\", \"slots\": 1,"
			     " \"platforms\": [{\"platform\": \"linux/amd64\"}]}"));
	free(reg_worker(reg, "{\"name\": \"arm\", \"addr\": \"http://10.0.0.3:1\", \"slots\": 1,"
			     " \"platforms\": [{\"platform\": \"linux/arm64\", \"emulated\": true}]}"));
	return reg;
}

static void test_check_platform(void **state)
{
	struct kiln_worker_table *reg = three_workers();
	struct kiln_error *err = NULL;
	bool emu = true;

	assert_int_equal(kiln_worker_table_check_platform(reg, "linux/amd64", &emu, NULL), 0);
	assert_false(emu);
	assert_int_equal(kiln_worker_table_check_platform(reg, "linux/arm64", &emu, NULL), 0);
	assert_true(emu);
	assert_int_equal(kiln_worker_table_check_platform(reg, "linux/s390x", &emu, &err), -ENODEV);
	assert_non_null(strstr(err->msg, "linux/s390x"));
	assert_non_null(strstr(err->msg, "arm linux/arm64(emulated)"));
	assert_non_null(strstr(err->msg, "amd2 linux/amd64"));
	kiln_error_free(err);
	kiln_worker_table_free(reg);
}

static void test_native_before_emulated(void **state)
{
	struct kiln_worker_table *reg = three_workers();
	struct kiln_place_request rq = { .platform = "linux/arm64", .est_ms = 10 };
	struct kiln_worker_ref w;

	assert_int_equal(kiln_worker_table_place(reg, &rq, &w, NULL), 0);
	assert_string_equal(w.name, "arm");
	assert_true(w.emulated);
	kiln_worker_table_unplace(reg, w.name, rq.est_ms);
	free(reg_worker(reg, "{\"name\": \"graviton\", \"addr\": \"http://10.0.0.4:1\", \"slots\": 1,"
			     " \"platforms\": [{\"platform\": \"linux/arm64\"}]}"));
	assert_int_equal(kiln_worker_table_place(reg, &rq, &w, NULL), 0);
	assert_string_equal(w.name, "graviton");
	assert_false(w.emulated);
	assert_string_equal(w.addr, "http://10.0.0.4:1");
	kiln_worker_table_unplace(reg, w.name, rq.est_ms);
	kiln_worker_table_free(reg);
}

static void test_least_finish(void **state)
{
	struct kiln_worker_table *reg = three_workers();
	struct kiln_digest big, small;
	struct kiln_place_request rq = { .platform = "linux/amd64", .est_ms = 100 };
	struct kiln_worker_ref w, w2;

	digest_of('b', &big);
	digest_of('c', &small);
	/* amd2 holds the 1 GiB input: it wins although amd has more slots. */
	kiln_worker_table_hold(reg, "amd2", &big, 1ull << 30);
	rq.inputs = &big;
	rq.n_inputs = 1;
	rq.est_ms = 10000;
	assert_int_equal(kiln_worker_table_place(reg, &rq, &w, NULL), 0);
	assert_string_equal(w.name, "amd2");
	/* amd2's one slot is taken by 10 s of work: a job with a small input
	 * is sooner done on amd, which must fetch it. */
	rq.inputs = &small;
	rq.est_ms = 100;
	assert_int_equal(kiln_worker_table_place(reg, &rq, &w2, NULL), 0);
	assert_string_equal(w2.name, "amd");
	kiln_worker_table_unplace(reg, w2.name, 100);
	kiln_worker_table_unplace(reg, w.name, 10000);
	/* A worker excluded (it just failed the job) is not chosen. */
	rq.inputs = &big;
	rq.except = "amd2";
	assert_int_equal(kiln_worker_table_place(reg, &rq, &w, NULL), 0);
	assert_string_equal(w.name, "amd");
	kiln_worker_table_unplace(reg, w.name, 100);
	kiln_worker_table_free(reg);
}

/*
 * Input sizes come from the location index: a job reads a 1 GiB tree that
 * amd2 holds and a 1 KiB tree that amd holds. amd2 lacks 1 KiB, amd 1 GiB:
 * amd2 is sooner done. Were the sizes unknown (4 MiB each), the two would
 * tie and amd, the first, would win.
 */
static void test_sizes_from_index(void **state)
{
	struct kiln_worker_table *reg = three_workers();
	struct kiln_digest in[2];
	struct kiln_place_request rq = { .platform = "linux/amd64", .est_ms = 100,
					 .inputs = in, .n_inputs = 2 };
	struct kiln_worker_ref w;

	digest_of('b', &in[0]);
	digest_of('d', &in[1]);
	kiln_worker_table_hold(reg, "amd2", &in[0], 1ull << 30);
	kiln_worker_table_hold(reg, "amd", &in[1], 1024);
	assert_int_equal(kiln_worker_table_place(reg, &rq, &w, NULL), 0);
	assert_string_equal(w.name, "amd2");
	kiln_worker_table_unplace(reg, w.name, rq.est_ms);
	/* A later "held, size unknown" (a job's input) keeps the known size. */
	kiln_worker_table_hold(reg, "amd2", &in[0], 0);
	assert_int_equal(kiln_worker_table_place(reg, &rq, &w, NULL), 0);
	assert_string_equal(w.name, "amd2");
	kiln_worker_table_unplace(reg, w.name, rq.est_ms);
	/* Gone from the index: unknown again, the tie goes to amd. */
	kiln_worker_table_forget(reg, &in[0]);
	kiln_worker_table_forget(reg, &in[1]);
	assert_int_equal(kiln_worker_table_place(reg, &rq, &w, NULL), 0);
	assert_string_equal(w.name, "amd");
	kiln_worker_table_unplace(reg, w.name, rq.est_ms);
	kiln_worker_table_free(reg);
}

struct waiter {
	struct kiln_worker_table *reg;
	struct kiln_worker_ref w;
	int r;
	atomic_bool cancelled;
};

static void *place_thread(void *ud)
{
	struct waiter *wt = ud;
	struct kiln_place_request rq = { .platform = "linux/arm64", .est_ms = 5,
					 .cancelled = &wt->cancelled };

	wt->r = kiln_worker_table_place(wt->reg, &rq, &wt->w, NULL);
	return NULL;
}

/* Fill arm's one slot, then start wt placing a second job: it waits. */
static void wait_behind_full(struct kiln_worker_table *reg, struct waiter *wt, pthread_t *t)
{
	struct kiln_place_request rq = { .platform = "linux/arm64", .est_ms = 5 };
	struct kiln_worker_ref w;

	wt->reg = reg;
	wt->r = 1;
	assert_int_equal(kiln_worker_table_place(reg, &rq, &w, NULL), 0);
	assert_int_equal(pthread_create(t, NULL, place_thread, wt), 0);
	usleep(300000);
	assert_int_equal(wt->r, 1); /* still waiting: arm has one slot */
}

/* A full worker makes placement wait for a slot, not fail or overbook. */
static void test_waits_for_slot(void **state)
{
	struct kiln_worker_table *reg = three_workers();
	struct waiter wt = { 0 };
	pthread_t t;

	wait_behind_full(reg, &wt, &t);
	kiln_worker_table_unplace(reg, "arm", 5);
	pthread_join(t, NULL);
	assert_int_equal(wt.r, 0);
	assert_string_equal(wt.w.name, "arm");
	kiln_worker_table_unplace(reg, "arm", 5);
	kiln_worker_table_free(reg);
}

/* A cancelled build stops waiting for a slot, and takes none. */
static void test_wait_cancelled(void **state)
{
	struct kiln_worker_table *reg = three_workers();
	struct kiln_place_request rq = { .platform = "linux/arm64", .est_ms = 5 };
	struct waiter wt = { 0 };
	struct kiln_worker_ref w;
	pthread_t t;

	wait_behind_full(reg, &wt, &t);
	atomic_store(&wt.cancelled, true);
	pthread_join(t, NULL);
	assert_int_equal(wt.r, -ECANCELED);
	/* The slot is still the first job's alone: freed, it can be taken once. */
	kiln_worker_table_unplace(reg, "arm", 5);
	assert_int_equal(kiln_worker_table_place(reg, &rq, &w, NULL), 0);
	kiln_worker_table_unplace(reg, "arm", 5);
	kiln_worker_table_free(reg);
}

static void test_location_index(void **state)
{
	struct kiln_worker_table *reg = three_workers();
	struct kiln_worker_ref refs[4];
	struct kiln_place_request rq = { .platform = "linux/amd64", .est_ms = 5 };
	struct kiln_error *err = NULL;
	struct kiln_digest t, inv;
	struct kiln_worker_ref w;

	digest_of('d', &t);
	digest_of('1', &inv);
	assert_false(kiln_worker_table_held(reg, &t));
	kiln_worker_table_hold(reg, "amd", &t, 0);
	kiln_worker_table_hold(reg, "arm", &t, 0);
	assert_true(kiln_worker_table_held(reg, &t));
	assert_int_equal(kiln_worker_table_holders(reg, &t, NULL, refs, 4), 2);
	assert_int_equal(kiln_worker_table_holders(reg, &t, "amd", refs, 4), 1);
	assert_string_equal(refs[0].name, "arm");
	/* Lost workers hold nothing anyone can use, and take no jobs. */
	kiln_worker_table_mark_lost(reg, "arm", "test");
	assert_int_equal(kiln_worker_table_holders(reg, &t, NULL, refs, 4), 1);
	assert_string_equal(refs[0].name, "amd");
	rq.platform = "linux/arm64";
	assert_int_equal(kiln_worker_table_place(reg, &rq, &w, &err), -ENODEV);
	kiln_error_free(err);
	/* A tree found nowhere is forgotten everywhere. */
	kiln_worker_table_forget(reg, &t);
	assert_false(kiln_worker_table_held(reg, &t));
	kiln_worker_table_hold(reg, "amd", &t, 7);
	assert_true(kiln_worker_table_held(reg, &t));
	/* An inventory announced at registration fills the index. */
	free(reg_worker(reg, "{\"name\": \"arm\", \"addr\": \"http://10.0.0.3:1\", \"slots\": 1,"
			     " \"platforms\": [{\"platform\": \"linux/arm64\", \"emulated\": true}],"
			     " \"inventory\": [\"sha256:1111111111111111111111111111111111111111111111111111111111111111\"]}"));
	assert_int_equal(kiln_worker_table_holders(reg, &inv, NULL, refs, 4), 1);
	assert_string_equal(refs[0].name, "arm");
	kiln_worker_table_free(reg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_check_platform),
		cmocka_unit_test(test_native_before_emulated),
		cmocka_unit_test(test_least_finish),
		cmocka_unit_test(test_sizes_from_index),
		cmocka_unit_test(test_waits_for_slot),
		cmocka_unit_test(test_wait_cancelled),
		cmocka_unit_test(test_location_index),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
