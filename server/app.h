/* app.h -- the daemon's shared state.
 *
 * server/ wires proto/ (JSON), storage/ (LMDB), shim/ (torch) and the query
 * engine together. One `app` lives for the whole process; handlers reach it
 * through their request. What each part owns:
 *   registry.h  the loaded models        infer.h    batched, exact inference
 *   catalog.h   the catalog (LMDB)       query.h    one query, end to end
 *   jobs.h      background jobs          builder/   index builds
 *   source.h    activations for the engine, behind the shared cache
 */
#ifndef DE_APP_H
#define DE_APP_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "log.h"
#include "store.h"

#define DE_VERSION "0.2.0"

typedef struct app_config {
    const char *data_dir;
    char listen_host[64];
    int listen_port;
    const char *device;          /* auto|cpu|cuda */
    size_t cache_mb;
    int threads;                 /* torch intra-op threads, 0 = cores */
    const char *token_file;
    char *token;                 /* loaded bearer token, NULL = open */
    size_t build_memory_mb;      /* activations a build may hold */
    size_t infer_memory_mb;      /* what one forward may hold: bounds a model's batch */
    int eager_layers;            /* enum proto_eager: what a query-built index pass indexes too */
    int exact_partitions;        /* --partitioning exact: every layer ranked whole (builder_core.h),
                                    not cut at a sample in the pass (builder_stream.h) */
    uint32_t batch;              /* inference batch size (at most; see infer.h) */
    int layout;                  /* --layout of models registered from now on: 0 auto
                                    (channels-last on CPU), else enum shim_layout */
    const char *import_root;     /* path imports confined here; NULL = anywhere */
    size_t max_body_mb;          /* cap of a JSON body; raw uploads: max_upload_mb */
    size_t max_upload_mb;
    double query_timeout_s;      /* per-query limit, 0 = none */
    int max_builds;              /* concurrent index builds */
    unsigned client_timeout_s;   /* a connection idle this long is closed (slow clients) */
    size_t map_mb;               /* LMDB map size */
    const char *static_dir;      /* explorer files */
    const char *shards;          /* --coordinator --shards URL[,URL...] */
    double shard_timeout_s;      /* a shard call's bound */
    int merge_threshold;         /* --merge threshold|parallel */
} app_config;

typedef struct app_metrics {
    atomic_ullong requests, errors_4xx, errors_5xx;
    atomic_ullong queries_topk, queries_knn;
    atomic_ullong inputs_computed, inference_batches;
    atomic_ullong inflight;
} app_metrics;

struct registry;
struct jobs;
struct coord;

typedef struct app {
    app_config cfg;
    store *st;
    cache *cache;
    struct registry *models;     /* registry.h */
    struct jobs *jobs;           /* jobs.h */
    app_metrics metrics;
    atomic_int stopping;
    const char *device_name;     /* "cpu" or "cuda" */
    struct coord *coord;         /* coordinator mode (coord.h): no store, models, jobs */
} app;

#endif
