/* catalog.h -- the catalog between the API and the store.
 *
 * Handlers and the query path never talk to LMDB themselves: they ask the
 * catalog for a model, a dataset or a layer (errors list the valid
 * choices), for the index a query uses and its decoded entries, for a page
 * of inputs; and they delete through it (a delete first stops the builds of
 * what it deletes, then removes everything in one transaction, and says
 * what went). Every store failure becomes an API error in one place
 * (catalog_store_fail).
 *
 * Structural changes (build records created, models and datasets deleted)
 * are serialized by the catalog lock, so a build cannot start on a model
 * or dataset that a delete is removing.
 */
#ifndef DE_CATALOG_H
#define DE_CATALOG_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "jspec.h"
#include "npi.h"
#include "proto.h"
#include "registry.h"
#include "store.h"

/* Store rc (or the last store error) as an API error: 507 store_full, 404
 * `notfound_code` for STORE_NOTFOUND when given, else 500 store_error.
 * Returns -1. */
int catalog_store_fail(int rc, const char *notfound_code, proto_err *e);

void catalog_lock(void);
void catalog_unlock(void);

/* A loaded model by name (a reference: registry_release it). 404
 * unknown_model listing the registered ones; 503 model_unavailable for a
 * registered model whose file could not be loaded. */
registry_model *catalog_model(app *a, const char *name, proto_err *e);
/* A READY dataset by name; 404 unknown_dataset listing the datasets. */
int catalog_dataset(app *a, const char *name, store_dataset *out, proto_err *e);
/* The index of `layer` in m; 404 unknown_layer listing m's layers. */
int catalog_layer(const registry_model *m, const char *layer, proto_err *e);
/* 422 shape_mismatch unless m takes d's inputs; 422 invalid_dataset for an
 * empty dataset or one of more than 2^32-1 inputs. */
int catalog_check_fit(const registry_model *m, const store_dataset *d, proto_err *e);

/* The indexes of (model, dataset, layer): the newest READY partition index
 * and full materialization, and whether one is being built. */
typedef struct catalog_found {
    int have_ready, have_pending, have_full;
    store_index ready, full;
} catalog_found;
int catalog_find_index(store_txn *t, const char *model, const char *dataset, const char *layer, catalog_found *f,
                       proto_err *e);

/* An index of (model, dataset, layer) READY or PENDING with these build
 * parameters (kind, partitions, mai_ratio): 1 and *out, or 0. */
int catalog_find_same(store_txn *t, const char *model, const char *dataset, const char *layer, int kind,
                      uint32_t partitions, float mai_ratio, store_index *out);

/* Decodes the entries of neurons[0..g) of the READY index ix, read in t:
 * views[j] is valid until the end of t. 500 index_damaged when one is
 * missing or corrupt. */
int catalog_index_views(store_txn *t, const store_index *ix, const uint32_t *neurons, size_t g, npi_view *views,
                        proto_err *e);
/* The stored columns float32[count] of a full materialization, likewise. */
int catalog_full_columns(store_txn *t, const store_index *ix, const uint32_t *neurons, size_t g,
                         const float **cols, proto_err *e);

/* What a delete removed. */
typedef struct catalog_deleted {
    uint32_t *indexes;
    size_t nindexes;
    uint32_t *jobs;              /* jobs cancelled on the way */
    size_t njobs;
} catalog_deleted;
void catalog_deleted_free(catalog_deleted *d);

/* Deletes model `name`: out of the registry, its builds cancelled, its
 * record and every index built from it removed in one transaction. */
int catalog_delete_model(app *a, const char *name, catalog_deleted *out, proto_err *e);
/* Deletes dataset `name`, its inputs, labels and indexes, likewise. */
int catalog_delete_dataset(app *a, const char *name, catalog_deleted *out, proto_err *e);
/* Deletes index `id`; one that is being built is dropped from its job first
 * (*job gets that job, *job_cancelled whether it was the job's last index). */
int catalog_delete_index(app *a, uint32_t id, uint32_t *job_id, int *job_cancelled, proto_err *e);

/* Cancels job `id` (queued: never runs; running: stopped) and waits for
 * it; *out gets its record afterwards. 409 job_finished when it already
 * ended. Nothing the job wrote stays (its indexes are deleted). */
int catalog_cancel_job(app *a, uint32_t id, store_job *out, proto_err *e);

/* A page of a dataset's inputs: ids offset.. (local ids) of those that
 * match q (a label; with q->model, a predicted class, misclassified).
 * labels is NULL for a dataset without labels, predicted without q->model.
 * 409 predictions_missing when q names a model without predictions. */
typedef struct catalog_page {
    uint64_t total;              /* inputs that match */
    size_t n;
    uint32_t *ids;
    int32_t *labels;
    int32_t *predicted;
} catalog_page;
int catalog_list_inputs(app *a, const store_dataset *d, const proto_inputs_req *q, catalog_page *out, proto_err *e);
void catalog_page_free(catalog_page *p);

/* The label of local input id: 1 and *label, or 0 when the dataset has none. */
int catalog_label(app *a, const store_dataset *d, uint64_t id, int32_t *label);
/* Local input id as the model sees it (normalized): inputs_numel floats,
 * malloc'd into *x. */
int catalog_input_tensor(app *a, const store_dataset *d, uint64_t id, float **x, proto_err *e);
/* A PNG thumbnail of local input id, the longer side near `side` pixels
 * (malloc'd into *png). */
int catalog_input_png(app *a, const store_dataset *d, uint64_t id, int side, unsigned char **png, size_t *len,
                      proto_err *e);
/* The same with map[mh][mw] over it (thumb_heatmap); 422 no_picture for
 * inputs that have no picture. */
int catalog_input_heatmap(app *a, const store_dataset *d, uint64_t id, const double *map, int mw, int mh,
                          int magnitude, double alpha, int side, unsigned char **png, size_t *len, proto_err *e);

/* Class names of a dataset: names[i] names label i. */
typedef struct catalog_classes {
    size_t n;
    const char **names;          /* into blob */
    char *blob;
} catalog_classes;
/* The class names of d (n = 0 when it has none). */
int catalog_classes_get(app *a, const store_dataset *d, catalog_classes *out, proto_err *e);
void catalog_classes_free(catalog_classes *c);
/* Sets (replaces) them: 422 when the dataset's labels go past the last name. */
int catalog_classes_set(app *a, const char *dataset, const proto_classes *names, proto_err *e);
/* NUL-separated blob of names, as stored (malloc'd); checks labels < n in t. */
int catalog_classes_blob(store_txn *t, const store_dataset *d, const proto_classes *names, char **blob, size_t *len,
                         proto_err *e);

/* Single records: 404 unknown_index / unknown_job. */
int catalog_get_index(app *a, uint32_t id, store_index *out, proto_err *e);
/* The id the next job will get here (a coordinator picks one above every shard's). */
int catalog_next_job_id(app *a, uint32_t *out, proto_err *e);
int catalog_get_job(app *a, uint32_t id, store_job *out, proto_err *e);
/* Copies of every record in key order (malloc'd; datasets: READY ones). */
int catalog_models(app *a, store_model **out, size_t *n, proto_err *e);
int catalog_datasets(app *a, store_dataset **out, size_t *n, proto_err *e);
int catalog_indexes(app *a, store_index **out, size_t *n, proto_err *e);
int catalog_jobs(app *a, store_job **out, size_t *n, proto_err *e);

/* One neuron's entry of a READY partition index, as a histogram: per
 * partition its input count and bounds, and the first `mai` MAI entries. */
typedef struct catalog_neuron {
    uint32_t partitions, mai_count, nmai;
    uint64_t counts[NPI_MAX_PARTITIONS];
    float lower[NPI_MAX_PARTITIONS], upper[NPI_MAX_PARTITIONS];
    uint32_t *mai_ids;           /* [nmai] */
    float *mai_values;
} catalog_neuron;
int catalog_neuron_entry(app *a, const store_index *ix, uint32_t neuron, uint32_t mai, catalog_neuron *out,
                         proto_err *e);
void catalog_neuron_free(catalog_neuron *n);

/* Registers a model: loads the file (resolved path; a file that does not
 * load leaves no trace: 422 invalid_model), then records it (409
 * model_exists). *out gets a reference to the loaded model. */
int catalog_register_model(app *a, const proto_model_req *q, const char *path, registry_model **out,
                           proto_err *e);

#endif
