/* api_indexes.c -- POST/GET/DELETE /v1/indexes and GET /v1/jobs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "jobs.h"
#include "npi.h"
#include "proto.h"

static const char *index_state(int s)
{
    return s == STORE_READY ? "ready" : s == STORE_PENDING ? "building" : "failed";
}

json_t *api_index_json(const store_index *ix)
{
    json_t *o = json_pack("{s:I,s:s,s:s,s:s,s:s,s:I,s:f,s:I,s:I,s:I,s:I,s:f,s:I,s:I,s:f}", "id", (json_int_t)ix->id,
                          "model", ix->model, "dataset", ix->dataset, "layer", ix->layer, "state",
                          index_state(ix->state), "partitions", (json_int_t)ix->partitions, "mai_ratio",
                          (double)ix->mai_ratio, "count", (json_int_t)ix->count, "neurons", (json_int_t)ix->neurons,
                          "bytes", (json_int_t)ix->bytes, "full_materialization_bytes", (json_int_t)ix->full_bytes,
                          "ratio", ix->full_bytes ? (double)ix->bytes / (double)ix->full_bytes : 0.0, "job",
                          (json_int_t)ix->job, "created", (json_int_t)ix->created, "build_s", ix->build_s);
    json_object_set_new(o, "kind", json_string(ix->kind == STORE_INDEX_FULL ? "full" : "npi"));
    if (ix->state == STORE_FAILED) json_object_set_new(o, "error", json_string(ix->error));
    return o;
}

void api_index_create(http_req *r)
{
    proto_index_req q = {0};
    proto_err e;
    if (proto_parse_index(r->body, r->body_len, &q, &e) != 0) goto err;
    build_params p;
    build_params_for_budget(q.has_budget ? q.storage_budget : 0.2, &p);
    if (q.has_partitions) p.partitions = q.partitions;
    if (q.has_mai_ratio) p.mai_ratio = q.mai_ratio;
    p.kind = q.kind ? STORE_INDEX_FULL : STORE_INDEX_NPI;
    const char *names[PROTO_MAX_LAYERS];
    for (int l = 0; l < q.nlayers; l++) names[l] = q.layers[l];
    uint32_t job, ids[PROTO_MAX_LAYERS];
    if (jobs_submit_index(r->app, q.model, q.dataset, names, q.nlayers, &p, &job, ids, &e) != 0) goto err;
    json_t *arr = json_array();
    for (int l = 0; l < q.nlayers; l++) json_array_append_new(arr, json_integer(ids[l]));
    json_t *o = json_pack("{s:I,s:I,s:o,s:I,s:f}", "id", (json_int_t)ids[0], "job", (json_int_t)job, "ids", arr,
                          "partitions", (json_int_t)p.partitions, "mai_ratio", p.mai_ratio);
    proto_free_index(&q);
    http_reply_json(r, 202, o);
    return;
err:
    proto_free_index(&q);
    http_reply_proto_err(r, &e);
}

static int list_ix(const store_index *ix, void *arg)
{
    json_array_append_new(arg, api_index_json(ix));
    return 0;
}

void api_index_list(http_req *r)
{
    json_t *arr = json_array();
    store_txn *t;
    if (store_txn_begin(r->app->st, 1, &t) == STORE_OK) {
        store_index_each(t, list_ix, arr);
        store_txn_abort(t);
    }
    http_reply_json(r, 200, json_pack("{s:o}", "indexes", arr));
}

static int get_index(http_req *r, store_index *ix)
{
    uint64_t id;
    if (api_parse_id(r, r->params[0], UINT32_MAX, "index", &id) != 0) return -1;
    store_txn *t;
    int rc = store_txn_begin(r->app->st, 1, &t);
    if (rc == STORE_OK) {
        rc = store_index_get(t, (uint32_t)id, ix);
        store_txn_abort(t);
    }
    if (rc == STORE_OK) return 0;
    if (rc == STORE_NOTFOUND)
        http_reply_error(r, 404, "unknown_index", "index %s does not exist", r->params[0]);
    else
        http_reply_error(r, 500, "store_error", "store: %s", store_errmsg());
    return -1;
}

void api_index_get(http_req *r)
{
    store_index ix;
    if (get_index(r, &ix) == 0) http_reply_json(r, 200, api_index_json(&ix));
}

void api_index_delete(http_req *r)
{
    store_index ix;
    if (get_index(r, &ix) != 0) return;
    if (ix.state == STORE_PENDING) {
        /* Stop its build, then wait for the builder to record the failure. */
        jobs_cancel_index(r->app, ix.id);
        for (int i = 0; i < 600; i++) {
            store_txn *t;
            int state = STORE_FAILED;
            if (store_txn_begin(r->app->st, 1, &t) == STORE_OK) {
                store_index cur;
                if (store_index_get(t, ix.id, &cur) == STORE_OK) state = cur.state;
                store_txn_abort(t);
            }
            uint64_t d, tot;
            double eta;
            if (state != STORE_PENDING || jobs_progress(r->app, ix.job, &d, &tot, &eta) != 0) break;
            usleep(50000);
        }
    }
    store_txn *t;
    int rc = store_txn_begin(r->app->st, 0, &t);
    if (rc == STORE_OK) {
        rc = store_index_del(t, ix.id);
        /* A queued job that was dropped never ran: record why. */
        store_job jr;
        if (rc == STORE_OK && store_job_get(t, ix.job, &jr) == STORE_OK &&
            (jr.state == JOB_QUEUED || jr.state == JOB_RUNNING) && ix.state == STORE_PENDING) {
            jr.state = JOB_FAILED;
            jr.finished = app_unix_now();
            snprintf(jr.error, sizeof jr.error, "cancelled: index %u deleted", ix.id);
            rc = store_job_put(t, &jr);
        }
        if (rc == STORE_OK)
            rc = store_txn_commit(t);
        else
            store_txn_abort(t);
    }
    if (rc != STORE_OK && rc != STORE_NOTFOUND) {
        http_reply_error(r, 500, "store_error", "store: %s", store_errmsg());
        return;
    }
    app_log("index %u deleted", ix.id);
    http_reply_json(r, 200, json_pack("{s:I,s:b}", "id", (json_int_t)ix.id, "deleted", 1));
}

static const char *job_state(int s)
{
    return s == JOB_QUEUED ? "queued" : s == JOB_RUNNING ? "running" : s == JOB_DONE ? "done" : "failed";
}

static json_t *job_json(app *a, const store_job *j)
{
    uint64_t done = j->done, total = j->total;
    double eta = j->state == JOB_DONE ? 0 : -1;
    if (j->state == JOB_RUNNING) jobs_progress(a, j->id, &done, &total, &eta);
    json_t *ids = json_array();
    for (uint32_t i = 0; i < j->nindexes && i < 16; i++) json_array_append_new(ids, json_integer(j->indexes[i]));
    json_t *o = json_pack("{s:I,s:s,s:s,s:I,s:I,s:o,s:I,s:I,s:I}", "id", (json_int_t)j->id, "kind", j->kind,
                          "state", job_state(j->state), "done", (json_int_t)done, "total", (json_int_t)total,
                          "indexes", ids, "created", (json_int_t)j->created, "started", (json_int_t)j->started,
                          "finished", (json_int_t)j->finished);
    json_object_set_new(o, "eta_s", eta >= 0 ? json_real(eta) : json_null());
    if (j->state == JOB_FAILED) json_object_set_new(o, "error", json_string(j->error));
    return o;
}

typedef struct { app *a; json_t *arr; } jl_ctx;

static int list_job(const store_job *j, void *arg)
{
    jl_ctx *c = arg;
    json_array_append_new(c->arr, job_json(c->a, j));
    return 0;
}

void api_job_list(http_req *r)
{
    jl_ctx c = {r->app, json_array()};
    store_txn *t;
    if (store_txn_begin(r->app->st, 1, &t) == STORE_OK) {
        store_job_each(t, list_job, &c);
        store_txn_abort(t);
    }
    http_reply_json(r, 200, json_pack("{s:o}", "jobs", c.arr));
}

void api_job_get(http_req *r)
{
    uint64_t id;
    if (api_parse_id(r, r->params[0], UINT32_MAX, "job", &id) != 0) return;
    store_job j;
    store_txn *t;
    int rc = store_txn_begin(r->app->st, 1, &t);
    if (rc == STORE_OK) {
        rc = store_job_get(t, (uint32_t)id, &j);
        store_txn_abort(t);
    }
    if (rc == STORE_NOTFOUND) {
        http_reply_error(r, 404, "unknown_job", "job %s does not exist", r->params[0]);
        return;
    }
    if (rc != STORE_OK) {
        http_reply_error(r, 500, "store_error", "store: %s", store_errmsg());
        return;
    }
    http_reply_json(r, 200, job_json(r->app, &j));
}

/* GET /v1/indexes/{id}/neurons/{neuron}: one neuron's index entry -- its
 * partitions (bounds and sizes: a histogram of its activations) and the top
 * of its MAI (?mai=N, default 20). */
void api_index_neuron(http_req *r)
{
    store_index ix;
    if (get_index(r, &ix) != 0) return;
    if (ix.state != STORE_READY) {
        http_reply_error(r, 409, "index_not_ready", "index %u is %s", ix.id, index_state(ix.state));
        return;
    }
    if (ix.kind != STORE_INDEX_NPI) {
        http_reply_error(r, 409, "not_a_partition_index", "index %u is a full materialization", ix.id);
        return;
    }
    uint64_t neuron;
    if (api_parse_id(r, r->params[1], ix.neurons, "neuron", &neuron) != 0) return;
    long want = 20;
    const char *ms = http_arg(r, "mai");
    if (ms) want = atol(ms) < 0 ? 0 : atol(ms);
    store_txn *t;
    if (store_txn_begin(r->app->st, 1, &t) != STORE_OK) {
        http_reply_error(r, 500, "store_error", "store: %s", store_errmsg());
        return;
    }
    const void *blob;
    size_t len;
    void *copy = NULL;
    uint8_t *pids = NULL;
    npi_view v;
    if (store_neuron_get(t, ix.id, (uint32_t)neuron, &blob, &len) != STORE_OK) goto damaged;
    if ((uintptr_t)blob & 3) {
        if (!(copy = malloc(len))) goto damaged;
        memcpy(copy, blob, len);
        blob = copy;
    }
    if (npi_decode(blob, len, &v) != 0 || !(pids = malloc(v.n ? v.n : 1))) goto damaged;
    npi_unpack(&v, pids);
    uint64_t counts[NPI_MAX_PARTITIONS] = {0};
    for (uint32_t i = 0; i < v.n; i++) counts[pids[i]]++;
    json_t *parts = json_array();
    for (uint32_t p = 0; p < v.partitions; p++) {
        json_t *o = json_pack("{s:I,s:I}", "partition", (json_int_t)p, "count", (json_int_t)counts[p]);
        json_object_set_new(o, "lower", counts[p] ? json_real(v.lower[p]) : json_null());
        json_object_set_new(o, "upper", counts[p] ? json_real(v.upper[p]) : json_null());
        json_array_append_new(parts, o);
    }
    json_t *mai = json_array();
    for (uint32_t i = 0; i < v.mai_count && (long)i < want; i++)
        json_array_append_new(mai, json_pack("{s:I,s:f}", "input", (json_int_t)v.mai_ids[i], "value",
                                             (double)v.mai_values[i]));
    http_reply_json(r, 200, json_pack("{s:I,s:I,s:I,s:o,s:o}", "index", (json_int_t)ix.id, "neuron",
                                      (json_int_t)neuron, "mai_count", (json_int_t)v.mai_count, "partitions", parts,
                                      "mai", mai));
    goto out;
damaged:
    http_reply_error(r, 500, "index_damaged", "index %u: entry of neuron %llu is unreadable", ix.id,
                     (unsigned long long)neuron);
out:
    store_txn_abort(t);
    free(copy);
    free(pids);
}
