/* test_engine_limits.c - the engine's bounded tables and its out-of-memory
 * paths. Every table sized at atp_engine_create (positions, reservations,
 * idempotency ids, groups, interned strings) answers ATP_EFULL when full and
 * changes nothing; every ATP_ENOMEM the engine returns changes nothing either,
 * proved with the allocation-failure hook (atp_memory_fail_after): for n = 0,
 * 1, ... the n-th allocation of the operation fails, until the operation gets
 * through all of them and succeeds.
 */
#include <stdio.h>
#include <string.h>

#include "atp/memory.h"
#include "engine_test_util.h"
#include "test.h"

static et_clock_t CLOCK = {ET_T0_MS};

static atp_engine_t *make(uint32_t positions, uint32_t reservations, uint32_t ids) {
  atp_engine_config_t c = et_config(&CLOCK);
  c.positions_max = positions;
  c.reservations_max = reservations;
  c.idempotency_max = ids;
  atp_engine_t *e = NULL;
  if (atp_engine_create(&c, &e)) return NULL;
  return e;
}

static int adjust(atp_engine_t *e, const char *id, const char *sku, const char *loc,
                  int64_t delta) {
  atp_adjust_req_t req = {.id = et_str(id),
                          .sku = et_str(sku),
                          .location = et_str(loc),
                          .delta = delta,
                          .reason = ATP_REASON_RECEIVED,
                          .source = et_str("test"),
                          .occurred_at_ms = ATP_TIME_NONE};
  atp_adjust_res_t res;
  atp_result_t result = {0};
  return atp_adjust(e, &req, &res, &result);
}

static int reserve(atp_engine_t *e, const char *id, const atp_line_req_t *lines,
                   uint32_t n, const char *order_ref) {
  atp_reserve_req_t req = {.id = et_str(id),
                           .lines = lines,
                           .line_count = n,
                           .order_ref = et_str(order_ref)};
  static atp_reservation_t out;
  atp_result_t result = {0};
  return atp_reserve(e, &req, &out, NULL, &result);
}

/* What a client can see of the engine, to compare before and after. */
typedef struct {
  atp_engine_stats_t stats;
  int64_t on_hand[4], reserved[4], committed[4], safety[4];
  bool found[4];
} seen_t;

static const char *const LOCS[4] = {"L0", "L1", "L2", "L3"};

/* A refused call may leave a DEAD record that only the ticker takes out of
 * the counts: it runs first, as the server's runs every 100 ms. */
static void look(atp_engine_t *e, const char *sku, seen_t *s) {
  memset(s, 0, sizeof *s);
  atp_engine_tick(e);
  atp_engine_stats(e, &s->stats);
  s->stats.expirations = 0;
  for (int i = 0; i < 4; i++) {
    atp_position_t p;
    s->found[i] = atp_position_get(e, et_str(sku), et_str(LOCS[i]), &p) == 0;
    if (!s->found[i]) continue;
    s->on_hand[i] = p.on_hand;
    s->reserved[i] = p.reserved;
    s->committed[i] = p.committed;
    s->safety[i] = p.safety_stock;
  }
}

static bool same(const seen_t *a, const seen_t *b) {
  return memcmp(a, b, sizeof *a) == 0;
}

/* --- full tables ----------------------------------------------------------- */

static void test_positions_full(void) {
  atp_engine_t *e = make(4, 64, 64);
  REQUIRE(e);
  for (int i = 0; i < 4; i++) {
    char id[16];
    snprintf(id, sizeof id, "a%d", i);
    CHECK_EQ(adjust(e, id, "S", LOCS[i], 5), 0);
  }
  seen_t before, after;
  look(e, "S", &before);
  CHECK_EQ(before.stats.positions, 4);
  CHECK_EQ(adjust(e, "a4", "S", "L4", 5), ATP_EFULL);
  atp_result_t result = {0};
  CHECK_EQ(atp_safety_stock_set(e, et_str("T"), et_str("L0"), 1, NULL, &result),
           ATP_EFULL);
  look(e, "S", &after);
  CHECK(same(&before, &after));
  atp_position_t p;
  CHECK_EQ(atp_position_get(e, et_str("S"), et_str("L4"), &p), ATP_ENOTFOUND);
  /* The refused adjustment left its id free: a retry on a known position works. */
  CHECK_EQ(adjust(e, "a4", "S", "L0", 1), 0);
  atp_engine_destroy(e);
}

static void test_reservations_full(void) {
  atp_engine_t *e = make(16, 4, 64);
  REQUIRE(e);
  CHECK_EQ(adjust(e, "a", "S", "L0", 100), 0);
  atp_line_req_t line = {.sku = et_str("S"), .location = et_str("L0"), .qty = 1};
  for (int i = 0; i < 4; i++) {
    char id[16];
    snprintf(id, sizeof id, "r%d", i);
    CHECK_EQ(reserve(e, id, &line, 1, ""), 0);
  }
  seen_t before, after;
  look(e, "S", &before);
  CHECK_EQ(before.reserved[0], 4);
  CHECK_EQ(reserve(e, "r4", &line, 1, ""), ATP_EFULL);
  look(e, "S", &after);
  CHECK(same(&before, &after));
  atp_reservation_t out;
  CHECK_EQ(atp_reservation_get(e, et_str("r4"), &out), ATP_ENOTFOUND);
  atp_engine_destroy(e);
}

static void test_idempotency_full(void) {
  atp_engine_t *e = make(16, 16, 4);
  REQUIRE(e);
  for (int i = 0; i < 4; i++) {
    char id[16];
    snprintf(id, sizeof id, "a%d", i);
    CHECK_EQ(adjust(e, id, "S", "L0", 1), 0);
  }
  seen_t before, after;
  look(e, "S", &before);
  CHECK_EQ(before.stats.idempotency_ids, 4);
  CHECK_EQ(adjust(e, "a4", "S", "L0", 1), ATP_EFULL);
  /* A keyed release needs an id too. */
  atp_line_req_t line = {.sku = et_str("S"), .location = et_str("L0"), .qty = 1};
  CHECK_EQ(reserve(e, "r", &line, 1, ""), 0);
  look(e, "S", &before);
  atp_reservation_t out;
  atp_result_t result = {0};
  CHECK_EQ(atp_release_keyed(e, et_str("r"), et_str("k"), NULL, 0, &out, &result),
           ATP_EFULL);
  look(e, "S", &after);
  CHECK(same(&before, &after));
  CHECK_EQ(after.on_hand[0], 4);
  atp_engine_destroy(e);
}

static void test_groups_full(void) {
  atp_engine_t *e = make(16, 16, 16);
  REQUIRE(e);
  atp_str_t loc = et_str("L0");
  atp_result_t result = {0};
  char name[32];
  for (int i = 0; i < ATP_GROUPS_MAX; i++) {
    snprintf(name, sizeof name, "g%d", i);
    if (atp_group_put(e, et_str(name), &loc, 1, &result)) break;
  }
  atp_engine_stats_t before, after;
  atp_engine_stats(e, &before);
  CHECK_EQ(before.groups, ATP_GROUPS_MAX);
  CHECK_EQ(atp_group_put(e, et_str("one-more"), &loc, 1, &result), ATP_EFULL);
  atp_engine_stats(e, &after);
  CHECK_EQ(after.groups, ATP_GROUPS_MAX);
  atp_str_t got[2];
  uint32_t count;
  CHECK_EQ(atp_group_get(e, et_str("one-more"), got, 2, &count), ATP_ENOTFOUND);
  /* An existing group can still be replaced: it takes no new entry. */
  CHECK_EQ(atp_group_put(e, et_str("g0"), &loc, 1, &result), 0);
  atp_engine_destroy(e);
}

/* Strings are interned for SKUs, locations and group names, in a table sized
 * from positions_max plus room for groups; many group locations fill it. */
static void test_interned_strings_full(void) {
  atp_engine_t *e = make(4, 16, 16);
  REQUIRE(e);
  static char text[ATP_GROUP_LOCATIONS_MAX][32];
  static atp_str_t locs[ATP_GROUP_LOCATIONS_MAX];
  atp_result_t result = {0};
  int rc = 0, groups = 0;
  for (int g = 0; rc == 0 && g < 1000; g++) {
    for (int i = 0; i < ATP_GROUP_LOCATIONS_MAX; i++) {
      snprintf(text[i], sizeof text[i], "x%d.%d", g, i);
      locs[i] = et_str(text[i]);
    }
    char name[16];
    snprintf(name, sizeof name, "g%d", g);
    rc = atp_group_put(e, et_str(name), locs, ATP_GROUP_LOCATIONS_MAX, &result);
    if (rc == 0) groups++;
  }
  CHECK_EQ(rc, ATP_EFULL);
  atp_engine_stats_t stats;
  atp_engine_stats(e, &stats);
  CHECK_EQ(stats.groups, groups);
  /* A new position needs new strings: refused as well, nothing created. */
  CHECK_EQ(adjust(e, "a", "new-sku", "new-loc", 1), ATP_EFULL);
  atp_engine_stats(e, &stats);
  CHECK_EQ(stats.positions, 0);
  atp_engine_destroy(e);
}

/* --- out of memory ----------------------------------------------------------- */

static void test_create_out_of_memory(void) {
  int failures = 0;
  for (long n = 0;; n++) {
    atp_engine_config_t c = et_config(&CLOCK);
    atp_engine_t *e = NULL;
    atp_memory_fail_after(n);
    int rc = atp_engine_create(&c, &e);
    atp_memory_fail_after(-1);
    if (rc == 0) {
      atp_engine_destroy(e);
      break;
    }
    CHECK_EQ(rc, ATP_ENOMEM); /* and nothing leaked (ASan) */
    failures++;
    REQUIRE(n < 1000);
  }
  CHECK(failures > 0);
}

/* Runs op with its n-th allocation failing for n = 0, 1, ... until it
 * succeeds; after each ATP_ENOMEM what a client sees is as it was. Returns how
 * many times it failed. */
typedef int (*op_t)(atp_engine_t *e);

static int out_of_memory_loop(atp_engine_t *e, op_t op, const char *sku) {
  int failures = 0;
  for (long n = 0;; n++) {
    seen_t before, after;
    look(e, sku, &before);
    atp_memory_fail_after(n);
    int rc = op(e);
    atp_memory_fail_after(-1);
    if (rc == 0) return failures;
    CHECK_EQ(rc, ATP_ENOMEM);
    if (rc != ATP_ENOMEM) return failures;
    look(e, sku, &after);
    CHECK(same(&before, &after));
    failures++;
    if (n > 1000) return failures;
  }
}

static int op_adjust_new_position(atp_engine_t *e) {
  return adjust(e, "new", "S", "L3", 7);
}

static int op_safety_new_position(atp_engine_t *e) {
  atp_result_t result = {0};
  return atp_safety_stock_set(e, et_str("S"), et_str("L2"), 1, NULL, &result);
}

/* Three lines (beyond the two a record holds inline) and text beyond the
 * record's inline room: both allocations can fail. */
static int op_reserve_big(atp_engine_t *e) {
  static atp_line_req_t lines[3];
  for (int i = 0; i < 3; i++)
    lines[i] =
        (atp_line_req_t){.sku = et_str("S"), .location = et_str(LOCS[i]), .qty = 1};
  char ref[201];
  memset(ref, 'o', 200);
  ref[200] = '\0';
  return reserve(e, "big-reservation-with-a-long-order-ref", lines, 3, ref + 80);
}

static int op_amend_third_line(atp_engine_t *e) {
  atp_line_req_t add = {.sku = et_str("S"), .location = et_str("L2"), .qty = 1};
  static atp_reservation_t out;
  atp_result_t result = {0};
  return atp_amend(e, et_str("two"), et_str("amend-1"), NULL, 0, &add, 1, &out, NULL,
                   &result);
}

static int op_group_new(atp_engine_t *e) {
  atp_str_t locs[3] = {et_str("L0"), et_str("new-location"), et_str("another")};
  atp_result_t result = {0};
  return atp_group_put(e, et_str("new-group"), locs, 3, &result);
}

static void test_operations_out_of_memory(void) {
  atp_engine_t *e = make(64, 64, 64);
  REQUIRE(e);
  /* Warm up this thread's scratch buffers (allocated once per thread, their
   * failure is fatal by design) and the positions the operations use. */
  CHECK_EQ(adjust(e, "a0", "S", "L0", 10), 0);
  CHECK_EQ(adjust(e, "a1", "S", "L1", 10), 0);
  atp_line_req_t two[2] = {{.sku = et_str("S"), .location = et_str("L0"), .qty = 1},
                           {.sku = et_str("S"), .location = et_str("L1"), .qty = 1}};
  CHECK_EQ(reserve(e, "two", two, 2, ""), 0);

  CHECK(out_of_memory_loop(e, op_safety_new_position, "S") > 0);
  CHECK(out_of_memory_loop(e, op_adjust_new_position, "S") > 0);
  CHECK_EQ(adjust(e, "a2", "S", "L2", 10), 0);
  CHECK(out_of_memory_loop(e, op_reserve_big, "S") > 0);
  CHECK(out_of_memory_loop(e, op_amend_third_line, "S") > 0);
  CHECK(out_of_memory_loop(e, op_group_new, "S") > 0);
  atp_str_t got[3];
  uint32_t count;
  CHECK_EQ(atp_group_get(e, et_str("new-group"), got, 3, &count), 0);
  CHECK_EQ(count, 3);
  atp_engine_destroy(e);
}

TEST_MAIN({
  RUN(test_positions_full);
  RUN(test_reservations_full);
  RUN(test_idempotency_full);
  RUN(test_groups_full);
  RUN(test_interned_strings_full);
  RUN(test_create_out_of_memory);
  RUN(test_operations_out_of_memory);
})
