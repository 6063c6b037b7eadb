/* metrics.h - request counters and latency histograms, per thread, and the
 * Prometheus text exposition.
 *
 * Each loop thread owns one slab of counters (its own cache lines), so
 * recording a request is a few relaxed load/store pairs on memory no other
 * thread writes: no lock, no shared cache line, no atomic read-modify-write.
 * The scraper sums the slabs with relaxed loads; a scrape racing a request may
 * miss that request, which Prometheus counters tolerate.
 *
 * Statuses are folded into a fixed set (ATP_METRICS_STATUSES) so the table is
 * dense; anything else counts as "other". Latency buckets are in seconds, as
 * Prometheus expects.
 *
 * Thread: atp_metrics_record from loop thread `thread` only; atp_metrics_write
 * from any thread.
 */
#ifndef ATP_METRICS_H
#define ATP_METRICS_H

#include <stdint.h>

#include "atp/durability.h"
#include "atp/engine.h"
#include "atp/feed.h"
#include "atp/journal.h"
#include "atp/memory.h"

#define ATP_METRICS_ROUTES_MAX   48 /* routes + "unmatched" */
#define ATP_METRICS_STATUS_COUNT 23
#define ATP_METRICS_BUCKET_COUNT 14 /* finite buckets; +Inf is the count */

typedef struct atp_metrics atp_metrics_t;

/* Allocates slabs for threads loop threads and route_count labels (the last
 * label index, route_count, is "unmatched"). NULL on out of memory. */
atp_metrics_t *atp_metrics_create(uint32_t threads, uint32_t route_count,
                                  const char *const *route_labels);
void atp_metrics_destroy(atp_metrics_t *m);

/* Counts one response. route is a label index (route_count for unmatched). */
void atp_metrics_record(atp_metrics_t *m, uint32_t thread, uint32_t route, int status,
                        int64_t elapsed_ns);

/* Appends the Prometheus text for the counters and, if engine is not NULL, its
 * gauges. */
void atp_metrics_write(const atp_metrics_t *m, const atp_engine_t *engine,
                       atp_buf_t *out);

/* Appends the journal's counters (journal may be NULL before restore opened
 * it) and, once known, the restore's figures. */
void atp_metrics_write_journal(const atp_journal_t *journal,
                               const atp_durable_restore_t *restore, atp_buf_t *out);

/* Appends the snapshot figures. Plain values, so metrics need not know the
 * app's types. */
typedef struct {
  bool have;
  int64_t age_ms; /* since the last snapshot was created */
  uint64_t bytes, positions, lsn;
  int64_t duration_ms; /* of the last one written here */
  uint64_t taken, failures_local, failures_redis, pushes;
  bool redis, push_pending;
  const char *restore_source; /* NULL before the restore ended */
  int64_t restore_ms;
} atp_metrics_snapshot_t;
void atp_metrics_write_snapshot(const atp_metrics_snapshot_t *s, atp_buf_t *out);

/* The change feed's figures (atpd_feed_*) and, when sink is not NULL, the
 * Redis stream sink's (atpd_feed_redis_*). */
void atp_metrics_write_feed(const atp_feed_stats_t *feed,
                            const atp_feed_sink_stats_t *sink, atp_buf_t *out);

/* For tests: requests counted for a route and status. */
uint64_t atp_metrics_requests(const atp_metrics_t *m, uint32_t route, int status);

#endif
