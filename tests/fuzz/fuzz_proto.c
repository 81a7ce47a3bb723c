/* libFuzzer harness: every request parser of proto/. The first byte picks
 * the request type; the rest is the body. Each parse must either succeed or
 * fail with a 4xx, and free everything either way (ASan/LSan check). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    proto_err e;
    int rc;
    switch (data[0] % 6) {
    case 0: {
        proto_model_req r = {0};
        rc = proto_parse_model(body, len, &r, &e);
        proto_free_model(&r);
        break;
    }
    case 1: {
        proto_dataset_req r = {0};
        rc = proto_parse_dataset(body, len, &r, &e);
        proto_free_dataset(&r);
        break;
    }
    case 2: {
        proto_index_req r = {0};
        rc = proto_parse_index(body, len, &r, &e);
        proto_free_index(&r);
        break;
    }
    case 3:
    case 4: {
        proto_query_req r = {0};
        rc = proto_parse_query(body, len, data[0] % 6 == 4, &r, &e);
        if (rc == 0) {
            static const int64_t shape[3] = {64, 7, 7};
            uint32_t *out = malloc((r.neurons.n ? r.neurons.n : 1) * sizeof *out);
            if (out) proto_neurons_flatten(&r.neurons, shape, 3, out, &e);
            free(out);
        }
        proto_free_query(&r);
        break;
    }
    default: {
        /* query-string options: three NUL-separated strings */
        char *copy = malloc(len + 3);
        if (!copy) return 0;
        memcpy(copy, body, len);
        copy[len] = copy[len + 1] = copy[len + 2] = '\0';
        const char *a = copy, *b = a + strlen(a) + 1, *c = b + strlen(b) + 1;
        proto_dataset_req r = {0};
        rc = proto_dataset_opts(&r, a, b, c, &e);
        proto_free_dataset(&r);
        free(copy);
        break;
    }
    }
    if (rc != 0 && (e.status < 400 || e.status > 499)) abort(); /* bad input is always a 4xx */
    return 0;
}
