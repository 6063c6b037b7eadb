/* test_journal.c - unit tests of the journal (src/store/journal*.c) and its
 * CRC-32C: records read back across reopen and segments, group commit from
 * several threads, torn tails cut and mid-journal corruption refused with the
 * file and offset, trim, the test fsync delay, and write, fdatasync and
 * disk-full failures recovered from with the journal intact.
 *
 * Every test works in its own directory under /tmp; the disk-full test mounts
 * a 1 MiB tmpfs (root only; it says so and passes when it cannot).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "atp/crc32c.h"
#include "atp/journal.h"
#include "test.h"

/* --- helpers ---------------------------------------------------------------- */

static char *make_dir(char *buf) {
  strcpy(buf, "/tmp/atpj-XXXXXX");
  return mkdtemp(buf);
}

static void remove_dir(const char *dir) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "  could not remove %s\n", dir);
}

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

/* The records a scan handed out. */
typedef struct {
  uint32_t count;
  uint64_t lsn[4096];
  uint16_t kind[4096];
  uint32_t bytes[4096];
  unsigned char first[4096]; /* first payload byte, or 0 */
  uint32_t sum[4096];        /* of all payload bytes */
  int out_of_order;
} collected_t;

static collected_t got;

static int collect(void *ctx, uint64_t lsn, uint16_t kind, const void *payload,
                   uint32_t bytes) {
  collected_t *c = ctx;
  if (c->count && lsn != c->lsn[c->count - 1] + 1) c->out_of_order = 1;
  if (c->count == 4096) return ATP_EFULL;
  const unsigned char *p = payload;
  uint32_t sum = 0;
  for (uint32_t i = 0; i < bytes; i++) sum += p[i];
  c->lsn[c->count] = lsn;
  c->kind[c->count] = kind;
  c->bytes[c->count] = bytes;
  c->first[c->count] = bytes ? p[0] : 0;
  c->sum[c->count] = sum;
  c->count++;
  return 0;
}

static atp_journal_config_t config_for(const char *dir, atp_journal_mode_t mode) {
  atp_journal_config_t c;
  memset(&c, 0, sizeof c);
  c.dir = dir;
  c.mode = mode;
  return c;
}

static atp_journal_t *open_or_null(const atp_journal_config_t *c, uint64_t covered,
                                   atp_journal_scan_t *scan) {
  atp_journal_t *j = NULL;
  memset(&got, 0, sizeof got);
  int rc = atp_journal_open(c, covered, collect, &got, scan, &j);
  if (rc) fprintf(stderr, "  open: %d %s\n", rc, scan->error);
  return rc ? NULL : j;
}

/* A payload of len bytes all equal to fill. */
static uint64_t append_fill(atp_journal_t *j, uint16_t kind, unsigned char fill,
                            uint32_t len) {
  static unsigned char buf[65536];
  memset(buf, fill, len);
  uint64_t lsn = 0;
  int rc = atp_journal_append(j, kind, buf, len, &lsn);
  return rc ? 0 : lsn;
}

/* Appends n records of len bytes, each waited durable (its own group). */
static int append_each_durable(atp_journal_t *j, int n, uint32_t len) {
  for (int i = 0; i < n; i++) {
    uint64_t lsn = append_fill(j, 1, (unsigned char)(i + 1), len);
    if (!lsn || atp_journal_wait(j, lsn, 5000) != 0) return -1;
  }
  return 0;
}

/* The path of the segment that starts at first_lsn. */
static void seg_path(char *out, size_t cap, const char *dir, uint64_t first_lsn) {
  snprintf(out, cap, "%s/%020" PRIu64 ".journal", dir, first_lsn);
}

static long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* The file's length without the zeroes at its end: its data end while the
 * writer may be zero-filling ahead of it (the records end in nonzero bytes). */
static long data_size(const char *path) {
  long n = file_size(path);
  int fd = open(path, O_RDONLY);
  if (n < 0 || fd < 0) abort();
  unsigned char buf[4096];
  while (n > 0) {
    long from = n > (long)sizeof buf ? n - (long)sizeof buf : 0;
    if (pread(fd, buf, (size_t)(n - from), from) != n - from) abort();
    long i = n - from;
    while (i > 0 && buf[i - 1] == 0) i--;
    if (i > 0) {
      n = from + i;
      break;
    }
    n = from;
  }
  close(fd);
  return n;
}

static int count_segments(const char *dir) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *de;
  while (d && (de = readdir(d)))
    if (strstr(de->d_name, ".journal") && !strstr(de->d_name, ".tmp")) n++;
  if (d) closedir(d);
  return n;
}

static void xor_byte(const char *path, long off, unsigned char mask) {
  int fd = open(path, O_RDWR);
  unsigned char b = 0;
  if (fd < 0 || pread(fd, &b, 1, off) != 1) abort();
  b ^= mask;
  if (pwrite(fd, &b, 1, off) != 1) abort();
  close(fd);
}

static void append_bytes(const char *path, const void *data, size_t len) {
  int fd = open(path, O_WRONLY | O_APPEND);
  if (fd < 0 || write(fd, data, len) != (ssize_t)len) abort();
  close(fd);
}

#define HEADER 64 /* segment header bytes, proto/journal.md */
#define FRAME  24 /* record frame header bytes */

/* --- CRC-32C ---------------------------------------------------------------- */

static void test_crc32c_vectors(void) {
  CHECK_EQ(atp_crc32c(0, "123456789", 9), 0xE3069283u);
  CHECK_EQ(atp_crc32c_sw(0, "123456789", 9), 0xE3069283u);
  unsigned char zeros[32] = {0}, ones[32];
  memset(ones, 0xff, sizeof ones);
  CHECK_EQ(atp_crc32c(0, zeros, 32), 0x8A9136AAu); /* RFC 3720 B.4 */
  CHECK_EQ(atp_crc32c_sw(0, ones, 32), 0x62A8AB43u);
  CHECK_EQ(atp_crc32c(0, NULL, 0), 0u);
  printf("  crc32c uses %s\n", atp_crc32c_hw() ? "the SSE4.2 instruction" : "tables");
}

static void test_crc32c_hw_matches_tables(void) {
  static unsigned char data[1024 + 8];
  uint32_t x = 12345;
  for (size_t i = 0; i < sizeof data; i++)
    data[i] = (unsigned char)((x = x * 1103515245u + 12345u) >> 16);
  for (size_t off = 0; off < 8; off++)
    for (size_t len = 0; len <= 1024; len += (len < 64 ? 1 : 37)) {
      uint32_t a = atp_crc32c(0, data + off, len),
               b = atp_crc32c_sw(0, data + off, len);
      CHECK_EQ(a, b);
      size_t cut = len / 3; /* continued in two pieces: the same value */
      CHECK_EQ(atp_crc32c(atp_crc32c(0, data + off, cut), data + off + cut, len - cut),
               a);
    }
}

/* --- append, reopen, read back ---------------------------------------------- */

static void test_append_reopen_read_back(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_BATCH);
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  CHECK_EQ(scan.records, 0);
  CHECK_EQ(scan.next_lsn, 1);
  uint64_t last = 0;
  for (int i = 0; i < 100; i++) {
    last = append_fill(j, (uint16_t)(i % 5 + 1), (unsigned char)i, (uint32_t)(i * 7));
    CHECK_EQ(last, (uint64_t)i + 1);
  }
  CHECK_EQ(atp_journal_assigned_lsn(j), 100);
  CHECK_EQ(atp_journal_wait(j, last, 5000), 0);
  CHECK(atp_journal_durable_lsn(j) >= 100);
  CHECK_EQ(atp_journal_close(j), 0);

  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 100);
  CHECK_EQ(got.out_of_order, 0);
  for (uint32_t i = 0; i < got.count; i++) {
    CHECK_EQ(got.lsn[i], i + 1);
    CHECK_EQ(got.kind[i], i % 5 + 1);
    CHECK_EQ(got.bytes[i], i * 7);
    CHECK_EQ(got.sum[i], (uint32_t)(i * 7) * (unsigned char)i);
  }
  CHECK_EQ(scan.tail_bytes, 0);
  /* LSNs go on after a reopen. */
  CHECK_EQ(append_fill(j, 9, 1, 3), 101);
  CHECK_EQ(atp_journal_close(j), 0);

  /* Read-only, from a snapshot at LSN 60: 41 records replayed. */
  memset(&got, 0, sizeof got);
  CHECK_EQ(atp_journal_read(dir, 60, collect, &got, &scan), 0);
  CHECK_EQ(got.count, 41);
  CHECK_EQ(got.lsn[0], 61);
  CHECK_EQ(got.kind[40], 9);
  CHECK_EQ(scan.records, 101);
  CHECK_EQ(scan.first_lsn, 1);
  CHECK_EQ(scan.last_lsn, 101);
  remove_dir(dir);
}

/* An empty payload and appendv's gathering are records like any other. */
static void test_appendv_and_empty(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_ALWAYS);
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  uint64_t lsn = 0;
  CHECK_EQ(atp_journal_append(j, 3, NULL, 0, &lsn), 0);
  struct iovec iov[3] = {{"ab", 2}, {"", 0}, {"cde", 3}};
  CHECK_EQ(atp_journal_appendv(j, 4, iov, 3, &lsn), 0);
  CHECK_EQ(lsn, 2);
  CHECK_EQ(atp_journal_append(j, 4, "x", ATP_JOURNAL_RECORD_BYTES_MAX + 1, &lsn),
           ATP_ETOOLARGE);
  CHECK_EQ(atp_journal_close(j), 0);
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 2);
  CHECK_EQ(got.bytes[0], 0);
  CHECK_EQ(got.bytes[1], 5);
  CHECK_EQ(got.first[1], 'a');
  CHECK_EQ(got.sum[1], 'a' + 'b' + 'c' + 'd' + 'e');
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* Every mode makes a record durable by itself; none within its ~10 ms. */
static void test_modes_flush_by_themselves(void) {
  atp_journal_mode_t modes[] = {ATP_JOURNAL_NONE, ATP_JOURNAL_BATCH,
                                ATP_JOURNAL_ALWAYS};
  for (int m = 0; m < 3; m++) {
    char dir[64];
    REQUIRE(make_dir(dir));
    atp_journal_config_t c = config_for(dir, modes[m]);
    atp_journal_scan_t scan;
    atp_journal_t *j = open_or_null(&c, 0, &scan);
    REQUIRE(j);
    int64_t start = now_ms();
    uint64_t lsn = append_fill(j, 1, 7, 100);
    while (atp_journal_durable_lsn(j) < lsn && now_ms() - start < 2000) sleep_ms(1);
    CHECK_EQ(atp_journal_durable_lsn(j), lsn);
    CHECK(now_ms() - start < 500);
    CHECK_EQ(atp_journal_state(j), ATP_JOURNAL_OK);
    CHECK_EQ(atp_journal_close(j), 0);
    remove_dir(dir);
  }
}

/* --- group commit ------------------------------------------------------------- */

#define THREADS    4
#define PER_THREAD 1000
static atomic_uint_fast64_t durable_seen;
static atomic_int durable_backwards;
static atomic_int durable_calls;

static void on_durable(void *ctx, uint64_t lsn) {
  (void)ctx;
  uint64_t before = atomic_exchange(&durable_seen, lsn);
  if (lsn <= before) atomic_store(&durable_backwards, 1);
  atomic_fetch_add(&durable_calls, 1);
}

typedef struct {
  atp_journal_t *j;
  int thread;
  int pause_us;
  uint64_t last_lsn;
  int errors;
} producer_t;

static void sleep_us(int us) {
  struct timespec ts = {0, (long)us * 1000};
  nanosleep(&ts, NULL);
}

static void *produce(void *arg) {
  producer_t *p = arg;
  for (int i = 0; i < PER_THREAD; i++) {
    unsigned char payload[8] = {(unsigned char)p->thread};
    memcpy(payload + 4, &i, 4);
    uint64_t lsn;
    if (atp_journal_admit(p->j) != 0 ||
        atp_journal_append(p->j, 7, payload, 8, &lsn) != 0) {
      p->errors++;
      continue;
    }
    if (lsn <= p->last_lsn) p->errors++; /* one thread's LSNs rise */
    p->last_lsn = lsn;
    /* Pauses, so that appends race with the writer's groups. */
    if (i % 50 == 0) sleep_us(p->pause_us);
  }
  return NULL;
}

/* Per-thread order of the payloads read back. */
static int thread_seq[THREADS];
static int order_errors;
static int check_order(void *ctx, uint64_t lsn, uint16_t kind, const void *payload,
                       uint32_t bytes) {
  const unsigned char *p = payload;
  int seq;
  memcpy(&seq, p + 4, 4);
  if (bytes != 8 || kind != 7 || p[0] >= THREADS || seq != thread_seq[p[0]]++)
    order_errors++;
  (*(uint64_t *)ctx)++;
  return 0;
}

static void check_group_commit(atp_journal_mode_t mode) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, mode);
  c.on_durable = on_durable;
  atomic_store(&durable_seen, 0);
  atomic_store(&durable_backwards, 0);
  atomic_store(&durable_calls, 0);
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  pthread_t t[THREADS];
  producer_t p[THREADS];
  for (int i = 0; i < THREADS; i++) {
    p[i] = (producer_t){j, i, 200, 0, 0};
    pthread_create(&t[i], NULL, produce, &p[i]);
  }
  for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < THREADS; i++) CHECK_EQ(p[i].errors, 0);
  uint64_t total = THREADS * PER_THREAD;
  CHECK_EQ(atp_journal_assigned_lsn(j), total);
  CHECK_EQ(atp_journal_wait(j, total, 5000), 0);
  CHECK_EQ(atomic_load(&durable_seen), total);
  CHECK_EQ(atomic_load(&durable_backwards), 0);
  atp_journal_metrics_t m;
  atp_journal_metrics(j, &m);
  CHECK_EQ(m.records_written, total);
  CHECK_EQ(m.group_records_sum, total);
  CHECK_EQ(m.bytes_written, total * (FRAME + 8));
  CHECK_EQ(m.queued_bytes, 0);
  CHECK_EQ(m.groups, (uint64_t)atomic_load(&durable_calls));
  /* Group commit happened: far fewer fdatasyncs than records, yet the
   * writer ran while the producers did. */
  CHECK(m.groups < total / 4);
  CHECK(m.groups > 1);
  uint64_t hist = 0;
  for (int i = 0; i < ATP_JOURNAL_GROUP_BUCKETS; i++) hist += m.group_hist[i];
  CHECK_EQ(hist, m.groups);
  hist = 0;
  for (int i = 0; i < ATP_JOURNAL_FSYNC_BUCKETS; i++) hist += m.fsync_hist[i];
  CHECK_EQ(hist, m.fsyncs);
  printf("  %" PRIu64 " records in %" PRIu64 " groups, %" PRIu64
         " fsyncs, mean %.0f us\n",
         total, m.groups, m.fsyncs,
         m.fsyncs ? (double)m.fsync_ns_sum / m.fsyncs / 1000 : 0);
  CHECK_EQ(atp_journal_close(j), 0);

  memset(thread_seq, 0, sizeof thread_seq);
  order_errors = 0;
  uint64_t n = 0;
  CHECK_EQ(atp_journal_read(dir, 0, check_order, &n, &scan), 0);
  CHECK_EQ(n, total);
  CHECK_EQ(order_errors, 0);
  for (int i = 0; i < THREADS; i++) CHECK_EQ(thread_seq[i], PER_THREAD);
  remove_dir(dir);
}

static void test_group_commit_threads_batch(void) {
  check_group_commit(ATP_JOURNAL_BATCH);
}
static void test_group_commit_threads_always(void) {
  check_group_commit(ATP_JOURNAL_ALWAYS);
}

/* --- torn tails and corruption ------------------------------------------------ */

/* Ten records, each its own group, in one segment; returns the path. */
static atp_journal_t *ten_records(char *dir, char *path, size_t cap) {
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_ALWAYS);
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  if (!j || append_each_durable(j, 10, 40) != 0) return NULL;
  seg_path(path, cap, dir, 1);
  return j;
}

static void test_torn_tail_cut(void) {
  char dir[64], path[600];
  REQUIRE(make_dir(dir));
  atp_journal_t *j = ten_records(dir, path, sizeof path);
  REQUIRE(j);
  CHECK_EQ(atp_journal_close(j), 0);
  long good = file_size(path);
  CHECK_EQ(good, HEADER + 10 * (FRAME + 40));
  /* A frame header that promises more than is there, as a crash leaves it. */
  unsigned char partial[FRAME + 10] = {0x11, 0x22, 0x33, 0x44, 40};
  partial[8] = 11; /* LSN 11 */
  append_bytes(path, partial, sizeof partial);

  memset(&got, 0, sizeof got);
  atp_journal_scan_t scan;
  CHECK_EQ(atp_journal_read(dir, 0, collect, &got, &scan),
           0); /* reports, cuts nothing */
  CHECK_EQ(scan.tail_bytes, sizeof partial);
  CHECK_EQ(file_size(path), good + (long)sizeof partial);

  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_ALWAYS);
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 10);
  CHECK_EQ(scan.tail_bytes, sizeof partial);
  CHECK_EQ(scan.tail_records, 1);
  CHECK_EQ(scan.tail_offset, (uint64_t)good);
  CHECK(strstr(scan.tail_file, "00000000000000000001.journal") != NULL);
  CHECK_EQ(data_size(path), good); /* the writer may be zero-filling already */
  atp_journal_metrics_t m;
  atp_journal_metrics(j, &m);
  CHECK_EQ(m.tail_bytes_truncated, sizeof partial);
  CHECK_EQ(m.tail_records_truncated, 1);
  /* The next record takes the place of the torn one. */
  uint64_t lsn = append_fill(j, 2, 9, 5);
  CHECK_EQ(lsn, 11);
  CHECK_EQ(atp_journal_wait(j, lsn, 5000), 0);
  CHECK_EQ(atp_journal_close(j), 0);

  /* A zeroed tail (zero-filled space ahead of the writer, or a size that
   * grew while the data never came) is a clean end: nothing cut or reported,
   * the next record goes over it and a clean close cuts the zeroes. */
  long end11 = file_size(path);
  unsigned char zeros[4096] = {0};
  append_bytes(path, zeros, sizeof zeros);
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 11);
  CHECK_EQ(got.kind[10], 2);
  CHECK_EQ(scan.tail_bytes, 0);
  CHECK_EQ(scan.tail_file[0], 0);
  CHECK_EQ(append_fill(j, 2, 7, 5), 12);
  CHECK_EQ(atp_journal_wait(j, 12, 5000), 0);
  CHECK_EQ(atp_journal_close(j), 0);
  CHECK_EQ(file_size(path), end11 + FRAME + 5);
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(scan.tail_bytes, 0);
  CHECK_EQ(got.count, 12);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* --- zero-filled space ahead of the writer ----------------------------------- */

static void copy_file(const char *from, const char *to) {
  int in = open(from, O_RDONLY), out = open(to, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  static char buf[1 << 16];
  ssize_t n;
  if (in < 0 || out < 0) abort();
  while ((n = read(in, buf, sizeof buf)) > 0)
    if (write(out, buf, (size_t)n) != n) abort();
  close(in);
  close(out);
}

static void write_at(const char *path, long off, const void *data, size_t len) {
  int fd = open(path, O_WRONLY);
  if (fd < 0 || pwrite(fd, data, len, off) != (ssize_t)len) abort();
  close(fd);
}

/* Ten records of their own groups, then what the disk holds while the
 * journal is open (as a crash leaves it): copied into dir2 once the writer
 * has zero-filled ahead. */
static int crash_image_with_zeroes(const char *dir, const char *dir2, char *path,
                                   size_t cap) {
  char live[600];
  atp_journal_t *j = ten_records((char *)dir, live, sizeof live);
  if (!j) return -1;
  atp_journal_metrics_t m;
  int64_t start = now_ms();
  do {
    sleep_ms(5);
    atp_journal_metrics(j, &m);
  } while (m.prealloc_bytes < (4u << 20) && now_ms() - start < 5000);
  CHECK(m.prealloc_bytes >= (4u << 20)); /* the idle fill is over */
  CHECK_EQ(m.prealloc_failures, 0);
  CHECK(file_size(live) >= (long)(2u << 20)); /* zeroes past the records */
  seg_path(path, cap, dir2, 1);
  copy_file(live, path);
  CHECK_EQ(atp_journal_close(j), 0);
  CHECK_EQ(file_size(live), HEADER + 10 * (FRAME + 40)); /* cut at close */
  return 0;
}

/* Zeroes after the last record: a clean end, read and reopened with every
 * record once, the zeroes reused and cut at close. */
static void test_zero_end_is_clean(void) {
  char dir[64], dir2[64], path[600];
  REQUIRE(make_dir(dir));
  REQUIRE(make_dir(dir2));
  REQUIRE(crash_image_with_zeroes(dir, dir2, path, sizeof path) == 0);
  long zeroed = file_size(path), data = HEADER + 10 * (FRAME + 40);
  memset(&got, 0, sizeof got);
  atp_journal_scan_t scan;
  CHECK_EQ(atp_journal_read(dir2, 0, collect, &got, &scan), 0);
  CHECK_EQ(got.count, 10);
  CHECK_EQ(scan.tail_bytes, 0);
  CHECK_EQ(scan.tail_records, 0);
  CHECK_EQ(scan.next_lsn, 11);
  atp_journal_config_t c = config_for(dir2, ATP_JOURNAL_ALWAYS);
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  CHECK_EQ(got.count, 10);
  CHECK_EQ(got.out_of_order, 0);
  CHECK_EQ(scan.tail_bytes, 0);
  CHECK_EQ(file_size(path), zeroed); /* nothing cut at open */
  CHECK_EQ(append_each_durable(j, 5, 40), 0);
  CHECK_EQ(file_size(path), zeroed); /* written over the zeroes */
  CHECK_EQ(atp_journal_close(j), 0);
  CHECK_EQ(file_size(path), data + 5 * (FRAME + 40));
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 15);
  CHECK_EQ(got.out_of_order, 0);
  for (uint32_t i = 0; i < got.count; i++) CHECK_EQ(got.lsn[i], i + 1);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
  remove_dir(dir2);
}

/* A partial frame followed by zeroes is a torn tail, cut with the zeroes. */
static void test_partial_frame_then_zeroes_is_torn(void) {
  char dir[64], dir2[64], path[600];
  REQUIRE(make_dir(dir));
  REQUIRE(make_dir(dir2));
  REQUIRE(crash_image_with_zeroes(dir, dir2, path, sizeof path) == 0);
  long zeroed = file_size(path), data = HEADER + 10 * (FRAME + 40);
  unsigned char partial[FRAME + 10] = {0x11, 0x22, 0x33, 0x44, 40};
  partial[8] = 11; /* LSN 11, its payload never came: zeroes */
  write_at(path, data, partial, sizeof partial);
  atp_journal_config_t c = config_for(dir2, ATP_JOURNAL_ALWAYS);
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  CHECK_EQ(got.count, 10);
  CHECK_EQ(scan.tail_offset, (uint64_t)data);
  CHECK_EQ(scan.tail_bytes, (uint64_t)(zeroed - data));
  CHECK_EQ(scan.tail_records, 1);
  CHECK_EQ(append_fill(j, 1, 1, 40), 11);
  CHECK_EQ(atp_journal_wait(j, 11, 5000), 0);
  CHECK_EQ(atp_journal_close(j), 0);
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 11);
  CHECK_EQ(scan.tail_bytes, 0);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
  remove_dir(dir2);
}

/* A zero frame header with nonzero bytes after it is a bad frame like any
 * other: a torn tail when only its own group follows (the last record's
 * header zeroed, its payload there), corruption when an intact later group
 * does (a middle record's header zeroed). */
static void test_zero_header_then_garbage(void) {
  char dir[64], dir2[64], path[600];
  REQUIRE(make_dir(dir));
  REQUIRE(make_dir(dir2));
  REQUIRE(crash_image_with_zeroes(dir, dir2, path, sizeof path) == 0);
  long zeroed = file_size(path), rec10 = HEADER + 9 * (FRAME + 40);
  unsigned char zero[FRAME] = {0};
  write_at(path, rec10, zero, sizeof zero);
  memset(&got, 0, sizeof got);
  atp_journal_scan_t scan;
  CHECK_EQ(atp_journal_read(dir2, 0, collect, &got, &scan), 0);
  CHECK_EQ(got.count, 9);
  CHECK_EQ(scan.tail_offset, (uint64_t)rec10);
  CHECK_EQ(scan.tail_bytes, (uint64_t)(zeroed - rec10));
  CHECK_EQ(scan.tail_records, 1);

  long rec5 = HEADER + 4 * (FRAME + 40);
  write_at(path, rec5, zero, sizeof zero);
  CHECK_EQ(atp_journal_read(dir2, 0, NULL, NULL, &scan), ATP_EINTERNAL);
  CHECK(strstr(scan.error,
               "at offset 320: bad record (LSN 5 expected) before an "
               "intact later group at offset 384") != NULL);
  atp_journal_config_t c = config_for(dir2, ATP_JOURNAL_ALWAYS);
  atp_journal_t *j = NULL;
  CHECK_EQ(atp_journal_open(&c, 0, NULL, NULL, &scan, &j), ATP_EINTERNAL);
  CHECK_EQ(file_size(path), zeroed); /* nothing cut */
  remove_dir(dir);
  remove_dir(dir2);
}

/* Enough records to cross several zero-fill steps and segment rolls: closed
 * segments hold their records only, and every record reopens once. */
static void test_prealloc_rolls_and_reopens(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_BATCH);
  c.segment_bytes_max = 3u << 20;
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  uint64_t lsn = 0;
  for (int i = 0; i < 4000; i++) {
    lsn = append_fill(j, 1, (unsigned char)i, 2000);
    if (i % 50 == 49) CHECK_EQ(atp_journal_wait(j, lsn, 5000), 0);
  }
  CHECK_EQ(atp_journal_wait(j, lsn, 5000), 0);
  atp_journal_metrics_t m;
  atp_journal_metrics(j, &m);
  CHECK(m.prealloc_steps >= 3);
  CHECK_EQ(m.prealloc_failures, 0);
  CHECK_EQ(count_segments(dir), 3);
  /* 1554 records of 2024 bytes fit in 3 MiB after the header. */
  char path[600];
  seg_path(path, sizeof path, dir, 1);
  CHECK_EQ(file_size(path), HEADER + 1554 * (FRAME + 2000));
  seg_path(path, sizeof path, dir, 1555);
  CHECK_EQ(file_size(path), HEADER + 1554 * (FRAME + 2000));
  CHECK_EQ(atp_journal_close(j), 0);
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 4000);
  CHECK_EQ(got.out_of_order, 0);
  CHECK_EQ(scan.tail_bytes, 0);
  for (uint32_t i = 0; i < got.count; i++) {
    CHECK_EQ(got.lsn[i], i + 1);
    CHECK_EQ(got.first[i], (unsigned char)i);
  }
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* A bad record followed by a record of a later group is corruption of data
 * that was durable: the open stops and names the file and offset. */
static void test_flipped_bit_stops_with_offset(void) {
  char dir[64], path[600];
  REQUIRE(make_dir(dir));
  atp_journal_t *j = ten_records(dir, path, sizeof path);
  REQUIRE(j);
  CHECK_EQ(atp_journal_close(j), 0);
  long record5 = HEADER + 4 * (FRAME + 40);
  xor_byte(path, record5 + FRAME + 17, 0x08); /* one payload bit of LSN 5 */

  atp_journal_scan_t scan;
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_ALWAYS);
  atp_journal_t *j2 = NULL;
  memset(&got, 0, sizeof got);
  CHECK_EQ(atp_journal_open(&c, 0, collect, &got, &scan, &j2), ATP_EINTERNAL);
  CHECK(j2 == NULL);
  char want[128];
  snprintf(want, sizeof want, "00000000000000000001.journal at offset %ld", record5);
  CHECK(strstr(scan.error, want) != NULL);
  CHECK(strstr(scan.error, "LSN 5") != NULL);
  fprintf(stderr, "  (expected) %s\n", scan.error);
  CHECK_EQ(file_size(path), HEADER + 10 * (FRAME + 40)); /* nothing cut */
  CHECK_EQ(atp_journal_read(dir, 0, NULL, NULL, &scan), ATP_EINTERNAL);
  /* Flipped back, all is well again. */
  xor_byte(path, record5 + FRAME + 17, 0x08);
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 10);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* Within the last group, a bad record with intact ones of its own group after
 * it is a torn write (pages reach the disk in any order): all cut. */
/* Writes LSN 1 as a group of its own, then LSNs 2..6 as one group: batch
 * mode with a long gathering window holds the five together. */
static atp_journal_t *two_groups(const char *dir) {
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_BATCH);
  c.batch_delay_us = 300000;
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  if (!j) return NULL;
  append_fill(j, 1, 1, 40);
  if (atp_journal_wait(j, 1, 5000) != 0) return NULL;
  for (int i = 0; i < 5; i++) append_fill(j, 1, (unsigned char)(i + 2), 40);
  if (atp_journal_wait(j, 6, 5000) != 0) return NULL;
  atp_journal_metrics_t m;
  atp_journal_metrics(j, &m);
  CHECK_EQ(m.groups, 2);
  return j;
}

/* Within the last group, a bad record with intact ones of its own group after
 * it is a torn write (pages reach the disk in any order): all cut. */
static void test_bad_record_in_last_group_is_tail(void) {
  char dir[64], path[600];
  REQUIRE(make_dir(dir));
  atp_journal_t *j = two_groups(dir);
  REQUIRE(j);
  CHECK_EQ(atp_journal_close(j), 0);
  seg_path(path, sizeof path, dir, 1);
  long record2 = HEADER + (FRAME + 40);
  xor_byte(path, record2 + FRAME + 3, 0x01);
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_ALWAYS);
  atp_journal_scan_t scan;
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 1);
  CHECK_EQ(scan.tail_records, 5);
  CHECK_EQ(scan.tail_offset, (uint64_t)record2);
  CHECK_EQ(append_fill(j, 1, 1, 1), 2);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* The same flip in the first group, with the second after it: corruption. */
static void test_bad_record_before_last_group_stops(void) {
  char dir[64], path[600];
  REQUIRE(make_dir(dir));
  atp_journal_t *j = two_groups(dir);
  REQUIRE(j);
  CHECK_EQ(atp_journal_close(j), 0);
  seg_path(path, sizeof path, dir, 1);
  xor_byte(path, HEADER + FRAME + 3, 0x01);
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_ALWAYS);
  atp_journal_scan_t scan;
  atp_journal_t *j2 = NULL;
  CHECK_EQ(atp_journal_open(&c, 0, NULL, NULL, &scan, &j2), ATP_EINTERNAL);
  CHECK(strstr(scan.error, "00000000000000000001.journal at offset 64:") != NULL);
  CHECK_EQ(file_size(path), HEADER + 6 * (FRAME + 40)); /* nothing cut */
  remove_dir(dir);
}

/* A newer format version is refused, not misread. */
static void test_newer_version_refused(void) {
  char dir[64], path[600];
  REQUIRE(make_dir(dir));
  atp_journal_t *j = ten_records(dir, path, sizeof path);
  REQUIRE(j);
  CHECK_EQ(atp_journal_close(j), 0);
  int fd = open(path, O_RDWR);
  unsigned char h[HEADER];
  REQUIRE(pread(fd, h, HEADER, 0) == HEADER);
  h[8] = 2; /* version 2 */
  uint32_t crc = atp_crc32c(0, h, 60);
  memcpy(h + 60, &crc, 4); /* little-endian host */
  REQUIRE(pwrite(fd, h, HEADER, 0) == HEADER);
  close(fd);
  atp_journal_scan_t scan;
  CHECK_EQ(atp_journal_read(dir, 0, NULL, NULL, &scan), ATP_EINTERNAL);
  CHECK(strstr(scan.error, "version 2 is newer") != NULL);
  remove_dir(dir);
}

static void test_second_open_conflicts(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_NONE);
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan), *j2 = NULL;
  REQUIRE(j);
  CHECK_EQ(atp_journal_open(&c, 0, NULL, NULL, &scan, &j2), ATP_ECONFLICT);
  CHECK_EQ(atp_journal_close(j), 0);
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* --- segments ------------------------------------------------------------------- */

static void test_segment_roll_and_trim(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_BATCH);
  c.segment_bytes_max = 4096;
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  for (int i = 0; i < 100; i++) append_fill(j, 1, (unsigned char)i, 200);
  CHECK_EQ(atp_journal_wait(j, 100, 5000), 0);
  /* 18 records of 224 bytes fit after a 64-byte header. */
  int segments = count_segments(dir);
  CHECK_EQ(segments, 6);
  atp_journal_metrics_t m;
  atp_journal_metrics(j, &m);
  CHECK_EQ(m.segments, (uint64_t)segments);
  char path[600];
  seg_path(path, sizeof path, dir, 19);
  CHECK_EQ(file_size(path), HEADER + 18 * (FRAME + 200));
  CHECK_EQ(atp_journal_close(j), 0);

  /* LSNs go on across segments and a reopen. */
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 100);
  CHECK_EQ(got.out_of_order, 0);
  CHECK_EQ(scan.segments, 6);
  CHECK_EQ(append_fill(j, 1, 1, 200), 101);
  CHECK_EQ(atp_journal_wait(j, 101, 5000), 0);

  /* A snapshot at LSN 50: segments 1..18 and 19..36 go, 37..54 holds 51. */
  CHECK_EQ(atp_journal_trim(j, 50), 2);
  CHECK_EQ(count_segments(dir), 4);
  seg_path(path, sizeof path, dir, 1);
  CHECK_EQ(file_size(path), -1);
  CHECK_EQ(atp_journal_trim(j, 50), 0);
  /* Never the segment being written, whatever the LSN. */
  CHECK_EQ(atp_journal_trim(j, 1000), 3);
  CHECK_EQ(count_segments(dir), 1);
  CHECK_EQ(atp_journal_close(j), 0);

  /* Replay from the snapshot works; from 0, the missing LSNs are an error. */
  memset(&got, 0, sizeof got);
  CHECK_EQ(atp_journal_read(dir, 90, collect, &got, &scan), 0);
  CHECK_EQ(got.count, 11);
  CHECK_EQ(got.lsn[0], 91);
  CHECK_EQ(atp_journal_read(dir, 0, NULL, NULL, &scan), ATP_EINTERNAL);
  CHECK(strstr(scan.error, "missing") != NULL);
  remove_dir(dir);
}

/* A snapshot newer than the journal (restored from elsewhere): LSNs continue
 * after it, in a new segment. */
static void test_covered_beyond_journal(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_ALWAYS);
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 1000, &scan);
  REQUIRE(j);
  CHECK_EQ(atp_journal_durable_lsn(j), 1000);
  uint64_t lsn = append_fill(j, 1, 1, 1);
  CHECK_EQ(lsn, 1001);
  CHECK_EQ(atp_journal_wait(j, lsn, 5000), 0);
  CHECK_EQ(atp_journal_close(j), 0);
  REQUIRE((j = open_or_null(&c, 1000, &scan)));
  CHECK_EQ(got.count, 1);
  CHECK_EQ(got.lsn[0], 1001);
  CHECK_EQ(atp_journal_close(j), 0);
  CHECK_EQ(atp_journal_read(dir, 0, NULL, NULL, &scan), ATP_EINTERNAL);
  remove_dir(dir);
}

/* --- durability waits ----------------------------------------------------------- */

static void test_fsync_delay_holds_durable_back(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_ALWAYS);
  setenv("ATPD_TEST_FSYNC_DELAY_MS", "300", 1); /* what black-box tests set */
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  unsetenv("ATPD_TEST_FSYNC_DELAY_MS");
  REQUIRE(j);
  int64_t start = now_ms();
  uint64_t lsn = append_fill(j, 1, 1, 10);
  sleep_ms(150);
  CHECK(atp_journal_durable_lsn(j) < lsn);
  CHECK_EQ(atp_journal_wait(j, lsn, 50), ATP_ETOOMANY);
  CHECK_EQ(atp_journal_wait(j, lsn, 5000), 0);
  CHECK(now_ms() - start >= 290);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* The ticket horizon: an end's target is not durable while another slot's
 * mutation that began before it has not appended; it is once that one ended
 * and its group is durable; a mutation that appended nothing gets there too
 * (the writer runs a horizon-only round for it). */
static void test_ticket_horizon(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_BATCH);
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  CHECK_EQ(atp_journal_durable_ticket(j), 1);
  atp_journal_begin(j, 3); /* A: began, not yet appended */
  atp_journal_begin(j, 0); /* B */
  uint64_t lsn_b = append_fill(j, 1, 2, 10);
  uint64_t target_b = atp_journal_end(j, 0);
  CHECK_EQ(atp_journal_wait(j, lsn_b, 5000), 0);
  sleep_ms(20);
  /* B's own record is durable, but A, which B may have seen, is not. */
  CHECK(atp_journal_durable_ticket(j) < target_b);
  uint64_t lsn_a = append_fill(j, 1, 1, 10);
  uint64_t target_a = atp_journal_end(j, 3);
  CHECK(target_a >= target_b);
  CHECK_EQ(atp_journal_wait(j, lsn_a, 5000), 0);
  int64_t deadline = now_ms() + 2000;
  while (atp_journal_durable_ticket(j) < target_a && now_ms() < deadline) sleep_ms(1);
  CHECK(atp_journal_durable_ticket(j) >= target_a);
  /* Nothing appended: the writer still publishes the horizon, soon. */
  atp_journal_begin(j, 5);
  uint64_t target = atp_journal_end(j, 5);
  deadline = now_ms() + 2000;
  while (atp_journal_durable_ticket(j) < target && now_ms() < deadline) sleep_ms(1);
  CHECK(atp_journal_durable_ticket(j) >= target);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* A mutation still in flight when the writer forms a group (begun and
 * appended, not yet ended) is released by that same group: the writer waits
 * for it before it takes the queue instead of publishing a horizon below its
 * ticket, which would hold its answer until another round. One writer round,
 * no horizon-only round. The writer's wait is bounded (200 us), so a test
 * thread preempted past it misses; any of a few attempts must make it. */
static void test_group_releases_mutation_in_flight(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_ALWAYS);
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  int hits = 0;
  for (int attempt = 0; attempt < 8 && hits == 0; attempt++) {
    atp_journal_metrics_t m0, m1;
    atp_journal_metrics(j, &m0);
    atp_journal_begin(j, 0);
    uint64_t lsn = append_fill(j, 1, 7, 100);
    REQUIRE(lsn);
    /* The append woke the writer: end once it waits for this slot. */
    int64_t deadline = now_ms() + 50;
    do atp_journal_metrics(j, &m1);
    while (m1.horizon_waits == m0.horizon_waits && now_ms() < deadline);
    uint64_t target = atp_journal_end(j, 0);
    deadline = now_ms() + 2000;
    while (atp_journal_durable_ticket(j) < target && now_ms() < deadline) sleep_ms(1);
    CHECK(atp_journal_durable_ticket(j) >= target);
    CHECK(atp_journal_durable_lsn(j) >= lsn);
    sleep_ms(5);
    atp_journal_metrics(j, &m1);
    if (m1.rounds - m0.rounds == 1 && m1.empty_rounds == m0.empty_rounds &&
        m1.groups - m0.groups == 1 && m1.horizon_timeouts == m0.horizon_timeouts)
      hits++;
  }
  CHECK(hits > 0);
  /* A round with nothing to write does no fdatasync. */
  atp_journal_metrics_t m0, m1;
  atp_journal_metrics(j, &m0);
  atp_journal_begin(j, 1);
  uint64_t target = atp_journal_end(j, 1);
  int64_t deadline = now_ms() + 2000;
  while (atp_journal_durable_ticket(j) < target && now_ms() < deadline) sleep_ms(1);
  CHECK(atp_journal_durable_ticket(j) >= target);
  atp_journal_metrics(j, &m1);
  CHECK_EQ(m1.fsyncs, m0.fsyncs);
  CHECK_EQ(m1.empty_rounds - m0.empty_rounds, 1);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* admit says EFULL while queue_bytes_max bytes wait; append still takes. */
static void test_admit_full_queue(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_ALWAYS);
  c.queue_bytes_max = 1000;
  c.fsync_delay_ms = 200;
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  CHECK_EQ(atp_journal_admit(j), 0);
  uint64_t lsn = 0;
  for (int i = 0; i < 5; i++) lsn = append_fill(j, 1, 1, 300);
  CHECK_EQ(lsn, 5);
  CHECK_EQ(atp_journal_admit(j), ATP_EFULL);
  CHECK_EQ(atp_journal_wait(j, lsn, 5000), 0);
  CHECK_EQ(atp_journal_admit(j), 0);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* --- faults ----------------------------------------------------------------------- */

static atomic_int fail_op; /* 'w' or 's': fail those; 0: none */
static atomic_int fail_errno;
static atomic_int faults_hit;
static int inject(void *ctx, int op) {
  (void)ctx;
  if (atomic_load(&fail_op) != op) return 0;
  atomic_fetch_add(&faults_hit, 1);
  return atomic_load(&fail_errno);
}

static int wait_state(atp_journal_t *j, atp_journal_state_t state, int ms) {
  int64_t start = now_ms();
  while (atp_journal_state(j) != state && now_ms() - start < ms) sleep_ms(2);
  return atp_journal_state(j) == state;
}

/* A failing fdatasync (or write): FAILED, nothing more durable, admit refuses;
 * then it recovers alone and every record is there once, in order. */
static void check_io_failure(int op, int err) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_BATCH);
  c.fault = inject;
  c.retry_ms_min = 5;
  c.retry_ms_max = 20;
  atomic_store(&fail_op, 0);
  atomic_store(&faults_hit, 0);
  atomic_store(&fail_errno, err);
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  REQUIRE(append_each_durable(j, 3, 50) == 0);
  atomic_store(&fail_op, op);
  uint64_t lsn = append_fill(j, 1, 4, 50);
  CHECK(wait_state(j, ATP_JOURNAL_FAILED, 2000));
  CHECK_EQ(atp_journal_admit(j), ATP_EUNAVAILABLE);
  CHECK_EQ(atp_journal_wait(j, lsn, 100), ATP_EUNAVAILABLE);
  /* Admitted mutations still land their records while it is failed. */
  uint64_t lsn2 = append_fill(j, 1, 5, 50);
  CHECK_EQ(lsn2, 5);
  sleep_ms(60); /* a few retries, all failing */
  CHECK(atomic_load(&faults_hit) >= 2);
  CHECK_EQ(atp_journal_durable_lsn(j), 3);
  atp_journal_metrics_t m;
  atp_journal_metrics(j, &m);
  CHECK(m.failures >= 2);
  CHECK_EQ(m.last_errno, err);
  CHECK_EQ(m.state, ATP_JOURNAL_FAILED);

  atomic_store(&fail_op, 0);
  CHECK(wait_state(j, ATP_JOURNAL_OK, 2000));
  CHECK_EQ(atp_journal_wait(j, lsn2, 2000), 0);
  CHECK_EQ(atp_journal_admit(j), 0);
  CHECK_EQ(append_fill(j, 1, 6, 50), 6);
  CHECK_EQ(atp_journal_wait(j, 6, 2000), 0);
  atp_journal_metrics(j, &m);
  CHECK_EQ(m.recoveries, 1);
  CHECK_EQ(m.records_written, 6);
  CHECK_EQ(atp_journal_close(j), 0);
  /* The first segment was cut back to its three durable records; the rest
   * went to a new one. */
  char path[600];
  seg_path(path, sizeof path, dir, 1);
  CHECK_EQ(file_size(path), HEADER + 3 * (FRAME + 50));
  CHECK_EQ(count_segments(dir), 2);
  c.fault = NULL;
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 6);
  CHECK_EQ(got.out_of_order, 0);
  for (uint32_t i = 0; i < got.count; i++) CHECK_EQ(got.first[i], i + 1);
  CHECK_EQ(scan.tail_bytes, 0);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* --- groups committed by the producing thread ------------------------------- */

static _Atomic uint64_t commit_durable_calls;
static _Atomic int durable_on_caller; /* on_durable ran on the committing thread */
static pthread_t committer_thread;
static void note_durable(void *ctx, uint64_t lsn) {
  (void)ctx;
  (void)lsn;
  atomic_fetch_add(&commit_durable_calls, 1);
  if (pthread_equal(pthread_self(), committer_thread))
    atomic_store(&durable_on_caller, 1);
}

typedef struct {
  atp_journal_t *j;
  uint64_t lsn;
} elsewhere_t;

static void *append_elsewhere(void *arg) {
  elsewhere_t *e = arg;
  e->lsn = append_fill(e->j, 1, 9, 40);
  return NULL;
}

/* Until the idle writer has zero-filled ahead and stopped (its zeroes come
 * ZERO_QUIET_NS after the last group, in steps): no change for 200 ms, at
 * most 5 s. */
static void wait_fill_over(atp_journal_t *j) {
  atp_journal_metrics_t m;
  atp_journal_metrics(j, &m);
  uint64_t bytes = m.prealloc_bytes;
  int64_t changed = now_ms(), until = changed + 5000;
  while (now_ms() - changed < 200 && now_ms() < until) {
    sleep_ms(10);
    atp_journal_metrics(j, &m);
    if (m.prealloc_bytes != bytes) bytes = m.prealloc_bytes, changed = now_ms();
  }
}

/* A loop that owns its commits: its appends and ends do not wake the writer
 * thread, atp_journal_commit writes, syncs and publishes on the caller's
 * thread (on_durable there too), and what it cannot do at once goes to the
 * writer thread: a backlog past ATP_JOURNAL_COMMIT_BYTES_MAX, a failed
 * journal (recovered by the writer's retries), another thread's records. */
static void test_commit_on_producer_thread(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_BATCH);
  c.on_durable = note_durable;
  c.fault = inject;
  c.retry_ms_min = 5;
  c.retry_ms_max = 20;
  atomic_store(&fail_op, 0);
  atomic_store(&fail_errno, EIO);
  committer_thread = pthread_self();
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  sleep_ms(300); /* the writer's zero-filling at open is over: it sleeps */
  atp_journal_own_commits(j, 2);
  CHECK(!atp_journal_commit(j)); /* nothing to do */
  atp_journal_metrics_t m0, m1;
  atp_journal_metrics(j, &m0);
  CHECK_EQ(atp_journal_gather_ns(j), 0); /* nothing queued */
  atp_journal_begin(j, 2);
  uint64_t lsn = append_fill(j, 1, 3, 100);
  uint64_t target = atp_journal_end(j, 2);
  /* batch: the group may gather, at most min(1 ms, the last fdatasync) */
  int64_t gather = atp_journal_gather_ns(j);
  CHECK(gather > 0 && gather <= 1000000);
  sleep_ms(30);
  CHECK_EQ(atp_journal_gather_ns(j), 0);   /* its time is up */
  CHECK_EQ(atp_journal_durable_lsn(j), 0); /* nobody woke the writer thread */
  atomic_store(&durable_on_caller, 0);
  CHECK(atp_journal_commit(j));
  CHECK_EQ(atp_journal_gather_ns(j), 0);
  CHECK_EQ(atp_journal_durable_lsn(j), lsn);
  CHECK(atp_journal_durable_ticket(j) >= target);
  CHECK_EQ(atomic_load(&durable_on_caller), 1);
  atp_journal_metrics(j, &m1);
  CHECK_EQ(m1.loop_rounds - m0.loop_rounds, 1);
  CHECK_EQ(m1.rounds - m0.rounds, 1);
  CHECK_EQ(m1.groups - m0.groups, 1);

  /* A mutation that appended nothing still gets its horizon published. */
  atp_journal_begin(j, 2);
  target = atp_journal_end(j, 2);
  CHECK(atp_journal_commit(j));
  CHECK(atp_journal_durable_ticket(j) >= target);

  /* Another thread's append wakes the writer thread as always. */
  elsewhere_t other = {j, 0};
  pthread_t t;
  REQUIRE(pthread_create(&t, NULL, append_elsewhere, &other) == 0);
  pthread_join(t, NULL);
  CHECK(other.lsn > lsn);
  CHECK_EQ(atp_journal_wait(j, other.lsn, 2000), 0);

  /* The writer thread does not wait for the loop's mutation in flight (a
   * batch slice holds its slot for a millisecond; the loop commits it
   * itself): no horizon wait, and the loop's ticket stays unpublished. */
  atp_journal_metrics(j, &m0);
  atp_journal_begin(j, 2);
  other.lsn = 0;
  REQUIRE(pthread_create(&t, NULL, append_elsewhere, &other) == 0);
  pthread_join(t, NULL);
  CHECK_EQ(atp_journal_wait(j, other.lsn, 2000), 0);
  atp_journal_metrics(j, &m1);
  CHECK_EQ(m1.horizon_waits, m0.horizon_waits);
  target = atp_journal_end(j, 2);
  CHECK(atp_journal_durable_ticket(j) < target);
  if (!atp_journal_commit(j)) { /* the writer was zero-filling: it publishes */
    int64_t until = now_ms() + 2000;
    while (atp_journal_durable_ticket(j) < target && now_ms() < until) sleep_ms(1);
  }
  CHECK(atp_journal_durable_ticket(j) >= target);

  /* A backlog too large to write while the loop waits: the writer thread. */
  atp_journal_metrics(j, &m0);
  for (int i = 0; i < 3; i++) lsn = append_fill(j, 1, 4, 30000);
  CHECK_EQ(atp_journal_gather_ns(j), 0); /* too much to hold a loop for */
  CHECK(!atp_journal_commit(j));
  CHECK_EQ(atp_journal_wait(j, lsn, 2000), 0);
  atp_journal_metrics(j, &m1);
  CHECK_EQ(m1.loop_handoffs - m0.loop_handoffs, 1);
  CHECK_EQ(m1.loop_rounds, m0.loop_rounds);

  /* A failed fdatasync in the loop's round: FAILED, the writer thread's
   * retries take over and recover, every record kept in order. */
  wait_fill_over(j); /* the writer thread zero-fills after the backlog */
  atomic_store(&fail_op, 's');
  lsn = append_fill(j, 1, 5, 50);
  CHECK(!atp_journal_commit(j));
  CHECK_EQ(atp_journal_state(j), ATP_JOURNAL_FAILED);
  CHECK(atp_journal_durable_lsn(j) < lsn);
  CHECK(!atp_journal_commit(j)); /* failed: left to the writer thread */
  atomic_store(&fail_op, 0);
  CHECK(wait_state(j, ATP_JOURNAL_OK, 2000));
  CHECK_EQ(atp_journal_wait(j, lsn, 2000), 0);
  uint64_t last = lsn;
  CHECK_EQ(atp_journal_close(j), 0);
  c.fault = NULL;
  c.on_durable = NULL;
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, last);
  CHECK_EQ(got.out_of_order, 0);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);

  /* always: the same (its writer starts a group at any byte queued, but not
   * for a committing loop's records below ATP_JOURNAL_COMMIT_BYTES_MAX). */
  REQUIRE(make_dir(dir));
  c = config_for(dir, ATP_JOURNAL_ALWAYS);
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  sleep_ms(300);
  atp_journal_own_commits(j, 1);
  lsn = append_fill(j, 1, 7, 100);
  sleep_ms(30);
  CHECK_EQ(atp_journal_durable_lsn(j), 0);
  CHECK(atp_journal_commit(j));
  CHECK_EQ(atp_journal_durable_lsn(j), lsn);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);

  /* Mode none: both are no-ops (nobody waits there). */
  REQUIRE(make_dir(dir));
  c = config_for(dir, ATP_JOURNAL_NONE);
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  atp_journal_own_commits(j, 0);
  lsn = append_fill(j, 1, 6, 10);
  CHECK_EQ(atp_journal_gather_ns(j), 0);
  CHECK(!atp_journal_commit(j));
  CHECK_EQ(atp_journal_wait(j, lsn, 2000), 0);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* A batch journal in dir once its writer's idle fill at open is over (4 MiB
 * of zeroes ahead); m: its metrics then. NULL if it did not open or fill. */
static atp_journal_t *open_filled(const char *dir, atp_journal_config_t *c,
                                  atp_journal_metrics_t *m) {
  *c = config_for(dir, ATP_JOURNAL_BATCH);
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(c, 0, &scan);
  if (!j) return NULL;
  int64_t deadline = now_ms() + 3000;
  do {
    sleep_ms(10);
    atp_journal_metrics(j, m);
  } while (m->prealloc_bytes < (4u << 20) && now_ms() < deadline);
  if (m->prealloc_bytes >= (4u << 20)) return j;
  atp_journal_close(j);
  return NULL;
}

/* No zero-filling after a large group (batch ingestion: the zeroes would
 * double the bytes written and save nothing); it resumes after a small one. */
static void test_no_zeroes_after_large_groups(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c;
  atp_journal_metrics_t m0, m1;
  atp_journal_t *j = open_filled(dir, &c, &m0);
  REQUIRE(j);
  /* One group of 240 KB: queued without waking the writer, then handed to it. */
  atp_journal_own_commits(j, 0);
  uint64_t lsn = 0;
  for (int i = 0; i < 4; i++) lsn = append_fill(j, 1, (unsigned char)(i + 1), 60000);
  CHECK(!atp_journal_commit(j));
  CHECK_EQ(atp_journal_wait(j, lsn, 2000), 0);
  sleep_ms(200);
  atp_journal_metrics(j, &m1);
  CHECK_EQ(m1.groups - m0.groups, 1);
  CHECK_EQ(m1.prealloc_steps, m0.prealloc_steps); /* less than 4 MiB ahead now */
  /* A small group from another thread: the idle writer fills ahead again. */
  elsewhere_t other = {j, 0};
  pthread_t t;
  REQUIRE(pthread_create(&t, NULL, append_elsewhere, &other) == 0);
  pthread_join(t, NULL);
  CHECK_EQ(atp_journal_wait(j, other.lsn, 2000), 0);
  int64_t deadline = now_ms() + 2000;
  do {
    sleep_ms(10);
    atp_journal_metrics(j, &m0);
  } while (m0.prealloc_steps == m1.prealloc_steps && now_ms() < deadline);
  CHECK(m0.prealloc_steps > m1.prealloc_steps);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* Under load the zeroes ahead come with the groups: a small group short of
 * them carries 1 MiB, made durable by its own fdatasync. A step of 2 MiB
 * between groups held the round for milliseconds, and a loop's commits in
 * the meantime went to the writer thread and waited for it. */
static void test_groups_carry_the_zeroes(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c;
  atp_journal_metrics_t m0, m1;
  atp_journal_t *j = open_filled(dir, &c, &m0);
  REQUIRE(j);
  /* 250 groups of 16 records, 32 KiB each: 8 MiB, past the zeroes ahead.
   * Halfway, another thread's record wakes the writer thread: it writes
   * that group and, under load, does not zero-fill as if idle. */
  atp_journal_own_commits(j, 0);
  for (int g = 0; g < 250; g++) {
    for (int i = 0; i < 16; i++) append_fill(j, 1, (unsigned char)(g + i), 2000);
    CHECK(atp_journal_commit(j));
    if (g == 125) {
      elsewhere_t other = {j, 0};
      pthread_t t;
      REQUIRE(pthread_create(&t, NULL, append_elsewhere, &other) == 0);
      pthread_join(t, NULL);
      CHECK_EQ(atp_journal_wait(j, other.lsn, 2000), 0);
      sleep_ms(5); /* the writer thread's round is over */
    }
  }
  atp_journal_metrics(j, &m1);
  CHECK_EQ(m1.groups - m0.groups, 251);
  CHECK_EQ(m1.loop_rounds, 250);
  CHECK_EQ(m1.loop_handoffs, 0);
  uint64_t steps = m1.prealloc_steps - m0.prealloc_steps;
  CHECK(steps >= 4);
  CHECK_EQ(m1.prealloc_bytes - m0.prealloc_bytes, steps << 20);
  CHECK_EQ(m1.prealloc_failures, 0);
  char path[600];
  seg_path(path, sizeof path, dir, 1);
  long data = HEADER + 4000L * (FRAME + 2000) + FRAME + 40;
  CHECK(file_size(path) >= data + (1L << 20) - 32768); /* still ahead */
  CHECK_EQ(atp_journal_close(j), 0);
  CHECK_EQ(file_size(path), data);
  atp_journal_scan_t scan;
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 4001);
  CHECK_EQ(got.out_of_order, 0);
  CHECK_EQ(scan.tail_bytes, 0);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

static void test_fsync_failure_recovers(void) {
  check_io_failure('s', EIO);
}
static void test_write_failure_recovers(void) {
  check_io_failure('w', ENOSPC);
}

/* Zero-filling that fails (ENOSPC) never fails the journal: the step is
 * undone, preallocation pauses and appends go on; it resumes afterwards. */
static void test_zero_fill_failure_degrades(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_ALWAYS);
  c.fault = inject;
  atomic_store(&fail_errno, ENOSPC);
  atomic_store(&fail_op, 'z');
  atomic_store(&faults_hit, 0);
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  CHECK_EQ(append_each_durable(j, 20, 100), 0);
  sleep_ms(50);
  atp_journal_metrics_t m;
  atp_journal_metrics(j, &m);
  CHECK(m.prealloc_failures >= 1);
  CHECK_EQ(m.prealloc_steps, 0);
  CHECK_EQ(m.failures, 0);
  CHECK_EQ(m.state, ATP_JOURNAL_OK);
  CHECK_EQ(atp_journal_admit(j), 0);
  char path[600];
  seg_path(path, sizeof path, dir, 1);
  CHECK_EQ(file_size(path), HEADER + 20 * (FRAME + 100)); /* plain appends */
  /* The pause over, the next group's round zero-fills again. */
  atomic_store(&fail_op, 0);
  int64_t start = now_ms();
  int more = 0;
  do {
    sleep_ms(20);
    CHECK_EQ(append_each_durable(j, 1, 100), 0);
    more++;
    atp_journal_metrics(j, &m);
  } while (m.prealloc_steps == 0 && now_ms() - start < 5000);
  CHECK(m.prealloc_steps >= 1);
  CHECK(file_size(path) > HEADER + (20 + more) * (FRAME + 100));
  CHECK_EQ(atp_journal_close(j), 0);
  c.fault = NULL;
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, (uint32_t)(20 + more));
  CHECK_EQ(got.out_of_order, 0);
  CHECK_EQ(scan.tail_bytes, 0);
  CHECK_EQ(atp_journal_close(j), 0);
  remove_dir(dir);
}

/* Closing while failed reports the records it could not write. */
static void test_close_while_failed(void) {
  char dir[64];
  REQUIRE(make_dir(dir));
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_ALWAYS);
  c.fault = inject;
  atomic_store(&fail_errno, EIO);
  atomic_store(&fail_op, 's');
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  CHECK(j == NULL); /* even the first segment's header cannot be synced */
  CHECK(strstr(scan.error, "Input/output error") != NULL);
  atomic_store(&fail_op, 0);
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  atomic_store(&fail_op, 's');
  append_fill(j, 1, 1, 10);
  CHECK(wait_state(j, ATP_JOURNAL_FAILED, 2000));
  CHECK_EQ(atp_journal_close(j), ATP_EUNAVAILABLE);
  atomic_store(&fail_op, 0);
  remove_dir(dir);
}

/* A real disk full: a 1 MiB tmpfs filled up, then freed. */
static void test_disk_full_tmpfs(void) {
  char mnt[64];
  REQUIRE(make_dir(mnt));
  if (mount("tmpfs", mnt, "tmpfs", 0, "size=1m") != 0) {
    printf("  SKIP test_disk_full_tmpfs: mount tmpfs: %s (needs root)\n",
           strerror(errno));
    rmdir(mnt);
    return;
  }
  char dir[128], filler[128];
  snprintf(dir, sizeof dir, "%s/journal", mnt);
  snprintf(filler, sizeof filler, "%s/filler", mnt);
  atp_journal_config_t c = config_for(dir, ATP_JOURNAL_BATCH);
  c.retry_ms_min = 5;
  c.retry_ms_max = 50;
  atp_journal_scan_t scan;
  atp_journal_t *j = open_or_null(&c, 0, &scan);
  REQUIRE(j);
  REQUIRE(append_each_durable(j, 10, 1000) == 0);
  /* Fill the rest of the file system. */
  int fd = open(filler, O_CREAT | O_WRONLY, 0644);
  REQUIRE(fd >= 0);
  static char block[4096];
  while (write(fd, block, sizeof block) > 0) {
  }
  close(fd);
  /* Records larger than a page, so that none fits in the slack at the end of
   * the segment's last page and the first write after the fill must fail. */
  uint64_t lsn = 0;
  for (int i = 0; i < 20; i++) lsn = append_fill(j, 2, (unsigned char)(11 + i), 5000);
  CHECK(wait_state(j, ATP_JOURNAL_FAILED, 2000));
  CHECK_EQ(atp_journal_admit(j), ATP_EUNAVAILABLE);
  CHECK_EQ(atp_journal_durable_lsn(j), 10);
  atp_journal_metrics_t m;
  atp_journal_metrics(j, &m);
  CHECK_EQ(m.last_errno, ENOSPC);
  unlink(filler);
  CHECK(wait_state(j, ATP_JOURNAL_OK, 3000));
  CHECK_EQ(atp_journal_wait(j, lsn, 3000), 0);
  CHECK_EQ(atp_journal_close(j), 0);
  REQUIRE((j = open_or_null(&c, 0, &scan)));
  CHECK_EQ(got.count, 30);
  CHECK_EQ(got.out_of_order, 0);
  for (uint32_t i = 0; i < got.count; i++) {
    CHECK_EQ(got.first[i], i + 1);
    CHECK_EQ(got.bytes[i], i < 10 ? 1000 : 5000);
  }
  CHECK_EQ(scan.tail_bytes, 0);
  CHECK_EQ(atp_journal_close(j), 0);
  if (umount(mnt) != 0) fprintf(stderr, "  umount %s: %s\n", mnt, strerror(errno));
  rmdir(mnt);
}

TEST_MAIN({
  RUN(test_crc32c_vectors);
  RUN(test_crc32c_hw_matches_tables);
  RUN(test_append_reopen_read_back);
  RUN(test_appendv_and_empty);
  RUN(test_modes_flush_by_themselves);
  RUN(test_group_commit_threads_batch);
  RUN(test_group_commit_threads_always);
  RUN(test_torn_tail_cut);
  RUN(test_flipped_bit_stops_with_offset);
  RUN(test_zero_end_is_clean);
  RUN(test_partial_frame_then_zeroes_is_torn);
  RUN(test_zero_header_then_garbage);
  RUN(test_prealloc_rolls_and_reopens);
  RUN(test_bad_record_in_last_group_is_tail);
  RUN(test_bad_record_before_last_group_stops);
  RUN(test_newer_version_refused);
  RUN(test_second_open_conflicts);
  RUN(test_segment_roll_and_trim);
  RUN(test_covered_beyond_journal);
  RUN(test_fsync_delay_holds_durable_back);
  RUN(test_ticket_horizon);
  RUN(test_group_releases_mutation_in_flight);
  RUN(test_admit_full_queue);
  RUN(test_commit_on_producer_thread);
  RUN(test_no_zeroes_after_large_groups);
  RUN(test_groups_carry_the_zeroes);
  RUN(test_fsync_failure_recovers);
  RUN(test_write_failure_recovers);
  RUN(test_zero_fill_failure_degrades);
  RUN(test_close_while_failed);
  RUN(test_disk_full_tmpfs);
})
