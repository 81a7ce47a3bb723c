/* test_shape.c -- the index shape picked from a storage budget (shape.h):
 * it fits, it is the largest that fits, given values are kept, and the
 * defaults the README states. Sizes come from npi_blob_size (test_npi). */
#include <check.h>
#include <math.h>
#include <stdio.h>

#include "npi.h"
#include "shape.h"

static const uint64_t NS[] = {1, 2, 10, 59, 60, 61, 100, 511, 512, 1000, 4096, 9999, 10000, 10001,
                              50000, 70000, 100000, 1000000, 1234567, 10000000, 100000000};
static const double BUDGETS[] = {0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.5, 0.75, 1.0};
#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static int fits(uint64_t n, double budget, uint32_t P, double mai)
{
    return (double)npi_blob_size((uint32_t)n, P, npi_mai_count((uint32_t)n, mai)) <= shape_room(n, budget);
}

/* the next ratio the picker would have tried above mai */
static double next_mai(double mai)
{
    return mai < 0.00999 ? mai + 0.001 : mai + 0.01;
}

START_TEST(test_picked_fits_and_is_largest)
{
    for (size_t i = 0; i < COUNT(NS); i++)
        for (size_t j = 0; j < COUNT(BUDGETS); j++) {
            uint64_t n = NS[i];
            double b = BUDGETS[j];
            uint32_t P = 0;
            double mai = -1;
            shape_pick(n, b, &P, &mai);
            ck_assert_msg(P >= 2 && P <= 256 && (P & (P - 1)) == 0, "n=%lu b=%g P=%u", (unsigned long)n, b, P);
            ck_assert_msg(mai >= 0 && mai <= 0.5, "n=%lu b=%g mai=%g", (unsigned long)n, b, mai);
            /* a decimal: thousandths, whole percent from 1% up */
            double units = mai * 1000;
            ck_assert_msg(fabs(units - round(units)) < 1e-6, "n=%lu b=%g mai=%.17g", (unsigned long)n, b, mai);
            if (mai >= 0.01)
                ck_assert_msg(((long)round(units)) % 10 == 0, "n=%lu b=%g mai=%g", (unsigned long)n, b, mai);
            if (!fits(n, b, 2, 0)) {
                /* nothing fits (a handful of inputs): the smallest shape */
                ck_assert_msg(P == 2 && mai == 0, "n=%lu b=%g P=%u mai=%g", (unsigned long)n, b, P, mai);
                continue;
            }
            ck_assert_msg(fits(n, b, P, mai), "n=%lu b=%g P=%u mai=%g does not fit", (unsigned long)n, b, P, mai);
            /* the most partitions that leave the MAI its floor */
            if (P < 256)
                ck_assert_msg(!fits(n, b, 2 * P, SHAPE_MAI_FLOOR), "n=%lu b=%g: %u partitions fit", (unsigned long)n,
                              b, 2 * P);
            if (P > 2)
                ck_assert_msg(fits(n, b, P, SHAPE_MAI_FLOOR), "n=%lu b=%g P=%u below the floor", (unsigned long)n, b, P);
            /* then the largest MAI that fits */
            if (mai < 0.5)
                ck_assert_msg(!fits(n, b, P, next_mai(mai)), "n=%lu b=%g P=%u: mai %g fits", (unsigned long)n, b, P,
                              next_mai(mai));
            /* the index within the budget of full materialization */
            double ratio = (double)npi_blob_size((uint32_t)n, P, npi_mai_count((uint32_t)n, mai)) / (4.0 * n);
            ck_assert_msg(ratio <= b, "n=%lu b=%g ratio %g", (unsigned long)n, b, ratio);
        }
}
END_TEST

START_TEST(test_more_budget_never_fewer_partitions)
{
    for (size_t i = 0; i < COUNT(NS); i++) {
        uint32_t last = 0;
        for (size_t j = 0; j < COUNT(BUDGETS); j++) {
            uint32_t P = 0;
            double mai = -1;
            shape_pick(NS[i], BUDGETS[j], &P, &mai);
            ck_assert_msg(P >= last, "n=%lu b=%g P=%u < %u", (unsigned long)NS[i], BUDGETS[j], P, last);
            last = P;
        }
    }
}
END_TEST

START_TEST(test_given_values_kept)
{
    uint32_t P = 16;
    double mai = -1;
    shape_pick(70000, 0.2, &P, &mai);
    ck_assert_uint_eq(P, 16);
    ck_assert(fits(70000, 0.2, 16, mai) && !fits(70000, 0.2, 16, next_mai(mai)));
    ck_assert(mai > 0.01); /* 16 partitions leave more room than 64 */

    P = 0;
    mai = 0.03;
    shape_pick(70000, 0.2, &P, &mai);
    ck_assert(mai == 0.03);
    ck_assert(P >= 2 && P <= 256);

    P = 8;
    mai = 0.25; /* both given: kept even beyond the budget (the caller asked) */
    shape_pick(1000, 0.01, &P, &mai);
    ck_assert(P == 8 && mai == 0.25);
}
END_TEST

/* The defaults the README and the API docs state. */
START_TEST(test_documented_defaults)
{
    static const struct { uint64_t n; uint32_t P; double mai; } want[] = {
        {10000, 32, 0.01}, {70000, 64, 0.003}, {1000000, 64, 0.004}};
    for (size_t i = 0; i < COUNT(want); i++) {
        uint32_t P = 0;
        double mai = -1;
        shape_pick(want[i].n, 0.2, &P, &mai);
        ck_assert_msg(P == want[i].P && fabs(mai - want[i].mai) < 1e-12, "n=%lu: P=%u mai=%g",
                      (unsigned long)want[i].n, P, mai);
    }
}
END_TEST

int main(void)
{
    Suite *su = suite_create("shape");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_picked_fits_and_is_largest);
    tcase_add_test(tc, test_more_budget_never_fewer_partitions);
    tcase_add_test(tc, test_given_values_kept);
    tcase_add_test(tc, test_documented_defaults);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
