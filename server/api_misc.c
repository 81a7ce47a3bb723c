/* api_misc.c -- health, metrics, the explorer's static files, and lookups
 * shared by the handlers. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api.h"
#include "proto.h"

void api_health(http_req *r)
{
    http_reply_json(r, 200, json_pack("{s:s,s:s,s:s}", "status", "ok", "version", DE_VERSION, "device",
                                      r->app->device_name));
}

static int count_index(const store_index *ix, void *arg)
{
    uint64_t *c = arg;
    c[ix->state == STORE_READY ? 0 : ix->state == STORE_PENDING ? 1 : 2]++;
    return 0;
}

void api_metrics(http_req *r)
{
    app *a = r->app;
    cache_stats cs;
    cache_get_stats(a->cache, &cs);
    uint64_t map = 0, used = 0, ix[3] = {0};
    store_usage(a->st, &map, &used);
    store_txn *t;
    if (store_txn_begin(a->st, 1, &t) == STORE_OK) {
        store_index_each(t, count_index, ix);
        store_txn_abort(t);
    }
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
    M("inputs_computed_total", "counter", "Inputs run through a model.", atomic_load(&a->metrics.inputs_computed));
    M("inference_batches_total", "counter", "Model forwards.", atomic_load(&a->metrics.inference_batches));
    M("cache_hits_total", "counter", "Activation cache hits.", cs.hits);
    M("cache_misses_total", "counter", "Activation cache misses.", cs.misses);
    M("cache_evictions_total", "counter", "Activation cache evictions.", cs.evictions);
    M("cache_entries", "gauge", "Activation vectors cached.", cs.entries);
    M("cache_bytes", "gauge", "Bytes held by the activation cache.", cs.bytes);
    M("cache_max_bytes", "gauge", "Bound of the activation cache (--cache-mb).", cs.max_bytes);
    M("store_map_bytes", "gauge", "LMDB map size.", map);
    M("store_used_bytes", "gauge", "LMDB pages in use.", used);
    M("indexes_ready", "gauge", "Indexes ready.", ix[0]);
    M("indexes_building", "gauge", "Indexes being built.", ix[1]);
    M("indexes_failed", "gauge", "Indexes whose build failed.", ix[2]);
#undef M
    fclose(f);
    http_reply_bytes(r, 200, "text/plain; version=0.0.4", buf, len, 1);
}

static const char *mime_of(const char *name)
{
    const char *dot = strrchr(name, '.');
    if (!dot) return "application/octet-stream";
    if (!strcmp(dot, ".html")) return "text/html; charset=utf-8";
    if (!strcmp(dot, ".js")) return "text/javascript; charset=utf-8";
    if (!strcmp(dot, ".css")) return "text/css; charset=utf-8";
    if (!strcmp(dot, ".svg")) return "image/svg+xml";
    if (!strcmp(dot, ".png")) return "image/png";
    if (!strcmp(dot, ".json")) return "application/json";
    return "application/octet-stream";
}

/* GET / and GET /static/{file}: one flat directory; a name is letters,
 * digits, '.', '-', '_' and may not start with '.', so no path can leave it. */
void api_static(http_req *r)
{
    const char *name = r->nparams ? r->params[0] : "index.html";
    if (!name[0] || name[0] == '.') goto notfound;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' && *p != '_') goto notfound;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", r->app->cfg.static_dir, name);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) goto notfound;
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size > (64 << 20)) {
        close(fd);
        goto notfound;
    }
    char *buf = malloc((size_t)sb.st_size + 1);
    size_t got = 0;
    while (buf && got < (size_t)sb.st_size) {
        ssize_t k = read(fd, buf + got, (size_t)sb.st_size - got);
        if (k <= 0) break;
        got += (size_t)k;
    }
    close(fd);
    if (!buf || got != (size_t)sb.st_size) {
        free(buf);
        http_reply_error(r, 500, "internal", "cannot read %s", name);
        return;
    }
    http_reply_bytes(r, 200, mime_of(name), buf, got, 1);
    return;
notfound:
    http_reply_error(r, 404, "not_found", "no such file: %s", name);
}

int api_find_dataset(http_req *r, const char *name, store_dataset *out)
{
    store_txn *t;
    if (store_txn_begin(r->app->st, 1, &t) != STORE_OK) {
        http_reply_error(r, 500, "store_error", "store: %s", store_errmsg());
        return -1;
    }
    int rc = store_dataset_get(t, name, out);
    store_txn_abort(t);
    if (rc == STORE_OK && out->state == STORE_READY) return 0;
    if (rc == STORE_OK || rc == STORE_NOTFOUND)
        http_reply_error(r, 404, "unknown_dataset", "dataset '%s' does not exist", name);
    else
        http_reply_error(r, 500, "store_error", "store: %s", store_errmsg());
    return -1;
}

app_model *api_find_model(http_req *r, const char *name)
{
    app_model *m = app_model_get(r->app, name);
    if (m) return m;
    store_txn *t;
    store_model rec;
    int known = 0;
    if (store_txn_begin(r->app->st, 1, &t) == STORE_OK) {
        known = store_model_get(t, name, &rec) == STORE_OK;
        store_txn_abort(t);
    }
    if (known)
        http_reply_error(r, 503, "model_unavailable",
                         "model '%s' is registered but could not be loaded from %s (missing or corrupt file?); "
                         "register it again", name, rec.path);
    else
        http_reply_error(r, 404, "unknown_model", "model '%s' is not registered", name);
    return NULL;
}

int api_parse_id(http_req *r, const char *s, uint64_t limit, const char *what, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!*s || *end || errno || s[0] == '-' || v >= limit) {
        http_reply_error(r, 404, "not_found", "%s '%s' does not exist (valid: 0..%llu)", what, s,
                         (unsigned long long)(limit ? limit - 1 : 0));
        return -1;
    }
    *out = v;
    return 0;
}
