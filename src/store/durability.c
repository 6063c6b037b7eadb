/* durability.c - the engine journaled: hook, restore, admission and the
 * ticket horizon (include/atp/durability.h).
 *
 * The hook encodes into a per-thread buffer, so the hot path allocates
 * nothing once warm, and appends with the journal's short mutex held only
 * for the copy. Restore decodes each record into a scratch whose strings
 * point into the journal's payload and applies it at once.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "atp/assert.h"
#include "atp/clock.h"
#include "atp/durability.h"
#include "atp/log.h"
#include "atp/memory.h"
#include "atp/records.h"

struct atp_durable {
  atp_durable_config_t config;
  char *dir;
  _Atomic(atp_journal_t *) journal; /* NULL until restore opened it */
  /* restore's */
  atp_engine_t *engine;
  atp_records_t scratch;
  uint64_t applied;
  char error[256];
  /* Other modules' sections: registered before restore, read-only after. */
  atp_durable_section_t sections[ATP_DURABLE_SECTIONS_MAX];
  uint32_t section_count;
  bool restoring; /* restore began: no more registrations */
};

static const atp_durable_section_t *find_section(const atp_durable_t *d,
                                                 uint16_t kind) {
  for (uint32_t i = 0; i < d->section_count; i++)
    if (kind >= d->sections[i].kind_first && kind <= d->sections[i].kind_last)
      return &d->sections[i];
  return NULL;
}

/* The hook's encoding buffer, one per thread, freed when the thread exits
 * (a key's destructor) so that loop threads leave no leak behind. */
static pthread_key_t buf_key;
static pthread_once_t buf_once = PTHREAD_ONCE_INIT;
static _Thread_local atp_buf_t *hook_buf;
/* The request behind this thread's next changes; see atp_durable_set_context. */
static _Thread_local const atp_change_ctx_t *hook_ctx;

void atp_durable_set_context(const atp_change_ctx_t *ctx) {
  hook_ctx = ctx;
}

const atp_change_ctx_t *atp_durable_context(void) {
  return hook_ctx;
}

static void buf_destroy(void *p) {
  atp_buf_free(p);
  atp_free(p);
}
static void buf_key_create(void) {
  ATP_ASSERT(pthread_key_create(&buf_key, buf_destroy) == 0);
}

static atp_buf_t *thread_buf(void) {
  if (hook_buf) return hook_buf;
  pthread_once(&buf_once, buf_key_create);
  atp_buf_t *b = atp_malloc(sizeof *b);
  if (!b) return NULL;
  atp_buf_init(b, ATP_JOURNAL_RECORD_BYTES_MAX);
  pthread_setspecific(buf_key, b);
  return hook_buf = b;
}

static void on_durable(void *ctx, uint64_t durable_lsn) {
  (void)durable_lsn;
  atp_durable_t *d = ctx;
  atp_journal_t *j = atomic_load_explicit(&d->journal, memory_order_acquire);
  if (j && d->config.on_release)
    d->config.on_release(d->config.release_ctx, atp_journal_durable_ticket(j));
}

int atp_durable_create(const atp_durable_config_t *config, atp_durable_t **out) {
  ATP_ASSERT(config && config->dir && out);
  *out = NULL;
  atp_durable_t *d = atp_calloc(1, sizeof *d);
  size_t n = strlen(config->dir);
  if (!d || !(d->dir = atp_malloc(n + 1))) {
    atp_free(d);
    return ATP_ENOMEM;
  }
  memcpy(d->dir, config->dir, n + 1);
  d->config = *config;
  d->config.dir = d->dir;
  atp_records_init(&d->scratch);
  atomic_init(&d->journal, NULL);
  *out = d;
  return 0;
}

void atp_durable_hook(void *ctx, const atp_change_t *records, uint32_t count) {
  atp_durable_t *d = ctx;
  atp_journal_t *j = atomic_load_explicit(&d->journal, memory_order_acquire);
  ATP_ASSERT(j); /* mutations start only after restore */
  atp_buf_t *b = thread_buf();
  int rc = b ? 0 : ATP_ENOMEM;
  if (b) atp_buf_reset(b);
  if (rc == 0) rc = atp_records_encode_ctx(b, records, count, hook_ctx);
  uint64_t lsn = 0;
  if (rc == 0)
    rc = atp_journal_append(j, ATP_RECORD_KIND_ENGINE_CHANGE, b->data, (uint32_t)b->len,
                            &lsn);
  if (rc != 0) {
    /* The change is visible already and cannot be journaled: serving on
     * would acknowledge state a restart forgets. */
    atp_log("error", "journal: cannot journal a change (%s); stopping",
            atp_strerror(rc));
    abort();
  }
}

static int replay_one(void *ctx, uint64_t lsn, uint16_t kind, const void *payload,
                      uint32_t payload_bytes) {
  atp_durable_t *d = ctx;
  const atp_durable_section_t *sec =
      kind != ATP_RECORD_KIND_ENGINE_CHANGE ? find_section(d, kind) : NULL;
  if (sec) {
    int rc = sec->replay(sec->ctx, kind, payload, payload_bytes);
    if (rc != 0) {
      snprintf(d->error, sizeof d->error,
               "journal: record LSN %" PRIu64 " (kind %u, %s) does not apply: %s", lsn,
               kind, sec->name, atp_strerror(rc));
      return rc == ATP_ENOMEM ? rc : ATP_EINTERNAL;
    }
    d->applied++;
    return 0;
  }
  if (kind != ATP_RECORD_KIND_ENGINE_CHANGE) {
    snprintf(d->error, sizeof d->error,
             "journal: record LSN %" PRIu64 " has kind %u, unknown to this build", lsn,
             kind);
    return ATP_EINTERNAL;
  }
  int rc = atp_records_decode(payload, payload_bytes, &d->scratch);
  if (rc == 0) rc = atp_engine_apply(d->engine, d->scratch.records, d->scratch.count);
  if (rc != 0) {
    snprintf(d->error, sizeof d->error,
             "journal: record LSN %" PRIu64 " does not %s: %s", lsn,
             d->scratch.count ? "apply" : "decode", atp_strerror(rc));
    return rc == ATP_ENOMEM ? rc : ATP_EINTERNAL;
  }
  d->applied++;
  return 0;
}

int atp_durable_restore(atp_durable_t *d, atp_engine_t *engine, uint64_t covered_lsn,
                        atp_durable_restore_t *out) {
  ATP_ASSERT(!atomic_load(&d->journal) && engine && out);
  d->restoring = true;
  memset(out, 0, sizeof *out);
  int64_t start = atp_mono_ms();
  atp_journal_config_t jc;
  memset(&jc, 0, sizeof jc);
  jc.dir = d->dir;
  jc.mode = d->config.mode;
  jc.queue_bytes_max = d->config.queue_bytes_max;
  jc.segment_bytes_max = d->config.segment_bytes_max;
  jc.on_durable = on_durable;
  jc.durable_ctx = d;
  jc.fault = d->config.fault;
  jc.fault_ctx = d->config.fault_ctx;
  d->engine = engine;
  d->applied = 0;
  d->error[0] = '\0';
  atp_journal_t *j = NULL;
  int rc = atp_journal_open(&jc, covered_lsn, replay_one, d, &out->scan, &j);
  if (rc != 0 && d->error[0])
    snprintf(out->scan.error, sizeof out->scan.error, "%s", d->error);
  atp_records_free(&d->scratch);
  d->engine = NULL;
  out->duration_ms = atp_mono_ms() - start;
  out->payloads_applied = d->applied;
  if (rc != 0) return rc;
  /* release: the hook's acquire sees an opened journal */
  atomic_store_explicit(&d->journal, j, memory_order_release);
  return 0;
}

int atp_durable_register(atp_durable_t *d, const atp_durable_section_t *section) {
  ATP_ASSERT(d && section && section->replay && !d->restoring);
  ATP_ASSERT(section->kind_first > ATP_RECORD_KIND_ENGINE_CHANGE &&
             section->kind_first <= section->kind_last);
  for (uint16_t k = section->kind_first;; k++) {
    ATP_ASSERT(!find_section(d, k)); /* two modules claim one kind */
    if (k == section->kind_last) break;
  }
  if (d->section_count == ATP_DURABLE_SECTIONS_MAX) return ATP_ETOOMANY;
  d->sections[d->section_count++] = *section;
  return 0;
}

int atp_durable_append(atp_durable_t *d, uint16_t kind, const void *payload,
                       uint32_t payload_bytes) {
  atp_journal_t *j = atomic_load_explicit(&d->journal, memory_order_acquire);
  ATP_ASSERT(j && find_section(d, kind)); /* appends start after restore */
  uint64_t lsn = 0;
  return atp_journal_append(j, kind, payload, payload_bytes, &lsn);
}

int atp_durable_export_sections(void *ctx, atp_durable_emit_fn emit, void *emit_ctx) {
  atp_durable_t *d = ctx;
  for (uint32_t i = 0; i < d->section_count; i++) {
    const atp_durable_section_t *sec = &d->sections[i];
    if (!sec->export_state) continue;
    int rc = sec->export_state(sec->ctx, emit, emit_ctx);
    if (rc != 0) return rc;
  }
  return 0;
}

int atp_durable_replay_section(void *ctx, uint16_t kind, const void *payload,
                               uint32_t payload_bytes) {
  atp_durable_t *d = ctx;
  const atp_durable_section_t *sec = find_section(d, kind);
  if (!sec) return ATP_EINTERNAL;
  return sec->replay(sec->ctx, kind, payload, payload_bytes);
}

int atp_durable_admit(const atp_durable_t *d) {
  atp_journal_t *j = atomic_load_explicit(&d->journal, memory_order_acquire);
  return j ? atp_journal_admit(j) : ATP_EUNAVAILABLE;
}

void atp_durable_begin(atp_durable_t *d, uint32_t slot) {
  if (d->config.mode == ATP_JOURNAL_NONE) return;
  atp_journal_begin(atomic_load_explicit(&d->journal, memory_order_acquire), slot);
}

uint64_t atp_durable_end(atp_durable_t *d, uint32_t slot) {
  if (d->config.mode == ATP_JOURNAL_NONE) return 0;
  return atp_journal_end(atomic_load_explicit(&d->journal, memory_order_acquire), slot);
}

uint64_t atp_durable_ticket(const atp_durable_t *d) {
  atp_journal_t *j = atomic_load_explicit(&d->journal, memory_order_acquire);
  return j ? atp_journal_durable_ticket(j) : 0;
}

atp_journal_mode_t atp_durable_mode(const atp_durable_t *d) {
  return d->config.mode;
}

atp_journal_t *atp_durable_journal(const atp_durable_t *d) {
  return atomic_load_explicit(&d->journal, memory_order_acquire);
}

int atp_durable_close(atp_durable_t *d) {
  if (!d) return 0;
  atp_journal_t *j = atomic_load(&d->journal);
  int rc = j ? atp_journal_close(j) : 0;
  atp_records_free(&d->scratch);
  atp_free(d->dir);
  atp_free(d);
  return rc;
}
