/* lifecycle.c - the engine's life: create, destroy, stats, replay of change
 * records, and the ticker. The one file that knows every kind of record: it
 * sizes their tables, and it decodes the refs the inboxes carry to the
 * ticker and dispatches each timer to the module its record belongs to.
 */
#include <string.h>
#include <time.h>

#include "atp/memory.h"
#include "engine_internal.h"

static void on_timer(atp_timerwheel_t *w, atp_timer_t *t, int64_t now_ms, void *ctx);
static void on_timer_ahead(const atp_timer_t *t, uint32_t steps, int64_t now_ms,
                           void *ctx);

static int64_t real_clock(void *ctx) {
  (void)ctx;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t pow2_at_least(uint64_t n) {
  uint64_t p = 16;
  while (p < n) p <<= 1;
  ATP_ASSERT(p <= (1ULL << 31));
  return (uint32_t)p;
}

int atp_engine_create(const atp_engine_config_t *config, atp_engine_t **out) {
  atp_engine_t *e = atp_calloc(1, sizeof *e);
  if (!e) return ATP_ENOMEM;
  e->config = *config;
  atp_engine_config_t *c = &e->config;
  if (!c->positions_max) c->positions_max = ATP_POSITIONS_MAX_DEFAULT;
  if (!c->reservations_max) c->reservations_max = ATP_RESERVATIONS_MAX_DEFAULT;
  if (!c->idempotency_max) c->idempotency_max = ATP_IDEMPOTENCY_MAX_DEFAULT;
  if (!c->idempotency_ttl_ms) c->idempotency_ttl_ms = ATP_IDEMPOTENCY_TTL_MS_DEFAULT;
  if (!c->ended_ttl_ms) c->ended_ttl_ms = ATP_ENDED_TTL_MS_DEFAULT;
  if (!c->history_window_ms) c->history_window_ms = ATP_HISTORY_WINDOW_MS_DEFAULT;
  if (!c->clock_skew_ms) c->clock_skew_ms = ATP_CLOCK_SKEW_MS_DEFAULT;
  ATP_ASSERT(c->clock_skew_ms > 0);
  if (!c->clock) c->clock = real_clock;
  pthread_mutex_init(&e->create_lock, NULL);
  /* Every string is a SKU, a location or a group name. The worst case is a
   * SKU per position; locations, group names and group locations are few
   * beside it, and share the extra room. */
  e->intern_max = c->positions_max + ATP_GROUPS_MAX + 65536;
  e->intern_mask = pow2_at_least((uint64_t)e->intern_max * 4 / 3) - 1;
  e->position_mask = pow2_at_least((uint64_t)c->positions_max * 4 / 3) - 1;
  e->group_mask = pow2_at_least(ATP_GROUPS_MAX * 2) - 1;
  /* Tables are mapped zeroed and lazily (untouched capacity costs address
   * space, not memory), on huge pages where the kernel gives them. */
  e->interns = atp_table_alloc(e->intern_max, sizeof *e->interns, true);
  e->intern_index =
      atp_table_alloc((size_t)e->intern_mask + 1, sizeof *e->intern_index, true);
  e->positions = atp_table_alloc(c->positions_max, sizeof *e->positions, true);
  e->pos_cold = atp_table_alloc(c->positions_max, sizeof *e->pos_cold, true);
  e->position_index =
      atp_table_alloc((size_t)e->position_mask + 1, sizeof *e->position_index, true);
  e->groups = atp_calloc(ATP_GROUPS_MAX, sizeof *e->groups);
  e->group_index = atp_calloc((size_t)e->group_mask + 1, sizeof *e->group_index);
  atp_timerwheel_init(&e->wheel, on_timer, on_timer_ahead, e);
  if (!e->interns || !e->intern_index || !e->positions || !e->pos_cold ||
      !e->position_index || !e->groups || !e->group_index ||
      atp__inbox_init(&e->inbox) || atp__reservations_init(e) || atp__idem_init(e) ||
      atp__epoch_init(e) || atp__prefault_init(e)) {
    atp_engine_destroy(e);
    return ATP_ENOMEM;
  }
  *out = e;
  return 0;
}

void atp_engine_destroy(atp_engine_t *e) {
  if (!e) return;
  atp__prefault_destroy(e);
  atp__reservations_destroy(e);
  atp__idem_destroy(e);
  uint32_t n = atomic_load(&e->intern_count);
  for (uint32_t i = 0; i < n; i++) atp_free(e->interns[i]);
  uint32_t np = atomic_load(&e->position_count);
  for (uint32_t i = 0; i < np; i++) atp_free(e->pos_cold[i].history);
  uint32_t ng = atomic_load(&e->group_count);
  for (uint32_t i = 0; i < ng; i++) atp_free(atomic_load(&e->groups[i].current));
  for (atp_retired_t *r = atomic_load(&e->retired), *next; r; r = next) {
    next = r->next;
    atp_free(r->ptr);
    atp_free(r);
  }
  for (atp_retired_t *r = e->retired_waiting, *next; r; r = next) {
    next = r->next;
    atp_free(r->ptr);
    atp_free(r);
  }
  atp_table_free(e->interns, e->intern_max, sizeof *e->interns);
  atp_table_free(e->intern_index, (size_t)e->intern_mask + 1, sizeof *e->intern_index);
  atp_table_free(e->positions, e->config.positions_max, sizeof *e->positions);
  atp_table_free(e->pos_cold, e->config.positions_max, sizeof *e->pos_cold);
  atp_table_free(e->position_index, (size_t)e->position_mask + 1,
                 sizeof *e->position_index);
  atp_free(e->groups);
  atp_free(e->group_index);
  atp__inbox_destroy(&e->inbox);
  atp__epoch_destroy(e);
  pthread_mutex_destroy(&e->create_lock);
  atp_free(e);
}

void atp_engine_stats(const atp_engine_t *e, atp_engine_stats_t *out) {
  memset(out, 0, sizeof *out);
  out->positions = atomic_load_explicit(&e->position_count, memory_order_relaxed);
  out->positions_max = e->config.positions_max;
  out->idempotency_max = e->config.idempotency_max;
  for (int i = 0; i < 5; i++) {
    int64_t v = 0;
    for (int shard = 0; shard < ATP_SHARDS; shard++)
      v += (int64_t)atomic_load_explicit(
          &((atp_engine_t *)e)->status_count[shard][i].value, memory_order_relaxed);
    v -= (int64_t)atomic_load_explicit(&((atp_engine_t *)e)->purged_count[i].value,
                                       memory_order_relaxed);
    out->reservations_by_status[i] = v > 0 ? (uint64_t)v : 0;
  }
  out->expirations =
      atomic_load_explicit(&((atp_engine_t *)e)->expirations, memory_order_relaxed);
  out->idempotency_ids = atp__keyed_live(&e->idempotency_table);
  uint32_t ng = atomic_load_explicit(&e->group_count, memory_order_acquire);
  for (uint32_t i = 0; i < ng; i++)
    if (atomic_load_explicit(&e->groups[i].current, memory_order_acquire))
      out->groups++;
}

/* --- replay --------------------------------------------------------------------------
 */

static int apply_position(atp_engine_t *e, const atp_change_t *rec) {
  const atp_change_position_t *c = &rec->u.position;
  if (!atp__id_valid(c->sku) || !atp__id_valid(c->location)) return ATP_EBADREQ;
  uint32_t idx;
  int rc = atp__position_find_or_create(e, c->sku, c->location, &idx);
  if (rc) return rc;
  atp_position_record_t *p = &e->positions[idx];
  atp_position_cold_t *cold = atp__position_cold(e, p);
  uint64_t version = c->version & ATP_SEQ_VERSION_MASK;
  if (rec->cause == ATP_CAUSE_HISTORY) {
    /* A snapshot's history entry: the counters came whole with the position. */
    if (c->occurred_at_ms == ATP_TIME_NONE) return ATP_EBADREQ;
    atp__history_push(e, p, c->occurred_at_ms, c->d_on_hand, atp__now(e));
    return 0;
  }
  if (rec->cause == ATP_CAUSE_SNAPSHOT) {
    cold->base_version = version;
    if (c->occurred_at_ms != ATP_TIME_NONE)
      atp__history_set_floor(e, p, c->occurred_at_ms);
  } else if (version <= cold->base_version) {
    return 0; /* the snapshot this engine was imported from holds it already */
  }
  atomic_fetch_add(&p->on_hand, c->d_on_hand);
  atomic_fetch_add(&p->safety, c->d_safety_stock);
  atomic_fetch_add(&p->reserved, c->d_reserved);
  atomic_fetch_add(&p->committed, c->d_committed);
  atomic_fetch_add(&p->free,
                   c->d_on_hand - c->d_safety_stock - c->d_reserved - c->d_committed);
  if (c->counted_at_ms != ATP_TIME_NONE) atomic_store(&p->counted_at, c->counted_at_ms);
  if (rec->cause != ATP_CAUSE_SNAPSHOT && c->occurred_at_ms != ATP_TIME_NONE &&
      c->d_on_hand)
    atp__history_push(e, p, c->occurred_at_ms, c->d_on_hand, atp__now(e));
  /* Versions: replayed records may come in any order; keep the largest. */
  uint64_t seq = atomic_load(&p->seq);
  if (version > seq) atomic_store(&p->seq, version);
  return 0;
}

/* One record, in an epoch bracket (epoch.c): reservations and ids are found
 * through the keyed chains, which a running ticker may change meanwhile. */
static int apply_one(atp_engine_t *e, const atp_change_t *c) {
  int rc;
  atp__epoch_enter(e);
  switch (c->kind) {
    case ATP_CHANGE_POSITION:
      rc = apply_position(e, c);
      break;
    case ATP_CHANGE_RESERVATION:
      rc = atp__reservation_apply(e, c);
      break;
    case ATP_CHANGE_GROUP:
      if (c->u.group.location_count)
        rc = atp__group_put(e, c->u.group.name, c->u.group.locations,
                            c->u.group.location_count, NULL, false);
      else
        rc = atp__group_install(e, c->u.group.name, NULL, NULL, NULL, false);
      if (rc == ATP_ENOTFOUND) rc = 0;
      break;
    case ATP_CHANGE_IDEMPOTENCY:
      rc = atp__idem_apply(e, c);
      break;
    default:
      rc = ATP_EBADREQ;
  }
  atp__epoch_exit(e);
  return rc;
}

/* A restore applies millions of position records at random places of the
 * position index: each probe is a cache miss, most of a large restore's time.
 * Prefetching the index entry of the record APPLY_DISTANCE ahead overlaps
 * them (a snapshot batch holds hundreds of records; the history entries that
 * follow their position hit the line their position brought in). */
#define APPLY_DISTANCE 8

static void apply_prefetch(const atp_engine_t *e, const atp_change_t *c) {
  if (c->kind == ATP_CHANGE_POSITION && c->cause != ATP_CAUSE_HISTORY)
    (void)atp__position_prefetch_index(e, c->u.position.sku, c->u.position.location);
}

int atp_engine_apply(atp_engine_t *e, const atp_change_t *records, uint32_t count) {
  for (uint32_t i = 0; i < count && i < APPLY_DISTANCE; i++)
    apply_prefetch(e, &records[i]);
  for (uint32_t i = 0; i < count; i++) {
    if (i + APPLY_DISTANCE < count) apply_prefetch(e, &records[i + APPLY_DISTANCE]);
    int rc = apply_one(e, &records[i]);
    if (rc) return rc;
  }
  return 0;
}

/* --- the ticker ---------------------------------------------------------------
 * Refs name records: a reservation is its index+1, an idempotency record its
 * index+1 with ATP_REF_IDEM set. The wheel hands back the timer embedded in a
 * record; which table the timer lies in tells its kind. */

static atp_timer_t *ref_timer(atp_engine_t *e, uint32_t ref) {
  return ref & ATP_REF_IDEM ? &e->idempotency_records[(ref & ~ATP_REF_IDEM) - 1].timer
                            : &e->reservation_records[ref - 1].timer;
}

static uint32_t timer_ref(const atp_engine_t *e, const atp_timer_t *t) {
  const char *p = (const char *)t;
  const char *idem = (const char *)e->idempotency_records;
  if (p >= idem &&
      p < idem + (size_t)e->config.idempotency_max * sizeof *e->idempotency_records)
    return (uint32_t)((p - idem) / sizeof *e->idempotency_records + 1) | ATP_REF_IDEM;
  uint32_t idx = (uint32_t)((p - (const char *)e->reservation_records) /
                            sizeof *e->reservation_records);
  ATP_ASSERT(idx < e->config.reservations_max);
  return idx + 1;
}

static atp_inbox_link_t *ref_link(atp_engine_t *e, uint32_t ref) {
  return ref & ATP_REF_IDEM ? &e->idempotency_records[(ref & ~ATP_REF_IDEM) - 1].inbox
                            : &e->reservation_records[ref - 1].inbox;
}

/* Where a record belongs now, read without its flag: good enough to file it,
 * since fire() decides again under the flag, and every change that matters
 * re-queues the record after it is made. ATP_TIME_NONE for nowhere. */
static int64_t record_due(atp_engine_t *e, uint32_t ref, int64_t now_ms) {
  if (ref & ATP_REF_IDEM) {
    return atp__idem_due(e, (ref & ~ATP_REF_IDEM) - 1, now_ms);
  }
  return atp__reservation_due(e, ref - 1, now_ms);
}

/* A record's time came (or it was filed already due): expire it, purge it, or
 * file it again. Returns 1 if a reservation expired. */
static uint32_t fire(atp_engine_t *e, uint32_t ref, int64_t now_ms) {
  atp_timer_t *t = ref_timer(e, ref);
  if (ref & ATP_REF_IDEM) {
    int64_t due = record_due(e, ref, now_ms);
    if (due == ATP_TIME_NONE) return 0;
    if (due > now_ms)
      atp_timerwheel_add(&e->wheel, t, due);
    else
      atp__idem_purge(e, (ref & ~ATP_REF_IDEM) - 1);
    return 0;
  }
  int64_t due;
  bool purge_now;
  bool expired = atp__reservation_fire(e, ref - 1, now_ms, &due, &purge_now);
  if (purge_now)
    atp__reservation_purge(e, ref - 1);
  else if (due != ATP_TIME_NONE)
    atp_timerwheel_add(&e->wheel, t, due);
  return expired ? 1 : 0;
}

static void on_timer(atp_timerwheel_t *w, atp_timer_t *t, int64_t now_ms, void *ctx) {
  atp_engine_t *e = ctx;
  e->tick_expired += fire(e, timer_ref(e, t), now_ms);
}

/* Files a record anew from its state; one already due is handled now, so the
 * first tick after a restart expires what is overdue. */
static uint32_t refile(atp_engine_t *e, uint32_t ref, int64_t now_ms) {
  atp_timerwheel_remove(&e->wheel, ref_timer(e, ref));
  int64_t due = record_due(e, ref, now_ms);
  if (due == ATP_TIME_NONE) return 0;
  if (due <= now_ms) return fire(e, ref, now_ms);
  atp_timerwheel_add(&e->wheel, ref_timer(e, ref), due);
  return 0;
}

/* --- look-ahead
 * The ticker touches records long after the workers did, so each costs a few
 * cache misses: its links, its state and status, and its key's bucket head
 * when it is purged. The wheel's walk and the inboxes' walk below fetch a
 * record when it enters their window, and the bucket head of a record that
 * will be purged ATP_TIMERWHEEL_SOON steps before its turn. */

ATP_PREFETCHER void prefetch_record(const atp_engine_t *e, uint32_t ref) {
  const atp_keyed_table_t *t =
      ref & ATP_REF_IDEM ? &e->idempotency_table : &e->reservation_table;
  uint32_t idx = (ref & ~ATP_REF_IDEM) - 1;
  if (ref & ATP_REF_IDEM) {
    const atp_idempotency_record_t *r = &e->idempotency_records[idx];
    __builtin_prefetch(r, 1);
    __builtin_prefetch(&r->timer, 1);
    __builtin_prefetch(&r->inbox, 1);
  } else {
    const atp_reservation_record_t *r = &e->reservation_records[idx];
    __builtin_prefetch(r, 1);         /* status, end time */
    __builtin_prefetch(&r->timer, 1); /* wheel and inbox links */
  }
  __builtin_prefetch(&t->entries[idx], 1);
}

/* The bucket head a purge unlinks the record from. */
ATP_PREFETCHER void prefetch_key(const atp_engine_t *e, uint32_t ref) {
  const atp_keyed_table_t *t =
      ref & ATP_REF_IDEM ? &e->idempotency_table : &e->reservation_table;
  uint32_t idx = (ref & ~ATP_REF_IDEM) - 1;
  __builtin_prefetch(&t->heads[t->entries[idx].hash & t->bucket_mask], 1);
}

/* Whether the record will be purged when its turn comes, judged from its
 * state as it is now. Only then is its bucket head worth fetching: most
 * records a drain or a slot hands over are filed again, not purged. A wrong
 * guess costs a wasted fetch or a miss. */
static bool purge_bound(atp_engine_t *e, uint32_t ref, int64_t now_ms) {
  if (ref & ATP_REF_IDEM) {
    int64_t due = record_due(e, ref, now_ms);
    return due != ATP_TIME_NONE && due <= now_ms;
  }
  return atp__reservation_purge_bound(e, ref - 1, now_ms);
}

ATP_PREFETCHER void look_ahead(atp_engine_t *e, uint32_t ref, uint32_t steps,
                               int64_t now_ms) {
  if (steps == ATP_TIMERWHEEL_AHEAD)
    prefetch_record(e, ref);
  else if (purge_bound(e, ref, now_ms))
    prefetch_key(e, ref);
}

static void on_timer_ahead(const atp_timer_t *t, uint32_t steps, int64_t now_ms,
                           void *ctx) {
  atp_engine_t *e = ctx;
  look_ahead(e, timer_ref(e, t), steps, now_ms);
}

/* --- draining the inboxes
 * An inbox's overflow is a chain through records, its ring a run of refs to
 * them: on a chain the next record is known only once this one's link is in,
 * on a ring at once, which is why the inboxes are rings. The walk keeps a
 * window of the next refs, as the wheel's does. Handling a record never
 * changes the inbox links of the records behind it: a record's link changes
 * only when it is queued again, which its flag prevents until its own turn. */

#define AHEAD ATP_TIMERWHEEL_AHEAD
#define SOON  ATP_TIMERWHEEL_SOON

typedef struct {
  uint32_t window[AHEAD];
  uint32_t at, count, rest;
  atp_inbox_ring_t *from; /* refs taken from this ring, else a chain */
  uint64_t next, end;     /* the ring's cells still to take */
  int64_t now_ms;
} drain_t;

/* The next ref of a ring, 0 at a cell claimed but not written yet (the walk
 * ends there; the rest waits for the next tick). */
static uint32_t ring_take(drain_t *d) {
  _Atomic uint32_t *cell = &d->from->refs[d->next & (ATP_INBOX_RING - 1)];
  uint32_t ref = atomic_load_explicit(cell, memory_order_acquire);
  if (!ref) {
    d->end = d->next;
    return 0;
  }
  atomic_store_explicit(cell, 0, memory_order_relaxed);
  d->next++;
  return ref;
}

static void drain_fill(atp_engine_t *e, drain_t *d) {
  while (d->count < AHEAD) {
    uint32_t ref = d->from ? (d->next == d->end ? 0 : ring_take(d)) : d->rest;
    if (!ref) return;
    d->window[(d->at + d->count++) % AHEAD] = ref;
    /* On a chain the link is read after the record's lines are asked for, so
     * they come in together. */
    prefetch_record(e, ref);
    if (!d->from)
      d->rest = atomic_load_explicit(&ref_link(e, ref)->next, memory_order_relaxed);
  }
}

static uint32_t drain_next(atp_engine_t *e, drain_t *d) {
  if (!d->count) return 0;
  uint32_t ref = d->window[d->at];
  d->at = (d->at + 1) % AHEAD;
  d->count--;
  drain_fill(e, d);
  if (d->count >= SOON) {
    uint32_t later = d->window[(d->at + SOON - 1) % AHEAD];
    if (purge_bound(e, later, d->now_ms)) prefetch_key(e, later);
  }
  return ref;
}

static uint32_t drain_walk(atp_engine_t *e, drain_t *d) {
  uint32_t expired = 0;
  drain_fill(e, d);
  for (uint32_t ref; (ref = drain_next(e, d));) {
    /* Cleared before the state is read: a change after this re-queues it. */
    atomic_store_explicit(&ref_link(e, ref)->queued, 0, memory_order_seq_cst);
    expired += refile(e, ref, d->now_ms);
  }
  return expired;
}

static uint32_t drain_chain(atp_engine_t *e, uint32_t list, int64_t now_ms) {
  drain_t d = {.rest = list, .now_ms = now_ms};
  return drain_walk(e, &d);
}

/* The refs queued on a ring before this tick (those queued while it runs,
 * the ticker's own included, wait for the next). */
static uint32_t drain_ring(atp_engine_t *e, atp_inbox_ring_t *ring, int64_t now_ms) {
  drain_t d = {.from = ring, .now_ms = now_ms};
  d.next = atomic_load_explicit(&ring->head, memory_order_relaxed);
  d.end = atomic_load_explicit(&ring->tail, memory_order_acquire);
  uint32_t expired = drain_walk(e, &d);
  /* release: the zeroed cells are free for the threads that see it */
  atomic_store_explicit(&ring->head, d.next, memory_order_release);
  return expired;
}

/* Takes what was retired since the last tick and stamps it (see atp__retire
 * for why the stamp is taken here): before the tick's scan of the reader
 * slots, which must come after every unlink it judges. */
static void collect_retired(atp_engine_t *e) {
  uint64_t epoch = atp__epoch_now(e);
  atp_retired_t *fresh =
      atomic_exchange_explicit(&e->retired, NULL, memory_order_acquire);
  while (fresh) {
    atp_retired_t *r = fresh;
    fresh = r->next;
    r->epoch = epoch;
    r->next = e->retired_waiting;
    e->retired_waiting = r;
  }
}

/* Frees the retired blocks no reader may hold: stamped before oldest and at
 * least ATP_GRACE_EPOCHS ago. */
static void reclaim_retired(atp_engine_t *e, uint64_t oldest) {
  uint64_t epoch = atp__epoch_now(e);
  for (atp_retired_t **p = &e->retired_waiting; *p;) {
    atp_retired_t *r = *p;
    if (r->epoch < oldest && epoch - r->epoch >= ATP_GRACE_EPOCHS) {
      *p = r->next;
      atp_free(r->ptr);
      atp_free(r);
    } else {
      p = &r->next;
    }
  }
}

void atp_engine_prefetch(const atp_engine_t *e, atp_prefetch_kind_t kind, atp_str_t id,
                         atp_str_t sku, atp_str_t location, atp_prefetch_t *out) {
  out->kind = kind;
  if (kind == ATP_PREFETCH_RESERVE) {
    /* A reservation's id is filed under its bytes' hash (reservations.c). */
    out->id_hash = atp__hash_bytes(id.ptr, id.len);
    atp__keyed_prefetch_head(&e->reservation_table, out->id_hash);
  } else {
    /* Adjustments and counts share the id namespace: one bucket either way. */
    out->id_hash = atp__idem_key_hash(ATP_IDEM_ADJUST, id);
    atp__keyed_prefetch_head(&e->idempotency_table, out->id_hash);
  }
  out->position = sku.len && location.len;
  if (out->position)
    out->position_hash = atp__position_prefetch_index(e, sku, location);
}

void atp_engine_prefetch_next(const atp_engine_t *e, const atp_prefetch_t *pf) {
  atp__keyed_prefetch_chain(
      pf->kind == ATP_PREFETCH_RESERVE ? &e->reservation_table : &e->idempotency_table,
      pf->id_hash);
  if (pf->position) atp__position_prefetch(e, pf->position_hash);
}

uint32_t atp_engine_tick(atp_engine_t *e) {
  int64_t now_ms = atp__now(e);
  e->tick_count++;
  /* Everything this tick unlinks is stamped with the new epoch. */
  atp__epoch_advance(e);
  atp_timerwheel_start(&e->wheel, now_ms);
  /* First file what changed since the last tick, then run the slots due. */
  uint32_t expired = 0;
  for (int shard = 0; shard < ATP_SHARDS; shard++) {
    expired += drain_ring(e, &e->inbox.rings[shard], now_ms);
    uint32_t list = (uint32_t)atomic_exchange_explicit(&e->inbox.overflow[shard].value,
                                                       0, memory_order_acquire);
    expired += drain_chain(e, list, now_ms);
  }
  e->tick_expired = 0;
  atp_timerwheel_run(&e->wheel, now_ms);
  expired += e->tick_expired;
  /* One scan of the reader slots for all three, after this tick's unlinks. */
  collect_retired(e);
  uint64_t oldest = atp__epoch_oldest(e);
  uint64_t epoch = atp__epoch_now(e);
  atp__keyed_reclaim(&e->reservation_table, epoch, oldest);
  atp__keyed_reclaim(&e->idempotency_table, epoch, oldest);
  reclaim_retired(e, oldest);
  return expired;
}
