/* journal_read.c - a read-only follower of the live journal, for the change
 * feed (atp_journal_read_range in include/atp/journal.h).
 *
 * Recovery (journal_scan.c) reads whole segments once at start. The feed
 * instead reads small ranges many times while the writer appends, so this
 * reader lists the segment names, opens only the segment that holds the
 * first wanted LSN and walks its frames with pread: a frame before the range
 * costs its 24-byte header, a frame in it one read of its payload and a CRC.
 * It never reads past upto_lsn, the journal's durable LSN, so it never meets
 * the frame the writer is writing. A hint (where the last read stopped) lets a
 * follower at the tail start at its frame instead of walking the segment.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atp/assert.h"
#include "atp/memory.h"
#include "journal_internal.h"

/* Segments listed per call; a directory with more is read as its newest this
 * many (the feed's retention keeps far fewer). */
#define LIST_MAX 4096

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* The first LSN a finished segment's name stands for ("<20 digits>.journal"). */
static bool segment_name(const char *name, uint64_t *lsn) {
  if (strlen(name) != ATP__JOURNAL_NAME_DIGITS + strlen(ATP__JOURNAL_SUFFIX) ||
      strcmp(name + ATP__JOURNAL_NAME_DIGITS, ATP__JOURNAL_SUFFIX) != 0)
    return false;
  uint64_t v = 0;
  for (int i = 0; i < ATP__JOURNAL_NAME_DIGITS; i++) {
    if (name[i] < '0' || name[i] > '9') return false;
    uint64_t digit = (uint64_t)(name[i] - '0');
    if (v > (UINT64_MAX - digit) / 10) return false;
    v = v * 10 + digit;
  }
  *lsn = v;
  return v > 0;
}

/* The sorted first LSNs of dir's segments into segs[0..*count). */
static int list(const char *dir, uint64_t *segs, uint32_t *count) {
  DIR *d = opendir(dir);
  if (!d) return errno == ENOENT ? (*count = 0, 0) : ATP_EUNAVAILABLE;
  uint32_t n = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    uint64_t lsn;
    if (!segment_name(e->d_name, &lsn)) continue;
    if (n == LIST_MAX) { /* keep the newest: replace the smallest */
      qsort(segs, n, sizeof *segs, cmp_u64);
      if (lsn > segs[0]) segs[0] = lsn;
      continue;
    }
    segs[n++] = lsn;
  }
  closedir(d);
  qsort(segs, n, sizeof *segs, cmp_u64);
  *count = n;
  return 0;
}

/* Bytes read from a segment at once: a follower's page of records is one or a
 * few preads, not two per record. */
#define WINDOW_BYTES (256u << 10)

typedef struct {
  int fd;
  uint32_t seed;
  unsigned char *payload; /* grown to the largest payload read */
  uint32_t payload_cap;
  unsigned char *window; /* WINDOW_BYTES of the file from window_off */
  uint64_t window_off;
  size_t window_len;
} seg_t;

static int read_exact(int fd, void *buf, size_t n, uint64_t off, bool *short_read) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return ATP_EUNAVAILABLE;
    if (r == 0) {
      *short_read = true;
      return 0;
    }
    got += (size_t)r;
  }
  return 0;
}

/* Reads n bytes at off through the window (refilled from off when they are not
 * in it); a request larger than the window goes to the file directly. */
static int seg_read(seg_t *s, void *buf, size_t n, uint64_t off, bool *short_read) {
  if (n > WINDOW_BYTES) return read_exact(s->fd, buf, n, off, short_read);
  if (off < s->window_off || off + n > s->window_off + s->window_len) {
    if (!s->window && !(s->window = atp_malloc(WINDOW_BYTES))) return ATP_ENOMEM;
    size_t got = 0;
    while (got < WINDOW_BYTES) {
      ssize_t r = pread(s->fd, s->window + got, WINDOW_BYTES - got, (off_t)(off + got));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return ATP_EUNAVAILABLE;
      if (r == 0) break;
      got += (size_t)r;
    }
    s->window_off = off;
    s->window_len = got;
    if (got < n) {
      *short_read = true;
      return 0;
    }
  }
  memcpy(buf, s->window + (off - s->window_off), n);
  return 0;
}

static int seg_open(seg_t *s, const char *dir, uint64_t first_lsn) {
  char path[ATP__JOURNAL_PATH_BYTES];
  int rc = atp__journal_path(path, sizeof path, dir, first_lsn, false);
  if (rc) return rc;
  s->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (s->fd < 0) return errno == ENOENT ? ATP_ENOTFOUND : ATP_EUNAVAILABLE;
  unsigned char h[ATP__JOURNAL_HEADER_BYTES];
  bool short_read = false;
  rc = read_exact(s->fd, h, sizeof h, 0, &short_read);
  if (!rc &&
      (short_read || memcmp(h, ATP__JOURNAL_MAGIC, 8) != 0 ||
       atp__get32(h + 60) != atp_crc32c(0, h, 60) || atp__get64(h + 16) != first_lsn))
    rc = ATP_EINTERNAL;
  if (rc) {
    close(s->fd);
    s->fd = -1;
    return rc;
  }
  s->seed = atp__journal_seed(atp__get64(h + 24));
  s->window_off = 0;
  s->window_len = 0;
  return 0;
}

/* Walks one segment from (off, lsn) while LSNs are <= upto. *lsn and *off end
 * at the first frame not handed out; *end tells the segment's written end was
 * reached. */
static int seg_walk(seg_t *s, uint64_t *lsn, uint64_t *off, uint64_t after,
                    uint64_t upto, atp_journal_record_fn fn, void *ctx, bool *end) {
  unsigned char f[ATP__JOURNAL_FRAME_BYTES];
  *end = false;
  while (*lsn <= upto) {
    bool short_read = false;
    int rc = seg_read(s, f, sizeof f, *off, &short_read);
    if (rc) return rc;
    if (short_read) {
      *end = true;
      return 0;
    }
    uint32_t len = atp__get32(f + 4);
    if (atp__get64(f + 8) != *lsn || len > ATP_JOURNAL_RECORD_BYTES_MAX)
      return ATP_EINTERNAL;
    if (*lsn > after) {
      if (len + ATP__JOURNAL_FRAME_BYTES > s->payload_cap) {
        uint32_t cap = len + ATP__JOURNAL_FRAME_BYTES;
        unsigned char *p = atp_realloc(s->payload, cap);
        if (!p) return ATP_ENOMEM;
        s->payload = p;
        s->payload_cap = cap;
      }
      memcpy(s->payload, f, sizeof f);
      rc = seg_read(s, s->payload + sizeof f, len, *off + sizeof f, &short_read);
      if (rc) return rc;
      if (short_read || atp__get32(f) != atp__journal_frame_crc(s->seed, s->payload))
        return ATP_EINTERNAL;
      rc = fn(ctx, *lsn, atp__get16(f + 16), s->payload + sizeof f, len);
      *off += sizeof f + len;
      (*lsn)++;
      if (rc) return rc;
    } else {
      *off += sizeof f + len;
      (*lsn)++;
    }
  }
  return 0;
}

int atp_journal_read_range(const char *dir, uint64_t after_lsn, uint64_t upto_lsn,
                           atp_journal_pos_t *hint, atp_journal_record_fn fn, void *ctx,
                           uint64_t *first_lsn) {
  ATP_ASSERT(dir && fn && first_lsn);
  *first_lsn = 0;
  uint64_t *segs = atp_malloc(LIST_MAX * sizeof *segs);
  if (!segs) return ATP_ENOMEM;
  uint32_t n = 0;
  int rc = list(dir, segs, &n);
  if (rc || n == 0) {
    atp_free(segs);
    return rc;
  }
  *first_lsn = segs[0];
  uint64_t want = after_lsn + 1;
  if (want < segs[0]) {
    atp_free(segs);
    return ATP_ENOTFOUND;
  }
  uint32_t i = n - 1;
  while (i > 0 && segs[i] > want) i--;
  seg_t s = {.fd = -1};
  bool end = false;
  while (!rc && want <= upto_lsn && i < n) {
    rc = seg_open(&s, dir, segs[i]);
    if (rc == ATP_ENOTFOUND) { /* trimmed or replaced meanwhile: list again */
      rc = ATP_EUNAVAILABLE;
      break;
    }
    if (rc) break;
    uint64_t lsn = segs[i], off = ATP__JOURNAL_HEADER_BYTES;
    if (hint && hint->segment_lsn == segs[i] && hint->lsn >= lsn && hint->lsn <= want &&
        hint->offset >= off) {
      lsn = hint->lsn;
      off = hint->offset;
    }
    rc = seg_walk(&s, &lsn, &off, after_lsn, upto_lsn, fn, ctx, &end);
    if (rc == ATP_EINTERNAL && (lsn != segs[i] || off != ATP__JOURNAL_HEADER_BYTES) &&
        hint && hint->segment_lsn == segs[i]) {
      /* A stale hint (the segment was rewritten after a fault): walk it again
       * from its start. */
      uint64_t handed = lsn - 1 > after_lsn ? lsn - 1 : after_lsn;
      hint->lsn = 0;
      lsn = segs[i];
      off = ATP__JOURNAL_HEADER_BYTES;
      rc = seg_walk(&s, &lsn, &off, handed, upto_lsn, fn, ctx, &end);
    }
    if (hint) *hint = (atp_journal_pos_t){lsn, segs[i], off};
    if (lsn > want) {
      after_lsn = lsn - 1;
      want = lsn;
    }
    close(s.fd);
    s.fd = -1;
    if (!rc && end) i++;
    if (!rc && !end) break;
    if (!rc && i < n && segs[i] != want) rc = ATP_EINTERNAL; /* a gap */
  }
  atp_free(s.payload);
  atp_free(s.window);
  atp_free(segs);
  return rc;
}

/* A segment's created_at (header offset 32), or INT64_MAX when unreadable:
 * a segment whose age is unknown is kept. */
static int64_t created_at(const char *dir, uint64_t first_lsn) {
  seg_t s = {.fd = -1};
  if (seg_open(&s, dir, first_lsn) != 0) return INT64_MAX;
  unsigned char h[ATP__JOURNAL_HEADER_BYTES];
  bool short_read = false;
  int rc = read_exact(s.fd, h, sizeof h, 0, &short_read);
  close(s.fd);
  return rc || short_read ? INT64_MAX : (int64_t)atp__get64(h + 32);
}

int atp_journal_retention_floor(const char *dir, int64_t since_ms, uint64_t *lsn) {
  ATP_ASSERT(dir && lsn);
  *lsn = 0;
  uint64_t *segs = atp_malloc(LIST_MAX * sizeof *segs);
  if (!segs) return ATP_ENOMEM;
  uint32_t n = 0;
  int rc = list(dir, segs, &n);
  /* Segment i may go when segment i + 1 was created before since_ms: all of
   * i was written before then. The first one that may not go ends it. */
  for (uint32_t i = 0; rc == 0 && i + 1 < n; i++) {
    if (created_at(dir, segs[i + 1]) >= since_ms) break;
    *lsn = segs[i + 1] - 1;
  }
  atp_free(segs);
  return rc;
}
