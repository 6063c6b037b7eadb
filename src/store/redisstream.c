/* redisstream.c - the Redis stream of the change feed's sink
 * (include/atp/redisstream.h).
 *
 * The commands of one append are pipelined (appended, then their replies
 * read), so a page of events costs one round trip.
 */
#include "atp/redisstream.h"

#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atp/assert.h"
#include "atp/memory.h"

struct atp_redis_stream {
  char host[256];
  int port, db;
  char key[512];
  char cursor_key[520];
  uint64_t maxlen;
  uint32_t timeout_ms;
  redisContext *r; /* NULL: not connected */
};

int atp_redis_stream_create(const atp_redis_stream_config_t *c,
                            atp_redis_stream_t **out) {
  ATP_ASSERT(c && c->host && c->key && out);
  atp_redis_stream_t *s = atp_calloc(1, sizeof *s);
  if (!s) return ATP_ENOMEM;
  snprintf(s->host, sizeof s->host, "%s", c->host);
  snprintf(s->key, sizeof s->key, "%s", c->key);
  snprintf(s->cursor_key, sizeof s->cursor_key, "%s:cursor", c->key);
  s->port = c->port ? c->port : 6379;
  s->db = c->db;
  s->maxlen = c->maxlen ? c->maxlen : 1000000;
  s->timeout_ms = c->timeout_ms ? c->timeout_ms : 2000;
  /* A test makes the timeout short, as for the snapshot push. */
  const char *t = getenv("ATPD_TEST_REDIS_TIMEOUT_MS");
  if (t && atoi(t) > 0) s->timeout_ms = (uint32_t)atoi(t);
  *out = s;
  return 0;
}

static void drop(atp_redis_stream_t *s) {
  if (s->r) redisFree(s->r);
  s->r = NULL;
}

void atp_redis_stream_destroy(atp_redis_stream_t *s) {
  if (!s) return;
  drop(s);
  atp_free(s);
}

static int connect_once(atp_redis_stream_t *s) {
  if (s->r) return 0;
  struct timeval tv = {s->timeout_ms / 1000, (long)(s->timeout_ms % 1000) * 1000};
  s->r = redisConnectWithTimeout(s->host, s->port, tv);
  if (!s->r || s->r->err || redisSetTimeout(s->r, tv) != REDIS_OK) {
    drop(s);
    return ATP_EUNAVAILABLE;
  }
  if (s->db) {
    redisReply *reply = redisCommand(s->r, "SELECT %d", s->db);
    bool ok = reply && reply->type != REDIS_REPLY_ERROR;
    if (reply) freeReplyObject(reply);
    if (!ok) {
      drop(s);
      return ATP_EUNAVAILABLE;
    }
  }
  return 0;
}

int atp_redis_stream_cursor(atp_redis_stream_t *s, uint64_t *cursor, bool *found) {
  *cursor = 0;
  *found = false;
  int rc = connect_once(s);
  if (rc) return rc;
  redisReply *reply = redisCommand(s->r, "GET %s", s->cursor_key);
  if (!reply || reply->type == REDIS_REPLY_ERROR) {
    if (reply) freeReplyObject(reply);
    drop(s);
    return ATP_EUNAVAILABLE;
  }
  if (reply->type == REDIS_REPLY_STRING) {
    *cursor = strtoull(reply->str, NULL, 10);
    *found = true;
  }
  freeReplyObject(reply);
  return 0;
}

int atp_redis_stream_append(atp_redis_stream_t *s, const atp_str_t *events,
                            uint32_t count, uint64_t cursor) {
  int rc = connect_once(s);
  if (rc) return rc;
  char maxlen[24], seq[24];
  snprintf(maxlen, sizeof maxlen, "%" PRIu64, s->maxlen);
  snprintf(seq, sizeof seq, "%020" PRIu64, cursor);
  bool ok = redisAppendCommand(s->r, "MULTI") == REDIS_OK;
  for (uint32_t i = 0; ok && i < count; i++)
    ok = redisAppendCommand(s->r, "XADD %s MAXLEN ~ %s * event %b", s->key, maxlen,
                            events[i].ptr, (size_t)events[i].len) == REDIS_OK;
  if (ok) ok = redisAppendCommand(s->r, "SET %s %s", s->cursor_key, seq) == REDIS_OK;
  if (ok) ok = redisAppendCommand(s->r, "EXEC") == REDIS_OK;
  /* MULTI's +OK, a +QUEUED per command, then EXEC's array (nil when
   * aborted): every reply is read, so the connection stays in step. */
  uint32_t replies = count + 3;
  for (uint32_t i = 0; ok && i < replies; i++) {
    redisReply *reply = NULL;
    if (redisGetReply(s->r, (void **)&reply) != REDIS_OK || !reply) {
      ok = false;
      break;
    }
    bool last = i + 1 == replies;
    if (reply->type == REDIS_REPLY_ERROR || (last && reply->type != REDIS_REPLY_ARRAY))
      ok = false;
    freeReplyObject(reply);
  }
  if (!ok) {
    drop(s);
    return ATP_EUNAVAILABLE;
  }
  return 0;
}
