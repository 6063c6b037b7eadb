/* test_http.c - the HTTP server: through atp_http_feed (no sockets) and through
 * real sockets on 127.0.0.1 against a port-0 server running in a thread. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "atp/error.h"
#include "atp/http.h"
#include "atp/limits.h"
#include "test.h"

/* ------------------------------------------------------------------------ */
/* The echo handler                                                          */

static atomic_int logged;

/* Body: "METHOD path q=query ct=content_type b=body"; /big?n=N answers N bytes
 * of 'x'; /close asks for the connection to close; /status?N answers N. */
static void echo_handler(void *ctx, const atp_http_request_t *req,
                         atp_http_response_t *res) {
  (void)ctx;
  res->status = 200;
  res->content_type = "text/plain";
  if (strcmp(req->path, "/big") == 0) {
    size_t n = strtoul(req->query + 2, NULL, 10);
    char *p = atp_buf_reserve(res->body, n);
    if (p) {
      for (size_t i = 0; i < n; i++) p[i] = (char)('a' + i % 26);
      res->body->len += n;
    }
    return;
  }
  if (strcmp(req->path, "/status") == 0) res->status = atoi(req->query);
  if (strcmp(req->path, "/close") == 0) res->close = true;
  if (strcmp(req->path, "/retry") == 0) {
    res->extra_headers[0] = "Retry-After: 1";
    res->extra_headers[1] = "X-Bad: a\r\nInjected: yes";
    res->extra_header_count = 2;
  }
  char *tmp = atp_arena_alloc(req->arena, 64); /* the arena works */
  if (tmp) memset(tmp, 0, 64);
  atp_buf_printf(res->body, "%s %s q=%s ct=%.*s auth=%.*s b=", req->method_name,
                 req->path, req->query, (int)req->content_type_len,
                 req->content_type ? req->content_type : "",
                 (int)req->authorization_len,
                 req->authorization ? req->authorization : "");
  atp_buf_append(res->body, req->body, req->body_len);
}

static size_t small_limit(void *ctx, atp_http_method_t method, const char *path,
                          size_t path_len) {
  (void)ctx;
  (void)method;
  return path_len >= 6 && memcmp(path, "/small", 6) == 0 ? 16 : ATP_HTTP_BODY_BYTES_MAX;
}

static void count_log(void *ctx, const atp_http_request_t *req, int status,
                      size_t body_bytes, int64_t elapsed_ns) {
  (void)ctx;
  (void)body_bytes;
  if (req->path && req->method_name && elapsed_ns >= 0 && status >= 100)
    atomic_fetch_add(&logged, 1);
}

static atp_http_config_t echo_config(void) {
  atp_http_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = "127.0.0.1";
  cfg.port = 0;
  cfg.threads = 1;
  cfg.handler = echo_handler;
  cfg.body_limit = small_limit;
  cfg.log = count_log;
  return cfg;
}

/* ------------------------------------------------------------------------ */
/* A small response reader over a byte string                                */

typedef struct {
  int status;
  char head[4096];
  char *body; /* malloc'd, NUL-terminated */
  size_t body_len;
} resp_t;

static void resp_free(resp_t *r) {
  free(r->body);
  r->body = NULL;
}

/* Parses one response at data[*off]; 0 on success, 1 when incomplete, -1 bad. */
static int parse_response(const char *data, size_t len, size_t *off, bool head_request,
                          resp_t *r) {
  const char *start = data + *off;
  size_t avail = len - *off;
  const char *end = memmem(start, avail, "\r\n\r\n", 4);
  if (!end) return 1;
  size_t head_len = (size_t)(end - start) + 4;
  if (head_len >= sizeof r->head) return -1;
  memcpy(r->head, start, head_len);
  r->head[head_len] = '\0';
  if (sscanf(r->head, "HTTP/1.1 %d", &r->status) != 1) return -1;
  size_t body_len = 0;
  const char *cl = strcasestr(r->head, "\r\nContent-Length: ");
  if (cl && !head_request) body_len = strtoul(cl + 18, NULL, 10);
  if (avail < head_len + body_len) return 1;
  r->body = malloc(body_len + 1);
  memcpy(r->body, start + head_len, body_len);
  r->body[body_len] = '\0';
  r->body_len = body_len;
  *off += head_len + body_len;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Feed tests                                                                */

static int feed(const char *in, atp_buf_t *out) {
  atp_http_config_t cfg = echo_config();
  atp_buf_reset(out);
  int rc = atp_http_feed(&cfg, in, strlen(in), out);
  atp_buf_append(out, "", 1); /* for strstr */
  out->len--;
  return rc;
}

static void test_feed_get(void) {
  atp_buf_t out;
  atp_buf_init(&out, 0);
  int rc = feed(
      "GET /v1/x?sku=A%20B HTTP/1.1\r\nHost: h\r\nContent-Type: "
      "application/json\r\n"
      "Authorization: Bearer t\r\n\r\n",
      &out);
  CHECK_EQ(rc, 0);
  size_t off = 0;
  resp_t r = {0};
  REQUIRE(parse_response(out.data, out.len, &off, false, &r) == 0);
  CHECK_EQ(r.status, 200);
  CHECK(strstr(r.head, "HTTP/1.1 200 OK\r\n") == r.head);
  CHECK(strstr(r.head, "Content-Type: text/plain\r\n"));
  CHECK(!strstr(r.head, "Connection:"));
  CHECK(strcmp(r.body, "GET /v1/x q=sku=A%20B ct=application/json auth=Bearer t b=") ==
        0);
  CHECK_EQ(off, out.len);
  resp_free(&r);
  atp_buf_free(&out);
}

static void test_feed_pipeline_order(void) {
  atp_buf_t out, in;
  atp_buf_init(&out, 0);
  atp_buf_init(&in, 0);
  /* More than ATP_HTTP_PIPELINE_MAX, so parsing pauses and resumes. */
  int n = ATP_HTTP_PIPELINE_MAX * 3 + 5;
  for (int i = 0; i < n; i++)
    atp_buf_printf(&in, "GET /r%d HTTP/1.1\r\nHost: h\r\n\r\n", i);
  atp_http_config_t cfg = echo_config();
  CHECK_EQ(atp_http_feed(&cfg, in.data, in.len, &out), 0);
  size_t off = 0;
  for (int i = 0; i < n; i++) {
    resp_t r = {0};
    REQUIRE(parse_response(out.data, out.len, &off, false, &r) == 0);
    char want[64];
    snprintf(want, sizeof want, "GET /r%d q= ct= auth= b=", i);
    CHECK(strcmp(r.body, want) == 0);
    resp_free(&r);
  }
  CHECK_EQ(off, out.len);
  atp_buf_free(&out);
  atp_buf_free(&in);
}

static void test_feed_chunked_body(void) {
  atp_buf_t out;
  atp_buf_init(&out, 0);
  int rc = feed(
      "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
      "POST /q HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
      &out);
  CHECK_EQ(rc, 0);
  size_t off = 0;
  resp_t r = {0};
  REQUIRE(parse_response(out.data, out.len, &off, false, &r) == 0);
  CHECK(strcmp(r.body, "POST /p q= ct= auth= b=hello world") == 0);
  resp_free(&r);
  REQUIRE(parse_response(out.data, out.len, &off, false, &r) == 0);
  CHECK(strcmp(r.body, "POST /q q= ct= auth= b=abc") == 0);
  resp_free(&r);
  atp_buf_free(&out);
}

static void test_feed_head_and_status(void) {
  atp_buf_t out;
  atp_buf_init(&out, 0);
  CHECK_EQ(feed("HEAD /h HTTP/1.1\r\nHost: t\r\n\r\nGET /status?204 HTTP/1.1\r\nHost: "
                "t\r\n\r\nGET /status?0 "
                "HTTP/1.1\r\nHost: t\r\n\r\n",
                &out),
           0);
  size_t off = 0;
  resp_t r = {0};
  REQUIRE(parse_response(out.data, out.len, &off, true, &r) == 0);
  CHECK_EQ(r.status, 200);
  CHECK(strstr(r.head, "Content-Length: 23\r\n")); /* "HEAD /h q= ct= auth= b=" */
  resp_free(&r);
  REQUIRE(parse_response(out.data, out.len, &off, true, &r) == 0);
  CHECK_EQ(r.status, 204);
  CHECK(!strstr(r.head, "Content-Length"));
  resp_free(&r);
  REQUIRE(parse_response(out.data, out.len, &off, false, &r) == 0);
  CHECK_EQ(r.status, 500); /* status left 0 */
  resp_free(&r);
  CHECK_EQ(off, out.len);
  atp_buf_free(&out);
}

static void test_feed_close_and_http10(void) {
  atp_buf_t out;
  atp_buf_init(&out, 0);
  CHECK_EQ(feed("GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /b "
                "HTTP/1.1\r\nHost: t\r\n\r\n",
                &out),
           1);
  CHECK(strstr(out.data, "Connection: close\r\n"));
  CHECK(!strstr(out.data, "GET /b"));
  CHECK_EQ(feed("GET /a HTTP/1.0\r\n\r\n", &out), 1);
  CHECK(strstr(out.data, "Connection: close\r\n"));
  CHECK_EQ(feed("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &out), 0);
  CHECK(strstr(out.data, "Connection: keep-alive\r\n"));
  CHECK_EQ(feed("GET /close HTTP/1.1\r\nHost: t\r\n\r\n", &out), 1);
  CHECK(strstr(out.data, "Connection: close\r\n"));
  atp_buf_free(&out);
}

static void check_error(const char *in, int status, const char *code) {
  atp_buf_t out;
  atp_buf_init(&out, 0);
  atp_http_config_t cfg = echo_config();
  CHECK_EQ(atp_http_feed(&cfg, in, strlen(in), &out), 1);
  size_t off = 0;
  resp_t r = {0};
  REQUIRE(parse_response(out.data, out.len, &off, false, &r) == 0);
  CHECK_EQ(r.status, status);
  CHECK(strstr(r.head, "Connection: close\r\n"));
  CHECK(strstr(r.head, "Content-Type: application/json\r\n"));
  char want[96];
  snprintf(want, sizeof want, "{\"error\":{\"code\":\"%s\",\"message\":\"", code);
  CHECK(strncmp(r.body, want, strlen(want)) == 0);
  CHECK(r.body_len > 2 && strcmp(r.body + r.body_len - 3, "\"}}") == 0);
  resp_free(&r);
  atp_buf_free(&out);
}

static void test_feed_errors(void) {
  check_error("GARBAGE\r\n\r\n", 400, "bad_request");
  check_error("GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n", 400, "bad_request");
  check_error(
      "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: "
      "4\r\n\r\nabcd",
      400, "bad_request");
  check_error("POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
              400, "bad_request");
  check_error("GET / HTTP/2.0\r\n\r\n", 505, "bad_request");
  check_error("POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 17\r\n\r\n", 413,
              "payload_too_large");
  check_error(
      "POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: "
      "chunked\r\n\r\n10\r\n0123456789abcdef\r\n1\r\nx\r\n0\r\n\r\n",
      413, "payload_too_large");
  /* A body within the limit passes. */
  atp_buf_t out;
  atp_buf_init(&out, 0);
  CHECK_EQ(feed("POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: "
                "16\r\n\r\n0123456789abcdef",
                &out),
           0);
  CHECK(strstr(out.data, "b=0123456789abcdef"));
  atp_buf_free(&out);

  atp_buf_t in;
  atp_buf_init(&in, 0);
  atp_buf_append(&in, "GET /", 5);
  for (int i = 0; i < ATP_HTTP_URL_BYTES_MAX; i++) atp_buf_append(&in, "u", 1);
  atp_buf_printf(&in, " HTTP/1.1\r\nHost: t\r\n\r\n");
  atp_buf_append(&in, "", 1);
  check_error(in.data, 414, "uri_too_long");
  atp_buf_reset(&in);
  atp_buf_printf(&in, "GET / HTTP/1.1\r\nHost: t\r\n");
  for (int i = 0; i < 70; i++) {
    atp_buf_printf(&in, "X-H%d: ", i);
    for (int j = 0; j < 1000; j++) atp_buf_append(&in, "v", 1);
    atp_buf_append(&in, "\r\n", 2);
  }
  atp_buf_printf(&in, "\r\n");
  atp_buf_append(&in, "", 1);
  check_error(in.data, 431, "bad_request");
  atp_buf_free(&in);
}

/* RFC 9112 strictness: what llhttp alone lets through. */
static void test_feed_framing_strict(void) {
  /* A coding before chunked would reach the handler still encoded: 501. */
  check_error(
      "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
      "3\r\nabc\r\n0\r\n\r\n",
      501, "bad_request");
  check_error(
      "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: "
      "chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
      501, "bad_request");
  /* Obsolete line folding, in Transfer-Encoding (smuggling) or anywhere. */
  check_error(
      "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
      "3\r\nabc\r\n0\r\n\r\n",
      400, "bad_request");
  check_error("GET /p HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n", 400, "bad_request");
  check_error("GET /p HTTP/1.1\r\nHost: h\r\nAccept: a,\r\n\tb\r\n\r\n", 400,
              "bad_request");
  /* Host: required in HTTP/1.1, once; Authorization at most once. */
  check_error("GET /p HTTP/1.1\r\n\r\n", 400, "bad_request");
  check_error("GET /p HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_request");
  check_error(
      "GET /p HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer a\r\nauthorization: Bearer "
      "b\r\n\r\n",
      400, "bad_request");
  atp_buf_t out;
  atp_buf_init(&out, 0);
  /* What stays fine: chunked alone in any case, HTTP/1.0 without Host, and
   * spaces inside values. */
  CHECK_EQ(feed("POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
                "3\r\nabc\r\n0\r\n\r\n",
                &out),
           0);
  CHECK(strstr(out.data, "b=abc"));
  CHECK_EQ(feed("GET /p HTTP/1.0\r\n\r\n", &out), 1);
  CHECK(strstr(out.data, "HTTP/1.1 200 OK\r\n"));
  CHECK_EQ(feed("GET /p HTTP/1.1\r\nHost: h\r\nX-A: a b\t c\r\n\r\n", &out), 0);
  CHECK(strstr(out.data, "HTTP/1.1 200 OK\r\n"));
  atp_buf_free(&out);
}

/* The error hook renders the server's own refusals; the table gives the status. */
static int hook_calls;
static void error_hook(void *ctx, const atp_http_request_t *req, int err,
                       const char *message, atp_http_response_t *res) {
  (void)ctx;
  hook_calls++;
  res->status = 299; /* ignored: the table's status wins */
  res->content_type = "application/x-test";
  atp_buf_printf(res->body, "err=%d accept=%.*s msg=%s", err, (int)req->accept_len,
                 req->accept ? req->accept : "", message);
}

static void test_feed_error_hook(void) {
  atp_http_config_t cfg = echo_config();
  cfg.error = error_hook;
  atp_buf_t out;
  atp_buf_init(&out, 0);
  const char *in =
      "POST /small HTTP/1.1\r\nHost: h\r\nAccept: application/msgpack\r\n"
      "Content-Length: 17\r\n\r\n";
  hook_calls = 0;
  CHECK_EQ(atp_http_feed(&cfg, in, strlen(in), &out), 1);
  atp_buf_append(&out, "", 1);
  CHECK_EQ(hook_calls, 1);
  CHECK(strncmp(out.data, "HTTP/1.1 413 ", 13) == 0);
  CHECK(strstr(out.data, "Content-Type: application/x-test\r\n"));
  char want[96];
  snprintf(want, sizeof want, "err=%d accept=application/msgpack msg=", ATP_ETOOLARGE);
  CHECK(strstr(out.data, want));
  /* Accept is known even when the head fails before it completes. */
  atp_buf_reset(&out);
  in = "GET /p HTTP/1.1\r\nAccept: application/msgpack\r\nBad Header\r\n\r\n";
  CHECK_EQ(atp_http_feed(&cfg, in, strlen(in), &out), 1);
  atp_buf_append(&out, "", 1);
  CHECK(strncmp(out.data, "HTTP/1.1 400 ", 13) == 0);
  CHECK(strstr(out.data, "accept=application/msgpack msg=Malformed HTTP"));
  atp_buf_free(&out);
}

static void test_feed_expect_continue_and_other(void) {
  atp_buf_t out;
  atp_buf_init(&out, 0);
  CHECK_EQ(feed("POST /e HTTP/1.1\r\nHost: t\r\nExpect: "
                "100-continue\r\nContent-Length: 2\r\n\r\nhi",
                &out),
           0);
  CHECK(strncmp(out.data, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", 42) == 0);
  CHECK_EQ(feed("PROPFIND /o HTTP/1.1\r\nHost: t\r\n\r\n", &out), 0);
  CHECK(strstr(out.data, "PROPFIND /o q="));
  CHECK_EQ(feed("GET /retry HTTP/1.1\r\nHost: t\r\n\r\n", &out), 0);
  CHECK(strstr(out.data, "\r\nRetry-After: 1\r\n"));
  CHECK(!strstr(out.data, "Injected"));
  CHECK_EQ(feed("GET http://example.com/abs?x=1 HTTP/1.1\r\nHost: t\r\n\r\n", &out), 0);
  CHECK(strstr(out.data, "GET /abs q=x=1"));
  atp_buf_free(&out);
}

static void test_feed_big_bodies(void) {
  atp_buf_t out;
  atp_buf_init(&out, 0);
  /* Bodies above the inline limit are moved into the output queue. */
  CHECK_EQ(feed("GET /big?n=100000 HTTP/1.1\r\nHost: t\r\n\r\nGET /big?n=10 "
                "HTTP/1.1\r\nHost: t\r\n\r\nGET "
                "/big?n=70000 HTTP/1.1\r\nHost: t\r\n\r\n",
                &out),
           0);
  size_t off = 0;
  size_t want[3] = {100000, 10, 70000};
  for (int i = 0; i < 3; i++) {
    resp_t r = {0};
    REQUIRE(parse_response(out.data, out.len, &off, false, &r) == 0);
    CHECK_EQ(r.body_len, want[i]);
    CHECK(r.body[want[i] - 1] == (char)('a' + (want[i] - 1) % 26));
    resp_free(&r);
  }
  CHECK_EQ(off, out.len);
  atp_buf_free(&out);
}

/* Random and mutated inputs must never crash (ASan watches). */
static void test_feed_garbage(void) {
  static const char *seeds[] = {
      "GET /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Type: "
      "application/json\r\n\r\n",
      "POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: "
      "chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      "POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: "
      "100-continue\r\n\r\nhello",
      "HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"};
  atp_http_config_t cfg = echo_config();
  atp_buf_t out;
  atp_buf_init(&out, 0);
  unsigned seed = 12345;
  char buf[512];
  for (int iter = 0; iter < 3000; iter++) {
    const char *s = seeds[iter % 4];
    size_t len = strlen(s);
    memcpy(buf, s, len);
    int mutations = 1 + rand_r(&seed) % 4;
    for (int m = 0; m < mutations; m++) {
      size_t at = (size_t)rand_r(&seed) % len;
      switch (rand_r(&seed) % 3) {
        case 0:
          buf[at] = (char)rand_r(&seed);
          break;
        case 1:
          len = at + 1;
          break; /* truncate */
        default:
          if (len + 8 < sizeof buf) {
            memmove(buf + at + 4, buf + at, len - at);
            memcpy(buf + at, "\r\n:0", 4);
            len += 4;
          }
      }
    }
    atp_buf_reset(&out);
    int rc = atp_http_feed(&cfg, buf, len, &out);
    CHECK(rc == 0 || rc == 1);
  }
  for (int iter = 0; iter < 500; iter++) {
    size_t len = (size_t)rand_r(&seed) % sizeof buf;
    for (size_t i = 0; i < len; i++) buf[i] = (char)rand_r(&seed);
    atp_buf_reset(&out);
    atp_http_feed(&cfg, buf, len, &out);
  }
  atp_buf_free(&out);
}

/* ------------------------------------------------------------------------ */
/* Socket tests                                                              */

typedef struct {
  atp_http_server_t *server;
  pthread_t thread;
  int port;
  atomic_int run_returned;
} srv_t;

static void *server_main(void *arg) {
  srv_t *s = arg;
  atp_http_server_run(s->server);
  atomic_store(&s->run_returned, 1);
  return NULL;
}

static int srv_start(srv_t *s, const atp_http_config_t *cfg) {
  memset(s, 0, sizeof *s);
  char err[128];
  if (atp_http_server_create(cfg, &s->server, err, sizeof err)) {
    fprintf(stderr, "create: %s\n", err);
    return -1;
  }
  s->port = atp_http_server_port(s->server);
  pthread_create(&s->thread, NULL, server_main, s);
  return 0;
}

static void srv_stop(srv_t *s) {
  atp_http_server_stop(s->server);
  pthread_join(s->thread, NULL);
  atp_http_server_destroy(s->server);
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

typedef struct {
  int fd;
  char *buf;
  size_t len, cap;
} client_t;

static int client_open(client_t *c, int port) {
  memset(c, 0, sizeof *c);
  c->fd = socket(AF_INET, SOCK_STREAM, 0);
  if (c->fd < 0) return -1;
  struct timeval tv = {3, 0};
  setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(c->fd, (struct sockaddr *)&a, sizeof a)) return -1;
  c->cap = 1 << 20;
  c->buf = malloc(c->cap);
  return 0;
}

static void client_close(client_t *c) {
  if (c->fd >= 0) close(c->fd);
  free(c->buf);
  c->fd = -1;
  c->buf = NULL;
}

static int client_send(client_t *c, const char *data, size_t len) {
  while (len) {
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n <= 0) return -1;
    data += n;
    len -= (size_t)n;
  }
  return 0;
}
static int client_sends(client_t *c, const char *s) {
  return client_send(c, s, strlen(s));
}

/* Reads one response; 0, or -1 on EOF / timeout / garbage. */
static int client_read(client_t *c, resp_t *r) {
  for (;;) {
    size_t off = 0;
    int rc = parse_response(c->buf, c->len, &off, false, r);
    if (rc == 0) {
      memmove(c->buf, c->buf + off, c->len - off);
      c->len -= off;
      return 0;
    }
    if (rc < 0 || c->len == c->cap) return -1;
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (n <= 0) return -1;
    c->len += (size_t)n;
  }
}

/* 1 when the server closed the connection (EOF or reset) within the timeout,
 * with nothing unread before it. */
static int client_sees_close(client_t *c) {
  char b[256];
  ssize_t n = recv(c->fd, b, sizeof b, 0);
  if (n == 0) return 1;
  if (n < 0 && errno == ECONNRESET) return 1;
  return 0;
}

static void test_sock_keepalive_and_pipeline(void) {
  srv_t s;
  atp_http_config_t cfg = echo_config();
  REQUIRE(srv_start(&s, &cfg) == 0);
  client_t c;
  REQUIRE(client_open(&c, s.port) == 0);
  resp_t r = {0};
  for (int i = 0; i < 3; i++) {
    CHECK(client_sends(&c, "GET /k?i=1 HTTP/1.1\r\nHost: h\r\n\r\n") == 0);
    REQUIRE(client_read(&c, &r) == 0);
    CHECK_EQ(r.status, 200);
    CHECK(strcmp(r.body, "GET /k q=i=1 ct= auth= b=") == 0);
    resp_free(&r);
  }
  /* Ten requests in one write, answered in order. */
  char all[4096];
  size_t len = 0;
  for (int i = 0; i < 10; i++)
    len += (size_t)snprintf(all + len, sizeof all - len,
                            "GET /p%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
  CHECK(client_send(&c, all, len) == 0);
  for (int i = 0; i < 10; i++) {
    REQUIRE(client_read(&c, &r) == 0);
    char want[64];
    snprintf(want, sizeof want, "GET /p%d q= ct= auth= b=", i);
    CHECK(strcmp(r.body, want) == 0);
    resp_free(&r);
  }
  /* Many more than the pipeline bound, with big bodies: backpressure. */
  atp_buf_t many;
  atp_buf_init(&many, 0);
  for (int i = 0; i < 300; i++)
    atp_buf_printf(&many, "GET /big?n=%d HTTP/1.1\r\nHost: t\r\n\r\n", 1000 + i * 100);
  CHECK(client_send(&c, many.data, many.len) == 0);
  for (int i = 0; i < 300; i++) {
    REQUIRE(client_read(&c, &r) == 0);
    CHECK_EQ(r.body_len, 1000 + i * 100);
    resp_free(&r);
  }
  atp_buf_free(&many);
  client_close(&c);
  srv_stop(&s);
}

/* A client that pipelines a lot and never reads: the server stops reading
 * (bounded memory) and stays responsive to others; closing the stuck client
 * frees its connection. */
static void test_sock_client_never_reads(void) {
  srv_t s;
  atp_http_config_t cfg = echo_config();
  REQUIRE(srv_start(&s, &cfg) == 0);
  client_t stuck, other;
  REQUIRE(client_open(&stuck, s.port) == 0);
  int rcvbuf = 4096;
  setsockopt(stuck.fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  atp_buf_t many;
  atp_buf_init(&many, 0);
  for (int i = 0; i < 2000; i++)
    atp_buf_printf(&many, "GET /big?n=50000 HTTP/1.1\r\nHost: t\r\n\r\n");
  /* The server stops reading, so the send may block: send what fits. */
  struct timeval tv = {0, 300000};
  setsockopt(stuck.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  (void)client_send(&stuck, many.data, many.len);
  atp_buf_free(&many);
  REQUIRE(client_open(&other, s.port) == 0);
  resp_t r = {0};
  CHECK(client_sends(&other, "GET /o HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
  REQUIRE(client_read(&other, &r) == 0);
  CHECK_EQ(r.status, 200);
  resp_free(&r);
  /* The stuck client's first responses are intact. */
  REQUIRE(client_read(&stuck, &r) == 0);
  CHECK_EQ(r.body_len, 50000);
  resp_free(&r);
  client_close(&stuck);
  client_close(&other);
  srv_stop(&s);
}

static void test_sock_chunked_and_close(void) {
  srv_t s;
  atp_http_config_t cfg = echo_config();
  REQUIRE(srv_start(&s, &cfg) == 0);
  client_t c;
  REQUIRE(client_open(&c, s.port) == 0);
  CHECK(
      client_sends(
          &c,
          "POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab") ==
      0);
  sleep_ms(20);
  CHECK(client_sends(&c, "c\r\n4\r\ndefg\r\n0\r\n\r\n") == 0);
  resp_t r = {0};
  REQUIRE(client_read(&c, &r) == 0);
  CHECK(strcmp(r.body, "POST /c q= ct= auth= b=abcdefg") == 0);
  resp_free(&r);
  CHECK(client_sends(&c, "GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n") ==
        0);
  REQUIRE(client_read(&c, &r) == 0);
  CHECK(strstr(r.head, "Connection: close\r\n"));
  resp_free(&r);
  CHECK(client_sees_close(&c));
  client_close(&c);
  /* Half-close: the queued response is still written. */
  REQUIRE(client_open(&c, s.port) == 0);
  CHECK(client_sends(
            &c,
            "GET /h1 HTTP/1.1\r\nHost: t\r\n\r\nGET /h2 HTTP/1.1\r\nHost: t\r\n\r\n") ==
        0);
  shutdown(c.fd, SHUT_WR);
  REQUIRE(client_read(&c, &r) == 0);
  CHECK(strcmp(r.body, "GET /h1 q= ct= auth= b=") == 0);
  resp_free(&r);
  REQUIRE(client_read(&c, &r) == 0);
  CHECK(strcmp(r.body, "GET /h2 q= ct= auth= b=") == 0);
  resp_free(&r);
  CHECK(client_sees_close(&c));
  client_close(&c);
  srv_stop(&s);
}

static void sock_expect_error(int port, const char *data, size_t len, int status) {
  client_t c;
  REQUIRE(client_open(&c, port) == 0);
  client_send(&c, data, len); /* may fail part way once the server answered */
  resp_t r = {0};
  REQUIRE(client_read(&c, &r) == 0);
  CHECK_EQ(r.status, status);
  CHECK(strstr(r.head, "Connection: close\r\n"));
  CHECK(strstr(r.body, "{\"error\":{\"code\":\""));
  resp_free(&r);
  CHECK(client_sees_close(&c));
  client_close(&c);
}

static void test_sock_limits(void) {
  srv_t s;
  atp_http_config_t cfg = echo_config();
  REQUIRE(srv_start(&s, &cfg) == 0);
  atp_buf_t in;
  atp_buf_init(&in, 0);
  atp_buf_printf(&in, "GET / HTTP/1.1\r\nHost: t\r\n");
  for (int i = 0; i < 70; i++) {
    atp_buf_printf(&in, "X-H%d: ", i);
    for (int j = 0; j < 1000; j++) atp_buf_append(&in, "v", 1);
    atp_buf_append(&in, "\r\n", 2);
  }
  atp_buf_printf(&in, "\r\n");
  sock_expect_error(s.port, in.data, in.len, 431);
  atp_buf_reset(&in);
  atp_buf_printf(&in, "GET /");
  for (int i = 0; i < ATP_HTTP_URL_BYTES_MAX + 10; i++) atp_buf_append(&in, "u", 1);
  atp_buf_printf(&in, " HTTP/1.1\r\nHost: t\r\n\r\n");
  sock_expect_error(s.port, in.data, in.len, 414);
  const char *cl =
      "POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: "
      "100\r\n\r\n0123456789012345678901234567890123456789";
  sock_expect_error(s.port, cl, strlen(cl), 413);
  const char *ch =
      "POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: "
      "chunked\r\n\r\n20\r\n0123456789abcdef0123456789abcdef\r\n";
  sock_expect_error(s.port, ch, strlen(ch), 413);
  /* The default 1 MiB limit, by Content-Length, with the body being sent. */
  atp_buf_reset(&in);
  atp_buf_printf(&in, "POST /any HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n",
                 ATP_HTTP_BODY_BYTES_MAX + 1);
  for (int i = 0; i < 200000; i++) atp_buf_append(&in, "b", 1);
  sock_expect_error(s.port, in.data, in.len, 413);
  const char *bad = "GET / HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n";
  sock_expect_error(s.port, bad, strlen(bad), 400);
  atp_buf_free(&in);
  srv_stop(&s);
}

static void test_sock_timeouts(void) {
  srv_t s;
  atp_http_config_t cfg = echo_config();
  cfg.header_timeout_ms = 200;
  cfg.idle_timeout_ms = 300;
  cfg.body_timeout_ms = 200;
  REQUIRE(srv_start(&s, &cfg) == 0);
  /* Slowloris: a head trickling in never completes within the header timeout,
   * even though bytes keep arriving. */
  client_t c;
  REQUIRE(client_open(&c, s.port) == 0);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  CHECK(client_sends(&c, "GET / HTTP/1.1\r\nHost: t\r\n") == 0);
  for (int i = 0; i < 4; i++) {
    sleep_ms(60);
    if (client_sends(&c, "X-A: b\r\n")) break;
  }
  resp_t r = {0};
  REQUIRE(client_read(&c, &r) == 0);
  CHECK_EQ(r.status, 408);
  resp_free(&r);
  CHECK(client_sees_close(&c));
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double secs =
      (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  CHECK(secs < 1.5);
  client_close(&c);
  /* Body timeout. */
  REQUIRE(client_open(&c, s.port) == 0);
  CHECK(client_sends(
            &c, "POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nab") == 0);
  REQUIRE(client_read(&c, &r) == 0);
  CHECK_EQ(r.status, 408);
  resp_free(&r);
  CHECK(client_sees_close(&c));
  client_close(&c);
  /* Idle keep-alive connection: closed after the idle timeout. */
  REQUIRE(client_open(&c, s.port) == 0);
  CHECK(client_sends(&c, "GET /i HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
  REQUIRE(client_read(&c, &r) == 0);
  resp_free(&r);
  clock_gettime(CLOCK_MONOTONIC, &t0);
  CHECK(client_sees_close(&c));
  clock_gettime(CLOCK_MONOTONIC, &t1);
  secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  CHECK(secs > 0.2 && secs < 1.5);
  client_close(&c);
  srv_stop(&s);
}

/* A fold split across reads is found as well: the head sent a byte at a time. */
static void test_sock_fold_across_reads(void) {
  srv_t s;
  atp_http_config_t cfg = echo_config();
  REQUIRE(srv_start(&s, &cfg) == 0);
  const char *heads[] = {
      "GET /p HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
      "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
  };
  for (size_t h = 0; h < 2; h++) {
    client_t c;
    REQUIRE(client_open(&c, s.port) == 0);
    for (const char *p = heads[h]; *p; p++) {
      if (client_send(&c, p, 1)) break;
      sleep_ms(1); /* separate reads, mostly */
    }
    resp_t r = {0};
    REQUIRE(client_read(&c, &r) == 0);
    CHECK_EQ(r.status, 400);
    CHECK(strstr(r.body, "folding"));
    resp_free(&r);
    client_close(&c);
  }
  /* A value split across reads without a fold is fine. */
  client_t c;
  REQUIRE(client_open(&c, s.port) == 0);
  const char *ok = "GET /p HTTP/1.1\r\nHost: h\r\nX-A: a b\r\n\r\n";
  for (const char *p = ok; *p; p++) {
    if (client_send(&c, p, 1)) break;
    sleep_ms(1);
  }
  resp_t r = {0};
  REQUIRE(client_read(&c, &r) == 0);
  CHECK_EQ(r.status, 200);
  resp_free(&r);
  client_close(&c);
  srv_stop(&s);
}

/* A body dripped just inside the gap timeout still ends at the total deadline. */
static void test_sock_body_total_deadline(void) {
  srv_t s;
  atp_http_config_t cfg = echo_config();
  cfg.body_timeout_ms = 300;
  cfg.body_total_timeout_ms = 600;
  REQUIRE(srv_start(&s, &cfg) == 0);
  client_t c;
  REQUIRE(client_open(&c, s.port) == 0);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  CHECK(client_sends(
            &c, "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n") == 0);
  char peek;
  for (int i = 0; i < 20; i++) {
    sleep_ms(100); /* well inside the 300 ms gap */
    if (recv(c.fd, &peek, 1, MSG_PEEK | MSG_DONTWAIT) == 1) break; /* answered */
    if (client_sends(&c, "x")) break;
  }
  resp_t r = {0};
  REQUIRE(client_read(&c, &r) == 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  CHECK_EQ(r.status, 408);
  CHECK(strstr(r.body, "body"));
  resp_free(&r);
  double secs =
      (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
  CHECK(secs > 0.5 && secs < 1.5);
  client_close(&c);
  srv_stop(&s);
}

static void test_sock_graceful_stop(void) {
  srv_t s;
  atp_http_config_t cfg = echo_config();
  REQUIRE(srv_start(&s, &cfg) == 0);
  client_t busy, idle;
  REQUIRE(client_open(&busy, s.port) == 0);
  REQUIRE(client_open(&idle, s.port) == 0);
  resp_t r = {0};
  CHECK(client_sends(&idle, "GET /i HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
  REQUIRE(client_read(&idle, &r) == 0);
  resp_free(&r);
  /* A request in flight: head and part of the body sent. */
  CHECK(client_sends(
            &busy, "POST /f HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nab") == 0);
  sleep_ms(50);
  atp_http_server_stop(s.server);
  sleep_ms(100);
  CHECK(client_sees_close(&idle));
  CHECK(!atomic_load(&s.run_returned));
  CHECK(client_sends(&busy, "cde") == 0);
  REQUIRE(client_read(&busy, &r) == 0);
  CHECK_EQ(r.status, 200);
  CHECK(strcmp(r.body, "POST /f q= ct= auth= b=abcde") == 0);
  CHECK(strstr(r.head, "Connection: close\r\n"));
  resp_free(&r);
  CHECK(client_sees_close(&busy));
  pthread_join(s.thread, NULL);
  CHECK(atomic_load(&s.run_returned));
  /* No longer accepting. */
  client_t late;
  CHECK(client_open(&late, s.port) != 0);
  client_close(&late);
  client_close(&busy);
  client_close(&idle);
  atp_http_server_destroy(s.server);
}

static void test_sock_stop_forces_after_grace(void) {
  srv_t s;
  atp_http_config_t cfg = echo_config();
  cfg.stop_timeout_ms = 200;
  REQUIRE(srv_start(&s, &cfg) == 0);
  client_t c;
  REQUIRE(client_open(&c, s.port) == 0);
  CHECK(client_sends(&c, "GET /never HTTP/1.1\r\nHost: t\r\n") == 0);
  sleep_ms(30);
  atp_http_server_stop(s.server);
  CHECK(client_sees_close(&c));
  pthread_join(s.thread, NULL);
  CHECK(atomic_load(&s.run_returned));
  client_close(&c);
  atp_http_server_destroy(s.server);
}

static void test_sock_connection_limit(void) {
  srv_t s;
  atp_http_config_t cfg = echo_config();
  cfg.connections_max = 2;
  REQUIRE(srv_start(&s, &cfg) == 0);
  client_t a, b, c;
  resp_t r = {0};
  REQUIRE(client_open(&a, s.port) == 0);
  REQUIRE(client_open(&b, s.port) == 0);
  CHECK(client_sends(&a, "GET /a HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
  CHECK(client_sends(&b, "GET /b HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
  REQUIRE(client_read(&a, &r) == 0);
  resp_free(&r);
  REQUIRE(client_read(&b, &r) == 0);
  resp_free(&r);
  REQUIRE(client_open(&c, s.port) == 0); /* the kernel accepts; the server refuses */
  client_sends(&c, "GET /c HTTP/1.1\r\nHost: t\r\n\r\n");
  /* The contract's answer to a configured limit: 429 with Retry-After. */
  if (client_read(&c, &r) == 0) {
    CHECK_EQ(r.status, 429);
    CHECK(strstr(r.head, "\r\nRetry-After: 1\r\n"));
    CHECK(strstr(r.body, "\"code\":\"too_many_requests\""));
    resp_free(&r);
  }
  CHECK(client_sees_close(&c));
  client_close(&c);
  /* The first two still work; closing one makes room. */
  CHECK(client_sends(&a, "GET /a2 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
  REQUIRE(client_read(&a, &r) == 0);
  CHECK_EQ(r.status, 200);
  resp_free(&r);
  client_close(&b);
  sleep_ms(50);
  REQUIRE(client_open(&c, s.port) == 0);
  CHECK(client_sends(&c, "GET /c2 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
  REQUIRE(client_read(&c, &r) == 0);
  CHECK_EQ(r.status, 200);
  resp_free(&r);
  client_close(&c);
  client_close(&a);
  srv_stop(&s);
}

static void test_sock_threads(void) {
  srv_t s;
  atp_http_config_t cfg = echo_config();
  cfg.threads = 3;
  REQUIRE(srv_start(&s, &cfg) == 0);
  int before = atomic_load(&logged);
  for (int i = 0; i < 12; i++) {
    client_t c;
    REQUIRE(client_open(&c, s.port) == 0);
    resp_t r = {0};
    CHECK(client_sends(&c, "GET /t HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    REQUIRE(client_read(&c, &r) == 0);
    CHECK_EQ(r.status, 200);
    resp_free(&r);
    client_close(&c);
  }
  srv_stop(&s);
  CHECK(atomic_load(&logged) - before == 12);
}

static void test_create_errors(void) {
  atp_http_config_t cfg = echo_config();
  atp_http_server_t *s = NULL;
  char err[128];
  cfg.threads = 0;
  CHECK(atp_http_server_create(&cfg, &s, err, sizeof err) < 0);
  CHECK(s == NULL);
  cfg.threads = 1;
  cfg.host = "256.1.2.3";
  CHECK(atp_http_server_create(&cfg, &s, err, sizeof err) < 0);
  CHECK(strlen(err) > 0);
  /* Created but never run: destroy cleans up. */
  cfg = echo_config();
  REQUIRE(atp_http_server_create(&cfg, &s, err, sizeof err) == 0);
  CHECK(atp_http_server_port(s) > 0);
  atp_http_server_destroy(s);
}

TEST_MAIN(RUN(test_feed_get); RUN(test_feed_pipeline_order);
          RUN(test_feed_chunked_body); RUN(test_feed_head_and_status);
          RUN(test_feed_close_and_http10); RUN(test_feed_errors);
          RUN(test_feed_framing_strict); RUN(test_feed_error_hook);
          RUN(test_feed_expect_continue_and_other); RUN(test_feed_big_bodies);
          RUN(test_feed_garbage); RUN(test_sock_keepalive_and_pipeline);
          RUN(test_sock_client_never_reads); RUN(test_sock_chunked_and_close);
          RUN(test_sock_limits); RUN(test_sock_timeouts);
          RUN(test_sock_fold_across_reads); RUN(test_sock_body_total_deadline);
          RUN(test_sock_graceful_stop); RUN(test_sock_stop_forces_after_grace);
          RUN(test_sock_connection_limit); RUN(test_sock_threads);
          RUN(test_create_errors))
