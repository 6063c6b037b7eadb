/* flowstate.h - the integration flows by name: running or paused, a durable
 * queue per paused flow, and per-flow counters (CONTRACT.md 6.4).
 *
 * A flow is known once it sent an op or was paused (at most ATP_FLOWS_MAX;
 * later names are neither counted nor pausable: pause answers 429). Pausing
 * a flow makes its ops queue instead of applying: each op is kept as what is
 * needed to run it later (a batch op, or a single route's method, path,
 * query and body) with a sequence number, in order, up to queue_max ops and
 * ATP_FLOW_QUEUE_BYTES_MAX bytes per flow (ATP_EFULL beyond: 429 with
 * Retry-After). Resuming drains the queue in order through the caller, who
 * runs each op and confirms it (atp_flowstate_applied); only when the queue
 * is empty does the flow run again, so an op arriving during the drain queues
 * behind the others and order holds.
 *
 * Durability: pause, resume, every queued op and every confirmation are
 * journal records (proto/journal.md) appended under the mutex before memory
 * changes; a snapshot writes each queued op, then each flow's state. An op
 * is confirmed after it ran: a crash between the two runs it again at the
 * next resume, which the ops' own idempotency keys make a replay. Counters
 * (applied, rejected, last_op_at) count since the process started.
 *
 * Thread: any. Names and paused flags are read without a lock (the table
 * only grows; each slot is published with release); queues and state changes
 * take one mutex.
 */
#ifndef ATP_FLOWSTATE_H
#define ATP_FLOWSTATE_H

#include <stdbool.h>
#include <stdint.h>

#include "atp/durability.h"
#include "atp/engine.h"
#include "atp/memory.h"

#define ATP_FLOW_KIND_STATE 24 /* a flow paused or running, with its reason */
#define ATP_FLOW_KIND_ENQ   25 /* one op queued */
#define ATP_FLOW_KIND_DEQ   26 /* ops up to a sequence number ran */

typedef enum {
  ATP_FLOW_OP_ROUTE = 0, /* a single route's request */
  ATP_FLOW_OP_BATCH = 1, /* a batch op object */
} atp_flow_op_origin_t;

typedef struct {
  uint64_t seq; /* set by enqueue */
  atp_str_t flow;
  uint8_t origin; /* atp_flow_op_origin_t */
  uint8_t format; /* atp_format_t of payload */
  uint8_t method; /* route: atp_http_method_t */
  atp_str_t path, query, payload;
  uint32_t index; /* batch: the op's index in its batch */
  int64_t queued_at;
} atp_flow_op_t;

typedef struct {
  atp_str_t name;
  bool paused;   /* or draining */
  bool draining; /* a resume is applying its queue */
  atp_str_t reason, by;
  int64_t changed_at; /* of the last pause or resume; 0 never */
  uint64_t queued, queued_bytes;
  uint64_t applied, rejected;
  int64_t last_op_at; /* 0: none since start */
} atp_flow_info_t;

typedef struct atp_flowstate atp_flowstate_t;

typedef struct {
  uint32_t queue_max;     /* ops per flow; 0: ATP_FLOW_QUEUE_OPS_DEFAULT */
  atp_durable_t *durable; /* NULL: memory only */
} atp_flowstate_config_t;

int atp_flowstate_create(const atp_flowstate_config_t *config, atp_flowstate_t **out);
void atp_flowstate_destroy(atp_flowstate_t *fs);

/* Whether any flow is paused: one relaxed load, so the unpaused path of
 * every write costs nothing more. */
bool atp_flowstate_any_paused(const atp_flowstate_t *fs);
bool atp_flowstate_paused(const atp_flowstate_t *fs, atp_str_t flow);

/* Queues op for its paused flow; *seq and *depth (ops now queued) set.
 * ATP_EFULL when the queue is full; ATP_ECONFLICT when the flow runs (it was
 * resumed meanwhile: apply the op now); or the journal's error. */
int atp_flowstate_enqueue(atp_flowstate_t *fs, const atp_flow_op_t *op, uint64_t *seq,
                          uint32_t *depth);

/* Pauses flow (known or not); *was_paused tells a repeat, which changes
 * nothing. ATP_EFULL when ATP_FLOWS_MAX flows are known; journal errors. */
int atp_flowstate_pause(atp_flowstate_t *fs, atp_str_t flow, atp_str_t reason,
                        atp_str_t by, int64_t at, bool *was_paused);

/* Starts a resume: *was_paused false when the flow runs already (nothing to
 * do). ATP_ENOTFOUND for a flow never seen; ATP_ECONFLICT while another
 * resume drains it. */
int atp_flowstate_resume_begin(atp_flowstate_t *fs, atp_str_t flow, bool *was_paused);

/* The drain: the oldest queued op, copied into arena: 0 and *out; or, when
 * the queue is empty, the flow runs again (journaled) and *done is true.
 * Then run the op and call applied with its seq. */
int atp_flowstate_next(atp_flowstate_t *fs, atp_str_t flow, atp_arena_t *arena,
                       atp_flow_op_t *out, bool *done, atp_str_t by, int64_t at);
int atp_flowstate_applied(atp_flowstate_t *fs, atp_str_t flow, uint64_t seq);

/* Counts one op of flow (registering the name if new and room is left). */
void atp_flowstate_count(atp_flowstate_t *fs, atp_str_t flow, bool applied, int64_t at);

/* Every known flow in order of first sight; fn runs under the mutex. */
void atp_flowstate_list(atp_flowstate_t *fs,
                        void (*fn)(void *ctx, const atp_flow_info_t *flow), void *ctx);

#endif
