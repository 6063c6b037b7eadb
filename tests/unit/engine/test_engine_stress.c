/* test_engine_stress.c - the engine under concurrency (built under TSan too).
 *
 * Rounds of: 4 worker threads doing mixed reserve, commit, release, extend,
 * fulfil, adjust and count on one hot position and many cold ones; a reader
 * thread checking every position snapshot it sees; a ticker thread moving the
 * injected clock and calling atp_engine_tick (so reservations expire while
 * others act on them). After each round (threads joined) the main thread
 * checks the invariants:
 *   - every position: reserved == sum of remaining units of held reservations,
 *     committed == sum of remaining units of committed ones; the formulas;
 *   - on_hand == the applied adjustments minus the fulfilled units (cold), or
 *     the round's count figure plus the round's adjustments (counted ones);
 *   - the change hook's deltas, summed, equal every counter;
 *   - no oversell: on the hot position (fixed stock, only reserves) the units
 *     granted never exceed on_hand - safety_stock - committed.
 * Readers assert, for every snapshot, available >= 0 and
 * available == max(0, on_hand - safety_stock - reserved - committed), and on
 * the hot position reserved + committed <= on_hand - safety_stock.
 * Then more threads than shards reserve at once while a ticker drains their
 * inboxes, and every reservation must expire afterwards.
 *
 *   test_engine_stress [SEED]   or ATP_SEED; ATP_STRESS_OPS=N ops per worker
 *                               per round (default 4000)
 */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "atp/engine.h"
#include "engine_test_util.h"
#include "test.h"

#define WORKERS    4
#define ROUNDS     6
#define NCOLD      32
#define NCNT       8
#define NPOS       (1 + NCOLD + NCNT)
#define HOT        0
#define COLD0      1
#define CNT0       (1 + NCOLD)
#define HOT_SAFETY 7
#define MAXOWN     8192

static char SKUS[NPOS][16], LOCS[NPOS][16];
static et_clock_t CLK;
static atp_engine_t *E;
static uint64_t SEED;
static int OPS = 4000;

/* Shared tallies (atomics: workers and hooks add concurrently). */
static _Atomic int64_t ADJ_SUM[NPOS];       /* applied adjustments, all time (cold) */
static _Atomic int64_t FULFILLED_SUM[NPOS]; /* fulfilled units, all time */
static _Atomic int64_t ROUND_ADJ[NPOS]; /* applied adjustments this round (counted) */
static _Atomic int COUNTED[NPOS];       /* a count applied this round */
static _Atomic int64_t HOT_GRANTED;     /* units granted on HOT this round */
static _Atomic int64_t HOOK_ON_HAND[NPOS], HOOK_SAFETY[NPOS], HOOK_RESERVED[NPOS],
    HOOK_COMMITTED[NPOS];
static _Atomic int HOOK_ERRORS;
static _Atomic int READ_ERRORS;
static _Atomic uint64_t READS;
static _Atomic int STOP;
static _Atomic int WORKER_ERRORS;
static int64_t ROUND_START;
static int ROUND;

static int64_t count_figure(int p, int round) {
  return 100 + 7 * p + round;
}

static int pos_index(atp_str_t sku) {
  if (sku.len < 2) return -1;
  if (et_str_is(sku, "HOT")) return HOT;
  int n = 0;
  for (uint32_t i = 1; i < sku.len; i++) {
    if (sku.ptr[i] < '0' || sku.ptr[i] > '9') return -1;
    n = n * 10 + (sku.ptr[i] - '0');
  }
  if (sku.ptr[0] == 'C' && n < NCOLD) return COLD0 + n;
  if (sku.ptr[0] == 'K' && n < NCNT) return CNT0 + n;
  return -1;
}

static void hook(void *ctx, const atp_change_t *records, uint32_t count) {
  (void)ctx;
  if (count == 0) atomic_fetch_add(&HOOK_ERRORS, 1);
  for (uint32_t i = 0; i < count; i++) {
    if (records[i].kind != ATP_CHANGE_POSITION) continue;
    const atp_change_position_t *c = &records[i].u.position;
    int p = pos_index(c->sku);
    if (p < 0 || !et_str_is(c->location, LOCS[p])) {
      atomic_fetch_add(&HOOK_ERRORS, 1);
      continue;
    }
    atomic_fetch_add_explicit(&HOOK_ON_HAND[p], c->d_on_hand, memory_order_relaxed);
    atomic_fetch_add_explicit(&HOOK_SAFETY[p], c->d_safety_stock, memory_order_relaxed);
    atomic_fetch_add_explicit(&HOOK_RESERVED[p], c->d_reserved, memory_order_relaxed);
    atomic_fetch_add_explicit(&HOOK_COMMITTED[p], c->d_committed, memory_order_relaxed);
  }
}

/* --- workers -----------------------------------------------------------------------
 */

typedef struct {
  char id[24];
  int nlines;
  int pos[3];
  int64_t fulfilled[3]; /* as last seen by the owner (only it fulfils) */
  bool hot;
  bool ended; /* known ended: nothing more to do with it */
} own_t;

typedef struct {
  int index;
  et_rng_t rng;
  own_t *own; /* every reservation this thread created, all rounds */
  int nown;
  int seq;
  atp_reservation_t out;
  atp_result_t result;
  atp_shortfalls_t sf;
} worker_t;

static worker_t WORKERS_STATE[WORKERS];

#define WFAIL(w, ...)                                               \
  do {                                                              \
    fprintf(stderr, "  worker %d round %d: ", (w)->index, ROUND);   \
    fprintf(stderr, __VA_ARGS__);                                   \
    fprintf(stderr, " (replay with ATP_SEED=%" PRIu64 ")\n", SEED); \
    atomic_fetch_add(&WORKER_ERRORS, 1);                            \
  } while (0)

static atp_str_t sku_of(int p) {
  return et_str(SKUS[p]);
}
static atp_str_t loc_of(int p) {
  return et_str(LOCS[p]);
}

/* Takes the units the owner did not know were fulfilled into the tallies. */
static void note_fulfilled(own_t *o, const atp_reservation_t *r) {
  for (int k = 0; k < o->nlines; k++) {
    const atp_res_line_t *l = et_res_line(r, sku_of(o->pos[k]), loc_of(o->pos[k]));
    if (!l) continue;
    if (l->fulfilled != o->fulfilled[k]) {
      atomic_fetch_add(&FULFILLED_SUM[o->pos[k]], l->fulfilled - o->fulfilled[k]);
      o->fulfilled[k] = l->fulfilled;
    }
  }
}

static void w_reserve(worker_t *w, bool hot) {
  if (w->nown >= MAXOWN) return;
  own_t *o = &w->own[w->nown];
  memset(o, 0, sizeof *o);
  snprintf(o->id, sizeof o->id, "w%d-%d", w->index, w->seq++);
  atp_line_req_t lines[3];
  memset(lines, 0, sizeof lines);
  int64_t hot_qty = 0;
  if (hot) {
    o->hot = true;
    o->pos[o->nlines++] = HOT;
    hot_qty = et_rng_range(&w->rng, 1, 3);
    if (et_rng_pct(&w->rng, 25))
      o->pos[o->nlines++] = COLD0 + (int)et_rng_below(&w->rng, NCOLD);
  } else {
    int n = 1 + (int)et_rng_below(&w->rng, 3);
    for (int k = 0; k < n; k++) {
      int p = COLD0 + (int)et_rng_below(&w->rng, NCOLD);
      bool dup = false;
      for (int j = 0; j < o->nlines; j++) dup |= o->pos[j] == p;
      if (!dup) o->pos[o->nlines++] = p;
    }
  }
  for (int k = 0; k < o->nlines; k++) {
    lines[k].sku = sku_of(o->pos[k]);
    lines[k].location = loc_of(o->pos[k]);
    lines[k].qty = o->pos[k] == HOT ? hot_qty : et_rng_range(&w->rng, 1, 4);
  }
  atp_reserve_req_t req;
  memset(&req, 0, sizeof req);
  req.id = et_str(o->id);
  req.lines = lines;
  req.line_count = (uint32_t)o->nlines;
  /* Hot reservations never expire within a round: the hot stock only shrinks. */
  req.ttl_ms = hot ? ATP_TTL_MS_MAX : et_rng_range(&w->rng, 1000, 8000);
  int rc = atp_reserve(E, &req, &w->out, &w->sf, &w->result);
  if (rc == ATP_EINSUFFICIENT) return;
  if (rc != 0) {
    WFAIL(w, "reserve %s: rc %d (%s)", o->id, rc, w->result.message);
    return;
  }
  if (w->out.line_count != (uint32_t)o->nlines || w->out.status != ATP_STATUS_HELD)
    WFAIL(w, "reserve %s: %u lines, status %d", o->id, w->out.line_count,
          w->out.status);
  if (hot) atomic_fetch_add(&HOT_GRANTED, hot_qty);
  w->nown++;
}

static own_t *pick_own(worker_t *w) {
  for (int tries = 0; tries < 8 && w->nown > 0; tries++) {
    uint32_t span = w->nown < 64 ? (uint32_t)w->nown : 64;
    own_t *o = &w->own[w->nown - 1 - (int)et_rng_below(&w->rng, span)];
    if (!o->ended && !o->hot) return o;
  }
  return NULL;
}

/* After an ECONFLICT: the reservation ended under us (expired). */
static void on_conflict(worker_t *w, own_t *o, const char *what) {
  int st = w->result.status;
  if (st == ATP_STATUS_EXPIRED || st == ATP_STATUS_RELEASED ||
      st == ATP_STATUS_FULFILLED)
    o->ended = true;
  if (st != ATP_STATUS_EXPIRED && st != ATP_STATUS_COMMITTED)
    WFAIL(w, "%s %s: conflict with status %d", what, o->id, st);
}

static void w_commit(worker_t *w) {
  own_t *o = pick_own(w);
  if (!o) return;
  int rc = atp_commit(E, et_str(o->id), ATP_STR(""), &w->out, &w->result);
  if (rc == ATP_ECONFLICT)
    on_conflict(w, o, "commit");
  else if (rc != 0)
    WFAIL(w, "commit %s: rc %d", o->id, rc);
}

static void w_extend(worker_t *w) {
  own_t *o = pick_own(w);
  if (!o) return;
  int rc = atp_extend(E, et_str(o->id), et_rng_range(&w->rng, 1000, 8000), &w->out,
                      &w->result);
  if (rc == ATP_ECONFLICT) {
    if (w->result.status != ATP_STATUS_COMMITTED) on_conflict(w, o, "extend");
  } else if (rc != 0) {
    WFAIL(w, "extend %s: rc %d", o->id, rc);
  }
}

static void w_release_or_fulfil(worker_t *w, bool fulfil) {
  own_t *o = pick_own(w);
  if (!o) return;
  /* Read it first to name a line with something left. */
  if (atp_reservation_get(E, et_str(o->id), &w->out) != 0) {
    WFAIL(w, "get %s failed", o->id);
    return;
  }
  note_fulfilled(o, &w->out);
  if (w->out.status != ATP_STATUS_HELD && w->out.status != ATP_STATUS_COMMITTED) {
    o->ended = true;
    return;
  }
  atp_qty_line_t line = {{NULL, 0}, {NULL, 0}, 0};
  uint32_t n = 0;
  if (et_rng_pct(&w->rng, 50)) {
    for (uint32_t i = 0; i < w->out.line_count && n == 0; i++) {
      int64_t rem = et_line_remaining(&w->out.lines[i]);
      if (rem > 0) {
        line = (atp_qty_line_t){w->out.lines[i].sku, w->out.lines[i].location,
                                et_rng_range(&w->rng, 1, rem)};
        n = 1;
      }
    }
  }
  /* line's strings point into w->out: copy them before w->out is rewritten. */
  char sku[16] = "", loc[16] = "";
  if (n) {
    snprintf(sku, sizeof sku, "%.*s", (int)line.sku.len, line.sku.ptr);
    snprintf(loc, sizeof loc, "%.*s", (int)line.location.len, line.location.ptr);
    line.sku = et_str(sku);
    line.location = et_str(loc);
  }
  int rc;
  if (fulfil) {
    char fid[32];
    snprintf(fid, sizeof fid, "f%d-%d", w->index, w->seq++);
    rc = atp_fulfil(E, et_str(o->id), et_str(fid), n ? &line : NULL, n, &w->out,
                    &w->result);
  } else {
    rc = atp_release(E, et_str(o->id), n ? &line : NULL, n, &w->out, &w->result);
  }
  if (rc == ATP_ECONFLICT) {
    on_conflict(w, o, fulfil ? "fulfil" : "release");
    return;
  }
  if (rc != 0) {
    WFAIL(w, "%s %s: rc %d (%s)", fulfil ? "fulfil" : "release", o->id, rc,
          w->result.message);
    return;
  }
  note_fulfilled(o, &w->out);
  if (w->out.status >= ATP_STATUS_RELEASED) o->ended = true;
}

static void w_adjust(worker_t *w, int p, int64_t lo, int64_t hi) {
  atp_adjust_req_t req;
  memset(&req, 0, sizeof req);
  char id[32];
  snprintf(id, sizeof id, "a%d-%d", w->index, w->seq++);
  req.id = et_str(id);
  req.sku = sku_of(p);
  req.location = loc_of(p);
  do req.delta = et_rng_range(&w->rng, lo, hi);
  while (req.delta == 0);
  req.reason = req.delta > 0 ? ATP_REASON_RECEIVED : ATP_REASON_SALE;
  req.source = ATP_STR("stress");
  req.occurred_at_ms = ATP_TIME_NONE;
  atp_adjust_res_t out;
  int rc = atp_adjust(E, &req, &out, &w->result);
  if (rc != 0 || !out.applied) {
    WFAIL(w, "adjust %s: rc %d applied %d", id, rc, out.applied);
    return;
  }
  if (p >= CNT0)
    atomic_fetch_add(&ROUND_ADJ[p], req.delta);
  else
    atomic_fetch_add(&ADJ_SUM[p], req.delta);
}

static void w_count(worker_t *w) {
  int p = CNT0 + (int)et_rng_below(&w->rng, NCNT);
  atp_count_req_t req;
  memset(&req, 0, sizeof req);
  char id[32];
  snprintf(id, sizeof id, "c%d-%d", w->index, w->seq++);
  req.id = et_str(id);
  req.sku = sku_of(p);
  req.location = loc_of(p);
  req.on_hand = count_figure(p, ROUND);
  req.counted_at_ms = ROUND_START - 1;
  req.source = ATP_STR("stress");
  atp_count_res_t out;
  int rc = atp_count(E, &req, &out, &w->result);
  if (rc != 0) {
    WFAIL(w, "count %s: rc %d", id, rc);
    return;
  }
  atomic_store(&COUNTED[p], 1);
}

static void check_snapshot(const atp_position_t *p, int index, const char *who) {
  bool ok = et_position_consistent(p);
  if (index == HOT && p->reserved + p->committed > p->on_hand - p->safety_stock)
    ok = false;
  if (!ok && atomic_fetch_add(&READ_ERRORS, 1) < 5)
    fprintf(
        stderr,
        "  %s: inconsistent snapshot of %s@%s: on_hand %lld safety %lld reserved %lld "
        "committed %lld available %lld shortfall %lld version %llu\n",
        who, SKUS[index], LOCS[index], (long long)p->on_hand,
        (long long)p->safety_stock, (long long)p->reserved, (long long)p->committed,
        (long long)p->available, (long long)p->shortfall,
        (unsigned long long)p->version);
}

static void w_read(worker_t *w) {
  int p = et_rng_pct(&w->rng, 50) ? HOT : (int)et_rng_below(&w->rng, NPOS);
  atp_position_t pos;
  if (atp_position_get(E, sku_of(p), loc_of(p), &pos) == 0)
    check_snapshot(&pos, p, "worker");
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  for (int i = 0; i < OPS; i++) {
    uint32_t r = et_rng_below(&w->rng, 100);
    if (r < 30)
      w_reserve(w, true);
    else if (r < 50)
      w_reserve(w, false);
    else if (r < 58)
      w_commit(w);
    else if (r < 66)
      w_release_or_fulfil(w, false);
    else if (r < 74)
      w_release_or_fulfil(w, true);
    else if (r < 78)
      w_extend(w);
    else if (r < 86)
      w_adjust(w, COLD0 + (int)et_rng_below(&w->rng, NCOLD), -3, 10);
    else if (r < 92)
      w_adjust(w, CNT0 + (int)et_rng_below(&w->rng, NCNT), -3, 5);
    else if (r < 95)
      w_count(w);
    else
      w_read(w);
  }
  return NULL;
}

static void *reader_main(void *arg) {
  et_rng_t rng = {*(uint64_t *)arg};
  atp_position_t list[8];
  while (!atomic_load(&STOP)) {
    int p = et_rng_pct(&rng, 40) ? HOT : (int)et_rng_below(&rng, NPOS);
    atp_position_t pos;
    if (atp_position_get(E, sku_of(p), loc_of(p), &pos) == 0)
      check_snapshot(&pos, p, "reader");
    if (p != HOT && et_rng_pct(&rng, 10)) {
      uint32_t n = 0;
      if (atp_sku_positions(E, sku_of(p), list, 8, &n) == 0)
        for (uint32_t i = 0; i < n && i < 8; i++)
          check_snapshot(&list[i], p, "listing");
    }
    atomic_fetch_add_explicit(&READS, 1, memory_order_relaxed);
  }
  return NULL;
}

static void *ticker_main(void *arg) {
  (void)arg;
  while (!atomic_load(&STOP)) {
    et_clock_add(&CLK, 50);
    atp_engine_tick(E);
    usleep(200);
  }
  return NULL;
}

/* --- the main thread's checks --------------------------------------------------------
 */

static atp_reservation_t R;
static int64_t HELD[NPOS], COMMITTED_UNITS[NPOS], FULFILLED_SEEN[NPOS];
static int64_t COUNT_EXPECT[NPOS];

static bool adjust_main(const char *id, int p, int64_t delta) {
  atp_adjust_req_t req;
  memset(&req, 0, sizeof req);
  req.id = et_str(id);
  req.sku = sku_of(p);
  req.location = loc_of(p);
  req.delta = delta;
  req.reason = ATP_REASON_CORRECTION;
  req.source = ATP_STR("stress");
  req.occurred_at_ms = ATP_TIME_NONE;
  atp_adjust_res_t out;
  atp_result_t result;
  return atp_adjust(E, &req, &out, &result) == 0 && out.applied;
}

static void check_round(int round, int64_t hot_supply) {
  memset(HELD, 0, sizeof HELD);
  memset(COMMITTED_UNITS, 0, sizeof COMMITTED_UNITS);
  memset(FULFILLED_SEEN, 0, sizeof FULFILLED_SEEN);
  for (int t = 0; t < WORKERS; t++) {
    worker_t *w = &WORKERS_STATE[t];
    for (int i = 0; i < w->nown; i++) {
      own_t *o = &w->own[i];
      int rc = atp_reservation_get(E, et_str(o->id), &R);
      if (rc != 0)
        fprintf(stderr,
                "  round %d: reservation %s (%s, known ended %d) not found: rc %d\n",
                round, o->id, o->hot ? "hot" : "cold", o->ended, rc);
      CHECK_EQ(rc, 0);
      if (rc) continue;
      for (uint32_t k = 0; k < R.line_count; k++) {
        int p = pos_index(R.lines[k].sku);
        REQUIRE(p >= 0);
        int64_t rem = et_line_remaining(&R.lines[k]);
        CHECK(rem >= 0);
        FULFILLED_SEEN[p] += R.lines[k].fulfilled;
        if (R.status == ATP_STATUS_HELD)
          HELD[p] += rem;
        else if (R.status == ATP_STATUS_COMMITTED)
          COMMITTED_UNITS[p] += rem;
        else
          CHECK_EQ(rem, 0); /* ended: nothing remains */
      }
      if (R.status == ATP_STATUS_HELD)
        CHECK(R.expires_at_ms != ATP_TIME_NONE && R.expires_at_ms > 0);
      else
        CHECK_EQ(R.expires_at_ms, ATP_TIME_NONE);
    }
  }
  for (int p = 0; p < NPOS; p++) {
    atp_position_t pos;
    REQUIRE(atp_position_get(E, sku_of(p), loc_of(p), &pos) == 0);
    CHECK(et_position_consistent(&pos));
    if (pos.reserved != HELD[p] || pos.committed != COMMITTED_UNITS[p])
      fprintf(stderr,
              "  round %d %s@%s: reserved %lld committed %lld, reservations say %lld "
              "%lld\n",
              round, SKUS[p], LOCS[p], (long long)pos.reserved,
              (long long)pos.committed, (long long)HELD[p],
              (long long)COMMITTED_UNITS[p]);
    CHECK_EQ(pos.reserved, HELD[p]);
    CHECK_EQ(pos.committed, COMMITTED_UNITS[p]);
    CHECK_EQ(FULFILLED_SEEN[p], atomic_load(&FULFILLED_SUM[p]));
    int64_t want_on_hand;
    if (p >= CNT0) {
      COUNT_EXPECT[p] =
          atomic_load(&COUNTED[p]) ? count_figure(p, round) : COUNT_EXPECT[p];
      COUNT_EXPECT[p] += atomic_load(&ROUND_ADJ[p]);
      want_on_hand = COUNT_EXPECT[p];
    } else {
      want_on_hand = atomic_load(&ADJ_SUM[p]) - atomic_load(&FULFILLED_SUM[p]);
    }
    if (pos.on_hand != want_on_hand)
      fprintf(stderr, "  round %d %s@%s: on_hand %lld, want %lld\n", round, SKUS[p],
              LOCS[p], (long long)pos.on_hand, (long long)want_on_hand);
    CHECK_EQ(pos.on_hand, want_on_hand);
    /* The hook's records add up to the state. */
    CHECK_EQ(atomic_load(&HOOK_ON_HAND[p]), pos.on_hand);
    CHECK_EQ(atomic_load(&HOOK_SAFETY[p]), pos.safety_stock);
    CHECK_EQ(atomic_load(&HOOK_RESERVED[p]), pos.reserved);
    CHECK_EQ(atomic_load(&HOOK_COMMITTED[p]), pos.committed);
    if (p == HOT) {
      int64_t granted = atomic_load(&HOT_GRANTED);
      printf("     round %d: hot supply %lld, granted %lld, reads %llu\n", round,
             (long long)hot_supply, (long long)granted,
             (unsigned long long)atomic_load(&READS));
      CHECK(granted <= hot_supply); /* no oversell */
      CHECK_EQ(pos.reserved, granted);
      CHECK_EQ(pos.available, hot_supply - granted);
      CHECK(granted >= hot_supply - 3); /* demand exceeded supply: it sold out */
    }
  }
}

/* Releases this round's hot reservations, restocks HOT for the next. */
static void reset_hot(int round, int64_t *supply) {
  atp_result_t result;
  for (int t = 0; t < WORKERS; t++) {
    worker_t *w = &WORKERS_STATE[t];
    for (int i = 0; i < w->nown; i++) {
      own_t *o = &w->own[i];
      if (!o->hot || o->ended) continue;
      CHECK_EQ(atp_release(E, et_str(o->id), NULL, 0, &R, &result), 0);
      o->ended = true;
    }
  }
  atp_position_t pos;
  REQUIRE(atp_position_get(E, sku_of(HOT), loc_of(HOT), &pos) == 0);
  CHECK_EQ(pos.reserved, 0);
  CHECK_EQ(pos.committed, 0);
  int64_t target = 300 + 50 * round;
  char id[32];
  snprintf(id, sizeof id, "hot-stock-%d", round);
  if (target != pos.on_hand) {
    CHECK(adjust_main(id, HOT, target - pos.on_hand));
    atomic_fetch_add(&ADJ_SUM[HOT], target - pos.on_hand);
  }
  *supply = target - HOT_SAFETY;
  atomic_store(&HOT_GRANTED, 0);
}

static void test_stress(void) {
  for (int p = 0; p < NPOS; p++) {
    if (p == HOT) {
      snprintf(SKUS[p], sizeof SKUS[p], "HOT");
      snprintf(LOCS[p], sizeof LOCS[p], "H");
    } else if (p < CNT0) {
      snprintf(SKUS[p], sizeof SKUS[p], "C%d", p - COLD0);
      snprintf(LOCS[p], sizeof LOCS[p], "L%d", (p - COLD0) % 4);
    } else {
      snprintf(SKUS[p], sizeof SKUS[p], "K%d", p - CNT0);
      snprintf(LOCS[p], sizeof LOCS[p], "L0");
    }
  }
  et_clock_set(&CLK, ET_T0_MS);
  atp_engine_config_t config = et_config(&CLK);
  config.reservations_max = 1u << 17;
  config.idempotency_max = 1u << 17;
  config.on_change = hook;
  config.change_ctx = NULL;
  REQUIRE(atp_engine_create(&config, &E) == 0);
  atp_engine_tick(E);
  /* Initial stock. */
  for (int p = 1; p < NPOS; p++) {
    char id[32];
    snprintf(id, sizeof id, "init-%d", p);
    int64_t qty = p < CNT0 ? 20 : 50;
    REQUIRE(adjust_main(id, p, qty));
    if (p < CNT0)
      atomic_fetch_add(&ADJ_SUM[p], qty);
    else
      COUNT_EXPECT[p] = qty;
  }
  atp_position_t out;
  atp_result_t result;
  REQUIRE(atp_safety_stock_set(E, sku_of(HOT), loc_of(HOT), HOT_SAFETY, &out,
                               &result) == 0);
  for (int t = 0; t < WORKERS; t++) {
    WORKERS_STATE[t].index = t;
    WORKERS_STATE[t].rng.state = SEED * 31 + (uint64_t)t + 1;
    WORKERS_STATE[t].own = calloc(MAXOWN, sizeof(own_t));
    REQUIRE(WORKERS_STATE[t].own != NULL);
  }
  for (ROUND = 0; ROUND < ROUNDS; ROUND++) {
    int64_t supply = 0;
    reset_hot(ROUND, &supply);
    et_clock_add(&CLK, 1000);
    ROUND_START = et_clock_read(&CLK);
    for (int p = 0; p < NPOS; p++) {
      atomic_store(&ROUND_ADJ[p], 0);
      atomic_store(&COUNTED[p], 0);
    }
    atomic_store(&STOP, 0);
    pthread_t workers[WORKERS], reader, ticker;
    uint64_t reader_seed = SEED ^ 0xabcdef;
    REQUIRE(pthread_create(&reader, NULL, reader_main, &reader_seed) == 0);
    REQUIRE(pthread_create(&ticker, NULL, ticker_main, NULL) == 0);
    for (int t = 0; t < WORKERS; t++)
      REQUIRE(pthread_create(&workers[t], NULL, worker_main, &WORKERS_STATE[t]) == 0);
    for (int t = 0; t < WORKERS; t++) pthread_join(workers[t], NULL);
    atomic_store(&STOP, 1);
    pthread_join(reader, NULL);
    pthread_join(ticker, NULL);
    atp_engine_tick(E); /* file whatever the workers queued; expire nothing new */
    check_round(ROUND, supply);
    CHECK_EQ(atomic_load(&WORKER_ERRORS), 0);
    CHECK_EQ(atomic_load(&READ_ERRORS), 0);
    CHECK_EQ(atomic_load(&HOOK_ERRORS), 0);
    if (test_failed_now) {
      fprintf(stderr, "  failed in round %d (replay with ATP_SEED=%" PRIu64 ")\n",
              ROUND, SEED);
      break;
    }
  }
  atp_engine_stats_t st;
  atp_engine_stats(E, &st);
  printf(
      "     expirations %llu, held %llu, committed %llu, released %llu, fulfilled "
      "%llu\n",
      (unsigned long long)st.expirations,
      (unsigned long long)st.reservations_by_status[ATP_STATUS_HELD],
      (unsigned long long)st.reservations_by_status[ATP_STATUS_COMMITTED],
      (unsigned long long)st.reservations_by_status[ATP_STATUS_RELEASED],
      (unsigned long long)st.reservations_by_status[ATP_STATUS_FULFILLED]);
  for (int t = 0; t < WORKERS; t++) free(WORKERS_STATE[t].own);
  atp_engine_destroy(E);
  E = NULL;
}

/* --- more threads than shards ----------------------------------------------------
 * Threads take shards round-robin, so with more of them than ATP_SHARDS two
 * live threads share a shard and queue on the same inbox ring at once, while
 * a ticker drains it: a slot claimed and not yet written, a ring read up to
 * it and resumed at the next tick. Every reservation queued must be filed:
 * afterwards all of them expire. */

#define SHARE_THREADS 24 /* > ATP_SHARDS (16) */
#define SHARE_EACH    1500

static _Atomic int SHARE_ERRORS;

static void *share_worker(void *arg) {
  int t = (int)(intptr_t)arg;
  atp_reservation_t *out = malloc(sizeof *out);
  if (!out) {
    atomic_fetch_add(&SHARE_ERRORS, 1);
    return NULL;
  }
  for (int i = 0; i < SHARE_EACH; i++) {
    char id[32];
    snprintf(id, sizeof id, "s%d-%d", t, i);
    atp_line_req_t line = {.sku = et_str("S"), .location = et_str("L0"), .qty = 1};
    atp_reserve_req_t req = {
        .id = et_str(id), .lines = &line, .line_count = 1, .ttl_ms = ATP_TTL_MS_MIN};
    atp_result_t result;
    if (atp_reserve(E, &req, out, NULL, &result)) atomic_fetch_add(&SHARE_ERRORS, 1);
  }
  free(out);
  return NULL;
}

static void *share_ticker(void *arg) {
  (void)arg;
  while (!atomic_load(&STOP)) {
    atp_engine_tick(E); /* the clock stands: files, expires nothing */
    sched_yield();
  }
  return NULL;
}

static void test_shards_shared(void) {
  et_clock_set(&CLK, ET_T0_MS);
  atp_engine_config_t config = et_config(&CLK);
  config.reservations_max = 1u << 16;
  REQUIRE(atp_engine_create(&config, &E) == 0);
  atp_engine_tick(E);
  int64_t total = (int64_t)SHARE_THREADS * SHARE_EACH;
  atp_adjust_req_t adj = {.id = et_str("stock"),
                          .sku = et_str("S"),
                          .location = et_str("L0"),
                          .delta = total,
                          .reason = ATP_REASON_RECEIVED,
                          .source = et_str("test"),
                          .occurred_at_ms = ATP_TIME_NONE};
  atp_adjust_res_t adj_out;
  atp_result_t result;
  REQUIRE(atp_adjust(E, &adj, &adj_out, &result) == 0);
  atomic_store(&STOP, 0);
  pthread_t ticker, workers[SHARE_THREADS];
  REQUIRE(pthread_create(&ticker, NULL, share_ticker, NULL) == 0);
  for (intptr_t t = 0; t < SHARE_THREADS; t++)
    REQUIRE(pthread_create(&workers[t], NULL, share_worker, (void *)t) == 0);
  for (int t = 0; t < SHARE_THREADS; t++) pthread_join(workers[t], NULL);
  atomic_store(&STOP, 1);
  pthread_join(ticker, NULL);
  CHECK_EQ(atomic_load(&SHARE_ERRORS), 0);
  atp_position_t p;
  REQUIRE(atp_position_get(E, et_str("S"), et_str("L0"), &p) == 0);
  CHECK_EQ(p.reserved, total);
  /* Past every expiry: the ticks must find all of them filed. */
  int64_t expired = 0;
  for (int i = 0; i < 40; i++) {
    et_clock_add(&CLK, 100);
    expired += atp_engine_tick(E);
  }
  CHECK_EQ(expired, total);
  REQUIRE(atp_position_get(E, et_str("S"), et_str("L0"), &p) == 0);
  CHECK_EQ(p.reserved, 0);
  atp_engine_destroy(E);
  E = NULL;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  SEED = (uint64_t)time(NULL);
  const char *env = getenv("ATP_SEED");
  if (argc > 1)
    SEED = strtoull(argv[1], NULL, 10);
  else if (env && *env)
    SEED = strtoull(env, NULL, 10);
  const char *ops = getenv("ATP_STRESS_OPS");
  if (ops && atoi(ops) > 0) OPS = atoi(ops);
  printf("stress test: seed %" PRIu64 ", %d workers x %d ops x %d rounds\n", SEED,
         WORKERS, OPS, ROUNDS);
  const char *test_only_ = NULL;
  RUN(test_stress);
  RUN(test_shards_shared);
  printf("%d passed, %d failed\n", tests_passed, tests_failed);
  return tests_failed ? 1 : 0;
}
