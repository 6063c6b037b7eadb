/* atpctl.c - bin/atpctl, the operator's command line for atpd.
 *
 *   atpctl [--url URL] [--token T] [--json] COMMAND [ARGS] [OPTIONS]
 *   atpctl help [COMMAND] | COMMAND --help | --version
 *
 * The commands are one table (name, arity, options, help, run_ function);
 * `atpctl --help` lists them and `atpctl help CMD` prints one's page. URL
 * defaults to $ATPD_URL or http://127.0.0.1:8080, the token to $ATPD_TOKEN
 * (flags win). Options may come anywhere on the line ("--" ends them); one
 * that the command does not take is a usage error. HTTP goes through libcurl
 * (ctl_http.c); answers are printed for people, or raw with --json
 * (ctl_output.c); import is ctl_import.c. Exit status: 0 ok, 1 rejected items
 * or an answer that is not 2xx, 2 a usage error (what was wrong, then the
 * usage, on stderr), 3 when the server cannot be reached (connect refused,
 * DNS, timeout) or its answer read, 130 an import interrupted by SIGINT.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atp/assert.h"
#include "atp/codec.h"
#include "atp/error.h"
#include "atp/limits.h"
#include "atp/memory.h"
#include "atp/version.h"
#include "ctl.h"

/* Positional arguments one command line may carry (the longest command
 * takes six); more is a usage error, not a bigger array. */
#define ARGS_MAX 16

/* The shipped deploy/ownership.example.json lets "checkout" write
 * reservations; a channel it refuses would make the first try a 403. */
#define DEFAULT_CHANNEL "checkout"
#define DEFAULT_URL     "http://127.0.0.1:8080"

/* Every option atpctl knows; which command takes which is in command_t. */
typedef enum {
  O_URL,
  O_TOKEN,
  O_TIMEOUT_MS,
  O_CONNECT_TIMEOUT_MS,
  O_CACERT,
  O_INSECURE,
  O_JSON,
  O_CHANNEL,
  O_CHUNK,
  O_OP,
  O_FLOW,
  O_FROM,
  O_RATE,
  O_FORMAT,
  O_PROGRESS,
  O_OWNER,
  O_STATUS,
  O_CURSOR,
  O_LIMIT,
  O_PAYLOAD,
  O_NOTE,
  O_BY,
  O_REASON,
  O_SOURCE,
  O_AS_OF,
  O_ID,
  O_ACTION,
  O_SINCE,
  O_SHOW,
  O_HELP,
  O_COUNT
} option_id_t;

typedef struct {
  const char *name;
  bool takes_value; /* false: a flag */
  bool global;      /* every command takes it */
} option_t;

static const option_t options[O_COUNT] = {
    [O_URL] = {"--url", true, true},
    [O_TOKEN] = {"--token", true, true},
    [O_TIMEOUT_MS] = {"--timeout-ms", true, true},
    [O_CONNECT_TIMEOUT_MS] = {"--connect-timeout-ms", true, true},
    [O_CACERT] = {"--cacert", true, true},
    [O_INSECURE] = {"--insecure", false, true},
    [O_JSON] = {"--json", false, true},
    [O_CHANNEL] = {"--channel", true, false},
    [O_CHUNK] = {"--chunk", true, false},
    [O_OP] = {"--op", true, false},
    [O_FLOW] = {"--flow", true, false},
    [O_FROM] = {"--from", true, false},
    [O_RATE] = {"--rate", true, false},
    [O_FORMAT] = {"--format", true, false},
    [O_PROGRESS] = {"--progress", true, false},
    [O_OWNER] = {"--owner", true, false},
    [O_STATUS] = {"--status", true, false},
    [O_CURSOR] = {"--cursor", true, false},
    [O_LIMIT] = {"--limit", true, false},
    [O_PAYLOAD] = {"--payload", true, false},
    [O_NOTE] = {"--note", true, false},
    [O_BY] = {"--by", true, false},
    [O_REASON] = {"--reason", true, false},
    [O_SOURCE] = {"--source", true, false},
    [O_AS_OF] = {"--as-of", true, false},
    [O_ID] = {"--id", true, false},
    [O_ACTION] = {"--action", true, false},
    [O_SINCE] = {"--since", true, false},
    [O_SHOW] = {"--show", false, false},
    [O_HELP] = {"--help", false, true},
};

/* One parsed command line: the options and the positional arguments. */
typedef struct {
  const char *opt[O_COUNT]; /* NULL: not given; a flag given is "" */
  char *pos[ARGS_MAX];      /* pos[0] is the command */
  int npos;
} args_t;

/* What a command runs with. */
typedef struct {
  ctl_http_t *http;
  const args_t *args;
  char **argv; /* the command's own arguments, after its name */
  int argc;
  bool json;
} call_t;

typedef struct {
  const char *name;
  int min, max;                /* positional arguments after the command */
  const char *args;            /* their names, for the usage */
  const char *options;         /* the command's own options, space-separated */
  const char *summary;         /* one line for the command list */
  const char *help;            /* its page: what it calls and how */
  int (*run)(const call_t *c); /* returns the exit status */
} command_t;

static const command_t commands[];
static const size_t commands_count;

static void print_usage(FILE *f) {
  fputs("usage: atpctl [--url URL] [--token T] [--json] COMMAND [ARGS] [OPTIONS]\n", f);
  char line[128];
  for (size_t i = 0; i < commands_count; i++) {
    snprintf(line, sizeof line, "%s %s", commands[i].name,
             commands[i].max ? commands[i].args : "");
    fprintf(f, "  %-38s %s\n", line, commands[i].summary);
  }
  fputs(
      "  help COMMAND | COMMAND --help         one command's page\n"
      "  --help | --version\n"
      "Global options: --url URL ($ATPD_URL, default " DEFAULT_URL
      "), --token T\n"
      "($ATPD_TOKEN), --timeout-ms N (whole request, default 10000), "
      "--connect-timeout-ms N\n"
      "(default 3000), --cacert FILE, --insecure (https), --json (the raw answer).\n"
      "Exit status: 0 ok, 1 rejected items or an answer that is not 2xx, 2 a usage "
      "error,\n"
      "3 the server cannot be reached (refused, DNS, timeout), 130 an interrupted "
      "import.\n",
      f);
}

static void print_command_help(const command_t *cmd) {
  printf("usage: atpctl [GLOBAL OPTIONS] %s %s\n\n%s", cmd->name,
         cmd->max ? cmd->args : "", cmd->help);
  printf(
      "\nGlobal options: --url URL, --token T, --timeout-ms N, --connect-timeout-ms "
      "N,\n"
      "--cacert FILE, --insecure, --json (see atpctl --help).\n");
}

/* Says what was wrong, then the usage, on stderr; returns the usage code. */
static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("atpctl: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  print_usage(stderr);
  return EXIT_USAGE;
}

/* An integer argument in [min, max]; false after a usage error naming it. */
static bool int_arg(const char *name, const char *text, long long min, long long max,
                    long long *out) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (!*text || *end || errno || v < min || v > max) {
    if (min == 1 && max == LLONG_MAX)
      usage_error("%s must be a positive integer, got '%s'", name, text);
    else
      usage_error("%s must be an integer in %lld..%lld, got '%s'", name, min, max,
                  text);
    return false;
  }
  *out = v;
  return true;
}

static bool positive(const char *name, const char *text, long long *out) {
  return int_arg(name, text, 1, LLONG_MAX, out);
}

/* --- building requests --------------------------------------------------------- */

/* A path with percent-encoded pieces and a query string. */
typedef struct {
  atp_buf_t buf;
  bool has_query;
} path_t;

static void path_init(path_t *p, const char *start) {
  atp_buf_init(&p->buf, 0);
  p->has_query = strchr(start, '?') != NULL;
  atp_buf_append(&p->buf, start, strlen(start));
}

static void path_segment(path_t *p, const char *s) {
  ctl_url_encode(&p->buf, s);
}

static void path_raw(path_t *p, const char *s) {
  atp_buf_append(&p->buf, s, strlen(s));
}

/* Adds key=value to the query when value is given. */
static void path_query(path_t *p, const char *key, const char *value) {
  if (!value) return;
  atp_buf_append(&p->buf, p->has_query ? "&" : "?", 1);
  p->has_query = true;
  atp_buf_append(&p->buf, key, strlen(key));
  atp_buf_append(&p->buf, "=", 1);
  ctl_url_encode(&p->buf, value);
}

static const char *path_str(path_t *p) {
  atp_buf_append(&p->buf, "", 1);
  p->buf.len--;
  return p->buf.failed ? "/" : p->buf.data;
}

/* Sends one request and prints its answer; returns the exit status. */
static int call(const call_t *c, const char *method, path_t *path, const char *ct,
                const atp_buf_t *body) {
  ctl_resp_t resp;
  ctl_resp_init(&resp);
  int status;
  if (body && body->failed)
    status = (fputs("atpctl: out of memory\n", stderr), EXIT_UNREACHABLE);
  else if (ctl_http_request(c->http, method, path_str(path), ct,
                            body ? body->data : NULL, body ? body->len : 0, &resp) != 0)
    status = EXIT_UNREACHABLE;
  else
    status = ctl_print_answer(&resp, c->json);
  ctl_resp_free(&resp);
  atp_buf_free(&path->buf);
  return status;
}

/* call() with a JSON body the writer w wrote into body. */
static int call_json(const call_t *c, const char *method, path_t *path,
                     atp_buf_t *body) {
  int status = call(c, method, path, "application/json", body);
  atp_buf_free(body);
  return status;
}

/* An RFC 3339 string or integer milliseconds, as the contract takes a time. */
static void write_time(atp_writer_t *w, const char *text) {
  char *end = NULL;
  errno = 0;
  long long v = strtoll(text, &end, 10);
  if (*text && !*end && !errno)
    atp_w_int(w, v);
  else
    atp_w_cstr(w, text);
}

/* Writes "key": value when value is given. */
static void write_opt_str(atp_writer_t *w, const char *key, const char *value) {
  if (!value) return;
  atp_w_keyn(w, key, strlen(key));
  atp_w_cstr(w, value);
}

/* --- commands ------------------------------------------------------------------ */

/* get SKU [LOCATION] */
static int run_get(const call_t *c) {
  path_t p;
  path_init(&p, "/v1/availability");
  path_query(&p, "sku", c->argv[0]);
  path_query(&p, "location", c->argc == 2 ? c->argv[1] : NULL);
  return call(c, "GET", &p, NULL, NULL);
}

/* group SKU GROUP */
static int run_group(const call_t *c) {
  path_t p;
  path_init(&p, "/v1/availability");
  path_query(&p, "sku", c->argv[0]);
  path_query(&p, "group", c->argv[1]);
  return call(c, "GET", &p, NULL, NULL);
}

/* reserve ID SKU LOCATION QTY [TTL_MS]: one line, the channel's hold. */
static int run_reserve(const call_t *c) {
  long long qty = 0, ttl = 0;
  if (!positive("QTY", c->argv[3], &qty)) return EXIT_USAGE;
  if (c->argc == 5 && !positive("TTL_MS", c->argv[4], &ttl)) return EXIT_USAGE;
  const char *channel =
      c->args->opt[O_CHANNEL] ? c->args->opt[O_CHANNEL] : DEFAULT_CHANNEL;
  if (!*channel) return usage_error("--channel needs a value");
  atp_buf_t body;
  atp_buf_init(&body, 0);
  atp_writer_t w;
  atp_writer_init(&w, ATP_FORMAT_JSON, &body);
  atp_w_object_begin(&w);
  write_opt_str(&w, "id", c->argv[0]);
  atp_w_key(&w, "lines");
  atp_w_array_begin(&w);
  atp_w_object_begin(&w);
  write_opt_str(&w, "sku", c->argv[1]);
  write_opt_str(&w, "location", c->argv[2]);
  atp_w_key(&w, "qty");
  atp_w_int(&w, qty);
  atp_w_object_end(&w);
  atp_w_array_end(&w);
  if (c->argc == 5) atp_w_key(&w, "ttl_ms"), atp_w_int(&w, ttl);
  write_opt_str(&w, "channel", channel);
  atp_w_object_end(&w);
  path_t p;
  path_init(&p, "/v1/reservations");
  return call_json(c, "POST", &p, &body);
}

/* show ID */
static int run_show(const call_t *c) {
  path_t p;
  path_init(&p, "/v1/reservations/");
  path_segment(&p, c->argv[0]);
  return call(c, "GET", &p, NULL, NULL);
}

/* POST PREFIX/ID/ACTION with the body the caller wrote (or {}). */
static int post_action(const call_t *c, const char *prefix, const char *id,
                       const char *action, atp_buf_t *body) {
  atp_buf_t empty;
  if (!body) {
    atp_buf_init(&empty, 0);
    atp_buf_append(&empty, "{}", 2);
    body = &empty;
  }
  path_t p;
  path_init(&p, prefix);
  path_segment(&p, id);
  path_raw(&p, action);
  return call_json(c, "POST", &p, body);
}

static int run_commit(const call_t *c) {
  return post_action(c, "/v1/reservations/", c->argv[0], "/commit", NULL);
}

static int run_release(const call_t *c) {
  return post_action(c, "/v1/reservations/", c->argv[0], "/release", NULL);
}

/* health: /healthz, then /readyz; the first answer that is not 2xx decides. */
static int run_health(const call_t *c) {
  path_t p;
  path_init(&p, "/healthz");
  int s = call(c, "GET", &p, NULL, NULL);
  if (s == EXIT_UNREACHABLE) return s;
  path_init(&p, "/readyz");
  int r = call(c, "GET", &p, NULL, NULL);
  return s ? s : r;
}

static int run_metrics(const call_t *c) {
  path_t p;
  path_init(&p, "/metrics");
  return call(c, "GET", &p, NULL, NULL);
}

/* import FILE: ctl_import.c. */
static int run_import(const call_t *c) {
  const char *const *o = c->args->opt;
  ctl_import_t opt = {.file = c->argv[0],
                      .format = o[O_FORMAT],
                      .op = o[O_OP],
                      .flow = o[O_FLOW],
                      .chunk_ops = ATP_CTL_CHUNK_OPS_DEFAULT,
                      .json = c->json,
                      .progress = CTL_PROGRESS_AUTO};
  long long v;
  if (o[O_CHUNK]) {
    if (!int_arg("--chunk", o[O_CHUNK], 1, ATP_BATCH_OPS_MAX, &v)) return EXIT_USAGE;
    opt.chunk_ops = (uint64_t)v;
  }
  if (o[O_FROM]) {
    if (!int_arg("--from", o[O_FROM], 0, LLONG_MAX, &v)) return EXIT_USAGE;
    opt.from = (uint64_t)v;
  }
  if (o[O_RATE]) {
    if (!int_arg("--rate", o[O_RATE], 1, 100000000, &v)) return EXIT_USAGE;
    opt.rate_ops = (uint64_t)v;
  }
  if (o[O_FORMAT] && strcmp(o[O_FORMAT], "csv") && strcmp(o[O_FORMAT], "ndjson") &&
      strcmp(o[O_FORMAT], "json") && strcmp(o[O_FORMAT], "msgpack"))
    return usage_error("--format is csv, ndjson, json or msgpack, got '%s'",
                       o[O_FORMAT]);
  if (o[O_PROGRESS]) {
    static const char *const names[] = {"auto", "bar", "lines", "none"};
    int k = 0;
    while (k < 4 && strcmp(o[O_PROGRESS], names[k])) k++;
    if (k == 4)
      return usage_error("--progress is auto, bar, lines or none, got '%s'",
                         o[O_PROGRESS]);
    opt.progress = k; /* the order of CTL_PROGRESS_* */
  }
  if ((o[O_OP] && !*o[O_OP]) || (o[O_FLOW] && !*o[O_FLOW]))
    return usage_error("--op and --flow need a value");
  return ctl_import(c->http, &opt);
}

/* dead-letters [--owner O] [--flow F] [--status S] [--cursor C] */
static int run_dead_letters(const call_t *c) {
  const char *const *o = c->args->opt;
  path_t p;
  path_init(&p, "/v1/dead-letters");
  path_query(&p, "owner", o[O_OWNER]);
  path_query(&p, "flow", o[O_FLOW]);
  path_query(&p, "status", o[O_STATUS]);
  path_query(&p, "cursor", o[O_CURSOR]);
  path_query(&p, "limit", o[O_LIMIT]);
  return call(c, "GET", &p, NULL, NULL);
}

/* An object body with the named string options. */
static void body_of(atp_buf_t *body, const args_t *args, const option_id_t *ids,
                    const char *const *keys, int n) {
  atp_buf_init(body, 0);
  atp_writer_t w;
  atp_writer_init(&w, ATP_FORMAT_JSON, body);
  atp_w_object_begin(&w);
  for (int i = 0; i < n; i++) write_opt_str(&w, keys[i], args->opt[ids[i]]);
  atp_w_object_end(&w);
}

/* replay ID [--payload FILE]: the file is the corrected op, in JSON. */
static int run_replay(const call_t *c) {
  const char *file = c->args->opt[O_PAYLOAD];
  atp_buf_t body;
  if (!file) {
    body_of(&body, c->args, (const option_id_t[]){O_BY}, (const char *const[]){"by"},
            1);
    return post_action(c, "/v1/dead-letters/", c->argv[0], "/replay", &body);
  }
  atp_buf_init(&body, ATP_HTTP_BODY_BYTES_MAX);
  atp_buf_t text;
  atp_buf_init(&text, ATP_HTTP_BODY_BYTES_MAX);
  atp_arena_t arena;
  atp_arena_init(&arena, 64 << 10, 16 * ATP_HTTP_BODY_BYTES_MAX);
  atp_val_t *val = NULL;
  atp_parse_error_t perr;
  int status = 0;
  if (ctl_read_file(file, &text) != 0) {
    status = EXIT_USAGE;
  } else if (atp_codec_parse(ATP_FORMAT_JSON, text.data, text.len, &arena, &val,
                             &perr) != 0 ||
             val->type != ATP_VAL_OBJECT) {
    status = usage_error("--payload %s: not a JSON object (%s at byte %zu)", file,
                         val ? "not an object" : perr.message, perr.offset);
  } else {
    atp_writer_t w;
    atp_writer_init(&w, ATP_FORMAT_JSON, &body);
    atp_w_object_begin(&w);
    atp_w_key(&w, "payload");
    atp_w_val(&w, val);
    write_opt_str(&w, "by", c->args->opt[O_BY]);
    atp_w_object_end(&w);
  }
  atp_arena_destroy(&arena);
  atp_buf_free(&text);
  if (status) return atp_buf_free(&body), status;
  return post_action(c, "/v1/dead-letters/", c->argv[0], "/replay", &body);
}

/* resolve ID --note N [--by B] */
static int run_resolve(const call_t *c) {
  if (!c->args->opt[O_NOTE]) return usage_error("resolve needs --note NOTE");
  atp_buf_t body;
  body_of(&body, c->args, (const option_id_t[]){O_NOTE, O_BY},
          (const char *const[]){"note", "by"}, 2);
  return post_action(c, "/v1/dead-letters/", c->argv[0], "/resolve", &body);
}

static int run_flows(const call_t *c) {
  path_t p;
  path_init(&p, "/v1/flows");
  return call(c, "GET", &p, NULL, NULL);
}

/* pause FLOW --reason R [--by B] */
static int run_pause(const call_t *c) {
  if (!c->args->opt[O_REASON]) return usage_error("pause needs --reason REASON");
  atp_buf_t body;
  body_of(&body, c->args, (const option_id_t[]){O_REASON, O_BY},
          (const char *const[]){"reason", "by"}, 2);
  return post_action(c, "/v1/flows/", c->argv[0], "/pause", &body);
}

/* resume FLOW [--by B] */
static int run_resume(const call_t *c) {
  atp_buf_t body;
  body_of(&body, c->args, (const option_id_t[]){O_BY}, (const char *const[]){"by"}, 1);
  return post_action(c, "/v1/flows/", c->argv[0], "/resume", &body);
}

static bool looks_csv(const char *file, const atp_buf_t *text) {
  size_t n = strlen(file);
  if (n >= 4 && !strcasecmp(file + n - 4, ".csv")) return true;
  if (n >= 5 && !strcasecmp(file + n - 5, ".json")) return false;
  for (size_t i = 0; i < text->len; i++)
    if (text->data[i] != ' ' && text->data[i] != '\n' && text->data[i] != '\r' &&
        text->data[i] != '\t')
      return text->data[i] != '[' && text->data[i] != '{';
  return true;
}

/* reconcile FILE --source S --as-of T [--id ID]: CSV goes as text/csv with
 * the rest in the query; JSON (an array of positions, or an object holding
 * "positions") is sent as the contract's object. The id defaults to
 * SOURCE-AS_OF, so sending the same export twice is one report. */
static int run_reconcile(const call_t *c) {
  const char *const *o = c->args->opt;
  if (!o[O_SOURCE] || !o[O_AS_OF])
    return usage_error("reconcile needs --source SOURCE and --as-of TIME");
  char id[256];
  snprintf(id, sizeof id, "%s-%s", o[O_SOURCE], o[O_AS_OF]);
  const char *rid = o[O_ID] ? o[O_ID] : id;
  atp_buf_t text;
  atp_buf_init(&text, ATP_HTTP_BULK_BODY_BYTES_MAX);
  if (ctl_read_file(c->argv[0], &text) != 0) return atp_buf_free(&text), EXIT_USAGE;
  path_t p;
  path_init(&p, "/v1/reconciliations");
  if (looks_csv(c->argv[0], &text)) {
    path_query(&p, "id", rid);
    path_query(&p, "source", o[O_SOURCE]);
    path_query(&p, "as_of", o[O_AS_OF]);
    int status = call(c, "POST", &p, "text/csv", &text);
    atp_buf_free(&text);
    return status;
  }
  atp_arena_t arena;
  atp_arena_init(&arena, 64 << 10, 8ull * ATP_HTTP_BULK_BODY_BYTES_MAX);
  atp_val_t *val = NULL;
  atp_parse_error_t perr;
  const atp_val_t *positions = NULL;
  if (atp_codec_parse(ATP_FORMAT_JSON, text.data, text.len, &arena, &val, &perr) == 0)
    positions = val->type == ATP_VAL_ARRAY ? val : atp_val_get(val, "positions");
  atp_buf_free(&text);
  if (!positions || positions->type != ATP_VAL_ARRAY) {
    atp_arena_destroy(&arena);
    atp_buf_free(&p.buf);
    return usage_error(
        "%s: neither CSV nor JSON positions (an array, or an object with "
        "\"positions\")",
        c->argv[0]);
  }
  atp_buf_t body;
  atp_buf_init(&body, 0);
  atp_writer_t w;
  atp_writer_init(&w, ATP_FORMAT_JSON, &body);
  atp_w_object_begin(&w);
  write_opt_str(&w, "id", rid);
  write_opt_str(&w, "source", o[O_SOURCE]);
  atp_w_key(&w, "as_of");
  write_time(&w, o[O_AS_OF]);
  atp_w_key(&w, "positions");
  atp_w_val(&w, positions);
  atp_w_object_end(&w);
  atp_arena_destroy(&arena);
  return call_json(c, "POST", &p, &body);
}

/* snapshot: POST /admin/snapshot; --show: GET, the latest. */
static int run_snapshot(const call_t *c) {
  path_t p;
  path_init(&p, "/admin/snapshot");
  if (c->args->opt[O_SHOW]) return call(c, "GET", &p, NULL, NULL);
  atp_buf_t body;
  atp_buf_init(&body, 0);
  atp_buf_append(&body, "{}", 2);
  return call_json(c, "POST", &p, &body);
}

/* audit [--action A] [--by B] [--since T] [--cursor C] */
static int run_audit(const call_t *c) {
  const char *const *o = c->args->opt;
  path_t p;
  path_init(&p, "/v1/audit");
  path_query(&p, "action", o[O_ACTION]);
  path_query(&p, "by", o[O_BY]);
  path_query(&p, "since", o[O_SINCE]);
  path_query(&p, "cursor", o[O_CURSOR]);
  path_query(&p, "limit", o[O_LIMIT]);
  return call(c, "GET", &p, NULL, NULL);
}

static int run_help(const call_t *c);

static const command_t commands[] = {
    {"get", 1, 2, "SKU [LOCATION]", "", "availability at a location or everywhere",
     "GET /v1/availability?sku=SKU[&location=LOCATION]: the position at LOCATION, or\n"
     "every location holding SKU (endless aisle), the most available first.\n",
     run_get},
    {"group", 2, 2, "SKU GROUP", "", "availability over a location group",
     "GET /v1/availability?sku=SKU&group=GROUP: the group's locations, summed.\n",
     run_group},
    {"reserve", 4, 5, "ID SKU LOCATION QTY [TTL_MS]", "--channel",
     "hold stock for a checkout",
     "POST /v1/reservations: one line of QTY units of SKU at LOCATION, held TTL_MS\n"
     "(default the server's, 15 min). ID is the client id: sending it again replays.\n"
     "  --channel C   the sales channel, default " DEFAULT_CHANNEL "\n",
     run_reserve},
    {"show", 1, 1, "ID", "", "a reservation", "GET /v1/reservations/ID.\n", run_show},
    {"commit", 1, 1, "ID", "", "commit a held reservation",
     "POST /v1/reservations/ID/commit: held units become committed.\n", run_commit},
    {"release", 1, 1, "ID", "", "release a reservation",
     "POST /v1/reservations/ID/release: every remaining unit goes back.\n",
     run_release},
    {"health", 0, 0, "", "", "/healthz and /readyz",
     "GET /healthz then GET /readyz; exit 1 when either is not 2xx.\n", run_health},
    {"metrics", 0, 0, "", "", "the Prometheus text", "GET /metrics.\n", run_metrics},
    {"import", 1, 1, "FILE", "--chunk --op --flow --from --rate --format --progress",
     "send a file of ops to POST /v1/batch in chunks",
     "Reads FILE and sends its ops in order to POST /v1/batch, CHUNK ops a request\n"
     "over one keep-alive connection, then prints a summary (received, applied,\n"
     "replayed, rejected, queued, elapsed, rate, the first rejections with their op\n"
     "index and line). Exit 0 when every op was applied, replayed or queued, 1 when\n"
     "any was rejected, 3 when the server went away, 130 when interrupted (Ctrl-C\n"
     "lets the chunk in flight finish).\n"
     "FILE is, by its name or --format:\n"
     "  .csv             a header row naming the op's fields (op, flow, id, sku,\n"
     "                   location, delta, reason, ...), one op a row; numeric fields\n"
     "                   are sent as integers, a cell holding a JSON array or object\n"
     "                   (lines, locations) as that value, empty cells are left out\n"
     "  .ndjson, .jsonl  one JSON op a line\n"
     "  .json            a JSON array of ops\n"
     "  .msgpack, .mpk   a MessagePack array or a stream of MessagePack objects\n"
     "An op that is not an object (or a row with more cells than the header) is\n"
     "rejected here, listed, and never sent.\n"
     "Resuming: ops carry their ids, so running the same import again replays what\n"
     "was applied (counted as replayed) and applies the rest; an interrupted run says\n"
     "which --from N skips what was already answered.\n"
     "  --chunk N        ops a request, 1..100000, default 1000\n"
     "  --op OP          the op of an op that names none (adjust, count, ...)\n"
     "  --flow F         the flow of an op that names none (erp, wms, pos, ...)\n"
     "  --from N         skip the file's first N ops\n"
     "  --rate N         at most N ops a second (spare a busy server)\n"
     "  --format F       csv, ndjson, json or msgpack, when the name does not say\n"
     "  --progress P     auto (a bar on a terminal, else a line per 5%), bar, lines,\n"
     "                   none; --json prints the summary as JSON and no progress\n",
     run_import},
    {"dead-letters", 0, 0, "", "--owner --flow --status --cursor --limit",
     "rejected flow ops",
     "GET /v1/dead-letters: the rejected flow ops, filtered.\n"
     "  --owner O  --flow F  --status open|replayed|resolved  --cursor C (next page)\n"
     "  --limit N (entries a page)\n",
     run_dead_letters},
    {"replay", 1, 1, "ID", "--payload --by", "replay a dead letter",
     "POST /v1/dead-letters/ID/replay: applies the stored op again.\n"
     "  --payload FILE   a corrected op (a JSON object) instead of the stored one\n"
     "  --by B           who; default the token's holder\n",
     run_replay},
    {"resolve", 1, 1, "ID", "--note --by", "close a dead letter",
     "POST /v1/dead-letters/ID/resolve {note, by}.\n"
     "  --note N   required: what was done\n"
     "  --by B     who; default the token's holder\n",
     run_resolve},
    {"flows", 0, 0, "", "", "the integration flows and their state",
     "GET /v1/flows: each flow's state, queued, applied, rejected, last op.\n",
     run_flows},
    {"pause", 1, 1, "FLOW", "--reason --by", "pause a flow (its ops are queued)",
     "POST /v1/flows/FLOW/pause {reason, by}: the flow's ops are accepted and queued\n"
     "until it is resumed.\n"
     "  --reason R   required\n"
     "  --by B       who; default the token's holder\n",
     run_pause},
    {"resume", 1, 1, "FLOW", "--by", "resume a flow (its queue applies)",
     "POST /v1/flows/FLOW/resume: the queued ops apply in order.\n"
     "  --by B   who; default the token's holder\n",
     run_resume},
    {"reconcile", 1, 1, "FILE", "--source --as-of --id",
     "compare an external count export",
     "POST /v1/reconciliations: FILE is CSV (header sku,location,on_hand) or JSON (an\n"
     "array of {sku, location, on_hand}, or an object with \"positions\").\n"
     "  --source S   required: the system the export comes from (wms, erp, ...)\n"
     "  --as-of T    required: when it was taken, ms since the epoch or RFC 3339\n"
     "  --id ID      the report's id; default SOURCE-ASOF\n",
     run_reconcile},
    {"snapshot", 0, 0, "", "--show", "take a snapshot now",
     "POST /admin/snapshot: writes a snapshot now.\n"
     "  --show   GET /admin/snapshot instead: the latest one\n",
     run_snapshot},
    {"audit", 0, 0, "", "--action --by --since --cursor --limit",
     "the operator actions",
     "GET /v1/audit: who paused, replayed, resolved, applied, closed, snapshotted.\n"
     "  --action A  --by B  --since T (ms or RFC 3339)  --cursor C (next page)\n"
     "  --limit N (entries a page)\n",
     run_audit},
    {"help", 0, 1, "[COMMAND]", "", "this list, or one command's page",
     "Prints the command list, or COMMAND's page.\n", run_help},
};
static const size_t commands_count = sizeof commands / sizeof commands[0];

static const command_t *command_named(const char *name) {
  for (size_t i = 0; i < commands_count; i++)
    if (!strcmp(name, commands[i].name)) return &commands[i];
  return NULL;
}

static int run_help(const call_t *c) {
  if (c->argc == 0) return print_usage(stdout), 0;
  const command_t *cmd = command_named(c->argv[0]);
  if (!cmd) return usage_error("unknown command '%s'", c->argv[0]);
  print_command_help(cmd);
  return 0;
}

/* Whether the space-separated list holds word. */
static bool list_has(const char *list, const char *word) {
  size_t n = strlen(word);
  for (const char *p = list; (p = strstr(p, word)); p += n)
    if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0')) return true;
  return false;
}

/* --name VALUE or --name=VALUE at argv[*a]; NULL when argv[*a] is not it. */
static const char *option_value(int argc, char **argv, int *a, const char *name,
                                bool *missing) {
  size_t n = strlen(name);
  const char *arg = argv[*a];
  if (strncmp(arg, name, n) != 0) return NULL;
  if (arg[n] == '=') return arg + n + 1;
  if (arg[n] != '\0') return NULL;
  if (*a + 1 >= argc) {
    *missing = true;
    return NULL;
  }
  return argv[++*a];
}

/* Reads options (anywhere on the line, "--" ends them) and positional
 * arguments into args. Returns true to go on; false when the run ends here
 * (--version, a usage error) with its exit status in *exit_status. */
static bool parse_args(int argc, char **argv, args_t *args, int *exit_status) {
  memset(args, 0, sizeof *args);
  bool options_done = false;
  *exit_status = EXIT_USAGE;
  for (int a = 1; a < argc; a++) {
    const char *arg = argv[a];
    if (options_done || arg[0] != '-' || !strcmp(arg, "-")) {
      if (args->npos == ARGS_MAX) return usage_error("too many arguments"), false;
      args->pos[args->npos++] = argv[a];
      continue;
    }
    if (!strcmp(arg, "--")) {
      options_done = true;
      continue;
    }
    if (!strcmp(arg, "-h")) arg = "--help";
    if (!strcmp(arg, "--version")) {
      puts("atpctl " ATP_VERSION);
      *exit_status = 0;
      return false;
    }
    int id = 0;
    bool missing = false;
    const char *v = NULL;
    for (; id < O_COUNT; id++) {
      if (!options[id].takes_value) {
        if (!strcmp(arg, options[id].name)) break;
      } else if ((v = option_value(argc, argv, &a, options[id].name, &missing)) ||
                 missing) {
        break;
      }
    }
    if (missing) return usage_error("%s needs a value", arg), false;
    if (id == O_COUNT) return usage_error("unknown option '%s'", arg), false;
    args->opt[id] = options[id].takes_value ? v : "";
  }
  ATP_ASSERT(args->npos <= ARGS_MAX);
  return true;
}

/* The command args names, checked against its arity and options; NULL after
 * a usage error. */
static const command_t *find_command(const args_t *args) {
  if (args->npos == 0) return usage_error("no command given"), NULL;
  const char *cmd = args->pos[0];
  const command_t *known = command_named(cmd);
  if (!known) return usage_error("unknown command '%s'", cmd), NULL;
  for (int id = 0; id < O_COUNT; id++) {
    if (!args->opt[id] || options[id].global ||
        list_has(known->options, options[id].name))
      continue;
    char takers[256] = "";
    for (size_t i = 0; i < commands_count; i++)
      if (list_has(commands[i].options, options[id].name))
        snprintf(takers + strlen(takers), sizeof takers - strlen(takers), "%s%s",
                 takers[0] ? ", " : "", commands[i].name);
    return usage_error("%s only applies to %s", options[id].name, takers), NULL;
  }
  int rest = args->npos - 1;
  if (rest < known->min || rest > known->max)
    return usage_error("%s takes %s", cmd, known->max ? known->args : "no arguments"),
           NULL;
  return known;
}

int main(int argc, char **argv) {
  args_t args;
  int exit_status;
  if (!parse_args(argc, argv, &args, &exit_status)) return exit_status;
  if (args.opt[O_HELP]) {
    const command_t *cmd = args.npos ? command_named(args.pos[0]) : NULL;
    if (cmd && cmd->run != run_help)
      print_command_help(cmd);
    else if (cmd && args.npos > 1 && command_named(args.pos[1]))
      print_command_help(command_named(args.pos[1]));
    else
      print_usage(stdout);
    return 0;
  }
  const command_t *command = find_command(&args);
  if (!command) return EXIT_USAGE;
  call_t call = {.args = &args,
                 .argv = args.pos + 1,
                 .argc = args.npos - 1,
                 .json = args.opt[O_JSON] != NULL};
  ATP_ASSERT(call.argc >= command->min && call.argc <= command->max);
  if (command->run == run_help) return run_help(&call);
  const char *url = args.opt[O_URL] ? args.opt[O_URL] : getenv("ATPD_URL");
  if (!url || !*url) url = DEFAULT_URL;
  const char *token = args.opt[O_TOKEN] ? args.opt[O_TOKEN] : getenv("ATPD_TOKEN");
  if (token && !*token) token = NULL;
  long long timeout_ms = ATP_CTL_TIMEOUT_MS, connect_ms = ATP_CTL_CONNECT_TIMEOUT_MS;
  if (args.opt[O_TIMEOUT_MS] &&
      !int_arg("--timeout-ms", args.opt[O_TIMEOUT_MS], 1, 86400000, &timeout_ms))
    return EXIT_USAGE;
  if (args.opt[O_CONNECT_TIMEOUT_MS] &&
      !int_arg("--connect-timeout-ms", args.opt[O_CONNECT_TIMEOUT_MS], 1, 86400000,
               &connect_ms))
    return EXIT_USAGE;
  ctl_http_t http;
  int rc = ctl_http_init(&http, url, token, (long)timeout_ms, (long)connect_ms,
                         args.opt[O_CACERT], args.opt[O_INSECURE] != NULL);
  if (rc == ATP_EBADREQ) {
    ctl_http_free(&http);
    return usage_error(
        "the URL must look like http://HOST:PORT or https://HOST:PORT, got '%s'", url);
  }
  if (rc != 0) {
    fprintf(stderr, "atpctl: cannot start libcurl: %s\n", atp_strerror(rc));
    ctl_http_free(&http);
    return EXIT_UNREACHABLE;
  }
  call.http = &http;
  int status = command->run(&call);
  ctl_http_free(&http);
  return status;
}
