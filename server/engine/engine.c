/* engine.c -- exact top-k and kNN over a neuron group: full scan, the Neural
 * Threshold Algorithm and cell bounds (see engine.h and README.md here).
 *
 * Exactness rests on two rules:
 *   1. every exact value comes from eng_score, and every bound (NTA threshold,
 *      cell bound) is computed by the same per-neuron term and the same
 *      combination, in group order, in double, with an index value (an exact
 *      MAI float, or a partition bound) in place of the activation. Rounding
 *      is monotone, so a bound >= score (top-k) / <= distance (kNN) holds in
 *      floating point exactly as in the reals;
 *   2. a method stops only when the k-th best is STRICTLY better than the
 *      best bound of anything not computed: an input tying it could have the
 *      smaller id. Cell bounds know the ids they have not computed, so there
 *      a tie stops too when every one left has a larger id (dead neurons:
 *      all-zero groups would otherwise compute everything).
 * NaN: a score with a NaN anywhere is the worst possible (-inf / +inf), so it
 * never needs covering by a bound; a bound that comes out NaN (a NaN or an
 * inconsistent partition bound) is the best possible, which is always sound.
 */
#include "engine.h"
#include "pool.h"

/* Rule 1 needs every product rounded on its own: a fused multiply-add in one
 * place and not in another (e.g. with -march=native) could make a bound
 * undercut the score it must cover. (-ffast-math would break it too.) */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ENG_DEFAULT_BATCH 256u
#define ENG_DEFAULT_SCRATCH ((size_t)64 << 20)

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ */
/* Scores and bounds: one term per neuron, one combination.            */

enum { CMB_SUM, CMB_MAX, CMB_MIN };

static int combine_kind(const eng_query *q)
{
    if (q->kind == ENG_KNN)
        return q->metric == ENG_LINF ? CMB_MAX : CMB_SUM;
    return q->agg == ENG_MAX ? CMB_MAX : q->agg == ENG_MIN ? CMB_MIN : CMB_SUM;
}

static double combine_init(const eng_query *q)
{
    if (q->kind == ENG_TOPK && q->agg == ENG_MAX)
        return -INFINITY;
    if (q->kind == ENG_TOPK && q->agg == ENG_MIN)
        return INFINITY;
    return 0.0; /* sums, and linf whose terms are >= 0 */
}

/* Whether neuron j's weights are applied (top-k sum/mean, every kNN metric). */
static int weighted(const eng_query *q)
{
    return q->weights && (q->kind == ENG_KNN || q->agg == ENG_SUM || q->agg == ENG_MEAN);
}

/* v: top-k, the activation (or an upper bound of it); kNN, |x - t| (or a
 * lower bound of it). Monotone non-decreasing in v for v >= 0 / any v. */
static inline double term_of(const eng_query *q, size_t j, double v)
{
    if (q->kind == ENG_KNN) {
        double t = q->metric == ENG_L2 ? v * v : v;
        return q->weights ? q->weights[j] * t : t;
    }
    if (q->agg == ENG_SUM || q->agg == ENG_MEAN)
        return q->weights ? q->weights[j] * v : v;
    return v;
}

/* NaN-propagating so that a NaN term taints the result in every kind. */
static inline double combine(int ck, double s, double t)
{
    if (ck == CMB_SUM)
        return s + t;
    if (t != t)
        return t;
    if (ck == CMB_MAX)
        return t > s ? t : s;
    return t < s ? t : s;
}

static inline double finish_value(const eng_query *q, double s)
{
    if (q->kind == ENG_KNN)
        return q->metric == ENG_L2 ? sqrt(s) : s;
    if (q->agg == ENG_MEAN)
        return s / (double)q->gsize;
    return s;
}

static inline double worst_value(const eng_query *q)
{
    return q->kind == ENG_KNN ? INFINITY : -INFINITY;
}

static inline int is_cosine(const eng_query *q)
{
    return q->kind == ENG_KNN && q->metric == ENG_COSINE;
}

/* A cosine distance may round below 0 (x = t): its best is below any. */
static inline double best_value(const eng_query *q)
{
    return q->kind == ENG_KNN ? (is_cosine(q) ? -INFINITY : 0.0) : INFINITY;
}

/* a strictly better than b */
static inline int better(const eng_query *q, double a, double b)
{
    return q->kind == ENG_KNN ? a < b : a > b;
}

static inline double weight_of(const eng_query *q, size_t j)
{
    return q->weights ? q->weights[j] : 1.0;
}

/* 1 - cos(x, t) with weights; 1 when a norm is 0; NaN taints. */
static double cosine_distance(const eng_query *q, const float *x)
{
    double dot = 0, nx = 0, nt = 0;
    for (size_t j = 0; j < q->gsize; j++) {
        double w = weight_of(q, j), xv = (double)x[j], tv = (double)q->target[j];
        dot += w * (xv * tv);
        nx += w * (xv * xv);
        nt += w * (tv * tv);
    }
    if (dot != dot || nx != nx || nt != nt)
        return NAN;
    if (nx == 0.0 || nt == 0.0)
        return 1.0;
    return 1.0 - dot / (sqrt(nx) * sqrt(nt));
}

double eng_score(const eng_query *q, const float *x)
{
    if (is_cosine(q)) {
        double d = cosine_distance(q, x);
        return d != d || isinf(d) ? worst_value(q) : d;
    }
    int ck = combine_kind(q);
    double s = combine_init(q);
    for (size_t j = 0; j < q->gsize; j++) {
        double v = q->kind == ENG_KNN ? fabs((double)x[j] - (double)q->target[j]) : (double)x[j];
        s = combine(ck, s, term_of(q, j, v));
    }
    s = finish_value(q, s);
    return s != s ? worst_value(q) : s;
}

/* kNN: distance from t to [lo, hi], NaN when unknown. */
static inline double box_distance(float lo, float hi, double t)
{
    double below = (double)lo - t, above = t - (double)hi;
    if (below != below || above != above || !(lo <= hi))
        return NAN;
    double b = 0.0;
    if (below > b)
        b = below;
    if (above > b)
        b = above;
    return b;
}

/* The per-neuron bound value of an exact MAI value: the value itself (top-k)
 * or |v - t| (kNN), computed exactly as eng_score does. */
static inline double exact_value(const eng_query *q, size_t j, float v)
{
    return q->kind == ENG_KNN ? fabs((double)v - (double)q->target[j]) : (double)v;
}

/* Cosine bounds. A set of inputs is described, per neuron j, by what it
 * allows of x_j; summed with the weights over the group they give
 *   u >= x.t (the dot product), l <= |x|^2 <= m, and a = sum |u_j|
 * (the dot's magnitude, for its rounding error). cos_bound turns them into
 * a lower bound of every member's cosine distance as eng_score computes it:
 *   x.t > 0:  cos <= u / (sqrt(l) |t|)   (1 when l may be 0)
 *   x.t <= 0: cos <= u / (sqrt(m) |t|)   (0 when l may be 0: x = 0 scores 1)
 * Floating point: the sums carry a relative error of at most g = 2(n+2)eps
 * of their magnitude, and so does a score's cosine (Cauchy-Schwarz bounds
 * |x.t| by |x||t|); the bound widens u, l, m and |t| by it, decides the sign
 * of u on its widened value, and gives up 2g plus a few ulps at the end. */
typedef struct cos_acc {
    double u, l, m, a;
} cos_acc;

static double cos_bound(const eng_query *q, const cos_acc *c, double nt2)
{
    if (c->u != c->u || c->l != c->l || c->m != c->m || c->a != c->a || nt2 != nt2 || isinf(c->a) ||
        isinf(c->m) || isinf(nt2))
        return best_value(q);
    if (nt2 == 0.0)
        return 1.0; /* every distance is exactly 1 */
    const double g = 2.0 * ((double)q->gsize + 2.0) * DBL_EPSILON;
    double uhi = c->u + g * c->a, llo = c->l * (1.0 - g), mhi = c->m * (1.0 + g);
    double cmax;
    if (uhi > 0.0)
        cmax = llo <= 0.0 ? 1.0 : uhi / (sqrt(llo) * sqrt(nt2 * (1.0 - g)));
    else
        cmax = llo <= 0.0 ? 0.0 : uhi / (sqrt(mhi) * sqrt(nt2 * (1.0 + g)));
    if (cmax > 1.0)
        cmax = 1.0;
    cmax += 8.0 * DBL_EPSILON * fabs(cmax);
    return 1.0 - cmax - 2.0 * g - 8.0 * DBL_EPSILON;
}

/* Adds neuron j's share for x_j anywhere in [lo, hi] (lo == hi: exact). */
static inline void cos_add_range(cos_acc *c, double w, double lo, double hi, double t)
{
    double a = lo * t, b = hi * t, u = a > b ? a : b;
    double z = lo > 0.0 ? lo : hi < 0.0 ? -hi : 0.0; /* nearest to 0 */
    double big = fabs(lo) > fabs(hi) ? fabs(lo) : fabs(hi);
    c->u += w * u;
    c->a += w * (fabs(a) > fabs(b) ? fabs(a) : fabs(b));
    c->l += w * (z * z);
    c->m += w * (big * big);
}

static double target_norm2(const eng_query *q)
{
    double nt = 0;
    for (size_t j = 0; j < q->gsize; j++)
        nt += weight_of(q, j) * ((double)q->target[j] * (double)q->target[j]);
    return nt;
}

/* ------------------------------------------------------------------ */
/* Bounded heap, worst at the root.                                     */

struct eng_topk {
    size_t k, n, cap;
    int smallest_best;
    int oom;
    eng_result *e;
};

static inline int topk_worse(const eng_topk *h, const eng_result *a, const eng_result *b)
{
    if (a->value != b->value)
        return h->smallest_best ? a->value > b->value : a->value < b->value;
    return a->input > b->input;
}

eng_topk *eng_topk_new(size_t k, int smallest_best)
{
    if (k == 0)
        return NULL;
    eng_topk *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->k = k;
    h->smallest_best = smallest_best;
    h->cap = k < 1024 ? k : 1024; /* grows: k may be huge while few inputs arrive */
    h->e = malloc(h->cap * sizeof *h->e);
    if (!h->e) {
        free(h);
        return NULL;
    }
    return h;
}

static void topk_sift_down(eng_topk *h, size_t i, size_t n)
{
    eng_result x = h->e[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && topk_worse(h, &h->e[c + 1], &h->e[c]))
            c++;
        if (!topk_worse(h, &h->e[c], &x))
            break;
        h->e[i] = h->e[c];
        i = c;
    }
    h->e[i] = x;
}

void eng_topk_push(eng_topk *h, uint32_t input, double value)
{
    eng_result x = {input, value};
    if (value != value) /* NaN ranks worst */
        x.value = h->smallest_best ? INFINITY : -INFINITY;
    if (h->n < h->k) {
        if (h->n == h->cap) {
            size_t nc = h->cap * 2 < h->k ? h->cap * 2 : h->k;
            eng_result *ne = realloc(h->e, nc * sizeof *ne);
            if (!ne) {
                h->oom = 1;
                return;
            }
            h->e = ne;
            h->cap = nc;
        }
        size_t i = h->n++;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!topk_worse(h, &x, &h->e[p]))
                break;
            h->e[i] = h->e[p];
            i = p;
        }
        h->e[i] = x;
        return;
    }
    if (topk_worse(h, &h->e[0], &x)) {
        h->e[0] = x;
        topk_sift_down(h, 0, h->n);
    }
}

int eng_topk_full(const eng_topk *h)
{
    return h->n == h->k;
}

/* The root while full; until then the worst possible value, which nothing
 * is strictly worse than. */
double eng_topk_worst(const eng_topk *h)
{
    if (h->n < h->k)
        return h->smallest_best ? INFINITY : -INFINITY;
    return h->e[0].value;
}

/* Heap sort (worst to the back), then copy; the heap is empty afterwards. */
size_t eng_topk_finish(eng_topk *h, eng_result *out)
{
    size_t n = h->n;
    for (size_t end = n; end > 1; end--) {
        eng_result t = h->e[0];
        h->e[0] = h->e[end - 1];
        h->e[end - 1] = t;
        topk_sift_down(h, 0, end - 1);
    }
    /* now e[0..n) runs from the best to the worst */
    if (n)
        memcpy(out, h->e, n * sizeof *out);
    h->n = 0;
    return n;
}

void eng_topk_free(eng_topk *h)
{
    if (!h)
        return;
    free(h->e);
    free(h);
}

/* ------------------------------------------------------------------ */
/* Shared query state.                                                  */

typedef struct run {
    const eng_query *q;
    eng_query *lq;            /* the same, writable (the engine may learn the target) */
    float *tbuf;              /* [gsize]: a target the engine computes itself */
    const npi_view *idx;
    const eng_source *src;
    const eng_geometry *geo;  /* NULL: the source said nothing of its forwards */
    eng_stats *st;
    eng_topk *h;
    uint32_t batch;
    size_t ncand;
    int coarse;        /* dense passes may be coarse_bounds (coarse_ok) */
    float *rows;       /* batch * gsize */
    char *err;
    size_t errlen;
} run;

static inline int is_candidate(const eng_query *q, uint32_t id)
{
    return (int64_t)id != q->exclude && (!q->allowed || q->allowed[id]);
}

static void candidates_in_order(const eng_query *q, uint32_t *order);

static inline int cancelled(const eng_query *q)
{
    return q->cancel && *q->cancel;
}

/* Computes ids[0..cnt) (candidates, none seen before) in batches, pushing
 * their exact scores. Returns 0, -1 or -2. */
static int compute_inputs(run *r, const uint32_t *ids, size_t cnt)
{
    const eng_query *q = r->q;
    for (size_t off = 0; off < cnt; off += r->batch) {
        if (cancelled(q)) {
            seterr(r->err, r->errlen, "query cancelled");
            return -2;
        }
        size_t nb = cnt - off < r->batch ? cnt - off : r->batch;
        if (r->err && r->errlen)
            r->err[0] = '\0';
        int rc = r->src->fetch(r->src->ctx, ids + off, nb, q->neurons, q->gsize, r->rows,
                               &r->st->fetch, r->err, r->errlen);
        r->st->inputs_fetched += nb;
        if (rc != 0) {
            if (r->err && r->errlen && !r->err[0])
                seterr(r->err, r->errlen, "activation source failed");
            return -1;
        }
        for (size_t i = 0; i < nb; i++)
            eng_topk_push(r->h, ids[off + i], eng_score(q, r->rows + i * q->gsize));
        if (r->h->oom) {
            seterr(r->err, r->errlen, "out of memory (top-k heap)");
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Whole forwards (eng_geometry)                                        */

typedef struct fill {
    const eng_geometry *g;
    uint32_t left[ENG_MAX_CLASSES]; /* free slots of each class in the planned forwards */
    size_t free_total;
} fill;

static inline uint32_t class_of(const eng_geometry *g, uint32_t id)
{
    return g->class_of[((uint64_t)id + g->id_offset) % g->slots];
}

/* The forwards ids[0..n) need (class by class), and the slots they leave. */
static void fill_plan(fill *f, const eng_geometry *g, const uint32_t *ids, size_t n)
{
    uint32_t count[ENG_MAX_CLASSES] = {0};
    size_t fw = 0;
    f->g = g;
    f->free_total = 0;
    for (size_t i = 0; i < n; i++)
        count[class_of(g, ids[i])]++;
    for (uint32_t c = 0; c < g->nclass; c++) {
        size_t need = (count[c] + g->class_slots[c] - 1) / g->class_slots[c];
        if (need > fw)
            fw = need;
    }
    for (uint32_t c = 0; c < g->nclass; c++) {
        f->left[c] = (uint32_t)(fw * g->class_slots[c] - count[c]);
        f->free_total += f->left[c];
    }
}

/* Puts id in a free slot of its class: 1, or 0 when its class is full. */
static inline int fill_take(fill *f, uint32_t id)
{
    uint32_t c = class_of(f->g, id);
    if (!f->left[c])
        return 0;
    f->left[c]--;
    f->free_total--;
    return 1;
}

/* Computes a round's ids in whole forwards: grouped forward by forward
 * (each group at most class_slots[c] of class c), fetched a few whole
 * forwards at a time, so that no fetch splits a forward the round fills. */
static int compute_forwards(run *r, const uint32_t *ids, size_t cnt, uint32_t *scratch)
{
    const eng_geometry *g = r->geo;
    if (!g)
        return compute_inputs(r, ids, cnt);
    size_t start[ENG_MAX_CLASSES + 1] = {0}, fill_at[ENG_MAX_CLASSES] = {0};
    for (size_t i = 0; i < cnt; i++)
        start[class_of(g, ids[i]) + 1]++;
    for (uint32_t c = 0; c < g->nclass; c++)
        start[c + 1] += start[c];
    uint32_t *by_class = scratch + cnt; /* the ids class by class, in order */
    for (size_t i = 0; i < cnt; i++) {
        uint32_t c = class_of(g, ids[i]);
        by_class[start[c] + fill_at[c]++] = ids[i];
    }
    /* forward by forward, a few whole forwards per fetch */
    size_t per = r->batch / g->slots ? r->batch / g->slots : 1;
    size_t n = 0, seg = 0, forwards = 0, taken[ENG_MAX_CLASSES] = {0};
    while (n < cnt) {
        for (uint32_t c = 0; c < g->nclass; c++)
            for (uint32_t k = 0; k < g->class_slots[c] && taken[c] < fill_at[c]; k++)
                scratch[n++] = by_class[start[c] + taken[c]++];
        if (++forwards == per || n == cnt) {
            int rc = compute_inputs(r, scratch + seg, n - seg);
            if (rc != 0)
                return rc;
            seg = n;
            forwards = 0;
        }
    }
    return 0;
}

static int check_geometry(const eng_geometry *g, char *err, size_t errlen)
{
    if (!g->slots)
        return 0;
    if (!g->class_of || !g->class_slots || g->nclass < 1 || g->nclass > ENG_MAX_CLASSES)
        goto bad;
    uint32_t count[ENG_MAX_CLASSES] = {0};
    for (uint32_t p = 0; p < g->slots; p++) {
        if (g->class_of[p] >= g->nclass)
            goto bad;
        count[g->class_of[p]]++;
    }
    for (uint32_t c = 0; c < g->nclass; c++)
        if (count[c] != g->class_slots[c] || !count[c])
            goto bad;
    return 0;
bad:
    seterr(err, errlen, "the source's forward geometry is inconsistent");
    return -1;
}

/* Neurons whose term can change a score or bound: with weights, those with
 * w > 0 (a zero weight adds exactly 0 for every finite value, and a
 * non-finite one makes the score NaN, i.e. the worst). */
static int neuron_active(const eng_query *q, size_t j)
{
    return !weighted(q) || q->weights[j] != 0.0;
}

/* A top-k neuron of negative weight: its best inputs are its lowest values. */
static inline int neg_weight(const eng_query *q, size_t j)
{
    return q->kind == ENG_TOPK && weighted(q) && q->weights[j] < 0.0;
}

/* ------------------------------------------------------------------ */
/* ENG_SCAN                                                             */

static int run_scan(run *r)
{
    const eng_query *q = r->q;
    uint32_t *ids = malloc((size_t)r->batch * sizeof *ids);
    int rc = 0;
    if (!ids) {
        seterr(r->err, r->errlen, "out of memory");
        return -1;
    }
    size_t cnt = 0;
    for (uint32_t id = 0; id < q->n; id++) {
        if (!is_candidate(q, id))
            continue;
        ids[cnt++] = id;
        if (cnt == r->batch || id + 1 == q->n) {
            r->st->rounds++;
            if ((rc = compute_inputs(r, ids, cnt)) != 0)
                goto done;
            cnt = 0;
        }
    }
    if (cnt) {
        r->st->rounds++;
        rc = compute_inputs(r, ids, cnt);
    }
done:
    free(ids);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Index checks                                                         */

static int check_view(const run *r, size_t j)
{
    const npi_view *v = &r->idx[j];
    if (v->n != r->q->n || v->partitions < 2 || v->partitions > NPI_MAX_PARTITIONS ||
        v->mai_count > v->n || v->bits < 1 || v->bits > 8 ||
        (1u << v->bits) < v->partitions || !v->pids || !v->lower || !v->upper ||
        (v->mai_count && (!v->mai_ids || !v->mai_values))) {
        seterr(r->err, r->errlen,
               "index of neuron %u does not match the query (n %u vs %u, %u partitions)",
               r->q->neurons[j], v->n, r->q->n, v->partitions);
        return -1;
    }
    return 0;
}

/* MAI entries must be in rank order (value descending, NaN last) with valid
 * ids: NTA's frontier relies on it. */
static int check_mai(const run *r, size_t j)
{
    const npi_view *v = &r->idx[j];
    for (uint32_t i = 0; i < v->mai_count; i++) {
        if (v->mai_ids[i] >= v->n)
            goto bad;
        if (i > 0) {
            float a = v->mai_values[i - 1], b = v->mai_values[i];
            if (b == b && (a != a || b > a))
                goto bad;
        }
    }
    return 0;
bad:
    seterr(r->err, r->errlen, "index of neuron %u is corrupt (MAI not in rank order)",
           r->q->neurons[j]);
    return -1;
}

/* ------------------------------------------------------------------ */
/* ENG_NTA                                                              */

typedef struct nta_part {
    double key;     /* top-k: upper bound; kNN: distance of [lower, upper] from t */
    uint32_t p;
    uint32_t size;  /* members */
} nta_part;

typedef struct nta_neuron {
    const npi_view *v;
    size_t j;           /* position in the group */
    double t;           /* kNN target */
    /* MAI cursor. top-k: next rank ml. kNN: ranks [0, split) hold values
     * >= t, so nearest first is outward from split: left ml-1 down, right mr up. */
    uint32_t ml, mr;
    nta_part *parts;    /* non-empty partitions, best key first */
    uint32_t nparts, pc;
    uint32_t pos, found; /* scan position and members found in parts[pc] */
    uint8_t *pid8;      /* unpacked partition ids, or NULL: scan the packed ones */
    int neg;            /* top-k, negative weight: lowest values first; keys are -value */
    float gmin, gmax;   /* every value of the list lies in [gmin, gmax] (NaN: unknown) */
    uint32_t mnan;      /* MAI entries before its NaN ones (rank order puts NaN last) */
} nta_neuron;

/* The MAI rank a top-k cursor at i stands on: rank order, or for a negative
 * weight from the lowest value up, its NaN entries last. */
static inline uint32_t mai_rank(const nta_neuron *nn, uint32_t i)
{
    return !nn->neg || i >= nn->mnan ? i : nn->mnan - 1 - i;
}

enum { HEAD_NONE, HEAD_LEFT, HEAD_RIGHT, HEAD_PART };

static int part_cmp_desc(const void *a, const void *b)
{
    const nta_part *x = a, *y = b;
    if (x->key != y->key)
        return x->key > y->key ? -1 : 1;
    return x->p < y->p ? -1 : x->p > y->p;
}

static int part_cmp_asc(const void *a, const void *b)
{
    const nta_part *x = a, *y = b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->p < y->p ? -1 : x->p > y->p;
}

/* Key of an exact MAI value in the sorted-access order. A NaN value makes
 * the input's score the worst, so it needs no covering: worst key. */
static inline double nta_mai_key(const eng_query *q, const nta_neuron *nn, uint32_t rank)
{
    float v = nn->v->mai_values[rank];
    if (v != v)
        return worst_value(q);
    double k = q->kind == ENG_KNN ? fabs((double)v - nn->t) : nn->neg ? -(double)v : (double)v;
    return k != k ? worst_value(q) : k; /* kNN with a non-finite target */
}

/* The next item of neuron nn (best key first) and its key. */
static int nta_head(const eng_query *q, const nta_neuron *nn, double *key)
{
    int which = HEAD_NONE;
    double best = 0;
    uint32_t m = nn->v->mai_count;
    if (q->kind == ENG_TOPK) {
        if (nn->ml < m) {
            which = HEAD_LEFT;
            best = nta_mai_key(q, nn, mai_rank(nn, nn->ml));
        }
    } else {
        if (nn->ml > 0) {
            which = HEAD_LEFT;
            best = nta_mai_key(q, nn, nn->ml - 1);
        }
        if (nn->mr < m) {
            double k = nta_mai_key(q, nn, nn->mr);
            if (which == HEAD_NONE || k < best) {
                which = HEAD_RIGHT;
                best = k;
            }
        }
    }
    if (nn->pc < nn->nparts) {
        double k = nn->parts[nn->pc].key;
        if (which == HEAD_NONE || better(q, k, best)) {
            which = HEAD_PART;
            best = k;
        }
    }
    *key = best;
    return which;
}

typedef struct nta_state {
    nta_neuron *nn;
    size_t nact;
    nta_part *parts;
    uint8_t *seen;
    uint32_t *gath;
    size_t ngath, capgath;
    uint32_t *counts; /* NPI_MAX_PARTITIONS scratch */
    uint8_t *pid8;    /* unpack scratch for neurons past the budget */
    uint8_t **kept;   /* unpacked ids kept, per active neuron */
    uint32_t *pending; /* seen by the look-ahead, no slot of their class left: next round */
    size_t npending;
    uint32_t *order;   /* compute_forwards scratch: 2 * capgath */
} nta_state;

/* pid8: n bytes to unpack the ids into (kept by the neuron or scratch). */
static int nta_setup_neuron(run *r, nta_state *s, nta_neuron *nn, size_t j, uint8_t *pid8)
{
    const eng_query *q = r->q;
    const npi_view *v = &r->idx[j];
    nn->v = v;
    nn->j = j;
    nn->t = q->kind == ENG_KNN ? (double)q->target[j] : 0.0;
    nn->neg = neg_weight(q, j);
    nn->mnan = 0;
    while (nn->mnan < v->mai_count && v->mai_values[nn->mnan] == v->mai_values[nn->mnan])
        nn->mnan++;
    if (check_mai(r, j) != 0)
        return -1;

    /* Partition sizes, counted rather than derived: pids are the truth. */
    npi_unpack(v, pid8);
    memset(s->counts, 0, NPI_MAX_PARTITIONS * sizeof *s->counts);
    for (uint32_t i = 0; i < q->n; i++)
        s->counts[pid8[i]]++;
    for (uint32_t p = v->partitions; p < NPI_MAX_PARTITIONS; p++)
        if (s->counts[p])
            goto corrupt;
    if (s->counts[0] != v->mai_count)
        goto corrupt; /* a pid-0 input outside the MAI would never be visited */

    nn->nparts = 0;
    nn->gmin = INFINITY;
    nn->gmax = -INFINITY;
    for (uint32_t i = 0; i < nn->mnan; i++) {
        float x = v->mai_values[i];
        nn->gmin = x < nn->gmin ? x : nn->gmin;
        nn->gmax = x > nn->gmax ? x : nn->gmax;
    }
    for (uint32_t p = 1; p < v->partitions; p++) {
        if (!s->counts[p])
            continue;
        if (!(v->lower[p] <= v->upper[p])) {
            nn->gmin = nn->gmax = NAN;
        } else if (nn->gmin == nn->gmin) {
            nn->gmin = v->lower[p] < nn->gmin ? v->lower[p] : nn->gmin;
            nn->gmax = v->upper[p] > nn->gmax ? v->upper[p] : nn->gmax;
        }
        double key;
        if (q->kind == ENG_TOPK) {
            key = nn->neg ? -(double)v->lower[p] : (double)v->upper[p];
            if (key != key || !(v->lower[p] <= v->upper[p]))
                key = INFINITY; /* unknown: visit early, bound nothing */
        } else {
            key = box_distance(v->lower[p], v->upper[p], nn->t);
            if (key != key)
                key = 0.0;
        }
        nn->parts[nn->nparts++] = (nta_part){key, p, s->counts[p]};
    }
    qsort(nn->parts, nn->nparts, sizeof *nn->parts,
          q->kind == ENG_TOPK ? part_cmp_desc : part_cmp_asc);
    nn->pc = nn->pos = nn->found = 0;

    if (q->kind == ENG_TOPK) {
        nn->ml = 0;
    } else {
        /* first rank whose value is not >= t (NaN values are last) */
        uint32_t lo = 0, hi = v->mai_count;
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if ((double)v->mai_values[mid] >= nn->t)
                lo = mid + 1;
            else
                hi = mid;
        }
        nn->ml = nn->mr = lo;
    }
    return 0;
corrupt:
    seterr(r->err, r->errlen, "index of neuron %u is corrupt (partition ids)", q->neurons[j]);
    return -1;
}

/* Takes the next input from neuron nn's list into *id; returns 1, 0 when the
 * list is exhausted, -1 on an inconsistent index. */
static int nta_next(run *r, nta_neuron *nn, uint32_t *id)
{
    double key;
    switch (nta_head(r->q, nn, &key)) {
    case HEAD_NONE:
        return 0;
    case HEAD_LEFT:
        *id = r->q->kind == ENG_TOPK ? nn->v->mai_ids[mai_rank(nn, nn->ml++)] : nn->v->mai_ids[--nn->ml];
        return 1;
    case HEAD_RIGHT:
        *id = nn->v->mai_ids[nn->mr++];
        return 1;
    default:
        break;
    }
    /* Members of a partition: a scan of the partition ids, resumed where it
     * left off: memchr over unpacked ids, or the packed ids themselves
     * (no memory per neuron, whatever the group size). */
    nta_part *pt = &nn->parts[nn->pc];
    const npi_view *v = nn->v;
    uint32_t pos = nn->pos, n = v->n;
    if (nn->pid8) {
        const uint8_t *hit = pos < n ? memchr(nn->pid8 + pos, (int)pt->p, n - pos) : NULL;
        pos = hit ? (uint32_t)(hit - nn->pid8) : n;
    } else {
        while (pos < n && npi_pid(v, pos) != pt->p)
            pos++;
    }
    if (pos == n) {
        seterr(r->err, r->errlen, "index of neuron %u is corrupt (partition %u)",
               r->q->neurons[nn->j], pt->p);
        return -1;
    }
    *id = pos;
    nn->pos = pos + 1;
    if (++nn->found == pt->size) {
        nn->pc++;
        nn->pos = nn->found = 0;
    }
    return 1;
}

/* Cosine: an unseen input's x_j lies in [gmin, gmax] and at least the head
 * key from t_j, i.e. in up to two intervals; the set's shares (cos_acc) are
 * the worst of theirs. The excluded gap is narrowed by a few ulps: the key
 * was rounded. */
static double nta_threshold_cosine(const run *r, const nta_state *s)
{
    const eng_query *q = r->q;
    cos_acc c = {0, 0, 0, 0};
    for (size_t a = 0; a < s->nact; a++) {
        const nta_neuron *nn = &s->nn[a];
        double key;
        if (nta_head(q, nn, &key) == HEAD_NONE)
            return best_value(q);
        double t = nn->t, lo = (double)nn->gmin, hi = (double)nn->gmax, w = weight_of(q, nn->j);
        if (!(lo <= hi) || !isfinite(lo) || !isfinite(hi) || !isfinite(t) || !(key >= 0) || isinf(key))
            return best_value(q);
        double margin = 4.0 * DBL_EPSILON * (fabs(t) + key);
        double gl = t - key + margin, gh = t + key - margin; /* no unseen value strictly inside */
        double iv[2][2];
        int ni = 0;
        if (!(gl < gh)) {
            iv[ni][0] = lo, iv[ni++][1] = hi;
        } else {
            if (lo <= (gl < hi ? gl : hi))
                iv[ni][0] = lo, iv[ni][1] = gl < hi ? gl : hi, ni++;
            if ((gh > lo ? gh : lo) <= hi)
                iv[ni][0] = gh > lo ? gh : lo, iv[ni][1] = hi, ni++;
        }
        if (!ni)
            return best_value(q);
        cos_acc best = {-INFINITY, -INFINITY, INFINITY, -INFINITY};
        for (int i = 0; i < ni; i++) {
            cos_acc one = {0, 0, 0, 0};
            cos_add_range(&one, w, iv[i][0], iv[i][1], t);
            best.u = one.u > best.u ? one.u : best.u;
            best.a = one.a > best.a ? one.a : best.a;
            best.l = one.l < best.l ? one.l : best.l;
            best.m = one.m > best.m ? one.m : best.m;
        }
        c.u += best.u;
        c.a += best.a;
        c.l += best.l;
        c.m += best.m;
    }
    return cos_bound(q, &c, target_norm2(q));
}

/* Best score an input not yet seen could reach. */
static double nta_threshold(const run *r, const nta_state *s)
{
    const eng_query *q = r->q;
    if (is_cosine(q))
        return nta_threshold_cosine(r, s);
    int ck = combine_kind(q);
    double acc = combine_init(q);
    for (size_t a = 0; a < s->nact; a++) {
        double key;
        if (nta_head(q, &s->nn[a], &key) == HEAD_NONE)
            return best_value(q); /* never reached: an exhausted list ends the query */
        acc = combine(ck, acc, term_of(q, s->nn[a].j, s->nn[a].neg ? -key : key));
    }
    acc = finish_value(q, acc);
    return acc != acc ? best_value(q) : acc;
}

static int run_nta(run *r)
{
    const eng_query *q = r->q;
    nta_state s = {0};
    int rc = -1;
    double t0 = now_ms();

    size_t nact = 0;
    for (size_t j = 0; j < q->gsize; j++)
        nact += neuron_active(q, j);
    int all = nact == 0; /* every weight zero: every score ties, walk all lists */
    if (all)
        nact = q->gsize;

    s.nn = calloc(nact, sizeof *s.nn);
    s.parts = malloc(nact * NPI_MAX_PARTITIONS * sizeof *s.parts);
    s.seen = calloc(q->n, 1);
    s.counts = malloc(NPI_MAX_PARTITIONS * sizeof *s.counts);
    s.pid8 = malloc((size_t)q->n + 1);
    s.kept = calloc(nact, sizeof *s.kept);
    /* a round: the pending ones, a share per list, and the look-ahead that
     * fills the round's forwards (at most 32 forwards' worth of sorted
     * access, at most 16 forwards' worth left pending for the next round) */
    size_t look = r->geo ? 16 * (size_t)r->geo->slots : 0;
    s.capgath = (size_t)r->batch + nact + 3 * look;
    s.pending = look ? malloc(look * sizeof *s.pending) : NULL;
    s.order = look ? malloc(2 * s.capgath * sizeof *s.order) : NULL;
    s.gath = malloc(s.capgath * sizeof *s.gath);
    if (!s.nn || !s.parts || !s.seen || !s.counts || !s.pid8 || !s.kept || !s.gath) {
        seterr(r->err, r->errlen, "out of memory");
        goto done;
    }
    /* Every list is unpacked once to count its partitions; the unpacked ids
     * are kept (fast member scans) while they fit in the scratch budget. */
    size_t budget = q->scratch_budget ? q->scratch_budget : ENG_DEFAULT_SCRATCH;
    size_t used = 0;
    for (size_t j = 0, a = 0; j < q->gsize; j++) {
        if (!all && !neuron_active(q, j))
            continue;
        s.nn[a].parts = s.parts + a * NPI_MAX_PARTITIONS;
        if (used + q->n <= budget && (s.kept[a] = malloc((size_t)q->n + 1)) != NULL)
            used += q->n;
        if (nta_setup_neuron(r, &s, &s.nn[a], j, s.kept[a] ? s.kept[a] : s.pid8) != 0)
            goto done;
        s.nn[a].pid8 = s.kept[a];
        a++;
    }
    s.nact = nact;
    free(s.pid8);
    s.pid8 = NULL;
    r->st->cell_ms += now_ms() - t0;

    size_t share = (r->batch + nact - 1) / nact;
    size_t seen = 0;
    uint32_t lowest = 0; /* no candidate below it is unseen */
    if (look && (!s.pending || !s.order)) {
        seterr(r->err, r->errlen, "out of memory");
        goto done;
    }
    for (;;) {
        if (cancelled(q)) {
            seterr(r->err, r->errlen, "query cancelled");
            rc = -2;
            goto done;
        }
        /* Sorted access: each neuron advances until it contributed its share
         * of new candidates (inputs seen already cost no computation). */
        double tg = now_ms();
        int exhausted = 0;
        s.ngath = 0;
        for (size_t i = 0; i < s.npending; i++)
            s.gath[s.ngath++] = s.pending[i];
        s.npending = 0;
        for (size_t a = 0; a < nact && !exhausted; a++) {
            size_t want = share;
            while (want > 0) {
                uint32_t id;
                int got = nta_next(r, &s.nn[a], &id);
                if (got < 0)
                    goto done;
                if (got == 0) {
                    exhausted = 1;
                    break;
                }
                if (s.seen[id] || !is_candidate(q, id))
                    continue;
                s.seen[id] = 1;
                seen++;
                s.gath[s.ngath++] = id;
                want--;
            }
        }
        /* Whole forwards: more sorted access, round robin, into the slots
         * the round leaves free; what finds its class full waits for the
         * next round (seen, so it must be computed before any stop). */
        if (look && !exhausted && s.ngath) {
            fill f;
            fill_plan(&f, r->geo, s.gath, s.ngath);
            for (size_t step = 0, a = 0;
                 f.free_total > 0 && step < 2 * look && s.npending < look && s.ngath < s.capgath; step++) {
                uint32_t id;
                int got = nta_next(r, &s.nn[a], &id);
                if (got < 0)
                    goto done;
                if (got == 0) {
                    exhausted = 1;
                    break;
                }
                a = (a + 1) % nact;
                if (s.seen[id] || !is_candidate(q, id))
                    continue;
                s.seen[id] = 1;
                seen++;
                if (fill_take(&f, id))
                    s.gath[s.ngath++] = id;
                else
                    s.pending[s.npending++] = id;
            }
        }
        r->st->cell_ms += now_ms() - tg;
        r->st->rounds++;
        if ((rc = compute_forwards(r, s.gath, s.ngath, s.order)) != 0)
            goto done;
        rc = -1;
        /* An exhausted list means every input was visited through it. */
        if (exhausted || seen == r->ncand) {
            if (s.npending && (rc = compute_forwards(r, s.pending, s.npending, s.order)) != 0)
                goto done;
            rc = -1;
            break;
        }
        if (s.npending)
            continue;
        if (q->has_threshold && better(q, q->threshold, nta_threshold(r, &s)))
            break; /* nothing unseen can reach the bound from elsewhere */
        if (!eng_topk_full(r->h))
            continue;
        double worst = eng_topk_worst(r->h), thr = nta_threshold(r, &s);
        if (better(q, worst, thr))
            break;
        /* A tie with the threshold: an unseen input could only tie the k-th
         * too, and loses to it when its id is larger. */
        if (worst == thr) {
            while (lowest < q->n && (s.seen[lowest] || !is_candidate(q, lowest)))
                lowest++;
            if (lowest > r->h->e[0].input)
                break;
        }
    }
    rc = 0;
done:
    if (s.kept)
        for (size_t a = 0; a < nact; a++)
            free(s.kept[a]);
    free(s.kept);
    free(s.nn);
    free(s.parts);
    free(s.seen);
    free(s.counts);
    free(s.pid8);
    free(s.gath);
    free(s.pending);
    free(s.order);
    return rc;
}

/* ------------------------------------------------------------------ */
/* ENG_BOUNDS                                                           */

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* The candidates' order: smaller key first, then smaller id. A total order,
 * so the refined prefix is exactly the first candidates of the sorted whole,
 * and a tie of bound and k-th score can be settled by id (run_bounds). */
static inline int pair_lt(double ka, uint32_t a, double kb, uint32_t b)
{
    return (ka < kb) | ((ka == kb) & (a < b)); /* branch-free */
}

static inline int key_lt(const double *key, uint32_t a, uint32_t b)
{
    return pair_lt(key[a], a, key[b], b);
}

#define SORT_SMALL 24

/* Sorts a[0..n) in (key, id) order -- quicksort inlined on pair_lt, random
 * pivots (median of three), branch-free partition, insertion sort below
 * SORT_SMALL. qsort_r's callback per comparison was a sixth of a cached
 * query. (key, id) is a strict order on distinct ids, so a 2-way partition
 * around one element is enough (a repeat, as in a sample, just goes right).
 * Keys are never NaN here. */
static void sort_by_key(uint32_t *a, size_t n, const double *key, uint64_t *rng)
{
    while (n > SORT_SMALL) {
        size_t pi[3] = {xorshift(rng) % n, xorshift(rng) % n, xorshift(rng) % n};
        for (int s = 0; s < 2; s++) /* the median of three to pi[1] */
            for (int t = 0; t < 2 - s; t++)
                if (pair_lt(key[a[pi[t + 1]]], a[pi[t + 1]], key[a[pi[t]]], a[pi[t]])) {
                    size_t u = pi[t];
                    pi[t] = pi[t + 1];
                    pi[t + 1] = u;
                }
        uint32_t pv = a[pi[1]];
        a[pi[1]] = a[n - 1];
        a[n - 1] = pv;
        double pk = key[pv];
        size_t lt = 0;
        /* a[0..lt) < pv <= a[lt..i): swapping a[i] with a[lt] keeps that
         * whether or not a[i] goes left, so no branch */
        for (size_t i = 0; i + 1 < n; i++) {
            uint32_t v = a[i];
            int c = pair_lt(key[v], v, pk, pv);
            a[i] = a[lt];
            a[lt] = v;
            lt += (size_t)c;
        }
        a[n - 1] = a[lt];
        a[lt] = pv;
        /* recurse into the smaller side: the stack stays O(log n) */
        if (lt < n - 1 - lt) {
            sort_by_key(a, lt, key, rng);
            a += lt + 1;
            n -= lt + 1;
        } else {
            sort_by_key(a + lt + 1, n - 1 - lt, key, rng);
            n = lt;
        }
    }
    for (size_t i = 1; i < n; i++) {
        uint32_t v = a[i];
        double kv = key[v];
        size_t j = i;
        for (; j > 0 && pair_lt(kv, v, key[a[j - 1]], a[j - 1]); j--)
            a[j] = a[j - 1];
        a[j] = v;
    }
}

#define SELECT_SAMPLE 512

/* Moves the kk smallest of a[0..len) in (key, id) order to the front (any
 * order). When kk is a small part of len, a pivot a little past the kk-th
 * smallest of a random sample cuts the range down in one pass with
 * predictable branches; otherwise quickselect. Ties of key (common with ReLU
 * zeros) are split by id, so they stay linear too. */
static void select_smallest(uint32_t *a, size_t len, size_t kk, const double *key, uint64_t *rng)
{
    uint32_t sample[SELECT_SAMPLE];
    while (kk > 0 && kk < len) {
        if (len >= 8 * SELECT_SAMPLE && kk * 16 < len) {
            for (size_t i = 0; i < SELECT_SAMPLE; i++)
                sample[i] = a[xorshift(rng) % len];
            size_t r = (size_t)((double)SELECT_SAMPLE * (double)kk / (double)len * 2.0) + 4;
            r = r < SELECT_SAMPLE ? r : SELECT_SAMPLE - 1;
            /* the sample's r-th: its r + 1 smallest to the front (the
             * quickselect below: the sample is too short for this branch),
             * then their largest -- not a sort of the sample, which cost as
             * much as the pass over a */
            select_smallest(sample, SELECT_SAMPLE, r + 1, key, rng);
            uint32_t pv = sample[0];
            for (size_t i = 1; i <= r; i++)
                if (key_lt(key, pv, sample[i]))
                    pv = sample[i];
            size_t j = 0;
            for (size_t i = 0; i < len; i++)
                if (!key_lt(key, pv, a[i])) {
                    uint32_t t = a[j];
                    a[j++] = a[i];
                    a[i] = t;
                }
            if (j < len) { /* else the sample misled: quickselect */
                if (j >= kk) {
                    len = j;
                } else { /* all of a[0..j) are among the kk smallest */
                    a += j;
                    kk -= j;
                    len -= j;
                }
                continue;
            }
        }
        uint32_t pv = a[xorshift(rng) % len];
        size_t lt = 0, i = 0, gt = len;
        while (i < gt) {
            if (key_lt(key, a[i], pv)) {
                uint32_t t = a[lt];
                a[lt++] = a[i];
                a[i++] = t;
            } else if (key_lt(key, pv, a[i])) {
                uint32_t t = a[--gt];
                a[gt] = a[i];
                a[i] = t;
            } else {
                i++;
            }
        }
        if (kk <= lt) {
            len = lt;
        } else if (kk <= gt) {
            return;
        } else {
            a += gt;
            kk -= gt;
            len -= gt;
        }
    }
}


/* Accumulates neuron j's term into bound[id] for every candidate. */
#define BOUNDS_LOOP(PID, COMBINE)                                                    \
    for (size_t c = 0; c < ncand; c++) {                                             \
        uint32_t id = order[c];                                                      \
        uint32_t p = (PID);                                                          \
        double t = p ? tab[p] : term_of(q, j, exact_value(q, j, maival[id]));       \
        bound[id] = COMBINE;                                                         \
    }

static int load_mai(run *r, size_t j, float *maival)
{
    const npi_view *v = &r->idx[j];
    for (uint32_t i = 0; i < v->mai_count; i++) {
        if (v->mai_ids[i] >= r->q->n) {
            seterr(r->err, r->errlen, "index of neuron %u is corrupt (MAI id)", r->q->neurons[j]);
            return -1;
        }
        maival[v->mai_ids[i]] = v->mai_values[i];
    }
    return 0;
}

static void clear_mai(const npi_view *v, float *maival)
{
    for (uint32_t i = 0; i < v->mai_count; i++)
        maival[v->mai_ids[i]] = NAN;
}

/* Neuron j's cosine share for x_j in [lo, hi]; NaN when unknown. */
static cos_acc cos_share(double w, float lo, float hi, double t)
{
    cos_acc c = {0, 0, 0, 0};
    if (!(lo <= hi) || !isfinite(lo) || !isfinite(hi)) {
        c.u = NAN;
        return c;
    }
    cos_add_range(&c, w, (double)lo, (double)hi, t);
    return c;
}

/* cell_bounds for the cosine metric: per candidate, the sums of its cell's
 * shares (cos_acc), then cos_bound. */
static int cell_bounds_cosine(run *r, const uint32_t *order, size_t ncand, double *bound, float *maival,
                              uint8_t *pid8)
{
    const eng_query *q = r->q;
    cos_acc *acc = calloc(q->n ? q->n : 1, sizeof *acc);
    if (!acc) {
        seterr(r->err, r->errlen, "out of memory");
        return -1;
    }
    for (size_t j = 0; j < q->gsize; j++) {
        if (!neuron_active(q, j))
            continue;
        const npi_view *v = &r->idx[j];
        double w = weight_of(q, j), tj = (double)q->target[j];
        cos_acc tab[NPI_MAX_PARTITIONS];
        for (uint32_t p = 0; p < NPI_MAX_PARTITIONS; p++)
            tab[p] = p > 0 && p < v->partitions ? cos_share(w, v->lower[p], v->upper[p], tj)
                                                : (cos_acc){NAN, 0, 0, 0};
        if (load_mai(r, j, maival) != 0) {
            free(acc);
            return -1;
        }
        if (pid8)
            npi_unpack(v, pid8);
        for (size_t c = 0; c < ncand; c++) {
            uint32_t id = order[c];
            uint32_t p = pid8 ? pid8[id] : npi_pid(v, id);
            cos_acc t = p ? tab[p] : cos_share(w, maival[id], maival[id], tj);
            acc[id].u += t.u;
            acc[id].a += t.a;
            acc[id].l += t.l;
            acc[id].m += t.m;
        }
        clear_mai(v, maival);
    }
    double nt2 = target_norm2(q);
    for (size_t c = 0; c < ncand; c++)
        bound[order[c]] = cos_bound(q, &acc[order[c]], nt2);
    free(acc);
    return 0;
}

/* Cells that are points. An input whose every group neuron's value the index
 * holds exactly -- an MAI value, or a partition whose bounds are equal (the
 * bounds enclose every member, so each member has that value: a ReLU's zeros)
 * -- has a score known without a forward. Not [-inf, -inf]: a partition
 * holding a NaN has lower = -inf (npi.h), and a NaN scores the worst. exact_neuron folds neuron j into
 * es[id] the way eng_score does (same term, same combination, group order),
 * so the score is the one a forward would give (rule 1). It walks only the
 * inputs still known, kl[0..*nk), and drops from it those whose value the
 * index does not hold exactly: after a few neurons few are left, and the
 * walk costs next to nothing. NaN values are never known. */
static void exact_neuron(const eng_query *q, size_t j, const npi_view *v, uint32_t *kl, size_t *nk,
                         const uint8_t *pid8, const float *maival, double *es)
{
    int ck = combine_kind(q);
    float point[NPI_MAX_PARTITIONS]; /* the value of a point partition, NaN otherwise */
    for (uint32_t p = 0; p < NPI_MAX_PARTITIONS; p++)
        point[p] = p > 0 && p < v->partitions && v->lower[p] == v->upper[p] && v->lower[p] != -INFINITY
                       ? v->lower[p] : NAN;
    size_t keep = 0;
    for (size_t c = 0; c < *nk; c++) {
        uint32_t id = kl[c];
        uint32_t p = pid8 ? pid8[id] : npi_pid(v, id);
        float x = p == 0 ? maival[id] : point[p];
        /* branch-free: half the inputs may drop out, at random; a dropped
         * input's es is never read again */
        double t = q->kind == ENG_KNN ? fabs((double)x - (double)q->target[j]) : (double)x;
        es[id] = combine(ck, es[id], term_of(q, j, t));
        kl[keep] = id;
        keep += x == x;
    }
    *nk = keep;
}

/* Neuron j's bound term per partition id (NaN: pid 0, the MAI, and ids
 * past P -- unknown). */
static void bound_table(const eng_query *q, size_t j, const npi_view *v, double *tab)
{
    double tj = q->kind == ENG_KNN ? (double)q->target[j] : 0.0;
    uint32_t P = v->partitions < NPI_MAX_PARTITIONS ? v->partitions : NPI_MAX_PARTITIONS;
    tab[0] = term_of(q, j, NAN);
    for (uint32_t p = 1; p < P; p++) {
        double b;
        if (q->kind == ENG_TOPK) /* the end that bounds w*x from above */
            b = v->lower[p] <= v->upper[p] ? (double)(neg_weight(q, j) ? v->lower[p] : v->upper[p]) : NAN;
        else
            b = box_distance(v->lower[p], v->upper[p], tj);
        tab[p] = term_of(q, j, b);
    }
    /* ids no partition has (a corrupt entry's): a NaN term, as term_of(NaN)
     * -- per query this loop was 256 terms a neuron, 0.08 ms for 30 x 2 */
    for (uint32_t p = P > 1 ? P : 1; p < NPI_MAX_PARTITIONS; p++)
        tab[p] = tab[0];
}

/* Dense cell bounds in blocks of CB_BLOCK inputs, whose bounds (16 KiB) stay
 * in L1 while every group neuron's packed partition ids are decoded and folded
 * into them in one loop: no unpacked copy of a neuron's N ids, no id list, a
 * bound loaded and stored once per block and neuron instead of from L2 (the
 * per-neuron pass spent ~4 ns an input and neuron on that: 8 ms for 30
 * neurons over 70,000 inputs). Per input the terms are the same and combined
 * in group order, so every bound and exact score is cell_bounds' own, bit for
 * bit. Every input of a block is computed, candidate or not: taken when
 * nearly all are candidates. Neurons go in chunks of CB_CHUNK so that their
 * tables stay small whatever the group. */
#define CB_BLOCK 2048u
#define CB_CHUNK 32u
#define CB_THREAD_MIN 200000.0 /* inputs x neurons below which one thread does it (~0.2 ms) */
/* likewise for the coarse pass (~0.1 ms there), whose helpers eng_warm
 * has woken before: below, their wake-up and spin cost more than they take */
#define CC_THREAD_MIN 400000.0

int eng_threads(int n)
{
    return eng_pool_start(n < 1 ? 1 : n);
}

void eng_warm(uint32_t n, size_t gsize)
{
    if ((double)n * (double)gsize >= CC_THREAD_MIN)
        eng_pool_warm();
}

/* Threads for a pass of n x gsize cells over nblocks blocks: the pool's
 * when it has at least `min` cells, at most one a block. */
static int pass_workers(uint32_t n, size_t gsize, double min, uint32_t nblocks)
{
    int nw = (double)n * (double)gsize >= min ? eng_pool_threads() : 1;
    return nw > (int)nblocks ? ((int)nblocks > 0 ? (int)nblocks : 1) : nw;
}

typedef struct cb_neuron {
    const npi_view *v;
    size_t j;
    double tab0[NPI_MAX_PARTITIONS]; /* bound term per partition id (bound_table); [0]: combine's identity */
    uint64_t pmask;                  /* P <= 64: bit p set for the MAI (0) and the point partitions */
    const uint32_t *moff;            /* [nblocks + 1]: block b's MAI entries are [moff[b], moff[b+1]) */
    const uint16_t *mpos;            /* of mpos/mval: position in the block, value */
    const float *mval;
} cb_neuron;

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
/* acc[i] += tab[pid of input base + i] for i < len, decoding v's packed ids
 * itself (8 ids of B bits are B bytes: one load, shifted apart in 64-bit
 * lanes) and gathering their terms, 8 inputs a step: the same IEEE double
 * additions as the scalar loop, lane by lane, so the same bits. base is a
 * multiple of 8. Returns how many of the ids are 0. */
__attribute__((target("avx2,popcnt"))) static uint32_t cb_fold_sum_avx2(double *acc, const npi_view *v, uint32_t base,
                                                                      uint32_t len, const double *tab, uint8_t *eb,
                                                                      uint64_t pmask)
{
    const uint32_t B = v->bits;
    const size_t first = (size_t)(base >> 3) * B, nbytes = ((size_t)v->n * B + 7) / 8;
    size_t groups = len / 8, fit = nbytes >= first + 8 ? (nbytes - first - 8) / B + 1 : 0;
    if (groups > fit)
        groups = fit;
    const uint8_t *src = v->pids + first;
    const __m256i sh0 = _mm256_setr_epi64x(0, B, 2 * B, 3 * B), sh1 = _mm256_setr_epi64x(4 * B, 5 * B, 6 * B, 7 * B);
    const __m256i mask = _mm256_set1_epi64x((1 << B) - 1), zero = _mm256_setzero_si256();
    const __m256i pm = _mm256_set1_epi64x((long long)pmask);
    uint32_t zeros = 0;
    double *a = acc;
    for (size_t g = 0; g < groups; g++, src += B, a += 8) {
        uint64_t w;
        memcpy(&w, src, 8);
        __m256i x = _mm256_set1_epi64x((long long)w);
        __m256i i0 = _mm256_and_si256(_mm256_srlv_epi64(x, sh0), mask);
        __m256i i1 = _mm256_and_si256(_mm256_srlv_epi64(x, sh1), mask);
        __m256d t0 = _mm256_i64gather_pd(tab, i0, 8);
        __m256d t1 = _mm256_i64gather_pd(tab, i1, 8);
        _mm256_storeu_pd(a, _mm256_add_pd(_mm256_loadu_pd(a), t0));
        _mm256_storeu_pd(a + 4, _mm256_add_pd(_mm256_loadu_pd(a + 4), t1));
        unsigned z = (unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(i0, zero))) |
                     (unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64(i1, zero))) << 4;
        zeros += (uint32_t)__builtin_popcount(z);
        if (eb) { /* bit p of pmask per lane, to the sign bit */
            __m256i e0 = _mm256_slli_epi64(_mm256_srlv_epi64(pm, i0), 63);
            __m256i e1 = _mm256_slli_epi64(_mm256_srlv_epi64(pm, i1), 63);
            eb[g] &= (uint8_t)((unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(e0)) |
                               (unsigned)_mm256_movemask_pd(_mm256_castsi256_pd(e1)) << 4);
        }
    }
    for (uint32_t i = (uint32_t)groups * 8; i < len; i++) {
        uint32_t p = npi_pid(v, base + i);
        acc[i] += tab[p];
        zeros += p == 0;
        if (eb && !((pmask >> p) & 1))
            eb[i >> 3] &= (uint8_t)~(1u << (i & 7));
    }
    return zeros;
}

/* The same with AVX-512 and P <= 64 (6-bit ids): the 64 terms sit in eight
 * registers and each lane picks its own by permutes and blends, no loads;
 * on the 2-vCPU VM gathers were the pass's bottleneck (two threads did not
 * speed it up). */
__attribute__((target("avx512f,popcnt"))) static uint32_t cb_fold_sum_avx512(double *acc, const npi_view *v,
                                                                           uint32_t base, uint32_t len,
                                                                           const double *tab, uint8_t *eb,
                                                                           uint64_t pmask)
{
    const uint32_t B = v->bits;
    const size_t first = (size_t)(base >> 3) * B, nbytes = ((size_t)v->n * B + 7) / 8;
    size_t groups = len / 8, fit = nbytes >= first + 8 ? (nbytes - first - 8) / B + 1 : 0;
    if (groups > fit)
        groups = fit;
    const uint8_t *src = v->pids + first;
    __m512d T0 = _mm512_loadu_pd(tab), T1 = _mm512_loadu_pd(tab + 8), T2 = _mm512_loadu_pd(tab + 16),
            T3 = _mm512_loadu_pd(tab + 24), T4 = _mm512_loadu_pd(tab + 32), T5 = _mm512_loadu_pd(tab + 40),
            T6 = _mm512_loadu_pd(tab + 48), T7 = _mm512_loadu_pd(tab + 56);
    const __m512i sh = _mm512_setr_epi64(0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B);
    const __m512i mask = _mm512_set1_epi64((1 << B) - 1), b4 = _mm512_set1_epi64(16), b5 = _mm512_set1_epi64(32);
    const __m512i pm = _mm512_set1_epi64((long long)pmask), one = _mm512_set1_epi64(1);
    uint32_t zeros = 0;
    double *a = acc;
    for (size_t g = 0; g < groups; g++, src += B, a += 8) {
        uint64_t w;
        memcpy(&w, src, 8);
        __m512i idx = _mm512_and_si512(_mm512_srlv_epi64(_mm512_set1_epi64((long long)w), sh), mask);
        __m512d t01 = _mm512_permutex2var_pd(T0, idx, T1), t23 = _mm512_permutex2var_pd(T2, idx, T3);
        __m512d t45 = _mm512_permutex2var_pd(T4, idx, T5), t67 = _mm512_permutex2var_pd(T6, idx, T7);
        __mmask8 m4 = _mm512_test_epi64_mask(idx, b4), m5 = _mm512_test_epi64_mask(idx, b5);
        __m512d t = _mm512_mask_blend_pd(m5, _mm512_mask_blend_pd(m4, t01, t23), _mm512_mask_blend_pd(m4, t45, t67));
        _mm512_storeu_pd(a, _mm512_add_pd(_mm512_loadu_pd(a), t));
        zeros += (uint32_t)__builtin_popcount((unsigned)_mm512_testn_epi64_mask(idx, idx));
        if (eb)
            eb[g] &= (uint8_t)_mm512_test_epi64_mask(_mm512_srlv_epi64(pm, idx), one);
    }
    for (uint32_t i = (uint32_t)groups * 8; i < len; i++) {
        uint32_t p = npi_pid(v, base + i);
        acc[i] += tab[p];
        zeros += p == 0;
        if (eb && !((pmask >> p) & 1))
            eb[i >> 3] &= (uint8_t)~(1u << (i & 7));
    }
    return zeros;
}

static int simd_level = 3; /* eng_simd() */

/* 0: portable loops, 1: AVX2, 2: AVX-512 for P <= 64 as well, 3: and the
 * coarse pass decodes ids with VBMI's byte permutes */
static int cb_simd(void)
{
    static int have = -1;
    if (have < 0)
        have = !__builtin_cpu_supports("avx512f")  ? (__builtin_cpu_supports("avx2") ? 1 : 0)
               : __builtin_cpu_supports("avx512vbmi") ? 3
                                                      : 2;
    return have < simd_level ? have : simd_level;
}
#else
static uint32_t cb_fold_sum_avx2(double *acc, const npi_view *v, uint32_t base, uint32_t len, const double *tab,
                                 uint8_t *eb, uint64_t pmask)
{
    (void)acc, (void)v, (void)base, (void)len, (void)tab, (void)eb, (void)pmask;
    return 0;
}
#define cb_fold_sum_avx512 cb_fold_sum_avx2
static int simd_level = 3;
static int cb_simd(void) { return 0; }
#endif

int eng_simd(int level)
{
    simd_level = level < 0 ? 0 : level > 3 ? 3 : level;
    return cb_simd();
}

/* Folds neuron cn's terms into acc[0..len), the bounds of inputs base..
 * whose partition ids are pb[0..len): a branch-free loop with the MAI's
 * partition 0 as combine's identity, then its MAI values (mv[], NaN where
 * none) into the inputs of partition 0, as cell_bounds' p == 0 case does. An
 * input of partition 0 that the MAI does not hold (a corrupt index) gets NaN
 * there too. hit[len] is zeroed scratch, left zeroed. */
static void cb_fold(double *acc, const cb_neuron *cn, const eng_query *q, const uint8_t *pb, uint32_t base,
                    uint32_t len, const float *mv, uint32_t b, uint8_t *hit, int ck, int fast, uint8_t *eb)
{
    const double *tab = cn->tab0;
    uint32_t zeros = 0, fixed = 0;
#define CB_PID(pos) (pb ? (uint32_t)pb[pos] : npi_pid(cn->v, base + (pos)))
    if (fast >= 2 && cn->v->bits <= 6) {
        zeros = cb_fold_sum_avx512(acc, cn->v, base, len, tab, eb, cn->pmask);
    } else if (fast) {
        zeros = cb_fold_sum_avx2(acc, cn->v, base, len, tab, eb, cn->pmask);
    } else if (ck == CMB_SUM) {
        for (uint32_t i = 0; i < len; i++) {
            uint32_t p = pb[i];
            acc[i] += tab[p];
            zeros += p == 0;
        }
    } else {
        for (uint32_t i = 0; i < len; i++) {
            uint32_t p = pb[i];
            acc[i] = combine(ck, acc[i], tab[p]);
            zeros += p == 0;
        }
    }
    for (uint32_t e = cn->moff[b]; e < cn->moff[b + 1]; e++) {
        uint32_t pos = cn->mpos[e];
        if (CB_PID(pos) == 0 && !hit[pos]) {
            acc[pos] = combine(ck, acc[pos], term_of(q, cn->j, exact_value(q, cn->j, mv[pos])));
            hit[pos] = 1;
            fixed++;
        }
    }
    if (fixed != zeros)
        for (uint32_t i = 0; i < len; i++)
            if (CB_PID(i) == 0 && !hit[i])
                acc[i] = NAN;
    for (uint32_t e = cn->moff[b]; e < cn->moff[b + 1]; e++)
        hit[cn->mpos[e]] = 0;
}

static int u32_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Scores the index-held candidates kl[0..nk) (ascending; reordered): a
 * known input's bound is its score (the same terms; at most a zero's sign
 * differs), so only the k best by (bound, id) can be in the answer and only
 * those are scored, in group order by exact_neuron (which drops any whose
 * partition 0 the MAI does not hold exactly), into es[] and known[].
 * maival[n] all NaN (left so). */
static int score_known(run *r, uint32_t *kl, size_t nk, float *maival, const double *bound, double *es,
                       uint8_t *known)
{
    const eng_query *q = r->q;
    if (nk > q->k) {
        uint64_t rng = 0x853c49e6748fea9bull;
        select_smallest(kl, nk, q->k, bound, &rng);
        nk = q->k;
        qsort(kl, nk, sizeof *kl, u32_cmp); /* ascending: es streams */
    }
    double init = combine_init(q);
    for (size_t c = 0; c < nk; c++)
        es[kl[c]] = init;
    for (size_t j = 0; j < q->gsize && nk; j++) {
        if (load_mai(r, j, maival) != 0)
            return -1;
        exact_neuron(q, j, &r->idx[j], kl, &nk, NULL, maival, es);
        clear_mai(&r->idx[j], maival);
    }
    for (size_t c = 0; c < nk; c++) {
        uint32_t id = kl[c];
        double sc = finish_value(q, es[id]);
        es[id] = sc != sc ? worst_value(q) : sc;
        known[id] = 1;
    }
    return 0;
}

/* The known scores of cell_bounds_blocked (exact_neuron's, the same terms in
 * group order): which candidates are known does not depend on the order of
 * the neurons, so they are first filtered neuron by neuron, the one with the
 * fewest exact values first (its MAI alone when it has no point partition:
 * then no pass at all), which usually leaves none after a neuron or two; the
 * few left go to score_known. maival[n] all NaN (left so), pid8[n+1] scratch. */
static int cb_known(run *r, const uint32_t *order, size_t ncand, float *maival, uint8_t *pid8, const double *bound,
                    double *es, uint8_t *known)
{
    const eng_query *q = r->q;
    size_t best = 0, best_points = (size_t)-1;
    for (size_t j = 0; j < q->gsize; j++) { /* the neuron with the fewest point partitions */
        const npi_view *v = &r->idx[j];
        size_t points = 0;
        for (uint32_t p = 1; p < v->partitions; p++)
            points += v->lower[p] == v->upper[p] && v->lower[p] != -INFINITY;
        if (points < best_points) {
            best_points = points;
            best = j;
        }
    }
    uint32_t *kl = malloc((ncand ? ncand : 1) * sizeof *kl);
    if (!kl) {
        seterr(r->err, r->errlen, "out of memory");
        return -1;
    }
    size_t nk = 0;
    const npi_view *v0 = &r->idx[best];
    if (load_mai(r, best, maival) != 0) {
        free(kl);
        return -1;
    }
    if (best_points == 0) { /* only its MAI inputs can be known */
        for (uint32_t i = 0; i < v0->mai_count; i++) {
            uint32_t id = v0->mai_ids[i];
            if (is_candidate(q, id) && npi_pid(v0, id) == 0 && maival[id] == maival[id])
                kl[nk++] = id;
        }
        clear_mai(v0, maival);
        /* ascending, duplicates once (bounds stream; a corrupt MAI may repeat an id) */
        qsort(kl, nk, sizeof *kl, u32_cmp);
        size_t u = 0;
        for (size_t c = 0; c < nk; c++)
            if (u == 0 || kl[u - 1] != kl[c])
                kl[u++] = kl[c];
        nk = u;
    } else {
        float point[NPI_MAX_PARTITIONS];
        for (uint32_t p = 0; p < NPI_MAX_PARTITIONS; p++)
            point[p] = p > 0 && p < v0->partitions && v0->lower[p] == v0->upper[p] && v0->lower[p] != -INFINITY
                           ? v0->lower[p] : NAN;
        npi_unpack(v0, pid8);
        for (size_t c = 0; c < ncand; c++) {
            uint32_t id = order[c], p = pid8[id];
            float x = p == 0 ? maival[id] : point[p];
            kl[nk] = id;
            nk += x == x;
        }
        clear_mai(v0, maival);
    }
    /* the others filter what is left */
    for (size_t j = 0; j < q->gsize && nk; j++) {
        if (j == best)
            continue;
        const npi_view *v = &r->idx[j];
        if (load_mai(r, j, maival) != 0) {
            free(kl);
            return -1;
        }
        size_t keep = 0;
        for (size_t c = 0; c < nk; c++) {
            uint32_t id = kl[c], p = npi_pid(v, id);
            float x = p == 0 ? maival[id]
                   : p < v->partitions && v->lower[p] == v->upper[p] && v->lower[p] != -INFINITY ? v->lower[p]
                                                                                               : NAN;
            kl[keep] = id;
            keep += x == x;
        }
        nk = keep;
        clear_mai(v, maival);
    }
    int rc = score_known(r, kl, nk, maival, bound, es, known);
    free(kl);
    return rc;
}

/* One worker's share of a cell_bounds_blocked pass over one chunk of
 * neurons (blocks handed out by eng_pool_run), with its own scratch. */
typedef struct cb_work {
    run *r;
    const cb_neuron *cn;
    size_t nactive;
    int first;          /* the first chunk: bounds start at init */
    int last;           /* the last chunk: bounds are finished (keys, smaller is better) */
    double *bound;
    uint8_t *eb;
    double init;
    int ck, fast;
    double *acc;        /* [CB_BLOCK] */
    float *mv;          /* [CB_BLOCK], NaN between uses */
    uint8_t *pb, *hit;  /* [CB_BLOCK] */
} cb_work;

static void cb_block(void *ctx, int worker, uint32_t b)
{
    cb_work *w = (cb_work *)ctx + worker;
    const eng_query *q = w->r->q;
    const uint32_t n = q->n;
    double *acc = w->acc;
    uint32_t base = b * CB_BLOCK, len = n - base < CB_BLOCK ? n - base : CB_BLOCK;
    if (w->first)
        for (uint32_t i = 0; i < len; i++)
            acc[i] = w->init;
    else if (w->nactive || w->last)
        memcpy(acc, w->bound + base, len * sizeof *acc);
    else
        return;
    for (size_t c = 0; c < w->nactive; c++) {
        const cb_neuron *x = &w->cn[c];
        for (uint32_t e = x->moff[b]; e < x->moff[b + 1]; e++)
            w->mv[x->mpos[e]] = x->mval[e];
        if (!w->fast)
            npi_unpack_range(x->v, base, len, w->pb);
        cb_fold(acc, x, q, w->fast ? NULL : w->pb, base, len, w->mv, b, w->hit, w->ck, w->fast,
                w->eb ? w->eb + base / 8 : NULL);
        for (uint32_t e = x->moff[b]; e < x->moff[b + 1]; e++)
            w->mv[x->mpos[e]] = NAN;
    }
    if (w->last) /* cell_bounds' finish, here where the block is hot */
        for (uint32_t i = 0; i < len; i++) {
            double v = finish_value(q, acc[i]);
            if (v != v) {
                v = best_value(q);
                if (w->eb) /* not known, whatever its partitions */
                    w->eb[(base + i) >> 3] &= (uint8_t)~(1u << ((base + i) & 7));
            }
            acc[i] = q->kind == ENG_TOPK ? -v : v;
        }
    memcpy(w->bound + base, acc, len * sizeof *acc);
}

/* The known scores when the fold marked eb: the candidates whose bit is
 * still set (every value exact, or in partition 0; bounds that came out NaN
 * were unmarked), by score_known (a ReLU layer's zeros make tens of
 * thousands known; scoring and pushing them all cost more than the query). */
static int cb_known_marked(run *r, const uint32_t *order, size_t ncand, float *maival, const uint8_t *eb,
                           const double *bound, double *es, uint8_t *known)
{
    size_t nk = 0;
    uint32_t *kl = malloc((ncand ? ncand : 1) * sizeof *kl);
    if (!kl) {
        seterr(r->err, r->errlen, "out of memory");
        return -1;
    }
    for (size_t c = 0; c < ncand; c++) { /* branch-free: the marks fall at random */
        kl[nk] = order[c];
        nk += (eb[order[c] >> 3] >> (order[c] & 7)) & 1;
    }
    if (!nk) {
        free(kl);
        return 0;
    }
    int rc = score_known(r, kl, nk, maival, bound, es, known);
    free(kl);
    return rc;
}

/* x's MAI entries by block of CB_BLOCK inputs (a counting sort: rank order
 * within one) into off[nblocks + 1] (block b's entries are [off[b],
 * off[b+1])), pos and val (mai_count each). -1 when an MAI id is past n. */
static int mai_by_block(run *r, cb_neuron *x, uint32_t nblocks, uint32_t *off, uint16_t *pos, float *val)
{
    const npi_view *v = x->v;
    memset(off, 0, (nblocks + 1) * sizeof *off);
    for (uint32_t i = 0; i < v->mai_count; i++) {
        if (v->mai_ids[i] >= r->q->n) {
            seterr(r->err, r->errlen, "index of neuron %u is corrupt (MAI id)", r->q->neurons[x->j]);
            return -1;
        }
        off[v->mai_ids[i] / CB_BLOCK + 1]++;
    }
    for (uint32_t b = 0; b < nblocks; b++)
        off[b + 1] += off[b];
    for (uint32_t i = 0; i < v->mai_count; i++) {
        uint32_t id = v->mai_ids[i], b = id / CB_BLOCK, at = off[b]++;
        pos[at] = (uint16_t)(id - b * CB_BLOCK);
        val[at] = v->mai_values[i];
    }
    for (uint32_t b = nblocks; b > 0; b--) /* back to block starts */
        off[b] = off[b - 1];
    off[0] = 0;
    x->moff = off;
    x->mpos = pos;
    x->mval = val;
    return 0;
}

static int cell_bounds_blocked(run *r, const uint32_t *order, size_t ncand, double *bound, float *maival,
                               uint8_t *pid8, double *es, uint8_t *known)
{
    const eng_query *q = r->q;
    const uint32_t n = q->n, nblocks = (n + CB_BLOCK - 1) / CB_BLOCK;
    const int ck = combine_kind(q);
    const double init = combine_init(q);
    const int fast = ck == CMB_SUM ? cb_simd() : 0;
    int rc = -1;
    size_t chunk = q->gsize < CB_CHUNK ? q->gsize : CB_CHUNK;
    size_t mmax = 0; /* the most MAI entries of a chunk */
    for (size_t j0 = 0; j0 < q->gsize; j0 += CB_CHUNK) {
        size_t s = 0;
        for (size_t j = j0; j < q->gsize && j < j0 + CB_CHUNK; j++)
            s += r->idx[j].mai_count;
        mmax = s > mmax ? s : mmax;
    }
    cb_neuron *cn = malloc(chunk * sizeof *cn);
    uint32_t *moff = malloc(chunk * (nblocks + 1) * sizeof *moff);
    uint16_t *mpos = malloc((mmax ? mmax : 1) * sizeof *mpos);
    float *mval = malloc((mmax ? mmax : 1) * sizeof *mval);
    int nw = pass_workers(n, q->gsize, CB_THREAD_MIN, nblocks);
    cb_work *work = calloc((size_t)nw, sizeof *work);
    int scratch_ok = work != NULL;
    for (int t = 0; scratch_ok && t < nw; t++) {
        cb_work *w = &work[t];
        w->r = r;
        w->bound = bound;
        w->init = init;
        w->ck = ck;
        w->fast = fast;
        w->acc = malloc(CB_BLOCK * sizeof *w->acc);
        w->mv = malloc(CB_BLOCK * sizeof *w->mv);
        w->pb = malloc(CB_BLOCK);
        w->hit = calloc(CB_BLOCK, 1);
        scratch_ok = w->acc && w->mv && w->pb && w->hit;
        for (uint32_t i = 0; scratch_ok && i < CB_BLOCK; i++)
            w->mv[i] = NAN;
    }
    /* The AVX2 sum also marks, per input, whether every neuron's value so
     * far is exact (partition 0 or a point: eb, a bit an input), so that the
     * known scores need no pass of their own: with every neuron active and
     * at most 64 partitions. */
    int bits_ok = known && fast;
    for (size_t j = 0; j < q->gsize && bits_ok; j++)
        bits_ok = neuron_active(q, j) && r->idx[j].partitions <= 64;
    uint8_t *eb = bits_ok ? malloc(n / 8 + 1) : NULL;
    if (!cn || !moff || !mpos || !mval || !scratch_ok || (bits_ok && !eb)) {
        seterr(r->err, r->errlen, "out of memory");
        goto done;
    }
    if (eb)
        memset(eb, 0xff, n / 8 + 1);
    for (int t = 0; t < nw; t++)
        work[t].eb = eb;
    for (size_t j0 = 0; j0 < q->gsize; j0 += CB_CHUNK) {
        size_t nc = q->gsize - j0 < CB_CHUNK ? q->gsize - j0 : CB_CHUNK, mused = 0, nactive = 0;
        for (size_t c = 0; c < nc; c++) {
            cb_neuron *x = &cn[nactive];
            const npi_view *v = &r->idx[j0 + c];
            if (!neuron_active(q, j0 + c))
                continue; /* no bound term (its known values: cb_known) */
            x->v = v;
            x->j = j0 + c;
            bound_table(q, x->j, v, x->tab0);
            x->tab0[0] = init; /* 0, or -inf / +inf for max / min: combining it changes nothing */
            x->pmask = 1;
            for (uint32_t p = 1; p < v->partitions && p < 64; p++)
                if (v->lower[p] == v->upper[p] && v->lower[p] != -INFINITY)
                    x->pmask |= 1ull << p;
            if (mai_by_block(r, x, nblocks, moff + nactive * (nblocks + 1), mpos + mused, mval + mused) != 0)
                goto done;
            mused += v->mai_count;
            nactive++;
        }
        for (int t = 0; t < nw; t++) {
            cb_work *w = &work[t];
            w->cn = cn;
            w->nactive = nactive;
            w->first = j0 == 0;
            w->last = j0 + CB_CHUNK >= q->gsize;
        }
        /* each block's arithmetic is the same whichever thread runs it */
        eng_pool_run(nblocks, nw, cb_block, work);
    }
    if (eb) {
        if (cb_known_marked(r, order, ncand, maival, eb, bound, es, known) != 0)
            goto done;
    } else if (known && cb_known(r, order, ncand, maival, pid8, bound, es, known) != 0) {
        goto done;
    }
    rc = 0;
done:
    free(eb);
    free(cn);
    free(moff);
    free(mpos);
    free(mval);
    for (int t = 0; work && t < nw; t++) {
        free(work[t].acc);
        free(work[t].mv);
        free(work[t].pb);
        free(work[t].hit);
    }
    free(work);
    return rc;
}

/* ---- the coarse pass ------------------------------------------------
 *
 * A dense pass of a sum (top-k sum/mean/weighted sum, kNN l1/l2) in single
 * precision, 16 inputs a step where the exact one does 8 in double (~1.9x
 * faster in a harness, 30 neurons over 70,000 inputs). Its keys are not the
 * exact pass's bits but bounds as sound, with a margin: every term is
 * rounded to float away from the score (up for top-k, down for kNN), and
 * the float sum of up to 2G terms (the MAI's are added after a zero) is off
 * the real sum by at most 2G ulps of float of the terms' magnitudes, so
 *   top-k: key = -(sum + M), M = (G + 2) 2^-22 A, A = the sum over the
 *          neurons of their largest |term|: at least the float error plus
 *          the exact score's own rounding (G ulps of double);
 *   kNN:   terms >= 0, key = sum (1 - (G + 4) 2^-22) (its root for l2),
 *          lowered a little more for the root's rounding;
 * plus a few ulps of double for the finish (8 for top-k, whose mean is a
 * product by 1/G; 4 for the kNN root). A NaN, -inf (top-k) or corrupt cell
 * gets the best key, as in the exact pass. Callers use these keys only where
 * any sound bound serves: to pick a kNN's guessed neighbours and relax them
 * (relax_bounds), and to find the few candidates that need exact bounds
 * (coarse_prefix). No index-held scores are taken from it. */

/* x rounded to a float at or above it (f32_up) or at or below it; NaN stays
 * NaN. The next float by its bits, not nextafterf: a libm call for each of
 * a query's MAI terms was a tenth of the coarse pass. */
static inline float f32_step(float f, int up)
{
    uint32_t b;
    if (f == 0.0f) /* either zero: the smallest subnormal of the sign asked */
        return up ? FLT_TRUE_MIN : -FLT_TRUE_MIN;
    memcpy(&b, &f, 4);
    b = (f > 0.0f) == (up != 0) ? b + 1 : b - 1; /* away from zero, or toward it */
    memcpy(&f, &b, 4);
    return f;
}

static inline float f32_up(double x)
{
    float f = (float)x;
    return (double)f < x ? f32_step(f, 1) : f;
}

static inline float f32_down(double x)
{
    float f = (float)x;
    return (double)f > x ? f32_step(f, 0) : f;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* acc[i] += tab[pid of input base + i] for i < len, 16 inputs a step (two
 * 8-id loads of B <= 6 bits, narrowed to 32-bit lanes; the 64 terms in four
 * registers, picked by permutes). base is a multiple of 16. Returns how
 * many of the ids are 0. */
__attribute__((target("avx512f,popcnt"))) static uint32_t coarse_fold_avx512(float *acc, const npi_view *v,
                                                                           uint32_t base, uint32_t len,
                                                                           const float *tab)
{
    const uint32_t B = v->bits;
    const size_t first = (size_t)(base >> 3) * B, nbytes = ((size_t)v->n * B + 7) / 8;
    /* group g reads bytes [first + 2Bg, first + 2Bg + B + 8) */
    size_t groups = len / 16, fit = nbytes >= first + B + 8 ? (nbytes - first - B - 8) / (2 * B) + 1 : 0;
    if (groups > fit)
        groups = fit;
    const uint8_t *src = v->pids + first;
    const __m512 T0 = _mm512_loadu_ps(tab), T1 = _mm512_loadu_ps(tab + 16), T2 = _mm512_loadu_ps(tab + 32),
                 T3 = _mm512_loadu_ps(tab + 48);
    const __m512i sh = _mm512_setr_epi64(0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B);
    const __m512i mask = _mm512_set1_epi64((1 << B) - 1), b5 = _mm512_set1_epi32(32);
    const size_t ahead = (size_t)CB_BLOCK * B / 8; /* as coarse_fold_vbmi */
    uint32_t zeros = 0;
    float *a = acc;
    for (size_t g = 0; g < groups; g++, src += 2 * B, a += 16) {
        _mm_prefetch((const char *)src + ahead, _MM_HINT_T0);
        uint64_t w0, w1;
        memcpy(&w0, src, 8);
        memcpy(&w1, src + B, 8);
        __m512i i0 = _mm512_and_si512(_mm512_srlv_epi64(_mm512_set1_epi64((long long)w0), sh), mask);
        __m512i i1 = _mm512_and_si512(_mm512_srlv_epi64(_mm512_set1_epi64((long long)w1), sh), mask);
        __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(i0)),
                                         _mm512_cvtepi64_epi32(i1), 1);
        __m512 t = _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, b5), _mm512_permutex2var_ps(T0, idx, T1),
                                        _mm512_permutex2var_ps(T2, idx, T3));
        _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), t));
        zeros += (uint32_t)__builtin_popcount((unsigned)_mm512_testn_epi32_mask(idx, idx));
    }
    for (uint32_t i = (uint32_t)groups * 16; i < len; i++) {
        uint32_t p = npi_pid(v, base + i);
        acc[i] += tab[p];
        zeros += p == 0;
    }
    return zeros;
}

/* The same, decoding 16 ids at once: one 16-byte load, each id's two
 * bytes to its lane by a byte permute (VBMI), shifted and masked in the
 * lane (~1.4x the fold above in a harness). The rest of the loop is the
 * fold above's, written twice on purpose: shared through an inline helper
 * it measured 0.15-0.5 ms slower per 30-neuron query in the daemon, with
 * the same instructions in the loop (code placement, not found). */
__attribute__((target("avx512f,avx512vbmi,popcnt"))) static uint32_t coarse_fold_vbmi(float *acc, const npi_view *v,
                                                                                    uint32_t base, uint32_t len,
                                                                                    const float *tab)
{
    const uint32_t B = v->bits;
    const size_t first = (size_t)(base >> 3) * B, nbytes = ((size_t)v->n * B + 7) / 8;
    /* group g reads bytes [first + 2Bg, first + 2Bg + 16) */
    size_t groups = len / 16, fit = nbytes >= first + 16 ? (nbytes - first - 16) / (2 * B) + 1 : 0;
    if (groups > fit)
        groups = fit;
    uint8_t at[64] = {0};
    uint32_t shift[16];
    for (uint32_t i = 0; i < 16; i++) { /* id i: bits B*i.. of the group, within two bytes (B <= 8) */
        at[4 * i] = (uint8_t)(B * i / 8);
        at[4 * i + 1] = (uint8_t)(B * i / 8 + 1);
        shift[i] = B * i % 8;
    }
    const __m512i bytes = _mm512_loadu_si512(at), sh = _mm512_loadu_si512(shift);
    const __m512 T0 = _mm512_loadu_ps(tab), T1 = _mm512_loadu_ps(tab + 16), T2 = _mm512_loadu_ps(tab + 32),
                 T3 = _mm512_loadu_ps(tab + 48);
    const __m512i mask = _mm512_set1_epi32((1 << B) - 1), b5 = _mm512_set1_epi32(32);
    const uint8_t *src = v->pids + first;
    uint32_t zeros = 0;
    float *a = acc;
    /* the same place of the next block, fetched while this one folds: a
     * query's neurons are seldom in cache (the fold took 0.68 -> 0.51 ms
     * for 30 neurons over 70,000 inputs in the daemon) */
    const size_t ahead = (size_t)CB_BLOCK * B / 8;
    for (size_t g = 0; g < groups; g++, src += 2 * B, a += 16) {
        _mm_prefetch((const char *)src + ahead, _MM_HINT_T0);
        __m512i raw = _mm512_castsi128_si512(_mm_loadu_si128((const void *)src));
        __m512i idx = _mm512_and_si512(_mm512_srlv_epi32(_mm512_permutexvar_epi8(bytes, raw), sh), mask);
        __m512 t = _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, b5), _mm512_permutex2var_ps(T0, idx, T1),
                                        _mm512_permutex2var_ps(T2, idx, T3));
        _mm512_storeu_ps(a, _mm512_add_ps(_mm512_loadu_ps(a), t));
        zeros += (uint32_t)__builtin_popcount((unsigned)_mm512_testn_epi32_mask(idx, idx));
    }
    for (uint32_t i = (uint32_t)groups * 16; i < len; i++) {
        uint32_t p = npi_pid(v, base + i);
        acc[i] += tab[p];
        zeros += p == 0;
    }
    return zeros;
}
#define HAVE_COARSE 1
#endif

#ifdef HAVE_COARSE
/* Coarse keys from the float sums acc[0..len) (see above). */
__attribute__((target("avx512f"))) static void coarse_finish(const eng_query *q, const float *acc, uint32_t len,
                                                            double *key, double M, double low)
{
    uint32_t i = 0;
    if (q->kind == ENG_TOPK) {
        /* mean: times 1/G, whose rounding the 8 ulps cover (a division per
         * input was a tenth of the pass) */
        const double scale = q->agg == ENG_MEAN ? 1.0 / (double)q->gsize : 1.0;
        const __m512d vm = _mm512_set1_pd(M), vs = _mm512_set1_pd(scale), ve = _mm512_set1_pd(8 * DBL_EPSILON),
                      best = _mm512_set1_pd(-INFINITY), zero = _mm512_setzero_pd();
        for (; i + 8 <= len; i += 8) {
            __m512d a = _mm512_cvtps_pd(_mm256_loadu_ps(acc + i));
            __m512d u = _mm512_mul_pd(_mm512_add_pd(a, vm), vs);
            u = _mm512_add_pd(u, _mm512_mul_pd(_mm512_abs_pd(u), ve));
            /* NaN or -inf: the best key */
            __mmask8 bad = _mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q) | _mm512_cmp_pd_mask(a, best, _CMP_EQ_OQ);
            _mm512_storeu_pd(key + i, _mm512_mask_blend_pd(bad, _mm512_sub_pd(zero, u), best));
        }
        for (; i < len; i++) {
            double u = ((double)acc[i] + M) * scale;
            u += fabs(u) * (8 * DBL_EPSILON);
            key[i] = acc[i] != acc[i] || acc[i] == -INFINITY ? -INFINITY : -u;
        }
        return;
    }
    const int l2 = q->metric == ENG_L2;
    const __m512d vl = _mm512_set1_pd(low), ve = _mm512_set1_pd(1.0 - 4 * DBL_EPSILON),
                  inf = _mm512_set1_pd(INFINITY), fmax = _mm512_set1_pd((double)FLT_MAX), zero = _mm512_setzero_pd();
    for (; i + 8 <= len; i += 8) {
        __m512d a = _mm512_cvtps_pd(_mm256_loadu_ps(acc + i));
        /* +inf: the float sum overflowed, the real one is at least FLT_MAX */
        __m512d d = _mm512_mul_pd(_mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, inf, _CMP_EQ_OQ), a, fmax), vl);
        if (l2)
            d = _mm512_mul_pd(_mm512_sqrt_pd(d), ve);
        _mm512_storeu_pd(key + i, _mm512_mask_blend_pd(_mm512_cmp_pd_mask(a, a, _CMP_UNORD_Q), d, zero));
    }
    for (; i < len; i++) {
        double d = acc[i] == INFINITY ? (double)FLT_MAX : (double)acc[i];
        d *= low;
        d = l2 ? sqrt(d) * (1.0 - 4 * DBL_EPSILON) : d;
        key[i] = acc[i] != acc[i] ? 0.0 : d;
    }
}

/* The r-th smallest (0-based) of a[0..n), n > r; reorders a. */
static double nth_smallest(double *a, size_t n, size_t r)
{
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        double pv = a[lo + (hi - lo) / 2];
        size_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pv)
                i++;
            while (a[j] > pv)
                j--;
            if (i <= j) {
                double t = a[i];
                a[i++] = a[j];
                a[j] = t;
                if (j == 0)
                    break;
                j--;
            }
        }
        if (r <= j)
            hi = j;
        else if (r >= i)
            lo = i;
        else
            return a[r];
    }
    return a[r];
}

/* The kk smallest keys, by (key, id), of the candidates but `skip`, moved
 * to out[0..kk) in any order, *nout the candidates gathered: a pivot from a
 * sample of the keys (about three times kk's share), every id whose key is
 * at or below it gathered by one vector pass over key[0..n) -- compares and
 * compress stores, 16 ids a step -- then select_smallest over those. For
 * dense candidates without a filter (coarse_ok): out has room for n. Returns
 * 1 when it did not (a filter, kk too large, or a sample that misled: fewer
 * than kk at or below the pivot), out[] then the candidates in id order
 * (candidates_in_order), for the caller to select from. */
__attribute__((target("avx512f"))) static int select_keys(const eng_query *q, const double *key, size_t kk,
                                                         int64_t skip, uint32_t *out, size_t *nout, uint64_t *rng)
{
    const uint32_t n = q->n;
    if (kk == 0 || q->allowed || kk >= n / 8)
        goto fail;
    double sample[SELECT_SAMPLE];
    for (size_t i = 0; i < SELECT_SAMPLE; i++)
        sample[i] = key[xorshift(rng) % n];
    size_t rank = (size_t)((double)SELECT_SAMPLE * (double)kk / (double)n * 3.0) + 8;
    if (rank >= SELECT_SAMPLE)
        goto fail;
    const double pv = nth_smallest(sample, SELECT_SAMPLE, rank);
    const __m512d vp = _mm512_set1_pd(pv);
    const __m512i sixteen = _mm512_set1_epi32(16);
    __m512i ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    size_t c = 0;
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16, ids = _mm512_add_epi32(ids, sixteen)) {
        __mmask16 m = (__mmask16)(_mm512_cmp_pd_mask(_mm512_loadu_pd(key + i), vp, _CMP_LE_OQ) |
                                  (unsigned)_mm512_cmp_pd_mask(_mm512_loadu_pd(key + i + 8), vp, _CMP_LE_OQ) << 8);
        _mm512_mask_compressstoreu_epi32(out + c, m, ids);
        c += (size_t)__builtin_popcount(m);
    }
    for (; i < n; i++)
        if (key[i] <= pv)
            out[c++] = i;
    size_t m = 0;
    for (size_t j = 0; j < c; j++) {
        uint32_t id = out[j];
        out[m] = id;
        m += (int64_t)id != q->exclude && (int64_t)id != skip;
    }
    if (m < kk)
        goto fail;
    select_smallest(out, m, kk, key, rng);
    *nout = m;
    return 0;
fail:
    candidates_in_order(q, out);
    return 1;
}

#endif

/* Whether this query's dense pass may be the coarse one: a sum, every
 * neuron weighted in, at most 64 partitions, AVX-512, and nearly every
 * input a candidate. */
static int coarse_ok(const run *r, size_t ncand)
{
#ifdef HAVE_COARSE
    const eng_query *q = r->q;
    if (cb_simd() < 2 || is_cosine(q) || combine_kind(q) != CMB_SUM || ncand < q->n - q->n / 4)
        return 0;
    for (size_t j = 0; j < q->gsize; j++)
        if (!neuron_active(q, j) || r->idx[j].bits > 6 || r->idx[j].partitions > 64)
            return 0;
    return 1;
#else
    (void)r, (void)ncand;
    return 0;
#endif
}

/* key[id] for every input 0..n-1 (see above). Returns 0, 1 when the margin
 * is not finite (huge or infinite terms: the caller takes the exact pass),
 * -1 with r->err. Neurons go in chunks of CB_CHUNK, their partial sums in
 * floats between chunks. */
#ifdef HAVE_COARSE

/* One pass of coarse_bounds over a chunk of neurons, its blocks shared out
 * by eng_pool_run; each worker has its own accumulator and MAI scratch. */
typedef struct cc_pass {
    const eng_query *q;
    const cb_neuron *cn;
    const float *ftab;
    size_t nc;
    float *part;
    double *key, M, low;
    int first, last, vbmi;
    float *acc[ENG_POOL_MAX], *mv[ENG_POOL_MAX]; /* [CB_BLOCK] each; mv NaN between uses */
    uint8_t *hit[ENG_POOL_MAX];                  /* [CB_BLOCK], 0 between uses */
} cc_pass;

static void coarse_block(void *ctx, int w, uint32_t b)
{
    cc_pass *p = ctx;
    const uint32_t n = p->q->n, base = b * CB_BLOCK, len = n - base < CB_BLOCK ? n - base : CB_BLOCK;
    float *acc = p->acc[w], *mv = p->mv[w];
    uint8_t *hit = p->hit[w];
    if (p->first)
        memset(acc, 0, len * sizeof *acc);
    else
        memcpy(acc, p->part + base, len * sizeof *acc);
    for (size_t c = 0; c < p->nc; c++) {
        const cb_neuron *x = &p->cn[c];
        uint32_t zeros = p->vbmi ? coarse_fold_vbmi(acc, x->v, base, len, p->ftab + c * 64)
                                 : coarse_fold_avx512(acc, x->v, base, len, p->ftab + c * 64);
        uint32_t fixed = 0;
        for (uint32_t e = x->moff[b]; e < x->moff[b + 1]; e++)
            mv[x->mpos[e]] = x->mval[e];
        for (uint32_t e = x->moff[b]; e < x->moff[b + 1]; e++) {
            uint32_t pos = x->mpos[e];
            if (npi_pid(x->v, base + pos) == 0 && !hit[pos]) {
                acc[pos] += mv[pos]; /* its term, rounded away from the score */
                hit[pos] = 1;
                fixed++;
            }
        }
        if (fixed != zeros) /* an id 0 the MAI does not hold: unknown */
            for (uint32_t i = 0; i < len; i++)
                if (npi_pid(x->v, base + i) == 0 && !hit[i])
                    acc[i] = NAN;
        for (uint32_t e = x->moff[b]; e < x->moff[b + 1]; e++) {
            hit[x->mpos[e]] = 0;
            mv[x->mpos[e]] = NAN;
        }
    }
    if (!p->last)
        memcpy(p->part + base, acc, len * sizeof *acc);
    else
        coarse_finish(p->q, acc, len, p->key + base, p->M, p->low);
}
#endif

static int coarse_bounds(run *r, double *key)
{
#ifdef HAVE_COARSE
    const eng_query *q = r->q;
    const uint32_t n = q->n, nblocks = (n + CB_BLOCK - 1) / CB_BLOCK;
    const int topk = q->kind == ENG_TOPK;
    const double G = (double)q->gsize;
    int rc = -1;
    size_t chunk = q->gsize < CB_CHUNK ? q->gsize : CB_CHUNK, mmax = 0;
    for (size_t j0 = 0; j0 < q->gsize; j0 += CB_CHUNK) {
        size_t m = 0;
        for (size_t j = j0; j < q->gsize && j < j0 + CB_CHUNK; j++)
            m += r->idx[j].mai_count;
        mmax = m > mmax ? m : mmax;
    }
    /* the margin: the neurons' largest |term| (partitions and the MAI's two
     * ends: its terms are monotone in the value) */
    double A = 0.0;
    for (size_t j = 0; j < q->gsize && topk; j++) {
        const npi_view *v = &r->idx[j];
        double tab[NPI_MAX_PARTITIONS], a = 0.0;
        bound_table(q, j, v, tab);
        for (uint32_t p = 1; p < v->partitions; p++)
            if (fabs(tab[p]) > a)
                a = fabs(tab[p]);
        for (uint32_t e = 0; e < 2 && v->mai_count; e++) {
            double t = fabs(term_of(q, j, exact_value(q, j, v->mai_values[e ? v->mai_count - 1 : 0])));
            if (t > a)
                a = t;
        }
        A += a;
    }
    const double M = (G + 2.0) * 0x1p-22 * A, low = 1.0 - (G + 4.0) * 0x1p-22;
    if (!isfinite(M))
        return 1;
    const int nw = pass_workers(n, q->gsize, CC_THREAD_MIN, nblocks);
    cc_pass P = {.q = q, .key = key, .M = M, .low = low, .vbmi = cb_simd() >= 3};
    cb_neuron *cn = malloc(chunk * sizeof *cn);
    float *ftab = malloc(chunk * 64 * sizeof *ftab);
    uint32_t *moff = malloc(chunk * (nblocks + 1) * sizeof *moff);
    uint16_t *mpos = malloc((mmax ? mmax : 1) * sizeof *mpos);
    float *mval = malloc((mmax ? mmax : 1) * sizeof *mval);
    float *part = q->gsize > CB_CHUNK ? malloc((size_t)n * sizeof *part) : NULL;
    int ok = cn && ftab && moff && mpos && mval && (q->gsize <= CB_CHUNK || part);
    for (int w = 0; w < nw && ok; w++) {
        /* a line-aligned accumulator: 64-byte loads and stores that
         * straddle two lines cost two */
        P.acc[w] = aligned_alloc(64, CB_BLOCK * sizeof *P.acc[w]);
        P.mv[w] = malloc(CB_BLOCK * sizeof *P.mv[w]);
        P.hit[w] = calloc(CB_BLOCK, 1);
        ok = P.acc[w] && P.mv[w] && P.hit[w];
        for (uint32_t i = 0; ok && i < CB_BLOCK; i++)
            P.mv[w][i] = NAN;
    }
    if (!ok) {
        seterr(r->err, r->errlen, "out of memory");
        goto done;
    }
    P.cn = cn;
    P.ftab = ftab;
    P.part = part;
    for (size_t j0 = 0; j0 < q->gsize; j0 += CB_CHUNK) {
        size_t nc = q->gsize - j0 < CB_CHUNK ? q->gsize - j0 : CB_CHUNK, mused = 0;
        for (size_t c = 0; c < nc; c++) {
            cb_neuron *x = &cn[c];
            x->v = &r->idx[j0 + c];
            x->j = j0 + c;
            bound_table(q, x->j, x->v, x->tab0);
            float *ft = ftab + c * 64;
            ft[0] = 0.0f; /* the MAI's: its values are added after */
            for (uint32_t p = 1; p < 64; p++)
                ft[p] = p < x->v->partitions ? (topk ? f32_up(x->tab0[p]) : f32_down(x->tab0[p])) : NAN;
            if (mai_by_block(r, x, nblocks, moff + c * (nblocks + 1), mpos + mused, mval + mused) != 0)
                goto done;
            for (uint32_t e = 0; e < x->v->mai_count; e++) { /* the MAI's values to their terms, rounded */
                double t = term_of(q, x->j, exact_value(q, x->j, mval[mused + e]));
                mval[mused + e] = topk ? f32_up(t) : f32_down(t);
            }
            mused += x->v->mai_count;
        }
        P.nc = nc;
        P.first = j0 == 0;
        P.last = j0 + CB_CHUNK >= q->gsize;
        /* each block's arithmetic is the same whichever thread runs it */
        eng_pool_run(nblocks, nw, coarse_block, &P);
    }
    rc = 0;
done:
    free(cn);
    free(ftab);
    free(moff);
    free(mpos);
    free(mval);
    free(part);
    for (int w = 0; w < nw; w++) {
        free(P.acc[w]);
        free(P.mv[w]);
        free(P.hit[w]);
    }
    return rc;
#else
    (void)r, (void)key;
    return 1;
#endif
}

int eng_coarse_keys(const eng_query *q, const npi_view *idx, double *key, char *err, size_t errlen)
{
    eng_stats st = {0};
    run r = {.q = q, .idx = idx, .st = &st, .err = err, .errlen = errlen};
    if (q->n == 0 || q->gsize == 0 || q->allowed || (q->kind == ENG_KNN && !q->target) || !coarse_ok(&r, q->n))
        return 1;
    return coarse_bounds(&r, key);
}

/* Fills bound[id] (the key: smaller is better) of every candidate in
 * order[0..ncand) from the cells and q->target. maival[n] must be all NaN
 * (left so); pid8[n+1] is unpack scratch or NULL (packed reads). With es and
 * known (not for cosine; known[n] all 0), also marks known[id] the candidates
 * whose score the index holds exactly (see exact_neuron) and gives that score
 * in es[id]. Reads bound[] in order's order: ascending ids stream. */
static int cell_bounds(run *r, const uint32_t *order, size_t ncand, double *bound, float *maival, uint8_t *pid8,
                       double *es, uint8_t *known)
{
    const eng_query *q = r->q;
    if (is_cosine(q))
        return cell_bounds_cosine(r, order, ncand, bound, maival, pid8);
    if (pid8 && ncand >= q->n - q->n / 4)
        return cell_bounds_blocked(r, order, ncand, bound, maival, pid8, es, known);
    double init = combine_init(q);
    for (size_t c = 0; c < ncand; c++)
        bound[order[c]] = init;
    uint32_t *kl = NULL; /* the candidates still known */
    size_t nk = 0;
    if (known) {
        if (!(kl = malloc((ncand ? ncand : 1) * sizeof *kl))) {
            seterr(r->err, r->errlen, "out of memory");
            return -1;
        }
        for (size_t c = 0; c < ncand; c++) {
            es[order[c]] = init;
            kl[nk++] = order[c];
        }
    }
    int ck = combine_kind(q);
    for (size_t j = 0; j < q->gsize; j++) {
        /* an inactive neuron bounds nothing, but eng_score adds its term:
         * a score is known only with its value known too */
        int active = neuron_active(q, j);
        if (!active && !nk)
            continue;
        const npi_view *v = &r->idx[j];
        double tab[NPI_MAX_PARTITIONS];
        bound_table(q, j, v, tab);
        if (load_mai(r, j, maival) != 0) {
            free(kl);
            return -1;
        }
        if (pid8)
            npi_unpack(v, pid8);
        if (!active) {
            /* no bound term */
        } else if (pid8 && ck == CMB_SUM) {
            BOUNDS_LOOP(pid8[id], bound[id] + t)
        } else if (pid8) {
            BOUNDS_LOOP(pid8[id], combine(ck, bound[id], t))
        } else {
            BOUNDS_LOOP(npi_pid(v, id), combine(ck, bound[id], t))
        }
        if (nk)
            exact_neuron(q, j, v, kl, &nk, pid8, maival, es);
        clear_mai(v, maival);
    }
    for (size_t c = 0; c < ncand; c++) {
        uint32_t id = order[c];
        double b = finish_value(q, bound[id]);
        if (b != b)
            b = best_value(q);
        bound[id] = q->kind == ENG_TOPK ? -b : b;
    }
    for (size_t c = 0; c < nk; c++) {
        uint32_t id = kl[c];
        double s = finish_value(q, es[id]);
        es[id] = s != s ? worst_value(q) : s;
        known[id] = 1;
    }
    free(kl);
    return 0;
}

/* A kNN whose target is an input of the dataset (q->target_input) and not
 * known yet: its forward also computes the candidates nearest to where its
 * cell says it is (its MAI values, else the middle of its partitions) --
 * likely its neighbours -- so that a query often needs that one forward.
 * Afterwards r->tbuf holds the target and q->target points to it; the
 * candidates computed are pushed and marked. */
static int target_round(run *r, eng_query *q, uint32_t *order, int *ordered, size_t ncand, double *bound,
                        float *maival, uint8_t *pid8, uint8_t *computed, float *guessed, int *ran)
{
    const eng_geometry *g = r->geo;
    uint32_t tid = (uint32_t)q->target_input;
    int exact = 1; /* every value of the target is in the index exactly */
    for (size_t j = 0; j < q->gsize; j++) {
        const npi_view *v = &r->idx[j];
        uint32_t p = npi_pid(v, tid);
        float guess = NAN;
        if (p == 0) {
            for (uint32_t i = 0; i < v->mai_count; i++)
                if (v->mai_ids[i] == tid)
                    guess = v->mai_values[i];
        } else if (p < v->partitions && v->lower[p] <= v->upper[p]) {
            guess = (float)(((double)v->lower[p] + (double)v->upper[p]) / 2);
            exact &= v->lower[p] == v->upper[p] && v->lower[p] != -INFINITY;
        } else {
            exact = 0;
        }
        exact &= guess == guess && isfinite(guess);
        r->tbuf[j] = guess == guess && isfinite(guess) ? guess : 0.0f;
    }
    q->target = r->tbuf;
    if (exact)
        return 0; /* the target is known: the main rounds compute what is needed */
    /* the guess's bounds only pick neighbours and get relaxed: coarse ones serve */
    int cr = r->coarse ? coarse_bounds(r, bound) : 1;
    if (cr < 0)
        return -1;
    if (cr == 1 || (g && g->nclass > 1)) { /* these passes read order[] */
        if (!*ordered)
            candidates_in_order(q, order);
        *ordered = 1;
    }
    if (cr == 1 && cell_bounds(r, order, ncand, bound, maival, pid8, NULL, NULL) != 0)
        return -1;
    r->st->coarse_passes += cr == 0;
    memcpy(guessed, r->tbuf, q->gsize * sizeof *guessed);
    *ran = 1;
    size_t slots = g ? g->slots : r->batch, take;
    uint64_t rng = 0x2545f4914f6cdd1dull;
    if (!g || g->nclass == 1) {
        /* any slot takes any input: the slots - 1 best but the target, in
         * any order (the target, when a candidate, set aside at the end) */
        size_t nc = ncand - (size_t)is_candidate(q, tid), got;
        take = nc < slots - 1 ? nc : slots - 1;
#ifdef HAVE_COARSE
        /* it leaves the candidates in order[] when it cannot (then, in id order) */
        if (cr == 1 || select_keys(q, bound, take, tid, order, &got, &rng) != 0)
#endif
        {
            for (size_t c = 0; c < ncand; c++)
                if (order[c] == tid) {
                    order[c] = order[ncand - 1];
                    order[ncand - 1] = tid;
                    break;
                }
            select_smallest(order, nc, take, bound, &rng);
        }
    } else {
        /* the best of each class: a sorted prefix long enough for most */
        take = ncand < 8 * slots ? ncand : 8 * slots;
        select_smallest(order, ncand, take, bound, &rng);
        sort_by_key(order, take, bound, &rng);
    }
    uint32_t *ids = malloc((slots + 1) * sizeof *ids);
    float *rows = malloc((slots + 1) * q->gsize * sizeof *rows);
    if (!ids || !rows) {
        free(ids);
        free(rows);
        seterr(r->err, r->errlen, "out of memory");
        return -1;
    }
    size_t nids = 0;
    ids[nids++] = tid;
    if (g) {
        fill f;
        fill_plan(&f, g, ids, 1);
        for (size_t c = 0; c < take && f.free_total > 0; c++)
            if (order[c] != tid && fill_take(&f, order[c]))
                ids[nids++] = order[c];
    } else {
        for (size_t c = 0; c < take && nids < slots; c++)
            if (order[c] != tid)
                ids[nids++] = order[c];
    }
    if (r->err && r->errlen)
        r->err[0] = '\0';
    int rc = r->src->fetch(r->src->ctx, ids, nids, q->neurons, q->gsize, rows, &r->st->fetch, r->err, r->errlen);
    r->st->inputs_fetched += nids;
    r->st->rounds++;
    if (rc == 0) {
        memcpy(r->tbuf, rows, q->gsize * sizeof *rows); /* the exact target from here on */
        for (size_t i = 1; i < nids; i++) {
            eng_topk_push(r->h, ids[i], eng_score(q, rows + i * q->gsize));
            computed[ids[i]] = 1;
        }
        if (is_candidate(q, tid) && !computed[tid]) {
            eng_topk_push(r->h, tid, eng_score(q, rows));
            computed[tid] = 1;
        }
    } else if (r->err && r->errlen && !r->err[0]) {
        seterr(r->err, r->errlen, "activation source failed");
    }
    free(ids);
    free(rows);
    return rc == 0 ? 0 : -1;
}

#ifdef HAVE_COARSE
/* relax_bounds' test over every id 0..n-1, the same operations lane by
 * lane, 16 ids a step (compares and compress stores: the scalar loop took
 * ~0.2 ms over 70,000 inputs in the daemon): keeps in sub, ascending, the
 * ids whose relaxed bound lo = (b*om - dd), times om when positive, else 0,
 * is not above kth. Returns how many. */
__attribute__((target("avx512f"))) static size_t relax_keep(const double *bound, uint32_t n, double om, double dd,
                                                           double kth, uint32_t *sub)
{
    const __m512d vom = _mm512_set1_pd(om), vdd = _mm512_set1_pd(dd), vk = _mm512_set1_pd(kth),
                  z = _mm512_setzero_pd();
    const __m512i sixteen = _mm512_set1_epi32(16);
    __m512i ids = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    size_t c = 0;
    uint32_t i = 0;
    for (; i + 16 <= n; i += 16, ids = _mm512_add_epi32(ids, sixteen)) {
        unsigned drop = 0;
        for (int h = 0; h < 2; h++) {
            __m512d lo = _mm512_sub_pd(_mm512_mul_pd(_mm512_loadu_pd(bound + i + 8 * h), vom), vdd);
            lo = _mm512_maskz_mul_pd(_mm512_cmp_pd_mask(lo, z, _CMP_GT_OQ), lo, vom); /* NaN or <= 0: 0 */
            drop |= (unsigned)_mm512_cmp_pd_mask(lo, vk, _CMP_GT_OQ) << (8 * h);
        }
        __mmask16 keep = (__mmask16)~drop;
        _mm512_mask_compressstoreu_epi32(sub + c, keep, ids);
        c += (size_t)__builtin_popcount(keep);
    }
    for (; i < n; i++) {
        double lo = bound[i] * om - dd;
        lo = lo > 0.0 ? lo * om : 0.0;
        sub[c] = i;
        c += !(lo > kth);
    }
    return c;
}
#endif

/* After target_round, bound[] holds every candidate's cell bound from the
 * guessed target g, and the heap the k nearest of one forward. A box bound
 * moves by at most |t_j - g_j| per neuron when the target moves from g to t
 * (distance to an interval is 1-Lipschitz), so by the triangle inequality
 * bound(t) >= bound(g) - D, D = the metric's norm of w*(t - g), and those
 * whose relaxed bound is already worse than the k-th can never enter (the
 * k-th only gets better): only the others, sub[] (ascending), get cell
 * bounds from t and stay open -- usually a small part. The relaxation gives
 * up a relative margin larger than the rounding of the sums ((G + 8) ulps,
 * three times) so that it bounds the distance as eng_score computes it (the
 * coarse pass's keys are lower still). Returns how many are in sub: every
 * candidate when there is nothing to relax. sub has room for ncand + 1. */
static size_t relax_bounds(const run *r, const eng_query *q, const float *g, const double *bound, uint32_t *sub)
{
    size_t nsub = 0;
    if (!eng_topk_full(r->h) || q->kind != ENG_KNN || is_cosine(q))
        goto all;
    double kth = eng_topk_worst(r->h), d = 0.0;
    for (size_t j = 0; j < q->gsize; j++) {
        double w = weight_of(q, j), e = fabs((double)q->target[j] - (double)g[j]);
        if (q->metric == ENG_L2)
            d += w * e * e;
        else if (q->metric == ENG_L1)
            d += w * e;
        else if (w * e > d)
            d = w * e;
    }
    if (q->metric == ENG_L2)
        d = sqrt(d);
    if (!isfinite(d) || !(kth == kth))
        goto all;
    double gam = 3.0 * ((double)q->gsize + 8.0) * DBL_EPSILON;
#ifdef HAVE_COARSE
    if (!q->allowed && cb_simd() >= 2) {
        nsub = relax_keep(bound, q->n, 1.0 - gam, d * (1.0 + gam), kth, sub);
        size_t m = 0; /* the excluded input out (ids ascending: one pass over the few) */
        for (size_t c = 0; c < nsub; c++) {
            sub[m] = sub[c];
            m += (int64_t)sub[c] != q->exclude;
        }
        return m;
    }
#endif
    /* straight over the ids (bounds are the candidates' only), branch-free
     * where nearly all drop out */
    for (uint32_t id = 0; id < q->n; id++) {
        if (!is_candidate(q, id))
            continue;
        double lo = bound[id] * (1.0 - gam) - d * (1.0 + gam);
        lo = lo > 0.0 ? lo * (1.0 - gam) : 0.0;
        sub[nsub] = id;
        nsub += !(lo > kth);
    }
    return nsub;
all:
    candidates_in_order(q, sub);
    return r->ncand;
}

/* order[] = the candidates, ascending ids; order must have room for one more
 * (branch-free: every id is written, the next one over a non-candidate). */
static void candidates_in_order(const eng_query *q, uint32_t *order)
{
    size_t c = 0;
    if (!q->allowed) { /* every id but the excluded one: no test per id */
        for (uint32_t id = 0; id < q->n; id++) {
            order[c] = id;
            c += (int64_t)id != q->exclude;
        }
        return;
    }
    for (uint32_t id = 0; id < q->n; id++) {
        order[c] = id;
        c += is_candidate(q, id);
    }
}

/* The top-k of one neuron straight from its MAI, when that settles it: the
 * MAI holds its candidates' exact scores, every other input's score is at
 * most its partition's bound, so once the k best MAI candidates all score
 * strictly above the best bound of any partition, no other input can enter
 * or tie. O(MAI + P) instead of the O(N) cell pass: the query of a click on
 * one neuron. Returns 1 when it answered (the heap holds the answer), 0
 * when the general path must run (the heap is left empty). */
static int mai_answer(run *r)
{
    const eng_query *q = r->q;
    if (q->kind != ENG_TOPK || q->gsize != 1 || q->has_threshold)
        return 0;
    double t0 = now_ms();
    const npi_view *v = &r->idx[0];
    double tab[NPI_MAX_PARTITIONS];
    bound_table(q, 0, v, tab);
    const int ck = combine_kind(q);
    const double init = combine_init(q);
    double rest = -INFINITY; /* the best score an input outside the MAI can have */
    for (uint32_t p = 1; p < v->partitions; p++) {
        if (v->lower[p] == INFINITY && v->upper[p] == -INFINITY)
            continue; /* empty */
        double b = finish_value(q, combine(ck, init, tab[p]));
        if (b != b)
            return 0; /* a bound that says nothing */
        rest = b > rest ? b : rest;
    }
    uint64_t known = 0;
    for (uint32_t i = 0; i < v->mai_count; i++) {
        uint32_t id = v->mai_ids[i];
        if (id >= q->n)
            goto general; /* corrupt: the general path says so */
        if (is_candidate(q, id)) {
            eng_topk_push(r->h, id, eng_score(q, &v->mai_values[i]));
            known++;
        }
    }
    if (r->h->oom || !eng_topk_full(r->h) || !(eng_topk_worst(r->h) > rest))
        goto general;
    r->st->inputs_known += known;
    r->st->cell_ms += now_ms() - t0;
    return 1;
general:
    r->h->n = 0;
    r->h->oom = 0;
    return 0;
}

/* Whether the heap's k-th is strictly better than any input whose key is
 * `key` or worse (keys: smaller is better). */
static int heap_beats_key(const run *r, double key)
{
    return eng_topk_full(r->h) && better(r->q, eng_topk_worst(r->h), r->q->kind == ENG_TOPK ? -key : key);
}

/* Refines the candidates order[0..nleft) (their keys in bound[], cell
 * bounds: smaller is better) best bound first until the answer is proven:
 * returns 0. With a guard: *guard is a key that no candidate outside
 * order[] beats (coarse_prefix: the best key of the rest); then it returns
 * REFINE_WIDEN, computing nothing more, as soon as the answer may need one
 * of those -- the next candidate here does not beat the guard, or a
 * forward's slots could not all be filled from here -- and the caller goes
 * on over every candidate. -1 / -2: as compute_inputs. */
#define REFINE_WIDEN 1

static int refine(run *r, uint32_t *order, size_t nleft, const double *bound, uint8_t *computed,
                  const double *guard)
{
    const eng_query *q = r->q;
    int rc = -1;
    /* Refine best bound first. Only a prefix is ever sorted: select the best
     * `chunk` of the rest, sort them, double the chunk when it runs out.
     * Candidates before `next` are all computed; after it, a forward's free
     * slots may have taken some (computed[]). */
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    size_t ready = 0, next = 0, chunk = (size_t)r->batch * 4;
    /* Without a geometry: the best-bound candidates usually are the answer,
     * start with a small batch and double it. With one: one whole forward a
     * round, the best candidate and the best of each class in its slots. */
    size_t step = q->first_batch && q->first_batch < r->batch ? q->first_batch : r->batch;
    size_t window = r->geo ? 8 * (size_t)r->geo->slots : 0;
    uint32_t *round_ids = r->geo ? malloc(r->geo->slots * sizeof *round_ids) : NULL;
    if (r->geo && !round_ids) {
        seterr(r->err, r->errlen, "out of memory");
        return -1;
    }
    for (;;) {
        /* the first candidate not computed, its look-ahead window sorted */
        for (;;) {
            while (next < ready && computed[order[next]])
                next++;
            if (ready == nleft || (next < ready && ready - next > window))
                break;
            double ts = now_ms();
            size_t take = nleft - ready < chunk ? nleft - ready : chunk;
            select_smallest(order + ready, nleft - ready, take, bound, &rng);
            sort_by_key(order + ready, take, bound, &rng);
            ready += take;
            chunk *= 2;
            r->st->cell_ms += now_ms() - ts;
        }
        if (next == ready) {
            if (guard && !heap_beats_key(r, *guard))
                goto widen; /* what is left may hold the answer */
            break;
        }
        if (guard && !(bound[order[next]] < *guard)) {
            if (!heap_beats_key(r, *guard))
                goto widen;
            break;
        }
        if (q->has_threshold) {
            uint32_t cid = order[next];
            double nb = q->kind == ENG_TOPK ? -bound[cid] : bound[cid];
            if (better(q, q->threshold, nb))
                break; /* nothing left can reach the bound from elsewhere */
        }
        if (eng_topk_full(r->h)) {
            /* Every candidate left comes after order[next] in (bound, id)
             * order: at best it ties the k-th on value, and then loses on id
             * when its id is larger. So an equal bound stops too, then. */
            uint32_t cid = order[next];
            double nb = q->kind == ENG_TOPK ? -bound[cid] : bound[cid];
            double worst = eng_topk_worst(r->h);
            if (better(q, worst, nb) || (worst == nb && cid > r->h->e[0].input))
                break;
        }
        if (!r->geo) {
            /* the next `step` not computed yet (moved to the front of the run) */
            size_t cnt = 0;
            for (size_t c = next; c < ready && cnt < step; c++)
                if (!computed[order[c]]) {
                    uint32_t t = order[next + cnt];
                    order[next + cnt] = order[c];
                    order[c] = t;
                    computed[order[next + cnt++]] = 1;
                }
            r->st->rounds++;
            if ((rc = compute_inputs(r, order + next, cnt)) != 0)
                goto done;
            next += cnt;
            step = step * 2 < r->batch ? step * 2 : r->batch;
            continue;
        }
        fill f;
        size_t nr = 0;
        round_ids[nr++] = order[next];
        computed[order[next]] = 1;
        fill_plan(&f, r->geo, round_ids, 1);
        for (size_t c = next + 1; c < ready && f.free_total > 0; c++) {
            uint32_t id = order[c];
            if (!computed[id] && fill_take(&f, id)) {
                round_ids[nr++] = id;
                computed[id] = 1;
            }
        }
        if (guard && f.free_total > 0 && ready == nleft) {
            /* slots this set cannot fill: the rest may hold candidates for them */
            for (size_t i = 0; i < nr; i++)
                computed[round_ids[i]] = 0;
            goto widen;
        }
        r->st->rounds++;
        if ((rc = compute_inputs(r, round_ids, nr)) != 0)
            goto done;
    }
    rc = 0;
    goto done;
widen:
    rc = REFINE_WIDEN;
done:
    free(round_ids);
    return rc;
}

/* Pushes the index-held scores (known[], es[]) of order[0..cnt) not in the
 * heap yet. */
static void push_known(run *r, const uint32_t *order, size_t cnt, const double *es, const uint8_t *known,
                       uint8_t *computed)
{
    for (size_t c = 0; c < cnt; c++) {
        uint32_t id = order[c];
        if (known[id] && !computed[id]) {
            eng_topk_push(r->h, id, es[id]);
            computed[id] = 1;
            r->st->inputs_known++;
        }
    }
}

/* Keeps in order[0..) the candidates of order[0..cnt) still open; returns
 * how many. Those computed or known already are in the heap (a dead
 * neuron's inputs are all known: nothing to sort). Nor are those whose
 * bound is already worse than the k-th of a full heap or than the
 * threshold: the k-th only gets better, so they could never enter, and
 * ranking them was most of a cached query's time. An equal bound stays
 * (its id may still win the tie). */
static size_t keep_open(const run *r, uint32_t *order, size_t cnt, const double *bound, const uint8_t *computed)
{
    const eng_query *q = r->q;
    int full = eng_topk_full(r->h);
    double worst = full ? eng_topk_worst(r->h) : 0.0;
    double sign = q->kind == ENG_TOPK ? -1.0 : 1.0;
    size_t nleft = 0;
    for (size_t c = 0; c < cnt; c++) {
        uint32_t id = order[c];
        double nb = sign * bound[id];
        order[nleft] = id;
        nleft += !computed[id] && !(full && better(q, worst, nb)) && !(q->has_threshold && better(q, q->threshold, nb));
    }
    return nleft;
}

/* The coarse route of a dense top-k, or kNN from a given point: coarse
 * keys for every input (coarse_bounds), exact cell bounds and index-held
 * scores for only the T best, refined with the key of the (T+1)-th -- the
 * best of the rest -- as refine's guard. Returns 0 with *answered = 1 when
 * that proved the answer, *answered = 0 when the answer may need the rest
 * (then the caller's exact pass goes on from here: order[] permuted, known[]
 * cleared, what was computed in the heap); 1 when not taken (too few
 * candidates, or no finite margin); -1 / -2 errors. */
static int coarse_prefix(run *r, uint32_t *order, size_t ncand, double *bound, float *maival, uint8_t *computed,
                         double *es, uint8_t *known, int *answered)
{
    *answered = 0;
    size_t T = 4 * (size_t)(r->geo ? r->geo->slots : r->batch);
    if (T < 64)
        T = 64;
    if (2 * T >= ncand)
        return 1;
    int rc = coarse_bounds(r, bound);
    if (rc != 0)
        return rc;
    r->st->coarse_passes++;
    uint64_t rng = 0x6a09e667f3bcc909ull;
    size_t got;
#ifdef HAVE_COARSE
    if (select_keys(r->q, bound, T + 1, -1, order, &got, &rng) != 0)
#endif
        select_smallest(order, ncand, T + 1, bound, &rng);
    size_t m = 0; /* the largest of those T + 1: the best of the rest */
    for (size_t i = 1; i <= T; i++)
        if (key_lt(bound, order[m], order[i]))
            m = i;
    uint32_t sentinel = order[m];
    order[m] = order[T];
    order[T] = sentinel;
    const double guard = bound[sentinel];
    if (cell_bounds(r, order, T, bound, maival, NULL, es, known) != 0)
        return -1;
    /* the index-held scores among them: a known input's exact bound is its
     * score, so only the k best by (bound, id) can enter (as score_known) */
    uint32_t *kl = malloc(T * sizeof *kl);
    if (!kl) {
        seterr(r->err, r->errlen, "out of memory");
        return -1;
    }
    size_t nk = 0;
    for (size_t c = 0; c < T; c++) {
        kl[nk] = order[c];
        nk += known[order[c]];
        known[order[c]] = 0; /* as the exact pass wants it */
    }
    if (nk > r->q->k) {
        select_smallest(kl, nk, r->q->k, bound, &rng);
        nk = r->q->k;
    }
    for (size_t c = 0; c < nk; c++)
        if (!computed[kl[c]]) {
            eng_topk_push(r->h, kl[c], es[kl[c]]);
            computed[kl[c]] = 1;
            r->st->inputs_known++;
        }
    free(kl);
    rc = refine(r, order, keep_open(r, order, T, bound, computed), bound, computed, &guard);
    if (rc < 0)
        return rc;
    *answered = rc == 0;
    r->st->coarse_widened += !*answered;
    return 0;
}

static int run_bounds(run *r)
{
    if (mai_answer(r))
        return 0;
    eng_query *q = r->lq;
    const uint32_t n = q->n;
    const size_t ncand = r->ncand;
    int rc = -1;
    double t0 = now_ms();
    double *bound = malloc((size_t)n * sizeof *bound);
    uint32_t *order = malloc((ncand + 1) * sizeof *order); /* + 1: candidates_in_order writes one past */
    float *maival = malloc((size_t)n * sizeof *maival);
    /* Unpacking every id pays off unless few inputs are candidates. */
    int dense = ncand >= n / 16;
    uint8_t *pid8 = dense ? malloc((size_t)n + 1) : NULL;
    uint8_t *computed = calloc(n ? n : 1, 1);  /* per input: computed already */
    float *guessed = NULL;       /* kNN: the target as its cell guessed it */
    uint32_t *relaxed = NULL;    /* kNN: the candidates whose bounds relax_bounds left to compute */
    /* scores the index holds exactly (exact_neuron); not for cosine, whose
     * bound is not its score's arithmetic */
    int track = !is_cosine(q);
    double *es = track ? malloc((size_t)n * sizeof *es) : NULL;
    uint8_t *known = track ? calloc(n ? n : 1, 1) : NULL;
    if (!bound || !order || !maival || (dense && !pid8) || !computed || (track && (!es || !known))) {
        seterr(r->err, r->errlen, "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        maival[i] = NAN; /* NaN: no exact value (unknown, best bound) */
    r->coarse = coarse_ok(r, ncand);
    /* order[]: the candidates in id order, except where target_round's
     * coarse pass selects its forward's inputs into it (from the keys) */
    int ordered = !(q->kind == ENG_KNN && !q->target && r->coarse);
    if (ordered)
        candidates_in_order(q, order);
    /* the candidates that get cell bounds from the target: after the kNN
     * relaxation only those it left (the others' bounds already lose to the
     * k-th, which only gets better: they are not open either) */
    uint32_t *sub = order;
    size_t nsub = ncand;
    int ran = 0;
    if (q->kind == ENG_KNN && !q->target) {
        if (!(guessed = malloc(q->gsize * sizeof *guessed))) {
            seterr(r->err, r->errlen, "out of memory");
            goto done;
        }
        double inf0 = r->st->fetch.inference_ms;
        if ((rc = target_round(r, q, order, &ordered, ncand, bound, maival, pid8, computed, guessed, &ran)) != 0)
            goto done;
        if (!ran && !ordered) /* the target was known: the passes below need them all */
            candidates_in_order(q, order);
        t0 += r->st->fetch.inference_ms - inf0; /* cell_ms is the engine's own time, not the target's forward */
        rc = -1;
        if (ran) { /* order[] is target_round's now; the relaxation lists what is left */
            if (!(relaxed = malloc((ncand + 1) * sizeof *relaxed))) {
                seterr(r->err, r->errlen, "out of memory");
                goto done;
            }
            nsub = relax_bounds(r, q, guessed, bound, relaxed);
            sub = relaxed;
            r->st->inputs_relaxed = ncand - nsub;
        }
    }
    if (!ran && r->coarse && track) {
        int answered;
        double tc = now_ms(), inf0 = r->st->fetch.inference_ms;
        rc = coarse_prefix(r, order, ncand, bound, maival, computed, es, known, &answered);
        if (rc < 0)
            goto done;
        /* cell_ms: the engine's own time, not the forwards' */
        r->st->cell_ms += now_ms() - tc - (r->st->fetch.inference_ms - inf0);
        if (rc == 0 && answered)
            goto done;
        rc = -1;
        t0 = now_ms();
        candidates_in_order(q, order); /* ascending again for the exact pass */
    }
    if (cell_bounds(r, sub, nsub, bound, maival, nsub >= n / 16 ? pid8 : NULL, es, known) != 0)
        goto done;
    if (track)
        push_known(r, sub, nsub, es, known, computed);
    free(es);
    es = NULL;
    free(known);
    known = NULL;
    free(maival);
    maival = NULL;
    free(pid8);
    pid8 = NULL;
    r->st->cell_ms += now_ms() - t0;

    rc = refine(r, sub, keep_open(r, sub, nsub, bound, computed), bound, computed, NULL);
    if (rc != 0)
        goto done;
    rc = 0;
done:
    free(bound);
    free(order);
    free(maival);
    free(pid8);
    free(computed);
    free(es);
    free(known);
    free(guessed);
    free(relaxed);
    return rc;
}

/* ------------------------------------------------------------------ */

static int check_query(const eng_query *q, const eng_source *src, eng_result *out, size_t *nout,
                       char *err, size_t errlen)
{
    if (!q || !src || !src->fetch || !out || !nout) {
        seterr(err, errlen, "missing query, source or output");
        return -1;
    }
    if (q->kind != ENG_TOPK && q->kind != ENG_KNN) {
        seterr(err, errlen, "unknown query kind %d", q->kind);
        return -1;
    }
    if (q->kind == ENG_TOPK && (q->agg < ENG_SUM || q->agg > ENG_MIN)) {
        seterr(err, errlen, "unknown aggregation %d", q->agg);
        return -1;
    }
    if (q->kind == ENG_KNN && (q->metric < ENG_L2 || q->metric > ENG_COSINE)) {
        seterr(err, errlen, "unknown metric %d", q->metric);
        return -1;
    }
    if (q->method < ENG_AUTO || q->method > ENG_SCAN) {
        seterr(err, errlen, "unknown method %d", q->method);
        return -1;
    }
    if (q->k < 1) {
        seterr(err, errlen, "k must be >= 1");
        return -1;
    }
    if (q->gsize < 1 || !q->neurons) {
        seterr(err, errlen, "the neuron group is empty");
        return -1;
    }
    if (q->kind == ENG_KNN && !q->target && !(q->target_is_input && q->target_input < q->n)) {
        seterr(err, errlen, "kNN needs a target");
        return -1;
    }
    /* signed weights: a top-k weighted sum only */
    int signed_ok = q->kind == ENG_TOPK && q->agg == ENG_SUM;
    if (q->weights)
        for (size_t j = 0; j < q->gsize; j++)
            if (!isfinite(q->weights[j]) || (!signed_ok && q->weights[j] < 0.0)) {
                seterr(err, errlen, "weight %zu must be finite%s", j, signed_ok ? "" : " and >= 0");
                return -1;
            }
    return 0;
}

int eng_run(const eng_query *q, const npi_view *idx, const eng_source *src,
            eng_result *out, size_t *nout, eng_stats *st, char *err, size_t errlen)
{
    double t0 = now_ms();
    eng_stats local;
    if (!st)
        st = &local;
    memset(st, 0, sizeof *st);
    if (err && errlen)
        err[0] = '\0';
    if (nout)
        *nout = 0;
    if (check_query(q, src, out, nout, err, errlen) != 0)
        return -1;

    int method = q->method;
    if (method == ENG_AUTO)
        method = idx ? ENG_BOUNDS : ENG_SCAN;
    st->method = method;
    if ((method == ENG_NTA || method == ENG_BOUNDS) && !idx) {
        seterr(err, errlen, "method %s needs an index of the layer, and there is none",
               method == ENG_NTA ? "nta" : "bounds");
        return -1;
    }

    eng_query lq = *q;
    run r = {.q = &lq, .lq = &lq, .idx = method == ENG_SCAN ? NULL : idx, .src = src, .st = st,
             .batch = q->batch ? q->batch : ENG_DEFAULT_BATCH, .err = err, .errlen = errlen};
    int rc = -1;
    if (check_geometry(&src->geo, err, errlen) != 0)
        return -1;
    r.geo = src->geo.slots ? &src->geo : NULL;
    if (r.geo && r.batch < r.geo->slots)
        r.batch = r.geo->slots; /* a fetch holds at least one whole forward */
    if (r.idx)
        for (size_t j = 0; j < q->gsize; j++)
            if (check_view(&r, j) != 0)
                return -1;
    if (!q->allowed)
        r.ncand = q->n - (q->exclude >= 0 && q->exclude < (int64_t)q->n);
    else
        for (uint32_t id = 0; id < q->n; id++)
            r.ncand += is_candidate(q, id);
    if (r.ncand == 0) {
        st->elapsed_ms = now_ms() - t0;
        return 0;
    }
    size_t k = q->k < r.ncand ? q->k : r.ncand;
    r.h = eng_topk_new(k, q->kind == ENG_KNN);
    r.rows = malloc((size_t)r.batch * q->gsize * sizeof *r.rows);
    r.tbuf = malloc(q->gsize * sizeof *r.tbuf);
    if (!r.h || !r.rows || !r.tbuf) {
        seterr(err, errlen, "out of memory");
        goto done;
    }
    if (lq.kind == ENG_KNN && !lq.target && method != ENG_BOUNDS) {
        /* the target alone first (BOUNDS shares its forward, run_bounds) */
        if (err && errlen)
            err[0] = '\0';
        if (src->fetch(src->ctx, &lq.target_input, 1, lq.neurons, lq.gsize, r.tbuf, &st->fetch, err, errlen) != 0) {
            if (!err[0])
                seterr(err, errlen, "activation source failed");
            goto done;
        }
        st->inputs_fetched++;
        lq.target = r.tbuf;
    }
    if (method == ENG_SCAN)
        rc = run_scan(&r);
    else if (method == ENG_NTA)
        rc = run_nta(&r);
    else
        rc = run_bounds(&r);
    if (rc == 0)
        *nout = eng_topk_finish(r.h, out);
done:
    eng_topk_free(r.h);
    free(r.rows);
    free(r.tbuf);
    st->elapsed_ms = now_ms() - t0;
    return rc;
}
