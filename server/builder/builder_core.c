/* builder_core.c -- one inference pass (input-major rows) to per-neuron
 * index blobs (neuron-major), within a memory budget. See builder_core.h.
 *
 * Layout. Neurons are cut into chunks of `chunk` consecutive neurons.
 *  - In memory (the whole layer fits the budget): one neuron-major matrix,
 *    written column by column as batches arrive.
 *  - Spilled: a temporary file (unlinked at once) with one region per chunk,
 *    n_inputs * chunk_n * 4 bytes, input-major inside (row i of the chunk at
 *    i * chunk_n floats), so every batch appends one contiguous slice per
 *    chunk. bcore_finish reads one chunk back, block by block through a
 *    staging buffer, into neuron-major columns. Slices whose offset and
 *    length are whole 4 KiB blocks (chunk_n a multiple of 1024 makes them
 *    all so) bypass the page cache (O_DIRECT): on the project's VMs a
 *    buffered write runs at ~330 MB/s, most of it the kernel faulting in
 *    fresh page-cache memory, a direct one at ~1.5 GB/s; reads 2.6 GB/s.
 *    Chunks hold at most CHUNK_MAX bytes (and at least 1024 neurons) because
 *    fresh memory costs ~2 ms per MiB here: one small chunk buffer reused
 *    is cheaper than one big one touched once.
 *
 * Memory. Activation buffers -- the matrix, or one chunk's columns plus the
 * staging block (budget/8, 64 MiB at most) -- never exceed mem_budget. bcore_peak_bytes adds
 * the finished-blob ring of bcore_finish (2 blobs per thread, or up to
 * 16 MiB of small blobs). Not counted:
 * each thread's npi scratch (about 27 bytes per input plus 0.4 MiB). In
 * memory, bcore_finish gives the pages of emitted columns back as it goes.
 *
 * Raw mode (bcore_set_raw) emits each column itself, float32[N], from the
 * same buffers: no index is built, no thread is started.
 *
 * Threads. Workers claim neurons in ascending order and build each blob into
 * a ring slot; the calling thread emits slot after slot in neuron order and
 * frees it, so a worker never runs more than the ring ahead of emit().
 */
#include "builder_core.h"

#include "bigmem.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#ifdef __SSE2__
#include <immintrin.h>
#endif

#include "npi.h"

#define MIN_BUDGET ((size_t)1 << 20)
#define RING_BYTES ((size_t)16 << 20)
#define STAGE_MAX ((size_t)64 << 20)
#define CHUNK_MAX ((size_t)256 << 20)
#define DIRECT_ALIGN 4096u

struct bcore {
    uint32_t n;          /* inputs */
    uint64_t neurons;
    uint32_t partitions, mai_count;
    size_t budget;
    uint64_t chunk;      /* neurons per chunk */
    uint64_t n_chunks;
    int spill_fd;        /* -1: in memory */
    int direct_fd;       /* the same file opened O_DIRECT, or -1 */
    float *mat;          /* in memory: neurons x n, neuron-major */
    size_t mat_bytes;    /* its mapping's length */
    size_t mat_released; /* bytes at its start already given back */
    float *stage;        /* spilled: staging block */
    size_t stage_bytes;
    /* Spilled, while adding: the stage cut into one area per chunk, each
     * holding up to area_rows[c] rows before one write (0: no areas, each
     * step writes its slice at once); area_held[c] rows held, from input
     * area_first[c]. */
    size_t area_bytes;
    uint32_t *area_rows, *area_held, *area_first;
    uint32_t added;
    int finished;
    int raw;             /* emit raw columns instead of index blobs */
    size_t held, peak;   /* bytes of buffers held now / at most */
    /* a second thread for transposes (bcore_set_transpose_threads) */
    int add_threads, helper_up, helper_quit;
    pthread_t helper;
    pthread_mutex_t hmu;
    pthread_cond_t hcv;
    const float *h_src;        /* the helper's share of the current block: */
    float *h_dst;              /*   columns [h_c0, h_c1) of transpose() */
    size_t h_src_stride, h_dst_stride, h_rows, h_c0, h_c1;
    unsigned h_posted, h_done; /* blocks posted / finished */
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void hold(bcore *b, size_t bytes)
{
    b->held += bytes;
    if (b->held > b->peak)
        b->peak = b->held;
}

static void release(bcore *b, size_t bytes)
{
    b->held -= bytes;
}

/* Neurons in chunk c. */
static uint64_t chunk_neurons(const bcore *b, uint64_t c)
{
    uint64_t first = c * b->chunk;
    return b->neurons - first < b->chunk ? b->neurons - first : b->chunk;
}

static off_t chunk_offset(const bcore *b, uint64_t c)
{
    return (off_t)(c * b->chunk * (uint64_t)b->n * sizeof(float));
}

/* Rows of chunk c held before a write: a multiple of the rows that make
 * whole 4 KiB blocks, so that every full area's write is direct. Fewer,
 * larger writes (12.5 GB spilled: ~27,000 writes of 0.5 MB took 36 s,
 * ~2,700 of 9 MB 32 s). Without room for two units, no areas. */
static void plan_areas(bcore *b)
{
    if (b->n_chunks < 1 || b->n_chunks > 4096)
        return;
    size_t area = (b->stage_bytes / b->n_chunks) & ~(size_t)(DIRECT_ALIGN - 1);
    uint32_t *rows = calloc(b->n_chunks, sizeof *rows);
    uint32_t *held = calloc(b->n_chunks, sizeof *held);
    uint32_t *first = calloc(b->n_chunks, sizeof *first);
    if (!rows || !held || !first || area == 0)
        goto none;
    for (uint64_t c = 0; c < b->n_chunks; c++) {
        size_t rb = (size_t)chunk_neurons(b, c) * sizeof(float), g = rb, m = DIRECT_ALIGN;
        while (m) { /* gcd(rb, 4096) */
            size_t t = g % m;
            g = m;
            m = t;
        }
        size_t unit = DIRECT_ALIGN / g; /* rows per whole number of blocks */
        size_t cap = area / rb / unit * unit;
        if (cap < 2 * unit || cap > UINT32_MAX)
            goto none; /* no better than a write per step */
        rows[c] = (uint32_t)cap;
    }
    b->area_bytes = area;
    b->area_rows = rows;
    b->area_held = held;
    b->area_first = first;
    return;
none:
    free(rows);
    free(held);
    free(first);
}

int bcore_new(uint32_t n_inputs, uint64_t neurons, uint32_t partitions, uint32_t mai_count,
              size_t mem_budget, const char *tmpdir, bcore **out, char *err, size_t errlen)
{
    bcore *b = NULL;
    char *path = NULL;
    if (!out) {
        set_err(err, errlen, "no output handle");
        return -1;
    }
    *out = NULL;
    if (n_inputs == 0 || neurons == 0) {
        set_err(err, errlen, "empty layer (%u inputs, %llu neurons)", n_inputs,
                (unsigned long long)neurons);
        return -1;
    }
    if (partitions < 2 || partitions > NPI_MAX_PARTITIONS) {
        set_err(err, errlen, "partitions must be in 2..%d, got %u", NPI_MAX_PARTITIONS,
                partitions);
        return -1;
    }
    if (mai_count > n_inputs) {
        set_err(err, errlen, "MAI size %u exceeds the %u inputs", mai_count, n_inputs);
        return -1;
    }
    if (mem_budget < MIN_BUDGET) {
        set_err(err, errlen, "memory budget %zu bytes is below the minimum of 1 MiB",
                mem_budget);
        return -1;
    }
    uint64_t column = (uint64_t)n_inputs * sizeof(float);
    b = calloc(1, sizeof *b);
    if (!b) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    b->n = n_inputs;
    b->neurons = neurons;
    b->partitions = partitions;
    b->mai_count = mai_count;
    b->budget = mem_budget;
    b->spill_fd = -1;
    b->direct_fd = -1;

    if (neurons <= mem_budget / column) {
        b->chunk = neurons;
        b->n_chunks = 1;
        size_t bytes = (size_t)(neurons * column);
        /* mmap + huge pages: a wide layer's matrix is GBs written column by
         * column; with 4 KiB pages first touch and TLB misses cost more than
         * the transpose itself (measured: a fifth of a pool1 build). */
        b->mat = big_alloc(bytes);
        b->mat_bytes = bytes;
        if (b->mat)
            (void)madvise(b->mat, bytes, MADV_HUGEPAGE); /* a hint: fine if refused */
        if (!b->mat) {
            set_err(err, errlen, "out of memory for a %zu-byte activation matrix", bytes);
            goto fail;
        }
        hold(b, bytes);
        *out = b;
        return 0;
    }

    /* Spill: a chunk's columns plus the staging block fit the budget; a
     * staging block holds at least one row of a chunk. */
    b->stage_bytes = mem_budget / 8 < STAGE_MAX ? mem_budget / 8 : STAGE_MAX;
    b->stage_bytes &= ~(size_t)(DIRECT_ALIGN - 1); /* >= 128 KiB: budget >= 1 MiB */
    uint64_t fit = (mem_budget - b->stage_bytes) / column;
    if (fit == 0) {
        set_err(err, errlen,
                "one neuron's %u activations (%llu bytes) exceed the memory budget of %zu "
                "bytes",
                n_inputs, (unsigned long long)column, mem_budget);
        goto fail;
    }
    if (fit > b->stage_bytes / sizeof(float))
        fit = b->stage_bytes / sizeof(float);
    if (fit > CHUNK_MAX / column)
        fit = CHUNK_MAX / column > 1024 ? CHUNK_MAX / column : (fit < 1024 ? fit : 1024);
    if (fit >= 1024)
        fit &= ~(uint64_t)1023; /* rows of whole 4 KiB blocks */
    b->chunk = fit;
    b->n_chunks = (neurons + fit - 1) / fit;
    b->stage = big_alloc(b->stage_bytes);
    if (!b->stage) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    hold(b, b->stage_bytes);
    plan_areas(b);
    const char *dir = tmpdir && *tmpdir ? tmpdir : "/tmp";
    size_t plen = strlen(dir) + sizeof "/deepeverest-spill-XXXXXX";
    path = malloc(plen);
    if (!path) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    snprintf(path, plen, "%s/deepeverest-spill-XXXXXX", dir);
    b->spill_fd = mkstemp(path);
    if (b->spill_fd < 0) {
        set_err(err, errlen, "cannot create a spill file in %s: %s", dir, strerror(errno));
        goto fail;
    }
    b->direct_fd = open(path, O_RDWR | O_DIRECT); /* -1 where refused (tmpfs) */
    unlink(path); /* nothing is left behind, even by a crash */
    free(path);
    path = NULL;
    *out = b;
    return 0;
fail:
    free(path);
    bcore_free(b);
    return -1;
}

static int write_all(int fd, const void *buf, size_t len, off_t off)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
        off += w;
    }
    return 0;
}

/* A block goes through direct_fd when its offset, length and address allow
 * it; a filesystem that refuses (EINVAL) gets buffered I/O from then on.
 * Linux keeps the two coherent (a direct read flushes cached pages of its
 * range first), and a direct block is never part-written buffered. */
static int spill_fd_for(bcore *b, const void *buf, size_t len, off_t off)
{
    if (b->direct_fd >= 0 && len % DIRECT_ALIGN == 0 && (uint64_t)off % DIRECT_ALIGN == 0 &&
        (uintptr_t)buf % DIRECT_ALIGN == 0)
        return b->direct_fd;
    return b->spill_fd;
}

static void direct_refused(bcore *b)
{
    close(b->direct_fd);
    b->direct_fd = -1;
}

static int read_all(int fd, void *buf, size_t len, off_t off)
{
    char *p = buf;
    while (len > 0) {
        ssize_t r = pread(fd, p, len, off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = EIO; /* the file is shorter than what was written */
            return -1;
        }
        p += r;
        len -= (size_t)r;
        off += r;
    }
    return 0;
}

static int spill_write(bcore *b, const void *buf, size_t len, off_t off)
{
    int fd = spill_fd_for(b, buf, len, off);
    int r = write_all(fd, buf, len, off);
    if (r < 0 && errno == EINVAL && fd == b->direct_fd) {
        direct_refused(b);
        r = write_all(b->spill_fd, buf, len, off);
    }
    return r;
}

static int spill_read(bcore *b, void *buf, size_t len, off_t off)
{
    int fd = spill_fd_for(b, buf, len, off);
    int r = read_all(fd, buf, len, off);
    if (r < 0 && errno == EINVAL && fd == b->direct_fd) {
        direct_refused(b);
        r = read_all(b->spill_fd, buf, len, off);
    }
    return r;
}

/* dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols,
 * in tiles so that both sides stay in cache. Where dst's columns are 16-byte
 * aligned (x86-64), whole tiles go through 4 x 4 SSE transposes with
 * non-temporal stores: the matrix is written once and read back much later,
 * so loading its lines into cache before writing them is wasted traffic
 * (measured on a prefaulted pool1 matrix: 0.6-0.9 s -> 0.4 s per pass). */
static void transpose(const float *src, size_t src_stride, size_t rows, size_t cols,
                      float *dst, size_t dst_stride)
{
    enum { TR = 16, TC = 16 }; /* 16 x 16 floats: 1 KiB read, 16 lines written */
#ifdef __SSE2__
    int stream = ((uintptr_t)dst & 15u) == 0 && dst_stride % 4 == 0;
#endif
    for (size_t i0 = 0; i0 < rows; i0 += TR) {
        size_t i1 = i0 + TR < rows ? i0 + TR : rows;
        for (size_t j0 = 0; j0 < cols; j0 += TC) {
            size_t j1 = j0 + TC < cols ? j0 + TC : cols;
#ifdef __SSE2__
            if (stream && i1 - i0 == TR && j1 - j0 == TC) {
                /* column by column group, so each destination line fills
                 * in one go (write-combining buffers are few) */
                for (size_t j = j0; j < j1; j += 4)
                    for (size_t i = i0; i < i1; i += 4) {
                        __m128 r0 = _mm_loadu_ps(src + (i + 0) * src_stride + j);
                        __m128 r1 = _mm_loadu_ps(src + (i + 1) * src_stride + j);
                        __m128 r2 = _mm_loadu_ps(src + (i + 2) * src_stride + j);
                        __m128 r3 = _mm_loadu_ps(src + (i + 3) * src_stride + j);
                        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
                        _mm_stream_ps(dst + (j + 0) * dst_stride + i, r0);
                        _mm_stream_ps(dst + (j + 1) * dst_stride + i, r1);
                        _mm_stream_ps(dst + (j + 2) * dst_stride + i, r2);
                        _mm_stream_ps(dst + (j + 3) * dst_stride + i, r3);
                    }
                continue;
            }
#endif
            for (size_t j = j0; j < j1; j++)
                for (size_t i = i0; i < i1; i++)
                    dst[j * dst_stride + i] = src[i * src_stride + j];
        }
    }
#ifdef __SSE2__
    _mm_sfence(); /* the stores are visible before the caller moves on */
#endif
}

/* The helper transposes columns [h_c0, h_c1) of each posted block. */
static void *helper_main(void *arg)
{
    bcore *b = arg;
    pthread_mutex_lock(&b->hmu);
    for (;;) {
        while (!b->helper_quit && b->h_done == b->h_posted)
            pthread_cond_wait(&b->hcv, &b->hmu);
        if (b->h_done == b->h_posted)
            break;
        pthread_mutex_unlock(&b->hmu);
        transpose(b->h_src + b->h_c0, b->h_src_stride, b->h_rows, b->h_c1 - b->h_c0,
                  b->h_dst + b->h_c0 * b->h_dst_stride, b->h_dst_stride);
        pthread_mutex_lock(&b->hmu);
        b->h_done++;
        pthread_cond_broadcast(&b->hcv);
    }
    pthread_mutex_unlock(&b->hmu);
    return NULL;
}

void bcore_set_transpose_threads(bcore *b, int threads)
{
    if (b && !b->added && !b->helper_up)
        b->add_threads = threads;
}

/* transpose() of a block, the caller and (when there is one) the helper each
 * taking half of its columns. Writing the matrix is mostly first-touch page
 * faults, which run in parallel on two cores, and the model is idle between
 * batches (as the workers are while a spilled chunk is read back), so this
 * halves the transpose time. */
static void split_transpose(bcore *b, const float *src, size_t src_stride, size_t rows, size_t cols,
                            float *dst, size_t dst_stride)
{
    if (b->add_threads > 1 && !b->helper_up && cols >= 64) {
        if (pthread_mutex_init(&b->hmu, NULL) == 0) {
            if (pthread_cond_init(&b->hcv, NULL) == 0) {
                if (pthread_create(&b->helper, NULL, helper_main, b) == 0)
                    b->helper_up = 1;
                else
                    pthread_cond_destroy(&b->hcv);
            }
            if (!b->helper_up)
                pthread_mutex_destroy(&b->hmu);
        }
        if (!b->helper_up)
            b->add_threads = 1; /* no thread: transpose alone */
    }
    if (!b->helper_up || cols < 64) {
        transpose(src, src_stride, rows, cols, dst, dst_stride);
        return;
    }
    size_t half = (cols / 2 + 15) & ~(size_t)15; /* whole 16-column tiles */
    pthread_mutex_lock(&b->hmu);
    b->h_src = src;
    b->h_src_stride = src_stride;
    b->h_rows = rows;
    b->h_c0 = half;
    b->h_c1 = cols;
    b->h_dst = dst;
    b->h_dst_stride = dst_stride;
    b->h_posted++;
    pthread_cond_broadcast(&b->hcv);
    pthread_mutex_unlock(&b->hmu);
    transpose(src, src_stride, rows, half, dst, dst_stride);
    pthread_mutex_lock(&b->hmu);
    while (b->h_done != b->h_posted)
        pthread_cond_wait(&b->hcv, &b->hmu);
    pthread_mutex_unlock(&b->hmu);
}

/* Chunk c's area of the stage (area_bytes: whole 4 KiB blocks). */
static float *area_of(const bcore *b, uint64_t c)
{
    return b->stage + c * (b->area_bytes / sizeof(float));
}

/* Writes the rows area c holds. */
static int flush_area(bcore *b, uint64_t c)
{
    size_t row_bytes = (size_t)chunk_neurons(b, c) * sizeof(float);
    float *area = area_of(b, c);
    off_t off = chunk_offset(b, c) + (off_t)b->area_first[c] * (off_t)row_bytes;
    if (b->area_held[c] && spill_write(b, area, (size_t)b->area_held[c] * row_bytes, off) < 0)
        return -1;
    b->area_first[c] += b->area_held[c];
    b->area_held[c] = 0;
    return 0;
}

/* Rows [first, first + count) into each chunk's area, writing the areas
 * that fill; the last rows of the layer flush them all. */
static int add_to_areas(bcore *b, const float *rows, uint32_t first, uint32_t count)
{
    for (uint64_t c = 0; c < b->n_chunks; c++) {
        uint64_t cn = chunk_neurons(b, c), j0 = c * b->chunk;
        size_t row_bytes = (size_t)cn * sizeof(float);
        float *area = area_of(b, c);
        for (uint32_t i = 0; i < count; i++) {
            if (b->area_held[c] == b->area_rows[c] && flush_area(b, c) < 0)
                return -1;
            if (b->area_held[c] == 0)
                b->area_first[c] = first + i;
            memcpy(area + (size_t)b->area_held[c] * cn, rows + (size_t)i * b->neurons + j0, row_bytes);
            b->area_held[c]++;
        }
        if (first + count == b->n && flush_area(b, c) < 0)
            return -1;
    }
    return 0;
}

int bcore_add(bcore *b, const float *rows, uint32_t first, uint32_t count, char *err,
              size_t errlen)
{
    if (!b) {
        set_err(err, errlen, "no builder");
        return -1;
    }
    if (b->finished) {
        set_err(err, errlen, "inputs added after finish");
        return -1;
    }
    if (first != b->added) {
        set_err(err, errlen, "inputs must be added in order: expected input %u, got %u",
                b->added, first);
        return -1;
    }
    if (count > b->n - b->added) {
        set_err(err, errlen, "%u inputs from %u exceed the layer's %u inputs", count, first,
                b->n);
        return -1;
    }
    if (count == 0)
        return 0;
    if (!rows) {
        set_err(err, errlen, "no activations");
        return -1;
    }
    if (b->spill_fd < 0) {
        split_transpose(b, rows, (size_t)b->neurons, count, (size_t)b->neurons, b->mat + first, b->n);
        b->added += count;
        return 0;
    }
    if (b->area_rows) {
        if (add_to_areas(b, rows, first, count) < 0) {
            set_err(err, errlen, "writing the spill file: %s", strerror(errno));
            return -1;
        }
        b->added += count;
        return 0;
    }
    for (uint64_t c = 0; c < b->n_chunks; c++) {
        uint64_t cn = chunk_neurons(b, c), j0 = c * b->chunk;
        size_t row_bytes = (size_t)cn * sizeof(float);
        uint32_t per = (uint32_t)(b->stage_bytes / row_bytes); /* >= 1 by chunk sizing */
        for (uint32_t r = 0; r < count; r += per) {
            uint32_t k = count - r < per ? count - r : per;
            for (uint32_t i = 0; i < k; i++)
                memcpy(b->stage + (size_t)i * cn, rows + (size_t)(r + i) * b->neurons + j0,
                       row_bytes);
            off_t off = chunk_offset(b, c) + (off_t)(first + r) * (off_t)row_bytes;
            if (spill_write(b, b->stage, (size_t)k * row_bytes, off) < 0) {
                set_err(err, errlen, "writing the spill file: %s", strerror(errno));
                return -1;
            }
        }
    }
    b->added += count;
    return 0;
}

/* ---- finish ----------------------------------------------------------- */

static void stop_helper(bcore *b)
{
    if (!b->helper_up)
        return;
    pthread_mutex_lock(&b->hmu);
    b->helper_quit = 1;
    pthread_cond_broadcast(&b->hcv);
    pthread_mutex_unlock(&b->hmu);
    pthread_join(b->helper, NULL);
    pthread_cond_destroy(&b->hcv);
    pthread_mutex_destroy(&b->hmu);
    b->helper_up = 0;
}

/* In memory, neurons below `done` are emitted and their columns dead: give
 * their pages back in 32 MiB steps. The index written next into LMDB's page
 * cache then reuses them instead of new memory (on a VM, new memory costs
 * about 2 ms per MiB here), and the peak resident memory drops. */
static void release_done(bcore *b, uint64_t done)
{
    const size_t step = (size_t)32 << 20, align = (size_t)2 << 20;
    if (!b->mat)
        return;
    size_t end = (size_t)(done * (uint64_t)b->n * sizeof(float));
    if (done < b->neurons)
        end &= ~(align - 1);
    else
        end = b->mat_bytes;
    if (end < b->mat_released + (done < b->neurons ? step : 1))
        return;
    if (madvise((char *)b->mat + b->mat_released, end - b->mat_released, MADV_DONTNEED) == 0) {
        release(b, end - b->mat_released);
        b->mat_released = end;
    }
}

typedef int (*emit_fn)(uint64_t neuron, const void *blob, size_t len, void *arg);

typedef struct pool {
    bcore *b;
    const float *cols; /* columns of neurons [j0, j1) */
    uint64_t j0, j1;
    size_t blob_size, slot_stride;
    uint32_t slots;
    uint8_t *ring;
    uint64_t *ready; /* per slot: neuron + 1 once built, 0 when free */
    uint64_t next, emitted;
    int stop, failed;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
} pool;

typedef struct worker {
    pool *p;
    npi_scratch *scratch;
    pthread_t tid;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    pool *p = w->p;
    bcore *b = p->b;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->next < p->j1 && p->next >= p->emitted + p->slots)
            pthread_cond_wait(&p->work, &p->mu);
        if (p->stop || p->next >= p->j1)
            break;
        uint64_t j = p->next++;
        uint32_t slot = (uint32_t)(j % p->slots);
        pthread_mutex_unlock(&p->mu);
        int rc = npi_build(p->cols + (size_t)(j - p->j0) * b->n, b->n, b->partitions,
                           b->mai_count, w->scratch, p->ring + slot * p->slot_stride);
        pthread_mutex_lock(&p->mu);
        if (rc != 0) {
            p->failed = p->stop = 1;
            pthread_cond_broadcast(&p->work);
        } else {
            p->ready[slot] = j + 1;
        }
        pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Builds and emits neurons [j0, j1) from their columns. 0, -1 on a build
 * failure, 1 when emit() stopped it. */
static int run_chunk(pool *p, worker *w, int nw, const float *cols, uint64_t j0, uint64_t j1,
                     emit_fn emit, void *arg, char *err, size_t errlen)
{
    bcore *b = p->b;
    if (nw == 0) {
        for (uint64_t j = j0; j < j1; j++) {
            if (npi_build(cols + (size_t)(j - j0) * b->n, b->n, b->partitions, b->mai_count,
                          w[0].scratch, p->ring) != 0) {
                set_err(err, errlen, "building the index of neuron %llu failed",
                        (unsigned long long)j);
                return -1;
            }
            if (emit(j, p->ring, p->blob_size, arg) != 0)
                return 1;
            if (cols == b->mat)
                release_done(b, j + 1);
        }
        return 0;
    }
    p->cols = cols;
    p->j0 = p->next = p->emitted = j0;
    p->j1 = j1;
    p->stop = p->failed = 0;
    memset(p->ready, 0, p->slots * sizeof *p->ready);
    int started = 0, rc = 0;
    for (; started < nw; started++) {
        w[started].p = p;
        if (pthread_create(&w[started].tid, NULL, worker_main, &w[started]) != 0)
            break;
    }
    if (started == 0) {
        set_err(err, errlen, "cannot start a worker thread");
        return -1;
    }
    for (uint64_t j = j0; j < j1; j++) {
        uint32_t slot = (uint32_t)(j % p->slots);
        pthread_mutex_lock(&p->mu);
        while (!p->stop && p->ready[slot] != j + 1)
            pthread_cond_wait(&p->done, &p->mu);
        int stop = p->stop;
        pthread_mutex_unlock(&p->mu);
        if (stop)
            break;
        /* the slot is ours until `emitted` moves past it */
        int erc = emit(j, p->ring + slot * p->slot_stride, p->blob_size, arg);
        pthread_mutex_lock(&p->mu);
        if (erc != 0) {
            p->stop = 1;
            rc = 1;
        } else {
            p->ready[slot] = 0;
            p->emitted = j + 1;
        }
        pthread_cond_broadcast(&p->work);
        pthread_mutex_unlock(&p->mu);
        if (erc != 0)
            break;
        if (cols == b->mat)
            release_done(b, j + 1); /* workers only read columns >= emitted */
    }
    for (int i = 0; i < started; i++)
        pthread_join(w[i].tid, NULL);
    if (rc == 0 && p->failed) {
        set_err(err, errlen, "building a neuron's index failed");
        rc = -1;
    }
    return rc;
}

/* Reads chunk c back from the spill file into neuron-major columns. */
static int load_chunk(bcore *b, uint64_t c, float *cols, char *err, size_t errlen)
{
    uint64_t cn = chunk_neurons(b, c);
    size_t row_bytes = (size_t)cn * sizeof(float);
    uint32_t per = (uint32_t)(b->stage_bytes / row_bytes);
    for (uint32_t r = 0; r < b->n; r += per) {
        uint32_t k = b->n - r < per ? b->n - r : per;
        off_t off = chunk_offset(b, c) + (off_t)r * (off_t)row_bytes;
        if (spill_read(b, b->stage, (size_t)k * row_bytes, off) < 0) {
            set_err(err, errlen, "reading the spill file: %s", strerror(errno));
            return -1;
        }
        split_transpose(b, b->stage, (size_t)cn, k, (size_t)cn, cols + r, b->n);
    }
    return 0;
}

/* Raw mode: every neuron's column, in neuron order. */
static int finish_raw(bcore *b, emit_fn emit, void *arg, char *err, size_t errlen)
{
    size_t col_bytes = (size_t)b->n * sizeof(float);
    if (b->spill_fd < 0) {
        for (uint64_t j = 0; j < b->neurons; j++) {
            if (emit(j, b->mat + (size_t)j * b->n, col_bytes, arg) != 0) {
                set_err(err, errlen, "stopped");
                return -1;
            }
            release_done(b, j + 1);
        }
        return 0;
    }
    size_t cols_bytes = (size_t)b->chunk * col_bytes;
    float *cols = big_alloc(cols_bytes);
    if (!cols) {
        set_err(err, errlen, "out of memory for a %zu-byte chunk", cols_bytes);
        return -1;
    }
    hold(b, cols_bytes);
    int rc = 0;
    for (uint64_t c = 0; c < b->n_chunks && rc == 0; c++) {
        if (load_chunk(b, c, cols, err, errlen) < 0) {
            rc = -1;
            break;
        }
        for (uint64_t j = c * b->chunk, k = 0; k < chunk_neurons(b, c); j++, k++)
            if (emit(j, cols + (size_t)k * b->n, col_bytes, arg) != 0) {
                set_err(err, errlen, "stopped");
                rc = -1;
                break;
            }
    }
    big_free(cols, cols_bytes);
    release(b, cols_bytes);
    return rc;
}

int bcore_finish(bcore *b, int threads,
                 int (*emit)(uint64_t neuron, const void *blob, size_t len, void *arg),
                 void *arg, char *err, size_t errlen)
{
    if (!b || !emit) {
        set_err(err, errlen, "no builder or no emit function");
        return -1;
    }
    if (b->finished) {
        set_err(err, errlen, "already finished");
        return -1;
    }
    if (b->added != b->n) {
        set_err(err, errlen, "only %u of %u inputs were added", b->added, b->n);
        return -1;
    }
    b->finished = 1;
    if (b->raw)
        return finish_raw(b, emit, arg, err, errlen);
    int nw = threads > 1 ? threads : 0; /* 0: build on the calling thread */
    int nscratch = nw ? nw : 1, made = 0, rc = -1, mu_ok = 0, ring_held = 0;
    float *cols = NULL;
    size_t cols_bytes = 0, ring_bytes = 0;
    pool p;
    memset(&p, 0, sizeof p);
    p.b = b;
    p.blob_size = npi_blob_size(b->n, b->partitions, b->mai_count);
    p.slot_stride = (p.blob_size + 63) & ~(size_t)63; /* no false sharing */
    p.slots = nw ? 2u * (uint32_t)nw : 1u;
    /* Workers keep building while emit() waits on a commit's disk sync: as
     * many slots as fit RING_BYTES, at least two per worker. */
    if (nw && RING_BYTES / p.slot_stride > p.slots)
        p.slots = (uint32_t)(RING_BYTES / p.slot_stride < 1024 ? RING_BYTES / p.slot_stride : 1024);
    worker *w = calloc((size_t)nscratch, sizeof *w);
    p.ready = calloc(p.slots, sizeof *p.ready);
    ring_bytes = p.slots * p.slot_stride;
    p.ring = aligned_alloc(64, ring_bytes);
    if (!w || !p.ready || !p.ring) {
        set_err(err, errlen, "out of memory");
        goto done;
    }
    hold(b, ring_bytes);
    ring_held = 1;
    for (; made < nscratch; made++) {
        w[made].scratch = npi_scratch_new(b->n);
        if (!w[made].scratch) {
            set_err(err, errlen, "out of memory for index scratch");
            goto done;
        }
    }
    if (pthread_mutex_init(&p.mu, NULL) != 0) {
        set_err(err, errlen, "cannot create a mutex");
        goto done;
    }
    if (pthread_cond_init(&p.work, NULL) != 0) {
        pthread_mutex_destroy(&p.mu);
        set_err(err, errlen, "cannot create a condition variable");
        goto done;
    }
    if (pthread_cond_init(&p.done, NULL) != 0) {
        pthread_cond_destroy(&p.work);
        pthread_mutex_destroy(&p.mu);
        set_err(err, errlen, "cannot create a condition variable");
        goto done;
    }
    mu_ok = 1;

    if (b->spill_fd < 0) {
        int r = run_chunk(&p, w, nw, b->mat, 0, b->neurons, emit, arg, err, errlen);
        rc = r == 0 ? 0 : -1;
        if (r == 1)
            set_err(err, errlen, "stopped");
        goto done;
    }
    cols_bytes = (size_t)(b->chunk * b->n * sizeof(float));
    cols = big_alloc(cols_bytes);
    if (!cols) {
        set_err(err, errlen, "out of memory for a %zu-byte chunk", cols_bytes);
        goto done;
    }
    hold(b, cols_bytes);
    for (uint64_t c = 0; c < b->n_chunks; c++) {
        if (load_chunk(b, c, cols, err, errlen) < 0)
            goto done;
        uint64_t j0 = c * b->chunk;
        int r = run_chunk(&p, w, nw, cols, j0, j0 + chunk_neurons(b, c), emit, arg, err,
                          errlen);
        if (r == 1)
            set_err(err, errlen, "stopped");
        if (r != 0)
            goto done;
    }
    rc = 0;
done:
    if (mu_ok) {
        pthread_cond_destroy(&p.done);
        pthread_cond_destroy(&p.work);
        pthread_mutex_destroy(&p.mu);
    }
    if (cols) {
        big_free(cols, cols_bytes);
        release(b, cols_bytes);
    }
    if (ring_held)
        release(b, ring_bytes);
    free(p.ring);
    free(p.ready);
    if (w)
        for (int i = 0; i < made; i++)
            npi_scratch_free(w[i].scratch);
    free(w);
    return rc;
}

void bcore_set_raw(bcore *b, int raw)
{
    if (b && !b->finished)
        b->raw = raw != 0;
}

int bcore_spilled(const bcore *b)
{
    return b && b->spill_fd >= 0;
}

int bcore_spill_direct(const bcore *b)
{
    return b && b->spill_fd >= 0 && b->direct_fd >= 0;
}

size_t bcore_peak_bytes(const bcore *b)
{
    return b ? b->peak : 0;
}

void bcore_free(bcore *b)
{
    if (!b)
        return;
    stop_helper(b);
    if (b->spill_fd >= 0)
        close(b->spill_fd);
    if (b->direct_fd >= 0)
        close(b->direct_fd);
    big_free(b->mat, b->mat_bytes);
    big_free(b->stage, b->stage_bytes);
    free(b->area_rows);
    free(b->area_held);
    free(b->area_first);
    free(b);
}

void bcore_plan_budgets(size_t total, int nlayers, const uint64_t *layer_bytes, size_t *budgets)
{
    const size_t reserve = (size_t)16 << 20;
    size_t remaining = total;
    uint64_t spilled_bytes = 0;
    int done[64] = {0}; /* 1: spills, 2: in memory */
    if (nlayers > 64)
        nlayers = 64;
    int order_left = nlayers;
    /* largest first: selection, the layer count is small */
    for (int step = 0; step < nlayers; step++) {
        int best = -1;
        for (int l = 0; l < nlayers; l++)
            if (!done[l] && (best < 0 || layer_bytes[l] > layer_bytes[best]))
                best = l;
        /* best >= 0: `step` layers are done, so one of the nlayers is not */
        done[best] = 1; // cppcheck-suppress negativeIndex
        order_left--;
        uint64_t keep = (uint64_t)reserve * (uint64_t)order_left;
        if (layer_bytes[best] + keep <= remaining) {
            budgets[best] = (size_t)layer_bytes[best];
            remaining -= (size_t)layer_bytes[best];
            done[best] = 2; /* in memory */
        } else {
            spilled_bytes += layer_bytes[best];
        }
    }
    for (int l = 0; l < nlayers; l++) {
        if (done[l] == 2) {
            if (budgets[l] < MIN_BUDGET)
                budgets[l] = MIN_BUDGET;
            continue;
        }
        size_t b = (size_t)((double)remaining * (double)layer_bytes[l] / (double)spilled_bytes);
        budgets[l] = b < MIN_BUDGET ? MIN_BUDGET : b;
    }
}
