/* libFuzzer harness: the streaming .npy / idx (gzip) reader, fed in chunks
 * whose sizes come from the input itself, so chunk boundaries are fuzzed
 * too. Delivered inputs must be whole and in order. */
#include <stdint.h>
#include <stdlib.h>

#include "dsread.h"

typedef struct { uint64_t next, count; size_t bytes; } state;

static int on_header(const dsread_info *info, void *arg, char *err, size_t errlen)
{
    state *s = arg;
    s->count = info->count;
    s->bytes = info->input_bytes;
    return 0;
}

static int on_inputs(const void *data, uint64_t first, uint64_t count, void *arg, char *err, size_t errlen)
{
    state *s = arg;
    if (first != s->next || first + count > s->count) abort();
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < count * s->bytes; i++) sink ^= ((const uint8_t *)data)[i]; /* touch every byte */
    (void)sink;
    s->next = first + count;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    int format = data[0] % 3;
    size_t step = (size_t)(data[1] % 64) + 1;
    data += 2;
    size -= 2;
    state s = {0};
    dsread *r;
    char err[256];
    if (dsread_new(format, 1 << 24, on_header, on_inputs, &s, &r) != 0) return 0;
    int ok = 1;
    for (size_t off = 0; off < size && ok; off += step) {
        size_t n = size - off < step ? size - off : step;
        ok = dsread_feed(r, data + off, n, err, sizeof err) == 0;
    }
    if (ok && dsread_finish(r, err, sizeof err) == 0 && s.next != s.count) abort(); /* success = all inputs */
    dsread_free(r);
    return 0;
}
