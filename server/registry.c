/* registry.c -- see registry.h. */
#include "registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "builder_stream.h"
#include "infer.h"

struct registry {
    pthread_mutex_t mu;
    registry_model *head;
};

int registry_new(registry **out)
{
    registry *r = calloc(1, sizeof *r);
    if (!r) return -1;
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return 0;
}

registry_model *registry_get(registry *r, const char *name)
{
    pthread_mutex_lock(&r->mu);
    registry_model *m = r->head;
    while (m && strcmp(m->name, name) != 0) m = m->next;
    if (m) atomic_fetch_add(&m->refs, 1);
    pthread_mutex_unlock(&r->mu);
    return m;
}

static void model_destroy(registry_model *m)
{
    shim_free(m->shim);
    pthread_mutex_destroy(&m->turn_lock);
    pthread_cond_destroy(&m->turn_cv);
    free(m->slot_class);
    free(m->layer_ms);
    free(m);
}

void registry_release(registry_model *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) model_destroy(m);
}

int registry_load(app *a, const store_model *rec, registry_model **out, char *err, size_t errlen)
{
    registry_model *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_mutex_init(&m->turn_lock, NULL);
    pthread_cond_init(&m->turn_cv, NULL);
    atomic_init(&m->refs, 1); /* the caller's reference */
    if (shim_load(rec->path, a->cfg.device, rec->ndim ? rec->input_shape : NULL, rec->ndim, &m->shim, err,
                  errlen) != 0)
        goto fail;
    snprintf(m->name, sizeof m->name, "%s", rec->name);
    m->rec = *rec;
    /* The layout is the model's for good, like its batch: a record from before
     * layouts were kept had its indexes built contiguous. */
    m->rec.layout = rec->layout ? rec->layout : SHIM_CONTIGUOUS;
    if (m->rec.layout != SHIM_CONTIGUOUS && shim_set_layout(m->shim, (int)m->rec.layout, err, errlen) != 0)
        goto fail;
    m->input_bytes = infer_input_bytes(m->shim);
    size_t budget = a->cfg.infer_memory_mb << 20;
    if (rec->batch) {
        /* Indexes were built at this batch: keep it, whatever the flags say now. */
        m->batch = rec->batch;
        if ((size_t)m->batch * m->input_bytes > budget)
            log_msg("model '%s': its batch of %u needs ~%zu MiB per forward, more than --infer-memory-mb %zu",
                    rec->name, m->batch, ((size_t)m->batch * m->input_bytes) >> 20, a->cfg.infer_memory_mb);
    } else {
        size_t fit = budget / (m->input_bytes ? m->input_bytes : 1);
        if (fit < 1) {
            snprintf(err, errlen,
                     "one input takes ~%zu MiB in a forward of this model (its layers' outputs), more than "
                     "--infer-memory-mb %zu allows",
                     (m->input_bytes + (1u << 20) - 1) >> 20, a->cfg.infer_memory_mb);
            goto fail;
        }
        m->batch = fit < a->cfg.batch ? (uint32_t)fit : a->cfg.batch;
        m->rec.batch = m->batch;
    }
    if (infer_calibrate(m, err, errlen) != 0) goto fail;
    /* Eager layers weigh index costs against these forwards: time indexing
     * now too, so that a machine slowed while it loads slows both. */
    m->index_probe_ms = 0;
    for (int rep = 0; rep < 5; rep++) {
        double ms = bstream_probe_ms(a->cfg.threads == 1 ? 1 : 2);
        if (ms > 0 && (m->index_probe_ms <= 0 || ms < m->index_probe_ms)) m->index_probe_ms = ms;
    }
    if (!rec->numerics) {
        m->rec.numerics = m->numerics; /* registration (or a record from before they were kept) */
    } else if (rec->numerics != m->numerics) {
        m->numerics_changed = 1;
        log_msg("model '%s' computes other bits here than when it was registered (another CPU, LibTorch or "
                "--threads?): queries on its indexes are refused until it is registered again",
                rec->name);
    }
    *out = m;
    return 0;
fail:
    model_destroy(m);
    return -1;
}

/* Generation ids make cache keys of a re-registered model distinct. */
static uint32_t next_gen(void)
{
    static atomic_uint gen = 1;
    return atomic_fetch_add(&gen, 1);
}

void registry_insert(registry *r, registry_model *m)
{
    m->gen = next_gen();
    atomic_fetch_add(&m->refs, 1); /* the registry's reference */
    pthread_mutex_lock(&r->mu);
    registry_model **pp = &r->head;
    while (*pp && strcmp((*pp)->name, m->name) != 0) pp = &(*pp)->next;
    registry_model *old = *pp;
    if (old) { /* replace */
        m->next = old->next;
        *pp = m;
    } else {
        m->next = r->head;
        r->head = m;
    }
    pthread_mutex_unlock(&r->mu);
    registry_release(old);
}

int registry_remove(registry *r, const char *name)
{
    pthread_mutex_lock(&r->mu);
    registry_model **pp = &r->head;
    while (*pp && strcmp((*pp)->name, name) != 0) pp = &(*pp)->next;
    registry_model *m = *pp;
    if (m) *pp = m->next;
    pthread_mutex_unlock(&r->mu);
    if (!m) return -1;
    registry_release(m);
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

const char *registry_layout_name(const registry_model *m)
{
    return shim_layout(m->shim) == SHIM_CHANNELS_LAST ? "channels-last" : "contiguous";
}

void registry_load_all(app *a)
{
    model_list l = {0};
    store_txn *t;
    if (store_txn_begin(a->st, 1, &t) != STORE_OK) {
        log_msg("models not loaded: %s", store_errmsg());
        return;
    }
    store_model_each(t, collect_model, &l);
    store_txn_abort(t);
    for (size_t i = 0; i < l.n; i++) {
        char err[512];
        registry_model *m;
        if (registry_load(a, &l.v[i], &m, err, sizeof err) != 0) {
            log_msg("model '%s' not loaded: %s", l.v[i].name, err);
            continue;
        }
        registry_insert(a->models, m);
        log_msg("model '%s' loaded from %s on %s (batch %u, %d slot classes, %s)", m->name, m->rec.path,
                shim_device(m->shim), m->batch, m->nclass, registry_layout_name(m));
        registry_release(m);
    }
    free(l.v);
}

void registry_free(registry *r)
{
    if (!r) return;
    pthread_mutex_lock(&r->mu);
    registry_model *m = r->head;
    r->head = NULL;
    pthread_mutex_unlock(&r->mu);
    while (m) {
        registry_model *next = m->next;
        registry_release(m);
        m = next;
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}
