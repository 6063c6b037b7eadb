/* flows_test_util.h - set-up shared by the Shopify suites (test_shopify.c,
 * test_shopify_push.c).
 *
 * Everything is static: each suite is one translation unit.
 */
#ifndef ATP_FLOWS_TEST_UTIL_H
#define ATP_FLOWS_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atp/durability.h"
#include "atp/engine.h"

/* A fresh temporary dir from tmpl (ending in XXXXXX, at most 63 bytes),
 * journal off, and a small engine whose changes go to it. 0 or -1. */
static inline int durable_engine(char dir[64], const char *tmpl, atp_durable_t **d,
                                 atp_engine_t **engine) {
  snprintf(dir, 64, "%s", tmpl);
  if (!mkdtemp(dir)) return -1;
  atp_durable_config_t dc = {.dir = dir, .mode = ATP_JOURNAL_NONE};
  if (atp_durable_create(&dc, d) != 0) return -1;
  atp_engine_config_t ec = {.positions_max = 64,
                            .reservations_max = 64,
                            .idempotency_max = 64,
                            .on_change = atp_durable_hook,
                            .change_ctx = *d};
  return atp_engine_create(&ec, engine) == 0 ? 0 : -1;
}

#endif
