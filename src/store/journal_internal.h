/* journal_internal.h - what src/store/journal.c (queue and writer) and
 * src/store/journal_scan.c (recovery) share: the on-disk format of
 * proto/journal.md and the scan's result.
 */
#ifndef ATP_JOURNAL_INTERNAL_H
#define ATP_JOURNAL_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atp/crc32c.h"
#include "atp/journal.h"

/* Segment header (64 bytes, little-endian):
 *   0 magic "ATPDJRNL"  8 u32 version  12 u32 header_bytes  16 u64 first_lsn
 *  24 u64 journal_id   32 i64 created_at_ms  40..59 zero  60 u32 crc of 0..59 */
#define ATP__JOURNAL_MAGIC        "ATPDJRNL"
#define ATP__JOURNAL_VERSION      1u
#define ATP__JOURNAL_HEADER_BYTES 64u
/* Record frame header (24 bytes), then the payload:
 *   0 u32 crc  4 u32 payload_bytes  8 u64 lsn  16 u16 kind  18 u16 flags (0)
 *  20 u32 group_delta (lsn minus the first LSN of its group)
 * crc = CRC32C over journal_id (8 bytes LE), bytes 4..23, then the payload. */
#define ATP__JOURNAL_FRAME_BYTES 24u
#define ATP__JOURNAL_SUFFIX      ".journal"
#define ATP__JOURNAL_TMP_SUFFIX  ".journal.tmp"
#define ATP__JOURNAL_NAME_DIGITS 20
/* Paths of segments; atp_journal_open refuses a directory too long for them. */
#define ATP__JOURNAL_PATH_BYTES 512

static inline void atp__put16(unsigned char *p, uint16_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
}
static inline void atp__put32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline void atp__put64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint16_t atp__get16(const unsigned char *p) {
  return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t atp__get32(const unsigned char *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}
static inline uint64_t atp__get64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

/* The CRC seed of a journal: the CRC of its id, so a frame copied from
 * another journal (or a reused disk block of one) never validates here. */
static inline uint32_t atp__journal_seed(uint64_t journal_id) {
  unsigned char id[8];
  atp__put64(id, journal_id);
  return atp_crc32c(0, id, 8);
}

/* The frame's CRC as stored at offset 0; frame points at its header and the
 * payload follows it in memory. */
static inline uint32_t atp__journal_frame_crc(uint32_t seed,
                                              const unsigned char *frame) {
  uint32_t crc = atp_crc32c(seed, frame + 4, ATP__JOURNAL_FRAME_BYTES - 4);
  return atp_crc32c(crc, frame + ATP__JOURNAL_FRAME_BYTES, atp__get32(frame + 4));
}

/* "<dir>/<20-digit first LSN>.journal" (tmp: ".journal.tmp"); 0 or
 * ATP_ETOOLARGE when it does not fit. */
int atp__journal_path(char *out, size_t cap, const char *dir, uint64_t first_lsn,
                      bool tmp);
void atp__journal_header_encode(unsigned char out[ATP__JOURNAL_HEADER_BYTES],
                                uint64_t first_lsn, uint64_t journal_id,
                                int64_t created_at_ms);

/* What a scan leaves for the writer. */
typedef struct {
  uint64_t journal_id; /* of the segments found; 0 when there were none */
  uint64_t *segs;      /* first LSNs of the segments, ascending (atp_malloc) */
  uint32_t seg_count;
  uint32_t seg_cap;
  uint64_t next_lsn;      /* next LSN to assign (> covered_lsn) */
  uint64_t last_expected; /* the last segment's next LSN, so whether it continues */
  uint64_t last_bytes;    /* the last segment's length after any repair */
  /* The last segment's file size: last_bytes plus the zero-filled space after
   * its data end (proto/journal.md, "Clean zero end"), which the writer goes
   * on overwriting. */
  uint64_t last_file_bytes;
} atp__journal_dir_t;

/* Scans dir (see atp_journal_open). With repair, cuts a torn tail and removes
 * leftover temporary segments; without, only reports them. On success
 * out->segs belongs to the caller. */
int atp__journal_scan(const char *dir, uint64_t covered_lsn, atp_journal_record_fn fn,
                      void *ctx, bool repair, atp_journal_scan_t *scan,
                      atp__journal_dir_t *out);

#endif
