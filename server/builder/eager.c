/* eager.c -- layers a pass indexes under --eager-layers fit (eager.h). */
#include "eager.h"

#include <stdlib.h>

typedef struct ranked {
    int layer;
    double ratio; /* index_s / forward_s: lower saves more a second */
} ranked;

static int by_ratio(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->ratio != y->ratio) return x->ratio < y->ratio ? -1 : 1;
    return x->layer - y->layer;
}

/* The forward from d on to r: the slowest timing on the way (timings of
 * near layers may cross; the pass computes them all). */
static double extension(const eager_layer *ly, int d, int r)
{
    double f = ly[d].forward_s;
    for (int l = d + 1; l <= r; l++)
        if (ly[l].forward_s > f) f = ly[l].forward_s;
    return f - ly[d].forward_s;
}

/* Appends to out[k..max_out) the layers of cand[0..n) (ranked) at or before
 * r, not in out[0..k) yet, that fit in *time and *mem (both debited);
 * returns the new count and adds the forward they save to *saved. */
static int take(const eager_layer *ly, const ranked *cand, int n, int r, double *time, uint64_t *mem, int *out, int k,
                int max_out, double *saved)
{
    for (int i = 0; i < n && k < max_out; i++) {
        const eager_layer *l = &ly[cand[i].layer];
        int have = 0;
        for (int j = 0; j < k; j++) have |= out[j] == cand[i].layer;
        if (have || cand[i].layer > r || l->index_s > *time || l->hold_bytes > *mem) continue;
        *time -= l->index_s;
        *mem -= l->hold_bytes;
        *saved += l->forward_s;
        out[k++] = cand[i].layer;
    }
    return k;
}

int eager_fit(const eager_layer *layers, int L, uint64_t mem_left, int *pick, int max_pick)
{
    int deepest = -1, n = 0, best_k = 0;
    double own = 0;
    for (int l = 0; l < L; l++)
        if (layers[l].role == EAGER_ASKED) {
            deepest = l;
            own += layers[l].index_s;
        }
    if (deepest < 0 || max_pick <= 0) return 0;
    own += layers[deepest].forward_s;
    ranked *cand = malloc((size_t)L * sizeof *cand);
    int *tmp = malloc((size_t)max_pick * sizeof *tmp);
    if (!cand || !tmp) goto out;
    for (int l = 0; l < L; l++) {
        const eager_layer *x = &layers[l];
        /* worth it alone: the index costs at most the forward it saves */
        if (x->role != EAGER_CANDIDATE || !(x->forward_s > 0) || !(x->index_s <= x->forward_s)) continue;
        cand[n++] = (ranked){l, x->index_s / x->forward_s};
    }
    if (n > 1) qsort(cand, (size_t)n, sizeof *cand, by_ratio);
    const double spend = EAGER_FIT_SPEND * own;
    double best = 0;
    for (int r = deepest; r < L; r++) {
        double ext = extension(layers, deepest, r), time = spend - ext, saved = 0;
        uint64_t mem = mem_left;
        if (ext > spend) continue;
        int k = take(layers, cand, n, r, &time, &mem, tmp, 0, max_pick, &saved);
        if (saved - ext > best) {
            best = saved - ext;
            best_k = k;
            for (int i = 0; i < k; i++) pick[i] = tmp[i];
        }
    }
    /* The pass goes as deep as its deepest pick, which may be short of the
     * reach it was picked at: what that leaves fits too. */
    int reach = deepest;
    double time = spend, saved = 0;
    uint64_t mem = mem_left;
    for (int i = 0; i < best_k; i++) {
        if (pick[i] > reach) reach = pick[i];
        time -= layers[pick[i]].index_s;
        mem -= layers[pick[i]].hold_bytes;
    }
    time -= extension(layers, deepest, reach);
    best_k = take(layers, cand, n, reach, &time, &mem, pick, best_k, max_pick, &saved);
out:
    free(cand);
    free(tmp);
    return best_k;
}
