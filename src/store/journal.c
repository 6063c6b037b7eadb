/* journal.c - the journal's queue, writer thread, segments and faults (see
 * include/atp/journal.h; the bytes are in proto/journal.md, recovery in
 * journal_scan.c).
 *
 * The queue is a list of 256 KiB chunks under one mutex. An append holds the
 * mutex to take the next LSN and copy its frame (24 bytes of header and the
 * payload) to the end of the last chunk: for a typical change of a few hundred
 * bytes that is well under a microsecond, the price of a plain design that
 * TSan can check; producers on many loops contend on it only for the copy.
 * The LSN and the queue position are taken under the same mutex, so the queue
 * is in LSN order by construction. The writer takes the whole list in one
 * swap and then works on it alone: it fills in each frame's group_delta and
 * CRC (so the CRC work is off the event loops), writes the group with one
 * writev, makes it durable with one fdatasync, and hands the chunks back for
 * reuse. A new chunk is allocated under the mutex only when none is free,
 * which stops happening once the queue has reached its working size.
 *
 * The writer loop: wait_for_group (the mode's gathering policy, see
 * group_ready), settle_horizon (wait for mutations in flight, without the
 * mutex), take the queue, write and sync, publish the LSN and the ticket,
 * one on_durable per round that moved either. A round with nothing queued
 * runs only to move the horizon, does no I/O, and runs only when the slots
 * allow the horizon to move, so a long-held slot never makes it spin.
 *
 * Whoever holds round_mu owns the open segment: its fd, its length, the
 * length known durable. That is the writer thread, or, with one event loop,
 * the loop itself at the end of its turn (atp_journal_commit: the same round
 * on the loop's thread, Redis's way, so a turn's answers need no hand-off
 * between threads). A segment is created as "<lsn>.journal.tmp", its header
 * made durable, then renamed into place and the directory synced, so a
 * segment under its final name always has a whole header.
 *
 * Zero-filled space ahead. An fdatasync after an append that grows the file
 * must also write the inode (the size, the new blocks); one that overwrites
 * blocks already allocated and written writes only the data, which on the
 * disks measured costs less than half as much (fallocate alone does not help:
 * its unwritten extents are converted, with the same metadata write, on the
 * first write into them). So the segment is kept zero-filled ahead of the
 * write position, with real writes of zeroes made durable before a record
 * is written over them: ZERO_AHEAD_IDLE bytes ahead by the writer thread's
 * steps (each with an fdatasync of its own) when it has nothing else to do,
 * and under load at least ZERO_AHEAD_MIN ahead by the groups themselves (a
 * group short of zeroes carries ZERO_GROUP_BYTES of them after the file's
 * end, covered by its own fdatasync), up to segment_bytes_max. Recovery
 * reads zeroes after the last record as a clean end (proto/journal.md). A
 * segment is truncated to its data end when it rolls and at a clean close,
 * so closed segments hold no zeroes. The zeroes are an optimisation only: a
 * zero write that fails (ENOSPC, EIO) is cut off again and zero-filling
 * pauses (backing off), the journal goes on with plain appends and never
 * fails because of it; and no zeroes are written while the file system has
 * less than ZERO_RESERVE_BYTES free, so that preallocation never takes the
 * last space from the records themselves or from snapshots.
 *
 * Failure and recovery. After a failed write or fdatasync the state is
 * FAILED and the records stay in the writer's pending list (memory). Every
 * retry (backoff retry_ms_min doubling to retry_ms_max) first cuts the
 * segment back to its durable length and syncs that, then starts a new
 * segment at durable LSN + 1 (replacing the old file if it held no durable
 * record), then writes the pending records into it. Nothing written before a
 * failed fdatasync is read back or written next to: after such a failure
 * Linux may have marked the pages clean without writing them, so only the
 * bytes a successful fdatasync covered, and fresh files, are trusted.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "atp/assert.h"
#include "atp/clock.h"
#include "atp/limits.h"
#include "atp/log.h"
#include "atp/memory.h"
#include "journal_internal.h"

#define CHUNK_BYTES     (256u * 1024)
#define FREE_CHUNKS_MAX 32 /* kept for reuse: 8 MiB */
#define GROUP_IOV_MAX   64
#define ROLL_NEEDED     1 /* write_group: the segment is full, roll first */
/* Zero-filled space ahead of the write position (see the file comment). A
 * step costs one write and one fdatasync, a few milliseconds of disk time
 * whatever its size up to a few MiB, so steps are large and rare. */
#define ZERO_STEP_BYTES       (2ull << 20)
#define ZERO_AHEAD_IDLE       (4ull << 20)  /* filled while nothing is queued */
#define ZERO_AHEAD_MIN        (1ull << 20)  /* below it, groups carry zeroes */
#define ZERO_GROUP_BYTES      (1u << 20)    /* zeroes a group carries under load */
#define ZERO_QUIET_NS         50000000      /* no group for this long: idle */
#define ZERO_RESERVE_BYTES    (64ull << 20) /* free space preallocation leaves alone */
#define ZERO_SKIP_GROUP_BYTES (128u << 10)  /* no zeroes after a group this large */
#define ZERO_PAUSE_MS_MIN     100
#define ZERO_PAUSE_MS_MAX     10000

const uint32_t atp_journal_fsync_bucket_us[ATP_JOURNAL_FSYNC_BUCKETS - 1] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 1000000};

typedef struct chunk {
  struct chunk *next;
  uint32_t len; /* bytes of whole frames in data */
  uint32_t cap; /* bytes data can hold */
  unsigned char data[];
} chunk_t;

typedef _Atomic uint64_t counter_t;

struct atp_journal {
  atp_journal_config_t config; /* defaults filled in; config.dir is dir */
  char *dir;
  int dir_fd;  /* for fsyncs of the directory */
  int lock_fd; /* holds the flock on <dir>/LOCK */
  uint64_t journal_id;
  uint64_t instance;       /* this process's count of opens, from 1 */
  uint32_t seed;           /* atp__journal_seed(journal_id) */
  int64_t gather_ns;       /* how long a group may gather; 0 in always mode */
  uint64_t gather_bytes;   /* a group starts once this much is queued */
  uint32_t fsync_delay_ms; /* test switch; 0 in production */

  pthread_mutex_t mu;
  pthread_cond_t wake; /* the writer waits on it */
  pthread_cond_t done; /* atp_journal_wait waits on it */
  /* Under mu. */
  chunk_t *q_head, *q_tail; /* appended, not yet taken by the writer */
  uint64_t q_bytes;         /* bytes in q_head..q_tail */
  int64_t q_first_ns;       /* when the queue last became non-empty */
  uint64_t next_lsn;        /* what the next append gets */
  chunk_t *free_chunks;     /* of CHUNK_BYTES, for reuse */
  uint32_t free_count;
  bool writer_sleeping; /* producers signal wake only then */
  bool stopping;        /* close began: appends refused, the writer drains */

  _Atomic uint64_t assigned_lsn; /* next_lsn - 1, readable without mu */
  _Atomic uint64_t durable_lsn;  /* written only by the writer */
  counter_t queued_bytes;        /* appended, not yet durable */
  _Atomic int state;             /* atp_journal_state_t */
  _Atomic int last_errno;
  counter_t records_written, bytes_written, groups, group_records_sum;
  counter_t group_hist[ATP_JOURNAL_GROUP_BUCKETS];
  counter_t fsyncs, fsync_ns_sum, fsync_hist[ATP_JOURNAL_FSYNC_BUCKETS];
  counter_t failures, recoveries, segment_files;
  counter_t rounds, empty_rounds, horizon_waits, horizon_timeouts, gathers;
  counter_t loop_rounds, loop_handoffs;
  counter_t prealloc_steps, prealloc_bytes, prealloc_ns_sum, prealloc_failures;
  uint64_t tail_bytes, tail_records; /* set at open, constant after */

  /* The writer's state below belongs to whoever holds round_mu: the writer
   * thread for its rounds and zero-fill steps, or a committing thread for a
   * round of its own (atp_journal_commit). Taken before mu, never while
   * holding it except by trylock. */
  pthread_mutex_t round_mu;
  pthread_t thread;
  int seg_fd;                 /* the segment being written; -1 if none */
  uint64_t seg_bytes;         /* its length including bytes not yet durable */
  uint64_t seg_durable_bytes; /* its length covered by a successful fdatasync */
  /* Its file size. Bytes from seg_bytes up to it (when it is larger) are
   * zeroes covered by a successful fdatasync: space to overwrite. */
  uint64_t seg_file_bytes;
  int64_t zero_resume_ns;   /* zero-filling paused until then */
  uint32_t zero_pause_ms;   /* the next pause after a failed or skipped step */
  chunk_t *p_head, *p_tail; /* taken from the queue, not yet durable */
  uint32_t p_off;           /* in p_head: frames before it are durable */
  chunk_t *w_free;          /* durable chunks to hand back under mu */
  uint32_t retry_ms;        /* next backoff */
  bool unwritten_at_close;
  /* Read by the writer thread's gathering policy, written by whoever wrote
   * the last group (the writer thread or a committing loop): relaxed. */
  _Atomic int64_t last_group_end_ns;   /* when a group last came back from the disk */
  _Atomic int64_t last_fsync_ns;       /* how long the last group's fdatasync took */
  _Atomic uint64_t last_group_records; /* records in the last group written */
  _Atomic uint64_t last_group_bytes;   /* and its bytes */

  /* The ticket horizon (proto/journal.md, causality). tickets is the next
   * ticket, from 1; slots[i] is 0 when slot i's thread is between mutations,
   * else a lower bound of the ticket it holds. durable_ticket: every ticket
   * below it belongs to a mutation whose records are durable. wanted is the
   * highest T_B an end found not yet covered: the writer runs a group for it
   * even when nothing is queued (a mutation that appended nothing, such as a
   * replay, still waits for what it saw). writer_idle is set, under mu, while
   * the writer waits with nothing to do, so that an end knows to wake it. */
  _Alignas(64) _Atomic uint64_t tickets;
  _Alignas(64) _Atomic uint64_t durable_ticket;
  _Atomic uint64_t wanted;
  _Atomic bool writer_idle;
  _Atomic uint32_t slots_used; /* highest slot index begun + 1 */
  struct {
    _Alignas(64) _Atomic uint64_t ticket;
    _Atomic bool commits; /* its thread commits its own groups (own_commits) */
  } slots[ATP_JOURNAL_SLOTS_MAX];

  pthread_mutex_t seg_mu; /* segs: the writer appends, trim removes */
  uint64_t *segs;         /* first LSNs of the segment files, ascending */
  uint32_t seg_count, seg_cap;
};

/* The journal whose groups the calling thread commits itself, if any
 * (atp_journal_own_commits): its appends do not wake the writer thread. By
 * the journal's instance number, not its address, which a journal opened
 * after this one closed may reuse. */
static _Atomic uint64_t instances;
static _Thread_local uint64_t tls_committer;

static inline void count(counter_t *c, uint64_t v) {
  atomic_fetch_add_explicit(c, v, memory_order_relaxed);
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static struct timespec ns_to_ts(int64_t ns) {
  return (struct timespec){.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
}

/* --- disk operations (writer thread, and open before it starts) ------------ */

/* Records an I/O failure; the first of a FAILED spell is logged. */
static int io_error(atp_journal_t *j, int err, const char *what) {
  atomic_store_explicit(&j->last_errno, err, memory_order_relaxed);
  count(&j->failures, 1);
  if (atomic_load_explicit(&j->state, memory_order_relaxed) == ATP_JOURNAL_OK)
    atp_log("error",
            "journal: %s in %s failed: %s; mutations refused until it recovers", what,
            j->dir, strerror(err));
  return ATP_EUNAVAILABLE;
}

static int fault(atp_journal_t *j, int op) {
  return j->config.fault ? j->config.fault(j->config.fault_ctx, op) : 0;
}

/* fdatasync with the test delay and the latency histogram; 0 or an errno. */
static int sync_fd(atp_journal_t *j, int fd) {
  if (j->fsync_delay_ms) atp_sleep_ms(j->fsync_delay_ms);
  int64_t start = now_ns();
  int err = fault(j, 's');
  if (!err && fdatasync(fd) != 0) err = errno;
  uint64_t ns = (uint64_t)(now_ns() - start), us = ns / 1000;
  atomic_store_explicit(&j->last_fsync_ns, (int64_t)ns, memory_order_relaxed);
  int b = 0;
  while (b < ATP_JOURNAL_FSYNC_BUCKETS - 1 && us > atp_journal_fsync_bucket_us[b]) b++;
  count(&j->fsync_hist[b], 1);
  count(&j->fsyncs, 1);
  count(&j->fsync_ns_sum, ns);
  return err;
}

/* writev until everything is written; 0 or an errno (ENOSPC for a write
 * that makes no progress). */
static int write_all(atp_journal_t *j, int fd, struct iovec *iov, int n) {
  int err = fault(j, 'w');
  if (err) return err;
  while (n > 0) {
    ssize_t w = writev(fd, iov, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno;
    if (w == 0) return ENOSPC;
    size_t left = (size_t)w;
    while (n > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + left;
      iov->iov_len -= left;
    }
  }
  return 0;
}

static void note_segment(atp_journal_t *j, uint64_t first_lsn) {
  pthread_mutex_lock(&j->seg_mu);
  if (j->seg_count && j->segs[j->seg_count - 1] == first_lsn) {
    pthread_mutex_unlock(&j->seg_mu); /* replaced in place by recovery */
    return;
  }
  if (j->seg_count == j->seg_cap) {
    uint32_t cap = j->seg_cap ? j->seg_cap * 2 : 16;
    uint64_t *segs = atp_realloc(j->segs, cap * sizeof *segs);
    /* Losing track of a segment only means trim will not remove it. */
    if (segs) j->segs = segs, j->seg_cap = cap;
  }
  if (j->seg_count < j->seg_cap) j->segs[j->seg_count++] = first_lsn;
  atomic_store_explicit(&j->segment_files, j->seg_count, memory_order_relaxed);
  pthread_mutex_unlock(&j->seg_mu);
}

/* Creates the segment that starts at first_lsn (tmp, header, fdatasync,
 * rename, directory fsync) and makes it the one written. */
static int create_segment(atp_journal_t *j, uint64_t first_lsn) {
  char tmp[ATP__JOURNAL_PATH_BYTES], path[ATP__JOURNAL_PATH_BYTES];
  if (atp__journal_path(tmp, sizeof tmp, j->dir, first_lsn, true) != 0 ||
      atp__journal_path(path, sizeof path, j->dir, first_lsn, false) != 0)
    return io_error(j, ENAMETOOLONG, "naming a segment");
  int fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return io_error(j, errno, "creating a segment");
  unsigned char header[ATP__JOURNAL_HEADER_BYTES];
  atp__journal_header_encode(header, first_lsn, j->journal_id, atp_wall_ms());
  struct iovec iov = {header, sizeof header};
  int err = write_all(j, fd, &iov, 1);
  const char *what = "writing a segment header";
  if (!err && (err = sync_fd(j, fd))) what = "syncing a segment header";
  if (!err && rename(tmp, path) != 0) err = errno, what = "renaming a segment";
  if (!err && fsync(j->dir_fd) != 0) err = errno, what = "syncing the directory";
  if (err) {
    close(fd);
    unlink(tmp);
    return io_error(j, err, what);
  }
  if (j->seg_fd >= 0) close(j->seg_fd);
  j->seg_fd = fd;
  j->seg_bytes = j->seg_durable_bytes = j->seg_file_bytes = ATP__JOURNAL_HEADER_BYTES;
  note_segment(j, first_lsn);
  return 0;
}

/* After a failure: cut the segment back to what is durable, then go on in a
 * fresh segment at durable LSN + 1 (see the file comment). */
static int recover(atp_journal_t *j) {
  if (j->seg_fd >= 0) {
    if (ftruncate(j->seg_fd, (off_t)j->seg_durable_bytes) != 0)
      return io_error(j, errno, "truncating a segment");
    int err = sync_fd(j, j->seg_fd);
    if (err) return io_error(j, err, "syncing a truncated segment");
    j->seg_bytes = j->seg_file_bytes = j->seg_durable_bytes;
  }
  return create_segment(
      j, atomic_load_explicit(&j->durable_lsn, memory_order_relaxed) + 1);
}

/* --- groups ----------------------------------------------------------------- */

/* Frees the pending chunks that are wholly durable into w_free. */
static void advance_pending(atp_journal_t *j, chunk_t *c, uint32_t off) {
  while (j->p_head != c) {
    chunk_t *done = j->p_head;
    j->p_head = done->next;
    done->next = j->w_free;
    j->w_free = done;
  }
  j->p_off = off;
  if (j->p_head && j->p_off == j->p_head->len) {
    chunk_t *done = j->p_head;
    j->p_head = done->next;
    j->p_off = 0;
    done->next = j->w_free;
    j->w_free = done;
  }
  if (!j->p_head) j->p_tail = NULL;
}

static void published(atp_journal_t *j, uint64_t lsn, uint64_t records,
                      uint64_t bytes) {
  /* The writer alone stores durable_lsn, so its own relaxed load is exact: a
   * group of `records` moves it forward by exactly that many LSNs. */
  ATP_ASSERT(records > 0 &&
             lsn - records ==
                 atomic_load_explicit(&j->durable_lsn, memory_order_relaxed));
  /* Release: whoever reads this LSN durable sees the writer's work before it. */
  atomic_store_explicit(&j->durable_lsn, lsn, memory_order_release);
  /* The bytes were counted in by their append before the writer could take
   * them (both under mu), so the count never goes below zero. */
  uint64_t queued =
      atomic_fetch_sub_explicit(&j->queued_bytes, bytes, memory_order_relaxed);
  ATP_ASSERT(queued >= bytes);
  count(&j->records_written, records);
  count(&j->bytes_written, bytes);
  count(&j->groups, 1);
  count(&j->group_records_sum, records);
  int b = 0;
  for (uint64_t limit = 1; b < ATP_JOURNAL_GROUP_BUCKETS - 1 && records > limit;
       limit *= 4)
    b++;
  count(&j->group_hist[b], 1);
  atomic_store_explicit(&j->last_group_records, records, memory_order_relaxed);
  atomic_store_explicit(&j->last_group_bytes, bytes, memory_order_relaxed);
}

/* Truncates the segment to its data end when zeroes follow it and makes that
 * durable, so that a closed segment holds records only: at a roll (returns
 * ROLL_NEEDED to go on) and at a clean close. Every byte before the data end
 * is durable then (groups are written one after the other). */
static int cut_zeroes(atp_journal_t *j) {
  if (j->seg_fd >= 0 && j->seg_file_bytes > j->seg_bytes) {
    ATP_ASSERT(j->seg_bytes == j->seg_durable_bytes);
    if (ftruncate(j->seg_fd, (off_t)j->seg_bytes) != 0)
      return io_error(j, errno, "truncating a segment to its data end");
    int err = sync_fd(j, j->seg_fd);
    if (err) return io_error(j, err, "syncing a truncated segment");
    j->seg_file_bytes = j->seg_bytes;
  }
  return ROLL_NEEDED;
}

/* After a zero-fill step failed or was skipped: no step before the pause is
 * over; the pause doubles up to ZERO_PAUSE_MS_MAX and a good step resets it. */
static void zero_pause(atp_journal_t *j) {
  j->zero_resume_ns = now_ns() + (int64_t)j->zero_pause_ms * 1000000;
  j->zero_pause_ms *= 2;
  if (j->zero_pause_ms > ZERO_PAUSE_MS_MAX) j->zero_pause_ms = ZERO_PAUSE_MS_MAX;
}

/* Whether a zero-fill step is due: idle (nothing queued) keeps
 * ZERO_AHEAD_IDLE bytes ahead, under load only ZERO_AHEAD_MIN. */
static bool zero_due(atp_journal_t *j, bool idle) {
  if (j->seg_fd < 0 || j->seg_file_bytes >= j->config.segment_bytes_max) return false;
  /* Large groups (batch ingestion) gain nothing from it: their fdatasync is
   * the data's writeback, and the zeroes would double the bytes written. */
  if (atomic_load_explicit(&j->last_group_bytes, memory_order_relaxed) >=
      ZERO_SKIP_GROUP_BYTES)
    return false;
  if (atomic_load_explicit(&j->state, memory_order_relaxed) != ATP_JOURNAL_OK)
    return false;
  uint64_t ahead = j->seg_file_bytes - j->seg_bytes;
  if (ahead >= (idle ? ZERO_AHEAD_IDLE : ZERO_AHEAD_MIN)) return false;
  return j->zero_resume_ns == 0 || now_ns() >= j->zero_resume_ns;
}

/* A zero-fill write that failed, or whose fdatasync did: undone (the file
 * cut back to from, so no page of a failed write is relied on) and
 * zero-filling paused. 0, or ATP_EUNAVAILABLE when it cannot be undone (as
 * any write error). */
static int zero_failed(atp_journal_t *j, uint64_t from, int err) {
  count(&j->prealloc_failures, 1);
  atp_log("warn",
          "journal: zero-filling ahead in %s failed: %s; plain appends for %u ms",
          j->dir, strerror(err), j->zero_pause_ms);
  zero_pause(j);
  if (ftruncate(j->seg_fd, (off_t)from) != 0)
    return io_error(j, errno, "cutting back a failed zero-fill");
  return 0;
}

/* Writes up to want bytes of zeroes after the file's end (not past
 * segment_bytes_max), not yet durable. Returns the bytes written, 0 when
 * none were (space is short, or the write failed and was undone), or
 * ATP_EUNAVAILABLE. */
static int64_t zero_write(atp_journal_t *j, uint64_t want) {
  static unsigned char zeros[256 * 1024]; /* .bss: never written */
  uint64_t from = j->seg_file_bytes, max = j->config.segment_bytes_max;
  uint64_t step = max - from < want ? max - from : want;
  struct statvfs sv;
  if (fstatvfs(j->seg_fd, &sv) == 0 &&
      (uint64_t)sv.f_bavail * sv.f_frsize < step + ZERO_RESERVE_BYTES) {
    zero_pause(j); /* space is short: plain appends */
    return 0;
  }
  int err = fault(j, 'z');
  for (uint64_t done = 0; !err && done < step;) {
    size_t n = step - done < sizeof zeros ? (size_t)(step - done) : sizeof zeros;
    ssize_t w = pwrite(j->seg_fd, zeros, n, (off_t)(from + done));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0)
      err = errno;
    else if (w == 0)
      err = ENOSPC;
    else
      done += (uint64_t)w;
  }
  if (err) return zero_failed(j, from, err);
  return (int64_t)step;
}

/* Zeroes from zero_write that an fdatasync has covered since. */
static void zeroes_durable(atp_journal_t *j, uint64_t bytes, int64_t ns) {
  j->seg_file_bytes += bytes;
  j->zero_pause_ms = ZERO_PAUSE_MS_MIN;
  j->zero_resume_ns = 0;
  count(&j->prealloc_steps, 1);
  count(&j->prealloc_bytes, bytes);
  count(&j->prealloc_ns_sum, (uint64_t)ns);
}

/* One zero-fill step of the idle writer: ZERO_STEP_BYTES of zeroes written
 * after the file's end and fdatasynced, when every byte written before is
 * durable. A failure is undone and pauses zero-filling; only a failure to
 * undo it fails the journal, as any write error. */
static int zero_step(atp_journal_t *j) {
  uint64_t from = j->seg_file_bytes;
  ATP_ASSERT(from >= j->seg_bytes && j->seg_bytes == j->seg_durable_bytes);
  int64_t start = now_ns();
  int64_t step = zero_write(j, ZERO_STEP_BYTES);
  if (step <= 0) return (int)step;
  if (fdatasync(j->seg_fd) != 0) return zero_failed(j, from, errno);
  zeroes_durable(j, (uint64_t)step, now_ns() - start);
  return 0;
}

/* Writes and syncs one group: the pending frames that fit in the segment.
 * 0, ROLL_NEEDED (the next frame needs a new segment) or ATP_EUNAVAILABLE. */
static int write_group(atp_journal_t *j) {
  struct iovec iov[GROUP_IOV_MAX];
  int n = 0;
  chunk_t *c = j->p_head;
  uint32_t off = j->p_off;
  uint64_t max = j->config.segment_bytes_max;
  uint64_t room = max > j->seg_bytes ? max - j->seg_bytes : 0;
  bool seg_empty = j->seg_bytes == ATP__JOURNAL_HEADER_BYTES;
  uint64_t group_first = 0, lsn = 0, bytes = 0, records = 0;
  while (c) {
    if (off == c->len) {
      c = c->next, off = 0;
      continue;
    }
    unsigned char *f = c->data + off;
    uint32_t frame_bytes = ATP__JOURNAL_FRAME_BYTES + atp__get32(f + 4);
    bool contiguous =
        n && (unsigned char *)iov[n - 1].iov_base + iov[n - 1].iov_len == f;
    if ((records || !seg_empty) && bytes + frame_bytes > room) break;
    if (!contiguous && n == GROUP_IOV_MAX) break;
    lsn = atp__get64(f + 8);
    if (!records) group_first = lsn;
    atp__put32(f + 20, (uint32_t)(lsn - group_first));
    atp__put32(f, atp__journal_frame_crc(j->seed, f));
    if (contiguous)
      iov[n - 1].iov_len += frame_bytes;
    else
      iov[n++] = (struct iovec){f, frame_bytes};
    bytes += frame_bytes, records++, off += frame_bytes;
  }
  if (!records) return ROLL_NEEDED;
  ATP_ASSERT(group_first ==
             atomic_load_explicit(&j->durable_lsn, memory_order_relaxed) + 1);
  int err = write_all(j, j->seg_fd, iov, n);
  if (err) return io_error(j, err, "writing records");
  j->seg_bytes += bytes;
  if (j->seg_file_bytes < j->seg_bytes) j->seg_file_bytes = j->seg_bytes;
  /* Under load the zeroes ahead come with the groups: a small group short
   * of them writes ZERO_GROUP_BYTES after the file's end, which its own
   * fdatasync makes durable (that one also writes the inode and the
   * zeroes, about a millisecond, once a MiB of records). A step of its own
   * between groups held the round while the loop handed its commits to the
   * writer thread and waited for it too, and woke that thread. Smaller
   * carries cost more in all: each one's fdatasync commits the file
   * system's journal (bench/RESULTS.md). Their time in prealloc_ns_sum is
   * the write; the fdatasync is the group's. */
  int64_t start = now_ns(), zeroes = 0;
  if (bytes < ZERO_SKIP_GROUP_BYTES && zero_due(j, false) &&
      (zeroes = zero_write(j, ZERO_GROUP_BYTES)) < 0)
    return (int)zeroes;
  int64_t zero_ns = now_ns() - start;
  if ((err = sync_fd(j, j->seg_fd))) return io_error(j, err, "fdatasync");
  if (zeroes > 0) zeroes_durable(j, (uint64_t)zeroes, zero_ns);
  j->seg_durable_bytes = j->seg_bytes;
  advance_pending(j, c, off);
  published(j, lsn, records, bytes);
  return 0;
}

/* Writes every pending record, rolling segments as they fill. */
static int write_pending(atp_journal_t *j) {
  while (j->p_head) {
    int rc = write_group(j);
    if (rc == ROLL_NEEDED) rc = cut_zeroes(j);
    if (rc == ROLL_NEEDED)
      rc = create_segment(
          j, atomic_load_explicit(&j->durable_lsn, memory_order_relaxed) + 1);
    if (rc) return rc;
  }
  return 0;
}

/* --- the writer thread ------------------------------------------------------ */

/* Under mu: moves the queue to the end of the pending list and takes back the
 * chunks the writer freed. */
static void take_queue(atp_journal_t *j) {
  if (j->q_head) {
    if (j->p_tail)
      j->p_tail->next = j->q_head;
    else
      j->p_head = j->q_head, j->p_off = 0;
    j->p_tail = j->q_tail;
    j->q_head = j->q_tail = NULL;
    j->q_bytes = 0;
  }
  while (j->w_free) {
    chunk_t *c = j->w_free;
    j->w_free = c->next;
    if (c->cap == CHUNK_BYTES && j->free_count < FREE_CHUNKS_MAX) {
      c->len = 0;
      c->next = j->free_chunks;
      j->free_chunks = c;
      j->free_count++;
    } else {
      atp_free(c);
    }
  }
}

static void timed_wait(atp_journal_t *j, pthread_cond_t *cond, int64_t deadline_ns) {
  struct timespec ts = ns_to_ts(deadline_ns);
  pthread_cond_timedwait(cond, &j->mu, &ts);
}

/* The smallest ticket that may not have appended yet, given t0, the counter
 * read first: the slots are read after it (seq_cst), so a mutation whose
 * ticket is below t0 has its slot's lower bound visible here, or has ended:
 * and since its append ran under mu before its end, its records are in the
 * queue the writer takes after this scan. */
static uint64_t horizon_scan_of(atp_journal_t *j, uint64_t t0, bool committers) {
  uint64_t h = t0;
  uint32_t used = atomic_load(&j->slots_used);
  for (uint32_t i = 0; i < used; i++) {
    if (!committers && atomic_load_explicit(&j->slots[i].commits, memory_order_relaxed))
      continue;
    uint64_t t = atomic_load(&j->slots[i].ticket);
    if (t && t < h) h = t;
  }
  return h;
}

static uint64_t horizon_scan(atp_journal_t *j, uint64_t t0) {
  return horizon_scan_of(j, t0, true);
}

/* Under mu, with records queued: whether the group starts now, else the
 * time until which it may gather (the policy is in include/atp/journal.h).
 * always never gathers. batch gathers only when group commit found nothing
 * to share: the writer was idle as the first record came (a backlog that
 * queued during the last write has waited one fdatasync already and goes at
 * once) and the last group held a single record. Under load every group
 * shares its fdatasync and batch runs like always (a closed loop of
 * clients loses whatever a writer waits); under sparse traffic from many
 * clients it trades at most min(batch_delay_us, the last fdatasync's
 * duration) of latency for fewer fdatasyncs. none gathers up to flush_ms:
 * nobody waits for it. */
static bool group_ready(atp_journal_t *j, int64_t *deadline) {
  if (j->stopping || j->q_bytes >= j->gather_bytes) return true;
  switch (j->config.mode) {
    case ATP_JOURNAL_ALWAYS:
      return true;
    case ATP_JOURNAL_BATCH: {
      if (j->q_first_ns <=
              atomic_load_explicit(&j->last_group_end_ns, memory_order_relaxed) ||
          atomic_load_explicit(&j->last_group_records, memory_order_relaxed) > 1)
        return true;
      int64_t fsync_ns = atomic_load_explicit(&j->last_fsync_ns, memory_order_relaxed);
      int64_t gather = j->gather_ns < fsync_ns ? j->gather_ns : fsync_ns;
      *deadline = j->q_first_ns + gather;
      break;
    }
    default:
      *deadline = j->q_first_ns + j->gather_ns;
      break;
  }
  return now_ns() >= *deadline;
}

/* Under mu, after a round failed: FAILED, and the next retry's backoff (the
 * first after a failure, or doubled after a failed retry). */
static void round_failed(atp_journal_t *j, bool retry) {
  if (!retry)
    j->retry_ms = j->config.retry_ms_min;
  else if ((j->retry_ms *= 2) > j->config.retry_ms_max)
    j->retry_ms = j->config.retry_ms_max;
  atomic_store_explicit(&j->state, ATP_JOURNAL_FAILED, memory_order_release);
}

/* Under mu: waits until a group should start. false: stop the thread. */
static bool wait_for_group(atp_journal_t *j) {
  bool gathered = false;
  for (;;) {
    if (atomic_load_explicit(&j->state, memory_order_relaxed) == ATP_JOURNAL_FAILED) {
      if (!j->stopping)
        timed_wait(j, &j->wake, now_ns() + (int64_t)j->retry_ms * 1000000);
      return true;
    }
    if (!j->q_head) {
      /* The pending list belongs to round_mu's holder: a committing
       * thread's round may be writing it now. Records left in it by a round
       * that failed are the FAILED state's, above; one in progress is not
       * read, and the writer does not stop under it at close. */
      bool round_busy = pthread_mutex_trylock(&j->round_mu) != 0, pending = false;
      if (!round_busy) {
        pending = j->p_head != NULL;
        pthread_mutex_unlock(&j->round_mu);
      }
      if (pending) return true;
      if (j->stopping && !round_busy) return false;
      /* seq_cst against atp_journal_end's store of wanted and load of
       * writer_idle: either it sees the writer idle and signals (under mu, so
       * the writer is then inside the wait), or the writer sees its wanted. */
      /* A horizon-only group runs only when it can move the horizon: while
       * a slot below it is held (a tick expiring many holds takes
       * milliseconds), the writer sleeps instead of spinning, and that
       * slot's end wakes it (the same seq_cst pairing: the end's store of
       * its slot and load of writer_idle against the writer's store of
       * writer_idle and the scan's loads). */
      atomic_store(&j->writer_idle, true);
      uint64_t durable = atomic_load(&j->durable_ticket);
      if (atomic_load(&j->wanted) > durable &&
          horizon_scan(j, atomic_load(&j->tickets)) > durable) {
        atomic_store(&j->writer_idle, false);
        return true; /* a horizon-only group */
      }
      /* Nothing to write: time to zero-fill ahead, once no group has been
       * written for ZERO_QUIET_NS. Under load the groups carry their own
       * zeroes, and a step (milliseconds) would hold the round while a loop
       * that commits its own groups hands them over and waits for it; so a
       * writer woken under load (a hand-off, another thread's record) does
       * not step, it looks again when the quiet time is over. A record or
       * an end that comes during a step is seen by the checks above when the
       * step is over (its signal finds nobody waiting, the loop looks again). */
      int64_t look_again = 0;
      if (pthread_mutex_trylock(&j->round_mu) != 0) {
        look_again = now_ns() + ZERO_QUIET_NS; /* a committing thread's round */
      } else {
        bool due = zero_due(j, true);
        int64_t quiet =
            atomic_load_explicit(&j->last_group_end_ns, memory_order_relaxed) +
            ZERO_QUIET_NS;
        if (due && now_ns() < quiet) due = false, look_again = quiet;
        if (due) {
          atomic_store(&j->writer_idle, false);
          pthread_mutex_unlock(&j->mu);
          int rc = zero_step(j);
          pthread_mutex_lock(&j->mu);
          if (rc) round_failed(j, false);
        }
        pthread_mutex_unlock(&j->round_mu);
        if (due) continue;
      }
      j->writer_sleeping = true;
      if (look_again)
        timed_wait(j, &j->wake, look_again);
      else
        pthread_cond_wait(&j->wake, &j->mu);
      j->writer_sleeping = false;
      atomic_store(&j->writer_idle, false);
      continue;
    }
    int64_t deadline = 0;
    if (group_ready(j, &deadline)) {
      if (gathered) count(&j->gathers, 1);
      return true;
    }
    gathered = true;
    j->writer_sleeping = true;
    timed_wait(j, &j->wake, deadline);
    j->writer_sleeping = false;
  }
}

/* Not under mu, before a group is taken: the horizon the group will publish.
 * A mutation in flight when the group forms (begun, its hook not yet run)
 * would otherwise hold the horizon below its ticket, and its answer, whose
 * record this group may well carry, would wait for the next group: at a
 * closed loop of clients, every answer would take two fdatasyncs. So the
 * writer reads the counter once and waits, yielding, until every ticket
 * below it has ended (a mutation is a few microseconds of a loop's time),
 * then takes the queue: every mutation that began before the counter was
 * read is then released by the group that holds its own record. The wait is
 * bounded by HORIZON_WAIT_NS (a tick expiring many holds holds its slot for
 * milliseconds); past it the group publishes the lower horizon it found,
 * which is as correct, only later for the slow mutation's followers. */
#define HORIZON_WAIT_NS 200000
static uint64_t settle_horizon(atp_journal_t *j) {
  uint64_t t0 = atomic_load(&j->tickets);
  /* A loop that commits its own groups is not waited for: what it has in
   * flight (a batch's slice holds its slot for a millisecond) it commits, or
   * hands over, at the end of its turn, so spinning for it only takes the
   * CPU from it. */
  uint64_t h = horizon_scan_of(j, t0, false);
  if (h < t0) {
    count(&j->horizon_waits, 1);
    int64_t deadline = now_ns() + HORIZON_WAIT_NS;
    for (uint32_t spins = 0; h < t0; spins++) {
      if (spins >= 16 && now_ns() >= deadline) {
        count(&j->horizon_timeouts, 1);
        break;
      }
      sched_yield();
      h = horizon_scan_of(j, t0, false);
    }
  }
  return horizon_scan(j, t0);
}

/* Under mu, after a round wrote everything it took: every ticket below h is
 * durable too. Release: whoever reads the ticket durable sees the LSN
 * published before it. A round that moved neither wakes nobody (one wake-up
 * per group). */
static void round_published(atp_journal_t *j, uint64_t h, bool records) {
  bool moved = records;
  if (h > atomic_load_explicit(&j->durable_ticket, memory_order_relaxed)) {
    atomic_store_explicit(&j->durable_ticket, h, memory_order_release);
    moved = true;
  }
  if (!records) count(&j->empty_rounds, 1);
  if (moved && j->config.on_durable)
    j->config.on_durable(j->config.durable_ctx,
                         atomic_load_explicit(&j->durable_lsn, memory_order_relaxed));
}

static void *writer_main(void *arg) {
  atp_journal_t *j = arg;
  pthread_mutex_lock(&j->mu);
  while (wait_for_group(j)) {
    pthread_mutex_unlock(&j->mu);
    pthread_mutex_lock(&j->round_mu);
    uint64_t h = settle_horizon(j);
    pthread_mutex_lock(&j->mu);
    /* Once more under mu, with the counter read again: a mutation that ended
     * by now appended under mu before, so its records are in what is taken
     * next and its answer can go with this group too (no extra round). */
    uint64_t h2 = horizon_scan(j, atomic_load(&j->tickets));
    if (h2 > h) h = h2;
    take_queue(j);
    count(&j->rounds, 1);
    bool failed =
        atomic_load_explicit(&j->state, memory_order_relaxed) == ATP_JOURNAL_FAILED;
    bool records = j->p_head != NULL;
    pthread_mutex_unlock(&j->mu);
    int rc = failed ? recover(j) : 0;
    if (rc == 0) rc = write_pending(j);
    if (records)
      atomic_store_explicit(&j->last_group_end_ns, now_ns(), memory_order_relaxed);
    pthread_mutex_lock(&j->mu);
    if (rc != 0) {
      round_failed(j, failed);
      if (j->stopping && failed) {
        j->unwritten_at_close = true;
        pthread_mutex_unlock(&j->round_mu);
        break;
      }
    } else if (failed) {
      atomic_store_explicit(&j->state, ATP_JOURNAL_OK, memory_order_release);
      count(&j->recoveries, 1);
      atp_log("info", "journal: writes to %s succeed again; durable LSN %" PRIu64,
              j->dir, atomic_load_explicit(&j->durable_lsn, memory_order_relaxed));
    }
    if (rc == 0) round_published(j, h, records);
    pthread_cond_broadcast(&j->done);
    pthread_mutex_unlock(&j->mu);
    pthread_mutex_unlock(&j->round_mu);
    pthread_mutex_lock(&j->mu);
  }
  take_queue(j);
  pthread_cond_broadcast(&j->done);
  pthread_mutex_unlock(&j->mu);
  return NULL;
}

/* --- producers -------------------------------------------------------------- */

/* Under mu: a chunk with room for frame_bytes at the end of the queue. */
static chunk_t *queue_room(atp_journal_t *j, uint32_t frame_bytes) {
  chunk_t *c = j->q_tail;
  if (c && c->cap - c->len >= frame_bytes) return c;
  if (frame_bytes <= CHUNK_BYTES && j->free_chunks) {
    c = j->free_chunks;
    j->free_chunks = c->next;
    j->free_count--;
  } else {
    uint32_t cap = frame_bytes > CHUNK_BYTES ? frame_bytes : CHUNK_BYTES;
    if (!(c = atp_malloc(sizeof *c + cap))) return NULL;
    c->cap = cap;
  }
  c->next = NULL;
  c->len = 0;
  if (j->q_tail)
    j->q_tail->next = c;
  else
    j->q_head = c;
  j->q_tail = c;
  return c;
}

int atp_journal_appendv(atp_journal_t *j, uint16_t kind, const struct iovec *iov,
                        int iovcnt, uint64_t *lsn) {
  ATP_ASSERT(kind != 0 && iovcnt >= 0 && (iovcnt == 0 || iov));
  size_t payload_bytes = 0;
  for (int i = 0; i < iovcnt; i++) payload_bytes += iov[i].iov_len;
  if (payload_bytes > ATP_JOURNAL_RECORD_BYTES_MAX) return ATP_ETOOLARGE;
  uint32_t frame_bytes = ATP__JOURNAL_FRAME_BYTES + (uint32_t)payload_bytes;
  pthread_mutex_lock(&j->mu);
  chunk_t *c = j->stopping ? NULL : queue_room(j, frame_bytes);
  if (!c) {
    int rc = j->stopping ? ATP_EUNAVAILABLE : ATP_ENOMEM;
    pthread_mutex_unlock(&j->mu);
    return rc;
  }
  unsigned char *f = c->data + c->len;
  memset(f, 0, ATP__JOURNAL_FRAME_BYTES); /* crc and group_delta: the writer's */
  atp__put32(f + 4, (uint32_t)payload_bytes);
  atp__put64(f + 8, j->next_lsn);
  atp__put16(f + 16, kind);
  unsigned char *p = f + ATP__JOURNAL_FRAME_BYTES;
  for (int i = 0; i < iovcnt; i++) {
    if (iov[i].iov_len) memcpy(p, iov[i].iov_base, iov[i].iov_len);
    p += iov[i].iov_len;
  }
  c->len += frame_bytes;
  *lsn = j->next_lsn++;
  bool was_empty = j->q_bytes == 0;
  if (was_empty) j->q_first_ns = now_ns();
  j->q_bytes += frame_bytes;
  /* A committing thread's backlog goes to the writer thread only once it is
   * too large for the loop to write (always mode's gather_bytes is 1). */
  bool committer = tls_committer == j->instance;
  uint64_t start_at = committer && j->gather_bytes < ATP_JOURNAL_COMMIT_BYTES_MAX
                          ? ATP_JOURNAL_COMMIT_BYTES_MAX
                          : j->gather_bytes;
  bool crossed = j->q_bytes >= start_at && j->q_bytes - frame_bytes < start_at;
  /* LSNs are handed out one by one under mu, which alone writes assigned_lsn. */
  ATP_ASSERT(*lsn == atomic_load_explicit(&j->assigned_lsn, memory_order_relaxed) + 1);
  /* Release: a thread that reads this LSN as assigned and then waits for it
   * durable waits for this record. */
  atomic_store_explicit(&j->assigned_lsn, *lsn, memory_order_release);
  count(&j->queued_bytes, frame_bytes);
  /* A committing thread writes its own records at the end of its turn; a
   * large backlog still goes to the writer thread (crossed). */
  if (j->writer_sleeping && ((was_empty && !committer) || crossed))
    pthread_cond_signal(&j->wake);
  pthread_mutex_unlock(&j->mu);
  return 0;
}

int atp_journal_append(atp_journal_t *j, uint16_t kind, const void *payload,
                       uint32_t payload_bytes, uint64_t *lsn) {
  struct iovec iov = {(void *)payload, payload_bytes};
  return atp_journal_appendv(j, kind, &iov, 1, lsn);
}

int atp_journal_admit(atp_journal_t *j) {
  if (atomic_load_explicit(&j->state, memory_order_acquire) != ATP_JOURNAL_OK)
    return ATP_EUNAVAILABLE;
  if (atomic_load_explicit(&j->queued_bytes, memory_order_relaxed) >=
      j->config.queue_bytes_max)
    return ATP_EFULL;
  return 0;
}

/* --- the ticket horizon ------------------------------------------------------ */

void atp_journal_begin(atp_journal_t *j, uint32_t slot) {
  ATP_ASSERT(slot < ATP_JOURNAL_SLOTS_MAX);
  ATP_ASSERT(atomic_load_explicit(&j->slots[slot].ticket, memory_order_relaxed) == 0);
  uint32_t used = atomic_load_explicit(&j->slots_used, memory_order_relaxed);
  while (used <= slot &&
         !atomic_compare_exchange_weak(&j->slots_used, &used, slot + 1)) {
  }
  /* The lower bound first: between the fetch_add and the store of the ticket
   * the writer must already see something no larger than it. */
  atomic_store(&j->slots[slot].ticket, atomic_load(&j->tickets));
  uint64_t ticket = atomic_fetch_add(&j->tickets, 1);
  atomic_store(&j->slots[slot].ticket, ticket);
}

uint64_t atp_journal_end(atp_journal_t *j, uint32_t slot) {
  ATP_ASSERT(slot < ATP_JOURNAL_SLOTS_MAX);
  atomic_store(&j->slots[slot].ticket, 0);
  uint64_t target = atomic_load(&j->tickets);
  if (atomic_load_explicit(&j->durable_ticket, memory_order_acquire) >= target)
    return target;
  uint64_t w = atomic_load(&j->wanted);
  while (w < target && !atomic_compare_exchange_weak(&j->wanted, &w, target)) {
  }
  if (atomic_load(&j->writer_idle) &&
      !atomic_load_explicit(&j->slots[slot].commits, memory_order_relaxed)) {
    pthread_mutex_lock(&j->mu);
    pthread_cond_signal(&j->wake);
    pthread_mutex_unlock(&j->mu);
  }
  return target;
}

/* --- groups committed by the producing thread ------------------------------ */

void atp_journal_own_commits(atp_journal_t *j, uint32_t slot) {
  ATP_ASSERT(slot < ATP_JOURNAL_SLOTS_MAX);
  if (j->config.mode == ATP_JOURNAL_NONE) return;
  tls_committer = j->instance;
  atomic_store(&j->slots[slot].commits, true);
}

/* Whether some appended record is not durable yet: two relaxed loads, for a
 * loop's per-turn questions (a stale answer only skips or adds a round). */
static bool records_pending(const atp_journal_t *j) {
  return atomic_load_explicit(&j->assigned_lsn, memory_order_relaxed) !=
         atomic_load_explicit(&j->durable_lsn, memory_order_relaxed);
}

int64_t atp_journal_gather_ns(atp_journal_t *j) {
  if (j->config.mode != ATP_JOURNAL_BATCH) return 0;
  /* Every turn of the loop asks: with nothing appended, no mutex. */
  if (!records_pending(j)) return 0;
  int64_t left = 0;
  pthread_mutex_lock(&j->mu);
  if (j->q_head && j->q_bytes < ATP_JOURNAL_COMMIT_BYTES_MAX) {
    int64_t fsync_ns = atomic_load_explicit(&j->last_fsync_ns, memory_order_relaxed);
    int64_t gather = j->gather_ns < fsync_ns ? j->gather_ns : fsync_ns;
    left = j->q_first_ns + gather - now_ns();
  }
  pthread_mutex_unlock(&j->mu);
  return left > 0 ? left : 0;
}

/* Wakes the writer thread for what a committing thread leaves to it. */
static void hand_off(atp_journal_t *j) {
  count(&j->loop_handoffs, 1);
  pthread_mutex_lock(&j->mu);
  if (j->writer_sleeping) pthread_cond_signal(&j->wake);
  pthread_mutex_unlock(&j->mu);
}

/* A round of the writer's on the calling thread: the same steps as
 * writer_main's (horizon, take, write, sync, publish) without the horizon's
 * wait, since the caller's own mutations have all ended (a mutation of
 * another thread still in flight holds the published horizon back, and its
 * end wakes the writer thread for the rest, as always). Anything unusual is
 * the writer thread's: a failed journal, a backlog too large to write while
 * a loop waits, or the writer busy with a round or a zero-fill step. */
bool atp_journal_commit(atp_journal_t *j) {
  if (j->config.mode == ATP_JOURNAL_NONE) return false;
  uint64_t durable = atomic_load_explicit(&j->durable_ticket, memory_order_acquire);
  bool pending = records_pending(j);
  if (!pending && atomic_load(&j->wanted) <= durable) return false;
  if (atomic_load_explicit(&j->queued_bytes, memory_order_relaxed) >
          ATP_JOURNAL_COMMIT_BYTES_MAX ||
      atomic_load_explicit(&j->state, memory_order_relaxed) != ATP_JOURNAL_OK ||
      pthread_mutex_trylock(&j->round_mu) != 0) {
    hand_off(j);
    return false;
  }
  pthread_mutex_lock(&j->mu);
  if (j->stopping ||
      atomic_load_explicit(&j->state, memory_order_relaxed) != ATP_JOURNAL_OK) {
    pthread_mutex_unlock(&j->mu);
    pthread_mutex_unlock(&j->round_mu);
    hand_off(j);
    return false;
  }
  /* Under mu, as in writer_main: a mutation that ended has appended under mu
   * before, so its records are in what is taken. */
  uint64_t h = horizon_scan(j, atomic_load(&j->tickets));
  take_queue(j);
  bool records = j->p_head != NULL;
  pthread_mutex_unlock(&j->mu);
  count(&j->rounds, 1);
  count(&j->loop_rounds, 1);
  int rc = write_pending(j);
  if (records)
    atomic_store_explicit(&j->last_group_end_ns, now_ns(), memory_order_relaxed);
  pthread_mutex_lock(&j->mu);
  if (rc != 0)
    round_failed(j, false); /* the records stay pending, the writer retries */
  else
    round_published(j, h, records);
  pthread_cond_broadcast(&j->done);
  if (rc != 0 && j->writer_sleeping) pthread_cond_signal(&j->wake);
  pthread_mutex_unlock(&j->mu);
  pthread_mutex_unlock(&j->round_mu);
  return rc == 0;
}

uint64_t atp_journal_durable_ticket(const atp_journal_t *j) {
  return atomic_load_explicit(&j->durable_ticket, memory_order_acquire);
}

/* --- getters ---------------------------------------------------------------- */

uint64_t atp_journal_durable_lsn(const atp_journal_t *j) {
  return atomic_load_explicit(&j->durable_lsn, memory_order_acquire);
}

uint64_t atp_journal_assigned_lsn(const atp_journal_t *j) {
  return atomic_load_explicit(&j->assigned_lsn, memory_order_acquire);
}

atp_journal_state_t atp_journal_state(const atp_journal_t *j) {
  return (atp_journal_state_t)atomic_load_explicit(&j->state, memory_order_acquire);
}

int atp_journal_wait(atp_journal_t *j, uint64_t lsn, int64_t timeout_ms) {
  int64_t deadline = now_ns() + timeout_ms * 1000000;
  int rc = 0;
  pthread_mutex_lock(&j->mu);
  while (atp_journal_durable_lsn(j) < lsn) {
    if (atp_journal_state(j) != ATP_JOURNAL_OK) {
      rc = ATP_EUNAVAILABLE;
      break;
    }
    if (now_ns() >= deadline) {
      rc = ATP_ETOOMANY;
      break;
    }
    timed_wait(j, &j->done, deadline);
  }
  pthread_mutex_unlock(&j->mu);
  return rc;
}

#define LOAD(field) atomic_load_explicit(&j->field, memory_order_relaxed)

void atp_journal_metrics(const atp_journal_t *j, atp_journal_metrics_t *out) {
  memset(out, 0, sizeof *out);
  out->state = atp_journal_state(j);
  out->last_errno = LOAD(last_errno);
  out->durable_lsn = LOAD(durable_lsn);
  out->assigned_lsn = LOAD(assigned_lsn);
  out->queued_bytes = LOAD(queued_bytes);
  out->records_written = LOAD(records_written);
  out->bytes_written = LOAD(bytes_written);
  out->groups = LOAD(groups);
  out->group_records_sum = LOAD(group_records_sum);
  for (int i = 0; i < ATP_JOURNAL_GROUP_BUCKETS; i++)
    out->group_hist[i] = LOAD(group_hist[i]);
  out->fsyncs = LOAD(fsyncs);
  out->fsync_ns_sum = LOAD(fsync_ns_sum);
  for (int i = 0; i < ATP_JOURNAL_FSYNC_BUCKETS; i++)
    out->fsync_hist[i] = LOAD(fsync_hist[i]);
  out->failures = LOAD(failures);
  out->recoveries = LOAD(recoveries);
  out->segments = LOAD(segment_files);
  out->tail_bytes_truncated = j->tail_bytes;
  out->tail_records_truncated = j->tail_records;
  out->rounds = LOAD(rounds);
  out->empty_rounds = LOAD(empty_rounds);
  out->horizon_waits = LOAD(horizon_waits);
  out->horizon_timeouts = LOAD(horizon_timeouts);
  out->gathers = LOAD(gathers);
  out->loop_rounds = LOAD(loop_rounds);
  out->loop_handoffs = LOAD(loop_handoffs);
  out->prealloc_steps = LOAD(prealloc_steps);
  out->prealloc_bytes = LOAD(prealloc_bytes);
  out->prealloc_ns_sum = LOAD(prealloc_ns_sum);
  out->prealloc_failures = LOAD(prealloc_failures);
}

/* --- trim ------------------------------------------------------------------- */

int atp_journal_trim(atp_journal_t *j, uint64_t covered_lsn) {
  int removed = 0, rc = 0;
  pthread_mutex_lock(&j->seg_mu);
  /* Segment k holds LSNs segs[k] .. segs[k + 1] - 1; the last one is open. */
  while ((uint32_t)removed + 1 < j->seg_count &&
         j->segs[removed + 1] <= covered_lsn + 1) {
    char path[ATP__JOURNAL_PATH_BYTES];
    if (atp__journal_path(path, sizeof path, j->dir, j->segs[removed], false) != 0 ||
        (unlink(path) != 0 && errno != ENOENT)) {
      atp_log("error", "journal: removing %s: %s", path, strerror(errno));
      rc = ATP_EUNAVAILABLE;
      break;
    }
    removed++;
  }
  if (removed)
    memmove(j->segs, j->segs + removed,
            (j->seg_count - (uint32_t)removed) * sizeof *j->segs);
  j->seg_count -= (uint32_t)removed;
  atomic_store_explicit(&j->segment_files, j->seg_count, memory_order_relaxed);
  pthread_mutex_unlock(&j->seg_mu);
  if (removed && fsync(j->dir_fd) != 0) rc = ATP_EUNAVAILABLE;
  return rc ? rc : removed;
}

/* --- open and close --------------------------------------------------------- */

static void fill_defaults(atp_journal_t *j, const atp_journal_config_t *config) {
  atp_journal_config_t *c = &j->config;
  *c = *config;
  if (!c->segment_bytes_max) c->segment_bytes_max = ATP_JOURNAL_SEGMENT_BYTES_DEFAULT;
  if (!c->queue_bytes_max) c->queue_bytes_max = ATP_JOURNAL_QUEUE_BYTES_DEFAULT;
  if (!c->batch_delay_us) c->batch_delay_us = 1000;
  if (!c->batch_bytes) c->batch_bytes = 256 * 1024;
  if (!c->flush_ms) c->flush_ms = 10;
  if (!c->retry_ms_min) c->retry_ms_min = 10;
  if (!c->retry_ms_max) c->retry_ms_max = 1000;
  if (c->retry_ms_max < c->retry_ms_min) c->retry_ms_max = c->retry_ms_min;
  j->gather_ns = c->mode == ATP_JOURNAL_ALWAYS  ? 0
                 : c->mode == ATP_JOURNAL_BATCH ? (int64_t)c->batch_delay_us * 1000
                                                : (int64_t)c->flush_ms * 1000000;
  j->gather_bytes = c->mode == ATP_JOURNAL_ALWAYS ? 1 : c->batch_bytes;
  j->fsync_delay_ms = c->fsync_delay_ms;
  const char *env = getenv("ATPD_TEST_FSYNC_DELAY_MS");
  if (env && *env) j->fsync_delay_ms = (uint32_t)strtoul(env, NULL, 10);
  j->retry_ms = c->retry_ms_min;
  j->zero_pause_ms = ZERO_PAUSE_MS_MIN;
  j->seg_fd = j->dir_fd = j->lock_fd = -1;
}

/* Creates the directory if needed, opens it and takes its lock. */
static int open_dir(atp_journal_t *j, atp_journal_scan_t *scan) {
  if (mkdir(j->dir, 0755) != 0 && errno != EEXIST) {
    snprintf(scan->error, sizeof scan->error, "journal: mkdir %s: %s", j->dir,
             strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  char path[ATP__JOURNAL_PATH_BYTES];
  j->dir_fd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (j->dir_fd >= 0 &&
      snprintf(path, sizeof path, "%s/LOCK", j->dir) < (int)sizeof path)
    j->lock_fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (j->dir_fd < 0 || j->lock_fd < 0) {
    snprintf(scan->error, sizeof scan->error, "journal: open %s: %s", j->dir,
             strerror(errno));
    return ATP_EUNAVAILABLE;
  }
  if (flock(j->lock_fd, LOCK_EX | LOCK_NB) != 0) {
    snprintf(scan->error, sizeof scan->error,
             "journal: %s is in use by another process", j->dir);
    return ATP_ECONFLICT;
  }
  return 0;
}

/* Opens the last segment for appending when the journal continues in it,
 * else starts a new one at next_lsn. */
static int open_segment(atp_journal_t *j, const atp__journal_dir_t *d,
                        atp_journal_scan_t *scan) {
  if (d->seg_count && d->last_expected == d->next_lsn) {
    char path[ATP__JOURNAL_PATH_BYTES] = "";
    uint64_t first = j->segs[j->seg_count - 1];
    if (atp__journal_path(path, sizeof path, j->dir, first, false) == 0)
      j->seg_fd = open(path, O_WRONLY | O_CLOEXEC);
    if (j->seg_fd < 0 || lseek(j->seg_fd, (off_t)d->last_bytes, SEEK_SET) < 0) {
      snprintf(scan->error, sizeof scan->error, "journal: open %s: %s", path,
               strerror(errno));
      return ATP_EUNAVAILABLE;
    }
    j->seg_bytes = j->seg_durable_bytes = d->last_bytes;
    /* Zeroes after the data end, left by the last process: space to
     * overwrite (a crash mid-step may have left some not yet durable, which
     * only costs the first fdatasync over them its speed). */
    j->seg_file_bytes =
        d->last_file_bytes > d->last_bytes ? d->last_file_bytes : d->last_bytes;
    return 0;
  }
  int rc = create_segment(j, d->next_lsn);
  if (rc)
    snprintf(scan->error, sizeof scan->error, "journal: creating a segment in %s: %s",
             j->dir, strerror(atomic_load(&j->last_errno)));
  return rc;
}

static int start(atp_journal_t *j, atp__journal_dir_t *d, atp_journal_scan_t *scan) {
  j->journal_id = d->journal_id;
  while (!j->journal_id && getrandom(&j->journal_id, sizeof j->journal_id, 0) < 0)
    j->journal_id = (uint64_t)atp_wall_ms() ^ ((uint64_t)getpid() << 32);
  j->seed = atp__journal_seed(j->journal_id);
  j->segs = d->segs, j->seg_count = d->seg_count, j->seg_cap = d->seg_cap;
  d->segs = NULL;
  atomic_store(&j->segment_files, j->seg_count);
  j->next_lsn = d->next_lsn;
  atomic_store(&j->assigned_lsn, d->next_lsn - 1);
  atomic_store(&j->durable_lsn, d->next_lsn - 1);
  atomic_store(&j->tickets, 1);
  atomic_store(&j->durable_ticket, 1);
  j->tail_bytes = scan->tail_bytes;
  j->tail_records = scan->tail_records;
  int rc = open_segment(j, d, scan);
  if (rc == 0 && pthread_create(&j->thread, NULL, writer_main, j) != 0) {
    snprintf(scan->error, sizeof scan->error,
             "journal: cannot start the writer thread");
    rc = ATP_ENOMEM;
  }
  return rc;
}

static void destroy(atp_journal_t *j) {
  chunk_t *lists[] = {j->q_head, j->p_head, j->free_chunks, j->w_free};
  for (size_t i = 0; i < sizeof lists / sizeof *lists; i++)
    for (chunk_t *c = lists[i], *next; c; c = next) next = c->next, atp_free(c);
  if (j->seg_fd >= 0) close(j->seg_fd);
  if (j->lock_fd >= 0) close(j->lock_fd); /* releases the flock */
  if (j->dir_fd >= 0) close(j->dir_fd);
  pthread_mutex_destroy(&j->mu);
  pthread_mutex_destroy(&j->seg_mu);
  pthread_mutex_destroy(&j->round_mu);
  pthread_cond_destroy(&j->wake);
  pthread_cond_destroy(&j->done);
  atp_free(j->segs);
  atp_free(j->dir);
  atp_free(j);
}

int atp_journal_open(const atp_journal_config_t *config, uint64_t covered_lsn,
                     atp_journal_record_fn fn, void *ctx, atp_journal_scan_t *scan,
                     atp_journal_t **out) {
  ATP_ASSERT(config && config->dir && scan && out);
  ATP_ASSERT(config->mode >= ATP_JOURNAL_NONE && config->mode <= ATP_JOURNAL_ALWAYS);
  memset(scan, 0, sizeof *scan);
  *out = NULL;
  size_t dir_len = strlen(config->dir);
  if (dir_len + 40 > ATP__JOURNAL_PATH_BYTES) {
    snprintf(scan->error, sizeof scan->error, "journal: directory name too long");
    return ATP_ETOOLARGE;
  }
  atp_journal_t *j = atp_calloc(1, sizeof *j);
  if (!j || !(j->dir = atp_malloc(dir_len + 1))) {
    atp_free(j);
    return ATP_ENOMEM;
  }
  memcpy(j->dir, config->dir, dir_len + 1);
  fill_defaults(j, config);
  j->instance = atomic_fetch_add(&instances, 1) + 1;
  j->config.dir = j->dir;
  pthread_condattr_t attr;
  pthread_condattr_init(&attr);
  pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
  pthread_mutex_init(&j->mu, NULL);
  pthread_mutex_init(&j->round_mu, NULL);
  pthread_mutex_init(&j->seg_mu, NULL);
  pthread_cond_init(&j->wake, &attr);
  pthread_cond_init(&j->done, &attr);
  pthread_condattr_destroy(&attr);
  atp__journal_dir_t d = {0};
  int rc = open_dir(j, scan);
  if (rc == 0) rc = atp__journal_scan(j->dir, covered_lsn, fn, ctx, true, scan, &d);
  if (rc == 0) rc = start(j, &d, scan);
  atp_free(d.segs);
  if (rc) {
    destroy(j);
    return rc;
  }
  *out = j;
  return 0;
}

int atp_journal_close(atp_journal_t *j) {
  pthread_mutex_lock(&j->mu);
  j->stopping = true;
  pthread_cond_signal(&j->wake);
  pthread_mutex_unlock(&j->mu);
  pthread_join(j->thread, NULL);
  /* A clean close leaves no zeroes after the data: the segment reads like a
   * closed one. Failing to cut them loses nothing (they read as a clean end). */
  if (!j->unwritten_at_close &&
      atomic_load_explicit(&j->state, memory_order_relaxed) == ATP_JOURNAL_OK)
    (void)cut_zeroes(j);
  int rc = j->unwritten_at_close ? ATP_EUNAVAILABLE : 0;
  if (rc)
    atp_log("error", "journal: closed with records after LSN %" PRIu64 " unwritten",
            atomic_load(&j->durable_lsn));
  atomic_store(&j->state, ATP_JOURNAL_CLOSED);
  destroy(j);
  return rc;
}
