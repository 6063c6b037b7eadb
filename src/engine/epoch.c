/* epoch.c - epoch-based reclamation: reader ids and slots, the engine's
 * epoch, and the ticker's scan for the oldest epoch a reader is in (the
 * argument that makes it safe is in keyed.c's header).
 *
 * Reader ids are process-wide, so a thread has one id for all engines, and
 * each engine has a slot per id: a call into engine B from inside engine A
 * (a hook that applies to another engine) brackets both. A thread takes the
 * lowest free id on its first call and gives it back when it exits (a
 * pthread key's destructor), so threads that come and go (event-loop threads
 * restart with the server, tests start dozens) reuse ids; only the threads
 * alive at once count against ATP_ENGINE_THREADS_MAX.
 */
#include <pthread.h>

#include "atp/limits.h"
#include "atp/memory.h"
#include "engine_internal.h"

_Thread_local int atp__tl_reader = -1;

static _Atomic uint8_t ids_taken[ATP_ENGINE_THREADS_MAX];
/* One past the highest id ever taken: the scan reads slots below it. */
static _Atomic uint32_t ids_high;
static pthread_key_t id_key;
static pthread_once_t id_once = PTHREAD_ONCE_INIT;

/* At thread exit: the slot reads 0 in every engine (the thread is outside
 * them all), so the id goes back as it is. release: the next owner's use of
 * the slots comes after this thread's. */
static void id_release(void *value) {
  int id = (int)(uintptr_t)value - 1;
  atp__tl_reader = -1;
  atomic_store_explicit(&ids_taken[id], 0, memory_order_release);
}

static void id_key_create(void) {
  ATP_ASSERT(pthread_key_create(&id_key, id_release) == 0);
}

int atp__reader_id(void) {
  pthread_once(&id_once, id_key_create);
  int id = -1;
  for (int i = 0; id < 0 && i < ATP_ENGINE_THREADS_MAX; i++) {
    uint8_t free_id = 0;
    if (!atomic_load_explicit(&ids_taken[i], memory_order_relaxed) &&
        atomic_compare_exchange_strong_explicit(
            &ids_taken[i], &free_id, 1, memory_order_acquire, memory_order_relaxed))
      id = i;
  }
  ATP_ASSERT(id >= 0 && "more threads call the engine than ATP_ENGINE_THREADS_MAX");
  /* seq_cst: the scan must not miss this slot. Raised before the thread's
   * first announcement, in the same total order as it and the scan's load,
   * so a scan that reads the old high comes before the announcement, and the
   * argument in keyed.c covers it as it covers a slot read as 0. */
  uint32_t high = atomic_load_explicit(&ids_high, memory_order_seq_cst);
  while (high < (uint32_t)id + 1 && !atomic_compare_exchange_weak_explicit(
                                        &ids_high, &high, (uint32_t)id + 1,
                                        memory_order_seq_cst, memory_order_seq_cst)) {
  }
  ATP_ASSERT(pthread_setspecific(id_key, (void *)(uintptr_t)(id + 1)) == 0);
  atp__tl_reader = id;
  return id;
}

int atp__epoch_init(atp_engine_t *e) {
  /* Zeroed: every slot starts outside. 64 KiB mapped lazily: a slot's page is
   * touched only by a thread with that id. */
  e->readers = atp_table_alloc(ATP_ENGINE_THREADS_MAX, sizeof *e->readers, false);
  if (!e->readers) return ATP_ENOMEM;
  atomic_store_explicit(&e->epoch.value, 1, memory_order_relaxed);
  return 0;
}

void atp__epoch_destroy(atp_engine_t *e) {
  if (e->readers)
    atp_table_free(e->readers, ATP_ENGINE_THREADS_MAX, sizeof *e->readers);
  e->readers = NULL;
}

void atp__epoch_advance(atp_engine_t *e) {
  /* release: a reader that enters at the new epoch sees every unlink the
   * ticker made before, so it cannot reach what was stamped with an older
   * one. The ticker is the only writer, hence no read-modify-write. */
  atomic_store_explicit(&e->epoch.value, atp__epoch_now(e) + 1, memory_order_release);
}

uint64_t atp__epoch_oldest(const atp_engine_t *e) {
  uint32_t high = atomic_load_explicit(&ids_high, memory_order_seq_cst);
  uint64_t oldest = UINT64_MAX;
  for (uint32_t i = 0; i < high; i++) {
    /* seq_cst: this load and the reader's announcement are in one total
     * order with the unlinks before it (keyed.c). Reading 0 or a later
     * bracket's value also synchronizes with the reader's exit, so its reads
     * happen before the reuse. */
    uint64_t epoch = atomic_load_explicit(&e->readers[i].epoch, memory_order_seq_cst);
    if (epoch && epoch < oldest) oldest = epoch;
  }
  return oldest;
}
