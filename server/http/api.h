/* api.h -- the handlers of the HTTP API (README.md, "HTTP API"), by
 * resource. A handler parses its request (proto/), makes one call (catalog,
 * query, build, importer, jobs), and renders the answer or the error. */
#ifndef DE_API_H
#define DE_API_H

#include "catalog.h"
#include "http.h"
#include "registry.h"

/* api_misc.c */
void api_health(http_req *r);
void api_metrics(http_req *r);
void api_static(http_req *r);
void api_openapi(http_req *r);

/* api_models.c */
void api_model_create(http_req *r);
void api_model_list(http_req *r);
void api_model_get(http_req *r);
void api_model_delete(http_req *r);

/* api_datasets.c */
void api_dataset_create(http_req *r);
void api_dataset_upload(http_req *r);
int api_dataset_upload_chunk(http_req *r, const char *data, size_t len);
void api_dataset_upload_cleanup(http_req *r);
void api_dataset_list(http_req *r);
void api_dataset_get(http_req *r);
void api_dataset_delete(http_req *r);
void api_input_list(http_req *r);
void api_dataset_classes(http_req *r);
void api_input_get(http_req *r);
void api_input_png(http_req *r);
void api_input_activations(http_req *r);
/* The dataset of params[0] and the local id of params[1] (404s). */
int api_find_input(http_req *r, store_dataset *d, uint64_t *local, proto_err *e);

/* api_attribution.c */
void api_input_attribution(http_req *r);
void api_input_attribution_png(http_req *r);

/* api_indexes.c */
void api_index_create(http_req *r);
void api_index_list(http_req *r);
void api_index_get(http_req *r);
void api_index_delete(http_req *r);
void api_index_neuron(http_req *r);
void api_job_list(http_req *r);
void api_job_get(http_req *r);
void api_job_delete(http_req *r);

/* api_predictions.c */
void api_predictions_create(http_req *r);
void api_predictions_list(http_req *r);
void api_predictions_get(http_req *r);
void api_predictions_delete(http_req *r);

/* api_query.c */
void api_query_topk(http_req *r);
void api_query_knn(http_req *r);

/* api_render.c: the JSON of the catalog's records */
json_t *api_dataset_json(app *a, const store_dataset *d);
/* Whether the client asked for CSV (?format=csv or Accept: text/csv). */
int api_wants_csv(http_req *r);
/* Replies the array of flat objects arr (stolen) as CSV: a header of the
 * union of their keys, `first` first, then one row per object. */
void api_reply_csv(http_req *r, json_t *arr, const char *first);
json_t *api_model_json(const registry_model *m);
json_t *api_index_json(const store_index *ix);
json_t *api_job_json(app *a, const store_job *j);
json_t *api_shape_json(const int64_t *shape, int ndim);
json_t *api_ids_json(const uint32_t *ids, size_t n);
/* "label", "class", "predicted", "predicted_class" of one input, when known. */
void api_result_extras(json_t *o, const int32_t *label, const int32_t *predicted, const catalog_classes *classes);

/* A decimal id below `limit` from path parameter r->params[i]; 404
 * not_found naming `what` when it is not one. */
int api_path_id(http_req *r, int i, uint64_t limit, const char *what, uint64_t *out, proto_err *e);

#endif
