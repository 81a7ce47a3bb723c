/* query.c -- one top-k or kNN query (see query.h), in its stages:
 * resolve -> filter -> target -> plan and run -> answer. */
#include "query.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build.h"
#include "catalog.h"
#include "predictions.h"
#include "inputs.h"
#include "registry.h"
#include "source.h"

/* The engine's fetch batch when the request gives none. */
#define QUERY_BATCH 256

typedef struct qctx {
    app *a;
    const proto_query_req *q;
    registry_model *m;
    store_dataset d;
    int layer;
    const shim_layer *ly;
    uint32_t N;                  /* inputs of this daemon's slice */
    size_t G;
    uint32_t *neurons;
    uint8_t *allowed;            /* [N] or NULL = every input */
    float *target;               /* kNN: the target's group activations */
    int target_is_input;         /* kNN by input id: the engine computes target_input */
    uint32_t target_input;
    int64_t exclude;             /* local id that is no candidate, or -1 */
    source_ctx src;
    double t0, limit_s;
    eng_fetch_stats tstats;      /* the target's own computation */
    store_txn *t;                /* holds the index blobs the views point into */
    npi_view *views;
    const float **cols;
    eng_topk *heap;
    int32_t *predicted;          /* [N] the model's predictions, when it has them */
    int have_predictions;
} qctx;

static void qctx_free(qctx *c)
{
    store_txn_abort(c->t);
    free(c->views);
    free(c->cols);
    eng_topk_free(c->heap);
    free(c->allowed);
    free(c->target);
    free(c->neurons);
    free(c->predicted);
    registry_release(c->m);
}

static int oom(proto_err *e) { return proto_fail(e, 500, "internal", "out of memory"); }

/* Model, dataset, layer, the group as flat indices, k. */
static int resolve(qctx *c, proto_err *e)
{
    const proto_query_req *q = c->q;
    if (!(c->m = catalog_model(c->a, q->model, e))) return -1;
    if (catalog_dataset(c->a, q->dataset, &c->d, e) != 0) return -1;
    if ((c->layer = catalog_layer(c->m, q->layer, e)) < 0) return -1;
    if (catalog_check_fit(c->m, &c->d, e) != 0) return -1;
    c->N = (uint32_t)c->d.count;
    c->ly = shim_layer_at(c->m->shim, c->layer);
    c->G = q->neurons.n;
    if (!(c->neurons = malloc(c->G * sizeof *c->neurons))) return oom(e);
    if (proto_neurons_flatten(&q->neurons, c->ly->shape, c->ly->ndim, c->neurons, e) != 0) return -1;
    if (q->k > c->d.total)
        return proto_fail(e, 422, "k_too_large", "field 'k' is %llu but dataset '%s' has only %llu inputs",
                          (unsigned long long)q->k, c->d.name, (unsigned long long)c->d.total);
    return 0;
}

/* The candidates: filter ids (global; those of other shards' slices are
 * simply not here) and/or labels; both given = an input must match both. */
static int filter(qctx *c, proto_err *e)
{
    const proto_query_req *q = c->q;
    if (!q->has_filter) return 0;
    uint32_t N = c->N;
    if (!(c->allowed = calloc(N, 1))) return oom(e);
    if (q->nfilter_ids) {
        for (size_t i = 0; i < q->nfilter_ids; i++) {
            uint64_t id = q->filter_ids[i];
            if (id >= c->d.total)
                return proto_fail(e, 422, "invalid_filter", "filter.ids[%zu] = %llu is not an input (0..%llu)", i,
                                  (unsigned long long)id, (unsigned long long)c->d.total - 1);
            if (id >= c->d.first && id - c->d.first < N) c->allowed[id - c->d.first] = 1;
        }
    } else {
        memset(c->allowed, 1, N);
    }
    if (q->nfilter_labels) {
        if (!c->d.has_labels)
            return proto_fail(e, 422, "invalid_filter", "filter.labels: dataset '%s' has no labels", c->d.name);
        store_txn *t;
        const int32_t *labels;
        uint64_t nl;
        int rc = store_txn_begin(c->a->st, 1, &t);
        if (rc == STORE_OK) rc = store_labels_get(t, c->d.id, &labels, &nl);
        if (rc == STORE_OK && nl != N) rc = STORE_ERROR;
        if (rc != STORE_OK) {
            store_txn_abort(t);
            return catalog_store_fail(rc, NULL, e);
        }
        for (uint32_t i = 0; i < N; i++) {
            if (!c->allowed[i]) continue;
            int hit = 0;
            for (size_t j = 0; j < q->nfilter_labels && !hit; j++) hit = q->filter_labels[j] == labels[i];
            c->allowed[i] = (uint8_t)hit;
        }
        store_txn_abort(t);
    }
    if (q->nfilter_predicted || q->filter_misclassified) {
        if (!c->have_predictions) {
            store_predictions rec;
            if (predictions_get(c->a, q->model, &c->d, &rec, &c->predicted, e) != 0) return -1;
            c->have_predictions = 1;
        }
        const int32_t *labels = NULL;
        uint64_t nl = 0;
        store_txn *t = NULL;
        if (q->filter_misclassified) {
            if (!c->d.has_labels)
                return proto_fail(e, 422, "invalid_filter", "filter.misclassified: dataset '%s' has no labels",
                                  c->d.name);
            int rc = store_txn_begin(c->a->st, 1, &t);
            if (rc == STORE_OK) rc = store_labels_get(t, c->d.id, &labels, &nl);
            if (rc == STORE_OK && nl != N) rc = STORE_ERROR;
            if (rc != STORE_OK) {
                store_txn_abort(t);
                return catalog_store_fail(rc, NULL, e);
            }
        }
        for (uint32_t i = 0; i < N; i++) {
            if (!c->allowed[i]) continue;
            int hit = !q->nfilter_predicted;
            for (size_t j = 0; j < q->nfilter_predicted && !hit; j++) hit = q->filter_predicted[j] == c->predicted[i];
            if (hit && labels) hit = labels[i] != c->predicted[i];
            c->allowed[i] = (uint8_t)hit;
        }
        store_txn_abort(t);
    }
    return 0;
}

/* kNN: the target's group activations, from an input of the dataset (which
 * is then excluded unless include_target), a tensor, or given as they are. */
static int target(qctx *c, proto_err *e)
{
    const proto_query_req *q = c->q;
    c->exclude = -1;
    if (!q->knn) return 0;
    char err[512];
    if (!(c->target = malloc(c->G * sizeof *c->target))) return oom(e);
    if (q->nactivations) {
        memcpy(c->target, q->activations, c->G * sizeof *c->target);
    } else if (q->has_target_id) {
        uint64_t id = q->target_id;
        if (id >= c->d.total)
            return proto_fail(e, 422, "target_out_of_range", "field 'target' is %llu but dataset '%s' has inputs 0..%llu",
                              (unsigned long long)id, c->d.name, (unsigned long long)c->d.total - 1);
        if (id < c->d.first || id - c->d.first >= c->N)
            return proto_fail(e, 422, "target_elsewhere",
                              "input %llu is not in this daemon's slice %llu..%llu of dataset '%s': send its "
                              "activations as target",
                              (unsigned long long)id, (unsigned long long)c->d.first,
                              (unsigned long long)(c->d.first + c->N - 1), c->d.name);
        /* computed by the engine, in the same forward as the candidates its
         * cell says are nearest (or, for an index build, before the pass) */
        uint32_t tid = (uint32_t)(id - c->d.first);
        c->target_is_input = 1;
        c->target_input = tid;
        if (!q->include_target) c->exclude = tid;
    } else {
        size_t numel = inputs_numel(&c->d);
        if (q->ntensor != numel)
            return proto_fail(e, 422, "invalid_target", "target.tensor has %zu values; inputs of model '%s' have %zu",
                              q->ntensor, q->model, numel);
        double ti = clock_ms();
        if (source_run_tensors(&c->src, q->tensor, 1, c->neurons, c->G, c->target, err, sizeof err) != 0)
            return proto_fail(e, 500, "inference_failed", "%s", err);
        c->tstats.inference_ms += clock_ms() - ti;
        c->tstats.computed++;
    }
    return 0;
}

/* Candidates left: 0 is an empty_filter error on a whole dataset; a shard's
 * slice may hold none of them (the coordinator decides). */
static int check_candidates(qctx *c, proto_err *e)
{
    if (!c->q->has_filter) return 0;
    for (uint32_t i = 0; i < c->N; i++)
        if (c->allowed[i] && (int64_t)i != c->exclude) return 0;
    if (c->d.count < c->d.total) return 1;
    return proto_fail(e, 422, "empty_filter", "the filter matches no input of dataset '%s'", c->d.name);
}

/* PreprocessAll: activations read from a full materialization's stored
 * columns (cols[j] = float32[N] of group neuron j) instead of the model. */
typedef struct column_source {
    const float **cols;
    const uint32_t *group;
    size_t gsize;
} column_source;

static int column_fetch(void *ctx, const uint32_t *ids, size_t n, const uint32_t *neurons, size_t m, float *out,
                        eng_fetch_stats *st, char *err, size_t errlen)
{
    column_source *cs = ctx;
    if (neurons != cs->group || m != cs->gsize) { /* the engine always asks for the group */
        snprintf(err, errlen, "materialized source: unexpected neuron list");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < m; j++) out[i * m + j] = cs->cols[j][ids[i]];
    return 0;
}

static const char *method_name(int m)
{
    return m == ENG_NTA ? "nta" : m == ENG_BOUNDS ? "bounds" : "scan";
}

/* Picks the index and the method, and runs. */
static int execute(qctx *c, eng_query *eq, query_answer *out, proto_err *e)
{
    const proto_query_req *q = c->q;
    eng_source src = source_engine(&c->src);
    eng_stats st = {0};
    char err[512] = "";
    catalog_found f = {0};
    int rc;
    out->index_use = "none";
    if (q->method != METHOD_SCAN) {
        if ((rc = store_txn_begin(c->a->st, 1, &c->t)) != STORE_OK) return catalog_store_fail(rc, NULL, e);
        if (catalog_find_index(c->t, q->model, q->dataset, q->layer, &f, e) != 0) return -1;
        if (c->m->numerics_changed && (f.have_ready || f.have_full))
            return proto_fail(e, 409, "numerics_changed",
                              "model '%s' computes other bits on this machine than when it was registered (another "
                              "CPU, LibTorch or --threads): its indexes no longer bound its activations exactly. "
                              "Method 'scan' still answers; register it again (DELETE /v1/models/%s, then POST "
                              "/v1/models) to rebuild them",
                              q->model, q->model);
    }
    if (q->method == METHOD_MATERIALIZED) {
        if (!f.have_full)
            return proto_fail(e, 409, "not_materialized",
                              "method 'materialized' needs a full materialization of layer '%s': POST /v1/indexes "
                              "with \"kind\":\"full\" first",
                              q->layer);
        if (!(c->cols = calloc(c->G, sizeof *c->cols))) return oom(e);
        if (catalog_full_columns(c->t, &f.full, c->neurons, c->G, c->cols, e) != 0) return -1;
        column_source cs = {.cols = c->cols, .group = c->neurons, .gsize = c->G};
        eng_source msrc = {.ctx = &cs, .fetch = column_fetch};
        eq->method = ENG_SCAN;
        rc = eng_run(eq, NULL, &msrc, out->results, &out->n, &st, err, sizeof err);
        out->method = "materialized";
        out->index_use = "used";
        out->index_id = f.full.id;
    } else if (f.have_ready && q->method != METHOD_SCAN) {
        if (f.ready.count != c->N)
            return proto_fail(e, 500, "index_mismatch", "index %u covers %llu inputs, dataset has %u", f.ready.id,
                              (unsigned long long)f.ready.count, c->N);
        if (!(c->views = calloc(c->G, sizeof *c->views))) return oom(e);
        double tc = clock_ms();
        /* alone: wake the helpers for its passes; under load every core
         * is busy anyway, and a helper waiting awake would take one */
        if (atomic_load(&c->a->metrics.inflight) <= 1) eng_warm(c->N, c->G);
        if (catalog_index_views(c->t, &f.ready, c->neurons, c->G, c->views, e) != 0) return -1;
        double load_ms = clock_ms() - tc;
        rc = eng_run(eq, c->views, &src, out->results, &out->n, &st, err, sizeof err);
        st.cell_ms += load_ms;
        out->method = method_name(st.method);
        out->index_use = "used";
        out->index_id = f.ready.id;
    } else if (q->method == METHOD_SCAN || (f.have_pending && q->method == METHOD_AUTO)) {
        /* Scan requested, or an index for this layer is being built by
         * someone else: answer by brute force rather than wait. */
        eq->method = ENG_SCAN;
        rc = eng_run(eq, NULL, &src, out->results, &out->n, &st, err, sizeof err);
        out->method = "scan";
    } else if (f.have_pending) {
        return proto_fail(e, 409, "index_building",
                          "the index of layer '%s' is being built; method '%s' needs it (use \"auto\" or \"scan\", or "
                          "wait)",
                          q->layer, q->method == METHOD_NTA ? "nta" : "bounds");
    } else {
        /* No index: the pass that answers builds it (incremental indexing). */
        store_txn_abort(c->t); /* a long read txn would keep LMDB from reusing pages */
        c->t = NULL;
        build_params p = {.kind = STORE_INDEX_NPI, .mai_ratio = -1, .budget = 0.2,
                          .eager = q->has_eager ? q->eager : c->a->cfg.eager_layers};
        if (!(c->heap = eng_topk_new(q->k, q->knn))) return oom(e);
        if (eq->kind == ENG_KNN && !eq->target) { /* the pass needs the target first */
            if (source_fetch(&c->src, &c->target_input, 1, c->neurons, c->G, c->target, &c->tstats, err,
                             sizeof err) != 0)
                return c->src.cancel ? proto_fail(e, 503, "query_timeout", "the query passed its time limit")
                                     : proto_fail(e, 500, "inference_failed", "%s", err);
            eq->target = c->target;
        }
        build_answer ans = {.q = eq, .heap = c->heap, .deadline_ms = c->src.deadline_ms};
        double tb = clock_ms();
        if (build_inline(c->a, c->m, &c->d, q->layer, &p, &ans, &c->src.cancel, &out->index_id, e) != 0) return -1;
        out->n = eng_topk_finish(c->heap, out->results);
        out->method = "scan";
        out->index_use = "built";
        st.inputs_fetched = c->N;
        st.fetch.computed = c->N;
        st.fetch.inference_ms = clock_ms() - tb;
        rc = 0;
    }
    if (rc == -2 || (rc != 0 && c->src.cancel))
        return proto_fail(e, 503, "query_timeout", "the query passed its time limit of %.0f s and was cancelled",
                          c->limit_s);
    if (rc != 0) return proto_fail(e, 500, "inference_failed", "%s", err);
    out->computed = st.fetch.computed + c->tstats.computed;
    out->cache_hits = st.fetch.cache_hits + c->tstats.cache_hits;
    out->fetched = st.inputs_fetched;
    out->known = st.inputs_known;
    out->relaxed = st.inputs_relaxed;
    out->rounds = st.rounds;
    out->forwards = st.fetch.forwards + c->tstats.forwards;
    out->inference_ms = st.fetch.inference_ms + c->tstats.inference_ms;
    out->cell_ms = st.cell_ms;
    return 0;
}

/* Global ids, labels, predictions and class names for the answer. */
static int answer(qctx *c, query_answer *out, proto_err *e)
{
    if (out->n) { /* the answer shows the predictions whenever they exist */
        uint32_t *ids = malloc(out->n * sizeof *ids);
        if (!ids || !(out->predicted = malloc(out->n * sizeof *out->predicted))) {
            free(ids);
            return oom(e);
        }
        for (size_t i = 0; i < out->n; i++) ids[i] = out->results[i].input;
        if (!predictions_pick(c->a, c->q->model, &c->d, ids, out->n, out->predicted)) {
            free(out->predicted);
            out->predicted = NULL;
        }
        free(ids);
    }
    if (catalog_classes_get(c->a, &c->d, &out->classes, e) != 0) return -1;
    if (c->d.has_labels && out->n) {
        if (!c->t) {
            int rc = store_txn_begin(c->a->st, 1, &c->t);
            if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
        }
        const int32_t *labels;
        uint64_t nl;
        if (store_labels_get(c->t, c->d.id, &labels, &nl) == STORE_OK) {
            if (!(out->labels = malloc(out->n * sizeof *out->labels))) return oom(e);
            for (size_t i = 0; i < out->n; i++) out->labels[i] = out->results[i].input < nl ? labels[out->results[i].input] : 0;
        }
    }
    for (size_t i = 0; i < out->n; i++) out->results[i].input += (uint32_t)c->d.first;
    return 0;
}

int query_run(app *a, const proto_query_req *q, query_answer *out, proto_err *e)
{
    qctx c = {.a = a, .q = q, .t0 = clock_ms()};
    memset(out, 0, sizeof *out);
    out->knn = q->knn;
    int rc = -1;
    if (resolve(&c, e) != 0) goto done;
    out->inputs = c.N;
    source_init(&c.src, a, c.m, &c.d, c.layer);
    c.limit_s = q->timeout_s > 0 ? q->timeout_s : a->cfg.query_timeout_s;
    if (c.limit_s > 0) c.src.deadline_ms = c.t0 + c.limit_s * 1000;
    if (filter(&c, e) != 0 || target(&c, e) != 0) goto done;
    int none = check_candidates(&c, e);
    if (none < 0) goto done;
    if (!(out->results = malloc(q->k * sizeof *out->results))) {
        oom(e);
        goto done;
    }
    if (none) { /* a shard with no candidate: an empty answer */
        out->method = "scan";
        out->index_use = "none";
    } else {
        double *weights = q->nweights ? q->weights : NULL;
        eng_query eq = {
            .kind = q->knn ? ENG_KNN : ENG_TOPK,
            .agg = q->agg,
            .metric = q->metric,
            .method = q->method == METHOD_NTA ? ENG_NTA : q->method == METHOD_BOUNDS ? ENG_BOUNDS
                                                       : q->method == METHOD_SCAN ? ENG_SCAN : ENG_AUTO,
            .n = c.N,
            .k = q->k,
            .gsize = c.G,
            .neurons = c.neurons,
            .weights = weights,
            .target = c.target_is_input ? NULL : c.target,
            .target_is_input = c.target_is_input,
            .target_input = c.target_input,
            .exclude = c.exclude,
            .allowed = c.allowed,
            .batch = q->batch ? q->batch : QUERY_BATCH,
            /* a multiple of the inference batch (a smaller fetch would be padded) */
            .first_batch = (uint32_t)(((q->k + q->k / 2) / c.m->batch + 1) * c.m->batch),
            .cancel = &c.src.cancel,
            .has_threshold = q->has_threshold,
            .threshold = q->threshold,
        };
        if (execute(&c, &eq, out, e) != 0) goto done;
    }
    if (answer(&c, out, e) != 0) goto done;
    atomic_fetch_add(q->knn ? &a->metrics.queries_knn : &a->metrics.queries_topk, 1);
    rc = 0;
done:
    out->elapsed_ms = clock_ms() - c.t0;
    qctx_free(&c);
    if (rc) query_answer_free(out);
    return rc;
}

void query_answer_free(query_answer *ans)
{
    free(ans->results);
    free(ans->labels);
    free(ans->predicted);
    catalog_classes_free(&ans->classes);
    ans->results = NULL;
    ans->labels = NULL;
    ans->predicted = NULL;
    ans->n = 0;
}

static int by_value_desc(const void *pa, const void *pb)
{
    const query_activation *x = pa, *y = pb;
    if (x->value != y->value) return x->value > y->value ? -1 : 1;
    return x->neuron < y->neuron ? -1 : x->neuron > y->neuron;
}

int query_activations(app *a, const store_dataset *d, uint64_t id, const proto_activations_req *r,
                      query_activation **out, size_t *n, shim_layer *ly, proto_err *e)
{
    registry_model *m = catalog_model(a, r->model, e);
    float *vals = NULL;
    uint32_t *neurons = NULL;
    int rc = -1;
    *out = NULL;
    *n = 0;
    if (!m) return -1;
    int li = catalog_layer(m, r->layer, e);
    if (li < 0 || catalog_check_fit(m, d, e) != 0) goto done;
    *ly = *shim_layer_at(m->shim, li);
    size_t D = (size_t)ly->neurons, cnt = r->nneurons ? r->nneurons : D;
    if (r->nneurons) {
        if (!(neurons = malloc(cnt * sizeof *neurons))) goto oom;
        for (size_t j = 0; j < cnt; j++) {
            if (r->neurons[j] >= D) {
                proto_fail(e, 422, "neuron_out_of_range", "neurons: entry %zu = %llu; layer '%s' has neurons 0..%zu", j,
                           (unsigned long long)r->neurons[j], r->layer, D - 1);
                goto done;
            }
            neurons[j] = (uint32_t)r->neurons[j];
        }
    }
    if (!(vals = malloc(cnt * sizeof *vals)) || !(*out = malloc(cnt * sizeof **out))) goto oom;
    source_ctx src;
    source_init(&src, a, m, d, li);
    uint32_t id32 = (uint32_t)id;
    char err[512];
    eng_fetch_stats st = {0};
    if (source_fetch(&src, &id32, 1, neurons, cnt, vals, &st, err, sizeof err) != 0) {
        proto_fail(e, 500, "inference_failed", "%s", err);
        goto done;
    }
    for (size_t j = 0; j < cnt; j++) (*out)[j] = (query_activation){neurons ? neurons[j] : (uint32_t)j, vals[j]};
    if (!r->nneurons) {
        qsort(*out, cnt, sizeof **out, by_value_desc);
        if (cnt > r->top) cnt = (size_t)r->top;
    }
    *n = cnt;
    rc = 0;
    goto done;
oom:
    proto_fail(e, 500, "internal", "out of memory");
done:
    if (rc) {
        free(*out);
        *out = NULL;
    }
    free(vals);
    free(neurons);
    registry_release(m);
    return rc;
}
