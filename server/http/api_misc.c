/* api_misc.c -- health, metrics, the OpenAPI document and the explorer's
 * static files. */
#include <ctype.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api.h"
#include "catalog.h"

/* server/http/openapi.json, embedded at build time (Makefile). */
extern const unsigned char api_openapi_doc[];
extern const size_t api_openapi_len;

void api_health(http_req *r)
{
    http_reply_json(r, 200, json_pack("{s:s,s:s,s:s}", "status", "ok", "version", DE_VERSION, "device",
                                      r->app->device_name));
}

void api_openapi(http_req *r)
{
    http_reply_bytes(r, 200, "application/json", (void *)api_openapi_doc, api_openapi_len, 0);
}

void api_metrics(http_req *r)
{
    app *a = r->app;
    cache_stats cs;
    cache_get_stats(a->cache, &cs);
    uint64_t map = 0, used = 0, ix[3] = {0};
    store_usage(a->st, &map, &used);
    store_index *list = NULL;
    size_t n = 0;
    proto_err e;
    if (catalog_indexes(a, &list, &n, &e) == 0)
        for (size_t i = 0; i < n; i++) ix[list[i].state == STORE_READY ? 0 : list[i].state == STORE_PENDING ? 1 : 2]++;
    free(list);
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
    M("cache_entries", "gauge", "Activation blocks cached.", cs.entries);
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
