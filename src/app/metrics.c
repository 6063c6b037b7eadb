/* metrics.c - per-thread request counters and the Prometheus exposition (see
 * metrics.h). */
#include "atp/metrics.h"

#include <stdatomic.h>
#include <string.h>

#include "atp/assert.h"

/* Every status atpd answers has its own label: the contract's, 405 and the
 * HTTP server's own (408 timeouts, 501 unknown transfer codings, 505). */
static const int statuses[ATP_METRICS_STATUS_COUNT - 1] = {
    200, 201, 202, 204, 400, 401, 403, 404, 405, 408, 409,
    410, 413, 414, 415, 422, 429, 431, 500, 501, 503, 505};
/* The last status slot counts everything else. */
#define STATUS_OTHER (ATP_METRICS_STATUS_COUNT - 1)

static const int64_t bucket_ns[ATP_METRICS_BUCKET_COUNT] = {
    100000,   250000,   500000,    1000000,   2500000,   5000000,    10000000,
    25000000, 50000000, 100000000, 250000000, 500000000, 1000000000, 2500000000};
static const char *const bucket_le[ATP_METRICS_BUCKET_COUNT] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
    "0.025",  "0.05",    "0.1",    "0.25",  "0.5",    "1",     "2.5"};

/* One thread's counters. Only that thread writes them (relaxed load + store,
 * no read-modify-write needed); the scraper reads them with relaxed loads. */
typedef struct {
  _Alignas(
      64) _Atomic uint64_t requests[ATP_METRICS_ROUTES_MAX][ATP_METRICS_STATUS_COUNT];
  /* Per-bucket (not cumulative) counts; index BUCKET_COUNT is beyond the last. */
  _Atomic uint64_t latency[ATP_METRICS_ROUTES_MAX][ATP_METRICS_BUCKET_COUNT + 1];
  _Atomic uint64_t latency_sum_ns[ATP_METRICS_ROUTES_MAX];
} slab_t;

struct atp_metrics {
  uint32_t threads;
  uint32_t route_count; /* labels: route_count + 1 (the last is "unmatched") */
  const char *const *route_labels; /* "GET /v1/availability"; static strings */
  slab_t *slabs;                   /* threads of them, 64-byte aligned in raw */
  void *raw;                       /* the allocation behind slabs */
};

atp_metrics_t *atp_metrics_create(uint32_t threads, uint32_t route_count,
                                  const char *const *route_labels) {
  ATP_ASSERT(threads >= 1 && route_count + 1 <= ATP_METRICS_ROUTES_MAX);
  atp_metrics_t *m = atp_calloc(1, sizeof *m);
  if (!m) return NULL;
  /* Over-allocate by a line and align by hand: slabs of different threads
   * must not share a cache line. */
  m->raw = atp_malloc(sizeof(slab_t) * threads + 64);
  if (!m->raw) {
    atp_free(m);
    return NULL;
  }
  m->slabs = (slab_t *)(((uintptr_t)m->raw + 63) & ~(uintptr_t)63);
  memset(m->slabs, 0, sizeof(slab_t) * threads);
  m->threads = threads;
  m->route_count = route_count;
  m->route_labels = route_labels;
  return m;
}

void atp_metrics_destroy(atp_metrics_t *m) {
  if (!m) return;
  atp_free(m->raw);
  atp_free(m);
}

static uint32_t status_index(int status) {
  for (uint32_t i = 0; i < STATUS_OTHER; i++)
    if (statuses[i] == status) return i;
  return STATUS_OTHER;
}

static inline void bump(_Atomic uint64_t *c, uint64_t by) {
  /* Single writer: a relaxed load and store cannot lose an increment. */
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + by,
                        memory_order_relaxed);
}

void atp_metrics_record(atp_metrics_t *m, uint32_t thread, uint32_t route, int status,
                        int64_t elapsed_ns) {
  if (thread >= m->threads) thread = 0; /* only the fuzz harness feeds without a loop */
  if (route > m->route_count) route = m->route_count;
  slab_t *s = &m->slabs[thread];
  bump(&s->requests[route][status_index(status)], 1);
  uint32_t b = 0;
  while (b < ATP_METRICS_BUCKET_COUNT && elapsed_ns > bucket_ns[b]) b++;
  bump(&s->latency[route][b], 1);
  bump(&s->latency_sum_ns[route], elapsed_ns > 0 ? (uint64_t)elapsed_ns : 0);
}

static uint64_t sum_requests(const atp_metrics_t *m, uint32_t route, uint32_t si) {
  uint64_t total = 0;
  for (uint32_t t = 0; t < m->threads; t++)
    total +=
        atomic_load_explicit(&m->slabs[t].requests[route][si], memory_order_relaxed);
  return total;
}

uint64_t atp_metrics_requests(const atp_metrics_t *m, uint32_t route, int status) {
  return sum_requests(m, route, status_index(status));
}

/* Writes method="GET",route="/v1/x" from a "GET /v1/x" label. */
static void write_route_labels(atp_buf_t *out, const atp_metrics_t *m, uint32_t route) {
  if (route >= m->route_count) {
    atp_buf_printf(out, "method=\"any\",route=\"unmatched\"");
    return;
  }
  const char *label = m->route_labels[route];
  const char *space = strchr(label, ' ');
  if (!space) {
    atp_buf_printf(out, "method=\"any\",route=\"%s\"", label);
    return;
  }
  atp_buf_printf(out, "method=\"%.*s\",route=\"%s\"", (int)(space - label), label,
                 space + 1);
}

static void write_requests(const atp_metrics_t *m, atp_buf_t *out) {
  atp_buf_printf(
      out,
      "# HELP atpd_http_requests_total Requests answered, by route and status.\n"
      "# TYPE atpd_http_requests_total counter\n");
  for (uint32_t r = 0; r <= m->route_count; r++) {
    for (uint32_t si = 0; si < ATP_METRICS_STATUS_COUNT; si++) {
      uint64_t n = sum_requests(m, r, si);
      if (!n) continue;
      atp_buf_printf(out, "atpd_http_requests_total{");
      write_route_labels(out, m, r);
      if (si == STATUS_OTHER)
        atp_buf_printf(out, ",status=\"other\"} %llu\n", (unsigned long long)n);
      else
        atp_buf_printf(out, ",status=\"%d\"} %llu\n", statuses[si],
                       (unsigned long long)n);
    }
  }
}

static void write_latency(const atp_metrics_t *m, atp_buf_t *out) {
  atp_buf_printf(out,
                 "# HELP atpd_http_request_duration_seconds Time from request head to "
                 "response queued.\n"
                 "# TYPE atpd_http_request_duration_seconds histogram\n");
  for (uint32_t r = 0; r <= m->route_count; r++) {
    uint64_t buckets[ATP_METRICS_BUCKET_COUNT + 1] = {0}, sum_ns = 0, count = 0;
    for (uint32_t t = 0; t < m->threads; t++) {
      const slab_t *s = &m->slabs[t];
      for (uint32_t b = 0; b <= ATP_METRICS_BUCKET_COUNT; b++)
        buckets[b] += atomic_load_explicit(&s->latency[r][b], memory_order_relaxed);
      sum_ns += atomic_load_explicit(&s->latency_sum_ns[r], memory_order_relaxed);
    }
    for (uint32_t b = 0; b <= ATP_METRICS_BUCKET_COUNT; b++) count += buckets[b];
    if (!count) continue;
    uint64_t cumulative = 0;
    for (uint32_t b = 0; b < ATP_METRICS_BUCKET_COUNT; b++) {
      cumulative += buckets[b];
      atp_buf_printf(out, "atpd_http_request_duration_seconds_bucket{");
      write_route_labels(out, m, r);
      atp_buf_printf(out, ",le=\"%s\"} %llu\n", bucket_le[b],
                     (unsigned long long)cumulative);
    }
    atp_buf_printf(out, "atpd_http_request_duration_seconds_bucket{");
    write_route_labels(out, m, r);
    atp_buf_printf(out, ",le=\"+Inf\"} %llu\n", (unsigned long long)count);
    atp_buf_printf(out, "atpd_http_request_duration_seconds_sum{");
    write_route_labels(out, m, r);
    atp_buf_printf(out, "} %.9f\n", (double)sum_ns / 1e9);
    atp_buf_printf(out, "atpd_http_request_duration_seconds_count{");
    write_route_labels(out, m, r);
    atp_buf_printf(out, "} %llu\n", (unsigned long long)count);
  }
}

static void write_engine(const atp_engine_t *engine, atp_buf_t *out) {
  atp_engine_stats_t st;
  memset(&st, 0, sizeof st);
  atp_engine_stats(engine, &st);
  atp_buf_printf(out,
                 "# HELP atpd_reservations Reservations retained, by status.\n"
                 "# TYPE atpd_reservations gauge\n");
  for (int s = ATP_STATUS_HELD; s <= ATP_STATUS_FULFILLED; s++)
    atp_buf_printf(out, "atpd_reservations{status=\"%s\"} %llu\n",
                   atp_status_name((atp_status_t)s),
                   (unsigned long long)st.reservations_by_status[s]);
  atp_buf_printf(
      out,
      "# HELP atpd_reservation_expirations_total Held reservations expired.\n"
      "# TYPE atpd_reservation_expirations_total counter\n"
      "atpd_reservation_expirations_total %llu\n"
      "# HELP atpd_positions Positions (SKU at location) known.\n"
      "# TYPE atpd_positions gauge\n"
      "atpd_positions %llu\n"
      "# HELP atpd_positions_max Position capacity.\n"
      "# TYPE atpd_positions_max gauge\n"
      "atpd_positions_max %llu\n"
      "# HELP atpd_idempotency_ids Idempotency ids remembered.\n"
      "# TYPE atpd_idempotency_ids gauge\n"
      "atpd_idempotency_ids %llu\n"
      "# HELP atpd_idempotency_ids_max Idempotency id capacity (--idempotency-max).\n"
      "# TYPE atpd_idempotency_ids_max gauge\n"
      "atpd_idempotency_ids_max %llu\n"
      "# HELP atpd_groups Location groups defined.\n"
      "# TYPE atpd_groups gauge\n"
      "atpd_groups %llu\n",
      (unsigned long long)st.expirations, (unsigned long long)st.positions,
      (unsigned long long)st.positions_max, (unsigned long long)st.idempotency_ids,
      (unsigned long long)st.idempotency_max, (unsigned long long)st.groups);
}

void atp_metrics_write(const atp_metrics_t *m, const atp_engine_t *engine,
                       atp_buf_t *out) {
  write_requests(m, out);
  write_latency(m, out);
  if (engine) write_engine(engine, out);
}

/* --- journal ------------------------------------------------------------------ */

static void gauge(atp_buf_t *out, const char *name, const char *help, const char *type,
                  uint64_t v) {
  atp_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type,
                 name, (unsigned long long)v);
}

/* fdatasync latency as a Prometheus histogram (cumulative buckets). */
static void write_fsync_histogram(const atp_journal_metrics_t *m, atp_buf_t *out) {
  atp_buf_printf(out,
                 "# HELP atpd_journal_fsync_seconds fdatasync latency.\n"
                 "# TYPE atpd_journal_fsync_seconds histogram\n");
  uint64_t cum = 0;
  for (int i = 0; i < ATP_JOURNAL_FSYNC_BUCKETS - 1; i++) {
    cum += m->fsync_hist[i];
    atp_buf_printf(out, "atpd_journal_fsync_seconds_bucket{le=\"%g\"} %llu\n",
                   atp_journal_fsync_bucket_us[i] / 1e6, (unsigned long long)cum);
  }
  cum += m->fsync_hist[ATP_JOURNAL_FSYNC_BUCKETS - 1];
  atp_buf_printf(out,
                 "atpd_journal_fsync_seconds_bucket{le=\"+Inf\"} %llu\n"
                 "atpd_journal_fsync_seconds_sum %.9f\n"
                 "atpd_journal_fsync_seconds_count %llu\n",
                 (unsigned long long)cum, (double)m->fsync_ns_sum / 1e9,
                 (unsigned long long)m->fsyncs);
}

/* Records per group commit, buckets in powers of 4. */
static void write_group_histogram(const atp_journal_metrics_t *m, atp_buf_t *out) {
  atp_buf_printf(out,
                 "# HELP atpd_journal_group_records Records per group commit.\n"
                 "# TYPE atpd_journal_group_records histogram\n");
  uint64_t cum = 0;
  uint64_t limit = 1;
  for (int i = 0; i < ATP_JOURNAL_GROUP_BUCKETS - 1; i++, limit *= 4) {
    cum += m->group_hist[i];
    atp_buf_printf(out, "atpd_journal_group_records_bucket{le=\"%llu\"} %llu\n",
                   (unsigned long long)limit, (unsigned long long)cum);
  }
  cum += m->group_hist[ATP_JOURNAL_GROUP_BUCKETS - 1];
  atp_buf_printf(out,
                 "atpd_journal_group_records_bucket{le=\"+Inf\"} %llu\n"
                 "atpd_journal_group_records_sum %llu\n"
                 "atpd_journal_group_records_count %llu\n",
                 (unsigned long long)cum, (unsigned long long)m->group_records_sum,
                 (unsigned long long)m->groups);
}

void atp_metrics_write_journal(const atp_journal_t *journal,
                               const atp_durable_restore_t *restore, atp_buf_t *out) {
  if (restore) {
    atp_buf_printf(out,
                   "# HELP atpd_restore_duration_seconds How long the last restore "
                   "took.\n# TYPE atpd_restore_duration_seconds gauge\n"
                   "atpd_restore_duration_seconds %.3f\n",
                   (double)restore->duration_ms / 1e3);
    gauge(out, "atpd_restore_records", "Journal records replayed at start.", "gauge",
          restore->scan.records_replayed);
  }
  if (!journal) return;
  atp_journal_metrics_t m;
  atp_journal_metrics(journal, &m);
  gauge(out, "atpd_journal_state", "0 ok, 1 failed (writes refused), 2 closed.",
        "gauge", (uint64_t)m.state);
  gauge(out, "atpd_journal_failures_total", "Journal writes or fdatasyncs that failed.",
        "counter", m.failures);
  gauge(out, "atpd_journal_recoveries_total", "Returns from failed to ok.", "counter",
        m.recoveries);
  gauge(out, "atpd_journal_records_total", "Records made durable since start.",
        "counter", m.records_written);
  gauge(out, "atpd_journal_bytes_total", "Bytes made durable since start.", "counter",
        m.bytes_written);
  gauge(out, "atpd_journal_durable_lsn", "Highest LSN durable on disk.", "gauge",
        m.durable_lsn);
  gauge(out, "atpd_journal_assigned_lsn", "Highest LSN handed out.", "gauge",
        m.assigned_lsn);
  gauge(out, "atpd_journal_queued_bytes", "Bytes appended, not yet durable.", "gauge",
        m.queued_bytes);
  gauge(out, "atpd_journal_segments", "Segment files present.", "gauge", m.segments);
  gauge(out, "atpd_journal_truncated_tail_bytes",
        "Bytes of torn tail cut off at the last start.", "gauge",
        m.tail_bytes_truncated);
  gauge(out, "atpd_journal_truncated_tail_records",
        "Frames of torn tail cut off at the last start.", "gauge",
        m.tail_records_truncated);
  gauge(out, "atpd_journal_rounds_total", "Times the journal writer took its queue.",
        "counter", m.rounds);
  gauge(out, "atpd_journal_empty_rounds_total",
        "Writer rounds that only moved the durable horizon (no fdatasync).", "counter",
        m.empty_rounds);
  gauge(out, "atpd_journal_horizon_waits_total",
        "Writer rounds that waited for mutations in flight before a group.", "counter",
        m.horizon_waits);
  gauge(out, "atpd_journal_horizon_timeouts_total",
        "Horizon waits cut off at their bound.", "counter", m.horizon_timeouts);
  gauge(out, "atpd_journal_gathers_total", "Groups that waited for records to gather.",
        "counter", m.gathers);
  gauge(out, "atpd_journal_loop_rounds_total",
        "Rounds the event loop wrote and synced itself at the end of its turn "
        "(--threads 1).",
        "counter", m.loop_rounds);
  gauge(out, "atpd_journal_loop_handoffs_total",
        "Turn-end commits the loop left to the writer thread (busy, failed, or a "
        "large backlog).",
        "counter", m.loop_handoffs);
  write_fsync_histogram(&m, out);
  write_group_histogram(&m, out);
  atp_buf_printf(
      out,
      "# HELP atpd_journal_prealloc_bytes_total Zeroes written ahead of the journal's "
      "write position: the idle writer's steps (their fdatasync not in "
      "atpd_journal_fsync_seconds) and 1 MiB carried by a group under load (made "
      "durable by the group's fdatasync).\n"
      "# TYPE atpd_journal_prealloc_bytes_total counter\n"
      "atpd_journal_prealloc_bytes_total %llu\n"
      "# HELP atpd_journal_prealloc_seconds_total Time of those zero-fill writes: a "
      "step's write and fdatasync, a group's zeroes' write.\n"
      "# TYPE atpd_journal_prealloc_seconds_total counter\n"
      "atpd_journal_prealloc_seconds_total %.9f\n"
      "# HELP atpd_journal_prealloc_failures_total Zero-fill steps that failed and "
      "were undone (the journal goes on with plain appends).\n"
      "# TYPE atpd_journal_prealloc_failures_total counter\n"
      "atpd_journal_prealloc_failures_total %llu\n",
      (unsigned long long)m.prealloc_bytes, (double)m.prealloc_ns_sum / 1e9,
      (unsigned long long)m.prealloc_failures);
}

void atp_metrics_write_snapshot(const atp_metrics_snapshot_t *s, atp_buf_t *out) {
  if (s->have) {
    atp_buf_printf(out,
                   "# HELP atpd_snapshot_age_seconds Since the newest snapshot was "
                   "created.\n# TYPE atpd_snapshot_age_seconds gauge\n"
                   "atpd_snapshot_age_seconds %.3f\n",
                   (double)s->age_ms / 1e3);
    gauge(out, "atpd_snapshot_bytes", "Size of the newest snapshot.", "gauge",
          s->bytes);
    gauge(out, "atpd_snapshot_positions", "Positions in the newest snapshot.", "gauge",
          s->positions);
    gauge(out, "atpd_snapshot_lsn", "LSN the newest snapshot is tagged with.", "gauge",
          s->lsn);
    atp_buf_printf(out,
                   "# HELP atpd_snapshot_duration_seconds How long writing the newest "
                   "snapshot took (0 for one found at start).\n"
                   "# TYPE atpd_snapshot_duration_seconds gauge\n"
                   "atpd_snapshot_duration_seconds %.3f\n",
                   (double)s->duration_ms / 1e3);
  }
  gauge(out, "atpd_snapshots_total", "Snapshots written since start.", "counter",
        s->taken);
  atp_buf_printf(out,
                 "# HELP atpd_snapshot_failures_total Snapshots that failed, by target."
                 "\n# TYPE atpd_snapshot_failures_total counter\n"
                 "atpd_snapshot_failures_total{target=\"local\"} %llu\n"
                 "atpd_snapshot_failures_total{target=\"redis\"} %llu\n",
                 (unsigned long long)s->failures_local,
                 (unsigned long long)s->failures_redis);
  if (s->redis) {
    gauge(out, "atpd_snapshot_redis_pushes_total", "Snapshots pushed to Redis.",
          "counter", s->pushes);
    gauge(out, "atpd_snapshot_redis_pending",
          "1 while the newest snapshot is not in Redis yet (retried with backoff).",
          "gauge", s->push_pending ? 1 : 0);
  }
  if (s->restore_source) {
    static const char *sources[] = {"local", "redis", "journal"};
    atp_buf_printf(out,
                   "# HELP atpd_restore_source Where the state came from at start.\n"
                   "# TYPE atpd_restore_source gauge\n");
    for (int i = 0; i < 3; i++)
      atp_buf_printf(out, "atpd_restore_source{source=\"%s\"} %d\n", sources[i],
                     strcmp(sources[i], s->restore_source) == 0);
    atp_buf_printf(out,
                   "# HELP atpd_restore_total_seconds The whole restore: snapshot and "
                   "journal.\n# TYPE atpd_restore_total_seconds gauge\n"
                   "atpd_restore_total_seconds %.3f\n",
                   (double)s->restore_ms / 1e3);
  }
}

/* --- change feed ---------------------------------------------------------------- */

void atp_metrics_write_feed(const atp_feed_stats_t *f, const atp_feed_sink_stats_t *k,
                            atp_buf_t *out) {
  gauge(out, "atpd_feed_durable_lsn",
        "Journal LSN the feed serves up to (an event's sequence is LSN * 10^4 + "
        "index).",
        "gauge", f->durable_lsn);
  gauge(out, "atpd_feed_oldest_lsn",
        "Oldest journal LSN retained for the feed (0: none); an older cursor is 410.",
        "gauge", f->oldest_lsn);
  atp_buf_printf(out,
                 "# HELP atpd_feed_events_served_total Events handed to consumers, by "
                 "route.\n# TYPE atpd_feed_events_served_total counter\n"
                 "atpd_feed_events_served_total{route=\"pull\"} %llu\n"
                 "atpd_feed_events_served_total{route=\"stream\"} %llu\n"
                 "atpd_feed_events_served_total{route=\"snapshot\"} %llu\n",
                 (unsigned long long)f->stat[ATP_FEED_STAT_PULL_EVENTS],
                 (unsigned long long)f->stat[ATP_FEED_STAT_STREAM_EVENTS],
                 (unsigned long long)f->stat[ATP_FEED_STAT_SNAPSHOT_EVENTS]);
  gauge(out, "atpd_feed_waiters",
        "Waits parked on the feed's thread now (polls, streams, snapshots).", "gauge",
        f->waiters);
  gauge(out, "atpd_feed_polls_parked", "Long polls (wait_ms) waiting now.", "gauge",
        f->stat[ATP_FEED_STAT_POLLS_PARKED]);
  gauge(out, "atpd_feed_streams", "SSE consumers connected now.", "gauge",
        f->stat[ATP_FEED_STAT_STREAMS]);
  gauge(out, "atpd_feed_streams_opened_total", "SSE streams begun.", "counter",
        f->stat[ATP_FEED_STAT_STREAMS_OPENED]);
  gauge(out, "atpd_feed_streams_cut_total",
        "SSE consumers cut off for falling behind (they resume from their last id).",
        "counter", f->stat[ATP_FEED_STAT_STREAMS_CUT]);
  gauge(out, "atpd_feed_cursor_expired_total",
        "Cursors refused as older than the retention (410 cursor_expired).", "counter",
        f->stat[ATP_FEED_STAT_EXPIRED]);
  gauge(out, "atpd_feed_cold_reads_total",
        "Feed reads with no hint where to start (each walks its segment's frames).",
        "counter", f->stat[ATP_FEED_STAT_COLD_READS]);
  if (!k) return;
  gauge(out, "atpd_feed_redis_appended_total", "Events appended to the Redis stream.",
        "counter", k->appended);
  gauge(out, "atpd_feed_redis_cursor",
        "Sequence the Redis stream holds up to (its stored cursor).", "gauge",
        k->cursor);
  gauge(out, "atpd_feed_redis_failures_total", "Redis calls of the sink that failed.",
        "counter", k->failures);
  gauge(out, "atpd_feed_redis_connected", "1 while the sink's last Redis call worked.",
        "gauge", k->connected ? 1 : 0);
  gauge(out, "atpd_feed_redis_lag_lsn",
        "Durable journal records (LSNs) not yet in the Redis stream.", "gauge",
        k->lag_lsn);
}
