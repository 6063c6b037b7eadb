/* test_shopify.c - the Shopify connector's state (src/flows/shopify.c) and its
 * signature check (src/flows/shopify_hmac.c), without a journal.
 *
 * Ids parse from digits and GIDs as 64-bit integers (never a double), the
 * HMAC matches a signature computed independently, under either secret, and
 * nothing else; mappings stay one-to-one when remapped; dedupe answers the
 * first outcome by webhook id or by content key; watermarks only rise.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atp/durability.h"
#include "atp/engine.h"
#include "atp/error.h"
#include "atp/shopify.h"
#include "flows_test_util.h"
#include "test.h"

static atp_str_t str(const char *s) {
  return (atp_str_t){s, (uint32_t)strlen(s)};
}

static void test_id_parse(void) {
  uint64_t v = 0;
  CHECK_EQ(atp_shopify_id_parse(str("9007199254740993"), NULL, &v), 0);
  CHECK(v == 9007199254740993ULL); /* 2^53 + 1: a double would give 2^53 */
  CHECK_EQ(
      atp_shopify_id_parse(str("gid://shopify/ProductVariant/18446744073709551615"),
                           "ProductVariant", &v),
      0);
  CHECK(v == UINT64_MAX);
  CHECK_EQ(atp_shopify_id_parse(str("18446744073709551616"), NULL, &v), ATP_EBADREQ);
  CHECK_EQ(atp_shopify_id_parse(str("gid://shopify/Order/12"), "ProductVariant", &v),
           ATP_EBADREQ);
  CHECK_EQ(
      atp_shopify_id_parse(str("gid://shopify/InventoryLevel/77?inventory_item_id=5"),
                           "InventoryLevel", &v),
      0);
  CHECK(v == 77);
  CHECK_EQ(atp_shopify_id_parse(str("0"), NULL, &v), ATP_EBADREQ);
  CHECK_EQ(atp_shopify_id_parse(str("12a"), NULL, &v), ATP_EBADREQ);
  CHECK_EQ(atp_shopify_id_parse(str("-1"), NULL, &v), ATP_EBADREQ);
  CHECK_EQ(atp_shopify_id_parse(str(""), NULL, &v), ATP_EBADREQ);
  CHECK_EQ(atp_shopify_id_parse(str("gid://shopify//5"), NULL, &v), ATP_EBADREQ);
}

static void test_hmac(void) {
  atp_shopify_config_t c;
  memset(&c, 0, sizeof c);
  snprintf(c.secrets[0], sizeof c.secrets[0], "new-secret");
  snprintf(c.secrets[1], sizeof c.secrets[1], "key");
  c.secret_count = 2;
  /* HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog"), the
   * well-known vector, in base64. */
  const char *body = "The quick brown fox jumps over the lazy dog";
  const char *sig = "97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPNg=";
  CHECK(atp_shopify_hmac_valid(&c, body, strlen(body), sig, strlen(sig)));
  c.secret_count = 1; /* the previous secret dropped: refused */
  CHECK(!atp_shopify_hmac_valid(&c, body, strlen(body), sig, strlen(sig)));
  c.secret_count = 2;
  CHECK(!atp_shopify_hmac_valid(&c, body, strlen(body) - 1, sig, strlen(sig)));
  CHECK(!atp_shopify_hmac_valid(&c, body, strlen(body), sig, strlen(sig) - 1));
  CHECK(!atp_shopify_hmac_valid(&c, body, strlen(body), "", 0));
  CHECK(!atp_shopify_hmac_valid(&c, body, strlen(body), NULL, 0));
  char bad[64];
  snprintf(bad, sizeof bad, "%s", sig);
  bad[10] ^= 1;
  CHECK(!atp_shopify_hmac_valid(&c, body, strlen(body), bad, strlen(bad)));
}

static void test_mappings_one_to_one(void) {
  atp_shopify_config_t c;
  memset(&c, 0, sizeof c);
  c.secret_count = 1;
  atp_shopify_t *s = NULL;
  REQUIRE(atp_shopify_create(&c, NULL, &s) == 0);
  char buf[ATP_ID_BYTES_MAX + 1];
  uint64_t item = 0, variant = 0;
  CHECK_EQ(atp_shopify_map_item(s, str("A"), 10, 20), 0);
  CHECK(atp_shopify_sku_of_variant(s, 10, buf, sizeof buf) && !strcmp(buf, "A"));
  CHECK(atp_shopify_sku_of_item(s, 20, buf, sizeof buf) && !strcmp(buf, "A"));
  /* B takes A's variant: A is unmapped, and so is A's item */
  CHECK_EQ(atp_shopify_map_item(s, str("B"), 10, 30), 0);
  CHECK(!atp_shopify_item_of_sku(s, str("A"), &item, &variant));
  CHECK(!atp_shopify_sku_of_item(s, 20, buf, sizeof buf));
  CHECK(atp_shopify_sku_of_item(s, 30, buf, sizeof buf) && !strcmp(buf, "B"));
  /* B moves to another variant: the old one is free */
  CHECK_EQ(atp_shopify_map_item(s, str("B"), 11, 30), 0);
  CHECK(!atp_shopify_sku_of_variant(s, 10, buf, sizeof buf));
  CHECK(atp_shopify_item_of_sku(s, str("B"), &item, &variant) && variant == 11 &&
        item == 30);
  uint64_t items = 0, locations = 0;
  atp_shopify_counts(s, &items, &locations, NULL, NULL);
  CHECK(items == 1 && locations == 0);
  CHECK_EQ(atp_shopify_map_location(s, str("L1"), 5), 0);
  CHECK_EQ(atp_shopify_map_location(s, str("L2"), 5), 0);
  CHECK(!atp_shopify_location_of(s, str("L1"), NULL));
  CHECK(atp_shopify_location_of_shopify(s, 5, buf, sizeof buf) && !strcmp(buf, "L2"));
  int64_t q = 0;
  CHECK(!atp_shopify_level_get(s, 30, 5, &q));
  CHECK_EQ(atp_shopify_level_set(s, 30, 5, 7), 0);
  CHECK(atp_shopify_level_get(s, 30, 5, &q) && q == 7);
  atp_shopify_destroy(s);
}

static void test_dedupe_and_watermarks(void) {
  atp_shopify_config_t c;
  memset(&c, 0, sizeof c);
  c.secret_count = 1;
  atp_shopify_t *s = NULL;
  REQUIRE(atp_shopify_create(&c, NULL, &s) == 0);
  uint8_t k1[32], k2[32];
  atp_shopify_content_key(str("orders/create"), "{}", 2, k1);
  atp_shopify_content_key(str("orders/cancelled"), "{}", 2, k2);
  CHECK(memcmp(k1, k2, 32) != 0); /* the topic is part of the key */
  atp_shopify_outcome_t first;
  CHECK(!atp_shopify_webhook_seen(s, str("w1"), k1, &first));
  CHECK_EQ(atp_shopify_webhook_record(s, str("w1"), k1, ATP_SHOPIFY_DEAD_LETTER), 0);
  CHECK(atp_shopify_webhook_seen(s, str("w1"), k2, &first) &&
        first == ATP_SHOPIFY_DEAD_LETTER);
  CHECK(atp_shopify_webhook_seen(s, str("w2"), k1, &first)); /* by content */
  CHECK(!atp_shopify_webhook_seen(s, str("w2"), k2, &first));
  /* a later record of the same key keeps the first outcome */
  CHECK_EQ(atp_shopify_webhook_record(s, str("w1"), k1, ATP_SHOPIFY_APPLIED), 0);
  CHECK(atp_shopify_webhook_seen(s, str("w1"), k1, &first) &&
        first == ATP_SHOPIFY_DEAD_LETTER);
  int64_t mark = 0;
  CHECK(!atp_shopify_mark_older(s, str("order:1"), 100, &mark));
  CHECK_EQ(atp_shopify_mark_advance(s, str("order:1"), 200), 0);
  CHECK(atp_shopify_mark_older(s, str("order:1"), 199, &mark) && mark == 200);
  CHECK(!atp_shopify_mark_older(s, str("order:1"), 200, &mark)); /* equal: not older */
  CHECK_EQ(atp_shopify_mark_advance(s, str("order:1"), 150), 0); /* never lowered */
  CHECK(atp_shopify_mark_older(s, str("order:1"), 199, &mark));
  char res[ATP_ID_BYTES_MAX + 1];
  atp_shopify_order_kind_t kind;
  CHECK(!atp_shopify_order_get(s, 9, &kind, res, sizeof res));
  CHECK_EQ(atp_shopify_order_set(s, 9, ATP_SHOPIFY_ORDER_HOLD, str("r-1")), 0);
  CHECK(atp_shopify_order_get(s, 9, &kind, res, sizeof res) &&
        kind == ATP_SHOPIFY_ORDER_HOLD && !strcmp(res, "r-1"));
  atp_shopify_destroy(s);
}

/* The tables grow by moving a few buckets an insert (no insert walks the
 * whole table): every entry stays findable through several doublings, in the
 * middle of a move too, and a remapping during a move replaces, never
 * duplicates. */
static void test_tables_grow_in_steps(void) {
  atp_shopify_config_t c;
  memset(&c, 0, sizeof c);
  c.secret_count = 1;
  atp_shopify_t *s = NULL;
  REQUIRE(atp_shopify_create(&c, NULL, &s) == 0);
  enum { N = 200000 };
  char id[32];
  uint8_t none[32];
  memset(none, 0, sizeof none);
  for (uint32_t i = 0; i < N; i++) {
    snprintf(id, sizeof id, "w-%u", i);
    REQUIRE(atp_shopify_webhook_record(s, str(id), none, ATP_SHOPIFY_APPLIED) == 0);
    /* spot checks while a move is in flight */
    if (i % 997 == 0) {
      atp_shopify_outcome_t first;
      snprintf(id, sizeof id, "w-%u", i / 2);
      CHECK(atp_shopify_webhook_seen(s, str(id), none, &first) &&
            first == ATP_SHOPIFY_APPLIED);
    }
    if (i % 50 == 0) {
      char sku[32];
      snprintf(sku, sizeof sku, "sku-%u", i % 7000);
      REQUIRE(atp_shopify_map_item(s, str(sku), 1000 + i, 5000000 + i) == 0);
    }
  }
  uint32_t found = 0;
  for (uint32_t i = 0; i < N; i++) {
    atp_shopify_outcome_t first;
    snprintf(id, sizeof id, "w-%u", i);
    found += atp_shopify_webhook_seen(s, str(id), none, &first);
  }
  CHECK_EQ(found, (uint32_t)N);
  CHECK(!atp_shopify_webhook_seen(s, str("w-absent"), none, NULL));
  /* The last mapping of each SKU won; its item maps back to it alone. */
  uint64_t item = 0, variant = 0;
  CHECK(atp_shopify_item_of_sku(s, str("sku-0"), &item, &variant));
  CHECK_EQ(item, 5000000u + 196000u);
  atp_shopify_destroy(s);
}

/* A snapshot of a large table lets webhooks in while it walks: one that
 * arrives during the export is recorded before the export ends, where it
 * used to wait for the whole walk. */
typedef struct {
  atp_shopify_t *s;
  uint32_t emitted, at_done;
  _Atomic int done;
  pthread_t t;
  bool started;
} export_probe_t;

static void *late_webhook(void *arg) {
  export_probe_t *p = arg;
  uint8_t none[32] = {0};
  int rc = atp_shopify_webhook_record(p->s, str("w-late"), none, ATP_SHOPIFY_APPLIED);
  atomic_store(&p->done, rc == 0 ? 1 : -1);
  return NULL;
}

static int probe_emit(void *ctx, uint16_t kind, const void *payload, uint32_t bytes) {
  (void)kind;
  (void)payload;
  (void)bytes;
  export_probe_t *p = ctx;
  if (++p->emitted == 100) {
    p->started = pthread_create(&p->t, NULL, late_webhook, p) == 0;
    usleep(20000); /* it is blocked on the mutex by now */
  }
  if (atomic_load(&p->done) && !p->at_done) p->at_done = p->emitted;
  return 0;
}

static void test_export_lets_webhooks_in(void) {
  char dir[64];
  atp_durable_t *d = NULL;
  atp_engine_t *engine = NULL;
  REQUIRE(durable_engine(dir, "/tmp/atpd-shx-XXXXXX", &d, &engine) == 0);
  atp_shopify_config_t c;
  memset(&c, 0, sizeof c);
  c.secret_count = 1;
  atp_shopify_t *s = NULL;
  REQUIRE(atp_shopify_create(&c, d, &s) == 0);
  atp_durable_restore_t info;
  REQUIRE(atp_durable_restore(d, engine, 0, &info) == 0);
  enum { N = 30000 };
  char id[32];
  uint8_t none[32] = {0};
  for (uint32_t i = 0; i < N; i++) {
    snprintf(id, sizeof id, "w-%u", i);
    REQUIRE(atp_shopify_webhook_record(s, str(id), none, ATP_SHOPIFY_APPLIED) == 0);
  }
  export_probe_t p = {.s = s};
  CHECK_EQ(atp_durable_export_sections(d, probe_emit, &p), 0);
  REQUIRE(p.started);
  pthread_join(p.t, NULL);
  CHECK_EQ(atomic_load(&p.done), 1);
  CHECK(p.emitted >= N);
  /* recorded while the walk went on, not after it */
  CHECK(p.at_done > 0 && p.at_done < p.emitted);
  CHECK(atp_shopify_webhook_seen(s, str("w-late"), none, NULL));
  atp_shopify_destroy(s);
  CHECK_EQ(atp_durable_close(d), 0);
  atp_engine_destroy(engine);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  CHECK_EQ(system(cmd), 0);
}

TEST_MAIN(RUN(test_id_parse); RUN(test_hmac); RUN(test_mappings_one_to_one);
          RUN(test_dedupe_and_watermarks); RUN(test_tables_grow_in_steps);
          RUN(test_export_lets_webhooks_in);)
