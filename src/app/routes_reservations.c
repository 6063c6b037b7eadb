/* routes_reservations.c - checkout reservations (CONTRACT.md section 4).
 *
 * Each handler validates the whole body (400 naming the field) before calling
 * the engine once. The reservation record an engine call fills is ~60 KiB, so
 * it is the loop thread's scratch record (atp_req_reservation), never a stack
 * or heap object. */
#include <string.h>

#include "atp/error.h"
#include "atp/limits.h"
#include "atp/router.h"
#include "ops.h"

/* Answers 200/201 with the reservation, "replayed": true on a replay. */
static int respond_reservation(atp_req_t *rq, int status, const atp_reservation_t *r) {
  atp_writer_t *w = atp_respond_begin(rq, status);
  atp_w_object_begin(w);
  atp_write_reservation_fields(w, r);
  if (r->replayed) {
    atp_w_key(w, "replayed");
    atp_w_bool(w, true);
  }
  atp_w_object_end(w);
  return 0;
}

/* Answers an op's error (recorded by the op), adding the contract's details:
 * shortfalls for insufficient_stock, the reservation's status for conflict. */
static int respond_engine_error(atp_req_t *rq, int err, const atp_result_t *result,
                                const atp_shortfalls_t *shortfalls) {
  if (err == ATP_EINSUFFICIENT && shortfalls) {
    atp_writer_t *w = atp_respond_error_begin(rq, err);
    atp_w_key(w, "shortfalls");
    atp_w_array_begin(w);
    for (uint32_t i = 0; i < shortfalls->count && i < ATP_RESERVATION_LINES_MAX; i++) {
      const atp_shortfall_t *s = &shortfalls->items[i];
      atp_w_object_begin(w);
      atp_w_key(w, "line");
      atp_w_uint(w, s->line);
      atp_w_key(w, "sku");
      atp_w_s(w, s->sku);
      if (s->group.len) {
        atp_w_key(w, "group");
        atp_w_s(w, s->group);
      } else {
        atp_w_key(w, "location");
        atp_w_s(w, s->location);
      }
      atp_w_key(w, "requested");
      atp_w_int(w, s->requested);
      atp_w_key(w, "available");
      atp_w_int(w, s->available);
      if (s->split_available >= 0) {
        /* A group line without allow_split: available is the best single
         * location's; say where, and whether a split would fill the line. */
        if (s->best_location.len) {
          atp_w_key(w, "best_location");
          atp_w_s(w, s->best_location);
        }
        atp_w_key(w, "split_available");
        atp_w_int(w, s->split_available);
        atp_w_key(w, "allow_split_would_fill");
        atp_w_bool(w, s->split_available >= s->requested);
      }
      atp_w_object_end(w);
    }
    atp_w_array_end(w);
    atp_respond_error_end(rq, w);
    return 0;
  }
  if (err == ATP_ECONFLICT && result->status >= ATP_STATUS_HELD &&
      result->status <= ATP_STATUS_FULFILLED) {
    atp_writer_t *w = atp_respond_error_begin(rq, err);
    atp_w_key(w, "status");
    atp_w_cstr(w, atp_status_name((atp_status_t)result->status));
    atp_respond_error_end(rq, w);
    return 0;
  }
  return err;
}

/* Reads lines [{sku, location | group, qty, allow_split?}] of 1..max items. */
static int read_line_reqs(atp_req_t *rq, const atp_val_t *obj, const char *key,
                          unsigned flags, uint32_t min, uint32_t max,
                          atp_line_req_t **out, uint32_t *count) {
  const atp_val_t *arr;
  *out = NULL;
  *count = 0;
  int rc = atp_get_array(rq, obj, NULL, key, flags, min, max, &arr);
  if (rc != 0 || !arr) return rc;
  atp_line_req_t *lines = atp_arena_alloc(rq->arena, arr->len * sizeof *lines);
  if (!lines) return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  for (uint32_t i = 0; i < arr->len; i++) {
    const atp_val_t *it;
    atp_at_t at = {key, (int32_t)i, NULL};
    atp_line_req_t *l = &lines[i];
    bool split = false;
    rc = atp_get_item_object(rq, arr, NULL, key, i, &it);
    if (rc == 0) rc = atp_get_id(rq, it, &at, "sku", ATP_REQUIRED, &l->sku);
    if (rc == 0) rc = atp_get_id(rq, it, &at, "location", ATP_OPTIONAL, &l->location);
    if (rc == 0) rc = atp_get_id(rq, it, &at, "group", ATP_OPTIONAL, &l->group);
    if (rc == 0)
      rc = atp_get_int(rq, it, &at, "qty", ATP_REQUIRED, 1, ATP_QTY_MAX, &l->qty, NULL);
    if (rc == 0)
      rc = atp_get_bool(rq, it, &at, "allow_split", ATP_OPTIONAL, &split, NULL);
    if (rc != 0) return rc;
    if (l->location.len && l->group.len)
      return atp_req_fail(rq, ATP_EBADREQ, &at, "group",
                          "Give location or group, not both.");
    if (!l->location.len && !l->group.len)
      return atp_req_fail(rq, ATP_EBADREQ, &at, "location",
                          "Give a location or a group.");
    if (split && !l->group.len)
      return atp_req_fail(rq, ATP_EBADREQ, &at, "allow_split",
                          "allow_split applies to group lines only.");
    l->allow_split = split;
  }
  *out = lines;
  *count = arr->len;
  return 0;
}

/* Reads [{sku, location, qty}] of 1..max items; absent optional: count 0. */
static int read_qty_lines(atp_req_t *rq, const atp_val_t *obj, const char *key,
                          unsigned flags, uint32_t min, uint32_t max,
                          atp_qty_line_t **out, uint32_t *count) {
  const atp_val_t *arr;
  *out = NULL;
  *count = 0;
  int rc = atp_get_array(rq, obj, NULL, key, flags, min, max, &arr);
  if (rc != 0 || !arr) return rc;
  atp_qty_line_t *lines = atp_arena_alloc(rq->arena, arr->len * sizeof *lines);
  if (!lines) return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  for (uint32_t i = 0; i < arr->len; i++) {
    const atp_val_t *it;
    atp_at_t at = {key, (int32_t)i, NULL};
    rc = atp_get_item_object(rq, arr, NULL, key, i, &it);
    if (rc == 0) rc = atp_get_id(rq, it, &at, "sku", ATP_REQUIRED, &lines[i].sku);
    if (rc == 0)
      rc = atp_get_id(rq, it, &at, "location", ATP_REQUIRED, &lines[i].location);
    if (rc == 0)
      rc = atp_get_int(rq, it, &at, "qty", ATP_REQUIRED, 1, ATP_QTY_MAX, &lines[i].qty,
                       NULL);
    if (rc != 0) return rc;
  }
  *out = lines;
  *count = arr->len;
  return 0;
}

/* An engine refusal: recorded for the answer, details kept in out. */
static int fail_engine(atp_req_t *rq, int rc, atp_op_out_t *out) {
  return atp_req_fail_result(rq, rc, &out->result);
}

/* Reservation follow-ups: in a batch the op's flow must write reservations. */
static int follow_up_owner_check(atp_req_t *rq, atp_str_t flow) {
  if (!flow.len) return 0;
  return atp_op_owner_check(rq, ATP_FIELD_RESERVATIONS, flow, flow, "flow");
}

int atp_op_reserve(atp_req_t *rq, const atp_val_t *b, atp_str_t flow, atp_str_t target,
                   atp_op_out_t *out) {
  atp_reserve_req_t req;
  memset(&req, 0, sizeof req);
  atp_line_req_t *lines = NULL;
  bool has_ttl = false;
  int rc = atp_get_id(rq, b, NULL, "id", ATP_REQUIRED, &req.id);
  if (rc == 0)
    rc = read_line_reqs(rq, b, "lines", ATP_REQUIRED, 1, ATP_RESERVATION_LINES_MAX,
                        &lines, &req.line_count);
  if (rc == 0)
    rc = atp_get_int(rq, b, NULL, "ttl_ms", ATP_OPTIONAL, ATP_TTL_MS_MIN,
                     ATP_TTL_MS_MAX, &req.ttl_ms, &has_ttl);
  if (rc == 0) rc = atp_get_id(rq, b, NULL, "order_ref", ATP_OPTIONAL, &req.order_ref);
  if (rc == 0) rc = atp_op_writer(rq, b, flow, "channel", ATP_OPTIONAL, &req.channel);
  if (rc == 0)
    rc = atp_get_id(rq, b, NULL, "customer_id", ATP_OPTIONAL, &req.customer_id);
  if (rc == 0)
    rc = atp_op_owner_check(rq, ATP_FIELD_RESERVATIONS, flow, req.channel, "channel");
  if (rc != 0) return rc;
  if (!has_ttl) req.ttl_ms = ATP_TTL_MS_DEFAULT;
  req.lines = lines;
  out->id = req.id;
  out->u.res.reservation = atp_req_reservation();
  out->u.res.shortfalls = atp_req_shortfalls();
  out->u.res.shortfalls->count = 0;
  rc = atp_reserve(atp_app_engine(rq->app), &req, out->u.res.reservation,
                   out->u.res.shortfalls, &out->result);
  if (rc != 0) return fail_engine(rq, rc, out);
  /* A replay answers the original status, 201, with "replayed": true. */
  out->status = 201;
  out->replayed = out->u.res.reservation->replayed;
  return 0;
}

/* The single route's answer for a reservation op: its body, or its error with
 * the details (shortfalls, status). */
static int respond_op(atp_req_t *rq, int rc, const atp_op_out_t *out) {
  if (rc == 0) return respond_reservation(rq, out->status, out->u.res.reservation);
  if (!out->u.res.reservation) return rc; /* refused before the engine */
  return respond_engine_error(rq, rc, &out->result, out->u.res.shortfalls);
}

int atp_route_reservation_create(atp_req_t *rq) {
  atp_op_out_t out;
  atp_op_out_init(&out);
  int rc = atp_req_parse_body(rq, true);
  if (rc == 0) rc = atp_op_reserve(rq, rq->body, (atp_str_t){NULL, 0}, out.id, &out);
  return respond_op(rq, rc, &out);
}

int atp_route_reservation_get(atp_req_t *rq) {
  atp_str_t id;
  int rc = atp_req_path_id(rq, "id", "reservation id", &id);
  if (rc != 0) return rc;
  atp_reservation_t *r = atp_req_reservation();
  if (atp_reservation_get(atp_app_engine(rq->app), id, r) != 0)
    return atp_req_fail(rq, ATP_ENOTFOUND, NULL, NULL, "Unknown reservation.");
  r->replayed = false;
  return respond_reservation(rq, 200, r);
}

/* The engine call of a follow-up is done: its outcome into out. */
static int follow_up_done(atp_req_t *rq, int rc, atp_op_out_t *out) {
  if (rc != 0) return fail_engine(rq, rc, out);
  out->status = 200;
  out->replayed = out->u.res.reservation->replayed;
  return 0;
}

/* Starts a follow-up's engine call: the scratch records in out. */
static atp_reservation_t *follow_up_begin(atp_op_out_t *out, atp_str_t id) {
  out->id = id;
  out->u.res.reservation = atp_req_reservation();
  out->u.res.shortfalls = atp_req_shortfalls();
  out->u.res.shortfalls->count = 0;
  return out->u.res.reservation;
}

int atp_op_commit(atp_req_t *rq, const atp_val_t *b, atp_str_t flow, atp_str_t id,
                  atp_op_out_t *out) {
  atp_str_t order_id;
  int rc = atp_get_id(rq, b, NULL, "order_id", ATP_OPTIONAL, &order_id);
  if (rc == 0) rc = follow_up_owner_check(rq, flow);
  if (rc != 0) return rc;
  atp_reservation_t *r = follow_up_begin(out, id);
  rc = atp_commit(atp_app_engine(rq->app), id, order_id, r, &out->result);
  return follow_up_done(rq, rc, out);
}

int atp_op_release(atp_req_t *rq, const atp_val_t *b, atp_str_t flow, atp_str_t id,
                   atp_op_out_t *out) {
  atp_str_t reason, release_id = {NULL, 0};
  atp_qty_line_t *lines = NULL;
  uint32_t count = 0;
  int rc = atp_get_id(rq, b, NULL, "release_id", ATP_OPTIONAL, &release_id);
  if (rc == 0)
    rc = atp_get_text(rq, b, NULL, "reason", ATP_OPTIONAL, ATP_REASON_BYTES_MAX,
                      &reason);
  if (rc == 0)
    rc = read_qty_lines(rq, b, "lines", ATP_OPTIONAL, 1, ATP_RESERVATION_POSITIONS_MAX,
                        &lines, &count);
  if (rc == 0) rc = follow_up_owner_check(rq, flow);
  if (rc != 0) return rc;
  atp_reservation_t *r = follow_up_begin(out, id);
  rq->change_ctx.reason = reason;
  rc = atp_release_keyed(atp_app_engine(rq->app), id, release_id, lines, count, r,
                         &out->result);
  return follow_up_done(rq, rc, out);
}

int atp_op_extend(atp_req_t *rq, const atp_val_t *b, atp_str_t flow, atp_str_t id,
                  atp_op_out_t *out) {
  int64_t ttl_ms = 0;
  int rc = atp_get_int(rq, b, NULL, "ttl_ms", ATP_REQUIRED, ATP_TTL_MS_MIN,
                       ATP_TTL_MS_MAX, &ttl_ms, NULL);
  if (rc == 0) rc = follow_up_owner_check(rq, flow);
  if (rc != 0) return rc;
  atp_reservation_t *r = follow_up_begin(out, id);
  rc = atp_extend(atp_app_engine(rq->app), id, ttl_ms, r, &out->result);
  return follow_up_done(rq, rc, out);
}

int atp_op_fulfil(atp_req_t *rq, const atp_val_t *b, atp_str_t flow, atp_str_t id,
                  atp_op_out_t *out) {
  atp_str_t fulfillment_id;
  atp_qty_line_t *lines = NULL;
  uint32_t count = 0;
  int rc = atp_get_id(rq, b, NULL, "fulfillment_id", ATP_REQUIRED, &fulfillment_id);
  if (rc == 0)
    rc = read_qty_lines(rq, b, "lines", ATP_OPTIONAL, 1, ATP_RESERVATION_POSITIONS_MAX,
                        &lines, &count);
  if (rc == 0) rc = follow_up_owner_check(rq, flow);
  if (rc != 0) return rc;
  atp_reservation_t *r = follow_up_begin(out, id);
  rc = atp_fulfil(atp_app_engine(rq->app), id, fulfillment_id, lines, count, r,
                  &out->result);
  return follow_up_done(rq, rc, out);
}

int atp_op_amend(atp_req_t *rq, const atp_val_t *b, atp_str_t flow, atp_str_t id,
                 atp_op_out_t *out) {
  atp_str_t amend_id;
  atp_qty_line_t *release = NULL;
  atp_line_req_t *add = NULL;
  uint32_t release_count = 0, add_count = 0;
  int rc = atp_get_id(rq, b, NULL, "amend_id", ATP_REQUIRED, &amend_id);
  if (rc == 0)
    rc = read_qty_lines(rq, b, "release", ATP_REQUIRED, 0,
                        ATP_RESERVATION_POSITIONS_MAX, &release, &release_count);
  if (rc == 0)
    rc = read_line_reqs(rq, b, "add", ATP_REQUIRED, 0, ATP_RESERVATION_LINES_MAX, &add,
                        &add_count);
  if (rc == 0 && release_count == 0 && add_count == 0)
    rc = atp_req_fail(rq, ATP_EBADREQ, NULL, "add",
                      "An amend needs a release or an add list.");
  if (rc == 0) rc = follow_up_owner_check(rq, flow);
  if (rc != 0) return rc;
  atp_reservation_t *r = follow_up_begin(out, id);
  rc = atp_amend(atp_app_engine(rq->app), id, amend_id, release, release_count, add,
                 add_count, r, out->u.res.shortfalls, &out->result);
  return follow_up_done(rq, rc, out);
}

/* A follow-up route: {id} from the path, the body (required or not), the op. */
static int follow_up_route(atp_req_t *rq, bool body_required, atp_op_fn op) {
  atp_str_t id;
  atp_op_out_t out;
  atp_op_out_init(&out);
  int rc = atp_req_path_id(rq, "id", "reservation id", &id);
  if (rc == 0) rc = atp_req_parse_body(rq, body_required);
  if (rc == 0) rc = op(rq, rq->body, (atp_str_t){NULL, 0}, id, &out);
  return respond_op(rq, rc, &out);
}

int atp_route_reservation_commit(atp_req_t *rq) {
  return follow_up_route(rq, false, atp_op_commit);
}

int atp_route_reservation_release(atp_req_t *rq) {
  return follow_up_route(rq, false, atp_op_release);
}

int atp_route_reservation_extend(atp_req_t *rq) {
  return follow_up_route(rq, true, atp_op_extend);
}

int atp_route_reservation_fulfil(atp_req_t *rq) {
  return follow_up_route(rq, true, atp_op_fulfil);
}

int atp_route_reservation_amend(atp_req_t *rq) {
  return follow_up_route(rq, true, atp_op_amend);
}
