/* test_proto.c -- request parsing and validation (proto/, jspec) against
 * hand-written expectations: every request type accepted with all its
 * optional fields and defaults, rejected with the right status, code and a
 * message naming the field; neuron groups flattened against an independent
 * row-major enumeration; a fixed-seed mutation loop for the no-crash
 * property. Bodies are written with ' for " (see jq) to stay readable. */
#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

/* Per-element checks without Check's per-call mark point (slow in loops). */
#define EXPECT(cond, ...)                                                                                          \
    do {                                                                                                           \
        if (!(cond)) ck_abort_msg(__VA_ARGS__);                                                                    \
    } while (0)

/* ---- helpers ------------------------------------------------------------ */

#include "testrng.h"

/* The body with every ' turned into ", malloc'd. */
static char *jq(const char *s)
{
    char *b = strdup(s);
    ck_assert_ptr_nonnull(b);
    for (char *p = b; *p; p++)
        if (*p == '\'') *p = '"';
    return b;
}

enum kind { K_MODEL, K_DATASET, K_INDEX, K_TOPK, K_KNN };
static const char *kind_name[] = {"model", "dataset", "index", "topk", "knn"};

/* Parses body (exactly len bytes, in a buffer of that size so an over-read
 * shows under ASan/valgrind) as a request of kind k and frees the result. */
static int parse_raw(enum kind k, const char *body, size_t len, proto_err *e)
{
    char *buf = malloc(len ? len : 1);
    ck_assert_ptr_nonnull(buf);
    memcpy(buf, body, len);
    int rc = -1;
    switch (k) {
    case K_MODEL: {
        proto_model_req r;
        rc = proto_parse_model(buf, len, &r, e);
        proto_free_model(&r);
        proto_free_model(&r);
        break;
    }
    case K_DATASET: {
        proto_dataset_req r;
        rc = proto_parse_dataset(buf, len, &r, e);
        proto_free_dataset(&r);
        proto_free_dataset(&r);
        break;
    }
    case K_INDEX: {
        proto_index_req r;
        rc = proto_parse_index(buf, len, &r, e);
        proto_free_index(&r);
        break;
    }
    case K_TOPK:
    case K_KNN: {
        proto_query_req r;
        rc = proto_parse_query(buf, len, k == K_KNN, &r, e);
        proto_free_query(&r);
        proto_free_query(&r);
        break;
    }
    }
    free(buf);
    return rc;
}

static int parse_sq(enum kind k, const char *sq, proto_err *e)
{
    char *b = jq(sq);
    int rc = parse_raw(k, b, strlen(b), e);
    free(b);
    return rc;
}

static void expect_err(int rc, const proto_err *e, int status, const char *code, const char *needle, const char *what)
{
    ck_assert_msg(rc == -1, "%s: accepted, expected %d %s", what, status, code);
    ck_assert_msg(e->status == status && strcmp(e->code, code) == 0, "%s: got %d %s (%s), expected %d %s", what,
                  e->status, e->code, e->message, status, code);
    if (needle)
        ck_assert_msg(strstr(e->message, needle) != NULL, "%s: message '%s' does not mention '%s'", what, e->message,
                      needle);
}

typedef struct {
    enum kind k;
    const char *body; /* ' for " */
    int status;
    const char *code;
    const char *needle; /* must appear in the message */
} bad_case;

static void run_bad(const bad_case *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        proto_err e;
        memset(&e, 0, sizeof e);
        char what[512];
        snprintf(what, sizeof what, "%s %s", kind_name[c[i].k], c[i].body);
        expect_err(parse_sq(c[i].k, c[i].body, &e), &e, c[i].status, c[i].code, c[i].needle, what);
    }
}

static char *repeat(char ch, size_t n)
{
    char *s = malloc(n + 1);
    ck_assert_ptr_nonnull(s);
    memset(s, ch, n);
    s[n] = '\0';
    return s;
}

/* ---- jspec directly ------------------------------------------------------ */

typedef struct {
    char name[65];
    char *str;
    int choice, flag, has_u, has_str;
    uint64_t u;
    int64_t i;
    double num, any;
    jspec_floats f;
    jspec_uints us;
    json_t *raw;
} every_type;

static const char *const colours[] = {"red", "green", "blue", NULL};

static void every_specs(every_type *t, jspec *s)
{
    jspec specs[] = {
        {.name = "name", .type = JS_NAME, .required = 1, .dest = t->name},
        {.name = "str", .type = JS_STRING, .dest = &t->str, .present = &t->has_str, .max = 8},
        {.name = "choice", .type = JS_ENUM, .dest = &t->choice, .choices = colours},
        {.name = "u", .type = JS_UINT, .dest = &t->u, .present = &t->has_u, .min = 1, .max = 10},
        {.name = "i", .type = JS_INT, .dest = &t->i, .min = -5, .max = 5},
        {.name = "num", .type = JS_NUMBER, .dest = &t->num, .dmin = -1, .dmax = 1},
        {.name = "any", .type = JS_NUMBER, .dest = &t->any},
        {.name = "flag", .type = JS_BOOL, .dest = &t->flag},
        {.name = "f", .type = JS_FLOATS, .dest = &t->f, .dmin = 0, .dmax = 2, .max = 3},
        {.name = "us", .type = JS_UINTS, .dest = &t->us, .min = 0, .max = 100, .maxn = 4},
        {.name = "raw", .type = JS_JSON, .dest = &t->raw},
        {0},
    };
    memcpy(s, specs, sizeof specs);
}

static int jspec_sq(const char *sq, every_type *t, jspec *specs, proto_err *e)
{
    char *b = jq(sq);
    json_error_t je;
    json_t *o = json_loads(b, JSON_DECODE_ANY, &je);
    free(b);
    ck_assert_msg(o != NULL, "test body does not parse: %s", je.text);
    memset(t, 0, sizeof *t);
    every_specs(t, specs);
    int rc = jspec_parse(o, specs, e);
    json_decref(o);
    return rc;
}

START_TEST(test_jspec_every_type)
{
    every_type t;
    jspec specs[12];
    proto_err e;
    ck_assert_int_eq(jspec_sq("{'name':'a.b-c_9','str':'hello','choice':'blue','u':10,'i':-5,'num':-1,"
                              "'any':-1e300,'flag':true,'f':[0,1.5,2],'us':[0,100,7],'raw':{'x':[1]}}",
                              &t, specs, &e),
                     0);
    ck_assert_str_eq(t.name, "a.b-c_9");
    ck_assert_str_eq(t.str, "hello");
    ck_assert_int_eq(t.has_str, 1);
    ck_assert_int_eq(t.choice, 2);
    ck_assert_uint_eq(t.u, 10);
    ck_assert_int_eq(t.has_u, 1);
    ck_assert_int_eq(t.i, -5);
    ck_assert(t.num == -1.0 && t.any == -1e300);
    ck_assert_int_eq(t.flag, 1);
    ck_assert_uint_eq(t.f.n, 3);
    ck_assert(t.f.v[0] == 0 && t.f.v[1] == 1.5 && t.f.v[2] == 2);
    ck_assert_uint_eq(t.us.n, 3);
    ck_assert(t.us.v[0] == 0 && t.us.v[1] == 100 && t.us.v[2] == 7);
    ck_assert_ptr_nonnull(t.raw); /* borrowed: see test_jspec_raw_is_borrowed */
    jspec_free(specs);
    ck_assert_ptr_null(t.str);
    ck_assert_ptr_null(t.f.v);
    ck_assert_ptr_null(t.us.v);
    ck_assert_uint_eq(t.f.n + t.us.n, 0);
    jspec_free(specs); /* twice is safe */

    /* Absent optional fields: untouched and not marked present; null = absent. */
    ck_assert_int_eq(jspec_sq("{'name':'x','u':null}", &t, specs, &e), 0);
    ck_assert_int_eq(t.has_u, 0);
    ck_assert_int_eq(t.has_str, 0);
    ck_assert_ptr_null(t.str);
    jspec_free(specs);
}
END_TEST

START_TEST(test_jspec_raw_is_borrowed)
{
    every_type t;
    jspec specs[12];
    proto_err e;
    json_t *o = json_pack("{s:s,s:[i,i]}", "name", "n", "raw", 1, 2);
    memset(&t, 0, sizeof t);
    every_specs(&t, specs);
    ck_assert_int_eq(jspec_parse(o, specs, &e), 0);
    ck_assert_ptr_eq(t.raw, json_object_get(o, "raw"));
    ck_assert_int_eq(json_array_size(t.raw), 2);
    jspec_free(specs);
    json_decref(o);
}
END_TEST

START_TEST(test_jspec_errors)
{
    static const struct {
        const char *body;
        int status;
        const char *code, *needle;
    } cases[] = {
        {"[1]", 400, "invalid_body", "object"},
        {"{'str':'x'}", 400, "missing_field", "'name'"},
        {"{'name':'x','nope':1}", 400, "unknown_field", "'nope'"},
        {"{'name':3}", 400, "invalid_type", "'name'"},
        {"{'name':'a b'}", 422, "invalid_name", "'name'"},
        {"{'name':''}", 422, "invalid_name", "'name'"},
        {"{'name':'x','str':''}", 422, "invalid_value", "'str'"},
        {"{'name':'x','str':'123456789'}", 422, "invalid_value", "'str'"},
        {"{'name':'x','str':1}", 400, "invalid_type", "'str'"},
        {"{'name':'x','choice':'pink'}", 422, "invalid_value", "'red', 'green', 'blue'"},
        {"{'name':'x','choice':0}", 400, "invalid_type", "'choice'"},
        {"{'name':'x','u':0}", 422, "invalid_value", "from 1 to 10"},
        {"{'name':'x','u':11}", 422, "invalid_value", "'u'"},
        {"{'name':'x','u':3.0}", 400, "invalid_type", "'u' must be an integer"},
        {"{'name':'x','u':3.5}", 400, "invalid_type", "'u' must be an integer"},
        {"{'name':'x','u':'3'}", 400, "invalid_type", "'u'"},
        {"{'name':'x','i':-6}", 422, "invalid_value", "from -5 to 5"},
        {"{'name':'x','i':6}", 422, "invalid_value", "'i'"},
        {"{'name':'x','num':1.0001}", 422, "invalid_value", "from -1 to 1"},
        {"{'name':'x','num':'1'}", 400, "invalid_type", "'num'"},
        {"{'name':'x','flag':1}", 400, "invalid_type", "'flag'"},
        {"{'name':'x','f':[]}", 422, "invalid_value", "'f'"},
        {"{'name':'x','f':[1,1,1,1]}", 422, "invalid_value", "1 to 3"},
        {"{'name':'x','f':[1,2.5]}", 422, "invalid_value", "'f[1]'"},
        {"{'name':'x','f':[1,'a']}", 400, "invalid_type", "'f[1]'"},
        {"{'name':'x','f':1}", 400, "invalid_type", "'f'"},
        {"{'name':'x','us':[1,2,3,4,5]}", 422, "invalid_value", "1 to 4"},
        {"{'name':'x','us':[101]}", 422, "invalid_value", "'us[0]'"},
        {"{'name':'x','us':[-1]}", 422, "invalid_value", "'us[0]'"},
        {"{'name':'x','us':[1.0]}", 400, "invalid_type", "'us[0]'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        every_type t;
        jspec specs[12];
        proto_err e;
        int rc = jspec_sq(cases[i].body, &t, specs, &e);
        expect_err(rc, &e, cases[i].status, cases[i].code, cases[i].needle, cases[i].body);
        /* A partial parse (str/f allocated, a later field bad) frees too. */
        jspec_free(specs);
        EXPECT(t.str == NULL && t.f.v == NULL && t.us.v == NULL, "%s: pointers not reset", cases[i].body);
    }
    /* A string allocated, then a later field fails: freed by jspec_free (valgrind checks). */
    every_type t;
    jspec specs[12];
    proto_err e;
    ck_assert_int_eq(jspec_sq("{'name':'x','str':'abc','f':[1],'us':[1],'flag':'no'}", &t, specs, &e), -1);
    ck_assert_ptr_nonnull(t.str);
    jspec_free(specs);
    ck_assert_ptr_null(t.str);
    ck_assert_ptr_null(t.f.v);
}
END_TEST

START_TEST(test_valid_name)
{
    char *n64 = repeat('a', 64), *n65 = repeat('a', 65);
    ck_assert(proto_valid_name("abc.DEF-09_x"));
    ck_assert(proto_valid_name(n64));
    ck_assert(!proto_valid_name(n65));
    ck_assert(!proto_valid_name(""));
    ck_assert(!proto_valid_name("a/b"));
    ck_assert(!proto_valid_name("a b"));
    ck_assert(!proto_valid_name("caf\xc3\xa9"));
    ck_assert(!proto_valid_name("..\n"));
    free(n64);
    free(n65);
}
END_TEST

/* ---- models ---------------------------------------------------------- */

START_TEST(test_model_valid)
{
    proto_model_req r;
    proto_err e;
    char *b = jq("{'name':'cnn','path':'/x/y.pt','input_shape':[1,28,28]}");
    ck_assert_int_eq(proto_parse_model(b, strlen(b), &r, &e), 0);
    free(b);
    ck_assert_str_eq(r.name, "cnn");
    ck_assert_str_eq(r.path, "/x/y.pt");
    ck_assert_int_eq(r.ndim, 3);
    ck_assert(r.input_shape[0] == 1 && r.input_shape[1] == 28 && r.input_shape[2] == 28);
    proto_free_model(&r);
    ck_assert_ptr_null(r.path);
    proto_free_model(&r);

    /* Defaults, and a name of exactly 64 characters. */
    char *n64 = repeat('Z', 64), body[256];
    snprintf(body, sizeof body, "{\"path\":\"m.pt\",\"name\":\"%s\"}", n64);
    ck_assert_int_eq(proto_parse_model(body, strlen(body), &r, &e), 0);
    ck_assert_str_eq(r.name, n64);
    ck_assert_int_eq(r.ndim, 0);
    ck_assert_int_eq(r.layout, 0);
    proto_free_model(&r);
    free(n64);

    /* Layouts by name; others listed in the error. */
    static const char *const layouts[] = {"auto", "contiguous", "channels-last"};
    for (int i = 0; i < 3; i++) {
        snprintf(body, sizeof body, "{\"name\":\"m\",\"path\":\"m.pt\",\"layout\":\"%s\"}", layouts[i]);
        ck_assert_int_eq(proto_parse_model(body, strlen(body), &r, &e), 0);
        ck_assert_int_eq(r.layout, i);
        proto_free_model(&r);
    }
    b = jq("{'name':'m','path':'m.pt','layout':'nhwc'}");
    ck_assert_int_eq(proto_parse_model(b, strlen(b), &r, &e), -1);
    ck_assert_int_eq(e.status, 422);
    ck_assert_ptr_nonnull(strstr(e.message, "'channels-last'"));
    free(b);

    /* A zeroed struct frees. */
    proto_model_req z = {0};
    proto_free_model(&z);
}
END_TEST

START_TEST(test_model_invalid)
{
    static const bad_case cases[] = {
        {K_MODEL, "{'path':'/x'}", 400, "missing_field", "'name'"},
        {K_MODEL, "{'name':'a'}", 400, "missing_field", "'path'"},
        {K_MODEL, "{'name':null,'path':'/x'}", 400, "missing_field", "'name'"},
        {K_MODEL, "{'name':5,'path':'/x'}", 400, "invalid_type", "'name'"},
        {K_MODEL, "{'name':'a','path':5}", 400, "invalid_type", "'path'"},
        {K_MODEL, "{'name':'a','path':''}", 422, "invalid_value", "'path'"},
        {K_MODEL, "{'name':'a/b','path':'/x'}", 422, "invalid_name", "'name'"},
        {K_MODEL, "{'name':'a b','path':'/x'}", 422, "invalid_name", "'name'"},
        {K_MODEL, "{'name':'','path':'/x'}", 422, "invalid_name", "'name'"},
        {K_MODEL, "{'name':'a','path':'/x','device':'cuda'}", 400, "unknown_field", "'device'"},
        {K_MODEL, "{'name':'a','path':'/x','input_shape':[]}", 422, "invalid_value", "'input_shape'"},
        {K_MODEL, "{'name':'a','path':'/x','input_shape':[1,0]}", 422, "invalid_value", "'input_shape[1]'"},
        {K_MODEL, "{'name':'a','path':'/x','input_shape':[-3]}", 422, "invalid_value", "'input_shape[0]'"},
        {K_MODEL, "{'name':'a','path':'/x','input_shape':[3.0]}", 400, "invalid_type", "'input_shape[0]'"},
        {K_MODEL, "{'name':'a','path':'/x','input_shape':[1,1,1,1,1,1,1,1,1]}", 422, "invalid_value",
         "'input_shape'"},
        {K_MODEL, "{'name':'a','path':'/x','input_shape':'1,28,28'}", 400, "invalid_type", "'input_shape'"},
        {K_MODEL, "{'name':'a','path':'/x','name':'b'}", 400, "invalid_json", "duplicate"},
        {K_MODEL, "[{'name':'a','path':'/x'}]", 400, "invalid_body", "object"},
        {K_MODEL, "'cnn'", 400, "invalid_body", "object"},
        {K_MODEL, "{not json", 400, "invalid_json", "line 1"},
        {K_MODEL, "{'name':'a','path':'/x'} trailing", 400, "invalid_json", "column"},
        {K_MODEL, "", 400, "empty_body", NULL},
        {K_MODEL, " \r\n\t ", 400, "empty_body", NULL},
    };
    run_bad(cases, sizeof cases / sizeof cases[0]);

    proto_err e;
    char *n65 = repeat('a', 65), body[256];
    snprintf(body, sizeof body, "{\"name\":\"%s\",\"path\":\"/x\"}", n65);
    expect_err(parse_raw(K_MODEL, body, strlen(body), &e), &e, 422, "invalid_name", "'name'", "65-char name");
    free(n65);
    /* The JSON error gives jansson's position: line 2 here. */
    const char *two = "{\"name\":\"a\",\n \"path\": ]}";
    expect_err(parse_raw(K_MODEL, two, strlen(two), &e), &e, 400, "invalid_json", "line 2", "line 2");
    /* A NULL body is an empty one. */
    proto_model_req r;
    expect_err(proto_parse_model(NULL, 0, &r, &e), &e, 400, "empty_body", NULL, "NULL body");
    proto_free_model(&r);
}
END_TEST

/* ---- datasets ---------------------------------------------------------- */

START_TEST(test_dataset_valid)
{
    proto_dataset_req r;
    proto_err e;
    char *b = jq("{'name':'fmnist','path':'/d/x.gz','format':'idx','labels_path':'/d/l.gz','scale':0.5,"
                 "'mean':[0.1,0.2,-0.3],'std':0.25}");
    ck_assert_int_eq(proto_parse_dataset(b, strlen(b), &r, &e), 0);
    free(b);
    ck_assert_str_eq(r.name, "fmnist");
    ck_assert_str_eq(r.path, "/d/x.gz");
    ck_assert_str_eq(r.labels_path, "/d/l.gz");
    ck_assert_int_eq(r.format, PROTO_FMT_IDX);
    ck_assert_int_eq(r.has_scale, 1);
    ck_assert(r.scale == 0.5);
    ck_assert_int_eq(r.nmean, 3);
    ck_assert(r.mean[0] == 0.1 && r.mean[1] == 0.2 && r.mean[2] == -0.3);
    ck_assert_int_eq(r.nstd, 1);
    ck_assert(r.std[0] == 0.25);
    proto_free_dataset(&r);
    ck_assert_ptr_null(r.path);
    ck_assert_ptr_null(r.labels_path);

    b = jq("{'name':'d','path':'/x.npy'}");
    ck_assert_int_eq(proto_parse_dataset(b, strlen(b), &r, &e), 0);
    free(b);
    ck_assert_int_eq(r.format, PROTO_FMT_AUTO);
    ck_assert_ptr_null(r.labels_path);
    ck_assert_int_eq(r.has_scale, 0);
    ck_assert_int_eq(r.nmean + r.nstd, 0);
    proto_free_dataset(&r);

    b = jq("{'name':'d','path':'/x.npy','format':'npy','mean':0,'std':[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}");
    ck_assert_int_eq(proto_parse_dataset(b, strlen(b), &r, &e), 0);
    free(b);
    ck_assert_int_eq(r.format, PROTO_FMT_NPY);
    ck_assert_int_eq(r.nmean, 1);
    ck_assert(r.mean[0] == 0);
    ck_assert_int_eq(r.nstd, 16);
    for (int i = 0; i < 16; i++) EXPECT(r.std[i] == i + 1, "std[%d] = %g", i, r.std[i]);
    proto_free_dataset(&r);
}
END_TEST

START_TEST(test_dataset_invalid)
{
    static const bad_case cases[] = {
        {K_DATASET, "{'path':'/x'}", 400, "missing_field", "'name'"},
        {K_DATASET, "{'name':'x'}", 400, "missing_field", "'path'"},
        {K_DATASET, "{'name':'x','path':'/x','format':'png'}", 422, "invalid_value", "'npy', 'idx'"},
        {K_DATASET, "{'name':'x','path':'/x','format':1}", 400, "invalid_type", "'format'"},
        {K_DATASET, "{'name':'x','path':'/x','labels_path':3}", 400, "invalid_type", "'labels_path'"},
        {K_DATASET, "{'name':'x','path':'/x','label_path':'/l'}", 400, "unknown_field", "'label_path'"},
        {K_DATASET, "{'name':'x','path':'/x','scale':0}", 422, "invalid_value", "'scale'"},
        {K_DATASET, "{'name':'x','path':'/x','scale':-1}", 422, "invalid_value", "'scale'"},
        {K_DATASET, "{'name':'x','path':'/x','scale':'1'}", 400, "invalid_type", "'scale'"},
        {K_DATASET, "{'name':'x','path':'/x','std':0}", 422, "invalid_value", "'std'"},
        {K_DATASET, "{'name':'x','path':'/x','std':[1,0]}", 422, "invalid_value", "'std[1]'"},
        {K_DATASET, "{'name':'x','path':'/x','std':[1,-2]}", 422, "invalid_value", "'std[1]'"},
        {K_DATASET, "{'name':'x','path':'/x','std':[]}", 422, "invalid_value", "'std'"},
        {K_DATASET, "{'name':'x','path':'/x','mean':[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}", 422,
         "invalid_value", "'mean'"},
        {K_DATASET, "{'name':'x','path':'/x','mean':[1,'a']}", 400, "invalid_type", "'mean[1]'"},
        {K_DATASET, "{'name':'x','path':'/x','mean':'0.5'}", 400, "invalid_type", "'mean'"},
        {K_DATASET, "{'name':'x','path':'/x','mean':{'r':1}}", 400, "invalid_type", "'mean'"},
        {K_DATASET, "{'name':'x y','path':'/x'}", 422, "invalid_name", "'name'"},
        {K_DATASET, "{'name':'x','path':'/x',}", 400, "invalid_json", "line 1"},
    };
    run_bad(cases, sizeof cases / sizeof cases[0]);
}
END_TEST

START_TEST(test_dataset_opts)
{
    proto_dataset_req r;
    proto_err e;
    memset(&r, 0, sizeof r);
    ck_assert_int_eq(proto_dataset_opts(&r, "0.5", "0.1,0.2,-3e-1", "2", &e), 0);
    ck_assert_int_eq(r.has_scale, 1);
    ck_assert(r.scale == 0.5);
    ck_assert_int_eq(r.nmean, 3);
    ck_assert(r.mean[0] == 0.1 && r.mean[1] == 0.2 && r.mean[2] == -0.3);
    ck_assert_int_eq(r.nstd, 1);
    ck_assert(r.std[0] == 2);

    memset(&r, 0, sizeof r);
    ck_assert_int_eq(proto_dataset_opts(&r, NULL, NULL, NULL, &e), 0);
    ck_assert_int_eq(r.has_scale + r.nmean + r.nstd, 0);
    ck_assert_int_eq(proto_dataset_opts(&r, "1", ".5", "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16", &e), 0);
    ck_assert_int_eq(r.nstd, 16);
    ck_assert(r.std[15] == 16 && r.mean[0] == 0.5);

    static const struct {
        const char *scale, *mean, *std;
        int status;
        const char *code, *needle;
    } bad[] = {
        {"abc", NULL, NULL, 400, "invalid_parameter", "'scale'"},
        {"", NULL, NULL, 400, "invalid_parameter", "'scale'"},
        {" 1", NULL, NULL, 400, "invalid_parameter", "'scale'"},
        {"inf", NULL, NULL, 400, "invalid_parameter", "'scale'"},
        {"0x10", NULL, NULL, 400, "invalid_parameter", "'scale'"},
        {"0", NULL, NULL, 422, "invalid_value", "'scale'"},
        {"-2", NULL, NULL, 422, "invalid_value", "'scale'"},
        {"1e999", NULL, NULL, 422, "invalid_value", "'scale'"},
        {NULL, "0.1,,0.2", NULL, 400, "invalid_parameter", "'mean'"},
        {NULL, "0.1,", NULL, 400, "invalid_parameter", "'mean'"},
        {NULL, "", NULL, 400, "invalid_parameter", "'mean'"},
        {NULL, "nan", NULL, 400, "invalid_parameter", "'mean'"},
        {NULL, "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17", NULL, 422, "invalid_value", "'mean'"},
        {NULL, NULL, "1,0", 422, "invalid_value", "'std'"},
        {NULL, NULL, "-1", 422, "invalid_value", "'std'"},
        {NULL, NULL, "1;2", 400, "invalid_parameter", "'std'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        memset(&r, 0, sizeof r);
        char what[160];
        snprintf(what, sizeof what, "opts scale=%s mean=%s std=%s", bad[i].scale ? bad[i].scale : "-",
                 bad[i].mean ? bad[i].mean : "-", bad[i].std ? bad[i].std : "-");
        expect_err(proto_dataset_opts(&r, bad[i].scale, bad[i].mean, bad[i].std, &e), &e, bad[i].status, bad[i].code,
                   bad[i].needle, what);
        proto_free_dataset(&r);
    }
}
END_TEST

/* ---- indexes ----------------------------------------------------------- */

START_TEST(test_index_valid)
{
    proto_index_req r;
    proto_err e;
    char *b = jq("{'model':'cnn','dataset':'fmnist','layer':'features.3.0'}");
    ck_assert_int_eq(proto_parse_index(b, strlen(b), &r, &e), 0);
    free(b);
    ck_assert_str_eq(r.model, "cnn");
    ck_assert_str_eq(r.dataset, "fmnist");
    ck_assert_int_eq(r.nlayers, 1);
    ck_assert_str_eq(r.layers[0], "features.3.0");
    ck_assert_int_eq(r.has_partitions + r.has_mai_ratio + r.has_budget, 0);
    ck_assert_int_eq(r.kind, 0);
    proto_free_index(&r);

    b = jq("{'model':'cnn','dataset':'fmnist','layers':['pool2','fc1','a b/c'],'partitions':256,'mai_ratio':0.5}");
    ck_assert_int_eq(proto_parse_index(b, strlen(b), &r, &e), 0);
    free(b);
    ck_assert_int_eq(r.nlayers, 3);
    ck_assert_str_eq(r.layers[0], "pool2");
    ck_assert_str_eq(r.layers[1], "fc1");
    ck_assert_str_eq(r.layers[2], "a b/c");
    ck_assert_int_eq(r.has_partitions, 1);
    ck_assert_uint_eq(r.partitions, 256);
    ck_assert_int_eq(r.has_mai_ratio, 1);
    ck_assert(r.mai_ratio == 0.5);
    ck_assert_int_eq(r.has_budget, 0);

    b = jq("{'model':'m','dataset':'d','layer':'l','partitions':2,'mai_ratio':0,'kind':'npi'}");
    ck_assert_int_eq(proto_parse_index(b, strlen(b), &r, &e), 0);
    free(b);
    ck_assert_uint_eq(r.partitions, 2);
    ck_assert(r.mai_ratio == 0 && r.has_mai_ratio == 1);

    b = jq("{'model':'m','dataset':'d','layer':'l','storage_budget':1}");
    ck_assert_int_eq(proto_parse_index(b, strlen(b), &r, &e), 0);
    free(b);
    ck_assert_int_eq(r.has_budget, 1);
    ck_assert(r.storage_budget == 1.0);

    b = jq("{'model':'m','dataset':'d','layers':['l'],'kind':'full'}");
    ck_assert_int_eq(proto_parse_index(b, strlen(b), &r, &e), 0);
    free(b);
    ck_assert_int_eq(r.kind, 1);

    /* 16 layers, and a layer name of exactly 127 bytes. */
    char body[1024], *l127 = repeat('x', 127);
    int n = snprintf(body, sizeof body, "{\"model\":\"m\",\"dataset\":\"d\",\"layers\":[\"%s\"", l127);
    for (int i = 1; i < 16; i++) n += snprintf(body + n, sizeof body - (size_t)n, ",\"L%d\"", i);
    snprintf(body + n, sizeof body - (size_t)n, "]}");
    ck_assert_int_eq(proto_parse_index(body, strlen(body), &r, &e), 0);
    ck_assert_int_eq(r.nlayers, 16);
    ck_assert_str_eq(r.layers[0], l127);
    ck_assert_str_eq(r.layers[15], "L15");
    free(l127);
}
END_TEST

START_TEST(test_index_invalid)
{
    static const bad_case cases[] = {
        {K_INDEX, "{'model':'m','dataset':'d'}", 400, "missing_field", "'layer'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':null,'layers':null}", 400, "missing_field", "'layers'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'a','layers':['b']}", 422, "conflicting_fields", "'layers'"},
        {K_INDEX, "{'dataset':'d','layer':'l'}", 400, "missing_field", "'model'"},
        {K_INDEX, "{'model':'m','layer':'l'}", 400, "missing_field", "'dataset'"},
        {K_INDEX, "{'model':'m/x','dataset':'d','layer':'l'}", 422, "invalid_name", "'model'"},
        {K_INDEX, "{'model':'m','dataset':7,'layer':'l'}", 400, "invalid_type", "'dataset'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':''}", 422, "invalid_value", "'layer'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':3}", 400, "invalid_type", "'layer'"},
        {K_INDEX, "{'model':'m','dataset':'d','layers':[]}", 422, "invalid_value", "'layers'"},
        {K_INDEX, "{'model':'m','dataset':'d','layers':'fc1'}", 400, "invalid_type", "'layers'"},
        {K_INDEX, "{'model':'m','dataset':'d','layers':['a',3]}", 400, "invalid_type", "'layers[1]'"},
        {K_INDEX, "{'model':'m','dataset':'d','layers':['a','']}", 422, "invalid_value", "'layers[1]'"},
        {K_INDEX, "{'model':'m','dataset':'d','layers':['a','b','a']}", 422, "duplicate_layer", "'layers[2]'"},
        {K_INDEX,
         "{'model':'m','dataset':'d','layers':['1','2','3','4','5','6','7','8','9','10','11','12','13','14','15',"
         "'16','17']}",
         422, "invalid_value", "'layers'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','partitions':1}", 422, "invalid_value", "'partitions'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','partitions':257}", 422, "invalid_value", "'partitions'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','partitions':16.0}", 400, "invalid_type", "'partitions'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','partitions':'16'}", 400, "invalid_type", "'partitions'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','mai_ratio':0.51}", 422, "invalid_value", "'mai_ratio'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','mai_ratio':-0.1}", 422, "invalid_value", "'mai_ratio'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','mai_ratio':'0.1'}", 400, "invalid_type", "'mai_ratio'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','storage_budget':0}", 422, "invalid_value",
         "'storage_budget'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','storage_budget':1.01}", 422, "invalid_value",
         "'storage_budget'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','storage_budget':true}", 400, "invalid_type",
         "'storage_budget'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','storage_budget':0.1,'partitions':8}", 422,
         "conflicting_fields", "'partitions'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','mai_ratio':0.1,'storage_budget':0.1}", 422,
         "conflicting_fields", "'storage_budget' picks"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','kind':'dense'}", 422, "invalid_value", "'npi', 'full'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','kind':'full','partitions':8}", 422, "conflicting_fields",
         "'kind'"},
        {K_INDEX, "{'model':'m','dataset':'d','layer':'l','partition':8}", 400, "unknown_field", "'partition'"},
    };
    run_bad(cases, sizeof cases / sizeof cases[0]);

    proto_err e;
    char body[512], *l128 = repeat('y', 128);
    snprintf(body, sizeof body, "{\"model\":\"m\",\"dataset\":\"d\",\"layer\":\"%s\"}", l128);
    expect_err(parse_raw(K_INDEX, body, strlen(body), &e), &e, 422, "invalid_value", "'layer'", "128-byte layer");
    free(l128);
}
END_TEST

/* ---- queries ----------------------------------------------------------- */

static int query_sq(const char *sq, int knn, proto_query_req *r, proto_err *e)
{
    char *b = jq(sq);
    int rc = proto_parse_query(b, strlen(b), knn, r, e);
    free(b);
    return rc;
}

START_TEST(test_topk_valid)
{
    proto_query_req r;
    proto_err e;
    ck_assert_int_eq(query_sq("{'model':'cnn','dataset':'fmnist','layer':'fc1','neurons':[3,17,42],'k':10}", 0, &r, &e),
                     0);
    ck_assert_int_eq(r.knn, 0);
    ck_assert_str_eq(r.model, "cnn");
    ck_assert_str_eq(r.dataset, "fmnist");
    ck_assert_str_eq(r.layer, "fc1");
    ck_assert_uint_eq(r.neurons.n, 3);
    ck_assert_int_eq(r.neurons.rank, 0);
    ck_assert(r.neurons.v[0] == 3 && r.neurons.v[1] == 17 && r.neurons.v[2] == 42);
    ck_assert_uint_eq(r.k, 10);
    ck_assert_int_eq(r.agg, AGG_SUM);
    ck_assert_int_eq(r.method, METHOD_AUTO);
    ck_assert_uint_eq(r.nweights, 0);
    ck_assert_ptr_null(r.weights);
    ck_assert_int_eq(r.has_filter, 0);
    ck_assert_uint_eq(r.batch, 0);
    ck_assert(r.timeout_s == 0);
    ck_assert_int_eq(r.has_target_id, 0);
    ck_assert_uint_eq(r.ntensor, 0);
    proto_free_query(&r);
    ck_assert_ptr_null(r.neurons.v);

    ck_assert_int_eq(query_sq("{'model':'m','dataset':'d','layer':'pool2','neurons':[[5,3,3],[12,0,6]],'k':1000000,"
                              "'agg':'sum','weights':[1,2.5],'filter':{'ids':[1,5],'labels':[-1,2]},"
                              "'method':'bounds','batch':65536,'timeout_s':3600}",
                              0, &r, &e),
                     0);
    ck_assert_uint_eq(r.neurons.n, 2);
    ck_assert_int_eq(r.neurons.rank, 3);
    static const int64_t want[6] = {5, 3, 3, 12, 0, 6};
    for (int i = 0; i < 6; i++) EXPECT(r.neurons.v[i] == want[i], "coord %d = %lld", i, (long long)r.neurons.v[i]);
    ck_assert_uint_eq(r.k, PROTO_MAX_K);
    ck_assert_uint_eq(r.nweights, 2);
    ck_assert(r.weights[0] == 1 && r.weights[1] == 2.5);
    ck_assert_int_eq(r.has_filter, 1);
    ck_assert_uint_eq(r.nfilter_ids, 2);
    ck_assert(r.filter_ids[0] == 1 && r.filter_ids[1] == 5);
    ck_assert_uint_eq(r.nfilter_labels, 2);
    ck_assert(r.filter_labels[0] == -1 && r.filter_labels[1] == 2);
    ck_assert_int_eq(r.method, METHOD_BOUNDS);
    ck_assert_uint_eq(r.batch, 65536);
    ck_assert(r.timeout_s == 3600);
    proto_free_query(&r);

    /* Each agg and method to its enum; filter with only one key; null = default. */
    static const char *aggs[] = {"sum", "mean", "max", "min"};
    static const int agg_v[] = {AGG_SUM, AGG_MEAN, AGG_MAX, AGG_MIN};
    static const char *methods[] = {"auto", "nta", "bounds", "scan", "materialized"};
    static const int method_v[] = {METHOD_AUTO, METHOD_NTA, METHOD_BOUNDS, METHOD_SCAN, METHOD_MATERIALIZED};
    for (int a = 0; a < 4; a++)
        for (int m = 0; m < 5; m++) {
            char body[256];
            snprintf(body, sizeof body,
                     "{'model':'m','dataset':'d','layer':'l','neurons':[0],'k':1,'agg':'%s','method':'%s',"
                     "'filter':{'labels':[3]},'timeout_s':null}",
                     aggs[a], methods[m]);
            ck_assert_int_eq(query_sq(body, 0, &r, &e), 0);
            EXPECT(r.agg == agg_v[a] && r.method == method_v[m], "%s/%s -> %d/%d", aggs[a], methods[m], r.agg,
                   r.method);
            EXPECT(r.has_filter == 1 && r.nfilter_ids == 0 && r.nfilter_labels == 1 && r.filter_labels[0] == 3,
                   "labels-only filter");
            proto_free_query(&r);
        }
}
END_TEST

START_TEST(test_knn_valid)
{
    proto_query_req r;
    proto_err e;
    ck_assert_int_eq(query_sq("{'model':'m','dataset':'d','layer':'l','neurons':[1,2],'k':3,'target':7,"
                              "'metric':'linf','include_target':true,'weights':[0,1],'method':'nta'}",
                              1, &r, &e),
                     0);
    ck_assert_int_eq(r.knn, 1);
    ck_assert_int_eq(r.has_target_id, 1);
    ck_assert_uint_eq(r.target_id, 7);
    ck_assert_uint_eq(r.ntensor, 0);
    ck_assert_int_eq(r.metric, METRIC_LINF);
    ck_assert_int_eq(r.include_target, 1);
    ck_assert_uint_eq(r.nweights, 2);
    ck_assert(r.weights[0] == 0 && r.weights[1] == 1);
    ck_assert_int_eq(r.method, METHOD_NTA);
    proto_free_query(&r);

    ck_assert_int_eq(query_sq("{'model':'m','dataset':'d','layer':'l','neurons':[[1],[2]],'k':3,"
                              "'target':{'tensor':[0.5,-1,3,1e-3]}}",
                              1, &r, &e),
                     0);
    ck_assert_int_eq(r.has_target_id, 0);
    ck_assert_uint_eq(r.ntensor, 4);
    ck_assert(r.tensor[0] == 0.5f && r.tensor[1] == -1.0f && r.tensor[2] == 3.0f && r.tensor[3] == (float)1e-3);
    ck_assert_int_eq(r.metric, METRIC_L2);
    ck_assert_int_eq(r.include_target, 0);
    ck_assert_int_eq(r.neurons.rank, 1);
    proto_free_query(&r);

    ck_assert_int_eq(query_sq("{'model':'m','dataset':'d','layer':'l','neurons':[4,5],'k':3,"
                              "'target':{'activations':[0.25,-2]}}",
                              1, &r, &e),
                     0);
    ck_assert_uint_eq(r.ntensor, 0);
    ck_assert_uint_eq(r.nactivations, 2);
    ck_assert(r.activations[0] == 0.25f && r.activations[1] == -2.0f);
    proto_free_query(&r);

    ck_assert_int_eq(query_sq("{'model':'m','dataset':'d','layer':'l','neurons':[0],'k':1,'target':0,'metric':'l1',"
                              "'include_target':false}",
                              1, &r, &e),
                     0);
    ck_assert_int_eq(r.metric, METRIC_L1);
    ck_assert_int_eq(r.has_target_id, 1);
    ck_assert_uint_eq(r.target_id, 0);
    proto_free_query(&r);

    ck_assert_int_eq(query_sq("{'model':'m','dataset':'d','layer':'l','neurons':[0,1],'k':1,'target':0,"
                              "'metric':'cosine','weights':[1,2]}",
                              1, &r, &e),
                     0);
    ck_assert_int_eq(r.metric, METRIC_COSINE);
    proto_free_query(&r);
    /* cosine distances take weights >= 0 like every kNN metric */
    ck_assert_int_eq(query_sq("{'model':'m','dataset':'d','layer':'l','neurons':[0,1],'k':1,'target':0,"
                              "'metric':'cosine','weights':[1,-2]}",
                              1, &r, &e),
                     -1);
    ck_assert_int_eq(e.status, 422);
}
END_TEST

#define TK "'model':'m','dataset':'d','layer':'l','k':3,"
#define TN "'model':'m','dataset':'d','layer':'l','neurons':[1,2],'k':3,"
#define KN "'model':'m','dataset':'d','layer':'l','neurons':[1,2],'k':3,'target':1,"

START_TEST(test_query_invalid)
{
    static const bad_case cases[] = {
        /* missing required */
        {K_TOPK, "{'dataset':'d','layer':'l','neurons':[1],'k':1}", 400, "missing_field", "'model'"},
        {K_TOPK, "{'model':'m','layer':'l','neurons':[1],'k':1}", 400, "missing_field", "'dataset'"},
        {K_TOPK, "{'model':'m','dataset':'d','neurons':[1],'k':1}", 400, "missing_field", "'layer'"},
        {K_TOPK, "{'model':'m','dataset':'d','layer':'l','k':1}", 400, "missing_field", "'neurons'"},
        {K_TOPK, "{'model':'m','dataset':'d','layer':'l','neurons':[1]}", 400, "missing_field", "'k'"},
        {K_TOPK, "{" TN "'k':null}", 400, "invalid_json", "duplicate"},
        {K_TOPK, "{'model':'m','dataset':'d','layer':'l','neurons':[1],'k':null}", 400, "missing_field", "'k'"},
        {K_KNN, "{" TN "'metric':'l2'}", 400, "missing_field", "'target'"},
        /* unknown fields, per endpoint */
        {K_TOPK, "{" TK "'neuron':[1]}", 400, "unknown_field", "'neuron'"},
        {K_TOPK, "{" TN "'target':1}", 400, "unknown_field", "'target'"},
        {K_TOPK, "{" TN "'metric':'l2'}", 400, "unknown_field", "'metric'"},
        {K_TOPK, "{" TN "'include_target':true}", 400, "unknown_field", "'include_target'"},
        {K_KNN, "{" KN "'agg':'sum'}", 400, "unknown_field", "'agg'"},
        /* wrong types */
        {K_TOPK, "{'model':1,'dataset':'d','layer':'l','neurons':[1],'k':1}", 400, "invalid_type", "'model'"},
        {K_TOPK, "{'model':'m','dataset':'d','layer':['l'],'neurons':[1],'k':1}", 400, "invalid_type", "'layer'"},
        {K_TOPK, "{" TK "'neurons':'1,2'}", 400, "invalid_type", "'neurons'"},
        {K_TOPK, "{" TK "'neurons':5}", 400, "invalid_type", "'neurons'"},
        {K_TOPK, "{" TK "'neurons':['a']}", 400, "invalid_type", "'neurons[0]'"},
        {K_TOPK, "{" TK "'neurons':[1,'a']}", 400, "invalid_type", "'neurons[1]'"},
        {K_TOPK, "{" TK "'neurons':[1.5]}", 400, "invalid_type", "'neurons[0]'"},
        {K_TOPK, "{" TK "'neurons':[1,2.0]}", 400, "invalid_type", "'neurons[1]'"},
        {K_TOPK, "{" TK "'neurons':[[1],[2.5]]}", 400, "invalid_type", "'neurons[1][0]'"},
        {K_TOPK, "{" TK "'neurons':[[1],{}]}", 400, "invalid_type", "'neurons[1]'"},
        {K_TOPK, "{'model':'m','dataset':'d','layer':'l','neurons':[1],'k':'3'}", 400, "invalid_type", "'k'"},
        {K_TOPK, "{'model':'m','dataset':'d','layer':'l','neurons':[1],'k':3.0}", 400, "invalid_type", "'k'"},
        {K_TOPK, "{'model':'m','dataset':'d','layer':'l','neurons':[1],'k':3.5}", 400, "invalid_type", "'k'"},
        {K_TOPK, "{" TN "'agg':1}", 400, "invalid_type", "'agg'"},
        {K_TOPK, "{" TN "'method':true}", 400, "invalid_type", "'method'"},
        {K_TOPK, "{" TN "'weights':'1'}", 400, "invalid_type", "'weights'"},
        {K_TOPK, "{" TN "'weights':[1,'a']}", 400, "invalid_type", "'weights[1]'"},
        {K_TOPK, "{" TN "'filter':[1]}", 400, "invalid_type", "'filter'"},
        {K_TOPK, "{" TN "'filter':{'ids':'1'}}", 400, "invalid_type", "'ids'"},
        {K_TOPK, "{" TN "'filter':{'labels':[1.5]}}", 400, "invalid_type", "'filter.labels[0]'"},
        {K_TOPK, "{" TN "'filter':{'labels':3}}", 400, "invalid_type", "'filter.labels'"},
        {K_TOPK, "{" TN "'batch':1.5}", 400, "invalid_type", "'batch'"},
        {K_TOPK, "{" TN "'timeout_s':'1'}", 400, "invalid_type", "'timeout_s'"},
        {K_KNN, "{" TN "'target':'3'}", 400, "invalid_type", "'target'"},
        {K_KNN, "{" TN "'target':1.0}", 400, "invalid_type", "'target'"},
        {K_KNN, "{" TN "'target':[1,2]}", 400, "invalid_type", "'target'"},
        {K_KNN, "{" TN "'target':{}}", 400, "missing_field", "'tensor'"},
        {K_KNN, "{" TN "'target':{'tensor':[1],'id':3}}", 400, "unknown_field", "'id'"},
        {K_KNN, "{" TN "'target':{'tensor':[1],'activations':[1,2]}}", 422, "conflicting_fields", "'activations'"},
        {K_KNN, "{" TN "'target':{'activations':[1]}}", 422, "invalid_target", "one per neuron"},
        {K_KNN, "{" TN "'target':{'activations':[1,'x']}}", 400, "invalid_type", "'target.activations[1]'"},
        {K_KNN, "{" TN "'target':{'activations':[1,1e39]}}", 422, "invalid_target", "'target.activations[1]'"},
        {K_KNN, "{" TN "'target':{'tensor':'x'}}", 400, "invalid_type", "'target.tensor'"},
        {K_KNN, "{" TN "'target':{'tensor':[1,'x']}}", 400, "invalid_type", "'target.tensor[1]'"},
        {K_KNN, "{" KN "'include_target':1}", 400, "invalid_type", "'include_target'"},
        {K_KNN, "{" KN "'metric':2}", 400, "invalid_type", "'metric'"},
        /* values out of range */
        {K_TOPK, "{'model':'m','dataset':'d','layer':'l','neurons':[1],'k':0}", 422, "invalid_value", "'k'"},
        {K_TOPK, "{'model':'m','dataset':'d','layer':'l','neurons':[1],'k':1000001}", 422, "invalid_value", "'k'"},
        {K_TOPK, "{'model':'m','dataset':'d','layer':'l','neurons':[1],'k':-1}", 422, "invalid_value", "'k'"},
        {K_TOPK, "{" TN "'agg':'median'}", 422, "invalid_value", "'agg' must be one of 'sum', 'mean', 'max', 'min'; it is 'median'"},
        {K_TOPK, "{" TN "'method':'magic'}", 422, "invalid_value", "'method'"},
        {K_TOPK, "{" TN "'batch':0}", 422, "invalid_value", "'batch'"},
        {K_TOPK, "{" TN "'batch':65537}", 422, "invalid_value", "'batch'"},
        {K_TOPK, "{" TN "'timeout_s':0}", 422, "invalid_value", "'timeout_s'"},
        {K_TOPK, "{" TN "'timeout_s':3600.5}", 422, "invalid_value", "'timeout_s'"},
        {K_TOPK, "{" TK "'neurons':[]}", 422, "invalid_value", "'neurons'"},
        {K_TOPK, "{" TK "'neurons':[-1]}", 422, "invalid_value", "'neurons[0]'"},
        {K_TOPK, "{" TK "'neurons':[[1,-2]]}", 422, "invalid_value", "'neurons[0][1]'"},
        {K_TOPK, "{" TK "'neurons':[[]]}", 422, "invalid_value", "'neurons[0]'"},
        {K_TOPK, "{" TK "'neurons':[[1,2,3,4,5,6,7,8,9]]}", 422, "invalid_value", "'neurons[0]'"},
        {K_KNN, "{" TN "'target':-1}", 422, "target_out_of_range", "'target'"},
        {K_KNN, "{" TN "'target':{'tensor':[]}}", 422, "invalid_value", "'target.tensor'"},
        {K_KNN, "{" TN "'target':{'tensor':[0,1e39]}}", 422, "invalid_target", "'target.tensor[1]'"},
        {K_KNN, "{" KN "'metric':'hamming'}", 422, "invalid_value", "'l2', 'l1', 'linf', 'cosine'"},
        {K_TOPK, "{" TN "'filter':{}}", 400, "missing_field", "'filter'"},
        {K_TOPK, "{" TN "'filter':{'ids':[-1]}}", 422, "invalid_value", "'ids[0]'"},
        {K_TOPK, "{" TN "'filter':{'ids':[]}}", 422, "invalid_value", "'ids'"},
        {K_TOPK, "{" TN "'filter':{'labels':[]}}", 422, "invalid_value", "'filter.labels'"},
        {K_TOPK, "{" TN "'filter':{'ids':[1],'extra':1}}", 400, "unknown_field", "in 'filter': unknown field 'extra'"},
        /* mixed neuron forms */
        {K_TOPK, "{" TK "'neurons':[1,[2]]}", 422, "invalid_neurons", "'neurons[1]'"},
        {K_TOPK, "{" TK "'neurons':[[1],2]}", 422, "invalid_neurons", "'neurons[1]'"},
        {K_TOPK, "{" TK "'neurons':[[1,2],[3,4],[3]]}", 422, "invalid_neurons", "'neurons[2]'"},
        /* weights */
        {K_TOPK, "{" TN "'weights':[1]}", 422, "weights_mismatch", "'weights'"},
        {K_TOPK, "{" TN "'weights':[1,2,3]}", 422, "weights_mismatch", "'weights'"},
        {K_KNN, "{" KN "'weights':[1]}", 422, "weights_mismatch", "'weights'"},
        {K_TOPK, "{" TN "'weights':[]}", 422, "invalid_value", "'weights'"},
        {K_KNN, "{" KN "'weights':[1,-1]}", 422, "invalid_value", "'weights[1]'"},
        {K_TOPK, "{" TN "'agg':'max','weights':[1,-1]}", 422, "conflicting_fields", "'weights'"},
        {K_TOPK, "{" TN "'weights':[0,0]}", 422, "invalid_value", "'weights'"},
        {K_KNN, "{" KN "'weights':[0,0.0]}", 422, "invalid_value", "'weights'"},
        {K_TOPK, "{" TN "'weights':[1,2],'agg':'max'}", 422, "conflicting_fields", "'weights'"},
        {K_TOPK, "{" TN "'weights':[1,2],'agg':'mean'}", 422, "conflicting_fields", "'sum'"},
        /* names */
        {K_TOPK, "{'model':'bad name','dataset':'d','layer':'l','neurons':[1],'k':1}", 422, "invalid_name",
         "'model'"},
        {K_KNN, "{'model':'m','dataset':'d\\u00e9','layer':'l','neurons':[1],'k':1,'target':0}", 422, "invalid_name",
         "'dataset'"},
        {K_TOPK, "{'model':'m','dataset':'d','layer':'','neurons':[1],'k':1}", 422, "invalid_value", "'layer'"},
        /* not a request at all */
        {K_TOPK, "{'model':", 400, "invalid_json", "line 1"},
        {K_TOPK, "[1,2", 400, "invalid_json", "column"},
        {K_KNN, "{" KN "'x':1e400}", 400, "invalid_json", "line 1"},
        {K_TOPK, "{'model':'m','dataset':'d','layer':'l','neurons':[1],'k':99999999999999999999}", 400,
         "invalid_json", "integer"},
        {K_TOPK, "'topk'", 400, "invalid_body", "object"},
        {K_TOPK, "null", 400, "invalid_body", "object"},
        {K_KNN, "", 400, "empty_body", NULL},
    };
    run_bad(cases, sizeof cases / sizeof cases[0]);

    /* Names of 65 characters; a 128-byte layer. */
    proto_err e;
    char body[512], *n65 = repeat('n', 65), *l128 = repeat('l', 128);
    snprintf(body, sizeof body, "{\"model\":\"m\",\"dataset\":\"%s\",\"layer\":\"l\",\"neurons\":[1],\"k\":1}", n65);
    expect_err(parse_raw(K_TOPK, body, strlen(body), &e), &e, 422, "invalid_name", "'dataset'", "65-char dataset");
    snprintf(body, sizeof body, "{\"model\":\"m\",\"dataset\":\"d\",\"layer\":\"%s\",\"neurons\":[1],\"k\":1}", l128);
    expect_err(parse_raw(K_TOPK, body, strlen(body), &e), &e, 422, "invalid_value", "'layer'", "128-byte layer");
    free(n65);
    free(l128);

    /* A zeroed struct frees; a failed parse leaves nothing to free but is safe to free. */
    proto_query_req z = {0};
    proto_free_query(&z);
    ck_assert_int_eq(query_sq("{" TN "'weights':[1,2],'filter':{'ids':[1],'labels':['x']}}", 0, &z, &e), -1);
    ck_assert_ptr_null(z.weights);
    ck_assert_ptr_null(z.neurons.v);
    ck_assert_ptr_null(z.filter_ids);
    proto_free_query(&z);
}
END_TEST

/* Groups of up to PROTO_MAX_GROUP neurons, and one past it. */
START_TEST(test_query_group_limits)
{
    size_t cap = 64 + (size_t)(PROTO_MAX_GROUP + 1) * 8;
    char *body = malloc(cap);
    ck_assert_ptr_nonnull(body);
    for (int over = 0; over < 2; over++) {
        size_t n = (size_t)PROTO_MAX_GROUP + (size_t)over, len = 0;
        len += (size_t)snprintf(body + len, cap - len, "{\"model\":\"m\",\"dataset\":\"d\",\"layer\":\"l\",\"k\":5,\"neurons\":[");
        for (size_t i = 0; i < n; i++) len += (size_t)snprintf(body + len, cap - len, "%s%zu", i ? "," : "", n - 1 - i);
        len += (size_t)snprintf(body + len, cap - len, "]}");
        proto_query_req r;
        proto_err e;
        int rc = proto_parse_query(body, len, 0, &r, &e);
        if (over) {
            expect_err(rc, &e, 422, "invalid_value", "'neurons'", "group of 65537");
        } else {
            ck_assert_int_eq(rc, 0);
            ck_assert_uint_eq(r.neurons.n, n);
            for (size_t i = 0; i < n; i++) EXPECT(r.neurons.v[i] == (int64_t)(n - 1 - i), "neurons[%zu]", i);
        }
        proto_free_query(&r);
    }
    free(body);
}
END_TEST

/* ---- flattening ------------------------------------------------------- */

/* Every coordinate of shape in row-major order, by an odometer (no
 * multiplication), so flat index i is simply the i-th tuple. */
static int64_t *enumerate_coords(const int64_t *shape, int ndim, size_t *count)
{
    size_t total = 1;
    for (int d = 0; d < ndim; d++) total *= (size_t)shape[d];
    int64_t *all = malloc(total * (size_t)ndim * sizeof *all), cur[PROTO_MAX_DIMS] = {0};
    ck_assert_ptr_nonnull(all);
    for (size_t i = 0; i < total; i++) {
        memcpy(all + i * (size_t)ndim, cur, (size_t)ndim * sizeof *cur);
        for (int d = ndim - 1; d >= 0; d--) {
            if (++cur[d] < shape[d]) break;
            cur[d] = 0;
        }
    }
    *count = total;
    return all;
}

START_TEST(test_flatten_flat_and_coords)
{
    static const int64_t shape[3] = {4, 3, 5};
    size_t total;
    int64_t *all = enumerate_coords(shape, 3, &total);
    ck_assert_uint_eq(total, 60);
    rng_seed(7);
    for (int trial = 0; trial < 200; trial++) {
        /* A random set of distinct flat indices (partial Fisher-Yates). */
        uint32_t perm[60];
        for (uint32_t i = 0; i < 60; i++) perm[i] = i;
        size_t n = 1 + rng_below(60);
        for (size_t i = 0; i < n; i++) {
            size_t j = i + rng_below((uint32_t)(60 - i));
            uint32_t t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        int64_t flatv[60], coordv[180];
        for (size_t i = 0; i < n; i++) {
            flatv[i] = perm[i];
            memcpy(coordv + 3 * i, all + 3 * (size_t)perm[i], 3 * sizeof *coordv);
        }
        proto_neurons flat = {n, 0, flatv}, coords = {n, 3, coordv};
        uint32_t out1[60], out2[60];
        proto_err e;
        EXPECT(proto_neurons_flatten(&flat, shape, 3, out1, &e) == 0, "flat: %s", e.message);
        EXPECT(proto_neurons_flatten(&coords, shape, 3, out2, &e) == 0, "coords: %s", e.message);
        for (size_t i = 0; i < n; i++)
            EXPECT(out1[i] == perm[i] && out2[i] == perm[i], "trial %d entry %zu: %u %u want %u", trial, i, out1[i],
                   out2[i], perm[i]);
    }
    free(all);

    proto_err e;
    uint32_t out[4];
    int64_t f1[] = {0, 59, 60};
    proto_neurons g = {3, 0, f1};
    expect_err(proto_neurons_flatten(&g, shape, 3, out, &e), &e, 422, "neuron_out_of_range", "'neurons[2]'", "flat 60");
    ck_assert_ptr_nonnull(strstr(e.message, "[4,3,5]"));
    int64_t c1[] = {3, 2, 4, 0, 3, 0};
    g = (proto_neurons){2, 3, c1};
    expect_err(proto_neurons_flatten(&g, shape, 3, out, &e), &e, 422, "neuron_out_of_range", "'neurons[1][1]'",
               "coord 3 in dim of 3");
    int64_t c2[] = {1, 1, 1, 1};
    g = (proto_neurons){2, 2, c2};
    expect_err(proto_neurons_flatten(&g, shape, 3, out, &e), &e, 422, "neuron_out_of_range", "2 coordinates",
               "rank 2 for ndim 3");
    /* A one-dimensional layer (fc): [[5]] is neuron 5. */
    static const int64_t fc[1] = {64};
    int64_t c3[] = {5, 63};
    g = (proto_neurons){2, 1, c3};
    ck_assert_int_eq(proto_neurons_flatten(&g, fc, 1, out, &e), 0);
    ck_assert(out[0] == 5 && out[1] == 63);
    int64_t c4[] = {64};
    g = (proto_neurons){1, 1, c4};
    expect_err(proto_neurons_flatten(&g, fc, 1, out, &e), &e, 422, "neuron_out_of_range", "'neurons[0][0]'", "fc 64");
}
END_TEST

/* The first repeat in reading order, found by brute force: (i, j), i < j. */
static int first_dup(const uint32_t *flat, size_t n, size_t *pi, size_t *pj)
{
    for (size_t j = 1; j < n; j++)
        for (size_t i = 0; i < j; i++)
            if (flat[i] == flat[j]) {
                *pi = i;
                *pj = j;
                return 1;
            }
    return 0;
}

START_TEST(test_flatten_duplicates)
{
    static const int64_t shape[2] = {6, 5};
    proto_err e;
    uint32_t out[64];
    int64_t c[] = {1, 4, 0, 0, 1, 4};
    proto_neurons g = {3, 2, c};
    expect_err(proto_neurons_flatten(&g, shape, 2, out, &e), &e, 422, "duplicate_neuron",
               "'neurons[2]' repeats 'neurons[0]'", "coords dup");
    ck_assert_ptr_nonnull(strstr(e.message, "flat index 9"));

    rng_seed(11);
    int dups = 0;
    for (int trial = 0; trial < 500; trial++) {
        size_t n = 1 + rng_below(40);
        int64_t v[64];
        uint32_t ref[64];
        for (size_t i = 0; i < n; i++) ref[i] = (uint32_t)(v[i] = rng_below(30)); /* 30 neurons: repeats likely */
        g = (proto_neurons){n, 0, v};
        size_t i0, j0;
        int want = first_dup(ref, n, &i0, &j0);
        int rc = proto_neurons_flatten(&g, shape, 2, out, &e);
        if (!want) {
            EXPECT(rc == 0, "trial %d: rejected a group without repeats: %s", trial, e.message);
            continue;
        }
        dups++;
        char needle[64];
        snprintf(needle, sizeof needle, "'neurons[%zu]' repeats 'neurons[%zu]'", j0, i0);
        EXPECT(rc == -1 && e.status == 422 && strcmp(e.code, "duplicate_neuron") == 0 && strstr(e.message, needle),
               "trial %d: got %d %s '%s', want %s", trial, e.status, e.code, e.message, needle);
    }
    ck_assert_int_gt(dups, 100);
    ck_assert_int_lt(dups, 500);

    /* A full-size group, distinct, then with a repeat far apart. */
    size_t n = PROTO_MAX_GROUP;
    int64_t *big = malloc(n * sizeof *big);
    uint32_t *bout = malloc(n * sizeof *bout);
    ck_assert(big && bout);
    static const int64_t wide[2] = {512, 256}; /* 131072 neurons */
    for (size_t i = 0; i < n; i++) big[i] = (int64_t)((i * 40503u) % 131072u); /* odd stride: distinct */
    g = (proto_neurons){n, 0, big};
    ck_assert_int_eq(proto_neurons_flatten(&g, wide, 2, bout, &e), 0);
    for (size_t i = 0; i < n; i++) EXPECT(bout[i] == (uint32_t)big[i], "big[%zu]", i);
    big[n - 1] = big[12345];
    expect_err(proto_neurons_flatten(&g, wide, 2, bout, &e), &e, 422, "duplicate_neuron",
               "'neurons[65535]' repeats 'neurons[12345]'", "far repeat");
    free(big);
    free(bout);
}
END_TEST

/* ---- error bodies ------------------------------------------------------ */

START_TEST(test_error_body)
{
    proto_err e;
    proto_fail(&e, 422, "invalid_value", "field '%s' must be %s", "k", "\"quoted\"\n and \\ escaped");
    char *s = proto_error_body(&e);
    ck_assert_ptr_nonnull(s);
    ck_assert_ptr_null(strchr(s, '\n')); /* compact, newline escaped */
    json_error_t je;
    json_t *o = json_loads(s, 0, &je);
    ck_assert_ptr_nonnull(o);
    ck_assert_int_eq(json_object_size(o), 1);
    json_t *err = json_object_get(o, "error");
    ck_assert_int_eq(json_object_size(err), 2);
    ck_assert_str_eq(json_string_value(json_object_get(err, "code")), "invalid_value");
    ck_assert_str_eq(json_string_value(json_object_get(err, "message")), "field 'k' must be \"quoted\"\n and \\ escaped");
    json_decref(o);
    free(s);

    /* A hand-filled message with invalid UTF-8 still gives valid JSON. */
    proto_err bad = {.status = 400};
    snprintf(bad.code, sizeof bad.code, "x");
    snprintf(bad.message, sizeof bad.message, "bad \xff\xfe byte");
    s = proto_error_body(&bad);
    ck_assert_ptr_nonnull(s);
    o = json_loads(s, 0, &je);
    ck_assert_ptr_nonnull(o);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(o, "error"), "message")), "bad ?? byte");
    json_decref(o);
    free(s);

    /* An unknown key of 300 two-byte characters: the message is cut, yet valid UTF-8. */
    size_t len = 0;
    char body[1024];
    len += (size_t)snprintf(body, sizeof body, "{\"");
    for (int i = 0; i < 300; i++) len += (size_t)snprintf(body + len, sizeof body - len, "\xc3\xa9");
    len += (size_t)snprintf(body + len, sizeof body - len, "\":1}");
    ck_assert_int_eq(parse_raw(K_MODEL, body, len, &e), -1);
    ck_assert_str_eq(e.code, "unknown_field");
    json_t *m = json_string(e.message);
    ck_assert_ptr_nonnull(m);
    json_decref(m);
}
END_TEST

/* ---- mutation loop (the no-crash property) --------------------------- */

static const char *const seeds[] = {
    "{\"name\":\"cnn\",\"path\":\"/x.pt\",\"input_shape\":[1,28,28]}",
    "{\"name\":\"d\",\"path\":\"/d.npy\",\"format\":\"npy\",\"labels_path\":\"/l\",\"mean\":[0.1,0.2],\"std\":0.3,"
    "\"scale\":0.5}",
    "{\"model\":\"m\",\"dataset\":\"d\",\"layers\":[\"a\",\"b\"],\"partitions\":16,\"mai_ratio\":0.1,\"kind\":\"npi\"}",
    "{\"model\":\"m\",\"dataset\":\"d\",\"layer\":\"l\",\"neurons\":[[1,2,3],[4,5,6]],\"k\":3,\"agg\":\"sum\","
    "\"weights\":[1,2],\"filter\":{\"ids\":[1],\"labels\":[2]},\"method\":\"nta\",\"batch\":64,\"timeout_s\":5}",
    "{\"model\":\"m\",\"dataset\":\"d\",\"layer\":\"l\",\"neurons\":[1,2],\"k\":3,\"target\":{\"tensor\":[0.5,1]},"
    "\"metric\":\"linf\",\"include_target\":true,\"weights\":[0,2]}",
};

START_TEST(test_mutations_never_crash)
{
    static const char interesting[] = "{}[],:\"0123456789.-eE \\tnul";
    static const int64_t shape[3] = {64, 7, 7};
    rng_seed(20240601);
    int ok[5] = {0}, failed[5] = {0};
    for (int iter = 0; iter < 6000; iter++) {
        enum kind k = (enum kind)(iter % 5);
        const char *seed = seeds[k];
        size_t len = strlen(seed), cap = len + 16;
        char *b = malloc(cap);
        ck_assert_ptr_nonnull(b);
        memcpy(b, seed, len);
        int ops = 1 + (int)rng_below(4);
        for (int o = 0; o < ops; o++) {
            uint32_t what = rng_below(5), at = rng_below((uint32_t)len + 1);
            if (what >= 3 && len) { /* same class: keeps the JSON valid, changes the value */
                char *c = b + at % len;
                if (*c >= '0' && *c <= '9')
                    *c = (char)('0' + rng_below(10));
                else if (*c >= 'a' && *c <= 'z')
                    *c = (char)('a' + rng_below(26));
            } else if (what == 0 && len) { /* flip a bit */
                b[at % len] ^= (char)(1u << rng_below(8));
            } else if (what == 1 && len) { /* delete a byte */
                at %= (uint32_t)len;
                memmove(b + at, b + at + 1, len - at - 1);
                len--;
            } else if (len < cap) { /* insert a byte: a JSON-ish one mostly */
                memmove(b + at + 1, b + at, len - at);
                b[at] = rng_below(4) ? interesting[rng_below(sizeof interesting - 1)] : (char)rng_below(256);
                len++;
            }
        }
        /* Parse from an exact-size copy (over-reads show under ASan/valgrind). */
        char *exact = malloc(len ? len : 1);
        ck_assert_ptr_nonnull(exact);
        memcpy(exact, b, len);
        free(b);
        proto_err e;
        memset(&e, 0, sizeof e);
        int rc;
        if (k == K_TOPK || k == K_KNN) {
            /* Alternate endpoints: a top-k body sent to kNN and vice versa. */
            int knn = (k == K_KNN) ^ (int)(rng_below(8) == 0);
            proto_query_req r;
            rc = proto_parse_query(exact, len, knn, &r, &e);
            if (rc == 0) {
                uint32_t *out = malloc(r.neurons.n * sizeof *out);
                ck_assert_ptr_nonnull(out);
                proto_err fe;
                int frc = proto_neurons_flatten(&r.neurons, shape, 3, out, &fe);
                EXPECT(frc == 0 || fe.status == 422, "iter %d: flatten gave %d %s", iter, fe.status, fe.code);
                free(out);
            }
            proto_free_query(&r);
            proto_free_query(&r);
        } else {
            rc = parse_raw(k, exact, len, &e);
        }
        free(exact);
        if (rc == 0) {
            ok[k]++;
            continue;
        }
        failed[k]++;
        EXPECT(rc == -1 && (e.status == 400 || e.status == 422) && e.code[0], "iter %d: rc %d status %d code '%s'", iter,
               rc, e.status, e.code);
        char *eb = proto_error_body(&e);
        EXPECT(eb != NULL, "iter %d: no error body for '%s'", iter, e.message);
        json_t *back = json_loads(eb, 0, NULL);
        EXPECT(back != NULL, "iter %d: error body is not JSON: %s", iter, eb);
        json_decref(back);
        free(eb);
    }
    /* The loop must exercise both outcomes for every request type. */
    for (int k = 0; k < 5; k++)
        ck_assert_msg(ok[k] > 20 && failed[k] > 200, "%s: %d parsed, %d failed", kind_name[k], ok[k], failed[k]);

    /* Query-string options from random bytes. */
    for (int iter = 0; iter < 2000; iter++) {
        char s[3][12];
        for (int j = 0; j < 3; j++) {
            size_t n = rng_below(sizeof s[j]);
            for (size_t i = 0; i < n; i++) {
                static const char qs[] = "0123456789.,-+eE x";
                s[j][i] = rng_below(8) ? qs[rng_below(sizeof qs - 1)] : (char)(1 + rng_below(255));
            }
            s[j][n] = '\0';
        }
        proto_dataset_req r;
        memset(&r, 0, sizeof r);
        proto_err e;
        int rc = proto_dataset_opts(&r, rng_below(4) ? s[0] : NULL, s[1], s[2], &e);
        EXPECT(rc == 0 || e.status == 400 || e.status == 422, "opts iter %d: %d", iter, e.status);
        EXPECT(r.nmean <= PROTO_MAX_CHANNELS && r.nstd <= PROTO_MAX_CHANNELS, "opts iter %d: channels", iter);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("proto");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_jspec_every_type);
    tcase_add_test(tc, test_jspec_raw_is_borrowed);
    tcase_add_test(tc, test_jspec_errors);
    tcase_add_test(tc, test_valid_name);
    tcase_add_test(tc, test_model_valid);
    tcase_add_test(tc, test_model_invalid);
    tcase_add_test(tc, test_dataset_valid);
    tcase_add_test(tc, test_dataset_invalid);
    tcase_add_test(tc, test_dataset_opts);
    tcase_add_test(tc, test_index_valid);
    tcase_add_test(tc, test_index_invalid);
    tcase_add_test(tc, test_topk_valid);
    tcase_add_test(tc, test_knn_valid);
    tcase_add_test(tc, test_query_invalid);
    tcase_add_test(tc, test_query_group_limits);
    tcase_add_test(tc, test_flatten_flat_and_coords);
    tcase_add_test(tc, test_flatten_duplicates);
    tcase_add_test(tc, test_error_body);
    tcase_add_test(tc, test_mutations_never_crash);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
