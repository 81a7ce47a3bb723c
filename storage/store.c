/* store.c -- storage/store.h over one LMDB environment.
 *
 * Named databases (all keys big-endian so that LMDB's memcmp order is the
 * numeric order and one object's pieces are contiguous):
 *   meta      "schema" -> u32 LE STORE_SCHEMA_VERSION; "id:<counter>" -> u32 LE
 *   models    name -> model record
 *   datasets  name -> dataset record
 *   inputs    BE u32 dataset id . BE u64 input id -> raw input bytes
 *   labels    BE u32 dataset id -> int32[count], native order
 *   indexes   BE u32 index id -> index record
 *   neurons   BE u32 index id . BE u32 neuron -> opaque blob
 *   jobs      BE u32 job id -> job record
 *   predictions  BE u32 dataset id . model name -> predictions record
 *   predicted    the same key -> int32[count]
 *   classes   BE u32 dataset id -> class names, NUL-terminated, back to back
 *
 * Records are encoded field by field in a fixed little-endian layout that
 * starts with a per-record version byte; strings are a u16 length and their
 * bytes. One function per record type describes the layout for both
 * directions (struct <-> bytes), so encoder and decoder cannot drift apart.
 * Fields are only ever appended, each version's after the last: a record of
 * an older version (1..REC_VERSION) decodes with the newer fields zeroed,
 * and is rewritten in the current version the next time it is put. Decoding
 * rejects a record whose version, length (it must be consumed exactly) or
 * counts (ndim, nchan, nindexes) are off, instead of handing garbage to the
 * caller. A change of the environment's layout bumps STORE_SCHEMA_VERSION.
 *
 * Beyond the PENDING sweep of store.h, store_open also drops inputs, labels
 * and neuron blobs whose owning dataset/index record does not exist (what a
 * crash between "write pieces" and "write record" would leave).
 */
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REC_VERSION 3          /* 2: model batch, dataset slice, index digest and batch, job owner;
                                  3: model layout and numerics */
#define REC_MAX 4096           /* every record fits: the longest string is a path */
#define DEFAULT_MAPSIZE ((size_t)64 << 30)
#define MIN_DEFAULT_MAPSIZE ((size_t)1 << 30)
#define MAX_READERS 512        /* MDB_NOTLS: every open read txn holds a slot */

enum { DB_META, DB_MODELS, DB_DATASETS, DB_INPUTS, DB_LABELS, DB_INDEXES, DB_NEURONS, DB_JOBS, DB_PREDICTIONS,
       DB_PREDICTED, DB_CLASSES, DB_COUNT };
static const char *const db_names[DB_COUNT] = {
    "meta", "models", "datasets", "inputs", "labels", "indexes", "neurons", "jobs", "predictions", "predicted",
    "classes",
};

struct store {
    MDB_env *env;
    MDB_dbi dbi[DB_COUNT];
    int have[DB_COUNT];        /* read-only opens: databases an older store lacks are empty */
    int readonly;
    int lock_fd;               /* DIR/deepeverest.lock, held while open (-1: none) */
};

/* Copies handed out by store_labels_get and store_neuron_get when LMDB's
 * pointer is misaligned; they live as long as the transaction. */
typedef struct txn_copy {
    struct txn_copy *next;
    max_align_t data[];
} txn_copy;

struct store_txn {
    store *s;
    MDB_txn *txn;
    txn_copy *copies;
};

/* ---- errors ---- */

static _Thread_local char errbuf[STORE_ERR_MAX * 2];

const char *store_errmsg(void)
{
    return errbuf;
}

static void seterr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void seterr(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, sizeof errbuf, fmt, ap);
    va_end(ap);
}

/* Maps an LMDB code to a store code, recording what failed. */
static int map_rc(int rc, const char *what)
{
    if (rc == MDB_SUCCESS) return STORE_OK;
    seterr("%s: %s", what, mdb_strerror(rc));
    switch (rc) {
    case MDB_NOTFOUND: return STORE_NOTFOUND;
    case MDB_KEYEXIST: return STORE_EXISTS;
    case MDB_MAP_FULL: return STORE_FULL;
    case ENOSPC: return STORE_FULL; /* the disk, rather than the map, is full */
    default: return STORE_ERROR;
    }
}

/* ---- keys ---- */

static void be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void be64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
}

/* ---- record codec ---- */

typedef struct codec {
    uint8_t *buf;
    size_t len, pos;
    int decode;
    int bad;
    int ver;                   /* the record's version (encode: REC_VERSION) */
} codec;

typedef void (*rec_fn)(codec *, void *);

static void cx_raw(codec *c, uint8_t *p, size_t n)
{
    if (c->bad) return;
    if (n > c->len - c->pos) {
        c->bad = 1;
        return;
    }
    if (c->decode)
        memcpy(p, c->buf + c->pos, n);
    else
        memcpy(c->buf + c->pos, p, n);
    c->pos += n;
}

static void cx_u64(codec *c, uint64_t *v)
{
    uint8_t b[8];
    if (!c->decode)
        for (int i = 0; i < 8; i++) b[i] = (uint8_t)(*v >> (8 * i));
    cx_raw(c, b, 8);
    if (c->decode && !c->bad) {
        uint64_t x = 0;
        for (int i = 0; i < 8; i++) x |= (uint64_t)b[i] << (8 * i);
        *v = x;
    }
}

static void cx_u32(codec *c, uint32_t *v)
{
    uint8_t b[4];
    if (!c->decode)
        for (int i = 0; i < 4; i++) b[i] = (uint8_t)(*v >> (8 * i));
    cx_raw(c, b, 4);
    if (c->decode && !c->bad) *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static void cx_u8(codec *c, uint8_t *v)
{
    cx_raw(c, v, 1);
}

static void cx_i64(codec *c, int64_t *v)
{
    uint64_t u = (uint64_t)*v;
    cx_u64(c, &u);
    if (c->decode) *v = (int64_t)u;
}

static void cx_int(codec *c, int *v)
{
    uint32_t u = (uint32_t)(int32_t)*v;
    cx_u32(c, &u);
    if (c->decode) *v = (int32_t)u;
}

static void cx_f32(codec *c, float *v)
{
    uint32_t u;
    memcpy(&u, v, 4);
    cx_u32(c, &u);
    if (c->decode) memcpy(v, &u, 4);
}

static void cx_f64(codec *c, double *v)
{
    uint64_t u;
    memcpy(&u, v, 8);
    cx_u64(c, &u);
    if (c->decode) memcpy(v, &u, 8);
}

/* A NUL-terminated string of a char[cap] field. */
static void cx_str(codec *c, char *s, size_t cap)
{
    uint8_t b[2];
    size_t n = 0;
    if (!c->decode) {
        n = strnlen(s, cap - 1);
        b[0] = (uint8_t)n;
        b[1] = (uint8_t)(n >> 8);
    }
    cx_raw(c, b, 2);
    if (c->bad) return;
    if (c->decode) {
        n = (size_t)b[0] | (size_t)b[1] << 8;
        if (n >= cap) {
            c->bad = 1;
            return;
        }
    }
    cx_raw(c, (uint8_t *)s, n);
    if (c->decode && !c->bad) s[n] = 0;
}

/* A count that bounds a following array: checked before the array is read. */
static void cx_count(codec *c, int *v, int max)
{
    cx_int(c, v);
    if (c->decode && (*v < 0 || *v > max)) c->bad = 1;
}

static void cx_version(codec *c)
{
    uint8_t v = REC_VERSION;
    cx_u8(c, &v);
    if (c->decode && (v < 1 || v > REC_VERSION)) c->bad = 1;
    c->ver = c->decode ? v : REC_VERSION;
}

static void rec_model(codec *c, void *rec)
{
    store_model *m = rec;
    cx_version(c);
    cx_str(c, m->name, sizeof m->name);
    cx_str(c, m->path, sizeof m->path);
    cx_count(c, &m->ndim, STORE_MAX_DIMS);
    for (int i = 0; i < m->ndim && !c->bad; i++) cx_i64(c, &m->input_shape[i]);
    cx_i64(c, &m->created);
    if (c->ver >= 2) cx_u32(c, &m->batch);
    if (c->ver >= 3) {
        cx_u32(c, &m->layout);
        cx_u64(c, &m->numerics);
    }
}

static void rec_dataset(codec *c, void *rec)
{
    store_dataset *d = rec;
    cx_version(c);
    cx_u32(c, &d->id);
    cx_str(c, d->name, sizeof d->name);
    cx_int(c, &d->state);
    cx_u64(c, &d->count);
    cx_count(c, &d->ndim, STORE_MAX_DIMS);
    for (int i = 0; i < d->ndim && !c->bad; i++) cx_i64(c, &d->shape[i]);
    cx_int(c, &d->dtype);
    cx_f32(c, &d->scale);
    cx_count(c, &d->nchan, STORE_MAX_CHANNELS);
    for (int i = 0; i < d->nchan && !c->bad; i++) {
        cx_f32(c, &d->mean[i]);
        cx_f32(c, &d->std[i]);
    }
    cx_int(c, &d->has_labels);
    cx_i64(c, &d->created);
    if (c->ver >= 2) {
        cx_u64(c, &d->first);
        cx_u64(c, &d->total);
    } else if (c->decode) {
        d->total = d->count;
    }
}

static void rec_index(codec *c, void *rec)
{
    store_index *x = rec;
    cx_version(c);
    cx_u32(c, &x->id);
    cx_str(c, x->model, sizeof x->model);
    cx_str(c, x->dataset, sizeof x->dataset);
    cx_str(c, x->layer, sizeof x->layer);
    cx_int(c, &x->state);
    cx_u32(c, &x->partitions);
    cx_f32(c, &x->mai_ratio);
    cx_u64(c, &x->count);
    cx_u64(c, &x->neurons);
    cx_u64(c, &x->bytes);
    cx_u64(c, &x->full_bytes);
    cx_u32(c, &x->job);
    cx_i64(c, &x->created);
    cx_f64(c, &x->build_s);
    cx_str(c, x->error, sizeof x->error);
    cx_int(c, &x->kind);
    if (c->ver >= 2) {
        cx_u64(c, &x->digest);
        cx_u32(c, &x->batch);
    }
}

static void rec_predictions(codec *c, void *rec)
{
    store_predictions *p = rec;
    cx_version(c);
    cx_str(c, p->model, sizeof p->model);
    cx_u32(c, &p->dataset);
    cx_str(c, p->layer, sizeof p->layer);
    cx_int(c, &p->state);
    cx_u64(c, &p->count);
    cx_u32(c, &p->job);
    cx_i64(c, &p->created);
    cx_u64(c, &p->correct);
}

static void rec_job(codec *c, void *rec)
{
    store_job *j = rec;
    cx_version(c);
    cx_u32(c, &j->id);
    cx_str(c, j->kind, sizeof j->kind);
    cx_int(c, &j->state);
    cx_u64(c, &j->done);
    cx_u64(c, &j->total);
    cx_i64(c, &j->created);
    cx_i64(c, &j->started);
    cx_i64(c, &j->finished);
    int n = (int)j->nindexes;
    cx_count(c, &n, 16);
    j->nindexes = (uint32_t)n;
    for (int i = 0; i < n && !c->bad; i++) cx_u32(c, &j->indexes[i]);
    cx_str(c, j->error, sizeof j->error);
    if (c->ver >= 2) {
        cx_str(c, j->model, sizeof j->model);
        cx_str(c, j->dataset, sizeof j->dataset);
        cx_int(c, &j->cancelled);
    }
}


/* Encodes a copy of *rec (the codec wants mutable fields). */
static int rec_encode(rec_fn fn, const void *rec, size_t size, uint8_t *buf, size_t *len)
{
    union {
        store_model m;
        store_dataset d;
        store_index x;
        store_job j;
        store_predictions p;
    } tmp;
    memcpy(&tmp, rec, size);
    codec c = {.buf = buf, .len = REC_MAX};
    fn(&c, &tmp);
    if (c.bad) {
        seterr("record does not fit in %d bytes", REC_MAX);
        return STORE_ERROR;
    }
    *len = c.pos;
    return STORE_OK;
}

/* Decodes into *out only when the whole record is well formed. */
static int rec_decode(rec_fn fn, const MDB_val *v, void *out, size_t size, const char *what)
{
    union {
        store_model m;
        store_dataset d;
        store_index x;
        store_job j;
        store_predictions p;
    } tmp;
    memset(&tmp, 0, sizeof tmp);
    codec c = {.buf = v->mv_data, .len = v->mv_size, .decode = 1};
    fn(&c, &tmp);
    if (c.bad || c.pos != c.len) {
        seterr("damaged %s record (%zu bytes, version %d; this build writes version %d)", what, v->mv_size,
               v->mv_size ? ((const uint8_t *)v->mv_data)[0] : -1, REC_VERSION);
        return STORE_ERROR;
    }
    memcpy(out, &tmp, size);
    return STORE_OK;
}

#define ENC(fn, rec, buf, len) rec_encode((fn), (rec), sizeof *(rec), (buf), (len))
#define DEC(fn, val, out, what) rec_decode((fn), (val), (out), sizeof *(out), (what))

/* ---- generic helpers ---- */

static int put_val(store_txn *t, int db, void *k, size_t klen, const void *v, size_t vlen, unsigned flags,
                   const char *what)
{
    if (t->s->readonly) return map_rc(EACCES, what);
    MDB_val key = {klen, k}, val = {vlen, (void *)v};
    return map_rc(mdb_put(t->txn, t->s->dbi[db], &key, &val, flags), what);
}

static int get_val(store_txn *t, int db, void *k, size_t klen, MDB_val *val, const char *what)
{
    if (!t->s->have[db]) return map_rc(MDB_NOTFOUND, what);
    MDB_val key = {klen, k};
    return map_rc(mdb_get(t->txn, t->s->dbi[db], &key, val), what);
}

static int del_key(store_txn *t, int db, void *k, size_t klen, const char *what)
{
    MDB_val key = {klen, k};
    return map_rc(mdb_del(t->txn, t->s->dbi[db], &key, NULL), what);
}

/* Deletes every key of db that starts with prefix. Re-seeks after each
 * delete rather than relying on the cursor's position after mdb_cursor_del. */
static int del_prefix(store_txn *t, int db, const uint8_t *prefix, size_t plen, const char *what)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(t->txn, t->s->dbi[db], &cur);
    if (rc) return map_rc(rc, what);
    for (;;) {
        MDB_val key = {plen, (void *)prefix}, val;
        rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            break;
        }
        if (rc) break;
        if (key.mv_size < plen || memcmp(key.mv_data, prefix, plen) != 0) break;
        rc = mdb_cursor_del(cur, 0);
        if (rc) break;
    }
    mdb_cursor_close(cur);
    return map_rc(rc, what);
}

static int name_key(const char *name, MDB_val *key)
{
    size_t n = name ? strnlen(name, STORE_NAME_MAX + 1) : 0;
    if (n == 0 || n > STORE_NAME_MAX) {
        seterr("name must be 1 to %d characters", STORE_NAME_MAX);
        return STORE_ERROR;
    }
    key->mv_data = (void *)name;
    key->mv_size = n;
    return STORE_OK;
}

/* The typed callback of one *_each walk. */
typedef struct walker {
    int db;
    union {
        int (*model)(const store_model *, void *);
        int (*dataset)(const store_dataset *, void *);
        int (*index)(const store_index *, void *);
        int (*job)(const store_job *, void *);
        int (*predictions)(const store_predictions *, void *);
    } fn;
    void *arg;
} walker;

/* Walks w->db in key order, decoding each record; stops when fn says so. */
static int walk(store_txn *t, const walker *w)
{
    static const struct {
        rec_fn dec;
        const char *what;
    } kinds[DB_COUNT] = {
        [DB_MODELS] = {rec_model, "model"},
        [DB_DATASETS] = {rec_dataset, "dataset"},
        [DB_INDEXES] = {rec_index, "index"},
        [DB_JOBS] = {rec_job, "job"},
        [DB_PREDICTIONS] = {rec_predictions, "predictions"},
    };
    union {
        store_model m;
        store_dataset d;
        store_index x;
        store_job j;
        store_predictions p;
    } rec;
    const char *what = kinds[w->db].what;
    if (!t->s->have[w->db]) return STORE_OK;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(t->txn, t->s->dbi[w->db], &cur);
    if (rc) return map_rc(rc, what);
    MDB_val key, val;
    int ret = STORE_OK;
    for (rc = mdb_cursor_get(cur, &key, &val, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT)) {
        if ((ret = rec_decode(kinds[w->db].dec, &val, &rec, sizeof rec, what)) != STORE_OK) break;
        int stop = w->db == DB_MODELS     ? w->fn.model(&rec.m, w->arg)
                   : w->db == DB_DATASETS ? w->fn.dataset(&rec.d, w->arg)
                   : w->db == DB_INDEXES  ? w->fn.index(&rec.x, w->arg)
                   : w->db == DB_JOBS     ? w->fn.job(&rec.j, w->arg)
                                          : w->fn.predictions(&rec.p, w->arg);
        if (stop) break;
    }
    if (ret == STORE_OK && rc != 0 && rc != MDB_NOTFOUND) ret = map_rc(rc, what);
    mdb_cursor_close(cur);
    return ret;
}

/* ---- environment ---- */

static int mkdir_p(const char *dir)
{
    char path[STORE_PATH_MAX];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    memcpy(path, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != 0) continue;
        char c = path[i];
        path[i] = 0;
        if (mkdir(path, 0775) != 0 && errno != EEXIST) return -1;
        path[i] = c;
    }
    struct stat st;
    if (stat(dir, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

typedef struct id_list {
    uint32_t *ids;
    char (*names)[STORE_NAME_MAX + 1];
    size_t n, cap;
    int oom;
} id_list;

static int list_grow(id_list *l)
{
    if (l->n < l->cap) return 0;
    size_t cap = l->cap ? l->cap * 2 : 16;
    uint32_t *ids = realloc(l->ids, cap * sizeof *ids);
    if (ids) l->ids = ids;
    void *names = realloc(l->names, cap * sizeof *l->names);
    if (names) l->names = names;
    if (!ids || !names) {
        l->oom = 1;
        return -1;
    }
    l->cap = cap;
    return 0;
}

static int pending_dataset(const store_dataset *d, void *arg)
{
    id_list *l = arg;
    if (d->state != STORE_PENDING && d->state != STORE_DELETING) return 0;
    if (list_grow(l)) return 1;
    snprintf(l->names[l->n], sizeof l->names[0], "%s", d->name);
    l->ids[l->n++] = d->id;
    return 0;
}

static int pending_index(const store_index *x, void *arg)
{
    id_list *l = arg;
    if (x->state != STORE_PENDING) return 0;
    if (list_grow(l)) return 1;
    l->ids[l->n++] = x->id;
    return 0;
}

static int pending_predictions(const store_predictions *p, void *arg)
{
    id_list *l = arg;
    if (p->state != STORE_PENDING) return 0;
    if (list_grow(l)) return 1;
    snprintf(l->names[l->n], sizeof l->names[0], "%s", p->model);
    l->ids[l->n++] = p->dataset;
    return 0;
}

static int unfinished_job(const store_job *j, void *arg)
{
    id_list *l = arg;
    if (j->state != JOB_QUEUED && j->state != JOB_RUNNING) return 0;
    if (list_grow(l)) return 1;
    l->ids[l->n++] = j->id;
    return 0;
}

/* Indexes of the datasets in owners->names (a deleting dataset's). */
typedef struct owned_by { const id_list *owners; id_list out; } owned_by;

static int index_of_swept(const store_index *x, void *arg)
{
    owned_by *o = arg;
    for (size_t i = 0; i < o->owners->n; i++)
        if (strcmp(o->owners->names[i], x->dataset) == 0) {
            if (list_grow(&o->out)) return 1;
            o->out.ids[o->out.n++] = x->id;
            break;
        }
    return 0;
}

static int any_dataset(const store_dataset *d, void *arg)
{
    id_list *l = arg;
    if (list_grow(l)) return 1;
    l->ids[l->n++] = d->id;
    return 0;
}

static int any_index(const store_index *x, void *arg)
{
    id_list *l = arg;
    if (list_grow(l)) return 1;
    l->ids[l->n++] = x->id;
    return 0;
}

/* Deletes the keys of db whose u32 owner prefix names no live object: the
 * pieces of an object whose record never got committed. One seek per owner. */
static int sweep_orphans(store_txn *t, int db, const id_list *live, const char *what)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(t->txn, t->s->dbi[db], &cur);
    if (rc) return map_rc(rc, what);
    uint8_t from[4] = {0};
    for (;;) {
        MDB_val key = {4, from}, val;
        rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
        if (rc) break;
        if (key.mv_size < 4) { /* no owner at all: damage, drop it */
            if ((rc = mdb_cursor_del(cur, 0))) break;
            continue;
        }
        const uint8_t *k = key.mv_data;
        uint32_t id = (uint32_t)k[0] << 24 | (uint32_t)k[1] << 16 | (uint32_t)k[2] << 8 | k[3];
        size_t i = 0;
        while (i < live->n && live->ids[i] != id) i++;
        if (i == live->n) {
            uint8_t prefix[4];
            be32(prefix, id);
            int drc = del_prefix(t, db, prefix, 4, what);
            if (drc != STORE_OK) {
                mdb_cursor_close(cur);
                return drc;
            }
        }
        if (id == UINT32_MAX) {
            rc = MDB_NOTFOUND;
            break;
        }
        be32(from, id + 1);
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? STORE_OK : map_rc(rc, what);
}

/* What a crash left unfinished: see store.h. One write transaction. */
static int sweep(store *s)
{
    store_txn *t = NULL;
    id_list ds = {0}, ix = {0}, jb = {0}, live_ds = {0}, live_ix = {0};
    int rc = store_txn_begin(s, 0, &t);
    if (rc) goto fail;
    if ((rc = store_dataset_each(t, pending_dataset, &ds)) != STORE_OK) goto fail;
    if ((rc = store_index_each(t, pending_index, &ix)) != STORE_OK) goto fail;
    if ((rc = store_job_each(t, unfinished_job, &jb)) != STORE_OK) goto fail;
    if (ds.oom || ix.oom || jb.oom) {
        seterr("out of memory");
        rc = STORE_ERROR;
        goto fail;
    }
    for (size_t i = 0; i < ix.n; i++) {
        store_index x;
        uint8_t prefix[4];
        if ((rc = store_index_get(t, ix.ids[i], &x)) != STORE_OK) goto fail;
        be32(prefix, x.id);
        if ((rc = del_prefix(t, DB_NEURONS, prefix, 4, "delete neuron blobs")) != STORE_OK) goto fail;
        x.state = STORE_FAILED;
        x.bytes = 0;
        snprintf(x.error, sizeof x.error, "interrupted (daemon stopped during build)");
        if ((rc = store_index_put(t, &x)) != STORE_OK) goto fail;
    }
    owned_by swept = {.owners = &ds};
    if ((rc = store_index_each(t, index_of_swept, &swept)) != STORE_OK || swept.out.oom) {
        free(swept.out.ids), free(swept.out.names);
        if (rc == STORE_OK) rc = STORE_ERROR;
        goto fail;
    }
    for (size_t i = 0; i < swept.out.n && rc == STORE_OK; i++) rc = store_index_del(t, swept.out.ids[i]);
    free(swept.out.ids), free(swept.out.names);
    if (rc != STORE_OK) goto fail;
    for (size_t i = 0; i < ds.n; i++)
        if ((rc = store_dataset_del(t, ds.names[i])) != STORE_OK) goto fail;
    for (size_t i = 0; i < jb.n; i++) {
        store_job j;
        if ((rc = store_job_get(t, jb.ids[i], &j)) != STORE_OK) goto fail;
        j.state = JOB_FAILED;
        j.finished = (int64_t)time(NULL);
        snprintf(j.error, sizeof j.error, "interrupted (daemon restarted)");
        if ((rc = store_job_put(t, &j)) != STORE_OK) goto fail;
    }
    if ((rc = store_dataset_each(t, any_dataset, &live_ds)) != STORE_OK) goto fail;
    if ((rc = store_index_each(t, any_index, &live_ix)) != STORE_OK) goto fail;
    if (live_ds.oom || live_ix.oom) {
        seterr("out of memory");
        rc = STORE_ERROR;
        goto fail;
    }
    /* predictions whose job did not finish */
    id_list pp = {0};
    if ((rc = store_predictions_each(t, pending_predictions, &pp)) != STORE_OK || pp.oom) {
        free(pp.ids), free(pp.names);
        if (rc == STORE_OK) rc = STORE_ERROR;
        goto fail;
    }
    for (size_t i = 0; i < pp.n && rc == STORE_OK; i++) rc = store_predictions_del(t, pp.ids[i], pp.names[i]);
    free(pp.ids), free(pp.names);
    if (rc != STORE_OK) goto fail;
    if ((rc = sweep_orphans(t, DB_INPUTS, &live_ds, "sweep inputs")) != STORE_OK ||
        (rc = sweep_orphans(t, DB_LABELS, &live_ds, "sweep labels")) != STORE_OK ||
        (rc = sweep_orphans(t, DB_PREDICTIONS, &live_ds, "sweep predictions")) != STORE_OK ||
        (rc = sweep_orphans(t, DB_PREDICTED, &live_ds, "sweep predictions")) != STORE_OK ||
        (rc = sweep_orphans(t, DB_CLASSES, &live_ds, "sweep class names")) != STORE_OK ||
        (rc = sweep_orphans(t, DB_NEURONS, &live_ix, "sweep neuron blobs")) != STORE_OK)
        goto fail;
    rc = store_txn_commit(t);
    t = NULL;
fail:
    store_txn_abort(t);
    id_list *lists[] = {&ds, &ix, &jb, &live_ds, &live_ix};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) free(lists[i]->ids), free(lists[i]->names);
    return rc;
}

/* Opens the named databases and checks the schema version, writing it into
 * a fresh environment (read-only: a database an older store lacks reads as
 * empty, and a store without a version is refused). */
static int check_schema(store *s, const char *dir)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(s->env, NULL, s->readonly ? MDB_RDONLY : 0, &txn);
    if (rc) return map_rc(rc, "begin");
    for (int i = 0; i < DB_COUNT; i++) {
        rc = mdb_dbi_open(txn, db_names[i], s->readonly ? 0 : MDB_CREATE, &s->dbi[i]);
        if (rc == MDB_NOTFOUND && s->readonly) continue;
        if (rc) {
            mdb_txn_abort(txn);
            return map_rc(rc, db_names[i]);
        }
        s->have[i] = 1;
    }
    MDB_val key = {6, "schema"}, val;
    rc = s->have[DB_META] ? mdb_get(txn, s->dbi[DB_META], &key, &val) : MDB_NOTFOUND;
    if (rc == MDB_NOTFOUND && s->readonly) {
        mdb_txn_abort(txn);
        seterr("%s holds no deepeverest store", dir);
        return STORE_ERROR;
    }
    if (rc == MDB_NOTFOUND) {
        uint8_t v[4];
        for (int i = 0; i < 4; i++) v[i] = (uint8_t)((uint32_t)STORE_SCHEMA_VERSION >> (8 * i));
        val.mv_data = v;
        val.mv_size = 4;
        rc = mdb_put(txn, s->dbi[DB_META], &key, &val, 0);
        if (rc) {
            mdb_txn_abort(txn);
            return map_rc(rc, "write schema version");
        }
    } else if (rc) {
        mdb_txn_abort(txn);
        return map_rc(rc, "read schema version");
    } else {
        const uint8_t *p = val.mv_data;
        uint32_t v = val.mv_size == 4 ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
                                      : 0;
        if (val.mv_size != 4 || v != STORE_SCHEMA_VERSION) {
            mdb_txn_abort(txn);
            if (val.mv_size != 4)
                seterr("store in %s has a damaged schema version record", dir);
            else
                seterr("store in %s has schema version %u, this build reads version %d: use a new --data "
                       "directory or a matching build",
                       dir, v, STORE_SCHEMA_VERSION);
            return STORE_ERROR;
        }
    }
    /* committed even when read-only: an aborted txn would close the handles */
    return map_rc(mdb_txn_commit(txn), "commit");
}

/* The directory's owner lock: one daemon (or other writer) per directory.
 * The holder's pid goes into the file so the refusal can name it. */
static int take_lock(store *s, const char *dir)
{
    char path[STORE_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/deepeverest.lock", dir);
    s->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0664);
    if (s->lock_fd < 0) {
        seterr("cannot open %s: %s", path, strerror(errno));
        return STORE_ERROR;
    }
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(s->lock_fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        seterr("%s is in use by another process (pid %s): one daemon per data directory; --stat reads it "
               "beside a running daemon", dir, pid[0] ? pid : "unknown");
        close(s->lock_fd);
        s->lock_fd = -1;
        return STORE_ERROR;
    }
    char pid[32];
    int n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(s->lock_fd, 0) != 0 || pwrite(s->lock_fd, pid, (size_t)n, 0) != n) {
        /* the lock holds anyway; only the pid in refusals is lost */
    }
    return STORE_OK;
}

static int open_env(const char *dir, size_t mapsize, int readonly, store **out, char *err, size_t errlen)
{
    store *s = NULL;
    int rc = STORE_ERROR;
    *out = NULL;
    struct stat st;
    if (!dir || (readonly ? stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) : mkdir_p(dir) != 0)) {
        seterr(readonly ? "no directory %s: %s" : "cannot create directory %s: %s", dir ? dir : "(null)",
               strerror(errno ? errno : ENOTDIR));
        goto fail;
    }
    s = calloc(1, sizeof *s);
    if (!s) {
        seterr("out of memory");
        goto fail;
    }
    s->readonly = readonly;
    s->lock_fd = -1;
    if (!readonly && (rc = take_lock(s, dir)) != STORE_OK) goto fail;
    /* The default map is address space, not disk; where less can be mapped
     * (ulimit -v, valgrind) halve it down to MIN_DEFAULT_MAPSIZE. An explicit
     * size is taken as asked. Read-only opens adopt the file's own size. */
    size_t size = mapsize ? mapsize : DEFAULT_MAPSIZE;
    for (;;) {
        int mrc = mdb_env_create(&s->env);
        if (mrc) {
            s->env = NULL;
            rc = map_rc(mrc, "mdb_env_create");
            goto fail;
        }
        if ((mrc = mdb_env_set_maxdbs(s->env, DB_COUNT + 4)) || (mrc = mdb_env_set_maxreaders(s->env, MAX_READERS)) ||
            (!readonly && (mrc = mdb_env_set_mapsize(s->env, size)))) {
            rc = map_rc(mrc, "configure environment");
            goto fail;
        }
        mrc = mdb_env_open(s->env, dir, MDB_NOTLS | (readonly ? MDB_RDONLY : 0), 0664);
        if (!mrc) break;
        rc = map_rc(mrc, dir);
        mdb_env_close(s->env); /* a failed open leaves the handle unusable */
        s->env = NULL;
        if (readonly || mapsize || (mrc != EINVAL && mrc != ENOMEM) || size <= MIN_DEFAULT_MAPSIZE) goto fail;
        size /= 2;
    }
    if (!readonly) {
        int dead;
        mdb_reader_check(s->env, &dead); /* frees slots of crashed readers */
    }
    if ((rc = check_schema(s, dir)) != STORE_OK) goto fail;
    if (!readonly && (rc = sweep(s)) != STORE_OK) goto fail;
    *out = s;
    return STORE_OK;
fail:
    if (err && errlen) snprintf(err, errlen, "%s", errbuf);
    if (rc == STORE_OK) rc = STORE_ERROR;
    store_close(s);
    return rc == STORE_NOTFOUND || rc == STORE_EXISTS ? STORE_ERROR : rc;
}

int store_open(const char *dir, size_t mapsize, store **out, char *err, size_t errlen)
{
    return open_env(dir, mapsize, 0, out, err, errlen);
}

int store_open_readonly(const char *dir, store **out, char *err, size_t errlen)
{
    return open_env(dir, 0, 1, out, err, errlen);
}

void store_close(store *s)
{
    if (!s) return;
    if (s->env) mdb_env_close(s->env);
    if (s->lock_fd >= 0) close(s->lock_fd); /* releases the lock */
    free(s);
}

int store_usage(store *s, uint64_t *map_bytes, uint64_t *used_bytes)
{
    MDB_envinfo info;
    MDB_stat st;
    int rc = mdb_env_info(s->env, &info);
    if (!rc) rc = mdb_env_stat(s->env, &st);
    if (rc) return map_rc(rc, "environment info");
    if (map_bytes) *map_bytes = info.me_mapsize;
    if (used_bytes) *used_bytes = ((uint64_t)info.me_last_pgno + 1) * st.ms_psize;
    return STORE_OK;
}

int store_db_bytes(store_txn *t, const char *db, uint64_t *bytes, uint64_t *entries)
{
    for (int i = 0; i < DB_COUNT; i++) {
        if (strcmp(db_names[i], db) != 0) continue;
        *bytes = *entries = 0;
        if (!t->s->have[i]) return STORE_OK;
        MDB_stat st;
        int rc = mdb_stat(t->txn, t->s->dbi[i], &st);
        if (rc) return map_rc(rc, db);
        *bytes = (uint64_t)(st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages) * st.ms_psize;
        *entries = st.ms_entries;
        return STORE_OK;
    }
    seterr("no database '%s'", db);
    return STORE_ERROR;
}

/* ---- transactions ---- */

int store_txn_begin(store *s, int readonly, store_txn **out)
{
    *out = NULL;
    store_txn *t = calloc(1, sizeof *t);
    if (!t) {
        seterr("out of memory");
        return STORE_ERROR;
    }
    t->s = s;
    unsigned flags = readonly ? MDB_RDONLY : 0;
    if (!readonly && s->readonly) {
        free(t);
        seterr("the store is open read-only");
        return STORE_ERROR;
    }
    int rc = mdb_txn_begin(s->env, NULL, flags, &t->txn);
    if (rc == MDB_MAP_RESIZED) { /* another process grew the map: adopt its size */
        mdb_env_set_mapsize(s->env, 0);
        rc = mdb_txn_begin(s->env, NULL, flags, &t->txn);
    }
    if (rc) {
        free(t);
        return map_rc(rc, readonly ? "begin read transaction" : "begin write transaction");
    }
    *out = t;
    return STORE_OK;
}

static void txn_free(store_txn *t)
{
    while (t->copies) {
        txn_copy *c = t->copies;
        t->copies = c->next;
        free(c);
    }
    free(t);
}

int store_txn_commit(store_txn *t)
{
    if (!t) {
        seterr("commit: no transaction");
        return STORE_ERROR;
    }
    int rc = mdb_txn_commit(t->txn); /* frees the LMDB txn also on failure */
    txn_free(t);
    return map_rc(rc, "commit");
}

void store_txn_abort(store_txn *t)
{
    if (!t) return;
    mdb_txn_abort(t->txn);
    txn_free(t);
}

int store_take_id(store_txn *t, const char *counter, uint32_t want, uint32_t *out)
{
    if (!want) return store_next_id(t, counter, out);
    uint32_t cur;
    int rc = store_peek_id(t, counter, &cur);
    if (rc != STORE_OK) return rc;
    if (want <= cur) return STORE_EXISTS;
    char k[80];
    int n = snprintf(k, sizeof k, "id:%s", counter ? counter : "");
    uint8_t b[4] = {(uint8_t)want, (uint8_t)(want >> 8), (uint8_t)(want >> 16), (uint8_t)(want >> 24)};
    if ((rc = put_val(t, DB_META, k, (size_t)n, b, 4, 0, "write counter")) != STORE_OK) return rc;
    *out = want;
    return STORE_OK;
}

int store_peek_id(store_txn *t, const char *counter, uint32_t *out)
{
    char k[80];
    int n = snprintf(k, sizeof k, "id:%s", counter ? counter : "");
    if (n < 0 || (size_t)n >= sizeof k) {
        seterr("counter name too long");
        return STORE_ERROR;
    }
    MDB_val val;
    int rc = get_val(t, DB_META, k, (size_t)n, &val, "read counter");
    if (rc == STORE_NOTFOUND) {
        *out = 0;
        return STORE_OK;
    }
    if (rc != STORE_OK) return rc;
    if (val.mv_size != 4) {
        seterr("damaged counter %s", counter);
        return STORE_ERROR;
    }
    const uint8_t *p = val.mv_data;
    *out = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return STORE_OK;
}

int store_next_id(store_txn *t, const char *counter, uint32_t *out)
{
    char k[80];
    int n = snprintf(k, sizeof k, "id:%s", counter ? counter : "");
    if (n < 0 || (size_t)n >= sizeof k) {
        seterr("counter name too long");
        return STORE_ERROR;
    }
    MDB_val val;
    uint32_t v = 0;
    int rc = get_val(t, DB_META, k, (size_t)n, &val, "read counter");
    if (rc == STORE_OK) {
        if (val.mv_size != 4) {
            seterr("damaged counter %s", counter);
            return STORE_ERROR;
        }
        const uint8_t *p = val.mv_data;
        v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    } else if (rc != STORE_NOTFOUND) {
        return rc;
    }
    if (v == UINT32_MAX) {
        seterr("counter %s exhausted", counter);
        return STORE_ERROR;
    }
    v++;
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    if ((rc = put_val(t, DB_META, k, (size_t)n, b, 4, 0, "write counter")) != STORE_OK) return rc;
    *out = v;
    return STORE_OK;
}

/* ---- models ---- */

int store_model_put(store_txn *t, const store_model *m, int create_only)
{
    uint8_t buf[REC_MAX];
    size_t len;
    MDB_val key;
    int rc;
    if ((rc = name_key(m->name, &key)) || (rc = ENC(rec_model, m, buf, &len))) return rc;
    return put_val(t, DB_MODELS, key.mv_data, key.mv_size, buf, len, create_only ? MDB_NOOVERWRITE : 0,
                   "put model");
}

int store_model_get(store_txn *t, const char *name, store_model *out)
{
    MDB_val key, val;
    int rc;
    if ((rc = name_key(name, &key)) || (rc = get_val(t, DB_MODELS, key.mv_data, key.mv_size, &val, "model")))
        return rc;
    return DEC(rec_model, &val, out, "model");
}

int store_model_del(store_txn *t, const char *name)
{
    MDB_val key;
    int rc = name_key(name, &key);
    if (rc) return rc;
    return del_key(t, DB_MODELS, key.mv_data, key.mv_size, "delete model");
}

int store_model_each(store_txn *t, int (*fn)(const store_model *, void *), void *arg)
{
    walker w = {.db = DB_MODELS, .fn.model = fn, .arg = arg};
    return walk(t, &w);
}

/* ---- datasets ---- */

int store_dataset_put(store_txn *t, const store_dataset *d, int create_only)
{
    uint8_t buf[REC_MAX];
    size_t len;
    MDB_val key;
    int rc;
    if ((rc = name_key(d->name, &key)) || (rc = ENC(rec_dataset, d, buf, &len))) return rc;
    return put_val(t, DB_DATASETS, key.mv_data, key.mv_size, buf, len, create_only ? MDB_NOOVERWRITE : 0,
                   "put dataset");
}

int store_dataset_get(store_txn *t, const char *name, store_dataset *out)
{
    MDB_val key, val;
    int rc;
    if ((rc = name_key(name, &key)) || (rc = get_val(t, DB_DATASETS, key.mv_data, key.mv_size, &val, "dataset")))
        return rc;
    return DEC(rec_dataset, &val, out, "dataset");
}

int store_dataset_del(store_txn *t, const char *name)
{
    store_dataset d;
    uint8_t prefix[4];
    int rc = store_dataset_get(t, name, &d);
    if (rc) return rc;
    be32(prefix, d.id);
    if ((rc = del_prefix(t, DB_INPUTS, prefix, 4, "delete inputs")) != STORE_OK) return rc;
    rc = del_key(t, DB_LABELS, prefix, 4, "delete labels");
    if (rc != STORE_OK && rc != STORE_NOTFOUND) return rc;
    if ((rc = del_prefix(t, DB_PREDICTIONS, prefix, 4, "delete predictions")) != STORE_OK ||
        (rc = del_prefix(t, DB_PREDICTED, prefix, 4, "delete predictions")) != STORE_OK)
        return rc;
    rc = del_key(t, DB_CLASSES, prefix, 4, "delete class names");
    if (rc != STORE_OK && rc != STORE_NOTFOUND) return rc;
    MDB_val key = {0};
    if ((rc = name_key(name, &key)) != STORE_OK) return rc;
    return del_key(t, DB_DATASETS, key.mv_data, key.mv_size, "delete dataset");
}

int store_dataset_each(store_txn *t, int (*fn)(const store_dataset *, void *), void *arg)
{
    walker w = {.db = DB_DATASETS, .fn.dataset = fn, .arg = arg};
    return walk(t, &w);
}

int store_inputs_put(store_txn *t, uint32_t ds, uint64_t first, uint64_t count, const void *data,
                     size_t bytes_per_input)
{
    if (bytes_per_input == 0 || (count && first + (count - 1) < first)) {
        seterr("put inputs: bad range or input size");
        return STORE_ERROR;
    }
    MDB_cursor *cur;
    int rc = mdb_cursor_open(t->txn, t->s->dbi[DB_INPUTS], &cur);
    if (rc) return map_rc(rc, "put inputs");
    const uint8_t *p = data;
    for (uint64_t i = 0; i < count && !rc; i++) {
        uint8_t k[12];
        be32(k, ds);
        be64(k + 4, first + i);
        MDB_val key = {12, k}, val = {bytes_per_input, (void *)(p + i * bytes_per_input)};
        rc = mdb_cursor_put(cur, &key, &val, 0);
    }
    mdb_cursor_close(cur);
    return map_rc(rc, "put inputs");
}

int store_input_get(store_txn *t, uint32_t ds, uint64_t id, const void **data, size_t *len)
{
    uint8_t k[12];
    MDB_val val;
    be32(k, ds);
    be64(k + 4, id);
    int rc = get_val(t, DB_INPUTS, k, 12, &val, "input");
    if (rc) return rc;
    *data = val.mv_data;
    *len = val.mv_size;
    return STORE_OK;
}

/* p itself when aligned to `align`, else a copy that lives as long as t. */
static const void *txn_aligned(store_txn *t, const void *p, size_t len, size_t align)
{
    if ((uintptr_t)p % align == 0) return p;
    txn_copy *c = malloc(sizeof *c + len);
    if (!c) {
        seterr("out of memory");
        return NULL;
    }
    memcpy(c->data, p, len);
    c->next = t->copies;
    t->copies = c;
    return c->data;
}

int store_labels_put(store_txn *t, uint32_t ds, const int32_t *labels, uint64_t count)
{
    uint8_t k[4];
    be32(k, ds);
    if (count > SIZE_MAX / sizeof(int32_t)) {
        seterr("put labels: too many");
        return STORE_ERROR;
    }
    return put_val(t, DB_LABELS, k, 4, labels, (size_t)count * sizeof(int32_t), 0, "put labels");
}

int store_labels_get(store_txn *t, uint32_t ds, const int32_t **labels, uint64_t *count)
{
    uint8_t k[4];
    MDB_val val;
    be32(k, ds);
    int rc = get_val(t, DB_LABELS, k, 4, &val, "labels");
    if (rc) return rc;
    if (val.mv_size % sizeof(int32_t)) {
        seterr("damaged labels of dataset %u (%zu bytes)", ds, val.mv_size);
        return STORE_ERROR;
    }
    /* LMDB promises no alignment. Today large values sit on overflow pages
     * and small ones land 4-aligned (4-byte key, 4n-byte value, nodes of even
     * size), but should that change the caller still gets an aligned array. */
    const void *p = txn_aligned(t, val.mv_data, val.mv_size, _Alignof(int32_t));
    if (!p) return STORE_ERROR;
    *labels = p;
    *count = val.mv_size / sizeof(int32_t);
    return STORE_OK;
}

/* ---- indexes ---- */

int store_index_put(store_txn *t, const store_index *ix)
{
    uint8_t buf[REC_MAX], k[4];
    size_t len;
    int rc = ENC(rec_index, ix, buf, &len);
    if (rc) return rc;
    be32(k, ix->id);
    return put_val(t, DB_INDEXES, k, 4, buf, len, 0, "put index");
}

int store_index_get(store_txn *t, uint32_t id, store_index *out)
{
    uint8_t k[4];
    MDB_val val;
    be32(k, id);
    int rc = get_val(t, DB_INDEXES, k, 4, &val, "index");
    if (rc) return rc;
    return DEC(rec_index, &val, out, "index");
}

int store_index_del(store_txn *t, uint32_t id)
{
    uint8_t k[4];
    be32(k, id);
    MDB_val val;
    int rc = get_val(t, DB_INDEXES, k, 4, &val, "index");
    if (rc) return rc;
    if ((rc = del_prefix(t, DB_NEURONS, k, 4, "delete neuron blobs")) != STORE_OK) return rc;
    return del_key(t, DB_INDEXES, k, 4, "delete index");
}

int store_index_each(store_txn *t, int (*fn)(const store_index *, void *), void *arg)
{
    walker w = {.db = DB_INDEXES, .fn.index = fn, .arg = arg};
    return walk(t, &w);
}

int store_neuron_put(store_txn *t, uint32_t index, uint32_t neuron, const void *blob, size_t len)
{
    uint8_t k[8];
    be32(k, index);
    be32(k + 4, neuron);
    return put_val(t, DB_NEURONS, k, 8, blob, len, 0, "put neuron blob");
}

int store_neuron_get(store_txn *t, uint32_t index, uint32_t neuron, const void **blob, size_t *len)
{
    uint8_t k[8];
    MDB_val val;
    be32(k, index);
    be32(k + 4, neuron);
    int rc = get_val(t, DB_NEURONS, k, 8, &val, "neuron blob");
    if (rc) return rc;
    /* small values sit in leaf pages at 2-byte alignment */
    if (!(*blob = txn_aligned(t, val.mv_data, val.mv_size, 4))) return STORE_ERROR;
    *len = val.mv_size;
    return STORE_OK;
}

void store_prefetch(const void *const *blob, const size_t *len, size_t n)
{
    static long page;
    if (!page)
        page = sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096;
    /* Only the reads: mapping the pages here too (MADV_POPULATE_READ, a
     * page at a time) measured slower than the faults of the pass that
     * reads them (16 pages each), cached or not: pool1, 30 neurons, this
     * call + the coarse pass 0.85 -> 0.79 ms with the pages cached, 3.8 ->
     * 0.95 ms with the page cache dropped, and 0.14 ms less once mapped. */
    for (size_t i = 0; i < n; i++) {
        uintptr_t from = (uintptr_t)blob[i] & ~(uintptr_t)(page - 1), to = (uintptr_t)blob[i] + len[i];
        (void)madvise((void *)from, to - from, MADV_WILLNEED);
    }
}

/* ---- predictions and class names ---- */

static int pred_key(uint32_t dataset, const char *model, uint8_t *k, size_t *klen)
{
    size_t n = model ? strnlen(model, STORE_NAME_MAX + 1) : 0;
    if (n == 0 || n > STORE_NAME_MAX) {
        seterr("name must be 1 to %d characters", STORE_NAME_MAX);
        return STORE_ERROR;
    }
    be32(k, dataset);
    memcpy(k + 4, model, n);
    *klen = 4 + n;
    return STORE_OK;
}

int store_predictions_put(store_txn *t, const store_predictions *p, const int32_t *pred)
{
    uint8_t buf[REC_MAX], k[4 + STORE_NAME_MAX];
    size_t len, klen;
    int rc;
    if ((rc = pred_key(p->dataset, p->model, k, &klen)) || (rc = ENC(rec_predictions, p, buf, &len))) return rc;
    if ((rc = put_val(t, DB_PREDICTIONS, k, klen, buf, len, 0, "put predictions")) != STORE_OK) return rc;
    if (!pred) return STORE_OK;
    if (p->count > SIZE_MAX / sizeof(int32_t)) {
        seterr("put predictions: too many");
        return STORE_ERROR;
    }
    return put_val(t, DB_PREDICTED, k, klen, pred, (size_t)p->count * sizeof(int32_t), 0, "put predictions");
}

int store_predictions_get(store_txn *t, uint32_t dataset, const char *model, store_predictions *out,
                          const int32_t **pred)
{
    uint8_t k[4 + STORE_NAME_MAX];
    size_t klen;
    MDB_val val;
    int rc;
    if ((rc = pred_key(dataset, model, k, &klen)) || (rc = get_val(t, DB_PREDICTIONS, k, klen, &val, "predictions")))
        return rc;
    if ((rc = DEC(rec_predictions, &val, out, "predictions")) != STORE_OK || !pred) return rc;
    *pred = NULL;
    rc = get_val(t, DB_PREDICTED, k, klen, &val, "predicted classes");
    if (rc == STORE_NOTFOUND) return STORE_OK; /* a PENDING record has none yet */
    if (rc) return rc;
    if (val.mv_size != out->count * sizeof(int32_t)) {
        seterr("damaged predictions of model '%s' (%zu bytes for %llu inputs)", model, val.mv_size,
               (unsigned long long)out->count);
        return STORE_ERROR;
    }
    if (!(*pred = txn_aligned(t, val.mv_data, val.mv_size, _Alignof(int32_t)))) return STORE_ERROR;
    return STORE_OK;
}

int store_predictions_del(store_txn *t, uint32_t dataset, const char *model)
{
    uint8_t k[4 + STORE_NAME_MAX];
    size_t klen;
    int rc = pred_key(dataset, model, k, &klen);
    if (rc) return rc;
    if ((rc = del_key(t, DB_PREDICTIONS, k, klen, "delete predictions")) != STORE_OK) return rc;
    rc = del_key(t, DB_PREDICTED, k, klen, "delete predictions");
    return rc == STORE_NOTFOUND ? STORE_OK : rc;
}

int store_predictions_each(store_txn *t, int (*fn)(const store_predictions *, void *), void *arg)
{
    walker w = {.db = DB_PREDICTIONS, .fn.predictions = fn, .arg = arg};
    return walk(t, &w);
}

int store_classes_put(store_txn *t, uint32_t dataset, const char *names, size_t len)
{
    uint8_t k[4];
    be32(k, dataset);
    return put_val(t, DB_CLASSES, k, 4, names, len, 0, "put class names");
}

int store_classes_get(store_txn *t, uint32_t dataset, const char **names, size_t *len)
{
    uint8_t k[4];
    MDB_val val;
    be32(k, dataset);
    int rc = get_val(t, DB_CLASSES, k, 4, &val, "class names");
    if (rc) return rc;
    *names = val.mv_data;
    *len = val.mv_size;
    return STORE_OK;
}

int store_classes_del(store_txn *t, uint32_t dataset)
{
    uint8_t k[4];
    be32(k, dataset);
    return del_key(t, DB_CLASSES, k, 4, "delete class names");
}

/* ---- jobs ---- */

int store_job_put(store_txn *t, const store_job *j)
{
    uint8_t buf[REC_MAX], k[4];
    size_t len;
    if (j->nindexes > 16) {
        seterr("job %u: too many indexes (%u)", j->id, j->nindexes);
        return STORE_ERROR;
    }
    int rc = ENC(rec_job, j, buf, &len);
    if (rc) return rc;
    be32(k, j->id);
    return put_val(t, DB_JOBS, k, 4, buf, len, 0, "put job");
}

int store_job_get(store_txn *t, uint32_t id, store_job *out)
{
    uint8_t k[4];
    MDB_val val;
    be32(k, id);
    int rc = get_val(t, DB_JOBS, k, 4, &val, "job");
    if (rc) return rc;
    return DEC(rec_job, &val, out, "job");
}

int store_job_each(store_txn *t, int (*fn)(const store_job *, void *), void *arg)
{
    walker w = {.db = DB_JOBS, .fn.job = fn, .arg = arg};
    return walk(t, &w);
}
