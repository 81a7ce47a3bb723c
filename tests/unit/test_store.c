/* test_store.c -- storage/store.c against a real LMDB environment in a
 * temporary directory. Where the store's promise is about keys (a delete
 * removes every key of a prefix and only those), the test looks into the
 * environment with LMDB directly. */
#include "store.h"

#include <check.h>
#include <ftw.h>
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Every test makes its own directory under one base that main removes, so a
 * failed test (which stops before its own cleanup) leaves nothing behind. */
static char basedir[128];
static char tmpdir[256];

static void make_dir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "%s/t.XXXXXX", basedir);
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void rm_tree(const char *dir)
{
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static store *open_store(size_t mapsize)
{
    store *s = NULL;
    char err[256] = "";
    int rc = store_open(tmpdir, mapsize, &s, err, sizeof err);
    ck_assert_msg(rc == STORE_OK, "store_open: %s", err);
    return s;
}

static store_txn *begin(store *s, int ro)
{
    store_txn *t = NULL;
    ck_assert_int_eq(store_txn_begin(s, ro, &t), STORE_OK);
    return t;
}

static void commit(store_txn *t)
{
    int rc = store_txn_commit(t);
    ck_assert_msg(rc == STORE_OK, "commit: %s", store_errmsg());
}

/* Keys of LMDB database `db` under tmpdir starting with prefix (store closed). */
static size_t count_prefix(const char *db, const uint8_t *prefix, size_t plen)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_cursor *cur;
    MDB_val k, v;
    size_t n = 0;
    ck_assert_int_eq(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 16);
    mdb_env_set_mapsize(env, (size_t)1 << 30);
    ck_assert_int_eq(mdb_env_open(env, tmpdir, MDB_RDONLY, 0664), 0);
    ck_assert_int_eq(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    ck_assert_int_eq(mdb_dbi_open(txn, db, 0, &dbi), 0);
    ck_assert_int_eq(mdb_cursor_open(txn, dbi, &cur), 0);
    for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
        if (k.mv_size >= plen && memcmp(k.mv_data, prefix, plen) == 0) n++;
    mdb_cursor_close(cur);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    return n;
}

/* Writes one raw value into database db of the closed store under tmpdir. */
static void raw_put(const char *db, const void *key, size_t klen, const void *val, size_t vlen)
{
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    ck_assert_int_eq(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 16);
    mdb_env_set_mapsize(env, (size_t)1 << 30);
    ck_assert_int_eq(mdb_env_open(env, tmpdir, 0, 0664), 0);
    ck_assert_int_eq(mdb_txn_begin(env, NULL, 0, &txn), 0);
    ck_assert_int_eq(mdb_dbi_open(txn, db, MDB_CREATE, &dbi), 0);
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    ck_assert_int_eq(mdb_put(txn, dbi, &k, &v, 0), 0);
    ck_assert_int_eq(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
}

static void be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* ---- fixtures of records ---- */

static store_model sample_model(const char *name)
{
    store_model m;
    memset(&m, 0, sizeof m);
    snprintf(m.name, sizeof m.name, "%s", name);
    snprintf(m.path, sizeof m.path, "/models/%s.pt", name);
    m.ndim = 3;
    m.input_shape[0] = 1, m.input_shape[1] = 28, m.input_shape[2] = 28;
    m.created = 1700000000123LL;
    return m;
}

static store_dataset sample_dataset(const char *name, uint32_t id, int state)
{
    store_dataset d;
    memset(&d, 0, sizeof d);
    d.id = id;
    snprintf(d.name, sizeof d.name, "%s", name);
    d.state = state;
    d.count = 70000;
    d.ndim = 3;
    d.shape[0] = 3, d.shape[1] = 32, d.shape[2] = 31;
    d.dtype = STORE_F32;
    d.scale = 1.0f / 255;
    d.nchan = 3;
    for (int c = 0; c < 3; c++) d.mean[c] = 0.1f * (float)(c + 1), d.std[c] = 0.25f + (float)c;
    d.has_labels = 1;
    d.created = -5;
    return d;
}

static store_index sample_index(uint32_t id, int state)
{
    store_index x;
    memset(&x, 0, sizeof x);
    x.id = id;
    snprintf(x.model, sizeof x.model, "cnn");
    snprintf(x.dataset, sizeof x.dataset, "fmnist");
    snprintf(x.layer, sizeof x.layer, "features.3.0");
    x.state = state;
    x.partitions = 64;
    x.mai_ratio = 0.05f;
    x.count = 70000;
    x.neurons = 6272;
    x.bytes = 123456789012ULL;
    x.full_bytes = 4ULL * 70000 * 6272;
    x.job = id + 100;
    x.created = 1700000001;
    x.build_s = 12.75;
    snprintf(x.error, sizeof x.error, "%s", state == STORE_FAILED ? "out of memory" : "");
    return x;
}

static store_job sample_job(uint32_t id, int state)
{
    store_job j;
    memset(&j, 0, sizeof j);
    j.id = id;
    snprintf(j.kind, sizeof j.kind, "index");
    j.state = state;
    j.done = 17;
    j.total = 70000;
    j.created = 1, j.started = 2, j.finished = 0;
    j.nindexes = 3;
    j.indexes[0] = 7, j.indexes[1] = 8, j.indexes[2] = 0xfffffffeu;
    return j;
}

static void check_model_eq(const store_model *a, const store_model *b)
{
    ck_assert_str_eq(a->name, b->name);
    ck_assert_str_eq(a->path, b->path);
    ck_assert_int_eq(a->ndim, b->ndim);
    for (int i = 0; i < a->ndim; i++) ck_assert_int_eq(a->input_shape[i], b->input_shape[i]);
    ck_assert_int_eq(a->created, b->created);
}

static void check_dataset_eq(const store_dataset *a, const store_dataset *b)
{
    ck_assert_uint_eq(a->id, b->id);
    ck_assert_str_eq(a->name, b->name);
    ck_assert_int_eq(a->state, b->state);
    ck_assert_uint_eq(a->count, b->count);
    ck_assert_int_eq(a->ndim, b->ndim);
    for (int i = 0; i < a->ndim; i++) ck_assert_int_eq(a->shape[i], b->shape[i]);
    ck_assert_int_eq(a->dtype, b->dtype);
    ck_assert(a->scale == b->scale);
    ck_assert_int_eq(a->nchan, b->nchan);
    for (int c = 0; c < a->nchan; c++) ck_assert(a->mean[c] == b->mean[c] && a->std[c] == b->std[c]);
    ck_assert_int_eq(a->has_labels, b->has_labels);
    ck_assert_int_eq(a->created, b->created);
}

static void check_index_eq(const store_index *a, const store_index *b)
{
    ck_assert_uint_eq(a->id, b->id);
    ck_assert_str_eq(a->model, b->model);
    ck_assert_str_eq(a->dataset, b->dataset);
    ck_assert_str_eq(a->layer, b->layer);
    ck_assert_int_eq(a->state, b->state);
    ck_assert_uint_eq(a->partitions, b->partitions);
    ck_assert(a->mai_ratio == b->mai_ratio);
    ck_assert_uint_eq(a->count, b->count);
    ck_assert_uint_eq(a->neurons, b->neurons);
    ck_assert_uint_eq(a->bytes, b->bytes);
    ck_assert_uint_eq(a->full_bytes, b->full_bytes);
    ck_assert_uint_eq(a->job, b->job);
    ck_assert_int_eq(a->created, b->created);
    ck_assert(a->build_s == b->build_s);
    ck_assert_str_eq(a->error, b->error);
}

static void check_job_eq(const store_job *a, const store_job *b)
{
    ck_assert_uint_eq(a->id, b->id);
    ck_assert_str_eq(a->kind, b->kind);
    ck_assert_int_eq(a->state, b->state);
    ck_assert_uint_eq(a->done, b->done);
    ck_assert_uint_eq(a->total, b->total);
    ck_assert_int_eq(a->created, b->created);
    ck_assert_int_eq(a->started, b->started);
    ck_assert_int_eq(a->finished, b->finished);
    ck_assert_uint_eq(a->nindexes, b->nindexes);
    for (uint32_t i = 0; i < a->nindexes; i++) ck_assert_uint_eq(a->indexes[i], b->indexes[i]);
    ck_assert_str_eq(a->error, b->error);
}

/* ---- walks ---- */

typedef struct names {
    char v[16][STORE_NAME_MAX + 1];
    uint32_t ids[16];
    int n, stop_after;
} names;

static int collect_model(const store_model *m, void *arg)
{
    names *l = arg;
    snprintf(l->v[l->n++], sizeof l->v[0], "%s", m->name);
    return l->n == l->stop_after;
}

static int collect_dataset(const store_dataset *d, void *arg)
{
    names *l = arg;
    l->ids[l->n] = d->id;
    snprintf(l->v[l->n++], sizeof l->v[0], "%s", d->name);
    return 0;
}

static int collect_index(const store_index *x, void *arg)
{
    names *l = arg;
    l->ids[l->n++] = x->id;
    return 0;
}

static int collect_job(const store_job *j, void *arg)
{
    names *l = arg;
    l->ids[l->n++] = j->id;
    return 0;
}

/* ---- tests ---- */

START_TEST(test_roundtrip_records)
{
    make_dir();
    store *s = open_store(0);
    store_model m1 = sample_model("zeta"), m2 = sample_model("alpha");
    m2.ndim = 0; /* shape from the archive */
    store_dataset d = sample_dataset("fmnist", 4, STORE_READY);
    store_index x = sample_index(9, STORE_FAILED);
    store_job j = sample_job(3, JOB_DONE);
    snprintf(j.error, sizeof j.error, "all good");

    store_txn *t = begin(s, 0);
    ck_assert_int_eq(store_model_put(t, &m1, 1), STORE_OK);
    ck_assert_int_eq(store_model_put(t, &m2, 1), STORE_OK);
    ck_assert_int_eq(store_dataset_put(t, &d, 1), STORE_OK);
    ck_assert_int_eq(store_index_put(t, &x), STORE_OK);
    ck_assert_int_eq(store_job_put(t, &j), STORE_OK);
    commit(t);
    store_close(s);

    s = open_store(0); /* read back from disk, not from the writer's pages */
    t = begin(s, 1);
    store_model gm;
    store_dataset gd;
    store_index gx;
    store_job gj;
    ck_assert_int_eq(store_model_get(t, "zeta", &gm), STORE_OK);
    check_model_eq(&gm, &m1);
    ck_assert_int_eq(store_model_get(t, "alpha", &gm), STORE_OK);
    check_model_eq(&gm, &m2);
    ck_assert_int_eq(store_dataset_get(t, "fmnist", &gd), STORE_OK);
    check_dataset_eq(&gd, &d);
    ck_assert_int_eq(store_index_get(t, 9, &gx), STORE_OK);
    check_index_eq(&gx, &x);
    ck_assert_int_eq(store_job_get(t, 3, &gj), STORE_OK);
    check_job_eq(&gj, &j);

    ck_assert_int_eq(store_model_get(t, "nope", &gm), STORE_NOTFOUND);
    ck_assert_int_eq(store_dataset_get(t, "nope", &gd), STORE_NOTFOUND);
    ck_assert_int_eq(store_index_get(t, 10, &gx), STORE_NOTFOUND);
    ck_assert_int_eq(store_job_get(t, 4, &gj), STORE_NOTFOUND);
    ck_assert_int_ne(store_model_get(t, "", &gm), STORE_OK);

    names l = {0};
    ck_assert_int_eq(store_model_each(t, collect_model, &l), STORE_OK);
    ck_assert_int_eq(l.n, 2);
    ck_assert_str_eq(l.v[0], "alpha"); /* by name */
    ck_assert_str_eq(l.v[1], "zeta");
    names stop = {.stop_after = 1};
    ck_assert_int_eq(store_model_each(t, collect_model, &stop), STORE_OK);
    ck_assert_int_eq(stop.n, 1);
    store_txn_abort(t);
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

START_TEST(test_longest_fields)
{
    make_dir();
    store *s = open_store(0);
    store_model m = sample_model("m");
    memset(m.name, 'n', STORE_NAME_MAX);
    m.name[STORE_NAME_MAX] = 0;
    memset(m.path, 'p', STORE_PATH_MAX - 1);
    m.path[STORE_PATH_MAX - 1] = 0;
    m.ndim = STORE_MAX_DIMS;
    for (int i = 0; i < STORE_MAX_DIMS; i++) m.input_shape[i] = (int64_t)1 << (40 + i);
    store_index x = sample_index(UINT32_MAX, STORE_FAILED);
    memset(x.layer, 'l', STORE_LAYER_MAX - 1);
    memset(x.error, 'e', STORE_ERR_MAX - 1);
    store_job j = sample_job(1, JOB_RUNNING);
    j.nindexes = 16;
    for (int i = 0; i < 16; i++) j.indexes[i] = (uint32_t)(i * 1000003);
    store_txn *t = begin(s, 0);
    ck_assert_int_eq(store_model_put(t, &m, 0), STORE_OK);
    ck_assert_int_eq(store_index_put(t, &x), STORE_OK);
    ck_assert_int_eq(store_job_put(t, &j), STORE_OK);
    j.nindexes = 17;
    ck_assert_int_eq(store_job_put(t, &j), STORE_ERROR);
    j.nindexes = 16;
    commit(t);
    t = begin(s, 1);
    store_model gm;
    store_index gx;
    store_job gj;
    ck_assert_int_eq(store_model_get(t, m.name, &gm), STORE_OK);
    check_model_eq(&gm, &m);
    ck_assert_int_eq(store_index_get(t, UINT32_MAX, &gx), STORE_OK);
    check_index_eq(&gx, &x);
    ck_assert_int_eq(store_job_get(t, 1, &gj), STORE_OK);
    check_job_eq(&gj, &j);
    store_txn_abort(t);
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

START_TEST(test_create_only)
{
    make_dir();
    store *s = open_store(0);
    store_model m = sample_model("cnn");
    store_dataset d = sample_dataset("ds", 1, STORE_READY);
    store_txn *t = begin(s, 0);
    ck_assert_int_eq(store_model_put(t, &m, 1), STORE_OK);
    ck_assert_int_eq(store_dataset_put(t, &d, 1), STORE_OK);
    commit(t);

    t = begin(s, 0);
    snprintf(m.path, sizeof m.path, "/other.pt");
    ck_assert_int_eq(store_model_put(t, &m, 1), STORE_EXISTS);
    ck_assert_int_eq(store_dataset_put(t, &d, 1), STORE_EXISTS);
    ck_assert_ptr_nonnull(strstr(store_errmsg(), "exists"));
    d.count = 5;
    ck_assert_int_eq(store_dataset_put(t, &d, 0), STORE_OK); /* overwrite allowed */
    commit(t);

    t = begin(s, 1);
    store_model gm;
    store_dataset gd;
    ck_assert_int_eq(store_model_get(t, "cnn", &gm), STORE_OK);
    ck_assert_str_eq(gm.path, "/models/cnn.pt"); /* the refused put changed nothing */
    ck_assert_int_eq(store_dataset_get(t, "ds", &gd), STORE_OK);
    ck_assert_uint_eq(gd.count, 5);
    store_txn_abort(t);

    t = begin(s, 0);
    ck_assert_int_eq(store_model_del(t, "cnn"), STORE_OK);
    ck_assert_int_eq(store_model_del(t, "cnn"), STORE_NOTFOUND);
    ck_assert_int_eq(store_model_put(t, &m, 1), STORE_OK); /* free again */
    commit(t);
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

static void fill_input(uint8_t *p, size_t len, uint32_t ds, uint64_t id)
{
    for (size_t i = 0; i < len; i++) p[i] = (uint8_t)(ds * 131 + id * 7 + i * 13);
}

START_TEST(test_inputs_and_labels)
{
    make_dir();
    store *s = open_store(0);
    enum { BPI = 784, N = 500, PER = 123 };
    uint8_t *buf = malloc((size_t)PER * BPI);
    /* Several write txns, the last run short. */
    for (uint64_t first = 0; first < N; first += PER) {
        uint64_t n = first + PER <= N ? PER : N - first;
        for (uint64_t i = 0; i < n; i++) fill_input(buf + i * BPI, BPI, 2, first + i);
        store_txn *t = begin(s, 0);
        ck_assert_int_eq(store_inputs_put(t, 2, first, n, buf, BPI), STORE_OK);
        commit(t);
    }
    int32_t labels[N];
    for (int i = 0; i < N; i++) labels[i] = (i * 37) % 10 - (i == 3 ? 1000 : 0);
    int32_t small[3] = {-1, 7, 2147483647};
    store_txn *t = begin(s, 0);
    ck_assert_int_eq(store_labels_put(t, 2, labels, N), STORE_OK);
    ck_assert_int_eq(store_labels_put(t, 3, small, 3), STORE_OK);
    /* Small values sit inside leaf pages at 2-byte alignment: whatever the
     * placement, the pointer handed out must be int32-aligned. */
    for (uint32_t n = 1; n <= 12; n++) ck_assert_int_eq(store_labels_put(t, 100 + n, labels, n), STORE_OK);
    commit(t);

    t = begin(s, 1);
    uint8_t want[BPI];
    for (uint64_t i = 0; i < N; i++) {
        const void *data;
        size_t len;
        ck_assert_int_eq(store_input_get(t, 2, i, &data, &len), STORE_OK);
        ck_assert_uint_eq(len, BPI);
        fill_input(want, BPI, 2, i);
        ck_assert(memcmp(data, want, BPI) == 0);
    }
    const void *data;
    size_t len;
    ck_assert_int_eq(store_input_get(t, 2, N, &data, &len), STORE_NOTFOUND);
    ck_assert_int_eq(store_input_get(t, 1, 0, &data, &len), STORE_NOTFOUND);
    const int32_t *gl;
    uint64_t gn;
    ck_assert_int_eq(store_labels_get(t, 2, &gl, &gn), STORE_OK);
    ck_assert_uint_eq(gn, N);
    ck_assert_uint_eq((uintptr_t)gl % _Alignof(int32_t), 0);
    for (int i = 0; i < N; i++) ck_assert_int_eq(gl[i], labels[i]);
    ck_assert_int_eq(store_labels_get(t, 3, &gl, &gn), STORE_OK);
    ck_assert_uint_eq(gn, 3);
    ck_assert_uint_eq((uintptr_t)gl % _Alignof(int32_t), 0);
    for (int i = 0; i < 3; i++) ck_assert_int_eq(gl[i], small[i]);
    ck_assert_int_eq(store_labels_get(t, 4, &gl, &gn), STORE_NOTFOUND);
    for (uint32_t n = 1; n <= 12; n++) {
        ck_assert_int_eq(store_labels_get(t, 100 + n, &gl, &gn), STORE_OK);
        ck_assert_uint_eq(gn, n);
        ck_assert_uint_eq((uintptr_t)gl % _Alignof(int32_t), 0);
        for (uint32_t i = 0; i < n; i++) ck_assert_int_eq(gl[i], labels[i]);
    }
    store_txn_abort(t);
    free(buf);
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

START_TEST(test_neuron_blobs)
{
    make_dir();
    store *s = open_store(0);
    store_txn *t = begin(s, 0);
    /* Sizes from empty to several pages. */
    size_t sizes[] = {0, 1, 3, 100, 2047, 4096, 50000};
    uint8_t *blob = malloc(50000);
    for (uint32_t n = 0; n < 7; n++) {
        for (size_t i = 0; i < sizes[n]; i++) blob[i] = (uint8_t)(i * 31 + n);
        ck_assert_int_eq(store_neuron_put(t, 5, n * 1000, blob, sizes[n]), STORE_OK);
    }
    commit(t);
    t = begin(s, 1);
    for (uint32_t n = 0; n < 7; n++) {
        const void *b;
        size_t len;
        ck_assert_int_eq(store_neuron_get(t, 5, n * 1000, &b, &len), STORE_OK);
        ck_assert_uint_eq(len, sizes[n]);
        for (size_t i = 0; i < len; i++) ck_assert_uint_eq(((const uint8_t *)b)[i], (uint8_t)(i * 31 + n));
    }
    const void *b;
    size_t len;
    ck_assert_int_eq(store_neuron_get(t, 5, 1, &b, &len), STORE_NOTFOUND);
    ck_assert_int_eq(store_neuron_get(t, 6, 0, &b, &len), STORE_NOTFOUND);
    store_txn_abort(t);
    free(blob);
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

START_TEST(test_deletes_whole_prefix_only)
{
    make_dir();
    store *s = open_store(0);
    enum { BPI = 300, N = 2000 };
    uint8_t *buf = malloc((size_t)N * BPI);
    int32_t labels[N];
    for (int i = 0; i < N; i++) labels[i] = i;
    store_txn *t = begin(s, 0);
    /* Datasets 6, 7, 8 adjacent in key space: delete the middle one. */
    for (uint32_t ds = 6; ds <= 8; ds++) {
        char name[16];
        snprintf(name, sizeof name, "ds%u", ds);
        store_dataset d = sample_dataset(name, ds, STORE_READY);
        ck_assert_int_eq(store_dataset_put(t, &d, 1), STORE_OK);
        for (uint64_t i = 0; i < N; i++) fill_input(buf + i * BPI, BPI, ds, i);
        ck_assert_int_eq(store_inputs_put(t, ds, 0, N, buf, BPI), STORE_OK);
        /* An input id far out, so every key of the prefix must go, not 0..count-1. */
        ck_assert_int_eq(store_inputs_put(t, ds, UINT64_MAX, 1, buf, BPI), STORE_OK);
        ck_assert_int_eq(store_labels_put(t, ds, labels, N), STORE_OK);
    }
    /* Indexes 20, 21, 22 with neuron blobs: delete the middle one. */
    for (uint32_t ix = 20; ix <= 22; ix++) {
        store_index x = sample_index(ix, STORE_READY);
        ck_assert_int_eq(store_index_put(t, &x), STORE_OK);
        for (uint32_t n = 0; n < 1500; n++) ck_assert_int_eq(store_neuron_put(t, ix, n, buf, 64 + n % 200), STORE_OK);
        ck_assert_int_eq(store_neuron_put(t, ix, UINT32_MAX, buf, 10), STORE_OK);
    }
    commit(t);

    t = begin(s, 0);
    ck_assert_int_eq(store_dataset_del(t, "ds7"), STORE_OK);
    ck_assert_int_eq(store_index_del(t, 21), STORE_OK);
    ck_assert_int_eq(store_dataset_del(t, "ds7"), STORE_NOTFOUND);
    ck_assert_int_eq(store_index_del(t, 21), STORE_NOTFOUND);
    commit(t);

    t = begin(s, 1);
    store_dataset gd;
    store_index gx;
    ck_assert_int_eq(store_dataset_get(t, "ds7", &gd), STORE_NOTFOUND);
    ck_assert_int_eq(store_dataset_get(t, "ds6", &gd), STORE_OK);
    ck_assert_int_eq(store_dataset_get(t, "ds8", &gd), STORE_OK);
    ck_assert_int_eq(store_index_get(t, 21, &gx), STORE_NOTFOUND);
    ck_assert_int_eq(store_index_get(t, 20, &gx), STORE_OK);
    ck_assert_int_eq(store_index_get(t, 22, &gx), STORE_OK);
    const int32_t *gl;
    uint64_t gn;
    ck_assert_int_eq(store_labels_get(t, 7, &gl, &gn), STORE_NOTFOUND);
    ck_assert_int_eq(store_labels_get(t, 8, &gl, &gn), STORE_OK);
    ck_assert_uint_eq(gn, N);
    /* Neighbours' data intact, byte for byte. */
    uint8_t want[BPI];
    for (uint32_t ds = 6; ds <= 8; ds += 2)
        for (uint64_t i = 0; i < N; i += 97) {
            const void *data;
            size_t len;
            ck_assert_int_eq(store_input_get(t, ds, i, &data, &len), STORE_OK);
            fill_input(want, BPI, ds, i);
            ck_assert(len == BPI && memcmp(data, want, BPI) == 0);
        }
    store_txn_abort(t);
    store_close(s);

    uint8_t p[4];
    for (uint32_t ds = 6; ds <= 8; ds++) {
        be32(p, ds);
        ck_assert_uint_eq(count_prefix("inputs", p, 4), ds == 7 ? 0 : N + 1);
        ck_assert_uint_eq(count_prefix("labels", p, 4), ds == 7 ? 0 : 1);
    }
    for (uint32_t ix = 20; ix <= 22; ix++) {
        be32(p, ix);
        ck_assert_uint_eq(count_prefix("neurons", p, 4), ix == 21 ? 0 : 1501);
    }
    free(buf);
    rm_tree(tmpdir);
}
END_TEST

START_TEST(test_crash_sweep)
{
    make_dir();
    store *s = open_store(0);
    enum { BPI = 100, N = 700 };
    uint8_t buf[N * BPI];
    memset(buf, 0x5a, sizeof buf);
    int32_t labels[N] = {0};

    store_txn *t = begin(s, 0);
    store_dataset ready = sample_dataset("ready", 1, STORE_READY);
    store_dataset pend = sample_dataset("half", 2, STORE_PENDING);
    ck_assert_int_eq(store_dataset_put(t, &ready, 1), STORE_OK);
    ck_assert_int_eq(store_dataset_put(t, &pend, 1), STORE_OK);
    ck_assert_int_eq(store_inputs_put(t, 1, 0, N, buf, BPI), STORE_OK);
    ck_assert_int_eq(store_labels_put(t, 1, labels, N), STORE_OK);
    commit(t);
    /* The pending import wrote in several commits before the "crash". */
    for (int part = 0; part < 2; part++) {
        t = begin(s, 0);
        ck_assert_int_eq(store_inputs_put(t, 2, (uint64_t)part * N, N, buf, BPI), STORE_OK);
        commit(t);
    }
    t = begin(s, 0);
    ck_assert_int_eq(store_labels_put(t, 2, labels, N), STORE_OK);
    store_index xr = sample_index(1, STORE_READY), xp = sample_index(2, STORE_PENDING),
                xf = sample_index(3, STORE_FAILED);
    ck_assert_int_eq(store_index_put(t, &xr), STORE_OK);
    ck_assert_int_eq(store_index_put(t, &xp), STORE_OK);
    ck_assert_int_eq(store_index_put(t, &xf), STORE_OK);
    for (uint32_t n = 0; n < 300; n++) {
        ck_assert_int_eq(store_neuron_put(t, 1, n, buf, 200), STORE_OK);
        ck_assert_int_eq(store_neuron_put(t, 2, n, buf, 200), STORE_OK);
    }
    /* Pieces whose owner record never got committed: orphans. */
    ck_assert_int_eq(store_inputs_put(t, 99, 0, 3, buf, BPI), STORE_OK);
    ck_assert_int_eq(store_labels_put(t, 98, labels, 5), STORE_OK);
    ck_assert_int_eq(store_neuron_put(t, 77, 0, buf, 10), STORE_OK);
    ck_assert_int_eq(store_neuron_put(t, 77, 5, buf, 10), STORE_OK);
    store_job jq = sample_job(1, JOB_QUEUED), jr = sample_job(2, JOB_RUNNING), jd = sample_job(3, JOB_DONE),
              jf = sample_job(4, JOB_FAILED);
    snprintf(jf.error, sizeof jf.error, "model failed");
    ck_assert_int_eq(store_job_put(t, &jq), STORE_OK);
    ck_assert_int_eq(store_job_put(t, &jr), STORE_OK);
    ck_assert_int_eq(store_job_put(t, &jd), STORE_OK);
    ck_assert_int_eq(store_job_put(t, &jf), STORE_OK);
    commit(t);
    store_close(s); /* "crash": nothing flipped to READY / DONE */

    s = open_store(0);
    t = begin(s, 1);
    store_dataset gd;
    ck_assert_int_eq(store_dataset_get(t, "half", &gd), STORE_NOTFOUND);
    ck_assert_int_eq(store_dataset_get(t, "ready", &gd), STORE_OK);
    check_dataset_eq(&gd, &ready);
    store_index gx;
    ck_assert_int_eq(store_index_get(t, 1, &gx), STORE_OK);
    check_index_eq(&gx, &xr);
    ck_assert_int_eq(store_index_get(t, 3, &gx), STORE_OK);
    check_index_eq(&gx, &xf);
    ck_assert_int_eq(store_index_get(t, 2, &gx), STORE_OK);
    ck_assert_int_eq(gx.state, STORE_FAILED);
    ck_assert_str_eq(gx.error, "interrupted (daemon stopped during build)");
    ck_assert_uint_eq(gx.bytes, 0);
    ck_assert_str_eq(gx.layer, xp.layer);
    store_job gj;
    for (uint32_t id = 1; id <= 2; id++) {
        ck_assert_int_eq(store_job_get(t, id, &gj), STORE_OK);
        ck_assert_int_eq(gj.state, JOB_FAILED);
        ck_assert_str_eq(gj.error, "interrupted (daemon restarted)");
        ck_assert_uint_eq(gj.done, 17);
        ck_assert_int_gt(gj.finished, 0);
    }
    ck_assert_int_eq(store_job_get(t, 3, &gj), STORE_OK);
    check_job_eq(&gj, &jd);
    ck_assert_int_eq(store_job_get(t, 4, &gj), STORE_OK);
    check_job_eq(&gj, &jf);
    names l = {0};
    ck_assert_int_eq(store_dataset_each(t, collect_dataset, &l), STORE_OK);
    ck_assert_int_eq(l.n, 1);
    names li = {0}, lj = {0};
    ck_assert_int_eq(store_index_each(t, collect_index, &li), STORE_OK);
    ck_assert_int_eq(li.n, 3);
    ck_assert_uint_eq(li.ids[0], 1);
    ck_assert_uint_eq(li.ids[1], 2);
    ck_assert_uint_eq(li.ids[2], 3);
    ck_assert_int_eq(store_job_each(t, collect_job, &lj), STORE_OK);
    ck_assert_int_eq(lj.n, 4);
    store_txn_abort(t);
    store_close(s);

    uint8_t p[4];
    be32(p, 1);
    ck_assert_uint_eq(count_prefix("inputs", p, 4), N);
    ck_assert_uint_eq(count_prefix("labels", p, 4), 1);
    ck_assert_uint_eq(count_prefix("neurons", p, 4), 300);
    be32(p, 2);
    ck_assert_uint_eq(count_prefix("inputs", p, 4), 0);
    ck_assert_uint_eq(count_prefix("labels", p, 4), 0);
    ck_assert_uint_eq(count_prefix("neurons", p, 4), 0);
    be32(p, 3); /* the FAILED index keeps its record, had no blobs */
    ck_assert_uint_eq(count_prefix("neurons", p, 4), 0);
    be32(p, 99);
    ck_assert_uint_eq(count_prefix("inputs", p, 4), 0);
    be32(p, 98);
    ck_assert_uint_eq(count_prefix("labels", p, 4), 0);
    be32(p, 77);
    ck_assert_uint_eq(count_prefix("neurons", p, 4), 0);
    /* Everything left is accounted for: ready dataset 1, ready index 1. */
    ck_assert_uint_eq(count_prefix("inputs", p, 0), N);
    ck_assert_uint_eq(count_prefix("labels", p, 0), 1);
    ck_assert_uint_eq(count_prefix("neurons", p, 0), 300);
    rm_tree(tmpdir);
}
END_TEST

START_TEST(test_next_id)
{
    make_dir();
    store *s = open_store(0);
    uint32_t prev = 0, id;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 5; i++) {
            store_txn *t = begin(s, 0);
            ck_assert_int_eq(store_next_id(t, "index", &id), STORE_OK);
            ck_assert_uint_gt(id, prev);
            prev = id;
            commit(t);
        }
        store_close(s);
        s = open_store(0);
    }
    ck_assert_uint_eq(prev, 15);
    /* Counters are independent; an aborted increment is not consumed. */
    store_txn *t = begin(s, 0);
    ck_assert_int_eq(store_next_id(t, "job", &id), STORE_OK);
    ck_assert_uint_eq(id, 1);
    ck_assert_int_eq(store_next_id(t, "index", &id), STORE_OK);
    ck_assert_uint_eq(id, 16);
    store_txn_abort(t);
    t = begin(s, 0);
    ck_assert_int_eq(store_next_id(t, "index", &id), STORE_OK);
    ck_assert_uint_eq(id, 16);
    commit(t);
    /* A read transaction cannot take an id. */
    t = begin(s, 1);
    ck_assert_int_ne(store_next_id(t, "index", &id), STORE_OK);
    store_txn_abort(t);
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

START_TEST(test_map_full)
{
    make_dir();
    size_t mapsize = (size_t)1 << 20;
    store *s = open_store(mapsize);
    uint64_t map = 0, used = 0;
    ck_assert_int_eq(store_usage(s, &map, &used), STORE_OK);
    ck_assert_uint_eq(map, mapsize);
    ck_assert_uint_gt(used, 0);
    ck_assert_uint_le(used, map);

    store_model m = sample_model("kept");
    store_txn *t = begin(s, 0);
    ck_assert_int_eq(store_model_put(t, &m, 1), STORE_OK);
    commit(t);

    static uint8_t blob[64 << 10];
    memset(blob, 1, sizeof blob);
    t = begin(s, 0);
    int rc = STORE_OK;
    for (uint32_t n = 0; n < 64 && rc == STORE_OK; n++) rc = store_neuron_put(t, 1, n, blob, sizeof blob);
    if (rc == STORE_OK)
        rc = store_txn_commit(t); /* full at commit */
    else
        store_txn_abort(t);
    ck_assert_int_eq(rc, STORE_FULL);
    ck_assert_ptr_nonnull(strstr(store_errmsg(), "MDB_MAP_FULL"));

    /* Still readable, and what was committed before is intact. */
    t = begin(s, 1);
    store_model gm;
    ck_assert_int_eq(store_model_get(t, "kept", &gm), STORE_OK);
    check_model_eq(&gm, &m);
    const void *b;
    size_t len;
    ck_assert_int_eq(store_neuron_get(t, 1, 0, &b, &len), STORE_NOTFOUND);
    store_txn_abort(t);
    /* Small writes still fit. */
    t = begin(s, 0);
    ck_assert_int_eq(store_neuron_put(t, 1, 0, blob, 100), STORE_OK);
    commit(t);
    ck_assert_int_eq(store_usage(s, &map, &used), STORE_OK);
    ck_assert_uint_le(used, map);
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

START_TEST(test_abort_discards)
{
    make_dir();
    store *s = open_store(0);
    store_txn *t = begin(s, 0);
    store_model m = sample_model("gone");
    ck_assert_int_eq(store_model_put(t, &m, 1), STORE_OK);
    ck_assert_int_eq(store_inputs_put(t, 1, 0, 1, "abcd", 4), STORE_OK);
    store_model gm;
    ck_assert_int_eq(store_model_get(t, "gone", &gm), STORE_OK); /* visible inside */
    store_txn_abort(t);
    store_txn_abort(NULL);
    t = begin(s, 1);
    ck_assert_int_eq(store_model_get(t, "gone", &gm), STORE_NOTFOUND);
    const void *d;
    size_t len;
    ck_assert_int_eq(store_input_get(t, 1, 0, &d, &len), STORE_NOTFOUND);
    /* A read txn cannot write; the failure says so. */
    ck_assert_int_eq(store_model_put(t, &m, 0), STORE_ERROR);
    ck_assert_str_ne(store_errmsg(), "");
    store_txn_abort(t);
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

START_TEST(test_schema_mismatch)
{
    make_dir();
    store *s = open_store(0);
    store_close(s);
    uint8_t v[4] = {STORE_SCHEMA_VERSION + 1, 0, 0, 0};
    raw_put("meta", "schema", 6, v, 4);
    char err[256] = "";
    s = (store *)1;
    ck_assert_int_eq(store_open(tmpdir, 0, &s, err, sizeof err), STORE_ERROR);
    ck_assert_ptr_null(s);
    char want[64];
    snprintf(want, sizeof want, "schema version %d", STORE_SCHEMA_VERSION + 1);
    ck_assert_msg(strstr(err, want), "message: %s", err);
    /* The matching version opens again. */
    v[0] = STORE_SCHEMA_VERSION;
    raw_put("meta", "schema", 6, v, 4);
    s = open_store(0);
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

START_TEST(test_damaged_records_rejected)
{
    make_dir();
    store *s = open_store(0);
    store_model m = sample_model("good");
    store_txn *t = begin(s, 0);
    ck_assert_int_eq(store_model_put(t, &m, 1), STORE_OK);
    commit(t);
    store_close(s);

    /* A valid record cut short, one with a byte too many, one of another version. */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k = {4, "good"}, v;
    ck_assert_int_eq(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 16);
    mdb_env_set_mapsize(env, (size_t)1 << 30);
    ck_assert_int_eq(mdb_env_open(env, tmpdir, MDB_RDONLY, 0664), 0);
    ck_assert_int_eq(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    ck_assert_int_eq(mdb_dbi_open(txn, "models", 0, &dbi), 0);
    ck_assert_int_eq(mdb_get(txn, dbi, &k, &v), 0);
    uint8_t rec[4200];
    size_t len = v.mv_size;
    ck_assert_uint_lt(len + 1, sizeof rec);
    memcpy(rec, v.mv_data, len);
    mdb_txn_abort(txn);
    mdb_env_close(env);

    rec[len] = 0;
    raw_put("models", "long", 4, rec, len + 1);
    raw_put("models", "short", 5, rec, len - 1);
    raw_put("models", "empty", 5, rec, 0);
    rec[0] ^= 0x40;
    raw_put("models", "vers", 4, rec, len);

    s = open_store(0);
    t = begin(s, 1);
    store_model gm;
    memset(&gm, 0x77, sizeof gm);
    ck_assert_int_eq(store_model_get(t, "long", &gm), STORE_ERROR);
    ck_assert_ptr_nonnull(strstr(store_errmsg(), "damaged model"));
    ck_assert_int_eq(store_model_get(t, "short", &gm), STORE_ERROR);
    ck_assert_int_eq(store_model_get(t, "empty", &gm), STORE_ERROR);
    ck_assert_int_eq(store_model_get(t, "vers", &gm), STORE_ERROR);
    ck_assert_uint_eq((uint8_t)gm.name[0], 0x77); /* out untouched */
    ck_assert_int_eq(store_model_get(t, "good", &gm), STORE_OK);
    check_model_eq(&gm, &m);
    names l = {0};
    ck_assert_int_eq(store_model_each(t, collect_model, &l), STORE_ERROR);
    store_txn_abort(t);
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

START_TEST(test_open_errors)
{
    make_dir();
    char path[300], err[256] = "";
    snprintf(path, sizeof path, "%s/file", tmpdir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    store *s = NULL;
    ck_assert_int_eq(store_open(path, 0, &s, err, sizeof err), STORE_ERROR);
    ck_assert_ptr_null(s);
    ck_assert_str_ne(err, "");
    /* Nested directories are created. */
    snprintf(path, sizeof path, "%s/a/b", tmpdir);
    ck_assert_int_eq(store_open(path, 0, &s, err, sizeof err), STORE_OK);
    /* The default map is 64 GiB where that much address space can be had
     * (not under valgrind or a tight ulimit -v: then a halved size). */
    uint64_t map;
    ck_assert_int_eq(store_usage(s, &map, NULL), STORE_OK);
    size_t big = (size_t)64 << 30;
    void *probe = mmap(NULL, big, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (probe != MAP_FAILED) {
        munmap(probe, big);
        ck_assert_uint_eq(map, big);
    } else {
        ck_assert_uint_ge(map, (uint64_t)1 << 30);
        ck_assert_uint_lt(map, big);
    }
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

/* Readers in several threads, each in its own read txns, while one writer
 * commits: every reader sees a consistent snapshot (all inputs of a round
 * carry the same round number). */
typedef struct reader_arg {
    store *s;
    volatile int *stop;
    int bad, reads;
} reader_arg;

static void *reader(void *p)
{
    reader_arg *a = p;
    while (!*a->stop) {
        store_txn *t;
        if (store_txn_begin(a->s, 1, &t) != STORE_OK) {
            a->bad++;
            break;
        }
        const void *d0;
        size_t len;
        if (store_input_get(t, 1, 0, &d0, &len) == STORE_OK) {
            uint32_t round;
            memcpy(&round, d0, 4);
            for (uint64_t i = 1; i < 50; i++) {
                const void *d;
                uint32_t r;
                if (store_input_get(t, 1, i, &d, &len) != STORE_OK) {
                    a->bad++;
                    break;
                }
                memcpy(&r, d, 4);
                if (r != round) a->bad++;
            }
            a->reads++;
        }
        store_txn_abort(t);
    }
    return NULL;
}

START_TEST(test_concurrent_readers)
{
    make_dir();
    store *s = open_store(0);
    volatile int stop = 0;
    reader_arg args[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        args[i] = (reader_arg){.s = s, .stop = &stop};
        ck_assert_int_eq(pthread_create(&th[i], NULL, reader, &args[i]), 0);
    }
    uint32_t vals[50];
    for (uint32_t round = 1; round <= 200; round++) {
        for (int i = 0; i < 50; i++) vals[i] = round;
        store_txn *t = begin(s, 0);
        ck_assert_int_eq(store_inputs_put(t, 1, 0, 50, vals, 4), STORE_OK);
        commit(t);
    }
    /* Each thread may also hold two read txns at once (MDB_NOTLS). */
    store_txn *a = begin(s, 1), *b = begin(s, 1);
    store_txn_abort(a);
    store_txn_abort(b);
    stop = 1;
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(args[i].bad, 0);
    }
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

/* One process owns a directory; --stat's read-only open runs beside it,
 * sees what is committed and cannot write. */
START_TEST(test_one_owner_and_readonly)
{
    make_dir();
    store *s = open_store(0), *t2 = NULL, *ro = NULL;
    char err[512] = "";
    ck_assert_int_eq(store_open(tmpdir, 0, &t2, err, sizeof err), STORE_ERROR);
    ck_assert_msg(strstr(err, "in use by another process") && strstr(err, "pid"), "%s", err);
    store_txn *t = begin(s, 0);
    store_model m = sample_model("m");
    ck_assert_int_eq(store_model_put(t, &m, 1), STORE_OK);
    store_dataset d = sample_dataset("half", 3, STORE_PENDING);
    ck_assert_int_eq(store_dataset_put(t, &d, 1), STORE_OK);
    commit(t);
    ck_assert_int_eq(store_open_readonly(tmpdir, &ro, err, sizeof err), STORE_OK);
    t = begin(ro, 1);
    store_model got;
    ck_assert_int_eq(store_model_get(t, "m", &got), STORE_OK);
    store_dataset gd;
    ck_assert_int_eq(store_dataset_get(t, "half", &gd), STORE_OK); /* no sweep: still there, still PENDING */
    ck_assert_int_eq(gd.state, STORE_PENDING);
    uint64_t bytes, n;
    ck_assert_int_eq(store_db_bytes(t, "models", &bytes, &n), STORE_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_gt(bytes, 0);
    store_txn_abort(t);
    store_txn *w = NULL;
    ck_assert_int_eq(store_txn_begin(ro, 0, &w), STORE_ERROR);
    store_close(ro);
    store_close(s);
    /* the lock goes with the owner */
    s = open_store(0);
    store_close(s);
    ck_assert_int_eq(store_open_readonly("/nonexistent/de", &ro, err, sizeof err), STORE_ERROR);
    rm_tree(tmpdir);
}
END_TEST

/* Records written by earlier versions (without the fields later versions
 * appended: v2 the batch, v3 the layout and numerics) still decode, their
 * new fields zero. */
START_TEST(test_version1_records_decode)
{
    make_dir();
    store *s = open_store(0);
    store_txn *t = begin(s, 0);
    store_model m = sample_model("old");
    m.batch = 64;
    m.layout = 2;
    m.numerics = 0x1234567890abcdefull;
    ck_assert_int_eq(store_model_put(t, &m, 1), STORE_OK);
    const void *blob;
    size_t len;
    commit(t);
    store_close(s);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_val k = {3, "old"}, v;
    uint8_t raw[4096];
    ck_assert_int_eq(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 16);
    ck_assert_int_eq(mdb_env_open(env, tmpdir, MDB_RDONLY, 0664), 0);
    ck_assert_int_eq(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
    ck_assert_int_eq(mdb_dbi_open(txn, "models", 0, &dbi), 0);
    ck_assert_int_eq(mdb_get(txn, dbi, &k, &v), 0);
    len = v.mv_size;
    memcpy(raw, v.mv_data, len);
    mdb_txn_abort(txn);
    mdb_env_close(env);
    ck_assert_int_eq(raw[0], 3);
    s = open_store(0);
    t = begin(s, 1);
    store_model got;
    ck_assert_int_eq(store_model_get(t, "old", &got), STORE_OK);
    ck_assert_uint_eq(got.batch, 64);
    ck_assert_uint_eq(got.layout, 2);
    ck_assert(got.numerics == m.numerics);
    store_txn_abort(t);
    store_close(s);
    /* the raw v3 record cut back: v2 drops layout and numerics (12 bytes),
     * v1 the batch too (16) */
    for (int ver = 2; ver >= 1; ver--) {
        raw[0] = (uint8_t)ver;
        raw_put("models", "old", 3, raw, len - (ver == 2 ? 12 : 16));
        s = open_store(0);
        t = begin(s, 1);
        ck_assert_int_eq(store_model_get(t, "old", &got), STORE_OK);
        ck_assert_str_eq(got.path, m.path);
        ck_assert_uint_eq(got.batch, ver == 2 ? 64 : 0);
        ck_assert_uint_eq(got.layout, 0);
        ck_assert(got.numerics == 0);
        store_txn_abort(t);
        if (ver == 2) store_close(s);
    }
    /* a blob of odd length between others still comes back 4-aligned */
    t = begin(s, 0);
    uint8_t odd[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    for (uint32_t n = 0; n < 8; n++) ck_assert_int_eq(store_neuron_put(t, 5, n, odd, 3 + n), STORE_OK);
    commit(t);
    t = begin(s, 1);
    for (uint32_t n = 0; n < 8; n++) {
        ck_assert_int_eq(store_neuron_get(t, 5, n, &blob, &len), STORE_OK);
        ck_assert_uint_eq((uintptr_t)blob % 4, 0);
        ck_assert_uint_eq(len, 3 + n);
        ck_assert_int_eq(memcmp(blob, odd, len), 0);
    }
    store_txn_abort(t);
    store_close(s);
    rm_tree(tmpdir);
}
END_TEST

/* A delete interrupted between "DELETING" and its last transaction: the
 * next start removes the dataset, its inputs and its indexes. */
START_TEST(test_deleting_dataset_swept)
{
    make_dir();
    store *s = open_store(0);
    store_txn *t = begin(s, 0);
    store_dataset d = sample_dataset("gone", 7, STORE_DELETING), keep = sample_dataset("keep", 8, STORE_READY);
    ck_assert_int_eq(store_dataset_put(t, &d, 1), STORE_OK);
    ck_assert_int_eq(store_dataset_put(t, &keep, 1), STORE_OK);
    uint8_t in[4] = {0};
    ck_assert_int_eq(store_inputs_put(t, 7, 0, 1, in, 4), STORE_OK);
    store_index x = sample_index(3, STORE_READY), y = sample_index(4, STORE_READY);
    snprintf(x.dataset, sizeof x.dataset, "gone");
    snprintf(y.dataset, sizeof y.dataset, "keep");
    ck_assert_int_eq(store_index_put(t, &x), STORE_OK);
    ck_assert_int_eq(store_index_put(t, &y), STORE_OK);
    ck_assert_int_eq(store_neuron_put(t, 3, 0, in, 4), STORE_OK);
    commit(t);
    store_close(s);
    s = open_store(0);
    t = begin(s, 1);
    store_dataset g;
    store_index gx;
    ck_assert_int_eq(store_dataset_get(t, "gone", &g), STORE_NOTFOUND);
    ck_assert_int_eq(store_dataset_get(t, "keep", &g), STORE_OK);
    ck_assert_int_eq(store_index_get(t, 3, &gx), STORE_NOTFOUND);
    ck_assert_int_eq(store_index_get(t, 4, &gx), STORE_OK);
    store_txn_abort(t);
    store_close(s);
    uint8_t pre[4];
    be32(pre, 7);
    ck_assert_uint_eq(count_prefix("inputs", pre, 4), 0);
    be32(pre, 3);
    ck_assert_uint_eq(count_prefix("neurons", pre, 4), 0);
    rm_tree(tmpdir);
}
END_TEST

int main(void)
{
    snprintf(basedir, sizeof basedir, "/tmp/test_store.XXXXXX");
    if (!mkdtemp(basedir)) {
        perror("mkdtemp");
        return 1;
    }
    Suite *su = suite_create("store");
    TCase *tc = tcase_create("store");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_roundtrip_records);
    tcase_add_test(tc, test_longest_fields);
    tcase_add_test(tc, test_create_only);
    tcase_add_test(tc, test_inputs_and_labels);
    tcase_add_test(tc, test_neuron_blobs);
    tcase_add_test(tc, test_deletes_whole_prefix_only);
    tcase_add_test(tc, test_crash_sweep);
    tcase_add_test(tc, test_next_id);
    tcase_add_test(tc, test_map_full);
    tcase_add_test(tc, test_abort_discards);
    tcase_add_test(tc, test_schema_mismatch);
    tcase_add_test(tc, test_damaged_records_rejected);
    tcase_add_test(tc, test_open_errors);
    tcase_add_test(tc, test_concurrent_readers);
    tcase_add_test(tc, test_one_owner_and_readonly);
    tcase_add_test(tc, test_version1_records_decode);
    tcase_add_test(tc, test_deleting_dataset_swept);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    rm_tree(basedir);
    return failed ? 1 : 0;
}
