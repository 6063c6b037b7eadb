/* main.c - bin/atpd: reads the configuration, claims its port and data dir,
 * builds the engine, loads the demo catalogue if asked, and serves HTTP until
 * SIGTERM, SIGINT or SIGQUIT.
 *
 * Signals are blocked in every thread (the loop threads inherit the mask) and
 * taken by one thread in sigwait(), which keeps their handling free of
 * async-signal-safety concerns:
 *   SIGTERM, SIGINT, SIGQUIT  drain: stop accepting, finish in-flight requests,
 *                             exit 0. A second one during the drain hurries it:
 *                             remaining connections are closed now, still exit 0.
 *   SIGHUP, SIGUSR1, SIGUSR2  logged and otherwise ignored. SIGHUP is the
 *                             habitual "reopen your log", but the log is stderr,
 *                             which atpd never opened: whoever redirected it owns
 *                             the file (copytruncate rotation works as it is). */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atp/app.h"
#include "atp/auth.h"
#include "atp/config.h"
#include "atp/demo.h"
#include "atp/engine.h"
#include "atp/error.h"
#include "atp/http.h"
#include "atp/instance.h"
#include "atp/log.h"
#include "atp/metrics.h"
#include "atp/router.h"
#include "atp/shopify.h"
#include "atp/version.h"

#define ENGINE_TICK_MS 100

static char route_labels_text[ATP_METRICS_ROUTES_MAX][160];
static const char *route_labels[ATP_METRICS_ROUTES_MAX];

static uint32_t build_route_labels(void) {
  uint32_t count = 0;
  const atp_route_t *routes = atp_routes(&count);
  for (uint32_t i = 0; i < count; i++) {
    snprintf(route_labels_text[i], sizeof route_labels_text[i], "%s %s",
             atp_http_method_name(routes[i].method), routes[i].pattern);
    route_labels[i] = route_labels_text[i];
  }
  return count;
}

typedef struct {
  sigset_t set;
  /* The signal thread outlives run: main clears server under the lock before
   * destroying it, so a late signal never touches a freed server. */
  pthread_mutex_t lock;
  atp_http_server_t *server;
} signal_waiter_t;

static const char *signal_name(int sig) {
  switch (sig) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    case SIGQUIT:
      return "SIGQUIT";
    case SIGHUP:
      return "SIGHUP";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGUSR2:
      return "SIGUSR2";
    default:
      return "signal";
  }
}

static void *signal_thread(void *arg) {
  signal_waiter_t *sw = arg;
  bool draining = false;
  for (;;) {
    int sig = 0;
    if (sigwait(&sw->set, &sig) != 0) continue;
    const char *name = signal_name(sig);
    if (sig == SIGHUP || sig == SIGUSR1 || sig == SIGUSR2) {
      atp_log("info", "%s: the log is stderr, nothing to reopen; still serving", name);
      continue;
    }
    pthread_mutex_lock(&sw->lock);
    if (sw->server && !draining) {
      atp_log("info", "%s: stopping, draining in-flight requests", name);
      atp_http_server_stop(sw->server);
    } else if (sw->server) {
      atp_log("warn", "%s again: closing the remaining connections now", name);
      atp_http_server_hurry(sw->server);
    }
    draining = true;
    pthread_mutex_unlock(&sw->lock);
  }
  return NULL;
}

static int load_access(const atp_config_t *cfg, atp_app_t *app, atp_auth_t **auth,
                       atp_ownership_t **own) {
  char err[512];
  if (cfg->tokens_file[0]) {
    *auth = atp_calloc(1, sizeof **auth);
    if (!*auth || atp_auth_load(*auth, cfg->tokens_file, err, sizeof err) != 0) {
      fprintf(stderr, "atpd: --tokens: %s\n", *auth ? err : "out of memory");
      return 1;
    }
    app->auth = *auth;
  }
  if (cfg->ownership_file[0]) {
    *own = atp_calloc(1, sizeof **own);
    if (!*own || atp_ownership_load(*own, cfg->ownership_file, err, sizeof err) != 0) {
      fprintf(stderr, "atpd: --ownership: %s\n", *own ? err : "out of memory");
      return 1;
    }
    app->ownership = *own;
  }
  return 0;
}

/* after_restore: the demo catalogue, only into an empty state. */
static int load_demo(void *ctx, atp_engine_t *engine) {
  (void)ctx;
  uint32_t positions = 0;
  int rc = atp_demo_load(engine, &positions);
  if (rc != 0) {
    atp_log("error", "demo catalogue: %s", atp_strerror(rc));
    return rc;
  }
  if (positions)
    atp_log("info",
            "demo catalogue loaded: %u positions, %d SKUs, %d stores, groups north "
            "and south",
            positions, ATP_DEMO_SKUS, ATP_DEMO_STORES);
  return 0;
}

/* Blocks the stop and control signals in this thread (the loops inherit the
 * mask), so one arriving during start-up waits for the signal thread instead
 * of killing the process mid-way. */
static void block_signals(signal_waiter_t *sw) {
  sigemptyset(&sw->set);
  sigaddset(&sw->set, SIGTERM);
  sigaddset(&sw->set, SIGINT);
  sigaddset(&sw->set, SIGQUIT);
  sigaddset(&sw->set, SIGHUP);
  sigaddset(&sw->set, SIGUSR1);
  sigaddset(&sw->set, SIGUSR2);
  pthread_sigmask(SIG_BLOCK, &sw->set, NULL);
  pthread_mutex_init(&sw->lock, NULL);
  signal(SIGPIPE, SIG_IGN);
}

/* --help, --version, --routes: prints and returns true when one was asked. */
static bool print_info(const atp_config_t *cfg) {
  if (cfg->print_help)
    fputs(atp_config_usage(), stdout);
  else if (cfg->show_version)
    puts("atpd " ATP_VERSION);
  else if (cfg->print_routes)
    atp_router_print(stdout);
  else
    return false;
  return true;
}

/* One atpd per port and per data dir. The port first, so that a second start
 * fails fast and leaves the first one alone. A data dir that cannot be
 * created or written is not a reason to refuse to start, but /readyz says 503
 * with the reason until it is fixed and atpd restarted; a dir another process
 * holds is: two processes must never share a journal. 0, or 1 to exit. */
static int claim_instance(const atp_config_t *cfg, atp_app_t *app, int *port) {
  static char not_ready[600];
  char err[512];
  if (atp_instance_claim_port(cfg->host, cfg->port, port, err, sizeof err) != 0) {
    fprintf(stderr, "atpd: cannot listen on %s:%d: %s\n", cfg->host, cfg->port, err);
    return 1;
  }
  int rc = atp_instance_make_dir(cfg->data_dir, not_ready, sizeof not_ready);
  if (rc == 0) rc = atp_instance_lock_dir(cfg->data_dir, not_ready, sizeof not_ready);
  if (rc == ATP_ECONFLICT) {
    fprintf(stderr, "atpd: %s\n", not_ready);
    return 1;
  }
  if (rc != 0) {
    atp_log("warn", "%s /readyz answers 503 until it is fixed and atpd restarted",
            not_ready);
    app->not_ready = not_ready;
  }
  return 0;
}

/* Binds every loop's socket on port; serves nothing until run. 0, or 1. */
static int create_server(const atp_config_t *cfg, atp_app_t *app, int port,
                         atp_http_server_t **server) {
  char err[512];
  atp_http_config_t hc;
  memset(&hc, 0, sizeof hc);
  hc.host = cfg->host;
  hc.port = port;
  hc.threads = cfg->threads;
  hc.handler = atp_router_handle;
  hc.body_limit = atp_router_body_limit;
  hc.log = atp_router_log;
  hc.error = atp_router_error;
  /* One loop commits its own groups at the end of each turn (atp_router_turn);
   * several share the writer thread. ATPD_COMMIT_ON_LOOP=0 keeps the writer
   * thread alone, for benchmarks that compare the two. */
  const char *col = getenv("ATPD_COMMIT_ON_LOOP");
  if (cfg->threads == 1 && cfg->durability != ATP_DURABILITY_NONE &&
      !(col && strcmp(col, "0") == 0))
    hc.turn = atp_router_turn;
  hc.ctx = app;
  if (atp_http_server_create(&hc, server, err, sizeof err) != 0) {
    fprintf(stderr, "atpd: %s\n", err);
    return 1;
  }
  return 0;
}

static const char *durability_name(atp_durability_t d) {
  return d == ATP_DURABILITY_NONE     ? "none"
         : d == ATP_DURABILITY_ALWAYS ? "always"
                                      : "batch";
}

/* The engine, the journal and its restore (on a thread of its own, while
 * /readyz says 503), then the ticker: src/app/app.c. 0, or 1. */
static int start_app(const atp_config_t *cfg, atp_app_t *app,
                     atp_http_server_t *server) {
  atp_app_options_t ao;
  memset(&ao, 0, sizeof ao);
  ao.data_dir = cfg->data_dir;
  ao.mode = cfg->durability == ATP_DURABILITY_NONE     ? ATP_JOURNAL_NONE
            : cfg->durability == ATP_DURABILITY_ALWAYS ? ATP_JOURNAL_ALWAYS
                                                       : ATP_JOURNAL_BATCH;
  ao.clock_skew_ms = cfg->clock_skew_ms;
  ao.tick_ms = ENGINE_TICK_MS;
  ao.dead_letters_max = cfg->dead_letters_max;
  ao.flow_queue_max = cfg->flow_queue_max;
  ao.audit_max = cfg->audit_max;
  ao.idempotency_max = cfg->idempotency_max;
  if (cfg->demo) ao.after_restore = load_demo;
  /* The connector's file is read here, once: a bad one stops the start with
   * a sentence naming the file and the field (the token is never printed). */
  static atp_shopify_config_t shopify;
  if (cfg->shopify_file[0]) {
    char err[512];
    if (atp_shopify_config_load(cfg->shopify_file, &shopify, err, sizeof err) != 0) {
      fprintf(stderr, "atpd: --shopify: %s\n", err);
      return 1;
    }
    ao.shopify = &shopify;
  }
  /* The feed's CloudEvents source: --feed-source, or this instance's
   * address with the port actually bound (--listen HOST:0 picks one), so
   * id + source stays a dedupe key across restarts on a fixed port. */
  static char feed_source[ATP_CONFIG_HOST_BYTES_MAX + 32];
  if (cfg->feed_source[0])
    snprintf(feed_source, sizeof feed_source, "%s", cfg->feed_source);
  else
    snprintf(feed_source, sizeof feed_source, "atpd://%s:%d", cfg->host,
             atp_http_server_port(server));
  ao.feed_source = feed_source;
  if (cfg->feed_redis_stream[0]) ao.feed_redis_stream = cfg->feed_redis_stream;
  ao.feed_retention_ms = cfg->feed_retention_h * 3600 * 1000;
  /* Tests shorten the retention below an hour to see cursors expire. */
  const char *retention = getenv("ATPD_TEST_FEED_RETENTION_MS");
  if (retention && atoll(retention) > 0) ao.feed_retention_ms = atoll(retention);
  ao.snapshot_interval_s = cfg->snapshot_interval_s;
  if (cfg->redis_url[0]) {
    ao.redis_host = cfg->redis_host;
    ao.redis_port = cfg->redis_port;
    ao.redis_db = cfg->redis_db;
  }
  int rc = atp_app_start(app, &ao, server);
  if (rc != 0) {
    fprintf(stderr, "atpd: cannot start: %s\n", atp_strerror(rc));
    return 1;
  }
  return 0;
}

/* Serves until a stop signal, then drains. The signal thread only ever sees
 * the server while it runs. 0, or 1. */
static int serve(signal_waiter_t *sw, atp_http_server_t *server) {
  pthread_mutex_lock(&sw->lock);
  sw->server = server;
  pthread_mutex_unlock(&sw->lock);
  pthread_t tid;
  if (pthread_create(&tid, NULL, signal_thread, sw) != 0) {
    fprintf(stderr, "atpd: cannot start the signal thread\n");
    return 1;
  }
  pthread_detach(tid);
  int rc = atp_http_server_run(server);
  atp_log("info", "atpd stopped");
  pthread_mutex_lock(&sw->lock);
  sw->server = NULL;
  pthread_mutex_unlock(&sw->lock);
  return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
  static signal_waiter_t sw;
  block_signals(&sw);
  atp_config_t cfg;
  char err[512];
  if (atp_config_load(&cfg, argc, argv, NULL, err, sizeof err) != 0) {
    fprintf(stderr, "atpd: %s\n%s", err, atp_config_usage());
    return 2;
  }
  if (print_info(&cfg)) return 0;

  static atp_app_t
      app; /* static: the signal thread and loops outlive main's frame only at exit */
  atomic_init(&app.engine, NULL);
  atomic_init(&app.ready, false);
  app.access_log = cfg.access_log;
  app.clock_skew_ms = cfg.clock_skew_ms;
  atp_auth_t *auth = NULL;
  atp_ownership_t *own = NULL;
  if (load_access(&cfg, &app, &auth, &own) != 0) return 1;
  int port = cfg.port;
  if (claim_instance(&cfg, &app, &port) != 0) return 1;
  uint32_t route_count = build_route_labels();
  app.metrics = atp_metrics_create((uint32_t)cfg.threads, route_count, route_labels);
  if (!app.metrics) {
    fprintf(stderr, "atpd: out of memory\n");
    return 1;
  }
  atp_http_server_t *server = NULL;
  if (create_server(&cfg, &app, port, &server) != 0) return 1;
  if (start_app(&cfg, &app, server) != 0) return 1;
  atp_log("info",
          "atpd listening on %s:%d, %d threads, auth %s, ownership %s, durability %s",
          cfg.host, atp_http_server_port(server), cfg.threads, auth ? "on" : "off",
          own ? "on" : "off", durability_name(cfg.durability));
  int rc = serve(&sw, server);
  bool failed = atp_app_failed(&app);
  /* Before the server goes: the journal's last releases are sent to it. */
  if (atp_app_stop(&app) != 0) failed = true;
  atp_http_server_destroy(server);
  atp_metrics_destroy(app.metrics);
  atp_free(auth);
  atp_free(own);
  return rc == 0 && !failed ? 0 : 1;
}
