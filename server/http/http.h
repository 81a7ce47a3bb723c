/* http.h -- libmicrohttpd front: routing, capped body buffers, replies.
 *
 * Errors take one form on the wire, {"error":{"code","message"}}, from a
 * proto_err (jspec.h) that every layer below fills; the message is made
 * valid UTF-8 here, whatever bytes a client put into the names it echoes.
 *
 * One thread per connection (queries and imports block for seconds; a pool of
 * event threads would stall behind them). A request is routed on its first
 * callback; a JSON body is buffered up to cfg.max_body_mb (then 413), a
 * streaming route (raw dataset upload) gets the body chunk by chunk instead.
 * Every handler answers through http_reply_*; a handler that returns without
 * replying gets a 500 (never a hung connection).
 */
#ifndef DE_HTTP_H
#define DE_HTTP_H

#include <jansson.h>
#include <stddef.h>

#include "app.h"
#include "jspec.h"

typedef struct http_req http_req;

#define HTTP_MAX_PARAMS 4

struct http_req {
    app *app;
    struct MHD_Connection *conn;
    const char *method;
    const char *url;
    const char *params[HTTP_MAX_PARAMS];   /* the '*' segments of the route, decoded */
    int nparams;
    char *body;                            /* NUL-terminated; NULL if none */
    size_t body_len;
    int replied;
    int status;
    /* streaming uploads: the route's state */
    void *stream;
};

/* A route's handler; `stream` routes get on_chunk for every piece of body. */
typedef void (*http_handler)(http_req *r);
typedef int (*http_chunk_fn)(http_req *r, const char *data, size_t len);

/* Query-string argument, or NULL. Valid during the request. */
const char *http_arg(http_req *r, const char *name);
/* The query string ("?a=1&b=x%20y", or "" when none) rebuilt from the
 * request's arguments, those named in drop (NULL-terminated) left out;
 * -1 when it does not fit in cap. */
int http_query_string(http_req *r, const char *const *drop, char *buf, size_t cap);
/* Request header, or NULL. Valid during the request. */
const char *http_header(http_req *r, const char *name);

void http_reply_json(http_req *r, int status, json_t *body);      /* steals body */
void http_reply_err(http_req *r, const proto_err *e);
void http_reply_error(http_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void http_reply_bytes(http_req *r, int status, const char *content_type, void *data, size_t len,
                      int take);                                    /* take: free data after */

/* Starts the daemon on cfg.listen_host:listen_port; 0 or -1 with err. */
int http_start(app *a, char *err, size_t errlen);
/* Stops accepting, waits up to drain_s for in-flight requests, stops. */
void http_stop(app *a, double drain_s);
/* The port actually bound (for --listen 127.0.0.1:0). */
int http_port(void);

/* Calls fn for every route of the API (of the coordinator's table when
 * coordinator), in table order ("GET", "/v1/models/ *" with '*' for a path
 * parameter): deepeverestd [--coordinator] --routes. */
void http_routes_each(int coordinator, void (*fn)(const char *method, const char *pattern, void *arg), void *arg);

#endif
