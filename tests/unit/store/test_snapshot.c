/* test_snapshot.c - snapshot files (src/store/snapshot.c) with the engine's
 * export: the seeded model test of issue 11 item 8(i), and the file's
 * checksums, generations and trim point.
 *
 * The model: four threads run random adjustments, counts, multi-line
 * reservations, commits, releases, fulfilments, extensions and group puts
 * while a ticker thread expires and purges, and the main thread takes
 * snapshots at random moments. A test hook stands in for the journal: it
 * encodes every hook call with the journal's codec and gives it the next LSN
 * (in hook order, as the real journal does). A snapshot is tagged with the
 * LSN taken before its walk began. After the threads stop, every snapshot is
 * restored into an empty engine, the journal after its LSN replayed over it,
 * and the result compared field by field with the primary and with a replay
 * of the whole journal. ATPD_TEST_SEED picks the seed (printed on failure).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "atp/assert.h"
#include "atp/engine.h"
#include "atp/memory.h"
#include "atp/records.h"
#include "atp/snapshot.h"
#include "atp/timerwheel.h"
#include "test.h"

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static char DIR_[256];

static void make_dir(void) {
  snprintf(DIR_, sizeof DIR_, "/tmp/atp-test-snapshot-%d", (int)getpid());
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", DIR_);
  if (system(cmd)) {
  }
  mkdir(DIR_, 0755);
}

/* --- the journal stand-in ------------------------------------------------------- */

typedef struct {
  void *payload;
  uint32_t bytes;
} jrec_t;

static pthread_mutex_t journal_lock = PTHREAD_MUTEX_INITIALIZER;
static jrec_t *journal;
static size_t journal_len, journal_cap;

static void journal_hook(void *ctx, const atp_change_t *records, uint32_t count) {
  (void)ctx;
  atp_buf_t buf;
  atp_buf_init(&buf, 0);
  ATP_ASSERT(atp_records_encode(&buf, records, count) == 0);
  pthread_mutex_lock(&journal_lock);
  if (journal_len == journal_cap) {
    journal_cap = journal_cap ? journal_cap * 2 : 4096;
    journal = realloc(journal, journal_cap * sizeof *journal);
  }
  journal[journal_len++] = (jrec_t){buf.data, (uint32_t)buf.len};
  pthread_mutex_unlock(&journal_lock);
}

static uint64_t journal_lsn(void) {
  pthread_mutex_lock(&journal_lock);
  uint64_t n = journal_len;
  pthread_mutex_unlock(&journal_lock);
  return n;
}

static int replay_after(atp_engine_t *e, uint64_t lsn) {
  atp_records_t recs;
  atp_records_init(&recs);
  int rc = 0;
  for (size_t i = lsn; i < journal_len && !rc; i++) {
    rc = atp_records_decode(journal[i].payload, journal[i].bytes, &recs);
    if (!rc) rc = atp_engine_apply(e, recs.records, recs.count);
  }
  atp_records_free(&recs);
  return rc;
}

static void journal_free(void) {
  for (size_t i = 0; i < journal_len; i++) atp_free(journal[i].payload);
  free(journal);
  journal = NULL;
  journal_len = journal_cap = 0;
}

/* --- the model's traffic -----------------------------------------------------------
 */

#define THREADS   4
#define SKUS      40
#define LOCATIONS 3
#define OPS       6000

static _Atomic int64_t clock_ms;
static int64_t test_clock(void *ctx) {
  (void)ctx;
  return atomic_load(&clock_ms);
}

static atp_engine_t *E;
static atomic_bool stop;
static uint64_t SEED;

static void key(uint64_t *rng, char *sku, char *loc) {
  sprintf(sku, "S%02d", (int)(splitmix(rng) % SKUS));
  sprintf(loc, "L%d", (int)(splitmix(rng) % LOCATIONS));
}

static void *traffic(void *arg) {
  int t = (int)(intptr_t)arg;
  uint64_t rng = SEED * 31 + (uint64_t)t;
  atp_reservation_t *r = malloc(sizeof *r);
  atp_shortfalls_t *sf = malloc(sizeof *sf);
  atp_result_t res;
  char sku[16], loc[16], sku2[16], loc2[16], id[32], id2[40];
  for (int n = 0; n < OPS; n++) {
    int op = (int)(splitmix(&rng) % 100);
    key(&rng, sku, loc);
    snprintf(id, sizeof id, "t%d-%d", t, n);
    /* reservations this thread made earlier */
    snprintf(id2, sizeof id2, "t%d-%d", t, n ? (int)(splitmix(&rng) % (uint64_t)n) : 0);
    if (op < 25) {
      atp_adjust_req_t a = {
          .id = {id, (uint32_t)strlen(id)},
          .sku = {sku, (uint32_t)strlen(sku)},
          .location = {loc, (uint32_t)strlen(loc)},
          .delta = (int64_t)(splitmix(&rng) % 20) - 4,
          .reason = ATP_REASON_RECEIVED,
          .source = ATP_STR("m"),
          .occurred_at_ms = atomic_load(&clock_ms) - (int64_t)(splitmix(&rng) % 5000)};
      if (!a.delta) a.delta = 3;
      atp_adjust_res_t out;
      atp_adjust(E, &a, &out, &res);
    } else if (op < 30) {
      atp_count_req_t c = {
          .id = {id, (uint32_t)strlen(id)},
          .sku = {sku, (uint32_t)strlen(sku)},
          .location = {loc, (uint32_t)strlen(loc)},
          .on_hand = (int64_t)(splitmix(&rng) % 50),
          .counted_at_ms = atomic_load(&clock_ms) - (int64_t)(splitmix(&rng) % 3000),
          .source = ATP_STR("m")};
      atp_count_res_t out;
      atp_count(E, &c, &out, &res);
    } else if (op < 60) {
      key(&rng, sku2, loc2);
      atp_line_req_t lines[2] = {{.sku = {sku, (uint32_t)strlen(sku)},
                                  .location = {loc, (uint32_t)strlen(loc)},
                                  .qty = 1 + (int64_t)(splitmix(&rng) % 3)},
                                 {.sku = {sku2, (uint32_t)strlen(sku2)},
                                  .group = ATP_STR("G"),
                                  .qty = 1 + (int64_t)(splitmix(&rng) % 3),
                                  .allow_split = true}};
      atp_reserve_req_t q = {.id = {id, (uint32_t)strlen(id)},
                             .lines = lines,
                             .line_count = 1 + (uint32_t)(splitmix(&rng) % 2),
                             .ttl_ms = 1000 + (int64_t)(splitmix(&rng) % 4000),
                             .order_ref = ATP_STR("cart")};
      atp_reserve(E, &q, r, sf, &res);
    } else if (op < 70) {
      atp_commit(E, (atp_str_t){id2, (uint32_t)strlen(id2)}, ATP_STR(""), r, &res);
    } else if (op < 80) {
      atp_release(E, (atp_str_t){id2, (uint32_t)strlen(id2)}, NULL, 0, r, &res);
    } else if (op < 88) {
      atp_fulfil(E, (atp_str_t){id2, (uint32_t)strlen(id2)},
                 (atp_str_t){id, (uint32_t)strlen(id)}, NULL, 0, r, &res);
    } else if (op < 93) {
      atp_extend(E, (atp_str_t){id2, (uint32_t)strlen(id2)}, 3000, r, &res);
    } else if (op < 96) {
      atp_position_t p;
      atp_safety_stock_set(E, (atp_str_t){sku, (uint32_t)strlen(sku)},
                           (atp_str_t){loc, (uint32_t)strlen(loc)},
                           (int64_t)(splitmix(&rng) % 3), &p, &res);
    } else {
      atp_str_t locs[3] = {ATP_STR("L0"), ATP_STR("L1"), ATP_STR("L2")};
      uint32_t k = 1 + (uint32_t)(splitmix(&rng) % 3);
      atp_group_put(E, ATP_STR("G"), locs + (3 - k), k, &res);
    }
  }
  free(r);
  free(sf);
  return NULL;
}

static void *ticker(void *arg) {
  (void)arg;
  while (!atomic_load(&stop)) {
    atomic_fetch_add(&clock_ms, 50);
    atp_engine_tick(E);
    usleep(500);
  }
  return NULL;
}

/* --- comparison ------------------------------------------------------------------ */

static bool str_eq(atp_str_t a, atp_str_t b) {
  return a.len == b.len && (!a.len || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static int compare(atp_engine_t *a, atp_engine_t *b, const char *what) {
  int diffs = 0;
  char sku[16], loc[16];
  for (int s = 0; s < SKUS; s++)
    for (int l = 0; l < LOCATIONS; l++) {
      sprintf(sku, "S%02d", s);
      sprintf(loc, "L%d", l);
      atp_position_t x, y;
      memset(&x, 0, sizeof x);
      memset(&y, 0, sizeof y);
      int rx = atp_position_get(a, (atp_str_t){sku, 3}, (atp_str_t){loc, 2}, &x);
      int ry = atp_position_get(b, (atp_str_t){sku, 3}, (atp_str_t){loc, 2}, &y);
      if (rx != ry || x.on_hand != y.on_hand || x.safety_stock != y.safety_stock ||
          x.reserved != y.reserved || x.committed != y.committed ||
          x.counted_at_ms != y.counted_at_ms || x.version != y.version) {
        if (diffs++ < 5)
          fprintf(stderr,
                  "  %s: %s@%s on_hand %" PRId64 "/%" PRId64 " reserved %" PRId64
                  "/%" PRId64 " committed %" PRId64 "/%" PRId64 " version %" PRIu64
                  "/%" PRIu64 "\n",
                  what, sku, loc, x.on_hand, y.on_hand, x.reserved, y.reserved,
                  x.committed, y.committed, x.version, y.version);
      }
    }
  static atp_reservation_t ra, rb;
  char id[32];
  for (int t = 0; t < THREADS; t++)
    for (int n = 0; n < OPS; n++) {
      snprintf(id, sizeof id, "t%d-%d", t, n);
      atp_str_t s = {id, (uint32_t)strlen(id)};
      int x = atp_reservation_get(a, s, &ra), y = atp_reservation_get(b, s, &rb);
      bool same = x == y;
      /* Purges are the ticker's to time: a replica's first tick purges every
       * ended record past its retention at once, the primary's wheel may hold
       * one for a slot more. Such a record counts as the same. */
      if (x == 0 && y == ATP_ENOTFOUND && ra.status >= ATP_STATUS_RELEASED &&
          ra.ended_at_ms + 2000 <= atomic_load(&clock_ms))
        continue;
      if (same && x == 0) {
        same = ra.status == rb.status && ra.created_at_ms == rb.created_at_ms &&
               ra.expires_at_ms == rb.expires_at_ms && ra.ttl_ms == rb.ttl_ms &&
               ra.ended_at_ms == rb.ended_at_ms && str_eq(ra.order_ref, rb.order_ref) &&
               str_eq(ra.order_id, rb.order_id) && ra.line_count == rb.line_count;
        for (uint32_t i = 0; same && i < ra.line_count; i++)
          same = str_eq(ra.lines[i].sku, rb.lines[i].sku) &&
                 str_eq(ra.lines[i].location, rb.lines[i].location) &&
                 ra.lines[i].qty == rb.lines[i].qty &&
                 ra.lines[i].fulfilled == rb.lines[i].fulfilled &&
                 ra.lines[i].released == rb.lines[i].released;
      }
      if (!same && diffs++ < 5)
        fprintf(stderr, "  %s: reservation %s differs (%d/%d)\n", what, id, x, y);
    }
  atp_str_t ga[4], gb[4];
  uint32_t na = 0, nb = 0;
  int x = atp_group_get(a, ATP_STR("G"), ga, 4, &na);
  int y = atp_group_get(b, ATP_STR("G"), gb, 4, &nb);
  if (x != y || na != nb || (na && !str_eq(ga[0], gb[0]))) {
    if (diffs++ < 5) fprintf(stderr, "  %s: group G differs\n", what);
  }
  atp_engine_stats_t sa, sb;
  atp_engine_stats(a, &sa);
  atp_engine_stats(b, &sb);
  if (sa.idempotency_ids != sb.idempotency_ids || sa.positions != sb.positions) {
    if (diffs++ < 5)
      fprintf(stderr,
              "  %s: ids %" PRIu64 "/%" PRIu64 " positions %" PRIu64 "/%" PRIu64 "\n",
              what, sa.idempotency_ids, sb.idempotency_ids, sa.positions, sb.positions);
  }
  for (int i = 0; i < 2; i++) /* held, committed: the ended ones purge (above) */
    if (sa.reservations_by_status[i] != sb.reservations_by_status[i] && diffs++ < 5)
      fprintf(stderr, "  %s: status %d count %" PRIu64 "/%" PRIu64 "\n", what, i,
              sa.reservations_by_status[i], sb.reservations_by_status[i]);
  return diffs;
}

static atp_engine_config_t config_for(atp_change_fn hook) {
  atp_engine_config_t c;
  memset(&c, 0, sizeof c);
  c.positions_max = 1024;
  c.reservations_max = 1u << 16;
  c.idempotency_max = 1u << 16;
  c.ended_ttl_ms = 2000;
  c.idempotency_ttl_ms = 4000;
  c.clock = test_clock;
  c.on_change = hook;
  return c;
}

/* --- a copy during a reserve ---------------------------------------------------------
 * A reserve takes its lines' units one position at a time and only then knows
 * whether it keeps them. A snapshot's copy of a position made in between must
 * not show the takes under a version the journal describes otherwise: the
 * journal records a refused reserve as no change (a version, no units), a
 * kept one as one change per position. These tests park the reserving thread
 * after its first take (atp__test_on_take), copy the engine from another
 * thread meanwhile, and restore the copy with the journal after it. */

extern void (*atp__test_on_take)(void); /* src/engine/engine_internal.h */

static pthread_mutex_t park_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t park_cv = PTHREAD_COND_INITIALIZER;
static int park_state; /* 0 armed, 1 a thread parked, 2 let go */
static bool export_done;

static void park_first_take(void) {
  pthread_mutex_lock(&park_mu);
  if (park_state == 0) {
    park_state = 1;
    pthread_cond_broadcast(&park_cv);
    while (park_state == 1) pthread_cond_wait(&park_cv, &park_mu);
  }
  pthread_mutex_unlock(&park_mu);
}

typedef struct {
  const atp_reserve_req_t *req;
  int rc;
} reserve_arg_t;

static void *reserve_thread(void *arg) {
  reserve_arg_t *a = arg;
  atp_reservation_t *r = malloc(sizeof *r);
  atp_shortfalls_t *sf = malloc(sizeof *sf);
  atp_result_t res;
  a->rc = atp_reserve(E, a->req, r, sf, &res);
  free(r);
  free(sf);
  return NULL;
}

static int apply_export(void *ctx, const atp_change_t *records, uint32_t count) {
  return atp_engine_apply(ctx, records, count);
}

static void *export_thread(void *arg) {
  atp_export_counts_t counts;
  ATP_ASSERT(atp_engine_export(E, apply_export, arg, &counts) == 0);
  pthread_mutex_lock(&park_mu);
  export_done = true;
  pthread_cond_broadcast(&park_cv);
  pthread_mutex_unlock(&park_mu);
  return NULL;
}

static int position_diff(atp_engine_t *a, atp_engine_t *b, atp_str_t sku,
                         atp_str_t loc) {
  atp_position_t x, y;
  int rx = atp_position_get(a, sku, loc, &x), ry = atp_position_get(b, sku, loc, &y);
  if (rx || ry) return 1;
  if (x.on_hand == y.on_hand && x.reserved == y.reserved &&
      x.committed == y.committed && x.version == y.version)
    return 0;
  fprintf(stderr,
          "  %.*s@%.*s on_hand %" PRId64 "/%" PRId64 " reserved %" PRId64 "/%" PRId64
          " committed %" PRId64 "/%" PRId64 " version %" PRIu64 "/%" PRIu64 "\n",
          (int)sku.len, sku.ptr, (int)loc.len, loc.ptr, x.on_hand, y.on_hand,
          x.reserved, y.reserved, x.committed, y.committed, x.version, y.version);
  return 1;
}

/* Runs req on its own thread, parked after its first take while another
 * thread exports the engine into a fresh one; then lets it go, replays the
 * journal from before the export over the copy and compares the positions. */
static void copy_during_reserve(const atp_reserve_req_t *req, int want_rc,
                                const atp_key_t *keys, uint32_t key_count) {
  atp_engine_config_t plain = config_for(NULL);
  atp_engine_t *b = NULL;
  REQUIRE(atp_engine_create(&plain, &b) == 0);
  park_state = 0;
  export_done = false;
  atp__test_on_take = park_first_take;
  reserve_arg_t a = {.req = req};
  pthread_t rt, xt;
  pthread_create(&rt, NULL, reserve_thread, &a);
  pthread_mutex_lock(&park_mu);
  while (park_state != 1) pthread_cond_wait(&park_cv, &park_mu);
  pthread_mutex_unlock(&park_mu);
  uint64_t lsn = journal_lsn();
  pthread_create(&xt, NULL, export_thread, b);
  /* The copy either completes while the reserve is parked or waits for it;
   * a quarter of a second tells which, and either answer must restore. */
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_nsec += 250 * 1000000L;
  if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
  pthread_mutex_lock(&park_mu);
  while (!export_done)
    if (pthread_cond_timedwait(&park_cv, &park_mu, &until)) break;
  park_state = 2;
  pthread_cond_broadcast(&park_cv);
  pthread_mutex_unlock(&park_mu);
  pthread_join(rt, NULL);
  pthread_join(xt, NULL);
  atp__test_on_take = NULL;
  CHECK_EQ(a.rc, want_rc);
  CHECK_EQ(replay_after(b, lsn), 0);
  int diffs = 0;
  for (uint32_t i = 0; i < key_count; i++)
    diffs += position_diff(E, b, keys[i].sku, keys[i].location);
  CHECK_EQ(diffs, 0);
  atp_engine_destroy(b);
}

static void stock(atp_str_t sku, atp_str_t loc, int64_t on_hand) {
  static int n;
  char id[16];
  int len = snprintf(id, sizeof id, "c%d", n++);
  atp_count_req_t c = {.id = {id, (uint32_t)len},
                       .sku = sku,
                       .location = loc,
                       .on_hand = on_hand,
                       .counted_at_ms = atomic_load(&clock_ms),
                       .source = ATP_STR("m")};
  atp_count_res_t out;
  atp_result_t res;
  REQUIRE(atp_count(E, &c, &out, &res) == 0);
}

/* Refused: the first line is taken, the second finds nothing, the first is
 * given back. A copy between must hold none of it. */
static void test_copy_during_refused_reserve(void) {
  atomic_store(&clock_ms, 1700000000000LL);
  atp_engine_config_t c = config_for(journal_hook);
  REQUIRE(atp_engine_create(&c, &E) == 0);
  stock(ATP_STR("P"), ATP_STR("L0"), 5);
  stock(ATP_STR("Q"), ATP_STR("L0"), 0);
  atp_line_req_t lines[2] = {
      {.sku = ATP_STR("P"), .location = ATP_STR("L0"), .qty = 3},
      {.sku = ATP_STR("Q"), .location = ATP_STR("L0"), .qty = 1}};
  atp_reserve_req_t q = {.id = ATP_STR("r1"), .lines = lines, .line_count = 2};
  atp_key_t keys[2] = {{ATP_STR("P"), ATP_STR("L0")}, {ATP_STR("Q"), ATP_STR("L0")}};
  copy_during_reserve(&q, ATP_EINSUFFICIENT, keys, 2);
  atp_engine_destroy(E);
  E = NULL;
  journal_free();
}

/* Kept, with two lines on one position (a located line and a group line that
 * lands on the same location): two takes, one change record for both. A copy
 * between the takes must hold neither or both. */
static void test_copy_between_merged_takes(void) {
  atomic_store(&clock_ms, 1700000000000LL);
  atp_engine_config_t c = config_for(journal_hook);
  REQUIRE(atp_engine_create(&c, &E) == 0);
  atp_str_t l0 = ATP_STR("L0");
  atp_result_t res;
  REQUIRE(atp_group_put(E, ATP_STR("G1"), &l0, 1, &res) == 0);
  stock(ATP_STR("M"), ATP_STR("L0"), 10);
  atp_line_req_t lines[2] = {{.sku = ATP_STR("M"), .location = l0, .qty = 2},
                             {.sku = ATP_STR("M"), .group = ATP_STR("G1"), .qty = 2}};
  atp_reserve_req_t q = {.id = ATP_STR("r2"), .lines = lines, .line_count = 2};
  atp_key_t key = {ATP_STR("M"), l0};
  copy_during_reserve(&q, 0, &key, 1);
  atp_position_t p;
  REQUIRE(atp_position_get(E, key.sku, key.location, &p) == 0);
  CHECK_EQ(p.reserved, 4);
  atp_engine_destroy(E);
  E = NULL;
  journal_free();
}

/* A reserve refused for spanning more positions than a reservation may: the
 * position whose take found no room is given back too. The journal alone
 * must still describe every version the primary handed out. */
static void test_versions_of_a_too_wide_reserve(void) {
  atomic_store(&clock_ms, 1700000000000LL);
  atp_engine_config_t c = config_for(journal_hook);
  c.positions_max = 2048;
  REQUIRE(atp_engine_create(&c, &E) == 0);
  enum { N = ATP_RESERVATION_POSITIONS_MAX };
  static char names[N][8];
  static atp_str_t locs[N];
  for (int i = 0; i < N; i++) {
    int len = snprintf(names[i], sizeof names[i], "W%d", i);
    locs[i] = (atp_str_t){names[i], (uint32_t)len};
    stock(ATP_STR("X"), locs[i], 1);
  }
  stock(ATP_STR("X"), ATP_STR("Z"), 1);
  atp_result_t res;
  REQUIRE(atp_group_put(E, ATP_STR("W"), locs, N, &res) == 0);
  atp_line_req_t lines[2] = {
      {.sku = ATP_STR("X"), .group = ATP_STR("W"), .qty = N, .allow_split = true},
      {.sku = ATP_STR("X"), .location = ATP_STR("Z"), .qty = 1}};
  atp_reserve_req_t q = {.id = ATP_STR("r3"), .lines = lines, .line_count = 2};
  atp_reservation_t *r = malloc(sizeof *r);
  atp_shortfalls_t *sf = malloc(sizeof *sf);
  CHECK_EQ(atp_reserve(E, &q, r, sf, &res), ATP_EBADREQ);
  free(r);
  free(sf);
  atp_engine_config_t plain = config_for(NULL);
  plain.positions_max = 2048;
  atp_engine_t *whole = NULL;
  REQUIRE(atp_engine_create(&plain, &whole) == 0);
  CHECK_EQ(replay_after(whole, 0), 0);
  int diffs = position_diff(E, whole, ATP_STR("X"), ATP_STR("Z"));
  for (int i = 0; i < N; i++) diffs += position_diff(E, whole, ATP_STR("X"), locs[i]);
  CHECK_EQ(diffs, 0);
  atp_engine_destroy(whole);
  atp_engine_destroy(E);
  E = NULL;
  journal_free();
}

#define SNAPS_MAX 8

static void test_model(void) {
  const char *env = getenv("ATPD_TEST_SEED");
  SEED = env ? strtoull(env, NULL, 10) : (uint64_t)time(NULL);
  make_dir();
  atomic_store(&clock_ms, 1700000000000LL);
  atomic_store(&stop, false);
  atp_engine_config_t c = config_for(journal_hook);
  REQUIRE(atp_engine_create(&c, &E) == 0);
  atp_str_t locs[3] = {ATP_STR("L0"), ATP_STR("L1"), ATP_STR("L2")};
  atp_result_t res;
  REQUIRE(atp_group_put(E, ATP_STR("G"), locs, 3, &res) == 0);
  pthread_t th[THREADS], tick;
  for (int t = 0; t < THREADS; t++)
    pthread_create(&th[t], NULL, traffic, (void *)(intptr_t)t);
  pthread_create(&tick, NULL, ticker, NULL);
  atp_snapshot_config_t sc;
  atp_snapshot_config_init(&sc, DIR_);
  sc.chunk_bytes = 4096; /* many chunks */
  atp_snapshot_info_t snaps[SNAPS_MAX];
  char paths[SNAPS_MAX][600];
  int taken = 0;
  uint64_t rng = SEED;
  char err[1024];
  for (; taken < SNAPS_MAX; taken++) {
    usleep((useconds_t)(1000 + splitmix(&rng) % 20000));
    uint64_t lsn = journal_lsn();
    int rc =
        atp_snapshot_write(&sc, E, lsn, NULL, NULL, &snaps[taken], err, sizeof err);
    CHECK_EQ(rc, 0);
    if (rc) fprintf(stderr, "  %s\n", err);
    /* Keep every generation for the check: move it aside. */
    snprintf(paths[taken], sizeof paths[taken], "%s/kept-%d", DIR_, taken);
    CHECK_EQ(rename(snaps[taken].path, paths[taken]), 0);
  }
  for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
  atomic_store(&stop, true);
  pthread_join(tick, NULL);
  /* The wheel runs whole ticks of ATP_TIMERWHEEL_TICK_MS: a record due
   * within the tick now under way waits for the next one, while a restored
   * engine's first tick files every record anew and expires all that is due.
   * At a tick's boundary the two agree, so the clock is moved to one. */
  int64_t last = atomic_load(&clock_ms);
  atomic_store(&clock_ms,
               last + (ATP_TIMERWHEEL_TICK_MS - last % ATP_TIMERWHEEL_TICK_MS) %
                          ATP_TIMERWHEEL_TICK_MS);
  /* What a restored server does first: a tick, which retires the records
   * replay marked dead and expires what is overdue; the primary's too. */
  atp_engine_tick(E);

  /* The journal alone describes the state: replayed whole, it is the primary. */
  atp_engine_config_t plain = config_for(NULL);
  atp_engine_t *whole = NULL;
  REQUIRE(atp_engine_create(&plain, &whole) == 0);
  CHECK_EQ(replay_after(whole, 0), 0);
  atp_engine_tick(whole);
  int diffs = compare(E, whole, "journal");
  for (int i = 0; i < taken; i++) {
    atp_engine_t *b = NULL;
    REQUIRE(atp_engine_create(&plain, &b) == 0);
    atp_snapshot_info_t info;
    int rc = atp_snapshot_load(paths[i], b, &info, err, sizeof err);
    CHECK_EQ(rc, 0);
    if (rc) fprintf(stderr, "  %s\n", err);
    CHECK_EQ(info.lsn, snaps[i].lsn);
    CHECK(info.chunks >= 1);
    CHECK_EQ(replay_after(b, info.lsn), 0);
    atp_engine_tick(b);
    char what[32];
    snprintf(what, sizeof what, "snapshot %d", i);
    diffs += compare(E, b, what);
    atp_engine_destroy(b);
  }
  if (diffs) fprintf(stderr, "  seed %" PRIu64 " (ATPD_TEST_SEED)\n", SEED);
  CHECK_EQ(diffs, 0);
  atp_engine_destroy(whole);
  atp_engine_destroy(E);
  E = NULL;
  journal_free();
}

/* --- files ---------------------------------------------------------------------- */

static void flip_byte(const char *path, long offset) {
  FILE *f = fopen(path, "r+b");
  REQUIRE(f);
  fseek(f, offset, SEEK_SET);
  int ch = fgetc(f);
  fseek(f, offset, SEEK_SET);
  fputc(ch ^ 0x10, f);
  fclose(f);
}

static int refuse_settle(void *ctx) {
  (void)ctx;
  return ATP_EUNAVAILABLE;
}

static void test_files(void) {
  make_dir();
  atomic_store(&clock_ms, 1700000000000LL);
  atp_engine_config_t c = config_for(NULL);
  REQUIRE(atp_engine_create(&c, &E) == 0);
  atp_result_t res;
  char sku[16];
  for (int i = 0; i < 300; i++) {
    sprintf(sku, "S%03d", i);
    atp_position_t p;
    REQUIRE(atp_safety_stock_set(E, (atp_str_t){sku, 4}, ATP_STR("L"), 1, &p, &res) ==
            0);
  }
  atp_snapshot_config_t sc;
  atp_snapshot_config_init(&sc, DIR_);
  sc.chunk_bytes = 2048;
  atp_snapshot_info_t s1, s2, s3, found;
  char err[1024];
  CHECK_EQ(atp_snapshot_write(&sc, E, 10, NULL, NULL, &s1, err, sizeof err), 0);
  CHECK_EQ(atp_snapshot_write(&sc, E, 20, NULL, NULL, &s2, err, sizeof err), 0);
  CHECK_EQ(atp_snapshot_trim_lsn(&sc), 10);
  CHECK_EQ(atp_snapshot_write(&sc, E, 30, NULL, NULL, &s3, err, sizeof err), 0);
  CHECK_EQ(s3.counts.positions, 300);
  CHECK(s3.chunks >= 1);
  /* Two generations kept; the journal may go up to the older one. */
  CHECK(access(s1.path, F_OK) != 0);
  CHECK_EQ(atp_snapshot_trim_lsn(&sc), 20);
  CHECK_EQ(atp_snapshot_find(&sc, &found, err, sizeof err), 0);
  CHECK_EQ(found.lsn, 30);
  /* A flipped bit in the newest: named, and the older one is found instead. */
  flip_byte(s3.path, (long)s3.bytes / 2);
  CHECK_EQ(atp_snapshot_find(&sc, &found, err, sizeof err), 0);
  CHECK_EQ(found.lsn, 20);
  CHECK(strstr(err, "checksum") != NULL);
  atp_engine_t *b = NULL;
  REQUIRE(atp_engine_create(&c, &b) == 0);
  atp_snapshot_info_t info;
  CHECK_EQ(atp_snapshot_load(s3.path, b, &info, err, sizeof err), ATP_EINTERNAL);
  CHECK(strstr(err, "checksum") != NULL);
  atp_engine_stats_t st;
  /* One pass: the chunks before the bad one went in, so the engine is
   * discarded and the older generation goes into a fresh one. */
  atp_engine_destroy(b);
  REQUIRE(atp_engine_create(&c, &b) == 0);
  uint64_t lsns[4];
  CHECK_EQ(atp_snapshot_list(&sc, lsns, 4), 2);
  CHECK_EQ(lsns[0], 30);
  CHECK_EQ(lsns[1], 20);
  char p2[600];
  atp_snapshot_path(&sc, 20, p2, sizeof p2);
  CHECK(strcmp(p2, s2.path) == 0);
  CHECK_EQ(atp_snapshot_load(s2.path, b, &info, err, sizeof err), 0);
  atp_engine_stats(b, &st);
  CHECK_EQ(st.positions, 300);
  atp_engine_destroy(b);
  /* A settle that refuses: nothing published, the temporary file gone. */
  atp_snapshot_info_t s4;
  CHECK_EQ(
      atp_snapshot_write(&sc, E, 40, refuse_settle, NULL, &s4, err, sizeof err) != 0,
      1);
  CHECK(access(s4.path, F_OK) != 0);
  /* A torn file (a crash mid-write leaves only a temporary; a truncated
   * published one is refused). */
  CHECK_EQ(truncate(s2.path, (off_t)s2.bytes - 5), 0);
  CHECK_EQ(atp_snapshot_find(&sc, &found, err, sizeof err), ATP_ENOTFOUND);
  atp_engine_destroy(E);
  E = NULL;
}

TEST_MAIN({
  RUN(test_files);
  RUN(test_copy_during_refused_reserve);
  RUN(test_copy_between_merged_takes);
  RUN(test_versions_of_a_too_wide_reserve);
  RUN(test_model);
})
