/* journal.h - the write-ahead journal: segment files of checksummed records
 * with group commit on a writer thread of its own.
 *
 * A record is opaque to the journal: a kind (uint16, nonzero) and payload
 * bytes. Each gets the next LSN (log sequence number: 1, 2, 3, ... without
 * gaps over the journal's life) when it is appended; proto/journal.md gives
 * the bytes on disk. The directory holds segment files named by their first
 * LSN; the last one is appended to and a new one starts when it reaches
 * segment_bytes_max.
 *
 * Producers (event loops, any thread) call atp_journal_append: it copies the
 * record into an in-memory queue under a short mutex and returns the LSN at
 * once, never waiting for the disk. The writer thread takes everything
 * queued, writes it with one writev and makes it durable with one fdatasync
 * (a group), then publishes the durable LSN and calls on_durable, so that
 * responses parked until their LSN is durable can be released.
 *
 * Group commit is natural: a group starts as soon as the writer is free and
 * a record waits, and carries everything that queued meanwhile (while the
 * last fdatasync ran), so groups grow with the load by themselves and no
 * fixed delay is paid. Before it takes the queue the writer reads the ticket
 * counter and waits, yielding, up to 200 us for the mutations in flight
 * below it to end (see atp_journal_begin), so that each answer is released
 * by the group that carries its own record, not by the next one. The mode
 * only changes whether a group may also wait for records to gather:
 *   none    up to flush_ms (10 ms) or batch_bytes: nobody waits for it;
 *   batch   only when group commit found nothing to share: the writer was
 *           idle when the first record came and the last group held a single
 *           record; then up to min(batch_delay_us, the last fdatasync's
 *           duration) or batch_bytes. Under load, batch runs like always
 *           (in a closed loop of clients any wait is pure loss); under sparse
 *           traffic it trades at most one fdatasync's time of latency for
 *           fewer fdatasyncs;
 *   always  never: one group per writer turn, whatever queued.
 * In batch and always alike an answer leaves only once its record, and every
 * record it could have seen, is durable (fdatasync returned): the modes differ
 * in latency under sparse traffic, never in what an acknowledgment promises.
 *
 * Flow control is split in two on purpose. The engine makes a change visible
 * before its hook reports it, so once the hook runs the record must be taken:
 * refusing it would leave memory ahead of the journal. Hence a server asks
 * atp_journal_admit() before it starts a mutation (ATP_EUNAVAILABLE when the
 * journal failed, ATP_EFULL when queue_bytes_max bytes wait: answer 503 with
 * Retry-After) and atp_journal_append() then always takes the record (only
 * ATP_ENOMEM, ATP_ETOOLARGE or a closed journal refuse it). The queue can
 * therefore pass queue_bytes_max by the mutations that were admitted at the
 * same time, at most one change per producer thread.
 *
 * Zero-filled space: the segment is kept zero-filled ahead of its write
 * position (up to 4 MiB ahead by the idle writer thread, in 2 MiB steps of
 * write + fdatasync; under load at least 1 MiB ahead by the groups, each
 * group short of it carrying 1 MiB of zeroes under its own fdatasync; never
 * past segment_bytes_max), so that most groups' fdatasync overwrites
 * allocated, written blocks and need not also write the inode as an
 * appending one must. Recovery reads zeroes
 * after the last record as a clean end (proto/journal.md, "Clean zero end");
 * a roll and a clean close truncate the segment to its data end. A zero step
 * that fails is undone and pauses zero-filling (the journal goes on with
 * plain appends, never FAILED for it); none starts with < 64 MiB free.
 *
 * Faults: when a write or fdatasync fails (ENOSPC, EIO) the journal enters
 * ATP_JOURNAL_FAILED: the durable LSN stops, admit refuses, appended records
 * stay queued in memory. The writer retries with backoff (retry_ms_min up to
 * retry_ms_max): it cuts the segment back to its last durable length, starts
 * a fresh segment at durable LSN + 1 and writes the waiting records again
 * from memory. It never trusts pages written before a failed fdatasync
 * (Linux may have dropped them while marking them clean), so nothing written
 * in the failed attempt is reused. When that succeeds the state is OK again.
 *
 * Recovery: atp_journal_open scans every segment in LSN order, checks each
 * record's CRC and LSN and hands the records after covered_lsn (the newest
 * snapshot's) to a callback. A torn tail (bad records at the end of the last
 * segment, of the group being written when the process died) is cut off and
 * reported; any other bad record stops the open with the file and offset.
 *
 * Thread: each function says which threads may call it.
 */
#ifndef ATP_JOURNAL_H
#define ATP_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "atp/error.h"
#include "atp/limits.h"

typedef struct atp_journal atp_journal_t;

typedef enum {
  ATP_JOURNAL_NONE = 0,   /* answer at once; flushed within flush_ms */
  ATP_JOURNAL_BATCH = 1,  /* group commit; gathers only when nothing shares */
  ATP_JOURNAL_ALWAYS = 2, /* group commit, never gathering */
} atp_journal_mode_t;

typedef enum {
  ATP_JOURNAL_OK = 0,
  ATP_JOURNAL_FAILED = 1, /* a write or fdatasync failed; retrying */
  ATP_JOURNAL_CLOSED = 2, /* atp_journal_close began */
} atp_journal_state_t;

/* Called on the writer thread after every round of groups with the durable
 * LSN (never decreasing; a round that only advanced the ticket horizon
 * repeats the last one), after atp_journal_durable_ticket moved. Must be
 * quick and must not call back into the journal except the getters; a server
 * posts a uv_async. */
typedef void (*atp_journal_durable_fn)(void *ctx, uint64_t durable_lsn);

/* Fault injection for unit tests: called before each write (op 'w') and
 * fdatasync (op 's') on a segment; a nonzero errno makes that call fail with it
 * as if the kernel had. NULL in production. */
typedef int (*atp_journal_fault_fn)(void *ctx, int op);

typedef struct {
  const char *dir;            /* created if missing (one level); < 480 bytes */
  atp_journal_mode_t mode;    /* ATP_JOURNAL_NONE, BATCH or ALWAYS */
  uint64_t segment_bytes_max; /* 0: ATP_JOURNAL_SEGMENT_BYTES_DEFAULT */
  uint64_t
      queue_bytes_max; /* admit refuses beyond; 0: ATP_JOURNAL_QUEUE_BYTES_DEFAULT */
  uint32_t batch_delay_us; /* batch's gathering bound (see above); 0: 1000 */
  uint32_t batch_bytes;    /* a group starts once this much waits; 0: 256 KiB */
  uint32_t flush_ms;       /* none mode's gathering; 0: 10 */
  uint32_t retry_ms_min;   /* first retry after a failure; 0: 10 */
  uint32_t retry_ms_max;   /* backoff doubles up to this; 0: 1000 */
  /* Test switch: sleep this long before every fdatasync, so black-box tests
   * can see that answers wait for durability. The environment variable
   * ATPD_TEST_FSYNC_DELAY_MS, read at open, overrides it. 0 in production. */
  uint32_t fsync_delay_ms;
  atp_journal_durable_fn on_durable; /* NULL: none */
  void *durable_ctx;
  atp_journal_fault_fn fault; /* tests only; NULL */
  void *fault_ctx;
} atp_journal_config_t;

/* Called for each record during recovery, in LSN order. payload is valid
 * during the call only. A nonzero return stops the scan and is returned by
 * the open. */
typedef int (*atp_journal_record_fn)(void *ctx, uint64_t lsn, uint16_t kind,
                                     const void *payload, uint32_t payload_bytes);

/* What a scan found, filled by atp_journal_open and atp_journal_read. */
typedef struct {
  uint64_t first_lsn;        /* oldest record present; 0 if none */
  uint64_t last_lsn;         /* newest intact record; 0 if none */
  uint64_t next_lsn;         /* what the next append gets */
  uint64_t records;          /* intact records scanned */
  uint64_t records_replayed; /* of them, handed to the callback (> covered_lsn) */
  uint32_t segments;         /* segment files scanned */
  uint64_t tail_bytes;       /* bytes of torn tail cut off (or, read-only: found) */
  uint64_t tail_records;     /* frames in that tail: the bad one and any after it */
  char tail_file[512];       /* segment that had the tail; "" if none */
  uint64_t tail_offset;      /* where the tail began in it */
  /* On an error: a sentence naming the file and byte offset of the corruption. */
  char error[1024];
} atp_journal_scan_t;

/* Opens (creating if needed) the journal in config->dir, recovers it and
 * starts the writer. Records with LSN > covered_lsn go to fn (NULL: none).
 * When the journal ends before covered_lsn (a snapshot restored into an empty
 * directory, or segments trimmed), LSNs continue from covered_lsn + 1.
 * Errors: ATP_EINTERNAL for corruption before the tail, a gap in the LSNs
 * after covered_lsn, or a format version newer than this build (scan->error
 * says where); ATP_ECONFLICT if another process holds the directory;
 * ATP_EUNAVAILABLE for an I/O error (scan->error says which call);
 * ATP_ENOMEM; or what fn returned. Thread: any, once per directory. */
int atp_journal_open(const atp_journal_config_t *config, uint64_t covered_lsn,
                     atp_journal_record_fn fn, void *ctx, atp_journal_scan_t *scan,
                     atp_journal_t **out);

/* Scans dir read-only (no lock, no repair): what atp_journal_open would replay
 * and cut. For tools and tests. Same errors as the open. Thread: any. */
int atp_journal_read(const char *dir, uint64_t covered_lsn, atp_journal_record_fn fn,
                     void *ctx, atp_journal_scan_t *scan);

/* Flushes what is queued (while the journal is healthy), stops the writer,
 * closes the files and frees the journal. 0, or ATP_EUNAVAILABLE when records
 * were left unwritten because the journal was failed. No other call may run
 * or follow. Thread: any, once. */
int atp_journal_close(atp_journal_t *journal);

/* 0 when a mutation may start; ATP_EUNAVAILABLE while the journal is failed
 * or closing; ATP_EFULL while queue_bytes_max bytes wait for the disk. Both
 * mean 503 with Retry-After. A hint: a racing failure can follow it.
 * Thread: any; one mutex-free atomic load or two. */
int atp_journal_admit(atp_journal_t *journal);

/* Appends one record (kind != 0; payload_bytes <= ATP_JOURNAL_RECORD_BYTES_MAX)
 * and stores its LSN in *lsn. Never waits for the disk and takes the record in
 * every state but closed (see the header comment). Errors: ATP_ETOOLARGE,
 * ATP_ENOMEM (a new queue chunk), ATP_EUNAVAILABLE after close began.
 * Thread: any; a mutex held for the copy. */
int atp_journal_append(atp_journal_t *journal, uint16_t kind, const void *payload,
                       uint32_t payload_bytes, uint64_t *lsn);
/* The same with the payload gathered from iovcnt pieces, so an encoder need
 * not concatenate them first. */
int atp_journal_appendv(atp_journal_t *journal, uint16_t kind, const struct iovec *iov,
                        int iovcnt, uint64_t *lsn);

/* The highest LSN durable on disk (0 before the first); acquire, so what the
 * writer did before publishing it is visible. Thread: any. */
uint64_t atp_journal_durable_lsn(const atp_journal_t *journal);
/* The highest LSN handed out by an append (0 before the first). A response
 * that must wait for everything visible to it waits for this value read after
 * its own change became visible (see proto/journal.md, causality). */
uint64_t atp_journal_assigned_lsn(const atp_journal_t *journal);

/* Blocks until lsn is durable, the journal fails or timeout_ms pass: 0,
 * ATP_EUNAVAILABLE (failed or closed), ATP_ETOOMANY (timed out). For tests,
 * tools and shutdown; never from an event loop. Thread: any. */
int atp_journal_wait(atp_journal_t *journal, uint64_t lsn, int64_t timeout_ms);

atp_journal_state_t atp_journal_state(const atp_journal_t *journal);

/* The ticket horizon (proto/journal.md, "Causality"). The engine makes a
 * change visible before its hook appends it, so an answer must wait not only
 * for its own records but for every change it could have seen. Each thread
 * that mutates owns one slot (0..ATP_JOURNAL_SLOTS_MAX-1, one thread per slot)
 * and brackets every mutation: atp_journal_begin before it, atp_journal_end
 * after it returned (its hook appended by then). end returns a target; the
 * answer may leave once atp_journal_durable_ticket() >= target. A mutation
 * that appended nothing (a replay, a refusal) still waits for what it saw;
 * end then wakes the writer if needed. Cost: one contended fetch_add and a few
 * seq_cst stores per mutation, a scan of the slots in use per group. Keep a
 * bracket short: the writer waits up to 200 us for one in flight before a
 * group; a longer one (a tick that expires many holds) is correct but holds
 * back the answers of every mutation that began after it until it ends.
 * Thread: the slot's owner. */
#define ATP_JOURNAL_SLOTS_MAX 80
void atp_journal_begin(atp_journal_t *journal, uint32_t slot);
uint64_t atp_journal_end(atp_journal_t *journal, uint32_t slot);
/* Group commit on the producing thread, as Redis writes its AOF before it
 * sleeps. With one event loop, the writer thread costs every group two
 * hand-offs between threads (wake the writer, wake the loop for the answers)
 * and on a small machine a third thread competing for the CPUs, while groups
 * form at random moments of the loop's turn. A loop that calls own_commits
 * once (on its own thread, with its own slot) appends without waking the
 * writer thread and calls atp_journal_commit at the end of each turn, after
 * it handled every ready request: the commit takes the queue, writes it and
 * fdatasyncs it on the calling thread and publishes the ticket (on_durable
 * runs there too), so every answer of the turn leaves with one fdatasync and
 * no thread hand-off. It does a round only when it can do it at once and
 * briefly; otherwise it wakes the writer thread, which then works as without
 * it: when the journal is failed (the writer thread retries), when more than
 * ATP_JOURNAL_COMMIT_BYTES_MAX wait (a big batch is written while the loop
 * goes on), and when the writer thread is busy (an idle zero-fill step, a round of
 * records from another thread). Other threads' appends and ends wake the
 * writer thread as before. No-ops in mode none. own_commits: the thread and
 * slot of that loop, once, before it mutates; commit: true when it wrote or
 * published a group itself (false: nothing to do, or left to the writer thread).
 * Thread: that loop's. */
void atp_journal_own_commits(atp_journal_t *journal, uint32_t slot);
bool atp_journal_commit(atp_journal_t *journal);
/* batch only: how much longer the queued group may gather before a commit
 * (min(batch_delay_us, the last fdatasync's time) since its first record),
 * 0 when it should go now (always, none, nothing queued, or over
 * ATP_JOURNAL_COMMIT_BYTES_MAX). A committing loop that still expects
 * requests waits at most that long for them, so that one fdatasync carries
 * more answers. Thread: any; takes the queue's mutex. */
int64_t atp_journal_gather_ns(atp_journal_t *journal);

/* Every ticket below it belongs to a mutation whose records are durable;
 * starts at 1. Acquire. Thread: any. */
uint64_t atp_journal_durable_ticket(const atp_journal_t *journal);

/* Removes the segments whose records all have LSN <= covered_lsn (after a
 * snapshot that covers them); never the segment being written. Returns the
 * number of files removed, or ATP_EUNAVAILABLE if an unlink failed (the
 * segments before it are gone, the rest are kept). Thread: any, not the
 * writer's callback; takes the segment-list mutex and does the unlinks. */
int atp_journal_trim(atp_journal_t *journal, uint64_t covered_lsn);

/* Where a reader stands in the segments: the frame of LSN lsn starts at
 * offset of segment first_lsn (its file name). A hint only: a reader checks
 * it against the frame it finds there and rescans the segment otherwise (a
 * segment rewritten after a fault). lsn 0: none. */
typedef struct {
  uint64_t lsn;
  uint64_t segment_lsn;
  uint64_t offset;
} atp_journal_pos_t;

/* Reads dir's records with after_lsn < LSN <= upto_lsn in order, handing each
 * to fn (a nonzero return stops the read and is returned), without locking or
 * repairing anything: for the change feed, which reads the live journal up to
 * its durable LSN (records beyond it may be half-written; they are never
 * reached). It starts in the last segment whose first LSN is <= after_lsn + 1
 * and, with a hint at after_lsn + 1, at the hint's offset, so a follower at
 * the tail does not rescan its segment; hint is updated to the next frame.
 * *first_lsn gets the oldest LSN present (0: no segment). 0 once upto_lsn or
 * the written end is reached; ATP_ENOTFOUND when after_lsn + 1 is older than
 * every segment (trimmed); ATP_EINTERNAL for a bad frame before upto_lsn;
 * ATP_EUNAVAILABLE for an I/O error; ATP_ENOMEM. Cost: one directory listing
 * per call, and without a hint a walk over the frame headers of the segment
 * before after_lsn. Thread: any; concurrent with the writer. */
int atp_journal_read_range(const char *dir, uint64_t after_lsn, uint64_t upto_lsn,
                           atp_journal_pos_t *hint, atp_journal_record_fn fn, void *ctx,
                           uint64_t *first_lsn);

/* The change feed's retention: the highest LSN that may be trimmed while
 * keeping every record written at or after since_ms. A segment's records were
 * written between its creation and the next segment's (header created_at),
 * so the floor is one before the first LSN of the oldest segment whose
 * successor was created at or after since_ms (the last segment always
 * stays). *lsn = 0 when nothing may go. 0, ATP_EUNAVAILABLE (I/O),
 * ATP_ENOMEM. Thread: any; reads segment headers. */
int atp_journal_retention_floor(const char *dir, int64_t since_ms, uint64_t *lsn);

/* fsync latency histogram: bucket i counts fdatasyncs that took at most
 * atp_journal_fsync_bucket_us[i] microseconds; the last bucket is +Inf. */
#define ATP_JOURNAL_FSYNC_BUCKETS 13
extern const uint32_t atp_journal_fsync_bucket_us[ATP_JOURNAL_FSYNC_BUCKETS - 1];
/* group-size histogram: bucket i counts groups of at most 4^i records
 * (1, 4, 16, ... 65536); the last bucket is +Inf. */
#define ATP_JOURNAL_GROUP_BUCKETS 10

typedef struct {
  atp_journal_state_t state;
  int last_errno; /* of the latest failure; 0 if none */
  uint64_t durable_lsn;
  uint64_t assigned_lsn;
  uint64_t queued_bytes;    /* appended, not yet durable */
  uint64_t records_written; /* durable records since open (rewrites not twice) */
  uint64_t bytes_written;   /* durable bytes since open, framing included */
  uint64_t groups;          /* fdatasyncs that made records durable */
  uint64_t group_records_sum;
  uint64_t group_hist[ATP_JOURNAL_GROUP_BUCKETS];
  uint64_t fsyncs; /* every fdatasync, segment headers included */
  uint64_t fsync_ns_sum;
  uint64_t fsync_hist[ATP_JOURNAL_FSYNC_BUCKETS];
  uint64_t failures;               /* write/fdatasync errors */
  uint64_t recoveries;             /* returns from FAILED to OK */
  uint64_t segments;               /* segment files present */
  uint64_t tail_bytes_truncated;   /* at open */
  uint64_t tail_records_truncated; /* at open */
  /* The writer loop's own counters (how the group commit behaves). */
  uint64_t rounds;           /* times the writer took the queue */
  uint64_t empty_rounds;     /* of them, with nothing to write: no fdatasync */
  uint64_t horizon_waits;    /* rounds that waited for mutations in flight */
  uint64_t horizon_timeouts; /* of them, cut off at the bound */
  uint64_t gathers;          /* groups that waited to gather (batch, none) */
  uint64_t loop_rounds;      /* of the rounds, run by a committing loop */
  uint64_t loop_handoffs;    /* commits a loop left to the writer thread */
  /* Zero-filling ahead of the write position (not in fsyncs above). */
  uint64_t prealloc_steps;    /* zero-fill steps made durable */
  uint64_t prealloc_bytes;    /* zeroes written by them */
  uint64_t prealloc_ns_sum;   /* their write + fdatasync time */
  uint64_t prealloc_failures; /* steps that failed (undone; appends go on) */
} atp_journal_metrics_t;

/* A snapshot of the counters (each read on its own, relaxed: a scrape can see
 * one counter of a group before another moves). Thread: any. */
void atp_journal_metrics(const atp_journal_t *journal, atp_journal_metrics_t *out);

#endif
