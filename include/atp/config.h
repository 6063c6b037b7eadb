/* config.h - atpd's command line and its ATPD_* environment twins.
 *
 * Every flag has an environment twin (--data-dir and ATPD_DATA_DIR); the
 * environment is read first and flags override it, so a flag always wins.
 * Values are validated here, at the boundary, with a sentence naming the flag;
 * nothing later re-checks them.
 *
 * Thread: main thread, before any other starts.
 */
#ifndef ATP_CONFIG_H
#define ATP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ATP_CONFIG_PATH_BYTES_MAX 1024
#define ATP_CONFIG_HOST_BYTES_MAX 256

typedef enum {
  ATP_DURABILITY_NONE = 0,
  ATP_DURABILITY_BATCH = 1, /* the default */
  ATP_DURABILITY_ALWAYS = 2,
} atp_durability_t;

typedef struct {
  char host[ATP_CONFIG_HOST_BYTES_MAX]; /* "127.0.0.1"; IPv6 given as [::1] is stored
                                           bare */
  int port;                             /* 0..65535; 0 picks a free port */
  char data_dir[ATP_CONFIG_PATH_BYTES_MAX]; /* "./var" */
  int threads;                              /* 1..ATP_HTTP_THREADS_MAX; default nproc */
  atp_durability_t durability;
  char redis_url[ATP_CONFIG_PATH_BYTES_MAX]; /* "" when not set; else validated */
  char redis_host[ATP_CONFIG_HOST_BYTES_MAX];
  int redis_port;                                 /* default 6379 */
  int redis_db;                                   /* default 0 */
  int64_t snapshot_interval_s;                    /* 1..86400*7, default 300 */
  char tokens_file[ATP_CONFIG_PATH_BYTES_MAX];    /* "" : auth off */
  char ownership_file[ATP_CONFIG_PATH_BYTES_MAX]; /* "" : everyone writes */
  bool demo;         /* load the demo catalogue when empty */
  bool access_log;   /* one JSON line per request (default on) */
  bool print_routes; /* --routes: print the table and exit */
  bool print_help;   /* --help: print usage and exit */
  /* 1..ATP_CLOCK_SKEW_MS_MAX: how far past the server's clock an input time
   * may lie (--clock-skew-ms). */
  int64_t clock_skew_ms;
  bool show_version; /* --version: print "atpd X.Y.Z" and exit */
  /* 1..ATP_FEED_RETENTION_H_MAX: how long journal segments are kept for the
   * change feed (--feed-retention-h), default 72. */
  int64_t feed_retention_h;
  /* --feed-redis-stream: the Redis stream the change feed is mirrored to
   * (needs --redis); "" when off. */
  char feed_redis_stream[256];
  /* --feed-source: the change feed's CloudEvents source; "" : atpd://HOST:PORT
   * with the port actually bound. */
  char feed_source[256];
  /* Integration flows' bounds (limits.h gives defaults and ranges). */
  uint32_t dead_letters_max; /* --dead-letters-max */
  uint32_t flow_queue_max;   /* --flow-queue-max, ops per paused flow */
  uint32_t audit_max;        /* --audit-max */
  /* --shopify: the Shopify connector's JSON file (CONTRACT.md section 11);
   * "" when off. Read and checked at start (atp_shopify_config_load). */
  char shopify_file[ATP_CONFIG_PATH_BYTES_MAX];
} atp_config_t;

/* Fills *cfg with the defaults, then the ATPD_* environment, then argv.
 * getenv_fn lets tests inject an environment (NULL: getenv). 0, or ATP_EBADREQ
 * with a sentence in err naming the flag or variable. */
int atp_config_load(atp_config_t *cfg, int argc, char **argv,
                    const char *(*getenv_fn)(const char *name), char *err,
                    size_t err_len);

/* The usage text, for --help and errors. */
const char *atp_config_usage(void);

#endif
