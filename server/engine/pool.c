/* pool.c -- the engine's helper threads (pool.h).
 *
 * A pass publishes its job (fn, ctx, blocks), sets `active` and bumps the
 * futex word `gen`; helpers wake, mark themselves busy, and take blocks only
 * if `active` still names the generation they woke for. The caller, out of
 * blocks, clears `active` and waits for every busy helper: a helper that
 * marked itself busy before the clear finishes its block, one that marks
 * itself after sees the clear (sequentially consistent stores and loads on
 * both sides), so none touches a job its caller has returned from.
 */
#include "pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#define cpu_relax() __builtin_ia32_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* How long helpers woken by eng_pool_warm wait awake for a pass: a query's
 * first pass starts ~0.2-0.4 ms after it is parsed (its index entries
 * are read and decoded first). */
#define WARM_NS 600000L

static struct {
    int nhelpers;
    pthread_t tid[ENG_POOL_MAX];
    unsigned start_gen; /* gen when the helpers were started: what they have seen */
    atomic_uint gen;    /* futex word: bumped for every job and for stop */
    atomic_uint active; /* generation of the job in progress, 0: none */
    atomic_int owner;   /* a pass holds the helpers */
    atomic_int stop;
    atomic_uint warm;   /* the generation eng_pool_warm woke them with */
    atomic_uint next;   /* the job's next block */
    uint32_t nblocks;
    int workers;
    eng_pool_fn fn;
    void *ctx;
    atomic_int busy[ENG_POOL_MAX];
    atomic_ullong helped; /* blocks the helpers ran, ever */
} P;

static void futex_wait(atomic_uint *w, unsigned v)
{
    syscall(SYS_futex, (unsigned *)w, FUTEX_WAIT_PRIVATE, v, NULL, NULL, 0);
}

static void futex_wake(atomic_uint *w, int n)
{
    syscall(SYS_futex, (unsigned *)w, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static void *helper(void *arg)
{
    int id = (int)(intptr_t)arg; /* worker number, 1.. */
    unsigned seen = P.start_gen; /* not gen now: a pass may have begun since */
    for (;;) {
        unsigned g;
        while ((g = atomic_load(&P.gen)) == seen)
            futex_wait(&P.gen, seen);
        seen = g;
        if (atomic_load(&P.stop))
            return NULL;
        if (atomic_load(&P.warm) == g) { /* a pass is coming: wait for it awake, a while */
            struct timespec t0, t;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            for (unsigned i = 1; atomic_load(&P.gen) == seen; i++) {
                cpu_relax();
                if (i % 256 == 0) {
                    clock_gettime(CLOCK_MONOTONIC, &t);
                    if ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) > WARM_NS)
                        break;
                }
            }
            continue;
        }
        atomic_store(&P.busy[id], 1);
        if (atomic_load(&P.active) == g && id < P.workers)
            for (uint32_t b; (b = atomic_fetch_add(&P.next, 1)) < P.nblocks;) {
                P.fn(P.ctx, id, b);
                atomic_fetch_add_explicit(&P.helped, 1, memory_order_relaxed);
            }
        atomic_store(&P.busy[id], 0);
    }
}

void eng_pool_stop(void)
{
    if (P.nhelpers == 0)
        return;
    atomic_store(&P.stop, 1);
    atomic_fetch_add(&P.gen, 1);
    futex_wake(&P.gen, INT_MAX);
    for (int i = 1; i <= P.nhelpers; i++)
        pthread_join(P.tid[i], NULL);
    P.nhelpers = 0;
    atomic_store(&P.stop, 0);
}

int eng_pool_start(int threads)
{
    eng_pool_stop();
    if (threads > ENG_POOL_MAX)
        threads = ENG_POOL_MAX;
    P.start_gen = atomic_load(&P.gen);
    for (int i = 1; i < threads; i++) {
        if (pthread_create(&P.tid[i], NULL, helper, (void *)(intptr_t)i) != 0)
            break;
        P.nhelpers = i;
    }
    return 1 + P.nhelpers;
}

int eng_pool_threads(void)
{
    return 1 + P.nhelpers;
}

unsigned long long eng_pool_helped(void)
{
    return atomic_load_explicit(&P.helped, memory_order_relaxed);
}

/* The generation after gen's, never 0 ("no job" in active). Called with
 * owner held. */
static unsigned next_gen(void)
{
    unsigned g = atomic_load(&P.gen) + 1;
    return g ? g : 1;
}

void eng_pool_warm(void)
{
    int expect = 0;
    if (P.nhelpers == 0 || !atomic_compare_exchange_strong(&P.owner, &expect, 1))
        return; /* none, or a pass holds them: they are awake */
    unsigned g = next_gen();
    atomic_store(&P.warm, g);
    atomic_store(&P.gen, g);
    futex_wake(&P.gen, P.nhelpers);
    atomic_store(&P.owner, 0);
}

void eng_pool_run(uint32_t nblocks, int workers, eng_pool_fn fn, void *ctx)
{
    int expect = 0;
    if (P.nhelpers == 0 || workers < 2 || nblocks < 2 || !atomic_compare_exchange_strong(&P.owner, &expect, 1)) {
        for (uint32_t b = 0; b < nblocks; b++)
            fn(ctx, 0, b);
        return;
    }
    P.fn = fn;
    P.ctx = ctx;
    P.nblocks = nblocks;
    P.workers = workers;
    atomic_store(&P.next, 0);
    unsigned g = next_gen();
    atomic_store(&P.active, g);
    atomic_store(&P.gen, g);
    futex_wake(&P.gen, workers - 1 < P.nhelpers ? workers - 1 : P.nhelpers);
    for (uint32_t b; (b = atomic_fetch_add(&P.next, 1)) < nblocks;)
        fn(ctx, 0, b);
    atomic_store(&P.active, 0);
    for (int i = 1; i <= P.nhelpers; i++)
        while (atomic_load(&P.busy[i]))
            cpu_relax();
    atomic_store(&P.owner, 0);
}
