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

/* Answers an engine error, adding the contract's details: shortfalls for
 * insufficient_stock, the reservation's status for conflict. */
static int respond_engine_error(atp_req_t *rq, int err, const atp_result_t *result,
                                const atp_shortfalls_t *shortfalls) {
  atp_req_fail_result(rq, err, result);
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

int atp_route_reservation_create(atp_req_t *rq) {
  atp_engine_t *engine = atp_app_engine(rq->app);
  int rc = atp_req_parse_body(rq, true);
  if (rc != 0) return rc;
  atp_reserve_req_t req;
  memset(&req, 0, sizeof req);
  atp_line_req_t *lines = NULL;
  bool has_ttl = false;
  const atp_val_t *b = rq->body;
  rc = atp_get_id(rq, b, NULL, "id", ATP_REQUIRED, &req.id);
  if (rc == 0)
    rc = read_line_reqs(rq, b, "lines", ATP_REQUIRED, 1, ATP_RESERVATION_LINES_MAX,
                        &lines, &req.line_count);
  if (rc == 0)
    rc = atp_get_int(rq, b, NULL, "ttl_ms", ATP_OPTIONAL, ATP_TTL_MS_MIN,
                     ATP_TTL_MS_MAX, &req.ttl_ms, &has_ttl);
  if (rc == 0) rc = atp_get_id(rq, b, NULL, "order_ref", ATP_OPTIONAL, &req.order_ref);
  if (rc == 0) rc = atp_get_id(rq, b, NULL, "channel", ATP_OPTIONAL, &req.channel);
  if (rc == 0)
    rc = atp_get_id(rq, b, NULL, "customer_id", ATP_OPTIONAL, &req.customer_id);
  if (rc == 0)
    rc = atp_req_owner_check(rq, ATP_FIELD_RESERVATIONS, req.channel, "channel");
  if (rc != 0) return rc;
  if (!has_ttl) req.ttl_ms = ATP_TTL_MS_DEFAULT;
  req.lines = lines;

  atp_reservation_t *r = atp_req_reservation();
  atp_shortfalls_t *shortfalls = atp_req_shortfalls();
  atp_result_t result;
  result.field[0] = result.message[0] = '\0';
  result.status = -1;
  shortfalls->count = 0;
  rc = atp_reserve(engine, &req, r, shortfalls, &result);
  if (rc != 0) return respond_engine_error(rq, rc, &result, shortfalls);
  /* A replay answers the original status, 201, with "replayed": true. */
  return respond_reservation(rq, 201, r);
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

int atp_route_reservation_commit(atp_req_t *rq) {
  atp_str_t id, order_id;
  int rc = atp_req_path_id(rq, "id", "reservation id", &id);
  if (rc == 0) rc = atp_req_parse_body(rq, false);
  if (rc == 0) rc = atp_get_id(rq, rq->body, NULL, "order_id", ATP_OPTIONAL, &order_id);
  if (rc != 0) return rc;
  atp_reservation_t *r = atp_req_reservation();
  atp_result_t result;
  atp_result_init(&result);
  rc = atp_commit(atp_app_engine(rq->app), id, order_id, r, &result);
  if (rc != 0) return respond_engine_error(rq, rc, &result, NULL);
  return respond_reservation(rq, 200, r);
}

int atp_route_reservation_release(atp_req_t *rq) {
  atp_str_t id, reason, release_id = {NULL, 0};
  atp_qty_line_t *lines = NULL;
  uint32_t count = 0;
  int rc = atp_req_path_id(rq, "id", "reservation id", &id);
  if (rc == 0) rc = atp_req_parse_body(rq, false);
  if (rc == 0)
    rc = atp_get_id(rq, rq->body, NULL, "release_id", ATP_OPTIONAL, &release_id);
  if (rc == 0)
    rc = atp_get_text(rq, rq->body, NULL, "reason", ATP_OPTIONAL, ATP_REASON_BYTES_MAX,
                      &reason);
  if (rc == 0)
    rc = read_qty_lines(rq, rq->body, "lines", ATP_OPTIONAL, 1,
                        ATP_RESERVATION_POSITIONS_MAX, &lines, &count);
  if (rc != 0) return rc;
  atp_reservation_t *r = atp_req_reservation();
  atp_result_t result;
  atp_result_init(&result);
  rc = atp_release_keyed(atp_app_engine(rq->app), id, release_id, lines, count, r,
                         &result);
  if (rc != 0) return respond_engine_error(rq, rc, &result, NULL);
  return respond_reservation(rq, 200, r);
}

int atp_route_reservation_extend(atp_req_t *rq) {
  atp_str_t id;
  int64_t ttl_ms = 0;
  int rc = atp_req_path_id(rq, "id", "reservation id", &id);
  if (rc == 0) rc = atp_req_parse_body(rq, true);
  if (rc == 0)
    rc = atp_get_int(rq, rq->body, NULL, "ttl_ms", ATP_REQUIRED, ATP_TTL_MS_MIN,
                     ATP_TTL_MS_MAX, &ttl_ms, NULL);
  if (rc != 0) return rc;
  atp_reservation_t *r = atp_req_reservation();
  atp_result_t result;
  atp_result_init(&result);
  rc = atp_extend(atp_app_engine(rq->app), id, ttl_ms, r, &result);
  if (rc != 0) return respond_engine_error(rq, rc, &result, NULL);
  return respond_reservation(rq, 200, r);
}

int atp_route_reservation_fulfil(atp_req_t *rq) {
  atp_str_t id, fulfillment_id;
  atp_qty_line_t *lines = NULL;
  uint32_t count = 0;
  int rc = atp_req_path_id(rq, "id", "reservation id", &id);
  if (rc == 0) rc = atp_req_parse_body(rq, true);
  if (rc == 0)
    rc =
        atp_get_id(rq, rq->body, NULL, "fulfillment_id", ATP_REQUIRED, &fulfillment_id);
  if (rc == 0)
    rc = read_qty_lines(rq, rq->body, "lines", ATP_OPTIONAL, 1,
                        ATP_RESERVATION_POSITIONS_MAX, &lines, &count);
  if (rc != 0) return rc;
  atp_reservation_t *r = atp_req_reservation();
  atp_result_t result;
  atp_result_init(&result);
  rc =
      atp_fulfil(atp_app_engine(rq->app), id, fulfillment_id, lines, count, r, &result);
  if (rc != 0) return respond_engine_error(rq, rc, &result, NULL);
  return respond_reservation(rq, 200, r);
}

int atp_route_reservation_amend(atp_req_t *rq) {
  atp_str_t id, amend_id;
  atp_qty_line_t *release = NULL;
  atp_line_req_t *add = NULL;
  uint32_t release_count = 0, add_count = 0;
  int rc = atp_req_path_id(rq, "id", "reservation id", &id);
  if (rc == 0) rc = atp_req_parse_body(rq, true);
  if (rc == 0) rc = atp_get_id(rq, rq->body, NULL, "amend_id", ATP_REQUIRED, &amend_id);
  if (rc == 0)
    rc = read_qty_lines(rq, rq->body, "release", ATP_REQUIRED, 0,
                        ATP_RESERVATION_POSITIONS_MAX, &release, &release_count);
  if (rc == 0)
    rc = read_line_reqs(rq, rq->body, "add", ATP_REQUIRED, 0, ATP_RESERVATION_LINES_MAX,
                        &add, &add_count);
  if (rc != 0) return rc;
  if (release_count == 0 && add_count == 0)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, "add",
                        "An amend needs a release or an add list.");
  atp_reservation_t *r = atp_req_reservation();
  atp_shortfalls_t *shortfalls = atp_req_shortfalls();
  shortfalls->count = 0;
  atp_result_t result;
  atp_result_init(&result);
  rc = atp_amend(atp_app_engine(rq->app), id, amend_id, release, release_count, add,
                 add_count, r, shortfalls, &result);
  if (rc != 0) return respond_engine_error(rq, rc, &result, shortfalls);
  return respond_reservation(rq, 200, r);
}
