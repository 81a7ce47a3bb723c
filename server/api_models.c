/* api_models.c -- POST/GET/DELETE /v1/models. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "pathcheck.h"
#include "proto.h"

static json_t *shape_json(const int64_t *shape, int ndim)
{
    json_t *a = json_array();
    for (int i = 0; i < ndim; i++) json_array_append_new(a, json_integer(shape[i]));
    return a;
}

json_t *api_model_layers_json(const shim_model *m)
{
    json_t *layers = json_array();
    for (int i = 0; i < shim_layer_count(m); i++) {
        const shim_layer *l = shim_layer_at(m, i);
        json_array_append_new(layers, json_pack("{s:s,s:o,s:I}", "name", l->name, "shape",
                                                shape_json(l->shape, l->ndim), "neurons",
                                                (json_int_t)l->neurons));
    }
    return layers;
}

static json_t *model_json(const app_model *m)
{
    int64_t shape[SHIM_MAX_DIMS];
    int nd = shim_input_shape(m->shim, shape);
    /* batch_slot_classes: how many arithmetic variants of a forward the
     * batch slots showed at load (app.c); inputs stay within one */
    return json_pack("{s:s,s:s,s:s,s:o,s:o,s:I,s:i}", "name", m->name, "path", m->rec.path, "device",
                     shim_device(m->shim), "input_shape", shape_json(shape, nd), "layers",
                     api_model_layers_json(m->shim), "created", (json_int_t)m->rec.created,
                     "batch_slot_classes", m->nclass);
}

void api_model_create(http_req *r)
{
    proto_model_req q = {0};
    proto_err e;
    app_model *m = NULL;
    char real[PATH_MAX];
    if (proto_parse_model(r->body, r->body_len, &q, &e) != 0) {
        http_reply_proto_err(r, &e);
        goto out;
    }
    if (pathcheck_resolve(r->app->cfg.import_root, q.path, "path", real, sizeof real, &e) != 0) {
        http_reply_proto_err(r, &e);
        goto out;
    }
    m = app_model_get(r->app, q.name);
    if (m) {
        http_reply_error(r, 409, "model_exists", "model '%s' is already registered; DELETE it first", q.name);
        goto out;
    }
    store_model rec = {0};
    snprintf(rec.name, sizeof rec.name, "%s", q.name);
    snprintf(rec.path, sizeof rec.path, "%s", real);
    rec.ndim = q.ndim;
    memcpy(rec.input_shape, q.input_shape, sizeof(int64_t) * (size_t)q.ndim);
    rec.created = app_unix_now();
    char err[1024];
    /* Load first (slow, may fail), then record it: a bad file leaves no trace. */
    if (app_model_load(r->app, &rec, &m, err, sizeof err) != 0) {
        http_reply_error(r, 422, "invalid_model", "cannot load '%s' as a TorchScript model: %s", q.path, err);
        goto out;
    }
    store_txn *t;
    int rc = store_txn_begin(r->app->st, 0, &t);
    if (rc == STORE_OK) {
        rc = store_model_put(t, &rec, 1);
        if (rc == STORE_OK)
            rc = store_txn_commit(t);
        else
            store_txn_abort(t);
    }
    if (rc == STORE_EXISTS) {
        http_reply_error(r, 409, "model_exists", "model '%s' is already registered; DELETE it first", q.name);
        goto out;
    }
    if (rc == STORE_FULL) {
        http_reply_error(r, 507, "store_full", "the store is full (LMDB map size reached)");
        goto out;
    }
    if (rc != STORE_OK) {
        http_reply_error(r, 500, "store_error", "store: %s", store_errmsg());
        goto out;
    }
    m->rec = rec;
    app_model_insert(r->app, m);
    app_log("model '%s' registered from %s", rec.name, rec.path);
    http_reply_json(r, 201, model_json(m));
out:
    app_model_put(m);
    proto_free_model(&q);
}

typedef struct { app *a; json_t *arr; } list_ctx;

static int list_one(const store_model *rec, void *arg)
{
    list_ctx *c = arg;
    app_model *m = app_model_get(c->a, rec->name);
    if (m) {
        json_array_append_new(c->arr, model_json(m));
        app_model_put(m);
    } else {
        json_array_append_new(c->arr, json_pack("{s:s,s:s,s:s,s:I}", "name", rec->name, "path", rec->path,
                                                "state", "unavailable", "created", (json_int_t)rec->created));
    }
    return 0;
}

void api_model_list(http_req *r)
{
    list_ctx c = {r->app, json_array()};
    store_txn *t;
    if (store_txn_begin(r->app->st, 1, &t) != STORE_OK) {
        json_decref(c.arr);
        http_reply_error(r, 500, "store_error", "store: %s", store_errmsg());
        return;
    }
    store_model_each(t, list_one, &c);
    store_txn_abort(t);
    http_reply_json(r, 200, json_pack("{s:o}", "models", c.arr));
}

void api_model_get(http_req *r)
{
    app_model *m = api_find_model(r, r->params[0]);
    if (!m) return;
    http_reply_json(r, 200, model_json(m));
    app_model_put(m);
}

typedef struct { const char *model; const char *dataset; uint32_t ids[4096]; int n; } owned_ctx;

static int collect_owned(const store_index *ix, void *arg)
{
    owned_ctx *c = arg;
    if ((c->model && strcmp(ix->model, c->model) == 0) || (c->dataset && strcmp(ix->dataset, c->dataset) == 0))
        if (c->n < 4096) c->ids[c->n++] = ix->id;
    return 0;
}

/* Deletes the indexes built from a model or dataset being deleted: a later
 * registration under the same name may be a different model, and an index of
 * the old one would give wrong answers. Runs in the caller's write txn. */
int api_delete_owned_indexes(store_txn *t, const char *model, const char *dataset)
{
    owned_ctx *c = calloc(1, sizeof *c);
    if (!c) return STORE_ERROR;
    c->model = model;
    c->dataset = dataset;
    int rc = store_index_each(t, collect_owned, c);
    for (int i = 0; i < c->n && rc == STORE_OK; i++) rc = store_index_del(t, c->ids[i]);
    free(c);
    return rc;
}

void api_model_delete(http_req *r)
{
    const char *name = r->params[0];
    store_txn *t;
    int rc = store_txn_begin(r->app->st, 0, &t);
    if (rc == STORE_OK) {
        rc = store_model_del(t, name);
        if (rc == STORE_OK) rc = api_delete_owned_indexes(t, name, NULL);
        if (rc == STORE_OK)
            rc = store_txn_commit(t);
        else
            store_txn_abort(t);
    }
    if (rc == STORE_NOTFOUND) {
        http_reply_error(r, 404, "unknown_model", "model '%s' is not registered", name);
        return;
    }
    if (rc != STORE_OK) {
        http_reply_error(r, rc == STORE_FULL ? 507 : 500, rc == STORE_FULL ? "store_full" : "store_error",
                         "store: %s", store_errmsg());
        return;
    }
    app_model_unregister(r->app, name);
    app_log("model '%s' deleted", name);
    http_reply_json(r, 200, json_pack("{s:s,s:b}", "name", name, "deleted", 1));
}
