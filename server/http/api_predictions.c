/* api_predictions.c -- POST/GET/DELETE /v1/predictions: a model's predicted
 * classes over a dataset, and their confusion matrix. */
#include <stdlib.h>

#include "api.h"
#include "catalog.h"
#include "predictions.h"
#include "proto.h"

static json_t *predictions_json(app *a, const store_predictions *p, const store_dataset *d)
{
    static const char *states[] = {"computing", "ready", "failed", "failed"};
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I}", "model", p->model, "dataset", d->name, "layer", p->layer,
                          "state", states[p->state & 3], "count", (json_int_t)p->count, "job", (json_int_t)p->job,
                          "created", (json_int_t)p->created);
    if (p->state == STORE_READY && d->has_labels && p->count)
        json_object_set_new(o, "accuracy", json_real((double)p->correct / (double)p->count));
    (void)a;
    return o;
}

void api_predictions_create(http_req *r)
{
    proto_predictions_req q;
    proto_err e;
    store_predictions p;
    store_dataset d;
    int reused;
    if (proto_parse_predictions(r->body, r->body_len, &q, &e) != 0 ||
        predictions_submit(r->app, q.model, q.dataset, q.layer[0] ? q.layer : NULL, q.job_id, &p, &reused, &e) != 0 ||
        catalog_dataset(r->app, q.dataset, &d, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    json_t *o = predictions_json(r->app, &p, &d);
    json_object_set_new(o, "reused", json_boolean(reused));
    http_reply_json(r, reused ? 200 : 202, o);
}

void api_predictions_list(http_req *r)
{
    store_dataset *ds = NULL;
    size_t nds = 0;
    proto_err e;
    if (catalog_datasets(r->app, &ds, &nds, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    store_model *ms = NULL;
    size_t nms = 0;
    if (catalog_models(r->app, &ms, &nms, &e) != 0) {
        free(ds);
        http_reply_err(r, &e);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < nds; i++)
        for (size_t k = 0; k < nms; k++) {
            store_predictions p = {0};
            proto_err ignored;
            if (predictions_get(r->app, ms[k].name, &ds[i], &p, NULL, &ignored) == 0 ||
                (p.model[0] && p.state == STORE_PENDING))
                json_array_append_new(arr, predictions_json(r->app, &p, &ds[i]));
        }
    free(ds);
    free(ms);
    http_reply_json(r, 200, json_pack("{s:o}", "predictions", arr));
}

/* GET /v1/predictions/{model}/{dataset}: the record, and with labels the
 * confusion matrix (rows: labels, columns: predicted classes). */
void api_predictions_get(http_req *r)
{
    store_dataset d;
    store_predictions p;
    proto_err e;
    predictions_confusion c = {0};
    catalog_classes cls = {0};
    if (catalog_dataset(r->app, r->params[1], &d, &e) != 0 ||
        predictions_get(r->app, r->params[0], &d, &p, NULL, &e) != 0 ||
        predictions_confusion_get(r->app, r->params[0], &d, &c, &e) != 0 ||
        catalog_classes_get(r->app, &d, &cls, &e) != 0) {
        free(c.counts);
        http_reply_err(r, &e);
        return;
    }
    json_t *o = predictions_json(r->app, &p, &d);
    if (d.has_labels) {
        json_t *rows = json_array();
        for (size_t t = 0; t < c.n; t++) {
            json_t *row = json_array();
            for (size_t k = 0; k < c.n; k++) json_array_append_new(row, json_integer((json_int_t)c.counts[t * c.n + k]));
            json_array_append_new(rows, row);
        }
        json_object_set_new(o, "confusion", rows);
        json_object_set_new(o, "confusion_outside", json_integer((json_int_t)c.outside));
    }
    if (cls.n) {
        json_t *names = json_array();
        for (size_t i = 0; i < cls.n && i < 1000; i++) json_array_append_new(names, json_string(cls.names[i]));
        json_object_set_new(o, "classes", names);
    }
    free(c.counts);
    catalog_classes_free(&cls);
    http_reply_json(r, 200, o);
}

void api_predictions_delete(http_req *r)
{
    store_dataset d;
    proto_err e;
    if (catalog_dataset(r->app, r->params[1], &d, &e) != 0 || predictions_delete(r->app, r->params[0], &d, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    http_reply_json(r, 200, json_pack("{s:s,s:s,s:b}", "model", r->params[0], "dataset", d.name, "deleted", 1));
}
