/* cache.c -- see cache.h. Chained hash table + doubly linked LRU list under
 * one mutex; vectors are copied outside the lock. */
#include "cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    cache_key key;
    uint32_t nbytes;              /* a byte blob's length (cache_put_bytes), else 0 */
    struct entry *hnext;          /* hash chain */
    struct entry *prev, *next;    /* LRU: head = most recent */
    size_t len;
    float vec[];
} entry;

struct cache {
    pthread_mutex_t mu;
    entry **buckets;
    size_t nbuckets;              /* power of two */
    entry *head, *tail;
    size_t bytes, max_bytes;
    cache_stats st;
};

static size_t entry_bytes(size_t len) { return sizeof(entry) + len * sizeof(float); }

static uint64_t hash_key(const cache_key *k)
{
    uint64_t h = ((uint64_t)k->model << 32 | k->dataset) * 0x9E3779B97F4A7C15ull;
    h ^= ((uint64_t)k->layer << 32 | k->input) * 0xC2B2AE3D27D4EB4Full;
    h ^= (uint64_t)k->block * 0xFF51AFD7ED558CCDull;
    return h ^ (h >> 31);
}

static int key_eq(const cache_key *a, const cache_key *b)
{
    return a->model == b->model && a->dataset == b->dataset && a->layer == b->layer && a->block == b->block &&
           a->input == b->input;
}

cache *cache_new(size_t max_bytes)
{
    cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->nbuckets = 1024;
    c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    c->max_bytes = max_bytes;
    c->st.max_bytes = max_bytes;
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void cache_free(cache *c)
{
    if (!c) return;
    for (entry *e = c->head; e;) {
        entry *n = e->next;
        free(e);
        e = n;
    }
    pthread_mutex_destroy(&c->mu);
    free(c->buckets);
    free(c);
}

static entry **find_slot(cache *c, const cache_key *k)
{
    entry **pp = &c->buckets[hash_key(k) & (c->nbuckets - 1)];
    while (*pp && !key_eq(&(*pp)->key, k)) pp = &(*pp)->hnext;
    return pp;
}

static void lru_unlink(cache *c, entry *e)
{
    if (e->prev) e->prev->next = e->next;
    else c->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(cache *c, entry *e)
{
    e->prev = NULL;
    e->next = c->head;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

/* Removes e from table and list; the caller frees it (outside the lock). */
static void remove_entry(cache *c, entry *e)
{
    entry **pp = find_slot(c, &e->key);
    if (*pp == e) *pp = e->hnext;
    lru_unlink(c, e);
    c->bytes -= entry_bytes(e->len);
    c->st.entries--;
}

static void grow(cache *c)
{
    size_t nb = c->nbuckets * 2;
    entry **b = calloc(nb, sizeof *b);
    if (!b) return; /* longer chains, still correct */
    for (size_t i = 0; i < c->nbuckets; i++)
        for (entry *e = c->buckets[i]; e;) {
            entry *n = e->hnext;
            size_t h = hash_key(&e->key) & (nb - 1);
            e->hnext = b[h];
            b[h] = e;
            e = n;
        }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = nb;
}

int cache_get(cache *c, const cache_key *k, const uint32_t *neurons, size_t m, float *out)
{
    pthread_mutex_lock(&c->mu);
    entry *e = *find_slot(c, k);
    if (!e) {
        c->st.misses++;
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
    if (neurons) {
        for (size_t j = 0; j < m; j++) out[j] = neurons[j] < e->len ? e->vec[neurons[j]] : 0.0f;
    } else {
        memcpy(out, e->vec, (m < e->len ? m : e->len) * sizeof(float));
    }
    lru_unlink(c, e);
    lru_push_front(c, e);
    c->st.hits++;
    pthread_mutex_unlock(&c->mu);
    return 1;
}

/* Inserts len floats' worth of src (nbytes of them, for a blob). */
static void put(cache *c, const cache_key *k, const void *src, size_t len, uint32_t nbytes)
{
    size_t need = entry_bytes(len);
    if (need > c->max_bytes) return;
    entry *e = malloc(need);
    if (!e) return;
    e->key = *k;
    e->len = len;
    e->nbytes = nbytes;
    e->hnext = e->prev = e->next = NULL;
    memcpy(e->vec, src, nbytes ? nbytes : len * sizeof(float));
    entry *victims = NULL; /* freed after the lock is released */
    pthread_mutex_lock(&c->mu);
    entry **pp = find_slot(c, k);
    if (*pp) {
        entry *old = *pp;
        remove_entry(c, old);
        old->next = victims;
        victims = old;
    }
    while (c->bytes + need > c->max_bytes && c->tail) {
        entry *v = c->tail;
        remove_entry(c, v);
        v->next = victims;
        victims = v;
        c->st.evictions++;
    }
    pp = find_slot(c, k);
    e->hnext = *pp;
    *pp = e;
    lru_push_front(c, e);
    c->bytes += need;
    c->st.entries++;
    c->st.insertions++;
    if (c->st.entries > c->nbuckets) grow(c);
    pthread_mutex_unlock(&c->mu);
    while (victims) {
        entry *n = victims->next;
        free(victims);
        victims = n;
    }
}

void cache_put(cache *c, const cache_key *k, const float *vec, size_t len) { put(c, k, vec, len, 0); }

void cache_put_bytes(cache *c, const cache_key *k, const void *p, size_t len)
{
    if (len == 0 || len > UINT32_MAX) return;
    put(c, k, p, (len + sizeof(float) - 1) / sizeof(float), (uint32_t)len);
}

int cache_get_bytes(cache *c, const cache_key *k, unsigned char **out, size_t *len)
{
    pthread_mutex_lock(&c->mu);
    entry *e = *find_slot(c, k);
    unsigned char *b = e && e->nbytes ? malloc(e->nbytes) : NULL;
    if (b) {
        memcpy(b, e->vec, e->nbytes);
        *len = e->nbytes;
        lru_unlink(c, e);
        lru_push_front(c, e);
    }
    pthread_mutex_unlock(&c->mu);
    *out = b;
    return b != NULL;
}

void cache_get_stats(cache *c, cache_stats *out)
{
    pthread_mutex_lock(&c->mu);
    *out = c->st;
    out->bytes = c->bytes;
    pthread_mutex_unlock(&c->mu);
}
