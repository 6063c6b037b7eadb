/* demo.c - the demo catalogue (see demo.h). It goes through the engine's
 * public mutations (adjustments with reason "received", safety stock, groups),
 * exactly as an integration would, so the change hook sees it too. */
#include "atp/demo.h"

#include <stdio.h>
#include <string.h>

#include "atp/error.h"

/* xorshift64*: deterministic, so every demo run has the same stock. */
static uint64_t next_random(uint64_t *state) {
  uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 2685821657736338717ULL;
}

static atp_str_t str_of(const char *s) {
  return (atp_str_t){s, (uint32_t)strlen(s)};
}

static int load_groups(atp_engine_t *engine, char stores[][24]) {
  atp_str_t north[5], south[5];
  for (int i = 0; i < 5; i++) {
    north[i] = str_of(stores[i]);
    south[i] = str_of(stores[5 + i]);
  }
  atp_result_t result;
  int rc = atp_group_put(engine, ATP_STR("north"), north, 5, &result);
  if (rc == 0) rc = atp_group_put(engine, ATP_STR("south"), south, 5, &result);
  return rc;
}

static void sku_name(char *buf, size_t cap, uint32_t i) {
  if (i % 10 == 0)
    snprintf(buf, cap, "gid://shopify/ProductVariant/%u", 1000000 + i);
  else
    snprintf(buf, cap, "SKU-%05u", i);
}

int atp_demo_load(atp_engine_t *engine, uint32_t *positions) {
  *positions = 0;
  atp_engine_stats_t st;
  atp_engine_stats(engine, &st);
  if (st.positions > 0) return 0;
  char stores[ATP_DEMO_STORES][24];
  for (int s = 0; s < ATP_DEMO_STORES; s++)
    snprintf(stores[s], sizeof stores[s], "store-%02d", s + 1);
  int rc = load_groups(engine, stores);
  if (rc != 0) return rc;
  uint64_t seed = 0x9E3779B97F4A7C15ULL;
  for (uint32_t i = 1; i <= ATP_DEMO_SKUS; i++) {
    char sku[64];
    sku_name(sku, sizeof sku, i);
    for (int s = 0; s < ATP_DEMO_STORES; s++) {
      uint64_t r = next_random(&seed);
      bool always = i <= 10;
      if (!always && r % 100 >= 70) continue; /* ~70% of SKUs at each store */
      /* Mostly small shelf counts, a few deep ones, some at zero. */
      int64_t on_hand = (int64_t)((r >> 8) % 25);
      if ((r >> 16) % 10 == 0) on_hand += (int64_t)((r >> 24) % 200);
      if (always && on_hand < 5) on_hand += 5;
      char id[256];
      snprintf(id, sizeof id, "demo-%.63s-%.23s", sku, stores[s]);
      atp_result_t result;
      if (on_hand > 0) {
        atp_adjust_req_t req;
        memset(&req, 0, sizeof req);
        req.id = str_of(id);
        req.sku = str_of(sku);
        req.location = str_of(stores[s]);
        req.delta = on_hand;
        req.reason = ATP_REASON_RECEIVED;
        req.source = ATP_STR("demo");
        req.occurred_at_ms = ATP_TIME_NONE;
        atp_adjust_res_t res;
        rc = atp_adjust(engine, &req, &res, &result);
        if (rc != 0) return rc;
      }
      int64_t safety = (r >> 32) % 4 == 0 ? (int64_t)((r >> 40) % 3) + 1 : 0;
      if (safety > 0 || on_hand == 0) {
        atp_position_t p;
        rc = atp_safety_stock_set(engine, str_of(sku), str_of(stores[s]), safety, &p,
                                  &result);
        if (rc != 0) return rc;
      }
      (*positions)++;
    }
  }
  return 0;
}
