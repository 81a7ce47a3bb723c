/* coord_api.h -- the coordinator's handlers (coord_api.c: the catalog and
 * per-input reads; coord_query.c: indexes, jobs, predictions, queries) and
 * what they share. The route table is http.c's, one row per daemon route. */
#ifndef DE_COORD_API_H
#define DE_COORD_API_H

#include "coord.h"
#include "http.h"

/* Where a dataset's inputs live: shard i holds [first[i], first[i]+count[i]). */
typedef struct coord_layout {
    uint64_t total;
    uint64_t first[COORD_MAX_SHARDS], count[COORD_MAX_SHARDS];
} coord_layout;

/* From every shard's GET /v1/datasets/{ds} answer in calls (shard 0's
 * record into *first when not NULL): 409 inconsistent_shards unless they
 * are consecutive slices of one whole. */
int coord_layout_of(coord *c, coord_call *calls, coord_layout *L, json_t **first, proto_err *e);
int coord_dataset_layout(http_req *r, const char *dataset, coord_layout *L, json_t **record, proto_err *e);
/* The shard holding global input id, or -1. */
int coord_owner(const coord *c, const coord_layout *L, uint64_t id);
/* Replies the first failure of calls (coord_first_failure); -1 when it did. */
int coord_fail(http_req *r, coord_call *calls, int ok_also);
int coord_target(http_req *r, const char *const *drop, char *out, size_t cap);
void coord_undo(coord *c, coord_call *calls, const char *path);

void coord_health(http_req *r);
void coord_metrics(http_req *r);
void coord_all_same(http_req *r);
void coord_delete_all(http_req *r);
void coord_model_create(http_req *r);
void coord_model_list(http_req *r);
void coord_dataset_create(http_req *r);
void coord_dataset_list(http_req *r);
void coord_dataset_get(http_req *r);
void coord_dataset_classes(http_req *r);
int coord_upload_chunk(http_req *r, const char *data, size_t len);
void coord_upload(http_req *r);
void coord_upload_cleanup(http_req *r);
void coord_input_list(http_req *r);
void coord_input_forward(http_req *r);

void coord_index_create(http_req *r);
void coord_index_list(http_req *r);
void coord_index_get(http_req *r);
void coord_index_delete(http_req *r);
void coord_index_neuron(http_req *r);
void coord_job_list(http_req *r);
void coord_job_get(http_req *r);
void coord_job_delete(http_req *r);
void coord_predictions_create(http_req *r);
void coord_predictions_list(http_req *r);
void coord_predictions_get(http_req *r);
void coord_query_topk(http_req *r);
void coord_query_knn(http_req *r);

#endif
