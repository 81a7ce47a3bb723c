/* test_dsread.c -- storage/dsread.c: .npy and idx files, plain and gzip'd,
 * built here byte by byte (gzip with zlib's gzwrite), parsed in chunks of
 * every size from 1 to 17 bytes and whole; lying and broken headers; a
 * random-mutation loop; and Fashion-MNIST when the machine has it. */
#include "dsread.h"

#include <check.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

static char tmpdir[128];

/* ---- byte buffers ---- */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        b->p = realloc(b->p, cap);
        ck_assert_ptr_nonnull(b->p);
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void put_u8(buf *b, unsigned v)
{
    uint8_t c = (uint8_t)v;
    put(b, &c, 1);
}

/* Writes the low `size` bytes of v in the given order. */
static void put_int(buf *b, uint64_t v, int size, int big_endian)
{
    for (int i = 0; i < size; i++) put_u8(b, (unsigned)(v >> (8 * (big_endian ? size - 1 - i : i))));
}

/* ---- the values of element i of a test array, per element type ---- */

enum elem { E_U8, E_I32, E_I64, E_F32 };

static uint8_t val_u8(size_t i)
{
    return (uint8_t)(i * 37 + 11);
}
static int64_t val_i32(size_t i)
{
    if (i == 3) return INT32_MIN;
    if (i == 4) return INT32_MAX;
    return (i % 2) ? -(int64_t)(i * 1000003) : (int64_t)i * 7919;
}
static int64_t val_i64(size_t i)
{
    return (int64_t)(i * 0x9e3779b97f4a7c15ULL);
}

static float val_f32(size_t i)
{
    return (float)i * 0.375f - 2.5f + (i == 2 ? 1e30f : 0);
}

/* File bytes of n elements. */
static void put_elems(buf *b, int e, int big_endian, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        switch (e) {
        case E_U8: put_u8(b, val_u8(i)); break;
        case E_I32: put_int(b, (uint64_t)val_i32(i), 4, big_endian); break;
        case E_I64: put_int(b, (uint64_t)val_i64(i), 8, big_endian); break;
        case E_F32: {
            float f = val_f32(i);
            uint32_t u;
            memcpy(&u, &f, 4);
            put_int(b, u, 4, big_endian);
            break;
        }
        }
    }
}

/* What dsread must deliver for n elements, in native order. */
static void expect_elems(buf *b, int e, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (e == E_U8) {
            uint8_t v = val_u8(i);
            put(b, &v, 1);
        } else if (e == E_F32) {
            float v = val_f32(i);
            put(b, &v, 4);
        } else {
            int64_t v = e == E_I32 ? val_i32(i) : val_i64(i);
            put(b, &v, 8);
        }
    }
}

/* ---- file builders ---- */

/* An .npy file with header text `dict` (padded as numpy pads it). */
static buf npy_raw(int version, const char *dict, size_t pad_to)
{
    buf b = {0};
    put(&b, "\x93NUMPY", 6);
    put_u8(&b, (unsigned)version);
    put_u8(&b, 0);
    size_t pre = version == 1 ? 10 : 12, len = strlen(dict);
    size_t total = pre + len + 1;
    if (pad_to) total = (total + pad_to - 1) / pad_to * pad_to;
    size_t hlen = total - pre;
    put_int(&b, hlen, version == 1 ? 2 : 4, 0);
    put(&b, dict, len);
    for (size_t i = len; i + 1 < hlen; i++) put_u8(&b, ' ');
    put_u8(&b, '\n');
    return b;
}

static buf npy_file(int version, const char *descr, const char *shape, int e, int big_endian, size_t nelems)
{
    char dict[256];
    snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr, shape);
    buf b = npy_raw(version, dict, 64);
    put_elems(&b, e, big_endian, nelems);
    return b;
}

static buf idx_file(int type, int ndim, const uint32_t *dims, int e, size_t nelems)
{
    buf b = {0};
    put_u8(&b, 0), put_u8(&b, 0), put_u8(&b, (unsigned)type), put_u8(&b, (unsigned)ndim);
    for (int d = 0; d < ndim; d++) put_int(&b, dims[d], 4, 1);
    put_elems(&b, e, 1, nelems);
    return b;
}

/* gzip of b, through a file written with gzwrite (as gzip(1) would). */
static buf gzip_of(const buf *b)
{
    char path[256];
    snprintf(path, sizeof path, "%s/gz.XXXXXX", tmpdir);
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    gzFile gz = gzopen(path, "wb9");
    ck_assert_ptr_nonnull(gz);
    if (b->n) ck_assert_int_eq(gzwrite(gz, b->p, (unsigned)b->n), (int)b->n);
    ck_assert_int_eq(gzclose(gz), Z_OK);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    buf out = {0};
    uint8_t tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) put(&out, tmp, n);
    fclose(f);
    unlink(path);
    return out;
}

/* ---- the parse, with a recording sink ---- */

typedef struct sink {
    int headers;
    dsread_info info;
    buf data;
    uint64_t next, inputs;
    int order_bad;     /* inputs before the header or out of order */
    int abort_at;      /* return nonzero at this callback (1-based); 0 never */
    int calls;
} sink;

static int on_header(const dsread_info *info, void *arg, char *err, size_t errlen)
{
    sink *s = arg;
    s->headers++;
    s->info = *info;
    return 0;
}

static int on_inputs(const void *data, uint64_t first, uint64_t count, void *arg, char *err, size_t errlen)
{
    sink *s = arg;
    s->calls++;
    if (s->headers != 1 || first != s->next || count == 0) s->order_bad = 1;
    put(&s->data, data, count * s->info.input_bytes);
    s->next += count;
    s->inputs += count;
    if (s->abort_at && s->calls == s->abort_at) {
        snprintf(err, errlen, "stop at call %d", s->calls);
        return 1;
    }
    return 0;
}

/* Feeds f in chunks of `chunk` bytes (0 = whole); 0 when feed and finish pass. */
static int parse(const buf *f, size_t chunk, int format, uint64_t max_bytes, sink *s, char *err, size_t errlen)
{
    dsread *r;
    ck_assert_int_eq(dsread_new(format, max_bytes, on_header, on_inputs, s, &r), 0);
    int rc = 0;
    size_t step = chunk ? chunk : f->n;
    for (size_t off = 0; off < f->n && rc == 0; off += step)
        rc = dsread_feed(r, f->p + off, off + step <= f->n ? step : f->n - off, err, errlen);
    if (rc == 0) rc = dsread_finish(r, err, errlen);
    dsread_free(r);
    return rc;
}

static void sink_free(sink *s)
{
    free(s->data.p);
    memset(s, 0, sizeof *s);
}

/* Parses f whole and in every chunk size 1..17; each must deliver `want`. */
static void check_all_chunkings(const buf *f, int format, int want_format, int want_dtype, int ndim,
                                const int64_t *shape, const buf *want)
{
    for (size_t chunk = 0; chunk <= 17; chunk++) {
        sink s = {0};
        char err[256] = "";
        int rc = parse(f, chunk, format, 0, &s, err, sizeof err);
        ck_assert_msg(rc == 0, "chunk %zu: %s", chunk, err);
        ck_assert_int_eq(s.headers, 1);
        ck_assert_int_eq(s.order_bad, 0);
        ck_assert_int_eq(s.info.format, want_format);
        ck_assert_int_eq(s.info.dtype, want_dtype);
        ck_assert_int_eq(s.info.ndim, ndim);
        size_t elems = 1;
        for (int d = 0; d < ndim; d++) {
            ck_assert_int_eq(s.info.shape[d], shape[d]);
            if (d) elems *= (size_t)shape[d];
        }
        ck_assert_uint_eq(s.info.count, (uint64_t)shape[0]);
        ck_assert_uint_eq(s.info.input_elems, elems);
        size_t esize = want_dtype == DSREAD_U8 ? 1 : want_dtype == DSREAD_F32 ? 4 : 8;
        ck_assert_uint_eq(s.info.input_bytes, elems * esize);
        ck_assert_uint_eq(s.inputs, (uint64_t)shape[0]);
        ck_assert_uint_eq(s.data.n, want->n);
        ck_assert_msg(memcmp(s.data.p, want->p, want->n) == 0, "chunk %zu: delivered values differ", chunk);
        sink_free(&s);
    }
}

/* Expects failure (at feed or finish) for every chunking, the message holding `needle`. */
static void check_fails(const buf *f, int format, uint64_t max_bytes, const char *needle)
{
    for (size_t chunk = 0; chunk <= 17; chunk += (chunk < 3 ? 1 : 7)) {
        sink s = {0};
        char err[256] = "";
        int rc = parse(f, chunk, format, max_bytes, &s, err, sizeof err);
        ck_assert_msg(rc != 0, "chunk %zu: accepted, wanted an error with '%s'", chunk, needle);
        ck_assert_msg(strstr(err, needle), "chunk %zu: error '%s' lacks '%s'", chunk, err, needle);
        ck_assert_int_eq(s.order_bad, 0);
        sink_free(&s);
    }
}

static const int64_t shapes[5][5] = {{7}, {5, 3}, {4, 3, 2}, {3, 2, 2, 3}, {2, 2, 1, 3, 2}};
static const char *const shape_text[5] = {"(7,)", "(5, 3)", "(4, 3, 2)", "(3, 2, 2, 3)", "(2, 2, 1, 3, 2)"};

static size_t shape_elems(int rank)
{
    size_t n = 1;
    for (int d = 0; d < rank; d++) n *= (size_t)shapes[rank - 1][d];
    return n;
}

/* ---- tests ---- */

START_TEST(test_npy_every_dtype_rank)
{
    static const struct {
        const char *descr;
        int e, be, dtype;
    } dts[] = {
        {"|u1", E_U8, 0, DSREAD_U8},   {"<u1", E_U8, 0, DSREAD_U8},   {"<f4", E_F32, 0, DSREAD_F32},
        {">f4", E_F32, 1, DSREAD_F32}, {"<i4", E_I32, 0, DSREAD_I64}, {">i4", E_I32, 1, DSREAD_I64},
        {"<i8", E_I64, 0, DSREAD_I64}, {">i8", E_I64, 1, DSREAD_I64},
    };
    for (size_t k = 0; k < sizeof dts / sizeof dts[0]; k++)
        for (int rank = 1; rank <= 5; rank++) {
            size_t n = shape_elems(rank);
            int version = 1 + (int)((k + (size_t)rank) % 3);
            buf f = npy_file(version, dts[k].descr, shape_text[rank - 1], dts[k].e, dts[k].be, n);
            buf want = {0};
            expect_elems(&want, dts[k].e, n);
            check_all_chunkings(&f, DSREAD_AUTO, DSREAD_NPY, dts[k].dtype, rank, shapes[rank - 1], &want);
            check_all_chunkings(&f, DSREAD_NPY, DSREAD_NPY, dts[k].dtype, rank, shapes[rank - 1], &want);
            buf gz = gzip_of(&f);
            check_all_chunkings(&gz, DSREAD_AUTO, DSREAD_NPY, dts[k].dtype, rank, shapes[rank - 1], &want);
            free(gz.p), free(f.p), free(want.p);
        }
}
END_TEST

START_TEST(test_idx_every_type_rank)
{
    static const struct {
        int type, e, dtype;
    } dts[] = {{0x08, E_U8, DSREAD_U8}, {0x0C, E_I32, DSREAD_I64}, {0x0D, E_F32, DSREAD_F32}};
    for (size_t k = 0; k < 3; k++)
        for (int rank = 1; rank <= 5; rank++) {
            uint32_t dims[5];
            for (int d = 0; d < rank; d++) dims[d] = (uint32_t)shapes[rank - 1][d];
            size_t n = shape_elems(rank);
            buf f = idx_file(dts[k].type, rank, dims, dts[k].e, n);
            buf want = {0};
            expect_elems(&want, dts[k].e, n);
            check_all_chunkings(&f, DSREAD_AUTO, DSREAD_IDX, dts[k].dtype, rank, shapes[rank - 1], &want);
            check_all_chunkings(&f, DSREAD_IDX, DSREAD_IDX, dts[k].dtype, rank, shapes[rank - 1], &want);
            buf gz = gzip_of(&f);
            check_all_chunkings(&gz, DSREAD_AUTO, DSREAD_IDX, dts[k].dtype, rank, shapes[rank - 1], &want);
            check_all_chunkings(&gz, DSREAD_IDX, DSREAD_IDX, dts[k].dtype, rank, shapes[rank - 1], &want);
            free(gz.p), free(f.p), free(want.p);
        }
}
END_TEST

/* Header spellings numpy (or Python 2 numpy) writes, all meaning shape (5,) or (5, 3). */
START_TEST(test_npy_header_spellings)
{
    static const struct {
        const char *dict;
        int ndim;
    } ok[] = {
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 1},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (5), }", 1},
        {"{'descr':'<f4','fortran_order':False,'shape':(5,)}", 1},
        {"{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (5, 3)}", 2},
        {"{'shape': (5L, 3L), 'fortran_order': False, 'descr': '<f4'}", 2},
        {"  {'fortran_order': False, 'descr': '<f4', 'shape': ( 5 , 3 , ) ,\t}\r", 2},
    };
    for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++) {
        size_t n = ok[k].ndim == 1 ? 5 : 15;
        buf f = npy_raw(1, ok[k].dict, k % 2 ? 0 : 64);
        put_elems(&f, E_F32, 0, n);
        buf want = {0};
        expect_elems(&want, E_F32, n);
        int64_t shape[2] = {5, 3};
        check_all_chunkings(&f, DSREAD_AUTO, DSREAD_NPY, DSREAD_F32, ok[k].ndim, shape, &want);
        free(f.p), free(want.p);
    }
}
END_TEST

START_TEST(test_npy_bad_headers)
{
    static const struct {
        const char *dict, *needle;
    } bad[] = {
        {"{'descr': '<f4', 'fortran_order': True, 'shape': (5,), }", "fortran_order"},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }", "unsupported dtype '<f8'"},
        {"{'descr': '<c8', 'fortran_order': False, 'shape': (5,), }", "unsupported dtype"},
        {"{'descr': '|O', 'fortran_order': False, 'shape': (5,), }", "unsupported dtype"},
        {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (5,), }", "descr"},
        {"{'descr': '<f4', 'fortran_order': False, }", "lacks 'shape'"},
        {"{'fortran_order': False, 'shape': (5,), }", "lacks 'descr'"},
        {"{'descr': '<f4', 'shape': (5,), }", "lacks 'fortran_order'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (5,), 'extra': 1}", "unexpected key 'extra'"},
        {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (5,)}", "twice"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (), }", "0-d"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 1, 1, 1, 1, 1), }", "rank above 5"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (-5,), }", "non-negative"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }", "at least 1"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (5, 0), }", "at least 1"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", "non-negative integers"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (9223372036854775807, 9223372036854775807), }",
         "too large"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", "overflow"},
        {"{'descr': '<f4', 'fortran_order': Maybe, 'shape': (5,), }", "True or False"},
        {"{'descr': '<f4', 'fortran_order': Falsehood, 'shape': (5,), }", "True or False"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': [5], }", "tuple"},
        {"{'descr': '<f4' 'fortran_order': False, 'shape': (5,)}", "expected ',' or '}'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (5,)} junk", "after the header dict"},
        {"('descr', '<f4')", "not a Python dict"},
        {"{'descr: '<f4'}", "':'"},
        {"{'descr': '<f4\\n', 'fortran_order': False, 'shape': (5,)}", "descr"},
        {"", "not a Python dict"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        buf f = npy_raw(1 + (int)(k % 3), bad[k].dict, 64);
        put_elems(&f, E_F32, 0, 5);
        check_fails(&f, DSREAD_AUTO, 0, bad[k].needle);
        free(f.p);
    }
    /* A header length of 0, over the limit (v2 and v3 allow 4 GiB). */
    buf f = {0};
    put(&f, "\x93NUMPY\x01\x00\x00\x00", 10);
    check_fails(&f, DSREAD_AUTO, 0, "not a Python dict");
    free(f.p);
    f = (buf){0};
    put(&f, "\x93NUMPY\x02\x00", 8);
    put_int(&f, 1u << 30, 4, 0);
    put(&f, "{'descr': ", 10);
    check_fails(&f, DSREAD_AUTO, 0, "header length");
    free(f.p);
    /* Bad magic, bad version, a NUL inside the header. */
    buf g = npy_file(1, "<f4", "(5,)", E_F32, 0, 5);
    g.p[3] = 'X';
    check_fails(&g, DSREAD_AUTO, 0, "bad magic");
    g.p[3] = 'M';
    g.p[6] = 4;
    check_fails(&g, DSREAD_AUTO, 0, "version 4");
    g.p[6] = 1;
    g.p[20] = 0;
    check_fails(&g, DSREAD_AUTO, 0, "npy");
    free(g.p);
}
END_TEST

START_TEST(test_lying_and_truncated)
{
    /* Header says 6 inputs, 5 follow: finish fails. Header says 4: trailing. */
    buf more = npy_file(1, "<f4", "(6, 3)", E_F32, 0, 15), fewer = npy_file(1, "<f4", "(4, 3)", E_F32, 0, 15);
    check_fails(&more, DSREAD_AUTO, 0, "truncated data: 5 of 6");
    check_fails(&fewer, DSREAD_AUTO, 0, "trailing bytes");
    buf one_more = npy_file(1, "<f4", "(5, 3)", E_F32, 0, 15);
    put_u8(&one_more, 0);
    check_fails(&one_more, DSREAD_AUTO, 0, "trailing bytes");
    /* The same through gzip. */
    buf gm = gzip_of(&more), gf = gzip_of(&fewer);
    check_fails(&gm, DSREAD_AUTO, 0, "truncated data");
    check_fails(&gf, DSREAD_AUTO, 0, "trailing bytes");
    free(more.p), free(fewer.p), free(one_more.p), free(gm.p), free(gf.p);

    /* idx whose dims claim more than is there; one that stops inside an input. */
    uint32_t dims[3] = {4, 2, 2};
    buf i1 = idx_file(0x0D, 3, dims, E_F32, 12);
    check_fails(&i1, DSREAD_AUTO, 0, "truncated data: 3 of 4");
    buf i2 = idx_file(0x0D, 3, dims, E_F32, 14);
    check_fails(&i2, DSREAD_AUTO, 0, "and part of the next");
    free(i1.p), free(i2.p);

    /* Every cut inside a header: never accepted, always "truncated" (or empty). */
    buf n = npy_file(2, "<i8", "(2, 2)", E_I64, 0, 4), x = idx_file(0x08, 3, dims, E_U8, 16);
    size_t nhdr = n.n - 32, xhdr = 16;
    for (size_t cut = 0; cut < nhdr + 8; cut++) {
        buf c = {n.p, cut, cut};
        check_fails(&c, DSREAD_AUTO, 0, cut == 0 ? "empty" : "truncated");
    }
    for (size_t cut = 0; cut < xhdr; cut++) {
        buf c = {x.p, cut, cut};
        check_fails(&c, DSREAD_IDX, 0, cut == 0 ? "empty" : "truncated");
    }
    /* A cut gzip: the data may all be there, the end of stream is not. */
    buf gz = gzip_of(&x);
    buf c = {gz.p, gz.n - 4, gz.n - 4};
    check_fails(&c, DSREAD_AUTO, 0, "gzip");
    c.n = gz.n / 2;
    check_fails(&c, DSREAD_AUTO, 0, "truncated");
    free(n.p), free(x.p), free(gz.p);
}
END_TEST

START_TEST(test_idx_bad_headers)
{
    uint32_t dims[2] = {3, 4};
    buf f = idx_file(0x08, 2, dims, E_U8, 12);
    f.p[2] = 0x0E; /* f64 */
    check_fails(&f, DSREAD_AUTO, 0, "element type 0x0e");
    f.p[2] = 0x09;
    check_fails(&f, DSREAD_AUTO, 0, "element type");
    f.p[2] = 0x08;
    f.p[3] = 0;
    check_fails(&f, DSREAD_AUTO, 0, "rank 0");
    f.p[3] = 6;
    check_fails(&f, DSREAD_AUTO, 0, "rank 6");
    f.p[3] = 2;
    f.p[1] = 1;
    check_fails(&f, DSREAD_AUTO, 0, "idx: bad magic");
    check_fails(&f, DSREAD_IDX, 0, "idx: bad magic");
    f.p[1] = 0;
    f.p[0] = 0x50;
    check_fails(&f, DSREAD_AUTO, 0, "not a .npy or idx file (first byte 0x50)");
    check_fails(&f, DSREAD_IDX, 0, "idx: bad magic");
    f.p[0] = 0;
    check_fails(&f, DSREAD_NPY, 0, "bad magic"); /* format forced, file is idx */
    uint32_t zero[2] = {0, 4}, zero2[2] = {3, 0};
    buf z = idx_file(0x08, 2, zero, E_U8, 0), z2 = idx_file(0x08, 2, zero2, E_U8, 0);
    check_fails(&z, DSREAD_AUTO, 0, "at least 1");
    check_fails(&z2, DSREAD_AUTO, 0, "at least 1");
    buf e = {0};
    check_fails(&e, DSREAD_AUTO, 0, "empty");
    put_u8(&e, 'P');
    check_fails(&e, DSREAD_AUTO, 0, "first byte 0x50");
    e.p[0] = 0x1f; /* lone gzip-looking byte */
    check_fails(&e, DSREAD_AUTO, 0, "first byte 0x1f");
    free(f.p), free(z.p), free(z2.p), free(e.p);
}
END_TEST

START_TEST(test_gzip_members_and_garbage)
{
    uint32_t dims[2] = {40, 5};
    buf f = idx_file(0x08, 2, dims, E_U8, 200);
    buf want = {0};
    expect_elems(&want, E_U8, 200);
    /* Split the file in two and gzip each half: gzip(1) accepts the concatenation. */
    buf a = {f.p, 77, 77}, b = {f.p + 77, f.n - 77, f.n - 77};
    buf ga = gzip_of(&a), gb = gzip_of(&b), both = {0};
    put(&both, ga.p, ga.n);
    put(&both, gb.p, gb.n);
    int64_t shape[2] = {40, 5};
    check_all_chunkings(&both, DSREAD_AUTO, DSREAD_IDX, DSREAD_U8, 2, shape, &want);
    /* An empty member in between changes nothing. */
    buf empty = {0}, ge = gzip_of(&empty), three = {0};
    put(&three, ga.p, ga.n);
    put(&three, ge.p, ge.n);
    put(&three, gb.p, gb.n);
    check_all_chunkings(&three, DSREAD_AUTO, DSREAD_IDX, DSREAD_U8, 2, shape, &want);
    /* Garbage after the stream, a corrupted body. */
    buf g = gzip_of(&f);
    put(&g, "junk", 4);
    check_fails(&g, DSREAD_AUTO, 0, "gzip");
    g.n -= 4;
    g.p[g.n / 2] ^= 0xff;
    g.p[g.n / 2 + 1] ^= 0x55;
    for (size_t chunk = 0; chunk <= 17; chunk += 5) {
        sink s = {0};
        char err[256] = "";
        ck_assert_int_ne(parse(&g, chunk, DSREAD_AUTO, 0, &s, err, sizeof err), 0);
        ck_assert_str_ne(err, "");
        sink_free(&s);
    }
    free(f.p), free(want.p), free(ga.p), free(gb.p), free(both.p), free(ge.p), free(three.p), free(g.p);
}
END_TEST

START_TEST(test_max_bytes)
{
    uint32_t dims[2] = {100, 10};
    buf f = idx_file(0x08, 2, dims, E_U8, 1000); /* 1012 bytes */
    sink s = {0};
    char err[256] = "";
    ck_assert_int_eq(parse(&f, 0, DSREAD_AUTO, 1012, &s, err, sizeof err), 0);
    sink_free(&s);
    check_fails(&f, DSREAD_AUTO, 1011, "limit of 1011");
    /* The header alone announces too much: refused before any input. */
    dims[0] = 1000000;
    buf big = idx_file(0x08, 2, dims, E_U8, 0);
    check_fails(&big, DSREAD_AUTO, 1 << 20, "over the limit");
    /* A gzip bomb whose header lies about its size: the cap holds on the
     * decompressed bytes, and the lie is caught once the data runs past. */
    buf bomb = idx_file(0x08, 2, (uint32_t[]){10, 10}, E_U8, 0);
    uint8_t *zeros = calloc(1, 4 << 20);
    put(&bomb, zeros, 4 << 20);
    buf gbomb = gzip_of(&bomb);
    ck_assert_uint_lt(gbomb.n, 64 << 10);
    check_fails(&gbomb, DSREAD_AUTO, 1 << 20, "trailing bytes");
    buf bomb2 = idx_file(0x08, 2, (uint32_t[]){1 << 20, 10}, E_U8, 0);
    put(&bomb2, zeros, 4 << 20);
    buf gbomb2 = gzip_of(&bomb2);
    check_fails(&gbomb2, DSREAD_AUTO, 1 << 21, "over the limit");
    check_fails(&gbomb2, DSREAD_AUTO, 0, "truncated data");
    free(zeros), free(f.p), free(big.p), free(bomb.p), free(gbomb.p), free(bomb2.p), free(gbomb2.p);
}
END_TEST

START_TEST(test_callback_abort_is_sticky)
{
    uint32_t dims[2] = {50, 4};
    buf f = idx_file(0x0D, 2, dims, E_F32, 200);
    sink s = {.abort_at = 3};
    char err[256] = "";
    dsread *r;
    ck_assert_int_eq(dsread_new(DSREAD_AUTO, 0, on_header, on_inputs, &s, &r), 0);
    int rc = 0;
    size_t i;
    for (i = 0; i < f.n && rc == 0; i += 16) rc = dsread_feed(r, f.p + i, f.n - i < 16 ? f.n - i : 16, err, sizeof err);
    ck_assert_int_ne(rc, 0);
    ck_assert_str_eq(err, "stop at call 3");
    err[0] = 0;
    ck_assert_int_ne(dsread_feed(r, f.p, 1, err, sizeof err), 0);
    ck_assert_str_eq(err, "stop at call 3");
    ck_assert_int_ne(dsread_finish(r, err, sizeof err), 0);
    ck_assert_int_eq(s.calls, 3);
    dsread_free(r);
    sink_free(&s);

    /* No callbacks at all: a validating parse. Feeding after finish fails. */
    ck_assert_int_eq(dsread_new(DSREAD_AUTO, 0, NULL, NULL, NULL, &r), 0);
    ck_assert_int_eq(dsread_feed(r, f.p, f.n, err, sizeof err), 0);
    ck_assert_int_eq(dsread_finish(r, err, sizeof err), 0);
    ck_assert_int_ne(dsread_feed(r, f.p, 1, err, sizeof err), 0);
    dsread_free(r);
    dsread_free(NULL);
    ck_assert_int_ne(dsread_new(7, 0, NULL, NULL, NULL, &r), 0);
    free(f.p);
}
END_TEST

START_TEST(test_large_inputs_in_runs)
{
    /* Inputs larger than the run size and many small ones; both through
     * dsread_file, which reads 1 MiB at a time. */
    char path[256];
    snprintf(path, sizeof path, "%s/big.npy", tmpdir);
    buf f = npy_file(1, "<f4", "(3, 300000)", E_F32, 0, 900000);
    FILE *fp = fopen(path, "wb");
    ck_assert_ptr_nonnull(fp);
    ck_assert_uint_eq(fwrite(f.p, 1, f.n, fp), f.n);
    fclose(fp);
    buf want = {0};
    expect_elems(&want, E_F32, 900000);
    sink s = {0};
    char err[256] = "";
    dsread *r;
    ck_assert_int_eq(dsread_new(DSREAD_AUTO, 0, on_header, on_inputs, &s, &r), 0);
    ck_assert_msg(dsread_file(r, path, err, sizeof err) == 0, "%s", err);
    dsread_free(r);
    ck_assert_uint_eq(s.inputs, 3);
    ck_assert_int_eq(s.order_bad, 0);
    ck_assert(s.data.n == want.n && memcmp(s.data.p, want.p, want.n) == 0);
    sink_free(&s);
    free(f.p), free(want.p);

    f = npy_file(3, "|u1", "(300000,)", E_U8, 0, 300000);
    buf gz = gzip_of(&f);
    snprintf(path, sizeof path, "%s/many.npy.gz", tmpdir);
    fp = fopen(path, "wb");
    ck_assert_uint_eq(fwrite(gz.p, 1, gz.n, fp), gz.n);
    fclose(fp);
    want = (buf){0};
    expect_elems(&want, E_U8, 300000);
    ck_assert_int_eq(dsread_new(DSREAD_AUTO, 0, on_header, on_inputs, &s, &r), 0);
    ck_assert_msg(dsread_file(r, path, err, sizeof err) == 0, "%s", err);
    dsread_free(r);
    ck_assert_uint_eq(s.inputs, 300000);
    ck_assert_int_eq(s.order_bad, 0);
    ck_assert(s.data.n == want.n && memcmp(s.data.p, want.p, want.n) == 0);
    sink_free(&s);
    free(f.p), free(want.p), free(gz.p);

    ck_assert_int_eq(dsread_new(DSREAD_AUTO, 0, NULL, NULL, NULL, &r), 0);
    snprintf(path, sizeof path, "%s/does-not-exist", tmpdir);
    ck_assert_int_ne(dsread_file(r, path, err, sizeof err), 0);
    ck_assert_ptr_nonnull(strstr(err, "does-not-exist"));
    dsread_free(r);
}
END_TEST

/* ---- random mutations: must fail cleanly or deliver exactly count inputs ---- */

static uint64_t rng_state = 0x243f6a8885a308d3ULL;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

START_TEST(test_mutations)
{
    uint32_t dims[3] = {6, 3, 2};
    buf bases[5];
    bases[0] = npy_file(1, "<f4", "(6, 3, 2)", E_F32, 0, 36);
    bases[1] = npy_file(2, ">i4", "(9,)", E_I32, 1, 9);
    bases[2] = idx_file(0x08, 3, dims, E_U8, 36);
    bases[3] = gzip_of(&bases[0]);
    bases[4] = gzip_of(&bases[2]);
    int accepted = 0, rejected = 0;
    for (int iter = 0; iter < 4000; iter++) {
        const buf *b = &bases[iter % 5];
        buf m = {0};
        put(&m, b->p, b->n);
        int edits = 1 + (int)(rnd() % 4);
        for (int e = 0; e < edits; e++) {
            size_t pos = m.n ? (size_t)(rnd() % m.n) : 0;
            switch (rnd() % 6) {
            case 0: /* flip bits */
            case 1:
                if (m.n) m.p[pos] ^= (uint8_t)(1u << (rnd() % 8));
                break;
            case 2: /* random byte */
                if (m.n) m.p[pos] = (uint8_t)rnd();
                break;
            case 3: /* truncate */
                m.n = pos;
                break;
            case 4: { /* insert a byte */
                uint8_t c = (uint8_t)rnd();
                put(&m, &c, 1);
                memmove(m.p + pos + 1, m.p + pos, m.n - pos - 1);
                m.p[pos] = c;
                break;
            }
            case 5: /* delete a byte */
                if (m.n) {
                    memmove(m.p + pos, m.p + pos + 1, m.n - pos - 1);
                    m.n--;
                }
                break;
            }
        }
        sink s = {0};
        char err[256] = "";
        size_t chunk = (size_t)(rnd() % 20);
        int rc = parse(&m, chunk, iter % 7 == 0 ? DSREAD_NPY : DSREAD_AUTO, iter % 3 == 0 ? 4096 : 0, &s, err,
                       sizeof err);
        ck_assert_int_eq(s.order_bad, 0);
        ck_assert_int_le(s.headers, 1);
        if (rc == 0) {
            accepted++;
            ck_assert_int_eq(s.headers, 1);
            ck_assert_uint_eq(s.inputs, s.info.count);
            ck_assert_uint_eq(s.data.n, s.info.count * s.info.input_bytes);
        } else {
            rejected++;
            ck_assert_str_ne(err, "");
            ck_assert_uint_le(s.inputs, s.headers ? s.info.count : 0);
        }
        sink_free(&s);
        free(m.p);
    }
    /* Both outcomes occur (a mutated float is still a valid file). */
    ck_assert_int_gt(accepted, 100);
    ck_assert_int_gt(rejected, 1000);
    for (int i = 0; i < 5; i++) free(bases[i].p);
}
END_TEST

/* ---- Fashion-MNIST, when installed ---- */

typedef struct fm_sink {
    dsread_info info;
    uint64_t inputs, first_sum, last_sum;
} fm_sink;

static int fm_header(const dsread_info *info, void *arg, char *err, size_t errlen)
{
    ((fm_sink *)arg)->info = *info;
    return 0;
}

static int fm_inputs(const void *data, uint64_t first, uint64_t count, void *arg, char *err, size_t errlen)
{
    fm_sink *s = arg;
    const uint8_t *px = data;
    size_t sz = s->info.input_bytes;
    for (uint64_t i = 0; i < count; i++) {
        uint64_t sum = 0;
        for (size_t k = 0; k < sz; k++) sum += px[i * sz + k];
        if (first + i == 0) s->first_sum = sum;
        if (first + i == s->info.count - 1) s->last_sum = sum;
    }
    s->inputs += count;
    return 0;
}

START_TEST(test_fashion_mnist)
{
    const char *path = "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";
    if (access(path, R_OK) != 0) return; /* not installed here: nothing to check */
    fm_sink s = {0};
    dsread *r;
    char err[256] = "";
    ck_assert_int_eq(dsread_new(DSREAD_AUTO, 0, fm_header, fm_inputs, &s, &r), 0);
    ck_assert_msg(dsread_file(r, path, err, sizeof err) == 0, "%s", err);
    dsread_free(r);
    ck_assert_int_eq(s.info.format, DSREAD_IDX);
    ck_assert_int_eq(s.info.dtype, DSREAD_U8);
    ck_assert_int_eq(s.info.ndim, 3);
    ck_assert_int_eq(s.info.shape[0], 10000);
    ck_assert_int_eq(s.info.shape[1], 28);
    ck_assert_int_eq(s.info.shape[2], 28);
    ck_assert_uint_eq(s.info.count, 10000);
    ck_assert_uint_eq(s.inputs, 10000);
    /* Independent fixture, from:
     *   /usr/bin/python3 -c "import gzip; d=gzip.open('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz').read();
     *   print(sum(d[16:16+784]), sum(d[16+784*9999:16+784*10000]))"
     * which printed 33456 24390. */
    ck_assert_uint_eq(s.first_sum, 33456);
    ck_assert_uint_eq(s.last_sum, 24390);
}
END_TEST

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(path);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_dsread.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    Suite *su = suite_create("dsread");
    TCase *tc = tcase_create("dsread");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_npy_every_dtype_rank);
    tcase_add_test(tc, test_idx_every_type_rank);
    tcase_add_test(tc, test_npy_header_spellings);
    tcase_add_test(tc, test_npy_bad_headers);
    tcase_add_test(tc, test_lying_and_truncated);
    tcase_add_test(tc, test_idx_bad_headers);
    tcase_add_test(tc, test_gzip_members_and_garbage);
    tcase_add_test(tc, test_max_bytes);
    tcase_add_test(tc, test_callback_abort_is_sticky);
    tcase_add_test(tc, test_large_inputs_in_runs);
    tcase_add_test(tc, test_mutations);
    tcase_add_test(tc, test_fashion_mnist);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return failed ? 1 : 0;
}
