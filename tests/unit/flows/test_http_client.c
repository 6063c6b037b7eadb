/* test_http_client.c - libcurl's multi interface on a libuv loop
 * (src/flows/http_client.c).
 *
 * A loopback server on a thread of its own answers each connection as the
 * test asks (a normal answer, silence, a large body); the client runs on the
 * test's loop. Every request must end with exactly one callback, and within
 * its timeout when the server is silent: the bound is what keeps the Shopify
 * push from hanging on a stuck connection.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "atp/clock.h"
#include "atp/error.h"
#include "atp/http_client.h"
#include "test.h"

typedef enum { ANSWER_OK, ANSWER_SILENT, ANSWER_BIG } answer_t;

typedef struct {
  int listen_fd;
  int port;
  answer_t mode;
  pthread_t thread;
  char request[8192]; /* what the last connection sent */
  size_t request_len;
} server_t;

static void *server_main(void *arg) {
  server_t *s = arg;
  int fd = accept(s->listen_fd, NULL, NULL);
  if (fd < 0) return NULL;
  /* The request: headers, then Content-Length bytes of body. */
  s->request_len = 0;
  for (;;) {
    ssize_t n =
        read(fd, s->request + s->request_len, sizeof s->request - 1 - s->request_len);
    if (n <= 0) break;
    s->request_len += (size_t)n;
    s->request[s->request_len] = 0;
    char *end = strstr(s->request, "\r\n\r\n");
    char *cl = strcasestr(s->request, "content-length:");
    if (end && cl &&
        s->request_len >= (size_t)(end + 4 - s->request) + strtoul(cl + 15, 0, 10))
      break;
  }
  if (s->mode == ANSWER_OK) {
    const char *a = "HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello";
    (void)!write(fd, a, strlen(a));
  } else if (s->mode == ANSWER_BIG) {
    static char big[70000];
    int h = snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n",
                     65536);
    memset(big + h, 'x', 65536);
    (void)!write(fd, big, (size_t)h + 65536);
  } else {
    sleep(2); /* silent: longer than the request's timeout */
  }
  close(fd);
  return NULL;
}

static void server_start(server_t *s, answer_t mode) {
  memset(s, 0, sizeof *s);
  s->mode = mode;
  s->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bind(s->listen_fd, (struct sockaddr *)&a, sizeof a);
  listen(s->listen_fd, 4);
  socklen_t len = sizeof a;
  getsockname(s->listen_fd, (struct sockaddr *)&a, &len);
  s->port = ntohs(a.sin_port);
  pthread_create(&s->thread, NULL, server_main, s);
}

static void server_stop(server_t *s) {
  shutdown(s->listen_fd, SHUT_RDWR);
  pthread_join(s->thread, NULL);
  close(s->listen_fd);
}

typedef struct {
  int calls;
  int status;
  char body[128];
  size_t body_bytes;
  char error[256];
  int64_t elapsed_ms;
} seen_t;

static void on_done(void *ctx, const atp_http_response_t *r) {
  seen_t *s = ctx;
  s->calls++;
  s->status = r->status;
  s->body_bytes = r->body_bytes;
  snprintf(s->body, sizeof s->body, "%s", r->body);
  snprintf(s->error, sizeof s->error, "%s", r->error);
  s->elapsed_ms = r->elapsed_ms;
}

static int closed_calls;
static void on_closed(void *ctx) {
  (void)ctx;
  closed_calls++;
}

/* Runs one POST against a server answering mode; the client is closed after. */
static void post_once(answer_t mode, uint32_t timeout_ms, size_t body_max, seen_t *seen,
                      server_t *srv) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  atp_http_client_config_t cfg = {.body_bytes_max = body_max};
  atp_http_client_t *c = NULL;
  CHECK_EQ(atp_http_client_create(&loop, &cfg, &c), 0);
  server_start(srv, mode);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/graphql.json", srv->port);
  const char *headers[] = {"Content-Type: application/json",
                           "X-Shopify-Access-Token: t"};
  memset(seen, 0, sizeof *seen);
  CHECK_EQ(atp_http_client_post(c, url, headers, 2, "{\"q\":1}", 7, timeout_ms, on_done,
                                seen),
           0);
  CHECK_EQ(atp_http_client_in_flight(c), 1);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ(atp_http_client_in_flight(c), 0);
  closed_calls = 0;
  atp_http_client_close(c, on_closed, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ(closed_calls, 1);
  CHECK_EQ(uv_loop_close(&loop), 0); /* every handle was closed */
  server_stop(srv);
}

static void test_post_answers_status_and_body(void) {
  seen_t seen;
  server_t srv;
  post_once(ANSWER_OK, 5000, 0, &seen, &srv);
  CHECK_EQ(seen.calls, 1);
  CHECK_EQ(seen.status, 201);
  CHECK(strcmp(seen.body, "hello") == 0);
  CHECK_EQ(seen.body_bytes, 5);
  CHECK(seen.error[0] == 0);
  CHECK(strncmp(srv.request, "POST /graphql.json HTTP/1.1\r\n", 29) == 0);
  CHECK(strstr(srv.request, "X-Shopify-Access-Token: t\r\n") != NULL);
  CHECK(strstr(srv.request, "Content-Type: application/json\r\n") != NULL);
  CHECK(strstr(srv.request, "\r\n\r\n{\"q\":1}") != NULL);
  CHECK(strstr(srv.request, "Expect:") == NULL);
  /* An answer of exactly the bound passes. */
  post_once(ANSWER_OK, 5000, 5, &seen, &srv);
  CHECK_EQ(seen.status, 201);
  CHECK_EQ(seen.body_bytes, 5);
}

static void test_silent_server_ends_at_the_timeout(void) {
  seen_t seen;
  server_t srv;
  int64_t t0 = atp_mono_ms();
  post_once(ANSWER_SILENT, 300, 0, &seen, &srv);
  int64_t took = atp_mono_ms() - t0;
  CHECK_EQ(seen.calls, 1);
  CHECK_EQ(seen.status, 0);
  CHECK(strstr(seen.error, "timed out") != NULL);
  CHECK(seen.elapsed_ms >= 290 && seen.elapsed_ms < 1500);
  CHECK(took < 2500); /* the server's own sleep, not the client, sets the rest */
}

static void test_body_over_the_bound_is_an_error(void) {
  seen_t seen;
  server_t srv;
  post_once(ANSWER_BIG, 5000, 1000, &seen, &srv);
  CHECK_EQ(seen.calls, 1);
  CHECK_EQ(seen.status, 0);
  CHECK(strstr(seen.error, "answer over 1000 bytes") != NULL);
  CHECK_EQ(seen.body_bytes, 0);
}

static void test_refused_connection_and_close_in_flight(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  atp_http_client_t *c = NULL;
  CHECK_EQ(atp_http_client_create(&loop, NULL, &c), 0);
  /* A port nobody listens on: refused at once, a transport error. */
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET,
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  bind(fd, (struct sockaddr *)&a, sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &len);
  close(fd);
  char url[64];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", ntohs(a.sin_port));
  seen_t seen = {0};
  CHECK_EQ(atp_http_client_post(c, url, NULL, 0, "", 0, 2000, on_done, &seen), 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ(seen.calls, 1);
  CHECK_EQ(seen.status, 0);
  CHECK(seen.error[0] != 0);
  /* Closing with a request in flight: its callback runs once, "cancelled". */
  server_t srv;
  server_start(&srv, ANSWER_SILENT);
  snprintf(url, sizeof url, "http://127.0.0.1:%d/", srv.port);
  memset(&seen, 0, sizeof seen);
  CHECK_EQ(atp_http_client_post(c, url, NULL, 0, "x", 1, 5000, on_done, &seen), 0);
  uv_run(&loop, UV_RUN_NOWAIT);
  closed_calls = 0;
  atp_http_client_close(c, on_closed, NULL);
  CHECK_EQ(seen.calls, 1);
  CHECK(strcmp(seen.error, "cancelled") == 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK_EQ(closed_calls, 1);
  CHECK_EQ(uv_loop_close(&loop), 0);
  server_stop(&srv);
}

TEST_MAIN(RUN(test_post_answers_status_and_body);
          RUN(test_silent_server_ends_at_the_timeout);
          RUN(test_body_over_the_bound_is_an_error);
          RUN(test_refused_connection_and_close_in_flight))
