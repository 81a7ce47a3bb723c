/* build.c -- index builds (see build.h). */
#include "build.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder_core.h"
#include "builder_stream.h"
#include "catalog.h"
#include "eager.h"
#include "infer.h"
#include "inputs.h"
#include "npi.h"
#include "shape.h"

/* Blobs go out in write transactions of about 16 MiB: LMDB holds a write
 * transaction's dirty pages in memory (malloc'd), and other writers wait for
 * it. Not larger: 64 MiB of dirty pages outgrow the thread's first malloc
 * heap, glibc unmaps the extra heaps at every commit, and the next
 * transaction faults fresh memory in again (measured on a pool1 build: puts
 * took 0.8 s at 64 MiB, 0.06-0.12 s at 16 MiB; commits 0.6 s either way). */
#define TXN_BYTES (16u << 20)

/* ---- parameters ---- */

void build_params_resolve(const build_params *req, uint64_t n, build_params *out)
{
    *out = *req;
    out->budget = req->budget > 0 ? req->budget : 0.2;
    if (req->kind == STORE_INDEX_FULL) { /* raw columns: the core wants valid index parameters anyway */
        out->partitions = 2;
        out->mai_ratio = 0;
        return;
    }
    shape_pick(n, out->budget, &out->partitions, &out->mai_ratio);
}

/* ---- a build job ---- */

typedef struct build_job {
    char layers[BUILD_MAX_LAYERS][STORE_LAYER_MAX];
    build_params p;
} build_job;

/* What the pass produced for each layer. */
typedef struct layer_out {
    int ok;                      /* blobs all committed */
    uint64_t bytes, digest;
    char error[STORE_ERR_MAX];
} layer_out;

typedef struct emit_ctx {
    app *a;
    job *j;
    unsigned bit;                /* the layer's part bit: a drop stops the emits */
    store_txn *txn;
    uint32_t index;
    uint64_t bytes, pending, digest;
    int store_rc;
    char msg[256];               /* why a write failed (bcore_finish only says "stopped") */
} emit_ctx;

/* The index digest: a 64-bit hash of every entry in neuron order, each
 * entry's 8-byte words (the last zero-padded) in four multiply-rotate lanes
 * seeded by the digest so far, folded and finalized per entry. It replaced
 * byte-wise FNV-1a, whose one dependent multiply per byte held up the
 * finish: pool1's 343 MB index over 70,000 inputs finished in 930-950 ms
 * with it, 540-590 ms without; four lanes run at memory speed. Equal digests: identical indexes (digests of builds from
 * before the change were FNV-1a's and are not comparable with these). */
#define DIGEST_SEED 0xcbf29ce484222325ull
#define DIGEST_PRIME 0x9e3779b97f4a7c15ull

static inline uint64_t digest_step(uint64_t h, uint64_t w)
{
    h = (h ^ w) * DIGEST_PRIME;
    return h << 29 | h >> 35;
}

static uint64_t digest_add(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t l0 = h, l1 = h ^ 0x243f6a8885a308d3ull, l2 = h ^ 0x13198a2e03707344ull, l3 = h ^ 0xa4093822299f31d0ull;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        uint64_t w[4];
        memcpy(w, b + i, sizeof w);
        l0 = digest_step(l0, w[0]);
        l1 = digest_step(l1, w[1]);
        l2 = digest_step(l2, w[2]);
        l3 = digest_step(l3, w[3]);
    }
    for (; i < n; i += 8) {
        uint64_t w = 0;
        memcpy(&w, b + i, n - i < 8 ? n - i : 8);
        l0 = digest_step(l0, w);
    }
    uint64_t x = l0 ^ (l1 << 16 | l1 >> 48) ^ (l2 << 32 | l2 >> 32) ^ (l3 << 48 | l3 >> 16) ^ (uint64_t)n;
    x ^= x >> 33; /* murmur3's finalizer: every input bit reaches every output bit */
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static int emit_blob(uint64_t neuron, const void *blob, size_t len, void *arg)
{
    emit_ctx *x = arg;
    if (jobs_cancelled(x->a, x->j) || (jobs_dropped(x->j) & x->bit)) {
        snprintf(x->msg, sizeof x->msg, "cancelled");
        return 1;
    }
    int rc = store_neuron_put(x->txn, x->index, (uint32_t)neuron, blob, len);
    if (rc == STORE_OK) {
        x->digest = digest_add(x->digest, blob, len);
        x->bytes += len;
        x->pending += len;
        if (x->pending < TXN_BYTES) return 0;
        x->pending = 0;
        rc = store_txn_commit(x->txn);
        x->txn = NULL;
        if (rc == STORE_OK) rc = store_txn_begin(x->a->st, 0, &x->txn);
        if (rc == STORE_OK) return 0;
    }
    x->store_rc = rc;
    snprintf(x->msg, sizeof x->msg, "%s",
             rc == STORE_FULL ? "the store is full (LMDB map size or disk reached)" : store_errmsg());
    return 1;
}

/* Frees the cores of layers dropped since the last call and acknowledges
 * the drops (no write txn is open here). Nonzero: the whole job stops. */
static int poll_job(app *a, job *j, bcore **bc, bstream **bs, int nlayers, unsigned *handled)
{
    unsigned d = jobs_dropped(j) & ~*handled;
    if (d) {
        for (int l = 0; l < nlayers; l++)
            if (d & 1u << l) {
                bcore_free(bc[l]);
                bc[l] = NULL;
                bstream_free(bs[l]);
                bs[l] = NULL;
            }
        *handled |= d;
        jobs_ack(a, j, d);
    }
    return jobs_cancelled(a, j);
}

/* One pass over the dataset: every input at every layer of the build, each
 * layer into its builder core, and the query's candidates into ans->heap.
 * Layers dropped on the way are skipped (out[l].ok = 0, no error). Returns
 * 0 when the pass itself completed (see out[] for each layer), -1 with err
 * when it stopped (cancelled, timed out, inference failed). */
static int build_pass(app *a, registry_model *m, const store_dataset *d, job *j, const build_job *bj,
                      const int *shim_layers, build_answer *ans, const volatile int *cancel, layer_out *out,
                      int *store_rc, char *err, size_t errlen)
{
    int rc = -1, nlayers = j->nparts;
    uint32_t n = (uint32_t)d->count;
    size_t numel = inputs_numel(d);
    bcore *bc[BUILD_MAX_LAYERS] = {0};
    bstream *bs[BUILD_MAX_LAYERS] = {0};
    float *outs[BUILD_MAX_LAYERS] = {0};
    infer_out io[BUILD_MAX_LAYERS];
    float *in = NULL, *gx = NULL;
    uint32_t *ids = NULL, *gids = NULL;
    store_txn *t = NULL;
    unsigned handled = jobs_dropped(j); /* parts dropped while queued */
    uint32_t mai = npi_mai_count(n, bj->p.mai_ratio);
    /* phase times for the log: where a build's time beyond inference goes */
    double t_load = 0, t_infer = 0, t_add = 0, t_sample = 0, t_mark;
    int threads = a->cfg.threads > 0 ? a->cfg.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    *store_rc = STORE_OK;

    /* The rows of one step of the pass (4 forwards, fewer for wide layers:
     * at most an eighth of the budget, at least one forward) come out of
     * the budget; the cores share the rest. Layers that fit whole stay in
     * memory, the others spill (see bcore_plan_budgets). */
    size_t budget = a->cfg.build_memory_mb << 20, row_bytes = 0;
    uint64_t layer_bytes[BUILD_MAX_LAYERS];
    size_t budgets[BUILD_MAX_LAYERS];
    for (int l = 0; l < nlayers; l++) {
        layer_bytes[l] = (uint64_t)n * shim_layer_at(m->shim, shim_layers[l])->neurons * sizeof(float);
        row_bytes += (size_t)shim_layer_at(m->shim, shim_layers[l])->neurons * sizeof(float);
    }
    size_t chunk = (size_t)m->batch * 4;
    while (chunk > m->batch && chunk * row_bytes > budget / 8) chunk -= m->batch;
    size_t rows_bytes = chunk * row_bytes, avail = rows_bytes < budget ? budget - rows_bytes : 0;
    /* Partition indexes are cut at a sample in the pass (builder_stream.h)
     * where their state fits, smallest first; the rest, and full
     * materializations, go through builder_core. */
    uint32_t samples = bj->p.kind == STORE_INDEX_NPI && !a->cfg.exact_partitions ? bstream_sample_count(n) : 0;
    int streamed[BUILD_MAX_LAYERS] = {0}, any_stream = 0;
    if (samples) {
        size_t used = 0;
        for (;;) {
            int best = -1;
            size_t best_b = 0;
            for (int l = 0; l < nlayers; l++) {
                if (streamed[l] || (handled & 1u << l)) continue;
                size_t sb = bstream_bytes(n, shim_layer_at(m->shim, shim_layers[l])->neurons, bj->p.partitions, mai,
                                          samples);
                if (best < 0 || sb < best_b) best = l, best_b = sb;
            }
            if (best < 0 || used + best_b > avail) break;
            used += best_b;
            streamed[best] = any_stream = 1;
            layer_bytes[best] = 0; /* no share of the cores' budget */
        }
        avail -= used;
    }
    bcore_plan_budgets(avail, nlayers, layer_bytes, budgets);
    for (int l = 0; l < nlayers; l++) {
        const shim_layer *ly = shim_layer_at(m->shim, shim_layers[l]);
        if (!(outs[l] = malloc(chunk * (size_t)ly->neurons * sizeof(float)))) goto oom;
        io[l] = (infer_out){.layer = shim_layers[l], .dst = outs[l]};
        if (handled & 1u << l) continue;
        if (streamed[l]) {
            if (bstream_new(n, (uint64_t)ly->neurons, bj->p.partitions, mai, samples, &bs[l], err, errlen) != 0)
                goto fail;
            bstream_set_threads(bs[l], threads > 1 ? 2 : 1);
            continue;
        }
        if (bcore_new(n, (uint64_t)ly->neurons, bj->p.partitions, mai, budgets[l], a->cfg.data_dir, &bc[l], err,
                      errlen) != 0)
            goto fail;
        if (bj->p.kind == STORE_INDEX_FULL) bcore_set_raw(bc[l], 1);
        bcore_set_transpose_threads(bc[l], threads > 1 ? 2 : 1);
    }
    in = malloc(chunk * numel * sizeof(float));
    ids = malloc(chunk * sizeof *ids);
    gids = malloc(chunk * sizeof *gids);
    if (ans) gx = malloc(ans->q->gsize * sizeof *gx);
    if (!in || !ids || !gids || (ans && !gx)) goto oom;
    atomic_store(&j->total, n);

    /* Phase 0, the sample: inputs spread over the dataset, so that the cuts
     * do not depend on how the dataset is ordered (samples <= n/8 inputs).
     * Phase 1, the pass: every input in order. infer_run computes each input
     * in a slot of its id's class (README "Exactness") in both, so the cut
     * values are the very bits the pass and every query compute. */
    for (int phase = any_stream ? 0 : 1; phase < 2; phase++) {
        const uint32_t total = phase ? n : samples;
        const double t_phase = clock_ms();
        for (uint32_t off = 0; off < total; off += (uint32_t)chunk) {
            uint32_t cnt = total - off < chunk ? total - off : (uint32_t)chunk;
            if (poll_job(a, j, bc, bs, nlayers, &handled) || (cancel && *cancel)) {
                snprintf(err, errlen, "cancelled");
                goto fail;
            }
            if (ans && ans->deadline_ms > 0 && clock_ms() > ans->deadline_ms) {
                ans->timed_out = 1;
                snprintf(err, errlen, "time limit reached");
                goto fail;
            }
            for (uint32_t i = 0; i < cnt; i++) {
                ids[i] = phase ? off + i : bstream_sample_id(n, samples, off + i);
                gids[i] = (uint32_t)(d->first + ids[i]);
            }
            t_mark = clock_ms();
            if (store_txn_begin(a->st, 1, &t) != STORE_OK) {
                snprintf(err, errlen, "store: %s", store_errmsg());
                goto fail;
            }
            if (inputs_load(t, d, ids, cnt, in, err, errlen) != 0) goto fail;
            store_txn_abort(t);
            t = NULL;
            if (phase) t_load += clock_ms() - t_mark;
            infer_turn_begin(m);
            t_mark = clock_ms();
            int ir = infer_run(a, m, gids, in, cnt, io, nlayers, NULL, err, errlen);
            if (phase) t_infer += clock_ms() - t_mark;
            infer_turn_end(m);
            if (ir != 0) goto fail;
            if (!phase) {
                for (int l = 0; l < nlayers; l++)
                    if (bs[l] && bstream_sample(bs[l], outs[l], cnt, err, errlen) != 0) goto fail;
                t_sample = clock_ms() - t_phase;
                continue;
            }
            t_mark = clock_ms();
            for (int l = 0; l < nlayers; l++) {
                if (bc[l] && bcore_add(bc[l], outs[l], off, cnt, err, errlen) != 0) goto fail;
                if (bs[l] && bstream_add(bs[l], outs[l], off, cnt, err, errlen) != 0) goto fail;
            }
            t_add += clock_ms() - t_mark;
            if (ans) {
                const eng_query *q = ans->q;
                size_t D = (size_t)shim_layer_at(m->shim, shim_layers[0])->neurons;
                const float *rows = outs[0];
                for (uint32_t i = 0; i < cnt; i++) {
                    uint32_t id = off + i;
                    if ((int64_t)id == q->exclude || (q->allowed && !q->allowed[id])) continue;
                    for (size_t g = 0; g < q->gsize; g++) gx[g] = rows[i * D + q->neurons[g]];
                    eng_topk_push(ans->heap, id, eng_score(q, gx));
                    ans->scored++;
                }
            }
            atomic_store(&j->done, (unsigned long long)off + cnt);
        }
    }
    /* Inference is done; free its buffers before the sort needs memory. */
    for (int l = 0; l < nlayers; l++) {
        free(outs[l]);
        outs[l] = NULL;
    }
    if (any_stream)
        log_msg("build pass over %u inputs: a sample of %u in %.0f ms, load %.0f ms, inference %.0f ms, into the "
                "builders %.0f ms", n, samples, t_sample, t_load, t_infer, t_add);
    else
        log_msg("build pass over %u inputs: load %.0f ms, inference %.0f ms, into the builders %.0f ms", n, t_load,
                t_infer, t_add);
    for (int l = 0; l < nlayers; l++) {
        if (poll_job(a, j, bc, bs, nlayers, &handled)) {
            snprintf(err, errlen, "cancelled");
            goto fail;
        }
        if (!bc[l] && !bs[l]) continue; /* dropped */
        t_mark = clock_ms();
        emit_ctx x = {.a = a, .j = j, .bit = 1u << l, .index = j->parts[l], .digest = DIGEST_SEED};
        int r = store_txn_begin(a->st, 0, &x.txn);
        if (r != STORE_OK) {
            x.store_rc = r;
            snprintf(x.msg, sizeof x.msg, "%s", store_errmsg());
            r = -1;
        } else {
            r = bs[l] ? bstream_finish(bs[l], emit_blob, &x, err, errlen)
                      : bcore_finish(bc[l], threads, emit_blob, &x, err, errlen);
        }
        if (r == 0) {
            int crc = store_txn_commit(x.txn);
            x.txn = NULL;
            if (crc != STORE_OK) {
                x.store_rc = crc;
                snprintf(x.msg, sizeof x.msg, "%s",
                         crc == STORE_FULL ? "the store is full (LMDB map size or disk reached)" : store_errmsg());
                r = -1;
            }
        }
        store_txn_abort(x.txn);
        if (r != 0) {
            if (jobs_dropped(j) & 1u << l) continue; /* dropped while being written: acked at the next poll */
            if (jobs_cancelled(a, j)) {
                snprintf(err, errlen, "cancelled");
                goto fail;
            }
            snprintf(out[l].error, sizeof out[l].error, "%s", x.store_rc != STORE_OK ? x.msg : err);
            if (x.store_rc != STORE_OK) *store_rc = x.store_rc;
            if (x.store_rc == STORE_FULL) { /* nothing more fits: the layers after fail alike */
                for (int k = l + 1; k < nlayers; k++) snprintf(out[k].error, sizeof out[k].error, "%s", x.msg);
                break;
            }
            continue;
        }
        out[l].ok = 1;
        out[l].bytes = x.bytes;
        out[l].digest = x.digest;
        if (bs[l])
            log_msg("index %u: layer finished in %.0f ms, %llu bytes, partitions cut at the sample, peak %zu bytes of "
                    "builder state", j->parts[l], clock_ms() - t_mark, (unsigned long long)x.bytes,
                    bstream_peak_bytes(bs[l]));
        else
            log_msg("index %u: layer built in %.0f ms, %llu bytes, peak %zu activation bytes%s", j->parts[l],
                    clock_ms() - t_mark, (unsigned long long)x.bytes, bcore_peak_bytes(bc[l]),
                    bcore_spilled(bc[l]) ? (bcore_spill_direct(bc[l]) ? " (spilled) with direct I/O" : " (spilled)")
                                         : "");
        bcore_free(bc[l]);
        bc[l] = NULL;
        bstream_free(bs[l]);
        bs[l] = NULL;
    }
    poll_job(a, j, bc, bs, nlayers, &handled);
    rc = 0;
    goto fail;
oom:
    snprintf(err, errlen, "out of memory for the build buffers");
fail:
    store_txn_abort(t);
    for (int l = 0; l < nlayers; l++) {
        bcore_free(bc[l]);
        bstream_free(bs[l]);
        free(outs[l]);
    }
    free(in);
    free(ids);
    free(gids);
    free(gx);
    return rc;
}

/* ---- records ---- */

/* Creates the PENDING index records (one per layer not reused) and the job
 * record in one transaction, under the catalog lock: the model must still be
 * the registered one and the dataset READY, so a delete in progress wins. */
static int create_records(app *a, registry_model *m, const store_dataset *d, job *j, const build_job *bj,
                          const uint64_t *neurons, int state, proto_err *e)
{
    store_txn *t;
    int rc = store_txn_begin(a->st, 0, &t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    store_model mr;
    store_dataset dr;
    registry_model *cur = registry_get(a->models, m->name);
    int alive = cur == m && store_model_get(t, m->name, &mr) == STORE_OK &&
                store_dataset_get(t, d->name, &dr) == STORE_OK && dr.state == STORE_READY && dr.id == d->id;
    registry_release(cur);
    if (!alive) {
        store_txn_abort(t);
        return proto_fail(e, 409, "deleted", "model '%s' or dataset '%s' was deleted or replaced meanwhile", m->name,
                          d->name);
    }
    store_job jr = {0};
    rc = store_take_id(t, "job", bj->p.job_id, &jr.id);
    if (rc == STORE_EXISTS) {
        store_txn_abort(t);
        return proto_fail(e, 409, "job_id_taken", "job id %u is taken on this daemon", bj->p.job_id);
    }
    snprintf(jr.kind, sizeof jr.kind, "%s", j->ops->kind);
    snprintf(jr.model, sizeof jr.model, "%s", m->name);
    snprintf(jr.dataset, sizeof jr.dataset, "%s", d->name);
    jr.state = state;
    jr.total = d->count;
    jr.created = clock_unix();
    if (state == JOB_RUNNING) jr.started = jr.created;
    jr.nindexes = (uint32_t)j->nparts;
    for (int l = 0; l < j->nparts && rc == STORE_OK; l++) {
        store_index ix = {0};
        rc = store_next_id(t, "index", &ix.id);
        ix.kind = bj->p.kind;
        snprintf(ix.model, sizeof ix.model, "%s", m->name);
        snprintf(ix.dataset, sizeof ix.dataset, "%s", d->name);
        snprintf(ix.layer, sizeof ix.layer, "%s", bj->layers[l]);
        ix.state = STORE_PENDING;
        ix.partitions = bj->p.kind == STORE_INDEX_FULL ? 0 : bj->p.partitions;
        ix.mai_ratio = bj->p.kind == STORE_INDEX_FULL ? 1.0f : (float)bj->p.mai_ratio;
        ix.count = d->count;
        ix.neurons = neurons[l];
        ix.full_bytes = 4 * d->count * neurons[l];
        ix.job = jr.id;
        ix.batch = m->batch;
        ix.created = clock_unix();
        if (rc == STORE_OK) rc = store_index_put(t, &ix);
        j->parts[l] = ix.id;
        jr.indexes[l] = ix.id;
    }
    if (rc == STORE_OK) rc = store_job_put(t, &jr);
    if (rc == STORE_OK)
        rc = store_txn_commit(t);
    else
        store_txn_abort(t);
    if (rc != STORE_OK) return catalog_store_fail(rc, NULL, e);
    j->id = jr.id;
    return 0;
}

/* Records the end of job j in one transaction: each layer not dropped is
 * READY (with its size and digest), FAILED (its record kept with the reason,
 * its blobs deleted) or, when the job was cancelled, deleted altogether. */
static void finish_records(app *a, job *j, const layer_out *out, int cancelled, const char *why, double build_s)
{
    store_txn *t;
    if (store_txn_begin(a->st, 0, &t) != STORE_OK) {
        log_msg("job %u: cannot record its end: %s", j->id, store_errmsg());
        return;
    }
    unsigned dropped = jobs_dropped(j);
    int all_ok = !cancelled;
    const char *first_error = NULL;
    for (int l = 0; l < j->nparts; l++) {
        if (dropped & 1u << l) continue; /* deleted by whoever dropped it */
        store_index ix;
        if (store_index_get(t, j->parts[l], &ix) != STORE_OK) continue;
        if (cancelled) {
            store_index_del(t, ix.id);
            continue;
        }
        ix.build_s = build_s;
        if (out[l].ok) {
            ix.state = STORE_READY;
            ix.bytes = out[l].bytes;
            ix.digest = out[l].digest;
            store_index_put(t, &ix);
        } else {
            all_ok = 0;
            ix.state = STORE_FAILED;
            ix.bytes = 0;
            snprintf(ix.error, sizeof ix.error, "%s", out[l].error[0] ? out[l].error : why);
            if (!first_error) first_error = out[l].error[0] ? out[l].error : why;
            store_index_del(t, ix.id); /* record and blobs */
            store_index_put(t, &ix);
        }
    }
    store_job jr;
    if (store_job_get(t, j->id, &jr) == STORE_OK) {
        jr.state = all_ok ? JOB_DONE : JOB_FAILED;
        jr.done = all_ok ? jr.total : atomic_load(&j->done);
        jr.finished = clock_unix();
        jr.cancelled = cancelled;
        if (!all_ok)
            snprintf(jr.error, sizeof jr.error, "%s", cancelled ? "cancelled" : first_error ? first_error : why);
        store_job_put(t, &jr);
    }
    if (store_txn_commit(t) != STORE_OK) log_msg("job %u: cannot record its end: %s", j->id, store_errmsg());
}

static void build_job_free(void *p) { free(p); }

/* A queued build cancelled before it ran: its records go, the job fails. */
static void build_abandon(app *a, job *j)
{
    layer_out out[BUILD_MAX_LAYERS] = {0};
    finish_records(a, j, out, 1, "cancelled", 0);
    log_msg("job %u: cancelled before it ran", j->id);
}

static void build_run(app *a, job *j)
{
    build_job *bj = j->payload;
    char err[512] = "";
    int store_rc = STORE_OK, cancelled = 0;
    layer_out out[BUILD_MAX_LAYERS] = {0};
    double t0 = clock_ms();
    int shim_layers[BUILD_MAX_LAYERS];
    registry_model *m = registry_get(a->models, j->model);
    store_dataset d;
    proto_err e;
    /* QUEUED -> RUNNING */
    store_txn *t;
    if (store_txn_begin(a->st, 0, &t) == STORE_OK) {
        store_job jr;
        if (store_job_get(t, j->id, &jr) == STORE_OK) {
            jr.state = JOB_RUNNING;
            jr.started = clock_unix();
            store_job_put(t, &jr);
        }
        store_txn_commit(t);
    }
    int ok = 0;
    if (!m)
        snprintf(err, sizeof err, "model '%s' is not loaded", j->model);
    else if (catalog_dataset(a, j->dataset, &d, &e) != 0)
        snprintf(err, sizeof err, "%s", e.message);
    else {
        ok = 1;
        for (int l = 0; l < j->nparts && ok; l++)
            if ((shim_layers[l] = catalog_layer(m, bj->layers[l], &e)) < 0) {
                snprintf(err, sizeof err, "%s", e.message);
                ok = 0;
            }
        if (ok) ok = build_pass(a, m, &d, j, bj, shim_layers, NULL, NULL, out, &store_rc, err, sizeof err) == 0;
    }
    cancelled = jobs_cancelled(a, j) && !atomic_load(&a->stopping);
    double secs = (clock_ms() - t0) / 1000;
    finish_records(a, j, out, cancelled, err, secs);
    int n_ok = 0;
    for (int l = 0; l < j->nparts; l++) n_ok += out[l].ok;
    log_msg("job %u: index build %s in %.2f s (%d of %d layers built)%s%s", j->id,
            cancelled ? "cancelled" : ok && n_ok ? "done" : "failed", secs, n_ok, j->nparts, ok ? "" : ": ",
            ok ? "" : err);
    registry_release(m);
}

static const job_ops BUILD_OPS = {"index", build_run, build_abandon, build_job_free};
static const job_ops MATERIALIZE_OPS = {"materialize", build_run, build_abandon, build_job_free};

/* ---- eager layers ---- */

/* What indexing a layer in the pass costs per byte of its activations,
 * measured on the CI-class machine (2 cores), writing the index included:
 * cut at a sample in the pass (builder_stream.h) ~1.5 ns (0.9 in the pass,
 * 0.6 writing it), ranked whole after it (builder_core.h) ~2.5 -- when
 * bstream_probe_ms took BUILD_PROBE_REF_MS_* there (the fastest of five,
 * on 2 threads, or 1 with --threads 1); scaled by the model's probe
 * (registry.h): a machine slowed while the forwards were timed slows it
 * too (measured: forwards 1.35x and 1.5x slower, probe 1.2x and 1.5x). */
#define BUILD_EAGER_NS_PER_BYTE_STREAM 1.5
#define BUILD_EAGER_NS_PER_BYTE_EXACT 2.5
#define BUILD_PROBE_REF_MS_2T 8.1
#define BUILD_PROBE_REF_MS_1T 10.9

typedef struct eager_pick {
    int layer;
    uint64_t bytes;
} eager_pick;

static int by_bytes(const void *a, const void *b)
{
    const eager_pick *x = a, *y = b;
    if (x->bytes != y->bytes) return x->bytes < y->bytes ? -1 : 1;
    return x->layer - y->layer;
}

/* What building one layer's index holds: the pass-time state where it is
 * cut at a sample (as build_pass decides), else its activations. */
static uint64_t hold_bytes(const app *a, uint32_t n, uint64_t neurons, const build_params *p)
{
    uint32_t samples = p->kind == STORE_INDEX_NPI && !a->cfg.exact_partitions ? bstream_sample_count(n) : 0;
    if (samples)
        return bstream_bytes(n, neurons, p->partitions, npi_mai_count(n, p->mai_ratio), samples);
    return (uint64_t)n * neurons * 4;
}

/* Adds to layers[0..*n) (the asked ones, as shim indexes) the layers the
 * policy p->eager indexes in the same pass (see build.h, eager.h). */
static void pick_eager(app *a, registry_model *m, const store_dataset *d, const build_params *p, int *layers, int *n)
{
    if (p->eager == EAGER_NONE || p->kind != STORE_INDEX_NPI) return;
    if (p->eager == EAGER_FIT && !m->layer_ms) return; /* no timings: nothing to weigh */
    int L = shim_layer_count(m->shim), deepest = 0;
    if (L > 256) L = 256;
    uint64_t used = 0, budget = (uint64_t)a->cfg.build_memory_mb << 20;
    eager_layer ly[256] = {{0}};
    for (int i = 0; i < *n; i++) {
        if (layers[i] > deepest) deepest = layers[i];
        used += hold_bytes(a, (uint32_t)d->count, shim_layer_at(m->shim, layers[i])->neurons, p);
        if (layers[i] < L) ly[layers[i]].role = EAGER_ASKED;
    }
    /* in memory beside the others (an eighth kept for the pass's rows), unless "all" */
    uint64_t room = budget - budget / 8;
    uint64_t mem_left = p->eager == EAGER_ALL ? UINT64_MAX : used < room ? room - used : 0;
    double ns_per_byte = a->cfg.exact_partitions ? BUILD_EAGER_NS_PER_BYTE_EXACT : BUILD_EAGER_NS_PER_BYTE_STREAM;
    if (m->index_probe_ms > 0)
        ns_per_byte *= m->index_probe_ms / (a->cfg.threads == 1 ? BUILD_PROBE_REF_MS_1T : BUILD_PROBE_REF_MS_2T);
    const double batches = (double)((d->count + m->batch - 1) / m->batch);
    store_txn *t;
    if (store_txn_begin(a->st, 1, &t) != STORE_OK) return;
    for (int l = 0; l < L; l++) {
        const shim_layer *sl = shim_layer_at(m->shim, l);
        uint64_t bytes = d->count * (uint64_t)sl->neurons * 4;
        ly[l].forward_s = m->layer_ms ? m->layer_ms[l] * batches / 1000 : 0;
        ly[l].index_s = (double)bytes * ns_per_byte * 1e-9;
        ly[l].hold_bytes = hold_bytes(a, (uint32_t)d->count, sl->neurons, p);
        if (ly[l].role == EAGER_ASKED || (l > deepest && p->eager == EAGER_BEFORE)) continue;
        store_index same = {0};
        if (!catalog_find_same(t, m->name, d->name, sl->name, p->kind, p->partitions, (float)p->mai_ratio, &same))
            ly[l].role = EAGER_CANDIDATE;
    }
    store_txn_abort(t);
    int pick[256], np = 0;
    if (p->eager == EAGER_FIT) {
        np = eager_fit(ly, L, mem_left, pick, BUILD_MAX_LAYERS - *n);
    } else {
        /* before, all: smallest first, while they fit */
        eager_pick cand[256];
        int nc = 0;
        for (int l = 0; l < L; l++)
            if (ly[l].role == EAGER_CANDIDATE) cand[nc++] = (eager_pick){l, ly[l].hold_bytes};
        if (nc > 1) qsort(cand, (size_t)nc, sizeof *cand, by_bytes);
        for (int i = 0; i < nc && np < BUILD_MAX_LAYERS - *n; i++) {
            if (cand[i].bytes > mem_left) continue;
            mem_left -= p->eager == EAGER_ALL ? 0 : cand[i].bytes;
            pick[np++] = cand[i].layer;
        }
    }
    for (int i = 0; i < np; i++) layers[(*n)++] = pick[i];
}

/* ---- submitting ---- */

int build_submit(app *a, const char *model, const char *dataset, const char *const *layers, int nlayers,
                 const build_params *req, build_submitted *out, proto_err *e)
{
    memset(out, 0, sizeof *out);
    out->nlayers = nlayers;
    store_dataset d;
    registry_model *m = catalog_model(a, model, e);
    job *j = NULL;
    build_job *bj = NULL;
    int rc = -1;
    int todo[BUILD_MAX_LAYERS], ntodo = 0;
    if (!m) return -1;
    if (catalog_dataset(a, dataset, &d, e) != 0 || catalog_check_fit(m, &d, e) != 0) goto out;
    build_params_resolve(req, d.count, &out->params);
    const build_params *p = &out->params;
    for (int l = 0; l < nlayers; l++)
        if (catalog_layer(m, layers[l], e) < 0) goto out;
    catalog_lock();
    store_txn *t;
    int src = store_txn_begin(a->st, 1, &t);
    if (src != STORE_OK) {
        catalog_unlock();
        catalog_store_fail(src, NULL, e);
        goto out;
    }
    for (int l = 0; l < nlayers; l++) {
        store_index same = {0};
        float ratio = p->kind == STORE_INDEX_FULL ? 1.0f : (float)p->mai_ratio;
        if (catalog_find_same(t, model, dataset, layers[l], p->kind, p->partitions, ratio, &same)) {
            out->ids[l] = same.id;
            out->reused[l] = 1;
        } else {
            todo[ntodo++] = l;
        }
    }
    store_txn_abort(t);
    /* the layers a pass for these would index too (only "eager" given) */
    int shim_todo[BUILD_MAX_LAYERS], nshim = 0;
    for (int i = 0; i < ntodo; i++) shim_todo[nshim++] = shim_layer_find(m->shim, layers[todo[i]]);
    if (ntodo) pick_eager(a, m, &d, p, shim_todo, &nshim);
    if (ntodo == 0) {
        catalog_unlock();
        rc = 0;
        goto out;
    }
    j = jobs_new(p->kind == STORE_INDEX_FULL ? &MATERIALIZE_OPS : &BUILD_OPS, model, dataset);
    bj = calloc(1, sizeof *bj);
    if (!j || !bj) {
        catalog_unlock();
        proto_fail(e, 500, "internal", "out of memory");
        goto out;
    }
    uint64_t todo_neurons[BUILD_MAX_LAYERS];
    for (int i = 0; i < nshim; i++) {
        snprintf(bj->layers[i], sizeof bj->layers[i], "%s", shim_layer_at(m->shim, shim_todo[i])->name);
        todo_neurons[i] = (uint64_t)shim_layer_at(m->shim, shim_todo[i])->neurons;
    }
    bj->p = *p;
    j->payload = bj;
    bj = NULL;
    j->nparts = nshim;
    atomic_store(&j->total, d.count);
    if (create_records(a, m, &d, j, j->payload, todo_neurons, JOB_QUEUED, e) != 0) {
        catalog_unlock();
        goto out;
    }
    for (int i = 0; i < ntodo; i++) out->ids[todo[i]] = j->parts[i];
    out->job = j->id;
    out->neager = nshim - ntodo;
    for (int i = ntodo; i < nshim; i++) out->eager_ids[i - ntodo] = j->parts[i];
    jobs_submit(a, j);
    catalog_unlock();
    j = NULL;
    rc = 0;
out:
    jobs_free(j);
    free(bj);
    registry_release(m);
    return rc;
}

int build_inline(app *a, registry_model *m, const store_dataset *d, const char *layer, const build_params *req,
                 build_answer *ans, const volatile int *cancel, uint32_t *index_id, proto_err *e)
{
    build_params resolved, *p = &resolved;
    build_params_resolve(req, d->count, &resolved);
    int li = catalog_layer(m, layer, e);
    if (li < 0) return -1;
    /* the asked layer first: the pass answers the query from part 0 */
    int layers[BUILD_MAX_LAYERS] = {li}, nl = 1;
    pick_eager(a, m, d, p, layers, &nl);
    uint64_t neurons[BUILD_MAX_LAYERS];
    job *j = jobs_new(&BUILD_OPS, m->name, d->name);
    build_job *bj = calloc(1, sizeof *bj);
    if (!j || !bj) {
        jobs_free(j);
        free(bj);
        return proto_fail(e, 500, "internal", "out of memory");
    }
    for (int l = 0; l < nl; l++) {
        snprintf(bj->layers[l], sizeof bj->layers[l], "%s", shim_layer_at(m->shim, layers[l])->name);
        neurons[l] = (uint64_t)shim_layer_at(m->shim, layers[l])->neurons;
    }
    bj->p = *p;
    j->payload = bj;
    j->nparts = nl;
    atomic_store(&j->total, d->count);
    catalog_lock();
    if (create_records(a, m, d, j, bj, neurons, JOB_RUNNING, e) != 0) {
        catalog_unlock();
        jobs_free(j);
        return -1;
    }
    jobs_attach(a, j);
    catalog_unlock();
    *index_id = j->parts[0];

    char err[512] = "";
    int store_rc;
    layer_out out[BUILD_MAX_LAYERS] = {0};
    double t0 = clock_ms();
    if (nl > 1) log_msg("job %u: the pass for layer '%s' indexes %d more layers (eager: %s)", j->id, layer, nl - 1,
                        proto_eager_names[p->eager]);
    int ok = build_pass(a, m, d, j, bj, layers, ans, cancel, out, &store_rc, err, sizeof err) == 0 && out[0].ok;
    /* a query that stopped (time limit, cancelled, its index deleted) keeps
     * none of the indexes its pass was making */
    int cancelled = (jobs_cancelled(a, j) && !atomic_load(&a->stopping)) || (jobs_dropped(j) & 1u) ||
                    ans->timed_out || (cancel && *cancel);
    double secs = (clock_ms() - t0) / 1000;
    finish_records(a, j, out, cancelled, out[0].error[0] ? out[0].error : err, secs);
    log_msg("job %u: inline index build of %s/%s/%s %s in %.2f s", j->id, m->name, d->name, layer,
            ok ? "done" : cancelled ? "cancelled" : "failed", secs);
    jobs_detach(a, j);
    if (ok) return 0;
    if (ans->timed_out)
        return proto_fail(e, 503, "query_timeout", "the query passed its time limit while building the index of "
                          "layer '%s' and was cancelled; no index was kept", layer);
    if (cancelled || (cancel && *cancel))
        return proto_fail(e, 503, "query_cancelled", "the query was cancelled: %s", err[0] ? err : "its index was "
                          "deleted");
    if (store_rc == STORE_FULL) return proto_fail(e, 507, "store_full", "%s", out[0].error);
    return proto_fail(e, 500, "build_failed", "building the index failed: %s", out[0].error[0] ? out[0].error : err);
}
