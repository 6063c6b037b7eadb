/* app.h - the application's start and stop: the engine, its durability
 * (journal, snapshots, restore), the integration flows' stores, the expiry
 * ticker and snapshot threads, and their binding to the HTTP server. New
 * subsystems extend atp_app_start and atp_app_stop rather than main.
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
 * Snapshots (include/atp/snapshot.h) are taken on a thread of their own,
 * never on a loop: every snapshot_interval_s, on POST /admin/snapshot
 * (atp_app_snapshot_request: the answer is deferred until the snapshot is
 * done) and once more in stop, after the drain and before the journal
 * closes. Each is tagged with the journal's assigned LSN read before the
 * walk (every change at or below it was visible before the walk began) and
 * published only once the ticket horizon is durable past the walk's end, then
 * the journal is trimmed to the older kept generation. With Redis the same
 * thread pushes each new snapshot; a failed push is logged, counted and
 * retried with backoff (1 s doubling to 60 s), never blocking a request.
 *
 * Restore, before the journal's replay: the newest local snapshot that loads
 * (one pass; a file that fails part-way is discarded with its engine and the
 * older generation goes into a fresh engine), else, when the data dir has no
 * snapshot and no journal and Redis is configured, the newest one in Redis
 * (fetched into the data dir while it is applied). Redis unreachable then
 * is retried (the server stays unready: starting empty would serve zero
 * stock and push it over the good copy); Redis without a snapshot starts
 * empty. Then the journal after the snapshot's LSN.
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
#include "atp/shopify.h"
#include "atp/snapshot.h"

#define ATP_APP_TICK_MS 100
/* The ticker's slot in the journal's ticket horizon (loops use their index). */
#define ATP_APP_TICKER_SLOT (ATP_JOURNAL_SLOTS_MAX - 1)
/* The snapshot thread's slot: its settle waits for what the walk saw. */
#define ATP_APP_SNAPSHOT_SLOT (ATP_JOURNAL_SLOTS_MAX - 2)
/* POST /admin/snapshot callers waiting for one snapshot; beyond, 429. */
#define ATP_APP_SNAPSHOT_WAITERS_MAX 64

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
  const char
      *feed_redis_stream; /* --feed-redis-stream KEY (with redis_host); NULL: off */
  /* Integration flows' bounds (0: the limits.h defaults). */
  uint32_t dead_letters_max;   /* --dead-letters-max */
  uint32_t flow_queue_max;     /* --flow-queue-max, per flow */
  uint32_t audit_max;          /* --audit-max */
  int64_t snapshot_interval_s; /* 0: no periodic snapshots */
  const char *redis_host;      /* NULL or "": no Redis */
  int redis_port, redis_db;
  /* --shopify FILE, loaded (NULL: the connector is off). */
  const atp_shopify_config_t *shopify;
} atp_app_options_t;

/* What /metrics and GET /admin/snapshot report about snapshots. */
typedef struct {
  bool have;                  /* last is set: taken here, or restored at start */
  bool taken_here;            /* last was written by this process */
  atp_snapshot_info_t last;   /* the newest local snapshot */
  uint64_t taken;             /* snapshots written since start */
  uint64_t failures_local;    /* local writes that failed */
  uint64_t failures_redis;    /* pushes that failed */
  uint64_t pushes;            /* pushes that succeeded */
  bool redis;                 /* Redis configured */
  bool push_pending;          /* the newest local one is not in Redis yet */
  char last_error[256];       /* of the latest failure, "" if none */
  const char *restore_source; /* "local", "redis", "journal"; NULL before */
  int64_t restore_ms;         /* the whole restore: snapshot and journal */
} atp_app_snapshot_stats_t;

/* A copy of the snapshot figures. Thread: any. */
void atp_app_snapshot_stats(const atp_app_t *app, atp_app_snapshot_stats_t *out);
/* Writes stats->last as GET /admin/snapshot answers it. */
void atp_app_snapshot_write_info(atp_writer_t *w,
                                 const atp_app_snapshot_stats_t *stats);

/* Asks the snapshot thread for a snapshot taken after this call; it answers
 * the deferred request (thread_index, request_id) through the server, in
 * format, with the contract's body or an error. 0; ATP_EUNAVAILABLE before
 * the app is ready or while it stops; ATP_ETOOMANY with too many waiting.
 * Thread: any (a loop: it only queues). */
int atp_app_snapshot_request(atp_app_t *app, int thread_index, uint64_t request_id,
                             atp_format_t format);

/* Creates the engine and durability and starts the restore thread. 0, or
 * ATP_ENOMEM (nothing started). app is the router's; server receives the
 * releases of parked answers. */
int atp_app_start(atp_app_t *app, const atp_app_options_t *options,
                  atp_http_server_t *server);

/* The server atp_app_start was given, or NULL before (or without) it: where
 * a route posts the continuations of long work (POST /v1/batch). */
atp_http_server_t *atp_app_server(const atp_app_t *app);

/* Whether start failed after it returned (restore refused the journal). */
bool atp_app_failed(const atp_app_t *app);

/* The restore's figures once the app is ready, else NULL. Thread: any. */
const atp_durable_restore_t *atp_app_restore_info(const atp_app_t *app);
/* The Redis stream sink once restored; NULL: none (or not ready yet). */
struct atp_feed_sink *atp_app_feed_sink(const atp_app_t *app);

/* Stops the ticker, flushes and closes the journal, destroys the engine.
 * 0, or ATP_EUNAVAILABLE when the journal left records unwritten. */
int atp_app_stop(atp_app_t *app);

#endif
