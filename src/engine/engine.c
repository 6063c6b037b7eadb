/* engine.c - positions, interned strings, groups, stock changes, lifecycle.
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
 */
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "atp/memory.h"
#include "engine_internal.h"

#define READ_RETRIES_MAX        256
#define LOCK_SPINS_BEFORE_YIELD 128

/* A 64-bit hash in the manner of wyhash: 128-bit multiply-folds over 16-byte
 * blocks, and strings of up to 16 bytes (most SKUs, locations and ids) read in
 * a few overlapping loads with no loop and no byte-wise tail. The multiply
 * spreads every input bit over both the low bits (the table index) and the top
 * 32 (the index slot's tag). */
static inline uint64_t hash_fold(uint64_t a, uint64_t b) {
  __uint128_t r = (__uint128_t)a * b;
  return (uint64_t)r ^ (uint64_t)(r >> 64);
}
static inline uint64_t load64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}
static inline uint64_t load32(const unsigned char *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

#define HASH_P0 0xa0761d6478bd642fULL
#define HASH_P1 0xe7037ed1a0b428dbULL
#define HASH_P2 0x8ebc6af09c88c6e3ULL

uint64_t atp_hash_bytes(const void *data, size_t len) {
  const unsigned char *p = data;
  uint64_t seed = HASH_P0 ^ (len * HASH_P2), a, b;
  if (len <= 16) {
    if (len >= 4) {
      size_t quarter = (len >> 3) << 2; /* 0 or 4: the second load's offset */
      a = load32(p) << 32 | load32(p + quarter);
      b = load32(p + len - 4) << 32 | load32(p + len - 4 - quarter);
    } else if (len > 0) {
      a = (uint64_t)p[0] << 16 | (uint64_t)p[len >> 1] << 8 | p[len - 1];
      b = 0;
    } else {
      a = b = 0;
    }
  } else {
    size_t left = len;
    while (left > 16) {
      seed = hash_fold(load64(p) ^ HASH_P1, load64(p + 8) ^ seed);
      p += 16;
      left -= 16;
    }
    a = load64(p + left - 16);
    b = load64(p + left - 8);
  }
  return hash_fold(HASH_P1 ^ len, hash_fold(a ^ HASH_P1, b ^ seed));
}

/* Equality of two strings of len bytes, with a few overlapping word loads for
 * the short strings that identifiers are (memcmp is a call). */
static inline bool str_eq(const char *a, const char *b, uint32_t len) {
  const unsigned char *x = (const unsigned char *)a, *y = (const unsigned char *)b;
  if (len >= 8 && len <= 16)
    return ((load64(x) ^ load64(y)) | (load64(x + len - 8) ^ load64(y + len - 8))) == 0;
  if (len >= 4 && len < 8)
    return ((load32(x) ^ load32(y)) | (load32(x + len - 4) ^ load32(y + len - 4))) == 0;
  return memcmp(a, b, len) == 0;
}

static inline bool intern_is(const atp_intern_t *in, atp_str_t s, uint64_t hash) {
  return in->hash == hash && in->len == s.len && str_eq(in->text, s.ptr, s.len);
}

static int64_t real_clock(void *ctx) {
  (void)ctx;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t atp_now(const atp_engine_t *e) {
  return e->config.clock(e->config.clock_ctx);
}
int64_t atp_engine_now_ms(const atp_engine_t *e) {
  return atp_now(e);
}

int64_t atp_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

bool atp_id_valid(atp_str_t s) {
  if (s.len == 0 || s.len > ATP_ID_BYTES_MAX || !s.ptr) return false;
  for (uint32_t i = 0; i < s.len; i++) {
    unsigned char c = (unsigned char)s.ptr[i];
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

void atp_result_set(atp_result_t *r, const char *field, const char *fmt, ...) {
  if (!r) return;
  snprintf(r->field, sizeof r->field, "%s", field ? field : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->message, sizeof r->message, fmt, ap);
  va_end(ap);
}

static uint32_t pow2_at_least(uint64_t n) {
  uint64_t p = 16;
  while (p < n) p <<= 1;
  ATP_ASSERT(p <= (1ULL << 31));
  return (uint32_t)p;
}

/* --- thread-local scratch ------------------------------------------------------
 * Change records and reservation views are too large for a thread's stack when
 * a reservation spans many positions; each thread keeps one of each. */

#define SCRATCH_CHANGES (2 * ATP_RESERVATION_POSITIONS_MAX + 8)

/* One key per kind of scratch: its destructor frees the buffer when the
 * thread exits (event-loop threads stop and start with the server). */
static pthread_key_t scratch_keys[ATP_SCRATCH_KINDS_];
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_keys_create(void) {
  for (int i = 0; i < ATP_SCRATCH_KINDS_; i++)
    ATP_ASSERT(pthread_key_create(&scratch_keys[i], atp_free) == 0);
}

void *atp_scratch(atp_scratch_kind_t kind, size_t bytes) {
  pthread_once(&scratch_once, scratch_keys_create);
  void *p = pthread_getspecific(scratch_keys[kind]);
  if (!p) {
    p = atp_malloc(bytes);
    ATP_ASSERT(p); /* a few hundred KiB once per thread: failing here is fatal */
    ATP_ASSERT(pthread_setspecific(scratch_keys[kind], p) == 0);
  }
  return p;
}

atp_change_t *atp_scratch_changes(uint32_t *cap) {
  *cap = SCRATCH_CHANGES;
  return atp_scratch(ATP_SCRATCH_CHANGES, sizeof(atp_change_t) * SCRATCH_CHANGES);
}

atp_reservation_t *atp_scratch_view(void) {
  return atp_scratch(ATP_SCRATCH_VIEW, sizeof(atp_reservation_t));
}

void atp_emit(const atp_engine_t *e, const atp_change_t *records, uint32_t count) {
  if (e->config.on_change && count)
    e->config.on_change(e->config.change_ctx, records, count);
}

/* Memory that lock-free readers may still hold (a group's old version, a
 * reservation's old line array) is freed by the ticker after a grace period. */
void atp_retire(atp_engine_t *e, void *ptr) {
  atp_retired_t *r = atp_malloc(sizeof *r);
  ATP_ASSERT(r);
  r->ptr = ptr;
  r->tick = 0;
  r->mono_ns = 0;
  r->next = atomic_load_explicit(&e->retired, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(
      &e->retired, &r->next, r, memory_order_release, memory_order_relaxed)) {
  }
}

/* --- interned strings ----------------------------------------------------------- */

uint32_t atp_intern_find(const atp_engine_t *e, atp_str_t s, uint64_t hash) {
  for (uint32_t i = (uint32_t)hash & e->intern_mask;; i = (i + 1) & e->intern_mask) {
    uint32_t v = atomic_load_explicit(&e->intern_index[i], memory_order_acquire);
    if (v == 0) return UINT32_MAX;
    const atp_intern_t *in = e->interns[v - 1];
    if (intern_is(in, s, hash)) return v - 1;
  }
}

atp_str_t atp_intern_str(const atp_engine_t *e, uint32_t id) {
  const atp_intern_t *in = e->interns[id];
  return (atp_str_t){in->text, in->len};
}

/* Caller holds create_lock. */
static int intern_locked(atp_engine_t *e, atp_str_t s, uint32_t *out) {
  uint64_t hash = atp_hash_bytes(s.ptr, s.len);
  uint32_t id = atp_intern_find(e, s, hash);
  if (id != UINT32_MAX) {
    *out = id;
    return 0;
  }
  uint32_t count = atomic_load_explicit(&e->intern_count, memory_order_relaxed);
  if (count >= e->intern_max) return ATP_EFULL;
  atp_intern_t *in = atp_malloc(sizeof *in + s.len + 1);
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
  /* release: a reader that finds the slot sees the string's bytes. */
  atomic_store_explicit(&e->intern_index[i], count + 1, memory_order_release);
  *out = count;
  return 0;
}

/* --- positions ----------------------------------------------------------------------
 */

static uint64_t pos_hash(uint64_t sku_hash, uint64_t location_hash) {
  return atp_hash_mix(sku_hash, location_hash);
}

/* An index slot holds the position's hash tag (the top 32 bits of its hash)
 * beside its index, so a probe that meets another key rejects it without
 * touching that position's cache line: a hit costs the slot and the position. */
static uint64_t slot_tag(uint64_t h) {
  return h & 0xffffffff00000000ULL;
}

/* The position of (sku, location) given both strings' hashes: compares the
 * strings themselves, so the location needs no intern look-up first. */
uint32_t atp_pos_find_hashed(const atp_engine_t *e, atp_str_t sku, uint64_t sku_hash,
                             atp_str_t location, uint64_t location_hash) {
  uint64_t h = pos_hash(sku_hash, location_hash), tag = slot_tag(h);
  for (uint32_t i = (uint32_t)h & e->position_mask;; i = (i + 1) & e->position_mask) {
    uint64_t v = atomic_load_explicit(&e->position_index[i], memory_order_acquire);
    if (v == 0) return UINT32_MAX;
    if (slot_tag(v) != tag) continue;
    const atp_pos_t *p = &e->positions[(uint32_t)v - 1];
    if (intern_is(e->interns[p->sku], sku, sku_hash) &&
        intern_is(e->interns[p->location], location, location_hash))
      return (uint32_t)v - 1;
  }
}

uint32_t atp_pos_find(const atp_engine_t *e, atp_str_t sku, uint64_t sku_hash,
                      uint32_t location_id) {
  const atp_intern_t *loc = e->interns[location_id];
  return atp_pos_find_hashed(e, sku, sku_hash, (atp_str_t){loc->text, loc->len},
                             loc->hash);
}

uint32_t atp_pos_find_str(const atp_engine_t *e, atp_str_t sku, atp_str_t location) {
  return atp_pos_find_hashed(e, sku, atp_hash_bytes(sku.ptr, sku.len), location,
                             atp_hash_bytes(location.ptr, location.len));
}

int atp_pos_find_or_create(atp_engine_t *e, atp_str_t sku, atp_str_t location,
                           uint32_t *out) {
  uint32_t idx = atp_pos_find_str(e, sku, location);
  if (idx != UINT32_MAX) {
    *out = idx;
    return 0;
  }
  /* Creating takes the mutex; readers never do. Checked again under it. */
  pthread_mutex_lock(&e->create_lock);
  int rc = 0;
  idx = atp_pos_find_str(e, sku, location);
  if (idx == UINT32_MAX) {
    uint32_t sku_id, loc_id;
    uint32_t count = atomic_load_explicit(&e->position_count, memory_order_relaxed);
    if (count >= e->config.positions_max) {
      rc = ATP_EFULL;
    } else if ((rc = intern_locked(e, sku, &sku_id)) == 0 &&
               (rc = intern_locked(e, location, &loc_id)) == 0) {
      idx = count;
      atp_pos_t *p = &e->positions[idx];
      atomic_init(&p->free, 0);
      atomic_init(&p->reserved, 0);
      atomic_init(&p->committed, 0);
      atomic_init(&p->on_hand, 0);
      atomic_init(&p->safety, 0);
      atomic_init(&p->counted_at, ATP_TIME_NONE);
      atomic_init(&p->seq, 0);
      p->sku = sku_id;
      p->location = loc_id;
      atp_pos_cold_t *cold = &e->pos_cold[idx];
      atomic_init(&cold->lock, 0);
      cold->history = NULL;
      atp_intern_t *s = e->interns[sku_id];
      atomic_init(&cold->next_in_sku,
                  atomic_load_explicit(&s->first_position, memory_order_relaxed));
      atomic_store_explicit(&s->first_position, idx + 1, memory_order_release);
      atomic_store_explicit(&e->position_count, count + 1, memory_order_release);
      uint64_t h = pos_hash(s->hash, e->interns[loc_id]->hash);
      uint32_t i = (uint32_t)h & e->position_mask;
      while (atomic_load_explicit(&e->position_index[i], memory_order_relaxed))
        i = (i + 1) & e->position_mask;
      /* release: a reader that finds the slot sees the initialised position. */
      atomic_store_explicit(&e->position_index[i], slot_tag(h) | (idx + 1),
                            memory_order_release);
    }
  }
  pthread_mutex_unlock(&e->create_lock);
  *out = idx;
  return rc;
}

uint64_t atp_pos_begin(atp_pos_t *p) {
  return atomic_fetch_add_explicit(&p->seq, ATP_SEQ_PENDING_ONE, memory_order_acq_rel);
}

uint64_t atp_pos_end(atp_pos_t *p, bool changed) {
  uint64_t delta =
      changed ? 1 - ATP_SEQ_PENDING_ONE : (uint64_t)0 - ATP_SEQ_PENDING_ONE;
  uint64_t old = atomic_fetch_add_explicit(&p->seq, delta, memory_order_acq_rel);
  return ((old + delta) & ATP_SEQ_VERSION_MASK);
}

void atp_pos_lock(const atp_engine_t *e, atp_pos_t *p) {
  _Atomic uint32_t *lock = &atp_pos_cold(e, p)->lock;
  for (uint32_t spins = 0;; spins++) {
    uint32_t expected = 0;
    if (atomic_compare_exchange_weak_explicit(lock, &expected, 1, memory_order_acquire,
                                              memory_order_relaxed))
      return;
    if (spins >= LOCK_SPINS_BEFORE_YIELD) sched_yield();
  }
}

void atp_pos_unlock(const atp_engine_t *e, atp_pos_t *p) {
  atomic_store_explicit(&atp_pos_cold(e, p)->lock, 0, memory_order_release);
}

bool atp_pos_take(atp_pos_t *p, int64_t qty, bool committed, uint64_t *version) {
  ATP_ASSERT(qty > 0);
  int64_t free_now = atomic_load_explicit(&p->free, memory_order_acquire);
  if (free_now < qty) return false; /* the common refusal costs one load */
  atp_pos_begin(p);
  /* The grant: free only ever drops by a successful CAS from a value >= qty,
   * so the sum granted never exceeds what was free. */
  while (free_now >= qty) {
    if (atomic_compare_exchange_weak_explicit(&p->free, &free_now, free_now - qty,
                                              memory_order_acq_rel,
                                              memory_order_acquire)) {
      atomic_fetch_add_explicit(committed ? &p->committed : &p->reserved, qty,
                                memory_order_acq_rel);
      *version = atp_pos_end(p, true);
      return true;
    }
  }
  atp_pos_end(p, false);
  return false;
}

uint64_t atp_pos_give(atp_pos_t *p, int64_t qty, bool committed) {
  atp_pos_begin(p);
  int64_t was = atomic_fetch_sub_explicit(committed ? &p->committed : &p->reserved, qty,
                                          memory_order_acq_rel);
  ATP_ASSERT(was >= qty);
  atomic_fetch_add_explicit(&p->free, qty, memory_order_acq_rel);
  return atp_pos_end(p, true);
}

uint64_t atp_pos_commit(atp_pos_t *p, int64_t qty) {
  atp_pos_begin(p);
  int64_t was = atomic_fetch_sub_explicit(&p->reserved, qty, memory_order_acq_rel);
  ATP_ASSERT(was >= qty);
  atomic_fetch_add_explicit(&p->committed, qty, memory_order_acq_rel);
  return atp_pos_end(p, true);
}

void atp_pos_read(const atp_engine_t *e, uint32_t idx, atp_position_t *out) {
  atp_pos_t *p = &e->positions[idx];
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
  out->sku = atp_intern_str(e, p->sku);
  out->location = atp_intern_str(e, p->location);
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
 * so it is simply not found. */
int atp_position_get(const atp_engine_t *e, atp_str_t sku, atp_str_t location,
                     atp_position_t *out) {
  if (!sku.len || !location.len) return ATP_ENOTFOUND;
  uint32_t idx = atp_pos_find_str(e, sku, location);
  if (idx == UINT32_MAX) return ATP_ENOTFOUND;
  atp_pos_read(e, idx, out);
  return 0;
}

/* A batched read is a software pipeline of four stages over the keys: at step
 * t key t is hashed and its index slot prefetched, key t-D probes that slot
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
  st->sku_hash = atp_hash_bytes(k->sku.ptr, k->sku.len);
  st->location_hash = atp_hash_bytes(k->location.ptr, k->location.len);
  st->hash = pos_hash(st->sku_hash, st->location_hash);
  __builtin_prefetch(&e->position_index[st->hash & e->position_mask]);
}

/* The first slot whose tag matches is the candidate, fetched for reading or,
 * for a reservation about to CAS it, for writing. */
static void probe_candidate(const atp_engine_t *e, read_stage_t *st, bool for_write) {
  uint64_t tag = slot_tag(st->hash);
  st->idx = UINT32_MAX;
  for (uint32_t j = (uint32_t)st->hash & e->position_mask;;
       j = (j + 1) & e->position_mask) {
    uint64_t v = atomic_load_explicit(&e->position_index[j], memory_order_acquire);
    if (v == 0) return;
    if (slot_tag(v) != tag) continue;
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

uint64_t atp_pos_prefetch_slot(const atp_engine_t *e, atp_str_t sku,
                               atp_str_t location) {
  read_stage_t st;
  read_hash(e, &(atp_key_t){sku, location}, &st);
  return st.hash;
}

void atp_pos_prefetch_position(const atp_engine_t *e, uint64_t hash) {
  read_stage_t st = {.hash = hash};
  probe_candidate(e, &st, true);
}

static bool read_confirm(const atp_engine_t *e, const atp_key_t *k,
                         const read_stage_t *st, atp_position_t *out) {
  uint32_t idx = st->idx;
  if (idx == UINT32_MAX) return false;
  const atp_pos_t *p = &e->positions[idx];
  /* A tag collision falls back to the full probe. */
  if (!intern_is(e->interns[p->sku], k->sku, st->sku_hash) ||
      !intern_is(e->interns[p->location], k->location, st->location_hash)) {
    idx = atp_pos_find_hashed(e, k->sku, st->sku_hash, k->location, st->location_hash);
    if (idx == UINT32_MAX) return false;
  }
  atp_pos_read(e, idx, out);
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
  if (!atp_id_valid(sku)) return 0;
  uint32_t id = atp_intern_find(e, sku, atp_hash_bytes(sku.ptr, sku.len));
  if (id == UINT32_MAX) return 0;
  uint32_t n = 0, total = 0;
  atp_position_t cand;
  for (uint32_t v =
           atomic_load_explicit(&e->interns[id]->first_position, memory_order_acquire);
       v; v = atomic_load_explicit(&e->pos_cold[v - 1].next_in_sku,
                                   memory_order_acquire)) {
    total++;
    atp_pos_read(e, v - 1, &cand);
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

static void history_push(const atp_engine_t *e, atp_pos_t *p, int64_t occurred_at_ms,
                         int64_t delta, int64_t now_ms) {
  atp_pos_cold_t *cold = atp_pos_cold(e, p);
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
static int64_t history_after(const atp_engine_t *e, const atp_pos_t *p, int64_t t,
                             bool *complete) {
  const atp_history_t *h = atp_pos_cold(e, p)->history;
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

uint64_t atp_pos_fulfil(atp_engine_t *e, atp_pos_t *p, int64_t qty, int64_t now_ms) {
  atp_pos_begin(p);
  int64_t was = atomic_fetch_sub_explicit(&p->committed, qty, memory_order_acq_rel);
  ATP_ASSERT(was >= qty);
  atomic_fetch_sub_explicit(&p->on_hand, qty, memory_order_acq_rel);
  /* free = on_hand - safety - reserved - committed: both fell by qty. */
  uint64_t v = atp_pos_end(p, true);
  history_push(e, p, now_ms, -qty, now_ms);
  return v;
}

void atp_change_position(const atp_engine_t *e, atp_change_t *c, atp_cause_t cause,
                         atp_str_t cause_id, uint32_t pos, int64_t d_on_hand,
                         int64_t d_reserved, int64_t d_committed, uint64_t version) {
  const atp_pos_t *p = &e->positions[pos];
  memset(c, 0, sizeof *c);
  c->kind = ATP_CHANGE_POSITION;
  c->cause = cause;
  c->cause_id = cause_id;
  c->at_ms = atp_now(e);
  c->u.position.sku = atp_intern_str(e, p->sku);
  c->u.position.location = atp_intern_str(e, p->location);
  c->u.position.d_on_hand = d_on_hand;
  c->u.position.d_reserved = d_reserved;
  c->u.position.d_committed = d_committed;
  c->u.position.counted_at_ms = ATP_TIME_NONE;
  c->u.position.occurred_at_ms = ATP_TIME_NONE;
  c->u.position.version = version;
}

static bool qty_in_range(int64_t v) {
  return v >= -ATP_QTY_MAX && v <= ATP_QTY_MAX;
}

/* --- stock changes -----------------------------------------------------------------
 */

int atp_safety_stock_set(atp_engine_t *e, atp_str_t sku, atp_str_t location,
                         int64_t safety_stock, atp_position_t *out,
                         atp_result_t *result) {
  if (!atp_id_valid(sku)) {
    atp_result_set(result, "sku", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  if (!atp_id_valid(location)) {
    atp_result_set(result, "location", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  if (safety_stock < 0 || safety_stock > ATP_QTY_MAX) {
    atp_result_set(result, "safety_stock", "Must be in 0..%lld.",
                   (long long)ATP_QTY_MAX);
    return ATP_EBADREQ;
  }
  uint32_t idx;
  int rc = atp_pos_find_or_create(e, sku, location, &idx);
  if (rc) {
    atp_result_set(result, "", "%s", atp_strerror(rc));
    return rc;
  }
  atp_pos_t *p = &e->positions[idx];
  atp_pos_lock(e, p);
  int64_t old = atomic_load_explicit(&p->safety, memory_order_relaxed);
  int64_t d = safety_stock - old;
  atp_pos_begin(p);
  atomic_store_explicit(&p->safety, safety_stock, memory_order_release);
  atomic_fetch_sub_explicit(&p->free, d, memory_order_acq_rel);
  uint64_t v = atp_pos_end(p, true);
  atp_change_t c;
  atp_change_position(e, &c, ATP_CAUSE_SAFETY, (atp_str_t){"", 0}, idx, 0, 0, 0, v);
  c.u.position.d_safety_stock = d;
  atp_emit(e, &c, 1);
  atp_pos_unlock(e, p);
  if (out) atp_pos_read(e, idx, out);
  return 0;
}

static int check_common(atp_str_t id, atp_str_t sku, atp_str_t location,
                        atp_str_t source, atp_result_t *result) {
  if (!atp_id_valid(id)) {
    atp_result_set(result, "id", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  if (!atp_id_valid(sku)) {
    atp_result_set(result, "sku", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  if (!atp_id_valid(location)) {
    atp_result_set(result, "location", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  if (!atp_id_valid(source)) {
    atp_result_set(result, "source", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  return 0;
}

/* An on-hand change in progress: the claimed id and the locked position. */
typedef struct {
  uint32_t irec; /* the claimed idempotency record */
  uint32_t idx;  /* the position, locked */
  atp_pos_t *p;
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
  int rc = atp_idem_claim(e, kind, id, content, &o->irec, result);
  if (rc < 0) return rc;
  if (rc == 1) {
    const atp_irec_t *r = &e->irecs[o->irec];
    *position = r->outcome;
    position->sku = atp_intern_str(e, e->positions[r->pos].sku);
    position->location = atp_intern_str(e, e->positions[r->pos].location);
    *flags = r->flags;
    return 1;
  }
  if (has_change_from && change_from != 0 &&
      atp_pos_find_str(e, sku, location) == UINT32_MAX) {
    /* A position never seen has on_hand 0: a compare-and-set expecting
     * anything else fails without creating it (a refusal changes nothing, and
     * a ghost position would show in the endless aisle). Were it created
     * concurrently after the look-up, this answer is the one the look-up's
     * moment gives. */
    atp_idem_fail(e, o->irec);
    memset(position, 0, sizeof *position);
    position->sku = sku;
    position->location = location;
    position->counted_at_ms = ATP_TIME_NONE;
    result->current_on_hand = 0;
    atp_result_set(result, "change_from", "on_hand is 0 (never seen), not %lld",
                   (long long)change_from);
    return ATP_ECONFLICT;
  }
  rc = atp_pos_find_or_create(e, sku, location, &o->idx);
  if (rc) {
    atp_idem_fail(e, o->irec);
    atp_result_set(result, "", "%s", atp_strerror(rc));
    return rc;
  }
  o->p = &e->positions[o->idx];
  atp_pos_lock(e, o->p);
  o->on_hand = atomic_load_explicit(&o->p->on_hand, memory_order_relaxed);
  o->counted_at = atomic_load_explicit(&o->p->counted_at, memory_order_relaxed);
  if (has_change_from && change_from != o->on_hand) {
    atp_pos_unlock(e, o->p);
    atp_idem_fail(e, o->irec);
    atp_pos_read(e, o->idx, position);
    result->current_on_hand = o->on_hand;
    atp_result_set(result, "change_from", "The on_hand is %lld, not %lld.",
                   (long long)o->on_hand, (long long)change_from);
    return ATP_ECONFLICT;
  }
  return 0;
}

/* Gives up a change after onhand_begin: nothing changed, the id stays free. */
static int onhand_abort(atp_engine_t *e, onhand_t *o, int rc) {
  atp_pos_unlock(e, o->p);
  atp_idem_fail(e, o->irec);
  return rc;
}

/* Ends a change after onhand_begin: reads the position, remembers the outcome,
 * emits the records (c[0..n) plus the idempotency one) and unlocks. */
static void onhand_finish(atp_engine_t *e, onhand_t *o, uint32_t flags,
                          atp_position_t *position, atp_change_t *c, uint32_t n) {
  atp_pos_read(e, o->idx, position);
  atp_idem_done(e, o->irec, flags, o->idx, position, (atp_str_t){"", 0}, &c[n++]);
  atp_emit(e, c, n);
  atp_pos_unlock(e, o->p);
}

/* Moves on_hand (and free) by d under the position's flag; the version after. */
static uint64_t onhand_move(onhand_t *o, int64_t d) {
  atp_pos_begin(o->p);
  atomic_fetch_add_explicit(&o->p->on_hand, d, memory_order_acq_rel);
  atomic_fetch_add_explicit(&o->p->free, d, memory_order_acq_rel);
  return atp_pos_end(o->p, true);
}

static int check_adjust(const atp_adjust_req_t *req, atp_result_t *result) {
  int rc = check_common(req->id, req->sku, req->location, req->source, result);
  if (rc) return rc;
  if (req->delta == 0 || !qty_in_range(req->delta)) {
    atp_result_set(result, "delta", "Must be a non-zero integer within +-%lld.",
                   (long long)ATP_QTY_MAX);
    return ATP_EBADREQ;
  }
  if ((unsigned)req->reason >= ATP_REASON_COUNT_) {
    atp_result_set(result, "reason", "Unknown reason.");
    return ATP_EBADREQ;
  }
  if (req->ref.len > ATP_ID_BYTES_MAX) {
    atp_result_set(result, "ref", "Must be at most 128 bytes.");
    return ATP_EBADREQ;
  }
  return 0;
}

/* A time more than the allowed skew past now would corrupt every later count
 * (CONTRACT.md section 1): refused naming its field. */
static int check_not_future(const atp_engine_t *e, int64_t at_ms, int64_t now_ms,
                            const char *field, atp_result_t *result) {
  if (at_ms == ATP_TIME_NONE || at_ms <= now_ms + e->config.clock_skew_ms) return 0;
  atp_result_set(result, field,
                 "%s is %lld ms after the server's clock; at most %lld ms are allowed",
                 field, (long long)(at_ms - now_ms),
                 (long long)e->config.clock_skew_ms);
  return ATP_EBADREQ;
}

int atp_adjust(atp_engine_t *e, const atp_adjust_req_t *req, atp_adjust_res_t *res,
               atp_result_t *result) {
  int rc = check_adjust(req, result);
  if (rc) return rc;
  int64_t now = atp_now(e);
  rc = check_not_future(e, req->occurred_at_ms, now, "occurred_at", result);
  if (rc) return rc;
  int64_t occurred = req->occurred_at_ms == ATP_TIME_NONE ? now : req->occurred_at_ms;
  uint64_t h = atp_hash_str(ATP_IDEM_ADJUST, req->sku);
  h = atp_hash_str(h, req->location);
  h = atp_hash_int(h, req->delta);
  h = atp_hash_int(h, req->reason);
  h = atp_hash_str(h, req->source);
  h = atp_hash_int(h, req->occurred_at_ms);
  h = atp_hash_str(h, req->ref);
  h = atp_hash_int(h, req->has_change_from ? req->change_from : INT64_MIN);
  memset(res, 0, sizeof *res);
  onhand_t o;
  uint32_t flags = 0, n = 0;
  rc = onhand_begin(e, ATP_IDEM_ADJUST, req->id, h, req->sku, req->location,
                    req->has_change_from, req->change_from, &o, &res->position, &flags,
                    result);
  if (rc == 1) {
    res->applied = flags & ATP_IDEM_APPLIED;
    res->absorbed = flags & ATP_IDEM_ABSORBED;
    res->replayed = true;
    return 0;
  }
  if (rc) return rc;
  if (!qty_in_range(o.on_hand + req->delta)) {
    atp_result_set(result, "delta", "The on_hand would leave the range +-%lld.",
                   (long long)ATP_QTY_MAX);
    return onhand_abort(e, &o, ATP_EOVERFLOW);
  }
  atp_change_t c[2];
  if (o.counted_at != ATP_TIME_NONE && occurred <= o.counted_at) {
    res->absorbed = true; /* a count at or after it already saw it */
    flags |= ATP_IDEM_ABSORBED;
  } else {
    uint64_t v = onhand_move(&o, req->delta);
    history_push(e, o.p, occurred, req->delta, now);
    atp_change_position(e, &c[n], ATP_CAUSE_ADJUST, req->id, o.idx, req->delta, 0, 0,
                        v);
    c[n++].u.position.occurred_at_ms = occurred;
    res->applied = true;
    flags |= ATP_IDEM_APPLIED;
  }
  onhand_finish(e, &o, flags, &res->position, c, n);
  return 0;
}

int atp_count(atp_engine_t *e, const atp_count_req_t *req, atp_count_res_t *res,
              atp_result_t *result) {
  int rc = check_common(req->id, req->sku, req->location, req->source, result);
  if (rc) return rc;
  if (req->on_hand < 0 || req->on_hand > ATP_QTY_MAX) {
    atp_result_set(result, "on_hand", "Must be in 0..%lld.", (long long)ATP_QTY_MAX);
    return ATP_EBADREQ;
  }
  if (req->counted_at_ms == ATP_TIME_NONE) {
    atp_result_set(result, "counted_at", "The field is required.");
    return ATP_EBADREQ;
  }
  int64_t now = atp_now(e);
  rc = check_not_future(e, req->counted_at_ms, now, "counted_at", result);
  if (rc) return rc;
  uint64_t h = atp_hash_str(ATP_IDEM_COUNT, req->sku);
  h = atp_hash_str(h, req->location);
  h = atp_hash_int(h, req->on_hand);
  h = atp_hash_int(h, req->counted_at_ms);
  h = atp_hash_str(h, req->source);
  h = atp_hash_int(h, req->has_change_from ? req->change_from : INT64_MIN);
  memset(res, 0, sizeof *res);
  onhand_t o;
  uint32_t flags = 0, n = 0;
  rc = onhand_begin(e, ATP_IDEM_COUNT, req->id, h, req->sku, req->location,
                    req->has_change_from, req->change_from, &o, &res->position, &flags,
                    result);
  if (rc == 1) {
    res->applied = flags & ATP_IDEM_APPLIED;
    res->stale = flags & ATP_IDEM_STALE;
    res->approximate = flags & ATP_IDEM_APPROXIMATE;
    res->replayed = true;
    return 0;
  }
  if (rc) return rc;
  atp_change_t c[2];
  if (o.counted_at != ATP_TIME_NONE && req->counted_at_ms < o.counted_at) {
    res->stale = true; /* older than the last count: changes nothing */
    flags |= ATP_IDEM_STALE;
  } else {
    bool complete;
    int64_t target =
        req->on_hand + history_after(e, o.p, req->counted_at_ms, &complete);
    if (!qty_in_range(target)) {
      atp_result_set(result, "on_hand", "The on_hand would leave the range +-%lld.",
                     (long long)ATP_QTY_MAX);
      return onhand_abort(e, &o, ATP_EOVERFLOW);
    }
    if (!complete || req->counted_at_ms < now - e->config.history_window_ms) {
      res->approximate = true;
      flags |= ATP_IDEM_APPROXIMATE;
    }
    int64_t d = target - o.on_hand;
    atp_pos_begin(o.p);
    atomic_fetch_add_explicit(&o.p->on_hand, d, memory_order_acq_rel);
    atomic_fetch_add_explicit(&o.p->free, d, memory_order_acq_rel);
    atomic_store_explicit(&o.p->counted_at, req->counted_at_ms, memory_order_release);
    uint64_t v = atp_pos_end(o.p, true);
    atp_change_position(e, &c[n], ATP_CAUSE_COUNT, req->id, o.idx, d, 0, 0, v);
    c[n++].u.position.counted_at_ms = req->counted_at_ms;
    res->applied = true;
    flags |= ATP_IDEM_APPLIED;
  }
  onhand_finish(e, &o, flags, &res->position, c, n);
  return 0;
}

static const char *const reason_names[ATP_REASON_COUNT_] = {
    "received",   "sale",        "return_restock", "damaged", "shrink",
    "correction", "transfer_in", "transfer_out",   "other"};

const char *atp_reason_name(atp_reason_t reason) {
  return (unsigned)reason < ATP_REASON_COUNT_ ? reason_names[reason] : NULL;
}

int atp_reason_parse(atp_str_t name, atp_reason_t *out) {
  for (int i = 0; i < ATP_REASON_COUNT_; i++) {
    if (strlen(reason_names[i]) == name.len &&
        memcmp(reason_names[i], name.ptr, name.len) == 0) {
      *out = (atp_reason_t)i;
      return 0;
    }
  }
  return ATP_EBADREQ;
}

const char *atp_status_name(atp_status_t status) {
  static const char *const names[] = {"held", "committed", "released", "expired",
                                      "fulfilled"};
  return (unsigned)status < 5 ? names[status] : "unknown";
}

/* --- groups --------------------------------------------------------------------------
 */

static uint32_t group_find(const atp_engine_t *e, atp_str_t name) {
  uint32_t id = atp_intern_find(e, name, atp_hash_bytes(name.ptr, name.len));
  if (id == UINT32_MAX) return UINT32_MAX;
  uint64_t h = e->interns[id]->hash;
  for (uint32_t i = (uint32_t)h & e->group_mask;; i = (i + 1) & e->group_mask) {
    uint32_t v = atomic_load_explicit(&e->group_index[i], memory_order_acquire);
    if (v == 0) return UINT32_MAX;
    if (e->groups[v - 1].name == id) return v - 1;
  }
}

int atp_group_resolve(const atp_engine_t *e, atp_str_t name,
                      const atp_group_version_t **out) {
  uint32_t slot = group_find(e, name);
  if (slot == UINT32_MAX) return ATP_ENOTFOUND;
  *out = atomic_load_explicit(&e->groups[slot].current, memory_order_acquire);
  return *out ? 0 : ATP_ENOTFOUND;
}

int atp_group_get(const atp_engine_t *e, atp_str_t name, atp_str_t *out,
                  uint32_t out_max, uint32_t *count) {
  const atp_group_version_t *g;
  *count = 0;
  if (!atp_id_valid(name) || atp_group_resolve(e, name, &g)) return ATP_ENOTFOUND;
  for (uint32_t i = 0; i < g->count && i < out_max; i++)
    out[i] = atp_intern_str(e, g->locations[i]);
  *count = g->count;
  return 0;
}

void atp_group_each(const atp_engine_t *e,
                    void (*fn)(void *ctx, atp_str_t name, const atp_str_t *locations,
                               uint32_t count),
                    void *ctx) {
  uint32_t n = atomic_load_explicit(&e->group_count, memory_order_acquire);
  atp_str_t *locs = atp_malloc(sizeof(atp_str_t) * ATP_GROUP_LOCATIONS_MAX);
  if (!locs) return;
  for (uint32_t s = 0; s < n; s++) {
    const atp_group_version_t *g =
        atomic_load_explicit(&e->groups[s].current, memory_order_acquire);
    if (!g) continue;
    for (uint32_t i = 0; i < g->count; i++)
      locs[i] = atp_intern_str(e, g->locations[i]);
    fn(ctx, atp_intern_str(e, e->groups[s].name), locs, g->count);
  }
  atp_free(locs);
}

/* Installs version g (NULL: delete) under create_lock; emits the change. */
static int group_install(atp_engine_t *e, atp_str_t name, atp_group_version_t *g,
                         const atp_str_t *locations, atp_result_t *result, bool emit) {
  pthread_mutex_lock(&e->create_lock);
  uint32_t slot = group_find(e, name);
  int rc = 0;
  if (slot == UINT32_MAX) {
    uint32_t name_id;
    uint32_t n = atomic_load_explicit(&e->group_count, memory_order_relaxed);
    if (!g) {
      rc = ATP_ENOTFOUND;
    } else if (n >= ATP_GROUPS_MAX) {
      rc = ATP_EFULL;
    } else if ((rc = intern_locked(e, name, &name_id)) == 0) {
      e->groups[n].name = name_id;
      atomic_init(&e->groups[n].current, NULL);
      atomic_store_explicit(&e->group_count, n + 1, memory_order_release);
      uint32_t i = (uint32_t)e->interns[name_id]->hash & e->group_mask;
      while (atomic_load_explicit(&e->group_index[i], memory_order_relaxed))
        i = (i + 1) & e->group_mask;
      atomic_store_explicit(&e->group_index[i], n + 1, memory_order_release);
      slot = n;
    }
  }
  if (rc == 0) {
    atp_group_version_t *old =
        atomic_exchange_explicit(&e->groups[slot].current, g, memory_order_acq_rel);
    if (!g && !old) rc = ATP_ENOTFOUND;
    if (old) atp_retire(e, old);
    if (rc == 0 && emit) {
      atp_change_t c;
      memset(&c, 0, sizeof c);
      c.kind = ATP_CHANGE_GROUP;
      c.cause = ATP_CAUSE_GROUP;
      c.cause_id = name;
      c.at_ms = atp_now(e);
      c.u.group.name = name;
      c.u.group.locations = locations;
      c.u.group.location_count = g ? g->count : 0;
      atp_emit(e, &c, 1);
    }
  }
  pthread_mutex_unlock(&e->create_lock);
  if (rc) {
    if (g) atp_free(g);
    atp_result_set(result, "", "%s",
                   rc == ATP_ENOTFOUND ? "Unknown group." : atp_strerror(rc));
  }
  return rc;
}

static int group_put(atp_engine_t *e, atp_str_t name, const atp_str_t *locations,
                     uint32_t count, atp_result_t *result, bool emit) {
  if (!atp_id_valid(name)) {
    atp_result_set(result, "name", "Must be 1..128 bytes of printable UTF-8.");
    return ATP_EBADREQ;
  }
  if (count == 0 || count > ATP_GROUP_LOCATIONS_MAX) {
    atp_result_set(result, "locations", "A group has 1..%d locations.",
                   ATP_GROUP_LOCATIONS_MAX);
    return ATP_EBADREQ;
  }
  for (uint32_t i = 0; i < count; i++) {
    char field[32];
    snprintf(field, sizeof field, "locations[%u]", i);
    if (!atp_id_valid(locations[i])) {
      atp_result_set(result, field, "Must be 1..128 bytes of printable UTF-8.");
      return ATP_EBADREQ;
    }
    /* O(count^2) duplicate check, at most 1000^2/2 short compares on a rare call */
    for (uint32_t j = 0; j < i; j++) {
      if (locations[j].len == locations[i].len &&
          memcmp(locations[j].ptr, locations[i].ptr, locations[i].len) == 0) {
        atp_result_set(result, field, "Duplicate location.");
        return ATP_EBADREQ;
      }
    }
  }
  atp_group_version_t *g = atp_malloc(sizeof *g + count * sizeof g->locations[0]);
  if (!g) return ATP_ENOMEM;
  g->count = count;
  pthread_mutex_lock(&e->create_lock);
  int rc = 0;
  for (uint32_t i = 0; i < count && rc == 0; i++)
    rc = intern_locked(e, locations[i], &g->locations[i]);
  pthread_mutex_unlock(&e->create_lock);
  if (rc) {
    atp_free(g);
    atp_result_set(result, "", "%s", atp_strerror(rc));
    return rc;
  }
  return group_install(e, name, g, locations, result, emit);
}

int atp_group_put(atp_engine_t *e, atp_str_t name, const atp_str_t *locations,
                  uint32_t count, atp_result_t *result) {
  return group_put(e, name, locations, count, result, true);
}

int atp_group_delete(atp_engine_t *e, atp_str_t name, atp_result_t *result) {
  if (!atp_id_valid(name)) {
    atp_result_set(result, "name", "Unknown group.");
    return ATP_ENOTFOUND;
  }
  return group_install(e, name, NULL, NULL, result, true);
}

/* --- lifecycle -----------------------------------------------------------------------
 */

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
  e->wheel.inboxes = atp_table_alloc(ATP_SHARDS, sizeof *e->wheel.inboxes, false);
  if (!e->interns || !e->intern_index || !e->positions || !e->pos_cold ||
      !e->position_index || !e->groups || !e->group_index || !e->wheel.inboxes ||
      atp_reservations_init(e) || atp_idem_init(e)) {
    atp_engine_destroy(e);
    return ATP_ENOMEM;
  }
  *out = e;
  return 0;
}

void atp_engine_destroy(atp_engine_t *e) {
  if (!e) return;
  atp_reservations_destroy(e);
  atp_idem_destroy(e);
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
  atp_table_free(e->wheel.inboxes, ATP_SHARDS, sizeof *e->wheel.inboxes);
  pthread_mutex_destroy(&e->create_lock);
  atp_free(e);
}

void atp_engine_stats(const atp_engine_t *e, atp_engine_stats_t *out) {
  memset(out, 0, sizeof *out);
  out->positions = atomic_load_explicit(&e->position_count, memory_order_relaxed);
  out->positions_max = e->config.positions_max;
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
  out->idempotency_ids = atp_keyed_live(&e->itable);
  uint32_t ng = atomic_load_explicit(&e->group_count, memory_order_acquire);
  for (uint32_t i = 0; i < ng; i++)
    if (atomic_load_explicit(&e->groups[i].current, memory_order_acquire))
      out->groups++;
}

/* --- replay --------------------------------------------------------------------------
 */

static int apply_position(atp_engine_t *e, const atp_change_position_t *c) {
  if (!atp_id_valid(c->sku) || !atp_id_valid(c->location)) return ATP_EBADREQ;
  uint32_t idx;
  int rc = atp_pos_find_or_create(e, c->sku, c->location, &idx);
  if (rc) return rc;
  atp_pos_t *p = &e->positions[idx];
  atomic_fetch_add(&p->on_hand, c->d_on_hand);
  atomic_fetch_add(&p->safety, c->d_safety_stock);
  atomic_fetch_add(&p->reserved, c->d_reserved);
  atomic_fetch_add(&p->committed, c->d_committed);
  atomic_fetch_add(&p->free,
                   c->d_on_hand - c->d_safety_stock - c->d_reserved - c->d_committed);
  if (c->counted_at_ms != ATP_TIME_NONE) atomic_store(&p->counted_at, c->counted_at_ms);
  if (c->occurred_at_ms != ATP_TIME_NONE && c->d_on_hand)
    history_push(e, p, c->occurred_at_ms, c->d_on_hand, atp_now(e));
  /* Versions: replayed records may come in any order; keep the largest. */
  uint64_t seq = atomic_load(&p->seq);
  if ((c->version & ATP_SEQ_VERSION_MASK) > seq)
    atomic_store(&p->seq, c->version & ATP_SEQ_VERSION_MASK);
  return 0;
}

int atp_engine_apply(atp_engine_t *e, const atp_change_t *records, uint32_t count) {
  for (uint32_t i = 0; i < count; i++) {
    const atp_change_t *c = &records[i];
    int rc;
    switch (c->kind) {
      case ATP_CHANGE_POSITION:
        rc = apply_position(e, &c->u.position);
        break;
      case ATP_CHANGE_RESERVATION:
        rc = atp_reservation_apply(e, c);
        break;
      case ATP_CHANGE_GROUP:
        if (c->u.group.location_count)
          rc = group_put(e, c->u.group.name, c->u.group.locations,
                         c->u.group.location_count, NULL, false);
        else
          rc = group_install(e, c->u.group.name, NULL, NULL, NULL, false);
        if (rc == ATP_ENOTFOUND) rc = 0;
        break;
      case ATP_CHANGE_IDEMPOTENCY:
        rc = atp_idem_apply(e, c);
        break;
      default:
        rc = ATP_EBADREQ;
    }
    if (rc) return rc;
  }
  return 0;
}
