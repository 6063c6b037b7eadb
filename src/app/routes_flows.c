/* routes_flows.c - dead letters, flows and the audit trail over HTTP
 * (CONTRACT.md 6.3, 6.4, 6.6), and the flows' gate around the single write
 * routes.
 *
 * The stores live in src/flows; this file reads requests, names who acts
 * (the token's holder and role) and runs stored ops again through the router
 * (atp_router_run_stored): a queued op on resume, a dead letter on replay.
 * A single route's op is stored as its request (method, raw path and query,
 * body), so running it again is running that route, with the same
 * validation, idempotency and errors.
 *
 * Every route here is POST or GET; the POSTs run inside the router's durable
 * bracket, so their answers wait for their journal records.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "atp/audit.h"
#include "atp/deadletters.h"
#include "atp/error.h"
#include "atp/flows.h"
#include "atp/flowstate.h"
#include "atp/limits.h"
#include "atp/log.h"
#include "atp/router.h"

static int64_t now_ms(atp_app_t *app) {
  atp_engine_t *e = atp_app_engine(app);
  if (e) return atp_engine_now_ms(e);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static atp_str_t cstr(const char *s) {
  return (atp_str_t){s, (uint32_t)strlen(s)};
}

static const char *role_of(const atp_req_t *rq) {
  const atp_auth_t *auth = rq->app->auth;
  if (!auth) return "anonymous";
  const atp_http_request_t *h = rq->http;
  return atp_role_name(atp_auth_role(auth, h->authorization,
                                     h->authorization ? h->authorization_len : 0));
}

/* Records an operator action; an audit that cannot be kept fails the action
 * (the journal refused it), so nothing happens unrecorded. */
static int audit(atp_req_t *rq, const char *action, atp_str_t target, atp_str_t by,
                 atp_str_t detail) {
  atp_audit_t *a = rq->app->audit;
  if (!a) return 0;
  atp_audit_entry_t e = {
      .at = now_ms(rq->app),
      .action = cstr(action),
      .target = target,
      .by = by,
      .role = cstr(role_of(rq)),
      .token_holder = cstr(atp_req_holder(rq)),
      .detail = detail,
  };
  int rc = atp_audit_record(a, &e, NULL);
  if (rc != 0)
    return atp_req_fail(rq, rc, NULL, NULL, "The audit entry could not be kept.");
  return 0;
}

/* `by` from the body, else the token's holder; 400 when neither names one. */
static int read_by(atp_req_t *rq, atp_str_t *by) {
  int rc = atp_get_text(rq, rq->body, NULL, "by", ATP_OPTIONAL, ATP_ID_BYTES_MAX, by);
  if (rc != 0 || by->len) return rc;
  *by = cstr(atp_req_holder(rq));
  if (by->len) return 0;
  return atp_req_fail(rq, ATP_EBADREQ, NULL, "by",
                      "Name who acts: by is required when the token names no holder.");
}

static int need(atp_req_t *rq, const void *store) {
  if (store) return 0;
  return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL,
                      "Integration flows are not available in this server.");
}

/* --- the gate around single write routes ------------------------------------- */

static const char *flow_key(const atp_req_t *rq) {
  return rq->route->owned == ATP_FIELD_RESERVATIONS ? "channel" : "source";
}

/* The flow a single route's request names: the body's source / channel, or
 * ?source= (DELETE of a group). Empty when none or not a string. */
static atp_str_t request_flow(const atp_req_t *rq) {
  const atp_val_t *v = rq->body ? atp_val_get(rq->body, flow_key(rq)) : NULL;
  if (v && v->type == ATP_VAL_STR) return (atp_str_t){v->u.s, v->len};
  const atp_str_t *q = atp_req_query(rq, "source");
  return q ? *q : (atp_str_t){"", 0};
}

int atp_flows_before(atp_req_t *rq) {
  atp_flowstate_t *fs = rq->app->flow_state;
  if (!atp_flowstate_any_paused(fs)) return 0;
  /* Only while some flow is paused is the body parsed twice (here, then by
   * the handler). A body that does not parse goes on to its handler's 400. */
  if (rq->http->body_len && atp_req_parse_body(rq, false) != 0) {
    rq->field[0] = rq->message[0] = '\0';
    return 0;
  }
  atp_str_t flow = request_flow(rq);
  if (!atp_flowstate_paused(fs, flow)) return 0;
  const atp_http_request_t *h = rq->http;
  atp_flow_op_t op = {
      .flow = flow,
      .origin = ATP_FLOW_OP_ROUTE,
      .format = (uint8_t)rq->in_format,
      .method = (uint8_t)h->method,
      .path = {h->path, (uint32_t)h->path_len},
      .query = {h->query, (uint32_t)h->query_len},
      .payload = {h->body, (uint32_t)h->body_len},
      .queued_at = now_ms(rq->app),
  };
  uint64_t seq = 0;
  uint32_t depth = 0;
  int rc = atp_flowstate_enqueue(fs, &op, &seq, &depth);
  if (rc == ATP_ECONFLICT) return 0; /* resumed meanwhile: apply it now */
  if (rc == ATP_EFULL) {
    atp_http_add_header(rq->res, "Retry-After: 5");
    return atp_req_fail(rq, ATP_ETOOMANY, NULL, flow_key(rq),
                        "Flow \"%.*s\" is paused and its queue is full.", (int)flow.len,
                        flow.ptr);
  }
  if (rc != 0) return atp_req_fail(rq, rc, NULL, NULL, "The op could not be queued.");
  atp_writer_t *w = atp_respond_begin(rq, 202);
  atp_w_object_begin(w);
  atp_w_key(w, "queued");
  atp_w_bool(w, true);
  atp_w_key(w, "flow");
  atp_w_s(w, flow);
  atp_w_key(w, "seq");
  atp_w_uint(w, seq);
  atp_w_key(w, "depth");
  atp_w_uint(w, depth);
  atp_w_object_end(w);
  return 1;
}

/* Rejections that are the sender's to fix (6.3); insufficient_stock is a
 * business outcome, and 429 / 503 are for retrying, not for an owner. */
static bool dead_letter_kind(int rc) {
  return rc == ATP_EBADREQ || rc == ATP_ENOTOWNER || rc == ATP_ENOTFOUND ||
         rc == ATP_ECONFLICT || rc == ATP_EIDEMPOTENCY || rc == ATP_EOVERFLOW;
}

static void keep_rejection(atp_req_t *rq, int rc, atp_str_t flow, int64_t at) {
  const atp_http_request_t *h = rq->http;
  const char *message = rq->message[0] ? rq->message : atp_strerror(rc);
  atp_dead_letter_t d = {
      .flow = flow,
      .owner = atp_ownership_owner(rq->app->ownership, rq->route->owned, flow),
      .code = cstr(atp_strerror_code(rc)),
      .message = cstr(message),
      .field = cstr(rq->field),
      .origin = ATP_DL_ORIGIN_ROUTE,
      .format = (uint8_t)rq->in_format,
      .method = (uint8_t)h->method,
      .path = {h->path, (uint32_t)h->path_len},
      .query = {h->query, (uint32_t)h->query_len},
      .payload = {h->body, (uint32_t)h->body_len},
      .received_at = at,
  };
  int err = atp_deadletters_add(rq->app->dead_letters, &d, NULL);
  if (err != 0)
    atp_log("error", "dead letters: a rejection of flow %.*s was not kept: %s",
            (int)flow.len, flow.ptr, atp_strerror(err));
}

/* A manual adjustment or count by an ops token is an operator action. */
static void audit_manual(atp_req_t *rq) {
  if (!rq->app->auth || !rq->body) return;
  bool adjust = rq->route->owned == ATP_FIELD_ADJUSTMENTS;
  if (!adjust && rq->route->owned != ATP_FIELD_COUNTS) return;
  const atp_http_request_t *h = rq->http;
  if (atp_auth_role(rq->app->auth, h->authorization,
                    h->authorization ? h->authorization_len : 0) != ATP_ROLE_OPS)
    return;
  const atp_val_t *sku = atp_val_get(rq->body, "sku");
  const atp_val_t *loc = atp_val_get(rq->body, "location");
  const atp_val_t *id = atp_val_get(rq->body, "id");
  char target[2 * ATP_ID_BYTES_MAX + 2], detail[ATP_ID_BYTES_MAX + 8];
  snprintf(target, sizeof target, "%s@%s",
           sku && sku->type == ATP_VAL_STR ? sku->u.s : "",
           loc && loc->type == ATP_VAL_STR ? loc->u.s : "");
  snprintf(detail, sizeof detail, "id %s",
           id && id->type == ATP_VAL_STR ? id->u.s : "");
  /* The change is made; an audit the journal refuses is logged, not undone. */
  if (audit(rq, adjust ? "adjustment" : "count", cstr(target), cstr(atp_req_holder(rq)),
            cstr(detail)) != 0)
    atp_log("error", "audit: a manual %s was not recorded",
            adjust ? "adjustment" : "count");
}

void atp_flows_after(atp_req_t *rq, int rc, bool keep) {
  /* A handler that wrote its own error body (a conflict with its position,
   * shortfalls) returned 0: the status tells, rq->err names it. */
  if (rc == 0 && rq->res->status >= 400 && rq->err < 0) rc = rq->err;
  if (rc == 0) audit_manual(rq);
  atp_str_t flow = request_flow(rq);
  if (!flow.len || atp_id_check(flow.ptr, flow.len) != 0) return;
  int64_t at = now_ms(rq->app);
  atp_flowstate_count(rq->app->flow_state, flow, rc == 0, at);
  if (rc != 0 && keep && rq->app->dead_letters && dead_letter_kind(rc))
    keep_rejection(rq, rc, flow, at);
}

/* --- the batch adapter's plug-in points (atp/flows.h) ------------------------ */

/* A stored batch op (a queued one on resume, a dead letter's on replay) runs
 * through POST /v1/batch again on this thread; meanwhile its flow must not
 * queue it again, and a replay's rejection updates its dead letter instead
 * of making a new one. */
static _Thread_local struct {
  bool active;
  bool keep_rejection;
} stored_run;

static void batch_reject(void *ctx, const atp_rejection_t *r) {
  atp_app_t *app = ctx;
  int64_t at = now_ms(app);
  atp_flowstate_count(app->flow_state, r->flow, false, at);
  if (stored_run.active && !stored_run.keep_rejection) return;
  if (!app->dead_letters || !r->flow.len ||
      (!dead_letter_kind(r->err) && r->err != ATP_ETOOLARGE))
    return;
  atp_dead_letter_t d = {
      .flow = r->flow,
      .owner = r->owner.len ? r->owner : r->flow,
      .index = r->index,
      .code = cstr(r->code),
      .message = cstr(r->message),
      .field = cstr(r->field ? r->field : ""),
      .origin = ATP_DL_ORIGIN_BATCH,
      .format = r->format == ATP_FORMAT_MSGPACK ? ATP_FORMAT_MSGPACK : ATP_FORMAT_JSON,
      .method = ATP_HTTP_POST,
      .path = {"", 0},
      .query = {"", 0},
      .payload = {r->payload, (uint32_t)r->payload_len},
      .received_at = at,
  };
  int err = atp_deadletters_add(app->dead_letters, &d, NULL);
  if (err != 0)
    atp_log("error", "dead letters: a rejected batch op of flow %.*s was not kept: %s",
            (int)r->flow.len, r->flow.ptr, atp_strerror(err));
}

static bool batch_paused(void *ctx, atp_str_t flow) {
  atp_app_t *app = ctx;
  return !stored_run.active && atp_flowstate_paused(app->flow_state, flow);
}

static int batch_enqueue(void *ctx, const atp_queued_op_t *q) {
  atp_app_t *app = ctx;
  atp_flow_op_t op = {
      .flow = q->flow,
      .origin = ATP_FLOW_OP_BATCH,
      .format = q->format == ATP_FORMAT_MSGPACK ? ATP_FORMAT_MSGPACK : ATP_FORMAT_JSON,
      .method = ATP_HTTP_POST,
      .path = {"", 0},
      .query = {"", 0},
      .payload = {q->payload, (uint32_t)q->payload_len},
      .index = q->index,
      .queued_at = now_ms(app),
  };
  uint64_t seq = 0;
  uint32_t depth = 0;
  int rc = atp_flowstate_enqueue(app->flow_state, &op, &seq, &depth);
  /* Resumed between the check and the queue: the batch has no way to apply
   * it now, so it is refused as a full queue would be and may be resent. */
  return rc == ATP_ECONFLICT ? ATP_EFULL : rc;
}

const atp_flows_t *atp_flows_plug(atp_app_t *app) {
  static atp_flows_t hooks;
  hooks.ctx = app;
  hooks.reject = batch_reject;
  hooks.paused = batch_paused;
  hooks.enqueue = batch_enqueue;
  return &hooks;
}

/* --- running a stored op ------------------------------------------------------ */

static const char *content_type_of(uint8_t format) {
  return format == ATP_FORMAT_MSGPACK ? "application/msgpack" : "application/json";
}

/* Runs a stored single-route request into res (its body buffer reset). */
static void run_route_op(atp_req_t *rq, atp_arena_t *arena, uint8_t method,
                         atp_str_t path, atp_str_t query, uint8_t format,
                         atp_str_t payload, atp_http_response_t *res, bool keep,
                         atp_router_outcome_t *out) {
  const atp_http_request_t *h = rq->http;
  const char *ct = content_type_of(format);
  atp_http_request_t req = {
      .method = (atp_http_method_t)method,
      .method_name = atp_http_method_name((atp_http_method_t)method),
      .path = path.ptr,
      .path_len = path.len,
      .query = query.ptr,
      .query_len = query.len,
      .content_type = payload.len ? ct : NULL,
      .content_type_len = payload.len ? strlen(ct) : 0,
      .accept = h->accept,
      .accept_len = h->accept_len,
      .body = payload.ptr,
      .body_len = payload.len,
      .request_id = h->request_id,
      .started_ns = h->started_ns,
      .arena = arena,
      .thread_index = h->thread_index,
  };
  atp_buf_reset(res->body);
  res->status = 0;
  res->content_type = NULL;
  res->extra_header_count = 0;
  (void)atp_router_run_stored(rq->app, &req, res, keep, out);
}

/* Runs a stored batch op as a batch of one (?results=all) and turns its
 * result line into out; res gets {index, status, error?} as the op's answer. */
static void run_batch_op(atp_req_t *rq, atp_arena_t *arena, uint8_t format,
                         atp_str_t payload, atp_http_response_t *res, bool keep,
                         atp_router_outcome_t *out) {
  size_t n = payload.len + 2;
  char *body = atp_arena_alloc(arena, n);
  memset(out, 0, sizeof *out);
  if (!body) {
    out->rc = ATP_ENOMEM;
    out->status = 503;
    return;
  }
  uint32_t len = payload.len;
  if (format == ATP_FORMAT_MSGPACK) {
    memcpy(body, payload.ptr, payload.len); /* a stream of one object */
  } else {
    body[0] = '[';
    memcpy(body + 1, payload.ptr, payload.len);
    body[payload.len + 1] = ']';
    len += 2;
  }
  stored_run.active = true;
  stored_run.keep_rejection = keep;
  run_route_op(rq, arena, ATP_HTTP_POST, cstr("/v1/batch"), cstr("results=all"), format,
               (atp_str_t){body, len}, res, keep, out);
  stored_run.active = false;
  /* The batch answered 200 with one result line: that line is the op's. */
  atp_val_t *v = NULL;
  atp_parse_error_t perr;
  const atp_val_t *results = NULL, *line = NULL;
  if (out->rc == 0 &&
      atp_codec_parse(
          rq->out_format == ATP_FORMAT_MSGPACK ? ATP_FORMAT_MSGPACK : ATP_FORMAT_JSON,
          res->body->data, res->body->len, arena, &v, &perr) == 0 &&
      (results = atp_val_get(v, "results")) && results->type == ATP_VAL_ARRAY &&
      results->len == 1)
    line = &results->u.items[0];
  if (!line) {
    if (out->rc == 0) out->rc = ATP_EINTERNAL;
    return;
  }
  const atp_val_t *st = atp_val_get(line, "status");
  out->status = st && st->type == ATP_VAL_INT ? (int)st->u.i : 500;
  const atp_val_t *err = atp_val_get(line, "error");
  if (out->status >= 300 && err) {
    const atp_val_t *code = atp_val_get(err, "code"),
                    *msg = atp_val_get(err, "message"),
                    *field = atp_val_get(err, "field");
    out->rc = ATP_EBADREQ; /* a rejection; its code is in out->code */
    snprintf(out->code, sizeof out->code, "%s",
             code && code->type == ATP_VAL_STR ? code->u.s : "bad_request");
    snprintf(out->message, sizeof out->message, "%s",
             msg && msg->type == ATP_VAL_STR ? msg->u.s : "");
    snprintf(out->field, sizeof out->field, "%s",
             field && field->type == ATP_VAL_STR ? field->u.s : "");
  }
  atp_buf_reset(res->body);
  atp_writer_t w;
  atp_writer_init(&w, rq->out_format, res->body);
  atp_w_val(&w, line);
  res->status = out->status;
}

/* --- dead letters -------------------------------------------------------------- */

static int parse_dl_id(atp_req_t *rq, uint64_t *id) {
  atp_str_t s = rq->params[0];
  uint64_t v = 0;
  bool ok = s.len > 3 && s.len <= 23 && memcmp(s.ptr, "dl-", 3) == 0;
  for (uint32_t i = 3; ok && i < s.len; i++) {
    if (s.ptr[i] < '0' || s.ptr[i] > '9') ok = false;
    v = v * 10 + (uint64_t)(s.ptr[i] - '0');
  }
  if (!ok || v == 0)
    return atp_req_fail(rq, ATP_ENOTFOUND, NULL, "dl_id",
                        "No dead letter has this id (they look like dl-42).");
  *id = v;
  return 0;
}

/* A stored payload as a value: parsed when it parses, else its bytes as a
 * string (a malformed op is kept as it came). */
static void write_payload(atp_writer_t *w, atp_arena_t *arena,
                          const atp_dead_letter_t *d) {
  atp_val_t *v = NULL;
  atp_parse_error_t perr;
  if (d->payload.len &&
      atp_codec_parse(
          d->format == ATP_FORMAT_MSGPACK ? ATP_FORMAT_MSGPACK : ATP_FORMAT_JSON,
          d->payload.ptr, d->payload.len, arena, &v, &perr) == 0)
    atp_w_val(w, v);
  else if (d->payload.len)
    atp_w_str(w, d->payload.ptr, d->payload.len);
  else
    atp_w_null(w);
}

static void write_dl_id(atp_writer_t *w, uint64_t id) {
  char s[32];
  snprintf(s, sizeof s, "dl-%" PRIu64, id);
  atp_w_cstr(w, s);
}

typedef struct {
  atp_req_t *rq;
  atp_writer_t *w;
  uint64_t last;
} list_ctx_t;

static void write_dead_letter(void *ctx, const atp_dead_letter_t *d) {
  list_ctx_t *c = ctx;
  atp_writer_t *w = c->w;
  atp_w_object_begin(w);
  atp_w_key(w, "dl_id");
  write_dl_id(w, d->id);
  atp_w_key(w, "flow");
  atp_w_s(w, d->flow);
  atp_w_key(w, "owner");
  atp_w_s(w, d->owner);
  atp_w_key(w, "index");
  atp_w_uint(w, d->index);
  atp_w_key(w, "error");
  atp_w_object_begin(w);
  atp_w_key(w, "code");
  atp_w_s(w, d->code);
  atp_w_key(w, "message");
  atp_w_s(w, d->message);
  if (d->field.len) {
    atp_w_key(w, "field");
    atp_w_s(w, d->field);
  }
  atp_w_object_end(w);
  atp_w_key(w, "payload");
  write_payload(w, c->rq->arena, d);
  atp_w_key(w, "origin");
  if (d->origin == ATP_DL_ORIGIN_ROUTE) {
    atp_w_object_begin(w);
    atp_w_key(w, "method");
    atp_w_cstr(w, atp_http_method_name((atp_http_method_t)d->method));
    atp_w_key(w, "path");
    atp_w_s(w, d->path);
    atp_w_object_end(w);
  } else {
    atp_w_object_begin(w);
    atp_w_key(w, "batch");
    atp_w_bool(w, true);
    atp_w_object_end(w);
  }
  atp_w_key(w, "received_at");
  atp_w_int(w, d->received_at);
  atp_w_key(w, "attempts");
  atp_w_uint(w, d->attempts);
  atp_w_key(w, "status");
  atp_w_cstr(w, atp_dl_status_name(d->status));
  atp_w_key(w, "updated_at");
  atp_w_int(w, d->updated_at);
  if (d->status == ATP_DL_RESOLVED) {
    atp_w_key(w, "note");
    atp_w_s(w, d->note);
    atp_w_key(w, "by");
    atp_w_s(w, d->by);
  }
  atp_w_object_end(w);
  c->last = d->id;
}

/* ?limit= and ?cursor= (the seq or id number after which to list). */
static int read_page(atp_req_t *rq, const char *prefix, uint64_t *after,
                     uint32_t *limit) {
  *after = 0;
  *limit = ATP_LIST_LIMIT_DEFAULT;
  const atp_str_t *l = atp_req_query(rq, "limit");
  if (l) {
    uint64_t v = 0;
    bool ok = l->len > 0 && l->len <= 5;
    for (uint32_t i = 0; ok && i < l->len; i++) {
      ok = l->ptr[i] >= '0' && l->ptr[i] <= '9';
      v = v * 10 + (uint64_t)(l->ptr[i] - '0');
    }
    if (!ok || v < 1 || v > ATP_LIST_LIMIT_MAX)
      return atp_req_fail(rq, ATP_EBADREQ, NULL, "limit", "Must be 1..%d.",
                          ATP_LIST_LIMIT_MAX);
    *limit = (uint32_t)v;
  }
  const atp_str_t *c = atp_req_query(rq, "cursor");
  if (c) {
    size_t skip = strlen(prefix);
    bool ok = c->len > skip && c->len <= skip + 20 && memcmp(c->ptr, prefix, skip) == 0;
    uint64_t v = 0;
    for (uint32_t i = (uint32_t)skip; ok && i < c->len; i++) {
      ok = c->ptr[i] >= '0' && c->ptr[i] <= '9';
      v = v * 10 + (uint64_t)(c->ptr[i] - '0');
    }
    if (!ok)
      return atp_req_fail(rq, ATP_EBADREQ, NULL, "cursor",
                          "Must be a cursor from an earlier answer.");
    *after = v;
  }
  return 0;
}

static void write_cursor(atp_writer_t *w, const char *prefix, bool more,
                         uint64_t last) {
  atp_w_key(w, "cursor");
  if (!more) {
    atp_w_null(w);
    return;
  }
  char s[32];
  snprintf(s, sizeof s, "%s%" PRIu64, prefix, last);
  atp_w_cstr(w, s);
}

int atp_route_dead_letters_list(atp_req_t *rq) {
  int rc = need(rq, rq->app->dead_letters);
  atp_dl_filter_t f = {.status = -1};
  atp_str_t status = {"", 0};
  if (rc == 0) rc = atp_query_id(rq, "owner", ATP_OPTIONAL, &f.owner);
  if (rc == 0) rc = atp_query_id(rq, "flow", ATP_OPTIONAL, &f.flow);
  if (rc == 0) rc = atp_query_id(rq, "status", ATP_OPTIONAL, &status);
  if (rc == 0 && status.len && (f.status = atp_dl_status_parse(status)) < 0)
    rc = atp_req_fail(rq, ATP_EBADREQ, NULL, "status",
                      "Must be open, replayed or resolved.");
  if (rc == 0) rc = read_page(rq, "dl-", &f.after, &f.limit);
  if (rc != 0) return rc;
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "dead_letters");
  atp_w_array_begin(w);
  list_ctx_t c = {.rq = rq, .w = w, .last = f.after};
  bool more = false;
  atp_deadletters_list(rq->app->dead_letters, &f, write_dead_letter, &c, &more);
  atp_w_array_end(w);
  write_cursor(w, "dl-", more, c.last);
  atp_w_object_end(w);
  return 0;
}

/* The replay's corrected payload, encoded in the request's format. */
static int corrected_payload(atp_req_t *rq, atp_str_t *payload, uint8_t *format) {
  const atp_val_t *v = rq->body ? atp_val_get(rq->body, "payload") : NULL;
  payload->ptr = "";
  payload->len = 0;
  if (!v || v->type == ATP_VAL_NULL) return 0;
  if (v->type != ATP_VAL_OBJECT)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, "payload", "Must be an object.");
  atp_buf_t *b = atp_arena_alloc(rq->arena, sizeof *b);
  if (!b) return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  atp_buf_init(b, ATP_HTTP_BODY_BYTES_MAX);
  atp_writer_t w;
  *format = rq->in_format == ATP_FORMAT_MSGPACK ? ATP_FORMAT_MSGPACK : ATP_FORMAT_JSON;
  atp_writer_init(&w, (atp_format_t)*format, b);
  atp_w_val(&w, v);
  char *copy = b->failed ? NULL : atp_arena_strdup(rq->arena, b->data, b->len);
  size_t len = b->len;
  atp_buf_free(b);
  if (!copy) return atp_req_fail(rq, ATP_ETOOLARGE, NULL, "payload", "Too large.");
  payload->ptr = copy;
  payload->len = (uint32_t)len;
  return 0;
}

int atp_route_dead_letter_replay(atp_req_t *rq) {
  atp_deadletters_t *dls = rq->app->dead_letters;
  uint64_t id = 0;
  atp_dead_letter_t d;
  atp_str_t payload, by;
  uint8_t format = ATP_FORMAT_JSON;
  int rc = need(rq, dls);
  if (rc == 0) rc = parse_dl_id(rq, &id);
  if (rc == 0) rc = atp_req_parse_body(rq, false);
  if (rc == 0) rc = corrected_payload(rq, &payload, &format);
  if (rc == 0) rc = read_by(rq, &by);
  if (rc == 0 && (rc = atp_deadletters_get(dls, id, rq->arena, &d)) != 0)
    return atp_req_fail(rq, rc, NULL, "dl_id", "No dead letter has this id.");
  if (rc != 0) return rc;
  if (d.status == ATP_DL_RESOLVED)
    return atp_req_fail(rq, ATP_ECONFLICT, NULL, "dl_id",
                        "This dead letter is resolved; it is not replayed.");
  atp_str_t run = payload.len ? payload : d.payload;
  uint8_t run_format = payload.len ? format : d.format;
  /* The op's own answer becomes the replay's: a buffer of its own, copied. */
  atp_buf_t body;
  atp_buf_init(&body, ATP_HTTP_BULK_BODY_BYTES_MAX);
  atp_http_response_t res = {.body = &body};
  atp_router_outcome_t out;
  if (d.origin == ATP_DL_ORIGIN_BATCH)
    run_batch_op(rq, rq->arena, run_format, run, &res, false, &out);
  else
    run_route_op(rq, rq->arena, d.method, d.path, d.query, run_format, run, &res, false,
                 &out);
  int64_t at = now_ms(rq->app);
  rc = atp_deadletters_attempt(dls, id, out.rc == 0, out.code, out.message, out.field,
                               payload, format, at);
  char detail[96];
  snprintf(detail, sizeof detail, "status %d%s%s", out.status, out.rc ? " " : "",
           out.code);
  char ids[32];
  snprintf(ids, sizeof ids, "dl-%" PRIu64, id);
  if (rc == 0) rc = audit(rq, "dead_letter.replay", cstr(ids), by, cstr(detail));
  if (rc == 0) {
    atp_http_response_t *r = rq->res;
    r->status = out.status;
    r->content_type = res.content_type;
    atp_buf_reset(r->body);
    if (atp_buf_append(r->body, body.data, body.len) != 0)
      rc = atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "The answer did not fit.");
  } else if (rq->message[0] == '\0') {
    atp_req_fail(rq, rc, NULL, "dl_id", "The replay's outcome could not be kept.");
  }
  atp_buf_free(&body);
  return rc;
}

int atp_route_dead_letter_resolve(atp_req_t *rq) {
  atp_deadletters_t *dls = rq->app->dead_letters;
  uint64_t id = 0;
  atp_str_t note, by;
  int rc = need(rq, dls);
  if (rc == 0) rc = parse_dl_id(rq, &id);
  if (rc == 0) rc = atp_req_parse_body(rq, true);
  if (rc == 0)
    rc = atp_get_text(rq, rq->body, NULL, "note", ATP_REQUIRED, ATP_NOTE_BYTES_MAX,
                      &note);
  if (rc == 0) rc = read_by(rq, &by);
  if (rc != 0) return rc;
  rc = atp_deadletters_resolve(dls, id, note, by, now_ms(rq->app));
  if (rc == ATP_ENOTFOUND)
    return atp_req_fail(rq, rc, NULL, "dl_id", "No dead letter has this id.");
  if (rc == ATP_ECONFLICT)
    return atp_req_fail(rq, rc, NULL, "dl_id", "This dead letter is resolved already.");
  if (rc != 0)
    return atp_req_fail(rq, rc, NULL, NULL, "The resolve could not be kept.");
  char ids[32];
  snprintf(ids, sizeof ids, "dl-%" PRIu64, id);
  if ((rc = audit(rq, "dead_letter.resolve", cstr(ids), by, note)) != 0) return rc;
  atp_dead_letter_t d;
  if ((rc = atp_deadletters_get(dls, id, rq->arena, &d)) != 0)
    return atp_req_fail(rq, rc, NULL, "dl_id",
                        "The dead letter was dropped meanwhile.");
  atp_writer_t *w = atp_respond_begin(rq, 200);
  list_ctx_t c = {.rq = rq, .w = w};
  write_dead_letter(&c, &d);
  return 0;
}

/* --- flows -------------------------------------------------------------------- */

static void write_flow(void *ctx, const atp_flow_info_t *f) {
  atp_writer_t *w = ctx;
  atp_w_object_begin(w);
  atp_w_key(w, "name");
  atp_w_s(w, f->name);
  atp_w_key(w, "state");
  atp_w_cstr(w, f->paused ? "paused" : "running");
  atp_w_key(w, "queued");
  atp_w_uint(w, f->queued);
  atp_w_key(w, "applied");
  atp_w_uint(w, f->applied);
  atp_w_key(w, "rejected");
  atp_w_uint(w, f->rejected);
  atp_w_key(w, "last_op_at");
  if (f->last_op_at)
    atp_w_int(w, f->last_op_at);
  else
    atp_w_null(w);
  if (f->paused) {
    atp_w_key(w, "reason");
    atp_w_s(w, f->reason);
    atp_w_key(w, "by");
    atp_w_s(w, f->by);
    atp_w_key(w, "paused_at");
    atp_w_int(w, f->changed_at);
  }
  atp_w_object_end(w);
}

int atp_route_flows_list(atp_req_t *rq) {
  int rc = need(rq, rq->app->flow_state);
  if (rc != 0) return rc;
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "flows");
  atp_w_array_begin(w);
  atp_flowstate_list(rq->app->flow_state, write_flow, w);
  atp_w_array_end(w);
  atp_w_object_end(w);
  return 0;
}

typedef struct {
  atp_str_t name;
  atp_writer_t *w;
  bool found;
} one_flow_t;

static void write_one_flow(void *ctx, const atp_flow_info_t *f) {
  one_flow_t *o = ctx;
  if (o->found || f->name.len != o->name.len ||
      memcmp(f->name.ptr, o->name.ptr, o->name.len) != 0)
    return;
  o->found = true;
  write_flow(o->w, f);
}

static int flow_name(atp_req_t *rq, atp_str_t *name) {
  return atp_req_path_id(rq, "name", "flow name", name);
}

int atp_route_flow_pause(atp_req_t *rq) {
  atp_flowstate_t *fs = rq->app->flow_state;
  atp_str_t name, reason, by;
  int rc = need(rq, fs);
  if (rc == 0) rc = flow_name(rq, &name);
  if (rc == 0) rc = atp_req_parse_body(rq, false);
  if (rc == 0)
    rc = atp_get_text(rq, rq->body, NULL, "reason", ATP_OPTIONAL, ATP_NOTE_BYTES_MAX,
                      &reason);
  if (rc == 0) rc = read_by(rq, &by);
  if (rc != 0) return rc;
  bool was_paused = false;
  rc = atp_flowstate_pause(fs, name, reason, by, now_ms(rq->app), &was_paused);
  if (rc == ATP_EFULL)
    return atp_req_fail(rq, ATP_ETOOMANY, NULL, "name",
                        "At most %d flows are tracked; this one cannot be paused.",
                        ATP_FLOWS_MAX);
  if (rc != 0) return atp_req_fail(rq, rc, NULL, NULL, "The pause could not be kept.");
  if (!was_paused && (rc = audit(rq, "flow.pause", name, by, reason)) != 0) return rc;
  atp_writer_t *w = atp_respond_begin(rq, 200);
  one_flow_t o = {.name = name, .w = w};
  atp_flowstate_list(fs, write_one_flow, &o);
  return 0;
}

/* Applies the queue in order; each op's answer is dropped (its outcome is
 * counted, a rejection kept as a dead letter). */
static int drain(atp_req_t *rq, atp_str_t name, atp_str_t by, uint32_t *applied,
                 uint32_t *rejected) {
  atp_flowstate_t *fs = rq->app->flow_state;
  atp_arena_t scratch;
  atp_arena_init(&scratch, 64 * 1024, 8u * ATP_HTTP_BODY_BYTES_MAX);
  atp_buf_t body;
  atp_buf_init(&body, ATP_HTTP_BULK_BODY_BYTES_MAX);
  atp_http_response_t res = {.body = &body};
  int rc = 0;
  for (;;) {
    atp_arena_reset(&scratch);
    atp_flow_op_t op;
    bool done = false;
    rc = atp_flowstate_next(fs, name, &scratch, &op, &done, by, now_ms(rq->app));
    if (rc != 0 || done) break;
    atp_router_outcome_t out;
    if (op.origin == ATP_FLOW_OP_BATCH)
      run_batch_op(rq, &scratch, op.format, op.payload, &res, true, &out);
    else
      run_route_op(rq, &scratch, op.method, op.path, op.query, op.format, op.payload,
                   &res, true, &out);
    if (out.rc == 0)
      (*applied)++;
    else
      (*rejected)++;
    if ((rc = atp_flowstate_applied(fs, name, op.seq)) != 0) break;
  }
  atp_buf_free(&body);
  atp_arena_destroy(&scratch);
  return rc;
}

int atp_route_flow_resume(atp_req_t *rq) {
  atp_flowstate_t *fs = rq->app->flow_state;
  atp_str_t name, by;
  int rc = need(rq, fs);
  if (rc == 0) rc = flow_name(rq, &name);
  if (rc == 0) rc = atp_req_parse_body(rq, false);
  if (rc == 0) rc = read_by(rq, &by);
  if (rc != 0) return rc;
  bool was_paused = false;
  rc = atp_flowstate_resume_begin(fs, name, &was_paused);
  if (rc == ATP_ENOTFOUND) return atp_req_fail(rq, rc, NULL, "name", "No such flow.");
  if (rc == ATP_ECONFLICT)
    return atp_req_fail(rq, rc, NULL, "name", "Another resume is applying this queue.");
  uint32_t applied = 0, rejected = 0;
  if (was_paused) {
    rc = drain(rq, name, by, &applied, &rejected);
    char detail[96];
    snprintf(detail, sizeof detail, "applied %u, rejected %u queued ops", applied,
             rejected);
    if (rc != 0)
      return atp_req_fail(rq, rc, NULL, NULL,
                          "The queue could not be applied; the flow stays paused.");
    if ((rc = audit(rq, "flow.resume", name, by, cstr(detail))) != 0) return rc;
  }
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "flow");
  one_flow_t o = {.name = name, .w = w};
  atp_flowstate_list(fs, write_one_flow, &o);
  atp_w_key(w, "drained");
  atp_w_object_begin(w);
  atp_w_key(w, "applied");
  atp_w_uint(w, applied);
  atp_w_key(w, "rejected");
  atp_w_uint(w, rejected);
  atp_w_object_end(w);
  atp_w_object_end(w);
  return 0;
}

/* --- audit --------------------------------------------------------------------- */

typedef struct {
  atp_writer_t *w;
  uint64_t last;
} audit_ctx_t;

static void write_entry(void *ctx, const atp_audit_entry_t *e) {
  audit_ctx_t *c = ctx;
  atp_writer_t *w = c->w;
  atp_w_object_begin(w);
  atp_w_key(w, "seq");
  atp_w_uint(w, e->seq);
  atp_w_key(w, "at");
  atp_w_int(w, e->at);
  atp_w_key(w, "action");
  atp_w_s(w, e->action);
  atp_w_key(w, "target");
  atp_w_s(w, e->target);
  atp_w_key(w, "by");
  atp_w_s(w, e->by);
  atp_w_key(w, "role");
  atp_w_s(w, e->role);
  atp_w_key(w, "token_holder");
  atp_w_s(w, e->token_holder);
  atp_w_key(w, "detail");
  atp_w_s(w, e->detail);
  atp_w_object_end(w);
  c->last = e->seq;
}

int atp_route_audit_list(atp_req_t *rq) {
  atp_audit_filter_t f = {0};
  bool present = false;
  int rc = need(rq, rq->app->audit);
  if (rc == 0) rc = atp_query_id(rq, "action", ATP_OPTIONAL, &f.action);
  if (rc == 0) rc = atp_query_id(rq, "by", ATP_OPTIONAL, &f.by);
  const atp_str_t *since = rc == 0 ? atp_req_query(rq, "since") : NULL;
  if (since) {
    /* A time filter: integer ms or RFC 3339, as every input time. */
    int64_t v = 0;
    bool digits = since->len > 0 && since->len <= 16;
    for (uint32_t i = 0; digits && i < since->len; i++)
      digits = since->ptr[i] >= '0' && since->ptr[i] <= '9';
    if (digits) {
      for (uint32_t i = 0; i < since->len; i++) v = v * 10 + (since->ptr[i] - '0');
    } else if (atp_time_parse_rfc3339(since->ptr, since->len, &v) != 0) {
      rc = atp_req_fail(rq, ATP_EBADREQ, NULL, "since",
                        "Must be ms since the epoch or an RFC 3339 time.");
    }
    f.since = v;
    present = true;
  }
  (void)present;
  if (rc == 0) rc = read_page(rq, "", &f.after, &f.limit);
  if (rc != 0) return rc;
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "entries");
  atp_w_array_begin(w);
  audit_ctx_t c = {.w = w, .last = f.after};
  bool more = false;
  atp_audit_list(rq->app->audit, &f, write_entry, &c, &more);
  atp_w_array_end(w);
  write_cursor(w, "", more, c.last);
  atp_w_object_end(w);
  return 0;
}

/* --- /metrics ------------------------------------------------------------------ */

static void owner_line(void *ctx, atp_str_t owner, uint64_t open) {
  atp_buf_t *out = ctx;
  /* Owners are ids (printable, no control bytes); quotes and backslashes
   * are escaped as the text format asks. */
  atp_buf_printf(out, "atpd_dead_letters_open{owner=\"");
  for (uint32_t i = 0; i < owner.len; i++) {
    char ch = owner.ptr[i];
    if (ch == '"' || ch == '\\') atp_buf_printf(out, "\\");
    atp_buf_printf(out, "%c", ch);
  }
  atp_buf_printf(out, "\"} %" PRIu64 "\n", open);
}

/* One family at a time: the text format wants each family's lines together. */
typedef struct {
  atp_buf_t *out;
  int family; /* 0 paused, 1 queued, 2 ops */
} flow_lines_t;

static void flow_lines(void *ctx, const atp_flow_info_t *f) {
  flow_lines_t *c = ctx;
  int n = (int)f->name.len;
  if (c->family == 0)
    atp_buf_printf(c->out, "atpd_flow_paused{flow=\"%.*s\"} %d\n", n, f->name.ptr,
                   f->paused ? 1 : 0);
  else if (c->family == 1)
    atp_buf_printf(c->out, "atpd_flow_queued{flow=\"%.*s\"} %" PRIu64 "\n", n,
                   f->name.ptr, f->queued);
  else
    atp_buf_printf(c->out,
                   "atpd_flow_ops_total{flow=\"%.*s\",outcome=\"applied\"} %" PRIu64
                   "\n"
                   "atpd_flow_ops_total{flow=\"%.*s\",outcome=\"rejected\"} %" PRIu64
                   "\n",
                   n, f->name.ptr, f->applied, n, f->name.ptr, f->rejected);
}

void atp_flows_write_metrics(atp_app_t *app, atp_buf_t *out) {
  if (app->dead_letters) {
    atp_dl_stats_t s;
    atp_buf_printf(out,
                   "# HELP atpd_dead_letters_open Open dead letters by owner.\n"
                   "# TYPE atpd_dead_letters_open gauge\n");
    atp_deadletters_stats(app->dead_letters, &s, owner_line, out);
    atp_buf_printf(
        out,
        "# HELP atpd_dead_letters Dead letters kept, by status.\n"
        "# TYPE atpd_dead_letters gauge\n"
        "atpd_dead_letters{status=\"open\"} %" PRIu64
        "\n"
        "atpd_dead_letters{status=\"replayed\"} %" PRIu64
        "\n"
        "atpd_dead_letters{status=\"resolved\"} %" PRIu64
        "\n"
        "# HELP atpd_dead_letters_max The bound on dead letters kept.\n"
        "# TYPE atpd_dead_letters_max gauge\natpd_dead_letters_max %u\n"
        "# HELP atpd_dead_letters_dropped_total Dead letters dropped to make room.\n"
        "# TYPE atpd_dead_letters_dropped_total counter\n"
        "atpd_dead_letters_dropped_total{status=\"open\"} %" PRIu64
        "\n"
        "atpd_dead_letters_dropped_total{status=\"closed\"} %" PRIu64
        "\n"
        "# HELP atpd_dead_letters_bytes Bytes the dead letters take.\n"
        "# TYPE atpd_dead_letters_bytes gauge\natpd_dead_letters_bytes %" PRIu64 "\n",
        s.open, s.replayed, s.resolved, s.max, s.dropped_open, s.dropped_closed,
        s.bytes);
  }
  if (app->flow_state) {
    static const char *const head[3] = {
        "# HELP atpd_flow_paused 1 while the flow is paused.\n"
        "# TYPE atpd_flow_paused gauge\n",
        "# HELP atpd_flow_queued Ops queued while the flow is paused.\n"
        "# TYPE atpd_flow_queued gauge\n",
        "# HELP atpd_flow_ops_total Ops of the flow since start, by outcome.\n"
        "# TYPE atpd_flow_ops_total counter\n",
    };
    for (int family = 0; family < 3; family++) {
      atp_buf_printf(out, "%s", head[family]);
      flow_lines_t c = {.out = out, .family = family};
      atp_flowstate_list(app->flow_state, flow_lines, &c);
    }
  }
  if (app->audit) {
    atp_audit_stats_t s;
    atp_audit_stats(app->audit, &s);
    atp_buf_printf(
        out,
        "# HELP atpd_audit_entries Audit entries kept.\n"
        "# TYPE atpd_audit_entries gauge\natpd_audit_entries %" PRIu64
        "\n"
        "# HELP atpd_audit_entries_max The bound on audit entries kept.\n"
        "# TYPE atpd_audit_entries_max gauge\natpd_audit_entries_max %u\n"
        "# HELP atpd_audit_dropped_total Oldest audit entries dropped to make room.\n"
        "# TYPE atpd_audit_dropped_total counter\natpd_audit_dropped_total %" PRIu64
        "\n",
        s.kept, s.max, s.dropped);
  }
}
