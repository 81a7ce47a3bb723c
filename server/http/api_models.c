/* api_models.c -- POST/GET/DELETE /v1/models. */
#include <limits.h>
#include <stdlib.h>

#include "api.h"
#include "catalog.h"
#include "pathcheck.h"
#include "proto.h"

void api_model_create(http_req *r)
{
    proto_model_req q = {0};
    proto_err e;
    registry_model *m = NULL;
    char real[PATH_MAX];
    if (proto_parse_model(r->body, r->body_len, &q, &e) != 0 ||
        pathcheck_resolve(r->app->cfg.import_root, q.path, "path", real, sizeof real, &e) != 0 ||
        catalog_register_model(r->app, &q, real, &m, &e) != 0)
        http_reply_err(r, &e);
    else
        http_reply_json(r, 201, api_model_json(m));
    registry_release(m);
    proto_free_model(&q);
}

void api_model_list(http_req *r)
{
    store_model *recs = NULL;
    size_t n = 0;
    proto_err e;
    if (catalog_models(r->app, &recs, &n, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        registry_model *m = registry_get(r->app->models, recs[i].name);
        if (m) {
            json_array_append_new(arr, api_model_json(m));
            registry_release(m);
        } else {
            json_array_append_new(arr, json_pack("{s:s,s:s,s:s,s:I}", "name", recs[i].name, "path", recs[i].path,
                                                 "state", "unavailable", "created", (json_int_t)recs[i].created));
        }
    }
    free(recs);
    http_reply_json(r, 200, json_pack("{s:o}", "models", arr));
}

void api_model_get(http_req *r)
{
    proto_err e;
    registry_model *m = catalog_model(r->app, r->params[0], &e);
    if (!m) {
        http_reply_err(r, &e);
        return;
    }
    http_reply_json(r, 200, api_model_json(m));
    registry_release(m);
}

void api_model_delete(http_req *r)
{
    proto_err e;
    catalog_deleted d;
    if (catalog_delete_model(r->app, r->params[0], &d, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    http_reply_json(r, 200, json_pack("{s:s,s:b,s:o,s:o}", "name", r->params[0], "deleted", 1, "indexes",
                                      api_ids_json(d.indexes, d.nindexes), "jobs_cancelled",
                                      api_ids_json(d.jobs, d.njobs)));
    catalog_deleted_free(&d);
}
