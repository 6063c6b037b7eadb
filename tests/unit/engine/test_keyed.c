/* test_keyed.c - unit tests of the engine's keyed record tables (src/keyed.c):
 * chains, unlinking from any place in a chain, and the limbo a record waits
 * in before its slot is reused: until no reader is in an epoch at or before
 * the one it was unlinked in, and at least ATP_GRACE_EPOCHS epochs.
 *
 * One thread: atp__keyed_alloc takes from this thread's shard, so which record
 * comes back is deterministic.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../../src/engine/engine_internal.h"
#include "test.h"

#define NO_READER UINT64_MAX /* atp__epoch_oldest with no reader inside */

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

  atp__keyed_retire(&T, b, 1); /* the middle */
  CHECK_EQ(chain(7, got, 8), 2);
  CHECK_EQ(got[0], c);
  CHECK_EQ(got[1], a);
  CHECK_EQ(atomic_load(&T.entries[b].state), ATP_REC_FREE);
  atp__keyed_retire(&T, c, 1); /* the head */
  CHECK_EQ(chain(7, got, 8), 1);
  CHECK_EQ(got[0], a);
  atp__keyed_retire(&T, a, 1); /* the last */
  CHECK_EQ(chain(7, got, 8), 0);
  CHECK_EQ(chain(8, got, 8), 1);
  CHECK_EQ(got[0], other);
  CHECK_EQ(atp__keyed_live(&T), 1);
  atp__keyed_destroy(&T);
}

/* Retires one record in epoch and checks that it is handed out again only
 * once ATP_GRACE_EPOCHS have passed and no reader is in an epoch at or
 * before it, at the first reclaim that comes late past both. */
static void check_grace(uint64_t epoch, uint64_t late) {
  REQUIRE(atp__keyed_init(&T, 4) == 0);
  uint32_t r = insert(1);
  REQUIRE(r != UINT32_MAX);
  atp__keyed_retire(&T, r, epoch);

  /* Too few epochs; enough, but a reader in the record's epoch or before. */
  atp__keyed_reclaim(&T, epoch + ATP_GRACE_EPOCHS - 1, NO_READER);
  CHECK(atp__keyed_peek(&T) != r);
  atp__keyed_reclaim(&T, epoch + 100, epoch);
  CHECK(atp__keyed_peek(&T) != r);
  atp__keyed_reclaim(&T, epoch + 100, epoch - 1);
  CHECK(atp__keyed_peek(&T) != r);
  /* Both: the oldest reader entered after the unlink. */
  atp__keyed_reclaim(&T, epoch + ATP_GRACE_EPOCHS + late, epoch + 1);
  CHECK_EQ(atp__keyed_peek(&T), r);
  CHECK_EQ(atp__keyed_alloc(&T), r);
  atp__keyed_destroy(&T);
}

static void test_limbo_grace(void) {
  check_grace(5, 0);
  check_grace(5, 7);
  check_grace((5ull << 32) - 3, 0); /* epochs are 64 bits: no wrap in 32 */
}

/* Limbo is first in, first out: a young record holds back none older, and
 * none younger leaves before it. */
static void test_limbo_fifo(void) {
  REQUIRE(atp__keyed_init(&T, 8) == 0);
  uint32_t a = insert(1), b = insert(2);
  atp__keyed_retire(&T, a, 10);
  atp__keyed_retire(&T, b, 15);
  atp__keyed_reclaim(&T, 30, NO_READER); /* a's grace passed, b's not */
  CHECK_EQ(atp__keyed_alloc(&T), a);
  CHECK(atp__keyed_peek(&T) != b);
  atp__keyed_reclaim(&T, 35, NO_READER);
  CHECK_EQ(atp__keyed_alloc(&T), b);
  atp__keyed_destroy(&T);
}

/* A reader inside since epoch 12 holds back b (unlinked in 15) but not a
 * (unlinked in 10, before it entered), and nothing behind b either. */
static void test_limbo_waits_for_reader(void) {
  REQUIRE(atp__keyed_init(&T, 8) == 0);
  uint32_t a = insert(1), b = insert(2), c = insert(3);
  atp__keyed_retire(&T, a, 10);
  atp__keyed_retire(&T, b, 15);
  atp__keyed_retire(&T, c, 16);
  atp__keyed_reclaim(&T, 1000, 12);
  CHECK_EQ(atp__keyed_alloc(&T), a);
  CHECK(atp__keyed_peek(&T) != b && atp__keyed_peek(&T) != c);
  atp__keyed_reclaim(&T, 1001, 16); /* b's readers gone, c's still in */
  CHECK_EQ(atp__keyed_alloc(&T), b);
  CHECK(atp__keyed_peek(&T) != c);
  atp__keyed_reclaim(&T, 1002, NO_READER);
  CHECK_EQ(atp__keyed_alloc(&T), c);
  atp__keyed_destroy(&T);
}

/* A full table says so, and a record back from limbo fills it again. */
static void test_full_then_recycled(void) {
  REQUIRE(atp__keyed_init(&T, 3) == 0);
  uint32_t r[3];
  for (int i = 0; i < 3; i++) REQUIRE((r[i] = insert((uint64_t)i)) != UINT32_MAX);
  CHECK_EQ(atp__keyed_alloc(&T), UINT32_MAX);
  atp__keyed_retire(&T, r[1], 1);
  CHECK_EQ(atp__keyed_alloc(&T), UINT32_MAX); /* still in limbo */
  atp__keyed_reclaim(&T, 1 + ATP_GRACE_EPOCHS, NO_READER);
  CHECK_EQ(atp__keyed_alloc(&T), r[1]);
  CHECK_EQ(atp__keyed_live(&T), 3);
  atp__keyed_destroy(&T);
}

TEST_MAIN({
  RUN(test_chain_unlink_anywhere);
  RUN(test_limbo_grace);
  RUN(test_limbo_fifo);
  RUN(test_limbo_waits_for_reader);
  RUN(test_full_then_recycled);
})
