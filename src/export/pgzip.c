/*
 * Parallel gzip (pgzip.h). Threads: the caller (write, finish) fills
 * chunks and emits them in order; the threads, and the caller while it
 * waits, compress them. Slots form a ring, slot seq % n_slots for chunk
 * seq, each
 *
 *   FREE --caller fills it, submits--> QUEUED --a thread takes it--> BUSY
 *   BUSY --compressed--> DONE --caller emits it, in seq order--> FREE
 *
 * under z->lock; a slot's buffers belong to whoever moved it last (the
 * caller while FREE, the compressing thread while BUSY).
 */
#include "export/pgzip.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <zlib.h>

#include "basic/alloc.h"

#define CHUNK (128u << 10)
#define DICT (32u << 10)
#define MAX_THREADS 64u

enum slot_state { SLOT_FREE, SLOT_QUEUED, SLOT_BUSY, SLOT_DONE };

struct slot {
	enum slot_state state;
	bool last;
	uint64_t seq;
	unsigned char *in; /* CHUNK bytes */
	size_t in_len;
	unsigned char dict[DICT]; /* the 32 KiB before this chunk */
	size_t dict_len;
	unsigned char *out;
	size_t out_len, out_alloc;
	uLong crc;
	int r; /* compression failed */
};

struct kiln_pgzip {
	int level;
	kiln_pgzip_emit_fn emit;
	void *ud;
	pthread_mutex_t lock;
	pthread_cond_t work; /* a slot was queued, or stopping */
	pthread_cond_t done; /* a slot is DONE */
	struct slot *slots;
	size_t n_slots;
	uint64_t fill_seq; /* the chunk being filled (its slot is FREE) */
	uint64_t emit_seq; /* the next chunk to emit */
	unsigned char tail[DICT]; /* the last 32 KiB of the input so far */
	size_t tail_len;
	uLong crc;
	uint64_t total;
	bool header_done, stopping, finished;
	int failed; /* the first failure: every later call returns it */
	pthread_t threads[MAX_THREADS];
	unsigned n_threads;
	z_stream self; /* the caller's, for the chunks it compresses */
};

static int zinit(z_stream *zs, int level)
{
	memset(zs, 0, sizeof(*zs));
	/* windowBits -15: raw deflate, the gzip wrapper is ours. */
	return deflateInit2(zs, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) == Z_OK ? 0
											: -ENOMEM;
}

static void out_reserve(struct slot *s, size_t need)
{
	if (s->out_alloc < need) {
		s->out = xrealloc(s->out, need);
		s->out_alloc = need;
	}
}

/* Deflate one chunk: a sync flush ends it on a byte, the last one finishes. */
static int deflate_chunk(z_stream *zs, struct slot *s)
{
	int flush = s->last ? Z_FINISH : Z_SYNC_FLUSH;

	if (deflateReset(zs) != Z_OK ||
	    (s->dict_len && deflateSetDictionary(zs, s->dict, (uInt)s->dict_len) != Z_OK))
		return -EIO;
	out_reserve(s, deflateBound(zs, s->in_len) + 64);
	zs->next_in = s->in;
	zs->avail_in = (uInt)s->in_len;
	s->out_len = 0;
	for (;;) {
		int zr;

		zs->next_out = s->out + s->out_len;
		zs->avail_out = (uInt)(s->out_alloc - s->out_len);
		zr = deflate(zs, flush);
		s->out_len = s->out_alloc - zs->avail_out;
		if (zr == Z_STREAM_ERROR)
			return -EIO;
		if (flush == Z_FINISH ? zr == Z_STREAM_END : zs->avail_in == 0 && zs->avail_out > 0)
			break;
		if (zs->avail_out == 0)
			out_reserve(s, s->out_alloc * 2);
	}
	s->crc = crc32(0, s->in, (uInt)s->in_len);
	return 0;
}

/* The queued slot of the lowest seq, or NULL (z->lock held). */
static struct slot *next_queued(struct kiln_pgzip *z)
{
	struct slot *best = NULL;
	size_t i;

	for (i = 0; i < z->n_slots; i++)
		if (z->slots[i].state == SLOT_QUEUED && (!best || z->slots[i].seq < best->seq))
			best = &z->slots[i];
	return best;
}

/* Compress s (taken BUSY under the lock) with zs, then mark it DONE. */
static void compress_slot(struct kiln_pgzip *z, z_stream *zs, struct slot *s)
{
	int r;

	pthread_mutex_unlock(&z->lock);
	r = deflate_chunk(zs, s);
	pthread_mutex_lock(&z->lock);
	s->r = r;
	s->state = SLOT_DONE;
	pthread_cond_broadcast(&z->done);
}

static void *thread_main(void *ud)
{
	struct kiln_pgzip *z = ud;
	z_stream zs;
	bool live = zinit(&zs, z->level) == 0;

	pthread_mutex_lock(&z->lock);
	while (live && !z->stopping) {
		struct slot *s = next_queued(z);

		if (s) {
			s->state = SLOT_BUSY;
			compress_slot(z, &zs, s);
		} else {
			pthread_cond_wait(&z->work, &z->lock);
		}
	}
	pthread_mutex_unlock(&z->lock);
	if (live)
		deflateEnd(&zs);
	return NULL;
}

struct kiln_pgzip *kiln_pgzip_new(int level, unsigned threads, kiln_pgzip_emit_fn emit,
				  void *ud)
{
	struct kiln_pgzip *z = xcalloc(1, sizeof(*z));
	size_t i;

	z->level = level;
	z->emit = emit;
	z->ud = ud;
	if (zinit(&z->self, level) < 0) {
		free(z);
		return NULL;
	}
	if (threads > MAX_THREADS)
		threads = MAX_THREADS;
	z->n_slots = 2 * ((size_t)threads + 1) + 2;
	z->slots = xcalloc(z->n_slots, sizeof(*z->slots));
	for (i = 0; i < z->n_slots; i++)
		z->slots[i].in = xmalloc(CHUNK);
	pthread_mutex_init(&z->lock, NULL);
	pthread_cond_init(&z->work, NULL);
	pthread_cond_init(&z->done, NULL);
	/* Fewer threads than asked only costs speed: the caller compresses too. */
	while (z->n_threads < threads &&
	       pthread_create(&z->threads[z->n_threads], NULL, thread_main, z) == 0)
		z->n_threads++;
	return z;
}

static int emit_bytes(struct kiln_pgzip *z, const void *data, size_t n)
{
	int r = n ? z->emit(z->ud, data, n) : 0;

	if (r < 0 && !z->failed)
		z->failed = r;
	return r;
}

/*
 * Emit chunks in order until emit_seq reaches upto, compressing queued
 * ones meanwhile rather than wait idle (z->lock held; let go around the
 * emit).
 */
static int emit_until(struct kiln_pgzip *z, uint64_t upto)
{
	while (!z->failed && z->emit_seq < upto) {
		struct slot *s = &z->slots[z->emit_seq % z->n_slots];
		int r;

		if (s->state != SLOT_DONE) {
			struct slot *q = next_queued(z);

			if (q) {
				q->state = SLOT_BUSY;
				compress_slot(z, &z->self, q);
			} else {
				pthread_cond_wait(&z->done, &z->lock);
			}
			continue;
		}
		pthread_mutex_unlock(&z->lock);
		r = s->r;
		if (r < 0) {
			if (!z->failed)
				z->failed = r;
		} else if (!z->header_done) {
			static const unsigned char hdr[10] = { 0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3 };
			unsigned char h[10];

			memcpy(h, hdr, sizeof(h));
			/* XFL as zlib sets it: 2 for the slowest level, 4 for the fastest. */
			h[8] = z->level == 9 ? 2 : z->level == 1 ? 4 : 0;
			r = emit_bytes(z, h, sizeof(h));
			z->header_done = true;
		}
		if (r == 0)
			r = emit_bytes(z, s->out, s->out_len);
		if (r == 0) {
			z->crc = crc32_combine(z->crc, s->crc, (z_off_t)s->in_len);
			z->total += s->in_len;
		}
		pthread_mutex_lock(&z->lock);
		s->state = SLOT_FREE;
		z->emit_seq++;
	}
	return z->failed;
}

/* The chunk being filled goes to the threads; the next slot is made free. */
static int submit(struct kiln_pgzip *z, bool last)
{
	struct slot *s = &z->slots[z->fill_seq % z->n_slots];
	size_t keep;
	int r;

	s->last = last;
	s->seq = z->fill_seq;
	memcpy(s->dict, z->tail, z->tail_len);
	s->dict_len = z->tail_len;
	/* The next chunk's dictionary: the last 32 KiB so far. */
	keep = s->in_len < DICT ? s->in_len : DICT;
	if (keep < DICT && z->tail_len + keep > DICT) {
		memmove(z->tail, z->tail + (z->tail_len + keep - DICT), DICT - keep);
		z->tail_len = DICT - keep;
	} else if (keep == DICT) {
		z->tail_len = 0;
	}
	memcpy(z->tail + z->tail_len, s->in + s->in_len - keep, keep);
	z->tail_len += keep;
	pthread_mutex_lock(&z->lock);
	s->state = SLOT_QUEUED;
	pthread_cond_signal(&z->work);
	z->fill_seq++;
	/* The ring is full: emit the oldest before its slot is filled again. */
	r = emit_until(z, z->fill_seq + 1 > z->n_slots ? z->fill_seq + 1 - z->n_slots : 0);
	/* And whatever is done already, in order, without waiting. */
	while (r == 0 && z->emit_seq < z->fill_seq &&
	       z->slots[z->emit_seq % z->n_slots].state == SLOT_DONE)
		r = emit_until(z, z->emit_seq + 1);
	pthread_mutex_unlock(&z->lock);
	if (r == 0)
		z->slots[z->fill_seq % z->n_slots].in_len = 0;
	return r;
}

int kiln_pgzip_write(struct kiln_pgzip *z, const void *data, size_t n)
{
	const unsigned char *p = data;

	if (z->failed)
		return z->failed;
	if (z->finished)
		return -EINVAL;
	while (n > 0) {
		struct slot *s = &z->slots[z->fill_seq % z->n_slots];
		size_t k = CHUNK - s->in_len < n ? CHUNK - s->in_len : n;
		int r;

		memcpy(s->in + s->in_len, p, k);
		s->in_len += k;
		p += k;
		n -= k;
		if (s->in_len == CHUNK) {
			r = submit(z, false);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

int kiln_pgzip_finish(struct kiln_pgzip *z)
{
	unsigned char t[8];
	int r;

	if (z->failed)
		return z->failed;
	if (z->finished)
		return -EINVAL;
	z->finished = true;
	r = submit(z, true);
	if (r == 0) {
		pthread_mutex_lock(&z->lock);
		r = emit_until(z, z->fill_seq);
		pthread_mutex_unlock(&z->lock);
	}
	if (r < 0)
		return r;
	t[0] = (unsigned char)z->crc;
	t[1] = (unsigned char)(z->crc >> 8);
	t[2] = (unsigned char)(z->crc >> 16);
	t[3] = (unsigned char)(z->crc >> 24);
	t[4] = (unsigned char)z->total;
	t[5] = (unsigned char)(z->total >> 8);
	t[6] = (unsigned char)(z->total >> 16);
	t[7] = (unsigned char)(z->total >> 24);
	return emit_bytes(z, t, sizeof(t));
}

void kiln_pgzip_free(struct kiln_pgzip *z)
{
	size_t i;

	if (!z)
		return;
	pthread_mutex_lock(&z->lock);
	z->stopping = true;
	pthread_cond_broadcast(&z->work);
	pthread_mutex_unlock(&z->lock);
	for (i = 0; i < z->n_threads; i++)
		pthread_join(z->threads[i], NULL);
	for (i = 0; i < z->n_slots; i++) {
		free(z->slots[i].in);
		free(z->slots[i].out);
	}
	free(z->slots);
	deflateEnd(&z->self);
	pthread_cond_destroy(&z->done);
	pthread_cond_destroy(&z->work);
	pthread_mutex_destroy(&z->lock);
	free(z);
}
