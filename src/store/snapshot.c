/* snapshot.c - snapshot files and their copies in Redis (include/atp/snapshot.h;
 * the bytes are in proto/snapshot.md).
 *
 * The writer streams: atp_engine_export hands batches of records, each is
 * encoded by the journal's codec as one entry of the current chunk, and a
 * chunk goes to the file once it holds chunk_bytes. The header is written
 * last, in place, because the counts are known only at the end of a walk
 * that runs beside traffic. Nothing is ever read back in place: a reader
 * checks the header, then each chunk's CRC before it decodes a byte of it.
 *
 * Redis sees the file's own chunk frames as values, so a snapshot fetched
 * back from Redis is the same file, verified by the same reader.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "atp/clock.h"
#include "atp/crc32c.h"
#include "atp/memory.h"
#include "atp/records.h"
#include "atp/snapshot.h"

#define HEADER_BYTES  96u
#define FRAME_BYTES   16u
#define TRAILER_BYTES 32u
#define CHUNK_MAGIC   0x43505441u /* "ATPC" */
#define SECTION_MAGIC 0x4B505441u /* "ATPK": records of other modules' kinds */
static const char HEADER_MAGIC[8] = {'A', 'T', 'P', 'S', 'N', 'A', 'P', 0};
static const char TRAILER_MAGIC[8] = {'A', 'T', 'P', 'S', 'E', 'N', 'D', 0};
/* A chunk's payload may pass chunk_bytes by its last entry; beyond this a
 * reader refuses it rather than allocate what a damaged length says. */
#define CHUNK_PAYLOAD_MAX (64u << 20)

static void put32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get32(const unsigned char *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
  return v;
}
static uint64_t get64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

#define ERR(...) snprintf(err, err_len, __VA_ARGS__)

void atp_snapshot_config_init(atp_snapshot_config_t *config, const char *dir) {
  memset(config, 0, sizeof *config);
  config->dir = dir;
  config->redis_port = 6379;
  const char *delay = getenv("ATPD_TEST_SNAPSHOT_DELAY_MS");
  if (delay && *delay) config->test_delay_ms = (uint32_t)strtoul(delay, NULL, 10);
  /* Test switch: a short Redis timeout, so that a stopped Redis fails a
   * push in a test's time. */
  const char *timeout = getenv("ATPD_TEST_REDIS_TIMEOUT_MS");
  if (timeout && *timeout)
    config->redis_timeout_ms = (uint32_t)strtoul(timeout, NULL, 10);
}

static uint32_t chunk_bytes(const atp_snapshot_config_t *c) {
  return c->chunk_bytes ? c->chunk_bytes : ATP_SNAPSHOT_CHUNK_BYTES;
}

/* --- header and trailer ------------------------------------------------------- */

static void header_encode(unsigned char *h, const atp_snapshot_info_t *info) {
  memset(h, 0, HEADER_BYTES);
  memcpy(h, HEADER_MAGIC, 8);
  put32(h + 8, ATP_SNAPSHOT_FORMAT_VERSION);
  put32(h + 12, HEADER_BYTES);
  put64(h + 16, info->lsn);
  put64(h + 24, (uint64_t)info->created_at_ms);
  put64(h + 32, info->counts.positions);
  put64(h + 40, info->counts.history_entries);
  put64(h + 48, info->counts.reservations);
  put64(h + 56, info->counts.idempotency_ids);
  put64(h + 64, info->counts.groups);
  put64(h + 72, info->chunks);
  put64(h + 80, info->bytes);
  put32(h + 88, 0); /* flags */
  put32(h + 92, atp_crc32c(0, h, 92));
}

static void info_id(atp_snapshot_info_t *info) {
  snprintf(info->id, sizeof info->id, "%" PRIu64 "-%" PRId64, info->lsn,
           info->created_at_ms);
}

static int header_decode(const unsigned char *h, atp_snapshot_info_t *info, char *err,
                         size_t err_len, const char *where) {
  if (memcmp(h, HEADER_MAGIC, 8) != 0) {
    ERR("%s: not a snapshot (bad magic at offset 0)", where);
    return ATP_EINTERNAL;
  }
  if (get32(h + 92) != atp_crc32c(0, h, 92)) {
    ERR("%s: header checksum mismatch at offset 92", where);
    return ATP_EINTERNAL;
  }
  uint32_t version = get32(h + 8);
  if (version == 0 || version > ATP_SNAPSHOT_FORMAT_VERSION ||
      get32(h + 12) != HEADER_BYTES) {
    ERR("%s: snapshot format version %u is newer than this build's %u", where, version,
        ATP_SNAPSHOT_FORMAT_VERSION);
    return ATP_EINTERNAL;
  }
  info->lsn = get64(h + 16);
  info->created_at_ms = (int64_t)get64(h + 24);
  info->counts.positions = get64(h + 32);
  info->counts.history_entries = get64(h + 40);
  info->counts.reservations = get64(h + 48);
  info->counts.idempotency_ids = get64(h + 56);
  info->counts.groups = get64(h + 64);
  info->chunks = get64(h + 72);
  info->bytes = get64(h + 80);
  info_id(info);
  return 0;
}

static void trailer_encode(unsigned char *t, uint64_t chunks, uint64_t body_end) {
  memset(t, 0, TRAILER_BYTES);
  memcpy(t, TRAILER_MAGIC, 8);
  put64(t + 8, chunks);
  put64(t + 16, body_end);
  put32(t + 28, atp_crc32c(0, t, 28));
}

/* --- files ------------------------------------------------------------------- */

static int write_all(int fd, const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(fd, c, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -1;
    c += w;
    n -= (size_t)w;
  }
  return 0;
}

static int read_full(int fd, void *p, size_t n) {
  char *c = p;
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, c + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -1;
    if (r == 0) break;
    got += (size_t)r;
  }
  return (int)(got == n);
}

static int fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

static int mkdir_p1(const char *dir) {
  if (mkdir(dir, 0755) == 0 || errno == EEXIST) return 0;
  return -1;
}

/* snap-<lsn>.atps, 20 digits so that names sort as LSNs do. */
static void snap_name(char *out, size_t n, const char *dir, uint64_t lsn, bool tmp) {
  snprintf(out, n, "%s/%ssnap-%020" PRIu64 ".atps", dir, tmp ? ".tmp-" : "", lsn);
}

/* LSNs of the complete snapshot files in dir, newest first (at most max). */
static uint32_t list_snapshots(const char *dir, uint64_t *lsns, uint32_t max,
                               bool remove_tmp) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  uint32_t n = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    uint64_t lsn;
    char tail[8];
    if (remove_tmp && strncmp(de->d_name, ".tmp-snap-", 10) == 0) {
      char path[600];
      snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
      unlink(path); /* a snapshot a crash interrupted: never complete */
      continue;
    }
    if (sscanf(de->d_name, "snap-%20" SCNu64 ".%5s", &lsn, tail) != 2 ||
        strcmp(tail, "atps") != 0)
      continue;
    if (n < max) {
      lsns[n++] = lsn;
    } else {
      uint32_t low = 0; /* keep the newest max */
      for (uint32_t i = 1; i < n; i++)
        if (lsns[i] < lsns[low]) low = i;
      if (lsn > lsns[low]) lsns[low] = lsn;
    }
  }
  closedir(d);
  for (uint32_t i = 1; i < n; i++) /* insertion sort, descending */
    for (uint32_t j = i; j > 0 && lsns[j] > lsns[j - 1]; j--) {
      uint64_t t = lsns[j];
      lsns[j] = lsns[j - 1];
      lsns[j - 1] = t;
    }
  return n;
}

/* --- writing ------------------------------------------------------------------ */

typedef struct {
  const atp_snapshot_config_t *config;
  int fd;
  atp_buf_t chunk; /* the chunk's payload being filled */
  uint32_t entries;
  uint64_t offset; /* bytes written so far */
  uint64_t chunks;
  int rc;
  char *err;
  size_t err_len;
  const char *path;
  uint32_t magic; /* of the chunks being written: engine, then sections */
} writer_t;

static int flush_chunk(writer_t *w) {
  if (!w->entries) return 0;
  unsigned char frame[FRAME_BYTES];
  put32(frame, w->magic);
  put32(frame + 4, (uint32_t)w->chunk.len);
  put32(frame + 8, w->entries);
  put32(frame + 12, atp_crc32c(0, w->chunk.data, w->chunk.len));
  if (write_all(w->fd, frame, FRAME_BYTES) ||
      write_all(w->fd, w->chunk.data, w->chunk.len)) {
    char *err = w->err;
    size_t err_len = w->err_len;
    ERR("write %s: %s", w->path, strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  w->offset += FRAME_BYTES + w->chunk.len;
  w->chunks++;
  w->entries = 0;
  atp_buf_reset(&w->chunk);
  if (w->config->test_delay_ms) atp_sleep_ms(w->config->test_delay_ms);
  return 0;
}

static int on_export(void *ctx, const atp_change_t *records, uint32_t count) {
  writer_t *w = ctx;
  size_t at = w->chunk.len;
  unsigned char len[4] = {0};
  int rc = atp_buf_append(&w->chunk, len, 4);
  if (!rc) rc = atp_records_encode(&w->chunk, records, count);
  if (rc) {
    char *err = w->err;
    size_t err_len = w->err_len;
    ERR("encoding the snapshot: %s", atp_strerror(rc));
    return rc;
  }
  put32((unsigned char *)w->chunk.data + at, (uint32_t)(w->chunk.len - at - 4));
  w->entries++;
  if (w->chunk.len >= chunk_bytes(w->config)) return flush_chunk(w);
  return 0;
}

/* A section entry: u16 kind, u16 0, u32 length, the payload. */
static int on_section(void *ctx, uint16_t kind, const void *payload,
                      uint32_t payload_bytes) {
  writer_t *w = ctx;
  unsigned char head[8];
  head[0] = (unsigned char)kind;
  head[1] = (unsigned char)(kind >> 8);
  head[2] = head[3] = 0;
  put32(head + 4, payload_bytes);
  int rc = atp_buf_append(&w->chunk, head, 8);
  if (!rc && payload_bytes) rc = atp_buf_append(&w->chunk, payload, payload_bytes);
  if (rc) {
    char *err = w->err;
    size_t err_len = w->err_len;
    ERR("encoding the snapshot's sections: %s", atp_strerror(rc));
    return rc;
  }
  w->entries++;
  if (w->chunk.len >= chunk_bytes(w->config)) return flush_chunk(w);
  return 0;
}

static void remove_old(const atp_snapshot_config_t *config) {
  uint64_t lsns[64];
  uint32_t n = list_snapshots(config->dir, lsns, 64, false);
  for (uint32_t i = ATP_SNAPSHOT_GENERATIONS; i < n; i++) {
    char path[600];
    snap_name(path, sizeof path, config->dir, lsns[i], false);
    unlink(path);
  }
}

/* Writes the file's chunks, the engine's then the sections', then its trailer,
 * and last its header (the counts are known only then), and syncs it. */
static int write_contents(writer_t *w, atp_engine_t *engine,
                          atp_snapshot_info_t *info) {
  const atp_snapshot_config_t *config = w->config;
  char *err = w->err;
  size_t err_len = w->err_len;
  unsigned char head[HEADER_BYTES] = {0};
  if (write_all(w->fd, head, HEADER_BYTES)) { /* placeholder: counts come last */
    ERR("write %s: %s", w->path, strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  w->offset = HEADER_BYTES;
  int rc = atp_engine_export(engine, on_export, w, &info->counts);
  if (!rc) rc = flush_chunk(w);
  if (!rc && config->sections_export) {
    w->magic = SECTION_MAGIC;
    rc = config->sections_export(config->sections_ctx, on_section, w);
    if (!rc) rc = flush_chunk(w);
  }
  if (rc) return rc;
  unsigned char trailer[TRAILER_BYTES];
  trailer_encode(trailer, w->chunks, w->offset);
  info->chunks = w->chunks;
  info->bytes = w->offset + TRAILER_BYTES;
  header_encode(head, info);
  if (write_all(w->fd, trailer, TRAILER_BYTES) ||
      pwrite(w->fd, head, HEADER_BYTES, 0) != (ssize_t)HEADER_BYTES) {
    ERR("write %s: %s", w->path, strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  if (fsync(w->fd)) {
    ERR("fsync %s: %s", w->path, strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  return 0;
}

int atp_snapshot_write(const atp_snapshot_config_t *config, atp_engine_t *engine,
                       uint64_t lsn, atp_snapshot_settle_fn settle, void *settle_ctx,
                       atp_snapshot_info_t *info, char *err, size_t err_len) {
  int64_t started = atp_mono_ms();
  memset(info, 0, sizeof *info);
  info->lsn = lsn;
  info->created_at_ms = atp_wall_ms();
  info_id(info);
  char tmp[600];
  if (mkdir_p1(config->dir)) {
    ERR("mkdir %s: %s", config->dir, strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  uint64_t scratch[1];
  list_snapshots(config->dir, scratch, 1, true); /* drops stray temporaries */
  snap_name(tmp, sizeof tmp, config->dir, lsn, true);
  snap_name(info->path, sizeof info->path, config->dir, lsn, false);
  writer_t w = {.config = config,
                .err = err,
                .err_len = err_len,
                .path = tmp,
                .magic = CHUNK_MAGIC};
  atp_buf_init(&w.chunk, 0);
  w.fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (w.fd < 0) {
    ERR("open %s: %s", tmp, strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  int rc = write_contents(&w, engine, info);
  close(w.fd);
  atp_buf_free(&w.chunk);
  if (!rc && settle) rc = settle(settle_ctx);
  if (!rc && rename(tmp, info->path)) {
    ERR("rename %s: %s", tmp, strerror(errno));
    rc = ATP_EUNAVAILABLE;
  }
  if (!rc && fsync_dir(config->dir)) {
    ERR("fsync %s: %s", config->dir, strerror(errno));
    rc = ATP_EUNAVAILABLE;
  }
  if (rc) {
    unlink(tmp);
    return rc;
  }
  remove_old(config);
  info->duration_ms = atp_mono_ms() - started;
  return 0;
}

/* --- reading ------------------------------------------------------------------ */

/* Decodes and applies the entries of one chunk's payload (CRC checked). */
static int apply_chunk(atp_engine_t *engine, const unsigned char *p, uint32_t payload,
                       uint32_t entries, atp_records_t *recs, const char *path,
                       uint64_t index, uint64_t offset, char *err, size_t err_len) {
  uint32_t at = 0;
  int rc = 0;
  for (uint32_t i = 0; i < entries && !rc; i++) {
    uint32_t len = at + 4 <= payload ? get32(p + at) : UINT32_MAX;
    if (len > payload - at - 4 || atp_records_decode(p + at + 4, len, recs) != 0) {
      ERR("%s: chunk %" PRIu64 " entry %u does not decode (offset %" PRIu64 ")", path,
          index, i, offset + FRAME_BYTES + at);
      return ATP_EINTERNAL;
    }
    if ((rc = atp_engine_apply(engine, recs->records, recs->count)))
      ERR("%s: chunk %" PRIu64 " entry %u does not apply: %s", path, index, i,
          atp_strerror(rc));
    at += 4 + len;
  }
  if (!rc && at != payload) {
    ERR("%s: chunk %" PRIu64 " has trailing bytes", path, index);
    rc = ATP_EINTERNAL;
  }
  return rc;
}

/* Hands a section chunk's entries to section, in order. */
static int apply_sections(const char *path, uint64_t index, uint64_t offset,
                          const unsigned char *p, uint32_t payload, uint32_t entries,
                          atp_snapshot_section_fn section, void *section_ctx, char *err,
                          size_t err_len) {
  if (!section) {
    ERR("%s: chunk %" PRIu64 " holds module state this loader cannot take", path,
        index);
    return ATP_EINTERNAL;
  }
  uint32_t at = 0;
  for (uint32_t i = 0; i < entries; i++) {
    uint32_t len = at + 8 <= payload ? get32(p + at + 4) : UINT32_MAX;
    if (len > payload - at - 8) {
      ERR("%s: chunk %" PRIu64 " entry %u does not decode (offset %" PRIu64 ")", path,
          index, i, offset + FRAME_BYTES + at);
      return ATP_EINTERNAL;
    }
    uint16_t kind = (uint16_t)(p[at] | p[at + 1] << 8);
    int rc = section(section_ctx, kind, p + at + 8, len);
    if (rc) {
      ERR("%s: chunk %" PRIu64 " entry %u (kind %u) does not apply: %s", path, index, i,
          kind, atp_strerror(rc));
      return rc == ATP_ENOMEM ? rc : ATP_EINTERNAL;
    }
    at += 8 + len;
  }
  if (at != payload) {
    ERR("%s: chunk %" PRIu64 " has trailing bytes", path, index);
    return ATP_EINTERNAL;
  }
  return 0;
}

/* Called with each chunk's whole frame (header and payload), CRC checked. */
typedef int (*frame_fn)(void *ctx, uint64_t index, const unsigned char *frame,
                        size_t frame_bytes);

/* One file scan's state, shared by its steps. */
typedef struct {
  const char *path;
  int fd;
  atp_engine_t *engine;
  frame_fn fn;
  void *ctx;
  atp_snapshot_section_fn section;
  void *section_ctx;
  atp_snapshot_info_t *info;
  unsigned char *frame; /* the chunk being read: frame header and payload */
  size_t frame_cap;
  atp_records_t recs;
  char *err;
  size_t err_len;
} scan_t;

/* Reads and decodes the file's header into info. */
static int scan_header(scan_t *s) {
  char *err = s->err;
  size_t err_len = s->err_len;
  unsigned char head[HEADER_BYTES];
  int got = read_full(s->fd, head, HEADER_BYTES);
  if (got < 0) {
    ERR("read %s: %s", s->path, strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  if (!got) {
    ERR("%s: truncated header at offset 0", s->path);
    return ATP_EINTERNAL;
  }
  return header_decode(head, s->info, err, err_len, s->path);
}

/* Reads the rest of the trailer that fh begins and checks it against the
 * chunks read before it and the header. */
static int scan_trailer(scan_t *s, const unsigned char *fh, uint64_t index,
                        uint64_t offset) {
  char *err = s->err;
  size_t err_len = s->err_len;
  unsigned char t[TRAILER_BYTES];
  memcpy(t, fh, FRAME_BYTES);
  if (read_full(s->fd, t + FRAME_BYTES, TRAILER_BYTES - FRAME_BYTES) != 1 ||
      get32(t + 28) != atp_crc32c(0, t, 28) || get64(t + 8) != index ||
      get64(t + 8) != s->info->chunks || get64(t + 16) != offset ||
      offset + TRAILER_BYTES != s->info->bytes) {
    ERR("%s: bad trailer at offset %" PRIu64, s->path, offset);
    return ATP_EINTERNAL;
  }
  return 0;
}

/* Reads the chunk whose frame header is fh, checks its CRC and hands it to
 * fn and, with an engine, applies it. */
static int scan_chunk(scan_t *s, const unsigned char *fh, uint64_t index,
                      uint64_t offset) {
  char *err = s->err;
  size_t err_len = s->err_len;
  uint32_t payload = get32(fh + 4);
  bool is_section = get32(fh) == SECTION_MAGIC;
  if ((get32(fh) != CHUNK_MAGIC && !is_section) || payload > CHUNK_PAYLOAD_MAX) {
    ERR("%s: bad chunk frame at offset %" PRIu64, s->path, offset);
    return ATP_EINTERNAL;
  }
  if (FRAME_BYTES + payload > s->frame_cap) {
    unsigned char *n = atp_realloc(s->frame, FRAME_BYTES + payload);
    if (!n) return ATP_ENOMEM;
    s->frame = n;
    s->frame_cap = FRAME_BYTES + payload;
  }
  memcpy(s->frame, fh, FRAME_BYTES);
  int got = read_full(s->fd, s->frame + FRAME_BYTES, payload);
  if (got <= 0) {
    ERR("%s: chunk %" PRIu64 " truncated at offset %" PRIu64, s->path, index, offset);
    return got < 0 ? ATP_EUNAVAILABLE : ATP_EINTERNAL;
  }
  const unsigned char *p = s->frame + FRAME_BYTES;
  if (get32(fh + 12) != atp_crc32c(0, p, payload)) {
    ERR("%s: chunk %" PRIu64 " checksum mismatch at offset %" PRIu64, s->path, index,
        offset);
    return ATP_EINTERNAL;
  }
  int rc;
  if (s->fn && (rc = s->fn(s->ctx, index, s->frame, FRAME_BYTES + payload))) return rc;
  if (s->engine && is_section)
    return apply_sections(s->path, index, offset, p, payload, get32(fh + 8), s->section,
                          s->section_ctx, err, err_len);
  if (s->engine)
    return apply_chunk(s->engine, p, payload, get32(fh + 8), &s->recs, s->path, index,
                       offset, err, err_len);
  return 0;
}

/* Reads path: header, every chunk (CRC first), trailer. With entry_fn, each
 * entry of each chunk is decoded and applied to engine. */
static int scan_file(const char *path, atp_engine_t *engine, frame_fn fn, void *ctx,
                     atp_snapshot_section_fn section, void *section_ctx,
                     atp_snapshot_info_t *info, char *err, size_t err_len) {
  memset(info, 0, sizeof *info);
  snprintf(info->path, sizeof info->path, "%s", path);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    ERR("open %s: %s", path, strerror(errno));
    return errno == ENOENT ? ATP_ENOTFOUND : ATP_EUNAVAILABLE;
  }
  scan_t s = {.path = path,
              .fd = fd,
              .engine = engine,
              .fn = fn,
              .ctx = ctx,
              .section = section,
              .section_ctx = section_ctx,
              .info = info,
              .err = err,
              .err_len = err_len};
  atp_records_init(&s.recs);
  int rc = scan_header(&s);
  uint64_t offset = HEADER_BYTES, index = 0;
  while (!rc) {
    unsigned char fh[FRAME_BYTES];
    int got = read_full(fd, fh, FRAME_BYTES);
    if (got <= 0) {
      ERR("%s: truncated at offset %" PRIu64 " (no trailer)", path, offset);
      rc = got < 0 ? ATP_EUNAVAILABLE : ATP_EINTERNAL;
      break;
    }
    if (memcmp(fh, TRAILER_MAGIC, 8) == 0) {
      rc = scan_trailer(&s, fh, index, offset);
      break;
    }
    if ((rc = scan_chunk(&s, fh, index, offset))) break;
    offset += FRAME_BYTES + get32(fh + 4);
    index++;
  }
  atp_records_free(&s.recs);
  atp_free(s.frame);
  close(fd);
  return rc;
}

int atp_snapshot_find(const atp_snapshot_config_t *config, atp_snapshot_info_t *info,
                      char *err, size_t err_len) {
  uint64_t lsns[ATP_SNAPSHOT_GENERATIONS + 2];
  uint32_t n = list_snapshots(config->dir, lsns, ATP_SNAPSHOT_GENERATIONS + 2, true);
  if (err_len) err[0] = '\0';
  for (uint32_t i = 0; i < n; i++) {
    char path[600], why[512];
    snap_name(path, sizeof path, config->dir, lsns[i], false);
    if (scan_file(path, NULL, NULL, NULL, NULL, NULL, info, why, sizeof why) == 0)
      return 0;
    /* Named, then the older generation is tried: each kept one still has
     * the journal after it (atp_snapshot_trim_lsn). */
    size_t used = strlen(err);
    if (used < err_len)
      snprintf(err + used, err_len - used, "%s%s", used ? "; " : "", why);
  }
  return ATP_ENOTFOUND;
}

/* One pass: each chunk's CRC is checked before any of it is applied, but a
 * later chunk may still fail after earlier ones went in. Reading the file
 * twice (verify, then apply) cost a third of a large restore; the caller
 * discards a half-applied engine instead (snapshot.h). */
int atp_snapshot_load_sections(const char *path, atp_engine_t *engine,
                               atp_snapshot_section_fn section, void *section_ctx,
                               atp_snapshot_info_t *info, char *err, size_t err_len) {
  int64_t started = atp_mono_ms();
  int rc =
      scan_file(path, engine, NULL, NULL, section, section_ctx, info, err, err_len);
  info->duration_ms = atp_mono_ms() - started;
  return rc;
}

int atp_snapshot_load(const char *path, atp_engine_t *engine, atp_snapshot_info_t *info,
                      char *err, size_t err_len) {
  return atp_snapshot_load_sections(path, engine, NULL, NULL, info, err, err_len);
}

uint32_t atp_snapshot_list(const atp_snapshot_config_t *config, uint64_t *lsns,
                           uint32_t max) {
  return list_snapshots(config->dir, lsns, max, true);
}

void atp_snapshot_path(const atp_snapshot_config_t *config, uint64_t lsn, char *path,
                       size_t path_len) {
  snap_name(path, path_len, config->dir, lsn, false);
}

uint64_t atp_snapshot_trim_lsn(const atp_snapshot_config_t *config) {
  uint64_t lsns[ATP_SNAPSHOT_GENERATIONS];
  uint32_t n = list_snapshots(config->dir, lsns, ATP_SNAPSHOT_GENERATIONS, false);
  return n ? lsns[n - 1] : 0;
}

/* --- Redis ------------------------------------------------------------------- */

static const char *prefix(const atp_snapshot_config_t *c) {
  return c->redis_prefix ? c->redis_prefix : "atpd:";
}

static int redis_fail(redisContext *r, redisReply *reply, const char *what, char *err,
                      size_t err_len) {
  if (reply && reply->type == REDIS_REPLY_ERROR)
    ERR("redis %s: %s", what, reply->str);
  else
    ERR("redis %s: %s", what, r && r->err ? r->errstr : "unexpected reply");
  if (reply) freeReplyObject(reply);
  return ATP_EUNAVAILABLE;
}

static redisContext *redis_open(const atp_snapshot_config_t *c, char *err,
                                size_t err_len) {
  uint32_t ms = c->redis_timeout_ms ? c->redis_timeout_ms : ATP_SNAPSHOT_TIMEOUT_MS;
  struct timeval tv = {ms / 1000, (long)(ms % 1000) * 1000};
  redisContext *r = redisConnectWithTimeout(c->redis_host, c->redis_port, tv);
  if (!r || r->err) {
    ERR("redis connect %s:%d: %s", c->redis_host, c->redis_port,
        r ? r->errstr : "out of memory");
    if (r) redisFree(r);
    return NULL;
  }
  /* Every later read and write is bounded too: a stopped Redis times out. */
  if (redisSetTimeout(r, tv) != REDIS_OK) {
    ERR("redis timeout: %s", r->errstr);
    redisFree(r);
    return NULL;
  }
  if (c->redis_db) {
    redisReply *reply = redisCommand(r, "SELECT %d", c->redis_db);
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
      redis_fail(r, reply, "SELECT", err, err_len);
      redisFree(r);
      return NULL;
    }
    freeReplyObject(reply);
  }
  return r;
}

/* A command whose reply must be status OK or an integer. */
static int redis_ok(redisContext *r, redisReply *reply, const char *what, char *err,
                    size_t err_len) {
  if (!reply || reply->type == REDIS_REPLY_ERROR)
    return redis_fail(r, reply, what, err, err_len);
  freeReplyObject(reply);
  return 0;
}

typedef struct {
  redisContext *r;
  const atp_snapshot_config_t *config;
  const char *id;
  atp_buf_t manifest_chunks; /* per chunk: u32 frame bytes, u32 crc */
  char *err;
  size_t err_len;
} push_t;

static int push_frame(void *ctx, uint64_t index, const unsigned char *frame,
                      size_t frame_bytes) {
  push_t *p = ctx;
  char *err = p->err;
  size_t err_len = p->err_len;
  redisReply *reply = redisCommand(p->r, "SET %ssnap:%s:%" PRIu64 " %b",
                                   prefix(p->config), p->id, index, frame, frame_bytes);
  int rc = redis_ok(p->r, reply, "SET chunk", err, err_len);
  if (rc) return rc;
  unsigned char m[8];
  put32(m, (uint32_t)frame_bytes);
  put32(m + 4, atp_crc32c(0, frame, frame_bytes));
  if (atp_buf_append(&p->manifest_chunks, m, 8)) return ATP_ENOMEM;
  if (p->config->test_delay_ms) atp_sleep_ms(p->config->test_delay_ms);
  return 0;
}

static void redis_delete_snapshot(redisContext *r, const atp_snapshot_config_t *c,
                                  const char *id) {
  redisReply *m = redisCommand(r, "GET %ssnap:%s:manifest", prefix(c), id);
  uint64_t chunks = 0;
  if (m && m->type == REDIS_REPLY_STRING && m->len >= HEADER_BYTES)
    chunks = get64((const unsigned char *)m->str + 72);
  if (m) freeReplyObject(m);
  for (uint64_t i = 0; i < chunks; i++) {
    redisReply *d = redisCommand(r, "DEL %ssnap:%s:%" PRIu64, prefix(c), id, i);
    if (!d) return;
    freeReplyObject(d);
  }
  redisReply *d = redisCommand(r, "DEL %ssnap:%s:manifest", prefix(c), id);
  if (d) freeReplyObject(d);
}

/* Deletes every key of snapshot id (its chunks and a manifest, if any) by a
 * SCAN of its key pattern: a push that failed or died wrote chunks without
 * the manifest that counts them. 0 or ATP_EUNAVAILABLE. */
static int redis_delete_partial(redisContext *r, const atp_snapshot_config_t *c,
                                const char *id) {
  char cursor[32] = "0";
  do {
    redisReply *s =
        redisCommand(r, "SCAN %s MATCH %ssnap:%s:* COUNT 1000", cursor, prefix(c), id);
    if (!s || s->type != REDIS_REPLY_ARRAY || s->elements != 2 ||
        s->element[0]->type != REDIS_REPLY_STRING ||
        s->element[1]->type != REDIS_REPLY_ARRAY) {
      if (s) freeReplyObject(s);
      return ATP_EUNAVAILABLE;
    }
    snprintf(cursor, sizeof cursor, "%s", s->element[0]->str);
    redisReply *keys = s->element[1];
    for (size_t i = 0; i < keys->elements; i++) {
      if (keys->element[i]->type != REDIS_REPLY_STRING) continue;
      redisReply *d = redisCommand(r, "DEL %b", keys->element[i]->str,
                                   (size_t)keys->element[i]->len);
      if (!d) {
        freeReplyObject(s);
        return ATP_EUNAVAILABLE;
      }
      freeReplyObject(d);
    }
    freeReplyObject(s);
  } while (strcmp(cursor, "0") != 0);
  return 0;
}

/* Pushes under way are named in the set <prefix>pushing from before their
 * first chunk until they are listed: one that failed (Redis slow or down
 * mid-push) or died with atpd left chunks no manifest counts, and a retry
 * may push a newer snapshot instead, so this push deletes those leftovers
 * first. A member already listed in <prefix>snapshots completed (atpd died
 * between the list and the set) and only leaves the set. */
static int redis_clean_pushes(redisContext *r, const atp_snapshot_config_t *c,
                              const char *id, char *err, size_t err_len) {
  redisReply *m = redisCommand(r, "SMEMBERS %spushing", prefix(c));
  if (!m || m->type != REDIS_REPLY_ARRAY)
    return redis_fail(r, m, "SMEMBERS", err, err_len);
  redisReply *kept = redisCommand(r, "LRANGE %ssnapshots 0 -1", prefix(c));
  if (!kept || kept->type != REDIS_REPLY_ARRAY) {
    freeReplyObject(m);
    return redis_fail(r, kept, "LRANGE", err, err_len);
  }
  int rc = 0;
  for (size_t i = 0; i < m->elements && rc == 0; i++) {
    const redisReply *e = m->element[i];
    if (e->type != REDIS_REPLY_STRING || strcmp(e->str, id) == 0) continue;
    bool listed = false;
    for (size_t k = 0; k < kept->elements && !listed; k++)
      listed = kept->element[k]->type == REDIS_REPLY_STRING &&
               strcmp(kept->element[k]->str, e->str) == 0;
    if (!listed && redis_delete_partial(r, c, e->str) != 0) {
      ERR("redis: deleting the leftovers of the failed push of snapshot %s", e->str);
      rc = ATP_EUNAVAILABLE;
    } else {
      rc = redis_ok(r, redisCommand(r, "SREM %spushing %s", prefix(c), e->str), "SREM",
                    err, err_len);
    }
  }
  freeReplyObject(kept);
  freeReplyObject(m);
  return rc;
}

int atp_snapshot_push(const atp_snapshot_config_t *config,
                      const atp_snapshot_info_t *info, char *err, size_t err_len) {
  if (!config->redis_host || !*config->redis_host) return 0;
  redisContext *r = redis_open(config, err, err_len);
  if (!r) return ATP_EUNAVAILABLE;
  push_t p = {.r = r, .config = config, .id = info->id, .err = err, .err_len = err_len};
  atp_buf_init(&p.manifest_chunks, 0);
  atp_snapshot_info_t read;
  int rc = redis_ok(r, redisCommand(r, "SADD %spushing %s", prefix(config), info->id),
                    "SADD pushing", err, err_len);
  if (!rc) rc = redis_clean_pushes(r, config, info->id, err, err_len);
  if (!rc)
    rc = scan_file(info->path, NULL, push_frame, &p, NULL, NULL, &read, err, err_len);
  if (!rc && strcmp(read.id, info->id) != 0) {
    ERR("%s: holds snapshot %s, not %s", info->path, read.id, info->id);
    rc = ATP_EINTERNAL;
  }
  if (!rc) {
    /* The manifest: the file's header, each chunk's size and CRC, its trailer. */
    atp_buf_t m;
    atp_buf_init(&m, 0);
    unsigned char head[HEADER_BYTES], trailer[TRAILER_BYTES];
    header_encode(head, &read);
    trailer_encode(trailer, read.chunks, read.bytes - TRAILER_BYTES);
    if (atp_buf_append(&m, head, HEADER_BYTES) ||
        atp_buf_append(&m, p.manifest_chunks.data, p.manifest_chunks.len) ||
        atp_buf_append(&m, trailer, TRAILER_BYTES)) {
      rc = ATP_ENOMEM;
    } else {
      rc = redis_ok(r,
                    redisCommand(r, "SET %ssnap:%s:manifest %b", prefix(config),
                                 info->id, m.data, m.len),
                    "SET manifest", err, err_len);
    }
    atp_buf_free(&m);
  }
  /* Only now does the pointer name it: a reader never finds half a snapshot. */
  if (!rc)
    rc = redis_ok(r, redisCommand(r, "SET %slatest %s", prefix(config), info->id),
                  "SET latest", err, err_len);
  if (!rc)
    rc = redis_ok(r, redisCommand(r, "LPUSH %ssnapshots %s", prefix(config), info->id),
                  "LPUSH", err, err_len);
  if (!rc) {
    redisReply *old = redisCommand(r, "LRANGE %ssnapshots %d -1", prefix(config),
                                   ATP_SNAPSHOT_GENERATIONS);
    if (old && old->type == REDIS_REPLY_ARRAY)
      for (size_t i = 0; i < old->elements; i++)
        if (old->element[i]->type == REDIS_REPLY_STRING &&
            strcmp(old->element[i]->str, info->id) != 0)
          redis_delete_snapshot(r, config, old->element[i]->str);
    if (old) freeReplyObject(old);
    rc = redis_ok(r,
                  redisCommand(r, "LTRIM %ssnapshots 0 %d", prefix(config),
                               ATP_SNAPSHOT_GENERATIONS - 1),
                  "LTRIM", err, err_len);
  }
  if (!rc)
    rc = redis_ok(r, redisCommand(r, "SREM %spushing %s", prefix(config), info->id),
                  "SREM pushing", err, err_len);
  if (rc && rc != ATP_EUNAVAILABLE && rc != ATP_EINTERNAL) rc = ATP_EUNAVAILABLE;
  atp_buf_free(&p.manifest_chunks);
  redisFree(r);
  return rc;
}

/* One fetch's state, shared by its steps. */
typedef struct {
  const atp_snapshot_config_t *config;
  atp_engine_t *engine;
  atp_snapshot_info_t *info;
  redisContext *r;
  redisReply *latest; /* the pointer's reply: its str names the snapshot */
  redisReply *m;      /* the manifest's reply */
  const char *id;
  const unsigned char *mp; /* the manifest's bytes */
  size_t manifest_bytes;
  char where[128]; /* names the manifest in messages */
  char tmp[600];   /* the temporary file, once named */
  int fd;
  atp_records_t recs;
  char *err;
  size_t err_len;
} fetch_t;

/* Reads the latest pointer: which snapshot to fetch. */
static int fetch_latest(fetch_t *f) {
  char *err = f->err;
  size_t err_len = f->err_len;
  f->latest = redisCommand(f->r, "GET %slatest", prefix(f->config));
  if (!f->latest || f->latest->type == REDIS_REPLY_ERROR) {
    int rc = redis_fail(f->r, f->latest, "GET latest", err, err_len);
    f->latest = NULL;
    return rc;
  }
  if (f->latest->type != REDIS_REPLY_STRING) {
    ERR("redis: no snapshot under %slatest", prefix(f->config));
    return ATP_ENOTFOUND;
  }
  f->id = f->latest->str;
  return 0;
}

/* Reads the snapshot's manifest and checks its header and its size. */
static int fetch_manifest(fetch_t *f) {
  char *err = f->err;
  size_t err_len = f->err_len;
  f->m = redisCommand(f->r, "GET %ssnap:%s:manifest", prefix(f->config), f->id);
  if (f->m && f->m->type == REDIS_REPLY_NIL) {
    ERR("redis: snapshot %s has no manifest", f->id);
    return ATP_EINTERNAL;
  }
  if (!f->m || f->m->type != REDIS_REPLY_STRING) {
    int rc = redis_fail(f->r, f->m, "GET manifest", err, err_len);
    f->m = NULL;
    return rc;
  }
  f->mp = (const unsigned char *)f->m->str;
  f->manifest_bytes = f->m->len;
  snprintf(f->where, sizeof f->where, "redis snapshot %s manifest", f->id);
  int rc = 0;
  if (f->manifest_bytes < HEADER_BYTES + TRAILER_BYTES ||
      (rc = header_decode(f->mp, f->info, err, err_len, f->where))) {
    if (!rc) ERR("%s: too short", f->where);
    return ATP_EINTERNAL;
  }
  if (f->manifest_bytes != HEADER_BYTES + f->info->chunks * 8 + TRAILER_BYTES) {
    ERR("%s: %zu bytes for %" PRIu64 " chunks", f->where, f->manifest_bytes,
        f->info->chunks);
    return ATP_EINTERNAL;
  }
  return 0;
}

/* Creates the temporary file and writes the manifest's header to it. */
static int fetch_open(fetch_t *f) {
  char *err = f->err;
  size_t err_len = f->err_len;
  if (mkdir_p1(f->config->dir)) {
    ERR("mkdir %s: %s", f->config->dir, strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  snap_name(f->tmp, sizeof f->tmp, f->config->dir, f->info->lsn, true);
  snap_name(f->info->path, sizeof f->info->path, f->config->dir, f->info->lsn, false);
  f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (f->fd < 0 || write_all(f->fd, f->mp, HEADER_BYTES)) {
    ERR("write %s: %s", f->tmp, strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  return 0;
}

/* Asks for the chunks up to i + 1 not yet asked for, then takes chunk i's reply. */
static int fetch_reply(fetch_t *f, uint64_t i, uint64_t *asked, redisReply **out) {
  char *err = f->err;
  size_t err_len = f->err_len;
  while (*asked < f->info->chunks && *asked <= i + 1) {
    if (redisAppendCommand(f->r, "GET %ssnap:%s:%" PRIu64, prefix(f->config), f->id,
                           *asked) != REDIS_OK)
      return redis_fail(f->r, NULL, "GET chunk", err, err_len);
    (*asked)++;
  }
  redisReply *c = NULL;
  if (redisGetReply(f->r, (void **)&c) != REDIS_OK) c = NULL;
  if (c && c->type == REDIS_REPLY_STRING) {
    *out = c;
    return 0;
  }
  if (c && c->type == REDIS_REPLY_NIL) {
    ERR("redis snapshot %s: chunk %" PRIu64 " missing", f->id, i);
    freeReplyObject(c);
    return ATP_EINTERNAL;
  }
  return redis_fail(f->r, c, "GET chunk", err, err_len);
}

/* Checks a fetched chunk's own frame and applies its entries. */
static int fetch_apply(fetch_t *f, uint64_t i, uint64_t offset,
                       const unsigned char *frame, size_t len) {
  char *err = f->err;
  size_t err_len = f->err_len;
  uint32_t payload = len >= FRAME_BYTES ? get32(frame + 4) : 0;
  bool is_section = len >= FRAME_BYTES && get32(frame) == SECTION_MAGIC;
  if (len < FRAME_BYTES || (get32(frame) != CHUNK_MAGIC && !is_section) ||
      payload != len - FRAME_BYTES ||
      get32(frame + 12) != atp_crc32c(0, frame + FRAME_BYTES, payload)) {
    ERR("redis snapshot %s: chunk %" PRIu64 " has a bad frame", f->id, i);
    return ATP_EINTERNAL;
  }
  char label[128];
  snprintf(label, sizeof label, "redis snapshot %s", f->id);
  int rc;
  if (is_section)
    rc = apply_sections(label, i, offset, frame + FRAME_BYTES, payload,
                        get32(frame + 8), f->config->sections_replay,
                        f->config->sections_ctx, err, err_len);
  else
    rc = apply_chunk(f->engine, frame + FRAME_BYTES, payload, get32(frame + 8),
                     &f->recs, label, i, offset, err, err_len);
  return rc && rc != ATP_ENOMEM ? ATP_EINTERNAL : rc;
}

/* Checks chunk i against its manifest entry, appends it to the file and, with
 * an engine, applies it. */
static int fetch_take(fetch_t *f, uint64_t i, uint64_t offset, const redisReply *c) {
  char *err = f->err;
  size_t err_len = f->err_len;
  const unsigned char *entry = f->mp + HEADER_BYTES + i * 8;
  if (c->len != get32(entry) || atp_crc32c(0, c->str, c->len) != get32(entry + 4)) {
    ERR("redis snapshot %s: chunk %" PRIu64 " checksum mismatch", f->id, i);
    return ATP_EINTERNAL;
  }
  if (write_all(f->fd, c->str, c->len)) {
    ERR("write %s: %s", f->tmp, strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  /* Applied as it arrives, its own frame checked as a file's would be. */
  if (f->engine)
    return fetch_apply(f, i, offset, (const unsigned char *)c->str, c->len);
  return 0;
}

/* Fetches every chunk in order, each written and applied as it comes. */
static int fetch_chunks(fetch_t *f) {
  /* Two GETs in flight: the next chunk crosses the network while this one
   * is written and applied. */
  uint64_t asked = 0, offset = HEADER_BYTES;
  int rc = 0;
  for (uint64_t i = 0; i < f->info->chunks && !rc; i++) {
    redisReply *c = NULL;
    if ((rc = fetch_reply(f, i, &asked, &c))) break;
    rc = fetch_take(f, i, offset, c);
    offset += c->len;
    freeReplyObject(c);
    if (!rc && f->config->test_delay_ms) atp_sleep_ms(f->config->test_delay_ms);
  }
  return rc;
}

/* Checks the manifest's trailer, completes the file and renames it into place. */
static int fetch_publish(fetch_t *f) {
  char *err = f->err;
  size_t err_len = f->err_len;
  const unsigned char *t = f->mp + f->manifest_bytes - TRAILER_BYTES;
  if (memcmp(t, TRAILER_MAGIC, 8) != 0 || get32(t + 28) != atp_crc32c(0, t, 28) ||
      get64(t + 8) != f->info->chunks ||
      get64(t + 16) + TRAILER_BYTES != f->info->bytes) {
    ERR("%s: bad trailer", f->where);
    return ATP_EINTERNAL;
  }
  if (write_all(f->fd, t, TRAILER_BYTES) || fsync(f->fd)) {
    ERR("write %s: %s", f->tmp, strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  close(f->fd);
  f->fd = -1;
  /* Every chunk matched the manifest's CRC of its whole frame, which the
   * pusher took from a file it had verified, and the header's CRC held; the
   * frames' own CRCs are checked again by the load that follows, which
   * applies as it reads (a verify pass here cost a read of the whole file).
   * A file that then fails is removed by the caller. */
  if (rename(f->tmp, f->info->path) || fsync_dir(f->config->dir)) {
    ERR("rename %s: %s", f->tmp, strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  return 0;
}

int atp_snapshot_fetch(const atp_snapshot_config_t *config, atp_engine_t *engine,
                       atp_snapshot_info_t *info, char *err, size_t err_len) {
  int64_t started = atp_mono_ms();
  memset(info, 0, sizeof *info);
  if (!config->redis_host || !*config->redis_host) return ATP_ENOTFOUND;
  fetch_t f = {.config = config,
               .engine = engine,
               .info = info,
               .fd = -1,
               .err = err,
               .err_len = err_len};
  f.r = redis_open(config, err, err_len);
  if (!f.r) return ATP_EUNAVAILABLE;
  atp_records_init(&f.recs);
  int rc = fetch_latest(&f);
  if (!rc) rc = fetch_manifest(&f);
  if (!rc) rc = fetch_open(&f);
  if (!rc) rc = fetch_chunks(&f);
  if (!rc) rc = fetch_publish(&f);
  if (f.fd >= 0) close(f.fd);
  if (rc && f.tmp[0]) unlink(f.tmp);
  if (f.m) freeReplyObject(f.m);
  if (f.latest) freeReplyObject(f.latest);
  redisFree(f.r);
  atp_records_free(&f.recs);
  info->duration_ms = atp_mono_ms() - started;
  return rc;
}
