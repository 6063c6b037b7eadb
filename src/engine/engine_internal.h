/* engine_internal.h - the engine's data layout and the internal API between
 * its files (prefix atp__), in sections in the order the files depend on one
 * another, lowest first; every arrow points down:
 *
 *   hash.h          hashing and short-string equality (inline)
 *   epoch.c         reader slots and epochs: when retired memory may be reused
 *   keyed.c         per-thread shards; the keyed record table
 *   prefault.c      the thread that maps fresh records' pages ahead of use
 *   timerwheel.c    the timer wheel (include/atp/timerwheel.h), knows no record
 *   inbox.c         the rings that carry record refs to the ticker
 *   common.c        clock, ids, results, scratch, change hook, retired memory
 *   positions.c     interned strings, positions, reads, history, unit moves
 *   idempotency.c   remembered client ids and their outcomes
 *   stock.c         safety stock, adjustments, counts
 *   groups.c        location groups
 *   reservations.c  reservations and their expiry
 *   lifecycle.c     create, destroy, stats, replay, the ticker: the one file
 *                   that knows every kind of record
 *
 * Not a public header.
 *
 * Memory: every table is allocated at atp_engine_create from the config and
 * never resized. Positions and interned strings are never freed before
 * atp_engine_destroy, so lock-free readers can hold pointers to them.
 * Reservation and idempotency records are recycled, but only through a limbo
 * that waits until no reader that could have found the record is still
 * inside the engine (epochs, epoch.c). Each record also carries a sequence
 * word so a reader validates what it copied.
 */
#ifndef ATP_ENGINE_INTERNAL_H
#define ATP_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "atp/assert.h"
#include "atp/engine.h"
#include "atp/timerwheel.h"
#include "hash.h"

/* A static helper whose only effects are __builtin_prefetch: GCC 12's
 * mod-ref analysis counts a prefetch as no effect at all, so it drops such a
 * helper and every call to it as dead code unless the helper is inlined
 * before that analysis runs. `make check-prefetch` guards the objects. */
#define ATP_PREFETCHER static inline __attribute__((always_inline))

/* content hashing for idempotency */
static inline uint64_t atp__hash_str(uint64_t h, atp_str_t s) {
  return atp__hash_mix(h, atp__hash_bytes(s.ptr, s.len) ^ s.len);
}
static inline uint64_t atp__hash_int(uint64_t h, int64_t v) {
  return atp__hash_mix(h, (uint64_t)v);
}

/* --- per-thread shards ---------------------------------------------------------
 * Counters and stacks that every reservation touches are split into shards on
 * separate cache lines; a thread keeps to its own shard, so two threads working
 * on different positions share no written cache line. */

#define ATP_SHARDS 16

typedef struct {
  _Alignas(64) _Atomic uint64_t value;
} atp_padded_t;

/* This thread's shard, 0..ATP_SHARDS-1, assigned round-robin on first use. */
int atp__shard(void);

/* --- epochs (epoch.c) ------------------------------------------------------------
 * Epoch-based reclamation of what lock-free readers may hold: keyed records
 * (recycled through a limbo, keyed.c) and retired memory (old group versions,
 * old reservation line and text arrays, common.c).
 *
 * The engine's epoch counts ticks: the ticker, and only it, advances it at
 * the start of every tick. Every engine call that may follow a keyed chain
 * or a pointer to retirable memory brackets that work with
 * atp__epoch_enter/exit, which publish the epoch the thread entered at in its
 * reader slot (0 outside). The ticker stamps what it unlinks or collects
 * with the epoch then, E, and reuses it only once every slot holds 0 or an
 * epoch > E; see keyed.c for why that is enough.
 *
 * Each thread has one reader id for its life (every engine's slot array is
 * indexed by it); a slot belongs to one thread, which alone writes its depth
 * and its epoch; the ticker only reads the epoch. */
typedef struct {
  _Alignas(64) _Atomic uint64_t epoch; /* 0 outside the engine, else the epoch
                                          entered at; written by its thread */
  uint32_t depth; /* nested brackets; its thread only */
} atp_reader_slot_t;

/* This thread's reader id, -1 until its first call. */
extern _Thread_local int atp__tl_reader;
/* Takes this thread's reader id (asserts: at most ATP_ENGINE_THREADS_MAX). */
int atp__reader_id(void);

/* --- inboxes to the ticker (inbox.c) ------------------------------------------
 * The timer wheel belongs to the one thread that calls atp_engine_tick. Other
 * threads never touch it: they put the record's ref (an opaque nonzero word,
 * lifecycle.c gives it its meaning) on their shard's inbox, and the ticker
 * files the record from its current state. A flag per record keeps it queued
 * at most once.
 *
 * A shard's inbox is a ring of refs the ticker reads in order, so it fetches
 * the records ahead without chasing links from one to the next. A thread
 * claims a cell by CAS on tail and then writes its ref; the ticker takes refs
 * from head up to the first cell not written yet, zeroes them and moves head
 * on. A ref that finds the ring full goes on the shard's overflow chain
 * instead, a Treiber stack through the records' own links that the ticker
 * drains whole with one exchange (so it has no ABA problem). */
#define ATP_INBOX_RING (1u << 18) /* 1 MiB: 100 ms of 2M refs/s */
typedef struct {
  _Alignas(64) _Atomic uint64_t tail; /* cells claimed */
  _Alignas(64) _Atomic uint64_t head; /* cells taken by the ticker */
  _Alignas(64) _Atomic uint32_t refs[ATP_INBOX_RING];
} atp_inbox_ring_t;

/* What a record carries to be queued: its flag and its overflow link. */
typedef struct {
  _Atomic uint32_t next;   /* overflow chain link: a ref, 0 = end */
  _Atomic uint32_t queued; /* 1 while the ref is on an inbox */
} atp_inbox_link_t;

typedef struct {
  atp_inbox_ring_t *rings;           /* one per shard */
  atp_padded_t overflow[ATP_SHARDS]; /* a full ring's refs: Treiber stacks */
} atp_inbox_t;

/* Refs, the ticker's names for records: a reservation's is its index+1, an
 * idempotency record's its index+1 with this bit set. */
#define ATP_REF_IDEM 0x80000000u

int atp__inbox_init(atp_inbox_t *in);
void atp__inbox_destroy(atp_inbox_t *in);
/* Queues ref (whose record carries link) unless it is queued already. */
void atp__inbox_push(atp_inbox_t *in, uint32_t ref, atp_inbox_link_t *link);

/* --- interned strings ----------------------------------------------------- */

typedef struct {
  uint64_t hash;                   /* atp__hash_bytes of the text */
  _Atomic uint32_t first_position; /* SKUs: head of their position list, index+1 */
  uint32_t len;
  char text[]; /* len bytes then NUL */
} atp_interned_t;

/* --- positions ------------------------------------------------------------ */

/* seq word: writers in flight in the top bits, version in the low 40 bits. */
#define ATP_SEQ_PENDING_ONE  (1ULL << 40)
#define ATP_SEQ_VERSION_MASK (ATP_SEQ_PENDING_ONE - 1)

typedef struct {
  _Atomic int64_t free;       /* on_hand - safety - reserved - committed: the
                                 one word a reservation CASes */
  _Atomic int64_t reserved;   /* units of held reservations, >= 0 */
  _Atomic int64_t committed;  /* units of committed reservations, >= 0 */
  _Atomic int64_t on_hand;    /* written only under lock */
  _Atomic int64_t safety;     /* written only under lock, >= 0 */
  _Atomic int64_t counted_at; /* written only under lock; ATP_TIME_NONE */
  _Atomic uint64_t seq;       /* pending writers << 40 | version */
  uint32_t sku;               /* intern id, immutable after publication */
  uint32_t location;          /* intern id, immutable after publication */
} atp_position_record_t;

/* One cache line (the table is 2 MiB aligned): a read or a reservation touches
 * exactly one line of the position. */
_Static_assert(sizeof(atp_position_record_t) == 64, "a position is one cache line");

/* What only on-hand writers and the endless aisle touch, in a table beside the
 * positions (same index), so it does not widen the line every read loads. */
typedef struct {
  _Atomic uint32_t next_in_sku; /* next position of the same SKU, index+1 */
  _Atomic uint32_t lock;        /* on-hand writers' spin flag: 0 free, 1 held */
  struct atp_history *history;  /* on-hand changes; NULL until one; under lock */
  uint64_t base_version; /* the version a snapshot import gave it, 0 if none:
                            replay skips changes at or below (lifecycle.c) */
} atp_position_cold_t;

/* One on-hand change, kept so that a late count can add what it did not see. */
typedef struct {
  int64_t occurred_at_ms;
  int64_t delta;
} atp_history_entry_t;

typedef struct atp_history {
  uint32_t head;    /* index of the oldest entry */
  uint32_t count;   /* entries held, <= cap */
  uint32_t cap;     /* allocated entries, <= ATP_HISTORY_ENTRIES_MAX */
  int64_t floor_ms; /* changes at or before this time may have been dropped */
  atp_history_entry_t entries[];
} atp_history_t;

/* --- groups --------------------------------------------------------------- */

typedef struct {
  uint32_t count;
  uint32_t locations[]; /* intern ids, in group order */
} atp_group_version_t;

typedef struct {
  uint32_t name;                          /* intern id */
  _Atomic(atp_group_version_t *) current; /* NULL: deleted */
} atp_group_entry_t;

/* --- keyed record tables (keyed.c) ------------------------------------------
 * A fixed pool of records plus a hash table of chains through the records.
 * Inserting pushes onto a chain with CAS; two inserts of the same key resolve
 * by position in the chain (the deeper, older one wins). Only the ticker thread
 * unlinks. Records go through a limbo before their slot is reused. */

enum { ATP_REC_FREE = 0, ATP_REC_PENDING = 1, ATP_REC_LIVE = 2, ATP_REC_DEAD = 3 };

/* A record's entry in its table: all a look-up, an insert, the free stacks
 * and the limbo touch of it, in one half cache line. */
typedef struct {
  uint64_t hash;              /* key hash, set before push */
  _Atomic uint32_t next;      /* chain link, index+1 */
  _Atomic uint32_t state;     /* ATP_REC_* */
  _Atomic uint32_t free_next; /* free stack or limbo link, index+1 */
  uint8_t owner;              /* shard that allocated the record: it gets it back */
  uint64_t limbo_epoch;       /* the engine's epoch when it entered limbo */
} atp_keyed_entry_t;
_Static_assert(sizeof(atp_keyed_entry_t) == 32, "two entries a cache line");

typedef struct {
  _Atomic uint32_t *heads; /* bucket heads, record index+1 */
  uint32_t bucket_mask;
  atp_keyed_entry_t *entries; /* one per record */
  uint32_t capacity;
  uint64_t generation;                /* distinguishes tables for thread-local chunks */
  _Atomic uint32_t bump;              /* records never used yet start here; threads take
                                         chunks of them */
  atp_padded_t free_head[ATP_SHARDS]; /* tagged Treiber stacks: tag << 32 | index+1 */
  _Atomic bool recycled;         /* a record has ever been put back on a free list */
  atp_padded_t live[ATP_SHARDS]; /* allocations, as int64 */
  atp_padded_t retired;          /* ticker only writes: retirements, off live's sum */
  /* limbo: ticker only */
  uint32_t limbo_head, limbo_tail; /* index+1 FIFO through free_next */
  /* Prefaulting the never-used records ahead of bump (prefault.c): the
   * arrays indexed like the records (the entries, the records themselves). */
  struct {
    void *base;
    size_t stride;
  } prefault_arrays[2];
  struct atp_prefaulter *prefaulter; /* NULL: none */
  _Atomic uint32_t prefault_kick;    /* a chunk taken at or past it wakes the
                                        prefaulter; UINT32_MAX: not now */
  uint32_t prefaulted;               /* records populated; the prefaulter's */
} atp_keyed_table_t;

int atp__keyed_init(atp_keyed_table_t *t, uint32_t capacity);
void atp__keyed_destroy(atp_keyed_table_t *t);
/* A free record index, or UINT32_MAX when the pool is exhausted. */
uint32_t atp__keyed_alloc(atp_keyed_table_t *t);
/* The record atp__keyed_alloc would most likely return next on this thread,
 * without taking it (a hint for prefetching); UINT32_MAX if unknown. */
uint32_t atp__keyed_peek(const atp_keyed_table_t *t);
/* Warming the cache for a look-up of hash a little later: its bucket head,
 * and once that is in, the first record of its chain (only an address: the
 * entries live as long as the table, whatever the chain holds by then). */
void atp__keyed_prefetch_head(const atp_keyed_table_t *t, uint64_t hash);
void atp__keyed_prefetch_chain(const atp_keyed_table_t *t, uint64_t hash);
/* Publishes record idx (state PENDING, hash set) on its chain. */
void atp__keyed_push(atp_keyed_table_t *t, uint32_t idx);
/* Ticker only: unlinks idx from its chain and puts it in limbo, stamped with
 * the current epoch. */
void atp__keyed_retire(atp_keyed_table_t *t, uint32_t idx, uint64_t epoch);
/* Records in use, summed over shards. */
uint64_t atp__keyed_live(const atp_keyed_table_t *t);
/* Ticker only: recycles the limbo records stamped before oldest (the oldest
 * epoch a reader is in, atp__epoch_oldest) and at least ATP_GRACE_EPOCHS
 * before epoch (the current one). */
void atp__keyed_reclaim(atp_keyed_table_t *t, uint64_t epoch, uint64_t oldest);
/* seq_cst, as every load of a chain link: see keyed.c's header on why the
 * reclamation argument needs the links' loads and the unlinks in one total
 * order with the reader's announcement (on x86 it is the same mov). */
static inline uint32_t atp__keyed_head(const atp_keyed_table_t *t, uint64_t hash) {
  return atomic_load_explicit(&t->heads[hash & t->bucket_mask], memory_order_seq_cst);
}
static inline uint32_t atp__keyed_next(const atp_keyed_table_t *t, uint32_t v) {
  return atomic_load_explicit(&t->entries[v - 1].next, memory_order_seq_cst);
}

/* --- prefaulting (prefault.c) ----------------------------------------------
 * A fresh server takes its records from never-touched memory, and the first
 * write to each page of a record table costs the writing thread a page fault
 * and the kernel's zeroing of the page: 10 % of an adjustment's time, 40 % of
 * a reservation's, on the request path. One engine thread populates the pages
 * of the next records ahead of each keyed table's bump cursor instead, woken
 * by the thread that takes a chunk past the table's prefault_kick mark (one
 * look per chunk of 64 records). It keeps at most ATP_PREFAULT_AHEAD_BYTES of
 * each array populated ahead of the cursor: memory a small server would
 * touch soon anyway, and none before its first record. */
#define ATP_PREFAULT_AHEAD_BYTES ((size_t)16 << 20)

int atp__prefault_init(atp_engine_t *e);
void atp__prefault_destroy(atp_engine_t *e);
/* From the thread that took a chunk starting at start: wakes the prefaulter
 * if the chunk reached the table's mark. */
void atp__prefault_kick(atp_keyed_table_t *t);

/* --- reservation records --------------------------------------------------- */

typedef struct {
  uint32_t pos; /* position index; immutable once published */
  _Atomic int64_t qty;
  _Atomic int64_t fulfilled;
  _Atomic int64_t released;
} atp_reservation_line_t;

#define ATP_RESERVATION_LINES_INLINE 2
#define ATP_RESERVATION_TEXT_INLINE  256

/* Laid out by when it is touched: a single-line reservation whose id has at
 * most 24 bytes lives in its first three cache lines (header; lines; links
 * and the start of its text). A recycled record is cold after its time in
 * limbo; those lines are fetched ahead of time (prefetch_next_record). */
typedef struct {
  /* line 0: what reads and every mutation check */
  _Atomic uint32_t lock;  /* mutation flag: 0 free, 1 held */
  _Atomic uint32_t rseq;  /* odd while a mutation writes; readers validate */
  _Atomic int32_t status; /* atp_status_t */
  uint16_t id_len, order_ref_len, channel_len, customer_id_len; /* immutable */
  _Atomic uint16_t order_id_len; /* set once at commit, after the bytes */
  uint64_t content_hash;         /* of the creating request */
  int64_t created_at_ms;
  _Atomic int64_t expires_at_ms;
  _Atomic int64_t ttl_ms;
  _Atomic int64_t ended_at_ms;
  /* line 1 */
  atp_reservation_line_t inline_lines[ATP_RESERVATION_LINES_INLINE];
  /* line 2 */
  _Atomic uint32_t line_count;
  uint32_t line_cap;                       /* under lock */
  _Atomic(atp_reservation_line_t *) lines; /* inline_lines or a heap array */
  atp_timer_t timer;                       /* ticker only */
  atp_inbox_link_t inbox;                  /* queued to the ticker */
  char *text; /* id, order_ref, channel, customer_id, order_id */
  char inline_text[ATP_RESERVATION_TEXT_INLINE];
} __attribute__((aligned(64))) atp_reservation_record_t;
_Static_assert(offsetof(atp_reservation_record_t, inline_lines) == 64,
               "lines start line 1");
_Static_assert(offsetof(atp_reservation_record_t, line_count) == 128,
               "links start line 2");

/* Offsets of the strings in reservation record->text. */
static inline const char *atp__reservation_id(const atp_reservation_record_t *r) {
  return r->text;
}
static inline const char *atp__reservation_order_ref(
    const atp_reservation_record_t *r) {
  return r->text + r->id_len;
}
static inline const char *atp__reservation_channel(const atp_reservation_record_t *r) {
  return r->text + r->id_len + r->order_ref_len;
}
static inline const char *atp__reservation_customer(const atp_reservation_record_t *r) {
  return r->text + r->id_len + r->order_ref_len + r->channel_len;
}
static inline char *atp__reservation_order_id(atp_reservation_record_t *r) {
  return r->text + r->id_len + r->order_ref_len + r->channel_len + r->customer_id_len;
}

/* --- idempotency records --------------------------------------------------- */

#define ATP_IDEM_APPLIED     1u
#define ATP_IDEM_ABSORBED    2u
#define ATP_IDEM_STALE       4u
#define ATP_IDEM_APPROXIMATE 8u

typedef struct {
  uint8_t kind; /* atp_idem_kind_t */
  uint8_t id_len;
  uint8_t resid_len;
  uint32_t flags;
  uint64_t content_hash;
  int64_t created_at_ms;
  uint32_t pos;                    /* adjust, count: the position */
  atp_position_t outcome;          /* strings not kept: filled from pos on read */
  char text[2 * ATP_ID_BYTES_MAX]; /* id, then reservation id */
  atp_timer_t timer;               /* ticker only */
  atp_inbox_link_t inbox;          /* queued to the ticker */
} atp_idempotency_record_t;

/* --- retired memory --------------------------------------------------------- */

typedef struct atp_retired {
  struct atp_retired *next;
  void *ptr;
  uint64_t epoch; /* the ticker's epoch when it took it from the shared list */
} atp_retired_t;

/* --- the engine -------------------------------------------------------------- */

struct atp_engine {
  atp_engine_config_t config;

  pthread_mutex_t create_lock; /* creating positions, strings, groups */

  /* interned strings */
  atp_interned_t **interns; /* id -> string; ids dense from 0 */
  _Atomic uint32_t intern_count;
  uint32_t intern_max;
  _Atomic uint32_t *intern_index; /* open addressing: id+1 */
  uint32_t intern_mask;

  /* positions */
  atp_position_record_t *positions;
  atp_position_cold_t *pos_cold; /* beside positions, same index */
  _Atomic uint32_t position_count;
  _Atomic uint64_t *position_index; /* open addressing: hash tag << 32 | index+1 */
  uint32_t position_mask;

  /* groups */
  atp_group_entry_t *groups;
  _Atomic uint32_t group_count;
  _Atomic uint32_t *group_index; /* open addressing: slot+1 */
  uint32_t group_mask;

  /* reservations and idempotency */
  atp_keyed_table_t reservation_table;
  atp_reservation_record_t *reservation_records;
  atp_keyed_table_t idempotency_table;
  atp_idempotency_record_t *idempotency_records;

  /* ticker */
  atp_timerwheel_t wheel;
  atp_inbox_t inbox;
  uint32_t tick_expired; /* reservations the running tick expired */
  uint64_t tick_count;
  _Atomic(atp_retired_t *) retired; /* pushed by any thread */
  atp_retired_t *retired_waiting;   /* ticker only */

  struct atp_prefaulter *prefaulter; /* prefault.c; NULL when it could not start */

  /* epochs (epoch.c) */
  atp_padded_t epoch;         /* 1 + ticks begun; ticker only writes; readers load
                                 it on every bracket, so it has its own line */
  atp_reader_slot_t *readers; /* ATP_ENGINE_THREADS_MAX, by reader id */

  /* stats */
  _Atomic uint64_t expirations;             /* ticker only writes it */
  atp_padded_t status_count[ATP_SHARDS][5]; /* per shard, as int64 deltas */
  atp_padded_t purged_count[5]; /* ticker only writes: purged, by status; comes
                                   off status_count's sum */
};

/* --- epoch brackets (epoch.c) ---------------------------------------------------- */

/* A record or retired block is also reused only this many epochs (ticks, 2 s
 * in the server) after it was stamped: the condition of the time-based grace
 * that came before the epochs, kept because it costs nothing (the ticker
 * checks a number it has) and leaves a margin for a bracket missed somewhere.
 * The readers' epochs, not this, are what makes reuse safe. */
#define ATP_GRACE_EPOCHS 20u

int atp__epoch_init(atp_engine_t *e);
void atp__epoch_destroy(atp_engine_t *e);
/* Ticker only: starts the next epoch (at the start of a tick). */
void atp__epoch_advance(atp_engine_t *e);
/* Ticker only: the current epoch, the stamp for what it unlinks now. */
static inline uint64_t atp__epoch_now(const atp_engine_t *e) {
  return atomic_load_explicit(&((atp_engine_t *)e)->epoch.value, memory_order_relaxed);
}
/* Ticker only: the smallest epoch a reader is in, UINT64_MAX if none. Call
 * after this tick's unlinks: it is the scan that the argument in keyed.c
 * orders after them. O(threads that ever called), one line each. */
uint64_t atp__epoch_oldest(const atp_engine_t *e);

/* Enters the engine's read side: until the matching atp__epoch_exit, nothing
 * this thread can reach through a keyed chain or a retirable pointer is
 * reused. Brackets nest (only the outermost publishes). Thread: any. */
static inline void atp__epoch_enter(const atp_engine_t *e) {
  int id = atp__tl_reader;
  if (__builtin_expect(id < 0, 0)) id = atp__reader_id();
  atp_reader_slot_t *slot = &e->readers[id];
  if (slot->depth++) return;
  /* acquire: pairs with atp__epoch_advance's release, so everything the
   * ticker unlinked before it began this epoch is visible here. */
  uint64_t epoch =
      atomic_load_explicit(&((atp_engine_t *)e)->epoch.value, memory_order_acquire);
  /* seq_cst (one xchg on x86): the announcement must be ordered before the
   * chain loads that follow. With a release store the CPU may hold it in its
   * store buffer while the loads run, the ticker's scan would read 0, and it
   * would reuse a record this thread is about to stand on. See keyed.c. */
  atomic_store_explicit(&slot->epoch, epoch, memory_order_seq_cst);
}

static inline void atp__epoch_exit(const atp_engine_t *e) {
  atp_reader_slot_t *slot = &e->readers[atp__tl_reader];
  ATP_ASSERT(slot->depth > 0);
  if (--slot->depth) return;
  /* release: every read of the bracket happens before the ticker's scan that
   * sees the 0, and so before the reuse of what it read. */
  atomic_store_explicit(&slot->epoch, 0, memory_order_release);
}

/* common.c */
/* The clock: a thread that holds a reading (atp_engine_clock_hold, or
 * atp__clock_enter for the length of one call) gets it; others read. */
extern _Thread_local const atp_engine_t *atp__tl_clock_engine;
extern _Thread_local int64_t atp__tl_clock_ms;
int64_t atp__clock_read(const atp_engine_t *e);
static inline int64_t atp__now(const atp_engine_t *e) {
  if (atp__tl_clock_engine == e) return atp__tl_clock_ms;
  return atp__clock_read(e);
}
/* One reading for a whole call: holds the clock unless this thread already
 * does; true when it took the hold, for atp__clock_exit. */
static inline bool atp__clock_enter(const atp_engine_t *e) {
  if (atp__tl_clock_engine == e) return false;
  atp__tl_clock_ms = atp__clock_read(e);
  atp__tl_clock_engine = e;
  return true;
}
static inline void atp__clock_exit(bool took) {
  if (took) atp__tl_clock_engine = NULL;
}
bool atp__id_valid(atp_str_t s);
void atp__result_set(atp_result_t *r, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Per-thread scratch buffers, allocated on first use, freed at thread exit. */
typedef enum {
  ATP_SCRATCH_CHANGES,
  ATP_SCRATCH_VIEW,
  ATP_SCRATCH_GRANTS,
  ATP_SCRATCH_KINDS_
} atp_scratch_kind_t;
void *atp__scratch(atp_scratch_kind_t kind, size_t bytes);
/* thread-local scratch for change records and reservation views */
atp_change_t *atp__scratch_changes(uint32_t *cap);
atp_reservation_t *atp__scratch_view(void);
void atp__emit(const atp_engine_t *e, const atp_change_t *records, uint32_t count);
void atp__retire(atp_engine_t *e, void *ptr);

/* positions.c */
uint32_t atp__intern_find(const atp_engine_t *e, atp_str_t s, uint64_t hash);
atp_str_t atp__intern_str(const atp_engine_t *e, uint32_t id);
/* Caller holds create_lock. 0, ATP_EFULL or ATP_ENOMEM. */
int atp__intern_locked(atp_engine_t *e, atp_str_t s, uint32_t *out);
/* Position look-ups: the index of the position or UINT32_MAX. _hashed takes
 * both strings' hashes and compares the strings, so the location needs no
 * intern look-up first. */
uint32_t atp__position_find_hashed(const atp_engine_t *e, atp_str_t sku,
                                   uint64_t sku_hash, atp_str_t location,
                                   uint64_t location_hash);
uint32_t atp__position_find(const atp_engine_t *e, atp_str_t sku, uint64_t sku_hash,
                            uint32_t location_id);
/* A look-up started early, in two steps that only warm the cache: the first
 * fetches the index entry and returns the position hash; the second, once the
 * entry has had time to arrive, fetches the position for writing. */
uint64_t atp__position_prefetch_index(const atp_engine_t *e, atp_str_t sku,
                                      atp_str_t location);
void atp__position_prefetch(const atp_engine_t *e, uint64_t hash);
uint32_t atp__position_find_str(const atp_engine_t *e, atp_str_t sku,
                                atp_str_t location);
int atp__position_find_or_create(atp_engine_t *e, atp_str_t sku, atp_str_t location,
                                 uint32_t *out);
void atp__position_read(const atp_engine_t *e, uint32_t idx, atp_position_t *out);
uint64_t atp__position_begin(atp_position_record_t *p);
uint64_t atp__position_end(atp_position_record_t *p,
                           bool changed); /* returns version after */
static inline atp_position_cold_t *atp__position_cold(const atp_engine_t *e,
                                                      const atp_position_record_t *p) {
  return &e->pos_cold[p - e->positions];
}
void atp__position_lock(const atp_engine_t *e, atp_position_record_t *p);
void atp__position_unlock(const atp_engine_t *e, atp_position_record_t *p);
/* Tests only: when set, called after each unit take of a reserve or an amend,
 * before the request's outcome is known. A test parks a thread there to reach
 * an interleaving that no timing reaches reliably. One predicted branch. */
extern void (*atp__test_on_take)(void);
/* reserve qty: CAS on free; true when granted. A granted take is held: the
 * position stays in flight (its pending count in seq) until the caller,
 * knowing the request's outcome, gives back what it does not keep with
 * atp__position_untake and calls atp__position_settle once for all the takes
 * it held on the position. */
bool atp__position_take(atp_position_record_t *p, int64_t qty, bool committed);
void atp__position_untake(atp_position_record_t *p, int64_t qty, bool committed);
/* Ends held takes as one change; returns the version after. */
uint64_t atp__position_settle(atp_position_record_t *p, uint32_t held);
/* give back units of a reservation (reserved or committed) */
uint64_t atp__position_give(atp_position_record_t *p, int64_t qty, bool committed);
/* move held units to committed */
uint64_t atp__position_commit(atp_position_record_t *p, int64_t qty);
/* fulfil: on_hand and committed drop; caller holds the position lock */
uint64_t atp__position_fulfil(atp_engine_t *e, atp_position_record_t *p, int64_t qty,
                              int64_t now_ms);
/* The on-hand history (under the position lock): a change, and the sum of
 * changes after t with whether the history reaches back to t. */
void atp__history_push(const atp_engine_t *e, atp_position_record_t *p,
                       int64_t occurred_at_ms, int64_t delta, int64_t now_ms);
int64_t atp__history_after(const atp_engine_t *e, const atp_position_record_t *p,
                           int64_t t, bool *complete);
/* Export: an exact copy of position idx (under its on-hand flag, read until
 * no writer is in flight) and of its history, oldest first, into hist (room
 * for ATP_HISTORY_ENTRIES_MAX); *floor_ms gets the history's floor. */
void atp__position_copy(atp_engine_t *e, uint32_t idx, atp_position_t *out,
                        atp_history_entry_t *hist, uint32_t *hist_count,
                        int64_t *floor_ms);
/* Import: the history's floor (changes at or before it may be missing). */
void atp__history_set_floor(const atp_engine_t *e, atp_position_record_t *p,
                            int64_t floor_ms);
void atp__change_position(const atp_engine_t *e, atp_change_t *c, atp_cause_t cause,
                          atp_str_t cause_id, uint32_t pos, int64_t d_on_hand,
                          int64_t d_reserved, int64_t d_committed, uint64_t version);
static inline bool atp__qty_in_range(int64_t v) {
  return v >= -ATP_QTY_MAX && v <= ATP_QTY_MAX;
}

/* idempotency.c */
int atp__idem_init(atp_engine_t *e);
void atp__idem_destroy(atp_engine_t *e);
/* Claims (kind, id). 0: claimed, *idx is a PENDING record the caller must
 * finish with atp__idem_done or atp__idem_fail. 1: an earlier call with the same
 * content finished: *idx is its record. ATP_EIDEMPOTENCY, ATP_EFULL. */
int atp__idem_claim(atp_engine_t *e, atp_idem_kind_t kind, atp_str_t id,
                    uint64_t content_hash, uint32_t *idx, atp_result_t *result);
void atp__idem_done(atp_engine_t *e, uint32_t idx, uint32_t flags, uint32_t pos,
                    const atp_position_t *outcome, atp_str_t reservation_id,
                    atp_change_t *record);
void atp__idem_fail(atp_engine_t *e, uint32_t idx);
/* The hash (kind, id) is filed under in the table. */
uint64_t atp__idem_key_hash(atp_idem_kind_t kind, atp_str_t id);
/* Export: record idx as a change record if it is LIVE (false otherwise), its
 * strings copied into text (2 * ATP_ID_BYTES_MAX bytes). */
bool atp__idem_copy(const atp_engine_t *e, uint32_t idx, atp_change_t *c, char *text);
int atp__idem_apply(atp_engine_t *e, const atp_change_t *c);
/* Ticker: when record idx is due (ATP_TIME_NONE: never), read without a
 * flag; and the purge of a record whose time came. */
int64_t atp__idem_due(const atp_engine_t *e, uint32_t idx, int64_t now_ms);
void atp__idem_purge(atp_engine_t *e, uint32_t idx);
/* Queues the record to the ticker (lifecycle.c decodes the ref). */
void atp__idem_queue(atp_engine_t *e, uint32_t idx);

/* groups.c */
int atp__group_resolve(const atp_engine_t *e, atp_str_t name,
                       const atp_group_version_t **out);
/* Replay (emit false, no result) and the public calls. */
int atp__group_put(atp_engine_t *e, atp_str_t name, const atp_str_t *locations,
                   uint32_t count, atp_result_t *result, bool emit);
int atp__group_install(atp_engine_t *e, atp_str_t name, atp_group_version_t *g,
                       const atp_str_t *locations, atp_result_t *result, bool emit);

/* reservations.c */
int atp__reservations_init(atp_engine_t *e);
void atp__reservations_destroy(atp_engine_t *e);
void atp__reservation_view(const atp_engine_t *e, uint32_t idx, atp_reservation_t *out);
int atp__reservation_apply(atp_engine_t *e, const atp_change_t *c);
/* Ticker: where record idx belongs now, read without its flag (good enough
 * to file it: atp__reservation_fire decides again under the flag). ATP_TIME_NONE for
 * nowhere. */
int64_t atp__reservation_due(const atp_engine_t *e, uint32_t idx, int64_t now_ms);
/* Ticker: the record's time came. Decides under the record's flag whether it
 * expires now (returns true if it did), when to look again (*due,
 * ATP_TIME_NONE: not until something changes) and whether its retention has
 * passed (*purge). */
bool atp__reservation_fire(atp_engine_t *e, uint32_t idx, int64_t now_ms, int64_t *due,
                           bool *purge);
/* Ticker: whether the record will be purged when its turn comes (a guess, for
 * prefetching). */
bool atp__reservation_purge_bound(const atp_engine_t *e, uint32_t idx, int64_t now_ms);
void atp__reservation_purge(atp_engine_t *e, uint32_t idx);
void atp__reservation_queue(atp_engine_t *e, uint32_t idx);

#endif
