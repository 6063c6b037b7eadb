/* expiry.c - the ticker: a hierarchical timer wheel for reservation expiry and
 * for purging ended reservations and idempotency ids past their retention.
 *
 * Four levels of 256 slots of 64 ms ticks (16 s, 70 min, 12 days, 8.7 years).
 * A record sits in at most one slot; cascading moves it down a level as its
 * time approaches, so each record is touched a bounded number of times and a
 * tick costs the work due plus at most four slot cascades, whatever the number
 * of live reservations.
 *
 * The wheel belongs to the one thread that calls atp_engine_tick. Other threads
 * never touch it: they put the record's ref on their shard's inbox, a ring the
 * ticker reads in order (see atp_inbox_t), or when that is full on a Treiber
 * stack that the ticker drains whole with one exchange (so it has no ABA
 * problem), and the ticker decides from the record's current state where it
 * belongs. A flag per record keeps it queued at most once.
 */
#include <string.h>

#include "atp/memory.h"
#include "engine_internal.h"

#define HEAD_FLAG          0x40000000u /* wheel_prev of a list head: HEAD_FLAG | slot */
#define SLOT_BITS          8
#define JUMP_REBUILD_TICKS (1LL << 24)

static uint32_t *node_prev(atp_engine_t *e, uint32_t ref) {
  return ref & ATP_REF_IDEM ? &e->irecs[(ref & ~ATP_REF_IDEM) - 1].wheel_prev
                            : &e->rrecs[ref - 1].wheel_prev;
}
static uint32_t *node_next(atp_engine_t *e, uint32_t ref) {
  return ref & ATP_REF_IDEM ? &e->irecs[(ref & ~ATP_REF_IDEM) - 1].wheel_next
                            : &e->rrecs[ref - 1].wheel_next;
}
static int64_t *node_due(atp_engine_t *e, uint32_t ref) {
  return ref & ATP_REF_IDEM ? &e->irecs[(ref & ~ATP_REF_IDEM) - 1].wheel_due_ms
                            : &e->rrecs[ref - 1].wheel_due_ms;
}
static _Atomic uint32_t *node_inbox_next(atp_engine_t *e, uint32_t ref) {
  return ref & ATP_REF_IDEM ? &e->irecs[(ref & ~ATP_REF_IDEM) - 1].inbox_next
                            : &e->rrecs[ref - 1].inbox_next;
}
static _Atomic uint32_t *node_queued(atp_engine_t *e, uint32_t ref) {
  return ref & ATP_REF_IDEM ? &e->irecs[(ref & ~ATP_REF_IDEM) - 1].inbox_queued
                            : &e->rrecs[ref - 1].inbox_queued;
}

static void inbox_push(atp_engine_t *e, uint32_t ref, _Atomic uint32_t *queued,
                       _Atomic uint32_t *link) {
  if (atomic_exchange_explicit(queued, 1, memory_order_acq_rel)) return;
  int shard = atp_shard();
  atp_inbox_t *ring = &e->wheel.inboxes[shard];
  uint64_t t = atomic_load_explicit(&ring->tail, memory_order_relaxed);
  /* head (acquire): the slots before it were zeroed by the ticker and are
   * free again. */
  while (t - atomic_load_explicit(&ring->head, memory_order_acquire) < ATP_INBOX_RING) {
    if (atomic_compare_exchange_weak_explicit(
            &ring->tail, &t, t + 1, memory_order_relaxed, memory_order_relaxed)) {
      /* release: the ticker that reads the ref sees the change that queued it */
      atomic_store_explicit(&ring->refs[t & (ATP_INBOX_RING - 1)], ref,
                            memory_order_release);
      return;
    }
  }
  _Atomic uint64_t *inbox = &e->wheel.inbox[shard].value;
  uint64_t head = atomic_load_explicit(inbox, memory_order_relaxed);
  do {
    atomic_store_explicit(link, (uint32_t)head, memory_order_relaxed);
  } while (!atomic_compare_exchange_weak_explicit(
      inbox, &head, ref, memory_order_release, memory_order_relaxed));
}

void atp_wheel_enqueue_res(atp_engine_t *e, uint32_t idx) {
  atp_rrec_t *r = &e->rrecs[idx];
  inbox_push(e, idx + 1, &r->inbox_queued, &r->inbox_next);
}

void atp_wheel_enqueue_idem(atp_engine_t *e, uint32_t idx) {
  atp_irec_t *r = &e->irecs[idx];
  inbox_push(e, (idx + 1) | ATP_REF_IDEM, &r->inbox_queued, &r->inbox_next);
}

static void wheel_unlink(atp_engine_t *e, uint32_t ref) {
  int64_t *due = node_due(e, ref);
  if (*due == ATP_TIME_NONE) return;
  uint32_t prev = *node_prev(e, ref), next = *node_next(e, ref);
  if (prev & HEAD_FLAG) {
    uint32_t slot = prev & ~HEAD_FLAG;
    e->wheel.slots[slot >> SLOT_BITS][slot & (ATP_WHEEL_SLOTS - 1)] = next;
  } else {
    *node_next(e, prev) = next;
  }
  if (next) *node_prev(e, next) = prev;
  *due = ATP_TIME_NONE;
}

static void wheel_insert(atp_engine_t *e, uint32_t ref, int64_t due_ms) {
  ATP_ASSERT(*node_due(e, ref) == ATP_TIME_NONE);
  atp_wheel_t *w = &e->wheel;
  int64_t due_tick = due_ms / ATP_WHEEL_TICK_MS + (due_ms % ATP_WHEEL_TICK_MS != 0);
  if (due_tick <= w->now_tick) due_tick = w->now_tick + 1;
  int64_t delta = due_tick - w->now_tick;
  uint32_t level = 0;
  while (level < ATP_WHEEL_LEVELS - 1 && delta >= (1LL << (SLOT_BITS * (level + 1))))
    level++;
  if (delta >= (1LL << (SLOT_BITS * ATP_WHEEL_LEVELS)))
    due_tick =
        w->now_tick + (1LL << (SLOT_BITS * ATP_WHEEL_LEVELS)) - 1; /* re-filed later */
  uint32_t index = (uint32_t)(due_tick >> (SLOT_BITS * level)) & (ATP_WHEEL_SLOTS - 1);
  uint32_t slot = level << SLOT_BITS | index;
  uint32_t head = w->slots[level][index];
  *node_prev(e, ref) = HEAD_FLAG | slot;
  *node_next(e, ref) = head;
  if (head) *node_prev(e, head) = ref;
  w->slots[level][index] = ref;
  *node_due(e, ref) = due_ms;
}

/* Where a record belongs now, read without its flag: good enough to file it,
 * since fire() decides again under the flag, and every change that matters
 * re-queues the record after it is made. ATP_TIME_NONE for nowhere. */
static int64_t record_due(atp_engine_t *e, uint32_t ref, int64_t now_ms) {
  if (ref & ATP_REF_IDEM) {
    uint32_t idx = (ref & ~ATP_REF_IDEM) - 1;
    uint32_t st =
        atomic_load_explicit(&e->itable.slots[idx].state, memory_order_acquire);
    if (st == ATP_REC_DEAD) return now_ms;
    if (st != ATP_REC_LIVE) return ATP_TIME_NONE;
    return e->irecs[idx].created_at_ms + e->config.idempotency_ttl_ms;
  }
  uint32_t idx = ref - 1;
  uint32_t st = atomic_load_explicit(&e->rtable.slots[idx].state, memory_order_acquire);
  if (st == ATP_REC_DEAD) return now_ms;
  if (st != ATP_REC_LIVE) return ATP_TIME_NONE;
  atp_rrec_t *r = &e->rrecs[idx];
  int status = atomic_load_explicit(&r->status, memory_order_acquire);
  if (status == ATP_STATUS_HELD)
    return atomic_load_explicit(&r->expires_at_ms, memory_order_acquire);
  if (status == ATP_STATUS_COMMITTED) return ATP_TIME_NONE;
  int64_t ended = atomic_load_explicit(&r->ended_at_ms, memory_order_acquire);
  return ended == ATP_TIME_NONE ? now_ms : ended + e->config.ended_ttl_ms;
}

/* Frees what a record owns beyond itself, then unlinks it. */
static void purge(atp_engine_t *e, uint32_t ref) {
  if (ref & ATP_REF_IDEM) {
    uint32_t idx = (ref & ~ATP_REF_IDEM) - 1;
    if (atomic_load_explicit(&e->itable.slots[idx].state, memory_order_acquire) ==
        ATP_REC_LIVE)
      atp_idem_purged(e, idx);
    atp_keyed_retire(&e->itable, idx, e->tick_count, e->tick_mono_ns);
    return;
  }
  uint32_t idx = ref - 1;
  atp_rrec_t *r = &e->rrecs[idx];
  if (atomic_load_explicit(&e->rtable.slots[idx].state, memory_order_acquire) ==
      ATP_REC_LIVE) {
    int status = atomic_load_explicit(&r->status, memory_order_acquire);
    /* One writer (this thread), so no locked instruction. */
    _Atomic uint64_t *purged = &e->purged_count[status].value;
    atomic_store_explicit(purged,
                          atomic_load_explicit(purged, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    atp_rrec_purged(e, idx);
  }
  /* Readers may still copy from these: they are freed after the grace period,
   * like the record itself is reused only after it. */
  if (r->text && r->text != r->inline_text) atp_retire(e, r->text);
  atp_rline_t *lines = atomic_load_explicit(&r->lines, memory_order_relaxed);
  if (lines && lines != r->inline_lines) atp_retire(e, lines);
  atomic_store_explicit(&r->lines, r->inline_lines, memory_order_relaxed);
  atomic_store_explicit(&r->line_count, 0, memory_order_relaxed);
  atp_keyed_retire(&e->rtable, idx, e->tick_count, e->tick_mono_ns);
}

/* A record's time came (or it was filed already due): expire it, purge it, or
 * file it again. Returns 1 if a reservation expired. */
static uint32_t fire(atp_engine_t *e, uint32_t ref, int64_t now_ms) {
  if (ref & ATP_REF_IDEM) {
    int64_t due = record_due(e, ref, now_ms);
    if (due == ATP_TIME_NONE) return 0;
    if (due > now_ms)
      wheel_insert(e, ref, due);
    else
      purge(e, ref);
    return 0;
  }
  int64_t due;
  bool purge_now;
  bool expired = atp_rrec_due(e, ref - 1, now_ms, &due, &purge_now);
  if (purge_now)
    purge(e, ref);
  else if (due != ATP_TIME_NONE)
    wheel_insert(e, ref, due);
  return expired ? 1 : 0;
}

/* Files a record anew from its state; one already due is handled now, so the
 * first tick after a restart expires what is overdue. */
static uint32_t refile(atp_engine_t *e, uint32_t ref, int64_t now_ms) {
  wheel_unlink(e, ref);
  int64_t due = record_due(e, ref, now_ms);
  if (due == ATP_TIME_NONE) return 0;
  if (due <= now_ms) return fire(e, ref, now_ms);
  wheel_insert(e, ref, due);
  return 0;
}

static uint32_t take_slot(atp_engine_t *e, uint32_t level, uint32_t index) {
  uint32_t list = e->wheel.slots[level][index];
  e->wheel.slots[level][index] = 0;
  return list;
}

/* --- walking a list with look-ahead
 * A slot's list and an inbox's overflow are chains through records, and an
 * inbox's ring a run of refs to them. The ticker touches the records long
 * after the workers did, so each costs a few cache misses: its links, its
 * state and status, and its key's bucket head when it is purged. On a chain
 * the next record is known only once this one's link is in; on a ring it is
 * known at once, which is why the inboxes are rings. The walk keeps a window of the
 * next AHEAD records, fetched as they enter it, and fetches the bucket head of a record
 * that will be purged KEY_AHEAD steps before its turn, once its hash has arrived.
 * Handling a record never changes the links of the records behind it: a record's wheel
 * links change only when it is itself filed, and its inbox link only when it is queued
 * again, which its flag prevents until its own turn. */

#define AHEAD     8
#define KEY_AHEAD 3

typedef struct {
  uint32_t ring[AHEAD];
  uint32_t at, count, rest;
  atp_inbox_t *from;  /* refs taken from this inbox's ring, else a chain */
  uint64_t next, end; /* the ring's slots still to take */
  bool inbox;         /* linked through inbox_next, else through wheel_next */
  bool keys;          /* records may be purged here: fetch their bucket heads */
  int64_t now_ms;     /* the tick's time, to tell which records will be */
} walk_t;

static uint32_t walk_link(atp_engine_t *e, const walk_t *w, uint32_t ref) {
  if (!w->inbox) return *node_next(e, ref);
  return atomic_load_explicit(node_inbox_next(e, ref), memory_order_relaxed);
}

ATP_PREFETCHER void prefetch_record(const atp_engine_t *e, uint32_t ref) {
  const atp_keyed_t *t = ref & ATP_REF_IDEM ? &e->itable : &e->rtable;
  uint32_t idx = (ref & ~ATP_REF_IDEM) - 1;
  if (ref & ATP_REF_IDEM) {
    const atp_irec_t *r = &e->irecs[idx];
    __builtin_prefetch(r, 1);
    __builtin_prefetch(&r->wheel_prev, 1);
    __builtin_prefetch(&r->inbox_next, 1);
  } else {
    const atp_rrec_t *r = &e->rrecs[idx];
    __builtin_prefetch(r, 1);              /* status, end time */
    __builtin_prefetch(&r->line_count, 1); /* wheel and inbox links */
  }
  __builtin_prefetch(&t->slots[idx], 1);
}

/* Whether the record will be purged when its turn comes, judged from its
 * lines as they are now (asked for when it entered the walk's window). Only then is its
 * bucket head worth fetching: most records a drain or a slot hands over are
 * filed again, not purged. A wrong guess costs a wasted fetch or a miss. */
static bool purge_bound(atp_engine_t *e, uint32_t ref, int64_t now_ms) {
  int64_t due = record_due(e, ref, now_ms);
  if (due == ATP_TIME_NONE || due > now_ms) return false;
  if (ref & ATP_REF_IDEM) return true;
  /* A held reservation that is due expires now and is purged only after its
   * retention; a dead record is purged whatever its stale status says. */
  uint32_t idx = ref - 1;
  return atomic_load_explicit(&e->rtable.slots[idx].state, memory_order_relaxed) ==
             ATP_REC_DEAD ||
         atomic_load_explicit(&e->rrecs[idx].status, memory_order_relaxed) !=
             ATP_STATUS_HELD;
}

/* The bucket head a purge unlinks the record from. */
ATP_PREFETCHER void prefetch_key(const atp_engine_t *e, uint32_t ref) {
  const atp_keyed_t *t = ref & ATP_REF_IDEM ? &e->itable : &e->rtable;
  uint32_t idx = (ref & ~ATP_REF_IDEM) - 1;
  __builtin_prefetch(&t->heads[t->slots[idx].hash & t->bucket_mask], 1);
}

/* The next ref of an inbox's ring, 0 at a slot claimed but not written yet
 * (the walk ends there; the rest waits for the next tick). */
static uint32_t ring_take(walk_t *w) {
  _Atomic uint32_t *slot = &w->from->refs[w->next & (ATP_INBOX_RING - 1)];
  uint32_t ref = atomic_load_explicit(slot, memory_order_acquire);
  if (!ref) {
    w->end = w->next;
    return 0;
  }
  atomic_store_explicit(slot, 0, memory_order_relaxed);
  w->next++;
  return ref;
}

static void walk_fill(atp_engine_t *e, walk_t *w) {
  while (w->count < AHEAD) {
    uint32_t ref = w->from ? (w->next == w->end ? 0 : ring_take(w)) : w->rest;
    if (!ref) return;
    w->ring[(w->at + w->count++) % AHEAD] = ref;
    /* On a chain the link is read after the record's lines are asked for, so
     * they come in together. */
    prefetch_record(e, ref);
    if (!w->from) w->rest = walk_link(e, w, ref);
  }
}

static void walk_start(atp_engine_t *e, walk_t *w, uint32_t list, bool inbox, bool keys,
                       int64_t now_ms) {
  w->at = w->count = 0;
  w->rest = list;
  w->from = NULL;
  w->inbox = inbox;
  w->keys = keys;
  w->now_ms = now_ms;
  walk_fill(e, w);
}

/* The next record of the list, 0 at its end. The links of the records behind
 * it are read already, so the caller may file it again at once. */
static uint32_t walk_next(atp_engine_t *e, walk_t *w) {
  if (!w->count) return 0;
  uint32_t ref = w->ring[w->at];
  w->at = (w->at + 1) % AHEAD;
  w->count--;
  walk_fill(e, w);
  if (w->keys && w->count >= KEY_AHEAD) {
    uint32_t later = w->ring[(w->at + KEY_AHEAD - 1) % AHEAD];
    if (purge_bound(e, later, w->now_ms)) prefetch_key(e, later);
  }
  return ref;
}

static uint32_t run_list(atp_engine_t *e, uint32_t list, int64_t now_ms,
                         bool fire_due) {
  uint32_t expired = 0;
  walk_t w;
  walk_start(e, &w, list, false, fire_due, now_ms);
  for (uint32_t ref; (ref = walk_next(e, &w));) {
    *node_due(e, ref) = ATP_TIME_NONE; /* detached with its whole list */
    if (fire_due) {
      expired += fire(e, ref, now_ms);
    } else {
      int64_t due = record_due(e, ref, now_ms);
      if (due != ATP_TIME_NONE) wheel_insert(e, ref, due);
    }
  }
  return expired;
}

static uint32_t advance(atp_engine_t *e, int64_t target_tick, int64_t now_ms) {
  atp_wheel_t *w = &e->wheel;
  uint32_t expired = 0;
  if (target_tick - w->now_tick > JUMP_REBUILD_TICKS) {
    /* The clock jumped (tests, a suspended VM): take everything out and file
     * it again from the new time instead of walking every tick between. */
    uint32_t all = 0;
    for (uint32_t l = 0; l < ATP_WHEEL_LEVELS; l++) {
      for (uint32_t i = 0; i < ATP_WHEEL_SLOTS; i++) {
        uint32_t list = take_slot(e, l, i);
        while (list) {
          uint32_t ref = list;
          list = *node_next(e, ref);
          *node_next(e, ref) = all;
          all = ref;
        }
      }
    }
    w->now_tick = target_tick;
    return run_list(e, all, now_ms, true);
  }
  while (w->now_tick < target_tick) {
    int64_t t = ++w->now_tick;
    for (uint32_t l = ATP_WHEEL_LEVELS - 1; l > 0; l--) {
      /* level l cascades when every lower level's index wrapped to 0 */
      if ((t & ((1LL << (SLOT_BITS * l)) - 1)) == 0) {
        uint32_t index = (uint32_t)(t >> (SLOT_BITS * l)) & (ATP_WHEEL_SLOTS - 1);
        run_list(e, take_slot(e, l, index), now_ms, false);
      }
    }
    expired +=
        run_list(e, take_slot(e, 0, (uint32_t)t & (ATP_WHEEL_SLOTS - 1)), now_ms, true);
  }
  return expired;
}

static void reclaim_retired(atp_engine_t *e) {
  int64_t now_ns = e->tick_mono_ns;
  atp_retired_t *fresh =
      atomic_exchange_explicit(&e->retired, NULL, memory_order_acquire);
  while (fresh) {
    atp_retired_t *r = fresh;
    fresh = r->next;
    r->tick = e->tick_count;
    r->mono_ns = now_ns;
    r->next = e->retired_waiting;
    e->retired_waiting = r;
  }
  for (atp_retired_t **p = &e->retired_waiting; *p;) {
    atp_retired_t *r = *p;
    if (r->tick + 20 <= e->tick_count && r->mono_ns + 1000000000LL <= now_ns) {
      *p = r->next;
      atp_free(r->ptr);
      atp_free(r);
    } else {
      p = &r->next;
    }
  }
}

static uint32_t drain(atp_engine_t *e, uint32_t list, int64_t now_ms);
static uint32_t drain_ring(atp_engine_t *e, atp_inbox_t *ring, int64_t now_ms);

uint32_t atp_engine_tick(atp_engine_t *e) {
  int64_t now_ms = atp_now(e);
  int64_t target = now_ms / ATP_WHEEL_TICK_MS;
  atp_wheel_t *w = &e->wheel;
  e->tick_count++;
  e->tick_mono_ns = atp_mono_ns();
  if (!w->started) {
    w->now_tick = target;
    w->started = true;
  }
  /* First file what changed since the last tick, then run the slots due. */
  uint32_t expired = 0;
  for (int shard = 0; shard < ATP_SHARDS; shard++) {
    expired += drain_ring(e, &w->inboxes[shard], now_ms);
    uint32_t list = (uint32_t)atomic_exchange_explicit(&w->inbox[shard].value, 0,
                                                       memory_order_acquire);
    expired += drain(e, list, now_ms);
  }
  if (target > w->now_tick) expired += advance(e, target, now_ms);
  atp_keyed_reclaim(&e->rtable, e->tick_count, e->tick_mono_ns);
  atp_keyed_reclaim(&e->itable, e->tick_count, e->tick_mono_ns);
  reclaim_retired(e);
  return expired;
}

static uint32_t drain_walk(atp_engine_t *e, walk_t *w, int64_t now_ms) {
  uint32_t expired = 0;
  for (uint32_t ref; (ref = walk_next(e, w));) {
    /* Cleared before the state is read: a change after this re-queues it. */
    atomic_store_explicit(node_queued(e, ref), 0, memory_order_seq_cst);
    expired += refile(e, ref, now_ms);
  }
  return expired;
}

static uint32_t drain(atp_engine_t *e, uint32_t list, int64_t now_ms) {
  walk_t w;
  walk_start(e, &w, list, true, true, now_ms);
  return drain_walk(e, &w, now_ms);
}

/* The refs queued on a ring before this tick (those queued while it runs,
 * the ticker's own included, wait for the next). */
static uint32_t drain_ring(atp_engine_t *e, atp_inbox_t *ring, int64_t now_ms) {
  walk_t w;
  walk_start(e, &w, 0, true, true, now_ms);
  w.from = ring;
  w.next = atomic_load_explicit(&ring->head, memory_order_relaxed);
  w.end = atomic_load_explicit(&ring->tail, memory_order_acquire);
  walk_fill(e, &w);
  uint32_t expired = drain_walk(e, &w, now_ms);
  /* release: the zeroed slots are free for the threads that see it */
  atomic_store_explicit(&ring->head, w.next, memory_order_release);
  return expired;
}
