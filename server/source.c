/* source.c -- see source.h. */
#include "source.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "infer.h"
#include "inputs.h"

void source_init(source_ctx *s, app *a, registry_model *m, const store_dataset *d, int layer)
{
    memset(s, 0, sizeof *s);
    s->a = a;
    s->m = m;
    s->d = d;
    s->layer = layer;
    s->neurons = (size_t)shim_layer_at(m->shim, layer)->neurons;
}

eng_source source_engine(source_ctx *s)
{
    /* the model's forwards (infer.h), so that the engine fills them */
    eng_source e = {.ctx = s,
                    .fetch = source_fetch,
                    .geo = {.slots = s->m->batch,
                            .nclass = (uint32_t)s->m->nclass,
                            .class_of = s->m->slot_class,
                            .class_slots = s->m->class_slots,
                            .id_offset = s->d->first}};
    return e;
}

/* The blocks a request touches, and where each asked neuron sits in them. */
typedef struct block_plan {
    size_t nb;                   /* blocks touched */
    uint32_t *block;             /* [nb] block numbers, ascending */
    size_t *start;               /* [nb] offset of each block in a row of `width` */
    size_t width;                /* floats of one input's touched blocks */
    size_t *at;                  /* [m] position of asked neuron j in that row */
    uint32_t *cols;              /* [width] neurons to extract, NULL = the whole layer */
} block_plan;

static size_t block_len(size_t D, uint32_t b)
{
    size_t lo = (size_t)b * SOURCE_BLOCK;
    return D - lo < SOURCE_BLOCK ? D - lo : SOURCE_BLOCK;
}

static void plan_free(block_plan *p)
{
    free(p->block);
    free(p->start);
    free(p->at);
    free(p->cols);
    memset(p, 0, sizeof *p);
}

static int plan_blocks(size_t D, const uint32_t *neurons, size_t m, block_plan *p)
{
    memset(p, 0, sizeof *p);
    size_t nblocks = (D + SOURCE_BLOCK - 1) / SOURCE_BLOCK;
    uint8_t *touched = calloc(nblocks, 1);
    size_t *slot = malloc(nblocks * sizeof *slot);
    if (!touched || !slot) goto oom;
    for (size_t j = 0; j < m; j++) touched[(neurons ? neurons[j] : j) / SOURCE_BLOCK] = 1;
    for (size_t b = 0; b < nblocks; b++) p->nb += touched[b];
    p->block = malloc(p->nb * sizeof *p->block);
    p->start = malloc(p->nb * sizeof *p->start);
    p->at = malloc((m ? m : 1) * sizeof *p->at);
    if (!p->block || !p->start || !p->at) goto oom;
    size_t k = 0;
    for (size_t b = 0; b < nblocks; b++) {
        if (!touched[b]) continue;
        p->block[k] = (uint32_t)b;
        p->start[k] = p->width;
        slot[b] = k++;
        p->width += block_len(D, (uint32_t)b);
    }
    for (size_t j = 0; j < m; j++) {
        size_t nj = neurons ? neurons[j] : j;
        p->at[j] = p->start[slot[nj / SOURCE_BLOCK]] + nj % SOURCE_BLOCK;
    }
    if (p->width < D) { /* extract only the touched blocks */
        if (!(p->cols = malloc(p->width * sizeof *p->cols))) goto oom;
        for (size_t i = 0, c = 0; i < p->nb; i++)
            for (size_t o = 0; o < block_len(D, p->block[i]); o++)
                p->cols[c++] = (uint32_t)((size_t)p->block[i] * SOURCE_BLOCK + o);
    }
    free(touched);
    free(slot);
    return 0;
oom:
    free(touched);
    free(slot);
    plan_free(p);
    return -1;
}

/* Fills row[width] with input `input`'s touched blocks from the cache: 1 when
 * all of them were there. */
static int cache_row(source_ctx *s, const block_plan *p, uint32_t input, float *row)
{
    cache_key k = {.model = s->m->gen, .dataset = s->d->id, .layer = (uint32_t)s->layer, .input = input};
    for (size_t i = 0; i < p->nb; i++) {
        k.block = p->block[i];
        if (!cache_get(s->a->cache, &k, NULL, block_len(s->neurons, p->block[i]), row + p->start[i])) return 0;
    }
    return 1;
}

static void gather(const block_plan *p, size_t m, const float *row, float *out)
{
    for (size_t j = 0; j < m; j++) out[j] = row[p->at[j]];
}

int source_fetch(void *ctx, const uint32_t *ids, size_t n, const uint32_t *neurons, size_t m, float *out,
                 eng_fetch_stats *st, char *err, size_t errlen)
{
    source_ctx *s = ctx;
    size_t D = s->neurons;
    size_t numel = (size_t)shim_input_numel(s->m->shim);
    uint32_t *miss = NULL, *gids = NULL;
    size_t *slot = NULL, nmiss = 0;
    float *in = NULL, *rows = NULL, *row = NULL;
    store_txn *t = NULL;
    block_plan p = {0};
    int rc = -1;
    if (s->deadline_ms > 0 && clock_ms() > s->deadline_ms) {
        s->cancel = 1;
        snprintf(err, errlen, "time limit reached");
        return -1;
    }
    if (!neurons) m = D;
    if (plan_blocks(D, neurons, m, &p) != 0) goto oom;
    miss = malloc((n ? n : 1) * sizeof *miss);
    slot = malloc((n ? n : 1) * sizeof *slot);
    row = malloc(p.width * sizeof *row);
    if (!miss || !slot || !row) goto oom;
    for (size_t i = 0; i < n; i++) {
        if (cache_row(s, &p, ids[i], row)) {
            gather(&p, m, row, out + i * m);
            if (st) st->cache_hits++;
        } else {
            miss[nmiss] = ids[i];
            slot[nmiss++] = i;
        }
    }
    if (nmiss) {
        size_t chunk = (size_t)s->m->batch * 4;
        if (chunk > nmiss) chunk = nmiss;
        in = malloc(chunk * numel * sizeof *in);
        rows = malloc(chunk * p.width * sizeof *rows);
        gids = malloc(chunk * sizeof *gids);
        if (!in || !rows || !gids) goto oom;
        cache_key k = {.model = s->m->gen, .dataset = s->d->id, .layer = (uint32_t)s->layer};
        infer_out io = {.layer = s->layer, .cols = p.cols, .ncols = p.cols ? p.width : 0, .dst = rows};
        for (size_t off = 0; off < nmiss; off += chunk) {
            size_t cnt = nmiss - off < chunk ? nmiss - off : chunk;
            /* Our turn at the model; queries that waited in the queue for the
             * same inputs find them cached instead of computing them again
             * (measured: 64 clients computed each input ~5 times without). */
            infer_turn_begin(s->m);
            size_t keep = 0;
            for (size_t i = 0; i < cnt; i++) {
                if (cache_row(s, &p, miss[off + i], row)) {
                    gather(&p, m, row, out + slot[off + i] * m);
                    if (st) st->cache_hits++;
                } else {
                    miss[off + keep] = miss[off + i];
                    slot[off + keep++] = slot[off + i];
                }
            }
            cnt = keep;
            if (cnt == 0) {
                infer_turn_end(s->m);
                continue;
            }
            int lr = store_txn_begin(s->a->st, 1, &t) == STORE_OK ? 0 : -1;
            if (lr != 0)
                snprintf(err, errlen, "store: %s", store_errmsg());
            else
                lr = inputs_load(t, s->d, miss + off, cnt, in, err, errlen);
            store_txn_abort(t);
            t = NULL;
            for (size_t i = 0; i < cnt; i++) gids[i] = (uint32_t)(s->d->first + miss[off + i]);
            double t0 = clock_ms();
            size_t fw = 0;
            int ir = lr != 0 ? -1 : infer_run(s->a, s->m, gids, in, cnt, &io, 1, &fw, err, errlen);
            if (st) st->forwards += fw;
            if (ir == 0)
                for (size_t i = 0; i < cnt; i++) {
                    k.input = miss[off + i];
                    for (size_t b = 0; b < p.nb; b++) {
                        k.block = p.block[b];
                        cache_put(s->a->cache, &k, rows + i * p.width + p.start[b], block_len(D, p.block[b]));
                    }
                }
            infer_turn_end(s->m);
            if (ir != 0) goto fail;
            if (st) {
                st->inference_ms += clock_ms() - t0;
                st->computed += cnt;
            }
            for (size_t i = 0; i < cnt; i++) gather(&p, m, rows + i * p.width, out + slot[off + i] * m);
        }
    }
    rc = 0;
    goto fail;
oom:
    snprintf(err, errlen, "out of memory for %zu inputs of %zu activations", n, D);
fail:
    store_txn_abort(t);
    plan_free(&p);
    free(miss);
    free(slot);
    free(gids);
    free(in);
    free(rows);
    free(row);
    return rc;
}

int source_run_tensors(source_ctx *s, const float *in, size_t n, const uint32_t *neurons, size_t m, float *out,
                       char *err, size_t errlen)
{
    infer_out io = {.layer = s->layer, .cols = neurons, .ncols = neurons ? m : 0, .dst = out};
    infer_turn_begin(s->m);
    int rc = infer_run(s->a, s->m, NULL, in, n, &io, 1, NULL, err, errlen);
    infer_turn_end(s->m);
    return rc;
}
