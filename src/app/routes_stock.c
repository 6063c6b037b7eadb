/* routes_stock.c - stock changes and groups (CONTRACT.md section 5):
 * adjustments, counts, safety stock, PUT/GET/DELETE groups.
 *
 * Writers are gated by the ownership matrix on their `source` (the engine
 * knows nothing of flows). Replays of adjustments and counts answer the
 * original outcome with "replayed": true at the top level. */
#include <string.h>

#include "atp/error.h"
#include "atp/limits.h"
#include "atp/router.h"
#include "ops.h"

static _Thread_local atp_str_t group_locations[ATP_GROUP_LOCATIONS_MAX];

/* 409 conflict from change_from, with the current position. A position never
 * seen is not created by a refusal: it is answered as a zero position with
 * version 0 and "found": false, the shape group and query answers use. The op
 * recorded the error already. */
static int respond_change_from_conflict(atp_req_t *rq, const atp_position_t *position) {
  atp_writer_t *w = atp_respond_error_begin(rq, ATP_ECONFLICT);
  atp_w_key(w, "position");
  atp_write_position(w, position, position->version == 0 ? 0 : -1);
  atp_respond_error_end(rq, w);
  return 0;
}

/* An engine refusal of an on_hand write: recorded, change_from named. */
static int fail_stock(atp_req_t *rq, int rc, bool has_change_from, atp_op_out_t *out) {
  atp_req_fail_result(rq, rc, &out->result);
  if (rc == ATP_ECONFLICT && has_change_from) {
    out->change_from_conflict = true;
    if (!rq->field[0]) snprintf(rq->field, sizeof rq->field, "change_from");
  }
  return rc;
}

static int read_reason(atp_req_t *rq, const atp_val_t *b, atp_reason_t *out) {
  atp_str_t name;
  int rc = atp_get_id(rq, b, NULL, "reason", ATP_REQUIRED, &name);
  if (rc != 0) return rc;
  if (atp_reason_parse(name, out) != 0)
    return atp_req_fail(
        rq, ATP_EBADREQ, NULL, "reason",
        "Must be one of received, sale, return_restock, damaged, shrink, "
        "correction, transfer_in, transfer_out, other.");
  return 0;
}

int atp_op_adjust(atp_req_t *rq, const atp_val_t *b, atp_str_t flow, atp_str_t target,
                  atp_op_out_t *out) {
  atp_adjust_req_t req;
  memset(&req, 0, sizeof req);
  req.occurred_at_ms = ATP_TIME_NONE;
  bool has_time = false;
  int rc = atp_get_id(rq, b, NULL, "id", ATP_REQUIRED, &req.id);
  if (rc == 0) rc = atp_get_id(rq, b, NULL, "sku", ATP_REQUIRED, &req.sku);
  if (rc == 0) rc = atp_get_id(rq, b, NULL, "location", ATP_REQUIRED, &req.location);
  if (rc == 0)
    rc = atp_get_int(rq, b, NULL, "delta", ATP_REQUIRED, -ATP_QTY_MAX, ATP_QTY_MAX,
                     &req.delta, NULL);
  if (rc == 0 && req.delta == 0)
    rc = atp_req_fail(rq, ATP_EBADREQ, NULL, "delta", "Must not be 0.");
  if (rc == 0) rc = read_reason(rq, b, &req.reason);
  if (rc == 0) rc = atp_op_writer(rq, b, flow, "source", ATP_REQUIRED, &req.source);
  if (rc == 0)
    rc = atp_get_time(rq, b, NULL, "occurred_at", ATP_OPTIONAL, &req.occurred_at_ms,
                      &has_time);
  if (rc == 0) rc = atp_get_id(rq, b, NULL, "ref", ATP_OPTIONAL, &req.ref);
  if (rc == 0)
    rc = atp_get_int(rq, b, NULL, "change_from", ATP_OPTIONAL, -ATP_QTY_MAX,
                     ATP_QTY_MAX, &req.change_from, &req.has_change_from);
  if (rc == 0)
    rc = atp_op_owner_check(rq, ATP_FIELD_ADJUSTMENTS, flow, req.source, "source");
  if (rc != 0) return rc;
  if (!has_time) req.occurred_at_ms = ATP_TIME_NONE;
  out->id = req.id;
  rq->change_ctx.ref = req.ref;
  const char *reason = atp_reason_name(req.reason);
  rq->change_ctx.reason = (atp_str_t){reason, (uint32_t)strlen(reason)};
  rc = atp_adjust(atp_app_engine(rq->app), &req, &out->u.adjust, &out->result);
  if (rc != 0) return fail_stock(rq, rc, req.has_change_from, out);
  out->status = 200;
  out->replayed = out->u.adjust.replayed;
  return 0;
}

/* Ends an adjustment's or a count's answer: the position after it (the
 * original one on a replay) and the replay mark, then the object. */
static int write_outcome_end(atp_writer_t *w, const atp_position_t *position,
                             bool replayed) {
  atp_w_key(w, "position");
  atp_write_position(w, position, -1);
  if (replayed) {
    atp_w_key(w, "replayed");
    atp_w_bool(w, true);
  }
  atp_w_object_end(w);
  return 0;
}

int atp_route_adjustment(atp_req_t *rq) {
  atp_op_out_t out;
  atp_op_out_init(&out);
  int rc = atp_req_parse_body(rq, true);
  if (rc == 0) rc = atp_op_adjust(rq, rq->body, (atp_str_t){NULL, 0}, out.id, &out);
  if (rc != 0 && out.change_from_conflict)
    return respond_change_from_conflict(rq, &out.u.adjust.position);
  if (rc != 0) return rc;
  const atp_adjust_res_t *res = &out.u.adjust;
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "adjustment");
  atp_w_object_begin(w);
  atp_w_key(w, "id");
  atp_w_s(w, out.id);
  atp_w_key(w, "applied");
  atp_w_bool(w, res->applied);
  atp_w_key(w, "absorbed");
  atp_w_bool(w, res->absorbed);
  atp_w_object_end(w);
  return write_outcome_end(w, &res->position, res->replayed);
}

int atp_op_count(atp_req_t *rq, const atp_val_t *b, atp_str_t flow, atp_str_t target,
                 atp_op_out_t *out) {
  atp_count_req_t req;
  memset(&req, 0, sizeof req);
  int rc = atp_get_id(rq, b, NULL, "id", ATP_REQUIRED, &req.id);
  if (rc == 0) rc = atp_get_id(rq, b, NULL, "sku", ATP_REQUIRED, &req.sku);
  if (rc == 0) rc = atp_get_id(rq, b, NULL, "location", ATP_REQUIRED, &req.location);
  if (rc == 0)
    rc = atp_get_int(rq, b, NULL, "on_hand", ATP_REQUIRED, 0, ATP_QTY_MAX, &req.on_hand,
                     NULL);
  if (rc == 0)
    rc =
        atp_get_time(rq, b, NULL, "counted_at", ATP_REQUIRED, &req.counted_at_ms, NULL);
  if (rc == 0) rc = atp_op_writer(rq, b, flow, "source", ATP_REQUIRED, &req.source);
  if (rc == 0)
    rc = atp_get_int(rq, b, NULL, "change_from", ATP_OPTIONAL, -ATP_QTY_MAX,
                     ATP_QTY_MAX, &req.change_from, &req.has_change_from);
  if (rc == 0)
    rc = atp_op_owner_check(rq, ATP_FIELD_COUNTS, flow, req.source, "source");
  if (rc != 0) return rc;
  out->id = req.id;
  rc = atp_count(atp_app_engine(rq->app), &req, &out->u.count, &out->result);
  if (rc != 0) return fail_stock(rq, rc, req.has_change_from, out);
  out->status = 200;
  out->replayed = out->u.count.replayed;
  return 0;
}

int atp_route_count(atp_req_t *rq) {
  atp_op_out_t out;
  atp_op_out_init(&out);
  int rc = atp_req_parse_body(rq, true);
  if (rc == 0) rc = atp_op_count(rq, rq->body, (atp_str_t){NULL, 0}, out.id, &out);
  if (rc != 0 && out.change_from_conflict)
    return respond_change_from_conflict(rq, &out.u.count.position);
  if (rc != 0) return rc;
  const atp_count_res_t *res = &out.u.count;
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "count");
  atp_w_object_begin(w);
  atp_w_key(w, "id");
  atp_w_s(w, out.id);
  atp_w_key(w, "applied");
  atp_w_bool(w, res->applied);
  atp_w_key(w, "stale");
  atp_w_bool(w, res->stale);
  atp_w_key(w, "approximate");
  atp_w_bool(w, res->approximate);
  atp_w_object_end(w);
  return write_outcome_end(w, &res->position, res->replayed);
}

int atp_op_safety_stock(atp_req_t *rq, const atp_val_t *b, atp_str_t flow,
                        atp_str_t target, atp_op_out_t *out) {
  atp_str_t sku, location, source;
  int64_t safety_stock = 0;
  int rc = atp_get_id(rq, b, NULL, "sku", ATP_REQUIRED, &sku);
  if (rc == 0) rc = atp_get_id(rq, b, NULL, "location", ATP_REQUIRED, &location);
  if (rc == 0)
    rc = atp_get_int(rq, b, NULL, "safety_stock", ATP_REQUIRED, 0, ATP_QTY_MAX,
                     &safety_stock, NULL);
  if (rc == 0) rc = atp_op_writer(rq, b, flow, "source", ATP_OPTIONAL, &source);
  if (rc == 0)
    rc = atp_op_owner_check(rq, ATP_FIELD_SAFETY_STOCK, flow, source, "source");
  if (rc != 0) return rc;
  rc = atp_safety_stock_set(atp_app_engine(rq->app), sku, location, safety_stock,
                            &out->u.position, &out->result);
  if (rc != 0) return atp_req_fail_result(rq, rc, &out->result);
  out->status = 200;
  return 0;
}

int atp_route_safety_stock(atp_req_t *rq) {
  atp_op_out_t out;
  atp_op_out_init(&out);
  int rc = atp_req_parse_body(rq, true);
  if (rc == 0)
    rc = atp_op_safety_stock(rq, rq->body, (atp_str_t){NULL, 0}, out.id, &out);
  if (rc != 0) return rc;
  atp_write_position(atp_respond_begin(rq, 200), &out.u.position, -1);
  return 0;
}

static void write_group(atp_writer_t *w, atp_str_t name, const atp_str_t *locations,
                        uint32_t count) {
  atp_w_object_begin(w);
  atp_w_key(w, "name");
  atp_w_s(w, name);
  atp_w_key(w, "locations");
  atp_w_array_begin(w);
  for (uint32_t i = 0; i < count; i++) atp_w_s(w, locations[i]);
  atp_w_array_end(w);
  atp_w_object_end(w);
}

/* PUT /v1/groups/{name}; target is the group's name. */
int atp_op_group(atp_req_t *rq, const atp_val_t *b, atp_str_t flow, atp_str_t name,
                 atp_op_out_t *out) {
  atp_str_t source;
  const atp_val_t *arr;
  int rc = atp_get_array(rq, b, NULL, "locations", ATP_REQUIRED, 1,
                         ATP_GROUP_LOCATIONS_MAX, &arr);
  if (rc == 0) rc = atp_op_writer(rq, b, flow, "source", ATP_OPTIONAL, &source);
  if (rc != 0) return rc;
  for (uint32_t i = 0; i < arr->len; i++) {
    const atp_val_t *v = &arr->u.items[i];
    if (v->type != ATP_VAL_STR || atp_id_check(v->u.s, v->len) != 0) {
      atp_at_t at = {"locations", (int32_t)i, NULL};
      return atp_req_fail(rq, ATP_EBADREQ, &at, NULL,
                          "Must be a location id: 1..%d bytes of printable UTF-8.",
                          ATP_ID_BYTES_MAX);
    }
    /* O(n^2) over at most 1000 names (~0.5M short compares, under a
     * millisecond): groups change rarely, and a named 400 beats a vague one. */
    for (uint32_t k = 0; k < i; k++) {
      if (group_locations[k].len == v->len &&
          !memcmp(group_locations[k].ptr, v->u.s, v->len)) {
        atp_at_t at = {"locations", (int32_t)i, NULL};
        return atp_req_fail(rq, ATP_EBADREQ, &at, NULL, "Duplicate location.");
      }
    }
    group_locations[i].ptr = v->u.s;
    group_locations[i].len = v->len;
  }
  rc = atp_op_owner_check(rq, ATP_FIELD_GROUPS, flow, source, "source");
  if (rc != 0) return rc;
  rc = atp_group_put(atp_app_engine(rq->app), name, group_locations, arr->len,
                     &out->result);
  if (rc != 0) return atp_req_fail_result(rq, rc, &out->result);
  out->id = name;
  out->u.group.locations = group_locations;
  out->u.group.count = arr->len;
  out->status = 200;
  return 0;
}

int atp_route_group_put(atp_req_t *rq) {
  atp_str_t name;
  atp_op_out_t out;
  atp_op_out_init(&out);
  int rc = atp_req_path_id(rq, "name", "group name", &name);
  if (rc == 0) rc = atp_req_parse_body(rq, true);
  if (rc == 0) rc = atp_op_group(rq, rq->body, (atp_str_t){NULL, 0}, name, &out);
  if (rc != 0) return rc;
  write_group(atp_respond_begin(rq, 200), name, out.u.group.locations,
              out.u.group.count);
  return 0;
}

int atp_route_group_get(atp_req_t *rq) {
  atp_str_t name;
  uint32_t count = 0;
  int rc = atp_req_path_id(rq, "name", "group name", &name);
  if (rc != 0) return rc;
  if (atp_group_get(atp_app_engine(rq->app), name, group_locations,
                    ATP_GROUP_LOCATIONS_MAX, &count) != 0)
    return atp_req_fail(rq, ATP_ENOTFOUND, NULL, NULL, "Unknown group.");
  if (count > ATP_GROUP_LOCATIONS_MAX) count = ATP_GROUP_LOCATIONS_MAX;
  write_group(atp_respond_begin(rq, 200), name, group_locations, count);
  return 0;
}

/* DELETE carries its flow as ?source= (many clients send no DELETE body), or
 * as "source" in an optional body like PUT's; given twice, both must agree.
 * The ownership rule is PUT's, checked before the group is looked up, so a
 * flow that may not write groups learns nothing of which exist. */
int atp_route_group_delete(atp_req_t *rq) {
  atp_str_t name, source, body_source;
  int rc = atp_req_path_id(rq, "name", "group name", &name);
  if (rc == 0) rc = atp_query_id(rq, "source", ATP_OPTIONAL, &source);
  if (rc == 0) rc = atp_req_parse_body(rq, false);
  if (rc == 0)
    rc = atp_get_id(rq, rq->body, NULL, "source", ATP_OPTIONAL, &body_source);
  if (rc == 0 && body_source.len) {
    if (source.len && (source.len != body_source.len ||
                       memcmp(source.ptr, body_source.ptr, source.len) != 0))
      rc = atp_req_fail(rq, ATP_EBADREQ, NULL, "source",
                        "The query and the body name different sources.");
    source = body_source;
  }
  if (rc == 0) rc = atp_req_owner_check(rq, ATP_FIELD_GROUPS, source, "source");
  if (rc != 0) return rc;
  atp_result_t result;
  atp_result_init(&result);
  rc = atp_group_delete(atp_app_engine(rq->app), name, &result);
  if (rc == ATP_ENOTFOUND)
    return atp_req_fail(rq, ATP_ENOTFOUND, NULL, NULL, "Unknown group.");
  if (rc != 0) return atp_req_fail_result(rq, rc, &result);
  atp_respond_empty(rq, 204);
  return 0;
}
