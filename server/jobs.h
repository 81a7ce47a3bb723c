/* jobs.h -- index builds as jobs, and the single pass that builds them.
 *
 * An index build is one inference pass over the dataset at the deepest of its
 * layers, feeding a builder core (server/builder_core.h) per layer; the
 * blobs are then written in bounded write transactions and the index flipped
 * to READY in the last one, so it is visible only when complete. A job is
 * persisted (QUEUED -> RUNNING -> DONE/FAILED) and its live progress kept in
 * memory for GET /v1/jobs/{id}.
 *
 * Builds run on `max_builds` worker threads, or inline in a query's thread
 * when the query needs an index that does not exist yet (incremental
 * indexing): that pass also answers the query (build_answer).
 */
#ifndef DE_JOBS_H
#define DE_JOBS_H

#include "app.h"
#include "engine.h"
#include "jspec.h"

#define BUILD_MAX_LAYERS 16

typedef struct build_params {
    int kind;                    /* enum store_index_kind */
    uint32_t partitions;         /* 2..256 */
    double mai_ratio;            /* 0..0.5 */
} build_params;

/* Picks partitions and mai_ratio for a storage budget (fraction of full
 * materialization): id bits take ~60% of it, the MAI the rest. */
void build_params_for_budget(double budget, build_params *out);
/* The size a build would have, as a fraction of 4*N*neurons. */
double build_params_ratio(const build_params *p, uint64_t n);

/* A query answered by the build pass itself (incremental indexing). */
typedef struct build_answer {
    int layer_slot;              /* which of the build's layers the query is on */
    const eng_query *q;          /* q->neurons etc.; method ignored */
    eng_topk *heap;              /* filled with every candidate's exact score */
    uint64_t scored;
    double deadline_ms;          /* app_now_ms() past which the pass stops; 0 = none */
    int timed_out;               /* set when it did */
} build_answer;

int jobs_start(app *a, char *err, size_t errlen);
void jobs_cancel_all(app *a);
void jobs_stop(app *a);

/* Creates PENDING index records (one per layer) and a QUEUED job in one
 * transaction and hands the job to a worker. layers are shim layer indexes.
 * On failure fills e (404 unknown model/dataset/layer is the caller's job;
 * 507 when the store is full). */
int jobs_submit_index(app *a, const char *model, const char *dataset, const char *const *layer_names,
                      int nlayers, const build_params *p, uint32_t *job_id, uint32_t *index_ids,
                      proto_err *e);

/* Runs a build inline (incremental indexing): same records and job, but the
 * pass runs in the caller's thread and also fills `ans`. Returns 0 when the
 * index was built and the answer is complete, -1 with e otherwise. */
int jobs_build_inline(app *a, app_model *m, const store_dataset *d, const char *layer,
                      const build_params *p, build_answer *ans, const volatile int *cancel,
                      uint32_t *index_id, proto_err *e);

/* Live progress of a running job (0), or -1 when it is not running here. */
int jobs_progress(app *a, uint32_t id, uint64_t *done, uint64_t *total, double *eta_s);

/* Asks a queued or running build of this index to stop (DELETE). */
void jobs_cancel_index(app *a, uint32_t index_id);

#endif
