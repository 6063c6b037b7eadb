/* common.c - what every engine file uses: the clock, id validation, result
 * messages, per-thread scratch buffers, the change hook, memory retired until
 * no reader may hold it, and the names of reasons and statuses.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "atp/memory.h"
#include "engine_internal.h"

_Thread_local const atp_engine_t *atp__tl_clock_engine;
_Thread_local int64_t atp__tl_clock_ms;

int64_t atp__clock_read(const atp_engine_t *e) {
  return e->config.clock(e->config.clock_ctx);
}
int64_t atp_engine_now_ms(const atp_engine_t *e) {
  return atp__now(e);
}

int64_t atp_engine_clock_hold(atp_engine_t *e) {
  atp__tl_clock_ms = atp__clock_read(e);
  atp__tl_clock_engine = e;
  return atp__tl_clock_ms;
}

void atp_engine_clock_release(atp_engine_t *e) {
  ATP_ASSERT(atp__tl_clock_engine == e);
  atp__tl_clock_engine = NULL;
}

bool atp__id_valid(atp_str_t s) {
  if (s.len == 0 || s.len > ATP_ID_BYTES_MAX || !s.ptr) return false;
  for (uint32_t i = 0; i < s.len; i++) {
    unsigned char c = (unsigned char)s.ptr[i];
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

void atp__result_set(atp_result_t *r, const char *field, const char *fmt, ...) {
  if (!r) return;
  snprintf(r->field, sizeof r->field, "%s", field ? field : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->message, sizeof r->message, fmt, ap);
  va_end(ap);
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

void *atp__scratch(atp_scratch_kind_t kind, size_t bytes) {
  pthread_once(&scratch_once, scratch_keys_create);
  void *p = pthread_getspecific(scratch_keys[kind]);
  if (!p) {
    p = atp_malloc(bytes);
    ATP_ASSERT(p); /* a few hundred KiB once per thread: failing here is fatal */
    ATP_ASSERT(pthread_setspecific(scratch_keys[kind], p) == 0);
  }
  return p;
}

atp_change_t *atp__scratch_changes(uint32_t *cap) {
  *cap = SCRATCH_CHANGES;
  return atp__scratch(ATP_SCRATCH_CHANGES, sizeof(atp_change_t) * SCRATCH_CHANGES);
}

atp_reservation_t *atp__scratch_view(void) {
  return atp__scratch(ATP_SCRATCH_VIEW, sizeof(atp_reservation_t));
}

void atp__emit(const atp_engine_t *e, const atp_change_t *records, uint32_t count) {
  if (e->config.on_change && count)
    e->config.on_change(e->config.change_ctx, records, count);
}

/* Memory that lock-free readers may still hold (a group's old version, a
 * reservation's old line or text array) is freed by the ticker once no
 * reader may hold it. Any thread retires, after it unlinked the memory (a
 * seq_cst store or exchange of the pointer that readers load seq_cst). The
 * ticker takes the list (acquire: after the unlink) and only then stamps each
 * block with its epoch, so the argument in keyed.c, made there for an unlink
 * by the ticker, holds as it is: the unlink happens before the stamp, and the
 * stamp before the ticker's next epoch and its scans. */
void atp__retire(atp_engine_t *e, void *ptr) {
  atp_retired_t *r = atp_malloc(sizeof *r);
  ATP_ASSERT(r);
  r->ptr = ptr;
  r->epoch = 0;
  r->next = atomic_load_explicit(&e->retired, memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(
      &e->retired, &r->next, r, memory_order_release, memory_order_relaxed)) {
  }
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
