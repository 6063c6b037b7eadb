/* feed.c - the change feed: journal records read back as CloudEvents
 * (include/atp/feed.h, proto/events.md).
 *
 * Reads go to the segment files through atp_journal_read_range, which the
 * page cache serves for a follower at the tail; a small table of positions
 * where recent reads stopped (hints) lets the next read of a follower start
 * at its frame instead of walking its segment again. Nothing is kept in
 * memory per event, so a slow consumer costs the server nothing but its
 * cursor.
 */
#include "atp/feed.h"
#include "atp/wire.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "atp/assert.h"
#include "atp/deadletters.h"
#include "atp/flowstate.h"
#include "atp/memory.h"
#include "atp/payload.h"

/* Read positions remembered for the next read (a follower's next cursor). */
#define HINTS 16

typedef struct waiter {
  struct waiter *next;
  uint64_t after_lsn;
  int64_t deadline_ms;
  atp_feed_wake_fn fn;
  void *ctx;
} waiter_t;

struct atp_feed {
  char *journal_dir;
  char *source;
  int64_t retention_ms;
  _Atomic(atp_journal_t *) journal; /* NULL until attached */
  pthread_mutex_t hints_mu;         /* guards hints and hint_next */
  atp_journal_pos_t hints[HINTS];
  /* The cursor a hint's read handed out when it examined every record
   * before the hint's frame (it stopped at the durable LSN, not at its
   * limit): a read after that cursor starts at the hint. 0: none. */
  uint64_t hint_cursors[HINTS];
  uint32_t hint_next;
  pthread_mutex_t mu; /* guards the fields below */
  pthread_cond_t cond;
  pthread_cond_t durable_cond; /* broadcast when notified_lsn moves */
  waiter_t *waiters;
  uint32_t waiter_count;
  uint64_t notified_lsn;
  bool stopping;
  pthread_t thread;
  _Atomic int64_t stat[ATP_FEED_STAT_COUNT]; /* see atp_feed_stat_add */
};

int64_t atp_feed_mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void atp_feed_stat_add(atp_feed_t *f, atp_feed_stat_t which, int64_t by) {
  ATP_ASSERT((unsigned)which < ATP_FEED_STAT_COUNT);
  atomic_fetch_add_explicit(&f->stat[which], by, memory_order_relaxed);
}

static int no_record(void *ctx, uint64_t lsn, uint16_t kind, const void *payload,
                     uint32_t payload_bytes) {
  (void)ctx, (void)lsn, (void)kind, (void)payload, (void)payload_bytes;
  return 0;
}

void atp_feed_stats(atp_feed_t *f, atp_feed_stats_t *out) {
  memset(out, 0, sizeof *out);
  out->durable_lsn = atp_feed_durable_lsn(f);
  /* A read that wants nothing (after the highest LSN, up to 0) only lists
   * the segments: their first is the oldest retained record. */
  uint64_t first = 0;
  if (atomic_load_explicit(&f->journal, memory_order_acquire) &&
      atp_journal_read_range(f->journal_dir, UINT64_MAX - 1, 0, NULL, no_record, NULL,
                             &first) == 0)
    out->oldest_lsn = first;
  pthread_mutex_lock(&f->mu);
  out->waiters = f->waiter_count;
  pthread_mutex_unlock(&f->mu);
  for (int i = 0; i < ATP_FEED_STAT_COUNT; i++) {
    int64_t v = atomic_load_explicit(&f->stat[i], memory_order_relaxed);
    out->stat[i] = v > 0 ? (uint64_t)v : 0;
  }
}

/* --- sequences -------------------------------------------------------------- */

void atp_feed_sequence_format(uint64_t sequence, char out[21]) {
  snprintf(out, 21, "%020" PRIu64, sequence);
}

int atp_feed_sequence_parse(atp_str_t text, uint64_t *out) {
  if (text.len == 0 || text.len > 20) return ATP_EBADREQ;
  uint64_t v = 0;
  for (uint32_t i = 0; i < text.len; i++) {
    char c = text.ptr[i];
    if (c < '0' || c > '9') return ATP_EBADREQ;
    uint64_t digit = (uint64_t)(c - '0');
    if (v > (UINT64_MAX - digit) / 10) return ATP_EBADREQ;
    v = v * 10 + digit;
  }
  *out = v;
  return 0;
}

/* --- the waiting thread ---------------------------------------------------- */

/* Takes the waiters that are due (durable beyond them, past their deadline,
 * or all when stopping) off the list into *due. Under mu. */
static waiter_t *take_due(atp_feed_t *f, int64_t now, int64_t *next_deadline) {
  waiter_t *due = NULL, **pp = &f->waiters;
  *next_deadline = INT64_MAX;
  while (*pp) {
    waiter_t *w = *pp;
    if (f->stopping || f->notified_lsn > w->after_lsn || w->deadline_ms <= now) {
      *pp = w->next;
      w->next = due;
      due = w;
      f->waiter_count--;
    } else {
      if (w->deadline_ms < *next_deadline) *next_deadline = w->deadline_ms;
      pp = &w->next;
    }
  }
  return due;
}

static void *feed_main(void *arg) {
  atp_feed_t *f = arg;
  pthread_mutex_lock(&f->mu);
  for (;;) {
    int64_t now = atp_feed_mono_ms(), next;
    waiter_t *due = take_due(f, now, &next);
    bool stopping = f->stopping;
    uint64_t durable = f->notified_lsn;
    if (!due) {
      if (stopping) break;
      if (next == INT64_MAX) {
        pthread_cond_wait(&f->cond, &f->mu);
      } else {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        int64_t wait_ms = next - now;
        ts.tv_sec += wait_ms / 1000;
        ts.tv_nsec += (wait_ms % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
          ts.tv_sec++;
          ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&f->cond, &f->mu, &ts);
      }
      continue;
    }
    pthread_mutex_unlock(&f->mu);
    /* Callbacks run without the mutex: they read the journal and hand an
     * answer to the HTTP server, and may park again. */
    while (due) {
      waiter_t *w = due;
      due = w->next;
      atp_feed_wake_t why = stopping                 ? ATP_FEED_WAKE_STOP
                            : durable > w->after_lsn ? ATP_FEED_WAKE_DURABLE
                                                     : ATP_FEED_WAKE_TIMEOUT;
      bool again = w->fn(w->ctx, durable, why, &w->after_lsn, &w->deadline_ms);
      if (again && why != ATP_FEED_WAKE_STOP) {
        pthread_mutex_lock(&f->mu);
        w->next = f->waiters;
        f->waiters = w;
        f->waiter_count++;
        pthread_mutex_unlock(&f->mu);
      } else {
        atp_free(w);
      }
    }
    pthread_mutex_lock(&f->mu);
  }
  pthread_mutex_unlock(&f->mu);
  return NULL;
}

static char *dup_str(const char *s) {
  size_t n = strlen(s);
  char *p = atp_malloc(n + 1);
  if (p) memcpy(p, s, n + 1);
  return p;
}

int atp_feed_create(const atp_feed_config_t *config, atp_feed_t **out) {
  ATP_ASSERT(config && config->journal_dir && config->source && out);
  *out = NULL;
  atp_feed_t *f = atp_calloc(1, sizeof *f);
  if (!f) return ATP_ENOMEM;
  f->journal_dir = dup_str(config->journal_dir);
  f->source = dup_str(config->source);
  f->retention_ms = config->retention_ms;
  if (!f->journal_dir || !f->source) {
    atp_free(f->journal_dir);
    atp_free(f->source);
    atp_free(f);
    return ATP_ENOMEM;
  }
  atomic_init(&f->journal, NULL);
  for (int i = 0; i < ATP_FEED_STAT_COUNT; i++) atomic_init(&f->stat[i], 0);
  pthread_mutex_init(&f->hints_mu, NULL);
  pthread_mutex_init(&f->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&f->cond, &ca);
  pthread_cond_init(&f->durable_cond, &ca);
  pthread_condattr_destroy(&ca);
  if (pthread_create(&f->thread, NULL, feed_main, f) != 0) {
    pthread_cond_destroy(&f->durable_cond);
    pthread_cond_destroy(&f->cond);
    pthread_mutex_destroy(&f->mu);
    pthread_mutex_destroy(&f->hints_mu);
    atp_free(f->journal_dir);
    atp_free(f->source);
    atp_free(f);
    return ATP_EUNAVAILABLE;
  }
  *out = f;
  return 0;
}

void atp_feed_destroy(atp_feed_t *f) {
  if (!f) return;
  pthread_mutex_lock(&f->mu);
  f->stopping = true;
  pthread_cond_signal(&f->cond);
  pthread_cond_broadcast(&f->durable_cond);
  pthread_mutex_unlock(&f->mu);
  pthread_join(f->thread, NULL);
  ATP_ASSERT(!f->waiters);
  pthread_cond_destroy(&f->durable_cond);
  pthread_cond_destroy(&f->cond);
  pthread_mutex_destroy(&f->mu);
  pthread_mutex_destroy(&f->hints_mu);
  atp_free(f->journal_dir);
  atp_free(f->source);
  atp_free(f);
}

void atp_feed_attach(atp_feed_t *f, atp_journal_t *journal) {
  /* release: a reader that sees the journal sees it opened */
  atomic_store_explicit(&f->journal, journal, memory_order_release);
  atp_feed_notify(f, atp_journal_durable_lsn(journal));
}

void atp_feed_notify(atp_feed_t *f, uint64_t durable_lsn) {
  pthread_mutex_lock(&f->mu);
  if (durable_lsn > f->notified_lsn) {
    f->notified_lsn = durable_lsn;
    if (f->waiters) pthread_cond_signal(&f->cond);
    pthread_cond_broadcast(&f->durable_cond);
  }
  pthread_mutex_unlock(&f->mu);
}

uint64_t atp_feed_block(atp_feed_t *f, uint64_t after_lsn, int64_t timeout_ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += timeout_ms / 1000;
  ts.tv_nsec += (timeout_ms % 1000) * 1000000;
  if (ts.tv_nsec >= 1000000000) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000;
  }
  pthread_mutex_lock(&f->mu);
  int rc = 0;
  while (f->notified_lsn <= after_lsn && !f->stopping && rc == 0)
    rc = pthread_cond_timedwait(&f->durable_cond, &f->mu, &ts);
  uint64_t lsn = f->notified_lsn;
  pthread_mutex_unlock(&f->mu);
  return lsn;
}

uint64_t atp_feed_durable_lsn(const atp_feed_t *f) {
  atp_journal_t *j = atomic_load_explicit(&f->journal, memory_order_acquire);
  return j ? atp_journal_durable_lsn(j) : 0;
}

int atp_feed_wait(atp_feed_t *f, uint64_t after_lsn, int64_t deadline_ms,
                  atp_feed_wake_fn fn, void *ctx) {
  waiter_t *w = atp_malloc(sizeof *w);
  if (!w) return ATP_ENOMEM;
  *w = (waiter_t){NULL, after_lsn, deadline_ms, fn, ctx};
  int rc = 0;
  pthread_mutex_lock(&f->mu);
  if (f->stopping)
    rc = ATP_EUNAVAILABLE;
  else if (f->waiter_count >= ATP_FEED_WAITERS_MAX)
    rc = ATP_EFULL;
  if (rc == 0) {
    w->next = f->waiters;
    f->waiters = w;
    f->waiter_count++;
    pthread_cond_signal(&f->cond);
  }
  pthread_mutex_unlock(&f->mu);
  if (rc) atp_free(w);
  return rc;
}

/* --- reading ---------------------------------------------------------------- */

static void hint_get(atp_feed_t *f, uint64_t lsn, atp_journal_pos_t *out) {
  out->lsn = 0;
  pthread_mutex_lock(&f->hints_mu);
  for (uint32_t i = 0; i < HINTS; i++)
    if (f->hints[i].lsn == lsn) *out = f->hints[i];
  pthread_mutex_unlock(&f->hints_mu);
}

/* The hint a read that handed out cursor left, when that read examined
 * everything before the hint's frame; false when there is none. */
static bool hint_for_cursor(atp_feed_t *f, uint64_t cursor, atp_journal_pos_t *out) {
  bool found = false;
  pthread_mutex_lock(&f->hints_mu);
  for (uint32_t i = 0; i < HINTS && !found; i++)
    if (f->hint_cursors[i] == cursor && f->hints[i].lsn) {
      *out = f->hints[i];
      found = true;
    }
  pthread_mutex_unlock(&f->hints_mu);
  return found;
}

/* cursor: what the read handed out when it examined every record before
 * pos (0: it did not). */
static void hint_put(atp_feed_t *f, const atp_journal_pos_t *pos, uint64_t cursor) {
  if (!pos->lsn) return;
  pthread_mutex_lock(&f->hints_mu);
  uint32_t at = f->hint_next % HINTS;
  bool same = false;
  for (uint32_t i = 0; i < HINTS && !same; i++)
    if (f->hints[i].lsn == pos->lsn) {
      at = i;
      same = true;
    }
  if (!same) f->hint_next++;
  f->hints[at] = *pos;
  /* A cursor already known for this frame stays unless a newer read says
   * the same; one frame can follow several cursors (filters). */
  if (cursor || !same) f->hint_cursors[at] = cursor;
  pthread_mutex_unlock(&f->hints_mu);
}

static const char *reservation_type(atp_cause_t cause) {
  switch (cause) {
    case ATP_CAUSE_RESERVE:
      return "atpd.reservation.held";
    case ATP_CAUSE_COMMIT:
      return "atpd.reservation.committed";
    case ATP_CAUSE_RELEASE:
      return "atpd.reservation.released";
    case ATP_CAUSE_EXPIRE:
      return "atpd.reservation.expired";
    case ATP_CAUSE_FULFIL:
      return "atpd.reservation.fulfilled";
    case ATP_CAUSE_AMEND:
      return "atpd.reservation.amended";
    case ATP_CAUSE_EXTEND:
      return "atpd.reservation.extended";
    default:
      return NULL; /* a purge: retention, not a business event */
  }
}

/* The event type of a change record, or NULL when it is none. */
static const char *event_type(const atp_change_t *c) {
  switch (c->kind) {
    case ATP_CHANGE_POSITION:
      return "atpd.position.changed";
    case ATP_CHANGE_RESERVATION:
      return reservation_type(c->cause);
    case ATP_CHANGE_GROUP:
      return c->u.group.location_count ? "atpd.group.changed" : "atpd.group.deleted";
    case ATP_CHANGE_IDEMPOTENCY:
      return c->u.idem.kind == ATP_IDEM_COUNT && c->cause != ATP_CAUSE_PURGE
                 ? "atpd.count.applied"
                 : NULL;
  }
  return NULL;
}

static bool str_prefix(atp_str_t s, atp_str_t prefix) {
  return s.len >= prefix.len && memcmp(s.ptr, prefix.ptr, prefix.len) == 0;
}
static bool str_equal(atp_str_t a, atp_str_t b) {
  return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

/* Whether any position the event names passes the SKU and location filter. */
static bool position_passes(const atp_feed_filter_t *flt, atp_str_t sku,
                            atp_str_t location) {
  return str_prefix(sku, flt->sku_prefix) &&
         (!flt->location.len || str_equal(location, flt->location));
}

static bool passes(const atp_feed_filter_t *flt, const atp_feed_event_t *ev) {
  if (!flt) return true;
  if (flt->type.len) {
    atp_str_t t = {ev->type, (uint32_t)strlen(ev->type)};
    bool prefix = flt->type.ptr[flt->type.len - 1] == '.';
    if (prefix ? !str_prefix(t, flt->type) : !str_equal(t, flt->type)) return false;
  }
  if (!flt->sku_prefix.len && !flt->location.len) return true;
  const atp_change_t *c = ev->record;
  if (!c) return false; /* a flows' event names no position */
  switch (c->kind) {
    case ATP_CHANGE_POSITION:
      return position_passes(flt, c->u.position.sku, c->u.position.location);
    case ATP_CHANGE_RESERVATION:
      for (uint32_t i = 0; i < c->u.reservation->line_count; i++)
        if (position_passes(flt, c->u.reservation->lines[i].sku,
                            c->u.reservation->lines[i].location))
          return true;
      return false;
    case ATP_CHANGE_IDEMPOTENCY:
      return position_passes(flt, c->u.idem.position.sku, c->u.idem.position.location);
    case ATP_CHANGE_GROUP:
      if (flt->sku_prefix.len) return false;
      for (uint32_t i = 0; i < c->u.group.location_count; i++)
        if (str_equal(c->u.group.locations[i], flt->location)) return true;
      return false;
  }
  return false;
}

typedef struct {
  atp_feed_t *feed;
  uint64_t after_lsn;
  uint32_t after_index; /* of after_lsn: events with index <= it were served */
  bool skip_index;
  const atp_feed_filter_t *filter;
  uint32_t limit, count, scanned;
  atp_feed_event_fn fn;
  void *ctx;
  uint64_t cursor;     /* past what was examined */
  uint64_t last_event; /* the sequence of the last event handed out */
  uint64_t done_lsn;   /* the last record whose every event was handed out */
  atp_records_t scratch;
  int rc;
} read_t;

/* The type of a flows' record, with its time; NULL when it is no event (the
 * audit, snapshot-only metadata) or does not decode. */
static const char *flows_type(uint16_t kind, const void *payload, uint32_t bytes,
                              int64_t *at_ms) {
  atp_payload_reader_t rd;
  atp_payload_reader_init(&rd, payload, bytes);
  const char *s;
  uint32_t n;
  switch (kind) {
    case ATP_DL_KIND_ADD:
    case ATP_DL_KIND_UPDATE: {
      (void)atp_payload_get_u64(&rd);
      for (int i = 0; i < 2; i++) atp_payload_get_str(&rd, &s, &n); /* flow, owner */
      (void)atp_payload_get_u32(&rd);
      for (int i = 0; i < 3; i++) atp_payload_get_str(&rd, &s, &n); /* the error */
      for (int i = 0; i < 3; i++) (void)atp_payload_get_u8(&rd);
      for (int i = 0; i < 3; i++) atp_payload_get_str(&rd, &s, &n); /* the request */
      int64_t received = atp_payload_get_i64(&rd);
      (void)atp_payload_get_u32(&rd);
      uint8_t status = atp_payload_get_u8(&rd);
      int64_t updated = atp_payload_get_i64(&rd);
      if (!atp_payload_ok(&rd)) return NULL;
      *at_ms = kind == ATP_DL_KIND_ADD ? received : updated;
      if (kind == ATP_DL_KIND_ADD) return "atpd.dead_letter.created";
      return status == 1   ? "atpd.dead_letter.replayed"
             : status == 2 ? "atpd.dead_letter.resolved"
                           : "atpd.dead_letter.attempted";
    }
    case ATP_FLOW_KIND_STATE: {
      atp_payload_get_str(&rd, &s, &n);
      uint8_t paused = atp_payload_get_u8(&rd);
      for (int i = 0; i < 2; i++) atp_payload_get_str(&rd, &s, &n);
      *at_ms = atp_payload_get_i64(&rd);
      if (!atp_payload_ok(&rd)) return NULL;
      return paused ? "atpd.flow.paused" : "atpd.flow.resumed";
    }
    case ATP_FLOW_KIND_ENQ: {
      (void)atp_payload_get_u64(&rd);
      atp_payload_get_str(&rd, &s, &n);
      for (int i = 0; i < 3; i++) (void)atp_payload_get_u8(&rd);
      for (int i = 0; i < 3; i++) atp_payload_get_str(&rd, &s, &n);
      (void)atp_payload_get_u32(&rd);
      *at_ms = atp_payload_get_i64(&rd);
      return atp_payload_ok(&rd) ? "atpd.flow.queued" : NULL;
    }
  }
  /* A dequeue (the queue's bookkeeping as it drains: the ops themselves are
   * engine events) and the audit are not events. */
  return NULL;
}

/* A flows' record: one event, index 0. */
static int on_flows_record(read_t *r, uint64_t lsn, uint16_t kind, const void *payload,
                           uint32_t payload_bytes) {
  r->cursor = lsn * ATP_FEED_INDEX_SPAN + (ATP_FEED_INDEX_SPAN - 1);
  r->done_lsn = lsn; /* one event at most: handed, skipped or none below */
  if (lsn == r->after_lsn && r->skip_index) return 0;
  atp_feed_event_t ev;
  memset(&ev, 0, sizeof ev);
  ev.type = flows_type(kind, payload, payload_bytes, &ev.at_ms);
  r->scanned++;
  if (!ev.type) return r->scanned >= ATP_FEED_SCAN_MAX;
  ev.lsn = lsn;
  ev.sequence = lsn * ATP_FEED_INDEX_SPAN;
  ev.kind = kind;
  ev.payload = payload;
  ev.payload_bytes = payload_bytes;
  if (!passes(r->filter, &ev)) return r->scanned >= ATP_FEED_SCAN_MAX;
  r->count++;
  r->last_event = ev.sequence;
  if (r->fn(r->ctx, &ev) || r->count >= r->limit) return 1;
  return r->scanned >= ATP_FEED_SCAN_MAX;
}

/* Whether a record's change records after index i hold an event that passes
 * the read's filter (the read stopped at i). */
static bool events_after(const read_t *r, uint64_t lsn, uint32_t i) {
  const atp_records_t *s = &r->scratch;
  atp_feed_event_t ev = {.lsn = lsn};
  for (uint32_t k = i + 1; k < s->count; k++) {
    ev.record = &s->records[k];
    ev.ctx = &s->contexts[k];
    ev.type = event_type(ev.record);
    if (ev.type && passes(r->filter, &ev)) return true;
  }
  return false;
}

static int on_record(void *arg, uint64_t lsn, uint16_t kind, const void *payload,
                     uint32_t payload_bytes) {
  read_t *r = arg;
  if (kind != ATP_RECORD_KIND_ENGINE_CHANGE)
    return on_flows_record(r, lsn, kind, payload, payload_bytes);
  int rc = atp_records_decode(payload, payload_bytes, &r->scratch);
  if (rc) {
    r->rc = rc == ATP_ENOMEM ? rc : ATP_EINTERNAL;
    return 1;
  }
  const atp_records_t *s = &r->scratch;
  ATP_ASSERT(s->count <= ATP_FEED_INDEX_SPAN);
  atp_feed_event_t ev;
  memset(&ev, 0, sizeof ev);
  ev.lsn = lsn;
  for (uint32_t i = 0; i < s->count; i++) {
    const atp_change_t *c = &s->records[i];
    if (c->kind == ATP_CHANGE_RESERVATION) ev.reservation = c->u.reservation;
    if (c->kind != ATP_CHANGE_IDEMPOTENCY) continue;
    if (c->u.idem.kind == ATP_IDEM_FULFIL) ev.fulfillment_id = c->u.idem.id;
    if (c->u.idem.kind == ATP_IDEM_AMEND) ev.amend_id = c->u.idem.id;
    if (c->u.idem.kind == ATP_IDEM_RELEASE) ev.release_id = c->u.idem.id;
  }
  for (uint32_t i = 0; i < s->count; i++) {
    if (lsn == r->after_lsn && r->skip_index && i <= r->after_index) continue;
    r->scanned++;
    ev.index = i;
    ev.sequence = lsn * ATP_FEED_INDEX_SPAN + i;
    ev.record = &s->records[i];
    ev.ctx = &s->contexts[i];
    ev.type = event_type(ev.record);
    r->cursor = ev.sequence;
    if (!ev.type || !passes(r->filter, &ev)) continue;
    r->count++;
    r->last_event = ev.sequence;
    if (r->fn(r->ctx, &ev) || r->count >= r->limit || r->scanned >= ATP_FEED_SCAN_MAX) {
      if (!events_after(r, lsn, i)) r->done_lsn = lsn;
      return 1;
    }
  }
  /* The whole record was examined: resume after its last index. */
  r->cursor = lsn * ATP_FEED_INDEX_SPAN + (s->count - 1);
  r->done_lsn = lsn;
  return r->scanned >= ATP_FEED_SCAN_MAX;
}

int atp_feed_read(atp_feed_t *f, uint64_t after, bool has_after,
                  const atp_feed_filter_t *filter, uint32_t limit, atp_feed_event_fn fn,
                  void *ctx, uint64_t *cursor, uint32_t *count) {
  ATP_ASSERT(limit >= 1 && fn && cursor && count);
  *cursor = has_after ? after : 0;
  *count = 0;
  uint64_t durable = atp_feed_durable_lsn(f);
  read_t r = {.feed = f,
              .after_lsn = after / ATP_FEED_INDEX_SPAN,
              .after_index = (uint32_t)(after % ATP_FEED_INDEX_SPAN),
              .skip_index = has_after,
              .filter = filter,
              .limit = limit,
              .fn = fn,
              .ctx = ctx,
              .cursor = *cursor};
  /* after = L * 10^4 + i: the record L is read again for its events above i
   * (an index of 9999 means all of L was served). */
  uint64_t from = has_after ? r.after_lsn - (r.after_lsn > 0) : 0;
  if (has_after && r.after_index == ATP_FEED_INDEX_SPAN - 1) from = r.after_lsn;
  atp_journal_pos_t hint;
  /* A follower's cursor is mostly what the read before handed out, which
   * examined every record up to its durable LSN D: resume at D + 1 from
   * that read's hint rather than read the cursor's record again, whose
   * frame no hint holds (a walk over its segment's frames otherwise). */
  if (has_after && hint_for_cursor(f, after, &hint) && hint.lsn > r.after_lsn) {
    from = hint.lsn - 1;
    r.skip_index = false; /* the cursor's record is behind from */
  } else {
    hint_get(f, from + 1, &hint);
  }
  if (durable <= from) return 0;
  if (!hint.lsn) atp_feed_stat_add(f, ATP_FEED_STAT_COLD_READS, 1);
  atp_records_init(&r.scratch);
  uint64_t first = 0;
  int rc = atp_journal_read_range(f->journal_dir, from, durable, &hint, on_record, &r,
                                  &first);
  if (rc == ATP_ENOTFOUND) {
    if (has_after) {
      rc = ATP_EEXPIRED;
    } else { /* from the oldest retained */
      rc = atp_journal_read_range(f->journal_dir, first ? first - 1 : 0, durable, &hint,
                                  on_record, &r, &first);
    }
  }
  if (rc == 1) rc = 0;
  if (!rc) rc = r.rc;
  /* The last event's sequence when there is one (the contract's cursor);
   * past the examined records when a filter skipped them all. */
  uint64_t out_cursor = r.count ? r.last_event : r.cursor;
  /* The hint is at the frame after the last record read; when every event
   * of that record (and so of all before it) was handed out, a read after
   * out_cursor starts there. */
  hint_put(f, &hint, !rc && r.done_lsn && hint.lsn == r.done_lsn + 1 ? out_cursor : 0);
  atp_records_free(&r.scratch);
  if (rc) return rc;
  *cursor = out_cursor;
  *count = r.count;
  return 0;
}

/* --- writing ------------------------------------------------------------------ */

static void w_s(atp_writer_t *w, atp_str_t s) {
  atp_w_str(w, s.ptr ? s.ptr : "", s.len);
}

static void w_opt(atp_writer_t *w, const char *key, atp_str_t s) {
  if (!s.len) return;
  atp_w_key(w, key);
  w_s(w, s);
}

/* RFC 3339 in UTC with milliseconds. */
static void w_time(atp_writer_t *w, int64_t ms) {
  time_t secs = (time_t)(ms / 1000);
  int64_t frac = ms % 1000;
  if (frac < 0) {
    frac += 1000;
    secs--;
  }
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[40];
  int n = snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                   tm.tm_sec, (int)frac);
  atp_w_str(w, buf, (size_t)n);
}

static const char *cause_name(atp_cause_t cause) {
  static const char *names[] = {
      [ATP_CAUSE_ADJUST] = "adjust",       [ATP_CAUSE_COUNT] = "count",
      [ATP_CAUSE_SAFETY] = "safety_stock", [ATP_CAUSE_RESERVE] = "reserve",
      [ATP_CAUSE_COMMIT] = "commit",       [ATP_CAUSE_RELEASE] = "release",
      [ATP_CAUSE_EXPIRE] = "expire",       [ATP_CAUSE_FULFIL] = "fulfil",
      [ATP_CAUSE_AMEND] = "amend",         [ATP_CAUSE_EXTEND] = "extend",
      [ATP_CAUSE_GROUP] = "group",         [ATP_CAUSE_PURGE] = "purge",
      [ATP_CAUSE_SNAPSHOT] = "snapshot",   [ATP_CAUSE_HISTORY] = "history"};
  unsigned i = (unsigned)cause;
  return i < sizeof names / sizeof names[0] && names[i] ? names[i] : "unknown";
}

/* id: "<lsn>-<index>" for a journal event; a snapshot's events are
 * "snapshot-<cursor>-<n>", so they never collide with the feed's. */
static void write_envelope(const atp_feed_t *f, atp_writer_t *w, const char *type,
                           uint64_t sequence, const char *id_prefix, uint64_t id_a,
                           uint64_t id_b, int64_t at_ms) {
  char seq[21], id[80];
  atp_feed_sequence_format(sequence, seq);
  int n = snprintf(id, sizeof id, "%s%" PRIu64 "-%" PRIu64, id_prefix, id_a, id_b);
  atp_w_key(w, "specversion");
  atp_w_cstr(w, "1.0");
  atp_w_key(w, "id");
  atp_w_str(w, id, (size_t)n);
  atp_w_key(w, "source");
  atp_w_cstr(w, f->source);
  atp_w_key(w, "type");
  atp_w_cstr(w, type);
  atp_w_key(w, "time");
  w_time(w, at_ms);
  atp_w_key(w, "sequence");
  atp_w_str(w, seq, 20);
  atp_w_key(w, "datacontenttype");
  atp_w_cstr(w, "application/json");
}

static void write_position(atp_writer_t *w, const atp_position_t *p) {
  atp_write_position(w, p, -1);
}

static void write_reservation(atp_writer_t *w, const atp_reservation_t *r) {
  atp_w_object_begin(w);
  atp_write_reservation_fields(w, r);
  atp_w_object_end(w);
}

/* The record's body: the object after the change and, for a position, the
 * deltas (the journal keeps deltas, not totals: a consumer adds them to the
 * snapshot's totals; `version` orders them). */
static void write_object(atp_writer_t *w, const atp_change_t *c) {
  switch (c->kind) {
    case ATP_CHANGE_POSITION: {
      const atp_change_position_t *p = &c->u.position;
      atp_w_key(w, "position");
      atp_w_object_begin(w);
      atp_w_key(w, "sku");
      w_s(w, p->sku);
      atp_w_key(w, "location");
      w_s(w, p->location);
      if (p->counted_at_ms != ATP_TIME_NONE) {
        atp_w_key(w, "counted_at");
        atp_w_int(w, p->counted_at_ms);
      }
      atp_w_key(w, "version");
      atp_w_uint(w, p->version);
      atp_w_object_end(w);
      atp_w_key(w, "deltas");
      atp_w_object_begin(w);
      atp_w_key(w, "on_hand");
      atp_w_int(w, p->d_on_hand);
      atp_w_key(w, "safety_stock");
      atp_w_int(w, p->d_safety_stock);
      atp_w_key(w, "reserved");
      atp_w_int(w, p->d_reserved);
      atp_w_key(w, "committed");
      atp_w_int(w, p->d_committed);
      atp_w_object_end(w);
      if (p->occurred_at_ms != ATP_TIME_NONE) {
        atp_w_key(w, "occurred_at");
        atp_w_int(w, p->occurred_at_ms);
      }
      break;
    }
    case ATP_CHANGE_RESERVATION:
      atp_w_key(w, "reservation");
      write_reservation(w, c->u.reservation);
      break;
    case ATP_CHANGE_GROUP:
      atp_w_key(w, "group");
      atp_w_object_begin(w);
      atp_w_key(w, "name");
      w_s(w, c->u.group.name);
      atp_w_key(w, "locations");
      atp_w_array_begin(w);
      for (uint32_t i = 0; i < c->u.group.location_count; i++)
        w_s(w, c->u.group.locations[i]);
      atp_w_array_end(w);
      atp_w_object_end(w);
      break;
    case ATP_CHANGE_IDEMPOTENCY:
      atp_w_key(w, "position");
      write_position(w, &c->u.idem.position);
      atp_w_key(w, "applied");
      atp_w_bool(w, (c->u.idem.flags & 1u) != 0);
      break;
  }
}

static void w_lstr(atp_writer_t *w, const char *key, atp_payload_reader_t *rd) {
  const char *s;
  uint32_t n;
  atp_payload_get_str(rd, &s, &n);
  if (!key) return;
  atp_w_key(w, key);
  atp_w_str(w, s, n);
}

/* data of a flows' event: the record's fields (proto/journal.md's layout). */
static void write_flows_data(atp_writer_t *w, const atp_feed_event_t *ev) {
  atp_payload_reader_t rd;
  atp_payload_reader_init(&rd, ev->payload, ev->payload_bytes);
  char id[32];
  switch (ev->kind) {
    case ATP_DL_KIND_ADD:
    case ATP_DL_KIND_UPDATE: {
      atp_w_key(w, "cause");
      atp_w_cstr(w, "dead_letter");
      atp_w_key(w, "dead_letter");
      atp_w_object_begin(w);
      int n = snprintf(id, sizeof id, "dl-%" PRIu64, atp_payload_get_u64(&rd));
      atp_w_key(w, "dl_id");
      atp_w_str(w, id, (size_t)n);
      w_lstr(w, "flow", &rd);
      w_lstr(w, "owner", &rd);
      atp_w_key(w, "index");
      atp_w_uint(w, atp_payload_get_u32(&rd));
      atp_w_key(w, "error");
      atp_w_object_begin(w);
      w_lstr(w, "code", &rd);
      w_lstr(w, "message", &rd);
      w_lstr(w, "field", &rd);
      atp_w_object_end(w);
      for (int i = 0; i < 3; i++) (void)atp_payload_get_u8(&rd);
      w_lstr(w, "path", &rd);
      w_lstr(w, NULL, &rd); /* query */
      w_lstr(w, NULL, &rd); /* payload: GET /v1/dead-letters has it */
      atp_w_key(w, "received_at");
      atp_w_int(w, atp_payload_get_i64(&rd));
      atp_w_key(w, "attempts");
      atp_w_uint(w, atp_payload_get_u32(&rd));
      uint8_t status = atp_payload_get_u8(&rd);
      atp_w_key(w, "status");
      atp_w_cstr(w, status == 1 ? "replayed" : status == 2 ? "resolved" : "open");
      atp_w_object_end(w);
      break;
    }
    case ATP_FLOW_KIND_STATE:
      atp_w_key(w, "cause");
      atp_w_cstr(w, "flow");
      w_lstr(w, "flow", &rd);
      atp_w_key(w, "paused");
      atp_w_bool(w, atp_payload_get_u8(&rd) != 0);
      w_lstr(w, "reason", &rd);
      w_lstr(w, "by", &rd);
      atp_w_key(w, "changed_at");
      atp_w_int(w, atp_payload_get_i64(&rd));
      break;
    case ATP_FLOW_KIND_ENQ: {
      atp_w_key(w, "cause");
      atp_w_cstr(w, "flow");
      uint64_t seq = atp_payload_get_u64(&rd);
      w_lstr(w, "flow", &rd);
      atp_w_key(w, "queued_seq");
      atp_w_uint(w, seq);
      for (int i = 0; i < 3; i++) (void)atp_payload_get_u8(&rd);
      w_lstr(w, "path", &rd);
      break;
    }
  }
}

void atp_feed_write_event(const atp_feed_t *f, atp_writer_t *w,
                          const atp_feed_event_t *ev) {
  if (!ev->record) {
    atp_w_object_begin(w);
    write_envelope(f, w, ev->type, ev->sequence, "", ev->lsn, ev->index, ev->at_ms);
    atp_w_key(w, "data");
    atp_w_object_begin(w);
    write_flows_data(w, ev);
    atp_w_object_end(w);
    atp_w_object_end(w);
    return;
  }
  const atp_change_t *c = ev->record;
  atp_w_object_begin(w);
  write_envelope(f, w, ev->type, ev->sequence, "", ev->lsn, ev->index, c->at_ms);
  atp_w_key(w, "data");
  atp_w_object_begin(w);
  atp_w_key(w, "cause");
  atp_w_cstr(w, cause_name(c->cause));
  w_opt(w, "cause_id", c->cause_id);
  write_object(w, c);
  /* Every identifier the request carried; absent ones are left out. */
  const atp_change_ctx_t *x = ev->ctx;
  w_opt(w, "request_id", x->request_id);
  if (c->cause == ATP_CAUSE_ADJUST || c->cause == ATP_CAUSE_COUNT)
    w_opt(w, "id", c->cause_id);
  w_opt(w, "ref", x->ref);
  if (ev->reservation) {
    w_opt(w, "reservation_id", ev->reservation->id);
    w_opt(w, "order_ref", ev->reservation->order_ref);
    w_opt(w, "order_id", ev->reservation->order_id);
    w_opt(w, "channel", ev->reservation->channel);
    w_opt(w, "customer_id", ev->reservation->customer_id);
  }
  w_opt(w, "fulfillment_id", ev->fulfillment_id);
  w_opt(w, "amend_id", ev->amend_id);
  w_opt(w, "release_id", ev->release_id);
  w_opt(w, "source", x->source);
  w_opt(w, "flow", x->flow);
  w_opt(w, "reason", x->reason);
  atp_w_object_end(w);
  atp_w_object_end(w);
}

void atp_feed_write_position_event(const atp_feed_t *f, atp_writer_t *w,
                                   const atp_position_t *p, uint64_t cursor, uint64_t n,
                                   int64_t now_ms) {
  atp_w_object_begin(w);
  write_envelope(f, w, "atpd.position.changed", cursor, "snapshot-", cursor, n, now_ms);
  atp_w_key(w, "data");
  atp_w_object_begin(w);
  atp_w_key(w, "cause");
  atp_w_cstr(w, "snapshot");
  atp_w_key(w, "position");
  write_position(w, p);
  atp_w_object_end(w);
  atp_w_object_end(w);
}
