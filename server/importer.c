/* importer.c -- see importer.h. */
#include "importer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "dsread.h"

#define FLUSH_BYTES (16u << 20)

struct importer {
    app *a;
    store_dataset d;
    int created;                 /* the PENDING record exists */
    int done;                    /* READY committed */
    dsread *r;
    uint8_t *buf;                /* inputs waiting for the next write txn */
    size_t buf_bytes, buf_cap;
    uint64_t buf_first;
    size_t input_bytes;
    proto_err e;                 /* why a callback stopped the parse */
    int failed;
    proto_classes classes;       /* names to store with the dataset (a copy) */
    int has_slice;               /* keep inputs [d.first, d.first + d.count) of the file */
    uint32_t shard, shards;
};

static int store_failed(importer *im, int rc)
{
    im->failed = 1;
    return catalog_store_fail(rc, NULL, &im->e);
}

static int flush(importer *im)
{
    if (!im->buf_bytes) return 0;
    store_txn *t;
    int rc = store_txn_begin(im->a->st, 0, &t);
    if (rc == STORE_OK) {
        rc = store_inputs_put(t, im->d.id, im->buf_first, im->buf_bytes / im->input_bytes, im->buf,
                              im->input_bytes);
        if (rc == STORE_OK)
            rc = store_txn_commit(t);
        else
            store_txn_abort(t);
    }
    if (rc != STORE_OK) return store_failed(im, rc);
    im->buf_first += im->buf_bytes / im->input_bytes;
    im->buf_bytes = 0;
    return 0;
}

static int on_header(const dsread_info *info, void *arg, char *err, size_t errlen)
{
    importer *im = arg;
    store_dataset *d = &im->d;
    if (info->dtype != DSREAD_U8 && info->dtype != DSREAD_F32) {
        snprintf(err, errlen, "inputs must be uint8 or float32 (this file holds integers)");
        return 1;
    }
    if (info->ndim < 2 || info->ndim > 4) {
        snprintf(err, errlen, "inputs must be [N,D], [N,H,W] or [N,C,H,W]; the file has rank %d", info->ndim);
        return 1;
    }
    if (info->count > UINT32_MAX - 1) {
        snprintf(err, errlen, "at most 2^32-2 inputs per dataset");
        return 1;
    }
    /* [N,H,W] is stored as [1,H,W] so it meets a model taking [1,H,W]. */
    d->ndim = 0;
    if (info->ndim == 3) d->shape[d->ndim++] = 1;
    for (int i = 1; i < info->ndim; i++) d->shape[d->ndim++] = info->shape[i];
    d->dtype = info->dtype == DSREAD_U8 ? STORE_U8 : STORE_F32;
    d->count = d->total = info->count;
    d->first = 0;
    if (im->has_slice) { /* shard i of n: [i*N/n, (i+1)*N/n) */
        uint64_t N = info->count, a = N * im->shard / im->shards, b = N * (im->shard + 1) / im->shards;
        if (b == a) {
            snprintf(err, errlen, "the file's %llu inputs cannot be split over %u shards (shard %u would hold none)",
                     (unsigned long long)N, im->shards, im->shard);
            return 1;
        }
        d->first = a;
        d->count = b - a;
    }
    im->input_bytes = info->input_bytes;
    if (d->nchan > 1 && d->ndim >= 3 && d->shape[0] != d->nchan) {
        snprintf(err, errlen, "mean/std give %d channels but inputs have %lld", d->nchan, (long long)d->shape[0]);
        return 1;
    }
    im->buf_cap = FLUSH_BYTES + info->input_bytes;
    if (!(im->buf = malloc(im->buf_cap))) {
        snprintf(err, errlen, "out of memory");
        return 1;
    }
    return 0;
}

static int on_inputs(const void *data, uint64_t first, uint64_t count, void *arg, char *err, size_t errlen)
{
    importer *im = arg;
    const uint8_t *p = data;
    /* a slice keeps its rows only */
    uint64_t lo = im->d.first, hi = im->d.first + im->d.count;
    uint64_t a = first > lo ? first : lo, b = first + count < hi ? first + count : hi;
    if (a >= b) return 0;
    p += (a - first) * im->input_bytes;
    size_t bytes = (b - a) * im->input_bytes;
    while (bytes) {
        size_t room = im->buf_cap - im->buf_bytes;
        size_t take = bytes < room ? bytes : room;
        take -= take % im->input_bytes;
        memcpy(im->buf + im->buf_bytes, p, take);
        im->buf_bytes += take;
        p += take;
        bytes -= take;
        if (im->buf_bytes >= FLUSH_BYTES && flush(im) != 0) {
            snprintf(err, errlen, "%s", im->e.message);
            return 1;
        }
    }
    return 0;
}

int importer_begin(app *a, const proto_dataset_req *q, int format, importer **out, proto_err *e)
{
    importer *im = calloc(1, sizeof *im);
    *out = im;
    if (!im) return proto_fail(e, 500, "internal", "out of memory");
    im->a = a;
    store_dataset *d = &im->d;
    snprintf(d->name, sizeof d->name, "%s", q->name);
    d->state = STORE_PENDING;
    d->created = clock_unix();
    d->scale = q->has_scale ? (float)q->scale : -1; /* decided by the dtype in finish */
    d->nchan = q->nmean > q->nstd ? q->nmean : q->nstd;
    if (q->nmean > 1 && q->nstd > 1 && q->nmean != q->nstd)
        return proto_fail(e, 422, "invalid_value", "mean has %d entries and std %d; give one per channel", q->nmean,
                          q->nstd);
    if (d->nchan < 1) d->nchan = 1;
    for (int c = 0; c < d->nchan; c++) {
        d->mean[c] = q->nmean ? (float)q->mean[q->nmean == 1 ? 0 : c] : 0.0f;
        d->std[c] = q->nstd ? (float)q->std[q->nstd == 1 ? 0 : c] : 1.0f;
    }
    store_txn *t;
    int rc = store_txn_begin(a->st, 0, &t);
    if (rc == STORE_OK) rc = store_next_id(t, "dataset", &d->id);
    if (rc == STORE_OK) rc = store_dataset_put(t, d, 1);
    if (rc == STORE_OK)
        rc = store_txn_commit(t);
    else
        store_txn_abort(t);
    if (rc == STORE_EXISTS)
        return proto_fail(e, 409, "dataset_exists", "dataset '%s' already exists; DELETE it first", q->name);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    im->created = 1;
    im->has_slice = q->has_slice;
    im->shard = q->slice_shard;
    im->shards = q->slice_shards;
    if (q->classes.n) {
        if (!(im->classes.names = calloc(q->classes.n, sizeof *im->classes.names)))
            return proto_fail(e, 500, "internal", "out of memory");
        im->classes.n = q->classes.n;
        for (size_t i = 0; i < q->classes.n; i++)
            if (!(im->classes.names[i] = strdup(q->classes.names[i])))
                return proto_fail(e, 500, "internal", "out of memory");
    }
    if (dsread_new(format, 0, on_header, on_inputs, im, &im->r) != 0)
        return proto_fail(e, 500, "internal", "out of memory");
    return 0;
}

int importer_feed(importer *im, const void *data, size_t len, proto_err *e)
{
    char err[512];
    if (im->failed) {
        *e = im->e;
        return -1;
    }
    if (dsread_feed(im->r, data, len, err, sizeof err) == 0) return 0;
    if (!im->failed) proto_fail(&im->e, 422, "invalid_dataset", "body: %s", err);
    im->failed = 1;
    *e = im->e;
    return -1;
}

int importer_file(importer *im, const char *path, const char *shown, proto_err *e)
{
    char err[512];
    if (dsread_file(im->r, path, err, sizeof err) == 0) return 0;
    if (!im->failed) proto_fail(&im->e, 422, "invalid_dataset", "path '%s': %s", shown, err);
    im->failed = 1;
    *e = im->e;
    return -1;
}

typedef struct labels_ctx { int32_t *v; uint64_t n; int dtype; } labels_ctx;

static int labels_header(const dsread_info *info, void *arg, char *err, size_t errlen)
{
    labels_ctx *l = arg;
    if (info->ndim != 1 || info->dtype == DSREAD_F32) {
        snprintf(err, errlen, "labels must be a rank-1 array of integers");
        return 1;
    }
    l->dtype = info->dtype;
    l->n = info->count;
    if (!(l->v = malloc((info->count ? info->count : 1) * sizeof *l->v))) {
        snprintf(err, errlen, "out of memory");
        return 1;
    }
    return 0;
}

/* dsread delivers u8 as bytes and wider integers as int64. */
static int labels_inputs(const void *data, uint64_t first, uint64_t count, void *arg, char *err, size_t errlen)
{
    labels_ctx *l = arg;
    for (uint64_t i = 0; i < count; i++) {
        int64_t v = l->dtype == DSREAD_U8 ? ((const uint8_t *)data)[i] : ((const int64_t *)data)[i];
        if (v < INT32_MIN || v > INT32_MAX) {
            snprintf(err, errlen, "label %lld of input %llu does not fit in 32 bits", (long long)v,
                     (unsigned long long)(first + i));
            return 1;
        }
        l->v[first + i] = (int32_t)v;
    }
    return 0;
}

/* Reads a labels file (npy or idx, u8 or integer) into int32[want]. */
static int read_labels(const char *path, uint64_t want, int32_t **out, proto_err *e)
{
    labels_ctx l = {0};
    dsread *r = NULL;
    char err[512];
    if (dsread_new(DSREAD_AUTO, 0, labels_header, labels_inputs, &l, &r) != 0)
        return proto_fail(e, 500, "internal", "out of memory");
    int rc = dsread_file(r, path, err, sizeof err);
    dsread_free(r);
    if (rc != 0) {
        free(l.v);
        return proto_fail(e, 422, "invalid_labels", "labels_path: %s", err);
    }
    if (l.n != want) {
        free(l.v);
        return proto_fail(e, 422, "invalid_labels", "labels_path holds %llu labels for %llu inputs",
                          (unsigned long long)l.n, (unsigned long long)want);
    }
    *out = l.v;
    return 0;
}

int importer_finish(importer *im, const char *labels_path, store_dataset *out, proto_err *e)
{
    char err[512];
    if (im->failed) {
        *e = im->e;
        return -1;
    }
    if (dsread_finish(im->r, err, sizeof err) != 0) {
        im->failed = 1;
        return proto_fail(e, 422, "invalid_dataset", "%s", err);
    }
    if (flush(im) != 0) {
        *e = im->e;
        return -1;
    }
    store_dataset *d = &im->d;
    if (d->scale < 0) d->scale = d->dtype == STORE_U8 ? 1.0f / 255.0f : 1.0f;
    int32_t *labels = NULL;
    if (labels_path && read_labels(labels_path, d->total, &labels, e) != 0) {
        im->failed = 1;
        return -1;
    }
    if (labels && d->first) memmove(labels, labels + d->first, d->count * sizeof *labels);
    store_txn *t;
    int rc = store_txn_begin(im->a->st, 0, &t);
    if (rc == STORE_OK && labels) rc = store_labels_put(t, d->id, labels, d->count);
    d->has_labels = labels != NULL;
    d->state = STORE_READY;
    if (rc == STORE_OK && im->classes.n) { /* checked against the labels just written */
        char *blob;
        size_t blen;
        if (catalog_classes_blob(t, d, &im->classes, &blob, &blen, e) != 0) {
            store_txn_abort(t);
            free(labels);
            im->failed = 1;
            return -1;
        }
        rc = store_classes_put(t, d->id, blob, blen);
        free(blob);
    }
    if (rc == STORE_OK) rc = store_dataset_put(t, d, 0);
    if (rc == STORE_OK)
        rc = store_txn_commit(t);
    else
        store_txn_abort(t);
    free(labels);
    if (rc != STORE_OK) {
        im->failed = 1;
        return catalog_store_fail(rc, NULL, e);
    }
    im->done = 1;
    *out = *d;
    return 0;
}

void importer_free(importer *im)
{
    if (!im) return;
    if (im->created && !im->done) {
        store_txn *t;
        if (store_txn_begin(im->a->st, 0, &t) == STORE_OK) {
            store_dataset_del(t, im->d.name);
            if (store_txn_commit(t) != STORE_OK)
                log_msg("import of '%s' failed and its remains could not be deleted now: %s; they are "
                        "swept at the next start",
                        im->d.name, store_errmsg());
        }
    }
    dsread_free(im->r);
    free(im->buf);
    proto_free_classes(&im->classes);
    free(im);
}

int importer_import_file(app *a, const proto_dataset_req *q, const char *path, const char *labels_path,
                         store_dataset *out, proto_err *e)
{
    importer *im = NULL;
    double t0 = clock_ms();
    int format = q->format == PROTO_FMT_NPY ? DSREAD_NPY : q->format == PROTO_FMT_IDX ? DSREAD_IDX : DSREAD_AUTO;
    int rc = importer_begin(a, q, format, &im, e);
    if (rc == 0) rc = importer_file(im, path, q->path, e);
    if (rc == 0) rc = importer_finish(im, labels_path, out, e);
    importer_free(im);
    if (rc == 0)
        log_msg("dataset '%s' imported: %llu inputs in %.2f s", out->name, (unsigned long long)out->count,
                (clock_ms() - t0) / 1000);
    return rc;
}
