/* jobs.c -- index build jobs and the build pass. */
#include "jobs.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder_core.h"
#include "npi.h"

typedef struct job {
    uint32_t id;
    char model[STORE_NAME_MAX + 1];
    char dataset[STORE_NAME_MAX + 1];
    int nlayers;
    char layers[BUILD_MAX_LAYERS][STORE_LAYER_MAX];
    uint32_t index_ids[BUILD_MAX_LAYERS];
    build_params p;
    atomic_ullong done, total;
    double started_ms;
    atomic_int cancel;
    struct job *next;
} job;

typedef struct jobs {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job *queue;                  /* FIFO of queued jobs */
    job *running;                /* jobs whose pass is under way (workers and inline) */
    pthread_t workers[64];
    int nworkers;
    int stop;
} jobs;

/* ---- parameters ---- */

void build_params_for_budget(double budget, build_params *out)
{
    /* Ids cost bits/32 of full materialization, the MAI 2*mai_ratio (id +
     * value per entry). Give ids about 62% of the budget (16 partitions at
     * the default 0.2, the paper's setting) and the MAI what is left, in
     * whole percent, keeping 2% of the budget for headers and bounds. */
    out->kind = STORE_INDEX_NPI;
    int bits = (int)floor(budget * 32 * 0.625);
    if (bits < 1) bits = 1;
    if (bits > 8) bits = 8;
    out->partitions = 1u << bits;
    double mai = (budget * 0.98 - bits / 32.0) / 2;
    mai = floor(mai * 100 + 1e-9) / 100;
    if (mai < 0) mai = 0;
    if (mai > 0.5) mai = 0.5;
    out->mai_ratio = mai;
}

double build_params_ratio(const build_params *p, uint64_t n)
{
    uint32_t m = npi_mai_count((uint32_t)n, p->mai_ratio);
    return (double)npi_blob_size((uint32_t)n, p->partitions, m) / (4.0 * (double)n);
}

/* ---- the pass ---- */

typedef struct emit_ctx {
    app *a;
    store_txn *txn;
    uint32_t index;
    uint64_t bytes;
    uint64_t pending;
    int store_rc;
    char msg[256];               /* why a write failed (bcore_finish only says "stopped") */
} emit_ctx;

/* Blobs go out in write transactions of about 16 MiB: LMDB holds a write
 * transaction's dirty pages in memory (malloc'd), and other writers wait for
 * it. Not larger: 64 MiB of dirty pages outgrow the thread's first malloc
 * heap, glibc unmaps the extra heaps at every commit, and the next
 * transaction faults fresh memory in again (measured on a pool1 build: puts
 * took 0.8 s at 64 MiB, 0.06-0.12 s at 16 MiB; commits 0.6 s either way). */
static int emit_blob(uint64_t neuron, const void *blob, size_t len, void *arg)
{
    emit_ctx *x = arg;
    int rc = store_neuron_put(x->txn, x->index, (uint32_t)neuron, blob, len);
    if (rc == STORE_OK) {
        x->bytes += len;
        x->pending += len;
        if (x->pending < (16u << 20)) return 0;
        x->pending = 0;
        rc = store_txn_commit(x->txn);
        x->txn = NULL;
        if (rc == STORE_OK) rc = store_txn_begin(x->a->st, 0, &x->txn);
        if (rc == STORE_OK) return 0;
    }
    x->store_rc = rc;
    snprintf(x->msg, sizeof x->msg, "%s", rc == STORE_FULL ? "the store is full (LMDB map size reached)"
                                                           : store_errmsg());
    return 1;
}

/* One pass over the dataset: every input at every layer of the build, each
 * layer into its builder core, and the query's candidates into ans->heap. */
static int build_pass(app *a, app_model *m, const store_dataset *d, int nlayers, const int *shim_layers,
                      const uint32_t *index_ids, const build_params *p, job *j, build_answer *ans,
                      const volatile int *cancel, int *store_rc, char *err, size_t errlen)
{
    int rc = -1;
    uint32_t n = (uint32_t)d->count;
    size_t numel = app_dataset_numel(d);
    size_t chunk = (size_t)(a->cfg.batch ? a->cfg.batch : 64) * 4;
    bcore *bc[BUILD_MAX_LAYERS] = {0};
    float *outs[BUILD_MAX_LAYERS] = {0};
    float *in = NULL, *gx = NULL;
    uint32_t *ids = NULL;
    store_txn *t = NULL;
    uint32_t mai = npi_mai_count(n, p->mai_ratio);
    /* phase times for the log: where a build's time beyond inference goes */
    double t_load = 0, t_infer = 0, t_add = 0, t_mark;
    int threads = a->cfg.threads > 0 ? a->cfg.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    *store_rc = STORE_OK;

    /* Layers that fit whole stay in memory, the others spill (see bcore_plan_budgets). */
    uint64_t layer_bytes[BUILD_MAX_LAYERS];
    size_t budgets[BUILD_MAX_LAYERS];
    for (int l = 0; l < nlayers; l++)
        layer_bytes[l] = (uint64_t)n * shim_layer_at(m->shim, shim_layers[l])->neurons * sizeof(float);
    bcore_plan_budgets(a->cfg.build_memory_mb << 20, nlayers, layer_bytes, budgets);
    for (int l = 0; l < nlayers; l++) {
        const shim_layer *ly = shim_layer_at(m->shim, shim_layers[l]);
        size_t budget = budgets[l];
        if (bcore_new(n, (uint64_t)ly->neurons, p->partitions, mai, budget, a->cfg.data_dir, &bc[l], err,
                      errlen) != 0)
            goto fail;
        if (p->kind == STORE_INDEX_FULL) bcore_set_raw(bc[l], 1);
        bcore_set_transpose_threads(bc[l], threads > 1 ? 2 : 1);
        outs[l] = malloc(chunk * (size_t)ly->neurons * sizeof(float));
        if (!outs[l]) goto oom;
    }
    in = malloc(chunk * numel * sizeof(float));
    ids = malloc(chunk * sizeof *ids);
    if (ans) gx = malloc(ans->q->gsize * sizeof *gx);
    if (!in || !ids || (ans && !gx)) goto oom;
    if (j) atomic_store(&j->total, n);

    for (uint32_t off = 0; off < n; off += (uint32_t)chunk) {
        uint32_t cnt = n - off < chunk ? n - off : (uint32_t)chunk;
        if ((cancel && *cancel) || (j && atomic_load(&j->cancel)) || atomic_load(&a->stopping)) {
            snprintf(err, errlen, "cancelled");
            goto fail;
        }
        if (ans && ans->deadline_ms > 0 && app_now_ms() > ans->deadline_ms) {
            ans->timed_out = 1;
            snprintf(err, errlen, "time limit reached");
            goto fail;
        }
        for (uint32_t i = 0; i < cnt; i++) ids[i] = off + i;
        t_mark = app_now_ms();
        if (store_txn_begin(a->st, 1, &t) != STORE_OK) {
            snprintf(err, errlen, "store: %s", store_errmsg());
            goto fail;
        }
        if (app_inputs_load(t, d, ids, cnt, in, err, errlen) != 0) goto fail;
        store_txn_abort(t);
        t = NULL;
        t_load += app_now_ms() - t_mark;
        app_model_run_begin(m);
        t_mark = app_now_ms();
        int ir = app_infer(a, m, ids, in, cnt, shim_layers, nlayers, outs, err, errlen);
        t_infer += app_now_ms() - t_mark;
        app_model_run_end(m);
        if (ir != 0) goto fail;
        t_mark = app_now_ms();
        for (int l = 0; l < nlayers; l++)
            if (bcore_add(bc[l], outs[l], off, cnt, err, errlen) != 0) goto fail;
        t_add += app_now_ms() - t_mark;
        if (ans) {
            const eng_query *q = ans->q;
            size_t D = (size_t)shim_layer_at(m->shim, shim_layers[ans->layer_slot])->neurons;
            const float *rows = outs[ans->layer_slot];
            for (uint32_t i = 0; i < cnt; i++) {
                uint32_t id = off + i;
                if ((int64_t)id == q->exclude || (q->allowed && !q->allowed[id])) continue;
                for (size_t g = 0; g < q->gsize; g++) gx[g] = rows[i * D + q->neurons[g]];
                eng_topk_push(ans->heap, id, eng_score(q, gx));
                ans->scored++;
            }
        }
        if (j) atomic_store(&j->done, (unsigned long long)off + cnt);
    }
    /* Inference is done; free its buffers before the sort needs memory. */
    for (int l = 0; l < nlayers; l++) {
        free(outs[l]);
        outs[l] = NULL;
    }
    app_log("build pass over %u inputs: load %.0f ms, inference %.0f ms, into the builders %.0f ms", n, t_load,
            t_infer, t_add);
    for (int l = 0; l < nlayers; l++) {
        t_mark = app_now_ms();
        emit_ctx x = {.a = a, .index = index_ids[l]};
        if (store_txn_begin(a->st, 0, &x.txn) != STORE_OK) {
            snprintf(err, errlen, "store: %s", store_errmsg());
            goto fail;
        }
        int r = bcore_finish(bc[l], threads, emit_blob, &x, err, errlen);
        if (r == 0) {
            int crc = store_txn_commit(x.txn);
            x.txn = NULL;
            if (crc != STORE_OK) {
                x.store_rc = crc;
                snprintf(err, errlen, "%s", crc == STORE_FULL ? "the store is full (LMDB map size reached)"
                                                             : store_errmsg());
                r = -1;
            }
        }
        store_txn_abort(x.txn);
        if (r != 0) {
            if (x.store_rc != STORE_OK) snprintf(err, errlen, "%s", x.msg);
            *store_rc = x.store_rc;
            goto fail;
        }
        /* Record the size in the index record now; READY comes at the end. */
        store_txn *u;
        store_index ix;
        if (store_txn_begin(a->st, 0, &u) == STORE_OK) {
            if (store_index_get(u, index_ids[l], &ix) == STORE_OK) {
                ix.bytes = x.bytes;
                store_index_put(u, &ix);
            }
            store_txn_commit(u);
        }
        app_log("index %u: layer built in %.0f ms, %llu bytes, peak %zu activation bytes%s", index_ids[l],
                app_now_ms() - t_mark, (unsigned long long)x.bytes, bcore_peak_bytes(bc[l]),
                bcore_spilled(bc[l]) ? " (spilled)" : "");
        bcore_free(bc[l]);
        bc[l] = NULL;
    }
    rc = 0;
    goto fail;
oom:
    snprintf(err, errlen, "out of memory for the build buffers");
fail:
    store_txn_abort(t);
    for (int l = 0; l < nlayers; l++) {
        bcore_free(bc[l]);
        free(outs[l]);
    }
    free(in);
    free(ids);
    free(gx);
    return rc;
}

/* ---- records ---- */

static int create_records(app *a, const char *model, const char *dataset, const char *const *layers,
                          int nlayers, const build_params *p, uint64_t n, uint64_t *neurons, int state,
                          uint32_t *job_id, uint32_t *index_ids, proto_err *e)
{
    store_txn *t;
    if (store_txn_begin(a->st, 0, &t) != STORE_OK)
        return proto_fail(e, 500, "store_error", "store: %s", store_errmsg());
    store_job jr = {0};
    int rc = store_next_id(t, "job", &jr.id);
    snprintf(jr.kind, sizeof jr.kind, "%s", p->kind == STORE_INDEX_FULL ? "materialize" : "index");
    jr.state = state;
    jr.total = n;
    jr.created = app_unix_now();
    if (state == JOB_RUNNING) jr.started = jr.created;
    jr.nindexes = (uint32_t)nlayers;
    for (int l = 0; l < nlayers && rc == STORE_OK; l++) {
        store_index ix = {0};
        rc = store_next_id(t, "index", &ix.id);
        ix.kind = p->kind;
        snprintf(ix.model, sizeof ix.model, "%s", model);
        snprintf(ix.dataset, sizeof ix.dataset, "%s", dataset);
        snprintf(ix.layer, sizeof ix.layer, "%s", layers[l]);
        ix.state = STORE_PENDING;
        ix.partitions = p->kind == STORE_INDEX_FULL ? 0 : p->partitions;
        ix.mai_ratio = p->kind == STORE_INDEX_FULL ? 1.0f : (float)p->mai_ratio;
        ix.count = n;
        ix.neurons = neurons[l];
        ix.full_bytes = 4 * n * neurons[l];
        ix.job = jr.id;
        ix.created = app_unix_now();
        if (rc == STORE_OK) rc = store_index_put(t, &ix);
        index_ids[l] = ix.id;
        jr.indexes[l] = ix.id;
    }
    if (rc == STORE_OK) rc = store_job_put(t, &jr);
    if (rc == STORE_OK) {
        rc = store_txn_commit(t);
    } else {
        store_txn_abort(t);
    }
    if (rc == STORE_FULL) return proto_fail(e, 507, "store_full", "the store is full (LMDB map size reached)");
    if (rc != STORE_OK) return proto_fail(e, 500, "store_error", "store: %s", store_errmsg());
    *job_id = jr.id;
    return 0;
}

/* Marks the job and its indexes done or failed, in one transaction. A failed
 * index keeps its record (state failed, with the reason) and loses its blobs. */
static void finish_records(app *a, uint32_t job_id, const uint32_t *index_ids, int nlayers, int ok,
                           const char *why, double build_s)
{
    store_txn *t;
    if (store_txn_begin(a->st, 0, &t) != STORE_OK) return;
    for (int l = 0; l < nlayers; l++) {
        store_index ix;
        if (store_index_get(t, index_ids[l], &ix) != STORE_OK) continue;
        ix.build_s = build_s;
        if (ok) {
            ix.state = STORE_READY;
            store_index_put(t, &ix);
        } else {
            ix.state = STORE_FAILED;
            ix.bytes = 0;
            snprintf(ix.error, sizeof ix.error, "%s", why);
            store_index_del(t, ix.id); /* record and blobs */
            store_index_put(t, &ix);
        }
    }
    store_job jr;
    if (store_job_get(t, job_id, &jr) == STORE_OK) {
        jr.state = ok ? JOB_DONE : JOB_FAILED;
        jr.done = ok ? jr.total : jr.done;
        jr.finished = app_unix_now();
        if (!ok) snprintf(jr.error, sizeof jr.error, "%s", why);
        store_job_put(t, &jr);
    }
    if (store_txn_commit(t) != STORE_OK) app_log("job %u: cannot record its end: %s", job_id, store_errmsg());
}

static int resolve_layers(app_model *m, const char (*names)[STORE_LAYER_MAX], int n, int *out)
{
    for (int l = 0; l < n; l++)
        if ((out[l] = shim_layer_find(m->shim, names[l])) < 0) return -1;
    return 0;
}

static void run_job(app *a, job *j)
{
    char err[512] = "";
    int ok = 0, store_rc = STORE_OK;
    double t0 = app_now_ms();
    int shim_layers[BUILD_MAX_LAYERS];
    app_model *m = app_model_get(a, j->model);
    store_dataset d;
    store_txn *t;
    int have_ds = 0;
    if (store_txn_begin(a->st, 1, &t) == STORE_OK) {
        have_ds = store_dataset_get(t, j->dataset, &d) == STORE_OK && d.state == STORE_READY;
        store_txn_abort(t);
    }
    /* QUEUED -> RUNNING */
    if (store_txn_begin(a->st, 0, &t) == STORE_OK) {
        store_job jr;
        if (store_job_get(t, j->id, &jr) == STORE_OK) {
            jr.state = JOB_RUNNING;
            jr.started = app_unix_now();
            store_job_put(t, &jr);
        }
        store_txn_commit(t);
    }
    if (!m)
        snprintf(err, sizeof err, "model '%s' is not loaded", j->model);
    else if (!have_ds)
        snprintf(err, sizeof err, "dataset '%s' is gone", j->dataset);
    else if (resolve_layers(m, (const char (*)[STORE_LAYER_MAX])j->layers, j->nlayers, shim_layers) != 0)
        snprintf(err, sizeof err, "a layer is not in model '%s'", j->model);
    else
        ok = build_pass(a, m, &d, j->nlayers, shim_layers, j->index_ids, &j->p, j, NULL, NULL, &store_rc, err,
                        sizeof err) == 0;
    double secs = (app_now_ms() - t0) / 1000;
    finish_records(a, j->id, j->index_ids, j->nlayers, ok, err, secs);
    app_log("job %u: index build %s in %.2f s%s%s", j->id, ok ? "done" : "failed", secs, ok ? "" : ": ", ok ? "" : err);
    app_model_put(m);
}

static void *worker(void *arg)
{
    app *a = arg;
    jobs *J = a->jobs;
    pthread_mutex_lock(&J->mu);
    for (;;) {
        while (!J->stop && !J->queue) pthread_cond_wait(&J->cv, &J->mu);
        if (J->stop) break;
        job *j = J->queue;
        J->queue = j->next;
        j->next = J->running;
        J->running = j;
        j->started_ms = app_now_ms();
        pthread_mutex_unlock(&J->mu);
        run_job(a, j);
        pthread_mutex_lock(&J->mu);
        for (job **pp = &J->running; *pp; pp = &(*pp)->next)
            if (*pp == j) {
                *pp = j->next;
                break;
            }
        free(j);
    }
    pthread_mutex_unlock(&J->mu);
    return NULL;
}

int jobs_start(app *a, char *err, size_t errlen)
{
    jobs *J = calloc(1, sizeof *J);
    if (!J) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_mutex_init(&J->mu, NULL);
    pthread_cond_init(&J->cv, NULL);
    a->jobs = J;
    for (int i = 0; i < a->cfg.max_builds && i < 64; i++) {
        if (pthread_create(&J->workers[i], NULL, worker, a) != 0) {
            snprintf(err, errlen, "cannot start a build worker");
            return -1;
        }
        J->nworkers++;
    }
    return 0;
}

void jobs_cancel_all(app *a)
{
    jobs *J = a->jobs;
    if (!J) return;
    pthread_mutex_lock(&J->mu);
    for (job *j = J->running; j; j = j->next) atomic_store(&j->cancel, 1);
    pthread_mutex_unlock(&J->mu);
}

void jobs_stop(app *a)
{
    jobs *J = a->jobs;
    if (!J) return;
    pthread_mutex_lock(&J->mu);
    J->stop = 1;
    for (job *j = J->running; j; j = j->next) atomic_store(&j->cancel, 1);
    pthread_cond_broadcast(&J->cv);
    pthread_mutex_unlock(&J->mu);
    for (int i = 0; i < J->nworkers; i++) pthread_join(J->workers[i], NULL);
    /* Jobs still queued stay QUEUED in the store; the next start marks them
     * failed (interrupted), like a crash would. */
    while (J->queue) {
        job *j = J->queue;
        J->queue = j->next;
        free(j);
    }
    pthread_mutex_destroy(&J->mu);
    pthread_cond_destroy(&J->cv);
    free(J);
    a->jobs = NULL;
}

int jobs_submit_index(app *a, const char *model, const char *dataset, const char *const *layer_names,
                      int nlayers, const build_params *p, uint32_t *job_id, uint32_t *index_ids,
                      proto_err *e)
{
    app_model *m = app_model_get(a, model);
    if (!m) return proto_fail(e, 404, "unknown_model", "model '%s' is not registered", model);
    uint64_t neurons[BUILD_MAX_LAYERS];
    store_dataset d;
    store_txn *t;
    int rc = -1;
    job *j = NULL;
    if (store_txn_begin(a->st, 1, &t) != STORE_OK) {
        proto_fail(e, 500, "store_error", "store: %s", store_errmsg());
        goto out;
    }
    int found = store_dataset_get(t, dataset, &d) == STORE_OK && d.state == STORE_READY;
    store_txn_abort(t);
    if (!found) {
        proto_fail(e, 404, "unknown_dataset", "dataset '%s' does not exist", dataset);
        goto out;
    }
    if (d.count == 0 || d.count > UINT32_MAX) {
        proto_fail(e, 422, "invalid_dataset", "dataset '%s' has %llu inputs; an index needs 1..2^32-1",
                   dataset, (unsigned long long)d.count);
        goto out;
    }
    for (int l = 0; l < nlayers; l++) {
        int li = shim_layer_find(m->shim, layer_names[l]);
        if (li < 0) {
            proto_fail(e, 404, "unknown_layer", "model '%s' has no layer '%s'", model, layer_names[l]);
            goto out;
        }
        neurons[l] = (uint64_t)shim_layer_at(m->shim, li)->neurons;
    }
    int64_t ishape[SHIM_MAX_DIMS];
    int indim = shim_input_shape(m->shim, ishape);
    if ((size_t)shim_input_numel(m->shim) != app_dataset_numel(&d)) {
        (void)indim;
        proto_fail(e, 422, "shape_mismatch", "dataset '%s' inputs have %zu elements; model '%s' takes %lld",
                   dataset, app_dataset_numel(&d), model, (long long)shim_input_numel(m->shim));
        goto out;
    }
    j = calloc(1, sizeof *j);
    if (!j) {
        proto_fail(e, 500, "internal", "out of memory");
        goto out;
    }
    if (create_records(a, model, dataset, layer_names, nlayers, p, d.count, neurons, JOB_QUEUED, job_id,
                       index_ids, e) != 0)
        goto out;
    j->id = *job_id;
    snprintf(j->model, sizeof j->model, "%s", model);
    snprintf(j->dataset, sizeof j->dataset, "%s", dataset);
    j->nlayers = nlayers;
    for (int l = 0; l < nlayers; l++) {
        snprintf(j->layers[l], sizeof j->layers[l], "%s", layer_names[l]);
        j->index_ids[l] = index_ids[l];
    }
    j->p = *p;
    atomic_store(&j->total, d.count);
    jobs *J = a->jobs;
    pthread_mutex_lock(&J->mu);
    job **pp = &J->queue;
    while (*pp) pp = &(*pp)->next;
    *pp = j;
    pthread_cond_signal(&J->cv);
    pthread_mutex_unlock(&J->mu);
    j = NULL;
    rc = 0;
out:
    free(j);
    app_model_put(m);
    return rc;
}

int jobs_build_inline(app *a, app_model *m, const store_dataset *d, const char *layer,
                      const build_params *p, build_answer *ans, const volatile int *cancel,
                      uint32_t *index_id, proto_err *e)
{
    int li = shim_layer_find(m->shim, layer);
    if (li < 0) return proto_fail(e, 404, "unknown_layer", "model '%s' has no layer '%s'", m->name, layer);
    uint64_t neurons = (uint64_t)shim_layer_at(m->shim, li)->neurons;
    uint32_t job_id;
    const char *names[1] = {layer};
    if (create_records(a, m->name, d->name, names, 1, p, d->count, &neurons, JOB_RUNNING, &job_id, index_id, e) != 0)
        return -1;
    job *j = calloc(1, sizeof *j);
    if (!j) return proto_fail(e, 500, "internal", "out of memory");
    j->id = job_id;
    j->started_ms = app_now_ms();
    j->nlayers = 1;
    snprintf(j->layers[0], sizeof j->layers[0], "%s", layer);
    j->index_ids[0] = *index_id;
    atomic_store(&j->total, d->count);
    jobs *J = a->jobs;
    pthread_mutex_lock(&J->mu);
    j->next = J->running;
    J->running = j;
    pthread_mutex_unlock(&J->mu);

    char err[512] = "";
    int store_rc;
    ans->layer_slot = 0;
    double t0 = app_now_ms();
    int ok = build_pass(a, m, d, 1, &li, index_id, p, j, ans, cancel, &store_rc, err, sizeof err) == 0;
    double secs = (app_now_ms() - t0) / 1000;
    finish_records(a, job_id, index_id, 1, ok, err, secs);
    app_log("job %u: inline index build of %s/%s/%s %s in %.2f s", job_id, m->name, d->name, layer,
            ok ? "done" : "failed", secs);

    pthread_mutex_lock(&J->mu);
    for (job **pp = &J->running; *pp; pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    pthread_mutex_unlock(&J->mu);
    int cancelled = atomic_load(&j->cancel) || (cancel && *cancel);
    free(j);
    if (ok) return 0;
    if (ans->timed_out)
        return proto_fail(e, 503, "query_timeout", "the query passed its time limit while building the index of "
                          "layer '%s' and was cancelled; no index was kept", layer);
    if (cancelled) return proto_fail(e, 503, "query_cancelled", "the query was cancelled: %s", err);
    if (store_rc == STORE_FULL) return proto_fail(e, 507, "store_full", "%s", err);
    return proto_fail(e, 500, "build_failed", "building the index failed: %s", err);
}

int jobs_progress(app *a, uint32_t id, uint64_t *done, uint64_t *total, double *eta_s)
{
    jobs *J = a->jobs;
    int rc = -1;
    pthread_mutex_lock(&J->mu);
    for (job *j = J->running; j; j = j->next)
        if (j->id == id) {
            *done = atomic_load(&j->done);
            *total = atomic_load(&j->total);
            double el = (app_now_ms() - j->started_ms) / 1000;
            *eta_s = *done ? el / (double)*done * (double)(*total - *done) : -1;
            rc = 0;
        }
    pthread_mutex_unlock(&J->mu);
    return rc;
}

void jobs_cancel_index(app *a, uint32_t index_id)
{
    jobs *J = a->jobs;
    pthread_mutex_lock(&J->mu);
    for (int pass = 0; pass < 2; pass++)
        for (job **pp = pass ? &J->running : &J->queue; *pp;) {
            job *j = *pp;
            int hit = 0;
            for (int l = 0; l < j->nlayers; l++)
                if (j->index_ids[l] == index_id) hit = 1;
            if (hit && !pass) { /* queued: drop it; its records are failed by the caller */
                *pp = j->next;
                free(j);
                continue;
            }
            if (hit) atomic_store(&j->cancel, 1);
            pp = &j->next;
        }
    pthread_mutex_unlock(&J->mu);
}
