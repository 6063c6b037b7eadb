/* fuzz_http.c - libFuzzer harness: raw request bytes through atp_http_feed
 * with the real router and a real engine as the handler, so parsing, routing,
 * field readers, the engine and both encoders all see hostile input.
 *
 * The engine is built once with small tables and keeps its state across
 * inputs (as a live server would); a full table answers 429, which is fine.
 * Seeds: tests/fuzz/corpus/http/. */
#include <stdint.h>
#include <string.h>

#include "atp/engine.h"
#include "atp/http.h"
#include "atp/metrics.h"
#include "atp/router.h"

static atp_app_t app;
static atp_http_config_t config;
static atp_buf_t out;

static void setup(void) {
  atp_engine_config_t ec;
  memset(&ec, 0, sizeof ec);
  ec.positions_max = 1u << 14;
  ec.reservations_max = 1u << 14;
  ec.idempotency_max = 1u << 14;
  atp_engine_t *engine = NULL;
  if (atp_engine_create(&ec, &engine) != 0) __builtin_trap();
  static const char *labels[ATP_METRICS_ROUTES_MAX];
  uint32_t count = 0;
  const atp_route_t *routes = atp_routes(&count);
  for (uint32_t i = 0; i < count; i++) labels[i] = routes[i].pattern;
  app.metrics = atp_metrics_create(1, count, labels);
  app.access_log = false;
  atomic_store(&app.engine, engine);
  atomic_store(&app.ready, true);
  config.host = "127.0.0.1";
  config.threads = 1;
  config.handler = atp_router_handle;
  config.body_limit = atp_router_body_limit;
  config.log = atp_router_log;
  config.ctx = &app;
  atp_buf_init(&out, 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!config.handler) setup();
  atp_buf_reset(&out);
  atp_http_feed(&config, (const char *)data, size, &out);
  /* Every response starts with a status line. */
  if (out.len && memcmp(out.data, "HTTP/1.1 ", 9) != 0) __builtin_trap();
  /* Expiry runs on the ticker thread in atpd; here, after every input. */
  atp_engine_t *engine = atp_app_engine(&app);
  if (engine) atp_engine_tick(engine);
  return 0;
}
