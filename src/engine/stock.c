/* stock.c - the changes of a position's stock that a client asks for:
 * safety stock, adjustments and counts (CONTRACT.md section 3), each under the
 * position's on-hand flag and, for adjustments and counts, its idempotency id.
 */
#include <stdio.h>
#include <string.h>

#include "engine_internal.h"

int atp_safety_stock_set(atp_engine_t *e, atp_str_t sku, atp_str_t location,
                         int64_t safety_stock, atp_position_t *out,
                         atp_result_t *result) {
  if (!atp__id_valid(sku)) {
    atp__result_set(result, "sku", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  if (!atp__id_valid(location)) {
    atp__result_set(result, "location", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  if (safety_stock < 0 || safety_stock > ATP_QTY_MAX) {
    atp__result_set(result, "safety_stock", "Must be in 0..%lld.",
                    (long long)ATP_QTY_MAX);
    return ATP_EBADREQ;
  }
  uint32_t idx;
  int rc = atp__position_find_or_create(e, sku, location, &idx);
  if (rc) {
    atp__result_set(result, "", "%s", atp_strerror(rc));
    return rc;
  }
  atp_position_record_t *p = &e->positions[idx];
  atp__position_lock(e, p);
  int64_t old = atomic_load_explicit(&p->safety, memory_order_relaxed);
  int64_t d = safety_stock - old;
  atp__position_begin(p);
  atomic_store_explicit(&p->safety, safety_stock, memory_order_release);
  atomic_fetch_sub_explicit(&p->free, d, memory_order_acq_rel);
  uint64_t v = atp__position_end(p, true);
  atp_change_t c;
  atp__change_position(e, &c, ATP_CAUSE_SAFETY, (atp_str_t){"", 0}, idx, 0, 0, 0, v);
  c.u.position.d_safety_stock = d;
  atp__emit(e, &c, 1);
  atp__position_unlock(e, p);
  if (out) atp__position_read(e, idx, out);
  return 0;
}

static int check_common(atp_str_t id, atp_str_t sku, atp_str_t location,
                        atp_str_t source, atp_result_t *result) {
  if (!atp__id_valid(id)) {
    atp__result_set(result, "id", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  if (!atp__id_valid(sku)) {
    atp__result_set(result, "sku", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  if (!atp__id_valid(location)) {
    atp__result_set(result, "location", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  if (!atp__id_valid(source)) {
    atp__result_set(result, "source", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  return 0;
}

/* The id's bucket head and the position's index entry are cache misses in
 * tables of millions: both start here, before the checks and the content
 * hash run, and the position itself once its entry is in (atp__position_prefetch
 * with the hash returned), as a reservation does. Only warms the cache. */
static uint64_t onhand_prefetch(const atp_engine_t *e, atp_idem_kind_t kind,
                                atp_str_t id, atp_str_t sku, atp_str_t location) {
  atp__keyed_prefetch_head(&e->idempotency_table, atp__idem_key_hash(kind, id));
  return atp__position_prefetch_index(e, sku, location);
}

/* An on-hand change in progress: the claimed id and the locked position. */
typedef struct {
  uint32_t idem_idx; /* the claimed idempotency record */
  uint32_t idx;      /* the position, locked */
  atp_position_record_t *p;
  int64_t on_hand; /* as found under the lock */
  int64_t counted_at;
} onhand_t;

/* The shared start of an adjustment or a count: claims the id, finds or
 * creates the position, takes its flag and checks change_from. 1: the id was
 * used with this content; *position and *flags hold the remembered outcome.
 * 0: *o holds the claim and the locked position. Negative: an error, nothing
 * held (a change_from conflict fills *position with the position as it is). */
static int onhand_begin(atp_engine_t *e, atp_idem_kind_t kind, atp_str_t id,
                        uint64_t content, atp_str_t sku, atp_str_t location,
                        bool has_change_from, int64_t change_from, onhand_t *o,
                        atp_position_t *position, uint32_t *flags,
                        atp_result_t *result) {
  int rc = atp__idem_claim(e, kind, id, content, &o->idem_idx, result);
  if (rc < 0) return rc;
  if (rc == 1) {
    const atp_idempotency_record_t *r = &e->idempotency_records[o->idem_idx];
    *position = r->outcome;
    position->sku = atp__intern_str(e, e->positions[r->pos].sku);
    position->location = atp__intern_str(e, e->positions[r->pos].location);
    *flags = r->flags;
    return 1;
  }
  if (has_change_from && change_from != 0 &&
      atp__position_find_str(e, sku, location) == UINT32_MAX) {
    /* A position never seen has on_hand 0: a compare-and-set expecting
     * anything else fails without creating it (a refusal changes nothing, and
     * a ghost position would show in the endless aisle). Were it created
     * concurrently after the look-up, this answer is the one the look-up's
     * moment gives. */
    atp__idem_fail(e, o->idem_idx);
    memset(position, 0, sizeof *position);
    position->sku = sku;
    position->location = location;
    position->counted_at_ms = ATP_TIME_NONE;
    result->current_on_hand = 0;
    atp__result_set(result, "change_from", "on_hand is 0 (never seen), not %lld",
                    (long long)change_from);
    return ATP_ECONFLICT;
  }
  rc = atp__position_find_or_create(e, sku, location, &o->idx);
  if (rc) {
    atp__idem_fail(e, o->idem_idx);
    atp__result_set(result, "", "%s", atp_strerror(rc));
    return rc;
  }
  o->p = &e->positions[o->idx];
  atp__position_lock(e, o->p);
  o->on_hand = atomic_load_explicit(&o->p->on_hand, memory_order_relaxed);
  o->counted_at = atomic_load_explicit(&o->p->counted_at, memory_order_relaxed);
  if (has_change_from && change_from != o->on_hand) {
    atp__position_unlock(e, o->p);
    atp__idem_fail(e, o->idem_idx);
    atp__position_read(e, o->idx, position);
    result->current_on_hand = o->on_hand;
    atp__result_set(result, "change_from", "The on_hand is %lld, not %lld.",
                    (long long)o->on_hand, (long long)change_from);
    return ATP_ECONFLICT;
  }
  return 0;
}

/* Gives up a change after onhand_begin: nothing changed, the id stays free. */
static int onhand_abort(atp_engine_t *e, onhand_t *o, int rc) {
  atp__position_unlock(e, o->p);
  atp__idem_fail(e, o->idem_idx);
  return rc;
}

/* Ends a change after onhand_begin: reads the position, remembers the outcome,
 * emits the records (c[0..n) plus the idempotency one) and unlocks. */
static void onhand_finish(atp_engine_t *e, onhand_t *o, uint32_t flags,
                          atp_position_t *position, atp_change_t *c, uint32_t n) {
  atp__position_read(e, o->idx, position);
  atp__idem_done(e, o->idem_idx, flags, o->idx, position, (atp_str_t){"", 0}, &c[n++]);
  atp__emit(e, c, n);
  atp__position_unlock(e, o->p);
}

/* Moves on_hand (and free) by d under the position's flag; the version after. */
static uint64_t onhand_move(onhand_t *o, int64_t d) {
  atp__position_begin(o->p);
  atomic_fetch_add_explicit(&o->p->on_hand, d, memory_order_acq_rel);
  atomic_fetch_add_explicit(&o->p->free, d, memory_order_acq_rel);
  return atp__position_end(o->p, true);
}

static int check_adjust(const atp_adjust_req_t *req, atp_result_t *result) {
  int rc = check_common(req->id, req->sku, req->location, req->source, result);
  if (rc) return rc;
  if (req->delta == 0 || !atp__qty_in_range(req->delta)) {
    atp__result_set(result, "delta", "Must be a non-zero integer within +-%lld.",
                    (long long)ATP_QTY_MAX);
    return ATP_EBADREQ;
  }
  if ((unsigned)req->reason >= ATP_REASON_COUNT_) {
    atp__result_set(result, "reason", "Unknown reason.");
    return ATP_EBADREQ;
  }
  if (req->ref.len > ATP_ID_BYTES_MAX) {
    atp__result_set(result, "ref", "Must be at most 128 bytes.");
    return ATP_EBADREQ;
  }
  return 0;
}

/* A time more than the allowed skew past now would corrupt every later count
 * (CONTRACT.md section 1): refused naming its field. */
static int check_not_future(const atp_engine_t *e, int64_t at_ms, int64_t now_ms,
                            const char *field, atp_result_t *result) {
  if (at_ms == ATP_TIME_NONE || at_ms <= now_ms + e->config.clock_skew_ms) return 0;
  atp__result_set(result, field,
                  "%s is %lld ms after the server's clock; at most %lld ms are allowed",
                  field, (long long)(at_ms - now_ms),
                  (long long)e->config.clock_skew_ms);
  return ATP_EBADREQ;
}

static int adjust_in_epoch(atp_engine_t *e, const atp_adjust_req_t *req,
                           atp_adjust_res_t *outcome, atp_result_t *result) {
  uint64_t pos_hash =
      onhand_prefetch(e, ATP_IDEM_ADJUST, req->id, req->sku, req->location);
  int rc = check_adjust(req, result);
  if (rc) return rc;
  int64_t now = atp__now(e);
  rc = check_not_future(e, req->occurred_at_ms, now, "occurred_at", result);
  if (rc) return rc;
  int64_t occurred = req->occurred_at_ms == ATP_TIME_NONE ? now : req->occurred_at_ms;
  uint64_t h = atp__hash_str(ATP_IDEM_ADJUST, req->sku);
  h = atp__hash_str(h, req->location);
  h = atp__hash_int(h, req->delta);
  h = atp__hash_int(h, req->reason);
  h = atp__hash_str(h, req->source);
  h = atp__hash_int(h, req->occurred_at_ms);
  h = atp__hash_str(h, req->ref);
  h = atp__hash_int(h, req->has_change_from ? req->change_from : INT64_MIN);
  memset(outcome, 0, sizeof *outcome);
  atp__position_prefetch(e, pos_hash);
  onhand_t o;
  uint32_t flags = 0, n = 0;
  rc = onhand_begin(e, ATP_IDEM_ADJUST, req->id, h, req->sku, req->location,
                    req->has_change_from, req->change_from, &o, &outcome->position,
                    &flags, result);
  if (rc == 1) {
    outcome->applied = flags & ATP_IDEM_APPLIED;
    outcome->absorbed = flags & ATP_IDEM_ABSORBED;
    outcome->replayed = true;
    return 0;
  }
  if (rc) return rc;
  if (!atp__qty_in_range(o.on_hand + req->delta)) {
    atp__result_set(result, "delta", "The on_hand would leave the range +-%lld.",
                    (long long)ATP_QTY_MAX);
    return onhand_abort(e, &o, ATP_EOVERFLOW);
  }
  atp_change_t c[2];
  if (o.counted_at != ATP_TIME_NONE && occurred <= o.counted_at) {
    outcome->absorbed = true; /* a count at or after it already saw it */
    flags |= ATP_IDEM_ABSORBED;
  } else {
    uint64_t v = onhand_move(&o, req->delta);
    atp__history_push(e, o.p, occurred, req->delta, now);
    atp__change_position(e, &c[n], ATP_CAUSE_ADJUST, req->id, o.idx, req->delta, 0, 0,
                         v);
    c[n++].u.position.occurred_at_ms = occurred;
    outcome->applied = true;
    flags |= ATP_IDEM_APPLIED;
  }
  onhand_finish(e, &o, flags, &outcome->position, c, n);
  return 0;
}

/* Adjustments and counts claim their id in the idempotency table, whose
 * chains the ticker changes: the body runs in an epoch bracket (epoch.c).
 * Safety stock touches positions only, which are never freed: no bracket. */
int atp_adjust(atp_engine_t *e, const atp_adjust_req_t *req, atp_adjust_res_t *outcome,
               atp_result_t *result) {
  bool clock = atp__clock_enter(e); /* one reading for the call */
  atp__epoch_enter(e);
  int rc = adjust_in_epoch(e, req, outcome, result);
  atp__epoch_exit(e);
  atp__clock_exit(clock);
  return rc;
}

static int count_in_epoch(atp_engine_t *e, const atp_count_req_t *req,
                          atp_count_res_t *outcome, atp_result_t *result) {
  uint64_t pos_hash =
      onhand_prefetch(e, ATP_IDEM_COUNT, req->id, req->sku, req->location);
  int rc = check_common(req->id, req->sku, req->location, req->source, result);
  if (rc) return rc;
  if (req->on_hand < 0 || req->on_hand > ATP_QTY_MAX) {
    atp__result_set(result, "on_hand", "Must be in 0..%lld.", (long long)ATP_QTY_MAX);
    return ATP_EBADREQ;
  }
  if (req->counted_at_ms == ATP_TIME_NONE) {
    atp__result_set(result, "counted_at", "The field is required.");
    return ATP_EBADREQ;
  }
  int64_t now = atp__now(e);
  rc = check_not_future(e, req->counted_at_ms, now, "counted_at", result);
  if (rc) return rc;
  uint64_t h = atp__hash_str(ATP_IDEM_COUNT, req->sku);
  h = atp__hash_str(h, req->location);
  h = atp__hash_int(h, req->on_hand);
  h = atp__hash_int(h, req->counted_at_ms);
  h = atp__hash_str(h, req->source);
  h = atp__hash_int(h, req->has_change_from ? req->change_from : INT64_MIN);
  memset(outcome, 0, sizeof *outcome);
  atp__position_prefetch(e, pos_hash);
  onhand_t o;
  uint32_t flags = 0, n = 0;
  rc = onhand_begin(e, ATP_IDEM_COUNT, req->id, h, req->sku, req->location,
                    req->has_change_from, req->change_from, &o, &outcome->position,
                    &flags, result);
  if (rc == 1) {
    outcome->applied = flags & ATP_IDEM_APPLIED;
    outcome->stale = flags & ATP_IDEM_STALE;
    outcome->approximate = flags & ATP_IDEM_APPROXIMATE;
    outcome->replayed = true;
    return 0;
  }
  if (rc) return rc;
  atp_change_t c[2];
  if (o.counted_at != ATP_TIME_NONE && req->counted_at_ms < o.counted_at) {
    outcome->stale = true; /* older than the last count: changes nothing */
    flags |= ATP_IDEM_STALE;
  } else {
    bool complete;
    int64_t target =
        req->on_hand + atp__history_after(e, o.p, req->counted_at_ms, &complete);
    if (!atp__qty_in_range(target)) {
      atp__result_set(result, "on_hand", "The on_hand would leave the range +-%lld.",
                      (long long)ATP_QTY_MAX);
      return onhand_abort(e, &o, ATP_EOVERFLOW);
    }
    if (!complete || req->counted_at_ms < now - e->config.history_window_ms) {
      outcome->approximate = true;
      flags |= ATP_IDEM_APPROXIMATE;
    }
    int64_t d = target - o.on_hand;
    atp__position_begin(o.p);
    atomic_fetch_add_explicit(&o.p->on_hand, d, memory_order_acq_rel);
    atomic_fetch_add_explicit(&o.p->free, d, memory_order_acq_rel);
    atomic_store_explicit(&o.p->counted_at, req->counted_at_ms, memory_order_release);
    uint64_t v = atp__position_end(o.p, true);
    atp__change_position(e, &c[n], ATP_CAUSE_COUNT, req->id, o.idx, d, 0, 0, v);
    c[n++].u.position.counted_at_ms = req->counted_at_ms;
    outcome->applied = true;
    flags |= ATP_IDEM_APPLIED;
  }
  onhand_finish(e, &o, flags, &outcome->position, c, n);
  return 0;
}

int atp_count(atp_engine_t *e, const atp_count_req_t *req, atp_count_res_t *outcome,
              atp_result_t *result) {
  bool clock = atp__clock_enter(e); /* one reading for the call */
  atp__epoch_enter(e);
  int rc = count_in_epoch(e, req, outcome, result);
  atp__epoch_exit(e);
  atp__clock_exit(clock);
  return rc;
}
