/* libFuzzer harness: the URL router. Input = method NUL url. Params must be
 * non-empty segments of the url without '/'. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "route.h"

static const route_spec TABLE[] = {
    {"GET", "/v1/health"},
    {"POST", "/v1/models"},
    {"GET", "/v1/models/*"},
    {"PUT", "/v1/datasets/*"},
    {"GET", "/v1/datasets/*/inputs/*"},
    {"GET", "/v1/datasets/*/inputs/*/image.png"},
    {"GET", "/v1/indexes/*/neurons/*"},
    {"GET", "/"},
    {"GET", "/static/*"},
};

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
    if (i >= 0)
        for (int k = 0; k < hit.nparams; k++)
            if (!hit.params[k][0] || strchr(hit.params[k], '/') || hit.params[k] < buf ||
                hit.params[k] >= buf + sizeof buf)
                abort();
    free(in);
    return 0;
}
