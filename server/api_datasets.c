/* api_datasets.c -- dataset import (from a path or a streamed body), listing,
 * deletion, and per-input views (record, PNG, activations).
 *
 * An import writes a PENDING dataset record first, then the inputs in write
 * transactions of about 16 MiB as the parser delivers them, then labels, and
 * flips the record to READY last: readers never see half an import, and a
 * failure (or a crash, swept at the next start) deletes everything written.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "dsread.h"
#include "pathcheck.h"
#include "thumb.h"
#include "proto.h"
#include "source.h"

#define FLUSH_BYTES (16u << 20)

int api_delete_owned_indexes(store_txn *t, const char *model, const char *dataset); /* api_models.c */

typedef struct importer {
    app *a;
    store_dataset d;
    int created;                 /* the PENDING record exists */
    int done;                    /* READY committed */
    dsread *r;
    uint8_t *buf;                /* inputs waiting for the next write txn */
    size_t buf_bytes, buf_cap;
    uint64_t buf_first, next;
    size_t input_bytes;
    proto_err e;
    int failed;
} importer;

static int store_fail(importer *im, int rc)
{
    im->failed = 1;
    if (rc == STORE_FULL) return proto_fail(&im->e, 507, "store_full", "the store is full (LMDB map size reached)");
    return proto_fail(&im->e, 500, "store_error", "store: %s", store_errmsg());
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
    if (rc != STORE_OK) return store_fail(im, rc);
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
    d->count = info->count;
    im->input_bytes = info->input_bytes;
    if (d->nchan > 1 && d->ndim >= 3 && d->shape[0] != d->nchan) {
        snprintf(err, errlen, "mean/std give %d channels but inputs have %lld", d->nchan, (long long)d->shape[0]);
        return 1;
    }
    im->buf_cap = FLUSH_BYTES + info->input_bytes;
    im->buf = malloc(im->buf_cap);
    if (!im->buf) {
        snprintf(err, errlen, "out of memory");
        return 1;
    }
    return 0;
}

static int on_inputs(const void *data, uint64_t first, uint64_t count, void *arg, char *err, size_t errlen)
{
    importer *im = arg;
    const uint8_t *p = data;
    size_t bytes = count * im->input_bytes;
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
    im->next = first + count;
    return 0;
}

static int importer_begin(app *a, const proto_dataset_req *q, int format, importer *im)
{
    memset(im, 0, sizeof *im);
    im->a = a;
    store_dataset *d = &im->d;
    snprintf(d->name, sizeof d->name, "%s", q->name);
    d->state = STORE_PENDING;
    d->created = app_unix_now();
    d->scale = q->has_scale ? (float)q->scale : -1; /* decided by the dtype in finish */
    d->nchan = q->nmean > q->nstd ? q->nmean : q->nstd;
    if (q->nmean > 1 && q->nstd > 1 && q->nmean != q->nstd)
        return proto_fail(&im->e, 422, "invalid_value", "mean has %d entries and std %d; give one per channel",
                          q->nmean, q->nstd);
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
        return proto_fail(&im->e, 409, "dataset_exists", "dataset '%s' already exists; DELETE it first", q->name);
    if (rc != STORE_OK) return store_fail(im, rc);
    im->created = 1;
    if (dsread_new(format, 0, on_header, on_inputs, im, &im->r) != 0)
        return proto_fail(&im->e, 500, "internal", "out of memory");
    return 0;
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
    l->v = malloc((info->count ? info->count : 1) * sizeof *l->v);
    if (!l->v) {
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

static int importer_finish(importer *im, const char *labels_path)
{
    char err[512];
    if (dsread_finish(im->r, err, sizeof err) != 0) {
        im->failed = 1;
        return proto_fail(&im->e, 422, "invalid_dataset", "%s", err);
    }
    if (flush(im) != 0) return -1;
    store_dataset *d = &im->d;
    if (d->scale < 0) d->scale = d->dtype == STORE_U8 ? 1.0f / 255.0f : 1.0f;
    int32_t *labels = NULL;
    if (labels_path && read_labels(labels_path, d->count, &labels, &im->e) != 0) {
        im->failed = 1;
        return -1;
    }
    store_txn *t;
    int rc = store_txn_begin(im->a->st, 0, &t);
    if (rc == STORE_OK && labels) rc = store_labels_put(t, d->id, labels, d->count);
    d->has_labels = labels != NULL;
    d->state = STORE_READY;
    if (rc == STORE_OK) rc = store_dataset_put(t, d, 0);
    if (rc == STORE_OK)
        rc = store_txn_commit(t);
    else
        store_txn_abort(t);
    free(labels);
    if (rc != STORE_OK) return store_fail(im, rc);
    im->done = 1;
    return 0;
}

/* Frees the importer; an unfinished import is deleted with all it wrote. */
static void importer_end(importer *im)
{
    if (im->created && !im->done) {
        store_txn *t;
        if (store_txn_begin(im->a->st, 0, &t) == STORE_OK) {
            store_dataset_del(t, im->d.name);
            if (store_txn_commit(t) != STORE_OK)
                app_log("import of '%s' failed and its remains could not be deleted now: %s; they are "
                        "swept at the next start", im->d.name, store_errmsg());
        }
    }
    dsread_free(im->r);
    free(im->buf);
    im->r = NULL;
    im->buf = NULL;
}

json_t *api_dataset_json(const store_dataset *d)
{
    json_t *shape = json_array();
    for (int i = 0; i < d->ndim; i++) json_array_append_new(shape, json_integer(d->shape[i]));
    json_t *mean = json_array(), *std = json_array();
    for (int c = 0; c < d->nchan; c++) {
        json_array_append_new(mean, json_real(d->mean[c]));
        json_array_append_new(std, json_real(d->std[c]));
    }
    return json_pack("{s:s,s:I,s:o,s:s,s:f,s:o,s:o,s:b,s:s,s:I}", "name", d->name, "count", (json_int_t)d->count,
                     "shape", shape, "dtype", d->dtype == STORE_U8 ? "uint8" : "float32", "scale", (double)d->scale,
                     "mean", mean, "std", std, "labels", d->has_labels, "state",
                     d->state == STORE_READY ? "ready" : "importing", "created", (json_int_t)d->created);
}

void api_dataset_create(http_req *r)
{
    proto_dataset_req q = {0};
    importer im = {0};
    char path[PATH_MAX], lpath[PATH_MAX];
    double t0 = app_now_ms();
    if (proto_parse_dataset(r->body, r->body_len, &q, &im.e) != 0) goto err;
    if (pathcheck_resolve(r->app->cfg.import_root, q.path, "path", path, sizeof path, &im.e) != 0) goto err;
    if (q.labels_path &&
        pathcheck_resolve(r->app->cfg.import_root, q.labels_path, "labels_path", lpath, sizeof lpath, &im.e) != 0)
        goto err;
    int fmt = q.format == PROTO_FMT_NPY ? DSREAD_NPY : q.format == PROTO_FMT_IDX ? DSREAD_IDX : DSREAD_AUTO;
    if (importer_begin(r->app, &q, fmt, &im) != 0) goto err;
    char err[512];
    if (dsread_file(im.r, path, err, sizeof err) != 0) {
        if (!im.failed) proto_fail(&im.e, 422, "invalid_dataset", "path '%s': %s", q.path, err);
        goto err;
    }
    if (importer_finish(&im, q.labels_path ? lpath : NULL) != 0) goto err;
    app_log("dataset '%s' imported: %llu inputs in %.2f s", im.d.name, (unsigned long long)im.d.count,
            (app_now_ms() - t0) / 1000);
    http_reply_json(r, 201, api_dataset_json(&im.d));
    goto out;
err:
    http_reply_proto_err(r, &im.e);
out:
    importer_end(&im);
    proto_free_dataset(&q);
}

/* PUT /v1/datasets/{name}: a raw .npy (or idx) body, parsed as it arrives. */
int api_dataset_upload_chunk(http_req *r, const char *data, size_t len)
{
    importer *im = r->stream;
    if (!im) {
        im = calloc(1, sizeof *im);
        if (!im) return -1;
        r->stream = im;
        proto_dataset_req q = {0};
        if (!proto_valid_name(r->params[0])) {
            proto_fail(&im->e, 422, "invalid_name", "dataset name '%s' must be 1-64 of [A-Za-z0-9._-]", r->params[0]);
            im->failed = 1;
            return -1;
        }
        snprintf(q.name, sizeof q.name, "%s", r->params[0]);
        if (proto_dataset_opts(&q, http_arg(r, "scale"), http_arg(r, "mean"), http_arg(r, "std"), &im->e) != 0 ||
            importer_begin(r->app, &q, DSREAD_AUTO, im) != 0) {
            im->failed = 1;
            proto_free_dataset(&q);
            return -1;
        }
        proto_free_dataset(&q);
    }
    if (im->failed) return -1;
    char err[512];
    if (dsread_feed(im->r, data, len, err, sizeof err) != 0) {
        if (!im->failed) proto_fail(&im->e, 422, "invalid_dataset", "body: %s", err);
        im->failed = 1;
        return -1;
    }
    return 0;
}

void api_dataset_upload(http_req *r)
{
    importer *im = r->stream;
    if (!im) {
        http_reply_error(r, 400, "empty_body", "PUT /v1/datasets/{name} needs a .npy body");
        return;
    }
    if (!im->failed) importer_finish(im, NULL);
    if (im->failed) {
        http_reply_proto_err(r, &im->e);
        return;
    }
    app_log("dataset '%s' uploaded: %llu inputs", im->d.name, (unsigned long long)im->d.count);
    http_reply_json(r, 201, api_dataset_json(&im->d));
}

void api_dataset_upload_cleanup(http_req *r)
{
    importer *im = r->stream;
    importer_end(im);
    free(im);
    r->stream = NULL;
}

static int list_ds(const store_dataset *d, void *arg)
{
    if (d->state == STORE_READY) json_array_append_new(arg, api_dataset_json(d));
    return 0;
}

void api_dataset_list(http_req *r)
{
    json_t *arr = json_array();
    store_txn *t;
    if (store_txn_begin(r->app->st, 1, &t) == STORE_OK) {
        store_dataset_each(t, list_ds, arr);
        store_txn_abort(t);
    }
    http_reply_json(r, 200, json_pack("{s:o}", "datasets", arr));
}

void api_dataset_get(http_req *r)
{
    store_dataset d;
    if (api_find_dataset(r, r->params[0], &d) != 0) return;
    http_reply_json(r, 200, api_dataset_json(&d));
}

void api_dataset_delete(http_req *r)
{
    const char *name = r->params[0];
    store_dataset d;
    store_txn *t;
    int rc = store_txn_begin(r->app->st, 0, &t);
    if (rc == STORE_OK) {
        rc = store_dataset_get(t, name, &d);
        if (rc == STORE_OK && d.state != STORE_READY) rc = STORE_NOTFOUND;
        if (rc == STORE_OK) rc = store_dataset_del(t, name);
        if (rc == STORE_OK) rc = api_delete_owned_indexes(t, NULL, name);
        if (rc == STORE_OK)
            rc = store_txn_commit(t);
        else
            store_txn_abort(t);
    }
    if (rc == STORE_NOTFOUND) {
        http_reply_error(r, 404, "unknown_dataset", "dataset '%s' does not exist", name);
        return;
    }
    if (rc != STORE_OK) {
        http_reply_error(r, 500, "store_error", "store: %s", store_errmsg());
        return;
    }
    app_log("dataset '%s' deleted", name);
    http_reply_json(r, 200, json_pack("{s:s,s:b}", "name", name, "deleted", 1));
}

/* ---- one input ---- */

static int find_input(http_req *r, store_dataset *d, uint64_t *id)
{
    if (api_find_dataset(r, r->params[0], d) != 0) return -1;
    return api_parse_id(r, r->params[1], d->count, "input", id);
}

static json_t *label_of(app *a, const store_dataset *d, uint64_t id)
{
    if (!d->has_labels) return NULL;
    store_txn *t;
    json_t *v = NULL;
    if (store_txn_begin(a->st, 1, &t) != STORE_OK) return NULL;
    const int32_t *labels;
    uint64_t n;
    if (store_labels_get(t, d->id, &labels, &n) == STORE_OK && id < n) {
        int32_t l;
        memcpy(&l, labels + id, sizeof l); /* LMDB values may be unaligned */
        v = json_integer(l);
    }
    store_txn_abort(t);
    return v;
}

void api_input_get(http_req *r)
{
    store_dataset d;
    uint64_t id;
    if (find_input(r, &d, &id) != 0) return;
    json_t *shape = json_array();
    for (int i = 0; i < d.ndim; i++) json_array_append_new(shape, json_integer(d.shape[i]));
    json_t *o = json_pack("{s:I,s:s,s:o}", "id", (json_int_t)id, "dataset", d.name, "shape", shape);
    json_t *label = label_of(r->app, &d, id);
    if (label) json_object_set_new(o, "label", label);
    const char *tensor = http_arg(r, "tensor");
    if (tensor && strcmp(tensor, "0") != 0) {
        /* The input in the model's input space (after scale/mean/std): what a
         * kNN "tensor" target takes. */
        size_t numel = app_dataset_numel(&d);
        float *x = malloc(numel * sizeof *x);
        uint32_t id32 = (uint32_t)id;
        char err[256];
        store_txn *t;
        json_t *arr = json_array();
        if (x && store_txn_begin(r->app->st, 1, &t) == STORE_OK) {
            if (app_inputs_load(t, &d, &id32, 1, x, err, sizeof err) == 0)
                for (size_t i = 0; i < numel; i++) json_array_append_new(arr, json_real(x[i]));
            store_txn_abort(t);
        }
        free(x);
        json_object_set_new(o, "tensor", arr);
    }
    http_reply_json(r, 200, o);
}

void api_input_png(http_req *r)
{
    store_dataset d;
    uint64_t id;
    if (find_input(r, &d, &id) != 0) return;
    store_txn *t;
    if (store_txn_begin(r->app->st, 1, &t) != STORE_OK) {
        http_reply_error(r, 500, "store_error", "store: %s", store_errmsg());
        return;
    }
    const void *data;
    size_t len;
    unsigned char *png = NULL;
    size_t plen = 0;
    char err[256] = "missing input";
    int size = 112;
    const char *s = http_arg(r, "size");
    if (s) size = atoi(s) < 16 ? 16 : atoi(s) > 1024 ? 1024 : atoi(s);
    int rc = store_input_get(t, d.id, id, &data, &len);
    if (rc == STORE_OK)
        rc = thumb_from_input(data, d.dtype == STORE_U8 ? 1 : 2, d.ndim, d.shape, size, &png, &plen, err, sizeof err);
    store_txn_abort(t);
    if (rc != 0) {
        http_reply_error(r, 500, "internal", "cannot render input %llu: %s", (unsigned long long)id, err);
        return;
    }
    http_reply_bytes(r, 200, "image/png", png, plen, 1);
}

typedef struct { uint32_t neuron; float value; } neuron_value;

static int by_value_desc(const void *pa, const void *pb)
{
    const neuron_value *a = pa, *b = pb;
    if (a->value != b->value) return a->value > b->value ? -1 : 1;
    return a->neuron < b->neuron ? -1 : a->neuron > b->neuron;
}

/* GET .../activations?model=&layer=&top=10  (or &neurons=3,17,42 for given ones). */
void api_input_activations(http_req *r)
{
    store_dataset d;
    uint64_t id;
    app_model *m = NULL;
    float *row = NULL;
    neuron_value *nv = NULL;
    if (find_input(r, &d, &id) != 0) return;
    const char *model = http_arg(r, "model"), *layer = http_arg(r, "layer");
    if (!model || !layer) {
        http_reply_error(r, 400, "missing_field", "query parameters 'model' and 'layer' are required");
        return;
    }
    if (!(m = api_find_model(r, model))) return;
    int li = shim_layer_find(m->shim, layer);
    if (li < 0) {
        http_reply_error(r, 404, "unknown_layer", "model '%s' has no layer '%s'", model, layer);
        goto out;
    }
    if ((size_t)shim_input_numel(m->shim) != app_dataset_numel(&d)) {
        http_reply_error(r, 422, "shape_mismatch", "dataset '%s' inputs have %zu elements; model '%s' takes %lld",
                         d.name, app_dataset_numel(&d), model, (long long)shim_input_numel(m->shim));
        goto out;
    }
    const shim_layer *ly = shim_layer_at(m->shim, li);
    size_t D = (size_t)ly->neurons;
    row = malloc(D * sizeof *row);
    nv = malloc(D * sizeof *nv);
    if (!row || !nv) {
        http_reply_error(r, 500, "internal", "out of memory");
        goto out;
    }
    source_ctx src;
    source_init(&src, r->app, m, &d, li);
    uint32_t id32 = (uint32_t)id;
    char err[512];
    eng_fetch_stats st = {0};
    if (source_fetch(&src, &id32, 1, NULL, D, row, &st, err, sizeof err) != 0) {
        http_reply_error(r, 500, "inference_failed", "%s", err);
        goto out;
    }
    size_t n = 0;
    const char *list = http_arg(r, "neurons");
    if (list) {
        const char *p = list;
        while (*p && n < D) {
            char *end;
            unsigned long long v = strtoull(p, &end, 10);
            if (end == p || v >= D || (*end && *end != ',')) {
                http_reply_error(r, 422, "neuron_out_of_range", "neurons: '%s' is not a list of indices below %zu", list, D);
                goto out;
            }
            nv[n].neuron = (uint32_t)v;
            nv[n++].value = row[v];
            p = *end ? end + 1 : end;
        }
    } else {
        long top = 10;
        const char *ts = http_arg(r, "top");
        if (ts) {
            char *end;
            top = strtol(ts, &end, 10);
            if (*end || top < 1) {
                http_reply_error(r, 422, "invalid_value", "top must be an integer >= 1, got '%s'", ts);
                goto out;
            }
        }
        for (size_t i = 0; i < D; i++) nv[i] = (neuron_value){(uint32_t)i, row[i]};
        qsort(nv, D, sizeof *nv, by_value_desc);
        n = (size_t)top < D ? (size_t)top : D;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *coord = json_array();
        uint64_t rem = nv[i].neuron;
        int64_t c[SHIM_MAX_DIMS];
        for (int k = ly->ndim - 1; k >= 0; k--) {
            c[k] = (int64_t)(rem % (uint64_t)ly->shape[k]);
            rem /= (uint64_t)ly->shape[k];
        }
        for (int k = 0; k < ly->ndim; k++) json_array_append_new(coord, json_integer(c[k]));
        json_array_append_new(arr, json_pack("{s:I,s:o,s:f}", "neuron", (json_int_t)nv[i].neuron, "coord", coord,
                                             "value", (double)nv[i].value));
    }
    http_reply_json(r, 200, arr);
out:
    free(row);
    free(nv);
    app_model_put(m);
}
