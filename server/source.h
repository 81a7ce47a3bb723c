/* source.h -- the activation source the engine queries: the model, behind
 * the shared activation cache.
 *
 * fetch() serves each input from the cache when it can, and runs the misses
 * through the model in batches (app_infer pads them to the fixed inference
 * batch, so a value never depends on which query computed it), caching each
 * input's whole layer vector.
 *
 * Lifetimes: a source_ctx borrows its model and dataset record; both must
 * outlive it.
 */
#ifndef DE_SOURCE_H
#define DE_SOURCE_H

#include "app.h"
#include "engine.h"

typedef struct source_ctx {
    app *a;
    app_model *m;
    const store_dataset *d;
    int layer;                 /* shim layer index */
    size_t neurons;            /* layer size */
} source_ctx;

void source_init(source_ctx *s, app *a, app_model *m, const store_dataset *d, int layer);
eng_source source_engine(source_ctx *s);

/* The engine's fetch; neurons NULL = the whole layer (m = its size). */
int source_fetch(void *ctx, const uint32_t *ids, size_t n, const uint32_t *neurons, size_t m, float *out,
                 eng_fetch_stats *st, char *err, size_t errlen);

/* Runs raw normalized input tensors (not cached: they are not dataset
 * inputs) and writes the whole layer vectors. */
int source_run_tensors(source_ctx *s, const float *in, size_t n, float *out, char *err, size_t errlen);

#endif
