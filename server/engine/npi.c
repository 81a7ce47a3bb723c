/* npi.c -- builds and reads one neuron's MAI + NPI blob (see npi.h).
 *
 * Ranking: every value maps to a 32-bit "descending key" whose unsigned order
 * is the rank order (largest value = smallest key). +0.0 and -0.0 share a key
 * (they compare equal, so ties go by input id); every NaN gets the largest
 * key, i.e. NaN ranks lowest, below -inf. Elements are (key << 32 | id)
 * pairs, so sorting them as u64 ranks by value descending, ties smaller id
 * first.
 *
 * NaN in the blob: MAI values are stored exactly as given (a NaN stays NaN),
 * but partition bounds are NaN-free: a NaN member counts as -inf there, so a
 * partition holding only NaN has lower = upper = -inf.
 *
 * Speed (npi_build runs once per neuron of a layer, so it is the index
 * build): a full sort of N values is more than the index needs. It needs the
 * exact order of the top m and of the inputs around the P-2 partition cuts;
 * everyone else only needs to know its partition. So:
 *  1. a sample of the values sets up ~16-element buckets of about equal
 *     mass (keys are linear in the exponent, so equal-width key buckets would
 *     crowd the bulk into a few); a value repeated often in the sample (the
 *     exact zeros of a ReLU, a saturated maximum) gets a bucket of its own;
 *  2. one pass histograms every input's bucket, which gives each bucket its
 *     rank range;
 *  3. one pass gives every input of a bucket lying strictly inside one
 *     partition that partition, and gathers the rest (MAI buckets, buckets
 *     holding a cut) for an exact sort (nested histograms, then insertion
 *     sort); inputs of the repeated value are ranked by id on the fly, no
 *     sort at all.
 * The per-input loops are branch-free where the data would decide a branch;
 * the bucket pass also gets an AVX2 clone, picked at load time. Measured on
 * one core of a 2-core AMD EPYC: 2.3-4 ns per value for N = 70,000,
 * P = 16..256, m = 3% (ReLU-like, normal and uniform values); test_npi
 * prints it. The repeated value's inputs are listed apart in the bucket
 * pass: walking them in one list with the split buckets' inputs cost a
 * mispredicted branch each (pool1, a quarter zeros: 16% of its finish).
 */
#include "npi.h"

#include <math.h>
#include <stdlib.h>

#define HDR_WORDS 6u

uint32_t npi_bits(uint32_t partitions)
{
    uint32_t b = 1;
    while (b < 32 && (1u << b) < partitions)
        b++;
    return b;
}

uint32_t npi_mai_count(uint32_t n, double mai_ratio)
{
    if (!(mai_ratio > 0.0))
        return 0;
    if (mai_ratio >= 1.0)
        return n;
    double x = mai_ratio * (double)n;
    double f = floor(x);
    /* ratio*N is often an integer blurred by rounding (0.03*70000 is not
     * exactly 2100): within a relative 1e-9 of an integer counts as it. */
    double c = (x - f <= 1e-9 * (x > 1.0 ? x : 1.0)) ? f : f + 1.0;
    if (c > (double)n)
        c = (double)n;
    return (uint32_t)c;
}

static size_t pid_bytes(uint32_t n, uint32_t bits)
{
    return (size_t)(((uint64_t)n * bits + 7) / 8) + 3;
}

size_t npi_blob_size(uint32_t n, uint32_t partitions, uint32_t mai_count)
{
    return HDR_WORDS * 4 + (size_t)partitions * 8 + (size_t)mai_count * 8 +
           pid_bytes(n, npi_bits(partitions));
}

/* ---- scratch ---------------------------------------------------------- */

/* Nested levels refine a bucket by digits of up to 11 bits of its key range
 * (32 -> 21 -> 10 -> 0 bits), so at most 3 below the top (lv[depth], depth
 * 1..3; a 4th level finds its keys all equal). */
#define DIGIT_BITS 11u
#define NB_MAX (1u << DIGIT_BITS)
#define LEVELS 5
#define SMALL_SEG 32u  /* below this, insertion sort beats a histogram */
#define SPLIT 0xffffu  /* bucket partition marks (never a partition id): */
#define SPIKE 0xfffeu  /*   needs an exact sort / the repeated value's bucket */

/* Top level: cells are the top 12 key bits (sign, exponent, 3 mantissa
 * bits); a cell holding c sample values gets about 2^extra * c buckets, a run
 * of empty cells one bucket together. */
#define CELL_BITS 12u
#define CELLS (1u << CELL_BITS)
#define SUB_BITS (32u - CELL_BITS)
#define SAMPLE 1024u
#define MAX_EXTRA 3u
#define TOP_MAX (2u * SAMPLE * (1u << MAX_EXTRA) + SAMPLE + 4u)
#define MAYBE 0xffu /* bp8: not resolved by its bucket (or partition 255) */

typedef struct level {
    uint32_t cnt[NB_MAX];  /* elements per bucket */
    uint32_t fill[NB_MAX]; /* scatter cursor of a split bucket */
    uint16_t bp[NB_MAX];   /* partition of a whole bucket, or SPLIT */
} level;

struct npi_scratch {
    uint32_t cap;
    uint64_t *x, *y;  /* (key << 32 | id) elements being refined, ping-pong */
    uint8_t *pid;     /* partition id per input, before packing */
    uint16_t *bk;     /* top-level bucket per input */
    uint32_t *todo;   /* inputs whose bucket did not resolve them, ascending */
    uint32_t *spike;  /* inputs holding the repeated value, ascending */
    uint32_t cell[CELLS];  /* bucket base << 5 | sub-bucket shift */
    uint16_t scnt[CELLS];  /* sample values per cell */
    uint32_t tcnt[2][TOP_MAX], tfill[TOP_MAX];
    uint16_t tbp[TOP_MAX];
    uint8_t tbp8[TOP_MAX];
    level lv[LEVELS];
};

npi_scratch *npi_scratch_new(uint32_t n)
{
    npi_scratch *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    size_t cnt = n ? n : 1;
    s->cap = n;
    s->x = malloc(cnt * sizeof *s->x);
    s->y = malloc(cnt * sizeof *s->y);
    s->pid = malloc(cnt);
    s->bk = malloc(cnt * sizeof *s->bk);
    s->todo = malloc(cnt * sizeof *s->todo);
    s->spike = malloc(cnt * sizeof *s->spike);
    if (!s->x || !s->y || !s->pid || !s->bk || !s->todo || !s->spike) {
        npi_scratch_free(s);
        return NULL;
    }
    return s;
}

void npi_scratch_free(npi_scratch *s)
{
    if (!s)
        return;
    free(s->x);
    free(s->y);
    free(s->pid);
    free(s->bk);
    free(s->todo);
    free(s->spike);
    free(s);
}

/* ---- keys ------------------------------------------------------------- */

static inline uint32_t desc_key(float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    /* branch-free: it runs twice per value and the data decide the branches */
    uint32_t is_nan = 0u - (uint32_t)((b & 0x7fffffffu) > 0x7f800000u);
    b &= 0u - (uint32_t)(b != 0x80000000u); /* -0.0 ties with +0.0 */
    /* ascending key: positives get the sign bit set, negatives are inverted;
     * descending is its complement. NaN: below everything. */
    uint32_t neg = 0u - (b >> 31);
    return (b ^ (0x7fffffffu & ~neg)) | is_nan;
}

/* c ? a : b without a branch (the compiler may not pick cmov on its own) */
static inline uint32_t pick(int c, uint32_t a, uint32_t b)
{
    uint32_t m = 0u - (uint32_t)(c != 0);
    return (a & m) | (b & ~m);
}

static inline float bound_value(float v)
{
    return isnan(v) ? -INFINITY : v;
}

/* Shift that maps a key range of `range` onto at most 2^DIGIT_BITS buckets. */
static inline uint32_t digit_shift(uint32_t range)
{
    uint32_t bits = range ? 32u - (uint32_t)__builtin_clz(range) : 0;
    return bits > DIGIT_BITS ? bits - DIGIT_BITS : 0;
}

static inline uint32_t ceil_log2(uint32_t x)
{
    return x <= 1 ? 0 : 32u - (uint32_t)__builtin_clz(x - 1);
}

static void sort_small(uint64_t *a, uint32_t n)
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

/* ---- packing ---------------------------------------------------------- */

/* 8 partition ids (bytes, each < 2^bits) -> 8*bits bits, LSB first: join
 * byte pairs into 16-bit lanes, those into 32-bit lanes, those into one. */
static inline uint64_t pack8(uint64_t x, uint32_t bits)
{
    const uint64_t l16 = 0x0001000100010001ull, l32 = 0x0000000100000001ull;
    uint64_t m = 0xffull * l16;
    x = (x & m) | ((x & (m << 8)) >> (8 - bits));
    m = ((1ull << (2 * bits)) - 1) * l32;
    x = (x & m) | ((x & (m << 16)) >> (16 - 2 * bits));
    m = (1ull << (4 * bits)) - 1;
    return (x & m) | ((x & (m << 32)) >> (32 - 4 * bits));
}

static void pack_pids(const uint8_t *pid, uint32_t n, uint32_t bits, uint8_t *out)
{
    size_t used = (size_t)(((uint64_t)n * bits + 7) / 8), avail = used + 3;
    uint32_t groups = n / 8, g = 0;
    if (bits == 8) {
        memcpy(out, pid, n);
        g = groups;
    } else {
        /* whole 8-byte stores while they fit; the zero high bytes of one
         * are overwritten by the next */
        for (; g < groups && (size_t)g * bits + 8 <= avail; g++) {
            uint64_t x, w;
            memcpy(&x, pid + (size_t)g * 8, 8);
            w = pack8(x, bits);
            memcpy(out + (size_t)g * bits, &w, 8);
        }
    }
    /* the rest (at most a few groups and the n % 8 tail), byte by byte */
    memset(out + (size_t)g * bits, 0, avail - (size_t)g * bits);
    for (uint32_t i = g * 8; i < n; i++) {
        uint64_t bit = (uint64_t)i * bits;
        uint32_t v = (uint32_t)pid[i] << (bit & 7);
        out[bit >> 3] |= (uint8_t)v;
        if (v >> 8)
            out[(bit >> 3) + 1] |= (uint8_t)(v >> 8);
    }
}

/* ---- build ------------------------------------------------------------ */

typedef struct build_ctx {
    npi_scratch *s;
    const float *values;
    const uint32_t *start; /* partition p = ranks [start[p], start[p+1]) */
    uint32_t P;
    uint8_t *pid;
    uint32_t *mai_ids;
    float *mai_values, *lower, *upper;
} build_ctx;

/* Partition holding rank r (< n): the largest p with start[p] <= r. */
static uint32_t part_of(const build_ctx *c, uint32_t r)
{
    uint32_t lo = 0, hi = c->P - 1;
    while (lo < hi) {
        uint32_t mid = (lo + hi + 1) / 2;
        if (c->start[mid] <= r)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Buckets hold consecutive rank ranges from rank0 on. A bucket strictly
 * inside one partition p >= 1 (holding neither its first nor its last rank,
 * whose values are the bounds, nor any MAI rank, whose order matters) is
 * resolved whole; the others are split and get scatter offsets. */
static void classify(const build_ctx *c, const uint32_t *cnt, uint16_t *bp, uint32_t *fill,
                     uint32_t nb, uint32_t rank0)
{
    uint32_t r = rank0, p = part_of(c, rank0), off = 0;
    const uint32_t *start = c->start;
    for (uint32_t d = 0; d < nb; d++) {
        uint32_t k = cnt[d];
        if (!k) {
            bp[d] = 0;
            continue;
        }
        uint32_t hi = r + k;
        while (start[p + 1] <= r)
            p++;
        if (p >= 1 && r > start[p] && hi < start[p + 1]) {
            bp[d] = (uint16_t)p;
        } else {
            bp[d] = SPLIT;
            fill[d] = off;
            off += k;
        }
        r = hi;
    }
}

/* Elements a[0..k) are in rank order from rank0: they get their partition
 * ids, the MAI entries and the partition bounds they carry. */
static void emit_ranks(const build_ctx *c, const uint64_t *a, uint32_t k, uint32_t rank0)
{
    const uint32_t *start = c->start;
    uint32_t p = part_of(c, rank0);
    for (uint32_t j = 0; j < k; j++) {
        uint32_t r = rank0 + j, id = (uint32_t)a[j];
        while (start[p + 1] <= r)
            p++;
        c->pid[id] = (uint8_t)p;
        if (p == 0) {
            c->mai_ids[r] = id;
            c->mai_values[r] = c->values[id];
        } else {
            if (r == start[p])
                c->upper[p] = bound_value(c->values[id]);
            if (r + 1 == start[p + 1])
                c->lower[p] = bound_value(c->values[id]);
        }
    }
}

/* Refines k elements x[0..k) (ids ascending within equal keys) holding ranks
 * [rank0, rank0 + k): one more histogram level over their key range, or an
 * exact sort when small or all equal. y[0..k) is free to scatter into; x is
 * free once scattered from (the ping-pong keeps offsets aligned). */
static void refine(const build_ctx *c, uint64_t *x, uint64_t *y, uint32_t k, uint32_t rank0,
                   int depth)
{
    if (k <= SMALL_SEG) {
        sort_small(x, k);
        emit_ranks(c, x, k, rank0);
        return;
    }
    uint32_t mn = 0xffffffffu, mx = 0;
    for (uint32_t i = 0; i < k; i++) {
        uint32_t key = (uint32_t)(x[i] >> 32);
        mn = key < mn ? key : mn;
        mx = key > mx ? key : mx;
    }
    if (mn == mx || depth >= LEVELS) {
        /* all equal: already in id order (depth never runs out: each level
         * narrows the key range by 11 bits) */
        if (mn != mx)
            sort_small(x, k);
        emit_ranks(c, x, k, rank0);
        return;
    }
    uint32_t sh = digit_shift(mx - mn), nb = ((mx - mn) >> sh) + 1;
    level *L = &c->s->lv[depth];
    memset(L->cnt, 0, nb * sizeof *L->cnt);
    for (uint32_t i = 0; i < k; i++)
        L->cnt[((uint32_t)(x[i] >> 32) - mn) >> sh]++;
    classify(c, L->cnt, L->bp, L->fill, nb, rank0);
    uint8_t *pid = c->pid;
    for (uint32_t i = 0; i < k; i++) {
        uint64_t e = x[i];
        uint32_t d = ((uint32_t)(e >> 32) - mn) >> sh, bp = L->bp[d];
        if (bp != SPLIT)
            pid[(uint32_t)e] = (uint8_t)bp;
        else
            y[L->fill[d]++] = e;
    }
    for (uint32_t d = 0, r = rank0; d < nb; d++) {
        uint32_t cnt = L->cnt[d];
        if (cnt && L->bp[d] == SPLIT) {
            uint32_t off = L->fill[d] - cnt;
            refine(c, y + off, x + off, cnt, r, depth + 1);
        }
        r += cnt;
    }
}

/* The top-level bucket map, built from a sample. */
typedef struct top_map {
    uint32_t nb;           /* buckets */
    uint32_t spike_key;    /* the repeated value's key ... */
    uint32_t spike_cell;   /* ... its cell (CELLS: none) ... */
    uint32_t spike_base;   /* ... and its cell's 3 buckets: <, ==, > */
    float spike_value;
} top_map;

static inline uint32_t top_bucket(const uint32_t *cell, const top_map *t, uint32_t key)
{
    uint32_t c = key >> SUB_BITS, e = cell[c];
    uint32_t b = (e >> 5) + ((key & ((1u << SUB_BITS) - 1)) >> (e & 31));
    uint32_t bs = t->spike_base + (key >= t->spike_key) + (key > t->spike_key);
    return pick(c == t->spike_cell, bs, b);
}

static void top_plan(npi_scratch *s, const float *values, uint32_t n, top_map *t)
{
    uint32_t smp[SAMPLE], ns = n < SAMPLE ? n : SAMPLE;
    uint32_t mn = 0xffffffffu, mx = 0, maj = 0, votes = 0;
    memset(s->scnt, 0, sizeof s->scnt);
    for (uint32_t j = 0; j < ns; j++) {
        uint32_t k = desc_key(values[(uint64_t)j * n / ns]);
        smp[j] = k;
        s->scnt[k >> SUB_BITS]++;
        mn = k < mn ? k : mn;
        mx = k > mx ? k : mx;
        if (votes == 0) { /* Boyer-Moore: finds a majority value if any */
            maj = k;
            votes = 1;
        } else {
            votes += k == maj ? 1 : -1u;
        }
    }
    /* the repeated value: zero (ReLU), an end of the range (saturation) or a
     * majority; it must fill at least 1/16 of the sample to be worth it */
    uint32_t cand[4] = {0x7fffffffu, mn, mx, maj}, hits[4] = {0, 0, 0, 0};
    for (uint32_t j = 0; j < ns; j++)
        for (int q = 0; q < 4; q++)
            hits[q] += smp[j] == cand[q];
    int best = 0;
    for (int q = 1; q < 4; q++)
        if (hits[q] > hits[best])
            best = q;
    t->spike_cell = CELLS;
    t->spike_base = 0;
    t->spike_key = 0;
    t->spike_value = 0.0f;
    if (hits[best] >= 2 && hits[best] * 16 >= ns) {
        t->spike_key = cand[best];
        t->spike_cell = cand[best] >> SUB_BITS;
        for (uint32_t j = 0; j < ns; j++)
            if (smp[j] == t->spike_key) {
                t->spike_value = values[(uint64_t)j * n / ns];
                break;
            }
    }
    /* ~16 inputs per bucket: a sample value stands for n/ns inputs */
    uint32_t extra = 0;
    while (extra < MAX_EXTRA && ((uint64_t)ns << (extra + 5)) <= n)
        extra++;
    uint32_t base = 0, run = 0;
    int in_run = 0;
    for (uint32_t c = 0; c < CELLS; c++) {
        uint32_t sc = s->scnt[c];
        if (c == t->spike_cell) {
            t->spike_base = base;
            s->cell[c] = base << 5 | SUB_BITS;
            base += 3;
            in_run = 0;
        } else if (sc == 0) {
            if (!in_run) {
                run = base++;
                in_run = 1;
            }
            s->cell[c] = run << 5 | SUB_BITS;
        } else {
            uint32_t j = ceil_log2(sc) + extra;
            j = j > SUB_BITS ? SUB_BITS : j;
            s->cell[c] = base << 5 | (SUB_BITS - j);
            base += 1u << j;
            in_run = 0;
        }
    }
    t->nb = base;
}

/* The hot loops, once per input. Built for AVX2 too where the compiler can
 * (picked at load time), as plain loops the vectorizer understands. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define HOT __attribute__((target_clones("avx2", "default"), optimize("O3")))
#elif defined(__clang__) && defined(__x86_64__)
#define HOT __attribute__((target_clones("avx2", "default")))
#else
#define HOT
#endif

HOT static void top_buckets(const float *restrict values, uint32_t n,
                            const uint32_t *restrict cell, const top_map *t,
                            uint16_t *restrict bk)
{
    const top_map tm = *t;
    for (uint32_t i = 0; i < n; i++)
        bk[i] = (uint16_t)top_bucket(cell, &tm, desc_key(values[i]));
}

/* Two interleaved counters per bucket: a run of inputs in one bucket (the
 * repeated value) would otherwise chain every increment to the last. */
static void histogram(const uint16_t *restrict bk, uint32_t n, uint32_t *restrict c0,
                      uint32_t *restrict c1, uint32_t nb)
{
    memset(c0, 0, nb * sizeof *c0);
    memset(c1, 0, nb * sizeof *c1);
    uint32_t i = 0;
    for (; i + 2 <= n; i += 2) {
        c0[bk[i]]++;
        c1[bk[i + 1]]++;
    }
    if (i < n)
        c0[bk[i]]++;
    for (uint32_t d = 0; d < nb; d++)
        c0[d] += c1[d];
}

/* pid of every input from its bucket; the unresolved ones are listed, and
 * apart from them those of bucket `spike_b` (the repeated value's, or none
 * when >= 2^16), without a branch: the data would decide it. */
static uint32_t resolve_pass(const uint16_t *restrict bk, uint32_t n,
                             const uint8_t *restrict bp8, uint8_t *restrict pid,
                             uint32_t *restrict todo, uint32_t spike_b,
                             uint32_t *restrict spike, uint32_t *n_spike)
{
    uint32_t k = 0, ks = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t b = bk[i];
        uint8_t q = bp8[b];
        pid[i] = q;
        todo[k] = i;
        k += q == MAYBE;
        spike[ks] = i;
        ks += b == spike_b;
    }
    *n_spike = ks;
    return k;
}

int npi_build(const float *values, uint32_t n, uint32_t partitions, uint32_t mai_count,
              npi_scratch *s, void *blob)
{
    if (partitions < 2 || partitions > NPI_MAX_PARTITIONS || mai_count > n || !s ||
        !blob || ((uintptr_t)blob & 3u) || (n && !values) || n > s->cap)
        return -1;
    const uint32_t P = partitions, m = mai_count, bits = npi_bits(P);
    uint32_t *hdr = blob;
    hdr[0] = NPI_MAGIC;
    hdr[1] = n;
    hdr[2] = P;
    hdr[3] = m;
    hdr[4] = bits;
    hdr[5] = 0;
    /* The blob is sections of 4-byte words, each u32 or IEEE float by the
     * layout of npi.h: the casts step between sections, they never
     * reinterpret a value. */
    // cppcheck-suppress invalidPointerCast
    float *lower = (float *)(hdr + HDR_WORDS), *upper = lower + P;
    // cppcheck-suppress invalidPointerCast
    uint32_t *mai_ids = (uint32_t *)(upper + P);
    // cppcheck-suppress invalidPointerCast
    float *mai_values = (float *)(mai_ids + m);
    uint8_t *pids = (uint8_t *)(mai_values + m);
    for (uint32_t p = 0; p < P; p++) {
        lower[p] = INFINITY;
        upper[p] = -INFINITY;
    }

    /* Partition 0 is ranks [0, m); the rest, larger partitions first. */
    uint32_t start[NPI_MAX_PARTITIONS + 1];
    {
        uint32_t rest = n - m, q = P - 1, base = rest / q, extra = rest % q;
        start[0] = 0;
        start[1] = m;
        for (uint32_t p = 1; p < P; p++)
            start[p + 1] = start[p] + base + (p <= extra ? 1 : 0);
    }
    build_ctx c = {s, values, start, P, s->pid, mai_ids, mai_values, lower, upper};

    if (n > 0) {
        top_map t;
        top_plan(s, values, n, &t);
        const uint32_t nb = t.nb, sp_eq = t.spike_base + 1;
        uint32_t *cnt = s->tcnt[0], *fill = s->tfill, *todo = s->todo;
        uint16_t *bp = s->tbp, *bk = s->bk;
        uint8_t *bp8 = s->tbp8, *pid = s->pid;
        top_buckets(values, n, s->cell, &t, bk);
        histogram(bk, n, s->tcnt[0], s->tcnt[1], nb);
        classify(&c, cnt, bp, fill, nb, 0);

        /* The repeated value's bucket, when it holds a cut: its inputs are
         * all equal, so their ranks are R0, R0+1, ... in id order. */
        uint32_t R0 = 0, sp_n = 0, spike_b = 0x10000u;
        if (t.spike_cell < CELLS && cnt[sp_eq] && bp[sp_eq] == SPLIT) {
            bp[sp_eq] = SPIKE;
            spike_b = sp_eq;
            for (uint32_t d = 0; d < sp_eq; d++)
                R0 += cnt[d];
        }
        for (uint32_t d = 0; d < nb; d++)
            bp8[d] = (uint8_t)(bp[d] < P ? bp[d] : bp[d] == SPIKE ? 0 : MAYBE);

        /* Inputs of resolved buckets get their partition; the others are
         * listed (in id order) to be ranked exactly, the repeated value's
         * apart (their pid is set below). */
        uint32_t *spike = s->spike;
        uint32_t n_todo = resolve_pass(bk, n, bp8, pid, todo, spike_b, spike, &sp_n);
        for (uint32_t j = 0, p = sp_n ? part_of(&c, R0) : 0; j < sp_n; p++) {
            /* ranks R0 + j .. of partition p, up to its end */
            uint32_t end = p + 1 < P && start[p + 1] - R0 < sp_n ? start[p + 1] - R0 : sp_n;
            for (; j < end; j++)
                pid[spike[j]] = (uint8_t)p;
        }
        uint64_t *x = s->x;
        for (uint32_t j = 0; j < n_todo; j++) {
            uint32_t i = todo[j], b = bk[i];
            if (bp[b] == SPLIT) /* else partition 255, resolved already */
                x[fill[b]++] = (uint64_t)desc_key(values[i]) << 32 | i;
        }
        for (uint32_t d = 0, r = 0; d < nb; d++) {
            uint32_t k = cnt[d];
            if (k && bp[d] == SPLIT) {
                uint32_t off = fill[d] - k;
                refine(&c, x + off, s->y + off, k, r, 1);
            }
            r += k;
        }
        if (sp_n) {
            /* its bounds and MAI entries */
            float bv = bound_value(t.spike_value);
            for (uint32_t p = 1; p < P; p++) {
                if (start[p] == start[p + 1])
                    continue;
                if (start[p] >= R0 && start[p] < R0 + sp_n)
                    upper[p] = bv;
                if (start[p + 1] - 1 >= R0 && start[p + 1] - 1 < R0 + sp_n)
                    lower[p] = bv;
            }
            for (uint32_t r = R0, end = m < R0 + sp_n ? m : R0 + sp_n; r < end; r++) {
                mai_ids[r] = spike[r - R0];
                mai_values[r] = values[spike[r - R0]];
            }
        }
    }
    if (m > 0) {
        upper[0] = bound_value(mai_values[0]);
        lower[0] = bound_value(mai_values[m - 1]);
    }
    pack_pids(s->pid, n, bits, pids);
    return 0;
}

/* ---- read ------------------------------------------------------------- */

int npi_decode(const void *blob, size_t len, npi_view *v)
{
    if (!blob || !v || ((uintptr_t)blob & 3u) || len < HDR_WORDS * 4)
        return -1;
    const uint32_t *hdr = blob;
    uint32_t n = hdr[1], P = hdr[2], m = hdr[3], bits = hdr[4];
    if (hdr[0] != NPI_MAGIC || P < 2 || P > NPI_MAX_PARTITIONS || bits != npi_bits(P) ||
        m > n || len != npi_blob_size(n, P, m))
        return -1;
    v->n = n;
    v->partitions = P;
    v->mai_count = m;
    v->bits = bits;
    /* section boundaries of the layout, as in npi_build */
    // cppcheck-suppress invalidPointerCast
    v->lower = (const float *)(hdr + HDR_WORDS);
    v->upper = v->lower + P;
    // cppcheck-suppress invalidPointerCast
    v->mai_ids = (const uint32_t *)(v->upper + P);
    // cppcheck-suppress invalidPointerCast
    v->mai_values = (const float *)(v->mai_ids + m);
    v->pids = (const uint8_t *)(v->mai_values + m);
    return 0;
}

/* Eight ids of B bits fill B whole bytes (little-endian, as npi_pid reads):
 * one 8-byte load (while 8 bytes remain: a B-byte copy would go through the
 * stack and stall on store forwarding), eight shifts. */
#define NPI_UNPACK_GROUPS(B)                                                           \
    for (; i + 8 <= n && (size_t)(i >> 3) * (B) + 8 <= nbytes; i += 8) {               \
        uint64_t w;                                                                    \
        memcpy(&w, in + (size_t)(i >> 3) * (B), 8);                                    \
        const uint64_t m = (1u << (B)) - 1u;                                           \
        uint8_t *o = out + i;                                                          \
        o[0] = (uint8_t)(w & m);                                                       \
        o[1] = (uint8_t)((w >> (B)) & m);                                              \
        o[2] = (uint8_t)((w >> 2 * (B)) & m);                                          \
        o[3] = (uint8_t)((w >> 3 * (B)) & m);                                          \
        o[4] = (uint8_t)((w >> 4 * (B)) & m);                                          \
        o[5] = (uint8_t)((w >> 5 * (B)) & m);                                          \
        o[6] = (uint8_t)((w >> 6 * (B)) & m);                                          \
        o[7] = (uint8_t)((w >> 7 * (B)) & m);                                          \
    }

void npi_unpack_range(const npi_view *v, uint32_t first, uint32_t n, uint8_t *out)
{
    /* first is a multiple of 8: its ids start on a byte */
    uint32_t bits = v->bits, i = 0;
    size_t skip = (size_t)(first >> 3) * bits;
    const uint8_t *in = v->pids + skip;
    size_t nbytes = ((size_t)v->n * bits + 7) / 8 - skip; /* bytes from in to the end */
    switch (bits) {
    case 8:
        memcpy(out, in, n);
        return;
    case 4:
        NPI_UNPACK_GROUPS(4);
        break;
    case 2:
        for (; i + 4 <= n; i += 4) {
            uint8_t b = in[i >> 2];
            out[i] = b & 3;
            out[i + 1] = (b >> 2) & 3;
            out[i + 2] = (b >> 4) & 3;
            out[i + 3] = b >> 6;
        }
        break;
    case 1:
        for (; i + 8 <= n; i += 8) {
            uint8_t b = in[i >> 3];
            for (uint32_t k = 0; k < 8; k++)
                out[i + k] = (b >> k) & 1;
        }
        break;
    case 3:
        NPI_UNPACK_GROUPS(3);
        break;
    case 5:
        NPI_UNPACK_GROUPS(5);
        break;
    case 6:
        NPI_UNPACK_GROUPS(6);
        break;
    case 7:
        NPI_UNPACK_GROUPS(7);
        break;
    default:
        break;
    }
    for (; i < n; i++)
        out[i] = (uint8_t)npi_pid(v, first + i);
}

void npi_unpack(const npi_view *v, uint8_t *out)
{
    npi_unpack_range(v, 0, v->n, out);
}
