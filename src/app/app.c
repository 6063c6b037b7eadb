/* app.c - the application's start and stop (include/atp/app.h): engine,
 * durability and restore, the ticker thread, and the release of parked
 * answers to the HTTP server.
 */
#include "atp/app.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "atp/assert.h"
#include "atp/audit.h"
#include "atp/deadletters.h"
#include "atp/error.h"
#include "atp/feed.h"
#include "atp/flowstate.h"
#include "atp/log.h"
#include "atp/memory.h"

struct atp_app_runtime {
  atp_app_options_t options;
  char data_dir[1024];
  char journal_dir[1100];
  atp_http_server_t *server;
  atp_app_t *app;
  atp_engine_t *engine;
  pthread_t restore_thread, ticker_thread;
  bool restore_started, ticker_started;
  pthread_mutex_t mu;
  pthread_cond_t cond; /* the ticker sleeps on it; stop wakes it */
  bool stopping;       /* under mu */
  atomic_bool failed;
  atp_durable_restore_t restore; /* written by the restore thread before ready */
};

static void release_to_server(void *ctx, uint64_t durable_ticket) {
  atp_app_runtime_t *rt = ctx;
  atp_http_server_release(rt->server, durable_ticket);
  atp_journal_t *j = rt->app->durable ? atp_durable_journal(rt->app->durable) : NULL;
  if (rt->app->feed && j) atp_feed_notify(rt->app->feed, atp_journal_durable_lsn(j));
}

static void *ticker_main(void *arg) {
  atp_app_t *app = arg;
  atp_app_runtime_t *rt = app->runtime;
  uint32_t tick_ms = rt->options.tick_ms ? rt->options.tick_ms : ATP_APP_TICK_MS;
  pthread_mutex_lock(&rt->mu);
  while (!rt->stopping) {
    pthread_mutex_unlock(&rt->mu);
    /* Expiries release units another thread may take at once: the tick holds
     * a slot of the horizon like any mutation. */
    atp_durable_begin(app->durable, ATP_APP_TICKER_SLOT);
    atp_engine_tick(rt->engine);
    (void)atp_durable_end(app->durable, ATP_APP_TICKER_SLOT);
    pthread_mutex_lock(&rt->mu);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += (long)tick_ms * 1000000;
    ts.tv_sec += ts.tv_nsec / 1000000000;
    ts.tv_nsec %= 1000000000;
    if (!rt->stopping) pthread_cond_timedwait(&rt->cond, &rt->mu, &ts);
  }
  pthread_mutex_unlock(&rt->mu);
  return NULL;
}

static void *restore_main(void *arg) {
  atp_app_t *app = arg;
  atp_app_runtime_t *rt = app->runtime;
  atp_durable_restore_t *r = &rt->restore;
  int rc = atp_durable_restore(app->durable, rt->engine, r);
  if (rc != 0) {
    atp_log("error", "restore from %s failed: %s%s%s", rt->journal_dir,
            atp_strerror(rc), r->scan.error[0] ? ": " : "", r->scan.error);
    /* A data dir that cannot be used (an I/O error, not a bad journal) keeps
     * the server up and unready, as the data dir's own check does; anything
     * the journal says about itself stops the start. */
    if (rc == ATP_EUNAVAILABLE) return NULL;
    goto failed;
  }
  if (r->scan.tail_bytes)
    atp_log("warn",
            "journal: cut a torn tail of %" PRIu64 " bytes (%" PRIu64
            " frames) at offset %" PRIu64 " of %s",
            r->scan.tail_bytes, r->scan.tail_records, r->scan.tail_offset,
            r->scan.tail_file);
  atp_log("info",
          "restored from %s: %" PRIu64 " records in %u segments, last LSN %" PRIu64
          ", %" PRId64 " ms",
          rt->journal_dir, r->scan.records_replayed, r->scan.segments, r->scan.last_lsn,
          r->duration_ms);
  if (rt->options.after_restore &&
      (rc = rt->options.after_restore(rt->options.after_restore_ctx, rt->engine))) {
    atp_log("error", "start-up after restore failed: %s", atp_strerror(rc));
    goto failed;
  }
  if (app->feed) atp_feed_attach(app->feed, atp_durable_journal(app->durable));
  /* release: the restored tables are visible to whoever sees ready. */
  atomic_store_explicit(&app->ready, true, memory_order_release);
  pthread_mutex_lock(&rt->mu);
  if (!rt->stopping && pthread_create(&rt->ticker_thread, NULL, ticker_main, app) == 0)
    rt->ticker_started = true;
  pthread_mutex_unlock(&rt->mu);
  if (!rt->ticker_started && !rt->stopping) {
    atp_log("error", "cannot start the ticker thread");
    goto failed;
  }
  return NULL;
failed:
  atomic_store(&rt->failed, true);
  atp_http_server_stop(rt->server);
  return NULL;
}

int atp_app_start(atp_app_t *app, const atp_app_options_t *options,
                  atp_http_server_t *server) {
  ATP_ASSERT(app && options && options->data_dir && server && !app->runtime);
  atp_app_runtime_t *rt = atp_calloc(1, sizeof *rt);
  if (!rt) return ATP_ENOMEM;
  rt->options = *options;
  snprintf(rt->data_dir, sizeof rt->data_dir, "%s", options->data_dir);
  snprintf(rt->journal_dir, sizeof rt->journal_dir, "%s/journal", rt->data_dir);
  rt->options.data_dir = rt->data_dir;
  rt->server = server;
  rt->app = app;
  app->server = server;
  atomic_init(&rt->failed, false);
  pthread_mutex_init(&rt->mu, NULL);
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_cond_init(&rt->cond, &attr);
  pthread_condattr_destroy(&attr);
  app->runtime = rt;

  atp_durable_config_t dc;
  memset(&dc, 0, sizeof dc);
  dc.dir = rt->journal_dir;
  dc.mode = options->mode;
  dc.on_release = release_to_server;
  dc.release_ctx = rt;
  int rc = atp_durable_create(&dc, &app->durable);
  if (rc != 0) return rc;
  atp_feed_config_t fc = {
      .journal_dir = rt->journal_dir,
      .source = options->feed_source ? options->feed_source : "atpd",
      .retention_ms = options->feed_retention_ms};
  if ((rc = atp_feed_create(&fc, &app->feed)) != 0) return rc;
  /* The flows' stores register their sections with durability before the
   * restore replays the journal into them. */
  atp_deadletters_config_t dlc = {.max = options->dead_letters_max,
                                  .durable = app->durable};
  atp_flowstate_config_t fsc = {.queue_max = options->flow_queue_max,
                                .durable = app->durable};
  atp_audit_config_t auc = {.max = options->audit_max, .durable = app->durable};
  if ((rc = atp_deadletters_create(&dlc, &app->dead_letters)) != 0 ||
      (rc = atp_flowstate_create(&fsc, &app->flow_state)) != 0 ||
      (rc = atp_audit_create(&auc, &app->audit)) != 0)
    return rc;
  app->flows = atp_flows_plug(app);
  atp_engine_config_t ec;
  memset(&ec, 0, sizeof ec);
  ec.clock_skew_ms = options->clock_skew_ms;
  ec.on_change = atp_durable_hook;
  ec.change_ctx = app->durable;
  if ((rc = atp_engine_create(&ec, &rt->engine)) != 0) return rc;
  /* release: the engine's tables are visible to whoever loads the pointer;
   * ready stays false until restore is done, so /v1 is not dispatched. */
  atomic_store_explicit(&app->engine, rt->engine, memory_order_release);
  if (pthread_create(&rt->restore_thread, NULL, restore_main, app) != 0)
    return ATP_ENOMEM;
  rt->restore_started = true;
  return 0;
}

bool atp_app_failed(const atp_app_t *app) {
  return app->runtime && atomic_load(&app->runtime->failed);
}

int atp_app_stop(atp_app_t *app) {
  atp_app_runtime_t *rt = app->runtime;
  if (!rt) return 0;
  if (rt->restore_started) pthread_join(rt->restore_thread, NULL);
  pthread_mutex_lock(&rt->mu);
  rt->stopping = true;
  pthread_cond_broadcast(&rt->cond);
  pthread_mutex_unlock(&rt->mu);
  if (rt->ticker_started) pthread_join(rt->ticker_thread, NULL);
  atomic_store_explicit(&app->ready, false, memory_order_release);
  /* Parked long polls are answered (the server drops answers it can no
   * longer deliver) before the journal they read goes. */
  atp_feed_destroy(app->feed);
  app->feed = NULL;
  /* Every mutation has stopped (the server's run returned): the close flushes
   * what is queued, the clean shutdown's promise. */
  int rc = atp_durable_close(app->durable);
  if (rc == 0) atp_log("info", "journal flushed and closed");
  app->durable = NULL;
  atp_deadletters_destroy(app->dead_letters);
  atp_flowstate_destroy(app->flow_state);
  atp_audit_destroy(app->audit);
  app->dead_letters = NULL;
  app->flow_state = NULL;
  app->audit = NULL;
  app->flows = NULL;
  atomic_store_explicit(&app->engine, NULL, memory_order_release);
  if (rt->engine) atp_engine_destroy(rt->engine);
  pthread_cond_destroy(&rt->cond);
  pthread_mutex_destroy(&rt->mu);
  atp_free(rt);
  app->runtime = NULL;
  return rc;
}

/* For /metrics: the restore's figures once done (NULL before). */
const atp_durable_restore_t *atp_app_restore_info(const atp_app_t *app) {
  const atp_app_runtime_t *rt = app->runtime;
  if (!rt || !atomic_load_explicit(&app->ready, memory_order_acquire)) return NULL;
  return &rt->restore;
}
