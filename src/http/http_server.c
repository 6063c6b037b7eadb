/* http_server.c - the HTTP/1.1 server: libuv loops, llhttp parsing (see http.h).
 *
 * A connection has two layers in one struct. The core takes bytes in, runs
 * llhttp over them, assembles a request (URL, the few headers the service
 * reads, the body), calls the handler when the request is complete and
 * serialises the response into an output queue; it knows nothing of sockets.
 * The socket layer reads into the core, writes the output queue with one
 * uv_write per batch (a read's pipelined responses go out together), and runs
 * the connection's deadline timer. atp_http_feed drives the same core with no
 * socket, so the fuzz harness exercises the code that serves real traffic.
 *
 * Output: two queues per connection, one being written and one being filled.
 * Heads and small bodies are copied into the queue's byte buffer; a large body
 * is moved (not copied) into the queue and written in place with writev.
 * Backpressure: when the queued responses reach ATP_HTTP_PIPELINE_MAX or
 * ATP_HTTP_OUT_HIGH_WATER_BYTES, on_message_complete pauses llhttp, the unparsed rest
 * of the read is kept in the connection's input buffer and reading stops until
 * the write in flight completes. A client that never reads pins at most that.
 *
 * Timeouts use one timer per connection with a lazy deadline: the hot path
 * only stores a later deadline; the timer, when it fires early, re-arms itself
 * for the rest. It is restarted only when a deadline moves earlier (a request
 * head split across reads starts the header timeout).
 *
 * Thread: everything runs on its loop's thread except atp_http_server_stop
 * (any thread: an atomic flag and uv_async_send) and the request id counter.
 */
#include "atp/http.h"

#include <errno.h>
#include <llhttp.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "atp/assert.h"
#include "atp/error.h"
#include "atp/limits.h"

#define READ_BYTES            (64 * 1024) /* one loop-wide read buffer */
#define OUT_INLINE_BODY_BYTES (16 * 1024) /* bodies up to this are copied */
#define OUT_BIG_MAX           4           /* moved bodies per output queue */
/* A request's buffers above this are freed when it ends, so an idle keep-alive
 * connection holds a few small buffers whatever its last request was. */
#define KEEP_BUF_BYTES     (32 * 1024)
#define ARENA_CHUNK_BYTES  (16 * 1024)
#define HEAD_BUF_BYTES_MAX (ATP_HTTP_URL_BYTES_MAX + ATP_HTTP_HEADER_BYTES_MAX + 64)
#define FIELD_BYTES        24 /* longest header name we look for, rounded up */
#define STOP_POLL_MS       20 /* how soon a drain notices a hurry */
#define LISTEN_BACKLOG     1024
#define REQUEST_ID_BLOCK   4096

enum {
  HDR_NONE = -1,
  HDR_CONTENT_TYPE,
  HDR_ACCEPT,
  HDR_AUTHORIZATION,
  HDR_EXPECT,
  HDR_HOST,
  HDR_TRANSFER_ENCODING,
  HDR_REQUEST_ID,    /* X-Request-Id: handed to the handler */
  HDR_LAST_EVENT_ID, /* Last-Event-ID: handed to the handler (SSE resume) */
  HDR_SHOPIFY,       /* the X-Shopify-* headers, ATP_HTTP_SHOPIFY_* after it */
  HDR_COUNT = HDR_SHOPIFY + ATP_HTTP_SHOPIFY_HEADERS
};

/* Process-wide request ids; loops take blocks so the hot path touches no
 * shared cache line. Relaxed suffices: only uniqueness matters, not order. */
static _Atomic uint64_t request_ids = 1;

#define DEFERRED_PATH_BYTES 128 /* a deferred request's path, for the log */

typedef struct {
  atp_buf_t bytes;            /* heads and inlined bodies, in order */
  atp_buf_t big[OUT_BIG_MAX]; /* moved bodies, written in place */
  size_t big_at[OUT_BIG_MAX]; /* big[i] goes before bytes[big_at[i]] */
  uint32_t big_count;
  uint32_t responses; /* responses in this queue */
  size_t total_bytes; /* bytes.len plus the big bodies */
} outq_t;

typedef struct loop_ctx loop_ctx_t;
typedef struct conn conn_t;

struct conn {
  /* ---- core: parse, dispatch, serialise ---- */
  llhttp_t parser;
  const atp_http_config_t *config;
  loop_ctx_t *lp;     /* NULL when driven by atp_http_feed */
  atp_arena_t arena;  /* the handler's; reset after each response */
  atp_buf_t head;     /* URL, NUL, then kept header values each + NUL */
  atp_buf_t body;     /* request body plus a NUL; len_max = limit + 1 */
  atp_buf_t res_body; /* handed to the handler as res->body */
  outq_t out[2];      /* out[pending] fills; out[!pending] is in flight */
  int pending;
  atp_buf_t in;  /* unparsed input held back by backpressure */
  size_t in_off; /* parsed prefix of in */

  /* the request being parsed; reset at message begin */
  size_t url_len;
  size_t path_off, path_len, query_off, query_len;
  size_t hv_off[HDR_COUNT], hv_len[HDR_COUNT];
  bool hv_set[HDR_COUNT];
  char field[FIELD_BYTES];
  uint32_t field_len;    /* FIELD_BYTES + 1: longer than any we keep */
  int field_kind;        /* HDR_* of the value being read */
  size_t head_bytes;     /* request line and headers so far */
  const char *head_mark; /* last counted byte in the current chunk, or NULL */
  size_t trailer_bytes;
  size_t body_limit;
  size_t body_expected;     /* Content-Length, or 0 (none, or chunked) */
  uint64_t head_started_ms; /* loop time of the first byte of the head */
  uint64_t body_started_ms; /* loop time the head completed: the body's deadline */
  int64_t started_ns;
  bool in_message; /* between message begin and complete */
  bool headers_done;
  bool keep_alive;
  bool http10;
  bool te_unknown;   /* a Transfer-Encoding names a coding other than chunked */
  bool url_too_long; /* over ATP_HTTP_URL_BYTES_MAX: 414 once Accept is known */
  /* Obsolete line folding detection (see fold_scan): the bytes between the
   * head's spans are scanned as they go by. */
  const char *exec_start; /* the buffer llhttp is parsing */
  const char *sep_from;   /* end of the last head span in it; NULL: none yet */
  bool sep_lf;            /* the last separator byte scanned was LF */
  bool fold_armed;        /* a span of this head was seen (the first is not scanned) */
  int fail_err;           /* ATP_E* set by a callback that failed the request */
  const char *fail_message;
  /* A refusal found mid-head that waits for the head's end, so the answer can
   * honour an Accept sent later (0: none). */
  int deferred_err;
  const char *deferred_message;

  bool closing; /* parse no more; close once output is written */
  bool paused;  /* in holds input parsed later */

  /* ---- socket layer (unused by atp_http_feed) ---- */
  uv_tcp_t tcp;
  uv_timer_t timer;
  uv_write_t write_req;
  uv_shutdown_t shutdown_req;
  bool writing; /* write_req in flight for out[!pending] */
  bool reading;
  bool eof;       /* the client half-closed */
  bool lingering; /* shut down our side, discarding input till FIN */
  bool closed;    /* uv_close called */
  bool timer_armed;
  uint64_t deadline_ms;  /* loop time at which the connection times out */
  uint64_t timer_due_ms; /* when the armed timer fires */
  size_t linger_bytes;
  int handles_open;    /* tcp and timer until their close callbacks */
  conn_t *prev, *next; /* loop's connection list */
  /* Parked output (atp_http_response_t.hold_until): while nonzero, out[pending]
   * is not written until the loop's released value reaches it; every response
   * queued behind a parked one waits with it, so the order holds. */
  uint64_t hold_until;
  conn_t *held_prev, *held_next; /* loop's list of parked connections */
  bool held_linked;
  /* A deferred response (atp_http_response_t.defer): the request's id until
   * atp_http_server_answer delivers it (0: none). Nothing more is parsed
   * meanwhile, so what follows on the connection waits in order. */
  uint64_t deferred_id;
  int64_t deferred_started_ns;
  atp_http_method_t deferred_method;
  bool deferred_close;
  char deferred_path[DEFERRED_PATH_BYTES]; /* for the log hook */
  /* A streaming response (atp_http_stream_begin): its body comes through the
   * stream until it ends or the connection closes. NULL: none. */
  atp_http_stream_t *stream;
};

/* A streaming response's handle, shared by its connection (loop thread) and
 * its producer (any thread); see http.h. */
struct atp_http_stream {
  uv_mutex_t mu;      /* guards the fields up to conn */
  atp_buf_t pending;  /* sent, not yet moved to the connection's output */
  size_t backlog_max; /* pending plus unsent may not pass it */
  bool closed;        /* the connection is gone, or was cut: sends fail */
  bool cut;           /* the backlog passed its bound: close at once */
  bool ended;         /* the producer ended it: close once written */
  bool scheduled;     /* on lp's ready list (holding a reference) */
  atp_http_stream_t *next_ready;
  loop_ctx_t *lp; /* the connection's loop, set when the head is queued */
  conn_t *conn;   /* loop thread only; NULL once detached */
  /* Bytes in the connection's output queues, not yet written; the loop
   * stores it after every write, a sender reads it: relaxed, a bound. */
  _Atomic size_t unsent;
  atomic_int refs;
};

/* An answer to a deferred request, handed from another thread to its loop. */
typedef struct answer {
  struct answer *next;
  uint64_t request_id;
  uint64_t hold_until;
  int status;
  const char *content_type;
  char extra_header[ATP_HTTP_ANSWER_HEADER_BYTES]; /* "" or one "Name: value" */
  size_t body_len;
  char body[];
} answer_t;

struct loop_ctx {
  atp_http_server_t *server;
  int index;
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_async_t stop_async;
  uv_timer_t stop_timer;            /* force-closes what the stop grace left */
  uint64_t stop_deadline;           /* loop time the stop grace ends */
  uv_async_t release_async;         /* atp_http_server_release wakes the loop */
  uv_prepare_t turn_prepare;        /* config.turn, before each poll */
  _Atomic uint64_t released;        /* parked output up to this value may go */
  conn_t *held;                     /* connections with parked output */
  uv_async_t answer_async;          /* atp_http_server_answer wakes the loop */
  uv_mutex_t answer_mu;             /* guards answers, posts and answers_closed */
  answer_t *answers;                /* delivered, not yet queued (newest first) */
  bool answers_closed;              /* the loop finished: answers and posts refused */
  uv_async_t post_async;            /* atp_http_server_post wakes the loop */
  atp_http_post_t *posts;           /* queued continuations, newest first */
  atp_http_stream_t *streams_ready; /* streams with bytes or news (answer_mu) */
  bool answer_mu_inited;
  uv_thread_t thread;
  char *read_buf; /* READ_BYTES, shared by the loop's reads */
  conn_t *conns;
  uint32_t conn_count;      /* connections not yet freed */
  uint64_t id_next, id_end; /* request id block */
  bool loop_inited, handles_inited, listening, stopping, finished, threaded;
};

struct atp_http_server {
  atp_http_config_t config;
  int port;
  int threads;
  atomic_int stop_requested; /* 1 once stop was called (exchange: once) */
  atomic_bool hurry;         /* ends the stop grace now (atp_http_server_hurry) */
  bool ran;
  loop_ctx_t *loops;
};

/* The reason phrases of the statuses atpd sends, by status. The look-up is a
 * scan: 200, the common answer, is the second entry. */
static const struct {
  int status;
  const char *reason;
} status_reasons[] = {
    {100, "Continue"},
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {204, "No Content"},
    {206, "Partial Content"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {304, "Not Modified"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {406, "Not Acceptable"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {410, "Gone"},
    {411, "Length Required"},
    {412, "Precondition Failed"},
    {413, "Payload Too Large"},
    {414, "URI Too Long"},
    {415, "Unsupported Media Type"},
    {422, "Unprocessable Entity"},
    {428, "Precondition Required"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
    {505, "HTTP Version Not Supported"},
};

static const char *status_reason(int status) {
  for (size_t i = 0; i < sizeof status_reasons / sizeof status_reasons[0]; i++)
    if (status_reasons[i].status == status) return status_reasons[i].reason;
  return status < 300   ? "OK"
         : status < 400 ? "Redirect"
         : status < 500 ? "Client Error"
                        : "Server Error";
}

static uint32_t cfg_ms(uint32_t value, uint32_t fallback) {
  return value ? value : fallback;
}

/* ------------------------------------------------------------------------ */
/* Output queue                                                              */

static void outq_init(outq_t *q) {
  memset(q, 0, sizeof *q);
  atp_buf_init(&q->bytes, 0);
}

/* After the queue was written: keep the byte buffer unless it grew large. */
static void outq_release(outq_t *q) {
  for (uint32_t i = 0; i < q->big_count; i++) atp_buf_free(&q->big[i]);
  q->big_count = 0;
  q->responses = 0;
  q->total_bytes = 0;
  if (q->bytes.cap > KEEP_BUF_BYTES) atp_buf_free(&q->bytes);
  atp_buf_reset(&q->bytes);
}

static bool outq_empty(const outq_t *q) {
  return q->total_bytes == 0;
}

static int outq_iov(const outq_t *q, uv_buf_t *iov) {
  int n = 0;
  size_t at = 0;
  for (uint32_t i = 0; i < q->big_count; i++) {
    if (q->big_at[i] > at)
      iov[n++] = uv_buf_init(q->bytes.data + at, (unsigned)(q->big_at[i] - at));
    iov[n++] = uv_buf_init(q->big[i].data, (unsigned)q->big[i].len);
    at = q->big_at[i];
  }
  if (q->bytes.len > at)
    iov[n++] = uv_buf_init(q->bytes.data + at, (unsigned)(q->bytes.len - at));
  ATP_ASSERT(n <= 2 * OUT_BIG_MAX + 1);
  return n;
}

/* Responses queued and not yet written, in both queues. */
static bool out_full(const conn_t *c) {
  const outq_t *p = &c->out[c->pending];
  uint32_t responses = p->responses;
  size_t bytes = p->total_bytes;
  if (c->writing) {
    responses += c->out[!c->pending].responses;
    bytes += c->out[!c->pending].total_bytes;
  }
  return c->deferred_id || c->stream || responses >= ATP_HTTP_PIPELINE_MAX ||
         bytes >= ATP_HTTP_OUT_HIGH_WATER_BYTES;
}

/* ------------------------------------------------------------------------ */
/* Response serialisation                                                    */

static char *put_str(char *p, const char *s, size_t len) {
  memcpy(p, s, len);
  return p + len;
}
#define PUT_LIT(p, lit) put_str((p), (lit), sizeof(lit) - 1)

static char *put_u64(char *p, uint64_t v) {
  char tmp[20];
  int n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) *p++ = tmp[--n];
  return p;
}

typedef struct {
  int status;
  const char *content_type;
  const char *body;
  size_t body_len;
  atp_buf_t *body_buf; /* when body is its data: may be moved, not copied */
  const char *const *extra;
  uint32_t extra_count;
  bool head_only; /* HEAD: Content-Length but no body bytes */
  bool close;
  bool stream; /* a streaming head: no Content-Length, the body follows later */
} response_t;

/* Appends one response to the filling queue. On failure (out of memory) the
 * connection can only be closed: returns -1 and the caller marks closing. */
static int queue_response(conn_t *c, const response_t *r) {
  outq_t *q = &c->out[c->pending];
  int status = r->status;
  bool no_body = status == 204 || status == 304 || status < 200;
  bool send_body = !no_body && !r->head_only && r->body_len > 0 && !r->stream;
  const char *reason = status_reason(status);
  size_t reason_len = strlen(reason);
  size_t ct_len = (r->content_type && !no_body) ? strlen(r->content_type) : 0;
  size_t extra_len[ATP_HTTP_EXTRA_HEADERS_MAX] = {0};
  size_t need = 128 + reason_len + ct_len;
  for (uint32_t i = 0; i < r->extra_count; i++) {
    const char *h = r->extra[i];
    /* A CR or LF would let a header value split the response: drop it. */
    if (h && !strpbrk(h, "\r\n")) extra_len[i] = strlen(h);
    need += extra_len[i] + 2;
  }
  bool move = send_body && r->body_buf && r->body_len > OUT_INLINE_BODY_BYTES &&
              q->big_count < OUT_BIG_MAX;
  if (send_body && !move) need += r->body_len;
  char *start = atp_buf_reserve(&q->bytes, need);
  if (!start) return -1;
  char *p = PUT_LIT(start, "HTTP/1.1 ");
  *p++ = (char)('0' + status / 100 % 10);
  *p++ = (char)('0' + status / 10 % 10);
  *p++ = (char)('0' + status % 10);
  *p++ = ' ';
  p = put_str(p, reason, reason_len);
  p = PUT_LIT(p, "\r\n");
  if (ct_len) {
    p = PUT_LIT(p, "Content-Type: ");
    p = put_str(p, r->content_type, ct_len);
    p = PUT_LIT(p, "\r\n");
  }
  if (!no_body && !r->stream) {
    p = PUT_LIT(p, "Content-Length: ");
    p = put_u64(p, r->body_len);
    p = PUT_LIT(p, "\r\n");
  }
  for (uint32_t i = 0; i < r->extra_count; i++) {
    if (!extra_len[i]) continue;
    p = put_str(p, r->extra[i], extra_len[i]);
    p = PUT_LIT(p, "\r\n");
  }
  if (r->close)
    p = PUT_LIT(p, "Connection: close\r\n");
  else if (c->http10)
    p = PUT_LIT(p, "Connection: keep-alive\r\n");
  p = PUT_LIT(p, "\r\n");
  if (send_body && !move) p = put_str(p, r->body, r->body_len);
  size_t wrote = (size_t)(p - start);
  ATP_ASSERT(wrote <= need);
  q->bytes.len += wrote;
  q->total_bytes += wrote;
  if (move) {
    q->big[q->big_count] = *r->body_buf;
    q->big_at[q->big_count] = q->bytes.len;
    q->big_count++;
    q->total_bytes += r->body_len;
    atp_buf_init(r->body_buf, ATP_HTTP_RESPONSE_BYTES_MAX);
  }
  q->responses++;
  return 0;
}

/* JSON string body of the server's own errors. */
static size_t error_json(char *out, size_t cap, const char *code, const char *message) {
  size_t n = 0;
  const char *pre = "{\"error\":{\"code\":\"";
  n += (size_t)snprintf(out, cap, "%s%s\",\"message\":\"", pre, code);
  for (const char *m = message; *m && n + 8 < cap; m++) {
    unsigned char ch = (unsigned char)*m;
    if (ch == '"' || ch == '\\') {
      out[n++] = '\\';
      out[n++] = (char)ch;
    } else if (ch >= 0x20) {
      out[n++] = (char)ch;
    }
  }
  n += (size_t)snprintf(out + n, cap - n, "\"}}");
  return n < cap ? n : cap - 1;
}

/* ------------------------------------------------------------------------ */
/* Core: request assembly and dispatch                                       */

static uint64_t next_request_id(conn_t *c) {
  loop_ctx_t *lp = c->lp;
  if (!lp) return atomic_fetch_add_explicit(&request_ids, 1, memory_order_relaxed);
  if (lp->id_next == lp->id_end) {
    lp->id_next =
        atomic_fetch_add_explicit(&request_ids, REQUEST_ID_BLOCK, memory_order_relaxed);
    lp->id_end = lp->id_next + REQUEST_ID_BLOCK;
  }
  return lp->id_next++;
}

static atp_http_method_t map_method(uint8_t method) {
  switch (method) {
    case HTTP_GET:
      return ATP_HTTP_GET;
    case HTTP_HEAD:
      return ATP_HTTP_HEAD;
    case HTTP_POST:
      return ATP_HTTP_POST;
    case HTTP_PUT:
      return ATP_HTTP_PUT;
    case HTTP_DELETE:
      return ATP_HTTP_DELETE;
    case HTTP_PATCH:
      return ATP_HTTP_PATCH;
    case HTTP_OPTIONS:
      return ATP_HTTP_OPTIONS;
    default:
      return ATP_HTTP_OTHER;
  }
}

/* The request as the handler and the log see it; only what is known so far
 * when the head is incomplete (server errors). */
static void request_fill(conn_t *c, atp_http_request_t *req) {
  memset(req, 0, sizeof *req);
  req->method = ATP_HTTP_OTHER;
  req->method_name = "";
  req->path = "";
  req->query = "";
  req->body = "";
  req->arena = &c->arena;
  req->thread_index = c->lp ? c->lp->index : 0;
  req->request_id = next_request_id(c);
  req->started_ns = c->started_ns ? c->started_ns : (int64_t)uv_hrtime();
  if (!c->head.data) return;
  /* Headers read so far: an error answered mid-head still honours Accept. */
  const char **hv[HDR_COUNT] = {&req->content_type, &req->accept, &req->authorization,
                                NULL};
  size_t *hl[HDR_COUNT] = {&req->content_type_len, &req->accept_len,
                           &req->authorization_len, NULL};
  for (int k = 0; k < HDR_EXPECT; k++) {
    if (!c->hv_set[k]) continue;
    *hv[k] = c->head.data + c->hv_off[k];
    *hl[k] = c->hv_len[k];
  }
  if (c->hv_set[HDR_REQUEST_ID]) {
    req->x_request_id = c->head.data + c->hv_off[HDR_REQUEST_ID];
    req->x_request_id_len = c->hv_len[HDR_REQUEST_ID];
  }
  if (c->hv_set[HDR_LAST_EVENT_ID]) {
    req->last_event_id = c->head.data + c->hv_off[HDR_LAST_EVENT_ID];
    req->last_event_id_len = c->hv_len[HDR_LAST_EVENT_ID];
  }
  for (int k = 0; k < ATP_HTTP_SHOPIFY_HEADERS; k++) {
    if (!c->hv_set[HDR_SHOPIFY + k]) continue;
    req->shopify[k] = c->head.data + c->hv_off[HDR_SHOPIFY + k];
    req->shopify_len[k] = c->hv_len[HDR_SHOPIFY + k];
  }
  if (!c->headers_done) return;
  req->method = map_method(c->parser.method);
  req->method_name = llhttp_method_name((llhttp_method_t)c->parser.method);
  req->path = c->head.data + c->path_off;
  req->path_len = c->path_len;
  req->query = c->head.data + c->query_off;
  req->query_len = c->query_len;
  if (c->body.len) {
    req->body = c->body.data;
    req->body_len = c->body.len;
  }
}

/* Gives back what one large request grew, keeping small buffers for the next:
 * called when a request ends, so an idle connection pins little. */
static void request_shrink(conn_t *c) {
  /* The arena keeps up to four chunks across resets; more than one left means
   * a large request: start the next one from nothing. (The arena is always
   * reset, nothing allocated from it, when this runs.) */
  if (c->arena.bytes_held > ARENA_CHUNK_BYTES) {
    atp_arena_destroy(&c->arena);
    atp_arena_init(&c->arena, ARENA_CHUNK_BYTES, ATP_HTTP_ARENA_BYTES_MAX);
  }
  if (c->head.cap > KEEP_BUF_BYTES) atp_buf_free(&c->head);
  if (c->body.cap > KEEP_BUF_BYTES) atp_buf_free(&c->body);
  if (c->res_body.cap > KEEP_BUF_BYTES) atp_buf_free(&c->res_body);
  atp_buf_reset(&c->head);
  atp_buf_reset(&c->body);
}

static void request_reset(conn_t *c) {
  request_shrink(c);
  c->url_len = 0;
  c->path_off = c->path_len = c->query_off = c->query_len = 0;
  memset(c->hv_set, 0, sizeof c->hv_set);
  c->field_len = 0;
  c->field_kind = HDR_NONE;
  c->head_bytes = 0;
  c->head_mark = NULL;
  c->trailer_bytes = 0;
  c->body_limit = ATP_HTTP_BODY_BYTES_MAX;
  c->started_ns = 0;
  c->in_message = false;
  c->headers_done = false;
  c->te_unknown = false;
  c->url_too_long = false;
  c->deferred_err = 0;
  c->sep_from = NULL;
  c->sep_lf = false;
  c->fold_armed = false;
}

static void log_response(conn_t *c, const atp_http_request_t *req, int status,
                         size_t body_bytes) {
  if (!c->config->log) return;
  int64_t elapsed = (int64_t)uv_hrtime() - req->started_ns;
  c->config->log(c->config->ctx, req, status, body_bytes, elapsed);
}

/* The server's own error response for err (an ATP_E* code: its status and
 * contract code come from the error table); the connection closes after it.
 * The application's error hook renders it in the format the request asks for;
 * without one, or when it fails, the body is JSON. */
static void fail_respond(conn_t *c, int err, const char *message) {
  if (c->closing) return;
  atp_http_request_t req;
  request_fill(c, &req);
  int status = atp_error_http_status(err);
  if (!message) message = atp_strerror(err);
  response_t r = {.status = status, .close = true};
  char body[256];
  const atp_http_config_t *cfg = c->config;
  if (cfg->error) {
    atp_buf_reset(&c->res_body);
    atp_http_response_t res = {0};
    res.body = &c->res_body;
    cfg->error(cfg->ctx, &req, err, message, &res);
    if (!c->res_body.failed && c->res_body.len && res.content_type) {
      r.content_type = res.content_type;
      r.body = c->res_body.data;
      r.body_len = c->res_body.len;
      r.extra = res.extra_headers;
      r.extra_count = res.extra_header_count < ATP_HTTP_EXTRA_HEADERS_MAX
                          ? res.extra_header_count
                          : ATP_HTTP_EXTRA_HEADERS_MAX;
    }
  }
  if (!r.body_len) {
    r.content_type = "application/json";
    r.body = body;
    r.body_len = error_json(body, sizeof body, atp_strerror_code(err), message);
  }
  c->closing = true;
  (void)queue_response(c, &r); /* out of memory: the close still happens */
  log_response(c, &req, status, r.body_len);
  atp_arena_reset(&c->arena);
  request_shrink(c);
}

/* A callback's failure: remembered, answered by core_execute once llhttp
 * returns with the error. err is an ATP_E* code; message NULL: the table's. */
static int fail(conn_t *c, int err, const char *message) {
  if (!c->fail_err) {
    c->fail_err = err;
    c->fail_message = message;
  }
  return -1;
}

/* Remembers a refusal until the head is complete (see deferred_err). */
static int defer(conn_t *c, int err, const char *message) {
  ATP_ASSERT(err < 0);
  if (!c->deferred_err) {
    c->deferred_err = err;
    c->deferred_message = message;
  }
  return 0;
}

/* Obsolete line folding (RFC 9112 section 5.2): a header line starting with a
 * space or tab continues the one before it. llhttp joins such lines into one
 * value; they are refused instead, since a proxy in front may read a folded
 * Transfer-Encoding differently than we do (request smuggling). The bytes
 * between the head's spans (": ", CRLF) are scanned as they go by for an LF
 * followed by SP or HTAB; a span's first byte counts too, as llhttp starts a
 * continuation's span at its leading whitespace. Spans never hold an LF. */
static void fold_scan(conn_t *c, const char *from, const char *to) {
  for (const char *p = from; p < to; p++) {
    if (c->sep_lf && (*p == ' ' || *p == '\t')) {
      defer(c, ATP_EBADREQ,
            "Obsolete line folding (a header line starting with a space or tab) is not "
            "accepted.");
      return;
    }
    c->sep_lf = *p == '\n';
  }
}

static void fold_check(conn_t *c, const char *at, size_t len) {
  /* The first span (the method) follows the previous message's bytes. */
  if (c->fold_armed) {
    const char *from = c->sep_from ? c->sep_from : c->exec_start;
    ATP_ASSERT(from && from <= at);
    fold_scan(c, from, at);
    if (len) fold_scan(c, at, at + 1);
  }
  c->fold_armed = true;
  c->sep_lf = false;
  c->sep_from = at + len;
}

static int head_count(conn_t *c, const char *at, size_t len) {
  const char *end = at + len;
  c->head_bytes += c->head_mark ? (size_t)(end - c->head_mark) : len;
  c->head_mark = end;
  if (c->head_bytes > ATP_HTTP_HEADER_BYTES_MAX)
    return fail(c, c->url_too_long ? ATP_EURITOOLONG : ATP_EHEADERS, NULL);
  fold_check(c, at, len);
  return 0;
}

static int trailer_count(conn_t *c, size_t len) {
  c->trailer_bytes += len;
  if (c->trailer_bytes > ATP_HTTP_HEADER_BYTES_MAX)
    return fail(c, ATP_EHEADERS, "The request trailers are over 64 KiB.");
  return 0;
}

static int cb_message_begin(llhttp_t *p) {
  conn_t *c = p->data;
  request_reset(c);
  c->in_message = true;
  c->head_started_ms = c->lp ? uv_now(&c->lp->loop) : 0;
  return 0;
}

static int cb_head_span(llhttp_t *p, const char *at, size_t len) {
  return head_count(p->data, at, len);
}

static int cb_url(llhttp_t *p, const char *at, size_t len) {
  conn_t *c = p->data;
  if (head_count(c, at, len)) return -1;
  /* Too long: the rest is only counted (the head limit still bounds it), and
   * the 414 waits for the head to end, so that it can honour Accept. */
  if (c->url_too_long || c->url_len + len > ATP_HTTP_URL_BYTES_MAX) {
    c->url_too_long = true;
    return 0;
  }
  if (atp_buf_append(&c->head, at, len)) return fail(c, ATP_ENOMEM, NULL);
  c->url_len += len;
  return 0;
}

static int cb_url_complete(llhttp_t *p) {
  conn_t *c = p->data;
  return atp_buf_append(&c->head, "", 1) ? fail(c, ATP_ENOMEM, NULL) : 0;
}

static int cb_header_field(llhttp_t *p, const char *at, size_t len) {
  conn_t *c = p->data;
  if (c->headers_done) return trailer_count(c, len);
  if (head_count(c, at, len)) return -1;
  if (c->field_len + len <= FIELD_BYTES) {
    memcpy(c->field + c->field_len, at, len);
    c->field_len += (uint32_t)len;
  } else {
    c->field_len = FIELD_BYTES + 1;
  }
  return 0;
}

static int cb_header_field_complete(llhttp_t *p) {
  conn_t *c = p->data;
  static const struct {
    const char *name;
    size_t len;
  } names[HDR_COUNT] = {{"content-type", 12},
                        {"accept", 6},
                        {"authorization", 13},
                        {"expect", 6},
                        {"host", 4},
                        {"transfer-encoding", 17},
                        {"x-request-id", 12},
                        {"last-event-id", 13},
                        {"x-shopify-topic", 15},
                        {"x-shopify-hmac-sha256", 21},
                        {"x-shopify-shop-domain", 21},
                        {"x-shopify-webhook-id", 20},
                        {"x-shopify-event-id", 18},
                        {"x-shopify-triggered-at", 22}};
  c->field_kind = HDR_NONE;
  if (!c->headers_done && c->field_len <= FIELD_BYTES) {
    for (int k = 0; k < HDR_COUNT; k++) {
      if (names[k].len == c->field_len &&
          strncasecmp(names[k].name, c->field, c->field_len) == 0) {
        c->field_kind = k;
        c->hv_off[k] = c->head.len;
        break;
      }
    }
  }
  c->field_len = 0;
  /* Two credentials or two hosts are ambiguous: a proxy may have checked the
   * other one (RFC 9110 section 11.6.2 allows one Authorization; RFC 9112
   * section 3.2 requires a 400 for a second Host). */
  if (c->field_kind == HDR_AUTHORIZATION && c->hv_set[HDR_AUTHORIZATION])
    return defer(c, ATP_EBADREQ, "The request has more than one Authorization header.");
  if (c->field_kind == HDR_HOST && c->hv_set[HDR_HOST])
    return defer(c, ATP_EBADREQ, "The request has more than one Host header.");
  if (c->field_kind == HDR_SHOPIFY + ATP_HTTP_SHOPIFY_HMAC && c->hv_set[c->field_kind])
    return defer(c, ATP_EBADREQ,
                 "The request has more than one X-Shopify-Hmac-Sha256 header.");
  return 0;
}

/* Whether a Transfer-Encoding value lists only "chunked" (each line is checked;
 * llhttp itself refuses chunked twice or not last). RFC 9112 section 6.1: a
 * coding the server does not know is 501, not silently skipped. */
static bool te_only_chunked(const char *v, size_t len) {
  size_t i = 0;
  while (i < len) {
    size_t end = i;
    while (end < len && v[end] != ',') end++;
    size_t s = i, e = end;
    while (s < e && (v[s] == ' ' || v[s] == '\t')) s++;
    while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
    if (e > s && !(e - s == 7 && strncasecmp(v + s, "chunked", 7) == 0)) return false;
    i = end + 1;
  }
  return true;
}

static int cb_header_value(llhttp_t *p, const char *at, size_t len) {
  conn_t *c = p->data;
  if (c->headers_done) return trailer_count(c, len);
  if (head_count(c, at, len)) return -1;
  if (c->field_kind != HDR_NONE && atp_buf_append(&c->head, at, len))
    return fail(c, ATP_ENOMEM, NULL);
  return 0;
}

static int cb_header_value_complete(llhttp_t *p) {
  conn_t *c = p->data;
  int k = c->field_kind;
  if (k == HDR_NONE) return 0;
  c->hv_len[k] = c->head.len - c->hv_off[k];
  c->hv_set[k] = true;
  c->field_kind = HDR_NONE;
  if (k == HDR_TRANSFER_ENCODING &&
      !te_only_chunked(c->head.data + c->hv_off[k], c->hv_len[k]))
    c->te_unknown = true;
  return atp_buf_append(&c->head, "", 1) ? fail(c, ATP_ENOMEM, NULL) : 0;
}

/* Splits the URL (NUL-terminated at head[url_len]) into path and query in
 * place; an absolute-form URL ("http://host/p") keeps only its path. */
static void split_url(conn_t *c) {
  char *url = c->head.data;
  size_t start = 0;
  if (c->url_len > 8 &&
      (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0)) {
    char *slash = memchr(url + 8, '/', c->url_len - 8);
    char *qmark = memchr(url + 8, '?', c->url_len - 8);
    if (slash && (!qmark || slash < qmark)) start = (size_t)(slash - url);
  }
  char *q = memchr(url + start, '?', c->url_len - start);
  c->path_off = start;
  if (q) {
    *q = '\0';
    c->path_len = (size_t)(q - url) - start;
    c->query_off = (size_t)(q - url) + 1;
    c->query_len = c->url_len - c->query_off;
  } else {
    c->path_len = c->url_len - start;
    c->query_off = c->url_len; /* the NUL: "" */
    c->query_len = 0;
  }
}

static int cb_headers_complete(llhttp_t *p) {
  conn_t *c = p->data;
  c->headers_done = true;
  c->started_ns = (int64_t)uv_hrtime();
  c->body_started_ms = c->lp ? uv_now(&c->lp->loop) : 0;
  if (p->http_major != 1) return fail(c, ATP_EVERSION, NULL);
  if (c->url_too_long) return fail(c, ATP_EURITOOLONG, NULL);
  if (c->deferred_err) return fail(c, c->deferred_err, c->deferred_message);
  c->http10 = p->http_minor == 0;
  c->keep_alive = llhttp_should_keep_alive(p) && !p->upgrade;
  if (!c->head.data || c->url_len == 0)
    return fail(c, ATP_EBADREQ, "The request has no URL.");
  /* RFC 9112 section 3.2: an HTTP/1.1 request without Host is a 400. */
  if (!c->http10 && !c->hv_set[HDR_HOST])
    return fail(c, ATP_EBADREQ, "An HTTP/1.1 request needs a Host header.");
  /* Chunked last with another coding before it: llhttp would decode the
   * chunks and hand on a body still in that coding. (Chunked not last is
   * llhttp's 400: the body's length cannot be known.) */
  if (c->te_unknown && (p->flags & F_CHUNKED))
    return fail(c, ATP_ENOTIMPL, "Only the chunked transfer coding is supported.");
  split_url(c);
  const atp_http_config_t *cfg = c->config;
  c->body_limit = cfg->body_limit
                      ? cfg->body_limit(cfg->ctx, map_method(p->method),
                                        c->head.data + c->path_off, c->path_len)
                      : ATP_HTTP_BODY_BYTES_MAX;
  c->body.len_max = c->body_limit + 1;
  bool has_body = (p->flags & F_CHUNKED) ||
                  ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
  c->body_expected = (p->flags & F_CONTENT_LENGTH) ? (size_t)p->content_length : 0;
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->body_limit)
    return fail(c, ATP_ETOOLARGE, NULL);
  if (has_body && c->hv_set[HDR_EXPECT] && c->hv_len[HDR_EXPECT] == 12 &&
      strncasecmp(c->head.data + c->hv_off[HDR_EXPECT], "100-continue", 12) == 0 &&
      !c->http10) {
    outq_t *q = &c->out[c->pending];
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (atp_buf_append(&q->bytes, cont, sizeof cont - 1))
      return fail(c, ATP_ENOMEM, NULL);
    q->total_bytes += sizeof cont - 1;
  }
  return 0;
}

static int cb_body(llhttp_t *p, const char *at, size_t len) {
  conn_t *c = p->data;
  if (c->body.len + len > c->body_limit) return fail(c, ATP_ETOOLARGE, NULL);
  /* A known length is reserved once its first byte is here (not at the head,
   * so a client that only promises a body pins nothing), saving the doublings. */
  if (c->body.len == 0 && c->body_expected > len &&
      !atp_buf_reserve(&c->body, c->body_expected + 1))
    return fail(c, ATP_ENOMEM, NULL);
  if (atp_buf_append(&c->body, at, len)) return fail(c, ATP_ENOMEM, NULL);
  return 0;
}

/* Parks the filling queue until the loop's released value reaches target. */
static void conn_hold(conn_t *c, uint64_t target) {
  if (target > c->hold_until) c->hold_until = target;
  if (c->held_linked) return;
  loop_ctx_t *lp = c->lp;
  c->held_linked = true;
  c->held_prev = NULL;
  c->held_next = lp->held;
  if (lp->held) lp->held->held_prev = c;
  lp->held = c;
}

static void conn_unhold(conn_t *c) {
  c->hold_until = 0;
  if (!c->held_linked) return;
  c->held_linked = false;
  if (c->held_prev)
    c->held_prev->held_next = c->held_next;
  else
    c->lp->held = c->held_next;
  if (c->held_next) c->held_next->held_prev = c->held_prev;
  c->held_prev = c->held_next = NULL;
}

/* ------------------------------------------------------------------------ */
/* Streaming responses (atp_http_stream_*)                                   */

static void conn_close(conn_t *c);
static void conn_progress(conn_t *c);

static void stream_unref(atp_http_stream_t *st) {
  if (atomic_fetch_sub_explicit(&st->refs, 1, memory_order_acq_rel) != 1) return;
  atp_buf_free(&st->pending);
  uv_mutex_destroy(&st->mu);
  atp_free(st);
}

/* Puts st on its loop's ready list, with a reference the loop drops. Under
 * st->mu; lock order: st->mu, then answer_mu. */
static void stream_schedule(atp_http_stream_t *st) {
  if (st->scheduled || !st->lp) return;
  loop_ctx_t *lp = st->lp;
  uv_mutex_lock(&lp->answer_mu);
  if (!lp->answers_closed) {
    st->scheduled = true;
    atomic_fetch_add_explicit(&st->refs, 1, memory_order_relaxed);
    st->next_ready = lp->streams_ready;
    lp->streams_ready = st;
    uv_async_send(&lp->answer_async);
  }
  uv_mutex_unlock(&lp->answer_mu);
}

atp_http_stream_t *atp_http_stream_begin(atp_http_response_t *res, size_t backlog_max) {
  ATP_ASSERT(res && !res->stream && backlog_max > 0);
  atp_http_stream_t *st = atp_calloc(1, sizeof *st);
  if (!st) return NULL;
  if (uv_mutex_init(&st->mu) != 0) {
    atp_free(st);
    return NULL;
  }
  atp_buf_init(&st->pending, backlog_max);
  st->backlog_max = backlog_max;
  atomic_init(&st->unsent, 0);
  atomic_init(&st->refs, 2); /* the producer's and the connection's */
  res->stream = st;
  return st;
}

/* The connection will never take the stream (no loop, or no memory for the
 * head): sends fail from now on. */
static void stream_abandon(atp_http_stream_t *st) {
  uv_mutex_lock(&st->mu);
  st->closed = true;
  uv_mutex_unlock(&st->mu);
  stream_unref(st);
}

static void stream_attach(conn_t *c, atp_http_stream_t *st) {
  c->stream = st;
  uv_mutex_lock(&st->mu);
  st->conn = c;
  st->lp = c->lp;
  if (st->pending.len || st->ended) stream_schedule(st);
  uv_mutex_unlock(&st->mu);
}

/* The connection closes: sends fail from now on. */
static void stream_detach(conn_t *c) {
  atp_http_stream_t *st = c->stream;
  if (!st) return;
  c->stream = NULL;
  uv_mutex_lock(&st->mu);
  st->conn = NULL;
  st->closed = true;
  uv_mutex_unlock(&st->mu);
  stream_unref(st);
}

/* The loop's turn: moves the pending bytes to the connection's output, or
 * closes it when cut, or lets it close once written when ended. */
static void stream_flush(atp_http_stream_t *st) {
  uv_mutex_lock(&st->mu);
  st->scheduled = false;
  conn_t *c = st->conn;
  bool cut = st->cut, ended = st->ended;
  int rc = 0;
  if (c && !cut && st->pending.len) {
    outq_t *q = &c->out[c->pending];
    rc = atp_buf_append(&q->bytes, st->pending.data, st->pending.len);
    if (rc == 0) q->total_bytes += st->pending.len;
    atp_buf_reset(&st->pending);
    if (st->pending.cap > KEEP_BUF_BYTES) atp_buf_free(&st->pending);
  }
  uv_mutex_unlock(&st->mu);
  if (c && (cut || rc)) {
    conn_close(c);
  } else if (c) {
    if (ended) c->closing = true;
    conn_progress(c);
  }
  stream_unref(st);
}

int atp_http_stream_send(atp_http_stream_t *st, const void *data, size_t len) {
  ATP_ASSERT(st);
  int rc = 0;
  uv_mutex_lock(&st->mu);
  size_t unsent = atomic_load_explicit(&st->unsent, memory_order_relaxed);
  if (st->closed || st->ended) {
    rc = ATP_EUNAVAILABLE;
  } else if (st->pending.len + unsent + len > st->backlog_max) {
    st->cut = st->closed = true; /* the client fell behind: cut it */
    stream_schedule(st);
    rc = ATP_EFULL;
  } else if (atp_buf_append(&st->pending, data, len) != 0) {
    rc = ATP_ENOMEM;
  } else {
    stream_schedule(st);
  }
  uv_mutex_unlock(&st->mu);
  return rc;
}

size_t atp_http_stream_backlog(const atp_http_stream_t *st) {
  atp_http_stream_t *m = (atp_http_stream_t *)(uintptr_t)st;
  uv_mutex_lock(&m->mu);
  size_t n = m->pending.len + atomic_load_explicit(&m->unsent, memory_order_relaxed);
  uv_mutex_unlock(&m->mu);
  return n;
}

bool atp_http_stream_closed(const atp_http_stream_t *st) {
  atp_http_stream_t *m = (atp_http_stream_t *)(uintptr_t)st;
  uv_mutex_lock(&m->mu);
  bool closed = m->closed || m->ended;
  uv_mutex_unlock(&m->mu);
  return closed;
}

void atp_http_stream_end(atp_http_stream_t *st) {
  if (!st) return;
  uv_mutex_lock(&st->mu);
  st->ended = true;
  if (!st->closed) stream_schedule(st);
  uv_mutex_unlock(&st->mu);
  stream_unref(st);
}

/* The handler's extra headers, at most the number a response may carry. */
static uint32_t extra_count_of(const atp_http_response_t *res) {
  return res->extra_header_count < ATP_HTTP_EXTRA_HEADERS_MAX
             ? res->extra_header_count
             : ATP_HTTP_EXTRA_HEADERS_MAX;
}

/* The message is answered (or handed on): its memory goes, the next may be
 * parsed. */
static void message_done(conn_t *c) {
  atp_arena_reset(&c->arena);
  request_shrink(c);
  c->in_message = false;
}

/* A streamed answer: the head now, then the producer's chunks on this
 * connection, which closes after it. */
static void dispatch_stream(conn_t *c, const atp_http_request_t *req,
                            const atp_http_response_t *res) {
  response_t head = {.status = res->status ? res->status : 200,
                     .content_type = res->content_type,
                     .extra = res->extra_headers,
                     .extra_count = extra_count_of(res),
                     .close = true,
                     .stream = true};
  if (queue_response(c, &head)) {
    stream_abandon(res->stream);
    c->closing = true;
  } else if (req->method == ATP_HTTP_HEAD) {
    /* HEAD: the head only. The producer's sends fail from now on, so it
     * stops (an SSE stream, a snapshot's walk). */
    log_response(c, req, head.status, 0);
    stream_abandon(res->stream);
    c->closing = true;
  } else {
    log_response(c, req, head.status, 0);
    stream_attach(c, res->stream);
  }
  message_done(c);
}

/* An answer the handler gives later on this loop: what its log line and
 * its close need is kept. The arena, head and body are kept until the
 * answer: the deferred work may still read them (a batch's ops). Nothing
 * is parsed meanwhile. */
static void dispatch_defer(conn_t *c, const atp_http_request_t *req,
                           const atp_http_response_t *res) {
  c->deferred_id = req->request_id;
  c->deferred_started_ns = req->started_ns;
  c->deferred_method = req->method;
  c->deferred_close = res->close || !c->keep_alive;
  snprintf(c->deferred_path, sizeof c->deferred_path, "%.*s",
           (int)(req->path_len < DEFERRED_PATH_BYTES ? req->path_len : 0), req->path);
  c->in_message = false;
}

/* A deferred answer without a loop to give it on (atp_http_feed): 503. */
static void answer_unavailable(atp_http_response_t *res) {
  char unavailable[160];
  res->status = atp_error_http_status(ATP_EUNAVAILABLE);
  res->content_type = "application/json";
  atp_buf_reset(res->body);
  size_t n =
      error_json(unavailable, sizeof unavailable, atp_strerror_code(ATP_EUNAVAILABLE),
                 "this request cannot be answered here");
  atp_buf_append(res->body, unavailable, n);
  res->hold_until = 0;
}

/* The response for the handler's answer; a body that could not be built
 * becomes a 5xx whose body is written into err (which must outlive r). */
static void response_of(conn_t *c, const atp_http_request_t *req,
                        const atp_http_response_t *res, response_t *r, char *err,
                        size_t err_cap) {
  *r = (response_t){.status = res->status,
                    .content_type = res->content_type,
                    .extra = res->extra_headers};
  r->extra_count = extra_count_of(res);
  r->head_only = req->method == ATP_HTTP_HEAD;
  r->close = res->close || !c->keep_alive || (c->lp && c->lp->stopping);
  if (res->body && res->body->len) {
    r->body = res->body->data;
    r->body_len = res->body->len;
    r->body_buf = res->body == &c->res_body ? res->body : NULL;
  }
  if (res->body && res->body->failed) {
    int e = res->body->failed == ATP_ENOMEM ? ATP_ENOMEM : ATP_EINTERNAL;
    r->status = atp_error_http_status(e);
    r->content_type = "application/json";
    r->body_len = error_json(err, err_cap, atp_strerror_code(e),
                             "the response could not be built");
    r->body = err;
    r->body_buf = NULL;
    r->extra_count = 0;
  }
  if (r->status < 200 || r->status > 599) r->status = 500;
}

/* The handler's response, serialised. */
static void dispatch(conn_t *c) {
  atp_http_request_t req;
  /* NUL after the body for parsers that like one: len_max = limit + 1 keeps room. */
  if (c->body.len && atp_buf_reserve(&c->body, 1)) c->body.data[c->body.len] = '\0';
  request_fill(c, &req);
  atp_buf_reset(&c->res_body);
  atp_http_response_t res = {0};
  res.body = &c->res_body;
  c->config->handler(c->config->ctx, &req, &res);
  if (res.stream && !c->lp) { /* atp_http_feed: nowhere to stream to */
    stream_abandon(res.stream);
    res.stream = NULL;
    res.defer = true;
  }
  if (res.stream) {
    dispatch_stream(c, &req, &res);
    return;
  }
  if (res.defer && c->lp) {
    dispatch_defer(c, &req, &res);
    return;
  }
  if (res.defer) answer_unavailable(&res);
  response_t r;
  char err[160];
  response_of(c, &req, &res, &r, err, sizeof err);
  size_t body_bytes = r.body_len;
  if (queue_response(c, &r)) r.close = true;
  /* acquire: pairs with the release in atp_http_server_release. A value
   * already released parks nothing, so a response whose target is durable by
   * now costs no wake-up. */
  if (res.hold_until && c->lp &&
      res.hold_until > atomic_load_explicit(&c->lp->released, memory_order_acquire))
    conn_hold(c, res.hold_until);
  if (r.close) c->closing = true;
  log_response(c, &req, r.status, body_bytes);
  message_done(c);
}

static int cb_message_complete(llhttp_t *p) {
  conn_t *c = p->data;
  dispatch(c);
  if (c->closing || out_full(c)) return HPE_PAUSED;
  return 0;
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = cb_message_begin,
    .on_url = cb_url,
    .on_method = cb_head_span,
    .on_version = cb_head_span,
    .on_header_field = cb_header_field,
    .on_header_value = cb_header_value,
    .on_headers_complete = cb_headers_complete,
    .on_body = cb_body,
    .on_message_complete = cb_message_complete,
    .on_url_complete = cb_url_complete,
    .on_header_field_complete = cb_header_field_complete,
    .on_header_value_complete = cb_header_value_complete,
};

static void core_init(conn_t *c, const atp_http_config_t *config, loop_ctx_t *lp) {
  c->config = config;
  c->lp = lp;
  llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
  c->parser.data = c;
  atp_arena_init(&c->arena, ARENA_CHUNK_BYTES, ATP_HTTP_ARENA_BYTES_MAX);
  atp_buf_init(&c->head, HEAD_BUF_BYTES_MAX);
  atp_buf_init(&c->body, ATP_HTTP_BODY_BYTES_MAX + 1);
  atp_buf_init(&c->res_body, ATP_HTTP_RESPONSE_BYTES_MAX);
  atp_buf_init(&c->in, READ_BYTES);
  outq_init(&c->out[0]);
  outq_init(&c->out[1]);
  request_reset(c);
}

static void core_destroy(conn_t *c) {
  atp_arena_destroy(&c->arena);
  atp_buf_free(&c->head);
  atp_buf_free(&c->body);
  atp_buf_free(&c->res_body);
  atp_buf_free(&c->in);
  for (int i = 0; i < 2; i++) {
    outq_release(&c->out[i]);
    atp_buf_free(&c->out[i].bytes);
  }
}

/* Parses data; returns the bytes consumed, fewer than len only when parsing
 * paused for backpressure or the connection is closing. */
static size_t core_execute(conn_t *c, const char *data, size_t len) {
  ATP_ASSERT(!c->closing);
  c->head_mark = (c->in_message && !c->headers_done) ? data : NULL;
  c->exec_start = data;
  c->sep_from = NULL;
  llhttp_errno_t e = llhttp_execute(&c->parser, data, len);
  size_t used = len;
  if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
    used = (size_t)(llhttp_get_error_pos(&c->parser) - data);
    if (e == HPE_PAUSED)
      llhttp_resume(&c->parser);
    else
      c->closing = true; /* no protocol switch is served */
  } else if (e != HPE_OK) {
    if (c->fail_err) {
      fail_respond(c, c->fail_err, c->fail_message);
    } else {
      char msg[160];
      snprintf(msg, sizeof msg, "Malformed HTTP: %s",
               llhttp_get_error_reason(&c->parser));
      fail_respond(c, ATP_EBADREQ, msg);
    }
  }
  if (!c->closing && c->in_message && !c->headers_done && c->head_mark) {
    c->head_bytes += (size_t)(data + used - c->head_mark);
    c->head_mark = NULL;
    if (c->head_bytes > ATP_HTTP_HEADER_BYTES_MAX)
      fail_respond(c, c->url_too_long ? ATP_EURITOOLONG : ATP_EHEADERS, NULL);
  }
  /* The head goes on in the next read: scan this read's tail for a fold. */
  if (!c->closing && c->in_message && !c->headers_done && c->fold_armed)
    fold_scan(c, c->sep_from ? c->sep_from : data, data + used);
  c->exec_start = c->sep_from = NULL;
  return used;
}

/* ------------------------------------------------------------------------ */
/* Socket-free driver                                                        */

static void outq_flatten(outq_t *q, atp_buf_t *out) {
  uv_buf_t iov[2 * OUT_BIG_MAX + 1];
  int n = outq_iov(q, iov);
  for (int i = 0; i < n; i++) atp_buf_append(out, iov[i].base, iov[i].len);
  outq_release(q);
}

int atp_http_feed(const atp_http_config_t *config, const char *bytes, size_t len,
                  atp_buf_t *out) {
  ATP_ASSERT(config && config->handler && out);
  conn_t *c = atp_calloc(1, sizeof *c);
  if (!c) return 1;
  core_init(c, config, NULL);
  size_t off = 0;
  while (off < len && !c->closing) {
    off += core_execute(c, bytes + off, len - off);
    outq_flatten(&c->out[c->pending], out); /* as if written at once */
  }
  outq_flatten(&c->out[c->pending], out);
  int closing = c->closing;
  core_destroy(c);
  atp_free(c);
  return closing ? 1 : 0;
}

/* ------------------------------------------------------------------------ */
/* Socket layer                                                              */

static void conn_progress(conn_t *c);
static void loop_maybe_finish(loop_ctx_t *lp);

static void on_handle_closed(uv_handle_t *h) {
  conn_t *c = h->data;
  ATP_ASSERT(c->closed && c->handles_open > 0);
  if (--c->handles_open > 0) return;
  loop_ctx_t *lp = c->lp;
  if (c->prev)
    c->prev->next = c->next;
  else
    lp->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  lp->conn_count--;
  core_destroy(c);
  atp_free(c);
  loop_maybe_finish(lp);
}

/* Closes now; queued output is dropped. Memory goes in the close callbacks. */
static void stream_detach(conn_t *c);

static void conn_close(conn_t *c) {
  if (c->closed) return;
  c->closed = true;
  stream_detach(c);
  conn_unhold(c); /* its parked output is freed with it, in the close callback */
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void on_timer(uv_timer_t *t);

static void conn_set_deadline(conn_t *c, uint64_t deadline_ms) {
  c->deadline_ms = deadline_ms;
  if (c->timer_armed && deadline_ms >= c->timer_due_ms)
    return; /* fires early, re-arms */
  uint64_t now = uv_now(&c->lp->loop);
  uv_timer_start(&c->timer, on_timer, deadline_ms > now ? deadline_ms - now : 0, 0);
  c->timer_due_ms = deadline_ms;
  c->timer_armed = true;
}

static void conn_update_deadline(conn_t *c) {
  const atp_http_config_t *cfg = c->config;
  uint64_t now = uv_now(&c->lp->loop);
  if (c->lingering) return; /* set once when lingering began */
  if (c->writing || !c->in_message)
    conn_set_deadline(c, now + cfg_ms(cfg->idle_timeout_ms, ATP_HTTP_IDLE_TIMEOUT_MS));
  else if (!c->headers_done)
    conn_set_deadline(c, c->head_started_ms + cfg_ms(cfg->header_timeout_ms,
                                                     ATP_HTTP_HEADER_TIMEOUT_MS));
  else {
    /* Each byte gap is bounded, and so is the whole body: a client dripping
     * one byte just inside the gap would otherwise hold the request forever. */
    uint64_t gap = now + cfg_ms(cfg->body_timeout_ms, ATP_HTTP_BODY_TIMEOUT_MS);
    uint64_t total = c->body_started_ms +
                     cfg_ms(cfg->body_total_timeout_ms, ATP_HTTP_BODY_TOTAL_TIMEOUT_MS);
    conn_set_deadline(c, gap < total ? gap : total);
  }
}

static void on_timer(uv_timer_t *t) {
  conn_t *c = t->data;
  c->timer_armed = false;
  uint64_t now = uv_now(&c->lp->loop);
  if (now < c->deadline_ms) {
    conn_set_deadline(c, c->deadline_ms);
    return;
  }
  if ((c->deferred_id || (c->stream && !c->writing)) && !c->closing && !c->lingering) {
    /* Waiting for its own answer (or a stream's next bytes), not idle. A
     * stream whose write stalls for the idle timeout is closed below. */
    conn_set_deadline(
        c, now + cfg_ms(c->config->idle_timeout_ms, ATP_HTTP_IDLE_TIMEOUT_MS));
    return;
  }
  if (c->lingering || c->writing || c->closing || !c->in_message) {
    conn_close(c); /* idle, stalled write, or lingering: nothing to say */
    return;
  }
  fail_respond(c, ATP_ETIMEOUT,
               c->headers_done ? "The request body was not received in time."
                               : "The request head was not received in time.");
  conn_progress(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  conn_t *c = h->data;
  *buf = uv_buf_init(c->lp->read_buf, READ_BYTES);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  conn_t *c = s->data;
  if (nread == 0 || c->closed) return;
  if (nread < 0) {
    if (nread != UV_EOF) {
      conn_close(c);
      return;
    }
    c->eof = true;
    conn_progress(c);
    return;
  }
  if (c->lingering || c->closing || c->stream) {
    c->linger_bytes += (size_t)nread;
    if (c->linger_bytes > ATP_HTTP_LINGER_BYTES_MAX) conn_close(c);
    return;
  }
  /* A deferred request reads on, so that a reset is noticed while its work
   * runs; what arrives (a pipelined request) waits unparsed, in order. */
  size_t used = c->deferred_id ? 0 : core_execute(c, buf->base, (size_t)nread);
  if (used < (size_t)nread && !c->closing) {
    /* Backpressure: keep the rest (at most one read) and read no more. */
    atp_buf_reset(&c->in);
    c->in_off = 0;
    if (atp_buf_append(&c->in, buf->base + used, (size_t)nread - used)) {
      conn_close(c);
      return;
    }
    c->paused = true;
  }
  conn_progress(c);
}

static void on_write(uv_write_t *req, int status);

/* Writes the current queue. Most responses fit the socket buffer, so it
 * tries a direct write first: libuv 1.44 re-arms the socket in epoll after
 * every completed uv_write, so a queued write costs an epoll_ctl and a loop
 * pass per response that a write which completes at once does not. Only what
 * the socket did not take goes through uv_write. */
static int conn_start_write(conn_t *c) {
  ATP_ASSERT(!c->writing && !c->closed);
  outq_t *q = &c->out[c->pending];
  uv_buf_t iov[2 * OUT_BIG_MAX + 1];
  int n = outq_iov(q, iov);
  int written = uv_try_write((uv_stream_t *)&c->tcp, iov, (unsigned)n);
  if (written < 0 && written != UV_EAGAIN) {
    conn_close(c);
    return -1;
  }
  int first = 0;
  for (size_t done = written > 0 ? (size_t)written : 0; first < n; first++) {
    if (done < iov[first].len) {
      iov[first].base += done;
      iov[first].len -= done;
      break;
    }
    done -= iov[first].len;
  }
  if (first == n) {
    outq_release(q);
    return 0;
  }
  c->writing = true;
  c->pending = !c->pending;
  int r = uv_write(&c->write_req, (uv_stream_t *)&c->tcp, iov + first,
                   (unsigned)(n - first), on_write);
  if (r) {
    c->writing = false;
    conn_close(c);
  }
  return r;
}

static void on_write(uv_write_t *req, int status) {
  conn_t *c = req->data;
  ATP_ASSERT(c->writing);
  c->writing = false;
  outq_release(&c->out[!c->pending]);
  if (c->closed) return;
  if (status < 0) {
    conn_close(c);
    return;
  }
  conn_progress(c);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  conn_t *c = req->data;
  if (status < 0 && !c->closed) conn_close(c);
}

/* Everything written and the connection is closing: half-close our side and
 * read (discarding) until the client's FIN, so that unread request bytes do not
 * make the kernel answer with a reset that destroys the final response. */
static void conn_linger(conn_t *c) {
  if (c->eof) {
    conn_close(c);
    return;
  }
  if (c->lingering) return;
  c->lingering = true;
  c->shutdown_req.data = c;
  if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown)) {
    conn_close(c);
    return;
  }
  conn_set_deadline(c, uv_now(&c->lp->loop) + ATP_HTTP_LINGER_MS);
}

static int conn_set_reading(conn_t *c, bool want) {
  if (want == c->reading) return 0;
  if (want) {
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) {
      conn_close(c);
      return -1;
    }
  } else {
    uv_read_stop((uv_stream_t *)&c->tcp);
  }
  c->reading = want;
  return 0;
}

/* The connection's state machine, run after every event: parse held-back
 * input when there is room, write what is queued, close when done, pick the
 * reading state and the deadline. */
static void conn_progress(conn_t *c) {
  if (c->closed) return;
  /* Parse held-back input and write, until neither makes progress: a write
   * that completes at once frees room for more parsing with no callback. */
  for (;;) {
    while (c->paused && !c->closing && !out_full(c)) {
      size_t used = core_execute(c, c->in.data + c->in_off, c->in.len - c->in_off);
      c->in_off += used;
      if (c->in_off == c->in.len) {
        c->paused = false;
        atp_buf_reset(&c->in);
        c->in_off = 0;
      }
    }
    if (c->writing || c->hold_until || outq_empty(&c->out[c->pending])) break;
    if (conn_start_write(c)) return;
    if (c->writing || !c->paused || c->closing) break;
  }
  bool drained = !c->writing && !c->hold_until && outq_empty(&c->out[c->pending]);
  if (drained) {
    if (c->closing) {
      conn_linger(c);
      if (c->closed) return;
    } else if (c->deferred_id) {
      /* An answer is owed: it closes or goes on once delivered. */
    } else if (c->stream && !c->eof && !c->lp->stopping) {
      /* A stream waits for its producer; a stopping server ends it (the
       * client resumes from its last id elsewhere or later). */
    } else if (c->stream) {
      conn_close(c); /* a stream's body is close-delimited: nothing to linger for */
      return;
    } else if (c->eof && !c->paused) {
      conn_close(c);
      return;
    } else if (c->lp->stopping && !c->in_message && !c->paused) {
      conn_close(c);
      return;
    }
  }
  /* A stream reads on, to see the client leave. */
  bool want =
      !c->eof && (c->lingering || c->stream ||
                  (!c->closing && !c->paused && (!out_full(c) || c->deferred_id)));
  if (conn_set_reading(c, want)) return;
  conn_update_deadline(c);
  if (c->stream) {
    size_t unsent = c->out[c->pending].total_bytes;
    if (c->writing) unsent += c->out[!c->pending].total_bytes;
    atomic_store_explicit(&c->stream->unsent, unsent, memory_order_relaxed);
  }
}

typedef struct {
  uv_tcp_t tcp;
} reject_t;

static void on_reject_closed(uv_handle_t *h) {
  atp_free(h->data);
}

/* The answer over the connection limit, built once from the error table:
 * 429 too_many_requests with Retry-After (contract section 1). */
static char busy[320];
static size_t busy_len;
static uv_once_t busy_once = UV_ONCE_INIT;

static void build_busy(void) {
  char body[160];
  size_t len = error_json(body, sizeof body, atp_strerror_code(ATP_ETOOMANY),
                          "Too many connections; retry later.");
  int status = atp_error_http_status(ATP_ETOOMANY);
  int n =
      snprintf(busy, sizeof busy,
               "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
               "Content-Length: %zu\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s",
               status, status_reason(status), len, body);
  ATP_ASSERT(n > 0 && (size_t)n < sizeof busy);
  busy_len = (size_t)n;
}

/* Over the connection limit: accept (libuv stops accepting otherwise), answer
 * 429 if the socket takes it at once, and close. The request is not read, so
 * the answer is JSON whatever it asked for. */
static void reject_connection(loop_ctx_t *lp) {
  uv_once(&busy_once, build_busy);
  reject_t *r = atp_malloc(sizeof *r);
  if (!r) return;
  uv_tcp_init(&lp->loop, &r->tcp);
  r->tcp.data = r;
  if (uv_accept((uv_stream_t *)&lp->listener, (uv_stream_t *)&r->tcp) == 0) {
    uv_os_fd_t fd;
    if (uv_fileno((uv_handle_t *)&r->tcp, &fd) == 0) {
      char sink[4096];
      for (int i = 0; i < 16 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++) {
      }
      uv_buf_t b = uv_buf_init(busy, (unsigned)busy_len);
      (void)uv_try_write((uv_stream_t *)&r->tcp, &b, 1);
      shutdown(fd, SHUT_WR);
    }
  }
  uv_close((uv_handle_t *)&r->tcp, on_reject_closed);
}

static void on_connection(uv_stream_t *listener, int status) {
  loop_ctx_t *lp = listener->data;
  if (status < 0 || lp->stopping) return;
  uint32_t max = cfg_ms(lp->server->config.connections_max, ATP_HTTP_CONNECTIONS_MAX);
  conn_t *c = lp->conn_count < max ? atp_calloc(1, sizeof *c) : NULL;
  if (!c) {
    reject_connection(lp);
    return;
  }
  core_init(c, &lp->server->config, lp);
  uv_tcp_init(&lp->loop, &c->tcp);
  uv_timer_init(&lp->loop, &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->write_req.data = c;
  c->handles_open = 2;
  c->next = lp->conns;
  if (lp->conns) lp->conns->prev = c;
  lp->conns = c;
  lp->conn_count++;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp)) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  conn_progress(c);
}

/* ------------------------------------------------------------------------ */
/* Loops, stop, run                                                          */

/* Runs a list taken from lp->posts (newest first) in the order posted. */
static void run_posts(atp_http_post_t *list) {
  atp_http_post_t *fifo = NULL;
  while (list) {
    atp_http_post_t *p = list;
    list = p->next;
    p->next = fifo;
    fifo = p;
  }
  while (fifo) {
    atp_http_post_t *p = fifo;
    fifo = p->next;
    p->next = NULL;
    p->fn(p->ctx); /* may post p again, or free it */
  }
}

/* What was posted before this wake-up runs now; what those callbacks post
 * runs on the next iteration, after the loop polled for I/O again. */
static void on_post_async(uv_async_t *a) {
  loop_ctx_t *lp = a->data;
  uv_mutex_lock(&lp->answer_mu);
  atp_http_post_t *list = lp->posts;
  lp->posts = NULL;
  uv_mutex_unlock(&lp->answer_mu);
  run_posts(list);
}

static void loop_maybe_finish(loop_ctx_t *lp) {
  if (!lp->stopping || lp->finished || lp->conn_count > 0) return;
  lp->finished = true;
  uv_close((uv_handle_t *)&lp->stop_async, NULL);
  uv_close((uv_handle_t *)&lp->stop_timer, NULL);
  uv_close((uv_handle_t *)&lp->release_async, NULL);
  if (lp->server->config.turn) uv_close((uv_handle_t *)&lp->turn_prepare, NULL);
  uv_mutex_lock(&lp->answer_mu);
  lp->answers_closed = true;
  atp_http_stream_t *ready = lp->streams_ready;
  lp->streams_ready = NULL;
  atp_http_post_t *posts = lp->posts;
  lp->posts = NULL;
  uv_mutex_unlock(&lp->answer_mu);
  while (ready) { /* every connection is closed: nothing to flush */
    atp_http_stream_t *st = ready;
    ready = st->next_ready;
    uv_mutex_lock(&st->mu);
    st->scheduled = false;
    uv_mutex_unlock(&st->mu);
    stream_unref(st);
  }
  uv_close((uv_handle_t *)&lp->answer_async, NULL);
  uv_close((uv_handle_t *)&lp->post_async, NULL);
  /* Every connection is gone: what is still queued runs once, finds its
   * request dead and frees itself (a post from there is refused). */
  run_posts(posts);
}

/* Queues the answers other threads delivered on their deferred connections.
 * A connection that closed meanwhile is not found: its answer is dropped.
 * The scan of the loop's connections is linear; deferred requests are rare
 * (operations routes), so this costs nothing on the request path. */
static void on_answer_async(uv_async_t *a) {
  loop_ctx_t *lp = a->data;
  uv_mutex_lock(&lp->answer_mu);
  answer_t *list = lp->answers;
  lp->answers = NULL;
  atp_http_stream_t *ready = lp->streams_ready;
  lp->streams_ready = NULL;
  uv_mutex_unlock(&lp->answer_mu);
  while (ready) {
    atp_http_stream_t *st = ready;
    ready = st->next_ready;
    stream_flush(st);
  }
  while (list) {
    answer_t *an = list;
    list = an->next;
    conn_t *c = lp->conns;
    while (c && (c->closed || c->deferred_id != an->request_id)) c = c->next;
    if (c) {
      response_t r = {.status = an->status,
                      .content_type = an->content_type,
                      .body = an->body,
                      .body_len = an->body_len,
                      .head_only = c->deferred_method == ATP_HTTP_HEAD,
                      .close = c->deferred_close || lp->stopping};
      const char *extra = an->extra_header;
      if (extra[0]) {
        r.extra = &extra;
        r.extra_count = 1;
      }
      if (r.status < 200 || r.status > 599) r.status = 500;
      c->deferred_id = 0;
      /* The request is over: what it kept for its deferred work goes. */
      atp_arena_reset(&c->arena);
      request_shrink(c);
      if (queue_response(c, &r)) r.close = true;
      if (an->hold_until &&
          an->hold_until > atomic_load_explicit(&lp->released, memory_order_acquire))
        conn_hold(c, an->hold_until);
      if (r.close) c->closing = true;
      atp_http_request_t req;
      memset(&req, 0, sizeof req);
      req.method = c->deferred_method;
      req.method_name = atp_http_method_name(c->deferred_method);
      req.path = c->deferred_path;
      req.path_len = strlen(c->deferred_path);
      req.query = req.body = "";
      req.request_id = an->request_id;
      req.started_ns = c->deferred_started_ns;
      req.thread_index = lp->index;
      log_response(c, &req, r.status, an->body_len);
      conn_progress(c);
    }
    atp_free(an);
  }
}

/* Writes the parked output whose target the released value reached. The list
 * is short (connections waiting on one group commit), and a connection's
 * target can grow while it waits, so it is walked whole. */
static uint32_t release_held(loop_ctx_t *lp) {
  uint64_t v = atomic_load_explicit(&lp->released, memory_order_acquire);
  uint32_t n = 0;
  for (conn_t *c = lp->held, *next; c; c = next) {
    next = c->held_next;
    if (c->hold_until > v) continue;
    conn_unhold(c);
    conn_progress(c);
    n++;
  }
  return n;
}

static void on_release_async(uv_async_t *a) {
  (void)release_held(a->data);
}

/* The loop whose thread this is, set by on_turn: a release made on the loop's
 * own thread (from the turn hook) needs no wake-up of it. */
static _Thread_local const loop_ctx_t *tls_loop;

/* The end of a turn (libuv's prepare phase, before the loop polls again):
 * the application's hook (a group commit of everything this turn did), then
 * the parked output it released goes out in the same turn. */
static void on_turn(uv_prepare_t *p) {
  loop_ctx_t *lp = p->data;
  tls_loop = lp;
  /* A released connection goes on with the requests it had pipelined behind
   * the parked answer, which may park again on records appended after the
   * hook ran: the hook runs again for them. The loop must not poll (and
   * perhaps sleep) with records it has not committed, so after a few rounds
   * it wakes itself for another turn instead. */
  for (int round = 0;; round++) {
    lp->server->config.turn(lp->server->config.ctx, lp->index);
    if (!lp->held || release_held(lp) == 0) break;
    if (round == 3) {
      uv_async_send(&lp->release_async);
      break;
    }
  }
}

/* Every STOP_POLL_MS while draining: the grace ends at its deadline, or at
 * once when hurried. Polling an atomic keeps atp_http_server_hurry free of
 * cross-thread wake-ups on loops that may already be finishing. */
static void on_stop_timer(uv_timer_t *t) {
  loop_ctx_t *lp = t->data;
  if (uv_now(&lp->loop) < lp->stop_deadline &&
      !atomic_load_explicit(&lp->server->hurry, memory_order_relaxed))
    return;
  uv_timer_stop(t);
  for (conn_t *c = lp->conns; c; c = c->next) conn_close(c);
}

static void on_stop_async(uv_async_t *a) {
  loop_ctx_t *lp = a->data;
  if (lp->stopping) return;
  lp->stopping = true;
  if (lp->listening) {
    uv_close((uv_handle_t *)&lp->listener, NULL);
    lp->listening = false;
  }
  lp->stop_deadline = uv_now(&lp->loop) + cfg_ms(lp->server->config.stop_timeout_ms,
                                                 ATP_HTTP_STOP_TIMEOUT_MS);
  uv_timer_start(&lp->stop_timer, on_stop_timer, STOP_POLL_MS, STOP_POLL_MS);
  /* Idle connections close now; busy ones after their response. */
  for (conn_t *c = lp->conns; c; c = c->next) conn_progress(c);
  loop_maybe_finish(lp);
}

static int open_listener(const atp_http_config_t *cfg, int port, int *fd_out, char *err,
                         size_t err_len) {
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  char port_str[16];
  snprintf(port_str, sizeof port_str, "%d", port);
  const char *host = cfg->host && *cfg->host ? cfg->host : NULL;
  int gai = getaddrinfo(host, port_str, &hints, &res);
  if (gai) {
    snprintf(err, err_len, "cannot resolve %s: %s", host ? host : "*",
             gai_strerror(gai));
    return ATP_EUNAVAILABLE;
  }
  int fd = -1, saved = 0;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      saved = errno;
      continue;
    }
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0 &&
        bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, LISTEN_BACKLOG) == 0)
      break;
    saved = errno;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    snprintf(err, err_len, "cannot listen on %s:%d: %s", host ? host : "*", port,
             strerror(saved));
    return ATP_EUNAVAILABLE;
  }
  *fd_out = fd;
  return 0;
}

static int loop_init(atp_http_server_t *s, loop_ctx_t *lp, int index, char *err,
                     size_t err_len) {
  lp->server = s;
  lp->index = index;
  if (uv_loop_init(&lp->loop)) {
    snprintf(err, err_len, "cannot create an event loop");
    return ATP_EUNAVAILABLE;
  }
  lp->loop_inited = true;
  lp->read_buf = atp_malloc(READ_BYTES);
  if (!lp->read_buf) {
    snprintf(err, err_len, "out of memory");
    return ATP_ENOMEM;
  }
  uv_async_init(&lp->loop, &lp->stop_async, on_stop_async);
  uv_timer_init(&lp->loop, &lp->stop_timer);
  uv_async_init(&lp->loop, &lp->release_async, on_release_async);
  uv_async_init(&lp->loop, &lp->answer_async, on_answer_async);
  lp->answer_async.data = lp;
  uv_async_init(&lp->loop, &lp->post_async, on_post_async);
  lp->post_async.data = lp;
  if (uv_mutex_init(&lp->answer_mu) == 0) lp->answer_mu_inited = true;
  uv_tcp_init(&lp->loop, &lp->listener);
  lp->stop_async.data = lp->stop_timer.data = lp->listener.data = lp;
  lp->release_async.data = lp;
  if (s->config.turn) {
    uv_prepare_init(&lp->loop, &lp->turn_prepare);
    lp->turn_prepare.data = lp;
    uv_prepare_start(&lp->turn_prepare, on_turn);
  }
  lp->handles_inited = true;
  int fd, rc = open_listener(&s->config, s->port, &fd, err, err_len);
  if (rc) return rc;
  if (uv_tcp_open(&lp->listener, fd)) {
    close(fd);
    snprintf(err, err_len, "cannot listen on port %d", s->port);
    return ATP_EUNAVAILABLE;
  }
  if (uv_listen((uv_stream_t *)&lp->listener, LISTEN_BACKLOG, on_connection)) {
    snprintf(err, err_len, "cannot listen on port %d", s->port);
    return ATP_EUNAVAILABLE;
  }
  lp->listening = true;
  if (s->port == 0) {
    struct sockaddr_storage addr;
    int len = sizeof addr;
    uv_tcp_getsockname(&lp->listener, (struct sockaddr *)&addr, &len);
    s->port = addr.ss_family == AF_INET6
                  ? ntohs(((struct sockaddr_in6 *)&addr)->sin6_port)
                  : ntohs(((struct sockaddr_in *)&addr)->sin_port);
  }
  return 0;
}

static void loop_destroy(loop_ctx_t *lp) {
  if (lp->handles_inited && !lp->finished) {
    /* Never ran (or create failed): no connections exist, only our handles. */
    ATP_ASSERT(lp->conn_count == 0);
    if (!uv_is_closing((uv_handle_t *)&lp->listener))
      uv_close((uv_handle_t *)&lp->listener, NULL);
    lp->stopping = true;
    loop_maybe_finish(lp);
  }
  if (lp->loop_inited) {
    uv_run(&lp->loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&lp->loop);
    ATP_ASSERT(rc == 0);
    (void)rc;
  }
  atp_free(lp->read_buf);
  while (lp->answers) {
    answer_t *an = lp->answers;
    lp->answers = an->next;
    atp_free(an);
  }
  if (lp->answer_mu_inited) uv_mutex_destroy(&lp->answer_mu);
}

int atp_http_server_create(const atp_http_config_t *config, atp_http_server_t **out,
                           char *err, size_t err_len) {
  *out = NULL;
  if (!config || !config->handler || config->threads < 1 ||
      config->threads > ATP_HTTP_THREADS_MAX || config->port < 0 ||
      config->port > 65535) {
    snprintf(err, err_len, "invalid HTTP server configuration");
    return ATP_EBADREQ;
  }
  /* libuv writes with write(2): a peer's reset must come back as EPIPE, not
   * kill the process. Only a default disposition is changed. */
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
    signal(SIGPIPE, SIG_IGN);
  atp_http_server_t *s = atp_calloc(1, sizeof *s);
  loop_ctx_t *loops = atp_calloc((size_t)config->threads, sizeof *loops);
  if (!s || !loops) {
    atp_free(s);
    atp_free(loops);
    snprintf(err, err_len, "out of memory");
    return ATP_ENOMEM;
  }
  s->config = *config;
  s->port = config->port;
  s->threads = config->threads;
  s->loops = loops;
  atomic_init(&s->stop_requested, 0);
  atomic_init(&s->hurry, false);
  for (int i = 0; i < s->threads; i++) {
    int rc = loop_init(s, &loops[i], i, err, err_len);
    if (rc) {
      atp_http_server_destroy(s);
      return rc;
    }
  }
  *out = s;
  return 0;
}

bool atp_http_server_io_ready(atp_http_server_t *s, int thread_index, int64_t wait_ns) {
  ATP_ASSERT(thread_index >= 0 && thread_index < s->threads);
  struct pollfd p = {.fd = uv_backend_fd(&s->loops[thread_index].loop),
                     .events = POLLIN};
  struct timespec ts = {.tv_sec = (time_t)(wait_ns / 1000000000),
                        .tv_nsec = (long)(wait_ns % 1000000000)};
  int n;
  do n = ppoll(&p, 1, &ts, NULL);
  while (n < 0 && errno == EINTR);
  return n > 0;
}

int atp_http_server_port(const atp_http_server_t *server) {
  return server->port;
}

static void loop_thread(void *arg) {
  loop_ctx_t *lp = arg;
  uv_run(&lp->loop, UV_RUN_DEFAULT);
}

int atp_http_server_run(atp_http_server_t *s) {
  ATP_ASSERT(!s->ran);
  s->ran = true;
  for (int i = 1; i < s->threads; i++) {
    loop_ctx_t *lp = &s->loops[i];
    lp->threaded = uv_thread_create(&lp->thread, loop_thread, lp) == 0;
    if (!lp->threaded) atp_http_server_stop(s); /* the rest run below, briefly */
  }
  uv_run(&s->loops[0].loop, UV_RUN_DEFAULT);
  for (int i = 1; i < s->threads; i++) {
    loop_ctx_t *lp = &s->loops[i];
    if (lp->threaded)
      uv_thread_join(&lp->thread);
    else
      uv_run(&lp->loop, UV_RUN_DEFAULT);
  }
  return 0;
}

void atp_http_server_stop(atp_http_server_t *s) {
  /* acq_rel: the one caller that flips the flag sends the wake-ups; uv_async_send
   * orders the rest. */
  if (atomic_exchange_explicit(&s->stop_requested, 1, memory_order_acq_rel)) return;
  for (int i = 0; i < s->threads; i++) uv_async_send(&s->loops[i].stop_async);
}

void atp_http_server_release(atp_http_server_t *s, uint64_t value) {
  for (int i = 0; i < s->threads; i++) {
    loop_ctx_t *lp = &s->loops[i];
    uint64_t cur = atomic_load_explicit(&lp->released, memory_order_relaxed);
    /* release: what the caller published before (the durable state) is
     * visible to the loop that reads this value with acquire. */
    while (cur < value && !atomic_compare_exchange_weak_explicit(
                              &lp->released, &cur, value, memory_order_release,
                              memory_order_relaxed)) {
    }
    /* On the loop's own thread (its turn hook) on_turn writes the output. */
    if (cur < value && tls_loop != lp) uv_async_send(&lp->release_async);
  }
}

int atp_http_server_answer(atp_http_server_t *s, int thread_index, uint64_t request_id,
                           int status, const char *content_type, const void *body,
                           size_t body_len) {
  return atp_http_server_answer_held(s, thread_index, request_id, status, content_type,
                                     body, body_len, 0);
}

static int answer_full(atp_http_server_t *s, int thread_index, uint64_t request_id,
                       int status, const char *content_type, const char *header,
                       const void *body, size_t body_len, uint64_t hold_until);

int atp_http_server_answer_held(atp_http_server_t *s, int thread_index,
                                uint64_t request_id, int status,
                                const char *content_type, const void *body,
                                size_t body_len, uint64_t hold_until) {
  return answer_full(s, thread_index, request_id, status, content_type, NULL, body,
                     body_len, hold_until);
}

int atp_http_server_answer_header(atp_http_server_t *s, int thread_index,
                                  uint64_t request_id, int status,
                                  const char *content_type, const char *header,
                                  const void *body, size_t body_len) {
  return answer_full(s, thread_index, request_id, status, content_type, header, body,
                     body_len, 0);
}

static int answer_full(atp_http_server_t *s, int thread_index, uint64_t request_id,
                       int status, const char *content_type, const char *header,
                       const void *body, size_t body_len, uint64_t hold_until) {
  ATP_ASSERT(s && thread_index >= 0 && thread_index < s->threads && request_id);
  ATP_ASSERT(!header || strlen(header) < ATP_HTTP_ANSWER_HEADER_BYTES);
  answer_t *an = atp_malloc(sizeof *an + body_len);
  if (!an) return ATP_ENOMEM;
  snprintf(an->extra_header, sizeof an->extra_header, "%s", header ? header : "");
  an->request_id = request_id;
  an->hold_until = hold_until;
  an->status = status;
  an->content_type = content_type;
  an->body_len = body_len;
  if (body_len) memcpy(an->body, body, body_len);
  loop_ctx_t *lp = &s->loops[thread_index];
  uv_mutex_lock(&lp->answer_mu);
  bool closed = lp->answers_closed;
  if (!closed) {
    an->next = lp->answers;
    lp->answers = an;
    uv_async_send(&lp->answer_async);
  }
  uv_mutex_unlock(&lp->answer_mu);
  if (closed) atp_free(an);
  return closed ? ATP_EUNAVAILABLE : 0;
}

int atp_http_server_post(atp_http_server_t *s, int thread_index, atp_http_post_t *post,
                         atp_http_post_fn fn, void *ctx) {
  ATP_ASSERT(s && thread_index >= 0 && thread_index < s->threads && post && fn);
  loop_ctx_t *lp = &s->loops[thread_index];
  post->fn = fn;
  post->ctx = ctx;
  uv_mutex_lock(&lp->answer_mu);
  bool closed = lp->answers_closed;
  if (!closed) {
    post->next = lp->posts;
    lp->posts = post;
    uv_async_send(&lp->post_async);
  }
  uv_mutex_unlock(&lp->answer_mu);
  return closed ? ATP_EUNAVAILABLE : 0;
}

bool atp_http_server_deferred_alive(atp_http_server_t *s, int thread_index,
                                    uint64_t request_id) {
  ATP_ASSERT(s && thread_index >= 0 && thread_index < s->threads && request_id);
  /* Linear, like on_answer_async: called once per slice of deferred work. */
  for (conn_t *c = s->loops[thread_index].conns; c; c = c->next)
    if (!c->closed && c->deferred_id == request_id) return true;
  return false;
}

void atp_http_server_hurry(atp_http_server_t *s) {
  atomic_store_explicit(&s->hurry, true, memory_order_relaxed);
  atp_http_server_stop(s);
}

void atp_http_server_destroy(atp_http_server_t *s) {
  if (!s) return;
  for (int i = 0; i < s->threads; i++) loop_destroy(&s->loops[i]);
  atp_free(s->loops);
  atp_free(s);
}

const char *atp_http_method_name(atp_http_method_t m) {
  switch (m) {
    case ATP_HTTP_GET:
      return "GET";
    case ATP_HTTP_HEAD:
      return "HEAD";
    case ATP_HTTP_POST:
      return "POST";
    case ATP_HTTP_PUT:
      return "PUT";
    case ATP_HTTP_DELETE:
      return "DELETE";
    case ATP_HTTP_PATCH:
      return "PATCH";
    case ATP_HTTP_OPTIONS:
      return "OPTIONS";
    default:
      return "OTHER";
  }
}
