/* ctl_import.c - atpctl import FILE: a file of ops sent in chunks to
 * POST /v1/batch over one keep-alive connection.
 *
 * The file is mapped and read twice: once to count its ops (the progress
 * needs a total), once to send them. Each op is re-encoded into the chunk
 * (NDJSON for CSV, NDJSON and JSON files, a MessagePack stream for msgpack
 * files) with the --op and --flow defaults filled in where it has none, so a
 * chunk holds only well-formed objects: an op the file itself garbles (a line
 * that is not JSON, a CSV row with too many cells) is rejected here, counted
 * and listed, and the rest go on, as the server does with a bad op.
 *
 * Resuming: every op carries its client id, so sending the same file again
 * replays what was applied (the server counts them as replayed) and applies
 * the rest; --from N skips the first N ops, and an interrupted run says which
 * N. Progress goes to stdout: a bar redrawn with \r at most every
 * ATP_CTL_PROGRESS_INTERVAL_MS on a terminal, else a plain line per 5%
 * (at most one a chunk).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "atp/assert.h"
#include "atp/codec.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "ctl.h"

/* A chunk is sent before it would pass the batch body limit: an op is at
 * most 1 MiB (a single route's limit), so this leaves room for one more. */
#define CHUNK_BYTES_MAX (ATP_HTTP_BULK_BODY_BYTES_MAX - 2 * ATP_HTTP_BODY_BYTES_MAX)

typedef struct {
  uint64_t index; /* the op's place in the file, from 0 */
  uint64_t line;  /* its line in the file, from 1; 0 for JSON arrays and msgpack */
  int status;     /* the HTTP status its route answered; 0: refused here */
  char code[40];
  char message[160];
  char field[64];
} rejection_t;

typedef enum { IN_CSV, IN_NDJSON, IN_JSON, IN_MSGPACK } input_t;

typedef struct {
  ctl_http_t *http;
  const ctl_import_t *opt;
  input_t input;
  atp_format_t wire;  /* NDJSON or MSGPACK: the chunks' encoding */
  atp_buf_t chunk;    /* the ops of the chunk being filled */
  uint64_t *index_of; /* chunk_ops entries: each chunk op's index in the file */
  uint64_t *line_of;  /* and its line */
  uint32_t in_chunk;  /* ops in chunk, <= opt->chunk_ops */
  uint64_t seen;      /* ops read from the file, skipped ones included */
  uint64_t total;     /* ops in the file (the counting pass) */
  uint64_t done;      /* ops past --from that are answered or refused here */
  uint64_t resume_at; /* every op before it is answered: --from for a re-run */
  uint64_t chunks, received, applied, replayed, rejected, rejected_here, queued;
  rejection_t shown[ATP_CTL_REJECTIONS_SHOWN];
  uint32_t nshown;
  int progress; /* CTL_PROGRESS_BAR, _LINES or _NONE */
  double started_s, drawn_s;
  uint64_t drawn_done; /* done at the last drawing */
  int next_pct;        /* lines mode: the next 5% mark to print */
  int stop;            /* the exit status that ends the import; 0 while it runs */
  ctl_resp_t resp;
  atp_arena_t arena; /* one input op's tree, or one answer's */
  atp_buf_t cells;   /* a CSV record's unquoted cells */
} importer_t;

static volatile sig_atomic_t interrupted;

/* The first SIGINT lets the chunk in flight finish and the summary print; a
 * second one kills at once (the default action, restored here). */
static void on_sigint(int sig) {
  interrupted = 1;
  signal(sig, SIG_DFL);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void copy_str(char *dst, size_t cap, const char *s, size_t len) {
  if (len >= cap) len = cap - 1;
  memcpy(dst, s, len);
  dst[len] = '\0';
}

/* Keeps the rejections with the lowest op indices: one refused here may be
 * seen before the server's answer on earlier ops of the same chunk. */
static void keep_rejection(importer_t *imp, uint64_t index, uint64_t line, int status,
                           const char *code, const char *message, const char *field) {
  uint32_t at = imp->nshown;
  while (at > 0 && imp->shown[at - 1].index > index) at--;
  if (at == ATP_CTL_REJECTIONS_SHOWN) return;
  uint32_t keep =
      imp->nshown < ATP_CTL_REJECTIONS_SHOWN ? imp->nshown : imp->nshown - 1;
  memmove(&imp->shown[at + 1], &imp->shown[at], (keep - at) * sizeof imp->shown[0]);
  if (imp->nshown < ATP_CTL_REJECTIONS_SHOWN) imp->nshown++;
  ATP_ASSERT(at < imp->nshown && imp->nshown <= ATP_CTL_REJECTIONS_SHOWN);
  rejection_t *r = &imp->shown[at];
  r->index = index;
  r->line = line;
  r->status = status;
  copy_str(r->code, sizeof r->code, code, strlen(code));
  copy_str(r->message, sizeof r->message, message, strlen(message));
  copy_str(r->field, sizeof r->field, field ? field : "", field ? strlen(field) : 0);
}

/* An op the file garbles: counted and listed, never sent. */
static void reject_here(importer_t *imp, uint64_t line, const char *message) {
  keep_rejection(imp, imp->seen - 1, line, 0, "bad_request", message, NULL);
  imp->rejected++;
  imp->rejected_here++;
  imp->done++;
  if (!imp->in_chunk) imp->resume_at = imp->seen;
}

/* --- progress ------------------------------------------------------------------ */

static void format_eta(char *out, size_t cap, double s) {
  if (s < 0 || s > 359999) {
    snprintf(out, cap, "--:--");
    return;
  }
  unsigned t = (unsigned)(s + 0.5);
  if (t >= 3600)
    snprintf(out, cap, "%u:%02u:%02u", t / 3600, t / 60 % 60, t % 60);
  else
    snprintf(out, cap, "%u:%02u", t / 60, t % 60);
}

static void draw_progress(importer_t *imp, bool last) {
  if (imp->progress == CTL_PROGRESS_NONE) return;
  double now = now_s(), elapsed = now - imp->started_s;
  uint64_t todo = imp->total > imp->opt->from ? imp->total - imp->opt->from : 0;
  int pct = todo ? (int)(imp->done * 100 / todo) : 100;
  double rate = elapsed > 0 ? (double)imp->done / elapsed : 0;
  char eta[24];
  format_eta(eta, sizeof eta, rate > 0 ? (double)(todo - imp->done) / rate : -1);
  if (imp->progress == CTL_PROGRESS_BAR) {
    if (!last && now - imp->drawn_s < ATP_CTL_PROGRESS_INTERVAL_MS / 1000.0) return;
    char bar[31];
    int full = pct * 30 / 100;
    for (int i = 0; i < 30; i++) bar[i] = i < full ? '#' : '.';
    bar[30] = '\0';
    printf("\r[%s] %llu/%llu ops %3d%%  %.0f ops/s  ETA %s\033[K", bar,
           (unsigned long long)imp->done, (unsigned long long)todo, pct, rate, eta);
    if (last) putchar('\n');
  } else {
    if (!last && pct < imp->next_pct) return;
    if (last && imp->drawn_done == imp->done && imp->drawn_s > 0) return;
    printf("import: %llu/%llu ops (%d%%), %.0f ops/s, ETA %s\n",
           (unsigned long long)imp->done, (unsigned long long)todo, pct, rate, eta);
    while (imp->next_pct <= pct) imp->next_pct += 5;
  }
  imp->drawn_s = now;
  imp->drawn_done = imp->done;
  fflush(stdout);
}

/* --- sending ------------------------------------------------------------------- */

static int64_t int_of(const atp_val_t *obj, const char *key) {
  const atp_val_t *v = atp_val_get(obj, key);
  return v && v->type == ATP_VAL_INT ? v->u.i : 0;
}

static const char *str_of(const atp_val_t *obj, const char *key) {
  const atp_val_t *v = atp_val_get(obj, key);
  return v && v->type == ATP_VAL_STR ? v->u.s : "";
}

/* Reads a batch answer's counts and its non-2xx results into imp. */
static int take_answer(importer_t *imp) {
  atp_arena_reset(&imp->arena);
  atp_val_t *val = NULL;
  atp_parse_error_t perr;
  if (atp_codec_parse(ATP_FORMAT_JSON, imp->resp.body.data, imp->resp.body.len,
                      &imp->arena, &val, &perr) != 0 ||
      val->type != ATP_VAL_OBJECT) {
    fprintf(stderr, "atpctl: POST /v1/batch answered what is not a batch result\n");
    return EXIT_UNREACHABLE;
  }
  imp->received += (uint64_t)int_of(val, "received");
  imp->applied += (uint64_t)int_of(val, "applied");
  imp->replayed += (uint64_t)int_of(val, "replayed");
  imp->rejected += (uint64_t)int_of(val, "rejected");
  imp->queued += (uint64_t)int_of(val, "queued");
  const atp_val_t *results = atp_val_get(val, "results");
  if (results && results->type == ATP_VAL_ARRAY)
    for (uint32_t i = 0; i < results->len; i++) {
      const atp_val_t *r = &results->u.items[i];
      int64_t status = int_of(r, "status"), at = int_of(r, "index");
      if (status >= 200 && status < 300) continue;
      if (at < 0 || at >= (int64_t)imp->in_chunk) continue;
      const atp_val_t *err = atp_val_get(r, "error");
      keep_rejection(imp, imp->index_of[at], imp->line_of[at], (int)status,
                     str_of(err, "code"), str_of(err, "message"), str_of(err, "field"));
    }
  return 0;
}

/* --rate: sleeps until the ops answered so far are not ahead of the rate. A
 * SIGINT cuts the sleep short. */
static void throttle(importer_t *imp) {
  if (!imp->opt->rate_ops) return;
  double due = imp->started_s + (double)imp->done / (double)imp->opt->rate_ops;
  double wait = due - now_s();
  if (wait <= 0 || interrupted) return;
  struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
  nanosleep(&ts, NULL);
}

/* Sends the chunk; a 429 or 503 (a paused flow's full queue, a restore) is
 * retried after its Retry-After, the ids making a resend safe. */
static void flush_chunk(importer_t *imp) {
  if (!imp->in_chunk || imp->stop) return;
  const char *ct =
      imp->wire == ATP_FORMAT_MSGPACK ? "application/msgpack" : "application/x-ndjson";
  if (imp->chunk.failed) {
    fprintf(stderr, "atpctl: out of memory building a chunk\n");
    imp->stop = EXIT_UNREACHABLE;
    return;
  }
  for (int attempt = 0;; attempt++) {
    if (ctl_http_request(imp->http, "POST", "/v1/batch", ct, imp->chunk.data,
                         imp->chunk.len, &imp->resp) != 0) {
      imp->stop = EXIT_UNREACHABLE;
      return;
    }
    int s = imp->resp.status;
    if ((s == 429 || s == 503) && attempt < ATP_CTL_RETRIES_MAX && !interrupted) {
      long wait = imp->resp.retry_after_s;
      if (wait < 1) wait = 1;
      if (wait > ATP_CTL_RETRY_WAIT_S_MAX) wait = ATP_CTL_RETRY_WAIT_S_MAX;
      fprintf(stderr, "atpctl: POST /v1/batch answered %d; again in %ld s\n", s, wait);
      sleep((unsigned)wait);
      continue;
    }
    if (s < 200 || s >= 300) {
      fprintf(stderr, "atpctl: the chunk of ops %llu..%llu was refused whole:\n",
              (unsigned long long)imp->index_of[0],
              (unsigned long long)imp->index_of[imp->in_chunk - 1]);
      ctl_print_answer(&imp->resp, false);
      imp->stop = EXIT_ANSWER;
      return;
    }
    break;
  }
  imp->stop = take_answer(imp);
  if (imp->stop) return;
  imp->chunks++;
  imp->done += imp->in_chunk;
  imp->resume_at = imp->seen;
  imp->in_chunk = 0;
  atp_buf_reset(&imp->chunk);
  draw_progress(imp, false);
  throttle(imp);
  if (interrupted) imp->stop = EXIT_INTERRUPTED;
}

/* Before an op is written: false when it is skipped (--from) or the import
 * stops. Counts it as seen. */
static bool want_op(importer_t *imp) {
  if (interrupted && !imp->stop) imp->stop = EXIT_INTERRUPTED;
  if (imp->stop) return false;
  imp->seen++;
  if (imp->seen <= imp->opt->from) {
    imp->resume_at = imp->seen;
    return false;
  }
  return true;
}

/* After an op was written into the chunk. */
static void op_written(importer_t *imp, uint64_t line) {
  if (imp->wire == ATP_FORMAT_NDJSON) atp_buf_append(&imp->chunk, "\n", 1);
  imp->index_of[imp->in_chunk] = imp->seen - 1;
  imp->line_of[imp->in_chunk] = line;
  imp->in_chunk++;
  if (imp->in_chunk == imp->opt->chunk_ops || imp->chunk.len >= CHUNK_BYTES_MAX)
    flush_chunk(imp);
}

/* Writes an object op with the defaults it lacks. */
static void write_op(importer_t *imp, const atp_val_t *op) {
  atp_writer_t w;
  atp_writer_init(
      &w, imp->wire == ATP_FORMAT_MSGPACK ? ATP_FORMAT_MSGPACK : ATP_FORMAT_JSON,
      &imp->chunk);
  atp_w_object_begin(&w);
  if (imp->opt->op && !atp_val_get(op, "op")) {
    atp_w_key(&w, "op");
    atp_w_cstr(&w, imp->opt->op);
  }
  if (imp->opt->flow && !atp_val_get(op, "flow")) {
    atp_w_key(&w, "flow");
    atp_w_cstr(&w, imp->opt->flow);
  }
  for (uint32_t m = 0; m < op->len; m++) {
    atp_w_keyn(&w, op->u.members[m].key, op->u.members[m].key_len);
    atp_w_val(&w, &op->u.members[m].val);
  }
  atp_w_object_end(&w);
}

/* --- JSON arrays and msgpack streams (the codec's stream parser) ---------------- */

static int on_stream_op(void *ctx, uint32_t index, atp_val_t *val) {
  importer_t *imp = ctx;
  if (!want_op(imp)) goto out;
  if (val->type != ATP_VAL_OBJECT)
    reject_here(imp, 0, "the op is not an object");
  else
    write_op(imp, val), op_written(imp, 0);
out:
  atp_arena_reset(&imp->arena);
  return imp->stop ? 1 : 0;
}

static int on_count(void *ctx, uint32_t index, atp_val_t *val) {
  importer_t *imp = ctx;
  imp->total++;
  atp_arena_reset(&imp->arena);
  return 0;
}

/* --- NDJSON --------------------------------------------------------------------- */

/* The next line of [*p, end) without its newline; false at the end. */
static bool next_line(const char **p, const char *end, const char **line, size_t *len) {
  if (*p >= end) return false;
  const char *nl = memchr(*p, '\n', (size_t)(end - *p));
  *line = *p;
  *len = (size_t)((nl ? nl : end) - *p);
  *p = nl ? nl + 1 : end;
  return true;
}

static bool blank(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return false;
  return true;
}

static void ndjson_pass(importer_t *imp, const char *data, size_t size, bool count) {
  const char *p = data, *end = data + size, *line;
  size_t len;
  uint64_t lineno = 0;
  while (next_line(&p, end, &line, &len)) {
    lineno++;
    if (blank(line, len)) continue;
    if (count) {
      imp->total++;
      continue;
    }
    if (!want_op(imp)) {
      if (imp->stop) return;
      continue;
    }
    atp_arena_reset(&imp->arena);
    atp_val_t *val = NULL;
    atp_parse_error_t perr;
    if (atp_codec_parse(ATP_FORMAT_JSON, line, len, &imp->arena, &val, &perr) != 0) {
      char why[160];
      snprintf(why, sizeof why, "not JSON at byte %zu: %s", perr.offset, perr.message);
      reject_here(imp, lineno, why);
    } else if (val->type != ATP_VAL_OBJECT) {
      reject_here(imp, lineno, "the op is not an object");
    } else {
      write_op(imp, val);
      op_written(imp, lineno);
    }
  }
}

/* --- CSV ------------------------------------------------------------------------ */

typedef struct {
  size_t off, len; /* in importer_t.cells */
} cell_t;

/* Reads one CSV record (RFC 4180: quoted cells may hold commas, quotes doubled
 * and newlines) into imp->cells; returns its cell count, 0 for a blank line,
 * -1 at the end of the data, -2 for more than ATP_CTL_CSV_COLUMNS_MAX cells.
 * *lineno is advanced past every newline read. */
static int csv_record(importer_t *imp, const char **p, const char *end, cell_t *cells,
                      uint64_t *lineno) {
  if (*p >= end) return -1;
  atp_buf_reset(&imp->cells);
  const char *s = *p;
  int n = 0;
  bool any = false;
  for (;;) {
    if (n == ATP_CTL_CSV_COLUMNS_MAX) {
      while (s < end && *s != '\n') s++;
      *p = s < end ? s + 1 : end;
      ++*lineno;
      return -2;
    }
    cells[n].off = imp->cells.len;
    if (s < end && *s == '"') {
      any = true;
      for (s++; s < end; s++) {
        if (*s == '"' && s + 1 < end && s[1] == '"') {
          atp_buf_append(&imp->cells, s++, 1);
        } else if (*s == '"') {
          s++;
          break;
        } else {
          if (*s == '\n') ++*lineno;
          atp_buf_append(&imp->cells, s, 1);
        }
      }
    }
    const char *start = s;
    while (s < end && *s != ',' && *s != '\n') s++;
    size_t raw = (size_t)(s - start);
    if (raw && start[raw - 1] == '\r' && (s == end || *s == '\n')) raw--;
    if (raw) any = true;
    atp_buf_append(&imp->cells, start, raw);
    cells[n].len = imp->cells.len - cells[n].off;
    n++;
    if (s < end && *s == ',') {
      any = true;
      s++;
      continue;
    }
    *p = s < end ? s + 1 : end;
    ++*lineno;
    return any ? n : 0;
  }
}

/* Fields whose cells are sent as integers when they read as one. */
static bool int_field(const char *name) {
  static const char *const names[] = {"delta",       "on_hand",    "safety_stock",
                                      "qty",         "ttl_ms",     "change_from",
                                      "occurred_at", "counted_at", "as_of"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!strcmp(name, names[i])) return true;
  return false;
}

static bool integer_text(const char *s, size_t len, long long *out) {
  if (!len || len > 19) return false;
  size_t i = s[0] == '-' ? 1 : 0;
  if (i == len) return false;
  for (size_t k = i; k < len; k++)
    if (s[k] < '0' || s[k] > '9') return false;
  char tmp[24];
  memcpy(tmp, s, len);
  tmp[len] = '\0';
  errno = 0;
  *out = strtoll(tmp, NULL, 10);
  return errno == 0;
}

/* One cell's value: an integer for a numeric field, true/false for
 * allow_split, a JSON array or object as it is (lines, locations, add,
 * release), else the text. */
static void write_cell(importer_t *imp, atp_writer_t *w, const char *name,
                       const char *s, size_t len) {
  long long v;
  if (int_field(name) && integer_text(s, len, &v)) {
    atp_w_int(w, v);
    return;
  }
  if (!strcmp(name, "allow_split") && (len == 4 || len == 5) &&
      (!memcmp(s, "true", len) || !memcmp(s, "false", len))) {
    atp_w_bool(w, len == 4);
    return;
  }
  if (s[0] == '[' || s[0] == '{') {
    atp_arena_reset(&imp->arena);
    atp_val_t *val = NULL;
    atp_parse_error_t perr;
    if (atp_codec_parse(ATP_FORMAT_JSON, s, len, &imp->arena, &val, &perr) == 0) {
      atp_w_val(w, val);
      return;
    }
  }
  atp_w_str(w, s, len);
}

/* False when the header leaves op or flow to nobody (said on stderr). */
static bool csv_pass(importer_t *imp, const char *data, size_t size, bool count) {
  const char *p = data, *end = data + size;
  cell_t head[ATP_CTL_CSV_COLUMNS_MAX], cells[ATP_CTL_CSV_COLUMNS_MAX];
  char names[ATP_CTL_CSV_COLUMNS_MAX][64];
  uint64_t lineno = 0;
  int ncols;
  while ((ncols = csv_record(imp, &p, end, head, &lineno)) == 0) {
  }
  if (ncols < 0) return true; /* no header: no ops */
  bool has_op = false, has_flow = false;
  for (int c = 0; c < ncols; c++) {
    copy_str(names[c], sizeof names[c], imp->cells.data + head[c].off, head[c].len);
    has_op |= !strcmp(names[c], "op");
    has_flow |= !strcmp(names[c], "flow");
  }
  if (!has_op && !imp->opt->op) {
    fprintf(stderr, "atpctl: %s: the header has no op column; say --op OP\n",
            imp->opt->file);
    return false;
  }
  if (!has_flow && !imp->opt->flow) {
    fprintf(stderr, "atpctl: %s: the header has no flow column; say --flow FLOW\n",
            imp->opt->file);
    return false;
  }
  int n;
  for (;;) {
    uint64_t first_line = lineno + 1;
    n = csv_record(imp, &p, end, cells, &lineno);
    if (n == -1) break;
    if (n == 0) continue;
    if (count) {
      imp->total++;
      continue;
    }
    if (!want_op(imp)) {
      if (imp->stop) return true;
      continue;
    }
    if (n == -2 || n > ncols) {
      reject_here(imp, first_line, "the row has more cells than the header");
      continue;
    }
    atp_writer_t w;
    atp_writer_init(
        &w, imp->wire == ATP_FORMAT_MSGPACK ? ATP_FORMAT_MSGPACK : ATP_FORMAT_JSON,
        &imp->chunk);
    atp_w_object_begin(&w);
    const char *d = imp->cells.data;
    bool op_set = false, flow_set = false;
    for (int c = 0; c < n; c++) {
      if (!cells[c].len) continue;
      op_set |= !strcmp(names[c], "op");
      flow_set |= !strcmp(names[c], "flow");
    }
    if (!op_set && imp->opt->op) atp_w_key(&w, "op"), atp_w_cstr(&w, imp->opt->op);
    if (!flow_set && imp->opt->flow)
      atp_w_key(&w, "flow"), atp_w_cstr(&w, imp->opt->flow);
    for (int c = 0; c < n; c++) {
      if (!cells[c].len) continue;
      atp_w_key(&w, names[c]);
      write_cell(imp, &w, names[c], d + cells[c].off, cells[c].len);
    }
    atp_w_object_end(&w);
    op_written(imp, first_line);
  }
  return true;
}

/* --- the command ------------------------------------------------------------------ */

static bool ends_with(const char *s, const char *tail) {
  size_t n = strlen(s), t = strlen(tail);
  return n >= t && !strcasecmp(s + n - t, tail);
}

/* The input format from --format or the file name; -1 when neither says. */
static int input_of(const ctl_import_t *opt) {
  const char *f = opt->format;
  if (f) {
    if (!strcmp(f, "csv")) return IN_CSV;
    if (!strcmp(f, "ndjson")) return IN_NDJSON;
    if (!strcmp(f, "json")) return IN_JSON;
    if (!strcmp(f, "msgpack")) return IN_MSGPACK;
    return -1;
  }
  if (ends_with(opt->file, ".csv")) return IN_CSV;
  if (ends_with(opt->file, ".ndjson") || ends_with(opt->file, ".jsonl"))
    return IN_NDJSON;
  if (ends_with(opt->file, ".json")) return IN_JSON;
  if (ends_with(opt->file, ".msgpack") || ends_with(opt->file, ".mpk") ||
      ends_with(opt->file, ".mp"))
    return IN_MSGPACK;
  return -1;
}

/* Both passes over the file; false when the file itself is broken. */
static bool run_pass(importer_t *imp, const char *data, size_t size, bool count) {
  atp_parse_error_t perr;
  int rc = 0;
  switch (imp->input) {
    case IN_CSV:
      if (!csv_pass(imp, data, size, count)) {
        imp->stop = EXIT_USAGE;
        return false;
      }
      break;
    case IN_NDJSON:
      ndjson_pass(imp, data, size, count);
      break;
    case IN_JSON:
    case IN_MSGPACK:
      rc = atp_codec_parse_stream(
          imp->input == IN_JSON ? ATP_FORMAT_JSON : ATP_FORMAT_MSGPACK, data, size,
          &imp->arena, UINT32_MAX, count ? on_count : on_stream_op, imp, &perr);
      if (rc != 0 && rc != 1) {
        fprintf(stderr, "atpctl: %s: not %s at byte %zu: %s\n", imp->opt->file,
                imp->input == IN_JSON ? "JSON" : "MessagePack", perr.offset,
                perr.message);
        return false;
      }
      break;
  }
  return true;
}

static void print_summary_json(importer_t *imp, double elapsed) {
  atp_buf_t out;
  atp_buf_init(&out, 0);
  atp_writer_t w;
  atp_writer_init(&w, ATP_FORMAT_JSON, &out);
  atp_w_object_begin(&w);
  atp_w_key(&w, "file");
  atp_w_cstr(&w, imp->opt->file);
  const struct {
    const char *key;
    uint64_t v;
  } counts[] = {
      {"ops", imp->total},
      {"skipped", imp->opt->from < imp->total ? imp->opt->from : imp->total},
      {"chunks", imp->chunks},
      {"received", imp->received},
      {"applied", imp->applied},
      {"replayed", imp->replayed},
      {"rejected", imp->rejected},
      {"rejected_here", imp->rejected_here},
      {"queued", imp->queued},
      {"next", imp->resume_at},
      {"elapsed_ms", (uint64_t)(elapsed * 1000)},
      {"ops_per_s", elapsed > 0 ? (uint64_t)((double)imp->done / elapsed) : 0}};
  for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
    atp_w_key(&w, counts[i].key);
    atp_w_uint(&w, counts[i].v);
  }
  atp_w_key(&w, "interrupted");
  atp_w_bool(&w, imp->stop == EXIT_INTERRUPTED);
  atp_w_key(&w, "rejections");
  atp_w_array_begin(&w);
  for (uint32_t i = 0; i < imp->nshown; i++) {
    const rejection_t *r = &imp->shown[i];
    atp_w_object_begin(&w);
    atp_w_key(&w, "index");
    atp_w_uint(&w, r->index);
    if (r->line) atp_w_key(&w, "line"), atp_w_uint(&w, r->line);
    atp_w_key(&w, "status");
    atp_w_int(&w, r->status);
    atp_w_key(&w, "error");
    atp_w_object_begin(&w);
    atp_w_key(&w, "code");
    atp_w_cstr(&w, r->code);
    atp_w_key(&w, "message");
    atp_w_cstr(&w, r->message);
    if (r->field[0]) atp_w_key(&w, "field"), atp_w_cstr(&w, r->field);
    atp_w_object_end(&w);
    atp_w_object_end(&w);
  }
  atp_w_array_end(&w);
  atp_w_object_end(&w);
  if (!out.failed) printf("%.*s\n", (int)out.len, out.data);
  atp_buf_free(&out);
}

static void print_summary(importer_t *imp, double elapsed) {
  if (imp->opt->json) {
    print_summary_json(imp, elapsed);
  } else {
    printf("imported %s: %llu ops in %.2f s (%.0f ops/s)\n", imp->opt->file,
           (unsigned long long)imp->done, elapsed,
           elapsed > 0 ? (double)imp->done / elapsed : 0.0);
    if (imp->opt->from)
      printf("  skipped   %llu (--from)\n", (unsigned long long)imp->opt->from);
    printf("  received  %llu\n  applied   %llu\n  replayed  %llu\n  rejected  %llu",
           (unsigned long long)imp->received, (unsigned long long)imp->applied,
           (unsigned long long)imp->replayed, (unsigned long long)imp->rejected);
    if (imp->rejected_here)
      printf(" (%llu refused here, not sent)", (unsigned long long)imp->rejected_here);
    printf("\n  queued    %llu\n", (unsigned long long)imp->queued);
    if (imp->nshown) {
      printf("first rejections (%u of %llu):\n", imp->nshown,
             (unsigned long long)imp->rejected);
      for (uint32_t i = 0; i < imp->nshown; i++) {
        const rejection_t *r = &imp->shown[i];
        printf("  op %llu", (unsigned long long)r->index);
        if (r->line) printf(" (line %llu)", (unsigned long long)r->line);
        if (r->status)
          printf(": %d %s: %s", r->status, r->code, r->message);
        else
          printf(": refused here: %s", r->message);
        if (r->field[0]) printf(" (field %s)", r->field);
        putchar('\n');
      }
    }
  }
  if (imp->stop == EXIT_INTERRUPTED || imp->stop == EXIT_UNREACHABLE ||
      (imp->stop && imp->resume_at < imp->total))
    fprintf(
        stderr,
        "atpctl: import stopped with %llu of %llu ops answered; run the same command "
        "again to resume (applied ops replay), or add --from %llu\n",
        (unsigned long long)imp->resume_at, (unsigned long long)imp->total,
        (unsigned long long)imp->resume_at);
}

/* Maps the file read-only; an empty file maps to nothing. */
static int map_file(const char *path, const char **data, size_t *size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) != 0) {
    fprintf(stderr, "atpctl: %s: %s\n", path, strerror(errno));
    if (fd >= 0) close(fd);
    return -1;
  }
  *size = (size_t)st.st_size;
  *data = "";
  if (*size) {
    void *m = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      fprintf(stderr, "atpctl: %s: %s\n", path, strerror(errno));
      close(fd);
      return -1;
    }
    madvise(m, *size, MADV_SEQUENTIAL);
    *data = m;
  }
  close(fd);
  return 0;
}

int ctl_import(ctl_http_t *h, const ctl_import_t *opt) {
  ATP_ASSERT(opt->chunk_ops >= 1 && opt->chunk_ops <= ATP_BATCH_OPS_MAX);
  int input = input_of(opt);
  if (input < 0) {
    fprintf(stderr,
            "atpctl: %s: say --format csv|ndjson|json|msgpack (the name does not)\n",
            opt->file);
    return EXIT_USAGE;
  }
  const char *data;
  size_t size;
  if (map_file(opt->file, &data, &size) != 0) return EXIT_USAGE;
  importer_t *imp = atp_calloc(1, sizeof *imp);
  uint64_t *index_of = atp_malloc(opt->chunk_ops * sizeof *index_of);
  uint64_t *line_of = atp_malloc(opt->chunk_ops * sizeof *line_of);
  if (!imp || !index_of || !line_of) {
    fprintf(stderr, "atpctl: out of memory\n");
    exit(EXIT_UNREACHABLE);
  }
  imp->http = h;
  imp->opt = opt;
  imp->input = (input_t)input;
  /* CSV goes as msgpack, the server's cheaper path (a third less CPU an op
   * than NDJSON); NDJSON and JSON keep their text, msgpack its bytes. */
  imp->wire =
      input == IN_MSGPACK || input == IN_CSV ? ATP_FORMAT_MSGPACK : ATP_FORMAT_NDJSON;
  imp->index_of = index_of;
  imp->line_of = line_of;
  atp_buf_init(&imp->chunk, 0);
  atp_buf_init(&imp->cells, 0);
  atp_arena_init(&imp->arena, 64 << 10, ATP_CTL_RESPONSE_BYTES_MAX * 4ull);
  ctl_resp_init(&imp->resp);
  imp->progress = opt->progress;
  if (opt->json) imp->progress = CTL_PROGRESS_NONE;
  if (imp->progress == CTL_PROGRESS_AUTO)
    imp->progress = isatty(STDOUT_FILENO) ? CTL_PROGRESS_BAR : CTL_PROGRESS_LINES;
  imp->next_pct = 5;
  int status = 0;
  if (!run_pass(imp, data, size, true)) {
    status = imp->stop ? imp->stop : EXIT_ANSWER;
    goto out;
  }
  struct sigaction sa = {.sa_handler = on_sigint};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  imp->started_s = now_s();
  bool whole = run_pass(imp, data, size, false);
  flush_chunk(imp);
  if (interrupted && !imp->stop && imp->resume_at < imp->total)
    imp->stop = EXIT_INTERRUPTED;
  double elapsed = now_s() - imp->started_s;
  if (imp->progress != CTL_PROGRESS_NONE) draw_progress(imp, true);
  print_summary(imp, elapsed);
  status = imp->stop       ? imp->stop
           : !whole        ? EXIT_ANSWER
           : imp->rejected ? EXIT_ANSWER
                           : 0;
out:
  if (size) munmap((void *)data, size);
  ctl_resp_free(&imp->resp);
  atp_arena_destroy(&imp->arena);
  atp_buf_free(&imp->chunk);
  atp_buf_free(&imp->cells);
  atp_free(index_of);
  atp_free(line_of);
  atp_free(imp);
  return status;
}

int ctl_read_file(const char *path, atp_buf_t *buf) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "atpctl: %s: %s\n", path, strerror(errno));
    return ATP_EBADREQ;
  }
  char tmp[65536];
  size_t n;
  while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) atp_buf_append(buf, tmp, n);
  bool err = ferror(f);
  fclose(f);
  atp_buf_append(buf, "", 1);
  if (err || buf->failed) {
    fprintf(stderr, "atpctl: %s: %s\n", path, err ? "read error" : "too large");
    return ATP_EBADREQ;
  }
  buf->len--;
  return 0;
}
