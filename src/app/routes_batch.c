/* routes_batch.c - POST /v1/batch, the integration flows' batch adapter
 * (CONTRACT.md 6.1, 6.2).
 *
 * A body of up to 64 MiB (a JSON array, NDJSON, a msgpack array or a stream
 * of msgpack objects) is first scanned whole by the codec's element splitter,
 * which only finds where each op's bytes lie: that pre-scan refuses a broken
 * framing or more than ATP_BATCH_OPS_MAX ops before any op is applied. Then
 * each op is parsed on its own into a scratch arena reset between ops, so the
 * body is never held twice as a tree, and applied by the same op function as
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
 * Cost: the whole batch runs inline on the loop thread (2-5 us an op), so
 * a 100,000-op batch holds its loop for 0.2-0.5 s; the HTTP server
 * has no way yet to suspend a handler and resume it later (README).
 */

#include <stddef.h>
#include <string.h>

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

static const char ops_sentence[] =
    "Must be one of adjust, count, safety_stock, group, reserve, commit, release, "
    "extend, fulfil, amend.";

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

typedef struct {
  atp_req_t *rq;        /* the batch request */
  atp_req_t op;         /* the context each op runs in: rq with the scratch arena */
  atp_arena_t scratch;  /* one op's tree and lines, reset between ops */
  atp_splitter_t split; /* the pre-scan's splitter (for the format and depth) */
  const atp_flows_t *flows;
  bool all; /* ?results=all: every outcome, not only non-2xx */
  uint32_t applied, replayed, rejected, queued;
  atp_buf_t results_buf; /* the results array, written beside the counters */
  atp_writer_t results;
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

/* Parses and applies one op: every refusal is recorded on b->op. */
static void run_op(batch_t *b, uint32_t index, const span_t *span) {
  atp_req_t *op = &b->op;
  op->field[0] = op->message[0] = '\0';
  atp_arena_reset(&b->scratch);
  atp_op_out_t out;
  atp_op_out_init(&out);
  atp_val_t *v = NULL;
  atp_str_t flow = {NULL, 0}, target = {NULL, 0}, name;
  const op_kind_t *kind = NULL;
  int rc = 0;
  if (span->end - span->start > OP_BYTES_MAX) {
    rc = atp_req_fail(op, ATP_ETOOLARGE, NULL, NULL,
                      "An op may be at most %u bytes, as a single route's body.",
                      (unsigned)OP_BYTES_MAX);
  } else {
    atp_parse_error_t perr;
    perr.message[0] = perr.field[0] = '\0';
    perr.offset = 0;
    rc = atp_codec_parse_element(&b->split, span->start, span->end, &b->scratch, &v,
                                 &perr);
    if (rc == ATP_ENOMEM) {
      rc = atp_req_fail(op, ATP_ETOOLARGE, NULL, NULL, "The op is too large to parse.");
    } else if (rc != 0) {
      rc = atp_req_fail(op, ATP_EBADREQ, NULL, NULL, "Malformed op at byte %zu: %s",
                        perr.offset, perr.message);
      if (perr.field[0]) snprintf(op->field, sizeof op->field, "%s", perr.field);
    }
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

/* The pre-scan: every op's span, or a refusal of the whole body. */
static int scan(batch_t *b, span_t **spans_out, uint32_t *count_out) {
  atp_req_t *rq = b->rq;
  const atp_http_request_t *h = rq->http;
  /* Each element takes a byte and (JSON, NDJSON) a delimiter at least. */
  size_t bound =
      b->split.format == ATP_FORMAT_MSGPACK ? h->body_len : h->body_len / 2 + 1;
  if (bound > ATP_BATCH_OPS_MAX) bound = ATP_BATCH_OPS_MAX;
  span_t *spans = atp_arena_alloc(rq->arena, (bound ? bound : 1) * sizeof *spans);
  if (!spans) return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  uint32_t count = 0;
  atp_parse_error_t perr;
  perr.message[0] = perr.field[0] = '\0';
  perr.offset = 0;
  for (;;) {
    size_t start = 0, end = 0;
    int rc = atp_splitter_next(&b->split, &start, &end, &perr);
    if (rc == 0) break;
    if (rc < 0) {
      atp_req_fail(rq, ATP_EBADREQ, NULL, NULL, "Malformed batch at byte %zu: %s",
                   perr.offset, perr.message);
      if (perr.field[0]) snprintf(rq->field, sizeof rq->field, "%s", perr.field);
      return ATP_EBADREQ;
    }
    if (count == ATP_BATCH_OPS_MAX)
      return atp_req_fail(rq, ATP_EBADREQ, NULL, "ops",
                          "A batch holds at most %u ops; nothing was applied.",
                          (unsigned)ATP_BATCH_OPS_MAX);
    ATP_ASSERT(count < bound && end <= UINT32_MAX);
    spans[count].start = (uint32_t)start;
    spans[count].end = (uint32_t)end;
    count++;
  }
  *spans_out = spans;
  *count_out = count;
  return 0;
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
  batch_t *b = atp_arena_alloc(rq->arena, sizeof *b);
  if (!b) return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  memset(b, 0, sizeof *b);
  b->rq = rq;
  b->flows = rq->app->flows ? rq->app->flows : &atp_flows_none;
  int rc = read_results_param(rq, &b->all);
  if (rc != 0) return rc;
  atp_splitter_init(&b->split, f, h->body, h->body_len);
  span_t *spans = NULL;
  uint32_t count = 0;
  rc = scan(b, &spans, &count);
  if (rc != 0) return rc;

  b->op = *rq;
  b->op.arena = &b->scratch;
  b->op.body = NULL;
  atp_arena_init(&b->scratch, OP_ARENA_CHUNK_BYTES, OP_ARENA_BYTES_MAX);
  atp_buf_init(&b->results_buf, ATP_HTTP_BULK_BODY_BYTES_MAX);
  atp_writer_init(&b->results, rq->out_format, &b->results_buf);
  b->applied = b->replayed = b->rejected = b->queued = 0;
  atp_w_array_begin(&b->results);
  for (uint32_t i = 0; i < count; i++) run_op(b, i, &spans[i]);
  atp_w_array_end(&b->results);
  atp_arena_destroy(&b->scratch);

  if (b->results_buf.failed) {
    atp_buf_free(&b->results_buf);
    return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL,
                        "The batch was applied but its results do not fit an answer; "
                        "ask without ?results=all.");
  }
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "received");
  atp_w_uint(w, count);
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
  atp_buf_free(&b->results_buf);
  return 0;
}
