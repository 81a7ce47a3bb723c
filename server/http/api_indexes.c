/* api_indexes.c -- POST/GET/DELETE /v1/indexes, the neuron view, and
 * GET/DELETE /v1/jobs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "build.h"
#include "catalog.h"
#include "jobs.h"
#include "proto.h"

void api_index_create(http_req *r)
{
    proto_index_req q = {0};
    proto_err e;
    build_submitted s;
    if (proto_parse_index(r->body, r->body_len, &q, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    build_params p = {.kind = q.kind ? STORE_INDEX_FULL : STORE_INDEX_NPI,
                      .partitions = q.has_partitions ? q.partitions : 0,
                      .mai_ratio = q.has_mai_ratio ? q.mai_ratio : -1,
                      .budget = q.has_budget ? q.storage_budget : 0.2,
                      .eager = q.has_eager ? q.eager : EAGER_NONE, .job_id = q.job_id};
    const char *names[PROTO_MAX_LAYERS];
    for (int l = 0; l < q.nlayers; l++) names[l] = q.layers[l];
    if (build_submit(r->app, q.model, q.dataset, names, q.nlayers, &p, &s, &e) != 0) {
        proto_free_index(&q);
        http_reply_err(r, &e);
        return;
    }
    int all_reused = s.job == 0;
    json_t *per = json_array();
    for (int l = 0; l < q.nlayers; l++)
        json_array_append_new(per, json_pack("{s:s,s:I,s:b}", "layer", q.layers[l], "id", (json_int_t)s.ids[l],
                                             "reused", s.reused[l]));
    json_t *o = json_pack("{s:I,s:o,s:o,s:I,s:f,s:b}", "id", (json_int_t)s.ids[0], "ids",
                          api_ids_json(s.ids, (size_t)q.nlayers), "layers", per, "partitions",
                          (json_int_t)(p.kind == STORE_INDEX_FULL ? 0 : s.params.partitions), "mai_ratio",
                          p.kind == STORE_INDEX_FULL ? 1.0 : s.params.mai_ratio, "reused", all_reused);
    /* "job": the job that builds the new indexes; when every layer was
     * reused, the job of the first (possibly still building) index */
    uint32_t job_id = s.job;
    if (!job_id) {
        store_index ix;
        if (catalog_get_index(r->app, s.ids[0], &ix, &e) == 0) job_id = ix.job;
    }
    json_object_set_new(o, "job", json_integer(job_id));
    if (s.neager) json_object_set_new(o, "eager_ids", api_ids_json(s.eager_ids, (size_t)s.neager));
    proto_free_index(&q);
    http_reply_json(r, all_reused ? 200 : 202, o);
}

void api_index_list(http_req *r)
{
    store_index *list = NULL;
    size_t n = 0;
    proto_err e;
    if (catalog_indexes(r->app, &list, &n, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(arr, api_index_json(&list[i]));
    free(list);
    http_reply_json(r, 200, json_pack("{s:o}", "indexes", arr));
}

void api_index_get(http_req *r)
{
    uint64_t id;
    store_index ix;
    proto_err e;
    if (api_path_id(r, 0, UINT32_MAX, "index", &id, &e) != 0 || catalog_get_index(r->app, (uint32_t)id, &ix, &e) != 0)
        http_reply_err(r, &e);
    else
        http_reply_json(r, 200, api_index_json(&ix));
}

void api_index_delete(http_req *r)
{
    uint64_t id;
    uint32_t job_id;
    int stopped;
    proto_err e;
    if (api_path_id(r, 0, UINT32_MAX, "index", &id, &e) != 0 ||
        catalog_delete_index(r->app, (uint32_t)id, &job_id, &stopped, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    json_t *o = json_pack("{s:I,s:b}", "id", (json_int_t)id, "deleted", 1);
    if (job_id) {
        /* it was being built: its job goes on with its other layers, or stopped */
        json_object_set_new(o, "job", json_integer(job_id));
        json_object_set_new(o, "job_cancelled", json_boolean(stopped));
    }
    http_reply_json(r, 200, o);
}

/* GET /v1/indexes/{id}/neurons/{neuron}: one neuron's index entry -- its
 * partitions (bounds and sizes: a histogram of its activations) and the top
 * of its MAI (?mai=N, default 20). */
void api_index_neuron(http_req *r)
{
    uint64_t id, neuron;
    store_index ix;
    proto_err e;
    catalog_neuron cn;
    long want = 20;
    const char *ms = http_arg(r, "mai");
    if (ms) want = atol(ms) < 0 ? 0 : atol(ms) > 1000000 ? 1000000 : atol(ms);
    if (api_path_id(r, 0, UINT32_MAX, "index", &id, &e) != 0 || catalog_get_index(r->app, (uint32_t)id, &ix, &e) != 0 ||
        api_path_id(r, 1, ix.neurons, "neuron", &neuron, &e) != 0 ||
        catalog_neuron_entry(r->app, &ix, (uint32_t)neuron, (uint32_t)want, &cn, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    json_t *parts = json_array();
    for (uint32_t p = 0; p < cn.partitions; p++) {
        json_t *o = json_pack("{s:I,s:I}", "partition", (json_int_t)p, "count", (json_int_t)cn.counts[p]);
        json_object_set_new(o, "lower", cn.counts[p] ? json_real(cn.lower[p]) : json_null());
        json_object_set_new(o, "upper", cn.counts[p] ? json_real(cn.upper[p]) : json_null());
        json_array_append_new(parts, o);
    }
    /* global ids: a shard's slice starts at its first */
    store_dataset d;
    uint64_t first = catalog_dataset(r->app, ix.dataset, &d, &e) == 0 ? d.first : 0;
    json_t *mai = json_array();
    for (uint32_t i = 0; i < cn.nmai; i++)
        json_array_append_new(mai, json_pack("{s:I,s:f}", "input", (json_int_t)(first + cn.mai_ids[i]), "value",
                                             (double)cn.mai_values[i]));
    http_reply_json(r, 200, json_pack("{s:I,s:I,s:I,s:o,s:o}", "index", (json_int_t)ix.id, "neuron",
                                      (json_int_t)neuron, "mai_count", (json_int_t)cn.mai_count, "partitions", parts,
                                      "mai", mai));
    catalog_neuron_free(&cn);
}

void api_job_list(http_req *r)
{
    store_job *list = NULL;
    size_t n = 0;
    proto_err e;
    if (catalog_jobs(r->app, &list, &n, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    uint32_t next = 0;
    if (catalog_next_job_id(r->app, &next, &e) != 0) {
        free(list);
        http_reply_err(r, &e);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(arr, api_job_json(r->app, &list[i]));
    free(list);
    http_reply_json(r, 200, json_pack("{s:o,s:I}", "jobs", arr, "next_id", (json_int_t)next));
}

void api_job_get(http_req *r)
{
    uint64_t id;
    store_job j;
    proto_err e;
    if (api_path_id(r, 0, UINT32_MAX, "job", &id, &e) != 0 || catalog_get_job(r->app, (uint32_t)id, &j, &e) != 0)
        http_reply_err(r, &e);
    else
        http_reply_json(r, 200, api_job_json(r->app, &j));
}

/* DELETE /v1/jobs/{id}: cancels a queued or running job and answers with
 * its record once it stopped; what it wrote is gone. */
void api_job_delete(http_req *r)
{
    uint64_t id;
    store_job j;
    proto_err e;
    if (api_path_id(r, 0, UINT32_MAX, "job", &id, &e) != 0 || catalog_cancel_job(r->app, (uint32_t)id, &j, &e) != 0)
        http_reply_err(r, &e);
    else
        http_reply_json(r, 200, api_job_json(r->app, &j));
}
