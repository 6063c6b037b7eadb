/* engine.h - the available-to-promise engine: positions, groups, reservations,
 * expiry, idempotency, counts. A C library with no I/O.
 *
 * A position is one SKU at one location (CONTRACT.md section 2). Its counters
 * live in one cache line; the number a reservation must check,
 *   free = on_hand - safety_stock - reserved - committed,
 * is one atomic int64 that a reservation takes from with a compare-and-swap
 * loop, so no interleaving of threads can grant more than is free. Positions
 * are created once and never move or disappear, so readers need no memory
 * reclamation: a read is a hash probe and a few atomic loads, no mutex.
 * Creating a new position (first adjustment, count, safety stock) takes a
 * mutex; reading or reserving one never does. On-hand changes (adjustments,
 * counts, fulfilments) are serialised per position by a small spin flag,
 * because they keep a history that counts consult; reservations never take it.
 *
 * Reservations and idempotency ids live in lock-free tables (hash buckets of
 * index chains, pushed with CAS); each reservation record is mutated under its
 * own flag (commit, release, ...), never under a shared one. Expiry and the
 * purge of ended records run in atp_engine_tick(), which one thread calls
 * periodically; its cost per call grows with the work due, not with the number
 * of live reservations (a hierarchical timer wheel).
 *
 * Every state change is reported once through the change hook as a group of
 * atp_change_t records describing effects (deltas and resulting records), not
 * requests: replaying the records with atp_engine_apply() rebuilds the same
 * state whatever the interleaving that produced them.
 *
 * Strings passed in are copied or interned; strings handed out (atp_str_t in
 * results) point into engine memory that lives as long as the engine, except
 * where a comment says otherwise.
 *
 * Errors: negative ATP_E* codes from error.h. Where an error concerns one field,
 * the atp_result_t names it.
 */
#ifndef ATP_ENGINE_H
#define ATP_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atp/error.h"
#include "atp/limits.h"

/* INT64_MIN marks an absent time (counted_at never set, no expiry). */
#define ATP_TIME_NONE INT64_MIN

typedef struct atp_engine atp_engine_t;

typedef struct {
  const char *ptr; /* not NUL-terminated unless stated */
  uint32_t len;
} atp_str_t;

#define ATP_STR(lit) ((atp_str_t){(lit), (uint32_t)(sizeof(lit) - 1)})

/* --- results ---------------------------------------------------------------- */

/* Details of a failed call, filled by every mutating function when it returns
 * an error. field is the offending request field ("lines[2].qty") or "" ;
 * message is an English sentence. Both are NUL-terminated. */
typedef struct {
  char field[64];
  char message[160];
  int64_t current_on_hand; /* ATP_ECONFLICT from change_from: the on_hand found */
  int status;              /* ATP_ECONFLICT on a reservation: its atp_status_t */
} atp_result_t;

/* --- positions ------------------------------------------------------------- */

typedef struct {
  atp_str_t sku;
  atp_str_t location;
  int64_t on_hand;
  int64_t safety_stock;
  int64_t reserved;      /* units of held reservations */
  int64_t committed;     /* units of committed reservations not yet fulfilled */
  int64_t available;     /* max(0, on_hand - safety_stock - reserved - committed) */
  int64_t shortfall;     /* max(0, reserved + committed - on_hand) */
  int64_t counted_at_ms; /* ATP_TIME_NONE if never counted */
  uint64_t version;      /* strictly increasing on every change; 0 never used */
} atp_position_t;

/* --- reservations ---------------------------------------------------------- */

typedef enum {
  ATP_STATUS_HELD = 0,
  ATP_STATUS_COMMITTED = 1,
  ATP_STATUS_RELEASED = 2,
  ATP_STATUS_EXPIRED = 3,
  ATP_STATUS_FULFILLED = 4,
} atp_status_t;

/* "held", "committed", ... */
const char *atp_status_name(atp_status_t status);

/* One line of a reserve or amend request. Exactly one of location and group is
 * non-empty (len > 0). */
typedef struct {
  atp_str_t sku;
  atp_str_t location;
  atp_str_t group;
  int64_t qty;      /* >= 1 */
  bool allow_split; /* group lines only: may split across group locations */
} atp_line_req_t;

/* One line naming a position and a quantity: release, fulfil, amend's release. */
typedef struct {
  atp_str_t sku;
  atp_str_t location;
  int64_t qty; /* >= 1 */
} atp_qty_line_t;

typedef struct {
  atp_str_t id;
  const atp_line_req_t *lines;
  uint32_t line_count; /* 1..ATP_RESERVATION_LINES_MAX */
  int64_t ttl_ms;      /* 0: ATP_TTL_MS_DEFAULT; else MIN..MAX */
  atp_str_t order_ref; /* optional (len 0 when absent), also channel... */
  atp_str_t channel;
  atp_str_t customer_id;
} atp_reserve_req_t;

typedef struct {
  atp_str_t sku;
  atp_str_t location;
  int64_t qty;       /* units granted on this position */
  int64_t fulfilled; /* of qty, units fulfilled */
  int64_t released;  /* of qty, units released (or expired) */
} atp_res_line_t;

/* A reservation as read. The caller owns the struct (it is large: put it in an
 * arena or a thread-local, not on a small stack); the strings inside point into
 * the struct's own text buffer and live as long as the struct. */
typedef struct {
  atp_str_t id;
  atp_status_t status;
  int64_t created_at_ms;
  int64_t expires_at_ms; /* ATP_TIME_NONE unless status is held */
  int64_t ttl_ms;
  int64_t ended_at_ms; /* ATP_TIME_NONE while held or committed */
  atp_str_t order_ref; /* len 0 when absent; likewise the three below */
  atp_str_t order_id;
  atp_str_t channel;
  atp_str_t customer_id;
  bool replayed; /* the call was an idempotent replay */
  /* Of the creating request's content, so a replay after restore still tells
   * the same request from another with the id (journal and snapshots). */
  uint64_t content_hash;
  uint32_t line_count;
  atp_res_line_t lines[ATP_RESERVATION_POSITIONS_MAX];
  char text[5 * ATP_ID_BYTES_MAX + 8]; /* backing for id and the four strings */
} atp_reservation_t;

/* Why a reserve or amend could not be filled: one entry per failing line. */
typedef struct {
  uint32_t line; /* index into the request's lines (amend: its add list) */
  atp_str_t sku;
  atp_str_t location; /* the line's location, or len 0 */
  atp_str_t group;    /* the line's group, or len 0 */
  int64_t requested;
  /* Units that could have been had for the line: at the position; for a group
   * line without allow_split, at the best single location of the group (the
   * line goes whole to one location); for a split line, summed over the group. */
  int64_t available;
  /* A group line without allow_split: the location with the most available
   * (first in group order on a tie), len 0 when none has any. */
  atp_str_t best_location;
  /* A group line without allow_split: the units allow_split could take, summed
   * over the group (>= requested: allow_split would fill it); -1 otherwise. */
  int64_t split_available;
} atp_shortfall_t;

typedef struct {
  uint32_t count;
  atp_shortfall_t items[ATP_RESERVATION_LINES_MAX];
} atp_shortfalls_t;

/* --- stock changes --------------------------------------------------------- */

typedef enum {
  ATP_REASON_RECEIVED,
  ATP_REASON_SALE,
  ATP_REASON_RETURN_RESTOCK,
  ATP_REASON_DAMAGED,
  ATP_REASON_SHRINK,
  ATP_REASON_CORRECTION,
  ATP_REASON_TRANSFER_IN,
  ATP_REASON_TRANSFER_OUT,
  ATP_REASON_OTHER,
  ATP_REASON_COUNT_ /* number of reasons; not a reason */
} atp_reason_t;

/* "received", ...; NULL for an out-of-range value. */
const char *atp_reason_name(atp_reason_t reason);
/* ATP_EBADREQ for an unknown name. */
int atp_reason_parse(atp_str_t name, atp_reason_t *out);

typedef struct {
  atp_str_t id;
  atp_str_t sku;
  atp_str_t location;
  int64_t delta; /* != 0 */
  atp_reason_t reason;
  atp_str_t source;
  int64_t occurred_at_ms; /* ATP_TIME_NONE: now */
  atp_str_t ref;          /* optional */
  bool has_change_from;
  int64_t change_from;
} atp_adjust_req_t;

typedef struct {
  bool applied;  /* on_hand changed */
  bool absorbed; /* occurred_at <= counted_at: a count already saw it */
  bool replayed;
  atp_position_t position; /* after the call (the original one on replay) */
} atp_adjust_res_t;

typedef struct {
  atp_str_t id;
  atp_str_t sku;
  atp_str_t location;
  int64_t on_hand; /* >= 0 */
  int64_t counted_at_ms;
  atp_str_t source;
  bool has_change_from;
  int64_t change_from;
} atp_count_req_t;

typedef struct {
  bool applied;
  bool stale;       /* older than the position's counted_at: nothing changed */
  bool approximate; /* older than the history window: applied as best known */
  bool replayed;
  atp_position_t position;
} atp_count_res_t;

/* --- change records (journal, metrics, change feed) ------------------------ */

typedef enum {
  /* A position's counters moved by the deltas; creates it if unknown. */
  ATP_CHANGE_POSITION = 1,
  /* A reservation's whole record after the change (upsert by id). */
  ATP_CHANGE_RESERVATION = 2,
  /* A group replaced (location_count > 0) or deleted (location_count == 0). */
  ATP_CHANGE_GROUP = 3,
  /* An idempotency id and its outcome were remembered. */
  ATP_CHANGE_IDEMPOTENCY = 4,
} atp_change_kind_t;

typedef enum {
  ATP_CAUSE_ADJUST = 1,
  ATP_CAUSE_COUNT,
  ATP_CAUSE_SAFETY,
  ATP_CAUSE_RESERVE,
  ATP_CAUSE_COMMIT,
  ATP_CAUSE_RELEASE,
  ATP_CAUSE_EXPIRE,
  ATP_CAUSE_FULFIL,
  ATP_CAUSE_AMEND,
  ATP_CAUSE_EXTEND,
  ATP_CAUSE_GROUP,
  ATP_CAUSE_PURGE, /* an ended reservation or id passed its retention */
  /* Records of atp_engine_export (snapshots), never of the hook: */
  ATP_CAUSE_SNAPSHOT, /* an object's whole state; a position's deltas are its
                         values from zero, its occurred_at its history floor */
  ATP_CAUSE_HISTORY,  /* one entry of a position's on-hand history: d_on_hand
                         and occurred_at only; moves no counter */
} atp_cause_t;

typedef struct {
  atp_str_t sku;
  atp_str_t location;
  int64_t d_on_hand;
  int64_t d_safety_stock;
  int64_t d_reserved;
  int64_t d_committed;
  int64_t counted_at_ms;  /* new counted_at, or ATP_TIME_NONE if unchanged */
  int64_t occurred_at_ms; /* for on-hand changes kept in history, else NONE */
  uint64_t version;       /* the position's version after this change */
} atp_change_position_t;

typedef enum {
  ATP_IDEM_ADJUST = 1,
  ATP_IDEM_COUNT = 2,
  ATP_IDEM_FULFIL = 3,
  ATP_IDEM_AMEND = 4,
  ATP_IDEM_RELEASE = 5,
} atp_idem_kind_t;

/* Idempotency namespaces: adjustment and count ids share one (both write
 * on_hand from the same integration flows, so an adjustment id reused for a
 * count is a client's mistake: ATP_EIDEMPOTENCY, never a second write).
 * Reservation ids are their own namespace (the id names the resource), and
 * fulfillment_id, amend_id and release_id are each one namespace of their own
 * across every reservation. */

typedef struct {
  atp_idem_kind_t kind;
  atp_str_t id;
  uint64_t content_hash; /* of the request's content, for mismatch detection */
  int64_t created_at_ms;
  uint32_t flags;           /* outcome bits (applied, absorbed, stale, approximate) */
  atp_position_t position;  /* the outcome's position (adjust, count) */
  atp_str_t reservation_id; /* fulfil, amend, release: the reservation they acted on */
} atp_change_idem_t;

typedef struct {
  atp_str_t name;
  const atp_str_t *locations;
  uint32_t location_count; /* 0: deleted */
} atp_change_group_t;

typedef struct {
  atp_change_kind_t kind;
  atp_cause_t cause;
  atp_str_t cause_id; /* the request id behind it (reservation, adjustment...) */
  int64_t at_ms;      /* engine time of the change */
  union {
    atp_change_position_t position;
    const atp_reservation_t *reservation; /* valid during the hook call only */
    atp_change_group_t group;
    atp_change_idem_t idem;
  } u;
} atp_change_t;

/* Called once per state change, on the thread that made it, with every record
 * of that change (count >= 1), after the change is visible. Must not call back
 * into the engine. The records and every string they point to are valid only
 * during the call. Calls from different threads may overlap. */
typedef void (*atp_change_fn)(void *ctx, const atp_change_t *records, uint32_t count);

/* The engine's clock, in ms since the Unix epoch. Tests inject their own. */
typedef int64_t (*atp_clock_fn)(void *ctx);

typedef struct {
  uint32_t positions_max;     /* 0: ATP_POSITIONS_MAX_DEFAULT */
  uint32_t reservations_max;  /* 0: ATP_RESERVATIONS_MAX_DEFAULT */
  uint32_t idempotency_max;   /* 0: ATP_IDEMPOTENCY_MAX_DEFAULT */
  int64_t idempotency_ttl_ms; /* 0: ATP_IDEMPOTENCY_TTL_MS_DEFAULT */
  int64_t ended_ttl_ms;       /* 0: ATP_ENDED_TTL_MS_DEFAULT */
  int64_t history_window_ms;  /* 0: ATP_HISTORY_WINDOW_MS_DEFAULT */
  int64_t clock_skew_ms;      /* 0: ATP_CLOCK_SKEW_MS_DEFAULT; how far past now an
                                 occurred_at or counted_at may lie */
  atp_clock_fn clock;         /* NULL: the real-time clock */
  void *clock_ctx;
  atp_change_fn on_change; /* NULL: no hook */
  void *change_ctx;
} atp_engine_config_t;

/* --- lifecycle ------------------------------------------------------------- */

/* Allocates every table up front from the config. ATP_ENOMEM if it cannot.
 * Thread: any, once. */
int atp_engine_create(const atp_engine_config_t *config, atp_engine_t **out);

/* Frees everything. No other call may run or follow. */
void atp_engine_destroy(atp_engine_t *engine);

/* Now, by the engine's clock (the held reading, on a thread that holds one).
 * Thread: any. */
int64_t atp_engine_now_ms(const atp_engine_t *engine);

/* Reads the engine's clock once and holds that reading on this thread: until
 * atp_engine_clock_release, every call this thread makes into the engine
 * takes it as now (an op's times, ids' creation times, changes' at_ms). A
 * batch holds one reading for a run of ops a few microseconds long instead
 * of reading the clock two or three times an op; the caller keeps the run
 * short (the clock has millisecond resolution), refreshes by calling again
 * and releases before it returns to anything else. The ticker, on its own
 * thread, always reads the clock. Returns the reading. Thread: the caller's. */
int64_t atp_engine_clock_hold(atp_engine_t *engine);
void atp_engine_clock_release(atp_engine_t *engine);

/* Expires held reservations whose expires_at has passed, purges ended
 * reservations and idempotency ids past their retention. Returns how many
 * reservations it expired. Thread: exactly one thread calls it, repeatedly
 * (the server every 100 ms); it may run concurrently with every other call. */
uint32_t atp_engine_tick(atp_engine_t *engine);

typedef struct {
  uint64_t positions;
  uint64_t positions_max;
  uint64_t reservations_by_status[5]; /* indexed by atp_status_t, retained ones */
  uint64_t expirations;               /* since start */
  uint64_t idempotency_ids;
  uint64_t idempotency_max;
  uint64_t groups;
} atp_engine_stats_t;

/* Gauges and counters for /metrics; approximate under concurrency. Thread: any. */
void atp_engine_stats(const atp_engine_t *engine, atp_engine_stats_t *out);

/* --- reads (never block, never take a mutex) ------------------------------- */

/* ATP_ENOTFOUND if the position was never seen. Thread: any. */
int atp_position_get(const atp_engine_t *engine, atp_str_t sku, atp_str_t location,
                     atp_position_t *out);

typedef struct {
  atp_str_t sku;
  atp_str_t location;
} atp_key_t;

/* Reads count positions: out[i] and found[i] = true for a position seen,
 * found[i] = false (out[i] untouched) otherwise; returns how many were found.
 * The same answers as count calls of atp_position_get, but the look-ups of a
 * batch are interleaved stage by stage (hash, index slot, position), with the
 * memory of the next stage prefetched, so their cache misses overlap instead
 * of following one another: the way to read many positions. Thread: any. */
uint32_t atp_positions_get(const atp_engine_t *engine, const atp_key_t *keys,
                           uint32_t count, atp_position_t *out, bool *found);

/* Every position of sku, sorted by available descending then location
 * ascending, at most out_max of them; *count gets how many exist (may exceed
 * out_max: then the first out_max in that order are written). 0 for an unknown
 * sku. Thread: any. */
int atp_sku_positions(const atp_engine_t *engine, atp_str_t sku, atp_position_t *out,
                      uint32_t out_max, uint32_t *count);

/* The group's locations in order into out (at most out_max), *count gets the
 * number. ATP_ENOTFOUND for an unknown group. Thread: any. */
int atp_group_get(const atp_engine_t *engine, atp_str_t name, atp_str_t *out,
                  uint32_t out_max, uint32_t *count);

/* Calls fn for every group in no particular order. Thread: any. */
void atp_group_each(const atp_engine_t *engine,
                    void (*fn)(void *ctx, atp_str_t name, const atp_str_t *locations,
                               uint32_t count),
                    void *ctx);

/* Copies the reservation. ATP_ENOTFOUND if unknown or purged. Thread: any. */
int atp_reservation_get(const atp_engine_t *engine, atp_str_t id,
                        atp_reservation_t *out);

/* --- on-hand history (reconciliation) ------------------------------------- */

/* What the position's on-hand history says about a past instant t: its state
 * now, the sum of the on-hand changes this service applied to it whose
 * occurred_at is after t (adjustments and fulfilments, as a count at t would
 * add them: CONTRACT.md section 5), and whether the history covers t. It does
 * not when t is older than the history window or than the oldest change the
 * per-position cap dropped: the sum may then miss changes, and a count at t
 * would be approximate. ATP_ENOTFOUND for a position never seen.
 *
 * The position and the sum are taken together under the position's on-hand
 * flag, so "position->on_hand - *changes_after" is one instant's figure for t
 * (reservations move reserved and committed without the flag; their figures
 * are read by the usual protocol). Unlike the reads above it may wait for the
 * flag for the length of one adjustment; O(history entries), at most
 * ATP_HISTORY_ENTRIES_MAX. Thread: any. */
int atp_position_changes_after(const atp_engine_t *engine, atp_str_t sku,
                               atp_str_t location, int64_t t_ms,
                               atp_position_t *position, int64_t *changes_after,
                               bool *covered);

/* Calls fn for every position, in creation order, read by the usual protocol;
 * a position created during the walk may be missed. A nonzero return from fn
 * stops the walk and is returned. O(positions): for operator reports, not for
 * request paths. Thread: any. */
int atp_position_each(const atp_engine_t *engine,
                      int (*fn)(void *ctx, const atp_position_t *position), void *ctx);

/* Positions created so far: creation indexes 0 .. count - 1. Thread: any. */
uint32_t atp_position_count(const atp_engine_t *engine);
/* atp_position_each in pieces, for a walk spread over time (GET
 * /v1/changes/snapshot streams its answer): fn gets the positions of creation
 * index *next .. upto - 1 (upto <= atp_position_count) in order, until fn
 * returns nonzero, which is returned; *next gets the index after the last
 * position handed to fn. Thread: any. */
int atp_position_each_from(const atp_engine_t *engine, uint32_t *next, uint32_t upto,
                           int (*fn)(void *ctx, const atp_position_t *position),
                           void *ctx);

/* --- mutations ------------------------------------------------------------- */
/* Each validates its whole request first (ATP_EBADREQ naming the field) and
 * changes nothing when it fails. All are safe from any thread at once. */

/* Replaces (creates) the group; locations 1..ATP_GROUP_LOCATIONS_MAX, no
 * duplicates. Groups are not idempotency-keyed: a PUT is naturally idempotent. */
int atp_group_put(atp_engine_t *engine, atp_str_t name, const atp_str_t *locations,
                  uint32_t count, atp_result_t *result);

/* ATP_ENOTFOUND for an unknown group. */
int atp_group_delete(atp_engine_t *engine, atp_str_t name, atp_result_t *result);

/* Sets safety stock (>= 0), creating the position if unknown. *out gets the
 * position after. Not idempotency-keyed: setting a value is idempotent. */
int atp_safety_stock_set(atp_engine_t *engine, atp_str_t sku, atp_str_t location,
                         int64_t safety_stock, atp_position_t *out,
                         atp_result_t *result);

/* Warming the cache for a call a little later (a batch's ops ahead of their
 * turn), in two steps an op apart, as its look-ups are chains of dependent
 * cache misses: the first fetches the id's bucket head (an adjustment's or a
 * count's in the idempotency table, a reservation's in the reservations')
 * and the position's index entry (an empty location: none), the second, once
 * those are in, the first record on the id's chain and the position itself.
 * Only the cache sees them: any strings. Thread: any. */
typedef enum { ATP_PREFETCH_ONHAND, ATP_PREFETCH_RESERVE } atp_prefetch_kind_t;
typedef struct {
  atp_prefetch_kind_t kind;
  bool position;
  uint64_t id_hash, position_hash;
} atp_prefetch_t;
void atp_engine_prefetch(const atp_engine_t *engine, atp_prefetch_kind_t kind,
                         atp_str_t id, atp_str_t sku, atp_str_t location,
                         atp_prefetch_t *out);
void atp_engine_prefetch_next(const atp_engine_t *engine, const atp_prefetch_t *pf);

/* Adjusts on_hand by delta (CONTRACT.md section 5). ATP_ECONFLICT when
 * change_from differs (result->current_on_hand, and res->position filled; for
 * a position never seen, whose on_hand counts as 0, a zero position with
 * version 0, and nothing is created); ATP_EIDEMPOTENCY when the id was used
 * with other content; ATP_EBADREQ naming occurred_at when it lies more than
 * clock_skew_ms after now. */

int atp_adjust(atp_engine_t *engine, const atp_adjust_req_t *req, atp_adjust_res_t *res,
               atp_result_t *result);

/* Applies a count (CONTRACT.md section 5). ATP_ECONFLICT from change_from as
 * for atp_adjust; ATP_EBADREQ naming counted_at when it lies more than
 * clock_skew_ms after now. */
int atp_count(atp_engine_t *engine, const atp_count_req_t *req, atp_count_res_t *res,
              atp_result_t *result);

/* Replays. A replay changes nothing and sets replayed. Adjustments and counts
 * answer the outcome remembered with their id, position included: the position
 * right after the original call (other writers move a position; its state now
 * says nothing about this request, and version orders it against later reads).
 * Every reservation route (reserve, commit, release, fulfil, amend) answers
 * the reservation as it is now: the id names that resource, and a retrying
 * client must act on its current state (a retried reserve must see that it was
 * committed since), never on a copy of what it was. */

/* Holds every line or none. On ATP_EINSUFFICIENT, *shortfalls (if not NULL)
 * lists the failing lines and nothing is held. The same id with the same
 * content returns the reservation as it is now with replayed set; with other
 * content ATP_EIDEMPOTENCY. A refused reservation leaves no trace: its id may be
 * used again. */
int atp_reserve(atp_engine_t *engine, const atp_reserve_req_t *req,
                atp_reservation_t *out, atp_shortfalls_t *shortfalls,
                atp_result_t *result);

/* held -> committed (order_id optional, len 0 when absent). Committed again
 * with no order_id or the recorded one: replayed. Committed again with an
 * order_id when none is recorded (committed without one, or by fulfil): the
 * order_id is set (not a replay). With another order_id than the recorded one:
 * ATP_ECONFLICT (field order_id, result->status committed), nothing changes.
 * ATP_ECONFLICT from released, expired, fulfilled. */
int atp_commit(atp_engine_t *engine, atp_str_t id, atp_str_t order_id,
               atp_reservation_t *out, atp_result_t *result);

/* Releases every remaining unit (line_count 0) or the named ones. Released
 * when nothing remains. Releasing a released reservation: replayed.
 * ATP_ECONFLICT from expired or fulfilled, or when a line names more than
 * remains; ATP_EBADREQ naming a line whose position is not in the
 * reservation. */
int atp_release(atp_engine_t *engine, atp_str_t id, const atp_qty_line_t *lines,
                uint32_t line_count, atp_reservation_t *out, atp_result_t *result);

/* atp_release with an idempotency key (release_id, len 0: none, as
 * atp_release). The same release_id with the same reservation and lines is a
 * replay that changes nothing; with other content ATP_EIDEMPOTENCY. The key is
 * remembered only when the release changed something (a refused release, or
 * one on a released reservation, leaves it free). */
int atp_release_keyed(atp_engine_t *engine, atp_str_t id, atp_str_t release_id,
                      const atp_qty_line_t *lines, uint32_t line_count,
                      atp_reservation_t *out, atp_result_t *result);

/* expires_at = now + ttl_ms (ATP_TTL_MS_MIN..MAX); only while held. */
int atp_extend(atp_engine_t *engine, atp_str_t id, int64_t ttl_ms,
               atp_reservation_t *out, atp_result_t *result);

/* Fulfils every remaining unit (line_count 0) or the named ones: on_hand and
 * committed drop together. A held reservation is committed first. Fulfilled
 * when nothing remains. fulfillment_id is an idempotency key. */
int atp_fulfil(atp_engine_t *engine, atp_str_t id, atp_str_t fulfillment_id,
               const atp_qty_line_t *lines, uint32_t line_count, atp_reservation_t *out,
               atp_result_t *result);

/* Releases the release lines and holds the add lines, both or neither
 * (ATP_EINSUFFICIENT with *shortfalls indexed into add). Only while held or
 * committed (added units are then held or committed alike). amend_id is an
 * idempotency key. */
int atp_amend(atp_engine_t *engine, atp_str_t id, atp_str_t amend_id,
              const atp_qty_line_t *release, uint32_t release_count,
              const atp_line_req_t *add, uint32_t add_count, atp_reservation_t *out,
              atp_shortfalls_t *shortfalls, atp_result_t *result);

/* --- replay (journal recovery) --------------------------------------------- */

/* Applies change records as produced by the hook, without calling the hook.
 * Used to rebuild state; the engine must not be serving other calls.
 * ATP_EBADREQ for a malformed record. Thread: one, with nothing else running.
 *
 * Records of atp_engine_export (cause snapshot and history) import a
 * snapshot into an empty engine. A position imported so keeps the version it
 * had as its base: a later position change with a version at or below the
 * base is skipped, since the snapshot already holds it (the journal from the
 * snapshot's LSN on repeats changes the fuzzy copy caught). The base is fixed
 * at import, not the running maximum: threads report one position's changes
 * in any order, so a change with a lower version can follow a higher one. */
int atp_engine_apply(atp_engine_t *engine, const atp_change_t *records, uint32_t count);

/* --- export (snapshots) ---------------------------------------------------- */

/* Receives the records of atp_engine_export, a batch at a time (count >= 1);
 * the records and their strings are valid during the call only. A nonzero
 * return stops the export, which returns it. */
typedef int (*atp_export_fn)(void *ctx, const atp_change_t *records, uint32_t count);

typedef struct {
  uint64_t positions;
  uint64_t history_entries;
  uint64_t reservations;
  uint64_t idempotency_ids;
  uint64_t groups;
} atp_export_counts_t;

/* Walks all state and emits it as change records of the hook's kinds, with
 * cause ATP_CAUSE_SNAPSHOT: each position as one record whose deltas are its
 * values from zero (version its version, counted_at its counted_at,
 * occurred_at the floor of its history) followed by one ATP_CAUSE_HISTORY
 * record per history entry, oldest first; each retained reservation as its
 * whole record; each idempotency id with its outcome; each group. Order:
 * positions, groups, reservations, idempotency ids, so that atp_engine_apply
 * of the records in order on an empty engine rebuilds the state.
 *
 * Runs while every other call runs and stops none of them: each object is
 * copied consistently on its own (a position under its on-hand flag and its
 * read protocol, a reservation validated by its sequence word), the whole is
 * fuzzy. It is made exact by replaying, after the import, the change records
 * reported from before the walk began: atp_engine_apply skips a position
 * change whose version the import already holds (see below), reservations
 * and idempotency ids are whole records reported in the order they changed,
 * and groups are reported in order under the engine's mutex.
 *
 * Thread: any, one export at a time; not the hook's thread inside the hook. */
int atp_engine_export(atp_engine_t *engine, atp_export_fn fn, void *ctx,
                      atp_export_counts_t *counts);

#endif
