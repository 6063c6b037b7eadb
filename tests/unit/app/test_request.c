/* test_request.c - field readers, identifiers, RFC 3339, query strings,
 * tokens, ownership and configuration parsing. */
#include <string.h>

#include "atp/auth.h"
#include "atp/config.h"
#include "atp/error.h"
#include "atp/request.h"
#include "atp/router.h"
#include "test.h"

static atp_arena_t arena;
static atp_http_request_t http;
static atp_req_t rq;

static void req_setup(const char *query) {
  atp_arena_reset(&arena);
  memset(&http, 0, sizeof http);
  memset(&rq, 0, sizeof rq);
  http.query = query;
  http.query_len = strlen(query);
  http.arena = &arena;
  rq.http = &http;
  rq.arena = &arena;
}

static atp_val_t *json(const char *text) {
  atp_val_t *v = NULL;
  atp_parse_error_t err;
  if (atp_codec_parse(ATP_FORMAT_JSON, text, strlen(text), &arena, &v, &err) != 0)
    return NULL;
  return v;
}

static void test_id_check(void) {
  CHECK_EQ(atp_id_check("SKU-1", 5), 0);
  CHECK_EQ(atp_id_check("gid://shopify/ProductVariant/123", 32), 0);
  CHECK_EQ(atp_id_check("caf\xc3\xa9 bleu", 10), 0); /* UTF-8 and a space */
  CHECK_EQ(atp_id_check("", 0), ATP_EBADREQ);
  char big[130];
  memset(big, 'a', sizeof big);
  CHECK_EQ(atp_id_check(big, 128), 0);
  CHECK_EQ(atp_id_check(big, 129), ATP_EBADREQ);
  CHECK_EQ(atp_id_check("a\tb", 3), ATP_EBADREQ);
  CHECK_EQ(atp_id_check("a\x7f", 2), ATP_EBADREQ);
  CHECK_EQ(atp_id_check("a\xc2\x85", 3), ATP_EBADREQ);    /* C1 control NEL */
  CHECK_EQ(atp_id_check("a\xc3", 2), ATP_EBADREQ);        /* truncated */
  CHECK_EQ(atp_id_check("\xc0\xaf", 2), ATP_EBADREQ);     /* overlong */
  CHECK_EQ(atp_id_check("\xed\xa0\x80", 3), ATP_EBADREQ); /* surrogate */
  CHECK_EQ(atp_id_check("a\0b", 3), ATP_EBADREQ);
}

static void test_rfc3339(void) {
  int64_t ms = -1;
  CHECK_EQ(atp_time_parse_rfc3339("1970-01-01T00:00:00Z", 20, &ms), 0);
  CHECK_EQ(ms, 0);
  CHECK_EQ(atp_time_parse_rfc3339("2024-05-01T10:00:00Z", 20, &ms), 0);
  CHECK_EQ(ms, 1714557600000LL);
  CHECK_EQ(atp_time_parse_rfc3339("2024-05-01T12:00:00+02:00", 25, &ms), 0);
  CHECK_EQ(ms, 1714557600000LL);
  CHECK_EQ(atp_time_parse_rfc3339("2024-05-01T10:00:00.25Z", 23, &ms), 0);
  CHECK_EQ(ms, 1714557600250LL);
  CHECK_EQ(atp_time_parse_rfc3339("2024-05-01t09:30:00.123456-00:30", 32, &ms), 0);
  CHECK_EQ(ms, 1714557600123LL);
  CHECK_EQ(atp_time_parse_rfc3339("2024-02-29T00:00:00Z", 20, &ms), 0);
  CHECK_EQ(atp_time_parse_rfc3339("2023-02-29T00:00:00Z", 20, &ms), ATP_EBADREQ);
  CHECK_EQ(atp_time_parse_rfc3339("2024-04-31T00:00:00Z", 20, &ms), ATP_EBADREQ);
  CHECK_EQ(atp_time_parse_rfc3339("2024-05-01T10:00:00", 19, &ms), ATP_EBADREQ);
  CHECK_EQ(atp_time_parse_rfc3339("2024-05-01T24:00:00Z", 20, &ms), ATP_EBADREQ);
  CHECK_EQ(atp_time_parse_rfc3339("2024-05-01T10:00:00.Z", 21, &ms), ATP_EBADREQ);
  CHECK_EQ(atp_time_parse_rfc3339("2024-05-01T10:00:00Zx", 21, &ms), ATP_EBADREQ);
  CHECK_EQ(atp_time_parse_rfc3339("yesterday at noon!!!", 20, &ms), ATP_EBADREQ);
}

static void test_field_path(void) {
  char buf[64];
  atp_at_t lines = {"lines", 2, NULL};
  atp_field_path(buf, sizeof buf, &lines, "qty");
  CHECK(strcmp(buf, "lines[2].qty") == 0);
  atp_at_t nested = {"add", 0, &lines};
  atp_field_path(buf, sizeof buf, &nested, "sku");
  CHECK(strcmp(buf, "lines[2].add[0].sku") == 0);
  atp_field_path(buf, sizeof buf, NULL, "id");
  CHECK(strcmp(buf, "id") == 0);
  atp_field_path(buf, sizeof buf, &lines, NULL);
  CHECK(strcmp(buf, "lines[2]") == 0);
}

static void test_readers(void) {
  req_setup("");
  atp_val_t *b = json(
      "{\"id\":\"r-1\",\"qty\":3,\"neg\":-1,\"f\":1.5,\"s\":\"x\",\"ok\":true,"
      "\"t\":\"2024-05-01T10:00:00Z\",\"tm\":1714557600000,\"n\":null,"
      "\"lines\":[{\"qty\":1},{\"qty\":\"2\"},5],\"bad\":\"a\\u0001\"}");
  REQUIRE(b);
  atp_str_t s;
  int64_t i = 0;
  bool flag = false, present = true;
  CHECK_EQ(atp_get_id(&rq, b, NULL, "id", ATP_REQUIRED, &s), 0);
  CHECK(s.len == 3 && !memcmp(s.ptr, "r-1", 3));
  CHECK_EQ(atp_get_id(&rq, b, NULL, "missing", ATP_REQUIRED, &s), ATP_EBADREQ);
  CHECK(strcmp(rq.field, "missing") == 0);
  CHECK_EQ(atp_get_id(&rq, b, NULL, "missing", ATP_OPTIONAL, &s), 0);
  CHECK_EQ(s.len, 0);
  CHECK_EQ(atp_get_id(&rq, b, NULL, "n", ATP_OPTIONAL, &s), 0); /* null = absent */
  CHECK_EQ(atp_get_id(&rq, b, NULL, "qty", ATP_REQUIRED, &s), ATP_EBADREQ);
  CHECK_EQ(atp_get_id(&rq, b, NULL, "bad", ATP_REQUIRED, &s), ATP_EBADREQ);
  CHECK(strcmp(rq.field, "bad") == 0);
  CHECK_EQ(atp_get_int(&rq, b, NULL, "qty", ATP_REQUIRED, 1, 10, &i, &present), 0);
  CHECK(i == 3 && present);
  CHECK_EQ(atp_get_int(&rq, b, NULL, "neg", ATP_REQUIRED, 1, 10, &i, NULL),
           ATP_EBADREQ);
  CHECK(strcmp(rq.field, "neg") == 0);
  CHECK_EQ(atp_get_int(&rq, b, NULL, "f", ATP_REQUIRED, 0, 10, &i, NULL), ATP_EBADREQ);
  CHECK_EQ(atp_get_int(&rq, b, NULL, "s", ATP_REQUIRED, 0, 10, &i, NULL), ATP_EBADREQ);
  CHECK_EQ(atp_get_int(&rq, b, NULL, "absent", ATP_OPTIONAL, 0, 10, &i, &present), 0);
  CHECK(!present);
  CHECK_EQ(atp_get_bool(&rq, b, NULL, "ok", ATP_REQUIRED, &flag, NULL), 0);
  CHECK(flag);
  CHECK_EQ(atp_get_bool(&rq, b, NULL, "s", ATP_REQUIRED, &flag, NULL), ATP_EBADREQ);
  CHECK_EQ(atp_get_time(&rq, b, NULL, "t", ATP_REQUIRED, &i, NULL), 0);
  CHECK_EQ(i, 1714557600000LL);
  CHECK_EQ(atp_get_time(&rq, b, NULL, "tm", ATP_REQUIRED, &i, NULL), 0);
  CHECK_EQ(i, 1714557600000LL);
  CHECK_EQ(atp_get_time(&rq, b, NULL, "s", ATP_REQUIRED, &i, NULL), ATP_EBADREQ);
  CHECK_EQ(atp_get_time(&rq, b, NULL, "neg", ATP_REQUIRED, &i, NULL), ATP_EBADREQ);

  const atp_val_t *arr = NULL, *it = NULL;
  CHECK_EQ(atp_get_array(&rq, b, NULL, "lines", ATP_REQUIRED, 1, 2, &arr), ATP_EBADREQ);
  CHECK(strcmp(rq.field, "lines") == 0);
  CHECK_EQ(atp_get_array(&rq, b, NULL, "lines", ATP_REQUIRED, 1, 100, &arr), 0);
  REQUIRE(arr && arr->len == 3);
  CHECK_EQ(atp_get_item_object(&rq, arr, NULL, "lines", 1, &it), 0);
  atp_at_t at = {"lines", 1, NULL};
  CHECK_EQ(atp_get_int(&rq, it, &at, "qty", ATP_REQUIRED, 1, 10, &i, NULL),
           ATP_EBADREQ);
  CHECK(strcmp(rq.field, "lines[1].qty") == 0);
  CHECK_EQ(atp_get_item_object(&rq, arr, NULL, "lines", 2, &it), ATP_EBADREQ);
  CHECK(strcmp(rq.field, "lines[2]") == 0);
  CHECK_EQ(atp_get_array(&rq, b, NULL, "qty", ATP_REQUIRED, 1, 100, &arr), ATP_EBADREQ);
  /* A NULL object means every field is absent. */
  CHECK_EQ(atp_get_id(&rq, NULL, NULL, "id", ATP_OPTIONAL, &s), 0);
  CHECK_EQ(atp_get_id(&rq, NULL, NULL, "id", ATP_REQUIRED, &s), ATP_EBADREQ);
}

static void test_percent_decode(void) {
  req_setup("");
  atp_str_t out;
  const char *gid = "gid%3A%2F%2Fshopify%2FProductVariant%2F123";
  CHECK_EQ(atp_percent_decode(&arena, gid, strlen(gid), true, &out), 0);
  CHECK(out.len == 32 && !memcmp(out.ptr, "gid://shopify/ProductVariant/123", 32));
  CHECK_EQ(atp_percent_decode(&arena, "a+b%2Bc", 7, true, &out), 0);
  CHECK(out.len == 5 && !memcmp(out.ptr, "a b+c", 5));
  CHECK_EQ(atp_percent_decode(&arena, "a+b", 3, false, &out), 0);
  CHECK(out.len == 3 && !memcmp(out.ptr, "a+b", 3));
  CHECK_EQ(atp_percent_decode(&arena, "%zz", 3, true, &out), ATP_EBADREQ);
  CHECK_EQ(atp_percent_decode(&arena, "ab%4", 4, true, &out), ATP_EBADREQ);
  CHECK_EQ(atp_percent_decode(&arena, "ab%", 3, true, &out), ATP_EBADREQ);
}

static void test_query(void) {
  req_setup(
      "sku=gid%3A%2F%2Fshopify%2FProductVariant%2F123&location=store-01&&flag&group=");
  CHECK_EQ(atp_req_parse_query(&rq), 0);
  CHECK_EQ(rq.query_count, 4);
  const atp_str_t *v = atp_req_query(&rq, "sku");
  REQUIRE(v);
  CHECK(v->len == 32 && !memcmp(v->ptr, "gid://shopify/ProductVariant/123", 32));
  v = atp_req_query(&rq, "flag");
  REQUIRE(v);
  CHECK_EQ(v->len, 0);
  CHECK(atp_req_query(&rq, "nope") == NULL);
  atp_str_t id;
  CHECK_EQ(atp_query_id(&rq, "location", ATP_REQUIRED, &id), 0);
  CHECK(id.len == 8 && !memcmp(id.ptr, "store-01", 8));
  CHECK_EQ(atp_query_id(&rq, "group", ATP_OPTIONAL, &id), ATP_EBADREQ); /* empty */
  CHECK(strcmp(rq.field, "group") == 0);
  CHECK_EQ(atp_query_id(&rq, "missing", ATP_REQUIRED, &id), ATP_EBADREQ);
  CHECK_EQ(atp_query_id(&rq, "missing", ATP_OPTIONAL, &id), 0);

  req_setup("sku=%G1");
  CHECK_EQ(atp_req_parse_query(&rq), ATP_EBADREQ);
  req_setup(
      "a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&i=9&j=10&k=11&l=12&m=13&n=14&o=15&p=16&q=17");
  CHECK_EQ(atp_req_parse_query(&rq), ATP_EBADREQ);
  req_setup("");
  CHECK_EQ(atp_req_parse_query(&rq), 0);
  CHECK_EQ(rq.query_count, 0);
}

static atp_auth_t auth;

static void test_tokens(void) {
  char err[200];
  const char *file =
      "# atpd tokens\n"
      "tok-read read\n"
      "  tok-checkout   checkout  # the web shop\n"
      "\n"
      "tok-int integration\r\n"
      "tok-ops ops\n";
  CHECK_EQ(atp_auth_parse(&auth, file, strlen(file), err, sizeof err), 0);
  CHECK_EQ(auth.count, 4);
  CHECK_EQ(atp_auth_role(&auth, "Bearer tok-read", 15), ATP_ROLE_READ);
  CHECK_EQ(atp_auth_role(&auth, "bearer tok-checkout", 19), ATP_ROLE_CHECKOUT);
  CHECK_EQ(atp_auth_role(&auth, "Bearer tok-int", 14), ATP_ROLE_INTEGRATION);
  CHECK_EQ(atp_auth_role(&auth, "Bearer tok-ops", 14), ATP_ROLE_OPS);
  CHECK_EQ(atp_auth_role(&auth, "Bearer tok-op", 13), ATP_ROLE_NONE);
  CHECK_EQ(atp_auth_role(&auth, "Bearer tok-opsx", 15), ATP_ROLE_NONE);
  CHECK_EQ(atp_auth_role(&auth, "Basic tok-ops", 13), ATP_ROLE_NONE);
  CHECK_EQ(atp_auth_role(&auth, "tok-ops", 7), ATP_ROLE_NONE);
  CHECK_EQ(atp_auth_role(&auth, NULL, 0), ATP_ROLE_NONE);

  const char *h = "Bearer tok-read";
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_READ, h, strlen(h)), 0);
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_CHECKOUT, h, strlen(h)), ATP_EFORBIDDEN);
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_OPEN, NULL, 0), 0);
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_READ, NULL, 0), ATP_EUNAUTH);
  CHECK_EQ(atp_auth_check(NULL, ATP_ACCESS_OPS, NULL, 0), 0);
  h = "Bearer tok-checkout";
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_CHECKOUT, h, strlen(h)), 0);
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_INTEGRATION, h, strlen(h)), ATP_EFORBIDDEN);
  h = "Bearer tok-int";
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_INTEGRATION, h, strlen(h)), 0);
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_CHECKOUT, h, strlen(h)), ATP_EFORBIDDEN);
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_READ, h, strlen(h)), 0);
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_OPS, h, strlen(h)), ATP_EFORBIDDEN);
  h = "Bearer tok-ops";
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_CHECKOUT, h, strlen(h)), 0);
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_INTEGRATION, h, strlen(h)), 0);
  CHECK_EQ(atp_auth_check(&auth, ATP_ACCESS_OPS, h, strlen(h)), 0);

  CHECK_EQ(atp_auth_parse(&auth, "t1 admin\n", 9, err, sizeof err), ATP_EBADREQ);
  CHECK(strstr(err, "line 1") != NULL);
  CHECK_EQ(atp_auth_parse(&auth, "t1 read\nt1 ops\n", 15, err, sizeof err),
           ATP_EBADREQ);
  CHECK(strstr(err, "duplicate") != NULL);
  CHECK_EQ(atp_auth_parse(&auth, "t1\n", 3, err, sizeof err), ATP_EBADREQ);
  CHECK_EQ(atp_auth_parse(&auth, "# nothing\n", 10, err, sizeof err), ATP_EBADREQ);
}

static atp_ownership_t own;

static void test_ownership(void) {
  char err[200];
  const char *file =
      "{\"fields\": {\"counts\": {\"writers\": [\"erp\", \"wms\"], \"owner\": "
      "\"inventory-control\"},"
      "\"reservations\": {\"writers\": [\"checkout\", \"pos\"], \"owner\": "
      "\"ecommerce\"},"
      "\"dead_letters\": {\"writers\": []}}}";
  CHECK_EQ(atp_ownership_parse(&own, file, strlen(file), err, sizeof err), 0);
  CHECK(atp_ownership_allows(&own, ATP_FIELD_COUNTS, ATP_STR("erp")));
  CHECK(atp_ownership_allows(&own, ATP_FIELD_COUNTS, ATP_STR("wms")));
  CHECK(!atp_ownership_allows(&own, ATP_FIELD_COUNTS, ATP_STR("pos")));
  CHECK(!atp_ownership_allows(&own, ATP_FIELD_COUNTS, ATP_STR("er")));
  CHECK(!atp_ownership_allows(&own, ATP_FIELD_COUNTS, (atp_str_t){"", 0}));
  CHECK(atp_ownership_allows(&own, ATP_FIELD_ADJUSTMENTS, ATP_STR("anyone")));
  CHECK(atp_ownership_allows(&own, ATP_FIELD_ADJUSTMENTS, (atp_str_t){"", 0}));
  CHECK(atp_ownership_allows(NULL, ATP_FIELD_COUNTS, ATP_STR("pos")));
  atp_str_t o = atp_ownership_owner(&own, ATP_FIELD_COUNTS, ATP_STR("pos"));
  CHECK(o.len == 17 && !memcmp(o.ptr, "inventory-control", 17));
  o = atp_ownership_owner(&own, ATP_FIELD_GROUPS, ATP_STR("pos"));
  CHECK(o.len == 3 && !memcmp(o.ptr, "pos", 3));
  CHECK_EQ(atp_ownership_parse(&own, "{\"fields\": 3}", 13, err, sizeof err),
           ATP_EBADREQ);
  CHECK_EQ(atp_ownership_parse(&own, "{\"fields\": {\"counts\": {\"writers\": [1]}}}",
                               40, err, sizeof err),
           ATP_EBADREQ);
  CHECK_EQ(atp_ownership_parse(&own, "{", 1, err, sizeof err), ATP_EBADREQ);
}

static const char *fake_env(const char *name) {
  if (!strcmp(name, "ATPD_LISTEN")) return "0.0.0.0:9000";
  if (!strcmp(name, "ATPD_THREADS")) return "3";
  if (!strcmp(name, "ATPD_DURABILITY")) return "none";
  return NULL;
}

static void test_config(void) {
  atp_config_t cfg;
  char err[256];
  char *argv1[] = {"atpd",
                   "--threads",
                   "5",
                   "--redis",
                   "redis://cache:6380/2",
                   "--snapshot-interval-s=60",
                   "--demo",
                   NULL};
  CHECK_EQ(atp_config_load(&cfg, 7, argv1, fake_env, err, sizeof err), 0);
  CHECK(strcmp(cfg.host, "0.0.0.0") == 0);
  CHECK_EQ(cfg.port, 9000);
  CHECK_EQ(cfg.threads, 5); /* the flag wins over ATPD_THREADS */
  CHECK_EQ(cfg.durability, ATP_DURABILITY_NONE);
  CHECK(strcmp(cfg.redis_host, "cache") == 0);
  CHECK_EQ(cfg.redis_port, 6380);
  CHECK_EQ(cfg.redis_db, 2);
  CHECK_EQ(cfg.snapshot_interval_s, 60);
  CHECK(cfg.demo);
  char *argv2[] = {"atpd", "--threads", "65", NULL};
  CHECK_EQ(atp_config_load(&cfg, 3, argv2, fake_env, err, sizeof err), ATP_EBADREQ);
  CHECK(strstr(err, "--threads") != NULL);
  char *argv3[] = {"atpd", "--listen", "localhost", NULL};
  CHECK_EQ(atp_config_load(&cfg, 3, argv3, fake_env, err, sizeof err), ATP_EBADREQ);
  char *argv4[] = {"atpd", "--durability", "sometimes", NULL};
  CHECK_EQ(atp_config_load(&cfg, 3, argv4, fake_env, err, sizeof err), ATP_EBADREQ);
  char *argv5[] = {"atpd", "--redis", "http://x:1", NULL};
  CHECK_EQ(atp_config_load(&cfg, 3, argv5, fake_env, err, sizeof err), ATP_EBADREQ);
  char *argv6[] = {"atpd", "--tokens", "/nonexistent/tokens", NULL};
  CHECK_EQ(atp_config_load(&cfg, 3, argv6, fake_env, err, sizeof err), ATP_EBADREQ);
  char *argv7[] = {"atpd", "--bogus", NULL};
  CHECK_EQ(atp_config_load(&cfg, 2, argv7, fake_env, err, sizeof err), ATP_EBADREQ);
  char *argv8[] = {"atpd", "--routes", "--listen", "[::1]:0", NULL};
  CHECK_EQ(atp_config_load(&cfg, 4, argv8, NULL, err, sizeof err), 0);
  CHECK(cfg.print_routes);
  CHECK(strcmp(cfg.host, "::1") == 0);
  CHECK_EQ(cfg.port, 0);
  CHECK_EQ(cfg.clock_skew_ms, 300000); /* the default */
}

static const char *skew_env(const char *name) {
  return strcmp(name, "ATPD_CLOCK_SKEW_MS") == 0 ? "2500" : NULL;
}

static void test_config_clock_skew(void) {
  atp_config_t cfg;
  char err[256];
  char *none[] = {"atpd", NULL};
  CHECK_EQ(atp_config_load(&cfg, 1, none, skew_env, err, sizeof err), 0);
  CHECK_EQ(cfg.clock_skew_ms, 2500);
  char *flag[] = {"atpd", "--clock-skew-ms", "1000", NULL};
  CHECK_EQ(atp_config_load(&cfg, 3, flag, skew_env, err, sizeof err), 0);
  CHECK_EQ(cfg.clock_skew_ms, 1000); /* the flag wins */
  char *eq[] = {"atpd", "--clock-skew-ms=86400000", NULL};
  CHECK_EQ(atp_config_load(&cfg, 2, eq, NULL, err, sizeof err), 0);
  CHECK_EQ(cfg.clock_skew_ms, 86400000);
  const char *bad[] = {"0", "-1", "86400001", "5s", ""};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    char *argv[] = {"atpd", "--clock-skew-ms", (char *)bad[i], NULL};
    CHECK_EQ(atp_config_load(&cfg, 3, argv, NULL, err, sizeof err), ATP_EBADREQ);
    CHECK(strstr(err, "--clock-skew-ms") != NULL);
  }
  CHECK(strstr(atp_config_usage(), "--clock-skew-ms") != NULL);
}

static int64_t fixed_clock(void *ctx) {
  return *(const int64_t *)ctx;
}

static void test_time_not_future(void) {
  /* No app: the real clock and the default skew. */
  req_setup("");
  atp_val_t *b = json(
      "{\"past\": 1714557600000, \"far\": 4102444800000, "
      "\"far_s\": \"2100-01-01T00:00:00Z\"}");
  REQUIRE(b != NULL);
  int64_t ms = 0;
  CHECK_EQ(atp_get_time(&rq, b, NULL, "past", ATP_REQUIRED, &ms, NULL), 0);
  CHECK_EQ(atp_get_time(&rq, b, NULL, "far", ATP_REQUIRED, &ms, NULL), ATP_EBADREQ);
  CHECK(strcmp(rq.field, "far") == 0);
  CHECK(strstr(rq.message, "future") != NULL);
  atp_at_t at = {"positions", 3, NULL};
  CHECK_EQ(atp_get_time(&rq, b, &at, "far_s", ATP_OPTIONAL, &ms, NULL), ATP_EBADREQ);
  CHECK(strcmp(rq.field, "positions[3].far_s") == 0);
  CHECK_EQ(atp_get_time(&rq, b, NULL, "far", ATP_FUTURE_OK, &ms, NULL), 0);
  CHECK_EQ(ms, 4102444800000LL);

  /* With an app: the engine's clock and the app's skew. */
  int64_t now_ms = 1714557600000LL;
  atp_engine_config_t ec;
  memset(&ec, 0, sizeof ec);
  ec.positions_max = 64;
  ec.reservations_max = 64;
  ec.idempotency_max = 64;
  ec.clock = fixed_clock;
  ec.clock_ctx = &now_ms;
  atp_engine_t *engine = NULL;
  REQUIRE(atp_engine_create(&ec, &engine) == 0);
  static atp_app_t app;
  atomic_init(&app.engine, engine);
  app.clock_skew_ms = 1000;
  rq.app = &app;
  CHECK_EQ(atp_req_time_check(&rq, NULL, "as_of", now_ms + 1000), 0);
  CHECK_EQ(atp_req_time_check(&rq, NULL, "as_of", now_ms + 1001), ATP_EBADREQ);
  CHECK(strcmp(rq.field, "as_of") == 0);
  CHECK_EQ(atp_get_time(&rq, b, NULL, "past", ATP_REQUIRED, &ms, NULL), 0);
  app.clock_skew_ms = 0; /* unset: the default */
  CHECK_EQ(atp_req_time_check(&rq, NULL, "t", now_ms + ATP_CLOCK_SKEW_MS_DEFAULT), 0);
  CHECK_EQ(atp_req_time_check(&rq, NULL, "t", now_ms + ATP_CLOCK_SKEW_MS_DEFAULT + 1),
           ATP_EBADREQ);
  rq.app = NULL;
  atp_engine_destroy(engine);
}

TEST_MAIN({
  atp_arena_init(&arena, 4096, 1 << 20);
  RUN(test_id_check);
  RUN(test_rfc3339);
  RUN(test_field_path);
  RUN(test_readers);
  RUN(test_percent_decode);
  RUN(test_query);
  RUN(test_tokens);
  RUN(test_ownership);
  RUN(test_config);
  RUN(test_config_clock_skew);
  RUN(test_time_not_future);
  atp_arena_destroy(&arena);
})
