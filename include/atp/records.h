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

/* Appends the payload of records[0..count) to buf (which it does not reset).
 * 0, or what atp_buf_append failed with (ATP_ENOMEM, ATP_ETOOLARGE).
 * ATP_EBADREQ for a string longer than 65535 bytes or an unknown kind, which
 * the engine never produces. */
int atp_records_encode(atp_buf_t *buf, const atp_change_t *records, uint32_t count);

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
} atp_records_t;

void atp_records_init(atp_records_t *out);
void atp_records_free(atp_records_t *out);

/* Decodes a payload. ATP_EBADREQ when it is malformed (truncated, trailing
 * bytes, an unknown record kind, a count or length beyond the engine's
 * limits); ATP_ENOMEM. On error out->count is 0. */
int atp_records_decode(const void *payload, uint32_t payload_bytes, atp_records_t *out);

#endif
