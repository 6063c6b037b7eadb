/* test_shopify_push.c - the Shopify push's figures (src/flows/shopify_push.c)
 * as another thread reads them, without Shopify: the push starts against an
 * admin URL nobody listens on and an empty feed, so it only ticks.
 *
 * /metrics and GET /v1/shopify/status read the figures through
 * atp_shopify_push_stats under the push's stats lock while the restore
 * thread starts the push, so the start writes them under that lock too. The
 * make test's TSan build runs this file (Makefile TSAN_NAMES): a reader that
 * read before the start, synchronised with it only by relaxed atomics (no
 * happens-before for ThreadSanitizer), makes a start that writes without the
 * lock a reported race.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atp/durability.h"
#include "atp/engine.h"
#include "atp/feed.h"
#include "atp/shopify.h"
#include "atp/shopify_push.h"
#include "flows_test_util.h"
#include "test.h"

typedef struct {
  atp_shopify_push_t *push;
  atomic_int reads; /* relaxed only: no happens-before with the main thread */
  atomic_bool stop;
  atomic_bool saw_enabled;
} reader_t;

static void *reader_main(void *arg) {
  reader_t *r = arg;
  while (!atomic_load_explicit(&r->stop, memory_order_relaxed)) {
    atp_shopify_push_stats_t st;
    atp_shopify_push_stats(r->push, &st);
    if (st.enabled) atomic_store_explicit(&r->saw_enabled, true, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->reads, 1, memory_order_relaxed);
  }
  return NULL;
}

static void test_stats_read_while_the_push_starts(void) {
  char dir[64];
  atp_durable_t *d = NULL;
  atp_engine_t *engine = NULL;
  REQUIRE(durable_engine(dir, "/tmp/atpd-push-XXXXXX", &d, &engine) == 0);
  atp_shopify_config_t c;
  memset(&c, 0, sizeof c);
  c.secret_count = 1;
  c.push_enabled = true;
  c.points_per_second = 100;
  snprintf(c.admin_url, sizeof c.admin_url,
           "http://127.0.0.1:9/admin/api/graphql.json");
  atp_shopify_t *s = NULL;
  REQUIRE(atp_shopify_create(&c, d, &s) == 0);
  atp_shopify_push_t *push = NULL;
  REQUIRE(atp_shopify_push_create(s, d, &push) == 0);
  atp_durable_restore_t info;
  REQUIRE(atp_durable_restore(d, engine, 0, &info) == 0);
  atp_feed_config_t fc = {
      .journal_dir = dir, .source = "atpd://test", .retention_ms = 0};
  atp_feed_t *feed = NULL;
  REQUIRE(atp_feed_create(&fc, &feed) == 0);
  atp_feed_attach(feed, atp_durable_journal(d));

  static reader_t r;
  r.push = push;
  atomic_init(&r.reads, 0);
  atomic_init(&r.stop, false);
  atomic_init(&r.saw_enabled, false);
  pthread_t t;
  REQUIRE(pthread_create(&t, NULL, reader_main, &r) == 0);
  /* The reader has read (and released the lock) before the start writes. */
  while (atomic_load_explicit(&r.reads, memory_order_relaxed) < 100) usleep(100);
  CHECK(!atomic_load_explicit(&r.saw_enabled, memory_order_relaxed));
  CHECK_EQ(atp_shopify_push_start(push, feed, engine), 0);
  /* ... and reads on while the push runs, until it sees the start. */
  for (int i = 0;
       i < 5000 && !atomic_load_explicit(&r.saw_enabled, memory_order_relaxed); i++)
    usleep(1000);
  CHECK(atomic_load_explicit(&r.saw_enabled, memory_order_relaxed));
  atomic_store_explicit(&r.stop, true, memory_order_relaxed);
  pthread_join(t, NULL);

  atp_shopify_push_stop(push);
  atp_feed_destroy(feed);
  CHECK_EQ(atp_durable_close(d), 0);
  atp_shopify_push_destroy(push);
  atp_shopify_destroy(s);
  atp_engine_destroy(engine);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK_EQ(system(cmd), 0);
}

TEST_MAIN(RUN(test_stats_read_while_the_push_starts);)
