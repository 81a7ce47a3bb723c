/* infer.c -- see infer.h. */
#include "infer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Calibration compares at most this many neurons of a layer per slot. */
#define CALIBRATE_COLS 16384

size_t infer_input_bytes(const shim_model *m)
{
    size_t sum = (size_t)shim_input_numel(m), big = 0;
    for (int l = 0; l < shim_layer_count(m); l++) {
        size_t n = (size_t)shim_layer_at(m, l)->neurons;
        sum += n;
        if (n > big) big = n;
    }
    return 4 * (sum + 2 * big);
}

/* Two probe inputs, each in every slot of one forward; slots whose outputs
 * agree bit for bit at every layer (on both probes) share a class. */
int infer_calibrate(registry_model *m, char *err, size_t errlen)
{
    size_t B = m->batch;
    size_t numel = (size_t)shim_input_numel(m->shim);
    int L = shim_layer_count(m->shim);
    size_t W = 0; /* floats compared per slot */
    shim_out *outs = calloc((size_t)L, sizeof *outs);
    uint32_t **cols = calloc((size_t)L, sizeof *cols);
    size_t *width = calloc((size_t)L, sizeof *width);
    float *in = malloc(B * numel * sizeof *in);
    float *o[2] = {NULL, NULL};
    int rc = -1;
    free(m->slot_class);
    m->slot_class = calloc(B, sizeof *m->slot_class);
    if (!outs || !cols || !width || !in || !m->slot_class) goto oom;
    for (int l = 0; l < L; l++) {
        size_t n = (size_t)shim_layer_at(m->shim, l)->neurons;
        width[l] = n;
        if (n > CALIBRATE_COLS) { /* evenly spread, first and last included */
            width[l] = CALIBRATE_COLS;
            if (!(cols[l] = malloc(CALIBRATE_COLS * sizeof **cols))) goto oom;
            for (size_t j = 0; j < CALIBRATE_COLS; j++)
                cols[l][j] = (uint32_t)(j * (n - 1) / (CALIBRATE_COLS - 1));
        }
        W += width[l];
    }
    if (!(o[0] = malloc(B * W * sizeof(float))) || !(o[1] = malloc(B * W * sizeof(float)))) goto oom;
    for (int pr = 0; pr < 2; pr++) {
        uint64_t x = 0x9e3779b97f4a7c15ull * (uint64_t)(pr + 1);
        for (size_t e = 0; e < numel; e++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            in[e] = (float)((double)(x >> 11) / 9007199254740992.0 * 4.0 - 2.0);
        }
        for (size_t p = 1; p < B; p++) memcpy(in + p * numel, in, numel * sizeof *in);
        size_t off = 0;
        for (int l = 0; l < L; l++) {
            outs[l] = (shim_out){.layer = l, .cols = cols[l], .ncols = cols[l] ? width[l] : 0, .dst = o[pr] + off * B};
            off += width[l];
        }
        if (shim_run(m->shim, in, (int64_t)B, outs, L, err, errlen) != 0) goto done;
    }
    m->nclass = 0;
    memset(m->class_slots, 0, sizeof m->class_slots);
    for (size_t p = 0; p < B; p++) {
        size_t q = 0;
        for (; q < p; q++) {
            int eq = 1;
            size_t off = 0;
            for (int l = 0; l < L && eq; l++) {
                size_t n = width[l];
                for (int pr = 0; pr < 2 && eq; pr++)
                    eq = memcmp(o[pr] + off * B + p * n, o[pr] + off * B + q * n, n * sizeof(float)) == 0;
                off += n;
            }
            if (eq) break;
        }
        if (q == p && m->nclass == REGISTRY_MAX_CLASSES) {
            snprintf(err, errlen, "the model computes a batch slot in more than %d ways", REGISTRY_MAX_CLASSES);
            goto done;
        }
        m->slot_class[p] = q < p ? m->slot_class[q] : (uint16_t)m->nclass++;
        m->class_slots[m->slot_class[p]]++;
    }
    /* The probes' bits, every slot and layer: what a model registered on
     * another CPU, LibTorch or thread count would compute differently. */
    uint64_t h = 0xcbf29ce484222325ull;
    for (int pr = 0; pr < 2; pr++) {
        const unsigned char *b = (const unsigned char *)o[pr];
        for (size_t i = 0; i < B * W * sizeof(float); i++) h = (h ^ b[i]) * 0x100000001b3ull;
    }
    m->numerics = h ? h : 1;
    /* one forward to each layer, the fastest of three (the first may pay
     * for allocations; eager layers are picked by these times, so one
     * slowed by another process must not count), extracting a single neuron */
    free(m->layer_ms);
    if (!(m->layer_ms = calloc((size_t)L, sizeof *m->layer_ms))) goto oom;
    for (int l = 0; l < L; l++) {
        uint32_t col = 0;
        shim_out one = {.layer = l, .cols = &col, .ncols = 1, .dst = o[0]};
        for (int rep = 0; rep < 3; rep++) {
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            if (shim_run(m->shim, in, (int64_t)B, &one, 1, err, errlen) != 0) goto done;
            clock_gettime(CLOCK_MONOTONIC, &t1);
            double ms = (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6;
            if (rep == 0 || ms < m->layer_ms[l]) m->layer_ms[l] = ms;
        }
    }
    rc = 0;
    goto done;
oom:
    snprintf(err, errlen, "out of memory calibrating batch slots");
done:
    for (int l = 0; cols && l < L; l++) free(cols[l]);
    free(cols);
    free(outs);
    free(width);
    free(in);
    free(o[0]);
    free(o[1]);
    return rc;
}

/* A plain mutex lets the thread that just ran barge ahead again (measured
 * under 64 connections: p99 of 22 s): turns go in ticket order. */
void infer_turn_begin(registry_model *m)
{
    pthread_mutex_lock(&m->turn_lock);
    unsigned long ticket = m->turn_next++;
    while (ticket != m->turn_serving) pthread_cond_wait(&m->turn_cv, &m->turn_lock);
    pthread_mutex_unlock(&m->turn_lock);
}

void infer_turn_end(registry_model *m)
{
    pthread_mutex_lock(&m->turn_lock);
    m->turn_serving++;
    pthread_cond_broadcast(&m->turn_cv);
    pthread_mutex_unlock(&m->turn_lock);
}

static int consecutive(const uint32_t *ids, size_t n)
{
    for (size_t i = 1; i < n; i++)
        if (ids[i] != ids[0] + i) return 0;
    return 1;
}

int infer_run(app *a, registry_model *m, const uint32_t *ids, const float *in, size_t n, const infer_out *outs,
              int nouts, size_t *forwards, char *err, size_t errlen)
{
    size_t B = m->batch;
    size_t numel = (size_t)shim_input_numel(m->shim);
    size_t width[16];
    shim_out so[16];
    float *bin = NULL, *bout[16] = {0};
    size_t *slot_of = NULL, *queue = NULL, *head = NULL, *qlen = NULL;
    int rc = -1;
    if (nouts < 1 || nouts > 16) {
        snprintf(err, errlen, "between 1 and 16 outputs per forward");
        return -1;
    }
    for (int l = 0; l < nouts; l++) {
        const shim_layer *ly = shim_layer_at(m->shim, outs[l].layer);
        if (!ly) {
            snprintf(err, errlen, "layer index %d out of range", outs[l].layer);
            return -1;
        }
        width[l] = outs[l].cols ? outs[l].ncols : (size_t)ly->neurons;
    }
    /* Consecutive ids keep their natural slots (id mod B) -- unless that
     * takes more forwards than packing them class by class (a run that
     * straddles a block boundary); no ids, any slot. */
    int natural = !ids || consecutive(ids, n);
    if (ids && natural && n) {
        size_t count[REGISTRY_MAX_CLASSES] = {0}, packed = 0;
        for (size_t i = 0; i < n; i++) count[m->slot_class[ids[i] % B]]++;
        for (int c = 0; c < m->nclass; c++) {
            size_t f = (count[c] + m->class_slots[c] - 1) / m->class_slots[c];
            if (f > packed) packed = f;
        }
        natural = (size_t)(ids[n - 1] / B - ids[0] / B) + 1 <= packed;
    }
    int C = m->nclass > 0 ? m->nclass : 1;
    bin = malloc(B * numel * sizeof *bin);
    slot_of = malloc(B * sizeof *slot_of);
    if (!bin || !slot_of) goto oom;
    for (int l = 0; l < nouts; l++) {
        if (!(bout[l] = malloc(B * width[l] * sizeof(float)))) goto oom;
        so[l] = (shim_out){.layer = outs[l].layer, .cols = outs[l].cols, .ncols = outs[l].ncols, .dst = bout[l]};
    }
    if (!natural) {
        /* queue[]: input indices grouped by class (counting sort); head[c],
         * qlen[c]: where class c's run starts and how much of it is left */
        queue = malloc((n ? n : 1) * sizeof *queue);
        head = calloc((size_t)C + 1, sizeof *head);
        qlen = calloc((size_t)C, sizeof *qlen);
        if (!queue || !head || !qlen) goto oom;
        for (size_t i = 0; i < n; i++) head[m->slot_class[ids[i] % B] + 1]++;
        for (int c = 0; c < C; c++) {
            qlen[c] = head[c + 1];
            head[c + 1] += head[c];
        }
        size_t *fill = calloc((size_t)C, sizeof *fill);
        if (!fill) goto oom;
        for (size_t i = 0; i < n; i++) {
            int c = m->slot_class[ids[i] % B];
            queue[head[c] + fill[c]++] = i;
        }
        free(fill);
    }
    size_t done = 0;
    while (done < n) {
        size_t used = 0;
        for (size_t p = 0; p < B; p++) slot_of[p] = SIZE_MAX;
        if (natural) {
            /* inputs done.. up to the end of their block of B ids */
            size_t p0 = ids ? ids[done] % B : 0;
            size_t cnt = B - p0 < n - done ? B - p0 : n - done;
            for (size_t i = 0; i < cnt; i++) slot_of[p0 + i] = done + i;
            used = cnt;
        } else {
            for (size_t p = 0; p < B; p++) {
                int c = m->slot_class[p];
                if (qlen[c]) {
                    slot_of[p] = queue[head[c]++];
                    qlen[c]--;
                    used++;
                }
            }
        }
        /* A whole block of consecutive inputs (a build's pass, a scan) goes
         * in and comes out in place: no copies of a wide layer's batch. */
        int direct = natural && used == B && slot_of[0] == done;
        const float *bx = bin;
        if (direct) {
            bx = in + done * numel;
            for (int l = 0; l < nouts; l++) so[l].dst = outs[l].dst + done * width[l];
        } else {
            for (size_t p = 0; p < B; p++) {
                if (slot_of[p] == SIZE_MAX)
                    memset(bin + p * numel, 0, numel * sizeof *bin);
                else
                    memcpy(bin + p * numel, in + slot_of[p] * numel, numel * sizeof *bin);
            }
            for (int l = 0; l < nouts; l++) so[l].dst = bout[l];
        }
        if (shim_run(m->shim, bx, (int64_t)B, so, nouts, err, errlen) != 0) goto fail;
        atomic_fetch_add(&a->metrics.inference_batches, 1);
        if (forwards) (*forwards)++;
        atomic_fetch_add(&a->metrics.inputs_computed, used);
        for (size_t p = 0; !direct && p < B; p++) {
            if (slot_of[p] == SIZE_MAX) continue;
            for (int l = 0; l < nouts; l++)
                memcpy(outs[l].dst + slot_of[p] * width[l], bout[l] + p * width[l], width[l] * sizeof(float));
        }
        done += used;
    }
    rc = 0;
    goto fail;
oom:
    snprintf(err, errlen, "out of memory for an inference batch");
fail:
    free(bin);
    for (int l = 0; l < 16; l++) free(bout[l]);
    free(slot_of);
    free(queue);
    free(head);
    free(qlen);
    return rc;
}
