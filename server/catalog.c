/* catalog.c -- see catalog.h. */
#include "catalog.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "inputs.h"
#include "jobs.h"
#include "predictions.h"
#include "thumb.h"

/* How long a delete waits for the builds it cancels to let go. */
#define CANCEL_WAIT_S 60.0
/* Names listed in an error before "... and N more". */
#define LIST_NAMES 24
#define CATALOG_THUMB_LAYER UINT32_MAX /* cache keys of thumbnails: no model has this layer */

static pthread_mutex_t catalog_mu = PTHREAD_MUTEX_INITIALIZER;

void catalog_lock(void) { pthread_mutex_lock(&catalog_mu); }
void catalog_unlock(void) { pthread_mutex_unlock(&catalog_mu); }

int catalog_store_fail(int rc, const char *notfound_code, proto_err *e)
{
    if (rc == STORE_FULL)
        return proto_fail(e, 507, "store_full",
                          "the store is full (LMDB map size or disk reached): delete indexes or datasets, or restart "
                          "with a larger --map-mb");
    if (rc == STORE_NOTFOUND && notfound_code) return proto_fail(e, 404, notfound_code, "%s", store_errmsg());
    return proto_fail(e, 500, "store_error", "store: %s", store_errmsg());
}

/* ---- names for errors ---- */

typedef struct name_list {
    char buf[1024];
    size_t len;
    int shown, more;
} name_list;

static void names_add(name_list *l, const char *name)
{
    if (l->shown == LIST_NAMES || l->len + strlen(name) + 8 > sizeof l->buf) {
        l->more++;
        return;
    }
    l->len += (size_t)snprintf(l->buf + l->len, sizeof l->buf - l->len, "%s'%s'", l->shown ? ", " : "", name);
    l->shown++;
}

static const char *names_text(name_list *l)
{
    if (!l->shown) return "none";
    if (l->more) snprintf(l->buf + l->len, sizeof l->buf - l->len, " and %d more", l->more);
    return l->buf;
}

static int add_model_name(const store_model *m, void *arg)
{
    names_add(arg, m->name);
    return 0;
}

static int add_dataset_name(const store_dataset *d, void *arg)
{
    if (d->state == STORE_READY) names_add(arg, d->name);
    return 0;
}

/* ---- lookups ---- */

registry_model *catalog_model(app *a, const char *name, proto_err *e)
{
    registry_model *m = registry_get(a->models, name);
    if (m) return m;
    store_txn *t;
    store_model rec;
    name_list l = {0};
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc != STORE_OK) {
        catalog_store_fail(rc, NULL, e);
        return NULL;
    }
    int known = store_model_get(t, name, &rec) == STORE_OK;
    if (!known) store_model_each(t, add_model_name, &l);
    store_txn_abort(t);
    if (known)
        proto_fail(e, 503, "model_unavailable",
                   "model '%s' is registered but could not be loaded from %s (missing or corrupt file?); register "
                   "it again",
                   name, rec.path);
    else
        proto_fail(e, 404, "unknown_model", "model '%s' is not registered; registered models: %s", name,
                   names_text(&l));
    return NULL;
}

int catalog_dataset(app *a, const char *name, store_dataset *out, proto_err *e)
{
    store_txn *t;
    name_list l = {0};
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    rc = store_dataset_get(t, name, out);
    int found = rc == STORE_OK && out->state == STORE_READY;
    if (!found && (rc == STORE_OK || rc == STORE_NOTFOUND)) store_dataset_each(t, add_dataset_name, &l);
    store_txn_abort(t);
    if (found) return 0;
    if (rc == STORE_OK || rc == STORE_NOTFOUND)
        return proto_fail(e, 404, "unknown_dataset", "dataset '%s' does not exist; datasets: %s", name,
                          names_text(&l));
    return catalog_store_fail(rc, NULL, e);
}

int catalog_layer(const registry_model *m, const char *layer, proto_err *e)
{
    int li = shim_layer_find(m->shim, layer);
    if (li >= 0) return li;
    name_list l = {0};
    for (int i = 0; i < shim_layer_count(m->shim); i++) names_add(&l, shim_layer_at(m->shim, i)->name);
    return proto_fail(e, 404, "unknown_layer", "model '%s' has no layer '%s'; its layers: %s", m->name, layer,
                      names_text(&l));
}

int catalog_check_fit(const registry_model *m, const store_dataset *d, proto_err *e)
{
    size_t numel = inputs_numel(d);
    if ((size_t)shim_input_numel(m->shim) != numel)
        return proto_fail(e, 422, "shape_mismatch", "dataset '%s' inputs have %zu elements; model '%s' takes %lld",
                          d->name, numel, m->name, (long long)shim_input_numel(m->shim));
    if (d->count == 0 || d->count > UINT32_MAX - 1)
        return proto_fail(e, 422, "invalid_dataset", "dataset '%s' has %llu inputs; queries and indexes need "
                          "1 to 2^32-2", d->name, (unsigned long long)d->count);
    return 0;
}

/* ---- indexes ---- */

typedef struct find_ctx {
    const char *model, *dataset, *layer;
    catalog_found *f;
} find_ctx;

static int find_ix(const store_index *ix, void *arg)
{
    find_ctx *c = arg;
    catalog_found *f = c->f;
    if (strcmp(ix->model, c->model) || strcmp(ix->dataset, c->dataset) || strcmp(ix->layer, c->layer)) return 0;
    if (ix->kind == STORE_INDEX_FULL) {
        if (ix->state == STORE_READY && (!f->have_full || ix->id > f->full.id)) {
            f->full = *ix;
            f->have_full = 1;
        }
        return 0;
    }
    if (ix->state == STORE_READY && (!f->have_ready || ix->id > f->ready.id)) {
        f->ready = *ix;
        f->have_ready = 1;
    }
    if (ix->state == STORE_PENDING) f->have_pending = 1;
    return 0;
}

int catalog_find_index(store_txn *t, const char *model, const char *dataset, const char *layer, catalog_found *f,
                       proto_err *e)
{
    memset(f, 0, sizeof *f);
    find_ctx c = {model, dataset, layer, f};
    int rc = store_index_each(t, find_ix, &c);
    return rc == STORE_OK ? 0 : catalog_store_fail(rc, NULL, e);
}

typedef struct same_ctx {
    const char *model, *dataset, *layer;
    int kind;
    uint32_t partitions;
    float mai_ratio;
    store_index *out;
    int found;
} same_ctx;

static int find_same(const store_index *ix, void *arg)
{
    same_ctx *c = arg;
    if (strcmp(ix->model, c->model) || strcmp(ix->dataset, c->dataset) || strcmp(ix->layer, c->layer)) return 0;
    if (ix->kind != c->kind || (ix->state != STORE_READY && ix->state != STORE_PENDING)) return 0;
    if (c->kind == STORE_INDEX_NPI && (ix->partitions != c->partitions || ix->mai_ratio != c->mai_ratio)) return 0;
    /* prefer a ready one, then the newest */
    if (!c->found || (ix->state == STORE_READY && c->out->state != STORE_READY) ||
        (ix->state == c->out->state && ix->id > c->out->id)) {
        *c->out = *ix;
        c->found = 1;
    }
    return 0;
}

int catalog_find_same(store_txn *t, const char *model, const char *dataset, const char *layer, int kind,
                      uint32_t partitions, float mai_ratio, store_index *out)
{
    same_ctx c = {model, dataset, layer, kind, partitions, mai_ratio, out, 0};
    store_index_each(t, find_same, &c);
    return c.found;
}

int catalog_index_views(store_txn *t, const store_index *ix, const uint32_t *neurons, size_t g, npi_view *views,
                        proto_err *e)
{
    /* 64 entries at a time: find them, start all their reads
     * (store_prefetch), then decode -- the decode reads each entry's first
     * page, and from disk those reads would otherwise come one by one */
    const void *blobs[64];
    size_t lens[64];
    for (size_t j0 = 0; j0 < g; j0 += 64) {
        size_t nb = g - j0 < 64 ? g - j0 : 64;
        for (size_t b = 0; b < nb; b++) {
            int rc = store_neuron_get(t, ix->id, neurons[j0 + b], &blobs[b], &lens[b]);
            if (rc == STORE_NOTFOUND)
                return proto_fail(e, 500, "index_damaged", "index %u has no entry for neuron %u", ix->id,
                                  neurons[j0 + b]);
            if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
        }
        store_prefetch(blobs, lens, nb);
        for (size_t b = 0; b < nb; b++)
            if (npi_decode(blobs[b], lens[b], &views[j0 + b]) != 0 || views[j0 + b].n != ix->count)
                return proto_fail(e, 500, "index_damaged", "index %u: entry of neuron %u is corrupt", ix->id,
                                  neurons[j0 + b]);
    }
    return 0;
}

int catalog_full_columns(store_txn *t, const store_index *ix, const uint32_t *neurons, size_t g,
                         const float **cols, proto_err *e)
{
    for (size_t j = 0; j < g; j++) {
        const void *blob;
        size_t len;
        int rc = store_neuron_get(t, ix->id, neurons[j], &blob, &len);
        if (rc != STORE_OK && rc != STORE_NOTFOUND) return catalog_store_fail(rc, NULL, e);
        if (rc == STORE_NOTFOUND || len != ix->count * sizeof(float))
            return proto_fail(e, 500, "index_damaged", "materialization %u lacks neuron %u", ix->id, neurons[j]);
        cols[j] = blob;
    }
    return 0;
}

/* ---- deletes ---- */

void catalog_deleted_free(catalog_deleted *d)
{
    free(d->indexes);
    free(d->jobs);
    d->indexes = d->jobs = NULL;
    d->nindexes = d->njobs = 0;
}

typedef struct owned_ctx {
    const char *model, *dataset;
    uint32_t *ids;
    size_t n, cap;
    int oom;
} owned_ctx;

static int push_id(owned_ctx *c, uint32_t id)
{
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        uint32_t *g = realloc(c->ids, cap * sizeof *g);
        if (!g) {
            c->oom = 1;
            return 1;
        }
        c->ids = g;
        c->cap = cap;
    }
    c->ids[c->n++] = id;
    return 0;
}

static int collect_owned(const store_index *ix, void *arg)
{
    owned_ctx *c = arg;
    if ((c->model && strcmp(ix->model, c->model) == 0) || (c->dataset && strcmp(ix->dataset, c->dataset) == 0))
        return push_id(c, ix->id);
    return 0;
}

/* The ids of every index built from the model or dataset, in txn t. */
static int owned_ids(store_txn *t, const char *model, const char *dataset, owned_ctx *c)
{
    memset(c, 0, sizeof *c);
    c->model = model;
    c->dataset = dataset;
    int rc = store_index_each(t, collect_owned, c);
    if (rc == STORE_OK && c->oom) rc = STORE_ERROR;
    return rc;
}

/* Deletes, in the write txn t, every index built from the model or dataset
 * (however many). out->indexes lists them with those of `listed` (the ones
 * there before the delete stopped their builds, which removed some). */
static int delete_owned(store_txn *t, const char *model, const char *dataset, owned_ctx *listed,
                        catalog_deleted *out)
{
    owned_ctx c;
    int rc = owned_ids(t, model, dataset, &c);
    for (size_t i = 0; i < c.n && rc == STORE_OK; i++) rc = store_index_del(t, c.ids[i]);
    for (size_t i = 0; i < c.n && rc == STORE_OK; i++) { /* the union, for the reply */
        size_t k = 0;
        while (k < listed->n && listed->ids[k] != c.ids[i]) k++;
        if (k == listed->n && push_id(listed, c.ids[i])) rc = STORE_ERROR;
    }
    free(c.ids);
    if (rc != STORE_OK) return rc;
    out->indexes = listed->ids;
    out->nindexes = listed->n;
    listed->ids = NULL;
    return rc;
}

typedef struct pred_owned {
    const char *model;
    uint32_t *datasets;
    size_t n, cap;
    int oom;
} pred_owned;

static int collect_pred(const store_predictions *p, void *arg)
{
    pred_owned *o = arg;
    if (strcmp(p->model, o->model) != 0) return 0;
    if (o->n == o->cap) {
        size_t cap = o->cap ? 2 * o->cap : 16;
        uint32_t *g = realloc(o->datasets, cap * sizeof *g);
        if (!g) {
            o->oom = 1;
            return 1;
        }
        o->datasets = g;
        o->cap = cap;
    }
    o->datasets[o->n++] = p->dataset;
    return 0;
}

/* Deletes, in t, the predictions of the model over every dataset. */
static int delete_predictions_of(store_txn *t, const char *model)
{
    pred_owned o = {.model = model};
    int rc = store_predictions_each(t, collect_pred, &o);
    if (rc == STORE_OK && o.oom) rc = STORE_ERROR;
    for (size_t i = 0; i < o.n && rc == STORE_OK; i++) rc = store_predictions_del(t, o.datasets[i], model);
    free(o.datasets);
    return rc;
}

int catalog_delete_model(app *a, const char *name, catalog_deleted *out, proto_err *e)
{
    memset(out, 0, sizeof *out);
    store_txn *t;
    store_model rec;
    owned_ctx listed = {0};
    int rc, ret = -1;
    catalog_lock();
    if ((rc = store_txn_begin(a->st, 1, &t)) != STORE_OK) {
        catalog_store_fail(rc, NULL, e);
        goto out;
    }
    rc = store_model_get(t, name, &rec);
    name_list l = {0};
    if (rc == STORE_NOTFOUND) store_model_each(t, add_model_name, &l);
    if (rc == STORE_OK) rc = owned_ids(t, name, NULL, &listed);
    store_txn_abort(t);
    if (rc == STORE_NOTFOUND) {
        proto_fail(e, 404, "unknown_model", "model '%s' is not registered; registered models: %s", name,
                   names_text(&l));
        goto out;
    }
    if (rc != STORE_OK) {
        catalog_store_fail(rc, NULL, e);
        goto out;
    }
    registry_remove(a->models, name); /* new requests stop finding it */
    if (jobs_cancel_owned(a, name, NULL, CANCEL_WAIT_S, &out->jobs, &out->njobs) != 0) {
        proto_fail(e, 503, "busy", "a build of model '%s' did not stop within %.0f s; retry the delete", name,
                   CANCEL_WAIT_S);
        goto out;
    }
    if ((rc = store_txn_begin(a->st, 0, &t)) != STORE_OK) {
        catalog_store_fail(rc, NULL, e);
        goto out;
    }
    rc = store_model_del(t, name);
    if (rc == STORE_OK) rc = delete_owned(t, name, NULL, &listed, out);
    if (rc == STORE_OK) rc = delete_predictions_of(t, name);
    if (rc == STORE_OK)
        rc = store_txn_commit(t);
    else
        store_txn_abort(t);
    if (rc != STORE_OK) {
        catalog_store_fail(rc, NULL, e);
        goto out;
    }
    log_msg("model '%s' deleted with %zu indexes (%zu builds cancelled)", name, out->nindexes, out->njobs);
    ret = 0;
out:
    catalog_unlock();
    free(listed.ids);
    if (ret) catalog_deleted_free(out);
    return ret;
}

int catalog_delete_dataset(app *a, const char *name, catalog_deleted *out, proto_err *e)
{
    memset(out, 0, sizeof *out);
    store_txn *t;
    store_dataset d;
    owned_ctx listed = {0};
    int rc, ret = -1;
    catalog_lock();
    /* DELETING first: queries and new builds stop seeing it. */
    if ((rc = store_txn_begin(a->st, 0, &t)) != STORE_OK) {
        catalog_store_fail(rc, NULL, e);
        goto out;
    }
    rc = store_dataset_get(t, name, &d);
    if (rc == STORE_OK && d.state != STORE_READY) rc = STORE_NOTFOUND;
    if (rc == STORE_NOTFOUND) {
        name_list l = {0};
        store_dataset_each(t, add_dataset_name, &l);
        store_txn_abort(t);
        proto_fail(e, 404, "unknown_dataset", "dataset '%s' does not exist; datasets: %s", name, names_text(&l));
        goto out;
    }
    d.state = STORE_DELETING;
    if (rc == STORE_OK) rc = owned_ids(t, NULL, name, &listed);
    if (rc == STORE_OK) rc = store_dataset_put(t, &d, 0);
    if (rc == STORE_OK)
        rc = store_txn_commit(t);
    else
        store_txn_abort(t);
    if (rc != STORE_OK) {
        catalog_store_fail(rc, NULL, e);
        goto out;
    }
    if (jobs_cancel_owned(a, NULL, name, CANCEL_WAIT_S, &out->jobs, &out->njobs) != 0) {
        /* it stays DELETING: hidden, and swept at the next start */
        proto_fail(e, 503, "busy", "a build over dataset '%s' did not stop within %.0f s; retry the delete", name,
                   CANCEL_WAIT_S);
        goto out;
    }
    if ((rc = store_txn_begin(a->st, 0, &t)) != STORE_OK) {
        catalog_store_fail(rc, NULL, e);
        goto out;
    }
    rc = delete_owned(t, NULL, name, &listed, out);
    if (rc == STORE_OK) rc = store_dataset_del(t, name);
    if (rc == STORE_OK)
        rc = store_txn_commit(t);
    else
        store_txn_abort(t);
    if (rc != STORE_OK) {
        catalog_store_fail(rc, NULL, e);
        goto out;
    }
    log_msg("dataset '%s' deleted with %zu indexes (%zu builds cancelled)", name, out->nindexes, out->njobs);
    ret = 0;
out:
    catalog_unlock();
    free(listed.ids);
    if (ret) catalog_deleted_free(out);
    return ret;
}

int catalog_delete_index(app *a, uint32_t id, uint32_t *job_id, int *job_cancelled, proto_err *e)
{
    store_txn *t;
    store_index ix;
    *job_id = 0;
    *job_cancelled = 0;
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    rc = store_index_get(t, id, &ix);
    store_txn_abort(t);
    if (rc == STORE_NOTFOUND) return proto_fail(e, 404, "unknown_index", "index %u does not exist", id);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    if (ix.state == STORE_PENDING && jobs_drop_part(a, id, CANCEL_WAIT_S, job_id, job_cancelled) != 0)
        return proto_fail(e, 503, "busy", "the build of index %u did not stop within %.0f s; retry the delete", id,
                          CANCEL_WAIT_S);
    if ((rc = store_txn_begin(a->st, 0, &t)) != STORE_OK) return catalog_store_fail(rc, NULL, e);
    rc = store_index_del(t, id);
    if (rc == STORE_NOTFOUND) rc = STORE_OK; /* gone with its job */
    if (rc == STORE_OK)
        rc = store_txn_commit(t);
    else
        store_txn_abort(t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    log_msg("index %u deleted%s", id, *job_cancelled ? " (its build job stopped)" : "");
    return 0;
}

/* ---- inputs ---- */

void catalog_page_free(catalog_page *p)
{
    free(p->ids);
    free(p->labels);
    free(p->predicted);
    p->ids = NULL;
    p->labels = NULL;
    p->predicted = NULL;
    p->n = 0;
}

int catalog_list_inputs(app *a, const store_dataset *d, const proto_inputs_req *q, catalog_page *out, proto_err *e)
{
    memset(out, 0, sizeof *out);
    size_t limit = (size_t)q->limit;
    if (q->has_label && !d->has_labels)
        return proto_fail(e, 422, "invalid_filter", "label: dataset '%s' has no labels", d->name);
    if (q->misclassified && !d->has_labels)
        return proto_fail(e, 422, "invalid_filter", "misclassified: dataset '%s' has no labels", d->name);
    int32_t *pred = NULL;
    if (q->model[0]) {
        store_predictions rec;
        if (predictions_get(a, q->model, d, &rec, &pred, e) != 0) return -1;
    }
    out->ids = malloc((limit ? limit : 1) * sizeof *out->ids);
    if (d->has_labels) out->labels = malloc((limit ? limit : 1) * sizeof *out->labels);
    if (pred) out->predicted = malloc((limit ? limit : 1) * sizeof *out->predicted);
    if (!out->ids || (d->has_labels && !out->labels) || (pred && !out->predicted)) {
        free(pred);
        catalog_page_free(out);
        return proto_fail(e, 500, "internal", "out of memory");
    }
    store_txn *t = NULL;
    const int32_t *labels = NULL;
    uint64_t nl = 0;
    if (d->has_labels) {
        int rc = store_txn_begin(a->st, 1, &t);
        if (rc == STORE_OK) rc = store_labels_get(t, d->id, &labels, &nl);
        if (rc != STORE_OK) {
            store_txn_abort(t);
            free(pred);
            catalog_page_free(out);
            return catalog_store_fail(rc, NULL, e);
        }
    }
    for (uint64_t i = 0; i < d->count; i++) {
        int32_t l = labels && i < nl ? labels[i] : 0;
        if (q->has_label && l != q->label) continue;
        if (pred && q->has_predicted && pred[i] != q->predicted) continue;
        if (pred && q->misclassified && pred[i] == l) continue;
        if (out->total >= q->offset && out->n < limit) {
            out->ids[out->n] = (uint32_t)i;
            if (out->labels) out->labels[out->n] = l;
            if (out->predicted) out->predicted[out->n] = pred[i];
            out->n++;
        }
        out->total++;
    }
    store_txn_abort(t);
    free(pred);
    return 0;
}

int catalog_label(app *a, const store_dataset *d, uint64_t id, int32_t *label)
{
    if (!d->has_labels) return 0;
    store_txn *t;
    const int32_t *labels;
    uint64_t n;
    int got = 0;
    if (store_txn_begin(a->st, 1, &t) != STORE_OK) return 0;
    if (store_labels_get(t, d->id, &labels, &n) == STORE_OK && id < n) {
        *label = labels[id];
        got = 1;
    }
    store_txn_abort(t);
    return got;
}

int catalog_input_tensor(app *a, const store_dataset *d, uint64_t id, float **x, proto_err *e)
{
    size_t numel = inputs_numel(d);
    uint32_t id32 = (uint32_t)id;
    char err[256];
    store_txn *t;
    if (!(*x = malloc(numel * sizeof **x))) return proto_fail(e, 500, "internal", "out of memory");
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc != STORE_OK) {
        free(*x);
        *x = NULL;
        return catalog_store_fail(rc, NULL, e);
    }
    rc = inputs_load(t, d, &id32, 1, *x, err, sizeof err);
    store_txn_abort(t);
    if (rc != 0) {
        free(*x);
        *x = NULL;
        return proto_fail(e, 500, "input_damaged", "%s", err);
    }
    return 0;
}

int catalog_input_png(app *a, const store_dataset *d, uint64_t id, int side, unsigned char **png, size_t *len,
                      proto_err *e)
{
    store_txn *t;
    const void *data;
    size_t dlen;
    char err[256] = "missing input";
    /* A thumbnail is a function of the dataset registration, the input and
     * the side: rendered once, then served from the shared cache (the
     * explorer asks for the same ones again and again), under model 0 --
     * no model's generation -- and a layer no model has. */
    cache_key k = {.model = 0, .dataset = d->id, .layer = CATALOG_THUMB_LAYER, .input = (uint32_t)id,
                   .block = (uint32_t)side};
    int cacheable = id <= UINT32_MAX && side > 0;
    if (cacheable && cache_get_bytes(a->cache, &k, png, len)) return 0;
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    rc = store_input_get(t, d->id, id, &data, &dlen);
    if (rc == STORE_OK)
        rc = thumb_from_input(data, d->dtype == STORE_U8 ? 1 : 2, d->ndim, d->shape, side, png, len, err,
                              sizeof err);
    store_txn_abort(t);
    if (rc != 0)
        return proto_fail(e, 500, "internal", "cannot render input %llu: %s", (unsigned long long)id, err);
    if (cacheable) cache_put_bytes(a->cache, &k, *png, *len);
    return 0;
}

int catalog_input_heatmap(app *a, const store_dataset *d, uint64_t id, const double *map, int mw, int mh,
                          int magnitude, double alpha, int side, unsigned char **png, size_t *len, proto_err *e)
{
    store_txn *t;
    const void *data;
    size_t dlen;
    char err[256] = "missing input";
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    rc = store_input_get(t, d->id, id, &data, &dlen);
    if (rc == STORE_OK)
        rc = thumb_heatmap(data, d->dtype == STORE_U8 ? 1 : 2, d->ndim, d->shape, map, mw, mh, magnitude, alpha, side,
                           png, len, err, sizeof err);
    store_txn_abort(t);
    if (rc != 0)
        return proto_fail(e, 422, "no_picture", "cannot draw a heatmap over input %llu: %s", (unsigned long long)id,
                          err);
    return 0;
}

int catalog_get_index(app *a, uint32_t id, store_index *out, proto_err *e)
{
    store_txn *t;
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc == STORE_OK) {
        rc = store_index_get(t, id, out);
        store_txn_abort(t);
    }
    if (rc == STORE_NOTFOUND) return proto_fail(e, 404, "unknown_index", "index %u does not exist", id);
    return rc == STORE_OK ? 0 : catalog_store_fail(rc, NULL, e);
}

int catalog_next_job_id(app *a, uint32_t *out, proto_err *e)
{
    store_txn *t;
    uint32_t last = 0;
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc == STORE_OK) {
        rc = store_peek_id(t, "job", &last);
        store_txn_abort(t);
    }
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    *out = last + 1;
    return 0;
}

int catalog_get_job(app *a, uint32_t id, store_job *out, proto_err *e)
{
    store_txn *t;
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc == STORE_OK) {
        rc = store_job_get(t, id, out);
        store_txn_abort(t);
    }
    if (rc == STORE_NOTFOUND) return proto_fail(e, 404, "unknown_job", "job %u does not exist", id);
    return rc == STORE_OK ? 0 : catalog_store_fail(rc, NULL, e);
}

/* A growable array of records for the walks below. */
typedef struct rec_list {
    void *v;
    size_t n, cap, size;
    int oom;
} rec_list;

static int list_push(rec_list *l, const void *rec)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        void *g = realloc(l->v, cap * l->size);
        if (!g) {
            l->oom = 1;
            return 1;
        }
        l->v = g;
        l->cap = cap;
    }
    memcpy((char *)l->v + l->n++ * l->size, rec, l->size);
    return 0;
}

static int push_model(const store_model *r, void *l) { return list_push(l, r); }
static int push_index(const store_index *r, void *l) { return list_push(l, r); }
static int push_job(const store_job *r, void *l) { return list_push(l, r); }
static int push_dataset(const store_dataset *r, void *l) { return r->state == STORE_READY ? list_push(l, r) : 0; }

/* Runs walk(t, push, &list) in a read txn and hands the array out. */
#define CATALOG_LIST(a, each, push, type, out, n, e)                                                    \
    do {                                                                                                \
        rec_list l_ = {.size = sizeof(type)};                                                           \
        store_txn *t_;                                                                                  \
        int rc_ = store_txn_begin((a)->st, 1, &t_);                                                     \
        if (rc_ == STORE_OK) {                                                                          \
            rc_ = each(t_, push, &l_);                                                                  \
            store_txn_abort(t_);                                                                        \
        }                                                                                               \
        if (rc_ == STORE_OK && l_.oom) rc_ = STORE_ERROR;                                               \
        if (rc_ != STORE_OK) {                                                                          \
            free(l_.v);                                                                                 \
            return catalog_store_fail(rc_, NULL, e);                                                    \
        }                                                                                               \
        *(out) = l_.v;                                                                                  \
        *(n) = l_.n;                                                                                    \
        return 0;                                                                                       \
    } while (0)

int catalog_models(app *a, store_model **out, size_t *n, proto_err *e)
{
    CATALOG_LIST(a, store_model_each, push_model, store_model, out, n, e);
}

int catalog_datasets(app *a, store_dataset **out, size_t *n, proto_err *e)
{
    CATALOG_LIST(a, store_dataset_each, push_dataset, store_dataset, out, n, e);
}

int catalog_indexes(app *a, store_index **out, size_t *n, proto_err *e)
{
    CATALOG_LIST(a, store_index_each, push_index, store_index, out, n, e);
}

int catalog_jobs(app *a, store_job **out, size_t *n, proto_err *e)
{
    CATALOG_LIST(a, store_job_each, push_job, store_job, out, n, e);
}

void catalog_neuron_free(catalog_neuron *n)
{
    free(n->mai_ids);
    free(n->mai_values);
    n->mai_ids = NULL;
    n->mai_values = NULL;
}

int catalog_neuron_entry(app *a, const store_index *ix, uint32_t neuron, uint32_t mai, catalog_neuron *out,
                         proto_err *e)
{
    memset(out, 0, sizeof *out);
    if (ix->state != STORE_READY)
        return proto_fail(e, 409, "index_not_ready", "index %u is %s", ix->id,
                          ix->state == STORE_PENDING ? "being built" : "failed");
    if (ix->kind != STORE_INDEX_NPI)
        return proto_fail(e, 409, "not_a_partition_index", "index %u is a full materialization", ix->id);
    store_txn *t;
    npi_view v;
    uint8_t *pids = NULL;
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    if (catalog_index_views(t, ix, &neuron, 1, &v, e) != 0) goto fail;
    if (!(pids = malloc(v.n ? v.n : 1))) {
        proto_fail(e, 500, "internal", "out of memory");
        goto fail;
    }
    npi_unpack(&v, pids);
    for (uint32_t i = 0; i < v.n; i++) out->counts[pids[i]]++;
    out->partitions = v.partitions;
    out->mai_count = v.mai_count;
    memcpy(out->lower, v.lower, v.partitions * sizeof *v.lower);
    memcpy(out->upper, v.upper, v.partitions * sizeof *v.upper);
    out->nmai = mai < v.mai_count ? mai : v.mai_count;
    out->mai_ids = malloc((out->nmai ? out->nmai : 1) * sizeof *out->mai_ids);
    out->mai_values = malloc((out->nmai ? out->nmai : 1) * sizeof *out->mai_values);
    if (!out->mai_ids || !out->mai_values) {
        proto_fail(e, 500, "internal", "out of memory");
        goto fail;
    }
    memcpy(out->mai_ids, v.mai_ids, out->nmai * sizeof *out->mai_ids);
    memcpy(out->mai_values, v.mai_values, out->nmai * sizeof *out->mai_values);
    free(pids);
    store_txn_abort(t);
    return 0;
fail:
    free(pids);
    store_txn_abort(t);
    catalog_neuron_free(out);
    return -1;
}

int catalog_register_model(app *a, const proto_model_req *q, const char *path, registry_model **out,
                           proto_err *e)
{
    char err[1024];
    registry_model *m = NULL;
    *out = NULL;
    if ((m = registry_get(a->models, q->name))) {
        registry_release(m);
        return proto_fail(e, 409, "model_exists", "model '%s' is already registered; DELETE it first", q->name);
    }
    store_model rec = {0};
    snprintf(rec.name, sizeof rec.name, "%s", q->name);
    if (strlen(path) >= sizeof rec.path)
        return proto_fail(e, 422, "invalid_value", "field 'path' resolves to more than %zu bytes", sizeof rec.path - 1);
    memcpy(rec.path, path, strlen(path) + 1);
    rec.ndim = q->ndim;
    memcpy(rec.input_shape, q->input_shape, sizeof(int64_t) * (size_t)q->ndim);
    rec.created = clock_unix();
    /* auto: channels-last where it was measured faster (CPU); CUDA keeps
     * the layout its kernels were proven with. */
    int layout = q->layout ? q->layout : a->cfg.layout;
    rec.layout = layout ? (uint32_t)layout : strcmp(a->device_name, "cuda") == 0 ? SHIM_CONTIGUOUS : SHIM_CHANNELS_LAST;
    /* Load first (slow, may fail), then record it: a bad file leaves no trace. */
    if (registry_load(a, &rec, &m, err, sizeof err) != 0)
        return proto_fail(e, 422, "invalid_model", "cannot load '%s' as a TorchScript model: %s", q->path, err);
    catalog_lock();
    store_txn *t;
    int rc = store_txn_begin(a->st, 0, &t);
    if (rc == STORE_OK) {
        rc = store_model_put(t, &m->rec, 1); /* with the batch the load chose */
        if (rc == STORE_OK)
            rc = store_txn_commit(t);
        else
            store_txn_abort(t);
    }
    if (rc == STORE_OK) registry_insert(a->models, m);
    catalog_unlock();
    if (rc != STORE_OK) {
        registry_release(m);
        if (rc == STORE_EXISTS)
            return proto_fail(e, 409, "model_exists", "model '%s' is already registered; DELETE it first", q->name);
        return catalog_store_fail(rc, NULL, e);
    }
    log_msg("model '%s' registered from %s (batch %u, %d slot classes, %s)", rec.name, rec.path, m->batch, m->nclass,
            registry_layout_name(m));
    *out = m;
    return 0;
}

int catalog_cancel_job(app *a, uint32_t id, store_job *out, proto_err *e)
{
    if (catalog_get_job(a, id, out, e) != 0) return -1;
    if (out->state == JOB_DONE || out->state == JOB_FAILED)
        return proto_fail(e, 409, "job_finished", "job %u already %s; there is nothing to cancel", id,
                          out->state == JOB_DONE ? "finished" : "failed");
    int state;
    if (jobs_cancel(a, id, CANCEL_WAIT_S, &state) != 0)
        return proto_fail(e, 503, "busy", "job %u did not stop within %.0f s; it is still being cancelled", id,
                          CANCEL_WAIT_S);
    log_msg("job %u cancelled (%s)", id, state == 1 ? "it was queued" : state == 2 ? "it was running" : "not live");
    return catalog_get_job(a, id, out, e);
}

int catalog_classes_blob(store_txn *t, const store_dataset *d, const proto_classes *names, char **blob, size_t *len,
                         proto_err *e)
{
    if (d->has_labels) {
        const int32_t *labels;
        uint64_t nl;
        int rc = store_labels_get(t, d->id, &labels, &nl);
        if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
        int32_t lo = 0, hi = -1;
        for (uint64_t i = 0; i < nl; i++) {
            if (labels[i] < lo) lo = labels[i];
            if (labels[i] > hi) hi = labels[i];
        }
        if (lo < 0)
            return proto_fail(e, 422, "invalid_classes", "dataset '%s' has a negative label (%d): class names name "
                              "labels 0..n-1", d->name, lo);
        if ((uint64_t)hi >= names->n)
            return proto_fail(e, 422, "invalid_classes", "field 'classes' has %zu names but the labels of dataset '%s' "
                              "go up to %d: give at least %d", names->n, d->name, hi, hi + 1);
    }
    size_t total = 0;
    for (size_t i = 0; i < names->n; i++) total += strlen(names->names[i]) + 1;
    if (!(*blob = malloc(total ? total : 1))) return proto_fail(e, 500, "internal", "out of memory");
    size_t off = 0;
    for (size_t i = 0; i < names->n; i++) {
        size_t l = strlen(names->names[i]) + 1;
        memcpy(*blob + off, names->names[i], l);
        off += l;
    }
    *len = total;
    return 0;
}

int catalog_classes_set(app *a, const char *dataset, const proto_classes *names, proto_err *e)
{
    store_dataset d;
    if (catalog_dataset(a, dataset, &d, e) != 0) return -1;
    store_txn *t;
    char *blob = NULL;
    size_t len;
    int rc = store_txn_begin(a->st, 0, &t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    if (catalog_classes_blob(t, &d, names, &blob, &len, e) != 0) {
        store_txn_abort(t);
        return -1;
    }
    rc = store_classes_put(t, d.id, blob, len);
    free(blob);
    if (rc == STORE_OK)
        rc = store_txn_commit(t);
    else
        store_txn_abort(t);
    return rc == STORE_OK ? 0 : catalog_store_fail(rc, NULL, e);
}

void catalog_classes_free(catalog_classes *c)
{
    free(c->names);
    free(c->blob);
    memset(c, 0, sizeof *c);
}

int catalog_classes_get(app *a, const store_dataset *d, catalog_classes *out, proto_err *e)
{
    memset(out, 0, sizeof *out);
    store_txn *t;
    const char *p;
    size_t len;
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    rc = store_classes_get(t, d->id, &p, &len);
    if (rc == STORE_NOTFOUND) {
        store_txn_abort(t);
        return 0;
    }
    if (rc != STORE_OK || !len || p[len - 1] != 0) {
        store_txn_abort(t);
        return rc != STORE_OK ? catalog_store_fail(rc, NULL, e)
                              : proto_fail(e, 500, "store_error", "damaged class names of dataset '%s'", d->name);
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) n += p[i] == 0;
    out->blob = malloc(len);
    out->names = malloc(n * sizeof *out->names);
    if (!out->blob || !out->names) {
        store_txn_abort(t);
        catalog_classes_free(out);
        return proto_fail(e, 500, "internal", "out of memory");
    }
    memcpy(out->blob, p, len);
    store_txn_abort(t);
    for (size_t i = 0, off = 0; i < n; i++) {
        out->names[i] = out->blob + off;
        off += strlen(out->blob + off) + 1;
    }
    out->n = n;
    return 0;
}
