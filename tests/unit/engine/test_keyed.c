/* test_keyed.c - unit tests of the engine's keyed record tables (src/keyed.c):
 * chains, unlinking from any place in a chain, and the limbo a record waits
 * in before its slot is reused (both a number of ticks and a wall time, kept
 * in 32 bits and compared by difference, so also across their wrap).
 *
 * One thread: atp__keyed_alloc takes from this thread's shard, so which record
 * comes back is deterministic.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../../src/engine/engine_internal.h"
#include "test.h"

#define MS 1000000LL /* ns */

static atp_keyed_table_t T;

/* A record published under hash, as the engine's inserts do. */
static uint32_t insert(uint64_t hash) {
  uint32_t idx = atp__keyed_alloc(&T);
  if (idx == UINT32_MAX) return idx;
  T.entries[idx].hash = hash;
  atomic_store(&T.entries[idx].state, ATP_REC_PENDING);
  atp__keyed_push(&T, idx);
  return idx;
}

/* The chain of hash's bucket, as record indexes, into out; returns its length. */
static int chain(uint64_t hash, uint32_t *out, int max) {
  int n = 0;
  for (uint32_t v = atp__keyed_head(&T, hash); v && n < max;
       v = atomic_load(&T.entries[v - 1].next))
    out[n++] = v - 1;
  return n;
}

static void test_chain_unlink_anywhere(void) {
  REQUIRE(atp__keyed_init(&T, 16) == 0);
  /* Three records in one bucket: pushes go in front. */
  uint32_t a = insert(7), b = insert(7), c = insert(7), other = insert(8);
  uint32_t got[8];
  CHECK_EQ(chain(7, got, 8), 3);
  CHECK_EQ(got[0], c);
  CHECK_EQ(got[1], b);
  CHECK_EQ(got[2], a);
  CHECK_EQ(atp__keyed_live(&T), 4);

  atp__keyed_retire(&T, b, 1, 1000 * MS); /* the middle */
  CHECK_EQ(chain(7, got, 8), 2);
  CHECK_EQ(got[0], c);
  CHECK_EQ(got[1], a);
  CHECK_EQ(atomic_load(&T.entries[b].state), ATP_REC_FREE);
  atp__keyed_retire(&T, c, 1, 1000 * MS); /* the head */
  CHECK_EQ(chain(7, got, 8), 1);
  CHECK_EQ(got[0], a);
  atp__keyed_retire(&T, a, 1, 1000 * MS); /* the last */
  CHECK_EQ(chain(7, got, 8), 0);
  CHECK_EQ(chain(8, got, 8), 1);
  CHECK_EQ(got[0], other);
  CHECK_EQ(atp__keyed_live(&T), 1);
  atp__keyed_destroy(&T);
}

/* Retires one record at (tick, ms) and checks that it is handed out again
 * only once both 20 ticks and 1000 ms have passed, at the first tick that
 * comes late past them. */
static void check_grace(uint64_t tick, int64_t ms, uint64_t late_ticks,
                        int64_t late_ms) {
  REQUIRE(atp__keyed_init(&T, 4) == 0);
  uint32_t r = insert(1);
  REQUIRE(r != UINT32_MAX);
  atp__keyed_retire(&T, r, tick, ms * MS);

  /* Enough time, too few ticks; enough ticks, too little time. */
  atp__keyed_reclaim(&T, tick + 19, (ms + 5000) * MS);
  CHECK(atp__keyed_peek(&T) != r);
  atp__keyed_reclaim(&T, tick + 100, (ms + 999) * MS);
  CHECK(atp__keyed_peek(&T) != r);
  /* Both: it is this thread's next record. */
  atp__keyed_reclaim(&T, tick + 20 + late_ticks, (ms + 1000 + late_ms) * MS);
  CHECK_EQ(atp__keyed_peek(&T), r);
  CHECK_EQ(atp__keyed_alloc(&T), r);
  atp__keyed_destroy(&T);
}

static void test_limbo_grace(void) {
  check_grace(5, 123456, 0, 0);
  check_grace(5, 123456, 7, 300);
}

/* The low 32 bits of the tick count and of the clock in ms wrap between
 * retiring and reclaiming: with the end of the grace, or only after it. */
static void test_limbo_grace_across_wrap(void) {
  check_grace(0xfffffff0ull, 0xfffffe00LL, 0, 0);
  check_grace((5ull << 32) - 3, (3LL << 32) - 10, 0, 0);
  check_grace(0xffffffe0ull, 0xfffffc00LL, 50, 3000);
}

/* Limbo is first in, first out: a young record holds back none older, and
 * none younger leaves before it. */
static void test_limbo_fifo(void) {
  REQUIRE(atp__keyed_init(&T, 8) == 0);
  uint32_t a = insert(1), b = insert(2);
  atp__keyed_retire(&T, a, 10, 10000 * MS);
  atp__keyed_retire(&T, b, 15, 10500 * MS);
  atp__keyed_reclaim(&T, 30, 11000 * MS); /* a's grace passed, b's not */
  CHECK_EQ(atp__keyed_alloc(&T), a);
  CHECK(atp__keyed_peek(&T) != b);
  atp__keyed_reclaim(&T, 35, 11500 * MS);
  CHECK_EQ(atp__keyed_alloc(&T), b);
  atp__keyed_destroy(&T);
}

/* A full table says so, and a record back from limbo fills it again. */
static void test_full_then_recycled(void) {
  REQUIRE(atp__keyed_init(&T, 3) == 0);
  uint32_t r[3];
  for (int i = 0; i < 3; i++) REQUIRE((r[i] = insert((uint64_t)i)) != UINT32_MAX);
  CHECK_EQ(atp__keyed_alloc(&T), UINT32_MAX);
  atp__keyed_retire(&T, r[1], 1, 0);
  CHECK_EQ(atp__keyed_alloc(&T), UINT32_MAX); /* still in limbo */
  atp__keyed_reclaim(&T, 21, 1000 * MS);
  CHECK_EQ(atp__keyed_alloc(&T), r[1]);
  CHECK_EQ(atp__keyed_live(&T), 3);
  atp__keyed_destroy(&T);
}

TEST_MAIN({
  RUN(test_chain_unlink_anywhere);
  RUN(test_limbo_grace);
  RUN(test_limbo_grace_across_wrap);
  RUN(test_limbo_fifo);
  RUN(test_full_then_recycled);
})
