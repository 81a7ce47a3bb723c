/* test_stream.c -- the stream builder core (builder_stream.h): every emitted
 * blob is checked against a brute-force ranking of the neuron's raw values
 * (MAI = exact first ranks with exact values, partition 0 = the MAI,
 * partition bounds enclose the members -- exactly, or at another input's
 * value with only MAI inputs between (builder_stream.h) --, partitions ordered by
 * value), over random layers of many value distributions and feeding
 * orders; the partitions' balance on uniform and ReLU-like data; emit order
 * and stopping; errors; memory accounting; the sample's ids.
 *
 * Every random case reseeds testrng.h with its own seed, printed in each
 * failure message with the case's parameters, so it reproduces alone. */
#include <check.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builder_stream.h"
#include "npi.h"

#include "testrng.h"

/* Per-element conditions: ck_assert_msg marks a point (a write to Check's
 * channel) on every call, too slow for checks over every input. */
#define REQ(cond, ...)                 \
    do {                               \
        if (!(cond))                   \
            ck_abort_msg(__VA_ARGS__); \
    } while (0)

/* ---- the reference ordering ------------------------------------------ */

/* < 0 when a ranks above b: value descending, NaN lowest, -0.0 just below
 * +0.0 (builder_stream.h); 0 for equal values (ties go by id). */
static int value_cmp(float a, float b)
{
    int an = isnan(a) != 0, bn = isnan(b) != 0;
    if (an || bn)
        return an - bn;
    if (a > b)
        return -1;
    if (a < b)
        return 1;
    if (a == 0.0f) {
        int as = signbit(a) != 0, bs = signbit(b) != 0;
        return as - bs;
    }
    return 0;
}

typedef struct ent {
    float v;
    uint32_t id;
} ent;

static int rank_cmp(const void *pa, const void *pb)
{
    const ent *a = pa, *b = pb;
    int c = value_cmp(a->v, b->v);
    if (c)
        return c;
    return a->id < b->id ? -1 : a->id > b->id;
}

static int float_rank_cmp(const void *pa, const void *pb)
{
    return value_cmp(*(const float *)pa, *(const float *)pb);
}

static float bound_value(float v)
{
    return isnan(v) ? -INFINITY : v;
}

static int same_bits(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

static uint32_t fbits(float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    return b;
}

/* ---- layers ---------------------------------------------------------- */

enum {
    K_UNIFORM,
    K_NORMAL,
    K_RELU,    /* 70-99% exact zeros */
    K_DEAD,    /* one value */
    K_FEW,     /* 2..6 distinct values */
    K_SPECIAL, /* NaN, +-inf, +-0.0 sprinkled into uniform values */
    K_ASC,     /* sorted ascending by input id: the best arrive last */
    K_DESC,    /* sorted descending by input id */
    K_KINDS
};
static const char *const kind_name[K_KINDS] = {"uniform", "normal", "relu", "dead",
                                               "few",     "special", "ascending", "descending"};

static double rng_normal(void)
{
    double u1 = rng_unit() + 1e-12, u2 = rng_unit();
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Fills neuron j's column of rows (n inputs, `neurons` wide) with values of
 * `kind`. */
static void fill_column(float *rows, uint32_t n, uint32_t neurons, uint32_t j, int kind)
{
    float *col = malloc((size_t)n * sizeof *col);
    ck_assert_ptr_nonnull(col);
    double scale = pow(10.0, rng_unit() * 6.0 - 3.0), off = (rng_unit() - 0.5) * scale;
    switch (kind) {
    case K_UNIFORM:
        for (uint32_t i = 0; i < n; i++)
            col[i] = (float)((rng_unit() * 2.0 - 1.0) * scale + off);
        break;
    case K_NORMAL:
        for (uint32_t i = 0; i < n; i++)
            col[i] = (float)(rng_normal() * scale + off);
        break;
    case K_RELU: {
        double zeros = 0.70 + 0.29 * rng_unit();
        for (uint32_t i = 0; i < n; i++)
            col[i] = rng_unit() < zeros ? 0.0f : (float)(-log(rng_unit() + 1e-12) * scale);
        break;
    }
    case K_DEAD: {
        float c;
        switch (rng_below(6)) {
        case 0: c = 0.0f; break;
        case 1: c = -0.0f; break;
        case 2: c = NAN; break;
        case 3: c = rng_below(2) ? INFINITY : -INFINITY; break;
        default: c = (float)off; break;
        }
        for (uint32_t i = 0; i < n; i++)
            col[i] = c;
        break;
    }
    case K_FEW: {
        float lv[6];
        uint32_t k = 2 + rng_below(5);
        for (uint32_t l = 0; l < k; l++)
            lv[l] = (float)((double)rng_below(11) - 5.0);
        for (uint32_t i = 0; i < n; i++)
            col[i] = lv[rng_below(k)];
        break;
    }
    case K_SPECIAL:
        for (uint32_t i = 0; i < n; i++) {
            uint32_t r = rng_below(100);
            col[i] = r == 0   ? NAN
                     : r == 1 ? -NAN
                     : r == 2 ? INFINITY
                     : r == 3 ? -INFINITY
                     : r < 7  ? -0.0f
                     : r < 10 ? 0.0f
                              : (float)((rng_unit() * 2.0 - 1.0) * scale);
        }
        break;
    default: { /* K_ASC, K_DESC: a uniform, ReLU-like or few-valued column sorted */
        uint32_t base = rng_below(3);
        for (uint32_t i = 0; i < n; i++)
            col[i] = base == 0   ? (float)(rng_unit() * scale + off)
                     : base == 1 ? (rng_below(10) < 8 ? 0.0f : (float)(rng_unit() * scale))
                                 : (float)rng_below(4);
        qsort(col, n, sizeof *col, float_rank_cmp); /* best first */
        if (kind == K_ASC)
            for (uint32_t i = 0; i < n / 2; i++) {
                float t = col[i];
                col[i] = col[n - 1 - i];
                col[n - 1 - i] = t;
            }
        break;
    }
    }
    for (uint32_t i = 0; i < n; i++)
        rows[(size_t)i * neurons + j] = col[i];
    free(col);
}

/* ---- running the core ------------------------------------------------- */

typedef struct sink {
    uint64_t neurons, next, calls, stop_at;
    int bad_order; /* out of order, repeated or out of range */
    uint8_t **blob;  /* copies, [neurons] */
    size_t *len;
} sink;

static void sink_init(sink *k, uint64_t neurons, uint64_t stop_at)
{
    memset(k, 0, sizeof *k);
    k->neurons = neurons;
    k->stop_at = stop_at;
    k->blob = calloc(neurons, sizeof *k->blob);
    k->len = calloc(neurons, sizeof *k->len);
    ck_assert(k->blob && k->len);
}

static void sink_free(sink *k)
{
    for (uint64_t j = 0; j < k->neurons; j++)
        free(k->blob[j]);
    free(k->blob);
    free(k->len);
}

static int collect(uint64_t neuron, const void *blob, size_t len, void *arg)
{
    sink *k = arg;
    k->calls++;
    if (neuron != k->next || neuron >= k->neurons || k->blob[neuron]) {
        k->bad_order++;
    } else {
        k->blob[neuron] = malloc(len ? len : 1); /* malloc: aligned for npi_decode */
        if (k->blob[neuron])
            memcpy(k->blob[neuron], blob, len);
        k->len[neuron] = len;
    }
    k->next = neuron + 1;
    return neuron == k->stop_at ? 1 : 0;
}

typedef struct cfg {
    uint32_t n, neurons, P, m, S;
    int threads, shuffle_sample;
} cfg;

/* Feeds the sample rows (in random pieces, in id order or shuffled), then
 * every input in random batches, and finishes into k. */
static void run_core(const cfg *c, const float *rows, sink *k, bstream **keep, const char *ctx)
{
    char err[256] = "";
    bstream *b = NULL;
    ck_assert_msg(bstream_new(c->n, c->neurons, c->P, c->m, c->S, &b, err, sizeof err) == 0, "%s: new: %s",
                  ctx, err);
    ck_assert_ptr_nonnull(b);
    if (c->threads > 1)
        bstream_set_threads(b, c->threads);
    if (c->S) {
        uint32_t *ord = malloc(c->S * sizeof *ord);
        float *srows = malloc((size_t)c->S * c->neurons * sizeof *srows);
        ck_assert(ord && srows);
        for (uint32_t s = 0; s < c->S; s++)
            ord[s] = s;
        if (c->shuffle_sample)
            for (uint32_t s = c->S - 1; s > 0; s--) {
                uint32_t r = rng_below(s + 1), t = ord[s];
                ord[s] = ord[r];
                ord[r] = t;
            }
        for (uint32_t s = 0; s < c->S; s++) {
            uint32_t id = bstream_sample_id(c->n, c->S, ord[s]);
            REQ(id < c->n, "%s: sample id %u of %u out of range", ctx, id, c->n);
            memcpy(srows + (size_t)s * c->neurons, rows + (size_t)id * c->neurons, c->neurons * sizeof *srows);
        }
        for (uint32_t done = 0; done < c->S;) {
            uint32_t left = c->S - done, cnt = 1 + rng_below(left < 200 ? left : 200);
            REQ(bstream_sample(b, srows + (size_t)done * c->neurons, cnt, err, sizeof err) == 0,
                "%s: sample %u+%u: %s", ctx, done, cnt, err);
            done += cnt;
        }
        free(srows);
        free(ord);
    }
    for (uint32_t first = 0; first < c->n;) {
        uint32_t cnt = 1 + rng_below(300);
        if (cnt > c->n - first)
            cnt = c->n - first;
        REQ(bstream_add(b, rows + (size_t)first * c->neurons, first, cnt, err, sizeof err) == 0,
            "%s: add %u+%u: %s", ctx, first, cnt, err);
        first += cnt;
    }
    sink_init(k, c->neurons, UINT64_MAX);
    int rc = bstream_finish(b, collect, k, err, sizeof err);
    ck_assert_msg(rc == 0, "%s: finish: %s", ctx, err);
    ck_assert_msg(k->bad_order == 0, "%s: %d emits out of order or repeated", ctx, k->bad_order);
    ck_assert_msg(k->calls == c->neurons && k->next == c->neurons, "%s: %llu emits for %u neurons", ctx,
                  (unsigned long long)k->calls, c->neurons);
    for (uint64_t j = 0; j < c->neurons; j++)
        REQ(k->blob[j] != NULL, "%s: neuron %llu not emitted (or no memory)", ctx, (unsigned long long)j);
    if (keep)
        *keep = b;
    else
        bstream_free(b);
}

/* ---- the brute-force check of one blob -------------------------------- */

typedef struct scratch {
    ent *e;
    uint8_t *in_mai;
    uint32_t *pid;
} scratch;

static void scratch_init(scratch *s, uint32_t n)
{
    s->e = malloc((size_t)n * sizeof *s->e);
    s->in_mai = malloc(n);
    s->pid = malloc((size_t)n * sizeof *s->pid);
    ck_assert(s->e && s->in_mai && s->pid);
}

static void scratch_free(scratch *s)
{
    free(s->e);
    free(s->in_mai);
    free(s->pid);
}

/* Partition bounds that break builder_stream.h's rule (they enclose the
 * members; a looser one is another input's value with nothing but MAI inputs
 * between it and the members) are counted
 * by kind and the test fails at its end (no_bound_defects), so that one run
 * shows every other check too. */
enum { D_UNSAFE, D_LOOSE_LO, D_LOOSE_HI, D_EMPTY, D_ZERO_SIGN, D_KINDS };
static const char *const defect_name[D_KINDS] = {
    "a member outside the bounds", "lower bound below the members' min past another input", "upper bound above the members' max past another input",
    "empty partition with bounds", "bound of the other zero's sign"};
static uint64_t defects[D_KINDS], neurons_checked;
static char first_defect[D_KINDS][700];

__attribute__((format(printf, 2, 3))) static void bound_defect(int kind, const char *fmt, ...)
{
    if (!defects[kind]++) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(first_defect[kind], sizeof first_defect[kind], fmt, ap);
        va_end(ap);
    }
}

static void no_bound_defects(const char *test)
{
    uint64_t d[D_KINDS];
    static char first[D_KINDS][700];
    for (int k = 0; k < D_KINDS; k++) {
        if (defects[k])
            printf("%s: %llu x %s over %llu neurons; first: %s\n", test, (unsigned long long)defects[k],
                   defect_name[k], (unsigned long long)neurons_checked, first_defect[k]);
        d[k] = defects[k]; /* reset: with CK_FORK=no the tests share them */
        memcpy(first[k], first_defect[k], sizeof first[k]);
        defects[k] = 0;
    }
    neurons_checked = 0;
    fflush(stdout);
    for (int k = 0; k < D_ZERO_SIGN; k++) /* the sign of a zero bound: a note only */
        ck_assert_msg(!d[k], "%s: %llu x %s; first: %s", test, (unsigned long long)d[k], defect_name[k], first[k]);
}

/* Checks neuron j's blob against its raw values; exact_m: mai_count must be
 * m. Fills pid_count[P] (members per partition) when given. */
static void verify_blob(const cfg *c, const float *rows, uint32_t j, const uint8_t *blob, size_t len,
                        int exact_m, scratch *s, uint32_t *pid_count, const char *ctx)
{
    const uint32_t n = c->n, P = c->P, D = c->neurons;
    npi_view v;
    REQ(npi_decode(blob, len, &v) == 0, "%s: npi_decode fails (len %zu)", ctx, len);
    REQ(v.n == n, "%s: header n %u, want %u", ctx, v.n, n);
    REQ(v.partitions == P, "%s: header partitions %u, want %u", ctx, v.partitions, P);
    REQ(v.bits == npi_bits(P), "%s: header bits %u, want %u", ctx, v.bits, npi_bits(P));
    const uint32_t mc = v.mai_count;
    neurons_checked++;
    REQ(mc <= c->m, "%s: mai_count %u > m %u", ctx, mc, c->m);
    if (exact_m)
        REQ(mc == c->m, "%s: mai_count %u, want m = %u (typical case)", ctx, mc, c->m);
    REQ(len == npi_blob_size(n, P, mc), "%s: blob length %zu, want %zu", ctx, len, npi_blob_size(n, P, mc));

    for (uint32_t i = 0; i < n; i++) {
        s->e[i].v = rows[(size_t)i * D + j];
        s->e[i].id = i;
    }
    qsort(s->e, n, sizeof *s->e, rank_cmp);

    /* the MAI: the first mc ranks, exact values, rank order */
    memset(s->in_mai, 0, n);
    for (uint32_t r = 0; r < mc; r++) {
        uint32_t id = v.mai_ids[r];
        float got = v.mai_values[r], want = s->e[r].v;
        REQ(id == s->e[r].id, "%s: MAI rank %u: id %u (value %a), want id %u (value %a)", ctx, r, id,
            id < n ? (double)rows[(size_t)id * D + j] : 0.0, s->e[r].id, (double)want);
        REQ(same_bits(got, want) || (isnan(got) && isnan(want)),
            "%s: MAI rank %u (id %u): value %a (0x%08x), want %a (0x%08x)", ctx, r, id, (double)got, fbits(got),
            (double)want, fbits(want));
        s->in_mai[id] = 1;
    }
    /* partition ids: 0 exactly for the MAI */
    for (uint32_t i = 0; i < n; i++) {
        uint32_t p = npi_pid(&v, i);
        s->pid[i] = p;
        if (s->in_mai[i])
            REQ(p == 0, "%s: MAI input %u has partition %u", ctx, i, p);
        else
            REQ(p >= 1 && p < P, "%s: input %u (value %a) has partition %u (of %u; MAI holds %u)", ctx, i,
                (double)rows[(size_t)i * D + j], p, P, mc);
    }
    /* bounds: per partition the first and last member in rank order */
    uint32_t first[NPI_MAX_PARTITIONS], last[NPI_MAX_PARTITIONS], cnt[NPI_MAX_PARTITIONS] = {0};
    for (uint32_t r = mc; r < n; r++) {
        uint32_t id = s->e[r].id, p = s->pid[id];
        if (!cnt[p]++)
            first[p] = r;
        last[p] = r;
    }
    for (uint32_t p = 1; p < P; p++) {
        float lo = v.lower[p], hi = v.upper[p];
        REQ(!isnan(lo) && !isnan(hi), "%s: partition %u bounds [%a, %a] hold NaN", ctx, p, (double)lo, (double)hi);
        if (!cnt[p]) {
            if (!same_bits(lo, INFINITY) || !same_bits(hi, -INFINITY))
                bound_defect(D_EMPTY, "%s: empty partition %u has bounds [%a, %a], want [inf, -inf]", ctx, p,
                             (double)lo, (double)hi);
            continue;
        }
        float wlo = bound_value(s->e[last[p]].v), whi = bound_value(s->e[first[p]].v);
        if (lo == wlo && hi == whi) {
            if (!same_bits(lo, wlo) || !same_bits(hi, whi)) /* equal as floats; -0.0 ranks below +0.0 */
                bound_defect(D_ZERO_SIGN, "%s: partition %u bounds [%a, %a], by rank [%a, %a] (sign of zero)", ctx,
                             p, (double)lo, (double)hi, (double)wlo, (double)whi);
            continue;
        }
        /* whose values the bounds are */
        uint32_t lo_id = UINT32_MAX, hi_id = UINT32_MAX;
        for (uint32_t i = 0; i < n; i++) {
            float x = bound_value(rows[(size_t)i * D + j]);
            if (x == lo && lo_id == UINT32_MAX)
                lo_id = i;
            if (x == hi && hi_id == UINT32_MAX)
                hi_id = i;
        }
        /* a looser bound is the contract for inner partitions (builder_stream.h):
         * it must be some input's value, and no input outside the MAI may lie
         * strictly between it and the members it bounds */
        int gap_lo = 0, gap_hi = 0;
        for (uint32_t r = last[p] + 1; r < n; r++) { /* the next lower value outside the MAI */
            float x = bound_value(s->e[r].v);
            if (s->in_mai[s->e[r].id] || !(x < wlo)) continue;
            gap_lo = x > lo;
            break;
        }
        for (uint32_t r = first[p]; r-- > 0;) { /* the next higher one */
            float x = bound_value(s->e[r].v);
            if (s->in_mai[s->e[r].id] || !(x > whi)) continue;
            gap_hi = x < hi;
            break;
        }
        for (int kind = D_UNSAFE; kind <= D_LOOSE_HI; kind++)
            if (kind == D_UNSAFE ? lo > wlo || hi < whi
                : kind == D_LOOSE_LO ? lo < wlo && (gap_lo || lo_id == UINT32_MAX)
                                     : hi > whi && (gap_hi || hi_id == UINT32_MAX))
                bound_defect(kind,
                             "%s: partition %u (%u members) bounds [%a, %a], want [%a, %a] (min id %u, max id %u); "
                             "the lower bound is input %u's value (partition %u), the upper input %u's (partition %u)",
                             ctx, p, cnt[p], (double)lo, (double)hi, (double)wlo, (double)whi, s->e[last[p]].id,
                             s->e[first[p]].id, lo_id, lo_id < n ? s->pid[lo_id] : 0, hi_id,
                             hi_id < n ? s->pid[hi_id] : 0);
    }
    /* partition 0, as npi_build writes it */
    if (mc > 0) {
        float whi = bound_value(s->e[0].v), wlo = bound_value(s->e[mc - 1].v);
        REQ(same_bits(v.upper[0], whi) && same_bits(v.lower[0], wlo),
            "%s: partition 0 bounds [%a, %a], want [%a, %a]", ctx, (double)v.lower[0], (double)v.upper[0],
            (double)wlo, (double)whi);
    } else {
        REQ(same_bits(v.lower[0], INFINITY) && same_bits(v.upper[0], -INFINITY),
            "%s: empty MAI, partition 0 bounds [%a, %a], want [inf, -inf]", ctx, (double)v.lower[0],
            (double)v.upper[0]);
    }
    /* order: every value of partition p >= every value of partition p+1,
     * i.e. along the ranks, each group of equal values lies in partitions
     * no lower than the previous group's highest */
    uint32_t prev_max = 1;
    for (uint32_t r = mc; r < n;) {
        uint32_t e = r + 1, gmin = s->pid[s->e[r].id], gmax = gmin;
        while (e < n && value_cmp(s->e[e].v, s->e[r].v) == 0) {
            uint32_t p = s->pid[s->e[e].id];
            gmin = p < gmin ? p : gmin;
            gmax = p > gmax ? p : gmax;
            e++;
        }
        REQ(gmin >= prev_max, "%s: value %a (rank %u, id %u) lies in partition %u, above a higher value's %u", ctx,
            (double)s->e[r].v, r, s->e[r].id, gmin, prev_max);
        prev_max = gmax;
        r = e;
    }
    if (pid_count)
        memcpy(pid_count, cnt, P * sizeof *cnt);
}

/* ---- the property test ------------------------------------------------ */

static const double ratios[4] = {0.0, 0.01, 0.03, 0.1};

/* One random case from `seed`; wide: 120..300 neurons, smaller n, mostly 2
 * threads (the core splits neurons over threads from 128 on). */
static void one_case(uint64_t seed, int wide)
{
    rng_seed(seed);
    cfg c;
    c.n = wide ? 512 + rng_below(1500) : 512 + rng_below(6000 - 512 + 1);
    c.neurons = wide ? 120 + rng_below(181) : 1 + rng_below(40);
    c.P = rng_below(10) == 0 ? 256 : 2 + rng_below(63);
    c.m = npi_mai_count(c.n, ratios[rng_below(4)]);
    uint32_t full = bstream_sample_count(c.n), sk = rng_below(10);
    c.S = sk == 0 ? 0 : sk == 1 ? 5 : sk == 2 ? 1 + rng_below(full) : full;
    c.threads = rng_below(wide ? 4 : 3) ? (wide ? 2 : 1) : (wide ? 1 : 2);
    c.shuffle_sample = rng_below(4) == 0;
    int *kind = malloc(c.neurons * sizeof *kind);
    float *rows = malloc((size_t)c.n * c.neurons * sizeof *rows);
    ck_assert(kind && rows);
    for (uint32_t j = 0; j < c.neurons; j++) {
        kind[j] = (int)rng_below(K_KINDS);
        fill_column(rows, c.n, c.neurons, j, kind[j]);
    }
    char ctx[256];
    snprintf(ctx, sizeof ctx, "seed=%llu wide=%d n=%u neurons=%u P=%u m=%u S=%u threads=%d",
             (unsigned long long)seed, wide, c.n, c.neurons, c.P, c.m, c.S, c.threads);
    sink k;
    run_core(&c, rows, &k, NULL, ctx);
    scratch s;
    scratch_init(&s, c.n);
    for (uint32_t j = 0; j < c.neurons; j++) {
        char nctx[320];
        snprintf(nctx, sizeof nctx, "%s neuron=%u kind=%s", ctx, j, kind[j] < K_KINDS ? kind_name[kind[j]] : "?");
        int typical = c.S == full && kind[j] != K_ASC && kind[j] != K_DESC;
        verify_blob(&c, rows, j, k.blob[j], k.len[j], typical, &s, NULL, nctx);
    }
    scratch_free(&s);
    sink_free(&k);
    free(rows);
    free(kind);
}

#define CASES_PER_TEST 80

START_TEST(test_property)
{
    /* _i: 4 loops of CASES_PER_TEST cases */
    for (int t = 0; t < CASES_PER_TEST; t++)
        one_case(1000 + (uint64_t)_i * CASES_PER_TEST + (uint64_t)t, 0);
    no_bound_defects("test_property");
}
END_TEST

START_TEST(test_property_wide)
{
    for (int t = 0; t < 12; t++)
        one_case(9000 + (uint64_t)t, 1);
    no_bound_defects("test_property_wide");
}
END_TEST

/* Fixed corner cases through the same check: P = 2 and 256, m = n, the
 * MAI holding almost everything, every neuron's kind. */
START_TEST(test_corners)
{
    static const struct {
        uint32_t n, P, m, S;
    } cs[] = {
        {512, 2, 0, 64},   {512, 2, 512, 64},  {512, 256, 0, 64},   {600, 256, 590, 75},
        {6000, 256, 600, 512}, {4096, 3, 1, 512}, {1000, 17, 999, 125}, {1000, 64, 30, 1000},
    };
    for (unsigned t = 0; t < sizeof cs / sizeof cs[0]; t++) {
        rng_seed(500 + t);
        cfg c = {cs[t].n, 2 * K_KINDS, cs[t].P, cs[t].m, cs[t].S, 1 + (int)(t & 1), (int)(t & 2)};
        float *rows = malloc((size_t)c.n * c.neurons * sizeof *rows);
        ck_assert_ptr_nonnull(rows);
        for (uint32_t j = 0; j < c.neurons; j++)
            fill_column(rows, c.n, c.neurons, j, (int)(j % K_KINDS));
        char ctx[256];
        snprintf(ctx, sizeof ctx, "corner %u (seed %u): n=%u neurons=%u P=%u m=%u S=%u", t, 500 + t, c.n, c.neurons,
                 c.P, c.m, c.S);
        sink k;
        run_core(&c, rows, &k, NULL, ctx);
        scratch s;
        scratch_init(&s, c.n);
        for (uint32_t j = 0; j < c.neurons; j++) {
            char nctx[320];
            snprintf(nctx, sizeof nctx, "%s neuron=%u kind=%s", ctx, j, kind_name[j % K_KINDS]);
            int kd = (int)(j % K_KINDS);
            verify_blob(&c, rows, j, k.blob[j], k.len[j],
                        c.S == bstream_sample_count(c.n) && kd != K_ASC && kd != K_DESC, &s, NULL, nctx);
        }
        scratch_free(&s);
        sink_free(&k);
        free(rows);
    }
    no_bound_defects("test_corners");
}
END_TEST

/* The partition search gives the same blobs, byte for byte, at every
 * vector level (bstream_simd): partition counts on both sides of the
 * AVX-512 register path's limit (63 cut slots) and its gather path, block
 * tails that are no multiple of a vector, every kind of column. The
 * default level is the one every other test here runs. */
START_TEST(test_simd_levels)
{
    static const uint32_t Ps[] = {2, 3, 16, 17, 32, 33, 64, 65, 128, 256};
    for (unsigned t = 0; t < sizeof Ps / sizeof Ps[0]; t++) {
        rng_seed(700 + t);
        cfg c = {2500 + rng_below(700), 2 * K_KINDS, Ps[t], 0, 0, 1 + (int)(t & 1), 0};
        c.m = npi_mai_count(c.n, 0.01);
        c.S = bstream_sample_count(c.n);
        float *rows = malloc((size_t)c.n * c.neurons * sizeof *rows);
        ck_assert_ptr_nonnull(rows);
        for (uint32_t j = 0; j < c.neurons; j++)
            fill_column(rows, c.n, c.neurons, j, (int)(j % K_KINDS));
        sink ref;
        for (int level = 2; level >= 0; level--) {
            char ctx[160];
            int eff = bstream_simd(level);
            snprintf(ctx, sizeof ctx, "simd level %d (in effect %d): n=%u P=%u m=%u S=%u", level, eff, c.n, c.P,
                     c.m, c.S);
            rng_seed(800 + t); /* the same batches at every level */
            sink k;
            run_core(&c, rows, level == 2 ? &ref : &k, NULL, ctx);
            if (level == 2)
                continue;
            for (uint32_t j = 0; j < c.neurons; j++)
                REQ(k.len[j] == ref.len[j] && memcmp(k.blob[j], ref.blob[j], k.len[j]) == 0,
                    "%s: neuron %u (%s) differs from the default level's blob", ctx, j, kind_name[j % K_KINDS]);
            sink_free(&k);
        }
        bstream_simd(2);
        sink_free(&ref);
        free(rows);
    }
}
END_TEST

/* The brute-force check itself against npi_build (exact, equi-depth) on the
 * same kinds of columns, save the one mixing -0.0 and +0.0 (npi_build ties
 * them): it must accept every blob, bounds included. */
START_TEST(test_checker_on_npi_build)
{
    rng_seed(600);
    for (int t = 0; t < 6; t++) {
        cfg c = {512 + rng_below(3000), K_KINDS, 2 + rng_below(255), 0, 0, 1, 0};
        c.m = npi_mai_count(c.n, ratios[t % 4]);
        float *rows = malloc((size_t)c.n * c.neurons * sizeof *rows), *col = malloc(c.n * sizeof *col);
        size_t bs = npi_blob_size(c.n, c.P, c.m);
        uint8_t *blob = malloc(bs);
        npi_scratch *ns = npi_scratch_new(c.n);
        ck_assert(rows && col && blob && ns);
        scratch s;
        scratch_init(&s, c.n);
        for (uint32_t j = 0; j < c.neurons; j++) {
            fill_column(rows, c.n, c.neurons, j, j == K_SPECIAL ? K_UNIFORM : (int)j);
            for (uint32_t i = 0; i < c.n; i++)
                col[i] = rows[(size_t)i * c.neurons + j];
            ck_assert_int_eq(npi_build(col, c.n, c.P, c.m, ns, blob), 0);
            char ctx[200];
            snprintf(ctx, sizeof ctx, "npi_build t=%d n=%u P=%u m=%u neuron=%u kind=%s", t, c.n, c.P, c.m, j,
                     kind_name[j]);
            verify_blob(&c, rows, j, blob, bs, 1, &s, NULL, ctx);
        }
        scratch_free(&s);
        npi_scratch_free(ns);
        free(blob);
        free(col);
        free(rows);
    }
    no_bound_defects("test_checker_on_npi_build");
}
END_TEST

/* ---- partition quality ------------------------------------------------ */

START_TEST(test_quality_uniform)
{
    const uint32_t n = 6000, neurons = 8, P = 16;
    for (int threads = 1; threads <= 2; threads++) {
        uint64_t seed = 77 + (uint64_t)threads;
        rng_seed(seed);
        cfg c = {n, neurons, P, npi_mai_count(n, 0.03), bstream_sample_count(n), threads, 0};
        ck_assert_uint_eq(c.m, 180);
        float *rows = malloc((size_t)n * neurons * sizeof *rows);
        ck_assert_ptr_nonnull(rows);
        for (size_t i = 0; i < (size_t)n * neurons; i++)
            rows[i] = (float)rng_unit();
        char ctx[200];
        snprintf(ctx, sizeof ctx, "quality uniform seed=%llu n=%u P=%u m=%u S=%u", (unsigned long long)seed, n, P,
                 c.m, c.S);
        sink k;
        run_core(&c, rows, &k, NULL, ctx);
        scratch s;
        scratch_init(&s, n);
        const double ideal = (double)(n - c.m) / (P - 1);
        for (uint32_t j = 0; j < neurons; j++) {
            uint32_t cnt[NPI_MAX_PARTITIONS];
            char nctx[260];
            snprintf(nctx, sizeof nctx, "%s neuron=%u", ctx, j);
            verify_blob(&c, rows, j, k.blob[j], k.len[j], 1, &s, cnt, nctx);
            for (uint32_t p = 1; p < P; p++)
                ck_assert_msg(cnt[p] >= 0.4 * ideal && cnt[p] <= 2.5 * ideal,
                              "%s: partition %u holds %u inputs, want %.0f..%.0f", nctx, p, cnt[p], 0.4 * ideal,
                              2.5 * ideal);
        }
        scratch_free(&s);
        sink_free(&k);
        free(rows);
    }
    no_bound_defects("test_quality_uniform");
}
END_TEST

START_TEST(test_quality_relu)
{
    const uint32_t n = 6000, neurons = 8, P = 16;
    uint64_t seed = 81;
    rng_seed(seed);
    cfg c = {n, neurons, P, npi_mai_count(n, 0.03), bstream_sample_count(n), 1, 0};
    float *rows = malloc((size_t)n * neurons * sizeof *rows);
    ck_assert_ptr_nonnull(rows);
    for (size_t i = 0; i < (size_t)n * neurons; i++)
        rows[i] = rng_unit() < 0.8 ? 0.0f : (float)(rng_unit() * 3.0 + 1e-3);
    char ctx[200];
    snprintf(ctx, sizeof ctx, "quality relu seed=%llu n=%u P=%u m=%u S=%u", (unsigned long long)seed, n, P, c.m, c.S);
    sink k;
    run_core(&c, rows, &k, NULL, ctx);
    scratch s;
    scratch_init(&s, n);
    for (uint32_t j = 0; j < neurons; j++) {
        char nctx[260];
        snprintf(nctx, sizeof nctx, "%s neuron=%u", ctx, j);
        verify_blob(&c, rows, j, k.blob[j], k.len[j], 1, &s, NULL, nctx);
        npi_view v;
        ck_assert_int_eq(npi_decode(k.blob[j], k.len[j], &v), 0);
        uint32_t zero_pid = UINT32_MAX, zeros = 0;
        uint8_t nonzero_in[NPI_MAX_PARTITIONS] = {0};
        for (uint32_t i = 0; i < n; i++) {
            uint32_t p = npi_pid(&v, i);
            if (rows[(size_t)i * neurons + j] == 0.0f) {
                zeros++;
                if (zero_pid == UINT32_MAX)
                    zero_pid = p;
                REQ(p == zero_pid, "%s: zero input %u in partition %u, an earlier zero in %u", nctx, i, p,
                    zero_pid);
            } else if (p != 0) {
                nonzero_in[p] = 1;
            }
        }
        ck_assert_msg(zeros > n / 2 && zero_pid >= 1, "%s: %u zeros, partition %u", nctx, zeros, zero_pid);
        ck_assert_msg(!nonzero_in[zero_pid], "%s: the zeros' partition %u holds non-zero values too", nctx,
                      zero_pid);
        uint32_t spread = 0;
        for (uint32_t p = 1; p < P; p++)
            spread += nonzero_in[p];
        ck_assert_msg(spread >= 8, "%s: non-zero values over %u partitions, want >= 8", nctx, spread);
    }
    scratch_free(&s);
    sink_free(&k);
    free(rows);
    no_bound_defects("test_quality_relu");
}
END_TEST

/* ---- emit stopping ---------------------------------------------------- */

static void stop_case(uint32_t n, uint32_t neurons, uint64_t stop_at, int threads)
{
    rng_seed(300 + stop_at);
    cfg c = {n, neurons, 8, npi_mai_count(n, 0.03), bstream_sample_count(n), threads, 0};
    float *rows = malloc((size_t)n * neurons * sizeof *rows);
    ck_assert_ptr_nonnull(rows);
    for (uint32_t j = 0; j < neurons; j++)
        fill_column(rows, n, neurons, j, (int)(j % K_KINDS));
    char err[256] = "";
    bstream *b = NULL;
    ck_assert_int_eq(bstream_new(n, neurons, c.P, c.m, c.S, &b, err, sizeof err), 0);
    bstream_set_threads(b, threads);
    float *srows = malloc((size_t)c.S * neurons * sizeof *srows);
    ck_assert_ptr_nonnull(srows);
    for (uint32_t s = 0; s < c.S; s++)
        memcpy(srows + (size_t)s * neurons, rows + (size_t)bstream_sample_id(n, c.S, s) * neurons,
               neurons * sizeof *srows);
    ck_assert_int_eq(bstream_sample(b, srows, c.S, err, sizeof err), 0);
    ck_assert_int_eq(bstream_add(b, rows, 0, n, err, sizeof err), 0);
    sink k;
    sink_init(&k, neurons, stop_at);
    err[0] = 0;
    ck_assert_int_eq(bstream_finish(b, collect, &k, err, sizeof err), -1);
    ck_assert_str_eq(err, "stopped");
    ck_assert_uint_eq(k.calls, stop_at + 1); /* neurons 0..stop_at, nothing after */
    ck_assert_uint_eq(k.next, stop_at + 1);
    ck_assert_int_eq(k.bad_order, 0);
    /* what was emitted is still right */
    scratch s;
    scratch_init(&s, n);
    for (uint64_t j = 0; j <= stop_at; j++) {
        char ctx[200];
        snprintf(ctx, sizeof ctx, "stop at %llu: n=%u neurons=%u neuron=%llu", (unsigned long long)stop_at, n,
                 neurons, (unsigned long long)j);
        verify_blob(&c, rows, (uint32_t)j, k.blob[j], k.len[j], 0, &s, NULL, ctx);
    }
    scratch_free(&s);
    sink_free(&k);
    bstream_free(b);
    free(srows);
    free(rows);
}

START_TEST(test_emit_stops)
{
    stop_case(1000, 40, 5, 1);
    stop_case(1000, 40, 0, 2);
    stop_case(800, 300, 270, 2); /* past the first 256 neurons */
    stop_case(800, 300, 299, 1); /* the last one: still "stopped" */
    no_bound_defects("test_emit_stops");
}
END_TEST

/* ---- errors ----------------------------------------------------------- */

static int count_emit(uint64_t neuron, const void *blob, size_t len, void *arg)
{
    (void)neuron, (void)blob, (void)len;
    (*(int *)arg)++;
    return 0;
}

#define EXPECT_FAIL(call)                                                                \
    do {                                                                                 \
        err[0] = 0;                                                                      \
        ck_assert_int_eq((call), -1);                                                    \
        ck_assert_msg(err[0] != 0, "no message from %s", #call);                         \
    } while (0)

START_TEST(test_errors)
{
    char err[256];
    bstream *b = NULL;
    const uint32_t n = 1000, D = 3;
    float *rows = calloc((size_t)n * D, sizeof *rows);
    ck_assert_ptr_nonnull(rows);
    for (size_t i = 0; i < (size_t)n * D; i++)
        rows[i] = (float)(i % 97);

    /* bad parameters */
    EXPECT_FAIL(bstream_new(n, D, 1, 10, 100, &b, err, sizeof err));
    ck_assert_ptr_null(b);
    EXPECT_FAIL(bstream_new(n, D, 257, 10, 100, &b, err, sizeof err));
    ck_assert_ptr_null(b);
    EXPECT_FAIL(bstream_new(n, D, 16, n + 1, 100, &b, err, sizeof err));
    ck_assert_ptr_null(b);
    EXPECT_FAIL(bstream_new(n, D, 16, 10, n + 1, &b, err, sizeof err));
    ck_assert_ptr_null(b);
    /* the limits themselves are fine */
    ck_assert_int_eq(bstream_new(n, D, 2, n, n, &b, err, sizeof err), 0);
    bstream_free(b);
    b = NULL;
    ck_assert_int_eq(bstream_new(n, D, 256, 0, 0, &b, err, sizeof err), 0);
    bstream_free(b);
    b = NULL;

    /* sample rows: at most `samples`, before the first add */
    ck_assert_int_eq(bstream_new(n, D, 4, 10, 10, &b, err, sizeof err), 0);
    ck_assert_int_eq(bstream_sample(b, rows, 6, err, sizeof err), 0);
    EXPECT_FAIL(bstream_sample(b, rows, 5, err, sizeof err)); /* 11 > 10 */
    ck_assert_int_eq(bstream_sample(b, rows, 4, err, sizeof err), 0); /* exactly 10 */
    EXPECT_FAIL(bstream_sample(b, rows, 1, err, sizeof err));
    /* inputs in order */
    EXPECT_FAIL(bstream_add(b, rows, 1, 10, err, sizeof err)); /* skips input 0 */
    ck_assert_int_eq(bstream_add(b, rows, 0, 10, err, sizeof err), 0);
    EXPECT_FAIL(bstream_add(b, rows, 0, 10, err, sizeof err));  /* again from 0 */
    EXPECT_FAIL(bstream_add(b, rows, 11, 10, err, sizeof err)); /* skips input 10 */
    EXPECT_FAIL(bstream_add(b, rows, 9, 10, err, sizeof err));  /* overlaps */
    EXPECT_FAIL(bstream_add(b, rows, 10, n, err, sizeof err));  /* past N */
    ck_assert_int_eq(bstream_add(b, rows + 10 * D, 10, 490, err, sizeof err), 0);
    EXPECT_FAIL(bstream_sample(b, rows, 1, err, sizeof err)); /* after the pass began */
    /* finish before all N */
    int calls = 0;
    EXPECT_FAIL(bstream_finish(b, count_emit, &calls, err, sizeof err));
    ck_assert_int_eq(calls, 0);
    ck_assert_int_eq(bstream_add(b, rows + 500 * D, 500, 500, err, sizeof err), 0);
    ck_assert_msg(bstream_finish(b, count_emit, &calls, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(calls, (int)D);
    bstream_free(b);

    /* a sample row after the first add, with a sample room left */
    ck_assert_int_eq(bstream_new(n, D, 8, 10, 100, &b, err, sizeof err), 0);
    ck_assert_int_eq(bstream_sample(b, rows, 50, err, sizeof err), 0);
    ck_assert_int_eq(bstream_add(b, rows, 0, 1, err, sizeof err), 0);
    EXPECT_FAIL(bstream_sample(b, rows, 1, err, sizeof err));
    bstream_free(b);
    free(rows);
}
END_TEST

/* ---- memory accounting ------------------------------------------------ */

START_TEST(test_bytes)
{
    static const struct {
        uint32_t n, neurons, P, m, S;
        int threads;
    } cs[] = {
        {1000, 3, 16, 30, 125, 1},    {6000, 40, 256, 600, 512, 1}, {600, 300, 2, 0, 0, 2},
        {5000, 1, 64, 50, 5, 1},      {2048, 260, 17, 61, 256, 2},  {512, 1000, 8, 512, 64, 2},
    };
    for (unsigned t = 0; t < sizeof cs / sizeof cs[0]; t++) {
        rng_seed(700 + t);
        cfg c = {cs[t].n, cs[t].neurons, cs[t].P, cs[t].m, cs[t].S, cs[t].threads, 0};
        float *rows = malloc((size_t)c.n * c.neurons * sizeof *rows);
        ck_assert_ptr_nonnull(rows);
        for (uint32_t j = 0; j < c.neurons; j++)
            fill_column(rows, c.n, c.neurons, j, (int)(j % K_KINDS));
        char ctx[200];
        snprintf(ctx, sizeof ctx, "bytes %u: n=%u neurons=%u P=%u m=%u S=%u", t, c.n, c.neurons, c.P, c.m, c.S);
        sink k;
        bstream *b = NULL;
        run_core(&c, rows, &k, &b, ctx);
        size_t peak = bstream_peak_bytes(b), bound = bstream_bytes(c.n, c.neurons, c.P, c.m, c.S);
        ck_assert_msg(peak <= bound, "%s: peak %zu > bstream_bytes %zu", ctx, peak, bound);
        /* at least every neuron's id bits and the sample's values */
        size_t ids = (size_t)c.neurons * (((size_t)c.n * npi_bits(c.P) + 7) / 8);
        ck_assert_msg(peak >= ids, "%s: peak %zu < the id arrays' %zu", ctx, peak, ids);
        ck_assert_msg(peak >= (size_t)c.neurons * c.S * sizeof(float), "%s: peak %zu < the sample's %zu", ctx,
                      peak, (size_t)c.neurons * c.S * sizeof(float));
        bstream_free(b);
        sink_free(&k);
        free(rows);
    }
}
END_TEST

/* ---- the sample ------------------------------------------------------- */

START_TEST(test_sample_ids)
{
    static const uint32_t cs[][2] = {{512, 64},   {1000, 125},   {6000, 512},       {70000, 512}, {513, 512},
                                     {100, 100},  {7, 3},        {1, 1},            {999, 1},     {4000000000u, 512},
                                     {1000003, 512}, {4096, 4096}};
    for (unsigned t = 0; t < sizeof cs / sizeof cs[0]; t++) {
        uint32_t n = cs[t][0], S = cs[t][1], ceil_gap = (n + S - 1) / S;
        uint32_t prev = 0;
        for (uint32_t s = 0; s < S; s++) {
            uint32_t id = bstream_sample_id(n, S, s);
            REQ(id < n, "n=%u S=%u: id %u of sample %u out of range", n, S, id, s);
            if (s == 0)
                REQ(id <= ceil_gap, "n=%u S=%u: first id %u, not spread from 0", n, S, id);
            else
                REQ(id > prev && id - prev <= ceil_gap + 1 && id - prev + 1 >= n / S,
                    "n=%u S=%u: sample %u id %u after %u (gap ~%u)", n, S, s, id, prev, n / S);
            prev = id;
        }
        REQ(prev + 1 + ceil_gap >= n, "n=%u S=%u: last id %u, not spread to n", n, S, prev);
    }
}
END_TEST

START_TEST(test_sample_count)
{
    for (uint32_t n = 0; n < 20000; n++) {
        uint32_t c = bstream_sample_count(n), want = n < 512 ? 0 : n / 8 < 512 ? n / 8 : 512;
        REQ(c <= n / 8 && c <= 512, "n=%u: %u samples", n, c);
        REQ(c == want, "n=%u: %u samples, want %u", n, c, want);
    }
    static const uint32_t big[] = {70000, 1000000, 4000000000u, UINT32_MAX};
    for (unsigned t = 0; t < 4; t++)
        ck_assert_uint_eq(bstream_sample_count(big[t]), 512);
}
END_TEST

/* The probe eager layers scale index costs by (eager.h) runs the core to
 * the end on either thread count and times it. */
START_TEST(test_probe)
{
    for (int threads = 1; threads <= 2; threads++) {
        double ms = bstream_probe_ms(threads);
        ck_assert_msg(ms > 0 && ms < 60000, "threads %d: %g ms", threads, ms);
    }
}
END_TEST

int main(void)
{
    Suite *su = suite_create("stream");
    TCase *tc = tcase_create("stream");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_sample_count);
    tcase_add_test(tc, test_sample_ids);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_checker_on_npi_build);
    tcase_add_test(tc, test_corners);
    tcase_add_test(tc, test_simd_levels);
    tcase_add_loop_test(tc, test_property, 0, 4);
    tcase_add_test(tc, test_property_wide);
    tcase_add_test(tc, test_quality_uniform);
    tcase_add_test(tc, test_quality_relu);
    tcase_add_test(tc, test_emit_stops);
    tcase_add_test(tc, test_bytes);
    tcase_add_test(tc, test_probe);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
