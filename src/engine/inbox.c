/* inbox.c - the rings that carry record refs from every thread to the ticker
 * (see engine_internal.h). A ref is an opaque nonzero word here; lifecycle.c
 * gives it its meaning and drains the rings.
 */
#include "atp/memory.h"
#include "engine_internal.h"

int atp__inbox_init(atp_inbox_t *in) {
  in->rings = atp_table_alloc(ATP_SHARDS, sizeof *in->rings, false);
  return in->rings ? 0 : ATP_ENOMEM;
}

void atp__inbox_destroy(atp_inbox_t *in) {
  atp_table_free(in->rings, ATP_SHARDS, sizeof *in->rings);
  in->rings = NULL;
}

void atp__inbox_push(atp_inbox_t *in, uint32_t ref, atp_inbox_link_t *link) {
  ATP_ASSERT(ref != 0);
  if (atomic_exchange_explicit(&link->queued, 1, memory_order_acq_rel)) return;
  int shard = atp__shard();
  atp_inbox_ring_t *ring = &in->rings[shard];
  uint64_t t = atomic_load_explicit(&ring->tail, memory_order_relaxed);
  /* head (acquire): the cells before it were zeroed by the ticker and are
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
  _Atomic uint64_t *overflow = &in->overflow[shard].value;
  uint64_t head = atomic_load_explicit(overflow, memory_order_relaxed);
  do {
    atomic_store_explicit(&link->next, (uint32_t)head, memory_order_relaxed);
  } while (!atomic_compare_exchange_weak_explicit(
      overflow, &head, ref, memory_order_release, memory_order_relaxed));
}
