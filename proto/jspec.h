/* jspec.h -- declarative parsing of JSON objects (jansson) into C fields.
 *
 * Each request type is a table of field specs: name, type, required,
 * destination, and limits. jspec_parse() walks the table once, fills every
 * destination, and on the first problem fills a proto_err that names the
 * field (e.g. "field 'k' must be an integer >= 1"). Unknown fields are
 * rejected too, so a typo ("neuron" for "neurons") is a 400, not a silent
 * default. jspec_free() releases what parse allocated (arrays, strings),
 * whether parse succeeded or not, so callers have one cleanup path.
 */
#ifndef DE_JSPEC_H
#define DE_JSPEC_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct proto_err {
    int status;          /* HTTP status the server should answer with */
    char code[48];       /* snake_case, e.g. "invalid_field" */
    char message[320];   /* names the field and says what and why */
} proto_err;

/* Replaces every byte of s that is not part of valid UTF-8 with '?', so the
 * text can always go into a JSON string. */
void proto_sanitize(char *s);

/* Sets e and returns -1 (so callers can `return proto_fail(...)`); the
 * message is sanitized. */
int proto_fail(proto_err *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

enum jspec_type {
    JS_END = 0,
    JS_NAME,        /* char[65]: [A-Za-z0-9._-]{1,64} */
    JS_STRING,      /* char *: malloc'd copy, max `max` bytes (0 = 4096) */
    JS_ENUM,        /* int: index into `choices` (NULL-terminated) */
    JS_UINT,        /* uint64_t in [min, max] */
    JS_INT,         /* int64_t in [min, max] */
    JS_NUMBER,      /* double in [dmin, dmax], finite */
    JS_BOOL,        /* int 0/1 */
    JS_FLOATS,      /* jspec_floats: array of finite numbers, 1..max long (0 = 1<<20) */
    JS_UINTS,       /* jspec_uints: array of integers in [min, max], 1..1e7 long */
    JS_JSON         /* json_t *: borrowed reference, any type (custom parse) */
};

typedef struct jspec_floats { size_t n; double *v; } jspec_floats;
typedef struct jspec_uints { size_t n; uint64_t *v; } jspec_uints;

typedef struct jspec {
    const char *name;
    int type;                  /* enum jspec_type */
    int required;
    void *dest;
    int *present;              /* optional: set to 1 when the field was given */
    int64_t min, max;          /* JS_UINT/JS_INT/JS_UINTS range, JS_STRING/arrays max length */
    double dmin, dmax;         /* JS_NUMBER / JS_FLOATS range */
    const char *const *choices;/* JS_ENUM */
    size_t maxn;               /* JS_FLOATS/JS_UINTS: most elements; 0 = `max` for
                                  JS_FLOATS (as above), 1<<20 for JS_UINTS, whose
                                  min/max bound the elements */
} jspec;

/* Parses obj (must be a JSON object) against specs (ended by JS_END).
 * Destinations must start zeroed: jspec_free() frees whatever pointer it finds
 * there. A JSON null counts as an absent field. */
int jspec_parse(const json_t *obj, const jspec *specs, proto_err *e);
void jspec_free(const jspec *specs);

/* "an integer", "a string", ...: for error messages. */
const char *jspec_type_name(const json_t *v);

#endif
