/* test_router.c - route matching, body limits and the dispatcher end to end
 * (auth, ownership, readiness, media types, negotiation, metrics) with a real
 * engine and fake HTTP requests. */
#include <string.h>

#include "atp/error.h"
#include "atp/router.h"
#include "test.h"

/* fake_t literals name only the leading fields; the rest are NULL. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

static atp_arena_t arena;

static const atp_route_t *match(atp_http_method_t m, const char *path,
                                atp_str_t *params, uint32_t *n, bool *known, int *err) {
  return atp_router_match(m, path, strlen(path), &arena, params, n, known, err);
}

static void test_match(void) {
  atp_str_t p[ATP_ROUTE_PARAMS_MAX];
  uint32_t n = 0;
  bool known = false;
  int err = 0;
  const atp_route_t *r = match(ATP_HTTP_GET, "/v1/availability", p, &n, &known, &err);
  REQUIRE(r);
  CHECK(r->handler == atp_route_availability_get);
  CHECK_EQ(n, 0);
  r = match(ATP_HTTP_POST, "/v1/reservations/res-1/commit", p, &n, &known, &err);
  REQUIRE(r);
  CHECK(r->handler == atp_route_reservation_commit);
  CHECK(n == 1 && p[0].len == 5 && !memcmp(p[0].ptr, "res-1", 5));
  r = match(ATP_HTTP_POST, "/v1/reservations", p, &n, &known, &err);
  REQUIRE(r);
  CHECK(r->handler == atp_route_reservation_create);
  r = match(ATP_HTTP_GET, "/v1/reservations/gid%3A%2F%2Fshopify%2FOrder%2F9", p, &n,
            &known, &err);
  REQUIRE(r);
  CHECK(r->handler == atp_route_reservation_get);
  CHECK(n == 1 && p[0].len == 21 && !memcmp(p[0].ptr, "gid://shopify/Order/9", 21));
  r = match(ATP_HTTP_GET, "/v1/groups/a+b", p, &n, &known,
            &err); /* '+' stays in paths */
  REQUIRE(r);
  CHECK(p[0].len == 3 && !memcmp(p[0].ptr, "a+b", 3));
  r = match(ATP_HTTP_DELETE, "/v1/groups/north", p, &n, &known, &err);
  REQUIRE(r);
  CHECK(r->handler == atp_route_group_delete);
  r = match(ATP_HTTP_PUT, "/v1/groups/north", p, &n, &known, &err);
  REQUIRE(r);
  CHECK(r->handler == atp_route_group_put);

  /* Unknown paths, empty params, trailing slashes, extra segments. */
  CHECK(!match(ATP_HTTP_GET, "/v1/nope", p, &n, &known, &err));
  CHECK(!known);
  CHECK(!match(ATP_HTTP_GET, "/v1/availability/", p, &n, &known, &err));
  CHECK(!match(ATP_HTTP_GET, "/v1/reservations/", p, &n, &known, &err));
  CHECK(!match(ATP_HTTP_POST, "/v1/reservations//commit", p, &n, &known, &err));
  CHECK(!match(ATP_HTTP_POST, "/v1/reservations/a/b/commit", p, &n, &known, &err));
  CHECK(!match(ATP_HTTP_GET, "/v1/availabilityx", p, &n, &known, &err));
  CHECK(!match(ATP_HTTP_GET, "", p, &n, &known, &err));
  /* Known path, other method: 405. */
  CHECK(!match(ATP_HTTP_DELETE, "/v1/availability", p, &n, &known, &err));
  CHECK(known);
  CHECK(!match(ATP_HTTP_GET, "/v1/reservations/x/commit", p, &n, &known, &err));
  CHECK(known);
  /* A bad escape in a param. */
  CHECK(!match(ATP_HTTP_GET, "/v1/reservations/%zz", p, &n, &known, &err));
  CHECK_EQ(err, ATP_EBADREQ);
}

static void test_table(void) {
  uint32_t count = 0;
  const atp_route_t *routes = atp_routes(&count);
  CHECK(count >= 18);
  CHECK(count < ATP_METRICS_ROUTES_MAX);
  for (uint32_t i = 0; i < count; i++) {
    CHECK(routes[i].handler != NULL);
    CHECK(routes[i].pattern[0] == '/');
    CHECK_EQ(atp_route_index(&routes[i]), i);
    /* Shopify's webhooks carry a signature, not a bearer token: the one open
     * route under /v1 (its handler checks the HMAC). */
    bool webhook = strcmp(routes[i].pattern, "/v1/shopify/webhooks") == 0;
    bool open = webhook || (strncmp(routes[i].pattern, "/v1/", 4) != 0 &&
                            strncmp(routes[i].pattern, "/admin/", 7) != 0);
    CHECK(open == (routes[i].access == ATP_ACCESS_OPEN));
  }
  CHECK_EQ(atp_route_index(NULL), count);
}

static void test_body_limit(void) {
  CHECK_EQ(atp_router_body_limit(NULL, ATP_HTTP_POST, "/v1/reservations", 16),
           ATP_HTTP_BODY_BYTES_MAX);
  CHECK_EQ(atp_router_body_limit(NULL, ATP_HTTP_POST, "/v1/batch", 9),
           ATP_HTTP_BULK_BODY_BYTES_MAX);
  CHECK_EQ(atp_router_body_limit(NULL, ATP_HTTP_POST, "/v1/reconciliations", 19),
           ATP_HTTP_BULK_BODY_BYTES_MAX);
  /* apply and close take a small body: the default limit, from the table. */
  CHECK_EQ(
      atp_router_body_limit(NULL, ATP_HTTP_POST, "/v1/reconciliations/x/apply", 27),
      ATP_HTTP_BODY_BYTES_MAX);
  CHECK_EQ(atp_router_body_limit(NULL, ATP_HTTP_POST, "/v1/batchx", 10),
           ATP_HTTP_BODY_BYTES_MAX);
  CHECK_EQ(atp_router_body_limit(NULL, ATP_HTTP_GET, "/nope", 5),
           ATP_HTTP_BODY_BYTES_MAX);
}

/* --- dispatch ------------------------------------------------------------------ */

static atp_app_t app;
static atp_auth_t auth;
static atp_ownership_t own;
static atp_buf_t body;
static atp_http_response_t res;
static uint64_t next_id = 1;

typedef struct {
  atp_http_method_t method;
  const char *path; /* may include ?query */
  const char *body;
  const char *content_type;
  const char *accept;
  const char *authorization;
} fake_t;

/* Runs one request through the handler and the log hook; returns the status. */
static int call(fake_t f) {
  atp_http_request_t req;
  memset(&req, 0, sizeof req);
  static char path[512];
  snprintf(path, sizeof path, "%s", f.path);
  char *q = strchr(path, '?');
  req.method = f.method;
  req.method_name = "X";
  req.path = path;
  req.path_len = q ? (size_t)(q - path) : strlen(path);
  req.query = q ? q + 1 : "";
  req.query_len = strlen(req.query);
  if (q) *q = '\0';
  req.body = f.body ? f.body : "";
  req.body_len = f.body ? strlen(f.body) : 0;
#define HDR(name)                      \
  do {                                 \
    if (f.name) {                      \
      req.name = f.name;               \
      req.name##_len = strlen(f.name); \
    }                                  \
  } while (0)
  HDR(content_type);
  HDR(accept);
  HDR(authorization);
#undef HDR
  req.arena = &arena;
  req.request_id = next_id++;
  memset(&res, 0, sizeof res);
  atp_buf_reset(&body);
  res.body = &body;
  atp_router_handle(&app, &req, &res);
  atp_router_log(&app, &req, res.status, body.len, 1000);
  atp_arena_reset(&arena);
  return res.status;
}

static bool body_has(const char *s) {
  return body.len && memmem(body.data, body.len, s, strlen(s)) != NULL;
}

#define JSON "application/json"

static void test_dispatch_basics(void) {
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/healthz"}), 200);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/nope"}), 404);
  CHECK(body_has("\"code\":\"not_found\""));
  CHECK_EQ(call((fake_t){ATP_HTTP_DELETE, "/v1/availability"}), 405);
  CHECK(body_has("\"error\""));
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=nope&location=x"}), 404);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?location=x"}), 400);
  CHECK(body_has("\"field\":\"sku\""));
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=a&location=x&group=g"}),
           400);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=%zz"}), 400);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=a&group=nope"}), 404);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=never"}), 200);
  CHECK(body_has("\"locations\":[]"));
  /* Media types: a body in anything else is 415, a bodiless GET is fine. */
  CHECK_EQ(call((fake_t){ATP_HTTP_POST, "/v1/adjustments", "a=b", "text/plain"}), 415);
  CHECK_EQ(call((fake_t){ATP_HTTP_POST, "/v1/adjustments", "{}", NULL}), 415);
  CHECK_EQ(call((fake_t){ATP_HTTP_POST, "/v1/adjustments", NULL, JSON}), 400);
  CHECK_EQ(call((fake_t){ATP_HTTP_POST, "/v1/adjustments", "[1]", JSON}), 400);
  CHECK_EQ(call((fake_t){ATP_HTTP_POST, "/v1/adjustments", "{\"id\":", JSON}), 400);
  /* Accept picks the response format, errors included. */
  CHECK_EQ(
      call((fake_t){ATP_HTTP_GET, "/v1/nope", NULL, NULL, "application/x-msgpack"}),
      404);
  CHECK(res.content_type && strstr(res.content_type, "msgpack"));
  CHECK((unsigned char)body.data[0] >= 0x80); /* a msgpack map, not '{' */
}

static void test_dispatch_stock(void) {
  const char *adj =
      "{\"id\":\"t-adj-1\",\"sku\":\"S1\",\"location\":\"L1\",\"delta\":7,"
      "\"reason\":\"received\",\"source\":\"erp\"}";
  CHECK_EQ(call((fake_t){ATP_HTTP_POST, "/v1/adjustments", adj, JSON}), 200);
  CHECK(body_has("\"on_hand\":7"));
  CHECK(!body_has("replayed"));
  CHECK_EQ(call((fake_t){ATP_HTTP_POST, "/v1/adjustments", adj, JSON}), 200);
  CHECK(body_has("\"replayed\":true"));
  CHECK_EQ(call((fake_t){
               ATP_HTTP_POST, "/v1/adjustments",
               "{\"id\":\"t-adj-2\",\"sku\":\"S1\",\"location\":\"L1\",\"delta\":0,"
               "\"reason\":\"received\",\"source\":\"erp\"}",
               JSON}),
           400);
  CHECK(body_has("\"field\":\"delta\""));
  CHECK_EQ(call((fake_t){
               ATP_HTTP_POST, "/v1/adjustments",
               "{\"id\":\"t-adj-3\",\"sku\":\"S1\",\"location\":\"L1\",\"delta\":1,"
               "\"reason\":\"gift\",\"source\":\"erp\"}",
               JSON}),
           400);
  CHECK(body_has("\"field\":\"reason\""));
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=S1&location=L1"}), 200);
  CHECK(body_has("\"available\":7"));
  CHECK_EQ(
      call((fake_t){ATP_HTTP_POST, "/v1/reservations",
                    "{\"id\":\"t-r-1\",\"lines\":[{\"sku\":\"S1\",\"location\":\"L1\","
                    "\"qty\":2}]}",
                    JSON}),
      201);
  CHECK_EQ(
      call((fake_t){ATP_HTTP_POST, "/v1/reservations",
                    "{\"id\":\"t-r-2\",\"lines\":[{\"sku\":\"S1\",\"location\":\"L1\","
                    "\"qty\":99}]}",
                    JSON}),
      409);
  CHECK(body_has("\"shortfalls\""));
  CHECK_EQ(
      call((fake_t){ATP_HTTP_POST, "/v1/reservations",
                    "{\"id\":\"t-r-3\",\"lines\":[{\"sku\":\"S1\",\"location\":\"L1\","
                    "\"qty\":1},{\"sku\":\"S1\",\"qty\":1}]}",
                    JSON}),
      400);
  CHECK(body_has("\"field\":\"lines[1].location\""));
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/reservations/t-r-1"}), 200);
  CHECK(body_has("\"status\":\"held\""));
  CHECK_EQ(call((fake_t){ATP_HTTP_POST, "/v1/reservations/t-r-1/release", NULL, NULL}),
           200);
  CHECK_EQ(call((fake_t){ATP_HTTP_POST, "/v1/reservations/t-r-1/extend",
                         "{\"ttl_ms\":5000}", JSON}),
           409);
  CHECK(body_has("\"status\":\"released\""));
  CHECK_EQ(call((fake_t){ATP_HTTP_PUT, "/v1/groups/g1",
                         "{\"locations\":[\"L1\",\"L1\"]}", JSON}),
           400);
  CHECK(body_has("\"field\":\"locations[1]\""));
  CHECK_EQ(call((fake_t){ATP_HTTP_PUT, "/v1/groups/g1",
                         "{\"locations\":[\"L2\",\"L1\"]}", JSON}),
           200);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=S1&group=g1"}), 200);
  CHECK(body_has("\"found\":false"));
  CHECK(body_has("\"available\":7"));
  CHECK_EQ(call((fake_t){ATP_HTTP_DELETE, "/v1/groups/g1"}), 204);
  CHECK_EQ(body.len, 0);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/groups/g1"}), 404);
}

static void test_dispatch_auth(void) {
  char err[128];
  const char *tokens = "tr read\ntc checkout\nti integration\nto ops\n";
  REQUIRE(atp_auth_parse(&auth, tokens, strlen(tokens), err, sizeof err) == 0);
  app.auth = &auth;
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=S1"}), 401);
  CHECK(body_has("unauthorized"));
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=S1", NULL, NULL, NULL,
                         "Bearer wrong"}),
           401);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=S1", NULL, NULL, NULL,
                         "Bearer tr"}),
           200);
  CHECK_EQ(
      call((fake_t){ATP_HTTP_GET, "/v1/reservations/x", NULL, NULL, NULL, "Bearer tr"}),
      403);
  CHECK(body_has("forbidden"));
  CHECK_EQ(
      call((fake_t){ATP_HTTP_GET, "/v1/reservations/x", NULL, NULL, NULL, "Bearer tc"}),
      404);
  CHECK_EQ(
      call((fake_t){ATP_HTTP_GET, "/v1/reservations/x", NULL, NULL, NULL, "Bearer ti"}),
      403);
  CHECK_EQ(
      call((fake_t){ATP_HTTP_DELETE, "/v1/groups/x", NULL, NULL, NULL, "Bearer tc"}),
      403);
  CHECK_EQ(
      call((fake_t){ATP_HTTP_DELETE, "/v1/groups/x", NULL, NULL, NULL, "Bearer ti"}),
      404);
  CHECK_EQ(
      call((fake_t){ATP_HTTP_DELETE, "/v1/groups/x", NULL, NULL, NULL, "Bearer to"}),
      404);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/metrics"}), 200);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/healthz"}), 200);
  /* /admin/snapshot is ops only (contract section 8). */
  static const char *not_ops[] = {"Bearer tr", "Bearer tc", "Bearer ti"};
  for (size_t i = 0; i < 3; i++) {
    CHECK_EQ(
        call((fake_t){ATP_HTTP_GET, "/admin/snapshot", NULL, NULL, NULL, not_ops[i]}),
        403);
    CHECK_EQ(
        call((fake_t){ATP_HTTP_POST, "/admin/snapshot", NULL, NULL, NULL, not_ops[i]}),
        403);
  }
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/admin/snapshot"}), 401);
  CHECK(call((fake_t){ATP_HTTP_GET, "/admin/snapshot", NULL, NULL, NULL,
                      "Bearer to"}) != 403);

  /* Unknown routes and methods behind /v1 and /admin: 401 first, so the route
   * table cannot be mapped without a token; with one, 404 and 405. */
  static const char *hidden[] = {"/v1/nope", "/v1",         "/v1/",
                                 "/admin",   "/admin/nope", "/v1/reservations/%zz"};
  for (size_t i = 0; i < sizeof hidden / sizeof hidden[0]; i++) {
    CHECK_EQ(call((fake_t){ATP_HTTP_GET, hidden[i]}), 401);
    CHECK(body_has("unauthorized"));
    CHECK_EQ(call((fake_t){ATP_HTTP_GET, hidden[i], NULL, NULL, NULL, "Bearer wrong"}),
             401);
    int st = call((fake_t){ATP_HTTP_GET, hidden[i], NULL, NULL, NULL, "Bearer tr"});
    CHECK(st == 404 || st == 400);
  }
  CHECK_EQ(call((fake_t){ATP_HTTP_PATCH, "/v1/availability"}), 401);
  CHECK_EQ(
      call((fake_t){ATP_HTTP_PATCH, "/v1/availability", NULL, NULL, NULL, "Bearer tr"}),
      405);
  /* Open paths stay open. */
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/nope"}), 404);
  CHECK_EQ(call((fake_t){ATP_HTTP_POST, "/healthz"}), 405);
  app.auth = NULL;
}

/* The holder column and its getter. */
static void test_holder(void) {
  char err[128];
  const char *tokens = "tr read\nth ops alice@example.com\n";
  REQUIRE(atp_auth_parse(&auth, tokens, strlen(tokens), err, sizeof err) == 0);
  CHECK(strcmp(auth.entries[1].holder, "alice@example.com") == 0);
  CHECK(auth.entries[0].holder[0] == '\0');
  const char *holder = "x";
  CHECK_EQ(atp_auth_identify(&auth, "Bearer th", 9, &holder), ATP_ROLE_OPS);
  CHECK(strcmp(holder, "alice@example.com") == 0);
  CHECK_EQ(atp_auth_identify(&auth, "Bearer tr", 9, &holder), ATP_ROLE_READ);
  CHECK(strcmp(holder, "") == 0);
  CHECK_EQ(atp_auth_identify(&auth, "Bearer tx", 9, &holder), ATP_ROLE_NONE);
  CHECK(strcmp(holder, "") == 0);
  atp_http_request_t req;
  memset(&req, 0, sizeof req);
  req.authorization = "Bearer th";
  req.authorization_len = 9;
  atp_req_t rq;
  memset(&rq, 0, sizeof rq);
  rq.app = &app;
  rq.http = &req;
  CHECK(strcmp(atp_req_holder(&rq), "") == 0); /* auth off */
  app.auth = &auth;
  CHECK(strcmp(atp_req_holder(&rq), "alice@example.com") == 0);
  app.auth = NULL;
  /* The grammar's refusals; the strength rules are atp_auth_token_check's. */
  CHECK_EQ(atp_auth_parse(&auth, "t r read x y\n", 13, err, sizeof err), ATP_EBADREQ);
  CHECK_EQ(atp_auth_parse(&auth, "t read a\x01b\n", 13, err, sizeof err), ATP_EBADREQ);
  CHECK(strstr(err, "holder"));
  CHECK_EQ(
      atp_auth_token_check((const uint8_t *)"0123456789abcdef", 16, err, sizeof err),
      0);
  CHECK_EQ(
      atp_auth_token_check((const uint8_t *)"0123456789abcde", 15, err, sizeof err),
      ATP_EBADREQ);
  CHECK_EQ(
      atp_auth_token_check((const uint8_t *)"REPLACE-0123456789", 18, err, sizeof err),
      ATP_EBADREQ);
  CHECK_EQ(
      atp_auth_token_check((const uint8_t *)"0123456789\tabcdef", 17, err, sizeof err),
      ATP_EBADREQ);
}

/* The HTTP server's own refusals, rendered by the router's hook. */
static void test_error_hook(void) {
  atp_http_request_t req;
  memset(&req, 0, sizeof req);
  req.arena = &arena;
  req.accept = "application/msgpack";
  req.accept_len = strlen(req.accept);
  memset(&res, 0, sizeof res);
  atp_buf_reset(&body);
  res.body = &body;
  atp_router_error(&app, &req, ATP_ETOOLARGE, "too big", &res);
  CHECK_EQ(res.status, 413);
  CHECK(strcmp(res.content_type, "application/msgpack") == 0);
  CHECK(body_has("payload_too_large") && body_has("too big"));
  memset(&req, 0, sizeof req);
  req.arena = &arena;
  req.content_type = "application/x-msgpack";
  req.content_type_len = strlen(req.content_type);
  atp_buf_reset(&body);
  atp_router_error(&app, &req, ATP_EURITOOLONG, "long", &res);
  CHECK_EQ(res.status, 414);
  CHECK(strcmp(res.content_type, "application/msgpack") == 0);
  CHECK(body_has("uri_too_long"));
  memset(&req, 0, sizeof req);
  req.arena = &arena;
  atp_buf_reset(&body);
  atp_router_error(&app, &req, ATP_EHEADERS, "big head", &res);
  CHECK_EQ(res.status, 431);
  CHECK(strcmp(res.content_type, "application/json") == 0);
  CHECK(body_has("{\"error\":{\"code\":\"bad_request\",\"message\":\"big head\"}}"));
  atp_arena_reset(&arena);
}

/* A repeated query parameter is refused, naming it. */
static void test_duplicate_query(void) {
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=a&sku=b"}), 400);
  CHECK(body_has("\"field\":\"sku\""));
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=a&location=x&sku=a"}),
           400);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?s%6Bu=a&sku=b"}), 400);
  CHECK(body_has("\"field\":\"sku\""));
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=a"}), 200);
}

static void test_dispatch_ownership(void) {
  char err[128];
  const char *file =
      "{\"fields\":{\"adjustments\":{\"writers\":[\"pos\"],\"owner\":\"store-ops\"},"
      "\"reservations\":{\"writers\":[\"web\"]}}}";
  REQUIRE(atp_ownership_parse(&own, file, strlen(file), err, sizeof err) == 0);
  app.ownership = &own;
  CHECK_EQ(
      call((fake_t){ATP_HTTP_POST, "/v1/adjustments",
                    "{\"id\":\"o-1\",\"sku\":\"S2\",\"location\":\"L1\",\"delta\":1,"
                    "\"reason\":\"sale\",\"source\":\"erp\"}",
                    JSON}),
      403);
  CHECK(body_has("not_owner"));
  CHECK(body_has("\"field\":\"source\""));
  CHECK_EQ(
      call((fake_t){ATP_HTTP_POST, "/v1/adjustments",
                    "{\"id\":\"o-2\",\"sku\":\"S2\",\"location\":\"L1\",\"delta\":1,"
                    "\"reason\":\"sale\",\"source\":\"pos\"}",
                    JSON}),
      200);
  CHECK_EQ(
      call((fake_t){ATP_HTTP_POST, "/v1/reservations",
                    "{\"id\":\"o-r\",\"lines\":[{\"sku\":\"S2\",\"location\":\"L1\","
                    "\"qty\":1}]}",
                    JSON}),
      403);
  CHECK_EQ(
      call((fake_t){ATP_HTTP_POST, "/v1/reservations",
                    "{\"id\":\"o-r\",\"lines\":[{\"sku\":\"S2\",\"location\":\"L1\","
                    "\"qty\":1}],\"channel\":\"web\"}",
                    JSON}),
      201);
  /* Fields without a writer list stay open. */
  CHECK_EQ(
      call((fake_t){ATP_HTTP_POST, "/v1/safety-stock",
                    "{\"sku\":\"S2\",\"location\":\"L1\",\"safety_stock\":1}", JSON}),
      200);
  app.ownership = NULL;
}

static void test_dispatch_metrics(void) {
  uint32_t count = 0;
  atp_routes(&count);
  CHECK(atp_metrics_requests(app.metrics, count, 404) >= 1); /* unmatched */
  CHECK(atp_metrics_requests(app.metrics, 0, 200) >= 1);     /* GET /v1/availability */
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/metrics"}), 200);
  CHECK(
      body_has("atpd_http_requests_total{method=\"GET\",route=\"/v1/"
               "availability\",status=\"200\"}"));
  CHECK(body_has("atpd_http_request_duration_seconds_bucket"));
  CHECK(body_has("atpd_reservations{status=\"held\"}"));
  CHECK(body_has("atpd_positions "));
}

static void test_not_ready(void) {
  atp_engine_t *engine = atp_app_engine(&app);
  atomic_store(&app.engine, NULL);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/readyz"}), 503);
  CHECK(body_has("unavailable"));
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/v1/availability?sku=S1"}), 503);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/healthz"}), 200);
  atomic_store(&app.engine, engine);
  CHECK_EQ(call((fake_t){ATP_HTTP_GET, "/readyz"}), 200);
}

static const char *labels[ATP_METRICS_ROUTES_MAX];

TEST_MAIN({
  atp_arena_init(&arena, 16384, 1 << 24);
  atp_buf_init(&body, 0);
  atp_engine_t *engine = NULL;
  atp_engine_config_t ec;
  memset(&ec, 0, sizeof ec);
  ec.positions_max = 1024;
  ec.reservations_max = 1024;
  ec.idempotency_max = 1024;
  if (atp_engine_create(&ec, &engine) != 0) return 1;
  uint32_t count = 0;
  const atp_route_t *routes = atp_routes(&count);
  static char text[ATP_METRICS_ROUTES_MAX][128];
  for (uint32_t i = 0; i < count; i++) {
    snprintf(text[i], sizeof text[i], "%s %s",
             routes[i].method == ATP_HTTP_GET    ? "GET"
             : routes[i].method == ATP_HTTP_POST ? "POST"
             : routes[i].method == ATP_HTTP_PUT  ? "PUT"
                                                 : "DELETE",
             routes[i].pattern);
    labels[i] = text[i];
  }
  app.metrics = atp_metrics_create(1, count, labels);
  atomic_store(&app.engine, engine);
  atomic_store(&app.ready, true);
  RUN(test_match);
  RUN(test_table);
  RUN(test_body_limit);
  RUN(test_dispatch_basics);
  RUN(test_dispatch_stock);
  RUN(test_dispatch_auth);
  RUN(test_holder);
  RUN(test_error_hook);
  RUN(test_duplicate_query);
  RUN(test_dispatch_ownership);
  RUN(test_dispatch_metrics);
  RUN(test_not_ready);
  atp_metrics_destroy(app.metrics);
  atp_engine_destroy(engine);
  atp_buf_free(&body);
  atp_arena_destroy(&arena);
})
