/* http.h - the HTTP/1.1 server: libuv event loops, llhttp parsing.
 *
 * N event-loop threads each own a listening socket bound to the same address
 * with SO_REUSEPORT (the kernel spreads connections), their connections, and a
 * per-connection arena. A request is parsed with llhttp; when it is complete
 * the handler runs on the loop thread and fills a response, which is written in
 * request order (pipelining). Limits from limits.h: connections per thread,
 * header bytes (431), URL bytes (414), body bytes per route (413), header,
 * body (per gap and in total) and idle timeouts; a slow or half-closed client
 * cannot pin memory, and a request that ends gives its large buffers back.
 * Framing is strict: a repeated Authorization or Host, an HTTP/1.1 request
 * without Host, obsolete line folding are 400; a transfer coding other than
 * chunked is 501.
 *
 * Only http_server.c includes llhttp and libuv's TCP parts.
 */
#ifndef ATP_HTTP_H
#define ATP_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atp/memory.h"

typedef enum {
  ATP_HTTP_GET,
  ATP_HTTP_HEAD,
  ATP_HTTP_POST,
  ATP_HTTP_PUT,
  ATP_HTTP_DELETE,
  ATP_HTTP_PATCH,
  ATP_HTTP_OPTIONS,
  ATP_HTTP_OTHER,
} atp_http_method_t;

/* "GET", "HEAD", ...; "OTHER" for ATP_HTTP_OTHER. Thread: any. */
const char *atp_http_method_name(atp_http_method_t method);

/* Indexes of atp_http_request_t.shopify. */
enum {
  ATP_HTTP_SHOPIFY_TOPIC = 0,    /* X-Shopify-Topic */
  ATP_HTTP_SHOPIFY_HMAC,         /* X-Shopify-Hmac-Sha256 */
  ATP_HTTP_SHOPIFY_SHOP,         /* X-Shopify-Shop-Domain */
  ATP_HTTP_SHOPIFY_WEBHOOK_ID,   /* X-Shopify-Webhook-Id */
  ATP_HTTP_SHOPIFY_EVENT_ID,     /* X-Shopify-Event-Id */
  ATP_HTTP_SHOPIFY_TRIGGERED_AT, /* X-Shopify-Triggered-At */
  ATP_HTTP_SHOPIFY_HEADERS
};

typedef struct {
  atp_http_method_t method;
  const char *method_name; /* "GET", ... NUL-terminated */
  const char *path;        /* raw (still percent-encoded), NUL-terminated */
  size_t path_len;
  const char *query; /* after '?', raw, NUL-terminated; "" if none */
  size_t query_len;
  const char *content_type; /* header value or NULL */
  size_t content_type_len;
  const char *accept; /* header value or NULL */
  size_t accept_len;
  const char *authorization; /* header value or NULL; never log it */
  size_t authorization_len;
  const char *x_request_id; /* X-Request-Id value or NULL (the client's id) */
  size_t x_request_id_len;
  const char *last_event_id; /* Last-Event-ID value or NULL (SSE resume) */
  size_t last_event_id_len;
  /* The X-Shopify-* headers a webhook carries (ATP_HTTP_SHOPIFY_*), NULL when
   * absent; read by POST /v1/shopify/webhooks only. */
  const char *shopify[ATP_HTTP_SHOPIFY_HEADERS];
  size_t shopify_len[ATP_HTTP_SHOPIFY_HEADERS];
  const char *body; /* whole body (chunked bodies are joined), may be "" */
  size_t body_len;
  uint64_t request_id; /* unique per process, for logs */
  int64_t started_ns;  /* monotonic time the request head was complete */
  atp_arena_t *arena;  /* cleared after the response is queued */
  int thread_index;    /* which loop thread runs the handler */
} atp_http_request_t;

#define ATP_HTTP_EXTRA_HEADERS_MAX 4

typedef struct {
  int status;               /* set by the handler; 500 if left 0 */
  const char *content_type; /* static string, or NULL for no body type */
  atp_buf_t *body;          /* the handler appends the body here */
  const char *extra_headers[ATP_HTTP_EXTRA_HEADERS_MAX]; /* "Retry-After: 1" */
  uint32_t extra_header_count;
  bool close; /* close the connection after this response */
  /* 0: send as soon as the order allows. Else the response is parked on its
   * connection until atp_http_server_release was called with a value >= it;
   * the responses pipelined after it wait behind it, in order. The server
   * knows nothing of what the value means (atpd: a journal's durable ticket
   * horizon). */
  uint64_t hold_until;
  /* The handler answers later, from another thread, through
   * atp_http_server_answer(server, req->thread_index, req->request_id, ...):
   * for work that must not run on a loop (a snapshot). Until then the
   * connection parses nothing more (pipelined requests wait, in order) and
   * is not idle; status, body and hold_until set now are ignored. An answer
   * for a connection closed meanwhile is dropped. The request (its arena,
   * path, query and body) stays valid until the answer is queued or the
   * connection closes (atp_http_server_deferred_alive). atp_http_feed has no
   * loop to answer on: it answers 503 unavailable. */
  bool defer;
  /* Set through atp_http_stream_begin: the response is a stream (below). */
  struct atp_http_stream *stream;
} atp_http_response_t;

/* Adds a header line to res ("Retry-After: 1", a static string); one beyond
 * ATP_HTTP_EXTRA_HEADERS_MAX is dropped, never written past the array. */
static inline void atp_http_add_header(atp_http_response_t *res, const char *line) {
  if (res->extra_header_count < ATP_HTTP_EXTRA_HEADERS_MAX)
    res->extra_headers[res->extra_header_count++] = line;
}

/* Streaming responses (Server-Sent Events and the like). A handler calls
 * atp_http_stream_begin instead of writing a body: the head (res->status,
 * content_type, extra headers, no Content-Length, Connection: close) is sent
 * at once and the body is whatever atp_http_stream_send appends later, from
 * any thread, until atp_http_stream_end or the connection closes. The
 * connection then serves nothing else and is not idle.
 *
 * Backpressure: bytes sent and not yet taken by the socket (the backlog) are
 * bounded by backlog_max; a send beyond it cuts the connection at once and
 * returns ATP_EFULL, so a client that does not read costs at most that much
 * memory. The producer keeps its own position and the client resumes.
 *
 * The handle is reference counted: begin returns it with one reference for
 * the producer, which atp_http_stream_end gives back. Thread: begin on the
 * handler's loop thread; the rest from any thread. */
typedef struct atp_http_stream atp_http_stream_t;

/* NULL when out of memory (answer an error instead). */
atp_http_stream_t *atp_http_stream_begin(atp_http_response_t *res, size_t backlog_max);
/* Copies len bytes to the stream. 0; ATP_EUNAVAILABLE when the connection is
 * gone (closed by the client, cut, shut down); ATP_EFULL when the backlog
 * would pass backlog_max (the connection is cut now); ATP_ENOMEM. */
int atp_http_stream_send(atp_http_stream_t *stream, const void *data, size_t len);
/* Bytes sent and not yet written to the socket. */
size_t atp_http_stream_backlog(const atp_http_stream_t *stream);
/* True once sends fail (the connection closed, was cut or shut down): a
 * producer that waits for the backlog to drain stops waiting. */
bool atp_http_stream_closed(const atp_http_stream_t *stream);
/* Ends the stream (the connection closes once what was sent is written) and
 * drops the producer's reference: the handle must not be used after. */
void atp_http_stream_end(atp_http_stream_t *stream);

/* Runs on the loop thread for each complete request. Must not block. */
typedef void (*atp_http_handler_fn)(void *ctx, const atp_http_request_t *req,
                                    atp_http_response_t *res);

/* The body limit for a request, decided when its head is complete
 * (ATP_HTTP_BODY_BYTES_MAX or ATP_HTTP_BULK_BODY_BYTES_MAX). */
typedef size_t (*atp_http_body_limit_fn)(void *ctx, atp_http_method_t method,
                                         const char *path, size_t path_len);

/* Renders the server's own refusals (malformed framing, limits, timeouts) in
 * the application's error shape and format: err is an ATP_E* code (its status
 * is the error table's and is kept whatever the hook sets), message a
 * sentence. req holds what is known so far: method and path only once the
 * head is complete, content_type and accept as soon as they were read. The
 * hook sets content_type and appends the body to res->body; without a hook
 * (or an empty body) the server writes the error as JSON. */
typedef void (*atp_http_error_fn)(void *ctx, const atp_http_request_t *req, int err,
                                  const char *message, atp_http_response_t *res);

/* Called once per response after it is queued, for metrics and the access log:
 * route-independent facts only. */
typedef void (*atp_http_log_fn)(void *ctx, const atp_http_request_t *req, int status,
                                size_t body_bytes, int64_t elapsed_ns);

/* Called on every loop at the end of each turn: after the loop handled all
 * the I/O that was ready and before it polls again (libuv's prepare phase).
 * Output it releases with atp_http_server_release from there goes out in the
 * same turn. For a group commit on the loop's own thread. */
typedef void (*atp_http_turn_fn)(void *ctx, int thread_index);

typedef struct {
  const char *host; /* "127.0.0.1" */
  int port;         /* 0: pick a free one (see atp_http_server_port) */
  int threads;      /* 1..ATP_HTTP_THREADS_MAX */
  atp_http_handler_fn handler;
  atp_http_body_limit_fn body_limit; /* NULL: ATP_HTTP_BODY_BYTES_MAX for all */
  atp_http_log_fn log;               /* NULL: none */
  atp_http_error_fn error;           /* NULL: the server's errors are JSON */
  atp_http_turn_fn turn;             /* NULL: none */
  void *ctx;                         /* passed to the five callbacks */
  /* Overrides of the limits.h defaults, mostly so tests can be quick; 0 means
   * the default named in each comment. */
  uint32_t idle_timeout_ms;       /* ATP_HTTP_IDLE_TIMEOUT_MS */
  uint32_t header_timeout_ms;     /* ATP_HTTP_HEADER_TIMEOUT_MS */
  uint32_t body_timeout_ms;       /* ATP_HTTP_BODY_TIMEOUT_MS */
  uint32_t body_total_timeout_ms; /* ATP_HTTP_BODY_TOTAL_TIMEOUT_MS */
  uint32_t stop_timeout_ms;       /* stop: in-flight grace before force-close, 5000 */
  uint32_t connections_max;       /* per thread, ATP_HTTP_CONNECTIONS_MAX */
} atp_http_config_t;

typedef struct atp_http_server atp_http_server_t;

/* Binds and listens on every thread's socket (so the port is known on
 * return) but serves nothing until atp_http_server_run. Negative ATP_E* or
 * -errno-like ATP_EUNAVAILABLE when the address cannot be bound; err gets a
 * sentence. Sets SIGPIPE to SIG_IGN if it is still SIG_DFL (a write to a reset
 * connection must fail with EPIPE, not kill the process). */
int atp_http_server_create(const atp_http_config_t *config, atp_http_server_t **out,
                           char *err, size_t err_len);

/* The bound port. */
int atp_http_server_port(const atp_http_server_t *server);

/* From loop thread_index's own thread (its turn hook): waits up to wait_ns
 * for I/O to be ready on that loop without handling it; true when some is
 * (the loop's next poll then returns at once). For a group commit that
 * lets the requests already on their way join the group. */
bool atp_http_server_io_ready(atp_http_server_t *server, int thread_index,
                              int64_t wait_ns);

/* Runs every loop (threads 1..N-1 on new threads, 0 on the caller) until
 * atp_http_server_stop, then returns 0 once every connection is drained. */
int atp_http_server_run(atp_http_server_t *server);

/* Stops accepting, lets in-flight requests finish and their responses be
 * written, closes idle connections, then makes run return. Async-signal-safe
 * enough to call from a libuv signal handler on loop 0; callable from any
 * thread. */
void atp_http_server_stop(atp_http_server_t *server);

/* Stops (if not stopped yet) and cuts the grace short: within a few tens of
 * milliseconds every loop closes its remaining connections, so run returns
 * even with a client that never reads. Any thread, while the server exists. */
void atp_http_server_hurry(atp_http_server_t *server);

void atp_http_server_destroy(atp_http_server_t *server);

/* Lets every parked response with hold_until <= value go (values only grow;
 * a smaller one is ignored). Posts a uv_async to each loop, which coalesces
 * wake-ups. Thread: any, after create and before destroy. */
void atp_http_server_release(atp_http_server_t *server, uint64_t value);

/* Delivers the answer of a deferred request (atp_http_response_t.defer):
 * body is copied, content_type must be a static string. 0, ATP_ENOMEM, or
 * ATP_EUNAVAILABLE when that loop has finished (the answer is dropped).
 * Thread: any, after create and before destroy. */
int atp_http_server_answer(atp_http_server_t *server, int thread_index,
                           uint64_t request_id, int status, const char *content_type,
                           const void *body, size_t body_len);
/* The same with one extra header line ("X-Cursor: 42", no CRLF; NULL: none)
 * shorter than ATP_HTTP_ANSWER_HEADER_BYTES, copied. */
#define ATP_HTTP_ANSWER_HEADER_BYTES 128
int atp_http_server_answer_header(atp_http_server_t *server, int thread_index,
                                  uint64_t request_id, int status,
                                  const char *content_type, const char *header,
                                  const void *body, size_t body_len);

/* Same as atp_http_server_answer, and the answer is then parked like a
 * response with hold_until (0: not parked): for deferred work that mutated
 * state and must not answer before it is durable (a batch run in slices). */
int atp_http_server_answer_held(atp_http_server_t *server, int thread_index,
                                uint64_t request_id, int status,
                                const char *content_type, const void *body,
                                size_t body_len, uint64_t hold_until);

/* A continuation: fn(ctx) to run once on a loop thread. The caller embeds it
 * in its own object, so posting allocates nothing and the queue is bounded
 * by the objects that exist; one is queued at most once at a time. */
typedef void (*atp_http_post_fn)(void *ctx);
typedef struct atp_http_post {
  struct atp_http_post *next;
  atp_http_post_fn fn;
  void *ctx;
} atp_http_post_t;

/* Runs fn(ctx) on loop thread_index soon: on a later loop iteration, after
 * the I/O that is ready, so a long job run in slices lets other requests in
 * between. When the loop finishes, what is still queued runs once more
 * there (a deferred request's connection is gone by then: see below), and
 * posting to a finished loop returns ATP_EUNAVAILABLE (fn is not run).
 * Thread: any, after create and before destroy. */
int atp_http_server_post(atp_http_server_t *server, int thread_index,
                         atp_http_post_t *post, atp_http_post_fn fn, void *ctx);

/* Whether the deferred request request_id still waits on its connection on
 * loop thread_index: false once that connection closed (its request's
 * arena, head and body are freed with it; until then they stay valid, so a
 * deferred handler may keep using them). Thread: that loop's only. */
bool atp_http_server_deferred_alive(atp_http_server_t *server, int thread_index,
                                    uint64_t request_id);

/* For fuzzing and tests without sockets: feeds raw bytes through the same
 * parser and handler path as a connection would, appending every response's
 * bytes to out. Returns 0, or 1 when the server would close the connection. */
int atp_http_feed(const atp_http_config_t *config, const char *bytes, size_t len,
                  atp_buf_t *out);

#endif
