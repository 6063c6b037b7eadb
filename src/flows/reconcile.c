/* reconcile.c - reconciliation reports (include/atp/reconcile.h).
 *
 * A report is built outside every lock: a hash set of the export's keys (to
 * refuse a position given twice and to find what the export lacks), a set of
 * its locations, one atp_position_changes_after per line, then one walk over
 * our positions for the missing_there ones. Only the finished report enters
 * the store, under the store's mutex, so a refused export leaves nothing.
 * Items hold offsets into the report's own text (sku and location bytes), so
 * a report is three allocations whatever its size.
 */
#include "atp/reconcile.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "atp/assert.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "atp/log.h"
#include "atp/payload.h"

typedef enum {
  REASON_UNEXPLAINED = 0,
  REASON_HISTORY_WINDOW,
  REASON_MISSING_HERE,
  REASON_MISSING_THERE,
} reason_t;

static const char *const reason_names[] = {"unexplained", "history_window",
                                           "missing_here", "missing_there"};

typedef enum {
  OUTCOME_NONE = 0, /* not applied yet */
  OUTCOME_APPLIED,
  OUTCOME_STALE,
  OUTCOME_SKIPPED,
  OUTCOME_FAILED,
} outcome_t;

static const char *const outcome_names[] = {"", "applied", "stale", "skipped",
                                            "failed"};

typedef struct {
  uint32_t sku_off; /* into the report's text */
  uint32_t location_off;
  uint8_t sku_len; /* ids are at most 128 bytes */
  uint8_t location_len;
  uint8_t reason;      /* reason_t */
  uint8_t outcome;     /* outcome_t of the last apply */
  bool approximate;    /* the history does not cover as_of */
  bool replayed;       /* the last apply's count was a replay */
  bool count_approx;   /* the count was applied as approximate */
  int16_t error;       /* OUTCOME_FAILED: the ATP_E* code */
  int64_t ours;        /* on_hand when compared; 0 when missing_here */
  int64_t theirs;      /* 0 when missing_there */
  int64_t changes;     /* on-hand changes after as_of */
  int64_t on_hand_now; /* after the last apply's count */
} item_t;

struct atp_recon_report {
  pthread_mutex_t lock; /* see the header: taken after the store's */
  uint64_t seq;         /* creation order, 1-based: the listing cursor */
  uint64_t version; /* 1 at creation, +1 per apply or close: replay keeps the newest */
  char id[ATP_ID_BYTES_MAX + 1];
  char source[ATP_ID_BYTES_MAX + 1];
  int64_t as_of_ms;
  int64_t created_at_ms;
  uint64_t content_hash; /* of source, as_of and positions: replay detection */
  atp_recon_status_t status;
  uint64_t compared, matched, mismatched, missing_here, missing_there, approximate;
  uint32_t item_count;
  item_t *items;
  char *text;
  /* The last apply. */
  int64_t applied_at_ms; /* ATP_TIME_NONE before */
  atp_recon_apply_t apply;
  /* Close. */
  int64_t closed_at_ms; /* ATP_TIME_NONE while not closed */
  char *note;           /* NUL-terminated; NULL until closed */
  char by[ATP_ID_BYTES_MAX + 1];
};

typedef struct {
  atp_recon_report_t *r;
  uint32_t cap;
  size_t text_len, text_cap;
  int rc;
} builder_t;

/* A report whose item chunks a replay is reading; its header, which comes
 * last, makes it the report (so a torn tail leaves the previous version). */
typedef struct pending {
  struct pending *next;
  uint64_t version;
  builder_t b;
} pending_t;

struct atp_recon_store {
  pthread_mutex_t lock;
  atp_recon_config_t config;
  atp_recon_report_t **reports; /* creation order, [0, count) */
  uint32_t count;
  uint32_t cap;        /* slots in reports: reports_max, more only if a replay needs */
  pending_t *pending;  /* replay only */
  uint64_t items_held; /* sum of item_count */
  uint64_t next_seq;
  uint64_t compared_total; /* positions compared since start */
  uint64_t evicted_total;
};

const char *atp_recon_status_name(atp_recon_status_t s) {
  static const char *const names[] = {"open", "applied", "closed"};
  ATP_ASSERT((unsigned)s < ATP_RECON_STATUS_COUNT_);
  return names[s];
}

int atp_recon_status_parse(atp_str_t name, atp_recon_status_t *out) {
  for (int s = 0; s < ATP_RECON_STATUS_COUNT_; s++) {
    const char *n = atp_recon_status_name((atp_recon_status_t)s);
    if (strlen(n) == name.len && memcmp(n, name.ptr, name.len) == 0) {
      *out = (atp_recon_status_t)s;
      return 0;
    }
  }
  return ATP_EBADREQ;
}

static void fail(atp_result_t *r, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(atp_result_t *r, const char *field, const char *fmt, ...) {
  snprintf(r->field, sizeof r->field, "%s", field);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->message, sizeof r->message, fmt, ap);
  va_end(ap);
}

/* --- hashing ----------------------------------------------------------------- */

/* FNV-1a then a splitmix finaliser: enough for tables and for telling two
 * exports apart; not a defence against crafted collisions. */
static uint64_t hash_bytes(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ULL;
  return h;
}

static uint64_t hash_mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* Length-prefixed, so ("a:b", "c") and ("a", "b:c") differ. */
static uint64_t hash_str(uint64_t h, atp_str_t s) {
  h = hash_bytes(h, &s.len, sizeof s.len);
  return hash_bytes(h, s.ptr, s.len);
}

static uint64_t hash_int(uint64_t h, int64_t v) {
  return hash_bytes(h, &v, sizeof v);
}

static uint64_t key_hash(atp_str_t sku, atp_str_t location) {
  return hash_mix(hash_str(hash_str(0xcbf29ce484222325ULL, sku), location));
}

/* --- the export's key and location sets ----------------------------------- */

typedef struct {
  uint32_t *slots; /* index + 1 into the positions, 0: empty */
  uint32_t mask;
} set_t;

static int set_init(set_t *s, uint32_t count) {
  uint32_t cap = 16;
  while (cap < 2u * count + 2) cap <<= 1;
  s->slots = atp_calloc(cap, sizeof *s->slots);
  s->mask = cap - 1;
  return s->slots ? 0 : ATP_ENOMEM;
}

static bool str_eq(atp_str_t a, atp_str_t b) {
  return a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0;
}

/* The index of the position with the key, or UINT32_MAX; inserts i when
 * absent and i != UINT32_MAX. */
static uint32_t key_find(set_t *s, const atp_recon_position_t *pos, atp_str_t sku,
                         atp_str_t location, uint32_t insert) {
  for (uint32_t j = (uint32_t)key_hash(sku, location) & s->mask;;
       j = (j + 1) & s->mask) {
    uint32_t v = s->slots[j];
    if (!v) {
      if (insert != UINT32_MAX) s->slots[j] = insert + 1;
      return UINT32_MAX;
    }
    if (str_eq(pos[v - 1].sku, sku) && str_eq(pos[v - 1].location, location))
      return v - 1;
  }
}

static bool location_find(set_t *s, const atp_recon_position_t *pos, atp_str_t location,
                          uint32_t insert) {
  uint64_t h = hash_mix(hash_str(0x84222325cbf29ce4ULL, location));
  for (uint32_t j = (uint32_t)h & s->mask;; j = (j + 1) & s->mask) {
    uint32_t v = s->slots[j];
    if (!v) {
      if (insert != UINT32_MAX) s->slots[j] = insert + 1;
      return false;
    }
    if (str_eq(pos[v - 1].location, location)) return true;
  }
}

/* --- building a report ---------------------------------------------------- */

static int text_add(builder_t *b, atp_str_t s, uint32_t *off) {
  if (b->text_len + s.len > b->text_cap) {
    size_t cap = b->text_cap ? b->text_cap * 2 : 4096;
    while (cap < b->text_len + s.len) cap *= 2;
    if (cap > UINT32_MAX) return ATP_EFULL;
    char *t = atp_realloc(b->r->text, cap);
    if (!t) return ATP_ENOMEM;
    b->r->text = t;
    b->text_cap = cap;
  }
  memcpy(b->r->text + b->text_len, s.ptr, s.len);
  *off = (uint32_t)b->text_len;
  b->text_len += s.len;
  return 0;
}

static int item_add(builder_t *b, atp_str_t sku, atp_str_t location, reason_t reason,
                    bool approximate, int64_t ours, int64_t theirs, int64_t changes) {
  atp_recon_report_t *r = b->r;
  if (r->item_count == b->cap) {
    uint32_t cap = b->cap ? b->cap * 2 : 64;
    item_t *n = atp_realloc(r->items, (size_t)cap * sizeof *n);
    if (!n) return ATP_ENOMEM;
    r->items = n;
    b->cap = cap;
  }
  ATP_ASSERT(sku.len <= ATP_ID_BYTES_MAX && location.len <= ATP_ID_BYTES_MAX);
  item_t *it = &r->items[r->item_count];
  memset(it, 0, sizeof *it);
  int rc = text_add(b, sku, &it->sku_off);
  if (rc == 0) rc = text_add(b, location, &it->location_off);
  if (rc) return rc;
  it->sku_len = (uint8_t)sku.len;
  it->location_len = (uint8_t)location.len;
  it->reason = (uint8_t)reason;
  it->approximate = approximate;
  it->ours = ours;
  it->theirs = theirs;
  it->changes = changes;
  r->item_count++;
  return 0;
}

/* Compares one line of the export with our position. */
static int compare_line(builder_t *b, const atp_engine_t *engine,
                        const atp_recon_position_t *p) {
  atp_recon_report_t *r = b->r;
  atp_position_t pos;
  int64_t changes = 0;
  bool covered = true;
  r->compared++;
  int rc = atp_position_changes_after(engine, p->sku, p->location, r->as_of_ms, &pos,
                                      &changes, &covered);
  if (rc == ATP_ENOTFOUND) {
    if (p->on_hand == 0) {
      r->matched++; /* never seen here and none there: they agree */
      return 0;
    }
    r->missing_here++;
    return item_add(b, p->sku, p->location, REASON_MISSING_HERE, false, 0, p->on_hand,
                    0);
  }
  ATP_ASSERT(rc == 0);
  if (!covered) r->approximate++;
  if (pos.on_hand - changes == p->on_hand) {
    r->matched++;
    return 0;
  }
  r->mismatched++;
  return item_add(b, p->sku, p->location,
                  covered ? REASON_UNEXPLAINED : REASON_HISTORY_WINDOW, !covered,
                  pos.on_hand, p->on_hand, changes);
}

typedef struct {
  builder_t *b;
  const atp_engine_t *engine;
  const atp_recon_request_t *req;
  set_t *keys;
  set_t *locations;
} walk_t;

/* A position here at a location of the export that the export lacks. */
static int walk_position(void *ctx, const atp_position_t *p) {
  walk_t *w = ctx;
  if (!location_find(w->locations, w->req->positions, p->location, UINT32_MAX))
    return 0;
  if (key_find(w->keys, w->req->positions, p->sku, p->location, UINT32_MAX) !=
      UINT32_MAX)
    return 0;
  atp_recon_report_t *r = w->b->r;
  atp_position_t pos;
  int64_t changes = 0;
  bool covered = true;
  int rc = atp_position_changes_after(w->engine, p->sku, p->location, r->as_of_ms, &pos,
                                      &changes, &covered);
  ATP_ASSERT(rc == 0); /* positions never disappear */
  r->compared++;
  if (!covered) r->approximate++;
  if (pos.on_hand - changes == 0) {
    r->matched++; /* none at as_of, and the export lists none */
    return 0;
  }
  r->missing_there++;
  return item_add(w->b, p->sku, p->location, REASON_MISSING_THERE, !covered,
                  pos.on_hand, 0, changes);
}

static void report_free(atp_recon_report_t *r) {
  if (!r) return;
  pthread_mutex_destroy(&r->lock);
  atp_free(r->items);
  atp_free(r->text);
  atp_free(r->note);
  atp_free(r);
}

static uint64_t content_hash(const atp_recon_request_t *req) {
  uint64_t h = hash_str(0x9e3779b97f4a7c15ULL, req->source);
  h = hash_int(h, req->as_of_ms);
  h = hash_int(h, req->count);
  for (uint32_t i = 0; i < req->count; i++) {
    h = hash_str(h, req->positions[i].sku);
    h = hash_str(h, req->positions[i].location);
    h = hash_int(h, req->positions[i].on_hand);
  }
  return hash_mix(h);
}

static void name_position(char *buf, size_t cap, const atp_recon_position_t *p,
                          uint32_t index) {
  if (p->line)
    snprintf(buf, cap, "line %u", p->line);
  else
    snprintf(buf, cap, "positions[%u]", index);
}

/* The sets, the lines, the walk: a report not yet in the store. */
static int build(const atp_engine_t *engine, const atp_recon_request_t *req,
                 atp_recon_report_t *r, atp_result_t *result) {
  set_t keys = {0}, locations = {0};
  builder_t b = {.r = r};
  int rc = set_init(&keys, req->count);
  if (rc == 0) rc = set_init(&locations, req->count);
  for (uint32_t i = 0; rc == 0 && i < req->count; i++) {
    const atp_recon_position_t *p = &req->positions[i];
    uint32_t first = key_find(&keys, req->positions, p->sku, p->location, i);
    if (first != UINT32_MAX) {
      char here[40], there[40];
      name_position(here, sizeof here, p, i);
      name_position(there, sizeof there, &req->positions[first], first);
      fail(result, here, "%s names the same sku and location as %s.", here, there);
      rc = ATP_EBADREQ;
      break;
    }
    (void)location_find(&locations, req->positions, p->location, i);
  }
  for (uint32_t i = 0; rc == 0 && i < req->count; i++)
    rc = compare_line(&b, engine, &req->positions[i]);
  if (rc == 0 && req->count) {
    walk_t w = {&b, engine, req, &keys, &locations};
    rc = atp_position_each(engine, walk_position, &w);
  }
  if (rc && !result->message[0]) fail(result, "", "%s", atp_strerror(rc));
  atp_free(keys.slots);
  atp_free(locations.slots);
  return rc;
}

/* --- durability: records (proto/journal.md, kinds 40..43) --------------- */

/* Item chunks stay well under the journal's record bound. */
#define CHUNK_BYTES (1u << 20)

typedef int (*put_fn)(void *ctx, uint16_t kind, const void *payload, uint32_t bytes);

static int put_append(void *ctx, uint16_t kind, const void *payload, uint32_t bytes) {
  return atp_durable_append(ctx, kind, payload, bytes);
}

static void encode_header(atp_buf_t *b, const atp_recon_report_t *r) {
  atp_payload_u64(b, r->seq);
  atp_payload_u64(b, r->version);
  atp_payload_str(b, r->id, strlen(r->id));
  atp_payload_str(b, r->source, strlen(r->source));
  atp_payload_i64(b, r->as_of_ms);
  atp_payload_i64(b, r->created_at_ms);
  atp_payload_u64(b, r->content_hash);
  atp_payload_u8(b, (uint8_t)r->status);
  atp_payload_u64(b, r->compared);
  atp_payload_u64(b, r->matched);
  atp_payload_u64(b, r->mismatched);
  atp_payload_u64(b, r->missing_here);
  atp_payload_u64(b, r->missing_there);
  atp_payload_u64(b, r->approximate);
  atp_payload_u32(b, r->item_count);
  atp_payload_i64(b, r->applied_at_ms);
  atp_payload_u64(b, r->apply.applied);
  atp_payload_u64(b, r->apply.stale);
  atp_payload_u64(b, r->apply.replayed);
  atp_payload_u64(b, r->apply.skipped);
  atp_payload_u64(b, r->apply.failed);
  atp_payload_i64(b, r->closed_at_ms);
  const char *note = r->note ? r->note : "";
  atp_payload_str(b, note, strlen(note));
  atp_payload_str(b, r->by, strlen(r->by));
}

static void encode_item(atp_buf_t *b, const atp_recon_report_t *r, const item_t *it) {
  atp_payload_str(b, r->text + it->sku_off, it->sku_len);
  atp_payload_str(b, r->text + it->location_off, it->location_len);
  atp_payload_u8(b, it->reason);
  atp_payload_u8(b, it->outcome);
  atp_payload_u8(
      b, (uint8_t)(it->approximate | it->replayed << 1 | it->count_approx << 2));
  atp_payload_u32(b, (uint32_t)(int32_t)it->error);
  atp_payload_i64(b, it->ours);
  atp_payload_i64(b, it->theirs);
  atp_payload_i64(b, it->changes);
  atp_payload_i64(b, it->on_hand_now);
}

/* The whole report: its items in chunks, then the header that commits them.
 * Caller holds the report's lock. */
static int put_report(const atp_recon_report_t *r, put_fn put, void *ctx) {
  atp_buf_t b;
  atp_buf_init(&b, 0);
  int rc = 0;
  for (uint32_t i = 0; i < r->item_count && !rc;) {
    atp_buf_reset(&b);
    atp_payload_str(&b, r->id, strlen(r->id));
    atp_payload_u64(&b, r->version);
    atp_payload_u32(&b, i);
    size_t count_at = b.len;
    atp_payload_u32(&b, 0);
    uint32_t n = 0;
    while (i < r->item_count && b.len < CHUNK_BYTES)
      encode_item(&b, r, &r->items[i++]), n++;
    if (b.failed) {
      rc = ATP_ENOMEM;
      break;
    }
    memcpy(b.data + count_at, &n, sizeof n); /* little-endian, as the payload */
    rc = put(ctx, ATP_RECON_KIND_ITEMS, b.data, (uint32_t)b.len);
  }
  if (!rc) {
    atp_buf_reset(&b);
    encode_header(&b, r);
    rc = b.failed ? ATP_ENOMEM
                  : put(ctx, ATP_RECON_KIND_REPORT, b.data, (uint32_t)b.len);
  }
  atp_buf_free(&b);
  return rc;
}

static int journal_report(atp_recon_store_t *s, const atp_recon_report_t *r) {
  if (!s->config.durable) return 0;
  return put_report(r, put_append, s->config.durable);
}

static int journal_evict(atp_recon_store_t *s, const atp_recon_report_t *r) {
  if (!s->config.durable) return 0;
  atp_buf_t b;
  atp_buf_init(&b, 0);
  atp_payload_str(&b, r->id, strlen(r->id));
  atp_payload_u64(&b, r->seq);
  int rc = b.failed ? ATP_ENOMEM
                    : atp_durable_append(s->config.durable, ATP_RECON_KIND_EVICT,
                                         b.data, (uint32_t)b.len);
  atp_buf_free(&b);
  return rc;
}

static void pending_drop(atp_recon_store_t *s, pending_t *p) {
  for (pending_t **at = &s->pending; *at; at = &(*at)->next) {
    if (*at != p) continue;
    *at = p->next;
    break;
  }
  report_free(p->b.r);
  atp_free(p);
}

static bool id_is(const char *id, atp_str_t s) {
  return strlen(id) == s.len && memcmp(id, s.ptr, s.len) == 0;
}

static pending_t *pending_find(atp_recon_store_t *s, atp_str_t id) {
  for (pending_t *p = s->pending; p; p = p->next)
    if (id_is(p->b.r->id, id)) return p;
  return NULL;
}

static atp_recon_report_t *report_new(atp_str_t id) {
  atp_recon_report_t *r = atp_calloc(1, sizeof *r);
  if (!r) return NULL;
  pthread_mutex_init(&r->lock, NULL);
  memcpy(r->id, id.ptr, id.len);
  return r;
}

static int replay_items(atp_recon_store_t *s, atp_payload_reader_t *rd) {
  atp_str_t id;
  atp_payload_get_str(rd, &id.ptr, &id.len);
  uint64_t version = atp_payload_get_u64(rd);
  uint32_t first = atp_payload_get_u32(rd), n = atp_payload_get_u32(rd);
  if (!atp_payload_ok(rd) || !id.len || id.len > ATP_ID_BYTES_MAX) return ATP_EBADREQ;
  pending_t *p = pending_find(s, id);
  if (first == 0) {
    /* A new version's first chunk: what an earlier, unfinished one held goes. */
    if (p) pending_drop(s, p);
    p = atp_calloc(1, sizeof *p);
    if (!p) return ATP_ENOMEM;
    if (!(p->b.r = report_new(id))) {
      atp_free(p);
      return ATP_ENOMEM;
    }
    p->version = version;
    p->next = s->pending;
    s->pending = p;
  } else if (!p || p->version != version || p->b.r->item_count != first) {
    return 0; /* the rest of a version whose start a snapshot covered */
  }
  for (uint32_t k = 0; k < n; k++) {
    atp_str_t sku, loc;
    atp_payload_get_str(rd, &sku.ptr, &sku.len);
    atp_payload_get_str(rd, &loc.ptr, &loc.len);
    uint8_t reason = atp_payload_get_u8(rd), outcome = atp_payload_get_u8(rd);
    uint8_t flags = atp_payload_get_u8(rd);
    int32_t error = (int32_t)atp_payload_get_u32(rd);
    int64_t ours = atp_payload_get_i64(rd), theirs = atp_payload_get_i64(rd);
    int64_t changes = atp_payload_get_i64(rd), now = atp_payload_get_i64(rd);
    if (!atp_payload_ok(rd) || sku.len > ATP_ID_BYTES_MAX ||
        loc.len > ATP_ID_BYTES_MAX || reason > REASON_MISSING_THERE ||
        outcome > OUTCOME_FAILED)
      return ATP_EBADREQ;
    int rc =
        item_add(&p->b, sku, loc, (reason_t)reason, flags & 1, ours, theirs, changes);
    if (rc) return rc;
    item_t *it = &p->b.r->items[p->b.r->item_count - 1];
    it->outcome = outcome;
    it->replayed = (flags >> 1) & 1;
    it->count_approx = (flags >> 2) & 1;
    it->error = (int16_t)error;
    it->on_hand_now = now;
  }
  return 0;
}

static int replay_report(atp_recon_store_t *s, atp_payload_reader_t *rd) {
  uint64_t seq = atp_payload_get_u64(rd), version = atp_payload_get_u64(rd);
  atp_str_t id, source, note, by;
  atp_payload_get_str(rd, &id.ptr, &id.len);
  atp_payload_get_str(rd, &source.ptr, &source.len);
  int64_t as_of = atp_payload_get_i64(rd), created = atp_payload_get_i64(rd);
  uint64_t hash = atp_payload_get_u64(rd);
  uint8_t status = atp_payload_get_u8(rd);
  uint64_t fig[6];
  for (int k = 0; k < 6; k++) fig[k] = atp_payload_get_u64(rd);
  uint32_t item_count = atp_payload_get_u32(rd);
  int64_t applied_at = atp_payload_get_i64(rd);
  atp_recon_apply_t ap;
  ap.applied = atp_payload_get_u64(rd);
  ap.stale = atp_payload_get_u64(rd);
  ap.replayed = atp_payload_get_u64(rd);
  ap.skipped = atp_payload_get_u64(rd);
  ap.failed = atp_payload_get_u64(rd);
  int64_t closed_at = atp_payload_get_i64(rd);
  atp_payload_get_str(rd, &note.ptr, &note.len);
  atp_payload_get_str(rd, &by.ptr, &by.len);
  if (!atp_payload_ok(rd) || !id.len || id.len > ATP_ID_BYTES_MAX ||
      source.len > ATP_ID_BYTES_MAX || by.len > ATP_ID_BYTES_MAX ||
      note.len > ATP_RECON_NOTE_BYTES_MAX || status >= ATP_RECON_STATUS_COUNT_ ||
      seq == 0)
    return ATP_EBADREQ;
  pending_t *p = pending_find(s, id);
  atp_recon_report_t *r = NULL;
  if (p && p->version == version && p->b.r->item_count == item_count) {
    r = p->b.r;
    p->b.r = NULL;
  }
  if (p) pending_drop(s, p);
  uint32_t at = UINT32_MAX;
  for (uint32_t i = 0; i < s->count; i++)
    if (id_is(s->reports[i]->id, id)) at = i;
  bool newer = at == UINT32_MAX ? seq > s->next_seq : version > s->reports[at]->version;
  if (!newer || (item_count && !r)) {
    /* Already held (a snapshot's state the journal repeats), evicted since, or
     * a version whose chunks a torn tail cut: the report stays as it was. */
    report_free(r);
    return 0;
  }
  if (!r && !(r = report_new(id))) return ATP_ENOMEM;
  r->seq = seq;
  r->version = version;
  memcpy(r->source, source.ptr, source.len);
  r->as_of_ms = as_of;
  r->created_at_ms = created;
  r->content_hash = hash;
  r->status = (atp_recon_status_t)status;
  r->compared = fig[0], r->matched = fig[1], r->mismatched = fig[2];
  r->missing_here = fig[3], r->missing_there = fig[4], r->approximate = fig[5];
  r->applied_at_ms = applied_at;
  r->apply = ap;
  r->closed_at_ms = closed_at;
  memcpy(r->by, by.ptr, by.len);
  if (closed_at != ATP_TIME_NONE) {
    if (!(r->note = atp_malloc(note.len + 1))) {
      report_free(r);
      return ATP_ENOMEM;
    }
    memcpy(r->note, note.ptr, note.len);
    r->note[note.len] = '\0';
  }
  if (at != UINT32_MAX) {
    s->items_held -= s->reports[at]->item_count;
    report_free(s->reports[at]);
    s->reports[at] = r;
  } else {
    if (s->count == s->cap) {
      /* More reports than this start's bound (it was lowered): kept all the
       * same, since dropping an open one would lose it without a word. */
      atp_recon_report_t **n = atp_realloc(s->reports, (size_t)s->cap * 2 * sizeof *n);
      if (!n) {
        report_free(r);
        return ATP_ENOMEM;
      }
      s->reports = n;
      s->cap *= 2;
    }
    s->reports[s->count++] = r;
    s->next_seq = seq;
  }
  s->items_held += r->item_count;
  return 0;
}

static int replay_evict(atp_recon_store_t *s, atp_payload_reader_t *rd) {
  atp_str_t id;
  atp_payload_get_str(rd, &id.ptr, &id.len);
  uint64_t seq = atp_payload_get_u64(rd);
  if (!atp_payload_ok(rd)) return ATP_EBADREQ;
  for (uint32_t i = 0; i < s->count; i++) {
    atp_recon_report_t *r = s->reports[i];
    if (r->seq != seq || !id_is(r->id, id)) continue;
    s->items_held -= r->item_count;
    memmove(&s->reports[i], &s->reports[i + 1],
            (size_t)(s->count - i - 1) * sizeof s->reports[0]);
    s->count--;
    s->evicted_total++;
    report_free(r);
    break;
  }
  return 0;
}

static int replay(void *ctx, uint16_t kind, const void *payload, uint32_t len) {
  atp_recon_store_t *s = ctx;
  atp_payload_reader_t rd;
  atp_payload_reader_init(&rd, payload, len);
  int rc = 0;
  pthread_mutex_lock(&s->lock);
  switch (kind) {
    case ATP_RECON_KIND_REPORT:
      rc = replay_report(s, &rd);
      break;
    case ATP_RECON_KIND_ITEMS:
      rc = replay_items(s, &rd);
      break;
    case ATP_RECON_KIND_EVICT:
      rc = replay_evict(s, &rd);
      break;
    case ATP_RECON_KIND_META: {
      uint64_t next = atp_payload_get_u64(&rd), evicted = atp_payload_get_u64(&rd);
      if (!atp_payload_ok(&rd)) {
        rc = ATP_EBADREQ;
        break;
      }
      if (next > s->next_seq) s->next_seq = next;
      if (evicted > s->evicted_total) s->evicted_total = evicted;
      break;
    }
    default:
      break; /* a later release's kind in our range: nothing to keep */
  }
  pthread_mutex_unlock(&s->lock);
  return rc;
}

static int export_state(void *ctx, atp_durable_emit_fn emit, void *emit_ctx) {
  atp_recon_store_t *s = ctx;
  int rc = 0;
  pthread_mutex_lock(&s->lock);
  for (uint32_t i = 0; i < s->count && !rc; i++) {
    atp_recon_report_t *r = s->reports[i];
    pthread_mutex_lock(&r->lock);
    rc = put_report(r, emit, emit_ctx);
    pthread_mutex_unlock(&r->lock);
  }
  if (!rc) {
    atp_buf_t b;
    atp_buf_init(&b, 0);
    atp_payload_u64(&b, s->next_seq);
    atp_payload_u64(&b, s->evicted_total);
    rc = b.failed ? ATP_ENOMEM
                  : emit(emit_ctx, ATP_RECON_KIND_META, b.data, (uint32_t)b.len);
    atp_buf_free(&b);
  }
  pthread_mutex_unlock(&s->lock);
  return rc;
}

/* --- the store -------------------------------------------------------------- */

int atp_recon_store_create(const atp_recon_config_t *config, atp_recon_store_t **out) {
  atp_recon_store_t *s = atp_calloc(1, sizeof *s);
  if (!s) return ATP_ENOMEM;
  if (config) s->config = *config;
  if (!s->config.reports_max) s->config.reports_max = ATP_RECON_REPORTS_MAX_DEFAULT;
  if (!s->config.items_max) s->config.items_max = ATP_RECON_ITEMS_MAX_DEFAULT;
  s->cap = s->config.reports_max;
  s->reports = atp_calloc(s->cap, sizeof *s->reports);
  if (!s->reports) {
    atp_free(s);
    return ATP_ENOMEM;
  }
  pthread_mutex_init(&s->lock, NULL);
  if (s->config.durable) {
    atp_durable_section_t sec = {
        .name = "reconciliations",
        .kind_first = ATP_RECON_KIND_REPORT,
        .kind_last = ATP_RECON_KIND_META,
        .replay = replay,
        .export_state = export_state,
        .ctx = s,
    };
    int rc = atp_durable_register(s->config.durable, &sec);
    if (rc != 0) {
      atp_recon_store_destroy(s);
      return rc;
    }
  }
  *out = s;
  return 0;
}

void atp_recon_store_destroy(atp_recon_store_t *s) {
  if (!s) return;
  for (uint32_t i = 0; i < s->count; i++) report_free(s->reports[i]);
  while (s->pending) pending_drop(s, s->pending);
  atp_free(s->reports);
  pthread_mutex_destroy(&s->lock);
  atp_free(s);
}

/* Caller holds the store's lock. O(reports): the store is small. */
static atp_recon_report_t *find_locked(atp_recon_store_t *s, atp_str_t id) {
  for (uint32_t i = 0; i < s->count; i++) {
    atp_recon_report_t *r = s->reports[i];
    if (strlen(r->id) == id.len && memcmp(r->id, id.ptr, id.len) == 0) return r;
  }
  return NULL;
}

/* The report, its lock taken (store, then report), or NULL. */
static atp_recon_report_t *find_and_lock(atp_recon_store_t *s, atp_str_t id) {
  pthread_mutex_lock(&s->lock);
  atp_recon_report_t *r = find_locked(s, id);
  if (r) pthread_mutex_lock(&r->lock);
  pthread_mutex_unlock(&s->lock);
  return r;
}

/* Drops the oldest closed report: 1, 0 when none is closed, or the
 * journal's error. Caller holds the store's lock. */
static int evict_one_locked(atp_recon_store_t *s) {
  for (uint32_t i = 0; i < s->count; i++) {
    atp_recon_report_t *r = s->reports[i];
    pthread_mutex_lock(&r->lock); /* waits for a reader still writing it out */
    bool closed = r->status == ATP_RECON_CLOSED;
    int rc = closed ? journal_evict(s, r) : 0;
    pthread_mutex_unlock(&r->lock);
    if (rc) return rc;
    if (!closed) continue;
    atp_log("info", "reconciliation %s evicted (closed) to make room", r->id);
    s->items_held -= r->item_count;
    memmove(&s->reports[i], &s->reports[i + 1],
            (size_t)(s->count - i - 1) * sizeof s->reports[0]);
    s->count--;
    s->evicted_total++;
    report_free(r);
    return 1;
  }
  return 0;
}

/* Room for a report of item_count items, evicting closed ones. Caller holds
 * the store's lock. */
static int make_room_locked(atp_recon_store_t *s, uint32_t item_count,
                            atp_result_t *result) {
  if (item_count > s->config.items_max) {
    fail(result, "positions",
         "The report would hold %u unmatched items; at most %llu are kept.", item_count,
         (unsigned long long)s->config.items_max);
    return ATP_EFULL;
  }
  while (s->count == s->config.reports_max ||
         s->items_held + item_count > s->config.items_max) {
    int rc = evict_one_locked(s);
    if (rc < 0) {
      fail(result, "", "The journal refused the eviction: %s", atp_strerror(rc));
      return rc;
    }
    if (rc) continue;
    fail(result, "",
         "The reconciliation store is full (%u reports, %llu unmatched items; limits "
         "%u and %llu) and none is closed: close reports that are done with.",
         s->count, (unsigned long long)s->items_held, s->config.reports_max,
         (unsigned long long)s->config.items_max);
    return ATP_EFULL;
  }
  return 0;
}

int atp_recon_create(atp_recon_store_t *s, const atp_engine_t *engine,
                     const atp_recon_request_t *req, bool *replayed,
                     atp_result_t *result) {
  ATP_ASSERT(s && engine && req && replayed);
  ATP_ASSERT(req->count <= ATP_RECON_POSITIONS_MAX);
  ATP_ASSERT(req->id.len && req->id.len <= ATP_ID_BYTES_MAX);
  ATP_ASSERT(req->source.len && req->source.len <= ATP_ID_BYTES_MAX);
  *replayed = false;
  uint64_t hash = content_hash(req);
  /* A replay is answered before the work of a comparison. */
  pthread_mutex_lock(&s->lock);
  atp_recon_report_t *old = find_locked(s, req->id);
  uint64_t old_hash = old ? old->content_hash : 0;
  pthread_mutex_unlock(&s->lock);
  if (old) {
    if (old_hash == hash) {
      *replayed = true;
      return 0;
    }
    fail(result, "id", "Reconciliation %.*s exists with other content.",
         (int)req->id.len, req->id.ptr);
    return ATP_EIDEMPOTENCY;
  }
  atp_recon_report_t *r = atp_calloc(1, sizeof *r);
  if (!r) return ATP_ENOMEM;
  pthread_mutex_init(&r->lock, NULL);
  memcpy(r->id, req->id.ptr, req->id.len);
  memcpy(r->source, req->source.ptr, req->source.len);
  r->as_of_ms = req->as_of_ms;
  r->created_at_ms = atp_engine_now_ms(engine);
  r->content_hash = hash;
  r->status = ATP_RECON_OPEN;
  r->applied_at_ms = ATP_TIME_NONE;
  r->closed_at_ms = ATP_TIME_NONE;
  int rc = build(engine, req, r, result);
  if (rc) {
    report_free(r);
    return rc;
  }
  pthread_mutex_lock(&s->lock);
  /* Two first posts of one id raced: the second is the replay (or the
   * mismatch) the first would have made of it. */
  old = find_locked(s, req->id);
  if (old) {
    bool same = old->content_hash == hash;
    pthread_mutex_unlock(&s->lock);
    report_free(r);
    if (same) {
      *replayed = true;
      return 0;
    }
    fail(result, "id", "Reconciliation %.*s exists with other content.",
         (int)req->id.len, req->id.ptr);
    return ATP_EIDEMPOTENCY;
  }
  rc = make_room_locked(s, r->item_count, result);
  if (rc == 0) {
    r->seq = s->next_seq + 1;
    r->version = 1;
    if ((rc = journal_report(s, r)) != 0)
      fail(result, "", "The journal refused the report: %s", atp_strerror(rc));
  }
  if (rc == 0) {
    s->next_seq = r->seq;
    s->reports[s->count++] = r;
    s->items_held += r->item_count;
    s->compared_total += r->compared;
  }
  pthread_mutex_unlock(&s->lock);
  if (rc) report_free(r);
  return rc;
}

/* --- answers -------------------------------------------------------------------- */

static void w_text(atp_writer_t *w, const atp_recon_report_t *r, uint32_t off,
                   uint32_t len) {
  atp_w_str(w, r->text + off, len);
}

static void write_item(atp_writer_t *w, const atp_recon_report_t *r, const item_t *it) {
  atp_w_object_begin(w);
  atp_w_key(w, "sku");
  w_text(w, r, it->sku_off, it->sku_len);
  atp_w_key(w, "location");
  w_text(w, r, it->location_off, it->location_len);
  atp_w_key(w, "ours");
  atp_w_int(w, it->ours);
  atp_w_key(w, "theirs");
  atp_w_int(w, it->theirs);
  atp_w_key(w, "diff");
  atp_w_int(w, it->ours - it->changes - it->theirs);
  atp_w_key(w, "changes_after_as_of");
  atp_w_int(w, it->changes);
  atp_w_key(w, "reason");
  atp_w_cstr(w, reason_names[it->reason]);
  atp_w_key(w, "approximate");
  atp_w_bool(w, it->approximate);
  if (it->outcome != OUTCOME_NONE) {
    atp_w_key(w, "apply");
    atp_w_object_begin(w);
    atp_w_key(w, "outcome");
    atp_w_cstr(w, outcome_names[it->outcome]);
    if (it->outcome == OUTCOME_APPLIED || it->outcome == OUTCOME_STALE) {
      atp_w_key(w, "on_hand");
      atp_w_int(w, it->on_hand_now);
      atp_w_key(w, "approximate");
      atp_w_bool(w, it->count_approx);
      atp_w_key(w, "replayed");
      atp_w_bool(w, it->replayed);
    }
    atp_w_key(w, "message");
    switch (it->outcome) {
      case OUTCOME_APPLIED:
        atp_w_cstr(w,
                   "Counted at as_of: on_hand is the export's figure plus the "
                   "changes applied after as_of.");
        break;
      case OUTCOME_STALE:
        atp_w_cstr(w,
                   "The position was counted after as_of: the export is older "
                   "than that count and changed nothing.");
        break;
      case OUTCOME_SKIPPED:
        atp_w_cstr(w,
                   "Not in the export: apply with zero_missing_there to count it "
                   "as 0.");
        break;
      default:
        atp_w_cstr(w, atp_strerror(it->error));
        atp_w_key(w, "error");
        atp_w_cstr(w, atp_strerror_code(it->error));
        break;
    }
    atp_w_object_end(w);
  }
  atp_w_object_end(w);
}

static void write_time(atp_writer_t *w, const char *key, int64_t ms) {
  if (ms == ATP_TIME_NONE) return;
  atp_w_key(w, key);
  atp_w_int(w, ms);
}

static void write_apply(atp_writer_t *w, const atp_recon_apply_t *a) {
  atp_w_object_begin(w);
  atp_w_key(w, "applied");
  atp_w_uint(w, a->applied);
  atp_w_key(w, "stale");
  atp_w_uint(w, a->stale);
  atp_w_key(w, "replayed");
  atp_w_uint(w, a->replayed);
  atp_w_key(w, "skipped");
  atp_w_uint(w, a->skipped);
  atp_w_key(w, "failed");
  atp_w_uint(w, a->failed);
  atp_w_object_end(w);
}

/* The report's members into an open object. Caller holds its lock. */
static void write_fields(atp_writer_t *w, const atp_recon_report_t *r) {
  atp_w_key(w, "id");
  atp_w_cstr(w, r->id);
  atp_w_key(w, "source");
  atp_w_cstr(w, r->source);
  atp_w_key(w, "as_of");
  atp_w_int(w, r->as_of_ms);
  atp_w_key(w, "created_at");
  atp_w_int(w, r->created_at_ms);
  atp_w_key(w, "status");
  atp_w_cstr(w, atp_recon_status_name(r->status));
  atp_w_key(w, "compared");
  atp_w_uint(w, r->compared);
  atp_w_key(w, "matched");
  atp_w_uint(w, r->matched);
  atp_w_key(w, "mismatched");
  atp_w_uint(w, r->mismatched);
  atp_w_key(w, "missing_here");
  atp_w_uint(w, r->missing_here);
  atp_w_key(w, "missing_there");
  atp_w_uint(w, r->missing_there);
  atp_w_key(w, "approximate");
  atp_w_uint(w, r->approximate);
  atp_w_key(w, "items_total");
  atp_w_uint(w, r->item_count);
  if (r->applied_at_ms != ATP_TIME_NONE) {
    write_time(w, "applied_at", r->applied_at_ms);
    atp_w_key(w, "apply");
    write_apply(w, &r->apply);
  }
  if (r->closed_at_ms != ATP_TIME_NONE) {
    write_time(w, "closed_at", r->closed_at_ms);
    atp_w_key(w, "note");
    atp_w_cstr(w, r->note ? r->note : "");
    atp_w_key(w, "by");
    atp_w_cstr(w, r->by);
  }
}

int atp_recon_write(atp_recon_store_t *s, atp_str_t id, uint32_t items_from,
                    uint32_t items_limit, bool replayed, atp_writer_t *w) {
  atp_recon_report_t *r = find_and_lock(s, id);
  if (!r) return ATP_ENOTFOUND;
  atp_w_object_begin(w);
  write_fields(w, r);
  atp_w_key(w, "items");
  atp_w_array_begin(w);
  uint32_t end = items_from;
  for (uint32_t i = items_from; i < r->item_count && i - items_from < items_limit;
       i++) {
    write_item(w, r, &r->items[i]);
    end = i + 1;
  }
  atp_w_array_end(w);
  if (end < r->item_count) {
    atp_w_key(w, "items_next");
    atp_w_uint(w, end);
  }
  if (replayed) {
    atp_w_key(w, "replayed");
    atp_w_bool(w, true);
  }
  atp_w_object_end(w);
  pthread_mutex_unlock(&r->lock);
  return 0;
}

void atp_recon_list_write(atp_recon_store_t *s, int status, uint64_t after,
                          uint32_t limit, atp_writer_t *w) {
  ATP_ASSERT(limit > 0);
  atp_w_object_begin(w);
  atp_w_key(w, "reconciliations");
  atp_w_array_begin(w);
  pthread_mutex_lock(&s->lock);
  uint32_t n = 0;
  uint64_t last = 0;
  bool more = false;
  for (uint32_t i = 0; i < s->count; i++) {
    atp_recon_report_t *r = s->reports[i];
    if (r->seq <= after) continue;
    pthread_mutex_lock(&r->lock);
    bool wanted = status < 0 || (int)r->status == status;
    if (wanted && n == limit) more = true;
    if (wanted && n < limit) {
      atp_w_object_begin(w);
      write_fields(w, r);
      atp_w_object_end(w);
      n++;
      last = r->seq;
    }
    pthread_mutex_unlock(&r->lock);
    if (more) break;
  }
  pthread_mutex_unlock(&s->lock);
  atp_w_array_end(w);
  if (more) {
    char cursor[24];
    snprintf(cursor, sizeof cursor, "%llu", (unsigned long long)last);
    atp_w_key(w, "cursor");
    atp_w_cstr(w, cursor);
  }
  atp_w_object_end(w);
}

int atp_recon_source(atp_recon_store_t *s, atp_str_t id, char *out) {
  atp_recon_report_t *r = find_and_lock(s, id);
  if (!r) return ATP_ENOTFOUND;
  memcpy(out, r->source, sizeof r->source);
  pthread_mutex_unlock(&r->lock);
  return 0;
}

/* --- apply and close ------------------------------------------------------------ */

static const char hex[] = "0123456789abcdef";

/* "recon:" and 32 hex digits of two independent hashes of (id, sku, location). */
static void count_id(const atp_recon_report_t *r, const item_t *it, char out[40]) {
  atp_str_t id = {r->id, (uint32_t)strlen(r->id)};
  atp_str_t sku = {r->text + it->sku_off, it->sku_len};
  atp_str_t loc = {r->text + it->location_off, it->location_len};
  uint64_t h[2];
  for (int k = 0; k < 2; k++) {
    uint64_t x = k ? 0x6a09e667f3bcc909ULL : 0xcbf29ce484222325ULL;
    h[k] = hash_mix(hash_str(hash_str(hash_str(x, id), sku), loc) + (uint64_t)k);
  }
  memcpy(out, "recon:", 6);
  for (int i = 0; i < 32; i++)
    out[6 + i] = hex[(h[i / 16] >> (60 - 4 * (i % 16))) & 15];
  out[38] = '\0';
}

/* One item's count. Returns whether the item's recorded outcome changed: a
 * count the engine replays keeps the outcome the first apply recorded. */
static bool apply_item(atp_engine_t *engine, const atp_recon_report_t *r, item_t *it,
                       bool zero_missing_there, atp_recon_apply_t *out) {
  if (it->reason == REASON_MISSING_THERE && !zero_missing_there) {
    out->skipped++;
    if (it->outcome == OUTCOME_SKIPPED) return false;
    if (it->outcome != OUTCOME_NONE) {
      /* Counted as 0 by an earlier apply: that count stands. */
      out->skipped--;
      out->replayed++;
      return false;
    }
    it->outcome = OUTCOME_SKIPPED;
    return true;
  }
  char id[40];
  count_id(r, it, id);
  atp_count_req_t req;
  memset(&req, 0, sizeof req);
  req.id = (atp_str_t){id, 38};
  req.sku = (atp_str_t){r->text + it->sku_off, it->sku_len};
  req.location = (atp_str_t){r->text + it->location_off, it->location_len};
  req.on_hand = it->theirs;
  req.counted_at_ms = r->as_of_ms;
  req.source = (atp_str_t){r->source, (uint32_t)strlen(r->source)};
  atp_count_res_t res;
  atp_result_t result;
  memset(&result, 0, sizeof result);
  int rc = atp_count(engine, &req, &res, &result);
  if (rc) {
    bool again = it->outcome == OUTCOME_FAILED && it->error == rc;
    it->outcome = OUTCOME_FAILED;
    it->error = (int16_t)rc;
    out->failed++;
    return !again;
  }
  if (res.replayed) {
    out->replayed++;
    if (it->outcome == OUTCOME_APPLIED || it->outcome == OUTCOME_STALE) return false;
  } else if (res.stale) {
    out->stale++;
  } else {
    out->applied++;
  }
  it->outcome = res.stale ? OUTCOME_STALE : OUTCOME_APPLIED;
  it->replayed = res.replayed;
  it->count_approx = res.approximate;
  it->on_hand_now = res.position.on_hand;
  return true;
}

int atp_recon_apply(atp_recon_store_t *s, atp_engine_t *engine, atp_str_t id,
                    bool zero_missing_there, atp_recon_apply_t *out, bool *replayed,
                    atp_result_t *result) {
  memset(out, 0, sizeof *out);
  *replayed = false;
  atp_recon_report_t *r = find_and_lock(s, id);
  if (!r) {
    fail(result, "id", "No reconciliation %.*s.", (int)id.len, id.ptr);
    return ATP_ENOTFOUND;
  }
  if (r->status == ATP_RECON_CLOSED) {
    pthread_mutex_unlock(&r->lock);
    fail(result, "status", "Reconciliation %s is closed.", r->id);
    return ATP_ECONFLICT;
  }
  /* Under the report's lock for the whole run: one apply at a time, and no
   * answer shows an item half applied. O(items) counts. */
  bool any = false;
  for (uint32_t i = 0; i < r->item_count; i++)
    any |= apply_item(engine, r, &r->items[i], zero_missing_there, out);
  /* A retried apply whose every count replayed changes nothing, the report
   * included: it keeps the first apply's time and figures. */
  *replayed = !any && r->status == ATP_RECON_APPLIED;
  int rc = 0;
  if (!*replayed) {
    atp_recon_status_t status = r->status;
    int64_t applied_at = r->applied_at_ms;
    atp_recon_apply_t apply = r->apply;
    r->status = ATP_RECON_APPLIED;
    r->applied_at_ms = atp_engine_now_ms(engine);
    r->apply = *out;
    r->version++;
    if ((rc = journal_report(s, r)) != 0) {
      /* The counts stand (the engine journaled them); the report goes back,
       * so a retry, whose counts replay, records the apply again. The items
       * keep their new outcomes, which that retry journals. */
      r->status = status;
      r->applied_at_ms = applied_at;
      r->apply = apply;
      r->version--;
      fail(result, "", "The journal refused the report: %s", atp_strerror(rc));
    }
  }
  pthread_mutex_unlock(&r->lock);
  return rc;
}

int atp_recon_close(atp_recon_store_t *s, atp_str_t id, atp_str_t note, atp_str_t by,
                    int64_t now_ms, bool *replayed, atp_result_t *result) {
  ATP_ASSERT(note.len <= ATP_RECON_NOTE_BYTES_MAX && by.len <= ATP_ID_BYTES_MAX);
  *replayed = false;
  atp_recon_report_t *r = find_and_lock(s, id);
  if (!r) {
    fail(result, "id", "No reconciliation %.*s.", (int)id.len, id.ptr);
    return ATP_ENOTFOUND;
  }
  if (r->status == ATP_RECON_CLOSED) {
    *replayed = true;
    pthread_mutex_unlock(&r->lock);
    return 0;
  }
  char *copy = atp_malloc(note.len + 1);
  if (!copy) {
    pthread_mutex_unlock(&r->lock);
    return ATP_ENOMEM;
  }
  memcpy(copy, note.ptr, note.len);
  copy[note.len] = '\0';
  atp_recon_status_t status = r->status;
  r->note = copy;
  memcpy(r->by, by.ptr, by.len);
  r->by[by.len] = '\0';
  r->closed_at_ms = now_ms;
  r->status = ATP_RECON_CLOSED;
  r->version++;
  int rc = journal_report(s, r);
  if (rc) {
    atp_free(r->note);
    r->note = NULL;
    r->by[0] = '\0';
    r->closed_at_ms = ATP_TIME_NONE;
    r->status = status;
    r->version--;
    fail(result, "", "The journal refused the close: %s", atp_strerror(rc));
  }
  pthread_mutex_unlock(&r->lock);
  return rc;
}

void atp_recon_metrics_write(atp_recon_store_t *s, atp_buf_t *out) {
  uint64_t by_status[ATP_RECON_STATUS_COUNT_] = {0};
  pthread_mutex_lock(&s->lock);
  for (uint32_t i = 0; i < s->count; i++) {
    atp_recon_report_t *r = s->reports[i];
    pthread_mutex_lock(&r->lock);
    by_status[r->status]++;
    pthread_mutex_unlock(&r->lock);
  }
  uint64_t items = s->items_held, compared = s->compared_total,
           evicted = s->evicted_total;
  uint32_t reports_max = s->config.reports_max;
  uint64_t items_max = s->config.items_max;
  pthread_mutex_unlock(&s->lock);
  atp_buf_printf(out,
                 "# HELP atpd_reconciliations Reconciliation reports held, by "
                 "status.\n# TYPE atpd_reconciliations gauge\n");
  for (int i = 0; i < ATP_RECON_STATUS_COUNT_; i++)
    atp_buf_printf(out, "atpd_reconciliations{status=\"%s\"} %llu\n",
                   atp_recon_status_name((atp_recon_status_t)i),
                   (unsigned long long)by_status[i]);
  atp_buf_printf(out,
                 "# HELP atpd_reconciliations_max Reports the store may hold.\n"
                 "# TYPE atpd_reconciliations_max gauge\n"
                 "atpd_reconciliations_max %u\n"
                 "# HELP atpd_reconciliation_items Unmatched items held over all "
                 "reports.\n# TYPE atpd_reconciliation_items gauge\n"
                 "atpd_reconciliation_items %llu\n"
                 "# HELP atpd_reconciliation_items_max Unmatched items the store may "
                 "hold.\n# TYPE atpd_reconciliation_items_max gauge\n"
                 "atpd_reconciliation_items_max %llu\n"
                 "# HELP atpd_reconciliation_positions_compared_total Positions "
                 "compared by reconciliations since start.\n"
                 "# TYPE atpd_reconciliation_positions_compared_total counter\n"
                 "atpd_reconciliation_positions_compared_total %llu\n"
                 "# HELP atpd_reconciliations_evicted_total Closed reports dropped "
                 "to make room since start.\n"
                 "# TYPE atpd_reconciliations_evicted_total counter\n"
                 "atpd_reconciliations_evicted_total %llu\n",
                 reports_max, (unsigned long long)items, (unsigned long long)items_max,
                 (unsigned long long)compared, (unsigned long long)evicted);
}
