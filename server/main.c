/* main.c -- deepeverestd: flags, start-up, signal-driven shutdown.
 *
 * deepeverestd --data DIR [--listen 127.0.0.1:8080] [--device auto|cpu|cuda]
 *   [--cache-mb 512] [--threads N] [--token-file F] [--batch 64]
 *   [--build-memory-mb 2048] [--import-root DIR] [--max-body-mb 64]
 *   [--max-upload-mb 4096] [--query-timeout-s 300] [--max-builds 1]
 *   [--static DIR] [--map-mb 65536] [--client-timeout-s 60]
 *   [--infer-memory-mb 2048] [--eager-layers fit] [--partitioning sampled]
 *   [--layout auto]
 * deepeverestd --data DIR --stat      print the catalog and indexes, exit
 *                                     (read-only, beside a running daemon)
 * deepeverestd --coordinator --shards URL[,URL...] [--listen ...] [--token-file F]
 *   [--shard-timeout-s 600]        one API in front of shards (server/coord/)
 * deepeverestd [--coordinator] --routes   print the API's routes, exit
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "coord.h"
#include "engine.h"
#include "http.h"
#include "jobs.h"
#include "registry.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: deepeverestd --data DIR [--listen HOST:PORT] [--device auto|cpu|cuda]\n"
            "                    [--cache-mb N] [--threads N] [--token-file F] [--batch N]\n"
            "                    [--build-memory-mb N] [--import-root DIR] [--max-body-mb N]\n"
            "                    [--max-upload-mb N] [--query-timeout-s S] [--max-builds N]\n"
            "                    [--static DIR] [--map-mb N] [--client-timeout-s S]\n"
            "                    [--infer-memory-mb N] [--eager-layers none|before|fit|all]\n"
            "                    [--partitioning sampled|exact] [--layout auto|contiguous|channels-last]\n"
            "       deepeverestd --coordinator --shards URL[,URL...] [--listen HOST:PORT]\n"
            "                    [--token-file F] [--shard-timeout-s S] [--merge parallel|threshold]\n"
            "                    [--static DIR]\n"
            "       deepeverestd --data DIR --stat\n"
            "       deepeverestd [--coordinator] --routes\n");
}

static int parse_listen(const char *s, app_config *c)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof c->listen_host) return -1;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) return -1;
    memcpy(c->listen_host, s, (size_t)(colon - s));
    c->listen_host[colon - s] = '\0';
    if (strcmp(c->listen_host, "localhost") == 0) strcpy(c->listen_host, "127.0.0.1");
    c->listen_port = (int)port;
    return 0;
}

static int parse_size(const char *s, size_t lo, size_t hi, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = (size_t)v;
    return 0;
}

static char *read_token(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char buf[512];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) buf[--n] = '\0';
    return n ? strdup(buf) : NULL;
}

/* Static files sit beside the binary's source tree: <exe>/../server/static. */
static const char *default_static_dir(void)
{
    static char dir[PATH_MAX + 32]; /* room for the suffix after any exe path */
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return "server/static";
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    snprintf(dir, sizeof dir, "%s/../server/static", exe);
    return dir;
}

int stat_main(const char *data_dir); /* stat.c */

/* --coordinator: no torch, store, models or jobs; the shards do the work. */
static int coordinator_main(app *A)
{
    app_config *c = &A->cfg;
    char err[512];
    if (!c->static_dir) c->static_dir = default_static_dir();
    if (c->token_file && !(c->token = read_token(c->token_file))) {
        fprintf(stderr, "--token-file %s: cannot read a token from it\n", c->token_file);
        return 2;
    }
    if (coord_new(c->shards, c->shard_timeout_s, c->token, &A->coord, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    A->coord->threshold_merge = c->merge_threshold;
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    A->device_name = "none";
    if (http_start(A, err, sizeof err) != 0) {
        fprintf(stderr, "http: %s\n", err);
        return 1;
    }
    log_msg("deepeverestd %s coordinator listening on http://%s:%d/ over %d shards (%s)", DE_VERSION,
            c->listen_host, http_port(), A->coord->n, c->shards);
    int sig = 0;
    sigwait(&sigs, &sig);
    log_msg("signal %d: draining in-flight requests", sig);
    atomic_store(&A->stopping, 1);
    http_stop(A, 30.0);
    coord_free(A->coord);
    free(c->token);
    log_msg("stopped");
    return 0;
}

static void print_route(const char *method, const char *pattern, void *arg)
{
    (void)arg;
    printf("%s %s\n", method, pattern);
}

int main(int argc, char **argv)
{
    static app A;
    app_config *c = &A.cfg;
    int do_stat = 0, do_routes = 0, coordinator = 0;
    snprintf(c->listen_host, sizeof c->listen_host, "127.0.0.1");
    c->listen_port = 8080;
    c->device = "auto";
    c->cache_mb = 512;
    c->batch = 64;
    c->build_memory_mb = 2048;
    c->max_body_mb = 64;
    c->max_upload_mb = 4096;
    c->query_timeout_s = 300;
    c->max_builds = 1;
    c->client_timeout_s = 60;
    c->map_mb = 64 << 10;
    c->infer_memory_mb = 2048;
    c->eager_layers = 2; /* fit */
    c->shard_timeout_s = 600; /* a query that builds its index inline may take minutes */

    enum { O_DATA = 1, O_LISTEN, O_DEVICE, O_CACHE, O_THREADS, O_TOKEN, O_BATCH, O_BUILDMEM,
           O_IMPORT, O_MAXBODY, O_MAXUP, O_QTIME, O_MAXBUILDS, O_STATIC, O_STAT, O_MAPGB, O_CTIME, O_INFERMEM,
           O_ROUTES, O_EAGER, O_PARTS, O_LAYOUT, O_COORD, O_SHARDS, O_STIME, O_MERGE, O_HELP };
    static const struct option opts[] = {
        {"data", required_argument, 0, O_DATA},
        {"listen", required_argument, 0, O_LISTEN},
        {"device", required_argument, 0, O_DEVICE},
        {"cache-mb", required_argument, 0, O_CACHE},
        {"threads", required_argument, 0, O_THREADS},
        {"token-file", required_argument, 0, O_TOKEN},
        {"batch", required_argument, 0, O_BATCH},
        {"build-memory-mb", required_argument, 0, O_BUILDMEM},
        {"import-root", required_argument, 0, O_IMPORT},
        {"max-body-mb", required_argument, 0, O_MAXBODY},
        {"max-upload-mb", required_argument, 0, O_MAXUP},
        {"query-timeout-s", required_argument, 0, O_QTIME},
        {"max-builds", required_argument, 0, O_MAXBUILDS},
        {"client-timeout-s", required_argument, 0, O_CTIME},
        {"static", required_argument, 0, O_STATIC},
        {"map-mb", required_argument, 0, O_MAPGB},
        {"infer-memory-mb", required_argument, 0, O_INFERMEM},
        {"stat", no_argument, 0, O_STAT},
        {"routes", no_argument, 0, O_ROUTES},
        {"eager-layers", required_argument, 0, O_EAGER},
        {"partitioning", required_argument, 0, O_PARTS},
        {"layout", required_argument, 0, O_LAYOUT},
        {"coordinator", no_argument, 0, O_COORD},
        {"shards", required_argument, 0, O_SHARDS},
        {"shard-timeout-s", required_argument, 0, O_STIME},
        {"merge", required_argument, 0, O_MERGE},
        {"help", no_argument, 0, O_HELP},
        {0, 0, 0, 0}};
    int o;
    size_t v;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case O_DATA: c->data_dir = optarg; break;
        case O_LISTEN:
            if (parse_listen(optarg, c)) { fprintf(stderr, "--listen wants HOST:PORT, e.g. 127.0.0.1:8080\n"); return 2; }
            break;
        case O_DEVICE:
            if (strcmp(optarg, "auto") && strcmp(optarg, "cpu") && strcmp(optarg, "cuda")) {
                fprintf(stderr, "--device is auto, cpu or cuda\n");
                return 2;
            }
            c->device = optarg;
            break;
        case O_CACHE: if (parse_size(optarg, 0, 1 << 20, &c->cache_mb)) goto bad; break;
        case O_THREADS: if (parse_size(optarg, 0, 1024, &v)) goto bad; c->threads = (int)v; break;
        case O_TOKEN: c->token_file = optarg; break;
        case O_BATCH: if (parse_size(optarg, 1, 4096, &v)) goto bad; c->batch = (uint32_t)v; break;
        case O_BUILDMEM: if (parse_size(optarg, 16, 1 << 22, &c->build_memory_mb)) goto bad; break;
        case O_IMPORT: c->import_root = optarg; break;
        case O_MAXBODY: if (parse_size(optarg, 1, 1 << 14, &c->max_body_mb)) goto bad; break;
        case O_MAXUP: if (parse_size(optarg, 1, 1 << 20, &c->max_upload_mb)) goto bad; break;
        case O_QTIME: if (parse_size(optarg, 0, 86400, &v)) goto bad; c->query_timeout_s = (double)v; break;
        case O_MAXBUILDS: if (parse_size(optarg, 1, 64, &v)) goto bad; c->max_builds = (int)v; break;
        case O_CTIME: if (parse_size(optarg, 1, 86400, &v)) goto bad; c->client_timeout_s = (unsigned)v; break;
        case O_STATIC: c->static_dir = optarg; break;
        case O_MAPGB: if (parse_size(optarg, 4, (size_t)1 << 26, &c->map_mb)) goto bad; break;
        case O_INFERMEM: if (parse_size(optarg, 1, 1 << 22, &c->infer_memory_mb)) goto bad; break;
        case O_STAT: do_stat = 1; break;
        case O_ROUTES: do_routes = 1; break;
        case O_COORD: coordinator = 1; break;
        case O_SHARDS: c->shards = optarg; break;
        case O_STIME: if (parse_size(optarg, 1, 86400, &v)) goto bad; c->shard_timeout_s = (double)v; break;
        case O_MERGE:
            if (strcmp(optarg, "parallel") && strcmp(optarg, "threshold")) {
                fprintf(stderr, "--merge is parallel or threshold\n");
                return 2;
            }
            c->merge_threshold = strcmp(optarg, "threshold") == 0;
            break;
        case O_EAGER: {
            static const char *modes[] = {"none", "before", "fit", "all"};
            int found = -1;
            for (int i = 0; i < 4; i++)
                if (strcmp(optarg, modes[i]) == 0) found = i;
            if (found < 0) {
                fprintf(stderr, "--eager-layers is none, before, fit or all\n");
                return 2;
            }
            c->eager_layers = found;
            break;
        }
        case O_PARTS:
            if (strcmp(optarg, "sampled") && strcmp(optarg, "exact")) {
                fprintf(stderr, "--partitioning is sampled or exact\n");
                return 2;
            }
            c->exact_partitions = strcmp(optarg, "exact") == 0;
            break;
        case O_LAYOUT:
            if (strcmp(optarg, "auto") && strcmp(optarg, "contiguous") && strcmp(optarg, "channels-last")) {
                fprintf(stderr, "--layout is auto, contiguous or channels-last\n");
                return 2;
            }
            c->layout = strcmp(optarg, "contiguous") == 0 ? 1 : strcmp(optarg, "channels-last") == 0 ? 2 : 0;
            break;
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        continue;
    bad:
        for (const struct option *op = opts; op->name; op++)
            if (op->val == o) fprintf(stderr, "bad value '%s' for --%s\n", optarg, op->name);
        return 2;
    }
    if (do_routes) {
        http_routes_each(coordinator, print_route, NULL);
        return 0;
    }
    if (optind != argc || (coordinator ? (c->data_dir || !c->shards) : !c->data_dir) || (!coordinator && c->shards)) {
        if (coordinator && c->data_dir) fprintf(stderr, "a coordinator holds no data: drop --data\n");
        else if (coordinator) fprintf(stderr, "--coordinator needs --shards URL[,URL...]\n");
        else if (c->shards) fprintf(stderr, "--shards goes with --coordinator\n");
        usage(stderr);
        return 2;
    }
    if (coordinator) return coordinator_main(&A);
    if (do_stat) return stat_main(c->data_dir);
    if (!c->static_dir) c->static_dir = default_static_dir();
    if (c->token_file && !(c->token = read_token(c->token_file))) {
        fprintf(stderr, "--token-file %s: cannot read a token from it\n", c->token_file);
        return 2;
    }

    /* Signals are taken synchronously by this thread: block them before any
     * thread (torch's pool, MHD's) exists, so they all inherit the mask. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    char err[512];
    if (shim_init(c->threads, err, sizeof err) != 0) {
        fprintf(stderr, "torch: %s\n", err);
        return 1;
    }
    /* A query allocates a few MiB of per-input arrays (bounds, order, marks)
     * and frees them; glibc's defaults hand such blocks back to the kernel
     * and fault them in again on the next query (0.6 ms of a 2 ms query
     * at 70,000 inputs). Keep blocks up to 16 MiB in the heap, trimmed past
     * 32 MiB free; larger ones (an index build's) still map and unmap. */
    mallopt(M_MMAP_THRESHOLD, 16 << 20);
    mallopt(M_TRIM_THRESHOLD, 32 << 20);
    /* a query's passes over its inputs run between its forwards: the same
     * cores (helper threads, asleep between passes) */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    eng_threads(c->threads > 0 ? c->threads : ncpu > 0 ? (int)ncpu : 1);
    A.device_name = (strcmp(c->device, "cpu") != 0 && shim_cuda_available()) ? "cuda" : "cpu";
    if (strcmp(c->device, "cuda") == 0 && !shim_cuda_available()) {
        fprintf(stderr, "--device cuda: no CUDA device is usable by this LibTorch build\n");
        return 1;
    }
    if (store_open(c->data_dir, c->map_mb << 20, &A.st, err, sizeof err) != STORE_OK) {
        fprintf(stderr, "store: %s\n", err);
        return 1;
    }
    A.cache = cache_new(c->cache_mb << 20);
    if (!A.cache || registry_new(&A.models) != 0) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    registry_load_all(&A);
    if (jobs_start(&A, err, sizeof err) != 0) {
        fprintf(stderr, "jobs: %s\n", err);
        return 1;
    }
    if (http_start(&A, err, sizeof err) != 0) {
        fprintf(stderr, "http: %s\n", err);
        return 1;
    }
    log_msg("deepeverestd %s listening on http://%s:%d/ (device %s, data %s)", DE_VERSION,
            c->listen_host, http_port(), A.device_name, c->data_dir);

    int sig = 0;
    sigwait(&sigs, &sig);
    log_msg("signal %d: draining in-flight requests", sig);
    atomic_store(&A.stopping, 1);
    jobs_cancel_all(&A);
    http_stop(&A, 30.0);
    jobs_stop(&A);
    eng_threads(1); /* no query runs now: joins the engine's helpers */
    registry_free(A.models);
    cache_free(A.cache);
    store_close(A.st);
    free(c->token);
    log_msg("stopped");
    return 0;
}
