/* coord_query.c -- the coordinator's handlers for indexes, jobs,
 * predictions and queries (coord.h has the rules). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "coord.h"
#include "coord_api.h"
#include "proto.h"

#define C(r) ((r)->app->coord)
#define JOB_ATTEMPTS 5

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static const char *str(const json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static json_int_t num(const json_t *o, const char *k) { return json_integer_value(json_object_get(o, k)); }

static void sum_int(json_t *into, const json_t *from, const char *k)
{
    json_object_set_new(into, k, json_integer(num(into, k) + num(from, k)));
}

/* Parses every answer; NULL entries where a shard gave none. */
static void parse_all(coord *c, coord_call *calls, json_t **js)
{
    for (int i = 0; i < c->n; i++) js[i] = calls[i].skip ? NULL : coord_json(&calls[i]);
}

static void free_all(coord *c, json_t **js)
{
    for (int i = 0; i < c->n; i++) {
        json_decref(js[i]);
        js[i] = NULL;
    }
}

/* ---- jobs ---- */

/* One job over the shards: progress summed, the state of the slowest. */
static json_t *merge_jobs(coord *c, json_t **per)
{
    json_t *o = NULL;
    int any_failed = 0, all_done = 1, any_running = 0, all_queued = 1, cancelled = 0, eta_unknown = 0;
    double eta = 0;
    json_int_t done = 0, total = 0, started = 0, finished = 0;
    const char *error = NULL;
    for (int i = 0; i < c->n; i++) {
        json_t *j = per[i];
        if (!j) continue;
        if (!o) o = json_deep_copy(j);
        const char *st = str(j, "state");
        any_failed |= !strcmp(st, "failed");
        all_done &= !strcmp(st, "done");
        any_running |= !strcmp(st, "running");
        all_queued &= !strcmp(st, "queued");
        if (!strcmp(st, "failed") && !error) error = str(j, "error");
        cancelled |= json_is_true(json_object_get(j, "cancelled"));
        done += num(j, "done");
        total += num(j, "total");
        json_t *e = json_object_get(j, "eta_s");
        if (json_is_number(e)) eta = json_number_value(e) > eta ? json_number_value(e) : eta;
        else eta_unknown = 1;
        if (num(j, "started") && (!started || num(j, "started") < started)) started = num(j, "started");
        if (num(j, "finished") > finished) finished = num(j, "finished");
    }
    if (!o) return NULL;
    const char *state = any_failed ? "failed" : all_done ? "done" : all_queued ? "queued" : "running";
    (void)any_running;
    json_object_set_new(o, "state", json_string(state));
    json_object_set_new(o, "done", json_integer(done));
    json_object_set_new(o, "total", json_integer(total));
    json_object_set_new(o, "started", json_integer(started));
    json_object_set_new(o, "finished", json_integer(!strcmp(state, "done") || any_failed ? finished : 0));
    json_object_set_new(o, "eta_s", eta_unknown && strcmp(state, "done") ? json_null() : json_real(eta));
    if (any_failed) json_object_set_new(o, "error", json_string(error ? error : "a shard's part failed"));
    else json_object_del(o, "error");
    if (cancelled) json_object_set_new(o, "cancelled", json_true());
    return o;
}

void coord_job_list(http_req *r)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    json_t *js[COORD_MAX_SHARDS] = {0};
    coord_calls_set(c, calls, "GET", "/v1/jobs", NULL, 0);
    coord_run(c, calls);
    if (coord_fail(r, calls, 0) != 0) goto done;
    parse_all(c, calls, js);
    /* ids are the same job on every shard (coord.h): group by id, in order */
    json_t *ids = json_object(), *out = json_array();
    json_int_t next = 0;
    for (int i = 0; i < c->n; i++) {
        if (num(js[i], "next_id") > next) next = num(js[i], "next_id");
        size_t k;
        json_t *j;
        json_array_foreach(json_object_get(js[i], "jobs"), k, j) {
            char key[24];
            snprintf(key, sizeof key, "%lld", (long long)num(j, "id"));
            json_t *slot = json_object_get(ids, key);
            if (!slot) {
                slot = json_array();
                for (int s = 0; s < c->n; s++) json_array_append_new(slot, json_null());
                json_object_set_new(ids, key, slot);
            }
            json_array_set(slot, (size_t)i, j);
        }
    }
    /* in the order of the shards' listings (shard by shard, new ids appended) */
    json_t *seen = json_object();
    for (int i = 0; i < c->n; i++) {
        size_t k;
        json_t *j;
        json_array_foreach(json_object_get(js[i], "jobs"), k, j) {
            char key[24];
            snprintf(key, sizeof key, "%lld", (long long)num(j, "id"));
            if (json_object_get(seen, key)) continue;
            json_object_set_new(seen, key, json_true());
            json_t *slot = json_object_get(ids, key), *per[COORD_MAX_SHARDS];
            for (int s = 0; s < c->n; s++) {
                json_t *x = json_array_get(slot, (size_t)s);
                per[s] = json_is_null(x) ? NULL : x;
            }
            json_t *m = merge_jobs(c, per);
            if (m) json_array_append_new(out, m);
        }
    }
    json_decref(seen);
    json_decref(ids);
    http_reply_json(r, 200, json_pack("{s:o,s:I}", "jobs", out, "next_id", next));
done:
    free_all(c, js);
    coord_calls_free(c, calls);
}

/* GET or DELETE /v1/jobs/{id} on every shard: 404 only when no shard has it. */
static void job_each(http_req *r, const char *method)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    json_t *js[COORD_MAX_SHARDS] = {0};
    coord_calls_set(c, calls, method, r->url, NULL, 0);
    coord_run(c, calls);
    if (coord_fail(r, calls, 404) != 0) goto done;
    parse_all(c, calls, js);
    for (int i = 0; i < c->n; i++)
        if (calls[i].resp.status == 404) {
            json_decref(js[i]);
            js[i] = NULL;
        }
    json_t *m = merge_jobs(c, js);
    if (m)
        http_reply_json(r, 200, m);
    else
        http_reply_error(r, 404, "unknown_job", "job %s does not exist", r->params[0]);
done:
    free_all(c, js);
    coord_calls_free(c, calls);
}

void coord_job_get(http_req *r) { job_each(r, "GET"); }
void coord_job_delete(http_req *r) { job_each(r, "DELETE"); }

/* A job id above every shard's next one. */
static int pick_job_id(coord *c, uint32_t *out, proto_err *e)
{
    coord_call calls[COORD_MAX_SHARDS];
    coord_calls_set(c, calls, "GET", "/v1/jobs", NULL, 0);
    coord_run(c, calls);
    int rc = coord_first_failure(c, calls, 0, e);
    json_int_t next = 1;
    for (int i = 0; i < c->n && rc == 0; i++) {
        json_t *js = coord_json(&calls[i]);
        if (num(js, "next_id") > next) next = num(js, "next_id");
        json_decref(js);
    }
    coord_calls_free(c, calls);
    *out = (uint32_t)next;
    return rc;
}

/* POST of a job-making request (indexes, predictions) with one job id on
 * every shard; a shard that took the id already (another coordinator) makes
 * it try the next; a failure cancels the job where it started. On success
 * replies shard 0's answer with the job id and 202 when any shard started. */
static void submit_job(http_req *r, const char *path)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    proto_err e;
    json_t *body = json_loadb(r->body ? r->body : "", r->body_len, 0, NULL);
    if (!json_is_object(body)) { /* a shard's own parse says what is wrong */
        json_decref(body);
        coord_all_same(r);
        return;
    }
    for (int attempt = 0; attempt < JOB_ATTEMPTS; attempt++) {
        uint32_t id;
        if (pick_job_id(c, &id, &e) != 0) break;
        json_object_set_new(body, "job_id", json_integer(id));
        char *text = json_dumps(body, JSON_COMPACT);
        coord_calls_set(c, calls, "POST", path, text, text ? strlen(text) : 0);
        coord_run(c, calls);
        int taken = 0;
        for (int i = 0; i < c->n; i++) {
            json_t *js = coord_json(&calls[i]);
            json_t *er = js ? json_object_get(js, "error") : NULL;
            taken |= calls[i].resp.status == 409 && er && !strcmp(str(er, "code"), "job_id_taken");
            json_decref(js);
        }
        int failed = coord_first_failure(c, calls, 0, &e) != 0;
        if (taken || failed) {
            char jp[64];
            snprintf(jp, sizeof jp, "/v1/jobs/%u", id);
            for (int i = 0; i < c->n; i++)
                if (calls[i].resp.status != 202) calls[i].reached = 0; /* started nothing there */
            coord_undo(c, calls, jp);
            coord_calls_free(c, calls);
            free(text);
            if (taken) continue;
            json_decref(body);
            http_reply_err(r, &e);
            return;
        }
        int started = 0;
        for (int i = 0; i < c->n; i++) started |= calls[i].resp.status == 202;
        json_t *ans = coord_json(&calls[0]);
        if (ans && started) json_object_set_new(ans, "job", json_integer(id));
        if (ans && json_object_get(ans, "state") && started && !strcmp(str(ans, "state"), "ready"))
            json_object_set_new(ans, "state", json_string("computing")); /* predictions: not done everywhere */
        if (ans && started) json_object_set_new(ans, "reused", json_false());
        coord_calls_free(c, calls);
        free(text);
        json_decref(body);
        if (!ans) {
            http_reply_error(r, 502, "bad_shard_answer", "shard 0 answered %s without JSON", path);
            return;
        }
        http_reply_json(r, started ? 202 : 200, ans);
        return;
    }
    json_decref(body);
    if (!e.status) proto_fail(&e, 503, "job_id_contended", "could not agree on a job id with the shards");
    http_reply_err(r, &e);
}

/* ---- indexes ---- */

/* The shard-i index matching shard 0's ix: same model, dataset, layer and
 * kind; of those the same job (one build over the shards), else the same
 * state, else the newest. */
static json_t *match_index(json_t *list, const json_t *ix)
{
    json_t *best = NULL;
    int best_rank = -1;
    size_t k;
    json_t *o;
    json_array_foreach(list, k, o) {
        if (strcmp(str(o, "model"), str(ix, "model")) || strcmp(str(o, "dataset"), str(ix, "dataset")) ||
            strcmp(str(o, "layer"), str(ix, "layer")) || strcmp(str(o, "kind"), str(ix, "kind")))
            continue;
        int rank = (num(o, "job") == num(ix, "job")) * 4 + !strcmp(str(o, "state"), str(ix, "state")) * 2;
        if (rank > best_rank || (rank == best_rank && num(o, "id") > num(best, "id"))) {
            best = o;
            best_rank = rank;
        }
    }
    return best;
}

typedef struct index_set {
    json_t *lists[COORD_MAX_SHARDS]; /* each shard's GET /v1/indexes "indexes" (borrowed from js) */
    json_t *js[COORD_MAX_SHARDS];
} index_set;

static int load_indexes(http_req *r, index_set *s)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    memset(s, 0, sizeof *s);
    coord_calls_set(c, calls, "GET", "/v1/indexes", NULL, 0);
    coord_run(c, calls);
    int rc = coord_fail(r, calls, 0);
    if (rc == 0) {
        parse_all(c, calls, s->js);
        for (int i = 0; i < c->n; i++) {
            s->lists[i] = json_object_get(s->js[i], "indexes");
            if (!json_is_array(s->lists[i])) {
                http_reply_error(r, 502, "bad_shard_answer", "shard %d answered GET /v1/indexes without indexes", i);
                rc = -1;
                break;
            }
        }
    }
    coord_calls_free(c, calls);
    return rc;
}

/* Shard 0's index ix with its match on every shard in per[], or -1. */
static int resolve(coord *c, index_set *s, const json_t *ix, json_t **per)
{
    per[0] = (json_t *)ix;
    for (int i = 1; i < c->n; i++)
        if (!(per[i] = match_index(s->lists[i], ix))) return -1;
    return 0;
}

static json_t *merge_index(coord *c, json_t **per)
{
    json_t *o = json_deep_copy(per[0]);
    int ready = 1, failed = 0;
    double build_s = 0;
    json_int_t count = 0, bytes = 0, full = 0;
    for (int i = 0; i < c->n; i++) {
        ready &= !strcmp(str(per[i], "state"), "ready");
        failed |= !strcmp(str(per[i], "state"), "failed");
        count += num(per[i], "count");
        bytes += num(per[i], "bytes");
        full += num(per[i], "full_materialization_bytes");
        double b = json_number_value(json_object_get(per[i], "build_s"));
        build_s = b > build_s ? b : build_s;
    }
    json_object_set_new(o, "state", json_string(failed ? "failed" : ready ? "ready" : "building"));
    json_object_set_new(o, "count", json_integer(count));
    json_object_set_new(o, "bytes", json_integer(bytes));
    json_object_set_new(o, "full_materialization_bytes", json_integer(full));
    json_object_set_new(o, "ratio", json_real(full ? (double)bytes / (double)full : 0.0));
    json_object_set_new(o, "build_s", json_real(build_s));
    json_object_del(o, "digest"); /* one per shard's slice; none for the whole */
    if (!failed) json_object_del(o, "error");
    return o;
}

void coord_index_create(http_req *r) { submit_job(r, "/v1/indexes"); }

void coord_index_list(http_req *r)
{
    coord *c = C(r);
    index_set s;
    if (load_indexes(r, &s) != 0) goto done;
    json_t *out = json_array();
    size_t k;
    json_t *ix;
    json_array_foreach(s.lists[0], k, ix) {
        json_t *per[COORD_MAX_SHARDS];
        if (resolve(c, &s, ix, per) == 0) json_array_append_new(out, merge_index(c, per));
    }
    http_reply_json(r, 200, json_pack("{s:o}", "indexes", out));
done:
    free_all(c, s.js);
}

/* Shard 0's index params[0] and its matches, or a reply. */
static int find_index(http_req *r, index_set *s, json_t **per)
{
    coord *c = C(r);
    if (load_indexes(r, s) != 0) return -1;
    char *end;
    long long id = strtoll(r->params[0], &end, 10);
    size_t k;
    json_t *ix;
    json_array_foreach(s->lists[0], k, ix) {
        if (*end || num(ix, "id") != id) continue;
        if (resolve(c, s, ix, per) == 0) return 0;
        break;
    }
    http_reply_error(r, 404, "unknown_index", "index %s does not exist", r->params[0]);
    return -1;
}

void coord_index_get(http_req *r)
{
    coord *c = C(r);
    index_set s;
    json_t *per[COORD_MAX_SHARDS];
    if (find_index(r, &s, per) == 0) http_reply_json(r, 200, merge_index(c, per));
    free_all(c, s.js);
}

void coord_index_delete(http_req *r)
{
    coord *c = C(r);
    index_set s;
    json_t *per[COORD_MAX_SHARDS];
    coord_call calls[COORD_MAX_SHARDS];
    if (find_index(r, &s, per) != 0) {
        free_all(c, s.js);
        return;
    }
    coord_calls_set(c, calls, "DELETE", "", NULL, 0);
    for (int i = 0; i < c->n; i++) snprintf(calls[i].target, sizeof calls[i].target, "/v1/indexes/%lld",
                                            (long long)num(per[i], "id"));
    coord_run(c, calls);
    if (coord_fail(r, calls, 404) == 0) {
        json_t *ans = coord_json(&calls[0]);
        if (ans) json_object_set_new(ans, "id", json_integer(num(per[0], "id")));
        if (ans) http_reply_json(r, 200, ans);
        else http_reply_error(r, 502, "bad_shard_answer", "shard 0 answered the DELETE without JSON");
    }
    coord_calls_free(c, calls);
    free_all(c, s.js);
}

static int by_value_desc(const void *a, const void *b)
{
    double x = json_number_value(json_object_get(*(json_t *const *)a, "value"));
    double y = json_number_value(json_object_get(*(json_t *const *)b, "value"));
    if (x != y) return x > y ? -1 : 1;
    json_int_t i = json_integer_value(json_object_get(*(json_t *const *)a, "input"));
    json_int_t j = json_integer_value(json_object_get(*(json_t *const *)b, "input"));
    return i < j ? -1 : i > j;
}

/* One neuron over the shards: every shard's partitions (a histogram of the
 * whole), and the top of the merged MAIs. */
void coord_index_neuron(http_req *r)
{
    coord *c = C(r);
    index_set s;
    json_t *per[COORD_MAX_SHARDS], *js[COORD_MAX_SHARDS] = {0};
    coord_call calls[COORD_MAX_SHARDS];
    if (find_index(r, &s, per) != 0) {
        free_all(c, s.js);
        return;
    }
    const char *m = http_arg(r, "mai");
    long want = m ? atol(m) : 20;
    if (want < 0) want = 0;
    coord_calls_set(c, calls, "GET", "", NULL, 0);
    for (int i = 0; i < c->n; i++)
        snprintf(calls[i].target, sizeof calls[i].target, "/v1/indexes/%lld/neurons/%s?mai=%ld",
                 (long long)num(per[i], "id"), r->params[1], want);
    coord_run(c, calls);
    if (coord_fail(r, calls, 0) == 0) {
        parse_all(c, calls, js);
        json_t *parts = json_array(), *mai = json_array();
        json_int_t mai_count = 0, p = 0;
        for (int i = 0; i < c->n; i++) {
            size_t k;
            json_t *o;
            json_array_foreach(json_object_get(js[i], "partitions"), k, o) {
                json_t *x = json_deep_copy(o);
                json_object_set_new(x, "partition", json_integer(p++));
                json_object_set_new(x, "shard", json_integer(i));
                json_array_append_new(parts, x);
            }
            json_array_extend(mai, json_object_get(js[i], "mai"));
            mai_count += num(js[i], "mai_count");
        }
        size_t n = json_array_size(mai);
        json_t **v = malloc((n ? n : 1) * sizeof *v);
        for (size_t i = 0; v && i < n; i++) v[i] = json_array_get(mai, i);
        if (v) qsort(v, n, sizeof *v, by_value_desc);
        json_t *top = json_array();
        for (size_t i = 0; v && i < n && (long)i < want; i++) json_array_append(top, v[i]);
        free(v);
        json_decref(mai);
        http_reply_json(r, 200, json_pack("{s:I,s:I,s:I,s:o,s:o}", "index", num(per[0], "id"), "neuron",
                                          num(js[0], "neuron"), "mai_count", mai_count, "partitions", parts, "mai",
                                          top));
    }
    free_all(c, js);
    coord_calls_free(c, calls);
    free_all(c, s.js);
}

/* ---- predictions ---- */

void coord_predictions_create(http_req *r) { submit_job(r, "/v1/predictions"); }

static json_t *merge_predictions(coord *c, json_t **per)
{
    json_t *o = json_deep_copy(per[0]);
    json_int_t count = 0;
    double correct = 0;
    int ready = 1, failed = 0, accuracy = 1;
    json_t *conf = NULL;
    for (int i = 0; i < c->n; i++) {
        json_int_t n = num(per[i], "count");
        count += n;
        ready &= !strcmp(str(per[i], "state"), "ready");
        failed |= !strcmp(str(per[i], "state"), "failed");
        json_t *a = json_object_get(per[i], "accuracy");
        if (json_is_number(a)) correct += (double)(json_int_t)(json_number_value(a) * (double)n + 0.5);
        else accuracy = 0;
        json_t *cm = json_object_get(per[i], "confusion");
        if (json_is_array(cm)) {
            if (!conf) {
                conf = json_deep_copy(cm);
            } else {
                for (size_t t = 0; t < json_array_size(conf) && t < json_array_size(cm); t++)
                    for (size_t p = 0; p < json_array_size(json_array_get(conf, t)); p++) {
                        json_t *row = json_array_get(conf, t);
                        json_array_set_new(row, p, json_integer(json_integer_value(json_array_get(row, p)) +
                                                                json_integer_value(json_array_get(
                                                                    json_array_get(cm, t), p))));
                    }
            }
        }
        if (i) sum_int(o, per[i], "confusion_outside");
    }
    json_object_set_new(o, "count", json_integer(count));
    json_object_set_new(o, "state", json_string(failed ? "failed" : ready ? "ready" : "computing"));
    if (accuracy && ready && count) json_object_set_new(o, "accuracy", json_real(correct / (double)count));
    else json_object_del(o, "accuracy");
    if (conf) json_object_set_new(o, "confusion", conf);
    return o;
}

void coord_predictions_list(http_req *r)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    json_t *js[COORD_MAX_SHARDS] = {0};
    coord_calls_set(c, calls, "GET", "/v1/predictions", NULL, 0);
    coord_run(c, calls);
    if (coord_fail(r, calls, 0) != 0) goto done;
    parse_all(c, calls, js);
    json_t *out = json_array();
    size_t k;
    json_t *p;
    json_array_foreach(json_object_get(js[0], "predictions"), k, p) {
        json_t *per[COORD_MAX_SHARDS];
        int all = 1;
        per[0] = p;
        for (int i = 1; i < c->n && all; i++) {
            per[i] = NULL;
            size_t j;
            json_t *x;
            json_array_foreach(json_object_get(js[i], "predictions"), j, x) {
                if (!strcmp(str(x, "model"), str(p, "model")) && !strcmp(str(x, "dataset"), str(p, "dataset")))
                    per[i] = x;
            }
            all = per[i] != NULL;
        }
        if (all) json_array_append_new(out, merge_predictions(c, per));
    }
    http_reply_json(r, 200, json_pack("{s:o}", "predictions", out));
done:
    free_all(c, js);
    coord_calls_free(c, calls);
}

void coord_predictions_get(http_req *r)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    json_t *js[COORD_MAX_SHARDS] = {0};
    coord_calls_set(c, calls, "GET", r->url, NULL, 0);
    coord_run(c, calls);
    if (coord_fail(r, calls, 0) == 0) {
        parse_all(c, calls, js);
        http_reply_json(r, 200, merge_predictions(c, js));
    }
    free_all(c, js);
    coord_calls_free(c, calls);
}

/* ---- queries ---- */

typedef struct ranked {
    double v;
    json_int_t id;
    json_t *o;
} ranked;

static int rank_desc(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int rank_asc(const void *a, const void *b)
{
    const ranked *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* kNN by an input id: the target's group activations, from its owner. The
 * neurons may be coordinates: flattened with the layer's shape (shard 0's
 * model record). */
static json_t *target_activations(http_req *r, const proto_query_req *q, int owner, proto_err *e)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    json_t *out = NULL, *model = NULL;
    uint32_t *flat = NULL;
    char path[256];
    snprintf(path, sizeof path, "/v1/models/%s", q->model);
    coord_calls_set(c, calls, "GET", path, NULL, 0);
    for (int i = 1; i < c->n; i++) calls[i].skip = 1;
    coord_run(c, calls);
    if (coord_first_failure(c, calls, 0, e) != 0) goto done;
    model = coord_json(&calls[0]);
    coord_calls_free(c, calls);
    int64_t shape[8];
    int ndim = -1;
    size_t k;
    json_t *l;
    json_array_foreach(json_object_get(model, "layers"), k, l) {
        if (strcmp(str(l, "name"), q->layer)) continue;
        json_t *sh = json_object_get(l, "shape");
        ndim = (int)json_array_size(sh) < 8 ? (int)json_array_size(sh) : 8;
        for (int d = 0; d < ndim; d++) shape[d] = json_integer_value(json_array_get(sh, (size_t)d));
    }
    if (ndim < 0) { /* the shards say which layers there are */
        proto_fail(e, 404, "unknown_layer", "model '%s' has no layer '%s'", q->model, q->layer);
        goto done;
    }
    if (!(flat = malloc(q->neurons.n * sizeof *flat))) {
        proto_fail(e, 500, "internal", "out of memory");
        goto done;
    }
    if (proto_neurons_flatten(&q->neurons, shape, ndim, flat, e) != 0) goto done;
    /* "a,b,c" of flat ids */
    size_t cap = q->neurons.n * 11 + 1, len = 0;
    char *list = malloc(cap);
    if (!list) {
        proto_fail(e, 500, "internal", "out of memory");
        goto done;
    }
    list[0] = '\0';
    for (size_t j = 0; j < q->neurons.n; j++) len += (size_t)snprintf(list + len, cap - len, "%s%u", j ? "," : "", flat[j]);
    size_t tl = len + 512;
    char *target = malloc(tl);
    if (!target) {
        free(list);
        proto_fail(e, 500, "internal", "out of memory");
        goto done;
    }
    snprintf(target, tl, "/v1/datasets/%s/inputs/%llu/activations?model=%s&layer=", q->dataset,
             (unsigned long long)q->target_id, q->model);
    /* the layer name percent-encoded */
    for (const char *p = q->layer; *p; p++) {
        size_t at = strlen(target);
        unsigned char ch = (unsigned char)*p;
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '.' ||
            ch == '_' || ch == '-')
            snprintf(target + at, tl - at, "%c", ch);
        else
            snprintf(target + at, tl - at, "%%%02X", ch);
    }
    snprintf(target + strlen(target), tl - strlen(target), "&neurons=%s", list);
    free(list);
    /* a long group does not fit a coord_call target: one-off call */
    client_resp resp;
    char err[256], auth[600];
    const char *headers[3] = {"X-Deepeverest-Precision: 17", NULL, NULL};
    if (c->token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        headers[1] = auth;
    }
    int ok = client_request(c->shards[owner].url, "GET", target, headers, NULL, 0, c->timeout_s, &resp, err,
                            sizeof err) == 0;
    free(target);
    if (!ok) {
        proto_fail(e, 503, "shard_unavailable", "shard %d (%s) did not answer: %s", owner, c->shards[owner].url, err);
        goto done;
    }
    json_t *arr = json_loadb(resp.body, resp.len, 0, NULL);
    if (resp.status != 200 || !json_is_array(arr) || json_array_size(arr) != q->neurons.n) {
        json_t *er = json_object_get(arr, "error");
        proto_fail(e, resp.status >= 400 ? resp.status : 502, er ? str(er, "code") : "bad_shard_answer", "%s",
                   er ? str(er, "message") : "the target's activations did not come");
        json_decref(arr);
        client_resp_free(&resp);
        goto done;
    }
    client_resp_free(&resp);
    out = json_array();
    json_array_foreach(arr, k, l) json_array_append(out, json_object_get(l, "value"));
    json_decref(arr);
done:
    coord_calls_free(c, calls);
    json_decref(model);
    free(flat);
    return out;
}

static void query(http_req *r, int knn)
{
    coord *c = C(r);
    coord_call calls[COORD_MAX_SHARDS];
    json_t *js[COORD_MAX_SHARDS] = {0};
    proto_query_req q;
    proto_err e;
    double t0 = now_ms();
    const char *path = knn ? "/v1/query/knn" : "/v1/query/topk";
    coord_calls_set(c, calls, "POST", path, NULL, 0);
    if (proto_parse_query(r->body, r->body_len, knn, &q, &e) != 0) {
        http_reply_err(r, &e);
        return;
    }
    json_t *body = json_loadb(r->body, r->body_len, 0, NULL);
    char *plain = json_dumps(body, JSON_COMPACT), *other = NULL;
    int owner = -1;
    if (knn && q.has_target_id) {
        coord_layout L;
        if (coord_dataset_layout(r, q.dataset, &L, NULL, &e) != 0) goto fail;
        owner = coord_owner(c, &L, q.target_id);
        if (owner >= 0) { /* everyone else gets the target's activations */
            json_t *acts = target_activations(r, &q, owner, &e);
            if (!acts) goto fail;
            json_object_set_new(body, "target", json_pack("{s:o}", "activations", acts));
            json_object_del(body, "include_target");
            other = json_dumps(body, JSON_COMPACT);
        }
    }
    coord_calls_set(c, calls, "POST", path, plain, plain ? strlen(plain) : 0);
    for (int i = 0; i < c->n; i++) {
        calls[i].precise = 1;
        if (other && i != owner) {
            calls[i].body = other;
            calls[i].len = strlen(other);
        }
    }
    if (c->threshold_merge && c->n > 1 && !q.has_threshold) {
        /* shard 0 first; its k-th best bounds what the others must return */
        for (int i = 1; i < c->n; i++) calls[i].skip = 1;
        coord_run(c, calls);
        if (coord_first_failure(c, calls, 0, &e) != 0) goto fail;
        json_t *js0 = coord_json(&calls[0]);
        json_t *res = json_object_get(js0, "results");
        if (json_array_size(res) >= q.k && q.k > 0) {
            double t = json_number_value(json_object_get(json_array_get(res, q.k - 1), knn ? "distance" : "score"));
            for (int i = 1; i < c->n; i++) {
                const char *base = other && i != owner ? other : plain;
                json_t *bi = json_loadb(base, strlen(base), 0, NULL);
                json_object_set_new(bi, "threshold", json_real(t));
                calls[i].owned = json_dumps(bi, JSON_COMPACT);
                calls[i].body = calls[i].owned;
                calls[i].len = calls[i].owned ? strlen(calls[i].owned) : 0;
                json_decref(bi);
            }
        }
        json_decref(js0);
        for (int i = 1; i < c->n; i++) calls[i].skip = 0;
        calls[0].skip = 1;
        coord_run(c, calls);
        calls[0].skip = 0;
    } else {
        coord_run(c, calls);
    }
    if (coord_first_failure(c, calls, 0, &e) != 0) goto fail;
    parse_all(c, calls, js);
    /* merge by (value, id): the exact top of every shard's exact top */
    const char *vk = knn ? "distance" : "score";
    size_t n = 0;
    for (int i = 0; i < c->n; i++) n += json_array_size(json_object_get(js[i], "results"));
    ranked *all = malloc((n ? n : 1) * sizeof *all);
    if (!all) {
        proto_fail(&e, 500, "internal", "out of memory");
        goto fail;
    }
    n = 0;
    json_t *stats = json_object();
    json_int_t computed = 0, hits = 0, fetched = 0, forwards = 0, rounds = 0, inputs = 0, known = 0, relaxed = 0;
    double inference = 0, cell = 0;
    int built = 0, none = 0;
    json_t *shard_ms = json_array();
    for (int i = 0; i < c->n; i++) {
        size_t k;
        json_t *o;
        json_array_foreach(json_object_get(js[i], "results"), k, o) {
            all[n++] = (ranked){json_number_value(json_object_get(o, vk)), num(o, "input"), o};
        }
        json_t *st = json_object_get(js[i], "stats");
        computed += num(st, "inputs_computed");
        hits += num(st, "cache_hits");
        fetched += num(st, "inputs_fetched");
        known += num(st, "inputs_from_index");
        relaxed += num(st, "inputs_bound_relaxed");
        forwards += num(st, "forwards");
        inputs += num(st, "inputs");
        if (num(st, "rounds") > rounds) rounds = num(st, "rounds");
        inference += json_number_value(json_object_get(st, "inference_ms"));
        cell += json_number_value(json_object_get(st, "cell_ms"));
        built |= !strcmp(str(st, "index"), "built");
        none |= !strcmp(str(st, "index"), "none");
        json_array_append_new(shard_ms, json_real(calls[i].ms));
        if (i == 0) {
            json_object_set(stats, "method", json_object_get(st, "method"));
            json_object_set(stats, "index_id", json_object_get(st, "index_id"));
        }
    }
    qsort(all, n, sizeof *all, knn ? rank_asc : rank_desc);
    if (n == 0 && q.has_filter) {
        free(all);
        json_decref(stats);
        json_decref(shard_ms);
        proto_fail(&e, 422, "empty_filter", "the filter matches no input of dataset '%s'", q.dataset);
        goto fail;
    }
    json_t *results = json_array();
    int csv = api_wants_csv(r);
    for (size_t i = 0; i < n && i < q.k; i++) {
        json_t *o = json_deep_copy(all[i].o);
        if (csv) json_object_set_new(o, "rank", json_integer((json_int_t)i + 1));
        json_array_append_new(results, o);
    }
    free(all);
    json_object_set_new(stats, "inputs_computed", json_integer(computed));
    json_object_set_new(stats, "cache_hits", json_integer(hits));
    json_object_set_new(stats, "inputs_fetched", json_integer(fetched));
    json_object_set_new(stats, "inputs_from_index", json_integer(known));
    json_object_set_new(stats, "inputs_bound_relaxed", json_integer(relaxed));
    json_object_set_new(stats, "elapsed_ms", json_real(now_ms() - t0));
    json_object_set_new(stats, "inference_ms", json_real(inference));
    json_object_set_new(stats, "cell_ms", json_real(cell));
    json_object_set_new(stats, "index", json_string(built ? "built" : none ? "none" : "used"));
    json_object_set_new(stats, "rounds", json_integer(rounds));
    json_object_set_new(stats, "fraction_computed", json_real(inputs ? (double)computed / (double)inputs : 0.0));
    json_object_set_new(stats, "forwards", json_integer(forwards));
    json_object_set_new(stats, "inputs", json_integer(inputs));
    json_object_set_new(stats, "shards", json_integer(c->n));
    json_object_set_new(stats, "shard_ms", shard_ms);
    atomic_fetch_add(knn ? &r->app->metrics.queries_knn : &r->app->metrics.queries_topk, 1);
    if (csv) {
        json_decref(stats);
        api_reply_csv(r, results, "rank");
    } else {
        http_reply_json(r, 200, json_pack("{s:o,s:o}", "results", results, "stats", stats));
    }
    goto done;
fail:
    http_reply_err(r, &e);
done:
    free_all(c, js);
    coord_calls_free(c, calls);
    json_decref(body);
    free(plain);
    free(other);
    proto_free_query(&q);
}

void coord_query_topk(http_req *r) { query(r, 0); }
void coord_query_knn(http_req *r) { query(r, 1); }
