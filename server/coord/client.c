/* client.c -- see client.h. */
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#define MAX_RESPONSE ((size_t)1 << 30)

struct client_stream {
    int fd;
    double deadline;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

void client_resp_free(client_resp *r)
{
    free(r->body);
    r->body = NULL;
    r->len = 0;
}

/* Waits until fd is ready for events or the deadline passes. */
static int wait_fd(int fd, short events, double deadline, char *err, size_t errlen)
{
    for (;;) {
        double left = deadline - now_s();
        if (left <= 0) return fail(err, errlen, "timed out");
        struct pollfd p = {fd, events, 0};
        int rc = poll(&p, 1, (int)(left * 1000) + 1);
        if (rc > 0) return 0;
        if (rc < 0 && errno != EINTR) return fail(err, errlen, "poll: %s", strerror(errno));
    }
}

/* "http://host:port[/...]" -> host, port. */
static int parse_base(const char *base, char *host, size_t hl, char *port, size_t pl)
{
    const char *p = strncmp(base, "http://", 7) == 0 ? base + 7 : base;
    const char *end = p + strcspn(p, "/");
    const char *colon = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == ':') colon = q;
    const char *hend = colon ? colon : end;
    if (hend == p || (size_t)(hend - p) >= hl) return -1;
    memcpy(host, p, (size_t)(hend - p));
    host[hend - p] = '\0';
    if (colon) {
        if ((size_t)(end - colon - 1) >= pl || end == colon + 1) return -1;
        memcpy(port, colon + 1, (size_t)(end - colon - 1));
        port[end - colon - 1] = '\0';
    } else {
        snprintf(port, pl, "80");
    }
    return 0;
}

static int connect_to(const char *base, double deadline, char *err, size_t errlen)
{
    char host[256], port[16];
    if (parse_base(base, host, sizeof host, port, sizeof port) != 0) return fail(err, errlen, "bad shard URL");
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int grc = getaddrinfo(host, port, &hints, &res);
    if (grc != 0) return fail(err, errlen, "cannot resolve %s: %s", host, gai_strerror(grc));
    int fd = -1;
    char why[160] = "no address";
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) continue;
        int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            if (wait_fd(fd, POLLOUT, deadline, why, sizeof why) == 0) {
                int soerr = 0;
                socklen_t sl = sizeof soerr;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
                rc = soerr ? -1 : 0;
                if (soerr) snprintf(why, sizeof why, "%s", strerror(soerr));
            }
        } else if (rc != 0) {
            snprintf(why, sizeof why, "%s", strerror(errno));
        }
        if (rc == 0) break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) return fail(err, errlen, "cannot connect: %s", why);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int send_all(int fd, const void *data, size_t len, double deadline, char *err, size_t errlen)
{
    const char *p = data;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            if (wait_fd(fd, POLLOUT, deadline, err, errlen) != 0) return -1;
        } else {
            return fail(err, errlen, "send: %s", n < 0 ? strerror(errno) : "closed");
        }
    }
    return 0;
}

static int send_head(int fd, const char *base, const char *method, const char *target, const char *const *headers,
                     const char *framing, double deadline, char *err, size_t errlen)
{
    char host[256], port[16];
    parse_base(base, host, sizeof host, port, sizeof port);
    char *buf = NULL;
    size_t blen = 0;
    FILE *f = open_memstream(&buf, &blen);
    if (!f) return fail(err, errlen, "out of memory");
    fprintf(f, "%s %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n%s", method, target, host, port, framing);
    for (size_t i = 0; headers && headers[i]; i++) fprintf(f, "%s\r\n", headers[i]);
    fputs("\r\n", f);
    fclose(f);
    int rc = send_all(fd, buf, blen, deadline, err, errlen);
    free(buf);
    return rc;
}

/* Reads everything until the peer closes (the request said close). */
static int read_all(int fd, double deadline, char **out, size_t *outlen, char *err, size_t errlen)
{
    size_t cap = 16384, len = 0;
    char *b = malloc(cap);
    if (!b) return fail(err, errlen, "out of memory");
    for (;;) {
        if (len + 4096 > cap) {
            if (cap >= MAX_RESPONSE) {
                free(b);
                return fail(err, errlen, "response over %zu bytes", MAX_RESPONSE);
            }
            char *nb = realloc(b, cap * 2);
            if (!nb) {
                free(b);
                return fail(err, errlen, "out of memory");
            }
            b = nb;
            cap *= 2;
        }
        ssize_t n = recv(fd, b + len, cap - len - 1, 0);
        if (n > 0) {
            len += (size_t)n;
        } else if (n == 0) {
            break;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            if (wait_fd(fd, POLLIN, deadline, err, errlen) != 0) {
                free(b);
                return -1;
            }
        } else {
            free(b);
            return fail(err, errlen, "recv: %s", strerror(errno));
        }
    }
    b[len] = '\0';
    *out = b;
    *outlen = len;
    return 0;
}

/* Decodes a chunked body in place; -1 when malformed or cut short. */
static int dechunk(char *b, size_t len, size_t *outlen)
{
    size_t r = 0, w = 0;
    for (;;) {
        char *end;
        if (r >= len) return -1;
        unsigned long long n = strtoull(b + r, &end, 16);
        char *nl = memchr(b + r, '\n', len - r);
        if (!nl || end == b + r) return -1;
        r = (size_t)(nl - b) + 1;
        if (n == 0) break;
        if (n > len - r) return -1;
        memmove(b + w, b + r, (size_t)n);
        w += (size_t)n;
        r += (size_t)n;
        if (r + 2 <= len && b[r] == '\r') r++;
        if (r < len && b[r] == '\n') r++;
    }
    b[w] = '\0';
    *outlen = w;
    return 0;
}

static int parse_response(char *raw, size_t len, client_resp *out, char *err, size_t errlen)
{
    char *hend = strstr(raw, "\r\n\r\n");
    if (!hend || strncmp(raw, "HTTP/1.", 7) != 0) return fail(err, errlen, "no HTTP response");
    *hend = '\0';
    char *body = hend + 4;
    size_t blen = len - (size_t)(body - raw);
    out->status = atoi(raw + 9);
    if (out->status < 100 || out->status > 599) return fail(err, errlen, "bad HTTP status line");
    long long clen = -1;
    int chunked = 0;
    out->content_type[0] = '\0';
    for (char *line = strstr(raw, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        char *colon = strchr(line, ':');
        char *eol = strstr(line, "\r\n");
        if (!colon || (eol && colon > eol)) continue;
        char *v = colon + 1;
        while (*v == ' ') v++;
        size_t vl = eol ? (size_t)(eol - v) : strlen(v);
        size_t nl = (size_t)(colon - line);
        if (nl == 14 && strncasecmp(line, "Content-Length", 14) == 0) clen = atoll(v);
        else if (nl == 17 && strncasecmp(line, "Transfer-Encoding", 17) == 0 && vl >= 7 && strncasecmp(v, "chunked", 7) == 0)
            chunked = 1;
        else if (nl == 12 && strncasecmp(line, "Content-Type", 12) == 0)
            snprintf(out->content_type, sizeof out->content_type, "%.*s", (int)vl, v);
    }
    if (chunked) {
        if (dechunk(body, blen, &blen) != 0) return fail(err, errlen, "response cut short (chunked)");
    } else if (clen >= 0) {
        if ((size_t)clen > blen) return fail(err, errlen, "response cut short (%zu of %lld bytes)", blen, clen);
        blen = (size_t)clen;
    }
    out->body = malloc(blen + 1);
    if (!out->body) return fail(err, errlen, "out of memory");
    memcpy(out->body, body, blen);
    out->body[blen] = '\0';
    out->len = blen;
    return 0;
}

static int finish(int fd, double deadline, client_resp *out, char *err, size_t errlen)
{
    char *raw = NULL;
    size_t len = 0;
    int rc = read_all(fd, deadline, &raw, &len, err, errlen);
    close(fd);
    if (rc != 0) return -1;
    rc = parse_response(raw, len, out, err, errlen);
    free(raw);
    return rc;
}

int client_request(const char *base, const char *method, const char *target, const char *const *headers,
                   const void *body, size_t len, double timeout_s, client_resp *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    double deadline = now_s() + timeout_s;
    int fd = connect_to(base, deadline, err, errlen);
    if (fd < 0) return -1;
    char framing[64] = "";
    if (body || !strcmp(method, "POST") || !strcmp(method, "PUT"))
        snprintf(framing, sizeof framing, "Content-Length: %zu\r\n", len);
    if (send_head(fd, base, method, target, headers, framing, deadline, err, errlen) != 0 ||
        (len && send_all(fd, body, len, deadline, err, errlen) != 0)) {
        close(fd);
        return -1;
    }
    return finish(fd, deadline, out, err, errlen);
}

int client_stream_open(const char *base, const char *method, const char *target, const char *const *headers,
                       double timeout_s, client_stream **out, char *err, size_t errlen)
{
    double deadline = now_s() + timeout_s;
    int fd = connect_to(base, deadline, err, errlen);
    if (fd < 0) return -1;
    if (send_head(fd, base, method, target, headers, "Transfer-Encoding: chunked\r\n", deadline, err, errlen) != 0) {
        close(fd);
        return -1;
    }
    client_stream *s = malloc(sizeof *s);
    if (!s) {
        close(fd);
        return fail(err, errlen, "out of memory");
    }
    s->fd = fd;
    s->deadline = deadline;
    *out = s;
    return 0;
}

int client_stream_write(client_stream *s, const void *data, size_t len, char *err, size_t errlen)
{
    if (!len) return 0;
    char head[32];
    int n = snprintf(head, sizeof head, "%zx\r\n", len);
    if (send_all(s->fd, head, (size_t)n, s->deadline, err, errlen) != 0 ||
        send_all(s->fd, data, len, s->deadline, err, errlen) != 0 ||
        send_all(s->fd, "\r\n", 2, s->deadline, err, errlen) != 0)
        return -1;
    return 0;
}

int client_stream_finish(client_stream *s, client_resp *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    int fd = s->fd;
    double deadline = s->deadline;
    free(s);
    if (send_all(fd, "0\r\n\r\n", 5, deadline, err, errlen) != 0) {
        close(fd);
        return -1;
    }
    return finish(fd, deadline, out, err, errlen);
}

void client_stream_abort(client_stream *s)
{
    if (!s) return;
    close(s->fd);
    free(s);
}
