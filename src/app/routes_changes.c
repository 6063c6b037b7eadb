/* routes_changes.c - the change feed's routes (CONTRACT.md section 10):
 * GET /v1/changes (pull, long poll) and GET /v1/changes/snapshot.
 *
 * A pull reads the feed (src/flows/feed.c) up to the journal's durable LSN on
 * the loop thread: a read of the segment files that the page cache serves.
 * When it finds nothing and the client asked to wait, the request is
 * deferred (atp_http_response_t.defer): the feed's thread runs the read again
 * when the durable LSN moves or the wait ends, and answers through
 * atp_http_server_answer_header. No loop ever waits.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atp/assert.h"
#include "atp/error.h"
#include "atp/feed.h"
#include "atp/log.h"
#include "atp/memory.h"
#include "atp/router.h"

#define WAIT_MS_MAX   30000
#define LIMIT_DEFAULT 1000

typedef enum { OUT_JSON, OUT_MSGPACK, OUT_NDJSON } out_kind_t;

/* A pull's parameters, copied so that a parked one outlives its request. */
typedef struct {
  atp_feed_t *feed;
  atp_http_server_t *server;
  int thread_index;
  uint64_t request_id;
  out_kind_t out;
  uint64_t after;
  bool has_after;
  uint32_t limit;
  int64_t deadline_ms;
  atp_feed_filter_t filter; /* strings point into text */
  char text[3 * ATP_ID_BYTES_MAX];
} pull_t;

typedef struct {
  const atp_feed_t *feed;
  out_kind_t out;
  atp_writer_t *w; /* JSON and msgpack: the events array's writer */
  atp_buf_t *buf;
} emit_t;

static int emit_event(void *ctx, const atp_feed_event_t *ev) {
  emit_t *e = ctx;
  if (e->out != OUT_NDJSON) {
    atp_feed_write_event(e->feed, e->w, ev);
    return 0;
  }
  atp_writer_t line;
  atp_writer_init(&line, ATP_FORMAT_JSON, e->buf);
  atp_feed_write_event(e->feed, &line, ev);
  atp_buf_append(e->buf, "\n", 1);
  return 0;
}

static const char *content_type(out_kind_t out) {
  return out == OUT_NDJSON    ? "application/x-ndjson"
         : out == OUT_MSGPACK ? "application/msgpack"
                              : "application/json";
}

/* Reads one page into buf as the response body. */
static int pull_read(pull_t *p, atp_buf_t *buf, uint64_t *cursor, uint32_t *count) {
  atp_writer_t w;
  emit_t e = {p->feed, p->out, &w, buf};
  if (p->out != OUT_NDJSON) {
    atp_writer_init(&w, p->out == OUT_MSGPACK ? ATP_FORMAT_MSGPACK : ATP_FORMAT_JSON,
                    buf);
    atp_w_object_begin(&w);
    atp_w_key(&w, "events");
    atp_w_array_begin(&w);
  }
  int rc = atp_feed_read(p->feed, p->after, p->has_after, &p->filter, p->limit,
                         emit_event, &e, cursor, count);
  if (rc) return rc;
  if (p->out != OUT_NDJSON) {
    char seq[21];
    atp_feed_sequence_format(*cursor, seq);
    atp_w_array_end(&w);
    atp_w_key(&w, "cursor");
    atp_w_str(&w, seq, 20);
    atp_w_object_end(&w);
  }
  return buf->failed ? ATP_ENOMEM : 0;
}

static void cursor_header(char *out, size_t cap, uint64_t cursor) {
  char seq[21];
  atp_feed_sequence_format(cursor, seq);
  snprintf(out, cap, "X-Cursor: %s", seq);
}

/* The feed thread's turn for a parked pull. */
static bool pull_wake(void *ctx, uint64_t durable, atp_feed_wake_t why,
                      uint64_t *after_lsn, int64_t *deadline_ms) {
  pull_t *p = ctx;
  (void)deadline_ms;
  bool timed_out = why != ATP_FEED_WAKE_DURABLE;
  atp_buf_t buf;
  atp_buf_init(&buf, 256u << 20);
  uint64_t cursor = 0;
  uint32_t count = 0;
  int rc = pull_read(p, &buf, &cursor, &count);
  if (rc == 0 && count == 0 && !timed_out) {
    /* What arrived did not pass the filter: wait beyond it, from there. */
    p->after = cursor;
    p->has_after = p->has_after || cursor != 0;
    atp_buf_free(&buf);
    *after_lsn = durable;
    return true;
  }
  char header[64];
  cursor_header(header, sizeof header, cursor);
  atp_feed_stat_add(p->feed, ATP_FEED_STAT_POLLS_PARKED, -1);
  if (rc == 0) {
    atp_feed_stat_add(p->feed, ATP_FEED_STAT_PULL_EVENTS, count);
    (void)atp_http_server_answer_header(
        p->server, p->thread_index, p->request_id, 200, content_type(p->out),
        p->out == OUT_NDJSON ? header : NULL, buf.data, buf.len);
  } else {
    char body[256];
    int n =
        snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}",
                 atp_strerror_code(rc), atp_strerror(rc));
    (void)atp_http_server_answer(p->server, p->thread_index, p->request_id,
                                 atp_error_http_status(rc), "application/json", body,
                                 (size_t)n);
  }
  atp_buf_free(&buf);
  atp_free(p);
  return false;
}

static int copy_filter(atp_req_t *rq, pull_t *p) {
  atp_str_t type, sku_prefix, location;
  int rc = atp_query_id(rq, "type", ATP_OPTIONAL, &type);
  if (rc == 0) rc = atp_query_id(rq, "sku_prefix", ATP_OPTIONAL, &sku_prefix);
  if (rc == 0) rc = atp_query_id(rq, "location", ATP_OPTIONAL, &location);
  if (rc != 0) return rc;
  char *t = p->text;
  atp_str_t *dst[3] = {&p->filter.type, &p->filter.sku_prefix, &p->filter.location};
  atp_str_t src[3] = {type, sku_prefix, location};
  for (int i = 0; i < 3; i++) {
    ATP_ASSERT(src[i].len <= ATP_ID_BYTES_MAX);
    memcpy(t, src[i].ptr, src[i].len);
    *dst[i] = (atp_str_t){t, src[i].len};
    t += src[i].len;
  }
  return 0;
}

static int query_uint(atp_req_t *rq, const char *name, uint64_t lo, uint64_t hi,
                      uint64_t *out, bool *given) {
  const atp_str_t *v = atp_req_query(rq, name);
  *given = v != NULL;
  if (!v) return 0;
  uint64_t n = 0;
  if (atp_feed_sequence_parse(*v, &n) != 0 || n < lo || n > hi)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, name, "Must be an integer %llu..%llu.",
                        (unsigned long long)lo, (unsigned long long)hi);
  *out = n;
  return 0;
}

static int sse_count_only(void *ctx, const atp_feed_event_t *ev) {
  (void)ctx;
  (void)ev;
  return 0;
}

static int fail_expired(atp_req_t *rq) {
  atp_feed_stat_add(rq->app->feed, ATP_FEED_STAT_EXPIRED, 1);
  return atp_req_fail(rq, ATP_EEXPIRED, NULL, "after",
                      "The cursor is older than the feed's retention: take GET "
                      "/v1/changes/snapshot and resume from its cursor.");
}

/* The first of JSON, msgpack and NDJSON that Accept names (the contract's
 * rule for the other routes, with NDJSON added); JSON when none. */
static out_kind_t out_kind(const atp_req_t *rq) {
  const atp_http_request_t *h = rq->http;
  const char *p = h->accept, *end = h->accept ? h->accept + h->accept_len : NULL;
  while (p && p < end) {
    const char *comma = memchr(p, ',', (size_t)(end - p));
    const char *entry_end = comma ? comma : end;
    atp_format_t f = atp_format_from_content_type(p, (size_t)(entry_end - p));
    if (f == ATP_FORMAT_NDJSON) return OUT_NDJSON;
    if (f == ATP_FORMAT_JSON || f == ATP_FORMAT_MSGPACK) break;
    p = comma ? comma + 1 : end;
  }
  return rq->out_format == ATP_FORMAT_MSGPACK ? OUT_MSGPACK : OUT_JSON;
}

int atp_route_changes(atp_req_t *rq) {
  atp_app_t *app = rq->app;
  if (!app->feed)
    return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL, "The change feed is off.");
  pull_t local;
  memset(&local, 0, sizeof local);
  pull_t *p = &local;
  uint64_t limit = LIMIT_DEFAULT, wait_ms = 0;
  bool given;
  int rc = query_uint(rq, "after", 0, UINT64_MAX, &p->after, &p->has_after);
  if (rc == 0) rc = query_uint(rq, "limit", 1, ATP_FEED_LIMIT_MAX, &limit, &given);
  if (rc == 0) rc = query_uint(rq, "wait_ms", 0, WAIT_MS_MAX, &wait_ms, &given);
  if (rc == 0) rc = copy_filter(rq, p);
  if (rc != 0) return rc;
  p->feed = app->feed;
  p->server = app->server;
  p->thread_index = rq->http->thread_index;
  p->request_id = rq->http->request_id;
  p->out = out_kind(rq);
  p->limit = (uint32_t)limit;
  uint64_t durable = atp_feed_durable_lsn(app->feed);
  atp_http_response_t *res = rq->res;
  atp_buf_reset(res->body);
  uint64_t cursor = 0;
  uint32_t count = 0;
  rc = pull_read(p, res->body, &cursor, &count);
  if (rc == ATP_EEXPIRED) return fail_expired(rq);
  if (rc != 0)
    return atp_req_fail(rq, rc, NULL, NULL, "The change feed cannot be read.");
  if (count == 0 && wait_ms > 0 && app->server) {
    pull_t *parked = atp_malloc(sizeof *parked);
    if (!parked) return ATP_ENOMEM;
    *parked = local;
    atp_feed_filter_t *f = &parked->filter;
    f->type.ptr = parked->text + (f->type.ptr - local.text);
    f->sku_prefix.ptr = parked->text + (f->sku_prefix.ptr - local.text);
    f->location.ptr = parked->text + (f->location.ptr - local.text);
    parked->after = cursor;
    parked->has_after = p->has_after || cursor != 0;
    parked->deadline_ms = atp_feed_mono_ms() + (int64_t)wait_ms;
    rc = atp_feed_wait(app->feed, durable, parked->deadline_ms, pull_wake, parked);
    if (rc != 0) {
      atp_free(parked);
      return atp_req_fail(rq, rc, NULL, "wait_ms", "Too many waiting pulls.");
    }
    atp_feed_stat_add(app->feed, ATP_FEED_STAT_POLLS_PARKED, 1);
    res->defer = true;
    return 0;
  }
  atp_feed_stat_add(app->feed, ATP_FEED_STAT_PULL_EVENTS, count);
  res->status = 200;
  res->content_type = content_type(p->out);
  if (p->out == OUT_NDJSON && res->extra_header_count < ATP_HTTP_EXTRA_HEADERS_MAX) {
    char *h = atp_arena_alloc(rq->arena, 64);
    if (!h) return ATP_ENOMEM;
    cursor_header(h, 64, cursor);
    atp_http_add_header(res, h);
  }
  return 0;
}

/* --- stream (Server-Sent Events) ---------------------------------------------- */

/* A consumer more than this far behind (bytes sent, not yet taken by its
 * socket) is cut off; it resumes from its Last-Event-ID. */
#define SSE_BACKLOG_BYTES (1u << 20)
#define SSE_HEARTBEAT_MS  15000

/* The heartbeat's span: SSE_HEARTBEAT_MS, or ATPD_TEST_SSE_HEARTBEAT_MS for
 * the black-box tests, read once. */
static int64_t heartbeat_ms(void) {
  static _Atomic int64_t cached = 0;
  int64_t v = atomic_load_explicit(&cached, memory_order_relaxed);
  if (v) return v;
  const char *env = getenv("ATPD_TEST_SSE_HEARTBEAT_MS");
  v = env && atoi(env) > 0 ? atoi(env) : SSE_HEARTBEAT_MS;
  atomic_store_explicit(&cached, v, memory_order_relaxed);
  return v;
}
/* Events read per round, and rounds per wake while the consumer keeps up:
 * one consumer far behind does not hold the feed's thread for long. */
#define SSE_PAGE   500
#define SSE_ROUNDS 8

typedef struct {
  atp_feed_t *feed;
  atp_http_stream_t *stream;
  uint64_t after;
  bool has_after;
  int64_t last_sent_ms;
  atp_feed_filter_t filter; /* strings point into text */
  char text[3 * ATP_ID_BYTES_MAX];
  atp_buf_t frames;
} sse_t;

static int sse_event(void *ctx, const atp_feed_event_t *ev) {
  sse_t *s = ctx;
  char seq[21];
  atp_feed_sequence_format(ev->sequence, seq);
  atp_buf_printf(&s->frames, "id: %s\ndata: ", seq);
  atp_writer_t w;
  atp_writer_init(&w, ATP_FORMAT_JSON, &s->frames);
  atp_feed_write_event(s->feed, &w, ev);
  atp_buf_append(&s->frames, "\n\n", 2);
  return 0;
}

static void sse_free(sse_t *s) {
  atp_feed_stat_add(s->feed, ATP_FEED_STAT_STREAMS, -1);
  atp_http_stream_end(s->stream);
  atp_buf_free(&s->frames);
  atp_free(s);
}

/* The feed thread's turn for a stream: sends what became durable since its
 * cursor, a comment when it was quiet for the heartbeat's span, and parks
 * again; a closed or cut stream is forgotten. */
static bool sse_wake(void *ctx, uint64_t durable, atp_feed_wake_t why,
                     uint64_t *after_lsn, int64_t *deadline_ms) {
  sse_t *s = ctx;
  if (why == ATP_FEED_WAKE_STOP) {
    sse_free(s);
    return false;
  }
  int64_t now = atp_feed_mono_ms();
  bool behind = false;
  for (int round = 0; round < SSE_ROUNDS; round++) {
    atp_buf_reset(&s->frames);
    uint64_t cursor = 0;
    uint32_t count = 0;
    int rc = atp_feed_read(s->feed, s->after, s->has_after, &s->filter, SSE_PAGE,
                           sse_event, s, &cursor, &count);
    if (rc == ATP_EEXPIRED) {
      static const char gone[] =
          "event: cursor_expired\ndata: {\"error\":{\"code\":"
          "\"cursor_expired\",\"message\":\"Take GET "
          "/v1/changes/snapshot and resume from its cursor.\"}}\n\n";
      (void)atp_http_stream_send(s->stream, gone, sizeof gone - 1);
      atp_feed_stat_add(s->feed, ATP_FEED_STAT_EXPIRED, 1);
      sse_free(s);
      return false;
    }
    if (rc != 0 || s->frames.failed) break; /* try again at the next wake */
    if (s->frames.len) {
      rc = atp_http_stream_send(s->stream, s->frames.data, s->frames.len);
      if (rc != 0) {
        if (rc == ATP_EFULL) atp_feed_stat_add(s->feed, ATP_FEED_STAT_STREAMS_CUT, 1);
        sse_free(s);
        return false;
      }
      atp_feed_stat_add(s->feed, ATP_FEED_STAT_STREAM_EVENTS, count);
      s->last_sent_ms = now;
    }
    s->after = cursor;
    s->has_after = s->has_after || cursor != 0;
    behind = count == SSE_PAGE;
    if (!behind || atp_http_stream_backlog(s->stream) > SSE_BACKLOG_BYTES / 2) break;
  }
  if (now - s->last_sent_ms >= heartbeat_ms()) {
    if (atp_http_stream_send(s->stream, ": heartbeat\n\n", 13) != 0) {
      sse_free(s);
      return false;
    }
    s->last_sent_ms = now;
  }
  *after_lsn = durable;
  /* Behind: come back soon for the rest (the socket drains meanwhile). */
  *deadline_ms = behind ? now + 20 : s->last_sent_ms + heartbeat_ms();
  return true;
}

int atp_route_changes_stream(atp_req_t *rq) {
  atp_app_t *app = rq->app;
  if (!app->feed || !app->server)
    return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL, "The change feed is off.");
  pull_t p;
  memset(&p, 0, sizeof p);
  const atp_http_request_t *h = rq->http;
  int rc = 0;
  if (h->last_event_id) {
    atp_str_t id = {h->last_event_id, (uint32_t)h->last_event_id_len};
    if (atp_feed_sequence_parse(id, &p.after) != 0)
      return atp_req_fail(
          rq, ATP_EBADREQ, NULL, "Last-Event-ID",
          "Must be an event's id: line (its sequence, up to 20 digits).");
    p.has_after = true;
  } else {
    rc = query_uint(rq, "after", 0, UINT64_MAX, &p.after, &p.has_after);
  }
  if (rc == 0) rc = copy_filter(rq, &p);
  if (rc != 0) return rc;
  /* An expired cursor is refused now, with a status, rather than in the
   * stream. */
  uint64_t cursor = 0;
  uint32_t count = 0;
  sse_t *s = atp_calloc(1, sizeof *s);
  if (!s) return ATP_ENOMEM;
  s->feed = app->feed;
  s->after = p.after;
  s->has_after = p.has_after;
  memcpy(s->text, p.text, sizeof s->text);
  s->filter = p.filter;
  s->filter.type.ptr = s->text + (p.filter.type.ptr - p.text);
  s->filter.sku_prefix.ptr = s->text + (p.filter.sku_prefix.ptr - p.text);
  s->filter.location.ptr = s->text + (p.filter.location.ptr - p.text);
  atp_buf_init(&s->frames, 64u << 20);
  if (p.has_after) {
    rc = atp_feed_read(app->feed, p.after, true, &s->filter, 1, sse_count_only, NULL,
                       &cursor, &count);
    if (rc == ATP_EEXPIRED) {
      atp_buf_free(&s->frames);
      atp_free(s);
      return fail_expired(rq);
    }
  }
  atp_http_response_t *res = rq->res;
  res->status = 200;
  res->content_type = "text/event-stream";
  atp_http_add_header(res, "Cache-Control: no-cache");
  s->stream = atp_http_stream_begin(res, SSE_BACKLOG_BYTES);
  if (!s->stream) {
    atp_buf_free(&s->frames);
    atp_free(s);
    return ATP_ENOMEM;
  }
  atp_feed_stat_add(app->feed, ATP_FEED_STAT_STREAMS, 1);
  atp_feed_stat_add(app->feed, ATP_FEED_STAT_STREAMS_OPENED, 1);
  s->last_sent_ms = atp_feed_mono_ms();
  /* Due at once: the first turn sends what is durable after the cursor. */
  rc = atp_feed_wait(app->feed, UINT64_MAX, 0, sse_wake, s);
  if (rc != 0) {
    /* The head goes out; the stream ends at once and the client retries. */
    sse_free(s);
  }
  return 0;
}

/* --- snapshot ------------------------------------------------------------------ */

/* The snapshot is a streamed answer (atp_http_stream_begin): the positions
 * are walked in pieces of about SNAP_CHUNK_BYTES on the feed's thread, each
 * piece sent once the socket took most of the one before, so a snapshot of
 * millions of positions costs a few MiB, not its size. The body is
 * delimited by the connection's close (no Content-Length); it is complete
 * when it holds its cursor (the last member, or the last NDJSON line). */
#define SNAP_CHUNK_BYTES     (256u << 10)
#define SNAP_LOW_BYTES       (1u << 20) /* the next piece waits below this backlog */
#define SNAP_BACKLOG_BYTES   (4u << 20)
#define SNAP_ROUNDS          4 /* pieces per turn of the feed's thread */
#define SNAP_DURABLE_WAIT_MS 10000

typedef struct {
  atp_feed_t *feed;
  const atp_engine_t *engine;
  atp_journal_t *journal;
  atp_http_stream_t *stream;
  out_kind_t out;
  uint64_t cursor;
  uint32_t next, total; /* creation indexes: walked up to next, of total */
  uint64_t n;           /* events written */
  uint64_t chunk_events;
  int64_t now_ms;
  bool done; /* the trailer is in chunk */
  /* The piece in chunk leaves once the durable LSN reaches needed_lsn (what
   * the walk may have seen), or at needed_deadline_ms. */
  uint64_t needed_lsn;
  int64_t needed_deadline_ms;
  atp_buf_t chunk;
} snap_t;

static int snap_position(void *ctx, const atp_position_t *p) {
  snap_t *s = ctx;
  atp_writer_t w;
  if (s->out == OUT_JSON && s->n) atp_buf_append(&s->chunk, ",", 1);
  atp_writer_init(&w, s->out == OUT_MSGPACK ? ATP_FORMAT_MSGPACK : ATP_FORMAT_JSON,
                  &s->chunk);
  atp_feed_write_position_event(s->feed, &w, p, s->cursor, s->n++, s->now_ms);
  if (s->out == OUT_NDJSON) atp_buf_append(&s->chunk, "\n", 1);
  s->chunk_events++;
  if (s->chunk.failed) return ATP_ENOMEM;
  return s->chunk.len >= SNAP_CHUNK_BYTES; /* 1: this piece is full */
}

/* {"events":[ ... in the answer's format; msgpack names its array's length
 * first, which is why the walk stops at the positions there were when the
 * cursor was taken (those after it come in the feed). */
static void snap_head(snap_t *s) {
  if (s->out == OUT_JSON) {
    atp_buf_append(&s->chunk, "{\"events\":[", 11);
  } else if (s->out == OUT_MSGPACK) {
    unsigned char h[] = {0x82,
                         0xa6,
                         'e',
                         'v',
                         'e',
                         'n',
                         't',
                         's',
                         0xdd,
                         (unsigned char)(s->total >> 24),
                         (unsigned char)(s->total >> 16),
                         (unsigned char)(s->total >> 8),
                         (unsigned char)s->total};
    atp_buf_append(&s->chunk, h, sizeof h);
  }
}

static void snap_trailer(snap_t *s) {
  char seq[21];
  atp_feed_sequence_format(s->cursor, seq);
  if (s->out == OUT_JSON) {
    atp_buf_printf(&s->chunk, "],\"cursor\":\"%s\"}", seq);
  } else if (s->out == OUT_MSGPACK) {
    unsigned char k[] = {0xa6, 'c', 'u', 'r', 's', 'o', 'r', 0xb4};
    atp_buf_append(&s->chunk, k, sizeof k);
    atp_buf_append(&s->chunk, seq, 20);
  } else {
    atp_buf_printf(&s->chunk, "{\"cursor\":\"%s\"}\n", seq);
  }
}

static void snap_free(snap_t *s) {
  atp_http_stream_end(s->stream);
  atp_buf_free(&s->chunk);
  atp_free(s);
}

/* Walks the next piece into chunk. 0, or ATP_ENOMEM. */
static int snap_fill(snap_t *s, int64_t now) {
  s->chunk_events = 0;
  int rc = atp_position_each_from(s->engine, &s->next, s->total, snap_position, s);
  if (rc < 0) return rc;
  if (s->next == s->total) {
    snap_trailer(s);
    s->done = true;
  }
  if (s->chunk.failed) return ATP_ENOMEM;
  /* The walk may have seen changes not yet durable: the piece leaves once
   * they are, so nothing shown is lost by a crash. */
  s->needed_lsn = s->journal ? atp_journal_assigned_lsn(s->journal) : 0;
  s->needed_deadline_ms = now + SNAP_DURABLE_WAIT_MS;
  return 0;
}

/* The feed thread's turn for a snapshot: a few pieces, each once what it
 * showed is durable and the socket took the one before. */
static bool snap_wake(void *ctx, uint64_t durable, atp_feed_wake_t why,
                      uint64_t *after_lsn, int64_t *deadline_ms) {
  snap_t *s = ctx;
  (void)durable;
  if (why == ATP_FEED_WAKE_STOP) {
    snap_free(s); /* cut short: the body has no cursor */
    return false;
  }
  int64_t now = atp_feed_mono_ms();
  for (int round = 0; round < SNAP_ROUNDS; round++) {
    if (!s->chunk.len) {
      if (s->done) {
        snap_free(s);
        return false;
      }
      if (snap_fill(s, now) != 0) {
        atp_log("error", "changes snapshot: out of memory; the answer is cut short");
        snap_free(s);
        return false;
      }
    }
    if (s->needed_lsn > atp_feed_durable_lsn(s->feed) && now < s->needed_deadline_ms) {
      *after_lsn = s->needed_lsn - 1;
      *deadline_ms = s->needed_deadline_ms;
      return true;
    }
    if (atp_http_stream_closed(s->stream)) {
      snap_free(s); /* the client went away */
      return false;
    }
    if (atp_http_stream_backlog(s->stream) > SNAP_LOW_BYTES) {
      *after_lsn = UINT64_MAX;
      *deadline_ms = now + 2; /* the socket drains meanwhile */
      return true;
    }
    if (atp_http_stream_send(s->stream, s->chunk.data, s->chunk.len) != 0) {
      snap_free(s); /* the client went away */
      return false;
    }
    atp_feed_stat_add(s->feed, ATP_FEED_STAT_SNAPSHOT_EVENTS, (int64_t)s->chunk_events);
    atp_buf_reset(&s->chunk);
  }
  /* More to walk: due again at once, after the other waits' turns. */
  *after_lsn = UINT64_MAX;
  *deadline_ms = now;
  return true;
}

int atp_route_changes_snapshot(atp_req_t *rq) {
  atp_app_t *app = rq->app;
  if (!app->feed || !app->durable || !app->server)
    return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL, "The change feed is off.");
  atp_engine_t *engine = atp_app_engine(app);
  /* The cursor is taken before the walk: every change up to it is in the
   * positions read, and a change after it comes again in the feed, where a
   * consumer skips it when its position.version is at or below the
   * snapshot's (proto/events.md, "Snapshot then tail"). A position created
   * after the count below was read was created after the cursor too: all of
   * its changes are in the feed after the cursor. */
  uint64_t durable = atp_feed_durable_lsn(app->feed);
  uint64_t cursor = durable * ATP_FEED_INDEX_SPAN + (ATP_FEED_INDEX_SPAN - 1);
  if (durable == 0) cursor = 0;
  snap_t *s = atp_calloc(1, sizeof *s);
  if (!s) return ATP_ENOMEM;
  s->feed = app->feed;
  s->engine = engine;
  s->journal = atp_durable_journal(app->durable);
  s->out = out_kind(rq);
  s->cursor = cursor;
  s->total = atp_position_count(engine);
  s->now_ms = atp_engine_now_ms(engine);
  /* A piece is at most SNAP_CHUNK_BYTES and one event; the limit only
   * guards against a runaway. */
  atp_buf_init(&s->chunk, 16u << 20);
  snap_head(s);
  atp_http_response_t *res = rq->res;
  res->status = 200;
  res->content_type = content_type(s->out);
  if (s->out == OUT_NDJSON && res->extra_header_count < ATP_HTTP_EXTRA_HEADERS_MAX) {
    char *h = atp_arena_alloc(rq->arena, 64);
    if (!h) {
      atp_buf_free(&s->chunk);
      atp_free(s);
      return ATP_ENOMEM;
    }
    cursor_header(h, 64, cursor);
    atp_http_add_header(res, h);
  }
  atp_http_add_header(res, "Cache-Control: no-cache");
  s->stream = atp_http_stream_begin(res, SNAP_BACKLOG_BYTES);
  if (!s->stream) {
    atp_buf_free(&s->chunk);
    atp_free(s);
    return ATP_ENOMEM;
  }
  /* Due at once: the first turn walks and sends the first piece. */
  if (atp_feed_wait(app->feed, UINT64_MAX, 0, snap_wake, s) != 0)
    snap_free(s); /* the head goes out, the body ends at once: the client retries */
  return 0;
}
