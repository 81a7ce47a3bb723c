/* api_query.c -- POST /v1/query/topk and /v1/query/knn.
 *
 * Resolves the request against the catalog, reads the group's index entries
 * zero-copy inside one LMDB read transaction, and runs the engine over the
 * model-behind-the-cache source. A layer with no index gets one built by the
 * pass that answers the query (incremental indexing, stats.index "built").
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "engine.h"
#include "jobs.h"
#include "proto.h"
#include "source.h"

/* The source with a deadline: past it, the query is cancelled at the next
 * batch (a query never runs unbounded, and nothing is left half-done). */
typedef struct timed_source {
    source_ctx src;
    double deadline_ms;          /* 0 = none */
    volatile int cancel;
} timed_source;

static int timed_fetch(void *ctx, const uint32_t *ids, size_t n, const uint32_t *neurons, size_t m, float *out,
                       eng_fetch_stats *st, char *err, size_t errlen)
{
    timed_source *ts = ctx;
    if (ts->deadline_ms > 0 && app_now_ms() > ts->deadline_ms) {
        ts->cancel = 1;
        snprintf(err, errlen, "time limit reached");
        return -1;
    }
    return source_fetch(&ts->src, ids, n, neurons, m, out, st, err, errlen);
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
    column_source *c = ctx;
    if (neurons != c->group || m != c->gsize) { /* the engine always asks for the group */
        snprintf(err, errlen, "materialized source: unexpected neuron list");
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < m; j++) out[i * m + j] = c->cols[j][ids[i]];
    return 0;
}

typedef struct found_index {
    int have_ready, have_pending, have_full;
    store_index ready, full;
    const char *model, *dataset, *layer;
} found_index;

static int find_ix(const store_index *ix, void *arg)
{
    found_index *f = arg;
    if (strcmp(ix->model, f->model) || strcmp(ix->dataset, f->dataset) || strcmp(ix->layer, f->layer)) return 0;
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

static const char *method_name(int m)
{
    return m == ENG_NTA ? "nta" : m == ENG_BOUNDS ? "bounds" : m == ENG_SCAN ? "scan" : m == -1 ? "materialized" : "auto";
}

static void run_query(http_req *r, int knn)
{
    app *a = r->app;
    proto_query_req q = {0};
    proto_err e;
    app_model *m = NULL;
    store_dataset d;
    uint32_t *neurons = NULL;
    double *weights = NULL;
    float *target = NULL, *trow = NULL;
    uint8_t *allowed = NULL;
    eng_result *res = NULL;
    npi_view *views = NULL;
    void **copies = NULL;
    store_txn *t = NULL;
    eng_topk *heap = NULL;
    size_t nres = 0;
    double t0 = app_now_ms();

    if (proto_parse_query(r->body, r->body_len, knn, &q, &e) != 0) goto perr;
    if (!(m = api_find_model(r, q.model))) goto out;
    if (api_find_dataset(r, q.dataset, &d) != 0) goto out;
    int li = shim_layer_find(m->shim, q.layer);
    if (li < 0) {
        proto_fail(&e, 404, "unknown_layer", "model '%s' has no layer '%s'", q.model, q.layer);
        goto perr;
    }
    size_t numel = app_dataset_numel(&d);
    if ((size_t)shim_input_numel(m->shim) != numel) {
        proto_fail(&e, 422, "shape_mismatch", "dataset '%s' inputs have %zu elements; model '%s' takes %lld", d.name,
                   numel, q.model, (long long)shim_input_numel(m->shim));
        goto perr;
    }
    if (d.count == 0 || d.count > UINT32_MAX) {
        proto_fail(&e, 422, "invalid_dataset", "dataset '%s' has %llu inputs", d.name, (unsigned long long)d.count);
        goto perr;
    }
    uint32_t N = (uint32_t)d.count;
    const shim_layer *ly = shim_layer_at(m->shim, li);
    size_t G = q.neurons.n;
    neurons = malloc(G * sizeof *neurons);
    if (!neurons) goto oom;
    if (proto_neurons_flatten(&q.neurons, ly->shape, ly->ndim, neurons, &e) != 0) goto perr;
    if (q.k > N) {
        proto_fail(&e, 422, "k_too_large", "field 'k' is %llu but dataset '%s' has only %u inputs",
                   (unsigned long long)q.k, d.name, N);
        goto perr;
    }
    if (q.nweights) {
        weights = malloc(G * sizeof *weights);
        if (!weights) goto oom;
        memcpy(weights, q.weights, G * sizeof *weights);
    }
    /* The filter: ids and/or labels; both given = an input must match both. */
    if (q.has_filter) {
        allowed = calloc(N, 1);
        if (!allowed) goto oom;
        if (q.nfilter_ids) {
            for (size_t i = 0; i < q.nfilter_ids; i++) {
                if (q.filter_ids[i] >= N) {
                    proto_fail(&e, 422, "invalid_filter", "filter.ids[%zu] = %llu is not an input (0..%u)", i,
                               (unsigned long long)q.filter_ids[i], N - 1);
                    goto perr;
                }
                allowed[q.filter_ids[i]] = 1;
            }
        } else {
            memset(allowed, 1, N);
        }
        if (q.nfilter_labels) {
            if (!d.has_labels) {
                proto_fail(&e, 422, "invalid_filter", "filter.labels: dataset '%s' has no labels", d.name);
                goto perr;
            }
            if (store_txn_begin(a->st, 1, &t) != STORE_OK) goto store_err;
            const int32_t *labels;
            uint64_t nl;
            if (store_labels_get(t, d.id, &labels, &nl) != STORE_OK || nl != N) goto store_err;
            for (uint32_t i = 0; i < N; i++) {
                if (!allowed[i]) continue;
                int32_t l;
                memcpy(&l, labels + i, sizeof l);
                int hit = 0;
                for (size_t j = 0; j < q.nfilter_labels && !hit; j++) hit = q.filter_labels[j] == l;
                allowed[i] = (uint8_t)hit;
            }
            store_txn_abort(t);
            t = NULL;
        }
    }

    timed_source ts = {0};
    source_init(&ts.src, a, m, &d, li);
    double limit = q.timeout_s > 0 ? q.timeout_s : a->cfg.query_timeout_s;
    if (limit > 0) ts.deadline_ms = t0 + limit * 1000;
    eng_source src = {.ctx = &ts, .fetch = timed_fetch};
    eng_fetch_stats tstats = {0};
    char err[512];

    int64_t exclude = -1;
    if (knn) {
        target = malloc(G * sizeof *target);
        if (!target) goto oom;
        if (q.has_target_id) {
            if (q.target_id >= N) {
                proto_fail(&e, 422, "target_out_of_range", "field 'target' is %llu but dataset '%s' has inputs 0..%u",
                           (unsigned long long)q.target_id, d.name, N - 1);
                goto perr;
            }
            uint32_t tid = (uint32_t)q.target_id;
            if (source_fetch(&ts.src, &tid, 1, neurons, G, target, &tstats, err, sizeof err) != 0) goto infer_err;
            if (!q.include_target) exclude = tid;
        } else {
            if (q.ntensor != numel) {
                proto_fail(&e, 422, "invalid_target", "target.tensor has %zu values; inputs of model '%s' have %zu",
                           q.ntensor, q.model, numel);
                goto perr;
            }
            trow = malloc((size_t)ly->neurons * sizeof *trow);
            if (!trow) goto oom;
            double ti = app_now_ms();
            if (source_run_tensors(&ts.src, q.tensor, 1, trow, err, sizeof err) != 0) goto infer_err;
            tstats.inference_ms += app_now_ms() - ti;
            tstats.computed++;
            for (size_t j = 0; j < G; j++) target[j] = trow[neurons[j]];
        }
    }
    if (q.has_filter) {
        uint64_t cands = 0;
        for (uint32_t i = 0; i < N; i++) cands += allowed[i] && (int64_t)i != exclude;
        if (!cands) {
            proto_fail(&e, 422, "empty_filter", "the filter matches no input of dataset '%s'", d.name);
            goto perr;
        }
    }

    eng_query eq = {
        .kind = knn ? ENG_KNN : ENG_TOPK,
        .agg = q.agg,
        .metric = q.metric,
        .method = q.method,
        .n = N,
        .k = q.k,
        .gsize = G,
        .neurons = neurons,
        .weights = weights,
        .target = target,
        .exclude = exclude,
        .allowed = allowed,
        .batch = q.batch ? q.batch : 256,
        /* a multiple of the inference batch (a smaller fetch would be padded) */
        .first_batch = (uint32_t)(((q.k + q.k / 2) / a->cfg.batch + 1) * a->cfg.batch),
        .cancel = &ts.cancel,
    };
    res = malloc(q.k * sizeof *res);
    if (!res) goto oom;
    eng_stats st = {0};
    const char *index_use = "none";
    uint32_t index_id = 0;

    found_index f = {.model = q.model, .dataset = q.dataset, .layer = q.layer};
    if (q.method != METHOD_SCAN) {
        if (store_txn_begin(a->st, 1, &t) != STORE_OK) goto store_err;
        store_index_each(t, find_ix, &f);
        if (!f.have_ready && !f.have_full) {
            store_txn_abort(t);
            t = NULL;
        }
    }
    int rc;
    if (q.method == METHOD_MATERIALIZED) {
        if (!f.have_full) {
            proto_fail(&e, 409, "not_materialized",
                       "method 'materialized' needs a full materialization of layer '%s': POST /v1/indexes with "
                       "\"kind\":\"full\" first", q.layer);
            goto perr;
        }
        const float **cols = calloc(G, sizeof *cols);
        copies = calloc(G, sizeof *copies);
        if (!cols || !copies) {
            free(cols);
            goto oom;
        }
        for (size_t j = 0; j < G; j++) {
            const void *blob;
            size_t len;
            if (store_neuron_get(t, f.full.id, neurons[j], &blob, &len) != STORE_OK || len != (size_t)N * 4) {
                free(cols);
                proto_fail(&e, 500, "index_damaged", "materialization %u lacks neuron %u", f.full.id, neurons[j]);
                goto perr;
            }
            if ((uintptr_t)blob & 3) {
                if (!(copies[j] = malloc(len))) {
                    free(cols);
                    goto oom;
                }
                memcpy(copies[j], blob, len);
                blob = copies[j];
            }
            cols[j] = blob;
        }
        column_source cs = {.cols = cols, .group = neurons, .gsize = G};
        eng_source msrc = {.ctx = &cs, .fetch = column_fetch};
        eq.method = ENG_SCAN;
        rc = eng_run(&eq, NULL, &msrc, res, &nres, &st, err, sizeof err);
        free(cols);
        st.method = -1;
        index_use = "used";
        index_id = f.full.id;
    } else if (q.method == METHOD_SCAN || (!f.have_ready && f.have_pending && q.method == METHOD_AUTO)) {
        /* Scan requested, or an index for this layer is being built by
         * someone else: answer by brute force rather than wait. */
        eq.method = ENG_SCAN;
        rc = eng_run(&eq, NULL, &src, res, &nres, &st, err, sizeof err);
    } else if (!f.have_ready && f.have_pending) {
        proto_fail(&e, 409, "index_building",
                   "the index of layer '%s' is being built; method '%s' needs it (use \"auto\" or \"scan\", or wait)",
                   q.layer, method_name(q.method));
        goto perr;
    } else if (f.have_ready) {
        if (f.ready.count != N) {
            proto_fail(&e, 500, "index_mismatch", "index %u covers %llu inputs, dataset has %u", f.ready.id,
                       (unsigned long long)f.ready.count, N);
            goto perr;
        }
        views = calloc(G, sizeof *views);
        copies = calloc(G, sizeof *copies);
        if (!views || !copies) goto oom;
        double tc = app_now_ms();
        for (size_t j = 0; j < G; j++) {
            const void *blob;
            size_t len;
            if (store_neuron_get(t, f.ready.id, neurons[j], &blob, &len) != STORE_OK) {
                proto_fail(&e, 500, "index_damaged", "index %u has no entry for neuron %u", f.ready.id, neurons[j]);
                goto perr;
            }
            if ((uintptr_t)blob & 3) { /* small LMDB values are 2-aligned only */
                copies[j] = malloc(len);
                if (!copies[j]) goto oom;
                memcpy(copies[j], blob, len);
                blob = copies[j];
            }
            if (npi_decode(blob, len, &views[j]) != 0 || views[j].n != N) {
                proto_fail(&e, 500, "index_damaged", "index %u: entry of neuron %u is corrupt", f.ready.id, neurons[j]);
                goto perr;
            }
        }
        double load_ms = app_now_ms() - tc;
        rc = eng_run(&eq, views, &src, res, &nres, &st, err, sizeof err);
        st.cell_ms += load_ms;
        index_use = "used";
        index_id = f.ready.id;
    } else {
        /* No index: the pass that answers builds it (incremental indexing). */
        store_txn_abort(t); /* a long read txn would keep LMDB from reusing pages */
        t = NULL;
        build_params p;
        build_params_for_budget(0.2, &p);
        heap = eng_topk_new(q.k, knn);
        if (!heap) goto oom;
        build_answer ans = {.q = &eq, .heap = heap, .deadline_ms = ts.deadline_ms};
        double tb = app_now_ms();
        if (jobs_build_inline(a, m, &d, q.layer, &p, &ans, &ts.cancel, &index_id, &e) != 0) goto perr;
        nres = eng_topk_finish(heap, res);
        st.method = ENG_SCAN;
        st.inputs_fetched = N;
        st.fetch.computed = N;
        st.fetch.inference_ms = app_now_ms() - tb;
        st.elapsed_ms = app_now_ms() - tb;
        index_use = "built";
        rc = 0;
    }
    if (rc == -2 || (rc != 0 && ts.cancel)) {
        proto_fail(&e, 503, "query_timeout", "the query passed its time limit of %.0f s and was cancelled", limit);
        goto perr;
    }
    if (rc != 0) goto infer_err;

    /* Labels for the answer. */
    const int32_t *labels = NULL;
    uint64_t nl = 0;
    if (d.has_labels) {
        if (!t && store_txn_begin(a->st, 1, &t) != STORE_OK) goto store_err;
        if (store_labels_get(t, d.id, &labels, &nl) != STORE_OK) labels = NULL;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < nres; i++) {
        json_t *o = json_pack("{s:I,s:f}", "input", (json_int_t)res[i].input, knn ? "distance" : "score", res[i].value);
        if (labels && res[i].input < nl) {
            int32_t l;
            memcpy(&l, labels + res[i].input, sizeof l);
            json_object_set_new(o, "label", json_integer(l));
        }
        json_array_append_new(arr, o);
    }
    uint64_t computed = st.fetch.computed + tstats.computed;
    uint64_t hits = st.fetch.cache_hits + tstats.cache_hits;
    json_t *stats = json_pack("{s:s,s:I,s:I,s:I,s:f,s:f,s:f,s:s,s:I,s:I,s:f}", "method",
                              method_name(st.method), "inputs_computed", (json_int_t)computed, "cache_hits",
                              (json_int_t)hits, "inputs_fetched", (json_int_t)st.inputs_fetched, "elapsed_ms",
                              app_now_ms() - t0, "inference_ms", st.fetch.inference_ms + tstats.inference_ms,
                              "cell_ms", st.cell_ms, "index", index_use, "index_id", (json_int_t)index_id, "rounds",
                              (json_int_t)st.rounds, "fraction_computed", (double)computed / N);
    atomic_fetch_add(knn ? &a->metrics.queries_knn : &a->metrics.queries_topk, 1);
    http_reply_json(r, 200, json_pack("{s:o,s:o}", "results", arr, "stats", stats));
    goto out;

oom:
    proto_fail(&e, 500, "internal", "out of memory");
    goto perr;
store_err:
    proto_fail(&e, 500, "store_error", "store: %s", store_errmsg());
    goto perr;
infer_err:
    if (ts.cancel) {
        proto_fail(&e, 503, "query_timeout", "the query passed its time limit and was cancelled");
    } else {
        proto_fail(&e, 500, "inference_failed", "%s", err);
    }
perr:
    http_reply_proto_err(r, &e);
out:
    store_txn_abort(t);
    if (copies)
        for (size_t j = 0; j < q.neurons.n; j++) free(copies[j]);
    free(copies);
    free(views);
    eng_topk_free(heap);
    free(res);
    free(allowed);
    free(target);
    free(trow);
    free(weights);
    free(neurons);
    app_model_put(m);
    proto_free_query(&q);
}

void api_query_topk(http_req *r) { run_query(r, 0); }
void api_query_knn(http_req *r) { run_query(r, 1); }
