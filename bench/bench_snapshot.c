/* bench_snapshot.c - snapshot and restore of a large state (issue 11 item 9):
 * N positions (each with on_hand and one history entry) and H live holds,
 * written to a local snapshot, loaded into an empty engine, and, with a Redis
 * port, pushed to Redis and fetched back into an empty directory.
 *
 *   bench_snapshot [positions=10000000] [holds=1000000] [redis_port=0] [dir]
 *
 * Prints one line per step with its time and the bytes per position.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "atp/engine.h"
#include "atp/snapshot.h"

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static atp_engine_config_t config(uint32_t positions, uint32_t holds) {
  atp_engine_config_t c;
  memset(&c, 0, sizeof c);
  c.positions_max = positions + 16;
  c.reservations_max = holds + 16;
  c.idempotency_max = 1024;
  return c;
}

int main(int argc, char **argv) {
  uint32_t n = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 10) : 10000000u;
  uint32_t holds = argc > 2 ? (uint32_t)strtoul(argv[2], NULL, 10) : 1000000u;
  int port = argc > 3 ? atoi(argv[3]) : 0;
  const char *dir = argc > 4 ? argv[4] : "/tmp/atp-bench-snapshot";
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s %s-redis", dir, dir);
  if (system(cmd)) return 1;

  atp_engine_config_t c = config(n, holds);
  atp_engine_t *e;
  if (atp_engine_create(&c, &e)) return 1;
  int64_t t0 = mono_ms(), now = atp_engine_now_ms(e);
  char sku[32];
  /* Built through replay: a position record per position, as an adjustment
   * with a history entry, without n idempotency ids. */
  for (uint32_t i = 0; i < n; i++) {
    int len = snprintf(sku, sizeof sku, "SKU-%08u", i / 4);
    static const char *locs[4] = {"store-001", "store-002", "dc-east", "dc-west"};
    atp_change_t ch;
    memset(&ch, 0, sizeof ch);
    ch.kind = ATP_CHANGE_POSITION;
    ch.cause = ATP_CAUSE_ADJUST;
    ch.at_ms = now;
    ch.u.position = (atp_change_position_t){
        .sku = {sku, (uint32_t)len},
        .location = {locs[i % 4], (uint32_t)strlen(locs[i % 4])},
        .d_on_hand = 100,
        .counted_at_ms = ATP_TIME_NONE,
        .occurred_at_ms = now - 1000,
        .version = 1};
    if (atp_engine_apply(e, &ch, 1)) return 1;
  }
  static atp_reservation_t r;
  atp_shortfalls_t sf;
  atp_result_t res;
  char id[32];
  for (uint32_t h = 0; h < holds; h++) {
    uint32_t i = (uint32_t)(((uint64_t)h * 7919) % n);
    int len = snprintf(sku, sizeof sku, "SKU-%08u", i / 4);
    static const char *locs[4] = {"store-001", "store-002", "dc-east", "dc-west"};
    int idl = snprintf(id, sizeof id, "cart-%u", h);
    atp_line_req_t line = {.sku = {sku, (uint32_t)len},
                           .location = {locs[i % 4], (uint32_t)strlen(locs[i % 4])},
                           .qty = 1};
    atp_reserve_req_t q = {.id = {id, (uint32_t)idl},
                           .lines = &line,
                           .line_count = 1,
                           .ttl_ms = 900000,
                           .order_ref = ATP_STR("order-ref"),
                           .channel = ATP_STR("web")};
    if (atp_reserve(e, &q, &r, &sf, &res)) return 1;
  }
  printf("built %u positions, %u holds in %" PRId64 " ms\n", n, holds, mono_ms() - t0);

  atp_snapshot_config_t sc;
  atp_snapshot_config_init(&sc, dir);
  sc.redis_host = port ? "127.0.0.1" : NULL;
  sc.redis_port = port;
  sc.redis_timeout_ms = 30000;
  atp_snapshot_info_t info;
  char err[1024];
  if (atp_snapshot_write(&sc, e, 1, NULL, NULL, &info, err, sizeof err)) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  printf("snapshot local: %" PRId64 " ms, %" PRIu64
         " bytes, %.1f bytes/position, %" PRIu64 " chunks\n",
         info.duration_ms, info.bytes, (double)info.bytes / n, info.chunks);
  atp_engine_destroy(e);

  atp_engine_t *b;
  if (atp_engine_create(&c, &b)) return 1;
  atp_snapshot_info_t li;
  if (atp_snapshot_load(info.path, b, &li, err, sizeof err)) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  printf("restore local: %" PRId64
         " ms (one pass: each chunk verified, then applied)\n",
         li.duration_ms);
  atp_engine_destroy(b);

  if (port) {
    t0 = mono_ms();
    if (atp_snapshot_push(&sc, &info, err, sizeof err)) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
    int64_t push_ms = mono_ms() - t0;
    printf("snapshot redis push: %" PRId64 " ms (local %" PRId64 " + push = %" PRId64
           " ms)\n",
           push_ms, info.duration_ms, info.duration_ms + push_ms);
    char rdir[600];
    snprintf(rdir, sizeof rdir, "%s-redis", dir);
    atp_snapshot_config_t rc = sc;
    rc.dir = rdir;
    atp_snapshot_info_t fi;
    /* As atpd restores a replacement machine: fetched into the data dir and
     * applied in the same pass. */
    if (atp_engine_create(&c, &b)) return 1;
    t0 = mono_ms();
    if (atp_snapshot_fetch(&rc, b, &fi, err, sizeof err)) {
      fprintf(stderr, "%s\n", err);
      return 1;
    }
    printf("restore redis: %" PRId64 " ms (fetched, written and applied in one pass)\n",
           mono_ms() - t0);
    atp_engine_destroy(b);
  }
  snprintf(cmd, sizeof cmd, "rm -rf %s %s-redis", dir, dir);
  return system(cmd) ? 1 : 0;
}
