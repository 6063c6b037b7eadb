/* shopify.c - the Shopify connector's configuration and durable state
 * (include/atp/shopify.h, CONTRACT.md section 11).
 *
 * The state is a handful of tables behind one mutex: the SKU <-> variant /
 * inventory item mappings (three indexes over the same facts), the location
 * mappings (two), the `available` levels last known to be in Shopify, the
 * webhook ids and content keys already handled, the per-resource watermarks
 * and the orders seen. Each table is a chained hash over byte keys that
 * doubles as it fills, up to its bound in limits.h; at the bound it first
 * drops what has expired (an O(n) walk, paid only then and at most once a
 * minute), then refuses with ATP_EFULL.
 *
 * Durability: every change appends one record of kinds 48..53 while the
 * mutex is held, so the journal's order is the tables' order; restore and
 * snapshot load replay them through the same apply functions, which are
 * idempotent (an upsert, a watermark that only rises), as a fuzzy snapshot
 * followed by the journal needs. proto/journal.md lists the payloads.
 *
 * The lock is one mutex for all tables: a webhook takes it a few times for
 * microseconds, the push thread for a level per quantity. Measured intake is
 * bounded by the engine and the journal, not by it (bench/RESULTS.md).
 */
#include "atp/shopify.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atp/assert.h"
#include "atp/clock.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "atp/memory.h"
#include "atp/payload.h"

enum {
  KIND_ITEM = ATP_SHOPIFY_KIND_FIRST, /* 48: sku, variant, inventory item */
  KIND_LOCATION,                      /* 49: location, shopify location */
  KIND_LEVEL,                         /* 50: item, location, quantity */
  KIND_WEBHOOK,                       /* 51: dedupe key, outcome, at */
  KIND_MARK,                          /* 52: resource, watermark, at */
  KIND_ORDER,                         /* 53: order id, kind, reservation, at */
};
_Static_assert(KIND_ORDER <= ATP_SHOPIFY_KIND_LAST, "kinds beyond the state's range");

#define PRUNE_INTERVAL_MS 60000
#define BUCKETS_MIN       64u

/* --- a chained hash over byte keys ------------------------------------------- */

typedef struct node {
  struct node *next;
  uint64_t hash;
  int64_t a, b;  /* the table's numbers (see each table) */
  int64_t at_ms; /* when written (expiry) */
  uint8_t tag;
  uint32_t key_len, val_len;
  char data[]; /* key bytes, then value bytes, then a NUL */
} node_t;

typedef struct {
  const char *name; /* for the full table's sentence */
  node_t **buckets;
  uint32_t bucket_count; /* a power of two, or 0 before the first insert */
  uint32_t count;
  uint32_t max;
  int64_t retention_ms; /* 0: entries never expire */
  /* Growth is incremental, as Redis's dict rehashes: after a doubling the
   * previous array's buckets old[moved..old_count) still hold entries, and
   * every insert moves MOVE_STEP of them, so no request pays for walking a
   * table of millions at once. */
  node_t **old;
  uint32_t old_count, moved;
  /* The sweep of expired entries, also in steps (prune). */
  uint32_t sweep_pos;
  /* A snapshot walks the table in steps, letting the mutex go between them:
   * meanwhile the table does not grow (chains get longer for a while), so
   * no entry moves from a bucket not walked yet to one walked already. */
  bool frozen;
} table_t;

#define MOVE_STEP 64u

static uint64_t hash_bytes(const void *p, size_t n) {
  /* FNV-1a, then a finaliser: keys are short and chosen by Shopify or the
   * retailer, not by an attacker who could aim at one bucket (the bounded
   * chain length would still bound the cost). */
  const unsigned char *s = p;
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 1099511628211ULL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

/* The chain that holds (or would hold) hash h. */
static node_t **t_chain(const table_t *t, uint64_t h) {
  if (t->old && (h & (t->old_count - 1)) >= t->moved)
    return &t->old[h & (t->old_count - 1)];
  return &t->buckets[h & (t->bucket_count - 1)];
}

static node_t *t_find(const table_t *t, const void *key, uint32_t len) {
  if (!t->bucket_count) return NULL;
  uint64_t h = hash_bytes(key, len);
  for (node_t *n = *t_chain(t, h); n; n = n->next)
    if (n->hash == h && n->key_len == len && memcmp(n->data, key, len) == 0) return n;
  return NULL;
}

/* Moves up to steps buckets of the previous array into the current one. */
static void t_move(table_t *t, uint32_t steps) {
  for (; t->old && steps; steps--) {
    node_t *n = t->old[t->moved];
    while (n) {
      node_t *next = n->next;
      n->next = t->buckets[n->hash & (t->bucket_count - 1)];
      t->buckets[n->hash & (t->bucket_count - 1)] = n;
      n = next;
    }
    t->old[t->moved] = NULL;
    if (++t->moved == t->old_count) {
      atp_free(t->old);
      t->old = NULL;
      t->old_count = t->moved = 0;
    }
  }
}

static int t_grow(table_t *t) {
  uint32_t nb = t->bucket_count ? t->bucket_count * 2 : BUCKETS_MIN;
  node_t **b = atp_calloc(nb, sizeof *b);
  if (!b) return ATP_ENOMEM;
  /* The previous doubling's moves are long done (an insert moves MOVE_STEP
   * buckets and the table doubled since): finishing here is rare and short. */
  t_move(t, UINT32_MAX);
  t->old = t->buckets;
  t->old_count = t->bucket_count;
  t->moved = 0;
  t->buckets = b;
  t->bucket_count = nb;
  t->sweep_pos = 0;
  return 0;
}

static void t_unlink(table_t *t, node_t *victim) {
  node_t **p = t_chain(t, victim->hash);
  while (*p != victim) p = &(*p)->next;
  *p = victim->next;
  atp_free(victim);
  t->count--;
}

static void t_remove(table_t *t, const void *key, uint32_t len) {
  node_t *n = t_find(t, key, len);
  if (n) t_unlink(t, n);
}

/* Drops the expired entries of buckets [from, to) of the current array. */
static void t_prune_range(table_t *t, int64_t now_ms, uint32_t from, uint32_t to) {
  for (uint32_t i = from; i < to; i++) {
    node_t **p = &t->buckets[i];
    while (*p) {
      node_t *n = *p;
      if (n->at_ms < now_ms - t->retention_ms) {
        *p = n->next;
        atp_free(n);
        t->count--;
      } else {
        p = &n->next;
      }
    }
  }
}

/* Drops every entry written before now - retention, at once: O(n), for a
 * full table only. */
static void t_prune(table_t *t, int64_t now_ms) {
  if (!t->retention_ms) return;
  t_move(t, UINT32_MAX);
  t_prune_range(t, now_ms, 0, t->bucket_count);
}

/* One step of the sweep: up to steps buckets from where the last one
 * stopped. true when the sweep has reached the end. */
static bool t_sweep(table_t *t, int64_t now_ms, uint32_t steps) {
  if (!t->retention_ms || !t->bucket_count) return true;
  if (t->old) t_move(t, steps); /* sweep the current array only */
  uint32_t to =
      t->bucket_count - t->sweep_pos > steps ? t->sweep_pos + steps : t->bucket_count;
  t_prune_range(t, now_ms, t->sweep_pos, to);
  t->sweep_pos = to;
  if (to < t->bucket_count) return false;
  t->sweep_pos = 0;
  return true;
}

/* The entry for key with value val, replaced when it exists (a new node when
 * the value's length changes). NULL with *rc ATP_EFULL / ATP_ENOMEM. */
static node_t *t_put(table_t *t, const void *key, uint32_t len, const void *val,
                     uint32_t val_len, int *rc) {
  *rc = 0;
  node_t *old = t_find(t, key, len);
  if (old && old->val_len == val_len) {
    if (val_len) memcpy(old->data + len, val, val_len);
    return old;
  }
  if (old) t_unlink(t, old);
  if (t->count >= t->max) {
    *rc = ATP_EFULL;
    return NULL;
  }
  if ((t->count >= t->bucket_count && !t->frozen) || !t->bucket_count) {
    if ((*rc = t_grow(t)) != 0) return NULL;
  }
  t_move(t, MOVE_STEP);
  node_t *n = atp_malloc(sizeof *n + len + val_len + 1);
  if (!n) {
    *rc = ATP_ENOMEM;
    return NULL;
  }
  memset(n, 0, sizeof *n);
  n->hash = hash_bytes(key, len);
  n->key_len = len;
  n->val_len = val_len;
  memcpy(n->data, key, len);
  if (val_len) memcpy(n->data + len, val, val_len);
  n->data[len + val_len] = '\0';
  node_t **chain = t_chain(t, n->hash);
  n->next = *chain;
  *chain = n;
  t->count++;
  return n;
}

static void t_free(table_t *t) {
  t_move(t, UINT32_MAX);
  for (uint32_t i = 0; i < t->bucket_count; i++) {
    node_t *n = t->buckets[i];
    while (n) {
      node_t *next = n->next;
      atp_free(n);
      n = next;
    }
  }
  atp_free(t->buckets);
  t->buckets = NULL;
  t->bucket_count = t->count = 0;
}

static const char *n_val(const node_t *n) {
  return n->data + n->key_len;
}

/* --- the state ------------------------------------------------------------------ */

struct atp_shopify {
  atp_shopify_config_t config; /* a copy; access_token owned */
  atp_durable_t *durable;      /* NULL: nothing journaled (tests) */
  pthread_mutex_t mu;          /* every table and enc */
  _Atomic uint32_t waiters;    /* threads in lock(), for a snapshot's walk */
  table_t by_sku;              /* sku -> a: variant, b: item */
  table_t by_variant;          /* u64 variant -> sku */
  table_t by_item;             /* u64 item -> sku */
  table_t by_location;         /* location -> a: shopify location */
  table_t by_shopify_location; /* u64 shopify location -> location */
  table_t levels;              /* u64 item, u64 location -> a: quantity */
  table_t webhooks;            /* "w" id | "c" sha256 -> tag: outcome */
  table_t marks;               /* resource -> a: watermark ms */
  table_t orders;              /* u64 order -> tag: kind, value: reservation */
  int64_t pruned_at_ms;        /* when the sweep in progress (or the last) began */
  bool sweeping;
  uint32_t sweep_table; /* of webhooks, marks, orders */
  int64_t forced_at_ms; /* the last whole sweep of a full table */
  bool restoring;       /* in replay: nothing is journaled */
  atp_buf_t enc;        /* one record's payload */
  _Atomic uint64_t figures[ATP_SHOPIFY_TOPIC_COUNT_][ATP_SHOPIFY_OUTCOME_COUNT_];
  /* Bumped by every mapping that changes something, also in replay: the
   * push walks the positions again when it moves (atp_shopify_mappings_generation). */
  _Atomic uint64_t mappings_generation;
};

/* Every caller takes the mutex through here, so that a snapshot walking the
 * tables (export_table) knows someone waits for it. */
static void lock(atp_shopify_t *s) {
  atomic_fetch_add_explicit(&s->waiters, 1, memory_order_relaxed);
  pthread_mutex_lock(&s->mu);
  atomic_fetch_sub_explicit(&s->waiters, 1, memory_order_relaxed);
}

static void u64_key(uint64_t v, unsigned char out[8]) {
  for (int i = 0; i < 8; i++) out[i] = (unsigned char)(v >> (8 * i));
}

static int journal(atp_shopify_t *s, uint16_t kind) {
  if (!s->durable || s->restoring) return 0;
  if (s->enc.failed) return ATP_ENOMEM;
  return atp_durable_append(s->durable, kind, s->enc.data, (uint32_t)s->enc.len);
}

/* Expired entries go in a sweep that starts once a minute and goes
 * SWEEP_STEP buckets a call (a call is one webhook), so no webhook waits for
 * a walk over millions of entries; a full table is swept whole at once
 * (force), which only a table at its bound pays. */
#define SWEEP_STEP      1024u
#define FORCED_PRUNE_MS 10000
static void prune(atp_shopify_t *s, int64_t now_ms, bool force) {
  table_t *ts[] = {&s->webhooks, &s->marks, &s->orders};
  if (force) {
    /* A table at its bound with nothing expired would otherwise be walked
     * whole on every insert: at most once per FORCED_PRUNE_MS, the inserts
     * between are refused full (503). */
    if (now_ms - s->forced_at_ms < FORCED_PRUNE_MS) return;
    s->forced_at_ms = now_ms;
    for (size_t i = 0; i < 3; i++) t_prune(ts[i], now_ms);
    s->sweeping = false;
    s->pruned_at_ms = now_ms;
    return;
  }
  if (!s->sweeping) {
    if (now_ms - s->pruned_at_ms < PRUNE_INTERVAL_MS) return;
    s->sweeping = true;
    s->sweep_table = 0;
    s->pruned_at_ms = now_ms;
  }
  if (t_sweep(ts[s->sweep_table], s->pruned_at_ms, SWEEP_STEP) && ++s->sweep_table == 3)
    s->sweeping = false;
}

/* --- apply (serving and replay); mu held ------------------------------------ */

/* Removes the SKU's mapping and both reverse entries. */
static void unmap_sku(atp_shopify_t *s, const char *sku, uint32_t len) {
  node_t *old = t_find(&s->by_sku, sku, len);
  if (!old) return;
  unsigned char k[8];
  u64_key((uint64_t)old->a, k);
  t_remove(&s->by_variant, k, 8);
  u64_key((uint64_t)old->b, k);
  t_remove(&s->by_item, k, 8);
  t_unlink(&s->by_sku, old);
}

/* Unmaps whatever SKU the reverse table maps id to. */
static void unmap_reverse(atp_shopify_t *s, table_t *t, const unsigned char key[8]) {
  node_t *r = t_find(t, key, 8);
  if (!r) return;
  char sku[ATP_ID_BYTES_MAX + 1];
  uint32_t len = r->val_len <= ATP_ID_BYTES_MAX ? r->val_len : ATP_ID_BYTES_MAX;
  memcpy(sku, n_val(r), len);
  t_unlink(t, r);
  unmap_sku(s, sku, len);
}

static int apply_item(atp_shopify_t *s, atp_str_t sku, uint64_t variant,
                      uint64_t item) {
  unsigned char vk[8], ik[8];
  u64_key(variant, vk);
  u64_key(item, ik);
  /* One-to-one: what the SKU, the variant or the item meant before goes. */
  unmap_sku(s, sku.ptr, sku.len);
  unmap_reverse(s, &s->by_variant, vk);
  unmap_reverse(s, &s->by_item, ik);
  int rc = 0;
  node_t *n = t_put(&s->by_sku, sku.ptr, sku.len, NULL, 0, &rc);
  if (!n) return rc;
  n->a = (int64_t)variant;
  n->b = (int64_t)item;
  if (!t_put(&s->by_variant, vk, 8, sku.ptr, sku.len, &rc) ||
      !t_put(&s->by_item, ik, 8, sku.ptr, sku.len, &rc)) {
    /* The reverse tables hold as many entries as by_sku: only memory fails. */
    unmap_sku(s, sku.ptr, sku.len);
    return rc;
  }
  atomic_fetch_add(&s->mappings_generation, 1);
  return 0;
}

static int apply_location(atp_shopify_t *s, atp_str_t location, uint64_t shop_loc) {
  unsigned char lk[8];
  u64_key(shop_loc, lk);
  node_t *old = t_find(&s->by_location, location.ptr, location.len);
  if (old) {
    unsigned char k[8];
    u64_key((uint64_t)old->a, k);
    t_remove(&s->by_shopify_location, k, 8);
  }
  node_t *r = t_find(&s->by_shopify_location, lk, 8);
  if (r) t_remove(&s->by_location, n_val(r), r->val_len);
  int rc = 0;
  node_t *n = t_put(&s->by_location, location.ptr, location.len, NULL, 0, &rc);
  if (!n) return rc;
  n->a = (int64_t)shop_loc;
  if (!t_put(&s->by_shopify_location, lk, 8, location.ptr, location.len, &rc)) {
    t_remove(&s->by_location, location.ptr, location.len);
    return rc;
  }
  atomic_fetch_add(&s->mappings_generation, 1);
  return 0;
}

static int apply_level(atp_shopify_t *s, uint64_t item, uint64_t loc, int64_t qty) {
  unsigned char k[16];
  u64_key(item, k);
  u64_key(loc, k + 8);
  int rc = 0;
  node_t *n = t_put(&s->levels, k, 16, NULL, 0, &rc);
  if (n) n->a = qty;
  return rc;
}

static int apply_webhook(atp_shopify_t *s, const void *key, uint32_t len,
                         uint8_t outcome, int64_t at_ms) {
  if (s->restoring && at_ms < atp_wall_ms() - s->webhooks.retention_ms) return 0;
  int rc = 0;
  node_t *n = t_find(&s->webhooks, key, len);
  if (n) return 0; /* the first outcome stays */
  n = t_put(&s->webhooks, key, len, NULL, 0, &rc);
  if (!n) return rc;
  n->tag = outcome;
  n->at_ms = at_ms;
  return 0;
}

static int apply_mark(atp_shopify_t *s, atp_str_t resource, int64_t mark,
                      int64_t at_ms) {
  if (s->restoring && at_ms < atp_wall_ms() - s->marks.retention_ms) return 0;
  node_t *n = t_find(&s->marks, resource.ptr, resource.len);
  int rc = 0;
  if (!n && !(n = t_put(&s->marks, resource.ptr, resource.len, NULL, 0, &rc)))
    return rc;
  if (mark > n->a || n->at_ms == 0) n->a = mark;
  n->at_ms = at_ms;
  return 0;
}

static int apply_order(atp_shopify_t *s, uint64_t order, uint8_t kind,
                       atp_str_t reservation, int64_t at_ms) {
  if (s->restoring && at_ms < atp_wall_ms() - s->orders.retention_ms) return 0;
  unsigned char k[8];
  u64_key(order, k);
  int rc = 0;
  node_t *n = t_put(&s->orders, k, 8, reservation.ptr, reservation.len, &rc);
  if (!n) return rc;
  n->tag = kind;
  n->at_ms = at_ms;
  return 0;
}

/* --- durable section --------------------------------------------------------- */

static void get_str(atp_payload_reader_t *r, atp_str_t *out) {
  atp_payload_get_str(r, &out->ptr, &out->len);
}

static int replay(void *ctx, uint16_t kind, const void *payload, uint32_t len) {
  atp_shopify_t *s = ctx;
  atp_payload_reader_t r;
  atp_payload_reader_init(&r, payload, len);
  atp_str_t str = {NULL, 0};
  uint64_t a = 0, b = 0;
  int64_t c = 0, at = 0;
  uint8_t tag = 0;
  switch (kind) {
    case KIND_ITEM:
    case KIND_LOCATION:
      get_str(&r, &str);
      a = atp_payload_get_u64(&r);
      if (kind == KIND_ITEM) b = atp_payload_get_u64(&r);
      break;
    case KIND_LEVEL:
      a = atp_payload_get_u64(&r);
      b = atp_payload_get_u64(&r);
      c = atp_payload_get_i64(&r);
      break;
    case KIND_WEBHOOK:
      get_str(&r, &str);
      tag = atp_payload_get_u8(&r);
      at = atp_payload_get_i64(&r);
      break;
    case KIND_MARK:
      get_str(&r, &str);
      c = atp_payload_get_i64(&r);
      at = atp_payload_get_i64(&r);
      break;
    case KIND_ORDER:
      a = atp_payload_get_u64(&r);
      tag = atp_payload_get_u8(&r);
      get_str(&r, &str);
      at = atp_payload_get_i64(&r);
      break;
    default:
      return 0; /* 54, 55: kinds of a later release, skipped */
  }
  if (!atp_payload_ok(&r)) return ATP_EBADREQ;
  lock(s);
  s->restoring = true;
  int rc = 0;
  switch (kind) {
    case KIND_ITEM:
      rc = apply_item(s, str, a, b);
      break;
    case KIND_LOCATION:
      rc = apply_location(s, str, a);
      break;
    case KIND_LEVEL:
      rc = apply_level(s, a, b, c);
      break;
    case KIND_WEBHOOK:
      rc = apply_webhook(s, str.ptr, str.len, tag, at);
      break;
    case KIND_MARK:
      rc = apply_mark(s, str, c, at);
      break;
    default:
      rc = apply_order(s, a, tag, str, at);
      break;
  }
  s->restoring = false;
  pthread_mutex_unlock(&s->mu);
  return rc;
}

static void enc_item(atp_buf_t *b, atp_str_t sku, uint64_t variant, uint64_t item) {
  atp_payload_str(b, sku.ptr, sku.len);
  atp_payload_u64(b, variant);
  atp_payload_u64(b, item);
}
static void enc_location(atp_buf_t *b, atp_str_t location, uint64_t shop_loc) {
  atp_payload_str(b, location.ptr, location.len);
  atp_payload_u64(b, shop_loc);
}
static void enc_level(atp_buf_t *b, uint64_t item, uint64_t loc, int64_t qty) {
  atp_payload_u64(b, item);
  atp_payload_u64(b, loc);
  atp_payload_i64(b, qty);
}
static void enc_webhook(atp_buf_t *b, const void *key, uint32_t len, uint8_t outcome,
                        int64_t at) {
  atp_payload_str(b, key, len);
  atp_payload_u8(b, outcome);
  atp_payload_i64(b, at);
}
static void enc_mark(atp_buf_t *b, atp_str_t resource, int64_t mark, int64_t at) {
  atp_payload_str(b, resource.ptr, resource.len);
  atp_payload_i64(b, mark);
  atp_payload_i64(b, at);
}
static void enc_order(atp_buf_t *b, uint64_t order, uint8_t kind, atp_str_t res,
                      int64_t at) {
  atp_payload_u64(b, order);
  atp_payload_u8(b, kind);
  atp_payload_str(b, res.ptr, res.len);
  atp_payload_i64(b, at);
}

static uint64_t key_u64(const node_t *n) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | (unsigned char)n->data[i];
  return v;
}

/* Writes the entries of bucket i as records. */
static int export_chain(table_t *t, uint32_t i, uint16_t kind, atp_buf_t *b,
                        atp_durable_emit_fn emit, void *emit_ctx, uint32_t *since) {
  for (node_t *n = t->buckets[i]; n; n = n->next) {
    atp_buf_reset(b);
    atp_str_t key = {n->data, n->key_len};
    atp_str_t val = {n_val(n), n->val_len};
    switch (kind) {
      case KIND_ITEM:
        enc_item(b, key, (uint64_t)n->a, (uint64_t)n->b);
        break;
      case KIND_LOCATION:
        enc_location(b, key, (uint64_t)n->a);
        break;
      case KIND_LEVEL: {
        uint64_t loc = 0;
        for (int k = 15; k >= 8; k--) loc = loc << 8 | (unsigned char)n->data[k];
        enc_level(b, key_u64(n), loc, n->a);
        break;
      }
      case KIND_WEBHOOK:
        enc_webhook(b, n->data, n->key_len, n->tag, n->at_ms);
        break;
      case KIND_MARK:
        enc_mark(b, key, n->a, n->at_ms);
        break;
      default:
        enc_order(b, key_u64(n), n->tag, val, n->at_ms);
        break;
    }
    if (b->failed) return ATP_ENOMEM;
    int rc = emit(emit_ctx, kind, b->data, (uint32_t)b->len);
    if (rc != 0) return rc;
    (*since)++;
  }
  return 0;
}

/* Entries a snapshot writes between two chances for webhooks to take the
 * mutex: a few milliseconds of the snapshot thread. */
#define EXPORT_STEP 4096u

/* Under s->mu, which it lets go every EXPORT_STEP entries, between buckets
 * (a node is never held across). The snapshot is fuzzy: an entry that
 * changes meanwhile is written or not, and its journal record, after the
 * snapshot's LSN, is replayed on top either way. The table stays frozen
 * (see table_t) for the walk; one that was empty at its start may grow from
 * nothing meanwhile, and its new buckets are walked too. */
static int export_table(atp_shopify_t *s, table_t *t, uint16_t kind, atp_buf_t *b,
                        atp_durable_emit_fn emit, void *emit_ctx) {
  t_move(t, UINT32_MAX); /* one array to walk */
  t->frozen = true;
  int rc = 0;
  uint32_t since = 0;
  for (uint32_t i = 0; i < t->bucket_count && rc == 0; i++) {
    rc = export_chain(t, i, kind, b, emit, emit_ctx, &since);
    if (since >= EXPORT_STEP) {
      /* A waiter woken by the unlock needs tens of microseconds to run and
       * would find the mutex taken again: the walk yields until the threads
       * waiting for it have had their turn (bounded, should they keep
       * coming). */
      pthread_mutex_unlock(&s->mu);
      since = 0;
      for (int spins = 0; atomic_load(&s->waiters) > 0 && spins < 2000; spins++)
        sched_yield();
      pthread_mutex_lock(&s->mu);
    }
  }
  t->frozen = false;
  return rc;
}

/* A snapshot: every table as the records that rebuild it, under the mutex,
 * which export_table lets go every EXPORT_STEP entries: a webhook waits for
 * one step at most, not for the walk over millions of entries. */
static int export_state(void *ctx, atp_durable_emit_fn emit, void *emit_ctx) {
  atp_shopify_t *s = ctx;
  atp_buf_t b;
  atp_buf_init(&b, 0);
  pthread_mutex_lock(&s->mu);
  int rc = export_table(s, &s->by_sku, KIND_ITEM, &b, emit, emit_ctx);
  if (!rc) rc = export_table(s, &s->by_location, KIND_LOCATION, &b, emit, emit_ctx);
  if (!rc) rc = export_table(s, &s->levels, KIND_LEVEL, &b, emit, emit_ctx);
  if (!rc) rc = export_table(s, &s->webhooks, KIND_WEBHOOK, &b, emit, emit_ctx);
  if (!rc) rc = export_table(s, &s->marks, KIND_MARK, &b, emit, emit_ctx);
  if (!rc) rc = export_table(s, &s->orders, KIND_ORDER, &b, emit, emit_ctx);
  pthread_mutex_unlock(&s->mu);
  atp_buf_free(&b);
  return rc;
}

/* --- API ----------------------------------------------------------------------- */

static void table_init(table_t *t, const char *name, uint32_t max, int64_t retention) {
  memset(t, 0, sizeof *t);
  t->name = name;
  t->max = max;
  t->retention_ms = retention;
}

int atp_shopify_create(const atp_shopify_config_t *config, atp_durable_t *d,
                       atp_shopify_t **out) {
  ATP_ASSERT(config && out);
  *out = NULL;
  atp_shopify_t *s = atp_calloc(1, sizeof *s);
  if (!s) return ATP_ENOMEM;
  s->config = *config;
  s->config.access_token = NULL;
  if (config->access_token &&
      !(s->config.access_token = strdup(config->access_token))) {
    atp_free(s);
    return ATP_ENOMEM;
  }
  pthread_mutex_init(&s->mu, NULL);
  table_init(&s->by_sku, "items", ATP_SHOPIFY_ITEMS_MAX, 0);
  table_init(&s->by_variant, "items", ATP_SHOPIFY_ITEMS_MAX, 0);
  table_init(&s->by_item, "items", ATP_SHOPIFY_ITEMS_MAX, 0);
  table_init(&s->by_location, "locations", ATP_SHOPIFY_LOCATIONS_MAX, 0);
  table_init(&s->by_shopify_location, "locations", ATP_SHOPIFY_LOCATIONS_MAX, 0);
  table_init(&s->levels, "levels", ATP_SHOPIFY_LEVELS_MAX, 0);
  table_init(&s->webhooks, "webhooks", ATP_SHOPIFY_WEBHOOKS_MAX,
             ATP_SHOPIFY_WEBHOOK_RETENTION_MS);
  table_init(&s->marks, "watermarks", ATP_SHOPIFY_MARKS_MAX,
             ATP_SHOPIFY_WEBHOOK_RETENTION_MS);
  table_init(&s->orders, "orders", ATP_SHOPIFY_ORDERS_MAX,
             ATP_SHOPIFY_ORDER_RETENTION_MS);
  atp_buf_init(&s->enc, 64 * 1024);
  for (int t = 0; t < ATP_SHOPIFY_TOPIC_COUNT_; t++)
    for (int o = 0; o < ATP_SHOPIFY_OUTCOME_COUNT_; o++)
      atomic_init(&s->figures[t][o], 0);
  atomic_init(&s->mappings_generation, 0);
  s->durable = d;
  if (d) {
    atp_durable_section_t sec = {
        .name = "shopify",
        .kind_first = ATP_SHOPIFY_KIND_FIRST,
        .kind_last = ATP_SHOPIFY_KIND_LAST,
        .replay = replay,
        .export_state = export_state,
        .ctx = s,
    };
    int rc = atp_durable_register(d, &sec);
    if (rc != 0) {
      atp_shopify_destroy(s);
      return rc;
    }
  }
  *out = s;
  return 0;
}

void atp_shopify_destroy(atp_shopify_t *s) {
  if (!s) return;
  table_t *ts[] = {
      &s->by_sku, &s->by_variant, &s->by_item, &s->by_location, &s->by_shopify_location,
      &s->levels, &s->webhooks,   &s->marks,   &s->orders};
  for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) t_free(ts[i]);
  atp_buf_free(&s->enc);
  pthread_mutex_destroy(&s->mu);
  atp_shopify_config_free(&s->config);
  atp_free(s);
}

uint64_t atp_shopify_mappings_generation(atp_shopify_t *s) {
  return atomic_load(&s->mappings_generation);
}

const atp_shopify_config_t *atp_shopify_config(const atp_shopify_t *s) {
  return &s->config;
}

int atp_shopify_map_item(atp_shopify_t *s, atp_str_t sku, uint64_t variant_id,
                         uint64_t inventory_item_id) {
  ATP_ASSERT(sku.len > 0 && variant_id && inventory_item_id);
  lock(s);
  node_t *n = t_find(&s->by_sku, sku.ptr, sku.len);
  int rc = 0;
  if (n && (uint64_t)n->a == variant_id && (uint64_t)n->b == inventory_item_id)
    goto done; /* already so: nothing to journal */
  if ((rc = apply_item(s, sku, variant_id, inventory_item_id)) != 0) goto done;
  atp_buf_reset(&s->enc);
  enc_item(&s->enc, sku, variant_id, inventory_item_id);
  rc = journal(s, KIND_ITEM);
done:
  pthread_mutex_unlock(&s->mu);
  return rc;
}

int atp_shopify_map_location(atp_shopify_t *s, atp_str_t location,
                             uint64_t shopify_location_id) {
  ATP_ASSERT(location.len > 0 && shopify_location_id);
  lock(s);
  node_t *n = t_find(&s->by_location, location.ptr, location.len);
  int rc = 0;
  if (n && (uint64_t)n->a == shopify_location_id) goto done;
  if ((rc = apply_location(s, location, shopify_location_id)) != 0) goto done;
  atp_buf_reset(&s->enc);
  enc_location(&s->enc, location, shopify_location_id);
  rc = journal(s, KIND_LOCATION);
done:
  pthread_mutex_unlock(&s->mu);
  return rc;
}

bool atp_shopify_item_of_sku(atp_shopify_t *s, atp_str_t sku,
                             uint64_t *inventory_item_id, uint64_t *variant_id) {
  lock(s);
  node_t *n = t_find(&s->by_sku, sku.ptr, sku.len);
  if (n) {
    if (inventory_item_id) *inventory_item_id = (uint64_t)n->b;
    if (variant_id) *variant_id = (uint64_t)n->a;
  }
  pthread_mutex_unlock(&s->mu);
  return n != NULL;
}

bool atp_shopify_location_of(atp_shopify_t *s, atp_str_t location,
                             uint64_t *shopify_location_id) {
  lock(s);
  node_t *n = t_find(&s->by_location, location.ptr, location.len);
  if (n && shopify_location_id) *shopify_location_id = (uint64_t)n->a;
  pthread_mutex_unlock(&s->mu);
  return n != NULL;
}

static bool reverse(atp_shopify_t *s, table_t *t, uint64_t id, char *buf, size_t cap) {
  unsigned char k[8];
  u64_key(id, k);
  lock(s);
  node_t *n = t_find(t, k, 8);
  bool found = n && n->val_len < cap;
  if (found) {
    memcpy(buf, n_val(n), n->val_len);
    buf[n->val_len] = '\0';
  }
  pthread_mutex_unlock(&s->mu);
  return found;
}

bool atp_shopify_sku_of_variant(atp_shopify_t *s, uint64_t variant_id, char *buf,
                                size_t cap) {
  return reverse(s, &s->by_variant, variant_id, buf, cap);
}

bool atp_shopify_sku_of_item(atp_shopify_t *s, uint64_t inventory_item_id, char *buf,
                             size_t cap) {
  return reverse(s, &s->by_item, inventory_item_id, buf, cap);
}

bool atp_shopify_location_of_shopify(atp_shopify_t *s, uint64_t shopify_location_id,
                                     char *buf, size_t cap) {
  return reverse(s, &s->by_shopify_location, shopify_location_id, buf, cap);
}

void atp_shopify_counts(atp_shopify_t *s, uint64_t *items, uint64_t *locations,
                        uint64_t *levels, uint64_t *webhooks) {
  lock(s);
  if (items) *items = s->by_sku.count;
  if (locations) *locations = s->by_location.count;
  if (levels) *levels = s->levels.count;
  if (webhooks) *webhooks = s->webhooks.count;
  pthread_mutex_unlock(&s->mu);
}

bool atp_shopify_level_get(atp_shopify_t *s, uint64_t inventory_item_id,
                           uint64_t shopify_location_id, int64_t *quantity) {
  unsigned char k[16];
  u64_key(inventory_item_id, k);
  u64_key(shopify_location_id, k + 8);
  lock(s);
  node_t *n = t_find(&s->levels, k, 16);
  if (n && quantity) *quantity = n->a;
  pthread_mutex_unlock(&s->mu);
  return n != NULL;
}

int atp_shopify_level_set(atp_shopify_t *s, uint64_t inventory_item_id,
                          uint64_t shopify_location_id, int64_t quantity) {
  lock(s);
  int rc = apply_level(s, inventory_item_id, shopify_location_id, quantity);
  if (rc == 0) {
    atp_buf_reset(&s->enc);
    enc_level(&s->enc, inventory_item_id, shopify_location_id, quantity);
    rc = journal(s, KIND_LEVEL);
  }
  pthread_mutex_unlock(&s->mu);
  return rc;
}

/* --- webhooks ------------------------------------------------------------------- */

static const char *const outcome_names[ATP_SHOPIFY_OUTCOME_COUNT_] = {
    "applied", "replayed", "ignored", "dead_letter", "queued", "unauthorized"};
static const char *const topic_names[ATP_SHOPIFY_TOPIC_COUNT_] = {
    "orders/create",  "orders/cancelled",        "fulfillments/create",
    "refunds/create", "inventory_levels/update", "other"};

const char *atp_shopify_outcome_name(atp_shopify_outcome_t o) {
  return o >= 0 && o < ATP_SHOPIFY_OUTCOME_COUNT_ ? outcome_names[o] : "other";
}

const char *atp_shopify_topic_name(atp_shopify_topic_t t) {
  return t >= 0 && t < ATP_SHOPIFY_TOPIC_COUNT_ ? topic_names[t] : "other";
}

atp_shopify_topic_t atp_shopify_topic_of(atp_str_t h) {
  for (int t = 0; t < ATP_SHOPIFY_TOPIC_OTHER; t++)
    if (strlen(topic_names[t]) == h.len && memcmp(topic_names[t], h.ptr, h.len) == 0)
      return (atp_shopify_topic_t)t;
  return ATP_SHOPIFY_TOPIC_OTHER;
}

/* "w" + the id, or "c" + the 32 bytes. */
static uint32_t dedupe_key(char *out, char tag, const void *p, uint32_t len) {
  out[0] = tag;
  memcpy(out + 1, p, len);
  return len + 1;
}

static bool key_usable(const uint8_t key[32]) {
  for (int i = 0; i < 32; i++)
    if (key[i]) return true;
  return false; /* the hash failed: never match on it */
}

bool atp_shopify_webhook_seen(atp_shopify_t *s, atp_str_t webhook_id,
                              const uint8_t content_key[32],
                              atp_shopify_outcome_t *first) {
  char k[ATP_ID_BYTES_MAX + 2];
  int64_t floor = atp_wall_ms() - ATP_SHOPIFY_WEBHOOK_RETENTION_MS;
  lock(s);
  node_t *n = NULL;
  if (webhook_id.len && webhook_id.len <= ATP_ID_BYTES_MAX)
    n = t_find(&s->webhooks, k, dedupe_key(k, 'w', webhook_id.ptr, webhook_id.len));
  if ((!n || n->at_ms < floor) && key_usable(content_key))
    n = t_find(&s->webhooks, k, dedupe_key(k, 'c', content_key, 32));
  bool seen = n && n->at_ms >= floor;
  if (seen && first) *first = (atp_shopify_outcome_t)n->tag;
  pthread_mutex_unlock(&s->mu);
  return seen;
}

static int record_key(atp_shopify_t *s, const char *k, uint32_t len, uint8_t outcome,
                      int64_t now) {
  int rc = apply_webhook(s, k, len, outcome, now);
  if (rc == ATP_EFULL) {
    prune(s, now, true);
    rc = apply_webhook(s, k, len, outcome, now);
  }
  if (rc != 0) return rc;
  atp_buf_reset(&s->enc);
  enc_webhook(&s->enc, k, len, outcome, now);
  return journal(s, KIND_WEBHOOK);
}

int atp_shopify_webhook_record(atp_shopify_t *s, atp_str_t webhook_id,
                               const uint8_t content_key[32],
                               atp_shopify_outcome_t outcome) {
  char k[ATP_ID_BYTES_MAX + 2];
  int64_t now = atp_wall_ms();
  int rc = 0;
  lock(s);
  prune(s, now, false);
  if (webhook_id.len && webhook_id.len <= ATP_ID_BYTES_MAX)
    rc = record_key(s, k, dedupe_key(k, 'w', webhook_id.ptr, webhook_id.len),
                    (uint8_t)outcome, now);
  if (rc == 0 && key_usable(content_key))
    rc = record_key(s, k, dedupe_key(k, 'c', content_key, 32), (uint8_t)outcome, now);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

bool atp_shopify_mark_older(atp_shopify_t *s, atp_str_t resource, int64_t at_ms,
                            int64_t *mark_ms) {
  lock(s);
  node_t *n = t_find(&s->marks, resource.ptr, resource.len);
  bool older = n && at_ms < n->a;
  if (n && mark_ms) *mark_ms = n->a;
  pthread_mutex_unlock(&s->mu);
  return older;
}

int atp_shopify_mark_advance(atp_shopify_t *s, atp_str_t resource, int64_t at_ms) {
  int64_t now = atp_wall_ms();
  lock(s);
  prune(s, now, false);
  node_t *n = t_find(&s->marks, resource.ptr, resource.len);
  int rc = 0;
  if (n && n->a >= at_ms) goto done; /* never lowered; nothing to journal */
  rc = apply_mark(s, resource, at_ms, now);
  if (rc == ATP_EFULL) {
    prune(s, now, true);
    rc = apply_mark(s, resource, at_ms, now);
  }
  if (rc != 0) goto done;
  atp_buf_reset(&s->enc);
  enc_mark(&s->enc, resource, at_ms, now);
  rc = journal(s, KIND_MARK);
done:
  pthread_mutex_unlock(&s->mu);
  return rc;
}

int atp_shopify_order_set(atp_shopify_t *s, uint64_t order_id,
                          atp_shopify_order_kind_t kind, atp_str_t reservation) {
  int64_t now = atp_wall_ms();
  unsigned char k[8];
  u64_key(order_id, k);
  lock(s);
  node_t *n = t_find(&s->orders, k, 8);
  int rc = 0;
  if (n && n->tag == (uint8_t)kind && n->val_len == reservation.len &&
      memcmp(n_val(n), reservation.ptr, reservation.len) == 0)
    goto done;
  rc = apply_order(s, order_id, (uint8_t)kind, reservation, now);
  if (rc == ATP_EFULL) {
    prune(s, now, true);
    rc = apply_order(s, order_id, (uint8_t)kind, reservation, now);
  }
  if (rc != 0) goto done;
  atp_buf_reset(&s->enc);
  enc_order(&s->enc, order_id, (uint8_t)kind, reservation, now);
  rc = journal(s, KIND_ORDER);
done:
  pthread_mutex_unlock(&s->mu);
  return rc;
}

bool atp_shopify_order_get(atp_shopify_t *s, uint64_t order_id,
                           atp_shopify_order_kind_t *kind, char *buf, size_t cap) {
  unsigned char k[8];
  u64_key(order_id, k);
  lock(s);
  node_t *n = t_find(&s->orders, k, 8);
  bool found = n && n->val_len < cap;
  if (found) {
    *kind = (atp_shopify_order_kind_t)n->tag;
    memcpy(buf, n_val(n), n->val_len);
    buf[n->val_len] = '\0';
  }
  pthread_mutex_unlock(&s->mu);
  return found;
}

void atp_shopify_webhook_count(atp_shopify_t *s, atp_shopify_topic_t topic,
                               atp_shopify_outcome_t outcome) {
  ATP_ASSERT(topic >= 0 && topic < ATP_SHOPIFY_TOPIC_COUNT_ && outcome >= 0 &&
             outcome < ATP_SHOPIFY_OUTCOME_COUNT_);
  /* relaxed: a counter read for figures, ordered with nothing. */
  atomic_fetch_add_explicit(&s->figures[topic][outcome], 1, memory_order_relaxed);
}

uint64_t atp_shopify_webhook_figure(atp_shopify_t *s, atp_shopify_topic_t topic,
                                    atp_shopify_outcome_t outcome) {
  ATP_ASSERT(topic >= 0 && topic < ATP_SHOPIFY_TOPIC_COUNT_ && outcome >= 0 &&
             outcome < ATP_SHOPIFY_OUTCOME_COUNT_);
  return atomic_load_explicit(&s->figures[topic][outcome], memory_order_relaxed);
}

/* --- ids ------------------------------------------------------------------------- */

int atp_shopify_id_parse(atp_str_t text, const char *type, uint64_t *out) {
  const char *p = text.ptr;
  size_t n = text.len;
  static const char prefix[] = "gid://shopify/";
  const size_t plen = sizeof prefix - 1;
  if (n > plen && memcmp(p, prefix, plen) == 0) {
    const char *t = p + plen;
    const char *slash = memchr(t, '/', n - plen);
    if (!slash || slash == t) return ATP_EBADREQ;
    size_t tlen = (size_t)(slash - t);
    if (type && (strlen(type) != tlen || memcmp(type, t, tlen) != 0))
      return ATP_EBADREQ;
    n -= (size_t)(slash + 1 - p);
    p = slash + 1;
    /* "gid://shopify/InventoryLevel/1?inventory_item_id=2": the id ends at '?'. */
    const char *q = memchr(p, '?', n);
    if (q) n = (size_t)(q - p);
  }
  if (n == 0 || n > 20) return ATP_EBADREQ;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (p[i] < '0' || p[i] > '9') return ATP_EBADREQ;
    uint64_t d = (uint64_t)(p[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return ATP_EBADREQ;
    v = v * 10 + d;
  }
  if (v == 0) return ATP_EBADREQ;
  *out = v;
  return 0;
}

/* --- configuration ------------------------------------------------------------ */

static int cfg_fail(char *err, size_t err_len, const char *path, const char *fmt,
                    const char *field) {
  char what[200];
  snprintf(what, sizeof what, fmt, field);
  snprintf(err, err_len, "%s: %s", path, what);
  return ATP_EBADREQ;
}

/* A string member into dst (cap bytes with the NUL); absent leaves dst. */
static int cfg_str(const atp_val_t *obj, const char *key, char *dst, size_t cap,
                   bool required, const char *path, char *err, size_t err_len) {
  const atp_val_t *v = atp_val_get(obj, key);
  if (!v || v->type == ATP_VAL_NULL) {
    if (required) return cfg_fail(err, err_len, path, "\"%s\" is required", key);
    return 0;
  }
  if (v->type != ATP_VAL_STR || v->len == 0 || v->len >= cap ||
      memchr(v->u.s, '\0', v->len))
    return cfg_fail(err, err_len, path, "\"%s\" must be a non-empty string", key);
  memcpy(dst, v->u.s, v->len);
  dst[v->len] = '\0';
  return 0;
}

/* The token file's first line, trimmed. */
static int read_token(const char *file, char **out, const char *path, char *err,
                      size_t err_len) {
  FILE *f = fopen(file, "r");
  if (!f) {
    snprintf(err, err_len, "%s: access_token_file \"%s\" cannot be read: %s", path,
             file, strerror(errno));
    return ATP_EBADREQ;
  }
  char line[4096];
  size_t n = fread(line, 1, sizeof line - 1, f);
  fclose(f);
  line[n] = '\0';
  char *end = strpbrk(line, "\r\n");
  if (end) *end = '\0';
  n = strlen(line);
  while (n && (line[n - 1] == ' ' || line[n - 1] == '\t')) line[--n] = '\0';
  if (!n) {
    snprintf(err, err_len, "%s: access_token_file \"%s\" is empty", path, file);
    return ATP_EBADREQ;
  }
  if (!(*out = strdup(line))) return ATP_ENOMEM;
  return 0;
}

static int config_fill(const atp_val_t *root, const char *path, atp_shopify_config_t *c,
                       char *err, size_t err_len) {
  if (root->type != ATP_VAL_OBJECT)
    return cfg_fail(err, err_len, path, "the file must hold one JSON object%s", "");
  int rc = cfg_str(root, "shop", c->shop, sizeof c->shop, true, path, err, err_len);
  if (!rc)
    rc = cfg_str(root, "api_version", c->api_version, sizeof c->api_version, false,
                 path, err, err_len);
  if (!rc)
    rc = cfg_str(root, "admin_url", c->admin_url, sizeof c->admin_url, false, path, err,
                 err_len);
  if (!rc)
    rc = cfg_str(root, "reservation_attribute", c->reservation_attribute,
                 sizeof c->reservation_attribute, false, path, err, err_len);
  if (rc) return rc;
  if (!c->admin_url[0])
    snprintf(c->admin_url, sizeof c->admin_url, "https://%s/admin/api/%s/graphql.json",
             c->shop, c->api_version);
  const atp_val_t *secrets = atp_val_get(root, "webhook_secrets");
  if (!secrets || secrets->type != ATP_VAL_ARRAY || secrets->len < 1 ||
      secrets->len > ATP_SHOPIFY_SECRETS_MAX)
    return cfg_fail(err, err_len, path,
                    "\"%s\" must list 1 or 2 secrets: the current, then the previous",
                    "webhook_secrets");
  for (uint32_t i = 0; i < secrets->len; i++) {
    const atp_val_t *v = &secrets->u.items[i];
    if (v->type != ATP_VAL_STR || v->len == 0 || v->len >= sizeof c->secrets[0] ||
        memchr(v->u.s, '\0', v->len))
      return cfg_fail(err, err_len, path, "\"%s\" must hold non-empty strings",
                      "webhook_secrets");
    memcpy(c->secrets[i], v->u.s, v->len);
    c->secrets[i][v->len] = '\0';
  }
  c->secret_count = secrets->len;
  const atp_val_t *push = atp_val_get(root, "push");
  if (push && push->type != ATP_VAL_OBJECT && push->type != ATP_VAL_NULL)
    return cfg_fail(err, err_len, path, "\"%s\" must be an object", "push");
  if (push && push->type == ATP_VAL_OBJECT) {
    const atp_val_t *en = atp_val_get(push, "enabled");
    if (en && en->type != ATP_VAL_BOOL)
      return cfg_fail(err, err_len, path, "\"%s\" must be true or false",
                      "push.enabled");
    c->push_enabled = en && en->u.b;
    const atp_val_t *pps = atp_val_get(push, "points_per_second");
    if (pps && (pps->type != ATP_VAL_INT || pps->u.i < 1 || pps->u.i > 100000))
      return cfg_fail(err, err_len, path, "\"%s\" must be an integer 1..100000",
                      "push.points_per_second");
    if (pps) c->points_per_second = (uint32_t)pps->u.i;
    const atp_val_t *fm = atp_val_get(push, "fetch_mappings");
    if (fm && fm->type != ATP_VAL_BOOL)
      return cfg_fail(err, err_len, path, "\"%s\" must be true or false",
                      "push.fetch_mappings");
    c->fetch_mappings = fm && fm->u.b;
  }
  char token_file[1024];
  token_file[0] = '\0';
  if ((rc = cfg_str(root, "access_token_file", token_file, sizeof token_file, false,
                    path, err, err_len)) != 0)
    return rc;
  const char *env = getenv("ATPD_SHOPIFY_TOKEN");
  if (token_file[0]) {
    if ((rc = read_token(token_file, &c->access_token, path, err, err_len)) != 0)
      return rc;
  } else if (env && *env) {
    if (!(c->access_token = strdup(env))) return ATP_ENOMEM;
  } else if (c->push_enabled) {
    return cfg_fail(err, err_len, path,
                    "the push needs an access token: set \"%s\" or ATPD_SHOPIFY_TOKEN",
                    "access_token_file");
  }
  return 0;
}

int atp_shopify_config_load(const char *path, atp_shopify_config_t *out, char *err,
                            size_t err_len) {
  ATP_ASSERT(path && out && err);
  memset(out, 0, sizeof *out);
  snprintf(out->api_version, sizeof out->api_version, "2026-10");
  snprintf(out->reservation_attribute, sizeof out->reservation_attribute,
           "_atp_reservation");
  out->points_per_second = 500;
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, err_len, "%s: cannot be read: %s", path, strerror(errno));
    return ATP_EBADREQ;
  }
  char *text = atp_malloc(ATP_SHOPIFY_CONFIG_BYTES_MAX + 1);
  if (!text) {
    fclose(f);
    return ATP_ENOMEM;
  }
  size_t n = fread(text, 1, ATP_SHOPIFY_CONFIG_BYTES_MAX + 1, f);
  fclose(f);
  if (n > ATP_SHOPIFY_CONFIG_BYTES_MAX) {
    atp_free(text);
    snprintf(err, err_len, "%s: is over %u bytes", path,
             (unsigned)ATP_SHOPIFY_CONFIG_BYTES_MAX);
    return ATP_EBADREQ;
  }
  atp_arena_t arena;
  atp_arena_init(&arena, 16 * 1024, 1024 * 1024);
  atp_val_t *root = NULL;
  atp_parse_error_t perr;
  memset(&perr, 0, sizeof perr);
  int rc = atp_codec_parse(ATP_FORMAT_JSON, text, n, &arena, &root, &perr);
  if (rc != 0)
    snprintf(err, err_len, "%s: not JSON at byte %zu: %s", path, perr.offset,
             perr.message);
  else
    rc = config_fill(root, path, out, err, err_len);
  atp_arena_destroy(&arena);
  atp_free(text);
  if (rc != 0) atp_shopify_config_free(out);
  return rc;
}

void atp_shopify_config_free(atp_shopify_config_t *config) {
  if (!config) return;
  if (config->access_token) {
    /* The token leaves no copy in freed memory. */
    memset(config->access_token, 0, strlen(config->access_token));
    free(config->access_token);
  }
  config->access_token = NULL;
}
