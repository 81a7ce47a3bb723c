/* stat.c -- `deepeverestd --data DIR --stat`: what the store holds and what
 * it takes: per database its bytes, per dataset its inputs, per index its
 * layer, partitions, sizes and build time. Opens the environment read-only
 * (no lock, no sweep, no write), so it runs beside a live daemon. */
#include <stdio.h>
#include <time.h>

#include "store.h"

static int print_model(const store_model *m, void *arg)
{
    printf("  %-20s batch %-4u %-13s %s\n", m->name, m->batch,
           m->layout == 2 ? "channels-last" : "contiguous", m->path);
    return 0;
}

static int print_dataset(const store_dataset *d, void *arg)
{
    printf("  %-20s %10llu inputs  shape [", d->name, (unsigned long long)d->count);
    for (int i = 0; i < d->ndim; i++) printf("%s%lld", i ? "," : "", (long long)d->shape[i]);
    printf("] %s%s%s", d->dtype == STORE_U8 ? "uint8" : "float32", d->has_labels ? ", labels" : "",
           d->state == STORE_READY ? "" : d->state == STORE_DELETING ? " (being deleted)" : " (importing)");
    if (d->count != d->total)
        printf("  ids %llu..%llu of %llu", (unsigned long long)d->first,
               (unsigned long long)(d->first + d->count - 1), (unsigned long long)d->total);
    printf("\n");
    return 0;
}

static int print_index(const store_index *ix, void *arg)
{
    char when[32] = "-";
    time_t c = (time_t)ix->created;
    struct tm tm;
    if (gmtime_r(&c, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M:%SZ", &tm);
    const char *state = ix->state == STORE_READY ? "ready" : ix->state == STORE_PENDING ? "building" : "failed";
    printf("  %4u %-12s %-12s %-10s %-8s P=%-3u mai=%.3f N=%-8llu neurons=%-7llu %10.1f MiB  %5.1f%% of full  "
           "built %s in %.1f s%s%s\n",
           ix->id, ix->model, ix->dataset, ix->layer, state, ix->partitions, (double)ix->mai_ratio,
           (unsigned long long)ix->count, (unsigned long long)ix->neurons, (double)ix->bytes / 1048576.0,
           ix->full_bytes ? 100.0 * (double)ix->bytes / (double)ix->full_bytes : 0.0, when, ix->build_s,
           ix->state == STORE_FAILED ? ": " : "", ix->state == STORE_FAILED ? ix->error : "");
    return 0;
}

static int print_job(const store_job *j, void *arg)
{
    static const char *states[] = {"queued", "running", "done", "failed"};
    int *live = arg;
    if (j->state == JOB_QUEUED || j->state == JOB_RUNNING) {
        printf("  %4u %-12s %-8s %s/%s  %llu/%llu\n", j->id, j->kind, states[j->state], j->model, j->dataset,
               (unsigned long long)j->done, (unsigned long long)j->total);
        (*live)++;
    }
    return 0;
}

int stat_main(const char *data_dir)
{
    store *s;
    store_txn *t;
    char err[512];
    if (store_open_readonly(data_dir, &s, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "store: %s\n", err);
        return 1;
    }
    if (store_txn_begin(s, 1, &t) != STORE_OK) {
        fprintf(stderr, "store: %s\n", store_errmsg());
        store_close(s);
        return 1;
    }
    uint64_t map = 0, used = 0;
    store_usage(s, &map, &used);
    printf("store %s: %.1f MiB used of a %.0f GiB map\n", data_dir, (double)used / 1048576.0,
           (double)map / 1073741824.0);
    static const char *dbs[] = {"inputs", "labels", "neurons", "indexes", "datasets", "models", "jobs", "meta"};
    printf("by database:");
    for (size_t i = 0; i < sizeof dbs / sizeof dbs[0]; i++) {
        uint64_t b, n;
        if (store_db_bytes(t, dbs[i], &b, &n) == STORE_OK)
            printf("  %s %.1f MiB (%llu)", dbs[i], (double)b / 1048576.0, (unsigned long long)n);
    }
    printf("\nmodels:\n");
    store_model_each(t, print_model, NULL);
    printf("datasets:\n");
    store_dataset_each(t, print_dataset, NULL);
    printf("indexes:\n");
    store_index_each(t, print_index, NULL);
    int live = 0;
    printf("jobs queued or running:\n");
    store_job_each(t, print_job, &live);
    if (!live) printf("  none\n");
    store_txn_abort(t);
    store_close(s);
    return 0;
}
