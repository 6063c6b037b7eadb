/* app.c - the application's start and stop (include/atp/app.h): engine,
 * durability and restore (snapshot, then journal), the ticker thread, the
 * snapshot thread, and the release of parked answers to the HTTP server.
 */
#include "atp/app.h"
#include "atp/clock.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "atp/assert.h"
#include "atp/audit.h"
#include "atp/codec.h"
#include "atp/deadletters.h"
#include "atp/error.h"
#include "atp/feed.h"
#include "atp/flowstate.h"
#include "atp/log.h"
#include "atp/memory.h"
#include "atp/reconcile.h"
#include "atp/shopify_push.h"

#define PUSH_BACKOFF_MS_MIN 1000
#define PUSH_BACKOFF_MS_MAX 60000
#define SETTLE_TIMEOUT_MS   60000

typedef struct {
  int thread_index;
  uint64_t request_id;
  atp_format_t format;
} waiter_t;

struct atp_app_runtime {
  atp_app_options_t options;
  char data_dir[1024];
  char journal_dir[1100];
  char snapshot_dir[1100];
  char redis_host[256];
  char feed_redis_stream[256];      /* "" : no sink */
  atp_feed_sink_t *sink;            /* the Redis sink once restored; NULL: none */
  atp_shopify_push_t *shopify_push; /* push.enabled: started once restored */
  atp_http_server_t *server;
  atp_app_t *app;
  atp_engine_t *engine;
  atp_engine_config_t engine_config;
  atp_snapshot_config_t snapshot_config;
  pthread_t restore_thread, ticker_thread, snapshot_thread;
  bool restore_started, ticker_started, snapshot_started;
  pthread_mutex_t mu;
  pthread_cond_t cond; /* the ticker and snapshot threads sleep on it */
  bool stopping;       /* under mu */
  atomic_bool failed;
  atp_durable_restore_t restore; /* written by the restore thread before ready */
  /* Snapshots, under mu: callers of POST /admin/snapshot, the figures. */
  waiter_t waiters[ATP_APP_SNAPSHOT_WAITERS_MAX];
  uint32_t waiter_count;
  atp_app_snapshot_stats_t stats;
  atp_snapshot_info_t unpushed; /* the newest local one not in Redis yet */
  int64_t push_at_ms;           /* next retry (monotonic), when push_pending */
  uint32_t push_backoff_ms;
};

/* Sleeps on cond until deadline (monotonic ms) or a broadcast. mu held. */
static void wait_until(atp_app_runtime_t *rt, int64_t deadline_ms) {
  struct timespec ts = {(time_t)(deadline_ms / 1000),
                        (long)(deadline_ms % 1000) * 1000000L};
  pthread_cond_timedwait(&rt->cond, &rt->mu, &ts);
}

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

/* Whether the journal directory holds no segment (absent, or only dot
 * files and temporaries): a data dir that never journaled anything. */
static bool journal_empty(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return true;
  bool empty = true;
  struct dirent *de;
  while (empty && (de = readdir(d)))
    if (de->d_name[0] != '.' && !strstr(de->d_name, ".tmp")) empty = false;
  closedir(d);
  return empty;
}

/* A fresh engine in place of one that holds part of a snapshot that failed. */
static int engine_reset(atp_app_runtime_t *rt) {
  atp_engine_destroy(rt->engine);
  rt->engine = NULL;
  return atp_engine_create(&rt->engine_config, &rt->engine);
}

static bool stopping_now(atp_app_runtime_t *rt) {
  pthread_mutex_lock(&rt->mu);
  bool s = rt->stopping;
  pthread_mutex_unlock(&rt->mu);
  return s;
}

/* The snapshot part of the restore: *covered gets the loaded snapshot's LSN
 * (0: none) and *source where it came from. 0, or an error that fails the
 * start (the log says why). */
static int restore_snapshot(atp_app_runtime_t *rt, uint64_t *covered,
                            const char **source) {
  atp_snapshot_config_t *sc = &rt->snapshot_config;
  char err[1024];
  atp_snapshot_info_t info;
  *covered = 0;
  *source = "journal";
  uint64_t lsns[8];
  uint32_t n = atp_snapshot_list(sc, lsns, 8);
  for (uint32_t i = 0; i < n; i++) {
    char path[600];
    atp_snapshot_path(sc, lsns[i], path, sizeof path);
    int rc = atp_snapshot_load_sections(path, rt->engine, sc->sections_replay,
                                        sc->sections_ctx, &info, err, sizeof err);
    if (rc == 0) {
      *covered = info.lsn;
      *source = "local";
      break;
    }
    /* The older generation still has the journal after it. */
    atp_log("warn", "snapshot %s cannot be restored (%s): %s; trying the older one",
            path, atp_strerror(rc), err);
    if ((rc = engine_reset(rt)) != 0) return rc;
  }
  if (n == 0 && sc->redis_host && sc->redis_host[0] && journal_empty(rt->journal_dir)) {
    /* A replacement machine: its state is in Redis alone. */
    int64_t backoff = PUSH_BACKOFF_MS_MIN;
    for (;;) {
      int rc = atp_snapshot_fetch(sc, rt->engine, &info, err, sizeof err);
      if (rc == 0) {
        *covered = info.lsn;
        *source = "redis";
        atp_log("info", "fetched snapshot %s from redis into %s", info.id, info.path);
        break;
      }
      if (rc == ATP_ENOTFOUND) {
        atp_log("info", "redis holds no snapshot (%s); starting empty", err);
        break;
      }
      if (engine_reset(rt) != 0) return ATP_ENOMEM;
      if (rc != ATP_EUNAVAILABLE) {
        atp_log("error", "the snapshot in redis cannot be restored: %s", err);
        return rc;
      }
      atp_log("warn",
              "redis unreachable for the restore (%s); retrying in %" PRId64 " ms", err,
              backoff);
      for (int64_t waited = 0; waited < backoff; waited += 100) {
        if (stopping_now(rt)) return ATP_EUNAVAILABLE;
        atp_sleep_ms(100);
      }
      if (backoff < PUSH_BACKOFF_MS_MAX / 2) backoff *= 2;
    }
  }
  if (*covered) {
    pthread_mutex_lock(&rt->mu);
    rt->stats.have = true;
    rt->stats.last = info;
    rt->stats.last.duration_ms = 0; /* not recorded in the file */
    pthread_mutex_unlock(&rt->mu);
    atp_log("info",
            "restored snapshot %s (%s): %" PRIu64 " positions, %" PRIu64
            " reservations, %" PRIu64 " bytes, %" PRId64 " ms",
            info.id, *source, info.counts.positions, info.counts.reservations,
            info.bytes, info.duration_ms);
  }
  return 0;
}

static void *snapshot_main(void *arg);

static void *restore_main(void *arg) {
  atp_app_t *app = arg;
  atp_app_runtime_t *rt = app->runtime;
  atp_durable_restore_t *r = &rt->restore;
  int64_t started = atp_mono_ms();
  uint64_t covered = 0;
  const char *source = "journal";
  int rc = restore_snapshot(rt, &covered, &source);
  if (rc != 0) {
    if (rc == ATP_EUNAVAILABLE && stopping_now(rt)) return NULL;
    atp_log("error", "restore from %s failed: %s", rt->snapshot_dir, atp_strerror(rc));
    goto failed;
  }
  rc = atp_durable_restore(app->durable, rt->engine, covered, r);
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
          "restored from %s: %" PRIu64 " records in %u segments after LSN %" PRIu64
          ", last LSN %" PRIu64 ", %" PRId64 " ms",
          rt->journal_dir, r->scan.records_replayed, r->scan.segments, covered,
          r->scan.last_lsn, r->duration_ms);
  if (rt->options.after_restore &&
      (rc = rt->options.after_restore(rt->options.after_restore_ctx, rt->engine))) {
    atp_log("error", "start-up after restore failed: %s", atp_strerror(rc));
    goto failed;
  }
  if (app->feed) atp_feed_attach(app->feed, atp_durable_journal(app->durable));
  if (app->feed && rt->feed_redis_stream[0] && rt->redis_host[0]) {
    /* The sink only reads the feed: it starts once the journal is open, and
     * a Redis that is down makes it wait, never the start. */
    rc = atp_feed_sink_start(app->feed, rt->redis_host, rt->options.redis_port,
                             rt->options.redis_db, rt->feed_redis_stream, &rt->sink);
    if (rc != 0) atp_log("error", "feed sink: cannot start: %s", atp_strerror(rc));
    rc = 0;
  }
  if (app->feed && rt->shopify_push) {
    /* Like the sink, a reader of the feed: Shopify being down makes it wait
     * (and retry), never the start. */
    rc = atp_shopify_push_start(rt->shopify_push, app->feed, rt->engine);
    if (rc != 0) atp_log("error", "shopify push: cannot start: %s", atp_strerror(rc));
    rc = 0;
  }
  pthread_mutex_lock(&rt->mu);
  rt->stats.restore_source = source;
  rt->stats.restore_ms = atp_mono_ms() - started;
  pthread_mutex_unlock(&rt->mu);
  /* release: the restored tables are visible to whoever loads the engine or
   * sees ready (the engine is published only now: a failed snapshot load
   * replaces it, and nothing may read one that is being applied). */
  atomic_store_explicit(&app->engine, rt->engine, memory_order_release);
  atomic_store_explicit(&app->ready, true, memory_order_release);
  pthread_mutex_lock(&rt->mu);
  if (!rt->stopping && pthread_create(&rt->ticker_thread, NULL, ticker_main, app) == 0)
    rt->ticker_started = true;
  if (!rt->stopping &&
      pthread_create(&rt->snapshot_thread, NULL, snapshot_main, app) == 0)
    rt->snapshot_started = true;
  bool started_all = rt->stopping || (rt->ticker_started && rt->snapshot_started);
  pthread_mutex_unlock(&rt->mu);
  if (!started_all) {
    atp_log("error", "cannot start the ticker or snapshot thread");
    goto failed;
  }
  return NULL;
failed:
  atomic_store(&rt->failed, true);
  atp_http_server_stop(rt->server);
  return NULL;
}

/* --- snapshots ------------------------------------------------------------------ */

/* atp_snapshot_write's settle: waits until the ticket horizon is durable past
 * every change the walk could have seen, so that a published snapshot never
 * holds a change the journal could still lose (the half of a reservation,
 * say). The snapshot thread's own slot makes the target. */
static int settle(void *ctx) {
  atp_app_t *app = ctx;
  atp_journal_t *j = atp_durable_journal(app->durable);
  if (!j) return ATP_EUNAVAILABLE;
  atp_journal_begin(j, ATP_APP_SNAPSHOT_SLOT);
  uint64_t target = atp_journal_end(j, ATP_APP_SNAPSHOT_SLOT);
  for (int64_t start = atp_mono_ms(); atp_journal_durable_ticket(j) < target;) {
    if (atp_journal_state(j) != ATP_JOURNAL_OK ||
        atp_mono_ms() - start > SETTLE_TIMEOUT_MS)
      return ATP_EUNAVAILABLE;
    atp_sleep_ms(1);
  }
  return 0;
}

static void record_failure(atp_app_runtime_t *rt, bool redis, const char *what,
                           const char *err) {
  pthread_mutex_lock(&rt->mu);
  if (redis)
    rt->stats.failures_redis++;
  else
    rt->stats.failures_local++;
  snprintf(rt->stats.last_error, sizeof rt->stats.last_error, "%s: %s", what, err);
  pthread_mutex_unlock(&rt->mu);
  atp_log("warn", "snapshot %s failed: %s", what, err);
}

/* Writes a local snapshot, trims the journal, and records it as the one to
 * push. 0, or the error (logged and counted). */
static int take_local(atp_app_t *app, atp_snapshot_info_t *info, char *err,
                      size_t err_len) {
  atp_app_runtime_t *rt = app->runtime;
  atp_journal_t *j = atp_durable_journal(app->durable);
  if (!j) {
    snprintf(err, err_len, "the journal is not open");
    return ATP_EUNAVAILABLE;
  }
  /* Every change at or below this LSN was visible before the walk begins;
   * those after it are replayed over the copy, skipped by version. */
  uint64_t lsn = atp_journal_assigned_lsn(j);
  err[0] = '\0';
  int rc = atp_snapshot_write(&rt->snapshot_config, rt->engine, lsn, settle, app, info,
                              err, err_len);
  if (rc != 0) {
    if (!err[0]) /* the settle refused: nothing in err */
      snprintf(err, err_len, "the journal did not become durable past the walk");
    record_failure(rt, false, "local", err);
    return rc;
  }
  /* Each kept generation keeps the journal after it, and the change feed
   * keeps --feed-retention-h of it (proto/events.md): the lower of both. */
  uint64_t trim = atp_snapshot_trim_lsn(&rt->snapshot_config);
  uint64_t floor = 0;
  int64_t since = atp_wall_ms() - rt->options.feed_retention_ms;
  if (atp_journal_retention_floor(rt->journal_dir, since, &floor) != 0) floor = 0;
  if (floor < trim) trim = floor;
  int removed = atp_journal_trim(j, trim);
  if (removed < 0) atp_log("warn", "journal trim: %s", atp_strerror(removed));
  pthread_mutex_lock(&rt->mu);
  rt->stats.have = true;
  rt->stats.taken_here = true;
  rt->stats.last = *info;
  rt->stats.taken++;
  if (rt->stats.redis) {
    rt->unpushed = *info;
    rt->stats.push_pending = true;
  }
  pthread_mutex_unlock(&rt->mu);
  atp_log("info",
          "snapshot %s: %" PRIu64 " positions, %" PRIu64 " reservations, %" PRIu64
          " bytes, %" PRId64 " ms; journal segments removed: %d",
          info->id, info->counts.positions, info->counts.reservations, info->bytes,
          info->duration_ms, removed > 0 ? removed : 0);
  return 0;
}

/* Pushes the newest unpushed local snapshot. 0, or the error (logged,
 * counted, and retried later with backoff). */
static int push_pending(atp_app_runtime_t *rt, char *err, size_t err_len) {
  pthread_mutex_lock(&rt->mu);
  bool pending = rt->stats.push_pending;
  atp_snapshot_info_t info = rt->unpushed;
  pthread_mutex_unlock(&rt->mu);
  if (!pending) return 0;
  int rc = atp_snapshot_push(&rt->snapshot_config, &info, err, err_len);
  pthread_mutex_lock(&rt->mu);
  if (rc == 0) {
    rt->stats.pushes++;
    /* A newer one may have been taken meanwhile (shutdown): still pending. */
    if (strcmp(rt->unpushed.id, info.id) == 0) rt->stats.push_pending = false;
    rt->push_backoff_ms = PUSH_BACKOFF_MS_MIN;
  } else {
    rt->push_at_ms = atp_mono_ms() + rt->push_backoff_ms;
    rt->push_backoff_ms = rt->push_backoff_ms * 2 > PUSH_BACKOFF_MS_MAX
                              ? PUSH_BACKOFF_MS_MAX
                              : rt->push_backoff_ms * 2;
  }
  pthread_mutex_unlock(&rt->mu);
  if (rc == 0)
    atp_log("info", "snapshot %s pushed to redis", info.id);
  else
    record_failure(rt, true, "push to redis", err);
  return rc;
}

/* The contract's answer to POST /admin/snapshot (or GET): the snapshot's
 * figures, or an error in the contract's shape. */
static void write_info(atp_writer_t *w, const atp_snapshot_info_t *info,
                       bool taken_here, const atp_app_snapshot_stats_t *st) {
  atp_w_object_begin(w);
  atp_w_key(w, "snapshot_id");
  atp_w_cstr(w, info->id);
  atp_w_key(w, "lsn");
  atp_w_uint(w, info->lsn);
  atp_w_key(w, "positions");
  atp_w_uint(w, info->counts.positions);
  atp_w_key(w, "bytes");
  atp_w_uint(w, info->bytes);
  atp_w_key(w, "ms");
  atp_w_int(w, info->duration_ms);
  atp_w_key(w, "created_at");
  atp_w_int(w, info->created_at_ms);
  atp_w_key(w, "reservations");
  atp_w_uint(w, info->counts.reservations);
  atp_w_key(w, "taken_here");
  atp_w_bool(w, taken_here);
  atp_w_key(w, "redis");
  atp_w_cstr(w, !st->redis ? "off" : st->push_pending ? "pending" : "pushed");
  atp_w_object_end(w);
}

static void write_error(atp_writer_t *w, int err, const char *message) {
  atp_w_object_begin(w);
  atp_w_key(w, "error");
  atp_w_object_begin(w);
  atp_w_key(w, "code");
  atp_w_cstr(w, atp_strerror_code(err));
  atp_w_key(w, "message");
  atp_w_cstr(w, message);
  atp_w_object_end(w);
  atp_w_object_end(w);
}

void atp_app_snapshot_write_info(atp_writer_t *w, const atp_app_snapshot_stats_t *st) {
  write_info(w, &st->last, st->taken_here, st);
}

/* Answers every waiter with the outcome: 200 and the figures, or 503. */
static void answer_waiters(atp_app_t *app, const waiter_t *ws, uint32_t n, int rc,
                           const atp_snapshot_info_t *info, const char *err) {
  atp_app_runtime_t *rt = app->runtime;
  atp_app_snapshot_stats_t st;
  atp_app_snapshot_stats(app, &st);
  for (uint32_t i = 0; i < n; i++) {
    atp_buf_t body;
    atp_buf_init(&body, 0);
    atp_writer_t w;
    atp_writer_init(&w, ws[i].format, &body);
    int status = 200;
    if (rc == 0) {
      write_info(&w, info, true, &st);
    } else {
      char message[400];
      snprintf(message, sizeof message, "The snapshot failed: %.360s.", err);
      write_error(&w, ATP_EUNAVAILABLE, message);
      status = atp_error_http_status(ATP_EUNAVAILABLE);
    }
    if (body.failed) {
      atp_buf_reset(&body);
      body.failed = 0;
      status = 500;
    }
    (void)atp_http_server_answer(rt->server, ws[i].thread_index, ws[i].request_id,
                                 status, atp_format_content_type(ws[i].format),
                                 body.data, body.len);
    atp_buf_free(&body);
  }
}

/* One round: a local snapshot, then its push. The answer to POST callers
 * waits for both: 200 means the snapshot is local and, with Redis, pushed. */
static void snapshot_round(atp_app_t *app, const waiter_t *ws, uint32_t n) {
  atp_app_runtime_t *rt = app->runtime;
  atp_snapshot_info_t info;
  char err[1024] = "";
  int rc = take_local(app, &info, err, sizeof err);
  if (rc == 0 && rt->stats.redis) {
    char perr[512];
    if ((rc = push_pending(rt, perr, sizeof perr)) != 0)
      snprintf(err, sizeof err,
               "snapshot %s was written locally, but the push to redis failed (%s); "
               "it is retried",
               info.id, perr);
  }
  if (n) answer_waiters(app, ws, n, rc, &info, err);
}

static void *snapshot_main(void *arg) {
  atp_app_t *app = arg;
  atp_app_runtime_t *rt = app->runtime;
  int64_t interval_ms = rt->options.snapshot_interval_s * 1000;
  int64_t next = interval_ms > 0 ? atp_mono_ms() + interval_ms : INT64_MAX;
  waiter_t ws[ATP_APP_SNAPSHOT_WAITERS_MAX];
  pthread_mutex_lock(&rt->mu);
  while (!rt->stopping) {
    int64_t now = atp_mono_ms();
    bool push_due = rt->stats.push_pending && now >= rt->push_at_ms;
    if (!rt->waiter_count && now < next && !push_due) {
      int64_t until = next;
      if (rt->stats.push_pending && rt->push_at_ms < until) until = rt->push_at_ms;
      wait_until(rt, until);
      continue;
    }
    uint32_t n = rt->waiter_count;
    memcpy(ws, rt->waiters, n * sizeof ws[0]);
    rt->waiter_count = 0;
    pthread_mutex_unlock(&rt->mu);
    if (n || now >= next) {
      snapshot_round(app, ws, n);
      if (interval_ms > 0) next = atp_mono_ms() + interval_ms;
    } else {
      char err[1024];
      (void)push_pending(rt, err, sizeof err);
    }
    pthread_mutex_lock(&rt->mu);
  }
  /* Callers still waiting get an answer: the shutdown snapshot follows. */
  uint32_t n = rt->waiter_count;
  memcpy(ws, rt->waiters, n * sizeof ws[0]);
  rt->waiter_count = 0;
  pthread_mutex_unlock(&rt->mu);
  if (n) answer_waiters(app, ws, n, ATP_EUNAVAILABLE, NULL, "the server is stopping");
  return NULL;
}

int atp_app_snapshot_request(atp_app_t *app, int thread_index, uint64_t request_id,
                             atp_format_t format) {
  atp_app_runtime_t *rt = app->runtime;
  if (!rt || !atomic_load_explicit(&app->ready, memory_order_acquire))
    return ATP_EUNAVAILABLE;
  pthread_mutex_lock(&rt->mu);
  int rc = 0;
  if (rt->stopping || !rt->snapshot_started)
    rc = ATP_EUNAVAILABLE;
  else if (rt->waiter_count == ATP_APP_SNAPSHOT_WAITERS_MAX)
    rc = ATP_ETOOMANY;
  else {
    rt->waiters[rt->waiter_count++] = (waiter_t){
        .thread_index = thread_index, .request_id = request_id, .format = format};
    pthread_cond_broadcast(&rt->cond);
  }
  pthread_mutex_unlock(&rt->mu);
  return rc;
}

void atp_app_snapshot_stats(const atp_app_t *app, atp_app_snapshot_stats_t *out) {
  atp_app_runtime_t *rt = app->runtime;
  memset(out, 0, sizeof *out);
  if (!rt) return;
  pthread_mutex_lock(&rt->mu);
  *out = rt->stats;
  pthread_mutex_unlock(&rt->mu);
}

atp_http_server_t *atp_app_server(const atp_app_t *app) {
  return app->runtime ? app->runtime->server : NULL;
}

int atp_app_start(atp_app_t *app, const atp_app_options_t *options,
                  atp_http_server_t *server) {
  ATP_ASSERT(app && options && options->data_dir && server && !app->runtime);
  atp_app_runtime_t *rt = atp_calloc(1, sizeof *rt);
  if (!rt) return ATP_ENOMEM;
  rt->options = *options;
  snprintf(rt->data_dir, sizeof rt->data_dir, "%s", options->data_dir);
  snprintf(rt->journal_dir, sizeof rt->journal_dir, "%s/journal", rt->data_dir);
  snprintf(rt->snapshot_dir, sizeof rt->snapshot_dir, "%s/snapshots", rt->data_dir);
  atp_snapshot_config_init(&rt->snapshot_config, rt->snapshot_dir);
  if (options->feed_redis_stream)
    snprintf(rt->feed_redis_stream, sizeof rt->feed_redis_stream, "%s",
             options->feed_redis_stream);
  if (options->redis_host && options->redis_host[0]) {
    snprintf(rt->redis_host, sizeof rt->redis_host, "%s", options->redis_host);
    rt->snapshot_config.redis_host = rt->redis_host;
    rt->snapshot_config.redis_port = options->redis_port;
    rt->snapshot_config.redis_db = options->redis_db;
    rt->stats.redis = true;
  }
  rt->push_backoff_ms = PUSH_BACKOFF_MS_MIN;
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
  /* Test switch: small segments, so a test sees the journal trimmed. */
  const char *seg = getenv("ATPD_TEST_JOURNAL_SEGMENT_BYTES");
  if (seg && *seg) dc.segment_bytes_max = strtoull(seg, NULL, 10);
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
  atp_recon_config_t rcc = {.durable = app->durable};
  if ((rc = atp_deadletters_create(&dlc, &app->dead_letters)) != 0 ||
      (rc = atp_flowstate_create(&fsc, &app->flow_state)) != 0 ||
      (rc = atp_audit_create(&auc, &app->audit)) != 0 ||
      (rc = atp_recon_store_create(&rcc, &app->recon)) != 0)
    return rc;
  if (options->shopify &&
      (rc = atp_shopify_create(options->shopify, app->durable, &app->shopify)) != 0)
    return rc;
  if (app->shopify && options->shopify->push_enabled) {
    if ((rc = atp_shopify_push_create(app->shopify, app->durable, &rt->shopify_push)) !=
        0)
      return rc;
    app->shopify_push_stats = atp_shopify_push_stats;
    app->shopify_push_ctx = rt->shopify_push;
  }
  app->flows = atp_flows_plug(app);
  /* Snapshots carry the stores' state as sections, and a restore hands them
   * back (atp_durable_register'ed above, by each store). */
  rt->snapshot_config.sections_export = atp_durable_export_sections;
  rt->snapshot_config.sections_replay = atp_durable_replay_section;
  rt->snapshot_config.sections_ctx = app->durable;
  atp_engine_config_t *ec = &rt->engine_config;
  memset(ec, 0, sizeof *ec);
  ec->clock_skew_ms = options->clock_skew_ms;
  ec->idempotency_max = options->idempotency_max;
  ec->on_change = atp_durable_hook;
  ec->change_ctx = app->durable;
  /* Published in app->engine only once restored (restore_main). */
  if ((rc = atp_engine_create(ec, &rt->engine)) != 0) return rc;
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
  /* Stopping first: a restore waiting for Redis gives up. */
  pthread_mutex_lock(&rt->mu);
  rt->stopping = true;
  pthread_cond_broadcast(&rt->cond);
  pthread_mutex_unlock(&rt->mu);
  if (rt->restore_started) pthread_join(rt->restore_thread, NULL);
  if (rt->ticker_started) pthread_join(rt->ticker_thread, NULL);
  if (rt->snapshot_started) pthread_join(rt->snapshot_thread, NULL);
  /* The push journals its last cursor on the way out: before the clean
   * shutdown's snapshot, which then holds it, and before the journal closes.
   * It is freed after the journal (its section exports for the snapshot). */
  atp_shopify_push_stop(rt->shopify_push);
  /* The clean shutdown's snapshot: every mutation and the ticker stopped, the
   * journal still open, so the next start loads it and replays nothing. */
  atp_journal_t *j = app->durable ? atp_durable_journal(app->durable) : NULL;
  if (rt->snapshot_started && !atomic_load(&rt->failed) && j &&
      !(rt->stats.have && atp_journal_assigned_lsn(j) == rt->stats.last.lsn)) {
    atp_snapshot_info_t info;
    char err[1024];
    if (take_local(app, &info, err, sizeof err) == 0 && rt->stats.redis)
      (void)push_pending(rt, err, sizeof err);
  } else if (rt->snapshot_started && rt->stats.push_pending) {
    char err[1024];
    (void)push_pending(rt, err, sizeof err);
  }
  atomic_store_explicit(&app->ready, false, memory_order_release);
  /* Parked long polls are answered (the server drops answers it can no
   * longer deliver) before the journal they read goes. */
  atp_feed_sink_stop(rt->sink);
  rt->sink = NULL;
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
  atp_recon_store_destroy(app->recon);
  app->recon = NULL;
  atp_shopify_push_destroy(rt->shopify_push);
  rt->shopify_push = NULL;
  app->shopify_push_stats = NULL;
  app->shopify_push_ctx = NULL;
  atp_shopify_destroy(app->shopify);
  app->shopify = NULL;
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

atp_feed_sink_t *atp_app_feed_sink(const atp_app_t *app) {
  const atp_app_runtime_t *rt = app->runtime;
  /* Set by the restore thread before ready: read it only after. */
  if (!rt || !atomic_load_explicit(&app->ready, memory_order_acquire)) return NULL;
  return rt->sink;
}

/* For /metrics: the restore's figures once done (NULL before). */
const atp_durable_restore_t *atp_app_restore_info(const atp_app_t *app) {
  const atp_app_runtime_t *rt = app->runtime;
  if (!rt || !atomic_load_explicit(&app->ready, memory_order_acquire)) return NULL;
  return &rt->restore;
}
