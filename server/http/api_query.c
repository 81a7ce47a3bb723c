/* api_query.c -- POST /v1/query/topk and /v1/query/knn. */
#include "api.h"
#include "proto.h"
#include "query.h"

static void run(http_req *r, int knn)
{
    proto_query_req q = {0};
    proto_err e;
    query_answer ans;
    if (proto_parse_query(r->body, r->body_len, knn, &q, &e) != 0 || query_run(r->app, &q, &ans, &e) != 0) {
        proto_free_query(&q);
        http_reply_err(r, &e);
        return;
    }
    int csv = api_wants_csv(r);
    json_t *arr = json_array();
    for (size_t i = 0; i < ans.n; i++) {
        json_t *o = json_pack("{s:I,s:f}", "input", (json_int_t)ans.results[i].input, knn ? "distance" : "score",
                              ans.results[i].value);
        if (csv) json_object_set_new(o, "rank", json_integer((json_int_t)i + 1));
        api_result_extras(o, ans.labels ? &ans.labels[i] : NULL, ans.predicted ? &ans.predicted[i] : NULL,
                          &ans.classes);
        json_array_append_new(arr, o);
    }
    json_t *stats = json_pack("{s:s,s:I,s:I,s:I,s:f,s:f,s:f,s:s,s:I,s:I,s:f}", "method", ans.method, "inputs_computed",
                              (json_int_t)ans.computed, "cache_hits", (json_int_t)ans.cache_hits, "inputs_fetched",
                              (json_int_t)ans.fetched, "elapsed_ms", ans.elapsed_ms, "inference_ms", ans.inference_ms,
                              "cell_ms", ans.cell_ms, "index", ans.index_use, "index_id", (json_int_t)ans.index_id,
                              "rounds", (json_int_t)ans.rounds, "fraction_computed",
                              ans.inputs ? (double)ans.computed / (double)ans.inputs : 0.0);
    json_object_set_new(stats, "forwards", json_integer((json_int_t)ans.forwards));
    json_object_set_new(stats, "inputs", json_integer((json_int_t)ans.inputs));
    json_object_set_new(stats, "inputs_from_index", json_integer((json_int_t)ans.known));
    json_object_set_new(stats, "inputs_bound_relaxed", json_integer((json_int_t)ans.relaxed));
    query_answer_free(&ans);
    proto_free_query(&q);
    if (csv) { /* the results, a row each; the stats stay in JSON answers */
        json_decref(stats);
        api_reply_csv(r, arr, "rank");
        return;
    }
    http_reply_json(r, 200, json_pack("{s:o,s:o}", "results", arr, "stats", stats));
}

void api_query_topk(http_req *r) { run(r, 0); }
void api_query_knn(http_req *r) { run(r, 1); }
