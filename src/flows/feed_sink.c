/* feed_sink.c - the change feed mirrored into a Redis stream
 * (--feed-redis-stream; include/atp/feed.h, the store half in
 * include/atp/redisstream.h).
 *
 * One thread: read the cursor Redis holds, append a page of events with the
 * page's cursor in one transaction, repeat; block on the feed's durable LSN
 * when caught up. Redis calls are bounded by their timeout, and on a failure
 * the cursor is read again before the next page, so whatever Redis applied is
 * never appended twice and nothing is skipped.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "atp/assert.h"
#include "atp/clock.h"
#include "atp/feed.h"
#include "atp/log.h"
#include "atp/memory.h"
#include "atp/redisstream.h"

#define PAGE           500
#define BACKOFF_MS_MIN 50
#define BACKOFF_MS_MAX 1000

struct atp_feed_sink {
  atp_feed_t *feed;
  atp_redis_stream_t *redis;
  pthread_t thread;
  atomic_bool stopping;
  /* stats, relaxed: figures for /metrics */
  _Atomic uint64_t appended, cursor, failures;
  atomic_bool connected;
  /* the page being built: events back to back in buf, their spans in spans */
  atp_buf_t buf;
  size_t starts[PAGE + 1];
  uint32_t count;
};

static int collect(void *ctx, const atp_feed_event_t *ev) {
  atp_feed_sink_t *k = ctx;
  ATP_ASSERT(k->count < PAGE);
  k->starts[k->count++] = k->buf.len;
  atp_writer_t w;
  atp_writer_init(&w, ATP_FORMAT_JSON, &k->buf);
  atp_feed_write_event(k->feed, &w, ev);
  return 0;
}

static void *sink_main(void *arg) {
  atp_feed_sink_t *k = arg;
  uint64_t cursor = 0;
  bool has_after = false, have_cursor = false;
  int64_t backoff = BACKOFF_MS_MIN;
  atp_str_t events[PAGE];
  while (!atomic_load_explicit(&k->stopping, memory_order_relaxed)) {
    int rc = 0;
    if (!have_cursor) {
      bool found = false;
      rc = atp_redis_stream_cursor(k->redis, &cursor, &found);
      if (rc == 0) {
        have_cursor = true;
        has_after = found;
        if (!found) cursor = 0;
      }
    }
    uint64_t durable = atp_feed_durable_lsn(k->feed);
    uint64_t next = cursor;
    k->count = 0;
    atp_buf_reset(&k->buf);
    if (rc == 0) {
      rc = atp_feed_read(k->feed, cursor, has_after, NULL, PAGE, collect, k, &next,
                         &k->count);
      if (rc == ATP_EEXPIRED) {
        /* Redis holds a cursor older than the journal keeps: mirror on from
         * the oldest retained event (the stream has a gap, logged). */
        atp_log("warn",
                "feed sink: the stream's cursor %" PRIu64
                " is older than the retained journal; going on from the oldest",
                cursor);
        has_after = false;
        continue;
      }
      if (rc == 0 && k->buf.failed) rc = ATP_ENOMEM;
    }
    if (rc == 0 && k->count) {
      k->starts[k->count] = k->buf.len;
      for (uint32_t i = 0; i < k->count; i++)
        events[i] = (atp_str_t){k->buf.data + k->starts[i],
                                (uint32_t)(k->starts[i + 1] - k->starts[i])};
      rc = atp_redis_stream_append(k->redis, events, k->count, next);
      if (rc == 0)
        atomic_fetch_add_explicit(&k->appended, k->count, memory_order_relaxed);
    }
    if (rc != 0) {
      atomic_fetch_add_explicit(&k->failures, 1, memory_order_relaxed);
      atomic_store_explicit(&k->connected, false, memory_order_relaxed);
      have_cursor = false; /* what Redis applied is what its cursor says */
      atp_sleep_ms(backoff);
      backoff = backoff * 2 > BACKOFF_MS_MAX ? BACKOFF_MS_MAX : backoff * 2;
      continue;
    }
    backoff = BACKOFF_MS_MIN;
    atomic_store_explicit(&k->connected, true, memory_order_relaxed);
    if (next != cursor || k->count) {
      cursor = next;
      has_after = has_after || k->count > 0 || next != 0;
      atomic_store_explicit(&k->cursor, cursor, memory_order_relaxed);
    }
    /* Caught up: wait for the next durable record (or a stop, or a while). */
    if (k->count < PAGE) atp_feed_block(k->feed, durable, 200);
  }
  return NULL;
}

int atp_feed_sink_start(atp_feed_t *feed, const char *host, int port, int db,
                        const char *key, atp_feed_sink_t **out) {
  ATP_ASSERT(feed && host && key && out);
  *out = NULL;
  atp_feed_sink_t *k = atp_calloc(1, sizeof *k);
  if (!k) return ATP_ENOMEM;
  k->feed = feed;
  atp_buf_init(&k->buf, 256u << 20);
  atp_redis_stream_config_t rc = {.host = host, .port = port, .db = db, .key = key};
  int err = atp_redis_stream_create(&rc, &k->redis);
  if (err) {
    atp_free(k);
    return err;
  }
  atomic_init(&k->stopping, false);
  if (pthread_create(&k->thread, NULL, sink_main, k) != 0) {
    atp_redis_stream_destroy(k->redis);
    atp_free(k);
    return ATP_EUNAVAILABLE;
  }
  *out = k;
  return 0;
}

void atp_feed_sink_stop(atp_feed_sink_t *k) {
  if (!k) return;
  atomic_store_explicit(&k->stopping, true, memory_order_relaxed);
  pthread_join(k->thread, NULL);
  atp_redis_stream_destroy(k->redis);
  atp_buf_free(&k->buf);
  atp_free(k);
}

void atp_feed_sink_stats(atp_feed_sink_t *k, atp_feed_sink_stats_t *out) {
  memset(out, 0, sizeof *out);
  if (!k) return;
  out->appended = atomic_load_explicit(&k->appended, memory_order_relaxed);
  out->cursor = atomic_load_explicit(&k->cursor, memory_order_relaxed);
  out->failures = atomic_load_explicit(&k->failures, memory_order_relaxed);
  out->connected = atomic_load_explicit(&k->connected, memory_order_relaxed);
  /* The cursor's LSN is sequence / 10^4; 0 before the first page. */
  uint64_t durable = atp_feed_durable_lsn(k->feed);
  uint64_t at = out->cursor / ATP_FEED_INDEX_SPAN;
  out->lag_lsn = durable > at ? durable - at : 0;
}
