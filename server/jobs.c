/* jobs.c -- see jobs.h. */
#include "jobs.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct jobs {
    pthread_mutex_t mu;
    pthread_cond_t queued;       /* workers wait for work */
    pthread_cond_t changed;      /* a drop acknowledged or a job ended */
    job *queue;                  /* FIFO of queued jobs */
    job *running;                /* on workers and inline */
    pthread_t workers[64];
    int nworkers;
    int stop;
} jobs;

job *jobs_new(const job_ops *ops, const char *model, const char *dataset)
{
    job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->ops = ops;
    snprintf(j->model, sizeof j->model, "%s", model ? model : "");
    snprintf(j->dataset, sizeof j->dataset, "%s", dataset ? dataset : "");
    return j;
}

void jobs_free(job *j)
{
    if (!j) return;
    if (j->payload && j->ops && j->ops->free_payload) j->ops->free_payload(j->payload);
    free(j);
}

static void unlink_job(job **list, job *j)
{
    for (job **pp = list; *pp; pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            return;
        }
}

static job *find_job(job *list, uint32_t id)
{
    for (job *j = list; j; j = j->next)
        if (j->id == id) return j;
    return NULL;
}

static int part_of(const job *j, uint32_t index_id)
{
    for (int p = 0; p < j->nparts; p++)
        if (j->parts[p] == index_id) return p;
    return -1;
}

static unsigned all_parts(const job *j)
{
    return j->nparts >= 32 ? ~0u : (1u << j->nparts) - 1;
}

/* Waits on J->changed until `deadline` (CLOCK_REALTIME); 0, or -1 past it. */
static int wait_changed(jobs *J, const struct timespec *deadline)
{
    int rc = pthread_cond_timedwait(&J->changed, &J->mu, deadline);
    return rc == ETIMEDOUT ? -1 : 0;
}

static struct timespec deadline_in(double s)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    double secs = (double)t.tv_sec + (double)t.tv_nsec / 1e9 + s;
    t.tv_sec = (time_t)secs;
    t.tv_nsec = (long)((secs - (double)t.tv_sec) * 1e9);
    return t;
}

/* Ends a running job: unlisted, waiters woken, freed. */
static void end_job(jobs *J, job *j)
{
    pthread_mutex_lock(&J->mu);
    unlink_job(&J->running, j);
    j->ended = 1;
    pthread_cond_broadcast(&J->changed);
    pthread_mutex_unlock(&J->mu);
    jobs_free(j);
}

static void *worker(void *arg)
{
    app *a = arg;
    jobs *J = a->jobs;
    pthread_mutex_lock(&J->mu);
    for (;;) {
        while (!J->stop && !J->queue) pthread_cond_wait(&J->queued, &J->mu);
        if (J->stop) break;
        job *j = J->queue;
        J->queue = j->next;
        j->next = J->running;
        J->running = j;
        j->started_ms = clock_ms();
        pthread_mutex_unlock(&J->mu);
        j->ops->run(a, j);
        end_job(J, j);
        pthread_mutex_lock(&J->mu);
    }
    pthread_mutex_unlock(&J->mu);
    return NULL;
}

int jobs_start(app *a, char *err, size_t errlen)
{
    jobs *J = calloc(1, sizeof *J);
    if (!J) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    pthread_mutex_init(&J->mu, NULL);
    pthread_cond_init(&J->queued, NULL);
    pthread_cond_init(&J->changed, NULL);
    a->jobs = J;
    for (int i = 0; i < a->cfg.max_builds && i < 64; i++) {
        if (pthread_create(&J->workers[i], NULL, worker, a) != 0) {
            snprintf(err, errlen, "cannot start a job worker");
            return -1;
        }
        J->nworkers++;
    }
    return 0;
}

void jobs_cancel_all(app *a)
{
    jobs *J = a->jobs;
    if (!J) return;
    pthread_mutex_lock(&J->mu);
    for (job *j = J->running; j; j = j->next) atomic_store(&j->cancel, 1);
    pthread_mutex_unlock(&J->mu);
}

void jobs_stop(app *a)
{
    jobs *J = a->jobs;
    if (!J) return;
    pthread_mutex_lock(&J->mu);
    J->stop = 1;
    for (job *j = J->running; j; j = j->next) atomic_store(&j->cancel, 1);
    pthread_cond_broadcast(&J->queued);
    pthread_mutex_unlock(&J->mu);
    for (int i = 0; i < J->nworkers; i++) pthread_join(J->workers[i], NULL);
    while (J->queue) {
        job *j = J->queue;
        J->queue = j->next;
        jobs_free(j);
    }
    pthread_mutex_destroy(&J->mu);
    pthread_cond_destroy(&J->queued);
    pthread_cond_destroy(&J->changed);
    free(J);
    a->jobs = NULL;
}

void jobs_submit(app *a, job *j)
{
    jobs *J = a->jobs;
    pthread_mutex_lock(&J->mu);
    job **pp = &J->queue;
    while (*pp) pp = &(*pp)->next;
    j->next = NULL;
    *pp = j;
    pthread_cond_signal(&J->queued);
    pthread_mutex_unlock(&J->mu);
}

void jobs_attach(app *a, job *j)
{
    jobs *J = a->jobs;
    pthread_mutex_lock(&J->mu);
    j->started_ms = clock_ms();
    j->next = J->running;
    J->running = j;
    pthread_mutex_unlock(&J->mu);
}

void jobs_detach(app *a, job *j) { end_job(a->jobs, j); }

int jobs_cancelled(app *a, const job *j)
{
    return atomic_load(&j->cancel) || atomic_load(&a->stopping);
}

unsigned jobs_dropped(const job *j) { return atomic_load(&j->drop); }

void jobs_ack(app *a, job *j, unsigned mask)
{
    jobs *J = a->jobs;
    pthread_mutex_lock(&J->mu);
    j->acked |= mask;
    pthread_cond_broadcast(&J->changed);
    pthread_mutex_unlock(&J->mu);
}

int jobs_progress(app *a, uint32_t id, uint64_t *done, uint64_t *total, double *eta_s)
{
    jobs *J = a->jobs;
    int rc = -1;
    pthread_mutex_lock(&J->mu);
    job *j = find_job(J->running, id);
    if (j) {
        *done = atomic_load(&j->done);
        *total = atomic_load(&j->total);
        double el = (clock_ms() - j->started_ms) / 1000;
        *eta_s = *done ? el / (double)*done * (double)(*total - *done) : -1;
        rc = 0;
    }
    pthread_mutex_unlock(&J->mu);
    return rc;
}

/* Waits (locked) until no running job has this id; 0, or -1 on timeout. */
static int wait_ended(jobs *J, uint32_t id, const struct timespec *deadline)
{
    while (find_job(J->running, id))
        if (wait_changed(J, deadline) != 0 && find_job(J->running, id)) return -1;
    return 0;
}

int jobs_cancel(app *a, uint32_t id, double timeout_s, int *state)
{
    jobs *J = a->jobs;
    struct timespec dl = deadline_in(timeout_s);
    *state = 0;
    pthread_mutex_lock(&J->mu);
    job *j = find_job(J->queue, id);
    if (j) {
        unlink_job(&J->queue, j);
        pthread_mutex_unlock(&J->mu);
        j->ops->abandon(a, j);
        jobs_free(j);
        *state = 1;
        return 0;
    }
    int rc = 0;
    if ((j = find_job(J->running, id))) {
        atomic_store(&j->cancel, 1);
        *state = 2;
        rc = wait_ended(J, id, &dl);
    }
    pthread_mutex_unlock(&J->mu);
    return rc;
}

int jobs_drop_part(app *a, uint32_t index_id, double timeout_s, uint32_t *job_id, int *job_cancelled)
{
    jobs *J = a->jobs;
    struct timespec dl = deadline_in(timeout_s);
    *job_id = 0;
    *job_cancelled = 0;
    pthread_mutex_lock(&J->mu);
    for (job *j = J->queue; j; j = j->next) {
        int p = part_of(j, index_id);
        if (p < 0) continue;
        *job_id = j->id;
        unsigned d = atomic_fetch_or(&j->drop, 1u << p) | 1u << p;
        j->acked |= 1u << p; /* nothing is written before it runs */
        if ((d & all_parts(j)) == all_parts(j)) {
            unlink_job(&J->queue, j);
            pthread_mutex_unlock(&J->mu);
            *job_cancelled = 1;
            j->ops->abandon(a, j);
            jobs_free(j);
            return 0;
        }
        pthread_mutex_unlock(&J->mu);
        return 0;
    }
    int rc = 0;
    for (job *j = J->running; j; j = j->next) {
        int p = part_of(j, index_id);
        if (p < 0) continue;
        uint32_t id = j->id;
        *job_id = id;
        unsigned d = atomic_fetch_or(&j->drop, 1u << p) | 1u << p;
        if ((d & all_parts(j)) == all_parts(j)) {
            *job_cancelled = 1;
            atomic_store(&j->cancel, 1);
        }
        /* until acknowledged or ended (j is freed when it ends: look it up again) */
        for (;;) {
            job *cur = find_job(J->running, id);
            if (!cur || (cur->acked & 1u << p)) break;
            if (wait_changed(J, &dl) != 0) {
                cur = find_job(J->running, id);
                if (cur && !(cur->acked & 1u << p)) rc = -1;
                break;
            }
        }
        break;
    }
    pthread_mutex_unlock(&J->mu);
    return rc;
}

static int owned(const job *j, const char *model, const char *dataset)
{
    return (model && strcmp(j->model, model) == 0) || (dataset && strcmp(j->dataset, dataset) == 0);
}

int jobs_cancel_owned(app *a, const char *model, const char *dataset, double timeout_s, uint32_t **ids, size_t *n)
{
    jobs *J = a->jobs;
    struct timespec dl = deadline_in(timeout_s);
    size_t cap = 8;
    *n = 0;
    *ids = malloc(cap * sizeof **ids);
    if (!*ids) return -1;
    job *abandoned = NULL;
    pthread_mutex_lock(&J->mu);
    for (int pass = 0; pass < 2; pass++)
        for (job **pp = pass ? &J->running : &J->queue; *pp;) {
            job *j = *pp;
            if (!owned(j, model, dataset)) {
                pp = &j->next;
                continue;
            }
            if (*n == cap) {
                uint32_t *g = realloc(*ids, 2 * cap * sizeof *g);
                if (g) {
                    *ids = g;
                    cap *= 2;
                }
            }
            if (*n < cap) (*ids)[(*n)++] = j->id;
            if (!pass) { /* queued: taken off, abandoned below (outside the lock) */
                *pp = j->next;
                j->next = abandoned;
                abandoned = j;
                continue;
            }
            atomic_store(&j->cancel, 1);
            pp = &j->next;
        }
    int rc = 0;
    for (size_t i = 0; i < *n && rc == 0; i++) rc = wait_ended(J, (*ids)[i], &dl);
    pthread_mutex_unlock(&J->mu);
    while (abandoned) {
        job *j = abandoned;
        abandoned = j->next;
        j->ops->abandon(a, j);
        jobs_free(j);
    }
    return rc;
}
