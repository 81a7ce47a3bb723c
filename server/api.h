/* api.h -- the handlers of the HTTP API (DESIGN.md section 4), by resource. */
#ifndef DE_API_H
#define DE_API_H

#include "http.h"

/* api_misc.c */
void api_health(http_req *r);
void api_metrics(http_req *r);
void api_static(http_req *r);

/* api_models.c */
void api_model_create(http_req *r);
void api_model_list(http_req *r);
void api_model_get(http_req *r);
void api_model_delete(http_req *r);
/* Layer description {"name","shape","neurons"} list of a loaded model. */
json_t *api_model_layers_json(const shim_model *m);

/* api_datasets.c */
void api_dataset_create(http_req *r);
void api_dataset_upload(http_req *r);
int api_dataset_upload_chunk(http_req *r, const char *data, size_t len);
void api_dataset_upload_cleanup(http_req *r);
void api_dataset_list(http_req *r);
void api_dataset_get(http_req *r);
void api_dataset_delete(http_req *r);
void api_input_get(http_req *r);
void api_input_png(http_req *r);
void api_input_activations(http_req *r);
json_t *api_dataset_json(const store_dataset *d);

/* api_indexes.c */
void api_index_create(http_req *r);
void api_index_list(http_req *r);
void api_index_get(http_req *r);
void api_index_delete(http_req *r);
void api_index_neuron(http_req *r);
void api_job_list(http_req *r);
void api_job_get(http_req *r);

/* api_query.c */
void api_query_topk(http_req *r);
void api_query_knn(http_req *r);

/* Common lookups that reply with the right 404/503 on failure and return -1. */
int api_find_dataset(http_req *r, const char *name, store_dataset *out);
app_model *api_find_model(http_req *r, const char *name);
/* Parses a decimal id in [0, limit) from a path segment; replies 404 if not. */
int api_parse_id(http_req *r, const char *s, uint64_t limit, const char *what, uint64_t *out);

#endif
