/* predictions.c -- see predictions.h. */
#include "predictions.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "infer.h"
#include "inputs.h"
#include "jobs.h"
#include "registry.h"

typedef struct pred_job {
    uint32_t dataset_id;
    char layer[STORE_LAYER_MAX];
} pred_job;

/* The first largest value; NaN never wins. */
static int32_t argmax(const float *v, size_t n)
{
    size_t best = 0;
    for (size_t j = 1; j < n; j++)
        if (v[j] > v[best] || (v[best] != v[best] && v[j] == v[j])) best = j;
    return (int32_t)best;
}

/* Records the end: READY with the array, or nothing at all. */
static void finish(app *a, job *j, const store_dataset *d, const char *layer, const int32_t *pred, uint64_t correct,
                   int ok, int cancelled, const char *why)
{
    store_txn *t;
    if (store_txn_begin(a->st, 0, &t) != STORE_OK) {
        log_msg("job %u: cannot record its end: %s", j->id, store_errmsg());
        return;
    }
    store_predictions p;
    int have = store_predictions_get(t, d->id, j->model, &p, NULL) == STORE_OK && p.job == j->id;
    int rc = STORE_OK;
    if (have && ok) {
        p.state = STORE_READY;
        p.correct = correct;
        rc = store_predictions_put(t, &p, pred);
    } else if (have) {
        rc = store_predictions_del(t, d->id, j->model);
    }
    store_job jr;
    if (rc == STORE_OK && store_job_get(t, j->id, &jr) == STORE_OK) {
        jr.state = ok && rc == STORE_OK ? JOB_DONE : JOB_FAILED;
        jr.done = ok ? jr.total : atomic_load(&j->done);
        jr.finished = clock_unix();
        jr.cancelled = cancelled;
        if (!ok) snprintf(jr.error, sizeof jr.error, "%s", cancelled ? "cancelled" : why);
        store_job_put(t, &jr);
    }
    if (rc != STORE_OK) {
        store_txn_abort(t);
        log_msg("job %u: cannot store the predictions of layer %s: %s", j->id, layer, store_errmsg());
        /* a job that cannot write its result fails, leaving the record to the sweep */
        if (store_txn_begin(a->st, 0, &t) == STORE_OK) {
            store_predictions_del(t, d->id, j->model);
            if (store_job_get(t, j->id, &jr) == STORE_OK) {
                jr.state = JOB_FAILED;
                snprintf(jr.error, sizeof jr.error, "%s", store_errmsg());
                store_job_put(t, &jr);
            }
            store_txn_commit(t);
        }
        return;
    }
    if (store_txn_commit(t) != STORE_OK) log_msg("job %u: cannot record its end: %s", j->id, store_errmsg());
}

static void pred_run(app *a, job *j)
{
    pred_job *pj = j->payload;
    registry_model *m = registry_get(a->models, j->model);
    store_dataset d;
    proto_err e;
    char err[512] = "";
    int32_t *pred = NULL, *labels = NULL;
    float *in = NULL, *out = NULL;
    uint32_t *ids = NULL;
    uint64_t correct = 0;
    int ok = 0;
    double t0 = clock_ms();
    store_txn *t;
    if (store_txn_begin(a->st, 0, &t) == STORE_OK) { /* QUEUED -> RUNNING */
        store_job jr;
        if (store_job_get(t, j->id, &jr) == STORE_OK) {
            jr.state = JOB_RUNNING;
            jr.started = clock_unix();
            store_job_put(t, &jr);
        }
        store_txn_commit(t);
    }
    if (!m || catalog_dataset(a, j->dataset, &d, &e) != 0 || d.id != pj->dataset_id) {
        snprintf(err, sizeof err, "model '%s' or dataset '%s' is gone", j->model, j->dataset);
        d.id = pj->dataset_id;
        goto done;
    }
    int li = shim_layer_find(m->shim, pj->layer);
    if (li < 0) {
        snprintf(err, sizeof err, "model '%s' has no layer '%s'", j->model, pj->layer);
        goto done;
    }
    size_t D = (size_t)shim_layer_at(m->shim, li)->neurons, numel = inputs_numel(&d);
    size_t chunk = (size_t)m->batch * 4;
    pred = malloc(d.count * sizeof *pred);
    in = malloc(chunk * numel * sizeof *in);
    out = malloc(chunk * D * sizeof *out);
    ids = malloc(chunk * sizeof *ids);
    if (!pred || !in || !out || !ids) {
        snprintf(err, sizeof err, "out of memory");
        goto done;
    }
    atomic_store(&j->total, d.count);
    infer_out io = {.layer = li, .dst = out};
    for (uint64_t off = 0; off < d.count; off += chunk) {
        size_t cnt = d.count - off < chunk ? (size_t)(d.count - off) : chunk;
        if (jobs_cancelled(a, j)) {
            snprintf(err, sizeof err, "%s", atomic_load(&a->stopping) ? "interrupted: the daemon stopped" : "cancelled");
            goto done;
        }
        for (size_t i = 0; i < cnt; i++) ids[i] = (uint32_t)(off + i);
        if (store_txn_begin(a->st, 1, &t) != STORE_OK) {
            snprintf(err, sizeof err, "store: %s", store_errmsg());
            goto done;
        }
        int lr = inputs_load(t, &d, ids, cnt, in, err, sizeof err);
        store_txn_abort(t);
        if (lr != 0) goto done;
        for (size_t i = 0; i < cnt; i++) ids[i] = (uint32_t)(d.first + off + i); /* global ids: their slots */
        infer_turn_begin(m);
        int ir = infer_run(a, m, ids, in, cnt, &io, 1, NULL, err, sizeof err);
        infer_turn_end(m);
        if (ir != 0) goto done;
        for (size_t i = 0; i < cnt; i++) pred[off + i] = argmax(out + i * D, D);
        atomic_store(&j->done, off + cnt);
    }
    if (d.has_labels) {
        const int32_t *lab;
        uint64_t nl;
        if (store_txn_begin(a->st, 1, &t) == STORE_OK) {
            if (store_labels_get(t, d.id, &lab, &nl) == STORE_OK && nl == d.count)
                for (uint64_t i = 0; i < nl; i++) correct += lab[i] == pred[i];
            store_txn_abort(t);
        }
    }
    ok = 1;
done:;
    int cancelled = jobs_cancelled(a, j) && !atomic_load(&a->stopping);
    finish(a, j, &d, pj->layer, pred, correct, ok, cancelled, err);
    log_msg("job %u: predictions of %s over %s at layer %s %s in %.2f s%s%s", j->id, j->model, j->dataset, pj->layer,
            ok ? "done" : cancelled ? "cancelled" : "failed", (clock_ms() - t0) / 1000, ok ? "" : ": ", ok ? "" : err);
    free(pred);
    free(labels);
    free(in);
    free(out);
    free(ids);
    registry_release(m);
}

static void pred_abandon(app *a, job *j)
{
    pred_job *pj = j->payload;
    store_dataset d = {.id = pj->dataset_id};
    finish(a, j, &d, pj->layer, NULL, 0, 0, 1, "cancelled");
}

static const job_ops PRED_OPS = {"predictions", pred_run, pred_abandon, free};

int predictions_submit(app *a, const char *model, const char *dataset, const char *layer, uint32_t job_id,
                       store_predictions *out, int *reused, proto_err *e)
{
    store_dataset d;
    registry_model *m = catalog_model(a, model, e);
    job *j = NULL;
    int rc = -1;
    *reused = 0;
    if (!m) return -1;
    if (catalog_dataset(a, dataset, &d, e) != 0 || catalog_check_fit(m, &d, e) != 0) goto out;
    int li = layer ? catalog_layer(m, layer, e) : shim_layer_count(m->shim) - 1;
    if (li < 0) goto out;
    const char *lname = shim_layer_at(m->shim, li)->name;
    catalog_lock();
    store_txn *t;
    int src = store_txn_begin(a->st, 0, &t);
    if (src != STORE_OK) {
        catalog_unlock();
        catalog_store_fail(src, NULL, e);
        goto out;
    }
    store_predictions p;
    if (store_predictions_get(t, d.id, model, &p, NULL) == STORE_OK && strcmp(p.layer, lname) == 0) {
        store_txn_abort(t);
        catalog_unlock();
        *out = p;
        *reused = 1;
        rc = 0;
        goto out;
    }
    pred_job *pj = calloc(1, sizeof *pj);
    j = jobs_new(&PRED_OPS, model, dataset);
    if (!pj || !j) {
        free(pj);
        store_txn_abort(t);
        catalog_unlock();
        proto_fail(e, 500, "internal", "out of memory");
        goto out;
    }
    pj->dataset_id = d.id;
    snprintf(pj->layer, sizeof pj->layer, "%s", lname);
    j->payload = pj;
    store_job jr = {0};
    src = store_take_id(t, "job", job_id, &jr.id);
    snprintf(jr.kind, sizeof jr.kind, "predictions");
    snprintf(jr.model, sizeof jr.model, "%s", model);
    snprintf(jr.dataset, sizeof jr.dataset, "%s", dataset);
    jr.state = JOB_QUEUED;
    jr.total = d.count;
    jr.created = clock_unix();
    memset(&p, 0, sizeof p);
    snprintf(p.model, sizeof p.model, "%s", model);
    p.dataset = d.id;
    snprintf(p.layer, sizeof p.layer, "%s", lname);
    p.state = STORE_PENDING;
    p.count = d.count;
    p.job = jr.id;
    p.created = jr.created;
    /* new predictions replace old ones of another layer: their array goes now */
    if (src == STORE_OK) {
        int drc = store_predictions_del(t, d.id, model);
        if (drc != STORE_OK && drc != STORE_NOTFOUND) src = drc;
    }
    if (src == STORE_OK) src = store_job_put(t, &jr);
    if (src == STORE_OK) src = store_predictions_put(t, &p, NULL);
    if (src == STORE_OK)
        src = store_txn_commit(t);
    else
        store_txn_abort(t);
    if (src != STORE_OK) {
        catalog_unlock();
        if (src == STORE_EXISTS)
            proto_fail(e, 409, "job_id_taken", "job id %u is taken on this daemon", job_id);
        else
            catalog_store_fail(src, NULL, e);
        goto out;
    }
    j->id = jr.id;
    atomic_store(&j->total, d.count);
    jobs_submit(a, j);
    catalog_unlock();
    j = NULL;
    *out = p;
    rc = 0;
out:
    jobs_free(j);
    registry_release(m);
    return rc;
}

int predictions_get(app *a, const char *model, const store_dataset *d, store_predictions *out, int32_t **pred,
                    proto_err *e)
{
    store_txn *t;
    const int32_t *p = NULL;
    if (pred) *pred = NULL;
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    rc = store_predictions_get(t, d->id, model, out, pred ? &p : NULL);
    if (rc == STORE_OK && out->state == STORE_READY && pred) {
        if (!p || !(*pred = malloc((out->count ? out->count : 1) * sizeof **pred))) {
            store_txn_abort(t);
            return proto_fail(e, 500, "internal", "out of memory");
        }
        memcpy(*pred, p, out->count * sizeof **pred);
    }
    store_txn_abort(t);
    if (rc == STORE_NOTFOUND || (rc == STORE_OK && out->state != STORE_READY))
        return proto_fail(e, 409, "predictions_missing",
                          "the predictions of model '%s' over dataset '%s' are %s: POST /v1/predictions "
                          "{\"model\":\"%s\",\"dataset\":\"%s\"} first",
                          model, d->name, rc == STORE_OK ? "being computed" : "not computed", model, d->name);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    return 0;
}

int predictions_delete(app *a, const char *model, const store_dataset *d, proto_err *e)
{
    store_txn *t;
    store_predictions p;
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    rc = store_predictions_get(t, d->id, model, &p, NULL);
    store_txn_abort(t);
    int state;
    if (rc == STORE_OK && p.state == STORE_PENDING && jobs_cancel(a, p.job, 60, &state) != 0)
        return proto_fail(e, 503, "busy", "the predictions job %u did not stop in time; retry", p.job);
    rc = store_txn_begin(a->st, 0, &t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    rc = store_predictions_del(t, d->id, model);
    if (rc == STORE_OK)
        rc = store_txn_commit(t);
    else
        store_txn_abort(t);
    if (rc == STORE_NOTFOUND)
        return proto_fail(e, 404, "unknown_predictions", "model '%s' has no predictions over dataset '%s'", model,
                          d->name);
    return rc == STORE_OK ? 0 : catalog_store_fail(rc, NULL, e);
}

int predictions_pick(app *a, const char *model, const store_dataset *d, const uint32_t *ids, size_t n, int32_t *out)
{
    store_txn *t;
    store_predictions rec;
    const int32_t *p = NULL;
    if (store_txn_begin(a->st, 1, &t) != STORE_OK) return 0;
    int ok = store_predictions_get(t, d->id, model, &rec, &p) == STORE_OK && rec.state == STORE_READY && p;
    for (size_t i = 0; ok && i < n; i++) out[i] = ids[i] < rec.count ? p[ids[i]] : -1;
    store_txn_abort(t);
    return ok;
}

int predictions_confusion_get(app *a, const char *model, const store_dataset *d, predictions_confusion *out,
                              proto_err *e)
{
    memset(out, 0, sizeof *out);
    store_predictions rec;
    int32_t *pred = NULL;
    if (!d->has_labels) return 0;
    if (predictions_get(a, model, d, &rec, &pred, e) != 0) return -1;
    store_txn *t;
    const int32_t *labels;
    uint64_t nl;
    int rc = store_txn_begin(a->st, 1, &t);
    if (rc == STORE_OK) rc = store_labels_get(t, d->id, &labels, &nl);
    if (rc != STORE_OK) {
        store_txn_abort(t);
        free(pred);
        return catalog_store_fail(rc, NULL, e);
    }
    int32_t hi = -1;
    for (uint64_t i = 0; i < nl && i < rec.count; i++) {
        if (labels[i] > hi && labels[i] < 1000) hi = labels[i];
        if (pred[i] > hi && pred[i] < 1000) hi = pred[i];
    }
    out->n = (size_t)(hi + 1);
    out->counts = calloc(out->n ? out->n * out->n : 1, sizeof *out->counts);
    if (!out->counts) {
        store_txn_abort(t);
        free(pred);
        return proto_fail(e, 500, "internal", "out of memory");
    }
    for (uint64_t i = 0; i < nl && i < rec.count; i++) {
        if (labels[i] < 0 || pred[i] < 0 || (size_t)labels[i] >= out->n || (size_t)pred[i] >= out->n)
            out->outside++;
        else
            out->counts[(size_t)labels[i] * out->n + (size_t)pred[i]]++;
    }
    store_txn_abort(t);
    free(pred);
    return 0;
}
