/* http_client.c - libcurl's multi interface on a libuv loop
 * (include/atp/http_client.h).
 *
 * curl tells us which sockets it wants watched (CURLMOPT_SOCKETFUNCTION) and
 * when it next wants to be called without socket activity
 * (CURLMOPT_TIMERFUNCTION); the loop watches each socket with a uv_poll_t and
 * keeps one uv_timer_t, and both call curl_multi_socket_action. After every
 * such call the finished transfers are collected (curl_multi_info_read) and
 * their callbacks run: outside curl's own callbacks, so a callback may start
 * the next request at once.
 *
 * Bounds: a total timeout per request (CURLOPT_TIMEOUT_MS, connect included),
 * a connect timeout, an answer body bound (the write callback refuses more),
 * and ATP_HTTP_CLIENT_REQUESTS_MAX in flight. curl is told NOSIGNAL, since
 * it runs on a thread of a process that handles its own signals.
 */
#include "atp/http_client.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "atp/assert.h"
#include "atp/clock.h"
#include "atp/error.h"
#include "atp/memory.h"
#include "atp/version.h"

#define CONNECT_TIMEOUT_MS_DEFAULT 5000u
#define BODY_BYTES_MAX_DEFAULT     (4u << 20)

typedef struct request request_t;
typedef struct socket_watch socket_watch_t;

struct request {
  atp_http_client_t *client;
  CURL *easy;
  struct curl_slist *headers;
  atp_buf_t answer; /* the body so far; bounded by body_bytes_max */
  bool overflow;    /* the answer passed the bound: the transfer was cut */
  uint32_t timeout_ms;
  int64_t started_ms;
  atp_http_done_fn done;
  void *ctx;
  request_t *prev, *next; /* in the client's list of requests in flight */
  char error[CURL_ERROR_SIZE];
};

/* One socket curl asked us to watch; freed from its close callback. */
struct socket_watch {
  uv_poll_t poll;
  atp_http_client_t *client;
  curl_socket_t fd;
  socket_watch_t *prev, *next; /* in the client's list */
};

struct atp_http_client {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer; /* curl's timeout */
  atp_http_client_config_t config;
  request_t *requests; /* in flight, newest first */
  uint32_t in_flight;
  socket_watch_t *watches; /* sockets being watched */
  uint32_t handles_open;   /* the timer and the watches not yet closed */
  bool closing;
  void (*closed)(void *ctx);
  void *closed_ctx;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init(void) {
  curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void handle_closed(atp_http_client_t *c) {
  ATP_ASSERT(c->handles_open > 0);
  if (--c->handles_open > 0) return;
  /* Everything is closed: the client goes, and its owner learns it. */
  void (*closed)(void *) = c->closed;
  void *ctx = c->closed_ctx;
  atp_free(c);
  if (closed) closed(ctx);
}

static void on_watch_closed(uv_handle_t *h) {
  socket_watch_t *w = h->data;
  atp_http_client_t *c = w->client;
  atp_free(w);
  handle_closed(c);
}

static void watch_close(socket_watch_t *w) {
  atp_http_client_t *c = w->client;
  if (w->prev)
    w->prev->next = w->next;
  else
    c->watches = w->next;
  if (w->next) w->next->prev = w->prev;
  uv_poll_stop(&w->poll);
  uv_close((uv_handle_t *)&w->poll, on_watch_closed);
}

/* Runs the callbacks of every transfer curl finished. */
static void finish(request_t *rq, CURLcode result, const char *why);

static void collect_done(atp_http_client_t *c) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(c->multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    request_t *rq = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&rq);
    ATP_ASSERT(rq && rq->easy == m->easy_handle);
    finish(rq, m->data.result, NULL);
  }
}

static void on_poll(uv_poll_t *h, int status, int events) {
  socket_watch_t *w = h->data;
  atp_http_client_t *c = w->client;
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  int running = 0;
  curl_multi_socket_action(c->multi, w->fd, flags, &running);
  collect_done(c);
}

static void on_timer(uv_timer_t *t) {
  atp_http_client_t *c = t->data;
  int running = 0;
  curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  collect_done(c);
}

/* CURLMOPT_TIMERFUNCTION: -1 stops the timer; 0 means "soon", which the
 * timer gives on the next loop iteration (calling curl from inside its own
 * callback is not allowed). */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
  (void)multi;
  atp_http_client_t *c = userp;
  if (c->closing) return 0;
  if (timeout_ms < 0)
    uv_timer_stop(&c->timer);
  else
    uv_timer_start(&c->timer, on_timer, (uint64_t)timeout_ms, 0);
  return 0;
}

/* CURLMOPT_SOCKETFUNCTION: watch, rewatch or forget one socket. */
static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp,
                          void *socketp) {
  (void)easy;
  atp_http_client_t *c = userp;
  socket_watch_t *w = socketp;
  if (what == CURL_POLL_REMOVE || c->closing) {
    if (w) {
      curl_multi_assign(c->multi, fd, NULL);
      watch_close(w);
    }
    return 0;
  }
  if (!w) {
    w = atp_calloc(1, sizeof *w);
    if (!w) return -1; /* curl fails the transfer */
    if (uv_poll_init_socket(c->loop, &w->poll, fd) != 0) {
      atp_free(w);
      return -1;
    }
    w->poll.data = w;
    w->client = c;
    w->fd = fd;
    w->next = c->watches;
    if (w->next) w->next->prev = w;
    c->watches = w;
    c->handles_open++;
    curl_multi_assign(c->multi, fd, w);
  }
  int events = 0;
  if (what & CURL_POLL_IN) events |= UV_READABLE;
  if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
  uv_poll_start(&w->poll, events, on_poll);
  return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp) {
  request_t *rq = userp;
  size_t n = size * nmemb;
  /* The buffer holds one byte more than the bound, for the NUL. */
  if (rq->answer.len + n > rq->client->config.body_bytes_max ||
      atp_buf_append(&rq->answer, data, n) != 0) {
    rq->overflow = true;
    return 0; /* curl ends the transfer with CURLE_WRITE_ERROR */
  }
  return n;
}

static void request_free(request_t *rq) {
  if (rq->easy) curl_easy_cleanup(rq->easy);
  curl_slist_free_all(rq->headers);
  atp_buf_free(&rq->answer);
  atp_free(rq);
}

static void finish(request_t *rq, CURLcode result, const char *why) {
  atp_http_client_t *c = rq->client;
  if (rq->prev)
    rq->prev->next = rq->next;
  else
    c->requests = rq->next;
  if (rq->next) rq->next->prev = rq->prev;
  ATP_ASSERT(c->in_flight > 0);
  c->in_flight--;
  curl_multi_remove_handle(c->multi, rq->easy);

  char error[CURL_ERROR_SIZE + 64];
  long status = 0;
  if (why) {
    snprintf(error, sizeof error, "%s", why);
  } else if (rq->overflow) {
    snprintf(error, sizeof error, "answer over %zu bytes", c->config.body_bytes_max);
  } else if (result != CURLE_OK) {
    snprintf(error, sizeof error, "%s",
             rq->error[0] ? rq->error : curl_easy_strerror(result));
  } else {
    error[0] = 0;
    curl_easy_getinfo(rq->easy, CURLINFO_RESPONSE_CODE, &status);
  }
  /* The body is handed out NUL-terminated: one byte past len, not counted. */
  if (atp_buf_append(&rq->answer, "", 1) == 0) rq->answer.len--;
  atp_http_response_t res = {
      .status = error[0] ? 0 : (int)status,
      .body = error[0] || !rq->answer.data ? "" : rq->answer.data,
      .body_bytes = error[0] || !rq->answer.data ? 0 : rq->answer.len,
      .error = error,
      .elapsed_ms = atp_mono_ms() - rq->started_ms,
  };
  rq->done(rq->ctx, &res);
  request_free(rq);
}

int atp_http_client_create(uv_loop_t *loop, const atp_http_client_config_t *config,
                           atp_http_client_t **out) {
  ATP_ASSERT(loop && out);
  *out = NULL;
  pthread_once(&curl_once, curl_init);
  if (curl_init_rc != CURLE_OK) return ATP_EINTERNAL;
  atp_http_client_t *c = atp_calloc(1, sizeof *c);
  if (!c) return ATP_ENOMEM;
  c->loop = loop;
  if (config) c->config = *config;
  if (!c->config.connect_timeout_ms)
    c->config.connect_timeout_ms = CONNECT_TIMEOUT_MS_DEFAULT;
  if (!c->config.body_bytes_max) c->config.body_bytes_max = BODY_BYTES_MAX_DEFAULT;
  c->multi = curl_multi_init();
  if (!c->multi) {
    atp_free(c);
    return ATP_EINTERNAL;
  }
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  c->handles_open = 1;
  *out = c;
  return 0;
}

/* The easy handle of one POST; 0 or ATP_ENOMEM. */
static int request_setup(request_t *rq, const char *url, const char *const *headers,
                         uint32_t header_count, const char *body, size_t body_bytes) {
  CURL *e = rq->easy;
  /* Without "Expect:" curl would wait for a 100 Continue on larger bodies:
   * one round trip more for nothing. */
  rq->headers = curl_slist_append(NULL, "Expect:");
  for (uint32_t i = 0; rq->headers && i < header_count; i++) {
    struct curl_slist *l = curl_slist_append(rq->headers, headers[i]);
    if (!l) return ATP_ENOMEM;
    rq->headers = l;
  }
  if (!rq->headers) return ATP_ENOMEM;
  bool ok = curl_easy_setopt(e, CURLOPT_URL, url) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_HTTPHEADER, rq->headers) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_bytes) ==
                CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_WRITEDATA, rq) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_PRIVATE, rq) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_ERRORBUFFER, rq->error) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)rq->timeout_ms) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                             (long)rq->client->config.connect_timeout_ms) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_USERAGENT, "atpd/" ATP_VERSION) == CURLE_OK &&
            curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "") == CURLE_OK;
  return ok ? 0 : ATP_ENOMEM;
}

int atp_http_client_post(atp_http_client_t *c, const char *url,
                         const char *const *headers, uint32_t header_count,
                         const char *body, size_t body_bytes, uint32_t timeout_ms,
                         atp_http_done_fn done, void *ctx) {
  ATP_ASSERT(c && url && done && timeout_ms > 0);
  ATP_ASSERT(header_count <= ATP_HTTP_CLIENT_HEADERS_MAX);
  if (c->closing) return ATP_EUNAVAILABLE;
  if (c->in_flight >= ATP_HTTP_CLIENT_REQUESTS_MAX) return ATP_EFULL;
  request_t *rq = atp_calloc(1, sizeof *rq);
  if (!rq) return ATP_ENOMEM;
  rq->client = c;
  rq->timeout_ms = timeout_ms;
  rq->done = done;
  rq->ctx = ctx;
  rq->started_ms = atp_mono_ms();
  atp_buf_init(&rq->answer, c->config.body_bytes_max + 1);
  rq->easy = curl_easy_init();
  int rc = rq->easy ? request_setup(rq, url, headers, header_count, body ? body : "",
                                    body_bytes)
                    : ATP_ENOMEM;
  if (rc == 0 && curl_multi_add_handle(c->multi, rq->easy) != CURLM_OK) rc = ATP_ENOMEM;
  if (rc != 0) {
    request_free(rq);
    return rc;
  }
  rq->next = c->requests;
  if (rq->next) rq->next->prev = rq;
  c->requests = rq;
  c->in_flight++;
  return 0;
}

uint32_t atp_http_client_in_flight(const atp_http_client_t *c) {
  return c->in_flight;
}

static void on_timer_closed(uv_handle_t *h) {
  handle_closed(h->data);
}

void atp_http_client_close(atp_http_client_t *c, void (*closed)(void *ctx), void *ctx) {
  ATP_ASSERT(c && !c->closing);
  c->closed = closed;
  c->closed_ctx = ctx;
  /* Requests first (their callbacks may still look at the client), then the
   * sockets curl keeps for its connection cache, then curl, then the timer.
   * closing makes curl's callbacks forget sockets instead of watching, and
   * a callback that posts again is refused. */
  c->closing = true;
  while (c->requests) finish(c->requests, CURLE_OK, "cancelled");
  while (c->watches) {
    curl_multi_assign(c->multi, c->watches->fd, NULL);
    watch_close(c->watches);
  }
  curl_multi_cleanup(c->multi);
  c->multi = NULL;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_timer_closed);
}
