/* reservations.c - checkout reservations: reserve, commit, release, extend,
 * fulfil, amend, expire (CONTRACT.md section 4).
 *
 * A reservation's units are taken from each position's free word by CAS
 * (atp__position_take), line by line; when a later line cannot be filled the earlier
 * ones are given back, so a refused reservation holds nothing. The takes are
 * held until the outcome is known and each position is then settled once
 * (grants_settle, grants_rollback), so that no snapshot copies a position
 * between a request's takes, or between a take and its giving back. The record is
 * claimed in the id table before any unit is taken, so two concurrent requests
 * with one id never both hold stock: the older record in the chain wins and
 * the other answers as a replay.
 *
 * Mutations of an existing reservation run under the record's own spin flag
 * (never a shared lock) and emit their change records before releasing it, so
 * the journal sees one reservation's records in the order they happened. They
 * make the record's rseq odd while writing; readers copy the atomics and retry
 * if rseq moved or was odd. Under the flag there is one writer, so rseq, the
 * status and the line amounts are written with plain loads and stores, not
 * locked instructions. A new reservation needs no flag at all: its record is
 * PENDING, which every look-up waits out, until everything about it, change
 * records included, is done.
 *
 * Lock order: record flag, then a position's on-hand flag (fulfil). Nothing
 * takes a record flag while holding a position flag.
 */
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "atp/memory.h"
#include "engine_internal.h"

/* The units a request took from one position: qty in held takes (see
 * atp__position_take), and once settled the version they made. */
typedef struct {
  uint32_t pos;
  int64_t qty;
  uint32_t held;
  uint64_t version;
} grant_t;

/* One slot more than a reservation may span: a take that found no room is
 * noted there too, so that the rollback settles it with the others. */
typedef struct {
  grant_t items[ATP_RESERVATION_POSITIONS_MAX + 1];
  uint32_t count;
} grants_t;

static grants_t *scratch_grants(void) {
  grants_t *g = atp__scratch(ATP_SCRATCH_GRANTS, sizeof *g);
  g->count = 0;
  return g;
}

int atp__reservations_init(atp_engine_t *e) {
  ATP_ASSERT(e->config.reservations_max < (1u << 30));
  e->reservation_records = atp_table_alloc(e->config.reservations_max,
                                           sizeof *e->reservation_records, false);
  if (!e->reservation_records) return ATP_ENOMEM;
  return atp__keyed_init(&e->reservation_table, e->config.reservations_max);
}

void atp__reservations_destroy(atp_engine_t *e) {
  if (e->reservation_records) {
    uint32_t used = atomic_load(&e->reservation_table.bump);
    if (used > e->reservation_table.capacity) used = e->reservation_table.capacity;
    for (uint32_t i = 0; i < used; i++) {
      atp_reservation_record_t *r = &e->reservation_records[i];
      /* FREE records' memory went to the retired list at purge. */
      if (atomic_load(&e->reservation_table.entries[i].state) == ATP_REC_FREE) continue;
      atp_reservation_line_t *lines = atomic_load(&r->lines);
      if (lines && lines != r->inline_lines) atp_free(lines);
      if (r->text && r->text != r->inline_text) atp_free(r->text);
    }
  }
  atp__keyed_destroy(&e->reservation_table);
  atp_table_free(e->reservation_records, e->config.reservations_max,
                 sizeof *e->reservation_records);
  e->reservation_records = NULL;
}

void atp__reservation_queue(atp_engine_t *e, uint32_t idx) {
  atp__inbox_push(&e->inbox, idx + 1, &e->reservation_records[idx].inbox);
}

/* --- record access ------------------------------------------------------------------
 */

static void rec_lock(atp_reservation_record_t *r) {
  for (uint32_t spins = 0;; spins++) {
    uint32_t expected = 0;
    if (atomic_compare_exchange_weak_explicit(
            &r->lock, &expected, 1, memory_order_acquire, memory_order_relaxed))
      return;
    if (spins > 128) sched_yield();
  }
}

/* Under the flag: makes rseq odd before any field changes. The fence orders
 * it before the stores that follow, so a reader that sees one of them sees
 * rseq moved when it checks again. */
static void rec_write(atp_reservation_record_t *r) {
  uint32_t s = atomic_load_explicit(&r->rseq, memory_order_relaxed);
  atomic_store_explicit(&r->rseq, s + 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
}

/* Takes the flag and makes rseq odd: readers retry until rec_close. */
static void rec_begin(atp_reservation_record_t *r) {
  rec_lock(r);
  rec_write(r);
}

/* Under the flag, the one writer adds to a line amount. */
static void amount_add(_Atomic int64_t *amount, int64_t d) {
  atomic_store_explicit(amount, atomic_load_explicit(amount, memory_order_relaxed) + d,
                        memory_order_release);
}

static void set_status(atp_engine_t *e, atp_reservation_record_t *r, atp_status_t to) {
  int from = atomic_load_explicit(&r->status, memory_order_relaxed);
  atomic_store_explicit(&r->status, (int32_t)to, memory_order_release);
  int shard = atp__shard();
  atomic_fetch_sub_explicit(&e->status_count[shard][from].value, 1,
                            memory_order_relaxed);
  atomic_fetch_add_explicit(&e->status_count[shard][to].value, 1, memory_order_relaxed);
}

static bool rec_same_key(const atp_engine_t *e, uint32_t idx, uint64_t hash,
                         atp_str_t id) {
  const atp_reservation_record_t *r = &e->reservation_records[idx];
  return e->reservation_table.entries[idx].hash == hash && r->id_len == id.len &&
         r->text && memcmp(r->text, id.ptr, id.len) == 0;
}

/* The LIVE record with the id from chain position v on, waiting out a PENDING
 * twin; UINT32_MAX if none. */
static uint32_t rec_find_from(const atp_engine_t *e, uint32_t v, uint64_t hash,
                              atp_str_t id) {
  for (; v; v = atp__keyed_next(&e->reservation_table, v)) {
    uint32_t idx = v - 1;
    uint32_t st = atomic_load_explicit(&e->reservation_table.entries[idx].state,
                                       memory_order_acquire);
    if (st == ATP_REC_FREE || st == ATP_REC_DEAD || !rec_same_key(e, idx, hash, id))
      continue;
    while (st == ATP_REC_PENDING) {
      sched_yield();
      st = atomic_load_explicit(&e->reservation_table.entries[idx].state,
                                memory_order_acquire);
    }
    if (st == ATP_REC_LIVE) return idx;
  }
  return UINT32_MAX;
}

static uint32_t rec_find(const atp_engine_t *e, atp_str_t id) {
  uint64_t hash = atp__hash_bytes(id.ptr, id.len);
  return rec_find_from(e, atp__keyed_head(&e->reservation_table, hash), hash, id);
}

static int64_t line_remaining(const atp_reservation_line_t *l) {
  int64_t remaining = atomic_load_explicit(&l->qty, memory_order_acquire) -
                      atomic_load_explicit(&l->fulfilled, memory_order_acquire) -
                      atomic_load_explicit(&l->released, memory_order_acquire);
  /* fulfilled + released <= qty: a line never gives back more than it took */
  ATP_ASSERT(remaining >= 0);
  return remaining;
}

static void copy_text(atp_reservation_t *out, size_t *at, atp_str_t *dst,
                      const char *src, uint32_t len) {
  memcpy(out->text + *at, src, len);
  out->text[*at + len] = '\0';
  *dst = (atp_str_t){out->text + *at, len};
  *at += len + 1;
}

void atp__reservation_view(const atp_engine_t *e, uint32_t idx,
                           atp_reservation_t *out) {
  atp_reservation_record_t *r = &e->reservation_records[idx];
  size_t at = 0;
  copy_text(out, &at, &out->id, atp__reservation_id(r), r->id_len);
  copy_text(out, &at, &out->order_ref, atp__reservation_order_ref(r), r->order_ref_len);
  copy_text(out, &at, &out->channel, atp__reservation_channel(r), r->channel_len);
  copy_text(out, &at, &out->customer_id, atp__reservation_customer(r),
            r->customer_id_len);
  out->created_at_ms = r->created_at_ms;
  out->content_hash = r->content_hash;
  out->replayed = false;
  for (uint32_t attempt = 0;; attempt++) {
    uint32_t s1 = atomic_load_explicit(&r->rseq, memory_order_acquire);
    if (s1 & 1) {
      sched_yield(); /* a mutation of this one reservation is mid-way */
      continue;
    }
    out->status = (atp_status_t)atomic_load_explicit(&r->status, memory_order_acquire);
    out->expires_at_ms = atomic_load_explicit(&r->expires_at_ms, memory_order_acquire);
    out->ttl_ms = atomic_load_explicit(&r->ttl_ms, memory_order_acquire);
    out->ended_at_ms = atomic_load_explicit(&r->ended_at_ms, memory_order_acquire);
    uint16_t order_id_len =
        atomic_load_explicit(&r->order_id_len, memory_order_acquire);
    uint32_t n = atomic_load_explicit(&r->line_count, memory_order_acquire);
    const atp_reservation_line_t *lines =
        atomic_load_explicit(&r->lines, memory_order_seq_cst);
    for (uint32_t i = 0; i < n; i++) {
      const atp_position_record_t *p = &e->positions[lines[i].pos];
      out->lines[i].sku = atp__intern_str(e, p->sku);
      out->lines[i].location = atp__intern_str(e, p->location);
      out->lines[i].qty = atomic_load_explicit(&lines[i].qty, memory_order_acquire);
      out->lines[i].fulfilled =
          atomic_load_explicit(&lines[i].fulfilled, memory_order_acquire);
      out->lines[i].released =
          atomic_load_explicit(&lines[i].released, memory_order_acquire);
    }
    out->line_count = n;
    if (atomic_load_explicit(&r->rseq, memory_order_acquire) == s1) {
      size_t order_at = at;
      copy_text(out, &order_at, &out->order_id, atp__reservation_order_id(r),
                order_id_len);
      return;
    }
  }
}

/* Change records for a mutation: positions first, then the reservation. */
typedef struct {
  atp_change_t *items;
  uint32_t count, cap;
} changes_t;

static void changes_init(changes_t *c) {
  c->items = atp__scratch_changes(&c->cap), c->count = 0;
}

static void changes_pos(const atp_engine_t *e, changes_t *c, atp_cause_t cause,
                        atp_str_t id, uint32_t pos, int64_t d_on_hand,
                        int64_t d_reserved, int64_t d_committed, uint64_t version) {
  if (!e->config.on_change) return;
  ATP_ASSERT(c->count < c->cap);
  atp__change_position(e, &c->items[c->count++], cause, id, pos, d_on_hand, d_reserved,
                       d_committed, version);
}

/* Emits the collected records plus the reservation as it is now (view must
 * hold it) and, if given, an idempotency record. */
static void changes_emit(const atp_engine_t *e, changes_t *c, atp_cause_t cause,
                         const atp_reservation_t *view, const atp_change_t *idem) {
  if (!e->config.on_change) return;
  ATP_ASSERT(c->count + 2 <= c->cap);
  atp_change_t *record = &c->items[c->count++];
  memset(record, 0, sizeof *record);
  record->kind = ATP_CHANGE_RESERVATION;
  record->cause = cause;
  record->cause_id = view->id;
  record->at_ms = atp__now(e);
  record->u.reservation = view;
  if (idem) c->items[c->count++] = *idem;
  atp__emit(e, c->items, c->count);
}

static int conflict(const atp_reservation_record_t *r, atp_result_t *result,
                    const char *what) {
  int status = atomic_load_explicit(&r->status, memory_order_acquire);
  result->status = status;
  atp__result_set(result, "", "Cannot %s the reservation: it is %s.", what,
                  atp_status_name((atp_status_t)status));
  return ATP_ECONFLICT;
}

/* --- granting lines
 * ------------------------------------------------------------------- */

static int64_t pos_available(const atp_engine_t *e, uint32_t pos) {
  if (pos == UINT32_MAX) return 0;
  int64_t f = atomic_load_explicit(&e->positions[pos].free, memory_order_acquire);
  return f > 0 ? f : 0;
}

void (*atp__test_on_take)(void);

/* Notes a held take of qty units at pos. ATP_EBADREQ when it makes the
 * request span more positions than a reservation may; it is noted all the
 * same, and the caller fails the request, whose rollback gives it back. */
static int grant_add(grants_t *g, uint32_t pos, int64_t qty) {
  if (atp__test_on_take) atp__test_on_take();
  for (uint32_t i = 0; i < g->count; i++) {
    if (g->items[i].pos == pos) {
      g->items[i].qty += qty;
      g->items[i].held++;
      return 0;
    }
  }
  ATP_ASSERT(g->count <= ATP_RESERVATION_POSITIONS_MAX);
  g->items[g->count++] = (grant_t){pos, qty, 1, 0};
  return g->count > ATP_RESERVATION_POSITIONS_MAX ? ATP_EBADREQ : 0;
}

static void shortfall_add(atp_shortfalls_t *sf, uint32_t line, const atp_line_req_t *l,
                          int64_t available, atp_str_t best_location,
                          int64_t split_available) {
  if (!sf || sf->count >= ATP_RESERVATION_LINES_MAX) return;
  sf->items[sf->count++] =
      (atp_shortfall_t){line,   l->sku,    l->location,   l->group,
                        l->qty, available, best_location, split_available};
}

/* Takes one request line's units into g. 1: not fillable (shortfall noted);
 * 0: taken; negative: an error (unknown group, too many positions). */
/* A split group line: takes what each location has, in group order, up to
 * what is still needed. 0: filled; 1: not (shortfall noted); negative: too
 * many positions. */
static int grant_split(const atp_engine_t *e, const atp_line_req_t *l, uint32_t li,
                       bool committed, uint64_t sku_hash,
                       const atp_group_version_t *grp, grants_t *g,
                       atp_shortfalls_t *sf, atp_result_t *result) {
  int64_t need = l->qty, seen = 0;
  for (uint32_t i = 0; i < grp->count && need > 0; i++) {
    uint32_t pos = atp__position_find(e, l->sku, sku_hash, grp->locations[i]);
    if (pos == UINT32_MAX) continue;
    atp_position_record_t *p = &e->positions[pos];
    /* Split: take what this location has, up to what is still needed; a lost
     * race re-reads and tries the smaller amount. */
    for (int64_t avail = pos_available(e, pos); avail > 0;
         avail = pos_available(e, pos)) {
      int64_t take = avail < need ? avail : need;
      if (atp__position_take(p, take, committed)) {
        if (grant_add(g, pos, take)) {
          atp__result_set(result, "lines", "A reservation spans at most %d positions.",
                          ATP_RESERVATION_POSITIONS_MAX);
          return ATP_EBADREQ;
        }
        need -= take;
        seen += take;
        break;
      }
    }
  }
  if (need == 0) return 0;
  shortfall_add(sf, li, l, seen, (atp_str_t){NULL, 0}, -1);
  return 1;
}

/* A group line: the first location that fills it whole, else a split when
 * the line allows one (fewer parcels, fewer picks). Returns as grant_line. */
static int grant_group(const atp_engine_t *e, const atp_line_req_t *l, uint32_t li,
                       bool committed, uint64_t sku_hash, grants_t *g,
                       atp_shortfalls_t *sf, atp_result_t *result) {
  const atp_group_version_t *grp;
  if (atp__group_resolve(e, l->group, &grp)) {
    char field[32];
    snprintf(field, sizeof field, "lines[%u].group", li);
    atp__result_set(result, field, "Unknown group.");
    return ATP_ENOTFOUND;
  }
  /* First the first location that fills the line whole; a split line is
   * split only when no single location can (fewer parcels, fewer picks). */
  int64_t need = l->qty, seen = 0, best = 0;
  uint32_t best_location = UINT32_MAX;
  for (uint32_t i = 0; i < grp->count; i++) {
    uint32_t pos = atp__position_find(e, l->sku, sku_hash, grp->locations[i]);
    if (pos == UINT32_MAX) continue;
    if (atp__position_take(&e->positions[pos], need, committed)) {
      if (grant_add(g, pos, l->qty) == 0) return 0;
      atp__result_set(result, "lines", "A reservation spans at most %d positions.",
                      ATP_RESERVATION_POSITIONS_MAX);
      return ATP_EBADREQ;
    }
    int64_t avail = pos_available(e, pos);
    seen += avail;
    if (avail > best) best = avail, best_location = grp->locations[i];
  }
  if (!l->allow_split) {
    /* The line goes whole to one location, so what it could have had is the
     * best single location's; the group's sum says whether a split would
     * have filled it. */
    shortfall_add(sf, li, l, best,
                  best_location == UINT32_MAX ? (atp_str_t){NULL, 0}
                                              : atp__intern_str(e, best_location),
                  seen);
    return 1;
  }
  return grant_split(e, l, li, committed, sku_hash, grp, g, sf, result);
}

static int grant_line(const atp_engine_t *e, const atp_line_req_t *l, uint32_t li,
                      bool committed, grants_t *g, atp_shortfalls_t *sf,
                      atp_result_t *result) {
  uint64_t sku_hash = atp__hash_bytes(l->sku.ptr, l->sku.len);
  if (l->location.len) {
    uint32_t pos =
        atp__position_find_hashed(e, l->sku, sku_hash, l->location,
                                  atp__hash_bytes(l->location.ptr, l->location.len));
    if (pos != UINT32_MAX &&
        atp__position_take(&e->positions[pos], l->qty, committed)) {
      if (grant_add(g, pos, l->qty) == 0) return 0;
      atp__result_set(result, "lines", "A reservation spans at most %d positions.",
                      ATP_RESERVATION_POSITIONS_MAX);
      return ATP_EBADREQ;
    }
    shortfall_add(sf, li, l, pos_available(e, pos), (atp_str_t){NULL, 0}, -1);
    return 1;
  }
  return grant_group(e, l, li, committed, sku_hash, g, sf, result);
}

/* Gives every held take back and settles its position: a version each, with
 * no units, which is how the journal records a refused request. */
static void grants_rollback(const atp_engine_t *e, grants_t *g, bool committed) {
  for (uint32_t i = 0; i < g->count; i++) {
    atp_position_record_t *p = &e->positions[g->items[i].pos];
    atp__position_untake(p, g->items[i].qty, committed);
    g->items[i].version = atp__position_settle(p, g->items[i].held);
  }
}

/* Keeps every held take: one version per position for all of its takes. */
static void grants_settle(const atp_engine_t *e, grants_t *g) {
  for (uint32_t i = 0; i < g->count; i++)
    g->items[i].version =
        atp__position_settle(&e->positions[g->items[i].pos], g->items[i].held);
}

/* Takes every line or none. 0, EINSUFFICIENT (rolled back), or an error. */
static int grant_all(const atp_engine_t *e, const atp_line_req_t *lines, uint32_t n,
                     bool committed, grants_t *g, atp_shortfalls_t *sf,
                     atp_result_t *result) {
  if (sf) sf->count = 0;
  bool short_any = false;
  for (uint32_t i = 0; i < n; i++) {
    int rc = grant_line(e, &lines[i], i, committed, g, sf, result);
    if (rc < 0) {
      grants_rollback(e, g, committed);
      return rc;
    }
    if (rc == 1) short_any = true;
  }
  if (!short_any) return 0;
  grants_rollback(e, g, committed);
  atp__result_set(result, "lines", "Not enough stock for %u of %u lines.",
                  sf ? sf->count : 0, n);
  return ATP_EINSUFFICIENT;
}

/* --- validation
 * ------------------------------------------------------------------------ */

static int bad(atp_result_t *result, const char *field, const char *msg) {
  atp__result_set(result, field, "%s", msg);
  return ATP_EBADREQ;
}

static int check_req_lines(const char *name, const atp_line_req_t *lines, uint32_t n,
                           uint32_t min, atp_result_t *result) {
  char field[48];
  if (n < min || n > ATP_RESERVATION_LINES_MAX) {
    atp__result_set(result, name, "The %s list must hold %u..%d lines.", name, min,
                    ATP_RESERVATION_LINES_MAX);
    return ATP_EBADREQ;
  }
  for (uint32_t i = 0; i < n; i++) {
    const atp_line_req_t *l = &lines[i];
    if (!atp__id_valid(l->sku)) {
      snprintf(field, sizeof field, "%s[%u].sku", name, i);
      return bad(result, field, "Must be 1..128 bytes of printable UTF-8.");
    }
    if ((l->location.len > 0) == (l->group.len > 0)) {
      snprintf(field, sizeof field, "%s[%u].location", name, i);
      return bad(result, field, "Give a location or a group, not both.");
    }
    if (!atp__id_valid(l->location.len ? l->location : l->group)) {
      snprintf(field, sizeof field, "%s[%u].%s", name, i,
               l->location.len ? "location" : "group");
      return bad(result, field, "Must be 1..128 bytes of printable UTF-8.");
    }
    if (l->qty < 1 || l->qty > ATP_QTY_MAX) {
      snprintf(field, sizeof field, "%s[%u].qty", name, i);
      return bad(result, field, "Must be a positive integer.");
    }
  }
  return 0;
}

static int check_qty_lines(const char *name, const atp_qty_line_t *lines, uint32_t n,
                           atp_result_t *result) {
  char field[48];
  if (n > ATP_RESERVATION_POSITIONS_MAX) {
    atp__result_set(result, name, "At most %d lines.", ATP_RESERVATION_POSITIONS_MAX);
    return ATP_EBADREQ;
  }
  for (uint32_t i = 0; i < n; i++) {
    if (!atp__id_valid(lines[i].sku)) {
      snprintf(field, sizeof field, "%s[%u].sku", name, i);
      return bad(result, field, "Must be 1..128 bytes of printable UTF-8.");
    }
    if (!atp__id_valid(lines[i].location)) {
      snprintf(field, sizeof field, "%s[%u].location", name, i);
      return bad(result, field, "Must be 1..128 bytes of printable UTF-8.");
    }
    if (lines[i].qty < 1 || lines[i].qty > ATP_QTY_MAX) {
      snprintf(field, sizeof field, "%s[%u].qty", name, i);
      return bad(result, field, "Must be a positive integer.");
    }
  }
  return 0;
}

static bool opt_valid(atp_str_t s) {
  return s.len == 0 || atp__id_valid(s);
}

static uint64_t hash_lines(uint64_t h, const atp_line_req_t *lines, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    h = atp__hash_str(h, lines[i].sku);
    h = atp__hash_str(h, lines[i].location);
    h = atp__hash_str(h, lines[i].group);
    h = atp__hash_int(h, lines[i].qty);
    h = atp__hash_int(h, lines[i].allow_split);
  }
  return h;
}

static uint64_t hash_qty_lines(uint64_t h, const atp_qty_line_t *lines, uint32_t n) {
  for (uint32_t i = 0; i < n; i++) {
    h = atp__hash_str(h, lines[i].sku);
    h = atp__hash_str(h, lines[i].location);
    h = atp__hash_int(h, lines[i].qty);
  }
  return h;
}

/* Per reservation line, the units a release/fulfil list names, or every
 * remaining unit when the list is empty and all_if_empty (release and fulfil
 * without lines; an amend's empty release list releases nothing). EBADREQ for a
 * position not in the reservation, ECONFLICT for more than remains. amounts
 * has line_count entries. */
static int line_amounts(const atp_engine_t *e, const atp_reservation_record_t *r,
                        const char *name, const atp_qty_line_t *lines, uint32_t n,
                        bool all_if_empty, int64_t *amounts, atp_result_t *result) {
  uint32_t count = atomic_load_explicit(&r->line_count, memory_order_acquire);
  const atp_reservation_line_t *rl =
      atomic_load_explicit(&r->lines, memory_order_seq_cst);
  for (uint32_t i = 0; i < count; i++)
    amounts[i] = n == 0 && all_if_empty ? line_remaining(&rl[i]) : 0;
  char field[48];
  for (uint32_t i = 0; i < n; i++) {
    uint32_t pos = atp__position_find_str(e, lines[i].sku, lines[i].location);
    uint32_t j = 0;
    while (j < count && rl[j].pos != pos) j++;
    if (pos == UINT32_MAX || j == count) {
      snprintf(field, sizeof field, "%s[%u]", name, i);
      return bad(result, field, "This position is not in the reservation.");
    }
    amounts[j] += lines[i].qty;
    if (amounts[j] > line_remaining(&rl[j])) {
      snprintf(field, sizeof field, "%s[%u].qty", name, i);
      atp__result_set(result, field, "Only %lld units remain on this line.",
                      (long long)line_remaining(&rl[j]));
      result->status = atomic_load_explicit(&r->status, memory_order_acquire);
      return ATP_ECONFLICT;
    }
  }
  return 0;
}

static bool nothing_remains(const atp_reservation_record_t *r) {
  uint32_t count = atomic_load_explicit(&r->line_count, memory_order_acquire);
  const atp_reservation_line_t *rl =
      atomic_load_explicit(&r->lines, memory_order_seq_cst);
  for (uint32_t i = 0; i < count; i++)
    if (line_remaining(&rl[i]) > 0) return false;
  return true;
}

/* Ends the reservation as `to` if nothing remains: the status names what
 * ended it (a release after a partial fulfilment ends it released, as the
 * contract's release says). ended_at is stored before the status, so whoever
 * sees an ended status also sees when it ended. */
static void end_if_empty(atp_engine_t *e, atp_reservation_record_t *r, uint32_t idx,
                         atp_status_t to, int64_t now) {
  if (!nothing_remains(r)) return;
  atomic_store_explicit(&r->ended_at_ms, now, memory_order_release);
  atomic_store_explicit(&r->expires_at_ms, ATP_TIME_NONE, memory_order_release);
  set_status(e, r, to);
  atp__reservation_queue(e, idx);
}

static void rec_close(atp_engine_t *e, uint32_t idx, changes_t *ch, atp_cause_t cause,
                      const atp_change_t *idem, atp_reservation_t *out, bool emit);

/* --- reserve
 * ------------------------------------------------------------------------------ */

static int reserve_replay(const atp_engine_t *e, uint32_t found, uint64_t content_hash,
                          atp_reservation_t *out, atp_result_t *result) {
  if (e->reservation_records[found].content_hash != content_hash) {
    atp__result_set(result, "id",
                    "This reservation id was already used with different content.");
    return ATP_EIDEMPOTENCY;
  }
  atp__reservation_view(e, found, out);
  out->replayed = true;
  return 0;
}

/* Fills a fresh record's immutable text; NULL text means out of memory. */
static int rec_init(atp_reservation_record_t *r, const atp_reserve_req_t *req) {
  size_t need = req->id.len + req->order_ref.len + req->channel.len +
                req->customer_id.len + ATP_ID_BYTES_MAX;
  r->text = need <= ATP_RESERVATION_TEXT_INLINE ? r->inline_text : atp_malloc(need);
  if (!r->text) return ATP_ENOMEM;
  r->id_len = (uint16_t)req->id.len;
  r->order_ref_len = (uint16_t)req->order_ref.len;
  r->channel_len = (uint16_t)req->channel.len;
  r->customer_id_len = (uint16_t)req->customer_id.len;
  char *t = r->text;
  memcpy(t, req->id.ptr, req->id.len);
  t += req->id.len;
  if (req->order_ref.len) memcpy(t, req->order_ref.ptr, req->order_ref.len);
  t += req->order_ref.len;
  if (req->channel.len) memcpy(t, req->channel.ptr, req->channel.len);
  t += req->channel.len;
  if (req->customer_id.len) memcpy(t, req->customer_id.ptr, req->customer_id.len);
  atomic_store_explicit(&r->order_id_len, 0, memory_order_relaxed);
  atomic_store_explicit(&r->line_count, 0, memory_order_relaxed);
  atomic_store_explicit(&r->lines, r->inline_lines, memory_order_relaxed);
  r->line_cap = ATP_RESERVATION_LINES_INLINE;
  atp_timer_init(&r->timer);
  atomic_store_explicit(&r->lock, 0, memory_order_relaxed);
  return 0;
}

/* Makes room for n lines (under the record flag). The old array may be in a
 * reader's hands: it is retired, not freed. */
static int lines_reserve(atp_engine_t *e, atp_reservation_record_t *r, uint32_t n) {
  if (n <= r->line_cap) return 0;
  if (n > ATP_RESERVATION_POSITIONS_MAX) return ATP_EBADREQ;
  uint32_t cap = r->line_cap * 2 > n ? r->line_cap * 2 : n;
  if (cap > ATP_RESERVATION_POSITIONS_MAX) cap = ATP_RESERVATION_POSITIONS_MAX;
  atp_reservation_line_t *lines = atp_malloc(sizeof *lines * cap);
  if (!lines) return ATP_ENOMEM;
  atp_reservation_line_t *old = atomic_load_explicit(&r->lines, memory_order_relaxed);
  uint32_t count = atomic_load_explicit(&r->line_count, memory_order_relaxed);
  for (uint32_t i = 0; i < count; i++) {
    lines[i].pos = old[i].pos;
    atomic_init(&lines[i].qty, atomic_load(&old[i].qty));
    atomic_init(&lines[i].fulfilled, atomic_load(&old[i].fulfilled));
    atomic_init(&lines[i].released, atomic_load(&old[i].released));
  }
  /* seq_cst: the old array's unlink, in the total order with the readers'
   * loads of the pointer (seq_cst too) and the ticker's scan (keyed.c). */
  atomic_store_explicit(&r->lines, lines, memory_order_seq_cst);
  r->line_cap = cap;
  if (old != r->inline_lines) atp__retire(e, old);
  return 0;
}

/* Adds qty to the line of pos, appending a line if there is none. */
static void line_add(atp_reservation_record_t *r, uint32_t pos, int64_t qty) {
  atp_reservation_line_t *rl = atomic_load_explicit(&r->lines, memory_order_relaxed);
  uint32_t count = atomic_load_explicit(&r->line_count, memory_order_relaxed);
  for (uint32_t i = 0; i < count; i++) {
    if (rl[i].pos == pos) {
      amount_add(&rl[i].qty, qty);
      return;
    }
  }
  ATP_ASSERT(count < r->line_cap);
  rl[count].pos = pos;
  atomic_store_explicit(&rl[count].qty, qty, memory_order_relaxed);
  atomic_store_explicit(&rl[count].fulfilled, 0, memory_order_relaxed);
  atomic_store_explicit(&rl[count].released, 0, memory_order_relaxed);
  atomic_store_explicit(&r->line_count, count + 1, memory_order_release);
}

/* How many lines the grants need beyond those the record has. */
static uint32_t lines_needed(const atp_reservation_record_t *r, const grants_t *g) {
  const atp_reservation_line_t *rl =
      atomic_load_explicit(&r->lines, memory_order_relaxed);
  uint32_t count = atomic_load_explicit(&r->line_count, memory_order_relaxed),
           extra = 0;
  for (uint32_t i = 0; i < g->count; i++) {
    uint32_t j = 0;
    while (j < count && rl[j].pos != g->items[i].pos) j++;
    if (j == count) extra++;
  }
  return count + extra;
}

/* The record this thread will most likely take next (a recycled one is cold:
 * it waited in limbo for at least ATP_GRACE_EPOCHS ticks) is fetched for writing now,
 * so the next reserve does not wait for its lines. */
static void prefetch_next_record(const atp_engine_t *e) {
  uint32_t idx = atp__keyed_peek(&e->reservation_table);
  if (idx == UINT32_MAX) return;
  const atp_reservation_record_t *r = &e->reservation_records[idx];
  for (size_t off = 0; off < offsetof(atp_reservation_record_t, inline_text) + 64;
       off += 64)
    __builtin_prefetch((const char *)r + off, 1);
  __builtin_prefetch(&e->reservation_table.entries[idx], 1);
}

/* The checks of a reserve request after its id and lines, and the hash of
 * its content (what a replay must repeat). */
static int reserve_check(const atp_reserve_req_t *req, uint64_t *content,
                         atp_result_t *result) {
  if (req->ttl_ms && (req->ttl_ms < ATP_TTL_MS_MIN || req->ttl_ms > ATP_TTL_MS_MAX))
    return bad(result, "ttl_ms", "ttl_ms must be 1000..604800000");
  if (!opt_valid(req->order_ref))
    return bad(result, "order_ref", "order_ref must be 1..128 printable bytes");
  if (!opt_valid(req->channel))
    return bad(result, "channel", "Must be 1..128 bytes of printable UTF-8.");
  if (!opt_valid(req->customer_id))
    return bad(result, "customer_id", "customer_id must be 1..128 printable bytes");
  *content =
      hash_lines(atp__hash_int(0x5e5e, req->ttl_ms), req->lines, req->line_count);
  *content = atp__hash_str(
      atp__hash_str(atp__hash_str(*content, req->order_ref), req->channel),
      req->customer_id);

  return 0;
}

/* Claims the id: a fresh record, PENDING on the id's chain. 0: *idx is it.
 * 1: an older twin got there first and *out is its replay (or
 * ATP_EIDEMPOTENCY from reserve_replay). ATP_EFULL, ATP_ENOMEM. */
static int reserve_claim(atp_engine_t *e, const atp_reserve_req_t *req, uint64_t hash,
                         uint64_t content, uint32_t *claimed, atp_reservation_t *out,
                         atp_result_t *result) {
  uint32_t idx = atp__keyed_alloc(&e->reservation_table);
  if (idx == UINT32_MAX) {
    atp__result_set(result, "", "The reservation table is full; retry later.");
    return ATP_EFULL;
  }
  atp_reservation_record_t *r = &e->reservation_records[idx];
  if (rec_init(r, req)) {
    atomic_store(&e->reservation_table.entries[idx].state, ATP_REC_DEAD);
    atp__keyed_push(&e->reservation_table, idx);
    atp__reservation_queue(e, idx);
    return ATP_ENOMEM;
  }
  r->content_hash = content;
  e->reservation_table.entries[idx].hash = hash;
  atomic_store_explicit(&e->reservation_table.entries[idx].state, ATP_REC_PENDING,
                        memory_order_relaxed);
  atp__keyed_push(&e->reservation_table, idx);
  uint32_t found =
      rec_find_from(e, atp__keyed_next(&e->reservation_table, idx + 1), hash, req->id);
  if (found != UINT32_MAX) { /* a twin got there first */
    atomic_store_explicit(&e->reservation_table.entries[idx].state, ATP_REC_DEAD,
                          memory_order_release);
    atp__reservation_queue(e, idx);
    int rc = reserve_replay(e, found, content, out, result);
    return rc ? rc : 1;
  }
  *claimed = idx;
  return 0;
}

/* A refused reserve after its claim: nothing is held, the record turns DEAD
 * (the id stays free) and the versions the grants moved are recorded, so
 * that a replayed journal never hands out a version twice. */
static int reserve_refuse(atp_engine_t *e, const atp_reserve_req_t *req, uint32_t idx,
                          const grants_t *g, changes_t *ch, int rc) {
  ATP_ASSERT(rc < 0);
  for (uint32_t i = 0; i < g->count; i++)
    changes_pos(e, ch, ATP_CAUSE_RESERVE, req->id, g->items[i].pos, 0, 0, 0,
                g->items[i].version);
  atp__emit(e, ch->items, ch->count);
  atomic_store_explicit(&e->reservation_table.entries[idx].state, ATP_REC_DEAD,
                        memory_order_release);
  atp__reservation_queue(e, idx);
  return rc;
}

/* Fills the claimed record with the grants and publishes it LIVE. */
static void reserve_publish(atp_engine_t *e, const atp_reserve_req_t *req, uint32_t idx,
                            const grants_t *g, changes_t *ch, atp_reservation_t *out) {
  atp_reservation_record_t *r = &e->reservation_records[idx];
  int64_t now = atp__now(e), ttl = req->ttl_ms ? req->ttl_ms : ATP_TTL_MS_DEFAULT;
  for (uint32_t i = 0; i < g->count; i++) {
    line_add(r, g->items[i].pos, g->items[i].qty);
    changes_pos(e, ch, ATP_CAUSE_RESERVE, req->id, g->items[i].pos, 0, g->items[i].qty,
                0, g->items[i].version);
  }
  r->created_at_ms = now;
  atomic_store_explicit(&r->expires_at_ms, now + ttl, memory_order_relaxed);
  atomic_store_explicit(&r->ttl_ms, ttl, memory_order_relaxed);
  atomic_store_explicit(&r->ended_at_ms, ATP_TIME_NONE, memory_order_relaxed);
  atomic_store_explicit(&r->status, ATP_STATUS_HELD, memory_order_relaxed);
  atomic_fetch_add_explicit(&e->status_count[atp__shard()][ATP_STATUS_HELD].value, 1,
                            memory_order_relaxed);
  /* Still PENDING, so no flag: nobody else reads or changes the record yet.
   * The change records go out first, then LIVE is published (release): a
   * mutation or read that finds the record sees all of the above, and its
   * own change records come after these. */
  atp__reservation_view(e, idx, out);
  changes_emit(e, ch, ATP_CAUSE_RESERVE, out, NULL);
  atomic_store_explicit(&e->reservation_table.entries[idx].state, ATP_REC_LIVE,
                        memory_order_release);
  atp__reservation_queue(e, idx);
}

static int reserve_in_epoch(atp_engine_t *e, const atp_reserve_req_t *req,
                            atp_reservation_t *out, atp_shortfalls_t *shortfalls,
                            atp_result_t *result) {
  ATP_ASSERT(out);
  if (shortfalls) shortfalls->count = 0;
  if (!atp__id_valid(req->id))
    return bad(result, "id", "Must be 1..128 bytes of printable UTF-8.");
  /* The id's bucket head is a cache miss in a table of millions: start it
   * now, and let the checks below run while it arrives. */
  uint64_t hash = atp__hash_bytes(req->id.ptr, req->id.len);
  __builtin_prefetch(
      &e->reservation_table.heads[hash & e->reservation_table.bucket_mask], 1);
  int rc = check_req_lines("lines", req->lines, req->line_count, 1, result);
  if (rc) return rc;
  /* So is the first line's position, two dependent misses: its index entry
   * now, alongside the bucket head, and the position once the head is in. */
  const atp_line_req_t *first = &req->lines[0];
  uint64_t pos_hash = first->location.len
                          ? atp__position_prefetch_index(e, first->sku, first->location)
                          : 0;
  uint64_t content;
  if ((rc = reserve_check(req, &content, result))) return rc;

  uint32_t found =
      rec_find_from(e, atp__keyed_head(&e->reservation_table, hash), hash, req->id);
  if (found != UINT32_MAX) return reserve_replay(e, found, content, out, result);
  if (first->location.len) atp__position_prefetch(e, pos_hash);

  uint32_t idx;
  if ((rc = reserve_claim(e, req, hash, content, &idx, out, result)))
    return rc == 1 ? 0 : rc;
  atp_reservation_record_t *r = &e->reservation_records[idx];

  grants_t *g = scratch_grants();
  rc = grant_all(e, req->lines, req->line_count, false, g, shortfalls, result);
  if (rc == 0 && (rc = lines_reserve(e, r, g->count))) {
    grants_rollback(e, g, false);
    atp__result_set(result, "", "Out of memory.");
  }
  if (rc == 0) grants_settle(e, g);
  changes_t ch;
  changes_init(&ch);
  if (rc) return reserve_refuse(e, req, idx, g, &ch, rc);
  reserve_publish(e, req, idx, g, &ch, out);
  prefetch_next_record(e);
  return 0;
}

/* Each public call of this file runs its _in_epoch body in an epoch bracket
 * (epoch.c): it walks the reservation and id chains and reads the records and
 * arrays it finds there, which the ticker may unlink and retire meanwhile.
 * The bracket costs one xchg on entry (see atp__epoch_enter). */
int atp_reserve(atp_engine_t *e, const atp_reserve_req_t *req, atp_reservation_t *out,
                atp_shortfalls_t *shortfalls, atp_result_t *result) {
  bool clock = atp__clock_enter(e); /* one reading for the call */
  atp__epoch_enter(e);
  int rc = reserve_in_epoch(e, req, out, shortfalls, result);
  atp__epoch_exit(e);
  atp__clock_exit(clock);
  return rc;
}

/* --- reads
 * ---------------------------------------------------------------------------------- */

static int reservation_get_in_epoch(const atp_engine_t *e, atp_str_t id,
                                    atp_reservation_t *out) {
  if (!atp__id_valid(id)) return ATP_ENOTFOUND;
  uint32_t idx = rec_find(e, id);
  if (idx == UINT32_MAX) return ATP_ENOTFOUND;
  atp__reservation_view(e, idx, out);
  return 0;
}

int atp_reservation_get(const atp_engine_t *e, atp_str_t id, atp_reservation_t *out) {
  atp__epoch_enter(e);
  int rc = reservation_get_in_epoch(e, id, out);
  atp__epoch_exit(e);
  return rc;
}

/* Looks the reservation up and takes its flag; ENOTFOUND otherwise. */
static int rec_open(atp_engine_t *e, atp_str_t id, uint32_t *idx,
                    atp_result_t *result) {
  if (!atp__id_valid(id)) {
    atp__result_set(result, "id", "Unknown reservation.");
    return ATP_ENOTFOUND;
  }
  *idx = rec_find(e, id);
  if (*idx == UINT32_MAX) {
    atp__result_set(result, "id", "Unknown reservation.");
    return ATP_ENOTFOUND;
  }
  rec_begin(&e->reservation_records[*idx]);
  return 0;
}

/* Ends a mutation: view, hook under the flag, then release it. */
static void rec_close(atp_engine_t *e, uint32_t idx, changes_t *ch, atp_cause_t cause,
                      const atp_change_t *idem, atp_reservation_t *out, bool emit) {
  atp_reservation_record_t *r = &e->reservation_records[idx];
  atomic_store_explicit(&r->rseq,
                        atomic_load_explicit(&r->rseq, memory_order_relaxed) + 1,
                        memory_order_release); /* even: readable */
  atp__reservation_view(e, idx, out);
  if (emit) changes_emit(e, ch, cause, out, idem);
  atomic_store_explicit(&r->lock, 0, memory_order_release);
}

static void commit_lines(atp_engine_t *e, atp_reservation_record_t *r, changes_t *ch,
                         atp_str_t id) {
  uint32_t count = atomic_load_explicit(&r->line_count, memory_order_relaxed);
  atp_reservation_line_t *rl = atomic_load_explicit(&r->lines, memory_order_relaxed);
  for (uint32_t i = 0; i < count; i++) {
    int64_t rem = line_remaining(&rl[i]);
    if (rem <= 0) continue;
    uint64_t v = atp__position_commit(&e->positions[rl[i].pos], rem);
    changes_pos(e, ch, ATP_CAUSE_COMMIT, id, rl[i].pos, 0, -rem, rem, v);
  }
  set_status(e, r, ATP_STATUS_COMMITTED);
  atomic_store_explicit(&r->expires_at_ms, ATP_TIME_NONE, memory_order_release);
}

static int commit_in_epoch(atp_engine_t *e, atp_str_t id, atp_str_t order_id,
                           atp_reservation_t *out, atp_result_t *result) {
  if (!opt_valid(order_id))
    return bad(result, "order_id", "order_id must be 1..128 printable bytes");
  uint32_t idx;
  int rc = rec_open(e, id, &idx, result);
  if (rc) return rc;
  atp_reservation_record_t *r = &e->reservation_records[idx];
  changes_t ch;
  changes_init(&ch);
  int status = atomic_load_explicit(&r->status, memory_order_relaxed);
  uint16_t have = atomic_load_explicit(&r->order_id_len, memory_order_relaxed);
  if (status == ATP_STATUS_COMMITTED && have && order_id.len &&
      (have != order_id.len ||
       memcmp(atp__reservation_order_id(r), order_id.ptr, have))) {
    /* Another order than the one recorded: a client mix-up that must not pass
     * as a replay. */
    result->status = status;
    atp__result_set(result, "order_id",
                    "this reservation is committed with another order_id");
    rec_close(e, idx, &ch, ATP_CAUSE_COMMIT, NULL, out, false);
    return ATP_ECONFLICT;
  }
  if (status == ATP_STATUS_COMMITTED && (have || !order_id.len)) {
    rec_close(e, idx, &ch, ATP_CAUSE_COMMIT, NULL, out, false);
    out->replayed = true;
    return 0;
  }
  if (status != ATP_STATUS_HELD && status != ATP_STATUS_COMMITTED) {
    rc = conflict(r, result, "commit");
    rec_close(e, idx, &ch, ATP_CAUSE_COMMIT, NULL, out, false);
    return rc;
  }
  /* held: commit; committed without an order_id (by fulfil, or by a commit
   * that named none): it takes this one. The reservation record emitted
   * carries it, so a replay of the records sets it too. */
  if (status == ATP_STATUS_HELD) commit_lines(e, r, &ch, id);
  if (order_id.len && !have) {
    /* Set once: the bytes before the length (release), and the view reads
     * the length first, so a reader never sees a half-written id. */
    memcpy(atp__reservation_order_id(r), order_id.ptr, order_id.len);
    atomic_store_explicit(&r->order_id_len, (uint16_t)order_id.len,
                          memory_order_release);
  }
  rec_close(e, idx, &ch, ATP_CAUSE_COMMIT, NULL, out, true);
  return 0;
}

int atp_commit(atp_engine_t *e, atp_str_t id, atp_str_t order_id,
               atp_reservation_t *out, atp_result_t *result) {
  bool clock = atp__clock_enter(e); /* one reading for the call */
  atp__epoch_enter(e);
  int rc = commit_in_epoch(e, id, order_id, out, result);
  atp__epoch_exit(e);
  atp__clock_exit(clock);
  return rc;
}

/* Gives back amounts[i] of each line (held units to reserved, committed ones
 * to committed) and counts them as released. */
static void release_amounts(atp_engine_t *e, atp_reservation_record_t *r,
                            const int64_t *amounts, changes_t *ch, atp_cause_t cause,
                            atp_str_t id) {
  bool committed =
      atomic_load_explicit(&r->status, memory_order_relaxed) == ATP_STATUS_COMMITTED;
  uint32_t count = atomic_load_explicit(&r->line_count, memory_order_relaxed);
  atp_reservation_line_t *rl = atomic_load_explicit(&r->lines, memory_order_relaxed);
  for (uint32_t i = 0; i < count; i++) {
    if (amounts[i] <= 0) continue;
    uint64_t v = atp__position_give(&e->positions[rl[i].pos], amounts[i], committed);
    amount_add(&rl[i].released, amounts[i]);
    changes_pos(e, ch, cause, id, rl[i].pos, 0, committed ? 0 : -amounts[i],
                committed ? -amounts[i] : 0, v);
  }
}

static int keyed_open(atp_engine_t *e, atp_idem_kind_t kind, atp_str_t key,
                      uint64_t content, atp_str_t id, uint32_t *idem_idx, uint32_t *idx,
                      atp_reservation_t *out, atp_result_t *result);

int atp_release(atp_engine_t *e, atp_str_t id, const atp_qty_line_t *lines,
                uint32_t line_count, atp_reservation_t *out, atp_result_t *result) {
  return atp_release_keyed(e, id, (atp_str_t){NULL, 0}, lines, line_count, out, result);
}

static int release_keyed_in_epoch(atp_engine_t *e, atp_str_t id, atp_str_t release_id,
                                  const atp_qty_line_t *lines, uint32_t line_count,
                                  atp_reservation_t *out, atp_result_t *result) {
  if (release_id.len && !atp__id_valid(release_id))
    return bad(result, "release_id", "release_id must be 1..128 printable bytes");
  int rc = check_qty_lines("lines", lines, line_count, result);
  if (rc) return rc;
  uint32_t idem_idx = UINT32_MAX, idx;
  if (release_id.len) {
    uint64_t content = hash_qty_lines(atp__hash_str(0x5e1ea5e, id), lines, line_count);
    rc = keyed_open(e, ATP_IDEM_RELEASE, release_id, content, id, &idem_idx, &idx, out,
                    result);
    if (rc) return rc == 1 ? 0 : rc;
  } else if ((rc = rec_open(e, id, &idx, result))) {
    return rc;
  }
  atp_reservation_record_t *r = &e->reservation_records[idx];
  changes_t ch;
  changes_init(&ch);
  int status = atomic_load_explicit(&r->status, memory_order_relaxed);
  int64_t amounts[ATP_RESERVATION_POSITIONS_MAX];
  if (status == ATP_STATUS_RELEASED)
    rc = 1; /* a replay: nothing to release, the key stays free */
  else if (status != ATP_STATUS_HELD && status != ATP_STATUS_COMMITTED)
    rc = conflict(r, result, "release");
  else
    rc = line_amounts(e, r, "lines", lines, line_count, true, amounts, result);
  if (rc) {
    if (idem_idx != UINT32_MAX) atp__idem_fail(e, idem_idx);
    rec_close(e, idx, &ch, ATP_CAUSE_RELEASE, NULL, out, false);
    if (rc == 1) out->replayed = true;
    return rc == 1 ? 0 : rc;
  }
  release_amounts(e, r, amounts, &ch, ATP_CAUSE_RELEASE, id);
  end_if_empty(e, r, idx, ATP_STATUS_RELEASED, atp__now(e));
  atp_change_t idem, *keyed = NULL;
  if (idem_idx != UINT32_MAX) {
    atp__idem_done(e, idem_idx, ATP_IDEM_APPLIED, 0, NULL, id, &idem);
    keyed = &idem;
  }
  rec_close(e, idx, &ch, ATP_CAUSE_RELEASE, keyed, out, true);
  return 0;
}

int atp_release_keyed(atp_engine_t *e, atp_str_t id, atp_str_t release_id,
                      const atp_qty_line_t *lines, uint32_t line_count,
                      atp_reservation_t *out, atp_result_t *result) {
  bool clock = atp__clock_enter(e); /* one reading for the call */
  atp__epoch_enter(e);
  int rc = release_keyed_in_epoch(e, id, release_id, lines, line_count, out, result);
  atp__epoch_exit(e);
  atp__clock_exit(clock);
  return rc;
}

static int extend_in_epoch(atp_engine_t *e, atp_str_t id, int64_t ttl_ms,
                           atp_reservation_t *out, atp_result_t *result) {
  if (ttl_ms < ATP_TTL_MS_MIN || ttl_ms > ATP_TTL_MS_MAX)
    return bad(result, "ttl_ms", "ttl_ms must be 1000..604800000");
  uint32_t idx;
  int rc = rec_open(e, id, &idx, result);
  if (rc) return rc;
  atp_reservation_record_t *r = &e->reservation_records[idx];
  changes_t ch;
  changes_init(&ch);
  if (atomic_load_explicit(&r->status, memory_order_relaxed) != ATP_STATUS_HELD) {
    rc = conflict(r, result, "extend");
    rec_close(e, idx, &ch, ATP_CAUSE_EXTEND, NULL, out, false);
    return rc;
  }
  atomic_store_explicit(&r->expires_at_ms, atp__now(e) + ttl_ms, memory_order_release);
  atomic_store_explicit(&r->ttl_ms, ttl_ms, memory_order_release);
  atp__reservation_queue(e, idx);
  rec_close(e, idx, &ch, ATP_CAUSE_EXTEND, NULL, out, true);
  return 0;
}

int atp_extend(atp_engine_t *e, atp_str_t id, int64_t ttl_ms, atp_reservation_t *out,
               atp_result_t *result) {
  bool clock = atp__clock_enter(e); /* one reading for the call */
  atp__epoch_enter(e);
  int rc = extend_in_epoch(e, id, ttl_ms, out, result);
  atp__epoch_exit(e);
  atp__clock_exit(clock);
  return rc;
}

/* The shared start of a keyed mutation of a reservation (fulfil, amend):
 * claims the key, then opens the reservation. 1: the key was used with this
 * content; *out is the reservation as it is now, marked replayed. 0: *idem_idx is
 * claimed and *idx open under its flag. Negative: an error, nothing held. */
static int keyed_open(atp_engine_t *e, atp_idem_kind_t kind, atp_str_t key,
                      uint64_t content, atp_str_t id, uint32_t *idem_idx, uint32_t *idx,
                      atp_reservation_t *out, atp_result_t *result) {
  if (!atp__id_valid(id)) {
    atp__result_set(result, "id", "Unknown reservation.");
    return ATP_ENOTFOUND;
  }
  int rc = atp__idem_claim(e, kind, key, content, idem_idx, result);
  if (rc == ATP_EIDEMPOTENCY) /* name the key, not the reservation's id */
    snprintf(result->field, sizeof result->field, "%s",
             kind == ATP_IDEM_FULFIL  ? "fulfillment_id"
             : kind == ATP_IDEM_AMEND ? "amend_id"
                                      : "release_id");
  if (rc < 0) return rc;
  if (rc == 1) {
    if ((rc = atp_reservation_get(e, id, out))) {
      atp__result_set(result, "id", "Unknown reservation.");
      return rc;
    }
    out->replayed = true;
    return 1;
  }
  if ((rc = rec_open(e, id, idx, result))) {
    atp__idem_fail(e, *idem_idx);
    return rc;
  }
  return 0;
}

static int fulfil_in_epoch(atp_engine_t *e, atp_str_t id, atp_str_t fulfillment_id,
                           const atp_qty_line_t *lines, uint32_t line_count,
                           atp_reservation_t *out, atp_result_t *result) {
  if (!atp__id_valid(fulfillment_id))
    return bad(result, "fulfillment_id",
               "fulfillment_id must be 1..128 printable bytes");
  int rc = check_qty_lines("lines", lines, line_count, result);
  if (rc) return rc;
  uint64_t content = hash_qty_lines(atp__hash_str(0xf1f1, id), lines, line_count);
  uint32_t idem_idx, idx;
  rc = keyed_open(e, ATP_IDEM_FULFIL, fulfillment_id, content, id, &idem_idx, &idx, out,
                  result);
  if (rc) return rc == 1 ? 0 : rc;
  atp_reservation_record_t *r = &e->reservation_records[idx];
  changes_t ch;
  changes_init(&ch);
  int status = atomic_load_explicit(&r->status, memory_order_relaxed);
  int64_t amounts[ATP_RESERVATION_POSITIONS_MAX];
  if (status != ATP_STATUS_HELD && status != ATP_STATUS_COMMITTED)
    rc = conflict(r, result, "fulfil");
  else
    rc = line_amounts(e, r, "lines", lines, line_count, true, amounts, result);
  if (rc) {
    atp__idem_fail(e, idem_idx);
    rec_close(e, idx, &ch, ATP_CAUSE_FULFIL, NULL, out, false);
    return rc;
  }
  if (status == ATP_STATUS_HELD) commit_lines(e, r, &ch, id);
  int64_t now = atp__now(e);
  uint32_t count = atomic_load_explicit(&r->line_count, memory_order_relaxed);
  atp_reservation_line_t *rl = atomic_load_explicit(&r->lines, memory_order_relaxed);
  for (uint32_t i = 0; i < count; i++) {
    if (amounts[i] <= 0) continue;
    atp_position_record_t *p = &e->positions[rl[i].pos];
    atp__position_lock(e, p);
    uint64_t v = atp__position_fulfil(e, p, amounts[i], now);
    atp__position_unlock(e, p);
    amount_add(&rl[i].fulfilled, amounts[i]);
    changes_pos(e, &ch, ATP_CAUSE_FULFIL, fulfillment_id, rl[i].pos, -amounts[i], 0,
                -amounts[i], v);
    if (e->config.on_change) ch.items[ch.count - 1].u.position.occurred_at_ms = now;
  }
  end_if_empty(e, r, idx, ATP_STATUS_FULFILLED, now);
  atp_change_t idem;
  atp__idem_done(e, idem_idx, ATP_IDEM_APPLIED, 0, NULL, id, &idem);
  rec_close(e, idx, &ch, ATP_CAUSE_FULFIL, &idem, out, true);
  return 0;
}

int atp_fulfil(atp_engine_t *e, atp_str_t id, atp_str_t fulfillment_id,
               const atp_qty_line_t *lines, uint32_t line_count, atp_reservation_t *out,
               atp_result_t *result) {
  bool clock = atp__clock_enter(e); /* one reading for the call */
  atp__epoch_enter(e);
  int rc = fulfil_in_epoch(e, id, fulfillment_id, lines, line_count, out, result);
  atp__epoch_exit(e);
  atp__clock_exit(clock);
  return rc;
}

static int amend_in_epoch(atp_engine_t *e, atp_str_t id, atp_str_t amend_id,
                          const atp_qty_line_t *release, uint32_t release_count,
                          const atp_line_req_t *add, uint32_t add_count,
                          atp_reservation_t *out, atp_shortfalls_t *shortfalls,
                          atp_result_t *result) {
  if (shortfalls) shortfalls->count = 0;
  if (!atp__id_valid(amend_id))
    return bad(result, "amend_id", "amend_id must be 1..128 printable bytes");
  int rc = check_qty_lines("release", release, release_count, result);
  if (rc) return rc;
  if ((rc = check_req_lines("add", add, add_count, 0, result))) return rc;
  if (release_count + add_count == 0)
    return bad(result, "add", "An amend needs a release or an add list.");
  uint64_t content = hash_qty_lines(atp__hash_str(0xa3e4d, id), release, release_count);
  content = hash_lines(atp__hash_int(content, add_count), add, add_count);
  uint32_t idem_idx, idx;
  rc = keyed_open(e, ATP_IDEM_AMEND, amend_id, content, id, &idem_idx, &idx, out,
                  result);
  if (rc) return rc == 1 ? 0 : rc;
  atp_reservation_record_t *r = &e->reservation_records[idx];
  changes_t ch;
  changes_init(&ch);
  int status = atomic_load_explicit(&r->status, memory_order_relaxed);
  int64_t amounts[ATP_RESERVATION_POSITIONS_MAX];
  grants_t *g = scratch_grants();
  if (status != ATP_STATUS_HELD && status != ATP_STATUS_COMMITTED)
    rc = conflict(r, result, "amend");
  else
    rc = line_amounts(e, r, "release", release, release_count, false, amounts, result);
  bool committed = status == ATP_STATUS_COMMITTED;
  if (rc == 0) rc = grant_all(e, add, add_count, committed, g, shortfalls, result);
  if (rc == 0 && (rc = lines_reserve(e, r, lines_needed(r, g)))) {
    grants_rollback(e, g, committed);
    if (rc == ATP_EBADREQ)
      atp__result_set(result, "add", "A reservation spans at most %d positions.",
                      ATP_RESERVATION_POSITIONS_MAX);
  }
  if (rc == 0) grants_settle(e, g);
  if (rc) {
    for (uint32_t i = 0; i < g->count; i++)
      changes_pos(e, &ch, ATP_CAUSE_AMEND, amend_id, g->items[i].pos, 0, 0, 0,
                  g->items[i].version);
    atp__emit(e, ch.items, ch.count);
    atp__idem_fail(e, idem_idx);
    rec_close(e, idx, &ch, ATP_CAUSE_AMEND, NULL, out, false);
    return rc;
  }
  release_amounts(e, r, amounts, &ch, ATP_CAUSE_AMEND, amend_id);
  for (uint32_t i = 0; i < g->count; i++) {
    line_add(r, g->items[i].pos, g->items[i].qty);
    changes_pos(e, &ch, ATP_CAUSE_AMEND, amend_id, g->items[i].pos, 0,
                committed ? 0 : g->items[i].qty, committed ? g->items[i].qty : 0,
                g->items[i].version);
  }
  end_if_empty(e, r, idx, ATP_STATUS_RELEASED, atp__now(e));
  atp_change_t idem;
  atp__idem_done(e, idem_idx, ATP_IDEM_APPLIED, 0, NULL, id, &idem);
  rec_close(e, idx, &ch, ATP_CAUSE_AMEND, &idem, out, true);
  return 0;
}

int atp_amend(atp_engine_t *e, atp_str_t id, atp_str_t amend_id,
              const atp_qty_line_t *release, uint32_t release_count,
              const atp_line_req_t *add, uint32_t add_count, atp_reservation_t *out,
              atp_shortfalls_t *shortfalls, atp_result_t *result) {
  bool clock = atp__clock_enter(e); /* one reading for the call */
  atp__epoch_enter(e);
  int rc = amend_in_epoch(e, id, amend_id, release, release_count, add, add_count, out,
                          shortfalls, result);
  atp__epoch_exit(e);
  atp__clock_exit(clock);
  return rc;
}

/* --- expiry (ticker thread)
 * -------------------------------------------------------------- */

/* Ticker: what the record's time means, decided under its flag so that a
 * concurrent commit, release or extend cannot be half-seen. Expires a held
 * reservation that is due (returns true). *due gets when to look again
 * (ATP_TIME_NONE: not until something changes), *purge whether its retention
 * has passed. */
bool atp__reservation_fire(atp_engine_t *e, uint32_t idx, int64_t now_ms, int64_t *due,
                           bool *purge) {
  *due = ATP_TIME_NONE;
  *purge = false;
  uint32_t state = atomic_load_explicit(&e->reservation_table.entries[idx].state,
                                        memory_order_acquire);
  if (state == ATP_REC_DEAD) *purge = true;
  if (state != ATP_REC_LIVE) return false;
  atp_reservation_record_t *r = &e->reservation_records[idx];
  /* An ended reservation never changes again, and its end time was stored
   * before its status: no flag needed to decide its purge. */
  int status = atomic_load_explicit(&r->status, memory_order_acquire);
  if (status == ATP_STATUS_RELEASED || status == ATP_STATUS_FULFILLED ||
      status == ATP_STATUS_EXPIRED) {
    int64_t until = atomic_load_explicit(&r->ended_at_ms, memory_order_acquire) +
                    e->config.ended_ttl_ms;
    if (until <= now_ms)
      *purge = true;
    else
      *due = until;
    return false;
  }
  rec_lock(r);
  status = atomic_load_explicit(&r->status, memory_order_relaxed);
  if (status != ATP_STATUS_HELD) {
    /* committed (no time of its own), or ended since: filed again from the
     * inbox it was queued on when it ended */
    atomic_store_explicit(&r->lock, 0, memory_order_release);
    return false;
  }
  int64_t expires = atomic_load_explicit(&r->expires_at_ms, memory_order_relaxed);
  if (expires > now_ms) {
    atomic_store_explicit(&r->lock, 0, memory_order_release);
    *due = expires;
    return false;
  }
  rec_write(r);
  changes_t ch;
  changes_init(&ch);
  int64_t amounts[ATP_RESERVATION_POSITIONS_MAX];
  uint32_t count = atomic_load_explicit(&r->line_count, memory_order_relaxed);
  atp_reservation_line_t *rl = atomic_load_explicit(&r->lines, memory_order_relaxed);
  for (uint32_t i = 0; i < count; i++) amounts[i] = line_remaining(&rl[i]);
  atp_str_t id = {atp__reservation_id(r), r->id_len};
  release_amounts(e, r, amounts, &ch, ATP_CAUSE_EXPIRE, id);
  atomic_store_explicit(&r->ended_at_ms, now_ms, memory_order_release);
  atomic_store_explicit(&r->expires_at_ms, ATP_TIME_NONE, memory_order_release);
  set_status(e, r, ATP_STATUS_EXPIRED);
  atomic_fetch_add_explicit(&e->expirations, 1, memory_order_relaxed);
  rec_close(e, idx, &ch, ATP_CAUSE_EXPIRE, NULL, atp__scratch_view(), true);
  *due = now_ms + e->config.ended_ttl_ms;
  return true;
}

int64_t atp__reservation_due(const atp_engine_t *e, uint32_t idx, int64_t now_ms) {
  uint32_t st = atomic_load_explicit(&e->reservation_table.entries[idx].state,
                                     memory_order_acquire);
  if (st == ATP_REC_DEAD) return now_ms;
  if (st != ATP_REC_LIVE) return ATP_TIME_NONE;
  const atp_reservation_record_t *r = &e->reservation_records[idx];
  int status = atomic_load_explicit(&r->status, memory_order_acquire);
  if (status == ATP_STATUS_HELD)
    return atomic_load_explicit(&r->expires_at_ms, memory_order_acquire);
  if (status == ATP_STATUS_COMMITTED) return ATP_TIME_NONE;
  int64_t ended = atomic_load_explicit(&r->ended_at_ms, memory_order_acquire);
  return ended == ATP_TIME_NONE ? now_ms : ended + e->config.ended_ttl_ms;
}

bool atp__reservation_purge_bound(const atp_engine_t *e, uint32_t idx, int64_t now_ms) {
  int64_t due = atp__reservation_due(e, idx, now_ms);
  if (due == ATP_TIME_NONE || due > now_ms) return false;
  /* A held reservation that is due expires now and is purged only after its
   * retention; a dead record is purged whatever its stale status says. */
  return atomic_load_explicit(&e->reservation_table.entries[idx].state,
                              memory_order_relaxed) == ATP_REC_DEAD ||
         atomic_load_explicit(&e->reservation_records[idx].status,
                              memory_order_relaxed) != ATP_STATUS_HELD;
}

/* Ticker: forgets the record and frees what it owns beyond itself. An ended
 * reservation's purge is reported (the journal then forgets it too). */
void atp__reservation_purge(atp_engine_t *e, uint32_t idx) {
  atp_reservation_record_t *r = &e->reservation_records[idx];
  if (atomic_load_explicit(&e->reservation_table.entries[idx].state,
                           memory_order_acquire) == ATP_REC_LIVE) {
    int status = atomic_load_explicit(&r->status, memory_order_acquire);
    /* One writer (this thread), so no locked instruction. */
    _Atomic uint64_t *purged = &e->purged_count[status].value;
    atomic_store_explicit(purged,
                          atomic_load_explicit(purged, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (e->config.on_change) {
      atp_reservation_t *view = atp__scratch_view();
      atp__reservation_view(e, idx, view);
      atp_change_t c;
      memset(&c, 0, sizeof c);
      c.kind = ATP_CHANGE_RESERVATION;
      c.cause = ATP_CAUSE_PURGE;
      c.cause_id = view->id;
      c.at_ms = atp__now(e);
      c.u.reservation = view;
      atp__emit(e, &c, 1);
    }
  }
  /* Readers may still copy from these: they are freed once no reader may
   * hold them, as the record itself is reused (keyed.c, epoch.c). */
  if (r->text && r->text != r->inline_text) atp__retire(e, r->text);
  atp_reservation_line_t *lines = atomic_load_explicit(&r->lines, memory_order_relaxed);
  if (lines && lines != r->inline_lines) atp__retire(e, lines);
  /* seq_cst: the unlink of the heap array for a walk that reaches the record
   * by index (an export); readers that come by the chain are covered by the
   * record's own unlink. */
  atomic_store_explicit(&r->lines, r->inline_lines, memory_order_seq_cst);
  atomic_store_explicit(&r->line_count, 0, memory_order_relaxed);
  atp__keyed_retire(&e->reservation_table, idx, atp__epoch_now(e));
}

/* --- replay
 * ------------------------------------------------------------------------------------
 */

int atp__reservation_apply(atp_engine_t *e, const atp_change_t *c) {
  const atp_reservation_t *v = c->u.reservation;
  if (!v || !atp__id_valid(v->id) || v->line_count > ATP_RESERVATION_POSITIONS_MAX ||
      (unsigned)v->status > ATP_STATUS_FULFILLED)
    return ATP_EBADREQ;
  uint32_t idx = rec_find(e, v->id);
  if (c->cause == ATP_CAUSE_PURGE) {
    /* Forgotten: DEAD records are invisible and the ticker unlinks them. */
    if (idx != UINT32_MAX) {
      int status = atomic_load(&e->reservation_records[idx].status);
      atomic_fetch_sub(&e->status_count[atp__shard()][status].value, 1);
      atomic_store(&e->reservation_table.entries[idx].state, ATP_REC_DEAD);
      atp__reservation_queue(e, idx);
    }
    return 0;
  }
  if (idx == UINT32_MAX) {
    idx = atp__keyed_alloc(&e->reservation_table);
    if (idx == UINT32_MAX) return ATP_EFULL;
    atp_reserve_req_t req = {.id = v->id,
                             .order_ref = v->order_ref,
                             .channel = v->channel,
                             .customer_id = v->customer_id};
    atp_reservation_record_t *r = &e->reservation_records[idx];
    if (rec_init(r, &req)) return ATP_ENOMEM;
    atomic_store(&r->status, (int32_t)v->status);
    atomic_fetch_add(&e->status_count[atp__shard()][v->status].value, 1);
    e->reservation_table.entries[idx].hash = atp__hash_bytes(v->id.ptr, v->id.len);
    atomic_store(&e->reservation_table.entries[idx].state, ATP_REC_LIVE);
    atp__keyed_push(&e->reservation_table, idx);
  }
  atp_reservation_record_t *r = &e->reservation_records[idx];
  r->created_at_ms = v->created_at_ms;
  r->content_hash = v->content_hash;
  atomic_store(&r->expires_at_ms, v->expires_at_ms);
  atomic_store(&r->ttl_ms, v->ttl_ms);
  atomic_store(&r->ended_at_ms, v->ended_at_ms);
  set_status(e, r, v->status);
  if (v->order_id.len && v->order_id.len <= ATP_ID_BYTES_MAX) {
    memcpy(atp__reservation_order_id(r), v->order_id.ptr, v->order_id.len);
    atomic_store(&r->order_id_len, (uint16_t)v->order_id.len);
  }
  int rc = lines_reserve(e, r, v->line_count);
  if (rc) return rc;
  atomic_store(&r->line_count, 0);
  atp_reservation_line_t *rl = atomic_load(&r->lines);
  for (uint32_t i = 0; i < v->line_count; i++) {
    uint32_t pos;
    if ((rc = atp__position_find_or_create(e, v->lines[i].sku, v->lines[i].location,
                                           &pos)))
      return rc;
    rl[i].pos = pos;
    atomic_store(&rl[i].qty, v->lines[i].qty);
    atomic_store(&rl[i].fulfilled, v->lines[i].fulfilled);
    atomic_store(&rl[i].released, v->lines[i].released);
  }
  atomic_store(&r->line_count, v->line_count);
  atp__reservation_queue(e, idx);
  return 0;
}
