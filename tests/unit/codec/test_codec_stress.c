/* test_codec_stress.c - JSON parsing from several threads at once, as the
 * event loops do (run under TSan by make test).
 *
 * codec_json.c keeps per-thread state (yajl's heap, the scratch stack, key
 * sets) and one process-wide hash key; each thread parses bodies that use all
 * of it (a big object, escapes, errors, streams) and checks every answer.
 */
#include <pthread.h>
#include <stdint.h>

#include "atp/codec.h"
#include "atp/error.h"
#include "test.h"

enum { THREADS = 4, ROUNDS = 300 };

static char big[4096];     /* an object of 40 members */
static size_t big_len;     /* its length */
static char big_dup[4096]; /* the same with "k3" again at the end */
static size_t big_dup_len, big_dup_at;

static void make_bodies(void) {
  size_t n = 0;
  big[n++] = '{';
  for (int i = 0; i < 40; i++)
    n += (size_t)snprintf(big + n, sizeof big - n, "%s\"k%d\":\"v\\u00e9%d\"",
                          i ? "," : "", i, i);
  memcpy(big_dup, big, n);
  big_dup_at = n + 1;
  big_dup_len = n + (size_t)snprintf(big_dup + n, sizeof big_dup - n, ",\"k3\":1}");
  big[n++] = '}';
  big_len = n;
}

static int count_items(void *ctx, uint32_t index, atp_val_t *val) {
  (void)index;
  if (val->type == ATP_VAL_OBJECT) ++*(uint32_t *)ctx;
  return 0;
}

/* Returns the number of wrong answers. */
static int one_round(atp_arena_t *arena) {
  int wrong = 0;
  atp_val_t *v;
  atp_parse_error_t err;
  atp_arena_reset(arena);
  if (atp_codec_parse(ATP_FORMAT_JSON, big, big_len, arena, &v, &err) != 0 ||
      v->len != 40 || atp_val_get(v, "k39") == NULL || atp_val_get(v, "k39")->len != 5)
    wrong++;
  atp_arena_reset(arena);
  if (atp_codec_parse(ATP_FORMAT_JSON, big_dup, big_dup_len, arena, &v, &err) !=
          ATP_EBADREQ ||
      err.offset != big_dup_at || !strstr(err.message, "duplicate key \"k3\""))
    wrong++;
  static const char lone[] = "{\"a\":[1,-2,3.5,\"\\ud800\"]}";
  atp_arena_reset(arena);
  if (atp_codec_parse(ATP_FORMAT_JSON, lone, sizeof lone - 1, arena, &v, &err) !=
          ATP_EBADREQ ||
      err.offset != 16)
    wrong++;
  static const char batch[] = "[{\"n\":1},{\"n\":2,\"m\":\"\\n\"},{\"n\":3}]";
  uint32_t items = 0;
  atp_arena_reset(arena);
  if (atp_codec_parse_stream(ATP_FORMAT_JSON, batch, sizeof batch - 1, arena, 10,
                             count_items, &items, &err) != 0 ||
      items != 3)
    wrong++;
  return wrong;
}

static void *worker(void *arg) {
  atp_arena_t arena;
  atp_arena_init(&arena, 4096, 0);
  int wrong = 0;
  for (int r = 0; r < ROUNDS; r++) wrong += one_round(&arena);
  atp_arena_destroy(&arena);
  *(int *)arg = wrong;
  return NULL;
}

static void test_parallel_json(void) {
  make_bodies();
  pthread_t threads[THREADS];
  int wrong[THREADS] = {0};
  for (int t = 0; t < THREADS; t++)
    REQUIRE(pthread_create(&threads[t], NULL, worker, &wrong[t]) == 0);
  for (int t = 0; t < THREADS; t++) {
    pthread_join(threads[t], NULL);
    CHECK_EQ(wrong[t], 0);
  }
}

TEST_MAIN({ RUN(test_parallel_json); })
