/* bigmem.h -- the builders' big buffers, straight from mmap.
 *
 * Never from malloc: a tens-of-MB block in a thread's malloc arena pushes
 * the model's per-forward tensors into heaps that glibc unmaps when they
 * empty, so every forward faults its memory in again (measured: a spilled
 * build's inference ran 5x slower, a third of it in page faults). The
 * pages come zeroed. */
#ifndef DE_BIGMEM_H
#define DE_BIGMEM_H

#include <stddef.h>
#include <sys/mman.h>

/* NULL when the mapping fails; release with big_free(p, bytes). */
static inline void *big_alloc(size_t bytes)
{
    void *p = mmap(NULL, bytes ? bytes : 1, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static inline void big_free(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes ? bytes : 1);
}

#endif
