/* deadletters.h - rejected flow ops kept for their owners (CONTRACT.md 6.3).
 *
 * Every rejected op of a flow (malformed, unknown group, not_owner, conflict,
 * idempotency_mismatch; never insufficient_stock, a business outcome) becomes
 * a dead letter: its flow, the team owning it (ownership matrix), its place in
 * its batch, the error, the op's bytes and how to run it again (a batch op,
 * or the single route's method, path and query), when it came, how often it
 * was tried, and its status: open, replayed (a later attempt succeeded) or
 * resolved (closed by hand with a note).
 *
 * Ids are "dl-<n>" with n growing from 1 over the store's life, so they sort
 * by age and page by cursor. The store is bounded by a count (--dead-letters-
 * max) and by ATP_DEAD_LETTERS_BYTES_MAX: a new rejection is always kept;
 * room is made by dropping the oldest closed dead letter, and only when none
 * is closed the oldest open one, which is counted (dropped_open) and logged.
 *
 * Durability: every change is one journal record of the kinds below
 * (proto/journal.md), appended under the store's mutex before memory changes,
 * so the journal's order is the store's. Replay applies the same records with
 * the same bound, so eviction repeats itself; a snapshot writes every dead
 * letter as an ADD record, then a META record (proto/snapshot.md). Records
 * replay idempotently: an ADD of an id already seen only refreshes it (or is
 * ignored when that id was dropped), an UPDATE of an unknown id is ignored.
 *
 * Cost: look-ups by id and the choice of what to drop walk the list, O(n) in
 * the dead letters kept (10,000 by default): only ops routes and rejections
 * of a full store pay it.
 *
 * Thread: any; one mutex. Callbacks of list run under it and must not call
 * back into the store.
 */
#ifndef ATP_DEADLETTERS_H
#define ATP_DEADLETTERS_H

#include <stdbool.h>
#include <stdint.h>

#include "atp/codec.h"
#include "atp/durability.h"
#include "atp/engine.h"
#include "atp/memory.h"

#define ATP_DL_KIND_ADD    16 /* a new dead letter, whole */
#define ATP_DL_KIND_UPDATE 17 /* an attempt, a replay or a resolve */
#define ATP_DL_KIND_META   18 /* next id and drop counters (snapshots) */

typedef enum {
  ATP_DL_OPEN = 0,
  ATP_DL_REPLAYED = 1,
  ATP_DL_RESOLVED = 2,
} atp_dl_status_t;

typedef enum {
  ATP_DL_ORIGIN_ROUTE = 0, /* a single route: method, path, query, body */
  ATP_DL_ORIGIN_BATCH = 1, /* a batch op object (with op and flow) */
} atp_dl_origin_t;

/* One dead letter; strings point into the store (under its mutex) or into the
 * caller's memory (add). */
typedef struct {
  uint64_t id; /* n of "dl-<n>"; 0 in add: the store assigns it */
  atp_str_t flow, owner;
  uint32_t index; /* the op's place in its batch; 0 on a single route */
  atp_str_t code, message, field;
  uint8_t origin;  /* atp_dl_origin_t */
  uint8_t format;  /* atp_format_t of payload: JSON or MSGPACK */
  uint8_t method;  /* route origin: atp_http_method_t */
  atp_str_t path;  /* route origin: the raw path; "" for a batch op */
  atp_str_t query; /* route origin: the raw query string */
  atp_str_t payload;
  int64_t received_at;
  uint32_t attempts; /* 1 at the rejection, +1 per replay */
  uint8_t status;    /* atp_dl_status_t */
  int64_t updated_at;
  atp_str_t note, by; /* of a resolve; "" otherwise */
} atp_dead_letter_t;

typedef struct atp_deadletters atp_deadletters_t;

typedef struct {
  uint32_t max;           /* 0: ATP_DEAD_LETTERS_MAX_DEFAULT */
  atp_durable_t *durable; /* NULL: memory only (unit tests) */
} atp_deadletters_config_t;

/* ATP_ENOMEM. Registers its section with config->durable (before restore).
 * Thread: the one that starts the app. */
int atp_deadletters_create(const atp_deadletters_config_t *config,
                           atp_deadletters_t **out);
void atp_deadletters_destroy(atp_deadletters_t *dl);

/* Keeps a rejection (in->id and attempts are ignored: a new id, 1 attempt,
 * status open); *id_out gets its id. Messages and fields longer than the
 * store's limits are cut. 0; ATP_ETOOLARGE for a payload over the store's
 * bytes; or the journal's error (nothing kept). */
int atp_deadletters_add(atp_deadletters_t *dl, const atp_dead_letter_t *in,
                        uint64_t *id_out);

/* Copies dead letter id into arena (strings included). ATP_ENOTFOUND,
 * ATP_ENOMEM. */
int atp_deadletters_get(atp_deadletters_t *dl, uint64_t id, atp_arena_t *arena,
                        atp_dead_letter_t *out);

/* The outcome of a replay: attempts + 1; ok makes it replayed, else the new
 * error (code, message, field) is kept and it stays open. A non-empty
 * payload (with its format) replaces the stored one. ATP_ENOTFOUND (dropped
 * meanwhile), ATP_ECONFLICT (resolved meanwhile), or the journal's error. */
int atp_deadletters_attempt(atp_deadletters_t *dl, uint64_t id, bool ok,
                            const char *code, const char *message, const char *field,
                            atp_str_t payload, uint8_t format, int64_t at);

/* Closes id with note and by. ATP_ENOTFOUND; ATP_ECONFLICT when resolved
 * already; or the journal's error. */
int atp_deadletters_resolve(atp_deadletters_t *dl, uint64_t id, atp_str_t note,
                            atp_str_t by, int64_t at);

typedef struct {
  atp_str_t owner, flow; /* len 0: any */
  int status;            /* -1: any, else atp_dl_status_t */
  uint64_t after;        /* ids > after (the cursor) */
  uint32_t limit;        /* 1.. */
} atp_dl_filter_t;

/* Calls fn for each match in id order, at most limit; *more tells whether
 * matches remain after the last one given. */
void atp_deadletters_list(atp_deadletters_t *dl, const atp_dl_filter_t *filter,
                          void (*fn)(void *ctx, const atp_dead_letter_t *d), void *ctx,
                          bool *more);

/* For /metrics: open dead letters per owner (fn under the mutex), totals. */
typedef struct {
  uint64_t kept, open, replayed, resolved;
  uint64_t added;          /* since start, replay included */
  uint64_t dropped_open;   /* open ones dropped to make room (store's life) */
  uint64_t dropped_closed; /* closed ones dropped to make room */
  uint64_t bytes;
  uint32_t max;
} atp_dl_stats_t;
void atp_deadletters_stats(atp_deadletters_t *dl, atp_dl_stats_t *out,
                           void (*owner_fn)(void *ctx, atp_str_t owner, uint64_t open),
                           void *ctx);

/* "open", "replayed", "resolved"; -1 from parse for anything else. */
const char *atp_dl_status_name(int status);
int atp_dl_status_parse(atp_str_t s);

#endif
