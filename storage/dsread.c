/* dsread.c -- push parser of .npy and idx dataset files, optionally gzip'd.
 *
 * Two layers. The outer one sniffs the first bytes for the gzip magic
 * (1f 8b) and, if present, inflates in GZ_OUT pieces; concatenated gzip
 * members are accepted, as gzip(1) and Python do. The inner one parses the
 * (decompressed) bytes: the header is collected into a small buffer, then
 * inputs are delivered straight from the fed chunk in runs; only an input
 * that straddles two chunks is gathered in the carry buffer. So memory is
 * one input (carry) plus one run of converted inputs (at most RUN_BYTES or
 * one input), plus zlib's window, whatever the file size -- and the carry
 * grows only as bytes arrive, so a header that lies about the input size
 * cannot make us allocate what was never sent.
 *
 * Decisions: a dataset must hold at least one input and every dimension
 * must be at least 1 (count 0 and empty inputs are rejected at the header);
 * rank is 1..5 (rank 1: every input is one scalar, e.g. labels). Every
 * failure is sticky: later feeds and finish report the first error.
 */
#include "dsread.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#define NPY_HDR_MAX 65536          /* numpy itself refuses headers past 10 kB by default */
#define MAX_RANK 5
#define GZ_OUT (64 << 10)
#define RUN_BYTES (1 << 20)        /* converted inputs handed over per callback */
#define FILE_CHUNK (1 << 20)

enum stage { S_MAGIC, S_NPY_PRE, S_NPY_LEN, S_NPY_HDR, S_IDX_PRE, S_IDX_DIMS, S_DATA };
enum src_type { SRC_U8, SRC_I32, SRC_I64, SRC_F32 };

struct dsread {
    int format; /* as asked; info.format once detected */
    uint64_t max_bytes;
    dsread_header_fn on_header;
    dsread_inputs_fn on_inputs;
    void *arg;

    /* gzip layer */
    int gz; /* -1 undecided, 0 plain, 1 gzip */
    uint8_t sniff[2];
    size_t nsniff;
    z_stream z;
    int z_init, z_end; /* z_end: the last member ended and nothing followed yet */
    uint8_t *zout;

    /* file layer */
    int stage;
    uint64_t raw_total; /* decompressed bytes seen */
    uint8_t *hdr;
    size_t hdr_len, hdr_need;
    dsread_info info;
    int src_type, src_size, src_be;
    size_t input_raw; /* bytes of one input in the file */
    size_t run_max;   /* inputs per callback */
    uint64_t delivered;
    uint8_t *carry;
    size_t carry_len, carry_cap;
    void *out; /* converted inputs, malloc-aligned for float and int64 */
    size_t out_cap;

    int failed, finished;
    char msg[256];
    char cbmsg[256];
};

/* ---- errors ---- */

static int fail(dsread *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(dsread *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    r->failed = 1;
    return -1;
}

static int report(dsread *r, int rc, char *err, size_t errlen)
{
    if (rc && err && errlen) snprintf(err, errlen, "%s", r->msg);
    return rc;
}

/* ---- byte order ---- */

static uint32_t ld32(const uint8_t *p, int be)
{
    return be ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
              : (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static uint64_t ld64(const uint8_t *p, int be)
{
    uint64_t hi = ld32(p + (be ? 0 : 4), be), lo = ld32(p + (be ? 4 : 0), be);
    return hi << 32 | lo;
}

/* ---- the npy header dict ---- */

typedef struct scan {
    const char *p, *end;
} scan;

static void sk_ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}

static int sk_char(scan *s, char c)
{
    sk_ws(s);
    if (s->p < s->end && *s->p == c) {
        s->p++;
        return 1;
    }
    return 0;
}

/* A Python string literal without escapes: 'x' or "x". */
static int sk_string(scan *s, char *out, size_t cap)
{
    sk_ws(s);
    if (s->p >= s->end || (*s->p != '\'' && *s->p != '"')) return 0;
    char q = *s->p++;
    const char *start = s->p;
    while (s->p < s->end && *s->p != q) {
        unsigned char c = (unsigned char)*s->p;
        if (c == '\\' || c < 0x20 || c >= 0x7f) return 0;
        s->p++;
    }
    if (s->p >= s->end) return 0;
    size_t n = (size_t)(s->p - start);
    if (n >= cap) return 0;
    memcpy(out, start, n);
    out[n] = 0;
    s->p++;
    return 1;
}

static int sk_word(scan *s, const char *w)
{
    sk_ws(s);
    size_t n = strlen(w);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0) return 0;
    if ((size_t)(s->end - s->p) > n) {
        char c = s->p[n];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_') return 0;
    }
    s->p += n;
    return 1;
}

/* A non-negative integer literal, with Python 2's L suffix allowed. */
static int sk_int(scan *s, int64_t *v)
{
    sk_ws(s);
    int64_t x = 0;
    int digits = 0;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') {
        int d = *s->p - '0';
        if (x > (INT64_MAX - d) / 10) return 0;
        x = x * 10 + d;
        s->p++;
        digits++;
    }
    if (!digits) return 0;
    if (s->p < s->end && (*s->p == 'L' || *s->p == 'l')) s->p++;
    *v = x;
    return 1;
}

static int npy_dict(dsread *r, const char *text, size_t len)
{
    scan s = {text, text + len};
    char key[32], descr[16] = "";
    int have_descr = 0, have_fortran = 0, have_shape = 0, fortran = 0, ndim = 0;
    int64_t shape[MAX_RANK];

    if (!sk_char(&s, '{')) return fail(r, "npy: header is not a Python dict");
    if (!sk_char(&s, '}')) {
        for (;;) {
            if (!sk_string(&s, key, sizeof key)) return fail(r, "npy: header dict: expected a quoted key");
            if (!sk_char(&s, ':')) return fail(r, "npy: header dict: expected ':' after '%s'", key);
            if (!strcmp(key, "descr")) {
                if (have_descr++) return fail(r, "npy: header dict: 'descr' given twice");
                if (!sk_string(&s, descr, sizeof descr))
                    return fail(r, "npy: 'descr' must be a simple dtype string such as '<f4' "
                                   "(structured dtypes are not supported)");
            } else if (!strcmp(key, "fortran_order")) {
                if (have_fortran++) return fail(r, "npy: header dict: 'fortran_order' given twice");
                if (sk_word(&s, "False"))
                    fortran = 0;
                else if (sk_word(&s, "True"))
                    fortran = 1;
                else
                    return fail(r, "npy: 'fortran_order' must be True or False");
            } else if (!strcmp(key, "shape")) {
                if (have_shape++) return fail(r, "npy: header dict: 'shape' given twice");
                if (!sk_char(&s, '(')) return fail(r, "npy: 'shape' must be a tuple");
                if (!sk_char(&s, ')')) {
                    for (;;) {
                        if (ndim == MAX_RANK) return fail(r, "npy: arrays of rank above %d are not supported", MAX_RANK);
                        if (!sk_int(&s, &shape[ndim])) return fail(r, "npy: 'shape' must hold non-negative integers");
                        ndim++;
                        if (sk_char(&s, ')')) break;
                        if (!sk_char(&s, ',')) return fail(r, "npy: 'shape': expected ',' or ')'");
                        if (sk_char(&s, ')')) break;
                    }
                }
            } else {
                return fail(r, "npy: header dict: unexpected key '%s'", key);
            }
            if (sk_char(&s, ',')) {
                if (sk_char(&s, '}')) break;
                continue;
            }
            if (sk_char(&s, '}')) break;
            return fail(r, "npy: header dict: expected ',' or '}'");
        }
    }
    sk_ws(&s);
    if (s.p != s.end) return fail(r, "npy: unexpected bytes after the header dict");
    if (!have_descr || !have_fortran || !have_shape)
        return fail(r, "npy: header dict lacks '%s'", !have_descr ? "descr" : !have_fortran ? "fortran_order" : "shape");
    if (fortran)
        return fail(r, "npy: fortran_order True is not supported (save a C-order array: np.ascontiguousarray)");
    if (ndim == 0) return fail(r, "npy: a 0-d array holds no inputs (shape ())");

    static const struct {
        const char *descr;
        int type, be;
    } dtypes[] = {
        {"|u1", SRC_U8, 0},  {"<u1", SRC_U8, 0},  {">u1", SRC_U8, 0},  {"<f4", SRC_F32, 0}, {">f4", SRC_F32, 1},
        {"<i4", SRC_I32, 0}, {">i4", SRC_I32, 1}, {"<i8", SRC_I64, 0}, {">i8", SRC_I64, 1},
    };
    size_t i;
    for (i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (!strcmp(descr, dtypes[i].descr)) break;
    if (i == sizeof dtypes / sizeof dtypes[0])
        return fail(r, "npy: unsupported dtype '%s' (use uint8, int32, int64 or float32, e.g. a.astype('float32'))",
                    descr);
    r->src_type = dtypes[i].type;
    r->src_be = dtypes[i].be;
    r->info.ndim = ndim;
    for (int d = 0; d < ndim; d++) r->info.shape[d] = shape[d];
    return 0;
}

/* ---- header complete: sizes, limits, the header callback ---- */

static int start_data(dsread *r)
{
    dsread_info *in = &r->info;
    static const int src_sizes[] = {[SRC_U8] = 1, [SRC_I32] = 4, [SRC_I64] = 8, [SRC_F32] = 4};
    static const int dtypes[] = {[SRC_U8] = DSREAD_U8, [SRC_I32] = DSREAD_I64, [SRC_I64] = DSREAD_I64,
                                 [SRC_F32] = DSREAD_F32};
    static const size_t out_sizes[] = {[SRC_U8] = 1, [SRC_I32] = 8, [SRC_I64] = 8, [SRC_F32] = 4};
    r->src_size = src_sizes[r->src_type];
    in->dtype = dtypes[r->src_type];
    size_t osize = out_sizes[r->src_type];

    size_t elems = 1;
    for (int d = 0; d < in->ndim; d++) {
        if (in->shape[d] < 1) return fail(r, "shape: dimension %d is %lld (every dimension must be at least 1)", d,
                                          (long long)in->shape[d]);
        if (d == 0) continue;
        if ((uint64_t)in->shape[d] > SIZE_MAX / 8 / elems)
            return fail(r, "shape: one input is too large (dimension %d)", d);
        elems *= (size_t)in->shape[d];
    }
    in->count = (uint64_t)in->shape[0];
    in->input_elems = elems;
    in->input_bytes = elems * osize;
    r->input_raw = elems * (size_t)r->src_size;
    if (in->count > UINT64_MAX / r->input_raw) return fail(r, "shape: %llu inputs overflow", (unsigned long long)in->count);
    uint64_t total = in->count * r->input_raw;
    if (r->max_bytes && (total > r->max_bytes || r->hdr_len > r->max_bytes - total))
        return fail(r, "the header announces %llu bytes of data, over the limit of %llu bytes",
                    (unsigned long long)total, (unsigned long long)r->max_bytes);
    r->run_max = in->input_bytes >= RUN_BYTES ? 1 : RUN_BYTES / in->input_bytes;

    free(r->hdr); /* not needed past here */
    r->hdr = NULL;
    r->stage = S_DATA;
    if (r->on_header) {
        r->cbmsg[0] = 0;
        if (r->on_header(in, r->arg, r->cbmsg, sizeof r->cbmsg))
            return fail(r, "%s", r->cbmsg[0] ? r->cbmsg : "aborted");
    }
    return 0;
}

/* The header buffer holds hdr_need bytes: act on them, set the next need. */
static int header_step(dsread *r)
{
    const uint8_t *h = r->hdr;
    switch (r->stage) {
    case S_MAGIC:
        if (r->format == DSREAD_AUTO) {
            if (h[0] == 0x93)
                r->info.format = DSREAD_NPY;
            else if (h[0] == 0)
                r->info.format = DSREAD_IDX;
            else
                return fail(r, "not a .npy or idx file (first byte 0x%02x)", h[0]);
        } else {
            r->info.format = r->format;
            if (r->format == DSREAD_NPY && h[0] != 0x93) return fail(r, "npy: bad magic (not a .npy file)");
            if (r->format == DSREAD_IDX && h[0] != 0) return fail(r, "idx: bad magic (not an idx file)");
        }
        if (r->info.format == DSREAD_NPY) {
            r->stage = S_NPY_PRE;
            r->hdr_need = 8;
        } else {
            r->stage = S_IDX_PRE;
            r->hdr_need = 4;
        }
        return 0;
    case S_NPY_PRE:
        if (memcmp(h, "\x93NUMPY", 6) != 0) return fail(r, "npy: bad magic (not a .npy file)");
        if (h[6] < 1 || h[6] > 3) return fail(r, "npy: unsupported format version %d.%d", h[6], h[7]);
        r->stage = S_NPY_LEN;
        r->hdr_need = h[6] == 1 ? 10 : 12;
        return 0;
    case S_NPY_LEN: {
        uint32_t hlen = h[6] == 1 ? (uint32_t)h[8] | (uint32_t)h[9] << 8 : ld32(h + 8, 0);
        if (hlen > NPY_HDR_MAX) return fail(r, "npy: header length %u is over the limit of %d bytes", hlen, NPY_HDR_MAX);
        r->stage = S_NPY_HDR;
        r->hdr_need += hlen;
        if (hlen) return 0;
        return header_step(r); /* an empty header is complete (and will be refused) */
    }
    case S_NPY_HDR: {
        size_t off = h[6] == 1 ? 10 : 12;
        if (npy_dict(r, (const char *)h + off, r->hdr_len - off)) return -1;
        return start_data(r);
    }
    case S_IDX_PRE:
        if (h[0] != 0 || h[1] != 0) return fail(r, "idx: bad magic (not an idx file)");
        switch (h[2]) {
        case 0x08: r->src_type = SRC_U8; break;
        case 0x0C: r->src_type = SRC_I32; break;
        case 0x0D: r->src_type = SRC_F32; break;
        default: return fail(r, "idx: unsupported element type 0x%02x (u8 0x08, i32 0x0C, f32 0x0D are)", h[2]);
        }
        if (h[3] < 1 || h[3] > MAX_RANK) return fail(r, "idx: rank %d is not supported (1 to %d are)", h[3], MAX_RANK);
        r->src_be = 1;
        r->info.ndim = h[3];
        r->stage = S_IDX_DIMS;
        r->hdr_need = 4 + 4 * (size_t)h[3];
        return 0;
    case S_IDX_DIMS:
        for (int d = 0; d < r->info.ndim; d++) r->info.shape[d] = ld32(h + 4 + 4 * d, 1);
        return start_data(r);
    }
    return fail(r, "internal: bad stage");
}

/* ---- data ---- */

static int deliver(dsread *r, const uint8_t *src, size_t k)
{
    const void *data = src;
    if (r->src_type != SRC_U8) {
        size_t bytes = k * r->info.input_bytes;
        if (bytes > r->out_cap) {
            void *o = realloc(r->out, bytes);
            if (!o) return fail(r, "out of memory (%zu bytes)", bytes);
            r->out = o;
            r->out_cap = bytes;
        }
        size_t n = k * r->info.input_elems, sz = (size_t)r->src_size;
        int be = r->src_be;
        if (r->src_type == SRC_F32) {
            float *o = r->out;
            for (size_t i = 0; i < n; i++) {
                uint32_t u = ld32(src + i * sz, be);
                memcpy(&o[i], &u, 4);
            }
        } else if (r->src_type == SRC_I32) {
            int64_t *o = r->out;
            for (size_t i = 0; i < n; i++) o[i] = (int32_t)ld32(src + i * sz, be);
        } else {
            int64_t *o = r->out;
            for (size_t i = 0; i < n; i++) o[i] = (int64_t)ld64(src + i * sz, be);
        }
        data = r->out;
    }
    if (r->on_inputs) {
        r->cbmsg[0] = 0;
        if (r->on_inputs(data, r->delivered, k, r->arg, r->cbmsg, sizeof r->cbmsg))
            return fail(r, "%s", r->cbmsg[0] ? r->cbmsg : "aborted");
    }
    r->delivered += k;
    return 0;
}

static int data_feed(dsread *r, const uint8_t *p, size_t n)
{
    size_t in_raw = r->input_raw;
    while (n > 0) {
        if (r->delivered == r->info.count)
            return fail(r, "trailing bytes after the last of the %llu inputs the header announces",
                        (unsigned long long)r->info.count);
        if (r->carry_len > 0 || n < in_raw) { /* an input split across chunks */
            size_t take = in_raw - r->carry_len < n ? in_raw - r->carry_len : n;
            if (r->carry_len + take > r->carry_cap) {
                size_t cap = r->carry_cap ? r->carry_cap : 4096;
                while (cap < r->carry_len + take) cap = cap > in_raw / 2 ? in_raw : cap * 2;
                uint8_t *c = realloc(r->carry, cap);
                if (!c) return fail(r, "out of memory (%zu bytes)", cap);
                r->carry = c;
                r->carry_cap = cap;
            }
            memcpy(r->carry + r->carry_len, p, take);
            r->carry_len += take;
            p += take;
            n -= take;
            if (r->carry_len == in_raw) {
                r->carry_len = 0;
                if (deliver(r, r->carry, 1)) return -1;
            }
            continue;
        }
        uint64_t k = n / in_raw, left = r->info.count - r->delivered;
        if (k > left) k = left;
        if (k > r->run_max) k = r->run_max;
        if (deliver(r, p, (size_t)k)) return -1;
        p += (size_t)k * in_raw;
        n -= (size_t)k * in_raw;
    }
    return 0;
}

/* Decompressed (or plain) bytes of the file. */
static int raw_feed(dsread *r, const uint8_t *p, size_t n)
{
    r->raw_total += n;
    if (r->max_bytes && r->raw_total > r->max_bytes)
        return fail(r, "the data is over the limit of %llu bytes", (unsigned long long)r->max_bytes);
    while (n > 0) {
        if (r->stage == S_DATA) return data_feed(r, p, n);
        if (!r->hdr) {
            r->hdr = malloc(12 + NPY_HDR_MAX);
            if (!r->hdr) return fail(r, "out of memory");
        }
        size_t take = r->hdr_need - r->hdr_len < n ? r->hdr_need - r->hdr_len : n;
        memcpy(r->hdr + r->hdr_len, p, take);
        r->hdr_len += take;
        p += take;
        n -= take;
        if (r->hdr_len == r->hdr_need && header_step(r)) return -1;
    }
    return 0;
}

/* ---- gzip layer ---- */

static int gz_feed(dsread *r, const uint8_t *p, size_t n)
{
    z_stream *z = &r->z;
    while (n > 0) {
        /* avail_in is 32 bits wide */
        uInt step = n > (1u << 30) ? (1u << 30) : (uInt)n;
        z->next_in = (Bytef *)p;
        z->avail_in = step;
        for (;;) {
            if (r->z_end) {
                if (z->avail_in == 0) break;
                inflateReset(z); /* another gzip member follows */
                r->z_end = 0;
            }
            z->next_out = r->zout;
            z->avail_out = GZ_OUT;
            int zr = inflate(z, Z_NO_FLUSH);
            size_t got = GZ_OUT - z->avail_out;
            if (got && raw_feed(r, r->zout, got)) return -1;
            if (zr == Z_STREAM_END) {
                r->z_end = 1;
                continue;
            }
            if (zr == Z_OK) {
                if (z->avail_in == 0 && z->avail_out != 0) break;
                continue;
            }
            if (zr == Z_BUF_ERROR && z->avail_in == 0) break; /* needs more input */
            return fail(r, "gzip: %s", z->msg ? z->msg : "corrupt data");
        }
        p += step;
        n -= step;
    }
    return 0;
}

static int layer_feed(dsread *r, const uint8_t *p, size_t n)
{
    if (n == 0) return 0;
    return r->gz ? gz_feed(r, p, n) : raw_feed(r, p, n);
}

/* Decides gzip or not from the sniffed bytes and replays them. */
static int decide(dsread *r)
{
    r->gz = r->nsniff == 2 && r->sniff[0] == 0x1f && r->sniff[1] == 0x8b;
    if (r->gz) {
        r->zout = malloc(GZ_OUT);
        if (!r->zout) return fail(r, "out of memory");
        if (inflateInit2(&r->z, 16 + MAX_WBITS) != Z_OK) return fail(r, "gzip: cannot start zlib");
        r->z_init = 1;
    }
    return layer_feed(r, r->sniff, r->nsniff);
}

/* ---- API ---- */

int dsread_new(int format, uint64_t max_bytes, dsread_header_fn on_header, dsread_inputs_fn on_inputs, void *arg,
               dsread **out)
{
    *out = NULL;
    if (format != DSREAD_AUTO && format != DSREAD_NPY && format != DSREAD_IDX) return -1;
    dsread *r = calloc(1, sizeof *r);
    if (!r) return -1;
    r->format = format;
    r->max_bytes = max_bytes;
    r->on_header = on_header;
    r->on_inputs = on_inputs;
    r->arg = arg;
    r->gz = -1;
    r->stage = S_MAGIC;
    r->hdr_need = 1;
    *out = r;
    return 0;
}

int dsread_feed(dsread *r, const void *buf, size_t len, char *err, size_t errlen)
{
    if (r->failed) return report(r, -1, err, errlen);
    if (r->finished) return report(r, fail(r, "data fed after dsread_finish"), err, errlen);
    const uint8_t *p = buf;
    if (len == 0) return 0;
    if (r->gz < 0) {
        /* One byte decides unless it is 0x1f. */
        while (r->nsniff < 2 && len > 0 && !(r->nsniff == 1 && r->sniff[0] != 0x1f)) {
            r->sniff[r->nsniff++] = *p++;
            len--;
        }
        if (r->nsniff < 2 && r->sniff[0] == 0x1f) return 0;
        if (decide(r)) return report(r, -1, err, errlen);
    }
    return report(r, layer_feed(r, p, len), err, errlen);
}

int dsread_finish(dsread *r, char *err, size_t errlen)
{
    if (r->failed) return report(r, -1, err, errlen);
    if (r->finished) return 0;
    if (r->gz < 0) {
        if (r->nsniff == 0) return report(r, fail(r, "empty file"), err, errlen);
        if (decide(r)) return report(r, -1, err, errlen);
    }
    if (r->stage != S_DATA)
        return report(r, fail(r, "truncated header (%llu bytes)", (unsigned long long)r->raw_total), err, errlen);
    if (r->delivered < r->info.count)
        return report(r,
                      fail(r, "truncated data: %llu of %llu inputs complete%s", (unsigned long long)r->delivered,
                           (unsigned long long)r->info.count, r->carry_len ? " and part of the next" : ""),
                      err, errlen);
    if (r->gz && !r->z_end) return report(r, fail(r, "gzip: truncated stream (no end of stream)"), err, errlen);
    r->finished = 1;
    return 0;
}

void dsread_free(dsread *r)
{
    if (!r) return;
    if (r->z_init) inflateEnd(&r->z);
    free(r->zout);
    free(r->hdr);
    free(r->carry);
    free(r->out);
    free(r);
}

int dsread_file(dsread *r, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (err && errlen) snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    uint8_t *buf = malloc(FILE_CHUNK);
    int rc = -1;
    if (!buf) {
        if (err && errlen) snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (;;) {
        ssize_t n = read(fd, buf, FILE_CHUNK);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            if (err && errlen) snprintf(err, errlen, "%s: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0) break;
        if (dsread_feed(r, buf, (size_t)n, err, errlen)) goto fail;
    }
    rc = dsread_finish(r, err, errlen);
fail:
    free(buf);
    close(fd);
    return rc;
}
