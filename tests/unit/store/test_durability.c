/* test_durability.c - the durability module (src/store/durability.c) with a
 * real journal: the causality test of issue 11 item 2 (8h), and restore.
 *
 * Causality: thread A releases a hold, and its hook is delayed 300 ms between
 * the change becoming visible and its report; meanwhile thread B reserves the
 * units A released. B's own record becomes durable first. The journal as it
 * is at that moment, replayed, oversells (A's hold is still there, plus B's):
 * so answering B once its own LSN is durable would be wrong. The ticket
 * horizon holds B's answer back until A's release is durable too, and the
 * journal at that moment replays without an oversell.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "atp/durability.h"
#include "atp/engine.h"
#include "atp/journal.h"
#include "atp/records.h"
#include "test.h"

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

static atp_durable_t *dur;
static _Thread_local bool delay_my_release;
static atomic_int release_visible;

/* The engine's hook: the durability hook, except that the thread marked
 * delays its release's report (the change is visible already). */
static void hook(void *ctx, const atp_change_t *records, uint32_t count) {
  if (delay_my_release && records[0].cause == ATP_CAUSE_RELEASE) {
    atomic_store(&release_visible, 1);
    sleep_ms(300);
  }
  atp_durable_hook(ctx, records, count);
}

/* Replays what dir holds now into a fresh engine; returns the position. */
static atp_engine_t *replayed;
static atp_records_t scratch;
static int apply_one(void *ctx, uint64_t lsn, uint16_t kind, const void *p,
                     uint32_t n) {
  (void)ctx, (void)lsn, (void)kind;
  int rc = atp_records_decode(p, n, &scratch);
  return rc ? rc : atp_engine_apply(replayed, scratch.records, scratch.count);
}
static atp_position_t replay_position(const char *dir) {
  atp_position_t pos;
  memset(&pos, 0, sizeof pos);
  atp_engine_config_t ec = {
      .positions_max = 64, .reservations_max = 64, .idempotency_max = 64};
  if (atp_engine_create(&ec, &replayed) != 0) return pos;
  atp_journal_scan_t scan;
  atp_records_init(&scratch);
  if (atp_journal_read(dir, 0, apply_one, NULL, &scan) == 0)
    atp_position_get(replayed, ATP_STR("K"), ATP_STR("L"), &pos);
  atp_records_free(&scratch);
  atp_engine_destroy(replayed);
  return pos;
}

static atp_engine_t *engine;
static atp_reservation_t res_a, res_b;

static void *thread_a(void *arg) {
  (void)arg;
  atp_result_t result;
  delay_my_release = true;
  atp_durable_begin(dur, 1);
  atp_release(engine, ATP_STR("rA"), NULL, 0, &res_a, &result);
  (void)atp_durable_end(dur, 1);
  return NULL;
}

static void test_horizon_holds_back_dependent_ack(void) {
  char dir[64];
  strcpy(dir, "/tmp/atpd-dur-XXXXXX");
  REQUIRE(mkdtemp(dir));
  atp_durable_config_t dc = {.dir = dir, .mode = ATP_JOURNAL_BATCH};
  REQUIRE(atp_durable_create(&dc, &dur) == 0);
  atp_engine_config_t ec = {.positions_max = 64,
                            .reservations_max = 64,
                            .idempotency_max = 64,
                            .on_change = hook,
                            .change_ctx = dur};
  REQUIRE(atp_engine_create(&ec, &engine) == 0);
  atp_durable_restore_t info;
  REQUIRE(atp_durable_restore(dur, engine, 0, &info) == 0);

  atp_result_t result;
  atp_adjust_req_t adj = {.id = ATP_STR("a1"),
                          .sku = ATP_STR("K"),
                          .location = ATP_STR("L"),
                          .delta = 5,
                          .reason = ATP_REASON_RECEIVED,
                          .source = ATP_STR("erp"),
                          .occurred_at_ms = ATP_TIME_NONE};
  atp_adjust_res_t ar;
  atp_durable_begin(dur, 0);
  REQUIRE(atp_adjust(engine, &adj, &ar, &result) == 0);
  atp_durable_end(dur, 0);
  atp_line_req_t line = {ATP_STR("K"), ATP_STR("L"), ATP_STR(""), 5, false};
  atp_reserve_req_t ra = {.id = ATP_STR("rA"), .lines = &line, .line_count = 1};
  atp_durable_begin(dur, 0);
  REQUIRE(atp_reserve(engine, &ra, &res_a, NULL, &result) == 0);
  atp_durable_end(dur, 0);
  atp_journal_t *j = atp_durable_journal(dur);
  REQUIRE(atp_journal_wait(j, atp_journal_assigned_lsn(j), 5000) == 0);

  pthread_t ta;
  int64_t start = now_ms();
  REQUIRE(pthread_create(&ta, NULL, thread_a, NULL) == 0);
  while (!atomic_load(&release_visible)) sleep_ms(1);
  /* B sees A's released units and takes them. */
  atp_reserve_req_t rb = {.id = ATP_STR("rB"), .lines = &line, .line_count = 1};
  atp_durable_begin(dur, 0);
  REQUIRE(atp_reserve(engine, &rb, &res_b, NULL, &result) == 0);
  uint64_t lsn_b = atp_journal_assigned_lsn(j);
  uint64_t target_b = atp_durable_end(dur, 0);
  REQUIRE(atp_journal_wait(j, lsn_b, 5000) == 0);

  /* B's own record is durable; A's release is not. Acknowledging B now and
   * crashing would replay an oversell: */
  CHECK(atp_durable_ticket(dur) < target_b);
  atp_position_t naive = replay_position(dir);
  CHECK_EQ(naive.on_hand, 5);
  CHECK_EQ(naive.reserved, 10);
  CHECK(naive.reserved > naive.on_hand);

  /* The horizon releases B only once A's release is durable. */
  while (atp_durable_ticket(dur) < target_b && now_ms() - start < 5000) sleep_ms(1);
  CHECK(atp_durable_ticket(dur) >= target_b);
  CHECK(now_ms() - start >= 290);
  atp_position_t held = replay_position(dir);
  CHECK_EQ(held.on_hand, 5);
  CHECK_EQ(held.reserved, 5);
  pthread_join(ta, NULL);

  CHECK(atp_durable_close(dur) == 0);
  atp_engine_destroy(engine);

  /* Restore into a fresh engine: the same state, and the ids are known. */
  REQUIRE(atp_durable_create(&dc, &dur) == 0);
  ec.on_change = atp_durable_hook;
  REQUIRE(atp_engine_create(&ec, &engine) == 0);
  REQUIRE(atp_durable_restore(dur, engine, 0, &info) == 0);
  CHECK(info.scan.records_replayed >= 4);
  atp_position_t pos;
  REQUIRE(atp_position_get(engine, ATP_STR("K"), ATP_STR("L"), &pos) == 0);
  CHECK_EQ(pos.reserved, 5);
  CHECK(atp_reservation_get(engine, ATP_STR("rB"), &res_b) == 0);
  CHECK_EQ(res_b.status, ATP_STATUS_HELD);
  CHECK(atp_reservation_get(engine, ATP_STR("rA"), &res_a) == 0);
  CHECK_EQ(res_a.status, ATP_STATUS_RELEASED);
  CHECK(atp_durable_close(dur) == 0);
  atp_engine_destroy(engine);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  CHECK(system(cmd) == 0);
}

TEST_MAIN(RUN(test_horizon_holds_back_dependent_ack))
