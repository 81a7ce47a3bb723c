/* query.h -- one top-k or kNN query, end to end.
 *
 * query_run resolves the request against the catalog (model, dataset,
 * layer, group), builds the candidate filter, gets the kNN target's group
 * activations, picks the index and the method, runs the engine over the
 * model-behind-the-cache source (or, for a layer without an index, the pass
 * that builds one and answers the query: incremental indexing), and returns
 * the answer with its statistics. Ids in requests and answers are global
 * dataset ids (a shard holds a slice of them).
 */
#ifndef DE_QUERY_H
#define DE_QUERY_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "catalog.h"
#include "engine.h"
#include "proto.h"
#include "shim.h"

typedef struct query_answer {
    int knn;
    size_t n;
    eng_result *results;         /* best first; input = global id */
    int32_t *labels;             /* [n], or NULL: the dataset has no labels */
    int32_t *predicted;          /* [n], or NULL: the model has no predictions over it */
    catalog_classes classes;     /* the dataset's class names (n = 0: none) */
    const char *method;          /* "bounds", "nta", "scan" or "materialized" */
    const char *index_use;       /* "used", "built" or "none" */
    uint32_t index_id;
    uint64_t inputs;             /* candidates' dataset size (for fractions) */
    uint64_t computed, cache_hits, fetched, rounds, forwards;
    uint64_t known;               /* scored from the index's exact values, no forward */
    uint64_t relaxed;             /* kNN: bounds relaxed from the guessed target (eng_stats) */
    double elapsed_ms, inference_ms, cell_ms;
} query_answer;

/* Runs q. On failure fills e: 404 unknown model/dataset/layer, 422 invalid
 * group/k/filter/target, 409 index_building or not_materialized for a
 * method that needs an index, 503 query_timeout, 507, 500. */
int query_run(app *a, const proto_query_req *q, query_answer *out, proto_err *e);
void query_answer_free(query_answer *ans);

/* One input's activations at a layer (id: local id of d): the neurons asked
 * for, in order, or its `top` most active (value descending, ties by the
 * smaller neuron). *out is malloc'd; *ly gets the layer (name pointer valid
 * only during the call). 404 unknown model/layer, 422 neuron_out_of_range. */
typedef struct query_activation {
    uint32_t neuron;
    float value;
} query_activation;
int query_activations(app *a, const store_dataset *d, uint64_t id, const proto_activations_req *r,
                      query_activation **out, size_t *n, shim_layer *ly, proto_err *e);

#endif
