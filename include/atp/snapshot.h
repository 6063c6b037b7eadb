/* snapshot.h - snapshots of the engine's whole state: a file in the data dir
 * and, optionally, the same bytes in Redis (proto/snapshot.md gives them).
 *
 * A snapshot is atp_engine_export's records, encoded by the journal's codec
 * (include/atp/records.h) into checksummed chunks, tagged with an LSN: the
 * journal records after it, replayed over the import, make the fuzzy copy
 * exact (engine.h). Writing one:
 *   1. the caller takes lsn = the journal's assigned LSN before the walk;
 *   2. atp_snapshot_write walks the engine into <dir>/.tmp-<lsn>, fsyncs it,
 *      then calls settle(): the caller waits there until the journal is
 *      durable past everything the walk could have seen (else a crash could
 *      leave the snapshot holding half of a change the journal lost);
 *   3. the file is renamed to snap-<lsn 20 digits>.atps and the directory
 *      fsynced; generations beyond ATP_SNAPSHOT_GENERATIONS are removed.
 * A crash at any point leaves the previous snapshots untouched (a stray
 * .tmp- file is removed by the next write or load).
 *
 * Redis (atp_snapshot_push): the file's chunks become values, a manifest is
 * written after them, and only then the pointer key is switched to the new
 * snapshot; generations beyond two are deleted after that. Every call is
 * bounded by timeout_ms (hiredis' blocking API: redisConnectWithTimeout and
 * redisSetTimeout), so a stopped Redis costs a timeout, never a hang. Run it
 * on a thread of its own, never on an event loop.
 *
 * Restore: atp_snapshot_load imports a local snapshot into an empty engine
 * in one pass, each chunk's checksum checked before it is applied; when a
 * later chunk fails, the engine holds part of the file and the caller must
 * discard it and try the previous generation in a fresh engine (the restore
 * reads the file once: a verify pass first cost a third of its time);
 * atp_snapshot_fetch copies the newest complete snapshot from Redis into the
 * local directory first, checksums verified, for a data dir that is empty.
 *
 * Test switches (read by atp_snapshot_config_init): ATPD_TEST_SNAPSHOT_DELAY_MS
 * sleeps that long after each chunk written or pushed, so tests can act in
 * the middle of a snapshot; ATPD_TEST_REDIS_TIMEOUT_MS sets redis_timeout_ms. Thread:
 * any; one write or push at a time per dir.
 */
#ifndef ATP_SNAPSHOT_H
#define ATP_SNAPSHOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atp/engine.h"
#include "atp/error.h"

#define ATP_SNAPSHOT_FORMAT_VERSION 2 /* 2: section chunks (proto/snapshot.md) */
#define ATP_SNAPSHOT_GENERATIONS    2
#define ATP_SNAPSHOT_CHUNK_BYTES    (1u << 20)
#define ATP_SNAPSHOT_TIMEOUT_MS     2000

typedef struct {
  const char *dir;           /* local snapshots: <data-dir>/snapshots */
  const char *redis_host;    /* NULL or "": no Redis */
  int redis_port;            /* 6379 */
  int redis_db;              /* 0 */
  const char *redis_prefix;  /* key prefix; NULL: "atpd:" */
  uint32_t redis_timeout_ms; /* per call; 0: ATP_SNAPSHOT_TIMEOUT_MS */
  uint32_t chunk_bytes;      /* 0: ATP_SNAPSHOT_CHUNK_BYTES */
  uint32_t test_delay_ms;    /* after each chunk; 0 in production */
  /* Other modules' state (dead letters, flows, audit, ...): the writer calls
   * sections_export after the engine's walk and writes what it emits as
   * section chunks; a fetch with an engine hands section records to
   * sections_replay. NULL: none. atpd passes atp_durable_export_sections and
   * atp_durable_replay_section with the atp_durable_t as ctx
   * (include/atp/durability.h). */
  int (*sections_export)(void *ctx,
                         int (*emit)(void *emit_ctx, uint16_t kind, const void *payload,
                                     uint32_t payload_bytes),
                         void *emit_ctx);
  int (*sections_replay)(void *ctx, uint16_t kind, const void *payload,
                         uint32_t payload_bytes);
  void *sections_ctx;
} atp_snapshot_config_t;

/* A section record at load (atpd: atp_durable_replay_section). */
typedef int (*atp_snapshot_section_fn)(void *ctx, uint16_t kind, const void *payload,
                                       uint32_t payload_bytes);

/* Zeroes config, sets dir and the test delay from the environment. */
void atp_snapshot_config_init(atp_snapshot_config_t *config, const char *dir);

typedef struct {
  char id[48]; /* "<lsn>-<created_at_ms>" */
  uint64_t lsn;
  int64_t created_at_ms;
  atp_export_counts_t counts;
  uint64_t bytes; /* of the file, framing included */
  uint64_t chunks;
  int64_t duration_ms;
  char path[600]; /* the local file */
} atp_snapshot_info_t;

/* Called between the fsync of the temporary file and its rename; nonzero
 * abandons the snapshot (the file is removed) and is returned. */
typedef int (*atp_snapshot_settle_fn)(void *ctx);

/* Writes a local snapshot of engine tagged lsn. 0, ATP_EUNAVAILABLE for an
 * I/O error (err says which call and file), ATP_ENOMEM, or what settle
 * returned. */
int atp_snapshot_write(const atp_snapshot_config_t *config, atp_engine_t *engine,
                       uint64_t lsn, atp_snapshot_settle_fn settle, void *settle_ctx,
                       atp_snapshot_info_t *info, char *err, size_t err_len);

/* Pushes the local snapshot info->path to Redis (chunks, manifest, pointer,
 * then the deletion of old generations). 0; ATP_EUNAVAILABLE when Redis
 * refused, timed out or is down (err says which); ATP_EINTERNAL when the
 * local file does not verify. */
int atp_snapshot_push(const atp_snapshot_config_t *config,
                      const atp_snapshot_info_t *info, char *err, size_t err_len);

/* The newest local snapshot that verifies, without importing it: 0 and
 * *info; ATP_ENOTFOUND when there is none. Bad files are named in err
 * (and skipped). */
int atp_snapshot_find(const atp_snapshot_config_t *config, atp_snapshot_info_t *info,
                      char *err, size_t err_len);

/* Imports the snapshot file at path into an empty engine, one chunk at a
 * time, each verified before it is applied; info gets its header. On an error
 * the engine may hold part of the file: destroy it. ATP_EINTERNAL for a file
 * that does not verify or decode (err names the file and offset),
 * ATP_EUNAVAILABLE for an I/O error, or what atp_engine_apply returned. */
int atp_snapshot_load(const char *path, atp_engine_t *engine, atp_snapshot_info_t *info,
                      char *err, size_t err_len);
/* The same, with the section records handed to section (in file order, after
 * the engine's). A file holding sections loaded without a callback is refused
 * (ATP_EINTERNAL): their state would be lost without a word. */
int atp_snapshot_load_sections(const char *path, atp_engine_t *engine,
                               atp_snapshot_section_fn section, void *section_ctx,
                               atp_snapshot_info_t *info, char *err, size_t err_len);

/* The LSNs of the local snapshot files, newest first (at most max), without
 * reading them; stray temporary files are removed. */
uint32_t atp_snapshot_list(const atp_snapshot_config_t *config, uint64_t *lsns,
                           uint32_t max);
/* The file name of the local snapshot tagged lsn. */
void atp_snapshot_path(const atp_snapshot_config_t *config, uint64_t lsn, char *path,
                       size_t path_len);

/* Copies the newest complete snapshot from Redis into config->dir as a local
 * snapshot file, each chunk checked against the manifest's CRC as it comes,
 * and, with engine (an empty one), imports it in the same pass: each chunk's
 * own frame and CRC are checked and it is applied while the next one is on
 * the wire. The local file is published only when every chunk held; on an
 * error the engine may hold part of it: destroy it. Without engine the file
 * must then be loaded with atp_snapshot_load. ATP_ENOTFOUND when Redis has
 * none; ATP_EUNAVAILABLE when it cannot be reached; ATP_EINTERNAL when what
 * it holds does not verify or decode. */
int atp_snapshot_fetch(const atp_snapshot_config_t *config, atp_engine_t *engine,
                       atp_snapshot_info_t *info, char *err, size_t err_len);

/* The LSN the journal may be trimmed to: the oldest kept generation's, so
 * that each kept snapshot still has the journal after it. 0 if none. */
uint64_t atp_snapshot_trim_lsn(const atp_snapshot_config_t *config);

#endif
