/* libFuzzer harness: the URL router and the error reply it leads to. Input
 * = method NUL url, the url as libmicrohttpd hands it over (percent-decoded:
 * any byte, UTF-8 or not). Params must be non-empty segments of the url
 * without '/'; the 404/405 message that echoes the url must always become a
 * JSON body (a non-UTF-8 byte once made it a 500 "out of memory"). */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jspec.h"
#include "route.h"

static const route_spec TABLE[] = {
    {"GET", "/v1/health"},
    {"POST", "/v1/models"},
    {"GET", "/v1/models/*"},
    {"PUT", "/v1/datasets/*"},
    {"GET", "/v1/datasets/*/inputs"},
    {"GET", "/v1/datasets/*/inputs/*"},
    {"GET", "/v1/datasets/*/inputs/*/image.png"},
    {"GET", "/v1/indexes/*/neurons/*"},
    {"DELETE", "/v1/jobs/*"},
    {"GET", "/"},
    {"GET", "/static/*"},
};

/* What http_reply_err does with a message: sanitize, then pack. */
static void reply_body(const char *code, const char *fmt, const char *a, const char *b)
{
    proto_err e;
    proto_fail(&e, 404, code, fmt, a, b);
    json_t *o = json_pack("{s:{s:s,s:s}}", "error", "code", e.code, "message", e.message);
    if (!o) abort();
    char *s = json_dumps(o, JSON_COMPACT);
    if (!s) abort();
    free(s);
    json_decref(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size + 2);
    if (!in) return 0;
    memcpy(in, data, size);
    in[size] = in[size + 1] = '\0';
    const char *method = in, *url = in + strlen(in) + 1;
    if (url > in + size) url = in + size;
    char buf[512];
    route_hit hit;
    int mismatch;
    int i = route_find(TABLE, sizeof TABLE / sizeof TABLE[0], sizeof TABLE[0], method, url, buf, sizeof buf, &hit,
                       &mismatch);
    if (i >= 0) {
        for (int k = 0; k < hit.nparams; k++) {
            if (!hit.params[k][0] || strchr(hit.params[k], '/') || hit.params[k] < buf ||
                hit.params[k] >= buf + sizeof buf)
                abort();
            reply_body("unknown_model", "model '%s' is not registered%s", hit.params[k], "");
        }
    } else {
        reply_body(mismatch ? "method_not_allowed" : "not_found", "no such endpoint: %s %s", method, url);
    }
    free(in);
    return 0;
}
