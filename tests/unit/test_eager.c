/* test_eager.c -- the fit policy's picks (eager.h): on random models every
 * pick is a candidate worth it alone, the picks fit the spend cap and the
 * memory, and none that would still fit at the chosen reach is left out;
 * on the demo CNN's costs the pass for any of pool1, conv4, fc1 indexes the
 * other two, and conv3 never, with timings off by up to 5%. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "eager.h"
#include "testrng.h"

#define MAXL 24

static double spend_of(const eager_layer *ly, int L)
{
    double own = 0;
    int d = -1;
    for (int l = 0; l < L; l++)
        if (ly[l].role == EAGER_ASKED) own += ly[l].index_s, d = l;
    return d < 0 ? 0 : EAGER_FIT_SPEND * (own + ly[d].forward_s);
}

/* Checks the picks of one instance against the rules. */
static void check_picks(const eager_layer *ly, int L, uint64_t mem, const int *pick, int np, const char *what)
{
    int d = -1, reach = -1, seen[MAXL] = {0};
    for (int l = 0; l < L; l++)
        if (ly[l].role == EAGER_ASKED) d = l;
    if (d < 0) {
        ck_assert_msg(np == 0, "%s: picks without an asked layer", what);
        return;
    }
    reach = d;
    double spent = 0;
    uint64_t held = 0;
    for (int i = 0; i < np; i++) {
        int l = pick[i];
        ck_assert_msg(l >= 0 && l < L && !seen[l], "%s: pick %d bad or twice", what, l);
        seen[l] = 1;
        ck_assert_msg(ly[l].role == EAGER_CANDIDATE, "%s: picked %d, not a candidate", what, l);
        ck_assert_msg(ly[l].index_s <= ly[l].forward_s, "%s: picked %d, index over its forward", what, l);
        spent += ly[l].index_s;
        held += ly[l].hold_bytes;
        if (l > reach) reach = l;
    }
    double ext = 0; /* the pass computes every layer from d to reach */
    for (int l = d; l <= reach; l++)
        if (ly[l].forward_s - ly[d].forward_s > ext) ext = ly[l].forward_s - ly[d].forward_s;
    double cap = spend_of(ly, L);
    ck_assert_msg(spent + ext <= cap * (1 + 1e-12), "%s: spends %g + %g over %g", what, spent, ext, cap);
    ck_assert_msg(held <= mem, "%s: holds %llu over %llu", what, (unsigned long long)held, (unsigned long long)mem);
    /* maximal at its reach: nothing worth it that still fits was left out */
    for (int l = 0; l <= reach; l++) {
        if (seen[l] || ly[l].role != EAGER_CANDIDATE || !(ly[l].index_s <= ly[l].forward_s)) continue;
        ck_assert_msg(spent + ext + ly[l].index_s > cap || held + ly[l].hold_bytes > mem,
                      "%s: layer %d fits (index %g, spent %g + %g of %g) but was left out", what, l, ly[l].index_s,
                      spent, ext, cap);
    }
}

START_TEST(test_random_models)
{
    rng_seed(20261207);
    int nonempty = 0, beyond = 0;
    for (int it = 0; it < 20000; it++) {
        int L = 1 + (int)rng_below(MAXL);
        eager_layer ly[MAXL];
        double f = 0;
        for (int l = 0; l < L; l++) {
            f += rng_unit() * 3; /* forwards grow with depth, mostly */
            double jitter = rng_below(4) == 0 ? (rng_unit() - 0.5) : 0;
            ly[l].forward_s = f + jitter > 0 ? f + jitter : 0.01;
            ly[l].index_s = rng_unit() * rng_unit() * 8;
            ly[l].hold_bytes = (uint64_t)rng_below(1000) << 20;
            uint32_t r = rng_below(10);
            ly[l].role = r < 2 ? EAGER_ASKED : r < 3 ? EAGER_SKIP : EAGER_CANDIDATE;
        }
        uint64_t mem = (uint64_t)rng_below(4000) << 20;
        int pick[MAXL], max_pick = 1 + (int)rng_below(MAXL);
        memset(pick, 0xff, sizeof pick);
        int np = eager_fit(ly, L, mem, pick, max_pick);
        char what[64];
        snprintf(what, sizeof what, "case %d (L %d)", it, L);
        ck_assert_msg(np >= 0 && np <= max_pick, "%s: %d picks of at most %d", what, np, max_pick);
        if (np == max_pick) continue; /* capped: maximality does not hold */
        check_picks(ly, L, mem, pick, np, what);
        nonempty += np > 0;
        int d = -1;
        for (int l = 0; l < L; l++)
            if (ly[l].role == EAGER_ASKED) d = l;
        for (int i = 0; i < np; i++) beyond += pick[i] > d;
    }
    /* the generator exercises both kinds of pick */
    ck_assert_int_gt(nonempty, 5000);
    ck_assert_int_gt(beyond, 1000);
}
END_TEST

/* The demo CNN at 70,000 inputs: forwards of 64 inputs timed at load (ms),
 * neurons, 1.5 ns a byte of activations, ~57.7 KB of pass state a neuron
 * (pool1 measured 362 MB), a 2 GiB budget less an eighth. */
static const char *const NAMES[] = {"conv1", "conv2", "pool1", "conv3", "pool2", "conv4", "fc1", "logits"};
static const double MS[] = {0.38, 3.54, 3.12, 4.90, 5.07, 5.83, 6.77, 6.89};
static const double NEURONS[] = {12544, 25088, 6272, 12544, 3136, 3136, 64, 10};

static int demo(int asked, double noise, int *pick, uint64_t *mem_out, eager_layer *ly)
{
    const double batches = 1094, n = 70000;
    uint64_t mem = (uint64_t)2048 * 7 / 8 << 20;
    for (int l = 0; l < 8; l++) {
        double j = noise ? 1 + noise * (2 * rng_unit() - 1) : 1;
        ly[l] = (eager_layer){.forward_s = MS[l] * j * batches / 1000,
                              .index_s = n * NEURONS[l] * 4 * 1.5e-9,
                              .hold_bytes = (uint64_t)(NEURONS[l] * 57700),
                              .role = l == asked ? EAGER_ASKED : EAGER_CANDIDATE};
    }
    mem -= ly[asked].hold_bytes;
    *mem_out = mem;
    return eager_fit(ly, 8, mem, pick, 16);
}

START_TEST(test_demo_cnn_sessions)
{
    const int session[] = {2, 5, 6}; /* pool1, conv4, fc1 */
    rng_seed(7);
    for (int it = 0; it < 300; it++) {
        double noise = it == 0 ? 0 : 0.05;
        for (int s = 0; s < 3; s++) {
            eager_layer ly[8];
            int pick[16];
            uint64_t mem;
            int np = demo(session[s], noise, pick, &mem, ly);
            check_picks(ly, 8, mem, pick, np, NAMES[session[s]]);
            int has[8] = {0};
            for (int i = 0; i < np; i++) has[pick[i]] = 1;
            for (int o = 0; o < 3; o++)
                if (o != s)
                    ck_assert_msg(has[session[o]], "iteration %d: the pass for %s leaves %s out", it,
                                  NAMES[session[s]], NAMES[session[o]]);
            ck_assert_msg(!has[3], "iteration %d: the pass for %s indexes conv3", it, NAMES[session[s]]);
            ck_assert_msg(!has[0] && !has[1], "iteration %d: conv1/conv2 cost more than their forward", it);
        }
    }
}
END_TEST

START_TEST(test_edges)
{
    eager_layer ly[3] = {{1, 0.1, 1, EAGER_CANDIDATE}, {2, 0.1, 1, EAGER_CANDIDATE}, {3, 0.1, 1, EAGER_SKIP}};
    int pick[4];
    ck_assert_int_eq(eager_fit(ly, 3, 100, pick, 4), 0); /* nothing asked */
    ly[2].role = EAGER_ASKED;
    ck_assert_int_eq(eager_fit(ly, 3, 100, pick, 0), 0);
    ck_assert_int_eq(eager_fit(ly, 3, 0, pick, 4), 0); /* no memory */
    int np = eager_fit(ly, 3, 100, pick, 4);
    ck_assert_int_eq(np, 2);
    ck_assert_int_eq(pick[0], 1); /* 0.05 of its forward before 0.1 */
    ck_assert_int_eq(pick[1], 0);
    /* the extension counts against what it saves: layer 2 saves 21 s of
     * forward for 11 s more of it (net 10), layer 0 10.5 at no extension;
     * only one fits the 12.12 s to spend (1.2 x 10.1) */
    eager_layer ext[3] = {{10.5, 1, 1, EAGER_CANDIDATE}, {10, 0.1, 1, EAGER_ASKED}, {21, 0.5, 1, EAGER_CANDIDATE}};
    np = eager_fit(ext, 3, 100, pick, 4);
    ck_assert_int_eq(np, 1);
    ck_assert_int_eq(pick[0], 0);
    ly[0].forward_s = 0; /* no timing: never picked */
    ly[1].index_s = 2.5; /* costs more than its forward */
    ck_assert_int_eq(eager_fit(ly, 3, 100, pick, 4), 0);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("eager");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_random_models);
    tcase_add_test(tc, test_demo_cnn_sessions);
    tcase_add_test(tc, test_edges);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
