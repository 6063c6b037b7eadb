/* deadletters.c - the dead letter store (include/atp/deadletters.h).
 *
 * A doubly linked list in id order; each node carries its strings in one
 * blob allocated with it, so a change builds a new node and swaps it in (a
 * dead letter changes a handful of times in its life). Live changes and
 * replayed records go through the same apply functions, which is what makes
 * a restore rebuild the same store, drops included.
 */
#include "atp/deadletters.h"

#include <inttypes.h>
#include <pthread.h>
#include <string.h>

#include "atp/assert.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "atp/log.h"
#include "atp/memory.h"
#include "atp/payload.h"

typedef struct node {
  struct node *prev, *next;
  atp_dead_letter_t d; /* strings point into the blob after the node */
  size_t bytes;        /* what the node costs, for the bytes bound */
} node_t;

struct atp_deadletters {
  pthread_mutex_t mu;
  node_t *head, *tail; /* id order, oldest first */
  uint64_t count, bytes;
  uint64_t open, replayed, resolved;
  uint64_t next_id; /* the next add's id; ids below it were used */
  uint64_t added, dropped_open, dropped_closed;
  uint32_t max;
  bool replaying; /* restore: drops are not logged one by one */
  atp_durable_t *durable;
  atp_buf_t enc; /* the record being appended, under mu */
};

const char *atp_dl_status_name(int status) {
  return status == ATP_DL_REPLAYED   ? "replayed"
         : status == ATP_DL_RESOLVED ? "resolved"
                                     : "open";
}

int atp_dl_status_parse(atp_str_t s) {
  for (int i = ATP_DL_OPEN; i <= ATP_DL_RESOLVED; i++) {
    const char *n = atp_dl_status_name(i);
    if (strlen(n) == s.len && memcmp(n, s.ptr, s.len) == 0) return i;
  }
  return -1;
}

/* --- nodes ------------------------------------------------------------------- */

#define STRINGS 10
/* Every string member of d, so that copies take them all. */
static void strings(atp_dead_letter_t *d, atp_str_t *s[STRINGS]) {
  s[0] = &d->flow, s[1] = &d->owner, s[2] = &d->code, s[3] = &d->message;
  s[4] = &d->field, s[5] = &d->path, s[6] = &d->query, s[7] = &d->payload;
  s[8] = &d->note, s[9] = &d->by;
}

static uint32_t cut(uint32_t len, uint32_t max) {
  return len > max ? max : len;
}

/* A node holding a copy of src. NULL when out of memory. */
static node_t *node_build(const atp_dead_letter_t *src) {
  atp_dead_letter_t d = *src;
  d.message.len = cut(d.message.len, ATP_DEAD_LETTER_MESSAGE_BYTES_MAX);
  d.note.len = cut(d.note.len, ATP_NOTE_BYTES_MAX);
  atp_str_t *s[STRINGS];
  strings(&d, s);
  uint32_t n = STRINGS;
  size_t total = 0;
  for (uint32_t i = 0; i < n; i++) total += s[i]->len + 1;
  node_t *node = atp_malloc(sizeof *node + total);
  if (!node) return NULL;
  char *at = (char *)(node + 1);
  for (uint32_t i = 0; i < n; i++) {
    if (s[i]->len) memcpy(at, s[i]->ptr, s[i]->len);
    at[s[i]->len] = '\0';
    s[i]->ptr = at;
    at += s[i]->len + 1;
  }
  node->d = d;
  node->bytes = sizeof *node + total;
  node->prev = node->next = NULL;
  return node;
}

static void count_status(atp_deadletters_t *dl, uint8_t status, int by) {
  uint64_t *c = status == ATP_DL_REPLAYED   ? &dl->replayed
                : status == ATP_DL_RESOLVED ? &dl->resolved
                                            : &dl->open;
  *c += (uint64_t)(int64_t)by;
}

static void link_tail(atp_deadletters_t *dl, node_t *n) {
  n->prev = dl->tail;
  n->next = NULL;
  if (dl->tail)
    dl->tail->next = n;
  else
    dl->head = n;
  dl->tail = n;
  dl->count++;
  dl->bytes += n->bytes;
  count_status(dl, n->d.status, 1);
}

static void unlink_node(atp_deadletters_t *dl, node_t *n) {
  if (n->prev)
    n->prev->next = n->next;
  else
    dl->head = n->next;
  if (n->next)
    n->next->prev = n->prev;
  else
    dl->tail = n->prev;
  dl->count--;
  dl->bytes -= n->bytes;
  count_status(dl, n->d.status, -1);
}

static node_t *find(const atp_deadletters_t *dl, uint64_t id) {
  /* Newest first: replays and resolves mostly concern recent rejections. */
  for (node_t *n = dl->tail; n; n = n->prev)
    if (n->d.id == id) return n;
  return NULL;
}

/* Drops the oldest closed dead letter, else the oldest open one. */
static void drop_one(atp_deadletters_t *dl) {
  node_t *victim = NULL;
  if (dl->replayed + dl->resolved > 0)
    for (node_t *n = dl->head; n && !victim; n = n->next)
      if (n->d.status != ATP_DL_OPEN) victim = n;
  if (!victim) victim = dl->head;
  ATP_ASSERT(victim);
  unlink_node(dl, victim);
  if (victim->d.status == ATP_DL_OPEN) {
    dl->dropped_open++;
    if (!dl->replaying)
      atp_log("warn",
              "dead letters: full (%" PRIu64
              " kept); dropped the oldest open one, "
              "dl-%" PRIu64 " of flow %.*s (owner %.*s)",
              dl->count + 1, victim->d.id, (int)victim->d.flow.len, victim->d.flow.ptr,
              (int)victim->d.owner.len, victim->d.owner.ptr);
  } else {
    dl->dropped_closed++;
  }
  atp_free(victim);
}

/* --- apply: shared by live changes and replay -------------------------------- */

/* Puts a copy of d in old's place. */
static int replace_node(atp_deadletters_t *dl, node_t *old,
                        const atp_dead_letter_t *d) {
  node_t *n = node_build(d);
  if (!n) return ATP_ENOMEM;
  n->prev = old->prev;
  n->next = old->next;
  if (n->prev)
    n->prev->next = n;
  else
    dl->head = n;
  if (n->next)
    n->next->prev = n;
  else
    dl->tail = n;
  dl->bytes += n->bytes - old->bytes;
  count_status(dl, old->d.status, -1);
  count_status(dl, n->d.status, 1);
  atp_free(old);
  return 0;
}

static int apply_add(atp_deadletters_t *dl, const atp_dead_letter_t *d) {
  if (d->id < dl->next_id) {
    /* Seen already (a snapshot repeated by the journal after it): refresh
     * it when it is still kept, else it was dropped since. */
    node_t *old = find(dl, d->id);
    return old ? replace_node(dl, old, d) : 0;
  }
  node_t *n = node_build(d);
  if (!n) return ATP_ENOMEM;
  while (dl->count > 0 &&
         (dl->count >= dl->max || dl->bytes + n->bytes > ATP_DEAD_LETTERS_BYTES_MAX))
    drop_one(dl);
  link_tail(dl, n);
  dl->next_id = d->id + 1;
  dl->added++;
  return 0;
}

static int apply_update(atp_deadletters_t *dl, const atp_dead_letter_t *d) {
  node_t *old = find(dl, d->id);
  return old ? replace_node(dl, old, d) : 0; /* unknown: dropped since */
}

/* --- records ------------------------------------------------------------------ */

static void encode(atp_buf_t *b, const atp_dead_letter_t *d) {
  atp_payload_u64(b, d->id);
  atp_payload_str(b, d->flow.ptr, d->flow.len);
  atp_payload_str(b, d->owner.ptr, d->owner.len);
  atp_payload_u32(b, d->index);
  atp_payload_str(b, d->code.ptr, d->code.len);
  atp_payload_str(b, d->message.ptr, d->message.len);
  atp_payload_str(b, d->field.ptr, d->field.len);
  atp_payload_u8(b, d->origin);
  atp_payload_u8(b, d->format);
  atp_payload_u8(b, d->method);
  atp_payload_str(b, d->path.ptr, d->path.len);
  atp_payload_str(b, d->query.ptr, d->query.len);
  atp_payload_str(b, d->payload.ptr, d->payload.len);
  atp_payload_i64(b, d->received_at);
  atp_payload_u32(b, d->attempts);
  atp_payload_u8(b, d->status);
  atp_payload_i64(b, d->updated_at);
  atp_payload_str(b, d->note.ptr, d->note.len);
  atp_payload_str(b, d->by.ptr, d->by.len);
}

static void get_str(atp_payload_reader_t *r, atp_str_t *s) {
  atp_payload_get_str(r, &s->ptr, &s->len);
}

static int decode(const void *p, uint32_t len, atp_dead_letter_t *d) {
  atp_payload_reader_t r;
  atp_payload_reader_init(&r, p, len);
  d->id = atp_payload_get_u64(&r);
  get_str(&r, &d->flow);
  get_str(&r, &d->owner);
  d->index = atp_payload_get_u32(&r);
  get_str(&r, &d->code);
  get_str(&r, &d->message);
  get_str(&r, &d->field);
  d->origin = atp_payload_get_u8(&r);
  d->format = atp_payload_get_u8(&r);
  d->method = atp_payload_get_u8(&r);
  get_str(&r, &d->path);
  get_str(&r, &d->query);
  get_str(&r, &d->payload);
  d->received_at = atp_payload_get_i64(&r);
  d->attempts = atp_payload_get_u32(&r);
  d->status = atp_payload_get_u8(&r);
  d->updated_at = atp_payload_get_i64(&r);
  get_str(&r, &d->note);
  get_str(&r, &d->by);
  if (!atp_payload_ok(&r) || d->id == 0 || d->status > ATP_DL_RESOLVED)
    return ATP_EBADREQ;
  return 0;
}

/* Journals d as kind (under mu). 0 without durability. */
static int journal(atp_deadletters_t *dl, uint16_t kind, const atp_dead_letter_t *d) {
  if (!dl->durable) return 0;
  atp_buf_reset(&dl->enc);
  encode(&dl->enc, d);
  if (dl->enc.failed) return ATP_ENOMEM;
  return atp_durable_append(dl->durable, kind, dl->enc.data, (uint32_t)dl->enc.len);
}

static int replay(void *ctx, uint16_t kind, const void *payload, uint32_t len) {
  atp_deadletters_t *dl = ctx;
  int rc = 0;
  pthread_mutex_lock(&dl->mu);
  dl->replaying = true;
  if (kind == ATP_DL_KIND_META) {
    atp_payload_reader_t r;
    atp_payload_reader_init(&r, payload, len);
    uint64_t next = atp_payload_get_u64(&r);
    uint64_t dropped_open = atp_payload_get_u64(&r);
    uint64_t dropped_closed = atp_payload_get_u64(&r);
    if (!atp_payload_ok(&r)) {
      rc = ATP_EBADREQ;
    } else {
      if (next > dl->next_id) dl->next_id = next;
      if (dropped_open > dl->dropped_open) dl->dropped_open = dropped_open;
      if (dropped_closed > dl->dropped_closed) dl->dropped_closed = dropped_closed;
    }
  } else {
    atp_dead_letter_t d;
    rc = decode(payload, len, &d);
    if (rc == 0)
      rc = kind == ATP_DL_KIND_ADD ? apply_add(dl, &d) : apply_update(dl, &d);
  }
  dl->replaying = false;
  pthread_mutex_unlock(&dl->mu);
  return rc;
}

/* A snapshot: every dead letter as an ADD, then the counters. The mutex is
 * held for the walk: dead letters are few and this runs once per snapshot. */
static int export_state(void *ctx, atp_durable_emit_fn emit, void *emit_ctx) {
  atp_deadletters_t *dl = ctx;
  atp_buf_t b;
  atp_buf_init(&b, 0);
  int rc = 0;
  pthread_mutex_lock(&dl->mu);
  for (node_t *n = dl->head; n && !rc; n = n->next) {
    atp_buf_reset(&b);
    encode(&b, &n->d);
    rc = b.failed ? ATP_ENOMEM
                  : emit(emit_ctx, ATP_DL_KIND_ADD, b.data, (uint32_t)b.len);
  }
  if (!rc) {
    atp_buf_reset(&b);
    atp_payload_u64(&b, dl->next_id);
    atp_payload_u64(&b, dl->dropped_open);
    atp_payload_u64(&b, dl->dropped_closed);
    rc = b.failed ? ATP_ENOMEM
                  : emit(emit_ctx, ATP_DL_KIND_META, b.data, (uint32_t)b.len);
  }
  pthread_mutex_unlock(&dl->mu);
  atp_buf_free(&b);
  return rc;
}

/* --- API ----------------------------------------------------------------------- */

int atp_deadletters_create(const atp_deadletters_config_t *config,
                           atp_deadletters_t **out) {
  ATP_ASSERT(config && out);
  *out = NULL;
  atp_deadletters_t *dl = atp_calloc(1, sizeof *dl);
  if (!dl) return ATP_ENOMEM;
  pthread_mutex_init(&dl->mu, NULL);
  dl->max = config->max ? config->max : ATP_DEAD_LETTERS_MAX_DEFAULT;
  dl->next_id = 1;
  dl->durable = config->durable;
  atp_buf_init(&dl->enc, ATP_JOURNAL_RECORD_BYTES_MAX);
  if (dl->durable) {
    atp_durable_section_t s = {
        .name = "dead_letters",
        .kind_first = ATP_DL_KIND_ADD,
        .kind_last = ATP_DL_KIND_META,
        .replay = replay,
        .export_state = export_state,
        .ctx = dl,
    };
    int rc = atp_durable_register(dl->durable, &s);
    if (rc != 0) {
      atp_deadletters_destroy(dl);
      return rc;
    }
  }
  *out = dl;
  return 0;
}

void atp_deadletters_destroy(atp_deadletters_t *dl) {
  if (!dl) return;
  for (node_t *n = dl->head, *next; n; n = next) {
    next = n->next;
    atp_free(n);
  }
  atp_buf_free(&dl->enc);
  pthread_mutex_destroy(&dl->mu);
  atp_free(dl);
}

int atp_deadletters_add(atp_deadletters_t *dl, const atp_dead_letter_t *in,
                        uint64_t *id_out) {
  if (in->payload.len > ATP_DEAD_LETTERS_BYTES_MAX / 4) return ATP_ETOOLARGE;
  atp_dead_letter_t d = *in;
  d.attempts = 1;
  d.status = ATP_DL_OPEN;
  d.updated_at = d.received_at;
  d.message.len = cut(d.message.len, ATP_DEAD_LETTER_MESSAGE_BYTES_MAX);
  pthread_mutex_lock(&dl->mu);
  d.id = dl->next_id;
  int rc = journal(dl, ATP_DL_KIND_ADD, &d);
  if (rc == 0) rc = apply_add(dl, &d);
  pthread_mutex_unlock(&dl->mu);
  if (rc == 0 && id_out) *id_out = d.id;
  return rc;
}

static void copy_str(atp_arena_t *arena, atp_str_t *s, int *rc) {
  if (*rc) return;
  char *p = atp_arena_strdup(arena, s->ptr, s->len);
  if (!p) *rc = ATP_ENOMEM;
  s->ptr = p;
}

int atp_deadletters_get(atp_deadletters_t *dl, uint64_t id, atp_arena_t *arena,
                        atp_dead_letter_t *out) {
  pthread_mutex_lock(&dl->mu);
  node_t *n = find(dl, id);
  int rc = n ? 0 : ATP_ENOTFOUND;
  if (n) {
    *out = n->d;
    atp_str_t *s[STRINGS];
    strings(out, s);
    for (uint32_t i = 0; i < STRINGS; i++) copy_str(arena, s[i], &rc);
  }
  pthread_mutex_unlock(&dl->mu);
  return rc;
}

int atp_deadletters_attempt(atp_deadletters_t *dl, uint64_t id, bool ok,
                            const char *code, const char *message, const char *field,
                            atp_str_t payload, uint8_t format, int64_t at) {
  pthread_mutex_lock(&dl->mu);
  node_t *n = find(dl, id);
  int rc = !n ? ATP_ENOTFOUND : n->d.status == ATP_DL_RESOLVED ? ATP_ECONFLICT : 0;
  if (rc == 0) {
    atp_dead_letter_t d = n->d;
    d.attempts++;
    d.updated_at = at;
    if (ok) {
      d.status = ATP_DL_REPLAYED;
    } else {
      d.status = ATP_DL_OPEN;
      d.code = (atp_str_t){code, (uint32_t)strlen(code)};
      d.message = (atp_str_t){
          message, cut((uint32_t)strlen(message), ATP_DEAD_LETTER_MESSAGE_BYTES_MAX)};
      d.field = (atp_str_t){field, (uint32_t)strlen(field)};
    }
    if (payload.len) {
      d.payload = payload;
      d.format = format;
    }
    rc = journal(dl, ATP_DL_KIND_UPDATE, &d);
    if (rc == 0) rc = apply_update(dl, &d);
  }
  pthread_mutex_unlock(&dl->mu);
  return rc;
}

int atp_deadletters_resolve(atp_deadletters_t *dl, uint64_t id, atp_str_t note,
                            atp_str_t by, int64_t at) {
  pthread_mutex_lock(&dl->mu);
  node_t *n = find(dl, id);
  int rc = !n ? ATP_ENOTFOUND : n->d.status == ATP_DL_RESOLVED ? ATP_ECONFLICT : 0;
  if (rc == 0) {
    atp_dead_letter_t d = n->d;
    d.status = ATP_DL_RESOLVED;
    d.updated_at = at;
    d.note = note;
    d.by = by;
    rc = journal(dl, ATP_DL_KIND_UPDATE, &d);
    if (rc == 0) rc = apply_update(dl, &d);
  }
  pthread_mutex_unlock(&dl->mu);
  return rc;
}

static bool str_eq(atp_str_t a, atp_str_t b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

void atp_deadletters_list(atp_deadletters_t *dl, const atp_dl_filter_t *f,
                          void (*fn)(void *ctx, const atp_dead_letter_t *d), void *ctx,
                          bool *more) {
  ATP_ASSERT(f->limit > 0);
  uint32_t given = 0;
  *more = false;
  pthread_mutex_lock(&dl->mu);
  for (node_t *n = dl->head; n; n = n->next) {
    const atp_dead_letter_t *d = &n->d;
    if (d->id <= f->after) continue;
    if (f->owner.len && !str_eq(f->owner, d->owner)) continue;
    if (f->flow.len && !str_eq(f->flow, d->flow)) continue;
    if (f->status >= 0 && d->status != f->status) continue;
    if (given == f->limit) {
      *more = true;
      break;
    }
    fn(ctx, d);
    given++;
  }
  pthread_mutex_unlock(&dl->mu);
}

void atp_deadletters_stats(atp_deadletters_t *dl, atp_dl_stats_t *out,
                           void (*owner_fn)(void *ctx, atp_str_t owner, uint64_t open),
                           void *ctx) {
  pthread_mutex_lock(&dl->mu);
  out->kept = dl->count;
  out->open = dl->open;
  out->replayed = dl->replayed;
  out->resolved = dl->resolved;
  out->added = dl->added;
  out->dropped_open = dl->dropped_open;
  out->dropped_closed = dl->dropped_closed;
  out->bytes = dl->bytes;
  out->max = dl->max;
  if (owner_fn) {
    /* Owners are a handful of teams: a small table, first come first listed. */
    enum { OWNERS = 64 };
    atp_str_t owners[OWNERS];
    uint64_t open[OWNERS];
    uint32_t k = 0;
    for (node_t *n = dl->head; n; n = n->next) {
      if (n->d.status != ATP_DL_OPEN) continue;
      uint32_t i = 0;
      while (i < k && !str_eq(owners[i], n->d.owner)) i++;
      if (i == k) {
        if (k == OWNERS) continue;
        owners[k] = n->d.owner;
        open[k++] = 0;
      }
      open[i]++;
    }
    for (uint32_t i = 0; i < k; i++) owner_fn(ctx, owners[i], open[i]);
  }
  pthread_mutex_unlock(&dl->mu);
}
