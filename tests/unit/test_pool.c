/* test_pool.c -- the engine's helper threads (server/engine/pool.h): every
 * block of a pass runs exactly once, on a worker number below the pass's
 * limit; helpers do take blocks; passes from several threads at once, and
 * restarts, neither lose nor repeat a block nor hang. */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pool.h"
#include "testrng.h"

#define MAX_BLOCKS 4096

typedef struct job {
    atomic_int runs[MAX_BLOCKS];
    atomic_int bad_worker;
    int workers;
    atomic_int helper_ran; /* a block ran on a worker > 0 */
    int wait_for_helper;   /* worker 0 holds its first block until a helper has run one */
} job;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static void block(void *ctx, int w, uint32_t b)
{
    job *j = ctx;
    if (w < 0 || w >= j->workers)
        atomic_store(&j->bad_worker, 1);
    if (w > 0)
        atomic_store(&j->helper_ran, 1);
    if (w == 0 && j->wait_for_helper) {
        j->wait_for_helper = 0;
        for (double t0 = now_s(); !atomic_load(&j->helper_ran) && now_s() - t0 < 10.0;)
            ;
    }
    atomic_fetch_add(&j->runs[b], 1);
}

static void run_and_check(uint32_t nblocks, int workers)
{
    job *j = calloc(1, sizeof *j);
    ck_assert_ptr_nonnull(j);
    j->workers = workers;
    eng_pool_run(nblocks, workers, block, j);
    for (uint32_t b = 0; b < nblocks; b++)
        if (atomic_load(&j->runs[b]) != 1)
            ck_abort_msg("block %u of %u ran %d times (workers %d)", b, nblocks, atomic_load(&j->runs[b]), workers);
    for (uint32_t b = nblocks; b < MAX_BLOCKS; b++)
        if (atomic_load(&j->runs[b]) != 0)
            ck_abort_msg("block %u past the end (%u) ran", b, nblocks);
    ck_assert_msg(!atomic_load(&j->bad_worker), "a block ran on a worker number >= %d", workers);
    free(j);
}

START_TEST(test_every_block_once)
{
    static const int threads[] = {1, 2, 3, 8};
    rng_seed(77 + (uint64_t)_i);
    ck_assert_int_eq(eng_pool_start(threads[_i]), threads[_i]);
    ck_assert_int_eq(eng_pool_threads(), threads[_i]);
    for (int it = 0; it < 300; it++) {
        uint32_t nblocks = it < 4 ? (uint32_t)it : 1 + rng_u32() % (it % 10 ? 64 : MAX_BLOCKS);
        run_and_check(nblocks, 1 + (int)(rng_u32() % (uint32_t)threads[_i]));
    }
    eng_pool_stop();
    ck_assert_int_eq(eng_pool_threads(), 1);
}
END_TEST

/* The caller holds its first block until a helper has run one: without
 * helpers that take blocks, this fails (after 10 s) instead of passing. */
START_TEST(test_helpers_take_blocks)
{
    ck_assert_int_eq(eng_pool_start(2), 2);
    unsigned long long h0 = eng_pool_helped();
    for (int it = 0; it < 20; it++) {
        job *j = calloc(1, sizeof *j);
        ck_assert_ptr_nonnull(j);
        j->workers = 2;
        j->wait_for_helper = 1;
        if (it % 2)
            eng_pool_warm();
        eng_pool_run(64, 2, block, j);
        ck_assert_msg(atomic_load(&j->helper_ran), "pass %d: no helper ran a block", it);
        for (uint32_t b = 0; b < 64; b++)
            ck_assert_int_eq(atomic_load(&j->runs[b]), 1);
        free(j);
    }
    ck_assert_uint_gt(eng_pool_helped(), h0);
    /* a pass limited to one worker never reaches the helpers */
    job *j = calloc(1, sizeof *j);
    ck_assert_ptr_nonnull(j);
    j->workers = 1;
    eng_pool_run(500, 1, block, j);
    ck_assert(!atomic_load(&j->helper_ran) && !atomic_load(&j->bad_worker));
    free(j);
    eng_pool_stop();
}
END_TEST

static void *caller(void *arg)
{
    uint32_t seed = (uint32_t)(uintptr_t)arg;
    for (int it = 0; it < 400; it++) {
        seed = seed * 1103515245u + 12345u;
        uint32_t nblocks = 1 + (seed >> 8) % 300;
        if (it % 7 == 0)
            eng_pool_warm();
        run_and_check(nblocks, 1 + (int)((seed >> 20) % 4));
    }
    return NULL;
}

/* Queries on several connections run passes at once: one holds the helpers,
 * the others run alone; none waits on another's pass. */
START_TEST(test_concurrent_callers)
{
    ck_assert_int_eq(eng_pool_start(4), 4);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(pthread_create(&t[i], NULL, caller, (void *)(uintptr_t)(i + 1)), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    eng_pool_stop();
}
END_TEST

/* Restarts with other sizes, and a warm-up with no pass after it. */
START_TEST(test_restart)
{
    for (int r = 0; r < 20; r++) {
        int n = 1 + r % 5;
        ck_assert_int_eq(eng_pool_start(n), n);
        if (r % 3 == 0)
            eng_pool_warm();
        run_and_check(1 + (uint32_t)r * 37, n);
    }
    ck_assert_int_eq(eng_pool_start(ENG_POOL_MAX + 10), ENG_POOL_MAX);
    run_and_check(MAX_BLOCKS, ENG_POOL_MAX);
    eng_pool_stop();
    eng_pool_stop(); /* twice: nothing to stop */
    run_and_check(10, 3); /* no helpers: the caller runs them all */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("pool");
    TCase *tc = tcase_create("pool");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_every_block_once, 0, 4);
    tcase_add_test(tc, test_helpers_take_blocks);
    tcase_add_test(tc, test_concurrent_callers);
    tcase_add_test(tc, test_restart);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
