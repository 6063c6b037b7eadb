/* keyed.c - lock-free keyed record tables: a fixed pool of records and a hash
 * table of chains through them (see engine_internal.h).
 *
 * Allocation pops a tagged Treiber stack of recycled records, or bumps a
 * counter into never-used ones. The tag (the top 32 bits of the head word)
 * changes on every pop and push, so a pop that raced with a pop and a push of
 * the same record fails its CAS instead of corrupting the stack (ABA).
 *
 * Chains: a record is pushed at its bucket's head with CAS. Only the ticker
 * thread unlinks, so an unlink never races with another unlink; it races only
 * with pushes, which change nothing but the head. A reader walking a chain
 * may stand on a record while it is unlinked: the record keeps its next link
 * and is not reused while the reader may still be on it.
 *
 * When that is: epoch-based reclamation (epoch.c). A reader brackets its
 * walk with atp__epoch_enter/exit, which announce in the reader's slot the
 * epoch it entered at (a seq_cst store) and clear it (a release store). The
 * ticker is the only thread that unlinks and the only one that advances the
 * epoch. It stamps a record with the epoch E current when it unlinks it, and
 * recycles it at a later tick only if its scan of the slots (seq_cst loads,
 * after the unlink) finds each at 0 or above E. Why a reader cannot then be
 * on the record:
 *
 *  - A slot at x > E: the reader loaded an epoch the ticker stored after the
 *    unlink (acquire pairs with atp__epoch_advance's release), so the unlink
 *    happens before every link load of its walk: none leads to the record.
 *    (Epochs only grow and a thread reads them in order, so a stale value
 *    left from an earlier bracket of the thread is a lower bound.)
 *  - A slot at 0 (or an earlier bracket's value, or above the id high-water
 *    mark): the scan came before the reader's announcement in the total
 *    order of seq_cst operations. The unlink (a seq_cst CAS or store) comes
 *    before the scan on the ticker, the announcement before the reader's link
 *    loads (seq_cst too, atp__keyed_head/next). So the unlink precedes those
 *    loads in that order, and a seq_cst load cannot read a link older than a
 *    seq_cst store that precedes it: the walk cannot reach the record.
 *    Reading 0 after the reader's exit synchronizes with that release, so
 *    what the reader read happens before the reuse (ThreadSanitizer sees the
 *    same edge).
 *  - A slot at x <= E: the reader may hold the record; it waits.
 *
 * On x86 the seq_cst loads are plain moves and the announcement one xchg; a
 * release store there instead could sit in the store buffer while the chain
 * loads run (store-load reordering) and be missed by the scan. No fence is
 * used: ThreadSanitizer checks these atomics, it does not model fences.
 *
 * A reader that was descheduled inside its bracket for any time holds back
 * the records unlinked since it entered, not more: limbo is FIFO, stamped in
 * order, so the ticker stops at the first record a reader may hold.
 */
#include <string.h>

#include "atp/memory.h"
#include "engine_internal.h"

static _Atomic uint64_t table_generations;
static _Atomic uint32_t shard_next;
static _Thread_local int tl_shard = -1;

int atp__shard(void) {
  if (tl_shard < 0) tl_shard = (int)(atomic_fetch_add(&shard_next, 1) % ATP_SHARDS);
  return tl_shard;
}

/* Never-used records are handed to threads in chunks, so the shared bump
 * counter is touched once per CHUNK allocations. A chunk is tied to its table
 * by generation, not address, so a new table at an old address starts clean. */
#define CHUNK     64
#define TL_TABLES 4
static _Thread_local struct {
  uint64_t generation;
  uint32_t next, end;
} tl_chunk[TL_TABLES];

int atp__keyed_init(atp_keyed_table_t *t, uint32_t capacity) {
  memset(t, 0, sizeof *t);
  t->generation = atomic_fetch_add(&table_generations, 1) + 1;
  uint64_t buckets = 16;
  while (buckets < capacity) buckets <<= 1;
  t->bucket_mask = (uint32_t)buckets - 1;
  t->capacity = capacity;
  /* No prefaulter until the engine arms one (prefault.c). */
  atomic_store_explicit(&t->prefault_kick, UINT32_MAX, memory_order_relaxed);
  /* Bucket heads are hit at random; the entries fill in order. */
  t->heads = atp_table_alloc(buckets, sizeof *t->heads, true);
  t->entries = atp_table_alloc(capacity, sizeof *t->entries, false);
  if (!t->heads || !t->entries) return ATP_ENOMEM;
  return 0;
}

void atp__keyed_destroy(atp_keyed_table_t *t) {
  atp_table_free(t->heads, (size_t)t->bucket_mask + 1, sizeof *t->heads);
  atp_table_free(t->entries, t->capacity, sizeof *t->entries);
  memset(t, 0, sizeof *t);
}

static uint32_t pop_free(atp_keyed_table_t *t, int shard) {
  _Atomic uint64_t *top = &t->free_head[shard].value;
  uint64_t head = atomic_load_explicit(top, memory_order_acquire);
  while ((uint32_t)head) {
    uint32_t idx = (uint32_t)head - 1;
    uint32_t next =
        atomic_load_explicit(&t->entries[idx].free_next, memory_order_relaxed);
    uint64_t want = ((head >> 32) + 1) << 32 | next;
    if (atomic_compare_exchange_weak_explicit(top, &head, want, memory_order_acq_rel,
                                              memory_order_acquire))
      return idx;
  }
  return UINT32_MAX;
}

static uint32_t take_fresh(atp_keyed_table_t *t) {
  int chunk = (int)(t->generation % TL_TABLES);
  if (tl_chunk[chunk].generation != t->generation ||
      tl_chunk[chunk].next == tl_chunk[chunk].end) {
    uint32_t start = atomic_fetch_add_explicit(&t->bump, CHUNK, memory_order_relaxed);
    if (start >= t->capacity) {
      atomic_store_explicit(&t->bump, t->capacity, memory_order_relaxed);
      return UINT32_MAX;
    }
    if (start >= atomic_load_explicit(&t->prefault_kick, memory_order_relaxed))
      atp__prefault_kick(t);
    tl_chunk[chunk].generation = t->generation;
    tl_chunk[chunk].next = start;
    tl_chunk[chunk].end = start + CHUNK < t->capacity ? start + CHUNK : t->capacity;
  }
  return tl_chunk[chunk].next++;
}

/* A recycled record from any shard but this thread's own. */
static uint32_t pop_other(atp_keyed_table_t *t, int shard) {
  uint32_t idx = UINT32_MAX;
  for (int i = 1; idx == UINT32_MAX && i < ATP_SHARDS; i++)
    idx = pop_free(t, (shard + i) % ATP_SHARDS);
  return idx;
}

uint32_t atp__keyed_alloc(atp_keyed_table_t *t) {
  int shard = atp__shard();
  uint32_t idx = pop_free(t, shard);
  /* Own shard dry: recycled records of other shards (a thread that exited, or
   * one that frees more than it takes) come before never-used ones, so the
   * memory in use follows the records alive, not the table's capacity. Until
   * anything was recycled (the first day, with records kept 24 h) there is
   * nothing to find, and only an exhausted table looks. */
  bool others_first = atomic_load_explicit(&t->recycled, memory_order_relaxed);
  if (idx == UINT32_MAX && others_first) idx = pop_other(t, shard);
  if (idx == UINT32_MAX) idx = take_fresh(t);
  if (idx == UINT32_MAX && !others_first) idx = pop_other(t, shard);
  if (idx != UINT32_MAX) {
    atomic_fetch_add_explicit(&t->live[shard].value, 1, memory_order_relaxed);
    t->entries[idx].owner = (uint8_t)shard;
  }
  return idx;
}

uint32_t atp__keyed_peek(const atp_keyed_table_t *t) {
  uint64_t head = atomic_load_explicit(
      &((atp_keyed_table_t *)t)->free_head[atp__shard()].value, memory_order_relaxed);
  if ((uint32_t)head) return (uint32_t)head - 1;
  int chunk = (int)(t->generation % TL_TABLES);
  if (tl_chunk[chunk].generation == t->generation &&
      tl_chunk[chunk].next < tl_chunk[chunk].end)
    return tl_chunk[chunk].next;
  return UINT32_MAX;
}

uint64_t atp__keyed_live(const atp_keyed_table_t *t) {
  int64_t sum = 0;
  for (int i = 0; i < ATP_SHARDS; i++)
    sum += (int64_t)atomic_load_explicit(&((atp_keyed_table_t *)t)->live[i].value,
                                         memory_order_relaxed);
  sum -= (int64_t)atomic_load_explicit(&((atp_keyed_table_t *)t)->retired.value,
                                       memory_order_relaxed);
  return sum > 0 ? (uint64_t)sum : 0;
}

void atp__keyed_prefetch_head(const atp_keyed_table_t *t, uint64_t hash) {
  __builtin_prefetch(&t->heads[hash & t->bucket_mask], 1);
}

void atp__keyed_prefetch_chain(const atp_keyed_table_t *t, uint64_t hash) {
  uint32_t v =
      atomic_load_explicit(&t->heads[hash & t->bucket_mask], memory_order_relaxed);
  if (v) __builtin_prefetch(&t->entries[v - 1]);
}

void atp__keyed_push(atp_keyed_table_t *t, uint32_t idx) {
  atp_keyed_entry_t *entry = &t->entries[idx];
  _Atomic uint32_t *head = &t->heads[entry->hash & t->bucket_mask];
  /* acquire, on the load and on a failed CAS alike: the record we link to
   * was published by another pusher's release, and the pusher walks its own
   * link right after (a twin check), reading that record's key. A relaxed
   * load here let it read a key written by another thread with nothing
   * ordering the two: ThreadSanitizer's report in test_shards_shared. */
  uint32_t old = atomic_load_explicit(head, memory_order_acquire);
  do {
    atomic_store_explicit(&entry->next, old, memory_order_relaxed);
    /* release: a reader that loads the head sees the record's key and link. */
  } while (!atomic_compare_exchange_weak_explicit(
      head, &old, idx + 1, memory_order_acq_rel, memory_order_acquire));
}

void atp__keyed_retire(atp_keyed_table_t *t, uint32_t idx, uint64_t epoch) {
  atp_keyed_entry_t *entry = &t->entries[idx];
  _Atomic uint32_t *head = &t->heads[entry->hash & t->bucket_mask];
  uint32_t next = atomic_load_explicit(&entry->next, memory_order_acquire);
  uint32_t expected = idx + 1;
  /* seq_cst, as the store below: the unlink must precede the ticker's later
   * scan of the reader slots in the total order (see the header). */
  if (!atomic_compare_exchange_strong_explicit(
          head, &expected, next, memory_order_seq_cst, memory_order_acquire)) {
    /* Not the head (a push came in front of it): find its predecessor. Only
     * this thread unlinks, so the predecessor's link is stable. */
    uint32_t prev = expected;
    while (prev) {
      _Atomic uint32_t *link = &t->entries[prev - 1].next;
      uint32_t p_next = atomic_load_explicit(link, memory_order_acquire);
      if (p_next == idx + 1) {
        atomic_store_explicit(link, next, memory_order_seq_cst);
        break;
      }
      prev = p_next;
    }
    ATP_ASSERT(prev != 0);
  }
  /* seq_cst: a walk over the table by index (an export) finds the record by
   * its state, not a link, so the state is its unlink. */
  atomic_store_explicit(&entry->state, ATP_REC_FREE, memory_order_seq_cst);
  /* One writer (the ticker), so no locked instruction. */
  atomic_store_explicit(
      &t->retired.value,
      atomic_load_explicit(&t->retired.value, memory_order_relaxed) + 1,
      memory_order_relaxed);
  entry->limbo_epoch = epoch;
  atomic_store_explicit(&entry->free_next, 0, memory_order_relaxed);
  if (t->limbo_tail)
    atomic_store_explicit(&t->entries[t->limbo_tail - 1].free_next, idx + 1,
                          memory_order_relaxed);
  else
    t->limbo_head = idx + 1;
  t->limbo_tail = idx + 1;
}

void atp__keyed_reclaim(atp_keyed_table_t *t, uint64_t epoch, uint64_t oldest) {
  /* Back to the shard that allocated each record, so each thread finds its
   * own records again instead of claiming never-used ones: one chain per
   * shard, each pushed with one CAS. */
  uint32_t first[ATP_SHARDS] = {0}, last[ATP_SHARDS] = {0};
  bool any = false;
  while (t->limbo_head) {
    uint32_t idx = t->limbo_head - 1;
    atp_keyed_entry_t *entry = &t->entries[idx];
    /* A reader that entered at limbo_epoch or before may hold it. */
    if (entry->limbo_epoch >= oldest || epoch - entry->limbo_epoch < ATP_GRACE_EPOCHS)
      break; /* FIFO: everything behind it is younger */
    t->limbo_head = atomic_load_explicit(&entry->free_next, memory_order_relaxed);
    if (!t->limbo_head) t->limbo_tail = 0;
    uint8_t owner = entry->owner;
    atomic_store_explicit(&entry->free_next, first[owner], memory_order_relaxed);
    first[owner] = idx + 1;
    if (!last[owner]) last[owner] = idx + 1;
    any = true;
  }
  if (!any) return;
  if (!atomic_load_explicit(&t->recycled, memory_order_relaxed))
    atomic_store_explicit(&t->recycled, true, memory_order_relaxed);
  for (int shard = 0; shard < ATP_SHARDS; shard++) {
    if (!first[shard]) continue;
    _Atomic uint64_t *top = &t->free_head[shard].value;
    _Atomic uint32_t *tail_link = &t->entries[last[shard] - 1].free_next;
    uint64_t head = atomic_load_explicit(top, memory_order_acquire);
    uint64_t want;
    do {
      atomic_store_explicit(tail_link, (uint32_t)head, memory_order_relaxed);
      want = ((head >> 32) + 1) << 32 | first[shard];
    } while (!atomic_compare_exchange_weak_explicit(
        top, &head, want, memory_order_acq_rel, memory_order_acquire));
  }
}
