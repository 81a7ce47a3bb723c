/* infer.h -- batched inference whose every value is reproducible bit for bit.
 *
 * Exact bounds need an activation recomputed by a query to be the very bits
 * the index was built from. On CPU two measured effects stand in the way:
 * LibTorch computes an input differently in a batch of 1 or 2 than in a
 * larger batch (~1e-7), and a dense layer computes it differently by its
 * slot in the batch (~1e-6; on the project's machines its kernel treats
 * slots 0-5, 6-11 and 12-15 of every 16 with three accumulation orders). So:
 *   - every forward of a model runs at exactly its batch (free slots zeroed);
 *   - at load, infer_calibrate measures which slots compute alike (classes);
 *   - an input is only ever computed in a slot of the class of slot
 *     (id mod batch), id being its global dataset id.
 * Inputs whose ids run consecutively (builds, scans) sit in slot id mod
 * batch as they are; others are packed class by class.
 */
#ifndef DE_INFER_H
#define DE_INFER_H

#include <stddef.h>
#include <stdint.h>

#include "registry.h"

/* Measures m's slot classes at m->batch (two probe inputs in every slot).
 * Wide layers are compared on a sample of neurons (the accumulation order of
 * a slot shows in most of them). Then times one forward to each layer
 * (m->layer_ms): the cost of stopping there. m->numerics gets a fingerprint
 * (never 0) of the probes' outputs. */
int infer_calibrate(registry_model *m, char *err, size_t errlen);

/* Estimated bytes one input occupies during a forward of m: its input and
 * every layer's output, plus two of the largest for unnamed intermediates. */
size_t infer_input_bytes(const shim_model *m);

/* The model runs one forward at a time: a caller takes its turn (first come
 * first served) around infer_run and whatever must not interleave with
 * another caller's forwards (e.g. re-checking the cache). */
void infer_turn_begin(registry_model *m);
void infer_turn_end(registry_model *m);

/* One output of infer_run: rows of n inputs, (cols ? ncols : neurons) wide. */
typedef struct infer_out {
    int layer;
    const uint32_t *cols;        /* NULL = the whole layer */
    size_t ncols;
    float *dst;
} infer_out;

/* Runs n normalized inputs (ids[i]: the global dataset id of input i; ids
 * NULL for tensors from a request, which may take any slot) at the outputs
 * asked for, in forwards of m->batch. The caller holds m's turn. Counts
 * forwards and inputs in a's metrics, and adds the forwards to *forwards
 * (when not NULL). */
int infer_run(app *a, registry_model *m, const uint32_t *ids, const float *in, size_t n, const infer_out *outs,
              int nouts, size_t *forwards, char *err, size_t errlen);


#endif
