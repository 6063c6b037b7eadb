/* feed.h - the change feed (CONTRACT.md section 10): every engine change
 * record, in journal order, as a CloudEvents 1.0 event (proto/events.md).
 *
 * The feed keeps no copy of the changes: it reads the journal's segment
 * files, and only up to the journal's durable LSN, so nothing is served that
 * a restart would not restore and every acknowledged change is there. Each
 * journal record (one engine hook call) is decoded and each of its change
 * records that means something to a consumer becomes one event; the
 * idempotency records only lend their ids (fulfillment_id, amend_id,
 * release_id) to the events of their record, except a count's, which is the
 * event atpd.count.applied. The flows' records (dead letters, flow states and
 * queues) are one event each (atpd.dead_letter.*, atpd.flow.*); the audit's
 * are not events.
 *
 * Sequence. A record's events share its LSN, so an event's sequence is
 * LSN * 10^4 + its index among the record's change records, printed as 20
 * zero-padded digits: unique, sorting as a string and as a number, and
 * still "the journal position" of the contract (the LSN is sequence / 10^4).
 * A cursor is a sequence; after=S resumes with the first event above S.
 *
 * Waiting. atp_feed_wait parks a callback until the durable LSN passes a
 * given one or a deadline passes; the feed's own thread runs it, so nothing
 * waits on an event loop. atp_feed_notify (from the journal's durable
 * callback) wakes that thread.
 *
 * Thread: read and write_event from any thread (each call has its own
 * scratch); wait and notify from any thread; create and destroy once.
 */
#ifndef ATP_FEED_H
#define ATP_FEED_H

#include <stdbool.h>
#include <stdint.h>

#include "atp/codec.h"
#include "atp/engine.h"
#include "atp/journal.h"
#include "atp/records.h"

typedef struct atp_feed atp_feed_t;

/* Events of one journal record at most; the sequence's index digits. */
#define ATP_FEED_INDEX_SPAN 10000u
/* Change records one read examines at most, so a filter that matches
 * nothing cannot make one call walk the whole journal. */
#define ATP_FEED_SCAN_MAX 200000u
/* Parked waits (long polls) at most: more is 429. */
#define ATP_FEED_WAITERS_MAX 4096u
#define ATP_FEED_LIMIT_MAX   10000u

typedef struct {
  const char *journal_dir; /* <data-dir>/journal */
  const char *source;      /* the events' source, "atpd://host:port" */
  int64_t retention_ms;    /* --feed-retention-h, in ms */
} atp_feed_config_t;

/* ATP_ENOMEM, or ATP_EUNAVAILABLE when the thread cannot start. */
int atp_feed_create(const atp_feed_config_t *config, atp_feed_t **out);
/* Stops the thread; parked waits get their callback with timed_out = true
 * first. */
void atp_feed_destroy(atp_feed_t *feed);

/* The journal, once restore opened it; reads before are empty. */
void atp_feed_attach(atp_feed_t *feed, atp_journal_t *journal);
/* The journal's durable LSN advanced (its writer thread): wakes waits. */
void atp_feed_notify(atp_feed_t *feed, uint64_t durable_lsn);
/* The LSN up to which events may be served now. */
uint64_t atp_feed_durable_lsn(const atp_feed_t *feed);

typedef struct {
  atp_str_t type;       /* exact type, or a prefix ending in '.'; len 0: any */
  atp_str_t sku_prefix; /* len 0: any */
  atp_str_t location;   /* exact; len 0: any */
} atp_feed_filter_t;

/* One event as a read hands it out; valid during the callback only. */
typedef struct {
  uint64_t lsn;
  uint32_t index; /* among the record's change records */
  uint64_t sequence;
  const char *type;
  const atp_change_t *record;
  /* Identifiers of the journal record's request, gathered from its records:
   * context (request_id, source, ref, reason, flow), the reservation's
   * (order_ref, order_id, channel, customer_id) and the follow-up's id. */
  const atp_change_ctx_t *ctx;
  const atp_reservation_t *reservation; /* of the record, or NULL */
  atp_str_t fulfillment_id, amend_id, release_id;
  /* The flows' own records (dead letters, flow states and queues: journal
   * kinds 16..31): record and ctx are NULL, the payload is the journal's. */
  uint16_t kind;
  const void *payload;
  uint32_t payload_bytes;
  int64_t at_ms; /* of such a record: its own time field */
} atp_feed_event_t;

/* Called for each event; a nonzero return stops the read. */
typedef int (*atp_feed_event_fn)(void *ctx, const atp_feed_event_t *event);

/* Hands the events after sequence after (has_after false: from the oldest
 * retained) that pass filter (NULL: all) to fn, at most limit of them, up to
 * the durable LSN. *cursor gets the sequence to resume after: the last event
 * handed out, or, when none was, past the records examined (a filter skipped
 * them) or after itself (nothing durable beyond it). *count gets the number handed
 * out. ATP_EEXPIRED when after is older than the oldest retained record;
 * ATP_EINTERNAL for a record that does not decode or a bad frame;
 * ATP_EUNAVAILABLE, ATP_ENOMEM. */
int atp_feed_read(atp_feed_t *feed, uint64_t after, bool has_after,
                  const atp_feed_filter_t *filter, uint32_t limit, atp_feed_event_fn fn,
                  void *ctx, uint64_t *cursor, uint32_t *count);

/* Writes one event as the CloudEvents object of proto/events.md. */
void atp_feed_write_event(const atp_feed_t *feed, atp_writer_t *w,
                          const atp_feed_event_t *event);
/* Writes the n-th event of a snapshot (GET /v1/changes/snapshot): a position
 * as it is now, atpd.position.changed with cause "snapshot", sequence the
 * snapshot's cursor, id "snapshot-<cursor>-<n>". */
void atp_feed_write_position_event(const atp_feed_t *feed, atp_writer_t *w,
                                   const atp_position_t *position, uint64_t cursor,
                                   uint64_t n, int64_t now_ms);

/* "00000000000000420003": 20 digits and a NUL. */
void atp_feed_sequence_format(uint64_t sequence, char out[21]);
/* Parses a 1..20 digit sequence; ATP_EBADREQ otherwise. */
int atp_feed_sequence_parse(atp_str_t text, uint64_t *out);

/* Why a parked wait's callback runs. */
typedef enum {
  ATP_FEED_WAKE_DURABLE = 0, /* the durable LSN passed the wait's */
  ATP_FEED_WAKE_TIMEOUT = 1, /* its deadline passed */
  ATP_FEED_WAKE_STOP = 2,    /* the feed is being destroyed: the last call */
} atp_feed_wake_t;

/* A parked wait's callback, on the feed's thread; durable is the durable LSN.
 * Returns false when done (the waiter is forgotten), or true to wait again
 * beyond *after_lsn until *deadline_ms (CLOCK_MONOTONIC ms), both updated as
 * it likes: a long poll whose new events did not pass its filter, a stream
 * that keeps going. After ATP_FEED_WAKE_STOP the waiter is forgotten whatever
 * it returns. */
typedef bool (*atp_feed_wake_fn)(void *ctx, uint64_t durable, atp_feed_wake_t why,
                                 uint64_t *after_lsn, int64_t *deadline_ms);

/* Parks fn until the durable LSN is > after_lsn or deadline_ms (CLOCK_MONOTONIC
 * ms) passes. ATP_EFULL beyond ATP_FEED_WAITERS_MAX, ATP_ENOMEM,
 * ATP_EUNAVAILABLE when stopping. */
int atp_feed_wait(atp_feed_t *feed, uint64_t after_lsn, int64_t deadline_ms,
                  atp_feed_wake_fn fn, void *ctx);

int64_t atp_feed_mono_ms(void);

/* Blocks until the durable LSN is > after_lsn, the feed stops or timeout_ms
 * pass; returns the durable LSN. For threads of their own (the Redis sink),
 * never a loop. */
uint64_t atp_feed_block(atp_feed_t *feed, uint64_t after_lsn, int64_t timeout_ms);

/* --- figures for /metrics ---------------------------------------------------
 *
 * Counters the routes keep on the feed (it is the one object they share),
 * and gauges of streams and parked polls open now. Relaxed atomics: a scrape
 * can see one move before another. */
typedef enum {
  ATP_FEED_STAT_PULL_EVENTS = 0, /* events answered by GET /v1/changes */
  ATP_FEED_STAT_STREAM_EVENTS,   /* events sent on SSE streams */
  ATP_FEED_STAT_SNAPSHOT_EVENTS, /* events of GET /v1/changes/snapshot */
  ATP_FEED_STAT_POLLS_PARKED,    /* gauge: long polls waiting now */
  ATP_FEED_STAT_STREAMS,         /* gauge: SSE consumers connected now */
  ATP_FEED_STAT_STREAMS_OPENED,  /* SSE streams begun */
  ATP_FEED_STAT_STREAMS_CUT,     /* cut off for falling behind */
  ATP_FEED_STAT_EXPIRED,         /* cursor_expired answers (410 or in-stream) */
  /* Reads that had no hint of where to start: each walks the frame headers
   * of its segment up to its cursor. A follower at the tail should make
   * almost none. */
  ATP_FEED_STAT_COLD_READS,
  ATP_FEED_STAT_COUNT
} atp_feed_stat_t;

void atp_feed_stat_add(atp_feed_t *feed, atp_feed_stat_t which, int64_t by);

typedef struct {
  uint64_t durable_lsn; /* served up to */
  uint64_t oldest_lsn;  /* the oldest retained journal record (0: none) */
  uint64_t waiters;     /* parked waits of every kind (polls, streams, snapshots) */
  uint64_t stat[ATP_FEED_STAT_COUNT];
} atp_feed_stats_t;

/* Reads the journal directory's listing for oldest_lsn. */
void atp_feed_stats(atp_feed_t *feed, atp_feed_stats_t *out);

/* --- the Redis Streams sink (--feed-redis-stream) --------------------------
 *
 * A thread that mirrors the feed into a Redis stream, in order, at least
 * once: it reads the cursor stored beside the stream, appends a page of
 * events and the new cursor in one transaction (include/atp/redisstream.h),
 * and waits for the next durable event when caught up. Redis down: it retries
 * with backoff (50 ms doubling to 1 s) and catches up; requests never wait for
 * it. A Redis that lost the stream (restarted without persistence) has no
 * cursor: the sink starts again from the oldest retained event. */
typedef struct atp_feed_sink atp_feed_sink_t;
struct atp_redis_stream_config;

typedef struct {
  uint64_t appended; /* events appended since start */
  uint64_t cursor;   /* the sequence Redis has up to */
  uint64_t failures; /* Redis calls that failed */
  uint64_t lag_lsn;  /* durable journal records not yet in Redis */
  bool connected;
} atp_feed_sink_stats_t;

/* Starts the sink's thread. ATP_ENOMEM, ATP_EUNAVAILABLE (no thread). */
int atp_feed_sink_start(atp_feed_t *feed, const char *host, int port, int db,
                        const char *key, atp_feed_sink_t **out);
/* Stops and joins the thread (within one Redis timeout). NULL: nothing. */
void atp_feed_sink_stop(atp_feed_sink_t *sink);
void atp_feed_sink_stats(atp_feed_sink_t *sink, atp_feed_sink_stats_t *out);

#endif
