/* config.c - flags and ATPD_* environment twins (see config.h).
 *
 * One table lists every option with its flag, its variable and a setter that
 * validates the text; defaults are set first, the environment applied next,
 * argv last, so a flag wins over its twin. */
#include "atp/config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atp/error.h"
#include "atp/limits.h"

typedef int (*setter_fn)(atp_config_t *cfg, const char *value, char *err,
                         size_t err_len, const char *what);

typedef struct {
  const char *flag; /* "--listen" */
  const char *env;  /* "ATPD_LISTEN" */
  bool takes_value; /* false: a switch (its env twin takes 1/0/true/false) */
  setter_fn set;
} option_t;

/* A decimal integer lo..hi; ATP_EBADREQ for anything else. */
static int parse_int(const char *s, long long lo, long long hi, long long *out) {
  if (!s || !*s) return ATP_EBADREQ;
  char *end = NULL;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || *end || v < lo || v > hi) return ATP_EBADREQ;
  *out = v;
  return 0;
}

/* src into dst; ATP_EBADREQ when it is empty or does not fit. */
static int copy_text(char *dst, size_t cap, const char *src) {
  size_t n = strlen(src);
  if (n == 0 || n >= cap) return ATP_EBADREQ;
  memcpy(dst, src, n + 1);
  return 0;
}

/* HOST:PORT, HOST not empty; [v6]:PORT also accepted. */
static int set_listen(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                      const char *what) {
  const char *colon = strrchr(v, ':');
  long long port = 0;
  if (!colon || colon == v || parse_int(colon + 1, 0, 65535, &port) != 0) {
    snprintf(err, err_len, "%s must be HOST:PORT with PORT 0..65535, got \"%s\"", what,
             v);
    return ATP_EBADREQ;
  }
  const char *host = v;
  size_t host_len = (size_t)(colon - v);
  if (host[0] == '[' && host_len >= 2 && host[host_len - 1] == ']') {
    host++;
    host_len -= 2;
  }
  if (host_len == 0 || host_len >= sizeof cfg->host) {
    snprintf(err, err_len, "%s has an empty or too long host", what);
    return ATP_EBADREQ;
  }
  memcpy(cfg->host, host, host_len);
  cfg->host[host_len] = '\0';
  cfg->port = (int)port;
  return 0;
}

static int set_data_dir(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                        const char *what) {
  if (copy_text(cfg->data_dir, sizeof cfg->data_dir, v) != 0) {
    snprintf(err, err_len, "%s must be a non-empty path under %d bytes", what,
             ATP_CONFIG_PATH_BYTES_MAX);
    return ATP_EBADREQ;
  }
  return 0;
}

static int set_threads(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                       const char *what) {
  long long n = 0;
  if (parse_int(v, 1, ATP_HTTP_THREADS_MAX, &n) != 0) {
    snprintf(err, err_len, "%s must be an integer 1..%d, got \"%s\"", what,
             ATP_HTTP_THREADS_MAX, v);
    return ATP_EBADREQ;
  }
  cfg->threads = (int)n;
  return 0;
}

static int set_durability(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                          const char *what) {
  if (strcmp(v, "none") == 0)
    cfg->durability = ATP_DURABILITY_NONE;
  else if (strcmp(v, "batch") == 0)
    cfg->durability = ATP_DURABILITY_BATCH;
  else if (strcmp(v, "always") == 0)
    cfg->durability = ATP_DURABILITY_ALWAYS;
  else {
    snprintf(err, err_len, "%s must be none, batch or always, got \"%s\"", what, v);
    return ATP_EBADREQ;
  }
  return 0;
}

/* redis://HOST[:PORT][/DB] */
static int set_redis(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                     const char *what) {
  static const char scheme[] = "redis://";
  const char *p = v + sizeof scheme - 1;
  if (strncmp(v, scheme, sizeof scheme - 1) != 0 || strlen(v) >= sizeof cfg->redis_url)
    goto bad;
  const char *slash = strchr(p, '/');
  const char *host_end = slash ? slash : p + strlen(p);
  const char *colon = memchr(p, ':', (size_t)(host_end - p));
  size_t host_len = (size_t)((colon ? colon : host_end) - p);
  if (host_len == 0 || host_len >= sizeof cfg->redis_host) goto bad;
  long long port = 6379, db = 0;
  if (colon) {
    char buf[8];
    size_t n = (size_t)(host_end - colon - 1);
    if (n == 0 || n >= sizeof buf) goto bad;
    memcpy(buf, colon + 1, n);
    buf[n] = '\0';
    if (parse_int(buf, 1, 65535, &port) != 0) goto bad;
  }
  if (slash && slash[1] && parse_int(slash + 1, 0, 15, &db) != 0) goto bad;
  memcpy(cfg->redis_host, p, host_len);
  cfg->redis_host[host_len] = '\0';
  cfg->redis_port = (int)port;
  cfg->redis_db = (int)db;
  memcpy(cfg->redis_url, v, strlen(v) + 1);
  return 0;
bad:
  snprintf(err, err_len, "%s must be redis://HOST:PORT[/DB] (DB 0..15), got \"%s\"",
           what, v);
  return ATP_EBADREQ;
}

static int set_snapshot_interval(atp_config_t *cfg, const char *v, char *err,
                                 size_t err_len, const char *what) {
  long long n = 0;
  if (parse_int(v, 1, ATP_SNAPSHOT_INTERVAL_S_MAX, &n) != 0) {
    snprintf(err, err_len, "%s must be an integer 1..%d seconds, got \"%s\"", what,
             ATP_SNAPSHOT_INTERVAL_S_MAX, v);
    return ATP_EBADREQ;
  }
  cfg->snapshot_interval_s = n;
  return 0;
}

static int set_path(char *dst, size_t cap, const char *v, char *err, size_t err_len,
                    const char *what) {
  if (copy_text(dst, cap, v) != 0) {
    snprintf(err, err_len, "%s must be a non-empty path", what);
    return ATP_EBADREQ;
  }
  if (access(dst, R_OK) != 0) {
    snprintf(err, err_len, "%s: cannot read \"%s\": %s", what, v, strerror(errno));
    return ATP_EBADREQ;
  }
  return 0;
}

static int set_tokens(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                      const char *what) {
  return set_path(cfg->tokens_file, sizeof cfg->tokens_file, v, err, err_len, what);
}

static int set_ownership(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                         const char *what) {
  return set_path(cfg->ownership_file, sizeof cfg->ownership_file, v, err, err_len,
                  what);
}

static int set_clock_skew(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                          const char *what) {
  long long n = 0;
  if (parse_int(v, 1, ATP_CLOCK_SKEW_MS_MAX, &n) != 0) {
    snprintf(err, err_len, "%s must be an integer 1..%lld milliseconds, got \"%s\"",
             what, (long long)ATP_CLOCK_SKEW_MS_MAX, v);
    return ATP_EBADREQ;
  }
  cfg->clock_skew_ms = n;
  return 0;
}

/* 1/true/yes/on or 0/false/no/off/empty; ATP_EBADREQ for anything else. */
static int parse_bool(const char *v, bool *out) {
  if (!strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "on")) {
    *out = true;
    return 0;
  }
  if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "off") ||
      !*v) {
    *out = false;
    return 0;
  }
  return ATP_EBADREQ;
}

static int set_demo(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                    const char *what) {
  if (parse_bool(v, &cfg->demo) != 0) {
    snprintf(err, err_len, "%s must be 1 or 0, got \"%s\"", what, v);
    return ATP_EBADREQ;
  }
  return 0;
}

static int set_access_log(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                          const char *what) {
  if (parse_bool(v, &cfg->access_log) != 0) {
    snprintf(err, err_len, "%s must be on or off, got \"%s\"", what, v);
    return ATP_EBADREQ;
  }
  return 0;
}

static int set_feed_retention(atp_config_t *cfg, const char *v, char *err,
                              size_t err_len, const char *what) {
  long long n = 0;
  if (parse_int(v, 1, ATP_FEED_RETENTION_H_MAX, &n) != 0) {
    snprintf(err, err_len, "%s must be an integer 1..%d hours, got \"%s\"", what,
             ATP_FEED_RETENTION_H_MAX, v);
    return ATP_EBADREQ;
  }
  cfg->feed_retention_h = n;
  return 0;
}

/* A count flag in 1..max. */
static int set_count(uint32_t *out, const char *v, uint32_t max, char *err,
                     size_t err_len, const char *what) {
  char *end = NULL;
  errno = 0;
  unsigned long long n = strtoull(v, &end, 10);
  if (!*v || *end || errno || n < 1 || n > max || *v == '-') {
    snprintf(err, err_len, "%s must be an integer in 1..%u, got \"%s\"", what, max, v);
    return ATP_EBADREQ;
  }
  *out = (uint32_t)n;
  return 0;
}

static int set_dead_letters_max(atp_config_t *cfg, const char *v, char *err,
                                size_t err_len, const char *what) {
  return set_count(&cfg->dead_letters_max, v, ATP_DEAD_LETTERS_MAX_MAX, err, err_len,
                   what);
}

static int set_flow_queue_max(atp_config_t *cfg, const char *v, char *err,
                              size_t err_len, const char *what) {
  return set_count(&cfg->flow_queue_max, v, ATP_FLOW_QUEUE_OPS_MAX, err, err_len, what);
}

static int set_audit_max(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                         const char *what) {
  return set_count(&cfg->audit_max, v, ATP_AUDIT_ENTRIES_MAX, err, err_len, what);
}

static int set_feed_redis_stream(atp_config_t *cfg, const char *v, char *err,
                                 size_t err_len, const char *what) {
  size_t n = strlen(v);
  if (n == 0 || n >= 256 || strpbrk(v, " \t\r\n")) {
    snprintf(err, err_len,
             "%s must be a Redis key of 1..255 bytes without spaces, got \"%s\"", what,
             v);
    return ATP_EBADREQ;
  }
  memcpy(cfg->feed_redis_stream, v, n + 1);
  return 0;
}

/* A URI reference (CloudEvents' source): printable ASCII, no spaces. */
static int set_feed_source(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                           const char *what) {
  size_t n = strlen(v);
  bool ok = n > 0 && n < 256;
  for (size_t i = 0; ok && i < n; i++) ok = v[i] > ' ' && v[i] < 0x7f;
  if (!ok) {
    snprintf(err, err_len,
             "%s must be a URI of 1..255 printable bytes without spaces, got \"%s\"",
             what, v);
    return ATP_EBADREQ;
  }
  memcpy(cfg->feed_source, v, n + 1);
  return 0;
}

static int set_shopify(atp_config_t *cfg, const char *v, char *err, size_t err_len,
                       const char *what) {
  return set_path(cfg->shopify_file, sizeof cfg->shopify_file, v, err, err_len, what);
}

static const option_t options[] = {
    {"--listen", "ATPD_LISTEN", true, set_listen},
    {"--data-dir", "ATPD_DATA_DIR", true, set_data_dir},
    {"--threads", "ATPD_THREADS", true, set_threads},
    {"--durability", "ATPD_DURABILITY", true, set_durability},
    {"--redis", "ATPD_REDIS", true, set_redis},
    {"--snapshot-interval-s", "ATPD_SNAPSHOT_INTERVAL_S", true, set_snapshot_interval},
    {"--tokens", "ATPD_TOKENS", true, set_tokens},
    {"--ownership", "ATPD_OWNERSHIP", true, set_ownership},
    {"--demo", "ATPD_DEMO", false, set_demo},
    {"--access-log", "ATPD_ACCESS_LOG", true, set_access_log},
    {"--clock-skew-ms", "ATPD_CLOCK_SKEW_MS", true, set_clock_skew},
    {"--feed-retention-h", "ATPD_FEED_RETENTION_H", true, set_feed_retention},
    {"--feed-redis-stream", "ATPD_FEED_REDIS_STREAM", true, set_feed_redis_stream},
    {"--feed-source", "ATPD_FEED_SOURCE", true, set_feed_source},
    {"--dead-letters-max", "ATPD_DEAD_LETTERS_MAX", true, set_dead_letters_max},
    {"--flow-queue-max", "ATPD_FLOW_QUEUE_MAX", true, set_flow_queue_max},
    {"--audit-max", "ATPD_AUDIT_MAX", true, set_audit_max},
    {"--shopify", "ATPD_SHOPIFY", true, set_shopify},
};
#define OPTION_COUNT (sizeof options / sizeof options[0])

const char *atp_config_usage(void) {
  return "usage: atpd [--listen HOST:PORT]      default 127.0.0.1:8080\n"
         "            [--data-dir DIR]          default ./var\n"
         "            [--threads N]             1..64, default: the number of cores\n"
         "            [--durability MODE]       none | batch | always, default batch\n"
         "            [--redis URL]             redis://HOST:PORT[/DB]\n"
         "            [--snapshot-interval-s N] default 300\n"
         "            [--tokens FILE]           turns auth on\n"
         "            [--ownership FILE]        the source-of-truth matrix\n"
         "            [--demo]                  load a demo catalogue when empty\n"
         "            [--access-log on|off]     one JSON line per request, default on\n"
         "            [--clock-skew-ms N]       future times allowed, default 300000\n"
         "            [--feed-retention-h N]    change feed kept, default 72\n"
         "            [--feed-redis-stream KEY] mirror the feed into a Redis stream\n"
         "            [--feed-source URI]       the events' source, default "
         "atpd://HOST:PORT\n"
         "            [--dead-letters-max N]    dead letters kept, default 10000\n"
         "            [--flow-queue-max N]      ops a paused flow queues, default "
         "10000\n"
         "            [--audit-max N]           audit entries kept, default 100000\n"
         "            [--shopify FILE]          the Shopify connector's configuration\n"
         "            [--routes]                print the route table and exit\n"
         "            [--version]               print the version and exit\n"
         "Every flag has an ATPD_* environment twin (ATPD_LISTEN, ...); flags win.\n";
}

static int default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  if (n > ATP_HTTP_THREADS_MAX) n = ATP_HTTP_THREADS_MAX;
  return (int)n;
}

int atp_config_load(atp_config_t *cfg, int argc, char **argv,
                    const char *(*getenv_fn)(const char *name), char *err,
                    size_t err_len) {
  memset(cfg, 0, sizeof *cfg);
  strcpy(cfg->host, "127.0.0.1");
  cfg->port = 8080;
  strcpy(cfg->data_dir, "./var");
  cfg->threads = default_threads();
  cfg->durability = ATP_DURABILITY_BATCH;
  cfg->redis_port = 6379;
  cfg->snapshot_interval_s = 300;
  cfg->access_log = true;
  cfg->clock_skew_ms = ATP_CLOCK_SKEW_MS_DEFAULT;
  cfg->feed_retention_h = ATP_FEED_RETENTION_H_DEFAULT;
  cfg->dead_letters_max = ATP_DEAD_LETTERS_MAX_DEFAULT;
  cfg->flow_queue_max = ATP_FLOW_QUEUE_OPS_DEFAULT;
  cfg->audit_max = ATP_AUDIT_ENTRIES_DEFAULT;
  if (err_len) err[0] = '\0';

  for (size_t i = 0; i < OPTION_COUNT; i++) {
    const char *v = getenv_fn ? getenv_fn(options[i].env) : getenv(options[i].env);
    if (!v) continue;
    int rc = options[i].set(cfg, v, err, err_len, options[i].env);
    if (rc != 0) return rc;
  }
  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a];
    if (!strcmp(arg, "--routes")) {
      cfg->print_routes = true;
      continue;
    }
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
      cfg->print_help = true;
      continue;
    }
    if (!strcmp(arg, "--version")) {
      cfg->show_version = true;
      continue;
    }
    const char *eq = strchr(arg, '=');
    size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
    const option_t *opt = NULL;
    for (size_t i = 0; i < OPTION_COUNT; i++) {
      if (strlen(options[i].flag) == name_len &&
          !strncmp(options[i].flag, arg, name_len)) {
        opt = &options[i];
        break;
      }
    }
    if (!opt) {
      snprintf(err, err_len, "unknown option \"%s\"", arg);
      return ATP_EBADREQ;
    }
    const char *value = "1";
    if (eq)
      value = eq + 1;
    else if (opt->takes_value) {
      if (a + 1 >= argc) {
        snprintf(err, err_len, "%s needs a value", opt->flag);
        return ATP_EBADREQ;
      }
      value = argv[++a];
    }
    int rc = opt->set(cfg, value, err, err_len, opt->flag);
    if (rc != 0) return rc;
  }
  if (cfg->feed_redis_stream[0] && !cfg->redis_url[0]) {
    snprintf(err, err_len, "--feed-redis-stream needs --redis URL");
    return ATP_EBADREQ;
  }
  return 0;
}
