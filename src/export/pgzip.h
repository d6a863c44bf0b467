/*
 * Parallel gzip, as pigz does it: the input is cut into 128 KiB chunks,
 * each deflated on its own thread with the 32 KiB before it as the
 * dictionary and ended with a sync flush (the last with a final block),
 * and the pieces are written in order between one gzip header (mtime 0,
 * no name, OS unix) and one trailer (the CRC-32s combined, the length).
 * The result is one valid gzip stream.
 *
 * The bytes depend only on the input and the level, never on the number
 * of threads or how the input was split into writes, so a layer's digest
 * is the same on every machine. They are not the bytes single-threaded
 * zlib makes (a few bytes more per chunk).
 */
#pragma once

#include <stddef.h>

/* What the compressed bytes go to, in order: 0, or a negative code that
 * stops the stream and is returned. */
typedef int (*kiln_pgzip_emit_fn)(void *ud, const void *data, size_t n);

struct kiln_pgzip;

/*
 * level 1..9; threads compressing besides the caller's (0: the caller
 * alone; fewer if threads cannot start). NULL when zlib cannot start.
 */
struct kiln_pgzip *kiln_pgzip_new(int level, unsigned threads, kiln_pgzip_emit_fn emit,
				  void *ud);
/* Add input; the bytes of chunks done so far are emitted. */
int kiln_pgzip_write(struct kiln_pgzip *z, const void *data, size_t n);
/* The rest, then the trailer. Nothing may be written after. */
int kiln_pgzip_finish(struct kiln_pgzip *z);
/* Stops the threads; accepts NULL. */
void kiln_pgzip_free(struct kiln_pgzip *z);
