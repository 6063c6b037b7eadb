/* payload.h - the little-endian binary payloads of journal and snapshot
 * records that modules beside the engine define (dead letters, flows, audit,
 * reconciliations; the kinds are listed in proto/journal.md).
 *
 * A payload is fixed-width integers and strings as a u32 length and the
 * bytes, written in the order the kind's table gives. The writer appends to
 * an atp_buf_t (its errors are sticky in buf->failed); the reader checks
 * every length against what is left, and once it has run past the end every
 * later read gives zero and atp_payload_ok says false, so a decoder reads
 * all fields and checks once.
 *
 * Thread: pure; a reader belongs to its caller.
 */
#ifndef ATP_PAYLOAD_H
#define ATP_PAYLOAD_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "atp/memory.h"

static inline void atp_payload_u8(atp_buf_t *b, uint8_t v) {
  (void)atp_buf_append(b, &v, 1);
}
static inline void atp_payload_u16(atp_buf_t *b, uint16_t v) {
  unsigned char p[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
  (void)atp_buf_append(b, p, 2);
}
static inline void atp_payload_u32(atp_buf_t *b, uint32_t v) {
  unsigned char p[4];
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
  (void)atp_buf_append(b, p, 4);
}
static inline void atp_payload_u64(atp_buf_t *b, uint64_t v) {
  unsigned char p[8];
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
  (void)atp_buf_append(b, p, 8);
}
static inline void atp_payload_i64(atp_buf_t *b, int64_t v) {
  atp_payload_u64(b, (uint64_t)v);
}
static inline void atp_payload_str(atp_buf_t *b, const char *s, size_t len) {
  atp_payload_u32(b, (uint32_t)len);
  if (len) (void)atp_buf_append(b, s, len);
}

typedef struct {
  const unsigned char *p;
  uint32_t left;
  bool bad; /* a read ran past the end */
} atp_payload_reader_t;

static inline void atp_payload_reader_init(atp_payload_reader_t *r, const void *p,
                                           uint32_t len) {
  r->p = (const unsigned char *)p;
  r->left = len;
  r->bad = false;
}
static inline const unsigned char *atp_payload_take(atp_payload_reader_t *r,
                                                    uint32_t n) {
  if (r->bad || r->left < n) {
    r->bad = true;
    return NULL;
  }
  const unsigned char *at = r->p;
  r->p += n;
  r->left -= n;
  return at;
}
static inline uint64_t atp_payload_get(atp_payload_reader_t *r, uint32_t n) {
  const unsigned char *p = atp_payload_take(r, n);
  uint64_t v = 0;
  if (p)
    for (int i = (int)n - 1; i >= 0; i--) v = v << 8 | p[i];
  return v;
}
static inline uint8_t atp_payload_get_u8(atp_payload_reader_t *r) {
  return (uint8_t)atp_payload_get(r, 1);
}
static inline uint16_t atp_payload_get_u16(atp_payload_reader_t *r) {
  return (uint16_t)atp_payload_get(r, 2);
}
static inline uint32_t atp_payload_get_u32(atp_payload_reader_t *r) {
  return (uint32_t)atp_payload_get(r, 4);
}
static inline uint64_t atp_payload_get_u64(atp_payload_reader_t *r) {
  return atp_payload_get(r, 8);
}
static inline int64_t atp_payload_get_i64(atp_payload_reader_t *r) {
  return (int64_t)atp_payload_get(r, 8);
}
/* A string: *ptr points into the payload (not NUL-terminated). */
static inline void atp_payload_get_str(atp_payload_reader_t *r, const char **ptr,
                                       uint32_t *len) {
  uint32_t n = atp_payload_get_u32(r);
  const unsigned char *p = atp_payload_take(r, n);
  *ptr = p ? (const char *)p : "";
  *len = p ? n : 0;
}
/* Every field read was there. Bytes left over are fields a later release
 * added at the end, which this one skips. */
static inline bool atp_payload_ok(const atp_payload_reader_t *r) {
  return !r->bad;
}

#endif
