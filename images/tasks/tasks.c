/*
 * tasks: the thesis' proof-of-concept task manager (a Flask "todo" REST API,
 * section 3.5.2) as a static C program running as /init (PID 1).
 *
 *   GET    /                         200 (summoner's readiness probe)
 *   GET    /todo/api/v1.0/tasks      200 {"tasks": [...]}
 *   POST   /todo/api/v1.0/tasks      201 {"task": {...}}   400 bad JSON / no title
 *   GET    /todo/api/v1.0/tasks/<id> 200 {"task": {...}}   404
 *   PUT    /todo/api/v1.0/tasks/<id> 200 {"task": {...}}   400 / 404
 *   DELETE /todo/api/v1.0/tasks/<id> 200 {"result": true}  404
 *
 * State lives in memory only (as in the thesis, nothing persists across a
 * reboot) in a fixed table, so memory use is bounded no matter what clients
 * send: too many tasks gives 507, too-long fields 400, too-big bodies 413.
 * Request JSON goes through a strict hand-written parser (RFC 8259, UTF-8
 * validated) that rejects anything malformed with 400 and never crashes.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../common/httpd.h"

#define MAX_TASKS 128
#define TITLE_MAX 256 /* bytes of UTF-8 after unescaping */
#define DESC_MAX 1024
#define JSON_DEPTH_MAX 32
#define API "/todo/api/v1.0/tasks"

struct task {
    int id;
    bool done;
    size_t title_len, desc_len;
    /* Lengths are explicit: "\u0000" is valid JSON, so fields may hold NULs. */
    char title[TITLE_MAX];
    char desc[DESC_MAX];
};

static struct task tasks[MAX_TASKS];
static size_t ntasks;
/* Ids are never reused, so a client holding the uri of a deleted task can't
 * silently get someone else's newer task. */
static int next_id = 1;

/* ---- JSON output ------------------------------------------------------------ */

static void json_string(struct http_buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    buf_puts(b, "\"");
    size_t run = 0; /* copy unescaped runs in one go */
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = NULL;
        char u[7];
        switch (ch) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (ch < 0x20) {
                memcpy(u, "\\u00", 4);
                u[4] = hex[ch >> 4];
                u[5] = hex[ch & 15];
                u[6] = '\0';
                esc = u;
            }
        }
        if (esc) {
            buf_append(b, s + i - run, run);
            run = 0;
            buf_puts(b, esc);
        } else {
            run++;
        }
    }
    buf_append(b, s + len - run, run);
    buf_puts(b, "\"");
}

static void json_task(struct http_buf *b, const struct task *t)
{
    buf_printf(b, "{\"id\": %d, \"title\": ", t->id);
    json_string(b, t->title, t->title_len);
    buf_puts(b, ", \"description\": ");
    json_string(b, t->desc, t->desc_len);
    buf_printf(b, ", \"done\": %s, \"uri\": \"" API "/%d\"}",
               t->done ? "true" : "false", t->id);
}

static void json_error(struct http_response *resp, int status, const char *msg)
{
    resp->status = status;
    resp->content_type = "application/json";
    buf_puts(&resp->body, "{\"error\": ");
    json_string(&resp->body, msg, strlen(msg));
    buf_puts(&resp->body, "}\n");
}

/* ---- JSON input ---------------------------------------------------------------- */

struct parser {
    const unsigned char *p, *end;
    int depth;
    const char *error; /* first error, for the 400 message */
};

static bool fail(struct parser *ps, const char *msg)
{
    if (!ps->error)
        ps->error = msg;
    return false;
}

static void skip_ws(struct parser *ps)
{
    while (ps->p < ps->end &&
           (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static bool expect(struct parser *ps, char ch)
{
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != (unsigned char)ch)
        return fail(ps, "malformed JSON");
    ps->p++;
    return true;
}

static int hex_digit(unsigned char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static bool read_hex4(struct parser *ps, uint32_t *out)
{
    if (ps->end - ps->p < 4)
        return fail(ps, "malformed \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(ps->p[i]);
        if (d < 0)
            return fail(ps, "malformed \\u escape");
        v = v << 4 | (uint32_t)d;
    }
    ps->p += 4;
    *out = v;
    return true;
}

/* Append code point cp as UTF-8 to out (if out is non-NULL and it fits). */
static bool put_utf8(struct parser *ps, uint32_t cp, char *out, size_t cap, size_t *len)
{
    unsigned char tmp[4];
    size_t n;
    if (cp < 0x80) {
        tmp[0] = (unsigned char)cp;
        n = 1;
    } else if (cp < 0x800) {
        tmp[0] = (unsigned char)(0xC0 | cp >> 6);
        tmp[1] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        tmp[0] = (unsigned char)(0xE0 | cp >> 12);
        tmp[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        tmp[2] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        tmp[0] = (unsigned char)(0xF0 | cp >> 18);
        tmp[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
        tmp[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        tmp[3] = (unsigned char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    if (out) {
        if (*len + n > cap)
            return fail(ps, "string too long");
        memcpy(out + *len, tmp, n);
    }
    *len += n;
    return true;
}

/* Length of the valid UTF-8 sequence at p (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), or 0 if invalid.  Validating keeps
 * our own JSON output valid when we echo the string back. */
static size_t utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned char c = p[0];
    size_t n;
    uint32_t cp, min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2; cp = c & 0x1F; min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3; cp = c & 0x0F; min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4; cp = c & 0x07; min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* Parse a JSON string; decode it into out[0..cap) unless out is NULL. */
static bool parse_string(struct parser *ps, char *out, size_t cap, size_t *len_out)
{
    size_t len = 0;
    skip_ws(ps);
    if (ps->p >= ps->end || *ps->p != '"')
        return fail(ps, "expected a string");
    ps->p++;
    for (;;) {
        if (ps->p >= ps->end)
            return fail(ps, "unterminated string");
        unsigned char ch = *ps->p;
        if (ch == '"') {
            ps->p++;
            break;
        }
        if (ch < 0x20)
            return fail(ps, "control character in string");
        if (ch == '\\') {
            if (ps->end - ps->p < 2)
                return fail(ps, "unterminated string");
            unsigned char e = ps->p[1];
            ps->p += 2;
            uint32_t cp;
            switch (e) {
            case '"': cp = '"'; break;
            case '\\': cp = '\\'; break;
            case '/': cp = '/'; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u':
                if (!read_hex4(ps, &cp))
                    return false;
                if (cp >= 0xDC00 && cp <= 0xDFFF)
                    return fail(ps, "unpaired surrogate in \\u escape");
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    uint32_t lo;
                    if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
                        return fail(ps, "unpaired surrogate in \\u escape");
                    ps->p += 2;
                    if (!read_hex4(ps, &lo))
                        return false;
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        return fail(ps, "unpaired surrogate in \\u escape");
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                }
                break;
            default:
                return fail(ps, "invalid escape in string");
            }
            if (!put_utf8(ps, cp, out, cap, &len))
                return false;
            continue;
        }
        size_t n = utf8_seq(ps->p, ps->end);
        if (n == 0)
            return fail(ps, "invalid UTF-8 in string");
        if (out) {
            if (len + n > cap)
                return fail(ps, "string too long");
            memcpy(out + len, ps->p, n);
        }
        len += n;
        ps->p += n;
    }
    if (len_out)
        *len_out = len;
    return true;
}

static bool parse_number(struct parser *ps)
{
    const unsigned char *p = ps->p, *end = ps->end;
    if (p < end && *p == '-')
        p++;
    if (p >= end)
        return fail(ps, "malformed number");
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    } else {
        return fail(ps, "malformed number");
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return fail(ps, "malformed number");
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return fail(ps, "malformed number");
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    ps->p = p;
    return true;
}

static bool parse_literal(struct parser *ps, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0)
        return fail(ps, "malformed JSON");
    ps->p += n;
    return true;
}

/* Validate and skip any JSON value (values of keys we don't use). The depth
 * cap keeps recursion, and so stack use, bounded on "[[[[[[...". */
static bool skip_value(struct parser *ps)
{
    skip_ws(ps);
    if (ps->p >= ps->end)
        return fail(ps, "malformed JSON");
    switch (*ps->p) {
    case '"':
        return parse_string(ps, NULL, 0, NULL);
    case 't':
        return parse_literal(ps, "true");
    case 'f':
        return parse_literal(ps, "false");
    case 'n':
        return parse_literal(ps, "null");
    case '[':
    case '{': {
        bool object = *ps->p == '{';
        char close = object ? '}' : ']';
        if (++ps->depth > JSON_DEPTH_MAX)
            return fail(ps, "JSON nested too deeply");
        ps->p++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == (unsigned char)close) {
            ps->p++;
            ps->depth--;
            return true;
        }
        for (;;) {
            if (object && (!parse_string(ps, NULL, 0, NULL) || !expect(ps, ':')))
                return false;
            if (!skip_value(ps))
                return false;
            skip_ws(ps);
            if (ps->p < ps->end && *ps->p == ',') {
                ps->p++;
                continue;
            }
            if (!expect(ps, close))
                return false;
            ps->depth--;
            return true;
        }
    }
    default:
        return parse_number(ps);
    }
}

static bool parse_bool(struct parser *ps, bool *out)
{
    skip_ws(ps);
    if (ps->p < ps->end && *ps->p == 't') {
        *out = true;
        return parse_literal(ps, "true");
    }
    if (ps->p < ps->end && *ps->p == 'f') {
        *out = false;
        return parse_literal(ps, "false");
    }
    return fail(ps, "\"done\" must be true or false");
}

/* Fields found in a request body; `has_*` says which were present. */
struct task_input {
    bool has_title, has_desc, has_done;
    bool done;
    size_t title_len, desc_len;
    char title[TITLE_MAX];
    char desc[DESC_MAX];
};

/* Parse a whole body that must be one JSON object; unknown keys are validated
 * and ignored (Flask's request.json would accept them too); for repeated keys
 * the last one wins, as in Python's json module. */
static bool parse_task_input(const char *body, size_t len, struct task_input *in,
                             const char **error)
{
    struct parser ps = {(const unsigned char *)body, (const unsigned char *)body + len, 0, NULL};
    memset(in, 0, sizeof *in);
    bool ok = expect(&ps, '{');
    if (ok) {
        skip_ws(&ps);
        if (ps.p < ps.end && *ps.p == '}') {
            ps.p++;
        } else {
            for (;;) {
                char key[16];
                size_t key_len;
                const unsigned char *key_start = ps.p;
                /* Decode keys into a small buffer; a longer key cannot be one
                 * we care about, so re-parse it without storing. */
                if (!parse_string(&ps, key, sizeof key, &key_len)) {
                    ps.p = key_start;
                    ps.error = NULL;
                    key_len = 0;
                    if (!parse_string(&ps, NULL, 0, NULL)) {
                        ok = false;
                        break;
                    }
                }
                if (!expect(&ps, ':')) {
                    ok = false;
                    break;
                }
                if (key_len == 5 && memcmp(key, "title", 5) == 0) {
                    ok = parse_string(&ps, in->title, TITLE_MAX, &in->title_len);
                    if (!ok && ps.error && strcmp(ps.error, "expected a string") == 0)
                        ps.error = "\"title\" must be a string";
                    in->has_title = true;
                } else if (key_len == 11 && memcmp(key, "description", 11) == 0) {
                    ok = parse_string(&ps, in->desc, DESC_MAX, &in->desc_len);
                    if (!ok && ps.error && strcmp(ps.error, "expected a string") == 0)
                        ps.error = "\"description\" must be a string";
                    in->has_desc = true;
                } else if (key_len == 4 && memcmp(key, "done", 4) == 0) {
                    ok = parse_bool(&ps, &in->done);
                    in->has_done = true;
                } else {
                    ok = skip_value(&ps);
                }
                if (!ok)
                    break;
                skip_ws(&ps);
                if (ps.p < ps.end && *ps.p == ',') {
                    ps.p++;
                    continue;
                }
                ok = expect(&ps, '}');
                break;
            }
        }
    }
    if (ok) {
        skip_ws(&ps);
        if (ps.p != ps.end)
            ok = fail(&ps, "trailing data after JSON object");
    }
    if (!ok)
        *error = ps.error ? ps.error : "malformed JSON";
    return ok;
}

/* ---- handlers ------------------------------------------------------------------ */

static struct task *find_task(int id, size_t *index)
{
    for (size_t i = 0; i < ntasks; i++) {
        if (tasks[i].id == id) {
            if (index)
                *index = i;
            return &tasks[i];
        }
    }
    return NULL;
}

static void set_field(char *dst, size_t *dst_len, const char *src, size_t len)
{
    memcpy(dst, src, len);
    *dst_len = len;
}

static struct task *add_task(const char *title, size_t title_len, const char *desc,
                             size_t desc_len, bool done)
{
    if (ntasks >= MAX_TASKS)
        return NULL;
    struct task *t = &tasks[ntasks++];
    t->id = next_id++;
    t->done = done;
    set_field(t->title, &t->title_len, title, title_len);
    set_field(t->desc, &t->desc_len, desc, desc_len);
    return t;
}

static void respond_task(struct http_response *resp, int status, const struct task *t)
{
    resp->status = status;
    resp->content_type = "application/json";
    buf_puts(&resp->body, "{\"task\": ");
    json_task(&resp->body, t);
    buf_puts(&resp->body, "}\n");
}

static void list_tasks(struct http_response *resp)
{
    resp->content_type = "application/json";
    buf_puts(&resp->body, "{\"tasks\": [");
    for (size_t i = 0; i < ntasks; i++) {
        if (i)
            buf_puts(&resp->body, ", ");
        json_task(&resp->body, &tasks[i]);
    }
    buf_puts(&resp->body, "]}\n");
}

static void create_task(const struct http_request *req, struct http_response *resp)
{
    /* Static: struct task_input is ~1.3 KB, and there is one request at a time. */
    static struct task_input in;
    const char *error;
    struct task *t;
    if (!parse_task_input(req->body, req->body_len, &in, &error))
        json_error(resp, 400, error);
    else if (!in.has_title)
        json_error(resp, 400, "\"title\" is required");
    else if (!(t = add_task(in.title, in.title_len, in.desc, in.desc_len,
                            in.has_done && in.done)))
        json_error(resp, 507, "task limit reached; delete some tasks first");
    else
        respond_task(resp, 201, t);
}

static void update_task(struct task *t, const struct http_request *req,
                        struct http_response *resp)
{
    static struct task_input in;
    const char *error;
    if (!parse_task_input(req->body, req->body_len, &in, &error)) {
        json_error(resp, 400, error);
        return;
    }
    if (in.has_title)
        set_field(t->title, &t->title_len, in.title, in.title_len);
    if (in.has_desc)
        set_field(t->desc, &t->desc_len, in.desc, in.desc_len);
    if (in.has_done)
        t->done = in.done;
    respond_task(resp, 200, t);
}

static void delete_task(size_t index, struct http_response *resp)
{
    memmove(&tasks[index], &tasks[index + 1], (ntasks - index - 1) * sizeof tasks[0]);
    ntasks--;
    resp->content_type = "application/json";
    buf_puts(&resp->body, "{\"result\": true}\n");
}

/* "/todo/api/v1.0/tasks/<id>" -> id, or -1 if the suffix is not a plain
 * positive decimal that fits comfortably in an int. */
static int parse_id(const char *s)
{
    if (*s < '1' || *s > '9')
        return -1;
    long v = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > 100000000)
            return -1;
        v = v * 10 + (*s - '0');
    }
    return (int)v;
}

static bool is(const char *method, const char *want)
{
    return strcmp(method, want) == 0;
}

static void handle(const struct http_request *req, struct http_response *resp)
{
    const char *m = req->method;
    const char *path = req->path;
    size_t api_len = strlen(API);

    if (strcmp(path, "/") == 0) {
        if (is(m, "GET") || is(m, "HEAD"))
            buf_puts(&resp->body, "task manager: see " API "\n");
        else
            json_error(resp, 405, "method not allowed");
    } else if (strcmp(path, API) == 0) {
        if (is(m, "GET"))
            list_tasks(resp);
        else if (is(m, "POST"))
            create_task(req, resp);
        else
            json_error(resp, 405, "method not allowed");
    } else if (strncmp(path, API "/", api_len + 1) == 0) {
        int id = parse_id(path + api_len + 1);
        size_t index = 0;
        struct task *t = id > 0 ? find_task(id, &index) : NULL;
        if (!is(m, "GET") && !is(m, "PUT") && !is(m, "DELETE"))
            json_error(resp, 405, "method not allowed");
        else if (!t)
            json_error(resp, 404, "Not found");
        else if (is(m, "GET"))
            respond_task(resp, 200, t);
        else if (is(m, "PUT"))
            update_task(t, req, resp);
        else
            delete_task(index, resp);
    } else {
        json_error(resp, 404, "Not found");
    }
}

int main(void)
{
    /* The sample data shown in the thesis (section 3.5.2). */
    add_task("Task1", 5, "Task1 Description", 17, true);
    add_task("Task2", 5, "Task2 Description", 17, false);

    static const struct http_config cfg = {
        .name = "tasks",
        .port = 8080,
        .body_max = 8192,
        .handler = handle,
    };
    http_serve(&cfg);
}
