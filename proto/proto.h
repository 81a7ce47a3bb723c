/* proto.h -- the JSON requests of the HTTP API (README.md, "HTTP API") as C
 * structs, and the error body.
 *
 * Knows JSON (jansson), not HTTP, LMDB or torch. Every proto_parse_* takes the
 * raw request body, fills its struct, and on failure fills a proto_err with
 * the HTTP status (400 malformed JSON / wrong type / unknown field, 422 a
 * value that is well-formed but not acceptable), a snake_case code and a
 * message naming the field. Whether it succeeds or not, proto_free_* releases
 * everything it allocated (one cleanup path for callers); a zeroed struct is
 * valid to free.
 *
 * Limits enforced here (and documented in the README): k in [1, 1e6],
 * neurons 1..PROTO_MAX_GROUP, weights one per neuron and >= 0 (not all 0),
 * filter ids <= 1e7 entries, tensor targets <= 1<<24 floats.
 */
#ifndef DE_PROTO_H
#define DE_PROTO_H

#include "jspec.h"

#define PROTO_NAME_MAX 64
#define PROTO_LAYER_MAX 127
#define PROTO_MAX_GROUP 65536
#define PROTO_MAX_K 1000000
#define PROTO_MAX_LAYERS 16
#define PROTO_MAX_DIMS 8
#define PROTO_MAX_CHANNELS 16

/* POST /v1/models {"name","path","input_shape"?,"layout"?} */
typedef struct proto_model_req {
    char name[PROTO_NAME_MAX + 1];
    char *path;
    int ndim;                          /* 0 = not given */
    int64_t input_shape[PROTO_MAX_DIMS];
    int layout;                        /* 0 auto (the daemon's --layout), 1 contiguous,
                                          2 channels-last */
} proto_model_req;

/* Class names: names[i] names label i; each 1..PROTO_CLASS_MAX bytes of
 * UTF-8 without NUL, at most PROTO_MAX_CLASSES of them. */
#define PROTO_CLASS_MAX 128
#define PROTO_MAX_CLASSES 100000
typedef struct proto_classes {
    size_t n;
    char **names;
} proto_classes;

/* POST /v1/datasets {"name","path","format"?,"labels_path"?,"scale"?,"mean"?,"std"?,"classes"?}
 * mean/std: a number or one number per channel. format: "npy"|"idx"|absent
 * (detected from the file). */
enum { PROTO_FMT_AUTO = 0, PROTO_FMT_NPY = 1, PROTO_FMT_IDX = 2 };
typedef struct proto_dataset_req {
    char name[PROTO_NAME_MAX + 1];
    char *path;
    char *labels_path;                 /* NULL = none */
    int format;
    int has_scale;
    double scale;
    int nmean, nstd;                   /* 0 = default (0 and 1) */
    double mean[PROTO_MAX_CHANNELS];
    double std[PROTO_MAX_CHANNELS];
    proto_classes classes;             /* "classes": names of the labels 0..n-1 (n = 0: none) */
    /* "slice": {"shard": i, "shards": n}: keep inputs [i*N/n, (i+1)*N/n) of
     * the file's N, with their global ids (a coordinator's shard) */
    int has_slice;
    uint32_t slice_shard, slice_shards;
} proto_dataset_req;
#define PROTO_MAX_SHARDS 1024

/* PUT /v1/datasets/{name}/classes {"classes": [...]} */
int proto_parse_classes(const char *body, size_t len, proto_classes *r, proto_err *e);
void proto_free_classes(proto_classes *r);

/* Query-string form of the same options for PUT /v1/datasets/{name}:
 * "scale", "mean", "std" (comma-separated numbers). value NULL = absent. */
int proto_dataset_opts(proto_dataset_req *r, const char *scale, const char *mean,
                       const char *std, proto_err *e);
/* ... and "shard", "shards" (both or neither): the slice. */
int proto_dataset_slice(proto_dataset_req *r, const char *shard, const char *shards, proto_err *e);

/* POST /v1/indexes {"model","dataset","layer" | "layers":[...],
 *   "partitions"?, "mai_ratio"?, "storage_budget"?} */
typedef struct proto_index_req {
    char model[PROTO_NAME_MAX + 1];
    char dataset[PROTO_NAME_MAX + 1];
    int nlayers;
    char layers[PROTO_MAX_LAYERS][PROTO_LAYER_MAX + 1];
    int has_partitions, has_mai_ratio, has_budget;
    uint32_t partitions;               /* 2..256 */
    double mai_ratio;                  /* 0..0.5 */
    double storage_budget;             /* (0, 1] fraction of full materialization */
    int kind;                          /* "kind": "npi" (default) = 0, "full" = 1
                                          (full materialization, the PreprocessAll baseline) */
    int has_eager;
    int eager;                         /* "eager": enum proto_eager */
    uint32_t job_id;                   /* "job_id": the job's id, chosen by a coordinator (0 = next) */
} proto_index_req;

/* Which other layers a pass that builds an index indexes too (README:
 * "Incremental indexing"): none, the earlier ones it computes anyway and
 * that fit in memory, those and cheap deeper ones, or every layer. */
enum proto_eager { EAGER_NONE = 0, EAGER_BEFORE, EAGER_FIT, EAGER_ALL };
extern const char *const proto_eager_names[];

/* A neuron group as sent: flat indices, or coordinate arrays of one rank. */
typedef struct proto_neurons {
    size_t n;
    int rank;                          /* 0 = flat indices in v[n]; else v[n*rank] */
    int64_t *v;
} proto_neurons;

/* Flattens against the layer's per-input shape; 422 "neuron_out_of_range"
 * naming the offending entry; duplicates are a 422 too. out has g->n slots. */
int proto_neurons_flatten(const proto_neurons *g, const int64_t *shape, int ndim,
                          uint32_t *out, proto_err *e);

enum proto_agg { AGG_SUM = 0, AGG_MEAN, AGG_MAX, AGG_MIN };
enum proto_metric { METRIC_L2 = 0, METRIC_L1, METRIC_LINF, METRIC_COSINE };
/* METHOD_MATERIALIZED: flat scan over a full materialization of the layer
 * (the PreprocessAll baseline; needs an index of kind "full"). */
enum proto_method { METHOD_AUTO = 0, METHOD_NTA, METHOD_BOUNDS, METHOD_SCAN, METHOD_MATERIALIZED };

/* POST /v1/query/topk and /v1/query/knn. */
typedef struct proto_query_req {
    int knn;                           /* 0 top-k, 1 kNN */
    char model[PROTO_NAME_MAX + 1];
    char dataset[PROTO_NAME_MAX + 1];
    char layer[PROTO_LAYER_MAX + 1];
    proto_neurons neurons;
    uint64_t k;
    int agg;                           /* enum proto_agg (top-k) */
    int metric;                        /* enum proto_metric (kNN) */
    int method;                        /* enum proto_method */
    size_t nweights;                   /* 0 = unweighted, else == neurons.n */
    double *weights;
    int has_filter;
    size_t nfilter_ids;  uint64_t *filter_ids;
    size_t nfilter_labels; int64_t *filter_labels;
    size_t nfilter_predicted; int64_t *filter_predicted; /* the model's predicted classes */
    int filter_misclassified;                           /* predicted != label */
    /* kNN target: an input id, a tensor already in the model's input space,
     * or the group's activation vector itself (one float per neuron) */
    int has_target_id;
    uint64_t target_id;
    size_t ntensor;
    float *tensor;
    size_t nactivations;
    float *activations;
    int include_target;
    uint32_t batch;                    /* 0 = server default */
    double timeout_s;                  /* 0 = server default */
    int has_eager;                     /* the query builds its layer's index: */
    int eager;                         /* which other layers too (enum proto_eager) */
    int has_threshold;                 /* "threshold": inputs strictly worse may be left out */
    double threshold;                  /*   (a coordinator's bound from other shards) */
} proto_query_req;

int proto_parse_model(const char *body, size_t len, proto_model_req *r, proto_err *e);
void proto_free_model(proto_model_req *r);
int proto_parse_dataset(const char *body, size_t len, proto_dataset_req *r, proto_err *e);
void proto_free_dataset(proto_dataset_req *r);
int proto_parse_index(const char *body, size_t len, proto_index_req *r, proto_err *e);
void proto_free_index(proto_index_req *r);
int proto_parse_query(const char *body, size_t len, int knn, proto_query_req *r, proto_err *e);
void proto_free_query(proto_query_req *r);

/* GET /v1/datasets/{ds}/inputs/{id}/activations?model=&layer=&top=10
 * (or &neurons=3,17,42): query-string arguments, value NULL = absent. */
typedef struct proto_activations_req {
    char model[PROTO_NAME_MAX + 1];
    char layer[PROTO_LAYER_MAX + 1];
    size_t nneurons;                   /* 0 = the top `top` neurons */
    uint64_t *neurons;
    uint64_t top;                      /* default 10 */
} proto_activations_req;
int proto_parse_activations(const char *model, const char *layer, const char *neurons, const char *top,
                            proto_activations_req *r, proto_err *e);
void proto_free_activations(proto_activations_req *r);

/* GET /v1/datasets/{ds}/inputs?offset=0&limit=100[&label=L][&model=M[&predicted=P][&misclassified=1]] */
typedef struct proto_inputs_req {
    uint64_t offset, limit;            /* limit 1..1000, default 100 */
    int has_label;
    int32_t label;
    char model[PROTO_NAME_MAX + 1];    /* "" = none: no predictions shown */
    int has_predicted;
    int32_t predicted;
    int misclassified;
} proto_inputs_req;
int proto_parse_inputs(const char *offset, const char *limit, const char *label, const char *model,
                       const char *predicted, const char *misclassified, proto_inputs_req *r, proto_err *e);

/* POST /v1/predictions {"model","dataset","layer"?} */
typedef struct proto_predictions_req {
    char model[PROTO_NAME_MAX + 1];
    char dataset[PROTO_NAME_MAX + 1];
    char layer[PROTO_LAYER_MAX + 1];   /* "" = the model's last layer */
    uint32_t job_id;                   /* as in proto_index_req */
} proto_predictions_req;
int proto_parse_predictions(const char *body, size_t len, proto_predictions_req *r, proto_err *e);

/* GET /v1/datasets/{ds}/inputs/{id}/attribution[.png]?model=&layer=&neurons=
 *   [&agg=sum|mean|max|min][&weights=..][&method=gradient|gradcam|channel]
 *   [&samples=0..64&noise=0.15&seed=0] (gradient: SmoothGrad)
 *   [&cam_layer=L] (gradcam) [&size=112&alpha=0.5] (png)
 * The query string comes through arg(ctx, name): the value, or NULL. */
enum proto_attr_method { ATTR_GRADIENT = 0, ATTR_GRADCAM, ATTR_CHANNEL };
#define PROTO_MAX_SAMPLES 64
typedef struct proto_attribution_req {
    char model[PROTO_NAME_MAX + 1];
    char layer[PROTO_LAYER_MAX + 1];
    uint64_t *neurons;                 /* flat indices */
    size_t nneurons;
    double *weights;                   /* [nneurons] or NULL */
    int agg;                           /* enum proto_agg, default sum */
    int method;                        /* enum proto_attr_method, default gradient */
    uint64_t samples;                  /* 0 = the plain gradient */
    double noise;                      /* SmoothGrad sigma / (max - min) of the input */
    uint64_t seed;
    char cam_layer[PROTO_LAYER_MAX + 1]; /* "" = the deepest [C,H,W] layer at or before layer */
    uint64_t size;                     /* png: longer side, 16..1024, default 112 */
    double alpha;                      /* png: heat over the image, 0..1, default 0.5 */
} proto_attribution_req;
int proto_parse_attribution(const char *(*arg)(void *ctx, const char *name), void *ctx, proto_attribution_req *r,
                            proto_err *e);
void proto_free_attribution(proto_attribution_req *r);
extern const char *const proto_attr_method_names[]; /* "gradient", "gradcam", "channel" */

/* {"error":{"code","message"}} as a malloc'd NUL-terminated string. */
char *proto_error_body(const proto_err *e);

/* True for [A-Za-z0-9._-]{1,64}. */
int proto_valid_name(const char *s);

#endif
