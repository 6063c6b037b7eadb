/* wire.c - the wire shapes of positions and reservations (see atp/wire.h). */
#include "atp/wire.h"

#include <string.h>

void atp_w_s(atp_writer_t *w, atp_str_t s) {
  atp_w_str(w, s.ptr ? s.ptr : "", s.len);
}

void atp_write_position(atp_writer_t *w, const atp_position_t *p, int found) {
  atp_w_object_begin(w);
  atp_w_key(w, "sku");
  atp_w_s(w, p->sku);
  atp_w_key(w, "location");
  atp_w_s(w, p->location);
  atp_w_key(w, "on_hand");
  atp_w_int(w, p->on_hand);
  atp_w_key(w, "safety_stock");
  atp_w_int(w, p->safety_stock);
  atp_w_key(w, "reserved");
  atp_w_int(w, p->reserved);
  atp_w_key(w, "committed");
  atp_w_int(w, p->committed);
  atp_w_key(w, "available");
  atp_w_int(w, p->available);
  atp_w_key(w, "shortfall");
  atp_w_int(w, p->shortfall);
  if (p->counted_at_ms != ATP_TIME_NONE) {
    atp_w_key(w, "counted_at");
    atp_w_int(w, p->counted_at_ms);
  }
  atp_w_key(w, "version");
  atp_w_uint(w, p->version);
  if (found >= 0) {
    atp_w_key(w, "found");
    atp_w_bool(w, found != 0);
  }
  atp_w_object_end(w);
}

void atp_write_zero_position(atp_writer_t *w, atp_str_t sku, atp_str_t location,
                             int found) {
  atp_position_t p;
  memset(&p, 0, sizeof p);
  p.sku = sku;
  p.location = location;
  p.counted_at_ms = ATP_TIME_NONE;
  atp_write_position(w, &p, found);
}

static void write_opt(atp_writer_t *w, const char *key, atp_str_t s) {
  if (s.len == 0) return;
  atp_w_key(w, key);
  atp_w_s(w, s);
}

void atp_write_reservation_fields(atp_writer_t *w, const atp_reservation_t *r) {
  atp_w_key(w, "id");
  atp_w_s(w, r->id);
  atp_w_key(w, "status");
  atp_w_cstr(w, atp_status_name(r->status));
  atp_w_key(w, "lines");
  atp_w_array_begin(w);
  for (uint32_t i = 0; i < r->line_count; i++) {
    const atp_res_line_t *l = &r->lines[i];
    atp_w_object_begin(w);
    atp_w_key(w, "sku");
    atp_w_s(w, l->sku);
    atp_w_key(w, "location");
    atp_w_s(w, l->location);
    atp_w_key(w, "qty");
    atp_w_int(w, l->qty);
    atp_w_key(w, "fulfilled");
    atp_w_int(w, l->fulfilled);
    atp_w_key(w, "released");
    atp_w_int(w, l->released);
    atp_w_object_end(w);
  }
  atp_w_array_end(w);
  atp_w_key(w, "created_at");
  atp_w_int(w, r->created_at_ms);
  if (r->status == ATP_STATUS_HELD && r->expires_at_ms != ATP_TIME_NONE) {
    atp_w_key(w, "expires_at");
    atp_w_int(w, r->expires_at_ms);
  }
  atp_w_key(w, "ttl_ms");
  atp_w_int(w, r->ttl_ms);
  write_opt(w, "order_ref", r->order_ref);
  write_opt(w, "order_id", r->order_id);
  write_opt(w, "channel", r->channel);
  write_opt(w, "customer_id", r->customer_id);
}
