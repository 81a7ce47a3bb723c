/* api_datasets.c -- dataset import (from a path or a streamed body),
 * listing, deletion, and per-input views (listing, record, PNG,
 * activations). Ids in paths are global dataset ids. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "catalog.h"
#include "dsread.h"
#include "importer.h"
#include "pathcheck.h"
#include "predictions.h"
#include "proto.h"
#include "query.h"

void api_dataset_create(http_req *r)
{
    proto_dataset_req q = {0};
    proto_err e;
    store_dataset d;
    char path[PATH_MAX], lpath[PATH_MAX];
    if (proto_parse_dataset(r->body, r->body_len, &q, &e) != 0 ||
        pathcheck_resolve(r->app->cfg.import_root, q.path, "path", path, sizeof path, &e) != 0 ||
        (q.labels_path &&
         pathcheck_resolve(r->app->cfg.import_root, q.labels_path, "labels_path", lpath, sizeof lpath, &e) != 0) ||
        importer_import_file(r->app, &q, path, q.labels_path ? lpath : NULL, &d, &e) != 0)
        http_reply_err(r, &e);
    else
        http_reply_json(r, 201, api_dataset_json(r->app, &d));
    proto_free_dataset(&q);
}

/* PUT /v1/datasets/{name}: a raw .npy (or idx) body, parsed as it arrives.
 * The importer is the route's stream state; an error is kept for the reply. */
typedef struct upload {
    importer *im;
    int failed;
    proto_err e;
} upload;

int api_dataset_upload_chunk(http_req *r, const char *data, size_t len)
{
    upload *u = r->stream;
    if (!u) {
        if (!(u = calloc(1, sizeof *u))) return -1;
        r->stream = u;
        proto_dataset_req q = {0};
        if (!proto_valid_name(r->params[0])) {
            proto_fail(&u->e, 422, "invalid_name", "dataset name '%s' must be 1-64 of [A-Za-z0-9._-]", r->params[0]);
            u->failed = 1;
            return -1;
        }
        snprintf(q.name, sizeof q.name, "%s", r->params[0]);
        if (proto_dataset_opts(&q, http_arg(r, "scale"), http_arg(r, "mean"), http_arg(r, "std"), &u->e) != 0 ||
            proto_dataset_slice(&q, http_arg(r, "shard"), http_arg(r, "shards"), &u->e) != 0 ||
            importer_begin(r->app, &q, DSREAD_AUTO, &u->im, &u->e) != 0)
            u->failed = 1;
        proto_free_dataset(&q);
        if (u->failed) return -1;
    }
    if (u->failed) return -1;
    if (importer_feed(u->im, data, len, &u->e) != 0) {
        u->failed = 1;
        return -1;
    }
    return 0;
}

void api_dataset_upload(http_req *r)
{
    upload *u = r->stream;
    store_dataset d;
    if (!u) {
        http_reply_error(r, 400, "empty_body", "PUT /v1/datasets/{name} needs a .npy body");
        return;
    }
    if (!u->failed && importer_finish(u->im, NULL, &d, &u->e) != 0) u->failed = 1;
    if (u->failed) {
        http_reply_err(r, &u->e);
        return;
    }
    log_msg("dataset '%s' uploaded: %llu inputs", d.name, (unsigned long long)d.count);
    http_reply_json(r, 201, api_dataset_json(r->app, &d));
}

void api_dataset_upload_cleanup(http_req *r)
{
    upload *u = r->stream;
    importer_free(u->im);
    free(u);
    r->stream = NULL;
}

void api_dataset_list(http_req *r)
{
    store_dataset *list = NULL;
    size_t n = 0;
    proto_err e;
    if (catalog_datasets(r->app, &list, &n, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(arr, api_dataset_json(r->app, &list[i]));
    free(list);
    http_reply_json(r, 200, json_pack("{s:o}", "datasets", arr));
}

void api_dataset_get(http_req *r)
{
    store_dataset d;
    proto_err e;
    if (catalog_dataset(r->app, r->params[0], &d, &e) != 0)
        http_reply_err(r, &e);
    else
        http_reply_json(r, 200, api_dataset_json(r->app, &d));
}

void api_dataset_delete(http_req *r)
{
    proto_err e;
    catalog_deleted d;
    if (catalog_delete_dataset(r->app, r->params[0], &d, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    http_reply_json(r, 200, json_pack("{s:s,s:b,s:o,s:o}", "name", r->params[0], "deleted", 1, "indexes",
                                      api_ids_json(d.indexes, d.nindexes), "jobs_cancelled",
                                      api_ids_json(d.jobs, d.njobs)));
    catalog_deleted_free(&d);
}

/* GET /v1/datasets/{ds}/inputs?offset=&limit=&label=&model=&predicted=&misclassified=&format=json|csv */
void api_input_list(http_req *r)
{
    store_dataset d;
    proto_err e;
    proto_inputs_req q;
    catalog_page p = {0};
    catalog_classes cls = {0};
    int csv = api_wants_csv(r);
    if (catalog_dataset(r->app, r->params[0], &d, &e) != 0 ||
        proto_parse_inputs(http_arg(r, "offset"), http_arg(r, "limit"), http_arg(r, "label"), http_arg(r, "model"),
                           http_arg(r, "predicted"), http_arg(r, "misclassified"), &q, &e) != 0 ||
        catalog_list_inputs(r->app, &d, &q, &p, &e) != 0 || catalog_classes_get(r->app, &d, &cls, &e) != 0) {
        catalog_page_free(&p);
        http_reply_err(r, &e);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < p.n; i++) {
        json_t *o = json_pack("{s:I}", "id", (json_int_t)(d.first + p.ids[i]));
        api_result_extras(o, p.labels ? &p.labels[i] : NULL, p.predicted ? &p.predicted[i] : NULL, &cls);
        json_array_append_new(arr, o);
    }
    catalog_page_free(&p);
    catalog_classes_free(&cls);
    if (csv) {
        api_reply_csv(r, arr, "id");
        return;
    }
    json_t *o = json_pack("{s:I,s:I,s:I,s:o}", "total", (json_int_t)p.total, "offset", (json_int_t)q.offset, "limit",
                          (json_int_t)q.limit, "inputs", arr);
    if (q.model[0]) json_object_set_new(o, "model", json_string(q.model));
    http_reply_json(r, 200, o);
}

/* PUT /v1/datasets/{name}/classes {"classes": [...]} */
void api_dataset_classes(http_req *r)
{
    proto_classes q = {0};
    proto_err e;
    store_dataset d;
    if (proto_parse_classes(r->body, r->body_len, &q, &e) != 0 || catalog_classes_set(r->app, r->params[0], &q, &e) != 0 ||
        catalog_dataset(r->app, r->params[0], &d, &e) != 0)
        http_reply_err(r, &e);
    else
        http_reply_json(r, 200, api_dataset_json(r->app, &d));
    proto_free_classes(&q);
}

/* The dataset of params[0] and the local id of params[1]. */
int api_find_input(http_req *r, store_dataset *d, uint64_t *local, proto_err *e)
{
    uint64_t id;
    if (catalog_dataset(r->app, r->params[0], d, e) != 0) return -1;
    if (api_path_id(r, 1, d->first + d->count, "input", &id, e) != 0) return -1;
    if (id < d->first)
        return proto_fail(e, 404, "not_found", "input %llu is not in this daemon's slice %llu..%llu",
                          (unsigned long long)id, (unsigned long long)d->first,
                          (unsigned long long)(d->first + d->count - 1));
    *local = id - d->first;
    return 0;
}

void api_input_get(http_req *r)
{
    store_dataset d;
    uint64_t id;
    proto_err e;
    float *x = NULL;
    if (api_find_input(r, &d, &id, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    json_t *o = json_pack("{s:I,s:s,s:o}", "id", (json_int_t)(d.first + id), "dataset", d.name, "shape",
                          api_shape_json(d.shape, d.ndim));
    int32_t label, pred;
    uint32_t id32 = (uint32_t)id;
    int has_label = catalog_label(r->app, &d, id, &label);
    const char *model = http_arg(r, "model");
    int has_pred = model && proto_valid_name(model) && predictions_pick(r->app, model, &d, &id32, 1, &pred);
    catalog_classes cls = {0};
    if (catalog_classes_get(r->app, &d, &cls, &e) != 0) {
        json_decref(o);
        http_reply_err(r, &e);
        return;
    }
    api_result_extras(o, has_label ? &label : NULL, has_pred ? &pred : NULL, &cls);
    catalog_classes_free(&cls);
    const char *tensor = http_arg(r, "tensor");
    if (tensor && strcmp(tensor, "0") != 0) {
        /* The input in the model's input space (after scale/mean/std): what a
         * kNN "tensor" target takes. */
        if (catalog_input_tensor(r->app, &d, id, &x, &e) != 0) {
            json_decref(o);
            http_reply_err(r, &e);
            return;
        }
        json_t *arr = json_array();
        size_t numel = 1;
        for (int i = 0; i < d.ndim; i++) numel *= (size_t)d.shape[i];
        for (size_t i = 0; i < numel; i++) json_array_append_new(arr, json_real(x[i]));
        json_object_set_new(o, "tensor", arr);
        free(x);
    }
    http_reply_json(r, 200, o);
}

void api_input_png(http_req *r)
{
    store_dataset d;
    uint64_t id;
    proto_err e;
    unsigned char *png;
    size_t len;
    int side = 112;
    const char *s = http_arg(r, "size");
    if (s) side = atoi(s) < 16 ? 16 : atoi(s) > 1024 ? 1024 : atoi(s);
    if (api_find_input(r, &d, &id, &e) != 0 || catalog_input_png(r->app, &d, id, side, &png, &len, &e) != 0)
        http_reply_err(r, &e);
    else
        http_reply_bytes(r, 200, "image/png", png, len, 1);
}

/* GET .../activations?model=&layer=&top=10  (or &neurons=3,17,42 for given ones). */
void api_input_activations(http_req *r)
{
    store_dataset d;
    uint64_t id;
    proto_err e;
    proto_activations_req q = {0};
    query_activation *v = NULL;
    size_t n = 0;
    shim_layer ly;
    if (api_find_input(r, &d, &id, &e) != 0 ||
        proto_parse_activations(http_arg(r, "model"), http_arg(r, "layer"), http_arg(r, "neurons"), http_arg(r, "top"),
                                &q, &e) != 0 ||
        query_activations(r->app, &d, id, &q, &v, &n, &ly, &e) != 0) {
        http_reply_err(r, &e);
        proto_free_activations(&q);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        uint64_t rem = v[i].neuron;
        int64_t c[SHIM_MAX_DIMS];
        for (int k = ly.ndim - 1; k >= 0; k--) {
            c[k] = (int64_t)(rem % (uint64_t)ly.shape[k]);
            rem /= (uint64_t)ly.shape[k];
        }
        json_array_append_new(arr, json_pack("{s:I,s:o,s:f}", "neuron", (json_int_t)v[i].neuron, "coord",
                                             api_shape_json(c, ly.ndim), "value", (double)v[i].value));
    }
    free(v);
    proto_free_activations(&q);
    http_reply_json(r, 200, arr);
}
