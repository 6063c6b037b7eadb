/* durability.h - the engine's state made durable through the journal: the
 * change hook that journals every change, restore at start, admission of
 * mutations, and the ticket horizon answers wait on (proto/journal.md).
 *
 * Wiring. atp_durable_create comes first; its atp_durable_hook is the engine's
 * on_change (change_ctx: the atp_durable_t). atp_durable_restore then opens
 * the journal in config->dir and replays it into the engine (decode, then
 * atp_engine_apply), before anything else touches the engine. After that
 * every hook call encodes its records into one payload and appends it inside
 * the hook: the engine calls the hook under the changed object's own flag,
 * so one reservation's (or one position's on-hand) records get LSNs in the
 * order they happened, which replay needs (reservations are whole-record
 * upserts).
 *
 * A mutating thread asks atp_durable_admit first (503 when it refuses), then
 * brackets the mutation with atp_durable_begin/end on its own slot. end
 * returns a target: the answer may leave once the durable ticket (passed to
 * on_release, and atp_durable_ticket) reaches it. In mode none end returns 0
 * and nothing waits (the journal still writes within ~10 ms).
 *
 * Holds that expired while the server was down: replay files every held
 * reservation in the engine's timer wheel, and the engine's first tick
 * expires every overdue one through the hook, so the expiry is journaled.
 *
 * Thread: create, restore and close once, from one thread; the rest from any.
 */
#ifndef ATP_DURABILITY_H
#define ATP_DURABILITY_H

#include <stdbool.h>
#include <stdint.h>

#include "atp/engine.h"
#include "atp/journal.h"
#include "atp/records.h"

typedef struct atp_durable atp_durable_t;

/* Called on the journal's writer thread when the durable ticket advanced. */
typedef void (*atp_durable_release_fn)(void *ctx, uint64_t durable_ticket);

typedef struct {
  const char *dir;                   /* the journal's directory: <data-dir>/journal */
  atp_journal_mode_t mode;           /* none, batch, always */
  uint64_t queue_bytes_max;          /* 0: the journal's default */
  atp_durable_release_fn on_release; /* NULL: none */
  void *release_ctx;
  atp_journal_fault_fn fault; /* tests only */
  void *fault_ctx;
} atp_durable_config_t;

/* What the restore did, for the log and /metrics. */
typedef struct {
  atp_journal_scan_t scan; /* records, tail cut, error text */
  int64_t duration_ms;
  uint64_t payloads_applied;
} atp_durable_restore_t;

/* ATP_ENOMEM. Thread: any, once. */
int atp_durable_create(const atp_durable_config_t *config, atp_durable_t **out);

/* The engine's atp_change_fn. Appends the call's records as one journal
 * record; aborts the process when the journal cannot take it (out of memory:
 * memory is then ahead of the journal, and a crash-only restart from the
 * journal is the honest recovery). A call before restore opened the journal
 * is a programmer error. */
void atp_durable_hook(void *ctx, const atp_change_t *records, uint32_t count);

/* Names the request behind the changes this thread makes from now on (NULL:
 * none): the hook encodes *ctx into their records, for the change feed. The
 * pointer is kept, not the strings, so the caller fills or changes *ctx any
 * time before the engine call and clears the pointer before *ctx dies. Cost
 * on the hot path: one thread-local store. Thread: the calling thread's own. */
void atp_durable_set_context(const atp_change_ctx_t *ctx);

/* Opens the journal and replays it into engine, which nothing else may use
 * meanwhile. Errors: those of atp_journal_open (out->scan.error names the
 * file and offset of corruption); ATP_EINTERNAL for a record that does not
 * decode or apply (out->scan.error names its LSN). */
int atp_durable_restore(atp_durable_t *d, atp_engine_t *engine,
                        atp_durable_restore_t *out);

/* 0, or ATP_EUNAVAILABLE (journal failed, closing, or not open) or ATP_EFULL
 * (its queue is full): answer 503 with Retry-After. */
int atp_durable_admit(const atp_durable_t *d);

/* Brackets one mutation on slot (< ATP_JOURNAL_SLOTS_MAX, one thread each).
 * end returns the target the answer waits for, or 0 in mode none. */
void atp_durable_begin(atp_durable_t *d, uint32_t slot);
uint64_t atp_durable_end(atp_durable_t *d, uint32_t slot);

/* The durable ticket: answers with target <= it may leave. */
uint64_t atp_durable_ticket(const atp_durable_t *d);

atp_journal_mode_t atp_durable_mode(const atp_durable_t *d);
/* The journal, once restore opened it (for metrics and state); else NULL. */
atp_journal_t *atp_durable_journal(const atp_durable_t *d);

/* Flushes and closes the journal (if open) and frees. 0, or
 * ATP_EUNAVAILABLE when records were left unwritten. Thread: once, after
 * every mutation stopped. */
int atp_durable_close(atp_durable_t *d);

#endif
