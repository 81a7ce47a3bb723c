/* inputs.c -- see inputs.h. */
#include "inputs.h"

#include <stdio.h>
#include <string.h>

size_t inputs_numel(const store_dataset *d)
{
    size_t n = 1;
    for (int i = 0; i < d->ndim; i++) n *= (size_t)d->shape[i];
    return n;
}

int inputs_load(store_txn *t, const store_dataset *d, const uint32_t *ids, size_t n, float *out, char *err,
                size_t errlen)
{
    size_t numel = inputs_numel(d);
    size_t esize = d->dtype == STORE_U8 ? 1 : 4;
    /* Channel of element e is e / plane for [C,H,W]-like shapes. */
    size_t plane = d->ndim >= 3 ? numel / (size_t)d->shape[0] : numel;
    for (size_t i = 0; i < n; i++) {
        const void *data;
        size_t len;
        if (ids[i] >= d->count || store_input_get(t, d->id, ids[i], &data, &len) != STORE_OK ||
            len != numel * esize) {
            snprintf(err, errlen, "input %u of dataset '%s' is missing or damaged", ids[i], d->name);
            return -1;
        }
        float *o = out + i * numel;
        for (size_t e = 0; e < numel; e++) {
            float raw;
            if (esize == 1)
                raw = ((const uint8_t *)data)[e];
            else
                memcpy(&raw, (const char *)data + e * 4, 4); /* LMDB values may be unaligned */
            size_t c = d->nchan > 1 ? (e / plane) % (size_t)d->nchan : 0;
            o[e] = (raw * d->scale - d->mean[c]) / d->std[c];
        }
    }
    return 0;
}
