/* npi.h -- one neuron's entry of the partition index (server/engine/README.md):
 * its Maximum Activation Index and its Neural Partition Index, as one blob.
 *
 * Ordering: inputs are ranked by value descending, ties by smaller input id
 * first. The first m = ceil(mai_ratio * N) ranks are the MAI (partition 0,
 * exact values kept). The remaining N - m ranks are cut into P - 1
 * equi-depth partitions 1..P-1 (partition 1 holds the highest values); their
 * sizes differ by at most one, the larger ones first. Partition p's bounds
 * [lower[p], upper[p]] are the min and max value of its members (an empty
 * partition has lower = +inf, upper = -inf). Every input has its partition id
 * in `bits` = ceil(log2 P) bits (at least 1). That is what npi_build makes.
 *
 * What a reader may rely on is less, and the pass-time builder
 * (server/builder/builder_stream.h) makes only that: the header's
 * mai_count (<= m) first ranks are the MAI in rank order with exact values;
 * every other input has a partition >= 1 whose bounds enclose its value;
 * partitions are ordered (every value of p is >= every value of p + 1) but
 * of about equal size; empty partitions have lower = +inf, upper = -inf;
 * bounds count a NaN member as -inf (so a partition holding a NaN has
 * lower = -inf, and one whose bounds are equal and not -inf holds only that
 * value: the engine scores its members without a forward).
 * Readers count members from the ids, never from the sizes above.
 *
 * Blob layout (little-endian, every section 4-byte aligned):
 *   u32 magic 'NPI1', u32 n, u32 partitions, u32 mai_count, u32 bits, u32 pad
 *   f32 lower[P], f32 upper[P]
 *   u32 mai_ids[m], f32 mai_values[m]        (rank order)
 *   u8  pids[(n*bits + 7)/8 + 3]              (bit i*bits.. of input i, LSB first;
 *                                              3 pad bytes for 32-bit reads)
 *
 * Lifetimes: an npi_view points into the blob it was decoded from and is
 * valid as long as that blob is.
 */
#ifndef DE_NPI_H
#define DE_NPI_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define NPI_MAGIC 0x3149504eu /* "NPI1" */
#define NPI_MAX_PARTITIONS 256

typedef struct npi_view {
    uint32_t n;
    uint32_t partitions;
    uint32_t mai_count;
    uint32_t bits;
    const float *lower, *upper;        /* [partitions] */
    const uint32_t *mai_ids;           /* [mai_count] */
    const float *mai_values;           /* [mai_count] */
    const uint8_t *pids;
} npi_view;

/* Bits per partition id for P partitions. */
uint32_t npi_bits(uint32_t partitions);
/* MAI size for N inputs at ratio r: ceil(r*N), at most N. */
uint32_t npi_mai_count(uint32_t n, double mai_ratio);
/* Exact blob size in bytes. */
size_t npi_blob_size(uint32_t n, uint32_t partitions, uint32_t mai_count);

/* Scratch for npi_build, reusable across neurons of the same N. */
typedef struct npi_scratch npi_scratch;
npi_scratch *npi_scratch_new(uint32_t n);
void npi_scratch_free(npi_scratch *s);

/* Builds the blob of one neuron from its N values (values[i] = activation of
 * input i) into blob (npi_blob_size bytes, 4-byte aligned). NaN values rank
 * lowest. Returns 0, or -1 on bad arguments (partitions outside 2..256,
 * mai_count > n). */
int npi_build(const float *values, uint32_t n, uint32_t partitions, uint32_t mai_count,
              npi_scratch *s, void *blob);

/* Checks the header and sizes of a blob (a corrupt or truncated one is -1)
 * and points v into it. blob must be 4-byte aligned. */
int npi_decode(const void *blob, size_t len, npi_view *v);

/* Partition id of input i. */
static inline uint32_t npi_pid(const npi_view *v, uint32_t i)
{
    uint64_t bit = (uint64_t)i * v->bits;
    uint32_t w;
    memcpy(&w, v->pids + (bit >> 3), 4);
    return (w >> (bit & 7)) & ((1u << v->bits) - 1u);
}

/* Unpacks partition ids of inputs [0, n) into out[n] (fast paths for every
 * width of 1 to 8 bits). */
void npi_unpack(const npi_view *v, uint8_t *out);
/* The same for inputs [first, first + n) into out[n]; first must be a
 * multiple of 8 and first + n <= v->n. */
void npi_unpack_range(const npi_view *v, uint32_t first, uint32_t n, uint8_t *out);

#endif
