/* route.c -- see route.h. */
#include "route.h"

#include <string.h>

/* Splits s in place on '/', skipping empty segments; -1 if more than max. */
static int split(char *s, char **segs, int max)
{
    int n = 0;
    while (*s) {
        while (*s == '/') *s++ = '\0';
        if (!*s) break;
        if (n == max) return -1;
        segs[n++] = s;
        while (*s && *s != '/') s++;
    }
    return n;
}

int route_find(const void *table, size_t n, size_t stride, const char *method, const char *url, char *buf,
               size_t buflen, route_hit *hit, int *method_mismatch)
{
    char *segs[ROUTE_MAX_SEGS];
    *method_mismatch = 0;
    size_t ulen = strlen(url);
    if (ulen >= buflen) return -1;
    memcpy(buf, url, ulen + 1);
    int ns = split(buf, segs, ROUTE_MAX_SEGS);
    if (ns < 0) return -1;
    for (size_t i = 0; i < n; i++) {
        const route_spec *r = (const route_spec *)((const char *)table + i * stride);
        const char *p = r->pattern;
        int k = 0, np = 0, ok = 1;
        while (*p && ok) {
            while (*p == '/') p++;
            if (!*p) break;
            const char *end = strchr(p, '/');
            size_t len = end ? (size_t)(end - p) : strlen(p);
            if (k >= ns) {
                ok = 0;
            } else if (len == 1 && *p == '*') {
                if (np < ROUTE_MAX_PARAMS) hit->params[np++] = segs[k];
                else ok = 0;
            } else if (strlen(segs[k]) != len || memcmp(segs[k], p, len) != 0) {
                ok = 0;
            }
            k++;
            p += len;
        }
        if (!ok || k != ns) continue;
        if (strcmp(r->method, method) != 0 && !(strcmp(method, "HEAD") == 0 && strcmp(r->method, "GET") == 0)) {
            *method_mismatch = 1;
            continue;
        }
        hit->nparams = np;
        return (int)i;
    }
    return -1;
}
