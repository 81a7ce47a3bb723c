/* client.h -- a small blocking HTTP/1.1 client for talking to shards.
 *
 * One connection per request (Connection: close): shards are daemons on the
 * same network, a connect costs ~0.1 ms, and nothing is pooled that a dead
 * shard could leave half-read. Every call is bounded in time: connecting
 * (getaddrinfo, then a non-blocking connect) and every read and write poll
 * against one deadline, so a shard that hangs costs at most timeout_s.
 * Responses may come with Content-Length, chunked, or until close.
 *
 * Lifetimes: a client_resp's body is malloc'd (client_resp_free); a
 * client_stream lives from client_stream_open to client_stream_finish or
 * client_stream_abort.
 */
#ifndef DE_CLIENT_H
#define DE_CLIENT_H

#include <stddef.h>

typedef struct client_resp {
    int status;
    char *body;                  /* NUL-terminated; len bytes before the NUL */
    size_t len;
    char content_type[128];
} client_resp;

void client_resp_free(client_resp *r);

/* base: "http://host:port" (a trailing slash is fine). target: path and
 * query. headers: "Name: value" lines, NULL-terminated (or NULL). A body of
 * len bytes goes with Content-Length. Returns 0 with *out filled (any HTTP
 * status), or -1 with err when the shard could not be reached or answered
 * nothing readable in time. */
int client_request(const char *base, const char *method, const char *target, const char *const *headers,
                   const void *body, size_t len, double timeout_s, client_resp *out, char *err, size_t errlen);

/* A request whose body is sent as it comes (chunked). */
typedef struct client_stream client_stream;
int client_stream_open(const char *base, const char *method, const char *target, const char *const *headers,
                       double timeout_s, client_stream **out, char *err, size_t errlen);
int client_stream_write(client_stream *s, const void *data, size_t len, char *err, size_t errlen);
/* Ends the body and reads the response; frees s. */
int client_stream_finish(client_stream *s, client_resp *out, char *err, size_t errlen);
void client_stream_abort(client_stream *s);

#endif
