/* store.h -- the one LMDB environment under --data DIR.
 *
 * Knows LMDB, not HTTP, JSON or torch. Holds a schema version, the catalog
 * (models, datasets, indexes, jobs), the inputs of every dataset with their
 * labels, and opaque per-neuron index blobs whose format belongs to the index
 * code (server/npi.h).
 *
 * Objects that take several write transactions to create (a dataset import,
 * an index build) are written with state PENDING first and flipped to READY
 * in the transaction that writes their last piece, so readers see an object
 * only when it is complete. A dataset being deleted is marked DELETING first
 * (readers stop seeing it) and removed with everything it owns in one
 * transaction once its builds are stopped. store_open() sweeps what a crash
 * left unfinished: PENDING and DELETING datasets and their inputs are
 * deleted, PENDING indexes are marked FAILED and their neuron blobs deleted,
 * RUNNING/QUEUED jobs are marked FAILED.
 *
 * One process owns a directory: store_open takes an exclusive lock
 * (DIR/deepeverest.lock) and fails while another process holds it, so a
 * second daemon never sweeps a live one's work. store_open_readonly (for
 * --stat) takes no lock, sweeps nothing and writes nothing.
 *
 * Lifetimes: a store is valid from store_open to store_close; a transaction
 * from store_txn_begin to store_txn_commit/abort, and a pointer returned by
 * a *_get call into LMDB's map (zero-copy, or a copy owned by the
 * transaction where LMDB's pointer is misaligned) is valid until the end of
 * the transaction it was read in. Read transactions may be used from the thread
 * that began them only (MDB_NOTLS is set, so many may be open per thread).
 * One write transaction at a time across the process: others block.
 */
#ifndef DE_STORE_H
#define DE_STORE_H

#include <stddef.h>
#include <stdint.h>

#define STORE_SCHEMA_VERSION 1
#define STORE_NAME_MAX 64      /* model/dataset names: [A-Za-z0-9._-]{1,64} */
#define STORE_PATH_MAX 1024
#define STORE_LAYER_MAX 128
#define STORE_MAX_DIMS 8
#define STORE_MAX_CHANNELS 16
#define STORE_ERR_MAX 256

/* Return codes of every int-returning call. */
enum {
    STORE_OK = 0,
    STORE_NOTFOUND = 1, /* key or object absent */
    STORE_EXISTS = 2,   /* create of a name that is taken */
    STORE_FULL = 3,     /* LMDB map full: report 507, keep serving reads */
    STORE_ERROR = -1    /* anything else; message in store_errmsg() */
};

typedef struct store store;
typedef struct store_txn store_txn;

enum store_state { STORE_PENDING = 0, STORE_READY = 1, STORE_FAILED = 2, STORE_DELETING = 3 };
enum store_dtype { STORE_U8 = 1, STORE_F32 = 2 };
enum store_job_state { JOB_QUEUED = 0, JOB_RUNNING = 1, JOB_DONE = 2, JOB_FAILED = 3 };

typedef struct store_model {
    char name[STORE_NAME_MAX + 1];
    char path[STORE_PATH_MAX];
    int ndim;                          /* 0 = input shape from the archive */
    int64_t input_shape[STORE_MAX_DIMS];
    int64_t created;                   /* unix seconds */
    uint32_t batch;                    /* inputs per forward, fixed at registration
                                          (0: recorded before batches were kept) */
    uint32_t layout;                   /* memory layout of its tensors (enum shim_layout),
                                          fixed at registration: an index's bits hold
                                          only under it (0: recorded before layouts were
                                          kept, i.e. contiguous) */
    uint64_t numerics;                 /* fingerprint of the bits its forwards computed at
                                          registration (0: not recorded) */
} store_model;

typedef struct store_dataset {
    uint32_t id;                       /* internal key prefix of its inputs */
    char name[STORE_NAME_MAX + 1];
    int state;                         /* enum store_state */
    uint64_t count;                    /* inputs */
    int ndim;
    int64_t shape[STORE_MAX_DIMS];     /* per input, e.g. [1,28,28] */
    int dtype;                         /* enum store_dtype */
    float scale;                       /* x = (raw*scale - mean[c]) / std[c] */
    int nchan;                         /* entries in mean/std (1 = broadcast) */
    float mean[STORE_MAX_CHANNELS];
    float std[STORE_MAX_CHANNELS];
    int has_labels;
    int64_t created;
    uint64_t first;                    /* global id of input 0: a shard holds ids
                                          [first, first+count) of a sliced dataset */
    uint64_t total;                    /* inputs of the whole dataset (= count unless sliced) */
} store_dataset;

enum store_index_kind {
    STORE_INDEX_NPI = 0,   /* the partition index: NPI + MAI blobs (server/npi.h) */
    STORE_INDEX_FULL = 1   /* full materialization (PreprocessAll): float32[N] per neuron */
};

typedef struct store_index {
    uint32_t id;
    int kind;                          /* enum store_index_kind */
    char model[STORE_NAME_MAX + 1];
    char dataset[STORE_NAME_MAX + 1];
    char layer[STORE_LAYER_MAX];
    int state;                         /* enum store_state */
    uint32_t partitions;               /* P, partition 0 = MAI */
    float mai_ratio;
    uint64_t count;                    /* inputs N */
    uint64_t neurons;
    uint64_t bytes;                    /* sum of its neuron blobs */
    uint64_t full_bytes;               /* 4 * N * neurons */
    uint32_t job;
    int64_t created;
    double build_s;
    char error[STORE_ERR_MAX];
    uint64_t digest;                   /* a 64-bit hash of every blob, in neuron order (build.c) */
    uint32_t batch;                    /* the forward batch it was built at */
} store_index;

/* A model's predictions over a dataset: the argmax of `layer` per input. */
typedef struct store_predictions {
    char model[STORE_NAME_MAX + 1];
    uint32_t dataset;                  /* dataset id */
    char layer[STORE_LAYER_MAX];
    int state;                         /* PENDING while its job runs, READY */
    uint64_t count;
    uint32_t job;
    int64_t created;
    uint64_t correct;                  /* predictions equal to the label (labelled datasets) */
} store_predictions;

typedef struct store_job {
    uint32_t id;
    char kind[32];                     /* "index" */
    int state;                         /* enum store_job_state */
    uint64_t done, total;
    int64_t created, started, finished;
    uint32_t nindexes;
    uint32_t indexes[16];              /* indexes this job builds */
    char error[STORE_ERR_MAX];
    char model[STORE_NAME_MAX + 1];    /* what it works on ("" when not recorded) */
    char dataset[STORE_NAME_MAX + 1];
    int cancelled;                     /* FAILED because it was cancelled */
} store_job;

/* Opens (creating DIR if needed) the environment with a map of `mapsize`
 * bytes (0 = 64 GiB; the file grows only with the data), takes the
 * directory's lock, checks the schema version, and sweeps what a crash left
 * unfinished (see above). */
int store_open(const char *dir, size_t mapsize, store **out, char *err, size_t errlen);
/* Opens an existing environment for reading only, beside a daemon that may
 * be writing it: no lock, no sweep, no write. Write transactions fail. */
int store_open_readonly(const char *dir, store **out, char *err, size_t errlen);
void store_close(store *s);
/* Message of the last failure in this thread. */
const char *store_errmsg(void);

int store_txn_begin(store *s, int readonly, store_txn **out);
int store_txn_commit(store_txn *t);   /* frees t, also on failure */
void store_txn_abort(store_txn *t);   /* frees t; NULL is fine */

/* Counters, atomically incremented in the write transaction t. */
int store_next_id(store_txn *t, const char *counter, uint32_t *out);
/* The last id handed out (0 when none), and an id chosen by the caller:
 * want must be above every id handed out (else STORE_EXISTS); the counter
 * moves up to it. want 0 = store_next_id. */
int store_peek_id(store_txn *t, const char *counter, uint32_t *out);
int store_take_id(store_txn *t, const char *counter, uint32_t want, uint32_t *out);

/* Models: keyed by name. */
int store_model_put(store_txn *t, const store_model *m, int create_only);
int store_model_get(store_txn *t, const char *name, store_model *out);
int store_model_del(store_txn *t, const char *name);
/* Calls fn for each, by name; fn returning nonzero stops the walk. */
int store_model_each(store_txn *t, int (*fn)(const store_model *, void *), void *arg);

/* Datasets: keyed by name; inputs keyed by (dataset id, input id). */
int store_dataset_put(store_txn *t, const store_dataset *d, int create_only);
int store_dataset_get(store_txn *t, const char *name, store_dataset *out);
/* Deletes the record, its inputs and labels (several commits are not needed:
 * call in one write txn; LMDB frees the pages for reuse). */
int store_dataset_del(store_txn *t, const char *name);
int store_dataset_each(store_txn *t, int (*fn)(const store_dataset *, void *), void *arg);

/* Input bytes (count*bytes_per_input contiguous inputs starting at `first`). */
int store_inputs_put(store_txn *t, uint32_t ds, uint64_t first, uint64_t count,
                     const void *data, size_t bytes_per_input);
/* Zero-copy: *data valid until the end of t. */
int store_input_get(store_txn *t, uint32_t ds, uint64_t id, const void **data, size_t *len);
/* Labels of a whole dataset as int32[count], written once at the end of an import. */
int store_labels_put(store_txn *t, uint32_t ds, const int32_t *labels, uint64_t count);
int store_labels_get(store_txn *t, uint32_t ds, const int32_t **labels, uint64_t *count);

/* Indexes: keyed by id. */
int store_index_put(store_txn *t, const store_index *ix);
int store_index_get(store_txn *t, uint32_t id, store_index *out);
/* Deletes the record and every neuron blob of the index. */
int store_index_del(store_txn *t, uint32_t id);
int store_index_each(store_txn *t, int (*fn)(const store_index *, void *), void *arg);

/* Opaque neuron blobs of an index, keyed by (index id, neuron). */
int store_neuron_put(store_txn *t, uint32_t index, uint32_t neuron, const void *blob, size_t len);
/* *blob is 4-byte aligned (LMDB gives no alignment guarantee for small
 * values: those are copied) and valid until the end of t. */
int store_neuron_get(store_txn *t, uint32_t index, uint32_t neuron, const void **blob, size_t *len);

/* Starts the disk reads of the pages of blobs got from the map
 * (store_neuron_get's, each valid in its txn), all at once, before they are
 * read: their faults then wait on reads in flight, not one after another.
 * An advice: a kernel without it changes nothing. */
void store_prefetch(const void *const *blob, const size_t *len, size_t n);

/* Predictions: keyed by (dataset id, model); pred int32[count] beside the
 * record (NULL on put = keep the array). Zero-copy: *pred valid until the
 * end of t, 4-byte aligned. Deletes take both. */
int store_predictions_put(store_txn *t, const store_predictions *p, const int32_t *pred);
int store_predictions_get(store_txn *t, uint32_t dataset, const char *model, store_predictions *out,
                          const int32_t **pred);
int store_predictions_del(store_txn *t, uint32_t dataset, const char *model);
int store_predictions_each(store_txn *t, int (*fn)(const store_predictions *, void *), void *arg);

/* Class names of a dataset: n NUL-terminated names back to back (len
 * bytes). Zero-copy on get: valid until the end of t. */
int store_classes_put(store_txn *t, uint32_t dataset, const char *names, size_t len);
int store_classes_get(store_txn *t, uint32_t dataset, const char **names, size_t *len);
int store_classes_del(store_txn *t, uint32_t dataset);

/* Jobs: keyed by id. */
int store_job_put(store_txn *t, const store_job *j);
int store_job_get(store_txn *t, uint32_t id, store_job *out);
int store_job_each(store_txn *t, int (*fn)(const store_job *, void *), void *arg);

/* Environment figures for /metrics and --stat: the map, the pages in use. */
int store_usage(store *s, uint64_t *map_bytes, uint64_t *used_bytes);
/* Bytes that every key and value of one database take (leaf + overflow
 * pages), by name: "inputs", "neurons", ... (for --stat). */
int store_db_bytes(store_txn *t, const char *db, uint64_t *bytes, uint64_t *entries);

#endif
