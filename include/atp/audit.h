/* audit.h - the trail of operator actions (CONTRACT.md 6.6).
 *
 * Every operator action (pause, resume, dead-letter replay and resolve,
 * reconciliation apply and close, snapshot, a manual adjustment or count by
 * an ops token) is one entry {seq, at, action, target, by, role,
 * token_holder, detail}: who (the token's holder and role, and `by` as the
 * caller named it, the holder by default) did what to which target, when.
 * Other modules record through atp_audit_record; the app fills who.
 *
 * Bounded: at most max entries (--audit-max); when full the oldest goes and
 * is counted (dropped, in /metrics). Durable: each entry is one journal
 * record appended under the mutex before it is kept; a snapshot writes every
 * entry, then a META record. Replay keeps an entry only when its seq is new,
 * so a snapshot's entries repeated by the journal count once.
 *
 * Thread: any; one mutex (list callbacks run under it).
 */
#ifndef ATP_AUDIT_H
#define ATP_AUDIT_H

#include <stdbool.h>
#include <stdint.h>

#include "atp/durability.h"
#include "atp/engine.h"

#define ATP_AUDIT_KIND_ENTRY 32
#define ATP_AUDIT_KIND_META  33

typedef struct {
  uint64_t seq; /* set by record: 1, 2, ... over the trail's life */
  int64_t at;
  atp_str_t action; /* "flow.pause", "dead_letter.replay", ... */
  atp_str_t target; /* the flow, dl id, reservation, sku@location, ... */
  atp_str_t by, role, token_holder;
  atp_str_t detail; /* free text: a reason, a note, an outcome */
} atp_audit_entry_t;

typedef struct atp_audit atp_audit_t;

typedef struct {
  uint32_t max;           /* 0: ATP_AUDIT_ENTRIES_DEFAULT */
  atp_durable_t *durable; /* NULL: memory only */
} atp_audit_config_t;

int atp_audit_create(const atp_audit_config_t *config, atp_audit_t **out);
void atp_audit_destroy(atp_audit_t *a);

/* Keeps e (e->seq ignored; strings copied, long ones cut); *seq_out may be
 * NULL. 0, ATP_ENOMEM or the journal's error (nothing kept). Call it inside
 * the request's durable bracket so the answer waits for the entry. */
int atp_audit_record(atp_audit_t *a, const atp_audit_entry_t *e, uint64_t *seq_out);

typedef struct {
  atp_str_t action, by; /* len 0: any */
  int64_t since;        /* entries with at >= since; 0: all */
  uint64_t after;       /* seq > after (the cursor) */
  uint32_t limit;
} atp_audit_filter_t;

/* Oldest first; *more when matches remain past the last given. */
void atp_audit_list(atp_audit_t *a, const atp_audit_filter_t *f,
                    void (*fn)(void *ctx, const atp_audit_entry_t *e), void *ctx,
                    bool *more);

typedef struct {
  uint64_t kept, recorded, dropped;
  uint32_t max;
} atp_audit_stats_t;
void atp_audit_stats(atp_audit_t *a, atp_audit_stats_t *out);

#endif
