/* source.h -- the activation source the engine queries: the model, behind
 * the shared activation cache.
 *
 * fetch() serves each input from the cache when it can, and runs the misses
 * through the model in forwards of its fixed batch (infer.h: a value never
 * depends on which query computed it). Wide layers are cached in blocks of
 * SOURCE_BLOCK neurons: a query extracts from the model, and caches, only
 * the blocks its group touches, so its cost and memory do not grow with the
 * width of the layer (an 800k-neuron layer is 3 MiB per input).
 *
 * Lifetimes: a source_ctx borrows its model and dataset record; both must
 * outlive it.
 */
#ifndef DE_SOURCE_H
#define DE_SOURCE_H

#include "app.h"
#include "engine.h"
#include "registry.h"

#define SOURCE_BLOCK 1024u

typedef struct source_ctx {
    app *a;
    registry_model *m;
    const store_dataset *d;
    int layer;                   /* shim layer index */
    size_t neurons;              /* layer size */
    double deadline_ms;          /* clock_ms() past which fetches fail (query_timeout); 0 = none */
    volatile int cancel;         /* set when the deadline passed: the engine stops */
} source_ctx;

void source_init(source_ctx *s, app *a, registry_model *m, const store_dataset *d, int layer);
eng_source source_engine(source_ctx *s);

/* The engine's fetch (ids: local ids of s->d); neurons NULL = the whole
 * layer (m = its size). */
int source_fetch(void *ctx, const uint32_t *ids, size_t n, const uint32_t *neurons, size_t m, float *out,
                 eng_fetch_stats *st, char *err, size_t errlen);

/* Runs raw normalized input tensors (not cached: they are not dataset
 * inputs) and writes the activations of neurons[0..m) (NULL = the whole
 * layer) of each. */
int source_run_tensors(source_ctx *s, const float *in, size_t n, const uint32_t *neurons, size_t m, float *out,
                       char *err, size_t errlen);

#endif
