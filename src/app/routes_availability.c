/* routes_availability.c - the read paths (CONTRACT.md section 3).
 *
 * Reads never block on writers: each is engine hash probes and atomic loads.
 * Nothing here sorts (the engine returns endless-aisle positions in order) or
 * allocates beyond per-thread scratch, so GET /v1/availability costs a probe
 * and the encoding of one object. */
#include <string.h>

#include "atp/error.h"
#include "atp/limits.h"
#include "atp/router.h"

/* Per-thread scratch for group and endless-aisle answers: a group holds at
 * most ATP_GROUP_LOCATIONS_MAX locations, an endless-aisle answer lists at
 * most ATP_SKU_LOCATIONS_MAX. */
_Static_assert(ATP_SKU_LOCATIONS_MAX <= ATP_GROUP_LOCATIONS_MAX,
               "the endless aisle uses the group scratch");
static _Thread_local atp_str_t group_locations[ATP_GROUP_LOCATIONS_MAX];
static _Thread_local atp_key_t group_keys[ATP_GROUP_LOCATIONS_MAX];
static _Thread_local atp_position_t positions[ATP_GROUP_LOCATIONS_MAX];
static _Thread_local bool positions_found[ATP_GROUP_LOCATIONS_MAX];

/* Writes {sku, group, available, locations[, found]} for a known group, or
 * returns ATP_ENOTFOUND without writing. found < 0 omits "found". *carried
 * gets the number of positions written. */
static int write_group_availability(atp_engine_t *engine, atp_writer_t *w,
                                    atp_str_t sku, atp_str_t group, int found,
                                    uint32_t *carried) {
  uint32_t count = 0;
  *carried = 0;
  int rc =
      atp_group_get(engine, group, group_locations, ATP_GROUP_LOCATIONS_MAX, &count);
  if (rc != 0) return rc;
  if (count > ATP_GROUP_LOCATIONS_MAX) count = ATP_GROUP_LOCATIONS_MAX;
  *carried = count;
  /* One batched read: the group's positions are looked up together. */
  for (uint32_t i = 0; i < count; i++)
    group_keys[i] = (atp_key_t){sku, group_locations[i]};
  atp_positions_get(engine, group_keys, count, positions, positions_found);
  int64_t available = 0;
  for (uint32_t i = 0; i < count; i++)
    if (positions_found[i]) available += positions[i].available;
  atp_w_object_begin(w);
  atp_w_key(w, "sku");
  atp_w_s(w, sku);
  atp_w_key(w, "group");
  atp_w_s(w, group);
  atp_w_key(w, "available");
  atp_w_int(w, available);
  atp_w_key(w, "locations");
  atp_w_array_begin(w);
  for (uint32_t i = 0; i < count; i++) {
    /* Seen positions carry no "found" here; unseen ones say found: false. */
    if (positions_found[i])
      atp_write_position(w, &positions[i], -1);
    else
      atp_write_zero_position(w, sku, group_locations[i], 0);
  }
  atp_w_array_end(w);
  if (found >= 0) {
    atp_w_key(w, "found");
    atp_w_bool(w, found != 0);
  }
  atp_w_object_end(w);
  return 0;
}

/* A SKU held at more than ATP_SKU_LOCATIONS_MAX locations lists the most
 * available ones, with "truncated": true and the full "location_count"; the
 * sums then cover the listed locations only. Without the bound, a SKU at many
 * thousands of locations built an answer of unbounded size (issue 9). */
static int endless_aisle(atp_req_t *rq, atp_engine_t *engine, atp_str_t sku) {
  uint32_t total = 0;
  atp_position_t *out = positions;
  int rc = atp_sku_positions(engine, sku, out, ATP_SKU_LOCATIONS_MAX, &total);
  if (rc != 0) return atp_req_fail(rq, rc, NULL, NULL, "%s", atp_strerror(rc));
  uint32_t count = total > ATP_SKU_LOCATIONS_MAX ? ATP_SKU_LOCATIONS_MAX : total;
  int64_t available = 0, on_hand = 0;
  for (uint32_t i = 0; i < count; i++) {
    available += out[i].available;
    on_hand += out[i].on_hand;
  }
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "sku");
  atp_w_s(w, sku);
  atp_w_key(w, "available");
  atp_w_int(w, available);
  atp_w_key(w, "on_hand");
  atp_w_int(w, on_hand);
  atp_w_key(w, "locations");
  atp_w_array_begin(w);
  for (uint32_t i = 0; i < count; i++) atp_write_position(w, &out[i], -1);
  atp_w_array_end(w);
  if (total > count) {
    atp_w_key(w, "truncated");
    atp_w_bool(w, true);
    atp_w_key(w, "location_count");
    atp_w_uint(w, total);
  }
  atp_w_object_end(w);
  return 0;
}

int atp_route_availability_get(atp_req_t *rq) {
  atp_engine_t *engine = atp_app_engine(rq->app);
  atp_str_t sku, location, group;
  int rc = atp_query_id(rq, "sku", ATP_REQUIRED, &sku);
  if (rc == 0) rc = atp_query_id(rq, "location", ATP_OPTIONAL, &location);
  if (rc == 0) rc = atp_query_id(rq, "group", ATP_OPTIONAL, &group);
  if (rc != 0) return rc;
  if (location.len && group.len)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, "group",
                        "Give location or group, not both.");
  if (location.len) {
    atp_position_t p;
    if (atp_position_get(engine, sku, location, &p) != 0)
      return atp_req_fail(rq, ATP_ENOTFOUND, NULL, NULL,
                          "No stock was ever recorded for this SKU at this location.");
    atp_write_position(atp_respond_begin(rq, 200), &p, -1);
    return 0;
  }
  if (group.len) {
    atp_writer_t *w = atp_respond_begin(rq, 200);
    uint32_t carried;
    if (write_group_availability(engine, w, sku, group, -1, &carried) != 0)
      return atp_req_fail(rq, ATP_ENOTFOUND, NULL, "group", "Unknown group.");
    return 0;
  }
  return endless_aisle(rq, engine, sku);
}

/* 400 naming items: the answer would carry more than ATP_QUERY_POSITIONS_MAX. */
static int too_many_positions(atp_req_t *rq, uint32_t answer_positions) {
  return atp_req_fail(rq, ATP_EBADREQ, NULL, "items",
                      "The answer would carry %u positions (a group item counts as its "
                      "locations); at most %d are allowed: split the query.",
                      answer_positions, ATP_QUERY_POSITIONS_MAX);
}

typedef struct {
  atp_str_t sku;
  atp_str_t location; /* exactly one of location and group is set */
  atp_str_t group;
} query_item_t;

/* Reads and validates every item before answering any: a 400 names the
 * first bad one. */
static int parse_query_items(atp_req_t *rq, const atp_val_t *items, query_item_t *q) {
  for (uint32_t i = 0; i < items->len; i++) {
    const atp_val_t *it;
    atp_at_t at = {"items", (int32_t)i, NULL};
    int rc = atp_get_item_object(rq, items, NULL, "items", i, &it);
    if (rc == 0) rc = atp_get_id(rq, it, &at, "sku", ATP_REQUIRED, &q[i].sku);
    if (rc == 0) rc = atp_get_id(rq, it, &at, "location", ATP_OPTIONAL, &q[i].location);
    if (rc == 0) rc = atp_get_id(rq, it, &at, "group", ATP_OPTIONAL, &q[i].group);
    if (rc != 0) return rc;
    if (q[i].location.len && q[i].group.len)
      return atp_req_fail(rq, ATP_EBADREQ, &at, "group",
                          "Give location or group, not both.");
    if (!q[i].location.len && !q[i].group.len)
      return atp_req_fail(rq, ATP_EBADREQ, &at, "location",
                          "Give a location or a group.");
  }
  return 0;
}

/* The positions the answer will carry: a group item one per location of its
 * group (an unknown group, none). */
static uint32_t query_answer_positions(atp_engine_t *engine, const query_item_t *q,
                                       uint32_t count) {
  uint32_t answer_positions = 0;
  for (uint32_t i = 0; i < count; i++) {
    uint32_t n = 1;
    if (q[i].group.len && atp_group_get(engine, q[i].group, NULL, 0, &n) != 0) n = 0;
    answer_positions += n;
  }
  return answer_positions;
}

/* An item naming an unknown group: zeros and "found": false. */
static void write_unknown_group(atp_writer_t *w, const query_item_t *item) {
  atp_w_object_begin(w);
  atp_w_key(w, "sku");
  atp_w_s(w, item->sku);
  atp_w_key(w, "group");
  atp_w_s(w, item->group);
  atp_w_key(w, "available");
  atp_w_int(w, 0);
  atp_w_key(w, "locations");
  atp_w_array_begin(w);
  atp_w_array_end(w);
  atp_w_key(w, "found");
  atp_w_bool(w, false);
  atp_w_object_end(w);
}

/* Answers the items in request order. The items that name a location are
 * read first in one batch, whose look-ups overlap their cache misses. */
static int write_query_answer(atp_req_t *rq, atp_engine_t *engine,
                              const query_item_t *q, uint32_t count) {
  uint32_t located = 0;
  for (uint32_t i = 0; i < count; i++) located += q[i].location.len != 0;
  atp_key_t *keys = atp_arena_alloc(rq->arena, (located + 1) * sizeof *keys);
  atp_position_t *found_pos =
      atp_arena_alloc(rq->arena, (located + 1) * sizeof *found_pos);
  bool *found = atp_arena_alloc(rq->arena, located + 1);
  if (!keys || !found_pos || !found)
    return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  for (uint32_t i = 0, k = 0; i < count; i++)
    if (q[i].location.len) keys[k++] = (atp_key_t){q[i].sku, q[i].location};
  atp_positions_get(engine, keys, located, found_pos, found);
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "items");
  atp_w_array_begin(w);
  uint32_t carried_total = 0;
  for (uint32_t i = 0, k = 0; i < count; i++) {
    if (q[i].location.len) {
      if (found[k])
        atp_write_position(w, &found_pos[k], 1);
      else
        atp_write_zero_position(w, q[i].sku, q[i].location, 0);
      k++;
      carried_total++;
      continue;
    }
    uint32_t carried = 0;
    int group_rc =
        write_group_availability(engine, w, q[i].sku, q[i].group, 1, &carried);
    /* A group replaced with more locations since the count was taken must
     * not lift the bound: the error replaces the half-built answer. */
    carried_total += carried;
    if (carried_total > ATP_QUERY_POSITIONS_MAX)
      return too_many_positions(rq, carried_total);
    if (group_rc != 0) write_unknown_group(w, &q[i]);
  }
  atp_w_array_end(w);
  atp_w_object_end(w);
  return 0;
}

int atp_route_availability_query(atp_req_t *rq) {
  atp_engine_t *engine = atp_app_engine(rq->app);
  int rc = atp_req_parse_body(rq, true);
  if (rc != 0) return rc;
  const atp_val_t *items;
  rc = atp_get_array(rq, rq->body, NULL, "items", ATP_REQUIRED, 1, ATP_QUERY_ITEMS_MAX,
                     &items);
  if (rc != 0) return rc;
  query_item_t *q = atp_arena_alloc(rq->arena, items->len * sizeof *q);
  if (!q) return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  rc = parse_query_items(rq, items, q);
  if (rc != 0) return rc;
  /* Bound the answer before building any of it. */
  uint32_t answer_positions = query_answer_positions(engine, q, items->len);
  if (answer_positions > ATP_QUERY_POSITIONS_MAX)
    return too_many_positions(rq, answer_positions);
  return write_query_answer(rq, engine, q, items->len);
}
