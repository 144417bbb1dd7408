/*
 * Tiny HTTP/1.x server core for summoner guest images (see httpd.h).
 *
 * Design constraints, because this runs as PID 1 inside a 64 MiB guest:
 *  - no fork, no threads: a single poll() loop over a fixed connection table;
 *  - all sockets non-blocking, so a stuck peer can only ever cost its own slot;
 *  - each connection has an absolute deadline per phase (read, write, linger),
 *    not an idle timeout, so a client dripping one byte a second still gets
 *    dropped (slowloris);
 *  - when the table is full the oldest connection is evicted, so new clients
 *    (e.g. summoner's readiness probe) are never locked out;
 *  - SIGPIPE ignored and MSG_NOSIGNAL used: a reset peer must not kill init;
 *  - the ACPI power button powers the guest off (see power_off below).
 */
#define _GNU_SOURCE
#include "httpd.h"
#include "net6.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 64
#define REQ_MAX (HTTP_HEADER_MAX + HTTP_BODY_MAX)
#define READ_DEADLINE_MS 5000
#define WRITE_DEADLINE_MS 5000
/* After the response, wait briefly for the client's FIN: closing a socket
 * with unread input makes the kernel send RST, which can destroy the response
 * in flight (e.g. a 413 sent before the oversized body was read). */
#define LINGER_MS 1000

enum conn_state { C_FREE, C_READING, C_WRITING, C_LINGERING };

struct conn {
    int fd;
    enum conn_state state;
    int64_t accepted_ms; /* for evicting the oldest connection */
    int64_t deadline_ms;
    size_t in_len;
    char *out;
    size_t out_len, out_off;
    char in[REQ_MAX];
};

/* Static so the footprint is fixed at link time (about 1.5 MiB of bss). */
static struct conn conns[MAX_CONNS];
static const struct http_config *config;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void console_log(const char *name, const char *msg)
{
    char line[256];
    int n = snprintf(line, sizeof line, "%s: %s\n", name, msg);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line)
        n = sizeof line - 1;
    ssize_t r;
    do
        r = write(1, line, (size_t)n);
    while (r < 0 && errno == EINTR);
}

/* The guest kernel's tiny ACPI power-button driver (images/kernel/guest.config)
 * sends init this signal, SIGRTMIN+4 in the kernel's numbering (musl's
 * SIGRTMIN is 35, so spelled as a number).  There is nothing to flush (no
 * disks, one request per connection): power off at once, through ACPI S5, so
 * summoner's `stop=shutdown` ends with the domain stopping by itself. */
#define POWER_BUTTON_SIGNAL 38

static void power_off(int sig)
{
    static const char msg[] = "power button: powering off\n";
    (void)sig;
    if (write(1, msg, sizeof msg - 1) < 0) {
        /* nothing to do about a console that cannot be written */
    }
    reboot(RB_POWER_OFF);
}

/* ---- output buffer ------------------------------------------------------ */

static int buf_reserve(struct http_buf *b, size_t extra)
{
    if (b->failed)
        return -1;
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2) {
            b->failed = 1;
            return -1;
        }
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p) {
        b->failed = 1;
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

void buf_append(struct http_buf *b, const void *data, size_t len)
{
    if (buf_reserve(b, len) < 0)
        return;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void buf_puts(struct http_buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void buf_printf(struct http_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = 1;
        return;
    }
    if (buf_reserve(b, (size_t)n) < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* ---- connection handling -------------------------------------------------- */

static void conn_close(struct conn *c)
{
    if (c->fd >= 0) {
        /* close() on Linux always releases the fd, even on EINTR: never retry. */
        close(c->fd);
    }
    free(c->out);
    c->out = NULL;
    c->fd = -1;
    c->state = C_FREE;
    c->in_len = 0;
    c->out_len = c->out_off = 0;
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    default: return "Unknown";
    }
}

/* Turn a response into wire bytes and switch the connection to writing.
 * If even that allocation fails, drop the connection: nothing else is safe. */
static void conn_respond(struct conn *c, struct http_response *resp, int head_only)
{
    if (resp->body.failed) {
        free(resp->body.data);
        resp->body = (struct http_buf){0};
        resp->status = 503;
        resp->content_type = NULL;
        buf_puts(&resp->body, "out of memory\n");
    }
    struct http_buf out = {0};
    buf_printf(&out,
               "HTTP/1.1 %d %s\r\n"
               "Content-Type: %s\r\n"
               "Content-Length: %zu\r\n"
               "Connection: close\r\n"
               "\r\n",
               resp->status, reason(resp->status),
               resp->content_type ? resp->content_type : "text/plain",
               resp->body.len);
    /* A HEAD response announces the length of the body it does not send. */
    if (resp->body.len && !head_only)
        buf_append(&out, resp->body.data, resp->body.len);
    free(resp->body.data);
    resp->body = (struct http_buf){0};
    if (out.failed) {
        free(out.data);
        conn_close(c);
        return;
    }
    c->out = out.data;
    c->out_len = out.len;
    c->out_off = 0;
    c->state = C_WRITING;
    c->deadline_ms = now_ms() + WRITE_DEADLINE_MS;
}

static void conn_error(struct conn *c, int status, const char *msg)
{
    struct http_response resp = {.status = status};
    buf_puts(&resp.body, msg);
    buf_puts(&resp.body, "\n");
    conn_respond(c, &resp, 0);
}

static int is_tchar(unsigned char ch)
{
    /* RFC 9110 token characters. */
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
        (ch >= '0' && ch <= '9'))
        return 1;
    return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* Parse a complete request head in c->in[0..head_len) (ending in CRLF CRLF).
 * Returns 0 and fills method/path/content_length, or an HTTP status. */
static int parse_head(char *in, size_t head_len, char *method, size_t method_cap,
                      char *path, size_t path_cap, size_t *content_length)
{
    char *p = in, *end = in + head_len;

    /* request-line: method SP target SP HTTP/x.y CRLF */
    size_t n = 0;
    while (p < end && is_tchar((unsigned char)*p)) {
        if (n + 1 >= method_cap)
            return 501;
        method[n++] = *p++;
    }
    method[n] = '\0';
    if (n == 0 || p >= end || *p != ' ')
        return 400;
    p++;
    if (p >= end || *p != '/')
        return 400;
    n = 0;
    int in_query = 0;
    while (p < end && (unsigned char)*p > ' ' && (unsigned char)*p != 0x7f) {
        if (*p == '?' || *p == '#')
            in_query = 1;
        if (!in_query) {
            if (n + 1 >= path_cap)
                return 414;
            path[n++] = *p;
        }
        p++;
    }
    path[n] = '\0';
    if (p >= end || *p != ' ')
        return 400;
    p++;
    if (end - p < 10 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1') ||
        p[8] != '\r' || p[9] != '\n')
        return p + 5 <= end && memcmp(p, "HTTP/", 5) == 0 ? 505 : 400;
    p += 10;

    /* header fields */
    int have_length = 0;
    *content_length = 0;
    while (p < end) {
        char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol)
            return 400;
        if (eol == p)
            break; /* the empty line ending the head */
        char *colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon || colon == p)
            return 400;
        for (char *q = p; q < colon; q++)
            if (!is_tchar((unsigned char)*q))
                return 400; /* also rejects obsolete line folding */
        char *v = colon + 1, *vend = eol;
        while (v < vend && (*v == ' ' || *v == '\t'))
            v++;
        while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        size_t name_len = (size_t)(colon - p);
        if (name_len == 14 && strncasecmp(p, "Content-Length", 14) == 0) {
            size_t len = 0;
            if (v == vend || vend - v > 9)
                return v == vend ? 400 : 413;
            for (char *q = v; q < vend; q++) {
                if (*q < '0' || *q > '9')
                    return 400;
                len = len * 10 + (size_t)(*q - '0');
            }
            if (have_length && len != *content_length)
                return 400; /* conflicting lengths: request smuggling */
            have_length = 1;
            *content_length = len;
        } else if (name_len == 17 && strncasecmp(p, "Transfer-Encoding", 17) == 0) {
            return 501; /* chunked bodies are not supported; send Content-Length */
        }
        p = eol + 2;
    }
    return 0;
}

/* Can in[0..len) still become a valid request line?  Lets garbage get its
 * 400 at once instead of holding a connection slot until the read deadline. */
static int plausible_prefix(const char *in, size_t len)
{
    size_t i = 0;
    while (i < len && is_tchar((unsigned char)in[i]))
        i++;
    if (i == len)
        return 1;
    if (i == 0 || in[i] != ' ')
        return 0;
    if (++i == len)
        return 1;
    if (in[i] != '/')
        return 0;
    while (i < len && (unsigned char)in[i] > ' ' && (unsigned char)in[i] != 0x7f)
        i++;
    if (i == len)
        return 1;
    if (in[i] != ' ')
        return 0;
    i++;
    static const char version[] = "HTTP/";
    for (size_t k = 0; k < sizeof version - 1 && i < len; k++, i++)
        if (in[i] != version[k])
            return 0;
    return 1;
}

/* Called after every read: answer as soon as the request is complete. */
static void conn_try_request(struct conn *c)
{
    size_t search = c->in_len < HTTP_HEADER_MAX ? c->in_len : HTTP_HEADER_MAX;
    char *hend = memmem(c->in, search, "\r\n\r\n", 4);
    if (!hend) {
        if (!plausible_prefix(c->in, c->in_len))
            conn_error(c, 400, "Bad Request");
        else if (c->in_len >= HTTP_HEADER_MAX)
            conn_error(c, 431, "request head too large");
        return; /* wait for more bytes */
    }
    size_t head_len = (size_t)(hend - c->in) + 4;

    char method[16], path[1024];
    size_t content_length;
    int status = parse_head(c->in, head_len, method, sizeof method, path,
                            sizeof path, &content_length);
    if (status) {
        conn_error(c, status, reason(status));
        return;
    }
    if (content_length > config->body_max) {
        conn_error(c, 413, "request body too large");
        return;
    }
    if (c->in_len < head_len + content_length)
        return; /* body still arriving, possibly over many segments */

    struct http_request req = {
        .method = method,
        .path = path,
        .body = c->in + head_len,
        .body_len = content_length,
    };
    struct http_response resp = {.status = 200};
    config->handler(&req, &resp);
    conn_respond(c, &resp, strcmp(method, "HEAD") == 0);
}

static void conn_on_readable(struct conn *c)
{
    for (;;) {
        if (c->state == C_LINGERING) {
            char sink[512];
            ssize_t r = recv(c->fd, sink, sizeof sink, 0);
            if (r > 0)
                continue;
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            conn_close(c); /* EOF or error: the client has our response */
            return;
        }
        if (c->state != C_READING)
            return;
        size_t room = REQ_MAX - c->in_len;
        if (room == 0) {
            /* Cannot happen (a request is answered before the buffer fills),
             * but never leave a readable socket unserviced: poll would spin. */
            conn_close(c);
            return;
        }
        ssize_t r = recv(c->fd, c->in + c->in_len, room, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_close(c);
            return;
        }
        if (r == 0) {
            /* Client gave up (or half-closed) before a complete request. */
            conn_close(c);
            return;
        }
        c->in_len += (size_t)r;
        conn_try_request(c);
    }
}

static void conn_on_writable(struct conn *c)
{
    while (c->state == C_WRITING && c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off,
                         MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_close(c);
            return; /* partial write: poll for POLLOUT and continue later */
        }
        c->out_off += (size_t)w;
    }
    if (c->state == C_WRITING && c->out_off >= c->out_len) {
        free(c->out);
        c->out = NULL;
        shutdown(c->fd, SHUT_WR);
        c->state = C_LINGERING;
        c->deadline_ms = now_ms() + LINGER_MS;
    }
}

static struct conn *conn_slot(void)
{
    struct conn *oldest = NULL;
    for (int i = 0; i < MAX_CONNS; i++) {
        if (conns[i].state == C_FREE)
            return &conns[i];
        if (!oldest || conns[i].accepted_ms < oldest->accepted_ms)
            oldest = &conns[i];
    }
    /* Table full: the oldest connection is the one most likely to be a
     * stalled or malicious client; dropping it keeps the service reachable. */
    conn_close(oldest);
    return oldest;
}

static void accept_all(int lfd)
{
    for (int i = 0; i < MAX_CONNS; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return; /* EAGAIN, or resource exhaustion: retry on the next poll */
        }
        struct conn *c = conn_slot();
        c->fd = fd;
        c->state = C_READING;
        c->in_len = 0;
        c->accepted_ms = now_ms();
        c->deadline_ms = c->accepted_ms + READ_DEADLINE_MS;
        /* Responses are written in one go; don't let Nagle delay the tail. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* Often the request is already queued: answering now saves a poll round. */
        conn_on_readable(c);
        if (c->state == C_WRITING)
            conn_on_writable(c);
    }
}

/* One dual-stack socket ([::], IPV6_V6ONLY off: IPv4 clients arrive as
 * ::ffff:a.b.c.d); a plain IPv4 one on a kernel without IPv6. */
static int open_listener(uint16_t port)
{
    int one = 1, zero = 0;
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        struct sockaddr_in6 addr6 = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any};
        if (bind(fd, (struct sockaddr *)&addr6, sizeof addr6) == 0 && listen(fd, 128) == 0)
            return fd;
        close(fd);
        return -1;
    }
    if (errno != EAFNOSUPPORT)
        return -1;
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {
        .sin_family = AF_INET,
        .sin_port = htons(port),
        .sin_addr.s_addr = htonl(INADDR_ANY),
    };
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 128) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

void http_serve(const struct http_config *cfg)
{
    config = cfg;
    /* PID 1 gets no default signal dispositions from the kernel, but be explicit:
     * a write to a reset connection must never terminate init. */
    signal(SIGPIPE, SIG_IGN);
    /* Only as PID 1 in a guest: the same binary run on a development host as
     * root must never power the host off. */
    if (getpid() == 1)
        signal(POWER_BUTTON_SIGNAL, power_off);
    for (int i = 0; i < MAX_CONNS; i++)
        conns[i].fd = -1;

    /* HTTPD_PORT lets the same binary be exercised on a development host;
     * in a guest the kernel would pass it from the command line. */
    uint16_t port = cfg->port;
    const char *env = getenv("HTTPD_PORT");
    if (env) {
        long p = strtol(env, NULL, 10);
        if (p > 0 && p < 65536)
            port = (uint16_t)p;
    }
    /* The IPv6 address (bridge mode, a host with an AAAA record) before the
     * listener: summoner answers the AAAA once the guest answers HTTP, so a
     * guest that answers must have the address.  Until it does, no listener. */
    char why[160];
    while (net6_configure(why, sizeof why) < 0) {
        char line[200];
        snprintf(line, sizeof line, "cannot configure IPv6 (%s), retrying", why);
        console_log(cfg->name, line);
        sleep(1);
    }
    int lfd;
    while ((lfd = open_listener(port)) < 0) {
        /* Exiting would panic the guest; keep retrying so a transient failure
         * (e.g. the network not up yet) heals itself. */
        console_log(cfg->name, "cannot listen yet, retrying");
        sleep(1);
    }
    char msg[256];
    const char *ip6 = getenv("summoner_ip6");
    struct utsname kernel;
    if (uname(&kernel) != 0)
        snprintf(kernel.machine, sizeof kernel.machine, "?");
    snprintf(msg, sizeof msg, "listening on port %u%s%s (%s %s)", (unsigned)port, ip6 ? ", IPv6 address " : "",
             ip6 ? ip6 : "", kernel.release, kernel.machine);
    console_log(cfg->name, msg);

    struct pollfd pfds[MAX_CONNS + 1];
    struct conn *owners[MAX_CONNS + 1];
    for (;;) {
        int64_t now = now_ms();
        int64_t next = -1;
        int n = 0;
        pfds[n] = (struct pollfd){.fd = lfd, .events = POLLIN};
        owners[n++] = NULL;
        for (int i = 0; i < MAX_CONNS; i++) {
            struct conn *c = &conns[i];
            if (c->state == C_FREE)
                continue;
            if (now >= c->deadline_ms) {
                conn_close(c); /* too slow, whatever phase it is in */
                continue;
            }
            if (next < 0 || c->deadline_ms < next)
                next = c->deadline_ms;
            pfds[n] = (struct pollfd){
                .fd = c->fd,
                .events = c->state == C_WRITING ? POLLOUT : POLLIN,
            };
            owners[n++] = c;
        }
        int timeout = next < 0 ? -1 : (int)(next - now);
        int ready = poll(pfds, (nfds_t)n, timeout);
        if (ready < 0) {
            if (errno != EINTR)
                sleep(1); /* cannot happen with valid fds; avoid spinning if it does */
            continue;
        }
        for (int i = 1; i < n; i++) {
            struct conn *c = owners[i];
            short ev = pfds[i].revents;
            if (!ev || c->state == C_FREE)
                continue;
            if (c->state == C_WRITING && (ev & (POLLOUT | POLLERR | POLLHUP)))
                conn_on_writable(c);
            else if (ev & (POLLIN | POLLERR | POLLHUP))
                conn_on_readable(c);
        }
        if (pfds[0].revents & POLLIN)
            accept_all(lfd);
    }
}
