/* journal_scan.c - recovery: read the segments in LSN order, check every
 * record, hand the ones after the snapshot to a callback, cut a torn tail.
 *
 * Telling a torn tail from corruption. The writer writes one group (one
 * writev) and waits for its fdatasync before it writes the next, and a group
 * never spans two segments. So when the process dies, at most the last group
 * of the last segment can be partly on disk, and in any order: the kernel may
 * have written a later page of it and not an earlier one. Every frame carries
 * group_delta, its distance from the first LSN of its group. A bad frame at
 * offset X where LSN E was expected is a torn tail when the segment is the last
 * one and no intact frame anywhere after X belongs to a group that began after
 * E: then everything from X on is of the one group that was never confirmed,
 * and no response waited for it in batch or always mode. An intact frame of a
 * later group proves E's group was durable once, so the bad frame is
 * corruption of acknowledged data: the scan stops with the file and offset.
 * A bad frame in any segment but the last is corruption for the same reason
 * (a segment is closed only after its last group is durable).
 *
 * Zero-filled space. The writer zero-fills the segment ahead of its write
 * position (so that its fdatasyncs overwrite allocated blocks instead of
 * growing the file), so the last segment may end in zeroes. A frame whose
 * 24 header bytes are all zero can never be good (LSN 0 is never used, kind
 * 0 neither), so when the bytes from X to the end of the segment are all zero
 * the segment ends cleanly at X: nothing is cut or reported. A zero header
 * with any nonzero byte after it is a bad frame like any other, and the torn
 * tail and corruption rules decide; a partial frame followed by zeroes is a
 * torn tail as before.
 *
 * What this cannot tell: a bit flipped, after the fact, inside the newest
 * group of the last segment looks like a torn write and is cut. Every log
 * that trusts its last fsync has that limit.
 *
 * Cost: a segment is read whole into memory (up to segment_bytes_max, plus one
 * record); the search after a bad frame looks at every byte offset, but only
 * frames whose LSN is plausible get a CRC, so it stays linear.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atp/limits.h"
#include "atp/log.h"
#include "atp/memory.h"
#include "journal_internal.h"

int atp__journal_path(char *out, size_t cap, const char *dir, uint64_t first_lsn,
                      bool tmp) {
  int n = snprintf(out, cap, "%s/%020" PRIu64 "%s", dir, first_lsn,
                   tmp ? ATP__JOURNAL_TMP_SUFFIX : ATP__JOURNAL_SUFFIX);
  return n > 0 && (size_t)n < cap ? 0 : ATP_ETOOLARGE;
}

void atp__journal_header_encode(unsigned char out[ATP__JOURNAL_HEADER_BYTES],
                                uint64_t first_lsn, uint64_t journal_id,
                                int64_t created_at_ms) {
  memset(out, 0, ATP__JOURNAL_HEADER_BYTES);
  memcpy(out, ATP__JOURNAL_MAGIC, 8);
  atp__put32(out + 8, ATP__JOURNAL_VERSION);
  atp__put32(out + 12, ATP__JOURNAL_HEADER_BYTES);
  atp__put64(out + 16, first_lsn);
  atp__put64(out + 24, journal_id);
  atp__put64(out + 32, (uint64_t)created_at_ms);
  atp__put32(out + 60, atp_crc32c(0, out, 60));
}

/* Fills scan->error and returns err. */
__attribute__((format(printf, 3, 4))) static int fail(atp_journal_scan_t *scan, int err,
                                                      const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(scan->error, sizeof scan->error, fmt, ap);
  va_end(ap);
  return err;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* The first LSN a segment name stands for, or false if the name is not one.
 * *tmp tells a leftover temporary segment (created, never renamed). */
static bool parse_name(const char *name, uint64_t *first_lsn, bool *tmp) {
  size_t len = strlen(name);
  if (len <= ATP__JOURNAL_NAME_DIGITS) return false;
  const char *suffix = name + ATP__JOURNAL_NAME_DIGITS;
  if (strcmp(suffix, ATP__JOURNAL_SUFFIX) == 0)
    *tmp = false;
  else if (strcmp(suffix, ATP__JOURNAL_TMP_SUFFIX) == 0)
    *tmp = true;
  else
    return false;
  uint64_t v = 0;
  for (int i = 0; i < ATP__JOURNAL_NAME_DIGITS; i++) {
    if (name[i] < '0' || name[i] > '9') return false;
    uint64_t digit = (uint64_t)(name[i] - '0');
    if (v > (UINT64_MAX - digit) / 10) return false;
    v = v * 10 + digit;
  }
  *first_lsn = v;
  return true;
}

static int push_seg(atp__journal_dir_t *d, uint64_t first_lsn) {
  if (d->seg_count == d->seg_cap) {
    uint32_t cap = d->seg_cap ? d->seg_cap * 2 : 16;
    uint64_t *segs = atp_realloc(d->segs, cap * sizeof *segs);
    if (!segs) return ATP_ENOMEM;
    d->segs = segs;
    d->seg_cap = cap;
  }
  d->segs[d->seg_count++] = first_lsn;
  return 0;
}

/* Lists the segments of dir in LSN order; with repair, removes leftover
 * temporary ones (a roll that died before its rename: nothing in them was
 * ever part of the journal). */
static int list_segments(const char *dir, bool repair, atp__journal_dir_t *d,
                         atp_journal_scan_t *scan) {
  DIR *dp = opendir(dir);
  if (!dp)
    return fail(scan, ATP_EUNAVAILABLE, "journal: opendir %s: %s", dir,
                strerror(errno));
  int rc = 0;
  struct dirent *de;
  while (rc == 0 && (de = readdir(dp))) {
    uint64_t first;
    bool tmp;
    if (!parse_name(de->d_name, &first, &tmp)) continue;
    if (tmp) {
      char path[ATP__JOURNAL_PATH_BYTES];
      if (repair &&
          snprintf(path, sizeof path, "%s/%s", dir, de->d_name) < (int)sizeof path &&
          unlink(path) == 0)
        atp_log("warn", "journal: removed unfinished segment %s", path);
      continue;
    }
    if (d->seg_count >= ATP_JOURNAL_SEGMENTS_MAX)
      rc = fail(scan, ATP_EINTERNAL, "journal: more than %d segments in %s",
                ATP_JOURNAL_SEGMENTS_MAX, dir);
    else
      rc = push_seg(d, first);
  }
  closedir(dp);
  if (rc == 0 && d->seg_count) qsort(d->segs, d->seg_count, sizeof *d->segs, cmp_u64);
  return rc;
}

/* Reads the whole file into *buf (atp_malloc, at least 1 byte). */
static int read_file(const char *path, unsigned char **buf, uint64_t *size,
                     atp_journal_scan_t *scan) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return fail(scan, ATP_EUNAVAILABLE, "journal: open %s: %s", path, strerror(errno));
  struct stat st;
  int rc = 0;
  if (fstat(fd, &st) != 0) {
    rc = fail(scan, ATP_EUNAVAILABLE, "journal: stat %s: %s", path, strerror(errno));
  } else if (!(*buf = atp_malloc((size_t)st.st_size + 1))) {
    rc = fail(scan, ATP_ENOMEM, "journal: no memory to read %s", path);
  } else {
    uint64_t got = 0;
    while (rc == 0 && got < (uint64_t)st.st_size) {
      ssize_t n = pread(fd, *buf + got, (size_t)st.st_size - got, (off_t)got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        rc = fail(scan, ATP_EUNAVAILABLE, "journal: read %s at %" PRIu64 ": %s", path,
                  got, n < 0 ? strerror(errno) : "file shrank");
      else
        got += (uint64_t)n;
    }
    *size = got;
    if (rc) atp_free(*buf);
  }
  close(fd);
  return rc;
}

/* Checks a segment header against its name and the journal's id (0: take
 * this one's). */
static int check_header(const unsigned char *buf, uint64_t size, uint64_t name_lsn,
                        const char *path, uint64_t *journal_id,
                        atp_journal_scan_t *scan) {
  if (size < ATP__JOURNAL_HEADER_BYTES || memcmp(buf, ATP__JOURNAL_MAGIC, 8) != 0)
    return fail(scan, ATP_EINTERNAL, "journal: %s at offset 0: not a journal segment",
                path);
  if (atp__get32(buf + 60) != atp_crc32c(0, buf, 60))
    return fail(scan, ATP_EINTERNAL,
                "journal: %s at offset 0: header checksum mismatch", path);
  uint32_t version = atp__get32(buf + 8);
  if (version > ATP__JOURNAL_VERSION)
    return fail(
        scan, ATP_EINTERNAL,
        "journal: %s at offset 8: format version %u is newer than this build's %u",
        path, version, ATP__JOURNAL_VERSION);
  uint32_t header_bytes = atp__get32(buf + 12);
  if (version == 0 || header_bytes != ATP__JOURNAL_HEADER_BYTES)
    return fail(scan, ATP_EINTERNAL,
                "journal: %s at offset 8: bad version or header size", path);
  if (atp__get64(buf + 16) != name_lsn)
    return fail(scan, ATP_EINTERNAL,
                "journal: %s at offset 16: first LSN %" PRIu64 " differs from its name",
                path, atp__get64(buf + 16));
  uint64_t id = atp__get64(buf + 24);
  if (*journal_id && id != *journal_id)
    return fail(scan, ATP_EINTERNAL,
                "journal: %s at offset 24: segment of another journal (id %016" PRIx64
                ", expected %016" PRIx64 ")",
                path, id, *journal_id);
  *journal_id = id;
  return 0;
}

typedef struct {
  const unsigned char *buf;
  uint64_t size;
  uint32_t seed;
} seg_view_t;

/* Whether an intact frame (bounds and CRC) with lsn in [lsn_lo, lsn_hi] starts
 * at off. */
static bool frame_intact(const seg_view_t *v, uint64_t off, uint64_t lsn_lo,
                         uint64_t lsn_hi) {
  if (v->size - off < ATP__JOURNAL_FRAME_BYTES) return false;
  const unsigned char *f = v->buf + off;
  uint32_t len = atp__get32(f + 4);
  uint64_t lsn = atp__get64(f + 8);
  if (len > ATP_JOURNAL_RECORD_BYTES_MAX ||
      len > v->size - off - ATP__JOURNAL_FRAME_BYTES)
    return false;
  if (lsn < lsn_lo || lsn > lsn_hi) return false;
  return atp__get32(f) == atp__journal_frame_crc(v->seed, f);
}

/* The bad frame at bad_off (where LSN expected belonged) is a torn tail
 * unless an intact frame after it began its group after expected; see the
 * file comment. Counts the intact frames it passes into *frames. */
static bool torn_tail(const seg_view_t *v, uint64_t bad_off, uint64_t expected,
                      uint64_t *frames, uint64_t *later_off) {
  uint64_t lsn_hi = expected + (v->size - bad_off) / ATP__JOURNAL_FRAME_BYTES + 1;
  *frames = 1;
  for (uint64_t off = bad_off; off + ATP__JOURNAL_FRAME_BYTES <= v->size; off++) {
    if (!frame_intact(v, off, expected, lsn_hi)) continue;
    const unsigned char *f = v->buf + off;
    uint64_t lsn = atp__get64(f + 8), delta = atp__get32(f + 20);
    if (delta <= lsn && lsn - delta > expected) {
      *later_off = off;
      return false;
    }
    if (off > bad_off) (*frames)++;
  }
  return true;
}

/* Cuts the last segment back to length and makes that durable. */
static int truncate_segment(const char *path, uint64_t length,
                            atp_journal_scan_t *scan) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  int rc = 0;
  if (fd < 0 || ftruncate(fd, (off_t)length) != 0 || fdatasync(fd) != 0)
    rc = fail(scan, ATP_EUNAVAILABLE, "journal: truncating %s to %" PRIu64 ": %s", path,
              length, strerror(errno));
  if (fd >= 0) close(fd);
  return rc;
}

typedef struct {
  uint64_t covered_lsn;
  atp_journal_record_fn fn;
  void *ctx;
  bool repair;
} scan_opts_t;

/* Handles a bad frame at off of segment path: a torn tail is reported (and cut
 * with repair), anything else is an error naming path and off. */
static int bad_frame(const seg_view_t *v, const char *path, uint64_t off,
                     uint64_t expected, bool last, const scan_opts_t *o,
                     atp_journal_scan_t *scan) {
  uint64_t frames = 0, later_off = 0;
  if (!last)
    return fail(scan, ATP_EINTERNAL,
                "journal: %s at offset %" PRIu64 ": bad record (LSN %" PRIu64
                " expected) in a closed segment",
                path, off, expected);
  if (!torn_tail(v, off, expected, &frames, &later_off))
    return fail(scan, ATP_EINTERNAL,
                "journal: %s at offset %" PRIu64 ": bad record (LSN %" PRIu64
                " expected) before an intact later group at offset %" PRIu64,
                path, off, expected, later_off);
  scan->tail_bytes = v->size - off;
  scan->tail_records = frames;
  scan->tail_offset = off;
  snprintf(scan->tail_file, sizeof scan->tail_file, "%s", path);
  if (!o->repair) return 0;
  atp_log("warn",
          "journal: torn tail of %s cut at offset %" PRIu64 ": %" PRIu64
          " bytes, %" PRIu64 " records",
          path, off, scan->tail_bytes, frames);
  return truncate_segment(path, off, scan);
}

/* Whether every byte from off to the end of the segment is zero: a clean end
 * in zero-filled space (see the file comment). */
static bool zero_end(const seg_view_t *v, uint64_t off) {
  const unsigned char *p = v->buf + off, *end = v->buf + v->size;
  while (p < end && ((uintptr_t)p & 7)) {
    if (*p++) return false;
  }
  for (; end - p >= 8; p += 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    if (w) return false;
  }
  while (p < end) {
    if (*p++) return false;
  }
  return true;
}

/* Scans one segment's records from LSN first; *next is the LSN after its
 * last intact record and *length the segment's length after any cut. */
static int scan_records(const seg_view_t *v, const char *path, uint64_t first,
                        bool last, const scan_opts_t *o, atp_journal_scan_t *scan,
                        uint64_t *next, uint64_t *length) {
  uint64_t off = ATP__JOURNAL_HEADER_BYTES, expected = first;
  *length = v->size;
  while (off < v->size) {
    const unsigned char *f = v->buf + off;
    if (zero_end(v, off)) {
      *length = off; /* the data end; the zeroes stay for the writer */
      break;
    }
    if (!frame_intact(v, off, expected, expected) || atp__get16(f + 16) == 0 ||
        atp__get16(f + 18) != 0) {
      int rc = bad_frame(v, path, off, expected, last, o, scan);
      *length = off;
      *next = expected;
      return rc;
    }
    uint32_t len = atp__get32(f + 4);
    if (scan->records++ == 0) scan->first_lsn = expected;
    scan->last_lsn = expected;
    if (expected > o->covered_lsn && o->fn) {
      int rc = o->fn(o->ctx, expected, atp__get16(f + 16), f + ATP__JOURNAL_FRAME_BYTES,
                     len);
      if (rc)
        return fail(scan, rc, "journal: replay of LSN %" PRIu64 " failed", expected);
      scan->records_replayed++;
    }
    if (expected > o->covered_lsn && !o->fn) scan->records_replayed++;
    off += ATP__JOURNAL_FRAME_BYTES + len;
    expected++;
  }
  *next = expected;
  return 0;
}

/* Checks that segment first_lsn continues the journal: no LSN after
 * covered_lsn may be missing and none may repeat. expected is the LSN the
 * previous segment ended before (0 for the first segment). */
static int check_sequence(const char *path, uint64_t first_lsn, uint64_t expected,
                          uint64_t covered_lsn, atp_journal_scan_t *scan) {
  if (first_lsn == 0)
    return fail(scan, ATP_EINTERNAL, "journal: %s: LSN 0 is never used", path);
  if (expected && first_lsn < expected)
    return fail(scan, ATP_EINTERNAL,
                "journal: %s at offset 16: starts at LSN %" PRIu64
                " but the previous segment reaches %" PRIu64,
                path, first_lsn, expected - 1);
  uint64_t from = expected ? expected : 1;
  if (first_lsn > from && first_lsn > covered_lsn + 1)
    return fail(scan, ATP_EINTERNAL,
                "journal: %s at offset 16: LSNs %" PRIu64 "..%" PRIu64
                " are missing (not covered by the snapshot at %" PRIu64 ")",
                path, (from > covered_lsn + 1 ? from : covered_lsn + 1), first_lsn - 1,
                covered_lsn);
  return 0;
}

static int scan_segment(const char *dir, uint32_t index, const scan_opts_t *o,
                        atp_journal_scan_t *scan, atp__journal_dir_t *d,
                        uint64_t *expected) {
  char path[ATP__JOURNAL_PATH_BYTES];
  uint64_t first = d->segs[index];
  bool last = index + 1 == d->seg_count;
  if (atp__journal_path(path, sizeof path, dir, first, false) != 0)
    return fail(scan, ATP_ETOOLARGE, "journal: path too long in %s", dir);
  int rc = check_sequence(path, first, *expected, o->covered_lsn, scan);
  unsigned char *buf = NULL;
  uint64_t size = 0, length = 0;
  if (rc == 0) rc = read_file(path, &buf, &size, scan);
  if (rc) return rc;
  rc = check_header(buf, size, first, path, &d->journal_id, scan);
  seg_view_t v = {buf, size, atp__journal_seed(d->journal_id)};
  if (rc == 0) rc = scan_records(&v, path, first, last, o, scan, expected, &length);
  atp_free(buf);
  scan->segments++;
  if (last) {
    d->last_expected = *expected;
    d->last_bytes = o->repair ? length : size;
    /* A cut truncated the file at length; a clean zero end keeps its size. */
    d->last_file_bytes = o->repair && scan->tail_bytes ? length : size;
  }
  return rc;
}

int atp__journal_scan(const char *dir, uint64_t covered_lsn, atp_journal_record_fn fn,
                      void *ctx, bool repair, atp_journal_scan_t *scan,
                      atp__journal_dir_t *out) {
  memset(scan, 0, sizeof *scan);
  memset(out, 0, sizeof *out);
  scan_opts_t o = {covered_lsn, fn, ctx, repair};
  int rc = list_segments(dir, repair, out, scan);
  uint64_t expected = 0;
  for (uint32_t i = 0; rc == 0 && i < out->seg_count; i++)
    rc = scan_segment(dir, i, &o, scan, out, &expected);
  if (rc) {
    atp_free(out->segs);
    memset(out, 0, sizeof *out);
    return rc;
  }
  out->next_lsn = expected > covered_lsn + 1 ? expected : covered_lsn + 1;
  scan->next_lsn = out->next_lsn;
  return 0;
}

int atp_journal_read(const char *dir, uint64_t covered_lsn, atp_journal_record_fn fn,
                     void *ctx, atp_journal_scan_t *scan) {
  atp__journal_dir_t d;
  int rc = atp__journal_scan(dir, covered_lsn, fn, ctx, false, scan, &d);
  atp_free(d.segs);
  return rc;
}
