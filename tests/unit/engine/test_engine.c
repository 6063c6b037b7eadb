/* test_engine.c - unit tests of the engine (include/atp/engine.h) against
 * CONTRACT.md sections 2, 4 and 5 and the semantics chosen in docs/TEAM.md.
 *
 * Every test builds a fresh engine with a manual clock at ET_T0_MS and small
 * tables. Each operation is tested on its success path and on every error path
 * the contract names, and after a failure the test checks that nothing moved.
 * The last test records every change through the hook, replays it with
 * atp_engine_apply into a fresh engine and compares the two states.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "../../../src/engine/engine_internal.h" /* ATP_INBOX_RING */
#include "atp/engine.h"
#include "engine_test_util.h"
#include "test.h"

#define T0 ET_T0_MS

static et_clock_t CLK;
static atp_engine_t *E;
static atp_result_t RES;
static atp_reservation_t R; /* large: static, not on the stack */
static atp_reservation_t R2;
static atp_shortfalls_t SF;

/* --- fixtures ---------------------------------------------------------------- */

static void teardown(void) {
  if (E) atp_engine_destroy(E);
  E = NULL;
}

static int setup_with(const atp_engine_config_t *config) {
  teardown();
  et_clock_set(&CLK, T0);
  return atp_engine_create(config, &E);
}

static int setup(void) {
  atp_engine_config_t config = et_config(&CLK);
  return setup_with(&config);
}

static int64_t now(void) {
  return et_clock_read(&CLK);
}

static void advance(int64_t ms) {
  et_clock_add(&CLK, ms);
}

/* Moves the clock in 100 ms steps, ticking after each like the server does;
 * returns the sum of the expirations tick reported. */
static uint32_t advance_ticking(int64_t ms) {
  uint32_t expired = 0;
  while (ms > 0) {
    int64_t step = ms < 100 ? ms : 100;
    advance(step);
    ms -= step;
    expired += atp_engine_tick(E);
  }
  return expired;
}

static atp_adjust_req_t adj_req(const char *id, const char *sku, const char *loc,
                                int64_t delta) {
  atp_adjust_req_t req;
  memset(&req, 0, sizeof req);
  req.id = et_str(id);
  req.sku = et_str(sku);
  req.location = et_str(loc);
  req.delta = delta;
  req.reason = delta > 0 ? ATP_REASON_RECEIVED : ATP_REASON_SALE;
  req.source = ATP_STR("test");
  req.occurred_at_ms = ATP_TIME_NONE;
  return req;
}

static int adjust_at(const char *id, const char *sku, const char *loc, int64_t delta,
                     int64_t occurred_at, atp_adjust_res_t *out) {
  atp_adjust_req_t req = adj_req(id, sku, loc, delta);
  req.occurred_at_ms = occurred_at;
  atp_adjust_res_t scratch;
  return atp_adjust(E, &req, out ? out : &scratch, &RES);
}

static int adjust(const char *id, const char *sku, const char *loc, int64_t delta) {
  return adjust_at(id, sku, loc, delta, ATP_TIME_NONE, NULL);
}

static atp_count_req_t count_req(const char *id, const char *sku, const char *loc,
                                 int64_t on_hand, int64_t counted_at) {
  atp_count_req_t req;
  memset(&req, 0, sizeof req);
  req.id = et_str(id);
  req.sku = et_str(sku);
  req.location = et_str(loc);
  req.on_hand = on_hand;
  req.counted_at_ms = counted_at;
  req.source = ATP_STR("erp");
  return req;
}

static int count_at(const char *id, const char *sku, const char *loc, int64_t on_hand,
                    int64_t counted_at, atp_count_res_t *out) {
  atp_count_req_t req = count_req(id, sku, loc, on_hand, counted_at);
  atp_count_res_t scratch;
  return atp_count(E, &req, out ? out : &scratch, &RES);
}

static int pos_rc(const char *sku, const char *loc, atp_position_t *out) {
  return atp_position_get(E, et_str(sku), et_str(loc), out);
}

/* The position, or zeros (version 0) when it does not exist. */
static atp_position_t pos(const char *sku, const char *loc) {
  atp_position_t p;
  memset(&p, 0, sizeof p);
  if (pos_rc(sku, loc, &p) != 0) memset(&p, 0, sizeof p);
  return p;
}

static uint64_t ver(const char *sku, const char *loc) {
  return pos(sku, loc).version;
}

/* Checks the counters and the derived fields of a position. */
#define CHECK_POS(sku_, loc_, oh, ss, rs, cm)                           \
  do {                                                                  \
    atp_position_t check_p_ = pos((sku_), (loc_));                      \
    CHECK(check_p_.version != 0);                                       \
    CHECK_EQ(check_p_.on_hand, (oh));                                   \
    CHECK_EQ(check_p_.safety_stock, (ss));                              \
    CHECK_EQ(check_p_.reserved, (rs));                                  \
    CHECK_EQ(check_p_.committed, (cm));                                 \
    CHECK_EQ(check_p_.available, et_available((oh), (ss), (rs), (cm))); \
    CHECK_EQ(check_p_.shortfall, et_shortfall((oh), (rs), (cm)));       \
    CHECK(et_str_is(check_p_.sku, (sku_)));                             \
    CHECK(et_str_is(check_p_.location, (loc_)));                        \
  } while (0)

static atp_line_req_t LL(const char *sku, const char *loc, int64_t qty) {
  atp_line_req_t line;
  memset(&line, 0, sizeof line);
  line.sku = et_str(sku);
  line.location = et_str(loc);
  line.qty = qty;
  return line;
}

static atp_line_req_t LG(const char *sku, const char *group, int64_t qty, bool split) {
  atp_line_req_t line;
  memset(&line, 0, sizeof line);
  line.sku = et_str(sku);
  line.group = et_str(group);
  line.qty = qty;
  line.allow_split = split;
  return line;
}

static atp_qty_line_t QL(const char *sku, const char *loc, int64_t qty) {
  atp_qty_line_t line = {et_str(sku), et_str(loc), qty};
  return line;
}

static atp_reserve_req_t res_req(const char *id, const atp_line_req_t *lines,
                                 uint32_t n, int64_t ttl_ms) {
  atp_reserve_req_t req;
  memset(&req, 0, sizeof req);
  req.id = et_str(id);
  req.lines = lines;
  req.line_count = n;
  req.ttl_ms = ttl_ms;
  return req;
}

static int reserve_lines(const char *id, const atp_line_req_t *lines, uint32_t n,
                         int64_t ttl_ms) {
  atp_reserve_req_t req = res_req(id, lines, n, ttl_ms);
  memset(&SF, 0, sizeof SF);
  return atp_reserve(E, &req, &R, &SF, &RES);
}

static int reserve1(const char *id, const char *sku, const char *loc, int64_t qty) {
  atp_line_req_t line = LL(sku, loc, qty);
  return reserve_lines(id, &line, 1, 0);
}

static int get_res(const char *id) {
  return atp_reservation_get(E, et_str(id), &R2);
}

static const atp_res_line_t *rline(const atp_reservation_t *r, const char *sku,
                                   const char *loc) {
  return et_res_line(r, et_str(sku), et_str(loc));
}

/* The line exists with these figures. */
#define CHECK_LINE(r, sku_, loc_, q, f, rel)                     \
  do {                                                           \
    const atp_res_line_t *check_l_ = rline((r), (sku_), (loc_)); \
    CHECK(check_l_ != NULL);                                     \
    if (check_l_) {                                              \
      CHECK_EQ(check_l_->qty, (q));                              \
      CHECK_EQ(check_l_->fulfilled, (f));                        \
      CHECK_EQ(check_l_->released, (rel));                       \
    }                                                            \
  } while (0)

static char *repeat_char(char c, size_t n) {
  char *s = malloc(n + 1);
  memset(s, c, n);
  s[n] = 0;
  return s;
}

/* --- names ---------------------------------------------------------------- */

static void test_names(void) {
  static const char *reasons[] = {"received",    "sale",         "return_restock",
                                  "damaged",     "shrink",       "correction",
                                  "transfer_in", "transfer_out", "other"};
  CHECK_EQ(ATP_REASON_COUNT_, 9);
  for (int i = 0; i < ATP_REASON_COUNT_; i++) {
    const char *name = atp_reason_name((atp_reason_t)i);
    CHECK(name != NULL && strcmp(name, reasons[i]) == 0);
    atp_reason_t parsed = ATP_REASON_COUNT_;
    CHECK_EQ(atp_reason_parse(et_str(reasons[i]), &parsed), 0);
    CHECK_EQ(parsed, i);
  }
  atp_reason_t parsed;
  CHECK_EQ(atp_reason_parse(ATP_STR("stolen"), &parsed), ATP_EBADREQ);
  CHECK_EQ(atp_reason_parse(ATP_STR(""), &parsed), ATP_EBADREQ);
  CHECK_EQ(atp_reason_parse(ATP_STR("sale "), &parsed), ATP_EBADREQ);
  CHECK(atp_reason_name(ATP_REASON_COUNT_) == NULL);
  static const char *statuses[] = {"held", "committed", "released", "expired",
                                   "fulfilled"};
  for (int i = 0; i < 5; i++) {
    const char *name = atp_status_name((atp_status_t)i);
    CHECK(name != NULL && strcmp(name, statuses[i]) == 0);
  }
}

/* --- positions ---------------------------------------------------------------- */

static void test_position_unknown(void) {
  REQUIRE(setup() == 0);
  CHECK_EQ(atp_engine_now_ms(E), T0);
  atp_position_t p;
  CHECK_EQ(pos_rc("A", "L1", &p), ATP_ENOTFOUND);
  atp_position_t list[4];
  uint32_t n = 99;
  CHECK_EQ(atp_sku_positions(E, ATP_STR("A"), list, 4, &n), 0);
  CHECK_EQ(n, 0);
  CHECK_EQ(get_res("nope"), ATP_ENOTFOUND);
  /* A read creates nothing. */
  CHECK_EQ(pos_rc("A", "L1", &p), ATP_ENOTFOUND);
  atp_engine_stats_t st;
  atp_engine_stats(E, &st);
  CHECK_EQ(st.positions, 0);
}

static void test_position_formulas(void) {
  REQUIRE(setup() == 0);
  REQUIRE(adjust("a1", "A", "L1", 10) == 0);
  CHECK_POS("A", "L1", 10, 0, 0, 0);
  atp_position_t p = pos("A", "L1");
  CHECK_EQ(p.counted_at_ms, ATP_TIME_NONE);
  uint64_t v = p.version;
  CHECK(v > 0);

  atp_position_t out;
  REQUIRE(atp_safety_stock_set(E, ATP_STR("A"), ATP_STR("L1"), 3, &out, &RES) == 0);
  CHECK_EQ(out.safety_stock, 3);
  CHECK_EQ(out.available, 7);
  CHECK(out.version > v);
  v = out.version;
  CHECK_POS("A", "L1", 10, 3, 0, 0);

  REQUIRE(reserve1("r1", "A", "L1", 5) == 0);
  CHECK_POS("A", "L1", 10, 3, 5, 0); /* available 2 */
  CHECK(ver("A", "L1") > v);
  v = ver("A", "L1");

  REQUIRE(reserve1("r2", "A", "L1", 2) == 0);
  CHECK_POS("A", "L1", 10, 3, 7, 0); /* available 0 */
  REQUIRE(atp_commit(E, ATP_STR("r2"), ATP_STR(""), &R, &RES) == 0);
  CHECK_POS("A", "L1", 10, 3, 5, 2);
  CHECK(ver("A", "L1") > v);
  v = ver("A", "L1");

  /* Stock falls below the promises: available 0, shortfall positive. */
  REQUIRE(adjust("a2", "A", "L1", -8) == 0);
  CHECK_POS("A", "L1", 2, 3, 5, 2); /* shortfall 5 */
  CHECK_EQ(pos("A", "L1").shortfall, 5);
  CHECK_EQ(pos("A", "L1").available, 0);
  CHECK(ver("A", "L1") > v);
  v = ver("A", "L1");

  /* on_hand may go negative (offline sales). */
  REQUIRE(adjust("a3", "A", "L1", -4) == 0);
  CHECK_POS("A", "L1", -2, 3, 5, 2); /* shortfall 9 */
  CHECK_EQ(pos("A", "L1").shortfall, 9);
  CHECK(ver("A", "L1") > v);
  /* Granted reservations are not revoked. */
  CHECK_EQ(get_res("r1"), 0);
  CHECK_EQ(R2.status, ATP_STATUS_HELD);
}

/* atp_positions_get answers exactly what atp_position_get does, key by key,
 * over batches longer than its pipeline, with strings of every length class
 * the hash and the comparison treat apart (1-3, 4-7, 8-16, 17-128 bytes),
 * unknown SKUs and locations, prefixes of known names, and empty strings. */
static void test_positions_get_batch(void) {
  REQUIRE(setup() == 0);
  static const uint32_t sku_lens[] = {1,  2,  3,  4,  7,  8,   11,
                                      16, 17, 31, 32, 33, 100, 128};
  enum { NSKU = sizeof sku_lens / sizeof sku_lens[0], NLOC = 5 };
  static char skus[NSKU][129], locs[NLOC][40];
  for (int i = 0; i < NSKU; i++) {
    for (uint32_t j = 0; j < sku_lens[i]; j++) skus[i][j] = (char)('a' + (i + j) % 26);
    skus[i][sku_lens[i]] = '\0';
  }
  snprintf(locs[0], sizeof locs[0], "L");
  snprintf(locs[1], sizeof locs[1], "store-01");
  snprintf(locs[2], sizeof locs[2], "store-0123456789");
  snprintf(locs[3], sizeof locs[3], "a-location-of-thirty-five-bytes-xyz");
  snprintf(locs[4], sizeof locs[4], "Lx");
  /* Positions at every (sku, loc) but the last location, on_hand distinct. */
  char id[32];
  for (int i = 0; i < NSKU; i++)
    for (int l = 0; l < NLOC - 1; l++) {
      snprintf(id, sizeof id, "a-%d-%d", i, l);
      REQUIRE(adjust(id, skus[i], locs[l], 1 + i * 10 + l) == 0);
    }
  REQUIRE(reserve1("r1", skus[3], locs[1], 2) == 0);
  enum { N = 300 };
  static atp_key_t keys[N];
  static atp_position_t out[N];
  static bool found[N];
  static char unknown[N][8];
  uint64_t seed = 12345;
  uint32_t want_hits = 0;
  for (int k = 0; k < N; k++) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    int i = (int)((seed >> 33) % NSKU), l = (int)((seed >> 45) % NLOC);
    keys[k].sku = et_str(skus[i]);
    keys[k].location = et_str(locs[l]);
    switch (k % 7) {
      case 3: /* a prefix of a known SKU */
        if (keys[k].sku.len > 1) keys[k].sku.len--;
        break;
      case 5: /* unknown SKU */
        snprintf(unknown[k], sizeof unknown[k], "u%d", k);
        keys[k].sku = et_str(unknown[k]);
        break;
      case 6: /* empty strings */
        if (k % 2)
          keys[k].sku.len = 0;
        else
          keys[k].location.len = 0;
        break;
      default:
        break;
    }
    atp_position_t one;
    want_hits += atp_position_get(E, keys[k].sku, keys[k].location, &one) == 0;
  }
  CHECK(want_hits > N / 3);
  CHECK_EQ(atp_positions_get(E, keys, N, out, found), want_hits);
  for (int k = 0; k < N; k++) {
    atp_position_t one;
    int rc = atp_position_get(E, keys[k].sku, keys[k].location, &one);
    CHECK_EQ(found[k], rc == 0);
    if (rc != 0 || !found[k]) continue;
    CHECK(et_str_eq(out[k].sku, one.sku));
    CHECK(et_str_eq(out[k].location, one.location));
    CHECK_EQ(out[k].on_hand, one.on_hand);
    CHECK_EQ(out[k].reserved, one.reserved);
    CHECK_EQ(out[k].available, one.available);
    CHECK_EQ(out[k].version, one.version);
  }
  /* Shorter batches than the pipeline, and none at all. */
  for (uint32_t n = 0; n < 5; n++) {
    uint32_t want = 0;
    atp_position_t one;
    for (uint32_t k = 0; k < n; k++)
      want += atp_position_get(E, keys[k].sku, keys[k].location, &one) == 0;
    CHECK_EQ(atp_positions_get(E, keys, n, out, found), want);
  }
}

static void test_version_increases(void) {
  REQUIRE(setup() == 0);
  atp_engine_tick(E); /* the server ticks from the start */
  uint64_t v = 0;
#define STEP_BUMPS(call)               \
  do {                                 \
    CHECK_EQ((call), 0);               \
    uint64_t step_v_ = ver("A", "L1"); \
    CHECK(step_v_ > v);                \
    v = step_v_;                       \
  } while (0)
  atp_position_t out;
  atp_qty_line_t one = QL("A", "L1", 1);
  STEP_BUMPS(adjust("a1", "A", "L1", 20));
  STEP_BUMPS(atp_safety_stock_set(E, ATP_STR("A"), ATP_STR("L1"), 2, &out, &RES));
  STEP_BUMPS(count_at("c1", "A", "L1", 30, now() - 10, NULL));
  STEP_BUMPS(reserve1("r1", "A", "L1", 4));
  STEP_BUMPS(atp_release(E, ATP_STR("r1"), &one, 1, &R, &RES));
  STEP_BUMPS(atp_commit(E, ATP_STR("r1"), ATP_STR("o1"), &R, &RES));
  STEP_BUMPS(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1"), &one, 1, &R, &RES));
  STEP_BUMPS(atp_release(E, ATP_STR("r1"), NULL, 0, &R, &RES));
  STEP_BUMPS(reserve1("r2", "A", "L1", 1));
  advance(ATP_TTL_MS_DEFAULT + 1000);
  CHECK_EQ(atp_engine_tick(E), 1); /* r2 expires */
  CHECK(ver("A", "L1") > v);
#undef STEP_BUMPS
  /* A failed call changes nothing, the version included. */
  v = ver("A", "L1");
  CHECK_EQ(reserve1("r3", "A", "L1", 1000), ATP_EINSUFFICIENT);
  CHECK_EQ(adjust("a0", "A", "L1", 0), ATP_EBADREQ);
  CHECK_EQ(ver("A", "L1"), v);
}

static void test_sku_positions(void) {
  REQUIRE(setup() == 0);
  REQUIRE(adjust("a1", "X", "L3", 5) == 0);
  REQUIRE(adjust("a2", "X", "L1", 5) == 0);
  REQUIRE(adjust("a3", "X", "L2", 12) == 0);
  REQUIRE(reserve1("r1", "X", "L2", 3) == 0); /* L2 available 9 */
  atp_position_t out;
  REQUIRE(atp_safety_stock_set(E, ATP_STR("X"), ATP_STR("L0"), 4, &out, &RES) == 0);
  REQUIRE(adjust("a4", "X", "L10", 7) == 0);
  REQUIRE(adjust("a5", "Y", "L1", 100) == 0); /* another sku: not listed */
  /* available: L0 0, L1 5, L10 7, L2 9, L3 5 */
  static const char *order[] = {"L2", "L10", "L1", "L3", "L0"};
  static const int64_t avail[] = {9, 7, 5, 5, 0};
  atp_position_t list[8];
  uint32_t n = 0;
  REQUIRE(atp_sku_positions(E, ATP_STR("X"), list, 8, &n) == 0);
  REQUIRE(n == 5);
  for (uint32_t i = 0; i < n; i++) {
    CHECK(et_str_is(list[i].sku, "X"));
    CHECK(et_str_is(list[i].location, order[i]));
    CHECK_EQ(list[i].available, avail[i]);
    CHECK(et_position_consistent(&list[i]));
  }
  /* Truncated: the first two in that order, the count of all. */
  memset(list, 0, sizeof list);
  n = 0;
  REQUIRE(atp_sku_positions(E, ATP_STR("X"), list, 2, &n) == 0);
  CHECK_EQ(n, 5);
  CHECK(et_str_is(list[0].location, "L2"));
  CHECK(et_str_is(list[1].location, "L10"));
  CHECK_EQ(list[2].version, 0); /* not written past out_max */
  n = 0;
  REQUIRE(atp_sku_positions(E, ATP_STR("X"), list, 0, &n) == 0);
  CHECK_EQ(n, 5);
  n = 0;
  REQUIRE(atp_sku_positions(E, ATP_STR("Y"), list, 8, &n) == 0);
  CHECK_EQ(n, 1);
}

/* --- groups ------------------------------------------------------------------- */

typedef struct {
  int calls;
  int found;
  uint32_t found_count;
} group_each_ctx_t;

static void group_each_cb(void *ctx, atp_str_t name, const atp_str_t *locations,
                          uint32_t n) {
  group_each_ctx_t *c = ctx;
  c->calls++;
  if (et_str_is(name, "G1")) {
    c->found++;
    c->found_count = n;
    if (n > 0) CHECK(et_str_is(locations[0], "C"));
  }
}

static void test_groups(void) {
  REQUIRE(setup() == 0);
  atp_str_t locs[3] = {ATP_STR("A"), ATP_STR("B"), ATP_STR("C")};
  atp_str_t out[4];
  uint32_t n = 0;
  CHECK_EQ(atp_group_get(E, ATP_STR("G1"), out, 4, &n), ATP_ENOTFOUND);
  REQUIRE(atp_group_put(E, ATP_STR("G1"), locs, 3, &RES) == 0);
  REQUIRE(atp_group_get(E, ATP_STR("G1"), out, 4, &n) == 0);
  CHECK_EQ(n, 3);
  CHECK(et_str_is(out[0], "A") && et_str_is(out[1], "B") && et_str_is(out[2], "C"));
  /* Put is naturally idempotent. */
  CHECK_EQ(atp_group_put(E, ATP_STR("G1"), locs, 3, &RES), 0);
  /* Replace: new order. */
  atp_str_t locs2[2] = {ATP_STR("C"), ATP_STR("A")};
  REQUIRE(atp_group_put(E, ATP_STR("G1"), locs2, 2, &RES) == 0);
  n = 0;
  REQUIRE(atp_group_get(E, ATP_STR("G1"), out, 4, &n) == 0);
  CHECK_EQ(n, 2);
  CHECK(et_str_is(out[0], "C") && et_str_is(out[1], "A"));
  /* Truncated read: count is the whole. */
  n = 0;
  REQUIRE(atp_group_get(E, ATP_STR("G1"), out, 1, &n) == 0);
  CHECK_EQ(n, 2);
  CHECK(et_str_is(out[0], "C"));

  REQUIRE(atp_group_put(E, ATP_STR("G2"), locs, 1, &RES) == 0);
  group_each_ctx_t ctx = {0, 0, 0};
  atp_group_each(E, group_each_cb, &ctx);
  CHECK_EQ(ctx.calls, 2);
  CHECK_EQ(ctx.found, 1);
  CHECK_EQ(ctx.found_count, 2);
  atp_engine_stats_t st;
  atp_engine_stats(E, &st);
  CHECK_EQ(st.groups, 2);

  /* Errors: none of them changes G1. */
  atp_str_t dup[3] = {ATP_STR("A"), ATP_STR("B"), ATP_STR("A")};
  CHECK_EQ(atp_group_put(E, ATP_STR("G1"), dup, 3, &RES), ATP_EBADREQ);
  CHECK_EQ(atp_group_put(E, ATP_STR("G1"), locs, 0, &RES), ATP_EBADREQ);
  CHECK_EQ(atp_group_put(E, ATP_STR(""), locs, 3, &RES), ATP_EBADREQ);
  atp_str_t empty_loc[2] = {ATP_STR("A"), ATP_STR("")};
  CHECK_EQ(atp_group_put(E, ATP_STR("G1"), empty_loc, 2, &RES), ATP_EBADREQ);
  char *long_id = repeat_char('g', ATP_ID_BYTES_MAX + 1);
  CHECK_EQ(atp_group_put(E, et_str(long_id), locs, 3, &RES), ATP_EBADREQ);
  atp_str_t long_loc[1] = {et_str(long_id)};
  CHECK_EQ(atp_group_put(E, ATP_STR("G1"), long_loc, 1, &RES), ATP_EBADREQ);
  long_id[ATP_ID_BYTES_MAX] = 0; /* exactly 128 bytes: fine */
  CHECK_EQ(atp_group_put(E, et_str(long_id), locs, 1, &RES), 0);
  CHECK_EQ(atp_group_delete(E, et_str(long_id), &RES), 0);
  free(long_id);
  n = 0;
  REQUIRE(atp_group_get(E, ATP_STR("G1"), out, 4, &n) == 0);
  CHECK_EQ(n, 2);
  CHECK(et_str_is(out[0], "C"));

  /* Location count limit: 1000 fine, 1001 refused. */
  enum { N = ATP_GROUP_LOCATIONS_MAX + 1 };
  static char names[N][16];
  static atp_str_t many[N];
  for (int i = 0; i < N; i++) {
    snprintf(names[i], sizeof names[i], "S%d", i);
    many[i] = et_str(names[i]);
  }
  CHECK_EQ(atp_group_put(E, ATP_STR("BIG"), many, N, &RES), ATP_EBADREQ);
  CHECK_EQ(atp_group_get(E, ATP_STR("BIG"), out, 4, &n), ATP_ENOTFOUND);
  CHECK_EQ(atp_group_put(E, ATP_STR("BIG"), many, N - 1, &RES), 0);
  n = 0;
  CHECK_EQ(atp_group_get(E, ATP_STR("BIG"), out, 4, &n), 0);
  CHECK_EQ(n, ATP_GROUP_LOCATIONS_MAX);
  CHECK(et_str_is(out[3], "S3"));

  /* Delete. */
  CHECK_EQ(atp_group_delete(E, ATP_STR("G1"), &RES), 0);
  CHECK_EQ(atp_group_get(E, ATP_STR("G1"), out, 4, &n), ATP_ENOTFOUND);
  CHECK_EQ(atp_group_delete(E, ATP_STR("G1"), &RES), ATP_ENOTFOUND);
  CHECK_EQ(atp_group_delete(E, ATP_STR("never"), &RES), ATP_ENOTFOUND);
  /* Re-created after delete. */
  CHECK_EQ(atp_group_put(E, ATP_STR("G1"), locs, 2, &RES), 0);
  n = 0;
  CHECK_EQ(atp_group_get(E, ATP_STR("G1"), out, 4, &n), 0);
  CHECK_EQ(n, 2);
}

/* --- adjustments ---------------------------------------------------------- */

static void test_adjust_validation(void) {
  REQUIRE(setup() == 0);
  atp_adjust_res_t out;
  atp_adjust_req_t req = adj_req("a1", "A", "L1", 0);
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), ATP_EBADREQ);
  CHECK(strstr(RES.field, "delta") != NULL);
  req = adj_req("", "A", "L1", 1);
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), ATP_EBADREQ);
  CHECK(strstr(RES.field, "id") != NULL);
  req = adj_req("a1", "", "L1", 1);
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), ATP_EBADREQ);
  CHECK(strstr(RES.field, "sku") != NULL);
  req = adj_req("a1", "A", "", 1);
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), ATP_EBADREQ);
  CHECK(strstr(RES.field, "location") != NULL);
  req = adj_req("a1", "A", "L1", 1);
  req.reason = ATP_REASON_COUNT_;
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), ATP_EBADREQ);
  CHECK(strstr(RES.field, "reason") != NULL);
  char *long_id = repeat_char('x', ATP_ID_BYTES_MAX + 1);
  req = adj_req(long_id, "A", "L1", 1);
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), ATP_EBADREQ);
  req = adj_req("a1", long_id, "L1", 1);
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), ATP_EBADREQ);
  req = adj_req("a1", "A", long_id, 1);
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), ATP_EBADREQ);
  /* None of the refusals created a position or remembered the id. */
  atp_position_t p;
  CHECK_EQ(pos_rc("A", "L1", &p), ATP_ENOTFOUND);
  atp_engine_stats_t st;
  atp_engine_stats(E, &st);
  CHECK_EQ(st.positions, 0);
  /* 128-byte identifiers are fine. */
  long_id[ATP_ID_BYTES_MAX] = 0;
  req = adj_req(long_id, long_id, long_id, 1);
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), 0);
  CHECK_EQ(out.position.on_hand, 1);
  CHECK(et_str_is(out.position.sku, long_id));
  CHECK_EQ(pos_rc(long_id, long_id, &p), 0);
  free(long_id);
  /* Every reason is accepted. */
  for (int i = 0; i < ATP_REASON_COUNT_; i++) {
    char id[16];
    snprintf(id, sizeof id, "r%d", i);
    req = adj_req(id, "B", "L1", 1);
    req.reason = (atp_reason_t)i;
    req.ref = ATP_STR("gid://shopify/Order/1");
    CHECK_EQ(atp_adjust(E, &req, &out, &RES), 0);
  }
  CHECK_POS("B", "L1", ATP_REASON_COUNT_, 0, 0, 0);
  /* Shopify GIDs are valid SKUs. */
  CHECK_EQ(adjust("gid1", "gid://shopify/ProductVariant/123", "L1", 3), 0);
  CHECK_POS("gid://shopify/ProductVariant/123", "L1", 3, 0, 0, 0);
}

static void test_adjust_result(void) {
  REQUIRE(setup() == 0);
  atp_adjust_res_t out;
  memset(&out, 0xff, sizeof out);
  REQUIRE(adjust_at("a1", "A", "L1", 10, ATP_TIME_NONE, &out) == 0);
  CHECK(out.applied);
  CHECK(!out.absorbed);
  CHECK(!out.replayed);
  CHECK_EQ(out.position.on_hand, 10);
  CHECK_EQ(out.position.available, 10);
  CHECK(et_str_is(out.position.sku, "A"));
  CHECK(et_str_is(out.position.location, "L1"));
  CHECK_EQ(out.position.version, ver("A", "L1"));
  REQUIRE(adjust_at("a2", "A", "L1", -3, ATP_TIME_NONE, &out) == 0);
  CHECK_EQ(out.position.on_hand, 7);
  CHECK(out.applied);
}

static void test_adjust_change_from(void) {
  REQUIRE(setup() == 0);
  REQUIRE(adjust("a1", "A", "L1", 10) == 0);
  uint64_t v = ver("A", "L1");
  atp_adjust_req_t req = adj_req("a2", "A", "L1", 5);
  req.has_change_from = true;
  req.change_from = 9;
  atp_adjust_res_t out;
  memset(&out, 0, sizeof out);
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), ATP_ECONFLICT);
  CHECK_EQ(RES.current_on_hand, 10);
  CHECK_EQ(out.position.on_hand, 10);
  CHECK_POS("A", "L1", 10, 0, 0, 0);
  CHECK_EQ(ver("A", "L1"), v);
  /* The refused id is not remembered: the corrected request succeeds. */
  req.change_from = 10;
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), 0);
  CHECK(!out.replayed);
  CHECK(out.applied);
  CHECK_POS("A", "L1", 15, 0, 0, 0);
  /* Zero is a valid change_from (distinct from "absent"). */
  req = adj_req("a3", "A", "L1", -15);
  req.has_change_from = true;
  req.change_from = 15;
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), 0);
  req = adj_req("a4", "A", "L1", 1);
  req.has_change_from = true;
  req.change_from = 0;
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), 0);
  CHECK_POS("A", "L1", 1, 0, 0, 0);
}

static void test_adjust_idempotency(void) {
  REQUIRE(setup() == 0);
  atp_adjust_res_t first, again;
  REQUIRE(adjust_at("a1", "A", "L1", 5, ATP_TIME_NONE, &first) == 0);
  CHECK(!first.replayed);
  uint64_t v = ver("A", "L1");
  REQUIRE(adjust_at("a1", "A", "L1", 5, ATP_TIME_NONE, &again) == 0);
  CHECK(again.replayed);
  CHECK(again.applied);
  CHECK(!again.absorbed);
  CHECK_EQ(again.position.on_hand, 5);
  CHECK_EQ(again.position.version, first.position.version);
  CHECK_POS("A", "L1", 5, 0, 0, 0);
  CHECK_EQ(ver("A", "L1"), v);
  /* Later changes: a replay still answers the original outcome. */
  REQUIRE(adjust("a2", "A", "L1", 1) == 0);
  advance(5000);
  REQUIRE(adjust_at("a1", "A", "L1", 5, ATP_TIME_NONE, &again) == 0);
  CHECK(again.replayed);
  CHECK_EQ(again.position.on_hand, 5);
  CHECK_EQ(again.position.version, first.position.version);
  CHECK_POS("A", "L1", 6, 0, 0, 0);
  /* Same id, other content. */
  CHECK_EQ(adjust("a1", "A", "L1", 6), ATP_EIDEMPOTENCY);
  CHECK_EQ(adjust("a1", "B", "L1", 5), ATP_EIDEMPOTENCY);
  CHECK_EQ(adjust("a1", "A", "L2", 5), ATP_EIDEMPOTENCY);
  atp_adjust_req_t req = adj_req("a1", "A", "L1", 5);
  req.reason = ATP_REASON_RETURN_RESTOCK;
  CHECK_EQ(atp_adjust(E, &req, &again, &RES), ATP_EIDEMPOTENCY);
  CHECK_POS("A", "L1", 6, 0, 0, 0);
  atp_position_t p;
  CHECK_EQ(pos_rc("B", "L1", &p), ATP_ENOTFOUND);
  CHECK_EQ(pos_rc("A", "L2", &p), ATP_ENOTFOUND);
}

static void test_adjust_overflow(void) {
  REQUIRE(setup() == 0);
  int rc;
  REQUIRE(adjust("a1", "A", "L1", ATP_QTY_MAX - 5) == 0);
  uint64_t v = ver("A", "L1");
  CHECK_EQ(adjust("a2", "A", "L1", 10), ATP_EOVERFLOW);
  CHECK_POS("A", "L1", ATP_QTY_MAX - 5, 0, 0, 0);
  CHECK_EQ(ver("A", "L1"), v);
  CHECK_EQ(adjust("a3", "A", "L1", 5), 0); /* exactly the limit */
  CHECK_POS("A", "L1", ATP_QTY_MAX, 0, 0, 0);
  CHECK_EQ(adjust("a4", "A", "L1", 1), ATP_EOVERFLOW);
  /* Far below the range. */
  rc = adjust("a5", "A", "L1", -2 * ATP_QTY_MAX - 1);
  CHECK(rc == ATP_EOVERFLOW ||
        rc == ATP_EBADREQ); /* the delta itself is out of range */
  /* Below -ATP_QTY_MAX. */
  CHECK_EQ(adjust("b1", "C", "L1", -(ATP_QTY_MAX - 5)), 0);
  CHECK_EQ(adjust("b2", "C", "L1", -10), ATP_EOVERFLOW);
  CHECK_POS("C", "L1", -(ATP_QTY_MAX - 5), 0, 0, 0);
  CHECK_POS("A", "L1", ATP_QTY_MAX, 0, 0, 0);
  /* A delta that is itself out of range, on a new position. */
  rc = adjust("a6", "B", "L1", INT64_MAX);
  CHECK(rc == ATP_EOVERFLOW || rc == ATP_EBADREQ);
  rc = adjust("a7", "B", "L1", INT64_MIN);
  CHECK(rc == ATP_EOVERFLOW || rc == ATP_EBADREQ);
  atp_position_t p;
  CHECK_EQ(pos_rc("B", "L1", &p), ATP_ENOTFOUND);
  /* Refused ids are not remembered. */
  CHECK_EQ(adjust("a2", "A", "L1", -10), 0);
  CHECK_POS("A", "L1", ATP_QTY_MAX - 10, 0, 0, 0);
}

/* --- counts ----------------------------------------------------------------- */

static void test_count_basic(void) {
  REQUIRE(setup() == 0);
  atp_count_res_t out;
  REQUIRE(count_at("c1", "A", "L1", 40, now() - 1000, &out) == 0);
  CHECK(out.applied);
  CHECK(!out.stale);
  CHECK(!out.approximate);
  CHECK(!out.replayed);
  CHECK_EQ(out.position.on_hand, 40);
  CHECK_EQ(out.position.counted_at_ms, now() - 1000);
  CHECK_POS("A", "L1", 40, 0, 0, 0);
  CHECK_EQ(pos("A", "L1").counted_at_ms, now() - 1000);
  /* Validation. */
  CHECK_EQ(count_at("c2", "A", "L1", -1, now(), &out), ATP_EBADREQ);
  CHECK(strstr(RES.field, "on_hand") != NULL);
  CHECK_EQ(count_at("", "A", "L1", 1, now(), &out), ATP_EBADREQ);
  CHECK_EQ(count_at("c2", "", "L1", 1, now(), &out), ATP_EBADREQ);
  CHECK_EQ(count_at("c2", "A", "", 1, now(), &out), ATP_EBADREQ);
  CHECK_POS("A", "L1", 40, 0, 0, 0);
  /* A count of zero is valid. */
  REQUIRE(count_at("c3", "A", "L1", 0, now(), &out) == 0);
  CHECK_POS("A", "L1", 0, 0, 0, 0);
  /* Idempotency. */
  atp_count_res_t again;
  REQUIRE(count_at("c1", "A", "L1", 40, now() - 1000, &again) == 0);
  CHECK(again.replayed);
  CHECK(again.applied);
  CHECK_EQ(again.position.on_hand, 40);
  CHECK_POS("A", "L1", 0, 0, 0, 0);
  CHECK_EQ(count_at("c1", "A", "L1", 41, now() - 1000, &again), ATP_EIDEMPOTENCY);
  CHECK_EQ(count_at("c1", "A", "L1", 40, now() - 999, &again), ATP_EIDEMPOTENCY);
  CHECK_POS("A", "L1", 0, 0, 0, 0);
}

static void test_count_change_from(void) {
  REQUIRE(setup() == 0);
  REQUIRE(adjust("a1", "A", "L1", 10) == 0);
  advance(1000);
  atp_count_req_t req = count_req("c1", "A", "L1", 3, now() - 10);
  req.has_change_from = true;
  req.change_from = 11;
  atp_count_res_t out;
  CHECK_EQ(atp_count(E, &req, &out, &RES), ATP_ECONFLICT);
  CHECK_EQ(RES.current_on_hand, 10);
  CHECK_POS("A", "L1", 10, 0, 0, 0);
  CHECK_EQ(pos("A", "L1").counted_at_ms, ATP_TIME_NONE);
  req.change_from = 10;
  CHECK_EQ(atp_count(E, &req, &out, &RES), 0);
  CHECK(out.applied);
  CHECK_POS("A", "L1", 3, 0, 0, 0);
}

static void test_count_semantics(void) {
  REQUIRE(setup() == 0);
  advance(100000); /* now = T0 + 100 s */
  int64_t t = now();
  atp_adjust_res_t ar;
  REQUIRE(adjust_at("a1", "A", "L1", 100, t - 10000, NULL) == 0);
  REQUIRE(adjust_at("a2", "A", "L1", 5, t - 5000, NULL) == 0);
  REQUIRE(adjust_at("a3", "A", "L1", -3, t - 1000, NULL) == 0);
  CHECK_POS("A", "L1", 102, 0, 0, 0);

  /* 50 units at t-3000; a3 came after it: 50 - 3. */
  atp_count_res_t cr;
  REQUIRE(count_at("c1", "A", "L1", 50, t - 3000, &cr) == 0);
  CHECK(cr.applied && !cr.stale && !cr.approximate);
  CHECK_EQ(cr.position.on_hand, 47);
  CHECK_EQ(cr.position.counted_at_ms, t - 3000);
  CHECK_POS("A", "L1", 47, 0, 0, 0);

  /* A late adjustment the count already saw is absorbed. */
  uint64_t v = ver("A", "L1");
  REQUIRE(adjust_at("a4", "A", "L1", 7, t - 4000, &ar) == 0);
  CHECK(!ar.applied);
  CHECK(ar.absorbed);
  CHECK_EQ(ar.position.on_hand, 47);
  CHECK_POS("A", "L1", 47, 0, 0, 0);
  /* At exactly counted_at: absorbed too (occurred_at <= counted_at). */
  REQUIRE(adjust_at("a5", "A", "L1", 9, t - 3000, &ar) == 0);
  CHECK(!ar.applied && ar.absorbed);
  CHECK_POS("A", "L1", 47, 0, 0, 0);
  CHECK(ver("A", "L1") >= v);
  /* Replaying an absorbed adjustment answers absorbed again. */
  atp_adjust_res_t ar2;
  REQUIRE(adjust_at("a5", "A", "L1", 9, t - 3000, &ar2) == 0);
  CHECK(ar2.replayed && !ar2.applied && ar2.absorbed);
  /* One millisecond later: applied. */
  REQUIRE(adjust_at("a6", "A", "L1", 2, t - 2999, &ar) == 0);
  CHECK(ar.applied && !ar.absorbed);
  CHECK_POS("A", "L1", 49, 0, 0, 0);

  /* An older count is stale and changes nothing. */
  v = ver("A", "L1");
  REQUIRE(count_at("c2", "A", "L1", 500, t - 3500, &cr) == 0);
  CHECK(cr.stale);
  CHECK(!cr.applied);
  CHECK_EQ(cr.position.on_hand, 49);
  CHECK_POS("A", "L1", 49, 0, 0, 0);
  CHECK_EQ(pos("A", "L1").counted_at_ms, t - 3000);
  CHECK_EQ(ver("A", "L1"), v);
  /* A stale count's replay is stale again. */
  atp_count_res_t cr2;
  REQUIRE(count_at("c2", "A", "L1", 500, t - 3500, &cr2) == 0);
  CHECK(cr2.replayed && cr2.stale && !cr2.applied);

  /* A newer count: a3 (t-1000) is after it, a6 (t-2999) is not. */
  REQUIRE(count_at("c3", "A", "L1", 10, t - 2000, &cr) == 0);
  CHECK(cr.applied && !cr.stale);
  CHECK_POS("A", "L1", 7, 0, 0, 0);

  /* Fulfilments are on-hand changes too: a count before one adds it. */
  REQUIRE(reserve1("r1", "A", "L1", 2) == 0);
  REQUIRE(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1"), NULL, 0, &R, &RES) == 0);
  CHECK_POS("A", "L1", 5, 0, 0, 0);
  REQUIRE(count_at("c4", "A", "L1", 20, t - 500, &cr) == 0);
  CHECK(cr.applied);
  CHECK_POS("A", "L1", 18, 0, 0, 0); /* 20 - 2 (fulfilled at t) */

  /* Adjustments defaulting to now come after any past count. */
  REQUIRE(adjust("a7", "A", "L1", 1) == 0);
  CHECK_POS("A", "L1", 19, 0, 0, 0);
  /* A count at now - 1 sees nothing after it except... nothing. */
  advance(10);
  REQUIRE(count_at("c5", "A", "L1", 4, now() - 1, &cr) == 0);
  CHECK_POS("A", "L1", 4, 0, 0, 0);

  /* Counts leave reservations alone. */
  REQUIRE(reserve1("r2", "A", "L1", 3) == 0);
  advance(10);
  REQUIRE(count_at("c6", "A", "L1", 1, now() - 1, &cr) == 0);
  CHECK_POS("A", "L1", 1, 0, 3, 0); /* shortfall 2 */
  CHECK_EQ(pos("A", "L1").shortfall, 2);
}

static void test_count_approximate(void) {
  atp_engine_config_t config = et_config(&CLK);
  config.history_window_ms = 60000;
  REQUIRE(setup_with(&config) == 0);
  advance(10 * 60000);
  int64_t t = now();
  REQUIRE(adjust_at("a1", "A", "L1", 30, t - 30000, NULL) == 0);
  atp_count_res_t cr;
  /* Inside the window: exact, a1 added. */
  REQUIRE(count_at("c1", "A", "L1", 5, t - 50000, &cr) == 0);
  CHECK(cr.applied && !cr.approximate && !cr.stale);
  CHECK_POS("A", "L1", 35, 0, 0, 0);
  /* Older than the window on another position: approximate. */
  REQUIRE(count_at("c2", "B", "L1", 8, t - 120000, &cr) == 0);
  CHECK(cr.applied && cr.approximate && !cr.stale);
  CHECK_POS("B", "L1", 8, 0, 0, 0);
  CHECK_EQ(pos("B", "L1").counted_at_ms, t - 120000);
  /* Stale takes precedence over approximate: nothing changes. */
  REQUIRE(count_at("c3", "A", "L1", 99, t - 200000, &cr) == 0);
  CHECK(cr.stale && !cr.applied);
  CHECK_POS("A", "L1", 35, 0, 0, 0);
}

/* --- on-hand history reads (reconciliation) ------------------------------- */

static void test_changes_after(void) {
  atp_engine_config_t config = et_config(&CLK);
  config.history_window_ms = 60000;
  REQUIRE(setup_with(&config) == 0);
  advance(10 * 60000);
  int64_t t = now();
  atp_position_t p;
  int64_t sum = 0;
  bool covered = false;
  CHECK_EQ(
      atp_position_changes_after(E, et_str("A"), et_str("L1"), t, &p, &sum, &covered),
      ATP_ENOTFOUND);
  REQUIRE(adjust_at("h1", "A", "L1", 10, t - 40000, NULL) == 0);
  REQUIRE(adjust_at("h2", "A", "L1", -3, t - 20000, NULL) == 0);
  REQUIRE(adjust_at("h3", "A", "L1", -2, t - 10000, NULL) == 0);
  /* Strictly after t: the change at t - 20000 is not after t - 20000. */
  REQUIRE(atp_position_changes_after(E, et_str("A"), et_str("L1"), t - 20000, &p, &sum,
                                     &covered) == 0);
  CHECK_EQ(sum, -2);
  CHECK(covered);
  CHECK_EQ(p.on_hand, 5);
  CHECK(p.version > 0);
  /* The figure it implies is the one a count at that instant would set. */
  CHECK_EQ(p.on_hand - sum, 7);
  REQUIRE(atp_position_changes_after(E, et_str("A"), et_str("L1"), t - 50000, &p, &sum,
                                     &covered) == 0);
  CHECK_EQ(sum, 5);
  CHECK(covered);
  /* Nothing after now. */
  REQUIRE(atp_position_changes_after(E, et_str("A"), et_str("L1"), t, &p, &sum,
                                     &covered) == 0);
  CHECK_EQ(sum, 0);
  /* Older than the window: not covered, as a count there is approximate. */
  REQUIRE(atp_position_changes_after(E, et_str("A"), et_str("L1"), t - 120000, &p, &sum,
                                     &covered) == 0);
  CHECK(!covered);
  atp_count_res_t cr;
  REQUIRE(count_at("hc", "A", "L1", 1, t - 120000, &cr) == 0);
  CHECK(cr.approximate);
}

/* A history full at its cap forgets its oldest entries and says so: a time
 * before the dropped ones is not covered even inside the window. */
static void test_changes_after_cap(void) {
  REQUIRE(setup() == 0);
  int64_t t = now();
  char id[32];
  for (int i = 0; i < ATP_HISTORY_ENTRIES_MAX + 10; i++) {
    snprintf(id, sizeof id, "cap%d", i);
    REQUIRE(adjust_at(id, "A", "L1", 1, t - 100000 + i, NULL) == 0);
  }
  atp_position_t p;
  int64_t sum = 0;
  bool covered = true;
  REQUIRE(atp_position_changes_after(E, et_str("A"), et_str("L1"), t - 100000 - 1, &p,
                                     &sum, &covered) == 0);
  CHECK(!covered);
  CHECK_EQ(sum, ATP_HISTORY_ENTRIES_MAX);
  REQUIRE(atp_position_changes_after(E, et_str("A"), et_str("L1"), t - 100000 + 100, &p,
                                     &sum, &covered) == 0);
  CHECK(covered);
  CHECK_EQ(sum, ATP_HISTORY_ENTRIES_MAX + 10 - 101);
}

static int each_count(void *ctx, const atp_position_t *p) {
  int *n = ctx;
  (*n)++;
  return p->on_hand == 99 ? 7 : 0;
}

static void test_position_each(void) {
  REQUIRE(setup() == 0);
  int n = 0;
  CHECK_EQ(atp_position_each(E, each_count, &n), 0);
  CHECK_EQ(n, 0);
  REQUIRE(adjust("e1", "A", "L1", 3) == 0);
  REQUIRE(adjust("e2", "B", "L1", 4) == 0);
  REQUIRE(adjust("e3", "A", "L2", 99) == 0);
  REQUIRE(adjust("e4", "C", "L2", 1) == 0);
  n = 0;
  /* Creation order, and a nonzero return stops the walk. */
  CHECK_EQ(atp_position_each(E, each_count, &n), 7);
  CHECK_EQ(n, 3);
}

/* --- safety stock ---------------------------------------------------------- */

static void test_safety_stock(void) {
  REQUIRE(setup() == 0);
  atp_position_t out;
  REQUIRE(atp_safety_stock_set(E, ATP_STR("A"), ATP_STR("L1"), 5, &out, &RES) == 0);
  CHECK_EQ(out.safety_stock, 5);
  CHECK_EQ(out.on_hand, 0);
  CHECK_EQ(out.available, 0);
  CHECK(out.version != 0);
  CHECK_POS("A", "L1", 0, 5, 0, 0);
  REQUIRE(adjust("a1", "A", "L1", 8) == 0);
  CHECK_POS("A", "L1", 8, 5, 0, 0);
  CHECK_EQ(reserve1("r1", "A", "L1", 4), ATP_EINSUFFICIENT);
  CHECK_EQ(reserve1("r1", "A", "L1", 3), 0);
  CHECK_EQ(atp_safety_stock_set(E, ATP_STR("A"), ATP_STR("L1"), -1, &out, &RES),
           ATP_EBADREQ);
  CHECK(strstr(RES.field, "safety_stock") != NULL);
  CHECK_EQ(atp_safety_stock_set(E, ATP_STR(""), ATP_STR("L1"), 1, &out, &RES),
           ATP_EBADREQ);
  CHECK_EQ(atp_safety_stock_set(E, ATP_STR("A"), ATP_STR(""), 1, &out, &RES),
           ATP_EBADREQ);
  int rc =
      atp_safety_stock_set(E, ATP_STR("A"), ATP_STR("L1"), ATP_QTY_MAX + 1, &out, &RES);
  CHECK(rc == ATP_EOVERFLOW || rc == ATP_EBADREQ);
  CHECK_POS("A", "L1", 8, 5, 3, 0);
  /* Lowering it frees units; raising it above what is free leaves reservations. */
  REQUIRE(atp_safety_stock_set(E, ATP_STR("A"), ATP_STR("L1"), 0, &out, &RES) == 0);
  CHECK_POS("A", "L1", 8, 0, 3, 0);
  REQUIRE(atp_safety_stock_set(E, ATP_STR("A"), ATP_STR("L1"), 100, &out, &RES) == 0);
  CHECK_POS("A", "L1", 8, 100, 3, 0);
  CHECK_EQ(get_res("r1"), 0);
  CHECK_EQ(R2.status, ATP_STATUS_HELD);
  atp_position_t p;
  CHECK_EQ(pos_rc("", "L1", &p), ATP_ENOTFOUND);
}

/* --- reserve ------------------------------------------------------------------ */

static void stock(const char *sku, const char *loc, int64_t qty) {
  char id[300];
  static int seq;
  snprintf(id, sizeof id, "stock-%d-%s-%s", ++seq, sku, loc);
  CHECK_EQ(adjust(id, sku, loc, qty), 0);
}

static void test_reserve_basic(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  stock("B", "L2", 5);
  atp_line_req_t lines[2] = {LL("A", "L1", 3), LL("B", "L2", 2)};
  atp_reserve_req_t req = res_req("r1", lines, 2, 0);
  req.order_ref = ATP_STR("cart-9");
  req.channel = ATP_STR("web");
  req.customer_id = ATP_STR("cust-1");
  REQUIRE(atp_reserve(E, &req, &R, &SF, &RES) == 0);
  CHECK(et_str_is(R.id, "r1"));
  CHECK_EQ(R.status, ATP_STATUS_HELD);
  CHECK(!R.replayed);
  CHECK_EQ(R.created_at_ms, T0);
  CHECK_EQ(R.ttl_ms, ATP_TTL_MS_DEFAULT);
  CHECK_EQ(R.expires_at_ms, T0 + ATP_TTL_MS_DEFAULT);
  CHECK_EQ(R.ended_at_ms, ATP_TIME_NONE);
  CHECK(et_str_is(R.order_ref, "cart-9"));
  CHECK(et_str_is(R.channel, "web"));
  CHECK(et_str_is(R.customer_id, "cust-1"));
  CHECK_EQ(R.order_id.len, 0);
  REQUIRE(R.line_count == 2);
  /* Lines in request order. */
  CHECK(et_str_is(R.lines[0].sku, "A") && et_str_is(R.lines[0].location, "L1"));
  CHECK(et_str_is(R.lines[1].sku, "B") && et_str_is(R.lines[1].location, "L2"));
  CHECK_LINE(&R, "A", "L1", 3, 0, 0);
  CHECK_LINE(&R, "B", "L2", 2, 0, 0);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  CHECK_POS("B", "L2", 5, 0, 2, 0);
  /* The stored copy is the same. */
  REQUIRE(get_res("r1") == 0);
  CHECK(et_str_is(R2.id, "r1"));
  CHECK_EQ(R2.status, ATP_STATUS_HELD);
  CHECK(!R2.replayed);
  CHECK_EQ(R2.expires_at_ms, T0 + ATP_TTL_MS_DEFAULT);
  CHECK_EQ(R2.line_count, 2);
  CHECK_LINE(&R2, "A", "L1", 3, 0, 0);
  CHECK(et_str_is(R2.order_ref, "cart-9"));
  CHECK(et_str_is(R2.customer_id, "cust-1"));
  /* Explicit ttl. */
  REQUIRE(reserve_lines("r2", lines, 1, 60000) == 0);
  CHECK_EQ(R.ttl_ms, 60000);
  CHECK_EQ(R.expires_at_ms, T0 + 60000);
  CHECK_POS("A", "L1", 10, 0, 6, 0);
  /* Exactly what is available. */
  REQUIRE(reserve1("r3", "A", "L1", 4) == 0);
  CHECK_POS("A", "L1", 10, 0, 10, 0);
  CHECK_EQ(reserve1("r4", "A", "L1", 1), ATP_EINSUFFICIENT);
  atp_engine_stats_t st;
  atp_engine_stats(E, &st);
  CHECK_EQ(st.reservations_by_status[ATP_STATUS_HELD], 3);
  CHECK_EQ(st.positions, 2);
}

static void test_reserve_all_or_nothing(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  stock("B", "L2", 5);
  atp_line_req_t lines[4] = {LL("A", "L1", 3), LL("B", "L2", 6), LL("C", "L9", 1),
                             LL("A", "L1", 7)};
  uint64_t va = ver("A", "L1"), vb = ver("B", "L2");
  CHECK_EQ(reserve_lines("r1", lines, 3, 0), ATP_EINSUFFICIENT);
  REQUIRE(SF.count == 2);
  CHECK_EQ(SF.items[0].line, 1);
  CHECK(et_str_is(SF.items[0].sku, "B"));
  CHECK(et_str_is(SF.items[0].location, "L2"));
  CHECK_EQ(SF.items[0].group.len, 0);
  CHECK_EQ(SF.items[0].requested, 6);
  CHECK_EQ(SF.items[0].available, 5);
  CHECK_EQ(SF.items[1].line, 2);
  CHECK(et_str_is(SF.items[1].sku, "C"));
  CHECK(et_str_is(SF.items[1].location, "L9"));
  CHECK_EQ(SF.items[1].requested, 1);
  CHECK_EQ(SF.items[1].available, 0); /* never seen */
  /* Nothing held, nothing created, no trace of the id. */
  CHECK_POS("A", "L1", 10, 0, 0, 0);
  CHECK_POS("B", "L2", 5, 0, 0, 0);
  /* The version may have moved (a line taken, then given back: the engine's
   * lock-free take/rollback), but never backwards. */
  CHECK(ver("A", "L1") >= va);
  CHECK(ver("B", "L2") >= vb);
  atp_position_t p;
  CHECK_EQ(pos_rc("C", "L9", &p), ATP_ENOTFOUND);
  CHECK_EQ(get_res("r1"), ATP_ENOTFOUND);
  /* Shortfalls may be NULL. */
  atp_reserve_req_t req = res_req("r1", lines, 3, 0);
  CHECK_EQ(atp_reserve(E, &req, &R, NULL, &RES), ATP_EINSUFFICIENT);
  /* The same id, other content, later succeeds. */
  lines[1] = LL("B", "L2", 5);
  REQUIRE(reserve_lines("r1", lines, 2, 0) == 0);
  CHECK(!R.replayed);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  CHECK_POS("B", "L2", 5, 0, 5, 0);
  /* A refusal after stock ran out names what is available. */
  atp_line_req_t more[2] = {LL("A", "L1", 8), LL("B", "L2", 1)};
  CHECK_EQ(reserve_lines("r2", more, 2, 0), ATP_EINSUFFICIENT);
  REQUIRE(SF.count == 2);
  CHECK_EQ(SF.items[0].line, 0);
  CHECK_EQ(SF.items[0].requested, 8);
  CHECK_EQ(SF.items[0].available, 7);
  CHECK_EQ(SF.items[1].line, 1);
  CHECK_EQ(SF.items[1].available, 0);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  /* The first line alone would fit: all or nothing still refuses. */
  atp_line_req_t mixed[2] = {LL("A", "L1", 7), LL("B", "L2", 1)};
  CHECK_EQ(reserve_lines("r3", mixed, 2, 0), ATP_EINSUFFICIENT);
  CHECK_EQ(SF.count, 1);
  CHECK_EQ(SF.items[0].line, 1);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  CHECK_EQ(get_res("r3"), ATP_ENOTFOUND);
}

static void test_reserve_validation(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  uint64_t v = ver("A", "L1");
  atp_line_req_t line = LL("A", "L1", 0);
  CHECK_EQ(reserve_lines("r1", &line, 1, 0), ATP_EBADREQ);
  CHECK(strstr(RES.field, "qty") != NULL);
  line.qty = -1;
  CHECK_EQ(reserve_lines("r1", &line, 1, 0), ATP_EBADREQ);
  line.qty = 1;
  CHECK_EQ(reserve_lines("r1", &line, 0, 0), ATP_EBADREQ);
  CHECK_EQ(reserve_lines("", &line, 1, 0), ATP_EBADREQ);
  char *long_id = repeat_char('r', ATP_ID_BYTES_MAX + 1);
  CHECK_EQ(reserve_lines(long_id, &line, 1, 0), ATP_EBADREQ);
  CHECK_EQ(ATP_ENOTFOUND, get_res(long_id));
  atp_line_req_t bad = LL(long_id, "L1", 1);
  CHECK_EQ(reserve_lines("r1", &bad, 1, 0), ATP_EBADREQ);
  bad = LL("A", long_id, 1);
  CHECK_EQ(reserve_lines("r1", &bad, 1, 0), ATP_EBADREQ);
  bad = LG("A", long_id, 1, false);
  CHECK_EQ(reserve_lines("r1", &bad, 1, 0), ATP_EBADREQ);
  bad = LL("", "L1", 1);
  CHECK_EQ(reserve_lines("r1", &bad, 1, 0), ATP_EBADREQ);
  bad = LL("A", "", 1); /* neither location nor group */
  CHECK_EQ(reserve_lines("r1", &bad, 1, 0), ATP_EBADREQ);
  bad = LL("A", "L1", 1);
  bad.group = ATP_STR("G"); /* both */
  CHECK_EQ(reserve_lines("r1", &bad, 1, 0), ATP_EBADREQ);
  /* The second line is bad: the field names it, the first is not held. */
  atp_line_req_t two[2] = {LL("A", "L1", 1), LL("A", "L1", 0)};
  CHECK_EQ(reserve_lines("r1", two, 2, 0), ATP_EBADREQ);
  CHECK(strstr(RES.field, "1") != NULL);
  /* ttl range. */
  CHECK_EQ(reserve_lines("r1", &line, 1, ATP_TTL_MS_MIN - 1), ATP_EBADREQ);
  CHECK(strstr(RES.field, "ttl") != NULL);
  CHECK_EQ(reserve_lines("r1", &line, 1, ATP_TTL_MS_MAX + 1), ATP_EBADREQ);
  CHECK_EQ(reserve_lines("r1", &line, 1, -5), ATP_EBADREQ);
  /* Oversized optional strings. */
  atp_reserve_req_t req = res_req("r1", &line, 1, 0);
  req.order_ref = et_str(long_id);
  CHECK_EQ(atp_reserve(E, &req, &R, &SF, &RES), ATP_EBADREQ);
  req = res_req("r1", &line, 1, 0);
  req.channel = et_str(long_id);
  CHECK_EQ(atp_reserve(E, &req, &R, &SF, &RES), ATP_EBADREQ);
  req = res_req("r1", &line, 1, 0);
  req.customer_id = et_str(long_id);
  CHECK_EQ(atp_reserve(E, &req, &R, &SF, &RES), ATP_EBADREQ);
  /* A quantity beyond the supported range. */
  line.qty = ATP_QTY_MAX + 1;
  int rc = reserve_lines("r1", &line, 1, 0);
  CHECK(rc == ATP_EBADREQ || rc == ATP_EOVERFLOW || rc == ATP_EINSUFFICIENT);
  line.qty = 1;
  /* Nothing held by any of them. */
  CHECK_POS("A", "L1", 10, 0, 0, 0);
  CHECK_EQ(ver("A", "L1"), v);
  CHECK_EQ(get_res("r1"), ATP_ENOTFOUND);
  /* Edges that are fine. */
  CHECK_EQ(reserve_lines("t1", &line, 1, ATP_TTL_MS_MIN), 0);
  CHECK_EQ(R.ttl_ms, ATP_TTL_MS_MIN);
  CHECK_EQ(reserve_lines("t2", &line, 1, ATP_TTL_MS_MAX), 0);
  CHECK_EQ(R.expires_at_ms, T0 + ATP_TTL_MS_MAX);
  long_id[ATP_ID_BYTES_MAX] = 0;
  req = res_req(long_id, &line, 1, 0);
  req.order_ref = et_str(long_id);
  req.channel = et_str(long_id);
  req.customer_id = et_str(long_id);
  CHECK_EQ(atp_reserve(E, &req, &R, &SF, &RES), 0);
  CHECK(et_str_is(R.id, long_id));
  CHECK(et_str_is(R.order_ref, long_id));
  CHECK(et_str_is(R.customer_id, long_id));
  REQUIRE(get_res(long_id) == 0);
  CHECK(et_str_is(R2.id, long_id));
  CHECK(et_str_is(R2.channel, long_id));
  /* Commit with a 128-byte order id: all five strings at their maximum. */
  CHECK_EQ(atp_commit(E, et_str(long_id), et_str(long_id), &R, &RES), 0);
  CHECK(et_str_is(R.order_id, long_id));
  REQUIRE(get_res(long_id) == 0);
  CHECK(et_str_is(R2.order_id, long_id));
  CHECK(et_str_is(R2.order_ref, long_id));
  free(long_id);
  CHECK_POS("A", "L1", 10, 0, 2, 1);
}

static void test_reserve_line_limits(void) {
  REQUIRE(setup() == 0);
  enum { N = ATP_RESERVATION_LINES_MAX + 1 };
  static char skus[N][16];
  static atp_line_req_t lines[N];
  for (int i = 0; i < N; i++) {
    snprintf(skus[i], sizeof skus[i], "SKU%d", i);
    stock(skus[i], "L1", 2);
    lines[i] = LL(skus[i], "L1", 1);
  }
  CHECK_EQ(reserve_lines("big", lines, N, 0), ATP_EBADREQ);
  CHECK_EQ(get_res("big"), ATP_ENOTFOUND);
  CHECK_POS("SKU0", "L1", 2, 0, 0, 0);
  REQUIRE(reserve_lines("big", lines, N - 1, 0) == 0);
  CHECK_EQ(R.line_count, ATP_RESERVATION_LINES_MAX);
  CHECK_POS("SKU0", "L1", 2, 0, 1, 0);
  CHECK_POS("SKU99", "L1", 2, 0, 1, 0);
  CHECK_POS("SKU100", "L1", 2, 0, 0, 0);
  /* 100 failing lines: 100 shortfalls. */
  for (int i = 0; i < N; i++) lines[i].qty = 5;
  CHECK_EQ(reserve_lines("big2", lines, N - 1, 0), ATP_EINSUFFICIENT);
  CHECK_EQ(SF.count, ATP_RESERVATION_LINES_MAX);
  CHECK_EQ(SF.items[99].line, 99);
  CHECK_EQ(SF.items[99].available, 1);
}

static void test_reserve_idempotency(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  stock("B", "L1", 10);
  atp_line_req_t lines[2] = {LL("A", "L1", 3), LL("B", "L1", 1)};
  REQUIRE(reserve_lines("r1", lines, 2, 30000) == 0);
  uint64_t v = ver("A", "L1");
  advance(1000);
  REQUIRE(reserve_lines("r1", lines, 2, 30000) == 0);
  CHECK(R.replayed);
  CHECK_EQ(R.status, ATP_STATUS_HELD);
  CHECK_EQ(R.created_at_ms, T0);
  CHECK_EQ(R.expires_at_ms, T0 + 30000); /* a replay does not extend */
  CHECK_LINE(&R, "A", "L1", 3, 0, 0);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  CHECK_EQ(ver("A", "L1"), v);
  /* Other content. */
  lines[0].qty = 4;
  CHECK_EQ(reserve_lines("r1", lines, 2, 30000), ATP_EIDEMPOTENCY);
  lines[0].qty = 3;
  CHECK_EQ(reserve_lines("r1", lines, 1, 30000), ATP_EIDEMPOTENCY);
  atp_line_req_t other = LL("A", "L2", 3);
  CHECK_EQ(reserve_lines("r1", &other, 1, 30000), ATP_EIDEMPOTENCY);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  /* Replay answers the reservation as it is now. */
  REQUIRE(atp_commit(E, ATP_STR("r1"), ATP_STR("ord-1"), &R, &RES) == 0);
  REQUIRE(reserve_lines("r1", lines, 2, 30000) == 0);
  CHECK(R.replayed);
  CHECK_EQ(R.status, ATP_STATUS_COMMITTED);
  CHECK_POS("A", "L1", 10, 0, 0, 3);
  /* Even when the other content would not be fillable, it is a mismatch. */
  lines[0].qty = 1000;
  CHECK_EQ(reserve_lines("r1", lines, 2, 30000), ATP_EIDEMPOTENCY);
  /* After release, the same content is still a replay, not a new hold. */
  lines[0].qty = 3;
  REQUIRE(atp_release(E, ATP_STR("r1"), NULL, 0, &R, &RES) == 0);
  REQUIRE(reserve_lines("r1", lines, 2, 30000) == 0);
  CHECK(R.replayed);
  CHECK_EQ(R.status, ATP_STATUS_RELEASED);
  CHECK_POS("A", "L1", 10, 0, 0, 0);
}

static void test_reserve_group(void) {
  REQUIRE(setup() == 0);
  atp_str_t locs[4] = {ATP_STR("L1"), ATP_STR("L2"), ATP_STR("L3"), ATP_STR("L4")};
  REQUIRE(atp_group_put(E, ATP_STR("G"), locs, 4, &RES) == 0);
  stock("S", "L1", 2);
  stock("S", "L2", 5);
  stock("S", "L3", 10);
  /* L4 never seen: 0 available. */
  atp_line_req_t line = LG("S", "G", 4, false);
  REQUIRE(reserve_lines("r1", &line, 1, 0) == 0);
  REQUIRE(R.line_count == 1);
  CHECK(et_str_is(R.lines[0].sku, "S"));
  CHECK(et_str_is(R.lines[0].location, "L2")); /* first that fills whole */
  CHECK_EQ(R.lines[0].qty, 4);
  CHECK_POS("S", "L2", 5, 0, 4, 0);
  line.qty = 8;
  REQUIRE(reserve_lines("r2", &line, 1, 0) == 0);
  REQUIRE(R.line_count == 1);
  CHECK(et_str_is(R.lines[0].location, "L3"));
  CHECK_POS("S", "L3", 10, 0, 8, 0);
  /* available now: L1 2, L2 1, L3 2, L4 0 = 5. No single location fills 3. */
  line.qty = 3;
  CHECK_EQ(reserve_lines("r3", &line, 1, 0), ATP_EINSUFFICIENT);
  REQUIRE(SF.count == 1);
  CHECK_EQ(SF.items[0].line, 0);
  CHECK(et_str_is(SF.items[0].group, "G"));
  CHECK_EQ(SF.items[0].location.len, 0);
  CHECK_EQ(SF.items[0].requested, 3);
  /* Whole to one location: the best single one (L1 2, first of the tie with
   * L3), and the group's 5 that a split would take. */
  CHECK_EQ(SF.items[0].available, 2);
  CHECK(et_str_is(SF.items[0].best_location, "L1"));
  CHECK_EQ(SF.items[0].split_available, 5);
  CHECK_EQ(get_res("r3"), ATP_ENOTFOUND);
  /* Split: across locations in group order, one line per location used. */
  line = LG("S", "G", 4, true);
  REQUIRE(reserve_lines("r3", &line, 1, 0) == 0);
  REQUIRE(R.line_count == 3);
  CHECK(et_str_is(R.lines[0].location, "L1"));
  CHECK_EQ(R.lines[0].qty, 2);
  CHECK(et_str_is(R.lines[1].location, "L2"));
  CHECK_EQ(R.lines[1].qty, 1);
  CHECK(et_str_is(R.lines[2].location, "L3"));
  CHECK_EQ(R.lines[2].qty, 1);
  CHECK_POS("S", "L1", 2, 0, 2, 0);
  CHECK_POS("S", "L2", 5, 0, 5, 0);
  CHECK_POS("S", "L3", 10, 0, 9, 0);
  atp_position_t p;
  CHECK_EQ(pos_rc("S", "L4", &p), ATP_ENOTFOUND);
  /* Split that cannot be filled either: 1 left in the group. */
  line.qty = 2;
  CHECK_EQ(reserve_lines("r4", &line, 1, 0), ATP_EINSUFFICIENT);
  REQUIRE(SF.count == 1);
  CHECK_EQ(SF.items[0].available, 1); /* a split line: summed over the group */
  CHECK_EQ(SF.items[0].split_available, -1);
  CHECK_EQ(SF.items[0].best_location.len, 0);
  CHECK_POS("S", "L3", 10, 0, 9, 0);
  /* Unknown group: refused, nothing held. */
  atp_line_req_t unknown = LG("S", "NOPE", 1, false);
  int rc = reserve_lines("r5", &unknown, 1, 0);
  CHECK(rc == ATP_ENOTFOUND || rc == ATP_EBADREQ);
  CHECK_EQ(get_res("r5"), ATP_ENOTFOUND);
  /* A group line next to a location line, in one reservation. */
  stock("T", "L9", 3);
  stock("S", "L4", 6);
  atp_line_req_t mixed[2] = {LL("T", "L9", 3), LG("S", "G", 6, false)};
  REQUIRE(reserve_lines("r6", mixed, 2, 0) == 0);
  REQUIRE(R.line_count == 2);
  CHECK_LINE(&R, "T", "L9", 3, 0, 0);
  CHECK_LINE(&R, "S", "L4", 6, 0, 0);
  /* Split across a reversed group, then the group is deleted. */
  atp_str_t rev[2] = {ATP_STR("L3"), ATP_STR("L1")};
  REQUIRE(atp_group_put(E, ATP_STR("H"), rev, 2, &RES) == 0);
  stock("S", "L1", 2);          /* L3 available 1, L1 2 */
  line = LG("S", "H", 3, true); /* L3 1 + L1 2 */
  REQUIRE(reserve_lines("r8", &line, 1, 0) == 0);
  REQUIRE(R.line_count == 2);
  CHECK(et_str_is(R.lines[0].location, "L3"));
  CHECK_EQ(R.lines[0].qty, 1);
  CHECK(et_str_is(R.lines[1].location, "L1"));
  CHECK_EQ(R.lines[1].qty, 2);
  /* The reservation keeps its locations after the group changes. */
  REQUIRE(atp_group_delete(E, ATP_STR("H"), &RES) == 0);
  REQUIRE(get_res("r8") == 0);
  CHECK_EQ(R2.line_count, 2);
  CHECK_LINE(&R2, "S", "L1", 2, 0, 0);
}

/* CONTRACT.md 4: a group line "is routed to the first location in group order
 * that can fill it whole; with allow_split: true it MAY be split". Splitting is
 * the fallback when no single location can fill the line, not the default: a
 * line one location can ship whole is not spread over two shipments. */
static void test_reserve_split_prefers_whole(void) {
  REQUIRE(setup() == 0);
  atp_str_t locs[2] = {ATP_STR("L3"), ATP_STR("L1")};
  REQUIRE(atp_group_put(E, ATP_STR("H"), locs, 2, &RES) == 0);
  stock("S", "L3", 1);
  stock("S", "L1", 5);
  atp_line_req_t line = LG("S", "H", 3, true);
  REQUIRE(reserve_lines("r1", &line, 1, 0) == 0);
  CHECK_EQ(R.line_count, 1);
  CHECK_LINE(&R, "S", "L1", 3, 0, 0);
  CHECK(rline(&R, "S", "L3") == NULL);
}

/* --- commit / release / extend ------------------------------------------------ */

static void test_commit(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  REQUIRE(reserve1("r1", "A", "L1", 4) == 0);
  CHECK_EQ(atp_commit(E, ATP_STR("nope"), ATP_STR(""), &R, &RES), ATP_ENOTFOUND);
  advance(500);
  REQUIRE(atp_commit(E, ATP_STR("r1"), ATP_STR("order-77"), &R, &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_COMMITTED);
  CHECK(!R.replayed);
  CHECK_EQ(R.expires_at_ms, ATP_TIME_NONE);
  CHECK_EQ(R.ended_at_ms, ATP_TIME_NONE);
  CHECK(et_str_is(R.order_id, "order-77"));
  CHECK_LINE(&R, "A", "L1", 4, 0, 0);
  CHECK_POS("A", "L1", 10, 0, 0, 4);
  uint64_t v = ver("A", "L1");
  /* Replay. */
  REQUIRE(atp_commit(E, ATP_STR("r1"), ATP_STR("order-77"), &R, &RES) == 0);
  CHECK(R.replayed);
  CHECK_EQ(R.status, ATP_STATUS_COMMITTED);
  CHECK_POS("A", "L1", 10, 0, 0, 4);
  CHECK_EQ(ver("A", "L1"), v);
  REQUIRE(get_res("r1") == 0);
  CHECK_EQ(R2.status, ATP_STATUS_COMMITTED);
  CHECK(et_str_is(R2.order_id, "order-77"));
  CHECK_EQ(R2.expires_at_ms, ATP_TIME_NONE);
  /* A committed reservation never expires. */
  CHECK_EQ(advance_ticking(2000), 0);
  advance(ATP_TTL_MS_DEFAULT * 2);
  CHECK_EQ(atp_engine_tick(E), 0);
  REQUIRE(get_res("r1") == 0);
  CHECK_EQ(R2.status, ATP_STATUS_COMMITTED);
  CHECK_POS("A", "L1", 10, 0, 0, 4);
  /* Conflicts. */
  REQUIRE(reserve1("r2", "A", "L1", 1) == 0);
  REQUIRE(atp_release(E, ATP_STR("r2"), NULL, 0, &R, &RES) == 0);
  RES.status = -1;
  CHECK_EQ(atp_commit(E, ATP_STR("r2"), ATP_STR(""), &R, &RES), ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_RELEASED);
  REQUIRE(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1"), NULL, 0, &R, &RES) == 0);
  RES.status = -1;
  CHECK_EQ(atp_commit(E, ATP_STR("r1"), ATP_STR(""), &R, &RES), ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_FULFILLED);
  CHECK_POS("A", "L1", 6, 0, 0, 0);
  /* Commit without an order id. */
  REQUIRE(reserve1("r3", "A", "L1", 2) == 0);
  REQUIRE(atp_commit(E, ATP_STR("r3"), ATP_STR(""), &R, &RES) == 0);
  CHECK_EQ(R.order_id.len, 0);
  CHECK_POS("A", "L1", 6, 0, 0, 2);
}

static void test_release(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  stock("B", "L1", 10);
  atp_line_req_t lines[2] = {LL("A", "L1", 5), LL("B", "L1", 3)};
  REQUIRE(reserve_lines("r1", lines, 2, 0) == 0);
  CHECK_EQ(atp_release(E, ATP_STR("nope"), NULL, 0, &R, &RES), ATP_ENOTFOUND);
  /* Partial. */
  atp_qty_line_t part = QL("A", "L1", 2);
  REQUIRE(atp_release(E, ATP_STR("r1"), &part, 1, &R, &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_HELD);
  CHECK_LINE(&R, "A", "L1", 5, 0, 2);
  CHECK_LINE(&R, "B", "L1", 3, 0, 0);
  CHECK_EQ(R.line_count, 2);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  CHECK_POS("B", "L1", 10, 0, 3, 0);
  /* More than remains: conflict, nothing changes. */
  uint64_t v = ver("A", "L1");
  part.qty = 4;
  CHECK_EQ(atp_release(E, ATP_STR("r1"), &part, 1, &R, &RES), ATP_ECONFLICT);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  CHECK_EQ(ver("A", "L1"), v);
  /* One good line, one too many: neither applies. */
  atp_qty_line_t two[2] = {QL("A", "L1", 1), QL("B", "L1", 4)};
  CHECK_EQ(atp_release(E, ATP_STR("r1"), two, 2, &R, &RES), ATP_ECONFLICT);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  CHECK_POS("B", "L1", 10, 0, 3, 0);
  /* A position not in the reservation: bad request. */
  atp_qty_line_t stranger = QL("C", "L1", 1);
  CHECK_EQ(atp_release(E, ATP_STR("r1"), &stranger, 1, &R, &RES), ATP_EBADREQ);
  stranger = QL("A", "L2", 1);
  CHECK_EQ(atp_release(E, ATP_STR("r1"), &stranger, 1, &R, &RES), ATP_EBADREQ);
  atp_qty_line_t zero = QL("A", "L1", 0);
  CHECK_EQ(atp_release(E, ATP_STR("r1"), &zero, 1, &R, &RES), ATP_EBADREQ);
  zero.qty = -2;
  CHECK_EQ(atp_release(E, ATP_STR("r1"), &zero, 1, &R, &RES), ATP_EBADREQ);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  REQUIRE(get_res("r1") == 0);
  CHECK_EQ(R2.status, ATP_STATUS_HELD);
  CHECK_LINE(&R2, "A", "L1", 5, 0, 2);
  /* Release the rest by lines: released. */
  advance(700);
  atp_qty_line_t rest[2] = {QL("A", "L1", 3), QL("B", "L1", 3)};
  REQUIRE(atp_release(E, ATP_STR("r1"), rest, 2, &R, &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_RELEASED);
  CHECK_EQ(R.expires_at_ms, ATP_TIME_NONE);
  CHECK_EQ(R.ended_at_ms, T0 + 700);
  CHECK_LINE(&R, "A", "L1", 5, 0, 5);
  CHECK_LINE(&R, "B", "L1", 3, 0, 3);
  CHECK_POS("A", "L1", 10, 0, 0, 0);
  CHECK_POS("B", "L1", 10, 0, 0, 0);
  /* Releasing a released reservation: replay, whatever the lines. */
  v = ver("A", "L1");
  REQUIRE(atp_release(E, ATP_STR("r1"), NULL, 0, &R, &RES) == 0);
  CHECK(R.replayed);
  CHECK_EQ(R.status, ATP_STATUS_RELEASED);
  REQUIRE(atp_release(E, ATP_STR("r1"), rest, 1, &R, &RES) == 0);
  CHECK(R.replayed);
  CHECK_EQ(ver("A", "L1"), v);
  CHECK_POS("A", "L1", 10, 0, 0, 0);

  /* Whole release of a committed reservation returns committed units. */
  REQUIRE(reserve_lines("r2", lines, 2, 0) == 0);
  REQUIRE(atp_commit(E, ATP_STR("r2"), ATP_STR(""), &R, &RES) == 0);
  CHECK_POS("A", "L1", 10, 0, 0, 5);
  part = QL("A", "L1", 1);
  REQUIRE(atp_release(E, ATP_STR("r2"), &part, 1, &R, &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_COMMITTED);
  CHECK_POS("A", "L1", 10, 0, 0, 4);
  REQUIRE(atp_release(E, ATP_STR("r2"), NULL, 0, &R, &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_RELEASED);
  CHECK_LINE(&R, "A", "L1", 5, 0, 5);
  CHECK_POS("A", "L1", 10, 0, 0, 0);
  CHECK_POS("B", "L1", 10, 0, 0, 0);

  /* Conflicts from fulfilled and expired. */
  REQUIRE(reserve1("r4", "A", "L1", 1) == 0);
  REQUIRE(atp_fulfil(E, ATP_STR("r4"), ATP_STR("f4"), NULL, 0, &R, &RES) == 0);
  RES.status = -1;
  CHECK_EQ(atp_release(E, ATP_STR("r4"), NULL, 0, &R, &RES), ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_FULFILLED);
  atp_line_req_t l5 = LL("A", "L1", 1);
  REQUIRE(reserve_lines("r5", &l5, 1, ATP_TTL_MS_MIN) == 0);
  advance_ticking(ATP_TTL_MS_MIN + 1000);
  REQUIRE(get_res("r5") == 0);
  REQUIRE(R2.status == ATP_STATUS_EXPIRED);
  RES.status = -1;
  CHECK_EQ(atp_release(E, ATP_STR("r5"), NULL, 0, &R, &RES), ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_EXPIRED);
  CHECK_POS("A", "L1", 9, 0, 0, 0);
}

/* CONTRACT.md 4, release: "When nothing remains the status is released." The
 * release of what is left after a partial fulfilment ends the reservation as
 * released; the fulfilled units stay counted on their lines. */
static void test_release_rest_after_partial_fulfil(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  stock("B", "L1", 10);
  atp_line_req_t lines[2] = {LL("A", "L1", 5), LL("B", "L1", 3)};
  REQUIRE(reserve_lines("r3", lines, 2, 0) == 0);
  atp_qty_line_t part = QL("A", "L1", 2);
  REQUIRE(atp_fulfil(E, ATP_STR("r3"), ATP_STR("f3"), &part, 1, &R, &RES) == 0);
  REQUIRE(atp_release(E, ATP_STR("r3"), NULL, 0, &R, &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_RELEASED);
  CHECK_LINE(&R, "A", "L1", 5, 2, 3);
  CHECK_LINE(&R, "B", "L1", 3, 0, 3);
  CHECK_POS("A", "L1", 8, 0, 0, 0);
  CHECK_POS("B", "L1", 10, 0, 0, 0);
}

static void test_extend(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  atp_line_req_t line = LL("A", "L1", 2);
  REQUIRE(reserve_lines("r1", &line, 1, 5000) == 0);
  CHECK_EQ(R.expires_at_ms, T0 + 5000);
  advance(3000);
  REQUIRE(atp_extend(E, ATP_STR("r1"), 10000, &R, &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_HELD);
  CHECK_EQ(R.expires_at_ms, T0 + 13000);
  REQUIRE(get_res("r1") == 0);
  CHECK_EQ(R2.expires_at_ms, T0 + 13000);
  /* Range. */
  CHECK_EQ(atp_extend(E, ATP_STR("r1"), ATP_TTL_MS_MIN - 1, &R, &RES), ATP_EBADREQ);
  CHECK_EQ(atp_extend(E, ATP_STR("r1"), ATP_TTL_MS_MAX + 1, &R, &RES), ATP_EBADREQ);
  CHECK_EQ(atp_extend(E, ATP_STR("r1"), 0, &R, &RES), ATP_EBADREQ);
  CHECK_EQ(atp_extend(E, ATP_STR("nope"), 5000, &R, &RES), ATP_ENOTFOUND);
  REQUIRE(get_res("r1") == 0);
  CHECK_EQ(R2.expires_at_ms, T0 + 13000);
  /* Shortening is allowed too: expires_at = now + ttl. */
  REQUIRE(atp_extend(E, ATP_STR("r1"), ATP_TTL_MS_MIN, &R, &RES) == 0);
  CHECK_EQ(R.expires_at_ms, T0 + 3000 + ATP_TTL_MS_MIN);
  CHECK_POS("A", "L1", 10, 0, 2, 0);
  /* Only while held. */
  REQUIRE(atp_commit(E, ATP_STR("r1"), ATP_STR(""), &R, &RES) == 0);
  RES.status = -1;
  CHECK_EQ(atp_extend(E, ATP_STR("r1"), 5000, &R, &RES), ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_COMMITTED);
  REQUIRE(get_res("r1") == 0);
  CHECK_EQ(R2.expires_at_ms, ATP_TIME_NONE);
  REQUIRE(reserve1("r2", "A", "L1", 1) == 0);
  REQUIRE(atp_release(E, ATP_STR("r2"), NULL, 0, &R, &RES) == 0);
  CHECK_EQ(atp_extend(E, ATP_STR("r2"), 5000, &R, &RES), ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_RELEASED);
  REQUIRE(reserve1("r3", "A", "L1", 1) == 0);
  REQUIRE(atp_fulfil(E, ATP_STR("r3"), ATP_STR("f3"), NULL, 0, &R, &RES) == 0);
  CHECK_EQ(atp_extend(E, ATP_STR("r3"), 5000, &R, &RES), ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_FULFILLED);
}

/* --- fulfil ------------------------------------------------------------------- */

static void test_fulfil(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  stock("B", "L1", 10);
  /* Committed, fulfilled whole. */
  REQUIRE(reserve1("r1", "A", "L1", 5) == 0);
  REQUIRE(atp_commit(E, ATP_STR("r1"), ATP_STR("o1"), &R, &RES) == 0);
  CHECK_EQ(atp_fulfil(E, ATP_STR("nope"), ATP_STR("f0"), NULL, 0, &R, &RES),
           ATP_ENOTFOUND);
  CHECK_EQ(atp_fulfil(E, ATP_STR("r1"), ATP_STR(""), NULL, 0, &R, &RES), ATP_EBADREQ);
  advance(250);
  REQUIRE(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1"), NULL, 0, &R, &RES) == 0);
  CHECK(!R.replayed);
  CHECK_EQ(R.status, ATP_STATUS_FULFILLED);
  CHECK_EQ(R.ended_at_ms, T0 + 250);
  CHECK_LINE(&R, "A", "L1", 5, 5, 0);
  CHECK_POS("A", "L1", 5, 0, 0, 0);
  uint64_t v = ver("A", "L1");
  /* Replay. */
  REQUIRE(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1"), NULL, 0, &R, &RES) == 0);
  CHECK(R.replayed);
  CHECK_EQ(R.status, ATP_STATUS_FULFILLED);
  CHECK_POS("A", "L1", 5, 0, 0, 0);
  CHECK_EQ(ver("A", "L1"), v);
  /* Same fulfillment id, other content. */
  atp_qty_line_t l1 = QL("A", "L1", 1);
  CHECK_EQ(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1"), &l1, 1, &R, &RES),
           ATP_EIDEMPOTENCY);
  /* A new fulfillment id on a fulfilled reservation: conflict. */
  RES.status = -1;
  CHECK_EQ(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1b"), NULL, 0, &R, &RES),
           ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_FULFILLED);
  CHECK_POS("A", "L1", 5, 0, 0, 0);

  /* Held, partial: committed first. */
  atp_line_req_t lines[2] = {LL("A", "L1", 4), LL("B", "L1", 2)};
  REQUIRE(reserve_lines("r2", lines, 2, 0) == 0);
  CHECK_POS("A", "L1", 5, 0, 4, 0);
  atp_qty_line_t part = QL("A", "L1", 1);
  REQUIRE(atp_fulfil(E, ATP_STR("r2"), ATP_STR("f2"), &part, 1, &R, &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_COMMITTED);
  CHECK_EQ(R.expires_at_ms, ATP_TIME_NONE);
  CHECK_LINE(&R, "A", "L1", 4, 1, 0);
  CHECK_LINE(&R, "B", "L1", 2, 0, 0);
  CHECK_POS("A", "L1", 4, 0, 0, 3);
  CHECK_POS("B", "L1", 10, 0, 0, 2);
  /* The same fulfillment id on another reservation is other content. */
  REQUIRE(reserve1("r9", "A", "L1", 1) == 0);
  CHECK_EQ(atp_fulfil(E, ATP_STR("r9"), ATP_STR("f2"), &part, 1, &R, &RES),
           ATP_EIDEMPOTENCY);
  REQUIRE(atp_release(E, ATP_STR("r9"), NULL, 0, &R, &RES) == 0);
  /* Errors change nothing. */
  atp_qty_line_t too_many = QL("A", "L1", 4);
  CHECK_EQ(atp_fulfil(E, ATP_STR("r2"), ATP_STR("f3"), &too_many, 1, &R, &RES),
           ATP_ECONFLICT);
  atp_qty_line_t stranger = QL("C", "L1", 1);
  CHECK_EQ(atp_fulfil(E, ATP_STR("r2"), ATP_STR("f4"), &stranger, 1, &R, &RES),
           ATP_EBADREQ);
  atp_qty_line_t zero = QL("A", "L1", 0);
  CHECK_EQ(atp_fulfil(E, ATP_STR("r2"), ATP_STR("f5"), &zero, 1, &R, &RES),
           ATP_EBADREQ);
  CHECK_POS("A", "L1", 4, 0, 0, 3);
  /* Refused fulfillment ids are free: f3 with a good line now works. */
  atp_qty_line_t two[2] = {QL("A", "L1", 3), QL("B", "L1", 1)};
  REQUIRE(atp_fulfil(E, ATP_STR("r2"), ATP_STR("f3"), two, 2, &R, &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_COMMITTED);
  CHECK_LINE(&R, "A", "L1", 4, 4, 0);
  CHECK_LINE(&R, "B", "L1", 2, 1, 0);
  CHECK_POS("A", "L1", 1, 0, 0, 0);
  CHECK_POS("B", "L1", 9, 0, 0, 1);
  /* The rest, without lines. */
  REQUIRE(atp_fulfil(E, ATP_STR("r2"), ATP_STR("f6"), NULL, 0, &R, &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_FULFILLED);
  CHECK_LINE(&R, "B", "L1", 2, 2, 0);
  CHECK_POS("B", "L1", 8, 0, 0, 0);
}

static void test_fulfil_conflicts(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  REQUIRE(reserve1("r1", "A", "L1", 2) == 0);
  REQUIRE(atp_release(E, ATP_STR("r1"), NULL, 0, &R, &RES) == 0);
  RES.status = -1;
  CHECK_EQ(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1"), NULL, 0, &R, &RES),
           ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_RELEASED);
  atp_line_req_t line = LL("A", "L1", 2);
  REQUIRE(reserve_lines("r2", &line, 1, ATP_TTL_MS_MIN) == 0);
  advance_ticking(ATP_TTL_MS_MIN + 1000);
  RES.status = -1;
  CHECK_EQ(atp_fulfil(E, ATP_STR("r2"), ATP_STR("f2"), NULL, 0, &R, &RES),
           ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_EXPIRED);
  CHECK_POS("A", "L1", 10, 0, 0, 0);
  /* Line exhausted by an earlier partial fulfilment. */
  REQUIRE(reserve1("r3", "A", "L1", 2) == 0);
  atp_qty_line_t two = QL("A", "L1", 2);
  atp_qty_line_t one = QL("A", "L1", 1);
  REQUIRE(atp_fulfil(E, ATP_STR("r3"), ATP_STR("f3"), &one, 1, &R, &RES) == 0);
  CHECK_EQ(atp_fulfil(E, ATP_STR("r3"), ATP_STR("f4"), &two, 1, &R, &RES),
           ATP_ECONFLICT);
  CHECK_POS("A", "L1", 9, 0, 0, 1);
}

/* --- amend -------------------------------------------------------------------- */

static void test_amend(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  stock("B", "L2", 10);
  stock("C", "L3", 5);
  REQUIRE(reserve1("r1", "A", "L1", 3) == 0);
  atp_qty_line_t rel = QL("A", "L1", 1);
  atp_line_req_t add = LL("B", "L2", 2);
  CHECK_EQ(
      atp_amend(E, ATP_STR("nope"), ATP_STR("m0"), &rel, 1, &add, 1, &R, &SF, &RES),
      ATP_ENOTFOUND);
  CHECK_EQ(atp_amend(E, ATP_STR("r1"), ATP_STR(""), &rel, 1, &add, 1, &R, &SF, &RES),
           ATP_EBADREQ);
  REQUIRE(atp_amend(E, ATP_STR("r1"), ATP_STR("m1"), &rel, 1, &add, 1, &R, &SF, &RES) ==
          0);
  CHECK(!R.replayed);
  CHECK_EQ(R.status, ATP_STATUS_HELD);
  CHECK_EQ(R.line_count, 2);
  CHECK_LINE(&R, "A", "L1", 3, 0, 1);
  CHECK_LINE(&R, "B", "L2", 2, 0, 0);
  CHECK_POS("A", "L1", 10, 0, 2, 0);
  CHECK_POS("B", "L2", 10, 0, 2, 0);
  uint64_t v = ver("B", "L2");
  /* Replay. */
  REQUIRE(atp_amend(E, ATP_STR("r1"), ATP_STR("m1"), &rel, 1, &add, 1, &R, &SF, &RES) ==
          0);
  CHECK(R.replayed);
  CHECK_LINE(&R, "A", "L1", 3, 0, 1);
  CHECK_POS("A", "L1", 10, 0, 2, 0);
  CHECK_POS("B", "L2", 10, 0, 2, 0);
  CHECK_EQ(ver("B", "L2"), v);
  /* Same amend id, other content. */
  add.qty = 3;
  CHECK_EQ(atp_amend(E, ATP_STR("r1"), ATP_STR("m1"), &rel, 1, &add, 1, &R, &SF, &RES),
           ATP_EIDEMPOTENCY);
  CHECK_POS("B", "L2", 10, 0, 2, 0);
  /* Insufficient: neither part happens. */
  atp_line_req_t adds[2] = {LL("B", "L2", 1), LL("C", "L3", 6)};
  CHECK_EQ(atp_amend(E, ATP_STR("r1"), ATP_STR("m2"), &rel, 1, adds, 2, &R, &SF, &RES),
           ATP_EINSUFFICIENT);
  REQUIRE(SF.count == 1);
  CHECK_EQ(SF.items[0].line, 1); /* index into add */
  CHECK(et_str_is(SF.items[0].sku, "C"));
  CHECK_EQ(SF.items[0].requested, 6);
  CHECK_EQ(SF.items[0].available, 5);
  CHECK_POS("A", "L1", 10, 0, 2, 0);
  CHECK_POS("B", "L2", 10, 0, 2, 0);
  CHECK_POS("C", "L3", 5, 0, 0, 0);
  REQUIRE(get_res("r1") == 0);
  CHECK_LINE(&R2, "A", "L1", 3, 0, 1);
  CHECK_EQ(R2.line_count, 2);
  /* Release part invalid: neither part happens. */
  atp_qty_line_t too_many = QL("A", "L1", 3);
  atp_line_req_t ok_add = LL("C", "L3", 1);
  int rc = atp_amend(E, ATP_STR("r1"), ATP_STR("m3"), &too_many, 1, &ok_add, 1, &R, &SF,
                     &RES);
  CHECK(rc == ATP_ECONFLICT || rc == ATP_EBADREQ);
  atp_qty_line_t stranger = QL("C", "L3", 1);
  CHECK_EQ(atp_amend(E, ATP_STR("r1"), ATP_STR("m4"), &stranger, 1, &ok_add, 1, &R, &SF,
                     &RES),
           ATP_EBADREQ);
  atp_line_req_t bad_add = LL("C", "L3", 0);
  CHECK_EQ(
      atp_amend(E, ATP_STR("r1"), ATP_STR("m5"), &rel, 1, &bad_add, 1, &R, &SF, &RES),
      ATP_EBADREQ);
  CHECK_POS("A", "L1", 10, 0, 2, 0);
  CHECK_POS("C", "L3", 5, 0, 0, 0);
  /* Adding to a position already held: one line per position. */
  atp_line_req_t more_b = LL("B", "L2", 3);
  REQUIRE(atp_amend(E, ATP_STR("r1"), ATP_STR("m6"), NULL, 0, &more_b, 1, &R, &SF,
                    &RES) == 0);
  CHECK_EQ(R.line_count, 2);
  CHECK_LINE(&R, "B", "L2", 5, 0, 0);
  CHECK_POS("B", "L2", 10, 0, 5, 0);
  /* Only releasing. */
  atp_qty_line_t rel_b = QL("B", "L2", 5);
  REQUIRE(atp_amend(E, ATP_STR("r1"), ATP_STR("m7"), &rel_b, 1, &ok_add, 1, &R, &SF,
                    &RES) == 0);
  CHECK_LINE(&R, "B", "L2", 5, 0, 5);
  CHECK_LINE(&R, "C", "L3", 1, 0, 0);
  CHECK_POS("B", "L2", 10, 0, 0, 0);
  CHECK_POS("C", "L3", 5, 0, 1, 0);
  /* On a committed reservation the added units are committed. */
  REQUIRE(atp_commit(E, ATP_STR("r1"), ATP_STR(""), &R, &RES) == 0);
  CHECK_POS("A", "L1", 10, 0, 0, 2);
  atp_line_req_t add_b = LL("B", "L2", 4);
  REQUIRE(atp_amend(E, ATP_STR("r1"), ATP_STR("m8"), &rel, 1, &add_b, 1, &R, &SF,
                    &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_COMMITTED);
  CHECK_LINE(&R, "A", "L1", 3, 0, 2);
  CHECK_LINE(&R, "B", "L2", 9, 0, 5);
  CHECK_POS("A", "L1", 10, 0, 0, 1);
  CHECK_POS("B", "L2", 10, 0, 0, 4);
  /* Group add lines route like reserve. */
  atp_str_t locs[2] = {ATP_STR("L7"), ATP_STR("L8")};
  REQUIRE(atp_group_put(E, ATP_STR("G"), locs, 2, &RES) == 0);
  stock("D", "L7", 1);
  stock("D", "L8", 3);
  atp_line_req_t add_g = LG("D", "G", 2, false);
  REQUIRE(atp_amend(E, ATP_STR("r1"), ATP_STR("m9"), NULL, 0, &add_g, 1, &R, &SF,
                    &RES) == 0);
  CHECK_LINE(&R, "D", "L8", 2, 0, 0);
  CHECK(rline(&R, "D", "L7") == NULL);
  CHECK_POS("D", "L8", 3, 0, 0, 2);
  /* Not on ended reservations. */
  REQUIRE(reserve1("r2", "A", "L1", 1) == 0);
  REQUIRE(atp_release(E, ATP_STR("r2"), NULL, 0, &R, &RES) == 0);
  RES.status = -1;
  CHECK_EQ(
      atp_amend(E, ATP_STR("r2"), ATP_STR("m10"), NULL, 0, &ok_add, 1, &R, &SF, &RES),
      ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_RELEASED);
  REQUIRE(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1"), NULL, 0, &R, &RES) == 0);
  RES.status = -1;
  CHECK_EQ(
      atp_amend(E, ATP_STR("r1"), ATP_STR("m11"), NULL, 0, &ok_add, 1, &R, &SF, &RES),
      ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_FULFILLED);
  CHECK_POS("C", "L3", 4, 0, 0, 0);
}

/* --- expiry and retention ------------------------------------------------------ */

static void test_expiry(void) {
  atp_engine_config_t config = et_config(&CLK);
  config.ended_ttl_ms = 60000;
  REQUIRE(setup_with(&config) == 0);
  stock("A", "L1", 10);
  atp_line_req_t line = LL("A", "L1", 3);
  REQUIRE(reserve_lines("r1", &line, 1, 2000) == 0);
  line.qty = 2;
  REQUIRE(reserve_lines("r2", &line, 1, 2000) == 0);
  line.qty = 1;
  REQUIRE(reserve_lines("r3", &line, 1, 2000) == 0);
  CHECK_POS("A", "L1", 10, 0, 6, 0);
  CHECK_EQ(advance_ticking(1000), 0);
  REQUIRE(atp_extend(E, ATP_STR("r2"), 10000, &R, &RES) == 0); /* T0 + 11000 */
  REQUIRE(atp_commit(E, ATP_STR("r3"), ATP_STR(""), &R, &RES) == 0);
  /* Before expires_at r1 is held. */
  CHECK_EQ(advance_ticking(900), 0); /* T0 + 1900 */
  REQUIRE(get_res("r1") == 0);
  CHECK_EQ(R2.status, ATP_STATUS_HELD);
  /* Within 1 s after expires_at it is expired and its units are back. */
  uint32_t expired = advance_ticking(1100); /* T0 + 3000 */
  CHECK_EQ(expired, 1);
  REQUIRE(get_res("r1") == 0);
  CHECK_EQ(R2.status, ATP_STATUS_EXPIRED);
  CHECK_EQ(R2.expires_at_ms, ATP_TIME_NONE);
  CHECK(R2.ended_at_ms > T0 + 2000 - 1 && R2.ended_at_ms <= T0 + 3000);
  CHECK_LINE(&R2, "A", "L1", 3, 0, 3); /* expired units count as released */
  int64_t ended_r1 = R2.ended_at_ms;
  CHECK_POS("A", "L1", 10, 0, 2, 1);
  REQUIRE(get_res("r2") == 0);
  CHECK_EQ(R2.status, ATP_STATUS_HELD);
  REQUIRE(get_res("r3") == 0);
  CHECK_EQ(R2.status, ATP_STATUS_COMMITTED);
  /* Expired: every action conflicts, a replay of the reserve is a replay. */
  RES.status = -1;
  CHECK_EQ(atp_commit(E, ATP_STR("r1"), ATP_STR(""), &R, &RES), ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_EXPIRED);
  CHECK_EQ(atp_extend(E, ATP_STR("r1"), 5000, &R, &RES), ATP_ECONFLICT);
  atp_line_req_t again = LL("A", "L1", 3);
  REQUIRE(reserve_lines("r1", &again, 1, 2000) == 0);
  CHECK(R.replayed);
  CHECK_EQ(R.status, ATP_STATUS_EXPIRED);
  CHECK_POS("A", "L1", 10, 0, 2, 1);
  /* r2 was extended to T0 + 11000. */
  CHECK_EQ(advance_ticking(7900), 0); /* T0 + 10900 */
  REQUIRE(get_res("r2") == 0);
  CHECK_EQ(R2.status, ATP_STATUS_HELD);
  CHECK_EQ(advance_ticking(1100), 1); /* T0 + 12000 */
  REQUIRE(get_res("r2") == 0);
  CHECK_EQ(R2.status, ATP_STATUS_EXPIRED);
  CHECK_POS("A", "L1", 10, 0, 0, 1);
  atp_engine_stats_t st;
  atp_engine_stats(E, &st);
  CHECK_EQ(st.expirations, 2);
  CHECK_EQ(st.reservations_by_status[ATP_STATUS_EXPIRED], 2);
  CHECK_EQ(st.reservations_by_status[ATP_STATUS_COMMITTED], 1);
  /* One tick after a long jump expires everything due. */
  line = LL("A", "L1", 4);
  REQUIRE(reserve_lines("r4", &line, 1, ATP_TTL_MS_MIN) == 0);
  line.qty = 1;
  REQUIRE(reserve_lines("r5", &line, 1, 3000) == 0);
  advance(10000);
  CHECK_EQ(atp_engine_tick(E), 2);
  CHECK_POS("A", "L1", 10, 0, 0, 1);
  /* Retention: r1 stays readable for ended_ttl_ms after it ended... */
  int64_t until = ended_r1 + 60000 - 1000 - now();
  REQUIRE(until > 0);
  advance_ticking(until);
  CHECK_EQ(get_res("r1"), 0);
  /* ...and is purged after it. */
  advance_ticking(2000);
  CHECK_EQ(get_res("r1"), ATP_ENOTFOUND);
  CHECK_EQ(get_res("r3"), 0); /* committed: kept */
  /* A purged id may be used again. */
  REQUIRE(reserve1("r1", "A", "L1", 1) == 0);
  CHECK(!R.replayed);
  CHECK_EQ(R.status, ATP_STATUS_HELD);
  CHECK_POS("A", "L1", 10, 0, 1, 1);
}

static void test_purge_released_and_fulfilled(void) {
  atp_engine_config_t config = et_config(&CLK);
  config.ended_ttl_ms = 10000;
  REQUIRE(setup_with(&config) == 0);
  stock("A", "L1", 10);
  REQUIRE(reserve1("r1", "A", "L1", 1) == 0);
  REQUIRE(reserve1("r2", "A", "L1", 1) == 0);
  REQUIRE(atp_release(E, ATP_STR("r1"), NULL, 0, &R, &RES) == 0);
  REQUIRE(atp_fulfil(E, ATP_STR("r2"), ATP_STR("f2"), NULL, 0, &R, &RES) == 0);
  advance_ticking(9000);
  CHECK_EQ(get_res("r1"), 0);
  CHECK_EQ(get_res("r2"), 0);
  advance_ticking(2000);
  CHECK_EQ(get_res("r1"), ATP_ENOTFOUND);
  CHECK_EQ(get_res("r2"), ATP_ENOTFOUND);
  CHECK_POS("A", "L1", 9, 0, 0, 0);
  atp_engine_stats_t st;
  atp_engine_stats(E, &st);
  CHECK_EQ(st.reservations_by_status[ATP_STATUS_RELEASED], 0);
  CHECK_EQ(st.reservations_by_status[ATP_STATUS_FULFILLED], 0);
}

static void test_expiry_boundary(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 5);
  atp_line_req_t line = LL("A", "L1", 5);
  REQUIRE(reserve_lines("r1", &line, 1, 5000) == 0);
  int64_t expires_at = R.expires_at_ms;
  /* Tick in 100 ms steps: held strictly before expires_at, expired by +1 s. */
  bool seen_expired = false;
  while (now() < expires_at + 1000) {
    advance(100);
    atp_engine_tick(E);
    REQUIRE(get_res("r1") == 0);
    if (now() < expires_at) CHECK_EQ(R2.status, ATP_STATUS_HELD);
    if (R2.status == ATP_STATUS_EXPIRED) seen_expired = true;
  }
  CHECK(seen_expired);
  CHECK_EQ(R2.status, ATP_STATUS_EXPIRED);
  CHECK_POS("A", "L1", 5, 0, 0, 0);
  /* An expiring reservation's units are reservable again. */
  CHECK_EQ(reserve1("r2", "A", "L1", 5), 0);
}

/* atp_engine_tick "expires held reservations whose expires_at has passed":
 * also on its first call (the first tick after a restart, or a test's). */
static void test_first_tick_expires_overdue(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 5);
  atp_line_req_t line = LL("A", "L1", 5);
  REQUIRE(reserve_lines("r1", &line, 1, ATP_TTL_MS_MIN) == 0);
  advance(5000);
  CHECK_EQ(atp_engine_tick(E), 1);
  REQUIRE(get_res("r1") == 0);
  CHECK_EQ(R2.status, ATP_STATUS_EXPIRED);
  CHECK_POS("A", "L1", 5, 0, 0, 0);
}

/* More reservations queued between two ticks than an inbox's ring holds (one
 * thread: one shard, one ring): the rest go on the ring's overflow chain, and
 * every one of them still expires. Then the ring, read to its end, is filled
 * again from its first slot, and those expire too. */
static void expire_all(uint32_t n, const char *prefix, int64_t on_hand) {
  char id[32];
  for (uint32_t i = 0; i < n; i++) {
    snprintf(id, sizeof id, "%s%u", prefix, i);
    atp_line_req_t line = LL("A", "L1", 1);
    if (reserve_lines(id, &line, 1, ATP_TTL_MS_MIN) != 0) {
      CHECK(!"a reservation was refused");
      return;
    }
  }
  CHECK_POS("A", "L1", on_hand, 0, n, 0);
  CHECK_EQ(advance_ticking(ATP_TTL_MS_MIN + 1000), n);
  CHECK_POS("A", "L1", on_hand, 0, 0, 0);
  snprintf(id, sizeof id, "%s%u", prefix, n - 1);
  REQUIRE(get_res(id) == 0);
  CHECK_EQ(R2.status, ATP_STATUS_EXPIRED);
}

static void test_expiry_inbox_overflow_and_wrap(void) {
  uint32_t n = ATP_INBOX_RING + 1000;
  atp_engine_config_t config = et_config(&CLK);
  config.reservations_max = 2 * n;
  REQUIRE(setup_with(&config) == 0);
  atp_engine_tick(E);
  stock("A", "L1", n);
  expire_all(n, "r", n);
  expire_all(3000, "s", n);
}

/* --- change hook and replay ---------------------------------------------------- */

typedef struct {
  atp_change_t *records;
  uint32_t count;
} rec_group_t;

typedef struct {
  rec_group_t *groups;
  size_t count, cap;
  void **allocs; /* everything malloc'd for the copies */
  size_t alloc_count, alloc_cap;
  int bad_records; /* a record with an unknown kind or an empty group */
} rec_log_t;

static rec_log_t LOG;

static void *log_alloc(size_t bytes) {
  if (LOG.alloc_count == LOG.alloc_cap) {
    LOG.alloc_cap = LOG.alloc_cap ? LOG.alloc_cap * 2 : 256;
    LOG.allocs = realloc(LOG.allocs, LOG.alloc_cap * sizeof *LOG.allocs);
  }
  void *p = calloc(1, bytes ? bytes : 1);
  LOG.allocs[LOG.alloc_count++] = p;
  return p;
}

static atp_str_t log_str(atp_str_t s) {
  char *copy = log_alloc((size_t)s.len + 1);
  if (s.len) memcpy(copy, s.ptr, s.len);
  return (atp_str_t){copy, s.len};
}

static void log_copy(atp_change_t *dst, const atp_change_t *src) {
  *dst = *src;
  dst->cause_id = log_str(src->cause_id);
  switch (src->kind) {
    case ATP_CHANGE_POSITION:
      dst->u.position.sku = log_str(src->u.position.sku);
      dst->u.position.location = log_str(src->u.position.location);
      break;
    case ATP_CHANGE_RESERVATION: {
      atp_reservation_t *r = log_alloc(sizeof *r);
      *r = *src->u.reservation;
      r->id = log_str(r->id);
      r->order_ref = log_str(r->order_ref);
      r->order_id = log_str(r->order_id);
      r->channel = log_str(r->channel);
      r->customer_id = log_str(r->customer_id);
      for (uint32_t i = 0; i < r->line_count && i < ATP_RESERVATION_POSITIONS_MAX;
           i++) {
        r->lines[i].sku = log_str(r->lines[i].sku);
        r->lines[i].location = log_str(r->lines[i].location);
      }
      dst->u.reservation = r;
      break;
    }
    case ATP_CHANGE_GROUP: {
      uint32_t n = src->u.group.location_count;
      atp_str_t *locs = log_alloc(sizeof *locs * n);
      for (uint32_t i = 0; i < n; i++) locs[i] = log_str(src->u.group.locations[i]);
      dst->u.group.name = log_str(src->u.group.name);
      dst->u.group.locations = locs;
      break;
    }
    case ATP_CHANGE_IDEMPOTENCY:
      dst->u.idem.id = log_str(src->u.idem.id);
      dst->u.idem.position.sku = log_str(src->u.idem.position.sku);
      dst->u.idem.position.location = log_str(src->u.idem.position.location);
      dst->u.idem.reservation_id = log_str(src->u.idem.reservation_id);
      break;
    default:
      LOG.bad_records++;
  }
}

static void log_hook(void *ctx, const atp_change_t *records, uint32_t n) {
  (void)ctx;
  if (n == 0) {
    LOG.bad_records++;
    return;
  }
  if (LOG.count == LOG.cap) {
    LOG.cap = LOG.cap ? LOG.cap * 2 : 64;
    LOG.groups = realloc(LOG.groups, LOG.cap * sizeof *LOG.groups);
  }
  atp_change_t *copy = log_alloc(sizeof *copy * n);
  for (uint32_t i = 0; i < n; i++) log_copy(&copy[i], &records[i]);
  LOG.groups[LOG.count++] = (rec_group_t){copy, n};
}

static void log_free(void) {
  for (size_t i = 0; i < LOG.alloc_count; i++) free(LOG.allocs[i]);
  free(LOG.allocs);
  free(LOG.groups);
  memset(&LOG, 0, sizeof LOG);
}

/* Runs call; checks it succeeded and produced (or not) hook groups. */
#define HOOKED(call)                   \
  do {                                 \
    size_t hooked_before_ = LOG.count; \
    CHECK_EQ((call), 0);               \
    CHECK(LOG.count > hooked_before_); \
  } while (0)
#define SILENT(call, err)                \
  do {                                   \
    size_t silent_before_ = LOG.count;   \
    CHECK_EQ((call), (err));             \
    CHECK_EQ(LOG.count, silent_before_); \
  } while (0)

static bool positions_equal(const atp_position_t *a, const atp_position_t *b) {
  return et_str_eq(a->sku, b->sku) && et_str_eq(a->location, b->location) &&
         a->on_hand == b->on_hand && a->safety_stock == b->safety_stock &&
         a->reserved == b->reserved && a->committed == b->committed &&
         a->available == b->available && a->shortfall == b->shortfall &&
         a->counted_at_ms == b->counted_at_ms && a->version == b->version;
}

static bool reservations_equal(const atp_reservation_t *a, const atp_reservation_t *b) {
  if (!et_str_eq(a->id, b->id) || a->status != b->status ||
      a->created_at_ms != b->created_at_ms || a->expires_at_ms != b->expires_at_ms ||
      a->ttl_ms != b->ttl_ms || a->ended_at_ms != b->ended_at_ms ||
      !et_str_eq(a->order_ref, b->order_ref) || !et_str_eq(a->order_id, b->order_id) ||
      !et_str_eq(a->channel, b->channel) ||
      !et_str_eq(a->customer_id, b->customer_id) || a->line_count != b->line_count)
    return false;
  for (uint32_t i = 0; i < a->line_count; i++) {
    const atp_res_line_t *x = &a->lines[i], *y = &b->lines[i];
    if (!et_str_eq(x->sku, y->sku) || !et_str_eq(x->location, y->location) ||
        x->qty != y->qty || x->fulfilled != y->fulfilled || x->released != y->released)
      return false;
  }
  return true;
}

static void test_change_hook_replay(void) {
  log_free();
  atp_engine_config_t config = et_config(&CLK);
  config.ended_ttl_ms = 30000;
  config.on_change = log_hook;
  REQUIRE(setup_with(&config) == 0);

  /* A scenario touching every kind of mutation. */
  atp_str_t locs[3] = {ATP_STR("L1"), ATP_STR("L2"), ATP_STR("L3")};
  HOOKED(atp_group_put(E, ATP_STR("G"), locs, 3, &RES));
  HOOKED(atp_group_put(E, ATP_STR("TMP"), locs, 1, &RES));
  HOOKED(atp_group_delete(E, ATP_STR("TMP"), &RES));
  atp_position_t pout;
  HOOKED(atp_safety_stock_set(E, ATP_STR("A"), ATP_STR("L1"), 2, &pout, &RES));
  HOOKED(adjust("a1", "A", "L1", 20));
  HOOKED(adjust("a2", "A", "L2", 4));
  HOOKED(adjust("a3", "B", "L3", 9));
  HOOKED(adjust_at("a4", "A", "L3", 6, now() - 5000, NULL));
  advance(1000);
  HOOKED(count_at("c1", "A", "L3", 3, now() - 3000, NULL)); /* a4 absorbed-range */
  atp_adjust_res_t ar;
  HOOKED(adjust_at("a5", "A", "L3", 5, now() - 4000, &ar)); /* absorbed */
  CHECK(ar.absorbed);
  atp_count_res_t cr;
  HOOKED(count_at("c2", "A", "L3", 100, now() - 9000, &cr)); /* stale */
  CHECK(cr.stale);
  atp_line_req_t l1[2] = {LL("A", "L1", 5), LL("B", "L3", 2)};
  atp_reserve_req_t req = res_req("r1", l1, 2, 20000);
  req.order_ref = ATP_STR("cart-1");
  req.channel = ATP_STR("web");
  req.customer_id = ATP_STR("c-1");
  HOOKED(atp_reserve(E, &req, &R, &SF, &RES));
  atp_line_req_t lg = LG("A", "G", 5, true); /* L1 13 avail -> whole at L1 */
  HOOKED(reserve_lines("r2", &lg, 1, 0));
  lg = LG("A", "G", 20, true); /* L1 8, L2 4, L3 3+... split */
  int rc = reserve_lines("r3", &lg, 1, 0);
  CHECK(rc == 0 || rc == ATP_EINSUFFICIENT);
  lg = LG("A", "G", 10, true);
  HOOKED(reserve_lines("r4", &lg, 1, 5000));
  HOOKED(atp_commit(E, ATP_STR("r1"), ATP_STR("ord-1"), &R, &RES));
  atp_qty_line_t q1 = QL("A", "L1", 2);
  HOOKED(atp_release(E, ATP_STR("r1"), &q1, 1, &R, &RES));
  HOOKED(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1"), &q1, 1, &R, &RES));
  HOOKED(atp_extend(E, ATP_STR("r2"), 60000, &R, &RES));
  atp_qty_line_t q2 = QL("A", "L1", 1);
  atp_line_req_t add = LL("B", "L3", 1);
  HOOKED(atp_amend(E, ATP_STR("r2"), ATP_STR("m1"), &q2, 1, &add, 1, &R, &SF, &RES));
  HOOKED(reserve1("r5", "B", "L3", 1));
  HOOKED(atp_release(E, ATP_STR("r5"), NULL, 0, &R, &RES));
  HOOKED(reserve1("r6", "B", "L3", 1));
  HOOKED(atp_fulfil(E, ATP_STR("r6"), ATP_STR("f6"), NULL, 0, &R, &RES));
  HOOKED(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f7"), NULL, 0, &R, &RES));
  /* Failures produce no records. */
  SILENT(reserve1("r7", "A", "L1", 1000), ATP_EINSUFFICIENT);
  SILENT(adjust("a0", "A", "L1", 0), ATP_EBADREQ);
  SILENT(atp_commit(E, ATP_STR("r5"), ATP_STR(""), &R, &RES), ATP_ECONFLICT);
  SILENT(adjust("a1", "A", "L1", 21), ATP_EIDEMPOTENCY);
  /* Expiry (r4, ttl 5 s) and purge (r5, r6 after 30 s) by the ticker. */
  size_t before = LOG.count;
  uint32_t expired = advance_ticking(6000);
  CHECK(expired >= 1);
  CHECK(LOG.count > before);
  REQUIRE(get_res("r4") == 0);
  CHECK_EQ(R2.status, ATP_STATUS_EXPIRED);
  before = LOG.count;
  advance_ticking(30000);
  CHECK(LOG.count > before); /* purges are changes too */
  CHECK_EQ(get_res("r5"), ATP_ENOTFOUND);
  HOOKED(reserve1("r8", "A", "L2", 1));
  HOOKED(adjust("a6", "B", "L3", -1));
  CHECK_EQ(LOG.bad_records, 0);

  /* Position records carry the version the position had after the change. */
  static const char *skus[] = {"A", "B"};
  static const char *locations[] = {"L1", "L2", "L3"};
  for (int s = 0; s < 2; s++)
    for (int l = 0; l < 3; l++) {
      uint64_t last = 0;
      for (size_t g = 0; g < LOG.count; g++)
        for (uint32_t i = 0; i < LOG.groups[g].count; i++) {
          const atp_change_t *c = &LOG.groups[g].records[i];
          if (c->kind == ATP_CHANGE_POSITION && et_str_is(c->u.position.sku, skus[s]) &&
              et_str_is(c->u.position.location, locations[l])) {
            CHECK(c->u.position.version >= last);
            last = c->u.position.version;
          }
        }
      CHECK_EQ(last, ver(skus[s], locations[l]));
    }

  /* Replay into a fresh engine. */
  atp_engine_t *primary = E;
  E = NULL;
  atp_engine_config_t config2 = et_config(&CLK);
  config2.ended_ttl_ms = 30000;
  atp_engine_t *replica = NULL;
  REQUIRE(atp_engine_create(&config2, &replica) == 0);
  for (size_t g = 0; g < LOG.count; g++)
    CHECK_EQ(atp_engine_apply(replica, LOG.groups[g].records, LOG.groups[g].count), 0);
  /* After recovery the server's ticker runs; it must find nothing to expire
   * (expiries were recorded) and at most purge what is past retention. */
  CHECK_EQ(atp_engine_tick(replica), 0);
  advance(100);
  CHECK_EQ(atp_engine_tick(replica), 0);

  for (int s = 0; s < 2; s++)
    for (int l = 0; l < 3; l++) {
      atp_position_t a, b;
      memset(&a, 0, sizeof a);
      memset(&b, 0, sizeof b);
      int ra = atp_position_get(primary, et_str(skus[s]), et_str(locations[l]), &a);
      int rb = atp_position_get(replica, et_str(skus[s]), et_str(locations[l]), &b);
      CHECK_EQ(ra, rb);
      if (ra == 0 && rb == 0 && !positions_equal(&a, &b)) {
        fprintf(stderr, "  position %s@%s differs after replay\n", skus[s],
                locations[l]);
        CHECK(0);
      }
    }
  for (int s = 0; s < 2; s++) {
    atp_position_t la[4], lb[4];
    uint32_t na = 0, nb = 0;
    CHECK_EQ(atp_sku_positions(primary, et_str(skus[s]), la, 4, &na), 0);
    CHECK_EQ(atp_sku_positions(replica, et_str(skus[s]), lb, 4, &nb), 0);
    CHECK_EQ(na, nb);
  }
  static const char *ids[] = {"r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"};
  for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
    int ra = atp_reservation_get(primary, et_str(ids[i]), &R);
    int rb = atp_reservation_get(replica, et_str(ids[i]), &R2);
    CHECK_EQ(ra, rb);
    if (ra == 0 && rb == 0 && !reservations_equal(&R, &R2)) {
      fprintf(stderr, "  reservation %s differs after replay\n", ids[i]);
      CHECK(0);
    }
  }
  atp_str_t out[4];
  uint32_t n = 0;
  CHECK_EQ(atp_group_get(replica, ATP_STR("G"), out, 4, &n), 0);
  CHECK_EQ(n, 3);
  CHECK(n == 3 && et_str_is(out[2], "L3"));
  CHECK_EQ(atp_group_get(replica, ATP_STR("TMP"), out, 4, &n), ATP_ENOTFOUND);
  /* Idempotency ids survive the replay. */
  atp_adjust_req_t areq = adj_req("a1", "A", "L1", 20);
  atp_adjust_res_t ares;
  CHECK_EQ(atp_adjust(replica, &areq, &ares, &RES), 0);
  CHECK(ares.replayed);
  areq.delta = 21;
  CHECK_EQ(atp_adjust(replica, &areq, &ares, &RES), ATP_EIDEMPOTENCY);
  atp_count_res_t cres;
  atp_count_req_t creq = count_req("c2", "A", "L3", 100, T0 + 1000 - 9000);
  CHECK_EQ(atp_count(replica, &creq, &cres, &RES), 0);
  CHECK(cres.replayed && cres.stale);
  CHECK_EQ(
      atp_amend(replica, ATP_STR("r2"), ATP_STR("m1"), &q2, 1, &add, 1, &R, &SF, &RES),
      0);
  CHECK(R.replayed);
  atp_engine_stats_t sa, sb;
  atp_engine_stats(primary, &sa);
  atp_engine_stats(replica, &sb);
  CHECK_EQ(sa.positions, sb.positions);
  CHECK_EQ(sa.groups, sb.groups);
  for (int i = 0; i < 5; i++)
    CHECK_EQ(sa.reservations_by_status[i], sb.reservations_by_status[i]);

  atp_engine_destroy(replica);
  E = primary;
  log_free();
}

static void test_apply_rejects_malformed(void) {
  REQUIRE(setup() == 0);
  atp_change_t bad;
  memset(&bad, 0, sizeof bad);
  bad.kind = (atp_change_kind_t)99;
  CHECK_EQ(atp_engine_apply(E, &bad, 1), ATP_EBADREQ);
  memset(&bad, 0, sizeof bad);
  bad.kind = ATP_CHANGE_POSITION;
  bad.cause = ATP_CAUSE_ADJUST;
  bad.u.position.sku = ATP_STR(""); /* empty key */
  bad.u.position.location = ATP_STR("L1");
  bad.u.position.counted_at_ms = ATP_TIME_NONE;
  bad.u.position.occurred_at_ms = ATP_TIME_NONE;
  CHECK_EQ(atp_engine_apply(E, &bad, 1), ATP_EBADREQ);
}

/* --- hardening: shortfalls, idempotency namespaces, follow-up keys ------------- */

/* A group line without allow_split goes whole to one location, so its
 * shortfall reports the best single location, and what a split would have. */
static void test_group_shortfall_best_location(void) {
  REQUIRE(setup() == 0);
  atp_str_t locs[3] = {ATP_STR("L1"), ATP_STR("L2"), ATP_STR("L3")};
  REQUIRE(atp_group_put(E, ATP_STR("G"), locs, 3, &RES) == 0);
  stock("S", "L1", 1);
  stock("S", "L2", 3);
  stock("S", "L3", 3);
  atp_line_req_t line = LG("S", "G", 5, false);
  CHECK_EQ(reserve_lines("r1", &line, 1, 0), ATP_EINSUFFICIENT);
  REQUIRE(SF.count == 1);
  CHECK_EQ(SF.items[0].available, 3);
  CHECK(et_str_is(SF.items[0].best_location, "L2")); /* first of the tie */
  CHECK_EQ(SF.items[0].split_available, 7);          /* a split would fill it */
  CHECK(SF.items[0].location.len == 0 && et_str_is(SF.items[0].group, "G"));
  line.qty = 8; /* not even a split fills 8 */
  CHECK_EQ(reserve_lines("r1", &line, 1, 0), ATP_EINSUFFICIENT);
  CHECK_EQ(SF.items[0].available, 3);
  CHECK_EQ(SF.items[0].split_available, 7);
  /* No location of the group has any: no best location. */
  line = LG("T", "G", 1, false);
  CHECK_EQ(reserve_lines("r1", &line, 1, 0), ATP_EINSUFFICIENT);
  CHECK_EQ(SF.items[0].available, 0);
  CHECK_EQ(SF.items[0].best_location.len, 0);
  CHECK_EQ(SF.items[0].split_available, 0);
  /* A location line is unchanged. */
  atp_line_req_t ll = LL("S", "L1", 2);
  CHECK_EQ(reserve_lines("r1", &ll, 1, 0), ATP_EINSUFFICIENT);
  CHECK_EQ(SF.items[0].available, 1);
  CHECK_EQ(SF.items[0].split_available, -1);
  CHECK_EQ(SF.items[0].best_location.len, 0);
  CHECK_POS("S", "L2", 3, 0, 0, 0);
}

/* Adjustments and counts share one id namespace; reservation ids and the
 * follow-up keys have their own. */
static void test_idempotency_namespaces(void) {
  REQUIRE(setup() == 0);
  REQUIRE(adjust("x1", "A", "L1", 10) == 0);
  uint64_t v = ver("A", "L1");
  CHECK_EQ(count_at("x1", "A", "L1", 3, now() - 1000, NULL), ATP_EIDEMPOTENCY);
  CHECK(strcmp(RES.field, "id") == 0);
  CHECK(strstr(RES.message, "adjustment") != NULL);
  CHECK_POS("A", "L1", 10, 0, 0, 0);
  CHECK_EQ(ver("A", "L1"), v);
  /* Even a count naming another position: the id is what is checked. */
  CHECK_EQ(count_at("x1", "B", "L9", 3, now() - 1000, NULL), ATP_EIDEMPOTENCY);
  atp_position_t p;
  CHECK_EQ(pos_rc("B", "L9", &p), ATP_ENOTFOUND);
  advance(2000); /* the count below is after x1 */
  REQUIRE(count_at("c1", "A", "L1", 4, now() - 1000, NULL) == 0);
  CHECK_EQ(adjust("c1", "A", "L1", 1), ATP_EIDEMPOTENCY);
  CHECK(strstr(RES.message, "count") != NULL);
  CHECK_POS("A", "L1", 4, 0, 0, 0);
  /* Both still replay under their own kind. */
  atp_adjust_res_t ar;
  CHECK_EQ(adjust_at("x1", "A", "L1", 10, ATP_TIME_NONE, &ar), 0);
  CHECK(ar.replayed);
  atp_count_res_t cr;
  CHECK_EQ(count_at("c1", "A", "L1", 4, now() - 1000, &cr), 0);
  CHECK(cr.replayed);
  /* A reservation may carry an adjustment's id, and a follow-up key may equal
   * either: other namespaces. */
  REQUIRE(reserve1("x1", "A", "L1", 1) == 0);
  CHECK(!R.replayed);
  REQUIRE(atp_release_keyed(E, ATP_STR("x1"), ATP_STR("x1"), NULL, 0, &R, &RES) == 0);
  CHECK(!R.replayed && R.status == ATP_STATUS_RELEASED);
  REQUIRE(reserve1("r2", "A", "L1", 1) == 0);
  REQUIRE(atp_fulfil(E, ATP_STR("r2"), ATP_STR("x1"), NULL, 0, &R, &RES) == 0);
  CHECK(!R.replayed && R.status == ATP_STATUS_FULFILLED);
  CHECK_POS("A", "L1", 3, 0, 0, 0);
}

/* release_id: a retried partial release is a replay, not a second release. */
static void test_release_id(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  stock("B", "L1", 10);
  atp_line_req_t l2[2] = {LL("A", "L1", 5), LL("B", "L1", 2)};
  REQUIRE(reserve_lines("r1", l2, 2, 0) == 0);
  atp_qty_line_t q = QL("A", "L1", 2);
  REQUIRE(atp_release_keyed(E, ATP_STR("r1"), ATP_STR("k1"), &q, 1, &R, &RES) == 0);
  CHECK(!R.replayed);
  CHECK_LINE(&R, "A", "L1", 5, 0, 2);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  uint64_t v = ver("A", "L1");
  /* The retry: a replay, nothing moves. */
  REQUIRE(atp_release_keyed(E, ATP_STR("r1"), ATP_STR("k1"), &q, 1, &R, &RES) == 0);
  CHECK(R.replayed);
  CHECK_LINE(&R, "A", "L1", 5, 0, 2);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  CHECK_EQ(ver("A", "L1"), v);
  /* Same key, other content: a mismatch naming the key. */
  atp_qty_line_t q3 = QL("A", "L1", 3);
  CHECK_EQ(atp_release_keyed(E, ATP_STR("r1"), ATP_STR("k1"), &q3, 1, &R, &RES),
           ATP_EIDEMPOTENCY);
  CHECK(strcmp(RES.field, "release_id") == 0);
  CHECK_EQ(atp_release_keyed(E, ATP_STR("r1"), ATP_STR("k1"), NULL, 0, &R, &RES),
           ATP_EIDEMPOTENCY);
  CHECK_POS("A", "L1", 10, 0, 3, 0);
  /* Same key on another reservation: a mismatch too (keys are global). */
  REQUIRE(reserve1("r2", "A", "L1", 1) == 0);
  CHECK_EQ(atp_release_keyed(E, ATP_STR("r2"), ATP_STR("k1"), &q, 1, &R, &RES),
           ATP_EIDEMPOTENCY);
  CHECK_POS("A", "L1", 10, 0, 4, 0);
  /* A refused release leaves the key free. */
  atp_qty_line_t q9 = QL("A", "L1", 9);
  CHECK_EQ(atp_release_keyed(E, ATP_STR("r1"), ATP_STR("k2"), &q9, 1, &R, &RES),
           ATP_ECONFLICT);
  REQUIRE(atp_release_keyed(E, ATP_STR("r1"), ATP_STR("k2"), &q, 1, &R, &RES) == 0);
  CHECK(!R.replayed);
  CHECK_LINE(&R, "A", "L1", 5, 0, 4);
  /* Without a key, the same body releases again (as before). */
  REQUIRE(atp_release(E, ATP_STR("r1"), &q3, 0, &R, &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_RELEASED);
  CHECK_POS("A", "L1", 10, 0, 1, 0);
  CHECK_POS("B", "L1", 10, 0, 0, 0);
  /* Keys are checked like ids. */
  CHECK_EQ(atp_release_keyed(E, ATP_STR("r2"), ATP_STR("a\nb"), NULL, 0, &R, &RES),
           ATP_EBADREQ);
  CHECK(strcmp(RES.field, "release_id") == 0);
  CHECK_POS("A", "L1", 10, 0, 1, 0);
}

/* commit and order_id: the same (or none) is a replay, another is a conflict,
 * and a reservation committed without one takes it. */
static void test_commit_order_id(void) {
  REQUIRE(setup() == 0);
  stock("A", "L1", 10);
  REQUIRE(reserve1("r1", "A", "L1", 2) == 0);
  REQUIRE(atp_commit(E, ATP_STR("r1"), ATP_STR("o-1"), &R, &RES) == 0);
  REQUIRE(atp_commit(E, ATP_STR("r1"), ATP_STR(""), &R, &RES) == 0);
  CHECK(R.replayed && et_str_is(R.order_id, "o-1"));
  REQUIRE(atp_commit(E, ATP_STR("r1"), ATP_STR("o-1"), &R, &RES) == 0);
  CHECK(R.replayed);
  RES.status = -1;
  CHECK_EQ(atp_commit(E, ATP_STR("r1"), ATP_STR("o-2"), &R, &RES), ATP_ECONFLICT);
  CHECK_EQ(RES.status, ATP_STATUS_COMMITTED);
  CHECK(strcmp(RES.field, "order_id") == 0);
  CHECK_EQ(atp_commit(E, ATP_STR("r1"), ATP_STR("o-1x"), &R, &RES), ATP_ECONFLICT);
  REQUIRE(get_res("r1") == 0);
  CHECK(et_str_is(R2.order_id, "o-1"));
  /* Committed by fulfil (held -> committed implicitly): no order_id yet. */
  REQUIRE(reserve1("r2", "A", "L1", 4) == 0);
  atp_qty_line_t q = QL("A", "L1", 1);
  REQUIRE(atp_fulfil(E, ATP_STR("r2"), ATP_STR("f1"), &q, 1, &R, &RES) == 0);
  CHECK_EQ(R.status, ATP_STATUS_COMMITTED);
  CHECK_EQ(R.order_id.len, 0);
  REQUIRE(atp_commit(E, ATP_STR("r2"), ATP_STR(""), &R, &RES) == 0);
  CHECK(R.replayed && R.order_id.len == 0);
  REQUIRE(atp_commit(E, ATP_STR("r2"), ATP_STR("o-9"), &R, &RES) == 0);
  CHECK(!R.replayed);
  CHECK(et_str_is(R.order_id, "o-9"));
  CHECK_LINE(&R, "A", "L1", 4, 1, 0);
  REQUIRE(get_res("r2") == 0);
  CHECK(et_str_is(R2.order_id, "o-9"));
  REQUIRE(atp_commit(E, ATP_STR("r2"), ATP_STR("o-9"), &R, &RES) == 0);
  CHECK(R.replayed);
  CHECK_EQ(atp_commit(E, ATP_STR("r2"), ATP_STR("o-8"), &R, &RES), ATP_ECONFLICT);
  /* Committed by a commit that named none: takes the first one given. */
  REQUIRE(reserve1("r3", "A", "L1", 1) == 0);
  REQUIRE(atp_commit(E, ATP_STR("r3"), ATP_STR(""), &R, &RES) == 0);
  CHECK(!R.replayed && R.order_id.len == 0);
  REQUIRE(atp_commit(E, ATP_STR("r3"), ATP_STR("o-3"), &R, &RES) == 0);
  CHECK(!R.replayed && et_str_is(R.order_id, "o-3"));
  /* Units moved once. */
  CHECK_POS("A", "L1", 9, 0, 0, 2 + 3 + 1);
}

/* Replays: adjustments and counts answer the remembered position (right after
 * the original); every reservation route answers the reservation as it is now. */
static void test_replay_rules(void) {
  REQUIRE(setup() == 0);
  atp_adjust_res_t ar;
  REQUIRE(adjust_at("a1", "A", "L1", 10, ATP_TIME_NONE, &ar) == 0);
  atp_position_t after_a1 = ar.position;
  REQUIRE(adjust("a2", "A", "L1", 5) == 0);
  REQUIRE(adjust_at("a1", "A", "L1", 10, ATP_TIME_NONE, &ar) == 0);
  CHECK(ar.replayed && ar.applied);
  CHECK(positions_equal(&ar.position, &after_a1));
  CHECK_EQ(ar.position.on_hand, 10);
  advance(2000); /* the count below is after a1 and a2 */
  atp_count_res_t cr;
  REQUIRE(count_at("c1", "A", "L1", 20, now() - 1000, &cr) == 0);
  atp_position_t after_c1 = cr.position;
  REQUIRE(adjust("a3", "A", "L1", -3) == 0);
  REQUIRE(count_at("c1", "A", "L1", 20, now() - 1000, &cr) == 0);
  CHECK(cr.replayed && positions_equal(&cr.position, &after_c1));
  CHECK_POS("A", "L1", 17, 0, 0, 0);
  /* reserve, then commit: the reserve replay shows it committed. */
  REQUIRE(reserve1("r1", "A", "L1", 4) == 0);
  REQUIRE(atp_commit(E, ATP_STR("r1"), ATP_STR("o1"), &R, &RES) == 0);
  REQUIRE(reserve1("r1", "A", "L1", 4) == 0);
  CHECK(R.replayed && R.status == ATP_STATUS_COMMITTED);
  /* commit, then a partial fulfil: the commit replay shows the fulfilment. */
  atp_qty_line_t q1 = QL("A", "L1", 1);
  REQUIRE(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1"), &q1, 1, &R, &RES) == 0);
  REQUIRE(atp_commit(E, ATP_STR("r1"), ATP_STR("o1"), &R, &RES) == 0);
  CHECK(R.replayed);
  CHECK_LINE(&R, "A", "L1", 4, 1, 0);
  /* release (keyed), then more happens: the replay shows it all. */
  REQUIRE(atp_release_keyed(E, ATP_STR("r1"), ATP_STR("k1"), &q1, 1, &R, &RES) == 0);
  REQUIRE(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f2"), &q1, 1, &R, &RES) == 0);
  REQUIRE(atp_release_keyed(E, ATP_STR("r1"), ATP_STR("k1"), &q1, 1, &R, &RES) == 0);
  CHECK(R.replayed && R.status == ATP_STATUS_COMMITTED);
  CHECK_LINE(&R, "A", "L1", 4, 2, 1);
  /* fulfil f1 again: the reservation now, after f2. */
  REQUIRE(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1"), &q1, 1, &R, &RES) == 0);
  CHECK(R.replayed);
  CHECK_LINE(&R, "A", "L1", 4, 2, 1);
  /* amend, then release the rest: the amend replay shows it released. */
  REQUIRE(reserve1("r2", "A", "L1", 2) == 0);
  atp_line_req_t add = LL("A", "L1", 1);
  REQUIRE(atp_amend(E, ATP_STR("r2"), ATP_STR("m1"), NULL, 0, &add, 1, &R, &SF, &RES) ==
          0);
  CHECK_LINE(&R, "A", "L1", 3, 0, 0);
  REQUIRE(atp_release(E, ATP_STR("r2"), NULL, 0, &R, &RES) == 0);
  REQUIRE(atp_amend(E, ATP_STR("r2"), ATP_STR("m1"), NULL, 0, &add, 1, &R, &SF, &RES) ==
          0);
  CHECK(R.replayed && R.status == ATP_STATUS_RELEASED);
  CHECK_LINE(&R, "A", "L1", 3, 0, 3);
  CHECK_POS("A", "L1", 15, 0, 0, 1);
}

/* The change records carry the release key and a later order_id, so a replay
 * of the records rebuilds both. */
static void test_change_records_keys(void) {
  log_free();
  atp_engine_config_t config = et_config(&CLK);
  config.on_change = log_hook;
  REQUIRE(setup_with(&config) == 0);
  HOOKED(adjust("a1", "A", "L1", 10));
  HOOKED(reserve1("r1", "A", "L1", 5));
  atp_qty_line_t q = QL("A", "L1", 2);
  HOOKED(atp_release_keyed(E, ATP_STR("r1"), ATP_STR("k1"), &q, 1, &R, &RES));
  SILENT(atp_release_keyed(E, ATP_STR("r1"), ATP_STR("k1"), &q, 1, &R, &RES), 0);
  HOOKED(atp_fulfil(E, ATP_STR("r1"), ATP_STR("f1"), &q, 1, &R, &RES));
  HOOKED(atp_commit(E, ATP_STR("r1"), ATP_STR("o-1"), &R, &RES));
  SILENT(atp_commit(E, ATP_STR("r1"), ATP_STR("o-2"), &R, &RES), ATP_ECONFLICT);
  SILENT(atp_commit(E, ATP_STR("r1"), ATP_STR("o-1"), &R, &RES), 0);
  bool keyed = false;
  for (size_t g = 0; g < LOG.count; g++)
    for (uint32_t i = 0; i < LOG.groups[g].count; i++) {
      const atp_change_t *c = &LOG.groups[g].records[i];
      if (c->kind == ATP_CHANGE_IDEMPOTENCY && c->u.idem.kind == ATP_IDEM_RELEASE) {
        keyed = true;
        CHECK(et_str_is(c->u.idem.id, "k1"));
        CHECK(et_str_is(c->u.idem.reservation_id, "r1"));
        CHECK_EQ(c->cause, ATP_CAUSE_RELEASE);
      }
    }
  CHECK(keyed);
  atp_engine_t *primary = E;
  atp_engine_config_t config2 = et_config(&CLK);
  atp_engine_t *replica = NULL;
  REQUIRE(atp_engine_create(&config2, &replica) == 0);
  for (size_t g = 0; g < LOG.count; g++)
    CHECK_EQ(atp_engine_apply(replica, LOG.groups[g].records, LOG.groups[g].count), 0);
  REQUIRE(atp_reservation_get(primary, ATP_STR("r1"), &R) == 0);
  REQUIRE(atp_reservation_get(replica, ATP_STR("r1"), &R2) == 0);
  CHECK(reservations_equal(&R, &R2));
  CHECK(et_str_is(R2.order_id, "o-1"));
  /* In the replica the key is a replay and the order_id conflicts as well. */
  CHECK_EQ(atp_release_keyed(replica, ATP_STR("r1"), ATP_STR("k1"), &q, 1, &R2, &RES),
           0);
  CHECK(R2.replayed);
  CHECK_LINE(&R2, "A", "L1", 5, 2, 2);
  CHECK_EQ(atp_commit(replica, ATP_STR("r1"), ATP_STR("o-2"), &R2, &RES),
           ATP_ECONFLICT);
  /* And the shared namespace holds there too. */
  atp_count_req_t creq = count_req("a1", "A", "L1", 1, now() - 1000);
  atp_count_res_t cres;
  CHECK_EQ(atp_count(replica, &creq, &cres, &RES), ATP_EIDEMPOTENCY);
  atp_engine_destroy(replica);
  log_free();
}

/* --- issue 9: no times from the future, no ghost positions ------------------ */

static uint64_t position_count(void) {
  atp_engine_stats_t st;
  atp_engine_stats(E, &st);
  return st.positions;
}

static void test_future_times_refused(void) {
  REQUIRE(setup() == 0);
  REQUIRE(adjust("a0", "A", "L1", 10) == 0);
  int64_t skew = ATP_CLOCK_SKEW_MS_DEFAULT;
  uint64_t v = ver("A", "L1");
  /* One past the default skew: refused naming the field, nothing moves. */
  CHECK_EQ(adjust_at("a1", "A", "L1", -3, now() + skew + 1, NULL), ATP_EBADREQ);
  CHECK(strcmp(RES.field, "occurred_at") == 0);
  CHECK_EQ(count_at("c1", "A", "L1", 99, now() + skew + 1, NULL), ATP_EBADREQ);
  CHECK(strcmp(RES.field, "counted_at") == 0);
  CHECK_EQ(count_at("c2", "B", "L1", 99, now() + 365LL * 86400000, NULL), ATP_EBADREQ);
  CHECK_POS("A", "L1", 10, 0, 0, 0);
  CHECK_EQ(ver("A", "L1"), v);
  CHECK_EQ(pos("A", "L1").counted_at_ms, ATP_TIME_NONE);
  atp_position_t none;
  CHECK_EQ(pos_rc("B", "L1", &none), ATP_ENOTFOUND);
  /* The ids were not consumed; exactly at the skew is accepted. */
  CHECK_EQ(adjust_at("a1", "A", "L1", -3, now() + skew, NULL), 0);
  CHECK_EQ(count_at("c1", "A", "L1", 4, now() + skew, NULL), 0);
  CHECK_POS("A", "L1", 4, 0, 0, 0);

  /* A configured skew replaces the default. */
  atp_engine_config_t config = et_config(&CLK);
  config.clock_skew_ms = 1000;
  REQUIRE(setup_with(&config) == 0);
  CHECK_EQ(adjust_at("a1", "A", "L1", 5, now() + 1001, NULL), ATP_EBADREQ);
  CHECK_EQ(adjust_at("a1", "A", "L1", 5, now() + 1000, NULL), 0);
  CHECK_EQ(count_at("c1", "A", "L1", 5, now() + 5000, NULL), ATP_EBADREQ);
  CHECK_EQ(count_at("c1", "A", "L1", 6, now() + 1000, NULL), 0);
  CHECK_POS("A", "L1", 6, 0, 0, 0);
}

static void test_change_from_unknown_position(void) {
  REQUIRE(setup() == 0);
  atp_adjust_req_t req = adj_req("a1", "A", "L1", 5);
  req.has_change_from = true;
  req.change_from = 3;
  atp_adjust_res_t out;
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), ATP_ECONFLICT);
  CHECK(strcmp(RES.field, "change_from") == 0);
  CHECK_EQ(RES.current_on_hand, 0);
  CHECK_EQ(out.position.version, 0);
  CHECK_EQ(out.position.on_hand, 0);
  CHECK_EQ(out.position.counted_at_ms, ATP_TIME_NONE);
  CHECK(et_str_is(out.position.sku, "A") && et_str_is(out.position.location, "L1"));
  atp_count_req_t creq = count_req("c1", "A", "L1", 7, now() - 10);
  creq.has_change_from = true;
  creq.change_from = 2;
  atp_count_res_t cout;
  CHECK_EQ(atp_count(E, &creq, &cout, &RES), ATP_ECONFLICT);
  CHECK_EQ(cout.position.version, 0);
  /* Nothing was created: no position, none in the SKU's listing. */
  atp_position_t none;
  CHECK_EQ(pos_rc("A", "L1", &none), ATP_ENOTFOUND);
  CHECK_EQ(position_count(), 0);
  uint32_t n = 99;
  atp_position_t listing[2];
  CHECK_EQ(atp_sku_positions(E, et_str("A"), listing, 2, &n), 0);
  CHECK_EQ(n, 0);
  /* The ids stay free, and change_from 0 matches a position never seen. */
  req.change_from = 0;
  CHECK_EQ(atp_adjust(E, &req, &out, &RES), 0);
  CHECK(out.applied && !out.replayed);
  CHECK_POS("A", "L1", 5, 0, 0, 0);
  creq.sku = ATP_STR("B");
  creq.change_from = 0;
  CHECK_EQ(atp_count(E, &creq, &cout, &RES), 0);
  CHECK(cout.applied && !cout.replayed);
  CHECK_POS("B", "L1", 7, 0, 0, 0);
  CHECK_EQ(position_count(), 2);
}

/* --- export and import (snapshots) ---------------------------------------------- */

/* The snapshot's records, copied like the hook's (their memory is LOG's). */
static rec_group_t *SNAP;
static size_t SNAP_COUNT, SNAP_CAP;
static int SNAP_CALLS;

/* Changes made while the export walks: after the first batch of positions
 * (position P0 copied, P2999 not yet) and while reservations are copied. */
static int export_during(void) {
  char id[32];
  snprintf(id, sizeof id, "dur-%d", SNAP_CALLS);
  if (SNAP_CALLS == 1) {
    CHECK_EQ(adjust("dur-a0", "P0", "L", 5), 0);    /* after its copy */
    CHECK_EQ(adjust("dur-a1", "P2999", "L", 7), 0); /* before its copy */
    CHECK_EQ(adjust_at("dur-a2", "P2999", "L", 3, now() - 500, NULL), 0);
    atp_line_req_t two[2] = {LL("P0", "L", 2), LL("P2999", "L", 4)};
    CHECK_EQ(reserve_lines("dur-r", two, 2, 0), 0);
    CHECK_EQ(adjust("dur-a3", "NEW", "L", 9), 0); /* a position born mid-walk */
    atp_str_t locs[2] = {ATP_STR("L"), ATP_STR("L2")};
    CHECK_EQ(atp_group_put(E, ATP_STR("G"), locs, 2, &RES), 0);
  }
  if (SNAP_CALLS == 8) { /* among the reservations */
    CHECK_EQ(atp_commit(E, ATP_STR("x1"), ATP_STR("o-1"), &R, &RES), 0);
    CHECK_EQ(atp_release(E, ATP_STR("x2"), NULL, 0, &R, &RES), 0);
    CHECK_EQ(reserve1("y9", "P5", "L", 1), 0);
  }
  return 0;
}

static int export_collect(void *ctx, const atp_change_t *records, uint32_t n) {
  (void)ctx;
  if (SNAP_COUNT == SNAP_CAP) {
    SNAP_CAP = SNAP_CAP ? SNAP_CAP * 2 : 64;
    SNAP = realloc(SNAP, SNAP_CAP * sizeof *SNAP);
  }
  atp_change_t *copy = log_alloc(sizeof *copy * n);
  for (uint32_t i = 0; i < n; i++) {
    CHECK(records[i].cause == ATP_CAUSE_SNAPSHOT ||
          records[i].cause == ATP_CAUSE_HISTORY);
    log_copy(&copy[i], &records[i]);
  }
  SNAP[SNAP_COUNT++] = (rec_group_t){copy, n};
  SNAP_CALLS++;
  return export_during();
}

static bool histories_equal(atp_engine_t *a, atp_engine_t *b, const char *sku) {
  uint32_t ia = atp__position_find_str(a, et_str(sku), ATP_STR("L"));
  uint32_t ib = atp__position_find_str(b, et_str(sku), ATP_STR("L"));
  if (ia == UINT32_MAX || ib == UINT32_MAX) return false;
  const atp_history_t *ha = a->pos_cold[ia].history, *hb = b->pos_cold[ib].history;
  if (!ha || !hb) return ha == hb;
  if (ha->count != hb->count || ha->floor_ms != hb->floor_ms) return false;
  for (uint32_t i = 0; i < ha->count; i++) {
    const atp_history_entry_t *x = &ha->entries[(ha->head + i) % ha->cap];
    const atp_history_entry_t *y = &hb->entries[(hb->head + i) % hb->cap];
    if (x->occurred_at_ms != y->occurred_at_ms || x->delta != y->delta) return false;
  }
  return true;
}

/* A snapshot taken while changes run, imported into an empty engine, then the
 * journal from before the walk replayed over it: the same state as the
 * primary's, field by field. Changes the walk caught are in both, so the
 * import must skip them by version; changes it missed only in the journal. */
static void test_export_import(void) {
  log_free();
  SNAP_COUNT = 0;
  SNAP_CALLS = 0;
  atp_engine_config_t config = et_config(&CLK);
  config.on_change = log_hook;
  REQUIRE(setup_with(&config) == 0);
  char sku[32], id[32];
  /* 3000 positions: more than one batch of the walk. */
  for (int i = 0; i < 3000; i++) {
    snprintf(sku, sizeof sku, "P%d", i);
    snprintf(id, sizeof id, "a%d", i);
    REQUIRE(adjust_at(id, sku, "L", 50, now() - 1000 + i % 7, NULL) == 0);
  }
  CHECK_EQ(atp_safety_stock_set(E, ATP_STR("P1"), ATP_STR("L"), 3, &(atp_position_t){0},
                                &RES),
           0);
  CHECK_EQ(count_at("c1", "P2", "L", 40, now() - 200, NULL), 0);
  atp_str_t locs[1] = {ATP_STR("L")};
  CHECK_EQ(atp_group_put(E, ATP_STR("G"), locs, 1, &RES), 0);
  CHECK_EQ(atp_group_put(E, ATP_STR("H"), locs, 1, &RES), 0);
  for (int i = 1; i <= 12; i++) {
    snprintf(id, sizeof id, "x%d", i);
    snprintf(sku, sizeof sku, "P%d", i);
    atp_line_req_t two[2] = {LL(sku, "L", 2), LL("P2999", "L", 1)};
    atp_reserve_req_t req = res_req(id, two, 2, 60000);
    req.order_ref = ATP_STR("cart");
    req.channel = ATP_STR("web");
    REQUIRE(atp_reserve(E, &req, &R, &SF, &RES) == 0);
  }
  CHECK_EQ(atp_fulfil(E, ATP_STR("x3"), ATP_STR("f3"), NULL, 0, &R, &RES), 0);
  advance(10);

  size_t horizon = LOG.count; /* the journal's LSN when the walk begins */
  atp_export_counts_t counts;
  CHECK_EQ(atp_engine_export(E, export_collect, NULL, &counts), 0);
  CHECK(counts.positions >= 3000);
  CHECK(counts.history_entries >= 3000);
  CHECK(counts.reservations >= 12);
  CHECK_EQ(counts.groups, 2);
  CHECK(counts.idempotency_ids >= 3000);
  CHECK(SNAP_CALLS > 8);
  /* and after the walk */
  CHECK_EQ(adjust("after", "P0", "L", -1), 0);
  CHECK_EQ(atp_commit(E, ATP_STR("dur-r"), ATP_STR(""), &R, &RES), 0);
  CHECK_EQ(atp_group_delete(E, ATP_STR("H"), &RES), 0);
  CHECK_EQ(LOG.bad_records, 0);

  atp_engine_t *primary = E;
  E = NULL;
  atp_engine_t *replica = NULL;
  atp_engine_config_t config2 = et_config(&CLK);
  REQUIRE(atp_engine_create(&config2, &replica) == 0);
  for (size_t g = 0; g < SNAP_COUNT; g++)
    CHECK_EQ(atp_engine_apply(replica, SNAP[g].records, SNAP[g].count), 0);
  for (size_t g = horizon; g < LOG.count; g++)
    CHECK_EQ(atp_engine_apply(replica, LOG.groups[g].records, LOG.groups[g].count), 0);

  for (int i = -1; i < 3000; i++) {
    if (i < 0)
      snprintf(sku, sizeof sku, "NEW");
    else
      snprintf(sku, sizeof sku, "P%d", i);
    atp_position_t a, b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    CHECK_EQ(atp_position_get(primary, et_str(sku), ATP_STR("L"), &a), 0);
    CHECK_EQ(atp_position_get(replica, et_str(sku), ATP_STR("L"), &b), 0);
    if (!positions_equal(&a, &b) || !histories_equal(primary, replica, sku)) {
      fprintf(stderr,
              "  position %s differs: on_hand %lld/%lld reserved %lld/%lld "
              "version %llu/%llu\n",
              sku, (long long)a.on_hand, (long long)b.on_hand, (long long)a.reserved,
              (long long)b.reserved, (unsigned long long)a.version,
              (unsigned long long)b.version);
      CHECK(0);
      break;
    }
  }
  static const char *ids[] = {"x1", "x2", "x3", "x4", "y9", "x12", "dur-r"};
  for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
    CHECK_EQ(atp_reservation_get(primary, et_str(ids[i]), &R), 0);
    CHECK_EQ(atp_reservation_get(replica, et_str(ids[i]), &R2), 0);
    if (!reservations_equal(&R, &R2)) {
      fprintf(stderr, "  reservation %s differs\n", ids[i]);
      CHECK(0);
    }
  }
  atp_str_t out[4];
  uint32_t n = 0;
  CHECK_EQ(atp_group_get(replica, ATP_STR("G"), out, 4, &n), 0);
  CHECK(n == 2 && et_str_is(out[1], "L2"));
  CHECK_EQ(atp_group_get(replica, ATP_STR("H"), out, 4, &n), ATP_ENOTFOUND);
  /* Ids remembered: an adjustment and a count replay, a fulfilment id too. */
  E = replica;
  atp_adjust_res_t ares;
  CHECK_EQ(adjust_at("a7", "P7", "L", 50, T0 - 1000, &ares), 0);
  CHECK(ares.replayed);
  CHECK_EQ(adjust("dur-a1", "P2999", "L", 8), ATP_EIDEMPOTENCY);
  atp_count_res_t cres;
  CHECK_EQ(count_at("c1", "P2", "L", 40, T0 - 200, &cres), 0);
  CHECK(cres.replayed);
  CHECK_EQ(atp_fulfil(E, ATP_STR("x3"), ATP_STR("f3"), NULL, 0, &R, &RES), 0);
  CHECK(R.replayed);
  E = primary;
  atp_engine_stats_t sa, sb;
  atp_engine_stats(primary, &sa);
  atp_engine_stats(replica, &sb);
  CHECK_EQ(sa.positions, sb.positions);
  CHECK_EQ(sa.groups, sb.groups);
  CHECK_EQ(sa.idempotency_ids, sb.idempotency_ids);
  for (int i = 0; i < 5; i++)
    CHECK_EQ(sa.reservations_by_status[i], sb.reservations_by_status[i]);
  atp_engine_destroy(replica);
  free(SNAP);
  SNAP = NULL;
  SNAP_CAP = SNAP_COUNT = 0;
  log_free();
}

/* Whether the page holding byte at of table is mapped in (mincore). */
static bool page_resident(const void *table, size_t at) {
  uintptr_t page = ((uintptr_t)table + at) & ~(uintptr_t)4095;
  unsigned char vec = 0;
  if (mincore((void *)page, 4096, &vec) != 0) return false;
  return vec & 1;
}

/* The prefaulter (prefault.c) maps the pages of the next records in ahead of
 * the first writes to them, once a table took its first records; a table
 * never used gets none. */
static void test_prefault_ahead(void) {
  REQUIRE(setup() == 0);
  REQUIRE(E->prefaulter != NULL);
  size_t far = 2000 * sizeof *E->idempotency_records;
  size_t far_res = 2000 * sizeof *E->reservation_records;
  REQUIRE(adjust("p1", "A", "L1", 1) == 0);
  bool resident = false;
  for (int i = 0; i < 2000 && !resident; i++) {
    resident = page_resident(E->idempotency_records, far) &&
               page_resident(E->idempotency_table.entries,
                             2000 * sizeof *E->idempotency_table.entries);
    if (!resident) nanosleep(&(struct timespec){0, 1000000}, NULL);
  }
  CHECK(resident);
#if !defined(__SANITIZE_ADDRESS__)
  /* (Sanitizer builds take tables from the heap, zeroed: all resident.) */
  CHECK(!page_resident(E->reservation_records, far_res));
#else
  (void)far_res;
#endif
  teardown();
}

/* A clock that moves 1 ms at every reading. */
static int64_t ticking_clock(void *ctx) {
  return atomic_fetch_add(&((et_clock_t *)ctx)->now_ms, 1);
}

/* One reading of the clock for a whole call, and a held reading for every
 * call of the holding thread until it lets go (atp_engine_clock_hold). */
static void test_clock_hold(void) {
  log_free();
  atp_engine_config_t config = et_config(&CLK);
  config.on_change = log_hook;
  config.clock = ticking_clock;
  REQUIRE(setup_with(&config) == 0);
  /* Every time an adjustment records is the one reading its call made. */
  REQUIRE(adjust("k1", "A", "L1", 1) == 0);
  REQUIRE(LOG.count == 1 && LOG.groups[0].count == 2);
  int64_t at = LOG.groups[0].records[0].at_ms;
  CHECK_EQ(LOG.groups[0].records[1].at_ms, at);
  CHECK_EQ(LOG.groups[0].records[1].u.idem.created_at_ms, at);
  CHECK_EQ(LOG.groups[0].records[0].u.position.occurred_at_ms, at);
  /* Held: two calls and a read see the held reading, the clock moves on. */
  int64_t held = atp_engine_clock_hold(E);
  REQUIRE(adjust("k2", "A", "L1", 1) == 0);
  REQUIRE(adjust("k3", "A", "L1", 1) == 0);
  CHECK_EQ(atp_engine_now_ms(E), held);
  REQUIRE(LOG.count == 3);
  for (int g = 1; g < 3; g++)
    for (uint32_t i = 0; i < LOG.groups[g].count; i++)
      CHECK_EQ(LOG.groups[g].records[i].at_ms, held);
  atp_engine_clock_release(E);
  REQUIRE(adjust("k4", "A", "L1", 1) == 0);
  REQUIRE(LOG.count == 4);
  CHECK(LOG.groups[3].records[0].at_ms > held);
  CHECK(atp_engine_now_ms(E) > LOG.groups[3].records[0].at_ms);
  teardown();
  log_free();
}

TEST_MAIN({
  RUN(test_names);
  RUN(test_position_unknown);
  RUN(test_position_formulas);
  RUN(test_positions_get_batch);
  RUN(test_version_increases);
  RUN(test_sku_positions);
  RUN(test_groups);
  RUN(test_adjust_validation);
  RUN(test_adjust_result);
  RUN(test_adjust_change_from);
  RUN(test_adjust_idempotency);
  RUN(test_adjust_overflow);
  RUN(test_count_basic);
  RUN(test_count_change_from);
  RUN(test_count_semantics);
  RUN(test_count_approximate);
  RUN(test_changes_after);
  RUN(test_changes_after_cap);
  RUN(test_position_each);
  RUN(test_safety_stock);
  RUN(test_reserve_basic);
  RUN(test_reserve_all_or_nothing);
  RUN(test_reserve_validation);
  RUN(test_reserve_line_limits);
  RUN(test_reserve_idempotency);
  RUN(test_reserve_group);
  RUN(test_reserve_split_prefers_whole);
  RUN(test_commit);
  RUN(test_release);
  RUN(test_release_rest_after_partial_fulfil);
  RUN(test_extend);
  RUN(test_fulfil);
  RUN(test_fulfil_conflicts);
  RUN(test_amend);
  RUN(test_expiry);
  RUN(test_purge_released_and_fulfilled);
  RUN(test_expiry_boundary);
  RUN(test_first_tick_expires_overdue);
  RUN(test_expiry_inbox_overflow_and_wrap);
  RUN(test_change_hook_replay);
  RUN(test_apply_rejects_malformed);
  RUN(test_group_shortfall_best_location);
  RUN(test_idempotency_namespaces);
  RUN(test_release_id);
  RUN(test_commit_order_id);
  RUN(test_replay_rules);
  RUN(test_change_records_keys);
  RUN(test_future_times_refused);
  RUN(test_change_from_unknown_position);
  RUN(test_export_import);
  RUN(test_prefault_ahead);
  RUN(test_clock_hold);
  teardown();
  log_free();
})
