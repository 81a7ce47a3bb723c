/* builder_core.h -- turns one inference pass into per-neuron index blobs,
 * within a memory budget.
 *
 * Activations arrive input-major (a batch of rows, one row of `neurons`
 * floats per input, inputs in order 0..N-1); the index needs them
 * neuron-major (all N values of one neuron). The core keeps neuron-range
 * chunks of the N x neurons matrix: when the whole layer fits in the budget
 * they live in memory, otherwise each batch's slice of each chunk is appended
 * to a temporary file (unlinked at once, so a crash leaves nothing) and
 * bcore_finish reads one chunk at a time back, never holding more than the
 * budget of activations. Pure C, no torch, no LMDB.
 *
 * Lifetimes: the blob passed to emit() is valid during the call only.
 */
#ifndef DE_BUILDER_CORE_H
#define DE_BUILDER_CORE_H

#include <stddef.h>
#include <stdint.h>

typedef struct bcore bcore;

/* mem_budget: bytes of activations held at once (chunk buffers), >= 1 MiB.
 * tmpdir: where a spill file goes when the layer does not fit. */
int bcore_new(uint32_t n_inputs, uint64_t neurons, uint32_t partitions, uint32_t mai_count,
              size_t mem_budget, const char *tmpdir, bcore **out, char *err, size_t errlen);

/* Adds `count` consecutive inputs starting at `first` (which must equal the
 * number added so far): rows[i*neurons + j] = activation of neuron j. */
int bcore_add(bcore *b, const float *rows, uint32_t first, uint32_t count,
              char *err, size_t errlen);

/* Lets the core transpose on `threads` (1 or 2) threads: bcore_add into an
 * in-memory layer, and bcore_finish reading a spilled layer back. It starts
 * one helper thread on first use, stopped by bcore_free. Call it before the
 * first bcore_add; the default is 1. */
void bcore_set_transpose_threads(bcore *b, int threads);

/* After all N inputs: builds every neuron's blob (server/npi.h) using up to
 * `threads` threads and calls emit(neuron, blob, len, arg) in ascending
 * neuron order from the calling thread. emit returning nonzero stops it;
 * bcore_finish then returns -1 with "stopped". */
int bcore_finish(bcore *b, int threads,
                 int (*emit)(uint64_t neuron, const void *blob, size_t len, void *arg),
                 void *arg, char *err, size_t errlen);

/* Full materialization (the PreprocessAll baseline): bcore_finish emits each
 * neuron's raw column, float32[N] in input order, instead of an index blob. */
void bcore_set_raw(bcore *b, int raw);

/* Whether the layer spilled to disk, and the most activation bytes held. */
int bcore_spilled(const bcore *b);
/* Whether the spill file still bypasses the page cache for its whole 4 KiB
 * blocks (O_DIRECT; 0 where the filesystem refused it or nothing spilled). */
int bcore_spill_direct(const bcore *b);
size_t bcore_peak_bytes(const bcore *b);

void bcore_free(bcore *b);

/* Splits one pass's activation budget among its layers (layer_bytes[l]:
 * N x neurons x 4). Layers that fit whole are kept in memory, largest first,
 * each leaving 16 MiB for every layer after it; the others (which spill)
 * share what is left in proportion to size. Every budget is at least the
 * 1 MiB bcore_new needs, so the sum exceeds `total` only when `total` is
 * under 1 MiB per layer. At most 64 layers (a pass has BUILD_MAX_LAYERS). */
void bcore_plan_budgets(size_t total, int nlayers, const uint64_t *layer_bytes, size_t *budgets);

#endif
