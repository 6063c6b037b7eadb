/* prefault.c - populating the pages of never-used records ahead of the keyed
 * tables' bump cursors, on a thread of the engine's own (engine_internal.h,
 * "prefaulting").
 *
 * The thread sleeps on a condition variable. A thread that takes a chunk of
 * never-used records at or past its table's mark swaps the mark for
 * UINT32_MAX (one winner) and wakes it; it then populates each of the table's
 * arrays from the cursor to ATP_PREFAULT_AHEAD_BYTES past it and sets the
 * mark half that distance back, so a steady stream of new records wakes it
 * once per half the distance. MADV_POPULATE_WRITE leaves the contents as
 * they are, so a page a writer reaches first is simply skipped: the writers
 * and this thread share no data, only the mark. Should it fail (an old
 * kernel), the table goes on as before, taking its faults itself.
 */
#include <signal.h>
#include <string.h>

#include "atp/memory.h"
#include "engine_internal.h"

#define TABLES 2

struct atp_prefaulter {
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t wake;
  bool pending; /* under lock: a kick since the thread last looked */
  bool stop;    /* under lock */
  atp_keyed_table_t *tables[TABLES];
  bool done[TABLES]; /* the thread's: populated to capacity, or failed */
};

static uint32_t ahead_records(const atp_keyed_table_t *t) {
  size_t stride = 1;
  for (int i = 0; i < 2; i++)
    if (t->prefault_arrays[i].stride > stride) stride = t->prefault_arrays[i].stride;
  size_t n = ATP_PREFAULT_AHEAD_BYTES / stride;
  if (n < 64) n = 64;
  return n > t->capacity ? t->capacity : (uint32_t)n;
}

/* Populates t's arrays up to its cursor plus the distance ahead and sets the
 * next mark; false when the table needs no more (full, or the kernel cannot). */
static bool top_up(atp_keyed_table_t *t) {
  uint32_t ahead = ahead_records(t);
  uint32_t bump = atomic_load_explicit(&t->bump, memory_order_relaxed);
  if (bump > t->capacity) bump = t->capacity;
  uint64_t target = (uint64_t)bump + ahead;
  if (target > t->capacity) target = t->capacity;
  uint32_t from = t->prefaulted > bump ? t->prefaulted : bump;
  for (int i = 0; i < 2 && target > from; i++) {
    char *base = t->prefault_arrays[i].base;
    size_t stride = t->prefault_arrays[i].stride;
    if (base &&
        atp_table_prefault(base, (size_t)from * stride, (size_t)target * stride))
      return false; /* the mark stays UINT32_MAX: no more kicks */
  }
  if (target > t->prefaulted) t->prefaulted = (uint32_t)target;
  if (target >= t->capacity) return false;
  atomic_store_explicit(&t->prefault_kick, (uint32_t)target - ahead / 2,
                        memory_order_relaxed);
  return true;
}

static void *prefault_main(void *arg) {
  struct atp_prefaulter *p = arg;
  pthread_mutex_lock(&p->lock);
  for (;;) {
    while (!p->pending && !p->stop) pthread_cond_wait(&p->wake, &p->lock);
    if (p->stop) break;
    p->pending = false;
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < TABLES; i++) {
      atp_keyed_table_t *t = p->tables[i];
      /* Only a kicked table: one never used gets no memory. */
      if (p->done[i] ||
          atomic_load_explicit(&t->prefault_kick, memory_order_relaxed) != UINT32_MAX)
        continue;
      if (!top_up(t)) p->done[i] = true;
    }
    pthread_mutex_lock(&p->lock);
  }
  pthread_mutex_unlock(&p->lock);
  return NULL;
}

void atp__prefault_kick(atp_keyed_table_t *t) {
  uint32_t kick = atomic_load_explicit(&t->prefault_kick, memory_order_relaxed);
  if (kick == UINT32_MAX || !atomic_compare_exchange_strong_explicit(
                                &t->prefault_kick, &kick, UINT32_MAX,
                                memory_order_relaxed, memory_order_relaxed))
    return; /* someone else woke it, or it is not wanted */
  struct atp_prefaulter *p = t->prefaulter;
  pthread_mutex_lock(&p->lock);
  p->pending = true;
  pthread_cond_signal(&p->wake);
  pthread_mutex_unlock(&p->lock);
}

static void arm(atp_keyed_table_t *t, struct atp_prefaulter *p, void *records,
                size_t stride) {
  t->prefault_arrays[0].base = t->entries;
  t->prefault_arrays[0].stride = sizeof *t->entries;
  t->prefault_arrays[1].base = records;
  t->prefault_arrays[1].stride = stride;
  t->prefaulter = p;
  /* The first chunk taken wakes the thread. */
  atomic_store_explicit(&t->prefault_kick, 0, memory_order_relaxed);
}

int atp__prefault_init(atp_engine_t *e) {
  struct atp_prefaulter *p = atp_calloc(1, sizeof *p);
  if (!p) return ATP_ENOMEM;
  pthread_mutex_init(&p->lock, NULL);
  pthread_cond_init(&p->wake, NULL);
  p->tables[0] = &e->idempotency_table;
  p->tables[1] = &e->reservation_table;
  /* The thread takes no signals: the server waits for them in one thread of
   * its own (sigwait), which every other thread must leave them to. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int rc = pthread_create(&p->thread, NULL, prefault_main, p);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    /* Not fatal: the records fault in on first use, as without it. */
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    atp_free(p);
    return 0;
  }
  pthread_setname_np(p->thread, "atp-prefault");
  arm(&e->idempotency_table, p, e->idempotency_records, sizeof *e->idempotency_records);
  arm(&e->reservation_table, p, e->reservation_records, sizeof *e->reservation_records);
  e->prefaulter = p;
  return 0;
}

void atp__prefault_destroy(atp_engine_t *e) {
  struct atp_prefaulter *p = e->prefaulter;
  if (!p) return;
  pthread_mutex_lock(&p->lock);
  p->stop = true;
  pthread_cond_signal(&p->wake);
  pthread_mutex_unlock(&p->lock);
  pthread_join(p->thread, NULL);
  pthread_cond_destroy(&p->wake);
  pthread_mutex_destroy(&p->lock);
  atp_free(p);
  e->prefaulter = NULL;
  e->idempotency_table.prefaulter = e->reservation_table.prefaulter = NULL;
  atomic_store(&e->idempotency_table.prefault_kick, UINT32_MAX);
  atomic_store(&e->reservation_table.prefault_kick, UINT32_MAX);
}
