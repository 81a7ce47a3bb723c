/* proto.c -- the request bodies of the HTTP API as C structs (see proto.h).
 *
 * Each request type is one jspec table; fields with two shapes ("mean": a
 * number or an array, "target": an id or an object, "neurons": indices or
 * coordinates) arrive as JS_JSON and get a small custom parser. Every parser
 * zeroes its struct first, so the caller's one proto_free_* call is right
 * whether parsing succeeded, failed half-way, or never started.
 */
#include "proto.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROTO_PATH_MAX 4095
#define PROTO_MAX_FILTER 10000000
#define PROTO_MAX_TENSOR ((size_t)1 << 24)
#define PROTO_MAX_BATCH 65536
#define PROTO_MAX_TIMEOUT_S 3600.0

/* The body as a JSON object, or NULL with e filled. Duplicate keys are
 * rejected: which of two "k"s counts would otherwise be an accident. */
static json_t *load_object(const char *body, size_t len, proto_err *e)
{
    size_t i = 0;
    while (body && i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n')) i++;
    if (!body || i == len) {
        proto_fail(e, 400, "empty_body", "the request body is empty; send a JSON object");
        return NULL;
    }
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        proto_fail(e, 400, "invalid_json", "malformed JSON at line %d, column %d: %s", je.line, je.column, je.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        proto_fail(e, 400, "invalid_body", "the body must be a JSON object, not %s", jspec_type_name(root));
        json_decref(root);
        return NULL;
    }
    return root;
}

/* jspec_parse on an object nested in field `field`; errors say where. */
static int parse_nested(const json_t *obj, const jspec *specs, const char *field, proto_err *e)
{
    if (jspec_parse(obj, specs, e) == 0) return 0;
    proto_err inner = *e;
    return proto_fail(e, inner.status, inner.code, "in '%s': %s", field, inner.message);
}

/* A finite number in [lo, hi], or (lo, hi] when lo_open. */
static int get_number(const json_t *v, const char *field, double lo, int lo_open, double hi, double *out,
                      proto_err *e)
{
    if (!json_is_number(v))
        return proto_fail(e, 400, "invalid_type", "field '%s' must be a number, not %s", field, jspec_type_name(v));
    double x = json_number_value(v);
    if (!isfinite(x) || (lo_open ? x <= lo : x < lo) || x > hi) {
        if (hi >= DBL_MAX)
            return proto_fail(e, 422, "invalid_value", "field '%s' must be a number %s %g; it is %g", field,
                              lo_open ? ">" : ">=", lo, x);
        return proto_fail(e, 422, "invalid_value", "field '%s' must be a number %s %g and <= %g; it is %g", field,
                          lo_open ? ">" : ">=", lo, hi, x);
    }
    *out = x;
    return 0;
}

/* A layer name: any string of 1..PROTO_LAYER_MAX bytes (models name their
 * layers freely, e.g. "features.3.0"), copied into out. */
static int get_layer(const json_t *v, const char *field, char *out, proto_err *e)
{
    if (!json_is_string(v))
        return proto_fail(e, 400, "invalid_type", "field '%s' must be a string, not %s", field, jspec_type_name(v));
    size_t len = json_string_length(v);
    if (len == 0 || len > PROTO_LAYER_MAX)
        return proto_fail(e, 422, "invalid_value", "field '%s' must be 1 to %d bytes long; it has %zu", field,
                          PROTO_LAYER_MAX, len);
    if (strlen(json_string_value(v)) != len)
        return proto_fail(e, 422, "invalid_value", "field '%s' must not contain a NUL character", field);
    memcpy(out, json_string_value(v), len + 1);
    return 0;
}

/* ---- models ---- */

int proto_parse_model(const char *body, size_t len, proto_model_req *r, proto_err *e)
{
    memset(r, 0, sizeof *r);
    jspec_uints shape = {0};
    static const char *const layouts[] = {"auto", "contiguous", "channels-last", NULL};
    const jspec specs[] = {
        {.name = "name", .type = JS_NAME, .required = 1, .dest = r->name},
        {.name = "path", .type = JS_STRING, .required = 1, .dest = &r->path, .max = PROTO_PATH_MAX},
        {.name = "input_shape", .type = JS_UINTS, .dest = &shape, .min = 1, .max = INT32_MAX,
         .maxn = PROTO_MAX_DIMS},
        {.name = "layout", .type = JS_ENUM, .dest = &r->layout, .choices = layouts},
        {0},
    };
    json_t *root = load_object(body, len, e);
    if (!root) return -1;
    if (jspec_parse(root, specs, e) != 0) goto fail;
    r->ndim = (int)shape.n;
    for (size_t d = 0; d < shape.n; d++) r->input_shape[d] = (int64_t)shape.v[d];
    free(shape.v);
    json_decref(root);
    return 0;
fail:
    jspec_free(specs);
    json_decref(root);
    return -1;
}

void proto_free_model(proto_model_req *r)
{
    free(r->path);
    r->path = NULL;
}

/* ---- datasets ---- */

/* "mean"/"std": one number for every channel, or one per channel. */
static int get_channels(const json_t *v, const char *field, int positive, double *out, int *n, proto_err *e)
{
    const char *want = positive ? "> 0" : "finite";
    if (json_is_number(v)) {
        double x = json_number_value(v);
        if (!isfinite(x) || (positive && !(x > 0)))
            return proto_fail(e, 422, "invalid_value", "field '%s' must be %s; it is %g", field, want, x);
        out[0] = x;
        *n = 1;
        return 0;
    }
    if (!json_is_array(v))
        return proto_fail(e, 400, "invalid_type", "field '%s' must be a number or an array of 1 to %d numbers, not %s",
                          field, PROTO_MAX_CHANNELS, jspec_type_name(v));
    size_t len = json_array_size(v);
    if (len == 0 || len > PROTO_MAX_CHANNELS)
        return proto_fail(e, 422, "invalid_value", "field '%s' must hold 1 to %d numbers (one per channel); it holds %zu",
                          field, PROTO_MAX_CHANNELS, len);
    for (size_t i = 0; i < len; i++) {
        const json_t *x = json_array_get(v, i);
        if (!json_is_number(x))
            return proto_fail(e, 400, "invalid_type", "field '%s[%zu]' must be a number, not %s", field, i,
                              jspec_type_name(x));
        double f = json_number_value(x);
        if (!isfinite(f) || (positive && !(f > 0)))
            return proto_fail(e, 422, "invalid_value", "field '%s[%zu]' must be %s; it is %g", field, i, want, f);
        out[i] = f;
    }
    *n = (int)len;
    return 0;
}

/* "classes": an array of 1..PROTO_MAX_CLASSES names (strings, 1..128 bytes). */
static int get_classes(const json_t *v, proto_classes *r, proto_err *e)
{
    if (!json_is_array(v))
        return proto_fail(e, 400, "invalid_type", "field 'classes' must be an array of names, not %s",
                          jspec_type_name(v));
    size_t n = json_array_size(v);
    if (n == 0 || n > PROTO_MAX_CLASSES)
        return proto_fail(e, 422, "invalid_value", "field 'classes' must hold 1 to %d names; it holds %zu",
                          PROTO_MAX_CLASSES, n);
    if (!(r->names = calloc(n, sizeof *r->names))) return proto_fail(e, 500, "internal", "out of memory");
    r->n = n;
    for (size_t i = 0; i < n; i++) {
        const json_t *x = json_array_get(v, i);
        if (!json_is_string(x))
            return proto_fail(e, 400, "invalid_type", "field 'classes[%zu]' must be a string, not %s", i,
                              jspec_type_name(x));
        size_t l = json_string_length(x);
        if (l == 0 || l > PROTO_CLASS_MAX || strlen(json_string_value(x)) != l)
            return proto_fail(e, 422, "invalid_value", "field 'classes[%zu]' must be 1 to %d bytes without NUL", i,
                              PROTO_CLASS_MAX);
        if (!(r->names[i] = strdup(json_string_value(x)))) return proto_fail(e, 500, "internal", "out of memory");
    }
    return 0;
}

void proto_free_classes(proto_classes *r)
{
    for (size_t i = 0; r->names && i < r->n; i++) free(r->names[i]);
    free(r->names);
    r->names = NULL;
    r->n = 0;
}

int proto_parse_classes(const char *body, size_t len, proto_classes *r, proto_err *e)
{
    memset(r, 0, sizeof *r);
    json_t *classes = NULL;
    const jspec specs[] = {{.name = "classes", .type = JS_JSON, .required = 1, .dest = &classes}, {0}};
    json_t *root = load_object(body, len, e);
    if (!root) return -1;
    int rc = jspec_parse(root, specs, e) == 0 && get_classes(classes, r, e) == 0 ? 0 : -1;
    json_decref(root);
    if (rc) proto_free_classes(r);
    return rc;
}

int proto_parse_dataset(const char *body, size_t len, proto_dataset_req *r, proto_err *e)
{
    memset(r, 0, sizeof *r);
    static const char *const formats[] = {"npy", "idx", NULL};
    int format = 0, has_format = 0;
    json_t *scale = NULL, *mean = NULL, *std = NULL, *classes = NULL, *slice = NULL;
    const jspec specs[] = {
        {.name = "name", .type = JS_NAME, .required = 1, .dest = r->name},
        {.name = "slice", .type = JS_JSON, .dest = &slice},
        {.name = "path", .type = JS_STRING, .required = 1, .dest = &r->path, .max = PROTO_PATH_MAX},
        {.name = "format", .type = JS_ENUM, .dest = &format, .present = &has_format, .choices = formats},
        {.name = "labels_path", .type = JS_STRING, .dest = &r->labels_path, .max = PROTO_PATH_MAX},
        {.name = "scale", .type = JS_JSON, .dest = &scale},
        {.name = "mean", .type = JS_JSON, .dest = &mean},
        {.name = "std", .type = JS_JSON, .dest = &std},
        {.name = "classes", .type = JS_JSON, .dest = &classes},
        {0},
    };
    json_t *root = load_object(body, len, e);
    if (!root) return -1;
    if (jspec_parse(root, specs, e) != 0) goto fail;
    if (classes && get_classes(classes, &r->classes, e) != 0) goto fail;
    if (slice) {
        uint64_t sh = 0, n = 0;
        const jspec ss[] = {
            {.name = "shard", .type = JS_UINT, .required = 1, .dest = &sh, .min = 0, .max = PROTO_MAX_SHARDS - 1},
            {.name = "shards", .type = JS_UINT, .required = 1, .dest = &n, .min = 1, .max = PROTO_MAX_SHARDS},
            {0},
        };
        if (!json_is_object(slice)) {
            proto_fail(e, 400, "invalid_type", "field 'slice' must be an object {\"shard\": i, \"shards\": n}");
            goto fail;
        }
        if (parse_nested(slice, ss, "slice", e) != 0) goto fail;
        if (sh >= n) {
            proto_fail(e, 422, "invalid_value", "field 'slice.shard' (%llu) must be below 'slice.shards' (%llu)",
                       (unsigned long long)sh, (unsigned long long)n);
            goto fail;
        }
        r->has_slice = 1;
        r->slice_shard = (uint32_t)sh;
        r->slice_shards = (uint32_t)n;
    }
    /* The enum's index is 0-based; PROTO_FMT_AUTO (0) means absent. */
    r->format = has_format ? (format == 0 ? PROTO_FMT_NPY : PROTO_FMT_IDX) : PROTO_FMT_AUTO;
    if (scale) {
        if (get_number(scale, "scale", 0, 1, DBL_MAX, &r->scale, e) != 0) goto fail;
        r->has_scale = 1;
    }
    if (mean && get_channels(mean, "mean", 0, r->mean, &r->nmean, e) != 0) goto fail;
    if (std && get_channels(std, "std", 1, r->std, &r->nstd, e) != 0) goto fail;
    json_decref(root);
    return 0;
fail:
    jspec_free(specs);
    json_decref(root);
    return -1;
}

void proto_free_dataset(proto_dataset_req *r)
{
    free(r->path);
    free(r->labels_path);
    r->path = r->labels_path = NULL;
    proto_free_classes(&r->classes);
}

/* A query-string number: digits, sign, '.', exponent only (strtod alone would
 * take "inf", "nan", hex and leading blanks). */
static int qs_number(const char *s, size_t len, double *out)
{
    if (len == 0 || len > 64) return -1;
    char buf[65];
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (strspn(buf, "0123456789+-.eE") != len) return -1;
    char *end;
    double x = strtod(buf, &end);
    if (end != buf + len) return -1;
    *out = x;
    return 0;
}

static int qs_channels(const char *s, const char *param, int positive, double *out, int *n, proto_err *e)
{
    int count = 0;
    for (const char *p = s;; p++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (count == PROTO_MAX_CHANNELS)
            return proto_fail(e, 422, "invalid_value",
                              "query parameter '%s' must hold 1 to %d comma-separated numbers (one per channel)", param,
                              PROTO_MAX_CHANNELS);
        double x;
        if (qs_number(p, len, &x) != 0)
            return proto_fail(e, 400, "invalid_parameter",
                              "query parameter '%s' must be a number or comma-separated numbers (e.g. 0.5 or "
                              "0.1,0.2,0.3); value %d is not a number",
                              param, count + 1);
        if (!isfinite(x) || (positive && !(x > 0)))
            return proto_fail(e, 422, "invalid_value", "query parameter '%s': value %d must be %s; it is %g", param,
                              count + 1, positive ? "> 0" : "finite", x);
        out[count++] = x;
        if (!end) break;
        p = end;
    }
    *n = count;
    return 0;
}

static int qs_uint(const char *s, uint64_t lo, uint64_t hi, uint64_t *out);

int proto_dataset_slice(proto_dataset_req *r, const char *shard, const char *shards, proto_err *e)
{
    if (!shard && !shards) return 0;
    uint64_t sh, n;
    if (!shard || !shards)
        return proto_fail(e, 400, "missing_field", "query parameters 'shard' and 'shards' go together");
    if (qs_uint(shards, 1, PROTO_MAX_SHARDS, &n) != 0 || qs_uint(shard, 0, n - 1, &sh) != 0)
        return proto_fail(e, 422, "invalid_value", "query parameters 'shard' and 'shards' must be integers with "
                          "0 <= shard < shards <= %d", PROTO_MAX_SHARDS);
    r->has_slice = 1;
    r->slice_shard = (uint32_t)sh;
    r->slice_shards = (uint32_t)n;
    return 0;
}

int proto_dataset_opts(proto_dataset_req *r, const char *scale, const char *mean, const char *std, proto_err *e)
{
    if (scale) {
        double x;
        if (qs_number(scale, strlen(scale), &x) != 0)
            return proto_fail(e, 400, "invalid_parameter", "query parameter 'scale' must be a number (e.g. 0.5)");
        if (!isfinite(x) || !(x > 0))
            return proto_fail(e, 422, "invalid_value", "query parameter 'scale' must be a number > 0; it is %g", x);
        r->scale = x;
        r->has_scale = 1;
    }
    if (mean && qs_channels(mean, "mean", 0, r->mean, &r->nmean, e) != 0) return -1;
    if (std && qs_channels(std, "std", 1, r->std, &r->nstd, e) != 0) return -1;
    return 0;
}

/* ---- indexes ---- */

static int get_layers(const json_t *v, proto_index_req *r, proto_err *e)
{
    if (!json_is_array(v))
        return proto_fail(e, 400, "invalid_type", "field 'layers' must be an array of layer names, not %s",
                          jspec_type_name(v));
    size_t n = json_array_size(v);
    if (n == 0 || n > PROTO_MAX_LAYERS)
        return proto_fail(e, 422, "invalid_value", "field 'layers' must hold 1 to %d layer names; it holds %zu",
                          PROTO_MAX_LAYERS, n);
    for (size_t i = 0; i < n; i++) {
        char field[32];
        snprintf(field, sizeof field, "layers[%zu]", i);
        if (get_layer(json_array_get(v, i), field, r->layers[i], e) != 0) return -1;
        for (size_t j = 0; j < i; j++)
            if (strcmp(r->layers[i], r->layers[j]) == 0)
                return proto_fail(e, 422, "duplicate_layer", "field 'layers[%zu]' repeats 'layers[%zu]' ('%s')", i, j,
                                  r->layers[i]);
    }
    r->nlayers = (int)n;
    return 0;
}

const char *const proto_eager_names[] = {"none", "before", "fit", "all", NULL};

int proto_parse_index(const char *body, size_t len, proto_index_req *r, proto_err *e)
{
    memset(r, 0, sizeof *r);
    static const char *const kinds[] = {"npi", "full", NULL};
    json_t *layer = NULL, *layers = NULL, *budget = NULL;
    uint64_t partitions = 0, job_id = 0;
    const jspec specs[] = {
        {.name = "model", .type = JS_NAME, .required = 1, .dest = r->model},
        {.name = "dataset", .type = JS_NAME, .required = 1, .dest = r->dataset},
        {.name = "layer", .type = JS_JSON, .dest = &layer},
        {.name = "layers", .type = JS_JSON, .dest = &layers},
        {.name = "partitions", .type = JS_UINT, .dest = &partitions, .present = &r->has_partitions, .min = 2,
         .max = 256},
        {.name = "mai_ratio", .type = JS_NUMBER, .dest = &r->mai_ratio, .present = &r->has_mai_ratio, .dmin = 0,
         .dmax = 0.5},
        {.name = "storage_budget", .type = JS_JSON, .dest = &budget},
        {.name = "kind", .type = JS_ENUM, .dest = &r->kind, .choices = kinds},
        {.name = "eager", .type = JS_ENUM, .dest = &r->eager, .present = &r->has_eager, .choices = proto_eager_names},
        {.name = "job_id", .type = JS_UINT, .dest = &job_id, .min = 1, .max = UINT32_MAX - 1},
        {0},
    };
    json_t *root = load_object(body, len, e);
    if (!root) return -1;
    if (jspec_parse(root, specs, e) != 0) goto fail;
    r->job_id = (uint32_t)job_id;
    if (layer && layers) {
        proto_fail(e, 422, "conflicting_fields", "give either 'layer' (one layer) or 'layers' (several), not both");
        goto fail;
    }
    if (!layer && !layers) {
        proto_fail(e, 400, "missing_field", "field 'layer' (one layer name) or 'layers' (an array of them) is required");
        goto fail;
    }
    if (layer) {
        if (get_layer(layer, "layer", r->layers[0], e) != 0) goto fail;
        r->nlayers = 1;
    } else if (get_layers(layers, r, e) != 0) {
        goto fail;
    }
    r->partitions = (uint32_t)partitions;
    if (budget) {
        if (get_number(budget, "storage_budget", 0, 1, 1, &r->storage_budget, e) != 0) goto fail;
        r->has_budget = 1;
    }
    if (r->has_budget && (r->has_partitions || r->has_mai_ratio)) {
        proto_fail(e, 422, "conflicting_fields",
                   "field 'storage_budget' picks 'partitions' and 'mai_ratio' itself; give either the budget or %s",
                   r->has_partitions ? "'partitions'" : "'mai_ratio'");
        goto fail;
    }
    if (r->kind == 1 && (r->has_budget || r->has_partitions || r->has_mai_ratio)) {
        proto_fail(e, 422, "conflicting_fields",
                   "field 'kind' is 'full' (every activation stored): it takes no '%s', which shape a partitioned index",
                   r->has_budget ? "storage_budget" : r->has_partitions ? "partitions" : "mai_ratio");
        goto fail;
    }
    json_decref(root);
    return 0;
fail:
    jspec_free(specs);
    json_decref(root);
    return -1;
}

void proto_free_index(proto_index_req *r)
{
    (void)r; /* nothing allocated: the struct holds everything inline */
}

/* ---- queries ---- */

static int parse_neurons(const json_t *v, proto_neurons *g, proto_err *e)
{
    static const char *mixed = "use one form for the whole group: flat indices or coordinate arrays";
    if (!json_is_array(v))
        return proto_fail(e, 400, "invalid_type",
                          "field 'neurons' must be an array of flat indices or of coordinate arrays, not %s",
                          jspec_type_name(v));
    size_t n = json_array_size(v);
    if (n == 0 || n > PROTO_MAX_GROUP)
        return proto_fail(e, 422, "invalid_value", "field 'neurons' must hold 1 to %d neurons; it holds %zu",
                          PROTO_MAX_GROUP, n);
    const json_t *first = json_array_get(v, 0);
    int rank;
    if (json_is_integer(first)) {
        rank = 0;
    } else if (json_is_array(first)) {
        size_t r0 = json_array_size(first);
        if (r0 == 0 || r0 > PROTO_MAX_DIMS)
            return proto_fail(e, 422, "invalid_value", "field 'neurons[0]' must hold 1 to %d coordinates; it holds %zu",
                              PROTO_MAX_DIMS, r0);
        rank = (int)r0;
    } else {
        return proto_fail(e, 400, "invalid_type",
                          "field 'neurons[0]' must be an integer or an array of integers, not %s", jspec_type_name(first));
    }
    int64_t *out = malloc(n * (size_t)(rank ? rank : 1) * sizeof *out);
    if (!out) return proto_fail(e, 500, "internal", "out of memory");
    /* Owned by g from here on, so the caller's free releases it on any error. */
    g->v = out;
    g->rank = rank;
    for (size_t i = 0; i < n; i++) {
        const json_t *x = json_array_get(v, i);
        if (rank == 0) {
            if (json_is_array(x))
                return proto_fail(e, 422, "invalid_neurons",
                                  "field 'neurons[%zu]' is a coordinate array but 'neurons[0]' is a flat index; %s", i,
                                  mixed);
            if (!json_is_integer(x))
                return proto_fail(e, 400, "invalid_type", "field 'neurons[%zu]' must be an integer, not %s", i,
                                  jspec_type_name(x));
            json_int_t k = json_integer_value(x);
            if (k < 0)
                return proto_fail(e, 422, "invalid_value", "field 'neurons[%zu]' must be >= 0; it is %lld", i,
                                  (long long)k);
            out[i] = (int64_t)k;
            continue;
        }
        if (json_is_integer(x))
            return proto_fail(e, 422, "invalid_neurons",
                              "field 'neurons[%zu]' is a flat index but 'neurons[0]' is a coordinate array; %s", i,
                              mixed);
        if (!json_is_array(x))
            return proto_fail(e, 400, "invalid_type", "field 'neurons[%zu]' must be an array of integers, not %s", i,
                              jspec_type_name(x));
        if (json_array_size(x) != (size_t)rank)
            return proto_fail(e, 422, "invalid_neurons",
                              "field 'neurons[%zu]' has %zu coordinates but 'neurons[0]' has %d; every neuron of a "
                              "group needs the same number",
                              i, json_array_size(x), rank);
        for (int d = 0; d < rank; d++) {
            const json_t *c = json_array_get(x, (size_t)d);
            if (!json_is_integer(c))
                return proto_fail(e, 400, "invalid_type", "field 'neurons[%zu][%d]' must be an integer, not %s", i, d,
                                  jspec_type_name(c));
            json_int_t k = json_integer_value(c);
            if (k < 0)
                return proto_fail(e, 422, "invalid_value", "field 'neurons[%zu][%d]' must be >= 0; it is %lld", i, d,
                                  (long long)k);
            out[i * (size_t)rank + (size_t)d] = (int64_t)k;
        }
    }
    g->n = n;
    return 0;
}

/* An array of 1..max finite float32 numbers into *out (malloc'd). */
static int get_floats(const json_t *v, const char *field, size_t max, float **out, size_t *n, proto_err *e)
{
    if (!json_is_array(v))
        return proto_fail(e, 400, "invalid_type", "field '%s' must be an array of numbers, not %s", field,
                          jspec_type_name(v));
    size_t len = json_array_size(v);
    if (len == 0 || len > max)
        return proto_fail(e, 422, "invalid_value", "field '%s' must hold 1 to %zu numbers; it holds %zu", field, max,
                          len);
    /* Straight to float (the model's type): no transient array of doubles. */
    if (!(*out = malloc(len * sizeof **out))) return proto_fail(e, 500, "internal", "out of memory");
    for (size_t i = 0; i < len; i++) {
        const json_t *x = json_array_get(v, i);
        if (!json_is_number(x))
            return proto_fail(e, 400, "invalid_type", "field '%s[%zu]' must be a number, not %s", field, i,
                              jspec_type_name(x));
        double f = json_number_value(x);
        if (!isfinite(f) || fabs(f) > FLT_MAX)
            return proto_fail(e, 422, "invalid_target", "field '%s[%zu]' is %g, which a 32-bit float cannot hold",
                              field, i, f);
        (*out)[i] = (float)f;
    }
    *n = len;
    return 0;
}

/* kNN "target": an input id, {"tensor":[...]} in the model's input space,
 * or {"activations":[...]}, the group's activations (one per neuron). */
static int parse_target(const json_t *v, proto_query_req *r, proto_err *e)
{
    if (json_is_integer(v)) {
        json_int_t id = json_integer_value(v);
        if (id < 0)
            return proto_fail(e, 422, "target_out_of_range", "field 'target' must be an input id >= 0; it is %lld",
                              (long long)id);
        r->has_target_id = 1;
        r->target_id = (uint64_t)id;
        return 0;
    }
    if (!json_is_object(v))
        return proto_fail(e, 400, "invalid_type",
                          "field 'target' must be an input id (an integer), {\"tensor\": [numbers]} or "
                          "{\"activations\": [numbers]}, not %s",
                          jspec_type_name(v));
    json_t *tensor = NULL, *acts = NULL;
    const jspec specs[] = {
        {.name = "tensor", .type = JS_JSON, .dest = &tensor},
        {.name = "activations", .type = JS_JSON, .dest = &acts},
        {0},
    };
    if (parse_nested(v, specs, "target", e) != 0) return -1;
    if (!tensor && !acts)
        return proto_fail(e, 400, "missing_field",
                          "field 'target' must hold 'tensor' (an input) or 'activations' (a point of the group's "
                          "space)");
    if (tensor && acts)
        return proto_fail(e, 422, "conflicting_fields",
                          "field 'target' holds both 'tensor' and 'activations'; give one");
    if (tensor) return get_floats(tensor, "target.tensor", PROTO_MAX_TENSOR, &r->tensor, &r->ntensor, e);
    return get_floats(acts, "target.activations", PROTO_MAX_GROUP, &r->activations, &r->nactivations, e);
}

/* An array of 1..PROTO_MAX_FILTER integers into *out. */
static int get_int_list(const json_t *v, const char *field, int64_t **out, size_t *n, proto_err *e)
{
    if (!json_is_array(v))
        return proto_fail(e, 400, "invalid_type", "field '%s' must be an array of integers, not %s", field,
                          jspec_type_name(v));
    size_t len = json_array_size(v);
    if (len == 0 || len > PROTO_MAX_FILTER)
        return proto_fail(e, 422, "invalid_value", "field '%s' must hold 1 to %d integers; it holds %zu", field,
                          PROTO_MAX_FILTER, len);
    if (!(*out = malloc(len * sizeof **out))) return proto_fail(e, 500, "internal", "out of memory");
    for (size_t i = 0; i < len; i++) {
        const json_t *x = json_array_get(v, i);
        if (!json_is_integer(x))
            return proto_fail(e, 400, "invalid_type", "field '%s[%zu]' must be an integer, not %s", field, i,
                              jspec_type_name(x));
        (*out)[i] = (int64_t)json_integer_value(x);
    }
    *n = len;
    return 0;
}

/* "filter": {"ids":[...], "labels":[...], "predicted":[...], "misclassified":true}, at least one. */
static int parse_filter(const json_t *v, proto_query_req *r, proto_err *e)
{
    if (!json_is_object(v))
        return proto_fail(e, 400, "invalid_type",
                          "field 'filter' must be an object {\"ids\": [...], \"labels\": [...]}, not %s", jspec_type_name(v));
    jspec_uints ids = {0};
    json_t *labels = NULL, *predicted = NULL;
    const jspec specs[] = {
        {.name = "ids", .type = JS_UINTS, .dest = &ids, .min = 0, .max = INT64_MAX, .maxn = PROTO_MAX_FILTER},
        {.name = "labels", .type = JS_JSON, .dest = &labels},
        {.name = "predicted", .type = JS_JSON, .dest = &predicted},
        {.name = "misclassified", .type = JS_BOOL, .dest = &r->filter_misclassified},
        {0},
    };
    if (parse_nested(v, specs, "filter", e) != 0) goto fail;
    if (!ids.n && !labels && !predicted && !r->filter_misclassified) {
        proto_fail(e, 400, "missing_field",
                   "field 'filter' must hold 'ids', 'labels', 'predicted' or 'misclassified': true");
        goto fail;
    }
    if (predicted && get_int_list(predicted, "filter.predicted", &r->filter_predicted, &r->nfilter_predicted, e) != 0)
        goto fail;
    if (labels) {
        if (!json_is_array(labels)) {
            proto_fail(e, 400, "invalid_type", "field 'filter.labels' must be an array of integers, not %s",
                       jspec_type_name(labels));
            goto fail;
        }
        size_t n = json_array_size(labels);
        if (n == 0 || n > PROTO_MAX_FILTER) {
            proto_fail(e, 422, "invalid_value", "field 'filter.labels' must hold 1 to %d labels; it holds %zu",
                       PROTO_MAX_FILTER, n);
            goto fail;
        }
        if (!(r->filter_labels = malloc(n * sizeof *r->filter_labels))) {
            proto_fail(e, 500, "internal", "out of memory");
            goto fail;
        }
        for (size_t i = 0; i < n; i++) {
            const json_t *x = json_array_get(labels, i);
            if (!json_is_integer(x)) {
                proto_fail(e, 400, "invalid_type", "field 'filter.labels[%zu]' must be an integer, not %s", i,
                           jspec_type_name(x));
                goto fail;
            }
            r->filter_labels[i] = (int64_t)json_integer_value(x);
        }
        r->nfilter_labels = n;
    }
    r->filter_ids = ids.v;
    r->nfilter_ids = ids.n;
    r->has_filter = 1;
    return 0;
fail:
    jspec_free(specs);
    return -1;
}

int proto_parse_query(const char *body, size_t len, int knn, proto_query_req *r, proto_err *e)
{
    memset(r, 0, sizeof *r);
    r->knn = knn ? 1 : 0;
    static const char *const aggs[] = {"sum", "mean", "max", "min", NULL};
    static const char *const metrics[] = {"l2", "l1", "linf", "cosine", NULL};
    static const char *const methods[] = {"auto", "nta", "bounds", "scan", "materialized", NULL};
    json_t *layer = NULL, *neurons = NULL, *target = NULL, *filter = NULL, *timeout = NULL;
    jspec_floats weights = {0};
    uint64_t batch = 0;
    /* One table per endpoint: a top-k "target" or a kNN "agg" is a mistake to
     * report, not a field to ignore. */
    jspec specs[22];
    int n = 0;
    specs[n++] = (jspec){.name = "model", .type = JS_NAME, .required = 1, .dest = r->model};
    specs[n++] = (jspec){.name = "dataset", .type = JS_NAME, .required = 1, .dest = r->dataset};
    specs[n++] = (jspec){.name = "layer", .type = JS_JSON, .required = 1, .dest = &layer};
    specs[n++] = (jspec){.name = "neurons", .type = JS_JSON, .required = 1, .dest = &neurons};
    specs[n++] = (jspec){.name = "k", .type = JS_UINT, .required = 1, .dest = &r->k, .min = 1, .max = PROTO_MAX_K};
    if (knn) {
        specs[n++] = (jspec){.name = "target", .type = JS_JSON, .required = 1, .dest = &target};
        specs[n++] = (jspec){.name = "metric", .type = JS_ENUM, .dest = &r->metric, .choices = metrics};
        specs[n++] = (jspec){.name = "include_target", .type = JS_BOOL, .dest = &r->include_target};
    } else {
        specs[n++] = (jspec){.name = "agg", .type = JS_ENUM, .dest = &r->agg, .choices = aggs};
    }
    specs[n++] = (jspec){.name = "method", .type = JS_ENUM, .dest = &r->method, .choices = methods};
    specs[n++] = (jspec){.name = "weights", .type = JS_FLOATS, .dest = &weights, .dmin = -DBL_MAX, .dmax = DBL_MAX,
                         .maxn = PROTO_MAX_GROUP};
    specs[n++] = (jspec){.name = "filter", .type = JS_JSON, .dest = &filter};
    specs[n++] = (jspec){.name = "batch", .type = JS_UINT, .dest = &batch, .min = 1, .max = PROTO_MAX_BATCH};
    specs[n++] = (jspec){.name = "timeout_s", .type = JS_JSON, .dest = &timeout};
    specs[n++] = (jspec){.name = "eager", .type = JS_ENUM, .dest = &r->eager, .present = &r->has_eager,
                         .choices = proto_eager_names};
    specs[n++] = (jspec){.name = "threshold", .type = JS_NUMBER, .dest = &r->threshold, .present = &r->has_threshold,
                         .dmin = -DBL_MAX, .dmax = DBL_MAX};
    specs[n++] = (jspec){0};

    json_t *root = load_object(body, len, e);
    if (!root) return -1;
    if (jspec_parse(root, specs, e) != 0) goto fail;
    if (get_layer(layer, "layer", r->layer, e) != 0) goto fail;
    if (parse_neurons(neurons, &r->neurons, e) != 0) goto fail;
    if (weights.n) {
        if (weights.n != r->neurons.n) {
            proto_fail(e, 422, "weights_mismatch",
                       "field 'weights' has %zu entries but 'neurons' has %zu; give one weight per neuron", weights.n,
                       r->neurons.n);
            goto fail;
        }
        size_t nz = 0;
        for (size_t i = 0; i < weights.n; i++) nz += weights.v[i] != 0;
        if (!nz) {
            proto_fail(e, 422, "invalid_value", "field 'weights' must not be all zero: every input would score 0");
            goto fail;
        }
        if (!knn && r->agg != AGG_SUM) {
            proto_fail(e, 422, "conflicting_fields",
                       "field 'weights' goes with agg 'sum' (a weighted sum); agg is '%s'", aggs[r->agg]);
            goto fail;
        }
        /* negative weights: a top-k sum ("A high while B low"); distances need >= 0 */
        for (size_t i = 0; knn && i < weights.n; i++)
            if (weights.v[i] < 0) {
                proto_fail(e, 422, "invalid_value",
                           "field 'weights[%zu]' is %g; a kNN distance takes weights >= 0 (negative weights go with "
                           "top-k sums)", i, weights.v[i]);
                goto fail;
            }
        r->weights = weights.v;
        r->nweights = weights.n;
        weights.v = NULL;
        weights.n = 0;
    }
    if (knn && parse_target(target, r, e) != 0) goto fail;
    if (r->nactivations && r->nactivations != r->neurons.n) {
        proto_fail(e, 422, "invalid_target",
                   "field 'target.activations' has %zu values but 'neurons' has %zu; give one per neuron",
                   r->nactivations, r->neurons.n);
        goto fail;
    }
    if (filter && parse_filter(filter, r, e) != 0) goto fail;
    r->batch = (uint32_t)batch;
    if (timeout && get_number(timeout, "timeout_s", 0, 1, PROTO_MAX_TIMEOUT_S, &r->timeout_s, e) != 0) goto fail;
    json_decref(root);
    return 0;
fail:
    jspec_free(specs);
    json_decref(root);
    proto_free_query(r);
    return -1;
}

void proto_free_query(proto_query_req *r)
{
    free(r->neurons.v);
    free(r->weights);
    free(r->filter_ids);
    free(r->filter_labels);
    free(r->filter_predicted);
    r->filter_predicted = NULL;
    r->nfilter_predicted = 0;
    free(r->tensor);
    free(r->activations);
    r->activations = NULL;
    r->nactivations = 0;
    r->neurons.v = NULL;
    r->neurons.n = 0;
    r->weights = NULL;
    r->nweights = 0;
    r->filter_ids = NULL;
    r->nfilter_ids = 0;
    r->filter_labels = NULL;
    r->nfilter_labels = 0;
    r->tensor = NULL;
    r->ntensor = 0;
}

/* ---- neuron groups ---- */

static void shape_str(const int64_t *shape, int ndim, char *buf, size_t n)
{
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < ndim && used < n; d++)
        used += (size_t)snprintf(buf + used, n - used, "%s%lld", d ? "," : "", (long long)shape[d]);
    if (used < n) snprintf(buf + used, n - used, "]");
}

typedef struct { uint32_t flat; size_t pos; } neuron_at;

static int cmp_neuron_at(const void *a, const void *b)
{
    const neuron_at *x = a, *y = b;
    if (x->flat != y->flat) return x->flat < y->flat ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

int proto_neurons_flatten(const proto_neurons *g, const int64_t *shape, int ndim, uint32_t *out, proto_err *e)
{
    char sh[160];
    if (ndim < 0) return proto_fail(e, 500, "internal", "layer has %d dimensions", ndim);
    /* Flat indices are uint32: a layer past 2^32 neurons has no flat index
     * for the rest, so those count as out of range. */
    uint64_t total = 1, cap = (uint64_t)UINT32_MAX + 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] <= 0) return proto_fail(e, 500, "internal", "layer dimension %d has size %lld", d, (long long)shape[d]);
        total = total > cap / (uint64_t)shape[d] ? cap : total * (uint64_t)shape[d];
        if (total > cap) total = cap;
    }
    shape_str(shape, ndim, sh, sizeof sh);
    if (g->rank == 0) {
        for (size_t i = 0; i < g->n; i++) {
            if (g->v[i] < 0 || (uint64_t)g->v[i] >= total)
                return proto_fail(e, 422, "neuron_out_of_range",
                                  "field 'neurons[%zu]' = %lld is out of range: the layer (shape %s) has flat indices "
                                  "0 to %llu",
                                  i, (long long)g->v[i], sh, (unsigned long long)(total - 1));
            out[i] = (uint32_t)g->v[i];
        }
    } else {
        if (g->rank != ndim)
            return proto_fail(e, 422, "neuron_out_of_range",
                              "field 'neurons[0]' has %d coordinates but the layer (shape %s) has %d dimensions",
                              g->rank, sh, ndim);
        for (size_t i = 0; i < g->n; i++) {
            const int64_t *c = g->v + i * (size_t)g->rank;
            uint64_t flat = 0;
            for (int d = 0; d < ndim; d++) {
                if (c[d] < 0 || c[d] >= shape[d])
                    return proto_fail(e, 422, "neuron_out_of_range",
                                      "field 'neurons[%zu][%d]' = %lld is out of range: dimension %d of the layer "
                                      "(shape %s) has size %lld",
                                      i, d, (long long)c[d], d, sh, (long long)shape[d]);
                flat = flat * (uint64_t)shape[d] + (uint64_t)c[d];
            }
            if (flat >= total)
                return proto_fail(e, 422, "neuron_out_of_range",
                                  "field 'neurons[%zu]' is past flat index %llu, the last a layer can address", i,
                                  (unsigned long long)(total - 1));
            out[i] = (uint32_t)flat;
        }
    }
    if (g->n < 2) return 0;
    /* Duplicates: sort (flat, position) pairs, O(n log n) for 64Ki groups. */
    neuron_at *at = malloc(g->n * sizeof *at);
    if (!at) return proto_fail(e, 500, "internal", "out of memory");
    for (size_t i = 0; i < g->n; i++) at[i] = (neuron_at){out[i], i};
    qsort(at, g->n, sizeof *at, cmp_neuron_at);
    /* Report the repeat a left-to-right reading meets first. */
    size_t first = 0, second = SIZE_MAX;
    for (size_t i = 1; i < g->n; i++)
        if (at[i].flat == at[i - 1].flat && at[i].pos < second) {
            second = at[i].pos;
            first = at[i - 1].pos;
        }
    uint32_t flat = second != SIZE_MAX ? out[second] : 0;
    free(at);
    if (second != SIZE_MAX)
        return proto_fail(e, 422, "duplicate_neuron",
                          "field 'neurons[%zu]' repeats 'neurons[%zu]' (flat index %u); list each neuron once", second,
                          first, flat);
    return 0;
}

/* ---- query-string requests ---- */

/* A decimal integer in [lo, hi] from a query string; -1 when it is not. */
static int qs_uint(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    if (!s || !*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 19) return -1;
    unsigned long long v = strtoull(s, NULL, 10);
    if (v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

/* "3,17,42": flat neuron indices into a malloc'd *out (the caller frees it
 * on success and failure alike). */
static int qs_neurons(const char *s, uint64_t **out, size_t *nout, proto_err *e)
{
    size_t n = 1;
    *nout = 0;
    for (const char *p = s; *p; p++) n += *p == ',';
    if (n > PROTO_MAX_GROUP)
        return proto_fail(e, 422, "invalid_value", "query parameter 'neurons' holds more than %d neurons",
                          PROTO_MAX_GROUP);
    if (!(*out = malloc(n * sizeof **out))) return proto_fail(e, 500, "internal", "out of memory");
    const char *p = s;
    for (size_t i = 0; i < n; i++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char buf[24];
        if (len == 0 || len >= sizeof buf)
            return proto_fail(e, 422, "invalid_value", "query parameter 'neurons': entry %zu is not a flat index", i);
        memcpy(buf, p, len);
        buf[len] = 0;
        if (qs_uint(buf, 0, UINT32_MAX, &(*out)[i]) != 0)
            return proto_fail(e, 422, "invalid_value", "query parameter 'neurons': entry %zu is not a flat index", i);
        (*nout)++;
        p = end ? end + 1 : p + len;
    }
    return 0;
}

static int qs_layer(const char *v, const char *param, char *dst, proto_err *e)
{
    size_t ll = strlen(v);
    if (ll == 0 || ll > PROTO_LAYER_MAX)
        return proto_fail(e, 422, "invalid_value", "query parameter '%s' must be 1 to %d bytes long", param,
                          PROTO_LAYER_MAX);
    memcpy(dst, v, ll + 1);
    return 0;
}

static int qs_enum(const char *v, const char *param, const char *const *names, int *out, proto_err *e)
{
    for (int i = 0; names[i]; i++)
        if (strcmp(v, names[i]) == 0) {
            *out = i;
            return 0;
        }
    char list[128] = "";
    for (int i = 0; names[i]; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s'%s'", i ? ", " : "", names[i]);
    return proto_fail(e, 422, "invalid_value", "query parameter '%s' must be one of %s", param, list);
}

/* A query-string number in [lo, hi]. */
static int qs_real(const char *v, const char *param, double lo, double hi, double *out, proto_err *e)
{
    double x;
    if (qs_number(v, strlen(v), &x) != 0 || !isfinite(x))
        return proto_fail(e, 400, "invalid_parameter", "query parameter '%s' must be a number", param);
    if (x < lo || x > hi)
        return proto_fail(e, 422, "invalid_value", "query parameter '%s' must be from %g to %g; it is %g", param, lo,
                          hi, x);
    *out = x;
    return 0;
}

const char *const proto_attr_method_names[] = {"gradient", "gradcam", "channel", NULL};

int proto_parse_attribution(const char *(*arg)(void *ctx, const char *name), void *ctx, proto_attribution_req *r,
                            proto_err *e)
{
    static const char *const aggs[] = {"sum", "mean", "max", "min", NULL};
    memset(r, 0, sizeof *r);
    r->noise = 0.15;
    r->size = 112;
    r->alpha = 0.5;
    const char *model = arg(ctx, "model"), *layer = arg(ctx, "layer"), *neurons = arg(ctx, "neurons");
    const char *v;
    if (!model || !layer || !neurons)
        return proto_fail(e, 400, "missing_field", "query parameters 'model', 'layer' and 'neurons' are required");
    if (!proto_valid_name(model))
        return proto_fail(e, 422, "invalid_name", "query parameter 'model' must be 1 to %d characters of [A-Za-z0-9._-]",
                          PROTO_NAME_MAX);
    memcpy(r->model, model, strlen(model) + 1);
    if (qs_layer(layer, "layer", r->layer, e) != 0 || qs_neurons(neurons, &r->neurons, &r->nneurons, e) != 0)
        goto fail;
    if ((v = arg(ctx, "agg")) && qs_enum(v, "agg", aggs, &r->agg, e) != 0) goto fail;
    if ((v = arg(ctx, "method")) && qs_enum(v, "method", proto_attr_method_names, &r->method, e) != 0) goto fail;
    if ((v = arg(ctx, "weights"))) {
        double *w = malloc(r->nneurons * sizeof *w);
        size_t n = 0;
        if (!w) {
            proto_fail(e, 500, "internal", "out of memory");
            goto fail;
        }
        r->weights = w;
        for (const char *p = v;; n++) {
            const char *end = strchr(p, ',');
            size_t len = end ? (size_t)(end - p) : strlen(p);
            if (n == r->nneurons) {
                proto_fail(e, 422, "weights_mismatch", "query parameter 'weights' has more entries than 'neurons' (%zu)",
                           r->nneurons);
                goto fail;
            }
            if (qs_number(p, len, &w[n]) != 0 || !isfinite(w[n])) {
                proto_fail(e, 400, "invalid_parameter", "query parameter 'weights': entry %zu is not a number", n);
                goto fail;
            }
            if (!end) break;
            p = end + 1;
        }
        if (n + 1 != r->nneurons) {
            proto_fail(e, 422, "weights_mismatch", "query parameter 'weights' has %zu entries but 'neurons' has %zu",
                       n + 1, r->nneurons);
            goto fail;
        }
        if (r->agg != AGG_SUM && r->agg != AGG_MEAN) {
            proto_fail(e, 422, "conflicting_fields", "query parameter 'weights' goes with agg 'sum' or 'mean'");
            goto fail;
        }
    }
    if ((v = arg(ctx, "samples"))) {
        if (qs_uint(v, 0, PROTO_MAX_SAMPLES, &r->samples) != 0) {
            proto_fail(e, 422, "invalid_value", "query parameter 'samples' must be an integer from 0 to %d",
                       PROTO_MAX_SAMPLES);
            goto fail;
        }
    }
    if ((v = arg(ctx, "noise")) && qs_real(v, "noise", 0, 10, &r->noise, e) != 0) goto fail;
    if ((v = arg(ctx, "seed")) && qs_uint(v, 0, UINT64_MAX, &r->seed) != 0) {
        proto_fail(e, 422, "invalid_value", "query parameter 'seed' must be an unsigned integer");
        goto fail;
    }
    if (r->method != ATTR_GRADIENT && (arg(ctx, "samples") || arg(ctx, "noise") || arg(ctx, "seed"))) {
        proto_fail(e, 422, "conflicting_fields", "'samples', 'noise' and 'seed' (SmoothGrad) go with method 'gradient'");
        goto fail;
    }
    if ((v = arg(ctx, "cam_layer"))) {
        if (r->method != ATTR_GRADCAM) {
            proto_fail(e, 422, "conflicting_fields", "query parameter 'cam_layer' goes with method 'gradcam'");
            goto fail;
        }
        if (qs_layer(v, "cam_layer", r->cam_layer, e) != 0) goto fail;
    }
    if ((v = arg(ctx, "size")) && qs_uint(v, 16, 1024, &r->size) != 0) {
        proto_fail(e, 422, "invalid_value", "query parameter 'size' must be an integer from 16 to 1024");
        goto fail;
    }
    if ((v = arg(ctx, "alpha")) && qs_real(v, "alpha", 0, 1, &r->alpha, e) != 0) goto fail;
    return 0;
fail:
    proto_free_attribution(r);
    return -1;
}

void proto_free_attribution(proto_attribution_req *r)
{
    free(r->neurons);
    free(r->weights);
    r->neurons = NULL;
    r->weights = NULL;
    r->nneurons = 0;
}

int proto_parse_activations(const char *model, const char *layer, const char *neurons, const char *top,
                            proto_activations_req *r, proto_err *e)
{
    memset(r, 0, sizeof *r);
    r->top = 10;
    if (!model || !layer)
        return proto_fail(e, 400, "missing_field", "query parameters 'model' and 'layer' are required");
    if (!proto_valid_name(model))
        return proto_fail(e, 422, "invalid_name", "query parameter 'model' must be 1 to %d characters of [A-Za-z0-9._-]",
                          PROTO_NAME_MAX);
    size_t ll = strlen(layer);
    if (ll == 0 || ll > PROTO_LAYER_MAX)
        return proto_fail(e, 422, "invalid_value", "query parameter 'layer' must be 1 to %d bytes long",
                          PROTO_LAYER_MAX);
    memcpy(r->model, model, strlen(model) + 1);
    memcpy(r->layer, layer, ll + 1);
    if (top && neurons)
        return proto_fail(e, 422, "conflicting_fields", "give 'neurons' (those neurons) or 'top' (the most active), "
                          "not both");
    if (top && qs_uint(top, 1, PROTO_MAX_GROUP, &r->top) != 0)
        return proto_fail(e, 422, "invalid_value", "query parameter 'top' must be an integer from 1 to %d",
                          PROTO_MAX_GROUP);
    if (!neurons) return 0;
    return qs_neurons(neurons, &r->neurons, &r->nneurons, e);
}

void proto_free_activations(proto_activations_req *r)
{
    free(r->neurons);
    r->neurons = NULL;
    r->nneurons = 0;
}

int proto_parse_predictions(const char *body, size_t len, proto_predictions_req *r, proto_err *e)
{
    memset(r, 0, sizeof *r);
    json_t *layer = NULL;
    uint64_t job_id = 0;
    const jspec specs[] = {
        {.name = "model", .type = JS_NAME, .required = 1, .dest = r->model},
        {.name = "dataset", .type = JS_NAME, .required = 1, .dest = r->dataset},
        {.name = "layer", .type = JS_JSON, .dest = &layer},
        {.name = "job_id", .type = JS_UINT, .dest = &job_id, .min = 1, .max = UINT32_MAX - 1},
        {0},
    };
    json_t *root = load_object(body, len, e);
    if (!root) return -1;
    int rc = jspec_parse(root, specs, e) == 0 && (!layer || get_layer(layer, "layer", r->layer, e) == 0) ? 0 : -1;
    r->job_id = (uint32_t)job_id;
    json_decref(root);
    return rc;
}

/* An integer of int32 range from a query string. */
static int qs_int32(const char *s, int32_t *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < INT32_MIN || v > INT32_MAX) return -1;
    *out = (int32_t)v;
    return 0;
}

int proto_parse_inputs(const char *offset, const char *limit, const char *label, const char *model,
                       const char *predicted, const char *misclassified, proto_inputs_req *r, proto_err *e)
{
    memset(r, 0, sizeof *r);
    r->limit = 100;
    if (offset && qs_uint(offset, 0, UINT32_MAX, &r->offset) != 0)
        return proto_fail(e, 422, "invalid_value", "query parameter 'offset' must be an integer >= 0");
    if (limit && qs_uint(limit, 1, 1000, &r->limit) != 0)
        return proto_fail(e, 422, "invalid_value", "query parameter 'limit' must be an integer from 1 to 1000");
    if (label) {
        if (qs_int32(label, &r->label) != 0)
            return proto_fail(e, 422, "invalid_value", "query parameter 'label' must be an integer");
        r->has_label = 1;
    }
    if (model) {
        if (!proto_valid_name(model))
            return proto_fail(e, 422, "invalid_name", "query parameter 'model' must be 1 to %d characters of "
                              "[A-Za-z0-9._-]", PROTO_NAME_MAX);
        memcpy(r->model, model, strlen(model) + 1);
    }
    if ((predicted || misclassified) && !model)
        return proto_fail(e, 422, "missing_field", "'predicted' and 'misclassified' need the query parameter 'model'");
    if (predicted) {
        if (qs_int32(predicted, &r->predicted) != 0)
            return proto_fail(e, 422, "invalid_value", "query parameter 'predicted' must be an integer");
        r->has_predicted = 1;
    }
    if (misclassified) {
        if (strcmp(misclassified, "1") && strcmp(misclassified, "true") && strcmp(misclassified, "0") &&
            strcmp(misclassified, "false"))
            return proto_fail(e, 422, "invalid_value", "query parameter 'misclassified' is 1/true or 0/false");
        r->misclassified = !strcmp(misclassified, "1") || !strcmp(misclassified, "true");
    }
    return 0;
}

/* ---- errors ---- */

char *proto_error_body(const proto_err *e)
{
    /* proto_fail keeps messages valid UTF-8, but a proto_err filled by hand
     * may not be: fall back to a lossy copy rather than fail. */
    json_t *code = json_string(e->code), *msg = json_string(e->message);
    if (!code) code = json_string("internal");
    if (!msg) {
        proto_err copy;
        proto_fail(&copy, e->status, e->code, "%s", e->message);
        msg = json_string(copy.message);
    }
    json_t *root = json_pack("{s:{s:o,s:o}}", "error", "code", code, "message", msg);
    if (!root) return NULL;
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
}
