/* test_engine.c -- every query method against an independent brute force.
 *
 * A synthetic activation source serves an N x D matrix (fixed-seed PRNG);
 * indexes are built with npi_build from the same columns. For thousands of
 * random cases (sizes, value distributions, group sizes, k, partitions, MAI
 * ratios, aggregations, metrics, weights, filters, targets, batch sizes) the
 * answer of SCAN, NTA, BOUNDS and AUTO must equal, id for id and value for
 * value, the brute force below, which scores every candidate with its own
 * loops and sorts by (value, id). The source also checks that no method asks
 * for a non-candidate or for the same input twice.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
#include <sys/mman.h>

#include "engine.h"
#include "npi.h"

/* ---- deterministic generator ------------------------------------------ */

static uint64_t rng_state;
static void rng_seed(uint64_t s) { rng_state = s * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull; }
static uint32_t rng_u32(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545f4914f6cdd1dull) >> 32);
}
static uint32_t rng_below(uint32_t n) { return n ? rng_u32() % n : 0; }
static double rng_unit(void) { return rng_u32() / 4294967296.0; }
static double rng_normal(void)
{
    double s = 0;
    for (int i = 0; i < 6; i++)
        s += rng_unit();
    return (s - 3.0) * 1.41;
}

/* ---- datasets ---------------------------------------------------------- */

enum dist {
    D_CONT,     /* continuous, both signs */
    D_TIES,     /* values from {0, 1, 2} (and -0.0) */
    D_ZEROCOLS, /* continuous, but some neurons all zero */
    D_NEG,      /* negative only */
    D_RELU,     /* about half zeros, rest positive */
    D_LARGE,    /* magnitudes from 1e-30 to 1e30 */
    D_NASTY,    /* continuous with NaN, +-inf and -0.0 sprinkled in */
    D_MIXED,    /* each neuron its own distribution of the above */
    D_COUNT
};
static const char *dist_name[D_COUNT] = {"cont", "ties", "zerocols", "neg",
                                         "relu", "large", "nasty", "mixed"};

typedef struct ds {
    uint32_t n, d, P, m;
    float *mat;        /* n x d, row-major: mat[i*d + j] */
    uint32_t **blobs;  /* per neuron */
    npi_view *views;
} ds;

static float gen_value(int dist, int col_zero)
{
    switch (dist) {
    case D_CONT:
        return (float)rng_normal();
    case D_TIES: {
        uint32_t r = rng_below(7);
        return r == 6 ? -0.0f : (float)(r % 3);
    }
    case D_ZEROCOLS:
        return col_zero ? 0.0f : (float)rng_normal();
    case D_NEG:
        return (float)(-1.0 - 99.0 * rng_unit());
    case D_RELU: {
        double v = rng_normal();
        return v > 0 ? (float)v : 0.0f;
    }
    case D_LARGE: {
        double mag = pow(10.0, (double)rng_below(61) - 30.0) * (0.5 + rng_unit());
        return (float)(rng_below(2) ? mag : -mag);
    }
    default: {
        uint32_t r = rng_below(100);
        if (r < 3)
            return NAN;
        if (r < 5)
            return INFINITY;
        if (r < 7)
            return -INFINITY;
        if (r < 10)
            return -0.0f;
        return (float)rng_normal();
    }
    }
}

static void ds_make(ds *s, uint32_t n, uint32_t d, int dist)
{
    memset(s, 0, sizeof *s);
    s->n = n;
    s->d = d;
    s->mat = malloc((size_t)n * d * sizeof *s->mat);
    ck_assert_ptr_nonnull(s->mat);
    for (uint32_t j = 0; j < d; j++) {
        int cd = dist == D_MIXED ? (int)rng_below(D_MIXED) : dist;
        int zero = rng_below(3) == 0;
        for (uint32_t i = 0; i < n; i++)
            s->mat[(size_t)i * d + j] = gen_value(cd, zero);
    }
}

static void ds_index(ds *s, uint32_t P, double ratio)
{
    s->P = P;
    s->m = npi_mai_count(s->n, ratio);
    s->blobs = calloc(s->d, sizeof *s->blobs);
    s->views = calloc(s->d, sizeof *s->views);
    float *col = malloc((s->n ? s->n : 1) * sizeof *col);
    npi_scratch *sc = npi_scratch_new(s->n);
    ck_assert(s->blobs && s->views && col && sc);
    size_t len = npi_blob_size(s->n, P, s->m);
    for (uint32_t j = 0; j < s->d; j++) {
        for (uint32_t i = 0; i < s->n; i++)
            col[i] = s->mat[(size_t)i * s->d + j];
        s->blobs[j] = malloc(len);
        ck_assert_ptr_nonnull(s->blobs[j]);
        ck_assert_int_eq(npi_build(col, s->n, P, s->m, sc, s->blobs[j]), 0);
        ck_assert_int_eq(npi_decode(s->blobs[j], len, &s->views[j]), 0);
    }
    npi_scratch_free(sc);
    free(col);
}

static void ds_free(ds *s)
{
    if (s->blobs)
        for (uint32_t j = 0; j < s->d; j++)
            free(s->blobs[j]);
    free(s->blobs);
    free(s->views);
    free(s->mat);
}

/* ---- the synthetic activation source ----------------------------------- */

/* A forward geometry for the source (engine.h): slots 0 = none. Random
 * cases draw one; run_and_compare hands it to the engine. */
static uint16_t geo_class[64];
static uint32_t geo_count[ENG_MAX_CLASSES];
static eng_geometry test_geo;

/* slots, and the pattern of classes: 0 one class, 1 the 0-5/6-11/12-15 of
 * every 16 measured on the project's CPUs, 2 random classes. */
static void set_geometry(uint32_t slots, int pattern, uint64_t offset)
{
    memset(&test_geo, 0, sizeof test_geo);
    memset(geo_count, 0, sizeof geo_count);
    if (!slots)
        return;
    uint32_t nclass = pattern == 0 ? 1 : pattern == 1 ? 3 : 1 + rng_below(5);
    for (uint32_t p = 0; p < slots; p++) {
        uint32_t c = pattern == 0 ? 0 : pattern == 1 ? (p % 16 < 6 ? 0 : p % 16 < 12 ? 1 : 2) : rng_below(nclass);
        if (p < nclass)
            c = p; /* every class has a slot */
        geo_class[p] = (uint16_t)c;
        geo_count[c]++;
    }
    uint32_t used = 0;
    for (uint32_t c = 0; c < ENG_MAX_CLASSES; c++)
        if (geo_count[c])
            used = c + 1;
    test_geo = (eng_geometry){.slots = slots, .nclass = used, .class_of = geo_class,
                              .class_slots = geo_count, .id_offset = offset};
}

static uint32_t geo_class_of(uint32_t id)
{
    return geo_class[((uint64_t)id + test_geo.id_offset) % test_geo.slots];
}

typedef struct synth {
    const ds *s;
    const eng_query *q;   /* to check that only candidates are asked for */
    uint32_t *count;      /* per input: times fetched in this query */
    uint64_t fetched;
    uint64_t calls;
    uint64_t bad;         /* non-candidates, repeats, bad ids or neurons */
    uint64_t fail_call;   /* fail on this call (1-based), 0 = never */
    uint64_t cancel_call; /* set *cancel on this call, 0 = never */
    volatile int *cancel;
    /* with test_geo: the forwards the fetches cost, and how many of them
     * left a slot empty while a candidate of its class was still not
     * computed (full_check: count those). With kth_query set, only a
     * candidate that can still be in the answer counts: its exact value
     * (under kth_query, the query as brute force saw it) ties or beats kth,
     * the answer's last value -- its bound does too, so no bound rules it out. */
    uint64_t forwards, unfilled;
    int full_check;
    const struct eng_query *kth_query;
    double kth;
} synth;

static double bf_value(const eng_query *q, const float *row);

static int could_win(const synth *y, uint32_t id)
{
    if (!y->kth_query)
        return 1;
    double v = bf_value(y->kth_query, y->s->mat + (size_t)id * y->s->d);
    return y->kth_query->kind == ENG_KNN ? v <= y->kth : v >= y->kth;
}

static int synth_fetch(void *ctx, const uint32_t *ids, size_t n, const uint32_t *neurons,
                       size_t m, float *out, eng_fetch_stats *st, char *err, size_t errlen)
{
    synth *y = ctx;
    y->calls++;
    if (y->fail_call && y->calls == y->fail_call) {
        snprintf(err, errlen, "synthetic failure at call %llu", (unsigned long long)y->calls);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t id = ids[i];
        if (id >= y->s->n) {
            y->bad++;
            continue;
        }
        /* a target the engine computes itself is fetched (once more when it
         * is a candidate too, NTA and SCAN fetch it alone first) */
        int is_target = y->q && y->q->target_is_input && id == y->q->target_input;
        if (y->count && ++y->count[id] > 1u + (uint32_t)is_target)
            y->bad++;
        if (y->q && !is_target && ((int64_t)id == y->q->exclude || (y->q->allowed && !y->q->allowed[id])))
            y->bad++;
        for (size_t j = 0; j < m; j++) {
            if (neurons[j] >= y->s->d) {
                y->bad++;
                continue;
            }
            out[i * m + j] = y->s->mat[(size_t)id * y->s->d + neurons[j]];
        }
    }
    y->fetched += n;
    st->computed += n;
    if (test_geo.slots && n) {
        uint32_t count[ENG_MAX_CLASSES] = {0};
        uint64_t fw = 0;
        for (size_t i = 0; i < n; i++)
            count[geo_class_of(ids[i])]++;
        for (uint32_t c = 0; c < test_geo.nclass; c++) {
            uint64_t f = (count[c] + geo_count[c] - 1) / geo_count[c];
            if (f > fw)
                fw = f;
        }
        y->forwards += fw;
        for (uint32_t c = 0; y->full_check && c < test_geo.nclass; c++) {
            if (fw * geo_count[c] == count[c])
                continue;
            for (uint32_t id = 0; id < y->s->n; id++) /* a candidate of class c not computed yet? */
                if (geo_class_of(id) == c && !y->count[id] && (int64_t)id != y->q->exclude &&
                    (!y->q->allowed || y->q->allowed[id]) && could_win(y, id)) {
                    y->unfilled++;
                    break;
                }
        }
    }
    if (y->cancel_call && y->calls == y->cancel_call)
        *y->cancel = 1;
    return 0;
}

/* ---- brute force ----------------------------------------------------- */

/* The definition of server/engine/README.md, written out directly: any NaN in
 * the computation makes the input the worst possible. */
static double bf_value(const eng_query *q, const float *row)
{
    size_t g = q->gsize;
    if (q->kind == ENG_TOPK) {
        int wsum = q->weights && (q->agg == ENG_SUM || q->agg == ENG_MEAN);
        double acc = q->agg == ENG_MAX ? -INFINITY : q->agg == ENG_MIN ? INFINITY : 0.0;
        for (size_t j = 0; j < g; j++) {
            double x = row[q->neurons[j]];
            if (isnan(x))
                return -INFINITY;
            if (q->agg == ENG_MAX) {
                if (x > acc)
                    acc = x;
            } else if (q->agg == ENG_MIN) {
                if (x < acc)
                    acc = x;
            } else {
                acc += wsum ? q->weights[j] * x : x;
            }
        }
        if (q->agg == ENG_MEAN)
            acc /= (double)g;
        return isnan(acc) ? -INFINITY : acc;
    }
    if (q->metric == ENG_COSINE) {
        /* 1 - cos: the products rounded one by one, summed in group order */
        double dot = 0.0, nx = 0.0, nt = 0.0;
        for (size_t j = 0; j < g; j++) {
            double w = q->weights ? q->weights[j] : 1.0;
            double x = row[q->neurons[j]], t = q->target[j];
            dot += w * (x * t);
            nx += w * (x * x);
            nt += w * (t * t);
        }
        if (isnan(dot) || isnan(nx) || isnan(nt))
            return INFINITY;
        if (nx == 0.0 || nt == 0.0)
            return 1.0;
        double c = 1.0 - dot / (sqrt(nx) * sqrt(nt));
        return isnan(c) || isinf(c) ? INFINITY : c;
    }
    double acc = 0.0;
    for (size_t j = 0; j < g; j++) {
        double d = (double)row[q->neurons[j]] - (double)q->target[j];
        double a = fabs(d);
        double t = q->metric == ENG_L2 ? a * a : a;
        if (q->weights)
            t = q->weights[j] * t;
        if (isnan(t))
            return INFINITY;
        if (q->metric == ENG_LINF) {
            if (t > acc)
                acc = t;
        } else {
            acc += t;
        }
    }
    if (q->metric == ENG_L2)
        acc = sqrt(acc);
    return isnan(acc) ? INFINITY : acc;
}

static int bf_kind;
static int bf_cmp(const void *pa, const void *pb)
{
    const eng_result *a = pa, *b = pb;
    if (a->value != b->value) {
        if (bf_kind == ENG_KNN)
            return a->value < b->value ? -1 : 1;
        return a->value > b->value ? -1 : 1;
    }
    return a->input < b->input ? -1 : a->input > b->input;
}

static size_t brute_force(const ds *s, const eng_query *q, eng_result *out)
{
    size_t c = 0;
    for (uint32_t i = 0; i < s->n; i++) {
        if ((int64_t)i == q->exclude || (q->allowed && !q->allowed[i]))
            continue;
        out[c].input = i;
        out[c].value = bf_value(q, s->mat + (size_t)i * s->d);
        c++;
    }
    bf_kind = q->kind;
    qsort(out, c, sizeof *out, bf_cmp);
    return c < q->k ? c : q->k;
}

/* ---- one query, every method -------------------------------------------- */

static const char *method_name[] = {"auto", "nta", "bounds", "scan"};

/* Totals over every test, in shared memory so that forked tests add to them. */
typedef struct totals {
    uint64_t queries, runs, fetched[4];
    uint64_t coarse, widened; /* BOUNDS runs that took the coarse pass, and widened after it */
} totals;
static totals *T;

/* Runs q with `method` and compares with the expectation; returns fetches. */
static uint64_t last_known; /* inputs_known of the last run_and_compare */

static uint64_t run_and_compare(const ds *s, eng_query *q, int method, const npi_view *gv,
                                const eng_result *want, size_t nwant, const char *label)
{
    size_t cap = q->k < s->n ? q->k : s->n;
    eng_result *got = malloc((cap ? cap : 1) * sizeof *got);
    uint32_t *count = calloc(s->n ? s->n : 1, sizeof *count);
    ck_assert(got && count);
    synth y = {.s = s, .q = q, .count = count};
    eng_source src = {&y, synth_fetch, test_geo};
    eng_stats st;
    char err[256] = "";
    size_t nout = 12345;
    q->method = method;
    int rc = eng_run(q, gv, &src, got, &nout, &st, err, sizeof err);
    ck_assert_msg(rc == 0, "%s method=%s: rc %d (%s)", label, method_name[method], rc, err);
    ck_assert_msg(nout == nwant, "%s method=%s: %zu results, want %zu", label,
                  method_name[method], nout, nwant);
    /* one assertion per run: Check logs every assertion it evaluates */
    size_t bad = 0;
    while (bad < nwant && got[bad].input == want[bad].input && got[bad].value == want[bad].value)
        bad++;
    ck_assert_msg(bad == nwant, "%s method=%s: rank %zu is (%u, %.17g), want (%u, %.17g)", label,
                  method_name[method], bad, bad < nwant ? got[bad].input : 0,
                  bad < nwant ? got[bad].value : 0.0, bad < nwant ? want[bad].input : 0,
                  bad < nwant ? want[bad].value : 0.0);
    ck_assert_msg(y.bad == 0, "%s method=%s: %llu bad fetches", label, method_name[method],
                  (unsigned long long)y.bad);
    int expect_method = method != ENG_AUTO ? method : gv ? ENG_BOUNDS : ENG_SCAN;
    ck_assert_msg(st.method == expect_method, "%s: method %d ran, want %d", label, st.method,
                  expect_method);
    ck_assert_msg(st.inputs_fetched == y.fetched && st.fetch.computed == y.fetched,
                  "%s method=%s: stats say %llu/%llu fetched, source saw %llu", label,
                  method_name[method], (unsigned long long)st.inputs_fetched,
                  (unsigned long long)st.fetch.computed, (unsigned long long)y.fetched);
    ck_assert(st.elapsed_ms >= 0.0);
    free(got);
    free(count);
    T->runs++;
    T->coarse += st.coarse_passes;
    T->widened += st.coarse_widened;
    last_known = st.inputs_known;
    return y.fetched;
}

/* A threshold from elsewhere (a coordinator's other shards): the answer
 * may leave out inputs strictly worse than it, but what it returns is
 * exact and it holds every want entry that is not strictly worse. */
static void run_with_threshold(const ds *s, eng_query *q, int method, const npi_view *gv, const eng_result *want,
                               size_t nwant, const char *label)
{
    if (!nwant)
        return;
    double t = want[rng_below((uint32_t)nwant)].value;
    size_t cap = q->k < s->n ? q->k : s->n, keep = 0;
    while (keep < nwant && !(q->kind == ENG_KNN ? want[keep].value > t : want[keep].value < t))
        keep++;
    eng_result *got = malloc((cap ? cap : 1) * sizeof *got);
    uint32_t *count = calloc(s->n ? s->n : 1, sizeof *count);
    ck_assert(got && count);
    synth y = {.s = s, .q = q, .count = count};
    eng_source src = {&y, synth_fetch, test_geo};
    char err[256] = "";
    size_t nout = 0;
    q->method = method;
    q->has_threshold = 1;
    q->threshold = t;
    int rc = eng_run(q, gv, &src, got, &nout, NULL, err, sizeof err);
    q->has_threshold = 0;
    ck_assert_msg(rc == 0, "%s threshold method=%s: rc %d (%s)", label, method_name[method], rc, err);
    size_t bad = 0;
    while (bad < keep && bad < nout && got[bad].input == want[bad].input && got[bad].value == want[bad].value)
        bad++;
    ck_assert_msg(bad == keep && nout >= keep && y.bad == 0, "%s threshold %.17g method=%s: %zu of %zu kept ranks "
                  "right (%zu results)", label, t, method_name[method], bad, keep, nout);
    free(got);
    free(count);
}

static const uint32_t sizes[] = {1, 2, 7, 50, 333, 2000};
static const uint32_t parts[] = {2, 3, 16, 64};
static const double ratios[] = {0, 0.01, 0.03, 0.5};
static const uint32_t batches[] = {0, 1, 3, 16, 64, 256};

/* One random query over s; every method must equal the brute force. */
static void random_query(const ds *s, int dist, int qi)
{
    uint32_t n = s->n, d = s->d;
    eng_query q = {0};
    uint32_t *neurons = malloc(d * 2 * sizeof *neurons);
    double *weights = malloc(d * 2 * sizeof *weights);
    float *target = malloc(d * 2 * sizeof *target);
    uint8_t *allowed = malloc(n);
    npi_view *gv = malloc(d * 2 * sizeof *gv);
    eng_result *want = malloc(n * sizeof *want);
    ck_assert(neurons && weights && target && allowed && gv && want);

    /* group: distinct neurons, sometimes all of them, rarely with repeats */
    size_t g;
    uint32_t r = rng_below(16);
    if (r == 0) {
        g = 1 + rng_below(2 * d);
        for (size_t j = 0; j < g; j++)
            neurons[j] = rng_below(d);
    } else {
        g = r < 3 ? d : 1 + rng_below(d);
        uint32_t *perm = malloc(d * sizeof *perm);
        for (uint32_t j = 0; j < d; j++)
            perm[j] = j;
        for (size_t j = 0; j < g; j++) {
            uint32_t t = j + rng_below(d - (uint32_t)j), x = perm[j];
            perm[j] = perm[t];
            perm[t] = x;
            neurons[j] = perm[j];
        }
        free(perm);
    }
    for (size_t j = 0; j < g; j++)
        gv[j] = s->views[neurons[j]];

    q.kind = rng_below(2) ? ENG_KNN : ENG_TOPK;
    q.agg = (int)rng_below(4);
    q.metric = (int)rng_below(4);
    q.n = n;
    q.gsize = g;
    q.neurons = neurons;
    q.exclude = -1;
    if (rng_below(3) == 0) {
        int allzero = rng_below(20) == 0;
        /* signed weights with a top-k sum: "A high while B low" */
        int sign = q.kind == ENG_TOPK && q.agg == ENG_SUM && rng_below(2);
        for (size_t j = 0; j < g; j++)
            weights[j] = allzero || rng_below(10) < 3 ? 0.0 : sign && rng_below(2) ? -2.0 * rng_unit() : 2.0 * rng_unit();
        q.weights = weights;
    }
    /* filter */
    r = rng_below(20);
    if (r < 5) {
        double dens = r == 0 ? 0.02 : r < 3 ? 0.3 : 0.9;
        for (uint32_t i = 0; i < n; i++)
            allowed[i] = rng_unit() < dens;
        q.allowed = allowed;
    } else if (r < 7) {
        memset(allowed, 0, n);
        allowed[rng_below(n)] = 1;
        q.allowed = allowed;
    } else if (r == 7) {
        memset(allowed, 0, n);
        q.allowed = allowed;
    }
    if (rng_below(10) < 3)
        q.exclude = rng_below(n);
    /* kNN target: an input's own activations, a random vector, or values
     * picked from other inputs and partition bounds (to make ties) */
    r = rng_below(10);
    uint32_t from = rng_below(n);
    for (size_t j = 0; j < g; j++) {
        const npi_view *v = &gv[j];
        if (r < 6) {
            target[j] = s->mat[(size_t)from * d + neurons[j]];
        } else if (r < 9) {
            target[j] = gen_value(dist == D_MIXED ? D_CONT : dist, 0);
        } else {
            uint32_t p = 1 + rng_below(v->partitions - 1);
            float b = rng_below(2) ? v->lower[p] : v->upper[p];
            target[j] = isfinite(b) && rng_below(2) ? b : s->mat[(size_t)rng_below(n) * d + neurons[j]];
        }
    }
    if (r < 6 && rng_below(10) < 7)
        q.exclude = from;
    q.target = target;
    if (r < 6 && rng_below(2)) { /* the target is input `from`: the engine computes it */
        q.target_is_input = 1;
        q.target_input = from;
    }
    uint32_t ks[] = {1, 2, 5, n / 2 ? n / 2 : 1, n, n + 3};
    q.k = ks[rng_below(6)];
    q.batch = batches[rng_below(6)];
    q.first_batch = rng_below(3) ? 0 : 1 + rng_below(40); /* the growing first fetch of BOUNDS */
    /* NTA: unpacked ids for every neuron (default), none, or about half */
    r = rng_below(3);
    q.scratch_budget = r == 0 ? 0 : r == 1 ? 1 : (size_t)n * g / 2 + 1;
    /* half the cases: a source that computes in forwards of slot classes */
    static const uint32_t slot_choices[] = {1, 4, 16, 64};
    if (rng_below(2))
        set_geometry(slot_choices[rng_below(4)], (int)rng_below(3), rng_below(3) ? 0 : rng_below(1000));
    else
        set_geometry(0, 0, 0);

    size_t nwant = brute_force(s, &q, want);
    if (q.target_is_input)
        q.target = NULL; /* brute force had the values; the engine computes them */
    char label[320];
    snprintf(label, sizeof label,
             "[query %d: n=%u d=%u dist=%s P=%u m=%u g=%zu kind=%d agg=%d metric=%d w=%d "
             "filter=%d exclude=%lld k=%zu batch=%u scratch=%zu slots=%u classes=%u target_input=%d]",
             qi, n, d, dist_name[dist], s->P, s->m, g, q.kind, q.agg, q.metric, q.weights != NULL,
             q.allowed != NULL, (long long)q.exclude, q.k, q.batch, q.scratch_budget, test_geo.slots,
             test_geo.nclass, q.target_is_input);
    T->queries++;
    T->fetched[ENG_SCAN] += run_and_compare(s, &q, ENG_SCAN, gv, want, nwant, label);
    T->fetched[ENG_NTA] += run_and_compare(s, &q, ENG_NTA, gv, want, nwant, label);
    T->fetched[ENG_BOUNDS] += run_and_compare(s, &q, ENG_BOUNDS, gv, want, nwant, label);
    run_and_compare(s, &q, ENG_AUTO, gv, want, nwant, label);
    run_and_compare(s, &q, ENG_AUTO, NULL, want, nwant, label);
    if (rng_below(3) == 0) {
        run_with_threshold(s, &q, ENG_NTA, gv, want, nwant, label);
        run_with_threshold(s, &q, ENG_BOUNDS, gv, want, nwant, label);
    }
    set_geometry(0, 0, 0);

    free(neurons);
    free(weights);
    free(target);
    free(allowed);
    free(gv);
    free(want);
}

/* Each loop iteration: a few random datasets, several queries each. */
#define PROPERTY_ITERS 80
#define DATASETS_PER_ITER 8
#define QUERIES_PER_DATASET 10

START_TEST(test_property)
{
    rng_seed(1000 + (uint64_t)_i);
    for (int c = 0; c < DATASETS_PER_ITER; c++) {
        uint32_t n = sizes[rng_below(6)];
        uint32_t d = 1 + rng_below(n >= 2000 ? 32 : 64);
        int dist = (int)rng_below(D_COUNT);
        ds s;
        ds_make(&s, n, d, dist);
        ds_index(&s, parts[rng_below(4)], ratios[rng_below(4)]);
        for (int qi = 0; qi < QUERIES_PER_DATASET; qi++)
            random_query(&s, dist, _i * 1000 + c * 100 + qi);
        ds_free(&s);
    }
}
END_TEST

/* Wide groups: every neuron of a 64-neuron layer. */
START_TEST(test_wide_group)
{
    rng_seed(77);
    for (int c = 0; c < 6; c++) {
        ds s;
        int dist = c % 2 ? D_RELU : D_TIES;
        ds_make(&s, 2000, 64, dist);
        ds_index(&s, parts[c % 4], ratios[(c + 1) % 4]);
        for (int qi = 0; qi < 4; qi++)
            random_query(&s, dist, 9000000 + c * 10 + qi);
        ds_free(&s);
    }
}
END_TEST

/* Larger N: BOUNDS selects its best-bound prefix from many candidates
 * (sampled pivots, ties falling back to three-way partitioning). */
START_TEST(test_larger_n)
{
    static const int dists[] = {D_RELU, D_TIES, D_CONT, D_LARGE};
    rng_seed(31337 + (uint64_t)_i);
    ds s;
    int dist = dists[_i % 4];
    ds_make(&s, _i < 4 ? 10000 : 30000, 6, dist);
    ds_index(&s, _i % 2 ? 64 : 16, _i % 3 ? 0.01 : 0.0);
    for (int qi = 0; qi < 8; qi++)
        random_query(&s, dist, 8000000 + _i * 10 + qi);
    ds_free(&s);
}
END_TEST

/* The dense cell bounds run in blocks of 2048 inputs and chunks of 32
 * neurons, decoding every id width (1..8 bits) themselves, with AVX2 gathers
 * where the CPU has them and portable loops otherwise: groups wider than a
 * chunk over several blocks (the last one partial), every partition count's
 * width, every code path (AVX-512, AVX2 split over threads, portable) that
 * this CPU has, equal to brute force. */
START_TEST(test_blocked_bounds)
{
    static const uint32_t widths[] = {2, 3, 5, 9, 17, 33, 65, 129, 256}; /* 1..8 bits */
    static const int dists[] = {D_RELU, D_TIES, D_CONT, D_MIXED};
    rng_seed(4242 + (uint64_t)_i);
    ds s;
    int dist = dists[_i % 4];
    ds_make(&s, _i % 2 ? 4099 : 6151, 40, dist);
    ds_index(&s, widths[_i % 9], _i % 3 ? 0.003 : 0.02);
    for (int simd = 3; simd >= 0; simd--) {
        eng_simd(simd);
        eng_threads(simd == 1 || simd == 3 ? 3 : 1); /* blocks split over threads, too */
        for (int qi = 0; qi < 5; qi++)
            random_query(&s, dist, 7000000 + _i * 100 + simd * 10 + qi);
    }
    eng_simd(3);
    eng_threads(1);
    ds_free(&s);
}
END_TEST

/* Passes large enough for the pool's helpers (pool.h): the coarse pass
 * (AVX-512, <= 64 partitions) and the exact one, their blocks taken by
 * whichever thread is free -- after eng_warm, as the daemon calls it, or
 * cold -- over groups of one or two chunks and a partial last block, equal
 * to brute force. */
START_TEST(test_pool_passes)
{
    static const uint32_t nparts[] = {16, 33, 64, 64};
    static const int dists[] = {D_RELU, D_CONT, D_TIES, D_MIXED};
    rng_seed(5150 + (uint64_t)_i);
    ds s;
    int dist = dists[_i % 4];
    ds_make(&s, 12289 + (uint32_t)_i * 1031, 64, dist);
    ds_index(&s, nparts[_i % 4], _i % 2 ? 0.004 : 0.02);
    eng_threads(_i % 3 == 2 ? 2 : 3);
    for (int qi = 0; qi < 6; qi++) {
        if (qi % 2 == 0)
            eng_warm(s.n, s.d);
        random_query(&s, dist, 5150000 + _i * 100 + qi);
    }
    eng_threads(1);
    ds_free(&s);
}
END_TEST

/* The coarse keys themselves (eng_coarse_keys): with the pool's helpers
 * taking blocks -- warm or cold -- every key equals the one-thread pass's
 * bit for bit, and each is sound against the input's exact score: top-k
 * -key >= score, kNN key <= distance. Groups of one and two chunks. */
START_TEST(test_coarse_keys_threads)
{
    static const int dists[] = {D_RELU, D_CONT, D_MIXED};
    rng_seed(6060 + (uint64_t)_i);
    ds s;
    int dist = dists[_i % 3];
    ds_make(&s, 20011 + (uint32_t)_i * 977, 64, dist);
    ds_index(&s, _i % 2 ? 64 : 33, _i % 3 ? 0.004 : 0.02);
    uint32_t neurons[64];
    double weights[64];
    float target[64];
    double *k1 = malloc(s.n * sizeof *k1), *kt = malloc(s.n * sizeof *kt);
    npi_view *gv = malloc(64 * sizeof *gv);
    ck_assert(k1 && kt && gv);
    char err[256];
    int ran = 0;
    for (int qi = 0; qi < 12; qi++) {
        size_t g = 30 + rng_below(35); /* 30..64: past the pool's threshold */
        for (size_t j = 0; j < g; j++) {
            neurons[j] = (uint32_t)((j * 7 + (size_t)qi) % 64); /* distinct: 7 is prime to 64 */
            gv[j] = s.views[neurons[j]];
            weights[j] = 0.25 + rng_unit();
        }
        eng_query q = {.kind = qi % 2 ? ENG_KNN : ENG_TOPK, .n = s.n, .k = 10, .gsize = g, .neurons = neurons,
                       .exclude = -1, .batch = 64};
        if (q.kind == ENG_KNN) {
            uint32_t x = rng_below(s.n);
            for (size_t j = 0; j < g; j++)
                target[j] = s.mat[(size_t)x * s.d + neurons[j]];
            q.target = target;
            q.metric = qi % 4 == 1 ? ENG_L1 : ENG_L2;
        } else {
            q.agg = qi % 4 == 2 ? ENG_MEAN : ENG_SUM;
        }
        if (qi % 3 == 2)
            q.weights = weights;
        eng_threads(1);
        int rc = eng_coarse_keys(&q, gv, k1, err, sizeof err);
        ck_assert_msg(rc >= 0, "coarse keys: %s", err);
        if (rc == 1) /* no coarse pass on this CPU */
            continue;
        ran++;
        for (uint32_t i = 0; i < s.n; i++) {
            double exact = bf_value(&q, s.mat + (size_t)i * s.d);
            if (q.kind == ENG_TOPK ? -k1[i] < exact : k1[i] > exact)
                ck_abort_msg("query %d input %u: key %.17g unsound against %.17g", qi, i, k1[i], exact);
        }
        for (int t = 0; t < 4; t++) {
            eng_threads(2 + t % 2);
            if (t < 2)
                eng_warm(s.n, g);
            ck_assert_int_eq(eng_coarse_keys(&q, gv, kt, err, sizeof err), 0);
            if (memcmp(k1, kt, s.n * sizeof *k1) != 0)
                ck_abort_msg("query %d: %d threads gave other keys than one", qi, 2 + t % 2);
        }
    }
    ck_assert(ran > 0 || eng_simd(3) < 2);
    eng_threads(1);
    free(k1);
    free(kt);
    free(gv);
    ds_free(&s);
}
END_TEST

/* ---- fetch counts on a realistic case ------------------------------------- */

static uint64_t fetches(const ds *s, eng_query *q, int method, const npi_view *gv)
{
    eng_result *want = malloc(s->n * sizeof *want);
    size_t nwant = brute_force(s, q, want);
    uint64_t f = run_and_compare(s, q, method, gv, want, nwant, "[fetch counts]");
    free(want);
    return f;
}

START_TEST(test_fetch_counts)
{
    rng_seed(4242);
    ds s;
    ds_make(&s, 2000, 32, D_RELU);
    ds_index(&s, 16, 0.03);
    uint32_t neurons[3] = {3, 11, 27};
    npi_view gv[3] = {s.views[3], s.views[11], s.views[27]};
    float target[3];
    for (int b = 0; b < 2; b++) {
        eng_query q = {.kind = ENG_TOPK, .agg = ENG_SUM, .n = 2000, .k = 10, .gsize = 3,
                       .neurons = neurons, .exclude = -1, .batch = b ? 32 : 0};
        uint64_t scan = fetches(&s, &q, ENG_SCAN, gv);
        uint64_t nta = fetches(&s, &q, ENG_NTA, gv);
        uint64_t bounds = fetches(&s, &q, ENG_BOUNDS, gv);
        printf("fetch counts, top-k sum, ReLU N=2000 |G|=3 k=10 batch=%u: scan %llu, nta %llu, "
               "bounds %llu\n", q.batch ? q.batch : 256, (unsigned long long)scan,
               (unsigned long long)nta, (unsigned long long)bounds);
        ck_assert_uint_eq(scan, 2000);
        ck_assert_uint_lt(nta, scan);
        ck_assert_uint_lt(bounds, scan);

        for (int j = 0; j < 3; j++)
            target[j] = s.mat[(size_t)5 * 32 + neurons[j]];
        q.kind = ENG_KNN;
        q.metric = ENG_L2;
        q.target = target;
        q.exclude = 5;
        scan = fetches(&s, &q, ENG_SCAN, gv);
        nta = fetches(&s, &q, ENG_NTA, gv);
        bounds = fetches(&s, &q, ENG_BOUNDS, gv);
        printf("fetch counts, kNN l2, ReLU N=2000 |G|=3 k=10 batch=%u: scan %llu, nta %llu, "
               "bounds %llu\n", q.batch ? q.batch : 256, (unsigned long long)scan,
               (unsigned long long)nta, (unsigned long long)bounds);
        ck_assert_uint_eq(scan, 1999);
        ck_assert_uint_lt(nta, scan);
        ck_assert_uint_lt(bounds, scan);
    }
    ds_free(&s);
}
END_TEST

/* A dead neuron (all zeros, common after ReLU): every input ties; cell
 * bounds settle the tie by id and stop after the first batch, where NTA
 * cannot (its sorted access does not come in id order). */
START_TEST(test_dead_neuron_ties_stop)
{
    rng_seed(777);
    ds s;
    ds_make(&s, 3000, 4, D_RELU);
    for (uint32_t i = 0; i < s.n; i++) {
        s.mat[(size_t)i * s.d + 1] = 0.0f;
        s.mat[(size_t)i * s.d + 2] = 0.0f;
    }
    ds_index(&s, 16, 0.03);
    uint32_t neurons[2] = {1, 2};
    npi_view gv[2] = {s.views[1], s.views[2]};
    static const int aggs[] = {ENG_SUM, ENG_MAX, ENG_MIN};
    for (int a = 0; a < 3; a++) {
        eng_query q = {.kind = ENG_TOPK, .agg = aggs[a], .n = s.n, .k = 10, .gsize = 2,
                       .neurons = neurons, .exclude = -1, .batch = 64};
        uint64_t bounds = fetches(&s, &q, ENG_BOUNDS, gv);
        ck_assert_uint_le(bounds, 64);
    }
    float target[2] = {0.0f, 0.0f};
    eng_query q = {.kind = ENG_KNN, .metric = ENG_L1, .n = s.n, .k = 25, .gsize = 2,
                   .neurons = neurons, .exclude = 7, .batch = 64, .target = target};
    ck_assert_uint_le(fetches(&s, &q, ENG_BOUNDS, gv), 64);
    ds_free(&s);
}
END_TEST

/* Scores the index holds: an input whose every group value is an MAI value
 * or in a partition of one value is scored without a forward, and exactly.
 * Partitions of one value occur after ReLU (its zeros); a NaN among them
 * must not pass for the value (npi_build counts it as -inf in the bounds). */
START_TEST(test_index_held_scores)
{
    rng_seed(4711);
    ds s;
    ds_make(&s, 3000, 5, D_RELU);
    for (uint32_t i = 0; i < s.n; i++) {
        s.mat[(size_t)i * s.d + 1] = 0.0f;                               /* dead */
        s.mat[(size_t)i * s.d + 2] = i % 3 ? 0.0f : (float)(i % 7);      /* mostly zero */
        s.mat[(size_t)i * s.d + 3] = i % 20 == 0 ? NAN : i % 2 ? 0.0f : -1.0f; /* NaN among two values */
    }
    ds_index(&s, 16, 0.03); /* m = 90 */
    uint32_t all[5] = {0, 1, 2, 3, 4};
    npi_view gv[5];
    for (int j = 0; j < 5; j++)
        gv[j] = s.views[j];
    /* top-k of one neuron, k <= m: the MAI is the answer, no forward */
    eng_query q = {.kind = ENG_TOPK, .agg = ENG_SUM, .n = s.n, .k = 10, .gsize = 1, .neurons = all,
                   .exclude = -1, .batch = 64};
    ck_assert_uint_eq(fetches(&s, &q, ENG_BOUNDS, gv), 0);
    ck_assert_uint_ge(last_known, 10);
    /* kNN on the dead neuron: every score is held, no forward; with the
     * mostly-zero one too, only the zeros that share a partition with other
     * values (the smaller ids among them) are computed */
    float target[5] = {0, 0, 0, 0, 0};
    q = (eng_query){.kind = ENG_KNN, .metric = ENG_L2, .n = s.n, .k = 25, .gsize = 1, .neurons = all + 1,
                    .exclude = 7, .batch = 64, .target = target};
    ck_assert_uint_eq(fetches(&s, &q, ENG_BOUNDS, gv + 1), 0);
    /* all 2,999 are held; only the k best of them by bound are scored */
    ck_assert_uint_eq(last_known, q.k);
    q.gsize = 2;
    ck_assert_uint_le(fetches(&s, &q, ENG_BOUNDS, gv + 1), 64);
    ck_assert_uint_eq(last_known, q.k);
    q.gsize = 1;
    /* the target an input whose values are held: not even its own forward */
    q.target_is_input = 1;
    q.target_input = 4;
    q.target = NULL;
    {
        eng_result *want = malloc(s.n * sizeof *want);
        q.target = target;
        size_t nwant = brute_force(&s, &q, want);
        q.target = NULL;
        ck_assert_uint_eq(run_and_compare(&s, &q, ENG_BOUNDS, gv + 1, want, nwant, "[held target]"), 0);
        free(want);
    }
    /* NaN among the values: every rank of every aggregation, each NaN input
     * the worst (k = n compares them all), some scored from the index */
    static const int aggs[] = {ENG_SUM, ENG_MAX, ENG_MIN};
    for (int a = 0; a < 3; a++) {
        q = (eng_query){.kind = ENG_TOPK, .agg = aggs[a], .n = s.n, .k = s.n, .gsize = 3, .neurons = all + 1,
                        .exclude = -1, .batch = 64};
        fetches(&s, &q, ENG_BOUNDS, gv + 1);
        ck_assert_uint_gt(last_known, 0);
    }
    q = (eng_query){.kind = ENG_KNN, .metric = ENG_L1, .n = s.n, .k = s.n, .gsize = 3, .neurons = all + 1,
                    .exclude = -1, .batch = 64, .target = target};
    fetches(&s, &q, ENG_BOUNDS, gv + 1);
    ck_assert_uint_gt(last_known, 0);
    ds_free(&s);
}
END_TEST

/* One neuron's top-k from its MAI alone (mai_answer): every distribution,
 * aggregation, signed weight, filter and k, equal to brute force; and when
 * it settles the query it reads no partition id: with every id garbled out
 * of range it still computes nothing. */
START_TEST(test_one_neuron_from_mai)
{
    rng_seed(9001 + (uint64_t)_i);
    ds s;
    int dist = _i % D_COUNT;
    ds_make(&s, 1500 + rng_below(1500), 6, dist);
    ds_index(&s, 2 + rng_below(30), rng_below(2) ? 0.03 : 0.005);
    eng_result *want = malloc(s.n * sizeof *want);
    uint8_t *allowed = malloc(s.n);
    ck_assert(want && allowed);
    for (int qi = 0; qi < 40; qi++) {
        uint32_t neuron = rng_below(s.d);
        double w = rng_below(4) == 0 ? -1.5 : rng_below(3) == 0 ? 0.0 : 0.25 + rng_unit();
        eng_query q = {.kind = ENG_TOPK, .agg = (int)rng_below(4), .n = s.n, .gsize = 1, .neurons = &neuron,
                       .exclude = rng_below(3) ? -1 : (int64_t)rng_below(s.n), .batch = 64};
        uint32_t ks[] = {1, 3, 10, s.m, s.m + 1, s.n};
        q.k = ks[rng_below(6)];
        if (w < 0 && q.agg != ENG_SUM)
            w = -w; /* signed weights: a top-k sum's only */
        if (rng_below(2))
            q.weights = &w;
        if (rng_below(3) == 0) {
            for (uint32_t i = 0; i < s.n; i++)
                allowed[i] = rng_below(4) != 0;
            q.allowed = allowed;
        }
        size_t nwant = brute_force(&s, &q, want);
        char label[160];
        snprintf(label, sizeof label, "[one neuron: dist=%s n=%u P=%u m=%u agg=%d w=%g k=%zu filter=%d exclude=%lld]",
                 dist_name[dist], s.n, s.P, s.m, q.agg, q.weights ? w : 1.0, q.k, q.allowed != NULL,
                 (long long)q.exclude);
        run_and_compare(&s, &q, ENG_BOUNDS, &s.views[neuron], want, nwant, label);
        run_and_compare(&s, &q, ENG_AUTO, &s.views[neuron], want, nwant, label);
    }
    /* a continuous neuron, k within its MAI: settled from the MAI, so its
     * partition ids may be anything */
    ds_free(&s);
    ds_make(&s, 2000, 1, D_CONT);
    ds_index(&s, 16, 0.03);
    free(want);
    want = malloc(s.n * sizeof *want);
    ck_assert_ptr_nonnull(want);
    size_t len = npi_blob_size(s.n, s.P, s.m);
    uint32_t *blob = malloc(len);
    memcpy(blob, s.blobs[0], len);
    npi_view v;
    ck_assert_int_eq(npi_decode(blob, len, &v), 0);
    memset((uint8_t *)v.pids, 0xff, (s.n * v.bits + 7) / 8);
    uint32_t zero = 0;
    eng_query q = {.kind = ENG_TOPK, .agg = ENG_SUM, .n = s.n, .k = 1 + rng_below(s.m), .gsize = 1,
                   .neurons = &zero, .exclude = -1, .batch = 64};
    size_t nwant = brute_force(&s, &q, want);
    ck_assert_uint_eq(run_and_compare(&s, &q, ENG_BOUNDS, &v, want, nwant, "[garbled ids]"), 0);
    ck_assert_uint_eq(last_known, s.m);
    free(blob);
    free(want);
    free(allowed);
    ds_free(&s);
}
END_TEST

/* The coarse pass (single precision, engine.c) stays sound where float
 * cannot tell scores apart: 600 inputs at random ids whose values are 1
 * plus 0..3 ulps of float on each of 8 neurons, so that their sums differ
 * below float's rounding, over a background far from them (top-k: below;
 * kNN: beyond, from a target near them). k around the coarse route's 256 best,
 * where the k-th and the best of the rest tie in float. Top-k sum, mean,
 * weighted (signs mixed) and kNN l1 / l2 from a point: every answer equals
 * brute force, and the coarse pass ran. Dropping a margin fails it. */
START_TEST(test_coarse_margin)
{
    const uint32_t n = 6000, d = 8;
    uint32_t neurons[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    double weights[8];
    float target[8];
    eng_result *want = malloc(n * sizeof *want);
    ck_assert_ptr_nonnull(want);
    uint64_t coarse0 = T->coarse;
    set_geometry(64, 0, 0);
    for (int knn = 0; knn < 2; knn++) {
        /* top-k: the group at 1 + 0..3 ulps, the rest in [0, 0.25); kNN:
         * the rest at 3 and above, the target at 0.5 + 0..3 ulps of 1, so
         * that the squares and sums round in float */
        rng_seed(777 + (uint64_t)knn);
        ds s;
        ds_make(&s, n, d, D_CONT);
        for (size_t i = 0; i < (size_t)n * d; i++)
            s.mat[i] = (knn ? 3.0f : 0.0f) + (float)rng_below(1000) * 0.00025f;
        for (int t = 0; t < 600; t++) {
            uint32_t id = rng_below(n);
            for (uint32_t j = 0; j < d; j++)
                s.mat[(size_t)id * d + j] = 1.0f + (float)rng_below(4) * 0x1p-23f;
        }
        ds_index(&s, 64, 0.003);
        for (int qi = 0; qi < 70; qi++) {
            static const size_t ks[] = {10, 200, 250, 255, 256, 257, 300};
            eng_query q = {.kind = knn ? ENG_KNN : ENG_TOPK, .n = n, .k = ks[qi % 7], .gsize = d,
                           .neurons = neurons, .exclude = -1, .batch = 64};
            if (knn) {
                q.metric = qi % 2 ? ENG_L2 : ENG_L1;
                for (uint32_t j = 0; j < d; j++)
                    target[j] = 0.5f + (float)rng_below(4) * 0x1p-23f;
                q.target = target;
            } else {
                q.agg = qi % 3 == 1 ? ENG_MEAN : ENG_SUM;
            }
            if (qi % 5 == 4) {
                for (uint32_t j = 0; j < d; j++)
                    weights[j] = !knn && j == 3 ? -0.5 : 1.0 + (double)rng_below(4) * 0x1p-30;
                q.agg = ENG_SUM;
                q.weights = weights;
            }
            size_t nwant = brute_force(&s, &q, want);
            char label[64];
            snprintf(label, sizeof label, "[coarse margin %s %d]", knn ? "knn" : "topk", qi);
            run_and_compare(&s, &q, ENG_BOUNDS, s.views, want, nwant, label);
        }
        ds_free(&s);
    }
    /* A float sum that rounds up: l1 from 0 over two neurons, 300 inputs at
     * (1, 5 * 2^-26) -- 1 + 1.25 * 2^-24, summed to 1 + 2^-23 in float --
     * and, at larger ids, 20 nearer ones at (1, 9 * 2^-27), summed to the
     * same float. Without the kNN margin the coarse route takes 256 of the
     * first, proves them against the 257th and misses the nearer ones. */
    rng_seed(779);
    ds s;
    ds_make(&s, n, 2, D_CONT);
    for (uint32_t i = 0; i < n; i++) {
        float *x = s.mat + (size_t)i * 2;
        x[0] = 3.0f + (float)rng_below(1000) * 0.001f;
        x[1] = 3.0f + (float)rng_below(1000) * 0.001f;
        if (i >= 1000 && i < 1300) {
            x[0] = 1.0f;
            x[1] = 5 * 0x1p-26f;
        } else if (i >= 5000 && i < 5020) {
            x[0] = 1.0f;
            x[1] = 9 * 0x1p-27f;
        }
    }
    ds_index(&s, 64, 0.003);
    float zero[2] = {0, 0};
    eng_query q = {.kind = ENG_KNN, .metric = ENG_L1, .n = n, .k = 10, .gsize = 2, .neurons = neurons,
                   .target = zero, .exclude = -1, .batch = 64};
    size_t nwant = brute_force(&s, &q, want);
    ck_assert_uint_eq(want[0].input, 5000);
    run_and_compare(&s, &q, ENG_BOUNDS, s.views, want, nwant, "[coarse margin, a float sum rounded up]");
    ds_free(&s);
    ck_assert_msg(T->coarse > coarse0 || eng_simd(3) < 2, "the coarse pass never ran");
    free(want);
}
END_TEST

/* With the source's forward geometry, BOUNDS makes every fetch whole
 * forwards: a slot stays empty only when no candidate of its class is left;
 * NTA's forwards stay within 1.2x of the forwards its inputs would fill
 * (plus the last, partial one). Answers stay exact. */
START_TEST(test_whole_forwards)
{
    rng_seed(5150);
    ds s;
    ds_make(&s, 6000, 24, D_RELU);
    ds_index(&s, 16, 0.03);
    uint32_t *count = calloc(s.n, sizeof *count);
    eng_result *want = malloc(s.n * sizeof *want), *got = malloc(s.n * sizeof *got);
    uint64_t bforwards = 0, bcomputed = 0, nforwards = 0, ncomputed = 0;
    for (int qi = 0; qi < 60; qi++) {
        set_geometry(qi % 3 ? 64 : 16, 1, (uint64_t)(qi % 5) * 7);
        uint32_t neurons[10];
        npi_view gv[10];
        float target[10];
        size_t g = 1 + rng_below(10);
        for (size_t j = 0; j < g; j++) {
            neurons[j] = (uint32_t)((j * 5 + (size_t)qi) % s.d);
            gv[j] = s.views[neurons[j]];
        }
        uint32_t from = rng_below(s.n);
        for (size_t j = 0; j < g; j++)
            target[j] = s.mat[(size_t)from * s.d + neurons[j]];
        eng_query q = {.kind = qi % 2 ? ENG_KNN : ENG_TOPK, .agg = ENG_SUM, .metric = (int)rng_below(4), .n = s.n,
                       .k = 1 + rng_below(60), .gsize = g, .neurons = neurons, .target = target,
                       .exclude = qi % 2 ? (int64_t)from : -1};
        size_t nwant = brute_force(&s, &q, want);
        eng_query bq = q;
        if (q.kind == ENG_KNN && qi % 4 == 1) { /* the engine computes the target itself */
            q.target = NULL;
            q.target_is_input = 1;
            q.target_input = from;
        }
        for (int method = ENG_NTA; method <= ENG_BOUNDS; method++) {
            memset(count, 0, s.n * sizeof *count);
            synth y = {.s = &s, .q = &q, .count = count, .full_check = method == ENG_BOUNDS,
                       .kth_query = nwant ? &bq : NULL, .kth = nwant ? want[nwant - 1].value : 0.0};
            eng_source src = {&y, synth_fetch, test_geo};
            size_t nout;
            eng_stats st;
            char err[256];
            q.method = method;
            ck_assert_int_eq(eng_run(&q, gv, &src, got, &nout, &st, err, sizeof err), 0);
            ck_assert_uint_eq(nout, nwant);
            for (size_t i = 0; i < nout; i++)
                ck_assert(got[i].input == want[i].input && got[i].value == want[i].value);
            ck_assert_uint_eq(y.bad, 0);
            if (method == ENG_BOUNDS) {
                ck_assert_msg(y.unfilled == 0, "query %d: %llu bounds forwards left slots empty", qi,
                              (unsigned long long)y.unfilled);
                bforwards += y.forwards;
                bcomputed += y.fetched;
            } else {
                uint64_t full = (y.fetched + test_geo.slots - 1) / test_geo.slots;
                ck_assert_msg((double)y.forwards <= 1.2 * (double)full + 1, "query %d: nta ran %llu forwards for "
                              "%llu inputs (%u slots)", qi, (unsigned long long)y.forwards,
                              (unsigned long long)y.fetched, test_geo.slots);
                nforwards += y.forwards;
                ncomputed += y.fetched;
            }
        }
    }
    printf("whole forwards: bounds %llu inputs in %llu forwards, nta %llu inputs in %llu forwards\n",
           (unsigned long long)bcomputed, (unsigned long long)bforwards, (unsigned long long)ncomputed,
           (unsigned long long)nforwards);
    set_geometry(0, 0, 0);
    free(count);
    free(want);
    free(got);
    ds_free(&s);
}
END_TEST

/* NTA over dead neurons: every input ties the threshold; it stops once
 * every unseen input has a larger id than the k-th (as cell bounds do),
 * instead of computing every input. */
START_TEST(test_nta_stops_on_ties)
{
    rng_seed(778);
    ds s;
    ds_make(&s, 5000, 4, D_RELU);
    for (uint32_t i = 0; i < s.n; i++)
        s.mat[(size_t)i * s.d + 1] = s.mat[(size_t)i * s.d + 2] = 0.0f;
    ds_index(&s, 16, 0.03);
    uint32_t neurons[2] = {1, 2};
    npi_view gv[2] = {s.views[1], s.views[2]};
    float target[2] = {0.0f, 0.0f};
    for (int a = 0; a < 4; a++) {
        eng_query q = {.kind = a == 3 ? ENG_KNN : ENG_TOPK, .agg = a == 1 ? ENG_MAX : a == 2 ? ENG_MIN : ENG_SUM,
                       .metric = ENG_L2, .n = s.n, .k = 10, .gsize = 2, .neurons = neurons, .exclude = a == 3 ? 9 : -1,
                       .batch = 64, .target = target};
        uint64_t nta = fetches(&s, &q, ENG_NTA, gv);
        ck_assert_msg(nta <= 256, "nta computed %llu of 5000 tied inputs", (unsigned long long)nta);
    }
    ds_free(&s);
}
END_TEST

/* ---- methods, errors, cancellation ----------------------------------------- */

static ds small;
static npi_view small_gv[4];
static uint32_t small_neurons[4] = {0, 2, 5, 7};

static void small_setup(void)
{
    rng_seed(99);
    ds_make(&small, 2000, 8, D_CONT);
    ds_index(&small, 16, 0.03);
    for (int j = 0; j < 4; j++)
        small_gv[j] = small.views[small_neurons[j]];
}

static void small_teardown(void)
{
    ds_free(&small);
}

static eng_query small_query(void)
{
    eng_query q = {.kind = ENG_TOPK, .agg = ENG_SUM, .n = 2000, .k = 2000, .gsize = 4,
                   .neurons = small_neurons, .exclude = -1, .batch = 16};
    return q;
}

START_TEST(test_auto_picks)
{
    eng_query q = small_query();
    q.k = 7;
    eng_result out[7];
    size_t nout;
    eng_stats st;
    synth y = {.s = &small};
    eng_source src = {&y, synth_fetch, {0}};
    char err[128];
    ck_assert_int_eq(eng_run(&q, small_gv, &src, out, &nout, &st, err, sizeof err), 0);
    ck_assert_int_eq(st.method, ENG_BOUNDS);
    ck_assert_uint_lt(st.inputs_fetched, 2000);
    ck_assert_uint_ge(st.rounds, 1);
    ck_assert_int_eq(eng_run(&q, NULL, &src, out, &nout, &st, err, sizeof err), 0);
    ck_assert_int_eq(st.method, ENG_SCAN);
    ck_assert_uint_eq(st.inputs_fetched, 2000);
    ck_assert_uint_eq(st.rounds, 2000 / 16);
}
END_TEST

START_TEST(test_cancel)
{
    static const int methods[] = {ENG_SCAN, ENG_NTA, ENG_BOUNDS};
    eng_result *out = malloc(2000 * sizeof *out);
    for (int i = 0; i < 3; i++) {
        volatile int cancel = 0;
        eng_query q = small_query();
        q.method = methods[i];
        q.cancel = &cancel;
        synth y = {.s = &small, .cancel = &cancel, .cancel_call = 2};
        eng_source src = {&y, synth_fetch, {0}};
        size_t nout = 99;
        eng_stats st;
        char err[128] = "";
        ck_assert_int_eq(eng_run(&q, small_gv, &src, out, &nout, &st, err, sizeof err), -2);
        ck_assert_uint_eq(nout, 0);
        ck_assert_uint_eq(y.calls, 2); /* polled between batches, not after the end */
        /* cancelled before it starts: nothing is computed */
        y.calls = 0;
        y.cancel_call = 0;
        ck_assert_int_eq(eng_run(&q, small_gv, &src, out, &nout, &st, err, sizeof err), -2);
        ck_assert_uint_eq(y.calls, 0);
    }
    free(out);
}
END_TEST

START_TEST(test_source_failure)
{
    static const int methods[] = {ENG_SCAN, ENG_NTA, ENG_BOUNDS, ENG_AUTO};
    eng_result *out = malloc(2000 * sizeof *out);
    for (int i = 0; i < 4; i++) {
        eng_query q = small_query();
        q.method = methods[i];
        synth y = {.s = &small, .fail_call = 3};
        eng_source src = {&y, synth_fetch, {0}};
        size_t nout = 99;
        eng_stats st;
        char err[128] = "";
        ck_assert_int_eq(eng_run(&q, small_gv, &src, out, &nout, &st, err, sizeof err), -1);
        ck_assert_str_eq(err, "synthetic failure at call 3");
        ck_assert_uint_eq(nout, 0);
    }
    free(out);
}
END_TEST

START_TEST(test_needs_index)
{
    eng_result out[4];
    size_t nout;
    eng_stats st;
    synth y = {.s = &small};
    eng_source src = {&y, synth_fetch, {0}};
    static const int methods[] = {ENG_NTA, ENG_BOUNDS};
    for (int i = 0; i < 2; i++) {
        eng_query q = small_query();
        q.k = 4;
        q.method = methods[i];
        char err[128] = "";
        ck_assert_int_eq(eng_run(&q, NULL, &src, out, &nout, &st, err, sizeof err), -1);
        ck_assert_msg(strstr(err, "index") != NULL, "err: %s", err);
        ck_assert_uint_eq(y.calls, 0);
    }
}
END_TEST

START_TEST(test_bad_arguments)
{
    eng_result out[4];
    size_t nout;
    synth y = {.s = &small};
    eng_source src = {&y, synth_fetch, {0}};
    char err[128];
    eng_query q = small_query();
    q.k = 0;
    ck_assert_int_eq(eng_run(&q, small_gv, &src, out, &nout, NULL, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "k"));
    q = small_query();
    q.k = 4;
    double w[4] = {1, -0.5, 1, 1};
    q.weights = w;
    q.agg = ENG_MAX; /* signed weights go with a top-k sum only */
    ck_assert_int_eq(eng_run(&q, small_gv, &src, out, &nout, NULL, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "weight"));
    q.agg = ENG_SUM;
    ck_assert_int_eq(eng_run(&q, small_gv, &src, out, &nout, NULL, err, sizeof err), 0);
    y.calls = 0;
    w[1] = NAN;
    ck_assert_int_eq(eng_run(&q, small_gv, &src, out, &nout, NULL, err, sizeof err), -1);
    q = small_query();
    q.k = 4;
    q.kind = ENG_KNN;
    ck_assert_int_eq(eng_run(&q, small_gv, &src, out, &nout, NULL, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "target"));
    q = small_query();
    q.k = 4;
    q.gsize = 0;
    ck_assert_int_eq(eng_run(&q, small_gv, &src, out, &nout, NULL, err, sizeof err), -1);
    /* an index of another dataset size */
    q = small_query();
    q.k = 4;
    q.n = 1999;
    q.method = ENG_BOUNDS;
    ck_assert_int_eq(eng_run(&q, small_gv, &src, out, &nout, NULL, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "index"));
    ck_assert_uint_eq(y.calls, 0);
}
END_TEST

/* A corrupt index (MAI out of rank order) is refused, not trusted. */
START_TEST(test_corrupt_index)
{
    npi_view gv[4];
    memcpy(gv, small_gv, sizeof gv);
    uint32_t m = gv[1].mai_count;
    ck_assert_uint_ge(m, 2);
    float *vals = malloc(m * sizeof *vals);
    memcpy(vals, gv[1].mai_values, m * sizeof *vals);
    float t = vals[0];
    vals[0] = vals[m - 1];
    vals[m - 1] = t;
    gv[1].mai_values = vals;
    eng_query q = small_query();
    q.k = 4;
    q.method = ENG_NTA;
    eng_result out[4];
    size_t nout;
    synth y = {.s = &small};
    eng_source src = {&y, synth_fetch, {0}};
    char err[128] = "";
    ck_assert_int_eq(eng_run(&q, gv, &src, out, &nout, NULL, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "corrupt"));
    free(vals);
}
END_TEST

/* Partition ids that disagree with the MAI (an input in partition 0 that the
 * MAI does not list): NTA, which would never visit it, refuses the index;
 * BOUNDS, which treats its cell as unknown, still answers exactly. */
START_TEST(test_corrupt_partition_ids)
{
    size_t len = npi_blob_size(small.n, small.P, small.m);
    uint32_t *blob = malloc(len);
    memcpy(blob, small.blobs[small_neurons[2]], len);
    npi_view v;
    ck_assert_int_eq(npi_decode(blob, len, &v), 0);
    ck_assert_uint_eq(v.bits, 4);
    /* the victim: neuron 2's highest value outside its MAI, so that a bound
     * that dropped its term would leave it out of the weighted top-100 below */
    uint32_t victim = 0;
    float vbest = -INFINITY;
    for (uint32_t i = 0; i < small.n; i++) {
        float x = small.mat[(size_t)i * small.d + small_neurons[2]];
        if (npi_pid(&v, i) != 0 && x > vbest) {
            vbest = x;
            victim = i;
        }
    }
    uint8_t *byte = (uint8_t *)v.pids + victim / 2;
    *byte &= (uint8_t)(victim % 2 ? 0x0f : 0xf0);
    ck_assert_uint_eq(npi_pid(&v, victim), 0);
    npi_view gv[4];
    memcpy(gv, small_gv, sizeof gv);
    gv[2] = v;

    eng_query q = small_query();
    q.k = 10;
    eng_result out[10];
    size_t nout;
    synth y = {.s = &small};
    eng_source src = {&y, synth_fetch, {0}};
    char err[128] = "";
    q.method = ENG_NTA;
    ck_assert_int_eq(eng_run(&q, gv, &src, out, &nout, NULL, err, sizeof err), -1);
    ck_assert_ptr_nonnull(strstr(err, "corrupt"));
    eng_result *want = malloc(small.n * sizeof *want);
    for (int kind = 0; kind < 2; kind++) {
        float target[4];
        for (int j = 0; j < 4; j++)
            target[j] = small.mat[(size_t)victim * small.d + small_neurons[j]];
        q.kind = kind ? ENG_KNN : ENG_TOPK;
        q.target = target;
        size_t nwant = brute_force(&small, &q, want);
        run_and_compare(&small, &q, ENG_BOUNDS, gv, want, nwant, "[corrupt pids]");
    }
    double w[4] = {0.01, 0.01, 10.0, 0.01};
    q.kind = ENG_TOPK;
    q.weights = w;
    q.k = 100;
    size_t nwant = brute_force(&small, &q, want);
    int found = 0;
    for (size_t i = 0; i < nwant; i++)
        found |= want[i].input == victim;
    ck_assert_msg(found, "the victim %u should be in the weighted top-100", victim);
    run_and_compare(&small, &q, ENG_BOUNDS, gv, want, nwant, "[corrupt pids, weighted]");
    /* the victim's value far above anything its (corrupt) cell could say:
     * only a best bound for the unknown cell finds it, in every pass (the
     * coarse one included: unweighted sums over 2,000 dense candidates) */
    float *vx = &small.mat[(size_t)victim * small.d + small_neurons[2]], keep = *vx;
    *vx = 1e6f;
    q.weights = NULL;
    for (int kind = 0; kind < 2; kind++) {
        float target[4] = {0, 0, 1e6f, 0};
        q.kind = kind ? ENG_KNN : ENG_TOPK;
        q.target = target;
        q.k = 1;
        nwant = brute_force(&small, &q, want);
        ck_assert_uint_eq(want[0].input, victim);
        run_and_compare(&small, &q, ENG_BOUNDS, gv, want, nwant, "[corrupt pids, the victim first]");
    }
    *vx = keep;
    free(want);
    free(blob);
}
END_TEST

/* Scores by hand for a few vectors (the definitions of server/engine/README.md). */
START_TEST(test_score_definitions)
{
    uint32_t nn[3] = {0, 1, 2};
    float x[3] = {1.0f, -2.0f, 4.0f};
    float t[3] = {4.0f, 2.0f, 4.0f};
    double w[3] = {2.0, 0.5, 0.0};
    eng_query q = {.kind = ENG_TOPK, .gsize = 3, .neurons = nn, .n = 1, .k = 1};
    q.agg = ENG_SUM;
    ck_assert_double_eq(eng_score(&q, x), 3.0);
    q.agg = ENG_MEAN;
    ck_assert_double_eq(eng_score(&q, x), 1.0);
    q.agg = ENG_MAX;
    ck_assert_double_eq(eng_score(&q, x), 4.0);
    q.agg = ENG_MIN;
    ck_assert_double_eq(eng_score(&q, x), -2.0);
    q.agg = ENG_SUM;
    q.weights = w;
    ck_assert_double_eq(eng_score(&q, x), 1.0);
    q.kind = ENG_KNN;
    q.target = t;
    q.weights = NULL;
    q.metric = ENG_L2;
    ck_assert_double_eq(eng_score(&q, x), 5.0);
    q.metric = ENG_L1;
    ck_assert_double_eq(eng_score(&q, x), 7.0);
    q.metric = ENG_LINF;
    ck_assert_double_eq(eng_score(&q, x), 4.0);
    q.weights = w; /* d = (-3, -4, 0) */
    q.metric = ENG_L2;
    ck_assert_double_eq(eng_score(&q, x), sqrt(26.0));
    q.metric = ENG_L1;
    ck_assert_double_eq(eng_score(&q, x), 8.0);
    q.metric = ENG_LINF;
    ck_assert_double_eq(eng_score(&q, x), 6.0);
    x[1] = NAN;
    ck_assert(isinf(eng_score(&q, x)) && eng_score(&q, x) > 0);
    q.kind = ENG_TOPK;
    q.agg = ENG_MIN;
    ck_assert(isinf(eng_score(&q, x)) && eng_score(&q, x) < 0);
}
END_TEST

/* The heap against a sort, with many ties and k beyond the pushes. */
START_TEST(test_topk_heap)
{
    rng_seed(5);
    for (int c = 0; c < 300; c++) {
        size_t k = 1 + rng_below(c % 3 ? 20 : 3000);
        size_t n = rng_below(2500);
        int smallest = (int)rng_below(2);
        eng_topk *h = eng_topk_new(k, smallest);
        ck_assert_ptr_nonnull(h);
        eng_result *all = malloc((n + 1) * sizeof *all);
        uint32_t *perm = malloc((n + 1) * sizeof *perm);
        for (size_t i = 0; i < n; i++)
            perm[i] = (uint32_t)i;
        for (size_t i = n; i > 1; i--) {
            uint32_t j = rng_below((uint32_t)i), x = perm[i - 1];
            perm[i - 1] = perm[j];
            perm[j] = x;
        }
        int fullness_ok = 1;
        for (size_t i = 0; i < n; i++) {
            all[i].input = perm[i] * 3 + 1;
            all[i].value = (double)rng_below(c % 2 ? 5 : 100000);
            eng_topk_push(h, all[i].input, all[i].value);
            fullness_ok &= eng_topk_full(h) == (i + 1 >= k);
        }
        ck_assert(fullness_ok);
        bf_kind = smallest ? ENG_KNN : ENG_TOPK;
        qsort(all, n, sizeof *all, bf_cmp);
        size_t want = n < k ? n : k;
        if (want == k && want > 0)
            ck_assert(eng_topk_worst(h) == all[k - 1].value);
        eng_result *out = malloc((want + 1) * sizeof *out);
        ck_assert_uint_eq(eng_topk_finish(h, out), want);
        size_t same = 0;
        while (same < want && out[same].input == all[same].input &&
               out[same].value == all[same].value)
            same++;
        ck_assert_uint_eq(same, want);
        eng_topk_free(h);
        free(all);
        free(perm);
        free(out);
    }
    ck_assert_ptr_null(eng_topk_new(0, 0));
}
END_TEST

int main(void)
{
    T = mmap(NULL, sizeof *T, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (T == MAP_FAILED)
        return 2;
    /* the engine's fresh buffers filled with junk (a NaN-free huge value):
     * a pass that leaves part of one unwritten shows up as a wrong answer */
    mallopt(M_PERTURB, 0xaa); /* fills with 0x55 bytes: 1.2e103 as a double */
    mallopt(M_MMAP_THRESHOLD, 256 << 20); /* the large ones too (mmap gives zeros) */
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("property");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_property, 0, PROPERTY_ITERS);
    tcase_add_test(tc, test_wide_group);
    tcase_add_loop_test(tc, test_larger_n, 0, 6);
    tcase_add_loop_test(tc, test_blocked_bounds, 0, 18);
    tcase_add_loop_test(tc, test_pool_passes, 0, 8);
    tcase_add_loop_test(tc, test_coarse_keys_threads, 0, 6);
    tcase_add_test(tc, test_fetch_counts);
    tcase_add_test(tc, test_dead_neuron_ties_stop);
    tcase_add_test(tc, test_index_held_scores);
    tcase_add_loop_test(tc, test_one_neuron_from_mai, 0, 16);
    tcase_add_test(tc, test_whole_forwards);
    tcase_add_test(tc, test_coarse_margin);
    tcase_add_test(tc, test_nta_stops_on_ties);
    suite_add_tcase(s, tc);

    tc = tcase_create("behaviour");
    tcase_set_timeout(tc, 60);
    tcase_add_unchecked_fixture(tc, small_setup, small_teardown);
    tcase_add_test(tc, test_auto_picks);
    tcase_add_test(tc, test_cancel);
    tcase_add_test(tc, test_source_failure);
    tcase_add_test(tc, test_needs_index);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_corrupt_index);
    tcase_add_test(tc, test_corrupt_partition_ids);
    tcase_add_test(tc, test_score_definitions);
    tcase_add_test(tc, test_topk_heap);
    suite_add_tcase(s, tc);

    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    printf("random queries: %llu, engine runs: %llu; inputs computed by scan %llu, nta %llu, "
           "bounds %llu; coarse passes %llu, widened %llu\n",
           (unsigned long long)T->queries, (unsigned long long)T->runs,
           (unsigned long long)T->fetched[ENG_SCAN], (unsigned long long)T->fetched[ENG_NTA],
           (unsigned long long)T->fetched[ENG_BOUNDS], (unsigned long long)T->coarse,
           (unsigned long long)T->widened);
    munmap(T, sizeof *T);
    return failed ? 1 : 0;
}
