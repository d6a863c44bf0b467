/* src/basic/pool: the parallel for of tree hashing, registry and peer pulls. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "basic/alloc.h"
#include "basic/error.h"
#include "basic/macro.h"
#include "basic/pool.h"

#define N_ITEMS 200

struct count {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	unsigned done[N_ITEMS];
	unsigned max_slot;
	bool caller_is_slot0;
	pthread_t caller;
	size_t fail_at;  /* index that fails, N_ITEMS for none */
	size_t running, peak, wait_for; /* items under way, at most, wait */
};

static void count_init(struct count *c, size_t fail_at)
{
	memset(c, 0, sizeof(*c));
	pthread_mutex_init(&c->lock, NULL);
	kiln_cond_init_monotonic(&c->cond);
	c->fail_at = fail_at;
	c->caller = pthread_self();
	c->caller_is_slot0 = true;
}

static void count_release(struct count *c)
{
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->lock);
}

/* Hold the item until wait_for items run at once (or 10 s pass). */
static void wait_for_peers(struct count *c)
{
	struct timespec until = kiln_deadline_ms(CLOCK_MONOTONIC, 10000);

	c->running++;
	if (c->running > c->peak)
		c->peak = c->running;
	pthread_cond_broadcast(&c->cond);
	while (c->running < c->wait_for &&
	       pthread_cond_timedwait(&c->cond, &c->lock, &until) == 0)
		;
}

static int item(void *ud, size_t i, unsigned slot, struct kiln_error **err)
{
	struct count *c = ud;

	pthread_mutex_lock(&c->lock);
	c->done[i]++;
	if (slot > c->max_slot)
		c->max_slot = slot;
	if ((slot == 0) != pthread_equal(pthread_self(), c->caller))
		c->caller_is_slot0 = false;
	if (c->wait_for)
		wait_for_peers(c);
	pthread_mutex_unlock(&c->lock);
	if (i == c->fail_at)
		return kiln_error_set(err, -EIO, "item %zu failed", i);
	return 0;
}

static void test_every_item_once(void **state)
{
	struct count c;
	size_t i;

	count_init(&c, N_ITEMS);
	assert_int_equal(kiln_pool_run(N_ITEMS, 4, item, &c, NULL), 0);
	for (i = 0; i < N_ITEMS; i++)
		assert_int_equal(c.done[i], 1);
	assert_true(c.max_slot < 4);
	assert_true(c.caller_is_slot0);
	count_release(&c);
}

static void test_threads_at_once(void **state)
{
	struct count c;

	/* Four items that each wait for the others: four threads ran them. */
	count_init(&c, N_ITEMS);
	c.wait_for = 4;
	assert_int_equal(kiln_pool_run(4, 4, item, &c, NULL), 0);
	assert_int_equal(c.peak, 4);
	assert_int_equal(c.max_slot, 3);
	count_release(&c);
	/* Never more threads than items, and 0 threads is one: the caller. */
	count_init(&c, N_ITEMS);
	assert_int_equal(kiln_pool_run(2, 16, item, &c, NULL), 0);
	assert_true(c.max_slot < 2);
	count_release(&c);
	count_init(&c, N_ITEMS);
	assert_int_equal(kiln_pool_run(10, 0, item, &c, NULL), 0);
	assert_int_equal(c.max_slot, 0);
	assert_true(c.caller_is_slot0);
	assert_int_equal(c.done[9], 1);
	count_release(&c);
	assert_int_equal(kiln_pool_run(0, 4, item, NULL, NULL), 0);
}

static void test_first_failure_stops(void **state)
{
	struct kiln_error *err = NULL;
	struct count c;
	size_t i;

	/* One thread: items are handed out in order, none after the failure. */
	count_init(&c, 3);
	assert_int_equal(kiln_pool_run(N_ITEMS, 1, item, &c, &err), -EIO);
	assert_non_null(err);
	assert_string_equal(kiln_error_msg(err), "item 3 failed");
	for (i = 0; i < N_ITEMS; i++)
		assert_int_equal(c.done[i], i <= 3);
	kiln_error_free(err);
	count_release(&c);
}

static int fail_all(void *ud, size_t i, unsigned slot, struct kiln_error **err)
{
	size_t *calls = ud;

	__atomic_fetch_add(calls, 1, __ATOMIC_RELAXED);
	return kiln_error_set(err, -ENOENT, "item %zu failed", i);
}

static void test_errors(void **state)
{
	struct kiln_error *err = NULL;
	size_t calls = 0;

	/* Many threads fail at once: one error wins, the others are freed. */
	assert_int_equal(kiln_pool_run(N_ITEMS, 8, fail_all, &calls, &err), -ENOENT);
	assert_non_null(err);
	assert_non_null(strstr(kiln_error_msg(err), " failed"));
	assert_true(calls >= 1 && calls <= 8);
	kiln_error_free(err);
	err = NULL;
	/* An error already set stays; the pool's is dropped. */
	kiln_error_set(&err, -EPERM, "earlier");
	assert_int_equal(kiln_pool_run(N_ITEMS, 2, fail_all, &calls, &err), -ENOENT);
	assert_string_equal(kiln_error_msg(err), "earlier");
	kiln_error_free(err);
	assert_int_equal(kiln_pool_run(N_ITEMS, 2, fail_all, &calls, NULL), -ENOENT);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_item_once),
		cmocka_unit_test(test_threads_at_once),
		cmocka_unit_test(test_first_failure_stops),
		cmocka_unit_test(test_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
