/* engine.h -- exact top-k and kNN over a neuron group (server/engine/README.md).
 *
 * Pure C: the engine sees activations only through an activation source
 * (compute the values of these neurons for these inputs), and the index only
 * through decoded npi_views, so it is unit-tested with a synthetic source and
 * wired to the model, the cache and LMDB by the server.
 *
 * Methods, all exact (the answer equals brute force bit for bit, ties broken
 * by the smaller input id):
 *   ENG_SCAN   compute every candidate (ReprocessAll).
 *   ENG_NTA    the Neural Threshold Algorithm: per neuron, sorted access
 *              through MAI entries then partitions (top-k: highest first;
 *              kNN: nearest to the target first), round by round; stop when
 *              the k-th best beats the threshold from the frontier bounds.
 *   ENG_BOUNDS per-input cell bounds from the NPI (exact MAI values, else the
 *              partition's [lower, upper]); compute candidates best bound
 *              first in batches; stop when the k-th best beats the next bound.
 *   ENG_AUTO   BOUNDS when an index is given (it never computes an input
 *              NTA would skip, beyond batch rounding), else SCAN.
 * A top-k or kNN whose k-th best ties the best bound left stops as soon as
 * every input that could still tie it has a larger id (NTA: every input not
 * yet seen; BOUNDS: every one not yet computed).
 *
 * Scores (double): top-k sum = sum w_i x_i (w = 1 when unweighted), mean =
 * sum/|G|, max, min; kNN l2 = sqrt(sum w_i d_i^2), l1 = sum w_i |d_i|,
 * linf = max w_i |d_i|, with d_i = x_i - t_i, all accumulated in group order.
 * Bounds use the same operations in the same order, so floating-point
 * rounding (monotone) cannot make a bound unsound.
 * kNN cosine = 1 - sum w_i x_i t_i / (sqrt(sum w_i x_i^2) sqrt(sum w_i t_i^2)),
 * 1 when either norm is 0. It is not a sum of per-neuron terms: its bounds
 * (a cell or NTA's frontier as a set of values per neuron) bound the dot
 * product from above and the norm from below and above, and give up a
 * rounding margin derived from the group size (cos_bound in engine.c).
 */
#ifndef DE_ENGINE_H
#define DE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "npi.h"

enum eng_kind { ENG_TOPK = 0, ENG_KNN = 1 };
enum eng_agg { ENG_SUM = 0, ENG_MEAN, ENG_MAX, ENG_MIN };
enum eng_metric { ENG_L2 = 0, ENG_L1, ENG_LINF, ENG_COSINE };
enum eng_method { ENG_AUTO = 0, ENG_NTA, ENG_BOUNDS, ENG_SCAN };

/* Counters that a source adds to while a query runs. */
typedef struct eng_fetch_stats {
    uint64_t computed;      /* inputs run through the model */
    uint64_t cache_hits;    /* inputs served from the activation cache */
    double inference_ms;    /* time spent in the model */
    uint64_t forwards;      /* model forwards run */
} eng_fetch_stats;

/* How a source computes inputs, when it says (optional): in forwards of
 * `slots` inputs, where input id can only take a slot of class
 * class_of[(id + id_offset) % slots] and class c has class_slots[c] slots
 * per forward. A forward costs the same however many of its slots hold an
 * input, so with it the engine makes every fetch whole forwards: the inputs
 * it must compute, then, in the free slots, the best candidates left of
 * each slot's class (BOUNDS), or more of the sorted lists (NTA). */
#define ENG_MAX_CLASSES 64
typedef struct eng_geometry {
    uint32_t slots;              /* 0 = not given: fetches of any size */
    uint32_t nclass;
    const uint16_t *class_of;    /* [slots] */
    const uint32_t *class_slots; /* [nclass] */
    uint64_t id_offset;          /* a shard's global id of its input 0 */
} eng_geometry;

/* The activation source: fill out[i*m + j] with the activation of neuron
 * neurons[j] for input ids[i], for n inputs. Returns 0, or -1 with err. */
typedef struct eng_source {
    void *ctx;
    int (*fetch)(void *ctx, const uint32_t *ids, size_t n, const uint32_t *neurons,
                 size_t m, float *out, eng_fetch_stats *st, char *err, size_t errlen);
    eng_geometry geo;
} eng_source;

typedef struct eng_query {
    int kind;                    /* enum eng_kind */
    int agg;                     /* enum eng_agg (top-k) */
    int metric;                  /* enum eng_metric (kNN) */
    int method;                  /* enum eng_method */
    uint32_t n;                  /* inputs in the dataset, ids 0..n-1 */
    size_t k;                    /* >= 1; more than candidates returns them all */
    size_t gsize;                /* neurons in the group, >= 1 */
    const uint32_t *neurons;     /* [gsize] flat neuron indices in the layer */
    const double *weights;       /* [gsize] or NULL; >= 0 except in a top-k sum */
    const float *target;         /* kNN: the target's activations [gsize], or NULL with: */
    int target_is_input;         /* the target is input target_input of the dataset: */
    uint32_t target_input;       /*   the engine computes it (BOUNDS: in one forward with
                                      the candidates its cell says are nearest) */
    int64_t exclude;             /* input id that is not a candidate, or -1 */
    const uint8_t *allowed;      /* [n] nonzero = candidate; NULL = all */
    uint32_t batch;              /* inputs per fetch, 0 = 256 */
    uint32_t first_batch;        /* BOUNDS: inputs of its first fetch (0 = batch);
                                    each later fetch doubles, up to batch */
    const volatile int *cancel;  /* polled between batches; nonzero stops with -2 */
    int has_threshold;           /* a bound from elsewhere (a coordinator's other shards): */
    double threshold;            /*   inputs scoring strictly worse than it may be left out,
                                      so NTA and BOUNDS also stop once nothing left can reach it;
                                      what is returned is still exact, ties with it included */
    size_t scratch_budget;       /* bytes of optional scratch beyond O(N) (NTA keeps
                                  * unpacked partition ids of neurons within it and
                                  * scans the packed ids of the rest); 0 = 64 MiB */
} eng_query;

typedef struct eng_result {
    uint32_t input;
    double value;                /* score (top-k) or distance (kNN) */
} eng_result;

typedef struct eng_stats {
    int method;                  /* the method that ran (never ENG_AUTO) */
    uint64_t inputs_fetched;     /* inputs asked of the source */
    uint64_t inputs_known;       /* scored from the index's exact values (MAI
                                  * values, point partitions), no forward */
    eng_fetch_stats fetch;       /* what the source reported */
    uint64_t rounds;             /* NTA rounds / bounds batches */
    uint64_t inputs_relaxed;     /* BOUNDS kNN: candidates whose bound from the guessed
                                  * target was far enough to skip an exact one */
    uint64_t coarse_passes;      /* BOUNDS: dense passes taken in single precision
                                  * (coarse_bounds in engine.c) */
    uint64_t coarse_widened;     /* BOUNDS: top-k or kNN whose answer needed more
                                  * than the coarse pass's best few: exact pass then */
    double cell_ms;              /* time spent computing cell bounds / partition lists */
    double elapsed_ms;
} eng_stats;

/* Runs q. idx holds one decoded view per group neuron (idx[j] for
 * q->neurons[j]), or is NULL when the layer has no index (then only SCAN and
 * AUTO can run; NTA/BOUNDS fail with -1). out has room for min(k, n);
 * *nout gets the number of results, best first.
 * Returns 0, -1 with err (a source failure or bad arguments), or -2 when
 * q->cancel became nonzero. */
int eng_run(const eng_query *q, const npi_view *idx, const eng_source *src,
            eng_result *out, size_t *nout, eng_stats *st, char *err, size_t errlen);

/* Which of the CPU's vector instructions the cell bounds may use: 3 (the
 * default) AVX-512 with VBMI, 2 AVX-512 (indexes of up to 64 partitions;
 * from 2 on, dense sums may take the single-precision coarse pass), else 1
 * AVX2 gathers, 0 only the portable loops. Exact bounds are the same bits at
 * every level, coarse keys at 2 and 3, and answers at all (for tests and
 * benchmarks; not thread-safe, set it before queries run). Returns the
 * level that will run on this CPU. */
int eng_simd(int level);

/* Threads a query's passes over every input (coarse and exact cell
 * bounds) may use (default 1; the daemon gives its --threads): n - 1
 * helper threads are started (pool.h) and take blocks of a pass large
 * enough, each block computed as it would be on one. Set it before queries
 * run, not while they do. Returns the threads kept (1..64). */
int eng_threads(int n);
/* The coarse pass's key of every input, key[0..q->n), as a default query
 * over idx (decoded entries of q's neurons, in group order) computes it on
 * this CPU and with these threads: for top-k at most -score, for kNN at
 * most the distance (a kNN needs q->target). For tests. Returns 0, 1 when
 * such a query takes no coarse pass here (CPU, metric, index, filter), -1
 * with err. */
int eng_coarse_keys(const eng_query *q, const npi_view *idx, double *key, char *err, size_t errlen);
/* A query over n inputs and gsize neurons is about to run (its index
 * entries are being read): wakes the helpers when its passes will use them,
 * so that their wake-up overlaps that read. */
void eng_warm(uint32_t n, size_t gsize);

/* The score of one input from its group activations x[gsize], as defined
 * above (used by every method and by streaming scans outside the engine). */
double eng_score(const eng_query *q, const float *x);

/* A top-k of (value, id) kept in a bounded heap; best first on finish. Used by
 * the engine and by the index builder's single-pass query answer. */
typedef struct eng_topk eng_topk;
eng_topk *eng_topk_new(size_t k, int smallest_best);
void eng_topk_push(eng_topk *h, uint32_t input, double value);
/* The k-th best value so far, and whether the heap is full (until it is,
 * eng_topk_worst gives the worst possible value: -inf, or +inf when
 * smallest_best). A NaN value is pushed as the worst possible. */
int eng_topk_full(const eng_topk *h);
double eng_topk_worst(const eng_topk *h);
/* Writes results best first (ties: smaller id first); returns the count and
 * leaves the heap empty. k = 0 gives NULL. */
size_t eng_topk_finish(eng_topk *h, eng_result *out);
void eng_topk_free(eng_topk *h);

#endif
