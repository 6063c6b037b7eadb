/* ctl.h - what bin/atpctl's files share: the HTTP client, the answer printer
 * and the import command.
 *
 * ctl_http.c is the only file that includes libcurl (one easy handle per run,
 * so the connection is kept alive between an import's chunks); ctl_output.c
 * prints answers for people or raw; ctl_import.c reads CSV, NDJSON, JSON or
 * MessagePack files and sends them in chunks to POST /v1/batch. These files
 * are linked into bin/atpctl only (Makefile: SRC_CTL), never into atpd.
 *
 * Thread: atpctl has one thread; nothing here is shared.
 */
#ifndef ATP_CTL_H
#define ATP_CTL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atp/memory.h"

/* Exit statuses scripts can trust (README, "atpctl"). */
#define EXIT_ANSWER      1 /* rejected items, or the server answered not 2xx */
#define EXIT_USAGE       2
#define EXIT_UNREACHABLE 3   /* connect refused, DNS, timeout, broken answer */
#define EXIT_INTERRUPTED 130 /* 128 + SIGINT: an import stopped by the operator */

typedef struct {
  void *curl;          /* CURL *, reused by every request of the run */
  void *headers;       /* struct curl_slist *: Accept, Authorization, Expect */
  const char *url;     /* the base, without a trailing '/' */
  size_t url_len;      /* bytes of url that are the base */
  long timeout_ms;     /* total per request, connect included */
  long connect_ms;     /* connect alone */
  char errbuf[256];    /* curl's own words for the last failure */
  atp_buf_t scratch;   /* the full URL of the request being made */
} ctl_http_t;

typedef struct {
  int status;              /* HTTP status; 0 before an answer */
  atp_buf_t body;          /* the body as received, NUL-terminated after len */
  char content_type[128];  /* "" when the answer named none */
  long retry_after_s;      /* Retry-After in seconds, -1 when absent */
} ctl_resp_t;

/* Checks url's shape (http:// or https://, a host) and prepares the handle.
 * cacert may be NULL (the system's CA store); insecure skips TLS checks.
 * 0, or ATP_EBADREQ (url's shape, said by the caller), ATP_ENOMEM. */
int ctl_http_init(ctl_http_t *h, const char *url, const char *token, long timeout_ms,
                  long connect_ms, const char *cacert, bool insecure);
void ctl_http_free(ctl_http_t *h);

/* One request: method, path (already percent-encoded, from '/'), an optional
 * body with its content type. The answer is in *resp (reset first). 0 when
 * an HTTP answer was read (any status), ATP_EUNAVAILABLE when the server
 * cannot be reached or answered nothing readable: said on stderr. */
int ctl_http_request(ctl_http_t *h, const char *method, const char *path,
                     const char *content_type, const void *body, size_t body_len,
                     ctl_resp_t *resp);

void ctl_resp_init(ctl_resp_t *resp);
void ctl_resp_free(ctl_resp_t *resp);

/* Appends s percent-encoded for a path segment or a query value. */
void ctl_url_encode(atp_buf_t *out, const char *s);

/* Prints an answer: the raw body with --json (or when it is not JSON), else
 * a readable rendering (objects as "key  value" lines, arrays of objects as
 * tables). A non-2xx answer also says "atpctl: HTTP N code: message" on
 * stderr. Returns the exit status the answer deserves (0 or EXIT_ANSWER). */
int ctl_print_answer(const ctl_resp_t *resp, bool json);

typedef struct {
  const char *file;
  const char *format;  /* NULL: from the file name's extension */
  const char *op;      /* default "op" of an op without one, or NULL */
  const char *flow;    /* default "flow" of an op without one, or NULL */
  uint64_t chunk_ops;  /* ops per POST /v1/batch, 1..ATP_BATCH_OPS_MAX */
  uint64_t from;       /* ops of the file to skip (already sent) */
  uint64_t rate_ops;   /* at most this many ops a second; 0: as fast as it goes */
  bool json;           /* the summary as JSON, no progress */
  int progress;        /* CTL_PROGRESS_* */
} ctl_import_t;

enum { CTL_PROGRESS_AUTO, CTL_PROGRESS_BAR, CTL_PROGRESS_LINES, CTL_PROGRESS_NONE };

/* Runs atpctl import; returns the exit status. */
int ctl_import(ctl_http_t *h, const ctl_import_t *opt);

/* Reads a whole file into *buf (NUL-terminated after len); 0, or a negative
 * ATP_E* after saying why on stderr. */
int ctl_read_file(const char *path, atp_buf_t *buf);

#endif
