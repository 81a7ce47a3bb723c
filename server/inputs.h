/* inputs.h -- a dataset's inputs as the model sees them.
 *
 * Inputs are stored raw (uint8 or float32); the model takes
 * x = (raw * scale - mean[c]) / std[c], channel c of a [C,H,W] input (one
 * mean/std broadcasts to every channel).
 */
#ifndef DE_INPUTS_H
#define DE_INPUTS_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* Elements of one input (product of its shape). */
size_t inputs_numel(const store_dataset *d);

/* Reads inputs ids[0..n) (local ids, 0..count-1) of d inside the read txn t
 * and writes them normalized, inputs_numel floats each, into out. */
int inputs_load(store_txn *t, const store_dataset *d, const uint32_t *ids, size_t n, float *out, char *err,
                size_t errlen);

#endif
