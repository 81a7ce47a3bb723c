/* build.h -- index builds: one inference pass over a dataset at the deepest
 * of its layers, feeding one builder core (builder_core.h) per layer.
 *
 * Each layer's index is made by one of two builder cores: partitions cut
 * at a sample during the pass (builder_stream.h; the sample's forwards run
 * first), or every neuron's values ranked after it (builder_core.h; with
 * --partitioning exact, for full materializations, datasets under 512
 * inputs, and layers whose pass-time state does not fit the budget).
 *
 * The blobs are written in bounded write transactions, the index records
 * flipped to READY in the last one, so an index is visible only when
 * complete. A build is a job (jobs.h): QUEUED -> RUNNING -> DONE/FAILED in
 * the store, live progress in memory. Builds run on the job workers, or
 * inline in a query's thread when the query needs an index that does not
 * exist yet (incremental indexing): that pass also answers the query.
 *
 * Dropping one index of a multi-layer build frees its core and goes on with
 * the others; cancelling the build deletes every index it was making.
 *
 * Eager layers: the pass to a layer computes every earlier one anyway, so
 * it can index more layers of the model than asked -- layers without an
 * identical index yet, by policy (enum proto_eager):
 *   none    only the layers asked;
 *   before  and the earlier layers whose activations fit in memory beside
 *           them (within --build-memory-mb, smallest first): no inference
 *           more, no spill;
 *   fit     the layers worth indexing now (eager.h): the pass may spend
 *           up to EAGER_FIT_SPEND times its own cost on going deeper and
 *           on indexing layers whose index costs at most their forward,
 *           those that save the most forward a second first, within the
 *           budget. Costs: activation bytes x BUILD_EAGER_NS_PER_BYTE_*
 *           scaled by the model's index probe, against the forwards timed
 *           at load;
 *   all     every layer of the model, spilling what does not fit.
 * Queries that build an index use --eager-layers (default fit) or their
 * "eager" field; POST /v1/indexes builds what it names unless "eager".
 */
#ifndef DE_BUILD_H
#define DE_BUILD_H

#include "app.h"
#include "engine.h"
#include "jobs.h"
#include "jspec.h"
#include "registry.h"

#define BUILD_MAX_LAYERS JOB_MAX_PARTS

typedef struct build_params {
    int kind;                    /* enum store_index_kind */
    uint32_t partitions;         /* 2..256; 0 = chosen from the budget */
    double mai_ratio;            /* 0..0.5; < 0 = chosen from the budget */
    double budget;               /* fraction of full materialization (default 0.2) */
    int eager;                   /* enum proto_eager: other layers the pass indexes too */
    uint32_t job_id;             /* the job's id as a coordinator chose it (0 = the next);
                                    409 job_id_taken when this daemon used it already */
} build_params;

/* The parameters a build over n inputs uses: those given, the others picked
 * from the budget (default 0.2) by shape_pick (shape.h). */
void build_params_resolve(const build_params *req, uint64_t n, build_params *out);

/* What build_submit did, layer by layer. */
typedef struct build_submitted {
    uint32_t job;                /* the new job, 0 when every layer was reused */
    int nlayers;
    uint32_t ids[BUILD_MAX_LAYERS];
    int reused[BUILD_MAX_LAYERS];/* an identical ready or building index answered */
    build_params params;         /* as resolved for the dataset */
    int neager;                  /* indexes of other layers the job builds too (eager) */
    uint32_t eager_ids[BUILD_MAX_LAYERS];
} build_submitted;

/* Starts a job building the index of each layer that has no identical
 * (same kind, partitions, mai_ratio) ready or building index; p as asked
 * (build_params_resolve fills in what it leaves to the budget). Errors: 404
 * unknown model/dataset/layer (listing the valid ones), 422 shape mismatch,
 * 507 store full. */
int build_submit(app *a, const char *model, const char *dataset, const char *const *layers, int nlayers,
                 const build_params *p, build_submitted *out, proto_err *e);

/* A query answered by the build pass itself (incremental indexing). */
typedef struct build_answer {
    const eng_query *q;          /* q->neurons etc.; method ignored */
    eng_topk *heap;              /* filled with every candidate's exact score */
    uint64_t scored;
    double deadline_ms;          /* clock_ms() past which the pass stops; 0 = none */
    int timed_out;               /* set when it did */
} build_answer;

/* Builds the index of one layer in the caller's thread (same records and
 * job as build_submit), answering `ans` from the same pass. Returns 0 when
 * the index was built and the answer is complete, -1 with e otherwise
 * (503 query_timeout / query_cancelled, 507, 500). */
int build_inline(app *a, registry_model *m, const store_dataset *d, const char *layer, const build_params *req,
                 build_answer *ans, const volatile int *cancel, uint32_t *index_id, proto_err *e);

#endif
