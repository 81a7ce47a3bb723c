/* cache.h -- the one LRU cache of recomputed activations, shared by every
 * client and query (the inter-query cache).
 *
 * An entry is one block of an input's activation vector at one layer (the
 * source cuts wide layers into blocks of neurons, so a query caches what
 * its group touches, not a whole 3 MiB layer), keyed by (model, dataset,
 * layer, block, input). Model and dataset are the generation ids
 * the catalog gives each registration, so a re-registered model or dataset
 * never meets stale entries: they age out. Bounded in bytes (entries plus
 * bookkeeping); a vector larger than the bound is not cached. Thread-safe:
 * one mutex, held only for the hash lookup, the LRU splice and a memcpy.
 */
#ifndef DE_CACHE_H
#define DE_CACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct cache cache;

typedef struct cache_key {
    uint32_t model, dataset, layer, input, block;
} cache_key;

typedef struct cache_stats {
    uint64_t hits, misses, insertions, evictions;
    uint64_t entries, bytes, max_bytes;
} cache_stats;

cache *cache_new(size_t max_bytes);
void cache_free(cache *c);

/* On a hit copies vec[neurons[j]] into out[j] for j < m (or the whole vector
 * when neurons is NULL, m = its length), moves the entry to the front and
 * returns 1; returns 0 on a miss. */
int cache_get(cache *c, const cache_key *k, const uint32_t *neurons, size_t m, float *out);

/* Inserts a copy of vec[len] (replacing an entry of the same key), evicting
 * least recently used entries to stay within the bound. */
void cache_put(cache *c, const cache_key *k, const float *vec, size_t len);

/* Byte blobs (a rendered thumbnail) under keys of their own -- a layer no
 * model has -- within the same bound and LRU. cache_get_bytes gives a
 * malloc'd copy the caller frees and returns 1, or 0 on a miss (or when the
 * copy cannot be allocated). Hits and misses in cache_stats count activation
 * lookups only; entries and bytes count blobs too. */
void cache_put_bytes(cache *c, const cache_key *k, const void *p, size_t len);
int cache_get_bytes(cache *c, const cache_key *k, unsigned char **out, size_t *len);

void cache_get_stats(cache *c, cache_stats *out);

#endif
