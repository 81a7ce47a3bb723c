/* proto.c -- the API's requests as field-spec tables (see proto.h). Fields
 * with two shapes (a number or a list; an id or a tensor; flat indices or
 * coordinates) are taken as JS_JSON and finished by a small parser each. */
#include "proto.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const AGGS[] = {"sum", "mean", "max", "min", NULL};
static const char *const METRICS[] = {"l2", "l1", "linf", NULL};
static const char *const METHODS[] = {"auto", "nta", "bounds", "scan", "materialized", NULL};
static const char *const FORMATS[] = {"auto", "npy", "idx", NULL};
static const char *const KINDS[] = {"npi", "full", NULL};

int proto_valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > PROTO_NAME_MAX) return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
              *p == '_' || *p == '-'))
            return 0;
    return 1;
}

/* Loads the body as a JSON object (400 on malformed JSON). */
static json_t *load(const char *body, size_t len, proto_err *e)
{
    if (!body || len == 0) {
        proto_fail(e, 400, "empty_body", "the request needs a JSON body");
        return NULL;
    }
    json_error_t je;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        proto_fail(e, 400, "invalid_json", "malformed JSON at line %d, column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        proto_fail(e, 400, "invalid_body", "the body must be a JSON object");
        return NULL;
    }
    return j;
}

/* A number or 1..max numbers, each > lo (or >= lo when !strict). */
static int parse_channels(json_t *v, const char *field, double lo, int strict, double *out, int *n, proto_err *e)
{
    if (json_is_number(v)) {
        double x = json_number_value(v);
        if (!isfinite(x) || (strict ? x <= lo : x < lo))
            return proto_fail(e, 422, "invalid_value", "field '%s' must be a finite number%s", field,
                              strict ? " > 0" : "");
        out[0] = x;
        *n = 1;
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) < 1 || json_array_size(v) > PROTO_MAX_CHANNELS)
        return proto_fail(e, 400, "invalid_type", "field '%s' must be a number or an array of 1 to %d numbers", field,
                          PROTO_MAX_CHANNELS);
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *x = json_array_get(v, i);
        double d = json_is_number(x) ? json_number_value(x) : NAN;
        if (!json_is_number(x)) return proto_fail(e, 400, "invalid_type", "field '%s'[%zu] must be a number", field, i);
        if (!isfinite(d) || (strict ? d <= lo : d < lo))
            return proto_fail(e, 422, "invalid_value", "field '%s'[%zu] must be a finite number%s", field, i,
                              strict ? " > 0" : "");
        out[i] = d;
    }
    *n = (int)json_array_size(v);
    return 0;
}

/* ---- models ---- */

int proto_parse_model(const char *body, size_t len, proto_model_req *r, proto_err *e)
{
    jspec_uints shape = {0};
    int has_shape = 0;
    const jspec specs[] = {
        {.name = "name", .type = JS_NAME, .required = 1, .dest = r->name},
        {.name = "path", .type = JS_STRING, .required = 1, .dest = &r->path, .max = 4095},
        {.name = "input_shape", .type = JS_UINTS, .dest = &shape, .present = &has_shape, .min = 1,
         .max = 1 << 24},
        {.type = JS_END}};
    json_t *j = load(body, len, e);
    int rc = -1;
    if (!j) return -1;
    if (jspec_parse(j, specs, e) != 0) goto out;
    if (has_shape) {
        if (shape.n > PROTO_MAX_DIMS) {
            proto_fail(e, 422, "invalid_value", "field 'input_shape' must have 1 to %d dimensions", PROTO_MAX_DIMS);
            goto out;
        }
        for (size_t i = 0; i < shape.n; i++) r->input_shape[i] = (int64_t)shape.v[i];
        r->ndim = (int)shape.n;
    }
    rc = 0;
out:
    free(shape.v);
    json_decref(j);
    return rc;
}

void proto_free_model(proto_model_req *r)
{
    free(r->path);
    r->path = NULL;
}

/* ---- datasets ---- */

int proto_parse_dataset(const char *body, size_t len, proto_dataset_req *r, proto_err *e)
{
    json_t *mean = NULL, *std = NULL;
    const jspec specs[] = {
        {.name = "name", .type = JS_NAME, .required = 1, .dest = r->name},
        {.name = "path", .type = JS_STRING, .required = 1, .dest = &r->path, .max = 4095},
        {.name = "labels_path", .type = JS_STRING, .dest = &r->labels_path, .max = 4095},
        {.name = "format", .type = JS_ENUM, .dest = &r->format, .choices = FORMATS},
        {.name = "scale", .type = JS_NUMBER, .dest = &r->scale, .present = &r->has_scale, .dmin = 1e-30, .dmax = 1e30},
        {.name = "mean", .type = JS_JSON, .dest = &mean},
        {.name = "std", .type = JS_JSON, .dest = &std},
        {.type = JS_END}};
    json_t *j = load(body, len, e);
    int rc = -1;
    if (!j) return -1;
    if (jspec_parse(j, specs, e) != 0) goto out;
    if (mean && parse_channels(mean, "mean", -INFINITY, 0, r->mean, &r->nmean, e) != 0) goto out;
    if (std && parse_channels(std, "std", 0, 1, r->std, &r->nstd, e) != 0) goto out;
    rc = 0;
out:
    json_decref(j);
    return rc;
}

static int parse_list(const char *s, const char *field, int strict_pos, double *out, int *n, proto_err *e)
{
    int k = 0;
    const char *p = s;
    if (!*p) return proto_fail(e, 400, "invalid_value", "parameter '%s' is empty", field);
    while (*p) {
        char *end;
        double d = strtod(p, &end);
        if (end == p || (*end && *end != ',') || !isfinite(d) || (strict_pos && d <= 0))
            return proto_fail(e, 422, "invalid_value", "parameter '%s' must be %snumbers separated by commas: '%s'",
                              field, strict_pos ? "positive " : "", s);
        if (k == PROTO_MAX_CHANNELS)
            return proto_fail(e, 422, "invalid_value", "parameter '%s' has more than %d values", field,
                              PROTO_MAX_CHANNELS);
        out[k++] = d;
        p = *end ? end + 1 : end;
    }
    *n = k;
    return 0;
}

int proto_dataset_opts(proto_dataset_req *r, const char *scale, const char *mean, const char *std, proto_err *e)
{
    if (scale) {
        double v[PROTO_MAX_CHANNELS];
        int n;
        if (parse_list(scale, "scale", 1, v, &n, e) != 0) return -1;
        if (n != 1) return proto_fail(e, 422, "invalid_value", "parameter 'scale' must be one number");
        r->scale = v[0];
        r->has_scale = 1;
    }
    if (mean && parse_list(mean, "mean", 0, r->mean, &r->nmean, e) != 0) return -1;
    if (std && parse_list(std, "std", 1, r->std, &r->nstd, e) != 0) return -1;
    return 0;
}

void proto_free_dataset(proto_dataset_req *r)
{
    free(r->path);
    free(r->labels_path);
    r->path = r->labels_path = NULL;
}

/* ---- indexes ---- */

static int copy_layer(json_t *v, const char *field, char *dst, proto_err *e)
{
    if (!json_is_string(v)) return proto_fail(e, 400, "invalid_type", "field '%s' must be a string", field);
    size_t n = json_string_length(v);
    if (n < 1 || n > PROTO_LAYER_MAX || memchr(json_string_value(v), '\0', n))
        return proto_fail(e, 422, "invalid_value", "field '%s' must be a layer name of 1 to %d characters", field,
                          PROTO_LAYER_MAX);
    memcpy(dst, json_string_value(v), n + 1);
    return 0;
}

int proto_parse_index(const char *body, size_t len, proto_index_req *r, proto_err *e)
{
    json_t *layer = NULL, *layers = NULL;
    uint64_t parts = 0;
    const jspec specs[] = {
        {.name = "model", .type = JS_NAME, .required = 1, .dest = r->model},
        {.name = "dataset", .type = JS_NAME, .required = 1, .dest = r->dataset},
        {.name = "layer", .type = JS_JSON, .dest = &layer},
        {.name = "layers", .type = JS_JSON, .dest = &layers},
        {.name = "partitions", .type = JS_UINT, .dest = &parts, .present = &r->has_partitions, .min = 2, .max = 256},
        {.name = "mai_ratio", .type = JS_NUMBER, .dest = &r->mai_ratio, .present = &r->has_mai_ratio, .dmin = 0,
         .dmax = 0.5},
        {.name = "storage_budget", .type = JS_NUMBER, .dest = &r->storage_budget, .present = &r->has_budget,
         .dmin = 1e-9, .dmax = 1},
        {.name = "kind", .type = JS_ENUM, .dest = &r->kind, .choices = KINDS},
        {.type = JS_END}};
    json_t *j = load(body, len, e);
    int rc = -1;
    if (!j) return -1;
    if (jspec_parse(j, specs, e) != 0) goto out;
    r->partitions = (uint32_t)parts;
    if (r->has_budget && r->storage_budget <= 0) {
        proto_fail(e, 422, "invalid_value", "field 'storage_budget' must be in (0, 1]");
        goto out;
    }
    if (!layer == !layers) {
        proto_fail(e, 400, "missing_field", "give exactly one of 'layer' (a name) or 'layers' (a list of names)");
        goto out;
    }
    if (layer) {
        if (copy_layer(layer, "layer", r->layers[0], e) != 0) goto out;
        r->nlayers = 1;
    } else {
        if (!json_is_array(layers)) {
            proto_fail(e, 400, "invalid_type", "field 'layers' must be an array of layer names");
            goto out;
        }
        size_t n = json_array_size(layers);
        if (n < 1 || n > PROTO_MAX_LAYERS) {
            proto_fail(e, 422, "invalid_value", "field 'layers' must name 1 to %d layers", PROTO_MAX_LAYERS);
            goto out;
        }
        for (size_t i = 0; i < n; i++) {
            if (copy_layer(json_array_get(layers, i), "layers", r->layers[i], e) != 0) goto out;
            for (size_t k = 0; k < i; k++)
                if (strcmp(r->layers[k], r->layers[i]) == 0) {
                    proto_fail(e, 422, "invalid_value", "field 'layers' names '%s' twice", r->layers[i]);
                    goto out;
                }
        }
        r->nlayers = (int)n;
    }
    if (r->has_budget && (r->has_partitions || r->has_mai_ratio)) {
        proto_fail(e, 422, "conflicting_fields",
                   "give 'storage_budget' or 'partitions'/'mai_ratio', not both: the budget picks them");
        goto out;
    }
    if (r->kind == 1 && (r->has_budget || r->has_partitions || r->has_mai_ratio)) {
        proto_fail(e, 422, "conflicting_fields", "a full materialization (kind 'full') takes no index parameters");
        goto out;
    }
    rc = 0;
out:
    json_decref(j);
    return rc;
}

void proto_free_index(proto_index_req *r) { (void)r; }

/* ---- queries ---- */

static int parse_neurons(json_t *v, proto_neurons *g, proto_err *e)
{
    if (!json_is_array(v)) return proto_fail(e, 400, "invalid_type", "field 'neurons' must be an array");
    size_t n = json_array_size(v);
    if (n < 1 || n > PROTO_MAX_GROUP)
        return proto_fail(e, 422, "invalid_value", "field 'neurons' must hold 1 to %d neurons", PROTO_MAX_GROUP);
    json_t *first = json_array_get(v, 0);
    int rank = 0;
    if (json_is_array(first)) {
        rank = (int)json_array_size(first);
        if (rank < 1 || rank > PROTO_MAX_DIMS)
            return proto_fail(e, 422, "invalid_value", "field 'neurons'[0] must be a coordinate of 1 to %d numbers",
                              PROTO_MAX_DIMS);
    }
    g->v = malloc(n * (size_t)(rank ? rank : 1) * sizeof *g->v);
    if (!g->v) return proto_fail(e, 500, "internal", "out of memory");
    g->rank = rank;
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_array_get(v, i);
        if (!rank) {
            if (json_is_array(x))
                return proto_fail(e, 422, "invalid_value",
                                  "field 'neurons' mixes flat indices and coordinates (entry %zu)", i);
            if (!json_is_integer(x) || json_integer_value(x) < 0)
                return proto_fail(e, json_is_integer(x) ? 422 : 400, json_is_integer(x) ? "neuron_out_of_range"
                                                                                        : "invalid_type",
                                  "field 'neurons'[%zu] must be a non-negative integer", i);
            g->v[i] = json_integer_value(x);
            continue;
        }
        if (!json_is_array(x))
            return proto_fail(e, 422, "invalid_value", "field 'neurons' mixes flat indices and coordinates (entry %zu)",
                              i);
        if ((int)json_array_size(x) != rank)
            return proto_fail(e, 422, "invalid_value", "field 'neurons'[%zu] has %zu coordinates, the first has %d", i,
                              json_array_size(x), rank);
        for (int d = 0; d < rank; d++) {
            json_t *c = json_array_get(x, (size_t)d);
            if (!json_is_integer(c) || json_integer_value(c) < 0)
                return proto_fail(e, 422, "neuron_out_of_range",
                                  "field 'neurons'[%zu][%d] must be a non-negative integer", i, d);
            g->v[i * (size_t)rank + (size_t)d] = json_integer_value(c);
        }
    }
    g->n = n;
    return 0;
}

static int parse_filter(json_t *v, proto_query_req *r, proto_err *e)
{
    jspec_uints ids = {0};
    json_t *labels = NULL;
    const jspec specs[] = {
        {.name = "ids", .type = JS_UINTS, .dest = &ids, .min = 0, .max = INT64_MAX},
        /* JS_UINTS caps arrays at 1<<20 entries by default; ids may be 1e7 */
        {.name = "labels", .type = JS_JSON, .dest = &labels},
        {.type = JS_END}};
    if (!json_is_object(v)) return proto_fail(e, 400, "invalid_type", "field 'filter' must be an object");
    if (jspec_parse(v, specs, e) != 0) {
        jspec_free(specs);
        /* make the message name the nested field */
        if (strncmp(e->message, "field '", 7) == 0) {
            char m[sizeof e->message];
            snprintf(m, sizeof m, "field 'filter.%s", e->message + 7);
            snprintf(e->message, sizeof e->message, "%s", m);
        }
        return -1;
    }
    r->filter_ids = ids.v;
    r->nfilter_ids = ids.n;
    if (labels) {
        if (!json_is_array(labels) || json_array_size(labels) < 1)
            return proto_fail(e, 400, "invalid_type", "field 'filter.labels' must be a non-empty array of integers");
        size_t n = json_array_size(labels);
        r->filter_labels = malloc(n * sizeof *r->filter_labels);
        if (!r->filter_labels) return proto_fail(e, 500, "internal", "out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *x = json_array_get(labels, i);
            if (!json_is_integer(x))
                return proto_fail(e, 400, "invalid_type", "field 'filter.labels'[%zu] must be an integer", i);
            r->filter_labels[i] = json_integer_value(x);
        }
        r->nfilter_labels = n;
    }
    if (!ids.n && !labels)
        return proto_fail(e, 422, "invalid_value", "field 'filter' needs 'ids' and/or 'labels'");
    r->has_filter = 1;
    return 0;
}

static int parse_target(json_t *v, proto_query_req *r, proto_err *e)
{
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0)
            return proto_fail(e, 422, "target_out_of_range", "field 'target' must be an input id >= 0");
        r->has_target_id = 1;
        r->target_id = (uint64_t)json_integer_value(v);
        return 0;
    }
    if (!json_is_object(v))
        return proto_fail(e, 400, "invalid_type", "field 'target' must be an input id or {\"tensor\": [...]}");
    jspec_floats t = {0};
    const jspec specs[] = {
        {.name = "tensor", .type = JS_FLOATS, .required = 1, .dest = &t, .max = 1 << 24},
        {.type = JS_END}};
    if (jspec_parse(v, specs, e) != 0) {
        jspec_free(specs);
        return -1;
    }
    r->tensor = malloc(t.n * sizeof *r->tensor);
    if (!r->tensor) {
        jspec_free(specs);
        return proto_fail(e, 500, "internal", "out of memory");
    }
    for (size_t i = 0; i < t.n; i++) {
        if (fabs(t.v[i]) > 3.4e38) {
            jspec_free(specs);
            return proto_fail(e, 422, "invalid_target", "field 'target.tensor'[%zu] does not fit a float", i);
        }
        r->tensor[i] = (float)t.v[i];
    }
    r->ntensor = t.n;
    jspec_free(specs);
    return 0;
}

int proto_parse_query(const char *body, size_t len, int knn, proto_query_req *r, proto_err *e)
{
    json_t *neurons = NULL, *filter = NULL, *target = NULL;
    jspec_floats weights = {0};
    uint64_t batch = 0;
    json_t *layer = NULL;
    jspec specs[16];
    int n = 0;
    specs[n++] = (jspec){.name = "model", .type = JS_NAME, .required = 1, .dest = r->model};
    specs[n++] = (jspec){.name = "dataset", .type = JS_NAME, .required = 1, .dest = r->dataset};
    specs[n++] = (jspec){.name = "layer", .type = JS_JSON, .required = 1, .dest = &layer};
    specs[n++] = (jspec){.name = "neurons", .type = JS_JSON, .required = 1, .dest = &neurons};
    specs[n++] = (jspec){.name = "k", .type = JS_UINT, .required = 1, .dest = &r->k, .min = 1, .max = PROTO_MAX_K};
    specs[n++] = (jspec){.name = "method", .type = JS_ENUM, .dest = &r->method, .choices = METHODS};
    specs[n++] = (jspec){.name = "weights", .type = JS_FLOATS, .dest = &weights, .max = PROTO_MAX_GROUP, .dmin = 0,
                         .dmax = 1e30};
    specs[n++] = (jspec){.name = "filter", .type = JS_JSON, .dest = &filter};
    specs[n++] = (jspec){.name = "batch", .type = JS_UINT, .dest = &batch, .min = 1, .max = 65536};
    specs[n++] = (jspec){.name = "timeout_s", .type = JS_NUMBER, .dest = &r->timeout_s, .dmin = 1e-3, .dmax = 3600};
    if (knn) {
        specs[n++] = (jspec){.name = "metric", .type = JS_ENUM, .dest = &r->metric, .choices = METRICS};
        specs[n++] = (jspec){.name = "target", .type = JS_JSON, .required = 1, .dest = &target};
        specs[n++] = (jspec){.name = "include_target", .type = JS_BOOL, .dest = &r->include_target};
    } else {
        specs[n++] = (jspec){.name = "agg", .type = JS_ENUM, .dest = &r->agg, .choices = AGGS};
    }
    specs[n] = (jspec){.type = JS_END};
    r->knn = knn;
    json_t *j = load(body, len, e);
    int rc = -1;
    if (!j) return -1;
    if (jspec_parse(j, specs, e) != 0) goto out;
    if (copy_layer(layer, "layer", r->layer, e) != 0) goto out;
    r->batch = (uint32_t)batch;
    if (parse_neurons(neurons, &r->neurons, e) != 0) goto out;
    if (weights.n) {
        if (weights.n != r->neurons.n) {
            proto_fail(e, 422, "weights_mismatch", "field 'weights' has %zu values for %zu neurons", weights.n,
                       r->neurons.n);
            goto out;
        }
        int any = 0;
        for (size_t i = 0; i < weights.n; i++) any |= weights.v[i] > 0;
        if (!any) {
            proto_fail(e, 422, "invalid_value", "field 'weights' must not be all zero");
            goto out;
        }
        if (!knn && r->agg != AGG_SUM) {
            proto_fail(e, 422, "invalid_value", "field 'weights' goes with agg 'sum' only");
            goto out;
        }
        r->weights = weights.v;
        r->nweights = weights.n;
        weights.v = NULL;
    }
    if (filter && parse_filter(filter, r, e) != 0) goto out;
    if (target && parse_target(target, r, e) != 0) goto out;
    rc = 0;
out:
    free(weights.v);
    json_decref(j);
    return rc;
}

void proto_free_query(proto_query_req *r)
{
    free(r->neurons.v);
    free(r->weights);
    free(r->filter_ids);
    free(r->filter_labels);
    free(r->tensor);
    r->neurons.v = NULL;
    r->weights = NULL;
    r->filter_ids = NULL;
    r->filter_labels = NULL;
    r->tensor = NULL;
    r->neurons.n = r->nweights = r->nfilter_ids = r->nfilter_labels = r->ntensor = 0;
}

typedef struct { int64_t flat; size_t pos; } flat_pos;

static int by_flat(const void *a, const void *b)
{
    const flat_pos *x = a, *y = b;
    if (x->flat != y->flat) return x->flat < y->flat ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

int proto_neurons_flatten(const proto_neurons *g, const int64_t *shape, int ndim, uint32_t *out, proto_err *e)
{
    int64_t total = 1;
    for (int d = 0; d < ndim; d++) total *= shape[d];
    for (size_t i = 0; i < g->n; i++) {
        int64_t flat;
        if (!g->rank) {
            flat = g->v[i];
            if (flat < 0 || flat >= total)
                return proto_fail(e, 422, "neuron_out_of_range", "neurons[%zu] = %lld is outside the layer (0..%lld)",
                                  i, (long long)flat, (long long)(total - 1));
        } else {
            if (g->rank != ndim)
                return proto_fail(e, 422, "neuron_out_of_range",
                                  "neurons[%zu] has %d coordinates; the layer's shape has %d dimensions", i, g->rank,
                                  ndim);
            flat = 0;
            for (int d = 0; d < ndim; d++) {
                int64_t c = g->v[i * (size_t)ndim + (size_t)d];
                if (c < 0 || c >= shape[d])
                    return proto_fail(e, 422, "neuron_out_of_range",
                                      "neurons[%zu][%d] = %lld is outside the layer (0..%lld)", i, d, (long long)c,
                                      (long long)(shape[d] - 1));
                flat = flat * shape[d] + c;
            }
        }
        out[i] = (uint32_t)flat;
    }
    flat_pos *fp = malloc(g->n * sizeof *fp);
    if (!fp) return proto_fail(e, 500, "internal", "out of memory");
    for (size_t i = 0; i < g->n; i++) fp[i] = (flat_pos){out[i], i};
    qsort(fp, g->n, sizeof *fp, by_flat);
    for (size_t i = 1; i < g->n; i++)
        if (fp[i].flat == fp[i - 1].flat) {
            size_t a = fp[i - 1].pos, b = fp[i].pos;
            free(fp);
            return proto_fail(e, 422, "duplicate_neuron", "neurons[%zu] and neurons[%zu] are the same neuron", a, b);
        }
    free(fp);
    return 0;
}

char *proto_error_body(const proto_err *e)
{
    json_t *j = json_pack("{s:{s:s,s:s}}", "error", "code", e->code, "message", e->message);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}
