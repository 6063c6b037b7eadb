/* positions.c - interned strings, positions and their read protocol, the
 * history of on-hand changes, and the unit moves a reservation makes on a
 * position (take, give, commit, fulfil).
 *
 * See engine.h for the model. The position read protocol: a writer increments
 * the pending count in the position's seq word before it touches a counter and
 * turns that into a version increment after (or just drops it when nothing
 * changed). A reader loads seq, the counters, seq again, and retries while a
 * writer is in flight or the words differ. The counters are updated with
 * acq_rel RMWs and read with acquire loads: a reader that saw a counter written
 * by a writer also sees that writer's pending increment, so a torn snapshot is
 * always detected. After a bounded number of retries (a writer descheduled in
 * its window) the reader takes the last values read, a mix of instants a few
 * microseconds apart; available and shortfall are computed from them, so the
 * answer still satisfies the contract's formulas.
 *
 * A reservation's takes stay in flight longer: each keeps its pending count
 * until the whole request knows its outcome, and then the position is settled
 * with one version for all of the request's takes on it, kept or given back.
 * No reader validates a state between, so no copy (atp__position_copy, for a
 * snapshot) holds a take under a version the journal describes otherwise: the
 * journal reports a refused request as a version with no units, a kept one as
 * one change per position.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "atp/memory.h"
#include "engine_internal.h"

#define READ_RETRIES_MAX        256
#define LOCK_SPINS_BEFORE_YIELD 128

static inline bool intern_is(const atp_interned_t *in, atp_str_t s, uint64_t hash) {
  return in->hash == hash && in->len == s.len && str_eq(in->text, s.ptr, s.len);
}

/* --- interned strings ----------------------------------------------------------- */

uint32_t atp__intern_find(const atp_engine_t *e, atp_str_t s, uint64_t hash) {
  for (uint32_t i = (uint32_t)hash & e->intern_mask;; i = (i + 1) & e->intern_mask) {
    uint32_t v = atomic_load_explicit(&e->intern_index[i], memory_order_acquire);
    if (v == 0) return UINT32_MAX;
    const atp_interned_t *in = e->interns[v - 1];
    if (intern_is(in, s, hash)) return v - 1;
  }
}

atp_str_t atp__intern_str(const atp_engine_t *e, uint32_t id) {
  const atp_interned_t *in = e->interns[id];
  return (atp_str_t){in->text, in->len};
}

/* Caller holds create_lock. */
int atp__intern_locked(atp_engine_t *e, atp_str_t s, uint32_t *out) {
  uint64_t hash = atp__hash_bytes(s.ptr, s.len);
  uint32_t id = atp__intern_find(e, s, hash);
  if (id != UINT32_MAX) {
    *out = id;
    return 0;
  }
  uint32_t count = atomic_load_explicit(&e->intern_count, memory_order_relaxed);
  if (count >= e->intern_max) return ATP_EFULL;
  atp_interned_t *in = atp_malloc(sizeof *in + s.len + 1);
  if (!in) return ATP_ENOMEM;
  in->hash = hash;
  atomic_init(&in->first_position, 0);
  in->len = s.len;
  memcpy(in->text, s.ptr, s.len);
  in->text[s.len] = '\0';
  e->interns[count] = in;
  atomic_store_explicit(&e->intern_count, count + 1, memory_order_release);
  uint32_t i = (uint32_t)hash & e->intern_mask;
  while (atomic_load_explicit(&e->intern_index[i], memory_order_relaxed))
    i = (i + 1) & e->intern_mask;
  /* release: a reader that finds the entry sees the string's bytes. */
  atomic_store_explicit(&e->intern_index[i], count + 1, memory_order_release);
  *out = count;
  return 0;
}

/* --- positions ----------------------------------------------------------------------
 */

static uint64_t pos_hash(uint64_t sku_hash, uint64_t location_hash) {
  return atp__hash_mix(sku_hash, location_hash);
}

/* An index entry holds the position's hash tag (the top 32 bits of its hash)
 * beside its index, so a probe that meets another key rejects it without
 * touching that position's cache line: a hit costs the entry and the position. */
static uint64_t index_tag(uint64_t h) {
  return h & 0xffffffff00000000ULL;
}

/* The position of (sku, location) given both strings' hashes: compares the
 * strings themselves, so the location needs no intern look-up first. */
uint32_t atp__position_find_hashed(const atp_engine_t *e, atp_str_t sku,
                                   uint64_t sku_hash, atp_str_t location,
                                   uint64_t location_hash) {
  uint64_t h = pos_hash(sku_hash, location_hash), tag = index_tag(h);
  for (uint32_t i = (uint32_t)h & e->position_mask;; i = (i + 1) & e->position_mask) {
    uint64_t v = atomic_load_explicit(&e->position_index[i], memory_order_acquire);
    if (v == 0) return UINT32_MAX;
    if (index_tag(v) != tag) continue;
    const atp_position_record_t *p = &e->positions[(uint32_t)v - 1];
    if (intern_is(e->interns[p->sku], sku, sku_hash) &&
        intern_is(e->interns[p->location], location, location_hash))
      return (uint32_t)v - 1;
  }
}

uint32_t atp__position_find(const atp_engine_t *e, atp_str_t sku, uint64_t sku_hash,
                            uint32_t location_id) {
  const atp_interned_t *loc = e->interns[location_id];
  return atp__position_find_hashed(e, sku, sku_hash, (atp_str_t){loc->text, loc->len},
                                   loc->hash);
}

uint32_t atp__position_find_str(const atp_engine_t *e, atp_str_t sku,
                                atp_str_t location) {
  return atp__position_find_hashed(e, sku, atp__hash_bytes(sku.ptr, sku.len), location,
                                   atp__hash_bytes(location.ptr, location.len));
}

int atp__position_find_or_create(atp_engine_t *e, atp_str_t sku, atp_str_t location,
                                 uint32_t *out) {
  uint32_t idx = atp__position_find_str(e, sku, location);
  if (idx != UINT32_MAX) {
    *out = idx;
    return 0;
  }
  /* Creating takes the mutex; readers never do. Checked again under it. */
  pthread_mutex_lock(&e->create_lock);
  int rc = 0;
  idx = atp__position_find_str(e, sku, location);
  if (idx == UINT32_MAX) {
    uint32_t sku_id, loc_id;
    uint32_t count = atomic_load_explicit(&e->position_count, memory_order_relaxed);
    if (count >= e->config.positions_max) {
      rc = ATP_EFULL;
    } else if ((rc = atp__intern_locked(e, sku, &sku_id)) == 0 &&
               (rc = atp__intern_locked(e, location, &loc_id)) == 0) {
      idx = count;
      atp_position_record_t *p = &e->positions[idx];
      atomic_init(&p->free, 0);
      atomic_init(&p->reserved, 0);
      atomic_init(&p->committed, 0);
      atomic_init(&p->on_hand, 0);
      atomic_init(&p->safety, 0);
      atomic_init(&p->counted_at, ATP_TIME_NONE);
      atomic_init(&p->seq, 0);
      p->sku = sku_id;
      p->location = loc_id;
      atp_position_cold_t *cold = &e->pos_cold[idx];
      atomic_init(&cold->lock, 0);
      cold->history = NULL;
      cold->base_version = 0;
      atp_interned_t *s = e->interns[sku_id];
      atomic_init(&cold->next_in_sku,
                  atomic_load_explicit(&s->first_position, memory_order_relaxed));
      atomic_store_explicit(&s->first_position, idx + 1, memory_order_release);
      atomic_store_explicit(&e->position_count, count + 1, memory_order_release);
      uint64_t h = pos_hash(s->hash, e->interns[loc_id]->hash);
      uint32_t i = (uint32_t)h & e->position_mask;
      while (atomic_load_explicit(&e->position_index[i], memory_order_relaxed))
        i = (i + 1) & e->position_mask;
      /* release: a reader that finds the entry sees the initialised position. */
      atomic_store_explicit(&e->position_index[i], index_tag(h) | (idx + 1),
                            memory_order_release);
    }
  }
  pthread_mutex_unlock(&e->create_lock);
  *out = idx;
  return rc;
}

uint64_t atp__position_begin(atp_position_record_t *p) {
  return atomic_fetch_add_explicit(&p->seq, ATP_SEQ_PENDING_ONE, memory_order_acq_rel);
}

uint64_t atp__position_end(atp_position_record_t *p, bool changed) {
  uint64_t delta =
      changed ? 1 - ATP_SEQ_PENDING_ONE : (uint64_t)0 - ATP_SEQ_PENDING_ONE;
  uint64_t old = atomic_fetch_add_explicit(&p->seq, delta, memory_order_acq_rel);
  /* This writer's pending count was in the word; versions only grow. */
  ATP_ASSERT(old >= ATP_SEQ_PENDING_ONE);
  return ((old + delta) & ATP_SEQ_VERSION_MASK);
}

void atp__position_lock(const atp_engine_t *e, atp_position_record_t *p) {
  _Atomic uint32_t *lock = &atp__position_cold(e, p)->lock;
  for (uint32_t spins = 0;; spins++) {
    uint32_t expected = 0;
    if (atomic_compare_exchange_weak_explicit(lock, &expected, 1, memory_order_acquire,
                                              memory_order_relaxed))
      return;
    if (spins >= LOCK_SPINS_BEFORE_YIELD) sched_yield();
  }
}

void atp__position_unlock(const atp_engine_t *e, atp_position_record_t *p) {
  atomic_store_explicit(&atp__position_cold(e, p)->lock, 0, memory_order_release);
}

bool atp__position_take(atp_position_record_t *p, int64_t qty, bool committed) {
  ATP_ASSERT(qty > 0);
  int64_t free_now = atomic_load_explicit(&p->free, memory_order_acquire);
  if (free_now < qty) return false; /* the common refusal costs one load */
  atp__position_begin(p);
  /* The grant: free only ever drops by a successful CAS from a value >= qty,
   * so the sum granted never exceeds what was free. */
  while (free_now >= qty) {
    if (atomic_compare_exchange_weak_explicit(&p->free, &free_now, free_now - qty,
                                              memory_order_acq_rel,
                                              memory_order_acquire)) {
      atomic_fetch_add_explicit(committed ? &p->committed : &p->reserved, qty,
                                memory_order_acq_rel);
      return true; /* held: the pending count stays until atp__position_settle */
    }
  }
  atp__position_end(p, false);
  return false;
}

void atp__position_untake(atp_position_record_t *p, int64_t qty, bool committed) {
  ATP_ASSERT(qty > 0);
  int64_t was = atomic_fetch_sub_explicit(committed ? &p->committed : &p->reserved, qty,
                                          memory_order_acq_rel);
  ATP_ASSERT(was >= qty);
  atomic_fetch_add_explicit(&p->free, qty, memory_order_acq_rel);
}

uint64_t atp__position_settle(atp_position_record_t *p, uint32_t held) {
  ATP_ASSERT(held > 0);
  /* One version even when every take was given back: dropping the pending
   * counts alone would put seq back to the word a reader loaded before the
   * takes, and that reader would validate counters it read during them. */
  uint64_t delta = 1 - (uint64_t)held * ATP_SEQ_PENDING_ONE;
  uint64_t old = atomic_fetch_add_explicit(&p->seq, delta, memory_order_acq_rel);
  ATP_ASSERT(old >= (uint64_t)held * ATP_SEQ_PENDING_ONE);
  return (old + delta) & ATP_SEQ_VERSION_MASK;
}

uint64_t atp__position_give(atp_position_record_t *p, int64_t qty, bool committed) {
  ATP_ASSERT(qty > 0);
  atp__position_begin(p);
  int64_t was = atomic_fetch_sub_explicit(committed ? &p->committed : &p->reserved, qty,
                                          memory_order_acq_rel);
  ATP_ASSERT(was >= qty);
  atomic_fetch_add_explicit(&p->free, qty, memory_order_acq_rel);
  return atp__position_end(p, true);
}

uint64_t atp__position_commit(atp_position_record_t *p, int64_t qty) {
  ATP_ASSERT(qty > 0);
  atp__position_begin(p);
  int64_t was = atomic_fetch_sub_explicit(&p->reserved, qty, memory_order_acq_rel);
  ATP_ASSERT(was >= qty);
  atomic_fetch_add_explicit(&p->committed, qty, memory_order_acq_rel);
  return atp__position_end(p, true);
}

void atp__position_read(const atp_engine_t *e, uint32_t idx, atp_position_t *out) {
  atp_position_record_t *p = &e->positions[idx];
  int64_t reserved, committed, on_hand, safety, counted_at;
  uint64_t s1 = 0;
  for (int attempt = 0; attempt < READ_RETRIES_MAX; attempt++) {
    s1 = atomic_load_explicit(&p->seq, memory_order_acquire);
    reserved = atomic_load_explicit(&p->reserved, memory_order_acquire);
    committed = atomic_load_explicit(&p->committed, memory_order_acquire);
    on_hand = atomic_load_explicit(&p->on_hand, memory_order_acquire);
    safety = atomic_load_explicit(&p->safety, memory_order_acquire);
    counted_at = atomic_load_explicit(&p->counted_at, memory_order_acquire);
    uint64_t s2 = atomic_load_explicit(&p->seq, memory_order_acquire);
    if (s1 == s2 && (s1 & ~ATP_SEQ_VERSION_MASK) == 0) break;
  }
  out->sku = atp__intern_str(e, p->sku);
  out->location = atp__intern_str(e, p->location);
  out->on_hand = on_hand;
  out->safety_stock = safety;
  out->reserved = reserved;
  out->committed = committed;
  /* Derived from the counters read, so the answer always satisfies the
   * contract's formulas; when validated they equal the free word exactly. */
  int64_t free_now = on_hand - safety - reserved - committed;
  out->available = free_now > 0 ? free_now : 0;
  int64_t promised = reserved + committed - on_hand;
  out->shortfall = promised > 0 ? promised : 0;
  out->counted_at_ms = counted_at;
  out->version = s1 & ATP_SEQ_VERSION_MASK;
}

/* Reads validate nothing: a string that is not a valid id was never interned,
 * so it is simply not found. Position reads (this, atp_positions_get,
 * atp_sku_positions) take no epoch bracket (epoch.c): the index, the
 * positions, their SKU lists and the interned strings are never moved or
 * freed before atp_engine_destroy, and they read no history. */
int atp_position_get(const atp_engine_t *e, atp_str_t sku, atp_str_t location,
                     atp_position_t *out) {
  if (!sku.len || !location.len) return ATP_ENOTFOUND;
  uint32_t idx = atp__position_find_str(e, sku, location);
  if (idx == UINT32_MAX) return ATP_ENOTFOUND;
  atp__position_read(e, idx, out);
  return 0;
}

/* A batched read is a software pipeline of four stages over the keys: at step
 * t key t is hashed and its index entry prefetched, key t-D probes that entry
 * and prefetches its position, key t-2D prefetches the position's SKU string,
 * and key t-3D is compared and read. Each load was prefetched D steps earlier,
 * so about 2D cache misses are in flight while the CPU works on other keys. */
#define READ_DISTANCE 16
#define READ_RING     (4 * READ_DISTANCE)

typedef struct {
  uint64_t sku_hash;
  uint64_t location_hash;
  uint64_t hash; /* position hash */
  uint32_t idx;  /* candidate position, UINT32_MAX: none */
} read_stage_t;

static void read_hash(const atp_engine_t *e, const atp_key_t *k, read_stage_t *st) {
  st->sku_hash = atp__hash_bytes(k->sku.ptr, k->sku.len);
  st->location_hash = atp__hash_bytes(k->location.ptr, k->location.len);
  st->hash = pos_hash(st->sku_hash, st->location_hash);
  __builtin_prefetch(&e->position_index[st->hash & e->position_mask]);
}

/* The first entry whose tag matches is the candidate, fetched for reading or,
 * for a reservation about to CAS it, for writing. */
static void probe_candidate(const atp_engine_t *e, read_stage_t *st, bool for_write) {
  uint64_t tag = index_tag(st->hash);
  st->idx = UINT32_MAX;
  for (uint32_t j = (uint32_t)st->hash & e->position_mask;;
       j = (j + 1) & e->position_mask) {
    uint64_t v = atomic_load_explicit(&e->position_index[j], memory_order_acquire);
    if (v == 0) return;
    if (index_tag(v) != tag) continue;
    st->idx = (uint32_t)v - 1;
    if (for_write)
      __builtin_prefetch(&e->positions[st->idx], 1);
    else
      __builtin_prefetch(&e->positions[st->idx]);
    return;
  }
}

static void read_probe(const atp_engine_t *e, read_stage_t *st) {
  probe_candidate(e, st, false);
}

uint64_t atp__position_prefetch_index(const atp_engine_t *e, atp_str_t sku,
                                      atp_str_t location) {
  read_stage_t st;
  read_hash(e, &(atp_key_t){sku, location}, &st);
  return st.hash;
}

void atp__position_prefetch(const atp_engine_t *e, uint64_t hash) {
  read_stage_t st = {.hash = hash};
  probe_candidate(e, &st, true);
}

static bool read_confirm(const atp_engine_t *e, const atp_key_t *k,
                         const read_stage_t *st, atp_position_t *out) {
  uint32_t idx = st->idx;
  if (idx == UINT32_MAX) return false;
  const atp_position_record_t *p = &e->positions[idx];
  /* A tag collision falls back to the full probe. */
  if (!intern_is(e->interns[p->sku], k->sku, st->sku_hash) ||
      !intern_is(e->interns[p->location], k->location, st->location_hash)) {
    idx = atp__position_find_hashed(e, k->sku, st->sku_hash, k->location,
                                    st->location_hash);
    if (idx == UINT32_MAX) return false;
  }
  atp__position_read(e, idx, out);
  return true;
}

uint32_t atp_positions_get(const atp_engine_t *e, const atp_key_t *keys, uint32_t count,
                           atp_position_t *out, bool *found) {
  read_stage_t ring[READ_RING];
  uint32_t hits = 0;
  const uint32_t d = READ_DISTANCE;
  for (uint64_t t = 0; t < (uint64_t)count + 3 * d; t++) {
    if (t < count) read_hash(e, &keys[t], &ring[t % READ_RING]);
    if (t >= d && t - d < count) read_probe(e, &ring[(t - d) % READ_RING]);
    if (t >= 2 * d && t - 2 * d < count) {
      const read_stage_t *st = &ring[(t - 2 * d) % READ_RING];
      if (st->idx != UINT32_MAX)
        __builtin_prefetch(e->interns[e->positions[st->idx].sku]);
    }
    if (t >= 3 * d && t - 3 * d < count) {
      uint64_t i = t - 3 * d;
      found[i] = read_confirm(e, &keys[i], &ring[i % READ_RING], &out[i]);
      hits += found[i];
    }
  }
  return hits;
}

static int position_order(const void *a, const void *b) {
  const atp_position_t *x = a, *y = b;
  if (x->available != y->available) return x->available > y->available ? -1 : 1;
  uint32_t n = x->location.len < y->location.len ? x->location.len : y->location.len;
  int c = memcmp(x->location.ptr, y->location.ptr, n);
  if (c) return c;
  return (x->location.len > y->location.len) - (x->location.len < y->location.len);
}

/* Costs O(positions of the SKU) plus a sort of what fits in out. To return the
 * true top out_max when a SKU has more positions than fit, every position is
 * read and only the best kept (insertion into a sorted array). */
int atp_sku_positions(const atp_engine_t *e, atp_str_t sku, atp_position_t *out,
                      uint32_t out_max, uint32_t *count) {
  *count = 0;
  if (!atp__id_valid(sku)) return 0;
  uint32_t id = atp__intern_find(e, sku, atp__hash_bytes(sku.ptr, sku.len));
  if (id == UINT32_MAX) return 0;
  uint32_t n = 0, total = 0;
  atp_position_t cand;
  for (uint32_t v =
           atomic_load_explicit(&e->interns[id]->first_position, memory_order_acquire);
       v; v = atomic_load_explicit(&e->pos_cold[v - 1].next_in_sku,
                                   memory_order_acquire)) {
    total++;
    atp__position_read(e, v - 1, &cand);
    if (n < out_max) {
      out[n++] = cand;
    } else if (out_max && position_order(&cand, &out[out_max - 1]) < 0) {
      out[out_max - 1] = cand;
    } else {
      continue;
    }
    /* keep out[0..n) sorted: sink the new element into place */
    for (uint32_t i = n - 1; i > 0 && position_order(&out[i], &out[i - 1]) < 0; i--) {
      atp_position_t t = out[i];
      out[i] = out[i - 1];
      out[i - 1] = t;
    }
  }
  *count = total;
  return 0;
}

/* --- history of on-hand changes (under the position lock) ------------------------- */

void atp__history_push(const atp_engine_t *e, atp_position_record_t *p,
                       int64_t occurred_at_ms, int64_t delta, int64_t now_ms) {
  atp_position_cold_t *cold = atp__position_cold(e, p);
  atp_history_t *h = cold->history;
  int64_t horizon = now_ms - e->config.history_window_ms;
  if (h) {
    /* Drop entries that left the window from the old end. Entries are in
     * arrival order, not time order, so an old entry behind a newer one stays
     * until it reaches the head: the window is a lower bound on what is kept. */
    while (h->count && h->entries[h->head].occurred_at_ms < horizon) {
      h->head = (h->head + 1) % h->cap;
      h->count--;
    }
  }
  if (!h || h->count == h->cap) {
    uint32_t cap = h ? h->cap * 2 : 4;
    if (cap > ATP_HISTORY_ENTRIES_MAX) cap = ATP_HISTORY_ENTRIES_MAX;
    if (!h || cap > h->cap) {
      atp_history_t *n = atp_malloc(sizeof *n + cap * sizeof n->entries[0]);
      if (n) {
        n->head = 0;
        n->count = 0;
        n->cap = cap;
        n->floor_ms = h ? h->floor_ms : ATP_TIME_NONE;
        for (uint32_t i = 0; h && i < h->count; i++)
          n->entries[n->count++] = h->entries[(h->head + i) % h->cap];
        atp_free(h);
        cold->history = h = n;
      }
    }
    if (!h) return; /* out of memory: counts older than now become approximate */
    if (h->count == h->cap) {
      /* Full at the maximum: forget the oldest and remember that changes up to
       * its time may be missing, so counts before it are approximate. */
      atp_history_entry_t *old = &h->entries[h->head];
      if (old->occurred_at_ms > h->floor_ms) h->floor_ms = old->occurred_at_ms;
      h->head = (h->head + 1) % h->cap;
      h->count--;
    }
  }
  h->entries[(h->head + h->count) % h->cap] =
      (atp_history_entry_t){occurred_at_ms, delta};
  h->count++;
}

/* Sum of on-hand changes after t, and whether history reaches back to t.
 * O(entries), at most ATP_HISTORY_ENTRIES_MAX. */
int64_t atp__history_after(const atp_engine_t *e, const atp_position_record_t *p,
                           int64_t t, bool *complete) {
  const atp_history_t *h = atp__position_cold(e, p)->history;
  int64_t sum = 0;
  *complete = true;
  if (!h) return 0;
  if (h->floor_ms != ATP_TIME_NONE && t < h->floor_ms) *complete = false;
  for (uint32_t i = 0; i < h->count; i++) {
    const atp_history_entry_t *en = &h->entries[(h->head + i) % h->cap];
    if (en->occurred_at_ms > t) sum += en->delta;
  }
  return sum;
}

int atp_position_changes_after(const atp_engine_t *e, atp_str_t sku, atp_str_t location,
                               int64_t t_ms, atp_position_t *out,
                               int64_t *changes_after, bool *covered) {
  ATP_ASSERT(out && changes_after && covered);
  if (!sku.len || !location.len) return ATP_ENOTFOUND;
  uint32_t idx = atp__position_find_str(e, sku, location);
  if (idx == UINT32_MAX) return ATP_ENOTFOUND;
  atp_position_record_t *p = &e->positions[idx];
  /* The flag holds on_hand and the history still, so the figure read and the
   * sum describe the same instant; the read protocol still guards reserved
   * and committed, which reservations move without it. */
  atp__position_lock(e, p);
  atp__position_read(e, idx, out);
  bool complete;
  *changes_after = atp__history_after(e, p, t_ms, &complete);
  atp__position_unlock(e, p);
  /* The same rule as a count's approximate flag (stock.c). */
  *covered = complete && t_ms >= atp__now(e) - e->config.history_window_ms;
  return 0;
}

int atp_position_each(const atp_engine_t *e,
                      int (*fn)(void *ctx, const atp_position_t *position), void *ctx) {
  ATP_ASSERT(fn);
  /* acquire: pairs with the release store of the count in
   * atp__position_find_or_create, so every position below it is initialised. */
  uint32_t n = atomic_load_explicit(&e->position_count, memory_order_acquire);
  atp_position_t pos;
  for (uint32_t i = 0; i < n; i++) {
    atp__position_read(e, i, &pos);
    int rc = fn(ctx, &pos);
    if (rc) return rc;
  }
  return 0;
}

uint32_t atp_position_count(const atp_engine_t *e) {
  /* acquire: every position below the count is initialised (as above). */
  return atomic_load_explicit(&e->position_count, memory_order_acquire);
}

int atp_position_each_from(const atp_engine_t *e, uint32_t *next, uint32_t upto,
                           int (*fn)(void *ctx, const atp_position_t *position),
                           void *ctx) {
  ATP_ASSERT(next && fn && upto <= atp_position_count(e));
  atp_position_t pos;
  while (*next < upto) {
    atp__position_read(e, (*next)++, &pos);
    int rc = fn(ctx, &pos);
    if (rc) return rc;
  }
  return 0;
}

/* --- export and import (snapshots) ----------------------------------------------- */

void atp__position_copy(atp_engine_t *e, uint32_t idx, atp_position_t *out,
                        atp_history_entry_t *hist, uint32_t *hist_count,
                        int64_t *floor_ms) {
  atp_position_record_t *p = &e->positions[idx];
  /* The on-hand flag holds on_hand, safety, counted_at and the history still;
   * reservations move reserved and committed without it, so those are read
   * until no writer is in flight. Unlike a client's read this one never
   * settles for a mix: the snapshot's version must name exactly the changes
   * its counters hold, or replay would add one twice or not at all. */
  atp__position_lock(e, p);
  for (uint32_t attempt = 1;; attempt++) {
    uint64_t s1 = atomic_load_explicit(&p->seq, memory_order_acquire);
    out->reserved = atomic_load_explicit(&p->reserved, memory_order_acquire);
    out->committed = atomic_load_explicit(&p->committed, memory_order_acquire);
    out->on_hand = atomic_load_explicit(&p->on_hand, memory_order_acquire);
    out->safety_stock = atomic_load_explicit(&p->safety, memory_order_acquire);
    out->counted_at_ms = atomic_load_explicit(&p->counted_at, memory_order_acquire);
    uint64_t s2 = atomic_load_explicit(&p->seq, memory_order_acquire);
    if (s1 == s2 && (s1 & ~ATP_SEQ_VERSION_MASK) == 0) {
      out->version = s1 & ATP_SEQ_VERSION_MASK;
      break;
    }
    if (attempt % READ_RETRIES_MAX == 0) sched_yield(); /* a writer descheduled */
  }
  const atp_history_t *h = atp__position_cold(e, p)->history;
  *hist_count = 0;
  *floor_ms = h ? h->floor_ms : ATP_TIME_NONE;
  for (uint32_t i = 0; h && i < h->count; i++)
    hist[(*hist_count)++] = h->entries[(h->head + i) % h->cap];
  atp__position_unlock(e, p);
  out->sku = atp__intern_str(e, p->sku);
  out->location = atp__intern_str(e, p->location);
  int64_t free_now = out->on_hand - out->safety_stock - out->reserved - out->committed;
  out->available = free_now > 0 ? free_now : 0;
  int64_t promised = out->reserved + out->committed - out->on_hand;
  out->shortfall = promised > 0 ? promised : 0;
}

void atp__history_set_floor(const atp_engine_t *e, atp_position_record_t *p,
                            int64_t floor_ms) {
  atp_position_cold_t *cold = atp__position_cold(e, p);
  if (!cold->history) {
    atp_history_t *n = atp_malloc(sizeof *n + 4 * sizeof n->entries[0]);
    if (!n) return; /* as in atp__history_push: counts become approximate */
    n->head = n->count = 0;
    n->cap = 4;
    n->floor_ms = ATP_TIME_NONE;
    cold->history = n;
  }
  if (cold->history->floor_ms == ATP_TIME_NONE || floor_ms > cold->history->floor_ms)
    cold->history->floor_ms = floor_ms;
}

uint64_t atp__position_fulfil(atp_engine_t *e, atp_position_record_t *p, int64_t qty,
                              int64_t now_ms) {
  atp__position_begin(p);
  int64_t was = atomic_fetch_sub_explicit(&p->committed, qty, memory_order_acq_rel);
  ATP_ASSERT(was >= qty);
  atomic_fetch_sub_explicit(&p->on_hand, qty, memory_order_acq_rel);
  /* free = on_hand - safety - reserved - committed: both fell by qty. */
  uint64_t v = atp__position_end(p, true);
  atp__history_push(e, p, now_ms, -qty, now_ms);
  return v;
}

void atp__change_position(const atp_engine_t *e, atp_change_t *c, atp_cause_t cause,
                          atp_str_t cause_id, uint32_t pos, int64_t d_on_hand,
                          int64_t d_reserved, int64_t d_committed, uint64_t version) {
  const atp_position_record_t *p = &e->positions[pos];
  memset(c, 0, sizeof *c);
  c->kind = ATP_CHANGE_POSITION;
  c->cause = cause;
  c->cause_id = cause_id;
  c->at_ms = atp__now(e);
  c->u.position.sku = atp__intern_str(e, p->sku);
  c->u.position.location = atp__intern_str(e, p->location);
  c->u.position.d_on_hand = d_on_hand;
  c->u.position.d_reserved = d_reserved;
  c->u.position.d_committed = d_committed;
  c->u.position.counted_at_ms = ATP_TIME_NONE;
  c->u.position.occurred_at_ms = ATP_TIME_NONE;
  c->u.position.version = version;
}
