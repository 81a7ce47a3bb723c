/* jobs.h -- background jobs: a queue, `max_builds` worker threads, live
 * progress, and cancellation that waits for the job to let go.
 *
 * A job is persisted by its kind (QUEUED -> RUNNING -> DONE/FAILED in the
 * store); this module holds the live part: the queue, the jobs running
 * (on workers, or inline in a query's thread: incremental indexing), their
 * progress, and the flags by which they are stopped. A job works on `nparts`
 * parts (the layers of an index build, each an index id); a part can be
 * dropped (DELETE of one index: the others go on), the whole job cancelled
 * (DELETE of the job, of its model or dataset, shutdown).
 *
 * The runner owns everything the job writes: a canceller never deletes what
 * a running job may still be writing. It asks, then waits until the runner
 * acknowledges (jobs_ack) that it will write nothing more for a part, or
 * until the job ended. A queued job is taken off the queue and its kind's
 * abandon() undoes its records.
 *
 * Lifetimes: a job is owned by this module from jobs_submit (or, inline,
 * from jobs_attach to jobs_detach, by the caller). The job pointer a run()
 * gets is valid during the call.
 */
#ifndef DE_JOBS_H
#define DE_JOBS_H

#include <stdatomic.h>
#include <stdint.h>

#include "app.h"
#include "jspec.h"

#define JOB_MAX_PARTS 16

typedef struct job job;

typedef struct job_ops {
    const char *kind;                    /* "index", "materialize", "predictions" */
    /* Runs the job on a worker thread and records its end in the store. */
    void (*run)(app *a, job *j);
    /* A queued job cancelled before it ran: undo what submitting it wrote. */
    void (*abandon)(app *a, job *j);
    void (*free_payload)(void *payload);
} job_ops;

struct job {
    uint32_t id;                         /* the job record's id */
    const job_ops *ops;
    void *payload;                       /* the kind's own (freed by ops->free_payload) */
    char model[STORE_NAME_MAX + 1];
    char dataset[STORE_NAME_MAX + 1];
    int nparts;
    uint32_t parts[JOB_MAX_PARTS];       /* index ids */
    atomic_ullong done, total;           /* progress, in inputs */
    double started_ms;
    atomic_int cancel;                   /* the whole job: stop */
    atomic_uint drop;                    /* bit p: part p dropped */
    unsigned acked;                      /* drops the runner acknowledged (jobs lock) */
    int ended;                           /* (jobs lock) */
    struct job *next;
};

int jobs_start(app *a, char *err, size_t errlen);
/* Asks every running job to stop (shutdown), then joins the workers. Jobs
 * still queued stay QUEUED in the store; the next start marks them failed. */
void jobs_cancel_all(app *a);
void jobs_stop(app *a);

/* A new job, zeroed, with its kind and owner; NULL when out of memory. */
job *jobs_new(const job_ops *ops, const char *model, const char *dataset);
/* Frees a job that was never submitted or attached (and its payload). */
void jobs_free(job *j);
/* Hands j (its records written) to a worker. */
void jobs_submit(app *a, job *j);
/* A job run by the caller's thread (inline): listed as running, so it shows
 * progress and can be cancelled, until jobs_detach (which frees it). */
void jobs_attach(app *a, job *j);
void jobs_detach(app *a, job *j);

/* For the runner: nonzero when the whole job must stop (cancelled, or the
 * daemon stopping). */
int jobs_cancelled(app *a, const job *j);
/* The parts dropped so far (bit p = part p). */
unsigned jobs_dropped(const job *j);
/* The runner will write nothing more for the parts in mask. */
void jobs_ack(app *a, job *j, unsigned mask);

/* Live progress of a job running here: 0, or -1 when it is not running. */
int jobs_progress(app *a, uint32_t id, uint64_t *done, uint64_t *total, double *eta_s);

/* Cancels job `id` and waits up to timeout_s for it to end. *state: 0 it was
 * not live (finished, or unknown here), 1 it was queued (abandoned), 2 it
 * was running and ended. Returns 0, or -1 when it did not end in time. */
int jobs_cancel(app *a, uint32_t id, double timeout_s, int *state);
/* Drops the part `index_id` from the live job that builds it and waits up
 * to timeout_s until nothing more is written for it. *job_id gets the job
 * (0 when no live job builds it), *job_cancelled whether that was its last
 * part (the whole job then stops). Returns 0, or -1 on timeout. */
int jobs_drop_part(app *a, uint32_t index_id, double timeout_s, uint32_t *job_id, int *job_cancelled);
/* Cancels every live job of this model (or dataset; NULL = any) and waits
 * for them to end. The ids of the jobs cancelled go to *ids (malloc'd, n).
 * Returns 0, or -1 when one did not end in time. */
int jobs_cancel_owned(app *a, const char *model, const char *dataset, double timeout_s, uint32_t **ids, size_t *n);

#endif
