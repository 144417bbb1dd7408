/*
 * hello: the smallest useful summoner guest.  Runs as /init (PID 1) and
 * answers GET / with 200 "hello from summoner"; everything else is 404.
 * The kernel has already configured eth0 from the ip= parameter, so there is
 * nothing to mount or set up before serving.
 */
#include <string.h>

#include "../common/httpd.h"

static void handle(const struct http_request *req, struct http_response *resp)
{
    int is_get = strcmp(req->method, "GET") == 0;
    int is_head = strcmp(req->method, "HEAD") == 0;
    if (strcmp(req->path, "/") != 0) {
        resp->status = 404;
        buf_puts(&resp->body, "not found\n");
    } else if (!is_get && !is_head) {
        resp->status = 405;
        buf_puts(&resp->body, "method not allowed\n");
    } else {
        resp->status = 200;
        buf_puts(&resp->body, "hello from summoner\n");
    }
}

int main(void)
{
    static const struct http_config cfg = {
        .name = "hello",
        .port = 8080,
        .body_max = 4096,
        .handler = handle,
    };
    http_serve(&cfg);
}
