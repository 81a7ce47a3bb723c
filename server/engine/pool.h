/* pool.h -- the engine's helper threads for its block passes.
 *
 * A query's passes over every input (coarse and exact cell bounds) run
 * while the model is idle, and on a 2-core machine the second core is idle
 * with it. The helpers are started once (thread creation per pass cost
 * ~0.05 ms of a ~0.5 ms pass) and sleep on a futex between passes; a pass
 * hands out its blocks one at a time to whoever is free -- the caller
 * first, a helper as soon as it is awake (waking takes 5-60 us here, so
 * fixed halves would leave the caller waiting on it).
 *
 * One pass at a time holds the helpers: a pass that finds them taken (another
 * query's) runs alone, so concurrent queries never wait on each other here.
 * Every block runs the same arithmetic whichever thread takes it: the
 * answers do not depend on the helpers.
 */
#ifndef DE_ENGINE_POOL_H
#define DE_ENGINE_POOL_H

#include <stdint.h>

#define ENG_POOL_MAX 64 /* threads in all, the caller's included */

/* Runs a pass's block b on worker w (0: the caller; 1.. the helpers). */
typedef void (*eng_pool_fn)(void *ctx, int worker, uint32_t b);

/* Makes the pool threads in all (the caller's included: threads - 1
 * helpers), stopping the old helpers first; 1 or less: none. Not while a
 * pass runs. Returns the threads now available, 1 when helpers could not be
 * started. */
int eng_pool_start(int threads);
/* Stops and joins the helpers. */
void eng_pool_stop(void);
/* The threads a pass can use now: 1 + the helpers. */
int eng_pool_threads(void);
/* Blocks the helpers have run since the process started (tests, stats). */
unsigned long long eng_pool_helped(void);
/* Wakes the helpers to wait, awake for up to a millisecond, for a pass
 * about to start: their wake-up then overlaps the caller's work before it. */
void eng_pool_warm(void);
/* Runs fn(ctx, w, b) once for every b in [0, nblocks), on at most `workers`
 * threads, worker numbers below `workers`; returns when all are done. */
void eng_pool_run(uint32_t nblocks, int workers, eng_pool_fn fn, void *ctx);

#endif
