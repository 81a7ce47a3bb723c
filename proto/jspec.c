/* jspec.c -- see jspec.h. */
#include "jspec.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int proto_fail(proto_err *e, int status, const char *code, const char *fmt, ...)
{
    e->status = status;
    snprintf(e->code, sizeof e->code, "%s", code);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64) return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '.' ||
              *p == '_' || *p == '-'))
            return 0;
    return 1;
}

static const jspec *find_spec(const jspec *specs, const char *key)
{
    for (const jspec *s = specs; s->type != JS_END; s++)
        if (strcmp(s->name, key) == 0) return s;
    return NULL;
}

static int parse_field(const jspec *s, json_t *v, proto_err *e)
{
    switch (s->type) {
    case JS_NAME:
        if (!json_is_string(v)) return proto_fail(e, 400, "invalid_type", "field '%s' must be a string", s->name);
        if (!valid_name(json_string_value(v)))
            return proto_fail(e, 422, "invalid_name", "field '%s' must be 1-64 characters of [A-Za-z0-9._-]", s->name);
        snprintf((char *)s->dest, 65, "%s", json_string_value(v));
        return 0;
    case JS_STRING: {
        if (!json_is_string(v)) return proto_fail(e, 400, "invalid_type", "field '%s' must be a string", s->name);
        size_t max = s->max ? (size_t)s->max : 4096, len = json_string_length(v);
        if (len == 0 || len > max)
            return proto_fail(e, 422, "invalid_value", "field '%s' must be 1 to %zu characters", s->name, max);
        if (memchr(json_string_value(v), '\0', len))
            return proto_fail(e, 422, "invalid_value", "field '%s' holds a NUL character", s->name);
        char **dst = s->dest;
        free(*dst);
        if (!(*dst = strdup(json_string_value(v)))) return proto_fail(e, 500, "internal", "out of memory");
        return 0;
    }
    case JS_ENUM: {
        if (!json_is_string(v)) return proto_fail(e, 400, "invalid_type", "field '%s' must be a string", s->name);
        for (int i = 0; s->choices[i]; i++)
            if (strcmp(s->choices[i], json_string_value(v)) == 0) {
                *(int *)s->dest = i;
                return 0;
            }
        char list[160] = "";
        for (int i = 0; s->choices[i]; i++) {
            strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
            strncat(list, s->choices[i], sizeof list - strlen(list) - 1);
        }
        return proto_fail(e, 422, "invalid_value", "field '%s' must be one of %s", s->name, list);
    }
    case JS_UINT:
    case JS_INT: {
        if (!json_is_integer(v)) return proto_fail(e, 400, "invalid_type", "field '%s' must be an integer", s->name);
        json_int_t x = json_integer_value(v);
        if (x < s->min || x > s->max)
            return proto_fail(e, 422, "invalid_value", "field '%s' must be an integer from %lld to %lld", s->name,
                              (long long)s->min, (long long)s->max);
        if (s->type == JS_UINT)
            *(uint64_t *)s->dest = (uint64_t)x;
        else
            *(int64_t *)s->dest = (int64_t)x;
        return 0;
    }
    case JS_NUMBER: {
        if (!json_is_number(v)) return proto_fail(e, 400, "invalid_type", "field '%s' must be a number", s->name);
        double x = json_number_value(v);
        int bounded = !(s->dmin == 0 && s->dmax == 0);
        if (!isfinite(x) || (bounded && (x < s->dmin || x > s->dmax)))
            return proto_fail(e, 422, "invalid_value", "field '%s' must be a number from %g to %g", s->name, s->dmin,
                              s->dmax);
        *(double *)s->dest = x;
        return 0;
    }
    case JS_BOOL:
        if (!json_is_boolean(v)) return proto_fail(e, 400, "invalid_type", "field '%s' must be true or false", s->name);
        *(int *)s->dest = json_is_true(v);
        return 0;
    case JS_FLOATS:
    case JS_UINTS: {
        if (!json_is_array(v)) return proto_fail(e, 400, "invalid_type", "field '%s' must be an array", s->name);
        /* JS_FLOATS: max caps the length; JS_UINTS: min/max bound the values
         * and the length is capped at 1e7 (filter ids). */
        size_t n = json_array_size(v);
        size_t max = s->type == JS_UINTS ? 10000000 : s->max ? (size_t)s->max : (size_t)1 << 20;
        if (n == 0 || n > max)
            return proto_fail(e, 422, "invalid_value", "field '%s' must hold 1 to %zu values", s->name, max);
        if (s->type == JS_FLOATS) {
            jspec_floats *d = s->dest;
            free(d->v);
            d->n = 0;
            if (!(d->v = malloc(n * sizeof *d->v))) return proto_fail(e, 500, "internal", "out of memory");
            int bounded = !(s->dmin == 0 && s->dmax == 0);
            for (size_t i = 0; i < n; i++) {
                json_t *x = json_array_get(v, i);
                if (!json_is_number(x))
                    return proto_fail(e, 400, "invalid_type", "field '%s'[%zu] must be a number", s->name, i);
                double f = json_number_value(x);
                if (!isfinite(f) || (bounded && (f < s->dmin || f > s->dmax)))
                    return proto_fail(e, 422, "invalid_value", "field '%s'[%zu] must be a number from %g to %g",
                                      s->name, i, s->dmin, s->dmax);
                d->v[i] = f;
            }
            d->n = n;
        } else {
            jspec_uints *d = s->dest;
            free(d->v);
            d->n = 0;
            if (!(d->v = malloc(n * sizeof *d->v))) return proto_fail(e, 500, "internal", "out of memory");
            for (size_t i = 0; i < n; i++) {
                json_t *x = json_array_get(v, i);
                if (!json_is_integer(x))
                    return proto_fail(e, 400, "invalid_type", "field '%s'[%zu] must be an integer", s->name, i);
                json_int_t k = json_integer_value(x);
                if (k < s->min || k > s->max)
                    return proto_fail(e, 422, "invalid_value", "field '%s'[%zu] must be from %lld to %lld", s->name,
                                      i, (long long)s->min, (long long)s->max);
                d->v[i] = (uint64_t)k;
            }
            d->n = n;
        }
        return 0;
    }
    case JS_JSON:
        *(json_t **)s->dest = v;
        return 0;
    }
    return proto_fail(e, 500, "internal", "field '%s' has an unknown spec type", s->name);
}

int jspec_parse(const json_t *obj, const jspec *specs, proto_err *e)
{
    if (!json_is_object(obj)) return proto_fail(e, 400, "invalid_body", "the body must be a JSON object");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v)
    {
        if (!find_spec(specs, key)) return proto_fail(e, 400, "unknown_field", "unknown field '%s'", key);
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
