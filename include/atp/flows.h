/* flows.h - the integration flows' plug-in points for batch ops (CONTRACT.md
 * sections 6.1, 6.3, 6.4).
 *
 * POST /v1/batch applies each op on its own (src/app/routes_batch.c). Two
 * things it does per op belong to the flows layer, which owns dead letters and
 * paused flows: a rejected op goes to a rejection sink, and an op of a paused
 * flow is handed to that flow's queue instead of being applied. This header is
 * that interface; atp_flows_none does nothing (nothing is kept, no flow is ever
 * paused), so the batch works before dead letters and flow queues exist, and
 * they plug in by filling an atp_flows_t.
 *
 * Business outcomes (insufficient_stock) are results, not dead letters: the
 * batch never sends them to the sink (section 6.3).
 *
 * Thread: the hooks are called on the loop thread running the batch, from
 * every loop thread at once; an implementation synchronises itself.
 */
#ifndef ATP_FLOWS_H
#define ATP_FLOWS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atp/codec.h"
#include "atp/engine.h"

/* One rejected op, valid during the call only (copy what is kept). */
typedef struct {
  atp_str_t flow;      /* the op's flow; empty when it named none */
  atp_str_t owner;     /* the team owning the rejection (ownership matrix);
                          the flow's name without a file or a known field */
  uint32_t index;      /* the op's place in its batch, from 0 */
  int err;             /* the negative ATP_E* code */
  int status;          /* its HTTP status (400, 403, 409, 422, ...) */
  const char *code;    /* the contract's code, "not_owner" */
  const char *message; /* the sentence the batch result carries */
  const char *field;   /* the offending field's path, or "" */
  atp_format_t format; /* of payload: JSON (also NDJSON lines) or MSGPACK */
  const char *payload; /* the op's raw bytes in the body */
  size_t payload_len;
  const atp_val_t *value; /* the parsed op, or NULL when it did not parse */
} atp_rejection_t;

/* One op of a paused flow, valid during the call only. */
typedef struct {
  atp_str_t flow;
  uint32_t index;
  atp_format_t format;
  const char *payload;
  size_t payload_len;
  const atp_val_t *value; /* the parsed op (an object with a valid op and flow) */
} atp_queued_op_t;

typedef struct {
  void *ctx;
  /* Keeps a rejection (dead letters). NULL: rejections are only answered. */
  void (*reject)(void *ctx, const atp_rejection_t *rejection);
  /* Whether flow is paused now. NULL: no flow is ever paused. */
  bool (*paused)(void *ctx, atp_str_t flow);
  /* Queues an op of a paused flow, in order: 0 (the op is answered 202 and
   * counted `queued`), or a negative ATP_E* (ATP_EFULL: the queue is full, the
   * op is rejected 429). Required when paused is set. */
  int (*enqueue)(void *ctx, const atp_queued_op_t *op);
} atp_flows_t;

/* Does nothing: no dead letters kept, no flow paused. */
extern const atp_flows_t atp_flows_none;

/* The calls the batch makes; flows may be NULL (atp_flows_none). */
void atp_flows_reject(const atp_flows_t *flows, const atp_rejection_t *rejection);
bool atp_flows_paused(const atp_flows_t *flows, atp_str_t flow);
int atp_flows_enqueue(const atp_flows_t *flows, const atp_queued_op_t *op);

#endif
