/* test_npi.c -- the per-neuron MAI/NPI blob against an independent reference
 * (qsort by value descending, ties smaller id first, NaN lowest). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "npi.h"

/* Per-element checks: Check's ck_assert records a mark point per call (a
 * write to a pipe in fork mode), far too slow for millions of checks. */
#define EXPECT(cond, ...)                                                            \
    do {                                                                             \
        if (!(cond))                                                                 \
            ck_abort_msg(__VA_ARGS__);                                               \
    } while (0)

/* ---- deterministic generator ------------------------------------------ */

#include "testrng.h"

/* ---- reference -------------------------------------------------------- */

typedef struct { float v; uint32_t id; } ref_el;

static int ref_cmp(const void *pa, const void *pb)
{
    const ref_el *a = pa, *b = pb;
    int an = isnan(a->v), bn = isnan(b->v);
    if (an != bn)
        return an ? 1 : -1; /* NaN last */
    if (!an) {
        if (a->v > b->v)
            return -1;
        if (a->v < b->v)
            return 1;
    }
    return a->id < b->id ? -1 : a->id > b->id;
}

static float nan_free(float v) { return isnan(v) ? -INFINITY : v; }

static int same_bits(float a, float b) { return memcmp(&a, &b, 4) == 0; }

/* Builds the blob and checks every property of it against the reference. */
static void check_case(const float *vals, uint32_t n, uint32_t P, uint32_t m, const char *what)
{
    size_t len = npi_blob_size(n, P, m);
    uint32_t *blob = malloc(len + 4);
    npi_scratch *s = npi_scratch_new(n);
    ck_assert_ptr_nonnull(blob);
    ck_assert_ptr_nonnull(s);
    EXPECT(npi_build(vals, n, P, m, s, blob) == 0, "%s: build", what);
    npi_view v;
    EXPECT(npi_decode(blob, len, &v) == 0, "%s: decode", what);
    ck_assert_uint_eq(v.n, n);
    ck_assert_uint_eq(v.partitions, P);
    ck_assert_uint_eq(v.mai_count, m);
    ck_assert_uint_eq(v.bits, npi_bits(P));

    ref_el *r = malloc((n ? n : 1) * sizeof *r);
    for (uint32_t i = 0; i < n; i++) {
        r[i].v = vals[i];
        r[i].id = i;
    }
    qsort(r, n, sizeof *r, ref_cmp);

    /* expected partition of every rank: equi-depth, larger first */
    uint32_t *rank_pid = malloc((n ? n : 1) * sizeof *rank_pid);
    uint32_t *size = calloc(P, sizeof *size);
    for (uint32_t k = 0; k < n; k++) {
        uint32_t p;
        if (k < m) {
            p = 0;
        } else {
            /* independent formula: rank k - m among rest, Q partitions */
            uint32_t rest = n - m, Q = P - 1, base = rest / Q, extra = rest % Q;
            uint32_t j = k - m, big = extra * (base + 1);
            p = 1 + (j < big ? j / (base + 1) : extra + (j - big) / base);
        }
        rank_pid[k] = p;
        size[p]++;
    }
    /* sizes: sum N, partitions 1..P-1 differ by at most one, larger first */
    uint32_t sum = 0;
    for (uint32_t p = 0; p < P; p++)
        sum += size[p];
    ck_assert_uint_eq(sum, n);
    ck_assert_uint_eq(size[0], m);
    for (uint32_t p = 2; p < P; p++) {
        EXPECT(size[p] <= size[p - 1], "%s: sizes not larger-first", what);
        EXPECT(size[1] - size[p] <= 1, "%s: sizes differ by >1", what);
    }

    /* MAI: top m in rank order, exact values */
    for (uint32_t k = 0; k < m; k++) {
        EXPECT(v.mai_ids[k] == r[k].id, "%s: n=%u P=%u m=%u mai_ids[%u]=%u want %u", what, n, P, m, k,
                      v.mai_ids[k], r[k].id);
        EXPECT(same_bits(v.mai_values[k], vals[r[k].id]), "%s: mai value %u", what, k);
    }

    /* per-input partition ids: npi_pid == npi_unpack == reference */
    uint8_t *unp = malloc(n ? n : 1);
    npi_unpack(&v, unp);
    uint32_t *count = calloc(P, sizeof *count);
    float *lo = malloc(P * sizeof *lo), *hi = malloc(P * sizeof *hi);
    for (uint32_t p = 0; p < P; p++) {
        lo[p] = INFINITY;
        hi[p] = -INFINITY;
    }
    for (uint32_t k = 0; k < n; k++) {
        uint32_t id = r[k].id, want = rank_pid[k];
        uint32_t got = npi_pid(&v, id);
        EXPECT(got == want, "%s: n=%u P=%u m=%u input %u (rank %u) pid %u want %u",
                      what, n, P, m, id, k, got, want);
        EXPECT(unp[id] == want, "%s: unpack input %u: %u want %u", what, id, unp[id],
                      want);
        count[got]++;
        float x = nan_free(vals[id]);
        if (x < lo[want])
            lo[want] = x;
        if (x > hi[want])
            hi[want] = x;
    }
    /* members of p rank before members of p+1: rank_pid is monotone by
     * construction, and we compared pids per rank; bounds are tight */
    for (uint32_t p = 0; p < P; p++) {
        EXPECT(count[p] == size[p], "%s: partition %u has %u members, want %u", what, p, count[p], size[p]);
        if (size[p] == 0) {
            EXPECT(isinf(v.lower[p]) && v.lower[p] > 0, "%s: empty lower", what);
            EXPECT(isinf(v.upper[p]) && v.upper[p] < 0, "%s: empty upper", what);
        } else {
            EXPECT(v.lower[p] == lo[p], "%s: P=%u p=%u lower %g want %g", what, P, p,
                          v.lower[p], lo[p]);
            EXPECT(v.upper[p] == hi[p], "%s: P=%u p=%u upper %g want %g", what, P, p,
                          v.upper[p], hi[p]);
            EXPECT(!isnan(v.lower[p]) && !isnan(v.upper[p]), "%s: NaN bound", what);
        }
    }
    /* every member's value within its partition's bounds */
    for (uint32_t i = 0; i < n; i++) {
        uint32_t p = unp[i];
        float x = nan_free(vals[i]);
        EXPECT(x >= v.lower[p] && x <= v.upper[p], "%s: input %u outside bounds", what,
                      i);
    }
    /* the pad bytes after the ids are zero (blobs are compared bytewise) */
    size_t used = ((uint64_t)n * v.bits + 7) / 8;
    for (size_t k = used; k < used + 3; k++)
        EXPECT(v.pids[k] == 0, "%s: pad byte %zu not zero", what, k);

    free(unp);
    free(count);
    free(lo);
    free(hi);
    free(size);
    free(rank_pid);
    free(r);
    npi_scratch_free(s);
    free(blob);
}

/* ---- value generators ------------------------------------------------- */

enum { G_UNIFORM, G_NORMALISH, G_FEW_TIES, G_CONSTANT, G_ZERO, G_NEG, G_SIGNED_ZERO,
       G_NAN, G_RELU, G_WIDE, G_INF, G_COUNT };

static float gen_value(int g, float c)
{
    switch (g) {
    case G_UNIFORM: return (float)rng_unit();
    case G_NORMALISH: return (float)(rng_unit() + rng_unit() + rng_unit() - 1.5) * 3.0f;
    case G_FEW_TIES: return (float)rng_below(4) * 0.5f - 0.5f;
    case G_CONSTANT: return c;
    case G_ZERO: return 0.0f;
    case G_NEG: return -(float)rng_unit() * 100.0f - 1e-3f;
    case G_SIGNED_ZERO: {
        uint32_t k = rng_below(4);
        return k == 0 ? 0.0f : k == 1 ? -0.0f : k == 2 ? 1.0f : -1.0f;
    }
    case G_NAN: return rng_below(5) == 0 ? NAN : (float)rng_unit() - 0.5f;
    case G_RELU: return rng_below(2) ? 0.0f : (float)(-log(rng_unit() + 1e-12));
    case G_WIDE: {
        float x = ldexpf((float)rng_unit() + 0.5f, (int)rng_below(120) - 60);
        return rng_below(2) ? x : -x;
    }
    case G_INF: {
        uint32_t k = rng_below(6);
        return k == 0 ? INFINITY : k == 1 ? -INFINITY : k == 2 ? NAN : (float)rng_unit();
    }
    }
    return 0.0f;
}

static void fill(float *vals, uint32_t n, int g)
{
    float c = (float)rng_unit() * 10.0f - 5.0f;
    for (uint32_t i = 0; i < n; i++)
        vals[i] = gen_value(g, c);
}

/* ---- tests ------------------------------------------------------------ */

START_TEST(test_bits_and_sizes)
{
    static const uint32_t P[] = {2, 3, 4, 5, 8, 9, 16, 17, 100, 128, 129, 255, 256};
    static const uint32_t B[] = {1, 2, 2, 3, 3, 4, 4, 5, 7, 7, 8, 8, 8};
    for (size_t i = 0; i < sizeof P / sizeof *P; i++)
        ck_assert_uint_eq(npi_bits(P[i]), B[i]);
    ck_assert_uint_eq(npi_mai_count(70000, 0.03), 2100);
    ck_assert_uint_eq(npi_mai_count(70000, 0.0), 0);
    ck_assert_uint_eq(npi_mai_count(70000, 1.0), 70000);
    ck_assert_uint_eq(npi_mai_count(70000, 2.0), 70000);
    ck_assert_uint_eq(npi_mai_count(3, 0.5), 2);
    ck_assert_uint_eq(npi_mai_count(10, 1e-6), 1);
    ck_assert_uint_eq(npi_mai_count(1000, 0.1), 100);
    ck_assert_uint_eq(npi_mai_count(1001, 0.1), 101);
    ck_assert_uint_eq(npi_mai_count(0, 0.5), 0);
    /* header 24 + bounds 8P + MAI 8m + packed ids + 3 pad */
    ck_assert_uint_eq(npi_blob_size(10, 16, 2), 24 + 128 + 16 + 5 + 3);
    ck_assert_uint_eq(npi_blob_size(9, 3, 0), 24 + 24 + 0 + 3 + 3);
    ck_assert_uint_eq(npi_blob_size(70000, 256, 2100), 24 + 2048 + 16800 + 70000 + 3);
}
END_TEST

START_TEST(test_random_cases)
{
    static const uint32_t Ps[] = {2, 3, 4, 5, 16, 17, 100, 255, 256};
    rng_seed(12345);
    float *vals = malloc(6000 * sizeof *vals);
    char what[64];
    for (int t = 0; t < 3000; t++) {
        int g = t % G_COUNT;
        uint32_t n;
        switch (rng_below(4)) {
        case 0: n = 1 + rng_below(8); break;
        case 1: n = 1 + rng_below(300); break;
        case 2: n = 1 + rng_below(2000); break;
        default: n = 2000 + rng_below(4000); break;
        }
        uint32_t P = rng_below(3) ? Ps[rng_below(sizeof Ps / sizeof *Ps)] : 2 + rng_below(255);
        uint32_t m;
        switch (rng_below(5)) {
        case 0: m = 0; break;
        case 1: m = n; break;
        case 2: m = npi_mai_count(n, 0.03); break;
        default: m = rng_below(n + 1); break;
        }
        fill(vals, n, g);
        snprintf(what, sizeof what, "case %d gen %d", t, g);
        check_case(vals, n, P, m, what);
    }
    free(vals);
}
END_TEST

START_TEST(test_edge_cases)
{
    float one = 3.5f;
    check_case(&one, 1, 2, 0, "N=1 m=0");
    check_case(&one, 1, 2, 1, "N=1 m=1");
    check_case(&one, 1, 256, 0, "N=1 P=256");
    float nanv = NAN;
    check_case(&nanv, 1, 3, 1, "N=1 NaN in MAI");
    check_case(&nanv, 1, 3, 0, "N=1 NaN partition");
    float small[7] = {1, 2, 3, 4, 5, 6, 7};
    check_case(small, 7, 256, 2, "N<P");
    check_case(small, 7, 9, 0, "N<P-1 m=0");
    float eq[1000];
    for (int i = 0; i < 1000; i++)
        eq[i] = 0.25f;
    check_case(eq, 1000, 16, 30, "all equal");
    check_case(eq, 1000, 17, 1000, "all equal m=N");
    for (int i = 0; i < 1000; i++)
        eq[i] = (i & 1) ? -0.0f : 0.0f;
    check_case(eq, 1000, 5, 7, "signed zeros");
}
END_TEST

/* Exact expectations for one tiny hand-checked neuron (independent of qsort). */
START_TEST(test_known_layout)
{
    /* ranks: id3(9) id0(5) id2(5) id5(4) id1(1) id4(-2) id6(NaN) */
    float v[7] = {5, 1, 5, 9, -2, 4, NAN};
    uint32_t blob[64];
    ck_assert_uint_le(npi_blob_size(7, 3, 2), sizeof blob);
    npi_scratch *s = npi_scratch_new(7);
    ck_assert_int_eq(npi_build(v, 7, 3, 2, s, blob), 0);
    npi_view w;
    ck_assert_int_eq(npi_decode(blob, npi_blob_size(7, 3, 2), &w), 0);
    ck_assert_uint_eq(w.mai_ids[0], 3);
    ck_assert_uint_eq(w.mai_ids[1], 0);
    ck_assert(w.mai_values[0] == 9.0f && w.mai_values[1] == 5.0f);
    /* rest (5 inputs) in 2 partitions: 3 then 2: {id2, id5, id1}, {id4, id6} */
    static const uint32_t want[7] = {0, 1, 1, 0, 2, 1, 2};
    for (uint32_t i = 0; i < 7; i++)
        ck_assert_uint_eq(npi_pid(&w, i), want[i]);
    ck_assert(w.upper[0] == 9.0f && w.lower[0] == 5.0f);
    ck_assert(w.upper[1] == 5.0f && w.lower[1] == 1.0f);
    ck_assert(w.upper[2] == -2.0f && w.lower[2] == -INFINITY);
    npi_scratch_free(s);
}
END_TEST

START_TEST(test_bad_args)
{
    float v[4] = {1, 2, 3, 4};
    uint32_t blob[256];
    npi_scratch *s = npi_scratch_new(4);
    ck_assert_int_eq(npi_build(v, 4, 1, 0, s, blob), -1);
    ck_assert_int_eq(npi_build(v, 4, 257, 0, s, blob), -1);
    ck_assert_int_eq(npi_build(v, 4, 4, 5, s, blob), -1);
    ck_assert_int_eq(npi_build(v, 4, 4, 1, NULL, blob), -1);
    ck_assert_int_eq(npi_build(v, 4, 4, 1, s, (char *)blob + 1), -1);
    npi_scratch_free(s);
    s = npi_scratch_new(3); /* scratch too small for N=4 */
    ck_assert_int_eq(npi_build(v, 4, 4, 1, s, blob), -1);
    npi_scratch_free(s);
}
END_TEST

START_TEST(test_decode_rejects)
{
    rng_seed(7);
    float v[100];
    for (int i = 0; i < 100; i++)
        v[i] = (float)rng_unit();
    uint32_t P = 5, m = 3;
    size_t len = npi_blob_size(100, P, m);
    uint32_t *blob = malloc(len + 8), *bad = malloc(len + 8);
    npi_scratch *s = npi_scratch_new(100);
    ck_assert_int_eq(npi_build(v, 100, P, m, s, blob), 0);
    npi_view w;
    ck_assert_int_eq(npi_decode(blob, len, &w), 0);
    /* length off by one either way, truncated to the header, empty */
    ck_assert_int_eq(npi_decode(blob, len - 1, &w), -1);
    ck_assert_int_eq(npi_decode(blob, len + 1, &w), -1);
    ck_assert_int_eq(npi_decode(blob, 24, &w), -1);
    ck_assert_int_eq(npi_decode(blob, 10, &w), -1);
    ck_assert_int_eq(npi_decode(blob, 0, &w), -1);
    ck_assert_int_eq(npi_decode(NULL, len, &w), -1);
    /* corrupt header fields: magic, n, P (too small, too big, other), m, bits */
    struct { int word; uint32_t val; } bads[] = {
        {0, 0x3249504eu}, {1, 200}, {1, 50}, {1, 0}, {2, 1}, {2, 257}, {2, 6},
        {3, 101}, {3, 4}, {4, 2}, {4, 4}, {4, 0}};
    for (size_t k = 0; k < sizeof bads / sizeof *bads; k++) {
        memcpy(bad, blob, len);
        bad[bads[k].word] = bads[k].val;
        ck_assert_msg(npi_decode(bad, len, &w) == -1, "corrupt word %d accepted",
                      bads[k].word);
    }
    /* misaligned blob */
    memcpy((char *)bad + 1, blob, len);
    ck_assert_int_eq(npi_decode((char *)bad + 1, len, &w), -1);
    free(blob);
    free(bad);
    npi_scratch_free(s);
}
END_TEST

/* npi_unpack's fast paths and the generic path agree with npi_pid, for every
 * bit width and lengths around the byte boundaries. */
START_TEST(test_unpack_widths)
{
    rng_seed(99);
    static const uint32_t Ps[] = {2, 3, 4, 5, 9, 16, 17, 33, 65, 129, 256};
    float v[300];
    uint8_t out[300];
    for (size_t k = 0; k < sizeof Ps / sizeof *Ps; k++) {
        for (uint32_t n = 1; n <= 300; n += (n < 20 ? 1 : 37)) {
            for (uint32_t i = 0; i < n; i++)
                v[i] = (float)rng_unit();
            size_t len = npi_blob_size(n, Ps[k], 0);
            uint32_t *blob = malloc(len);
            npi_scratch *s = npi_scratch_new(n);
            ck_assert_int_eq(npi_build(v, n, Ps[k], 0, s, blob), 0);
            npi_view w;
            ck_assert_int_eq(npi_decode(blob, len, &w), 0);
            npi_unpack(&w, out);
            for (uint32_t i = 0; i < n; i++) {
                EXPECT(out[i] == npi_pid(&w, i), "P=%u n=%u input %u: unpack %u, pid %u",
                       Ps[k], n, i, out[i], npi_pid(&w, i));
                EXPECT(out[i] < Ps[k], "P=%u input %u: pid %u out of range", Ps[k], i, out[i]);
            }
            npi_scratch_free(s);
            free(blob);
        }
    }
}
END_TEST

/* A full-size neuron checked against the reference, then timed (printed
 * only; NPI_BENCH_ITERS sets the repetitions). */
START_TEST(test_large_and_bench)
{
    const uint32_t n = 70000, P = 16, m = npi_mai_count(70000, 0.03);
    float *vals = malloc(n * sizeof *vals);
    rng_seed(2024);
    for (int g = 0; g < 3; g++) {
        int gen = g == 0 ? G_RELU : g == 1 ? G_NORMALISH : G_UNIFORM;
        fill(vals, n, gen);
        check_case(vals, n, P, m, "large");
    }
    const char *it = getenv("NPI_BENCH_ITERS");
    int iters = it ? atoi(it) : 20;
    size_t len = npi_blob_size(n, P, m);
    uint32_t *blob = malloc(len);
    npi_scratch *s = npi_scratch_new(n);
    for (int g = 0; g < 3; g++) {
        int gen = g == 0 ? G_RELU : g == 1 ? G_NORMALISH : G_UNIFORM;
        fill(vals, n, gen);
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int k = 0; k < iters; k++)
            ck_assert_int_eq(npi_build(vals, n, P, m, s, blob), 0);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
        printf("npi_build N=%u P=%u m=%u %s: %.2f ns/value\n", n, P, m,
               g == 0 ? "relu" : g == 1 ? "normal" : "uniform", ns / iters / n);
    }
    npi_scratch_free(s);
    free(blob);
    free(vals);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("npi");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_bits_and_sizes);
    tcase_add_test(tc, test_known_layout);
    tcase_add_test(tc, test_edge_cases);
    tcase_add_test(tc, test_bad_args);
    tcase_add_test(tc, test_decode_rejects);
    tcase_add_test(tc, test_unpack_widths);
    tcase_add_test(tc, test_random_cases);
    tcase_add_test(tc, test_large_and_bench);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
