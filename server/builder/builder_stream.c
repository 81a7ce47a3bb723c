/* builder_stream.c -- a layer's partition index built in the pass (see
 * builder_stream.h).
 *
 * Keys: a value's 32-bit rank key is unsigned-ordered like the rank order
 * (largest value = smallest key, NaN = UINT32_MAX below -inf). Unlike
 * npi.c's key it keeps -0.0 apart (just below +0.0), so it can be inverted:
 * a candidate is one u64, key << 32 | id, and its exact value is recovered
 * from the key (a NaN comes back as some NaN). Sorting candidates as u64
 * ranks them, ties by smaller id first.
 *
 * Candidates: a neuron's inputs arrive in id order, so once the buffer has
 * shed down to its best m, a later input with the m-th best key ranks below
 * it: only a strictly smaller key makes a candidate (lim). Before that, the
 * sample's estimate of the 3m-th value admits the candidates: ~3m in
 * expectation, and fewer than m only if more than 3x the expected share of
 * the sample fell in the top m (for m = 3% of N and 512 samples, ~8 standard
 * deviations).
 */
#include "builder_stream.h"

#include "bigmem.h"
#include "npi.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SAMPLE_MAX 512u
#define HDR_WORDS 6u
#define FINISH_BLOCK 256u /* neurons whose blobs are made at once */
#define MIN_SPLIT 64u     /* fewer neurons than this: one thread */
/* Values of a block of one neuron's inputs get their keys and partitions
 * in arrays of BLOCK, the counts over the cuts four keys at a time. */
#define BLOCK 256u

struct bstream {
    uint32_t n, P, m, bits, S;   /* inputs, partitions, MAI size, id bits, samples asked */
    uint64_t neurons;
    uint32_t nsamp, added, cap;  /* sample rows taken, inputs added, candidate slots */
    uint32_t slots;              /* cut slots per neuron: 2^bits - 1 */
    size_t pid_len;              /* bytes of one neuron's id array */
    int threads, planned, finished;
    uint32_t *sample;            /* [neurons][S] keys, until the cuts are made */
    uint32_t *cuts;              /* [neurons][slots] ascending, padded with UINT32_MAX */
    uint8_t *ncuts;              /* [neurons] real cuts */
    uint64_t *lim;               /* [neurons] a key below it makes a candidate */
    uint64_t *cand;              /* [neurons][cap] key << 32 | id */
    uint32_t *ncand;             /* [neurons] */
    uint32_t *ext;               /* [neurons][2] smallest key in partition 1, largest in the last */
    uint64_t *used;              /* [neurons][4] partitions with members, a bit each */
    uint8_t *pids;               /* [neurons][pid_len] */
    size_t sample_bytes, state_bytes, held, peak;
    void *state;                 /* one mapping for everything but the sample */
};

/* ---- small pieces ----------------------------------------------------- */

static inline uint32_t rank_key(float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    uint32_t is_nan = 0u - (uint32_t)((b & 0x7fffffffu) > 0x7f800000u);
    uint32_t neg = 0u - (b >> 31);
    return (b ^ (0x7fffffffu & ~neg)) | is_nan;
}

static inline float key_value(uint32_t k)
{
    uint32_t b = k < 0x80000000u ? k ^ 0x7fffffffu : k;
    float v;
    memcpy(&v, &b, 4);
    return v;
}

static inline float bound_value(float v)
{
    return isnan(v) ? -INFINITY : v;
}

static size_t pid_bytes(uint32_t n, uint32_t bits)
{
    return (size_t)(((uint64_t)n * bits + 7) / 8) + 3;
}

static uint32_t cap_of(uint32_t m)
{
    return m + m / 2 + 16;
}

static void hold(bstream *b, size_t bytes)
{
    b->held += bytes;
    if (b->held > b->peak)
        b->peak = b->held;
}

/* Runs fn over neurons [0, neurons) on the core's threads: the calling
 * thread takes the first half, one more thread the second. */
typedef struct range_job {
    bstream *b;
    void (*fn)(bstream *, uint64_t, uint64_t, void *);
    uint64_t j0, j1;
    void *arg;
} range_job;

static void *range_main(void *p)
{
    range_job *r = p;
    r->fn(r->b, r->j0, r->j1, r->arg);
    return NULL;
}

static void over_neurons(bstream *b, uint64_t j0, uint64_t j1, void (*fn)(bstream *, uint64_t, uint64_t, void *),
                         void *arg)
{
    if (b->threads > 1 && j1 - j0 >= 2 * MIN_SPLIT) {
        uint64_t mid = j0 + (j1 - j0) / 2;
        range_job r = {b, fn, mid, j1, arg};
        pthread_t t;
        if (pthread_create(&t, NULL, range_main, &r) == 0) {
            fn(b, j0, mid, arg);
            pthread_join(t, NULL);
            return;
        }
    }
    fn(b, j0, j1, arg);
}

/* ---- sorting and selection -------------------------------------------- */

static void sort_u32(uint32_t *a, uint32_t *tmp, uint32_t n)
{
    /* LSD radix, 8-bit digits: the sample of one neuron, a few hundred keys */
    for (uint32_t shift = 0; shift < 32; shift += 8) {
        uint32_t cnt[257] = {0};
        for (uint32_t i = 0; i < n; i++)
            cnt[((a[i] >> shift) & 0xffu) + 1]++;
        if (cnt[((a[0] >> shift) & 0xffu) + 1] == n)
            continue; /* one digit value: the pass would not move anything */
        for (uint32_t d = 0; d < 256; d++)
            cnt[d + 1] += cnt[d];
        for (uint32_t i = 0; i < n; i++)
            tmp[cnt[(a[i] >> shift) & 0xffu]++] = a[i];
        memcpy(a, tmp, n * sizeof *a);
    }
}

static inline void swap64(uint64_t *a, uint64_t *b)
{
    uint64_t t = *a;
    *a = *b;
    *b = t;
}

static void insertion_u64(uint64_t *a, uint32_t n)
{
    for (uint32_t i = 1; i < n; i++) {
        uint64_t e = a[i];
        uint32_t j = i;
        while (j > 0 && a[j - 1] > e) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = e;
    }
}

/* Hoare partition around the median of three; returns the split point:
 * a[0..p] <= pivot <= a[p+1..n). n >= 2. */
static uint32_t partition_u64(uint64_t *a, uint32_t n)
{
    uint32_t mid = n / 2;
    if (a[mid] < a[0]) swap64(&a[mid], &a[0]);
    if (a[n - 1] < a[0]) swap64(&a[n - 1], &a[0]);
    if (a[n - 1] < a[mid]) swap64(&a[n - 1], &a[mid]);
    uint64_t pivot = a[mid];
    uint32_t i = 0, j = n - 1;
    for (;;) {
        while (a[i] < pivot) i++;
        while (a[j] > pivot) j--;
        if (i >= j)
            return j;
        swap64(&a[i], &a[j]);
        i++;
        j--;
    }
}

static void sort_u64(uint64_t *a, uint32_t n)
{
    while (n > 16) {
        uint32_t p = partition_u64(a, n) + 1;
        /* recurse into the smaller side, loop on the larger */
        if (p < n - p) {
            sort_u64(a, p);
            a += p;
            n -= p;
        } else {
            sort_u64(a + p, n - p);
            n = p;
        }
    }
    insertion_u64(a, n);
}

/* Reorders a[0..n) so that a[0..k) are its k smallest (0 < k < n). */
static void select_u64(uint64_t *a, uint32_t n, uint32_t k)
{
    while (n > 16) {
        uint32_t p = partition_u64(a, n) + 1;
        if (k == p)
            return;
        if (k < p) {
            n = p;
        } else {
            a += p;
            n -= p;
            k -= p;
        }
    }
    insertion_u64(a, n);
}

/* ---- partitions ------------------------------------------------------- */

/* Partition of a key: 1 + the cuts at or below it (NaN: the last in use). */
static inline uint32_t part_of(const uint32_t *cuts, uint32_t half, uint32_t nc, uint32_t key)
{
    uint32_t pos = 0;
    for (uint32_t s = half; s; s >>= 1)
        pos += cuts[pos + s - 1] <= key ? s : 0;
    return 1 + (pos < nc ? pos : nc);
}

/* One neuron's partition state, in locals: the pid stores may alias
 * anything, so fields read through the core would be reloaded per input. */
typedef struct neuron_parts {
    const uint32_t *cuts;
    uint32_t half, nc, bits;
    uint8_t *pids;
    uint32_t *ext;
    uint64_t *used;
} neuron_parts;

static inline neuron_parts parts_of(const bstream *b, uint64_t j)
{
    return (neuron_parts){b->cuts + j * b->slots, (b->slots + 1) / 2, b->ncuts[j], b->bits,
                          b->pids + j * b->pid_len, b->ext + 2 * j, b->used + 4 * j};
}

/* Bounds: an inner partition's are its cuts -- the largest value is the
 * sampled one at its upper cut, a member; the lower cut's value (a member
 * of the next partition) is below every member -- so only the two outer
 * partitions, open on one side, track their extreme member. */
static inline void widen(uint32_t *ext, uint32_t p, uint32_t last, uint32_t key)
{
    uint32_t a = p == 1 ? key : UINT32_MAX, z = p == last ? key : 0;
    ext[0] = a < ext[0] ? a : ext[0];
    ext[1] = z > ext[1] ? z : ext[1];
}

/* ORs `nbytes` (<= 4) low bytes of x into pids at byte `at`. */
static inline void or_bytes(uint8_t *pids, size_t at, uint64_t x, uint32_t nbytes)
{
    uint32_t w = 0;
    memcpy(&w, pids + at, nbytes);
    w |= (uint32_t)x;
    memcpy(pids + at, &w, nbytes);
}

/* Puts input `id` with `key` into its partition, out of order (a shed
 * candidate): its id bits and the partition's bounds. */
static inline void place(const neuron_parts *np, uint32_t key, uint32_t id)
{
    uint32_t p = part_of(np->cuts, np->half, np->nc, key);
    uint64_t bit = (uint64_t)id * np->bits;
    or_bytes(np->pids, bit >> 3, (uint64_t)p << (bit & 7), 2);
    widen(np->ext, p, 1 + np->nc, key);
    np->used[p >> 6] |= 1ull << (p & 63);
}

/* Keeps neuron j's best m candidates, places the others; returns m. */
static uint32_t shed(bstream *b, uint64_t j, uint32_t k)
{
    uint64_t *c = b->cand + j * b->cap;
    const uint32_t m = b->m;
    select_u64(c, k, m);
    uint64_t worst = 0;
    for (uint32_t i = 0; i < m; i++)
        worst = c[i] > worst ? c[i] : worst;
    b->lim[j] = worst >> 32;
    neuron_parts np = parts_of(b, j);
    for (uint32_t i = m; i < k; i++)
        place(&np, (uint32_t)(c[i] >> 32), (uint32_t)c[i]);
    return m;
}

/* Cuts one neuron's range at the sorted sample keys s[0..S): ranks below
 * r0 (the sample's share of the MAI) are left out; a run of one value over
 * a partition's worth of the sample gets a partition of its own, and the
 * other values share the remaining partitions in about equal mass. Cuts
 * fall only between distinct keys. Returns how many (<= P - 2). */
static uint32_t make_cuts(const uint32_t *s, uint32_t S, uint32_t r0, uint32_t P, uint32_t *cuts)
{
    const uint32_t q = P - 1, maxc = P - 2;
    if (r0 >= S || maxc == 0)
        return 0;
    const double h = (double)(S - r0) / q;
    uint32_t heavy_n = 0, heavy_len = 0;
    for (uint32_t i = r0; i < S;) {
        uint32_t e = i + 1;
        while (e < S && s[e] == s[i]) e++;
        if (e - i >= 2 && e - i >= h) {
            heavy_n++;
            heavy_len += e - i;
        }
        i = e;
    }
    const double step = q > heavy_n ? (double)(S - r0 - heavy_len) / (q - heavy_n) : INFINITY;
    uint32_t nc = 0;
    double acc = 0;
    int cut_next = 0;
    for (uint32_t i = r0; i < S && nc < maxc;) {
        uint32_t e = i + 1;
        while (e < S && s[e] == s[i]) e++;
        int heavy = e - i >= 2 && e - i >= h;
        if (i > r0 && (heavy || cut_next || acc >= step)) {
            cuts[nc++] = s[i];
            acc = 0;
        }
        cut_next = heavy;
        if (!heavy) acc += e - i;
        i = e;
    }
    return nc;
}

static void plan_range(bstream *b, uint64_t j0, uint64_t j1, void *arg)
{
    (void)arg;
    const uint32_t S = b->nsamp;
    uint32_t *tmp = S ? malloc(S * sizeof *tmp) : NULL;
    for (uint64_t j = j0; j < j1; j++) {
        uint32_t *cuts = b->cuts + j * b->slots, nc = 0;
        uint32_t *s = b->sample ? b->sample + j * b->S : NULL;
        if (S > 0 && tmp) {
            sort_u32(s, tmp, S);
            uint32_t r0 = (uint32_t)((uint64_t)b->m * S / b->n);
            nc = make_cuts(s, S, r0, b->P, cuts);
        }
        for (uint32_t i = nc; i < b->slots; i++)
            cuts[i] = UINT32_MAX;
        b->ncuts[j] = (uint8_t)nc;
        if (b->m == 0) {
            b->lim[j] = 0;
        } else {
            /* the sample's 3m-th value, admitted with its ties */
            uint64_t r = S ? ((uint64_t)3 * b->m * S + b->n - 1) / b->n + 1 : 0;
            b->lim[j] = S && tmp && r < S ? (uint64_t)s[r] + 1 : (uint64_t)1 << 32; /* unsorted: admit all */
        }
        b->ext[2 * j] = UINT32_MAX; /* empty: smallest > largest */
        b->ext[2 * j + 1] = 0;
    }
    free(tmp);
}

/* ---- API -------------------------------------------------------------- */

uint32_t bstream_sample_count(uint32_t n)
{
    if (n < SAMPLE_MAX)
        return 0;
    return n / 8 < SAMPLE_MAX ? n / 8 : SAMPLE_MAX;
}

uint32_t bstream_sample_id(uint32_t n, uint32_t samples, uint32_t s)
{
    return (uint32_t)(((2ull * s + 1) * n) / (2ull * samples));
}

static size_t state_size(uint32_t n, uint64_t neurons, uint32_t P, uint32_t m)
{
    uint32_t bits = npi_bits(P), slots = (1u << bits) - 1;
    size_t per = pid_bytes(n, bits) + 8 + 32 + (size_t)cap_of(m) * 8 + (size_t)slots * 4 + 1 + 8 + 4;
    return (size_t)neurons * per + 64;
}

static size_t block_size(uint32_t n, uint64_t neurons, uint32_t P, uint32_t m)
{
    uint64_t blk = neurons < FINISH_BLOCK ? neurons : FINISH_BLOCK;
    return (size_t)blk * ((npi_blob_size(n, P, m) + 7) & ~(size_t)7);
}

size_t bstream_bytes(uint32_t n, uint64_t neurons, uint32_t partitions, uint32_t mai_count, uint32_t samples)
{
    size_t st = state_size(n, neurons, partitions, mai_count);
    size_t a = (size_t)neurons * samples * 4, f = block_size(n, neurons, partitions, mai_count);
    return st + (a > f ? a : f);
}

int bstream_new(uint32_t n, uint64_t neurons, uint32_t partitions, uint32_t mai_count, uint32_t samples,
                bstream **out, char *err, size_t errlen)
{
    *out = NULL;
    if (partitions < 2 || partitions > NPI_MAX_PARTITIONS || mai_count > n || samples > n || neurons == 0) {
        snprintf(err, errlen, "bad stream builder parameters (n %u, %llu neurons, %u partitions, MAI %u, %u samples)",
                 n, (unsigned long long)neurons, partitions, mai_count, samples);
        return -1;
    }
    bstream *b = calloc(1, sizeof *b);
    if (!b) goto oom;
    b->n = n;
    b->neurons = neurons;
    b->P = partitions;
    b->m = mai_count;
    b->bits = npi_bits(partitions);
    b->slots = (1u << b->bits) - 1;
    b->S = samples;
    b->cap = cap_of(mai_count);
    b->pid_len = pid_bytes(n, b->bits);
    b->threads = 1;
    b->state_bytes = state_size(n, neurons, partitions, mai_count);
    if (!(b->state = big_alloc(b->state_bytes))) goto oom;
    hold(b, b->state_bytes);
    /* sections of the one mapping, 8-byte ones first */
    char *p = b->state;
    b->lim = (uint64_t *)(void *)p;
    p += neurons * 8;
    b->cand = (uint64_t *)(void *)p;
    p += neurons * (size_t)b->cap * 8;
    b->ext = (uint32_t *)(void *)p;
    p += neurons * 8;
    b->used = (uint64_t *)(void *)p;
    p += neurons * 32;
    b->cuts = (uint32_t *)(void *)p;
    p += neurons * (size_t)b->slots * 4;
    b->ncand = (uint32_t *)(void *)p;
    p += neurons * 4;
    b->ncuts = (uint8_t *)p;
    p += neurons;
    b->pids = (uint8_t *)p;
    if (samples) {
        b->sample_bytes = (size_t)neurons * samples * 4;
        if (!(b->sample = big_alloc(b->sample_bytes))) goto oom;
        hold(b, b->sample_bytes);
    }
    *out = b;
    return 0;
oom:
    bstream_free(b);
    snprintf(err, errlen, "out of memory for the stream builder (%llu neurons)", (unsigned long long)neurons);
    return -1;
}

void bstream_set_threads(bstream *b, int threads)
{
    b->threads = threads > 1 ? 2 : 1;
}

typedef struct rows_arg {
    const float *rows;
    uint32_t first, count;
} rows_arg;

static void sample_range(bstream *b, uint64_t j0, uint64_t j1, void *arg)
{
    const rows_arg *r = arg;
    for (uint64_t j = j0; j < j1; j++) {
        uint32_t *s = b->sample + j * b->S + b->nsamp;
        const float *col = r->rows + j;
        for (uint32_t i = 0; i < r->count; i++)
            s[i] = rank_key(col[(size_t)i * b->neurons]);
    }
}

int bstream_sample(bstream *b, const float *rows, uint32_t count, char *err, size_t errlen)
{
    if (b->planned || count > b->S - b->nsamp) {
        if (b->planned)
            snprintf(err, errlen, "sample rows after the pass began");
        else
            snprintf(err, errlen, "more sample rows than %u", b->S);
        return -1;
    }
    rows_arg r = {rows, 0, count};
    over_neurons(b, 0, b->neurons, sample_range, &r);
    b->nsamp += count;
    return 0;
}

/* The per-input loops, as plain loops the vectorizer understands, built
 * for AVX2 too where the compiler can (picked at load time), as in npi.c. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define HOT __attribute__((target_clones("avx2", "default"), optimize("O3")))
#elif defined(__clang__) && defined(__x86_64__)
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

HOT static void keys_block(const float *restrict v, uint32_t n, uint32_t *restrict key)
{
    for (uint32_t i = 0; i < n; i++)
        key[i] = rank_key(v[i]);
}

/* p[i] = 1 + the cuts at or below key[i]: one pass per cut (a search per
 * key costs more than 16 compares done 8 at a time). Keys past the last
 * cut (NaN) stay in the last partition. */
HOT static void parts_block(const uint32_t *restrict cuts, uint32_t nc, const uint32_t *restrict key, uint32_t n,
                            uint32_t *restrict p)
{
    for (uint32_t i = 0; i < n; i++)
        p[i] = 1;
    for (uint32_t c = 0; c < nc; c++) {
        const uint32_t cv = cuts[c];
        for (uint32_t i = 0; i < n; i++)
            p[i] += cv <= key[i];
    }
}

/* p[i] = part_of(key[i]) for a block, the binary search run in vector
 * lanes: the scalar search was more than half of a wide layer's time in
 * the builders (62 cuts at the default 64 partitions: six dependent loads
 * and compares per value). Up to 63 cut slots sit in four AVX-512
 * registers and each lane picks its cut by permutes; more slots, or AVX2,
 * gather them. Integer compares: the same partitions as part_of, bit for
 * bit (test_stream checks every level against it). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_SIMD_SEARCH 1

__attribute__((target("avx512f"))) static uint32_t parts_search_avx512(const uint32_t *cuts, uint32_t slots,
                                                                      uint32_t nc, const uint32_t *key, uint32_t n,
                                                                      uint32_t *p)
{
    const uint32_t half = (slots + 1) / 2;
    const __m512i ncv = _mm512_set1_epi32((int)nc), one = _mm512_set1_epi32(1), zero = _mm512_setzero_si512();
    uint32_t i = 0;
    if (slots <= 63) {
        uint32_t tab[64];
        memcpy(tab, cuts, slots * sizeof *tab);
        for (uint32_t s = slots; s < 64; s++)
            tab[s] = UINT32_MAX;
        const __m512i T0 = _mm512_loadu_si512(tab), T1 = _mm512_loadu_si512(tab + 16),
                      T2 = _mm512_loadu_si512(tab + 32), T3 = _mm512_loadu_si512(tab + 48),
                      b5 = _mm512_set1_epi32(32);
        for (; i + 16 <= n; i += 16) {
            __m512i k = _mm512_loadu_si512(key + i), pos = zero;
            for (uint32_t s = half; s; s >>= 1) {
                __m512i idx = _mm512_add_epi32(pos, _mm512_set1_epi32((int)s - 1));
                __m512i c = _mm512_permutex2var_epi32(T0, idx, T1);
                if (slots > 31)
                    c = _mm512_mask_blend_epi32(_mm512_test_epi32_mask(idx, b5), c,
                                                _mm512_permutex2var_epi32(T2, idx, T3));
                pos = _mm512_mask_add_epi32(pos, _mm512_cmple_epu32_mask(c, k), pos, _mm512_set1_epi32((int)s));
            }
            _mm512_storeu_si512(p + i, _mm512_add_epi32(one, _mm512_min_epu32(pos, ncv)));
        }
    } else {
        for (; i + 16 <= n; i += 16) {
            __m512i k = _mm512_loadu_si512(key + i), pos = zero;
            for (uint32_t s = half; s; s >>= 1) {
                __m512i idx = _mm512_add_epi32(pos, _mm512_set1_epi32((int)s - 1));
                __m512i c = _mm512_i32gather_epi32(idx, (const void *)cuts, 4);
                pos = _mm512_mask_add_epi32(pos, _mm512_cmple_epu32_mask(c, k), pos, _mm512_set1_epi32((int)s));
            }
            _mm512_storeu_si512(p + i, _mm512_add_epi32(one, _mm512_min_epu32(pos, ncv)));
        }
    }
    return i;
}

__attribute__((target("avx2"))) static uint32_t parts_search_avx2(const uint32_t *cuts, uint32_t slots, uint32_t nc,
                                                                 const uint32_t *key, uint32_t n, uint32_t *p)
{
    const uint32_t half = (slots + 1) / 2;
    /* unsigned c <= k as signed compares of the values with their top bit flipped */
    const __m256i bias = _mm256_set1_epi32(INT32_MIN), ncv = _mm256_set1_epi32((int)nc), one = _mm256_set1_epi32(1);
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i kb = _mm256_xor_si256(_mm256_loadu_si256((const void *)(key + i)), bias);
        __m256i pos = _mm256_setzero_si256();
        for (uint32_t s = half; s; s >>= 1) {
            __m256i idx = _mm256_add_epi32(pos, _mm256_set1_epi32((int)s - 1));
            __m256i c = _mm256_xor_si256(_mm256_i32gather_epi32((const int *)cuts, idx, 4), bias);
            pos = _mm256_add_epi32(pos, _mm256_andnot_si256(_mm256_cmpgt_epi32(c, kb), _mm256_set1_epi32((int)s)));
        }
        _mm256_storeu_si256((void *)(p + i), _mm256_add_epi32(one, _mm256_min_epu32(pos, ncv)));
    }
    return i;
}

static int simd_cpu(void)
{
    static int have = -1;
    if (have < 0)
        have = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
    return have;
}
#else
static int simd_cpu(void) { return 0; }
#endif

static int simd_level = 2; /* bstream_simd() */

static inline int simd_now(void)
{
    return simd_cpu() < simd_level ? simd_cpu() : simd_level;
}

int bstream_simd(int level)
{
    simd_level = level < 0 ? 0 : level > 2 ? 2 : level;
    return simd_now();
}

static void parts_search(const neuron_parts *np, uint32_t slots, const uint32_t *key, uint32_t n, uint32_t *p)
{
    uint32_t i = 0;
    int level = simd_now();
    if (level == 0 && np->nc <= 16) {
        parts_block(np->cuts, np->nc, key, n, p);
        return;
    }
#ifdef HAVE_SIMD_SEARCH
    if (level == 2)
        i = parts_search_avx512(np->cuts, slots, np->nc, key, n, p);
    else if (level == 1)
        i = parts_search_avx2(np->cuts, slots, np->nc, key, n, p);
#endif
    for (; i < n; i++) /* the tail, or no vector code */
        p[i] = part_of(np->cuts, np->half, np->nc, key[i]);
}

/* The outer partitions' extreme keys: the smallest in partition 1, the
 * largest in `last`. */
HOT static void ext_block(const uint32_t *restrict p, const uint32_t *restrict key, uint32_t n, uint32_t last,
                          uint32_t *restrict ext)
{
    /* masks and min/max reductions: written as ?: the compiler made the
     * selection branches, which the data mispredict */
    uint32_t lo = ext[0], hi = ext[1];
    for (uint32_t i = 0; i < n; i++) {
        uint32_t a = key[i] | (0u - (uint32_t)(p[i] != 1));
        lo = a < lo ? a : lo;
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t z = key[i] & (0u - (uint32_t)(p[i] == last));
        hi = z > hi ? z : hi;
    }
    ext[0] = lo;
    ext[1] = hi;
}

/* Neuron j's inputs first.. from v[0..count) (count <= BLOCK). Each block
 * goes through simple passes (keys, partitions, candidates, the outer
 * bounds, the id bits): one loop doing it all ran ~40 instructions per
 * input, a data-dependent branch and a chain of dependent ones among them. */
static void add_neuron(bstream *b, uint64_t j, const float *v, uint32_t first, uint32_t n)
{
    uint64_t *c = b->cand + j * b->cap;
    uint32_t k = b->ncand[j];
    const uint32_t cap = b->cap, bits = b->bits;
    const neuron_parts np = parts_of(b, j);
    uint32_t key[BLOCK], p[BLOCK];
    uint64_t bit0 = (uint64_t)first * bits;
    size_t at = bit0 >> 3;
    uint32_t nb = bit0 & 7;
    /* the neuron's id bits were last touched a whole layer ago */
    for (size_t off = 0; off < ((size_t)n * bits + 7) / 8 + 4; off += 64)
        __builtin_prefetch(np.pids + at + off, 1);
    keys_block(v, n, key);
    parts_search(&np, b->slots, key, n, p);
    for (uint32_t i = 0; i < n; i++) {
        if (key[i] >= b->lim[j]) continue;
        /* a candidate: id bits 0 (the MAI's) until it is shed */
        p[i] = 0;
        c[k++] = (uint64_t)key[i] << 32 | (first + i);
        if (k == cap) k = shed(b, j, k);
    }
    b->ncand[j] = k;
    ext_block(p, key, n, 1 + np.nc, np.ext);
    /* the ids of consecutive inputs gather in acc, ORed out 4 bytes at a
     * time (OR: a shed may have set bits of this range already) */
    uint64_t acc = 0, used = 0; /* partitions 0..63 seen, in a register */
    for (uint32_t i = 0; i < n; i++) {
        acc |= (uint64_t)p[i] << nb;
        used |= 1ull << (p[i] & 63);
        nb += bits;
        if (nb >= 32) {
            or_bytes(np.pids, at, acc, 4);
            at += 4;
            acc >>= 32;
            nb -= 32;
        }
    }
    if (b->P <= 64)
        np.used[0] |= used;
    else
        for (uint32_t i = 0; i < n; i++)
            np.used[p[i] >> 6] |= 1ull << (p[i] & 63);
    if (nb)
        or_bytes(np.pids, at, acc, (nb + 7) / 8);
}

/* Rows are read a tile of TILE neurons (two cache lines of each row) at a
 * time into a compact neuron-major buffer: walking one neuron down the rows
 * of a wide layer touched a page per row, and missed the TLB on each. 32
 * took ~15% less time than 16 at 6,272 neurons (64: more, the tile leaves
 * L1). */
#define TILE 32u

static void add_range(bstream *b, uint64_t j0, uint64_t j1, void *arg)
{
    const rows_arg *r = arg;
    const uint64_t D = b->neurons;
    float tile[TILE * BLOCK];
    for (uint32_t i0 = 0; i0 < r->count; i0 += BLOCK) {
        uint32_t n = r->count - i0 < BLOCK ? r->count - i0 : BLOCK;
        for (uint64_t t0 = j0; t0 < j1; t0 += TILE) {
            uint32_t w = j1 - t0 < TILE ? (uint32_t)(j1 - t0) : TILE;
            for (uint32_t i = 0; i < n; i++) {
                const float *row = r->rows + (size_t)(i0 + i) * D + t0;
                for (uint32_t jj = 0; jj < w; jj++)
                    tile[jj * BLOCK + i] = row[jj];
            }
            for (uint32_t jj = 0; jj < w; jj++)
                add_neuron(b, t0 + jj, tile + jj * BLOCK, r->first + i0, n);
        }
    }
}

int bstream_add(bstream *b, const float *rows, uint32_t first, uint32_t count, char *err, size_t errlen)
{
    if (first != b->added || count > b->n - b->added) {
        snprintf(err, errlen, "inputs out of order: %u..%u after %u of %u", first, first + count, b->added, b->n);
        return -1;
    }
    if (!b->planned) {
        over_neurons(b, 0, b->neurons, plan_range, NULL);
        big_free(b->sample, b->sample_bytes);
        b->sample = NULL;
        b->held -= b->sample_bytes;
        b->sample_bytes = 0;
        b->planned = 1;
    }
    rows_arg r = {rows, first, count};
    over_neurons(b, 0, b->neurons, add_range, &r);
    b->added += count;
    return 0;
}

typedef struct finish_arg {
    uint8_t *blk;      /* FINISH_BLOCK slots of `slot` bytes */
    size_t slot;
    uint64_t base;     /* neuron of slot 0 */
    size_t *len;       /* per slot */
} finish_arg;

static void finish_range(bstream *b, uint64_t j0, uint64_t j1, void *arg)
{
    finish_arg *f = arg;
    const uint32_t P = b->P;
    for (uint64_t j = j0; j < j1; j++) {
        uint32_t k = b->ncand[j];
        if (k > b->m) k = shed(b, j, k);
        uint64_t *c = b->cand + j * b->cap;
        sort_u64(c, k);
        uint32_t *hdr = (uint32_t *)(void *)(f->blk + (j - f->base) * f->slot);
        hdr[0] = NPI_MAGIC;
        hdr[1] = b->n;
        hdr[2] = P;
        hdr[3] = k;
        hdr[4] = b->bits;
        hdr[5] = 0;
        /* the blob's sections are 4-byte words by npi.h's layout */
        // cppcheck-suppress invalidPointerCast
        float *lower = (float *)(hdr + HDR_WORDS), *upper = lower + P;
        // cppcheck-suppress invalidPointerCast
        uint32_t *mai_ids = (uint32_t *)(upper + P);
        // cppcheck-suppress invalidPointerCast
        float *mai_values = (float *)(mai_ids + k);
        uint8_t *pids = (uint8_t *)(mai_values + k);
        /* partition p >= 1 holds keys [cut p-1, cut p): inner bounds from the
         * cuts, the outer ones tracked; partitions past the cuts are empty */
        const uint32_t *cuts = b->cuts + j * b->slots, nc = b->ncuts[j], *ext = b->ext + 2 * j;
        for (uint32_t p = 0; p < P; p++) {
            upper[p] = -INFINITY;
            lower[p] = INFINITY;
        }
        const uint64_t *used = b->used + 4 * j;
        for (uint32_t p = 1; p <= nc + 1 && p < P; p++) {
            if (!(used[p >> 6] >> (p & 63) & 1)) continue; /* empty: [+inf, -inf] */
            upper[p] = bound_value(key_value(p == 1 ? ext[0] : cuts[p - 2]));
            lower[p] = bound_value(key_value(p == nc + 1 ? ext[1] : cuts[p - 1]));
        }
        for (uint32_t i = 0; i < k; i++) {
            mai_ids[i] = (uint32_t)c[i];
            mai_values[i] = key_value((uint32_t)(c[i] >> 32));
        }
        lower[0] = k ? bound_value(mai_values[k - 1]) : INFINITY;
        upper[0] = k ? bound_value(mai_values[0]) : -INFINITY;
        memcpy(pids, b->pids + j * b->pid_len, b->pid_len);
        f->len[j - f->base] = npi_blob_size(b->n, P, k);
    }
}

int bstream_finish(bstream *b, int (*emit)(uint64_t neuron, const void *blob, size_t len, void *arg), void *arg,
                   char *err, size_t errlen)
{
    if (b->added != b->n || b->finished) {
        if (b->finished)
            snprintf(err, errlen, "finished already");
        else
            snprintf(err, errlen, "only %u of %u inputs added", b->added, b->n);
        return -1;
    }
    if (!b->planned) { /* n == 0 */
        over_neurons(b, 0, b->neurons, plan_range, NULL);
        b->planned = 1;
    }
    b->finished = 1; /* the candidates are consumed: one finish only */
    finish_arg f = {0};
    f.slot = (npi_blob_size(b->n, b->P, b->m) + 7) & ~(size_t)7;
    size_t blk_bytes = block_size(b->n, b->neurons, b->P, b->m);
    size_t len[FINISH_BLOCK];
    f.len = len;
    if (!(f.blk = big_alloc(blk_bytes))) {
        snprintf(err, errlen, "out of memory for the index blobs");
        return -1;
    }
    hold(b, blk_bytes);
    int rc = 0;
    for (uint64_t j0 = 0; j0 < b->neurons && rc == 0; j0 += FINISH_BLOCK) {
        uint64_t j1 = b->neurons - j0 < FINISH_BLOCK ? b->neurons : j0 + FINISH_BLOCK;
        f.base = j0;
        over_neurons(b, j0, j1, finish_range, &f);
        for (uint64_t j = j0; j < j1; j++) {
            if (emit(j, f.blk + (j - j0) * f.slot, len[j - j0], arg) != 0) {
                snprintf(err, errlen, "stopped");
                rc = -1;
                break;
            }
        }
    }
    big_free(f.blk, blk_bytes);
    b->held -= blk_bytes;
    return rc;
}

size_t bstream_peak_bytes(const bstream *b)
{
    return b->peak;
}

void bstream_free(bstream *b)
{
    if (!b)
        return;
    big_free(b->sample, b->sample_bytes);
    big_free(b->state, b->state_bytes);
    free(b);
}

/* bstream: ready */

/* ---- probe ---- */

static int probe_emit(uint64_t neuron, const void *blob, size_t len, void *arg)
{
    (void)neuron, (void)blob;
    *(size_t *)arg += len;
    return 0;
}

double bstream_probe_ms(int threads)
{
    enum { N = 8192, NEURONS = 256, CHUNK = 256, SAMPLES = 512 };
    bstream *b = NULL;
    float *rows = malloc((size_t)CHUNK * NEURONS * sizeof *rows);
    char err[160];
    size_t emitted = 0;
    double ms = -1;
    if (!rows || bstream_new(N, NEURONS, 64, N / 256, SAMPLES, &b, err, sizeof err) != 0) goto out;
    bstream_set_threads(b, threads);
    /* rows a ReLU layer could give: a quarter zeros, the rest spread */
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (size_t i = 0; i < (size_t)CHUNK * NEURONS; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        rows[i] = (x & 3) == 0 ? 0.0f : (float)((x >> 40) & 0xffff) / 4096.0f;
    }
    for (uint32_t s = 0; s < SAMPLES; s += CHUNK)
        if (bstream_sample(b, rows, CHUNK, err, sizeof err) != 0) goto out;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint32_t first = 0; first < N; first += CHUNK)
        if (bstream_add(b, rows, first, CHUNK, err, sizeof err) != 0) goto out;
    if (bstream_finish(b, probe_emit, &emitted, err, sizeof err) != 0) goto out;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
out:
    bstream_free(b);
    free(rows);
    return ms;
}
