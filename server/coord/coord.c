/* coord.c -- see coord.h. */
#include "coord.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proto.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int coord_new(const char *list, double timeout_s, const char *token, coord **out, char *err, size_t errlen)
{
    coord *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    const char *p = list;
    while (p && *p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == 0 || len >= sizeof c->shards[0].url || c->n == COORD_MAX_SHARDS ||
            strncmp(p, "http://", 7) != 0) {
            snprintf(err, errlen, "--shards wants http://HOST:PORT[,http://HOST:PORT...] (at most %d)",
                     COORD_MAX_SHARDS);
            free(c);
            return -1;
        }
        memcpy(c->shards[c->n].url, p, len);
        while (len && c->shards[c->n].url[len - 1] == '/') len--; /* targets start with '/' */
        c->shards[c->n].url[len] = '\0';
        c->n++;
        p = end ? end + 1 : NULL;
    }
    if (!c->n) {
        snprintf(err, errlen, "--shards lists no shard");
        free(c);
        return -1;
    }
    c->timeout_s = timeout_s;
    c->token = token;
    *out = c;
    return 0;
}

void coord_free(coord *c) { free(c); }

typedef struct call_arg {
    coord *c;
    int i;
    coord_call *call;
} call_arg;

static void *run_one(void *p)
{
    call_arg *a = p;
    coord_call *k = a->call;
    coord_shard *s = &a->c->shards[a->i];
    char auth[600];
    const char *headers[4];
    int nh = 0;
    if (k->precise) headers[nh++] = "X-Deepeverest-Precision: 17";
    if (k->body) headers[nh++] = "Content-Type: application/json";
    if (a->c->token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", a->c->token);
        headers[nh++] = auth;
    }
    headers[nh] = NULL;
    double t0 = now_ms();
    k->reached = client_request(s->url, k->method, k->target, headers, k->body, k->len,
                                k->timeout_s > 0 ? k->timeout_s : a->c->timeout_s, &k->resp, k->err,
                                sizeof k->err) == 0;
    k->ms = now_ms() - t0;
    atomic_fetch_add(&s->requests, 1);
    atomic_fetch_add(&s->latency_us, (unsigned long long)(k->ms * 1000));
    if (!k->reached) atomic_fetch_add(&s->failures, 1);
    return NULL;
}

void coord_run(coord *c, coord_call *calls)
{
    pthread_t th[COORD_MAX_SHARDS];
    call_arg args[COORD_MAX_SHARDS];
    int started[COORD_MAX_SHARDS] = {0};
    for (int i = 0; i < c->n; i++) {
        if (calls[i].skip) continue;
        args[i] = (call_arg){c, i, &calls[i]};
        started[i] = pthread_create(&th[i], NULL, run_one, &args[i]) == 0;
        if (!started[i]) run_one(&args[i]); /* no thread: run it here */
    }
    for (int i = 0; i < c->n; i++)
        if (started[i]) pthread_join(th[i], NULL);
}

void coord_calls_free(coord *c, coord_call *calls)
{
    for (int i = 0; i < c->n; i++) {
        client_resp_free(&calls[i].resp);
        free(calls[i].owned);
        calls[i].owned = NULL;
    }
}

void coord_calls_set(coord *c, coord_call *calls, const char *method, const char *target, const char *body,
                     size_t len)
{
    for (int i = 0; i < c->n; i++) {
        memset(&calls[i], 0, sizeof calls[i]);
        calls[i].method = method;
        snprintf(calls[i].target, sizeof calls[i].target, "%s", target);
        calls[i].body = body;
        calls[i].len = len;
    }
}

json_t *coord_json(const coord_call *k)
{
    if (!k->reached || !k->resp.body) return NULL;
    return json_loadb(k->resp.body, k->resp.len, 0, NULL);
}

int coord_first_failure(coord *c, const coord_call *calls, int ok_also, proto_err *e)
{
    for (int i = 0; i < c->n; i++) {
        const coord_call *k = &calls[i];
        if (k->skip) continue;
        if (!k->reached)
            return proto_fail(e, 503, "shard_unavailable", "shard %d (%s) did not answer: %s", i, c->shards[i].url,
                              k->err);
    }
    for (int i = 0; i < c->n; i++) {
        const coord_call *k = &calls[i];
        int st = k->resp.status;
        if (k->skip || (st >= 200 && st < 300) || st == ok_also) continue;
        json_t *js = coord_json(k);
        json_t *er = js ? json_object_get(js, "error") : NULL;
        const char *code = er ? json_string_value(json_object_get(er, "code")) : NULL;
        const char *msg = er ? json_string_value(json_object_get(er, "message")) : NULL;
        proto_fail(e, st, code ? code : "shard_error", "%s", msg ? msg : "shard answered without an error body");
        json_decref(js);
        return -1;
    }
    return 0;
}
