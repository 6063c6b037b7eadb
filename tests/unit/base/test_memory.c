/* test_memory.c - the arena's mark and rewind (include/atp/memory.h): what was
 * allocated after a mark is forgotten, what came before is kept, and the
 * chunks taken since stay held for reuse. */
#include <stdint.h>

#include "atp/memory.h"
#include "test.h"

static void test_rewind_in_one_chunk(void) {
  atp_arena_t a;
  atp_arena_init(&a, 1024, 0);
  char *first = atp_arena_alloc(&a, 100);
  REQUIRE(first);
  atp_arena_mark_t m = atp_arena_mark(&a);
  char *second = atp_arena_alloc(&a, 200);
  REQUIRE(second);
  atp_arena_rewind(&a, m);
  /* The next allocation takes the bytes the forgotten one had. */
  CHECK(atp_arena_alloc(&a, 8) == second);
  atp_arena_destroy(&a);
}

static void test_rewind_across_chunks(void) {
  atp_arena_t a;
  atp_arena_init(&a, 1024, 4096);
  char *first = atp_arena_alloc(&a, 100);
  REQUIRE(first);
  atp_arena_mark_t m = atp_arena_mark(&a);
  REQUIRE(atp_arena_alloc(&a, 1000)); /* a second chunk */
  REQUIRE(atp_arena_alloc(&a, 2000)); /* a third, larger one */
  size_t held = a.bytes_held;
  atp_arena_rewind(&a, m);
  CHECK_EQ(a.bytes_held, held); /* the chunks stay the arena's */
  CHECK(a.head && a.free);
  char *next = atp_arena_alloc(&a, 8);
  CHECK(next == first + 104); /* back in the first chunk, after what it kept */
  /* The kept chunks serve later allocations without growing the arena past
   * its limit: 2000 bytes again fit although 1024 + 1000 + 2000 are held. */
  CHECK(atp_arena_alloc(&a, 1000) != NULL);
  CHECK(atp_arena_alloc(&a, 2000) != NULL);
  CHECK_EQ(a.bytes_held, held);
  memset(first, 'x', 100); /* still the arena's */
  atp_arena_destroy(&a);
}

static void test_mark_of_an_empty_arena(void) {
  atp_arena_t a;
  atp_arena_init(&a, 1024, 0);
  atp_arena_mark_t m = atp_arena_mark(&a);
  REQUIRE(atp_arena_alloc(&a, 50));
  atp_arena_rewind(&a, m);
  CHECK(a.head == NULL && a.free != NULL);
  CHECK(atp_arena_alloc(&a, 50) != NULL);
  atp_arena_destroy(&a);
}

TEST_MAIN({
  RUN(test_rewind_in_one_chunk);
  RUN(test_rewind_across_chunks);
  RUN(test_mark_of_an_empty_arena);
})
