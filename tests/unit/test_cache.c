/* test_cache.c -- the LRU activation cache (server/cache.h): exact contents,
 * key identity, the byte bound and eviction order, stats, and threads. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"

/* Element checks without a Check mark point per element (slow in fork mode). */
#define EXPECT(cond, ...)                                                            \
    do {                                                                             \
        if (!(cond))                                                                 \
            ck_abort_msg(__VA_ARGS__);                                               \
    } while (0)

/* The value every test stores at position i of the vector of key k: unique per
 * (key, i), exactly representable (< 2^24), so any mix-up of keys or offsets
 * shows up as a wrong value. */
static float val(const cache_key *k, size_t i)
{
    uint32_t h = k->model * 2654435761u ^ k->dataset * 40503u ^ k->layer * 97u ^ k->input * 7919u;
    return (float)((h + (uint32_t)i * 31u) & 0xFFFFFu) - 500000.0f;
}

static float *make_vec(const cache_key *k, size_t len)
{
    float *v = malloc(len * sizeof *v);
    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < len; i++) v[i] = val(k, i);
    return v;
}

static void put_key(cache *c, const cache_key *k, size_t len)
{
    float *v = make_vec(k, len);
    cache_put(c, k, v, len);
    free(v);
}

/* 1 when k is cached with its whole vector of len values intact. */
static int has_key(cache *c, const cache_key *k, size_t len)
{
    float *out = malloc(len * sizeof *out);
    ck_assert_ptr_nonnull(out);
    int hit = cache_get(c, k, NULL, len, out);
    if (hit)
        for (size_t i = 0; i < len; i++)
            EXPECT(out[i] == val(k, i), "key %u/%u/%u/%u [%zu]: %g != %g", k->model, k->dataset, k->layer,
                   k->input, i, out[i], val(k, i));
    free(out);
    return hit;
}

static cache_stats stats(cache *c)
{
    cache_stats s;
    memset(&s, 0xAB, sizeof s);
    cache_get_stats(c, &s);
    return s;
}

/* Bytes one entry of len floats costs, as the cache accounts it. */
static uint64_t cost_of(size_t len)
{
    cache *c = cache_new((size_t)1 << 30);
    cache_key k = {1, 1, 1, 1, 0};
    put_key(c, &k, len);
    uint64_t b = stats(c).bytes;
    cache_free(c);
    return b;
}

START_TEST(test_miss_then_hit)
{
    cache *c = cache_new(1 << 20);
    ck_assert_ptr_nonnull(c);
    cache_key k = {3, 4, 5, 6, 0};
    float out[100];
    for (int i = 0; i < 100; i++) out[i] = 12345.0f;
    ck_assert_int_eq(cache_get(c, &k, NULL, 100, out), 0);
    for (int i = 0; i < 100; i++) EXPECT(out[i] == 12345.0f, "a miss wrote out[%d]", i);
    put_key(c, &k, 100);
    ck_assert_int_eq(has_key(c, &k, 100), 1);
    /* The cache keeps its own copy: the caller's buffer is freed in put_key. */
    ck_assert_int_eq(has_key(c, &k, 100), 1);
    cache_stats s = stats(c);
    ck_assert_uint_eq(s.misses, 1);
    ck_assert_uint_eq(s.hits, 2);
    ck_assert_uint_eq(s.insertions, 1);
    ck_assert_uint_eq(s.entries, 1);
    ck_assert_uint_eq(s.evictions, 0);
    ck_assert_uint_eq(s.max_bytes, 1 << 20);
    ck_assert_uint_ge(s.bytes, 100 * sizeof(float));
    cache_free(c);
}
END_TEST

START_TEST(test_special_values_exact)
{
    /* Bit patterns round-trip: negative zero, subnormals, infinities, NaN payloads. */
    uint32_t bits[] = {0x80000000u, 0x00000001u, 0x7F800000u, 0xFF800000u, 0x7FC01234u, 0x3F800001u, 0xC2F6E979u};
    size_t n = sizeof bits / sizeof bits[0];
    float v[sizeof bits / sizeof bits[0]], out[sizeof bits / sizeof bits[0]];
    memcpy(v, bits, sizeof v);
    cache *c = cache_new(1 << 16);
    cache_key k = {0, 0, 0, 0, 0};
    cache_put(c, &k, v, n);
    ck_assert_int_eq(cache_get(c, &k, NULL, n, out), 1);
    ck_assert_int_eq(memcmp(out, bits, sizeof out), 0);
    cache_free(c);
}
END_TEST

START_TEST(test_neuron_subset)
{
    cache *c = cache_new(1 << 20);
    cache_key k = {1, 2, 3, 4, 0};
    const size_t len = 1000;
    put_key(c, &k, len);
    /* Unsorted, repeated, first and last positions. */
    uint32_t nr[] = {999, 0, 17, 17, 500, 1, 998, 3};
    size_t m = sizeof nr / sizeof nr[0];
    float out[sizeof nr / sizeof nr[0] + 1];
    out[m] = -7.0f; /* guard: nothing past m is written */
    ck_assert_int_eq(cache_get(c, &k, nr, m, out), 1);
    for (size_t j = 0; j < m; j++) EXPECT(out[j] == val(&k, nr[j]), "out[%zu] for neuron %u", j, nr[j]);
    ck_assert(out[m] == -7.0f);
    /* m = 0 with a neuron list is still a hit and writes nothing. */
    out[0] = -7.0f;
    ck_assert_int_eq(cache_get(c, &k, nr, 0, out), 1);
    ck_assert(out[0] == -7.0f);
    /* Whole vector, then a whole-vector read with a shorter m writes only m values. */
    ck_assert_int_eq(has_key(c, &k, len), 1);
    float part[11];
    part[10] = -7.0f;
    ck_assert_int_eq(cache_get(c, &k, NULL, 10, part), 1);
    for (size_t i = 0; i < 10; i++) EXPECT(part[i] == val(&k, i), "prefix [%zu]", i);
    ck_assert(part[10] == -7.0f);
    ck_assert_uint_eq(stats(c).hits, 4);
    cache_free(c);
}
END_TEST

START_TEST(test_replace_same_key)
{
    cache *c = cache_new(1 << 20);
    cache_key k = {9, 9, 9, 9, 0};
    float a[50], b[20], out[50];
    for (int i = 0; i < 50; i++) a[i] = (float)i;
    for (int i = 0; i < 20; i++) b[i] = (float)(1000 - i);
    cache_put(c, &k, a, 50);
    uint64_t bytes_a = stats(c).bytes;
    cache_put(c, &k, b, 20);
    cache_stats s = stats(c);
    ck_assert_uint_eq(s.entries, 1);
    ck_assert_uint_eq(s.insertions, 2);
    ck_assert_uint_eq(s.evictions, 0); /* a replacement is not an eviction */
    /* Only the new, shorter vector is accounted. */
    ck_assert_uint_eq(bytes_a - s.bytes, 30 * sizeof(float));
    for (int i = 0; i < 50; i++) out[i] = -1.0f;
    ck_assert_int_eq(cache_get(c, &k, NULL, 20, out), 1);
    for (int i = 0; i < 20; i++) EXPECT(out[i] == (float)(1000 - i), "replaced [%d] = %g", i, out[i]);
    uint32_t nr[] = {19, 0};
    ck_assert_int_eq(cache_get(c, &k, nr, 2, out), 1);
    ck_assert(out[0] == 981.0f && out[1] == 1000.0f);
    /* Replacing with the same contents many times keeps one entry and its bytes. */
    for (int r = 0; r < 100; r++) cache_put(c, &k, b, 20);
    s = stats(c);
    ck_assert_uint_eq(s.entries, 1);
    ck_assert_uint_eq(s.bytes, bytes_a - 30 * sizeof(float));
    cache_free(c);
}
END_TEST

START_TEST(test_key_fields_distinct)
{
    cache *c = cache_new(1 << 20);
    const size_t len = 16;
    cache_key base = {10, 20, 30, 40, 0};
    cache_key ks[11] = {base, base, base, base, base, base, base, base, base, base, base};
    ks[1].model++;
    ks[2].dataset++;
    ks[3].layer++;
    ks[4].input++;
    ks[9].block++;
    /* Swapped fields must not collide either (a symmetric hash/equality would). */
    ks[5] = (cache_key){20, 10, 30, 40, 0};
    ks[6] = (cache_key){10, 20, 40, 30, 0};
    ks[7] = (cache_key){30, 40, 10, 20, 0};
    ks[8] = (cache_key){0xFFFFFFFFu, 20, 30, 40, 0};
    ks[10] = (cache_key){10, 20, 30, 0, 40};
    put_key(c, &ks[0], len);
    for (int i = 1; i < 11; i++) ck_assert_msg(!has_key(c, &ks[i], len), "key %d hit the base entry", i);
    for (int i = 1; i < 11; i++) put_key(c, &ks[i], len);
    ck_assert_uint_eq(stats(c).entries, 11);
    for (int i = 0; i < 11; i++) ck_assert_msg(has_key(c, &ks[i], len), "key %d lost", i);
    cache_free(c);
}
END_TEST

START_TEST(test_many_keys_grow)
{
    /* Enough entries to outgrow the initial table; every one must stay findable. */
    cache *c = cache_new((size_t)64 << 20);
    const uint32_t n = 5000;
    const size_t len = 8;
    for (uint32_t i = 0; i < n; i++) {
        cache_key k = {i % 7, i % 3, i % 11, i, 0};
        put_key(c, &k, len);
    }
    cache_stats s = stats(c);
    ck_assert_uint_eq(s.entries, n);
    ck_assert_uint_eq(s.evictions, 0);
    ck_assert_uint_eq(s.bytes, n * cost_of(len));
    for (uint32_t i = 0; i < n; i++) {
        cache_key k = {i % 7, i % 3, i % 11, i, 0};
        EXPECT(has_key(c, &k, len), "key %u lost", i);
    }
    cache_key absent = {1, 1, 1, n + 1, 0};
    ck_assert(!has_key(c, &absent, len));
    cache_free(c);
}
END_TEST

START_TEST(test_accounting)
{
    /* Bytes grow by exactly 4 per float, and entries of any length add up. */
    uint64_t c10 = cost_of(10), c110 = cost_of(110);
    ck_assert_uint_eq(c110 - c10, 100 * sizeof(float));
    ck_assert_uint_ge(c10, 10 * sizeof(float));
    cache *c = cache_new(1 << 20);
    cache_key a = {1, 0, 0, 0, 0}, b = {2, 0, 0, 0, 0};
    put_key(c, &a, 10);
    put_key(c, &b, 110);
    ck_assert_uint_eq(stats(c).bytes, c10 + c110);
    cache_free(c);
}
END_TEST

START_TEST(test_lru_order)
{
    const size_t len = 64;
    const uint64_t cost = cost_of(len);
    /* Room for exactly 3 entries (and a bit, less than a fourth). */
    cache *c = cache_new((size_t)(3 * cost + cost / 2));
    cache_key k[6];
    for (int i = 0; i < 6; i++) k[i] = (cache_key){7, 7, 7, (uint32_t)i, 0};
    put_key(c, &k[0], len);
    put_key(c, &k[1], len);
    put_key(c, &k[2], len);
    cache_stats s = stats(c);
    ck_assert_uint_eq(s.entries, 3);
    ck_assert_uint_eq(s.evictions, 0);
    /* Touch the oldest: k1 becomes least recently used. */
    ck_assert(has_key(c, &k[0], len));
    put_key(c, &k[3], len);
    s = stats(c);
    ck_assert_uint_eq(s.entries, 3);
    ck_assert_uint_eq(s.evictions, 1);
    ck_assert_uint_le(s.bytes, s.max_bytes);
    ck_assert(!has_key(c, &k[1], len));
    /* Recency now (old -> new): k2, k0, k3. A miss must not refresh anything. */
    put_key(c, &k[4], len);
    ck_assert(!has_key(c, &k[2], len));
    /* Now: k0, k3, k4. Replacing k0 makes it most recent. */
    put_key(c, &k[0], len);
    put_key(c, &k[5], len);
    ck_assert(!has_key(c, &k[3], len));
    ck_assert(has_key(c, &k[0], len));
    ck_assert(has_key(c, &k[4], len));
    ck_assert(has_key(c, &k[5], len));
    s = stats(c);
    ck_assert_uint_eq(s.entries, 3);
    ck_assert_uint_eq(s.evictions, 3);
    ck_assert_uint_eq(s.insertions, 7);
    ck_assert_uint_eq(s.bytes, 3 * cost);

    /* One big entry evicts as many small ones as needed, oldest first. */
    const size_t big = len + (size_t)(cost / sizeof(float)) + 4; /* costs more than 2, at most 3 small */
    ck_assert_uint_gt(cost_of(big), 2 * cost);
    ck_assert_uint_le(cost_of(big), 3 * cost + cost / 2);
    cache_key kb = {8, 8, 8, 8, 0};
    put_key(c, &kb, big);
    s = stats(c);
    ck_assert_uint_le(s.bytes, s.max_bytes);
    /* Recency was k0, k4, k5: the two oldest make room, the newest stays. */
    ck_assert_uint_eq(s.entries, 2);
    ck_assert_uint_eq(s.evictions, 5);
    ck_assert(has_key(c, &kb, big));
    ck_assert(has_key(c, &k[5], len));
    ck_assert(!has_key(c, &k[0], len));
    ck_assert(!has_key(c, &k[4], len));
    cache_free(c);
}
END_TEST

START_TEST(test_bound_many_puts)
{
    const uint64_t max = 50000;
    cache *c = cache_new(max);
    uint64_t put = 0;
    /* Mixed lengths, mixed recency; the bound holds after every put. */
    for (uint32_t i = 0; i < 3000; i++) {
        cache_key k = {i % 5, 1, i % 13, i % 997, 0};
        size_t len = 1 + (i * 37u) % 900;
        put_key(c, &k, len);
        put++;
        cache_stats s = stats(c);
        EXPECT(s.bytes <= max, "bytes %llu > max after put %u", (unsigned long long)s.bytes, i);
        EXPECT(s.insertions == put, "insertions %llu at put %u", (unsigned long long)s.insertions, i);
        if (i >= 3 && i % 3 == 0) {
            cache_key back = {(i - 3) % 5, 1, (i - 3) % 13, (i - 3) % 997, 0};
            float tmp[900];
            cache_get(c, &back, NULL, 900, tmp);
        }
    }
    cache_stats s = stats(c);
    ck_assert_uint_gt(s.evictions, 0);
    ck_assert_uint_gt(s.entries, 0);
    /* entries never exceeds what the puts minus evictions could leave. */
    ck_assert_uint_le(s.entries, s.insertions - s.evictions);
    cache_free(c);
}
END_TEST

START_TEST(test_too_big_not_cached)
{
    const size_t len = 100;
    const uint64_t cost = cost_of(len);
    /* A bound one byte short of one entry: nothing of that size fits. */
    cache *c = cache_new((size_t)(cost - 1));
    cache_key k = {1, 2, 3, 4, 0};
    put_key(c, &k, len);
    ck_assert(!has_key(c, &k, len));
    cache_stats s = stats(c);
    ck_assert_uint_eq(s.entries, 0);
    ck_assert_uint_eq(s.bytes, 0);
    ck_assert_uint_eq(s.insertions, 0);
    ck_assert_uint_eq(s.evictions, 0);
    cache_free(c);

    /* Exactly one entry's worth fits; a too-big put leaves the others alone. */
    c = cache_new((size_t)(2 * cost));
    cache_key a = {1, 1, 1, 1, 0}, b = {1, 1, 1, 2, 0}, huge = {1, 1, 1, 3, 0};
    put_key(c, &a, len);
    put_key(c, &b, len);
    s = stats(c);
    ck_assert_uint_eq(s.entries, 2);
    ck_assert_uint_eq(s.bytes, 2 * cost);
    put_key(c, &huge, 1000);
    ck_assert(!has_key(c, &huge, 1000));
    ck_assert(has_key(c, &a, len));
    ck_assert(has_key(c, &b, len));
    s = stats(c);
    ck_assert_uint_eq(s.evictions, 0);
    ck_assert_uint_eq(s.insertions, 2);
    cache_free(c);
}
END_TEST

START_TEST(test_zero_bound)
{
    cache *c = cache_new(0);
    ck_assert_ptr_nonnull(c);
    float one = 1.0f, out = 0.0f;
    for (uint32_t i = 0; i < 10; i++) {
        cache_key k = {i, i, i, i, 0};
        cache_put(c, &k, &one, 1);
        cache_put(c, &k, &one, 0);
        ck_assert_int_eq(cache_get(c, &k, NULL, 1, &out), 0);
    }
    cache_stats s = stats(c);
    ck_assert_uint_eq(s.entries, 0);
    ck_assert_uint_eq(s.bytes, 0);
    ck_assert_uint_eq(s.insertions, 0);
    ck_assert_uint_eq(s.hits, 0);
    ck_assert_uint_eq(s.misses, 10);
    ck_assert_uint_eq(s.max_bytes, 0);
    cache_free(c);
    cache_free(NULL); /* harmless */
}
END_TEST

START_TEST(test_stats_exact)
{
    const size_t len = 32;
    const uint64_t cost = cost_of(len);
    cache *c = cache_new((size_t)(4 * cost)); /* exactly 4 fit */
    uint64_t hits = 0, misses = 0;
    for (uint32_t i = 0; i < 10; i++) {
        cache_key k = {0, 0, 0, i, 0};
        put_key(c, &k, len);
    }
    /* 10 inserted, 4 kept (6..9), 6 evicted. */
    for (uint32_t i = 0; i < 10; i++) {
        cache_key k = {0, 0, 0, i, 0};
        int hit = has_key(c, &k, len);
        ck_assert_int_eq(hit, i >= 6);
        if (hit)
            hits++;
        else
            misses++;
    }
    cache_key k9 = {0, 0, 0, 9, 0};
    put_key(c, &k9, len); /* replacement: no eviction */
    cache_stats s = stats(c);
    ck_assert_uint_eq(s.hits, hits);
    ck_assert_uint_eq(s.hits, 4);
    ck_assert_uint_eq(s.misses, misses);
    ck_assert_uint_eq(s.misses, 6);
    ck_assert_uint_eq(s.insertions, 11);
    ck_assert_uint_eq(s.evictions, 6);
    ck_assert_uint_eq(s.entries, 4);
    ck_assert_uint_eq(s.bytes, 4 * cost);
    ck_assert_uint_eq(s.max_bytes, 4 * cost);
    cache_free(c);
}
END_TEST

/* ---- threads ---------------------------------------------------------- */

enum { NTHREADS = 8, NKEYS = 32, OPS = 60000 };

typedef struct {
    cache *c;
    int id;
    uint64_t gets, puts, hits, bad;
} worker;

static size_t key_len(uint32_t input) { return 16 + (input * 13u) % 200; }

static void *work(void *arg)
{
    worker *w = arg;
    uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(w->id + 1);
    float buf[256], vec[256];
    uint32_t nr[8];
    for (int op = 0; op < OPS; op++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        cache_key k = {(uint32_t)(s >> 60) % 2, 5, 3, (uint32_t)(s >> 8) % NKEYS, 0};
        size_t len = key_len(k.input);
        int kind = (int)((s >> 40) % 4);
        if (kind == 0) {
            for (size_t i = 0; i < len; i++) vec[i] = val(&k, i);
            cache_put(w->c, &k, vec, len);
            w->puts++;
        } else if (kind == 1) {
            for (int j = 0; j < 8; j++) nr[j] = (uint32_t)((s >> (j * 5)) % len);
            w->gets++;
            if (cache_get(w->c, &k, nr, 8, buf)) {
                w->hits++;
                for (int j = 0; j < 8; j++)
                    if (buf[j] != val(&k, nr[j])) w->bad++;
            }
        } else {
            w->gets++;
            if (cache_get(w->c, &k, NULL, len, buf)) {
                w->hits++;
                for (size_t i = 0; i < len; i++)
                    if (buf[i] != val(&k, i)) w->bad++;
            }
        }
    }
    return NULL;
}

/* Byte blobs: exact bytes back whatever their length (not a multiple of a
 * float), a float lookup of the same key is not confused with them, they
 * share the bound and the LRU with activations, and they leave the
 * activation hit and miss counts alone. */
START_TEST(test_bytes)
{
    cache *c = cache_new(64 << 10);
    ck_assert_ptr_nonnull(c);
    unsigned char blob[1001];
    for (size_t i = 0; i < sizeof blob; i++) blob[i] = (unsigned char)(i * 7 + 3);
    cache_key kb = {.model = 0, .dataset = 3, .layer = UINT32_MAX, .input = 42, .block = 112};
    unsigned char *out = NULL;
    size_t len = 0;
    ck_assert_int_eq(cache_get_bytes(c, &kb, &out, &len), 0);
    ck_assert_ptr_null(out);
    cache_put_bytes(c, &kb, blob, sizeof blob);
    ck_assert_int_eq(cache_get_bytes(c, &kb, &out, &len), 1);
    ck_assert_uint_eq(len, sizeof blob);
    ck_assert_mem_eq(out, blob, sizeof blob);
    free(out);
    cache_key other = kb;
    other.block = 56; /* another side: another entry */
    ck_assert_int_eq(cache_get_bytes(c, &other, &out, &len), 0);
    cache_stats st;
    cache_get_stats(c, &st);
    ck_assert_uint_eq(st.hits, 0);
    ck_assert_uint_eq(st.misses, 0);
    ck_assert_uint_eq(st.entries, 1);
    /* activations fill the bound: the blob, least recently used, goes */
    for (uint32_t i = 0; i < 400; i++) {
        cache_key ka = {.model = 1, .dataset = 3, .layer = 0, .input = i};
        put_key(c, &ka, 64);
    }
    ck_assert_int_eq(cache_get_bytes(c, &kb, &out, &len), 0);
    cache_get_stats(c, &st);
    ck_assert_uint_le(st.bytes, 64 << 10);
    cache_put_bytes(c, &kb, blob, 0); /* nothing to keep */
    ck_assert_int_eq(cache_get_bytes(c, &kb, &out, &len), 0);
    cache_free(c);
}
END_TEST

START_TEST(test_threads)
{
    /* Small enough bound that evictions run concurrently with hits. */
    const uint64_t max = 20 * cost_of(120);
    cache *c = cache_new((size_t)max);
    pthread_t th[NTHREADS];
    worker w[NTHREADS];
    for (int i = 0; i < NTHREADS; i++) {
        w[i] = (worker){.c = c, .id = i};
        ck_assert_int_eq(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    uint64_t gets = 0, puts = 0, hits = 0, bad = 0;
    for (int i = 0; i < NTHREADS; i++) {
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
        gets += w[i].gets;
        puts += w[i].puts;
        hits += w[i].hits;
        bad += w[i].bad;
    }
    ck_assert_uint_eq(bad, 0);
    cache_stats s = stats(c);
    ck_assert_uint_eq(s.hits, hits);
    ck_assert_uint_eq(s.hits + s.misses, gets);
    ck_assert_uint_eq(s.insertions, puts); /* every vector fits the bound */
    ck_assert_uint_gt(s.hits, 0);
    ck_assert_uint_gt(s.misses, 0);
    ck_assert_uint_gt(s.evictions, 0);
    ck_assert_uint_le(s.bytes, max);
    ck_assert_uint_le(s.entries, 2 * NKEYS);
    ck_assert_uint_le(s.entries, s.insertions - s.evictions);

    /* Every entry left is intact, and the live ones account for the bytes. */
    uint64_t found = 0, bytes = 0;
    for (uint32_t m = 0; m < 2; m++)
        for (uint32_t i = 0; i < NKEYS; i++) {
            cache_key k = {m, 5, 3, i, 0};
            if (has_key(c, &k, key_len(i))) {
                found++;
                bytes += cost_of(key_len(i));
            }
        }
    ck_assert_uint_eq(found, s.entries);
    ck_assert_uint_eq(bytes, s.bytes);
    cache_free(c);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("cache");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_miss_then_hit);
    tcase_add_test(tc, test_special_values_exact);
    tcase_add_test(tc, test_neuron_subset);
    tcase_add_test(tc, test_replace_same_key);
    tcase_add_test(tc, test_key_fields_distinct);
    tcase_add_test(tc, test_many_keys_grow);
    tcase_add_test(tc, test_accounting);
    tcase_add_test(tc, test_lru_order);
    tcase_add_test(tc, test_bound_many_puts);
    tcase_add_test(tc, test_too_big_not_cached);
    tcase_add_test(tc, test_zero_bound);
    tcase_add_test(tc, test_stats_exact);
    tcase_add_test(tc, test_bytes);
    tcase_add_test(tc, test_threads);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
