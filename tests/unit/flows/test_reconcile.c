/* test_reconcile.c - reconciliation reports as durable state (src/flows/
 * reconcile.c, proto/journal.md kinds 40..43).
 *
 * A snapshot is fuzzy: its sections may hold a report newer than journal
 * records after its LSN that a replay then repeats. So records are replayed
 * here in both orders, the newer version first and last, and the report must
 * end as the newest version said, item outcomes included; a version whose
 * header never came (a torn tail) must leave the report as it was.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atp/codec.h"
#include "atp/durability.h"
#include "atp/engine.h"
#include "atp/memory.h"
#include "atp/reconcile.h"
#include "test.h"

#define RECORDS_MAX 64

typedef struct {
  uint16_t kind[RECORDS_MAX];
  void *payload[RECORDS_MAX];
  uint32_t bytes[RECORDS_MAX];
  uint32_t count;
} records_t;

static int collect(void *ctx, uint16_t kind, const void *payload, uint32_t bytes) {
  records_t *r = ctx;
  if (r->count == RECORDS_MAX) return -1;
  r->kind[r->count] = kind;
  r->payload[r->count] = malloc(bytes ? bytes : 1);
  memcpy(r->payload[r->count], payload, bytes);
  r->bytes[r->count++] = bytes;
  return 0;
}

static void records_free(records_t *r) {
  for (uint32_t i = 0; i < r->count; i++) free(r->payload[i]);
  r->count = 0;
}

typedef struct {
  char dir[64];
  atp_durable_t *d;
  atp_engine_t *engine;
  atp_recon_store_t *store;
} world_t;

static void world_open(world_t *w) {
  strcpy(w->dir, "/tmp/atpd-recon-XXXXXX");
  REQUIRE(mkdtemp(w->dir));
  atp_durable_config_t dc = {.dir = w->dir, .mode = ATP_JOURNAL_NONE};
  REQUIRE(atp_durable_create(&dc, &w->d) == 0);
  atp_recon_config_t rc = {.durable = w->d};
  REQUIRE(atp_recon_store_create(&rc, &w->store) == 0);
  atp_engine_config_t ec = {.positions_max = 64,
                            .reservations_max = 64,
                            .idempotency_max = 256,
                            .on_change = atp_durable_hook,
                            .change_ctx = w->d};
  REQUIRE(atp_engine_create(&ec, &w->engine) == 0);
  atp_durable_restore_t info;
  REQUIRE(atp_durable_restore(w->d, w->engine, 0, &info) == 0);
}

static void world_close(world_t *w) {
  CHECK(atp_durable_close(w->d) == 0);
  atp_recon_store_destroy(w->store);
  atp_engine_destroy(w->engine);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", w->dir);
  CHECK(system(cmd) == 0);
}

/* The report as GET answers it, all items. */
static char *report_json(atp_recon_store_t *s, const char *id) {
  atp_buf_t b;
  atp_buf_init(&b, 0);
  atp_writer_t w;
  atp_writer_init(&w, ATP_FORMAT_JSON, &b);
  if (atp_recon_write(s, (atp_str_t){id, (uint32_t)strlen(id)}, 0, 1000, false, &w) !=
      0) {
    atp_buf_free(&b);
    return NULL;
  }
  char *out = malloc(b.len + 1);
  memcpy(out, b.data, b.len);
  out[b.len] = '\0';
  atp_buf_free(&b);
  return out;
}

static void replay_all(world_t *w, const records_t *r) {
  for (uint32_t i = 0; i < r->count; i++)
    REQUIRE(atp_durable_replay_section(w->d, r->kind[i], r->payload[i], r->bytes[i]) ==
            0);
}

static void test_replay_keeps_the_newest_version(void) {
  world_t a;
  world_open(&a);
  atp_result_t result;
  atp_adjust_req_t adj = {.id = ATP_STR("a1"),
                          .sku = ATP_STR("K1"),
                          .location = ATP_STR("L"),
                          .delta = 8,
                          .reason = ATP_REASON_RECEIVED,
                          .source = ATP_STR("erp"),
                          .occurred_at_ms = atp_engine_now_ms(a.engine) - 20000};
  atp_adjust_res_t ares;
  memset(&result, 0, sizeof result);
  REQUIRE(atp_adjust(a.engine, &adj, &ares, &result) == 0);
  atp_recon_position_t pos[2] = {{ATP_STR("K1"), ATP_STR("L"), 5, 0},
                                 {ATP_STR("K2"), ATP_STR("L"), 2, 0}};
  atp_recon_request_t req = {.id = ATP_STR("rep"),
                             .source = ATP_STR("wms"),
                             .as_of_ms = atp_engine_now_ms(a.engine) - 10000,
                             .positions = pos,
                             .count = 2};
  bool replayed;
  memset(&result, 0, sizeof result);
  REQUIRE(atp_recon_create(a.store, a.engine, &req, &replayed, &result) == 0);
  records_t v1 = {0}, v2 = {0}, v3 = {0};
  REQUIRE(atp_durable_export_sections(a.d, collect, &v1) == 0);
  atp_recon_apply_t out;
  memset(&result, 0, sizeof result);
  REQUIRE(atp_recon_apply(a.store, a.engine, ATP_STR("rep"), false, &out, &replayed,
                          &result) == 0);
  CHECK_EQ(out.applied, 2);
  REQUIRE(atp_durable_export_sections(a.d, collect, &v2) == 0);
  memset(&result, 0, sizeof result);
  REQUIRE(atp_recon_close(a.store, ATP_STR("rep"), ATP_STR("agreed"), ATP_STR("ann"),
                          atp_engine_now_ms(a.engine), &replayed, &result) == 0);
  REQUIRE(atp_durable_export_sections(a.d, collect, &v3) == 0);
  char *want2 = NULL, *want3 = report_json(a.store, "rep");
  REQUIRE(want3 && strstr(want3, "\"closed\""));

  /* Newest first (the snapshot), then older records (the journal repeats):
   * nothing changes. */
  world_t b;
  world_open(&b);
  replay_all(&b, &v3);
  replay_all(&b, &v1);
  replay_all(&b, &v2);
  char *got = report_json(b.store, "rep");
  REQUIRE(got);
  CHECK(strcmp(got, want3) == 0);
  free(got);
  world_close(&b);

  /* Oldest first: each newer version replaces the last, items included. */
  world_t c;
  world_open(&c);
  replay_all(&c, &v1);
  replay_all(&c, &v2);
  want2 = report_json(c.store, "rep");
  REQUIRE(want2 && strstr(want2, "\"applied\"") && strstr(want2, "\"outcome\""));
  /* v3 torn: its header (the last record before the meta) never came. */
  records_t torn = v3;
  torn.count -= 2;
  replay_all(&c, &torn);
  got = report_json(c.store, "rep");
  CHECK(got && strcmp(got, want2) == 0);
  free(got);
  replay_all(&c, &v3);
  got = report_json(c.store, "rep");
  CHECK(got && strcmp(got, want3) == 0);
  free(got);
  world_close(&c);

  free(want2);
  free(want3);
  records_free(&v1);
  records_free(&v2);
  records_free(&v3);
  world_close(&a);
}

TEST_MAIN(RUN(test_replay_keeps_the_newest_version))
