/* test_epoch.c - unit tests of epoch-based reclamation (src/engine/epoch.c):
 * a reader inside the engine holds back the reuse of what it may hold, for
 * as long as it stays inside, however many ticks and however much time pass.
 *
 * The reader is a thread that enters an epoch bracket as the engine's calls
 * do, finds a reservation record through its chain and a group's version,
 * and then blocks on a condition variable, standing for a thread descheduled
 * in the middle of a look-up. Meanwhile the main thread (the ticker) purges
 * the record, replaces the group, and runs ticks and wall time far past the
 * old time-based grace (20 ticks and 1 s), then reserves again, which would
 * take the recycled record. Under that old rule the record was recycled and
 * rewritten under the reader's feet, and the group's version freed. No
 * scheduling luck is involved: the reader is held for certain.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../../../src/engine/engine_internal.h"
#include "engine_test_util.h"
#include "test.h"

static et_clock_t CLOCK;
static atp_engine_t *E;
static atp_result_t RES;

/* --- the reader ------------------------------------------------------------ */

typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int stage; /* 0 start, 1 reader holds, 2 go on, 3 reader out */
  /* what the reader saw, before and after blocking */
  uint32_t idx;
  uint64_t hash_before, hash_after;
  char id_before[32], id_after[32];
  const atp_group_version_t *group;
  uint32_t group_count_after;
  uint32_t group_location_after;
} reader_t;

static void stage_set(reader_t *r, int stage) {
  pthread_mutex_lock(&r->lock);
  r->stage = stage;
  pthread_cond_broadcast(&r->cond);
  pthread_mutex_unlock(&r->lock);
}

static void stage_wait(reader_t *r, int stage) {
  pthread_mutex_lock(&r->lock);
  while (r->stage < stage) pthread_cond_wait(&r->cond, &r->lock);
  pthread_mutex_unlock(&r->lock);
}

static void copy_id(uint32_t idx, char *out) {
  const atp_reservation_record_t *rec = &E->reservation_records[idx];
  uint32_t n = rec->id_len < 31 ? rec->id_len : 31;
  memcpy(out, rec->text, n);
  out[n] = '\0';
}

/* The record of id found as rec_find finds it: the chain from its head. */
static uint32_t chain_find(const char *id) {
  uint64_t hash = atp__hash_bytes(id, strlen(id));
  const atp_keyed_table_t *t = &E->reservation_table;
  for (uint32_t v = atp__keyed_head(t, hash); v; v = atp__keyed_next(t, v)) {
    char seen[32];
    copy_id(v - 1, seen);
    if (t->entries[v - 1].hash == hash && strcmp(seen, id) == 0) return v - 1;
  }
  return UINT32_MAX;
}

static void *reader_main(void *arg) {
  reader_t *r = arg;
  atp__epoch_enter(E);
  r->idx = chain_find("victim");
  if (r->idx != UINT32_MAX) {
    r->hash_before = E->reservation_table.entries[r->idx].hash;
    copy_id(r->idx, r->id_before);
  }
  atp__group_resolve(E, ATP_STR("G"), &r->group);
  stage_set(r, 1);
  stage_wait(r, 2);
  /* Still inside: what it found must be what it was. */
  if (r->idx != UINT32_MAX) {
    r->hash_after = E->reservation_table.entries[r->idx].hash;
    copy_id(r->idx, r->id_after);
  }
  if (r->group) {
    r->group_count_after = r->group->count;
    r->group_location_after = r->group->locations[0];
  }
  atp__epoch_exit(E);
  stage_set(r, 3);
  return NULL;
}

/* --- helpers ----------------------------------------------------------------- */

static int reserve(const char *id) {
  atp_line_req_t line = {.sku = ATP_STR("S"), .location = ATP_STR("L"), .qty = 1};
  atp_reserve_req_t req = {.id = et_str(id), .lines = &line, .line_count = 1};
  atp_reservation_t *out = atp__scratch_view();
  return atp_reserve(E, &req, out, NULL, &RES);
}

static void tick(int n) {
  for (int i = 0; i < n; i++) {
    et_clock_add(&CLOCK, 100);
    atp_engine_tick(E);
  }
}

static bool in_limbo(uint32_t idx) {
  const atp_keyed_table_t *t = &E->reservation_table;
  for (uint32_t v = t->limbo_head; v; v = atomic_load(&t->entries[v - 1].free_next))
    if (v == idx + 1) return true;
  return false;
}

static bool retired_waits(const void *ptr) {
  for (const atp_retired_t *r = E->retired_waiting; r; r = r->next)
    if (r->ptr == ptr) return true;
  return false;
}

/* --- the test --------------------------------------------------------------- */

static void test_reader_holds_back_reuse(void) {
  et_clock_set(&CLOCK, ET_T0_MS);
  atp_engine_config_t config = et_config(&CLOCK);
  config.ended_ttl_ms = 1000;
  REQUIRE(atp_engine_create(&config, &E) == 0);
  atp_adjust_req_t adj = {.id = ATP_STR("a1"),
                          .sku = ATP_STR("S"),
                          .location = ATP_STR("L"),
                          .delta = 10,
                          .reason = ATP_REASON_RECEIVED,
                          .source = ATP_STR("test"),
                          .occurred_at_ms = ATP_TIME_NONE};
  atp_adjust_res_t adjusted;
  REQUIRE(atp_adjust(E, &adj, &adjusted, &RES) == 0);
  atp_str_t locations[] = {ATP_STR("L")};
  REQUIRE(atp_group_put(E, ATP_STR("G"), locations, 1, &RES) == 0);
  REQUIRE(reserve("victim") == 0);
  REQUIRE(atp_release(E, ATP_STR("victim"), NULL, 0, atp__scratch_view(), &RES) == 0);

  reader_t r = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
  pthread_t thread;
  REQUIRE(pthread_create(&thread, NULL, reader_main, &r) == 0);
  stage_wait(&r, 1);
  REQUIRE(r.idx != UINT32_MAX);
  REQUIRE(r.group != NULL);
  uint32_t idx = r.idx;

  /* The ended reservation is purged: unlinked and in limbo. The group is
   * replaced: its old version retired. */
  et_clock_add(&CLOCK, 2000);
  tick(1);
  CHECK(chain_find("victim") == UINT32_MAX);
  CHECK(in_limbo(idx));
  atp_str_t other[] = {ATP_STR("M")};
  REQUIRE(atp_group_put(E, ATP_STR("G"), other, 1, &RES) == 0);

  /* Far past the old grace: 50 ticks, and (the old rule also waited for 1 s
   * of monotonic time, which no clock injection moves) a real 1.1 s. */
  tick(25);
  struct timespec pause = {.tv_sec = 1, .tv_nsec = 100 * 1000000L};
  nanosleep(&pause, NULL);
  tick(25);
  CHECK(in_limbo(idx));
  CHECK(retired_waits(r.group));
  /* This thread allocated the record, so a recycled one would come back to
   * it first: the new reservation would be written over the reader's. */
  REQUIRE(reserve("intruder") == 0);
  CHECK(chain_find("intruder") != idx);

  stage_set(&r, 2);
  stage_wait(&r, 3);
  pthread_join(thread, NULL);
  CHECK_EQ(r.hash_after, r.hash_before);
  CHECK(strcmp(r.id_after, "victim") == 0);
  CHECK_EQ(r.group_count_after, 1);
  CHECK_EQ(r.group_location_after, r.group->locations[0]);

  /* Out of the bracket, the next tick reclaims both, and the record is this
   * thread's next one again. */
  tick(1);
  CHECK(!in_limbo(idx));
  CHECK(!retired_waits(r.group));
  REQUIRE(reserve("third") == 0);
  CHECK_EQ(chain_find("third"), idx);
  atp_engine_destroy(E);
  E = NULL;
}

/* Nested brackets publish once and clear at the outermost exit; one thread
 * has one slot in every engine. */
static void test_nested_brackets(void) {
  et_clock_set(&CLOCK, ET_T0_MS);
  atp_engine_config_t config = et_config(&CLOCK);
  atp_engine_t *a, *b;
  REQUIRE(atp_engine_create(&config, &a) == 0);
  REQUIRE(atp_engine_create(&config, &b) == 0);
  atp_engine_tick(a);
  atp__epoch_enter(a);
  uint64_t entered = atp__epoch_oldest(a);
  CHECK_EQ(entered, atp__epoch_now(a));
  atp_engine_tick(a); /* a new epoch; the reader stays at the old one */
  atp__epoch_enter(a);
  atp__epoch_enter(b);
  CHECK_EQ(atp__epoch_oldest(a), entered);
  CHECK_EQ(atp__epoch_oldest(b), atp__epoch_now(b));
  atp__epoch_exit(b);
  CHECK_EQ(atp__epoch_oldest(b), UINT64_MAX);
  atp__epoch_exit(a);
  CHECK_EQ(atp__epoch_oldest(a), entered);
  atp__epoch_exit(a);
  CHECK_EQ(atp__epoch_oldest(a), UINT64_MAX);
  atp_engine_destroy(a);
  atp_engine_destroy(b);
}

TEST_MAIN({
  RUN(test_reader_holds_back_reuse);
  RUN(test_nested_brackets);
})
