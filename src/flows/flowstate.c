/* flowstate.c - flows, their pause state and queues (include/atp/flowstate.h).
 *
 * The table is a fixed array that only grows: a slot's name is written
 * before the count is published (release), so readers scan it without the
 * mutex. Queues are singly linked lists of nodes, each with its strings in
 * one blob. Live changes and replayed records share the apply functions.
 */
#include "atp/flowstate.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "atp/assert.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "atp/memory.h"
#include "atp/payload.h"

typedef struct qnode {
  struct qnode *next;
  atp_flow_op_t op; /* strings point into the blob after the node */
  size_t bytes;
} qnode_t;

typedef struct {
  char name[ATP_ID_BYTES_MAX + 1]; /* immutable once published */
  uint32_t name_len;
  atomic_bool paused; /* paused or draining: ops queue */
  /* under the mutex: */
  bool draining;
  char reason[ATP_NOTE_BYTES_MAX + 1];
  char by[ATP_ID_BYTES_MAX + 1];
  int64_t changed_at;
  uint64_t last_seq; /* highest seq ever queued here */
  qnode_t *head, *tail;
  uint64_t queued, queued_bytes;
  /* relaxed counters: */
  _Atomic uint64_t applied, rejected;
  _Atomic int64_t last_op_at;
} flow_t;

struct atp_flowstate {
  pthread_mutex_t mu;
  flow_t flows[ATP_FLOWS_MAX];
  _Atomic uint32_t count;  /* published slots */
  _Atomic uint32_t paused; /* flows paused or draining */
  uint64_t next_seq;       /* under mu */
  uint32_t queue_max;
  atp_durable_t *durable;
  atp_buf_t enc; /* under mu */
};

static bool name_eq(const flow_t *f, atp_str_t s) {
  return f->name_len == s.len && memcmp(f->name, s.ptr, s.len) == 0;
}

static flow_t *find(const atp_flowstate_t *fs, atp_str_t name) {
  /* acquire: pairs with the release in add_flow, so the name is whole. */
  uint32_t n = atomic_load_explicit(&fs->count, memory_order_acquire);
  for (uint32_t i = 0; i < n; i++)
    if (name_eq(&fs->flows[i], name)) return (flow_t *)&fs->flows[i];
  return NULL;
}

/* Under mu. NULL when the table is full or the name is not an id. */
static flow_t *add_flow(atp_flowstate_t *fs, atp_str_t name) {
  flow_t *f = find(fs, name);
  if (f) return f;
  uint32_t n = atomic_load_explicit(&fs->count, memory_order_relaxed);
  if (n == ATP_FLOWS_MAX || name.len == 0 || name.len > ATP_ID_BYTES_MAX) return NULL;
  f = &fs->flows[n];
  memcpy(f->name, name.ptr, name.len);
  f->name[name.len] = '\0';
  f->name_len = name.len;
  atomic_store_explicit(&fs->count, n + 1, memory_order_release);
  return f;
}

static void set_paused(atp_flowstate_t *fs, flow_t *f, bool paused) {
  if (atomic_load_explicit(&f->paused, memory_order_relaxed) == paused) return;
  atomic_store_explicit(&f->paused, paused, memory_order_release);
  if (paused)
    atomic_fetch_add_explicit(&fs->paused, 1, memory_order_release);
  else
    atomic_fetch_sub_explicit(&fs->paused, 1, memory_order_release);
}

static void copy_text(char *dst, size_t cap, atp_str_t s) {
  size_t n = s.len < cap - 1 ? s.len : cap - 1;
  if (n) memcpy(dst, s.ptr, n);
  dst[n] = '\0';
}

/* --- queue nodes -------------------------------------------------------------- */

static qnode_t *qnode_build(const atp_flow_op_t *src) {
  atp_flow_op_t op = *src;
  atp_str_t *s[4] = {&op.flow, &op.path, &op.query, &op.payload};
  size_t total = 0;
  for (int i = 0; i < 4; i++) total += s[i]->len + 1;
  qnode_t *n = atp_malloc(sizeof *n + total);
  if (!n) return NULL;
  char *at = (char *)(n + 1);
  for (int i = 0; i < 4; i++) {
    if (s[i]->len) memcpy(at, s[i]->ptr, s[i]->len);
    at[s[i]->len] = '\0';
    s[i]->ptr = at;
    at += s[i]->len + 1;
  }
  n->op = op;
  n->next = NULL;
  n->bytes = sizeof *n + total;
  return n;
}

/* --- apply --------------------------------------------------------------------- */

static int apply_enq(atp_flowstate_t *fs, const atp_flow_op_t *op) {
  flow_t *f = add_flow(fs, op->flow);
  if (!f) return ATP_EFULL;
  if (op->seq >= fs->next_seq) fs->next_seq = op->seq + 1;
  if (op->seq <= f->last_seq) return 0; /* a snapshot's op the journal repeats */
  qnode_t *n = qnode_build(op);
  if (!n) return ATP_ENOMEM;
  if (f->tail)
    f->tail->next = n;
  else
    f->head = n;
  f->tail = n;
  f->queued++;
  f->queued_bytes += n->bytes;
  f->last_seq = op->seq;
  return 0;
}

static void apply_deq(flow_t *f, uint64_t seq) {
  while (f->head && f->head->op.seq <= seq) {
    qnode_t *n = f->head;
    f->head = n->next;
    if (!f->head) f->tail = NULL;
    f->queued--;
    f->queued_bytes -= n->bytes;
    atp_free(n);
  }
}

static void apply_state(atp_flowstate_t *fs, flow_t *f, bool paused, atp_str_t reason,
                        atp_str_t by, int64_t at, uint64_t last_seq) {
  set_paused(fs, f, paused);
  if (!paused) f->draining = false;
  copy_text(f->reason, sizeof f->reason, reason);
  copy_text(f->by, sizeof f->by, by);
  f->changed_at = at;
  if (last_seq > f->last_seq) f->last_seq = last_seq;
  if (last_seq >= fs->next_seq) fs->next_seq = last_seq + 1;
}

/* --- records --------------------------------------------------------------------- */

static void encode_op(atp_buf_t *b, const atp_flow_op_t *op) {
  atp_payload_u64(b, op->seq);
  atp_payload_str(b, op->flow.ptr, op->flow.len);
  atp_payload_u8(b, op->origin);
  atp_payload_u8(b, op->format);
  atp_payload_u8(b, op->method);
  atp_payload_str(b, op->path.ptr, op->path.len);
  atp_payload_str(b, op->query.ptr, op->query.len);
  atp_payload_str(b, op->payload.ptr, op->payload.len);
  atp_payload_u32(b, op->index);
  atp_payload_i64(b, op->queued_at);
}

static void encode_state(atp_buf_t *b, const flow_t *f) {
  atp_payload_str(b, f->name, f->name_len);
  atp_payload_u8(b, atomic_load_explicit(&f->paused, memory_order_relaxed) ? 1 : 0);
  atp_payload_str(b, f->reason, strlen(f->reason));
  atp_payload_str(b, f->by, strlen(f->by));
  atp_payload_i64(b, f->changed_at);
  atp_payload_u64(b, f->last_seq);
}

static void get_str(atp_payload_reader_t *r, atp_str_t *s) {
  atp_payload_get_str(r, &s->ptr, &s->len);
}

static int journal_buf(atp_flowstate_t *fs, uint16_t kind) {
  if (!fs->durable) return 0;
  if (fs->enc.failed) return ATP_ENOMEM;
  return atp_durable_append(fs->durable, kind, fs->enc.data, (uint32_t)fs->enc.len);
}

static int replay(void *ctx, uint16_t kind, const void *payload, uint32_t len) {
  atp_flowstate_t *fs = ctx;
  atp_payload_reader_t r;
  atp_payload_reader_init(&r, payload, len);
  int rc = 0;
  pthread_mutex_lock(&fs->mu);
  if (kind == ATP_FLOW_KIND_ENQ) {
    atp_flow_op_t op;
    op.seq = atp_payload_get_u64(&r);
    get_str(&r, &op.flow);
    op.origin = atp_payload_get_u8(&r);
    op.format = atp_payload_get_u8(&r);
    op.method = atp_payload_get_u8(&r);
    get_str(&r, &op.path);
    get_str(&r, &op.query);
    get_str(&r, &op.payload);
    op.index = atp_payload_get_u32(&r);
    op.queued_at = atp_payload_get_i64(&r);
    rc = atp_payload_ok(&r) ? apply_enq(fs, &op) : ATP_EBADREQ;
  } else if (kind == ATP_FLOW_KIND_DEQ) {
    atp_str_t name;
    get_str(&r, &name);
    uint64_t seq = atp_payload_get_u64(&r);
    flow_t *f = atp_payload_ok(&r) ? find(fs, name) : NULL;
    if (!atp_payload_ok(&r))
      rc = ATP_EBADREQ;
    else if (f)
      apply_deq(f, seq);
  } else if (kind == ATP_FLOW_KIND_STATE) {
    atp_str_t name, reason, by;
    get_str(&r, &name);
    bool paused = atp_payload_get_u8(&r) != 0;
    get_str(&r, &reason);
    get_str(&r, &by);
    int64_t at = atp_payload_get_i64(&r);
    uint64_t last_seq = atp_payload_get_u64(&r);
    flow_t *f = atp_payload_ok(&r) ? add_flow(fs, name) : NULL;
    if (!atp_payload_ok(&r))
      rc = ATP_EBADREQ;
    else if (!f)
      rc = ATP_EFULL;
    else
      apply_state(fs, f, paused, reason, by, at, last_seq);
  } else {
    rc = ATP_EBADREQ;
  }
  pthread_mutex_unlock(&fs->mu);
  return rc;
}

/* A snapshot: each flow's queued ops, then its state (whose last_seq makes
 * the journal's repeats of those ops no-ops). */
static int export_state(void *ctx, atp_durable_emit_fn emit, void *emit_ctx) {
  atp_flowstate_t *fs = ctx;
  atp_buf_t b;
  atp_buf_init(&b, 0);
  int rc = 0;
  pthread_mutex_lock(&fs->mu);
  uint32_t n = atomic_load_explicit(&fs->count, memory_order_relaxed);
  for (uint32_t i = 0; i < n && !rc; i++) {
    flow_t *f = &fs->flows[i];
    for (qnode_t *q = f->head; q && !rc; q = q->next) {
      atp_buf_reset(&b);
      encode_op(&b, &q->op);
      rc = b.failed ? ATP_ENOMEM
                    : emit(emit_ctx, ATP_FLOW_KIND_ENQ, b.data, (uint32_t)b.len);
    }
    if (rc) break;
    atp_buf_reset(&b);
    encode_state(&b, f);
    rc = b.failed ? ATP_ENOMEM
                  : emit(emit_ctx, ATP_FLOW_KIND_STATE, b.data, (uint32_t)b.len);
  }
  pthread_mutex_unlock(&fs->mu);
  atp_buf_free(&b);
  return rc;
}

/* --- API ------------------------------------------------------------------------- */

int atp_flowstate_create(const atp_flowstate_config_t *config, atp_flowstate_t **out) {
  ATP_ASSERT(config && out);
  *out = NULL;
  atp_flowstate_t *fs = atp_calloc(1, sizeof *fs);
  if (!fs) return ATP_ENOMEM;
  pthread_mutex_init(&fs->mu, NULL);
  atomic_init(&fs->count, 0);
  atomic_init(&fs->paused, 0);
  fs->next_seq = 1;
  fs->queue_max = config->queue_max ? config->queue_max : ATP_FLOW_QUEUE_OPS_DEFAULT;
  fs->durable = config->durable;
  atp_buf_init(&fs->enc, ATP_JOURNAL_RECORD_BYTES_MAX);
  if (fs->durable) {
    atp_durable_section_t s = {
        .name = "flows",
        .kind_first = ATP_FLOW_KIND_STATE,
        .kind_last = ATP_FLOW_KIND_DEQ,
        .replay = replay,
        .export_state = export_state,
        .ctx = fs,
    };
    int rc = atp_durable_register(fs->durable, &s);
    if (rc != 0) {
      atp_flowstate_destroy(fs);
      return rc;
    }
  }
  *out = fs;
  return 0;
}

void atp_flowstate_destroy(atp_flowstate_t *fs) {
  if (!fs) return;
  uint32_t n = atomic_load(&fs->count);
  for (uint32_t i = 0; i < n; i++) apply_deq(&fs->flows[i], UINT64_MAX);
  atp_buf_free(&fs->enc);
  pthread_mutex_destroy(&fs->mu);
  atp_free(fs);
}

bool atp_flowstate_any_paused(const atp_flowstate_t *fs) {
  /* relaxed: a pause racing with an op may let that op through; the op was
   * sent before the pause's answer, so either order is honest. */
  return fs && atomic_load_explicit(&fs->paused, memory_order_relaxed) > 0;
}

bool atp_flowstate_paused(const atp_flowstate_t *fs, atp_str_t flow) {
  if (!atp_flowstate_any_paused(fs) || flow.len == 0) return false;
  const flow_t *f = find(fs, flow);
  return f && atomic_load_explicit(&f->paused, memory_order_acquire);
}

int atp_flowstate_enqueue(atp_flowstate_t *fs, const atp_flow_op_t *in, uint64_t *seq,
                          uint32_t *depth) {
  pthread_mutex_lock(&fs->mu);
  flow_t *f = find(fs, in->flow);
  int rc = 0;
  if (!f || !atomic_load_explicit(&f->paused, memory_order_relaxed))
    rc = ATP_ECONFLICT;
  else if (f->queued >= fs->queue_max ||
           f->queued_bytes + in->payload.len > ATP_FLOW_QUEUE_BYTES_MAX)
    rc = ATP_EFULL;
  atp_flow_op_t op = *in;
  if (rc == 0) {
    op.seq = fs->next_seq;
    atp_buf_reset(&fs->enc);
    encode_op(&fs->enc, &op);
    rc = journal_buf(fs, ATP_FLOW_KIND_ENQ);
  }
  if (rc == 0) rc = apply_enq(fs, &op);
  if (rc == 0) {
    *seq = op.seq;
    *depth = (uint32_t)f->queued;
  }
  pthread_mutex_unlock(&fs->mu);
  return rc;
}

int atp_flowstate_pause(atp_flowstate_t *fs, atp_str_t flow, atp_str_t reason,
                        atp_str_t by, int64_t at, bool *was_paused) {
  pthread_mutex_lock(&fs->mu);
  flow_t *f = add_flow(fs, flow);
  int rc = f ? 0 : ATP_EFULL;
  *was_paused = f && atomic_load_explicit(&f->paused, memory_order_relaxed);
  if (rc == 0 && !*was_paused) {
    flow_t next = {0};
    memcpy(next.name, f->name, f->name_len + 1);
    next.name_len = f->name_len;
    atomic_init(&next.paused, true);
    copy_text(next.reason, sizeof next.reason, reason);
    copy_text(next.by, sizeof next.by, by);
    next.changed_at = at;
    next.last_seq = f->last_seq;
    atp_buf_reset(&fs->enc);
    encode_state(&fs->enc, &next);
    rc = journal_buf(fs, ATP_FLOW_KIND_STATE);
    if (rc == 0) apply_state(fs, f, true, reason, by, at, f->last_seq);
  }
  pthread_mutex_unlock(&fs->mu);
  return rc;
}

int atp_flowstate_resume_begin(atp_flowstate_t *fs, atp_str_t flow, bool *was_paused) {
  pthread_mutex_lock(&fs->mu);
  flow_t *f = find(fs, flow);
  int rc = !f ? ATP_ENOTFOUND : f->draining ? ATP_ECONFLICT : 0;
  *was_paused = f && atomic_load_explicit(&f->paused, memory_order_relaxed);
  if (rc == 0 && *was_paused) f->draining = true;
  pthread_mutex_unlock(&fs->mu);
  return rc;
}

int atp_flowstate_next(atp_flowstate_t *fs, atp_str_t flow, atp_arena_t *arena,
                       atp_flow_op_t *out, bool *done, atp_str_t by, int64_t at) {
  pthread_mutex_lock(&fs->mu);
  flow_t *f = find(fs, flow);
  ATP_ASSERT(f && f->draining);
  int rc = 0;
  *done = false;
  if (!f->head) {
    flow_t next = {0};
    memcpy(next.name, f->name, f->name_len + 1);
    next.name_len = f->name_len;
    atomic_init(&next.paused, false);
    copy_text(next.by, sizeof next.by, by);
    next.changed_at = at;
    next.last_seq = f->last_seq;
    atp_buf_reset(&fs->enc);
    encode_state(&fs->enc, &next);
    rc = journal_buf(fs, ATP_FLOW_KIND_STATE);
    if (rc == 0) {
      apply_state(fs, f, false, (atp_str_t){"", 0}, by, at, f->last_seq);
      *done = true;
    }
  } else {
    *out = f->head->op;
    atp_str_t *s[4] = {&out->flow, &out->path, &out->query, &out->payload};
    for (int i = 0; i < 4 && rc == 0; i++) {
      char *p = atp_arena_strdup(arena, s[i]->ptr, s[i]->len);
      if (!p) rc = ATP_ENOMEM;
      s[i]->ptr = p;
    }
  }
  if (rc != 0) f->draining = false;
  pthread_mutex_unlock(&fs->mu);
  return rc;
}

int atp_flowstate_applied(atp_flowstate_t *fs, atp_str_t flow, uint64_t seq) {
  pthread_mutex_lock(&fs->mu);
  flow_t *f = find(fs, flow);
  ATP_ASSERT(f);
  atp_buf_reset(&fs->enc);
  atp_payload_str(&fs->enc, f->name, f->name_len);
  atp_payload_u64(&fs->enc, seq);
  int rc = journal_buf(fs, ATP_FLOW_KIND_DEQ);
  if (rc == 0) apply_deq(f, seq);
  if (rc != 0) f->draining = false;
  pthread_mutex_unlock(&fs->mu);
  return rc;
}

void atp_flowstate_count(atp_flowstate_t *fs, atp_str_t flow, bool applied,
                         int64_t at) {
  if (!fs || flow.len == 0) return;
  flow_t *f = find(fs, flow);
  if (!f) {
    pthread_mutex_lock(&fs->mu);
    f = add_flow(fs, flow);
    pthread_mutex_unlock(&fs->mu);
    if (!f) return;
  }
  atomic_fetch_add_explicit(applied ? &f->applied : &f->rejected, 1,
                            memory_order_relaxed);
  atomic_store_explicit(&f->last_op_at, at, memory_order_relaxed);
}

void atp_flowstate_list(atp_flowstate_t *fs,
                        void (*fn)(void *ctx, const atp_flow_info_t *flow), void *ctx) {
  pthread_mutex_lock(&fs->mu);
  uint32_t n = atomic_load_explicit(&fs->count, memory_order_relaxed);
  for (uint32_t i = 0; i < n; i++) {
    flow_t *f = &fs->flows[i];
    atp_flow_info_t info = {
        .name = {f->name, f->name_len},
        .paused = atomic_load_explicit(&f->paused, memory_order_relaxed),
        .draining = f->draining,
        .reason = {f->reason, (uint32_t)strlen(f->reason)},
        .by = {f->by, (uint32_t)strlen(f->by)},
        .changed_at = f->changed_at,
        .queued = f->queued,
        .queued_bytes = f->queued_bytes,
        .applied = atomic_load_explicit(&f->applied, memory_order_relaxed),
        .rejected = atomic_load_explicit(&f->rejected, memory_order_relaxed),
        .last_op_at = atomic_load_explicit(&f->last_op_at, memory_order_relaxed),
    };
    fn(ctx, &info);
  }
  pthread_mutex_unlock(&fs->mu);
}
