/* app.h -- the daemon's shared state and the glue between the modules.
 *
 * server/ wires proto/ (JSON), storage/ (LMDB), shim/ (torch) and the engine
 * together. One `app` lives for the whole process; handlers get it through
 * the request. Loaded models are reference-counted so a DELETE while a query
 * runs frees the model only when the query is done.
 */
#ifndef DE_APP_H
#define DE_APP_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "shim.h"
#include "store.h"

#define DE_VERSION "0.1.0"

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
    uint32_t batch;              /* inference batch size */
    const char *import_root;     /* path imports confined here; NULL = anywhere */
    size_t max_body_mb;          /* cap of a JSON body; raw uploads: max_upload_mb */
    size_t max_upload_mb;
    double query_timeout_s;      /* per-query limit, 0 = none */
    int max_builds;              /* concurrent index builds */
    unsigned client_timeout_s;   /* a connection idle this long is closed (slow clients) */
    size_t map_mb;               /* LMDB map size */
    const char *static_dir;      /* explorer files */
} app_config;

/* A registered model, loaded. */
typedef struct app_model {
    char name[STORE_NAME_MAX + 1];
    uint32_t gen;                /* generation id for cache keys */
    shim_model *shim;
    pthread_mutex_t run_lock;    /* serializes shim_run on this model, */
    pthread_cond_t run_turn;     /* first come first served: tickets, so */
    unsigned long run_next, run_serving; /* no query starves under load */
    /* Batch slots that compute an input bit-identically (see app_infer):
     * pos_class[p] for p < cfg.batch, classes numbered 0..nclass-1. */
    uint16_t *pos_class;
    int nclass;
    atomic_int refs;
    store_model rec;
    struct app_model *next;
} app_model;

typedef struct app_metrics {
    atomic_ullong requests, errors_4xx, errors_5xx;
    atomic_ullong queries_topk, queries_knn;
    atomic_ullong inputs_computed, inference_batches;
    atomic_ullong inflight;
} app_metrics;

struct jobs;

typedef struct app {
    app_config cfg;
    store *st;
    cache *cache;
    pthread_mutex_t models_lock;
    app_model *models;
    app_metrics metrics;
    struct jobs *jobs;
    atomic_int stopping;
    const char *device_name;     /* "cpu" or "cuda" */
} app;

/* Models: app_model_get returns a referenced model (or NULL); release with
 * app_model_put. Registration loads the file through the shim. */
app_model *app_model_get(app *a, const char *name);
void app_model_put(app_model *m);
/* Loads every model of the catalog at start-up; a model whose file is gone
 * or broken is logged and left unloaded (requests naming it get 503). */
int app_models_load_all(app *a);
/* Loads rec's file into a detached model (one reference, the caller's). */
int app_model_load(app *a, const store_model *rec, app_model **out, char *err, size_t errlen);
/* Puts a loaded model in the registry (which takes its own reference),
 * replacing one of the same name. */
void app_model_insert(app *a, app_model *m);
int app_model_unregister(app *a, const char *name);
void app_models_free(app *a);

/* Reads inputs [ids] of a dataset and writes them normalized as float
 * (input_numel floats each) into out, inside the read txn t. */
int app_inputs_load(store_txn *t, const store_dataset *d, const uint32_t *ids, size_t n,
                    float *out, char *err, size_t errlen);
size_t app_dataset_numel(const store_dataset *d);

/* The model runs one forward at a time: a caller takes its turn (first
 * come, first served) around app_infer and whatever must not interleave
 * with another caller's forwards (e.g. re-checking the cache). */
void app_model_run_begin(app_model *m);
void app_model_run_end(app_model *m);

/* Runs the model on normalized inputs at the given layers, counting
 * metrics. The caller holds the model's turn (app_model_run_begin). ids[i] is the dataset id of input i: every input is
 * computed in a batch slot of the class of slot (id mod cfg.batch), so its
 * activations are the same bits whichever query asks for it. ids NULL (a
 * tensor from a request): any slot. */
int app_infer(app *a, app_model *m, const uint32_t *ids, const float *in, size_t n, const int *layers,
              int nlayers, float *const *outs, char *err, size_t errlen);

/* Logging to stderr with a timestamp. */
void app_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
double app_now_ms(void);
int64_t app_unix_now(void);

#endif
