#include "basic/pool.h"

#include <pthread.h>
#include <stdbool.h>

#include "basic/alloc.h"

struct pool {
	kiln_pool_fn fn;
	void *ud;
	size_t n;
	pthread_mutex_t lock; /* guards everything below */
	size_t next;
	int code; /* of the first failure, 0 while none */
	struct kiln_error *err;
};

struct pool_thread {
	struct pool *p;
	unsigned slot;
	pthread_t tid;
};

static bool pool_take(struct pool *p, size_t *i)
{
	bool ok;

	pthread_mutex_lock(&p->lock);
	ok = p->code == 0 && p->next < p->n;
	if (ok)
		*i = p->next++;
	pthread_mutex_unlock(&p->lock);
	return ok;
}

static void pool_fail(struct pool *p, int code, struct kiln_error *e)
{
	pthread_mutex_lock(&p->lock);
	if (p->code == 0) {
		p->code = code;
		p->err = TAKE_PTR(e);
	}
	pthread_mutex_unlock(&p->lock);
	kiln_error_free(e);
}

static void pool_work(struct pool *p, unsigned slot)
{
	size_t i;

	while (pool_take(p, &i)) {
		struct kiln_error *e = NULL;
		int r = p->fn(p->ud, i, slot, &e);

		if (r < 0)
			pool_fail(p, r, e);
		else
			kiln_error_free(e);
	}
}

static void *pool_thread_main(void *arg)
{
	struct pool_thread *t = arg;

	pool_work(t->p, t->slot);
	return NULL;
}

int kiln_pool_run(size_t n, unsigned threads, kiln_pool_fn fn, void *ud,
		  struct kiln_error **err)
{
	struct pool p = { .fn = fn, .ud = ud, .n = n };
	size_t k = threads ? threads : 1, started = 0;
	struct pool_thread *t;

	if (n == 0)
		return 0;
	if (k > n)
		k = n;
	t = xcalloc(k, sizeof(*t));
	pthread_mutex_init(&p.lock, NULL);
	for (; started + 1 < k; started++) {
		t[started] = (struct pool_thread){ .p = &p, .slot = (unsigned)started + 1 };
		if (pthread_create(&t[started].tid, NULL, pool_thread_main, &t[started]) != 0)
			break;
	}
	pool_work(&p, 0);
	while (started--)
		pthread_join(t[started].tid, NULL);
	pthread_mutex_destroy(&p.lock);
	free(t);
	if (p.code < 0 && err && !*err)
		*err = TAKE_PTR(p.err);
	kiln_error_free(p.err);
	return p.code;
}
