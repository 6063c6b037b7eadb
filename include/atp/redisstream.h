/* redisstream.h - a Redis stream written in order with its cursor beside it:
 * the store half of the change feed's Redis sink (--feed-redis-stream).
 *
 * Each append is one MULTI/EXEC transaction of XADD KEY MAXLEN ~ N * event
 * <json> per event and SET KEY:cursor <sequence>, so the stream and the
 * cursor move together: a sink that restarts reads the cursor and continues
 * after it, repeating nothing that Redis acknowledged. Every call is bounded
 * by the timeout (hiredis' blocking API, as the snapshot push does), so a
 * stopped Redis costs a timeout, never a hang. A failed call drops the
 * connection; the next call connects again.
 *
 * Thread: one thread at a time per handle (the sink's own).
 */
#ifndef ATP_REDISSTREAM_H
#define ATP_REDISSTREAM_H

#include <stdbool.h>
#include <stdint.h>

#include "atp/engine.h"
#include "atp/error.h"

typedef struct atp_redis_stream atp_redis_stream_t;

typedef struct {
  const char *host;    /* Redis */
  int port;            /* 6379 */
  int db;              /* 0 */
  const char *key;     /* the stream; the cursor is "<key>:cursor" */
  uint64_t maxlen;     /* MAXLEN ~ bound; 0: 1,000,000 */
  uint32_t timeout_ms; /* per call; 0: 2000 */
} atp_redis_stream_config_t;

/* Copies the config; connects at the first call. ATP_ENOMEM. */
int atp_redis_stream_create(const atp_redis_stream_config_t *config,
                            atp_redis_stream_t **out);
void atp_redis_stream_destroy(atp_redis_stream_t *stream);

/* The cursor stored beside the stream: *found false when there is none (a
 * new stream, or a Redis that lost its data). ATP_EUNAVAILABLE when Redis
 * does not answer or answers an error. */
int atp_redis_stream_cursor(atp_redis_stream_t *stream, uint64_t *cursor, bool *found);

/* Appends events[0..count) (each an event as JSON) and stores cursor, in one
 * transaction. ATP_EUNAVAILABLE (nothing or everything was applied: Redis
 * runs a transaction whole), ATP_ENOMEM. */
int atp_redis_stream_append(atp_redis_stream_t *stream, const atp_str_t *events,
                            uint32_t count, uint64_t cursor);

#endif
