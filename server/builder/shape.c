/* shape.c -- an index's shape from a storage budget (see shape.h). */
#include "shape.h"

#include <math.h>

#include "npi.h"

static uint32_t shape_n(uint64_t n)
{
    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)(n ? n : 1);
}

double shape_room(uint64_t n, double budget)
{
    return budget * 0.98 * 4.0 * shape_n(n);
}

void shape_pick(uint64_t n, double budget, uint32_t *partitions, double *mai_ratio)
{
    uint32_t N = shape_n(n);
    double room = shape_room(n, budget);
    if (!*partitions) {
        int bits = 8;
        while (bits > 1 && (double)npi_blob_size(N, 1u << bits, npi_mai_count(N, SHAPE_MAI_FLOOR)) > room)
            bits--;
        *partitions = 1u << bits;
    }
    if (*mai_ratio < 0) {
        /* in thousandths, so that every ratio tried is the double of its
         * decimal (0.06, not 0.07 - 0.01) */
        double left = room - (double)npi_blob_size(N, *partitions, 0);
        double mai = left > 0 ? left / 8.0 / N : 0;
        long units = mai >= 0.01 ? (long)floor(mai * 100 + 1e-9) * 10 : (long)floor(mai * 1000 + 1e-9);
        if (units > 500) units = 500;
        /* ceil(ratio * N) can still overshoot by an entry */
        while (units > 0 && (double)npi_blob_size(N, *partitions, npi_mai_count(N, units / 1000.0)) > room)
            units -= units > 10 ? 10 : 1;
        *mai_ratio = units / 1000.0;
    }
}
