/* export.c - the walk of all state for snapshots (atp_engine_export): every
 * position with its history, every group, every retained reservation and
 * every remembered idempotency id, as change records of the kinds the hook
 * reports, so one codec serialises the journal and the snapshot alike.
 *
 * The walk stops nothing. Each object is copied consistently on its own by
 * the module that owns it (positions.c, idempotency.c, reservations.c's
 * view); between objects the copy is fuzzy, and replaying the journal from
 * where the walk began makes it exact (engine.h, atp_engine_apply).
 *
 * Each copy of a group, reservation or id is its own epoch bracket (epoch.c),
 * left before fn runs: one bracket over the whole walk would hold back the
 * reuse of every record purged while a snapshot is written.
 */
#include <string.h>

#include "atp/memory.h"
#include "engine_internal.h"

/* Records gathered before fn is called: a position and its whole history fit. */
#define BATCH (ATP_HISTORY_ENTRIES_MAX + 1 + 255)

typedef struct {
  atp_engine_t *e;
  atp_export_fn fn;
  void *ctx;
  atp_change_t *batch;
  uint32_t count;
  atp_history_entry_t *hist;
  atp_str_t *locations;
  atp_reservation_t *view;
  char idem_text[2 * ATP_ID_BYTES_MAX];
} export_t;

static int flush(export_t *x) {
  int rc = x->count ? x->fn(x->ctx, x->batch, x->count) : 0;
  x->count = 0;
  return rc;
}

static atp_change_t *next_record(export_t *x, atp_change_kind_t kind, atp_cause_t cause,
                                 atp_str_t cause_id, int64_t at_ms) {
  ATP_ASSERT(x->count < BATCH);
  atp_change_t *c = &x->batch[x->count++];
  memset(c, 0, sizeof *c);
  c->kind = kind;
  c->cause = cause;
  c->cause_id = cause_id;
  c->at_ms = at_ms;
  return c;
}

/* Positions and their strings live as long as the engine, so their records
 * are batched; the other kinds copy into one buffer each and go one by one. */
static int export_positions(export_t *x, atp_export_counts_t *counts) {
  atp_engine_t *e = x->e;
  int64_t now = atp__now(e);
  uint32_t n = atomic_load_explicit(&e->position_count, memory_order_acquire);
  for (uint32_t idx = 0; idx < n; idx++) {
    atp_position_t pos;
    uint32_t hist_count;
    int64_t floor_ms;
    atp__position_copy(e, idx, &pos, x->hist, &hist_count, &floor_ms);
    if (x->count + 1 + hist_count > BATCH) {
      int rc = flush(x);
      if (rc) return rc;
    }
    atp_change_t *c =
        next_record(x, ATP_CHANGE_POSITION, ATP_CAUSE_SNAPSHOT, pos.sku, now);
    c->u.position = (atp_change_position_t){
        .sku = pos.sku,
        .location = pos.location,
        .d_on_hand = pos.on_hand,
        .d_safety_stock = pos.safety_stock,
        .d_reserved = pos.reserved,
        .d_committed = pos.committed,
        .counted_at_ms = pos.counted_at_ms,
        .occurred_at_ms = floor_ms,
        .version = pos.version,
    };
    for (uint32_t i = 0; i < hist_count; i++) {
      c = next_record(x, ATP_CHANGE_POSITION, ATP_CAUSE_HISTORY, pos.sku, now);
      c->u.position = (atp_change_position_t){
          .sku = pos.sku,
          .location = pos.location,
          .d_on_hand = x->hist[i].delta,
          .counted_at_ms = ATP_TIME_NONE,
          .occurred_at_ms = x->hist[i].occurred_at_ms,
          .version = pos.version,
      };
    }
    counts->positions++;
    counts->history_entries += hist_count;
  }
  return flush(x);
}

/* Read as atp_group_each reads them (a group's version is immutable and
 * retired until no reader holds it), but failing loudly instead of skipping. */
static int export_groups(export_t *x, atp_export_counts_t *counts) {
  atp_engine_t *e = x->e;
  int64_t now = atp__now(e);
  uint32_t n = atomic_load_explicit(&e->group_count, memory_order_acquire);
  for (uint32_t s = 0; s < n; s++) {
    atp__epoch_enter(e);
    const atp_group_version_t *g =
        atomic_load_explicit(&e->groups[s].current, memory_order_seq_cst);
    uint32_t count = g ? g->count : 0;
    for (uint32_t i = 0; i < count; i++)
      x->locations[i] = atp__intern_str(e, g->locations[i]);
    atp__epoch_exit(e);
    if (!g) continue;
    atp_str_t name = atp__intern_str(e, e->groups[s].name);
    atp_change_t *c = next_record(x, ATP_CHANGE_GROUP, ATP_CAUSE_SNAPSHOT, name, now);
    c->u.group = (atp_change_group_t){
        .name = name, .locations = x->locations, .location_count = count};
    int rc = flush(x);
    if (rc) return rc;
    counts->groups++;
  }
  return 0;
}

static int export_reservations(export_t *x, atp_export_counts_t *counts) {
  atp_engine_t *e = x->e;
  const atp_keyed_table_t *t = &e->reservation_table;
  uint32_t n = atomic_load_explicit(&t->bump, memory_order_acquire);
  if (n > t->capacity) n = t->capacity;
  for (uint32_t idx = 0; idx < n; idx++) {
    const _Atomic uint32_t *state = &t->entries[idx].state;
    /* seq_cst: reached by index, the state is what the purge unlinks. */
    if (atomic_load_explicit(state, memory_order_seq_cst) != ATP_REC_LIVE) continue;
    atp__epoch_enter(e);
    bool live = atomic_load_explicit(state, memory_order_seq_cst) == ATP_REC_LIVE;
    if (live) atp__reservation_view(e, idx, x->view);
    /* A purge on the ticker does not bump the record's sequence word: a view
     * taken across one is dropped here. The purge was reported after the
     * walk began, so the journal replays it. */
    live = live && atomic_load_explicit(state, memory_order_seq_cst) == ATP_REC_LIVE;
    atp__epoch_exit(e);
    if (!live) continue;
    atp_change_t *c = next_record(x, ATP_CHANGE_RESERVATION, ATP_CAUSE_SNAPSHOT,
                                  x->view->id, x->view->created_at_ms);
    c->u.reservation = x->view;
    int rc = flush(x);
    if (rc) return rc;
    counts->reservations++;
  }
  return 0;
}

static int export_idempotency(export_t *x, atp_export_counts_t *counts) {
  atp_engine_t *e = x->e;
  const atp_keyed_table_t *t = &e->idempotency_table;
  uint32_t n = atomic_load_explicit(&t->bump, memory_order_acquire);
  if (n > t->capacity) n = t->capacity;
  for (uint32_t idx = 0; idx < n; idx++) {
    atp_change_t c;
    atp__epoch_enter(e);
    bool live = atp__idem_copy(e, idx, &c, x->idem_text);
    atp__epoch_exit(e);
    if (!live) continue;
    int rc = x->fn(x->ctx, &c, 1);
    if (rc) return rc;
    counts->idempotency_ids++;
  }
  return 0;
}

int atp_engine_export(atp_engine_t *e, atp_export_fn fn, void *ctx,
                      atp_export_counts_t *counts) {
  export_t x = {.e = e, .fn = fn, .ctx = ctx};
  memset(counts, 0, sizeof *counts);
  x.batch = atp_malloc(sizeof *x.batch * BATCH);
  x.hist = atp_malloc(sizeof *x.hist * ATP_HISTORY_ENTRIES_MAX);
  x.locations = atp_malloc(sizeof *x.locations * ATP_GROUP_LOCATIONS_MAX);
  x.view = atp_malloc(sizeof *x.view);
  int rc = ATP_ENOMEM;
  if (x.batch && x.hist && x.locations && x.view) {
    /* Positions first: reservations and ids name positions, which import
     * then finds instead of creating them empty. */
    if (!(rc = export_positions(&x, counts)) && !(rc = export_groups(&x, counts)) &&
        !(rc = export_reservations(&x, counts)))
      rc = export_idempotency(&x, counts);
  }
  atp_free(x.batch);
  atp_free(x.hist);
  atp_free(x.locations);
  atp_free(x.view);
  return rc;
}
