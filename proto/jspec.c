/* jspec.c -- declarative parsing of JSON objects into C fields (see jspec.h).
 *
 * Status convention: 400 when the shape is wrong (not an object, unknown or
 * missing field, wrong JSON type), 422 when the value is well-formed but not
 * acceptable (out of range, bad name, unknown choice).
 */
#include "jspec.h"
#include "proto.h" /* proto_valid_name: the rule JS_NAME enforces */

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSPEC_DEFAULT_STRING 4096
#define JSPEC_DEFAULT_ARRAY ((size_t)1 << 20)

/* Length of the valid UTF-8 sequence at s (at most rem bytes), 0 if invalid.
 * Same rules as jansson: no overlongs, no surrogates, nothing past U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t rem)
{
    unsigned c = s[0];
    size_t n;
    unsigned cp;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07;
    else return 0;
    if (n > rem) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* Messages echo client bytes (keys, jansson's error text) and vsnprintf may
 * cut a multi-byte character: replace every invalid byte with '?' so the
 * message can always be put into a JSON string. */
void proto_sanitize(char *msg)
{
    unsigned char *s = (unsigned char *)msg;
    size_t len = strlen(msg);
    for (size_t i = 0; i < len;) {
        size_t n = utf8_seq(s + i, len - i);
        if (n == 0) {
            s[i++] = '?';
        } else {
            i += n;
        }
    }
}

int proto_fail(proto_err *e, int status, const char *code, const char *fmt, ...)
{
    e->status = status;
    snprintf(e->code, sizeof e->code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    proto_sanitize(e->message);
    return -1;
}

int proto_valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > PROTO_NAME_MAX) return 0;
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

const char *jspec_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown value";
}

/* "a number from 0 to 1", "a number >= 0", "a finite number". */
static void describe_range(char *buf, size_t n, double lo, double hi)
{
    int unbounded = lo == 0 && hi == 0;
    int no_lo = unbounded || lo <= -DBL_MAX, no_hi = unbounded || hi >= DBL_MAX;
    if (no_lo && no_hi)
        snprintf(buf, n, "a finite number");
    else if (no_hi)
        snprintf(buf, n, "a number >= %g", lo);
    else if (no_lo)
        snprintf(buf, n, "a number <= %g", hi);
    else
        snprintf(buf, n, "a number from %g to %g", lo, hi);
}

static void describe_int_range(char *buf, size_t n, int64_t lo, int64_t hi)
{
    if (hi == INT64_MAX)
        snprintf(buf, n, "an integer >= %lld", (long long)lo);
    else
        snprintf(buf, n, "an integer from %lld to %lld", (long long)lo, (long long)hi);
}

static int in_range(double x, double lo, double hi)
{
    if (!isfinite(x)) return 0;
    if (lo == 0 && hi == 0) return 1;
    return x >= lo && x <= hi;
}

static int parse_name(const jspec *s, const json_t *v, proto_err *e)
{
    if (!json_is_string(v))
        return proto_fail(e, 400, "invalid_type", "field '%s' must be a string, not %s", s->name, jspec_type_name(v));
    const char *str = json_string_value(v);
    size_t len = json_string_length(v);
    if (len != strlen(str) || !proto_valid_name(str)) {
        if (len < 1 || len > PROTO_NAME_MAX)
            return proto_fail(e, 422, "invalid_name", "field '%s' must be 1 to %d characters of [A-Za-z0-9._-]; it has %zu",
                              s->name, PROTO_NAME_MAX, len);
        size_t at = strspn(str, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-");
        unsigned char c = (unsigned char)str[at];
        if (c > 0x20 && c < 0x7F)
            return proto_fail(e, 422, "invalid_name",
                              "field '%s' must be 1 to %d characters of [A-Za-z0-9._-]; '%c' at position %zu is not",
                              s->name, PROTO_NAME_MAX, c, at);
        return proto_fail(e, 422, "invalid_name",
                          "field '%s' must be 1 to %d characters of [A-Za-z0-9._-]; byte %zu is not", s->name,
                          PROTO_NAME_MAX, at);
    }
    memcpy(s->dest, str, len + 1);
    return 0;
}

static int parse_string(const jspec *s, const json_t *v, proto_err *e)
{
    if (!json_is_string(v))
        return proto_fail(e, 400, "invalid_type", "field '%s' must be a string, not %s", s->name, jspec_type_name(v));
    size_t max = s->max > 0 ? (size_t)s->max : JSPEC_DEFAULT_STRING, len = json_string_length(v);
    if (len == 0 || len > max)
        return proto_fail(e, 422, "invalid_value", "field '%s' must be 1 to %zu bytes long; it has %zu", s->name, max,
                          len);
    if (memchr(json_string_value(v), '\0', len))
        return proto_fail(e, 422, "invalid_value", "field '%s' must not contain a NUL character", s->name);
    char **dst = s->dest;
    free(*dst);
    if (!(*dst = strdup(json_string_value(v)))) return proto_fail(e, 500, "internal", "out of memory");
    return 0;
}

static int parse_enum(const jspec *s, const json_t *v, proto_err *e)
{
    if (!json_is_string(v))
        return proto_fail(e, 400, "invalid_type", "field '%s' must be a string, not %s", s->name, jspec_type_name(v));
    const char *str = json_string_value(v);
    for (int i = 0; s->choices[i]; i++)
        if (strcmp(s->choices[i], str) == 0 && strlen(str) == json_string_length(v)) {
            *(int *)s->dest = i;
            return 0;
        }
    char list[200] = "";
    size_t used = 0;
    for (int i = 0; s->choices[i] && used < sizeof list; i++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s'%s'", i ? ", " : "", s->choices[i]);
    return proto_fail(e, 422, "invalid_value", "field '%s' must be one of %s; it is '%.40s'", s->name, list, str);
}

static int parse_integer(const jspec *s, const json_t *v, proto_err *e)
{
    if (!json_is_integer(v))
        return proto_fail(e, 400, "invalid_type", "field '%s' must be an integer, not %s", s->name, jspec_type_name(v));
    int64_t lo = s->min, hi = s->max;
    if (s->type == JS_UINT && lo < 0) lo = 0;
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        char r[96];
        describe_int_range(r, sizeof r, lo, hi);
        return proto_fail(e, 422, "invalid_value", "field '%s' must be %s; it is %lld", s->name, r, (long long)x);
    }
    if (s->type == JS_UINT)
        *(uint64_t *)s->dest = (uint64_t)x;
    else
        *(int64_t *)s->dest = (int64_t)x;
    return 0;
}

static int parse_number(const jspec *s, const json_t *v, proto_err *e)
{
    if (!json_is_number(v))
        return proto_fail(e, 400, "invalid_type", "field '%s' must be a number, not %s", s->name, jspec_type_name(v));
    double x = json_number_value(v);
    if (!in_range(x, s->dmin, s->dmax)) {
        char r[96];
        describe_range(r, sizeof r, s->dmin, s->dmax);
        return proto_fail(e, 422, "invalid_value", "field '%s' must be %s; it is %g", s->name, r, x);
    }
    *(double *)s->dest = x;
    return 0;
}

static int parse_array(const jspec *s, const json_t *v, proto_err *e)
{
    if (!json_is_array(v))
        return proto_fail(e, 400, "invalid_type", "field '%s' must be an array, not %s", s->name, jspec_type_name(v));
    size_t max = s->maxn;
    if (!max) max = s->type == JS_FLOATS && s->max > 0 ? (size_t)s->max : JSPEC_DEFAULT_ARRAY;
    size_t n = json_array_size(v);
    if (n == 0 || n > max)
        return proto_fail(e, 422, "invalid_value", "field '%s' must hold 1 to %zu values; it holds %zu", s->name, max,
                          n);
    if (s->type == JS_FLOATS) {
        jspec_floats *d = s->dest;
        free(d->v);
        d->n = 0;
        if (!(d->v = malloc(n * sizeof *d->v))) return proto_fail(e, 500, "internal", "out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *x = json_array_get(v, i);
            if (!json_is_number(x))
                return proto_fail(e, 400, "invalid_type", "field '%s[%zu]' must be a number, not %s", s->name, i,
                                  jspec_type_name(x));
            double f = json_number_value(x);
            if (!in_range(f, s->dmin, s->dmax)) {
                char r[96];
                describe_range(r, sizeof r, s->dmin, s->dmax);
                return proto_fail(e, 422, "invalid_value", "field '%s[%zu]' must be %s; it is %g", s->name, i, r, f);
            }
            d->v[i] = f;
        }
        d->n = n;
    } else {
        jspec_uints *d = s->dest;
        int64_t lo = s->min < 0 ? 0 : s->min, hi = s->max;
        free(d->v);
        d->n = 0;
        if (!(d->v = malloc(n * sizeof *d->v))) return proto_fail(e, 500, "internal", "out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *x = json_array_get(v, i);
            if (!json_is_integer(x))
                return proto_fail(e, 400, "invalid_type", "field '%s[%zu]' must be an integer, not %s", s->name, i,
                                  jspec_type_name(x));
            json_int_t k = json_integer_value(x);
            if (k < lo || k > hi) {
                char r[96];
                describe_int_range(r, sizeof r, lo, hi);
                return proto_fail(e, 422, "invalid_value", "field '%s[%zu]' must be %s; it is %lld", s->name, i, r,
                                  (long long)k);
            }
            d->v[i] = (uint64_t)k;
        }
        d->n = n;
    }
    return 0;
}

static int parse_field(const jspec *s, json_t *v, proto_err *e)
{
    switch (s->type) {
    case JS_NAME: return parse_name(s, v, e);
    case JS_STRING: return parse_string(s, v, e);
    case JS_ENUM: return parse_enum(s, v, e);
    case JS_UINT:
    case JS_INT: return parse_integer(s, v, e);
    case JS_NUMBER: return parse_number(s, v, e);
    case JS_BOOL:
        if (!json_is_boolean(v))
            return proto_fail(e, 400, "invalid_type", "field '%s' must be true or false, not %s", s->name,
                              jspec_type_name(v));
        *(int *)s->dest = json_is_true(v);
        return 0;
    case JS_FLOATS:
    case JS_UINTS: return parse_array(s, v, e);
    case JS_JSON: *(json_t **)s->dest = v; return 0;
    }
    return proto_fail(e, 500, "internal", "field '%s' has an unknown spec type %d", s->name, s->type);
}

static const jspec *find_spec(const jspec *specs, const char *key, size_t keylen)
{
    for (const jspec *s = specs; s->type != JS_END; s++)
        if (strlen(s->name) == keylen && memcmp(s->name, key, keylen) == 0) return s;
    return NULL;
}

static int unknown_field(const jspec *specs, const char *key, proto_err *e)
{
    char allowed[240];
    size_t used = 0;
    allowed[0] = '\0';
    for (const jspec *s = specs; s->type != JS_END && used < sizeof allowed; s++)
        used += (size_t)snprintf(allowed + used, sizeof allowed - used, "%s%s", s == specs ? "" : ", ", s->name);
    return proto_fail(e, 400, "unknown_field", "unknown field '%.64s'%s; the fields are: %s", key,
                      strlen(key) > 64 ? "..." : "", allowed);
}

int jspec_parse(const json_t *obj, const jspec *specs, proto_err *e)
{
    if (!obj || !json_is_object(obj))
        return proto_fail(e, 400, "invalid_body", "expected a JSON object, not %s", obj ? jspec_type_name(obj) : "nothing");
    /* Unknown fields first: a typo must not surface as "missing field". */
    const char *key;
    size_t keylen;
    json_t *v;
    json_object_keylen_foreach((json_t *)obj, key, keylen, v)
    {
        if (!find_spec(specs, key, keylen)) return unknown_field(specs, key, e);
    }
    for (const jspec *s = specs; s->type != JS_END; s++) {
        v = json_object_get(obj, s->name);
        if (!v || json_is_null(v)) {
            if (s->required) return proto_fail(e, 400, "missing_field", "field '%s' is required", s->name);
            continue;
        }
        if (parse_field(s, v, e) != 0) return -1;
        if (s->present) *s->present = 1;
    }
    return 0;
}

void jspec_free(const jspec *specs)
{
    for (const jspec *s = specs; s->type != JS_END; s++) {
        if (s->type == JS_STRING) {
            char **d = s->dest;
            free(*d);
            *d = NULL;
        } else if (s->type == JS_FLOATS) {
            jspec_floats *d = s->dest;
            free(d->v);
            d->v = NULL;
            d->n = 0;
        } else if (s->type == JS_UINTS) {
            jspec_uints *d = s->dest;
            free(d->v);
            d->v = NULL;
            d->n = 0;
        }
    }
}
