/*
 * Tiny HTTP/1.x server core shared by summoner's guest images.
 *
 * The guest program is PID 1 of a unikernel-like VM: if it exits, the kernel
 * panics.  So this core never returns, never forks, and treats every client
 * as hostile: one poll() loop multiplexes all connections, every connection
 * has a hard deadline (a slow client cannot hold a slot forever), input is
 * bounded, and one request is served per connection ("Connection: close").
 */
#ifndef SUMMONER_HTTPD_H
#define SUMMONER_HTTPD_H

#include <stddef.h>
#include <stdint.h>

/* Limits on what a client may send. */
#define HTTP_HEADER_MAX 8192
#define HTTP_BODY_MAX 16384

struct http_request {
    const char *method; /* NUL-terminated, e.g. "GET" */
    const char *path;   /* NUL-terminated target without the query string */
    const char *body;   /* exactly body_len bytes, not NUL-terminated */
    size_t body_len;
};

/* Growable output buffer; `failed` latches on allocation failure so handlers
 * can append without checking every call (the core then answers 503). */
struct http_buf {
    char *data;
    size_t len, cap;
    int failed;
};

void buf_append(struct http_buf *b, const void *data, size_t len);
void buf_puts(struct http_buf *b, const char *s);
void buf_printf(struct http_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

struct http_response {
    int status;
    const char *content_type; /* default text/plain */
    struct http_buf body;
};

typedef void (*http_handler)(const struct http_request *req,
                             struct http_response *resp);

struct http_config {
    const char *name;  /* program name for console messages */
    uint16_t port;
    size_t body_max;   /* <= HTTP_BODY_MAX; larger bodies get 413 */
    http_handler handler;
};

/* Never returns. */
__attribute__((noreturn)) void http_serve(const struct http_config *cfg);

/* Write one line to the console (fd 1), ignoring errors: the console is for
 * diagnosis only and may be missing. */
void console_log(const char *name, const char *msg);

#endif
