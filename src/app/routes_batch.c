/* routes_batch.c - POST /v1/batch, the integration flows' batch adapter
 * (CONTRACT.md 6.1, 6.2).
 *
 * A body of up to 64 MiB (a JSON array, NDJSON, a msgpack array or a stream
 * of msgpack objects) is first scanned whole by the codec's element splitter,
 * which only finds where each op's bytes lie: that pre-scan refuses a broken
 * framing or more than ATP_BATCH_OPS_MAX ops before any op is applied. Then
 * each op is parsed on its own into a scratch arena reset between ops, so the
 * body is never held twice as a tree (three arenas in turn: the two next
 * ops of a slice are parsed before the current one runs, so the engine can
 * fetch what they will touch, op by op ahead of it), and applied by the same
 * op function as
 * its single route (ops.h): same validation, idempotency and errors. One
 * failure never stops the rest.
 *
 * The loop lives in src/app, not src/flows, because the op functions read
 * fields with the application's request readers (atp_get_id, atp_get_time:
 * field paths, clock skew) and check the ownership matrix of the app; only
 * the plug-in points of dead letters and paused flows are the flows layer's
 * (atp/flows.h), called here per op.
 *
 * Counting: `applied` are 2xx outcomes that changed something, `replayed`
 * idempotent replays, `queued` ops handed to a paused flow's queue (202),
 * `rejected` every other outcome, insufficient_stock included; every rejected
 * op except insufficient_stock (a business outcome, section 6.3) goes to the
 * rejection sink.
 *
 * Cost: an op takes 2-5 us, so a 100,000-op batch is 0.2-0.5 s of work. It
 * runs in slices of at most SLICE_OPS ops or SLICE_NS, whichever comes
 * first: the first inside the handler (a small batch answers at once, as
 * any route), the rest as continuations posted to the same loop
 * (atp_http_server_post), so the loop serves its other connections between
 * slices. A batch that needs more than one slice defers its answer; its
 * state lives outside the request arena (which is the connection's, freed
 * with it), and each slice first asks whether the connection is still there
 * (atp_http_server_deferred_alive): after a close it frees itself without
 * touching the request. Each continuation slice is its own durable bracket
 * on the loop's slot (a slot held across loop iterations would stall the
 * journal writer's horizon), and the answer is parked until the highest
 * target of the slices is durable. The pre-scan (a framing pass, about
 * 1 ms per MiB, so up to tens of milliseconds for a whole 64 MiB body) runs
 * in slices of SLICE_NS too, the first in the handler and the rest as
 * continuations, each ending at an op's boundary; no op runs before it has
 * seen the whole body, so a broken body still changes nothing.
 */

#include <stddef.h>
#include <string.h>
#include <time.h>

#include "atp/app.h"
#include "atp/assert.h"
#include "atp/durability.h"
#include "atp/error.h"
#include "atp/flows.h"
#include "atp/limits.h"
#include "atp/router.h"
#include "ops.h"

/* One op may be as large as a single route's body. */
#define OP_BYTES_MAX ATP_HTTP_BODY_BYTES_MAX
/* The scratch arena one op parses into: a 1 MiB op's tree and its lines. */
#define OP_ARENA_CHUNK_BYTES (64 * 1024)
#define OP_ARENA_BYTES_MAX   (8u * OP_BYTES_MAX)
/* One slice of a batch: the ops run before the loop serves others again. */
#define SLICE_OPS       1000
#define SLICE_NS        (2 * 1000 * 1000)
#define SLICE_CLOCK_OPS 32 /* ops between two looks at the clock */

static const char ops_sentence[] =
    "Must be one of adjust, count, safety_stock, group, reserve, commit, release, "
    "extend, fulfil, amend, shopify_map, shopify_webhook.";

typedef struct {
  const char *name;
  atp_op_fn fn;
  atp_field_kind_t field; /* what the op writes, for ownership and owners */
  const char *target_key; /* the op's field naming its resource, or NULL */
} op_kind_t;

static const op_kind_t op_kinds[] = {
    {"adjust", atp_op_adjust, ATP_FIELD_ADJUSTMENTS, NULL},
    {"count", atp_op_count, ATP_FIELD_COUNTS, NULL},
    {"safety_stock", atp_op_safety_stock, ATP_FIELD_SAFETY_STOCK, NULL},
    {"group", atp_op_group, ATP_FIELD_GROUPS, "name"},
    {"reserve", atp_op_reserve, ATP_FIELD_RESERVATIONS, NULL},
    {"commit", atp_op_commit, ATP_FIELD_RESERVATIONS, "id"},
    {"release", atp_op_release, ATP_FIELD_RESERVATIONS, "id"},
    {"extend", atp_op_extend, ATP_FIELD_RESERVATIONS, "id"},
    {"fulfil", atp_op_fulfil, ATP_FIELD_RESERVATIONS, "id"},
    {"amend", atp_op_amend, ATP_FIELD_RESERVATIONS, "id"},
    {"shopify_map", atp_op_shopify_map, ATP_FIELD_SHOPIFY_MAPPINGS, NULL},
    {"shopify_webhook", atp_op_shopify_webhook, ATP_FIELD_SHOPIFY_MAPPINGS, NULL},
};
#define OP_KIND_COUNT (sizeof op_kinds / sizeof op_kinds[0])

/* --- shared by the op functions (ops.h) -------------------------------------- */

void atp_op_out_init(atp_op_out_t *out) {
  memset(out, 0, offsetof(atp_op_out_t, u));
  atp_result_init(&out->result);
  out->u.res.reservation = NULL;
  out->u.res.shortfalls = NULL;
}

int atp_op_writer(atp_req_t *rq, const atp_val_t *body, atp_str_t flow, const char *key,
                  unsigned flags, atp_str_t *out) {
  if (!flow.len) {
    int rc = atp_get_id(rq, body, NULL, key, flags, out);
    rq->change_ctx.source = *out;
    return rc;
  }
  rq->change_ctx.source = flow;
  atp_str_t given;
  int rc = atp_get_id(rq, body, NULL, key, ATP_OPTIONAL, &given);
  if (rc != 0) return rc;
  if (given.len && (given.len != flow.len || memcmp(given.ptr, flow.ptr, flow.len)))
    return atp_req_fail(rq, ATP_EBADREQ, NULL, key,
                        "In a batch the op's %s is its flow: leave it out or make "
                        "them equal.",
                        key);
  *out = flow;
  return 0;
}

int atp_op_owner_check(atp_req_t *rq, atp_field_kind_t field, atp_str_t flow,
                       atp_str_t writer, const char *key) {
  return atp_req_owner_check(rq, field, flow.len ? flow : writer,
                             flow.len ? "flow" : key);
}

/* --- the batch ----------------------------------------------------------------- */

typedef struct {
  uint32_t start, end; /* the op's bytes in the body */
} span_t;

/* An op parsed ahead of its turn: the parse's outcome, kept until it runs. */
typedef struct {
  int rc; /* 0, or what atp_codec_parse_element returned */
  bool too_large;
  atp_parse_error_t perr;
  atp_val_t *v;
  bool prefetched; /* an adjustment, a count or a reservation: pf holds its
                      prefetch's first step */
  atp_prefetch_t pf;
} parsed_t;

/* The ops a slice holds parsed: the one running and the two after it. */
#define AHEAD 3

typedef struct {
  atp_req_t *rq; /* the batch request: &req once deferred */
  atp_req_t op;  /* the context each op runs in: rq with its scratch arena */
  atp_arena_t scratch[AHEAD]; /* one op's tree and lines each, reset between
                                 ops: the op running and the next ones */
  parsed_t parsed[AHEAD];     /* the parses in scratch[] */
  atp_splitter_t split;       /* the pre-scan's splitter (for the format and depth) */
  const atp_flows_t *flows;
  bool all; /* ?results=all: every outcome, not only non-2xx */
  uint32_t applied, replayed, rejected, queued;
  atp_buf_t results_buf; /* the results array, written beside the counters */
  atp_writer_t results;
  span_t *spans;        /* in the request arena */
  uint32_t count, next; /* ops, and the first one not run yet */
  uint32_t bound;       /* spans' room: the most ops the body can hold */
  bool scanning;        /* the pre-scan has not seen the whole body yet */
  /* Once deferred: copies of what the handler's stack held (the request's
   * own bytes stay in the connection until the answer), the answer's body,
   * and the continuation. */
  atp_http_server_t *server;
  atp_http_request_t http;
  atp_req_t req;
  atp_http_response_t res;
  atp_buf_t res_body;
  atp_http_post_t post;
  uint64_t hold_until; /* the highest durable target of the slices */
  /* atp_batch_run_ops: each op's outcome, out_max of them; NULL otherwise. */
  atp_batch_op_result_t *out;
  uint32_t out_max;
  bool no_sink; /* atp_batch_run_ops without dead letters */
} batch_t;

static void write_error(atp_writer_t *w, int err, const atp_req_t *op) {
  atp_w_key(w, "error");
  atp_w_object_begin(w);
  atp_w_key(w, "code");
  atp_w_cstr(w, atp_strerror_code(err));
  atp_w_key(w, "message");
  atp_w_cstr(w, op->message[0] ? op->message : atp_strerror(err));
  if (op->field[0]) {
    atp_w_key(w, "field");
    atp_w_cstr(w, op->field);
  }
  atp_w_object_end(w);
}

/* Counts op index's outcome, writes its result line when asked for and hands
 * a rejection to the sink. */
static void record(batch_t *b, uint32_t index, int rc, const atp_op_out_t *out,
                   const span_t *span, const atp_val_t *value, atp_str_t flow,
                   const op_kind_t *kind) {
  int status = rc == 0 ? out->status : atp_error_http_status(rc);
  if (b->out && index < b->out_max) {
    atp_batch_op_result_t *o = &b->out[index];
    o->rc = rc;
    o->status = status;
    o->replayed = rc == 0 && out->replayed;
    o->queued = rc == 0 && status == 202;
    snprintf(o->message, sizeof o->message, "%s",
             rc == 0            ? ""
             : b->op.message[0] ? b->op.message
                                : atp_strerror(rc));
    snprintf(o->field, sizeof o->field, "%s", rc == 0 ? "" : b->op.field);
  }
  if (rc == 0 && status == 202)
    b->queued++;
  else if (rc == 0 && out->replayed)
    b->replayed++;
  else if (rc == 0)
    b->applied++;
  else
    b->rejected++;
  if (rc == 0 && !b->all) return;
  atp_writer_t *w = &b->results;
  atp_w_object_begin(w);
  atp_w_key(w, "index");
  atp_w_uint(w, index);
  atp_w_key(w, "status");
  atp_w_int(w, status);
  if (rc == 0 && out->replayed) {
    atp_w_key(w, "replayed");
    atp_w_bool(w, true);
  }
  if (rc != 0) write_error(w, rc, &b->op);
  atp_w_object_end(w);
  if (rc == 0 || rc == ATP_EINSUFFICIENT) return;
  if (b->out &&
      (b->no_sink || rc == ATP_EFULL || rc == ATP_ENOMEM || rc == ATP_EUNAVAILABLE))
    return;
  atp_rejection_t r = {
      .flow = flow,
      .owner =
          kind ? atp_ownership_owner(b->rq->app->ownership, kind->field, flow) : flow,
      .index = index,
      .err = rc,
      .status = status,
      .code = atp_strerror_code(rc),
      .message = b->op.message[0] ? b->op.message : atp_strerror(rc),
      .field = b->op.field,
      .format =
          b->split.format == ATP_FORMAT_MSGPACK ? ATP_FORMAT_MSGPACK : ATP_FORMAT_JSON,
      .payload = b->split.body + span->start,
      .payload_len = span->end - span->start,
      .value = value,
  };
  atp_flows_reject(b->flows, &r);
}

/* A string member of an object, or an empty string. */
static atp_str_t str_member(const atp_val_t *v, const char *key) {
  const atp_val_t *m = atp_val_get(v, key);
  if (!m || m->type != ATP_VAL_STR) return (atp_str_t){NULL, 0};
  return (atp_str_t){m->u.s, m->len};
}

/* Parses op span into scratch[slot] and keeps the outcome for its turn. An
 * adjustment, a count or a reservation also starts the first step of the
 * engine's fetch of what it will touch (prefetch_op, an op later, the
 * second): only the cache sees it (whatever the fields hold, the op checks
 * them when it runs). */
static void parse_op(batch_t *b, int slot, const span_t *span) {
  parsed_t *pa = &b->parsed[slot];
  atp_arena_reset(&b->scratch[slot]);
  pa->v = NULL;
  pa->rc = 0;
  pa->prefetched = false;
  pa->too_large = span->end - span->start > OP_BYTES_MAX;
  if (pa->too_large) return;
  pa->perr.message[0] = pa->perr.field[0] = '\0';
  pa->perr.offset = 0;
  pa->rc = atp_codec_parse_element(&b->split, span->start, span->end, &b->scratch[slot],
                                   &pa->v, &pa->perr);
  if (pa->rc || pa->v->type != ATP_VAL_OBJECT) return;
  atp_engine_t *engine = atp_app_engine(b->rq->app);
  if (!engine) return;
  atp_str_t name = str_member(pa->v, "op");
  if ((name.len == 6 && memcmp(name.ptr, "adjust", 6) == 0) ||
      (name.len == 5 && memcmp(name.ptr, "count", 5) == 0)) {
    atp_engine_prefetch(engine, ATP_PREFETCH_ONHAND, str_member(pa->v, "id"),
                        str_member(pa->v, "sku"), str_member(pa->v, "location"),
                        &pa->pf);
    pa->prefetched = true;
  } else if (name.len == 7 && memcmp(name.ptr, "reserve", 7) == 0) {
    /* The first line's position, as the reservation itself fetches. */
    const atp_val_t *lines = atp_val_get(pa->v, "lines");
    const atp_val_t *first =
        lines && lines->type == ATP_VAL_ARRAY && lines->len ? &lines->u.items[0] : NULL;
    atp_engine_prefetch(engine, ATP_PREFETCH_RESERVE, str_member(pa->v, "id"),
                        first ? str_member(first, "sku") : (atp_str_t){NULL, 0},
                        first ? str_member(first, "location") : (atp_str_t){NULL, 0},
                        &pa->pf);
    pa->prefetched = true;
  }
}

/* The second step of an op's prefetch, an op after parse_op's. */
static void prefetch_op(batch_t *b, int slot) {
  const parsed_t *pa = &b->parsed[slot];
  atp_engine_t *engine = atp_app_engine(b->rq->app);
  if (pa->prefetched && engine) atp_engine_prefetch_next(engine, &pa->pf);
}

/* Applies one op parsed into scratch[slot]: every refusal is recorded on
 * b->op. */
static void run_op(batch_t *b, uint32_t index, const span_t *span, int slot) {
  atp_req_t *op = &b->op;
  op->field[0] = op->message[0] = '\0';
  op->arena = &b->scratch[slot];
  const parsed_t *pa = &b->parsed[slot];
  atp_op_out_t out;
  atp_op_out_init(&out);
  atp_val_t *v = pa->v;
  atp_str_t flow = {NULL, 0}, target = {NULL, 0}, name;
  const op_kind_t *kind = NULL;
  int rc = 0;
  if (pa->too_large) {
    rc = atp_req_fail(op, ATP_ETOOLARGE, NULL, NULL,
                      "An op may be at most %u bytes, as a single route's body.",
                      (unsigned)OP_BYTES_MAX);
  } else if (pa->rc == ATP_ENOMEM) {
    rc = atp_req_fail(op, ATP_ETOOLARGE, NULL, NULL, "The op is too large to parse.");
  } else if (pa->rc != 0) {
    rc = atp_req_fail(op, ATP_EBADREQ, NULL, NULL, "Malformed op at byte %zu: %s",
                      pa->perr.offset, pa->perr.message);
    if (pa->perr.field[0]) snprintf(op->field, sizeof op->field, "%s", pa->perr.field);
  }
  if (rc == 0 && v->type != ATP_VAL_OBJECT)
    rc = atp_req_fail(op, ATP_EBADREQ, NULL, NULL, "An op must be an object.");
  if (rc == 0) rc = atp_get_id(op, v, NULL, "op", ATP_REQUIRED, &name);
  if (rc == 0) {
    for (size_t k = 0; k < OP_KIND_COUNT && !kind; k++)
      if (strlen(op_kinds[k].name) == name.len &&
          memcmp(op_kinds[k].name, name.ptr, name.len) == 0)
        kind = &op_kinds[k];
    if (!kind) rc = atp_req_fail(op, ATP_EBADREQ, NULL, "op", "%s", ops_sentence);
  }
  if (rc == 0) rc = atp_get_id(op, v, NULL, "flow", ATP_REQUIRED, &flow);
  if (rc == 0 && atp_flows_paused(b->flows, flow)) {
    atp_queued_op_t q = {
        .flow = flow,
        .index = index,
        .format = b->split.format == ATP_FORMAT_MSGPACK ? ATP_FORMAT_MSGPACK
                                                        : ATP_FORMAT_JSON,
        .payload = b->split.body + span->start,
        .payload_len = span->end - span->start,
        .value = v,
    };
    rc = atp_flows_enqueue(b->flows, &q);
    if (rc == 0) {
      out.status = 202;
      return record(b, index, 0, &out, span, v, flow, kind);
    }
    atp_req_fail(op, rc, NULL, "flow", "The flow is paused and its queue is full.");
  }
  if (rc == 0 && kind->target_key)
    rc = atp_get_id(op, v, NULL, kind->target_key, ATP_REQUIRED, &target);
  if (rc == 0) {
    /* Each op names its own writer and flow; the request id is the batch's. */
    op->change_ctx =
        (atp_change_ctx_t){.request_id = b->rq->change_ctx.request_id, .flow = flow};
    atp_durable_set_context(&op->change_ctx);
    rc = kind->fn(op, v, flow, target, &out);
    atp_durable_set_context(&b->rq->change_ctx);
  }
  record(b, index, rc, &out, span, v, flow, kind);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The pre-scan's start: room for every op's span. */
static int scan_begin(batch_t *b) {
  size_t body_len = b->split.len;
  /* Each element takes a byte and (JSON, NDJSON) a delimiter at least. */
  size_t bound = b->split.format == ATP_FORMAT_MSGPACK ? body_len : body_len / 2 + 1;
  if (bound > ATP_BATCH_OPS_MAX) bound = ATP_BATCH_OPS_MAX;
  b->spans = atp_arena_alloc(b->rq->arena, (bound ? bound : 1) * sizeof *b->spans);
  if (!b->spans) return atp_req_fail(b->rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  b->bound = (uint32_t)bound;
  b->count = 0;
  return 0;
}

/* The pre-scan, on from where it stopped: every op's span, or a refusal of
 * the whole body. 1: the body is scanned; 0: a slice's time is used up
 * (sliced only), more to do; else the refusal, in b->rq. */
static int scan_step(batch_t *b, bool sliced) {
  atp_req_t *rq = b->rq;
  uint64_t t0 = sliced ? now_ns() : 0;
  atp_parse_error_t perr;
  perr.message[0] = perr.field[0] = '\0';
  perr.offset = 0;
  for (uint32_t n = 1;; n++) {
    size_t start = 0, end = 0;
    int rc = atp_splitter_next(&b->split, &start, &end, &perr);
    if (rc == 0) return 1;
    if (rc < 0) {
      atp_req_fail(rq, ATP_EBADREQ, NULL, NULL, "Malformed batch at byte %zu: %s",
                   perr.offset, perr.message);
      if (perr.field[0]) snprintf(rq->field, sizeof rq->field, "%s", perr.field);
      return ATP_EBADREQ;
    }
    if (b->count == ATP_BATCH_OPS_MAX)
      return atp_req_fail(rq, ATP_EBADREQ, NULL, "ops",
                          "A batch holds at most %u ops; nothing was applied.",
                          (unsigned)ATP_BATCH_OPS_MAX);
    ATP_ASSERT(b->count < b->bound && end <= UINT32_MAX);
    b->spans[b->count].start = (uint32_t)start;
    b->spans[b->count].end = (uint32_t)end;
    b->count++;
    /* The clock at every 16th op: ops are a few hundred bytes, and one
     * that is not takes its own time (about 1 ms per MiB) either way. */
    if (sliced && n % 16 == 0 && now_ns() - t0 >= SLICE_NS) return 0;
  }
}

static int read_results_param(atp_req_t *rq, bool *all) {
  const atp_str_t *v = atp_req_query(rq, "results");
  *all = false;
  if (!v) return 0;
  if (v->len == 3 && memcmp(v->ptr, "all", 3) == 0) {
    *all = true;
    return 0;
  }
  if (v->len == 8 && memcmp(v->ptr, "rejected", 8) == 0) return 0;
  return atp_req_fail(rq, ATP_EBADREQ, NULL, "results", "Must be all or rejected.");
}

/* Runs ops from b->next until the batch ends or the slice is used up;
 * returns whether the batch ended. */
static bool run_slice(batch_t *b) {
  uint64_t t0 = now_ns();
  uint32_t end = b->count - b->next > SLICE_OPS ? b->next + SLICE_OPS : b->count;
  /* The engine's clock is read once per SLICE_CLOCK_OPS ops, not two or three
   * times an op: an op's times are those of its run's start, microseconds
   * early at a clock of millisecond resolution (README, choices). */
  atp_engine_t *engine = atp_app_engine(b->rq->app);
  if (engine) atp_engine_clock_hold(engine);
  /* Each op of the slice is parsed two ops before its turn (the first two
   * here) and its prefetch's second step taken one op before: the cache
   * misses of its look-ups overlap the ops before it. */
  for (uint32_t i = b->next; i < end && i < b->next + AHEAD - 1; i++)
    parse_op(b, (int)(i % AHEAD), &b->spans[i]);
  while (b->next < end) {
    uint32_t i = b->next;
    if (i + 2 < end) parse_op(b, (int)((i + 2) % AHEAD), &b->spans[i + 2]);
    if (i + 1 < end) prefetch_op(b, (int)((i + 1) % AHEAD));
    run_op(b, i, &b->spans[i], (int)(i % AHEAD));
    b->next++;
    if (b->next % SLICE_CLOCK_OPS == 0) {
      if (now_ns() - t0 >= SLICE_NS) break;
      if (engine) atp_engine_clock_hold(engine);
    }
  }
  if (engine) atp_engine_clock_release(engine);
  return b->next == b->count;
}

static void batch_free(batch_t *b) {
  for (int i = 0; i < AHEAD; i++) atp_arena_destroy(&b->scratch[i]);
  atp_buf_free(&b->results_buf);
  atp_buf_free(&b->res_body);
  atp_free(b);
}

/* The answer, into b->rq's response. */
static int respond(batch_t *b) {
  atp_req_t *rq = b->rq;
  atp_w_array_end(&b->results);
  if (b->results_buf.failed)
    return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL,
                        "The batch was applied but its results do not fit an answer; "
                        "ask without ?results=all.");
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "received");
  atp_w_uint(w, b->count);
  atp_w_key(w, "applied");
  atp_w_uint(w, b->applied);
  atp_w_key(w, "replayed");
  atp_w_uint(w, b->replayed);
  atp_w_key(w, "rejected");
  atp_w_uint(w, b->rejected);
  atp_w_key(w, "queued");
  atp_w_uint(w, b->queued);
  atp_w_key(w, "results");
  atp_w_raw(w, b->results_buf.data, b->results_buf.len);
  atp_w_object_end(w);
  return 0;
}

static void batch_continue(void *ctx);

/* Posts the next slice; when the loop refuses (it finished), frees. */
static void batch_post(batch_t *b) {
  if (atp_http_server_post(b->server, b->http.thread_index, &b->post, batch_continue,
                           b) != 0)
    batch_free(b);
}

/* The deferred answer in b->res, parked until hold_until is durable; then
 * the batch is freed. */
static void answer(batch_t *b) {
  int thread = b->http.thread_index;
  atp_http_response_t *res = &b->res;
  int status = res->status;
  const char *type = res->content_type;
  if (b->res_body.failed) {
    static const char fallback[] =
        "{\"error\":{\"code\":\"internal\",\"message\":\"The batch was applied but "
        "its answer could not be built.\"}}";
    atp_buf_reset(&b->res_body);
    b->res_body.failed = 0;
    (void)atp_buf_append(&b->res_body, fallback, sizeof fallback - 1);
    status = 500;
    type = "application/json";
  }
  int rc =
      atp_http_server_answer_held(b->server, thread, b->http.request_id, status, type,
                                  b->res_body.data, b->res_body.len, b->hold_until);
  if (rc == ATP_ENOMEM) {
    /* No room for the answer's copy: say so briefly rather than never. */
    static const char nomem[] =
        "{\"error\":{\"code\":\"internal\",\"message\":\"Out of memory.\"}}";
    (void)atp_http_server_answer_held(b->server, thread, b->http.request_id, 500,
                                      "application/json", nomem, sizeof nomem - 1,
                                      b->hold_until);
  }
  batch_free(b);
}

/* Once the pre-scan has seen the whole body: the ops' context and the
 * results array. */
static void start_ops(batch_t *b) {
  b->op = *b->rq;
  b->op.arena = &b->scratch[0];
  b->op.body = NULL;
  atp_writer_init(&b->results, b->rq->out_format, &b->results_buf);
  b->applied = b->replayed = b->rejected = b->queued = 0;
  atp_w_array_begin(&b->results);
}

/* A continuation: a slice of the pre-scan, or a slice of ops in its own
 * durable bracket; then the next post or the answer, parked until every
 * slice's changes are durable. */
static void batch_continue(void *ctx) {
  batch_t *b = ctx;
  int thread = b->http.thread_index;
  if (!atp_http_server_deferred_alive(b->server, thread, b->http.request_id)) {
    batch_free(b); /* the connection closed: its request is gone */
    return;
  }
  if (b->scanning) {
    int rc = scan_step(b, true);
    if (rc < 0) { /* refused whole: nothing ran, nothing to wait for */
      atp_respond_error(b->rq, rc);
      return answer(b);
    }
    if (rc == 1) {
      b->scanning = false;
      start_ops(b);
    }
    return batch_post(b); /* the ops start in a slice of their own */
  }
  atp_durable_t *d = b->rq->app->durable;
  if (d) atp_durable_begin(d, (uint32_t)thread);
  bool done = run_slice(b);
  if (d) {
    uint64_t target = atp_durable_end(d, (uint32_t)thread);
    if (target > b->hold_until) b->hold_until = target;
  }
  if (!done) return batch_post(b);
  int rc = respond(b);
  if (rc != 0) atp_respond_error(b->rq, rc);
  answer(b);
}

int atp_route_batch(atp_req_t *rq) {
  const atp_http_request_t *h = rq->http;
  atp_format_t f = rq->in_format;
  if (h->body_len == 0)
    return atp_req_fail(
        rq, ATP_EBADREQ, NULL, NULL,
        "A batch body is required: a JSON array, NDJSON or MessagePack.");
  if (f != ATP_FORMAT_JSON && f != ATP_FORMAT_NDJSON && f != ATP_FORMAT_MSGPACK)
    return atp_req_fail(rq, ATP_EMEDIATYPE, NULL, NULL,
                        "The body must be application/json, application/x-ndjson or "
                        "application/msgpack.");
  /* Outside the request arena: a deferred batch outlives the handler and
   * may outlive its connection by one slice. */
  batch_t *b = atp_malloc(sizeof *b);
  if (!b) return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  memset(b, 0, sizeof *b);
  b->rq = rq;
  b->flows = rq->app->flows ? rq->app->flows : &atp_flows_none;
  for (int i = 0; i < AHEAD; i++)
    atp_arena_init(&b->scratch[i], OP_ARENA_CHUNK_BYTES, OP_ARENA_BYTES_MAX);
  atp_buf_init(&b->results_buf, ATP_HTTP_BULK_BODY_BYTES_MAX);
  atp_buf_init(&b->res_body, ATP_HTTP_BULK_BODY_BYTES_MAX + 4096);
  /* Without a server (tests) there is no loop to continue on: all at once. */
  b->server = atp_app_server(rq->app);
  int rc = read_results_param(rq, &b->all);
  if (rc == 0) {
    atp_splitter_init(&b->split, f, h->body, h->body_len);
    rc = scan_begin(b);
  }
  if (rc == 0) rc = scan_step(b, b->server != NULL);
  if (rc < 0) {
    batch_free(b);
    return rc;
  }
  b->scanning = rc == 0;
  if (!b->scanning) {
    start_ops(b);
    if (!b->server) {
      while (!run_slice(b)) {
      }
    }
    /* The first slice runs here, inside the router's durable bracket. */
    if (run_slice(b)) {
      rc = respond(b);
      batch_free(b);
      return rc;
    }
  }
  /* Deferred: the rest runs in continuations, which see the request through
   * copies (the handler's are on the dispatch stack). */
  b->http = *h;
  b->req = *rq;
  b->req.http = &b->http;
  b->req.res = &b->res;
  b->res.body = &b->res_body;
  b->rq = &b->req;
  b->op.http = &b->http;
  b->op.res = &b->res;
  rq->res->defer = true;
  batch_post(b);
  return 0;
}

int atp_batch_run_ops(atp_req_t *rq, const char *ops, size_t ops_len,
                      atp_batch_op_result_t *results, uint32_t results_max,
                      bool dead_letters, uint32_t *count) {
  ATP_ASSERT(rq && ops && results && count);
  *count = 0;
  batch_t *b = atp_malloc(sizeof *b);
  if (!b) return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  memset(b, 0, sizeof *b);
  b->rq = rq;
  b->flows = rq->app->flows ? rq->app->flows : &atp_flows_none;
  b->no_sink = !dead_letters;
  for (int i = 0; i < AHEAD; i++)
    atp_arena_init(&b->scratch[i], OP_ARENA_CHUNK_BYTES, OP_ARENA_BYTES_MAX);
  atp_buf_init(&b->results_buf, ATP_HTTP_BODY_BYTES_MAX);
  atp_buf_init(&b->res_body, 0);
  atp_splitter_init(&b->split, ATP_FORMAT_JSON, ops, ops_len);
  int rc = scan_begin(b);
  if (rc == 0 && (rc = scan_step(b, false)) == 1) rc = 0;
  if (rc == 0 && b->count > results_max)
    rc = atp_req_fail(rq, ATP_ETOOLARGE, NULL, NULL, "%u ops, at most %u here.",
                      (unsigned)b->count, (unsigned)results_max);
  if (rc == 0) {
    b->op = *rq;
    b->op.arena = &b->scratch[0];
    b->op.body = NULL;
    b->out = results;
    b->out_max = results_max;
    atp_writer_init(&b->results, ATP_FORMAT_JSON, &b->results_buf);
    atp_w_array_begin(&b->results);
    for (uint32_t i = 0; i < b->count; i++) {
      memset(&results[i], 0, sizeof results[i]);
      parse_op(b, 0, &b->spans[i]);
      run_op(b, i, &b->spans[i], 0);
    }
    *count = b->count;
  }
  batch_free(b);
  return rc;
}
