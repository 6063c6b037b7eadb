/* wire.h - the wire shapes of the engine's objects (CONTRACT.md sections 2 and
 * 4), written with the codec's writer in either encoding. The routes answer
 * with them and the change feed carries them in its events, so a position or
 * a reservation has one shape wherever a client meets it.
 *
 * Thread: any; each call writes only to w.
 */
#ifndef ATP_WIRE_H
#define ATP_WIRE_H

#include "atp/codec.h"
#include "atp/engine.h"

/* Writes s (atp_str_t) as a string; an empty one may have a NULL ptr. */
void atp_w_s(atp_writer_t *w, atp_str_t s);

/* Writes a position as an object; found: -1 omits "found", 0/1 writes it. */
void atp_write_position(atp_writer_t *w, const atp_position_t *p, int found);
/* A zero position for an unseen key (version 0). */
void atp_write_zero_position(atp_writer_t *w, atp_str_t sku, atp_str_t location,
                             int found);
/* Writes the reservation's members into an open object (so callers can add
 * "replayed"). */
void atp_write_reservation_fields(atp_writer_t *w, const atp_reservation_t *r);

#endif
