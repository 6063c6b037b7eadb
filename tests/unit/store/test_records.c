/* test_records.c - unit tests of the engine change codec
 * (src/store/change_codec.c): every record kind and field survives an encode
 * and a decode, malformed payloads are refused (every truncation, trailing
 * bytes, unknown kinds, flags), and what a real engine reports through its
 * hook, encoded, decoded and applied to a second engine, rebuilds the same
 * state.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "atp/engine.h"
#include "atp/memory.h"
#include "atp/records.h"
#include "test.h"

static bool str_eq(atp_str_t a, const char *b) {
  return a.len == strlen(b) && memcmp(a.ptr, b, a.len) == 0;
}

static atp_reservation_t res_in;

/* One record of each kind, every field a distinct value. */
static uint32_t sample(atp_change_t *c, const atp_str_t *locs) {
  memset(c, 0, 4 * sizeof *c);
  c[0].kind = ATP_CHANGE_POSITION;
  c[0].cause = ATP_CAUSE_COUNT;
  c[0].cause_id = ATP_STR("count-1");
  c[0].at_ms = 1700000000001;
  c[0].u.position =
      (atp_change_position_t){ATP_STR("sku-a"), ATP_STR("loc-a"), -5, 6, 7, -8,
                              1700000000002,    ATP_TIME_NONE,    99};
  memset(&res_in, 0, sizeof res_in);
  res_in.id = ATP_STR("res-1");
  res_in.status = ATP_STATUS_COMMITTED;
  res_in.created_at_ms = 11;
  res_in.expires_at_ms = ATP_TIME_NONE;
  res_in.ttl_ms = 13;
  res_in.ended_at_ms = 14;
  res_in.content_hash = 0x1122334455667788ull;
  res_in.order_ref = ATP_STR("ref");
  res_in.order_id = ATP_STR("order");
  res_in.channel = ATP_STR("");
  res_in.customer_id = ATP_STR("cust");
  res_in.line_count = 2;
  res_in.lines[0] = (atp_res_line_t){ATP_STR("s1"), ATP_STR("l1"), 3, 1, 2};
  res_in.lines[1] = (atp_res_line_t){ATP_STR("s2"), ATP_STR("l2"), 30, 10, 20};
  c[1].kind = ATP_CHANGE_RESERVATION;
  c[1].cause = ATP_CAUSE_FULFIL;
  c[1].cause_id = ATP_STR("res-1");
  c[1].at_ms = -1;
  c[1].u.reservation = &res_in;
  c[2].kind = ATP_CHANGE_GROUP;
  c[2].cause = ATP_CAUSE_GROUP;
  c[2].cause_id = ATP_STR("g");
  c[2].at_ms = 3;
  c[2].u.group = (atp_change_group_t){ATP_STR("g"), locs, 3};
  c[3].kind = ATP_CHANGE_IDEMPOTENCY;
  c[3].cause = ATP_CAUSE_ADJUST;
  c[3].cause_id = ATP_STR("adj-1");
  c[3].at_ms = 4;
  c[3].u.idem.kind = ATP_IDEM_ADJUST;
  c[3].u.idem.id = ATP_STR("adj-1");
  c[3].u.idem.content_hash = 0xfedcba9876543210ull;
  c[3].u.idem.created_at_ms = 41;
  c[3].u.idem.flags = 0x5;
  c[3].u.idem.position = (atp_position_t){
      ATP_STR("sku-b"), ATP_STR("loc-b"), 100, 2, 3, 4, 91, 0, ATP_TIME_NONE, 7};
  c[3].u.idem.reservation_id = ATP_STR("rid");
  return 4;
}

static void test_round_trip_every_field(void) {
  atp_str_t locs[3] = {ATP_STR("x"), ATP_STR("yy"), ATP_STR("zzz")};
  atp_change_t in[4];
  uint32_t n = sample(in, locs);
  atp_buf_t buf;
  atp_buf_init(&buf, 0);
  REQUIRE(atp_records_encode(&buf, in, n) == 0);
  atp_records_t out;
  atp_records_init(&out);
  REQUIRE(atp_records_decode(buf.data, (uint32_t)buf.len, &out) == 0);
  REQUIRE(out.count == 4);
  const atp_change_t *c = out.records;
  for (uint32_t i = 0; i < 4; i++) {
    CHECK_EQ(c[i].kind, in[i].kind);
    CHECK_EQ(c[i].cause, in[i].cause);
    CHECK_EQ(c[i].at_ms, in[i].at_ms);
    CHECK(c[i].cause_id.len == in[i].cause_id.len &&
          memcmp(c[i].cause_id.ptr, in[i].cause_id.ptr, in[i].cause_id.len) == 0);
  }
  const atp_change_position_t *p = &c[0].u.position;
  CHECK(str_eq(p->sku, "sku-a") && str_eq(p->location, "loc-a"));
  CHECK_EQ(p->d_on_hand, -5);
  CHECK_EQ(p->d_safety_stock, 6);
  CHECK_EQ(p->d_reserved, 7);
  CHECK_EQ(p->d_committed, -8);
  CHECK_EQ(p->counted_at_ms, 1700000000002);
  CHECK(p->occurred_at_ms == ATP_TIME_NONE);
  CHECK_EQ(p->version, 99);
  const atp_reservation_t *r = c[1].u.reservation;
  CHECK(str_eq(r->id, "res-1"));
  CHECK_EQ(r->status, ATP_STATUS_COMMITTED);
  CHECK_EQ(r->created_at_ms, 11);
  CHECK(r->expires_at_ms == ATP_TIME_NONE);
  CHECK_EQ(r->ttl_ms, 13);
  CHECK_EQ(r->ended_at_ms, 14);
  CHECK(r->content_hash == 0x1122334455667788ull);
  CHECK(str_eq(r->order_ref, "ref") && str_eq(r->order_id, "order"));
  CHECK(str_eq(r->channel, "") && str_eq(r->customer_id, "cust"));
  CHECK(!r->replayed);
  REQUIRE(r->line_count == 2);
  CHECK(str_eq(r->lines[1].sku, "s2") && str_eq(r->lines[1].location, "l2"));
  CHECK_EQ(r->lines[1].qty, 30);
  CHECK_EQ(r->lines[1].fulfilled, 10);
  CHECK_EQ(r->lines[1].released, 20);
  CHECK(str_eq(r->lines[0].sku, "s1") && r->lines[0].qty == 3);
  const atp_change_group_t *g = &c[2].u.group;
  CHECK(str_eq(g->name, "g"));
  REQUIRE(g->location_count == 3);
  CHECK(str_eq(g->locations[0], "x") && str_eq(g->locations[2], "zzz"));
  const atp_change_idem_t *m = &c[3].u.idem;
  CHECK_EQ(m->kind, ATP_IDEM_ADJUST);
  CHECK(str_eq(m->id, "adj-1"));
  CHECK(m->content_hash == 0xfedcba9876543210ull);
  CHECK_EQ(m->created_at_ms, 41);
  CHECK_EQ(m->flags, 5);
  CHECK(str_eq(m->position.sku, "sku-b") && str_eq(m->position.location, "loc-b"));
  CHECK_EQ(m->position.on_hand, 100);
  CHECK_EQ(m->position.safety_stock, 2);
  CHECK_EQ(m->position.reserved, 3);
  CHECK_EQ(m->position.committed, 4);
  CHECK_EQ(m->position.available, 91);
  CHECK_EQ(m->position.shortfall, 0);
  CHECK(m->position.counted_at_ms == ATP_TIME_NONE);
  CHECK_EQ(m->position.version, 7);
  CHECK(str_eq(m->reservation_id, "rid"));
  /* Strings point into the payload, not into copies. */
  CHECK(p->sku.ptr > buf.data && p->sku.ptr < buf.data + buf.len);
  /* A group deletion (no locations) and a scratch reused for a second decode. */
  atp_change_t del = in[2];
  del.u.group.location_count = 0;
  atp_buf_reset(&buf);
  REQUIRE(atp_records_encode(&buf, &del, 1) == 0);
  REQUIRE(atp_records_decode(buf.data, (uint32_t)buf.len, &out) == 0);
  CHECK(out.count == 1 && out.records[0].u.group.location_count == 0);
  atp_records_free(&out);
  atp_buf_free(&buf);
}

static void test_malformed_refused(void) {
  atp_str_t locs[3] = {ATP_STR("x"), ATP_STR("yy"), ATP_STR("zzz")};
  atp_change_t in[4];
  uint32_t n = sample(in, locs);
  atp_buf_t buf;
  atp_buf_init(&buf, 0);
  REQUIRE(atp_records_encode(&buf, in, n) == 0);
  atp_records_t out;
  atp_records_init(&out);
  /* Every truncation is refused, never read past (ASan checks the latter). */
  for (size_t len = 0; len < buf.len; len++) {
    unsigned char *copy = atp_malloc(len ? len : 1);
    memcpy(copy, buf.data, len);
    CHECK(atp_records_decode(copy, (uint32_t)len, &out) == ATP_EBADREQ);
    CHECK_EQ(out.count, 0);
    atp_free(copy);
  }
  /* A byte more. */
  unsigned char *more = atp_malloc(buf.len + 1);
  memcpy(more, buf.data, buf.len);
  more[buf.len] = 0;
  CHECK(atp_records_decode(more, (uint32_t)buf.len + 1, &out) == ATP_EBADREQ);
  /* An unknown kind (first record's kind byte at offset 4), nonzero flags. */
  memcpy(more, buf.data, buf.len);
  more[4] = 9;
  CHECK(atp_records_decode(more, (uint32_t)buf.len, &out) == ATP_EBADREQ);
  memcpy(more, buf.data, buf.len);
  more[6] = 1;
  CHECK(atp_records_decode(more, (uint32_t)buf.len, &out) == ATP_EBADREQ);
  /* A count of zero or one that the payload cannot hold. */
  memcpy(more, buf.data, buf.len);
  more[0] = 0;
  CHECK(atp_records_decode(more, (uint32_t)buf.len, &out) == ATP_EBADREQ);
  memcpy(more, buf.data, buf.len);
  more[3] = 0x7f;
  CHECK(atp_records_decode(more, (uint32_t)buf.len, &out) == ATP_EBADREQ);
  /* An unknown kind refused at encode too. */
  atp_change_t bad = in[0];
  bad.kind = (atp_change_kind_t)77;
  atp_buf_reset(&buf);
  CHECK(atp_records_encode(&buf, &bad, 1) == ATP_EBADREQ);
  atp_free(more);
  atp_records_free(&out);
  atp_buf_free(&buf);
}

/* --- a real engine's records rebuild the same state ------------------------------ */

static atp_buf_t journal; /* payloads back to back, each after its u32 length */
static int64_t fake_now = 1700000000000;
static int64_t clock_fn(void *ctx) {
  (void)ctx;
  return fake_now;
}

static void hook(void *ctx, const atp_change_t *records, uint32_t count) {
  (void)ctx;
  size_t at = journal.len;
  uint32_t zero = 0;
  atp_buf_append(&journal, &zero, 4);
  CHECK(atp_records_encode(&journal, records, count) == 0);
  uint32_t len = (uint32_t)(journal.len - at - 4);
  memcpy(journal.data + at, &len, 4);
}

static atp_reservation_t res_a, res_b;

static void test_engine_replay_rebuilds_state(void) {
  atp_buf_init(&journal, 0);
  atp_engine_config_t cfg = {.positions_max = 1024,
                             .reservations_max = 1024,
                             .idempotency_max = 1024,
                             .clock = clock_fn,
                             .on_change = hook};
  atp_engine_t *e = NULL, *r = NULL;
  REQUIRE(atp_engine_create(&cfg, &e) == 0);
  atp_result_t result;
  atp_position_t pos;
  atp_str_t locs[2] = {ATP_STR("s1"), ATP_STR("s2")};
  REQUIRE(atp_group_put(e, ATP_STR("grp"), locs, 2, &result) == 0);
  REQUIRE(atp_safety_stock_set(e, ATP_STR("k"), ATP_STR("s1"), 1, &pos, &result) == 0);
  atp_adjust_req_t adj = {.id = ATP_STR("a1"),
                          .sku = ATP_STR("k"),
                          .location = ATP_STR("s1"),
                          .delta = 100,
                          .reason = ATP_REASON_RECEIVED,
                          .source = ATP_STR("erp"),
                          .occurred_at_ms = ATP_TIME_NONE};
  atp_adjust_res_t ar;
  REQUIRE(atp_adjust(e, &adj, &ar, &result) == 0);
  atp_count_req_t cnt = {.id = ATP_STR("c1"),
                         .sku = ATP_STR("k"),
                         .location = ATP_STR("s2"),
                         .on_hand = 7,
                         .counted_at_ms = fake_now - 5,
                         .source = ATP_STR("pos")};
  atp_count_res_t cr;
  REQUIRE(atp_count(e, &cnt, &cr, &result) == 0);
  atp_line_req_t lines[2] = {{ATP_STR("k"), ATP_STR("s1"), ATP_STR(""), 2, false},
                             {ATP_STR("k"), ATP_STR(""), ATP_STR("grp"), 9, true}};
  atp_reserve_req_t rq = {.id = ATP_STR("r1"),
                          .lines = lines,
                          .line_count = 2,
                          .order_ref = ATP_STR("o-ref"),
                          .channel = ATP_STR("web")};
  REQUIRE(atp_reserve(e, &rq, &res_a, NULL, &result) == 0);
  REQUIRE(atp_commit(e, ATP_STR("r1"), ATP_STR("ord-1"), &res_a, &result) == 0);
  atp_qty_line_t one = {ATP_STR("k"), ATP_STR("s1"), 1};
  REQUIRE(atp_fulfil(e, ATP_STR("r1"), ATP_STR("f1"), &one, 1, &res_a, &result) == 0);
  atp_reserve_req_t rq2 = {.id = ATP_STR("r2"), .lines = lines, .line_count = 1};
  REQUIRE(atp_reserve(e, &rq2, &res_b, NULL, &result) == 0);
  REQUIRE(atp_release_keyed(e, ATP_STR("r2"), ATP_STR("rel-1"), NULL, 0, &res_b,
                            &result) == 0);
  REQUIRE(atp_group_delete(e, ATP_STR("grp"), &result) == 0);

  REQUIRE(atp_engine_create(&(atp_engine_config_t){.positions_max = 1024,
                                                   .reservations_max = 1024,
                                                   .idempotency_max = 1024,
                                                   .clock = clock_fn},
                            &r) == 0);
  atp_records_t dec;
  atp_records_init(&dec);
  size_t at = 0;
  uint32_t payloads = 0;
  while (at < journal.len) {
    uint32_t len;
    memcpy(&len, journal.data + at, 4);
    REQUIRE(atp_records_decode(journal.data + at + 4, len, &dec) == 0);
    REQUIRE(atp_engine_apply(r, dec.records, dec.count) == 0);
    at += 4 + len;
    payloads++;
  }
  CHECK(payloads >= 9);
  const char *skus_locs[2] = {"s1", "s2"};
  for (int i = 0; i < 2; i++) {
    atp_position_t a, b;
    atp_str_t loc = {skus_locs[i], 2};
    REQUIRE(atp_position_get(e, ATP_STR("k"), loc, &a) == 0);
    REQUIRE(atp_position_get(r, ATP_STR("k"), loc, &b) == 0);
    CHECK_EQ(a.on_hand, b.on_hand);
    CHECK_EQ(a.safety_stock, b.safety_stock);
    CHECK_EQ(a.reserved, b.reserved);
    CHECK_EQ(a.committed, b.committed);
    CHECK_EQ(a.counted_at_ms, b.counted_at_ms);
    CHECK_EQ(a.version, b.version);
  }
  static atp_reservation_t x, y;
  const char *ids[2] = {"r1", "r2"};
  for (int i = 0; i < 2; i++) {
    atp_str_t id = {ids[i], 2};
    REQUIRE(atp_reservation_get(e, id, &x) == 0);
    REQUIRE(atp_reservation_get(r, id, &y) == 0);
    CHECK_EQ(x.status, y.status);
    CHECK_EQ(x.expires_at_ms, y.expires_at_ms);
    CHECK_EQ(x.ended_at_ms, y.ended_at_ms);
    CHECK(x.order_id.len == y.order_id.len);
    CHECK_EQ(x.line_count, y.line_count);
    for (uint32_t l = 0; l < x.line_count && l < y.line_count; l++) {
      CHECK_EQ(x.lines[l].qty, y.lines[l].qty);
      CHECK_EQ(x.lines[l].fulfilled, y.lines[l].fulfilled);
      CHECK_EQ(x.lines[l].released, y.lines[l].released);
    }
  }
  atp_str_t out[4];
  uint32_t n;
  CHECK(atp_group_get(r, ATP_STR("grp"), out, 4, &n) == ATP_ENOTFOUND);
  /* Idempotency ids came back: replays answer replayed. */
  REQUIRE(atp_adjust(r, &adj, &ar, &result) == 0);
  CHECK(ar.replayed);
  REQUIRE(atp_fulfil(r, ATP_STR("r1"), ATP_STR("f1"), &one, 1, &res_a, &result) == 0);
  CHECK(res_a.replayed);
  /* A reservation id replayed with its content is a replay, not a mismatch. */
  REQUIRE(atp_reserve(r, &rq, &res_a, NULL, &result) == 0);
  CHECK(res_a.replayed);
  atp_records_free(&dec);
  atp_engine_destroy(e);
  atp_engine_destroy(r);
  atp_buf_free(&journal);
}

/* The request context rides in a trailer after each body: present fields come
 * back, absent ones are empty, a record without context has no trailer, and a
 * bad mask is refused. */
static void test_context_trailer(void) {
  atp_str_t locs[3] = {ATP_STR("x"), ATP_STR("yy"), ATP_STR("zzz")};
  atp_change_t in[4];
  uint32_t n = sample(in, locs);
  atp_change_ctx_t ctx = {.request_id = ATP_STR("req-9"),
                          .source = ATP_STR("erp"),
                          .reason = ATP_STR("received"),
                          .flow = ATP_STR("wms")};
  atp_buf_t plain, with;
  atp_buf_init(&plain, 0);
  atp_buf_init(&with, 0);
  REQUIRE(atp_records_encode(&plain, in, n) == 0);
  REQUIRE(atp_records_encode_ctx(&with, in, n, &ctx) == 0);
  CHECK(with.len > plain.len);
  atp_records_t out;
  atp_records_init(&out);
  REQUIRE(atp_records_decode(with.data, (uint32_t)with.len, &out) == 0);
  REQUIRE(out.count == n);
  for (uint32_t i = 0; i < n; i++) {
    CHECK(str_eq(out.contexts[i].request_id, "req-9"));
    CHECK(str_eq(out.contexts[i].source, "erp"));
    CHECK(out.contexts[i].ref.len == 0);
    CHECK(str_eq(out.contexts[i].reason, "received"));
    CHECK(str_eq(out.contexts[i].flow, "wms"));
  }
  CHECK(str_eq(out.records[0].u.position.sku, "sku-a"));
  REQUIRE(atp_records_decode(plain.data, (uint32_t)plain.len, &out) == 0);
  CHECK(out.contexts[0].request_id.len == 0 && out.contexts[3].source.len == 0);
  atp_change_ctx_t empty = {0};
  atp_buf_reset(&with);
  REQUIRE(atp_records_encode_ctx(&with, in, n, &empty) == 0);
  CHECK(with.len == plain.len);
  /* A trailer whose mask names no field, or an unknown one, is refused. */
  atp_buf_reset(&with);
  REQUIRE(atp_records_encode_ctx(&with, in, 1, &ctx) == 0);
  unsigned char *mask =
      (unsigned char *)with.data + with.len - (2 + 5) - (2 + 3) - (2 + 8) - (2 + 3) - 1;
  CHECK_EQ(*mask, 0x1b);
  *mask = 0x40;
  CHECK(atp_records_decode(with.data, (uint32_t)with.len, &out) == ATP_EBADREQ);
  atp_records_free(&out);
  atp_buf_free(&plain);
  atp_buf_free(&with);
}

/* An adjustment's payload as written before the header's flags (2026-12-01,
 * every flag 0): its position record and its idempotency record each with the
 * id, the position's strings and the context. */
static const unsigned char adjust_payload_v0[] = {
    0x02, 0x00, 0x00, 0x00, 0x01, 0x01, 0x00, 0x00, 0x5f, 0x00, 0x00, 0x00, 0x7b, 0x68,
    0xe5, 0xcf, 0x8b, 0x01, 0x00, 0x00, 0x05, 0x00, 0x61, 0x64, 0x6a, 0x2d, 0x37, 0x05,
    0x00, 0x73, 0x6b, 0x75, 0x2d, 0x31, 0x02, 0x00, 0x4c, 0x31, 0x05, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x7b, 0x68, 0xe5, 0xcf, 0x8b, 0x01,
    0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1b, 0x05, 0x00, 0x72,
    0x65, 0x71, 0x2d, 0x31, 0x03, 0x00, 0x65, 0x72, 0x70, 0x08, 0x00, 0x72, 0x65, 0x63,
    0x65, 0x69, 0x76, 0x65, 0x64, 0x03, 0x00, 0x65, 0x72, 0x70, 0x04, 0x01, 0x00, 0x00,
    0x88, 0x00, 0x00, 0x00, 0x7b, 0x68, 0xe5, 0xcf, 0x8b, 0x01, 0x00, 0x00, 0x05, 0x00,
    0x61, 0x64, 0x6a, 0x2d, 0x37, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x61, 0x64, 0x6a,
    0x2d, 0x37, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x7b, 0x68, 0xe5, 0xcf,
    0x8b, 0x01, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05, 0x00, 0x73, 0x6b, 0x75, 0x2d,
    0x31, 0x02, 0x00, 0x4c, 0x31, 0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0f, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x80, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x1b, 0x05, 0x00, 0x72, 0x65, 0x71, 0x2d, 0x31, 0x03, 0x00, 0x65, 0x72, 0x70,
    0x08, 0x00, 0x72, 0x65, 0x63, 0x65, 0x69, 0x76, 0x65, 0x64, 0x03, 0x00, 0x65, 0x72,
    0x70,
};

/* The records of that payload, as the engine reports an adjustment. */
static void adjust_records(atp_change_t *c, atp_change_ctx_t *ctx) {
  memset(c, 0, 2 * sizeof *c);
  c[0].kind = ATP_CHANGE_POSITION;
  c[0].cause = ATP_CAUSE_ADJUST;
  c[0].cause_id = ATP_STR("adj-7");
  c[0].at_ms = 1700000000123;
  c[0].u.position = (atp_change_position_t){ATP_STR("sku-1"), ATP_STR("L1"), 5, 0, 0, 0,
                                            ATP_TIME_NONE,    1700000000123, 3};
  c[1].kind = ATP_CHANGE_IDEMPOTENCY;
  c[1].cause = ATP_CAUSE_ADJUST;
  c[1].cause_id = ATP_STR("adj-7");
  c[1].at_ms = 1700000000123;
  c[1].u.idem.kind = ATP_IDEM_ADJUST;
  c[1].u.idem.id = ATP_STR("adj-7");
  c[1].u.idem.content_hash = 0x0102030405060708ull;
  c[1].u.idem.created_at_ms = 1700000000123;
  c[1].u.idem.flags = 1;
  c[1].u.idem.position = (atp_position_t){
      ATP_STR("sku-1"), ATP_STR("L1"), 15, 0, 0, 0, 15, 0, ATP_TIME_NONE, 3};
  c[1].u.idem.reservation_id = ATP_STR("");
  *ctx = (atp_change_ctx_t){.request_id = ATP_STR("req-1"),
                            .source = ATP_STR("erp"),
                            .reason = ATP_STR("received"),
                            .flow = ATP_STR("erp")};
}

/* What an adjustment's payload decodes to, whichever layout wrote it. */
static void check_adjust_decoded(const atp_records_t *out) {
  REQUIRE(out->count == 2);
  for (int i = 0; i < 2; i++) {
    const atp_change_t *c = &out->records[i];
    CHECK(str_eq(c->cause_id, "adj-7"));
    CHECK_EQ(c->cause, ATP_CAUSE_ADJUST);
    CHECK_EQ(c->at_ms, 1700000000123);
    CHECK(str_eq(out->contexts[i].request_id, "req-1"));
    CHECK(str_eq(out->contexts[i].source, "erp"));
    CHECK(str_eq(out->contexts[i].reason, "received"));
    CHECK(str_eq(out->contexts[i].flow, "erp"));
    CHECK(out->contexts[i].ref.len == 0);
  }
  const atp_change_position_t *p = &out->records[0].u.position;
  CHECK(str_eq(p->sku, "sku-1") && str_eq(p->location, "L1"));
  CHECK_EQ(p->d_on_hand, 5);
  CHECK_EQ(p->occurred_at_ms, 1700000000123);
  CHECK_EQ(p->version, 3);
  const atp_change_idem_t *m = &out->records[1].u.idem;
  CHECK_EQ(out->records[1].kind, ATP_CHANGE_IDEMPOTENCY);
  CHECK_EQ(m->kind, ATP_IDEM_ADJUST);
  CHECK(str_eq(m->id, "adj-7"));
  CHECK(m->content_hash == 0x0102030405060708ull);
  CHECK_EQ(m->created_at_ms, 1700000000123);
  CHECK_EQ(m->flags, 1);
  CHECK(str_eq(m->position.sku, "sku-1") && str_eq(m->position.location, "L1"));
  CHECK_EQ(m->position.on_hand, 15);
  CHECK_EQ(m->position.available, 15);
  CHECK(m->position.counted_at_ms == ATP_TIME_NONE);
  CHECK_EQ(m->position.version, 3);
  CHECK(m->reservation_id.len == 0);
}

/* The header's flags: a record leaves out what the one before it in the
 * payload says (the context, the cause id, an id's own id and position
 * strings). A payload written before them (all flags 0) still decodes to the
 * same records, and a flag without the record it leans on is refused. */
static void test_flags_compact_and_old_payloads(void) {
  atp_change_t in[2];
  atp_change_ctx_t ctx;
  adjust_records(in, &ctx);
  atp_records_t out;
  atp_records_init(&out);
  REQUIRE(atp_records_decode(adjust_payload_v0, sizeof adjust_payload_v0, &out) == 0);
  check_adjust_decoded(&out);
  atp_buf_t buf;
  atp_buf_init(&buf, 0);
  REQUIRE(atp_records_encode_ctx(&buf, in, 2, &ctx) == 0);
  /* The second record leaves out the id twice (its cause id and its id, 7
   * bytes each), the position's strings (11) and the context (28). */
  CHECK_EQ(buf.len, sizeof adjust_payload_v0 - 53);
  REQUIRE(atp_records_decode(buf.data, (uint32_t)buf.len, &out) == 0);
  check_adjust_decoded(&out);
  /* The second record starts after the count and the first record's header,
   * cause id and body; the first record is byte for byte as before. */
  size_t second = 4 + 16 + 7 + (size_t)(buf.data[8] | buf.data[9] << 8);
  CHECK(memcmp(buf.data + 4, adjust_payload_v0 + 4, second - 4) == 0);
  CHECK_EQ(buf.data[second + 2], 15);
  /* Each flag on a first record, which has nothing before it, is refused;
   * an idempotency record's flags on a position record too. */
  unsigned char *copy = atp_malloc(buf.len);
  for (unsigned f = 1; f < 32; f <<= 1) {
    memcpy(copy, buf.data, buf.len);
    copy[6] = (unsigned char)f;
    CHECK(atp_records_decode(copy, (uint32_t)buf.len, &out) == ATP_EBADREQ);
  }
  memcpy(copy, buf.data, buf.len);
  copy[second + 2] = 16; /* an unknown flag */
  CHECK(atp_records_decode(copy, (uint32_t)buf.len, &out) == ATP_EBADREQ);
  atp_change_t two_pos[2] = {in[0], in[0]};
  atp_buf_reset(&buf);
  REQUIRE(atp_records_encode_ctx(&buf, two_pos, 2, &ctx) == 0);
  REQUIRE(atp_records_decode(buf.data, (uint32_t)buf.len, &out) == 0);
  CHECK(str_eq(out.records[1].cause_id, "adj-7") &&
        str_eq(out.records[1].u.position.sku, "sku-1"));
  CHECK(str_eq(out.contexts[1].flow, "erp"));
  copy = atp_realloc(copy, buf.len);
  memcpy(copy, buf.data, buf.len);
  second = 4 + 16 + 7 + (size_t)(buf.data[8] | buf.data[9] << 8);
  CHECK_EQ(copy[second + 2], 3); /* context and cause id: a position has no id */
  copy[second + 2] = 3 | 8;
  CHECK(atp_records_decode(copy, (uint32_t)buf.len, &out) == ATP_EBADREQ);
  atp_free(copy);
  atp_records_free(&out);
  atp_buf_free(&buf);
}

TEST_MAIN(RUN(test_round_trip_every_field); RUN(test_malformed_refused);
          RUN(test_context_trailer); RUN(test_engine_replay_rebuilds_state);
          RUN(test_flags_compact_and_old_payloads))
