/* coord.h -- the coordinator: one API in front of shards (README.md,
 * "Scale-out").
 *
 * A coordinator holds no data. Every dataset is split by input id over the
 * shards, in --shards order: shard i of n holds inputs [i*N/n, (i+1)*N/n)
 * with their global ids (a slice, imported with "slice"); models and indexes
 * live on every shard. Requests fan out (one thread per shard), answers are
 * merged so that a client sees one daemon over the whole dataset, bit for
 * bit: top-k and kNN merge the shards' exact answers by (score, id), sent
 * with 17 significant digits so the merge orders the very doubles a single
 * daemon would.
 *
 * Consistency without state: what the coordinator lists is what every
 * shard holds (a model, dataset or index partly created is invisible); a
 * mutation that fails on one shard is undone on the others; a job has one id
 * on every shard (chosen above every shard's next id, "job_id"); an index is
 * shard 0's id, matched on the others by model, dataset, layer and kind. A
 * shard that does not answer within --shard-timeout-s makes the request fail
 * with 503 shard_unavailable naming it.
 *
 * Lifetimes: the coord lives as long as the process (coord_new at start).
 */
#ifndef DE_COORD_H
#define DE_COORD_H

#include <jansson.h>
#include <stdatomic.h>
#include <stddef.h>

#include "client.h"
#include "jspec.h"

#define COORD_MAX_SHARDS 256

typedef struct coord_shard {
    char url[256];
    atomic_ullong requests, failures, latency_us; /* /metrics: calls, unreachable, time */
} coord_shard;

typedef struct coord {
    int n;
    coord_shard shards[COORD_MAX_SHARDS];
    double timeout_s;            /* a call's bound (queries may build inline) */
    const char *token;           /* presented to the shards, or NULL */
    int threshold_merge;         /* --merge threshold: shard 0 first, the others told its k-th
                                    best (they may stop earlier; TPUT's idea); else all at once */
} coord;

/* "http://a:1,http://b:2" -> *out; -1 with err on a bad list. */
int coord_new(const char *list, double timeout_s, const char *token, coord **out, char *err, size_t errlen);
void coord_free(coord *c);

/* One call to one shard. */
typedef struct coord_call {
    const char *method;
    char target[2048];           /* path and query */
    const char *body;            /* or NULL */
    size_t len;
    char *owned;                 /* a body malloc'd for this call (freed with it) */
    int skip;                    /* not sent */
    int precise;                 /* ask for 17 significant digits (answers the coordinator merges by
                                    value; a relayed answer keeps a daemon's 9) */
    double timeout_s;            /* 0 = the coordinator's */
    /* results */
    int reached;                 /* an HTTP answer came */
    client_resp resp;
    char err[256];
    double ms;
} coord_call;

/* Runs calls[i] on shard i, i < c->n, all at once; returns when all ended. */
void coord_run(coord *c, coord_call *calls);
/* Frees the answers and owned bodies. */
void coord_calls_free(coord *c, coord_call *calls);

/* The same call for every shard. */
void coord_calls_set(coord *c, coord_call *calls, const char *method, const char *target, const char *body,
                     size_t len);

/* The first failure in shard order: 503 shard_unavailable for a shard that
 * did not answer, else the first non-2xx answer as the shard gave it
 * (status and error), with `ok_also` (e.g. 404) counted as success. 0 when
 * every sent call succeeded. */
int coord_first_failure(coord *c, const coord_call *calls, int ok_also, proto_err *e);

/* Parses an answer's JSON (NULL when it is none). */
json_t *coord_json(const coord_call *call);

#endif
