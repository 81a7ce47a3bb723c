/* api_render.c -- the JSON of the catalog's records, shared by handlers. */
#include <errno.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>

#include "api.h"
#include "jobs.h"

json_t *api_shape_json(const int64_t *shape, int ndim)
{
    json_t *a = json_array();
    for (int i = 0; i < ndim; i++) json_array_append_new(a, json_integer(shape[i]));
    return a;
}

json_t *api_ids_json(const uint32_t *ids, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) json_array_append_new(a, json_integer(ids[i]));
    return a;
}

json_t *api_dataset_json(app *a, const store_dataset *d)
{
    json_t *mean = json_array(), *std = json_array();
    for (int c = 0; c < d->nchan; c++) {
        json_array_append_new(mean, json_real(d->mean[c]));
        json_array_append_new(std, json_real(d->std[c]));
    }
    json_t *o = json_pack("{s:s,s:I,s:o,s:s,s:f,s:o,s:o,s:b,s:s,s:I}", "name", d->name, "count",
                          (json_int_t)d->count, "shape", api_shape_json(d->shape, d->ndim), "dtype",
                          d->dtype == STORE_U8 ? "uint8" : "float32", "scale", (double)d->scale, "mean", mean, "std",
                          std, "labels", d->has_labels, "state", d->state == STORE_READY ? "ready" : "importing",
                          "created", (json_int_t)d->created);
    catalog_classes cls;
    proto_err e;
    if (catalog_classes_get(a, d, &cls, &e) == 0 && cls.n) {
        if (cls.n <= 1000) {
            json_t *names = json_array();
            for (size_t i = 0; i < cls.n; i++) json_array_append_new(names, json_string(cls.names[i]));
            json_object_set_new(o, "classes", names);
        }
        json_object_set_new(o, "classes_count", json_integer((json_int_t)cls.n));
    }
    catalog_classes_free(&cls);
    if (d->count != d->total) { /* a shard's slice */
        json_object_set_new(o, "first", json_integer((json_int_t)d->first));
        json_object_set_new(o, "total", json_integer((json_int_t)d->total));
    }
    return o;
}

static json_t *layers_json(const registry_model *rm)
{
    const shim_model *m = rm->shim;
    json_t *layers = json_array();
    for (int i = 0; i < shim_layer_count(m); i++) {
        const shim_layer *l = shim_layer_at(m, i);
        /* forward_ms: one forward of `batch` inputs to this layer, timed at load */
        json_array_append_new(layers, json_pack("{s:s,s:o,s:I,s:f}", "name", l->name, "shape",
                                                api_shape_json(l->shape, l->ndim), "neurons", (json_int_t)l->neurons,
                                                "forward_ms", rm->layer_ms ? rm->layer_ms[i] : 0.0));
    }
    return layers;
}

json_t *api_model_json(const registry_model *m)
{
    int64_t shape[SHIM_MAX_DIMS];
    int nd = shim_input_shape(m->shim, shape);
    /* batch_slot_classes: how many arithmetic variants of a forward the
     * batch slots showed at load (infer.h); inputs stay within one */
    return json_pack("{s:s,s:s,s:s,s:o,s:o,s:I,s:i,s:i,s:I,s:s,s:b,s:f}", "name", m->name, "path", m->rec.path,
                     "device", shim_device(m->shim), "input_shape", api_shape_json(shape, nd), "layers",
                     layers_json(m), "created", (json_int_t)m->rec.created, "batch_slot_classes", m->nclass, "batch",
                     (int)m->batch, "forward_bytes_per_input", (json_int_t)m->input_bytes, "layout",
                     registry_layout_name(m), "numerics_changed", m->numerics_changed, "index_probe_ms",
                     m->index_probe_ms);
}

static const char *index_state(int s)
{
    return s == STORE_READY ? "ready" : s == STORE_PENDING ? "building" : "failed";
}

json_t *api_index_json(const store_index *ix)
{
    char digest[17];
    snprintf(digest, sizeof digest, "%016llx", (unsigned long long)ix->digest);
    json_t *o = json_pack("{s:I,s:s,s:s,s:s,s:s,s:I,s:f,s:I,s:I,s:I,s:I,s:f,s:I,s:I,s:f}", "id", (json_int_t)ix->id,
                          "model", ix->model, "dataset", ix->dataset, "layer", ix->layer, "state",
                          index_state(ix->state), "partitions", (json_int_t)ix->partitions, "mai_ratio",
                          (double)ix->mai_ratio, "count", (json_int_t)ix->count, "neurons", (json_int_t)ix->neurons,
                          "bytes", (json_int_t)ix->bytes, "full_materialization_bytes", (json_int_t)ix->full_bytes,
                          "ratio", ix->full_bytes ? (double)ix->bytes / (double)ix->full_bytes : 0.0, "job",
                          (json_int_t)ix->job, "created", (json_int_t)ix->created, "build_s", ix->build_s);
    json_object_set_new(o, "kind", json_string(ix->kind == STORE_INDEX_FULL ? "full" : "npi"));
    if (ix->state == STORE_READY) json_object_set_new(o, "digest", json_string(digest));
    if (ix->state == STORE_FAILED) json_object_set_new(o, "error", json_string(ix->error));
    return o;
}

static const char *job_state(int s)
{
    return s == JOB_QUEUED ? "queued" : s == JOB_RUNNING ? "running" : s == JOB_DONE ? "done" : "failed";
}

json_t *api_job_json(app *a, const store_job *j)
{
    uint64_t done = j->done, total = j->total;
    double eta = j->state == JOB_DONE ? 0 : -1;
    if (j->state == JOB_RUNNING) jobs_progress(a, j->id, &done, &total, &eta);
    size_t n = j->nindexes < 16 ? j->nindexes : 16;
    json_t *o = json_pack("{s:I,s:s,s:s,s:I,s:I,s:o,s:I,s:I,s:I}", "id", (json_int_t)j->id, "kind", j->kind, "state",
                          job_state(j->state), "done", (json_int_t)done, "total", (json_int_t)total, "indexes",
                          api_ids_json(j->indexes, n), "created", (json_int_t)j->created, "started",
                          (json_int_t)j->started, "finished", (json_int_t)j->finished);
    json_object_set_new(o, "eta_s", eta >= 0 ? json_real(eta) : json_null());
    if (j->model[0]) json_object_set_new(o, "model", json_string(j->model));
    if (j->dataset[0]) json_object_set_new(o, "dataset", json_string(j->dataset));
    if (j->state == JOB_FAILED) json_object_set_new(o, "error", json_string(j->error));
    if (j->cancelled) json_object_set_new(o, "cancelled", json_true());
    return o;
}

int api_path_id(http_req *r, int i, uint64_t limit, const char *what, uint64_t *out, proto_err *e)
{
    const char *s = r->params[i];
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || errno || s[0] == '-' || s[0] == '+' || s[0] == ' ' || v >= limit)
        return proto_fail(e, 404, "not_found", "%s '%s' does not exist (valid: 0..%llu)", what, s,
                          (unsigned long long)(limit ? limit - 1 : 0));
    *out = v;
    return 0;
}

void api_result_extras(json_t *o, const int32_t *label, const int32_t *predicted, const catalog_classes *classes)
{
    if (label) {
        json_object_set_new(o, "label", json_integer(*label));
        if (*label >= 0 && (size_t)*label < classes->n) json_object_set_new(o, "class", json_string(classes->names[*label]));
    }
    if (predicted) {
        json_object_set_new(o, "predicted", json_integer(*predicted));
        if (*predicted >= 0 && (size_t)*predicted < classes->n)
            json_object_set_new(o, "predicted_class", json_string(classes->names[*predicted]));
    }
}

int api_wants_csv(http_req *r)
{
    const char *f = http_arg(r, "format"), *acc = http_header(r, "Accept");
    if (f) return strcmp(f, "csv") == 0;
    return acc && strstr(acc, "text/csv") != NULL;
}

/* One CSV field: numbers as they are, text quoted when it needs to be. */
static void csv_field(FILE *f, const json_t *v)
{
    if (!v || json_is_null(v)) return;
    if (json_is_integer(v)) {
        fprintf(f, "%lld", (long long)json_integer_value(v));
    } else if (json_is_real(v)) {
        fprintf(f, "%.9g", json_real_value(v));
    } else if (json_is_boolean(v)) {
        fputs(json_is_true(v) ? "true" : "false", f);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strpbrk(s, ",\"\r\n") == NULL) {
            fputs(s, f);
        } else {
            fputc('"', f);
            for (; *s; s++) {
                if (*s == '"') fputc('"', f);
                fputc(*s, f);
            }
            fputc('"', f);
        }
    }
}

/* Whether keys (an array of strings) holds k. */
static int has_key(const json_t *keys, const char *k)
{
    for (size_t j = 0; j < json_array_size(keys); j++)
        if (strcmp(json_string_value(json_array_get(keys, j)), k) == 0) return 1;
    return 0;
}

void api_reply_csv(http_req *r, json_t *arr, const char *first)
{
    /* the columns: first, then every key of the rows in order of appearance */
    json_t *keys = json_array();
    json_array_append_new(keys, json_string(first));
    for (size_t i = 0; i < json_array_size(arr); i++)
        for (void *it = json_object_iter(json_array_get(arr, i)); it;
             it = json_object_iter_next(json_array_get(arr, i), it))
            if (!has_key(keys, json_object_iter_key(it))) json_array_append_new(keys, json_string(json_object_iter_key(it)));
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        json_decref(keys);
        json_decref(arr);
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
    for (size_t j = 0; j < json_array_size(keys); j++)
        fprintf(f, "%s%s", j ? "," : "", json_string_value(json_array_get(keys, j)));
    fputs("\r\n", f);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        const json_t *o = json_array_get(arr, i);
        for (size_t j = 0; j < json_array_size(keys); j++) {
            if (j) fputc(',', f);
            csv_field(f, json_object_get(o, json_string_value(json_array_get(keys, j))));
        }
        fputs("\r\n", f);
    }
    fclose(f);
    json_decref(keys);
    json_decref(arr);
    http_reply_bytes(r, 200, "text/csv; charset=utf-8", buf, len, 1);
}
