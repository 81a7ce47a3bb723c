/* source.c -- see source.h. */
#include "source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void source_init(source_ctx *s, app *a, app_model *m, const store_dataset *d, int layer)
{
    s->a = a;
    s->m = m;
    s->d = d;
    s->layer = layer;
    s->neurons = (size_t)shim_layer_at(m->shim, layer)->neurons;
}

eng_source source_engine(source_ctx *s)
{
    eng_source e = {.ctx = s, .fetch = source_fetch};
    return e;
}

int source_fetch(void *ctx, const uint32_t *ids, size_t n, const uint32_t *neurons, size_t m, float *out,
                 eng_fetch_stats *st, char *err, size_t errlen)
{
    source_ctx *s = ctx;
    size_t D = s->neurons;
    size_t numel = app_dataset_numel(s->d);
    uint32_t *miss = NULL;
    size_t *slot = NULL, nmiss = 0;
    float *in = NULL, *rows = NULL;
    store_txn *t = NULL;
    int rc = -1;
    if (!neurons) m = D;
    cache_key k = {.model = s->m->gen, .dataset = s->d->id, .layer = (uint32_t)s->layer};
    miss = malloc(n * sizeof *miss);
    slot = malloc(n * sizeof *slot);
    if (!miss || !slot) goto oom;
    for (size_t i = 0; i < n; i++) {
        k.input = ids[i];
        if (cache_get(s->a->cache, &k, neurons, m, out + i * m)) {
            if (st) st->cache_hits++;
        } else {
            miss[nmiss] = ids[i];
            slot[nmiss++] = i;
        }
    }
    if (nmiss) {
        size_t chunk = (size_t)(s->a->cfg.batch ? s->a->cfg.batch : 64) * 4;
        if (chunk > nmiss) chunk = nmiss;
        in = malloc(chunk * numel * sizeof *in);
        rows = malloc(chunk * D * sizeof *rows);
        if (!in || !rows) goto oom;
        for (size_t off = 0; off < nmiss; off += chunk) {
            size_t cnt = nmiss - off < chunk ? nmiss - off : chunk;
            /* Our turn at the model; queries that waited in the queue for the
             * same inputs find them cached instead of computing them again
             * (measured: 64 clients computed each input ~5 times without). */
            app_model_run_begin(s->m);
            size_t keep = 0;
            for (size_t i = 0; i < cnt; i++) {
                k.input = miss[off + i];
                if (cache_get(s->a->cache, &k, neurons, m, out + slot[off + i] * m)) {
                    if (st) st->cache_hits++;
                } else {
                    miss[off + keep] = miss[off + i];
                    slot[off + keep++] = slot[off + i];
                }
            }
            cnt = keep;
            if (cnt == 0) {
                app_model_run_end(s->m);
                continue;
            }
            if (store_txn_begin(s->a->st, 1, &t) != STORE_OK) {
                snprintf(err, errlen, "store: %s", store_errmsg());
                app_model_run_end(s->m);
                goto fail;
            }
            int lr = app_inputs_load(t, s->d, miss + off, cnt, in, err, errlen);
            store_txn_abort(t);
            t = NULL;
            double t0 = app_now_ms();
            float *outs[1] = {rows};
            int ir = lr != 0 ? -1 : app_infer(s->a, s->m, miss + off, in, cnt, &s->layer, 1, outs, err, errlen);
            if (ir == 0)
                for (size_t i = 0; i < cnt; i++) {
                    k.input = miss[off + i];
                    cache_put(s->a->cache, &k, rows + i * D, D);
                }
            app_model_run_end(s->m);
            if (ir != 0) goto fail;
            if (st) {
                st->inference_ms += app_now_ms() - t0;
                st->computed += cnt;
            }
            for (size_t i = 0; i < cnt; i++) {
                const float *row = rows + i * D;
                float *o = out + slot[off + i] * m;
                if (neurons)
                    for (size_t j = 0; j < m; j++) o[j] = row[neurons[j]];
                else
                    memcpy(o, row, D * sizeof *o);
            }
        }
    }
    rc = 0;
    goto fail;
oom:
    snprintf(err, errlen, "out of memory for %zu inputs of %zu activations", n, D);
fail:
    store_txn_abort(t);
    free(miss);
    free(slot);
    free(in);
    free(rows);
    return rc;
}

int source_run_tensors(source_ctx *s, const float *in, size_t n, float *out, char *err, size_t errlen)
{
    float *outs[1] = {out};
    app_model_run_begin(s->m);
    int rc = app_infer(s->a, s->m, NULL, in, n, &s->layer, 1, outs, err, errlen);
    app_model_run_end(s->m);
    return rc;
}
