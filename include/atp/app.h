/* app.h - the application's start and stop: the engine, its durability
 * (journal, restore), the expiry ticker thread, and their binding to the HTTP
 * server. Later issues (snapshots, flows) extend atp_app_start and
 * atp_app_stop rather than main.
 *
 * Start creates the engine and durability, then restores on a thread of its
 * own while the server already answers: /readyz is 503 and every /v1 route
 * 503 unavailable until the journal is replayed (the engine may not be read
 * while atp_engine_apply runs). Then after_restore runs (atpd: the demo
 * catalogue), ready is set and the ticker starts. A restore that fails logs
 * the reason (file and offset for corruption), marks the app failed and stops
 * the server: atpd then exits 1.
 *
 * The ticker calls atp_engine_tick every tick_ms on its own thread, inside a
 * slot of the ticket horizon (its expiries release units others may take).
 *
 * Thread: start and stop from main, once each; stop after the server's run
 * returned and before it is destroyed (the journal's last releases reach it).
 */
#ifndef ATP_APP_H
#define ATP_APP_H

#include <stdbool.h>
#include <stdint.h>

#include "atp/durability.h"
#include "atp/http.h"
#include "atp/router.h"

#define ATP_APP_TICK_MS 100
/* The ticker's slot in the journal's ticket horizon (loops use their index). */
#define ATP_APP_TICKER_SLOT (ATP_JOURNAL_SLOTS_MAX - 1)

typedef struct atp_app_runtime atp_app_runtime_t;

typedef struct {
  const char *data_dir;    /* the journal goes to <data_dir>/journal */
  atp_journal_mode_t mode; /* --durability */
  int64_t clock_skew_ms;
  uint32_t tick_ms; /* 0: ATP_APP_TICK_MS */
  /* Runs on the restore thread after the journal is replayed, before ready;
   * NULL: none. A nonzero return fails the start. */
  int (*after_restore)(void *ctx, atp_engine_t *engine);
  void *after_restore_ctx;
  const char *feed_source;   /* the change feed's CloudEvents source */
  int64_t feed_retention_ms; /* --feed-retention-h */
  /* Integration flows' bounds (0: the limits.h defaults). */
  uint32_t dead_letters_max; /* --dead-letters-max */
  uint32_t flow_queue_max;   /* --flow-queue-max, per flow */
  uint32_t audit_max;        /* --audit-max */
} atp_app_options_t;

/* Creates the engine and durability and starts the restore thread. 0, or
 * ATP_ENOMEM (nothing started). app is the router's; server receives the
 * releases of parked answers. */
int atp_app_start(atp_app_t *app, const atp_app_options_t *options,
                  atp_http_server_t *server);

/* Whether start failed after it returned (restore refused the journal). */
bool atp_app_failed(const atp_app_t *app);

/* The restore's figures once the app is ready, else NULL. Thread: any. */
const atp_durable_restore_t *atp_app_restore_info(const atp_app_t *app);

/* Stops the ticker, flushes and closes the journal, destroys the engine.
 * 0, or ATP_EUNAVAILABLE when the journal left records unwritten. */
int atp_app_stop(atp_app_t *app);

#endif
