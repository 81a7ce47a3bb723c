/* shape.h -- the shape of a partition index (partitions, MAI ratio) picked
 * from a storage budget.
 *
 * One neuron's entry costs npi_blob_size(n, partitions, mai_count) bytes
 * against the n floats of full materialization; its fixed costs (header,
 * partition bounds, MAI rounding) weigh more the smaller n is. The shape
 * keeps the entry within `budget` of the 4n bytes, less 2% for LMDB's keys,
 * wherever that is possible at all (n >= ~60 at 0.2).
 *
 * Picked, unless given: partitions -- the most (a power of two, at most 256)
 * that leave the MAI at least SHAPE_MAI_FLOOR of the inputs; then the MAI
 * takes what is left, in whole percent (tenths below 1%), at most 0.5.
 * Why more partitions, not the paper's 16 and 3%: finer partitions tighten
 * every cell bound a query ranks by, and an MAI beyond a top-k's k buys
 * little once the top partition is narrow (measured in the README, "Index
 * shape"). At 0.2: 32 partitions and 1% at 10,000 inputs, 64 and 0.3% at
 * 70,000, 64 and 0.4% at 1,000,000.
 */
#ifndef DE_SHAPE_H
#define DE_SHAPE_H

#include <stdint.h>

/* The least MAI the picked partition count leaves room for. */
#define SHAPE_MAI_FLOOR 0.003

/* The room one neuron's entry may take over n inputs at budget (bytes). */
double shape_room(uint64_t n, double budget);

/* Fills in the shape of an index over n inputs at budget (0..1]:
 * *partitions 0 and *mai_ratio < 0 are picked, other values kept. Given
 * values are not checked here (the request parser bounds them). */
void shape_pick(uint64_t n, double budget, uint32_t *partitions, double *mai_ratio);

#endif
