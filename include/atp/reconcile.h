/* reconcile.h - reconciliation reports: an external system's stock at an
 * instant compared with ours (CONTRACT.md section 6.5).
 *
 * An export says "the WMS had `theirs` units of this SKU at this location at
 * as_of". Ours is the position's on_hand now; between as_of and now this
 * service applied changes whose occurred_at is after as_of (sales synced late,
 * receipts), so our figure for as_of is on_hand - changes_after_as_of, read
 * together under the position's on-hand flag (atp_position_changes_after).
 * The difference that remains, diff = ours - changes_after_as_of - theirs, is
 * what nobody explains:
 *   - diff 0: matched (not listed; counted);
 *   - diff != 0: mismatched, reason "unexplained", or "history_window" when
 *     the history does not reach back to as_of (the item says approximate);
 *   - in the export, never seen here, theirs != 0: missing_here (theirs 0 and
 *     unseen agree: matched);
 *   - held here at a location the export names, absent from the export, our
 *     figure for as_of != 0: missing_there (an export of a location lists all
 *     it holds: what it omits it does not hold).
 * A report keeps every non-matched item (bounded: ATP_RECON_ITEMS_MAX_DEFAULT
 * over all reports) in export order, then the missing_there ones in position
 * creation order; an answer lists a page of them.
 *
 * Apply turns the items into counts at as_of from the report's source, one
 * deterministic count id per item ("recon:" + 32 hex digits of a 128-bit hash
 * of report id, sku and location: the three together exceed an id's 128
 * bytes), so a retried apply replays in the engine and changes nothing. The
 * count's own rules then hold: on_hand = theirs + changes after as_of, stale
 * when the position was counted after as_of. missing_there items are counted
 * as 0 only when the caller asks (a partial export would otherwise zero what
 * it left out); otherwise they are reported skipped.
 *
 * Durability: with config.durable, every change of a report (create, apply,
 * close) journals the whole report, its items in chunks (kind
 * ATP_RECON_KIND_ITEMS) then its header (ATP_RECON_KIND_REPORT) carrying a
 * version that each change raises; an eviction journals ATP_RECON_KIND_EVICT.
 * Replay builds a report from its chunks and makes it the report only when
 * the header comes, and only when its version is newer, so a torn tail or a
 * fuzzy snapshot's repeated records change nothing (proto/journal.md). A
 * snapshot writes every report the same way, then ATP_RECON_KIND_META. A
 * change the journal refuses is undone and its error returned.
 *
 * Locks: the store's mutex guards the report list; each report has its own,
 * held while it is written out, applied or closed; the order is store, then
 * report. Only closed reports are evicted, oldest first, when a new one needs
 * room. Thread: every function from any thread.
 */
#ifndef ATP_RECONCILE_H
#define ATP_RECONCILE_H

#include <stdbool.h>
#include <stdint.h>

#include "atp/codec.h"
#include "atp/durability.h"
#include "atp/engine.h"
#include "atp/memory.h"

#define ATP_RECON_REPORTS_MAX_DEFAULT 1000
#define ATP_RECON_ITEMS_MAX_DEFAULT   2000000 /* non-matched items over all reports */
#define ATP_RECON_POSITIONS_MAX       1000000 /* positions in one export */
#define ATP_RECON_ITEMS_PAGE_DEFAULT  1000    /* items one answer lists */
#define ATP_RECON_ITEMS_PAGE_MAX      10000
#define ATP_RECON_LIST_DEFAULT        100 /* reports one listing answers */
#define ATP_RECON_LIST_MAX            1000
#define ATP_RECON_NOTE_BYTES_MAX      1024

/* Journal and snapshot record kinds (proto/journal.md). */
#define ATP_RECON_KIND_REPORT 40
#define ATP_RECON_KIND_ITEMS  41
#define ATP_RECON_KIND_EVICT  42
#define ATP_RECON_KIND_META   43

typedef struct atp_recon_store atp_recon_store_t;
typedef struct atp_recon_report atp_recon_report_t;

typedef enum {
  ATP_RECON_OPEN = 0,
  ATP_RECON_APPLIED = 1,
  ATP_RECON_CLOSED = 2,
  ATP_RECON_STATUS_COUNT_
} atp_recon_status_t;

/* "open", "applied", "closed"; ATP_EBADREQ for another name. */
const char *atp_recon_status_name(atp_recon_status_t status);
int atp_recon_status_parse(atp_str_t name, atp_recon_status_t *out);

typedef struct {
  uint32_t reports_max; /* 0: ATP_RECON_REPORTS_MAX_DEFAULT */
  uint64_t items_max;   /* 0: ATP_RECON_ITEMS_MAX_DEFAULT */
  /* NULL: memory only. Otherwise the store registers its section (kinds
   * ATP_RECON_KIND_REPORT..META) before the restore. */
  atp_durable_t *durable;
} atp_recon_config_t;

/* ATP_ENOMEM, or atp_durable_register's error. */
int atp_recon_store_create(const atp_recon_config_t *config, atp_recon_store_t **out);
void atp_recon_store_destroy(atp_recon_store_t *store);

/* One line of an export; validated by the caller (ids, 0 <= on_hand). line is
 * the CSV line (0 for JSON and msgpack), for messages. */
typedef struct {
  atp_str_t sku;
  atp_str_t location;
  int64_t on_hand;
  uint32_t line;
} atp_recon_position_t;

typedef struct {
  atp_str_t id;
  atp_str_t source;
  int64_t as_of_ms;
  const atp_recon_position_t *positions;
  uint32_t count; /* 0..ATP_RECON_POSITIONS_MAX */
} atp_recon_request_t;

/* Compares and stores a report. The same id with the same content (source,
 * as_of, positions in order) changes nothing and sets *replayed; with other
 * content ATP_EIDEMPOTENCY. ATP_EBADREQ naming "positions[j]" (or "line N")
 * for a position given twice; ATP_EFULL with a sentence when the store holds
 * reports_max reports or items_max items and no closed report can go;
 * ATP_ENOMEM. */
int atp_recon_create(atp_recon_store_t *store, const atp_engine_t *engine,
                     const atp_recon_request_t *req, bool *replayed,
                     atp_result_t *result);

/* Writes the report as an object: figures, status, apply and close details,
 * and items[items_from, items_from + items_limit) with "items_next" when more
 * follow; "replayed": true when replayed. ATP_ENOTFOUND. */
int atp_recon_write(atp_recon_store_t *store, atp_str_t id, uint32_t items_from,
                    uint32_t items_limit, bool replayed, atp_writer_t *w);

/* Writes {reconciliations: [report without items...], cursor?}: reports
 * created after cursor `after` (0: from the first), oldest first, of the
 * status (-1: any), at most limit; "cursor" is present when more may follow. */
void atp_recon_list_write(atp_recon_store_t *store, int status, uint64_t after,
                          uint32_t limit, atp_writer_t *w);

/* The report's source into out (ATP_ID_BYTES_MAX + 1 bytes), for the
 * ownership check before apply. ATP_ENOTFOUND. */
int atp_recon_source(atp_recon_store_t *store, atp_str_t id, char *out);

typedef struct {
  uint64_t applied;  /* counts that changed a position */
  uint64_t stale;    /* counts older than the position's counted_at */
  uint64_t replayed; /* counts a previous apply already made */
  uint64_t skipped;  /* missing_there items without zero_missing_there */
  uint64_t failed;   /* refused by the engine (capacity, id reuse) */
} atp_recon_apply_t;

/* Applies every item as a count at as_of (see the top). ATP_ENOTFOUND;
 * ATP_ECONFLICT for a closed report. *out gets the figures of this call; an
 * apply that changed nothing (every count a replay of an earlier apply's)
 * leaves the report as it was and sets *replayed. */
int atp_recon_apply(atp_recon_store_t *store, atp_engine_t *engine, atp_str_t id,
                    bool zero_missing_there, atp_recon_apply_t *out, bool *replayed,
                    atp_result_t *result);

/* Closes the report with note and by. Closing a closed report changes nothing
 * and sets *replayed. ATP_ENOTFOUND. */
int atp_recon_close(atp_recon_store_t *store, atp_str_t id, atp_str_t note,
                    atp_str_t by, int64_t now_ms, bool *replayed, atp_result_t *result);

/* Prometheus lines: reports by status, items held, positions compared. */
void atp_recon_metrics_write(atp_recon_store_t *store, atp_buf_t *out);

#endif
