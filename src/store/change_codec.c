/* change_codec.c - engine change records to journal payloads and back
 * (include/atp/records.h; the layout is in proto/journal.md, "engine change").
 *
 * Encoding writes straight into the caller's growable buffer; decoding checks
 * every length against what is left before it reads, so a malformed payload
 * is refused, never read past. A record's body carries its own length so that
 * a later release may append fields: this one refuses a body whose length
 * differs from what it decoded, which keeps a damaged payload from being
 * half-understood.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "atp/assert.h"
#include "atp/limits.h"
#include "atp/records.h"

/* The header of one record: kind, cause, flags, body length, at_ms. */
#define RECORD_HEADER_BYTES 16u

/* The header's flags (proto/journal.md): what a record leaves out because the
 * record before it in the payload says it. An adjustment's two records (its
 * position and its id) share the id, the position's strings and the request's
 * context, which were written twice, and three times the id. A payload
 * written before the flags has them all 0 and decodes as it always did. */
#define FLAG_CTX_PREV    1u /* no context trailer: the previous record's */
#define FLAG_CAUSE_PREV  2u /* no cause_id: the previous record's */
#define FLAG_ID_IS_CAUSE 4u /* idempotency: no id in the body, it is cause_id */
#define FLAG_POS_PREV                            \
  8u /* idempotency after a position record: the \
        position's sku and location are that record's */
#define FLAGS_KNOWN 15u

/* --- encoding ------------------------------------------------------------------- */

/* Each record's bytes are bounded before it is written (record_bound), room
 * for them reserved once, and the fields then stored without a check each:
 * the journal encodes every change on the loop that made it, and a check and
 * a call per field were a tenth of a batch's time. */
typedef struct {
  unsigned char *p; /* the next byte, inside the room reserved */
  int rc;
} enc_t;

static void put_bytes(enc_t *e, const void *p, size_t n) {
  if (n) memcpy(e->p, p, n);
  e->p += n;
}
static void put_u8(enc_t *e, uint8_t v) {
  *e->p++ = v;
}
/* Little-endian stores: on a little-endian machine one unaligned store each
 * (GCC 12 kept the byte loops as loops, a twentieth of a batch's loop). */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HOST_IS_LE 1
#else
#define HOST_IS_LE 0
#endif
static void put_u16(enc_t *e, uint16_t v) {
  e->p[0] = (unsigned char)v;
  e->p[1] = (unsigned char)(v >> 8);
  e->p += 2;
}
static void put_u32(enc_t *e, uint32_t v) {
  if (HOST_IS_LE)
    memcpy(e->p, &v, 4);
  else
    for (int i = 0; i < 4; i++) e->p[i] = (unsigned char)(v >> (8 * i));
  e->p += 4;
}
static void put_u64(enc_t *e, uint64_t v) {
  if (HOST_IS_LE)
    memcpy(e->p, &v, 8);
  else
    for (int i = 0; i < 8; i++) e->p[i] = (unsigned char)(v >> (8 * i));
  e->p += 8;
}
static void put_i64(enc_t *e, int64_t v) {
  put_u64(e, (uint64_t)v);
}
/* A string longer than its u16 length can say is refused; record_bound
 * counted its bytes, so the room is there either way. */
static void put_str(enc_t *e, atp_str_t s) {
  if (s.len > UINT16_MAX) {
    if (!e->rc) e->rc = ATP_EBADREQ;
    return;
  }
  put_u16(e, (uint16_t)s.len);
  put_bytes(e, s.ptr, s.len);
}

static void put_position(enc_t *e, const atp_position_t *p, bool strings) {
  if (strings) {
    put_str(e, p->sku);
    put_str(e, p->location);
  }
  put_i64(e, p->on_hand);
  put_i64(e, p->safety_stock);
  put_i64(e, p->reserved);
  put_i64(e, p->committed);
  put_i64(e, p->available);
  put_i64(e, p->shortfall);
  put_i64(e, p->counted_at_ms);
  put_u64(e, p->version);
}

static void put_body(enc_t *e, const atp_change_t *c, unsigned flags) {
  switch (c->kind) {
    case ATP_CHANGE_POSITION: {
      const atp_change_position_t *p = &c->u.position;
      put_str(e, p->sku);
      put_str(e, p->location);
      put_i64(e, p->d_on_hand);
      put_i64(e, p->d_safety_stock);
      put_i64(e, p->d_reserved);
      put_i64(e, p->d_committed);
      put_i64(e, p->counted_at_ms);
      put_i64(e, p->occurred_at_ms);
      put_u64(e, p->version);
      break;
    }
    case ATP_CHANGE_RESERVATION: {
      const atp_reservation_t *r = c->u.reservation;
      put_str(e, r->id);
      put_u32(e, (uint32_t)r->status);
      put_i64(e, r->created_at_ms);
      put_i64(e, r->expires_at_ms);
      put_i64(e, r->ttl_ms);
      put_i64(e, r->ended_at_ms);
      put_u64(e, r->content_hash);
      put_str(e, r->order_ref);
      put_str(e, r->order_id);
      put_str(e, r->channel);
      put_str(e, r->customer_id);
      put_u32(e, r->line_count);
      for (uint32_t i = 0; i < r->line_count; i++) {
        put_str(e, r->lines[i].sku);
        put_str(e, r->lines[i].location);
        put_i64(e, r->lines[i].qty);
        put_i64(e, r->lines[i].fulfilled);
        put_i64(e, r->lines[i].released);
      }
      break;
    }
    case ATP_CHANGE_GROUP:
      put_str(e, c->u.group.name);
      put_u32(e, c->u.group.location_count);
      for (uint32_t i = 0; i < c->u.group.location_count; i++)
        put_str(e, c->u.group.locations[i]);
      break;
    case ATP_CHANGE_IDEMPOTENCY: {
      const atp_change_idem_t *d = &c->u.idem;
      put_u32(e, (uint32_t)d->kind);
      if (!(flags & FLAG_ID_IS_CAUSE)) put_str(e, d->id);
      put_u64(e, d->content_hash);
      put_i64(e, d->created_at_ms);
      put_u32(e, d->flags);
      put_position(e, &d->position, !(flags & FLAG_POS_PREV));
      put_str(e, d->reservation_id);
      break;
    }
    default:
      if (!e->rc) e->rc = ATP_EBADREQ;
  }
}

/* The context's field i, in the trailer's order. */
static atp_str_t *ctx_slot(atp_change_ctx_t *ctx, int i) {
  atp_str_t *f[ATP_CHANGE_CTX_FIELDS] = {&ctx->request_id, &ctx->source, &ctx->ref,
                                         &ctx->reason, &ctx->flow};
  return f[i];
}
static atp_str_t ctx_field(const atp_change_ctx_t *ctx, int i) {
  return *ctx_slot((atp_change_ctx_t *)(uintptr_t)ctx, i);
}

/* The context trailer: a u8 mask of the fields present, then each present
 * one as a str, in field order. Nothing at all when no field is set, so a
 * record without a request behind it (an expiry) costs no byte. */
static void put_ctx(enc_t *e, const atp_change_ctx_t *ctx) {
  if (!ctx) return;
  uint8_t mask = 0;
  for (int i = 0; i < ATP_CHANGE_CTX_FIELDS; i++)
    if (ctx_field(ctx, i).len) mask |= (uint8_t)(1u << i);
  if (!mask) return;
  put_u8(e, mask);
  for (int i = 0; i < ATP_CHANGE_CTX_FIELDS; i++)
    if (mask & (1u << i)) put_str(e, ctx_field(ctx, i));
}

static bool ctx_any(const atp_change_ctx_t *ctx) {
  if (!ctx) return false;
  for (int i = 0; i < ATP_CHANGE_CTX_FIELDS; i++)
    if (ctx_field(ctx, i).len) return true;
  return false;
}

static bool same_str(atp_str_t a, atp_str_t b) {
  return a.len == b.len &&
         (a.len == 0 || a.ptr == b.ptr || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* What record c, after prev (NULL for the first), leaves to prev; with_ctx:
 * the payload's records carry a context trailer. */
static unsigned record_flags(const atp_change_t *c, const atp_change_t *prev,
                             bool with_ctx) {
  if (!prev) return 0;
  unsigned f = with_ctx ? FLAG_CTX_PREV : 0;
  if (same_str(c->cause_id, prev->cause_id)) f |= FLAG_CAUSE_PREV;
  if (c->kind == ATP_CHANGE_IDEMPOTENCY) {
    const atp_change_idem_t *d = &c->u.idem;
    if (same_str(d->id, c->cause_id)) f |= FLAG_ID_IS_CAUSE;
    if (prev->kind == ATP_CHANGE_POSITION &&
        same_str(d->position.sku, prev->u.position.sku) &&
        same_str(d->position.location, prev->u.position.location))
      f |= FLAG_POS_PREV;
  }
  return f;
}

/* The bytes the header, put_body and put_ctx write for c, exactly: so the
 * room reserved is what a record takes, and a buffer's limit refuses the
 * same records as when each field was appended on its own. A string too long
 * for its u16 length writes nothing (put_str refuses it). */
#define STR_BYTES(s) ((s).len > UINT16_MAX ? 0 : 2 + (size_t)(s).len)
static size_t record_bound(const atp_change_t *c, const atp_change_ctx_t *ctx,
                           unsigned flags) {
  size_t n = RECORD_HEADER_BYTES;
  if (!(flags & FLAG_CAUSE_PREV)) n += STR_BYTES(c->cause_id);
  switch (c->kind) {
    case ATP_CHANGE_POSITION: /* 6 i64, a u64 */
      n += STR_BYTES(c->u.position.sku) + STR_BYTES(c->u.position.location) + 7 * 8;
      break;
    case ATP_CHANGE_RESERVATION: { /* u32, 4 i64, u64, u32; a line 3 i64 */
      const atp_reservation_t *r = c->u.reservation;
      n += STR_BYTES(r->id) + STR_BYTES(r->order_ref) + STR_BYTES(r->order_id) +
           STR_BYTES(r->channel) + STR_BYTES(r->customer_id) + 4 + 4 * 8 + 8 + 4;
      for (uint32_t i = 0; i < r->line_count; i++)
        n += STR_BYTES(r->lines[i].sku) + STR_BYTES(r->lines[i].location) + 3 * 8;
      break;
    }
    case ATP_CHANGE_GROUP: /* u32 */
      n += STR_BYTES(c->u.group.name) + 4;
      for (uint32_t i = 0; i < c->u.group.location_count; i++)
        n += STR_BYTES(c->u.group.locations[i]);
      break;
    case ATP_CHANGE_IDEMPOTENCY: /* u32, u64, i64, u32; the position's 8 */
      n += STR_BYTES(c->u.idem.reservation_id) + 4 + 8 + 8 + 4 + 8 * 8;
      if (!(flags & FLAG_ID_IS_CAUSE)) n += STR_BYTES(c->u.idem.id);
      if (!(flags & FLAG_POS_PREV))
        n += STR_BYTES(c->u.idem.position.sku) + STR_BYTES(c->u.idem.position.location);
      break;
    default:
      break;
  }
  if (ctx && !(flags & FLAG_CTX_PREV)) {
    size_t fields = 0;
    for (int i = 0; i < ATP_CHANGE_CTX_FIELDS; i++) {
      atp_str_t f = ctx_field(ctx, i);
      if (f.len) fields += STR_BYTES(f);
    }
    bool any = false;
    for (int i = 0; i < ATP_CHANGE_CTX_FIELDS; i++) any |= ctx_field(ctx, i).len != 0;
    if (any) n += 1 + fields; /* the mask */
  }
  return n;
}

int atp_records_encode(atp_buf_t *buf, const atp_change_t *records, uint32_t count) {
  return atp_records_encode_ctx(buf, records, count, NULL);
}

int atp_records_encode_ctx(atp_buf_t *buf, const atp_change_t *records, uint32_t count,
                           const atp_change_ctx_t *ctx) {
  enc_t e = {(unsigned char *)atp_buf_reserve(buf, 4), 0};
  if (!e.p) return buf->failed;
  put_u32(&e, count);
  buf->len += 4;
  bool with_ctx = ctx_any(ctx);
  for (uint32_t i = 0; i < count && !e.rc; i++) {
    const atp_change_t *c = &records[i];
    ATP_ASSERT((unsigned)c->kind <= UINT8_MAX && (unsigned)c->cause <= UINT8_MAX);
    unsigned flags = record_flags(c, i ? &records[i - 1] : NULL, with_ctx);
    size_t bound = record_bound(c, ctx, flags);
    unsigned char *start = (unsigned char *)atp_buf_reserve(buf, bound);
    if (!start) return buf->failed;
    e.p = start;
    put_u8(&e, (uint8_t)c->kind);
    put_u8(&e, (uint8_t)c->cause);
    put_u16(&e, (uint16_t)flags);
    unsigned char *len_at = e.p;
    put_u32(&e, 0); /* body length, filled in below */
    put_i64(&e, c->at_ms);
    if (!(flags & FLAG_CAUSE_PREV)) put_str(&e, c->cause_id);
    unsigned char *body_at = e.p;
    put_body(&e, c, flags);
    if (!(flags & FLAG_CTX_PREV)) put_ctx(&e, ctx);
    if (e.rc) break;
    ATP_ASSERT((size_t)(e.p - start) == bound);
    size_t body = (size_t)(e.p - body_at);
    for (int b = 0; b < 4; b++) len_at[b] = (unsigned char)(body >> (8 * b));
    buf->len += (size_t)(e.p - start);
  }
  return e.rc;
}

/* --- decoding ------------------------------------------------------------------- */

typedef struct {
  const unsigned char *p, *end;
  int bad;
} dec_t;

static bool need(dec_t *d, size_t n) {
  if (d->bad || (size_t)(d->end - d->p) < n) {
    d->bad = 1;
    return false;
  }
  return true;
}
static uint8_t get_u8(dec_t *d) {
  return need(d, 1) ? *d->p++ : 0;
}
static uint16_t get_u16(dec_t *d) {
  if (!need(d, 2)) return 0;
  uint16_t v = (uint16_t)(d->p[0] | d->p[1] << 8);
  d->p += 2;
  return v;
}
static uint32_t get_u32(dec_t *d) {
  if (!need(d, 4)) return 0;
  uint32_t v = 0;
  if (HOST_IS_LE)
    memcpy(&v, d->p, 4);
  else
    for (int i = 3; i >= 0; i--) v = v << 8 | d->p[i];
  d->p += 4;
  return v;
}
static uint64_t get_u64(dec_t *d) {
  if (!need(d, 8)) return 0;
  uint64_t v = 0;
  if (HOST_IS_LE)
    memcpy(&v, d->p, 8);
  else
    for (int i = 7; i >= 0; i--) v = v << 8 | d->p[i];
  d->p += 8;
  return v;
}
static int64_t get_i64(dec_t *d) {
  return (int64_t)get_u64(d);
}
static atp_str_t get_str(dec_t *d) {
  uint16_t n = get_u16(d);
  if (!need(d, n)) return (atp_str_t){"", 0};
  atp_str_t s = {(const char *)d->p, n};
  d->p += n;
  return s;
}

static void get_position(dec_t *d, atp_position_t *p, bool strings) {
  if (strings) {
    p->sku = get_str(d);
    p->location = get_str(d);
  }
  p->on_hand = get_i64(d);
  p->safety_stock = get_i64(d);
  p->reserved = get_i64(d);
  p->committed = get_i64(d);
  p->available = get_i64(d);
  p->shortfall = get_i64(d);
  p->counted_at_ms = get_i64(d);
  p->version = get_u64(d);
}

/* Grows *arr to hold n items of size bytes; false when out of memory. */
static bool grow(void **arr, uint32_t *cap, uint32_t n, size_t size) {
  if (n <= *cap) return true;
  uint32_t want = *cap ? *cap : 4;
  while (want < n) want *= 2;
  void *p = atp_realloc(*arr, (size_t)want * size);
  if (!p) return false;
  *arr = p;
  *cap = want;
  return true;
}

static int get_reservation(dec_t *d, atp_reservation_t *r) {
  memset(r, 0, offsetof(atp_reservation_t, lines));
  r->id = get_str(d);
  uint32_t status = get_u32(d);
  r->created_at_ms = get_i64(d);
  r->expires_at_ms = get_i64(d);
  r->ttl_ms = get_i64(d);
  r->ended_at_ms = get_i64(d);
  r->content_hash = get_u64(d);
  r->order_ref = get_str(d);
  r->order_id = get_str(d);
  r->channel = get_str(d);
  r->customer_id = get_str(d);
  r->line_count = get_u32(d);
  if (status > ATP_STATUS_FULFILLED || r->line_count > ATP_RESERVATION_POSITIONS_MAX)
    return ATP_EBADREQ;
  r->status = (atp_status_t)status;
  for (uint32_t i = 0; i < r->line_count && !d->bad; i++) {
    r->lines[i].sku = get_str(d);
    r->lines[i].location = get_str(d);
    r->lines[i].qty = get_i64(d);
    r->lines[i].fulfilled = get_i64(d);
    r->lines[i].released = get_i64(d);
  }
  return 0;
}

/* Decodes one record's body into c. */
static int get_body(dec_t *d, atp_records_t *out, atp_change_t *c, uint32_t *res_used,
                    uint32_t *locs_used, unsigned flags, const atp_change_t *prev) {
  if ((flags & (FLAG_ID_IS_CAUSE | FLAG_POS_PREV)) && c->kind != ATP_CHANGE_IDEMPOTENCY)
    return ATP_EBADREQ;
  switch (c->kind) {
    case ATP_CHANGE_POSITION: {
      atp_change_position_t *p = &c->u.position;
      p->sku = get_str(d);
      p->location = get_str(d);
      p->d_on_hand = get_i64(d);
      p->d_safety_stock = get_i64(d);
      p->d_reserved = get_i64(d);
      p->d_committed = get_i64(d);
      p->counted_at_ms = get_i64(d);
      p->occurred_at_ms = get_i64(d);
      p->version = get_u64(d);
      return 0;
    }
    case ATP_CHANGE_RESERVATION: {
      if (!grow((void **)&out->reservations, &out->reservations_cap, *res_used + 1,
                sizeof *out->reservations))
        return ATP_ENOMEM;
      /* The pointer is set once every record is decoded: the array may move. */
      c->u.reservation = (const atp_reservation_t *)(uintptr_t)*res_used;
      return get_reservation(d, &out->reservations[(*res_used)++]);
    }
    case ATP_CHANGE_GROUP: {
      c->u.group.name = get_str(d);
      uint32_t n = get_u32(d);
      if (n > ATP_GROUP_LOCATIONS_MAX) return ATP_EBADREQ;
      if (!grow((void **)&out->locations, &out->locations_cap, *locs_used + n,
                sizeof *out->locations))
        return ATP_ENOMEM;
      c->u.group.locations = (const atp_str_t *)(uintptr_t)*locs_used;
      c->u.group.location_count = n;
      for (uint32_t i = 0; i < n; i++) out->locations[*locs_used + i] = get_str(d);
      *locs_used += n;
      return 0;
    }
    case ATP_CHANGE_IDEMPOTENCY: {
      atp_change_idem_t *m = &c->u.idem;
      m->kind = (atp_idem_kind_t)get_u32(d);
      m->id = flags & FLAG_ID_IS_CAUSE ? c->cause_id : get_str(d);
      m->content_hash = get_u64(d);
      m->created_at_ms = get_i64(d);
      m->flags = get_u32(d);
      if (flags & FLAG_POS_PREV) {
        if (!prev || prev->kind != ATP_CHANGE_POSITION) return ATP_EBADREQ;
        m->position.sku = prev->u.position.sku;
        m->position.location = prev->u.position.location;
      }
      get_position(d, &m->position, !(flags & FLAG_POS_PREV));
      m->reservation_id = get_str(d);
      return 0;
    }
    default:
      return ATP_EBADREQ;
  }
}

/* The context trailer after a body (see put_ctx); a body without one is a
 * record with no request behind it, or one written before the trailer. */
static int get_ctx(dec_t *d, atp_change_ctx_t *ctx) {
  uint8_t mask = get_u8(d);
  if (mask == 0 || mask >> ATP_CHANGE_CTX_FIELDS) return ATP_EBADREQ;
  for (int i = 0; i < ATP_CHANGE_CTX_FIELDS; i++)
    if (mask & (1u << i)) *ctx_slot(ctx, i) = get_str(d);
  return 0;
}

void atp_records_init(atp_records_t *out) {
  memset(out, 0, sizeof *out);
}

void atp_records_free(atp_records_t *out) {
  atp_free(out->contexts);
  atp_free(out->records);
  atp_free(out->reservations);
  atp_free(out->locations);
  memset(out, 0, sizeof *out);
}

int atp_records_decode(const void *payload, uint32_t payload_bytes,
                       atp_records_t *out) {
  dec_t d = {payload, (const unsigned char *)payload + payload_bytes, 0};
  out->count = 0;
  uint32_t count = get_u32(&d);
  /* Each record takes at least its header: a count the payload cannot hold
   * is refused before anything is allocated for it. */
  if (d.bad || count == 0 || count > payload_bytes / RECORD_HEADER_BYTES)
    return ATP_EBADREQ;
  if (!grow((void **)&out->records, &out->records_cap, count, sizeof *out->records) ||
      !grow((void **)&out->contexts, &out->contexts_cap, count, sizeof *out->contexts))
    return ATP_ENOMEM;
  uint32_t res_used = 0, locs_used = 0;
  int rc = 0;
  for (uint32_t i = 0; i < count && !rc; i++) {
    atp_change_t *c = &out->records[i];
    memset(c, 0, sizeof *c);
    c->kind = (atp_change_kind_t)get_u8(&d);
    c->cause = (atp_cause_t)get_u8(&d);
    uint16_t flags = get_u16(&d);
    uint32_t body = get_u32(&d);
    c->at_ms = get_i64(&d);
    const atp_change_t *prev = i ? &out->records[i - 1] : NULL;
    /* A flag that leans on a previous record needs one. */
    if ((flags & ~FLAGS_KNOWN) || (flags && !prev)) {
      rc = ATP_EBADREQ;
      break;
    }
    c->cause_id = flags & FLAG_CAUSE_PREV ? prev->cause_id : get_str(&d);
    if (d.bad || (size_t)(d.end - d.p) < body) {
      rc = ATP_EBADREQ;
      break;
    }
    const unsigned char *body_end = d.p + body;
    dec_t bd = {d.p, body_end, 0};
    rc = get_body(&bd, out, c, &res_used, &locs_used, flags, prev);
    if (flags & FLAG_CTX_PREV)
      out->contexts[i] = out->contexts[i - 1]; /* and no trailer of its own */
    else
      memset(&out->contexts[i], 0, sizeof out->contexts[i]);
    if (!rc && !bd.bad && bd.p < body_end && !(flags & FLAG_CTX_PREV))
      rc = get_ctx(&bd, &out->contexts[i]);
    if (!rc && (bd.bad || bd.p != body_end)) rc = ATP_EBADREQ;
    d.p = body_end;
  }
  if (!rc && d.p != d.end) rc = ATP_EBADREQ;
  if (rc) return rc;
  for (uint32_t i = 0; i < count; i++) {
    atp_change_t *c = &out->records[i];
    if (c->kind == ATP_CHANGE_RESERVATION)
      c->u.reservation = &out->reservations[(uintptr_t)c->u.reservation];
    else if (c->kind == ATP_CHANGE_GROUP)
      c->u.group.locations = out->locations + (uintptr_t)c->u.group.locations;
  }
  out->count = count;
  return 0;
}
