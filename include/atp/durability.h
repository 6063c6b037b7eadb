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
  uint64_t segment_bytes_max;        /* 0: the journal's default */
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
/* The thread's current context (NULL: none), to restore after a nested one. */
const atp_change_ctx_t *atp_durable_context(void);

/* Opens the journal and replays its records after covered_lsn (the LSN of
 * the snapshot already imported into engine; 0: none) into engine, which
 * nothing else may use meanwhile. Errors: those of atp_journal_open
 * (out->scan.error names the file and offset of corruption, or the gap after
 * covered_lsn); ATP_EINTERNAL for a record that does not decode or apply
 * (out->scan.error names its LSN). */
int atp_durable_restore(atp_durable_t *d, atp_engine_t *engine, uint64_t covered_lsn,
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

/* --- sections: the durable state of other modules ------------------------
 *
 * The journal is generic (a kind and payload bytes), so modules beside the
 * engine (dead letters, flows, audit, reconciliations) keep their state with
 * the same guarantees. A module registers a section before restore: a range
 * of record kinds it owns (proto/journal.md lists them), a replay callback
 * that restore and snapshot loading call for each record of those kinds, in
 * order, and an export callback that a snapshot writer calls to have every
 * piece of the module's state written as records of its kinds (replayed at
 * load like journal records, then the journal after the snapshot's LSN on
 * top). A module's records must therefore replay idempotently: a fuzzy
 * snapshot may hold state that journal records after its LSN repeat.
 *
 * While serving, a module appends with atp_durable_append inside the
 * request's begin/end bracket (the router brackets every mutating route), so
 * the answer parks until the record is durable, like an engine mutation. */

#define ATP_DURABLE_SECTIONS_MAX 16

/* Hands one record of the module's kinds to a snapshot writer. */
typedef int (*atp_durable_emit_fn)(void *emit_ctx, uint16_t kind, const void *payload,
                                   uint32_t payload_bytes);

typedef struct {
  const char *name;               /* "dead_letters", for messages */
  uint16_t kind_first, kind_last; /* the kinds it owns, inclusive; > 1 */
  /* One record at restore (journal) or snapshot load. payload is valid during
   * the call. 0, or a negative ATP_E* that stops the restore. */
  int (*replay)(void *ctx, uint16_t kind, const void *payload, uint32_t payload_bytes);
  /* Every piece of the module's state through emit; NULL: nothing to snapshot.
   * Called on the snapshot thread while the server runs. */
  int (*export_state)(void *ctx, atp_durable_emit_fn emit, void *emit_ctx);
  void *ctx;
} atp_durable_section_t;

/* Registers a section (copied). ATP_ETOOMANY beyond ATP_DURABLE_SECTIONS_MAX;
 * overlapping kinds or a call after restore began are programmer errors.
 * Thread: the one that creates and restores. */
int atp_durable_register(atp_durable_t *d, const atp_durable_section_t *section);

/* Appends one record of a registered kind. 0; ATP_ETOOLARGE, ATP_ENOMEM or
 * ATP_EUNAVAILABLE (journal closed) from the journal: the caller refuses its
 * change. A call before restore opened the journal is a programmer error.
 * Thread: any. */
int atp_durable_append(atp_durable_t *d, uint16_t kind, const void *payload,
                       uint32_t payload_bytes);

/* Every section's export, in registration order (for a snapshot writer's
 * atp_snapshot_config_t.sections_export). Thread: one snapshot at a time. */
int atp_durable_export_sections(void *d, atp_durable_emit_fn emit, void *emit_ctx);

/* Hands a record to the section owning kind (for a snapshot loader's
 * sections_replay). ATP_EINTERNAL for a kind nobody registered. */
int atp_durable_replay_section(void *d, uint16_t kind, const void *payload,
                               uint32_t payload_bytes);

/* Flushes and closes the journal (if open) and frees. 0, or
 * ATP_EUNAVAILABLE when records were left unwritten. Thread: once, after
 * every mutation stopped. */
int atp_durable_close(atp_durable_t *d);

#endif
