/* http.c -- libmicrohttpd front: routing, body caps, auth, replies, drain. */
#include "http.h"

#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "api.h"
#include "coord_api.h"
#include "proto.h"
#include "route.h"

typedef struct route {
    route_spec spec;             /* method, pattern ('*' = one segment) */
    http_handler fn;
    http_chunk_fn chunk;         /* streaming body, or NULL = buffered */
    void (*cleanup)(http_req *r);
} route;

static const route ROUTES[] = {
    {{"GET", "/v1/health"}, api_health, NULL, NULL},
    {{"GET", "/v1/openapi.json"}, api_openapi, NULL, NULL},
    {{"GET", "/metrics"}, api_metrics, NULL, NULL},
    {{"POST", "/v1/models"}, api_model_create, NULL, NULL},
    {{"GET", "/v1/models"}, api_model_list, NULL, NULL},
    {{"GET", "/v1/models/*"}, api_model_get, NULL, NULL},
    {{"DELETE", "/v1/models/*"}, api_model_delete, NULL, NULL},
    {{"POST", "/v1/datasets"}, api_dataset_create, NULL, NULL},
    {{"GET", "/v1/datasets"}, api_dataset_list, NULL, NULL},
    {{"PUT", "/v1/datasets/*"}, api_dataset_upload, api_dataset_upload_chunk, api_dataset_upload_cleanup},
    {{"GET", "/v1/datasets/*"}, api_dataset_get, NULL, NULL},
    {{"DELETE", "/v1/datasets/*"}, api_dataset_delete, NULL, NULL},
    {{"PUT", "/v1/datasets/*/classes"}, api_dataset_classes, NULL, NULL},
    {{"GET", "/v1/datasets/*/inputs"}, api_input_list, NULL, NULL},
    {{"GET", "/v1/datasets/*/inputs/*"}, api_input_get, NULL, NULL},
    {{"GET", "/v1/datasets/*/inputs/*/image.png"}, api_input_png, NULL, NULL},
    {{"GET", "/v1/datasets/*/inputs/*/activations"}, api_input_activations, NULL, NULL},
    {{"GET", "/v1/datasets/*/inputs/*/attribution"}, api_input_attribution, NULL, NULL},
    {{"GET", "/v1/datasets/*/inputs/*/attribution.png"}, api_input_attribution_png, NULL, NULL},
    {{"POST", "/v1/indexes"}, api_index_create, NULL, NULL},
    {{"GET", "/v1/indexes"}, api_index_list, NULL, NULL},
    {{"GET", "/v1/indexes/*"}, api_index_get, NULL, NULL},
    {{"DELETE", "/v1/indexes/*"}, api_index_delete, NULL, NULL},
    {{"GET", "/v1/indexes/*/neurons/*"}, api_index_neuron, NULL, NULL},
    {{"GET", "/v1/jobs"}, api_job_list, NULL, NULL},
    {{"GET", "/v1/jobs/*"}, api_job_get, NULL, NULL},
    {{"DELETE", "/v1/jobs/*"}, api_job_delete, NULL, NULL},
    {{"POST", "/v1/predictions"}, api_predictions_create, NULL, NULL},
    {{"GET", "/v1/predictions"}, api_predictions_list, NULL, NULL},
    {{"GET", "/v1/predictions/*/*"}, api_predictions_get, NULL, NULL},
    {{"DELETE", "/v1/predictions/*/*"}, api_predictions_delete, NULL, NULL},
    {{"POST", "/v1/query/topk"}, api_query_topk, NULL, NULL},
    {{"POST", "/v1/query/knn"}, api_query_knn, NULL, NULL},
    {{"GET", "/"}, api_static, NULL, NULL},
    {{"GET", "/static/*"}, api_static, NULL, NULL},
};
#define NROUTES (sizeof ROUTES / sizeof ROUTES[0])

/* --coordinator: the same API, row for row (a test holds them equal). */
static const route COORD_ROUTES[] = {
    {{"GET", "/v1/health"}, coord_health, NULL, NULL},
    {{"GET", "/v1/openapi.json"}, api_openapi, NULL, NULL},
    {{"GET", "/metrics"}, coord_metrics, NULL, NULL},
    {{"POST", "/v1/models"}, coord_model_create, NULL, NULL},
    {{"GET", "/v1/models"}, coord_model_list, NULL, NULL},
    {{"GET", "/v1/models/*"}, coord_all_same, NULL, NULL},
    {{"DELETE", "/v1/models/*"}, coord_delete_all, NULL, NULL},
    {{"POST", "/v1/datasets"}, coord_dataset_create, NULL, NULL},
    {{"GET", "/v1/datasets"}, coord_dataset_list, NULL, NULL},
    {{"PUT", "/v1/datasets/*"}, coord_upload, coord_upload_chunk, coord_upload_cleanup},
    {{"GET", "/v1/datasets/*"}, coord_dataset_get, NULL, NULL},
    {{"DELETE", "/v1/datasets/*"}, coord_delete_all, NULL, NULL},
    {{"PUT", "/v1/datasets/*/classes"}, coord_dataset_classes, NULL, NULL},
    {{"GET", "/v1/datasets/*/inputs"}, coord_input_list, NULL, NULL},
    {{"GET", "/v1/datasets/*/inputs/*"}, coord_input_forward, NULL, NULL},
    {{"GET", "/v1/datasets/*/inputs/*/image.png"}, coord_input_forward, NULL, NULL},
    {{"GET", "/v1/datasets/*/inputs/*/activations"}, coord_input_forward, NULL, NULL},
    {{"GET", "/v1/datasets/*/inputs/*/attribution"}, coord_input_forward, NULL, NULL},
    {{"GET", "/v1/datasets/*/inputs/*/attribution.png"}, coord_input_forward, NULL, NULL},
    {{"POST", "/v1/indexes"}, coord_index_create, NULL, NULL},
    {{"GET", "/v1/indexes"}, coord_index_list, NULL, NULL},
    {{"GET", "/v1/indexes/*"}, coord_index_get, NULL, NULL},
    {{"DELETE", "/v1/indexes/*"}, coord_index_delete, NULL, NULL},
    {{"GET", "/v1/indexes/*/neurons/*"}, coord_index_neuron, NULL, NULL},
    {{"GET", "/v1/jobs"}, coord_job_list, NULL, NULL},
    {{"GET", "/v1/jobs/*"}, coord_job_get, NULL, NULL},
    {{"DELETE", "/v1/jobs/*"}, coord_job_delete, NULL, NULL},
    {{"POST", "/v1/predictions"}, coord_predictions_create, NULL, NULL},
    {{"GET", "/v1/predictions"}, coord_predictions_list, NULL, NULL},
    {{"GET", "/v1/predictions/*/*"}, coord_predictions_get, NULL, NULL},
    {{"DELETE", "/v1/predictions/*/*"}, coord_delete_all, NULL, NULL},
    {{"POST", "/v1/query/topk"}, coord_query_topk, NULL, NULL},
    {{"POST", "/v1/query/knn"}, coord_query_knn, NULL, NULL},
    {{"GET", "/"}, api_static, NULL, NULL},
    {{"GET", "/static/*"}, api_static, NULL, NULL},
};
#define NCOORD_ROUTES (sizeof COORD_ROUTES / sizeof COORD_ROUTES[0])

typedef struct conn_state {
    http_req req;
    const route *rt;
    size_t cap;                  /* bytes allowed in body */
    size_t alloc;
    int too_large;
    int stream_failed;
    char segs[512];              /* copy of the path for params */
} conn_state;

static struct MHD_Daemon *g_daemon;
static int g_port;

int http_port(void) { return g_port; }

const char *http_arg(http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *http_header(http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

typedef struct qs_build {
    char *buf;
    size_t cap, len;
    const char *const *drop;
    int overflow;
} qs_build;

static void qs_put(qs_build *b, const char *s, int encode)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        int plain = !encode || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                    ch == '-' || ch == '_' || ch == '.' || ch == '~' || ch == ',';
        if (b->len + 4 >= b->cap) {
            b->overflow = 1;
            return;
        }
        if (plain) {
            b->buf[b->len++] = (char)ch;
        } else {
            b->buf[b->len++] = '%';
            b->buf[b->len++] = hex[ch >> 4];
            b->buf[b->len++] = hex[ch & 15];
        }
    }
    b->buf[b->len] = '\0';
}

static enum MHD_Result qs_each(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    qs_build *b = cls;
    (void)kind;
    for (size_t i = 0; b->drop && b->drop[i]; i++)
        if (strcmp(b->drop[i], key) == 0) return MHD_YES;
    qs_put(b, b->len ? "&" : "?", 0);
    qs_put(b, key, 1);
    if (value) {
        qs_put(b, "=", 0);
        qs_put(b, value, 1);
    }
    return MHD_YES;
}

int http_query_string(http_req *r, const char *const *drop, char *buf, size_t cap)
{
    qs_build b = {buf, cap, 0, drop, 0};
    if (!cap) return -1;
    buf[0] = '\0';
    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, qs_each, &b);
    return b.overflow ? -1 : 0;
}

static void queue(http_req *r, int status, struct MHD_Response *resp, const char *ctype)
{
    if (!resp) {
        r->replied = 1;
        return;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->replied = 1;
    r->status = status;
    atomic_fetch_add(&r->app->metrics.requests, 1);
    if (status >= 500)
        atomic_fetch_add(&r->app->metrics.errors_5xx, 1);
    else if (status >= 400)
        atomic_fetch_add(&r->app->metrics.errors_4xx, 1);
}

void http_reply_bytes(http_req *r, int status, const char *ctype, void *data, size_t len, int take)
{
    if (r->replied) {
        if (take) free(data);
        return;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, data, take ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_MUST_COPY);
    if (!resp && take) free(data);
    queue(r, status, resp, ctype);
}

void http_reply_json(http_req *r, int status, json_t *body)
{
    /* 9 digits round-trip every float; a coordinator asks for 17, which
     * round-trip the doubles it merges by (scores, distances) */
    const char *prec = http_header(r, "X-Deepeverest-Precision");
    int digits = prec && strcmp(prec, "17") == 0 ? 17 : 9;
    char *s = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(digits)) : NULL;
    json_decref(body);
    if (!s) {
        static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        http_reply_bytes(r, 500, "application/json", (void *)oom, sizeof oom - 1, 0);
        return;
    }
    size_t n = strlen(s);
    s[n] = '\n'; /* json_dumps's NUL becomes a newline: nicer for curl */
    http_reply_bytes(r, status, "application/json", s, n + 1, 1);
}

void http_reply_err(http_req *r, const proto_err *e)
{
    proto_err safe = *e;
    safe.code[sizeof safe.code - 1] = 0;
    safe.message[sizeof safe.message - 1] = 0;
    proto_sanitize(safe.code);
    proto_sanitize(safe.message);
    int status = safe.status ? safe.status : 500;
    if (status >= 500) log_msg("%s %s -> %d %s: %s", r->method, r->url, status, safe.code, safe.message);
    http_reply_json(r, status, json_pack("{s:{s:s,s:s}}", "error", "code", safe.code, "message", safe.message));
}

void http_reply_error(http_req *r, int status, const char *code, const char *fmt, ...)
{
    proto_err e = {.status = status};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    snprintf(e.code, sizeof e.code, "%s", code);
    http_reply_err(r, &e);
}

void http_routes_each(int coordinator, void (*fn)(const char *method, const char *pattern, void *arg), void *arg)
{
    const route *t = coordinator ? COORD_ROUTES : ROUTES;
    size_t n = coordinator ? NCOORD_ROUTES : NROUTES;
    for (size_t i = 0; i < n; i++) fn(t[i].spec.method, t[i].spec.pattern, arg);
}

/* ---- routing ---- */

static const route *route_match(conn_state *s, const char *method, const char *url, int *method_mismatch)
{
    route_hit hit;
    const route *t = s->req.app->coord ? COORD_ROUTES : ROUTES;
    size_t n = s->req.app->coord ? NCOORD_ROUTES : NROUTES;
    int i = route_find(t, n, sizeof t[0], method, url, s->segs, sizeof s->segs, &hit, method_mismatch);
    if (i < 0) return NULL;
    s->req.nparams = hit.nparams;
    for (int k = 0; k < hit.nparams; k++) s->req.params[k] = hit.params[k];
    return &t[i];
}

static int is_mutating(const char *method)
{
    return strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 || strcmp(method, "DELETE") == 0;
}

/* Constant-time compare, so the token cannot be guessed byte by byte. */
static int token_ok(const char *want, const char *header)
{
    static const char prefix[] = "Bearer ";
    if (!header || strncmp(header, prefix, sizeof prefix - 1) != 0) return 0;
    const char *got = header + sizeof prefix - 1;
    size_t wl = strlen(want), gl = strlen(got);
    unsigned char diff = (unsigned char)(wl != gl);
    for (size_t i = 0; i < wl; i++) diff |= (unsigned char)(want[i] ^ (i < gl ? got[i] : 0));
    return diff == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    app *a = cls;
    conn_state *s = *con_cls;
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s) return MHD_NO;
        *con_cls = s;
        atomic_fetch_add(&a->metrics.inflight, 1);
        s->req.app = a;
        s->req.conn = conn;
        s->req.method = method;
        s->req.url = url;
        int mismatch;
        s->rt = route_match(s, method, url, &mismatch);
        s->cap = a->cfg.max_body_mb << 20;
        if (a->stopping) {
            http_reply_error(&s->req, 503, "shutting_down", "the server is shutting down");
        } else if (!s->rt) {
            if (mismatch)
                http_reply_error(&s->req, 405, "method_not_allowed", "%s is not allowed on %s", method, url);
            else
                http_reply_error(&s->req, 404, "not_found", "no such endpoint: %s %s", method, url);
        } else if (a->cfg.token && is_mutating(method) &&
                   !token_ok(a->cfg.token, MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                                      "Authorization"))) {
            http_reply_error(&s->req, 401, "unauthorized",
                             "%s %s needs the header 'Authorization: Bearer <token>'", method, url);
        } else {
            const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
            size_t cap = s->rt->chunk ? a->cfg.max_upload_mb << 20 : s->cap;
            if (cl && strtoull(cl, NULL, 10) > cap)
                http_reply_error(&s->req, 413, "body_too_large",
                                 "the body is %s bytes; the limit for %s is %zu MiB", cl, url,
                                 cap >> 20);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t len = *upload_size;
        *upload_size = 0;
        if (s->req.replied || s->too_large || s->stream_failed) return MHD_YES; /* discard */
        if (s->rt->chunk) {
            if (s->req.body_len + len > (a->cfg.max_upload_mb << 20)) {
                s->too_large = 1;
            } else {
                s->req.body_len += len;
                if (s->rt->chunk(&s->req, upload, len) != 0) s->stream_failed = 1;
            }
            return MHD_YES;
        }
        if (s->req.body_len + len > s->cap) {
            s->too_large = 1;
            return MHD_YES;
        }
        if (s->req.body_len + len + 1 > s->alloc) {
            size_t want = s->alloc ? s->alloc : 4096;
            while (want < s->req.body_len + len + 1) want *= 2;
            char *b = realloc(s->req.body, want);
            if (!b) {
                s->too_large = 1;
                return MHD_YES;
            }
            s->req.body = b;
            s->alloc = want;
        }
        memcpy(s->req.body + s->req.body_len, upload, len);
        s->req.body_len += len;
        s->req.body[s->req.body_len] = '\0';
        return MHD_YES;
    }
    if (s->req.replied) return MHD_YES;
    if (s->too_large) {
        size_t cap = s->rt->chunk ? a->cfg.max_upload_mb : a->cfg.max_body_mb;
        http_reply_error(&s->req, 413, "body_too_large", "the body of %s %s exceeds %zu MiB", method,
                         url, cap);
        return MHD_YES;
    }
    s->rt->fn(&s->req);
    if (!s->req.replied)
        http_reply_error(&s->req, 500, "internal", "the handler of %s %s gave no answer", method, url);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    app *a = cls;
    conn_state *s = *con_cls;
    if (!s) return;
    if (s->rt && s->rt->cleanup && s->req.stream) s->rt->cleanup(&s->req);
    free(s->req.body);
    free(s);
    *con_cls = NULL;
    atomic_fetch_sub(&a->metrics.inflight, 1);
}

int http_start(app *a, char *err, size_t errlen)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)a->cfg.listen_port);
    if (inet_pton(AF_INET, a->cfg.listen_host, &sa.sin_addr) != 1) {
        snprintf(err, errlen, "--listen: '%s' is not an IPv4 address", a->cfg.listen_host);
        return -1;
    }
    g_daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG,
        (uint16_t)a->cfg.listen_port, NULL, NULL, on_request, a,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, a,
        MHD_OPTION_CONNECTION_TIMEOUT, a->cfg.client_timeout_s, /* slow or idle clients are cut */
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)512,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1,
        MHD_OPTION_END);
    if (!g_daemon) {
        snprintf(err, errlen, "cannot listen on %s:%d (port in use?)", a->cfg.listen_host,
                 a->cfg.listen_port);
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(g_daemon, MHD_DAEMON_INFO_BIND_PORT);
    g_port = info ? info->port : a->cfg.listen_port;
    return 0;
}

void http_stop(app *a, double drain_s)
{
    if (!g_daemon) return;
    MHD_quiesce_daemon(g_daemon); /* no new connections */
    double t0 = clock_ms();
    while (atomic_load(&a->metrics.inflight) > 0 && clock_ms() - t0 < drain_s * 1000) usleep(20000);
    MHD_stop_daemon(g_daemon);
    g_daemon = NULL;
}
