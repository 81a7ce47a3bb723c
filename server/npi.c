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
 * Speed: a full sort of N values per neuron is more than the index needs. One
 * histogram pass over the top digit of the key locates, for every rank the
 * index cares about (the MAI ranks, the first and last rank of every
 * partition), the bucket holding it; only those buckets are sorted exactly,
 * every other input gets its partition id straight from its bucket.
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

#define TOP_BITS 11u
#define TOP_BUCKETS (1u << TOP_BITS)
#define LOW_BITS (32u - TOP_BITS) /* 21: sorted in two passes of 11 and 10 */

struct npi_scratch {
    uint32_t cap;
    uint64_t *a, *b;          /* (key << 32 | id) elements, sort ping-pong */
    uint8_t *pid;             /* partition id per input, before packing */
    uint32_t top[TOP_BUCKETS];      /* histogram, then bucket start ranks */
    uint8_t bucket_pid[TOP_BUCKETS];/* partition of a whole bucket, or SPLIT */
    uint32_t fill[TOP_BUCKETS];     /* scatter cursors into the sort area */
    uint32_t h0[1u << 11], h1[1u << 10];
};

npi_scratch *npi_scratch_new(uint32_t n)
{
    npi_scratch *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    size_t cnt = n ? n : 1;
    s->cap = n;
    s->a = malloc(cnt * sizeof *s->a);
    s->b = malloc(cnt * sizeof *s->b);
    s->pid = malloc(cnt);
    if (!s->a || !s->b || !s->pid) {
        npi_scratch_free(s);
        return NULL;
    }
    return s;
}

void npi_scratch_free(npi_scratch *s)
{
    if (!s)
        return;
    free(s->a);
    free(s->b);
    free(s->pid);
    free(s);
}

/* ---- keys ------------------------------------------------------------- */

static inline uint32_t desc_key(float v)
{
    uint32_t b;
    memcpy(&b, &v, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u)
        return 0xffffffffu; /* NaN: below everything */
    if (b == 0x80000000u)
        b = 0; /* -0.0 ties with +0.0 */
    /* ascending key: positives get the sign bit set, negatives are inverted;
     * descending is its complement. */
    uint32_t neg = (uint32_t)((int32_t)b >> 31);
    return b ^ (0x7fffffffu & ~neg);
}

static inline float bound_value(float v)
{
    return isnan(v) ? -INFINITY : v;
}

/* Stable LSD sort of n elements on bits [lo, 32) of their key (the upper
 * 32 bits), in passes of 11 and 10 bits; passes whose digit is constant are
 * skipped. Returns the array holding the result (a or b). */
static uint64_t *sort_low(npi_scratch *s, uint64_t *a, uint64_t *b, uint32_t n)
{
    uint32_t *h0 = s->h0, *h1 = s->h1;
    memset(h0, 0, sizeof s->h0);
    memset(h1, 0, sizeof s->h1);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t k = (uint32_t)(a[i] >> 32);
        h0[k & 0x7ff]++;
        h1[(k >> 11) & 0x3ff]++;
    }
    struct { uint32_t *h, nb, shift, mask; } pass[2] = {
        {h0, 1u << 11, 32, 0x7ff}, {h1, 1u << 10, 43, 0x3ff}};
    for (int p = 0; p < 2; p++) {
        uint32_t *h = pass[p].h, sum = 0;
        int constant = 0;
        for (uint32_t d = 0; d < pass[p].nb; d++) {
            uint32_t c = h[d];
            if (c == n)
                constant = 1;
            h[d] = sum;
            sum += c;
        }
        if (constant)
            continue;
        uint32_t shift = pass[p].shift, mask = pass[p].mask;
        for (uint32_t i = 0; i < n; i++) {
            uint64_t e = a[i];
            b[h[(e >> shift) & mask]++] = e;
        }
        uint64_t *t = a;
        a = b;
        b = t;
    }
    return a;
}

/* Insertion sort for small buckets: cheaper than histograms. */
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

static void pack_pids(const uint8_t *pid, uint32_t n, uint32_t bits, uint8_t *out)
{
    size_t nbytes = pid_bytes(n, bits);
    if (bits == 8) {
        memcpy(out, pid, n);
    } else if (bits == 1 || bits == 2 || bits == 4) {
        uint32_t per = 8 / bits, i = 0;
        size_t o = 0;
        for (; i + per <= n; i += per) {
            uint32_t byte = 0;
            for (uint32_t k = 0; k < per; k++)
                byte |= (uint32_t)pid[i + k] << (k * bits);
            out[o++] = (uint8_t)byte;
        }
        if (i < n) {
            uint32_t byte = 0;
            for (uint32_t k = 0; i + k < n; k++)
                byte |= (uint32_t)pid[i + k] << (k * bits);
            out[o++] = (uint8_t)byte;
        }
    } else {
        uint64_t acc = 0;
        uint32_t have = 0;
        size_t o = 0;
        for (uint32_t i = 0; i < n; i++) {
            acc |= (uint64_t)pid[i] << have;
            have += bits;
            while (have >= 8) {
                out[o++] = (uint8_t)acc;
                acc >>= 8;
                have -= 8;
            }
        }
        if (have)
            out[o++] = (uint8_t)acc;
    }
    size_t used = (size_t)(((uint64_t)n * bits + 7) / 8);
    memset(out + used, 0, nbytes - used);
}

/* ---- build ------------------------------------------------------------ */

#define SPLIT 0xffu /* bucket_pid: bucket needs an exact sort */

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
    float *lower = (float *)(hdr + HDR_WORDS), *upper = lower + P;
    uint32_t *mai_ids = (uint32_t *)(upper + P);
    float *mai_values = (float *)(mai_ids + m);
    uint8_t *pids = (uint8_t *)(mai_values + m);

    /* Partition p in 1..P-1 covers ranks [start[p], start[p+1]); partition 0
     * is [0, m). Sizes differ by at most one, larger first. */
    uint32_t start[NPI_MAX_PARTITIONS + 1];
    {
        uint32_t rest = n - m, q = P - 1, base = rest / q, extra = rest % q;
        start[0] = 0;
        start[1] = m;
        for (uint32_t p = 1; p < P; p++)
            start[p + 1] = start[p] + base + (p <= extra ? 1 : 0);
    }

    /* Pass 1: keys and the top-digit histogram. */
    uint32_t *top = s->top;
    memset(top, 0, sizeof s->top);
    uint64_t *el = s->a;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t k = desc_key(values[i]);
        el[i] = (uint64_t)k << 32 | i;
        top[k >> LOW_BITS]++;
    }

    /* Bucket start ranks; a bucket whose rank range lies inside one
     * partition (and not in the MAI, whose order matters, and holds neither
     * end of it, whose values are the bounds) is resolved without sorting. */
    uint32_t sorted_n = 0, p = 0;
    for (uint32_t d = 0, r = 0; d < TOP_BUCKETS; d++) {
        uint32_t c = top[d];
        top[d] = r;
        if (c == 0) {
            s->bucket_pid[d] = 0;
            continue;
        }
        uint32_t lo = r, hi = r + c; /* ranks [lo, hi) */
        while (start[p + 1] <= lo)
            p++;
        /* whole bucket strictly inside partition p >= 1, not touching its
         * first or last rank */
        if (p >= 1 && lo > start[p] && hi < start[p + 1]) {
            s->bucket_pid[d] = (uint8_t)p;
        } else {
            s->bucket_pid[d] = SPLIT;
            s->fill[d] = sorted_n;
            sorted_n += c;
        }
        r = hi;
    }

    /* Pass 2: partition ids of resolved inputs; split buckets' elements are
     * gathered, grouped by bucket (ids ascending inside each). */
    uint64_t *sa = s->b;
    uint8_t *pid = s->pid;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t e = el[i];
        uint32_t d = (uint32_t)(e >> (32 + LOW_BITS));
        uint8_t bp = s->bucket_pid[d];
        pid[i] = bp;
        if (bp == SPLIT)
            sa[s->fill[d]++] = e;
    }

    /* Sort each split bucket exactly and assign its ranks. */
    for (uint32_t i = 0; i < P; i++) {
        lower[i] = INFINITY;
        upper[i] = -INFINITY;
    }
    uint32_t pos = 0;
    p = 0;
    while (pos < sorted_n) {
        uint32_t d = (uint32_t)(sa[pos] >> (32 + LOW_BITS));
        uint32_t c = s->fill[d] - pos; /* fill ended at the bucket's end */
        uint64_t *seg = sa + pos;
        if (c <= 32) {
            sort_small(seg, c);
        } else {
            uint64_t *res = sort_low(s, seg, el, c);
            if (res != seg)
                memcpy(seg, res, (size_t)c * sizeof *seg);
        }
        uint32_t r = top[d];
        for (uint32_t j = 0; j < c; j++, r++) {
            uint32_t id = (uint32_t)seg[j];
            while (start[p + 1] <= r)
                p++;
            pid[id] = (uint8_t)p;
            float v = values[id];
            if (p == 0) {
                mai_ids[r] = id;
                mai_values[r] = v;
            }
            if (r == start[p] && p > 0)
                upper[p] = bound_value(v);
            if (r + 1 == start[p + 1] && p > 0)
                lower[p] = bound_value(v);
        }
        pos += c;
    }
    if (m > 0) {
        upper[0] = bound_value(mai_values[0]);
        lower[0] = bound_value(mai_values[m - 1]);
    }
    pack_pids(pid, n, bits, pids);
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
    v->lower = (const float *)(hdr + HDR_WORDS);
    v->upper = v->lower + P;
    v->mai_ids = (const uint32_t *)(v->upper + P);
    v->mai_values = (const float *)(v->mai_ids + m);
    v->pids = (const uint8_t *)(v->mai_values + m);
    return 0;
}

void npi_unpack(const npi_view *v, uint8_t *out)
{
    const uint8_t *in = v->pids;
    uint32_t n = v->n, bits = v->bits, i = 0;
    switch (bits) {
    case 8:
        memcpy(out, in, n);
        return;
    case 4:
        for (; i + 2 <= n; i += 2) {
            uint8_t b = in[i >> 1];
            out[i] = b & 15;
            out[i + 1] = b >> 4;
        }
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
    default:
        break;
    }
    for (; i < n; i++)
        out[i] = (uint8_t)npi_pid(v, i);
}
