/* test_builder.c -- the bounded-memory builder core: the blobs it emits, in
 * memory and spilled, single- and multi-threaded, are byte-identical to
 * npi_build run directly on each neuron's column; emit order; errors; the
 * spill file leaves nothing behind. */
#include <fcntl.h>
#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder_core.h"
#include "npi.h"

#define MIB ((size_t)1 << 20)

#include "testrng.h"

/* An input-major layer: rows[i * neurons + j]; each neuron has its own kind
 * of values (ReLU-like, signed, few distinct values, constant, with NaN). */
static float *make_layer(uint32_t n, uint32_t neurons)
{
    float *rows = malloc((size_t)n * neurons * sizeof *rows);
    ck_assert_ptr_nonnull(rows);
    for (uint32_t j = 0; j < neurons; j++) {
        uint32_t kind = j % 5;
        float c = (float)rng_unit();
        for (uint32_t i = 0; i < n; i++) {
            float v;
            switch (kind) {
            case 0: v = rng_below(2) ? 0.0f : (float)-log(rng_unit() + 1e-9); break;
            case 1: v = (float)(rng_unit() - 0.5) * 8.0f; break;
            case 2: v = (float)rng_below(3); break;
            case 3: v = c; break;
            default: v = rng_below(50) == 0 ? NAN : (float)rng_unit(); break;
            }
            rows[(size_t)i * neurons + j] = v;
        }
    }
    return rows;
}

/* Expected blobs, built directly from each neuron's column. */
static uint8_t *direct_blobs(const float *rows, uint32_t n, uint32_t neurons, uint32_t P,
                             uint32_t m, size_t *blob_size)
{
    size_t bs = npi_blob_size(n, P, m), stride = (bs + 7) & ~(size_t)7;
    uint8_t *all = malloc(stride * neurons);
    float *col = malloc(n * sizeof *col);
    npi_scratch *s = npi_scratch_new(n);
    ck_assert(all && col && s);
    for (uint32_t j = 0; j < neurons; j++) {
        for (uint32_t i = 0; i < n; i++)
            col[i] = rows[(size_t)i * neurons + j];
        ck_assert_int_eq(npi_build(col, n, P, m, s, all + stride * j), 0);
    }
    npi_scratch_free(s);
    free(col);
    *blob_size = bs;
    return all;
}

typedef struct sink {
    uint32_t neurons;
    size_t blob_size, stride;
    const uint8_t *expect;
    uint64_t next;     /* next neuron expected */
    int bad_order, bad_len, bad_bytes;
    uint64_t stop_at;  /* emit returns nonzero at this neuron */
} sink;

static int collect(uint64_t neuron, const void *blob, size_t len, void *arg)
{
    sink *k = arg;
    if (neuron != k->next)
        k->bad_order++;
    k->next = neuron + 1;
    if (len != k->blob_size)
        k->bad_len++;
    else if (neuron < k->neurons && memcmp(blob, k->expect + k->stride * neuron, len) != 0)
        k->bad_bytes++;
    return neuron == k->stop_at ? 1 : 0;
}

static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            count++;
    closedir(d);
    return count;
}

/* Feeds the layer in batches of uneven sizes and checks every emitted blob. */
static void run_layer(uint32_t n, uint32_t neurons, uint32_t P, uint32_t m, size_t budget,
                      int threads, int want_spill)
{
    char tmpl[] = "/tmp/test_builder_XXXXXX";
    char *dir = mkdtemp(tmpl);
    ck_assert_ptr_nonnull(dir);
    float *rows = make_layer(n, neurons);
    size_t bs;
    uint8_t *expect = direct_blobs(rows, n, neurons, P, m, &bs);
    char err[256] = "";
    bcore *b = NULL;
    ck_assert_msg(bcore_new(n, neurons, P, m, budget, dir, &b, err, sizeof err) == 0, "%s",
                  err);
    ck_assert_int_eq(bcore_spilled(b), want_spill);
    bcore_set_transpose_threads(b, threads > 1 ? 2 : 1); /* a helper transposes half */
    ck_assert_int_eq(dir_entries(dir), 0); /* the spill file is unlinked at once */
    for (uint32_t first = 0; first < n;) {
        uint32_t count = 1 + rng_below(n / 3 + 1);
        if (count > n - first)
            count = n - first;
        ck_assert_msg(bcore_add(b, rows + (size_t)first * neurons, first, count, err,
                                sizeof err) == 0,
                      "%s", err);
        first += count;
    }
    sink k = {neurons, bs, (bs + 7) & ~(size_t)7, expect, 0, 0, 0, 0, UINT64_MAX};
    ck_assert_msg(bcore_finish(b, threads, collect, &k, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(k.next, neurons);
    ck_assert_int_eq(k.bad_order, 0);
    ck_assert_int_eq(k.bad_len, 0);
    ck_assert_msg(k.bad_bytes == 0, "%d blobs differ (n=%u neurons=%u threads=%d spill=%d)",
                  k.bad_bytes, n, neurons, threads, want_spill);
    /* activations within the budget; the ring adds 2 blobs per thread, or
     * up to 16 MiB of them */
    size_t ring = (size_t)2 * (threads > 1 ? threads : 1) * ((bs + 63) & ~(size_t)63);
    if (ring < 16 * MIB)
        ring = 16 * MIB;
    size_t peak = bcore_peak_bytes(b);
    ck_assert_msg(peak <= budget + ring, "peak %zu over budget %zu + ring %zu", peak, budget,
                  ring);
    if (!want_spill)
        ck_assert_uint_ge(peak, (size_t)n * neurons * sizeof(float));
    else
        ck_assert_uint_ge(peak, (size_t)n * sizeof(float)); /* at least one column */
    bcore_free(b);
    ck_assert_int_eq(dir_entries(dir), 0);
    ck_assert_int_eq(rmdir(dir), 0);
    free(expect);
    free(rows);
}

START_TEST(test_in_memory)
{
    rng_seed(1);
    run_layer(1000, 1, 16, 30, 64 * MIB, 1, 0);
    run_layer(1500, 37, 5, 45, 64 * MIB, 1, 0);
    run_layer(2500, 120, 16, 75, 64 * MIB, 3, 0);
    run_layer(1, 3, 2, 1, MIB, 3, 0);
}
END_TEST

START_TEST(test_spilled)
{
    rng_seed(2);
    /* 5000 inputs x 300 neurons = 6 MB against 1 MiB: several chunks, the
     * last one short */
    run_layer(5000, 300, 16, 150, MIB, 1, 1);
    run_layer(5000, 300, 17, 0, MIB, 3, 1);
    /* chunks of 183 and 117 neurons: wide enough for the helper to take half
     * of each block read back */
    run_layer(5000, 300, 16, 150, 4 * MIB, 3, 1);
    /* one neuron per chunk: columns of 600 KB */
    run_layer(150000, 3, 256, 4500, MIB, 3, 1);
}
END_TEST

static int count_emits(uint64_t neuron, const void *blob, size_t len, void *arg)
{
    (void)neuron, (void)blob, (void)len;
    ++*(uint64_t *)arg;
    return 0;
}

/* Whether dir's filesystem takes O_DIRECT (tmpfs may not). */
static int dir_takes_direct(const char *dir)
{
    char path[256];
    snprintf(path, sizeof path, "%s/probe-XXXXXX", dir);
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    int d = open(path, O_RDWR | O_DIRECT);
    unlink(path);
    close(fd);
    if (d < 0)
        return 0;
    close(d);
    return 1;
}

/* Chunks of 1024 neurons: rows of whole 4 KiB blocks go around the page
 * cache, the short last chunk (452 neurons) through it, in one file; and a
 * wide layer's chunks stop at CHUNK_MAX (256 MiB) even when the budget
 * would take more. */
START_TEST(test_spilled_direct)
{
    rng_seed(7);
    run_layer(2000, 2500, 16, 60, 16 * MIB, 1, 1);
    run_layer(2000, 2500, 16, 60, 16 * MIB, 3, 1);
    char err[256] = "";
    bcore *b = NULL;
    ck_assert_int_eq(bcore_new(2000, 2500, 16, 60, 16 * MIB, "/tmp", &b, err, sizeof err), 0);
    ck_assert_int_eq(bcore_spill_direct(b), dir_takes_direct("/tmp"));
    bcore_free(b);
    /* 1,000 inputs x 100,000 neurons (381 MiB) against 352 MiB: chunks stop
     * at 256 MiB (66,560 neurons) where the budget would take 80,740 */
    uint32_t n = 1000, neurons = 100000;
    ck_assert_int_eq(bcore_new(n, neurons, 16, 10, 352 * MIB, "/tmp", &b, err, sizeof err), 0);
    ck_assert_int_eq(bcore_spilled(b), 1);
    float *rows = malloc((size_t)100 * neurons * sizeof(float));
    ck_assert_ptr_nonnull(rows);
    for (uint32_t first = 0; first < n; first += 100) {
        for (size_t i = 0; i < (size_t)100 * neurons; i++)
            rows[i] = (float)((i * 2654435761u + first) % 1000);
        ck_assert_msg(bcore_add(b, rows, first, 100, err, sizeof err) == 0, "%s", err);
    }
    free(rows);
    uint64_t count = 0;
    ck_assert_msg(bcore_finish(b, 2, count_emits, &count, err, sizeof err) == 0, "%s", err);
    ck_assert_uint_eq(count, neurons);
    ck_assert_uint_le(bcore_peak_bytes(b), 44 * MIB + 256 * MIB + 16 * MIB);
    bcore_free(b);
}
END_TEST

START_TEST(test_emit_stops)
{
    rng_seed(3);
    const uint32_t n = 2000, neurons = 40;
    float *rows = make_layer(n, neurons);
    size_t bs;
    uint8_t *expect = direct_blobs(rows, n, neurons, 8, 20, &bs);
    for (int threads = 1; threads <= 3; threads += 2) {
        char err[256] = "";
        bcore *b = NULL;
        ck_assert_int_eq(bcore_new(n, neurons, 8, 20, 16 * MIB, "/tmp", &b, err, sizeof err),
                         0);
        ck_assert_int_eq(bcore_spilled(b), 0);
        ck_assert_int_eq(bcore_add(b, rows, 0, n, err, sizeof err), 0);
        sink k = {neurons, bs, (bs + 7) & ~(size_t)7, expect, 0, 0, 0, 0, 5};
        ck_assert_int_eq(bcore_finish(b, threads, collect, &k, err, sizeof err), -1);
        ck_assert_str_eq(err, "stopped");
        ck_assert_uint_eq(k.next, 6); /* neurons 0..5 emitted, nothing after */
        ck_assert_int_eq(k.bad_order + k.bad_len + k.bad_bytes, 0);
        bcore_free(b);
    }
    free(expect);
    free(rows);
}
END_TEST

START_TEST(test_emit_stops_spilled)
{
    rng_seed(4);
    const uint32_t n = 4000, neurons = 100; /* 1.6 MB > 1 MiB */
    float *rows = make_layer(n, neurons);
    size_t bs;
    uint8_t *expect = direct_blobs(rows, n, neurons, 4, 0, &bs);
    char tmpl[] = "/tmp/test_builder_XXXXXX";
    char *dir = mkdtemp(tmpl);
    ck_assert_ptr_nonnull(dir);
    for (int threads = 1; threads <= 3; threads += 2) {
        /* stop inside the second chunk */
        char err[256] = "";
        bcore *b = NULL;
        ck_assert_int_eq(bcore_new(n, neurons, 4, 0, MIB, dir, &b, err, sizeof err), 0);
        ck_assert_int_eq(bcore_spilled(b), 1);
        ck_assert_int_eq(bcore_add(b, rows, 0, 1234, err, sizeof err), 0);
        ck_assert_int_eq(bcore_add(b, rows + (size_t)1234 * neurons, 1234, n - 1234, err,
                                   sizeof err),
                         0);
        sink k = {neurons, bs, (bs + 7) & ~(size_t)7, expect, 0, 0, 0, 0, 70};
        ck_assert_int_eq(bcore_finish(b, threads, collect, &k, err, sizeof err), -1);
        ck_assert_str_eq(err, "stopped");
        ck_assert_uint_eq(k.next, 71);
        ck_assert_int_eq(k.bad_order + k.bad_len + k.bad_bytes, 0);
        bcore_free(b);
    }
    ck_assert_int_eq(dir_entries(dir), 0);
    ck_assert_int_eq(rmdir(dir), 0);
    free(expect);
    free(rows);
}
END_TEST

/* Raw mode: each neuron's column itself, in neuron order. */
typedef struct raw_sink {
    const float *rows;
    uint32_t n, neurons;
    uint64_t next, stop_at;
    int bad;
} raw_sink;

static int collect_raw(uint64_t neuron, const void *blob, size_t len, void *arg)
{
    raw_sink *k = arg;
    if (neuron != k->next || len != (size_t)k->n * sizeof(float))
        k->bad++;
    else
        for (uint32_t i = 0; i < k->n; i++) {
            float v, want = k->rows[(size_t)i * k->neurons + neuron];
            memcpy(&v, (const char *)blob + (size_t)i * sizeof v, sizeof v);
            if (memcmp(&v, &want, sizeof v) != 0) {
                k->bad++;
                break;
            }
        }
    k->next = neuron + 1;
    return neuron == k->stop_at ? 1 : 0;
}

START_TEST(test_raw)
{
    rng_seed(5);
    /* in memory, then spilled (4000 x 100 floats = 1.6 MB > 1 MiB) */
    static const uint32_t ns[2] = {1500, 4000}, neurs[2] = {33, 100};
    char tmpl[] = "/tmp/test_builder_XXXXXX";
    char *dir = mkdtemp(tmpl);
    ck_assert_ptr_nonnull(dir);
    for (int spill = 0; spill < 2; spill++) {
        uint32_t n = ns[spill], neurons = neurs[spill];
        float *rows = make_layer(n, neurons);
        for (int stop = 0; stop < 2; stop++) {
            char err[256] = "";
            bcore *b = NULL;
            ck_assert_int_eq(bcore_new(n, neurons, 16, 10, MIB, dir, &b, err, sizeof err), 0);
            ck_assert_int_eq(bcore_spilled(b), spill);
            bcore_set_raw(b, 1);
            for (uint32_t first = 0; first < n;) {
                uint32_t count = 1 + rng_below(700);
                count = count > n - first ? n - first : count;
                ck_assert_int_eq(bcore_add(b, rows + (size_t)first * neurons, first, count, err,
                                           sizeof err),
                                 0);
                first += count;
            }
            raw_sink k = {rows, n, neurons, 0, stop ? neurons / 2 : UINT64_MAX, 0};
            int rc = bcore_finish(b, 3, collect_raw, &k, err, sizeof err);
            ck_assert_int_eq(k.bad, 0);
            if (stop) {
                ck_assert_int_eq(rc, -1);
                ck_assert_str_eq(err, "stopped");
                ck_assert_uint_eq(k.next, neurons / 2 + 1);
            } else {
                ck_assert_msg(rc == 0, "%s", err);
                ck_assert_uint_eq(k.next, neurons);
            }
            bcore_free(b);
        }
        free(rows);
    }
    ck_assert_int_eq(dir_entries(dir), 0);
    ck_assert_int_eq(rmdir(dir), 0);
}
END_TEST

/* A matrix of several 32 MiB steps: the columns already emitted are given
 * back while the workers still read the later ones, in both modes; with 3
 * threads a helper also transposes half of each batch. */
START_TEST(test_in_memory_releases_pages)
{
    rng_seed(6);
    const uint32_t n = 70000, neurons = 250; /* 70 MB */
    float *rows = make_layer(n, neurons);
    size_t bs;
    uint8_t *expect = direct_blobs(rows, n, neurons, 16, 2100, &bs);
    for (int threads = 1; threads <= 3; threads += 2)
        for (int raw = 0; raw < 2; raw++) {
            char err[256] = "";
            bcore *b = NULL;
            ck_assert_int_eq(bcore_new(n, neurons, 16, 2100, 96 * MIB, "/tmp", &b, err, sizeof err), 0);
            ck_assert_int_eq(bcore_spilled(b), 0);
            bcore_set_raw(b, raw);
            bcore_set_transpose_threads(b, threads > 1 ? 2 : 1);
            for (uint32_t first = 0; first < n;) { /* uneven batches */
                uint32_t count = 1 + rng_below(3000);
                count = count > n - first ? n - first : count;
                ck_assert_int_eq(bcore_add(b, rows + (size_t)first * neurons, first, count, err, sizeof err), 0);
                first += count;
            }
            if (raw) {
                raw_sink k = {rows, n, neurons, 0, UINT64_MAX, 0};
                ck_assert_msg(bcore_finish(b, threads, collect_raw, &k, err, sizeof err) == 0, "%s", err);
                ck_assert_int_eq(k.bad, 0);
                ck_assert_uint_eq(k.next, neurons);
            } else {
                sink k = {neurons, bs, (bs + 7) & ~(size_t)7, expect, 0, 0, 0, 0, UINT64_MAX};
                ck_assert_msg(bcore_finish(b, threads, collect, &k, err, sizeof err) == 0, "%s", err);
                ck_assert_int_eq(k.bad_order + k.bad_len + k.bad_bytes, 0);
                ck_assert_uint_eq(k.next, neurons);
            }
            bcore_free(b);
        }
    free(expect);
    free(rows);
}
END_TEST

/* The pass's budget: whole layers in memory largest first, the rest share
 * what is left in proportion to size, never under 1 MiB. */
START_TEST(test_plan_budgets)
{
    size_t b[4];
    /* the demo CNN's pool1, conv4 and fc1 over 70,000 inputs in 2 GiB: pool1
     * and fc1 fit whole, conv4 spills into the rest */
    const uint64_t demo[3] = {70000ull * 6272 * 4, 70000ull * 3136 * 4, 70000ull * 64 * 4};
    bcore_plan_budgets(2048 * MIB, 3, demo, b);
    ck_assert_uint_eq(b[0], demo[0]);
    ck_assert_uint_eq(b[2], demo[2]);
    ck_assert_uint_eq(b[1], 2048 * MIB - demo[0] - demo[2]);
    /* everything fits: each layer gets its size */
    bcore_plan_budgets(4096 * MIB, 3, demo, b);
    for (int l = 0; l < 3; l++)
        ck_assert_uint_eq(b[l], demo[l]);
    /* nothing fits: proportional shares, summing to the total */
    const uint64_t big[2] = {300 * MIB, 100 * MIB};
    bcore_plan_budgets(88 * MIB, 2, big, b);
    ck_assert_uint_eq(b[0], 66 * MIB);
    ck_assert_uint_eq(b[1], 22 * MIB);
    /* a layer that would fit only by leaving the next one under 16 MiB spills */
    const uint64_t tight[2] = {95 * MIB, 10 * MIB};
    bcore_plan_budgets(100 * MIB, 2, tight, b);
    ck_assert_uint_eq(b[1], 10 * MIB);            /* the small one fits whole */
    ck_assert_uint_eq(b[0], 90 * MIB);            /* the big one spills into the rest */
    /* a tiny total: the 1 MiB floor */
    const uint64_t small[4] = {8 * MIB, 8 * MIB, 8 * MIB, 8 * MIB};
    bcore_plan_budgets(2 * MIB, 4, small, b);
    for (int l = 0; l < 4; l++)
        ck_assert_uint_eq(b[l], MIB);
    /* whatever the split, each budget builds: in memory exactly when whole */
    for (int l = 0; l < 3; l++) {
        bcore_plan_budgets(2048 * MIB, 3, demo, b);
        char err[256];
        bcore *c = NULL;
        ck_assert_int_eq(bcore_new(70000, demo[l] / 70000 / 4, 16, 2100, b[l], "/tmp", &c, err, sizeof err), 0);
        ck_assert_int_eq(bcore_spilled(c), l == 1);
        bcore_free(c);
    }
}
END_TEST

static int count_emit(uint64_t neuron, const void *blob, size_t len, void *arg)
{
    (*(int *)arg)++;
    return 0;
}

START_TEST(test_errors)
{
    char err[256];
    bcore *b = NULL;
    float rows[4 * 3] = {0};
    /* bad parameters */
    ck_assert_int_eq(bcore_new(0, 3, 16, 0, MIB, "/tmp", &b, err, sizeof err), -1);
    ck_assert_int_eq(bcore_new(4, 0, 16, 0, MIB, "/tmp", &b, err, sizeof err), -1);
    ck_assert_int_eq(bcore_new(4, 3, 1, 0, MIB, "/tmp", &b, err, sizeof err), -1);
    ck_assert_int_eq(bcore_new(4, 3, 257, 0, MIB, "/tmp", &b, err, sizeof err), -1);
    ck_assert_int_eq(bcore_new(4, 3, 16, 5, MIB, "/tmp", &b, err, sizeof err), -1);
    ck_assert_int_eq(bcore_new(4, 3, 16, 0, MIB - 1, "/tmp", &b, err, sizeof err), -1);
    ck_assert_ptr_null(b);
    /* one neuron's column larger than the budget */
    err[0] = 0;
    ck_assert_int_eq(bcore_new(300000, 2, 16, 0, MIB, "/tmp", &b, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "exceed") != NULL, "message: %s", err);
    /* a spill directory that does not exist */
    err[0] = 0;
    ck_assert_int_eq(bcore_new(100000, 10, 16, 0, MIB, "/nonexistent/dir", &b, err,
                               sizeof err),
                     -1);
    ck_assert_msg(strstr(err, "/nonexistent/dir") != NULL, "message: %s", err);

    /* order, count and finish checks */
    ck_assert_int_eq(bcore_new(4, 3, 2, 1, MIB, "/tmp", &b, err, sizeof err), 0);
    int calls = 0;
    ck_assert_int_eq(bcore_add(b, rows, 1, 1, err, sizeof err), -1); /* skips input 0 */
    ck_assert_int_eq(bcore_add(b, rows, 0, 5, err, sizeof err), -1); /* more than N */
    ck_assert_int_eq(bcore_add(b, rows, 0, 2, err, sizeof err), 0);
    ck_assert_int_eq(bcore_add(b, rows, 0, 1, err, sizeof err), -1); /* again from 0 */
    ck_assert_int_eq(bcore_add(b, rows, 2, 3, err, sizeof err), -1); /* past N */
    ck_assert_int_eq(bcore_finish(b, 1, count_emit, &calls, err, sizeof err), -1);
    ck_assert_msg(strstr(err, "2 of 4") != NULL, "message: %s", err);
    ck_assert_int_eq(calls, 0);
    ck_assert_int_eq(bcore_add(b, rows, 2, 0, err, sizeof err), 0); /* empty batch */
    ck_assert_int_eq(bcore_add(b, rows, 2, 2, err, sizeof err), 0);
    ck_assert_int_eq(bcore_finish(b, 2, count_emit, &calls, err, sizeof err), 0);
    ck_assert_int_eq(calls, 3);
    ck_assert_int_eq(bcore_finish(b, 1, count_emit, &calls, err, sizeof err), -1);
    ck_assert_int_eq(bcore_add(b, rows, 4, 1, err, sizeof err), -1);
    ck_assert_int_eq(calls, 3);
    bcore_free(b);
    bcore_free(NULL);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("builder");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_in_memory);
    tcase_add_test(tc, test_spilled);
    tcase_add_test(tc, test_emit_stops);
    tcase_add_test(tc, test_emit_stops_spilled);
    tcase_add_test(tc, test_raw);
    tcase_add_test(tc, test_in_memory_releases_pages);
    tcase_add_test(tc, test_spilled_direct);
    tcase_add_test(tc, test_plan_budgets);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
