/* audit.c - the audit trail (include/atp/audit.h): a ring of entries, each
 * with its strings in one allocation. */
#include "atp/audit.h"

#include <pthread.h>
#include <string.h>

#include "atp/assert.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "atp/memory.h"
#include "atp/payload.h"

#define STRINGS 6

struct atp_audit {
  pthread_mutex_t mu;
  atp_audit_entry_t **ring; /* max slots; entry i of age order at (first+i)%max */
  uint32_t max, first, count;
  uint64_t next_seq, recorded, dropped;
  atp_durable_t *durable;
  atp_buf_t enc;
};

static void strings(atp_audit_entry_t *e, atp_str_t *s[STRINGS]) {
  s[0] = &e->action, s[1] = &e->target, s[2] = &e->by, s[3] = &e->role;
  s[4] = &e->token_holder, s[5] = &e->detail;
}

static atp_audit_entry_t *entry_build(const atp_audit_entry_t *src) {
  atp_audit_entry_t e = *src;
  atp_str_t *s[STRINGS];
  strings(&e, s);
  size_t total = 0;
  for (int i = 0; i < STRINGS; i++) {
    if (s[i]->len > ATP_NOTE_BYTES_MAX) s[i]->len = ATP_NOTE_BYTES_MAX;
    total += s[i]->len + 1;
  }
  atp_audit_entry_t *out = atp_malloc(sizeof *out + total);
  if (!out) return NULL;
  char *at = (char *)(out + 1);
  for (int i = 0; i < STRINGS; i++) {
    if (s[i]->len) memcpy(at, s[i]->ptr, s[i]->len);
    at[s[i]->len] = '\0';
    s[i]->ptr = at;
    at += s[i]->len + 1;
  }
  *out = e;
  return out;
}

static int apply_entry(atp_audit_t *a, const atp_audit_entry_t *e) {
  if (e->seq < a->next_seq) return 0; /* a snapshot's entry the journal repeats */
  atp_audit_entry_t *n = entry_build(e);
  if (!n) return ATP_ENOMEM;
  if (a->count == a->max) {
    atp_free(a->ring[a->first]);
    a->first = (a->first + 1) % a->max;
    a->count--;
    a->dropped++;
  }
  a->ring[(a->first + a->count) % a->max] = n;
  a->count++;
  a->next_seq = e->seq + 1;
  a->recorded++;
  return 0;
}

static void encode(atp_buf_t *b, const atp_audit_entry_t *e) {
  atp_payload_u64(b, e->seq);
  atp_payload_i64(b, e->at);
  atp_audit_entry_t copy = *e;
  atp_str_t *s[STRINGS];
  strings(&copy, s);
  for (int i = 0; i < STRINGS; i++) {
    uint32_t len = s[i]->len > ATP_NOTE_BYTES_MAX ? ATP_NOTE_BYTES_MAX : s[i]->len;
    atp_payload_str(b, s[i]->ptr, len);
  }
}

static int replay(void *ctx, uint16_t kind, const void *payload, uint32_t len) {
  atp_audit_t *a = ctx;
  atp_payload_reader_t r;
  atp_payload_reader_init(&r, payload, len);
  int rc = 0;
  pthread_mutex_lock(&a->mu);
  if (kind == ATP_AUDIT_KIND_ENTRY) {
    atp_audit_entry_t e;
    e.seq = atp_payload_get_u64(&r);
    e.at = atp_payload_get_i64(&r);
    atp_str_t *s[STRINGS];
    strings(&e, s);
    for (int i = 0; i < STRINGS; i++) atp_payload_get_str(&r, &s[i]->ptr, &s[i]->len);
    rc = atp_payload_ok(&r) && e.seq > 0 ? apply_entry(a, &e) : ATP_EBADREQ;
  } else {
    uint64_t next = atp_payload_get_u64(&r), dropped = atp_payload_get_u64(&r);
    if (!atp_payload_ok(&r)) {
      rc = ATP_EBADREQ;
    } else {
      if (next > a->next_seq) a->next_seq = next;
      if (dropped > a->dropped) a->dropped = dropped;
    }
  }
  pthread_mutex_unlock(&a->mu);
  return rc;
}

static int export_state(void *ctx, atp_durable_emit_fn emit, void *emit_ctx) {
  atp_audit_t *a = ctx;
  atp_buf_t b;
  atp_buf_init(&b, 0);
  int rc = 0;
  pthread_mutex_lock(&a->mu);
  for (uint32_t i = 0; i < a->count && !rc; i++) {
    atp_buf_reset(&b);
    encode(&b, a->ring[(a->first + i) % a->max]);
    rc = b.failed ? ATP_ENOMEM
                  : emit(emit_ctx, ATP_AUDIT_KIND_ENTRY, b.data, (uint32_t)b.len);
  }
  if (!rc) {
    atp_buf_reset(&b);
    atp_payload_u64(&b, a->next_seq);
    atp_payload_u64(&b, a->dropped);
    rc = b.failed ? ATP_ENOMEM
                  : emit(emit_ctx, ATP_AUDIT_KIND_META, b.data, (uint32_t)b.len);
  }
  pthread_mutex_unlock(&a->mu);
  atp_buf_free(&b);
  return rc;
}

int atp_audit_create(const atp_audit_config_t *config, atp_audit_t **out) {
  ATP_ASSERT(config && out);
  *out = NULL;
  atp_audit_t *a = atp_calloc(1, sizeof *a);
  if (!a) return ATP_ENOMEM;
  a->max = config->max ? config->max : ATP_AUDIT_ENTRIES_DEFAULT;
  /* The ring of pointers is allocated up front (8 bytes a slot); entries as
   * they come. */
  a->ring = atp_calloc(a->max, sizeof *a->ring);
  if (!a->ring) {
    atp_free(a);
    return ATP_ENOMEM;
  }
  pthread_mutex_init(&a->mu, NULL);
  a->next_seq = 1;
  a->durable = config->durable;
  atp_buf_init(&a->enc, ATP_JOURNAL_RECORD_BYTES_MAX);
  if (a->durable) {
    atp_durable_section_t s = {
        .name = "audit",
        .kind_first = ATP_AUDIT_KIND_ENTRY,
        .kind_last = ATP_AUDIT_KIND_META,
        .replay = replay,
        .export_state = export_state,
        .ctx = a,
    };
    int rc = atp_durable_register(a->durable, &s);
    if (rc != 0) {
      atp_audit_destroy(a);
      return rc;
    }
  }
  *out = a;
  return 0;
}

void atp_audit_destroy(atp_audit_t *a) {
  if (!a) return;
  for (uint32_t i = 0; i < a->count; i++) atp_free(a->ring[(a->first + i) % a->max]);
  atp_free(a->ring);
  atp_buf_free(&a->enc);
  pthread_mutex_destroy(&a->mu);
  atp_free(a);
}

int atp_audit_record(atp_audit_t *a, const atp_audit_entry_t *in, uint64_t *seq_out) {
  atp_audit_entry_t e = *in;
  pthread_mutex_lock(&a->mu);
  e.seq = a->next_seq;
  int rc = 0;
  if (a->durable) {
    atp_buf_reset(&a->enc);
    encode(&a->enc, &e);
    rc = a->enc.failed ? ATP_ENOMEM
                       : atp_durable_append(a->durable, ATP_AUDIT_KIND_ENTRY,
                                            a->enc.data, (uint32_t)a->enc.len);
  }
  if (rc == 0) rc = apply_entry(a, &e);
  pthread_mutex_unlock(&a->mu);
  if (rc == 0 && seq_out) *seq_out = e.seq;
  return rc;
}

static bool str_eq(atp_str_t x, atp_str_t y) {
  return x.len == y.len && (x.len == 0 || memcmp(x.ptr, y.ptr, x.len) == 0);
}

void atp_audit_list(atp_audit_t *a, const atp_audit_filter_t *f,
                    void (*fn)(void *ctx, const atp_audit_entry_t *e), void *ctx,
                    bool *more) {
  ATP_ASSERT(f->limit > 0);
  *more = false;
  uint32_t given = 0;
  pthread_mutex_lock(&a->mu);
  for (uint32_t i = 0; i < a->count; i++) {
    const atp_audit_entry_t *e = a->ring[(a->first + i) % a->max];
    if (e->seq <= f->after || e->at < f->since) continue;
    if (f->action.len && !str_eq(f->action, e->action)) continue;
    if (f->by.len && !str_eq(f->by, e->by)) continue;
    if (given == f->limit) {
      *more = true;
      break;
    }
    fn(ctx, e);
    given++;
  }
  pthread_mutex_unlock(&a->mu);
}

void atp_audit_stats(atp_audit_t *a, atp_audit_stats_t *out) {
  pthread_mutex_lock(&a->mu);
  out->kept = a->count;
  out->recorded = a->recorded;
  out->dropped = a->dropped;
  out->max = a->max;
  pthread_mutex_unlock(&a->mu);
}
