/* shopify_push.c - availability out to Shopify's Admin GraphQL API
 * (include/atp/shopify_push.h; CONTRACT.md section 11).
 *
 * One thread runs a libuv loop with a tick timer, libcurl's multi interface
 * (src/flows/http_client.c) and nothing else. Each tick reads what the feed
 * has durable since the read cursor (atpd.position.changed events only),
 * marks each mapped (inventory item, Shopify location) pending, and, when no
 * call is in flight and no backoff or pacing wait runs, builds the next call:
 *
 *   pending   a hash of entries by (item, location) and a FIFO of them in the
 *             order they became pending (their first unpushed event's
 *             sequence rises along it). An entry lives while pending: at most
 *             ATP_SHOPIFY_PUSH_PENDING_MAX of them; at the bound the feed is
 *             not read further until calls free some (backpressure, never a
 *             drop).
 *   a call    the FIFO's first entries, up to ATP_SHOPIFY_PUSH_BATCH_MAX
 *             quantities: `available` read from the engine now (coalescing:
 *             the newest value whatever the backlog), changeFromQuantity the
 *             level last known in Shopify. An entry whose value is already
 *             that level is settled on the spot. Entries with no known level
 *             (or answered stale) are re-read first with one aliased
 *             inventoryItem query of up to ATP_SHOPIFY_PUSH_REREAD_MAX items.
 *   pacing    a call waits until Shopify's bucket (as last reported, refilled
 *             at its restore rate since) and atpd's own share (a token bucket
 *             at push.points_per_second) both hold its estimated cost.
 *   answers   success: atp_shopify_level_set for each quantity, the entries
 *             settle (or go to the FIFO's tail when a change came during the
 *             call). THROTTLED (HTTP 200 or 429): wait for the bucket to hold
 *             the cost, with jitter. 5xx, transport errors, other GraphQL
 *             errors: exponential backoff with jitter. userErrors
 *             CHANGE_FROM_QUANTITY_STALE: the named quantities are re-read and
 *             the call built again; another userError drops its quantity
 *             (counted in errors, named in last_error), or, naming none,
 *             fails the call (backoff; dropped after REFUSED_MAX in a row).
 *   resync    the walk's and the fetch's entries wait in a queue of their
 *             own that a call takes from only after the FIFO.
 *
 * Durability (proto/journal.md, kinds 56..58). The durable cursor is the
 * sequence below the FIFO's head (or the read cursor when nothing is
 * pending): every change at or below it is in Shopify or was found there.
 * A call is journaled (57) before it is sent and settled (58) once its
 * answer is handled; at start the calls not settled are sent again first,
 * byte for byte, so their idempotency key replays what Shopify already
 * applied. A call whose journal record did not reach the disk before a crash
 * is rebuilt from the feed and sent with the level atpd knew: Shopify answers
 * CHANGE_FROM_QUANTITY_STALE if it had applied it, and the re-read finds the
 * value there. So nothing is lost (the feed from the cursor is read again)
 * and nothing is applied twice.
 */
#include "atp/shopify_push.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "atp/assert.h"
#include "atp/clock.h"
#include "atp/codec.h"
#include "atp/error.h"
#include "atp/http_client.h"
#include "atp/limits.h"
#include "atp/log.h"
#include "atp/memory.h"
#include "atp/payload.h"

#define KIND_CURSOR  56u /* u64 cursor */
#define KIND_CALL    57u /* a call about to be sent (below) */
#define KIND_SETTLED 58u /* lstr key: that call's answer was handled */

#define TICK_MS            10
#define FEED_PAGE          1000u
#define FEED_PAGES_A_TICK  8u
#define CURSOR_WRITE_MS    100 /* the cursor record at most this often */
#define BACKOFF_MS_MIN     200
#define BACKOFF_MS_MAX     5000
#define BUCKETS_MIN        1024u
#define KEY_BYTES          37 /* "atpd-" + 32 hex digits */
#define SAVED_ATTEMPTS_MAX 5
#define DEFER_MS           1000
#define FETCH_PAGES_MAX    100000u /* pages of one phase of the mapping fetch */
/* Estimated costs before Shopify reported any (Shopify charges a mutation
 * 10 points; a level read is a few). */
#define COST_MUTATION_DEFAULT 10.0
#define COST_REREAD_DEFAULT   4.0
#define COST_FETCH_DEFAULT    502.0 /* a connection of 250 nodes with an object each */
/* A requested cost above this is not believed (Shopify's single query
 * maximum is 1000 points). */
#define COST_MAX 1e6
/* Shopify's bucket fills from empty in 20 s on a standard plan (1000 points
 * at 50 a second); a bucket said to take longer than this is not believed. */
#define BUCKET_FILL_MS_MAX 60000.0

static const char PUSH_DOC[] =
    "mutation AtpdPush($input: InventorySetQuantitiesInput!, $key: String!) {"
    " inventorySetQuantities(input: $input) @idempotent(key: $key) {"
    " inventoryAdjustmentGroup { id } userErrors { field message code } } }";

typedef struct entry entry_t;
struct entry {
  uint64_t item, location;   /* the key: Shopify ids */
  uint64_t first_seq;        /* oldest change not yet pushed */
  int64_t first_at_ms;       /* its time (lag) */
  uint64_t last_seq;         /* newest change seen */
  uint64_t again_seq;        /* 0, or the first change seen during a call */
  int64_t again_at_ms;       /* its time */
  bool in_call;              /* in the call in flight */
  bool need_read;            /* Shopify's figure must be read before a push */
  bool no_level;             /* read: Shopify holds no level there yet */
  bool resync;               /* in the resync queue (walk, sync), not the FIFO */
  uint64_t version_seen;     /* the newest position version the feed showed */
  int64_t deferred_ms;       /* 0, or since when (mono) the engine is ahead */
  entry_t *hash_next;        /* bucket chain */
  entry_t *prev, *next;      /* the FIFO */
  uint16_t sku_len, loc_len; /* the engine's key, in text[] */
  char text[];               /* sku, then location */
};

/* One quantity of a call. */
typedef struct {
  uint64_t item, location;
  int64_t quantity, from;
  bool from_null; /* Shopify holds no level: changeFromQuantity null */
  entry_t *entry; /* NULL for a call sent again after a restart */
} quantity_t;

/* A call journaled and not settled: sent again first at start. */
typedef struct {
  char key[KEY_BYTES + 1];
  uint64_t reference;
  uint32_t count;
  uint32_t attempts; /* sent again and not answered */
  quantity_t *quantities;
} saved_call_t;

typedef enum { CALL_NONE, CALL_PUSH, CALL_REREAD, CALL_FETCH } call_kind_t;

/* push.fetch_mappings: the pages to fetch before anything is pushed. */
typedef enum { FETCH_NONE, FETCH_LOCATIONS, FETCH_VARIANTS } fetch_t;

static const char FETCH_LOCATIONS_DOC[] =
    "query AtpdLocations($after: String) { locations(first: 250, after: $after) {"
    " nodes { id name } pageInfo { hasNextPage endCursor } } }";
static const char FETCH_VARIANTS_DOC[] =
    "query AtpdVariants($after: String) { productVariants(first: 250, after: $after) {"
    " nodes { id sku inventoryItem { id } } pageInfo { hasNextPage endCursor } } }";

struct atp_shopify_push {
  atp_shopify_t *shopify;
  const atp_shopify_config_t *config;
  atp_durable_t *durable;
  atp_feed_t *feed;
  atp_engine_t *engine;
  pthread_t thread;
  bool started;
  atomic_bool stopping;

  /* loop thread only */
  uv_loop_t loop;
  uv_timer_t tick;
  uv_async_t stop;
  atp_http_client_t *http;
  uint32_t handles_open;
  char auth_header[600];
  char url[512];

  /* the feed */
  uint64_t read_cursor;    /* events up to it were examined */
  bool has_cursor;         /* false: from the oldest retained */
  uint64_t read_durable;   /* durable LSN at the last read that was not full */
  uint64_t written_cursor; /* the last cursor journaled */
  int64_t cursor_written_ms;
  bool progress;  /* events taken or entries settled since the last cursor write */
  bool read_redo; /* a read stopped short of memory ... */
  uint64_t redo_cursor; /* ... and goes on after this sequence */

  /* pending */
  entry_t **buckets;
  uint32_t bucket_count; /* a power of two */
  uint32_t entries;
  entry_t *head, *tail;
  /* The resync queue: entries made pending by the walk or the fetch's sync
   * (first_seq rises along it too). A call takes them only after the
   * FIFO's, so a resync of many positions does not delay live changes. */
  entry_t *rhead, *rtail;

  /* the call in flight */
  call_kind_t call;
  quantity_t quantities[ATP_SHOPIFY_PUSH_BATCH_MAX];
  uint32_t quantity_count;
  entry_t *reread[ATP_SHOPIFY_PUSH_REREAD_MAX];
  uint32_t reread_count;
  char call_key[KEY_BYTES + 1];
  uint32_t key_salt; /* see build_push_body */
  /* The same call refused by a userError that names no quantity: its key
   * and how many times in a row (see push_refused). */
  char refused_key[KEY_BYTES + 1];
  uint32_t refused_count;
  bool call_saved; /* a saved call sent again: settle it whatever comes */
  double call_cost;
  atp_buf_t body;
  atp_arena_t arena;

  /* ATPD_TEST_SHOPIFY_PUSH_HOLD_FILE (tests only): while this file exists
   * the push reads nothing from the feed, so a test can let the feed run
   * ahead of it (a cursor that expires, a read that stops at the scan cap). */
  char hold_file[256];
  /* the mapping fetch (push.fetch_mappings): loop thread */
  fetch_t fetch;
  char fetch_after[512]; /* the page cursor; "" for the first page */
  uint32_t fetch_pages;  /* pages of this phase so far */
  uint64_t fetched_items, fetched_locations;
  uint64_t synced;                /* positions made pending by the fetch */
  atp_position_t *sync_positions; /* ATP_SKU_LOCATIONS_MAX, once needed */

  /* the resync walk: every position again when the mappings moved */
  uint64_t walk_generation; /* the mappings' generation the last walk began at */
  bool walking;
  uint32_t walk_next, walk_upto; /* creation indexes left: walk_next .. upto - 1 */
  uint64_t walks, walked;        /* walks begun; positions made pending by them */

  /* calls to send again (restored); loop thread after start */
  saved_call_t saved[ATP_SHOPIFY_PUSH_SAVED_CALLS_MAX];
  uint32_t saved_count;

  /* pacing */
  int64_t wait_until_ms; /* mono: no call before */
  int64_t backoff_ms;
  bool bucket_known;
  double bucket_max, bucket_available, restore_rate;
  int64_t bucket_at_ms;
  double share_tokens;
  int64_t share_at_ms;
  double cost_mutation, cost_reread;               /* the last requested costs ... */
  uint32_t cost_mutation_units, cost_reread_units; /* ... and their calls' sizes */
  double cost_fetch;                               /* a page of the mapping fetch */
  uint64_t rng;

  /* figures: written on the loop thread, read by stats under the mutex */
  pthread_mutex_t stats_lock;
  atp_shopify_push_stats_t stats;
  atomic_uint_fast64_t durable_cursor; /* for export_state */
};

/* --- small helpers ---------------------------------------------------------- */

static uint64_t rand_next(atp_shopify_push_t *p) { /* xorshift64* */
  p->rng ^= p->rng >> 12;
  p->rng ^= p->rng << 25;
  p->rng ^= p->rng >> 27;
  return p->rng * 2685821657736338717ull;
}

/* d with jitter: uniformly in [d/2, d]. */
static int64_t jitter(atp_shopify_push_t *p, int64_t d) {
  if (d <= 1) return d;
  return d / 2 + (int64_t)(rand_next(p) % (uint64_t)(d / 2 + 1));
}

static void set_error(atp_shopify_push_t *p, bool count, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_error(atp_shopify_push_t *p, bool count, const char *fmt, ...) {
  char text[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&p->stats_lock);
  if (count) p->stats.errors++;
  snprintf(p->stats.last_error, sizeof p->stats.last_error, "%s", text);
  pthread_mutex_unlock(&p->stats_lock);
}

static double num(const atp_val_t *v, double dflt) {
  if (!v) return dflt;
  if (v->type == ATP_VAL_INT) return (double)v->u.i;
  if (v->type == ATP_VAL_FLOAT) return v->u.f;
  return dflt;
}

static bool str_is(const atp_val_t *v, const char *s) {
  return v && v->type == ATP_VAL_STR && v->len == strlen(s) &&
         memcmp(v->u.s, s, v->len) == 0;
}

/* 128 bits of two independent 64-bit mixes of the bytes, as hex: the call's
 * idempotency key. Not a security boundary (the key only has to be the same
 * for the same input and differ for different ones). */
static void make_key(const char *data, size_t len, char out[KEY_BYTES + 1]) {
  uint64_t a = 0xcbf29ce484222325ull, b = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < len; i++) {
    a = (a ^ (unsigned char)data[i]) * 0x100000001b3ull;
    b = (b + (unsigned char)data[i]) * 0xff51afd7ed558ccdull;
    b ^= b >> 29;
  }
  a ^= a >> 33;
  a *= 0xc4ceb9fe1a85ec53ull;
  a ^= a >> 33;
  snprintf(out, KEY_BYTES + 1, "atpd-%016" PRIx64 "%016" PRIx64, a, b);
}

/* --- pending entries -------------------------------------------------------- */

static uint32_t entry_hash(uint64_t item, uint64_t location) {
  uint64_t h = item * 0x9e3779b97f4a7c15ull ^ (location + 0x632be59bd9b4e019ull);
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 29;
  return (uint32_t)h;
}

static entry_t *entry_find(atp_shopify_push_t *p, uint64_t item, uint64_t location) {
  entry_t *e = p->buckets[entry_hash(item, location) & (p->bucket_count - 1)];
  while (e && (e->item != item || e->location != location)) e = e->hash_next;
  return e;
}

static void grow_buckets(atp_shopify_push_t *p) {
  uint32_t n = p->bucket_count * 2;
  entry_t **b = atp_calloc(n, sizeof *b);
  if (!b) return; /* longer chains, still correct */
  for (uint32_t i = 0; i < p->bucket_count; i++) {
    entry_t *e = p->buckets[i];
    while (e) {
      entry_t *next = e->hash_next;
      uint32_t j = entry_hash(e->item, e->location) & (n - 1);
      e->hash_next = b[j];
      b[j] = e;
      e = next;
    }
  }
  atp_free(p->buckets);
  p->buckets = b;
  p->bucket_count = n;
}

/* e goes at the tail of its list: the resync queue or the FIFO. */
static void fifo_append(atp_shopify_push_t *p, entry_t *e) {
  entry_t **head = e->resync ? &p->rhead : &p->head;
  entry_t **tail = e->resync ? &p->rtail : &p->tail;
  e->next = NULL;
  e->prev = *tail;
  if (*tail)
    (*tail)->next = e;
  else
    *head = e;
  *tail = e;
}

static void fifo_remove(atp_shopify_push_t *p, entry_t *e) {
  entry_t **head = e->resync ? &p->rhead : &p->head;
  entry_t **tail = e->resync ? &p->rtail : &p->tail;
  if (e->prev)
    e->prev->next = e->next;
  else
    *head = e->next;
  if (e->next)
    e->next->prev = e->prev;
  else
    *tail = e->prev;
  e->prev = e->next = NULL;
}

/* Puts e in the FIFO where its first_seq belongs: the FIFO stays ordered by
 * first_seq, which safe_cursor relies on. Searched back from the tail, as
 * the change that re-pends an entry came during its call, so recently. */
static void fifo_insert_ordered(atp_shopify_push_t *p, entry_t *e) {
  ATP_ASSERT(!e->resync);
  entry_t *after = p->tail;
  while (after && after->first_seq > e->first_seq) after = after->prev;
  if (after == p->tail) {
    fifo_append(p, e);
    return;
  }
  e->prev = after;
  e->next = after ? after->next : p->head;
  e->next->prev = e;
  if (after)
    after->next = e;
  else
    p->head = e;
}

/* The entry is pushed (or found in Shopify): gone, unless a change came
 * during its call, which makes it pending again in the FIFO at that
 * change's place (entries made pending after it stay behind it: the durable
 * cursor must not pass it). */
static void entry_settle(atp_shopify_push_t *p, entry_t *e) {
  ATP_ASSERT(!e->in_call);
  p->progress = true;
  fifo_remove(p, e);
  if (e->again_seq) { /* a live change: the FIFO, whichever list it was in */
    e->resync = false;
    e->first_seq = e->again_seq;
    e->first_at_ms = e->again_at_ms;
    e->again_seq = 0;
    fifo_insert_ordered(p, e);
    return;
  }
  entry_t **pp = &p->buckets[entry_hash(e->item, e->location) & (p->bucket_count - 1)];
  while (*pp != e) pp = &(*pp)->hash_next;
  *pp = e->hash_next;
  p->entries--;
  atp_free(e);
}

/* Marks (item, location) pending for a change at seq (the cursor's view:
 * the entry keeps the cursor below it) naming reference, at_ms and version;
 * creates the entry, in the resync queue when resync (the walk, the sync).
 * A live change of an entry waiting in the resync queue moves it to the
 * FIFO's tail with that change's seq: the resync's part of it needs no
 * cursor, as a restart walks the positions again. false when out of
 * memory. */
static bool entry_mark(atp_shopify_push_t *p, uint64_t item, uint64_t location,
                       atp_str_t sku, atp_str_t loc, uint64_t seq, uint64_t reference,
                       int64_t at_ms, uint64_t version, bool resync) {
  entry_t *e = entry_find(p, item, location);
  if (!e) {
    e = atp_malloc(sizeof *e + sku.len + loc.len);
    if (!e) return false;
    memset(e, 0, sizeof *e);
    e->item = item;
    e->location = location;
    e->sku_len = (uint16_t)sku.len;
    e->loc_len = (uint16_t)loc.len;
    memcpy(e->text, sku.ptr, sku.len);
    memcpy(e->text + sku.len, loc.ptr, loc.len);
    uint32_t b = entry_hash(item, location) & (p->bucket_count - 1);
    e->hash_next = p->buckets[b];
    p->buckets[b] = e;
    if (++p->entries > p->bucket_count) grow_buckets(p);
    e->first_seq = seq;
    e->first_at_ms = at_ms;
    e->resync = resync;
    fifo_append(p, e);
  } else if (e->resync && !resync && !e->in_call) {
    fifo_remove(p, e);
    e->resync = false;
    e->first_seq = seq;
    e->first_at_ms = at_ms;
    fifo_append(p, e);
  } else if (e->in_call && !e->again_seq && !resync) {
    e->again_seq = seq;
    e->again_at_ms = at_ms;
  }
  if (reference > e->last_seq) e->last_seq = reference;
  if (version > e->version_seen) {
    e->version_seen = version;
    e->deferred_ms = 0;
  }
  return true;
}

/* --- the feed ---------------------------------------------------------------- */

static int on_event(void *ctx, const atp_feed_event_t *ev) {
  atp_shopify_push_t *p = ctx;
  const atp_change_t *c = ev->record;
  p->progress = true;
  if (!c || c->kind != ATP_CHANGE_POSITION) return 0;
  const atp_change_position_t *pos = &c->u.position;
  uint64_t item = 0, variant = 0, location = 0;
  if (!atp_shopify_item_of_sku(p->shopify, pos->sku, &item, &variant) ||
      !atp_shopify_location_of(p->shopify, pos->location, &location))
    return 0; /* not mapped: not Shopify's */
  if (!entry_mark(p, item, location, pos->sku, pos->location, ev->sequence,
                  ev->sequence, c->at_ms, pos->version, false)) {
    /* The read stops here; this event is read again next time. */
    p->read_redo = true;
    p->redo_cursor = ev->sequence - 1;
    return ATP_ENOMEM;
  }
  return 0;
}

/* Reads what became durable, a few pages a tick, within the pending bound. */
static void read_feed(atp_shopify_push_t *p) {
  static const atp_feed_filter_t filter = {.type = {"atpd.position.changed", 21}};
  /* While the mappings are fetched, a change of a position not mapped yet
   * would be skipped as not Shopify's: the feed waits for the fetch. */
  if (p->fetch != FETCH_NONE) return;
  if (p->hold_file[0] && access(p->hold_file, F_OK) == 0) return; /* tests only */
  for (uint32_t page = 0; page < FEED_PAGES_A_TICK; page++) {
    uint64_t durable = atp_feed_durable_lsn(p->feed);
    if (durable <= p->read_durable) return;
    if (p->entries + FEED_PAGE > ATP_SHOPIFY_PUSH_PENDING_MAX) return; /* full */
    uint64_t next = p->read_cursor;
    uint32_t count = 0;
    int rc = atp_feed_read(p->feed, p->read_cursor, p->has_cursor, &filter, FEED_PAGE,
                           on_event, p, &next, &count);
    if (rc == ATP_EEXPIRED) {
      /* Changes between the cursor and the oldest retained event are gone
       * from the feed: a resync walk (the generation made to differ) makes
       * every mapped position pending again, so none of them is missed. */
      atp_log("warn",
              "shopify push: the cursor %" PRIu64
              " is older than the retained feed; going on from the oldest and"
              " walking every mapped position again",
              p->read_cursor);
      set_error(p, true, "the push cursor was older than the retained feed; resyncing");
      p->has_cursor = false;
      p->walk_generation = atp_shopify_mappings_generation(p->shopify) - 1;
      continue;
    }
    if (rc != 0) {
      set_error(p, true, "reading the change feed: %s", atp_strerror(rc));
      return;
    }
    if (p->read_redo) { /* the event that found no memory was handed out */
      p->read_redo = false;
      next = p->redo_cursor;
      count = 0;
      rc = ATP_ENOMEM;
    }
    bool moved = next != p->read_cursor;
    if (moved || count) {
      p->read_cursor = next;
      p->has_cursor = true;
    }
    if (rc == ATP_ENOMEM) {
      set_error(p, true, "reading the change feed: %s", atp_strerror(rc));
      return;
    }
    /* Fewer events than a page is not the end of what is durable: the read
     * also stops at its scan cap (ATP_FEED_SCAN_MAX records). Only a cursor
     * at the durable LSN says that all of it was read. */
    if (next / ATP_FEED_INDEX_SPAN >= durable) {
      p->read_durable = durable;
      return;
    }
    if (count < FEED_PAGE && !moved) return; /* nothing more to read now */
  }
}

/* The cursor below which everything is in Shopify. */
static uint64_t safe_cursor(const atp_shopify_push_t *p) {
  uint64_t cursor = p->read_cursor;
  const entry_t *heads[2] = {p->head, p->rhead};
  for (int i = 0; i < 2; i++) {
    if (!heads[i]) continue;
    uint64_t below = heads[i]->first_seq ? heads[i]->first_seq - 1 : 0;
    if (below < cursor) cursor = below;
  }
  return cursor;
}

static void write_cursor(atp_shopify_push_t *p, bool force) {
  int64_t now = atp_mono_ms();
  if (!p->progress || (!force && now - p->cursor_written_ms < CURSOR_WRITE_MS)) return;
  uint64_t cursor = safe_cursor(p);
  p->progress = false;
  if (cursor == p->written_cursor || (!p->has_cursor && !p->head && !p->rhead)) return;
  unsigned char buf[8];
  atp_buf_t b = {.data = (char *)buf, .cap = sizeof buf};
  atp_payload_u64(&b, cursor);
  int rc = atp_durable_append(p->durable, KIND_CURSOR, buf, (uint32_t)b.len);
  if (rc != 0) {
    set_error(p, false, "journaling the push cursor: %s", atp_strerror(rc));
    p->progress = true;
    return;
  }
  p->written_cursor = cursor;
  p->cursor_written_ms = now;
  atomic_store_explicit(&p->durable_cursor, cursor, memory_order_relaxed);
}

/* --- pacing ------------------------------------------------------------------ */

/* The longest wait pacing may ask for: the time Shopify's bucket takes to
 * fill from empty, and at least BACKOFF_MS_MAX. The figures come from the
 * answers, so a wild one must not park the push for years (or overflow the
 * cast to int64). */
static double wait_cap_ms(const atp_shopify_push_t *p) {
  double cap = BACKOFF_MS_MAX;
  if (p->bucket_known && p->restore_rate > 0) {
    double fill = p->bucket_max / p->restore_rate * 1000;
    if (fill > cap) cap = fill;
  }
  return cap < BUCKET_FILL_MS_MAX ? cap : BUCKET_FILL_MS_MAX;
}

/* ms until both buckets hold cost; 0: now. */
static int64_t pace_wait_ms(atp_shopify_push_t *p, double cost, int64_t now) {
  double wait = 0;
  if (p->bucket_known && p->restore_rate > 0) {
    double avail =
        p->bucket_available + p->restore_rate * (double)(now - p->bucket_at_ms) / 1000;
    if (avail > p->bucket_max) avail = p->bucket_max;
    double need = cost < p->bucket_max ? cost : p->bucket_max;
    if (avail < need) wait = (need - avail) / p->restore_rate * 1000;
  }
  double pps = p->config->points_per_second;
  if (pps > 0) {
    double cap = pps > cost ? pps : cost; /* a second's worth, at least one call */
    p->share_tokens += pps * (double)(now - p->share_at_ms) / 1000;
    if (p->share_tokens > cap) p->share_tokens = cap;
    p->share_at_ms = now;
    if (p->share_tokens < cost) {
      double w = (cost - p->share_tokens) / pps * 1000;
      if (w > wait) wait = w;
    }
  }
  double cap = wait_cap_ms(p);
  if (wait > cap) wait = cap;
  return wait > 0 ? (int64_t)wait + 1 : 0;
}

static void spend(atp_shopify_push_t *p, double cost, int64_t now) {
  if (p->config->points_per_second > 0) p->share_tokens -= cost;
  if (p->bucket_known) {
    double avail =
        p->bucket_available + p->restore_rate * (double)(now - p->bucket_at_ms) / 1000;
    if (avail > p->bucket_max) avail = p->bucket_max;
    p->bucket_available = avail - cost;
    p->bucket_at_ms = now;
  }
}

/* extensions.cost of an answer: the bucket as Shopify sees it now. */
static void read_cost(atp_shopify_push_t *p, const atp_val_t *root, call_kind_t kind,
                      uint32_t units) {
  const atp_val_t *cost = atp_val_get(atp_val_get(root, "extensions"), "cost");
  if (!cost || cost->type != ATP_VAL_OBJECT) return;
  double requested = num(atp_val_get(cost, "requestedQueryCost"), -1);
  double actual = num(atp_val_get(cost, "actualQueryCost"), -1);
  const atp_val_t *ts = atp_val_get(cost, "throttleStatus");
  if (requested > 0 && requested <= COST_MAX && units) { /* the next call's estimate */
    if (kind == CALL_FETCH) {
      p->cost_fetch = requested;
    } else if (kind == CALL_PUSH) {
      p->cost_mutation = requested;
      p->cost_mutation_units = units;
    } else {
      p->cost_reread = requested;
      p->cost_reread_units = units;
    }
  }
  if (ts && ts->type == ATP_VAL_OBJECT) {
    double max = num(atp_val_get(ts, "maximumAvailable"), -1);
    double avail = num(atp_val_get(ts, "currentlyAvailable"), -1);
    double rate = num(atp_val_get(ts, "restoreRate"), -1);
    /* Figures out of range (a negative bucket, a rate of nothing, more
     * available than the maximum) are not believed: the last good ones stay
     * and the throttles, if any, teach the rest. */
    if (max > 0 && max <= COST_MAX && avail >= 0 && avail <= max && rate > 0 &&
        max / rate * 1000 <= BUCKET_FILL_MS_MAX) {
      p->bucket_max = max;
      p->bucket_available = avail;
      p->restore_rate = rate;
      p->bucket_at_ms = atp_mono_ms();
      p->bucket_known = true;
    }
  }
  pthread_mutex_lock(&p->stats_lock);
  if (actual > 0) p->stats.points_spent += (uint64_t)(actual + 0.5);
  p->stats.points_available = p->bucket_available;
  p->stats.restore_rate = p->restore_rate;
  pthread_mutex_unlock(&p->stats_lock);
}

/* The last such call's requested cost, scaled up (never down) by size: right
 * whether Shopify charges a call flat (a mutation is 10 points) or by item,
 * and never under, so pacing does not run into throttles. */
static double call_cost_estimate(const atp_shopify_push_t *p, call_kind_t kind,
                                 uint32_t units) {
  if (kind == CALL_FETCH) return p->cost_fetch;
  double cost = kind == CALL_PUSH ? p->cost_mutation : p->cost_reread;
  uint32_t last = kind == CALL_PUSH ? p->cost_mutation_units : p->cost_reread_units;
  if (last && units > last) cost = cost * units / last;
  return cost > 1 ? cost : 1;
}

static void back_off(atp_shopify_push_t *p) {
  p->backoff_ms = p->backoff_ms ? p->backoff_ms * 2 : BACKOFF_MS_MIN;
  if (p->backoff_ms > BACKOFF_MS_MAX) p->backoff_ms = BACKOFF_MS_MAX;
  p->wait_until_ms = atp_mono_ms() + jitter(p, p->backoff_ms);
}

/* A throttle: wait until Shopify's bucket holds the call again, plus jitter
 * so that atpd does not arrive exactly when another app does. */
static void throttled(atp_shopify_push_t *p) {
  pthread_mutex_lock(&p->stats_lock);
  p->stats.throttled++;
  pthread_mutex_unlock(&p->stats_lock);
  int64_t now = atp_mono_ms();
  int64_t wait = BACKOFF_MS_MIN;
  if (p->bucket_known && p->restore_rate > 0) {
    double w = (p->call_cost - p->bucket_available) / p->restore_rate * 1000;
    if (w > BACKOFF_MS_MAX) w = BACKOFF_MS_MAX; /* before the cast: w may be huge */
    if (w > wait) wait = (int64_t)w;
  }
  if (wait > BACKOFF_MS_MAX) wait = BACKOFF_MS_MAX;
  p->wait_until_ms = now + wait + jitter(p, wait / 2);
}

/* --- building and sending calls --------------------------------------------- */

static void w_gid(atp_writer_t *w, const char *type, uint64_t id) {
  char gid[64];
  int n = snprintf(gid, sizeof gid, "gid://shopify/%s/%" PRIu64, type, id);
  atp_w_str(w, gid, (size_t)n);
}

/* The mutation's body for the quantities: {query, variables: {input, key}};
 * the key is a hash of the input's bytes. */
static int build_push_body(atp_shopify_push_t *p, const quantity_t *q, uint32_t count,
                           uint64_t reference, char key[KEY_BYTES + 1]) {
  atp_buf_t *b = &p->body;
  atp_buf_reset(b);
  atp_writer_t w;
  atp_writer_init(&w, ATP_FORMAT_JSON, b);
  atp_w_object_begin(&w);
  atp_w_key(&w, "query");
  atp_w_str(&w, PUSH_DOC, sizeof PUSH_DOC - 1);
  atp_w_key(&w, "variables");
  atp_w_object_begin(&w);
  atp_w_key(&w, "input");
  size_t input_at = b->len;
  atp_w_object_begin(&w);
  atp_w_key(&w, "name");
  atp_w_cstr(&w, "available");
  atp_w_key(&w, "reason");
  atp_w_cstr(&w, "correction");
  char seq[21], uri[48];
  atp_feed_sequence_format(reference, seq);
  int n = snprintf(uri, sizeof uri, "gid://atpd/Change/%s", seq);
  atp_w_key(&w, "referenceDocumentUri");
  atp_w_str(&w, uri, (size_t)n);
  atp_w_key(&w, "quantities");
  atp_w_array_begin(&w);
  for (uint32_t i = 0; i < count; i++) {
    atp_w_object_begin(&w);
    atp_w_key(&w, "inventoryItemId");
    w_gid(&w, "InventoryItem", q[i].item);
    atp_w_key(&w, "locationId");
    w_gid(&w, "Location", q[i].location);
    atp_w_key(&w, "quantity");
    atp_w_int(&w, q[i].quantity);
    atp_w_key(&w, "changeFromQuantity");
    if (q[i].from_null)
      atp_w_null(&w);
    else
      atp_w_int(&w, q[i].from);
    atp_w_object_end(&w);
  }
  atp_w_array_end(&w);
  atp_w_object_end(&w);
  if (b->failed) return ATP_ENOMEM;
  /* The salt is 0 but after Shopify refused a key (a previous attempt with
   * it failed): the same input then needs another key. */
  if (p->key_salt) atp_buf_printf(b, "#%u", p->key_salt);
  make_key(b->data + input_at, b->len - input_at, key);
  if (p->key_salt) b->len -= (size_t)snprintf(NULL, 0, "#%u", p->key_salt);
  atp_w_key(&w, "key");
  atp_w_str(&w, key, KEY_BYTES);
  atp_w_object_end(&w);
  atp_w_object_end(&w);
  return b->failed ? ATP_ENOMEM : 0;
}

/* One aliased query reading each entry's `available` at its location. */
static int build_reread_body(atp_shopify_push_t *p) {
  atp_buf_t doc, *b = &p->body;
  atp_buf_init(&doc, 0);
  atp_buf_printf(&doc, "query AtpdLevels(");
  for (uint32_t i = 0; i < p->reread_count; i++)
    atp_buf_printf(&doc, "%s$i%u: ID!, $l%u: ID!", i ? ", " : "", i, i);
  atp_buf_printf(&doc, ") {");
  for (uint32_t i = 0; i < p->reread_count; i++)
    atp_buf_printf(&doc,
                   " r%u: inventoryItem(id: $i%u) { inventoryLevel(locationId: $l%u) {"
                   " quantities(names: [\"available\"]) { name quantity } } }",
                   i, i, i);
  atp_buf_printf(&doc, " }");
  atp_buf_reset(b);
  atp_writer_t w;
  atp_writer_init(&w, ATP_FORMAT_JSON, b);
  atp_w_object_begin(&w);
  atp_w_key(&w, "query");
  atp_w_str(&w, doc.data ? doc.data : "", doc.len);
  atp_w_key(&w, "variables");
  atp_w_object_begin(&w);
  for (uint32_t i = 0; i < p->reread_count; i++) {
    char k[16];
    int n = snprintf(k, sizeof k, "i%u", i);
    atp_w_keyn(&w, k, (size_t)n);
    w_gid(&w, "InventoryItem", p->reread[i]->item);
    n = snprintf(k, sizeof k, "l%u", i);
    atp_w_keyn(&w, k, (size_t)n);
    w_gid(&w, "Location", p->reread[i]->location);
  }
  atp_w_object_end(&w);
  atp_w_object_end(&w);
  int failed = doc.failed;
  atp_buf_free(&doc);
  return failed || b->failed ? ATP_ENOMEM : 0;
}

static void on_answer(void *ctx, const atp_http_response_t *res);

static int send_body(atp_shopify_push_t *p) {
  const char *headers[] = {"Content-Type: application/json", "Accept: application/json",
                           p->auth_header};
  int rc = atp_http_client_post(p->http, p->url, headers, 3, p->body.data, p->body.len,
                                ATP_SHOPIFY_PUSH_TIMEOUT_MS, on_answer, p);
  if (rc != 0) return rc;
  spend(p, p->call_cost, atp_mono_ms());
  pthread_mutex_lock(&p->stats_lock);
  p->stats.calls++;
  pthread_mutex_unlock(&p->stats_lock);
  return 0;
}

/* Journals the call before it is sent (kind 57): key, reference, quantities. */
static void journal_call(atp_shopify_push_t *p, uint64_t reference) {
  atp_buf_t b;
  atp_buf_init(&b, 0);
  atp_payload_str(&b, p->call_key, KEY_BYTES);
  atp_payload_u64(&b, reference);
  atp_payload_u32(&b, p->quantity_count);
  for (uint32_t i = 0; i < p->quantity_count; i++) {
    atp_payload_u64(&b, p->quantities[i].item);
    atp_payload_u64(&b, p->quantities[i].location);
    atp_payload_i64(&b, p->quantities[i].quantity);
    atp_payload_i64(&b, p->quantities[i].from);
    atp_payload_u8(&b, p->quantities[i].from_null);
  }
  int rc = b.failed
               ? ATP_ENOMEM
               : atp_durable_append(p->durable, KIND_CALL, b.data, (uint32_t)b.len);
  /* Not fatal: without the record a crash falls back on changeFromQuantity. */
  if (rc != 0) set_error(p, false, "journaling a push call: %s", atp_strerror(rc));
  atp_buf_free(&b);
}

static void journal_settled(atp_shopify_push_t *p, const char *key) {
  unsigned char buf[64];
  atp_buf_t b = {.data = (char *)buf, .cap = sizeof buf};
  atp_payload_str(&b, key, KEY_BYTES);
  int rc = atp_durable_append(p->durable, KIND_SETTLED, buf, (uint32_t)b.len);
  if (rc != 0) set_error(p, false, "journaling a settled call: %s", atp_strerror(rc));
}

static void saved_drop_first(atp_shopify_push_t *p) {
  ATP_ASSERT(p->saved_count > 0);
  atp_free(p->saved[0].quantities);
  memmove(&p->saved[0], &p->saved[1], (p->saved_count - 1) * sizeof *p->saved);
  p->saved_count--;
}

/* Sends again the first call that a previous run journaled and did not
 * settle. true when one went out (or waits for its pacing). */
static bool send_saved(atp_shopify_push_t *p, int64_t now) {
  if (!p->saved_count) return false;
  saved_call_t *s = &p->saved[0];
  p->call_cost = call_cost_estimate(p, CALL_PUSH, s->count);
  int64_t wait = pace_wait_ms(p, p->call_cost, now);
  if (wait) {
    p->wait_until_ms = now + wait;
    return true;
  }
  memcpy(p->quantities, s->quantities, s->count * sizeof *s->quantities);
  p->quantity_count = s->count;
  char key[KEY_BYTES + 1];
  if (build_push_body(p, p->quantities, p->quantity_count, s->reference, key) != 0 ||
      strcmp(key, s->key) != 0) {
    /* Cannot happen unless the body's format changed between releases: the
     * call is dropped, the feed from the cursor covers its positions. */
    journal_settled(p, s->key);
  } else {
    memcpy(p->call_key, key, sizeof key);
    p->call = CALL_PUSH;
    p->call_saved = true;
    if (send_body(p) == 0) return true;
    p->call = CALL_NONE;
    p->call_saved = false;
    return true;
  }
  saved_drop_first(p);
  return true;
}

/* The next page of the mapping fetch; true when one went out or waits. */
static bool send_fetch(atp_shopify_push_t *p, int64_t now) {
  if (p->fetch == FETCH_NONE) return false;
  p->call_cost = call_cost_estimate(p, CALL_FETCH, 1);
  int64_t wait = pace_wait_ms(p, p->call_cost, now);
  if (wait) {
    p->wait_until_ms = now + wait;
    return true;
  }
  atp_buf_t *b = &p->body;
  atp_buf_reset(b);
  atp_writer_t w;
  atp_writer_init(&w, ATP_FORMAT_JSON, b);
  atp_w_object_begin(&w);
  atp_w_key(&w, "query");
  if (p->fetch == FETCH_LOCATIONS)
    atp_w_str(&w, FETCH_LOCATIONS_DOC, sizeof FETCH_LOCATIONS_DOC - 1);
  else
    atp_w_str(&w, FETCH_VARIANTS_DOC, sizeof FETCH_VARIANTS_DOC - 1);
  atp_w_key(&w, "variables");
  atp_w_object_begin(&w);
  atp_w_key(&w, "after");
  if (p->fetch_after[0])
    atp_w_cstr(&w, p->fetch_after);
  else
    atp_w_null(&w);
  atp_w_object_end(&w);
  atp_w_object_end(&w);
  if (b->failed) return true;
  p->call = CALL_FETCH;
  if (send_body(p) != 0) p->call = CALL_NONE;
  return true;
}

/* The initial sync of a fetched variant: every position of its SKU that atpd
 * holds at a mapped location becomes pending, as if it had just changed
 * (the feed is not read during the fetch, so the read cursor is where the
 * entries keep the durable cursor). One with Shopify's figure already
 * settles without a call. Positions beyond the pending bound wait for
 * their next change. */
static void sync_sku(atp_shopify_push_t *p, atp_str_t sku, uint64_t item) {
  if (!p->sync_positions) {
    p->sync_positions = atp_malloc(ATP_SKU_LOCATIONS_MAX * sizeof *p->sync_positions);
    if (!p->sync_positions) return;
  }
  uint32_t count = 0;
  if (atp_sku_positions(p->engine, sku, p->sync_positions, ATP_SKU_LOCATIONS_MAX,
                        &count) != 0)
    return;
  if (count > ATP_SKU_LOCATIONS_MAX) count = ATP_SKU_LOCATIONS_MAX;
  int64_t now = atp_wall_ms();
  for (uint32_t i = 0; i < count && p->entries < ATP_SHOPIFY_PUSH_PENDING_MAX; i++) {
    const atp_position_t *pos = &p->sync_positions[i];
    uint64_t location = 0;
    if (!atp_shopify_location_of(p->shopify, pos->location, &location)) continue;
    /* Version 0: only a value the durable feed has shown is pushed; the
     * engine's version may be one a crash takes back, so the entry waits
     * like any other (collect's DEFER_MS) unless the feed shows it. */
    if (!entry_mark(p, item, location, pos->sku, pos->location, p->read_cursor + 1,
                    p->read_cursor, now, 0, true))
      return;
    p->synced++;
  }
}

/* One page of locations (mapped by name: the atpd location is the Shopify
 * location's name) or variants (each with a SKU mapped to its inventory
 * item), then the next page or the next phase. */
static void on_fetch_answer(atp_shopify_push_t *p, const atp_val_t *root) {
  bool locations = p->fetch == FETCH_LOCATIONS;
  const atp_val_t *conn = atp_val_get(atp_val_get(root, "data"),
                                      locations ? "locations" : "productVariants");
  const atp_val_t *nodes = atp_val_get(conn, "nodes");
  const atp_val_t *info = atp_val_get(conn, "pageInfo");
  if (!nodes || nodes->type != ATP_VAL_ARRAY || !info) {
    set_error(p, true, "Shopify answered the mapping fetch without %s",
              locations ? "locations" : "productVariants");
    back_off(p);
    return;
  }
  for (uint32_t i = 0; i < nodes->len; i++) {
    const atp_val_t *n = &nodes->u.items[i];
    const atp_val_t *id = atp_val_get(n, "id");
    uint64_t a = 0, b = 0;
    int rc = 0;
    if (!id || id->type != ATP_VAL_STR) continue;
    if (locations) {
      const atp_val_t *name = atp_val_get(n, "name");
      if (!name || name->type != ATP_VAL_STR || !name->len ||
          name->len > ATP_ID_BYTES_MAX ||
          atp_shopify_id_parse((atp_str_t){id->u.s, id->len}, "Location", &a) != 0)
        continue;
      rc = atp_shopify_map_location(p->shopify, (atp_str_t){name->u.s, name->len}, a);
      if (rc == 0) p->fetched_locations++;
    } else {
      const atp_val_t *sku = atp_val_get(n, "sku");
      const atp_val_t *item = atp_val_get(atp_val_get(n, "inventoryItem"), "id");
      if (!sku || sku->type != ATP_VAL_STR || !sku->len ||
          sku->len > ATP_ID_BYTES_MAX || !item || item->type != ATP_VAL_STR ||
          atp_shopify_id_parse((atp_str_t){id->u.s, id->len}, "ProductVariant", &a) !=
              0 ||
          atp_shopify_id_parse((atp_str_t){item->u.s, item->len}, "InventoryItem",
                               &b) != 0)
        continue; /* a variant without a SKU is not atpd's */
      rc = atp_shopify_map_item(p->shopify, (atp_str_t){sku->u.s, sku->len}, a, b);
      if (rc == 0) {
        p->fetched_items++;
        sync_sku(p, (atp_str_t){sku->u.s, sku->len}, b);
      }
    }
    if (rc != 0)
      set_error(p, true, "mapping fetched from Shopify: %s", atp_strerror(rc));
  }
  const atp_val_t *next = atp_val_get(info, "hasNextPage");
  const atp_val_t *end = atp_val_get(info, "endCursor");
  if (next && next->type == ATP_VAL_BOOL && next->u.b && end &&
      end->type == ATP_VAL_STR && end->len < sizeof p->fetch_after) {
    /* A cursor that repeats (or pages without end) would fetch for ever,
     * and nothing is pushed during the fetch: the phase ends there. */
    bool repeated = strlen(p->fetch_after) == end->len &&
                    memcmp(p->fetch_after, end->u.s, end->len) == 0;
    if (repeated || ++p->fetch_pages >= FETCH_PAGES_MAX) {
      set_error(p, true, "the mapping fetch of %s stopped: %s",
                locations ? "locations" : "productVariants",
                repeated ? "Shopify repeated the page cursor" : "too many pages");
    } else {
      memcpy(p->fetch_after, end->u.s, end->len + 1);
      return;
    }
  }
  p->fetch_after[0] = 0;
  p->fetch_pages = 0;
  if (locations) {
    p->fetch = FETCH_VARIANTS;
    return;
  }
  p->fetch = FETCH_NONE;
  atp_log("info",
          "shopify push: mapped %" PRIu64 " variants and %" PRIu64
          " locations fetched from Shopify; %" PRIu64 " positions to sync",
          p->fetched_items, p->fetched_locations, p->synced);
}

/* Items one re-read asks for: ATP_SHOPIFY_PUSH_REREAD_MAX, fewer when that
 * would cost more than Shopify's bucket holds (a query above the bucket's
 * maximum would be throttled for ever). */
static uint32_t reread_size(const atp_shopify_push_t *p) {
  if (!p->bucket_known) return ATP_SHOPIFY_PUSH_REREAD_MAX;
  double each = p->cost_reread / (p->cost_reread_units ? p->cost_reread_units : 1);
  double fit = each > 0 ? p->bucket_max / each : ATP_SHOPIFY_PUSH_REREAD_MAX;
  if (fit >= ATP_SHOPIFY_PUSH_REREAD_MAX) return ATP_SHOPIFY_PUSH_REREAD_MAX;
  return fit >= 1 ? (uint32_t)fit : 1;
}

/* Fills p->quantities (and p->reread, the entries whose Shopify figure must
 * be read first) from the FIFO's oldest entries, a slice at a time read from
 * the engine in one batched look-up; settles the entries already at
 * Shopify's figure. *reference gets the newest change the quantities carry. */
static void collect(atp_shopify_push_t *p, int64_t now, uint64_t *reference) {
  atp_key_t keys[ATP_SHOPIFY_PUSH_BATCH_MAX];
  entry_t *cand[ATP_SHOPIFY_PUSH_BATCH_MAX];
  atp_position_t pos[ATP_SHOPIFY_PUSH_BATCH_MAX];
  bool found[ATP_SHOPIFY_PUSH_BATCH_MAX];
  uint32_t examined = 0, reread_max = reread_size(p);
  entry_t *e = p->head ? p->head : p->rhead; /* live changes first */
  p->quantity_count = 0;
  p->reread_count = 0;
  *reference = 0;
  while (e && examined < ATP_SHOPIFY_PUSH_EXAMINE_MAX &&
         p->quantity_count < ATP_SHOPIFY_PUSH_BATCH_MAX &&
         p->reread_count < reread_max) {
    uint32_t n = 0;
    for (; e && n < ATP_SHOPIFY_PUSH_BATCH_MAX - p->quantity_count;
         e = e->next     ? e->next
             : e->resync ? NULL
                         : p->rhead) {
      cand[n] = e;
      keys[n] = (atp_key_t){{e->text, e->sku_len}, {e->text + e->sku_len, e->loc_len}};
      n++;
    }
    examined += n;
    atp_positions_get(p->engine, keys, n, pos, found);
    for (uint32_t i = 0; i < n; i++) {
      entry_t *c = cand[i];
      int64_t level = 0;
      bool known = c->no_level ||
                   (!c->need_read &&
                    atp_shopify_level_get(p->shopify, c->item, c->location, &level));
      int64_t available = found[i] ? pos[i].available : 0;
      /* The engine shows a change the durable feed has not shown yet: its
       * value could be one a crash takes back, and Shopify would keep it.
       * Its event comes within milliseconds; the entry waits for it (at most
       * DEFER_MS, should a version ever move without an event). */
      if (found[i] && pos[i].version > c->version_seen) {
        if (!c->deferred_ms) c->deferred_ms = now;
        if (now - c->deferred_ms < DEFER_MS) continue;
      }
      if (!known) {
        if (p->reread_count < reread_max) p->reread[p->reread_count++] = c;
        continue;
      }
      if (!c->no_level && available == level) {
        entry_settle(p, c); /* e is past the slice already */
        continue;
      }
      quantity_t *q = &p->quantities[p->quantity_count++];
      *q = (quantity_t){c->item, c->location, available, level, c->no_level, c};
      if (c->last_seq > *reference) *reference = c->last_seq;
    }
  }
}

/* Sends the re-read of p->reread (when pacing allows). */
static void send_reread(atp_shopify_push_t *p, int64_t now) {
  p->quantity_count = 0; /* Shopify's figures first, then the push */
  p->call_cost = call_cost_estimate(p, CALL_REREAD, p->reread_count);
  int64_t wait = pace_wait_ms(p, p->call_cost, now);
  if (wait) {
    p->wait_until_ms = now + wait;
    return;
  }
  if (build_reread_body(p) != 0) return;
  for (uint32_t i = 0; i < p->reread_count; i++) p->reread[i]->in_call = true;
  p->call = CALL_REREAD;
  if (send_body(p) != 0) {
    for (uint32_t i = 0; i < p->reread_count; i++) p->reread[i]->in_call = false;
    p->call = CALL_NONE;
  }
}

/* Journals and sends the push of p->quantities (when pacing allows). */
static void send_push(atp_shopify_push_t *p, int64_t now, uint64_t reference) {
  p->call_cost = call_cost_estimate(p, CALL_PUSH, p->quantity_count);
  int64_t wait = pace_wait_ms(p, p->call_cost, now);
  if (wait) {
    p->wait_until_ms = now + wait;
    return;
  }
  if (build_push_body(p, p->quantities, p->quantity_count, reference, p->call_key) != 0)
    return;
  journal_call(p, reference);
  for (uint32_t i = 0; i < p->quantity_count; i++)
    p->quantities[i].entry->in_call = true;
  p->call = CALL_PUSH;
  p->call_saved = false;
  if (send_body(p) != 0) {
    for (uint32_t i = 0; i < p->quantity_count; i++)
      p->quantities[i].entry->in_call = false;
    p->call = CALL_NONE;
    journal_settled(p, p->call_key);
  }
}

/* The next call: a journaled call of a previous run, the mapping fetch, a
 * re-read when the oldest entries need one, else a push. */
static void pump(atp_shopify_push_t *p) {
  int64_t now = atp_mono_ms();
  if (p->call != CALL_NONE || now < p->wait_until_ms) return;
  if (send_saved(p, now) || send_fetch(p, now)) return;
  uint64_t reference = 0;
  collect(p, now, &reference);
  if (p->reread_count)
    send_reread(p, now);
  else if (p->quantity_count)
    send_push(p, now, reference);
}

/* --- answers ----------------------------------------------------------------- */

/* The quantity index a userError's field names (["input", "quantities", "3",
 * ...]); -1 when it names none. */
static int64_t error_index(const atp_val_t *ue) {
  const atp_val_t *field = atp_val_get(ue, "field");
  if (!field || field->type != ATP_VAL_ARRAY) return -1;
  for (uint32_t i = 0; i + 1 < field->len; i++) {
    if (!str_is(&field->u.items[i], "quantities")) continue;
    const atp_val_t *ix = &field->u.items[i + 1];
    if (ix->type == ATP_VAL_INT) return ix->u.i >= 0 ? ix->u.i : -1; /* range: caller */
    if (ix->type == ATP_VAL_STR && ix->len && ix->len < 6) {
      char *end;
      long v = strtol(ix->u.s, &end, 10);
      if (*end == 0 && v >= 0) return v;
    }
  }
  return -1;
}

/* The call's entries leave the call; settle those done. */
static void release_entries(atp_shopify_push_t *p, bool pushed) {
  for (uint32_t i = 0; i < p->quantity_count; i++) {
    entry_t *e = p->quantities[i].entry;
    if (!e) continue;
    e->in_call = false;
    if (pushed) entry_settle(p, e);
  }
}

/* How many identical refusals of a call, by a userError that names no
 * quantity, before its entries are dropped so that the rest moves on. */
#define REFUSED_MAX 3

/* A userError that names no quantity (and is not one atpd acts on): the
 * call as a whole failed. It is sent again after a backoff, in case the
 * cause is passing; after REFUSED_MAX identical answers its entries are
 * dropped (counted, named in last_error; a later change tries again). */
static void push_refused(atp_shopify_push_t *p, const char *code, const char *msg) {
  if (p->refused_count && strcmp(p->refused_key, p->call_key) == 0) {
    p->refused_count++;
  } else {
    memcpy(p->refused_key, p->call_key, sizeof p->refused_key);
    p->refused_count = 1;
  }
  if (p->refused_count < REFUSED_MAX) {
    set_error(p, true, "inventorySetQuantities: %s: %.200s", code, msg);
    release_entries(p, false);
    back_off(p);
    return;
  }
  set_error(p, true,
            "inventorySetQuantities: %s (%u times): %.200s; %u positions dropped", code,
            p->refused_count, msg, p->quantity_count);
  p->refused_count = 0;
  for (uint32_t i = 0; i < p->quantity_count; i++) {
    entry_t *e = p->quantities[i].entry;
    if (!e) continue;
    e->in_call = false;
    e->again_seq = 0;
    p->quantities[i].entry = NULL;
    entry_settle(p, e);
  }
  back_off(p);
}

static bool is_idempotency_code(const atp_val_t *code) {
  return code && code->type == ATP_VAL_STR && code->len > 12 &&
         memcmp(code->u.s, "IDEMPOTENCY_", 12) == 0;
}

/* Shopify refused the call's key (a previous attempt with it failed, or is
 * still running): Shopify's figures are read again and the next call gets
 * another key. */
static void idempotency_refused(atp_shopify_push_t *p) {
  p->key_salt++;
  for (uint32_t j = 0; j < p->quantity_count; j++)
    if (p->quantities[j].entry) p->quantities[j].entry->need_read = true;
}

static void on_push_answer(atp_shopify_push_t *p, const atp_val_t *root) {
  const atp_val_t *set =
      atp_val_get(atp_val_get(root, "data"), "inventorySetQuantities");
  const atp_val_t *ues = atp_val_get(set, "userErrors");
  if (!set || set->type != ATP_VAL_OBJECT) {
    set_error(p, true, "inventorySetQuantities answered without data");
    release_entries(p, false);
    back_off(p);
    return;
  }
  if (ues && ues->type == ATP_VAL_ARRAY && ues->len) {
    /* Nothing was applied. Stale quantities are re-read, others dropped;
     * the rest go again in the next call. */
    uint32_t stale = 0;
    const char *refused_code = NULL, *refused_msg = NULL;
    for (uint32_t i = 0; i < ues->len; i++) {
      const atp_val_t *ue = &ues->u.items[i];
      int64_t ix = error_index(ue);
      entry_t *e =
          ix >= 0 && ix < (int64_t)p->quantity_count ? p->quantities[ix].entry : NULL;
      if (str_is(atp_val_get(ue, "code"), "CHANGE_FROM_QUANTITY_STALE")) {
        stale++;
        if (e)
          e->need_read = true;
        else /* which one is not said: read them all again */
          for (uint32_t j = 0; j < p->quantity_count; j++)
            if (p->quantities[j].entry) p->quantities[j].entry->need_read = true;
        continue;
      }
      const atp_val_t *code = atp_val_get(ue, "code");
      if (is_idempotency_code(code)) {
        idempotency_refused(p);
        continue;
      }
      const atp_val_t *msg = atp_val_get(ue, "message");
      const char *text = msg && msg->type == ATP_VAL_STR ? msg->u.s : "a user error";
      if (!e) { /* names no quantity of the call: the call failed */
        if (!refused_code) {
          refused_code = code && code->type == ATP_VAL_STR ? code->u.s : "a user error";
          refused_msg = text;
        }
        continue;
      }
      set_error(p, true, "inventorySetQuantities: %.200s", text);
      {
        e->in_call = false;
        e->again_seq = 0;
        p->quantities[ix].entry = NULL;
        entry_settle(p, e); /* dropped: a later change tries again */
      }
    }
    pthread_mutex_lock(&p->stats_lock);
    p->stats.stale_retries += stale;
    pthread_mutex_unlock(&p->stats_lock);
    if (refused_code) {
      push_refused(p, refused_code, refused_msg);
      return;
    }
    release_entries(p, false);
    return;
  }
  for (uint32_t i = 0; i < p->quantity_count; i++) {
    const quantity_t *q = &p->quantities[i];
    int rc = atp_shopify_level_set(p->shopify, q->item, q->location, q->quantity);
    if (rc != 0) set_error(p, true, "recording a pushed level: %s", atp_strerror(rc));
    if (q->entry) q->entry->no_level = false;
  }
  p->key_salt = 0;
  p->refused_count = 0;
  pthread_mutex_lock(&p->stats_lock);
  p->stats.positions_pushed += p->quantity_count;
  pthread_mutex_unlock(&p->stats_lock);
  release_entries(p, true);
  p->backoff_ms = 0;
}

static void on_reread_answer(atp_shopify_push_t *p, const atp_val_t *root) {
  const atp_val_t *data = atp_val_get(root, "data");
  bool incomplete = false;
  for (uint32_t i = 0; i < p->reread_count; i++) {
    entry_t *e = p->reread[i];
    e->in_call = false;
    char alias[16];
    int n = snprintf(alias, sizeof alias, "r%u", i);
    const atp_val_t *node = data && data->type == ATP_VAL_OBJECT
                                ? atp_val_getn(data, alias, (size_t)n)
                                : NULL;
    if (!node) { /* no data, or not this alias: read again after a backoff */
      incomplete = true;
      continue;
    }
    const atp_val_t *level = atp_val_get(node, "inventoryLevel");
    const atp_val_t *qs = atp_val_get(level, "quantities");
    bool got = false;
    if (node && node->type == ATP_VAL_OBJECT &&
        (!level || level->type == ATP_VAL_NULL)) {
      /* The item is not stocked there yet: the push sets it with
       * changeFromQuantity null, which Shopify documents as skipping the
       * comparison. */
      e->need_read = false;
      e->no_level = true;
      continue;
    }
    for (uint32_t j = 0; qs && qs->type == ATP_VAL_ARRAY && j < qs->len; j++) {
      const atp_val_t *q = &qs->u.items[j];
      const atp_val_t *v = atp_val_get(q, "quantity");
      if (!str_is(atp_val_get(q, "name"), "available") || !v || v->type != ATP_VAL_INT)
        continue;
      int rc = atp_shopify_level_set(p->shopify, e->item, e->location, v->u.i);
      if (rc == 0) {
        e->need_read = false;
        got = true;
      }
    }
    if (!got && node->type != ATP_VAL_NULL) { /* a level without `available` */
      incomplete = true;
      continue;
    }
    if (!got) {
      /* Only the alias present and null says that Shopify does not know
       * the item: nothing can be set. Dropped and named; a later change
       * tries again. */
      set_error(p, true, "Shopify does not know inventory item %" PRIu64 "; not pushed",
                e->item);
      e->again_seq = 0;
      entry_settle(p, e);
    }
  }
  if (incomplete) {
    set_error(p, true, "Shopify answered the level read without its figures");
    back_off(p);
    return;
  }
  p->backoff_ms = 0;
}

/* Whether the answer carries data to act on; else the throttle, the error
 * and the wait before the next call are taken care of here. root: the
 * parsed body, NULL when it is not a JSON object. */
static bool answered(atp_shopify_push_t *p, call_kind_t kind,
                     const atp_http_response_t *res, const atp_val_t *root) {
  const atp_val_t *errors = root ? atp_val_get(root, "errors") : NULL;
  bool listed = errors && errors->type == ATP_VAL_ARRAY && errors->len;
  bool is_throttle = res->status == 429;
  for (uint32_t i = 0; listed && i < errors->len; i++)
    if (str_is(atp_val_get(atp_val_get(&errors->u.items[i], "extensions"), "code"),
               "THROTTLED"))
      is_throttle = true;
  if (is_throttle) {
    throttled(p);
    return false;
  }
  if (res->status == 0) {
    set_error(p, true, "Shopify: %s", res->error);
  } else if (res->status != 200 || !root) {
    set_error(p, true, "Shopify answered HTTP %d%s", res->status,
              root || res->status != 200 ? "" : " with a body that is not JSON");
  } else if (listed) {
    for (uint32_t i = 0; kind == CALL_PUSH && i < errors->len; i++)
      if (is_idempotency_code(
              atp_val_get(atp_val_get(&errors->u.items[i], "extensions"), "code"))) {
        idempotency_refused(p); /* once: the next call has another key */
        break;
      }
    const atp_val_t *msg = atp_val_get(&errors->u.items[0], "message");
    set_error(p, true, "Shopify: %.200s",
              msg && msg->type == ATP_VAL_STR ? msg->u.s : "a GraphQL error");
  } else {
    return true;
  }
  back_off(p);
  return false;
}

static void on_answer(void *ctx, const atp_http_response_t *res) {
  atp_shopify_push_t *p = ctx;
  call_kind_t kind = p->call;
  p->call = CALL_NONE;
  bool saved = p->call_saved;
  p->call_saved = false;
  if (atomic_load_explicit(&p->stopping, memory_order_relaxed)) {
    /* Cancelled by the stop: the call stays journaled, sent again at start. */
    if (kind == CALL_PUSH) release_entries(p, false);
    return;
  }
  atp_arena_reset(&p->arena);
  atp_val_t *root = NULL;
  atp_parse_error_t perr;
  bool parsed =
      res->status && atp_codec_parse(ATP_FORMAT_JSON, res->body, res->body_bytes,
                                     &p->arena, &root, &perr) == 0;
  if (parsed && root->type != ATP_VAL_OBJECT) parsed = false;
  if (parsed)
    read_cost(p, root, kind,
              kind == CALL_PUSH     ? p->quantity_count
              : kind == CALL_REREAD ? p->reread_count
                                    : 1);
  bool done = answered(p, kind, res, parsed ? root : NULL);
  if (kind == CALL_FETCH) {
    if (done) on_fetch_answer(p, root);
  } else if (kind == CALL_REREAD) {
    if (done)
      on_reread_answer(p, root);
    else
      for (uint32_t i = 0; i < p->reread_count; i++) p->reread[i]->in_call = false;
  } else if (done) {
    on_push_answer(p, root);
  } else {
    release_entries(p, false);
  }
  /* A call is settled once any answer was handled: a live push rebuilds
   * what failed from its entries (the same input is the same key), so only a
   * call cut by a crash or a stop is left for the next start. A saved call
   * is sent again until it gets an answer (or SAVED_ATTEMPTS_MAX tries),
   * before any other call, so no later call of atpd's can overtake it. */
  if (kind == CALL_PUSH && saved && !done &&
      ++p->saved[0].attempts < SAVED_ATTEMPTS_MAX)
    saved = false; /* kept: sent again after the backoff */
  else if (kind == CALL_PUSH)
    journal_settled(p, p->call_key);
  if (kind == CALL_PUSH && saved) saved_drop_first(p);
  write_cursor(p, false);
  pump(p);
}

/* --- the thread --------------------------------------------------------------- */

/* One mapped position of the walk: pending as if it had just changed (the
 * read cursor is where its entry keeps the durable cursor). A value Shopify
 * already holds settles without a call. */
static int walk_one(void *ctx, const atp_position_t *pos) {
  atp_shopify_push_t *p = ctx;
  uint64_t item = 0, location = 0;
  if (!atp_shopify_item_of_sku(p->shopify, pos->sku, &item, NULL) ||
      !atp_shopify_location_of(p->shopify, pos->location, &location))
    return 0;
  /* Version 0, as in sync_sku: the engine's version is not the feed's. */
  if (!entry_mark(p, item, location, pos->sku, pos->location, p->read_cursor + 1,
                  p->read_cursor, atp_wall_ms(), 0, true))
    return 1;
  p->walked++;
  return 0;
}

/* The resync walk. A change of the mappings (a PUT, a batch shopify_map, the
 * fetch, or their replay at start) makes every mapped position pending
 * once, so one mapped after its last change still reaches Shopify; the walk
 * goes WALK_PIECE positions a tick, pauses while the pending entries are
 * at their bound, and begins again when the mappings move during it. */
#define WALK_PIECE 20000u
static void walk_step(atp_shopify_push_t *p) {
  uint64_t g = atp_shopify_mappings_generation(p->shopify);
  if (g != p->walk_generation) {
    p->walk_generation = g;
    p->walking = true;
    p->walk_next = 0;
    p->walk_upto = atp_position_count(p->engine);
    p->walks++;
  }
  if (!p->walking) return;
  if (p->entries + WALK_PIECE > ATP_SHOPIFY_PUSH_PENDING_MAX) return; /* full: later */
  uint32_t upto = p->walk_upto - p->walk_next > WALK_PIECE ? p->walk_next + WALK_PIECE
                                                           : p->walk_upto;
  /* Out of memory stops the piece; the position it stopped at waits for its
   * next change, the walk goes on next tick. */
  uint64_t before = p->walked;
  (void)atp_position_each_from(p->engine, &p->walk_next, upto, walk_one, p);
  if (p->walked > before) p->progress = true;
  if (p->walk_next < p->walk_upto) return;
  p->walking = false;
  atp_log("info",
          "shopify push: mappings walk %" PRIu64 " done: %" PRIu64
          " mapped positions made pending so far, %" PRIu32 " pending now",
          p->walks, p->walked, p->entries);
}

static void on_tick(uv_timer_t *t) {
  atp_shopify_push_t *p = t->data;
  if (p->fetch == FETCH_NONE) walk_step(p);
  read_feed(p);
  pump(p);
  write_cursor(p, false);
  pthread_mutex_lock(&p->stats_lock);
  p->stats.pending = p->entries;
  p->stats.lag_ms = p->head ? atp_wall_ms() - p->head->first_at_ms : 0;
  if (p->stats.lag_ms < 0) p->stats.lag_ms = 0;
  pthread_mutex_unlock(&p->stats_lock);
}

static void on_handle_closed(uv_handle_t *h) {
  atp_shopify_push_t *p = h->data;
  p->handles_open--;
}
static void on_http_closed(void *ctx) {
  atp_shopify_push_t *p = ctx;
  p->http = NULL;
}

static void on_stop(uv_async_t *a) {
  atp_shopify_push_t *p = a->data;
  write_cursor(p, true);
  if (p->http) atp_http_client_close(p->http, on_http_closed, p);
  uv_close((uv_handle_t *)&p->tick, on_handle_closed);
  uv_close((uv_handle_t *)&p->stop, on_handle_closed);
}

static void *push_main(void *arg) {
  atp_shopify_push_t *p = arg;
  uv_run(&p->loop, UV_RUN_DEFAULT);
  return NULL;
}

/* --- durable section ------------------------------------------------------------ */

static int replay(void *ctx, uint16_t kind, const void *payload, uint32_t bytes) {
  atp_shopify_push_t *p = ctx;
  atp_payload_reader_t rd;
  atp_payload_reader_init(&rd, payload, bytes);
  if (kind == KIND_CURSOR) {
    uint64_t cursor = atp_payload_get_u64(&rd);
    if (!atp_payload_ok(&rd)) return ATP_EINTERNAL;
    p->read_cursor = p->written_cursor = cursor;
    p->has_cursor = true;
    atomic_store_explicit(&p->durable_cursor, cursor, memory_order_relaxed);
    return 0;
  }
  const char *key;
  uint32_t key_len;
  atp_payload_get_str(&rd, &key, &key_len);
  if (!atp_payload_ok(&rd) || key_len != KEY_BYTES) return ATP_EINTERNAL;
  uint32_t i = 0;
  while (i < p->saved_count && memcmp(p->saved[i].key, key, KEY_BYTES) != 0) i++;
  if (kind == KIND_SETTLED || kind == KIND_CALL) {
    if (i < p->saved_count) { /* settled, or journaled again: forget the old one */
      atp_free(p->saved[i].quantities);
      memmove(&p->saved[i], &p->saved[i + 1],
              (p->saved_count - i - 1) * sizeof *p->saved);
      p->saved_count--;
    }
    if (kind == KIND_SETTLED) return 0;
  } else {
    return 0; /* 59: reserved; a later release's record is skipped */
  }
  uint64_t reference = atp_payload_get_u64(&rd);
  uint32_t count = atp_payload_get_u32(&rd);
  if (!atp_payload_ok(&rd) || count == 0 || count > ATP_SHOPIFY_PUSH_BATCH_MAX)
    return ATP_EINTERNAL;
  quantity_t *q = atp_calloc(count, sizeof *q);
  if (!q) return ATP_ENOMEM;
  for (uint32_t j = 0; j < count; j++) {
    q[j].item = atp_payload_get_u64(&rd);
    q[j].location = atp_payload_get_u64(&rd);
    q[j].quantity = atp_payload_get_i64(&rd);
    q[j].from = atp_payload_get_i64(&rd);
    q[j].from_null = atp_payload_get_u8(&rd) != 0;
  }
  if (!atp_payload_ok(&rd)) {
    atp_free(q);
    return ATP_EINTERNAL;
  }
  if (p->saved_count == ATP_SHOPIFY_PUSH_SAVED_CALLS_MAX) { /* the oldest goes */
    atp_free(p->saved[0].quantities);
    memmove(&p->saved[0], &p->saved[1], (p->saved_count - 1) * sizeof *p->saved);
    p->saved_count--;
  }
  saved_call_t *s = &p->saved[p->saved_count++];
  memcpy(s->key, key, KEY_BYTES);
  s->key[KEY_BYTES] = 0;
  s->reference = reference;
  s->count = count;
  s->quantities = q;
  return 0;
}

/* The snapshot's copy: the durable cursor. Calls in flight are not copied:
 * the feed after the cursor covers their positions. */
static int export_state(void *ctx, atp_durable_emit_fn emit, void *emit_ctx) {
  atp_shopify_push_t *p = ctx;
  uint64_t cursor = atomic_load_explicit(&p->durable_cursor, memory_order_relaxed);
  if (!cursor) return 0;
  unsigned char buf[8];
  atp_buf_t b = {.data = (char *)buf, .cap = sizeof buf};
  atp_payload_u64(&b, cursor);
  return emit(emit_ctx, KIND_CURSOR, buf, (uint32_t)b.len);
}

/* --- public ------------------------------------------------------------------- */

int atp_shopify_push_create(atp_shopify_t *shopify, atp_durable_t *d,
                            atp_shopify_push_t **out) {
  ATP_ASSERT(shopify && d && out);
  *out = NULL;
  atp_shopify_push_t *p = atp_calloc(1, sizeof *p);
  if (!p) return ATP_ENOMEM;
  p->shopify = shopify;
  p->config = atp_shopify_config(shopify);
  p->durable = d;
  p->bucket_count = BUCKETS_MIN;
  p->buckets = atp_calloc(p->bucket_count, sizeof *p->buckets);
  if (!p->buckets) {
    atp_free(p);
    return ATP_ENOMEM;
  }
  atomic_init(&p->stopping, false);
  atomic_init(&p->durable_cursor, 0);
  pthread_mutex_init(&p->stats_lock, NULL);
  p->cost_mutation = COST_MUTATION_DEFAULT;
  p->cost_reread = COST_REREAD_DEFAULT;
  p->cost_reread_units = 1;
  p->cost_fetch = COST_FETCH_DEFAULT;
  atp_buf_init(&p->body, 16u << 20);
  atp_arena_init(&p->arena, 64u << 10, 16u << 20);
  atp_durable_section_t section = {.name = "shopify_push",
                                   .kind_first = ATP_SHOPIFY_PUSH_KIND_FIRST,
                                   .kind_last = ATP_SHOPIFY_PUSH_KIND_LAST,
                                   .replay = replay,
                                   .export_state = export_state,
                                   .ctx = p};
  int rc = atp_durable_register(d, &section);
  if (rc != 0) {
    atp_free(p->buckets);
    atp_free(p);
    return rc;
  }
  *out = p;
  return 0;
}

int atp_shopify_push_start(atp_shopify_push_t *p, atp_feed_t *feed,
                           atp_engine_t *engine) {
  ATP_ASSERT(p && feed && engine && !p->started);
  p->feed = feed;
  p->engine = engine;
  const atp_shopify_config_t *c = p->config;
  snprintf(p->url, sizeof p->url, "%s", c->admin_url);
  snprintf(p->auth_header, sizeof p->auth_header, "X-Shopify-Access-Token: %s",
           c->access_token ? c->access_token : "");
  p->rng = (uint64_t)atp_wall_ms() * 0x9e3779b97f4a7c15ull | 1;
  p->share_at_ms = atp_mono_ms();
  p->share_tokens = c->points_per_second;
  if (c->fetch_mappings) p->fetch = FETCH_LOCATIONS;
  const char *hold = getenv("ATPD_TEST_SHOPIFY_PUSH_HOLD_FILE");
  if (hold) snprintf(p->hold_file, sizeof p->hold_file, "%s", hold);
  /* /metrics may read the figures from now on (atp_shopify_push_stats). */
  pthread_mutex_lock(&p->stats_lock);
  p->stats.enabled = true;
  p->stats.cursor = p->written_cursor;
  pthread_mutex_unlock(&p->stats_lock);
  if (uv_loop_init(&p->loop) != 0) return ATP_EUNAVAILABLE;
  int rc = atp_http_client_create(&p->loop, NULL, &p->http);
  if (rc != 0) {
    uv_loop_close(&p->loop);
    return rc;
  }
  uv_timer_init(&p->loop, &p->tick);
  p->tick.data = p;
  uv_async_init(&p->loop, &p->stop, on_stop);
  p->stop.data = p;
  p->handles_open = 2;
  uv_timer_start(&p->tick, on_tick, 0, TICK_MS);
  if (pthread_create(&p->thread, NULL, push_main, p) != 0) {
    /* Nothing ran on the loop: close its handles here and run it empty. */
    atomic_store_explicit(&p->stopping, true, memory_order_relaxed);
    on_stop(&p->stop);
    uv_run(&p->loop, UV_RUN_DEFAULT);
    uv_loop_close(&p->loop);
    return ATP_EUNAVAILABLE;
  }
  p->started = true;
  return 0;
}

void atp_shopify_push_stop(atp_shopify_push_t *p) {
  if (!p || !p->started) return;
  atomic_store_explicit(&p->stopping, true, memory_order_relaxed);
  uv_async_send(&p->stop);
  pthread_join(p->thread, NULL);
  ATP_ASSERT(p->handles_open == 0 && !p->http);
  uv_loop_close(&p->loop);
  p->started = false;
}

void atp_shopify_push_destroy(atp_shopify_push_t *p) {
  if (!p) return;
  atp_shopify_push_stop(p);
  for (uint32_t i = 0; i < p->bucket_count; i++) {
    entry_t *e = p->buckets[i];
    while (e) {
      entry_t *next = e->hash_next;
      atp_free(e);
      e = next;
    }
  }
  for (uint32_t i = 0; i < p->saved_count; i++) atp_free(p->saved[i].quantities);
  atp_free(p->buckets);
  atp_free(p->sync_positions);
  atp_buf_free(&p->body);
  atp_arena_destroy(&p->arena);
  pthread_mutex_destroy(&p->stats_lock);
  atp_free(p);
}

void atp_shopify_push_stats(void *ctx, atp_shopify_push_stats_t *out) {
  atp_shopify_push_t *p = ctx;
  memset(out, 0, sizeof *out);
  if (!p) return;
  pthread_mutex_lock(&p->stats_lock);
  *out = p->stats;
  pthread_mutex_unlock(&p->stats_lock);
  out->cursor = atomic_load_explicit(&p->durable_cursor, memory_order_relaxed);
}
