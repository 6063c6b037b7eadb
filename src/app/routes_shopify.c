/* routes_shopify.c - the Shopify connector's routes (CONTRACT.md section 11):
 * PUT/GET /v1/shopify/mappings (and the batch op shopify_map),
 * POST /v1/shopify/webhooks and GET /v1/shopify/status, and the webhook
 * lines of /metrics.
 *
 * A webhook is authenticated by its X-Shopify-Hmac-Sha256 under any
 * configured secret and by its shop, then deduplicated (webhook id, then the
 * content key), then checked against its resource's watermark (a delivery
 * older than what was applied for the same order, fulfilment, refund or
 * inventory level is recorded and ignored). What remains becomes ordinary
 * batch ops of the flow `shopify` (commit, release, fulfil, adjust), written
 * as one JSON array and run through the batch's own per-op path
 * (atp_batch_run_ops): ownership, paused flows' queues, dead letters with
 * owners and idempotency are the batch's. Each op's idempotency key comes
 * from Shopify's ids (adjustment id "shopify:order:<id>:line:<line>",
 * release_id, fulfillment_id = the fulfilment's GID), so a replay at the
 * engine is a replay. What cannot become an op (a variant or location
 * without a mapping, an order atpd never saw, an inventory level that
 * disagrees with what atpd pushed) is a dead letter made here, owned by the
 * owner the ownership matrix names for the mappings, the reservations or
 * on_hand. The answer is 200 for all of them, once durable (the router's
 * bracket); only a full table or journal is 503, so that Shopify retries.
 *
 * Thread: the loop thread running the request.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "atp/app.h"
#include "atp/assert.h"
#include "atp/clock.h"
#include "atp/error.h"
#include "atp/feed.h"
#include "atp/flows.h"
#include "atp/limits.h"
#include "atp/router.h"
#include "atp/shopify.h"
#include "ops.h"

static const atp_str_t flow_name = {"shopify", 7};

static int connector_off(atp_req_t *rq) {
  return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL,
                      "The Shopify connector is off; start atpd with --shopify FILE.");
}

/* An id given as an integer or as digits / a GID of type; 0 when absent or
 * not one (the caller names the field). */
static uint64_t val_id(const atp_val_t *v, const char *type) {
  if (!v) return 0;
  if (v->type == ATP_VAL_INT) return v->u.i > 0 ? (uint64_t)v->u.i : 0;
  uint64_t id = 0;
  if (v->type == ATP_VAL_STR &&
      atp_shopify_id_parse((atp_str_t){v->u.s, v->len}, type, &id) == 0)
    return id;
  return 0;
}

/* --- mappings ------------------------------------------------------------------ */

static int read_id(atp_req_t *rq, const atp_val_t *obj, const atp_at_t *at,
                   const char *key, const char *type, uint64_t *out) {
  const atp_val_t *v = atp_val_get(obj, key);
  *out = val_id(v, type);
  if (*out) return 0;
  return atp_req_fail(rq, ATP_EBADREQ, at, key,
                      "Must be a Shopify id: a positive integer or a GID "
                      "\"gid://shopify/%s/<digits>\".",
                      type);
}

/* Reads and checks the whole body first, then applies it: a refusal changes
 * nothing. *items / *locations get the counts. */
static int apply_mappings(atp_req_t *rq, const atp_val_t *body, uint32_t *items_out,
                          uint32_t *locations_out) {
  atp_shopify_t *s = rq->app->shopify;
  const atp_val_t *items = NULL, *locations = NULL;
  int rc = atp_get_array(rq, body, NULL, "items", ATP_OPTIONAL, 0,
                         ATP_SHOPIFY_MAPPINGS_PER_PUT_MAX, &items);
  if (rc == 0)
    rc = atp_get_array(rq, body, NULL, "locations", ATP_OPTIONAL, 0,
                       ATP_SHOPIFY_MAPPINGS_PER_PUT_MAX, &locations);
  if (rc) return rc;
  uint32_t ni = items ? items->len : 0, nl = locations ? locations->len : 0;
  if (ni + nl == 0)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, "items",
                        "Give items, locations or both: nothing to map.");
  if (ni + nl > ATP_SHOPIFY_MAPPINGS_PER_PUT_MAX)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, "items",
                        "At most %u items and locations together per call.",
                        (unsigned)ATP_SHOPIFY_MAPPINGS_PER_PUT_MAX);
  for (int pass = 0; pass < 2; pass++) {
    for (uint32_t i = 0; i < ni; i++) {
      const atp_val_t *o = NULL;
      atp_at_t at = {"items", (int32_t)i, NULL};
      atp_str_t sku;
      uint64_t variant = 0, item = 0;
      if ((rc = atp_get_item_object(rq, items, NULL, "items", i, &o)) != 0 ||
          (rc = atp_get_id(rq, o, &at, "sku", ATP_REQUIRED, &sku)) != 0 ||
          (rc = read_id(rq, o, &at, "variant_id", "ProductVariant", &variant)) != 0 ||
          (rc = read_id(rq, o, &at, "inventory_item_id", "InventoryItem", &item)) != 0)
        return rc;
      if (pass == 1 && (rc = atp_shopify_map_item(s, sku, variant, item)) != 0)
        return atp_req_fail(rq, rc, &at, "sku", "%s",
                            rc == ATP_EFULL ? "The Shopify item mappings are full "
                                              "(ATP_SHOPIFY_ITEMS_MAX); nothing after "
                                              "this item was mapped."
                                            : "The mapping could not be kept.");
    }
    for (uint32_t i = 0; i < nl; i++) {
      const atp_val_t *o = NULL;
      atp_at_t at = {"locations", (int32_t)i, NULL};
      atp_str_t location;
      uint64_t loc = 0;
      if ((rc = atp_get_item_object(rq, locations, NULL, "locations", i, &o)) != 0 ||
          (rc = atp_get_id(rq, o, &at, "location", ATP_REQUIRED, &location)) != 0 ||
          (rc = read_id(rq, o, &at, "shopify_location_id", "Location", &loc)) != 0)
        return rc;
      if (pass == 1 && (rc = atp_shopify_map_location(s, location, loc)) != 0)
        return atp_req_fail(rq, rc, &at, "location", "%s",
                            rc == ATP_EFULL ? "The Shopify location mappings are full "
                                              "(ATP_SHOPIFY_LOCATIONS_MAX)."
                                            : "The mapping could not be kept.");
    }
  }
  *items_out = ni;
  *locations_out = nl;
  return 0;
}

int atp_op_shopify_map(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                       atp_str_t target, atp_op_out_t *out) {
  (void)target;
  if (!rq->app->shopify) return connector_off(rq);
  int rc = atp_op_owner_check(rq, ATP_FIELD_SHOPIFY_MAPPINGS, flow, flow, "flow");
  uint32_t ni = 0, nl = 0;
  if (rc == 0) rc = apply_mappings(rq, body, &ni, &nl);
  if (rc == 0) out->status = 200;
  return rc;
}

int atp_route_shopify_mappings_put(atp_req_t *rq) {
  if (!rq->app->shopify) return connector_off(rq);
  int rc = atp_req_parse_body(rq, true);
  uint32_t ni = 0, nl = 0;
  if (rc == 0) rc = apply_mappings(rq, rq->body, &ni, &nl);
  if (rc) return rc;
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "items");
  atp_w_uint(w, ni);
  atp_w_key(w, "locations");
  atp_w_uint(w, nl);
  atp_w_object_end(w);
  return 0;
}

int atp_route_shopify_mappings_get(atp_req_t *rq) {
  atp_shopify_t *s = rq->app->shopify;
  if (!s) return connector_off(rq);
  atp_str_t sku = {NULL, 0}, location = {NULL, 0};
  int rc = atp_query_id(rq, "sku", ATP_OPTIONAL, &sku);
  if (rc == 0) rc = atp_query_id(rq, "location", ATP_OPTIONAL, &location);
  if (rc) return rc;
  if (!sku.len && !location.len)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, "sku", "Name a sku or a location.");
  uint64_t variant = 0, item = 0, loc = 0;
  if (sku.len && !atp_shopify_item_of_sku(s, sku, &item, &variant))
    return atp_req_fail(rq, ATP_ENOTFOUND, NULL, "sku",
                        "The SKU is not mapped to a Shopify variant.");
  if (location.len && !atp_shopify_location_of(s, location, &loc))
    return atp_req_fail(rq, ATP_ENOTFOUND, NULL, "location",
                        "The location is not mapped to a Shopify location.");
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "items");
  atp_w_array_begin(w);
  if (sku.len) {
    atp_w_object_begin(w);
    atp_w_key(w, "sku");
    atp_w_str(w, sku.ptr, sku.len);
    atp_w_key(w, "variant_id");
    atp_w_uint(w, variant);
    atp_w_key(w, "inventory_item_id");
    atp_w_uint(w, item);
    int64_t q = 0;
    if (loc && atp_shopify_level_get(s, item, loc, &q)) {
      atp_w_key(w, "shopify_available");
      atp_w_int(w, q);
    }
    atp_w_object_end(w);
  }
  atp_w_array_end(w);
  atp_w_key(w, "locations");
  atp_w_array_begin(w);
  if (location.len) {
    atp_w_object_begin(w);
    atp_w_key(w, "location");
    atp_w_str(w, location.ptr, location.len);
    atp_w_key(w, "shopify_location_id");
    atp_w_uint(w, loc);
    atp_w_object_end(w);
  }
  atp_w_array_end(w);
  atp_w_object_end(w);
  return 0;
}

/* --- webhooks: the plan ------------------------------------------------------------
 */

typedef enum { EFFECT_OP, EFFECT_DEAD_LETTER } effect_kind_t;

typedef struct {
  effect_kind_t kind;
  const char *op; /* "commit", "adjust", ...; "dead_letter" */
  char id[ATP_ID_BYTES_MAX + 1];
  char sku[ATP_ID_BYTES_MAX + 1];
  char location[ATP_ID_BYTES_MAX + 1];
  int64_t delta; /* adjust */
  uint32_t op_index;
  /* A dead letter made here. */
  int err;
  atp_field_kind_t owner_field;
  char message[ATP_MESSAGE_BYTES_MAX];
} effect_t;

typedef struct {
  atp_req_t *rq;
  atp_shopify_t *s;
  atp_shopify_topic_t topic;
  atp_str_t topic_name, webhook_id;
  const atp_val_t *body;
  effect_t *effects;
  uint32_t count;
  uint32_t ops;
  atp_buf_t buf; /* the ops' JSON array */
  atp_writer_t w;
  bool full;      /* more than ATP_SHOPIFY_WEBHOOK_OPS_MAX effects */
  bool replaying; /* a dead letter's replay: no new dead letters made */
  int order_rc;   /* remembering the order failed (full, journal): 503 */
} plan_t;

static effect_t *add_effect(plan_t *p, effect_kind_t kind, const char *op) {
  if (p->count == ATP_SHOPIFY_WEBHOOK_OPS_MAX) {
    p->full = true;
    return NULL;
  }
  effect_t *e = &p->effects[p->count++];
  memset(e, 0, sizeof *e);
  e->kind = kind;
  e->op = op;
  return e;
}

static void dead_letter(plan_t *p, int err, atp_field_kind_t owner, const char *fmt,
                        ...) __attribute__((format(printf, 4, 5)));
static void dead_letter(plan_t *p, int err, atp_field_kind_t owner, const char *fmt,
                        ...) {
  effect_t *e = add_effect(p, EFFECT_DEAD_LETTER, "dead_letter");
  if (!e) return;
  e->err = err;
  e->owner_field = owner;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->message, sizeof e->message, fmt, ap);
  va_end(ap);
}

/* Starts one op object {op, flow, ...}; the caller adds fields and ends it. */
static atp_writer_t *op_begin(plan_t *p, effect_t *e) {
  e->op_index = p->ops++;
  atp_writer_t *w = &p->w;
  atp_w_object_begin(w);
  atp_w_key(w, "op");
  atp_w_cstr(w, e->op);
  atp_w_key(w, "flow");
  atp_w_str(w, flow_name.ptr, flow_name.len);
  return w;
}

static void copy_id(char *dst, const char *src) {
  snprintf(dst, ATP_ID_BYTES_MAX + 1, "%s", src);
}

/* A string member as a NUL-terminated copy in buf; "" when absent. */
static const char *str_of(const atp_val_t *obj, const char *key, char *buf,
                          size_t cap) {
  const atp_val_t *v = atp_val_get(obj, key);
  buf[0] = '\0';
  if (v && v->type == ATP_VAL_STR) snprintf(buf, cap, "%.*s", (int)v->len, v->u.s);
  return buf;
}

/* The hold the order's note_attributes name (reservation_attribute), into
 * buf; false when none. */
static bool order_hold(plan_t *p, const atp_val_t *order, char *buf, size_t cap) {
  const char *name = atp_shopify_config(p->s)->reservation_attribute;
  const atp_val_t *attrs = atp_val_get(order, "note_attributes");
  if (!attrs || attrs->type != ATP_VAL_ARRAY) return false;
  for (uint32_t i = 0; i < attrs->len; i++) {
    const atp_val_t *a = &attrs->u.items[i];
    const atp_val_t *n = atp_val_get(a, "name");
    const atp_val_t *v = atp_val_get(a, "value");
    if (n && n->type == ATP_VAL_STR && strlen(name) == n->len &&
        memcmp(n->u.s, name, n->len) == 0 && v && v->type == ATP_VAL_STR && v->len &&
        v->len < cap) {
      memcpy(buf, v->u.s, v->len);
      buf[v->len] = '\0';
      return true;
    }
  }
  return false;
}

/* The order's GID: admin_graphql_api_id, or made from its id. */
static void gid_of(const atp_val_t *obj, const char *type, uint64_t id, char *buf,
                   size_t cap) {
  str_of(obj, "admin_graphql_api_id", buf, cap);
  if (!buf[0]) snprintf(buf, cap, "gid://shopify/%s/%" PRIu64, type, id);
}

/* The line's SKU, or a dead letter (false). */
/* A custom sale or a tip: a line with no variant is no SKU of atpd's. */
static bool custom_line(const atp_val_t *line) {
  const atp_val_t *v = atp_val_get(line, "variant_id");
  return !v || v->type == ATP_VAL_NULL;
}

static bool map_sku(plan_t *p, const atp_val_t *line, char *sku, const char *what) {
  uint64_t variant = val_id(atp_val_get(line, "variant_id"), "ProductVariant");
  if (variant && atp_shopify_sku_of_variant(p->s, variant, sku, ATP_ID_BYTES_MAX + 1))
    return true;
  dead_letter(p, ATP_ENOTFOUND, ATP_FIELD_SHOPIFY_MAPPINGS,
              "Shopify variant %" PRIu64
              " of %s is not mapped to a SKU: map it (PUT /v1/shopify/mappings), "
              "then replay.",
              variant, what);
  return false;
}

static void unmapped_location(plan_t *p, uint64_t shop_loc, const char *what) {
  dead_letter(p, ATP_ENOTFOUND, ATP_FIELD_SHOPIFY_MAPPINGS,
              "Shopify location %" PRIu64
              " of %s is not mapped to a location: map it (PUT "
              "/v1/shopify/mappings), then replay.",
              shop_loc, what);
}

/* SKU and location of a line, or a dead letter (false). */
static bool map_line(plan_t *p, const atp_val_t *line, uint64_t shop_loc, char *sku,
                     char *location, const char *what) {
  if (!map_sku(p, line, sku, what)) return false;
  if (shop_loc &&
      atp_shopify_location_of_shopify(p->s, shop_loc, location, ATP_ID_BYTES_MAX + 1))
    return true;
  unmapped_location(p, shop_loc, what);
  return false;
}

/* Where the hold keeps sku: the line at the mapped Shopify location when the
 * hold has one there, else its first line of sku (whatever is left on it, so
 * a retry picks the same line and replays). A refund's cancel restock of an
 * unshipped line often names no location, and the hold is where the units
 * are held whatever Shopify restocks. HOLD_NO_LINE when the hold is known and
 * has no line of sku (a gift or protection item the checkout never held);
 * when the hold is unknown, the mapped location as given (its op is refused
 * not_found), or HOLD_NO_LOCATION. */
typedef enum { HOLD_LINE, HOLD_NO_LINE, HOLD_NO_LOCATION } hold_line_t;
static hold_line_t hold_location(plan_t *p, const char *hold, const char *sku,
                                 uint64_t shop_loc, char *location) {
  char mapped[ATP_ID_BYTES_MAX + 1] = "";
  if (shop_loc)
    (void)atp_shopify_location_of_shopify(p->s, shop_loc, mapped, sizeof mapped);
  atp_reservation_t *r = atp_req_reservation();
  atp_engine_t *engine = atp_app_engine(p->rq->app);
  if (!r || !engine ||
      atp_reservation_get(engine, (atp_str_t){hold, (uint32_t)strlen(hold)}, r) != 0) {
    if (!mapped[0]) return HOLD_NO_LOCATION;
    memcpy(location, mapped, sizeof mapped);
    return HOLD_LINE;
  }
  const atp_res_line_t *pick = NULL;
  for (uint32_t i = 0; i < r->line_count; i++) {
    const atp_res_line_t *l = &r->lines[i];
    if (l->sku.len != strlen(sku) || memcmp(l->sku.ptr, sku, l->sku.len) != 0) continue;
    bool there = mapped[0] && l->location.len == strlen(mapped) &&
                 memcmp(l->location.ptr, mapped, l->location.len) == 0;
    if (there) {
      pick = l;
      break;
    }
    if (!pick) pick = l;
  }
  if (!pick) return HOLD_NO_LINE;
  snprintf(location, ATP_ID_BYTES_MAX + 1, "%.*s", (int)pick->location.len,
           pick->location.ptr);
  return HOLD_LINE;
}

static int64_t qty_of(const atp_val_t *line) {
  const atp_val_t *q = atp_val_get(line, "quantity");
  return q && q->type == ATP_VAL_INT ? q->u.i : 0;
}

static void write_time_field(atp_writer_t *w, const atp_val_t *obj, const char *src,
                             const char *key) {
  const atp_val_t *v = atp_val_get(obj, src);
  if (!v || (v->type != ATP_VAL_STR && v->type != ATP_VAL_INT)) return;
  atp_w_key(w, key);
  atp_w_val(w, v);
}

/* The order's kind and hold, for its follow-ups. A failure (the table at its
 * bound, the journal refusing) fails the whole webhook with 503 before any
 * op runs: Shopify retries, where a follow-up that cannot find its order
 * later would dead-letter for good. */
static void remember_order(plan_t *p, uint64_t order_id, atp_shopify_order_kind_t kind,
                           atp_str_t hold) {
  int rc = atp_shopify_order_set(p->s, order_id, kind, hold);
  if (rc && !p->order_rc) p->order_rc = rc;
}

static bool str_eq(atp_str_t a, const char *b) {
  return a.len == strlen(b) && memcmp(a.ptr, b, a.len) == 0;
}

/* Whether hold may be acted on for Shopify order order_id. A note attribute
 * is the customer's to set (a storefront cart's attributes are), so naming a
 * hold proves nothing: a hold committed to an order is that order's alone
 * (its order_id), and a hold made with an order_ref (the cart or checkout
 * token the storefront held it for) is only the order's whose cart_token or
 * checkout_token that is. A hold with neither is taken at its word (README:
 * set order_ref). A hold atpd does not know is let through: its op is
 * refused not_found and becomes a dead letter. */
static bool hold_is_orders(plan_t *p, const char *hold, uint64_t order_id,
                           const atp_val_t *order, char *why, size_t why_cap) {
  atp_reservation_t *r = atp_req_reservation();
  atp_engine_t *engine = atp_app_engine(p->rq->app);
  if (!r || !engine ||
      atp_reservation_get(engine, (atp_str_t){hold, (uint32_t)strlen(hold)}, r) != 0)
    return true;
  char gid[64];
  snprintf(gid, sizeof gid, "gid://shopify/Order/%" PRIu64, order_id);
  if (r->order_id.len) {
    snprintf(why, why_cap, "it is committed to %.*s", (int)r->order_id.len,
             r->order_id.ptr);
    return str_eq(r->order_id, gid);
  }
  if (!r->order_ref.len) return true;
  char cart[ATP_ID_BYTES_MAX + 1], checkout[ATP_ID_BYTES_MAX + 1];
  str_of(order, "cart_token", cart, sizeof cart);
  str_of(order, "checkout_token", checkout, sizeof checkout);
  snprintf(why, why_cap,
           "it was made for order_ref %.*s, not this order's cart or checkout",
           (int)r->order_ref.len, r->order_ref.ptr);
  return (cart[0] && str_eq(r->order_ref, cart)) ||
         (checkout[0] && str_eq(r->order_ref, checkout));
}

static void foreign_hold(plan_t *p, const char *hold, uint64_t order_id,
                         const char *why) {
  dead_letter(p, ATP_ECONFLICT, ATP_FIELD_RESERVATIONS,
              "Shopify order %" PRIu64
              " names hold %s, but %s: nothing was changed. "
              "Check the order's %s attribute.",
              order_id, hold, why, atp_shopify_config(p->s)->reservation_attribute);
}

/* orders/create: commit the hold it names, or book a POS order's sales. */
static void plan_order_create(plan_t *p, uint64_t order_id) {
  const atp_val_t *o = p->body;
  char hold[ATP_ID_BYTES_MAX + 1], gid[256];
  gid_of(o, "Order", order_id, gid, sizeof gid);
  const atp_val_t *loc = atp_val_get(o, "location_id");
  if (order_hold(p, o, hold, sizeof hold)) {
    char why[256];
    if (!hold_is_orders(p, hold, order_id, o, why, sizeof why)) {
      /* Remembered as holding nothing: its follow-ups leave the hold alone. */
      remember_order(p, order_id, ATP_SHOPIFY_ORDER_UNTRACKED, (atp_str_t){"", 0});
      foreign_hold(p, hold, order_id, why);
      return;
    }
    remember_order(p, order_id, ATP_SHOPIFY_ORDER_HOLD,
                   (atp_str_t){hold, (uint32_t)strlen(hold)});
    effect_t *e = add_effect(p, EFFECT_OP, "commit");
    if (!e) return;
    copy_id(e->id, hold);
    atp_writer_t *w = op_begin(p, e);
    atp_w_key(w, "id");
    atp_w_cstr(w, hold);
    atp_w_key(w, "order_id");
    atp_w_cstr(w, gid);
    atp_w_object_end(w);
    return;
  }
  if (!loc || loc->type == ATP_VAL_NULL) {
    /* Online without a hold: atpd holds nothing for it. */
    remember_order(p, order_id, ATP_SHOPIFY_ORDER_UNTRACKED, (atp_str_t){"", 0});
    return;
  }
  remember_order(p, order_id, ATP_SHOPIFY_ORDER_POS, (atp_str_t){"", 0});
  uint64_t shop_loc = val_id(loc, "Location");
  const atp_val_t *lines = atp_val_get(o, "line_items");
  for (uint32_t i = 0; lines && lines->type == ATP_VAL_ARRAY && i < lines->len; i++) {
    const atp_val_t *line = &lines->u.items[i];
    uint64_t line_id = val_id(atp_val_get(line, "id"), "LineItem");
    int64_t qty = qty_of(line);
    char sku[ATP_ID_BYTES_MAX + 1], location[ATP_ID_BYTES_MAX + 1], what[64];
    snprintf(what, sizeof what, "line %" PRIu64, line_id);
    if (qty <= 0 || custom_line(line) ||
        !map_line(p, line, shop_loc, sku, location, what))
      continue;
    effect_t *e = add_effect(p, EFFECT_OP, "adjust");
    if (!e) return;
    snprintf(e->id, sizeof e->id, "shopify:order:%" PRIu64 ":line:%" PRIu64, order_id,
             line_id);
    copy_id(e->sku, sku);
    copy_id(e->location, location);
    e->delta = -qty;
    atp_writer_t *w = op_begin(p, e);
    atp_w_key(w, "id");
    atp_w_cstr(w, e->id);
    atp_w_key(w, "sku");
    atp_w_cstr(w, sku);
    atp_w_key(w, "location");
    atp_w_cstr(w, location);
    atp_w_key(w, "delta");
    atp_w_int(w, -qty);
    atp_w_key(w, "reason");
    atp_w_cstr(w, "sale");
    write_time_field(w, o, "processed_at", "occurred_at");
    atp_w_key(w, "ref");
    atp_w_cstr(w, gid);
    atp_w_object_end(w);
  }
}

/* The hold an order's follow-up acts on: the one orders/create recorded, or
 * (a follow-up that overtook its order) the one the order's note attributes
 * name, and only when it is this order's (hold_is_orders; else a dead
 * letter). false with *kind set when atpd holds nothing for it; false with
 * kind 0 when the order is unknown. */
static bool hold_of_order(plan_t *p, uint64_t order_id, const atp_val_t *order,
                          char *hold, atp_shopify_order_kind_t *kind) {
  *kind = 0;
  bool known = atp_shopify_order_get(p->s, order_id, kind, hold, ATP_ID_BYTES_MAX + 1);
  if (known) {
    if (*kind != ATP_SHOPIFY_ORDER_HOLD) return false;
  } else if (order && order_hold(p, order, hold, ATP_ID_BYTES_MAX + 1)) {
    *kind = ATP_SHOPIFY_ORDER_HOLD;
  } else {
    return false;
  }
  char why[256];
  if (!hold_is_orders(p, hold, order_id, order, why, sizeof why)) {
    foreign_hold(p, hold, order_id, why);
    return false;
  }
  /* A follow-up that overtook its order: remembered, so the order's later
   * refunds find the hold too. */
  if (!known)
    remember_order(p, order_id, ATP_SHOPIFY_ORDER_HOLD,
                   (atp_str_t){hold, (uint32_t)strlen(hold)});
  return true;
}

static void plan_order_cancelled(plan_t *p, uint64_t order_id) {
  char hold[ATP_ID_BYTES_MAX + 1], reason[64];
  atp_shopify_order_kind_t kind;
  if (!hold_of_order(p, order_id, p->body, hold, &kind)) return; /* nothing held */
  effect_t *e = add_effect(p, EFFECT_OP, "release");
  if (!e) return;
  copy_id(e->id, hold);
  atp_writer_t *w = op_begin(p, e);
  atp_w_key(w, "id");
  atp_w_cstr(w, hold);
  char release_id[ATP_ID_BYTES_MAX + 1];
  snprintf(release_id, sizeof release_id, "shopify:order:%" PRIu64 ":cancel", order_id);
  atp_w_key(w, "release_id");
  atp_w_cstr(w, release_id);
  str_of(p->body, "cancel_reason", reason, sizeof reason);
  atp_w_key(w, "reason");
  atp_w_cstr(w, reason[0] ? reason : "other");
  atp_w_object_end(w);
}

static void unknown_order(plan_t *p, uint64_t order_id, const char *what) {
  dead_letter(p, ATP_ENOTFOUND, ATP_FIELD_RESERVATIONS,
              "%s for Shopify order %" PRIu64
              ", which atpd has not seen (no orders/create yet): replay once it has.",
              what, order_id);
}

static void plan_fulfillment(plan_t *p, uint64_t fulfillment_id) {
  const atp_val_t *f = p->body;
  uint64_t order_id = val_id(atp_val_get(f, "order_id"), "Order");
  char hold[ATP_ID_BYTES_MAX + 1], gid[256];
  atp_shopify_order_kind_t kind;
  if (!hold_of_order(p, order_id, NULL, hold, &kind)) {
    if (!kind) unknown_order(p, order_id, "A fulfilment");
    return; /* POS sales are booked already; untracked orders hold nothing */
  }
  gid_of(f, "Fulfillment", fulfillment_id, gid, sizeof gid);
  uint64_t shop_loc = val_id(atp_val_get(f, "location_id"), "Location");
  const atp_val_t *lines = atp_val_get(f, "line_items");
  uint32_t n = lines && lines->type == ATP_VAL_ARRAY ? lines->len : 0;
  if (n > ATP_RESERVATION_LINES_MAX) n = ATP_RESERVATION_LINES_MAX;
  char skus[ATP_RESERVATION_LINES_MAX][ATP_ID_BYTES_MAX + 1];
  char locs[ATP_RESERVATION_LINES_MAX][ATP_ID_BYTES_MAX + 1];
  const atp_val_t *kept[ATP_RESERVATION_LINES_MAX];
  uint32_t m = 0;
  for (uint32_t i = 0; i < n; i++) {
    char what[64];
    snprintf(what, sizeof what, "fulfilment %" PRIu64, fulfillment_id);
    if (custom_line(&lines->u.items[i])) continue;
    /* All lines or none: a partial fulfil under the same id could not take
     * the rest later. */
    if (!map_sku(p, &lines->u.items[i], skus[m], what)) return;
    hold_line_t at = hold_location(p, hold, skus[m], shop_loc, locs[m]);
    if (at == HOLD_NO_LINE) continue; /* shipped, but never held: not atpd's */
    if (at == HOLD_NO_LOCATION) {
      unmapped_location(p, shop_loc, what);
      return;
    }
    kept[m++] = &lines->u.items[i];
  }
  if (n && !m) return; /* only custom or unheld lines: nothing of atpd's shipped */
  n = m;
  effect_t *e = add_effect(p, EFFECT_OP, "fulfil");
  if (!e) return;
  copy_id(e->id, hold);
  atp_writer_t *w = op_begin(p, e);
  atp_w_key(w, "id");
  atp_w_cstr(w, hold);
  atp_w_key(w, "fulfillment_id");
  atp_w_cstr(w, gid);
  if (n) {
    atp_w_key(w, "lines");
    atp_w_array_begin(w);
    for (uint32_t i = 0; i < n; i++) {
      atp_w_object_begin(w);
      atp_w_key(w, "sku");
      atp_w_cstr(w, skus[i]);
      atp_w_key(w, "location");
      atp_w_cstr(w, locs[i]);
      atp_w_key(w, "qty");
      atp_w_int(w, qty_of(kept[i]));
      atp_w_object_end(w);
    }
    atp_w_array_end(w);
  }
  atp_w_object_end(w);
}

static void plan_refund(plan_t *p, uint64_t refund_id) {
  const atp_val_t *r = p->body;
  uint64_t order_id = val_id(atp_val_get(r, "order_id"), "Order");
  char gid[256];
  gid_of(r, "Refund", refund_id, gid, sizeof gid);
  const atp_val_t *lines = atp_val_get(r, "refund_line_items");
  for (uint32_t i = 0; lines && lines->type == ATP_VAL_ARRAY && i < lines->len; i++) {
    const atp_val_t *rl = &lines->u.items[i];
    char type[32], sku[ATP_ID_BYTES_MAX + 1], location[ATP_ID_BYTES_MAX + 1], what[64];
    str_of(rl, "restock_type", type, sizeof type);
    bool restock = !strcmp(type, "return") || !strcmp(type, "legacy_restock");
    bool cancel = !strcmp(type, "cancel");
    if (!restock && !cancel) continue; /* no_restock: nothing comes back */
    uint64_t rl_id = val_id(atp_val_get(rl, "id"), "RefundLineItem");
    int64_t qty = qty_of(rl);
    if (qty <= 0) continue;
    uint64_t shop_loc = val_id(atp_val_get(rl, "location_id"), "Location");
    const atp_val_t *li = atp_val_get(rl, "line_item");
    snprintf(what, sizeof what, "refund line %" PRIu64, rl_id);
    char hold[ATP_ID_BYTES_MAX + 1];
    atp_shopify_order_kind_t kind = 0;
    if (custom_line(li ? li : rl)) continue;
    if (cancel && !hold_of_order(p, order_id, NULL, hold, &kind)) {
      if (!kind) {
        unknown_order(p, order_id, "A cancelling refund");
        continue;
      }
      /* An untracked order holds nothing; another order's hold made a dead
       * letter. A POS order's sale was booked at once, so its cancelled
       * line comes back on hand like a return. */
      if (kind != ATP_SHOPIFY_ORDER_POS) continue;
      cancel = false;
    }
    if (cancel ? !map_sku(p, li ? li : rl, sku, what)
               : !map_line(p, li ? li : rl, shop_loc, sku, location, what))
      continue;
    hold_line_t at =
        cancel ? hold_location(p, hold, sku, shop_loc, location) : HOLD_LINE;
    if (at == HOLD_NO_LINE) continue; /* never held: nothing to release */
    if (at == HOLD_NO_LOCATION) {
      unmapped_location(p, shop_loc, what);
      continue;
    }
    effect_t *e = add_effect(p, EFFECT_OP, cancel ? "release" : "adjust");
    if (!e) return;
    char key[ATP_ID_BYTES_MAX + 1];
    snprintf(key, sizeof key, "shopify:refund_line:%" PRIu64, rl_id);
    copy_id(e->sku, sku);
    copy_id(e->location, location);
    atp_writer_t *w = op_begin(p, e);
    if (cancel) {
      copy_id(e->id, hold);
      atp_w_key(w, "id");
      atp_w_cstr(w, hold);
      atp_w_key(w, "release_id");
      atp_w_cstr(w, key);
      atp_w_key(w, "reason");
      atp_w_cstr(w, "refund");
      atp_w_key(w, "lines");
      atp_w_array_begin(w);
      atp_w_object_begin(w);
      atp_w_key(w, "sku");
      atp_w_cstr(w, sku);
      atp_w_key(w, "location");
      atp_w_cstr(w, location);
      atp_w_key(w, "qty");
      atp_w_int(w, qty);
      atp_w_object_end(w);
      atp_w_array_end(w);
    } else {
      copy_id(e->id, key);
      e->delta = qty;
      atp_w_key(w, "id");
      atp_w_cstr(w, key);
      atp_w_key(w, "sku");
      atp_w_cstr(w, sku);
      atp_w_key(w, "location");
      atp_w_cstr(w, location);
      atp_w_key(w, "delta");
      atp_w_int(w, qty);
      atp_w_key(w, "reason");
      atp_w_cstr(w, "return_restock");
      write_time_field(w, r, "processed_at", "occurred_at");
      atp_w_key(w, "ref");
      atp_w_cstr(w, gid);
    }
    atp_w_object_end(w);
  }
}

/* inventory_levels/update: an echo of atpd's own push is ignored; anything
 * else is a disagreement for the owner of on_hand to reconcile. */
static void plan_level(plan_t *p, uint64_t item, uint64_t shop_loc) {
  const atp_val_t *avail = atp_val_get(p->body, "available");
  char sku[ATP_ID_BYTES_MAX + 1], location[ATP_ID_BYTES_MAX + 1];
  if (!atp_shopify_sku_of_item(p->s, item, sku, sizeof sku)) {
    dead_letter(p, ATP_ENOTFOUND, ATP_FIELD_SHOPIFY_MAPPINGS,
                "Shopify inventory item %" PRIu64
                " is not mapped to a SKU: map it (PUT /v1/shopify/mappings).",
                item);
    return;
  }
  if (!atp_shopify_location_of_shopify(p->s, shop_loc, location, sizeof location)) {
    dead_letter(p, ATP_ENOTFOUND, ATP_FIELD_SHOPIFY_MAPPINGS,
                "Shopify location %" PRIu64
                " is not mapped to a location: map it (PUT /v1/shopify/mappings).",
                shop_loc);
    return;
  }
  if (!avail || avail->type != ATP_VAL_INT) return; /* no figure: nothing to compare */
  int64_t pushed = 0;
  bool known = atp_shopify_level_get(p->s, item, shop_loc, &pushed);
  if (known && pushed == avail->u.i) return; /* atpd's own push echoed */
  char last[64];
  if (known)
    snprintf(last, sizeof last, "atpd last pushed %" PRId64, pushed);
  else
    snprintf(last, sizeof last, "atpd has pushed nothing there yet");
  dead_letter(p, ATP_ECONFLICT, ATP_FIELD_COUNTS,
              "Shopify reports available %" PRId64 " for %s at %s; %s. Reconcile it.",
              avail->u.i, sku, location, last);
}

/* The resource a delivery is about and its time (updated_at, else the
 * processed or created time, else X-Shopify-Triggered-At; 0: none). */
static int64_t resource_of(plan_t *p, uint64_t *id, uint64_t *loc, char *resource,
                           size_t cap) {
  const atp_val_t *b = p->body;
  *loc = 0;
  switch (p->topic) {
    case ATP_SHOPIFY_ORDERS_CREATE:
    case ATP_SHOPIFY_ORDERS_CANCELLED:
      *id = val_id(atp_val_get(b, "id"), "Order");
      snprintf(resource, cap, "order:%" PRIu64, *id);
      break;
    case ATP_SHOPIFY_FULFILLMENTS_CREATE:
      *id = val_id(atp_val_get(b, "id"), "Fulfillment");
      snprintf(resource, cap, "fulfillment:%" PRIu64, *id);
      break;
    case ATP_SHOPIFY_REFUNDS_CREATE:
      *id = val_id(atp_val_get(b, "id"), "Refund");
      snprintf(resource, cap, "refund:%" PRIu64, *id);
      break;
    case ATP_SHOPIFY_INVENTORY_LEVELS_UPDATE:
      *id = val_id(atp_val_get(b, "inventory_item_id"), "InventoryItem");
      *loc = val_id(atp_val_get(b, "location_id"), "Location");
      snprintf(resource, cap, "level:%" PRIu64 ":%" PRIu64, *id, *loc);
      break;
    default:
      *id = 0;
      resource[0] = '\0';
      return 0;
  }
  static const char *const keys[] = {"updated_at", "processed_at", "created_at"};
  for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
    const atp_val_t *v = atp_val_get(b, keys[k]);
    int64_t ms = 0;
    if (v && v->type == ATP_VAL_STR && atp_time_parse_rfc3339(v->u.s, v->len, &ms) == 0)
      return ms;
  }
  const atp_http_request_t *h = p->rq->http;
  int64_t ms = 0;
  if (h->shopify[ATP_HTTP_SHOPIFY_TRIGGERED_AT] &&
      atp_time_parse_rfc3339(h->shopify[ATP_HTTP_SHOPIFY_TRIGGERED_AT],
                             h->shopify_len[ATP_HTTP_SHOPIFY_TRIGGERED_AT], &ms) == 0)
    return ms;
  return 0;
}

/* --- webhooks: running the plan and answering ---------------------------------- */

static bool transient(int rc) {
  return rc == ATP_EFULL || rc == ATP_ENOMEM || rc == ATP_EUNAVAILABLE ||
         rc == ATP_ETOOMANY || rc == ATP_EINTERNAL;
}

/* The stored form of a dead letter made here: the webhook as a batch op, so
 * the owner sees what Shopify sent. */
static void dead_letter_payload(plan_t *p, atp_buf_t *out) {
  atp_writer_t w;
  atp_writer_init(&w, ATP_FORMAT_JSON, out);
  atp_w_object_begin(&w);
  atp_w_key(&w, "op");
  atp_w_cstr(&w, "shopify_webhook");
  atp_w_key(&w, "flow");
  atp_w_str(&w, flow_name.ptr, flow_name.len);
  atp_w_key(&w, "topic");
  atp_w_str(&w, p->topic_name.ptr, p->topic_name.len);
  atp_w_key(&w, "webhook_id");
  atp_w_str(&w, p->webhook_id.ptr, p->webhook_id.len);
  atp_w_key(&w, "payload");
  if (p->body)
    atp_w_val(&w, p->body);
  else
    atp_w_null(&w);
  atp_w_object_end(&w);
}

static void keep_dead_letter(plan_t *p, uint32_t index, const effect_t *e,
                             atp_buf_t *payload) {
  atp_app_t *app = p->rq->app;
  atp_rejection_t r = {
      .flow = flow_name,
      .owner = atp_ownership_owner(app->ownership, e->owner_field, flow_name),
      .index = index,
      .err = e->err,
      .status = atp_error_http_status(e->err),
      .code = atp_strerror_code(e->err),
      .message = e->message,
      .field = "",
      .format = ATP_FORMAT_JSON,
      .payload = payload->data,
      .payload_len = payload->len,
      .value = NULL,
  };
  atp_flows_reject(app->flows, &r);
}

static void write_effect(atp_writer_t *w, atp_app_t *app, const effect_t *e,
                         const atp_batch_op_result_t *r) {
  atp_w_object_begin(w);
  atp_w_key(w, "op");
  atp_w_cstr(w, e->op);
  if (e->id[0]) {
    atp_w_key(w, "id");
    atp_w_cstr(w, e->id);
  }
  if (e->sku[0]) {
    atp_w_key(w, "sku");
    atp_w_cstr(w, e->sku);
    atp_w_key(w, "location");
    atp_w_cstr(w, e->location);
  }
  if (e->delta) {
    atp_w_key(w, "delta");
    atp_w_int(w, e->delta);
  }
  int err = e->kind == EFFECT_DEAD_LETTER ? e->err : r->rc;
  const char *outcome = e->kind == EFFECT_DEAD_LETTER ? "dead_letter"
                        : r->rc                       ? "rejected"
                        : r->queued                   ? "queued"
                        : r->replayed                 ? "replayed"
                                                      : "applied";
  atp_w_key(w, "outcome");
  atp_w_cstr(w, outcome);
  if (e->kind == EFFECT_OP) {
    atp_w_key(w, "status");
    atp_w_int(w, r->status);
  }
  if (err) {
    atp_w_key(w, "owner");
    atp_field_kind_t f = e->kind == EFFECT_DEAD_LETTER ? e->owner_field
                         : !strcmp(e->op, "adjust")    ? ATP_FIELD_ADJUSTMENTS
                                                       : ATP_FIELD_RESERVATIONS;
    atp_str_t owner = atp_ownership_owner(app->ownership, f, flow_name);
    atp_w_str(w, owner.ptr, owner.len);
    atp_w_key(w, "error");
    atp_w_object_begin(w);
    atp_w_key(w, "code");
    atp_w_cstr(w, atp_strerror_code(err));
    atp_w_key(w, "message");
    atp_w_cstr(w, e->kind == EFFECT_DEAD_LETTER ? e->message : r->message);
    atp_w_object_end(w);
  }
  atp_w_object_end(w);
}

static int answer(atp_req_t *rq, atp_shopify_outcome_t outcome, const plan_t *p,
                  const atp_batch_op_result_t *results) {
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  atp_w_key(w, "outcome");
  atp_w_cstr(w, atp_shopify_outcome_name(outcome));
  atp_w_key(w, "effects");
  atp_w_array_begin(w);
  for (uint32_t i = 0; p && i < p->count; i++) {
    const effect_t *e = &p->effects[i];
    write_effect(w, rq->app, e, e->kind == EFFECT_OP ? &results[e->op_index] : NULL);
  }
  atp_w_array_end(w);
  atp_w_object_end(w);
  return 0;
}

/* Runs the plan's ops and dead letters; *outcome from what they gave, or a
 * transient error (nothing recorded: Shopify retries). */
static int run_plan(plan_t *p, atp_batch_op_result_t *results,
                    atp_shopify_outcome_t *outcome) {
  atp_req_t *rq = p->rq;
  atp_w_array_end(&p->w);
  if (p->buf.failed) return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  if (p->full) {
    /* The slot after the last is kept for this one. */
    effect_t *e = &p->effects[p->count++];
    memset(e, 0, sizeof *e);
    e->kind = EFFECT_DEAD_LETTER;
    e->op = "dead_letter";
    e->err = ATP_EBADREQ;
    e->owner_field = ATP_FIELD_NONE;
    snprintf(e->message, sizeof e->message,
             "The webhook needs more than %u ops; the first %u were applied, the rest "
             "were not.",
             (unsigned)ATP_SHOPIFY_WEBHOOK_OPS_MAX,
             (unsigned)ATP_SHOPIFY_WEBHOOK_OPS_MAX);
  }
  uint32_t ran = 0;
  if (p->ops) {
    int rc = atp_batch_run_ops(rq, p->buf.data, p->buf.len, results,
                               ATP_SHOPIFY_WEBHOOK_OPS_MAX, !p->replaying, &ran);
    if (rc) return rc;
    ATP_ASSERT(ran == p->ops);
  }
  bool rejected = false, queued = false, applied = false;
  for (uint32_t i = 0; i < ran; i++) {
    if (transient(results[i].rc)) {
      snprintf(rq->message, sizeof rq->message, "%s", results[i].message);
      return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL,
                          "The webhook could not be applied now (%s); retry.",
                          results[i].message);
    }
    rejected |= results[i].rc != 0;
    queued |= results[i].queued;
    applied |= results[i].rc == 0 && !results[i].queued && !results[i].replayed;
  }
  atp_buf_t payload;
  atp_buf_init(&payload, ATP_HTTP_BODY_BYTES_MAX + 4096);
  for (uint32_t i = 0; i < p->count; i++) {
    if (p->effects[i].kind != EFFECT_DEAD_LETTER) continue;
    rejected = true;
    if (p->replaying) continue;
    if (!payload.len) dead_letter_payload(p, &payload);
    keep_dead_letter(p, i, &p->effects[i], &payload);
  }
  atp_buf_free(&payload);
  *outcome = rejected  ? ATP_SHOPIFY_DEAD_LETTER
             : queued  ? ATP_SHOPIFY_QUEUED
             : applied ? ATP_SHOPIFY_APPLIED
             : ran     ? ATP_SHOPIFY_REPLAYED
                       : ATP_SHOPIFY_IGNORED;
  return 0;
}

static atp_str_t header(const atp_http_request_t *h, int k) {
  return h->shopify[k] ? (atp_str_t){h->shopify[k], (uint32_t)h->shopify_len[k]}
                       : (atp_str_t){"", 0};
}

static int unauthorized(atp_req_t *rq, atp_shopify_topic_t topic, const char *why) {
  atp_shopify_webhook_count(rq->app->shopify, topic, ATP_SHOPIFY_UNAUTHORIZED);
  return atp_req_fail(rq, ATP_EUNAUTH, NULL, NULL, "%s", why);
}

/* Signature, shop and the headers every delivery has. */
static int authenticate(atp_req_t *rq, atp_shopify_topic_t topic) {
  const atp_http_request_t *h = rq->http;
  const atp_shopify_config_t *c = atp_shopify_config(rq->app->shopify);
  atp_str_t sig = header(h, ATP_HTTP_SHOPIFY_HMAC);
  if (!sig.len) return unauthorized(rq, topic, "X-Shopify-Hmac-Sha256 is required.");
  if (!atp_shopify_hmac_valid(c, h->body, h->body_len, sig.ptr, sig.len))
    return unauthorized(rq, topic,
                        "X-Shopify-Hmac-Sha256 does not match the body under any "
                        "configured webhook secret.");
  atp_str_t shop = header(h, ATP_HTTP_SHOPIFY_SHOP);
  if (shop.len != strlen(c->shop) || strncasecmp(shop.ptr, c->shop, shop.len) != 0)
    return unauthorized(rq, topic,
                        "X-Shopify-Shop-Domain names another shop than the configured "
                        "one.");
  atp_str_t id = header(h, ATP_HTTP_SHOPIFY_WEBHOOK_ID);
  if (!id.len || atp_id_check(id.ptr, id.len) != 0)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, "X-Shopify-Webhook-Id",
                        "X-Shopify-Webhook-Id must be 1..128 printable bytes.");
  if (!header(h, ATP_HTTP_SHOPIFY_TOPIC).len)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, "X-Shopify-Topic",
                        "X-Shopify-Topic is required.");
  return 0;
}

/* The topic header is not signed, only the body is: a signed orders/create
 * body resent as orders/cancelled must not release the order's hold. So the
 * body has to have its topic's shape: the member each topic alone carries. */
static bool body_fits_topic(const plan_t *p) {
  const atp_val_t *b = p->body;
  const atp_val_t *v;
  switch (p->topic) {
    case ATP_SHOPIFY_ORDERS_CREATE:
      return (v = atp_val_get(b, "line_items")) && v->type == ATP_VAL_ARRAY &&
             !atp_val_get(b, "order_id");
    case ATP_SHOPIFY_ORDERS_CANCELLED:
      return (v = atp_val_get(b, "cancelled_at")) && v->type == ATP_VAL_STR && v->len;
    case ATP_SHOPIFY_FULFILLMENTS_CREATE:
      return atp_val_get(b, "order_id") && (v = atp_val_get(b, "line_items")) &&
             v->type == ATP_VAL_ARRAY;
    case ATP_SHOPIFY_REFUNDS_CREATE:
      return atp_val_get(b, "order_id") && (v = atp_val_get(b, "refund_line_items")) &&
             v->type == ATP_VAL_ARRAY;
    case ATP_SHOPIFY_INVENTORY_LEVELS_UPDATE:
      return atp_val_get(b, "inventory_item_id") && atp_val_get(b, "available");
    default:
      return true;
  }
}

static void plan_topic(plan_t *p, uint64_t id, uint64_t loc) {
  if (!body_fits_topic(p)) {
    dead_letter(p, ATP_EBADREQ, ATP_FIELD_NONE,
                "The body is not a %.*s payload (the member only that topic carries is "
                "missing): nothing was applied.",
                (int)p->topic_name.len, p->topic_name.ptr);
    return;
  }
  switch (p->topic) {
    case ATP_SHOPIFY_ORDERS_CREATE:
      plan_order_create(p, id);
      return;
    case ATP_SHOPIFY_ORDERS_CANCELLED:
      plan_order_cancelled(p, id);
      return;
    case ATP_SHOPIFY_FULFILLMENTS_CREATE:
      plan_fulfillment(p, id);
      return;
    case ATP_SHOPIFY_REFUNDS_CREATE:
      plan_refund(p, id);
      return;
    case ATP_SHOPIFY_INVENTORY_LEVELS_UPDATE:
      plan_level(p, id, loc);
      return;
    default:
      return; /* a topic atpd does not act on */
  }
}

/* A delivery's plan and its effects' and results' room, in the request's
 * arena; NULL when out of memory. */
static plan_t *new_plan(atp_req_t *rq, atp_shopify_t *s, atp_str_t topic_name,
                        atp_str_t webhook_id, atp_batch_op_result_t **results) {
  plan_t *p = atp_arena_alloc(rq->arena, sizeof *p);
  effect_t *effects =
      atp_arena_alloc(rq->arena, (ATP_SHOPIFY_WEBHOOK_OPS_MAX + 1) * sizeof *effects);
  *results = atp_arena_alloc(rq->arena, ATP_SHOPIFY_WEBHOOK_OPS_MAX * sizeof **results);
  if (!p || !effects || !*results) return NULL;
  memset(p, 0, sizeof *p);
  p->rq = rq;
  p->s = s;
  p->topic = atp_shopify_topic_of(topic_name);
  p->topic_name = topic_name;
  p->webhook_id = webhook_id;
  p->effects = effects;
  return p;
}

/* Records the delivery (dedupe and watermark), counts it and answers. */
static int finish(plan_t *p, atp_str_t resource, int64_t at_ms, uint8_t content_key[32],
                  atp_shopify_outcome_t outcome, const atp_batch_op_result_t *results) {
  atp_req_t *rq = p->rq;
  int rc = atp_shopify_webhook_record(p->s, p->webhook_id, content_key, outcome);
  /* Ignored deliveries move the watermark too (it never goes down): an echo
   * of atpd's newest push makes the echoes of its earlier pushes, arriving
   * after it, older, instead of disagreements. */
  if (rc == 0 && resource.len && at_ms)
    rc = atp_shopify_mark_advance(p->s, resource, at_ms);
  if (rc != 0) {
    atp_http_add_header(rq->res, "Retry-After: 60");
    return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL, "%s",
                        rc == ATP_EFULL
                            ? "The Shopify webhook dedupe table is full "
                              "(ATP_SHOPIFY_WEBHOOKS_MAX within 72 h); retry later."
                            : "The webhook could not be recorded; retry.");
  }
  atp_shopify_webhook_count(p->s, p->topic, outcome);
  return answer(rq, outcome, p, results);
}

int atp_route_shopify_webhook(atp_req_t *rq) {
  atp_shopify_t *s = rq->app->shopify;
  if (!s) return connector_off(rq);
  const atp_http_request_t *h = rq->http;
  atp_str_t topic_name = header(h, ATP_HTTP_SHOPIFY_TOPIC);
  atp_shopify_topic_t topic = atp_shopify_topic_of(topic_name);
  int rc = authenticate(rq, topic);
  if (rc) return rc;
  atp_batch_op_result_t *results;
  plan_t *p =
      new_plan(rq, s, topic_name, header(h, ATP_HTTP_SHOPIFY_WEBHOOK_ID), &results);
  if (!p) return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  /* The change feed names the delivery behind each change (section 10's
   * request_id) unless the sender named a request of its own. */
  if (!rq->change_ctx.request_id.len) rq->change_ctx.request_id = p->webhook_id;
  uint8_t key[32];
  atp_shopify_content_key(topic_name, h->body, h->body_len, key);
  atp_shopify_outcome_t first;
  if (atp_shopify_webhook_seen(s, p->webhook_id, key, &first)) {
    atp_shopify_webhook_count(s, topic, ATP_SHOPIFY_REPLAYED);
    return answer(rq, ATP_SHOPIFY_REPLAYED, p, results);
  }
  atp_val_t *body = NULL;
  atp_parse_error_t perr;
  memset(&perr, 0, sizeof perr);
  atp_buf_init(&p->buf, ATP_HTTP_BODY_BYTES_MAX);
  atp_writer_init(&p->w, ATP_FORMAT_JSON, &p->buf);
  atp_w_array_begin(&p->w);
  char resource[96] = "";
  int64_t at_ms = 0;
  uint64_t id = 0, loc = 0;
  if (atp_codec_parse(ATP_FORMAT_JSON, h->body, h->body_len, rq->arena, &body, &perr) !=
          0 ||
      body->type != ATP_VAL_OBJECT) {
    dead_letter(p, ATP_EBADREQ, ATP_FIELD_NONE,
                "The webhook's body is not a JSON object (%s at byte %zu).",
                perr.message[0] ? perr.message : "not an object", perr.offset);
  } else {
    p->body = body;
    at_ms = resource_of(p, &id, &loc, resource, sizeof resource);
    int64_t mark = 0;
    atp_str_t res = {resource, (uint32_t)strlen(resource)};
    if (res.len && at_ms && atp_shopify_mark_older(s, res, at_ms, &mark)) {
      /* Older than what was applied for the same resource: recorded, not
       * applied (a day-late orders/create after its orders/cancelled). */
      atp_buf_free(&p->buf);
      return finish(p, (atp_str_t){"", 0}, 0, key, ATP_SHOPIFY_IGNORED, results);
    }
    if (topic != ATP_SHOPIFY_TOPIC_OTHER && !id)
      dead_letter(p, ATP_EBADREQ, ATP_FIELD_NONE,
                  "The %.*s webhook carries no usable id.", (int)topic_name.len,
                  topic_name.ptr);
    else
      plan_topic(p, id, loc);
  }
  if (p->order_rc) {
    atp_buf_free(&p->buf);
    atp_http_add_header(rq->res, "Retry-After: 60");
    return atp_req_fail(rq, ATP_EUNAVAILABLE, NULL, NULL, "%s",
                        p->order_rc == ATP_EFULL
                            ? "The Shopify order table is full (ATP_SHOPIFY_ORDERS_MAX "
                              "within 30 days); retry later."
                            : "The order could not be remembered; retry.");
  }
  atp_shopify_outcome_t outcome = ATP_SHOPIFY_IGNORED;
  rc = run_plan(p, results, &outcome);
  atp_buf_free(&p->buf);
  if (rc) return rc;
  return finish(p, (atp_str_t){resource, (uint32_t)strlen(resource)}, at_ms, key,
                outcome, results);
}

/* The push's counters, one list for GET /v1/shopify/status's `push` and
 * for /metrics, in that order. */
typedef struct {
  const char *name, *help;
  uint64_t v;
} push_counter_t;
#define PUSH_COUNTERS 6
static void push_counters(const atp_shopify_push_stats_t *st,
                          push_counter_t out[PUSH_COUNTERS]) {
  push_counter_t c[PUSH_COUNTERS] = {
      {"throttled", "THROTTLED answers (HTTP 200 or 429).", st->throttled},
      {"stale_retries", "CHANGE_FROM_QUANTITY_STALE answers read again.",
       st->stale_retries},
      {"calls", "GraphQL calls sent.", st->calls},
      {"positions_pushed", "Quantities Shopify accepted.", st->positions_pushed},
      {"points_spent", "Cost points Shopify charged.", st->points_spent},
      {"errors", "Transport errors, 5xx and other failed calls.", st->errors},
  };
  memcpy(out, c, sizeof c);
}

/* The push's figures for /metrics (the same as GET /v1/shopify/status's
 * `push`); nothing when the push is off. */
static void write_push_metrics(atp_app_t *app, atp_buf_t *out) {
  if (!app->shopify_push_stats) return;
  atp_shopify_push_stats_t st;
  memset(&st, 0, sizeof st);
  app->shopify_push_stats(app->shopify_push_ctx, &st);
  atp_buf_printf(
      out,
      "# HELP atpd_shopify_push_pending Mapped positions whose newest value "
      "is not in Shopify yet.\n"
      "# TYPE atpd_shopify_push_pending gauge\n"
      "atpd_shopify_push_pending %" PRIu64
      "\n"
      "# HELP atpd_shopify_push_lag_ms Age of the oldest change not pushed.\n"
      "# TYPE atpd_shopify_push_lag_ms gauge\n"
      "atpd_shopify_push_lag_ms %" PRId64
      "\n"
      "# HELP atpd_shopify_push_cursor The push's durable feed cursor.\n"
      "# TYPE atpd_shopify_push_cursor gauge\n"
      "atpd_shopify_push_cursor %" PRIu64
      "\n"
      "# HELP atpd_shopify_push_points_available Shopify's cost bucket, as "
      "last reported.\n"
      "# TYPE atpd_shopify_push_points_available gauge\n"
      "atpd_shopify_push_points_available %.1f\n"
      "# HELP atpd_shopify_push_restore_rate Shopify's restore rate, points/s.\n"
      "# TYPE atpd_shopify_push_restore_rate gauge\n"
      "atpd_shopify_push_restore_rate %.1f\n",
      st.pending, st.lag_ms, st.cursor, st.points_available, st.restore_rate);
  push_counter_t counters[PUSH_COUNTERS];
  push_counters(&st, counters);
  for (size_t i = 0; i < PUSH_COUNTERS; i++)
    atp_buf_printf(out,
                   "# HELP atpd_shopify_push_%s_total %s\n"
                   "# TYPE atpd_shopify_push_%s_total counter\n"
                   "atpd_shopify_push_%s_total %" PRIu64 "\n",
                   counters[i].name, counters[i].help, counters[i].name,
                   counters[i].name, counters[i].v);
}

/* The batch op shopify_webhook: a delivery kept as a dead letter, run again
 * (POST /v1/dead-letters/{id}/replay, once its mapping or order is there).
 * Its effects are planned as for a fresh delivery, without the signature,
 * the dedupe or the watermark (the dead letter is what was recorded); their
 * ops' ids make the parts that applied the first time replays. The op fails
 * with the first effect that still cannot apply. It may only be sent as the
 * flow shopify. */
int atp_op_shopify_webhook(atp_req_t *rq, const atp_val_t *body, atp_str_t flow,
                           atp_str_t target, atp_op_out_t *out) {
  (void)target;
  atp_shopify_t *s = rq->app->shopify;
  if (!s) return connector_off(rq);
  if (flow.len != flow_name.len || memcmp(flow.ptr, flow_name.ptr, flow.len) != 0)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, "flow",
                        "shopify_webhook ops belong to the flow shopify.");
  atp_str_t topic_name, webhook_id = {"", 0};
  int rc = atp_get_text(rq, body, NULL, "topic", ATP_REQUIRED, 64, &topic_name);
  if (rc == 0)
    rc = atp_get_text(rq, body, NULL, "webhook_id", ATP_OPTIONAL, ATP_ID_BYTES_MAX,
                      &webhook_id);
  if (rc) return rc;
  const atp_val_t *payload = atp_val_get(body, "payload");
  if (!payload || payload->type != ATP_VAL_OBJECT)
    return atp_req_fail(rq, ATP_EBADREQ, NULL, "payload",
                        "The webhook's payload must be an object.");
  atp_batch_op_result_t *results;
  plan_t *p = new_plan(rq, s, topic_name, webhook_id, &results);
  if (!p) return atp_req_fail(rq, ATP_ENOMEM, NULL, NULL, "Out of memory.");
  p->body = payload;
  atp_buf_init(&p->buf, ATP_HTTP_BODY_BYTES_MAX);
  atp_writer_init(&p->w, ATP_FORMAT_JSON, &p->buf);
  atp_w_array_begin(&p->w);
  char resource[96];
  uint64_t id = 0, loc = 0;
  (void)resource_of(p, &id, &loc, resource, sizeof resource);
  if (p->topic != ATP_SHOPIFY_TOPIC_OTHER && !id)
    dead_letter(p, ATP_EBADREQ, ATP_FIELD_NONE,
                "The %.*s webhook carries no usable id.", (int)topic_name.len,
                topic_name.ptr);
  else
    plan_topic(p, id, loc);
  /* Its effects' rejections are this op's outcome, not new dead letters. */
  p->replaying = true;
  atp_shopify_outcome_t outcome = ATP_SHOPIFY_IGNORED;
  rc = run_plan(p, results, &outcome);
  atp_buf_free(&p->buf);
  if (rc) return rc;
  for (uint32_t i = 0; i < p->count; i++) {
    const effect_t *e = &p->effects[i];
    int err = e->kind == EFFECT_DEAD_LETTER ? e->err : results[e->op_index].rc;
    if (err)
      return atp_req_fail(
          rq, err, NULL, NULL, "%s",
          e->kind == EFFECT_DEAD_LETTER ? e->message : results[e->op_index].message);
  }
  out->status = 200;
  out->replayed = outcome == ATP_SHOPIFY_REPLAYED;
  return 0;
}

/* --- status and metrics ---------------------------------------------------------- */

static void write_push(atp_writer_t *w, atp_app_t *app) {
  atp_w_key(w, "push");
  atp_w_object_begin(w);
  if (!app->shopify_push_stats) {
    atp_w_key(w, "enabled");
    atp_w_bool(w, false);
    atp_w_object_end(w);
    return;
  }
  atp_shopify_push_stats_t st;
  memset(&st, 0, sizeof st);
  app->shopify_push_stats(app->shopify_push_ctx, &st);
  atp_w_key(w, "enabled");
  atp_w_bool(w, st.enabled);
  atp_w_key(w, "pending");
  atp_w_uint(w, st.pending);
  atp_w_key(w, "lag_ms");
  atp_w_int(w, st.lag_ms);
  atp_w_key(w, "cursor");
  char cursor[21];
  atp_feed_sequence_format(st.cursor, cursor);
  atp_w_cstr(w, cursor);
  atp_w_key(w, "points_available");
  atp_w_float(w, st.points_available);
  atp_w_key(w, "restore_rate");
  atp_w_float(w, st.restore_rate);
  push_counter_t counters[PUSH_COUNTERS];
  push_counters(&st, counters);
  for (size_t i = 0; i < PUSH_COUNTERS; i++) {
    atp_w_key(w, counters[i].name);
    atp_w_uint(w, counters[i].v);
  }
  atp_w_key(w, "last_error");
  atp_w_cstr(w, st.last_error);
  atp_w_object_end(w);
}

int atp_route_shopify_status(atp_req_t *rq) {
  atp_shopify_t *s = rq->app->shopify;
  if (!s) return connector_off(rq);
  atp_writer_t *w = atp_respond_begin(rq, 200);
  atp_w_object_begin(w);
  write_push(w, rq->app);
  atp_w_key(w, "webhooks");
  atp_w_object_begin(w);
  uint64_t by_outcome[ATP_SHOPIFY_OUTCOME_COUNT_] = {0};
  atp_w_key(w, "by_topic");
  atp_w_object_begin(w);
  for (int t = 0; t < ATP_SHOPIFY_TOPIC_COUNT_; t++) {
    uint64_t sum = 0;
    for (int o = 0; o < ATP_SHOPIFY_OUTCOME_COUNT_; o++) {
      uint64_t n = atp_shopify_webhook_figure(s, t, o);
      sum += n;
      by_outcome[o] += n;
    }
    atp_w_key(w, atp_shopify_topic_name(t));
    atp_w_uint(w, sum);
  }
  atp_w_object_end(w);
  atp_w_key(w, "by_outcome");
  atp_w_object_begin(w);
  for (int o = 0; o < ATP_SHOPIFY_OUTCOME_COUNT_; o++) {
    atp_w_key(w, atp_shopify_outcome_name(o));
    atp_w_uint(w, by_outcome[o]);
  }
  atp_w_object_end(w);
  atp_w_object_end(w);
  uint64_t items = 0, locations = 0, levels = 0, webhooks = 0;
  atp_shopify_counts(s, &items, &locations, &levels, &webhooks);
  atp_w_key(w, "mappings");
  atp_w_object_begin(w);
  atp_w_key(w, "items");
  atp_w_uint(w, items);
  atp_w_key(w, "locations");
  atp_w_uint(w, locations);
  atp_w_key(w, "levels");
  atp_w_uint(w, levels);
  atp_w_key(w, "webhooks_remembered");
  atp_w_uint(w, webhooks);
  atp_w_object_end(w);
  atp_w_object_end(w);
  return 0;
}

void atp_shopify_write_metrics(atp_app_t *app, atp_buf_t *out) {
  atp_shopify_t *s = app->shopify;
  if (!s) return;
  atp_buf_printf(out,
                 "# HELP atpd_shopify_webhooks_total Shopify webhooks received, "
                 "by topic and outcome.\n"
                 "# TYPE atpd_shopify_webhooks_total counter\n");
  for (int t = 0; t < ATP_SHOPIFY_TOPIC_COUNT_; t++)
    for (int o = 0; o < ATP_SHOPIFY_OUTCOME_COUNT_; o++)
      atp_buf_printf(
          out, "atpd_shopify_webhooks_total{topic=\"%s\",outcome=\"%s\"} %" PRIu64 "\n",
          atp_shopify_topic_name(t), atp_shopify_outcome_name(o),
          atp_shopify_webhook_figure(s, t, o));
  uint64_t items = 0, locations = 0, levels = 0, webhooks = 0;
  atp_shopify_counts(s, &items, &locations, &levels, &webhooks);
  atp_buf_printf(out,
                 "# HELP atpd_shopify_mappings Shopify mappings kept, by kind.\n"
                 "# TYPE atpd_shopify_mappings gauge\n"
                 "atpd_shopify_mappings{kind=\"items\"} %" PRIu64
                 "\n"
                 "atpd_shopify_mappings{kind=\"locations\"} %" PRIu64
                 "\n"
                 "atpd_shopify_mappings{kind=\"levels\"} %" PRIu64
                 "\n"
                 "# HELP atpd_shopify_webhooks_remembered Webhook ids and content keys "
                 "kept for dedupe.\n"
                 "# TYPE atpd_shopify_webhooks_remembered gauge\n"
                 "atpd_shopify_webhooks_remembered %" PRIu64 "\n",
                 items, locations, levels, webhooks);
  write_push_metrics(app, out);
}
