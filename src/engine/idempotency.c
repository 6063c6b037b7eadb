/* idempotency.c - remembered client ids of adjustments, counts, fulfilments,
 * amendments and releases, with their outcomes (CONTRACT.md section 5,
 * "Idempotency everywhere"). Reservation ids are remembered by their own
 * records. Adjustments and counts share one namespace (engine.h): a record's
 * key is (namespace, id), and a key found under the other kind is a mismatch.
 *
 * A call first claims its (kind, id): it pushes a PENDING record on the id's
 * chain, then looks below it for an older record with the same key. An older
 * LIVE one means the id was used: same content is a replay, other content a
 * mismatch, and the new record turns DEAD. An older PENDING one is a concurrent
 * duplicate still running: wait for it (a duplicate request waits for its twin,
 * never for an unrelated one). A call that fails after claiming marks its
 * record DEAD so that the id stays free: a refused request leaves no trace.
 * The ticker purges records idempotency_ttl_ms after creation.
 */
#include <sched.h>
#include <string.h>

#include "atp/memory.h"
#include "engine_internal.h"

int atp__idem_init(atp_engine_t *e) {
  ATP_ASSERT(e->config.idempotency_max < (1u << 30));
  e->idempotency_records =
      atp_table_alloc(e->config.idempotency_max, sizeof *e->idempotency_records, false);
  if (!e->idempotency_records) return ATP_ENOMEM;
  return atp__keyed_init(&e->idempotency_table, e->config.idempotency_max);
}

void atp__idem_destroy(atp_engine_t *e) {
  atp__keyed_destroy(&e->idempotency_table);
  atp_table_free(e->idempotency_records, e->config.idempotency_max,
                 sizeof *e->idempotency_records);
  e->idempotency_records = NULL;
}

/* The namespace a kind's ids live in (engine.h): adjustments and counts share
 * one, so the key of a record is (namespace, id) and its kind is part of its
 * content. */
static uint32_t idem_namespace(atp_idem_kind_t kind) {
  return kind == ATP_IDEM_COUNT ? (uint32_t)ATP_IDEM_ADJUST : (uint32_t)kind;
}

static uint64_t idem_hash(atp_idem_kind_t kind, atp_str_t id) {
  return atp__hash_mix(atp__hash_bytes(id.ptr, id.len), idem_namespace(kind));
}

uint64_t atp__idem_key_hash(atp_idem_kind_t kind, atp_str_t id) {
  return idem_hash(kind, id);
}

static bool idem_same_key(const atp_engine_t *e, uint32_t idx, uint64_t hash,
                          atp_idem_kind_t kind, atp_str_t id) {
  const atp_idempotency_record_t *r = &e->idempotency_records[idx];
  return e->idempotency_table.entries[idx].hash == hash &&
         idem_namespace((atp_idem_kind_t)r->kind) == idem_namespace(kind) &&
         r->id_len == id.len && memcmp(r->text, id.ptr, id.len) == 0;
}

/* Walks the chain from v (index+1) for a record with the key, skipping DEAD
 * ones and waiting out PENDING ones. Returns the LIVE record or UINT32_MAX. */
static uint32_t idem_find_from(atp_engine_t *e, uint32_t v, uint64_t hash,
                               atp_idem_kind_t kind, atp_str_t id) {
  for (; v; v = atp__keyed_next(&e->idempotency_table, v)) {
    uint32_t idx = v - 1;
    uint32_t st = atomic_load_explicit(&e->idempotency_table.entries[idx].state,
                                       memory_order_acquire);
    if (st == ATP_REC_FREE || st == ATP_REC_DEAD ||
        !idem_same_key(e, idx, hash, kind, id))
      continue;
    while (st == ATP_REC_PENDING) {
      sched_yield();
      st = atomic_load_explicit(&e->idempotency_table.entries[idx].state,
                                memory_order_acquire);
    }
    if (st == ATP_REC_LIVE) return idx;
  }
  return UINT32_MAX;
}

static int idem_existing(atp_engine_t *e, uint32_t found, atp_idem_kind_t kind,
                         uint64_t content_hash, uint32_t *idx, atp_result_t *result) {
  if (e->idempotency_records[found].kind != kind) {
    atp__result_set(result, "id", "this id was already used for %s",
                    e->idempotency_records[found].kind == ATP_IDEM_COUNT
                        ? "a count"
                        : "an adjustment");
    return ATP_EIDEMPOTENCY;
  }
  if (e->idempotency_records[found].content_hash != content_hash) {
    atp__result_set(result, "id", "This id was already used with different content.");
    return ATP_EIDEMPOTENCY;
  }
  *idx = found;
  return 1;
}

int atp__idem_claim(atp_engine_t *e, atp_idem_kind_t kind, atp_str_t id,
                    uint64_t content_hash, uint32_t *idx, atp_result_t *result) {
  uint64_t hash = idem_hash(kind, id);
  uint32_t found =
      idem_find_from(e, atp__keyed_head(&e->idempotency_table, hash), hash, kind, id);
  if (found != UINT32_MAX)
    return idem_existing(e, found, kind, content_hash, idx, result);
  uint32_t mine = atp__keyed_alloc(&e->idempotency_table);
  if (mine == UINT32_MAX) {
    atp__result_set(result, "",
                    "The idempotency id store is full (ids are kept 24 h); retry "
                    "later, or raise --idempotency-max.");
    return ATP_EFULL;
  }
  atp_idempotency_record_t *r = &e->idempotency_records[mine];
  r->kind = (uint8_t)kind;
  r->id_len = (uint8_t)id.len;
  r->resid_len = 0;
  memcpy(r->text, id.ptr, id.len);
  r->content_hash = content_hash;
  r->created_at_ms = atp__now(e);
  r->flags = 0;
  atp_timer_init(&r->timer);
  e->idempotency_table.entries[mine].hash = hash;
  atomic_store_explicit(&e->idempotency_table.entries[mine].state, ATP_REC_PENDING,
                        memory_order_relaxed);
  atp__keyed_push(&e->idempotency_table, mine);
  /* Anything older with this key, below ours in the chain, wins. */
  found = idem_find_from(e, atp__keyed_next(&e->idempotency_table, mine + 1), hash,
                         kind, id);
  if (found != UINT32_MAX) {
    atp__idem_fail(e, mine);
    return idem_existing(e, found, kind, content_hash, idx, result);
  }
  *idx = mine;
  return 0;
}

void atp__idem_done(atp_engine_t *e, uint32_t idx, uint32_t flags, uint32_t pos,
                    const atp_position_t *outcome, atp_str_t reservation_id,
                    atp_change_t *record) {
  atp_idempotency_record_t *r = &e->idempotency_records[idx];
  r->flags = flags;
  r->pos = pos;
  if (outcome)
    r->outcome = *outcome;
  else
    memset(&r->outcome, 0, sizeof r->outcome);
  r->outcome.sku = r->outcome.location = (atp_str_t){NULL, 0};
  r->resid_len = (uint8_t)reservation_id.len;
  if (reservation_id.len)
    memcpy(r->text + r->id_len, reservation_id.ptr, reservation_id.len);
  /* release: whoever sees LIVE sees the outcome. */
  atomic_store_explicit(&e->idempotency_table.entries[idx].state, ATP_REC_LIVE,
                        memory_order_release);
  if (record) {
    memset(record, 0, sizeof *record);
    record->kind = ATP_CHANGE_IDEMPOTENCY;
    record->cause_id = (atp_str_t){r->text, r->id_len};
    record->at_ms = r->created_at_ms;
    record->u.idem.kind = (atp_idem_kind_t)r->kind;
    record->u.idem.id = (atp_str_t){r->text, r->id_len};
    record->u.idem.content_hash = r->content_hash;
    record->u.idem.created_at_ms = r->created_at_ms;
    record->u.idem.flags = flags;
    if (outcome) record->u.idem.position = *outcome;
    record->u.idem.reservation_id = (atp_str_t){r->text + r->id_len, r->resid_len};
    switch (r->kind) {
      case ATP_IDEM_ADJUST:
        record->cause = ATP_CAUSE_ADJUST;
        break;
      case ATP_IDEM_COUNT:
        record->cause = ATP_CAUSE_COUNT;
        break;
      case ATP_IDEM_FULFIL:
        record->cause = ATP_CAUSE_FULFIL;
        break;
      case ATP_IDEM_RELEASE:
        record->cause = ATP_CAUSE_RELEASE;
        break;
      default:
        record->cause = ATP_CAUSE_AMEND;
        break;
    }
  }
  atp__idem_queue(e, idx);
}

void atp__idem_queue(atp_engine_t *e, uint32_t idx) {
  atp__inbox_push(&e->inbox, (idx + 1) | ATP_REF_IDEM,
                  &e->idempotency_records[idx].inbox);
}

void atp__idem_fail(atp_engine_t *e, uint32_t idx) {
  atomic_store_explicit(&e->idempotency_table.entries[idx].state, ATP_REC_DEAD,
                        memory_order_release);
  atp__idem_queue(e, idx);
}

int64_t atp__idem_due(const atp_engine_t *e, uint32_t idx, int64_t now_ms) {
  uint32_t st = atomic_load_explicit(&e->idempotency_table.entries[idx].state,
                                     memory_order_acquire);
  if (st == ATP_REC_DEAD) return now_ms;
  if (st != ATP_REC_LIVE) return ATP_TIME_NONE;
  return e->idempotency_records[idx].created_at_ms + e->config.idempotency_ttl_ms;
}

/* Ticker: forgets the record; a remembered id's purge is reported (the
 * journal then forgets it too). */
void atp__idem_purge(atp_engine_t *e, uint32_t idx) {
  const atp_idempotency_record_t *r = &e->idempotency_records[idx];
  if (e->config.on_change &&
      atomic_load_explicit(&e->idempotency_table.entries[idx].state,
                           memory_order_acquire) == ATP_REC_LIVE) {
    atp_change_t c;
    memset(&c, 0, sizeof c);
    c.kind = ATP_CHANGE_IDEMPOTENCY;
    c.cause = ATP_CAUSE_PURGE;
    c.cause_id = (atp_str_t){r->text, r->id_len};
    c.at_ms = atp__now(e);
    c.u.idem.kind = (atp_idem_kind_t)r->kind;
    c.u.idem.id = c.cause_id;
    c.u.idem.content_hash = r->content_hash;
    c.u.idem.created_at_ms = r->created_at_ms;
    atp__emit(e, &c, 1);
  }
  atp__keyed_retire(&e->idempotency_table, idx, atp__epoch_now(e));
}

/* Replay: remember the id as LIVE with its outcome, or forget it on a purge
 * record. Single-threaded. */
int atp__idem_apply(atp_engine_t *e, const atp_change_t *c) {
  const atp_change_idem_t *in = &c->u.idem;
  if (!atp__id_valid(in->id) || in->reservation_id.len > ATP_ID_BYTES_MAX)
    return ATP_EBADREQ;
  uint64_t hash = idem_hash(in->kind, in->id);
  uint32_t idx = idem_find_from(e, atp__keyed_head(&e->idempotency_table, hash), hash,
                                in->kind, in->id);
  if (c->cause == ATP_CAUSE_PURGE) {
    if (idx != UINT32_MAX) atp__idem_fail(e, idx); /* DEAD: invisible, then unlinked */
    return 0;
  }
  if (idx == UINT32_MAX) {
    idx = atp__keyed_alloc(&e->idempotency_table);
    if (idx == UINT32_MAX) return ATP_EFULL;
    atp_idempotency_record_t *r = &e->idempotency_records[idx];
    r->kind = (uint8_t)in->kind;
    r->id_len = (uint8_t)in->id.len;
    memcpy(r->text, in->id.ptr, in->id.len);
    atp_timer_init(&r->timer);
    e->idempotency_table.entries[idx].hash = hash;
    atomic_store(&e->idempotency_table.entries[idx].state, ATP_REC_PENDING);
    atp__keyed_push(&e->idempotency_table, idx);
  }
  atp_idempotency_record_t *r = &e->idempotency_records[idx];
  r->content_hash = in->content_hash;
  r->created_at_ms = in->created_at_ms;
  uint32_t pos = 0;
  if (in->kind == ATP_IDEM_ADJUST || in->kind == ATP_IDEM_COUNT) {
    int rc =
        atp__position_find_or_create(e, in->position.sku, in->position.location, &pos);
    if (rc) return rc;
  }
  atp__idem_done(e, idx, in->flags, pos, &in->position, in->reservation_id, NULL);
  return 0;
}

bool atp__idem_copy(const atp_engine_t *e, uint32_t idx, atp_change_t *c, char *text) {
  const atp_keyed_entry_t *entry = &e->idempotency_table.entries[idx];
  /* A LIVE record's fields were written before it became LIVE and stay as
   * they are until it is purged; a purged one is not reused while the caller
   * is in its epoch bracket, and is seen as not LIVE on the second look.
   * seq_cst: reached by index, not by a chain, the state is what the purge
   * unlinks (keyed.c). */
  if (atomic_load_explicit(&entry->state, memory_order_seq_cst) != ATP_REC_LIVE)
    return false;
  const atp_idempotency_record_t *r = &e->idempotency_records[idx];
  uint32_t id_len = r->id_len, resid_len = r->resid_len;
  memcpy(text, r->text, id_len + resid_len);
  memset(c, 0, sizeof *c);
  c->kind = ATP_CHANGE_IDEMPOTENCY;
  c->cause = ATP_CAUSE_SNAPSHOT;
  c->cause_id = (atp_str_t){text, id_len};
  c->at_ms = r->created_at_ms;
  c->u.idem.kind = (atp_idem_kind_t)r->kind;
  c->u.idem.id = (atp_str_t){text, id_len};
  c->u.idem.content_hash = r->content_hash;
  c->u.idem.created_at_ms = r->created_at_ms;
  c->u.idem.flags = r->flags;
  c->u.idem.position = r->outcome;
  if (r->kind == ATP_IDEM_ADJUST || r->kind == ATP_IDEM_COUNT) {
    const atp_position_record_t *p = &e->positions[r->pos];
    c->u.idem.position.sku = atp__intern_str(e, p->sku);
    c->u.idem.position.location = atp__intern_str(e, p->location);
  } else {
    c->u.idem.position.sku = c->u.idem.position.location = (atp_str_t){NULL, 0};
  }
  c->u.idem.reservation_id = (atp_str_t){text + id_len, resid_len};
  return atomic_load_explicit(&entry->state, memory_order_acquire) == ATP_REC_LIVE;
}
