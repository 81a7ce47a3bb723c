/* app.c -- model registry, input loading and batched inference. */
#include "app.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void app_log(const char *fmt, ...)
{
    char ts[32];
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    va_list ap;
    va_start(ap, fmt);
    flockfile(stderr);
    fprintf(stderr, "%s.%03ldZ ", ts, now.tv_nsec / 1000000);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    funlockfile(stderr);
    va_end(ap);
}

double app_now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int64_t app_unix_now(void) { return (int64_t)time(NULL); }

/* ---- models ---- */

app_model *app_model_get(app *a, const char *name)
{
    pthread_mutex_lock(&a->models_lock);
    app_model *m = a->models;
    while (m && strcmp(m->name, name) != 0) m = m->next;
    if (m) atomic_fetch_add(&m->refs, 1);
    pthread_mutex_unlock(&a->models_lock);
    return m;
}

static void model_destroy(app_model *m)
{
    shim_free(m->shim);
    pthread_mutex_destroy(&m->run_lock);
    free(m);
}

void app_model_put(app_model *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) model_destroy(m);
}

int app_model_load(app *a, const store_model *rec, app_model **out, char *err, size_t errlen)
{
    app_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (shim_load(rec->path, a->cfg.device, rec->ndim ? rec->input_shape : NULL, rec->ndim,
                  &m->shim, err, errlen) != 0) {
        free(m);
        return -1;
    }
    snprintf(m->name, sizeof m->name, "%s", rec->name);
    m->rec = *rec;
    pthread_mutex_init(&m->run_lock, NULL);
    atomic_init(&m->refs, 1); /* the caller's reference */
    *out = m;
    return 0;
}

/* Generation ids make cache keys of a re-registered model distinct. */
static uint32_t next_gen(void)
{
    static atomic_uint gen = 1;
    return atomic_fetch_add(&gen, 1);
}

void app_model_insert(app *a, app_model *m)
{
    m->gen = next_gen();
    atomic_fetch_add(&m->refs, 1); /* the registry's reference */
    pthread_mutex_lock(&a->models_lock);
    app_model **pp = &a->models;
    while (*pp && strcmp((*pp)->name, m->name) != 0) pp = &(*pp)->next;
    if (*pp) { /* replace */
        app_model *old = *pp;
        m->next = old->next;
        *pp = m;
        pthread_mutex_unlock(&a->models_lock);
        app_model_put(old);
        return;
    }
    m->next = a->models;
    a->models = m;
    pthread_mutex_unlock(&a->models_lock);
}

int app_model_unregister(app *a, const char *name)
{
    pthread_mutex_lock(&a->models_lock);
    app_model **pp = &a->models;
    while (*pp && strcmp((*pp)->name, name) != 0) pp = &(*pp)->next;
    app_model *m = *pp;
    if (m) *pp = m->next;
    pthread_mutex_unlock(&a->models_lock);
    if (!m) return -1;
    app_model_put(m);
    return 0;
}

typedef struct { store_model *v; size_t n, cap; } model_list;

static int collect_model(const store_model *m, void *arg)
{
    model_list *l = arg;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        store_model *v = realloc(l->v, cap * sizeof *v);
        if (!v) return 1;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = *m;
    return 0;
}

int app_models_load_all(app *a)
{
    model_list l = {0};
    store_txn *t;
    if (store_txn_begin(a->st, 1, &t) != STORE_OK) return -1;
    store_model_each(t, collect_model, &l);
    store_txn_abort(t);
    for (size_t i = 0; i < l.n; i++) {
        char err[512];
        app_model *m;
        if (app_model_load(a, &l.v[i], &m, err, sizeof err) != 0) {
            app_log("model '%s' not loaded: %s", l.v[i].name, err);
            continue;
        }
        app_model_insert(a, m);
        app_log("model '%s' loaded from %s on %s", m->name, m->rec.path, shim_device(m->shim));
        app_model_put(m);
    }
    free(l.v);
    return 0;
}

void app_models_free(app *a)
{
    pthread_mutex_lock(&a->models_lock);
    app_model *m = a->models;
    a->models = NULL;
    pthread_mutex_unlock(&a->models_lock);
    while (m) {
        app_model *next = m->next;
        app_model_put(m);
        m = next;
    }
}

/* ---- inputs ---- */

size_t app_dataset_numel(const store_dataset *d)
{
    size_t n = 1;
    for (int i = 0; i < d->ndim; i++) n *= (size_t)d->shape[i];
    return n;
}

int app_inputs_load(store_txn *t, const store_dataset *d, const uint32_t *ids, size_t n,
                    float *out, char *err, size_t errlen)
{
    size_t numel = app_dataset_numel(d);
    size_t esize = d->dtype == STORE_U8 ? 1 : 4;
    /* Channel of element e is e / plane for [C,H,W]-like shapes; one channel
     * of mean/std broadcasts. */
    size_t plane = d->ndim >= 3 ? numel / (size_t)d->shape[0] : numel;
    for (size_t i = 0; i < n; i++) {
        const void *data;
        size_t len;
        if (ids[i] >= d->count ||
            store_input_get(t, d->id, ids[i], &data, &len) != STORE_OK || len != numel * esize) {
            snprintf(err, errlen, "input %u of dataset '%s' is missing or damaged", ids[i], d->name);
            return -1;
        }
        float *o = out + i * numel;
        for (size_t e = 0; e < numel; e++) {
            float raw;
            if (esize == 1)
                raw = ((const uint8_t *)data)[e];
            else
                memcpy(&raw, (const char *)data + e * 4, 4);
            size_t c = d->nchan > 1 ? (e / plane) % (size_t)d->nchan : 0;
            o[e] = (raw * d->scale - d->mean[c]) / d->std[c];
        }
    }
    return 0;
}

/* ---- inference ---- */

/* Every forward runs at exactly cfg.batch inputs, the tail padded with zeros:
 * on CPU, oneDNN and BLAS pick other kernels for small batches (measured: a
 * batch of 1 or 2 differs from a batch of 64 by ~1e-7), and the index bounds
 * are exact only if a recomputed activation equals the one the index was
 * built from bit for bit. */
int app_infer(app *a, app_model *m, const float *in, size_t n, const int *layers, int nlayers,
              float *const *outs, char *err, size_t errlen)
{
    size_t B = a->cfg.batch ? a->cfg.batch : 64;
    size_t numel = (size_t)shim_input_numel(m->shim);
    float *pad_in = NULL;
    float *pad_out[16] = {0};
    int rc = -1;
    if (nlayers < 1 || nlayers > 16) {
        snprintf(err, errlen, "between 1 and 16 layers per forward");
        return -1;
    }
    for (size_t off = 0; off < n; off += B) {
        size_t cnt = n - off < B ? n - off : B;
        const float *src = in + off * numel;
        float *dst[16];
        if (cnt < B) {
            if (!pad_in) {
                pad_in = calloc(B * numel, sizeof(float));
                if (!pad_in) goto oom;
                for (int l = 0; l < nlayers; l++) {
                    const shim_layer *ly = shim_layer_at(m->shim, layers[l]);
                    pad_out[l] = malloc(B * (size_t)ly->neurons * sizeof(float));
                    if (!pad_out[l]) goto oom;
                }
            }
            memcpy(pad_in, src, cnt * numel * sizeof(float));
            src = pad_in;
            for (int l = 0; l < nlayers; l++) dst[l] = pad_out[l];
        } else {
            for (int l = 0; l < nlayers; l++) {
                const shim_layer *ly = shim_layer_at(m->shim, layers[l]);
                dst[l] = outs[l] + off * (size_t)ly->neurons;
            }
        }
        pthread_mutex_lock(&m->run_lock);
        int r = shim_run(m->shim, src, (int64_t)B, layers, nlayers, dst, err, errlen);
        pthread_mutex_unlock(&m->run_lock);
        if (r != 0) goto fail;
        atomic_fetch_add(&a->metrics.inference_batches, 1);
        atomic_fetch_add(&a->metrics.inputs_computed, cnt);
        if (cnt < B)
            for (int l = 0; l < nlayers; l++) {
                const shim_layer *ly = shim_layer_at(m->shim, layers[l]);
                memcpy(outs[l] + off * (size_t)ly->neurons, pad_out[l],
                       cnt * (size_t)ly->neurons * sizeof(float));
            }
    }
    rc = 0;
    goto fail;
oom:
    snprintf(err, errlen, "out of memory for an inference batch");
fail:
    free(pad_in);
    for (int l = 0; l < 16; l++) free(pad_out[l]);
    return rc;
}
