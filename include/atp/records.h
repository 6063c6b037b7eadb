/* records.h - the engine's change records as journal payloads (record kind 1,
 * "engine change"; the bytes are in proto/journal.md).
 *
 * One payload holds every atp_change_t of one call of the engine's change
 * hook, so a multi-line reservation is journaled, and replayed, whole or not
 * at all. The encoding is hand-written little-endian binary: fixed-width
 * integers, strings as a u16 length and the bytes, every record with its body
 * length so that a later release may add fields at the end of a body.
 *
 * Decoding writes into a reusable scratch (atp_records_t) whose strings point
 * into the payload: valid while both live. Thread: a scratch belongs to one
 * thread at a time; encode and decode are pure.
 */
#ifndef ATP_RECORDS_H
#define ATP_RECORDS_H

#include <stdint.h>

#include "atp/engine.h"
#include "atp/error.h"
#include "atp/memory.h"

/* The journal record kind of an engine change payload. */
#define ATP_RECORD_KIND_ENGINE_CHANGE 1

/* The identifiers of the request behind a change that the engine's records do
 * not carry (CONTRACT.md section 10: the change feed's `data`). Every string
 * may be empty (len 0). The reservation's own identifiers (order_ref,
 * order_id, channel, customer_id) are in its record, and fulfillment_id,
 * amend_id and release_id in the idempotency record of the same payload, so
 * they are not repeated here. */
typedef struct {
  atp_str_t request_id; /* the client's X-Request-Id */
  atp_str_t source;     /* the body's source (reservations: channel) */
  atp_str_t ref;        /* an adjustment's ref */
  atp_str_t reason;     /* an adjustment's or a release's reason */
  atp_str_t flow;       /* the batch op's flow */
} atp_change_ctx_t;
#define ATP_CHANGE_CTX_FIELDS 5

/* Appends the payload of records[0..count) to buf (which it does not reset).
 * 0, or what atp_buf_append failed with (ATP_ENOMEM, ATP_ETOOLARGE).
 * ATP_EBADREQ for a string longer than 65535 bytes or an unknown kind, which
 * the engine never produces. */
int atp_records_encode(atp_buf_t *buf, const atp_change_t *records, uint32_t count);
/* The same with ctx (NULL: none) appended to every record's body when any of
 * its strings is set, so that each record names the request behind it. */
int atp_records_encode_ctx(atp_buf_t *buf, const atp_change_t *records, uint32_t count,
                           const atp_change_ctx_t *ctx);

/* What atp_records_decode fills: records[0..count) ready for
 * atp_engine_apply; reservation records point at reservations[], group
 * records at locations[]. Grown as needed, kept across decodes. */
typedef struct {
  atp_change_t *records;
  uint32_t count, records_cap;
  atp_reservation_t *reservations; /* one per reservation record */
  uint32_t reservations_cap;
  atp_str_t *locations; /* the groups' location lists, back to back */
  uint32_t locations_cap;
  atp_change_ctx_t *contexts; /* contexts[i] of records[i]; all empty if none */
  uint32_t contexts_cap;
} atp_records_t;

void atp_records_init(atp_records_t *out);
void atp_records_free(atp_records_t *out);

/* Decodes a payload. ATP_EBADREQ when it is malformed (truncated, trailing
 * bytes, an unknown record kind, a count or length beyond the engine's
 * limits); ATP_ENOMEM. On error out->count is 0. */
int atp_records_decode(const void *payload, uint32_t payload_bytes, atp_records_t *out);

#endif
