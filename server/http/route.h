/* route.h -- matching a request line against a table of route patterns.
 *
 * A pattern is '/'-separated segments where '*' matches exactly one
 * non-empty segment (as in "/v1/datasets/ * /inputs"). Empty segments in the URL
 * ("//") are skipped, a trailing '/' is ignored. Pure C, no HTTP library:
 * fuzzed directly (tests/fuzz/fuzz_route.c).
 */
#ifndef DE_ROUTE_H
#define DE_ROUTE_H

#include <stddef.h>

#define ROUTE_MAX_PARAMS 4
#define ROUTE_MAX_SEGS 16

typedef struct route_spec {
    const char *method;
    const char *pattern;
} route_spec;

typedef struct route_hit {
    int nparams;
    const char *params[ROUTE_MAX_PARAMS];   /* point into the caller's buf */
} route_hit;

/* Finds the first entry of `table` (n entries of `stride` bytes, each
 * starting with a route_spec) matching method and url. buf (buflen bytes)
 * holds the split copy of the url that hit->params point into. Returns the
 * entry's index, or -1; *method_mismatch is set when the path matched an
 * entry of another method (405 rather than 404). HEAD matches GET. */
int route_find(const void *table, size_t n, size_t stride, const char *method, const char *url, char *buf,
               size_t buflen, route_hit *hit, int *method_mismatch);

#endif
