/* store_tool.c -- looks into (and, for tests, seeds) a daemon's store
 * directly, beside the API: what the integration tests check "through the
 * store, not only the API".
 *
 *   store_tool DIR counts
 *       entries of every database as JSON (read-only: works beside a live daemon)
 *   store_tool DIR inject-indexes MODEL DATASET LAYER N
 *       N READY index records of one tiny blob each (the daemon must be stopped)
 *   store_tool DIR set-numerics MODEL HEX
 *       overwrites the model's numerics fingerprint, as if it had been
 *       registered on another machine (the daemon must be stopped)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

static int counts(const char *dir)
{
    static const char *dbs[] = {"models", "datasets", "inputs", "labels", "indexes", "neurons", "jobs"};
    store *s;
    store_txn *t;
    char err[512];
    if (store_open_readonly(dir, &s, err, sizeof err) != STORE_OK || store_txn_begin(s, 1, &t) != STORE_OK) {
        fprintf(stderr, "store_tool: %s\n", err);
        return 1;
    }
    printf("{");
    for (size_t i = 0; i < sizeof dbs / sizeof dbs[0]; i++) {
        uint64_t bytes, n;
        if (store_db_bytes(t, dbs[i], &bytes, &n) != STORE_OK) n = 0;
        printf("%s\"%s\":%llu", i ? "," : "", dbs[i], (unsigned long long)n);
    }
    printf("}\n");
    store_txn_abort(t);
    store_close(s);
    return 0;
}

static int inject(const char *dir, const char *model, const char *dataset, const char *layer, long n)
{
    store *s;
    store_txn *t;
    char err[512];
    if (store_open(dir, 0, &s, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "store_tool: %s\n", err);
        return 1;
    }
    int rc = store_txn_begin(s, 0, &t);
    for (long i = 0; i < n && rc == STORE_OK; i++) {
        store_index ix = {0};
        rc = store_next_id(t, "index", &ix.id);
        snprintf(ix.model, sizeof ix.model, "%s", model);
        snprintf(ix.dataset, sizeof ix.dataset, "%s", dataset);
        snprintf(ix.layer, sizeof ix.layer, "%s", layer);
        ix.state = STORE_READY;
        ix.partitions = 2;
        ix.count = 1;
        ix.neurons = 1;
        uint32_t blob = 0;
        if (rc == STORE_OK) rc = store_index_put(t, &ix);
        if (rc == STORE_OK) rc = store_neuron_put(t, ix.id, 0, &blob, sizeof blob);
    }
    if (rc == STORE_OK) rc = store_txn_commit(t);
    else store_txn_abort(t);
    if (rc != STORE_OK) fprintf(stderr, "store_tool: %s\n", store_errmsg());
    store_close(s);
    return rc == STORE_OK ? 0 : 1;
}

static int set_numerics(const char *dir, const char *model, const char *hex)
{
    store *s;
    store_txn *t;
    store_model m;
    char err[512];
    if (store_open(dir, 0, &s, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "store_tool: %s\n", err);
        return 1;
    }
    int rc = store_txn_begin(s, 0, &t);
    if (rc == STORE_OK) rc = store_model_get(t, model, &m);
    if (rc == STORE_OK) {
        m.numerics = strtoull(hex, NULL, 16);
        rc = store_model_put(t, &m, 0);
    }
    if (rc == STORE_OK) rc = store_txn_commit(t);
    else store_txn_abort(t);
    if (rc != STORE_OK) fprintf(stderr, "store_tool: %s\n", store_errmsg());
    store_close(s);
    return rc == STORE_OK ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[2], "set-numerics") == 0) return set_numerics(argv[1], argv[3], argv[4]);
    if (argc == 3 && strcmp(argv[2], "counts") == 0) return counts(argv[1]);
    if (argc == 7 && strcmp(argv[2], "inject-indexes") == 0)
        return inject(argv[1], argv[3], argv[4], argv[5], strtol(argv[6], NULL, 10));
    fprintf(stderr, "usage: store_tool DIR counts | store_tool DIR inject-indexes MODEL DATASET LAYER N | "
                    "store_tool DIR set-numerics MODEL HEX\n");
    return 2;
}
