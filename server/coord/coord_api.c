/* coord_api.c -- the coordinator's handlers for the catalog: health,
 * metrics, models, datasets (import by path sliced over the shards, uploads
 * streamed to them, class names) and per-input reads (routed to the input's
 * owner). The rules are in coord.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "coord.h"
#include "coord_api.h"
#include "proto.h"

#define C(r) ((r)->app->coord)

/* ---- replies ---- */

void coord_reply_err(http_req *r, const proto_err *e) { http_reply_err(r, e); }

/* Relays a shard's answer as it is (status, type, bytes). */
static void relay(http_req *r, coord_call *k)
{
    const char *ct = k->resp.content_type[0] ? k->resp.content_type : "application/json";
    http_reply_bytes(r, k->resp.status, ct, k->resp.body, k->resp.len, 1);
    k->resp.body = NULL;
}

int coord_fail(http_req *r, coord_call *calls, int ok_also)
{
    proto_err e;
    if (coord_first_failure(C(r), calls, ok_also, &e) == 0) return 0;
    http_reply_err(r, &e);
    return -1;
}

/* The request's path with its query string, minus `drop` parameters. */
int coord_target(http_req *r, const char *const *drop, char *out, size_t cap)
{
    char qs[1536];
    if (http_query_string(r, drop, qs, sizeof qs) != 0) return -1;
    int n = snprintf(out, cap, "%s%s", r->url, qs);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* ---- health and metrics ---- */

void coord_health(http_req *r)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    coord_calls_set(c, calls, "GET", "/v1/health", NULL, 0);
    for (int i = 0; i < c->n; i++) calls[i].timeout_s = 2.0;
    coord_run(c, calls);
    json_t *arr = json_array();
    int ok = 1;
    for (int i = 0; i < c->n; i++) {
        json_t *js = coord_json(&calls[i]);
        int up = calls[i].reached && calls[i].resp.status == 200 && js &&
                 json_is_string(json_object_get(js, "status")) &&
                 strcmp(json_string_value(json_object_get(js, "status")), "ok") == 0;
        ok &= up;
        json_t *o = json_pack("{s:i,s:s,s:s,s:f}", "shard", i, "url", c->shards[i].url, "state",
                              up ? "ok" : "unavailable", "latency_ms", calls[i].ms);
        if (!calls[i].reached) json_object_set_new(o, "error", json_string(calls[i].err));
        if (js && json_object_get(js, "device")) json_object_set(o, "device", json_object_get(js, "device"));
        json_array_append_new(arr, o);
        json_decref(js);
    }
    coord_calls_free(c, calls);
    /* 200 either way: the coordinator itself is alive; "degraded" says that a
     * request needing a down shard will get 503 shard_unavailable */
    http_reply_json(r, 200, json_pack("{s:s,s:s,s:s,s:o}", "status", ok ? "ok" : "degraded", "version", DE_VERSION,
                                      "role", "coordinator", "shards", arr));
}

void coord_metrics(http_req *r)
{
    app *a = r->app;
    coord *c = a->coord;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) {
        http_reply_error(r, 500, "internal", "out of memory");
        return;
    }
#define M(name, type, help, val)                                                                   \
    fprintf(f, "# HELP deepeverest_" name " " help "\n# TYPE deepeverest_" name " " type "\n"       \
               "deepeverest_" name " %llu\n", (unsigned long long)(val))
    M("http_requests_total", "counter", "HTTP requests answered.", atomic_load(&a->metrics.requests));
    M("http_errors_4xx_total", "counter", "Requests answered 4xx.", atomic_load(&a->metrics.errors_4xx));
    M("http_errors_5xx_total", "counter", "Requests answered 5xx.", atomic_load(&a->metrics.errors_5xx));
    M("http_inflight", "gauge", "Requests being handled.", atomic_load(&a->metrics.inflight));
    M("queries_topk_total", "counter", "Top-k queries answered.", atomic_load(&a->metrics.queries_topk));
    M("queries_knn_total", "counter", "kNN queries answered.", atomic_load(&a->metrics.queries_knn));
#undef M
    static const char *const help[3][3] = {
        {"shard_requests_total", "counter", "Calls to a shard."},
        {"shard_unavailable_total", "counter", "Calls a shard did not answer (refused, timed out)."},
        {"shard_latency_seconds_total", "counter", "Time spent in calls to a shard (divide by the calls)."}};
    for (int m = 0; m < 3; m++) {
        fprintf(f, "# HELP deepeverest_%s %s\n# TYPE deepeverest_%s %s\n", help[m][0], help[m][2], help[m][0],
                help[m][1]);
        for (int i = 0; i < c->n; i++) {
            coord_shard *s = &c->shards[i];
            if (m < 2)
                fprintf(f, "deepeverest_%s{shard=\"%d\",url=\"%s\"} %llu\n", help[m][0], i, s->url,
                        (unsigned long long)atomic_load(m ? &s->failures : &s->requests));
            else
                fprintf(f, "deepeverest_%s{shard=\"%d\",url=\"%s\"} %.6f\n", help[m][0], i, s->url,
                        (double)atomic_load(&s->latency_us) / 1e6);
        }
    }
    fclose(f);
    http_reply_bytes(r, 200, "text/plain; version=0.0.4", buf, len, 1);
}

/* ---- shared shapes of fan-out ---- */

/* Shard 0's answer when every shard answered 2xx, else the first failure. */
void coord_all_same(http_req *r)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    char target[2048];
    if (coord_target(r, NULL, target, sizeof target) != 0) {
        http_reply_error(r, 414, "uri_too_long", "the request's query string is too long");
        return;
    }
    coord_calls_set(c, calls, r->method, target, r->body, r->body ? r->body_len : 0);
    coord_run(c, calls);
    if (coord_fail(r, calls, 0) == 0) relay(r, &calls[0]);
    coord_calls_free(c, calls);
}

/* DELETE of something every shard holds: gone where it was; 404 only when
 * it was nowhere. */
void coord_delete_all(http_req *r)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    coord_calls_set(c, calls, "DELETE", r->url, NULL, 0);
    coord_run(c, calls);
    if (coord_fail(r, calls, 404) == 0) {
        int first = 0;
        for (int i = 0; i < c->n; i++)
            if (calls[i].resp.status != 404) {
                first = i;
                break;
            }
        relay(r, &calls[first]);
    }
    coord_calls_free(c, calls);
}

/* Undoes a creation on the shards where it succeeded (DELETE path). */
void coord_undo(coord *c, coord_call *calls, const char *path)
{
    coord_call undo[COORD_MAX_SHARDS];
    coord_calls_set(c, undo, "DELETE", path, NULL, 0);
    for (int i = 0; i < c->n; i++)
        undo[i].skip = !(calls[i].reached && calls[i].resp.status >= 200 && calls[i].resp.status < 300);
    coord_run(c, undo);
    for (int i = 0; i < c->n; i++)
        if (!undo[i].skip && !(undo[i].reached && undo[i].resp.status < 300))
            log_msg("coordinator: undoing %s on shard %d failed (%s); it stays there until deleted", path, i,
                    undo[i].reached ? "error answer" : undo[i].err);
    coord_calls_free(c, undo);
}

/* A list {"<key>": [...]} from every shard: the entries of shard 0 whose
 * `name` field every shard lists too. Returns the array (new reference) and
 * the parsed answers in js[] (caller decrefs), or NULL after replying. */
static json_t *common_list(http_req *r, coord_call *calls, json_t **js, const char *key, const char *name)
{
    coord *c = C(r);
    coord_calls_set(c, calls, "GET", r->url, NULL, 0);
    coord_run(c, calls);
    if (coord_fail(r, calls, 0) != 0) return NULL;
    for (int i = 0; i < c->n; i++) {
        js[i] = coord_json(&calls[i]);
        if (!js[i] || !json_is_array(json_object_get(js[i], key))) {
            http_reply_error(r, 502, "bad_shard_answer", "shard %d answered %s without '%s'", i, r->url, key);
            return NULL;
        }
    }
    json_t *out = json_array();
    size_t k;
    json_t *o;
    json_array_foreach(json_object_get(js[0], key), k, o) {
        const char *nm = json_string_value(json_object_get(o, name));
        int everywhere = nm != NULL;
        for (int i = 1; i < c->n && everywhere; i++) {
            int found = 0;
            size_t j;
            json_t *x;
            json_array_foreach(json_object_get(js[i], key), j, x) {
                const char *xn = json_string_value(json_object_get(x, name));
                found |= xn && strcmp(xn, nm) == 0;
            }
            everywhere = found;
        }
        if (everywhere) json_array_append(out, o);
    }
    return out;
}

/* ---- models ---- */

void coord_model_create(http_req *r)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    proto_model_req q;
    proto_err e;
    if (proto_parse_model(r->body, r->body_len, &q, &e) != 0) { /* the shards would say the same */
        http_reply_err(r, &e);
        return;
    }
    coord_calls_set(c, calls, "POST", "/v1/models", r->body, r->body_len);
    coord_run(c, calls);
    if (coord_first_failure(c, calls, 0, &e) != 0) {
        char path[256];
        snprintf(path, sizeof path, "/v1/models/%s", q.name);
        /* a name taken on a shard stays as it was there */
        for (int i = 0; i < c->n; i++)
            if (calls[i].resp.status == 409) calls[i].reached = 0;
        coord_undo(c, calls, path);
        http_reply_err(r, &e);
    } else {
        relay(r, &calls[0]);
    }
    proto_free_model(&q);
    coord_calls_free(c, calls);
}

void coord_model_list(http_req *r)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    json_t *js[COORD_MAX_SHARDS] = {0};
    json_t *list = common_list(r, calls, js, "models", "name");
    if (list) http_reply_json(r, 200, json_pack("{s:o}", "models", list));
    for (int i = 0; i < c->n; i++) json_decref(js[i]);
    coord_calls_free(c, calls);
}

/* ---- datasets ---- */

int coord_layout_of(coord *c, coord_call *calls, coord_layout *L, json_t **first, proto_err *e)
{
    memset(L, 0, sizeof *L);
    if (coord_first_failure(c, calls, 0, e) != 0) return -1;
    uint64_t next = 0;
    for (int i = 0; i < c->n; i++) {
        json_t *js = coord_json(&calls[i]);
        json_t *cnt = js ? json_object_get(js, "count") : NULL;
        if (!json_is_integer(cnt)) {
            json_decref(js);
            return proto_fail(e, 502, "bad_shard_answer", "shard %d answered without a dataset record", i);
        }
        json_t *fj = json_object_get(js, "first"), *tj = json_object_get(js, "total");
        uint64_t f0 = json_is_integer(fj) ? (uint64_t)json_integer_value(fj) : 0;
        uint64_t n = (uint64_t)json_integer_value(cnt);
        uint64_t total = json_is_integer(tj) ? (uint64_t)json_integer_value(tj) : n;
        if (f0 != next || (i && total != L->total)) {
            json_decref(js);
            return proto_fail(e, 409, "inconsistent_shards",
                              "the shards do not hold one dataset in slices of it (shard %d starts at %llu, not "
                              "%llu): import it through this coordinator",
                              i, (unsigned long long)f0, (unsigned long long)next);
        }
        L->first[i] = f0;
        L->count[i] = n;
        L->total = total;
        next = f0 + n;
        if (i == 0 && first) *first = js;
        else json_decref(js);
    }
    if (next != L->total) {
        if (first) json_decref(*first);
        return proto_fail(e, 409, "inconsistent_shards", "the shards hold %llu of the dataset's %llu inputs",
                          (unsigned long long)next, (unsigned long long)L->total);
    }
    return 0;
}

int coord_dataset_layout(http_req *r, const char *dataset, coord_layout *L, json_t **record, proto_err *e)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    char path[256];
    snprintf(path, sizeof path, "/v1/datasets/%s", dataset);
    coord_calls_set(c, calls, "GET", path, NULL, 0);
    coord_run(c, calls);
    int rc = coord_layout_of(c, calls, L, record, e);
    coord_calls_free(c, calls);
    return rc;
}

int coord_owner(const coord *c, const coord_layout *L, uint64_t id)
{
    for (int i = 0; i < c->n; i++)
        if (id >= L->first[i] && id < L->first[i] + L->count[i]) return i;
    return -1;
}

/* A shard's dataset record as the whole dataset. */
static json_t *whole_dataset(json_t *rec, const coord_layout *L)
{
    json_object_set_new(rec, "count", json_integer((json_int_t)L->total));
    json_object_del(rec, "first");
    json_object_del(rec, "total");
    return rec;
}

void coord_dataset_create(http_req *r)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    proto_dataset_req q;
    proto_err e;
    if (proto_parse_dataset(r->body, r->body_len, &q, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    if (q.has_slice) {
        proto_free_dataset(&q);
        http_reply_error(r, 422, "invalid_value", "field 'slice' is the coordinator's to set");
        return;
    }
    json_t *body = json_loadb(r->body, r->body_len, 0, NULL);
    coord_calls_set(c, calls, "POST", "/v1/datasets", NULL, 0);
    for (int i = 0; i < c->n; i++) {
        json_object_set_new(body, "slice", json_pack("{s:i,s:i}", "shard", i, "shards", c->n));
        calls[i].owned = json_dumps(body, JSON_COMPACT);
        calls[i].body = calls[i].owned;
        calls[i].len = calls[i].owned ? strlen(calls[i].owned) : 0;
    }
    json_decref(body);
    coord_run(c, calls);
    char path[256];
    snprintf(path, sizeof path, "/v1/datasets/%s", q.name);
    coord_layout L;
    json_t *rec = NULL;
    if (coord_layout_of(c, calls, &L, &rec, &e) != 0) {
        for (int i = 0; i < c->n; i++)
            if (calls[i].resp.status == 409) calls[i].reached = 0; /* theirs before: left alone */
        coord_undo(c, calls, path);
        http_reply_err(r, &e);
    } else {
        http_reply_json(r, 201, whole_dataset(rec, &L));
    }
    proto_free_dataset(&q);
    coord_calls_free(c, calls);
}

void coord_dataset_list(http_req *r)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    json_t *js[COORD_MAX_SHARDS] = {0};
    json_t *list = common_list(r, calls, js, "datasets", "name");
    if (list) {
        /* each as the whole: counts summed over the shards */
        size_t k;
        json_t *o;
        json_array_foreach(list, k, o) {
            const char *nm = json_string_value(json_object_get(o, "name"));
            uint64_t sum = 0;
            for (int i = 0; i < c->n; i++) {
                size_t j;
                json_t *x;
                json_array_foreach(json_object_get(js[i], "datasets"), j, x) {
                    const char *xn = json_string_value(json_object_get(x, "name"));
                    if (xn && strcmp(xn, nm) == 0) sum += (uint64_t)json_integer_value(json_object_get(x, "count"));
                }
            }
            json_t *copy = json_deep_copy(o);
            json_object_set_new(copy, "count", json_integer((json_int_t)sum));
            json_object_del(copy, "first");
            json_object_del(copy, "total");
            json_array_set_new(list, k, copy);
        }
        http_reply_json(r, 200, json_pack("{s:o}", "datasets", list));
    }
    for (int i = 0; i < c->n; i++) json_decref(js[i]);
    coord_calls_free(c, calls);
}

void coord_dataset_get(http_req *r)
{
    coord_layout L;
    json_t *rec = NULL;
    proto_err e;
    if (coord_dataset_layout(r, r->params[0], &L, &rec, &e) != 0)
        http_reply_err(r, &e);
    else
        http_reply_json(r, 200, whole_dataset(rec, &L));
}

/* PUT /v1/datasets/{name}/classes: on every shard, then the whole record. */
void coord_dataset_classes(http_req *r)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    coord_calls_set(c, calls, "PUT", r->url, r->body, r->body_len);
    coord_run(c, calls);
    if (coord_fail(r, calls, 0) == 0) coord_dataset_get(r);
    coord_calls_free(c, calls);
}

/* PUT /v1/datasets/{name} (a raw body): streamed to every shard as it comes,
 * each keeping its slice (shard=&shards=); compressed bodies cannot be cut
 * by rows without decompressing them, and each shard parses the stream
 * anyway. */
typedef struct upload_state {
    client_stream *s[COORD_MAX_SHARDS];
    char err[256];
    int failed_shard;            /* -1 none */
    int opened;
} upload_state;

int coord_upload_chunk(http_req *r, const char *data, size_t len)
{
    coord *c = C(r);
    upload_state *u = r->stream;
    if (!u) {
        if (!(u = calloc(1, sizeof *u))) return -1;
        r->stream = u;
        u->failed_shard = -1;
        static const char *const drop[] = {"shard", "shards", NULL};
        char qs[1536], auth[600];
        http_query_string(r, drop, qs, sizeof qs);
        const char *headers[3] = {"Content-Type: application/octet-stream", NULL, NULL};
        if (c->token) {
            snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
            headers[1] = auth;
        }
        for (int i = 0; i < c->n; i++) {
            char target[2048];
            snprintf(target, sizeof target, "%s%s%cshard=%d&shards=%d", r->url, qs, qs[0] ? '&' : '?', i, c->n);
            if (client_stream_open(c->shards[i].url, "PUT", target, headers, c->timeout_s, &u->s[i], u->err,
                                   sizeof u->err) != 0) {
                u->failed_shard = i;
                return -1;
            }
        }
        u->opened = 1;
    }
    if (u->failed_shard >= 0) return -1;
    for (int i = 0; i < c->n; i++)
        if (client_stream_write(u->s[i], data, len, u->err, sizeof u->err) != 0) {
            u->failed_shard = i;
            return -1;
        }
    return 0;
}

void coord_upload(http_req *r)
{
    coord *c = C(r);
    upload_state *u = r->stream;
    coord_call calls[COORD_MAX_SHARDS];
    proto_err e;
    if (!u) {
        http_reply_error(r, 400, "empty_body", "PUT /v1/datasets/{name} needs a .npy body");
        return;
    }
    coord_calls_set(c, calls, "PUT", r->url, NULL, 0);
    if (u->failed_shard >= 0) { /* what a shard answered, when it did (e.g. a 422 of its parse) */
        for (int i = 0; i < c->n; i++) {
            if (u->s[i] && client_stream_finish(u->s[i], &calls[i].resp, calls[i].err, sizeof calls[i].err) == 0)
                calls[i].reached = 1;
            u->s[i] = NULL;
        }
        if (!calls[u->failed_shard].reached) snprintf(calls[u->failed_shard].err, sizeof calls[0].err, "%s", u->err);
    } else {
        for (int i = 0; i < c->n; i++) {
            calls[i].reached = client_stream_finish(u->s[i], &calls[i].resp, calls[i].err, sizeof calls[i].err) == 0;
            u->s[i] = NULL;
        }
    }
    coord_layout L;
    json_t *rec = NULL;
    if (coord_layout_of(c, calls, &L, &rec, &e) != 0) {
        for (int i = 0; i < c->n; i++)
            if (calls[i].resp.status == 409) calls[i].reached = 0;
        coord_undo(c, calls, r->url);
        http_reply_err(r, &e);
    } else {
        http_reply_json(r, 201, whole_dataset(rec, &L));
    }
    coord_calls_free(c, calls);
}

void coord_upload_cleanup(http_req *r)
{
    upload_state *u = r->stream;
    if (!u) return;
    for (int i = 0; i < COORD_MAX_SHARDS; i++) client_stream_abort(u->s[i]);
    free(u);
    r->stream = NULL;
}

/* ---- inputs ---- */

/* GET /v1/datasets/{ds}/inputs: the page of the whole dataset, in id order:
 * each shard's total of matches first, then the pieces of the page. */
void coord_input_list(http_req *r)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    proto_inputs_req q;
    proto_err e;
    if (proto_parse_inputs(http_arg(r, "offset"), http_arg(r, "limit"), http_arg(r, "label"), http_arg(r, "model"),
                           http_arg(r, "predicted"), http_arg(r, "misclassified"), &q, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    static const char *const drop[] = {"offset", "limit", "format", NULL};
    char qs[1536], target[2048];
    if (http_query_string(r, drop, qs, sizeof qs) != 0) {
        http_reply_error(r, 414, "uri_too_long", "the request's query string is too long");
        return;
    }
    char sep = qs[0] ? '&' : '?';
    snprintf(target, sizeof target, "%s%s%climit=1", r->url, qs, sep);
    coord_calls_set(c, calls, "GET", target, NULL, 0);
    coord_run(c, calls);
    uint64_t totals[COORD_MAX_SHARDS], sum = 0;
    if (coord_fail(r, calls, 0) != 0) goto done;
    for (int i = 0; i < c->n; i++) {
        json_t *js = coord_json(&calls[i]);
        totals[i] = js ? (uint64_t)json_integer_value(json_object_get(js, "total")) : 0;
        sum += totals[i];
        json_decref(js);
    }
    coord_calls_free(c, calls);
    /* the page [offset, offset+limit) of the concatenation */
    coord_calls_set(c, calls, "GET", "", NULL, 0);
    uint64_t base = 0;
    for (int i = 0; i < c->n; i++) {
        uint64_t lo = q.offset > base ? q.offset - base : 0, end = q.offset + q.limit;
        uint64_t hi = end > base ? end - base : 0;
        if (hi > totals[i]) hi = totals[i];
        calls[i].skip = lo >= hi;
        if (!calls[i].skip)
            snprintf(calls[i].target, sizeof calls[i].target, "%s%s%coffset=%llu&limit=%llu", r->url, qs, sep,
                     (unsigned long long)lo, (unsigned long long)(hi - lo));
        base += totals[i];
    }
    coord_run(c, calls);
    if (coord_fail(r, calls, 0) != 0) goto done;
    json_t *arr = json_array();
    for (int i = 0; i < c->n; i++) {
        if (calls[i].skip) continue;
        json_t *js = coord_json(&calls[i]);
        json_array_extend(arr, json_object_get(js, "inputs"));
        json_decref(js);
    }
    if (api_wants_csv(r)) {
        api_reply_csv(r, arr, "id");
    } else {
        json_t *o = json_pack("{s:I,s:I,s:I,s:o}", "total", (json_int_t)sum, "offset", (json_int_t)q.offset, "limit",
                              (json_int_t)q.limit, "inputs", arr);
        if (q.model[0]) json_object_set_new(o, "model", json_string(q.model));
        http_reply_json(r, 200, o);
    }
done:
    coord_calls_free(c, calls);
}

/* GET /v1/datasets/{ds}/inputs/{id}[/...]: to the shard that holds it. */
void coord_input_forward(http_req *r)
{
    coord *c = C(r);
    coord_layout L;
    proto_err e;
    if (coord_dataset_layout(r, r->params[0], &L, NULL, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    char *end;
    unsigned long long id = strtoull(r->params[1], &end, 10);
    int owner = *r->params[1] && !*end && r->params[1][0] != '-' ? coord_owner(c, &L, id) : -1;
    if (owner < 0) {
        http_reply_error(r, 404, "not_found", "input '%s' does not exist (valid: 0..%llu)", r->params[1],
                         (unsigned long long)(L.total ? L.total - 1 : 0));
        return;
    }
    coord_call calls[COORD_MAX_SHARDS];
    char target[2048];
    if (coord_target(r, NULL, target, sizeof target) != 0) {
        http_reply_error(r, 414, "uri_too_long", "the request's query string is too long");
        return;
    }
    coord_calls_set(c, calls, "GET", target, NULL, 0);
    for (int i = 0; i < c->n; i++) calls[i].skip = i != owner;
    coord_run(c, calls);
    if (coord_fail(r, calls, 0) == 0) relay(r, &calls[owner]);
    coord_calls_free(c, calls);
}
